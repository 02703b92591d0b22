"""Test session setup: a private ``mongod`` and offline, isolated FiftyOne.

FiftyOne reads its configuration when it is first imported, so everything
here happens at import time of this conftest, before any test module (or
plugin) imports ``fiftyone``.
"""

import os
import shutil

import pytest

from fiftyone_ai_search.testing import isolated_fiftyone

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
isolated_fiftyone()  # at import: before any test module imports fiftyone


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory):
    """A ``local-dir:`` checkpoint of the tiny CLIP's architecture with other
    (perturbed) weights: another model as far as the index is concerned."""
    import torch
    from safetensors.torch import load_file, save_file

    from fiftyone_ai_search.demo import DEFAULT_MODEL_DIR

    out = tmp_path_factory.mktemp("other-tiny-clip")
    shutil.copy(os.path.join(DEFAULT_MODEL_DIR, "open_clip_config.json"), out)
    weights = load_file(
        os.path.join(DEFAULT_MODEL_DIR, "open_clip_model.safetensors")
    )
    gen = torch.Generator().manual_seed(0)
    perturbed = {
        k: (v.float() + 0.05 * torch.randn(v.shape, generator=gen)).to(v.dtype)
        if v.is_floating_point() and v.ndim >= 2 else v
        for k, v in weights.items()
    }
    save_file(perturbed, str(out / "open_clip_model.safetensors"))
    return f"local-dir:{out}"
