"""Sampling the frames of a video to embed: one pass over the file, bounded
memory, the frames FiftyOne numbers as its own.

:class:`FrameReader` decodes a video once, front to back, with OpenCV's
FFmpeg backend (``cv2.VideoCapture``; no ``ffmpeg`` binary is needed), and
yields the sampled frames as :class:`SampledFrame` s: the frame number
(1-based, FiftyOne's convention: the n-th frame decoded), its timestamp in
seconds and an RGB ``PIL`` image that the model's transform
(:mod:`fiftyone_ai_search.embedding.preprocess`) takes as it takes a decoded
image file.

Which frames (:class:`FrameSampling`):

-   **uniform** frames, ``fps`` per second of the video (1 by default): the
    frame numbers ``fiftyone.core.collections.SampleCollection.to_frames(fps=
    ...)`` samples for the same frame rate (``tests/test_frames.py`` checks
    it against ``fiftyone.utils.video.sample_frames_uniform``), so that a
    frames view of a video dataset made with the same ``fps`` holds exactly
    the indexed frames. The grid counts frames at the video's nominal frame
    rate (the caller may pass the sample's ``metadata.frame_rate``, else the
    stream's); a variable-frame-rate video is sampled every
    ``frame_rate / fps`` frames, ``fps`` per second on average;
-   **scene-change** frames, optional: every ``1 / scene_check_fps`` seconds
    (and at every uniform frame) a thumbnail's colour histogram is compared
    with the one before; a change above ``scene_threshold`` at a frame off
    the uniform grid samples that frame too: the first frame checked in the
    new scene, within ``1 / scene_check_fps`` s of the cut.

Memory: the decoder's frame (one full-size BGR buffer, reused) and the
yielded image, reduced at once to ``min_side`` pixels on its shorter side
(the pipeline asks for
:data:`fiftyone_ai_search.embedding.decode.DRAFT_FACTOR` x the model's input
size, as JPEGs are drafted), so a long 4K video costs what one 4K frame
does. Frames that are not sampled are only grabbed (``grab()``: decoded,
never converted to BGR): at 1 fps that is ~27% less CPU than converting
every frame (``bench/bench_frames.py``, 1080p and 4K mp4v). OpenCV's
FFmpeg cannot decode at a reduced size, so the reduction happens right
after decoding; decoding itself is the cost (4K mp4v: ~8 ms of CPU a
frame, ~0.3 s a second of video).

Failures (:class:`~fiftyone_ai_search.errors.VideoDecodeError`, with a short
reason to store with the sample): a missing file, a file OpenCV's FFmpeg
cannot open, a video without a single decodable frame, frames larger than
:func:`fiftyone_ai_search.config.max_image_pixels`. A stream that ends early
(a truncated file) yields the frames before the damage; the reader tells
how many frames it read and how many the container declared.

The fingerprint of a sampled frame (:func:`frame_fingerprint`) is the video
file's (the image index's size and mtime rule, computed by the sync), the
frame number and the sampling rule (:attr:`FrameSampling.key`): a replaced
video or a changed rule re-embeds its frames.

Examples::

    from fiftyone_ai_search.embedding.frames import FrameReader, FrameSampling

    reader = FrameReader("/path/to/video.mp4", FrameSampling(fps=1),
                         min_side=64)
    for frame in reader:
        print(frame.frame_number, frame.timestamp, frame.image.size)
    print(reader.frames_read, reader.info.declared_frames)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import Iterator, NamedTuple

import cv2
import numpy as np
from PIL import Image

from ..config import decode_timeout, max_image_pixels
from ..errors import VideoDecodeError
# the rule and the fingerprint need neither OpenCV nor PIL: the SDK imports
# them from sampling.py; they are this module's too
from .sampling import (  # noqa: F401
    DEFAULT_FPS,
    FrameSampling,
    frame_fingerprint,
)

#: the frame rate assumed for a video whose stream declares none (or 0, or
#: a rate no video has): FFmpeg gives almost every container one (it
#: guesses 25 for raw streams), so this is a last resort, and what it
#: assumes is in :attr:`VideoInfo.frame_rate_known`
ASSUMED_FRAME_RATE = 30.0

#: stream frame rates above this are taken as unknown (a bogus time base)
_MAX_FRAME_RATE = 1000.0

#: the side of the scene-change thumbnail's longer edge, in pixels
_THUMBNAIL_SIDE = 64

#: histogram bins per colour channel of the scene-change test (4 x 4 x 4)
_HISTOGRAM_BINS = 4


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the container says of a video, read when it is opened.

    Attributes:
        width: frame width in pixels
        height: frame height in pixels
        frame_rate: the nominal frame rate the uniform grid counts with
        frame_rate_known: False where neither the caller nor the stream gave
            a usable rate and :data:`ASSUMED_FRAME_RATE` was assumed
        declared_frames: the frame count the container declares (0 if none;
            an estimate for some containers): the number of frames decoded
            is :attr:`FrameReader.frames_read`
        codec: the codec's FourCC (``"mp4v"``, ``"h264"``...), or ``""``
    """

    width: int
    height: int
    frame_rate: float
    frame_rate_known: bool
    declared_frames: int
    codec: str


class SampledFrame(NamedTuple):
    """A frame to embed.

    Attributes:
        frame_number: 1-based, in decoding order (FiftyOne's frame numbers)
        timestamp: seconds from the start: the stream's presentation time
            where it has one, else ``(frame_number - 1) / frame_rate``
        image: an RGB ``PIL.Image.Image``, reduced to the reader's
            ``min_side``
        scene: True for a frame sampled for a scene change (off the uniform
            grid)
    """

    frame_number: int
    timestamp: float
    image: Image.Image
    scene: bool


class FrameReader:
    """Decodes a video once and yields its sampled frames
    (:class:`SampledFrame`), holding at most one full-size frame.

    Each iteration decodes the file again from its start. The video is
    opened when iteration starts, and closed when it ends (also when the
    caller stops early and the iterator is closed or collected).

    Args:
        filepath: the video's path
        sampling (None): a :class:`FrameSampling`; defaults to one frame per
            second
        frame_rate (None): the nominal frame rate to sample with (e.g. the
            sample's ``metadata.frame_rate``, so that the frames are those of
            FiftyOne's ``to_frames(fps=...)``); defaults to the stream's
        min_side (None): reduce frames whose shorter side is longer to this
            many pixels (area averaging); None keeps the decoded size
        max_pixels (None): refuse videos whose frames have more pixels;
            defaults to :func:`fiftyone_ai_search.config.max_image_pixels`
        timeout (None): the most seconds opening the file or reading one
            frame may take (OpenCV's FFmpeg interrupts a read that stalls);
            defaults to :func:`fiftyone_ai_search.config.decode_timeout`
        threads (None): FFmpeg's decoding threads; None leaves OpenCV's
            default (as many as cores). Frame threading holds one decoded
            frame per thread inside the decoder

    Raises (when iterated):
        VideoDecodeError: if no frame can be read (see the module's
            docstring)
    """

    def __init__(self, filepath: str, sampling: FrameSampling | None = None,
                 frame_rate: float | None = None, min_side: int | None = None,
                 max_pixels: int | None = None, timeout: float | None = None,
                 threads: int | None = None):
        if sampling is not None and not isinstance(sampling, FrameSampling):
            raise ValueError(
                f"sampling must be a FrameSampling or None, got {sampling!r}")
        if min_side is not None and (isinstance(min_side, bool) or not
                                     isinstance(min_side, numbers.Integral)
                                     or min_side < 1):
            raise ValueError(
                f"min_side must be None or an integer >= 1, got {min_side!r}")
        self.filepath = os.fspath(filepath)
        self.sampling = sampling or FrameSampling()
        self.frame_rate = frame_rate
        self.min_side = None if min_side is None else int(min_side)
        self.max_pixels = max_pixels
        self.timeout = timeout
        self.threads = threads
        #: the :class:`VideoInfo`, once iteration has opened the video
        self.info: VideoInfo | None = None
        #: frames decoded by the last iteration so far
        self.frames_read = 0
        #: sampled frames that decoded but could not be converted (skipped)
        self.frames_skipped = 0

    def __iter__(self) -> Iterator[SampledFrame]:
        capture = self._open()
        try:
            yield from self._frames(capture)
        finally:
            capture.release()

    def _open(self):
        if not os.path.isfile(self.filepath):
            reason = ("not a file" if os.path.exists(self.filepath)
                      else "file not found")
            raise VideoDecodeError(reason)
        timeout = decode_timeout() if self.timeout is None else self.timeout
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(timeout * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(timeout * 1000)]
        if self.threads is not None:
            params += [cv2.CAP_PROP_N_THREADS, int(self.threads)]
        capture = cv2.VideoCapture(self.filepath, cv2.CAP_FFMPEG, params)
        if not capture.isOpened():
            capture.release()
            raise VideoDecodeError(
                "cannot open video: not a video, or a format OpenCV's "
                "FFmpeg cannot read")
        try:
            self.info = self._info(capture)
        except VideoDecodeError:
            capture.release()
            raise
        return capture

    def _info(self, capture):
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        limit = max_image_pixels() if self.max_pixels is None \
            else self.max_pixels
        if width * height > limit:
            raise VideoDecodeError(
                f"frames of {width}x{height} pixels exceed the limit of "
                f"{limit} pixels (FIFTYONE_AI_SEARCH_MAX_IMAGE_PIXELS)")
        rate = self.frame_rate
        if not _usable_rate(rate):
            rate = capture.get(cv2.CAP_PROP_FPS)
        known = _usable_rate(rate)
        fourcc = int(capture.get(cv2.CAP_PROP_FOURCC))
        codec = "".join(chr((fourcc >> (8 * i)) & 0xFF) for i in range(4))
        return VideoInfo(
            width=width, height=height,
            frame_rate=float(rate) if known else ASSUMED_FRAME_RATE,
            frame_rate_known=known,
            declared_frames=max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))),
            codec=codec.strip("\x00 ").lower(),
        )

    def _frames(self, capture):
        info, sampling = self.info, self.sampling
        uniform = UniformGrid(info.frame_rate, sampling.fps)
        checks = (UniformGrid(info.frame_rate, sampling.scene_check_fps)
                  if sampling.scene_threshold is not None else None)
        last_histogram = None
        last_time = -1.0
        buffer = None  # the full-size BGR frame, reused
        self.frames_read = self.frames_skipped = 0
        while capture.grab():
            self.frames_read = number = self.frames_read + 1
            on_grid = uniform.hit(number)
            check = checks is not None and checks.hit(number)
            if not (on_grid or check):
                continue
            ok, buffer = capture.retrieve(buffer)
            if not ok or buffer is None or buffer.size == 0:
                self.frames_skipped += 1
                buffer = None
                continue
            sample, scene = on_grid, False
            if checks is not None:
                # every frame converted is compared with the one before it,
                # uniform ones too: a cut found here lies after the last
                # sampled frame, so the new scene has no frame yet
                histogram = _histogram(buffer)
                if (not on_grid and last_histogram is not None
                        and _distance(histogram, last_histogram)
                        > sampling.scene_threshold):
                    sample = scene = True
                last_histogram = histogram
            if not sample:
                continue
            last_time = self._timestamp(capture, number, last_time)
            yield SampledFrame(number, last_time, self._image(buffer), scene)
        if self.frames_read == 0:
            raise VideoDecodeError("video has no frames")

    def _timestamp(self, capture, number, last_time):
        """The stream's presentation time of the frame just grabbed, or
        where it has none (or goes backwards) its place at the nominal
        frame rate."""
        seconds = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if math.isfinite(seconds) and seconds > last_time and (
                seconds > 0 or number == 1):
            return seconds
        return (number - 1) / self.info.frame_rate

    def _image(self, frame):
        """The frame (BGR, full size) as an RGB image, its shorter side
        reduced to :attr:`min_side`."""
        height, width = frame.shape[:2]
        short = min(width, height)
        if self.min_side is not None and short > self.min_side:
            scale = self.min_side / short
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        return Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))


class UniformGrid:
    """The frame numbers of uniform sampling, told one frame at a time.

    ``fps`` samples per second of a video at ``frame_rate``: frame 1, then
    every ``frame_rate / fps`` frames, each rounded to the nearest frame
    (half to even, as Python's ``round``): the frames of FiftyOne's
    ``fiftyone.utils.video.sample_frames_uniform(frame_rate, fps=fps)``, so
    the same steps accumulate the same float error. Every frame where
    ``fps >= frame_rate``. A rate that is not a finite number > 0 counts as
    :data:`ASSUMED_FRAME_RATE`.

    Args:
        frame_rate: the video's nominal frame rate
        fps: samples per second
    """

    def __init__(self, frame_rate: float | None, fps: float):
        rate = float(frame_rate) if _usable_rate(frame_rate) \
            else ASSUMED_FRAME_RATE
        self.step = max(1.0, rate / fps)
        self._every = rate <= fps
        self._position = 1.0
        self._next = 1

    def hit(self, frame_number: int) -> bool:
        """Whether ``frame_number`` is sampled; frame numbers must be asked
        in increasing order (each at most once)."""
        if self._every:
            return True
        if frame_number < self._next:
            return False
        # the next sampled frame: the first rounded position past this one
        while self._next <= frame_number:
            self._position += self.step
            self._next = int(round(self._position))
        return True


def _histogram(frame):
    """The normalised joint colour histogram of a small thumbnail of a BGR
    frame (nearest-neighbour: it reads only the thumbnail's pixels, not the
    whole 4K frame)."""
    height, width = frame.shape[:2]
    scale = _THUMBNAIL_SIDE / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    thumbnail = cv2.resize(frame, size, interpolation=cv2.INTER_NEAREST)
    bins = _HISTOGRAM_BINS
    histogram = cv2.calcHist([thumbnail], [0, 1, 2], None, [bins] * 3,
                             [0, 256] * 3).ravel()
    return histogram / max(1.0, float(histogram.sum()))


def _distance(a, b):
    """Total variation distance of two normalised histograms, 0 to 1."""
    return 0.5 * float(np.abs(a - b).sum())


def _usable_rate(rate):
    return (isinstance(rate, numbers.Real) and not isinstance(rate, bool)
            and math.isfinite(rate) and 0 < rate <= _MAX_FRAME_RATE)
