"""The frame index of a video dataset through the public SDK: small
synthetic videos (tests/videos.py) sampled at 1 frame per second, embedded
with the tiny CLIP in a streaming worker pool, kept in sync (new,
replaced, deleted and broken videos), killed midway and resumed."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fiftyone_ai_search as ais
from fiftyone_ai_search.demo import tiny_clip_model_name
from fiftyone_ai_search.embedding import pool
from fiftyone_ai_search.embedding.frames import FrameSampling
from fiftyone_ai_search.embedding.model import load_model, resolve_model
from fiftyone_ai_search.embedding.pipeline import (VideoEnd, VideoPart,
                                                   embed_videos)
from fiftyone_ai_search.index import indexes
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search.index.targets import (Frames, best_of_each_video,
                                              frame_key)
from fiftyone_ai_search.sync.frames import frames_consistent

from tests.videos import video_dataset, write_video

RED = ("red", "circle")
BLUE = ("blue", "square")
GREEN = ("green", "star")


def enable_frames(dataset, **kwargs):
    kwargs.setdefault("frames", True)
    return ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                                 compute=False, **kwargs)


def sync(dataset):
    return ais.calculate_embeddings(dataset, frames=True, wait=True,
                                    progress=False)


def points(dataset):
    """``{frame key: payload}`` of the frame index searches use."""
    store = indexes.open_ref(st.get(Frames(dataset))["index"])
    try:
        keys = [k for page in store.iter_sample_ids() for k in page]
        return store.get_payloads(keys)
    finally:
        store.close()


def test_first_sync_indexes_the_frames_of_every_video(tmp_path):
    dataset = video_dataset(tmp_path, [[RED, BLUE, GREEN, RED]] * 2
                            + [[BLUE, GREEN]])
    status = enable_frames(dataset)
    assert status["enabled"] and status["sampling"]["fps"] == 1.0

    report = sync(dataset)

    assert report.rebuilt and report.added == 3 and report.failed == 0
    found = points(dataset)
    ids = dataset.values("id")
    # 1 frame a second of 10 fps videos: frames 1, 11, 21, ...
    assert sorted(found) == sorted(
        frame_key(i, n) for i, seconds in zip(ids, (4, 4, 2))
        for n in range(1, 10 * seconds, 10))
    first = found[frame_key(ids[0], 1)]
    assert first["frames"] == 4 and first["frames_read"] == 40
    assert first["source_id"] == ids[0] and first["frame_number"] == 1
    later = found[frame_key(ids[0], 21)]
    assert later["timestamp"] == pytest.approx(2.0, abs=0.05)
    assert "frames" not in later  # the summary is frame 1's

    status = ais.get_status(dataset, frames=True)
    assert status["counts"] == {"num_videos": 3, "num_indexed": 10,
                                "num_failed": 0}
    assert status["object_fields"] == []  # a frame index is no object index
    assert ais.is_embeddings_enabled(dataset, frames=True)
    assert frames_consistent(Frames(dataset), indexes.open_ref(
        st.get(Frames(dataset))["index"]))


def test_sync_embeds_exactly_the_videos_that_changed(tmp_path):
    dataset = video_dataset(tmp_path, [[RED, BLUE, GREEN]] * 3)
    enable_frames(dataset)
    sync(dataset)
    ids = dataset.values("id")

    # a tag embeds nothing
    sample = dataset[ids[0]]
    sample.tags.append("checked")
    sample.save()
    report = sync(dataset)
    # (the others may be looked at again: the watermark's margin)
    assert (report.added, report.updated) == (0, 0) and report.skipped >= 1

    # a new video: only it
    path = os.path.join(os.path.dirname(sample.filepath), "new.mp4")
    write_video(path, [GREEN, RED], seed=5)
    import fiftyone as fo
    dataset.add_sample(fo.Sample(filepath=path))
    report = sync(dataset)
    # (the tagged video may be looked at again: the watermark's margin)
    assert (report.added, report.updated) == (1, 0)

    # a replaced video (shorter): its stale frames go
    replaced = dataset[ids[1]]
    write_video(replaced.filepath, [BLUE], seed=9)
    os.utime(replaced.filepath, ns=(time.time_ns(), time.time_ns() + 10**9))
    replaced["note"] = "re-encoded"  # an edit FiftyOne stamps
    replaced.save()
    report = sync(dataset)
    assert (report.added, report.updated) == (0, 1)
    found = points(dataset)
    assert sorted(k for k in found if k.startswith(ids[1])) == [
        frame_key(ids[1], 1)]
    assert found[frame_key(ids[1], 1)]["frames"] == 1

    # a deleted video: its frames go
    dataset.delete_samples(ids[2])
    report = sync(dataset)
    assert report.removed == 3
    assert not any(k.startswith(ids[2]) for k in points(dataset))
    assert ais.get_status(dataset, frames=True)["counts"]["num_indexed"] \
        == 3 + 1 + 2


def test_a_broken_video_fails_alone_and_is_retried_once_fixed(tmp_path):
    dataset = video_dataset(tmp_path, [[RED, BLUE]] * 2)
    broken = dataset.first()
    with open(broken.filepath, "wb") as f:
        f.write(b"not a video at all")

    enable_frames(dataset)
    report = sync(dataset)

    assert (report.added, report.failed) == (1, 1)
    status = ais.get_status(dataset, frames=True)
    (failure,) = status["failures"]
    assert failure["sample_id"] == broken.id
    assert "cannot open video" in failure["reason"]
    assert not any(k.startswith(broken.id) for k in points(dataset))
    # unchanged, it is not tried again
    assert sync(dataset).failed == 0

    write_video(broken.filepath, [GREEN, RED, BLUE], seed=3)
    report = sync(dataset)
    assert report.added == 1 and report.failed == 0
    assert ais.get_status(dataset, frames=True)["failures"] == []
    assert points(dataset)[frame_key(broken.id, 1)]["frames"] == 3


def test_another_sampling_rule_rebuilds_the_index_beside(tmp_path):
    dataset = video_dataset(tmp_path, [[RED, BLUE]] * 2)
    enable_frames(dataset)
    sync(dataset)
    first = st.get(Frames(dataset))["index"]["name"]

    enable_frames(dataset, frames=FrameSampling(fps=2))
    doc = st.get(Frames(dataset))
    assert doc["index"]["name"] == first and doc["build"]["sampling"][
        "fps"] == 2.0
    report = sync(dataset)

    assert report.rebuilt and report.added == 2
    doc = st.get(Frames(dataset))
    assert doc["index"]["name"] != first and doc["build"] is None
    # 2 a second of 10 fps: frames 1, 6, 11, 16 of each 2 s video
    assert len(points(dataset)) == 8


def test_bad_requests_say_what_is_wrong(tmp_path):
    from fiftyone_ai_search.demo import shapes

    images = shapes.make_shapes_dataset(
        name="not-videos-" + os.urandom(4).hex(), num_samples=4,
        images_dir=str(tmp_path / "images"))
    with pytest.raises(ais.UnsupportedMediaError, match="not a video"):
        enable_frames(images)
    videos = video_dataset(tmp_path, [[RED]])
    with pytest.raises(ais.UnsupportedMediaError, match="frames=True"):
        ais.enable_embeddings(videos, model=tiny_clip_model_name(),
                              compute=False)
    with pytest.raises(ValueError, match="patches_field"):
        enable_frames(videos, patches_field="ground_truth")
    with pytest.raises(ValueError, match="FrameSampling"):
        enable_frames(videos, frames={"fps": 2})
    # (a frame index is a Brain run under a key given to it:
    # tests/test_brain_frames.py; a bad key is refused first)
    with pytest.raises(ValueError, match="brain_key must be a name"):
        enable_frames(videos, brain_key="not a key")
    assert not ais.is_embeddings_enabled(videos, frames=True)
    # an image search of a video dataset names what to call instead
    with pytest.raises(ais.AISearchNotEnabledError, match="search_frames"):
        ais.perform_ai_search(videos, prompt="a red circle")


def test_disable_removes_the_frame_index_alone(tmp_path):
    dataset = video_dataset(tmp_path, [[RED]])
    enable_frames(dataset)
    sync(dataset)
    name = st.get(Frames(dataset))["index"]["name"]

    ais.disable_embeddings(dataset, frames=True)

    assert st.get(Frames(dataset)) is None
    assert not indexes.open_ref({"name": name, "backend": "edge"}).exists()


@pytest.fixture(scope="module")
def tiny_model():
    return load_model(resolve_model(tiny_clip_model_name(), None))


def test_a_long_video_streams_through_a_worker_with_bounded_parts(
        tmp_path, tiny_model, monkeypatch):
    """A worker sends at most PARTS_AHEAD parts beyond those taken: a slow
    consumer of a long video never finds more waiting."""
    path = str(tmp_path / "long.mp4")
    write_video(path, [RED, BLUE, GREEN] * 10, seed=1)  # 30 s: 30 frames
    waiting = []

    class Watched(pool.WorkerPool):
        def poll(self, retries, block):
            super().poll(retries, block)
            waiting.append(len(self.parts))

    monkeypatch.setattr(pool, "WorkerPool", Watched)
    numbers = []
    for event in embed_videos(tiny_model, [("v", path, None)],
                              FrameSampling(), batch_size=1, num_workers=1):
        if isinstance(event, VideoPart):
            numbers.extend(event.frame_numbers)
            time.sleep(0.05)  # the model is slow: the decoder waits
        else:
            assert isinstance(event, VideoEnd) and event.reason is None
            assert event.summary["frames"] == 30
    assert numbers == list(range(1, 300, 10))
    assert max(waiting) <= pool.PARTS_AHEAD + 1  # (+ the video's end)


def test_workers_and_the_calling_thread_embed_alike(tmp_path, tiny_model):
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"v{i}.mp4"))
        write_video(paths[-1], [RED, GREEN, BLUE], seed=i)
    videos = [(f"k{i}", p, None) for i, p in enumerate(paths)]

    def vectors(num_workers):
        found = {}
        for event in embed_videos(tiny_model, videos, FrameSampling(),
                                  batch_size=2, num_workers=num_workers):
            if isinstance(event, VideoPart):
                for n, v in zip(event.frame_numbers, event.vectors):
                    found[(event.key, n)] = v
        return found

    here, pooled = vectors(0), vectors(2)
    assert sorted(here) == sorted(pooled) and len(here) == 9
    for key, vector in here.items():
        assert float(np.dot(vector, pooled[key])) > 0.999


def _kill_frames_worker_midway(target, dataset, frames, timeout=120):
    """Starts a frame sync worker (two frames a part, decoding in its
    calling thread), waits until it committed ``frames`` frames, and kills
    it with SIGKILL."""
    env = dict(os.environ, FIFTYONE_AI_SEARCH_BATCH_SIZE="2",
               FIFTYONE_AI_SEARCH_NUM_WORKERS="0")
    worker = subprocess.Popen(
        [sys.executable, "-m", "fiftyone_ai_search", "sync", "--quiet",
         "--dataset", dataset.name, "--frames"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and worker.poll() is None:
        progress = (st.get(target) or {}).get("progress") or {}
        if progress.get("frames", 0) >= frames:
            break
        time.sleep(0.02)
    assert worker.poll() is None, "worker finished before it could be killed"
    worker.send_signal(signal.SIGKILL)
    worker.wait()


@pytest.mark.slow
def test_kill_9_mid_video_and_resume_finishes_without_reembedding(tmp_path):
    # 4 videos of 20 s: 20 frames each, 10 parts of 2
    dataset = video_dataset(tmp_path, [[RED, BLUE, GREEN, BLUE] * 5] * 4)
    enable_frames(dataset)
    target = Frames(dataset)
    _kill_frames_worker_midway(target, dataset, frames=26)

    with pytest.raises(ais.IndexNotReadyError):
        indexes.require_index(target)
    store = indexes.open_ref(st.get(target)["build"])
    try:
        keys = [k for page in store.iter_sample_ids() for k in page]
        complete = [k[:24] for k in keys if k.endswith("00000001")]
        started = {k[:24] for k in keys}
        before = store.get_vectors([frame_key(v, 1) for v in complete])
    finally:
        store.close()
    assert 0 < len(complete) < 4
    # what it left of the video it was decoding has no frame 1
    half = started - set(complete)
    assert len(half) <= 1

    report = sync(dataset)

    assert report.skipped == len(complete)
    assert report.added == 4 - len(complete)
    found = points(dataset)
    assert len(found) == 80
    assert all(found[frame_key(v, 1)]["frames"] == 20
               for v in dataset.values("id"))
    # the complete videos kept their vectors (never embedded again)
    store = indexes.open_ref(st.get(target)["index"])
    try:
        after = store.get_vectors(before[0])
        assert frames_consistent(target, store)
    finally:
        store.close()
    assert after[0] == before[0]
    assert np.allclose(after[1], before[1])


def _with_metadata(dataset):
    """Gives each video the metadata FiftyOne's frames views count frames
    with (FiftyOne computes it with ffprobe, not installed here)."""
    import fiftyone as fo

    for sample in dataset.iter_samples(autosave=True):
        seconds = len(sample["layout"])
        sample.metadata = fo.VideoMetadata(
            frame_rate=10.0, total_frame_count=10 * seconds, duration=seconds,
            frame_width=128, frame_height=128, encoding_str="mp4v",
            size_bytes=os.path.getsize(sample.filepath),
            mime_type="video/mp4")


@pytest.fixture(scope="module")
def red_circles(tmp_path_factory):
    """3 videos showing a red circle 4 seconds of 6, 3 without (red
    squares, blue circles instead), indexed (read-only for tests)."""
    red_square, blue_circle = ("red", "square"), ("blue", "circle")
    with_red = [RED, red_square, RED, BLUE, RED, RED]
    without = [blue_circle, red_square, GREEN, BLUE, blue_circle, GREEN]
    dataset = video_dataset(tmp_path_factory.mktemp("red-circles"),
                            [with_red] * 3 + [without] * 3)
    _with_metadata(dataset)
    enable_frames(dataset)
    sync(dataset)
    return dataset


def _shown(dataset, hits):
    layouts = dict(zip(*dataset.values(["id", "layout"])))
    # the frame of second k (10 fps, 1 a second) is frame 10 k + 1
    return [layouts[h["sample_id"]][(h["frame_number"] - 1) // 10]
            for h in hits]


def test_search_frames_by_prompt_finds_the_red_circles(red_circles):
    hits = ais.search_frames(red_circles, prompt="a red circle", limit=10)

    assert len(hits) == 10
    assert sum(s == "red circle" for s in _shown(red_circles, hits)) >= 9
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(h["timestamp"] == pytest.approx((h["frame_number"] - 1) / 10,
                                               abs=0.05) for h in hits)


def test_the_best_frame_of_each_video_is_one_definition():
    """What a search and a frame collection keep with best_per_video: each
    video's best row, best first, its other fields kept along."""
    a, b = "5f0000000000000000000001", "5f0000000000000000000002"
    rows = [(frame_key(a, 1), 0.2, "x"), (frame_key(b, 11), 0.5, "y"),
            (frame_key(a, 21), 0.4, "z"), (frame_key(b, 1), 0.5, "w")]
    # a diverse collection's rows come in pick order: sorted by score here;
    # of equal scores the first stays
    assert best_of_each_video(rows) == [(frame_key(b, 11), 0.5, "y"),
                                        (frame_key(a, 21), 0.4, "z")]
    assert best_of_each_video([]) == []


def test_best_frame_per_video_and_scope(red_circles):
    ids = red_circles.values("id")
    best = ais.search_frames(red_circles, prompt="a red circle", limit=3,
                             best_per_video=True)
    assert sorted(h["sample_id"] for h in best) == sorted(ids[:3])
    assert _shown(red_circles, best) == ["red circle"] * 3

    # a view of videos searches their frames only
    view = red_circles.select(ids[3:])
    hits = ais.search_frames(view, prompt="a red circle", limit=5)
    assert {h["sample_id"] for h in hits} <= set(ids[3:])

    # an indexed frame finds frames like it: itself first
    hits = ais.search_frames(red_circles, frame=(ids[0], 1), limit=5)
    assert (hits[0]["sample_id"], hits[0]["frame_number"]) == (ids[0], 1)
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_hits_open_as_frames_view_best_first_without_touching_videos(
        red_circles):
    hits = ais.search_frames(red_circles, prompt="a red circle", limit=6)
    view = ais.frames_view(red_circles, hits)

    assert list(zip(view.values("sample_id"), view.values("frame_number"))) \
        == [(h["sample_id"], h["frame_number"]) for h in hits]
    # the view wrote nothing that the frame sync would look at
    report = sync(red_circles)
    assert (report.added, report.updated, report.removed) == (0, 0, 0)


def test_search_frames_says_what_is_wrong(red_circles, tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        ais.search_frames(red_circles)
    with pytest.raises(ValueError, match="not in the frame index"):
        ais.search_frames(red_circles, frame=(red_circles.first().id, 5))
    other = video_dataset(tmp_path, [[RED]])
    with pytest.raises(ais.AISearchNotEnabledError, match="frames=True"):
        ais.search_frames(other, prompt="a red circle")


def test_a_worker_that_crashes_fails_its_video_alone(tmp_path, tiny_model,
                                                      monkeypatch):
    first, second = str(tmp_path / "first.mp4"), str(tmp_path / "second.mp4")
    write_video(first, [RED, BLUE] * 10, seed=1)  # 20 parts of 1 frame
    write_video(second, [GREEN, RED], seed=2)
    pools = []

    class Watched(pool.WorkerPool):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(pool, "WorkerPool", Watched)
    ends, parts = {}, {}
    for event in embed_videos(tiny_model, [("first", first, None),
                                           ("second", second, None)],
                              FrameSampling(), batch_size=1, num_workers=1):
        if isinstance(event, VideoPart):
            parts.setdefault(event.key, []).extend(event.frame_numbers)
            if event.key == "first" and len(parts["first"]) == 2:
                # the worker decoding it dies (a decoder's segfault)
                (worker,) = pools[0]._workers
                worker._process.kill()
        else:
            ends[event.key] = event
    assert ends["first"].reason.startswith("decoder crashed")
    assert ends["second"].reason is None
    assert parts["second"] == [1, 11]


def test_the_refresher_keeps_frame_indexes_fresh(tmp_path):
    from fiftyone_ai_search.scheduler import refresh_all

    dataset = video_dataset(tmp_path, [[RED, BLUE]] * 2)
    enable_frames(dataset)
    name = dataset.name

    report = refresh_all(datasets=[name])
    assert report.synced[name].added == 2
    again = refresh_all(datasets=[name])
    assert name in again.unchanged or again.synced[name].added == 0

    sample = dataset.first()
    write_video(sample.filepath, [GREEN], seed=4)
    sample["note"] = "re-encoded"
    sample.save()
    report = refresh_all(datasets=[name])
    assert report.synced[name].updated == 1

    # a deleted dataset's frame index goes with it
    key = Frames(dataset).key
    dataset.delete()
    report = refresh_all()
    assert key in report.removed
    assert st.get_key(key) is None
