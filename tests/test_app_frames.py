"""Frame search in the App, headless: a video dataset's grid button and
operators through FiftyOne's own operator machinery (as test_operators.py
runs them), on small synthetic videos and the tiny CLIP: enabling the
frame index from the App, its status, searching frames by prompt, by a
frame selected in a frames view (or a clip of the results) and by an
uploaded image, the results shown as clips starting at the hits (the
video player opens at the hit) or as a frames view, best first; and the
same in a grouped dataset with video slices, in the slice the App shows."""

import base64
import io
import json
import os
import time

import pytest
from bson import json_util

import fiftyone as fo
import fiftyone.core.view as fov
import fiftyone.operators as foo
from fiftyone.operators.executor import resolve_placement

import fiftyone_ai_search as ais
from fiftyone_ai_search.app import PLUGIN_NAME
from fiftyone_ai_search.demo import shapes, tiny_clip_model_name

from tests.conftest import REPO_DIR
from tests.test_frames_grouped import _shown as grouped_shown
from tests.test_frames_grouped import grouped_dataset
from tests.test_operators import _Panel, _blocking, _context, _form
from tests.videos import FRAME_RATE, video_dataset

RED = ("red", "circle")
RED_SQUARE = ("red", "square")
BLUE = ("blue", "square")
BLUE_CIRCLE = ("blue", "circle")
GREEN = ("green", "star")


def uri(name):
    return f"{PLUGIN_NAME}/{name}"


@pytest.fixture(scope="module", autouse=True)
def repo_as_plugin():
    """The repository placed under the plugins dir (see test_operators)."""
    link = os.path.join(fo.config.plugins_dir, "ai-search")
    if not os.path.islink(link):
        os.symlink(REPO_DIR, link)
    yield link
    os.unlink(link)


def with_metadata(dataset):
    """Gives each video the metadata FiftyOne's frames views count frames
    with (FiftyOne computes it with ffprobe, not installed here)."""
    for sample in dataset.iter_samples(autosave=True):
        seconds = len(sample["layout"])
        sample.metadata = fo.VideoMetadata(
            frame_rate=float(FRAME_RATE), total_frame_count=FRAME_RATE * seconds,
            duration=float(seconds), frame_width=128, frame_height=128,
            encoding_str="mp4v", size_bytes=os.path.getsize(sample.filepath),
            mime_type="video/mp4")
    return dataset


@pytest.fixture(scope="module")
def red_circles(tmp_path_factory, repo_as_plugin):
    """3 videos showing a red circle 4 seconds of 6, 3 without, their frame
    index enabled and computed from the App's grid button (read-only for
    the tests after the first)."""
    with_red = [RED, RED_SQUARE, RED, BLUE, RED, RED]
    without = [BLUE_CIRCLE, RED_SQUARE, GREEN, BLUE, BLUE_CIRCLE, GREEN]
    dataset = with_metadata(video_dataset(
        tmp_path_factory.mktemp("app-frames"), [with_red] * 3 + [without] * 3))
    return dataset


@pytest.fixture
def indexed(red_circles):
    """The red circles with their frame index computed: the file's first
    test enables it from the App's grid button; a test run on its own (or
    after that test failed) enables it here the same way, through the SDK,
    so that no test depends on the order of the file."""
    if not ais.is_embeddings_enabled(red_circles, frames=True):
        ais.enable_embeddings(red_circles, model=tiny_clip_model_name(),
                              frames=True)
    ais.calculate_embeddings(red_circles, frames=True, wait=True)
    return red_circles


def run(operator, dataset, view=None, selected=None, current_sample=None,
        group_slice=None, **params):
    """Executes an operator as the App does (showing ``group_slice`` of a
    grouped dataset); returns ``(result, view the operator showed or
    None)``."""
    ctx = {"dataset": dataset, "params": params, "selected": selected or []}
    if group_slice is not None:
        ctx["group_slice"] = group_slice
    if view is not None:
        ctx["view"] = view
    if current_sample is not None:
        ctx["current_sample"] = current_sample
    result = foo.execute_operator(uri(operator), ctx=ctx)
    assert result.error is None, result.error_message
    shown = None
    for request in result.executor._requests:
        if request.operator_uri.endswith("set_view"):
            stages = request.params["view"]
            if not isinstance(stages, str):
                stages = json.dumps(stages)
            # (as the App's server reads it: ids as extended JSON)
            shown = fov.DatasetView._build(dataset, json_util.loads(stages))
    return result.result, shown


def shown_layout(dataset, frames):
    """What each frame of a frames view shows (``"red circle"``), in its
    order: the test videos change shape every second (10 frames)."""
    layouts = dict(zip(*dataset.values(["id", "layout"])))
    return [layouts[v][(n - 1) // FRAME_RATE] for v, n in
            zip(*frames.values(["sample_id", "frame_number"]))]


def wait_until_idle(dataset, timeout=180):
    """Waits for the frame index's background computation to finish."""
    deadline = time.time() + timeout
    while ais.get_status(dataset, frames=True, counts=False)["in_progress"]:
        assert time.time() < deadline, "still computing"
        time.sleep(0.2)


def button(dataset):
    request = {"dataset_name": dataset.name, "params": {}}
    placement = resolve_placement(foo.get_operator(uri("ai_search")), request)
    return placement.to_json()["view"]["label"]


def test_a_video_dataset_is_enabled_from_the_grid_button(red_circles):
    dataset = red_circles
    assert button(dataset) == "AI Search: off"
    form = _form(dataset)
    assert "AI search is off** for this video dataset" in form["status"][
        "default"]
    assert "indexes the frames of its videos" in form["frames_intro"][
        "view"]["label"]
    assert form["fps"]["default"] == 1.0
    assert "enable_intro" not in form  # (of images and objects)
    assert not _blocking(form)
    # a rate that is not one blocks Execute, and says why
    fps = _form(dataset, params={"fps": 0})["fps"]
    assert fps["invalid"] and "a number above 0" in fps["error_message"]
    # near-duplicates are of images: not offered on videos
    request = {"dataset_name": dataset.name, "params": {}}
    assert resolve_placement(foo.get_operator(uri("find_near_duplicates")),
                             request) is None

    out, _ = run("ai_search", dataset, model_choice=tiny_clip_model_name(),
                 fps=1.0)
    assert out == {"enabled": True}
    assert ais.is_embeddings_enabled(dataset, frames=True)
    wait_until_idle(dataset)

    # the status, the button's and the status operator's, is the frame
    # index's
    assert button(dataset) == "AI Search: ready"
    status = _form(dataset, operator="ai_search_status")["status"]["default"]
    assert status.startswith("**Frame index: ready** (tiny_clip")
    assert ("36 frames of 6 videos indexed (1 frame per second), 0 videos "
            "failed") in status
    out, _ = run("ai_search_status", dataset)
    assert out["counts"]["num_indexed"] == 36 and out["sampling"]["fps"] == 1


def test_prompt_search_shows_the_red_circle_frames_first(indexed):
    dataset = indexed
    form = _form(dataset)
    modes = form["mode"]["type"]["values"]
    assert modes == ["prompt", "similar", "image", "diverse"]
    assert "all 6 videos" in form["scope"]["view"]["label"]

    assert form["as_clips"]["default"] is True
    assert "player opens at the hit" in form["as_clips"]["view"][
        "description"]

    # by default, clips starting at the hits, best first: the App's video
    # player opens a clip at its first frame
    out, clips = run("ai_search", dataset, mode="prompt",
                     prompt="a red circle", limit=10)
    assert out == {"collection": ais.TEMPORARY_COLLECTION, "count": 10}
    assert clips._is_clips and len(clips) == 10
    hits = ais.search_frames(dataset, prompt="a red circle", limit=10)
    assert list(zip(*clips.values(["sample_id", "support"]))) == [
        (h["sample_id"], [h["frame_number"], h["frame_number"] + 9])
        for h in hits]
    assert ais.is_latest_results(clips)
    # a score range (the panel's, filter_by_score) keeps them clips
    out, ranged = run("filter_by_score", dataset, view=clips,
                      min_score=hits[4]["score"])
    assert ranged._is_clips and out["count"] == len(ranged) >= 5
    assert ranged.values("support") == clips.values("support")[:len(ranged)]

    # "Open as clips" off: FiftyOne's frames view of the hits
    out, frames = run("ai_search", dataset, mode="prompt",
                      prompt="a red circle", limit=10, as_clips=False)
    assert out == {"collection": ais.TEMPORARY_COLLECTION, "count": 10}
    assert frames._is_frames and len(frames) == 10
    # the frames view is the hits, best first, kept as the latest results
    assert list(zip(*frames.values(["sample_id", "frame_number"]))) == [
        (h["sample_id"], h["frame_number"]) for h in hits]
    assert shown_layout(dataset, frames).count("red circle") >= 9
    assert ais.is_latest_results(frames)
    assert [s for _, s in ais.get_collection_scores(
        dataset, ais.TEMPORARY_COLLECTION)] == [h["score"] for h in hits]

    # the best frame per video: the 3 videos with red circles
    out, frames = run("ai_search", dataset, mode="prompt",
                      prompt="a red circle", limit=3, best_per_video=True,
                      as_clips=False)
    assert len(set(frames.values("sample_id"))) == 3
    assert shown_layout(dataset, frames) == ["red circle"] * 3

    # within a view of videos
    view = dataset.skip(3)
    label = _form(dataset, view=view)["scope"]["view"]["label"]
    assert "the 3 videos of the current view" in label
    out, clips = run("ai_search", dataset, view=view, mode="prompt",
                     prompt="a red circle", limit=5)
    assert set(clips.values("sample_id")) <= set(view.values("id"))


def test_search_by_a_selected_frame_and_in_the_modal(indexed):
    dataset = indexed
    _, results = run("ai_search", dataset, mode="prompt",
                     prompt="a red circle", limit=10, as_clips=False)

    # in the results (a frames view) with a frame selected: similar frames
    # is the default, and searches every video, not the results
    ref = results.first()
    form = _form(dataset, view=results, selected=[ref.id])
    assert form["mode"]["default"] == "similar"
    assert ("Similar to the selected frame (frame "
            f"{ref.frame_number} of its video)") in form["selected"]["view"][
                "label"]
    assert "never searches the latest results" in form["scope"]["view"][
        "label"]
    out, frames = run("ai_search", dataset, view=results, selected=[ref.id],
                      mode="similar", limit=12, as_clips=False)
    first = frames.first()
    assert (first.sample_id, first.frame_number) == (ref.sample_id,
                                                     ref.frame_number)
    scores = ais.get_collection_scores(dataset, ais.TEMPORARY_COLLECTION)
    assert scores[0][1] == pytest.approx(1.0, abs=1e-4)
    assert out["count"] == len(frames) == 12  # beyond the 10: every video

    # nothing selected: blocked, and says what to select
    blocked = _blocking(_form(dataset, view=results,
                              params={"mode": "similar"}))
    assert "select a frame in a frames view" in blocked["selected"]
    # a search like a frame starts from one
    two = results.limit(2).values("id")
    blocked = _blocking(_form(dataset, view=results, selected=two,
                              params={"mode": "similar"}))
    assert "Select one frame" in blocked["selected"]

    # "Find similar" in the modal, on the frame open there
    ctx = {"dataset_name": dataset.name, "params": {},
           "view": results._serialize(), "current_sample": ref.id}
    placement = resolve_placement(foo.get_operator(uri("search_similar")),
                                  ctx)
    assert placement.to_json()["view"]["label"] == "Find similar"
    form = _form(dataset, operator="search_similar", view=results,
                 current_sample=ref.id)
    assert "Similar to the selected frame" in form["selected"]["view"][
        "label"]
    out, clips = run("search_similar", dataset, view=results,
                     current_sample=ref.id, limit=5)
    assert (clips.first().sample_id, clips.first().support) == (
        ref.sample_id, [ref.frame_number, ref.frame_number + 9])

    # "Find similar" on a clip of the results open in the modal: frames
    # like its hit frame (the clip's first)
    clip = clips.skip(1).first()
    form = _form(dataset, operator="search_similar", view=clips,
                 current_sample=clip.id)
    assert (f"Similar to the selected frame (frame {clip.support[0]} of "
            "its video)") in form["selected"]["view"]["label"]
    out, again = run("search_similar", dataset, view=clips,
                     current_sample=clip.id, limit=5)
    assert (again.first().sample_id, again.first().support[0]) == (
        clip.sample_id, clip.support[0])
    # selected in the grid of clips, too
    out, again = run("ai_search", dataset, view=clips, selected=[clip.id],
                     mode="similar", limit=5)
    assert (again.first().sample_id, again.first().support[0]) == (
        clip.sample_id, clip.support[0])
    # a clips view of the user's is not of frames: nothing to start from
    mine = dataset.to_clips([[(1, 10)]] * len(dataset))
    blocked = _blocking(_form(dataset, view=mine,
                              selected=[mine.first().id],
                              params={"mode": "similar"}))
    assert "Nothing selected" in blocked["selected"]


def _red_circle_upload():
    """A red circle as the App's file input sends an upload."""
    spec = shapes.sample_spec(7, 0, color="red", shape="circle")
    data = io.BytesIO()
    shapes.render(spec).save(data, format="PNG")
    return {"name": "red.png", "type": "image/png",
            "size": len(data.getvalue()),
            "content": base64.b64encode(data.getvalue()).decode()}


def test_search_by_an_uploaded_image(indexed):
    dataset = indexed
    upload = _red_circle_upload()
    out, frames = run("ai_search", dataset, mode="image",
                      image_source="upload", image_upload=upload, limit=10,
                      as_clips=False)
    assert out["count"] == 10
    assert shown_layout(dataset, frames).count("red circle") >= 8


def test_diverse_frames_and_a_frames_view_as_scope(indexed):
    dataset = indexed
    out, frames = run("ai_search", dataset, mode="diverse", method="random",
                      clustering_method="kmeans", num_clusters=4, limit=8,
                      as_clips=False)
    assert out["count"] == len(frames) == 8

    # a frames view of the user's (not results): its frames are searched
    mine = dataset.limit(2).to_frames(sample_frames="dynamic", fps=1)
    label = _form(dataset, view=mine)["scope"]["view"]["label"]
    assert f"the {len(mine)} frames of the current view" in label
    out, frames = run("ai_search", dataset, view=mine, mode="prompt",
                      prompt="a red circle", limit=5)
    assert set(frames.values("sample_id")) <= set(dataset.limit(2).values(
        "id"))


def test_a_collection_saved_from_clips_opens_at_the_hits(indexed):
    """Results shown as clips ("Open as clips", the default) and saved
    from the panel open as clips again from the collection list (the
    panel's Load selects the saved view by name; FiftyOne's saved views
    list loads it alike); results shown as frames are saved as frames.
    Opening them writes nothing on the videos."""
    dataset = indexed
    out, clips = run("ai_search", dataset, mode="prompt",
                     prompt="a red circle", limit=6)
    stamps = dataset.values("last_modified_at")
    run("save_collection", dataset, view=clips, name="red clips")
    out, frames = run("ai_search", dataset, mode="prompt",
                      prompt="a red circle", limit=6, as_clips=False)
    run("save_collection", dataset, view=frames, name="red frames")
    try:
        # what the App loads for set_view(name=...)
        saved = fo.load_dataset(dataset.name).load_saved_view("red clips")
        assert saved._is_clips
        assert list(zip(*saved.values(["sample_id", "support"]))) == list(
            zip(*clips.values(["sample_id", "support"])))
        # the App's server builds it again from its stages: the same clips
        doc = fo.load_dataset(dataset.name)._get_saved_view_doc("red clips")
        stages = [json_util.loads(s) for s in doc.view_stages]
        again = fov.DatasetView._build(dataset, stages)
        assert again.values("support") == clips.values("support")
        assert fo.load_dataset(dataset.name).load_saved_view(
            "red frames")._is_frames
        # a score range of the saved clips (filter_by_score) stays clips
        scores = [s for _, s in ais.get_collection_scores(dataset,
                                                          "red clips")]
        out, ranged = run("filter_by_score", dataset, view=saved,
                          collection="red clips", min_score=scores[2])
        assert ranged._is_clips and out["count"] == len(ranged) >= 3
        assert dataset.values("last_modified_at") == stamps
    finally:
        ais.delete_collection(dataset, "red clips")
        ais.delete_collection(dataset, "red frames")


def test_disable_from_the_app_removes_the_frame_index(tmp_path):
    dataset = with_metadata(video_dataset(tmp_path, [[RED, BLUE]]))
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(), frames=True,
                          compute=False)
    form = _form(dataset, operator="disable_ai_search")
    assert "frames of the dataset's videos" in form["warning"]["view"][
        "label"]
    out, _ = run("disable_ai_search", dataset)
    assert out == {"enabled": False}
    assert not ais.is_embeddings_enabled(dataset, frames=True)
    assert button(dataset) == "AI Search: off"


def test_the_status_lists_a_frame_index_failures_as_videos(tmp_path):
    dataset = with_metadata(video_dataset(tmp_path, [[RED, BLUE], [GREEN]]))
    broken = dataset.first()
    with open(broken.filepath, "wb") as f:
        f.write(b"not a video at all")
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(), frames=True,
                          compute=False)
    ais.calculate_embeddings(dataset, frames=True, wait=True, progress=False)

    form = _form(dataset, operator="ai_search_status")
    # (it said "Failed samples", as of an image index)
    assert form["failures"]["view"]["label"] == "Failed videos"
    assert [f["filepath"] for f in form["failures"]["default"]] == [
        broken.filepath]


# -- a grouped dataset with video slices --------------------------------------
#
# The App works in the slice it shows (FiftyOne sets it on ctx.dataset): a
# video slice searches frames, as a video dataset does, an image slice the
# images (and says how to search the frames).


def grouped_form(dataset, group_slice, operator="ai_search", **kwargs):
    """The properties of an operator's form with ``group_slice`` shown
    (``kwargs``: test_operators' ``_context``)."""
    ctx = _context(dataset, operator=operator, **kwargs)
    ctx.request_params["group_slice"] = group_slice
    form = foo.get_operator(uri(operator)).resolve_input(ctx).to_json()
    return form["type"]["properties"]


def grouped_button(dataset, group_slice):
    request = {"dataset_name": dataset.name, "params": {},
               "group_slice": group_slice}
    placement = resolve_placement(foo.get_operator(uri("ai_search")), request)
    return placement.to_json()["view"]["label"]


def _shown(dataset, clips_pairs):
    """What the first frame of each ``(video id, support)`` shows."""
    return grouped_shown(dataset, [(v, s[0]) for v, s in clips_pairs])


def slice_of(dataset, view):
    """The slice of each video of a clips or frames view, in its order."""
    slices = dict(zip(*dataset.select_group_slices(media_type="video").values(
        ["id", "group.name"])))
    return [slices[v] for v in view.values("sample_id")]


@pytest.fixture(scope="module")
def grouped(tmp_path_factory, repo_as_plugin):
    """tests/test_frames_grouped.py's grouped dataset: 3 groups of an image
    ("left", the default slice) and two videos ("front", "rear"); its frame
    index enabled from the grid button with 'front' shown (the first test)."""
    dataset = grouped_dataset(tmp_path_factory.mktemp("app-grouped"))
    yield dataset
    ais.disable_embeddings(dataset, frames=True)
    dataset.delete()


def test_a_grouped_dataset_is_searched_in_the_slice_shown(grouped):
    dataset = grouped
    # an image slice: the images, and how to search the frames
    assert grouped_button(dataset, "left") == "AI Search: off"
    form = grouped_form(dataset, "left")
    assert "frames_intro" not in form
    assert ("To search the frames of the videos ('front', 'rear'), show a "
            "video slice") in form["video_slices"]["view"]["label"]

    # a video slice: its frame index, enabled from the grid button
    assert grouped_button(dataset, "front") == "AI Search: off"
    form = grouped_form(dataset, "front")
    assert ("AI search is off** for the video slices ('front', 'rear')"
            in form["status"]["default"])
    assert "every video slice ('front', 'rear'" in form["frames_intro"][
        "view"]["label"]
    assert "video_slices" not in form
    # near-duplicates are of images: not offered on a video slice
    request = {"dataset_name": dataset.name, "params": {},
               "group_slice": "front"}
    assert resolve_placement(foo.get_operator(uri("find_near_duplicates")),
                             request) is None
    out, _ = run("ai_search", dataset, group_slice="front",
                 model_choice=tiny_clip_model_name(), fps=1.0)
    assert out == {"enabled": True}
    assert ais.is_embeddings_enabled(dataset, frames=True)
    assert not ais.is_embeddings_enabled(dataset)  # (not the images)
    wait_until_idle(dataset)
    assert grouped_button(dataset, "front") == "AI Search: ready"
    assert grouped_button(dataset, "rear") == "AI Search: ready"
    assert grouped_button(dataset, "left") == "AI Search: off"  # images
    status = grouped_form(dataset, "rear", operator="ai_search_status")
    assert "18 frames of 6 videos indexed" in status["status"]["default"]


def test_a_prompt_on_a_video_slice_opens_clips_at_its_hits(grouped):
    dataset = grouped
    form = grouped_form(dataset, "front")
    assert form["mode"]["type"]["values"] == ["prompt", "similar", "image",
                                              "diverse"]
    assert form["as_clips"]["default"] is True
    assert form["scope"]["view"]["label"] == (
        "Searching the frames of the 3 videos of slice 'front'.")
    assert "'front', 'rear'" in form["all_slices"]["view"]["description"]
    assert "whole_dataset" not in form  # (it is the whole dataset)

    # the slice shown: its videos' frames, clips at the hits, best first
    out, clips = run("ai_search", dataset, group_slice="front", mode="prompt",
                     prompt="a red circle", limit=3)
    assert out == {"collection": ais.TEMPORARY_COLLECTION, "count": 3}
    assert clips._is_clips and slice_of(dataset, clips) == ["front"] * 3
    # (the 3 seconds of the front videos that show a red circle)
    assert _shown(dataset, zip(*clips.values(["sample_id", "support"]))) == [
        "red circle"] * 3
    hits = ais.search_frames(dataset.select_group_slices("front"),
                             prompt="a red circle", limit=3)
    assert list(zip(*clips.values(["sample_id", "support"]))) == [
        (h["sample_id"], [h["frame_number"], h["frame_number"] + 9])
        for h in hits]
    assert ais.is_latest_results(clips)

    # every video slice, when asked
    label = grouped_form(dataset, "front", params={"all_slices": True})[
        "scope"]["view"]["label"]
    assert label == ("Searching the frames of the 6 videos of the video "
                     "slices 'front', 'rear'.")
    out, frames = run("ai_search", dataset, group_slice="front", mode="prompt",
                      prompt="a red circle", limit=5,
                      all_slices=True, as_clips=False)
    assert frames._is_frames
    assert set(slice_of(dataset, frames)) == {"front", "rear"}
    hits = ais.search_frames(dataset, prompt="a red circle", limit=5)
    assert list(zip(*frames.values(["sample_id", "frame_number"]))) == [
        (h["sample_id"], h["frame_number"]) for h in hits]

    # within a view of the grouped dataset: its groups' videos of the slice
    first = dataset.first().group.id
    view = dataset.select_groups([first])
    label = grouped_form(dataset, "rear", view=view)["scope"]["view"]["label"]
    assert label == ("Searching the frames of the 1 video of slice 'rear' "
                     "in the current view.")
    out, clips = run("ai_search", dataset, group_slice="rear", view=view,
                     mode="prompt", prompt="a red circle", limit=2)
    assert set(clips.values("sample_id")) == set(
        view.select_group_slices("rear").values("id"))


def test_by_example_and_diverse_on_a_video_slice(grouped, tmp_path):
    dataset = grouped
    _, results = run("ai_search", dataset, group_slice="front", mode="prompt",
                     prompt="a red circle", limit=3, as_clips=False)
    # a frame of the results selected: similar frames of the slice
    ref = results.first()
    form = grouped_form(dataset, "front", view=results, selected=[ref.id])
    assert form["mode"]["default"] == "similar"
    assert "never searches the latest results" in form["scope"]["view"][
        "label"]
    out, clips = run("ai_search", dataset, group_slice="front", view=results,
                     selected=[ref.id], mode="similar", limit=4)
    assert (clips.first().sample_id, clips.first().support[0]) == (
        ref.sample_id, ref.frame_number)
    assert slice_of(dataset, clips) == ["front"] * 4

    # the results shown while the App's slice is an image slice (a
    # flattened view shows none): still frames, of every video slice
    form = grouped_form(dataset, "left", view=clips)
    assert "prompt" in form["mode"]["type"]["values"]
    assert "the 6 videos of the video slices" in form["scope"]["view"][
        "label"]

    # an uploaded image
    upload = _red_circle_upload()
    out, frames = run("ai_search", dataset, group_slice="rear", mode="image",
                      image_source="upload", image_upload=upload,
                      limit=2, as_clips=False)
    assert out["count"] == 2 and slice_of(dataset, frames) == ["rear"] * 2

    # a diverse spread of the slice's frames
    out, frames = run("ai_search", dataset, group_slice="front",
                      mode="diverse", method="random",
                      clustering_method="kmeans", num_clusters=3, limit=4,
                      as_clips=False)
    assert out["count"] == len(frames) == 4
    assert slice_of(dataset, frames) == ["front"] * 4


class SlicePanel(_Panel):
    """The panel on one App context, the App showing ``group_slice``."""

    group_slice = None

    def _context(self, **kwargs):
        ctx = _context(self.dataset, panel_state=self.state, **kwargs)
        ctx.request_params["group_slice"] = self.group_slice
        return ctx

    def __call__(self, method, **params):
        ctx = self._context(params=params, **self.context)
        getattr(self.panel, method)(ctx)
        self.state = ctx.panel.state._data
        return ctx


def test_the_panel_follows_the_slice_shown(grouped):
    panel = SlicePanel(grouped)
    panel.group_slice = "left"
    panel("on_load")
    assert panel.state["status"] == "**AI search is off** for this dataset."
    assert panel.state["readiness"] == "off"
    # the App shows a video slice: the panel is of the frame index
    panel.group_slice = "rear"
    panel("on_change_group_slice")
    assert panel.state["status"].startswith("**Frame index: ready**")
    assert panel.state["readiness"] == "ready"
    assert panel.state["enable_objects"] is None
