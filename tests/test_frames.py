"""Sampling video frames (embedding/frames.py): FiftyOne's frame numbers for
uniform sampling, scene-change frames at planted cuts, one full-size frame
held at a time on a long video, broken files with their reasons, and the
frames' fingerprints. Videos are written here with OpenCV (mp4v in MP4,
MJPG in AVI): no ffmpeg binary is needed."""

import concurrent.futures
import gc
import math
import multiprocessing
import os
import tracemalloc
import weakref

import cv2
import numpy as np
import pytest

import fiftyone.utils.video as fouv

from fiftyone_ai_search.embedding.frames import (
    ASSUMED_FRAME_RATE,
    FrameReader,
    FrameSampling,
    UniformGrid,
    VideoDecodeError,
    frame_fingerprint,
)
from fiftyone_ai_search.embedding.preprocess import recipe_of
from fiftyone_ai_search.sync.images import file_fingerprint

CODECS = {"mp4v": ".mp4", "MJPG": ".avi"}

# BGR backgrounds of the planted scenes: far apart in colour
SCENES = [(40, 40, 200), (200, 60, 40), (40, 190, 60), (170, 170, 170)]


def _write(path, frames, fps, size, codec="mp4v"):
    """Writes BGR frames (an iterable of arrays, or of callables of the
    frame index) as a video; returns the path."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps,
                             (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {codec} here"
    count = 0
    for frame in frames:
        writer.write(frame)
        count += 1
    writer.release()
    return str(path)


def _scene_frame(index, scene, size):
    """A frame of a scene: its background, a white disc moving across it
    (motion that must not count as a cut) and the frame's index in a
    corner."""
    width, height = size
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = SCENES[scene]
    x = int((index * 7) % width)
    cv2.circle(frame, (x, height // 2), height // 6, (255, 255, 255), -1)
    cv2.putText(frame, str(index), (4, height - 6), cv2.FONT_HERSHEY_SIMPLEX,
                0.4, (0, 0, 0), 1)
    return frame


def _scenes_video(path, cuts, num_frames, fps=10, size=(96, 64),
                  codec="mp4v"):
    """A video whose scene changes at each (1-based) frame number in
    ``cuts``."""
    def frames():
        for number in range(1, num_frames + 1):
            scene = sum(number >= c for c in cuts) % len(SCENES)
            yield _scene_frame(number, scene, size)

    return _write(path, frames(), fps, size, codec)


def _plain_video(path, num_frames, fps=10, size=(96, 64), codec="mp4v"):
    return _scenes_video(path, [], num_frames, fps, size, codec)


# --- uniform sampling: FiftyOne's frame numbers --------------------------


@pytest.mark.parametrize("rate", [30, 29.97, 25, 24, 23.976, 60, 59.94,
                                  12.5, 7.5, 2])
@pytest.mark.parametrize("fps", [1, 0.5, 2, 3, 0.1, 7])
def test_the_uniform_grid_is_fiftyones_to_frames_fps(rate, fps):
    total = 2000
    ours = [n for grid in [UniformGrid(rate, fps)]
            for n in range(1, total + 1) if grid.hit(n)]
    theirs = fouv.sample_frames_uniform(rate, total_frame_count=total,
                                        fps=fps)
    if theirs is None:  # every frame
        theirs = list(range(1, total + 1))
    assert ours == theirs


def test_an_unknown_frame_rate_is_assumed():
    for rate in (None, 0, -5, math.nan, math.inf, 1e9):
        grid = UniformGrid(rate, 1)
        assert grid.step == ASSUMED_FRAME_RATE
        assert [n for n in range(1, 100) if grid.hit(n)] == [1, 31, 61, 91]


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_one_frame_per_second_by_default(tmp_path, codec):
    path = _plain_video(tmp_path / f"v{CODECS[codec]}", 35, fps=10,
                        codec=codec)
    reader = FrameReader(path, min_side=32)
    frames = list(reader)

    assert [f.frame_number for f in frames] == [1, 11, 21, 31]
    assert [f.timestamp for f in frames] == pytest.approx([0, 1, 2, 3],
                                                          abs=1e-3)
    assert not any(f.scene for f in frames)
    assert reader.frames_read == 35
    assert reader.info.frame_rate == pytest.approx(10)
    assert reader.info.frame_rate_known
    assert (reader.info.width, reader.info.height) == (96, 64)
    # reduced on decode: the shorter side to min_side, the aspect kept
    assert all(f.image.mode == "RGB" and f.image.size == (48, 32)
               for f in frames)


def test_images_are_rgb_for_the_models_transform(tmp_path, tiny):
    # a red scene (BGR (40, 40, 200)) reads red in RGB
    path = _plain_video(tmp_path / "red.avi", 5, codec="MJPG")
    (frame,) = FrameReader(path)
    red, green, blue = np.asarray(frame.image).reshape(-1, 3).mean(0)
    assert red > 150 and green < 100 and blue < 100

    _, preprocess, _ = tiny
    pixels = recipe_of(preprocess)(frame.image)
    assert pixels.dtype == np.float32 and pixels.shape[0] == 3


def test_the_rate_and_the_frame_rate_given(tmp_path):
    path = _plain_video(tmp_path / "v.mp4", 30, fps=10)
    two_per_second = [f.frame_number for f in
                      FrameReader(path, FrameSampling(fps=2))]
    assert two_per_second == [1, 6, 11, 16, 21, 26]
    # the sample's metadata.frame_rate, say, rather than the stream's
    given = FrameReader(path, FrameSampling(fps=1), frame_rate=5)
    assert [f.frame_number for f in given] == [1, 6, 11, 16, 21, 26]
    assert given.info.frame_rate == 5
    every = [f.frame_number for f in FrameReader(path, FrameSampling(fps=30))]
    assert every == list(range(1, 31))


# --- scene changes ----------------------------------------------------------


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_scene_change_frames_are_found_at_planted_cuts(tmp_path, codec):
    # cuts at 23, 51 and 78; uniform frames every 50 (1, 51); checks every
    # other frame (1, 3, 5, ...): cut 23 is a check frame, 51 a uniform
    # frame already (no extra frame), 78 is found at the next check, 79
    path = _scenes_video(tmp_path / f"cuts{CODECS[codec]}", [23, 51, 78],
                         100, fps=10, codec=codec)
    sampling = FrameSampling(fps=0.2, scene_threshold=0.3, scene_check_fps=5)
    frames = list(FrameReader(path, sampling))

    assert [(f.frame_number, f.scene) for f in frames] == [
        (1, False), (23, True), (51, False), (79, True)]
    assert frames[1].timestamp == pytest.approx(2.2, abs=1e-3)


def test_no_scene_frames_without_cuts_or_threshold(tmp_path):
    # a moving disc on one background is no scene change
    path = _plain_video(tmp_path / "still.mp4", 60)
    sampled = FrameReader(path, FrameSampling(fps=1, scene_threshold=0.3,
                                              scene_check_fps=10))
    assert [f.frame_number for f in sampled] == [1, 11, 21, 31, 41, 51]
    cuts = _scenes_video(tmp_path / "cuts.mp4", [23], 40)
    plain = FrameReader(cuts, FrameSampling(fps=1))
    assert [f.frame_number for f in plain] == [1, 11, 21, 31]


def test_a_scene_already_sampled_gets_no_extra_frame(tmp_path):
    # cut at 20; uniform frame 21, compared with frame 1, is the new scene's
    # first: the check at 26 (compared with 21) finds no cut
    path = _scenes_video(tmp_path / "v.mp4", [20], 40)
    sampling = FrameSampling(fps=1, scene_threshold=0.3, scene_check_fps=0.4)
    assert [(f.frame_number, f.scene) for f in
            FrameReader(path, sampling)] == [(1, False), (11, False),
                                             (21, False), (31, False)]


# --- bounded memory ---------------------------------------------------------


def _peak_while_reading(path, sampling, **kwargs):
    """``(peak traced bytes, most yielded images alive at once, frames)``
    of a pass over ``path`` whose consumer keeps only the current frame.
    numpy (and OpenCV's arrays, numpy's) report to tracemalloc."""
    refs = []  # PIL images are unhashable: no WeakSet
    most = count = 0
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for frame in FrameReader(path, sampling, **kwargs):
            # the consumer holds the current frame only
            refs.append(weakref.ref(frame.image))
            count += 1
            most = max(most, sum(r() is not None for r in refs))
        del frame
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak, most, count


def test_a_long_video_holds_one_full_frame(tmp_path):
    size = (480, 360)
    frame_bytes = size[0] * size[1] * 3

    def frames(n):
        for i in range(n):
            yield _scene_frame(i, (i // 40) % len(SCENES), size)

    short = _write(tmp_path / "short.avi", frames(60), 30, size, "MJPG")
    long = _write(tmp_path / "long.avi", frames(600), 30, size, "MJPG")
    sampling = FrameSampling(fps=10, scene_threshold=0.3, scene_check_fps=15)

    # in a process of its own: tracemalloc counts every thread's
    # allocations, and a test process's other threads (a watcher of an
    # index kept open by an earlier test, say) allocated meanwhile (CI saw
    # the long pass's peak at 1.69 frames, alone it is 1.11)
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
        (peak_short, most_short, n_short), (peak_long, most_long, n_long) = [
            pool.submit(_peak_while_reading, path, sampling,
                        min_side=64).result(timeout=300)
            for path in (short, long)]

    # every third frame, and the first frame checked after each cut (every
    # 40 frames) that is not one of those
    assert (n_short, n_long) == (21, 210)
    # the consumer's image is the only one alive: the reader keeps none
    assert most_short == most_long == 1
    # one full-size BGR frame (reused) and small things, whatever the length
    assert peak_long < 2 * frame_bytes
    assert peak_long < peak_short + frame_bytes // 2


# --- failures ---------------------------------------------------------------


def _reason(path, **kwargs):
    with pytest.raises(VideoDecodeError) as info:
        list(FrameReader(path, **kwargs))
    assert info.value.reason == str(info.value)
    return info.value.reason


def test_broken_files_fail_with_a_reason(tmp_path):
    assert _reason(tmp_path / "missing.mp4") == "file not found"
    assert _reason(tmp_path) == "not a file"

    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(50_000))
    assert _reason(garbage).startswith("cannot open video")

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert _reason(empty).startswith("cannot open video")

    text = tmp_path / "notes.avi"
    text.write_text("not a video\n" * 100)
    assert _reason(text).startswith("cannot open video")


def test_a_video_without_frames_fails(tmp_path):
    path = _write(tmp_path / "none.avi", [], 10, (96, 64), "MJPG")
    assert _reason(path) in ("video has no frames",
                             "cannot open video: not a video, or a format "
                             "OpenCV's FFmpeg cannot read")


def test_frames_above_the_pixel_limit_fail(tmp_path):
    path = _plain_video(tmp_path / "v.mp4", 3)
    assert "exceed the limit of 1000 pixels" in _reason(path,
                                                        max_pixels=1000)


def test_a_truncated_video_yields_what_precedes_the_damage(tmp_path):
    path = _plain_video(tmp_path / "v.avi", 100, codec="MJPG")
    data = open(path, "rb").read()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    reader = FrameReader(str(cut), FrameSampling(fps=10))
    try:
        frames = list(reader)
    except VideoDecodeError:
        return  # refused whole: also a clear outcome
    assert 0 < reader.frames_read < 100
    assert [f.frame_number for f in frames] == list(
        range(1, reader.frames_read + 1))


def test_stopping_early_closes_the_video(tmp_path):
    path = _plain_video(tmp_path / "v.mp4", 40)
    frames = iter(FrameReader(path))
    assert next(frames).frame_number == 1
    frames.close()  # releases the capture; no error
    os.remove(path)


# --- fingerprints and the rule ----------------------------------------------


def test_a_frames_fingerprint_follows_its_file_and_rule(tmp_path):
    path = _plain_video(tmp_path / "v.mp4", 20)
    rule = FrameSampling()
    before = frame_fingerprint(file_fingerprint(path), 11, rule)
    assert before == frame_fingerprint(file_fingerprint(path), 11, rule)
    assert before.endswith("|11|fps=1")

    # the video replaced (another length, another mtime)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    touched = frame_fingerprint(file_fingerprint(path), 11, rule)
    _scenes_video(tmp_path / "v.mp4", [5], 30)
    replaced = frame_fingerprint(file_fingerprint(path), 11, rule)
    assert len({before, touched, replaced}) == 3

    assert frame_fingerprint(file_fingerprint(path), 21, rule) != replaced
    scenes = FrameSampling(scene_threshold=0.3)
    assert frame_fingerprint(file_fingerprint(path), 11, scenes) != replaced
    # the frame rate the grid counted with, where the sample's metadata gave
    # one
    assert frame_fingerprint("9:9", 11, rule, 29.97) == "9:9|11|fps=1@29.97"
    assert frame_fingerprint("9:9", 11, rule, 30) != frame_fingerprint(
        "9:9", 11, rule, 29.97)
    # a file that cannot be stat'ed has none, as for images
    assert frame_fingerprint(None, 1, rule) == "None|1|fps=1"


def test_the_sampling_rule_is_checked_and_round_trips():
    rule = FrameSampling(fps=0.5, scene_threshold=0.25, scene_check_fps=2)
    assert rule.key == "fps=0.5;scene=0.25@2"
    assert FrameSampling.from_dict(rule.to_dict()) == rule
    assert FrameSampling.from_dict({}) == FrameSampling()
    assert FrameSampling(fps=1).key == FrameSampling(fps=1.0).key == "fps=1"
    for bad in (0, -1, math.nan, math.inf, True, "1"):
        with pytest.raises(ValueError, match="fps"):
            FrameSampling(fps=bad)
    for bad in (0, 1, 1.5, -0.1, True, "0.3"):
        with pytest.raises(ValueError, match="scene_threshold"):
            FrameSampling(scene_threshold=bad)
    with pytest.raises(ValueError, match="unknown"):
        FrameSampling.from_dict({"rate": 2})
    with pytest.raises(ValueError, match="min_side"):
        FrameReader("v.mp4", min_side=0)
    with pytest.raises(ValueError, match="sampling"):
        FrameReader("v.mp4", sampling={"fps": 1})
