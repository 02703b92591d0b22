"""Video frames (issue 24): what decoding and sampling a video costs, and
embedding its frames with the bundled tiny CLIP.

Generates two clips with OpenCV (MPEG-4 Part 2, ``mp4v``: the codec OpenCV
writes here; H.264, the common codec, costs more to decode), 30 fps, a
textured background panning under moving discs with a cut every 3 s: a
1080p clip of ``--seconds`` and a 4K clip of half as long. For each clip,
rows in one process, one after the other:

- ``grab all``: every frame decoded (``grab``), none converted: the floor
  of any pass;
- ``retrieve all``: every frame decoded and converted to BGR at full size:
  what comparing every frame for scene changes would cost;
- ``1 fps``: :class:`~fiftyone_ai_search.embedding.frames.FrameReader` at
  the default rule, frames reduced to 64 px (the tiny CLIP's 2 x 32) and to
  448 px (ViT-B-32's 2 x 224);
- ``1 fps + scenes``: the same with scene-change frames (threshold 0.3,
  checked 4 times a second);
- ``1 fps, 1 thread``: FFmpeg decoding on one thread (as several pipeline
  workers, one video each, would run);
- ``embed``: the 1 fps frames through the tiny CLIP as the pipeline runs
  it (the transform's torch-free recipe, then ``encode_images`` in batches
  of 32), decoding excluded.

Each row gives video frames per second (frames of the clip over wall
time), the sampled frames, wall and CPU seconds (``time.process_time``: all
threads of the process, FFmpeg's included). The machine is shared: read CPU
seconds beside wall times, and the load printed with them. Run it as::

    flock /tmp/aisearch-bench.lock nice -n 15 .venv/bin/python bench/bench_frames.py

The clips are written to a temporary directory, removed at the end.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _env  # noqa: E402  (must run before fiftyone is imported)

_env.setup()

from fiftyone_ai_search.demo import tiny_clip_model_name  # noqa: E402
from fiftyone_ai_search.embedding.decode import DRAFT_FACTOR  # noqa: E402
from fiftyone_ai_search.embedding.frames import (  # noqa: E402
    FrameReader,
    FrameSampling,
)
from fiftyone_ai_search.embedding.model import (  # noqa: E402
    load_model,
    resolve_model,
)
from fiftyone_ai_search.embedding.preprocess import recipe_of  # noqa: E402

FPS = 30
CUT_SECONDS = 3
BATCH = 32


def _texture(width, height, seed):
    """A smooth random texture twice the frame's width (it pans)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 16 + 1, width // 8 + 1, 3),
                         dtype=np.uint8)
    big = cv2.resize(small, (2 * width, height),
                     interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(0, 24, big.shape, dtype=np.uint8)
    return cv2.add(big, noise)


def write_clip(path, width, height, seconds):
    """A clip of textured scenes panning under moving discs, a cut every
    :data:`CUT_SECONDS` (another texture)."""
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), FPS,
                             (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write mp4v to {path}")
    scene, texture = -1, None
    for index in range(int(seconds * FPS)):
        if index // (CUT_SECONDS * FPS) != scene:
            scene = index // (CUT_SECONDS * FPS)
            texture = _texture(width, height, scene)
        shift = (index * width // (4 * FPS)) % width
        frame = np.ascontiguousarray(texture[:, shift:shift + width])
        for k in range(3):
            x = (index * (5 + 3 * k) * width // 600) % width
            y = height * (k + 1) // 4
            cv2.circle(frame, (x, y), height // 10, (40 + 80 * k, 200, 255),
                       -1)
        writer.write(frame)
    writer.release()
    return path


def _timed(run):
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def grab_all(path, retrieve=False):
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    count, buffer = 0, None
    try:
        while capture.grab():
            count += 1
            if retrieve:
                _, buffer = capture.retrieve(buffer)
    finally:
        capture.release()
    return count, 0


def read(path, sampling, min_side, threads=None, keep=False):
    reader = FrameReader(path, sampling, min_side=min_side, threads=threads)
    frames = [f.image for f in reader] if keep else sum(1 for _ in reader)
    return reader.frames_read, frames


def embed(model, images):
    recipe = recipe_of(model.preprocess) or model.preprocess
    for start in range(0, len(images), BATCH):
        pixels = np.stack([recipe(i) for i in images[start:start + BATCH]])
        model.encode_images(pixels)
    return 0, len(images)


def _row(name, frames, sampled, wall, cpu):
    rate = frames / wall if frames else float("nan")
    print(f"| {name:<34} | {rate:>9.1f} | {sampled:>7} | {wall:>7.2f} | "
          f"{cpu:>7.2f} |", flush=True)


def bench_clip(label, path, model, threads):
    print(f"\n{label}: {os.path.getsize(path) / 2**20:.1f} MiB, load "
          f"{os.getloadavg()[0]:.2f}")
    print("| row                                | frames/s  | sampled | "
          "wall s  | CPU s   |")
    print("|------------------------------------|-----------|---------|"
          "---------|---------|")
    (frames, _), wall, cpu = _timed(lambda: grab_all(path))
    _row("grab all", frames, 0, wall, cpu)
    (frames, _), wall, cpu = _timed(lambda: grab_all(path, retrieve=True))
    _row("retrieve all", frames, frames, wall, cpu)
    plain = FrameSampling()
    scenes = FrameSampling(scene_threshold=0.3, scene_check_fps=4)
    tiny_side = DRAFT_FACTOR * model.image_size
    for name, sampling, side, n_threads in [
            (f"1 fps, {tiny_side} px", plain, tiny_side, threads),
            ("1 fps, 448 px", plain, 448, threads),
            (f"1 fps + scenes, {tiny_side} px", scenes, tiny_side, threads),
            (f"1 fps, {tiny_side} px, 1 thread", plain, tiny_side, 1)]:
        (frames, sampled), wall, cpu = _timed(
            lambda: read(path, sampling, side, n_threads))
        _row(name, frames, sampled, wall, cpu)
    (frames, images), _, _ = _timed(
        lambda: read(path, plain, tiny_side, threads, keep=True))
    (_, sampled), wall, cpu = _timed(lambda: embed(model, images))
    print(f"| {'embed (tiny CLIP), sampled/s':<34} | "
          f"{sampled / wall:>9.1f} | {sampled:>7} | {wall:>7.2f} | "
          f"{cpu:>7.2f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20,
                        help="length of the 1080p clip (the 4K one is half)")
    parser.add_argument("--threads", type=int, default=None,
                        help="FFmpeg decoding threads (default: OpenCV's)")
    parser.add_argument("--skip-4k", action="store_true")
    args = parser.parse_args()

    model = load_model(resolve_model(tiny_clip_model_name()), device="cpu")
    scratch = tempfile.mkdtemp(prefix="ais-bench-frames-")
    try:
        clips = [("1080p", 1920, 1080, args.seconds)]
        if not args.skip_4k:
            clips.append(("4K", 3840, 2160, args.seconds / 2))
        for label, width, height, seconds in clips:
            path = os.path.join(scratch, f"{label}.mp4")
            _, wall, cpu = _timed(
                lambda: (write_clip(path, width, height, seconds), 0))
            print(f"\nwrote {label} ({width}x{height}, {seconds:g} s at "
                  f"{FPS} fps) in {wall:.1f} s ({cpu:.1f} s CPU)")
            bench_clip(f"{label} mp4v, {int(seconds * FPS)} frames", path,
                       model, args.threads)
            os.remove(path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\ncores: {os.cpu_count()}, load {os.getloadavg()}")


if __name__ == "__main__":
    main()
