"""Incremental sync through the public SDK, on real images and the tiny CLIP."""

import datetime
import os
import shutil
import socket
import threading
import time
import uuid

import fiftyone as fo
import numpy as np
import pytest
from bson import ObjectId
from PIL import Image

import fiftyone_ai_search as ais
from fiftyone_ai_search.index import indexes
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search.sync import images as sync

from tests.helpers import (
    add_shape_samples,
    bump_mtime,
    kill_sync_worker_midway,
    shapes_dataset,
    truncated_copy,
    wait_until_idle,
    write_bytes,
)
from tests.test_store import (  # noqa: F401 (store: a fixture, both backends)
    DIM,
    INFO,
    make_ids,
    store,
)


def _vectors(dataset):
    ids, vectors = ais.get_embeddings(dataset)
    return dict(zip(ids, vectors))


def test_first_sync_embeds_every_sample(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=30)
    dataset.set_values("note", ["new"] * 30)  # edited just before
    seen = []

    report = ais.calculate_embeddings(
        dataset, wait=True, progress=lambda *p: seen.append(p))

    assert (report.added, report.updated, report.removed, report.failed) == (
        30, 0, 0, 0)
    # samples made just before are looked at again after the build (they
    # are within the watermark's margin), but each sample counts once
    assert report.skipped == 0
    assert report.rebuilt
    # the progress of the run (of both passes) never goes back, and the
    # second pass's first bound (before it looked) is not shown
    done = [d for d, _ in seen]
    assert done == sorted(done) and seen[-1] == (30, 30)
    assert max(t for _, t in seen) == 30
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
    assert status["last_report"]["skipped"] == 0


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
    other = shapes_dataset(tmp_path, num_samples=2)  # on, for its keys
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert ais.is_embeddings_enabled(dataset)

    ais.disable_embeddings(dataset)

    assert not ais.is_embeddings_enabled(dataset)
    # the same keys as when on (issue 26, item 5: counts was missing)
    status = ais.get_status(dataset)
    assert status.keys() >= ais.get_status(other).keys() - {"approximate"}
    assert status["enabled"] is False and status["in_progress"] is False
    assert status["counts"] == {"num_samples": 10, "num_indexed": 0,
                                "num_failed": 0}
    assert status["failures"] == [] and status["object_fields"] == []
    assert status["model"] is None and status["index"] is None
    assert ais.get_status(dataset, counts=False)["counts"] is None
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


@pytest.mark.slow
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


@pytest.mark.slow  # a real background worker, raced by the waiting caller
def test_waiting_caller_syncs_what_the_running_worker_left(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=40)
    ais.calculate_embeddings(dataset, wait=False)
    assert ais.get_embeddings_in_progress(dataset)
    add_shape_samples(dataset, tmp_path, 5, seed=9)

    report = ais.calculate_embeddings(dataset, wait=True, progress=False)

    assert not ais.get_embeddings_in_progress(dataset)
    assert ais.get_status(dataset)["counts"]["num_indexed"] == 45
    assert report.failed == 0


@pytest.mark.slow
def test_kill_9_keeps_committed_work_and_resume_finishes(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=240)
    kill_sync_worker_midway(dataset, ["--dataset", dataset.name])

    # the first index is built beside (none), never searched half-done
    with pytest.raises(ais.IndexNotReadyError, match="Nothing is computing"):
        ais.get_embeddings(dataset)
    committed = indexes.open_ref(st.get(dataset)["build"]).count()
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


def test_enable_offline_fails_at_once_saying_how_to_supply_weights(
        tmp_path, monkeypatch):
    from fiftyone_ai_search.embedding.model import ModelUnavailableError

    dataset = shapes_dataset(tmp_path, num_samples=2, enable=False)
    # at once: nothing is asked of the network (no name looked up, no
    # connection but to this machine: MongoDB), nothing waited for
    asked = []
    getaddrinfo, connect = socket.getaddrinfo, socket.socket.connect

    def looked_up(host, *args, **kwargs):
        asked.append(host)
        return getaddrinfo(host, *args, **kwargs)

    def connected(sock, address):
        asked.append(address[0] if isinstance(address, tuple) else "unix")
        return connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", looked_up)
    monkeypatch.setattr(socket.socket, "connect", connected)
    with pytest.raises(ModelUnavailableError, match="local-dir:"):
        ais.enable_embeddings(dataset)  # ViT-B-32 / laion2b_s34b_b79k
    monkeypatch.undo()
    local = {"localhost", "127.0.0.1", "::1", "unix", None}
    assert [host for host in asked if host not in local] == []
    assert not ais.is_embeddings_enabled(dataset)


# -- at scale: id diffs stream, edited samples are processed a page at a time


@pytest.fixture
def empty_store(store):
    """An empty index, embedded (Qdrant Edge) or through qdrant-client."""
    store.ensure(INFO)
    return store


def _fill(store, ids, seed=0):
    vectors = np.random.default_rng(seed).standard_normal((len(ids), DIM))
    store.upsert(ids, vectors, [{}] * len(ids))


def _raw_samples_dataset(sample_ids):
    """A dataset whose samples have the given ids (inserted as FiftyOne
    writes sample documents): ids that differ in their first bytes, which
    ids made in one process do not."""
    dataset = fo.Dataset("test-" + uuid.uuid4().hex[:10])
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    dataset._sample_collection.insert_many([
        {"_id": ObjectId(i), "filepath": f"/data/{i}.jpg", "tags": [],
         "_media_type": "image", "_rand": 0.5,
         "_dataset_id": dataset._doc.id, "created_at": now,
         "last_modified_at": now}
        for i in sample_ids
    ])
    return dataset


def test_mongodb_and_both_stores_list_ids_in_the_same_order(empty_store):
    # the high bit set and not, equal prefixes, and ids made here
    ids = make_ids(300)
    ids += ["00" * 11 + "01", "ff" * 12, "7f" + "ff" * 11, "80" + "00" * 11]
    ids += [ids[0][:22] + f"{(int(ids[0][22:], 16) + 1) % 256:02x}"]
    ids += [str(ObjectId()) for _ in range(50)]
    ids = list(dict.fromkeys(ids))
    dataset = _raw_samples_dataset(ids)
    _fill(empty_store, ids)

    in_mongo = [i for page, _ in sync.sample_pages(dataset, 7) for i in page]
    in_index = [i for page in empty_store.iter_sample_ids(7) for i in page]

    assert in_mongo == in_index == sorted(ids)
    # and each resumes after a given id
    after = in_mongo[100]
    assert [i for p, _ in sync.sample_pages(dataset, 9, after)
            for i in p] == in_mongo[101:]
    assert [i for p in empty_store.iter_sample_ids(9, after)
            for i in p] == in_mongo[101:]


def test_id_diff_holds_at_most_a_page_of_each_side(empty_store):
    ids = sorted(str(ObjectId()) for _ in range(200))
    stray = sorted(make_ids(30, seed=1))  # vectors of no sample
    unindexed = set(ids[5::7])  # samples without a vector
    dataset = _raw_samples_dataset(ids)
    indexed = [i for i in ids if i not in unindexed] + stray
    _fill(empty_store, indexed)
    page = 6
    pulled = {"samples": 0, "index": 0}

    def counted(pages, side):
        for p in pages:
            pulled[side] += len(p[0] if side == "samples" else p)
            yield p

    missing, gone, decided = [], [], {"samples": 0, "index": 0}
    for part in sync._merge_ids(
        counted(sync.sample_pages(dataset, page), "samples"),
        counted(empty_store.iter_sample_ids(page), "index"),
    ):
        decided["samples"] += part.num_samples
        decided["index"] += len(part.indexed)
        # what was read and not yet decided on: at most a page per side
        assert pulled["samples"] - decided["samples"] <= page
        assert pulled["index"] - decided["index"] <= page
        missing += [i for i, _ in part.missing]
        gone += part.gone

    assert sorted(missing) == sorted(unindexed)
    assert gone == stray
    assert decided == {"samples": 200, "index": len(indexed)}


def test_index_pages_hand_the_index_over_between_two(tmp_path):
    """A long id diff holds the embedded index from page to page (one
    opening), yet another user of it gets it between two pages, and the
    scroll goes on where it was."""
    from fiftyone_ai_search.store.edge import HOLD_SLICE, EdgeStore

    store = EdgeStore("handover", tmp_path / "indexes", lock_timeout=20)
    store.ensure(INFO)
    ids = sorted(str(ObjectId()) for _ in range(40))
    _fill(store, ids[:30])
    other = EdgeStore("handover", tmp_path / "indexes", lock_timeout=20)
    events = []

    def write_more():
        events.append("asks")
        _fill(other, ids[30:])  # past where the scroll is
        events.append("wrote")

    pages = store.iter_sample_ids(page_size=10)
    got = list(next(pages))
    writer = threading.Thread(target=write_more)
    writer.start()
    while not events:
        time.sleep(0.01)
    time.sleep(HOLD_SLICE + 0.1)  # held long enough to hand over
    assert events == ["asks"]  # waits while the diff holds the index
    for page in pages:
        got += page
    writer.join(timeout=20)

    assert events == ["asks", "wrote"]
    assert got == ids  # what was written during the hand-over is seen too
    store.drop()


@pytest.mark.slow
def test_deletions_and_repairs_across_many_pages(tmp_path, monkeypatch):
    dataset = shapes_dataset(tmp_path, num_samples=30)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    monkeypatch.setattr(sync, "PAGE_SIZE", 4)

    ids = dataset.values("id")
    gone = ids[1::5]  # in every page
    dataset.delete_samples(gone)
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)

    assert (report.removed, report.added, report.updated) == (6, 0, 0)
    assert set(ais.get_embeddings(dataset)[0]) == set(dataset.values("id"))

    # an index changed behind our back: vectors lost, a stray one added
    store = indexes.open_index(dataset)
    lost = dataset.values("id")[::3]
    stray = str(ObjectId())
    store.delete(lost)
    store.upsert([stray], np.ones((1, 64)), [{}])
    store.close()
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)

    assert (report.removed, report.added, report.updated) == (1, len(lost), 0)
    assert ais.get_embeddings(dataset)[0] == dataset.values("id")


def test_edits_across_many_pages(tmp_path, monkeypatch):
    dataset = shapes_dataset(tmp_path, num_samples=30)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    before = _vectors(dataset)
    monkeypatch.setattr(sync, "PAGE_SIZE", 4)

    dataset.tag_samples("reviewed")  # every sample, no image changed
    a, b, c = dataset.take(3, seed=7)
    a.filepath, b.filepath = b.filepath, a.filepath
    a.save()
    b.save()
    os.remove(c.filepath)
    seen = []
    report = ais.calculate_embeddings(
        dataset, wait=True, progress=lambda done, total: seen.append(
            (done, total)))

    assert (report.updated, report.failed, report.skipped) == (2, 1, 27)
    assert seen[-1] == (3, 3)  # what was embedded, of what was to embed
    assert all(d <= t for d, t in seen)
    after = _vectors(dataset)
    np.testing.assert_allclose(after[a.id], before[b.id], atol=1e-6)
    assert c.id not in after


@pytest.mark.parametrize("shown", [True, False])
def test_the_progress_bar_follows_fiftyones_setting(tmp_path, monkeypatch,
                                                    capsys, shown):
    """fo.config.show_progress_bars turns FiftyOne's bars off in scripts
    and logs: ours too (issue 26, item 6)."""
    dataset = shapes_dataset(tmp_path, num_samples=3)
    monkeypatch.setattr(fo.config, "show_progress_bars", shown)
    capsys.readouterr()
    ais.calculate_embeddings(dataset, wait=True)
    bar = f"Embedding '{dataset.name}'" in capsys.readouterr().err
    assert bar is shown
