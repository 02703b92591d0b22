"""Frame search of a grouped dataset's video slices in the FiftyOne App,
as a curator uses it, in a real browser.

Headless Chromium drives the real App server (with our plugin) over a
grouped dataset of 3 groups, each an image (slice "left", the default)
and two small synthetic videos (slices "front" and "rear", tests/videos.py:
a shape moving across each second of video; two front videos show a red
circle from 2 s on, no other video shows one), AI search off at first.
With the image slice shown, the grid's AI Search button searches the
images and says how to search the frames: show a video slice. With
"front" shown (picked in the App's slice selector, as FiftyOne's App
works in the slice it shows), the button enables the frame index of
every video slice, the panel follows it, a prompt searches the frames of
the slice shown (the grid shows a clip starting at each hit, red circles
first), a search from them searches every video slice, and the best
result opens in the video player at the hit.

The tests share one page and run in file order, each from where the previous
one left it. Screenshots go to ``tests/artifacts/browser/grouped-*.png``.
Needs chromium, chromedriver, selenium and ffprobe: skips without them,
fails under CI.
"""

import os
import shutil
import uuid

import pytest

import fiftyone as fo

import fiftyone_ai_search as ais
from fiftyone_ai_search.app import PLUGIN_NAME
from fiftyone_ai_search.demo import shapes
from tests.app_browser import unavailable
from tests.test_app_browser_frames import (console_errors, panel,
                                           player_time, webm_copy)
from tests.videos import FRAME_RATE, write_video

pytestmark = pytest.mark.slow

RED = ("red", "circle")
# the red circle from 2 s on: a player at the video's start shows no hit
WITH_RED = [("blue", "square"), ("blue", "square"), RED, RED]
WITHOUT = [("blue", "circle"), ("red", "square"), ("green", "star"),
           ("blue", "square")]
#: each group's front and rear videos: red circles in two front videos
GROUPS = [(WITH_RED, WITHOUT), (WITHOUT, WITHOUT[::-1]), (WITH_RED, WITHOUT)]
NUM_FRAMES = 24  # 6 videos of 4 s, 1 frame a second
PANEL = "AI Search"


def _video(folder, name, layout, seed):
    written = os.path.join(folder, f"{name}.mp4")
    write_video(written, layout, seed=seed)
    path = webm_copy(written)  # the browser plays VP8 in WebM
    # what FiftyOne's frames views count frames with (set as
    # dataset.compute_metadata() would find it)
    metadata = fo.VideoMetadata(
        frame_rate=float(FRAME_RATE),
        total_frame_count=FRAME_RATE * len(layout),
        duration=float(len(layout)), frame_width=128, frame_height=128,
        encoding_str="VP80", size_bytes=os.path.getsize(path),
        mime_type="video/webm")
    return fo.Sample(filepath=path, metadata=metadata,
                     layout=[f"{c} {s}" for c, s in layout])


@pytest.fixture(scope="module")
def app_dataset(tmp_path_factory):
    """The groups (the browser plays VP8 in WebM), AI search off."""
    if shutil.which("ffprobe") is None:
        unavailable("FiftyOne's App needs ffprobe to show video frames: "
                    "apt-get install ffmpeg")
    folder = str(tmp_path_factory.mktemp("grouped"))
    dataset = fo.Dataset("grouped-" + uuid.uuid4().hex[:8])
    dataset.add_group_field("group", default="left")
    samples = []
    for i, (front, rear) in enumerate(GROUPS):
        group = fo.Group()
        still = os.path.join(folder, f"left-{i}.png")
        shapes.render(shapes.sample_spec(i, 0, color="green",
                                         shape="square")).save(still)
        samples.append(fo.Sample(filepath=still,
                                 group=group.element("left")))
        for name, layout, seed in (("front", front, 10 * i),
                                   ("rear", rear, 10 * i + 5)):
            sample = _video(folder, f"{name}-{i}", layout, seed)
            sample["group"] = group.element(name)
            samples.append(sample)
    dataset.add_samples(samples)
    yield dataset
    if ais.is_embeddings_enabled(dataset, frames=True):
        ais.disable_embeddings(dataset, frames=True)
    dataset.delete()


def shown(dataset, clips):
    """What the hit frame of each clip (``(video id, first frame)``) shows
    (``"red circle"``): the test videos change shape every second."""
    videos = dataset.select_group_slices(media_type="video")
    layouts = dict(zip(*videos.values(["id", "layout"])))
    return [layouts[v][(n - 1) // FRAME_RATE] for v, n in clips]


def slice_of(dataset, clips):
    videos = dataset.select_group_slices(media_type="video")
    slices = dict(zip(*videos.values(["id", "group.name"])))
    return [slices[v] for v, _ in clips]


def clips_of(app):
    """The App's view as ``(video id, first frame)`` of its clips."""
    view = app.session.view
    assert view is not None and view._is_clips, view
    return [(v, s[0]) for v, s in zip(*view.values(["sample_id", "support"]))]


def show_slice(app, name):
    """Picks ``name`` in the App's slice selector above the grid, as a
    user does (FiftyOne's ``data-cy`` hooks)."""
    from selenium.webdriver.common.by import By

    def pick():
        box = app.driver.find_element(By.CSS_SELECTOR,
                                      "input[data-cy=selector-slice]")
        app.click(box)
        app.click(app.driver.find_element(
            By.CSS_SELECTOR, f"[data-cy=selector-result-{name}]"))
        return True

    app.wait(pick, f"slice {name!r} picked")
    app.wait(lambda: app.driver.find_element(
        By.CSS_SELECTOR, "input[data-cy=selector-slice]").get_attribute(
            "value") == name, f"the App showing slice {name!r}")
    app.wait(app.tiles_drawn, f"the tiles of slice {name!r}")


def test_an_image_slice_says_how_to_search_the_frames(app, app_dataset):
    app.open_dataset(app_dataset.name)
    app.wait(app.tiles_drawn, "the images' tiles")
    app.click_placement(f"{PLUGIN_NAME}/ai_search")
    app.wait_for_text("AI search is off for this dataset", root=app.prompt)
    app.wait_for_text("To search the frames of the videos ('front', "
                      "'rear'), show a video slice", root=app.prompt)
    app.screenshot("grouped-01-image-slice")
    app.cancel_prompt()
    assert console_errors(app) == []


def test_a_video_slice_enables_frame_search(app, app_dataset):
    show_slice(app, "front")
    app.click_placement(f"{PLUGIN_NAME}/ai_search")
    app.wait_for_text("AI search is off for the video slices ('front', "
                      "'rear') of this dataset", root=app.prompt)
    app.wait_for_text("indexes the frames of the videos of every video "
                      "slice", root=app.prompt)
    app.wait_for_text("Frames per second", root=app.prompt)
    app.wait_executable()
    app.screenshot("grouped-02-enable-form")
    app.execute_prompt()

    app.panel(PANEL, timeout=60)
    app.wait_for_text("Frame index: ready", root=panel(app), timeout=240)
    app.wait_for_text(f"{NUM_FRAMES} frames of 6 videos indexed (1 frame "
                      "per second), 0 videos failed", root=panel(app))
    assert ais.is_embeddings_enabled(app_dataset, frames=True)
    assert not ais.is_embeddings_enabled(app_dataset)  # (the images)
    app.screenshot("grouped-03-ready")
    assert console_errors(app) == []


def test_a_prompt_finds_red_circles_in_the_slice_and_opens_a_hit(
        app, app_dataset):
    app.click_placement(f"{PLUGIN_NAME}/ai_search")
    app.wait_for_text("Search frames by", root=app.prompt)
    text = app.wait_for_text("Searching the frames of the 3 videos of slice "
                             "'front'", root=app.prompt)
    assert "Search every video slice" in text and "Open as clips" in text
    app.fill("Prompt", "a red circle", root=app.prompt)
    app.fill("Limit", 4, root=app.prompt)
    app.screenshot("grouped-04-search-form")
    app.execute_prompt()

    # a clip starting at each hit, best first, of the slice shown
    app.wait_for_view(lambda v: len(v) == 4, "the 4 clips found")
    clips = clips_of(app)
    assert slice_of(app_dataset, clips) == ["front"] * 4
    hits = ais.search_frames(app_dataset.select_group_slices("front"),
                             prompt="a red circle", limit=4)
    assert clips == [(h["sample_id"], h["frame_number"]) for h in hits]
    # the 4 seconds of red circle of the front videos
    assert shown(app_dataset, clips).count("red circle") >= 3
    app.wait_for_text("Latest results: prompt 'a red circle', 4 frames",
                      root=panel(app))
    app.wait_for_count(4)
    app.wait(app.tiles_drawn, "the clips' tiles drawn")
    app.screenshot("grouped-05-red-circle-clips")
    # a search from them: every video slice (the App shows no slice in
    # the clips, a flattened view without the slice selector)
    app.click_placement(f"{PLUGIN_NAME}/ai_search")
    app.wait_for_text("Searching the frames of the 6 videos of the video "
                      "slices 'front', 'rear'. A new search never searches "
                      "the latest results.", root=app.prompt)
    app.cancel_prompt()

    # the best one opens in the video player at its hit, not at the start
    video, number = clips[0]
    assert number > 2 * FRAME_RATE
    modal = app.open_sample(0)
    app.wait_for_text("support", root=modal)
    hit = (number - 1) / FRAME_RATE
    app.wait(lambda: player_time(app) == pytest.approx(hit, abs=0.01),
             f"the player at the hit, {hit:.2f} s", interval=0.25)
    app.screenshot("grouped-06-hit-opened")
    assert console_errors(app) == []
