"""The audit's generic prompts, encoded once per model and kept on disk
(index/audit_prompts.py): the upkeep's audit reads them rather than
loading the model."""

import os

import numpy as np

from fiftyone_ai_search.config import get_settings
from fiftyone_ai_search.demo import tiny_clip_model_name
from fiftyone_ai_search.embedding.model import load_model, resolve_model
from fiftyone_ai_search.index import audit_prompts, indexes
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search.store import audit


def _tiny():
    return load_model(resolve_model(tiny_clip_model_name(), None))


def _ref(model):
    """A reference to an index of ``model`` (the prompts are the model's)."""
    return st.IndexRef(name="index", backend="edge", model=model.spec.name,
                       pretrained=model.spec.pretrained,
                       model_identity=model.spec.identity)


def test_kept_by_the_sync_read_by_the_audit_without_the_model(
        tmp_path, monkeypatch):
    model = _tiny()
    settings = get_settings(storage_dir=str(tmp_path))
    audit_prompts.keep(model, settings)
    (stored,) = os.listdir(tmp_path / audit_prompts.FOLDER)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(indexes, "load_index_model", no_model)
    got = audit_prompts.vectors(_ref(model), settings)
    expected = model.encode_text(list(audit.GENERIC_PROMPTS))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # kept once: a second sync writes nothing
    before = os.stat(tmp_path / audit_prompts.FOLDER / stored).st_mtime_ns
    audit_prompts.keep(model, settings)
    assert os.stat(tmp_path / audit_prompts.FOLDER / stored
                   ).st_mtime_ns == before


def test_encoded_and_kept_where_none_are_or_they_are_damaged(tmp_path):
    model = _tiny()
    settings = get_settings(storage_dir=str(tmp_path))
    expected = model.encode_text(list(audit.GENERIC_PROMPTS))
    got = audit_prompts.vectors(_ref(model), settings)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    (stored,) = os.listdir(tmp_path / audit_prompts.FOLDER)
    path = tmp_path / audit_prompts.FOLDER / stored
    path.write_bytes(b"not a numpy file")
    np.testing.assert_allclose(audit_prompts.vectors(_ref(model), settings),
                               expected, atol=1e-6)
    np.testing.assert_allclose(np.load(path), expected, atol=1e-6)


def test_another_model_has_its_own(tmp_path, other_tiny_model):
    settings = get_settings(storage_dir=str(tmp_path))
    model = _tiny()
    other = load_model(resolve_model(other_tiny_model, None))
    assert other.spec.identity != model.spec.identity
    mine = audit_prompts.vectors(_ref(model), settings)
    theirs = audit_prompts.vectors(_ref(other), settings)
    assert len(os.listdir(tmp_path / audit_prompts.FOLDER)) == 2
    assert not np.allclose(mine, theirs)
