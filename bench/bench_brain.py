"""``sort_by_similarity`` through our FiftyOne Brain backend (brain key
``"ai_search"``, the Qdrant index) against FiftyOne Brain's sklearn backend,
on the same vectors.

One run builds a FiftyOne dataset of ``--samples`` samples the way
``bench_search.py`` does (filepaths point at a few small real images,
reused: nothing is embedded), enables AI search (which registers the brain
key ``"ai_search"``), fills our index with random unit vectors the way a
sync leaves it (written into the build with the images' real fingerprints,
then ``state.switch_to_build``), and gives the sklearn backend the very same
matrix in dataset order (``fob.compute_similarity(embeddings=...,
backend="sklearn", brain_key="sk")``, no model).

Every row times the same call on both sides, ``view =
samples.sort_by_similarity(query, k=100, brain_key=...)`` and then
``view.values("id")``, so both pay for building the view. Ours and sklearn
run in turn (ours, sklearn, ours, ...) after one warm-up call each, and the
medians of ``--repeat`` runs are reported with their ratio: on a shared
machine the ratio is what to read. The warm-up results of the two sides are
compared position by position.

Rows: a query vector over the whole dataset; one sample id; five sample ids
(aggregation ``"mean"``, the Brain default); a query vector within a view of
half the dataset; ``reverse=True``; ``load_brain_results`` and a first query
in a fresh process (cold caches, run as a subprocess); ours only: a new
prompt each run (the sklearn index has no model). Examples::

    python bench/bench_brain.py                          # 100k x 64-d, tiny CLIP
    python bench/bench_brain.py --model vit-b-32         # 100k x 512-d
    python bench/bench_brain.py --samples 20000 --repeat 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _env  # noqa: E402
import bench_search as bs  # noqa: E402  (imports nothing of fiftyone)

LIMIT = 100
OURS = "ai_search"
SKLEARN = "sk"

#: up to this many samples, the sklearn backend precomputes all distances
#: for id queries (``fiftyone.brain.internal.core.sklearn._MAX_PRECOMPUTE_DISTS``)
SKLEARN_PRECOMPUTE = 15_000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--model", choices=("tiny", "vit-b-32"), default="tiny",
                   help="our index's model, and so the vectors' size: the "
                        "bundled tiny CLIP (64-d) or a random-weight "
                        "ViT-B-32 (512-d)")
    p.add_argument("--repeat", type=int, default=5,
                   help="runs per measurement (median reported)")
    p.add_argument("--fresh-repeat", type=int, default=3,
                   help="fresh processes per side for the load row")
    _env.add_model_args(p)
    p.add_argument("--skip", default="",
                   help="comma-separated parts to skip: fresh,prompt")
    # internal: the fresh process of the load row
    p.add_argument("--child", metavar="BRAIN_KEY", help=argparse.SUPPRESS)
    p.add_argument("--dataset", help=argparse.SUPPRESS)
    p.add_argument("--query", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- setup ---------------------------------------------------------------------


def fill_index(dataset, ids, vectors, model, pretrained):
    """Enables AI search (registering brain key ``"ai_search"``) and writes
    ``vectors`` into its first build with the images' real fingerprints,
    then switches searches over to it: what a finished sync leaves."""
    import fiftyone_ai_search as ais
    from fiftyone_ai_search import brain
    from fiftyone_ai_search.sync import images as sync
    from fiftyone_ai_search.index import indexes
    from fiftyone_ai_search.index import state as st
    from fiftyone_ai_search.store import IndexInfo

    ais.enable_embeddings(dataset, model=model, pretrained=pretrained,
                          compute=False)
    doc = st.get(dataset)
    build = doc["build"]
    clip = indexes.load_index_model(build)
    store = indexes.open_ref(build)
    store.ensure(IndexInfo(model=clip.spec.name, pretrained=clip.spec.pretrained,
                           model_identity=clip.spec.identity, dim=clip.dim))
    paths = dataset.values("filepath")
    fingerprints = {p: sync.file_fingerprint(p) for p in set(paths)}
    chunk = 10_000
    for start in range(0, len(ids), chunk):
        sl = slice(start, start + chunk)
        store.upsert(ids[sl], vectors[sl],
                     [sync._payload(p, fingerprints[p]) for p in paths[sl]])
    store.close()
    now = st.utcnow()
    st.switch_to_build(dataset, doc["generation"], build["name"],
                       updated_at=now, watermark=now,
                       deletion_watermark=dataset._doc.last_deletion_at)
    state = st.load(dataset)
    if OURS not in dataset.list_brain_runs():
        brain.register(dataset, state, OURS)
    # what a refresher pass asks: nothing left to do
    assert not sync.has_changes(dataset, state), "the index is not in sync"
    assert sync.is_consistent(dataset,
                              indexes.open_index(dataset, doc=state))
    return clip


def limit_threads(threads):
    if not threads:
        return
    import sklearn.neighbors  # noqa: F401 (loaded before the limit is set)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)  # in force until exit


# -- comparison ------------------------------------------------------------------


def compare_ids(ours, theirs):
    """``(identical, differing positions, ids shared)``."""
    differ = sum(1 for a, b in zip(ours, theirs) if a != b)
    differ += abs(len(ours) - len(theirs))
    return differ == 0, differ, len(set(ours) & set(theirs))


def same_note(ours, theirs, what, report):
    identical, differ, shared = compare_ids(ours, theirs)
    line = (f"identical: {'yes' if identical else 'no'}"
            + ("" if identical else
               f" ({differ} of {max(len(ours), len(theirs))} positions "
               f"differ, {shared} ids shared)"))
    print(f"  {what}: {line}", flush=True)
    report.append((what, identical, differ, shared))
    return "identical" if identical else f"{differ} positions differ, {shared} shared"


def near_tie_check(dataset_vectors, row_of, query, ours, theirs):
    """For differing results: the scores (in float64) at the positions
    that differ, to tell near-ties (float32 rounding) from real errors."""
    import numpy as np

    q = np.asarray(query, dtype=np.float64).ravel()
    q /= np.linalg.norm(q)
    out = []
    for pos, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            sa = float(dataset_vectors[row_of[a]].astype(np.float64) @ q)
            sb = float(dataset_vectors[row_of[b]].astype(np.float64) @ q)
            out.append((pos, sa, sb))
    return out


# -- the fresh process ---------------------------------------------------------


def child(args):
    """In a fresh process: ``load_brain_results`` + a first query; prints
    one line of JSON."""
    import numpy as np

    import fiftyone as fo
    import fiftyone.brain  # noqa: F401 (both sides need it)

    dataset = fo.load_dataset(args.dataset)
    query = np.load(args.query)
    t0 = time.perf_counter()
    dataset.load_brain_results(args.child)
    t1 = time.perf_counter()
    ids = dataset.sort_by_similarity(query, k=LIMIT,
                                     brain_key=args.child).values("id")
    t2 = time.perf_counter()
    print(json.dumps({"load_s": t1 - t0, "query_s": t2 - t1, "ids": ids}))


def fresh_run(dataset_name, key, query_path, threads):
    env = dict(os.environ)  # the private mongod and scratch dirs of _env
    if threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS"):
            env[var] = str(threads)
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", key,
         "--dataset", dataset_name, "--query", query_path],
        env=env, capture_output=True, text=True, check=False,
    )
    if out.returncode:
        raise RuntimeError(f"fresh process failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- measurements --------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child(args)
    skip = set(filter(None, args.skip.split(",")))
    scratch = _env.setup()

    import numpy as np

    import fiftyone as fo  # noqa: F401
    import fiftyone.brain as fob
    from fiftyone import ViewField as F

    limit_threads(args.threads)
    n = args.samples
    model, pretrained, _, _ = bs.model_choice(args)
    dim = 64 if args.model == "tiny" else 512
    print(f"{n:,} samples x {dim}-d (model {args.model}), k {LIMIT}, "
          f"{args.repeat} runs per measurement (median), threads "
          f"{args.threads or 'default'}, cpus {os.cpu_count()}, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)

    t, dataset = bs.timed_once(lambda: bs.build_dataset(
        n, bs.small_images(os.path.join(scratch, "images"))))
    dataset.persistent = True  # the fresh processes load it by name
    print(f"dataset of {n:,} samples built in {t:.1f} s", flush=True)
    ids = dataset.values("id")
    row_of = {sample_id: i for i, sample_id in enumerate(ids)}
    vectors = bs.random_unit_vectors(n, dim)
    t, clip = bs.timed_once(
        lambda: fill_index(dataset, ids, vectors, model, pretrained))
    assert clip.dim == dim, (clip.dim, dim)
    print(f"our index filled ({dim}-d) in {t:.1f} s", flush=True)
    t, _ = bs.timed_once(lambda: fob.compute_similarity(
        dataset, embeddings=vectors, backend="sklearn", brain_key=SKLEARN))
    print(f"sklearn index built in {t:.1f} s", flush=True)

    if n <= SKLEARN_PRECOMPUTE:
        print(f"!! {n:,} samples <= {SKLEARN_PRECOMPUTE:,}: the sklearn backend "
              "answers id queries from a precomputed distance matrix of "
              "*centered* embeddings, centering its stored embeddings in "
              "place (NeighborsHelper._build_dists), so its results differ "
              "from cosine ranking after the first id query: expect "
              "'identical: no' from the id row on", flush=True)
    table = bs.Table()
    report = []
    half = dataset.match(F("half") == True)  # noqa: E712
    rng = np.random.default_rng(1)
    runs = args.repeat + 1  # the warm-up, then the measured runs
    qvecs = bs.random_unit_vectors(runs, dim, seed=2)
    one_id = [ids[j] for j in rng.choice(n, size=runs, replace=False)]
    five_ids = [[ids[j] for j in rng.choice(n, size=5, replace=False)]
                for _ in range(runs)]

    def query(samples, key, q, **kwargs):
        view = samples.sort_by_similarity(q, k=LIMIT, brain_key=key, **kwargs)
        return view.values("id")

    def row(label, samples, queries, ties_vector=None, **kwargs):
        print(label, flush=True)
        # warm-up: one call each, and the two sides compared
        ours = query(samples, OURS, queries[0], **kwargs)
        theirs = query(samples, SKLEARN, queries[0], **kwargs)
        note = same_note(ours, theirs, label, report)
        if ties_vector is not None and ours != theirs:
            for pos, sa, sb in near_tie_check(vectors, row_of, ties_vector,
                                              ours, theirs):
                print(f"    position {pos}: ours {sa:.9f}, sklearn {sb:.9f} "
                      f"(cosine, float64)")
        t_ours, t_sk = bs.paired(
            lambda i: query(samples, OURS, queries[i + 1], **kwargs),
            lambda i: query(samples, SKLEARN, queries[i + 1], **kwargs),
            args.repeat)
        table.add(label, t_ours, t_sk, note)

    row(f"query vector, whole dataset ({n:,})", dataset, qvecs,
        ties_vector=qvecs[0])
    row("one sample id", dataset, one_id,
        ties_vector=vectors[row_of[one_id[0]]])
    mean5 = vectors[[row_of[i] for i in five_ids[0]]].mean(axis=0)
    row("5 sample ids (aggregation mean)", dataset, five_ids,
        ties_vector=mean5)
    row(f"query vector, view of {len(half):,} (match)", half, qvecs,
        ties_vector=qvecs[0])
    row("query vector, reverse=True", dataset, qvecs, ties_vector=-qvecs[0],
        reverse=True)

    if "prompt" not in skip:
        print("prompt (ours only)", flush=True)
        query(dataset, OURS, "a warm-up prompt")
        t = bs.median_s(lambda i: query(dataset, OURS, f"a photo of thing {i}"),
                        args.repeat)
        table.add("prompt, a new one each run: OURS ONLY", t, None,
                  f"the sklearn index has no model; {args.model} text tower")

    if "fresh" not in skip:
        print("fresh process: load_brain_results + first query", flush=True)
        from fiftyone_ai_search.index import indexes

        qpath = os.path.join(scratch, "query.npy")
        np.save(qpath, qvecs[0])
        # exact cosine ranking of the query vector (float64, ties by id)
        scores = vectors.astype(np.float64) @ qvecs[0].astype(np.float64)
        top = np.lexsort((np.array(ids), -scores))[:LIMIT]
        want = [ids[j] for j in top]
        # the shard is not held open by this process
        indexes.open_index(dataset).close()
        got = {OURS: [], SKLEARN: []}
        for _ in range(args.fresh_repeat):
            for key in (OURS, SKLEARN):
                got[key].append(fresh_run(dataset.name, key, qpath,
                                          args.threads))
        same = {k: all(r["ids"] == want for r in v) for k, v in got.items()}
        for key, runs_ in got.items():
            if not same[key]:
                _, differ, shared = compare_ids(runs_[0]["ids"], want)
                print(f"  !! {key} in a fresh process: {differ} positions "
                      f"differ from the exact ranking, {shared} shared")
        totals = {k: statistics.median(r["load_s"] + r["query_s"] for r in v)
                  for k, v in got.items()}
        parts = {k: (statistics.median(r["load_s"] for r in v),
                     statistics.median(r["query_s"] for r in v))
                 for k, v in got.items()}
        note = (f"load + query: ours {parts[OURS][0]:.2f} + "
                f"{parts[OURS][1]:.2f} s, sklearn {parts[SKLEARN][0]:.2f} + "
                f"{parts[SKLEARN][1]:.2f} s; "
                + ("identical" if all(same.values()) else
                   "!! results differ: " + ", ".join(
                       f"{k} {'same' if v else 'other'}"
                       for k, v in same.items())))
        table.add("fresh process: load_brain_results + first query",
                  totals[OURS], totals[SKLEARN], note)

    print()
    print(f"{n:,} samples x {dim}-d, k {LIMIT}, `sort_by_similarity(...)` + "
          f"`values(\"id\")`, medians of {args.repeat} runs "
          f"({args.fresh_repeat} fresh processes per side), threads "
          f"{args.threads or 'default'}, load average "
          f"{os.getloadavg()[0]:.1f}; ours/Brain < 1 means ours is faster")
    print(table.render())
    print()
    print("identical results (warm-up call of each row): "
          + ", ".join(f"{w}: {'yes' if s else f'no ({d} positions)'}"
                      for w, s, d, _ in report))


if __name__ == "__main__":
    main()
