"""Approximate search: k-means cells of an index, probed by each query.

Above :data:`MIN_POINTS` vectors, exact search costs more than it must
(~0.2 s a query at 1M 512-d vectors on 2 cores). HNSW, Qdrant's own
approximate index, keeps image queries' recall@100 near 0.98, but not text
queries': CLIP's modality gap puts every prompt far from all images, where
the graph's greedy walk stops early (recall 0.4-0.9 even at ef 512, measured
in ``bench/bench_scale.py``). So the approximate search is an inverted file
(IVF) kept *inside* Qdrant, which works alike for both backends:

- the vectors are split into cells by spherical k-means; every point carries
  its cell in the payload key :data:`CELL_KEY`; each cell's points lie
  together on disk (Qdrant's *principal* index: the cell's on a server,
  the :data:`PLACE_KEY` in the embedded index);
- a query ranks the cells by their centre's similarity to it, and scores
  *exactly* the points of the best :func:`num_probed` cells (a filter on
  the cell key): a text query's neighbours lie in the image cells nearest
  it, even far from all of them, so the recall of text and image queries
  alike stays >= 0.98 (``bench/bench_scale.py``);
- a point written while no cells were known, or by a process that did not
  know them yet, has cell :data:`UNASSIGNED`, which every query scans too:
  a new point is searchable at once, and the search is exact for it.

The centres are learned in the background (never in a user's sync or
search, see :func:`fiftyone_ai_search.store.VectorStore.maintain`) from a
seeded random sample (a few rank buckets, see
:mod:`fiftyone_ai_search.store.ranks`), once the index has
:data:`MIN_POINTS` points; the points
already there are then assigned their cell in batches. Only once every
point has a cell (or :data:`UNASSIGNED`) does a search use them, so a
maintenance pass killed at any line leaves a working (exact) index.

As the index grows, its cells are learned again (:func:`outgrown`): the new
cells are stored beside the old, every point written meanwhile gets a new
cell, the upkeep moves the others, and queries probe both until all have
moved (see :class:`Cells`). The index stays approximate, fast and right
throughout, and a move killed at any line resumes where it stopped.
"""

import dataclasses
import threading
from typing import Optional

import numpy as np

from . import products

#: the payload key of a point's cell
CELL_KEY = "cell"

#: the payload key an embedded index orders its points by when it compacts
#: them (its principal key): the stretch of the files the point lies in
#: once the pass that learned the cells wrote it, then its cell
#: (:func:`place`). Each cell's points lie together within a stretch, and
#: the engine copies one stretch after the other
PLACE_KEY = "place"

#: the places of one stretch: ``stretch * STRETCH_SPAN + cell value``
#: (cell values stay below ``2**40``: see :data:`SPAN`)
STRETCH_SPAN = 1 << 40

#: the cell of a point written while its index had no cells: scanned by
#: every query
UNASSIGNED = -1

#: below this many points every query is exact: measured on 2 cores, exact
#: search of 100k 512-d points takes ~25 ms, of 200k ~45 ms (the probed cells
#: ~25 ms), of 1M ~230 ms (the probed cells ~30 ms)
MIN_POINTS = 200_000

#: the cells are sized for ~this many points each
POINTS_PER_CELL = 500

#: fewest and most cells an index is split into
MIN_CELLS = 64
MAX_CELLS = 4096

#: each cell's centre is learned from ~this many sample points (faiss's
#: guidance: 39-256). 40, not 64: the sample's read is random reads of
#: the vectors (at 10M points 262k of them, 76 s of 1,127 s), and the cells
#: learned from 40 a cell hold as much of a query's top 100 at the same
#: probe depth (300k points, clip-b32 and gap-wide, two seeds each: text
#: recall@100 within 64 of 600 cells 0.9941-0.9959 against 0.9955-0.9956
#: and 0.9599-0.9668 against 0.9524-0.9664; bench/README.md)
SAMPLE_PER_CELL = 40

#: the share of cells a query scans, and the fewest. Text queries need a
#: number of cells more than a share: measured on Qdrant Edge (CLIP-like
#: 512-d points, 2 cores, recall@100 of text / image queries): 1M points in
#: 2000 cells, 90 probed 0.985 / 1.0, 110 probed 0.992 / 1.0 (~30 ms; exact
#: 230 ms); 300k in 600 cells, 30 probed 0.953 / 0.999; 200k in 500 cells,
#: 45 probed 0.966, 65 probed 0.985 / 0.996
PROBE_SHARE = 0.05
MIN_PROBED = 64

#: the most cells a query scans. Past MAX_CELLS the cells only grow, and a
#: fixed number of larger cells holds more of a query's neighbours: 10M
#: points in 4096 cells, 41 probed 0.985 / 1.0 (~30 ms), 82 probed 0.992 /
#: 1.0 (~60 ms), 205 probed (5%) 0.998 / 1.0 but ~165 ms
MAX_PROBED = 100

#: the same for a query that lies among the images (the centre of a small
#: cluster of a diverse search): its neighbours are in the few cells nearest
#: it. Measured (recall@100 of image queries): 210k points in 420 cells, 2
#: probed 0.999, 4 probed 1.0; 1M in 2000 cells, 40 probed 1.0 (see
#: bench/README.md)
NEAR_PROBE_SHARE = 0.01
MIN_NEAR_PROBED = 8

#: besides the audited rule's depth, a query scans every cell whose centre
#: scores within this much of its nearest centre's, at most TIE_CAP of
#: them (:func:`tied`): a floor for single queries. The rule holds a
#: *mean* recall; a query that lies where a dense cluster is split among
#: cells of near-equal centres finds its neighbours spread over all of
#: them, which the few cells of its band leave out (measured on the
#: bench's worlds: such image queries got recall@100 0.27-0.47)
TIE_MARGIN = 0.03

#: the most cells the floor of ties adds up to: the most the default rule
#: scans (:data:`MAX_PROBED`), so that no query costs more than it did
#: before the audit for its ties alone
TIE_CAP = MAX_PROBED

#: the int8 copy of the vectors (a Qdrant server's; the embedded index
#: keeps 4-bit codes, see ``edge._shard_config``) clips each coordinate to
#: this quantile
QUANTILE = 0.99

#: a search of the probed cells scores this many times ``limit`` points on
#: the quantized copy, and rescores those on the original vectors. The
#: 4-bit codes of the embedded index lose a little of the order that int8
#: kept at 2x: measured at 1M points (gap-wide, 85k points probed), text
#: recall@100 within the probed cells 0.9972 at 2x, 1.000 at 4x, for 0.17
#: ms more CPU a search (bench/README.md, issue 25)
OVERSAMPLING = 4.0

#: k-means (Lloyd) iterations on the sample
ITERATIONS = 12

#: the values of one generation of cells: ``ordinal * SPAN + cell``
SPAN = 1 << 20

#: cells are learned again once the index holds this many times the points
#: they were learned from, and would be split into more cells: cells learned
#: at 200k points would otherwise hold ~25k points each at 10M, and every
#: query would scan 5% of 10M points instead of ~2,000 cells' worth
RELEARN_GROWTH = 2.0

#: the cells replaced by a new learning stay probed for at least this long
#: after it (seconds): a process writing points uses what it read of the
#: cells, which is at most a few seconds old (the server backend caches it
#: for ``CELLS_TTL``)
SWITCH_GRACE_S = 60.0


def place(values, stretches=0):
    """The places (:data:`PLACE_KEY`) of points of cell ``values`` in
    ``stretches`` of the files (0: the first, or not known)."""
    return (np.asarray(values, dtype=np.int64)
            + np.asarray(stretches, dtype=np.int64) * STRETCH_SPAN)


def num_cells(num_points):
    """How many cells an index of ``num_points`` points is split into."""
    return int(np.clip(round(num_points / POINTS_PER_CELL), MIN_CELLS,
                       MAX_CELLS))


def outgrown(cells, num_points):
    """Whether an index of ``num_points`` points has outgrown its complete
    ``cells``: it holds :data:`RELEARN_GROWTH` times the points they were
    learned from, and would be split into more cells."""
    return (cells.complete and cells.previous is None
            and num_points >= RELEARN_GROWTH * max(cells.learned_from, 1)
            and num_cells(num_points) > len(cells))


def num_probed(cells, near=False):
    """How many of ``cells`` cells a query scans; ``near``: a query among
    the images (see :data:`NEAR_PROBE_SHARE`)."""
    share, least = ((NEAR_PROBE_SHARE, MIN_NEAR_PROBED) if near
                    else (PROBE_SHARE, MIN_PROBED))
    probed = max(least, round(share * cells))
    return int(min(cells, probed if near else min(probed, MAX_PROBED)))


@dataclasses.dataclass(frozen=True)
class Cells:
    """The cells of an index.

    A point's cell is stored as a *value* that also names the cells'
    generation: ``ordinal * SPAN + cell``. Cells learned again (the index
    grew, see :data:`RELEARN_GROWTH`) get the next ordinal, and keep the
    cells they replace as :attr:`previous` until every point has moved:
    meanwhile a query probes both (each point is in one), so searches keep
    their recall and speed through the move, and a move killed at any line
    leaves a working index.

    Args:
        centres: a ``(k, dim)`` float32 array of unit centres
        generation: a number that changes whenever the cells are learned
            again, so a process notices new cells
        complete (False): whether every point of the index has a cell of
            these (or :data:`UNASSIGNED`)
        learned_from (0): how many points the index held when they were
            learned
        ordinal (0): how many times the index's cells were learned before
        learned_at (0.0): when they were learned (``time.time()``)
        previous (None): the complete cells these replace, while points
            still carry those
        rule (None): the probe rule the index's self-audit chose for these
            cells, with what it measured (see
            :mod:`~fiftyone_ai_search.store.audit`): how many cells a
            query scans, by how near its nearest centre lies
    """

    centres: np.ndarray
    generation: int
    complete: bool = False
    learned_from: int = 0
    ordinal: int = 0
    learned_at: float = 0.0
    previous: Optional["Cells"] = None
    rule: Optional[dict] = None

    def __len__(self):
        return len(self.centres)

    @property
    def offset(self):
        """The value of cell 0 of these cells."""
        return self.ordinal * SPAN

    @property
    def searchable(self):
        """Whether a query may scan only probed cells: every point has a
        cell of these, of :attr:`previous`, or :data:`UNASSIGNED`."""
        return self.complete or self.previous is not None

    def values(self):
        """The values of all these cells."""
        return range(self.offset, self.offset + len(self))

    def generations(self):
        """These cells and, while points move, the ones they replace."""
        return [self] + ([] if self.previous is None else [self.previous])

    def to_dict(self):
        """What is kept beside the centres (JSON)."""
        return {"generation": self.generation, "complete": self.complete,
                "learned_from": self.learned_from, "count": len(self),
                "ordinal": self.ordinal, "learned_at": self.learned_at,
                "previous": (None if self.previous is None
                             else self.previous.to_dict()),
                "rule": self.rule}

    @classmethod
    def from_dict(cls, meta, centres_of):
        """The cells of :meth:`to_dict`'s ``meta``, their centres read by
        ``centres_of(meta)`` (None if they are gone: then None)."""
        previous = None
        if meta.get("previous"):
            previous = cls.from_dict(meta["previous"], centres_of)
            if previous is None:
                return None
        centres = centres_of(meta)
        if centres is None:
            return None
        return cls(centres, generation=int(meta["generation"]),
                   complete=bool(meta["complete"]),
                   learned_from=int(meta.get("learned_from", 0)),
                   ordinal=int(meta.get("ordinal", 0)),
                   learned_at=float(meta.get("learned_at", 0.0)),
                   previous=previous, rule=meta.get("rule"))

    def assign(self, vectors):
        """The cell value of each of the unit ``vectors`` (``(n, dim)``):
        the cell with the most similar centre."""
        return _nearest_centres(vectors, self.centres) + self.offset

    def probe(self, vector, count=None, near=False, centre=False):
        """The cell values a query ``vector`` scans: :data:`UNASSIGNED`, the
        ``count`` cells whose centres are most similar to it, and those
        :attr:`previous` probes by itself; or None where the query is to
        be exact (the audited rule says no number of cells within its cost
        bound holds the recall for queries like it).

        ``count`` defaults to what the audited :attr:`rule` says for a
        query whose nearest centre lies as near as this one's, else
        :func:`num_probed` (of ``near``: a query among the images).

        ``centre``: the query is the centre of a group of images (a
        diverse search's cluster), which asks for a representative of the
        group, not for a prompt's top-k: it scans at most what a query away
        from the images scans before any audit (:func:`num_probed`), never
        every point, where the rule would scan more. (At 1M, where the
        rule made the prompts' band exact, a diverse search of 10 clusters
        made 10 exact searches: 1.6-1.8 s alone, 2.7-3.9 s beside a
        writer; scanning the cost bound, 40% of the cells, 2.1 s alone and
        3.5 s beside; with the band at 601 cells, 1.4 s and 2.4 s.)"""
        scores = products.scores(self.centres, vector)
        nearest = None
        if count is None:
            if self.rule is not None and not near:
                # each numpy call is ~3-10 us of a search whose own scan is
                # ~0.25 ms (an image's, 2-3 cells at 1M): the best score
                # found once, the gaps made only for a band with a spread
                nearest = int(np.argmax(scores))
                best_score = float(scores[nearest])
                ties = tied(scores, best_score)
                count = rule_depth(self.rule, best_score, ties,
                                   lambda: best_score - scores)
                if centre:
                    # at most what a query away from the images probes
                    # unaudited (the rule's depths hold a prompt's
                    # recall@100), within the cost bound, at least its
                    # ties (as any band's depth)
                    most = max(min(self.rule.get("cap") or len(self),
                                   num_probed(len(self))), ties)
                    count = most if count is None else min(count, most)
                if count is None:
                    return None
            else:
                count = num_probed(len(self), near)
        if count == 1 and nearest is not None:
            # no other centre within TIE_MARGIN of it (tied() is 1): the
            # one cell argpartition would pick
            best = np.array([nearest])
        elif count < len(scores):
            best = np.argpartition(-scores, count - 1)[:count]
        else:
            best = np.arange(len(scores))
        # in numpy: a generator over ~120 cells (a property read each)
        # cost ~0.03 ms a search, this 0.004
        probed = [UNASSIGNED] + (np.sort(best) + self.offset).tolist()
        if self.previous is not None:
            probed += self.previous.probe(vector, near=near,
                                          centre=centre)[1:]
        return probed


def rule_depth(rule, nearest, ties=0, gaps=None):
    """How many cells an audited ``rule`` (see
    :mod:`~fiftyone_ai_search.store.audit`) probes for a query whose
    nearest centre scores ``nearest``: the depth of the band it falls in
    (bands beyond the audited range take the nearest band's), at least its
    ``ties`` (see :func:`tied`), and at least the cells whose centre scores
    within the band's *spread* of its nearest centre's (``gaps``: the
    nearest centre's score minus each cell's, any order, or a function
    that makes them, called only for a band with a spread; a rule from
    before spreads has none), at most the rule's ``cap``; None for exact.

    The spread makes the depth a query's own: where its centres' scores
    fall away fast its neighbours lie in few cells, where they stay flat
    (a prompt far from every image, between clusters) in many. Measured
    on bench_audit.py's clip-b32 world at 300k (the tune member; the
    audit choosing per band the pair of depth and spread that scans the
    fewest cells; bench/README.md, 2026-12-06): prompts 3.9 ms CPU a
    search against 7.3 with depths alone (recall@100 0.9923 against
    0.9951), images 1.7 against 2.8 ms (0.9967 against 0.9956); on
    gap-wide, not tuned on, the same CPU within the noise."""
    band = min(int(np.searchsorted(rule["edges"], nearest, side="right")),
               len(rule["depths"]) - 1)
    depth = rule["depths"][band]
    if depth is None:
        return None
    spreads = rule.get("spreads")
    if spreads and gaps is not None and spreads[band] > 0:
        if callable(gaps):
            gaps = gaps()
        within = int(np.count_nonzero(np.asarray(gaps)
                                      <= spreads[band] + SPREAD_EPS))
        depth = max(depth, min(within, rule.get("cap", within)))
    return max(depth, ties)


#: scores within this of a spread count as within it (float32 centres)
SPREAD_EPS = 1e-6


def tied(scores, best=None):
    """How many cells tie with a query's nearest, of its ``scores``
    against the centres: those whose centre scores within
    :data:`TIE_MARGIN` of the best (``best``: its score, where the caller
    has it; itself included), at most :data:`TIE_CAP`."""
    if best is None:
        best = float(scores.max())
    return int(min(TIE_CAP, np.count_nonzero(scores >= best - TIE_MARGIN)))


#: rows scored against the centres at a time (bounds the memory of a
#: ``(rows, k)`` score matrix)
_ROWS = 8192

#: below this many multiply-adds (rows x centres x dim) k-means' learning
#: scores in float32 with numpy alone: its bfloat16 products pay from ~0.1 s
#: of work (and cost an ``import torch`` once per process, where the model
#: has not loaded it already)
_FAST_MIN_WORK = 1 << 30

#: whether torch's bfloat16 products can be used (None: not yet known)
_bf16 = None

#: the block of scores a thread writes its products into, kept from one
#: call to the next where the thread asked for it (:func:`reuse_scores`)
_kept = threading.local()


def reuse_scores():
    """Has the calling thread score every later call of
    :meth:`Cells.assign` into one block of scores kept from one call to
    the next, instead of a new one each call.

    For a thread that assigns many stretches of points and then ends (the
    upkeep's worker, see :func:`fiftyone_ai_search.store.upkeep.maintain`):
    the block lives as long as the thread, up to ``_ROWS x cells`` float32
    (128 MB at 4,096 cells). A new block a call is mapped and zeroed by the
    kernel each time, page by page.
    """
    _kept.block = np.empty((0, 0), dtype=np.float32)


def _score_block(rows, k):
    """A ``(rows, k)`` float32 block of this thread's kept block (grown as
    needed), or None where the thread keeps none."""
    block = getattr(_kept, "block", None)
    if block is None:
        return None
    if block.shape[1] != k or len(block) < rows:
        block = np.empty((max(rows, len(block)), k), dtype=np.float32)
        _kept.block = block
    return block[:rows]


def _bf16_matmul():
    """torch, where its bfloat16 matrix products run natively on this CPU
    (AVX512-BF16; emulated elsewhere, and slower): else None."""
    global _bf16
    if _bf16 is None:
        _bf16 = False
        try:
            import torch  # start-up: torch

            if (torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
                _bf16 = torch
        except Exception:  # no torch, or one without these
            pass
    return _bf16 or None


def _nearest_centres(vectors, centres, exact=True):
    """The index of the most similar centre of each row of ``vectors``
    (float32 products).

    ``exact=False`` (k-means' learning, where a point at a cell's border
    may go either way) scores large inputs in bfloat16 where the CPU does
    so natively: the nearest centre up to bfloat16's precision (~0.01).
    Measured at 1M points in 2,000 cells (2 shared cores under load): the
    float32 assignment took 28.5 s of CPU; one with a bfloat16 first pass
    and float32 decisions at the borders 36.8 s (a point's nearest and
    second nearest centres often differ by less than bfloat16 can tell),
    so the assignment stays float32.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    out = np.empty(len(vectors), dtype=np.int64)
    torch = (_bf16_matmul() if not exact
             and vectors.size * len(centres) >= _FAST_MIN_WORK else None)
    if torch is not None:
        ct = torch.from_numpy(np.ascontiguousarray(
            centres, dtype=np.float32)).to(torch.bfloat16).T.contiguous()
    for start in range(0, len(vectors), _ROWS):
        part = vectors[start : start + _ROWS]
        if torch is None:
            scores = _score_block(len(part), len(centres))
            if scores is None:
                scores = part @ centres.T
            else:
                np.matmul(part, centres.T, out=scores)
            out[start : start + len(part)] = np.argmax(scores, axis=1)
        else:
            scores = torch.from_numpy(np.ascontiguousarray(part)).to(
                torch.bfloat16) @ ct
            out[start : start + len(part)] = scores.max(dim=1).indices.numpy()
    return out


def learn(sample, k, seed=0, iterations=ITERATIONS):
    """Spherical k-means of the unit rows of ``sample`` into ``k`` centres.

    A cell left empty by an iteration restarts from the sample point its
    centre fits worst (the one least similar to its own centre), so all
    ``k`` cells hold points.

    The first iterations, which move the centres most, use part of the
    sample (:func:`_learning_share`: a quarter, then half), the last two
    all of it: ~5.5 passes over the sample instead of 12 (k-means on the
    sample was the largest cost of ``maintain`` at 1M points).

    Args:
        sample: an ``(n, dim)`` float32 array of unit rows, ``n >= k``
        k: the number of centres
        seed (0): the random seed of the initial centres
        iterations (ITERATIONS): Lloyd iterations

    Returns:
        a ``(k, dim)`` float32 array of unit centres
    """
    from scipy import sparse  # start-up: SciPy

    x = np.ascontiguousarray(sample, dtype=np.float32)
    n = len(x)
    if not 0 < k <= n:
        raise ValueError(f"Cannot learn {k} cells from {n} points")
    rng = np.random.default_rng(seed)
    centres = x[rng.choice(n, size=k, replace=False)].copy()
    shuffled = x[rng.permutation(n)]
    for i in range(iterations):
        used = max(min(n, k * MIN_LEARNING_PER_CELL),
                   int(n * _learning_share(i, iterations)))
        part = shuffled[:used]
        labels = _nearest_centres(part, centres, exact=False)
        # the sum of each cell's points, as one sparse product
        member = sparse.csr_matrix(
            (np.ones(used, dtype=np.float32), (labels, np.arange(used))),
            shape=(k, used))
        sums = np.asarray(member @ part)
        sizes = np.bincount(labels, minlength=k)
        empty = np.flatnonzero(sizes == 0)
        if len(empty):
            fit = np.einsum("ij,ij->i", part, centres[labels])
            worst = np.argsort(fit)[: len(empty)]
            sums[empty] = part[worst]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centres = (sums / np.maximum(norms, 1e-12)).astype(np.float32)
    return centres


#: the fewest sample points per centre that an early iteration of
#: :func:`learn` uses
MIN_LEARNING_PER_CELL = 16


def _learning_share(iteration, iterations):
    """The share of the sample that k-means' ``iteration`` (0-based, of
    ``iterations``) uses: all of it for the last two, half for the four
    before, a quarter before those."""
    left = iterations - 1 - iteration
    return 1.0 if left < 2 else 0.5 if left < 6 else 0.25
