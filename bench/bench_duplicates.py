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

Memory: the peak of the process's anonymous memory above what it held
before the pass (sampled every 20 ms: the index's vectors the engine maps
from its files are the opened index, not the pass), beside the kernel's
high-water mark of all of it (``VmHWM``, reset before each pass).

Beside it: today's exact path (``duplicates.group`` on all vectors in RAM)
at 0.95 on all of them (``--n`` up to ``--exact-max``, with whether its
groups equal ours) or on the first ``--subset`` of them; FiftyOne Brain's
``find_duplicates`` on its ``sklearn`` backend (``--brain`` sizes, subsets
of the same vectors, in a private mongod), stopping after the first size
that takes over ``--brain-max-s``.

Uniqueness (``--uniqueness``): each point's 3 nearest others through the
cells (:func:`~fiftyone_ai_search.query.pairs.nearest_by_cells`, what
``ais.compute_uniqueness`` runs), with the recall of the true 3 nearest
and the error of the Brain's score (the weighted mean distance, before the
division by the largest) on ``--truth-sample`` points; and FiftyOne Brain's
``compute_uniqueness(similarity_index="ai_search")`` on our index at
``--brain-uniqueness`` samples (64-d, the tiny CLIP's index filled with
random vectors): a search per sample, extrapolated to ``--n``.

``--profile FILE``: the pass at the middle threshold runs under cProfile
(the stats saved, the top printed; marked ``(profiled)``).

Examples::

    python bench/bench_duplicates.py --n 100000
    flock /tmp/aisearch-bench.lock nice -n 15 \\
        python bench/bench_duplicates.py --n 1000000 --probes 3 \\
        --thresholds 0.98,0.95,0.9 --keep /tmp/ais-bench-dups-1m
"""

import argparse
import os
import shutil
import sys
import cProfile
import pstats
import tempfile
import threading
import time

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
    p.add_argument("--brain", default="10000,30000,100000",
                   help="sizes for the Brain's sklearn find_duplicates "
                        "('' for none)")
    p.add_argument("--brain-max-s", type=float, default=150.0)
    p.add_argument("--subset", type=int, default=100_000,
                   help="above --exact-max, today's exact path and the "
                        "Brain run on the first this many points")
    p.add_argument("--uniqueness", type=int, default=1,
                   help="1: the 3 nearest of every point through the cells")
    p.add_argument("--brain-uniqueness", type=int, default=5000,
                   help="samples for the Brain's compute_uniqueness on our "
                        "index (0: none)")
    p.add_argument("--profile", default=None,
                   help="cProfile the pass at the middle threshold into "
                        "this file")
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


class PeakAnon:
    """The peak of this process's anonymous memory (``RssAnon``, MB) while
    in the block, sampled every 20 ms, above what it was on entry."""

    def __enter__(self):
        self.base = self.peak = rss_mb("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb("RssAnon"))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb("RssAnon"))

    @property
    def above(self):
        return self.peak - self.base


def measured(fn):
    """``(result, wall s, CPU s, +MB anonymous peak, +MB VmHWM)`` of
    ``fn()``."""
    base = rss_mb()
    reset_peak()
    with PeakAnon() as anon:
        w0, c0 = time.time(), time.process_time()
        result = fn()
        wall, cpu = time.time() - w0, time.process_time() - c0
    return result, wall, cpu, anon.above, rss_mb("VmHWM") - base


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


def _reader(store):
    """``(rows_of, read)`` of the pass over every point of ``store``."""

    def rows_of(ids):
        return np.array([int(i, 16) - 1 for i in ids], np.int64)

    def read(values):
        with store.session():
            return store.get_cell_vectors(values)

    return rows_of, read


def ours(store, n, threshold, probe, profile=None):
    """The pass through the cells; returns the pairs, the groups and what
    it took. ``profile``: a file to save the pass's cProfile stats to (the
    pass runs under the profiler: a few hundred thousand calls, most time
    in few numpy calls)."""
    from fiftyone_ai_search.query import pairs

    rows_of, read = _reader(store)
    prof = cProfile.Profile() if profile else None

    def run():
        if prof:
            prof.enable()
        lo, hi, sim, seen = pairs.pairs_by_cells(
            store.cells(), read, rows_of, threshold, probe=probe)
        groups = pairs.group_pairs(n, lo, hi, sim)
        if prof:
            prof.disable()
        return lo, hi, sim, seen, groups

    (lo, hi, _, seen, groups), wall, cpu, anon, hwm = measured(run)
    assert seen == n, (seen, n)
    if prof:
        prof.dump_stats(profile)
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(14)
        stats.sort_stats("cumulative").print_stats(14)
    return (lo, hi), groups, wall, cpu, (anon, hwm)


def uniqueness_row(store, x, rows):
    """Each point's 3 nearest others through the cells, against exact on
    ``rows``."""
    from fiftyone_ai_search import uniqueness
    from fiftyone_ai_search.query import pairs

    rows_of, read = _reader(store)
    k = len(uniqueness.WEIGHTS)

    def run():
        near, sims, _, seen = pairs.nearest_by_cells(store.cells(), read,
                                                     rows_of, len(x), k)
        return near, sims, seen, uniqueness.scores_of(sims)

    (near, sims, seen, _), wall, cpu, anon, hwm = measured(run)
    assert seen == len(x), (seen, len(x))
    # the truth on the sample: its 3 nearest others, every point compared
    true_rows, true_sims = [], []
    step = max(16, CHUNK // len(x))
    for s in range(0, len(rows), step):
        q = rows[s:s + step]
        exact = x[q] @ x.T
        exact[np.arange(len(q)), q] = -np.inf
        top = np.argsort(-exact, axis=1)[:, :k]
        true_rows.append(top)
        true_sims.append(np.take_along_axis(exact, top, axis=1))
    true_rows, true_sims = np.concatenate(true_rows), np.concatenate(true_sims)
    hits = np.mean([len(set(a) & set(b)) / k for a, b in
                    zip(near[rows].tolist(), true_rows.tolist())])

    def means(s):
        return np.mean((1.0 - np.maximum(s, -1.0)) * uniqueness.WEIGHTS,
                       axis=1)

    err = np.abs(means(sims[rows]) - means(true_sims)) / means(true_sims)
    print(f"{'ours: uniqueness, 3 nearest':32s} {len(x):>9,} {'-':>5} "
          f"{wall:8.1f} {cpu:8.1f} {f'{anon:.0f}/{hwm:.0f}':>13} {'-':>9} "
          f"{'-':>9} {hits:7.4f}  (score error on {len(rows):,} points: "
          f"median {np.median(err):.2e}, max {err.max():.2e})", flush=True)


def recall_of(found, truth):
    if not len(truth[0]):
        return float("nan")
    f = set(zip(found[0].tolist(), found[1].tolist()))
    t = list(zip(truth[0].tolist(), truth[1].tolist()))
    return sum(p in f for p in t) / len(t)


def _fiftyone():
    """An isolated FiftyOne (a private mongod), once."""
    if "fiftyone" not in sys.modules:
        import _env

        _env.setup()


def brain_uniqueness_row(args, scratch):
    """FiftyOne Brain's ``compute_uniqueness(similarity_index=...)`` on our
    index (64-d: the tiny CLIP's, filled with random unit vectors), and
    ours on the same samples; the Brain's time extrapolated to ``--n``."""
    size = args.brain_uniqueness
    if not size:
        return
    _fiftyone()
    import fiftyone.brain as fob

    import bench_brain as bb
    import bench_search as bs
    import fiftyone_ai_search as ais
    from fiftyone_ai_search.demo import tiny_clip_model_name

    dataset = bs.build_dataset(size, bs.small_images(os.path.join(
        scratch, "images")))
    ids = dataset.values("id")
    bb.fill_index(dataset, ids, bs.random_unit_vectors(size, 64),
                  tiny_clip_model_name(), None)
    _, wall, cpu, anon, hwm = measured(lambda: fob.compute_uniqueness(
        dataset, uniqueness_field="u_brain", similarity_index=bb.OURS,
        progress=False))
    print(f"{'brain compute_uniqueness, ours':32s} {size:>9,} {'-':>5} "
          f"{wall:8.1f} {cpu:8.1f} {f'{anon:.0f}/{hwm:.0f}':>13} {'-':>9} "
          f"{'-':>9} {'-':>7}  (a search per sample: "
          f"~{wall / size * args.n / 3600:.1f} h at {args.n:,})", flush=True)
    _, wall, cpu, anon, hwm = measured(lambda: ais.compute_uniqueness(
        dataset, "u_ours"))
    brain, mine = (np.array(dataset.values(f), float)
                   for f in ("u_brain", "u_ours"))
    print(f"{'ours: ais.compute_uniqueness':32s} {size:>9,} {'-':>5} "
          f"{wall:8.1f} {cpu:8.1f} {f'{anon:.0f}/{hwm:.0f}':>13} {'-':>9} "
          f"{'-':>9} {'-':>7}  (exact at this size; largest difference "
          f"from the Brain's scores {np.abs(brain - mine).max():.1e})",
          flush=True)
    dataset.delete()


def brain_rows(args, x):
    """FiftyOne Brain's find_duplicates (sklearn) on subsets of ``x``."""
    sizes = [int(s) for s in args.brain.split(",") if s]
    if not sizes:
        return
    _fiftyone()
    import fiftyone as fo
    import fiftyone.brain as fob

    for size in sizes:
        if size > len(x):
            break
        dataset = fo.Dataset()
        dataset.add_samples([fo.Sample(filepath=f"/none/{i}.jpg")
                             for i in range(size)], progress=False)
        index = fob.compute_similarity(dataset, embeddings=x[:size],
                                       backend="sklearn", brain_key="sk")
        _, wall, cpu, anon, hwm = measured(
            lambda: index.find_duplicates(thresh=1 - 0.95))
        found = sum(len(v) for v in index.neighbors_map.values())
        print(f"{'brain sklearn find_duplicates':32s} {size:>9,} {0.95:>5} "
              f"{wall:8.1f} {cpu:8.1f} {f'{anon:.0f}/{hwm:.0f}':>13} "
              f"{'-':>9} {found:>9,} {'-':>7}",
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
          f"{'+MB anon/hwm':>13} {'pairs':>9} {'dups':>9} {'recall':>7}")
    kept_groups = {}
    probes = [None if p == "exact" else int(p)
              for p in args.probes.split(",")]
    middle = thresholds[len(thresholds) // 2]
    for t, probe in [(t, p) for p in probes for t in thresholds]:
        profile = (args.profile if args.profile and t == middle
                   and probe == probes[-1] else None)
        found, groups, wall, cpu, peak = ours(store, args.n, t, probe,
                                              profile)
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
                                  else f"{probe} nearest") + (
            " (profiled)" if profile else "")
        print(f"{name:32s} {args.n:>9,} {t:>5} "
              f"{wall:8.1f} {cpu:8.1f} {f'{peak[0]:.0f}/{peak[1]:.0f}':>13} "
              f"{num_pairs:>9,} "
              f"{len(groups[0]):>9,} {recall_of(found, ref):7.4f}",
              flush=True)
    if args.uniqueness:
        pick = (rows if not exact else np.random.default_rng(
            args.seed + 2).choice(args.n, min(args.n, args.truth_sample),
                                  replace=False))
        uniqueness_row(store, x, pick)
    store.close()
    size = args.n if exact else min(args.n, args.subset)
    if size:
        exact_row(args, x, size, exact, kept_groups)
    scratch = tempfile.mkdtemp(prefix="bench-dups-brain-",
                               dir=os.environ.get("BENCH_TMP"))
    try:
        brain_uniqueness_row(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


def exact_row(args, x, size, exact, kept_groups):
    """Today's exact path on the first ``size`` points, and the Brain's
    find_duplicates on subsets of them."""
    from fiftyone_ai_search import duplicates

    ids = [f"{i + 1:024x}" for i in range(size)]
    groups, wall, cpu, anon, hwm = measured(
        lambda: duplicates.group(ids, x[:size], 0.95))
    note = ""
    if exact and 0.95 in kept_groups:
        dup, kept, sims = kept_groups[0.95]
        mine = {}
        for d, k in zip(dup.tolist(), kept.tolist()):
            mine.setdefault(ids[k], []).append(ids[d])
        same = ({k: sorted(d for d, _ in v) for k, v in groups.items()}
                == {k: sorted(v) for k, v in mine.items()})
        note = f"  (same groups as ours: {same})"
    print(f"{'exact: duplicates.group (today)':32s} {size:>9,} "
          f"{0.95:>5} {wall:8.1f} {cpu:8.1f} "
          f"{f'{anon:.0f}/{hwm:.0f}':>13} {'-':>9} "
          f"{sum(len(v) for v in groups.values()):>9,} {'1':>7}{note}",
          flush=True)
    brain_rows(args, x[:size])


if __name__ == "__main__":
    main()
