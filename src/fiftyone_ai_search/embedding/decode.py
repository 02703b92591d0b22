"""Decoding and preprocessing a batch of image files (or of crops of them)
into the pixels a model takes: in the calling thread, or in a worker of
:mod:`fiftyone_ai_search.embedding.pool`, which builds a :class:`Decoder`
from :meth:`Decoder.state`.

Nothing here imports torch unless a transform without a torch-free recipe
(:mod:`fiftyone_ai_search.embedding.preprocess`) needs it.
"""

import contextlib
import math
import threading

import numpy as np

from ..config import decode_timeout, max_image_bytes, max_image_pixels
from ..errors import VideoDecodeError
from .crops import CropError, pixel_box, relative_box
from .images import ImageDecodeError, load_image
from .preprocess import Recipe, recipe_of

#: JPEGs are decoded (PIL ``draft``) at no less than this multiple of the
#: model's input size, which keeps embeddings within cosine ~0.9999 of full
#: decoding while decoding ~3x faster. For crops, the smallest crop of an
#: image gets this multiple on its shorter side
DRAFT_FACTOR = 2

# Crops that would need a larger draft size decode at full size (no image
# is that large, and PIL takes sizes as C ints)
_MAX_DRAFT_SIZE = 1 << 24


class Decoder:
    """Decodes and preprocesses batches of ``(key, filepath)`` and
    ``(key, filepath, crops)``.

    Its arguments are all that a worker needs: :class:`fiftyone_ai_search.embedding.pool.WorkerPool` sends
    them over to build the worker's decoder.
    """

    def __init__(self, preprocess, draft_size=None, max_pixels=None,
                 crop=None, max_bytes=None, timeout=None):
        self.preprocess = preprocess
        self.draft_size = draft_size
        self.max_pixels = max_pixels
        self.crop = crop
        self.max_bytes = max_bytes
        self.timeout = timeout

    @classmethod
    def for_model(cls, model, crop=None):
        """The decoder of a model's runs: its transform as a torch-free
        recipe where it has one, images drafted and reduced to no less than
        :data:`DRAFT_FACTOR` x its input size, the limits of an image
        (pixels, bytes, seconds) read now (workers kept warm from an earlier
        run get this run's), and the run's
        :class:`fiftyone_ai_search.embedding.crops.CropSettings` if any."""
        return cls(
            recipe_of(model.preprocess) or model.preprocess,
            draft_size=DRAFT_FACTOR * model.image_size,
            max_pixels=max_image_pixels(),
            crop=crop,
            max_bytes=max_image_bytes(),
            timeout=decode_timeout(),
        )

    def state(self):
        """What a worker's decoder is built from: ``Decoder(*state)``."""
        return (self.preprocess, self.draft_size, self.max_pixels, self.crop,
                self.max_bytes, self.timeout)

    def decode(self, batch):
        """Returns ``(keys, pixels, failures)``; ``pixels`` is a float32
        array of shape ``(len(keys), 3, H, W)``, or None if ``keys`` is
        empty."""
        keys, arrays, failures = [], [], {}
        torch_free = isinstance(self.preprocess, Recipe)
        with contextlib.nullcontext() if torch_free else one_torch_thread():
            if self.crop is None:
                for key, filepath in batch:
                    self._decode_one(key, filepath, keys, arrays, failures)
            else:
                for item in batch:
                    if len(item) == 2:
                        self._decode_one(*item, keys, arrays, failures)
                    else:
                        self._decode_crops(*item, keys, arrays, failures)

        pixels = np.stack(arrays) if arrays else None
        return keys, pixels, failures

    def _decode_one(self, key, filepath, keys, arrays, failures):
        try:
            image = load_image(
                filepath,
                draft_size=self.draft_size,
                max_pixels=self.max_pixels,
                max_bytes=self.max_bytes,
                timeout=self.timeout,
            )
        except ImageDecodeError as e:
            failures[key] = e.reason
            return

        self._preprocess(key, image, "image", keys, arrays, failures)

    def _preprocess(self, key, image, what, keys, arrays, failures):
        """Preprocesses ``image`` (an image or a crop, ``what``) for
        ``key``; a failure fails that key alone."""
        try:
            array = np.asarray(self.preprocess(image), dtype=np.float32)
        except Exception as e:
            failures[key] = f"cannot preprocess {what}: {e}"
            return

        keys.append(key)
        arrays.append(array)

    def _decode_crops(self, key, filepath, crops, keys, arrays, failures):
        boxes = self._valid_boxes(crops, failures)
        if not boxes:
            return  # nothing worth decoding the image for

        try:
            image = load_image(
                filepath,
                draft_size=self._crops_draft_size(boxes),
                max_pixels=self.max_pixels,
                max_bytes=self.max_bytes,
                timeout=self.timeout,
            )
        except ImageDecodeError as e:
            failures.update((crop_key, e.reason) for crop_key, _, _ in boxes)
            return

        width, height = image.size
        for crop_key, box, _ in boxes:
            try:
                region = pixel_box(box, width, height, self.crop)
            except CropError as e:
                failures[crop_key] = e.reason
                continue

            self._preprocess(crop_key, image.crop(region), "crop", keys,
                             arrays, failures)

    def _valid_boxes(self, crops, failures):
        """``[(crop_key, box, relative region)]`` of the boxes that make a
        crop; the others fail with their reason."""
        boxes = []
        for crop_key, box in crops:
            try:
                boxes.append((crop_key, box, relative_box(box, self.crop)))
            except CropError as e:
                failures[crop_key] = e.reason

        return boxes

    def _crops_draft_size(self, boxes):
        """The draft size that leaves the smallest crop :attr:`draft_size`
        pixels on both sides of its region (so also on the shorter side of
        its square, which contains it).

        One size for width and height: the file's EXIF orientation, which
        may swap them, is unknown before decoding.
        """
        if self.draft_size is None:
            return None

        smallest = min(
            min(x1 - x0, y1 - y0) for _, _, (x0, y0, x1, y1) in boxes
        )
        # One pixel more: rounding the region to pixels may lose one
        wanted = self.draft_size + 1
        if smallest * _MAX_DRAFT_SIZE <= wanted:
            return None  # full size

        return math.ceil(wanted / smallest)


    def decode_video(self, item, threads=None):
        """Decodes one video item ``(key, filepath, frame_rate, sampling,
        part_size)`` (``sampling`` a ``FrameSampling.to_dict()``) front to
        back, yielding as it goes:

        -   ``("part", frame_numbers, timestamps, scenes, pixels,
            failures)`` per ``part_size`` sampled frames (``pixels`` as
            :meth:`decode`'s, None if every frame of the part failed;
            ``failures`` maps frame numbers that could not be
            preprocessed to a reason);
        -   then ``("end", summary, None)``, ``summary`` a dict with
            ``frames`` (sampled), ``frames_read``, ``declared_frames``,
            ``frame_rate`` and ``skipped``; or ``("end", None, reason)``
            for a video that yields no frame
            (:class:`~fiftyone_ai_search.errors.VideoDecodeError`), also
            after parts.

        What it holds is one part's pixels and the reader's one full-size
        frame (:class:`~fiftyone_ai_search.embedding.frames.FrameReader`).
        """
        # imported here: image runs (and their workers) never load OpenCV
        from .frames import FrameReader, FrameSampling

        _, filepath, frame_rate, sampling, part_size = item
        reader = FrameReader(
            filepath, FrameSampling.from_dict(sampling or {}),
            frame_rate=frame_rate, min_side=self.draft_size,
            max_pixels=self.max_pixels, timeout=self.timeout,
            threads=threads)
        torch_free = isinstance(self.preprocess, Recipe)
        numbers, times, scenes, arrays, failures = [], [], [], [], {}
        sampled = 0
        try:
            for frame in reader:
                sampled += 1
                with (contextlib.nullcontext() if torch_free
                      else one_torch_thread()):
                    kept = []
                    self._preprocess(frame.frame_number, frame.image, "frame",
                                     kept, arrays, failures)
                if kept:
                    numbers.append(frame.frame_number)
                    times.append(frame.timestamp)
                    scenes.append(frame.scene)
                if len(numbers) + len(failures) >= part_size:
                    yield ("part", numbers, times, scenes,
                           np.stack(arrays) if arrays else None, failures)
                    numbers, times, scenes, arrays, failures = (
                        [], [], [], [], {})
        except VideoDecodeError as e:
            yield ("end", None, e.reason)
            return
        if numbers or failures:
            yield ("part", numbers, times, scenes,
                   np.stack(arrays) if arrays else None, failures)
        info = reader.info
        yield ("end", {
            "frames": sampled,
            "frames_read": reader.frames_read,
            "declared_frames": info.declared_frames,
            "frame_rate": info.frame_rate,
            "skipped": reader.frames_skipped,
        }, None)


def one_torch_thread():
    """Runs the transform's tensor ops on one thread: they are tiny, and
    waking torch's thread pool for each costs more than it saves (50x on a
    busy machine)."""
    return fewer_torch_threads(1)


@contextlib.contextmanager
def fewer_torch_threads(count):
    """Runs the block with at most ``count`` torch threads. The thread count
    is restored right after, also when several threads use this at once."""
    import torch  # start-up: torch

    with _THREADS_LOCK:
        if _THREADS["users"] == 0:
            _THREADS["saved"] = torch.get_num_threads()

        if torch.get_num_threads() > count:
            torch.set_num_threads(count)

        _THREADS["users"] += 1

    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS["users"] -= 1
            if (
                _THREADS["users"] == 0
                and torch.get_num_threads() != _THREADS["saved"]
            ):
                torch.set_num_threads(_THREADS["saved"])


_THREADS = {"users": 0, "saved": 1}
_THREADS_LOCK = threading.Lock()
