"""Test session setup: a private ``mongod`` and offline, isolated FiftyOne.

FiftyOne reads its configuration when it is first imported, so everything
here happens at import time of this conftest, before any test module (or
plugin) imports ``fiftyone``.
"""

import os
import sys

import pytest

from fiftyone_ai_search.testing import isolated_fiftyone

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
isolated_fiftyone()  # at import: before any test module imports fiftyone

# tests/ is a package (tests.helpers, tests.peer, tests.app_browser); the
# browser driver keeps its old import name too, `from app_browser import`,
# for browser tests written against it
from tests import app_browser  # noqa: E402 (after the set-up above)

sys.modules.setdefault("app_browser", app_browser)


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory):
    """A ``local-dir:`` checkpoint of the tiny CLIP's architecture with other
    (perturbed) weights: another model as far as the index is concerned."""
    from fiftyone_ai_search.testing import perturbed_tiny_clip

    return perturbed_tiny_clip(str(tmp_path_factory.mktemp("other-tiny-clip")))


@pytest.fixture(scope="session")
def tiny():
    """The bundled tiny CLIP as open_clip builds it: ``(model, preprocess,
    tokenizer)``, in eval mode."""
    import open_clip

    from fiftyone_ai_search.demo import shapes

    name = shapes.tiny_clip_model_name()
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    model.eval()  # BatchNorm tower: embeddings must not depend on the batch
    return model, preprocess, open_clip.get_tokenizer(name)
