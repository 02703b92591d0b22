"""The audited approximate search, on CLIP-like worlds it was not tuned on
(issue 25).

A family of CLIP-like generators (``bench_scale.ClipLike``) that differ in
what decides how many cells a query needs: the number of clusters and how
uneven they are, how tight, and the size of the modality gap (the score of
a prompt's best match, ~0.3 to ~0.8). The audit's constants (``TARGET``,
``MARGIN``, ``BANDS``, ``MAX_SHARE`` in ``store/audit.py``) were set on the
``tune`` members only (the developers' ``clip-b32`` preset and the test
suite's clustered world); the ``report`` members were drawn afterwards and
never used to choose anything.

For each member, through the project's own store (``EdgeStore``: upsert,
``maintain``, then ``audit`` with prompts of the member, as the upkeep does
with prompts encoded by the index's model), on fresh queries of both kinds:
recall@100 (mean and worst query) and median ms per query (one thread) with
the shipped default rule before the audit and with the audited rule after
it, the audit's own estimate beside the truth, and faiss ``IndexIVFFlat``
over as many lists at the smallest ``nprobe`` that reaches the same recall,
in the same run; and beside it faiss IVF + SQ8 (int8) with 2x rescoring
and IVF + SQ4 (4-bit codes) with 4x rescoring on the originals (the
algorithm of our cells, which scan 4-bit codes and rescore 4x), and
LanceDB (``--lancedb``;
a bench-only install: ``pip install lancedb``) at its best setting tried.

Times are milliseconds of CPU per query (this process, all its threads;
queries one at a time, BLAS and faiss on one thread), and the median wall
time beside it. Sizes: our index's directory on disk; faiss's index as
serialised (it lives in RAM); LanceDB's directory.

Examples::

    python bench/bench_audit.py                   # every member, 200k
    python bench/bench_audit.py --n 1000000 --members gap-wide,tight
    python bench/bench_audit.py --list
"""

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import threading
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_scale import (  # noqa: E402
    CLIP_B32_PARAMS,
    K,
    ClipLike,
    filled_store,
)

#: name -> (role, ClipLike parameters, clusters, uneven, seed)
MEMBERS = {
    "clip-b32": ("tune", CLIP_B32_PARAMS, 1000, True, 0),
    "gap-wide": ("report", dict(alpha=1.3, sigma=0.58, gamma=3.0,
                                tau=1.8), 1000, True, 11),
    "gap-narrow": ("report", dict(alpha=1.3, sigma=0.58, gamma=0.8,
                                  tau=0.6), 1000, True, 12),
    "tight": ("report", dict(alpha=1.3, sigma=0.35, gamma=2.2,
                             tau=1.4), 3000, True, 13),
    "loose-few": ("report", dict(alpha=1.0, sigma=0.9, gamma=2.0,
                                 tau=1.2), 200, True, 14),
    "even": ("report", dict(alpha=1.5, sigma=0.6, gamma=2.5,
                            tau=1.5), 1000, False, 15),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=200,
                   help="fresh test queries of each kind")
    p.add_argument("--audit-prompts", type=int, default=100)
    p.add_argument("--members", default=",".join(MEMBERS))
    # fine enough that faiss's row lies near our recall (its cost at
    # exactly our recall is between its row and the step before)
    p.add_argument("--nprobes", default="4,6,8,10,12,16,20,24,32,40,48,64,"
                   "80,96,128,160,192,256,320,384,512,800")
    p.add_argument("--skip-faiss", action="store_true")
    p.add_argument("--oversampling", default="2,3",
                   type=lambda v: [float(f) for f in v.split(",") if f],
                   help="oversampling factors tried beside the shipped one "
                        "with the audited rule (a row each, --brief too)")
    p.add_argument("--audits", type=int, default=1,
                   help="audits of the member's cells: the first as the "
                        "upkeep runs it (its exact top-k taken by the pass "
                        "that learned the cells), the others with seeds "
                        "1, 2, ... (exact searches), each estimate beside "
                        "the truth on the fresh queries; past 1, only "
                        "these rows (no MatchAny nor floor rows)")
    p.add_argument("--brief", action="store_true",
                   help="only the rows of the rules and the peers: no "
                        "rows of what earlier commits changed (MatchAny, "
                        "the ring, oversampling, numpy rescoring, the "
                        "floor of ties)")
    p.add_argument("--cells", type=int, default=0,
                   help="split each member's index into this many cells "
                        "instead of cells.num_cells's (faiss's lists "
                        "follow: the same count)")
    p.add_argument("--faiss-lists", default="",
                   help="faiss also over these numbers of lists "
                        "(comma-separated): its best beside ours")
    p.add_argument("--lancedb", default="",
                   help="members also run on LanceDB (comma-separated; "
                        "'all')")
    p.add_argument("--keep", default="",
                   help="a folder that keeps each member's index "
                        "(<member>-<n>/); one there already is reused: "
                        "no upsert nor maintain, its rule audited again")
    p.add_argument("--list", action="store_true")
    return p.parse_args(argv)


def exact_topk(db, queries, k=K, rows=100):
    """The exact top-``k`` of each query (ids, any order), ``rows`` queries
    at a time (a ``(rows, n)`` score matrix)."""
    out = []
    for s in range(0, len(queries), rows):
        scores = queries[s:s + rows] @ db.T
        out.append(np.argpartition(-scores, k, axis=1)[:, :k])
    return np.vstack(out)


def run_queries(fn, queries):
    """``fn(q) -> ids`` for each query, one at a time, BLAS on one thread:
    ids per query, CPU ms per query (this process, all threads) and the
    median wall ms."""
    import statistics

    from threadpoolctl import threadpool_limits

    out, times = [], []
    with threadpool_limits(1):
        cpu = time.process_time()
        for q in queries:
            t0 = time.perf_counter()
            ids = fn(q)
            times.append(time.perf_counter() - t0)
            out.append(np.asarray(ids))
        cpu = time.process_time() - cpu
    return out, Ms(1000 * cpu / len(queries),
                   1000 * statistics.median(times))


class Ms:
    """CPU ms per query, and the median wall ms."""

    def __init__(self, cpu, wall):
        self.cpu, self.wall = cpu, wall

    def __str__(self):
        return f"{self.cpu:.1f} ({self.wall:.1f})"


def dir_size(path):
    return sum(os.path.getsize(os.path.join(d, f))
               for d, _, files in os.walk(path) for f in files)


def mib(num_bytes):
    return f"{num_bytes / 2 ** 20:.0f} MiB"


def per_query_recall(found, truth):
    return np.array([len(set(map(int, f[:K])) & set(map(int, t))) / K
                     for f, t in zip(found, truth)])


class Table:
    def __init__(self):
        self.rows = []

    def add(self, *row):
        self.rows.append(row)
        print(" | ".join(str(c) for c in row), flush=True)

    def print(self):
        print("\n| member | role | text top1 | method | text recall "
              "(worst) | image recall (worst) | text ms CPU (wall) | "
              "image ms CPU (wall) | "
              "audit estimate text / image | build | size |")
        print("|" + "---|" * 11)
        for row in self.rows:
            print("| " + " | ".join(str(c) for c in row) + " |")


def _fmt(r):
    return f"{r.mean():.4f} ({r.min():.2f})"


def _one_match_any(cells):
    """The probed cells as the engine was asked for them before 4b18388."""
    import qdrant_edge as qe

    from fiftyone_ai_search.store import cells as cl

    return qe.Filter(must=[qe.FieldCondition(
        cl.CELL_KEY, match=qe.MatchAny([int(c) for c in cells]))])


def _conditions_anew(cells):
    """The probed cells' conditions made anew at each search, as before
    edge._cell_condition kept them."""
    import qdrant_edge as qe

    from fiftyone_ai_search.store import cells as cl

    return qe.Filter(should=[
        qe.FieldCondition(cl.CELL_KEY, match=qe.MatchValue(int(c)))
        for c in cells])


def _ring_as_before(store):
    """A search's write of the recent queries as it was before recent_ring
    (aba6d8a): the whole ring saved to a temporary ``.npy`` renamed over
    the old one, the file's stat taken (the ring itself cached, not read
    back)."""
    from fiftyone_ai_search.store import recent

    path = os.path.join(store.path, "recent-queries.npy")
    kept = {"ring": np.zeros((0, 0), dtype=np.float16)}

    def remember(vector):
        if os.path.exists(path):
            os.stat(path)  # the cache's check of the file
        ring = recent.with_query(kept["ring"], vector)
        if ring is None:
            return
        tmp = f"{path}.{os.getpid()}.tmp.npy"
        np.save(tmp, ring, allow_pickle=False)
        os.stat(tmp)
        os.replace(tmp, path)
        kept["ring"] = ring

    return remember


def _rescored_in_numpy(store):
    """``store._query_points`` with the engine's rescoring off: the quantized
    copy's best ``OVERSAMPLING x limit``, their originals read in one
    retrieve and rescored with numpy."""
    import qdrant_edge as qe

    from fiftyone_ai_search.store import cells as cl
    from fiftyone_ai_search.store import edge

    engine = store._query_points

    def query_points(vector, limit, point_ids, min_score, cells=None):
        if cells is None:
            return engine(vector, limit, point_ids, min_score, cells)
        params = edge._search_params
        edge._search_params = lambda _: qe.SearchParams(
            exact=False, quantization=qe.QuantizationSearchParams(
                rescore=False))
        try:
            hits = engine(vector, int(limit * cl.OVERSAMPLING), point_ids,
                          min_score, cells)
        finally:
            edge._search_params = params
        records = store._retrieve_points([h.id for h in hits], False, True)
        rows = np.asarray([r.vector[""] if isinstance(r.vector, dict)
                           else r.vector for r in records], dtype=np.float32)
        scores = rows @ vector if len(rows) else np.zeros(0)
        best = np.argsort(-scores)[:limit]
        return [edge._Scored(records[i].id, float(scores[i])) for i in best]

    return query_points


def _warmed():
    """Waits for the reads an opening starts in the background
    (``edge._rewarm``: the shard's files, and the original vectors where
    they fit in memory), so that their CPU, the opening's once, is not
    counted as the searches'; the seconds waited."""
    start = time.monotonic()
    for thread in threading.enumerate():
        if thread.name == "ai-search-rewarm":
            thread.join()
    return time.monotonic() - start


def run_member(name, args, table):
    from fiftyone_ai_search.store import EdgeStore, audit, edge
    from fiftyone_ai_search.store import cells as cl

    role, params, clusters, uneven, seed = MEMBERS[name]
    world = ClipLike(args.dim, clusters, seed=seed, uneven=uneven, **params)
    rng = np.random.default_rng(seed + 100)
    db = world.images(world.labels(args.n, rng), rng)
    qi = world.images(world.labels(args.queries, rng), rng)
    qt = world.texts(world.labels(args.queries, rng), rng)
    prompts = world.texts(world.labels(args.audit_prompts, rng), rng)
    gi, gt = exact_topk(db, qi), exact_topk(db, qt)
    top1 = float(np.mean(np.max(qt @ db[:200_000].T, axis=1)))
    head = (name, role, f"{top1:.2f}")

    if args.keep:
        tmp = os.path.join(args.keep, f"{name}-{args.n}")
        os.makedirs(tmp, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="bench-audit-",
                               dir=os.environ.get("BENCH_TMP"))
    store = None
    try:
        exact = None
        if os.path.exists(os.path.join(tmp, "audit", "index.json")):
            store = EdgeStore("audit", tmp, lock_timeout=600)
            cells = store.cells()
            # the default rule first, as on a fresh index
            store._write_cells(dataclasses.replace(cells, rule=None))
            built = "reused (kept)"
        else:
            if args.cells:
                cl.num_cells = lambda n, count=args.cells: count
            store, t_upsert = filled_store(tmp, db)
            # as maintain_index does: the pass that learns the cells takes
            # the audit's exact answers
            exact = audit.ExactTopK(store, prompts)
            t0 = time.time()
            store.maintain(min_points=min(args.n, cl.MIN_POINTS),
                           exact=exact)
            built = (f"upsert {t_upsert:.0f} s, maintain "
                     f"{time.time() - t0:.0f} s (the audit's scoring in "
                     f"it: {exact.seconds:.1f} s CPU)")
        cells = store.cells()

        def fn(q):
            with store.session():
                return [int(h[0], 16) - 1 for h in store.query(q, K)]

        fn(qi[0])
        warm_s = _warmed()
        fi, ms_i = run_queries(fn, qi)
        ft, ms_t = run_queries(fn, qt)
        built += f"; opening's reads waited for {warm_s:.1f} s"
        table.add(*head, f"ours, default rule ({cl.num_probed(len(cells))} "
                  f"of {len(cells)} cells)",
                  _fmt(per_query_recall(ft, gt)),
                  _fmt(per_query_recall(fi, gi)), ms_t, ms_i, "-",
                  built, mib(dir_size(tmp)))
        # the queries above are the bench's test queries, which the index
        # kept as recent ones: the audit asks only its own prompts, so its
        # estimate is measured on queries apart from the truth's
        store.forget_recent_queries()
        # the audit as before the spreads (each band's depth alone), the
        # same queries and exact answers: what the spreads change
        spreads, audit.SPREADS = audit.SPREADS, np.zeros(1)
        try:
            rule = audit.audit(store, prompts, exact=exact)
        finally:
            audit.SPREADS = spreads
        fi, ms_i = run_queries(fn, qi)
        ft, ms_t = run_queries(fn, qt)
        store.forget_recent_queries()
        rt, ri = per_query_recall(ft, gt), per_query_recall(fi, gi)
        est = rule["estimates"]
        table.add(*head, f"ours, audited rule, depths alone (before the "
                  f"spreads; depths {rule['depths']}, cells scanned "
                  f"{_scanned(est)})", _fmt(rt), _fmt(ri), ms_t, ms_i,
                  f"{est['text']['recall']:.4f} / "
                  f"{est['image']['recall']:.4f}",
                  f"audit {rule['seconds']:.1f} s", "")
        for seed in range(args.audits):
            # the first as the upkeep runs it; the others drawn anew
            rule = audit.audit(store, prompts, seed=seed,
                               exact=exact if seed == 0 else None)
            fi, ms_i = run_queries(fn, qi)
            ft, ms_t = run_queries(fn, qt)
            store.forget_recent_queries()
            rt, ri = per_query_recall(ft, gt), per_query_recall(fi, gi)
            est = rule["estimates"]
            shares = {k: est[k]["exact"] for k in ("text", "image")
                      if est[k]["exact"]}
            table.add(*head, f"ours, audited rule (seed {seed}, depths "
                      f"{rule['depths']}, spreads {rule.get('spreads')}, "
                      f"cells scanned {_scanned(est)}, margins "
                      f"{rule['margins']}"
                      + (f", exact shares {shares}" if shares else "")
                      + ")", _fmt(rt), _fmt(ri), ms_t, ms_i,
                      f"{est['text']['recall']:.4f} / "
                      f"{est['image']['recall']:.4f} (minus the truth: "
                      f"{est['text']['recall'] - rt.mean():+.4f} / "
                      f"{est['image']['recall'] - ri.mean():+.4f})",
                      f"audit {rule['seconds']:.1f} s (exact top-k: "
                      f"{rule['truth']})", "")
        if args.audits > 1:
            return

        def swapped_row(owner, attr, value, label):
            """A row of the same rule with ``owner.attr`` set to ``value``
            (what an earlier commit did, or a setting tried) meanwhile."""
            kept = getattr(owner, attr)
            setattr(owner, attr, value)
            try:
                fi, ms_i = run_queries(fn, qi)
                ft, ms_t = run_queries(fn, qt)
            finally:
                setattr(owner, attr, kept)
                store.forget_recent_queries()
            table.add(*head, label, _fmt(per_query_recall(ft, gt)),
                      _fmt(per_query_recall(fi, gi)), ms_t, ms_i, "", "",
                      "")

        # each cell's condition made anew a search, as before
        # edge._cell_condition: what building the request costs
        swapped_row(edge, "_cells_filter", _conditions_anew,
                    "ours, audited rule, the cells' conditions made anew a "
                    "search (before they were kept)")
        # fewer points rescored on the originals: what the rescoring's
        # fixed cost buys in recall (the rule as audited at the shipped)
        for factor in args.oversampling:
            swapped_row(cl, "OVERSAMPLING", factor,
                        f"ours, audited rule, oversampling {factor:g} "
                        f"(shipped {cl.OVERSAMPLING:g})")
        if args.brief:
            return _peers(args, table, head, store, db, queries_of(
                qt, gt, qi, gi), cells, {"text": rt.mean(),
                                         "image": ri.mean()}, name)
        # the same rule with the cells asked as one MatchAny, as before
        # 4b18388: what the filter's shape costs the engine, same run
        swapped_row(edge, "_cells_filter", _one_match_any,
                    "ours, audited rule, the cells as one MatchAny (before "
                    "4b18388)")
        # the recent queries written as before aba6d8a (the whole ring
        # rewritten and renamed at each search): what a search saves
        store._remember_query = _ring_as_before(store)
        try:
            fi, ms_i = run_queries(fn, qi)
            ft, ms_t = run_queries(fn, qt)
        finally:
            del store._remember_query
            store.forget_recent_queries()
        table.add(*head, "ours, audited rule, the recent queries' ring "
                  "rewritten whole a search (before aba6d8a)",
                  _fmt(per_query_recall(ft, gt)),
                  _fmt(per_query_recall(fi, gi)), ms_t, ms_i, "", "", "")
        # the rescoring outside the engine: originals read in one go
        store._query_points = _rescored_in_numpy(store)
        try:
            fi, ms_i = run_queries(fn, qi)
            ft, ms_t = run_queries(fn, qt)
        finally:
            del store._query_points
        table.add(*head, "ours, audited rule, rescored in numpy (the "
                  "quantized copy's best, originals read in one retrieve)",
                  _fmt(per_query_recall(ft, gt)),
                  _fmt(per_query_recall(fi, gi)), ms_t, ms_i, "", "", "")
        # the same rule without the floor of single queries (cells.tied):
        # what the floor costs and buys
        swapped_row(cl, "TIE_CAP", 0,
                    "ours, audited rule without the floor of ties")
        _peers(args, table, head, store, db, queries_of(qt, gt, qi, gi),
               cells, {"text": rt.mean(), "image": ri.mean()}, name)
    finally:
        if store is not None:
            store.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def queries_of(qt, gt, qi, gi):
    return {"text": (qt, gt), "image": (qi, gi)}


def _scanned(est):
    """The share of the cells the audit's queries scan, text / image."""
    return (f"{est['text']['cells_scanned']:.3f} / "
            f"{est['image']['cells_scanned']:.3f}")


def _peers(args, table, head, store, db, queries, cells, ours, name):
    """faiss (and LanceDB) beside ours, at our audited recall ``ours``."""
    store.close()
    if not args.skip_faiss:
        probes = bench_faiss_ivf(args, table, head, db, queries,
                                 len(cells), ours)
        same_probes(table, head, store, queries, probes)
        for lists in (int(x) for x in args.faiss_lists.split(",") if x):
            if lists != len(cells):
                bench_faiss_ivf(args, table, head, db, queries, lists, ours,
                                flat=False)
    if args.lancedb in ("all",) or name in args.lancedb.split(","):
        bench_lancedb(args, table, head, db, queries, len(cells), ours)


def same_probes(table, head, store, queries, probes):
    """Our engine at faiss's probe count (the nprobe that faiss IVF + SQ8
    needed for our recall): every query of a kind scans that many cells,
    so the CPU compares the engines' scan of the same cells, apart from
    the rule."""
    from fiftyone_ai_search.store import base

    cells = store.cells()
    for kind, (q, truth) in queries.items():
        if kind not in probes:
            continue

        def fn(v, depth=probes[kind]):
            with store.session():
                hits = store._query_points(base.normalize_vector(v), K, None,
                                           None, cells.probe(v, count=depth))
            return [int(base.point_id_to_sample_id(h.id), 16) - 1
                    for h in hits]

        fn(q[0])
        f, ms = run_queries(fn, q)
        cols = ([_fmt(per_query_recall(f, truth)), "", ms, ""]
                if kind == "text" else
                ["", _fmt(per_query_recall(f, truth)), "", ms])
        table.add(*head, f"ours, {probes[kind]} cells for every query "
                  f"({kind}; faiss SQ8's nprobe)", *cols, "", "", "")
    store.close()


def sweep(table, head, label, search, set_probe, probes, queries, ours,
          build, size):
    """For each kind of query, the first of ``probes`` whose recall reaches
    ``ours``: one row each (or 'not reached', with the best seen). Returns
    ``{kind: probe}`` of the kinds reached."""
    found, best = {}, {}
    for probe in probes:
        set_probe(probe)
        for kind, (q, truth) in queries.items():
            if kind in found:
                continue
            f, ms = run_queries(search, q)
            r = per_query_recall(f, truth)
            if r.mean() >= ours[kind] - 1e-9:
                found[kind] = (probe, r, ms)
            elif kind not in best or r.mean() > best[kind][1].mean():
                best[kind] = (probe, r, ms)
        if len(found) == len(queries):
            break
    for kind in queries:
        probe, r, ms = found.get(kind) or best[kind]
        what = (f"{label} {probe} ({kind})" if kind in found else
                f"{label} {probe} ({kind}): {ours[kind]:.4f} not reached")
        cols = ([_fmt(r), "", ms, ""] if kind == "text"
                else ["", _fmt(r), "", ms])
        table.add(*head, what, *cols, "", build, size)
        build = size = ""
    return {kind: found[kind][0] for kind in found}


def bench_faiss_ivf(args, table, head, db, queries, lists, ours,
                    flat=True):
    """faiss IVFFlat with as many lists, then IVF + SQ8 (int8 codes) with
    2x rescoring on the originals, and IVF + SQ4 (4-bit codes, as our
    index's) with 4x, over the same lists: the smallest nprobe reaching
    our audited recall, for each kind of query. Returns SQ8's ``{kind:
    nprobe}``."""
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    dim = db.shape[1]
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists,
                               faiss.METRIC_INNER_PRODUCT)
    t0 = time.time()
    index.train(db[np.random.default_rng(0).choice(
        len(db), min(len(db), 64 * lists), replace=False)])
    t_train = time.time() - t0
    t0 = time.time()
    # each point's list, once for both indexes
    _, where = quantizer.search(db, 1)
    where = np.ascontiguousarray(where[:, 0].astype(np.int64))
    t_assign = time.time() - t0
    t0 = time.time()
    index.add_core(len(db), faiss.swig_ptr(db), None, faiss.swig_ptr(where))
    build = (f"train {t_train:.0f} s + assign {t_assign:.0f} s + add "
             f"{time.time() - t0:.0f} s")
    size = mib(len(faiss.serialize_index(index)))
    faiss.omp_set_num_threads(1)
    probes = [int(x) for x in args.nprobes.split(",") if int(x) <= lists]

    def search(q):
        return index.search(q[None], K)[1][0]

    if flat:  # else IVF + SQ8 only
        sweep(table, head, f"faiss IVFFlat {lists}, nprobe", search,
              lambda p: setattr(index, "nprobe", p), probes, queries, ours,
              build, size)
    index.reset()  # its lists freed

    found = None
    for codes, bits, k_factor in ((faiss.ScalarQuantizer.QT_8bit, 8, 2.0),
                                  (faiss.ScalarQuantizer.QT_4bit, 4, 4.0)):
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        sq = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, lists, codes, faiss.METRIC_INNER_PRODUCT)
        t0 = time.time()
        sq.train(db[:100_000])  # the codes' ranges; the lists are trained
        sq.add_core(len(db), faiss.swig_ptr(db), None, faiss.swig_ptr(where))
        refined = faiss.IndexRefineFlat(sq, faiss.swig_ptr(db))
        refined.k_factor = k_factor
        build = (f"same lists; codes + add {time.time() - t0:.0f} s")
        size = (f"{mib(len(faiss.serialize_index(sq)))} + originals "
                f"{mib(db.nbytes)}")
        faiss.omp_set_num_threads(1)

        def search_sq(q, refined=refined):
            return refined.search(q[None], K)[1][0]

        probes_sq = sweep(
            table, head, f"faiss IVF{lists},SQ{bits} + {k_factor:g}x "
            "rescoring, nprobe", search_sq,
            lambda p, sq=sq: setattr(sq, "nprobe", p), probes, queries,
            ours, build, size)
        found = probes_sq if found is None else found
        del refined, sq
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return found


def bench_lancedb(args, table, head, db, queries, lists, ours):
    """LanceDB embedded: IVF_HNSW_SQ (cosine) over as many partitions, the
    first nprobes reaching our recall (with refine_factor 2 on the
    originals)."""
    import lancedb
    import pyarrow as pa

    tmp = tempfile.mkdtemp(prefix="bench-lancedb-",
                           dir=os.environ.get("BENCH_TMP"))
    try:
        conn = lancedb.connect(tmp)
        vectors = pa.FixedSizeListArray.from_arrays(
            pa.array(db.reshape(-1)), db.shape[1])
        t0 = time.time()
        tbl = conn.create_table("v", pa.table({
            "id": pa.array(np.arange(len(db))), "vector": vectors}))
        tbl.create_index(metric="cosine", vector_column_name="vector",
                         index_type="IVF_HNSW_SQ", num_partitions=lists)
        build = f"write + index {time.time() - t0:.0f} s"
        size = mib(dir_size(tmp))
        probes = [int(x) for x in args.nprobes.split(",") if int(x) <= lists]
        state = {}

        def search(q):
            return (tbl.search(q).metric("cosine")
                    .nprobes(state["nprobes"]).refine_factor(2).limit(K)
                    .select(["id"]).to_arrow()["id"].to_numpy())

        sweep(table, head, f"LanceDB IVF_HNSW_SQ {lists}, nprobes", search,
              lambda p: state.update(nprobes=p), probes, queries, ours,
              build, size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        for name, (role, params, clusters, uneven, seed) in MEMBERS.items():
            print(name, role, params, clusters, "uneven" if uneven else
                  "even", seed)
        return
    table = Table()
    for name in args.members.split(","):
        run_member(name, args, table)
    table.print()


if __name__ == "__main__":
    main()
