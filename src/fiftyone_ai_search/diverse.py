"""Diverse sampling: a representative spread of a set of embeddings.

The embeddings are clustered (k-means, or DBSCAN with a data-driven eps), and
samples are then taken round-robin across the clusters, largest cluster first
in every round, so any prefix of the result is spread over the data:

- ``centroids``: each cluster gives its members nearest the cluster centre
  first (its most typical samples);
- ``random``: each cluster gives its members in a seeded random order.

Each sample's score is the cosine similarity between its embedding and the
centre of its cluster (how typical it is of its cluster). DBSCAN's noise
points form a group of their own, visited after the clusters in each round.
The same inputs and seed always give the same result.
"""

import math

import numpy as np

METHODS = ("centroids", "random")
CLUSTERING_METHODS = ("kmeans", "dbscan")

#: DBSCAN is fitted on at most this many points (the rest are assigned to the
#: nearest core point), in at most this many PCA dimensions: exact DBSCAN is
#: quadratic in the number of points
DBSCAN_MAX_FIT = 5000
DBSCAN_MAX_DIMS = 64


def default_num_clusters(limit, num_vectors):
    """The k-means cluster count when none is given: about ``2 sqrt(limit)``
    (so each cluster gives a few samples), at most 64, never more than
    ``limit`` or the number of vectors."""
    k = max(2, 2 * round(math.sqrt(limit)))
    return max(1, min(k, 64, limit, num_vectors))


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
        seed (0): the random seed (clustering and ``random`` order)

    Returns:
        a tuple ``(indices, scores)`` of the picked rows, in pick order
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    n = len(vectors)
    if n == 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=np.float32)

    if clustering_method == "kmeans":
        k = num_clusters or default_num_clusters(limit, n)
        labels = _kmeans(vectors, min(k, n), seed)
    else:
        labels = _dbscan(vectors, seed)

    groups = _groups(vectors, labels, method, seed)
    return _round_robin(groups, limit)


def _kmeans(vectors, k, seed):
    from sklearn.cluster import KMeans

    if k == 1:
        return np.zeros(len(vectors), dtype=int)
    km = KMeans(n_clusters=k, n_init=1, max_iter=100, random_state=seed)
    return km.fit_predict(vectors)


def _dbscan(vectors, seed):
    """DBSCAN labels (-1 for noise), eps chosen at the knee of the sorted
    k-distance curve of a sample of the data."""
    from sklearn.cluster import DBSCAN
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(seed)
    x = _reduce(vectors, seed)
    n = len(x)
    fit_idx = np.sort(rng.choice(n, size=min(n, DBSCAN_MAX_FIT), replace=False))
    fit = x[fit_idx]

    min_samples = max(3, min(10, len(fit) // 50))
    if len(fit) <= min_samples:
        return np.zeros(n, dtype=int)

    dist, _ = NearestNeighbors(n_neighbors=min_samples).fit(fit).kneighbors(fit)
    eps = _knee(np.sort(dist[:, -1]))
    if eps <= 0:
        return np.zeros(n, dtype=int)

    db = DBSCAN(eps=eps, min_samples=min_samples).fit(fit)
    labels = np.full(n, -1, dtype=int)
    labels[fit_idx] = db.labels_

    # the points left out of the fit join the cluster of their nearest core
    # point, if it is within eps
    rest = np.setdiff1d(np.arange(n), fit_idx)
    core = db.core_sample_indices_
    if len(rest) and len(core):
        d, j = NearestNeighbors(n_neighbors=1).fit(fit[core]).kneighbors(x[rest])
        near = d[:, 0] <= eps
        labels[rest[near]] = db.labels_[core[j[near, 0]]]
    return labels


def _reduce(vectors, seed):
    if vectors.shape[1] <= DBSCAN_MAX_DIMS or len(vectors) <= DBSCAN_MAX_DIMS:
        return vectors
    from sklearn.decomposition import PCA

    return PCA(n_components=DBSCAN_MAX_DIMS, random_state=seed).fit_transform(
        vectors
    ).astype(np.float32)


def _knee(curve):
    """The value at the point of a rising curve farthest from its chord."""
    if len(curve) < 3 or curve[-1] == curve[0]:
        return float(curve[-1])
    x = np.linspace(0, 1, len(curve))
    y = (curve - curve[0]) / (curve[-1] - curve[0])
    return float(curve[int(np.argmax(x - y))])


def _groups(vectors, labels, method, seed):
    """Per group (clusters by size, then noise): member indices in pick order
    and their scores."""
    rng = np.random.default_rng(seed)
    ids = [c for c in np.unique(labels) if c != -1]
    ids.sort(key=lambda c: (-np.count_nonzero(labels == c), c))
    if np.any(labels == -1):
        ids.append(-1)

    groups = []
    for c in ids:
        members = np.flatnonzero(labels == c)
        centre = vectors[members].mean(axis=0)
        norm = np.linalg.norm(centre)
        scores = vectors[members] @ (centre / norm if norm > 0 else centre)
        if method == "centroids":
            order = np.lexsort((members, -scores))  # ties by index: stable
        else:
            order = rng.permutation(len(members))
        groups.append((members[order], scores[order]))
    return groups


def _round_robin(groups, limit):
    picked, scores = [], []
    depth = 0
    while len(picked) < limit:
        took = False
        for members, member_scores in groups:
            if depth < len(members):
                picked.append(members[depth])
                scores.append(member_scores[depth])
                took = True
                if len(picked) == limit:
                    break
        if not took:
            break
        depth += 1
    return np.asarray(picked, dtype=int), np.asarray(scores, dtype=np.float32)
