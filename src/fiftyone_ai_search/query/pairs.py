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
that near. So the pass is, cell by cell (in the order of their values):

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

    def __init__(self):
        self._lo, self._hi, self._sim = [], [], []

    def add(self, rows_a, rows_b, sims, threshold, same=False):
        """Adds the pairs of ``sims`` (``len(rows_a) x len(rows_b)``) at or
        above ``threshold``; ``same``: both sides are one set (only the
        upper triangle counts)."""
        if same:
            sims = np.triu(sims, k=1) if len(sims) else sims
        ia, ib = np.nonzero(sims >= threshold)
        if not len(ia):
            return
        a, b = rows_a[ia], rows_b[ib]
        self._lo.append(np.minimum(a, b))
        self._hi.append(np.maximum(a, b))
        self._sim.append(sims[ia, ib].astype(np.float32))

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
    t = np.float32(threshold)
    reach = float(np.sqrt(max(0.0, 2.0 - 2.0 * float(threshold))))
    centres = np.asarray(cells.centres, dtype=np.float32)
    k = len(centres)
    # |a - b| of every two unit centres
    apart = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * (centres @ centres.T)))
    apart = apart.astype(np.float32)
    if probe is None or NEIGHBOURS >= k:
        # the whole band: every centre is a candidate (exact)
        candidates = np.broadcast_to(np.arange(k), (k, k))
    else:
        # the centres nearest each centre: a point's nearest few lie among
        # its own centre's nearest, and scoring every point against every
        # centre would cost as much as the rest (n x k x dim: ~40 min of
        # CPU at 1M points in 2,000 cells)
        candidates = np.argsort(apart, axis=1)[:, :NEIGHBOURS]
    found = Pairs()

    loose_ids, loose = read([cl.UNASSIGNED])
    seen = len(loose_ids)
    loose_rows = rows_of(loose_ids)
    keep = loose_rows >= 0
    loose, loose_rows = loose[keep], loose_rows[keep]
    if len(loose):
        _blocks(found, loose_rows, loose, loose_rows, loose, t, same=True)

    #: cell -> [(rows, vectors)] of earlier cells' points near its boundary
    waiting: dict[int, list] = {}
    offset = cells.offset
    for start in range(0, k, CELLS_PER_READ):
        values = list(range(start, min(k, start + CELLS_PER_READ)))
        ids, vectors = read([offset + c for c in values])
        seen += len(ids)
        rows = rows_of(ids)
        keep = rows >= 0
        rows, vectors = rows[keep], vectors[keep]
        if not len(rows):
            for c in values:
                waiting.pop(c, None)
            continue
        # the read's points by cell: the nearest centre among those read
        # is each one's cell (assigned so by the upkeep)
        own = np.asarray(values)[np.argmax(vectors @ centres[values].T,
                                           axis=1)]
        for c in values:
            mine = own == c
            x, xr = vectors[mine], rows[mine]
            if len(x):
                cand = candidates[c]
                _one_cell(found, c, x, xr, x @ centres[cand].T, cand,
                          apart[c, cand], reach, t, waiting, loose,
                          loose_rows, probe)
            waiting.pop(c, None)
        if progress is not None:
            progress(min(k, start + CELLS_PER_READ), k)
    lo, hi, sim = found.arrays()
    return lo, hi, sim, seen


def _one_cell(found, c, x, xr, near, cand, apart, reach, t, waiting, loose,
              loose_rows, probe):
    """Cell ``c``'s turn: its own pairs, against the points waiting for it
    and the loose points; its points near a later cell's boundary wait.
    ``near``: the points' similarity to the centres ``cand`` (``c``
    among them), ``apart``: those centres' distance to ``c``'s."""
    _blocks(found, xr, x, xr, x, t, same=True)
    batches = waiting.get(c)
    if batches:
        wr = np.concatenate([r for r, _ in batches])
        wx = np.concatenate([v for _, v in batches])
        _blocks(found, wr, wx, xr, x, t)
    if len(loose):
        _blocks(found, xr, x, loose_rows, loose, t)
    # x . (c - b) <= reach * |c - b|: within reach of b's boundary
    (mine,) = np.nonzero(cand == c)
    band = (near[:, mine] - near) <= reach * apart + SLACK
    if probe is not None and probe + 1 < near.shape[1]:
        # only each point's ``probe`` nearest other centres
        top = np.argpartition(-near, probe, axis=1)[:, : probe + 1]
        capped = np.zeros_like(band)
        np.put_along_axis(capped, top, True, axis=1)
        band &= capped
    band[:, cand <= c] = False  # earlier cells had their turn
    (later,) = np.nonzero(band.any(axis=0))
    for j in later:
        sel = band[:, j]
        waiting.setdefault(int(cand[j]), []).append((xr[sel], x[sel]))


def _blocks(found, ar, ax, br, bx, t, same=False):
    """The pairs of ``ax`` against ``bx`` (``same``: of ``ax`` among
    itself), a block of rows at a time: cells are uneven (a dense cluster
    makes a cell of thousands of points), and a whole cell's product of
    itself would take gigabytes."""
    for s in range(0, len(ax), BLOCK):
        if same:
            # the block against itself and the rows after it
            found.add(ar[s : s + BLOCK], ar[s:], ax[s : s + BLOCK] @ ax[s:].T,
                      t, same=True)
        else:
            found.add(ar[s : s + BLOCK], br, ax[s : s + BLOCK] @ bx.T, t)


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
