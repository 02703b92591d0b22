"""Incremental sync through the public SDK, on real images and the tiny CLIP."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import fiftyone_ai_search as ais
from fiftyone_ai_search import runner
from fiftyone_ai_search import state as st

from helpers import (
    add_shape_samples,
    bump_mtime,
    shapes_dataset,
    truncated_copy,
    wait_until_idle,
    write_bytes,
)


def _vectors(dataset):
    ids, vectors = ais.get_embeddings(dataset)
    return dict(zip(ids, vectors))


def test_first_sync_embeds_every_sample(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=30)

    report = ais.calculate_embeddings(dataset, wait=True, progress=False)

    assert (report.added, report.updated, report.removed, report.failed) == (
        30, 0, 0, 0)
    assert report.rebuilt
    ids, vectors = ais.get_embeddings(dataset)
    assert ids == dataset.values("id")
    assert vectors.shape == (30, 64) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)

    status = ais.get_status(dataset)
    assert status["enabled"] and not status["in_progress"]
    assert status["counts"] == {
        "num_samples": 30, "num_indexed": 30, "num_failed": 0}
    assert status["updated_at"] is not None
    assert ais.get_embeddings_updated_at(dataset) == status["updated_at"]
    assert status["last_report"]["added"] == 30


def test_unchanged_dataset_embeds_nothing(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=20)
    ais.calculate_embeddings(dataset, wait=True, progress=False)

    report = ais.calculate_embeddings(dataset, wait=True, progress=False)

    assert (report.added, report.updated, report.removed, report.failed) == (
        0, 0, 0, 0)
    assert not report.rebuilt


def test_edits_that_do_not_touch_the_image_embed_nothing(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=20)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    before = _vectors(dataset)

    dataset.take(5, seed=0).tag_samples("reviewed")
    sample = dataset.first()
    sample["note"] = "edited"
    sample.ground_truth.label = "relabelled"
    sample.save()

    report = ais.calculate_embeddings(dataset, wait=True, progress=False)

    assert report.added == report.updated == report.failed == 0
    assert report.skipped >= 5
    after = _vectors(dataset)
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_new_samples_are_added(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=20)
    ais.calculate_embeddings(dataset, wait=True, progress=False)

    new_ids = add_shape_samples(dataset, tmp_path, 7, seed=5)
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)

    assert (report.added, report.updated) == (7, 0)
    assert set(new_ids) <= set(ais.get_embeddings(dataset)[0])
    assert ais.get_status(dataset)["counts"]["num_indexed"] == 27


def test_changed_filepath_is_re_embedded(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=20)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    before = _vectors(dataset)

    a, b = dataset.take(2, seed=1)
    a.filepath = b.filepath  # now shows b's image
    a.save()
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)

    assert (report.added, report.updated) == (0, 1)
    after = _vectors(dataset)
    np.testing.assert_allclose(after[a.id], before[b.id], atol=1e-6)


def test_image_replaced_on_disk_is_found_by_verify_files(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=20)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    before = _vectors(dataset)

    a, b = dataset.take(2, seed=2)
    shutil.copyfile(b.filepath, a.filepath)  # behind FiftyOne's back
    bump_mtime(a.filepath)

    report = ais.calculate_embeddings(
        dataset, wait=True, verify_files=True, progress=False)

    assert (report.added, report.updated) == (0, 1)
    assert report.skipped == 19
    np.testing.assert_allclose(_vectors(dataset)[a.id], before[b.id], atol=1e-6)


def test_deleted_samples_are_removed(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=20)
    ais.calculate_embeddings(dataset, wait=True, progress=False)

    gone = dataset.take(6, seed=3).values("id")
    dataset.delete_samples(gone)
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)

    assert (report.removed, report.added, report.updated) == (6, 0, 0)
    ids = set(ais.get_embeddings(dataset)[0])
    assert ids == set(dataset.values("id")) and not ids & set(gone)
    assert ais.get_status(dataset)["counts"]["num_indexed"] == 14


def test_broken_images_fail_alone_with_a_reason(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=12)
    good = dataset.first().filepath
    bad = {
        "missing": str(tmp_path / "nope.jpg"),
        "empty": write_bytes(tmp_path / "empty.jpg", b""),
        "truncated": truncated_copy(good, tmp_path / "half.jpg"),
        "text": write_bytes(tmp_path / "notes.jpg", b"not an image at all\n"),
    }
    broken = dataset.take(4, seed=4)
    broken_ids = broken.values("id")
    for sample, path in zip(broken, bad.values()):
        sample.filepath = path
        sample.save()

    report = ais.calculate_embeddings(dataset, wait=True, progress=False)

    assert (report.added, report.failed) == (8, 4)
    status = ais.get_status(dataset)
    assert status["counts"]["num_failed"] == 4
    assert status["counts"]["num_indexed"] == 8
    reasons = {f["sample_id"]: f["reason"] for f in status["failures"]}
    assert set(reasons) == set(broken_ids)
    assert all(reasons.values())  # each failure says why
    assert set(ais.get_embeddings(dataset)[0]).isdisjoint(broken_ids)

    # unchanged broken files are not retried on every run...
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert report.failed == 0 and report.added == 0

    # ...but a repaired one is picked up, although its sample was not edited
    missing_id = broken_ids[0]
    Image.open(good).save(bad["missing"])
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert (report.added, report.failed) == (1, 0)
    assert missing_id in ais.get_embeddings(dataset)[0]
    assert ais.get_status(dataset)["counts"]["num_failed"] == 3


def test_another_model_rebuilds_the_index_never_mixes(tmp_path, other_tiny_model):
    dataset = shapes_dataset(tmp_path, num_samples=10)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    before = _vectors(dataset)

    ais.enable_embeddings(dataset, model=other_tiny_model, compute=False)
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)

    assert report.rebuilt and report.added == 10
    after = _vectors(dataset)
    assert all(not np.allclose(before[k], after[k]) for k in before)
    assert ais.get_status(dataset)["model"] == other_tiny_model


def test_force_rebuilds(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=10)
    ais.calculate_embeddings(dataset, wait=True, progress=False)

    report = ais.calculate_embeddings(
        dataset, force=True, wait=True, progress=False)

    assert report.rebuilt and report.added == 10


def test_disable_deletes_index_and_state(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=10)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert ais.is_embeddings_enabled(dataset)

    ais.disable_embeddings(dataset)

    assert not ais.is_embeddings_enabled(dataset)
    assert ais.get_status(dataset) == {"enabled": False, "in_progress": False}
    assert st.get(dataset) is None
    with pytest.raises(ais.AISearchNotEnabledError, match="enable_embeddings"):
        ais.get_embeddings(dataset)
    with pytest.raises(ais.AISearchNotEnabledError):
        ais.calculate_embeddings(dataset, wait=True)


def test_sync_never_writes_to_samples(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=10)
    before = dict(zip(*dataset.values(["id", "last_modified_at"])))

    ais.calculate_embeddings(dataset, wait=True, progress=False)

    assert dict(zip(*dataset.values(["id", "last_modified_at"]))) == before


def test_enable_computes_in_the_background(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=40, enable=False)
    from fiftyone_ai_search.demo import tiny_clip_model_name

    status = ais.enable_embeddings(dataset, model=tiny_clip_model_name())

    assert status["enabled"]
    assert ais.get_embeddings_in_progress(dataset)  # returned before done
    wait_until_idle(dataset)
    status = ais.get_status(dataset)
    assert status["last_error"] is None, status["last_error"]
    assert status["counts"]["num_indexed"] == 40


def test_waiting_caller_syncs_what_the_running_worker_left(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=40)
    ais.calculate_embeddings(dataset, wait=False)
    assert ais.get_embeddings_in_progress(dataset)
    add_shape_samples(dataset, tmp_path, 5, seed=9)

    report = ais.calculate_embeddings(dataset, wait=True, progress=False)

    assert not ais.get_embeddings_in_progress(dataset)
    assert ais.get_status(dataset)["counts"]["num_indexed"] == 45
    assert report.failed == 0


def test_kill_9_keeps_committed_work_and_resume_finishes(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=240)
    env = dict(os.environ, FIFTYONE_AI_SEARCH_BATCH_SIZE="2",
               FIFTYONE_AI_SEARCH_NUM_WORKERS="0")
    worker = subprocess.Popen(
        [sys.executable, "-m", "fiftyone_ai_search", "sync", "--quiet",
         "--dataset", dataset.name],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and worker.poll() is None:
        done = ((st.get(dataset) or {}).get("progress") or {}).get("done", 0)
        if done >= 20:
            break
        time.sleep(0.05)
    assert worker.poll() is None, "worker finished before it could be killed"
    worker.send_signal(signal.SIGKILL)
    worker.wait()

    # the first index is built beside (none), never searched half-done
    with pytest.raises(ais.IndexNotReadyError, match="Nothing is computing"):
        ais.get_embeddings(dataset)
    committed = runner.open_ref(st.get(dataset)["build"]).count()
    assert 0 < committed < 240

    report = ais.calculate_embeddings(dataset, wait=True, progress=False)

    assert report.added == 240 - committed  # committed work is not redone
    assert report.skipped == committed
    assert ais.get_status(dataset)["counts"]["num_indexed"] == 240


def test_enable_refuses_random_weights_and_says_why(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=2, enable=False)
    with pytest.raises(ValueError, match="pretrained.*laion2b_s34b_b79k"):
        ais.enable_embeddings(dataset, model="ViT-B-32")
    assert not ais.is_embeddings_enabled(dataset)


def test_enable_offline_fails_at_once_saying_how_to_supply_weights(tmp_path):
    from fiftyone_ai_search.model import ModelUnavailableError

    dataset = shapes_dataset(tmp_path, num_samples=2, enable=False)
    start = time.time()
    with pytest.raises(ModelUnavailableError, match="local-dir:"):
        ais.enable_embeddings(dataset)  # ViT-B-32 / laion2b_s34b_b79k
    assert time.time() - start < 10
    assert not ais.is_embeddings_enabled(dataset)
