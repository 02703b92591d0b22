"""The top-k of a query within a scope: the whole index, a list of ids
filtered inside Qdrant, or a large scope by over-fetching from the whole
index and keeping what is in scope, whichever costs less.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

import math

import numpy as np

from .scope import ViewScope

#: how many more hits than ``limit x total / scope size`` a search of a
#: large scope fetches from the whole index, to keep what is in scope
OVER_FETCH = 1.5

#: what a hit fetched by over-fetching costs, relative to an id of an id
#: filter (measured, see :func:`_use_id_filter`)
HIT_COST = 1.5

#: never filter more ids than this inside Qdrant, whatever
#: :func:`_use_id_filter` says (a bound on the size of one request)
MAX_FILTERED_SCOPE = 50_000


def nearest(store, vectors, limit, scope=None, threshold=None,
            exact=False):
    """Exact top-``limit`` of the union of several queries (best score per
    sample), within ``scope``.

    Args:
        store: the :class:`fiftyone_ai_search.store.VectorStore`
        vectors: a ``(dim,)`` query vector or ``(n, dim)`` several
        limit: the most results
        scope (None): sample ids to search within (a list, or a
            :class:`ViewScope`), or None for all
        threshold (None): only scores ``>= threshold``
        exact (False): scan every point even where the index has cells

    Returns:
        ``(sample_ids, scores)``, best first
    """
    best = {}
    with store.session():
        # only a scope needs the index size, to choose how to search it;
        # an estimate is enough (an exact count costs as much as a query)
        total = None if scope is None else max(1, store.estimate_count())
        for vector in np.atleast_2d(vectors):
            for sample_id, score in top_k(store, vector, limit, scope,
                                           threshold, total, exact=exact):
                if score > best.get(sample_id, -np.inf):
                    best[sample_id] = score
    ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return [k for k, _ in ranked], [v for _, v in ranked]


def _use_id_filter(scope_size, limit, total):
    """Whether to search a scope with an id filter inside Qdrant rather than
    by over-fetching (:func:`_over_fetch`): whichever handles fewer items,
    weighted by their cost. The filter costs ~3-5 us per id of the scope,
    the over-fetch ~5-7 us (``HIT_COST`` times more) per hit it fetches,
    ``OVER_FETCH x limit x total / scope`` of them.

    Measured on an open Qdrant Edge shard of 100k 512-d points (2 shared
    cores, medians of 7-9 runs, ``bench/bench_search.py`` part e), limit
    100, random scopes of 1k / 2k / 4k / 7k / 10k / 20k / 50k ids: filter
    4 / 6 / 12 / - / 30 / - / 153 ms and 19 / 17 / 36 / 40 / 47 / 91 / -
    ms in a busier run; over-fetch 44 / 25 / 17 / - / 15 / - / 13 ms and
    90 / 42 / 42 / 27 / 23 / 23 / - ms. The cross-over lies at 4k-7k ids;
    the rule puts it at 4.7k. Limit 1000: filter 64 / 126 ms, over-fetch
    126 / 50 ms at 10k / 20k ids (the rule: 15k). The former fixed bound,
    10k ids, filtered 5k-10k ids at up to twice the cost.
    """
    fetched = OVER_FETCH * limit * total / max(scope_size, 1)
    return scope_size <= min(MAX_FILTERED_SCOPE, HIT_COST * fetched)


def top_k(store, vector, limit, scope, threshold, total, near=False,
           exact=False, centre=False):
    """The best ``limit`` ``(sample_id, score)`` of ``vector`` within
    ``scope`` (None: the whole index) scoring at least ``threshold``;
    ``near``, ``exact`` and ``centre`` as for the store's ``query``."""
    if scope is None:
        return store.query(vector, limit, min_score=threshold, near=near,
                           exact=exact, centre=centre)
    share = None
    if isinstance(scope, ViewScope) and scope.size is None:
        # counting a view costs ~1 s at 1M samples, more than the search:
        # a first over-fetch as if the view held half the index, and its
        # hits tell whether the view is large enough to go on so
        k = math.ceil(2 * OVER_FETCH * limit) + 16
        hits, kept = _hits_in(store, vector, k, scope, threshold, exact,
                              centre)
        if _enough(hits, kept, k, limit):
            return kept[:limit]
        share = max(len(kept), 1) / max(len(hits), 1)
        if _use_id_filter(share * total, limit, total):
            share = None  # looks small: count it, and choose as below
        else:
            k = max(2 * k, math.ceil(OVER_FETCH * limit / share) + 16)
    if share is None:
        size = len(scope)
        if not size:
            return []
        if _use_id_filter(size, limit, total):
            return _filtered(store, vector, limit, scope, threshold)
        share = size / total
        k = math.ceil(OVER_FETCH * limit / share) + 16
    return _over_fetch(store, vector, limit, scope, threshold, total, k,
                       exact, centre)


def _filtered(store, vector, limit, scope, threshold):
    """Top-``limit`` within ``scope`` by an id filter inside Qdrant."""
    ids = scope.ids() if isinstance(scope, ViewScope) else scope
    return store.query(vector, limit, sample_ids=ids, min_score=threshold)


def _hits_in(store, vector, k, scope, threshold, exact=False, centre=False):
    """The unscoped top-``k`` hits, and those of them in ``scope``."""
    hits = store.query(vector, k, min_score=threshold, exact=exact,
                       centre=centre)
    if isinstance(scope, ViewScope):
        inside = scope.contains([h[0] for h in hits])
    else:
        inside = set(scope).intersection(h[0] for h in hits)
    return hits, [h for h in hits if h[0] in inside]


def _enough(hits, kept, k, limit):
    """Whether a round of over-fetching found the scoped top-``limit``:
    ``limit`` in scope (nothing in scope can score above a hit we kept), or
    fewer hits than asked (there are no more)."""
    return len(kept) >= limit or len(hits) < k


def _over_fetch(store, vector, limit, scope, threshold, total, k,
                exact=False, centre=False):
    """Top-``limit`` within a large scope: fetches the unscoped top-k and
    keeps what is in scope; k doubles until :func:`_enough`. Once k passes
    the (estimated) index size, the id filter decides, exactly."""
    while True:
        if k >= total:
            return _filtered(store, vector, limit, scope, threshold)
        hits, kept = _hits_in(store, vector, k, scope, threshold, exact,
                              centre)
        if _enough(hits, kept, k, limit):
            return kept[:limit]
        k *= 2
