"""Near-duplicates of a large index through its cells (issue 23), beside
the exact path and FiftyOne Brain's ``find_duplicates``.

The world: CLIP-like 512-d image vectors (``bench_scale.ClipLike`` with the
``clip-b32`` parameters, 1,000 uneven clusters), 3% of them replaced by
near-copies of others at several closeness (exact copies, and copies at
~0.99, ~0.97, ~0.95 and ~0.92: re-encodes, resizes, small crops), shuffled.

Ours: the project's embedded index (``EdgeStore``, filled, then its
background upkeep ``maintain`` learns the cells), then, per threshold, the
pass of :func:`fiftyone_ai_search.query.pairs.pairs_by_cells` reading each
few cells through the store, and the grouping
(:func:`~fiftyone_ai_search.query.pairs.group_pairs`): what
``near_duplicate_groups`` runs on an index with cells. Printed: wall and
CPU seconds (this process, all threads), peak RSS above the opened index
(the kernel's high-water mark, reset before each pass), pairs found, and
pair recall against exact: every pair (``--n`` up to ``--exact-max``), else
the exact pairs of ``--truth-sample`` random points against all.

Beside it, at ``--n`` up to ``--exact-max``: today's exact path
(``duplicates.group`` on all vectors in RAM) at 0.95, with whether its
groups equal ours; and FiftyOne Brain's ``find_duplicates`` on its
``sklearn`` backend (``--brain`` sizes, subsets of the same vectors, in a
private mongod), stopping after the first size that takes over
``--brain-max-s``.

Examples::

    python bench/bench_duplicates.py --n 100000
    flock /tmp/aisearch-bench.lock nice -n 15 \\
        python bench/bench_duplicates.py --n 1000000 --brain "" \\
        --keep /tmp/ais-bench-dups-1m
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
import tracemalloc

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_scale import CLIP_B32_PARAMS, ClipLike, filled_store  # noqa: E402

#: (share of the planted copies, their similarity to the original)
LEVELS = [(0.2, 1.0), (0.2, 0.99), (0.2, 0.97), (0.2, 0.95), (0.2, 0.92)]

#: entries of the exact similarity matrix at once (~200 MB)
CHUNK = 50_000_000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--thresholds", default="0.98,0.95,0.92,0.9")
    p.add_argument("--probes", default="exact,3",
                   help="ours: compare a point with its N nearest other "
                        "cells within reach ('exact': all within reach)")
    p.add_argument("--planted", type=float, default=0.03,
                   help="share of the points that are near-copies")
    p.add_argument("--exact-max", type=int, default=200_000,
                   help="up to this size, every pair exactly (and today's "
                        "path, and the Brain)")
    p.add_argument("--truth-sample", type=int, default=2000)
    p.add_argument("--brain", default="10000,30000",
                   help="sizes for the Brain's sklearn find_duplicates "
                        "('' for none)")
    p.add_argument("--brain-max-s", type=float, default=150.0)
    p.add_argument("--keep", default=None,
                   help="keep the filled, maintained index in this folder "
                        "and reuse it when it holds the same world")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def world(n, planted, seed):
    """``n`` CLIP-like unit vectors with planted near-copies."""
    gen = ClipLike(512, 1000, seed=seed, **CLIP_B32_PARAMS)
    rng = np.random.default_rng(seed + 1)
    x = gen.images(gen.labels(n, rng), rng)
    m = int(planted * n)
    spots = rng.choice(n, 2 * m, replace=False)
    originals, copies = spots[:m], spots[m:]
    start = 0
    for share, sim in LEVELS:
        count = int(round(share * m))
        o = originals[start:start + count]
        c = copies[start:start + count]
        # |noise| = s gives a similarity of 1 / sqrt(1 + s^2)
        s = np.sqrt(max(0.0, 1.0 / sim ** 2 - 1.0))
        z = rng.standard_normal((len(o), 512)).astype(np.float32)
        y = x[o] + s * z / np.sqrt(512)
        x[c] = y / np.linalg.norm(y, axis=1, keepdims=True)
        start += count
    return x


def exact_pairs(x, threshold, rows=None):
    """The pairs ``(lo, hi)`` at or above ``threshold`` among all rows, or
    of ``rows`` against all."""
    queries = np.arange(len(x)) if rows is None else np.asarray(rows)
    lo, hi = [], []
    step = max(16, CHUNK // len(x))
    for s in range(0, len(queries), step):
        q = queries[s:s + step]
        sims = x[q] @ x.T
        sims[np.arange(len(q)), q] = -1
        i, j = np.nonzero(sims >= threshold)
        a, b = q[i], j
        if rows is None:
            keep = a < b
            a, b = a[keep], b[keep]
        lo.append(np.minimum(a, b))
        hi.append(np.maximum(a, b))
    return np.concatenate(lo), np.concatenate(hi)


def reset_peak():
    """Resets this process's RSS high-water mark (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def rss_mb(key="VmRSS"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def open_index(args, x):
    """The filled, maintained index of ``x``, and what building it took."""
    from fiftyone_ai_search.store import EdgeStore

    tag = f"n{args.n}-p{args.planted}-s{args.seed}"
    if args.keep and os.path.exists(os.path.join(args.keep, tag)):
        store = EdgeStore("dups", args.keep, lock_timeout=600)
        if store.exists() and store.cells() is not None:
            return store, f"reused {args.keep}", None
    folder = args.keep or tempfile.mkdtemp(
        prefix="bench-dups-", dir=os.environ.get("BENCH_TMP"))
    if args.keep:
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
    store, t_up = filled_store(folder, x, name="dups")
    t0 = time.time()
    # the cells forced on below the size where the upkeep learns them
    store.maintain(min_points=1000)
    t_m = time.time() - t0
    if args.keep:
        open(os.path.join(folder, tag), "w").close()
    return store, f"upsert {t_up:.0f} s, maintain {t_m:.0f} s", (
        None if args.keep else folder)


def ours(store, n, threshold, probe):
    """The pass through the cells; returns the pairs, the groups and what
    it took."""
    from fiftyone_ai_search.query import pairs

    def rows_of(ids):
        return np.array([int(i, 16) - 1 for i in ids], np.int64)

    def read(values):
        with store.session(keep_open=True):
            return store.get_cell_vectors(values)

    base = rss_mb()
    reset_peak()
    tracemalloc.start()
    w0, c0 = time.time(), time.process_time()
    lo, hi, sim, seen = pairs.pairs_by_cells(store.cells(), read, rows_of,
                                             threshold, probe=probe)
    dup, kept, sims = pairs.group_pairs(n, lo, hi, sim)
    wall, cpu = time.time() - w0, time.process_time() - c0
    heap = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    peak = rss_mb("VmHWM") - base
    assert seen == n, (seen, n)
    return (lo, hi), (dup, kept, sims), wall, cpu, (peak, heap)


def recall_of(found, truth):
    if not len(truth[0]):
        return float("nan")
    f = set(zip(found[0].tolist(), found[1].tolist()))
    t = list(zip(truth[0].tolist(), truth[1].tolist()))
    return sum(p in f for p in t) / len(t)


def brain_rows(args, x):
    """FiftyOne Brain's find_duplicates (sklearn) on subsets of ``x``."""
    sizes = [int(s) for s in args.brain.split(",") if s]
    if not sizes:
        return
    import _env

    _env.setup()
    import fiftyone as fo
    import fiftyone.brain as fob

    for size in sizes:
        dataset = fo.Dataset()
        dataset.add_samples([fo.Sample(filepath=f"/none/{i}.jpg")
                             for i in range(size)], progress=False)
        index = fob.compute_similarity(dataset, embeddings=x[:size],
                                       backend="sklearn", brain_key="sk")
        base = rss_mb()
        reset_peak()
        w0, c0 = time.time(), time.process_time()
        index.find_duplicates(thresh=1 - 0.95)
        wall, cpu = time.time() - w0, time.process_time() - c0
        peak = rss_mb("VmHWM") - base
        found = sum(len(v) for v in index.neighbors_map.values())
        print(f"{'brain sklearn find_duplicates':32s} {size:>9,} {0.95:>5} "
              f"{wall:8.1f} {cpu:8.1f} {peak:13.0f} {'-':>9} {found:>9,} "
              f"{'-':>7}",
              flush=True)
        dataset.delete()
        if wall > args.brain_max_s:
            print(f"(the Brain stops here: {wall:.0f} s at {size:,})")
            break


def main(argv=None):
    args = parse_args(argv)
    thresholds = sorted((float(t) for t in args.thresholds.split(",")),
                        reverse=True)
    print(f"{args.n:,} CLIP-like 512-d vectors, {args.planted:.0%} planted "
          f"near-copies; cpus {os.cpu_count()}, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    x = world(args.n, args.planted, args.seed)
    store, built, tmp = open_index(args, x)
    cells = store.cells()
    print(f"index: {built}; {len(cells)} cells; RSS {rss_mb():.0f} MB",
          flush=True)
    exact = args.n <= args.exact_max
    truth = {}
    w0, c0 = time.time(), time.process_time()
    if exact:
        lo, hi = exact_pairs(x, min(thresholds))
        sims = np.einsum("ij,ij->i", x[lo], x[hi])
        for t in thresholds:
            truth[t] = (lo[sims >= t], hi[sims >= t])
        what = "every pair"
    else:
        rows = np.random.default_rng(args.seed + 2).choice(
            args.n, args.truth_sample, replace=False)
        lo, hi = exact_pairs(x, min(thresholds), rows)
        sims = np.einsum("ij,ij->i", x[lo], x[hi])
        for t in thresholds:
            truth[t] = (lo[sims >= t], hi[sims >= t])
        what = f"{args.truth_sample:,} random points' pairs"
    print(f"truth ({what}, matrix products): {time.time() - w0:.1f} s wall, "
          f"{time.process_time() - c0:.1f} s CPU", flush=True)
    print(f"\n{'method':32s} {'n':>9} {'t':>5} {'wall s':>8} {'CPU s':>8} "
          f"{'+MB rss/heap':>13} {'pairs':>9} {'dups':>9} {'recall':>7}")
    kept_groups = {}
    probes = [None if p == "exact" else int(p)
              for p in args.probes.split(",")]
    for t, probe in [(t, p) for p in probes for t in thresholds]:
        found, groups, wall, cpu, peak = ours(store, args.n, t, probe)
        num_pairs = len(found[0])
        if exact:
            ref = truth[t]
        else:
            sample = set(rows.tolist())
            keep = np.array([a in sample or b in sample for a, b in
                             zip(*found)], bool)
            found = (found[0][keep], found[1][keep]) if len(keep) else found
            ref = truth[t]
        if probe is None:
            kept_groups[t] = groups
        name = "ours: cells, " + ("exact band" if probe is None
                                  else f"{probe} nearest")
        print(f"{name:32s} {args.n:>9,} {t:>5} "
              f"{wall:8.1f} {cpu:8.1f} {f'{peak[0]:.0f}/{peak[1]:.0f}':>13} "
              f"{num_pairs:>9,} "
              f"{len(groups[0]):>9,} {recall_of(found, ref):7.4f}",
              flush=True)
    store.close()
    if exact and 0.95 in kept_groups:
        from fiftyone_ai_search import duplicates

        ids = [f"{i + 1:024x}" for i in range(args.n)]
        base = rss_mb()
        reset_peak()
        w0, c0 = time.time(), time.process_time()
        groups = duplicates.group(ids, x, 0.95)
        wall, cpu = time.time() - w0, time.process_time() - c0
        peak = rss_mb("VmHWM") - base
        dup, kept, sims = kept_groups[0.95]
        mine = {}
        for d, k in zip(dup.tolist(), kept.tolist()):
            mine.setdefault(ids[k], []).append(ids[d])
        same = ({k: sorted(d for d, _ in v) for k, v in groups.items()}
                == {k: sorted(v) for k, v in mine.items()})
        print(f"{'exact: duplicates.group (today)':32s} {args.n:>9,} "
              f"{0.95:>5} {wall:8.1f} {cpu:8.1f} {peak:13.0f} {'-':>9} "
              f"{sum(len(v) for v in groups.values()):>9,} {'1':>7}  "
              f"(same groups as ours: {same})", flush=True)
        brain_rows(args, x)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
