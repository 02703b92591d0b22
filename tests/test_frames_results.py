"""Frame search results kept as collections (issue 24, point 3): the
latest results of a video dataset open as FiftyOne's frames view of the
hits, best first, with scores, histogram and score ranges, saved, renamed
and deleted as image collections are; the best frame per video; diverse
sampling over frames. Small synthetic videos (tests/videos.py) with the
tiny CLIP."""

import json
import os
import time

import numpy as np
import pytest

import fiftyone as fo
import fiftyone_ai_search as ais
from fiftyone_ai_search import frame_views
from fiftyone_ai_search.demo import tiny_clip_model_name
from fiftyone_ai_search.index import media

from tests.videos import video_dataset

RED = ("red", "circle")
RED_SQUARE = ("red", "square")
BLUE = ("blue", "square")
BLUE_CIRCLE = ("blue", "circle")
GREEN = ("green", "star")


def _with_metadata(dataset):
    """The metadata FiftyOne's frames views count frames with (FiftyOne
    computes it with ffprobe, not installed here)."""
    for sample in dataset.iter_samples(autosave=True):
        seconds = len(sample["layout"])
        sample.metadata = fo.VideoMetadata(
            frame_rate=10.0, total_frame_count=10 * seconds,
            duration=seconds, frame_width=128, frame_height=128,
            encoding_str="mp4v", size_bytes=os.path.getsize(sample.filepath),
            mime_type="video/mp4")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """3 videos showing a red circle 4 seconds of 6, 3 without, indexed at
    1 frame per second (36 frames). Tests that write collections delete
    them again."""
    with_red = [RED, RED_SQUARE, RED, BLUE, RED, RED]
    without = [BLUE_CIRCLE, RED_SQUARE, GREEN, BLUE, BLUE_CIRCLE, GREEN]
    dataset = video_dataset(tmp_path_factory.mktemp("frame-results"),
                            [with_red] * 3 + [without] * 3)
    _with_metadata(dataset)
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          frames=True, compute=False)
    ais.calculate_embeddings(dataset, frames=True, wait=True, progress=False)
    return dataset


def _shown(dataset, pairs):
    """What each ``(video id, frame number)`` shows: the layout's segment
    of its second (10 fps, 1 frame a second: frame 10 k + 1)."""
    layouts = dict(zip(*dataset.values(["id", "layout"])))
    return [layouts[v][(n - 1) // 10] for v, n in pairs]


def _pairs(frames):
    return list(zip(frames.values("sample_id"),
                    frames.values("frame_number")))


def test_a_prompts_collection_reopens_with_its_frames_best_first(videos):
    hits = ais.search_frames(videos, prompt="a red circle", limit=10)
    name = ais.perform_frame_search(videos, prompt="a red circle", limit=10)

    assert name == ais.TEMPORARY_COLLECTION
    assert ais.is_frame_collection(videos, name)
    frames = ais.get_collection(videos, name)
    assert frames._is_frames
    assert _pairs(frames) == [(h["sample_id"], h["frame_number"])
                              for h in hits]
    assert sum(s == "red circle" for s in _shown(videos, _pairs(frames))) >= 9
    scores = ais.get_collection_scores(videos, name)
    assert [pair for pair, _ in scores] == _pairs(frames)
    values = [s for _, s in scores]
    assert values == sorted(values, reverse=True)
    assert values == pytest.approx([h["score"] for h in hits])
    stored = ais.get_frame_hits(videos, name)
    assert [(h["sample_id"], h["frame_number"], h["timestamp"])
            for h in stored] == [(h["sample_id"], h["frame_number"],
                                  h["timestamp"]) for h in hits]

    # the latest results, the view and a score range of it; not a frames
    # view of the videos, nor the dataset
    assert ais.is_latest_results(frames)
    assert ais.is_latest_results(ais.get_collection(
        videos, name, min_score=values[3]))
    assert not ais.is_latest_results(videos.to_frames(
        sample_frames="dynamic", fps=1))
    assert not ais.is_latest_results(videos)

    # FiftyOne generates the frames dataset anew once its last one is gone
    # (its frames get new ids): the collection keys frames by (video, frame
    # number), so the new one shows the same frames
    shown, frame_ids = _pairs(frames), frames.values("id")
    frames._dataset.delete()
    again = ais.get_collection(videos, name)
    assert _pairs(again) == shown
    assert set(again.values("id")).isdisjoint(frame_ids)
    # the App sends a view's stages back as plain JSON (an ObjectId would
    # come back as {"$oid": ...}, an operator MongoDB refuses): they
    # rebuild the same frames
    stages = json.loads(json.dumps(again._serialize()))
    assert _pairs(fo.DatasetView._build(videos, stages)) == shown
    (entry,) = [c for c in ais.list_collections(videos) if c["name"] == name]
    assert entry["frames"] is True and entry["size"] == 10
    assert entry["query"]["mode"] == "prompt"
    assert entry["query"]["prompt"] == "a red circle"


def test_histogram_and_score_ranges(videos):
    name = ais.perform_frame_search(videos, prompt="a red circle", limit=36)
    values = [s for _, s in ais.get_collection_scores(videos, name)]
    assert len(values) == 36

    edges, counts = ais.get_score_histogram(videos, name, bins=4)
    assert len(edges) == 5 and sum(counts) == 36
    expected, _ = np.histogram(values, bins=4, range=(min(values),
                                                      max(values)))
    assert counts == expected.tolist()

    cut = sorted(values)[len(values) // 2]
    top = ais.get_collection(videos, name, min_score=cut)
    kept = [s for s in values if s >= cut]
    assert len(top) == len(kept)
    assert _pairs(top) == [p for p, s in ais.get_collection_scores(
        videos, name) if s >= cut]
    low = ais.get_frame_hits(videos, name, max_score=cut)
    assert all(h["score"] <= cut for h in low)
    assert len(low) == sum(s <= cut for s in values)

    # a range kept under a name, renamed, deleted; the latest results stay
    ais.save_collection(videos, "clear red circles", min_score=cut)
    assert ais.is_frame_collection(videos, "clear red circles")
    assert _pairs(ais.get_collection(videos, "clear red circles")) \
        == _pairs(top)
    ais.rename_collection(videos, "clear red circles", "red circles")
    named = {c["name"]: c for c in ais.list_collections(videos)}
    assert named["red circles"]["frames"]
    assert named["red circles"]["size"] == len(kept)
    assert named["red circles"]["query"]["score_range"] == [cut, None]
    ais.delete_collection(videos, "red circles")
    assert "red circles" not in {c["name"]
                                 for c in ais.list_collections(videos)}
    assert len(ais.get_collection(videos, name)) == 36


def test_the_best_frame_per_video(videos):
    ids = videos.values("id")
    name = ais.perform_frame_search(videos, prompt="a red circle", limit=36)
    best = ais.get_frame_hits(videos, name, best_per_video=True)
    assert sorted(h["sample_id"] for h in best) == sorted(ids)
    assert [h["score"] for h in best] == sorted(
        (h["score"] for h in best), reverse=True)
    assert _shown(videos, [(h["sample_id"], h["frame_number"])
                           for h in best[:3]]) == ["red circle"] * 3
    view = ais.get_frame_collection(videos, name, best_per_video=True)
    assert _pairs(view) == [(h["sample_id"], h["frame_number"])
                            for h in best]

    # at search time: one frame per video, the same best frames
    name = ais.perform_frame_search(videos, prompt="a red circle", limit=3,
                                    best_per_video=True)
    assert [h["sample_id"] for h in ais.get_frame_hits(videos, name)] == \
        [h["sample_id"] for h in best[:3]]


def test_a_frames_view_scopes_the_search(videos):
    ids = videos.values("id")
    scope = videos.select(ids[:2]).to_frames(sample_frames="dynamic", fps=1)
    hits = ais.search_frames(scope, prompt="a red circle", limit=50)
    assert len(hits) == 12  # 2 videos, 6 frames each
    assert {h["sample_id"] for h in hits} == set(ids[:2])

    # a search within the latest results (a frames view of them)
    ais.perform_frame_search(videos, prompt="a red circle", limit=5)
    latest = ais.get_collection(videos, ais.TEMPORARY_COLLECTION)
    within = ais.search_frames(latest, prompt="a blue square", limit=50)
    assert {(h["sample_id"], h["frame_number"]) for h in within} \
        == set(_pairs(latest))


def test_diverse_sampling_returns_frames_of_different_scenes(videos):
    hits = ais.search_frames(videos, method="centroids", limit=5,
                             num_clusters=5)
    pairs = [(h["sample_id"], h["frame_number"]) for h in hits]
    assert len(set(pairs)) == 5
    # five kinds of scene among the six: five picks, five kinds
    assert len(set(_shown(videos, pairs))) == 5

    again = ais.search_frames(videos, method="centroids", limit=5,
                              num_clusters=5)
    assert again == hits  # the same call, the same picks

    name = ais.perform_frame_search(videos, method="random", limit=4,
                                    clustering_method="dbscan", seed=3)
    kept = ais.get_frame_hits(videos, name)
    assert len(kept) == 4 and len({(h["sample_id"], h["frame_number"])
                                   for h in kept}) == 4
    assert ais.list_collections(videos)[-1]["query"]["mode"] == "diverse"
    assert _pairs(ais.get_collection(videos, name)) == [
        (h["sample_id"], h["frame_number"]) for h in kept]


def test_a_scene_frame_shows_as_its_nearest_grid_frame():
    rates = {"a" * 24: 10.0, "b" * 24: 30.0}
    # 10 fps at 1 a second: 1, 11, 21 ...; 30 fps: 1, 31, 61 ...
    assert frame_views.nearest_on_grid(rates, 1.0, [
        ("a" * 24, 11), ("a" * 24, 15), ("a" * 24, 17), ("b" * 24, 40),
        ("b" * 24, 50), ("b" * 24, 1)]) == [
        ("a" * 24, 11), ("a" * 24, 11), ("a" * 24, 21), ("b" * 24, 31),
        ("b" * 24, 61), ("b" * 24, 1)]
    # never past the video's last frame, where FiftyOne's grid ends
    assert frame_views.nearest_on_grid(rates, 1.0, [("a" * 24, 97)],
                                       {"a" * 24: 100}) == [("a" * 24, 91)]
    assert frame_views.nearest_on_grid(rates, 1.0, [("a" * 24, 97)]) == [
        ("a" * 24, 101)]


def test_bad_requests_say_what_is_wrong(videos):
    with pytest.raises(ValueError, match="exactly one"):
        ais.perform_frame_search(videos, prompt="a red circle",
                                 method="centroids")
    with pytest.raises(ValueError, match="best_per_video"):
        ais.search_frames(videos, method="centroids", best_per_video=True)
    with pytest.raises(ValueError, match="num_clusters"):
        ais.search_frames(videos, prompt="a red circle", num_clusters=3)
    with pytest.raises(ValueError, match="method"):
        ais.search_frames(videos, method="kmeans")
    with pytest.raises(ais.CollectionNotFoundError):
        ais.get_frame_hits(videos, "no such collection")
    # nothing above the threshold: no collection, the latest left alone
    before = ais.get_collection_scores(videos, ais.TEMPORARY_COLLECTION)
    assert ais.perform_frame_search(videos, prompt="a red circle",
                                    threshold=0.999) is None
    assert ais.get_collection_scores(videos, ais.TEMPORARY_COLLECTION) \
        == before


def test_an_image_collection_is_not_of_frames(tmp_path):
    from tests.helpers import shapes_dataset

    dataset = shapes_dataset(tmp_path, num_samples=8)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    name = ais.perform_ai_search(dataset, prompt="a red circle", limit=3)
    assert not ais.is_frame_collection(dataset, name)
    assert ais.list_collections(dataset)[0]["frames"] is False
    with pytest.raises(ValueError, match="not of video frames"):
        ais.get_frame_hits(dataset, name)
    assert media.source_dataset(dataset) is dataset


def test_a_scene_change_hit_opens_at_its_nearest_grid_frame(tmp_path):
    """Segments of 1.5 s at 10 fps: the cuts at frames 16 and 31 are off
    and on the 1-a-second grid (1, 11, 21, 31 ...); the scene frame after
    the first cut is indexed too, and its collection shows the grid frame
    nearest it."""
    from tests.videos import write_video

    path = str(tmp_path / "cuts.mp4")
    write_video(path, [BLUE, RED, GREEN], seconds=1.5)
    dataset = fo.Dataset()
    dataset.add_sample(fo.Sample(filepath=path, metadata=fo.VideoMetadata(
        frame_rate=10.0, total_frame_count=45, duration=4.5,
        frame_width=128, frame_height=128)))
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          frames=ais.FrameSampling(scene_threshold=0.2),
                          compute=False)
    ais.calculate_embeddings(dataset, frames=True, wait=True, progress=False)

    hits = ais.search_frames(dataset, prompt="a red circle", limit=20)
    scenes = [h for h in hits if h["scene"]]
    assert scenes and all((h["frame_number"] - 1) % 10 for h in scenes)
    name = ais.perform_frame_search(dataset, prompt="a red circle", limit=20)
    shown = _pairs(ais.get_collection(dataset, name))
    video = dataset.first().id
    for hit in scenes:
        nearest = frame_views.nearest_on_grid(
            {video: 10.0}, 1.0, [(video, hit["frame_number"])])[0]
        assert nearest in shown and nearest[1] % 10 == 1
    # every hit shows, at its grid frame, each grid frame once
    assert len(shown) == len(set(shown)) == len(
        {(h["sample_id"], h["frame_number"]) for h in hits
         if not h["scene"]} | {frame_views.nearest_on_grid(
             {video: 10.0}, 1.0, [(video, h["frame_number"])])[0]
             for h in scenes})
    # the scores keep the scene frame itself
    assert {p for p, _ in ais.get_collection_scores(dataset, name)} == {
        (h["sample_id"], h["frame_number"]) for h in hits}


def test_the_latest_frame_results_go_with_the_frame_index(tmp_path):
    dataset = video_dataset(tmp_path, [[RED, BLUE]])
    _with_metadata(dataset)
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          frames=True, compute=False)
    ais.calculate_embeddings(dataset, frames=True, wait=True, progress=False)
    ais.perform_frame_search(dataset, prompt="a red circle", limit=2)
    ais.save_collection(dataset, "kept frames")

    ais.disable_embeddings(dataset, frames=True)
    # the named collection stays a plain saved view, a frames view still
    assert not dataset.has_saved_view(ais.TEMPORARY_COLLECTION)
    assert len(dataset.load_saved_view("kept frames")) == 2


def test_a_new_search_leaves_no_persistent_frames_dataset_behind(videos):
    """FiftyOne makes the frames dataset of a saved frames view persistent
    when it loads the view; the next search rewrites the view, and that
    dataset is left for FiftyOne to delete, as when a saved view is
    deleted."""
    ais.perform_frame_search(videos, prompt="a red circle", limit=3)
    loaded = videos.load_saved_view(ais.TEMPORARY_COLLECTION)
    generated = loaded._dataset
    assert generated.persistent
    assert ais.is_latest_results(loaded)

    ais.perform_frame_search(videos, prompt="a blue square", limit=3)
    generated.reload()
    assert not generated.persistent
    # and the saved view shows the new results
    assert _pairs(videos.load_saved_view(ais.TEMPORARY_COLLECTION)) == [
        (h["sample_id"], h["frame_number"])
        for h in ais.get_frame_hits(videos, ais.TEMPORARY_COLLECTION)]


def _clips(view):
    """A clips view as ``(video id, [first, last])`` of its clips."""
    return list(zip(view.values("sample_id"), view.values("support")))


def test_frame_results_open_as_clips_starting_at_each_hit(videos):
    """FiftyOne's App plays a clips view's sample from its support's first
    frame, a frames view's from its video's start: a clip per hit, from
    the hit, is how results open in the player at the hit."""
    name = ais.perform_frame_search(videos, prompt="a red circle", limit=10)
    hits = ais.get_frame_hits(videos, name)

    clips = ais.get_collection(videos, name, as_clips=True)
    assert clips._is_clips
    # best first, each starting at its hit, one sampling interval long
    # (10 fps, 1 frame a second: 10 frames)
    assert _clips(clips) == [(h["sample_id"], [h["frame_number"],
                                               h["frame_number"] + 9])
                             for h in hits]
    assert sum(s == "red circle" for s in _shown(
        videos, [(v, s[0]) for v, s in _clips(clips)])) >= 9
    assert set(clips.values("filepath")) <= set(videos.values("filepath"))

    # the latest results, and a score range of them, as clips
    assert ais.is_latest_results(clips)
    ranged = ais.get_collection(videos, name, min_score=hits[3]["score"],
                                as_clips=True)
    assert _clips(ranged) == _clips(clips)[:len(ranged)]
    assert ais.is_latest_results(ranged)
    assert not ais.is_latest_results(videos.to_clips([[(1, 10)]] * 6))
    # the App sends the stages back as plain JSON: the same clips
    stages = json.loads(json.dumps(clips._serialize()))
    assert _clips(fo.DatasetView._build(videos, stages)) == _clips(clips)

    # the best hit of each video, as clips
    best = ais.get_frame_collection(videos, name, best_per_video=True,
                                    as_clips=True)
    top = ais.get_frame_hits(videos, name, best_per_video=True)
    assert _clips(best) == [(h["sample_id"], [h["frame_number"],
                                              h["frame_number"] + 9])
                            for h in top]
    # the frames view is still the default
    assert ais.get_collection(videos, name)._is_frames


def test_opening_clips_leaves_the_videos_and_their_index_alone(videos):
    """FiftyOne generates manual clips by writing their supports on the
    videos for a moment, which stamps their last_modified_at: the clips
    of results are written without touching the videos, so opening them
    (again, as the App rebuilds them from JSON) changes no video and the frame index's next sync checks none."""
    from fiftyone_ai_search.sync.images import WATERMARK_MARGIN

    name = ais.perform_frame_search(videos, prompt="a red circle", limit=5)
    # the videos settled: earlier tests' edits synced, and older than the
    # watermark's margin before this sync (else the next sync checks them
    # again, whatever opening the clips does)
    time.sleep(WATERMARK_MARGIN.total_seconds() + 0.1)
    ais.calculate_embeddings(videos, frames=True, wait=True, progress=False)
    schema = set(videos.get_field_schema())
    stamps = videos.values("last_modified_at")
    clips = ais.get_collection(videos, name, as_clips=True)
    assert len(clips) == 5
    stages = json.loads(json.dumps(clips._serialize()))
    assert len(fo.DatasetView._build(videos, stages)) == 5
    best = ais.get_frame_collection(videos, name, best_per_video=True,
                                    as_clips=True)
    assert len(best) == 3

    assert videos.values("last_modified_at") == stamps
    assert set(videos.get_field_schema()) == schema
    raw = videos._dataset._sample_collection
    assert raw.count_documents({"_support": {"$exists": True}}) == 0
    report = ais.calculate_embeddings(videos, frames=True, wait=True,
                                      progress=False)
    assert (report.added, report.updated, report.skipped) == (0, 0, 0)


def test_a_clip_never_runs_past_its_video():
    from fiftyone_ai_search.clip_views import clip_supports

    hits = [("a", 1), ("a", 55), ("b", 3), ("c", 7)]
    supports = clip_supports(hits, 1.0, {"a": 10.0, "b": None, "c": 5.0},
                             {"a": 60, "c": 8})
    # 10 fps: 10 frames, cut at the video's 60th; no rate: 30 fps assumed;
    # a clip never ends before its hit
    assert supports == [(1, 10), (55, 60), (3, 32), (7, 8)]
    # at the video's own rate or above, a clip is its hit frame
    assert clip_supports([("a", 4)], 30.0, {"a": 25.0}) == [(4, 4)]


def test_only_frames_open_as_clips(videos, tmp_path):
    from tests.helpers import shapes_dataset

    name = ais.perform_frame_search(videos, prompt="a red circle", limit=3)
    with pytest.raises(ValueError, match="as_clips"):
        ais.get_collection(videos, name, as_clips="yes")
    dataset = shapes_dataset(tmp_path, num_samples=8)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    images = ais.perform_ai_search(dataset, prompt="a red circle", limit=3)
    with pytest.raises(ValueError, match="as_clips.*not of video frames"):
        ais.get_collection(dataset, images, as_clips=True)


def test_a_collection_saved_as_clips_opens_at_the_hits(videos):
    """A frame collection kept as clips (the App's "Open as clips") opens
    as clips starting at its hits: by get_collection's default, and as its
    saved view (FiftyOne's saved views list, the panel's Load), without a
    write on the videos; as_clips=False still gives its frames."""
    name = ais.perform_frame_search(videos, prompt="a red circle", limit=6)
    hits = ais.get_frame_hits(videos, name)
    expected = [(h["sample_id"], [h["frame_number"], h["frame_number"] + 9])
                for h in hits]
    ais.calculate_embeddings(videos, frames=True, wait=True, progress=False)
    stamps = videos.values("last_modified_at")
    # the App records its choice on the latest results; a save keeps it
    from fiftyone_ai_search import results

    results.keep_clips_choice(videos, name, True)
    ais.save_collection(videos, "red clips")
    ais.save_collection(videos, "red frames", as_clips=False)
    try:
        clips = ais.get_collection(videos, "red clips")
        assert clips._is_clips and _clips(clips) == expected
        saved = fo.load_dataset(videos.name).load_saved_view("red clips")
        assert saved._is_clips and _clips(saved) == expected
        assert saved._dataset.persistent  # kept with its saved view
        # a score range and the best per video stay clips
        ranged = ais.get_collection(videos, "red clips",
                                    min_score=hits[2]["score"])
        assert _clips(ranged) == expected[:len(ranged)]
        best = ais.get_frame_collection(videos, "red clips",
                                        best_per_video=True)
        assert best._is_clips and len(best) == 3
        assert ais.get_collection(videos, "red clips",
                                  as_clips=False)._is_frames
        # the choice is the collection's: the other one opens as frames
        assert ais.get_collection(videos, "red frames")._is_frames
        assert fo.load_dataset(videos.name).load_saved_view(
            "red frames")._is_frames
        # saved again over itself: the old clips dataset is let go
        old = saved._dataset.name
        ais.save_collection(videos, "red clips", source="red clips",
                            overwrite=True, min_score=hits[1]["score"])
        assert not fo.load_dataset(old).persistent
        again = fo.load_dataset(videos.name).load_saved_view("red clips")
        assert _clips(again) == expected[:len(again)]
        assert videos.values("last_modified_at") == stamps
        report = ais.calculate_embeddings(videos, frames=True, wait=True,
                                          progress=False)
        assert (report.added, report.updated, report.skipped) == (0, 0, 0)
        # deleted: FiftyOne lets its clips dataset go with the saved view
        kept = again._dataset.name
        ais.delete_collection(videos, "red clips")
        assert not fo.load_dataset(kept).persistent
    finally:
        for saved_name in ("red clips", "red frames"):
            if videos.has_saved_view(saved_name):
                ais.delete_collection(videos, saved_name)
    with pytest.raises(ValueError, match="as_clips"):
        ais.save_collection(videos, "x", as_clips="yes")


def test_only_a_frame_collection_is_kept_as_clips(tmp_path):
    from tests.helpers import shapes_dataset
    from fiftyone_ai_search import results

    dataset = shapes_dataset(tmp_path, num_samples=8)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    name = ais.perform_ai_search(dataset, prompt="a red circle", limit=3)
    with pytest.raises(ValueError, match="as_clips.*not of video frames"):
        ais.save_collection(dataset, "kept", as_clips=True)
    with pytest.raises(ValueError, match="as_clips.*not of video frames"):
        results.keep_clips_choice(dataset, name, True)
    results.keep_clips_choice(dataset, name, False)  # nothing to keep
    assert not ais.get_collection(dataset, name)._is_clips
