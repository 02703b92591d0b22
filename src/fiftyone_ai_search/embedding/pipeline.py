"""The embedding pipeline: image files in, L2-normalised vectors out, batch by
batch.

Decoding and open_clip's preprocessing run in worker processes while the
calling thread runs the model, so decoding overlaps the model. Workers are
fresh interpreters (``subprocess``) rather than ``multiprocessing`` children:

- nothing is forked, so a caller holding threads, locks or a MongoDB client
  (a FiftyOne process) is safe;
- unlike ``spawn`` / ``forkserver``, the caller's ``__main__`` is not
  re-imported in each worker, so an unguarded user script is not re-run;
- a worker that crashes (a decoder segfault) fails only the image that
  crashed it, found by retrying its batch one image at a time.

Objects are embedded from crops of their boxes
(:mod:`fiftyone_ai_search.embedding.crops`): an item ``(key, filepath, crops)`` is
decoded once, in the same workers, and each of its crops is preprocessed as
an image of its own.

Workers run open_clip's transform as a torch-free recipe
(:mod:`fiftyone_ai_search.embedding.preprocess`), so one starts in ~0.15 s with ~30 MB
(a transform without a recipe makes it import torch: ~4 s and ~0.8 GB).
Idle workers stay warm for the next run
(:data:`fiftyone_ai_search.embedding.pool.IDLE_SECONDS`), short runs
(:data:`MIN_ITEMS_FOR_WORKERS`) start none, and the calling thread decodes by
itself while workers start and whenever no decoded batch is waiting: no run
waits for workers, and a decode-bound model uses every core.

When decoding is the bottleneck (the calling thread keeps finding no decoded
batch waiting although workers are up), the workers are busy all the time
and a model running on all of torch's threads would compete with them for
the cores: each of its parallel steps then waits for a descheduled thread,
which made a small model 5-10x slower on 2 cores. The model then runs on the
cores the workers leave (``threads - num_workers``, at least one) until the
workers keep up again (:func:`_model_threads`).
"""

import collections
import contextlib
import dataclasses
import itertools
import logging
import os
import threading
import weakref

import numpy as np

from ..config import get_settings
from .crops import CropSettings
from .decode import Decoder, fewer_torch_threads
from .pool import pooled, streamed
from .sampling import FrameSampling

logger = logging.getLogger(__name__)

#: runs of at most this many images (and at most one batch) are decoded in
#: the calling thread only: the first batch is decoded there anyway while
#: workers start, so one batch leaves nothing to overlap. From two batches
#: on a worker pays for its start (0.15 s): at 64 images, starting one made
#: the run 3% (ViT-B-32) to 12% (tiny CLIP) faster than no worker
MIN_ITEMS_FOR_WORKERS = 32

#: the model runs on fewer threads while the calling thread had to decode at
#: least :data:`DECODE_BOUND_MIN` of the last :data:`DECODE_WINDOW` batches
#: itself, with workers up and busy: decoding is then the bottleneck
DECODE_WINDOW = 8
DECODE_BOUND_MIN = 2


@dataclasses.dataclass
class EmbeddedBatch:
    """The outcome of one batch.

    Attributes:
        keys: the keys embedded, in the order of ``vectors``
        vectors: a float32 array of shape ``(len(keys), dim)``, L2-normalised
        failures: a dict mapping keys that failed to a short reason
    """

    keys: list
    vectors: np.ndarray
    failures: dict

    def __len__(self):
        return len(self.keys) + len(self.failures)


def embed_images(
    model,
    items,
    batch_size=None,
    num_workers=None,
    progress=None,
    crop: CropSettings | None = None,
):
    """Embeds image files, or crops of them, yielding each batch as soon as
    it is ready.

    A file that cannot be decoded fails only its own item; its reason is in
    the batch's ``failures``. Batches in which every item failed are yielded
    too, with empty ``vectors``. Batches come in the order they are ready,
    which may differ from the order of ``items``.

    With ``crop``, an item may also be ``(key, filepath, crops)``, ``crops``
    a sequence of ``(crop_key, box)`` with ``box`` a relative
    ``[x, y, width, height]``: the image is decoded once and each box's crop
    (:func:`fiftyone_ai_search.embedding.crops.pixel_box`) is embedded under its
    ``crop_key`` (``key`` names no vector). A file that cannot be decoded
    fails all its crop keys with its reason; a bad box fails its own key
    with a :class:`fiftyone_ai_search.errors.CropError`'s reason. JPEGs are
    decoded at reduced size only as far as the smallest crop keeps
    :data:`fiftyone_ai_search.embedding.decode.DRAFT_FACTOR` x the model's
    input size. Crop keys must be unique
    within a run.

    Args:
        model: a :class:`fiftyone_ai_search.embedding.model.ClipModel`
        items: an iterable of ``(key, filepath)``, and with ``crop`` also of
            ``(key, filepath, crops)``
        batch_size (None): images (crops) per batch; defaults to the
            configured value. An image's crops stay in one batch: one with
            more crops than this makes a larger batch of its own, which the
            model still takes at most ``batch_size`` at a time
        num_workers (None): decoding worker processes; 0 decodes in the
            calling thread only. Defaults to the configured value
        progress (None): a callable called with the number of items (crops)
            done after each batch (e.g. ``tqdm.update``)
        crop (None): a :class:`fiftyone_ai_search.embedding.crops.CropSettings` for
            crop items; None embeds whole images only

    Returns:
        an iterator of :class:`EmbeddedBatch`
    """
    if crop is not None and not isinstance(crop, CropSettings):
        raise ValueError(f"crop must be a CropSettings or None, got {crop!r}")

    batch_size, num_workers = _batching(batch_size, num_workers)

    decoder = Decoder.for_model(model, crop=crop)
    if crop is None:
        items, enough = _enough_for_workers(items, batch_size)
        batches = _batched(items, batch_size)
    else:
        items, enough = _enough_crops_for_workers(items, batch_size)
        batches = _batched_crops(items, batch_size)

    if not enough:
        num_workers = 0

    # A separate generator, so that bad arguments raise at the call
    return _embed(model, decoder, batches, batch_size, num_workers, progress)


def _embed(model, decoder, batches, batch_size, num_workers, progress):
    bottleneck = _bottleneck_of(model)
    if num_workers > 0:
        source = pooled(batches, decoder, num_workers, bottleneck)
    else:
        source = (decoder.decode(batch) for batch in batches)

    try:
        for keys, pixels, failures in source:
            if keys:
                with _model_threads(model, bottleneck, num_workers):
                    vectors = _encode(model, pixels, batch_size)
            else:
                vectors = np.zeros((0, model.dim), dtype=np.float32)

            batch = EmbeddedBatch(keys, vectors, failures)
            if progress is not None:
                progress(len(batch))

            yield batch
    finally:
        # Stops the workers when the caller stops early
        source.close()


def _encode(model, pixels, batch_size):
    if len(pixels) <= batch_size:
        return model.encode_images(pixels)

    # An image's crops overshot the batch: the model's memory is sized for
    # batch_size
    return np.concatenate([
        model.encode_images(pixels[i:i + batch_size])
        for i in range(0, len(pixels), batch_size)
    ])


@dataclasses.dataclass
class VideoPart:
    """Embedded frames of one video: a part of its stream (see
    :func:`embed_videos`).

    Attributes:
        key: the video's key
        frame_numbers: the frames embedded, in the order of ``vectors``
            (1-based, increasing)
        timestamps: their times in seconds
        scenes: whether each was sampled for a scene change
        vectors: a float32 array ``(len(frame_numbers), dim)``,
            L2-normalised
        failures: frame numbers that could not be preprocessed, with a
            reason
    """

    key: str
    frame_numbers: list
    timestamps: list
    scenes: list
    vectors: np.ndarray
    failures: dict


@dataclasses.dataclass
class VideoEnd:
    """The end of a video's stream: every part of it came before.

    Attributes:
        key: the video's key
        summary: ``frames`` (sampled), ``frames_read``,
            ``declared_frames``, ``frame_rate`` and ``skipped``; None when
            the video failed
        reason: why the video failed (no frame could be read, or its
            decoder crashed), else None. Parts may have come before a
            failure
    """

    key: str
    summary: "dict | None"
    reason: "str | None"


def embed_videos(model, videos, sampling, batch_size=None, num_workers=None,
                 threads=None):
    """Embeds the sampled frames of videos, streaming: each video is
    decoded once, front to back, by one worker process, and its frames
    come back a part (``batch_size`` frames) at a time, so that neither
    the workers nor this process ever hold more than a few parts of a
    long video (:data:`fiftyone_ai_search.embedding.pool.PARTS_AHEAD` per
    worker), whatever its length or resolution.

    Yields, as they come, :class:`VideoPart` s and one :class:`VideoEnd`
    per video after its parts; the parts of several videos interleave
    (each video's own in order). A video that cannot be read, or whose
    decoder crashes, fails alone (its ``VideoEnd.reason``).

    Args:
        model: a :class:`fiftyone_ai_search.embedding.model.ClipModel`
        videos: an iterable of ``(key, filepath, frame_rate)``;
            ``frame_rate`` (None: the stream's) is the rate the sampling
            grid counts with (see
            :class:`~fiftyone_ai_search.embedding.frames.FrameReader`)
        sampling: a :class:`~fiftyone_ai_search.embedding.frames.FrameSampling`
        batch_size (None): frames per part; defaults to the configured value
        num_workers (None): decoding worker processes; 0 decodes in the
            calling thread (as does a run whose workers cannot start).
            Defaults to the configured value
        threads (None): FFmpeg's decoding threads where the calling thread
            decodes (workers decode on one thread each)

    Returns:
        an iterator of :class:`VideoPart` and :class:`VideoEnd`
    """
    if not isinstance(sampling, FrameSampling):
        raise ValueError(f"sampling must be a FrameSampling, got "
                         f"{sampling!r}")
    batch_size, num_workers = _batching(batch_size, num_workers)

    rule = sampling.to_dict()
    items = ((key, filepath, rate, rule, batch_size)
             for key, filepath, rate in videos)
    return _embed_videos(model, Decoder.for_model(model), items, batch_size,
                         num_workers, threads)


def _embed_videos(model, decoder, items, batch_size, num_workers, threads):
    source = streamed(items, decoder, num_workers, threads)
    try:
        for event in source:
            if event[0] == "end":
                _, key, summary, reason = event
                yield VideoEnd(key, summary, reason)
                continue
            _, key, numbers, times, scenes, pixels, failures = event
            if numbers:
                vectors = _encode(model, pixels, batch_size)
            else:
                vectors = np.zeros((0, model.dim), dtype=np.float32)
            yield VideoPart(key, numbers, times, scenes, vectors, failures)
    finally:
        # stops the workers of videos not finished when the caller stops
        source.close()


class _Bottleneck:
    """Tells whether decoding holds a model's runs back: the calling thread
    had to decode recent batches itself although workers were up (and so
    busy)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._recent = collections.deque(maxlen=DECODE_WINDOW)

    def note(self, decoded_here):
        with self._lock:
            self._recent.append(bool(decoded_here))

    @property
    def decoding(self):
        with self._lock:
            return sum(self._recent) >= DECODE_BOUND_MIN


# Per model: a run learns its bottleneck only after a few batches, and the
# last run's is the best first guess for the next (the refresher's short
# incremental runs, one after another)
_BOTTLENECKS = weakref.WeakKeyDictionary()
_BOTTLENECKS_LOCK = threading.Lock()


def _bottleneck_of(model):
    with _BOTTLENECKS_LOCK:
        try:
            return _BOTTLENECKS.setdefault(model, _Bottleneck())
        except TypeError:  # not weakly referenceable
            return _Bottleneck()


def _model_threads(model, bottleneck, num_workers):
    """While decoding is the bottleneck, runs the model on the CPU threads
    that busy workers leave free; otherwise changes nothing."""
    device = getattr(getattr(model, "device", None), "type", "cpu")
    if num_workers < 1 or device != "cpu" or not bottleneck.decoding:
        return contextlib.nullcontext()

    import torch  # start-up: torch

    return fewer_torch_threads(max(1, torch.get_num_threads() - num_workers))


def _batched(items, batch_size):
    batch = []
    for key, filepath in items:
        batch.append((key, filepath))
        if len(batch) >= batch_size:
            yield batch
            batch = []

    if batch:
        yield batch


def _batched_crops(items, batch_size):
    """Batches of at most ``batch_size`` crops (whole-image items count
    one), an image's crops all in one batch: a batch is closed before an
    image whose crops would overflow it (a batch that overflowed took two
    model calls, the second of a few crops), and an image with more crops
    than ``batch_size`` makes a batch of its own."""
    batch, size = [], 0
    for item in items:
        count = _size(item)
        if size and size + count > batch_size:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += count
        if size >= batch_size:
            yield batch
            batch, size = [], 0

    if size:  # items without crops alone make no batch
        yield batch


def _crop_item(item):
    """An item of a crop run as a tuple, its crops as a tuple of pairs:
    picklable, and malformed items raise here rather than in a worker."""
    if len(item) == 2:
        key, filepath = item
        return key, filepath

    key, filepath, crops = item
    return key, filepath, tuple((crop_key, box) for crop_key, box in crops)


def _size(item):
    return 1 if len(item) == 2 else len(item[2])


def _enough_crops_for_workers(items, batch_size):
    """:func:`_enough_for_workers` for a crop run, counting crops; returns
    the items as :func:`_crop_item` makes them."""
    threshold = max(MIN_ITEMS_FOR_WORKERS, batch_size)
    items = map(_crop_item, items)
    head, size = [], 0
    for item in items:
        head.append(item)
        size += _size(item)
        if size > threshold:
            break

    return itertools.chain(head, items), size > threshold


def _enough_for_workers(items, batch_size):
    """Returns ``(items, whether the run is long enough for workers)``."""
    threshold = max(MIN_ITEMS_FOR_WORKERS, batch_size)
    try:
        return items, len(items) > threshold
    except TypeError:
        pass

    # An iterator: look ahead, then chain what was read back in front
    items = iter(items)
    head = list(itertools.islice(items, threshold + 1))
    return itertools.chain(head, items), len(head) > threshold


def _settings():
    # storage_dir is not needed here; passing one keeps get_settings() from
    # importing fiftyone to compute its default
    return get_settings(storage_dir=os.curdir)


def _batching(batch_size, num_workers):
    """``(batch_size, num_workers)``, each from the settings where None,
    checked."""
    if batch_size is None or num_workers is None:
        settings = _settings()
        batch_size = settings.batch_size if batch_size is None else batch_size
        if num_workers is None:
            num_workers = settings.num_workers
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    return batch_size, num_workers
