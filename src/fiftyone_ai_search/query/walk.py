"""Diverse sampling of the vectors of an index (:mod:`.diverse` over the
index): the scope's vectors are read as the sampling asks for them, a whole
large index a few rank buckets at a time.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

import numpy as np

from ..store import cells as cl
from ..store import ranks
from . import diverse
from .scope import ViewScope
from .topk import top_k


class IndexSource:
    """The embeddings of a search scope, read from the index as diverse
    sampling asks for them (see :class:`fiftyone_ai_search.query.diverse.ArraySource`):
    a diverse search of a large scope reads a sample of its vectors and asks
    nearest-neighbour queries, rather than reading every vector.

    The walk is a seeded permutation of the scope's ids, or, for a whole
    large index, of its rank buckets (see
    :mod:`fiftyone_ai_search.store.ranks`): then no id is read that the
    search does not need, and rows are numbered as points turn up.

    Each read is a session of its own, so nothing is locked while the
    clustering computes, and nothing reopens the index unless another
    process asked for it meanwhile (see
    :meth:`~fiftyone_ai_search.store.VectorStore.session`).
    """

    def __init__(self, store, scope):
        self.store = store
        self.scope = scope
        self._vectors = {}  # row -> vector read by the walk, until fetched
        with store.session():
            self.total = max(1, store.estimate_count())
            self.bucketed = (scope is None and self.total >= ranks.MIN_POINTS
                             and store.ranked())
            if scope is None and not self.bucketed:
                # sorted: the scroll order is the engine's business
                self.ids = sorted(store.get_sample_ids())
        if scope is not None:
            self.ids = list(scope.ids() if isinstance(scope, ViewScope)
                            else scope)
            self.scope = self.ids
        if self.bucketed:
            self.ids = []
        self.size = self.total if self.bucketed else len(self.ids)
        self._rows = {sample_id: i for i, sample_id in enumerate(self.ids)}

    def _row(self, sample_id):
        row = self._rows.get(sample_id)
        if row is None:
            row = self._rows[sample_id] = len(self.ids)
            self.ids.append(sample_id)
        return row

    def take(self, sample_id, vector):
        """Keeps a vector the walk read (until :meth:`fetch` asks for it)
        and returns its row."""
        row = self._row(sample_id)
        self._vectors[row] = vector
        return row

    def walk(self, seed):
        if self.bucketed:
            return _BucketWalk(self, seed)
        return diverse.Walk(self.size, seed)

    def fetch(self, rows):
        rows = np.asarray(rows, dtype=int).tolist()
        unread = [r for r in rows if r not in self._vectors]
        if unread:
            with self.store.session():
                ids, vectors = self.store.get_vectors(
                    [self.ids[r] for r in unread])
            self._vectors.update(zip((self._rows[i] for i in ids), vectors))
        found = [r for r in rows if r in self._vectors]
        if not found:
            return np.zeros(0, dtype=int), np.zeros((0, 0), dtype=np.float32)
        return (np.array(found, dtype=int),
                np.stack([self._vectors.pop(r) for r in found]))

    def nearest(self, vector, k, share=None):
        with self.store.session():
            hits = top_k(self.store, vector, k, self.scope, None, self.total,
                          near=self._near(share), centre=True)
        if self.bucketed:  # the whole index: every hit is in scope
            return np.array([self._row(i) for i, _ in hits], dtype=int)
        # a sample added meanwhile by a sync is not part of this search
        rows = [self._rows.get(sample_id) for sample_id, _ in hits]
        return np.array([r for r in rows if r is not None], dtype=int)

    def _near(self, share):
        """Whether the centre of a group of ``share`` of the index lies
        among the images, so that probing fewer cells finds its nearest
        members: a group that fits in the cells a near query probes. (The
        centre of a large group lies between many kinds of images, as a
        prompt does; measured at 1M: with 10 groups, 49 of 100 picks
        changed when it probed fewer cells, with 100 groups 8.)"""
        cells = self.store.cells()
        if share is None or cells is None:
            return False
        return share <= cl.num_probed(len(cells), near=True) / len(cells)


class _BucketWalk:
    """The walk of a whole large index, a few rank buckets at a time (see
    :class:`fiftyone_ai_search.query.diverse.Walk`)."""

    def __init__(self, source, seed):
        self._source = source
        self._order = ranks.bucket_order(seed)
        self._next = 0
        self.rows = []

    @property
    def done(self):
        return self._next >= len(self._order)

    def read(self, count=None):
        source = self._source
        start = len(self.rows)
        while not self.done and (count is None or len(self.rows) < count):
            wanted = (len(self._order) if count is None else
                      ranks.buckets_for(count - len(self.rows), source.total))
            buckets = self._order[self._next : self._next + wanted]
            self._next += len(buckets)
            with source.store.session():
                ids, vectors = source.store.get_bucket_vectors(buckets)
            self.rows.extend(source.take(sample_id, vector)
                             for sample_id, vector in zip(ids, vectors))
        return np.array(self.rows[start:], dtype=int)


def diverse_from_index(store, limit, scope=None, method="centroids",
                       clustering_method="kmeans", num_clusters=None,
                       seed=0, read_all=False):
    """Diverse sampling of the vectors of an index (see
    :mod:`fiftyone_ai_search.query.diverse`), reading only what it needs.

    Args:
        store: the :class:`fiftyone_ai_search.store.VectorStore`
        limit: the most samples to pick
        scope (None): sample ids to pick from, or None for all
        method, clustering_method, num_clusters, seed: see
            :func:`fiftyone_ai_search.query.diverse.diverse_sample`
        read_all (False): read every vector of the scope (same result,
            slower; for tests and benchmarks)

    Returns:
        ``(sample_ids, scores)`` in pick order
    """
    source = IndexSource(store, scope)
    picked, scores = diverse.sample_source(
        source, limit, method=method, clustering_method=clustering_method,
        num_clusters=num_clusters, seed=seed, read_all=read_all,
    )
    return [source.ids[i] for i in picked], [float(s) for s in scores]
