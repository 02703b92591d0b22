"""Video frames (issue 24), end to end: a frame index synced through the
public SDK against an image index of the same frames.

Writes ``--videos`` mp4v clips of ``--seconds`` at 30 fps (the clips of
``bench_frames.py``: textures panning under moving discs, a cut every 3 s)
at ``--width`` x ``--height``, and JPEGs of the frames the default rule
samples (1 a second: frame 1, 31, 61, ...). Then, with the bundled tiny
CLIP and the configured workers:

- ``frames``: ``enable_embeddings(videos, frames=True)`` and
  ``calculate_embeddings(videos, frames=True, wait=True)``: every video
  decoded once, streamed through the model;
- ``images``: the same sampled frames as an image dataset, its image index
  synced the same way: what the Brain's path (``to_frames(sample_frames=
  True)``, then an index of those images) would embed after FFmpeg wrote
  the frames;
- ``brain`` (with ``--brain``; needs the ``ffmpeg`` binary): the peer's
  path on the same videos, ``to_frames(sample_frames=True, fps=1)``
  (FFmpeg decodes each video and writes the sampled frames as JPEGs) then
  FiftyOne Brain's ``compute_similarity`` (sklearn backend) with the same
  tiny CLIP as a FiftyOne model: what a user of the Brain runs for frame
  search, once (it does not sync).

Each row gives embedded frames per second (wall), wall and CPU seconds: this
process's and its decoding workers' (``RUSAGE_CHILDREN``, counted once
they exit: they are stopped before it is read). The machine is shared:
read CPU seconds beside wall times, with the load printed. Run it as::

    flock /tmp/aisearch-bench.lock .venv/bin/python bench/bench_frames_sync.py

Everything is written to a temporary directory, removed at the end.
"""

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

import cv2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# (it sets up the isolated FiftyOne, which must come before fiftyone)
from bench_frames import write_clip  # noqa: E402

import fiftyone as fo  # noqa: E402

import fiftyone_ai_search as ais  # noqa: E402
from fiftyone_ai_search.demo import tiny_clip_model_name  # noqa: E402
from fiftyone_ai_search.brain import ClipBrainModel  # noqa: E402
from fiftyone_ai_search.embedding import pool  # noqa: E402
from fiftyone_ai_search.embedding.frames import (  # noqa: E402
    FrameReader,
    FrameSampling,
)
from fiftyone_ai_search.embedding.model import (  # noqa: E402
    load_model,
    resolve_model,
)


def _cpu():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (own.ru_utime + own.ru_stime + children.ru_utime
            + children.ru_stime)


def _timed(run):
    wall, cpu = time.perf_counter(), _cpu()
    result = run()
    pool._SPARES.stop_all()  # the workers' CPU is counted once they exit
    return result, time.perf_counter() - wall, _cpu() - cpu


def write_inputs(folder, videos, seconds, width, height):
    """The clips, and JPEGs of the frames the default rule samples."""
    clips, images = [], []
    for i in range(videos):
        path = os.path.join(folder, f"clip-{i}.mp4")
        write_clip(path, width, height, seconds)
        clips.append(path)
        for frame in FrameReader(path, FrameSampling()):
            image = os.path.join(folder, f"clip-{i}-{frame.frame_number}.jpg")
            frame.image.save(image, quality=90)
            images.append(image)
    return clips, images


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--brain", action="store_true",
                        help="also the Brain's path (needs ffmpeg)")
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="ais-bench-frames-sync-")
    try:
        clips, images = write_inputs(folder, args.videos, args.seconds,
                                     args.width, args.height)
        decoded = sum(int(cv2.VideoCapture(c).get(cv2.CAP_PROP_FRAME_COUNT))
                      for c in clips)
        print(f"{len(clips)} clips {args.width}x{args.height}, "
              f"{args.seconds:g} s at 30 fps: {decoded} frames, "
              f"{len(images)} sampled; load {os.getloadavg()}")
        model = tiny_clip_model_name()

        videos = fo.Dataset()
        videos.add_samples([fo.Sample(filepath=c) for c in clips])
        ais.enable_embeddings(videos, model=model, frames=True,
                              compute=False)
        report, wall, cpu = _timed(lambda: ais.calculate_embeddings(
            videos, frames=True, wait=True, progress=False))
        indexed = ais.get_status(videos, frames=True)["counts"]["num_indexed"]
        print(f"frames: {indexed} frames of {report.added} videos, "
              f"{indexed / wall:.1f} frames/s, wall {wall:.1f} s, "
              f"CPU {cpu:.1f} s; load {os.getloadavg()}")

        stills = fo.Dataset()
        stills.add_samples([fo.Sample(filepath=i) for i in images])
        ais.enable_embeddings(stills, model=model, compute=False)
        report, wall, cpu = _timed(lambda: ais.calculate_embeddings(
            stills, wait=True, progress=False))
        print(f"images: {report.added} images, {report.added / wall:.1f} "
              f"images/s, wall {wall:.1f} s, CPU {cpu:.1f} s; "
              f"load {os.getloadavg()}")
        if args.brain:
            brain_row(clips, model, os.path.join(folder, "brain"))
        for dataset, frames in ((videos, True), (stills, False)):
            ais.disable_embeddings(dataset, frames=frames)
            dataset.delete()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def brain_row(clips, model, folder):
    """The Brain's path: FFmpeg writes the sampled frames (1 a second),
    then compute_similarity embeds them; CPU counts FFmpeg's processes."""
    import fiftyone.brain as fob

    if shutil.which("ffmpeg") is None:
        print("brain: skipped, no ffmpeg binary")
        return
    clip = ClipBrainModel(load_model(resolve_model(model, None)))
    videos = fo.Dataset()
    videos.add_samples([fo.Sample(filepath=c) for c in clips])

    def run():
        frames = videos.to_frames(sample_frames=True, fps=1,
                                  output_dir=folder)
        fob.compute_similarity(frames, model=clip, backend="sklearn",
                               brain_key="frames")
        return len(frames)

    count, wall, cpu = _timed(run)
    print(f"brain: {count} frames (to_frames + compute_similarity), "
          f"{count / wall:.1f} frames/s, wall {wall:.1f} s, CPU {cpu:.1f} "
          f"s; load {os.getloadavg()}")
    videos.delete()


if __name__ == "__main__":
    main()
