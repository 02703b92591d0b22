"""The computation lease: one computation per dataset, across processes."""

import dataclasses
import datetime
import multiprocessing
import os
import socket

import fiftyone as fo
import pytest

from fiftyone_ai_search.index import state as st


def _dataset():
    dataset = fo.Dataset()
    st.enable(dataset, "m", None, "m/none", "edge")
    return dataset


def _grab(name, results, done):
    import fiftyone as fo

    from fiftyone_ai_search.index import state

    lease = state.try_acquire(fo.load_dataset(name))
    results.put(lease is not None)
    if lease is not None:
        done.wait(120)  # hold it until every process has tried
        lease.release()


@pytest.mark.slow
def test_only_one_of_many_racing_processes_gets_the_lease():
    dataset = _dataset()
    dataset.persistent = True
    try:
        ctx = multiprocessing.get_context("spawn")
        results, done = ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=_grab, args=(dataset.name, results, done))
                 for _ in range(4)]
        for p in procs:
            p.start()
        won = [results.get(timeout=120) for _ in procs]
        done.set()
        for p in procs:
            p.join(60)
        assert won.count(True) == 1
    finally:
        dataset.delete()


def test_lease_blocks_until_released_and_shows_in_progress():
    dataset = _dataset()
    lease = st.try_acquire(dataset)
    assert lease is not None
    assert st.is_running(st.get(dataset))
    assert st.try_acquire(dataset) is None

    lease.release()

    assert not st.is_running(st.get(dataset))
    again = st.try_acquire(dataset)
    assert again is not None
    again.release()


@pytest.mark.slow
def test_lease_of_a_dead_process_is_taken_over_at_once():
    dataset = _dataset()
    proc = multiprocessing.get_context("spawn").Process(target=os.getpid)
    proc.start()
    proc.join()
    now = st.utcnow()
    st.update(dataset, lease={"token": "x", "host": socket.gethostname(),
                              "pid": proc.pid, "acquired": now,
                              "heartbeat": now})

    assert not st.is_running(st.get(dataset))
    lease = st.try_acquire(dataset)
    assert lease is not None
    lease.release()


def test_lease_of_another_host_expires_when_its_heartbeat_stops():
    dataset = _dataset()
    fresh = st.utcnow()
    st.update(dataset, lease={"token": "x", "host": "elsewhere", "pid": 1,
                              "acquired": fresh, "heartbeat": fresh})
    assert st.try_acquire(dataset) is None

    stale = fresh - datetime.timedelta(seconds=st.LEASE_STALE_SECONDS + 1)
    st.update(dataset, **{"lease.heartbeat": stale})
    lease = st.try_acquire(dataset)
    assert lease is not None
    lease.release()


def test_state_is_not_stored_on_the_dataset():
    dataset = _dataset()
    dataset.reload()
    assert not dataset.info
    assert "ai_search" not in str(dataset._doc.to_dict())


def test_the_state_is_read_as_a_type_of_the_document_as_stored():
    from fiftyone_ai_search.index import targets

    dataset = _dataset()
    doc, state = st.get(dataset), st.load(dataset)
    assert state.key == doc["_id"] == st.dataset_key(dataset)
    # every field of the stored document, under its own name; the index
    # references and the progress as types whose stored form is the
    # document's
    refs = {"index", "build", "retired", "progress"}
    for name in set(doc) - {"_id"} - refs:
        assert getattr(state, name) == doc[name], name
    assert state.enabled and state.index is None and state.build.name
    assert isinstance(state.build, st.IndexRef)
    assert state.build.to_doc() == doc["build"]
    assert st.IndexRef.from_doc(doc["build"]) == state.build
    assert state.retired == doc["retired"] == []
    assert state.build.generation == state.generation
    assert state.progress is None and doc["progress"] is None
    assert state.indexes == [state.build]
    assert st.as_state(doc) == state and st.as_state(state) is state

    # a dataset stands for its images: one key, one target
    images = targets.of(dataset)
    assert targets.of(images) is images and images == targets.of(dataset)
    assert images.key == st.dataset_key(dataset) == str(dataset._doc.id)
    assert not images.is_objects and images.field is None


def test_an_index_reference_is_a_type_read_from_its_stored_form():
    stored = {"name": "dataset_x_1", "backend": "edge", "model": "m",
              "pretrained": None, "model_identity": "m@1", "crop": None,
              "sampling": None}
    ref = st.IndexRef.from_doc(stored)
    assert (ref.name, ref.backend, ref.model_identity) == (
        "dataset_x_1", "edge", "m@1")
    # an index searches use is stored without a build's fields
    assert ref.generation is None and ref.to_doc() == stored
    assert st.IndexRef.of(stored) == ref and st.IndexRef.of(ref) is ref
    assert ref.model_label == "m"
    assert dataclasses.replace(ref, pretrained="p").model_label == "m (p)"
    assert ref.same_index(dataclasses.replace(ref, name="dataset_x_2"))
    assert not ref.same_index(dataclasses.replace(ref, crop={"pad": 1}))
    # one that cannot be opened (of a damaged document) is not a reference
    for damaged in (None, "name", {"name": "x"}, {"name": 3, "backend":
                    "edge"}, {"name": "x", "backend": "nowhere"}):
        assert st.IndexRef.from_doc(damaged) is None
    with pytest.raises(ValueError, match="Not an index reference"):
        st.IndexRef.of({"name": "x"})


def test_the_progress_of_a_run_is_a_type_that_computes_its_share():
    started = datetime.datetime(2026, 1, 1)
    stored = {"done": 30, "total": 120, "started_at": started,
              "building": False, "index": "dataset_x_1"}
    p = st.Progress.from_doc(stored)
    assert (p.done, p.total, p.building, p.index, p.frames) == (
        30, 120, False, "dataset_x_1", None)
    assert p.fraction == 0.25 and p.percent == 25
    # what get_status says of it: the stored dict less when it started,
    # with the share done
    assert p.to_status() == {"done": 30, "total": 120, "building": False,
                             "index": "dataset_x_1", "fraction": 0.25}
    # a frame index's run counts its frames too; a status's dict reads back
    frames = st.Progress.from_doc(dict(stored, frames=7, done=1, total=3))
    assert frames.frames == 7 and frames.percent == 33
    assert st.Progress.from_doc(frames.to_status()).fraction == 1 / 3
    # before the run has counted what it embeds there is no share
    for early in ({}, {"done": 0, "total": None}, {"done": 0, "total": 0}):
        p = st.Progress.from_doc(early)
        assert p.fraction is None and p.percent is None
        assert "fraction" not in p.to_status()
    assert st.Progress().to_status() == {}
    # none, or what a damaged document holds instead of a dict
    for none in (None, "half", 3):
        assert st.Progress.from_doc(none) is None

    # the state reads it as stored
    dataset = _dataset()
    st.update(dataset, progress=stored)
    assert st.load(dataset).progress == st.Progress.from_doc(stored)
    assert st.load(dataset).progress.started_at is not None


def test_a_run_writes_its_progress_through_the_type():
    """The progress's stored shape has one definition (Progress): a run
    starts a phase with one and sets its fields as it goes."""
    started = datetime.datetime(2026, 1, 1)
    p = st.Progress(done=0, total=120, started_at=started, building=True,
                    index="dataset_x_2")
    assert st.Progress.from_doc(p.to_doc()) == p
    assert "frames" not in p.to_doc()  # an image or object index's
    dataset = _dataset()
    st.start_progress(dataset, p)
    st.set_progress(dataset, done=30)
    st.set_progress(dataset, total=100, frames=7)
    loaded = st.load(dataset).progress
    assert (loaded.done, loaded.total, loaded.frames, loaded.building,
            loaded.index) == (30, 100, 7, True, "dataset_x_2")
    with pytest.raises(ValueError, match="no field"):
        st.set_progress(dataset, percent=3)


def test_a_failure_record_says_what_it_holds():
    from fiftyone_ai_search.index import targets

    dataset = fo.Dataset()
    dataset.add_sample_field("boxes", fo.EmbeddedDocumentField,
                             embedded_doc_type=fo.Detections)
    images, objects = dataset, targets.Objects(dataset, "boxes")
    sample_id, label_id = "5f0000000000000000000001", "5f0000000000000000000002"
    # whose vectors are keyed by their sample's id: the images' alone (an
    # object's key is its label id, a frame's its video and frame number)
    assert targets.of(images).keyed_by_sample
    assert not objects.keyed_by_sample
    assert not targets.Frames.keyed_by_sample
    # and what a status's counts call their number
    assert (targets.of(images).count_key, objects.count_key,
            targets.Frames.count_key) == ("num_samples", "num_objects",
                                          "num_videos")
    st.record_failures(images, [{"key": sample_id, "sample_id": sample_id,
                                 "filepath": "a.png", "fingerprint": "f",
                                 "reason": "broken"}])
    st.record_failures(objects, [{"key": label_id, "sample_id": sample_id,
                                  "label_id": label_id, "filepath": "a.png",
                                  "fingerprint": "f+box", "reason": "broken",
                                  "file_fingerprint": "f"}])
    (image,), (obj,) = st.get_failures(images), st.get_failures(objects)
    assert (image["key"], image["sample_id"]) == (sample_id, sample_id)
    assert "label_id" not in image
    # an object's: its vector's key is its label id; its sample is named
    assert (obj["key"], obj["label_id"], obj["sample_id"]) == (
        label_id, label_id, sample_id)
    assert obj["file_fingerprint"] == "f" and obj["reason"] == "broken"
    assert st.get_failures_of(objects, [sample_id]) == [obj]
    assert st.get_failures_of(images, [sample_id]) == [image]

    # stored as before (failures recorded by an earlier version read alike)
    stored = st._failures().find_one({"dataset_id": objects.key}, {"_id": 0})
    assert (stored["sample_id"], stored["source_id"]) == (label_id, sample_id)
    assert "key" not in stored and "label_id" not in stored

    st.clear_failures(objects, [label_id])
    assert st.get_failures(objects) == [] and st.count_failures(images) == 1
