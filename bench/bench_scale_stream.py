"""Our index at sizes whose float32 vectors do not fit in RAM (10M x 512-d
is 20 GB on a 24 GB machine): the CLIP-like world of ``bench_scale.py``,
generated and written a chunk at a time, with the exact top-100 of every
query kept up to date chunk by chunk (so recall is against the truth, never
against another approximate search).

Printed: ingest rate, the background upkeep (``maintain``: cells learned,
points assigned, compacted) with its steps logged, then recall@100 and
median latency of image and text queries through ``EdgeStore.query``,
exact (on a few queries: a full scan) and by cells, the process's RSS and
the index's size on disk. With ``--brute-force`` the vectors are also kept
in a float32 ``.npy`` memmap and a numpy scan of it is timed on a few
queries (the peer at this size: it does not fit in RAM, so it reads from
the page cache or the disk). Examples::

    python bench/bench_scale_stream.py --n 10000000      # ~1.5 h on 2 cores
    python bench/bench_scale_stream.py --n 300000 --brute-force

Set ``BENCH_TMP`` to a disk with room: 10M needs ~30 GB (and 20 GB more with
``--brute-force``).
"""

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_scale import (  # noqa: E402
    CLIP_B32_PARAMS, K, ClipLike, Table, du_mb, measure, rss_mb)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=100_000,
                   help="vectors generated and written at a time")
    p.add_argument("--queries", type=int, default=100,
                   help="image queries and text queries, each")
    p.add_argument("--exact-queries", type=int, default=10,
                   help="of those, how many the exact scan answers")
    p.add_argument("--brute-force", action="store_true",
                   help="keep a float32 memmap and time numpy on it")
    p.add_argument("--probes", default="0.01,0.02,0.03,0.08",
                   help="after maintain, also measure probing these shares "
                        "of the cells (comma-separated)")
    p.add_argument("--diverse", action="store_true",
                   help="also time diverse search (limit 100; 10 and 100 "
                        "clusters), its centre queries probing 1%% of the "
                        "cells (as shipped) and 5%% (as a prompt)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


class StreamedTruth:
    """The exact top-K rows of each query, merged chunk by chunk."""

    def __init__(self, queries):
        self.queries = queries
        self.scores = np.full((len(queries), K), -np.inf, dtype=np.float32)
        self.rows = np.zeros((len(queries), K), dtype=np.int64)

    def add(self, start, x):
        scores = np.concatenate([self.scores, self.queries @ x.T], axis=1)
        rows = np.concatenate([
            self.rows,
            np.broadcast_to(np.arange(start, start + len(x)),
                            (len(self.queries), len(x)))], axis=1)
        top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
        self.scores = np.take_along_axis(scores, top, axis=1)
        self.rows = np.take_along_axis(rows, top, axis=1)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s")
    from fiftyone_ai_search.store import (
        EdgeStore, IndexInfo, point_id_to_sample_id)
    from fiftyone_ai_search.store import cells as cl

    world = ClipLike(args.dim, args.clusters, seed=args.seed,
                     **CLIP_B32_PARAMS)
    rng = np.random.default_rng([args.seed, 1])
    qi = world.images(world.labels(args.queries, rng), rng)
    qt = world.texts(world.labels(args.queries, rng, by_weight=False), rng)
    truth = StreamedTruth(np.concatenate([qi, qt]))

    tmp = tempfile.mkdtemp(prefix="bench-scale-stream-",
                           dir=os.environ.get("BENCH_TMP"))
    print(f"N={args.n:,} x {args.dim}-d, {args.clusters} clusters, "
          f"{args.queries} image + {args.queries} text queries, in {tmp}",
          flush=True)
    try:
        store = EdgeStore("stream", tmp, lock_timeout=3600)
        store.ensure(IndexInfo("bench", None, "bench@1", args.dim))
        memmap = None
        if args.brute_force:
            memmap = np.lib.format.open_memmap(
                os.path.join(tmp, "vectors.npy"), mode="w+",
                dtype=np.float32, shape=(args.n, args.dim))
        t0 = time.time()
        for start in range(0, args.n, args.chunk):
            m = min(args.chunk, args.n - start)
            crng = np.random.default_rng([args.seed, 2, start])
            x = world.images(world.labels(m, crng), crng)
            truth.add(start, x)
            if memmap is not None:
                memmap[start:start + m] = x
            # sample ids whose hex value is the row number + 1
            ids = [f"{i + 1:024x}" for i in range(start, start + m)]
            store.upsert(ids, x, [{}] * m)
            done = start + m
            if done % 1_000_000 < args.chunk or done == args.n:
                el = time.time() - t0
                print(f"  {done:,} written in {el:.0f} s "
                      f"({done / el:,.0f}/s), RSS {rss_mb():.0f} MB",
                      flush=True)
        t_up = time.time() - t0
        gi, gt = truth.rows[:args.queries], truth.rows[args.queries:]

        def ours(q):
            with store.session():
                hits = store.query(q, K)
            return [int(h[0], 16) - 1 for h in hits]

        table = Table()
        e = args.exact_queries
        measure(table, "ours: exact", f"EdgeStore.query, {e} queries",
                ours, ours, qi[:e], qt[:e], gi[:e], gt[:e],
                f"{t_up:.0f} upsert", f"{du_mb(tmp) - _npy_mb(memmap):.0f} MB disk")
        rss_before = rss_mb()
        t0 = time.time()
        store.maintain()
        t_m = time.time() - t0
        cells = store.cells()
        ours(qi[0])  # opened again after the compaction
        note = "exact (below the threshold)"
        if cells is not None:
            note = (f"{len(cells)} cells, {cl.num_probed(len(cells))} "
                    f"probed, quantized + rescore x{cl.OVERSAMPLING:g}")
        measure(table, "ours: cells (after maintain)", note, ours, ours,
                qi, qt, gi, gt, f"{t_m:.0f} maintain",
                f"{du_mb(tmp) - _npy_mb(memmap):.0f} MB disk, RSS "
                f"{rss_mb():.0f} MB ({rss_before:.0f} before maintain)")
        if cells is not None:
            for share in (float(x) for x in args.probes.split(",") if x):
                count = max(1, round(share * len(cells)))

                def probing(q, count=count):
                    with store.session():
                        hits = store._query_points(
                            q, K, None, None, cells=cells.probe(q, count))
                    return [int(point_id_to_sample_id(h.id), 16) - 1 for h in hits]

                measure(table, "ours: cells, other probes",
                        f"{count} of {len(cells)} cells probed ({share:.1%})",
                        probing, probing, qi, qt, gi, gt)
        if args.diverse:
            bench_diverse(store, cl)
        if memmap is not None:
            def brute(q):
                s = np.empty(args.n, dtype=np.float32)
                for a in range(0, args.n, 1_000_000):
                    s[a:a + 1_000_000] = memmap[a:a + 1_000_000] @ q
                return np.argpartition(-s, K)[:K]

            measure(table, "numpy brute force", f"float32 memmap, {e} queries",
                    brute, brute, qi[:e], qt[:e], gi[:e], gt[:e], "0",
                    f"{_npy_mb(memmap):.0f} MB file")
        store.close()
        table.print()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SHIPPED = "as shipped (1% for small groups)"


def bench_diverse(store, cl):
    """Store-level diverse search, warm, medians of 2 seeds: what probing
    fewer cells for the centre queries saves, and whether it changes the
    picks."""
    import statistics

    from fiftyone_ai_search.query import walk

    def timed(clusters, seed):
        t0 = time.perf_counter()
        ids, _ = walk.diverse_from_index(store, K, num_clusters=clusters,
                                       seed=seed)
        return time.perf_counter() - t0, ids

    walk.diverse_from_index(store, K, num_clusters=10)  # warm
    as_prompt = (cl.PROBE_SHARE, cl.MIN_PROBED)
    shipped = (cl.NEAR_PROBE_SHARE, cl.MIN_NEAR_PROBED)
    print("| diverse, centroids, kmeans, limit 100 | centre queries probe | "
          "median s | picks in common |\n|---|---|---|---|")
    for clusters in (10, 100):
        picks = {}
        for label, probes in ((SHIPPED, shipped),
                              ("5%, at least 64", as_prompt)):
            cl.NEAR_PROBE_SHARE, cl.MIN_NEAR_PROBED = probes
            runs = [timed(clusters, seed) for seed in (0, 1)]
            picks[label] = runs[0][1]
            common = len(set(runs[0][1]) & set(picks[SHIPPED]))
            print(f"| {clusters} clusters | {label} | "
                  f"{statistics.median(r[0] for r in runs):.2f} | "
                  f"{common} of {len(runs[0][1])} |", flush=True)
        cl.NEAR_PROBE_SHARE, cl.MIN_NEAR_PROBED = shipped


def _npy_mb(memmap):
    return 0 if memmap is None else memmap.nbytes / 2**20


if __name__ == "__main__":
    main()
