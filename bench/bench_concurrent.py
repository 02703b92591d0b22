"""Search while the index is being written (issue 29): a writer process and
a searcher process on one embedded index, side by side and alone.

::

    nice -n 15 .venv/bin/python bench/bench_concurrent.py            # 1M
    nice -n 15 .venv/bin/python bench/bench_concurrent.py --n 100000 --seconds 30
    flock /tmp/aisearch-bench.lock .venv/bin/python bench/bench_concurrent.py \
        --n 1000000 --seconds 90 --large-write unassigned --no-openings

1. Builds, or reuses, an index of ``--n`` CLIP-like 512-d vectors (the
   generator of ``bench_scale.py``) with its cells learned and compacted,
   under ``--root`` (kept for the next run; ``--drop`` removes it at the end).
2. Opening: a fresh process times ``qe.EdgeShard.load`` alone and its first
   search (``store.query``, what the App's first search pays), nobody
   holding the index; then its first search where another process holds
   the index (as a syncing worker does), which answers it.
3. Alone, for ``--seconds`` each: the searcher (a text-like query every
   ``--search-every`` s, top 100, in a ``session()`` as the App
   does), then the writer (a sync-like commit of ``--batch`` new vectors
   after every ``--commit-every`` s of "embedding", in
   a ``session()`` as the sync does, and one upkeep pass,
   ``maintain``, half-way).
4. Both at once, for ``--seconds`` (the searcher goes on until the writer
   is done).

``--large-write``: half-way, before its upkeep pass, the writer also writes
a tenth of the index anew in one session, in batches of 4,096 (a large
import); ``--large-write unassigned`` writes them without their cells, so
that the upkeep pass assigns them and compacts the index (a pass that does
real work: without it the writer's points get their cells as they are
written and the pass has nothing to do).

``--trace``: where the searches beside the writer waited (the writer's
engine calls, the stretches its threads got no GIL, the requests it
answered and how), printed for each search over twice the solo p95
(the target: each such search is one that puts the p95 ratio at risk).

Prints searcher p50 / p95 / max latency and writer commits/s, alone and
together, the searches that fell within the large write, the upkeep pass
and its compaction (on a copy beside the holder where it can, see
``fiftyone_ai_search.store.compaction``: its copy, optimize and swap with
the reopening timed), the large write's batch times, how the searcher's searches were answered (by
its own shard, or by the holder of the shard, see
``fiftyone_ai_search.store.edge``), CPU seconds and the load average of each
phase. The points the writer added are deleted at the end, so the index is
reused as it was.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DIM = 512


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--root", default=os.path.join(tempfile.gettempdir(),
                                                  "ais-bench-concurrent"))
    p.add_argument("--seconds", type=float, default=60.0,
                   help="length of each phase (alone, together)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--commit-every", type=float, default=1.6)
    p.add_argument("--search-every", type=float, default=2.0)
    p.add_argument("--drop", action="store_true",
                   help="remove the index at the end")
    p.add_argument("--build-only", action="store_true",
                   help="build (or check) the index, nothing else")
    p.add_argument("--openings-only", action="store_true",
                   help="only the fresh processes' first searches")
    # internal: one role in a subprocess
    p.add_argument("--role", choices=["open", "hold", "searcher", "writer"])
    p.add_argument("--first-id", type=int, default=0)
    p.add_argument("--out")
    # internal, for another bench's writer (bench_search.py --beside-writer)
    p.add_argument("--name", help="the index's name (default concurrent_N)")
    p.add_argument("--rewrite",
                   help="an .npz of ids, vectors and payloads (JSON): the "
                        "writer writes these points again, batch after "
                        "batch, as a sync re-embedding edited samples, and "
                        "runs no upkeep pass")
    p.add_argument("--large-write", nargs="?", const="cells",
                   choices=["cells", "unassigned"],
                   help="half-way, the writer commits a tenth of the index "
                        "anew in one session (as a large import does) "
                        "before its upkeep pass: searches beside a large "
                        "write. 'cells' (the default): the points get their "
                        "cells as they are written, so the pass has nothing "
                        "to do; 'unassigned': written without (as by a "
                        "writer that had not read the cells), so the pass "
                        "assigns them and compacts the index: searches "
                        "beside an upkeep pass that does real work")
    p.add_argument("--no-openings", action="store_true",
                   help="leave out the fresh processes' openings")
    p.add_argument("--done-file",
                   help="searcher: searches until this file exists (and "
                        "for --seconds at least); writer: creates it at "
                        "its end")
    p.add_argument("--held", action="store_true",
                   help="open: another process holds the index (a worker "
                        "syncing, the App): the first search is answered "
                        "by it")
    p.add_argument("--cold", action="store_true",
                   help="open: the shard's files dropped from the page "
                        "cache first (as after a reboot)")
    p.add_argument("--no-read-ahead", action="store_true",
                   help="open: without reading the files ahead (as before)")
    p.add_argument("--trace", action="store_true",
                   help="trace where the searches beside the writer wait: "
                        "the writer's engine calls of 50 ms or more, the "
                        "stretches its threads got no GIL, the requests its "
                        "server answered and how, its compactions and turns "
                        "given; printed for each search over twice the "
                        "solo p95")
    p.add_argument("--trace-pages", action="store_true",
                   help="with --trace: for each request the writer answers, "
                        "the pages of the shard's files that came into the "
                        "page cache meanwhile, by kind of file (mincore "
                        "before and after: a diagnosis, it slows each "
                        "answer by the files' scan)")
    p.add_argument("--trace-out",
                   help="with --trace: the searches beside the writer and "
                        "the writer's traced events, as JSON, to this file")
    p.add_argument("--until",
                   help="the writer stops once this file exists (or after "
                        "--seconds)")
    return p.parse_args(argv)


def _store(args):
    from fiftyone_ai_search.store.edge import EdgeStore

    return EdgeStore(args.name or f"concurrent_{args.n}", args.root,
                     lock_timeout=600)


def _world():
    from bench_scale import CLIP_B32_PARAMS, ClipLike

    return ClipLike(DIM, 1000, **CLIP_B32_PARAMS, seed=0)


def _ids(start, count):
    return [f"{i:024x}" for i in range(start + 1, start + count + 1)]


def build(args):
    """The index of ``--n`` vectors, with complete cells (reused)."""
    from fiftyone_ai_search.store import IndexInfo

    store = _store(args)
    if store.exists():
        cells = store.cells()
        if cells is not None and cells.complete and store.count() == args.n:
            store.close()
            print(f"reusing {store.path} ({args.n:,} points, "
                  f"{len(cells)} cells)", flush=True)
            return
        store.drop()
    world, rng = _world(), np.random.default_rng(1)
    store.ensure(IndexInfo("bench", None, "bench", DIM))
    start = time.monotonic()
    step = 50_000
    with store.session():
        for s in range(0, args.n, step):
            m = min(step, args.n - s)
            ids = _ids(s, m)
            store.upsert(ids, world.images(world.labels(m, rng), rng),
                         [{"filepath": f"/data/{i}.jpg", "fingerprint": "1:2"}
                          for i in ids])
    print(f"built {args.n:,} points in {time.monotonic() - start:.0f} s",
          flush=True)
    start = time.monotonic()
    # cells at any size (the library waits for cells.MIN_POINTS points)
    store.maintain(min_points=min(1000, args.n))
    store.close()  # kept open by the upkeep
    print(f"cells learned, assigned, compacted in "
          f"{time.monotonic() - start:.0f} s", flush=True)


def _queries(count, seed):
    world, rng = _world(), np.random.default_rng(seed)
    return world.texts(world.labels(count, rng), rng)


def _drop_page_cache(shard_path):
    """Drops the shard's files from the page cache (what a reboot or memory
    pressure leaves): ``POSIX_FADV_DONTNEED`` on each."""
    for dirpath, _, names in os.walk(shard_path):
        for name in names:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def role_open(args):
    """A fresh process, nobody holding the index: its first search (what
    the App's or a notebook's first search pays for the index), the shard's
    opening alone, and a second search."""
    import qdrant_edge as qe

    from fiftyone_ai_search.store import edge

    store = _store(args)
    shard_path = os.path.join(store.path, "shard")
    if args.held:
        return _first_searches(store)
    if args.cold:
        _drop_page_cache(shard_path)
    if args.no_read_ahead:
        edge._read_ahead = lambda path: (0, 0)
    query, again = _queries(2, seed=7)
    start, cpu = time.monotonic(), time.process_time()
    with store.session():
        store.query(query, 100)
        first_s = time.monotonic() - start
        first_cpu = time.process_time() - cpu
        start = time.monotonic()
        store.query(again, 100)
        second_s = time.monotonic() - start
    store.close()  # the session kept it open: let go, for the load below
    # the opening alone, as it was measured before the read-ahead: its
    # files as the opening above left them (Qdrant dropped them, the
    # read-ahead in the background may have read them back)
    start = time.monotonic()
    edge._read_ahead(shard_path)
    qe_s = time.monotonic()
    qe.EdgeShard.load(shard_path).close()
    load_s = time.monotonic() - qe_s
    return {"first_search_s": first_s, "first_search_cpu_s": first_cpu,
            "second_search_s": second_s, "load_s": load_s,
            "read_ahead_s": qe_s - start, "opens": edge.stats["opens"]}


def _first_searches(store):
    """A fresh process's first two searches where another process holds
    the index (``--held``): both answered by the holder, nothing opened."""
    from fiftyone_ai_search.store import edge

    query, again = _queries(2, seed=7)
    start, cpu = time.monotonic(), time.process_time()
    with store.session():
        assert len(store.query(query, 100)) == 100
        first_s = time.monotonic() - start
        first_cpu = time.process_time() - cpu
        start = time.monotonic()
        store.query(again, 100)
        second_s = time.monotonic() - start
    store.close()
    return {"first_search_s": first_s, "first_search_cpu_s": first_cpu,
            "second_search_s": second_s, "opens": edge.stats["opens"],
            "asked": edge.stats["asked"]}


def role_hold(args):
    """Holds the index, as a syncing worker does between its commits (one
    search, then a kept-open session), until ``--done-file`` exists;
    ``<done-file>.ready`` says it holds it."""
    store = _store(args)
    with store.session():
        store.query(_queries(1, seed=9)[0], 100)
        open(args.done_file + ".ready", "w").close()
        while not os.path.exists(args.done_file):
            time.sleep(0.05)
    store.close()
    return {}


def _held_opening(args):
    """``--held``'s row: a fresh process's first search while a holder
    process (:func:`role_hold`) keeps the index open."""
    done = tempfile.mktemp(prefix="ais-cc-hold-")
    holder = spawn(args, "hold", extra=("--done-file", done))
    try:
        while not os.path.exists(done + ".ready"):
            if holder[0].poll() is not None:
                raise SystemExit("the holder process failed")
            time.sleep(0.05)
        (got,) = collect(spawn(args, "open", extra=("--held",)))
    finally:
        open(done, "w").close()
    collect(holder)
    for path in (done, done + ".ready"):
        os.remove(path)
    return got


def _cpu_s():
    """This process's CPU seconds, user + system."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def role_searcher(args):
    from fiftyone_ai_search.store import edge

    store = _store(args)
    queries = _queries(256, seed=8)
    latencies, asked, at, by_holder, cpu_each = [], 0, [], [], []
    start = time.monotonic()
    k = 0
    while time.monotonic() - start < args.seconds or (
            args.done_file and not os.path.exists(args.done_file)):
        before = edge.stats["asked"]
        t, wall, c = time.monotonic(), time.time(), time.process_time()
        with store.session():
            got = store.query(queries[k % len(queries)], 100)
        latencies.append(time.monotonic() - t)
        cpu_each.append(time.process_time() - c)
        at.append(wall)
        asked += edge.stats["asked"] > before
        by_holder.append(edge.stats["asked"] > before)
        assert len(got) == 100
        k += 1
        time.sleep(max(0.0, args.search_every - (time.monotonic() - t)))
    if args.done_file:
        open(args.done_file + ".ack", "w").close()  # the writer may go
    store.close()
    # the first search opens the shard, or finds it held: reported apart
    return {"first": latencies[0], "latencies": latencies[1:], "at": at[1:],
            "by_holder": by_holder[1:], "asked": asked,
            "cpu_each": cpu_each[1:],
            "turns_waited": edge.stats["turns_waited"],
            "opens": edge.stats["opens"], "cpu_s": _cpu_s()}


def _large_write(args, store, world, rng, next_id):
    """A tenth of the index anew in one session, in batches of 4,096 (as a
    large import does); returns its trace: each batch's write time and
    the hand-overs within it."""
    from fiftyone_ai_search.store import edge

    if args.large_write == "unassigned":
        # as a writer that had not read the cells: the points are written
        # without theirs, for the upkeep pass to assign (and compact)
        store.cells = lambda: None
    block = max(args.n // 10, 1)
    before = {k: edge.stats[k] for k in ("served", "lent_reads",
                                         "lent_turns")}
    batch_s, make_s = [], 0.0
    t0, wall = time.monotonic(), time.time()
    with store.session():
        for at in range(0, block, 4096):
            count = min(4096, block - at)
            t = time.monotonic()
            vectors = world.images(world.labels(count, rng), rng)
            make_s += time.monotonic() - t
            t = time.monotonic()
            store.upsert(_ids(next_id + at, count), vectors,
                         [{"filepath": "/new/block.jpg",
                           "fingerprint": "1:2"}] * count)
            batch_s.append(time.monotonic() - t)
    if args.large_write == "unassigned":
        del store.cells
    return {"points": block, "s": time.monotonic() - t0, "from": wall,
            "to": time.time(), "batch_s": batch_s, "make_s": make_s,
            **{k: edge.stats[k] - v for k, v in before.items()}}


def _solo_queries(store, count=20):
    """``count`` searches of this process on its own shard, nothing else
    running in it: their wall and process CPU seconds."""
    queries = _queries(count + 2, seed=8)
    wall, cpu = [], []
    with store.session():
        for k, q in enumerate(queries):
            t, c = time.monotonic(), time.process_time()
            store.query(q, 100)
            if k >= 2:  # the first two warm the shard's pages
                wall.append(time.monotonic() - t)
                cpu.append(time.process_time() - c)
    return {"wall": wall, "cpu": cpu}


class Tracer:
    """``--trace``, in the writer's process: what it does while a search of
    the other process waits. Events ``(kind, what, start, end, thread)`` in
    wall time: ``engine`` (a Qdrant Edge call of 50 ms or more, on any
    thread), ``no-gil`` (a ticker thread that sleeps 5 ms woke 100 ms or
    more late: another thread held the GIL), ``served`` (a request of
    the other process, from its arrival at the server to its answer, with
    how: on the shard lent, beside a compaction, or after the thread lock),
    ``compact`` (the store's compaction), ``turn`` (reads let in between
    two steps of an operation)."""

    ENGINE_MIN_S = 0.05
    TICK_S = 0.005
    LATE_S = 0.1

    def __init__(self, root=None):
        import qdrant_edge

        from fiftyone_ai_search.store import edge

        self.events = []
        # --trace-pages: the shard's files under root, scanned around each
        # answer
        pages = _ShardPages(root) if root else None
        self._edge = edge
        tracer = self
        step_at = [time.time()]

        def compact_step(step):
            # the steps of a compaction beside (copy, child, swap)
            now = time.time()
            tracer._add("compact", f"beside: until {step}", step_at[0], now)
            step_at[0] = now

        edge._compact_hook = compact_step

        class Shard:
            """A Qdrant Edge shard whose calls are timed."""

            def __init__(self, shard):
                self._shard = shard

            def __getattr__(self, name):
                attr = getattr(self._shard, name)
                if not callable(attr):
                    return attr

                def call(*a, **k):
                    start = time.time()
                    try:
                        return attr(*a, **k)
                    finally:
                        tracer._add("engine", name, start, time.time(),
                                    tracer.ENGINE_MIN_S)
                return call

        class EdgeShard:
            @staticmethod
            def load(*a, **k):
                start = time.time()
                shard = qdrant_edge.EdgeShard.load(*a, **k)
                tracer._add("engine", "load", start, time.time(),
                            tracer.ENGINE_MIN_S)
                return Shard(shard)

            @staticmethod
            def create(*a, **k):
                return Shard(qdrant_edge.EdgeShard.create(*a, **k))

        class Qe:
            def __getattr__(self, name):
                return (EdgeShard if name == "EdgeShard"
                        else getattr(qdrant_edge, name))

        edge.qe = Qe()
        cls = edge.EdgeStore
        serve, compact, let_in = cls._serve, cls._compact, cls._let_reads_in

        def traced_serve(store, shared, request):
            before = dict(edge.stats)
            start = time.time()
            # where the answer's time went: the process's CPU (the
            # engine's query runs on its own threads, some short-lived)
            # and page faults, and each live thread's time on a core and
            # waiting for one (schedstat)
            cached0 = pages.snapshot() if pages else None
            ru0, sched0 = resource.getrusage(resource.RUSAGE_SELF), \
                _threads_sched()
            try:
                return serve(store, shared, request)
            finally:
                came = (_ShardPages.came(cached0, pages.snapshot())
                        if pages else "")
                how = ("lent"
                       if edge.stats["lent_reads"] > before["lent_reads"]
                       else "compacting"
                       if edge.stats["side_reads"] > before["side_reads"]
                       else "thread lock")
                ru1, sched1 = resource.getrusage(resource.RUSAGE_SELF), \
                    _threads_sched()
                ran = []
                for name, (run, wait) in sorted(sched1.items()):
                    run0, wait0 = sched0.get(name, (0, 0))
                    if run - run0 >= 0.002 or wait - wait0 >= 0.002:
                        ran.append(f"{name} {1000 * (run - run0):.0f}"
                                   f"+{1000 * (wait - wait0):.0f}")
                cpu_ms = 1000 * (ru1.ru_utime + ru1.ru_stime
                                 - ru0.ru_utime - ru0.ru_stime)
                tracer._add(
                    "served",
                    f"{request.get('op')} ({how}; process CPU {cpu_ms:.0f}"
                    f" ms, faults {ru1.ru_minflt - ru0.ru_minflt} minor "
                    f"{ru1.ru_majflt - ru0.ru_majflt} major; threads' ms "
                    f"on a core+waiting: {', '.join(ran) or 'none'})"
                    + (f"; pages cached meanwhile: {came}" if pages else ""),
                    start, time.time())

        def traced_compact(store):
            start = step_at[0] = time.time()
            try:
                return compact(store)
            finally:
                tracer._add("compact", "_compact", start, time.time())

        def traced_let_in(store, shared):
            turns = edge.stats["lent_turns"]
            start = time.time()
            let_in(store, shared)
            if edge.stats["lent_turns"] > turns:
                tracer._add("turn", "reads let in", start, time.time())

        cls._serve, cls._compact = traced_serve, traced_compact
        cls._let_reads_in = traced_let_in
        threading.Thread(target=self._tick, daemon=True,
                         name="bench-gil-ticker").start()

    def _add(self, kind, what, start, end, at_least=0.0):
        if end - start >= at_least:
            self.events.append((kind, what, start, end,
                                threading.current_thread().name))

    def _tick(self):
        last = time.time()
        while True:
            time.sleep(self.TICK_S)
            now = time.time()
            if now - last >= self.LATE_S:
                self.events.append(("no-gil", "ticker late", last, now,
                                    "bench-gil-ticker"))
            last = now


class _ShardPages:
    """``--trace-pages``: the cached pages of the shard's files under
    ``root``, by kind of file."""

    # the quantized copy lies in vector_storage too: asked first
    KINDS = (("quantized copy", ("quantized",)),
             ("originals", ("vector_storage",)),
             ("payload index", ("payload_index",)),
             ("payloads", ("payload_storage",)),
             ("ids", ("id_tracker", "mappings", "versions")),
             ("log", (os.sep + "wal" + os.sep,)))

    def __init__(self, root):
        self.root = root

    @classmethod
    def kind(cls, path):
        for name, needles in cls.KINDS:
            if any(n in path for n in needles):
                return name
        return "other"

    def snapshot(self):
        from fiftyone_ai_search.store import page_cache

        cached = {}
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    cached[path] = page_cache.cached_pages(path) or 0
                except (OSError, ValueError):
                    continue
        return cached

    @classmethod
    def came(cls, before, after):
        """What came into the cache between two snapshots, by kind: pages
        (MB)."""
        by_kind = {}
        for path, count in after.items():
            more = count - before.get(path, 0)
            if more > 0:
                kind = cls.kind(path)
                by_kind[kind] = by_kind.get(kind, 0) + more
        return ", ".join(f"{k} {v} ({v * 4096 / 2**20:.1f} MB)"
                         for k, v in sorted(by_kind.items())) or "none"


def _threads_sched():
    """``{thread name: (seconds on a core, seconds waiting for one)}`` of
    this process's live threads (``/proc/self/task/*/schedstat``; the
    engine's threads by their tid)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    times = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                run, wait = f.read().split()[:2]
        except OSError:
            continue  # ended meanwhile
        times[names.get(int(tid), f"tid {tid}")] = (int(run) / 1e9,
                                                    int(wait) / 1e9)
    return times


def print_trace(searcher, writer, slow_s=0.3):
    """For each search of ``searcher`` that took ``slow_s`` or more, the
    writer's traced events (``--trace``) that overlapped it."""
    events = writer.get("trace") or []
    print(f"\ntrace: {len(events)} events in the writer; searches of "
          f"{1000 * slow_s:.0f} ms or more beside it:")
    for at, lat, held in zip(searcher["at"], searcher["latencies"],
                             searcher["by_holder"]):
        if lat < slow_s:
            continue
        end = at + lat
        print(f"- search at {at:.3f}: {1000 * lat:,.0f} ms, "
              f"{'answered by the writer' if held else 'on its own'}")
        for kind, what, start, stop, thread in sorted(
                events, key=lambda e: e[2]):
            if stop >= at and start <= end:
                print(f"    {kind:<8} {what:<32} {start - at:+8.3f} s .. "
                      f"{stop - at:+8.3f} s ({1000 * (stop - start):,.0f} "
                      f"ms) [{thread}]")


def role_writer(args):
    from fiftyone_ai_search.store import edge

    tracer = (Tracer(os.path.join(args.root, args.name or f"concurrent_{args.n}")
                     if args.trace_pages else None)
              if args.trace else None)
    # when a compaction beside ran (wall times), for the searches within
    beside, compacted_at = edge.EdgeStore._compact_beside, []

    def timed_beside(store, shared):
        start = time.time()
        done = beside(store, shared)
        if done:
            compacted_at.append({"from": start, "to": time.time(),
                                 **edge.stats["last_compaction"]})
        return done

    edge.EdgeStore._compact_beside = timed_beside
    store = _store(args)
    world, rng = _world(), np.random.default_rng(args.first_id)
    commits, commit_s, maintain_s, block, extra = 0, [], None, None, 0
    maintain_at = None
    start = time.monotonic()
    next_id = args.first_id
    again = None
    if args.rewrite:
        with np.load(args.rewrite) as data:
            again = ([str(i) for i in data["ids"]], data["vectors"],
                     json.loads(str(data["payloads"])))
    while time.monotonic() - start < args.seconds and not (
            args.until and os.path.exists(args.until)):
        time.sleep(args.commit_every)  # embedding the next batch
        if again is None:
            ids = _ids(next_id, args.batch)
            vectors = world.images(world.labels(args.batch, rng), rng)
            payloads = [{"filepath": f"/new/{i}.jpg", "fingerprint": "1:2"}
                        for i in ids]
        else:
            at = (commits * args.batch) % len(again[0])
            ids = again[0][at:at + args.batch]
            vectors = again[1][at:at + args.batch]
            payloads = again[2][at:at + args.batch]
        t = time.monotonic()
        with store.session():  # as the sync commits
            store.upsert(ids, vectors, payloads)
        commit_s.append(time.monotonic() - t)
        next_id += args.batch
        commits += 1
        if (again is None and maintain_s is None
                and time.monotonic() - start >= args.seconds / 2):
            if args.large_write:
                block = _large_write(args, store, world, rng, next_id)
                next_id += block["points"]
                extra += block["points"]
                if args.trace and not args.done_file:
                    # alone: what a search costs on the index as the
                    # large write left it (its points scanned by every
                    # query until the pass gives them their cells)
                    block["solo_after"] = _solo_queries(store)
            before = {k: edge.stats.get(k, 0) for k in (
                "served", "side_reads", "compactions", "compactions_put_off",
                "compactions_beside")}
            t, wall = time.monotonic(), time.time()
            store.maintain(min_points=min(1000, args.n))  # the upkeep pass
            maintain_s = time.monotonic() - t
            maintain_at = {"from": wall, "to": time.time(),
                           "compacted_at": list(compacted_at),
                           **{k: edge.stats.get(k, 0) - v
                              for k, v in before.items()}}
    elapsed = time.monotonic() - start
    if args.done_file:
        # holding the index until the searcher stopped: else its last
        # search may find nobody holding it, and open it (seconds at 1M)
        open(args.done_file, "w").close()
        wait_until = time.monotonic() + 120
        while (not os.path.exists(args.done_file + ".ack")
               and time.monotonic() < wait_until):
            with store.session():
                store.count()  # kept open and answering meanwhile
            time.sleep(0.05)
    store.close()
    return {"commits": commits, "elapsed": elapsed, "commit_s": commit_s,
            "maintain_s": maintain_s, "maintain_at": maintain_at,
            "block": block, "extra": extra, "served": edge.stats["served"],
            "side_reads": edge.stats["side_reads"],
            "lent_reads": edge.stats["lent_reads"],
            "flushes": edge.stats.get("flushes", 0),
            "opens": edge.stats["opens"], "cpu_s": _cpu_s(),
            "trace": tracer.events if tracer else None}


#: the fresh-process openings measured: the page cache as the last holder
#: left it, then cold, with and without the read-ahead
OPENINGS = (("files as the last holder left them", ()),
            ("page cache dropped", ("--cold",)),
            ("page cache dropped, no read-ahead (before)",
             ("--cold", "--no-read-ahead")))

ROLES = {"open": role_open, "hold": role_hold, "searcher": role_searcher,
         "writer": role_writer}


def spawn(args, role, first_id=0, extra=()):
    """Starts ``role`` in a subprocess; returns ``(process, out path)``."""
    out = tempfile.NamedTemporaryFile(prefix=f"ais-cc-{role}-",
                                      suffix=".json", delete=False).name
    cmd = [sys.executable, os.path.abspath(__file__), "--role", role,
           "--n", str(args.n), "--root", args.root,
           "--seconds", str(args.seconds), "--batch", str(args.batch),
           "--commit-every", str(args.commit_every),
           "--search-every", str(args.search_every),
           "--first-id", str(first_id), "--out", out, *extra]
    if role == "writer" and args.large_write:
        cmd += ["--large-write", args.large_write]
    if role == "writer" and args.trace:
        cmd += ["--trace"]
    if role == "writer" and args.trace_pages:
        cmd += ["--trace-pages"]
    return subprocess.Popen(cmd), out


def collect(*procs):
    results = []
    for proc, out in procs:
        if proc.wait() != 0:
            raise SystemExit(f"a {proc.args[3]} process failed")
        with open(out) as f:
            results.append(json.load(f))
        os.remove(out)
    return results


def pct(values, q):
    return float(np.percentile(values, q)) if values else float("nan")


class LoadSampler:
    """Samples ``/proc/loadavg`` (its 1-minute average) every ``every``
    seconds in a thread, phase by phase."""

    def __init__(self, every=5.0):
        self.every, self.phase, self.seen = every, None, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.every):
            try:
                with open("/proc/loadavg") as f:
                    load = float(f.read().split()[0])
            except OSError:
                return
            if self.phase is not None:
                self.seen.setdefault(self.phase, []).append(load)

    def range(self, phase):
        loads = self.seen.get(phase) or [float("nan")]
        return f"load {min(loads):.1f}-{max(loads):.1f}"

    def stop(self):
        self._stop.set()


def _within(searcher, window):
    """The searcher's latencies of searches that started within ``window``
    (``from`` / ``to`` wall times), or that were under way at its start."""
    if not window:
        return []
    return [lat for at, lat in zip(searcher["at"], searcher["latencies"])
            if window["from"] - lat <= at <= window["to"]]


def main(args):
    build(args)
    store = _store(args)
    base = 10 * args.n  # the writer's new ids, above the index's
    rows = []
    load = LoadSampler()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.monotonic()

    opening = []
    load.phase = "openings"
    for label, extra in ([] if args.no_openings else OPENINGS):
        for _ in range(2):
            opening.append((label, collect(spawn(args, "open",
                                                 extra=extra))[0]))
    held = ([] if args.no_openings
            else [_held_opening(args) for _ in range(2)])
    if args.openings_only:
        for label, o in opening:
            print(f"{label}: {json.dumps(o)}")
        for o in held:
            print(f"another process holds the index: {json.dumps(o)}")
        return
    load.phase = "searcher alone"
    (solo_s,) = collect(spawn(args, "searcher"))
    load.phase = "writer alone"
    (solo_w,) = collect(spawn(args, "writer", base))
    written = solo_w["commits"] * args.batch + solo_w["extra"]
    load.phase = "together"
    done_file = os.path.join(tempfile.gettempdir(),
                             f"ais-cc-done-{os.getpid()}")
    w = spawn(args, "writer", base + written, ("--done-file", done_file))
    s = spawn(args, "searcher", extra=("--done-file", done_file))
    conc_w, conc_s = collect(w, s)
    for path in (done_file, done_file + ".ack"):
        if os.path.exists(path):
            os.remove(path)
    load.phase = None
    written += conc_w["commits"] * args.batch + conc_w["extra"]
    store.delete(_ids(base, written))  # the index as it was
    load.stop()
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)

    def ms(x):
        return f"{1000 * x:,.0f} ms"

    def lat_row(lat):
        if not lat:
            return "none"
        return (f"{ms(pct(lat, 50))} / {ms(pct(lat, 95))} / "
                f"{ms(max(lat))}")

    for label, res, phase in (("alone", solo_s, "searcher alone"),
                              ("beside the writer", conc_s, "together")):
        lat = res["latencies"]
        rows.append((f"searcher {label}: p50 / p95 / max", lat_row(lat),
                     f"{len(lat)} searches after a first of "
                     f"{ms(res['first'])}; {res['asked']} answered by the "
                     f"holder; {res['opens']} openings; holder's turns "
                     f"waited <= {res['turns_waited']}; "
                     f"{res['cpu_s']:.1f} s CPU; {load.range(phase)}"))
    block, upkeep = conc_w["block"], conc_w["maintain_at"]
    if block:
        lat = _within(conc_s, block)
        rows.append(("searcher during the large write: p50 / p95 / max",
                     lat_row(lat),
                     f"{len(lat)} searches in its {block['s']:.1f} s; the "
                     f"writer answered {block['served']} ({block['lent_reads']}"
                     f" on its shard lent, {block['lent_turns']} between two "
                     f"chunks of a write)"))
    if upkeep:
        lat = _within(conc_s, upkeep)
        rows.append(("searcher during the upkeep pass: p50 / p95 / max",
                     lat_row(lat),
                     f"{len(lat)} searches in its "
                     f"{conc_w['maintain_s']:.1f} s; the writer answered "
                     f"{upkeep['served']} ({upkeep['side_reads']} while "
                     f"compacting); compactions run "
                     f"{upkeep.get('compactions', 0)} "
                     f"({upkeep.get('compactions_beside', 0)} beside), put "
                     f"off {upkeep.get('compactions_put_off', 0)}"))
        for c in upkeep.get("compacted_at") or []:
            lat = _within(conc_s, c)
            rows.append((
                "searcher during the compaction beside: p50 / p95 / max",
                lat_row(lat),
                f"{len(lat)} searches in its {c['to'] - c['from']:.1f} s: "
                f"copy of {c['bytes'] / 2**30:.2f} GiB {c['copy_s']:.1f} s, "
                f"child's optimize {c['optimize_s']:.1f} s, "
                + (f"copy to swap in and read-ahead "
                   f"{c['copy_for_swap_s']:.1f} s" if "copy_for_swap_s" in c
                   else f"read-ahead {c.get('read_ahead_s', 0):.1f} s")
                + f"; swap {c['swap_s']:.1f} s, reopening "
                f"{c['reopen_s']:.1f} s "
                + ("(the searches wait)" if c.get("relayed") is None else
                   f"(the child answered {c['relayed']} requests "
                   "meanwhile)")))
    after = (solo_w["block"] or {}).get("solo_after")
    if after:
        rows.append((
            "a search on the index the large write left, alone: p50 / p95 "
            "/ max", lat_row(after["wall"]),
            f"{len(after['wall'])} searches in the writer's process (alone, "
            f"before its pass), process CPU p50 "
            f"{ms(pct(after['cpu'], 50))}"))
        rows.append((
            "a search before the large write, alone: CPU p50",
            ms(pct(solo_s["cpu_each"], 50)) if solo_s.get("cpu_each")
            else "-", "the searcher alone"))
    for label, res, phase in (("alone", solo_w, "writer alone"),
                              ("beside the searcher", conc_w, "together")):
        note = (f"{res['commits']} commits: first {ms(res['commit_s'][0])}"
                f", then p50 {ms(pct(res['commit_s'][1:], 50))}, p95 "
                f"{ms(pct(res['commit_s'][1:], 95))}; upkeep pass "
                f"{res['maintain_s'] or 0:.1f} s")
        if res["maintain_at"]:
            m = res["maintain_at"]
            note += (f" (compactions run {m.get('compactions', 0)}, "
                     f"{m.get('compactions_beside', 0)} beside, put "
                     f"off {m.get('compactions_put_off', 0)})")
        if res["block"]:
            b = res["block"]
            note += (f" after {b['points']:,} points anew in {b['s']:.1f} s"
                     f" (batches of 4,096: p50 "
                     f"{ms(pct(b['batch_s'], 50))}, max "
                     f"{ms(max(b['batch_s']))}; making the vectors "
                     f"{b['make_s']:.1f} s)")
        note += (f"; served {res['served']} ({res['side_reads']} while "
                 f"compacting, {res['lent_reads']} on its shard lent); "
                 f"flushes of its kept shard {res.get('flushes', 0)}; "
                 f"{res['cpu_s']:.1f} s CPU; {load.range(phase)}")
        rows.append((f"writer {label}: commits/s",
                     f"{res['commits'] / res['elapsed']:.3f}", note))
    for label, o in opening:
        rows.append((f"fresh process, {label}: first search",
                     f"{o['first_search_s']:.2f} s",
                     f"{o['first_search_cpu_s']:.2f} s CPU; then a search "
                     f"{ms(o['second_search_s'])}; then reads ahead "
                     f"{o['read_ahead_s']:.2f} s + shard load "
                     f"{o['load_s']:.2f} s"))
    for o in held:
        rows.append(("fresh process, another process holds the index: "
                     "first search", f"{o['first_search_s']:.2f} s",
                     f"{o['first_search_cpu_s']:.2f} s CPU, answered by the "
                     f"holder ({o['asked']} asked, {o['opens']} openings); "
                     f"then a search {ms(o['second_search_s'])}"))
    p95 = pct(conc_s["latencies"], 95) / pct(solo_s["latencies"], 95)
    drop = 1 - ((conc_w["commits"] / conc_w["elapsed"])
                / (solo_w["commits"] / solo_w["elapsed"]))
    rows.append(("searcher p95 together / alone (target <= 2)",
                 f"{p95:.2f}", ""))
    rows.append(("writer throughput drop (target <= 25%)",
                 f"{100 * drop:.0f}%", ""))
    width = max(len(r[0]) for r in rows)
    print(f"\n{args.n:,} points x {DIM}-d, phases of {args.seconds:g} s, "
          f"commits of {args.batch} every {args.commit_every:g} s, a search "
          f"every {args.search_every:g} s"
          + (f", a large write ({args.large_write}) half-way"
             if args.large_write else "")
          + f"; {time.monotonic() - wall0:.0f} s wall, its processes "
          f"{cpu.ru_utime - cpu0.ru_utime:.0f} s user + "
          f"{cpu.ru_stime - cpu0.ru_stime:.0f} s sys\n")
    for name, value, note in rows:
        print(f"| {name:<{width}} | {value:>22} | {note}")
    if args.trace and args.trace_out:
        with open(args.trace_out, "w") as f:
            json.dump({"searcher": conc_s, "solo": solo_s,
                       "trace": conc_w["trace"],
                       "maintain_at": conc_w["maintain_at"],
                       "block": conc_w["block"]}, f)
    if args.trace:
        print_trace(conc_s, conc_w,
                    slow_s=2 * pct(solo_s["latencies"], 95))
    if args.drop:
        store.drop()


if __name__ == "__main__":
    ARGS = parse_args()
    if ARGS.role:
        result = ROLES[ARGS.role](ARGS)
        with open(ARGS.out, "w") as f:
            json.dump(result, f)
    elif ARGS.build_only:
        build(ARGS)
    else:
        main(ARGS)
