"""Small synthetic videos for the tests of frame search: segments of a
second or so, each showing one coloured shape of the tiny CLIP's world
moving across a textured background, written with OpenCV's FFmpeg (mp4v;
no ``ffmpeg`` binary is needed)."""

import dataclasses
import os
import uuid

import cv2
import numpy as np

from fiftyone_ai_search.demo import shapes

#: the frame rate of the test videos
FRAME_RATE = 10

#: their side in pixels
SIZE = 128


def write_video(path, segments, frame_rate=FRAME_RATE, seconds=1.0, seed=0,
                size=SIZE):
    """Writes a video of ``segments`` (a list of ``(colour, shape)``), each
    shown for ``seconds``, the shape moving from left to right.

    Returns:
        the number of frames written
    """
    per_segment = max(1, round(seconds * frame_rate))
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"),
                             frame_rate, (size, size))
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    count = 0
    try:
        for i, (color, shape) in enumerate(segments):
            spec = shapes.sample_spec(seed, i, color=color, shape=shape)
            y = spec.center[1]
            for j in range(per_segment):
                x = 0.3 + 0.4 * j / max(1, per_segment - 1)
                moved = dataclasses.replace(spec, center=(x, y))
                image = shapes.render(moved, image_size=size, seed=seed + i)
                writer.write(cv2.cvtColor(np.asarray(image),
                                          cv2.COLOR_RGB2BGR))
                count += 1
    finally:
        writer.release()
    return count


def video_dataset(tmp_path, layouts, seed=0, name=None):
    """A video dataset of one video per layout (a list of segments, see
    :func:`write_video`), written under ``tmp_path``.

    Returns:
        the dataset; each sample's ``layout`` field holds its segments as
        ``"colour shape"`` strings
    """
    import fiftyone as fo

    name = name or "frames-" + uuid.uuid4().hex[:10]
    folder = os.path.join(str(tmp_path), name)
    os.makedirs(folder, exist_ok=True)
    samples = []
    for i, layout in enumerate(layouts):
        path = os.path.join(folder, f"video-{i:03d}.mp4")
        write_video(path, layout, seed=seed + 100 * i)
        samples.append(fo.Sample(
            filepath=path, layout=[f"{c} {s}" for c, s in layout]))
    dataset = fo.Dataset(name)
    dataset.add_samples(samples)
    return dataset
