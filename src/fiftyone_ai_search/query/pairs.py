"""Every pair of near points of a large index, through its cells: the
near-duplicates of a million images without comparing every pair.

A pair ``x, y`` with similarity ``>= t`` (unit vectors) lies within
``r = sqrt(2 - 2t)`` of each other. When ``x`` is in cell ``a`` and ``y`` in
another cell ``b`` (a point's cell is its nearest centre), the boundary
between the two cells (the hyperplane of the points as near ``a`` as ``b``)
lies between them, so ``x`` is within ``r`` of it::

    x . (a - b) / |a - b|  <=  |x - y|  <=  r

That is a test on ``x`` alone, and it is exact, not a guess: the pairs of
``x`` outside its own cell can only be in the cells whose boundary it is
that near. So the pass is, cell by cell (next the cells the most points
wait for, so that they wait briefly):

- the pairs within the cell (one matrix product, ~500 x 500);
- the cell's points against the points of earlier cells that lay near
  this cell's boundary (kept from those cells' turns, then dropped);
- the cell's points near the boundary of a later cell are kept for its
  turn (one ``points x centres`` product says which);
- the points with no cell (written since the cells were learned) against
  every cell.

Memory holds a few cells, the points waiting for a later cell, and the
pairs found. Which neighbour cells a point is compared with follows from
the threshold and the geometry (the band above), capped to its
:data:`PROBE` nearest: CLIP-like cells are wide, so most points lie within
reach of several boundaries, and without the cap the points waiting grow
with the index. With the cap a pair is missed only where neither point's
few nearest cells hold the other's; ``bench/bench_duplicates.py`` measures
the pair recall, time and memory.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence

import numpy as np

from ..store import cells as cl

#: similarities are float32 products of float32 unit rows: a point's own
#: cell may be a centre a rounding error farther than another, so the
#: boundary test allows this much
SLACK = 1e-4

#: cells read from the index at once (one filtered read each round)
CELLS_PER_READ = 8

#: with :data:`PROBE`, a point's nearest cells are looked for among this
#: many centres nearest its own
NEIGHBOURS = 32

#: rows of a product computed at once (BLOCK x a cell's points, float32)
BLOCK = 1024

#: rows of a cell's product with itself computed at once: each block
#: against itself and the rows after it, so that little of the lower
#: triangle is computed (a cell of ~500 points in one block of 1,024 was
#: computed whole: twice its pairs)
SAME_BLOCK = 256

#: a point is compared with the points of at most this many other cells
#: (its nearest centres among those within reach). CLIP-like points lie
#: within reach of many boundaries (a cell is wide in 512-d), so the exact
#: band compares each with the points of many cells and keeps them waiting;
#: a near-duplicate's cell is among the few nearest. Measured in
#: ``bench/bench_duplicates.py`` (pair recall against every pair)
PROBE = 3


class Pairs:
    """The pairs found: row indexes ``lo < hi`` (into the visiting order)
    and their similarity, in arrays."""

    def __init__(self, threshold):
        self.threshold = np.float32(threshold)
        self._lo, self._hi, self._sim = [], [], []

    def add(self, rows_a, rows_b, sims, same=False):
        """Adds the pairs of ``sims`` (``len(rows_a) x len(rows_b)``) at or
        above the threshold; ``same``: both sides are one set (only the
        upper triangle counts)."""
        if not sims.size:
            return
        if same:
            # each point with itself is no pair (rows_b starts where
            # rows_a does: the diagonal)
            np.fill_diagonal(sims, -np.inf)
        # the rows holding a pair first: few do, and a row's largest value
        # costs less than marking every value of it (nonzero over the whole
        # product was ~10% of the pass)
        (hit,) = np.nonzero(sims.max(axis=1) >= self.threshold)
        if not len(hit):
            return
        ia, ib = np.nonzero(sims[hit] >= self.threshold)
        ia = hit[ia]
        if same:
            # the upper triangle, without copying the product to zero the
            # rest
            keep = ib > ia
            ia, ib = ia[keep], ib[keep]
        if not len(ia):
            return
        a, b = rows_a[ia], rows_b[ib]
        self._lo.append(np.minimum(a, b))
        self._hi.append(np.maximum(a, b))
        self._sim.append(sims[ia, ib].astype(np.float32))

    def saw(self, rows):
        """The pass read these rows (pairs need not know)."""

    def arrays(self):
        """``(lo, hi, sim)``, each pair once."""
        if not self._lo:
            return (np.zeros(0, np.int64), np.zeros(0, np.int64),
                    np.zeros(0, np.float32))
        lo = np.concatenate(self._lo)
        hi = np.concatenate(self._hi)
        sim = np.concatenate(self._sim)
        # a pair is found once, unless an id is in the index twice over
        _, first = np.unique(lo * (hi.max() + 1) + hi, return_index=True)
        return lo[first], hi[first], sim[first]


class Nearest:
    """Each row's ``k`` most similar other rows seen: their rows (``-1``
    where fewer were seen) and similarities, best first; and which rows the
    pass read (``present``: the others are not in the index)."""

    def __init__(self, n, k):
        self.k = k
        self.rows = np.full((n, k), -1, np.int64)
        self.sims = np.full((n, k), -np.inf, np.float32)
        self.present = np.zeros(n, dtype=bool)

    def saw(self, rows):
        """The pass read these rows."""
        self.present[rows] = True

    def add(self, rows_a, rows_b, sims, same=False):
        """Offers the similarities ``sims`` (``len(rows_a) x
        len(rows_b)``, a product of the caller's, changed in place) to both
        sides; ``same``: both sides are one set (``rows_b`` starts where
        ``rows_a`` does; the upper triangle counts, so that each pair is
        offered once each way)."""
        if same:
            m = len(sims)
            sims[:, :m][np.tril_indices(m)] = -np.inf
        self.offer(rows_a, sims, rows_b)
        self.offer(rows_b, sims, rows_a, axis=0)

    def offer(self, rows, sims, others, axis=1):
        """``sims[i]`` (``sims[:, i]`` with ``axis=0``): row ``rows[i]``'s
        similarity to ``others``. ``sims`` is left as it was."""
        if not sims.size:
            return
        top, values = _largest(sims, self.k, axis)
        both = np.concatenate([self.sims[rows], values], axis=1)
        ids = np.concatenate([self.rows[rows], others[top]], axis=1)
        # best first; on a tie the lower row (as the exact path orders)
        order = np.lexsort((ids, -both), axis=1)[:, : self.k]
        self.sims[rows] = np.take_along_axis(both, order, axis=1)
        picked = np.take_along_axis(ids, order, axis=1)
        self.rows[rows] = np.where(np.isfinite(self.sims[rows]), picked, -1)


def _largest(sims, k, axis):
    """The ``k`` largest values along ``axis`` of ``sims`` and where they
    are, each line's best first (``-inf`` where it has fewer than ``k``):
    ``k`` rounds of ``argmax``, each taking its pick out, then every pick
    put back. For the 3 nearest, 20x less than ``np.argpartition`` on a
    cell's product (which sorted a cell's product by rows and by
    columns: most of the uniqueness pass's time)."""
    lines = np.arange(sims.shape[1 - axis])
    where = np.empty((len(lines), k), np.int64)
    values = np.empty((len(lines), k), sims.dtype)
    at = (lambda i: (lines, i)) if axis == 1 else (lambda i: (i, lines))
    for j in range(k):
        where[:, j] = np.argmax(sims, axis=axis)
        values[:, j] = sims[at(where[:, j])]
        sims[at(where[:, j])] = -np.inf
    # put back last pick first: a line of fewer than k picked one place
    # again (as -inf), which its first pick must overwrite
    for j in reversed(range(k)):
        sims[at(where[:, j])] = values[:, j]
    return where, values


def nearest_by_cells(cells: cl.Cells,
                     read: Callable[[Sequence[int]], tuple],
                     rows_of: Callable[[list], np.ndarray],
                     n: int,
                     k: int = 3,
                     probe: Optional[int] = PROBE,
                     progress: Optional[Callable] = None):
    """Each point's ``k`` most similar other points, through the complete
    ``cells`` of an index: the pass of :func:`pairs_by_cells` with no
    threshold, so that a point is compared with its own cell's points and
    those of its ``probe`` nearest other cells (approximate: a neighbour
    beyond them is missed, and a farther one takes its place).

    Args:
        cells, read, rows_of, progress: as :func:`pairs_by_cells`
        n: how many rows ``rows_of`` maps to
        k (3): neighbours of each point
        probe (PROBE): as :func:`pairs_by_cells`; None: every cell (exact,
            every pair)

    Returns:
        ``(rows, sims, present, seen)``: ``(n, k)`` arrays of each row's
        neighbours (``-1`` where it has fewer) and similarities, best
        first; whether each row was read (in the index); and how many
        points were read
    """
    found = Nearest(n, k)
    seen = _pass(cells, read, rows_of, 2.0, found, probe, progress)
    return found.rows, found.sims, found.present, seen


def pairs_by_cells(cells: cl.Cells,
                   read: Callable[[Sequence[int]], tuple],
                   rows_of: Callable[[list], np.ndarray],
                   threshold: float,
                   probe: Optional[int] = None,
                   progress: Optional[Callable] = None):
    """The pairs of points at least ``threshold`` similar, through the
    complete ``cells`` of an index.

    Args:
        cells: complete cells (no earlier generation still in use)
        read: ``read(values)``: ``(ids, unit float32 vectors)`` of the
            points of those cell values
        rows_of: ``rows_of(ids)``: each id's row in the visiting order, or
            ``-1`` for a point left out (not in the view)
        threshold: the similarity, in (0, 1]
        probe (None): compare a point only with the points of its
            ``probe`` nearest other cells (those within reach of it);
            None: of every cell within reach (exact)
        progress (None): called as ``progress(done, total)`` (cells)

    Returns:
        ``(lo, hi, sim, seen)``: the pairs (see :class:`Pairs`) and how
        many points were read (the caller checks it against the index's
        count: a point without any cell key would be missed)
    """
    found = Pairs(threshold)
    reach = float(np.sqrt(max(0.0, 2.0 - 2.0 * float(threshold))))
    seen = _pass(cells, read, rows_of, reach, found, probe, progress)
    lo, hi, sim = found.arrays()
    return lo, hi, sim, seen


def _pass(cells, read, rows_of, reach, found, probe, progress):
    """The pass through the cells (see the module's docstring): offers the
    similarities of every two points within ``reach`` of each other (and
    of the boundary between their cells) to ``found``; returns how many
    points were read. ``read`` is called from a thread of the pass's own,
    one read at a time."""
    walk = _Walk(cells, found, reach, probe)
    loose_ids, loose = read([cl.UNASSIGNED])
    walk.take_loose(rows_of(loose_ids), loose)
    seen = len(loose_ids)
    offset = cells.offset
    # the next cells are read while this turn's are compared: a read is
    # mostly the engine's and the conversion of its floats (one core, a
    # third of the pass at 1M), the products run on every core
    with ThreadPoolExecutor(1, thread_name_prefix="ai-search-cells") as ahead:
        values = walk.next_cells(walk.done, 0)
        reading = ahead.submit(read, [offset + c for c in values])
        while values is not None:
            ids, vectors = reading.result()
            coming = walk.done.copy()
            coming[values] = True
            # chosen before this turn adds its waiting points: they wait
            # one read longer than they would otherwise
            upcoming = (None if coming.all()
                        else walk.next_cells(coming, values[-1]))
            if upcoming is not None:
                reading = ahead.submit(read, [offset + c for c in upcoming])
            seen += len(ids)
            walk.turn(values, rows_of(ids), vectors)
            if progress is not None:
                progress(int(walk.done.sum()), len(walk.done))
            values = upcoming
    return seen


class _Walk:
    """What a pass through the cells carries from one turn to the next:
    the points waiting for a cell, which cells had their turn, and the
    geometry of the centres."""

    def __init__(self, cells, found, reach, probe):
        self.found, self.reach, self.probe = found, reach, probe
        centres = np.asarray(cells.centres, dtype=np.float32)
        self.centres = centres
        k = len(centres)
        # |a - b| of every two unit centres
        self.apart = np.sqrt(np.maximum(
            0.0, 2.0 - 2.0 * (centres @ centres.T))).astype(np.float32)
        if probe is None or NEIGHBOURS >= k:
            # the whole band: every centre is a candidate (exact)
            self.candidates = np.broadcast_to(np.arange(k), (k, k))
        else:
            # the centres nearest each centre: a point's nearest few lie
            # among its own centre's nearest, and scoring every point
            # against every centre would cost as much as the rest (n x k x
            # dim: ~40 min of CPU at 1M points in 2,000 cells)
            self.candidates = np.argsort(self.apart, axis=1)[:, :NEIGHBOURS]
        #: cell -> [(rows, vectors)] of earlier cells' points near its
        #: boundary
        self.waiting: dict[int, list] = {}
        #: how many points wait for each cell, and the cells that had
        #: their turn
        self.pending = np.zeros(k, np.int64)
        self.done = np.zeros(k, dtype=bool)
        self.loose = np.zeros((0, centres.shape[1]), np.float32)
        self.loose_rows = np.zeros(0, np.int64)

    def take_loose(self, rows, vectors):
        """The points without a cell (written since the cells were
        learned): their pairs among themselves now, with each cell's
        points at its turn."""
        keep = rows >= 0
        self.loose, self.loose_rows = vectors[keep], rows[keep]
        self.found.saw(self.loose_rows)
        if len(self.loose):
            _blocks(self.found, self.loose_rows, self.loose,
                    self.loose_rows, self.loose, same=True)

    def next_cells(self, done, last):
        """The next :data:`CELLS_PER_READ` cells to visit, of those not
        ``done``: those the most points wait for, then the nearest to the
        cell ``last`` visited. A cell's points near a boundary wait for
        the cell beyond it; visiting in the order of cell values, they
        waited half the pass on average (gigabytes at 1M points).
        Following them, a cell's neighbours come while its points wait,
        so what waits stays the band of the cells around the ones just
        visited."""
        (left,) = np.nonzero(~done)
        order = np.lexsort((left, self.apart[last][left],
                            -self.pending[left]))
        return left[order[:CELLS_PER_READ]]

    def turn(self, values, rows, vectors):
        """The turn of the cells ``values``, whose points were read
        (``rows``: their rows, ``-1`` for those left out)."""
        keep = rows >= 0
        rows, vectors = rows[keep], vectors[keep]
        self.found.saw(rows)
        # the read's points by cell: the nearest centre among those read
        # is each one's cell (assigned so by the upkeep)
        own = (values[np.argmax(vectors @ self.centres[values].T, axis=1)]
               if len(rows) else rows)
        for c in values.tolist():
            self.done[c] = True
            mine = own == c
            if mine.any():
                self._one_cell(c, vectors[mine], rows[mine])
            self.waiting.pop(c, None)

    def _one_cell(self, c, x, xr):
        """Cell ``c``'s turn: its own pairs, against the points waiting
        for it and the loose points; its points near the boundary of a
        cell yet to come wait for it."""
        found = self.found
        _blocks(found, xr, x, xr, x, same=True)
        batches = self.waiting.get(c)
        if batches:
            wr = np.concatenate([r for r, _ in batches])
            wx = np.concatenate([v for _, v in batches])
            _blocks(found, wr, wx, xr, x)
        if len(self.loose):
            _blocks(found, xr, x, self.loose_rows, self.loose)
        cand = self.candidates[c]
        # the points' similarity to the candidate centres (c among them)
        near = x @ self.centres[cand].T
        # x . (c - b) <= reach * |c - b|: within reach of b's boundary
        (mine,) = np.nonzero(cand == c)
        band = ((near[:, mine] - near)
                <= self.reach * self.apart[c, cand] + SLACK)
        probe = self.probe
        if probe is not None and probe + 1 < near.shape[1]:
            # only each point's ``probe`` nearest other centres
            top = np.argpartition(-near, probe, axis=1)[:, : probe + 1]
            capped = np.zeros_like(band)
            np.put_along_axis(capped, top, True, axis=1)
            band &= capped
        band[:, self.done[cand]] = False  # those cells had their turn
        (later,) = np.nonzero(band.any(axis=0))
        for j in later:
            sel = band[:, j]
            self.waiting.setdefault(int(cand[j]), []).append(
                (xr[sel], x[sel]))
            self.pending[cand[j]] += int(sel.sum())


def nearest_every_pair(vectors: np.ndarray, k: int,
                       progress: Optional[Callable] = None) -> Nearest:
    """Each of ``vectors``' (unit rows) ``k`` most similar other rows,
    every pair compared (the exact path): a block of rows against all of
    them at a time, offered to the block's rows only (offering each
    product to both sides would take the top of every column of it);
    ``progress(done, total)`` (rows)."""
    n = len(vectors)
    found = Nearest(n, k)
    rows = np.arange(n)
    found.saw(rows)
    for s in range(0, n, BLOCK):
        block = rows[s : s + BLOCK]
        sims = vectors[block] @ vectors.T
        sims[np.arange(len(block)), block] = -np.inf  # not itself
        found.offer(block, sims, rows)
        if progress is not None:
            progress(int(block[-1]) + 1, n)
    return found


def _blocks(found, ar, ax, br, bx, same=False):
    """The pairs of ``ax`` against ``bx`` (``same``: of ``ax`` among
    itself), a block of rows at a time: cells are uneven (a dense cluster
    makes a cell of thousands of points), and a whole cell's product of
    itself would take gigabytes."""
    for s in range(0, len(ax), SAME_BLOCK if same else BLOCK):
        if same:
            # the block against itself and the rows after it
            e = s + SAME_BLOCK
            found.add(ar[s:e], ar[s:], ax[s:e] @ ax[s:].T, same=True)
        else:
            found.add(ar[s : s + BLOCK], br, ax[s : s + BLOCK] @ bx.T)


def group_pairs(n: int, lo: np.ndarray, hi: np.ndarray, sim: np.ndarray):
    """The near-duplicate groups of ``n`` rows from their pairs, by the
    rules of :func:`fiftyone_ai_search.duplicates.group`: rows are visited
    in order; a row not yet marked is kept and marks every later row it
    pairs with; each marked row belongs to the kept row it is most similar
    to (the first such row on a tie).

    Returns:
        ``(dup_rows, kept_rows, sims)``: each duplicate's row, its kept
        row, and their similarity
    """
    kept = np.ones(n, dtype=bool)
    if len(lo):
        order = np.argsort(lo, kind="stable")
        lo_s, hi_s = lo[order], hi[order]
        starts = np.flatnonzero(np.r_[True, lo_s[1:] != lo_s[:-1]])
        ends = np.r_[starts[1:], len(lo_s)]
        # a row's own mark is final when its turn comes: only earlier
        # rows mark it
        for s, e in zip(starts.tolist(), ends.tolist()):
            if kept[lo_s[s]]:
                kept[hi_s[s:e]] = False
    # each pair from both ends: (duplicate, kept partner)
    dup = np.concatenate([lo, hi])
    partner = np.concatenate([hi, lo])
    both = np.concatenate([sim, sim])
    use = ~kept[dup] & kept[partner]
    dup, partner, both = dup[use], partner[use], both[use]
    order = np.lexsort((partner, -both, dup))
    dup, partner, both = dup[order], partner[order], both[order]
    first = np.r_[True, dup[1:] != dup[:-1]] if len(dup) else np.zeros(
        0, bool)
    return dup[first], partner[first], both[first]


def named_groups(ids, dup_rows, kept_rows, sims):
    """The groups of :func:`group_pairs` (or of any duplicate -> kept
    assignment) by id: ``{kept_id: [(duplicate_id, similarity), ...]}``,
    each group most similar first (then by id)."""
    groups = {}
    for d, k, s in zip(np.asarray(dup_rows).tolist(),
                       np.asarray(kept_rows).tolist(),
                       np.asarray(sims, dtype=np.float64).tolist()):
        groups.setdefault(ids[k], []).append((ids[d], s))
    return {k: sorted(v, key=lambda t: (-t[1], t[0]))
            for k, v in groups.items()}
