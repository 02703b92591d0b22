"""Search paths that only large scopes take, on an embedded index filled
directly (no FiftyOne): the over-fetch path of a scope too large for an id
filter (``topk._use_id_filter``), and diverse sampling that reads a sample of
the vectors rather than all of them. Both must give exactly what reading
everything gives. And the index a search keeps open for the next one is
handed over at once to another process that wants it."""

import multiprocessing
import os
import time

import numpy as np
import pytest

from fiftyone_ai_search.query import topk, walk
from fiftyone_ai_search.query import diverse
from fiftyone_ai_search.store import IndexInfo
from fiftyone_ai_search.store import edge, ranks
from fiftyone_ai_search.store.edge import EdgeStore

N = 25_000
DIM = 32
INFO = IndexInfo(model="test", pretrained=None, model_identity="test", dim=DIM)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """``(store, ids, vectors)``: N random unit vectors in 40 loose clusters."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, DIM))
    vectors = centres[rng.integers(0, 40, N)] + 0.8 * rng.standard_normal((N, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(
        np.float32)
    ids = [f"{i:024x}" for i in rng.choice(2**40, size=N, replace=False)]
    store = EdgeStore("scale", tmp_path_factory.mktemp("scale"))
    store.ensure(INFO)
    store.upsert(ids, vectors, [{"filepath": "", "fingerprint": ""}] * N)
    yield store, ids, vectors
    store.close()


def _brute_force(ids, vectors, queries, limit, scope, threshold=None):
    allowed = set(scope)
    rows = [i for i, sid in enumerate(ids) if sid in allowed]
    scores = (vectors[rows] @ np.atleast_2d(queries).T).max(axis=1)
    keep = [j for j in range(len(rows))
            if threshold is None or scores[j] >= threshold]
    order = sorted(keep, key=lambda j: -scores[j])[:limit]
    return [ids[rows[j]] for j in order], scores[order]


@pytest.mark.parametrize("scope_size,threshold,id_filter", [
    (15_000, None, False),   # a random 60%: the first over-fetch is enough
    (12_000, 0.3, False),
    (1_000, None, True),
])
def test_scoped_search_equals_brute_force(index, scope_size, threshold,
                                          id_filter):
    store, ids, vectors = index
    assert topk._use_id_filter(scope_size, 100, N) == id_filter
    rng = np.random.default_rng(scope_size)
    scope = [ids[i] for i in rng.choice(N, size=scope_size, replace=False)]
    queries = vectors[rng.choice(N, size=2)]

    got_ids, got = topk.nearest(store, queries, 100, scope, threshold)

    want_ids, want = _brute_force(ids, vectors, queries, 100, scope, threshold)
    assert got_ids == want_ids
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_over_fetch_reads_on_when_the_best_are_out_of_scope(index):
    store, ids, vectors = index
    query = vectors[0]
    # the scope leaves out the 5,000 best matches: the first over-fetch
    # holds none of it, so the search must ask again for more
    best = np.argsort(-(vectors @ query))
    scope = [ids[i] for i in best[5_000:]]
    assert not topk._use_id_filter(len(scope), 50, N)

    got_ids, got = topk.nearest(store, query, 50, scope)

    want_ids, want = _brute_force(ids, vectors, query, 50, scope)
    assert got_ids == want_ids
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("method,clustering,num_clusters", [
    ("centroids", "kmeans", 10),
    ("random", "kmeans", None),
    ("centroids", "dbscan", None),
    ("random", "dbscan", None),
])
@pytest.mark.parametrize("scoped", [False, True])
def test_diverse_of_a_large_scope_reads_a_sample_and_equals_reading_all(
        index, monkeypatch, method, clustering, num_clusters, scoped):
    store, ids, vectors = index
    monkeypatch.setattr(diverse, "FIT_SAMPLE", 2_000)
    scope = ids[::2] if scoped else None
    kwargs = dict(limit=60, scope=scope, method=method,
                  clustering_method=clustering, num_clusters=num_clusters,
                  seed=3)

    fetched = []
    fetch = walk.IndexSource.fetch
    monkeypatch.setattr(walk.IndexSource, "fetch", lambda self, rows: (
        fetched.append(len(rows)) or fetch(self, rows)))
    got_ids, got = walk.diverse_from_index(store, **kwargs)
    lazily_read = sum(fetched)

    want_ids, want = walk.diverse_from_index(store, read_all=True, **kwargs)

    assert len(got_ids) == 60
    assert got_ids == want_ids
    np.testing.assert_allclose(got, want, atol=1e-5)
    # a sample, not the scope (12,500 or 25,000 points)
    assert lazily_read < 6_000
    # reproducible, and the scores are cosines to the picks' cluster centres
    assert walk.diverse_from_index(store, **kwargs) == (got_ids, got)
    assert all(-1.0 <= s <= 1.0 + 1e-6 for s in got)
    if scope is not None:
        assert set(got_ids) <= set(scope)


@pytest.mark.parametrize("method,clustering,num_clusters", [
    ("centroids", "kmeans", 10),
    ("random", "kmeans", None),
    ("random", "dbscan", None),
])
def test_diverse_of_a_large_index_walks_rank_buckets_not_every_id(
        index, monkeypatch, method, clustering, num_clusters):
    """Above ranks.MIN_POINTS a diverse search of the whole index reads a
    few rank buckets, never the list of all ids, and still gives what
    reading everything gives."""
    store, ids, vectors = index
    monkeypatch.setattr(diverse, "FIT_SAMPLE", 2_000)
    monkeypatch.setattr(ranks, "MIN_POINTS", 10_000)

    def every_id():
        raise AssertionError("read every id of the index")

    monkeypatch.setattr(store, "get_sample_ids", every_id)
    read = []
    buckets = store.get_bucket_vectors
    monkeypatch.setattr(store, "get_bucket_vectors", lambda b: (
        lambda got: read.append(len(got[0])) or got)(buckets(b)))
    assert store.ranked()
    assert walk.IndexSource(store, None).bucketed
    kwargs = dict(limit=60, method=method, clustering_method=clustering,
                  num_clusters=num_clusters, seed=3)

    got_ids, got = walk.diverse_from_index(store, **kwargs)
    walked = sum(read)
    want_ids, want = walk.diverse_from_index(store, read_all=True, **kwargs)

    assert len(got_ids) == 60 == len(set(got_ids))
    assert got_ids == want_ids
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert 2_000 <= walked < 6_000
    assert walk.diverse_from_index(store, **kwargs) == (got_ids, got)
    other, _ = walk.diverse_from_index(store, **{**kwargs, "seed": 4})
    assert other != got_ids
    assert set(got_ids) <= set(ids)


def test_ranks_spread_consecutive_ids_evenly():
    """ObjectIds of one insert differ in a counter: their ranks must still
    be uniform, or a walk's first buckets would be one stretch of a
    dataset."""
    base = int("6750a1b2c3d4e5f6a7b80000", 16)
    n = 20 * ranks.BUCKETS
    counts = np.bincount([ranks.rank_of(f"{base + i:024x}") for i in range(n)],
                         minlength=ranks.BUCKETS)
    assert counts.min() >= 3 and counts.max() <= 45
    # and a seed's walk starts elsewhere than another's
    assert (ranks.bucket_order(1)[:10] != ranks.bucket_order(2)[:10]).any()


def test_diverse_in_memory_matches_the_index(index):
    store, ids, vectors = index
    rows, scores = diverse.diverse_sample(vectors[:3_000], 30,
                                          method="centroids", num_clusters=8)
    got_ids, got = walk.diverse_from_index(store, 30, scope=ids[:3_000],
                                         num_clusters=8)
    assert got_ids == [ids[r] for r in rows]
    np.testing.assert_allclose(got, scores, atol=1e-5)


# -- an index kept open between searches ----------------------------------------


def _count_then_write_in_child(root, name, out):
    store = EdgeStore(name, root, lock_timeout=30)
    counted = store.count()  # answered by the process that holds it
    vector = np.random.default_rng(2).standard_normal((1, DIM))
    store.upsert([f"{10**6:024x}"], vector, [{}])  # takes it over
    out.put((counted, store.count()))


def _is_open(store):
    return edge._shared_for(store.path).shard is not None


@pytest.mark.slow
def test_search_keeps_the_index_open_until_another_process_wants_it(
        tmp_path):
    ids = [f"{i:024x}" for i in range(1, 501)]
    vectors = np.random.default_rng(1).standard_normal((500, DIM))
    store = EdgeStore("kept", tmp_path)
    store.ensure(INFO)
    store.upsert(ids, vectors, [{}] * 500)
    assert not _is_open(store)

    got, _ = topk.nearest(store, vectors[0], 5)
    assert got[0] == ids[0]
    assert _is_open(store)
    # the next search finds it open
    topk.nearest(store, vectors[1], 5, ids[:100])
    assert _is_open(store)

    # another process's count is answered by this one, which keeps the
    # index open (see store/serve.py); its write takes the index over: it
    # is handed over (within its lock_timeout, or the write raises)
    spawn = multiprocessing.get_context("spawn")
    out = spawn.Queue()
    child = spawn.Process(target=_count_then_write_in_child,
                          args=(str(tmp_path), "kept", out))
    child.start()
    try:
        counted, after = out.get(timeout=120)
    finally:
        child.join(30)
    assert (counted, after) == (500, 501)
    assert not _is_open(store)

    # close() closes a kept index: its shard can be opened directly again
    topk.nearest(store, vectors[2], 5)
    assert _is_open(store)
    store.close()
    assert not _is_open(store)
    import qdrant_edge

    qdrant_edge.EdgeShard.load(os.path.join(store.path, "shard")).close()


def test_a_kept_index_closes_once_idle(tmp_path, monkeypatch):
    monkeypatch.setattr(edge, "KEEP_OPEN", 0.3)
    store = EdgeStore("idle", tmp_path)
    store.ensure(INFO)
    store.upsert(["0" * 23 + "1"], np.ones((1, DIM)), [{}])
    topk.nearest(store, np.ones(DIM), 1)
    assert _is_open(store)
    deadline = time.monotonic() + 10
    while _is_open(store) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _is_open(store)
    # and a single operation outside a session closes at its end, as always
    store.count()
    assert not _is_open(store)
