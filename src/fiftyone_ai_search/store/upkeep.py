"""The upkeep of an index's cells (see
:mod:`~fiftyone_ai_search.store.cells`): learning them once the index is
large enough, giving every point its cell, learning them again as the index
grows and moving the points over, and compacting the index so that each
cell's points lie together. Points written before ranks existed get their
rank here too (:mod:`~fiftyone_ai_search.store.ranks`).

It runs in the background, never where a user waits (see
:meth:`fiftyone_ai_search.store.VectorStore.maintain`, which both backends
answer with :func:`maintain`). It asks of a store only what
:class:`Upkept` lists: a few reads of the public interface, and the backend
hooks that scan and write the points' payloads.
"""

import concurrent.futures
import dataclasses
import logging
import time
import uuid
from typing import Callable, Optional, Protocol

import numpy as np

from . import cells as cl
from . import priority
from . import products
from . import ranks
from .base import point_id_to_sample_id

logger = logging.getLogger(__name__)

#: points given their cell per round of :func:`maintain`: a round writes
#: once per cell present in it, so larger rounds make fewer, fuller writes
#: (at 1M points in 2,000 cells, rounds of 8192 made ~1,600 writes of ~5
#: points each, ~200k in all: ~60 s; rounds of 32768 ~41k writes, 17 s, and
#: 34 flushes of the shard at the rounds' ends, 13 s; rounds of 65536 about
#: half that). A round holds the index for ~2 s on 2 cores; searches of
#: other processes are answered meanwhile (serve.py)
ASSIGN_CHUNK = 65536

#: rows of a round converted and then given their cells at a time: the
#: cells of one stretch are computed (numpy's products, without the GIL,
#: on the other core) while the next stretch's vectors are converted out
#: of the engine's Python lists (one core). A multiple of the rows the
#: cells score at a time (cells._ROWS), so that every row is scored in the
#: same block, and gets the same cell, as without the stretches
ASSIGN_STRETCH = 8192

#: a maintenance pass that assigned this share of the points the cells were
#: learned from, or finds that many written since the last compaction
#: (points a writer gave their cell itself: a sync's), compacts the index
#: again: an engine that leaves new points outside its segments' order
#: scans them slower (Qdrant Edge: at 1M points, 100,000 of them made a
#: search 1.7x slower)
COMPACT_SHARE = 0.1

#: points given their rank per round: ids only, and larger rounds make
#: fewer, fuller groups (one write per rank present in a round)
RANK_CHUNK = 65536


class Upkept(Protocol):
    """What the upkeep asks of a store (a
    :class:`~fiftyone_ai_search.store.VectorStore`: see its methods and
    backend hooks of the same names)."""

    name: str
    #: the most seconds what a writer read of the cells can lag behind them
    _cells_read_age_s: float

    def session(self): ...

    def _round(self): ...

    def count(self) -> int: ...

    def estimate_count(self) -> int: ...

    def cells(self) -> Optional[cl.Cells]: ...

    def get_bucket_vectors(self, buckets): ...

    def _stored_rows(self, records, unit=True) -> np.ndarray: ...

    def _original_rows(self, records) -> np.ndarray: ...

    def _pass_reads_files(self) -> bool: ...

    def _points_lacking(self, key, limit, with_vector, values,
                        after=None): ...

    def _set_field(self, key, groups, lacking): ...

    def _write_cells(self, cells): ...

    def _read_vectors_ahead(self): ...

    def _ensure_rank_index(self): ...

    def _compact(self) -> Optional[bool]: ...

    def _compaction_owed(self) -> bool: ...

    def _written_since_compaction(self) -> int: ...

    def _shares_cpu(self) -> bool: ...

    def _give_way(self): ...


def maintain(store: Upkept, min_points: int = cl.MIN_POINTS, seed: int = 0,
             progress: Optional[Callable] = None, exact=None) -> int:
    """Background upkeep of the approximate search of ``store``: learns
    the cells once the index holds ``min_points`` points, and gives every
    point written without its cell the right one (see
    :meth:`fiftyone_ai_search.store.VectorStore.maintain`).

    ``exact`` (an :class:`~fiftyone_ai_search.store.audit.ExactTopK`, or
    None) takes the audit's exact answers in a pass that learns the cells:
    it reads every vector anyway (see :func:`_cells_of`).

    Returns:
        the number of points given a cell
    """
    known = store.cells()
    ranked = 0
    total = None
    if known is None:
        total = store.count()
    elif (known.complete and known.previous is None
          and len(known) < cl.MAX_CELLS):
        # only whether the index has doubled: an exact count costs
        # ~1.4 s at 10M points, each pass
        total = store.estimate_count()
    learned = known is None or (total is not None
                                and cl.outgrown(known, total))
    if learned:
        if total < max(min_points, 1):
            return 0
        # every point's vector is read below: from disk, while the ranks
        # are given and the cells learned (see the backend's hook)
        store._read_vectors_ahead()
        # the learning sample is drawn by rank: seeded, and no id list
        ranked = _give_ranks(store)
        known = _learn(store, total, seed, previous=known)
        if known is None:
            return 0
        # a writer that read the cells just before gives its points no
        # new cell; were it to replace a point between a round's read and
        # write below, that point would get its old vector's cell
        time.sleep(store._cells_read_age_s)

    # points lacking a cell of the newest cells: written without one,
    # or (cells learned again) still in one of the cells they replace
    lacking = [cl.UNASSIGNED]
    if known.previous is not None:
        lacking += list(known.previous.values())
    done = 0
    # each round's scan goes on after the last point the round before
    # gave a cell (both engines scroll in point id order): started from
    # the first point every round, the scans passed over the points
    # already done again and again (34 s of 200 s at 1M points). Points
    # written behind the scan meanwhile are found by one more scan from
    # the first point, which ends the pass when it finds none
    after = None
    # only a pass that learned gives every point its cell
    exact = exact.start(known) if learned and exact is not None else None
    # the worker scores every stretch into one block (cells.reuse_scores),
    # freed with it at the pass's end
    with concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="ai-search-assign",
            initializer=_assigner_start) as assigner:
        while True:
            records = _assign_round(store, known, lacking, after, assigner,
                                    exact)
            if records is None:
                if after is None:
                    break
                after = None
                continue
            after = max(str(r.id) for r in records)
            done += len(records)
            if progress is not None:
                progress(done, None)
    if not learned:
        # points written meanwhile by an older version, without a rank.
        # A pass that learned gave them theirs before (its sample is
        # drawn by rank), and a full scan finding none costs ~2 s at 1M
        # points: points written since, by such a version, get theirs
        # in the next pass
        ranked += _give_ranks(store)
    changed = done + ranked
    # (cells of an older version do not say how many points they were
    # learned from: the index's size then)
    share = COMPACT_SHARE * (known.learned_from or store.count())
    written = store._written_since_compaction()
    if (changed and (not known.complete or changed >= share)
            or (written and written >= share)
            or store._compaction_owed()):
        # each cell's points together, and quantized: the probed
        # cells are scanned 2-3x faster (measured at 300k points). A
        # backend may put it off (the embedded index, where it cannot
        # compact a copy beside and must do it in place, while another
        # process searches through it: nothing answers during the engine's
        # call); it is then owed, and a later pass compacts
        start = time.monotonic()
        compacted = store._compact() is not False
        logger.info("AI search index '%s': %d points given their cell, "
                    "%d their rank, %s", store.name, done, ranked,
                    f"compacted in {time.monotonic() - start:.1f} s"
                    if compacted else "compaction put off")
    if known.previous is not None:
        # the replaced cells go once no writer can still be using them
        # (what it read is seconds old); until then queries probe both
        if time.time() - known.learned_at >= cl.SWITCH_GRACE_S:
            store._write_cells(dataclasses.replace(
                known, previous=None, complete=True))
    elif not known.complete:
        store._write_cells(dataclasses.replace(known, complete=True))
    return done


def _assign_round(store, known, lacking, after, assigner, exact=None):
    """Gives their cell of ``known`` to the next :data:`ASSIGN_CHUNK`
    points lacking one (values ``lacking``), from the point id ``after``
    on, scored for ``exact`` too (see :func:`_cells_of`); returns their
    records, or None when there were none."""
    # one hold a round, from its reads to its writes (no writer comes
    # between: the cells are written without a guard on what the points
    # hold, see the backend's _set_field): an embedded index stays open
    # from one round to the next, else it would be closed and opened twice
    # a round (~2.5 s each at 1M points); it is still handed over between
    # rounds to whoever waits
    with store._round():
        # read a stretch at a time, each stretch's cells computed in
        # ``assigner`` while the next is scanned and read: at 1M points
        # the conversion out of the engine's lists (17 s) and the products
        # (11 s on 2 cores) took 28 s one after the other; where the
        # backend reads the vectors from its files (the embedded index),
        # the scans (107 s at 10M) overlap the products instead. A cell is
        # the most similar centre: any positive length
        records, pending = [], []
        # another process searches through this one: its answers are
        # computed here, on a core the products would otherwise take
        one_core = store._shares_cpu()
        while len(records) < ASSIGN_CHUNK:
            stretch = _next_stretch(
                store, lacking, after,
                min(ASSIGN_STRETCH, ASSIGN_CHUNK - len(records)))
            if not stretch:
                break
            # this process answers another's search now: its engine call
            # gets the cores, the reads and products of the pass wait
            store._give_way()
            pending.append(assigner.submit(
                _cells_of, known, store._original_rows(stretch), exact,
                one_core, store._give_way))
            records.extend(stretch)
            after = max(str(r.id) for r in stretch)
        if not records:
            return None
        where = np.concatenate([p.result() for p in pending])
        ids = [str(r.id) for r in records]
        # only points still lacking: one written again meanwhile got its
        # cell from its writer
        store._set_field(cl.CELL_KEY, _grouped(ids, where), lacking)
    return records


def _next_stretch(store, lacking, after, size):
    """The next ``size`` points lacking a cell (values ``lacking``) after
    the point id ``after`` (or from the first): a scan starts at the id
    it is given, and the points of the stretch before, read but not yet
    given their cell, still lack one."""
    more = after is not None
    records = store._points_lacking(cl.CELL_KEY, size + more,
                                    not store._pass_reads_files(), lacking,
                                    after)
    if more and records and str(records[0].id) == after:
        records = records[1:]
    return records[:size]


def _cells_of(known, rows, exact, one_core=False, give_way=None):
    """The cells of ``known`` of a stretch of ``rows``; and where the pass
    takes the audit's exact answers (``exact``, see
    :class:`~fiftyone_ai_search.store.audit.ExactTopK`), the rows scored
    against its queries, in the same worker thread (one product, no GIL):
    the audit's exact searches of every vector again cost 10.8 s of one
    core at 1M points (the engine holds the GIL), ~129 s at 10M.

    ``one_core``: the products on one BLAS thread, a core left to the
    searches another process makes through this one (see
    :func:`~.products.blas_threads`). ``give_way``: called first, waits while
    such a search is answered (see the backend's hook)."""
    if give_way is not None:
        give_way()
    with products.blas_threads(1 if one_core else None):
        where = known.assign(rows)
        if exact is not None:
            exact.add(rows, where)
    return where


def _assigner_start():
    """The pass's worker thread: its products at a low CPU priority (a
    search that another process asks this one meanwhile comes first:
    measured at 1M points beside a pass assigning 100,000 points, the
    searches' p95 22 ms against 15 ms, bench/README.md, issue 29), each
    into one block of scores (see :func:`~.cells.reuse_scores`)."""
    priority.lower_this_thread()
    cl.reuse_scores()


def _learn(store, total, seed, previous):
    """Learns and stores the cells of an index of ``total`` points
    (replacing the complete ``previous``, or None); returns them, or
    None for an empty index."""
    k = cl.num_cells(total)
    _, sample = store.get_bucket_vectors(learning_buckets(total, seed))
    k = min(k, len(sample))
    if not k:
        return None
    start = time.monotonic()
    centres = cl.learn(sample, k, seed=seed)
    known = cl.Cells(
        centres, generation=_new_generation(), learned_from=total,
        ordinal=0 if previous is None else previous.ordinal + 1,
        learned_at=time.time(), previous=previous)
    store._write_cells(known)
    logger.info("AI search index '%s': learned %d cells from %d of its %d "
                "points in %.1f s%s", store.name, k, len(sample), total,
                time.monotonic() - start,
                "" if previous is None else
                f" (it had {len(previous)}, learned from "
                f"{previous.learned_from} points)")
    return known


def learning_buckets(total, seed=0):
    """The rank buckets (see :mod:`~fiftyone_ai_search.store.ranks`) whose
    points the cells of an index of ``total`` points are learned from:
    the first of the seeded walk, ~:data:`cells.SAMPLE_PER_CELL` points a
    cell (~13% of the buckets from :data:`cells.MIN_POINTS` points, fewer
    past :data:`cells.MAX_CELLS`)."""
    wanted = min(total, cl.num_cells(total) * cl.SAMPLE_PER_CELL)
    return ranks.bucket_order(seed)[: ranks.buckets_for(wanted, total)]


def _give_ranks(store):
    """Gives their rank to points written without one (by a version
    before ranks); returns how many there were."""
    store._ensure_rank_index()
    ranked = 0
    while True:
        with store.session():
            records = store._points_lacking(ranks.RANK_KEY, RANK_CHUNK,
                                            False, ())
            if not records:
                return ranked
            ids = [str(r.id) for r in records]
            where = [ranks.rank_of(point_id_to_sample_id(i)) for i in ids]
            # a rank is a function of the id: nothing to guard against
            store._set_field(ranks.RANK_KEY, _grouped(ids, where), None)
        ranked += len(records)


def _grouped(ids, values):
    """``{value: [point id, ...]}`` of point ids and their values (sorted
    by value: one pass, not a dict lookup per point)."""
    values = np.asarray(values, dtype=np.int64)
    if not len(values):
        return {}
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    return {int(ordered[a]): [ids[i] for i in order[a:b].tolist()]
            for a, b in zip(starts.tolist(), ends.tolist())}


def _new_generation():
    """A random 62-bit number: cells learned again get another."""
    return uuid.uuid4().int >> 66
