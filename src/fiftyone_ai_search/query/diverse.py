"""Diverse sampling: a representative spread of a set of embeddings.

The embeddings are clustered (k-means, or DBSCAN with a data-driven eps), and
samples are then taken round-robin across the clusters, largest cluster first
in every round, so any prefix of the result is spread over the data:

- ``centroids``: each cluster gives its members nearest the cluster centre
  first (its most typical samples);
- ``random``: each cluster gives its members in a seeded random order.

Each sample's score is the cosine similarity between its embedding and the
centre of its cluster (how typical it is of its cluster). DBSCAN's noise
points form a group of their own, visited after the clusters in each round,
always in the seeded random order: outliers have no typical member (and
the noise points nearest their mean are scattered over the whole set). The
same inputs and seed always give the same result.

Large sets are never read whole. The clustering is fitted on a seeded random
sample of at most :data:`FIT_SAMPLE` points (all of them when there are
fewer), and then decides the cluster of any point by itself (k-means: the
nearest centre; DBSCAN: the cluster of the nearest core point within eps,
else noise). A pick needs only the first few members of each cluster, and
those are found on demand:

- ``centroids``: the points nearest a cluster's centre, from exact
  nearest-neighbour queries of the index, keeping those in the cluster;
- ``random`` (and DBSCAN noise): the points in a seeded random order of
  all of them (the fit sample is its beginning), read on only while a
  group lacks members. The order is a :class:`Walk`; a whole large index
  walks its rank buckets instead (see :mod:`fiftyone_ai_search.store.ranks`),
  so not even its ids are read whole.

So a diverse search over 100k indexed points reads ~:data:`FIT_SAMPLE`
vectors, not 100k; the result is the same as if every point had been read
and assigned. (An index large enough to search by cells, see
:mod:`fiftyone_ai_search.store.cells`, answers those queries from the cells
nearest each centre: a centre is image-like, and such queries found every
true neighbour in the benchmarks, but a miss there would change a pick.) Only a cluster far smaller than the others (fewer members in
the whole set than the rounds ask of it) makes the search read on until it
has seen every point.
"""

import math

import numpy as np

from .. import validate

METHODS = ("centroids", "random")
CLUSTERING_METHODS = ("kmeans", "dbscan")

#: the clustering is fitted on a random sample of at most this many points
#: (or ``20 x num_clusters``, if more). Measured at 100k 512-d points on 2
#: cores: k-means (10 clusters) on 10k points ~0.4-1 s; reading 10k vectors
#: from the index ~0.2-0.5 s, all 100k ~3-6 s
FIT_SAMPLE = 10_000

#: Lloyd iterations at most: on 10k CLIP-like 512-d points the inertia after
#: 30 is within 0.1% of convergence (reached after ~40-80), at half the time
KMEANS_ITERATIONS = 30

#: DBSCAN is fitted on at most this many points (the rest are assigned to the
#: nearest core point), in at most this many PCA dimensions: exact DBSCAN is
#: quadratic in the number of points
DBSCAN_MAX_FIT = 5000
DBSCAN_MAX_DIMS = 64

#: once a cluster's nearest-neighbour query would ask for more than this
#: share of all points, every point is read instead
READ_ALL_SHARE = 0.25


#: most clusters k-means makes when ``num_clusters`` is not given (k=100 on
#: the 10k-point fit sample: ~1 s on one core)
MAX_DEFAULT_CLUSTERS = 100


def default_num_clusters(limit, num_vectors):
    """The k-means cluster count when none is given: one cluster per result
    (every result then stands for its own region of the data, which covers
    it best), at most :data:`MAX_DEFAULT_CLUSTERS` (beyond that, each cluster
    gives several results), never more than the number of vectors."""
    return max(1, min(limit, MAX_DEFAULT_CLUSTERS, num_vectors))


class Walk:
    """A seeded random order of rows ``0 .. size - 1``, read as far as asked.

    A walk has ``rows`` (the rows walked so far, in walk order) and ``done``
    (every row walked), and walks on with :meth:`read`.
    """

    def __init__(self, size, seed):
        self._order = np.random.default_rng(seed).permutation(size)
        self.rows = self._order[:0]

    @property
    def done(self):
        return len(self.rows) >= len(self._order)

    def read(self, count=None):
        """Walks on until ``count`` rows (None: all) have been walked, or
        all there are; returns the rows newly walked."""
        start = len(self.rows)
        end = len(self._order) if count is None else max(start, count)
        self.rows = self._order[:end]
        return self._order[start:end]


class ArraySource:
    """Embeddings held in memory, for :func:`sample_source`.

    A source has a ``size`` (its rows are ``0 .. size - 1``; about, if it
    cannot know) and three methods:

    -   ``fetch(rows)``: ``(rows, vectors)`` of those of ``rows`` that have a
        vector, in the order given, as an int array and an ``(n, dim)``
        float32 array of unit rows;
    -   ``nearest(vector, k, share=None)``: the rows of the ``k`` vectors
        most similar (cosine) to a unit ``vector``, best first (fewer when
        there are not ``k``); ``share``: the vector is the centre of a group
        of about this share of the rows (an approximate source may then
        search less widely for a small group);
    -   ``walk(seed)``: a :class:`Walk` (or an object that behaves as one)
        over all rows.
    """

    def __init__(self, vectors):
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.size = len(self.vectors)

    def walk(self, seed):
        return Walk(self.size, seed)

    def fetch(self, rows):
        rows = np.asarray(rows, dtype=int)
        return rows, self.vectors[rows]

    def nearest(self, vector, k, share=None):
        scores = self.vectors @ vector
        order = np.lexsort((np.arange(len(scores)), -scores))  # stable
        return order[:k]


def diverse_sample(vectors, limit, method="centroids",
                   clustering_method="kmeans", num_clusters=None, seed=0):
    """Picks up to ``limit`` diverse rows of ``vectors``.

    Args:
        vectors: an ``(n, dim)`` array of L2-normalised embeddings
        limit: the most rows to pick
        method ("centroids"): ``"centroids"`` or ``"random"``
        clustering_method ("kmeans"): ``"kmeans"`` or ``"dbscan"``
        num_clusters (None): the k-means cluster count; default
            :func:`default_num_clusters`
        seed (0): the random seed (clustering and ``random`` order), 0 to
            ``2**32 - 1``

    Returns:
        a tuple ``(indices, scores)`` of the picked rows, in pick order

    Raises:
        ValueError: for invalid arguments; the message names the argument
    """
    return sample_source(ArraySource(vectors), limit, method=method,
                         clustering_method=clustering_method,
                         num_clusters=num_clusters, seed=seed)


def sample_source(source, limit, method="centroids",
                  clustering_method="kmeans", num_clusters=None, seed=0,
                  read_all=False):
    """Like :func:`diverse_sample`, for embeddings read from ``source`` on
    demand (see :class:`ArraySource` for what a source is).

    Args:
        read_all (False): read every point once the clustering is fitted,
            rather than only what the picks need; the result is the same
            (what tests check), only slower

    Returns:
        a tuple ``(rows, scores)`` of the picked rows, in pick order
    """
    limit = validate.limit(limit)
    validate.choice(method, "method", METHODS)
    validate.choice(clustering_method, "clustering_method", CLUSTERING_METHODS)
    if num_clusters is not None:
        num_clusters = validate.integer(num_clusters, "num_clusters", 1)
    seed = validate.seed(seed)
    n = source.size
    if n == 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=np.float32)

    walk = source.walk(seed)
    k = None
    if clustering_method == "kmeans":
        k = min(num_clusters or default_num_clusters(limit, n), n)
    with _one_thread():
        walk.read(max(FIT_SAMPLE, 20 * (k or 0)))
        rows, x = source.fetch(walk.rows)
        if len(rows) == 0 and not walk.done:
            # nothing of the sample is embedded: fit on all there is
            walk.read()
            rows, x = source.fetch(walk.rows)
        if len(rows) == 0:
            return np.zeros(0, dtype=int), np.zeros(0, dtype=np.float32)
        # fitted in row order: a set small enough to be its own sample is
        # clustered as it comes, whatever the seed's walk
        order = np.argsort(rows, kind="stable")
        rows, x = rows[order], x[order]

        if clustering_method == "kmeans":
            groups = _fit_kmeans(x, k, seed)
        else:
            groups = _fit_dbscan(x, seed)

        picker = _Picker(source, walk, method, groups, limit)
        picker.start(rows, groups.fit_groups, groups.fit_scores)
        if read_all and not walk.done:
            picker.read_all()
        return picker.pick(limit)


# -- clusterings ------------------------------------------------------------------


class _Groups:
    """A fitted clustering, able to tell the group of any vector.

    Groups are numbered in visiting order: by their size in the fit sample,
    largest first (ties by cluster label), DBSCAN's noise last.

    Args:
        assign_raw: a function of an ``(n, dim)`` array returning the
            clustering's labels (``-1`` for noise)
        centres: ``{label: centre}``, the centre of every label that
            ``assign_raw`` can return
        fit_vectors: the vectors the clustering was fitted on
        fit_labels (None): ``assign_raw(fit_vectors)``, if known
    """

    def __init__(self, assign_raw, centres, fit_vectors, fit_labels=None):
        self._assign_raw = assign_raw
        if fit_labels is None:
            fit_labels = assign_raw(fit_vectors)
        counts = {label: 0 for label in centres}
        for label, count in zip(*np.unique(fit_labels, return_counts=True)):
            counts[int(label)] = int(count)
        labels = sorted((c for c in counts if c != -1),
                        key=lambda c: (-counts[c], c))
        if -1 in counts:
            labels.append(-1)
        self.labels = labels
        self.centres = np.stack([_unit(centres[c]) for c in labels])
        lookup = np.full(max(labels) + 2, -1, dtype=int)  # index -1: noise
        for g, c in enumerate(labels):
            lookup[c] = g
        self._lookup = lookup
        #: the group and score of each fit vector
        self.fit_groups, self.fit_scores = self._score(fit_vectors, fit_labels)

    def __len__(self):
        return len(self.labels)

    def assign(self, vectors):
        """``(groups, scores)``: the group of each vector and its cosine
        similarity to the group's centre."""
        return self._score(vectors, self._assign_raw(vectors))

    def _score(self, vectors, raw_labels):
        groups = self._lookup[np.asarray(raw_labels, dtype=int)]
        # summed in float64 and rounded: the same float32 score whatever
        # the order of the sum
        scores = np.einsum("ij,ij->i", np.asarray(vectors, dtype=np.float64),
                           self.centres[groups].astype(np.float64))
        return groups, scores.astype(np.float32)


def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def _single_group(x):
    return _Groups(lambda v: np.zeros(len(v), dtype=int),
                   {0: x.mean(axis=0)}, x)


def _one_thread():
    """Runs scikit-learn and numpy single-threaded.

    On a busy machine OpenMP threads spin-wait for each other (measured on 2
    loaded cores: k-means of 5,000 512-d points 0.4-1.0 s on one thread,
    2.2-2.7 s on two), and the fit sample is too small to gain from more.
    One thread also makes the result independent of the machine's core
    count: k-means sums in another order on another number of threads.
    """
    # loaded first: a limit set before a library is loaded misses it
    import sklearn.cluster  # noqa: F401
    import sklearn.decomposition  # noqa: F401
    import sklearn.neighbors  # noqa: F401
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _fit_kmeans(x, k, seed):
    from sklearn.cluster import KMeans  # start-up: scikit-learn

    k = min(k, len(x))
    if k == 1:
        return _single_group(x)
    km = KMeans(n_clusters=k, init=_seed_centres(x, k, seed), n_init=1,
                max_iter=KMEANS_ITERATIONS, random_state=seed).fit(x)

    def assign(v):
        return km.predict(np.asarray(v, dtype=km.cluster_centers_.dtype))

    return _Groups(assign, dict(enumerate(km.cluster_centers_)), x)


def _seed_centres(x, k, seed):
    """Greedy k-means++ initial centres, as scikit-learn picks them (each
    centre the best of ``2 + log k`` candidates drawn by squared distance),
    with the distances from float32 products: scikit-learn's own upcasts to
    float64 and took 2.2 of 3.2 s for 100 clusters of 10k 512-d points."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    norms = np.einsum("ij,ij->i", x, x)
    trials = 2 + int(np.log(k))

    def squared_distances(rows):
        d = norms[:, None] + norms[rows][None, :] - 2 * (x @ x[rows].T)
        return np.maximum(d, 0)

    chosen = [int(rng.integers(n))]
    closest = squared_distances(chosen)[:, 0]
    for _ in range(1, k):
        total = float(closest.sum())
        if total > 0:
            draws = np.searchsorted(np.cumsum(closest), rng.random(trials) * total)
            candidates = np.minimum(draws, n - 1)
        else:  # every point is a centre already
            candidates = rng.integers(n, size=trials)
        options = np.minimum(closest[:, None], squared_distances(candidates))
        best = int(np.argmin(options.sum(axis=0)))
        chosen.append(int(candidates[best]))
        closest = options[:, best]
    return x[chosen].copy()


def _fit_dbscan(x, seed):
    """DBSCAN labels (-1 for noise), eps chosen at the knee of the sorted
    k-distance curve of (the start of) the fit sample, which is random
    already; any point then joins the cluster of its nearest core point if
    that is within eps, else it is noise."""
    from sklearn.cluster import DBSCAN  # start-up: scikit-learn
    from sklearn.neighbors import NearestNeighbors  # start-up: scikit-learn

    reduce = _reducer(x, seed)
    z = reduce(x)
    fit = z[:DBSCAN_MAX_FIT]
    min_samples = max(3, min(10, len(fit) // 50))
    if len(fit) <= min_samples:
        return _single_group(x)

    dist, _ = NearestNeighbors(n_neighbors=min_samples).fit(fit).kneighbors(fit)
    eps = _knee(np.sort(dist[:, -1]))
    if eps <= 0:
        return _single_group(x)

    db = DBSCAN(eps=eps, min_samples=min_samples).fit(fit)
    core = db.core_sample_indices_
    if len(core) == 0:  # all noise
        return _Groups(lambda v: np.full(len(v), -1, dtype=int),
                       {-1: x.mean(axis=0)}, x)
    core_labels = db.labels_[core]
    nearest_core = NearestNeighbors(n_neighbors=1).fit(fit[core])

    def assign_reduced(zv):
        d, j = nearest_core.kneighbors(zv)
        return np.where(d[:, 0] <= eps, core_labels[j[:, 0]], -1)

    labels = assign_reduced(z)
    centres = {int(c): x[labels == c].mean(axis=0) for c in np.unique(labels)}
    # noise can turn up outside the fit sample even when none is in it
    centres.setdefault(-1, x.mean(axis=0))
    return _Groups(lambda v: assign_reduced(reduce(v)), centres, x,
                   fit_labels=labels)


def _reducer(x, seed):
    """A projection to at most :data:`DBSCAN_MAX_DIMS` PCA dimensions,
    fitted on ``x``."""
    if x.shape[1] <= DBSCAN_MAX_DIMS or len(x) <= DBSCAN_MAX_DIMS:
        return lambda v: np.asarray(v, dtype=np.float32)
    from sklearn.decomposition import PCA  # start-up: scikit-learn

    pca = PCA(n_components=DBSCAN_MAX_DIMS, random_state=seed).fit(x)
    return lambda v: pca.transform(v).astype(np.float32)


def _knee(curve):
    """The value at the point of a rising curve farthest from its chord."""
    if len(curve) < 3 or curve[-1] == curve[0]:
        return float(curve[-1])
    x = np.linspace(0, 1, len(curve))
    y = (curve - curve[0]) / (curve[-1] - curve[0])
    return float(curve[int(np.argmax(x - y))])


# -- picking --------------------------------------------------------------------


class _Picker:
    """Round-robin picking over the groups, reading members on demand.

    ``lists[g]`` holds group ``g``'s members found so far, in pick order
    (a prefix of its full order); ``complete[g]`` tells whether that list is
    the whole group. The points of ``walk.rows`` have been read. A group is
    ordered by score (``centroids``, DBSCAN noise excepted) or by the walk.
    """

    def __init__(self, source, walk, method, groups, limit):
        self.source = source
        self.walk = walk
        self.groups = groups
        self.limit = limit
        self.n = source.size
        self.known = {}  # row -> (group, score)
        self.known_in = [0] * len(groups)  # points of each group in known
        self.by_score = [method == "centroids" and label != -1
                         for label in groups.labels]

    def start(self, rows, groups, scores):
        self._know(rows, groups, scores)
        num = len(self.groups)
        self.complete = [self.walk.done] * num
        self.query_size = [0] * num
        self.lists = [[] for _ in range(num)]
        self._rebuild_lists()

    # -- reading ---------------------------------------------------------------

    def _fetch(self, rows):
        rows = [r for r in np.asarray(rows, dtype=int).tolist()
                if r not in self.known]
        if not rows:
            return
        got, x = self.source.fetch(np.asarray(rows, dtype=int))
        if len(got):
            self._know(got, *self.groups.assign(x))

    def _know(self, rows, groups, scores):
        for r, g, s in zip(np.asarray(rows).tolist(), groups.tolist(),
                           scores.tolist()):
            if r not in self.known:
                self.known_in[g] += 1
            self.known[r] = (g, s)

    def _rebuild_lists(self):
        """Lists from the points of the walk read so far: in walk order for
        the groups ordered by it; best score first for the others, once every
        point is read (until then their lists come from queries)."""
        everything = self.walk.done
        rebuild = [everything or not by for by in self.by_score]
        lists = [[] for _ in range(len(self.groups))]
        for r in np.asarray(self.walk.rows).tolist():
            hit = self.known.get(r)
            if hit is not None and rebuild[hit[0]]:
                lists[hit[0]].append(r)
        for g, members in enumerate(lists):
            if not rebuild[g]:
                continue
            if self.by_score[g]:
                members.sort(key=lambda r: (-self.known[r][1], r))
            self.lists[g] = members

    def read_all(self):
        self._fetch(self.walk.read())
        self.complete = [True] * len(self.groups)
        self._rebuild_lists()

    def _walk_on(self):
        """Reads the next stretch of the walk (as much again as read so
        far)."""
        self._fetch(self.walk.read(max(1, 2 * len(self.walk.rows))))
        if self.walk.done:
            self.complete = [True] * len(self.groups)
        self._rebuild_lists()

    def _query_on(self, g, depth):
        """Finds at least ``depth + 1`` members of group ``g`` (or all of
        them) among its centre's nearest neighbours."""
        expected = max(depth + 1, math.ceil(self.limit / len(self.groups)))
        k = max(2 * self.query_size[g], 2 * expected + 16)
        if k > READ_ALL_SHARE * self.n:
            self.read_all()
            return
        self.query_size[g] = k
        share = self.known_in[g] / max(len(self.known), 1)
        rows = np.asarray(self.source.nearest(self.groups.centres[g], k,
                                              share=share), dtype=int)
        self._fetch(rows)
        self.lists[g] = [r for r in rows.tolist()
                         if self.known.get(r, (None,))[0] == g]
        if len(rows) < k:
            self.complete[g] = True

    # -- picking ---------------------------------------------------------------

    def pick(self, limit):
        while True:
            picked, short = self._round_robin(limit)
            if short is None:
                scores = [self.known[r][1] for r in picked]
                return (np.asarray(picked, dtype=int),
                        np.asarray(scores, dtype=np.float32))
            g, depth = short
            if self.by_score[g]:
                self._query_on(g, depth)
            else:
                self._walk_on()

    def _round_robin(self, limit):
        """``(picks, None)``, or ``(None, (group, depth))`` when a group's
        list is too short and may not be complete."""
        picked = []
        depth = 0
        while len(picked) < limit:
            took = False
            for g, members in enumerate(self.lists):
                if depth < len(members):
                    picked.append(members[depth])
                    took = True
                    if len(picked) == limit:
                        break
                elif not self.complete[g]:
                    return None, (g, depth)
            if not took:
                break
            depth += 1
        return picked, None
