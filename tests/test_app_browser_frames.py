"""Frame search of a video dataset in the FiftyOne App, as a curator uses
it, in a real browser.

Headless Chromium drives the real App server (with our plugin) over a
video dataset of small synthetic videos (tests/videos.py: a shape moving
across each second of video; 3 videos showing a blue square for 2 seconds,
then a red circle for 4, 3 without), AI search off at first: enable it
from the grid's AI Search button (the frame index: 1 frame per second),
watch the panel follow it, search the frames by prompt (the grid shows a
clip starting at each hit, red circles first), open the best result (the
sample modal's video player is at the hit, 2 s or more into its video, not
at its start), find frames similar to it from the modal, and save them
as a collection that the panel's list loads again as clips.

The tests share one page and run in file order, each from where the previous
one left it. Screenshots go to ``tests/artifacts/browser/frames-*.png``.
Needs chromium, chromedriver and selenium: skips without them, fails under
CI.
"""

import os
import re
import shutil
import uuid

import cv2
import pytest

import fiftyone as fo

import fiftyone_ai_search as ais
from fiftyone_ai_search.app import PLUGIN_NAME
from tests.app_browser import unavailable
from tests.videos import FRAME_RATE, video_dataset

pytestmark = pytest.mark.slow

PANEL = "AI Search"
RED = ("red", "circle")
# the red circle from 2 s on: a player at the video's start shows no hit
WITH_RED = [("blue", "square"), ("blue", "square"), RED, RED, RED, RED]
WITHOUT = [("blue", "circle"), ("red", "square"), ("green", "star"),
           ("blue", "square"), ("blue", "circle"), ("green", "star")]
NUM_FRAMES = 36  # 6 videos of 6 s, 1 frame a second


@pytest.fixture(scope="module")
def app_dataset(tmp_path_factory):
    """The videos, with their metadata (FiftyOne's frames views count
    frames with it; set here as dataset.compute_metadata() would find it),
    AI search off. FiftyOne's App shows the frames of videos with
    ffprobe (ffmpeg): it is needed, as chromium is."""
    if shutil.which("ffprobe") is None:
        unavailable("FiftyOne's App needs ffprobe to show video frames: "
                    "apt-get install ffmpeg")
    name = "videos-" + uuid.uuid4().hex[:8]
    dataset = video_dataset(tmp_path_factory.mktemp("videos"),
                            [WITH_RED] * 3 + [WITHOUT] * 3, name=name)
    for sample in dataset.iter_samples(autosave=True):
        # the browser plays VP8 in WebM, not the MPEG-4 part 2 written
        sample.filepath = webm_copy(sample.filepath)
        seconds = len(sample["layout"])
        sample.metadata = fo.VideoMetadata(
            frame_rate=float(FRAME_RATE),
            total_frame_count=FRAME_RATE * seconds, duration=float(seconds),
            frame_width=128, frame_height=128, encoding_str="VP80",
            size_bytes=os.path.getsize(sample.filepath),
            mime_type="video/webm")
    yield dataset
    if ais.is_embeddings_enabled(dataset, frames=True):
        ais.disable_embeddings(dataset, frames=True)
    dataset.delete()


def webm_copy(path):
    """The video at ``path`` written again as VP8 in WebM, frame for
    frame, beside it (OpenCV's FFmpeg); returns the copy's path."""
    reader = cv2.VideoCapture(path)
    copy = os.path.splitext(path)[0] + ".webm"
    writer = cv2.VideoWriter(copy, cv2.VideoWriter_fourcc(*"VP80"),
                             FRAME_RATE, (128, 128))
    assert writer.isOpened(), "OpenCV cannot write VP8 here"
    try:
        while True:
            ok, frame = reader.read()
            if not ok:
                break
            writer.write(frame)
    finally:
        reader.release()
        writer.release()
    return copy


def console_errors(app):
    """The browser console's errors, less those of the App's requests for
    the labels of the frame open in the sample modal. FiftyOne 1.22's
    modal plays a dynamic frames view's sample as a video and asks its
    ``/video-labels`` routes for frame labels, which fail on a frames view
    with stages: ``Field 'frames' does not exist`` (a frames view has no
    frames); the labels stream then logs its failed fetches. The frame shows; frame
    labels would not (these videos have none)."""
    return [e for e in app.console_errors()
            if not any(s in e for s in (
                "/video-labels/", "VideoFrameLabelsStream",
                "Field 'frames' does not exist"))]


def panel(app):
    """The panel's content, found again wherever it is used."""
    return lambda: app.panel(PANEL)


def clips_of(app):
    """The App's view as ``(video id, first frame)`` of its clips, in
    order (it must be a clips view)."""
    view = app.session.view
    assert view is not None and view._is_clips, view
    return [(v, s[0]) for v, s in zip(*view.values(["sample_id", "support"]))]


def player_time(app):
    """The time the sample modal's video player shows (``0:02.00 /
    0:06.00``), in seconds, with the pointer over the video, as a user
    looks at it (the player loads its video then; the modal's timeline
    may read 0:00.00 until it does): the player's own time display, else
    the modal's timeline's. None until one shows a time."""
    # (here: without selenium the module skips, see tests.app_browser)
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    modal = app.sample_modal()
    video = next(iter(modal.find_elements(
        By.CSS_SELECTOR, "[data-cy=modal-looker-container]")), modal)
    ActionChains(app.driver).move_to_element(video).perform()
    own = app.js("""
        const e = arguments[0].querySelector("[data-cy=looker-video-time]");
        return e ? e.textContent : "";""", modal)
    for text in (own, app.text(modal)):
        match = re.search(r"(\d+):(\d\d(?:\.\d+)?)\s*/\s*\d+:\d\d",
                          text or "")
        if match:
            return 60 * int(match.group(1)) + float(match.group(2))
    return None


def shown(dataset, frames):
    """What each frame (``(video id, frame number)``) shows (``"red
    circle"``): the test videos change shape every second (10 frames)."""
    layouts = dict(zip(*dataset.values(["id", "layout"])))
    return [layouts[v][(n - 1) // FRAME_RATE] for v, n in frames]


def test_enable_frame_search_from_the_grid_button(app, app_dataset):
    app.open_dataset(app_dataset.name)
    assert app.sample_count() == 6

    app.click_placement(f"{PLUGIN_NAME}/ai_search")
    app.wait_for_text("AI search is off for this video dataset",
                      root=app.prompt)
    app.wait_for_text("indexes the frames of its videos", root=app.prompt)
    app.wait_for_text("Frames per second", root=app.prompt)
    app.wait_executable()
    app.screenshot("frames-01-enable-form")
    app.execute_prompt()

    # the panel opens and follows the computation, to the frame index's
    # status
    app.panel(PANEL, timeout=60)
    app.wait_for_text("Frame index: ready", root=panel(app), timeout=240)
    app.wait_for_text(f"{NUM_FRAMES} frames of 6 videos indexed (1 frame "
                      "per second), 0 videos failed", root=panel(app))
    assert ais.is_embeddings_enabled(app_dataset, frames=True)
    app.screenshot("frames-02-ready")
    assert app.console_errors() == []


def test_prompt_search_shows_red_circle_clips_first(app, app_dataset):
    app.click_placement(f"{PLUGIN_NAME}/ai_search")
    app.wait_for_text("Search frames by", root=app.prompt)
    text = app.wait_for_text("Searching the frames of all 6 videos",
                             root=app.prompt)
    assert "diverse: a representative spread of frames" in text
    assert "Open as clips" in text
    app.fill("Prompt", "a red circle", root=app.prompt)
    app.fill("Limit", 10, root=app.prompt)
    app.execute_prompt()

    # a clip starting at each hit, best first
    app.wait_for_view(lambda v: len(v) == 10, "the 10 clips found")
    clips = clips_of(app)
    hits = ais.search_frames(app_dataset, prompt="a red circle", limit=10)
    assert clips == [(h["sample_id"], h["frame_number"]) for h in hits]
    assert shown(app_dataset, clips).count("red circle") >= 9
    app.wait_for_text("Latest results: prompt 'a red circle', 10 frames",
                      root=panel(app))
    app.wait_for_count(10)
    app.wait(app.tiles_drawn, "the clips' tiles drawn")
    app.screenshot("frames-03-prompt-search")
    assert console_errors(app) == []


def test_the_best_result_opens_at_its_hit_and_finds_similar_frames(
        app, app_dataset):
    video, number = clips_of(app)[0]
    assert number > 2 * FRAME_RATE  # the red circle: 2 s in, or later
    modal = app.open_sample(0)
    # the player is at the hit, not at the video's start (0:00.00): FiftyOne
    # plays a clip from its first frame
    app.wait_for_text("support", root=modal)
    hit = (number - 1) / FRAME_RATE
    app.wait(lambda: player_time(app) == pytest.approx(hit, abs=0.01),
             f"the player at the hit, {hit:.2f} s", interval=0.25)
    app.screenshot("frames-04-result-opened")

    # "Find similar" in the modal: frames like the hit
    app.click_icon("image_search", root=app.sample_modal)
    app.wait_for_text(f"Similar to the selected frame (frame {number} of "
                      "its video)", root=app.prompt)
    app.fill("Limit", 8, root=app.prompt)
    app.wait_executable()
    app.screenshot("frames-05-find-similar")
    app.execute_prompt()

    app.wait_for_view(lambda v: len(v) == 8, "8 clips like it")
    clips = clips_of(app)
    assert clips[0] == (video, number)
    assert shown(app_dataset, clips).count("red circle") >= 6
    app.wait_for_text(f"Latest results: similar to frame {number}, 8 frames",
                      root=panel(app))
    app.wait_for_count(8)
    app.wait(app.tiles_drawn, "the similar clips' tiles drawn")
    app.screenshot("frames-06-similar-frames")
    assert console_errors(app) == []


def test_a_collection_saved_from_clips_loads_as_clips(app, app_dataset):
    """Frame results shown as clips, saved from the panel, open as clips
    at their hits again from the panel's collection list (Load selects
    the saved view in FiftyOne's list), and opening them stamps no
    video."""
    saved = clips_of(app)
    stamps = app_dataset.values("last_modified_at")
    app.click_button("Save what is shown as a collection", root=panel(app))
    app.prompt()
    app.fill("Name", "red clips", root=app.prompt)
    app.execute_prompt()
    app.wait_for_notification("Saved collection")
    app.clear_view()
    app.wait_for_count(6)
    app.wait_for_text("Collections", root=panel(app))
    app.click_button("Load", root=panel(app))
    app.wait(lambda: app.current_saved_view() == "red clips",
             "'red clips' selected in the saved views list")
    app.wait_for_view(lambda v: len(v) == len(saved), "the saved clips")
    assert clips_of(app) == saved
    app.wait_for_count(len(saved))
    app.wait(app.tiles_drawn, "the saved clips' tiles drawn")
    app.screenshot("frames-07-saved-clips-loaded")
    assert app_dataset.values("last_modified_at") == stamps
    assert console_errors(app) == []
