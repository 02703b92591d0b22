"""The embedded index: a Qdrant Edge shard on local disk.

Layout of ``<root_dir>/<name>/``:

- ``shard/``: the Qdrant Edge shard (one unnamed dense vector, cosine);
- ``index.json``: the :class:`IndexInfo`; written last on creation and
  removed first on drop, so its presence means a complete index;
- ``cells.json``, ``cells-<generation>.npy``: the cells of the approximate
  search, once learned (:mod:`fiftyone_ai_search.store.cells`);
- ``.lock``, ``.gate``: lock files, see :mod:`fiftyone_ai_search.store.locks`.

Concurrency: a shard can be open in one process at a time, so it is opened
for each operation (or each :meth:`EdgeStore.session`) and closed right after,
under a thread lock and a process lock. Another process waits for its turn
for at most ``lock_timeout`` seconds, then gets :class:`IndexBusyError`. Long
operations (big upserts, reading all vectors) work in chunks and hand the
index over between two chunks when someone waits, so that searches stay
possible while a long computation commits; a session kept open is let go at
its end when another process waits (a maintenance pass's rounds follow one
another at once). Changes are flushed before each close.

Opening a shard: Qdrant reads what it keeps in memory (the 4-bit copy, 256 MB
at 1M 512-d points; the id tracker; the payload indexes) through memory
maps, page fault after page fault, and then drops those files from the page
cache. So an opening first reads those files in sequence, but for what the
page cache holds already, and after it reads them back into the page cache
in the background for the next process (:func:`_read_ahead`,
:func:`_rewarm`). Measured (``bench/bench_concurrent.py``): ~0.1-0.5 s at
20k-100k points; at 1M, a fresh process's first search costs 1.2-1.3 s of
CPU (1.85-1.96 s without the read-ahead), most of it Qdrant building its
in-memory copies, which on a busy machine stretches to several seconds of
wall time. What a new process pays depends on who holds the index:

- another process holds it (a worker syncing; the App within
  :data:`KEEP_OPEN` seconds of its last search): that process answers
  (below), and the new process opens nothing (~5-50 ms a search);
- nobody does (a notebook started cold, the App's first search after it
  was idle): the first search opens the shard, as above.

Alternatives measured (with int8 codes then) and not taken: the copy on
disk (``Memory.Cold``) opens in ~1 s at 1M but searches read it from disk
(711 ms first, 120 ms median); kept in the page cache instead of the heap
(``Memory.Cached``, which needs a re-quantization of existing shards, ~1
min at 1M), 100k points opened with ~30% less CPU and searched as fast, a
smaller gain than the read-ahead, for a change of every index's
configuration.

While it holds the index, a process answers the other processes' searches,
counts and small reads (:mod:`~fiftyone_ai_search.store.serve`): a search
from elsewhere waits for the holder's turn under way (one chunk, one round of
upkeep, one commit: the thread lock passes to the answering thread between
two chunks, the shard staying open). A compaction runs on a copy of the
shard in a child process while the holder answers on the original, then
the copy is swapped in (:mod:`~fiftyone_ai_search.store.compaction`),
its child answering the searches while the holder reopens. Where that cannot be (a small shard,
too little disk for the copy) it runs in place, answering nobody until
its end (the engine holds the GIL), so it is then put off while another
process searches (:data:`COMPACT_QUIET_S`), and a later pass does it. Inside a
session (a large import's batches, one session for all) the holder lends
its shard to the server between two of the session's operations and two
chunks of one: the search
is answered on it, without the thread lock, and may see a part of the
session's writes (a chunk is written whole); it changes nothing, so what
the session reads and writes stays its own. So a search beside a sync
never pays an opening, and the holder is not interrupted. While an answer
is computed, the upkeep's own work outside the engine (its reads of the
vectors, its products, its reads ahead) waits at its next step, a bounded
while (:data:`GIVE_WAY_MAX_S`), rather than share the cores with it.

A session's caller comes back (the App re-runs a search as its limit or
threshold changes; a sync reads and commits page after page; the upkeep
works round after round), so :meth:`EdgeStore.session` keeps the shard open
after it, for :data:`KEEP_OPEN` seconds of idleness (a single operation
outside a session closes it at its end, unless it is kept open already):
a watcher thread closes it as soon as another process asks for the index
(within :data:`KEEP_OPEN_POLL` seconds), when it has been idle that long, on
:meth:`EdgeStore.close`, or at exit.
A kept shard is flushed once idle (:data:`FLUSH_IDLE_S`), at its closing,
before a compaction, or past a bound (:data:`FLUSH_MAX_S`,
:data:`FLUSH_MAX_POINTS`), not at each session's end: a flush holds the GIL,
and what is not flushed is in the engine's write-ahead log, which the next
opening replays where the holder was killed. A process that gives the
index up keeps what the page cache holds of the shard's files there
through its closing (Qdrant drops them; see page_cache.py): the next holder
does not read them back from disk.
"""

import atexit
import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time

import qdrant_edge as qe

import numpy as np

from ..errors import (DiskFullError, IndexBusyError, IndexDamagedError,
                      IndexExistsError)
from . import builder_reads
from . import cells as cl
from . import compaction as cp
from . import locks
from . import page_cache
from . import priority
from . import ranks as rk
from . import recent_ring as rr
from . import serve as sv
from . import upkeep
from .segment_vectors import SegmentVectors
from .base import (
    IndexInfo,
    VectorStore,
    _record_vector,
    check_dim,
    records_to_matrix,
    rows_of_pages,
)
from .locks import ABANDON_POLL, FairLock, ProcessLock, backoff

logger = logging.getLogger(__name__)

SHARD_DIR = "shard"
INFO_FILE = "index.json"
#: the cells of the approximate search (see cells.py): ``cells.json`` names
#: the generation, whose centres are in ``cells-<generation>.npy``
CELLS_FILE = "cells.json"

#: points per update / retrieve call; between two chunks the index is handed
#: over to anyone waiting (a chunk of 512-d points takes ~0.1 s)
CHUNK = 2048

#: points per update call of a write: another process's search waits for
#: the one under way (an update holds the GIL and the shard). 512 cost no
#: more CPU than 2,048 (less: 0.53 against 0.72 s for 16k 512-d points),
#: and at 1M points under load a chunk of 2,048 took ~0.4-1 s
WRITE_CHUNK = 512

#: the same while another process searches through this one (see
#: :data:`COMPACT_QUIET_S`): its search waits for the chunk's update under
#: way (not its points' conversion, made with the shard lent),
#: which at 1M points made the p95 of searches beside a large write twice
#: their solo p95 (see bench/README.md, issue 29); smaller chunks, only
#: then, as each costs a call
WRITE_CHUNK_BESIDE = 128

#: points per scroll page when only ids are read
ID_PAGE = 10000

#: the longest (seconds) the upkeep's work outside the engine (its reads of
#: the vectors, its products, its reads ahead) waits, at one of its steps,
#: for the answers this process computes for another's searches (see
#: ``EdgeStore._give_way``): an answer is ~10-50 ms at 1M points, and a
#: stream of them must not stop the pass
GIVE_WAY_MAX_S = 0.5

#: how long (seconds) a search keeps asking where the index is held but
#: nobody answers for it, before waiting for its turn on the index: the
#: holder may be taking over from another process (the turnstile, then its
#: socket), or be of a version that does not answer
ASK_GRACE = 2.0

#: the most points whose vectors or payloads another process reads through
#: the holder of the index (see serve.py) rather than by taking the index
SERVE_MAX_POINTS = 20_000

#: a long operation hands the index over to a waiting thread or process
#: once it held it this long (seconds); each hand-over costs a close and an
#: opening, so slices much shorter than that would mostly reopen
HOLD_SLICE = 0.5

#: exact searches scored together by :meth:`EdgeStore._exact_neighbour_vectors`
#: (the audit's): larger batches gain little, and hold the index longer
QUERY_BATCH = 32

#: the same while another process searches through this one (see
#: :data:`COMPACT_QUIET_S`): a batch is one engine call that holds the GIL,
#: so a search that comes waits for the batch under way (~1.5 s at 1M
#: points for 32). Smaller batches cost more in all (one by one took 2.4x
#: as long at 200k points), so only while someone searches
QUERY_BATCH_BESIDE = 2

#: seconds of idleness after which a shard kept open (see
#: ``EdgeStore.session``) is closed; at 100k 512-d points a
#: reopening costs ~0.3-0.5 s, more than a whole search
KEEP_OPEN = 30.0

#: how often (seconds) a kept-open shard checks whether another process waits
#: for it, and so the most that process waits for a kept shard
KEEP_OPEN_POLL = 0.02

#: a shard kept open (see ``EdgeStore.session``) is not flushed at each
#: session's end: Qdrant Edge's ``flush`` holds the GIL (~0.3 s after
#: 100,000 points, more than a search: the server answers nobody
#: meanwhile), and a process killed with unflushed changes loses none of
#: them (its write-ahead log is replayed at the next opening: measured 30k
#: points written unflushed, ``kill -9``, all 30k there, ~1.0 s of CPU to
#: replay them). So it is flushed once the shard has been idle (no
#: operation of this process, no request of another) for this many
#: seconds, at its closing, before a compaction, and where one of the
#: bounds below is passed
FLUSH_IDLE_S = 5.0

#: the longest a kept-open shard stays unflushed while in use (seconds
#: since its first unflushed change): a session's end past it flushes
FLUSH_MAX_S = 120.0

#: the most points written unflushed: a session's end past it flushes. It
#: bounds what a holder killed with ``kill -9`` leaves the next opening to
#: replay (~35 us of CPU a point: ~7 s for 200,000)
FLUSH_MAX_POINTS = 200_000

#: a compaction in place (where none beside can be, see
#: :data:`COMPACT_BESIDE`) is put off while another process searches the
#: index through this one: one that asked within this many seconds. Qdrant Edge's
#: ``optimize`` holds the GIL from its start to its end (qdrant-edge-py
#: 0.9: a thread of the same process ran nothing for the 2.3 s of one at
#: 110k points), so the server answers nothing meanwhile, and a search that
#: comes waits for all of it (2.3 s at 1M points after 100,000 new ones;
#: ~40 s for a first compaction). The App searches in bursts: this is its
#: shard's own idle time (:data:`KEEP_OPEN`)
COMPACT_QUIET_S = 30.0

#: the longest a compaction is put off (seconds since it was first owed):
#: past it, the next pass compacts whoever searches (the points of an
#: uncompacted index are scanned 2-3x slower, see upkeep.py)
COMPACT_DEFER_MAX_S = 3600.0

#: present while a compaction is owed (put off, or under way beside the
#: holder): ``{"since": epoch}``
COMPACT_FILE = "compact.due"

#: the points written (upserted, deleted, or given a payload: the engine
#: moves those to its appendable segment) since the last compaction, by
#: every process: ``{"points": n}``. Unlike Qdrant's server, Qdrant Edge
#: never rewrites its segments by itself: those points are scanned in full
#: precision, outside the cells' order, until a compaction (at 1M points,
#: 100,000 of them made a search 1.7x slower: bench/README.md), which the
#: upkeep runs once they are many (upkeep.COMPACT_SHARE)
WRITTEN_FILE = "written.json"

#: compact a copy of the shard in a child process while the holder answers
#: searches on the original, then swap it in (see compaction.py), where
#: the disk has room for it; else in place, put off while others search
COMPACT_BESIDE = True

#: shards smaller than this (bytes on disk, ~25k 512-d points) are
#: compacted in place: their optimize is short, and the copy and the
#: child's start (~0.2 s) would be most of the work
COMPACT_BESIDE_MIN_BYTES = 64 * 2**20

#: called with each step of a compaction beside the holder ("copied",
#: "optimizing", "optimized", "retired", "swapped", "removed"): tests stop
#: or kill the process there
_compact_hook = None


#: free space a write must leave where the indexes live (bytes): what
#: Qdrant Edge may map beyond the points themselves (a new WAL segment,
#: segment growth)
RESERVE_BYTES = 64 * 2**20

#: about what a point costs on disk, in its write-ahead log and its segment
#: (the vector as float32 twice and quantized, its payload): bytes per
#: dimension, and per point
BYTES_PER_DIM = 16
BYTES_PER_POINT = 2048


def _mib(num_bytes):
    return f"{num_bytes / 2**20:.1f} MiB"


class _Shared:
    """What the threads of one process share about one index directory."""

    def __init__(self, dirpath):
        self.dirpath = dirpath
        self.shard_path = os.path.join(dirpath, SHARD_DIR)
        self.thread_lock = FairLock()
        self.process_lock = ProcessLock(dirpath)
        self.held_since = 0.0
        self.shard = None
        self.info = None
        #: unflushed changes: since when (monotonic; see ``dirty``), and
        #: how many points were written (see :data:`FLUSH_MAX_POINTS`)
        self.dirty_since = None
        self.unflushed_points = 0
        #: points written here and not yet added to WRITTEN_FILE (at the
        #: next flush or closing)
        self.written = 0
        #: writes (upserts, deletes) of vectors through this process, a
        #: count that only grows: the files of a kept-open shard show them
        #: only once flushed (see EdgeStore._original_rows)
        self.vector_writes = 0
        #: when this process last used the index (the end of a hold,
        #: monotonic): a kept shard is flushed once idle (FLUSH_IDLE_S)
        self.used_at = 0.0
        #: a session asked to keep the shard open after it
        self.keep_requested = False
        #: while the shard is kept open: when to close it (monotonic time)
        self.keep_until = None
        #: the watcher thread of a kept-open shard
        self.keeper = None
        #: while this process holds the index: the server answering the
        #: other processes' searches (see serve.py)
        self.server = None
        #: the shard, which the server may search without the thread lock:
        #: during a compaction (Qdrant searches while it optimizes), and
        #: while a session lends it (see ``lent``)
        self.side_shard = None
        self.side_readers = 0
        self.side_cond = threading.Condition()
        #: the outermost hold is a session: between two of its operations
        #: (its caller's code) and two chunks of one, it lends its shard to
        #: the server (``side_shard``), which would otherwise wait for the
        #: thread lock until the session's end (see ``EdgeStore._lend``)
        self.lends = False
        #: the shard is lent now (``side_shard``), until the session's
        #: thread takes it back
        self.lent = False
        #: the server's requests that came for the thread lock, and those
        #: that stopped waiting for it (answered, on the lock or on a
        #: shard lent): a session taking its shard back lets those that
        #: waited when it looked be answered first (guarded by side_cond)
        self.serve_arrived = 0
        self.serve_left = 0
        #: when another process's request last came to the server
        #: (monotonic): a compaction is put off while they come
        self.asked_at = None
        #: a compaction beside (see compaction.py) is under way here: its
        #: marker is its own, not a killed one's to recover at an opening
        self.compacting = False
        #: the thread reading the open shard's files back after its
        #: opening (_rewarm), if any
        self.rewarm = None
        #: the compaction's child answers on this process's address while
        #: it reopens (see compaction.py): a request that waits here for
        #: the thread lock is sent to ask again
        self.relaying = False
        #: the server's answers being computed now (guarded by side_cond):
        #: the upkeep's own work waits for them (EdgeStore._give_way)
        self.answering = 0

    @property
    def dirty(self):
        """Whether the shard has changes not flushed yet."""
        return self.dirty_since is not None

    @dirty.setter
    def dirty(self, value):
        if not value:
            self.dirty_since = None
            self.unflushed_points = 0
        elif self.dirty_since is None:
            self.dirty_since = time.monotonic()

    def flush_due(self, now):
        """Whether a session's end must flush the kept shard (a bound
        passed: :data:`FLUSH_MAX_S`, :data:`FLUSH_MAX_POINTS`)."""
        return self.dirty and (now - self.dirty_since >= FLUSH_MAX_S
                               or self.unflushed_points >= FLUSH_MAX_POINTS)

    def idle_since(self):
        """When the index was last used here or asked for from elsewhere
        (monotonic)."""
        return max(self.used_at, self.asked_at or 0.0)


#: what this process did with its indexes (all of them), for benchmarks and
#: tests: shards opened; searches and counts answered for another process
#: (``served``) and by another process (``asked``); the most turns of the
#: holder's thread lock an asked search waited for (``turns_waited``: a turn
#: is one chunk of a write, one round of upkeep, one operation); searches
#: answered during a compaction (``side_reads``), or on a shard lent: by a
#: session between two of its operations or chunks, or by a write while it
#: made a chunk's points (``lent_reads``; of which the latter:
#: ``lent_while_preparing``); the steps
#: of an operation that keeps the index (chunks of a write in a session,
#: groups of an upkeep round) between which waiting reads were let in
#: (``lent_turns``); bytes of the shards' files
#: read ahead of their openings (``read_ahead``, see :func:`_read_ahead`), of
#: which not in the page cache and so read (``read_ahead_read``);
#: compactions run (``compactions``), of which on a copy beside the
#: holder (``compactions_beside``, the last one's steps in seconds in
#: ``last_compaction``), and put off while another process searched
#: (``compactions_put_off``, see :data:`COMPACT_QUIET_S`); reads
#: of a thread answered beside another thread's session
#: (``beside_a_session``, also counted in ``served``); flushes of a kept
#: shard (``flushes``: once idle or past a bound, see :data:`FLUSH_IDLE_S`);
#: steps of the upkeep that waited for an answer being computed
#: (``gave_way``, see :data:`GIVE_WAY_MAX_S`); bytes of a shard's files
#: kept in the page cache through its closing at a hand-over
#: (``kept_cached``, see page_cache.py); compactions whose reads of the
#: original vectors were made one page a fault (``optimized_at_random``,
#: see :func:`_optimize_reads`; in this process: not a child's)
stats = {"opens": 0, "served": 0, "asked": 0, "turns_waited": 0,
         "side_reads": 0, "lent_reads": 0, "lent_turns": 0, "releases": 0,
         "not_served": None, "read_ahead": 0, "read_ahead_read": 0,
         "compactions": 0, "compactions_put_off": 0,
         "compactions_beside": 0, "last_compaction": None,
         "beside_a_session": 0, "flushes": 0, "gave_way": 0,
         "kept_cached": 0, "optimized_at_random": 0,
         "builder_read_ahead": 0,
         "lent_while_preparing": 0}


_registry = {}
_registry_lock = threading.Lock()

#: what a forked child inherited and must never destroy (see below)
_inherited = []


def _shared_for(dirpath):
    with _registry_lock:
        shared = _registry.get(dirpath)
        if shared is None:
            shared = _registry[dirpath] = _Shared(dirpath)
        return shared


@contextlib.contextmanager
def _answering(shared):
    """While the server computes an answer (see ``EdgeStore._give_way``)."""
    with shared.side_cond:
        shared.answering += 1
    try:
        yield
    finally:
        with shared.side_cond:
            shared.answering -= 1
            shared.side_cond.notify_all()


def _after_fork_in_child():
    """Makes a forked child (e.g. a worker pool) harmless to the index.

    The child gets copies of its parent's open shards, lock files and thread
    locks. The copied descriptors would keep the parent's locks alive after
    the parent closes the shard, locking everyone out until the child exits:
    close them. The copied shard objects are kept alive, never closed: their
    threads do not exist in the child.
    """
    global _registry, _registry_lock
    old, _registry, _registry_lock = _registry, {}, threading.Lock()
    open_paths = [s.shard_path for s in old.values() if s.shard is not None]
    if open_paths:
        _inherited.append(old)
        _close_descriptors_under(open_paths)


def _close_descriptors_under(paths):
    def under(fd):
        # Linux; elsewhere readlink fails and nothing is closed
        target = os.readlink(f"/proc/self/fd/{fd}")
        return any(target == p or target.startswith(p + os.sep)
                   for p in paths)

    locks.close_descriptors(under)


os.register_at_fork(after_in_child=_after_fork_in_child)


class EdgeStore(VectorStore):
    """An index in an embedded Qdrant Edge shard.

    Thread-safe, and usable by several processes at once (they take turns).

    Args:
        name: the index name (letters, digits, ``_``, ``-``)
        root_dir: the directory holding all embedded indexes
        lock_timeout (60.0): the most seconds to wait for an index that
            another thread or process holds
    """

    backend = "edge"

    def __init__(self, name, root_dir, lock_timeout=60.0):
        super().__init__(name)
        self.root_dir = os.path.abspath(os.path.expanduser(root_dir))
        self.path = os.path.join(self.root_dir, name)
        self.lock_timeout = float(lock_timeout)
        #: during a maintenance pass over every point: the reads of its
        #: original vectors ahead of its scans (see _read_vectors_ahead)
        self._ahead = None
        #: during such a pass: where the original vectors lie in the
        #: shard's files, read from there (see _original_rows), or None
        self._direct = None
        #: this process's writes of vectors when ``_direct`` was read
        #: (``_Shared.vector_writes``)
        self._direct_writes = 0
        #: during a pass that learns the cells: the points of a stretch of
        #: the files, and how many the pass has given their cell so far
        #: (see _payloads)
        self._stretch_rows = None
        self._given = 0

    def __repr__(self):
        return f"EdgeStore(name={self.name!r}, path={self.path!r})"

    @property
    def _shard_path(self):
        return os.path.join(self.path, SHARD_DIR)

    @property
    def _info_path(self):
        return os.path.join(self.path, INFO_FILE)

    # -- locking -------------------------------------------------------------

    @contextlib.contextmanager
    def session(self):
        """Holds the index for a block of operations (one opening), and
        keeps the shard open after it for the next sessions of this
        process, until another process asks for the index or it stays
        unused for :data:`KEEP_OPEN` seconds (see the module's doc): this
        store's own decision, as a reopening costs more than a search.

        Where another process holds the index, the session's searches and
        counts are answered by that process (see serve.py), and the index
        is taken only for an operation that holder does not answer.

        While a session holds the index, other processes' reads are
        answered between two of its operations (during its caller's code)
        and between two chunks of one: they may see a part of the
        session's writes (each chunk is written whole), never a change of
        their own. The searches and counts of other threads of this process
        are answered the same way; their other operations, and other
        processes' writes, wait for the session's end.
        """
        with self._locked(keep_open=True, ask=True, lend=True):
            yield self

    @contextlib.contextmanager
    def _round(self):
        # the index itself, taken from whoever holds it: a session's hold
        # goes without it where another process holds the index (its
        # reads are asked of that process), and that process's writes
        # then came between a round's reads and its writes of the cells,
        # which carry no guard (see _set_field)
        with self._locked(keep_open=True, lend=True):
            yield self

    @contextlib.contextmanager
    def _held(self):
        # let go at its end, as a single operation's hold is
        with self._locked(ask=True):
            yield self

    @contextlib.contextmanager
    def _locked(self, keep_open=False, ask=False, lend=False):
        """Holds the index (re-entrant); on the outermost exit, flushes and
        closes the shard (or keeps it open, see :meth:`session`) and releases
        the locks. ``ask``: where another process holds the index, hold only
        the thread lock (the caller asks the holder, see :meth:`_ask`).
        ``lend``: the outermost hold lends its shard to the server between
        its inner holds (a session, see :meth:`_lend`)."""
        shared = _shared_for(self.path)
        deadline = time.monotonic() + self.lock_timeout
        self._acquire(shared, deadline, ask=ask)
        lock = shared.thread_lock
        if lock.depth == 1:
            shared.lends = lend
        else:
            # an operation inside a hold: the shard is its own again
            self._take_back(shared)
        if keep_open:
            shared.keep_requested = True
        try:
            yield shared
        finally:
            if lock.is_owned():
                try:
                    if lock.depth == 1:
                        self._take_back(shared)
                        shared.lends = False
                        self._end_hold(shared)
                    elif lock.depth == 2 and shared.lends:
                        # back in the session's caller's code
                        self._lend(shared)
                finally:
                    lock.release()

    def _acquire(self, shared, deadline, ask=False):
        if not shared.thread_lock.acquire(
            timeout=max(0.0, deadline - time.monotonic())
        ):
            raise self._busy_error("another thread of this process")
        if shared.process_lock.held:
            return  # re-entered, or the shard is kept open
        try:
            if ask and sv.SUPPORTED:
                # free: take it; else leave the holder be (no turnstile)
                if shared.process_lock.try_acquire(create=True):
                    self._now_holding(shared)
                return
            # create: the directory may not exist yet (a new index)
            ok = shared.process_lock.acquire(deadline, create=True)
        except (FileExistsError, NotADirectoryError):
            shared.thread_lock.release()
            raise self._damaged("it is a file, not a directory") from None
        except BaseException:
            shared.thread_lock.release()
            raise
        if not ok:
            shared.thread_lock.release()
            raise self._busy_error("another process")
        self._now_holding(shared)

    def _take(self, shared, deadline):
        """Takes the process lock inside a hold of the thread lock that
        went without it (``ask``), waiting in turn."""
        try:
            ok = shared.process_lock.acquire(deadline, create=True)
        except (FileExistsError, NotADirectoryError):
            raise self._damaged("it is a file, not a directory") from None
        if not ok:
            raise self._busy_error("another process")
        self._now_holding(shared)

    def _now_holding(self, shared):
        """This process just took the index: it answers the others' searches
        while it holds it."""
        shared.held_since = time.monotonic()
        if shared.server is None:
            shared.server = sv.Server(
                self.path, lambda request: self._serve(shared, request),
                name=f"ai-search-serve-{self.name}")

    def _ask(self, shared, request):
        """Has the process holding the index answer ``request``, unless
        this process holds it.

        Returns:
            the answer, or None where this process is to do the work itself
            (it then holds the index)
        """
        deadline = time.monotonic() + self.lock_timeout
        # a holder is briefly not listening: taking over from another, or
        # letting go; past ASK_GRACE, one that never answers (an older
        # version) is asked to let go, as a waiter at its turnstile
        grace = time.monotonic() + ASK_GRACE
        attempt = 0
        while not shared.process_lock.held:
            try:
                answer = sv.ask(self.path, request,
                                max(0.001, deadline - time.monotonic()))
                break
            except sv.NotServed as e:
                stats["not_served"] = f"{e} (retry: {e.retry})"
                if not e.retry or time.monotonic() >= grace:
                    # an error answered (raised here, by doing it), or
                    # nobody answered for ASK_GRACE: in turn, at the gate
                    self._take(shared, deadline)
                    return None
            except TimeoutError:
                raise self._busy_error("another process") from None
            try:
                # let go meanwhile, and nobody waits for it: ours
                if shared.process_lock.try_acquire(create=True):
                    self._now_holding(shared)
                    return None
            except (FileExistsError, NotADirectoryError):
                raise self._damaged("it is a file, not a directory") from None
            time.sleep(backoff(attempt))
            attempt += 1
        else:
            return None
        stats["asked"] += 1
        stats["turns_waited"] = max(stats["turns_waited"], answer["turns"])
        return answer["result"]

    def _serve(self, shared, request):
        """Answers another process's ``request`` (in the server's thread):
        after the thread lock's turns already granted or waiting, or at
        once on the shard being compacted or lent by a session."""
        lock = shared.thread_lock
        arrived = lock.grants
        deadline = time.monotonic() + self.lock_timeout
        shared.asked_at = time.monotonic()
        with shared.side_cond:
            shared.serve_arrived += 1
        waiting = True

        def stop_waiting():
            # under side_cond: a session taking its shard back waits for it
            nonlocal waiting
            if waiting:
                waiting = False
                shared.serve_left += 1
                shared.side_cond.notify_all()

        try:
            # in line for the thread lock, unless a compaction is under
            # way or a session lends its shard
            while not lock.acquire(
                    timeout=max(0.0, deadline - time.monotonic()),
                    abandon=lambda: (shared.side_shard is not None
                                     or shared.relaying)):
                with shared.side_cond:
                    shard = shared.side_shard
                    if shard is None:
                        if shared.relaying:
                            raise sv.NotServed("relayed", retry=True)
                        if time.monotonic() >= deadline:
                            raise sv.NotServed("busy")
                        continue  # taken back meanwhile
                    shared.side_readers += 1
                    lent = shared.lent
                    stop_waiting()
                try:
                    with _answering(shared):
                        result = self._answer(shard, request)
                    stats["lent_reads" if lent else "side_reads"] += 1
                    stats["served"] += 1
                    return {"result": result, "turns": 0}
                finally:
                    with shared.side_cond:
                        shared.side_readers -= 1
                        shared.side_cond.notify_all()
        finally:
            with shared.side_cond:
                stop_waiting()
        try:
            if not shared.process_lock.held:
                # let go meanwhile: maybe to another that answers
                raise sv.NotServed("not holding the index", retry=True)
            if not self.exists():
                raise sv.NotServed("no index")
            shard, _ = self._open(shared)
            with _answering(shared):
                result = self._answer(shard, request)
            if shared.keep_until is not None:
                # searched from elsewhere: still in use
                shared.keep_until = time.monotonic() + KEEP_OPEN
            stats["served"] += 1
            return {"result": result, "turns": lock.grants - arrived - 1}
        finally:
            lock.release()

    def _shared_here(self):
        """What this process's threads share about the index, if any of
        them used it (None: none did; unlike ``_shared_for``, nothing is
        made)."""
        with _registry_lock:
            return _registry.get(self.path)

    def _beside_a_session_possible(self):
        """Whether another thread of this process holds the index in a
        session (see :meth:`_beside_a_session`)."""
        shared = self._shared_here()
        return (shared is not None and shared.lends
                and shared.process_lock.held
                and not shared.thread_lock.is_owned())

    def _beside_a_session(self, request):
        """A read of this thread while another thread of this process holds
        the index in a session (a large import, an upkeep round): answered
        as another process's is (:meth:`_serve`), on the shard the session
        lends between two of its operations or chunks, rather than after
        the session's end.

        Returns:
            the answer, or None where no such session holds the index (the
            caller then takes its turn)
        """
        if not self._beside_a_session_possible():
            return None
        try:
            answer = self._serve(_shared_for(self.path), request)
        except sv.NotServed:
            return None
        stats["beside_a_session"] += 1
        return answer["result"]

    @staticmethod
    def _answer(shard, request):
        op = request["op"]
        if op == "count":
            return shard.count(qe.CountRequest(exact=bool(request["exact"])))
        if op == "query":
            points = shard.query(_query_request(
                np.asarray(request["vector"], dtype=np.float32),
                request["limit"], request["point_ids"], request["min_score"],
                request["cells"]))
            return [[str(p.id), p.score] for p in points]
        if op == "retrieve":
            records = shard.retrieve(request["point_ids"],
                                     with_payload=request["with_payload"],
                                     with_vector=request["with_vector"])
            if request.get("packed"):
                return _pack_records(records, request["with_vector"])
            return [[str(r.id), r.payload,
                     r.vector[""] if isinstance(r.vector, dict) else r.vector]
                    for r in records]
        if op == "points_in":
            # a stretch of a diverse search's walk (rank buckets, ~10k
            # points): more than SERVE_MAX_POINTS, the asker reads them
            records, _ = shard.scroll(qe.ScrollRequest(
                limit=SERVE_MAX_POINTS + 1, filter=_where_in(
                    request["key"], request["values"]),
                with_payload=False, with_vector=request["with_vector"]))
            if len(records) > SERVE_MAX_POINTS:
                raise sv.NotServed("too many points")
            return _pack_records(records, request["with_vector"])
        if op == "lacking":
            records, _ = shard.scroll(qe.ScrollRequest(
                offset=request["after"], limit=request["limit"],
                filter=_lacking(request["key"], request["values"]),
                with_payload=False, with_vector=False))
            return _pack_records(records, False)
        raise sv.NotServed(f"unknown request {op!r}")

    def _end_hold(self, shared):
        """At the outermost exit of a hold: closes the index and releases
        it, or keeps it open (flushed) if a session asked for that or it was
        kept open already."""
        keep = shared.keep_requested or shared.keep_until is not None
        shared.keep_requested = False
        if not shared.process_lock.held:
            return  # the hold went without the index (see _acquire)
        # another process waits: let it in now, not after the next hold
        # (a maintenance pass holds the index again at once, round after
        # round, which a watcher polling for it would never see)
        if (keep and shared.shard is not None and self.exists()
                and not shared.process_lock.wanted()):
            now = time.monotonic()
            shared.used_at = now
            if shared.flush_due(now):
                self._flush(shared)
            # else flushed once idle (the watcher), or at the closing: a
            # flush holds the GIL, so a search that comes waits for it
            shared.keep_until = now + KEEP_OPEN
            if shared.keeper is None:
                shared.keeper = threading.Thread(
                    target=self._keep_open, args=(shared,),
                    name=f"ai-search-keep-{self.name}", daemon=True,
                )
                shared.keeper.start()
            return
        self._release_index(shared)

    @staticmethod
    def _flush(shared):
        """Flushes the shard's changes (the thread lock held)."""
        if shared.dirty and shared.shard is not None:
            shared.shard.flush()
            stats["flushes"] += 1
        shared.dirty = False
        _record_written(shared)

    def _keep_open(self, shared):
        """The watcher of a kept-open shard (a daemon thread): closes it
        when another process waits for the index, or once it is idle;
        flushes it once idle for :data:`FLUSH_IDLE_S`."""
        lock = shared.thread_lock
        while True:
            time.sleep(KEEP_OPEN_POLL)
            if not lock.acquire(timeout=0):
                continue  # in use here: its user re-arms the deadline
            try:
                if (
                    shared.keep_until is None
                    or not shared.process_lock.held
                    or time.monotonic() >= shared.keep_until
                    or shared.process_lock.wanted()
                ):
                    if shared.process_lock.held:
                        self._release_index(shared)
                    shared.keeper = None
                    return
                if (shared.dirty and time.monotonic() - shared.idle_since()
                        >= FLUSH_IDLE_S):
                    self._flush(shared)
            except BaseException:
                shared.keeper = None
                raise
            finally:
                lock.release()

    def close(self):
        """Closes the shard if it is kept open (see :meth:`session`).

        Inside a session of this thread, nothing happens: the session
        closes the shard when it ends.
        """
        shared = self._shared_here()
        if shared is None:
            return
        if not shared.thread_lock.acquire(timeout=self.lock_timeout):
            raise self._busy_error("another thread of this process")
        try:
            if shared.thread_lock.depth == 1 and shared.process_lock.held:
                self._release_index(shared)
        finally:
            shared.thread_lock.release()

    def _release_index(self, shared):
        shared.keep_until = None
        shared.keep_requested = False
        server, shared.server = shared.server, None
        if server is not None:
            server.stop()  # before the lock goes: nobody answers for it
        stats["releases"] += 1
        try:
            # the next holder (another process) finds the files cached
            self._close_shard(shared, keep_cached=True)
        finally:
            if not os.path.exists(self._info_path):
                # no index (dropped, never created, or a failed creation):
                # leave nothing behind; waiters notice the lock files went
                shutil.rmtree(self.path, ignore_errors=True)
            shared.process_lock.release()

    def _lend(self, shared):
        """Lends the shard to the server: another process's read is
        answered on it at once, without the thread lock, until
        :meth:`_take_back`. Only between two operations of a hold (a
        session's caller's code) or two chunks of one: nothing of this
        process uses the shard meanwhile, and the server only reads."""
        if shared.shard is None or not shared.process_lock.held:
            return
        with shared.side_cond:
            shared.side_shard = shared.shard
            shared.lent = True

    def _take_back(self, shared):
        """Ends a :meth:`_lend`: the server's requests that were waiting
        for the thread lock are answered first (else a caller's tight loop
        of operations would take the shard back before the server looks,
        and they would wait for the session's end), then the reads under
        way end."""
        if not shared.lent:
            return
        deadline = time.monotonic() + self.lock_timeout
        with shared.side_cond:
            # the server answers one request at a time: at most one, and
            # not those that come after (a stream of searches would keep
            # the session from going on)
            due = shared.serve_arrived
            while shared.serve_left < due and time.monotonic() < deadline:
                shared.side_cond.wait(ABANDON_POLL)
            shared.side_shard = None
            shared.lent = False
            while shared.side_readers:
                shared.side_cond.wait()

    def _lent_while(self, shared, work, *args):
        """Returns ``work(*args)``, run with the shard lent to the server
        (:meth:`_lend`): ``work`` must not touch the shard. Reads answered
        meanwhile count in ``stats["lent_while_preparing"]``."""
        before = stats["lent_reads"]
        self._lend(shared)
        try:
            return work(*args)
        finally:
            self._take_back(shared)
            stats["lent_while_preparing"] += stats["lent_reads"] - before

    def _let_reads_in(self, shared):
        """Between two steps of an operation that must keep the index (a
        session's, an upkeep round's): lets the other processes' reads that
        wait for the server in, on the shard lent for them, nothing else."""
        with shared.side_cond:
            waiting = shared.serve_left < shared.serve_arrived
        if waiting and shared.shard is not None:
            stats["lent_turns"] += 1
            self._lend(shared)
            self._take_back(shared)

    def _yield_if_wanted(self, shared):
        """Between two chunks of a long operation: lets a waiting thread or
        process have the index, then takes it back. Inside a hold of the
        caller (a session), only another process's read waiting for the
        server is let in: answered on the shard, lent for it.

        Returns:
            the ``(shard, info)`` to continue with
        """
        lock = shared.thread_lock
        # inside a caller's session, the caller decides when to let go;
        # only reads of other processes (which change nothing the session
        # relies on) are answered meanwhile
        if lock.depth != 1:
            self._let_reads_in(shared)
            return self._open(shared)
        if (time.monotonic() - shared.held_since >= HOLD_SLICE
                and shared.process_lock.wanted()):
            self._release_index(shared)
            lock.release()
            # FIFO thread lock + turnstile: waiters go first
            self._acquire(shared, time.monotonic() + self.lock_timeout)
        elif lock.waiting():
            # a thread of this process (or the server, for another
            # process's search) waits: its turn, with the shard left open
            lock.release()
            self._acquire(shared, time.monotonic() + self.lock_timeout)
        return self._open(shared)

    def _damaged(self, what, error=None):
        """The :class:`IndexDamagedError` of this index: ``what`` is
        wrong (because of ``error``)."""
        why = f" ({type(error).__name__}: {error})" if error else ""
        return IndexDamagedError(
            f"The AI search index '{self.name}' ({self.path}) is damaged: "
            f"{what}{why}. A sync rebuilds it beside "
            "(fiftyone_ai_search.calculate_embeddings(dataset, wait=True)), "
            "which searches use once complete; disable_embeddings(dataset) "
            "removes it."
        )

    def check(self):
        """Raises :class:`IndexDamagedError` unless the index's files are
        whole: its description, its shard (opened, and kept open for what
        follows) and its cells."""
        with self._locked(keep_open=True) as shared:
            self._open(shared)
            # read again: the centres may be damaged under a cached copy
            _cells_cache.pop(self._cells_path, None)
            self.cells()

    def _busy_error(self, holder):
        # who, where the system says: a user can tell a long sync from a
        # stuck process (and a holder that should not exist is found)
        who = (locks.describe_holders(self.path)
               if holder == "another process" else "")
        return IndexBusyError(
            f"The AI search index '{self.name}' ({self.path}) is in use by "
            f"{holder} and stayed busy for more than {self.lock_timeout:g} s"
            + (f" ({who})" if who else "") + ". Try again later, or raise "
            "FIFTYONE_AI_SEARCH_LOCK_TIMEOUT."
        )

    # -- shard ---------------------------------------------------------------

    def _open(self, shared):
        """Returns the open ``(shard, info)``; the thread lock must be held
        (the process lock is taken if the hold went without it)."""
        if not shared.process_lock.held:
            self._take(shared, time.monotonic() + self.lock_timeout)
        if shared.shard is None:
            info = self._require_info()
            if not shared.compacting and cp.recover(self._shard_path):
                # a compaction beside was killed: the old shard is back
                self._owe_compaction()
            # Qdrant faults these in page by page: read in sequence first
            covered, read = _read_ahead(self._shard_path)
            stats["read_ahead"] += covered
            stats["read_ahead_read"] += read
            shared.shard = self._load(time.monotonic() + self.lock_timeout)
            shared.info = info
            shared.dirty = False
            stats["opens"] += 1
            shared.rewarm = _rewarm(self._shard_path,
                                    lambda: self._searched_lately(shared))
        return shared.shard, shared.info

    def _load(self, deadline):
        attempt = 0
        while True:
            config = _load_config(self._shard_path)
            if _requantizes(_persisted_config(self._shard_path)):
                # int8 codes of an earlier version: the next maintenance
                # pass compacts, which quantizes the segments again (owed
                # before the opening, which may keep a new configuration;
                # a debt already owed keeps its first date)
                self._owe_compaction()
            try:
                return qe.EdgeShard.load(self._shard_path, config)
            except Exception as e:
                # only a process that does not take our locks (e.g. one
                # forked while the shard was open) can get here
                if "WouldBlock" not in str(e):
                    if not os.path.isdir(self._shard_path):
                        raise self._damaged("its shard is missing") from None
                    if "no space left" in str(e).lower():
                        raise
                    raise self._damaged("its shard does not load", e) from e
                if time.monotonic() >= deadline:
                    raise self._busy_error(
                        "a process that holds its files directly (one forked "
                        "while the index was open?)"
                    ) from None
            time.sleep(backoff(attempt))
            attempt += 1

    def _reopen(self, shared, info, config):
        """Reopens the shard held in ``shared`` with ``config``, which the
        engine checks against it and keeps, what of its files the page
        cache holds kept for the opening; returns it."""
        self._close_shard(shared, keep_cached=True)
        shared.shard = qe.EdgeShard.load(self._shard_path, config)
        shared.info = info
        return shared.shard

    def _close_shard(self, shared, keep_cached=False):
        """Closes the shard (flushed first where it changed). With
        ``keep_cached``, what of its files the page cache holds stays there
        for the next process to open it (see page_cache.py); not where the
        shard is being dropped, recreated or swapped out."""
        shard, shared.shard, shared.info = shared.shard, None, None
        if shard is None:
            return
        try:
            if shared.dirty:
                # durable before anyone else sees the index as free
                shard.flush()
        finally:
            shared.dirty = False
            _record_written(shared)
            # not while this process reads the files back (_rewarm): what
            # it reads between the look at the cache and the closing would
            # be dropped, and it reads back what the closing drops anyway
            rewarm, shared.rewarm = shared.rewarm, None
            keep_cached = keep_cached and not (rewarm and rewarm.is_alive())
            paths = (_shard_files(self._shard_path, cold=False)
                     + _shard_files(self._shard_path, cold=True)
                     if keep_cached else [])
            with page_cache.kept(paths) as pages:
                shard.close()
            stats["kept_cached"] += pages * page_cache.PAGE

    # -- lifecycle -----------------------------------------------------------

    def exists(self):
        return os.path.isfile(self._info_path)

    def info(self):
        try:
            with open(self._info_path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise self._damaged("it is a file, not a directory") from None
        except ValueError as e:  # truncated, empty, garbage
            raise self._damaged(f"its {INFO_FILE} is unreadable", e) from None
        info = _info_of(data)
        if info is None:
            raise self._damaged(f"its {INFO_FILE} describes no index")
        return info

    def create(self, info):
        with self._locked() as shared:
            if self.exists():
                raise IndexExistsError(
                    f"The AI search index '{self.name}' already exists"
                )
            self._close_shard(shared)
            # leftovers of a creation that crashed before index.json
            cp.recover(self._shard_path)
            shutil.rmtree(self._shard_path, ignore_errors=True)
            self._remove_cells()
            self._check_space(0, info.dim)
            shard = qe.EdgeShard.create(self._shard_path,
                                        _shard_config(info.dim, codes=False))
            try:
                # the cell's and the rank's payload indexes from the first
                # point on: each write keeps them. Built by the first
                # upkeep pass over a written index instead, they read every
                # point's payload (10M points: 59 s the rank's, 60 s the
                # cell's, bench/README.md)
                for key, params in _upkeep_indexes().items():
                    shard.update(qe.UpdateOperation.create_field_index(
                        key, params))
            finally:
                shard.close()
            _write_json_atomic(self._info_path, info.to_dict())

    def drop(self):
        if os.path.lexists(self.path) and not os.path.isdir(self.path):
            # damaged: a file where the index was (nobody can hold it)
            os.remove(self.path)
            return
        with self._locked() as shared:
            self._close_shard(shared)
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._info_path)
            cp.recover(self._shard_path)
            shutil.rmtree(self._shard_path, ignore_errors=True)
            self._remove_cells()
            # the directory and its lock files go on the outermost release

    # -- reads ---------------------------------------------------------------

    def count(self):
        return self._count(exact=True)

    def estimate_count(self):
        return self._count(exact=False)

    def _count(self, exact):
        answer = self._beside_a_session({"op": "count", "exact": exact})
        if answer is not None:
            return answer
        with self._locked(ask=True) as shared:
            answer = self._ask(shared, {"op": "count", "exact": exact})
            if answer is not None:
                return answer
            shard, _ = self._open(shared)
            return shard.count(qe.CountRequest(exact=exact))

    # -- engine --------------------------------------------------------------

    def _in_chunks(self, n, work, writes=False, prepare=None):
        """Runs ``work(shard, info, chunk)`` for each ``chunk`` (a slice) of
        ``range(n)``, holding the index; between two chunks, hands it over
        to anyone waiting. With ``n == 0`` it still opens the index, so a
        missing one raises :class:`IndexNotFoundError`.

        With ``prepare``, ``work(shard, info, chunk, prepare(info, chunk))``:
        what ``prepare`` does (converting a chunk's points, not touching the
        shard) runs with the shard lent to the server, so that another
        process's search waits only for the engine's part of a chunk (at
        1M, a write's conversion took more of each chunk than its update)."""
        with self._locked() as shared:
            shard, info = self._open(shared)
            start = 0
            while start < n:
                size = (CHUNK if not writes else WRITE_CHUNK_BESIDE
                        if self._searched_lately(shared) else WRITE_CHUNK)
                chunk = slice(start, start + size)
                args = () if prepare is None else (
                    self._lent_while(shared, prepare, info, chunk),)
                if start:
                    shard, info = self._yield_if_wanted(shared)
                work(shard, info, chunk, *args)
                if writes:
                    shared.dirty = True
                    shared.vector_writes += 1
                    shared.unflushed_points += min(size, n - start)
                    shared.written += min(size, n - start)
                start += size

    def _check_space(self, num_points, dim):
        """Refuses a write of ``num_points`` vectors of size ``dim`` unless
        the index's file system has room for it and
        :data:`RESERVE_BYTES` more: Qdrant Edge writes through memory
        maps, and on a full tmpfs a write dies with SIGBUS, taking the
        process with it.

        Raises:
            DiskFullError: naming the directory and the space needed
        """
        needed = RESERVE_BYTES + num_points * (dim * BYTES_PER_DIM
                                               + BYTES_PER_POINT)
        try:
            fs = os.statvfs(self.root_dir)
        except OSError:
            return  # no answer: the write says what is wrong, if anything
        free = fs.f_bavail * fs.f_frsize
        if free < needed:
            raise DiskFullError(
                f"Not enough free space for the AI search index '{self.name}'"
                f" in {self.root_dir}: {_mib(free)} free, about "
                f"{_mib(needed)} needed to write {num_points} vectors (with "
                f"a {_mib(RESERVE_BYTES)} reserve). Free some space there, or "
                "move the indexes (FIFTYONE_AI_SEARCH_DIR). This write stopped "
                "here; searches keep working."
            )

    def _upsert_points(self, point_ids, vectors, payloads):
        def points_of(info, chunk):
            check_dim(vectors, info.dim)
            # room for all that is left of the write, not this chunk only:
            # a write that does not fit is refused before any of it is
            # written (its chunks of WRITE_CHUNK are smaller than a sync's
            # batch)
            self._check_space(len(point_ids) - chunk.start, info.dim)
            # a writer's points go to the first stretch (cells.place): it
            # does not know where the engine puts them
            return [
                qe.Point(pid, vec, _with_place(payload))
                for pid, vec, payload in zip(
                    point_ids[chunk], vectors[chunk].tolist(), payloads[chunk]
                )
            ]

        def upsert(shard, info, chunk, points):
            # again: a hand-over since the points were made may have let
            # the index be recreated
            check_dim(vectors, info.dim)
            shard.update(qe.UpdateOperation.upsert_points(points))

        self._in_chunks(len(point_ids), upsert, writes=True,
                        prepare=points_of)

    def _delete_points(self, point_ids):
        def delete(shard, info, chunk):
            shard.update(qe.UpdateOperation.delete_points(point_ids[chunk]))

        self._in_chunks(len(point_ids), delete, writes=True)

    def _retrieve_points(self, point_ids, with_payload, with_vector):
        if len(point_ids) > SERVE_MAX_POINTS:
            return self._retrieve_here(point_ids, with_payload, with_vector)
        with self._locked(ask=True) as shared:
            answer = self._ask(shared, {
                "op": "retrieve", "point_ids": list(point_ids),
                "with_payload": bool(with_payload),
                "with_vector": bool(with_vector), "packed": True})
            if isinstance(answer, dict):
                return _unpack_records(answer)
            if answer is not None:  # a holder of a version before packing
                return [_Record(*r) for r in answer]
            return self._retrieve_here(point_ids, with_payload, with_vector)

    def _retrieve_here(self, point_ids, with_payload, with_vector):
        records = []

        def retrieve(shard, info, chunk):
            records.extend(
                shard.retrieve(
                    point_ids[chunk],
                    with_payload=with_payload,
                    with_vector=with_vector,
                )
            )

        self._in_chunks(len(point_ids), retrieve)
        return records

    def _scroll_points(self, with_vector):
        limit = CHUNK if with_vector else ID_PAGE
        return [r for page in self._scroll_pages(limit, None, with_vector)
                for r in page]

    def _scroll_pages(self, limit, offset=None, with_vector=False,
                      query_filter=None, with_payload=False):
        # one hold for all pages, handed over between two of them
        with self._locked() as shared:
            shard, _ = self._open(shared)
            while True:
                batch, offset = shard.scroll(
                    qe.ScrollRequest(
                        offset=offset,
                        limit=limit,
                        filter=query_filter,
                        with_payload=with_payload,
                        with_vector=with_vector,
                    )
                )
                yield batch
                if offset is None:
                    return
                # the offset is a point id, so it survives a hand-over
                shard, _ = self._yield_if_wanted(shared)

    def _query_points(self, vector, limit, point_ids, min_score, cells=None):
        if self._beside_a_session_possible():
            check_dim(vector, self._require_info().dim)
            answer = self._beside_a_session({
                "op": "query", "vector": vector, "limit": limit,
                "point_ids": None if point_ids is None else list(point_ids),
                "min_score": min_score,
                "cells": None if cells is None else list(cells)})
            if answer is not None:
                return [_Scored(pid, score) for pid, score in answer]
        with self._locked(ask=True) as shared:
            if not shared.process_lock.held:
                check_dim(vector, self._require_info().dim)
                answer = self._ask(shared, {
                    "op": "query", "vector": vector.tolist(), "limit": limit,
                    "point_ids": None if point_ids is None else list(point_ids),
                    "min_score": min_score,
                    "cells": None if cells is None else list(cells)})
                if answer is not None:
                    return [_Scored(pid, score) for pid, score in answer]
            shard, info = self._open(shared)
            check_dim(vector, info.dim)
            return shard.query(_query_request(vector, limit, point_ids,
                                              min_score, cells))

    def _exact_neighbour_vectors(self, vectors, limit):
        # a batch of queries is scored in one pass over the points, its
        # hits' vectors returned with them: the audit's 200 exact searches
        # took 2.4x less than one by one (measured at 200k points). Batches
        # of QUERY_BATCH, handed over between two (~1.5 s each at 1M), or
        # of QUERY_BATCH_BESIDE while another process searches
        out = []
        with self._locked() as shared:
            shard, info = self._open(shared)
            check_dim(vectors, info.dim)
            start = 0
            while start < len(vectors):
                if start:
                    shard, _ = self._yield_if_wanted(shared)
                size = (QUERY_BATCH_BESIDE if self._searched_lately(shared)
                        else QUERY_BATCH)
                answers = shard.query_batch(qe.QueryBatchRequest([
                    qe.QueryRequest(
                        limit=limit, query=qe.Query.Nearest(v.tolist()),
                        with_payload=False, with_vector=True,
                        params=_search_params(None))
                    for v in vectors[start : start + size]]))
                start += size
                out.extend(self._stored_rows(hits) if hits else
                           np.zeros((0, info.dim), dtype=np.float32)
                           for hits in answers)
        return out

    # -- cells ---------------------------------------------------------------

    def maintain(self, min_points=cl.MIN_POINTS, seed=0, progress=None,
                 exact=None):
        # the upkeep both backends share (upkeep.py), on this one's hooks
        try:
            return upkeep.maintain(self, min_points, seed, progress, exact)
        finally:
            # the reads ahead of the pass's scans end with it, whatever
            # ended it
            ahead, self._ahead = self._ahead, None
            if ahead is not None:
                ahead.stop()
            self._direct = self._stretch_rows = None

    def _original_rows(self, records):
        # the vectors read from the segments' files where their layout is
        # understood (segment_vectors.py): the engine's Python lists cost
        # ~40 us a 512-d vector to make and convert (426 s of CPU at 10M
        # points), the files' rows a copy. The points not found there,
        # and a sample of those found (DIRECT_CHECK_EVERY), come from the
        # engine; a sample that differs ends the direct reads for the pass
        if self._ahead is not None and records and not _has_vectors(records):
            # the scan brought no vectors (see _pass_reads_files): the
            # reads ahead follow the rows read here instead
            self._ahead.scanned(len(records))
        direct = self._direct
        shared = self._shared_here()
        if direct is not None and (
                not direct.current() or shared is not None
                and shared.vector_writes != self._direct_writes):
            # written by another holder since, or by this process (another
            # thread's write between two rounds), unflushed: a point
            # written again is still found where it was, with its old
            # vector, until the shard is flushed. Read again, flushed
            direct = self._direct = self._segment_vectors()
        if direct is None or not records:
            return self._engine_rows(records)
        ids = [r.id for r in records]
        try:
            rows, found = direct.rows(ids)
        except OSError:  # a file gone: replaced since by a compaction
            self._direct = None
            return self._engine_rows(records)
        check = np.flatnonzero(found)[::DIRECT_CHECK_EVERY]
        engine = np.flatnonzero(~found)
        if len(engine):
            rows[engine] = self._engine_matrix([records[i] for i in engine])
        if len(check) and not np.array_equal(
                rows[check],
                self._engine_matrix([records[i] for i in check])):
            logger.warning(
                "AI search index '%s': the vectors read from its files "
                "differ from the engine's; reading them through the "
                "engine for the rest of this pass", self.name)
            self._direct = None
            return self._engine_rows(records)
        return self._checked_rows(rows, ids, unit=False)

    def _pass_reads_files(self):
        # the pass's scans then bring no vectors: the engine makes a
        # Python list of each (~21 us at 512-d; 262 s of the scans at 10M
        # points), and the rows come from the files
        return self._direct is not None

    def _engine_rows(self, records):
        """:meth:`_stored_rows` (as stored) of ``records``, their vectors
        retrieved from the engine where the scan brought none."""
        return self._checked_rows(self._engine_matrix(records),
                                  [r.id for r in records], unit=False)

    def _engine_matrix(self, records):
        if not records or _has_vectors(records):
            return records_to_matrix(records)
        got = {str(r.id): r for r in self._retrieve_points(
            [r.id for r in records], with_payload=False, with_vector=True)}
        return records_to_matrix([got[str(r.id)] for r in records])

    def _segment_vectors(self):
        """Where the original vectors lie in the shard's files, flushed
        first (see :class:`SegmentVectors`), or None where they cannot be
        read from there."""
        with self._locked() as shared:
            shard, info = self._open(shared)
            # the mappings on disk are those of the last flush
            shard.flush()
            self._direct_writes = shared.vector_writes
            try:
                return SegmentVectors.open(self._shard_path, info.dim)
            except (OSError, ValueError) as e:
                logger.info("AI search index '%s': vectors read through "
                            "the engine (%s)", self.name, e)
                return None

    @property
    def _cells_path(self):
        return os.path.join(self.path, CELLS_FILE)

    def _centres_path(self, generation):
        return os.path.join(self.path, f"cells-{generation}.npy")

    def _read_cells(self):
        try:
            stat = os.stat(self._cells_path)
        except FileNotFoundError:
            return None
        key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        cached = _cells_cache.get(self._cells_path)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            with open(self._cells_path) as f:
                meta = json.load(f)
        except FileNotFoundError:
            return None  # dropped meanwhile
        except ValueError as e:
            raise self._damaged(f"its {CELLS_FILE} is unreadable",
                                e) from None

        def centres_of(meta):
            path = self._centres_path(int(meta["generation"]))
            try:
                centres = np.load(path)
            except FileNotFoundError:
                return None  # dropped meanwhile
            except (ValueError, OSError) as e:  # truncated, garbage
                raise self._damaged(
                    f"its cell centres {os.path.basename(path)} are "
                    "unreadable", e) from None
            if (centres.ndim != 2 or not len(centres)
                    or not np.isfinite(centres).all()):
                raise self._damaged(f"its cell centres {os.path.basename(path)}"
                                    f" are not centres (shape {centres.shape})")
            return centres

        try:
            cells = cl.Cells.from_dict(meta, centres_of)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise self._damaged(f"its {CELLS_FILE} describes no cells",
                                e) from None
        if cells is None:
            return None
        _cells_cache[self._cells_path] = (key, cells)
        return cells

    def _write_cells(self, cells):
        with self._locked() as shared:
            shard, info = self._open(shared)
            if not _has_shard_config(self._shard_path):
                # an index made before the cells: reopened with no HNSW (or
                # its first compaction would build a graph, ~10 min at 1M);
                # its codes come with that compaction
                shard = self._reopen(shared, info,
                                     _shard_config(info.dim, codes=False))
            if cl.CELL_KEY not in shard.info().payload_schema:
                # an index created before its payload indexes were (one
                # with the cell's index has it principal: no second one)
                for key in (cl.CELL_KEY, cl.PLACE_KEY):
                    shard.update(qe.UpdateOperation.create_field_index(
                        key, _upkeep_indexes()[key]))
                shared.dirty = True
            kept = set()
            for generation in cells.generations():
                path = self._centres_path(generation.generation)
                kept.add(os.path.basename(path))
                if not os.path.exists(path):
                    tmp = f"{path}.{os.getpid()}.tmp.npy"
                    np.save(tmp, generation.centres)
                    os.replace(tmp, path)
            _write_json_atomic(self._cells_path, cells.to_dict())
            for name in os.listdir(self.path):
                if name.startswith("cells-") and name not in kept:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(self.path, name))

    def _read_recent(self):
        return rr.read(self.path)

    def _write_recent(self, ring):
        rr.replace(self.path, ring)

    def _remember_query(self, vector):
        # one slot of the ring's file written in place: a search rewrites
        # no file (see recent_ring.py)
        rr.remember(self.path, vector)

    def _remove_cells(self):
        # and the recent queries: a rebuilt index may be of another model
        for path in [self._cells_path] + rr.files(self.path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.path):
                if name.startswith("cells-"):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(self.path, name))

    def _points_lacking(self, key, limit, with_vector, values, after=None):
        # a look without vectors (whether all points have their rank) is
        # answered by the holder; upkeep's reads hold the index anyway
        with self._locked(ask=not with_vector) as shared:
            if not with_vector and limit <= SERVE_MAX_POINTS:
                answer = self._ask(shared, {
                    "op": "lacking", "key": key, "limit": int(limit),
                    "values": _plain(values), "after": after})
                if answer is not None:
                    return _unpack_records(answer)
            shard, _ = self._open(shared)
            # by pages: an upkeep round's read of 65,536 vectors is one
            # engine call of seconds that holds the GIL, and another
            # process's search waited for all of it (3.6 s beside a 1M
            # pass); its waiting reads are answered between two pages
            page = CHUNK if with_vector else limit
            records, offset = [], after
            while len(records) < limit:
                if records:
                    self._let_reads_in(shared)
                got, offset = shard.scroll(qe.ScrollRequest(
                    offset=offset, limit=min(page, limit - len(records)),
                    filter=_lacking(key, values), with_payload=False,
                    with_vector=with_vector))
                records.extend(got)
                if with_vector and self._ahead is not None:
                    # the reads ahead follow the scan (see _VectorsAhead)
                    self._ahead.scanned(len(got))
                if offset is None:
                    break
            return records

    def _points_in(self, key, values, with_vector=True):
        with self._locked(ask=True) as shared:
            # where another process holds the index (a diverse search beside
            # a sync), it reads them: taking the index from it would cost an
            # opening here and another one there
            answer = self._ask(shared, {
                "op": "points_in", "key": key, "values": _plain(values),
                "with_vector": bool(with_vector)})
            if answer is not None:
                return _unpack_records(answer)
            limit = CHUNK if with_vector else ID_PAGE
            return [r for page in self._scroll_pages(
                limit, None, with_vector, _where_in(key, values))
                for r in page]

    def _vectors_in(self, key, values):
        with self._locked(ask=True) as shared:
            answer = self._ask(shared, {
                "op": "points_in", "key": key, "values": _plain(values),
                "with_vector": True})
            if answer is not None:
                # the holder's block of rows as it came: no Python floats
                vectors = answer["vectors"]
                return answer["ids"], (None if vectors is None
                                       else sv.unpack(vectors))
            return rows_of_pages(self._scroll_pages(
                CHUNK, None, True, _where_in(key, values)))

    def _ensure_keyword_index(self, key):
        self._ensure_index(key, qe.KeywordIndexParams())

    def _ensure_rank_index(self):
        self._ensure_index(rk.RANK_KEY, _upkeep_indexes()[rk.RANK_KEY])

    def _ensure_index(self, key, params):
        """Gives the payload ``key`` a payload index of ``params`` unless
        it has one."""
        with self._locked() as shared:
            shard, _ = self._open(shared)
            if key not in shard.info().payload_schema:
                shard.update(qe.UpdateOperation.create_field_index(
                    key, params))
                shared.dirty = True

    def _set_field(self, key, groups, lacking):
        # no guard on what the points hold (``lacking``): a maintenance round
        # holds the index's lock from its read to this write, so no writer
        # came between; and a write filtered on the field it sets did not
        # replay faithfully from the write-ahead log after kill -9 (a round's
        # points kept their old cell, yet no longer matched a filter on it)
        with self._locked() as shared:
            shard, _ = self._open(shared)
            for payload, point_ids in self._payloads(key, groups):
                # a round writes one group per cell (~2,000 at 1M points,
                # ~1 s): others' reads are answered between two, and
                # change nothing the round relies on
                self._let_reads_in(shared)
                try:
                    # by their ids, not by a filter of them: ~25% less of
                    # the engine's CPU (200k points, groups as at 1M: 1.65
                    # against 2.2 s)
                    shard.update(qe.UpdateOperation.set_payload(
                        list(point_ids), payload))
                except Exception as e:
                    # one is gone (which the lock rules out): the others,
                    # as the filter skips it
                    if "no point with id" not in str(e).lower():
                        raise
                    shard.update(qe.UpdateOperation.set_payload_by_filter(
                        qe.Filter(must=[qe.HasIdCondition(set(point_ids))]),
                        payload))
            shared.dirty = True
            shared.unflushed_points += sum(map(len, groups.values()))
            shared.written += sum(map(len, groups.values()))

    def _payloads(self, key, groups):
        """The writes of :meth:`_set_field`: ``(payload, point ids)``, one
        a value of ``groups``; for cells, each with the points' place
        (:func:`cells.place`), one a stretch.

        In a pass that learns the cells, a point's stretch is where it
        lies once written: the pass writes every point, in the order of
        their ids, and the points lie in that order after it. Those of an
        index compacted before move to the engine's appendable segment as
        they are given their cell, in the order written; those of an index
        never compacted (a large import) lie in the order they were
        imported, which is that of their ids (FiftyOne's ids grow with
        time). Outside such a pass (a few points written by an older
        version), the first stretch."""
        for value, point_ids in groups.items():
            value = int(value)
            if key != cl.CELL_KEY:
                yield {key: value}, point_ids
                continue
            if self._stretch_rows is None:
                stretches = np.zeros(len(point_ids), dtype=np.int64)
            else:
                stretches = ((self._given + np.arange(len(point_ids)))
                             // self._stretch_rows)
                self._given += len(point_ids)
            for stretch in np.unique(stretches).tolist():
                at = np.flatnonzero(stretches == stretch)
                ids = (point_ids if len(at) == len(point_ids)
                       else [point_ids[i] for i in at])
                yield ({key: value,
                        cl.PLACE_KEY: int(cl.place(value, stretch))}, ids)

    def _compact(self):
        """Compacts the shard: on a copy beside the holder where it can
        (:meth:`_compact_beside`), else in place, unless another process
        searched the index through this one lately
        (:data:`COMPACT_QUIET_S`): then it is owed (:data:`COMPACT_FILE`),
        and the next pass compacts.

        Returns:
            True if compacted, False if put off
        """
        with self._locked() as shared:
            shard, _ = self._open(shared)
            if self._compact_beside(shared):
                return True
            shard, info = self._open(shared)
            since = self._compaction_owed_since()
            now = time.time()
            if self._searched_lately(shared) and (
                    since is None or now - since < COMPACT_DEFER_MAX_S):
                # the engine's optimize answers nobody until its end (it
                # holds the GIL): not while another process searches
                if since is None:
                    _write_json_atomic(self._compact_path, {"since": now})
                stats["compactions_put_off"] += 1
                logger.info(
                    "AI search index '%s': compaction put off, another "
                    "process searches it (owed for %.0f s)", self.name,
                    0.0 if since is None else now - since)
                return False
            config = _compaction_config(self._shard_path)
            if config is not None:
                # its codes come with the compaction: the engine builds
                # them as it optimizes
                shard = self._reopen(shared, info, config)
            # reads that wait now are answered first
            self._let_reads_in(shared)
            # the server may answer on the shard meanwhile, but the engine
            # holds the GIL until its end: whoever comes waits for it
            with shared.side_cond:
                shared.side_shard = shard
            try:
                with _optimize_reads(shard, self._shard_path):
                    shard.optimize()
            except Exception as e:
                # Qdrant rewrites the segments beside the old ones, which
                # needs about twice the index's size free (10M 512-d points:
                # 42 GB beside the 22 GB index); the index stays whole and
                # searchable by its cells, only not ordered by cell
                if "not enough space" not in str(e).lower():
                    raise
                logger.warning(
                    "AI search index '%s' not compacted: %s. Searches by "
                    "cells work meanwhile, 2-3x slower; the next upkeep pass "
                    "that assigns many points tries again", self.name, e)
            finally:
                with shared.side_cond:
                    shared.side_shard = None
                    while shared.side_readers:
                        shared.side_cond.wait()
            shared.dirty = True
            stats["compactions"] += 1
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._compact_path)
            _record_written(shared, compacted=True)
            return True

    def _compact_beside(self, shared):
        """Compacts a copy of the shard in a child process while this one
        answers the other processes' searches on the original, then swaps
        the copy in and reopens it (see compaction.py). Nothing writes
        meanwhile: the thread lock stays held. The thread lock and the
        shard must be held.

        Returns:
            True if compacted; False where it was not done (a small shard,
            too little disk for the copy, a child that failed): the shard
            is then as it was, and the caller compacts in place
        """
        if not (COMPACT_BESIDE and sv.SUPPORTED):
            return False
        size = cp.tree_bytes(self._shard_path)
        if size < COMPACT_BESIDE_MIN_BYTES:
            return False
        # the copy, then what the engine asks free to optimize it: twice
        # the shard (at 10M points it asked 42 GB beside a 21 GB index);
        # in place needs the latter only
        needed = 3 * size + RESERVE_BYTES
        free = shutil.disk_usage(self.path).free
        if free < needed:
            logger.warning(
                "AI search index '%s': compacted in place, searches wait "
                "for it (a copy beside needs %s free, %s are)", self.name,
                _mib(needed), _mib(free))
            return False
        # not flushed first (a flush holds the GIL, ~0.3 s after 100,000
        # points: a search that comes waits): the copy takes the
        # write-ahead log with it, which the child's opening replays, as
        # after a kill -9 (nothing writes to the shard meanwhile, and what
        # the engine wrote through its memory maps is in the page cache
        # that the copy reads)
        # owed until the copy is in: a process killed meanwhile leaves
        # it owed, and the next pass compacts
        self._owe_compaction()
        self._let_reads_in(shared)
        shared.compacting = True
        try:
            return self._compact_copy(shared, size)
        finally:
            shared.compacting = False

    def _compact_copy(self, shared, size):
        """The copy, the child's optimize and the swap of
        :meth:`_compact_beside`; the child answers the searches while this
        process reopens (its relay, see compaction.py)."""
        self._lend_for_compaction(shared)
        child, error, steps = None, None, {}
        start = time.monotonic()
        try:
            # the copies at a low priority: the server thread answers
            # meanwhile (sendfile frees the GIL)
            priority.run_niced(cp.start, self._shard_path)
            steps["copy_s"] = time.monotonic() - start
            _compact_step("copied")
            child = cp.spawn(self._shard_path)
            _compact_step("optimizing")
            if not child.optimized():
                error = child.error()
            else:
                steps["optimize_s"] = (time.monotonic() - start
                                       - steps["copy_s"])
                mark = time.monotonic()
                # the copy swapped in: the child keeps its own open; read
                # into the page cache now, while searches are still
                # answered, not in the reopening (see _read_ahead)
                priority.run_niced(self._copy_for_swap)
                steps["copy_for_swap_s"] = time.monotonic() - mark
        except OSError as e:
            error = f"{type(e).__name__}: {e}"
        finally:
            if error is not None and child is not None:
                child.kill()
            self._end_compaction_lend(shared)
        if error is not None:
            cp.abandon(self._shard_path)
            logger.warning("AI search index '%s': the compaction of a copy "
                           "failed (%s); compacting in place", self.name,
                           error)
            return False
        _compact_step("optimized")
        # what a search would wait for: the swap and one opening, with the
        # GIL held; the child answers meanwhile, on the compacted copy
        mark = time.monotonic()
        relayed = self._relay(shared, child)
        try:
            if relayed:
                _compact_step("relayed")
            self._close_shard(shared)  # nothing written since the copy
            cp.swap_in(self._shard_path, at=_compact_step)
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._compact_path)
            steps["swap_s"] = time.monotonic() - mark
            self._open(shared)
            steps["reopen_s"] = time.monotonic() - mark - steps["swap_s"]
        finally:
            # the child's address free, then this process's again, then
            # the child's end (it closes its copy meanwhile)
            served = child.stop_relay()
            if relayed:
                steps["relayed"] = served
                self._serve_again(shared)
            child.end()
            child.kill()
        # the old shard and the child's copy go while searches are
        # answered on the new
        self._lend_for_compaction(shared)
        try:
            cp.finish(self._shard_path, at=_compact_step)
        finally:
            self._end_compaction_lend(shared)
        steps["bytes"] = size
        _record_written(shared, compacted=True)
        stats["compactions"] += 1
        stats["compactions_beside"] += 1
        stats["last_compaction"] = steps
        return True

    def _copy_for_swap(self):
        cp.copy_for_swap(self._shard_path)
        _read_ahead(cp.swap_path(self._shard_path))

    def _relay(self, shared, child):
        """Hands this process's address over to the compaction's child,
        which answers on its compacted copy (see compaction.py) while this
        process closes, swaps and reopens.

        Returns:
            True if the child listens (:meth:`_serve_again` takes the
            address back once :meth:`cp.Child.end` freed it)
        """
        server = shared.server
        if server is None or not server.listening:
            return False  # nobody asks through this process
        # a request waiting for the thread lock is sent to ask again
        # (_serve): the child answers it
        shared.relaying = True
        shared.server = None
        server.stop()
        # its thread holds the address until its accept() returns
        server.join(self.lock_timeout)
        if child.relay(self.path):
            return True
        self._serve_again(shared)
        return False

    def _serve_again(self, shared):
        """Listens again on the index's address (this process holds it)."""
        shared.relaying = False
        for _ in range(cp.RELAY_BIND_TRIES):
            if shared.server is not None or not shared.process_lock.held:
                return
            server = sv.Server(
                self.path, lambda request: self._serve(shared, request),
                name=f"ai-search-serve-{self.name}")
            if server.listening or not sv.SUPPORTED:
                shared.server = server
                return
            time.sleep(0.01)  # the child's relay lets the address go

    @staticmethod
    def _lend_for_compaction(shared):
        # the server answers on the shard meanwhile, without the thread
        # lock (counted as side_reads); nothing of this process uses it
        with shared.side_cond:
            shared.side_shard = shared.shard

    @staticmethod
    def _end_compaction_lend(shared):
        with shared.side_cond:
            shared.side_shard = None
            while shared.side_readers:
                shared.side_cond.wait()

    def _owe_compaction(self):
        if self._compaction_owed_since() is None:
            _write_json_atomic(self._compact_path, {"since": time.time()})

    @staticmethod
    def _searched_lately(shared):
        """Whether another process searched the index through this one
        within :data:`COMPACT_QUIET_S`."""
        return (shared.asked_at is not None
                and time.monotonic() - shared.asked_at < COMPACT_QUIET_S)

    def _shares_cpu(self):
        # the server answers the other processes' searches here; one that
        # searched within COMPACT_QUIET_S is taken to search on
        shared = self._shared_here()
        return shared is not None and self._searched_lately(shared)

    def _give_way(self):
        # the upkeep's work outside the engine ran beside the answers: at
        # 1M points the engine's query of a search answered during the pass
        # took 4x its time alone: 1.8-3.2x of CPU from the points without
        # a cell it scans, the rest its threads waiting for a core while
        # the pass's product and reads of the vectors had both
        # (bench/README.md, issue 29). Waiting here costs the pass what
        # the answers take
        shared = self._shared_here()
        if shared is None:
            return
        deadline = time.monotonic() + GIVE_WAY_MAX_S
        with shared.side_cond:
            if not shared.answering:
                return
            stats["gave_way"] += 1
            while shared.answering:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                shared.side_cond.wait(left)

    @property
    def _compact_path(self):
        return os.path.join(self.path, COMPACT_FILE)

    def _compaction_owed_since(self):
        """When a compaction was first put off (epoch seconds), or None if
        none is owed."""
        try:
            with open(self._compact_path) as f:
                return float(json.load(f)["since"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError):
            return 0.0  # unreadable: owed, long since

    def _compaction_owed(self):
        return self._compaction_owed_since() is not None

    def _written_since_compaction(self):
        shared = self._shared_here()
        pending = shared.written if shared is not None else 0
        return written_since_compaction(self.path) + pending

    def _read_vectors_ahead(self):
        # a pass over every point reads all the original vectors, which
        # Qdrant faults in 4 kB at a time: at 1M points 12 s of the 25 s of
        # maintain's scans were waits for the disk (1.1M major faults).
        # Read in sequence, in a thread (GIL-free reads), while the pass
        # ranks and learns, they are in the page cache when scanned. All
        # of them: a stretch whose first, middle and last bytes are cached
        # (_cached) may still miss pages, and at 100k points the scans
        # waited for 12k of those; the kernel's WILLNEED advice fetched
        # only a quarter of the pages here (measured at 200k points: 100k
        # major faults in the scans from a cold cache, 74k after the
        # advice, 53 after these reads; copying what was cached already
        # costs ~1 s of CPU per GB, on the other core). After the shard
        # is open: its opening drops the files it maps from the page cache
        # (see _read_ahead), those read before included. A session: the
        # shard stays open for the pass that follows. At most a window
        # ahead of the scans (_VectorsAhead): at 10M points the vectors
        # (20 GB) do not fit in this machine's memory, and read all at
        # once they would push each other out before the scans reach them
        with self.session(), self._locked() as shared:
            _, info = self._open(shared)
            self._direct = self._segment_vectors()
            self._stretch_rows, self._given = _stretch_rows(info.dim), 0
        segments = _vector_files(self._shard_path)
        available = page_cache.memory_available()
        if not segments or available is None:
            return None
        window = _window(available)
        if window < READ_AHEAD_CHUNK:
            return None
        ahead = _VectorsAhead(segments, self.estimate_count(), window,
                              give_way=self._give_way)
        self._ahead = ahead
        thread = threading.Thread(target=ahead.run,
                                  name="ai-search-vectors-ahead", daemon=True)
        thread.start()
        return thread


def _info_of(data):
    """The :class:`IndexInfo` of what ``index.json`` holds, or None if it
    describes no index."""
    try:
        info = IndexInfo.from_dict(data)
    except (TypeError, AttributeError):  # not a dict, or fields missing
        return None
    fine = (isinstance(info.model, str) and isinstance(info.model_identity, str)
            and isinstance(info.dim, int) and info.dim > 0
            and isinstance(info.schema_version, int))
    return info if fine else None


def _shard_config(dim, codes=True):
    """The shard's configuration: one unnamed cosine vector, its originals
    on disk and, with ``codes``, a 4-bit copy in RAM (:func:`_quantization`),
    and no HNSW graph (``m=0``). Searches are exact, or exact within the
    probed cells (see cells.py), so a compaction only merges segments,
    orders their points by cell and quantizes them (~40 s at 1M points)
    rather than building a graph; the probed cells are scanned on the
    4-bit copy and the best rescored on the originals (measured at 300k:
    11-15 ms instead of 25-32 ms, same recall, with int8 codes then).
    Searches run on :data:`SEARCH_THREADS` of the engine's threads.

    A new shard has no ``codes`` until its first compaction
    (:func:`_compaction_config`): the engine keeps these codes for the
    points of its appendable segments too, and a large import written
    before the first compaction (10M points: 2.4 GB of codes) then made
    the compaction ask that much twice more free disk (47.7 GiB beside a
    26 GB index, against 42.8 without them), while its searches, exact
    until the cells exist, never read them.
    """
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(
            size=int(dim), distance=qe.Distance.Cosine, on_disk=True,
            quantization_config=_quantization() if codes else None,
        ),
        hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100,
                                       full_scan_threshold=10_000),
        max_search_threads=SEARCH_THREADS,
    )


def _quantization():
    """The copy of the vectors the probed cells are scanned on: the
    engine's TurboQuant codes of 4 bits a coordinate (a random rotation,
    then 4 bits each), in RAM.

    A search's cost is its scan of the probed cells, and the engine scans
    these twice as fast as int8 codes. Measured on 1M CLIP-like 512-d
    points of bench_audit.py's gap-wide world, 2,000 cells, text queries,
    one thread (bench/README.md, issue 25): 14 ns a point unfiltered and
    30 ns over 1/12 of the cells, against 40 and 52 ns with int8
    (``ScalarType.Int8``, what indexes made before kept: see
    :func:`_compaction_config`); recall@100 within the probed cells 1.000 with
    :data:`cells.OVERSAMPLING`. Half the RAM too (256 B a point at 512-d
    against 512). 2 bits a coordinate scanned no faster through the filter
    (41 ns) and lost recall (0.87 at 2x)."""
    return qe.TurboQuantQuantizationConfig(bits=qe.TurboQuantBitSize.Bits4,
                                           always_ram=True)


#: :func:`_quantization` as the engine keeps it in ``edge_config.json``
_QUANTIZATION_KEPT = {"turbo": {"always_ram": True, "bits": "bits4"}}

#: the int8 codes of the versions before, as the engine keeps them
_INT8_KEPT = {"scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}}


def _upkeep_indexes():
    """``{payload key: index params}`` of the keys the upkeep scans and
    writes: the cell's (a query's probed cells), the place's (principal:
    a compaction orders the points by it, see :data:`cells.PLACE_KEY`)
    and the rank's (a walk reads a few ranks at a time).

    Shards made before the places have the cell's index principal
    instead: a compaction orders their points by cell alone, which reads
    the original vectors at random over all the files (see
    :func:`_optimize_reads`)."""
    return {
        cl.CELL_KEY: qe.IntegerIndexParams(lookup=True, range=False),
        cl.PLACE_KEY: qe.IntegerIndexParams(lookup=True, range=False,
                                            is_principal=True),
        rk.RANK_KEY: qe.IntegerIndexParams(lookup=True, range=False),
    }


def _with_place(payload):
    """``payload`` with the place of its cell in the first stretch, where
    it has a cell (see :data:`cells.PLACE_KEY`)."""
    if cl.CELL_KEY not in payload:
        return payload
    return {**payload, cl.PLACE_KEY: int(cl.place(payload[cl.CELL_KEY]))}


#: threads of the engine's search pool. Its default (derived from the CPUs:
#: 8 threads on this 2-core machine) hands each segment's scan of a search
#: to the pool, and waking it cost a small search more than the scan: an
#: image query of 2-3 cells at 300k points 0.890 ms of CPU with the pool of
#: 8 against 0.552 with one thread, the same answers; prompts (~90 cells)
#: the same CPU, 6% more wall (bench/README.md, issue 25). A compacted
#: index is one large segment and a small appendable one, so there is
#: little to scan side by side, and a process searches one query at a time
#: (its thread lock). Set on new shards, and once on older ones at their
#: opening (:func:`_load_config`)
SEARCH_THREADS = 1


def _load_config(shard_path):
    """The configuration to open the shard at ``shard_path`` with: None
    (as it is) unless it was made with :func:`_shard_config` but another
    :data:`SEARCH_THREADS`; then :func:`_shard_config`, which the engine
    checks against the shard and keeps (its ``edge_config.json``), so
    that only the first opening passes it. A shard made before the cells
    gets it with their configuration (``_write_cells``). Its codes stay
    as they are until its next compaction (:func:`_compaction_config`),
    but int8 codes, which this version no longer makes, turn into 4-bit
    ones here."""
    config = _our_config(shard_path)
    if config is None or config.get("max_search_threads") == SEARCH_THREADS:
        return None
    return _shard_config(config["vectors"][""]["size"],
                         codes=_kept_codes(config) is not None)


def _compaction_config(shard_path):
    """The configuration a compaction opens the shard at ``shard_path``
    with: :func:`_shard_config`'s where the shard has not its codes yet
    (a new shard's first compaction, or one of int8 codes that an earlier
    version made: :func:`_requantizes`), which the engine then builds as
    it compacts; else None (as it is)."""
    config = _our_config(shard_path)
    if config is None or _kept_codes(config) == _QUANTIZATION_KEPT:
        return None
    return _shard_config(config["vectors"][""]["size"])


def _our_config(shard_path):
    """The configuration the engine keeps of the shard at ``shard_path``,
    where a version of ours made it with :func:`_shard_config` (no HNSW
    graph; 4-bit codes, int8 ones, or none yet); else None."""
    config = _persisted_config(shard_path)
    if config is None or not _is_cells_config(config):
        return None
    vector = config["vectors"][""]
    ours = {"size": vector.get("size"), "distance": "Cosine", "on_disk": True}
    if (any(vector.get(key) != value for key, value in ours.items())
            or _kept_codes(config) not in (None, _QUANTIZATION_KEPT,
                                           _INT8_KEPT)):
        return None  # not what a version of ours made: left as it is
    return config


def _kept_codes(config):
    """The codes a kept configuration ``config`` gives, as the engine
    keeps them (None: none)."""
    vector = (config.get("vectors") or {}).get("") or {}
    return vector.get("quantization_config")


def _requantizes(config):
    """Whether a shard of ours whose configuration is ``config`` (as the
    engine keeps it, or None) holds int8 codes, which an earlier version
    made: its next compaction quantizes it again
    (:func:`_compaction_config`)."""
    return isinstance(config, dict) and _kept_codes(config) == _INT8_KEPT


def _persisted_config(shard_path):
    """The shard's configuration as the engine keeps it, or None where it
    cannot be read."""
    try:
        with open(os.path.join(shard_path, "edge_config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _is_cells_config(config):
    # 4-bit codes, none yet (before the first compaction), or the int8
    # codes ("scalar") of earlier versions; a shard made before the cells
    # has an HNSW graph
    codes = _kept_codes(config) or {}
    return ((config.get("hnsw_config") or {}).get("m") == 0
            and (not codes or "scalar" in codes or "turbo" in codes))


def _has_shard_config(shard_path):
    """Whether the shard at ``shard_path`` was made with
    :func:`_shard_config`, this version's or an earlier one (no HNSW
    graph)."""
    config = _persisted_config(shard_path)
    return config is not None and _is_cells_config(config)


#: what of a shard's segments an opening does not read whole (see
#: :func:`_read_ahead`): the original vectors (of a compacted segment, and
#: the chunks of one being written), of which a search reads only the few
#: it rescores. Measured at 100k 512-d points: an uncompacted shard opens in
#: 0.36 s with all but its vector chunks read ahead, 0.26 s with those too
#: (0.63-0.72 s with nothing), for 200 MB more to read: 2 GB at 1M
_COLD_FILES = ("matrix.dat",)
_COLD_DIRS = (os.path.join("vector_storage", "vectors"),)

#: bytes per read when a shard's files are read ahead
READ_AHEAD_CHUNK = 8 * 2**20

#: of the rows read from the shard's files (see EdgeStore._original_rows),
#: one in this many is compared with the engine's own vector: a layout not
#: the one understood shows in the first block
DIRECT_CHECK_EVERY = 256


def _read_ahead(shard_path):
    """Reads the files of the shard that an opening reads whole into the
    page cache, by large sequential reads, but for what is there already.

    Qdrant reads what it keeps in memory (the 4-bit copy, the id tracker,
    the payload indexes) through memory maps, page fault after page fault,
    and then drops those files from the page cache
    (``POSIX_FADV_DONTNEED``). From a cold page cache those faults are
    several times slower than reading the same files in sequence first
    (measured at 100k 512-d points: an opening of 1.1-1.7 s, against
    0.11-0.14 s of reads and then 0.14-0.24 s of opening; at 1M see
    ``bench/README.md``). A stretch already in the page cache (as the
    last holder's :func:`_rewarm` left it) is not read again: copying it
    would cost ~0.1 s per 100 MB here, and the 4-bit copy is 256 MB at 1M
    points (see :func:`_cached`).

    Returns:
        ``(bytes covered, bytes read)``
    """
    return _read_files(_shard_files(shard_path, cold=False))


def _shard_files(shard_path, cold):
    """The paths of the files of the shard's segments that an opening
    reads whole (``cold=False``), or of its original vectors, which it
    does not (``cold=True``: see :data:`_COLD_FILES`)."""
    paths = []
    for dirpath, dirs, names in os.walk(os.path.join(shard_path, "segments")):
        # a segment's directory: <shard>/segments/<uuid>/...
        in_cold_dir = any(dirpath.endswith(os.sep + c) for c in _COLD_DIRS)
        if not cold:
            dirs[:] = [d for d in dirs if not any(
                os.path.join(dirpath, d).endswith(os.sep + c)
                for c in _COLD_DIRS)]
        for name in names:
            if (in_cold_dir or name in _COLD_FILES) == cold:
                paths.append(os.path.join(dirpath, name))
    return paths


def _read_files(paths, skip_cached=True, stop=None):
    """Reads ``paths`` into the page cache in sequence, but for the
    stretches there already (``skip_cached``, see :func:`_cached`), until
    ``stop()`` (checked before each chunk) says so; ``(bytes covered,
    bytes read)``."""
    covered = done = 0
    buf = bytearray(READ_AHEAD_CHUNK)
    for path in paths:
        try:
            # unbuffered: readinto() lets go of the GIL while it reads
            f = open(path, "rb", buffering=0)
        except OSError:
            continue  # replaced by a compaction meanwhile
        with f:
            try:
                size = os.fstat(f.fileno()).st_size
                for at in range(0, size, READ_AHEAD_CHUNK):
                    if stop is not None and stop():
                        return covered, done
                    length = min(READ_AHEAD_CHUNK, size - at)
                    covered += length
                    if skip_cached and _cached(f.fileno(), at, length):
                        continue
                    f.seek(at)
                    done += f.readinto(memoryview(buf)[:length]) or 0
            except OSError:
                continue
    return covered, done


#: the original vectors are read ahead of a pass over all of them (see
#: :meth:`EdgeStore._read_vectors_ahead`) at most this many bytes ahead of
#: its scans (all of them up to ~1M 512-d points, 2 kB each), and at most
#: :data:`VECTORS_AHEAD_SHARE` of the memory available: more would push
#: each other (and the rest of the page cache) out before the scans reach
#: them
VECTORS_AHEAD_WINDOW = 2 * 2**30
VECTORS_AHEAD_SHARE = 0.5


def _window(available):
    """How far ahead of its reader a file is read: :data:`VECTORS_AHEAD_WINDOW`,
    at most :data:`VECTORS_AHEAD_SHARE` of the memory ``available``."""
    return int(min(VECTORS_AHEAD_WINDOW, VECTORS_AHEAD_SHARE * available))


#: a reader ahead of a pass whose scans have not moved for this many
#: seconds stops (the pass ends it anyway, see EdgeStore.maintain)
VECTORS_AHEAD_IDLE_S = 1800.0


def _vector_files(shard_path):
    """The original vectors' files of each segment of the shard, in the
    order the segment stores its points (a segment being written keeps
    them in numbered chunks): ``[[(path, size), ...], ...]``."""
    by_segment = {}
    for path in _shard_files(shard_path, cold=True):
        try:
            size = os.path.getsize(path)
        except OSError:
            continue
        segment = os.path.relpath(path, shard_path).split(os.sep)[1]
        by_segment.setdefault(segment, []).append((path, size))
    return [sorted(files, key=lambda f: _natural(os.path.basename(f[0])))
            for _, files in sorted(by_segment.items())]


def _natural(name):
    """A file name's sort key with its numbers as numbers (chunk_10 after
    chunk_9)."""
    return [int(part) if part.isdigit() else part
            for part in re.split(r"(\d+)", name)]


class _VectorsAhead:
    """Reads the original vectors of a shard into the page cache ahead of a
    pass that scans every point, at most ``window`` bytes ahead of the
    share of the points scanned so far (:meth:`scanned`).

    A segment stores its points in the order they were written, and the
    scans go in point id order; the two agree where ids grow as points
    are written (a FiftyOne sample id starts with its creation time; the
    benchmarks' ids are row numbers). Each segment is read at the pace of
    the scans, in proportion to its size: its points are spread over the
    ids alike. Where the orders disagree (a segment compacted in another
    order), the reads still cost no more than the window of memory, and
    only their waits for the disk are not saved.
    """

    def __init__(self, segments, num_points, window, give_way=None):
        self.segments = segments
        #: called before each read: waits while a search is answered
        self._give_way = give_way
        self.num_points = max(int(num_points), 1)
        self.window = window
        self.total = sum(size for files in segments for _, size in files)
        #: bytes read, and the wall seconds spent reading
        self.read = 0
        self.seconds = 0.0
        self._scanned = 0
        self._stopped = False
        self._cond = threading.Condition()

    def scanned(self, count):
        """``count`` more points were scanned."""
        with self._cond:
            self._scanned += count
            self._cond.notify_all()

    def stop(self):
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _allowed(self):
        """The share of each segment that may be read now."""
        return min(1.0, self._scanned / self.num_points
                   + self.window / max(self.total, 1))

    def run(self):
        buf = bytearray(READ_AHEAD_CHUNK)
        # per segment: index of the file being read, its offset, bytes read
        where = [[0, 0, 0] for _ in self.segments]
        while True:
            with self._cond:
                if self._stopped:
                    return
                allowed = self._allowed()
                seen = self._scanned
            start = time.monotonic()
            left = False
            for files, at in zip(self.segments, where):
                whole = sum(size for _, size in files)
                target = allowed * whole
                while at[0] < len(files) and at[2] < target:
                    if self._stopped:
                        return
                    path, size = files[at[0]]
                    length = min(READ_AHEAD_CHUNK, size - at[1])
                    if length <= 0:
                        at[0], at[1] = at[0] + 1, 0
                        continue
                    if self._give_way is not None:
                        self._give_way()
                    got = _read_stretch(path, at[1], memoryview(buf)[:length])
                    self.read += got
                    at[1] += length
                    at[2] += length
                left = left or (at[0] < len(files) and at[2] < whole)
            self.seconds += time.monotonic() - start
            if not left:
                return
            with self._cond:
                while not self._stopped and self._scanned == seen:
                    if not self._cond.wait(VECTORS_AHEAD_IDLE_S):
                        return


def _read_stretch(path, offset, buf):
    """Reads ``len(buf)`` bytes of ``path`` at ``offset`` (unbuffered:
    the read lets go of the GIL); the bytes read, 0 where the file is gone
    (replaced by a compaction meanwhile)."""
    try:
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            return f.readinto(buf) or 0
    except OSError:
        return 0


#: whether a read can be told not to wait for the disk (Linux)
_NOWAIT = getattr(os, "RWF_NOWAIT", None) if hasattr(os, "preadv") else None


def _cached(fd, offset, length):
    """Whether the stretch of ``length`` bytes at ``offset`` of the file
    ``fd`` looks to be in the page cache: one-byte reads at its start, its
    middle and its end, each told not to wait for the disk
    (``RWF_NOWAIT``), all succeed. Where that cannot be asked (not Linux, a
    file system without it), False: the stretch is read."""
    if _NOWAIT is None:
        return False
    probe = bytearray(1)
    for at in (offset, offset + length // 2, offset + length - 1):
        try:
            os.preadv(fd, [probe], at, _NOWAIT)
        except OSError:  # EAGAIN: not cached; EOPNOTSUPP: cannot tell
            return False
    return True


def _rewarm(shard_path, searched=lambda: False):
    """Reads the shard's files back into the page cache (what Qdrant just
    dropped, see :func:`_read_ahead`), in a background thread, so that the
    next process to open the shard finds them there: at 1M 512-d points
    ~0.6 GB, from disk, while this process searches from its own copy.
    Then the original vectors, where they fit (see :func:`_warm_originals`),
    unless and until ``searched()``: another process searches through
    this one.

    Returns:
        the thread
    """
    thread = threading.Thread(target=_rewarm_all, args=(shard_path, searched),
                              name="ai-search-rewarm", daemon=True)
    thread.start()
    return thread


def _rewarm_all(shard_path, searched):
    _read_ahead(shard_path)
    _warm_originals(shard_path, stop=searched)


def _files_size(paths):
    """The bytes of the files at ``paths``, but those gone (replaced by a
    compaction meanwhile)."""
    size = 0
    for path in paths:
        with contextlib.suppress(OSError):
            size += os.path.getsize(path)
    return size


#: a compaction reads the original vectors in the order of the cells, not
#: of the files: where they take more than this many times the memory
#: available, its reads are made one page a fault (:func:`_optimize_reads`).
#: Measured on a 1M index compacted beside in memory cgroups (the child's
#: originals against its memory available; bench/README.md, issue 25):
#: at 0.73x and 0.93x the advice made it slower (145 s against 94, 184
#: against 99), at 1.08x and 1.31x faster (157 against 310, 171 against
#: 977): the line is where the originals stop fitting. 10M on this 23 GB
#: machine lies on it (~1x; 1,052 s advised against 689)
OPTIMIZE_RANDOM_ABOVE = 1.0


#: a stretch of the files (see :data:`cells.PLACE_KEY`) holds this share of
#: the memory available (at the pass's start) of original vectors: a
#: compaction reads one stretch at random, then the next; what it reads
#: stays cached while it is wanted, beside what the compaction writes and
#: the process's own memory. Measured on a 1M index (2 GB of originals)
#: in a 2.4 GB memory cgroup (~1.5 GB available): compacted in 335 s
#: ordered by cell alone, 58 s in 5 stretches; searches unchanged (5.6 /
#: 4.7 ms an image / a prompt either way; bench/README.md, issue 25)
STRETCH_SHARE = 0.25


def _stretch_rows(dim):
    """The rows of original vectors of ``dim`` in a stretch of the files
    (:data:`STRETCH_SHARE`); all of them where the memory available
    cannot be read."""
    available = page_cache.memory_available()
    if available is None:
        return 2**62
    return max(1, int(STRETCH_SHARE * available) // (4 * int(dim)))


@contextlib.contextmanager
def _optimize_reads(shard, shard_path):
    """Readies the engine's reads of an ``optimize`` of the shard for the
    ``with`` block where it runs.

    A shard made before the places (:data:`cells.PLACE_KEY`) has its
    cell's payload index principal, so the optimize copies each cell's
    points together, reading the originals out of their order: where they
    are larger than the memory available (:data:`OPTIMIZE_RANDOM_ABOVE`),
    this process's maps of them are read at random, one page a fault
    (:func:`page_cache.random_access`). Where they do not all stay cached,
    each fault's read-around (up to the disk's read-ahead, 8 MB here) is
    mostly pushed out before it is used and pushes out what the next
    faults want (a 1M index in a 2.4 GB cgroup: 486 s in place, 146 s
    advised). Where they fit, the pages read around a fault are the later
    faults' own, and they are left as they are (bench/README.md,
    issue 25).

    A shard with places is read one stretch of the files at a time, each
    of which fits; where its originals take more than
    :data:`READ_BUILDER_ABOVE` of the memory available, the copy the
    engine writes of them does not stay cached until it reads it back,
    and a process reads it ahead of the engine
    (:mod:`~fiftyone_ai_search.store.builder_reads`).

    Yields:
        the bytes advised (0 where they fit, or the shard has places)
    """
    paths = _shard_files(shard_path, cold=True)
    size = _files_size(paths)
    available = page_cache.memory_available()
    if cl.PLACE_KEY in shard.info().payload_schema:
        reader = None
        if available is not None and size > READ_BUILDER_ABOVE * available:
            reader = builder_reads.start(os.getpid(), shard_path,
                                         _window(available))
        try:
            yield 0
        finally:
            read = builder_reads.stop(reader)
            if read is not None and read["followed"]:
                stats["builder_read_ahead"] += read["read"]
                logger.info("AI search index at %s: %s of the compacted "
                            "vectors read ahead of the engine", shard_path,
                            _mib(read["read"]))
        return
    advised = 0
    if available is not None and size > OPTIMIZE_RANDOM_ABOVE * available:
        advised = page_cache.random_access(paths)
    if advised:
        stats["optimized_at_random"] += 1
        logger.info("AI search index at %s: its %s of original vectors "
                    "exceed the %s of memory available; compacted with "
                    "a page read a fault", shard_path, _mib(size),
                    _mib(available))
    yield advised


#: a compaction holds the source's original vectors and the copy it writes
#: of them: where they take more than this share of the memory available,
#: the copy is read ahead of the engine (:func:`_optimize_reads`)
READ_BUILDER_ABOVE = 0.5


#: the original vectors are read into the page cache after an opening
#: (:func:`_warm_originals`) where they take at most this share of the
#: memory available: 2 GB at 1M 512-d points, not 20 GB at 10M
WARM_ORIGINALS_SHARE = 0.25


def _warm_originals(shard_path, stop=lambda: False):
    """Reads the original vectors into the page cache, where they take at
    most :data:`WARM_ORIGINALS_SHARE` of the memory available; stops
    where ``stop()`` (checked before each chunk) says so.

    A search by cells rescores its best ~200 points on their originals,
    which Qdrant maps from disk and drops from the page cache when it closes
    the shard: each search of a process that opened the shard read its own
    from disk, ~1.2 ms a search where its cells are few (measured at 300k
    points on ``even``, 2-3 cells: 1.7-2.1 ms with ~8 reads from disk a
    search, 0.46-0.63 ms with the originals in the page cache; ~0.4 s of CPU
    a GB read; bench/README.md, issue 25): what a faiss index, whose
    originals are in RAM, does not pay. A 10M index's (20 GB) are left to
    the searches.

    Not while another process searches through this one (``stop``: a
    writer that took the index over from a searcher): at 1M points its
    2 GB read beside the other process's searches, which this one
    answers, made the search after the takeover 129 ms (major faults,
    threads waiting for a core) and the takeover itself 2.6 s against
    1.4 s without it (bench_concurrent.py, quiet; bench/README.md,
    issue 29). Those searches read their few originals from disk instead.

    Returns:
        ``(bytes covered, bytes read)``, or None where they do not fit
    """
    paths = _shard_files(shard_path, cold=True)
    size = _files_size(paths)
    available = page_cache.memory_available()
    if available is None or size > WARM_ORIGINALS_SHARE * available:
        return None
    return _read_files(paths, stop=stop)


class _Scored:
    """A search result answered by another process (as Qdrant's)."""

    __slots__ = ("id", "score")

    def __init__(self, point_id, score):
        self.id, self.score = point_id, score


class _Record:
    """A point read by another process (as Qdrant's)."""

    __slots__ = ("id", "payload", "vector")

    def __init__(self, point_id, payload, vector):
        self.id, self.payload, self.vector = point_id, payload, vector


def _pack_records(records, with_vector):
    """What the holder answers for ``records`` (see serve.py): their ids
    and payloads, and their vectors packed in one block."""
    vectors = None
    if with_vector and records:
        vectors = sv.pack(records_to_matrix(records))
    return {"ids": [str(r.id) for r in records],
            "payloads": [r.payload for r in records], "vectors": vectors}


def _unpack_records(answer):
    """The records of :func:`_pack_records`' answer."""
    vectors = answer["vectors"]
    rows = None if vectors is None else sv.unpack(vectors).tolist()
    return [_Record(pid, payload, None if rows is None else rows[i])
            for i, (pid, payload) in enumerate(zip(answer["ids"],
                                                   answer["payloads"]))]


def _plain(values):
    """``values`` (ints or strings, numpy's included) as JSON's."""
    return [int(v) if isinstance(v, (int, np.integer)) else v
            for v in values]


def _where_in(key, values):
    """Points whose payload ``key`` is one of ``values``: one ``MatchAny``.
    Unlike a search's cells (:func:`_cells_filter`), a scroll of them is
    not cheaper asked as one ``MatchValue`` a value: measured at 300k
    points (bench/README.md, 2026-12-06), reading the vectors of 8 cells
    ~25% less CPU a point, of 40 rank buckets about the same, of 400
    (~30k points, e.g. the upkeep's learning sample) 1.5x more."""
    return qe.Filter(must=[qe.FieldCondition(
        key, match=qe.MatchAny(_plain(values)))])


def _query_request(vector, limit, point_ids, min_score, cells):
    """The Qdrant request of a search: of ``point_ids`` (an id filter), or
    of the probed ``cells``, or exact."""
    query_filter = None
    if point_ids is not None:
        query_filter = qe.Filter(must=[qe.HasIdCondition(set(point_ids))])
    elif cells is not None:
        query_filter = _cells_filter(cells)
    return qe.QueryRequest(
        limit=limit,
        query=qe.Query.Nearest(vector.tolist()),
        filter=query_filter,
        score_threshold=min_score,
        with_payload=False,
        with_vector=False,
        params=_search_params(cells),
    )


def _cells_filter(cells):
    """Points in one of the probed ``cells``: one exact match a cell, any
    of which suffices. The same points as one ``MatchAny`` of the cells, for
    ~half the engine's CPU: measured at 300k points (clip-b32, the same
    queries and cells; bench/README.md), 4.0 against 6.9 ms a search at 48
    cells, 7.1 against 13.7 ms at 200, 3.0 against 4.6 ms at 8.

    Each cell's condition is made once a process (:func:`_cell_condition`):
    a new one a cell a search cost ~2.5 us each, 0.3 ms of a prompt's
    search of ~120 cells at 300k points (~5% of it), 0.03 ms kept."""
    return qe.Filter(should=[_cell_condition(cell) for cell in cells])


#: ``{cell value: its condition}`` (:func:`_cell_condition`)
_cell_conditions = {}

#: the most conditions kept: two generations of the most cells, and the
#: cell of points without one (see cells.Cells.previous)
_CELL_CONDITIONS_KEPT = 2 * cl.MAX_CELLS + 1


def _cell_condition(cell):
    """The condition of a search's filter that matches the points of
    ``cell`` (a cell value), made once: the engine's conditions are
    immutable, and a filter copies those it is made of."""
    cell = int(cell)
    condition = _cell_conditions.get(cell)
    if condition is None:
        if len(_cell_conditions) >= _CELL_CONDITIONS_KEPT:
            _cell_conditions.clear()  # cells learned again: the old ones
        condition = qe.FieldCondition(cl.CELL_KEY,
                                      match=qe.MatchValue(cell))
        _cell_conditions[cell] = condition
    return condition


def _search_params(cells):
    """Exact (the originals, every point) unless searching probed cells:
    there the quantized copy, rescored (there is no graph: still a full
    scan of what is probed)."""
    if cells is None:
        return qe.SearchParams(exact=True)
    return qe.SearchParams(exact=False, quantization=qe.QuantizationSearchParams(
        rescore=True, oversampling=cl.OVERSAMPLING))


def _lacking(key, values):
    """Points without ``key`` yet, or with one of ``values``."""
    should = [qe.IsEmptyCondition(key)]
    if values:
        should.append(qe.FieldCondition(key, match=qe.MatchAny(list(values))))
    return qe.Filter(should=should)

#: ``{cells.json path: ((mtime, size, inode), Cells)}``
_cells_cache = {}


def _close_kept_open():
    """At exit: closes the shards kept open (flushed: the next opening
    replays no write-ahead log)."""
    with _registry_lock:
        items = list(_registry.items())
    for path, shared in items:
        if shared.keep_until is None:
            continue
        if shared.thread_lock.acquire(timeout=1.0):
            try:
                if shared.thread_lock.depth == 1 and shared.process_lock.held:
                    EdgeStore(os.path.basename(path),
                              os.path.dirname(path))._release_index(shared)
            except Exception:
                pass
            finally:
                shared.thread_lock.release()


atexit.register(_close_kept_open)


def _compact_step(step):
    """A step of a compaction beside the holder done (for tests)."""
    if _compact_hook is not None:
        _compact_hook(step)


def written_since_compaction(dirpath):
    """The points written to the index in ``dirpath`` since its last
    compaction, as recorded (:data:`WRITTEN_FILE`); 0 if none were."""
    try:
        with open(os.path.join(dirpath, WRITTEN_FILE)) as f:
            return max(0, int(json.load(f)["points"]))
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, TypeError, KeyError):
        return 0  # unreadable: rewritten at the next record


def _record_written(shared, compacted=False):
    """Adds the points written here since the last record to
    :data:`WRITTEN_FILE` (the process lock held: one writer at a time),
    or, after a compaction, starts it again from 0 (the few points a
    compaction beside replays after its copy are not counted). A kill
    before the record loses that count: a compaction comes later than it
    would, nothing else."""
    pending, shared.written = shared.written, 0
    if not pending and not compacted:
        return
    if not os.path.isdir(shared.dirpath):
        return  # dropped
    total = 0 if compacted else (
        written_since_compaction(shared.dirpath) + pending)
    with contextlib.suppress(OSError):  # a full disk: only the count lost
        _write_json_atomic(os.path.join(shared.dirpath, WRITTEN_FILE),
                           {"points": total})


def _write_json_atomic(path, data):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _has_vectors(records):
    """Whether the scan that read ``records`` brought their vectors."""
    return _record_vector(records[0]) is not None
