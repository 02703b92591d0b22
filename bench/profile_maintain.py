"""Where ``maintain_index`` spends its time (issue 25, point 5), by phase.

Writes ``--n`` CLIP-like points (the ``clip-b32`` world of
``bench_audit.py``) into an embedded index, then does what
``maintain_index`` does after a sync: runs ``maintain`` once with every
phase of it timed (wall and CPU seconds), gets the audit's generic prompts
as ``maintain_index`` gets them (``index/audit_prompts.py``: read from the
file the sync stored; and, timed apart, the cold case where no sync stored
it: ``--model`` loaded and the prompts encoded), and runs the audit. The
audit asks as many prompts as there are generic ones, drawn from the
CLIP-like world (the model's would mean nothing in it). ``--profile`` adds
a cProfile of ``maintain`` (top 30 by cumulative time).

The assignment runs in a thread beside the reading of the next stretch
of vectors (from the segments' files where their layout is understood,
``SegmentVectors.rows``; else converted out of the engine's lists,
``records_to_matrix``, which also converts the sample of rows checked
against the engine): their wall times overlap, and the CPU seconds of a
phase are the process's during its calls.

``--kernels`` times only the two numeric phases that ``store/cells.py``
owns, at the sizes ``maintain`` gives them for ``--n`` points (k-means on
~64 points a cell, then every point's nearest centre), as shipped and as
they were before issue 25 (float32 products, 12 iterations on the whole
sample), CPU and wall seconds, without the index.

``--assign-variants`` times only every point's nearest centre, outside
the index, by the ways tried to make it cheaper at 10M points (issue 25,
point 5: ``--cells 4096``, the points generated 100k at a time), and
counts the points each gives another cell than float32 products of all
the centres do (see :func:`assign_variants`).

Examples::

    python bench/profile_maintain.py --n 200000
    python bench/profile_maintain.py --n 1000000
    python bench/profile_maintain.py --n 1000000 --model none  # no prompts
    python bench/profile_maintain.py --n 1000000 --kernels
    python bench/profile_maintain.py --n 1000000 --cells 4096 --assign-variants
    BENCH_TMP=/tmp python bench/profile_maintain.py --n 10000000 --model none
    python bench/profile_maintain.py --n 10000000 --ingest-only /tmp/ais-10m
    python bench/profile_maintain.py --n 10000000 --reuse /tmp/ais-10m --model none

Above 2M points the vectors are generated and written 100k at a time
(10M 512-d float32 is 20 GB): 10M needs ~30 GB of disk under
``BENCH_TMP``.
"""

import argparse
import collections
import contextlib
import functools
import os
import resource
import shutil
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_audit import filled_store  # noqa: E402
from bench_scale import CLIP_B32_PARAMS, ClipLike  # noqa: E402

#: (owner, attribute, phase name): what is timed
PHASES = (
    ("upkeep", "_give_ranks", "ranks (points lacking one)"),
    ("base", "VectorStore.get_bucket_vectors", "learning sample read"),
    ("cells", "learn", "k-means learning"),
    ("edge", "EdgeStore._points_lacking", "scans of points lacking a cell"),
    ("edge", "EdgeStore._segment_vectors",
     "the vectors' places read from the segments' files"),
    ("segment_vectors", "SegmentVectors.rows",
     "vectors read from the segments' files"),
    ("base", "records_to_matrix", "records_to_matrix"),
    ("cells", "Cells.assign", "assignment"),
    ("upkeep", "_grouped", "grouping by cell"),
    ("edge", "EdgeStore._set_field", "payload writes"),
    ("edge", "EdgeStore._compact", "compaction"),
    ("edge", "EdgeStore._write_cells", "cells written"),
    ("audit", "ExactTopK.start", "the audit's queries drawn (in the pass)"),
    ("audit", "ExactTopK.add",
     "the audit's exact top-k, scored beside the assignment (*)"),
    ("edge", "EdgeStore._exact_neighbour_vectors",
     "exact searches, batched (audit)"),
)

#: phase: [wall s, CPU s, calls, major page faults]
totals = collections.defaultdict(lambda: [0.0, 0.0, 0, 0])
#: wall seconds of each call, by phase
calls = collections.defaultdict(list)
_depth = [0]


def _timed(fn, name):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _depth[0] += 1
        w, c = time.perf_counter(), time.process_time()
        faults = _major_faults()
        try:
            return fn(*args, **kwargs)
        finally:
            _depth[0] -= 1
            t = totals[name]
            t[0] += time.perf_counter() - w
            t[1] += time.process_time() - c
            t[2] += 1
            t[3] += _major_faults() - faults
            calls[name].append(time.perf_counter() - w)
    return wrapper


#: above this many points the index is written as generated, a chunk at a
#: time (see streamed_store): other vectors of the same world than the
#: whole draw below it, which stays as measured before
STREAM_ABOVE = 2_000_000


def _du_mb(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in
               os.walk(path) for f in files) / 1e6


def _major_faults():
    """The process's page faults that waited for the disk, so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_majflt


#: (wall s the reader lived, s it spent reading, bytes of the vectors, bytes
#: read, its window) of the reads of the original vectors ahead of
#: maintain's scans (edge._VectorsAhead, a thread beside)
vectors_ahead = []


def _watch_vectors_ahead(edge):
    run = edge._VectorsAhead.run

    @functools.wraps(run)
    def wrapper(self):
        w = time.perf_counter()
        try:
            return run(self)
        finally:
            vectors_ahead.append((time.perf_counter() - w, self.seconds,
                                  self.total, self.read, self.window))

    edge._VectorsAhead.run = wrapper


def streamed_store(tmp, world, n, rng, chunk=100_000):
    """An embedded index in ``tmp`` of ``n`` points of ``world``, generated
    and written ``chunk`` at a time (10M 512-d float32 is 20 GB: more than
    this machine's free memory), ids as ``filled_store``'s; and the
    seconds it took."""
    from fiftyone_ai_search.store import EdgeStore, IndexInfo

    store = EdgeStore("audit", tmp, lock_timeout=600)
    store.ensure(IndexInfo("bench", None, "bench@1", world.dim))
    t0 = time.time()
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = world.images(world.labels(m, rng), rng)
        ids = [f"{i + 1:024x}" for i in range(s, s + m)]
        for a in range(0, m, 20_000):
            store.upsert(ids[a:a + 20_000], x[a:a + 20_000],
                         [{}] * len(ids[a:a + 20_000]))
        if (s // chunk) % 10 == 9:
            print(f"  upserted {s + m}: {time.time() - t0:.0f} s, load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    return store, time.time() - t0


def instrument():
    from fiftyone_ai_search.store import (audit, base, cells, edge,
                                          segment_vectors, upkeep)

    _watch_vectors_ahead(edge)

    modules = {"audit": audit, "base": base, "cells": cells, "edge": edge,
               "segment_vectors": segment_vectors, "upkeep": upkeep}
    for owner, attr, name in PHASES:
        obj = modules[owner]
        parts = attr.split(".")
        for p in parts[:-1]:
            obj = getattr(obj, p)
        if hasattr(obj, parts[-1]):
            setattr(obj, parts[-1], _timed(getattr(obj, parts[-1]), name))


def _chosen(rule):
    """What an audit chose and estimated (not when, nor how long)."""
    return {k: rule[k] for k in ("edges", "depths", "margins", "estimates")}


def report(title, wall, cpu):
    print(f"\n{title}: {wall:.1f} s wall, {cpu:.1f} s CPU (this process), "
          f"load average {os.getloadavg()[0]:.1f} at its end")
    print("| phase | calls | wall s | CPU s | major faults |\n"
          "|---|---|---|---|---|")
    for _, _, name in PHASES:
        if name in totals:
            w, c, n, f = totals[name]
            print(f"| {name} | {n} | {w:.1f} | {c:.1f} | {f} |")
    scans = calls.get("scans of points lacking a cell", [])
    if len(scans) > 4:
        q = len(scans) // 4
        print("scans of points lacking a cell, mean wall s of each quarter "
              "of the calls: " + ", ".join(
                  f"{np.mean(scans[i * q:(i + 1) * q]):.3f}"
                  for i in range(4)))
    print(flush=True)


def _old_nearest(x, centres, rows=8192):
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), rows):
        out[s:s + rows] = np.argmax(x[s:s + rows] @ centres.T, axis=1)
    return out


def _old_learn(x, k, seed=0, iterations=12):
    """k-means as learned before issue 25 (its Lloyd steps; empty cells
    are rare here and restarted alike)."""
    from scipy import sparse

    rng = np.random.default_rng(seed)
    centres = x[rng.choice(len(x), size=k, replace=False)].copy()
    for _ in range(iterations):
        labels = _old_nearest(x, centres)
        member = sparse.csr_matrix(
            (np.ones(len(x), dtype=np.float32), (labels, np.arange(len(x)))),
            shape=(k, len(x)))
        sums = np.asarray(member @ x)
        centres = (sums / np.maximum(np.linalg.norm(
            sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    return centres


def kernels(args):
    from fiftyone_ai_search.store import cells as cl

    world = ClipLike(args.dim, 1000, seed=0, uneven=True, **CLIP_B32_PARAMS)
    rng = np.random.default_rng(100)
    k = cl.num_cells(args.n)
    sample = world.images(world.labels(k * cl.SAMPLE_PER_CELL, rng), rng)
    print(f"{args.n} points: {k} cells learned from {len(sample)}; "
          "seconds wall / CPU")
    print("| phase | before issue 25 | shipped |\n|---|---|---|")
    timed = {}
    for label, fn in (("before", _old_learn), ("shipped", cl.learn)):
        w, c = time.perf_counter(), time.process_time()
        timed[label] = fn(sample, k)
        timed[label + " s"] = (f"{time.perf_counter() - w:.1f} / "
                               f"{time.process_time() - c:.1f}")
    print(f"| k-means learning | {timed['before s']} | "
          f"{timed['shipped s']} |", flush=True)
    centres = timed["shipped"]
    points = world.images(world.labels(args.n, rng), rng)
    seconds, labels = {}, {}
    for label, fn in (("before", _old_nearest),
                      ("shipped", cl._nearest_centres)):
        w, c = time.perf_counter(), time.process_time()
        # in maintain's rounds
        labels[label] = np.concatenate([
            fn(points[s:s + 32768], centres)
            for s in range(0, args.n, 32768)])
        seconds[label] = (f"{time.perf_counter() - w:.1f} / "
                          f"{time.process_time() - c:.1f}")
    print(f"| assignment of {args.n} points | {seconds['before']} | "
          f"{seconds['shipped']} |")
    print(f"points given another cell than by float32 products: "
          f"{int((labels['before'] != labels['shipped']).sum())}")


#: the assignment's variants that ``--assign-variants`` can time
VARIANTS = ("before", "shipped", "reuse", "coarse-4", "coarse-8", "coarse-exact",
            "bf16-exact")


def _reused_nearest(x, centres, block):
    """Float32 products of all centres, into the same ``block`` of scores
    each time (not a new one a call: 128 MB at 8,192 rows x 4,096 cells,
    whose pages the kernel maps and zeroes anew)."""
    out = block[:len(x)]
    np.matmul(x, centres.T, out=out)
    return np.argmax(out, axis=1)


class _Coarse:
    """The fine centres grouped under ``groups`` coarse ones (k-means on
    the centres; each centre in the group of its nearest that is not full,
    as equal groups: in the group of its nearest, one group held most
    centres here): a point is
    scored against the coarse centres, then against the fine centres of
    its ``probe`` nearest groups only; ``exact``: then also against every
    group whose spherical cap (the angle of its farthest member from its
    coarse centre) may hold a centre more similar than the best found."""

    def __init__(self, centres, groups, probe, exact=False):
        from fiftyone_ai_search.store import cells as cl

        self.centres, self.probe, self.exact = centres, probe, exact
        self.coarse = cl.learn(centres, groups)
        full = -(-len(centres) // groups)
        of = np.full(len(centres), -1)
        sizes = np.zeros(groups, int)
        scores = centres @ self.coarse.T
        for flat in np.argsort(-scores, axis=None).tolist():
            i, g = divmod(flat, groups)
            if of[i] < 0 and sizes[g] < full:
                of[i], sizes[g] = g, sizes[g] + 1
        self.members = [np.flatnonzero(of == g) for g in range(groups)]
        # each group's coarse centre: the unit mean of its members
        self.coarse = np.stack([centres[m].sum(axis=0) for m in
                                self.members]).astype(np.float32)
        self.coarse /= np.linalg.norm(self.coarse, axis=1, keepdims=True)
        cos = np.array([(centres[m] @ self.coarse[g]).min() if len(m) else 1
                        for g, m in enumerate(self.members)], np.float32)
        self.cos, self.sin = cos, np.sqrt(np.maximum(0, 1 - cos ** 2))
        #: (point, centre) products made, and points scored beyond their
        #: ``probe`` groups
        self.products = self.fallbacks = 0

    def __call__(self, x):
        n = len(x)
        t = x @ self.coarse.T
        best = np.full(n, -np.inf, np.float32)
        arg = np.zeros(n, np.int64)
        self.products += t.size
        near = np.argpartition(-t, self.probe - 1, axis=1)[:, :self.probe]
        seen = np.zeros(t.shape, bool)
        seen[np.arange(n)[:, None], near] = True
        self._visit(x, seen, best, arg)
        if self.exact:
            norms = np.linalg.norm(x, axis=1)[:, None]
            perp = np.sqrt(np.maximum(norms ** 2 - t ** 2, 0))
            # the most a centre within the cap can score (plus rounding)
            bound = np.where(t >= norms * self.cos, norms,
                             t * self.cos + perp * self.sin) + 1e-5 * norms
            more = (bound >= best[:, None]) & ~seen
            self.fallbacks += int(more.any(axis=1).sum())
            self._visit(x, more, best, arg)
        return arg

    def _visit(self, x, mask, best, arg):
        for g, members in enumerate(self.members):
            rows = np.flatnonzero(mask[:, g])
            if not len(rows) or not len(members):
                continue
            s = x[rows] @ self.centres[members].T
            self.products += s.size
            a = np.argmax(s, axis=1)
            v = s[np.arange(len(rows)), a]
            better = v > best[rows]
            best[rows[better]] = v[better]
            arg[rows[better]] = members[a[better]]


class _Bf16Exact:
    """bfloat16 products (torch), then float32 ones of each row's centres
    within twice the products' proven error of its best: the same nearest
    centre as float32 products."""

    def __init__(self, centres):
        import torch

        self.torch, self.centres = torch, centres
        self.ct = torch.from_numpy(centres).to(torch.bfloat16).T.contiguous()
        #: rows with more than one candidate, and (row, centre) pairs
        #: rescored
        self.ambiguous = self.pairs = 0

    def __call__(self, x):
        torch = self.torch
        s = torch.from_numpy(x).to(torch.bfloat16) @ self.ct
        v, i = s.max(dim=1)
        # inputs rounded (2u|x||c|), the output rounded (u|s|), u = 2^-8
        err = np.linalg.norm(x, axis=1) * (3 * 2.0 ** -8 + 2e-4)
        floor = torch.from_numpy(v.float().numpy() - 2 * err)
        r, c = (s.float() >= floor[:, None]).nonzero(as_tuple=True)
        r, c = r.numpy(), c.numpy()
        out = i.numpy().astype(np.int64)
        counts = np.bincount(r, minlength=len(x))
        self.ambiguous += int((counts > 1).sum())
        self.pairs += len(r)
        exact = np.einsum("ij,ij->i", x[r], self.centres[c])
        order = np.lexsort((c, -exact, r))
        first = np.r_[True, r[order][1:] != r[order][:-1]]
        out[r[order][first]] = c[order][first]
        return out


def assign_variants(args):
    """Every point's nearest centre alone, outside the index, by each of
    ``--variants``, on the same chunks of points (generated 100k at a
    time: 10M x 512 float32 is 20 GB) in maintain's stretches of
    ``upkeep.ASSIGN_STRETCH`` rows: wall and CPU seconds, and the points
    given another cell than by float32 products of all centres (``before``)
    with how much less similar the centre they got is."""
    from fiftyone_ai_search.store import cells as cl
    from fiftyone_ai_search.store import upkeep

    world = ClipLike(args.dim, 1000, seed=0, uneven=True, **CLIP_B32_PARAMS)
    rng = np.random.default_rng(100)
    k = args.cells or cl.num_cells(args.n)
    sample = world.images(world.labels(k * cl.SAMPLE_PER_CELL, rng), rng)
    w = time.perf_counter()
    centres = cl.learn(sample, k)
    del sample
    print(f"{args.n} points, {k} cells (learned in "
          f"{time.perf_counter() - w:.0f} s), load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    names = args.variants.split(",")
    fns = {"before": lambda x: _old_nearest(x, centres),
           "shipped": lambda x: cl._nearest_centres(x, centres)}
    block = np.empty((upkeep.ASSIGN_STRETCH, k), np.float32)
    fns["reuse"] = lambda x: _reused_nearest(x, centres, block)
    for name in names:
        if name.startswith("coarse-"):
            probe = 4 if name == "coarse-exact" else int(name.split("-")[1])
            fns[name] = _Coarse(centres, round(np.sqrt(k)), probe,
                                exact=name == "coarse-exact")
        elif name == "bf16-exact":
            fns[name] = _Bf16Exact(centres)
    seconds = {name: [0.0, 0.0] for name in names}
    wrong = {name: [] for name in names}
    stretch = upkeep.ASSIGN_STRETCH
    for s in range(0, args.n, 100_000):
        x = world.images(world.labels(min(100_000, args.n - s), rng), rng)
        for a in range(0, len(x), stretch):
            part = x[a:a + stretch]
            got = {}
            for name in names:
                w, c = time.perf_counter(), time.process_time()
                got[name] = fns[name](part)
                seconds[name][0] += time.perf_counter() - w
                seconds[name][1] += time.process_time() - c
            truth = got.get("before")
            if truth is None:
                continue
            for name in names:
                rows = np.flatnonzero(got[name] != truth)
                if len(rows):
                    scores = part[rows] @ centres.T
                    wrong[name].append(scores.max(axis=1) - scores[
                        np.arange(len(rows)), got[name][rows]])
        if (s // 100_000) % 10 == 9:
            print(f"  {s + len(x)} points, load average "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    print("| variant | wall s | CPU s | points given another cell | their "
          "centre less similar by (median / max) | note |\n"
          "|---|---|---|---|---|---|")
    for name in names:
        gaps = np.concatenate(wrong[name]) if wrong[name] else np.zeros(0)
        fn = fns[name]
        note = ""
        if isinstance(fn, _Coarse):
            note = (f"{len(fn.coarse)} groups, {fn.probe} probed: "
                    f"{fn.products / args.n:.0f} products a point of {k}; "
                    f"{fn.fallbacks / args.n:.1%} scored beyond them")
        elif isinstance(fn, _Bf16Exact):
            note = (f"{fn.ambiguous / args.n:.1%} rows rescored, "
                    f"{fn.pairs / args.n:.1f} pairs a point")
        print(f"| {name} | {seconds[name][0]:.1f} | {seconds[name][1]:.1f} "
              f"| {len(gaps) / args.n:.4%} | "
              + (f"{np.median(gaps):.4f} / {gaps.max():.4f}" if len(gaps)
                 else "-") + f" | {note} |", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--min-points", type=int, default=None,
                   help="maintain's min_points (default: cells.MIN_POINTS): "
                   "the cells of a smaller index")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--no-audit", action="store_true")
    p.add_argument("--searches-too", action="store_true",
                   help="after the audit, the same audit by exact searches "
                   "(as an audit whose pass did not read every point), "
                   "timed apart")
    p.add_argument("--kernels", action="store_true")
    p.add_argument("--assign-variants", action="store_true",
                   help="only every point's nearest centre, outside the "
                   "index, by each of --variants (see assign_variants)")
    p.add_argument("--variants", default="before,shipped,reuse,coarse-4,"
                   "coarse-8,coarse-exact,bf16-exact")
    p.add_argument("--cells", type=int, default=None,
                   help="--assign-variants: this many cells (default: as "
                   "maintain splits --n points)")
    p.add_argument("--ingest-only", metavar="DIR", default=None,
                   help="write the --n points into an index in DIR (made, "
                   "kept) and stop: a later --reuse DIR times maintain on "
                   "it (10M takes ~30 min to write)")
    p.add_argument("--reuse", metavar="DIR", default=None,
                   help="time maintain on the index that --ingest-only "
                   "wrote in DIR (it is changed by the pass, then deleted "
                   "unless --keep)")
    p.add_argument("--keep", action="store_true",
                   help="with --reuse: keep DIR after the run")
    p.add_argument("--model", default="ViT-B-32",
                   help="the index's model, whose generic prompts the "
                   "audit gets as maintain_index does: stored by the sync, "
                   "and cold (this model loaded, the prompts encoded). "
                   "ViT-B-32 without pretrained weights (none are on this "
                   "machine) loads as the default model does, but for "
                   "reading its weights file; 'none': not timed")
    args = p.parse_args(argv)
    if args.kernels:
        return kernels(args)
    if args.assign_variants:
        return assign_variants(args)

    from fiftyone_ai_search.config import get_settings
    from fiftyone_ai_search.index import audit_prompts
    from fiftyone_ai_search.store import audit, edge

    world = ClipLike(args.dim, 1000, seed=0, uneven=True, **CLIP_B32_PARAMS)
    rng = np.random.default_rng(100)
    stream = args.n > STREAM_ABOVE
    if args.ingest_only or args.reuse:
        # the prompts from a generator of their own: a --reuse run does not
        # replay the ingest's draws
        stream = True
        db = None
        prompts = world.texts(world.labels(len(audit.GENERIC_PROMPTS),
                                           np.random.default_rng(101)),
                              np.random.default_rng(102))
    else:
        db = None if stream else world.images(world.labels(args.n, rng),
                                              rng)
        prompts = world.texts(world.labels(len(audit.GENERIC_PROMPTS), rng),
                              rng)
    if args.ingest_only:
        os.makedirs(args.ingest_only, exist_ok=False)
        tmp = args.ingest_only
    elif args.reuse:
        tmp = args.reuse
    else:
        tmp = tempfile.mkdtemp(prefix="profile-maintain-",
                               dir=os.environ.get("BENCH_TMP"))
    try:
        if args.reuse:
            from fiftyone_ai_search.store import EdgeStore

            w = time.perf_counter()
            store = EdgeStore("audit", tmp, lock_timeout=600)
            seconds = time.perf_counter() - w
            print(f"reused the index in {tmp} ({store.count()} points, "
                  f"{_du_mb(tmp):.0f} MB; opened in {seconds:.1f} s)",
                  flush=True)
        elif args.ingest_only:
            store, seconds = streamed_store(tmp, world, args.n, rng)
            store.close()
            print(f"upsert {args.n}: {seconds:.1f} s, load average "
                  f"{os.getloadavg()[0]:.1f}; kept in {tmp} "
                  f"({_du_mb(tmp):.0f} MB)", flush=True)
            return
        elif stream:
            store, seconds = streamed_store(tmp, world, args.n, rng)
        else:
            store, seconds = filled_store(tmp, db)
        print(f"upsert {args.n}: {seconds:.1f} s, load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        del db
        instrument()
        prof = None
        if args.profile:
            import cProfile
            prof = cProfile.Profile()
        # as maintain_index does: the pass that learns the cells takes the
        # audit's exact answers (its queries drawn, and scored beside the
        # assignment)
        exact = None if args.no_audit else audit.ExactTopK(store, prompts)
        w, c = time.perf_counter(), time.process_time()
        faults = _major_faults()
        with (prof if prof is not None else contextlib.nullcontext()):
            if args.min_points is None:
                store.maintain(exact=exact)
            else:
                store.maintain(min_points=args.min_points, exact=exact)
        whole = [time.perf_counter() - w, time.process_time() - c]
        report(f"maintain at {args.n}", *whole)
        if exact is not None:
            print(f"the audit's exact top-k in the pass: {exact.seconds:.1f} "
                  f"s CPU of the worker thread ({len(exact.queries)} "
                  f"queries, {exact.seen} points)" if exact.queries
                  is not None else "the audit's exact top-k: not taken "
                  "(the pass did not learn)")
        print(f"major page faults during maintain: {_major_faults() - faults}")
        for lived, seconds, total, done, window in vectors_ahead:
            print(f"original vectors read ahead (a thread beside, window "
                  f"{window / 2**20:.0f} MiB): {done / 2**20:.0f} of "
                  f"{total / 2**20:.0f} MiB, {seconds:.1f} s spent reading "
                  f"over {lived:.1f} s")
        if edge.stats["builder_read_ahead"]:
            print(f"the compaction's copy of the originals read ahead of "
                  f"the engine (builder_reads): "
                  f"{edge.stats['builder_read_ahead'] / 2**20:.0f} MiB")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS so far {peak:.0f} MiB; index on disk "
              f"{_du_mb(tmp):.0f} MB", flush=True)
        if prof is not None:
            import pstats
            pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        if args.model.lower() != "none":
            from fiftyone_ai_search.embedding.model import resolve_model

            spec = resolve_model(args.model)
            ref = {"name": "audit", "backend": "edge", "model": spec.name,
                   "pretrained": spec.pretrained,
                   "model_identity": spec.identity}
            settings = get_settings(storage_dir=os.path.join(tmp, "storage"))
            seconds = {}
            # first as no sync stored them (the model loaded), then as
            # maintain_index finds them after a sync on this machine
            for case in ("cold", "stored"):
                w, c = time.perf_counter(), time.process_time()
                audit_prompts.vectors(ref, settings)
                seconds[case] = (time.perf_counter() - w,
                                 time.process_time() - c)
            whole[0] += seconds["stored"][0]
            whole[1] += seconds["stored"][1]
            print(f"audit prompts ({len(audit.GENERIC_PROMPTS)}, "
                  f"{spec.identity}): read as the sync stored them "
                  f"{seconds['stored'][0]:.2f} s wall, "
                  f"{seconds['stored'][1]:.2f} s CPU; cold (no sync stored "
                  f"them: model loaded, prompts encoded) "
                  f"{seconds['cold'][0]:.1f} s wall, "
                  f"{seconds['cold'][1]:.1f} s CPU", flush=True)
        if not args.no_audit:
            totals.clear()
            w, c = time.perf_counter(), time.process_time()
            rule = audit.audit(store, prompts, exact=exact)
            seconds = (time.perf_counter() - w, time.process_time() - c)
            whole[0] += seconds[0]
            whole[1] += seconds[1]
            if rule is None:
                # below cells.MIN_POINTS: no cells, nothing to audit
                print("audit: none (the index has no complete cells)")
            else:
                report("audit", *seconds)
                print(f"audit: {seconds[0]:.1f} s wall, {seconds[1]:.1f} s "
                      f"CPU, load average {os.getloadavg()[0]:.1f}; exact "
                      f"top-k from {rule['truth']}; depths "
                      f"{rule['depths']}, estimates {rule['estimates']}")
                if args.searches_too:
                    # the same audit by exact searches, as before the pass
                    # took its answers (not part of maintain_index's time)
                    totals.clear()
                    w, c = time.perf_counter(), time.process_time()
                    again = audit.audit(store, prompts)
                    report("audit by exact searches (apart)",
                           time.perf_counter() - w, time.process_time() - c)
                    print(f"same rule and estimates: "
                          f"{_chosen(again) == _chosen(rule)}", flush=True)
        print(f"maintain_index as after a sync (maintain, prompts stored, "
              f"audit): {whole[0]:.1f} s wall, {whole[1]:.1f} s CPU",
              flush=True)
        store.close()
    finally:
        if not args.ingest_only and not (args.reuse and args.keep):
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
