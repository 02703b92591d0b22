"""Measures the embedded vector store (Qdrant Edge through EdgeStore).

What the search code needs to choose between filtering in Qdrant and
fetching vectors to score them with numpy::

    python bench/store_bench.py            # 20k and 100k 512-d points
    python bench/store_bench.py 5000       # other sizes

Prints medians of several runs. Random unit vectors; on real CLIP embeddings
exact search costs the same (it is brute force).
"""

import statistics
import sys
import tempfile
import time

import numpy as np
import qdrant_edge as qe

from fiftyone_ai_search.store import IndexInfo
from fiftyone_ai_search.store.edge import EdgeStore

DIM = 512
LIMIT = 100
REPEATS = 7


def timed(fn, repeats=REPEATS):
    """Median seconds of ``fn()`` over ``repeats`` runs, and its last result."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def numpy_top_k(vectors, query, k):
    scores = vectors @ query
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top])]


def bench(n, root):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"{i:024x}" for i in range(1, n + 1)]
    payloads = [{"filepath": f"/data/img_{i}.jpg", "fingerprint": "123:456"} for i in range(n)]
    query = vectors[rng.integers(n)]

    store = EdgeStore(f"bench_{n}", root)
    store.ensure(IndexInfo("bench", None, "bench", DIM))
    t = time.perf_counter()
    store.upsert(ids, vectors, payloads)
    upsert_s = time.perf_counter() - t
    print(f"\n== {n:,} points x {DIM}-d ==")
    print(f"upsert (one call, incl. flush+close): {upsert_s:.2f} s = {n / upsert_s:,.0f} points/s")

    shard_path = store.path + "/shard"
    open_close, _ = timed(lambda: qe.EdgeShard.load(shard_path).close())
    print(f"raw EdgeShard open+close:             {open_close * 1000:.0f} ms")
    count_s, _ = timed(store.count)
    print(f"store.count() (open, count, close):   {count_s * 1000:.0f} ms")
    query_s, _ = timed(lambda: store.query(query, LIMIT))
    print(f"store.query() top-{LIMIT}, own opening:    {query_s * 1000:.0f} ms")

    scopes = [1000, 50000] if n >= 100000 else [1000, n // 2]
    with store.session():
        store.count()  # open once; below is query time alone
        q_s, _ = timed(lambda: store.query(query, LIMIT))
        np_s, _ = timed(lambda: numpy_top_k(vectors, query, LIMIT))
        print(f"in a session: exact top-{LIMIT}, no scope: {q_s * 1000:.1f} ms"
              f"   (numpy, vectors in RAM: {np_s * 1000:.1f} ms)")

        for size in scopes:
            pick = rng.choice(n, size, replace=False)
            scope = [ids[i] for i in pick]
            q_s, got = timed(lambda: store.query(query, LIMIT, sample_ids=scope))
            sub = vectors[pick]
            np_s, top = timed(lambda: numpy_top_k(sub, query, LIMIT))
            fetch_s, _ = timed(lambda: store.get_vectors(scope), repeats=3)
            assert [i for i, _ in got] == [scope[i] for i in top]
            print(
                f"  scope {size:>6,} ids: HasIdCondition {q_s * 1000:6.1f} ms | "
                f"numpy on scope in RAM {np_s * 1000:5.1f} ms | "
                f"get_vectors(scope) {fetch_s * 1000:6.0f} ms"
            )

        for k in (1000, 5000):
            over_s, _ = timed(lambda: store.query(query, k))
            print(f"  over-fetch: unscoped top-{k}: {over_s * 1000:.1f} ms")

        all_s, _ = timed(store.get_vectors, repeats=1)
        print(f"get_vectors() all {n:,}: {all_s:.2f} s")

    store.drop()


def main(sizes):
    with tempfile.TemporaryDirectory() as root:
        for n in sizes:
            bench(n, root)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [20000, 100000])
