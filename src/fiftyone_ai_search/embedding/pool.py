"""The worker processes that decode for the embedding pipeline
(:mod:`fiftyone_ai_search.embedding.pipeline`).

Workers are fresh interpreters (``subprocess``) rather than
``multiprocessing`` children (see the pipeline's docstring for why). Each
reads pickled messages on its stdin and answers on its stdout; idle workers
stay warm between runs (:data:`IDLE_SECONDS`), and are stopped at exit and
forgotten by a forked child.

A worker imports this module alone: the package is stubbed (see
:data:`_BOOTSTRAP`) so that the package's ``__init__`` (which imports the
whole SDK) does not run in it.
"""

import atexit
import collections
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import traceback
import warnings

from .decode import Decoder

logger = logging.getLogger(__name__)

#: batches handed to a worker at a time: one being decoded, one queued, so a
#: worker never waits for the calling thread
PREFETCH_PER_WORKER = 2

#: worker restarts allowed per run after crashes
MAX_RESTARTS = 16

#: parts of a video a worker may send beyond those the run has taken
#: (credits): one being embedded, one waiting, so a fast decoder never
#: fills the calling process with a long video's frames
PARTS_AHEAD = 2

#: marks a video item among a worker's assigned work
_VIDEO = "video"

#: idle workers stay warm this long for the next run
IDLE_SECONDS = 300.0

# Whether the calling thread decodes batches itself when none is waiting.
# Tests switch it off to make workers do all the decoding
_MAIN_THREAD_DECODES = True

_POLL_SECONDS = 0.5
_MAX_SPARES = max(1, os.cpu_count() or 1)
_STOP_SECONDS = 5.0


def _keys(item):
    """The keys an item's vectors or failures go under."""
    if len(item) == 2:
        return [item[0]]

    return [crop_key for crop_key, _ in item[2]]


def _failed(item, reason):
    return dict.fromkeys(_keys(item), reason)


def pooled(batches, decoder, num_workers, bottleneck):
    """Decodes batches with worker processes and the calling thread.

    Yields ``(keys, pixels, failures)`` in the order batches complete, and
    tells ``bottleneck`` (a :class:`_Bottleneck`) who decoded each.
    """
    pool = WorkerPool(decoder, num_workers)
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


def streamed(videos, decoder, num_workers, threads=None):
    """Decodes video items (see :meth:`Decoder.decode_video`) with worker
    processes, each video by one worker from its first frame to its last,
    the parts of several videos interleaved.

    Yields ``("part", key, frame_numbers, timestamps, scenes, pixels,
    failures)`` and ``("end", key, summary, reason)`` as they come (a
    video's own in order). A worker sends at most :data:`PARTS_AHEAD` parts
    beyond those taken: each part it sent is granted back when the caller
    asks for the next event, so what waits in this process is bounded
    whatever the length of the videos. A worker that crashes fails its
    video alone (``"decoder crashed ..."``); the videos are decoded in the
    calling thread only where no worker runs (``num_workers`` 0, or none
    could start), with ``threads`` decoding threads.
    """
    if num_workers < 1:
        yield from _stream_here(videos, decoder, threads)
        return
    pool = WorkerPool(decoder, num_workers)
    videos = iter(videos)
    exhausted = False
    # (worker, stream id) of the part the caller has: granted back next
    taken = None

    def next_video():
        nonlocal exhausted
        if pool.returned:
            return pool.returned.popleft()
        if exhausted:
            return None
        item = next(videos, None)
        exhausted = item is None
        return item

    try:
        while True:
            if taken is not None:
                worker, stream_id = taken
                worker.grant(stream_id)
                taken = None
            pool.poll(collections.deque(), block=False)
            while not pool.broken:
                worker = pool.free()
                if worker is None:
                    break
                item = next_video()
                if item is None:
                    break
                worker.stream(item, PARTS_AHEAD)
            if pool.parts:
                worker, message = pool.parts.popleft()
                if message[0] == "part":
                    taken = worker, message[1]
                yield message[:1] + message[2:]
                continue
            if pool.broken:
                item = next_video()
                if item is not None:
                    yield from _stream_here([item], decoder, threads)
                    continue
            if exhausted and not (pool.returned or pool.busy()):
                return
            pool.poll(collections.deque(), block=True)
    finally:
        pool.close()


def _stream_here(videos, decoder, threads):
    """:func:`streamed` in the calling thread, a video at a time."""
    for item in videos:
        for event in decoder.decode_video(item, threads=threads):
            yield (event[0], item[0], *event[1:])


class WorkerPool:
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
        self.parts = collections.deque()  # (worker, video part or end)
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

    def free(self):
        """A ready worker with nothing assigned (a video takes a worker
        from its first frame to its last), else None."""
        for worker in self._workers:
            if worker.ready and not worker.assigned:
                return worker
        return None

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
        elif kind in ("part", "end"):
            stream_id = message[1]
            if stream_id in worker.assigned:
                item = worker.assigned[stream_id][0]
                if kind == "end":
                    del worker.assigned[stream_id]
                # the video's key in place of the worker's stream id
                self.parts.append(
                    (worker, (kind, stream_id, item[0], *message[2:])))
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
                # (a video item is given back whole, to start over)
                (retries if isolated is True else self.returned).append(batch)

            self._check_broken()
            return

        code = worker.returncode()
        logger.warning("A decoding worker died (exit code %s)", code)

        if assigned and assigned[0][1] == _VIDEO:
            # the video it decoded fails alone; the frames it sent stay
            (item, _), *rest = assigned
            reason = f"decoder crashed (worker exit code {code})"
            self.parts.append((worker, ("end", None, item[0], None, reason)))
            self.returned.extend(video for video, _ in rest)
            assigned = []

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

    def stream(self, item, window):
        """Hands the worker a video item to decode as a stream of parts,
        ``window`` of them ahead of the grants (see :meth:`grant`)."""
        stream_id = self._next_id
        self._next_id += 1
        self.assigned[stream_id] = (item, _VIDEO)
        self._send(("video", stream_id, item, window))

    def grant(self, stream_id):
        """Lets the worker send one more part of its video."""
        self._send(("credit", stream_id))

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
    """The directory of the package (this module is in its ``embedding``
    folder)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
# does not run the package's __init__ (which imports the whole SDK); the
# embedding subpackage's own __init__ is light and runs as usual
_BOOTSTRAP = """
import sys, types
package = types.ModuleType("fiftyone_ai_search")
package.__path__ = [sys.argv[1]]
sys.modules["fiftyone_ai_search"] = package
from fiftyone_ai_search.embedding.pool import _worker_main
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
    # messages read while a video waited for its credits
    waiting = collections.deque()

    def next_message():
        return waiting.popleft() if waiting else _read_message(source)

    try:
        _, parent_path = _read_message(source)
        sys.path[:0] = [p for p in parent_path if p not in sys.path]

        # Reasons are reported per image; PIL's warnings would be noise
        warnings.simplefilter("ignore")
    except Exception:
        send(("error", traceback.format_exc(limit=5)))
        return

    while True:
        message = next_message()
        if message is None or message[0] == "stop":
            # Nothing to clean up, and tearing torch down takes seconds
            os._exit(0)

        if message[0] == "setup":
            try:
                decoder = Decoder(*pickle.loads(message[1]))
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
        elif message[0] == "video":
            _stream_video(decoder, message, send, source, waiting)
        elif message[0] == "credit":
            pass  # of a video already done
        else:
            _, batch_id, batch = message
            keys, pixels, failures = decoder.decode(batch)
            send(("done", batch_id, keys, pixels, failures))


def _stream_video(decoder, message, send, source, waiting):
    """Decodes a video in a worker, sending its parts as the run grants
    them: after ``window`` parts not yet granted it reads its messages
    until a grant comes (others wait in ``waiting``)."""
    _, stream_id, item, window = message
    sent = granted = 0
    # one decoding thread: the workers decode side by side
    for event in decoder.decode_video(item, threads=1):
        send((event[0], stream_id, *event[1:]))
        if event[0] != "part":
            continue
        sent += 1
        while sent - granted >= window:
            reply = _read_message(source)
            if reply is None or reply[0] == "stop":
                os._exit(0)
            if reply[0] == "credit" and reply[1] == stream_id:
                granted += 1
            else:
                waiting.append(reply)


_SPARES = _Spares()
