"""Nothing lost, nothing mixed: rebuilds, model changes and disable against
crashes (``kill -9`` of real worker processes) and running computations.

Each worker is a real ``python -m fiftyone_ai_search sync`` process on the
same MongoDB and index directory, slowed to batches of 2 so that it can be
caught mid-run.
"""

import datetime
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fiftyone_ai_search as ais
from fiftyone_ai_search.index import indexes
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search.demo import tiny_clip_model_name
from fiftyone_ai_search.embedding.pipeline import embed_images
from fiftyone_ai_search.embedding.model import load_model, resolve_model
from fiftyone_ai_search.scheduler import refresh_all
from fiftyone_ai_search.store import IndexMismatchError
from fiftyone_ai_search.sync import images as image_sync
from fiftyone_ai_search.sync.images import has_changes

from tests.helpers import shapes_dataset, wait_until_idle

SLOW = {"FIFTYONE_AI_SEARCH_BATCH_SIZE": "2",
        "FIFTYONE_AI_SEARCH_NUM_WORKERS": "0"}


def _worker(dataset, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "fiftyone_ai_search", "sync", "--quiet",
         "--dataset", dataset.name, *args],
        env=dict(os.environ, **SLOW),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _wait_for_progress(dataset, worker, done, building=True, timeout=120):
    """Waits until the worker has committed ``done`` samples of the index
    being built (or, ``building=False``, of the one searched)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert worker.poll() is None, "the worker finished too early"
        doc = st.get(dataset) or {}
        progress = doc.get("progress") or {}
        target = doc.get("build" if building else "index") or {}
        if progress.get("index") == target.get("name") and (
            progress.get("done", 0) >= done
        ):
            return
        time.sleep(0.02)
    raise AssertionError(f"no progress to {done}: {st.get(dataset)}")


def _kill(worker):
    worker.send_signal(signal.SIGKILL)
    worker.wait()


def _vectors(dataset):
    ids, vectors = ais.get_embeddings(dataset)
    return dict(zip(ids, vectors))


def _fresh(dataset, model_name):
    """What a fresh index of ``model_name`` holds: each image embedded
    directly, outside any index."""
    model = load_model(resolve_model(model_name, None))
    ids, paths = dataset.values(["id", "filepath"])
    out = {}
    for batch in embed_images(model, list(zip(ids, paths)), num_workers=0):
        out.update(zip(batch.keys, batch.vectors))
    return out


def _assert_equal(found, expected):
    assert sorted(found) == sorted(expected)
    for k, v in expected.items():
        np.testing.assert_allclose(found[k], v, atol=2e-5)


def _ask(ref, question):
    """``question(store)`` of the index of a state reference."""
    store = indexes.open_ref(ref)
    try:
        return question(store)
    finally:
        store.close()


def _exists(ref):
    return _ask(ref, lambda store: store.exists())


def _count(ref):
    return _ask(ref, lambda store: store.count())


def _searched(dataset):
    """All samples in score order for one prompt, and what it used."""
    name = ais.perform_ai_search(dataset, prompt="a red circle", limit=1000)
    scores = dict(ais.get_collection_scores(dataset, name))
    query = ais.list_collections(dataset)
    return scores, query


@pytest.fixture
def synced(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=120)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    return dataset


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [2, 90])
def test_kill_9_during_a_forced_rebuild_keeps_the_index_and_resumes(
    synced, kill_at
):
    dataset = synced
    before = _vectors(dataset)
    scores_before, _ = _searched(dataset)
    old = st.get(dataset)["index"]

    worker = _worker(dataset, "--force")
    _wait_for_progress(dataset, worker, kill_at)
    _kill(worker)

    doc = st.get(dataset)
    assert doc["index"] == old and doc["build"] is not None
    # searches keep the complete index, not a partial one
    scores, _ = _searched(dataset)
    assert scores == pytest.approx(scores_before)
    assert len(_vectors(dataset)) == 120  # same model: still handed out
    committed = _count(doc["build"])
    assert kill_at <= committed < 120

    report = ais.calculate_embeddings(dataset, wait=True, progress=False)

    assert report.rebuilt
    assert report.skipped == committed  # committed work is not redone
    assert report.added == 120 - committed
    doc = st.get(dataset)
    assert doc["build"] is None and doc["retired"] == []
    assert doc["index"]["name"] != old["name"] and not _exists(old)
    _assert_equal(_vectors(dataset), before)
    assert ais.calculate_embeddings(dataset, wait=True, progress=False).added == 0


@pytest.mark.slow
def test_kill_9_during_a_model_change_searches_the_old_model_then_the_new(
    synced, other_tiny_model
):
    dataset = synced
    scores_before, _ = _searched(dataset)
    ais.enable_embeddings(dataset, model=other_tiny_model, compute=False)

    worker = _worker(dataset)
    _wait_for_progress(dataset, worker, 30)
    _kill(worker)

    status = ais.get_status(dataset)
    assert status["model"] == other_tiny_model
    assert status["index"]["model"] == tiny_clip_model_name()
    assert status["rebuild"]["model"] == other_tiny_model
    assert status["counts"]["num_indexed"] == 120
    # the old model's index answers, with the old model's prompt vectors
    scores, _ = _searched(dataset)
    assert scores == pytest.approx(scores_before)
    with pytest.raises(ais.IndexNotReadyError,
                       match="being rebuilt with model.*Nothing is computing"):
        ais.get_embeddings(dataset)

    ais.calculate_embeddings(dataset, wait=True, progress=False)

    _assert_equal(_vectors(dataset), _fresh(dataset, other_tiny_model))
    scores, _ = _searched(dataset)
    assert scores != pytest.approx(scores_before)
    assert ais.get_status(dataset)["rebuild"] is None


@pytest.mark.slow
def test_a_model_change_while_a_sync_runs_never_mixes_models(
    tmp_path, other_tiny_model
):
    dataset = shapes_dataset(tmp_path, num_samples=120)
    worker = _worker(dataset)
    _wait_for_progress(dataset, worker, 10)
    first = st.get(dataset)["build"]

    ais.enable_embeddings(dataset, model=other_tiny_model, compute=False)
    # the running worker stops before its next commit and then builds
    # what the state asks for now
    assert worker.wait(timeout=180) == 0

    doc = st.get(dataset)
    assert doc["index"]["model"] == other_tiny_model
    assert doc["build"] is None and not _exists(first)
    _assert_equal(_vectors(dataset), _fresh(dataset, other_tiny_model))
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert (report.added, report.updated) == (0, 0)


@pytest.mark.slow
def test_disable_and_enable_while_a_worker_runs_waits_for_it(
    tmp_path, other_tiny_model
):
    dataset = shapes_dataset(tmp_path, num_samples=120)
    worker = _worker(dataset)
    _wait_for_progress(dataset, worker, 10)

    ais.disable_embeddings(dataset)
    ais.enable_embeddings(dataset, model=other_tiny_model, compute=True)

    # the old worker stops committing and either goes, or (asked to run
    # again) builds what the state asks for now; never two at once
    assert worker.wait(timeout=180) == 0
    wait_until_idle(dataset)
    _assert_equal(_vectors(dataset), _fresh(dataset, other_tiny_model))
    status = ais.get_status(dataset)
    assert status["counts"]["num_indexed"] == 120
    assert status["last_error"] is None


def test_disable_keeps_the_lease_of_a_running_computation(synced):
    dataset = synced
    lease = st.try_acquire(dataset)  # a computation that is running
    try:
        ais.disable_embeddings(dataset)

        # revoked (its generation is stale), not deleted under it
        doc = st.get(dataset)
        assert not ais.is_embeddings_enabled(dataset)
        assert doc["lease"]["token"] == lease.token
        ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                              compute=True)
        assert st.try_acquire(dataset) is None  # a new one waits for it
        assert ais.get_embeddings_in_progress(dataset)
        with pytest.raises(st.StaleGeneration):
            st.check_generation(dataset, "the generation it started from")
    finally:
        lease.release()
    # the enable asked the running computation to run again: do it here
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert report.added == 120


@pytest.mark.slow
def test_disable_while_a_worker_runs_stops_it_and_leaves_nothing(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=120)
    worker = _worker(dataset)
    _wait_for_progress(dataset, worker, 10)
    build = st.get(dataset)["build"]

    ais.disable_embeddings(dataset)

    assert worker.wait(timeout=60) == 0
    assert st.get(dataset) is None  # the worker let go: nothing is left
    assert not _exists(build)


def test_get_embeddings_after_a_model_change_says_what_it_waits_for(
    synced, other_tiny_model
):
    dataset = synced
    ais.enable_embeddings(dataset, model=other_tiny_model, compute=False)

    with pytest.raises(ais.IndexNotReadyError) as e:
        ais.get_embeddings(dataset)
    assert "Nothing is computing it" in str(e.value)
    assert "embedded" not in str(e.value)  # no progress when none runs
    # searches use the complete index, and say so
    name = ais.perform_ai_search(dataset, prompt="a red circle", limit=5)
    (info,) = [c for c in ais.list_collections(dataset)
               if c["name"] == name]
    assert info["query"]["model"].startswith(tiny_clip_model_name())
    assert info["query"]["rebuilding"].startswith(other_tiny_model)

    # back to the model of the index: the rebuild is called off
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(), compute=False)
    assert ais.get_status(dataset)["rebuild"] is None
    assert len(_vectors(dataset)) == 120


def test_a_search_never_serves_an_index_of_another_model(synced):
    dataset = synced
    store = indexes.open_index(dataset)
    store.close()
    with open(store._info_path) as f:
        info = json.load(f)
    info["model_identity"] = "some-other-model"
    with open(store._info_path, "w") as f:
        json.dump(info, f)

    for query in ({"prompt": "a red circle"},
                  {"image_id": dataset.first().id},
                  {"method": "centroids"}):
        with pytest.raises(IndexMismatchError, match="refusing to search"):
            ais.perform_ai_search(dataset, limit=5, **query)


def test_the_consistency_check_repairs_an_index_changed_behind_our_back(
    synced, monkeypatch
):
    dataset = synced
    # a sync whose watermark passes every edit so far (without the margin
    # for writers' clocks: one clock here), so the dataset is unchanged
    monkeypatch.setattr(image_sync, "WATERMARK_MARGIN", datetime.timedelta(0))
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    before = _vectors(dataset)
    lost = list(before)[:7]
    store = indexes.open_index(dataset)
    try:
        store.delete(lost)
        # and a vector of a sample that does not exist
        store.upsert(["0" * 24], [before[lost[0]]], [{"filepath": "x"}])
    finally:
        store.close()
    assert not has_changes(dataset, st.get(dataset))  # nothing to see there

    report = refresh_all([dataset.name])

    assert dataset.name in report.synced
    assert report.synced[dataset.name].added == 7
    assert report.synced[dataset.name].removed == 1
    _assert_equal(_vectors(dataset), before)
    assert refresh_all([dataset.name]).unchanged == [dataset.name]


def test_a_version_1_state_is_migrated(synced):
    dataset = synced
    doc = st.get(dataset)
    before = _vectors(dataset)
    v1 = {k: doc[k] for k in ("_id", "dataset_name", "enabled", "model",
                              "pretrained", "model_identity", "backend",
                              "watermark", "deletion_watermark",
                              "updated_at", "enabled_at")}
    v1.update(schema_version=1, index_name=doc["index"]["name"],
              rebuild=False)
    st._states().replace_one({"_id": doc["_id"]}, v1)

    migrated = st.get(dataset)

    assert migrated["schema_version"] == st.STATE_SCHEMA_VERSION
    assert migrated["index"]["name"] == doc["index"]["name"]
    assert migrated["build"] is None
    assert st._states().find_one({"_id": doc["_id"]})["schema_version"] == 2
    _assert_equal(_vectors(dataset), before)
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert (report.added, report.rebuilt) == (0, False)
