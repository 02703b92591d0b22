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

#: the App's browser tests, which run one after another on one worker
BROWSER_FILES = "tests/test_app_browser"


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, if installed
def pytest_xdist_make_scheduler(config, log):
    """Under ``pytest -n N --dist loadfile`` (the test command): each test
    file runs whole on one worker, so its module fixtures (datasets,
    indexes, an App server) are built once; the browser files run together
    on one worker, first. Each worker is a process of its own, with its own
    ``mongod`` and scratch directory (``isolated_fiftyone`` at this
    module's import), so workers share nothing but the checkout.

    One Chromium and one App server at a time: two beside each other on a
    2-core machine slow both past what their waits allow for. First, since
    they are the longest unit of work: a worker that starts it last would
    run it alone at the end."""
    if config.getvalue("dist") != "loadfile":
        return None  # xdist's own scheduling
    # here, not at the top: pytest-xdist is needed only to run in parallel
    from xdist.scheduler import LoadFileScheduling

    class FilesBrowserFirst(LoadFileScheduling):
        def _split_scope(self, nodeid):
            scope = super()._split_scope(nodeid)
            return BROWSER_FILES if scope.startswith(BROWSER_FILES) else scope

        def _assign_work_unit(self, node):
            if BROWSER_FILES in self.workqueue:
                self.workqueue.move_to_end(BROWSER_FILES, last=False)
            super()._assign_work_unit(node)

    return FilesBrowserFirst(config, log)


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
