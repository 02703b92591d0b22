"""The approximate search audits its own recall, on the data it holds.

No generator of test vectors stands in for a user's embeddings: how many
cells a query must scan to find its true top-k depends on how the data
lies, and above all on the kind of query. An image query sits among the
images, and its neighbours fill the two or three cells nearest it; a
prompt sits across CLIP's modality gap, far from every image, and its
top-100 spreads over tens of cells (measured from outside: a median of
~500 of 2,000 cells to hold all of it on one CLIP-like set).

So after the cells are learned (and again as the index grows) the index
measures itself, in the background (:func:`audit`):

1. queries of both kinds that the data itself provides: a seeded sample
   of the stored vectors apart from those the cells were learned from
   (image queries), prompts encoded by the index's
   own model (text queries, given by the caller), and the user's recent
   searches that the index kept (see :mod:`~fiftyone_ai_search.store.recent`);
2. for each, the exact top-k (exact searches, a batch at a time), and
   the rank of each neighbour's cell in the query's order of cells: so the
   recall at every probe depth at once, with no approximate search run;
3. a probe rule: queries are banded by how near their nearest centre lies
   (the modality gap shows there: prompts score lower), and each band gets
   a depth and a spread (a query scans the depth's nearest cells and every
   cell whose centre scores within the spread of its nearest's), the pair
   that scans the fewest cells while the mean recall@k holds
   :data:`TARGET` (with :data:`MARGIN`) for each kind of query in it; a
   band that needs more than :data:`MAX_SHARE` of the cells is searched
   exactly;
4. estimates: the recall each kind of query gets under the rule, measured
   on queries that did not choose it (leave-one-out), with a 95% lower
   bound; a kind whose estimate falls below :data:`TARGET` gets a larger
   margin until it holds or its bands are exact (:func:`settle`).

The rule and the estimates are stored with the cells
(:attr:`~fiftyone_ai_search.store.cells.Cells.rule`): every process that
searches uses them, and ``get_status`` shows them. A query that the rule
leaves exact is as correct as an index without cells, and as slow.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

import dataclasses
import time

import numpy as np

from . import cells as cl
from . import products
from . import ranks

#: the recall@k the rule must hold, on average, for every kind of query
TARGET = 0.98

#: chosen for TARGET + MARGIN on the audited queries: what they do not
#: show (other prompts, other images) gets some room. Set on the tune
#: members of bench/bench_audit.py: at 0.005, image queries of the
#: clip-b32 world got 0.982 where the audit chose for 0.985
MARGIN = 0.01

#: the k of recall@k (the default limit of a search)
K = 100

#: how many stored vectors are audited as image queries. The error of an
#: image estimate is the spread of its sample over a heavy tail (~1.5% of
#: images lose 30-60% of their top-100 at 2-3 cells): in 20 audits of
#: bench_audit.py's clip-b32 world at 300k, 100 images left 1 audit off
#: the truth by just over 0.01, 200 none (worst 0.005). Their exact top-k
#: costs nothing after a pass that learns the cells (ExactTopK), ~0.05 s
#: of one core a query at 1M points where the audit searches
IMAGE_QUERIES = 200

#: bands of queries by the score of their nearest centre
BANDS = 4

#: a band that needs more than this share of the cells is exact: scanning
#: more costs about as much as scanning everything
MAX_SHARE = 0.4

#: the index is audited again once it has grown by this share
REAUDIT_GROWTH = 0.25

#: generic prompts of everyday photographs: text queries of the audit when
#: the caller has none of the user's own. Encoded by the index's model
#: they lie where prompts lie, across the modality gap
GENERIC_PROMPTS = (
    "a photo of a person", "a photo of a dog", "a photo of a cat",
    "a photo of a car", "a photo of a bicycle", "a photo of a bird",
    "a photo of a house", "a photo of a tree", "a photo of food",
    "a photo of a street", "a photo of a beach", "a photo of a mountain",
    "a photo of a city at night", "a photo of a child playing",
    "a photo of a group of people", "a close-up photo of a face",
    "a photo of a kitchen", "a photo of a living room", "a photo of an "
    "office", "a photo of a bus", "a photo of a train", "a photo of an "
    "airplane", "a photo of a boat", "a photo of a horse", "a photo of a "
    "flower", "a photo of a computer", "a photo of a phone", "a photo of a "
    "book", "a photo of a sports game", "a photo of a river",
    "a photo of snow", "a photo of a forest", "a photo of a road",
    "a photo of a bridge", "a photo of a shop", "a photo of a table",
    "a photo of a chair", "a photo of a bed", "a photo of a window",
    "a photo of a sign", "a red object", "a blue object", "a green object",
    "a yellow object", "something round", "something square",
    "a small object on a plain background", "a blurry photo",
    "a dark photo", "a bright photo", "a drawing", "a screenshot",
    "a photo of text", "a photo of an animal", "a photo of a vehicle",
    "a photo of a building", "a photo of nature", "an object in the centre",
    "many small objects", "an empty scene",
)


@dataclasses.dataclass
class _Measured:
    """One audited query: its kind, the score of its nearest centre, and
    the sorted probe ranks of its exact top-k's cells (0 = the nearest
    cell; points without a cell rank 0: every query scans them)."""

    kind: str
    nearest: float
    ranks: np.ndarray
    #: how many cells tie with its nearest (see cells.tied): it scans at
    #: least these
    ties: int = 0
    #: its nearest centre's score minus the others', ascending, as far as
    #: the cost bound (see :func:`_measure`): the cells a spread holds
    gaps: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(1))

    def recall(self, depth):
        """Its recall@k when the ``depth`` nearest cells are scanned (None:
        exact)."""
        if depth is None or not len(self.ranks):
            return 1.0
        return float(np.searchsorted(self.ranks, depth, side="left")
                     / len(self.ranks))


def due(known, num_points):
    """Whether complete ``known`` cells of an index of ``num_points``
    points want an audit: none yet, or the index grew by
    :data:`REAUDIT_GROWTH` since."""
    if known is None or not known.complete or known.previous is not None:
        return False
    rule = known.rule
    return rule is None or num_points >= (1 + REAUDIT_GROWTH) * rule["points"]


def audit(store, text_vectors, seed=0, k=K, image_queries=IMAGE_QUERIES,
          exact=None):
    """Measures the recall of the approximate search of ``store`` on its
    own data, chooses the probe rule that holds :data:`TARGET`, and stores
    both with its cells.

    The text queries are ``text_vectors`` and the user's recent queries
    that the index recorded (see
    :meth:`~fiftyone_ai_search.store.VectorStore.recent_queries`): a recent
    query that lies among the images (a search by a sample, say) counts as
    an image query.

    Args:
        store: a :class:`~fiftyone_ai_search.store.VectorStore` whose cells
            are complete
        text_vectors: an ``(n, dim)`` array of prompts encoded by the
            index's model (e.g. :data:`GENERIC_PROMPTS`)
        seed (0): the seed of the sample of image queries
        k (K): the k of recall@k
        image_queries (IMAGE_QUERIES): how many stored vectors to audit
        exact (None): an :class:`ExactTopK` that the upkeep pass which
            learned the cells gathered: its queries and their exact top-k
            are used where it read every point of these cells (else the
            audit draws its queries and searches them exactly)

    Returns:
        the rule stored (a dict, see :func:`choose`), or None when the
        index has no complete cells
    """
    known = store.cells()
    if known is None or not known.complete or known.previous is not None:
        return None
    start = time.monotonic()
    num_points = store.count()
    found = None
    if exact is not None and exact.holds(known, num_points, k):
        # the queries whose exact top-k the pass took, and its answers
        queries, kinds = exact.queries, exact.kinds
        found = exact.neighbour_cells()
    else:
        queries, kinds = _queries(store, num_points, text_vectors, seed,
                                  image_queries)
    recent = kinds.count("recent")
    # all at once: the exact searches of a batch share a pass over the
    # points (see _measure)
    measured = _measure(store, known, queries, kinds, k, found)
    if recent:
        floor = _image_floor(measured)
        for m in measured:
            if m.kind == "recent":
                m.kind = "image" if m.nearest >= floor else "text"
    rule, estimates = settle(measured, len(known))
    rule.update(
        k=k, target=TARGET, points=num_points, measured_at=time.time(),
        seconds=round(time.monotonic() - start, 3), recent=recent,
        estimates=estimates,
        # where the exact top-k came from: the upkeep pass that read every
        # vector (its share of that pass: exact.seconds), or exact searches
        truth="pass" if found is not None else "searches",
    )
    now = store.cells()
    if now is None or now.generation != known.generation:
        return None  # learned again meanwhile: its own audit follows
    store._write_cells(dataclasses.replace(now, rule=rule))
    return rule


def _queries(store, num_points, text_vectors, seed, image_queries):
    """The audit's queries of ``store`` (``num_points`` points): unit rows
    and their kinds (``image``, ``text``, ``recent``): a seeded sample of
    its vectors (see :func:`image_buckets`), ``text_vectors``, and the
    user's recent queries that the index kept."""
    _, images = store.get_bucket_vectors(
        image_buckets(num_points, image_queries, seed))
    images = images[:image_queries]
    texts = _unit(np.atleast_2d(text_vectors))
    recent = store.recent_queries()
    return (np.concatenate([images, texts, _unit(recent)]),
            ["image"] * len(images) + ["text"] * len(texts)
            + ["recent"] * len(recent))


class ExactTopK:
    """The exact top-k of the audit's queries, taken by the upkeep pass
    that learns the cells (see
    :func:`~fiftyone_ai_search.store.upkeep.maintain`'s ``exact``).

    That pass reads every vector to give it its cell; the audit after it
    searched every vector again, exactly, for each of its queries (at 1M
    points 10.8 s of one core for 200 queries, the engine holding the GIL;
    ~129 s at 10M). The queries are known before the pass, so as each
    stretch of vectors is given its cells (in the pass's worker thread:
    numpy's product, without the GIL) it is also scored against them, and
    each query keeps its running top-k with those points' cells: what the
    audit wants of its exact searches (see :func:`_measure`).

    It stands for the exact searches only where the pass read every point
    of the cells the audit measures, once: :meth:`holds`. A pass that
    assigns only new points, or an index written to during the pass
    (points given their cell by their writer, not read by the pass; points
    deleted or written twice), leaves the audit its exact searches.

    Equal scores: the point read first is kept (the exact search's choice
    among equal scores is the engine's; equal vectors have the same cell,
    so the estimate does not depend on it).

    Args:
        store: the store the pass maintains
        text_vectors: the text queries (see :func:`audit`), or a callable
            that gives them: called only once the pass has learned cells
        seed (0): the seed of the sample of image queries
        k (K): the k of recall@k
        image_queries (IMAGE_QUERIES): how many stored vectors to audit
    """

    def __init__(self, store, text_vectors, seed=0, k=K,
                 image_queries=IMAGE_QUERIES):
        self._store = store
        self._texts = text_vectors
        self._seed = seed
        self.k = k
        self._image_queries = image_queries
        self.queries = None
        self.kinds = None
        #: the generation of the cells the pass assigned
        self.generation = None
        #: points scored
        self.seen = 0
        #: CPU seconds its scoring took in the pass (the worker thread's)
        self.seconds = 0.0
        # each query's best k so far, best first: scores, and cells (-1:
        # none yet)
        self._scores = self._cells = None

    def texts(self):
        """The text queries (encoded once)."""
        if callable(self._texts):
            self._texts = self._texts()
        return self._texts

    def start(self, known):
        """Draws the audit's queries: called by the pass once it has
        learned ``known``, before it assigns every point to them."""
        store = self._store
        self.queries, self.kinds = _queries(
            store, store.count(), self.texts(), self._seed,
            self._image_queries)
        self.queries = np.ascontiguousarray(self.queries, dtype=np.float32)
        self.generation = known.generation
        self.seen = 0
        n = len(self.queries)
        self._scores = np.full((n, self.k), -np.inf, dtype=np.float32)
        self._cells = np.full((n, self.k), -1, dtype=np.int64)
        return self

    def add(self, rows, cells):
        """Scores the stored ``rows`` (as the engine scores them: as stored,
        unit up to float32 rounding) given ``cells``, against the queries,
        and keeps each query's best k."""
        began = time.thread_time()
        self.seen += len(rows)
        if not len(rows) or not len(self.queries):
            return
        scores = self.queries @ rows.T  # (queries, rows)
        # only the rows that beat a query's k-th so far (after the first
        # stretches, a few per query): its k-th wins a tie, read first
        qi, ri = np.nonzero(scores > self._scores[:, -1:])
        if len(qi):
            counts = np.bincount(qi, minlength=len(scores))
            # each query's candidates side by side, in reading order
            at = np.arange(len(qi)) - np.repeat(np.cumsum(counts) - counts,
                                                counts)
            width = int(counts.max())
            new_scores = np.full((len(scores), width), -np.inf,
                                 dtype=np.float32)
            new_scores[qi, at] = scores[qi, ri]
            new_cells = np.full((len(scores), width), -1, dtype=np.int64)
            new_cells[qi, at] = np.asarray(cells, dtype=np.int64)[ri]
            both = np.concatenate([self._scores, new_scores], axis=1)
            # stable: among equal scores the point read first stays
            best = np.argsort(-both, axis=1, kind="stable")[:, : self.k]
            self._scores = np.take_along_axis(both, best, axis=1)
            self._cells = np.take_along_axis(
                np.concatenate([self._cells, new_cells], axis=1), best,
                axis=1)
        self.seconds += time.thread_time() - began

    def holds(self, known, num_points, k):
        """Whether its answers are the exact searches' for ``known`` cells
        of an index of ``num_points`` points: the pass assigned these
        cells, and scored as many points as the index holds."""
        return (self.queries is not None and k == self.k
                and known.generation == self.generation
                and self.seen == num_points)

    def neighbour_cells(self):
        """Each query's exact top-k's cells (as ``known.assign`` gives
        them), best first."""
        return [c[c >= 0] for c in self._cells]


def image_buckets(num_points, count, seed=0):
    """The rank buckets whose points are the audit's ``count`` image
    queries in an index of ``num_points`` points: twice the buckets a
    share would need (buckets are uneven), the last of the seeded walk,
    which the cells' learning sample (its first ones, see
    :func:`~fiftyone_ai_search.store.upkeep.learning_buckets`) does not
    reach from :data:`cells.MIN_POINTS` points on: the queries do not
    depend on how k-means fitted its centres to its sample. Measured on
    bench_audit.py's clip-b32 world at 300k (20 audits each, 60 prompts,
    the truth on 2,000 new images): no bias either way (estimate minus
    truth -0.0019 +- 0.0026 from the sample, -0.0024 +- 0.0029 apart
    from it); the error that remains is the spread of 100 image queries
    (see :data:`IMAGE_QUERIES`)."""
    return ranks.bucket_order(seed)[::-1][: ranks.buckets_for(
        2 * count, max(num_points, 1))]


#: a recent query whose nearest centre scores at least this quantile of
#: the audited images' counts as an image query: the modality gap puts a
#: prompt's nearest centre well below every image's
IMAGE_FLOOR_QUANTILE = 0.02


def _image_floor(measured):
    """The nearest-centre score from which a query lies among the images
    (see :data:`IMAGE_FLOOR_QUANTILE`); infinite without image queries."""
    scores = [m.nearest for m in measured if m.kind == "image"]
    return (float(np.quantile(scores, IMAGE_FLOOR_QUANTILE)) if scores
            else np.inf)


#: how much the margin of a kind of query grows, each time its estimate
#: falls short of the target (see :func:`settle`)
MARGIN_STEP = 0.005


def settle(measured, num_cells):
    """The probe rule of ``measured`` queries and its estimates per kind
    of query.

    Each estimate is the rule's recall on queries that did not choose it:
    leave-one-out, every query scored by the rule the others choose. (Two
    folds, as before, chose from half the queries, which sets a band's
    depth on a handful of prompts; on the ``tight`` world of
    bench/bench_audit.py at 1M they estimated prompts at 0.970 where fresh
    prompts got 0.995.) A kind whose estimate falls short of
    :data:`TARGET` gets a larger margin, by :data:`MARGIN_STEP`, until it
    holds: its bands scan more cells, up to the cost bound, past which they
    are exact (and the estimate says which share of that kind is).

    Returns:
        a tuple of the rule (see :func:`choose`, with the ``margins`` it
        used) and ``{kind: estimate}`` (see :func:`_estimate`)
    """
    curves = _curves(measured, num_cells)
    within = _within(measured, num_cells)
    kinds = sorted({m.kind for m in measured})
    margins = {kind: MARGIN for kind in kinds}
    while True:
        depths = _held_out(measured, curves, within, num_cells, margins)
        estimates = {
            kind: _estimate([(m, d) for m, d in zip(measured, depths)
                             if m.kind == kind], num_cells)
            for kind in sorted({"text", "image", *kinds})}
        # past a margin of 1 - TARGET a band holds every neighbour or is
        # exact: nothing more to raise
        short = [kind for kind in kinds
                 if estimates.get(kind) is not None
                 and estimates[kind]["recall"] < TARGET
                 and margins[kind] < 1.0 - TARGET - 1e-9]
        if not short:
            break
        for kind in short:
            margins[kind] = round(min(margins[kind] + MARGIN_STEP,
                                      1.0 - TARGET), 4)
    rule = choose(measured, num_cells, margins, curves, within=within)
    rule["margins"] = margins
    return rule, estimates


def _curves(measured, num_cells):
    """Each query's recall at every depth ``0 .. bound`` (the cost bound,
    :data:`MAX_SHARE` of the cells): an ``(n, bound + 1)`` array."""
    bound = _bound(num_cells)
    depths = np.arange(bound + 1)
    out = np.ones((len(measured), bound + 1))
    for i, m in enumerate(measured):
        if len(m.ranks):
            out[i] = np.searchsorted(m.ranks, depths, side="left") / len(
                m.ranks)
    return out


def _held_out(measured, curves, within, num_cells, margins):
    """Each query's depth under the rule that the other queries choose."""
    everyone = np.ones(len(measured), dtype=bool)
    depths = []
    for i, m in enumerate(measured):
        everyone[i] = False
        rule = choose(measured, num_cells, margins, curves, everyone, within)
        everyone[i] = True
        depths.append(cl.rule_depth(rule, m.nearest, m.ties, m.gaps))
    return depths


#: the spreads a band's rule may take (see cells.rule_depth): 0 (its
#: depth alone) to 0.25 of cosine similarity
SPREADS = np.round(np.arange(0.0, 0.2501, 0.005), 4)


def choose(measured, num_cells, margins=None, curves=None, chosen=None,
           within=None):
    """The probe rule of ``measured`` queries: band edges (scores of the
    nearest centre) and, per band, a depth and a spread (see
    :func:`~fiftyone_ai_search.store.cells.rule_depth`): of the pairs that
    hold ``TARGET`` plus the kind's margin (``margins``, default
    :data:`MARGIN`) of recall on average for each kind of query in the
    band, the one that scans the fewest cells on average (depth None:
    exact). A spread of 0 is a depth alone (with the floor of ties).

    ``curves`` (of :func:`_curves`), ``within`` (of :func:`_within`) and
    ``chosen`` (a boolean mask: the queries that choose) spare recomputing
    for subsets."""
    if curves is None:
        curves = _curves(measured, num_cells)
    if within is None:
        within = _within(measured, num_cells)
    if chosen is None:
        chosen = np.ones(len(measured), dtype=bool)
    margins = margins or {}
    nearest = np.array([m.nearest for m in measured])
    kind = np.array([m.kind for m in measured])
    bands = min(BANDS, max(1, int(chosen.sum()) // 10))
    edges = (list(np.quantile(nearest[chosen], np.arange(1, bands) / bands))
             if chosen.any() else [])
    band = np.searchsorted(edges, nearest, side="right")
    depths, spreads = [], []
    for b in range(len(edges) + 1):
        members = chosen & (band == b)
        kinds = sorted(set(kind[members].tolist()))
        if not kinds:
            depths.append(cl.num_probed(num_cells))
            spreads.append(0.0)
            continue
        # the target holds for each kind of query, not for their mixture:
        # a band's many prompts must not lift its few images' mean
        need = np.ones(len(SPREADS), dtype=np.int64)
        short = np.zeros(len(SPREADS), dtype=bool)
        for k in kinds:
            one = members & (kind == k)
            fewest = _fewest_cells(curves[one], within[one],
                                   TARGET + margins.get(k, MARGIN))
            short |= fewest < 0
            need = np.maximum(need, fewest)
        # what each pair costs: the band's mean cells scanned
        cost = np.maximum(need[None, :], within[members]).mean(axis=0)
        cost[short] = np.inf
        best = int(np.argmin(cost))
        if not np.isfinite(cost[best]):
            depths.append(None)
            spreads.append(0.0)
        else:
            depths.append(int(need[best]))
            spreads.append(float(SPREADS[best]))
    return {"edges": [float(e) for e in edges], "depths": depths,
            "spreads": spreads, "cap": _bound(num_cells)}


def _bound(num_cells):
    """The cost bound: the most cells a query scans short of exact."""
    return max(1, int(MAX_SHARE * num_cells))


def _within(measured, num_cells):
    """Each query's cells at each of :data:`SPREADS` (at least its ties,
    at most the cost bound): an ``(n, len(SPREADS))`` int array."""
    bound = _bound(num_cells)
    out = np.empty((len(measured), len(SPREADS)), dtype=np.int64)
    for i, m in enumerate(measured):
        count = np.searchsorted(m.gaps, SPREADS + cl.SPREAD_EPS,
                                side="right")
        out[i] = np.clip(np.maximum(count, m.ties), 1, bound)
    return out


def _fewest_cells(curves, within, wanted):
    """For each of :data:`SPREADS`, the fewest cells (at least 1) whose
    mean recall over the queries of ``curves`` (each scanning at least its
    ``within`` cells) holds ``wanted``, or -1 past the cost bound: a
    search of the depth for each spread at once (the recall grows with
    the depth)."""
    bound = curves.shape[1] - 1
    rows = np.arange(len(curves))[:, None]

    def holds(depth):
        scanned = np.maximum(depth[None, :], within)
        return curves[rows, scanned].mean(axis=0) >= wanted - 1e-12

    lo = np.ones(len(SPREADS), dtype=np.int64)
    hi = np.full(len(SPREADS), bound, dtype=np.int64)
    feasible = holds(hi)
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        ok = holds(mid)
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, np.minimum(mid + 1, hi))
    return np.where(feasible, hi, -1)


def _estimate(pairs, num_cells):
    """Mean recall, its 95% lower bound, and the mean share of the cells
    scanned, of ``(measured, depth)`` pairs."""
    if not pairs:
        return None
    recalls = np.array([m.recall(d) for m, d in pairs])
    scanned = np.array([num_cells if d is None else d for _, d in pairs])
    sd = float(recalls.std(ddof=1)) if len(recalls) > 1 else 0.0
    return {
        "recall": round(float(recalls.mean()), 4),
        "lower": round(max(0.0, float(recalls.mean())
                           - 1.96 * sd / float(np.sqrt(len(recalls)))), 4),
        "worst": round(float(recalls.min()), 4),
        "queries": len(recalls),
        "cells_scanned": round(float(scanned.mean() / num_cells), 4),
        "exact": round(float(np.mean([d is None for _, d in pairs])), 4),
    }


def _measure(store, known, queries, kinds, k, found=None):
    """The :class:`_Measured` of each of the unit rows ``queries`` (of
    ``kinds``): their exact top-k's cells, ``found`` (of
    :meth:`ExactTopK.neighbour_cells`), else searched together, with the
    neighbours' vectors (one pass over the points a batch, no read of the
    hits after), and the neighbours' cells given by one product."""
    if not len(queries):
        return []
    if found is None:
        neighbours = store._exact_neighbour_vectors(queries, k)
        # each neighbour's cell: the nearest centre, as maintain gave it
        counts = [len(v) for v in neighbours]
        cells = (known.assign(np.concatenate(neighbours)) - known.offset
                 if sum(counts) else np.zeros(0, dtype=np.int64))
    else:
        counts = [len(c) for c in found]
        cells = (np.concatenate(found) - known.offset if sum(counts)
                 else np.zeros(0, dtype=np.int64))
    out = []
    bound = _bound(len(known))
    for vector, kind, part in zip(queries, kinds, np.split(
            cells, np.cumsum(counts)[:-1])):
        scores = products.scores(known.centres, vector)
        order = np.argsort(-scores, kind="stable")
        rank_of = np.empty(len(order), dtype=np.int64)
        rank_of[order] = np.arange(len(order))
        nearest = float(scores[order[0]])
        out.append(_Measured(kind, nearest, np.sort(rank_of[part]),
                             cl.tied(scores),
                             nearest - scores[order[: bound + 1]]))
    return out


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def summary(known):
    """What ``get_status`` shows of an index's cells: None while searches
    are exact (no complete cells); else its audited estimates (None
    before the first audit), and how many of the user's recent queries
    the audit asked (``recent_queries``)."""
    if known is None or not known.searchable:
        return None
    rule = known.rule
    out = {"cells": len(known), "audited": rule is not None}
    if rule is not None:
        out.update(k=rule["k"], target=rule["target"],
                   measured_at=rule["measured_at"],
                   points=rule["points"], estimates=rule["estimates"],
                   recent_queries=rule.get("recent", 0))
    return out
