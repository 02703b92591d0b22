"""The Brain and video frames (issue 24, point 5): a frame index as a
Brain run of frames views, ``to_frames(...).sort_by_similarity(query,
brain_key=...)`` searching it, and what stays refused (videos and clips,
vectors of other models) with what to use instead (see
fiftyone_ai_search.brain_frames and docs/design.md, "Video frames"). On
small synthetic videos in a real mongod, with the tiny CLIP."""

import os
import uuid

import cv2

import numpy as np
import pytest

import fiftyone as fo
import fiftyone.brain as fob
from fiftyone import ViewField as F

import fiftyone_ai_search as ais
from fiftyone_ai_search import brain
from fiftyone_ai_search import duplicates
from fiftyone_ai_search import embeddings
from fiftyone_ai_search.demo import tiny_clip_model_name
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search.index import targets
from fiftyone_ai_search.query import pairs

from tests.helpers import count_pair_passes, labelled_video, shapes_dataset
from tests.videos import FRAME_RATE, video_dataset

#: the Brain's model: the tiny CLIP (offline), as in test_brain_contract
TINY = dict(model="open-clip-torch",
            model_kwargs={"clip_model": tiny_clip_model_name(),
                          "pretrained": None})

RED = ("red", "circle")
BLUE = ("blue", "square")
GREEN = ("green", "star")


def _name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _with_metadata(dataset):
    """The metadata FiftyOne's frames views count frames with (FiftyOne
    computes it with ffprobe, not installed here)."""
    for sample in dataset.iter_samples(autosave=True):
        seconds = len(sample["layout"])
        sample.metadata = fo.VideoMetadata(
            frame_rate=float(FRAME_RATE),
            total_frame_count=FRAME_RATE * seconds, duration=seconds,
            frame_width=128, frame_height=128)


def _videos(directory, layouts):
    dataset = video_dataset(directory, layouts, name=_name("brain-frames"))
    _with_metadata(dataset)
    return dataset


def _sync(dataset):
    ais.calculate_embeddings(dataset, frames=True, wait=True, progress=False)


@pytest.fixture(scope="module")
def red_circles(tmp_path_factory):
    """3 videos showing a red circle 4 seconds of 6, 3 without, their
    frame index registered as the Brain run ``"frames"`` (read-only for
    tests)."""
    red_square, blue_circle = ("red", "square"), ("blue", "circle")
    with_red = [RED, red_square, RED, BLUE, RED, RED]
    without = [blue_circle, red_square, GREEN, BLUE, blue_circle, GREEN]
    dataset = _videos(tmp_path_factory.mktemp("red-circles"),
                      [with_red] * 3 + [without] * 3)
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          frames=True, brain_key="frames", compute=False)
    _sync(dataset)
    yield dataset
    dataset.delete()


def _shown(dataset, view):
    """What each frame of a frames view shows (its video's segment)."""
    layouts = dict(zip(*dataset.values(["id", "layout"])))
    # 1 frame a second at 10 fps: frame 10 k + 1 is of second k
    return [layouts[v][(n - 1) // FRAME_RATE] for v, n in zip(
        *view.values(["sample_id", "frame_number"]))]


def _frames(view):
    return list(zip(*view.values(["sample_id", "frame_number"])))


def test_a_prompt_sorts_a_frames_view_red_circles_first(red_circles):
    frames = red_circles.to_frames(sample_frames="dynamic", fps=1)
    view = frames.sort_by_similarity("a red circle", k=10,
                                     brain_key="frames")

    assert len(view) == 10
    assert sum(s == "red circle" for s in _shown(red_circles, view)) >= 9
    # the frame index's own search, in the same order
    hits = ais.search_frames(red_circles, prompt="a red circle", limit=10)
    assert _frames(view) == [(h["sample_id"], h["frame_number"])
                             for h in hits]


def test_a_frames_view_built_again_has_new_ids_and_still_works(
        red_circles):
    first = red_circles.to_frames(sample_frames="dynamic", fps=1)
    again = red_circles.to_frames(sample_frames="dynamic", fps=1)
    # FiftyOne gave the unlabelled frames new ids
    assert not set(first.values("id")) & set(again.values("id"))

    before = first.sort_by_similarity("a red circle", k=10,
                                      brain_key="frames")
    after = again.sort_by_similarity("a red circle", k=10,
                                     brain_key="frames", dist_field=None)
    assert _frames(after) == _frames(before)
    assert set(after.values("id")) <= set(again.values("id"))


def test_a_frame_id_finds_frames_like_it(red_circles):
    frames = red_circles.to_frames(sample_frames="dynamic", fps=1)
    query = frames.first()  # a red circle, second 0 of video 0
    view = frames.sort_by_similarity(query.id, k=5, brain_key="frames")

    assert view.first().id == query.id
    assert _shown(red_circles, view)[:3] == ["red circle"] * 3

    # the least similar: no red circle among them
    least = frames.sort_by_similarity(query.id, k=5, reverse=True,
                                      brain_key="frames")
    assert "red circle" not in _shown(red_circles, least)


def test_the_runs_results_search_views_of_some_videos(red_circles):
    results = red_circles.load_brain_results("frames")
    assert results.total_index_size == 6 * 6
    assert results.view._is_frames and results.index_size == 36

    view = results.sort_by_similarity("a red circle", k=10)
    assert sum(s == "red circle" for s in _shown(red_circles, view)) >= 9

    ids = red_circles.values("id")
    some = red_circles.select(ids[3:]).to_frames(sample_frames="dynamic",
                                                  fps=1)
    with results.use_view(some):
        assert results.index_size == 18
        view = results.sort_by_similarity("a red circle", k=5)
        assert {v for v, _ in _frames(view)} <= set(ids[3:])
        embeddings, frame_ids, _ = results.get_embeddings()
        assert embeddings.shape[0] == 18 and set(frame_ids) == set(
            some.values("id"))
    # the same through the stage, with the distances
    view = some.sort_by_similarity("a red circle", k=5, brain_key="frames",
                                   dist_field="dist")
    dists = view.values("dist")
    assert dists == sorted(dists) and all(0 <= d <= 2 for d in dists)


def test_find_duplicates_over_a_frames_view(red_circles):
    results = red_circles.load_brain_results("frames")
    frames = red_circles.to_frames(sample_frames="dynamic", fps=1)
    with results.use_view(frames):
        results.find_duplicates(thresh=1e-4)
        # the 3 videos with red circles are alike frame for frame (the
        # same layout and seeds 100 apart: not the same pixels), so only
        # exact copies count at this distance
        kept = set(results.current_sample_ids)
        assert set(results.duplicate_ids) <= kept
        results.find_duplicates(thresh=0.5)
        assert len(results.duplicate_ids) > 0


def test_a_labelled_frame_keeps_its_id_across_views(tmp_path):
    dataset = _videos(tmp_path, [[RED, BLUE, GREEN]])
    sample = dataset.first()
    sample.frames[11]["objects"] = fo.Detections(detections=[
        fo.Detection(label="square", bounding_box=[0.1, 0.1, 0.5, 0.5])])
    sample.save()
    try:
        ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                              frames=True, brain_key="frames", compute=False)
        _sync(dataset)
        labelled = dataset.to_frames(sample_frames="dynamic", fps=1).match(
            F("frame_number") == 11).first().id
        # a view without that frame: the query is found among the video
        # dataset's frame documents
        others = dataset.to_frames(sample_frames="dynamic", fps=1).match(
            F("frame_number") != 11)
        view = others.sort_by_similarity(labelled, k=2, brain_key="frames")
        assert len(view) == 2 and labelled not in view.values("id")
        # an unlabelled frame's id of another frames view is no frame now
        gone = dataset.to_frames(sample_frames="dynamic", fps=1).first().id
        with pytest.raises(ValueError, match="not in the index"):
            others.sort_by_similarity(gone, k=2, brain_key="frames")
    finally:
        dataset.delete()


def test_compute_similarity_on_a_frames_view_builds_the_frame_index(
        tmp_path):
    dataset = _videos(tmp_path, [[RED, BLUE], [GREEN, RED]])
    frames = dataset.to_frames(sample_frames="dynamic", fps=1)
    try:
        results = fob.compute_similarity(frames, backend="ai_search",
                                         brain_key="sim", **TINY)
        assert ais.is_embeddings_enabled(dataset, frames=True)
        assert results.total_index_size == 4
        view = frames.sort_by_similarity("a red circle", k=2,
                                         brain_key="sim")
        assert _shown(dataset, view) == ["red circle"] * 2
        # the run is of frames, and a frames view's default run
        assert dataset.get_brain_info("sim").config.frames
        default = frames.sort_by_similarity("a red circle", k=2)
        assert _frames(default) == _frames(view)
        # the Brain's uniqueness off the run's vectors
        fob.compute_uniqueness(frames, similarity_index="sim")
        scores = frames.values("uniqueness")
        assert len(scores) == 4 and all(0 <= u <= 1 for u in scores)

        dataset.delete_brain_run("sim")  # its last run: the index goes
        assert not ais.is_embeddings_enabled(dataset, frames=True)
        assert dataset.list_brain_runs(type="similarity") == []
    finally:
        dataset.delete()


def _write_frames(dataset):
    """Writes every frame of every video as FiftyOne's
    ``to_frames(sample_frames=True)`` would (``<video dir>/<video name>/
    %06d.jpg``), with OpenCV: FiftyOne then uses them and needs no
    ``ffmpeg`` binary."""
    for path in dataset.values("filepath"):
        folder = os.path.splitext(path)[0]
        os.makedirs(folder, exist_ok=True)
        capture = cv2.VideoCapture(path)
        number = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            number += 1
            cv2.imwrite(os.path.join(folder, f"{number:06d}.jpg"), frame)
        capture.release()


def test_frames_written_to_disk_sort_alike(tmp_path):
    dataset = _videos(tmp_path, [[RED, BLUE, RED], [GREEN, RED, BLUE],
                                 [BLUE, GREEN, BLUE]])
    try:
        ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                              frames=True, brain_key="frames", compute=False)
        _sync(dataset)
        _write_frames(dataset)
        frames = dataset.to_frames(sample_frames=True, fps=1)
        assert len(frames) == 9
        view = frames.sort_by_similarity("a red circle", k=3,
                                         brain_key="frames")
        assert _shown(dataset, view) == ["red circle"] * 3
    finally:
        dataset.delete()


def test_disable_and_a_new_rule_follow_the_run(tmp_path):
    dataset = _videos(tmp_path, [[RED, BLUE]])
    try:
        ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                              frames=True, brain_key="frames", compute=False)
        assert st.load(targets.Frames(dataset)).brain_key == "frames"
        # a new rule: the run's view is the new grid
        ais.enable_embeddings(dataset, frames=ais.FrameSampling(fps=2),
                              compute=False)
        view = dataset.load_brain_results("frames", cache=False).view
        assert view.values("frame_number") == [1, 6, 11, 16]

        ais.disable_embeddings(dataset, frames=True)
        assert dataset.list_brain_runs() == []
    finally:
        dataset.delete()


# -- what stays refused -------------------------------------------------------


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A video dataset (files never read: nothing here decodes) with a
    frame label, for its clips view."""
    dataset = labelled_video(tmp_path_factory.mktemp("video"),
                             _name("test-brain-frames"))
    yield dataset
    dataset.delete()


def _names_frame_search(message):
    assert "search_frames(" in message
    assert "frames_view(" in message


@pytest.mark.parametrize("kind", ["clips", "videos"])
@pytest.mark.parametrize("brain_key", ["frames_run", None])
def test_compute_similarity_on_videos_or_clips_is_refused(video, kind,
                                                          brain_key):
    # the Brain runs a clips view's run on the video dataset
    view = video.to_clips("frames.objects") if kind == "clips" else video
    what = (f"samples is a clips view of the video dataset '{video.name}'"
            if kind == "clips" else
            f"Dataset '{video.name}' is a video dataset")
    with pytest.raises(ais.UnsupportedMediaError, match=what) as e:
        fob.compute_similarity(view, backend="ai_search",
                               brain_key=brain_key, **TINY)
    message = str(e.value)
    assert "through a frames view" in message
    assert "to_frames(sample_frames='dynamic', fps=1)" in message
    assert "frames=True, brain_key=...)" in message
    _names_frame_search(message)
    # the Brain had registered the run: it is gone, and its key is free
    assert video.list_brain_runs() == []
    assert not ais.is_embeddings_enabled(video, frames=True)
    assert st.get(targets.Frames(video)) is None


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """A grouped dataset: an image slice ("left", the default) and two
    video slices ("front", "rear"), 3 groups."""
    from tests.test_frames_grouped import grouped_dataset

    dataset = grouped_dataset(tmp_path_factory.mktemp("grouped"))
    yield dataset
    dataset.delete()


@pytest.mark.parametrize("kind", ["slice", "clips", "active"])
def test_compute_similarity_on_a_video_slice_is_refused_up_front(grouped,
                                                                 kind):
    """The Brain hands the backend a grouped dataset for a view of its
    video slice: the run would be of images, and the Brain would embed
    every frame of the videos for it, to fail on the first vectors. It is
    refused before anything is embedded, naming the frames view of the
    slice, and nothing stays registered or switched on."""
    front = grouped.select_group_slices("front")
    if kind == "clips":
        view = front.to_clips([[(1, 5)]] * len(front))
    elif kind == "active":  # the grouped dataset, showing a video slice
        view = grouped.view()
        view.group_slice = "front"
    else:
        view = front
    with pytest.raises(ais.UnsupportedMediaError) as e:
        fob.compute_similarity(view, backend="ai_search", brain_key="sim",
                               **TINY)
    message = str(e.value)
    assert f"the grouped dataset '{grouped.name}'" in message
    slices = ("select_group_slices(media_type='video')" if kind == "active"
              else "select_group_slices('front')")
    assert (f"fob.compute_similarity(grouped_dataset.{slices}.to_frames("
            "sample_frames='dynamic', fps=1)") in message
    assert "enable_embeddings(grouped_dataset, frames=True" in message
    _names_frame_search(message)
    assert grouped.list_brain_runs() == []
    assert not ais.is_embeddings_enabled(grouped)
    assert not ais.is_embeddings_enabled(grouped, frames=True)


def test_the_image_slice_of_a_grouped_dataset_is_still_an_image_run(
        grouped):
    left = grouped.select_group_slices("left")
    try:
        results = fob.compute_similarity(left, backend="ai_search",
                                         brain_key="sim", **TINY)
        assert not results.config.frames
        assert grouped.list_brain_runs() == ["sim"]
        assert len(left.sort_by_similarity("a gray square", k=2,
                                           brain_key="sim")) == 2
    finally:
        if "sim" in grouped.list_brain_runs():
            grouped.delete_brain_run("sim")
        ais.disable_embeddings(grouped)


def test_a_frames_run_refuses_videos_clips_and_vectors(red_circles):
    with pytest.raises(ValueError, match="take a frames view") as e:
        red_circles.sort_by_similarity("a red circle", k=3,
                                       brain_key="frames")
    _names_frame_search(str(e.value))
    results = red_circles.load_brain_results("frames")
    with pytest.raises(ValueError, match="not its videos or clips"):
        results.use_view(red_circles.to_clips(
            [[(1, 10)]] * len(red_circles)))
    with pytest.raises(ValueError, match="takes no vectors"):
        results.add_to_index(np.ones((1, 8)), [red_circles.first().id])
    with pytest.raises(ValueError, match="use_view"):
        results.remove_from_index([red_circles.first().id])
    # the run still serves its frames
    assert results.index_size == 36


def test_a_frames_view_of_other_vectors_or_model_is_refused(red_circles,
                                                            tmp_path):
    frames = red_circles.to_frames(sample_frames="dynamic", fps=1)
    with pytest.raises(ValueError, match="of no model it runs"):
        fob.compute_similarity(frames, backend="ai_search", brain_key="vec",
                               embeddings=np.ones((36, 8)))
    assert "vec" not in red_circles.list_brain_runs()
    with pytest.raises(ValueError, match="would mix two models"):
        fob.compute_similarity(frames, backend="ai_search", brain_key="b32",
                               embeddings=False, clip_model="ViT-B-32",
                               pretrained="openai")
    assert "b32" not in red_circles.list_brain_runs()
    # a frames view of another video dataset
    other = _videos(tmp_path, [[RED]])
    try:
        with pytest.raises(ValueError, match="searches the frames of"):
            red_circles.load_brain_results("frames").use_view(
                other.to_frames(sample_frames="dynamic", fps=1))
    finally:
        other.delete()


def test_an_image_run_refuses_a_frames_view(tmp_path, video):
    images = shapes_dataset(tmp_path, num_samples=4, enable=False)
    index = fob.compute_similarity(images, backend="ai_search",
                                   brain_key="img", **TINY)
    try:
        with pytest.raises(ValueError, match="not video frames") as e:
            index.use_view(video.to_frames(sample_frames=False))
        _names_frame_search(str(e.value))
        # the run still serves its images
        assert index.total_index_size == 4
    finally:
        index.cleanup()
        images.delete_brain_run("img")
        images.delete()


def test_a_frames_runs_key_is_no_other_runs(red_circles):
    with pytest.raises(ais.BrainKeyTakenError,
                       match="'frames' is the AI search run of the frames"):
        brain.check_brain_key(red_circles, "frames")


def test_find_duplicates_goes_through_the_cells_and_equals_every_pair(
        tmp_path, monkeypatch):
    # every frame of 6 videos (10 per second: 180 frames), the frame
    # index's cells forced on at this size; alike frames of one segment
    # (the shape moves a little) are the near-duplicates
    layouts = [[RED, BLUE, GREEN], [BLUE, GREEN, RED], [GREEN, RED, BLUE],
               [RED, GREEN, BLUE], [BLUE, RED, GREEN], [GREEN, BLUE, RED]]
    dataset = _videos(tmp_path, layouts)
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          frames=ais.FrameSampling(fps=FRAME_RATE),
                          brain_key="frames", compute=False)
    passes = count_pair_passes(monkeypatch)
    # at this size exact costs less: through the cells all the same; cells
    # of a few points here, so every cell within reach (no pair missed)
    monkeypatch.setattr(duplicates, "EXACT_PAIR_S", 1.0)
    monkeypatch.setattr(pairs, "PROBE", None)
    try:
        _sync(dataset)
        frames_target = targets.Frames(dataset)
        embeddings.maintain_index(frames_target, min_points=100)
        frames = dataset.to_frames(sample_frames="dynamic", fps=FRAME_RATE)
        results = dataset.load_brain_results("frames")
        assert results.total_index_size == 180

        def found(thresh):
            with results.use_view(frames):
                results.find_duplicates(thresh=thresh)
                return (list(results.duplicate_ids),
                        {k: [(d, round(float(x), 5)) for d, x in v]
                         for k, v in results.neighbors_map.items()})

        thresholds = [0.01, 0.03, 0.1]
        through = [found(t) for t in thresholds]
        assert passes == [pytest.approx(1 - t) for t in thresholds]
        assert any(dups for dups, _ in through)
        # every pair compared (no cells pass): the same answer
        monkeypatch.setattr(duplicates, "cells_pass", lambda *a: None)
        assert [found(t) for t in thresholds] == through
        assert len(passes) == len(thresholds)
    finally:
        ais.disable_embeddings(dataset, frames=True)
        dataset.delete()


def test_scene_change_frames_are_reached_through_a_view_of_every_frame(
        tmp_path):
    """The run's own view (the 1-a-second grid) cannot hold a scene-change
    frame off the grid (docs/brain.md, "Video frames"): a frames view of
    every frame (``to_frames(sample_frames="dynamic")``, no ``fps``) holds
    it, and the run sorts it there."""
    from tests.videos import write_video

    # segments of 1.5 s at 10 fps: the cut at frame 16 is off the grid
    path = str(tmp_path / "cuts.mp4")
    write_video(path, [BLUE, RED, GREEN], seconds=1.5)
    dataset = fo.Dataset(_name("brain-scenes"))
    dataset.add_sample(fo.Sample(filepath=path, metadata=fo.VideoMetadata(
        frame_rate=10.0, total_frame_count=45, duration=4.5,
        frame_width=128, frame_height=128)))
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          frames=ais.FrameSampling(scene_threshold=0.2),
                          brain_key="frames", compute=False)
    try:
        _sync(dataset)
        scenes = {h["frame_number"] for h in ais.search_frames(
            dataset, prompt="a red circle", limit=20) if h["scene"]}
        assert scenes and all((n - 1) % FRAME_RATE for n in scenes)

        grid = dataset.to_frames(sample_frames="dynamic", fps=1)
        on_grid = grid.sort_by_similarity("a red circle", k=20,
                                          brain_key="frames")
        assert not scenes & set(on_grid.values("frame_number"))

        every = dataset.to_frames(sample_frames="dynamic")
        view = every.sort_by_similarity("a red circle", k=20,
                                        brain_key="frames")
        numbers = view.values("frame_number")
        # the index's frames of that view: the grid and the scene frames
        assert scenes <= set(numbers)
        assert len(numbers) == len(on_grid) + len(scenes)
    finally:
        ais.disable_embeddings(dataset, frames=True)
        dataset.delete()
