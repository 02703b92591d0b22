"""The SDK end to end on the server backend (qdrant-client's ``:memory:``
mode speaks the server API), and secrets that never land anywhere."""

import json

import fiftyone.core.odm as foo
import pytest

import fiftyone_ai_search as ais
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search.demo import tiny_clip_model_name

from tests.helpers import shapes_dataset

SECRET = "s3cr3t-api-key-that-must-not-leak"


@pytest.fixture
def server_env(monkeypatch):
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_QDRANT_URL", ":memory:")
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_QDRANT_API_KEY", SECRET)


def test_server_backend_syncs_and_searches(tmp_path, server_env, caplog):
    caplog.set_level("DEBUG")
    dataset = shapes_dataset(tmp_path, num_samples=60, enable=False)
    status = ais.enable_embeddings(
        dataset, model=tiny_clip_model_name(), backend="server", compute=False)
    assert status["backend"] == "server"

    report = ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert report.added == 60
    assert ais.get_status(dataset)["counts"]["num_indexed"] == 60

    name = ais.perform_ai_search(dataset, prompt="a photo of a red circle",
                                 limit=2)
    labels = ais.get_collection(dataset, name).values("ground_truth.label")
    assert labels == ["red circle", "red circle"]

    dataset.delete_samples(dataset.take(5, seed=0))
    assert ais.calculate_embeddings(dataset, wait=True,
                                    progress=False).removed == 5

    # the API key is in no log, no state, no dataset document
    assert SECRET not in caplog.text
    assert SECRET not in json.dumps(st.get(dataset), default=str)
    db = foo.get_db_conn()
    for coll in ("datasets", st.STATE_COLLECTION, "ai_search_collections"):
        for doc in db[coll].find():
            assert SECRET not in json.dumps(doc, default=str)
    assert SECRET not in json.dumps(ais.get_status(dataset), default=str)


def test_server_backend_needs_a_url(tmp_path, monkeypatch):
    monkeypatch.delenv("FIFTYONE_AI_SEARCH_QDRANT_URL", raising=False)
    dataset = shapes_dataset(tmp_path, num_samples=3, enable=False)
    with pytest.raises(ValueError, match="QDRANT_URL"):
        ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                              backend="server")
    assert not ais.is_embeddings_enabled(dataset)


# slow: refresher passes on qdrant-client's pure-Python :memory: server (the fast tier's budget)
@pytest.mark.slow
def test_refresher_on_the_server_backend(tmp_path, server_env, caplog):
    from fiftyone_ai_search.scheduler import refresh_all
    from fiftyone_ai_search.store import open_store

    from tests.helpers import add_shape_samples

    caplog.set_level("DEBUG")
    dataset = shapes_dataset(tmp_path, num_samples=10, enable=False)
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          backend="server", compute=False)
    name, key = dataset.name, st.dataset_key(dataset)

    assert refresh_all([name]).synced[name].added == 10
    add_shape_samples(dataset, tmp_path, num_samples=3, seed=12)
    assert refresh_all([name]).synced[name].added == 3

    dataset.delete()
    report = refresh_all([name])
    assert report.removed == [key]
    store = open_store("dataset_" + key,
                       ais.get_settings().replace(backend="server"))
    try:
        assert not store.exists()
    finally:
        store.close()

    assert SECRET not in caplog.text
