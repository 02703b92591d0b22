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
(:mod:`fiftyone_ai_search.crops`): an item ``(key, filepath, crops)`` is
decoded once, in the same workers, and each of its crops is preprocessed as
an image of its own.

Workers run open_clip's transform as a torch-free recipe
(:mod:`fiftyone_ai_search.preprocess`), so one starts in ~0.15 s with ~30 MB
(a transform without a recipe makes it import torch: ~4 s and ~0.8 GB).
Idle workers stay warm for the next run (:data:`IDLE_SECONDS`), short runs
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

import atexit
import collections
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import traceback
import weakref

import numpy as np

from .config import decode_timeout, max_image_bytes, max_image_pixels
from .crops import CropError, CropSettings, pixel_box, relative_box
from .images import ImageDecodeError, load_image
from .preprocess import Recipe, recipe_of

logger = logging.getLogger(__name__)

#: JPEGs are decoded (PIL ``draft``) at no less than this multiple of the
#: model's input size, which keeps embeddings within cosine ~0.9999 of full
#: decoding while decoding ~3x faster. For crops, the smallest crop of an
#: image gets this multiple on its shorter side
DRAFT_FACTOR = 2

# Crops that would need a larger draft size decode at full size (no image
# is that large, and PIL takes sizes as C ints)
_MAX_DRAFT_SIZE = 1 << 24

#: batches handed to a worker at a time: one being decoded, one queued, so a
#: worker never waits for the calling thread
PREFETCH_PER_WORKER = 2

#: runs of at most this many images (and at most one batch) are decoded in
#: the calling thread only: the first batch is decoded there anyway while
#: workers start, so one batch leaves nothing to overlap. From two batches
#: on a worker pays for its start (0.15 s): at 64 images, starting one made
#: the run 3% (ViT-B-32) to 12% (tiny CLIP) faster than no worker
MIN_ITEMS_FOR_WORKERS = 32

#: worker restarts allowed per run after crashes
MAX_RESTARTS = 16

#: idle workers stay warm this long for the next run
IDLE_SECONDS = 300.0

#: the model runs on fewer threads while the calling thread had to decode at
#: least :data:`DECODE_BOUND_MIN` of the last :data:`DECODE_WINDOW` batches
#: itself, with workers up and busy: decoding is then the bottleneck
DECODE_WINDOW = 8
DECODE_BOUND_MIN = 2

# Whether the calling thread decodes batches itself when none is waiting.
# Tests switch it off to make workers do all the decoding
_MAIN_THREAD_DECODES = True

_POLL_SECONDS = 0.5
_MAX_SPARES = max(1, os.cpu_count() or 1)
_STOP_SECONDS = 5.0


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
    (:func:`fiftyone_ai_search.crops.pixel_box`) is embedded under its
    ``crop_key`` (``key`` names no vector). A file that cannot be decoded
    fails all its crop keys with its reason; a bad box fails its own key
    with a :class:`fiftyone_ai_search.errors.CropError`'s reason. JPEGs are
    decoded at reduced size only as far as the smallest crop keeps
    :data:`DRAFT_FACTOR` x the model's input size. Crop keys must be unique
    within a run.

    Args:
        model: a :class:`fiftyone_ai_search.model.ClipModel`
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
        crop (None): a :class:`fiftyone_ai_search.crops.CropSettings` for
            crop items; None embeds whole images only

    Returns:
        an iterator of :class:`EmbeddedBatch`
    """
    if crop is not None and not isinstance(crop, CropSettings):
        raise ValueError(f"crop must be a CropSettings or None, got {crop!r}")

    if batch_size is None or num_workers is None:
        settings = _settings()
        batch_size = settings.batch_size if batch_size is None else batch_size
        if num_workers is None:
            num_workers = settings.num_workers

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")

    decoder = _Decoder.for_model(model, crop=crop)
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
        source = _pooled(batches, decoder, num_workers, bottleneck)
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


class _Decoder:
    """Decodes and preprocesses batches of ``(key, filepath)`` and
    ``(key, filepath, crops)``.

    Its arguments are all that a worker needs: :class:`_WorkerPool` sends
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
        :class:`fiftyone_ai_search.crops.CropSettings` if any."""
        return cls(
            recipe_of(model.preprocess) or model.preprocess,
            draft_size=DRAFT_FACTOR * model.image_size,
            max_pixels=max_image_pixels(),
            crop=crop,
            max_bytes=max_image_bytes(),
            timeout=decode_timeout(),
        )

    def state(self):
        """What a worker's decoder is built from: ``_Decoder(*state)``."""
        return (self.preprocess, self.draft_size, self.max_pixels, self.crop,
                self.max_bytes, self.timeout)

    def decode(self, batch):
        """Returns ``(keys, pixels, failures)``; ``pixels`` is a float32
        array of shape ``(len(keys), 3, H, W)``, or None if ``keys`` is
        empty."""
        keys, arrays, failures = [], [], {}
        torch_free = isinstance(self.preprocess, Recipe)
        with contextlib.nullcontext() if torch_free else _one_torch_thread():
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

    import torch

    return _fewer_torch_threads(max(1, torch.get_num_threads() - num_workers))


def _one_torch_thread():
    """Runs the transform's tensor ops on one thread: they are tiny, and
    waking torch's thread pool for each costs more than it saves (50x on a
    busy machine)."""
    return _fewer_torch_threads(1)


@contextlib.contextmanager
def _fewer_torch_threads(count):
    """Runs the block with at most ``count`` torch threads. The thread count
    is restored right after, also when several threads use this at once."""
    import torch

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


def _keys(item):
    """The keys an item's vectors or failures go under."""
    if len(item) == 2:
        return [item[0]]

    return [crop_key for crop_key, _ in item[2]]


def _failed(item, reason):
    return dict.fromkeys(_keys(item), reason)


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


def _pooled(batches, decoder, num_workers, bottleneck):
    """Decodes batches with worker processes and the calling thread.

    Yields ``(keys, pixels, failures)`` in the order batches complete, and
    tells ``bottleneck`` (a :class:`_Bottleneck`) who decoded each.
    """
    pool = _WorkerPool(decoder, num_workers)
    retries = collections.deque()  # single items of crashed batches
    exhausted = False
    delivered = False  # whether a worker's batch came back yet

    def next_batch(for_worker):
        nonlocal exhausted
        if pool.returned:
            return pool.returned.popleft(), False

        # Items that may crash a decoder only go to workers, one at a time
        if for_worker and retries:
            return retries.popleft(), True

        if exhausted:
            return None, False

        batch = next(batches, None)
        exhausted = batch is None
        return batch, False

    try:
        while True:
            pool.poll(retries, block=False)

            while not pool.broken:
                worker = pool.idlest()
                if worker is None:
                    break

                batch, isolated = next_batch(for_worker=True)
                if batch is None:
                    break

                worker.submit(batch, isolated)

            if pool.done:
                delivered = True
                bottleneck.note(False)
                yield pool.done.popleft()
                continue

            if pool.broken and retries:
                # No worker is left to isolate the item that crashed one:
                # fail the suspects rather than risk crashing this process
                (item,) = retries.popleft()
                yield [], None, _failed(item, "decoder crashed")
                continue

            if _MAIN_THREAD_DECODES or pool.broken:
                batch, _ = next_batch(for_worker=False)
                if batch is not None:
                    # Workers that delivered and have nothing ready again
                    # cannot keep up with the model (before their first
                    # delivery they had no time to: that says nothing)
                    if delivered and not pool.broken:
                        bottleneck.note(True)
                    yield decoder.decode(batch)
                    continue

            if exhausted and not (retries or pool.returned or pool.busy()):
                return

            pool.poll(retries, block=True)
    finally:
        pool.close()


class _WorkerPool:
    """The worker processes of one run.

    Workers left warm by an earlier run are reused; missing ones start in
    the background.
    """

    def __init__(self, decoder, num_workers):
        self._setup = pickle.dumps(
            decoder.state(), protocol=pickle.HIGHEST_PROTOCOL
        )
        self._events = queue.Queue()
        self._restarts = 0
        self.done = collections.deque()  # decoded batches
        self.returned = collections.deque()  # batches a worker gave back
        self.broken = False

        self._workers = _SPARES.take(num_workers)
        for worker in self._workers:
            worker.attach(self._setup, self._events)

        for _ in range(num_workers - len(self._workers)):
            self._start()

    def _start(self):
        try:
            worker = _Worker()
        except Exception as e:
            logger.warning("Cannot start a decoding worker: %s", e)
        else:
            worker.attach(self._setup, self._events)
            self._workers.append(worker)

        self._check_broken()

    def _check_broken(self):
        if not self._workers and not self.broken:
            logger.warning(
                "No decoding worker is running; decoding in this process"
            )

        self.broken = not self._workers

    def idlest(self):
        """Returns the ready worker with the least work if it can take more,
        else None."""
        ready = [w for w in self._workers if w.ready]
        if not ready:
            return None

        worker = min(ready, key=lambda w: len(w.assigned))
        return worker if len(worker.assigned) < PREFETCH_PER_WORKER else None

    def busy(self):
        return any(w.assigned for w in self._workers)

    def poll(self, retries, block):
        """Handles the workers' messages; if ``block``, waits a while for
        one first."""
        try:
            event = self._events.get(block=block, timeout=_POLL_SECONDS)
        except queue.Empty:
            return

        while True:
            worker, message = event
            if worker in self._workers:
                self._on_message(worker, message, retries)

            try:
                event = self._events.get(block=False)
            except queue.Empty:
                return

    def _on_message(self, worker, message, retries):
        kind = message[0]
        if kind == "done":
            _, batch_id, keys, pixels, failures = message
            if worker.assigned.pop(batch_id, None) is not None:
                self.done.append((keys, pixels, failures))
        elif kind == "exited":
            self._on_exit(worker, message[1], retries)

    def _on_exit(self, worker, error, retries):
        self._workers.remove(worker)
        worker.close(wait=False)
        assigned = list(worker.assigned.values())
        worker.assigned.clear()

        if error is not None:
            # It failed to start or to set up, before decoding anything: its
            # batches are safe to decode elsewhere, and a new worker would
            # fail the same way
            logger.warning("A decoding worker failed: %s", error)
            for batch, isolated in assigned:
                (retries if isolated else self.returned).append(batch)

            self._check_broken()
            return

        code = worker.returncode()
        logger.warning("A decoding worker died (exit code %s)", code)

        # A worker decodes its batches in order, so the first one not done
        # crashed it; the others had not started
        for i, (batch, isolated) in enumerate(assigned):
            if i > 0:
                (retries if isolated else self.returned).append(batch)
            elif isolated:
                (item,) = batch
                reason = f"decoder crashed (worker exit code {code})"
                self.done.append(([], None, _failed(item, reason)))
            else:
                # Which of its images crashed it is unknown: one at a time
                retries.extend([item] for item in batch)

        if self._restarts < MAX_RESTARTS:
            self._restarts += 1
            self._start()
        else:
            self._check_broken()

    def close(self):
        """Gives idle workers back for later runs and stops the others."""
        workers, self._workers = self._workers, []
        _SPARES.give_back(workers)


class _Spares:
    """Idle workers kept warm between runs, stopped after
    :data:`IDLE_SECONDS` without use and at exit."""

    def __init__(self):
        self._lock = threading.Lock()
        self._workers = []
        self._timer = None
        atexit.register(self.stop_all)
        if hasattr(os, "register_at_fork"):
            # A forked child must not talk to its parent's workers
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self):
        self._lock = threading.Lock()
        self._workers = []
        self._timer = None

    def take(self, count):
        with self._lock:
            self._workers = [w for w in self._workers if w.alive]
            taken = self._workers[:count]
            del self._workers[:count]
            return taken

    def give_back(self, workers):
        stopping = []
        with self._lock:
            for worker in workers:
                # A worker still decoding for an abandoned run would send
                # stale results to the next one
                idle = not worker.assigned and not worker.failed
                if worker.alive and idle and len(self._workers) < _MAX_SPARES:
                    worker.detach()
                    self._workers.append(worker)
                else:
                    stopping.append(worker)

            if self._timer is not None:
                self._timer.cancel()

            self._timer = threading.Timer(IDLE_SECONDS, self.stop_all)
            self._timer.daemon = True
            self._timer.start()

        _stop(stopping)

    def stop_all(self):
        with self._lock:
            workers, self._workers = self._workers, []
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        _stop(workers)


def _stop(workers):
    for worker in workers:
        # Busy or starting workers hold nothing worth waiting for
        worker.stop(kill=bool(worker.assigned) or not worker.ready)

    for worker in workers:
        worker.close(wait=True)


class _Worker:
    """One worker process and the thread that reads its messages.

    Attributes:
        ready: it has started and can take batches
        alive: its process runs
        failed: it exited with an error before decoding anything
        assigned: batch id -> ``(batch, isolated)`` not yet done
    """

    def __init__(self):
        self.ready = False
        self.alive = True
        self.failed = False
        self.assigned = {}
        self._next_id = 0
        self._error = None
        self._events = None
        self._events_lock = threading.Lock()
        self._process = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP, _package_dir()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_worker_env(),
            close_fds=True,
        )
        self._stdin = self._process.stdin
        self._reader = threading.Thread(
            target=self._read, name="ai-search-decoder", daemon=True
        )
        self._reader.start()
        self._send(("path", list(sys.path)))

    def attach(self, setup, events):
        """Sets the worker up for a run whose messages go to ``events``."""
        with self._events_lock:
            self._events = events

        self._send(("setup", setup))
        if not self.alive:
            events.put((self, ("exited", self._error)))

    def detach(self):
        with self._events_lock:
            self._events = None

    def submit(self, batch, isolated):
        batch_id = self._next_id
        self._next_id += 1
        self.assigned[batch_id] = (batch, isolated)
        self._send(("decode", batch_id, batch))

    def returncode(self):
        return self._process.poll()

    def stop(self, kill=False):
        if kill:
            self._process.kill()
        else:
            self._send(("stop",))

    def close(self, wait):
        try:
            self._stdin.close()
        except OSError:
            pass

        if wait:
            try:
                self._process.wait(timeout=_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

            self._reader.join(timeout=_STOP_SECONDS)

    def _send(self, message):
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self._stdin.write(len(data).to_bytes(8, "little") + data)
            self._stdin.flush()
        except (OSError, ValueError):
            pass  # it died: the reader reports it

    def _post(self, message):
        with self._events_lock:
            if self._events is not None:
                self._events.put((self, message))

    def _read(self):
        stream = self._process.stdout
        try:
            while True:
                message = _read_message(stream)
                if message is None:
                    break

                if message[0] == "ready":
                    self.ready = True
                    self._post(message)  # wakes a run waiting for it
                elif message[0] == "error":
                    self._error = message[1]
                    self.failed = True
                    break
                else:
                    self._post(message)
        except Exception as e:
            self._error = f"unreadable message: {e}"
            self.failed = True
        finally:
            stream.close()
            try:
                self._process.wait(timeout=_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

            self.alive = False
            self.ready = False
            self._post(("exited", self._error))


def _read_message(stream):
    header = stream.read(8)
    if len(header) < 8:
        return None

    size = int.from_bytes(header, "little")
    data = stream.read(size)
    if len(data) < size:
        return None

    return pickle.loads(data)


def _package_dir():
    return os.path.dirname(os.path.abspath(__file__))


def _worker_env():
    env = dict(os.environ)
    # One thread each: workers run side by side with the model, and torch's
    # OpenMP pool would only oversubscribe the cores
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = "1"

    # Workers never touch a GPU; initialising CUDA would cost memory
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


# Runs in the worker. The package is stubbed so that importing this module
# does not run the package's __init__ (which imports FiftyOne)
_BOOTSTRAP = """
import sys, types
package = types.ModuleType("fiftyone_ai_search")
package.__path__ = [sys.argv[1]]
sys.modules["fiftyone_ai_search"] = package
from fiftyone_ai_search.embedder import _worker_main
_worker_main()
"""


def _worker_main():
    """The main loop of a worker process."""
    # Ctrl-C reaches the whole process group; the caller stops workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    # Messages go through a private copy of stdout; anything a library
    # prints goes to stderr instead of corrupting them
    output = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    source = sys.stdin.buffer

    def send(message):
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        output.write(len(data).to_bytes(8, "little") + data)
        output.flush()

    decoder = None
    ready = False
    try:
        _, parent_path = _read_message(source)
        sys.path[:0] = [p for p in parent_path if p not in sys.path]

        import warnings

        # Reasons are reported per image; PIL's warnings would be noise
        warnings.simplefilter("ignore")
    except Exception:
        send(("error", traceback.format_exc(limit=5)))
        return

    while True:
        message = _read_message(source)
        if message is None or message[0] == "stop":
            # Nothing to clean up, and tearing torch down takes seconds
            os._exit(0)

        if message[0] == "setup":
            try:
                decoder = _Decoder(*pickle.loads(message[1]))
            except Exception:
                send(("error", traceback.format_exc(limit=5)))
                return

            # Ready once it can decode: unpickling a transform that has no
            # recipe imports torch, torchvision and open_clip (seconds).
            # Batches handed over before would wait that long, and the run
            # with them
            if not ready:
                ready = True
                send(("ready",))
        else:
            _, batch_id, batch = message
            keys, pixels, failures = decoder.decode(batch)
            send(("done", batch_id, keys, pixels, failures))


def _settings():
    from .config import get_settings

    # storage_dir is not needed here; passing one keeps get_settings() from
    # importing fiftyone to compute its default
    return get_settings(storage_dir=os.curdir)


_SPARES = _Spares()
