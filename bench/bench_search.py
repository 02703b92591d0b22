"""Search latency at scale: ``perform_ai_search`` against FiftyOne Brain's
sklearn similarity backend, on the same vectors and the same model.

One run builds a FiftyOne dataset of ``--samples`` samples (filepaths point
at a few small real images, reused: nothing is embedded), fills our index
with random unit vectors straight through the vector store (with the
images' real fingerprints, as a sync writes them), marks it indexed, and
gives FiftyOne Brain's sklearn backend the very same matrix
(``compute_similarity(embeddings=...)``). Both sides wrap the same open_clip
model (a random-weight ViT-B-32 saved to a local ``.safetensors``, or the
bundled 64-d tiny CLIP), so prompt encoding costs the same on both.

Then, measured in turn (ours, Brain, ours, ...) so that a busy machine
slows both alike, and reported as medians and ratios:

- (a) prompt search of the whole dataset, a new prompt each run (so both
  encode it); ours also with a repeated prompt (our text cache) and both
  with a ready-made query vector;
- (b) search by the vector of a sample id;
- (c) prompt search within a view holding half the dataset;
- (d) diverse search (kmeans centroids, kmeans random, dbscan);
- (e) in-Qdrant id filter vs over-fetch for scopes of several sizes (how
  ``topk._use_id_filter`` chooses);
- store costs: opening the shard, reading all vectors.

"Ours" is end to end: validation, query, and the result saved as the
temporary collection (a saved view + scores), then materialised
(``values("id")``); "Brain" is ``sort_by_similarity(..., k=limit)`` and the
view materialised. Examples::

    python bench/bench_search.py                        # 100k x 512-d
    python bench/bench_search.py --samples 20000 --model tiny
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _env  # noqa: E402

LIMIT = 100


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--model", choices=("vit-b-32", "tiny"), default="vit-b-32",
                   help="random-weight ViT-B-32 (512-d) or the tiny CLIP (64-d)")
    p.add_argument("--repeat", type=int, default=7,
                   help="runs per search measurement (median reported)")
    p.add_argument("--diverse-repeat", type=int, default=3)
    p.add_argument("--scopes", default="1000,2000,4000,10000,50000",
                   help="scope sizes for the filter vs over-fetch study")
    p.add_argument("--cache-dir",
                   default=os.path.join(tempfile.gettempdir(), "ais-bench-search"),
                   help="where the random ViT-B-32 weights are kept")
    p.add_argument("--threads", type=int, default=1,
                   help="threads for torch, BLAS and OpenMP, both sides alike "
                        "(0: the libraries' defaults). One by default: on a "
                        "busy machine their spinning threads make timings "
                        "swing 10x (ViT-B-32 text encoding: 115 ms on one "
                        "thread, 1.6 s on two, measured here)")
    p.add_argument("--world", choices=("random", "clip-b32"),
                   default="random",
                   help="the indexed vectors: random unit vectors, or the "
                        "CLIP-like clusters of bench_scale.py (512-d)")
    p.add_argument("--cells", action="store_true",
                   help="run the background upkeep (maintain_index) before "
                        "measuring, so searches of an index above the size "
                        "threshold use its cells")
    p.add_argument("--skip", default="",
                   help="comma-separated parts to skip: "
                        "brain,diverse,scopes,store,refresh")
    p.add_argument("--beside-writer", action="store_true",
                   help="then the view and diverse rows again, alone and "
                        "beside a writer process committing a sync's "
                        "batches to the same index (issue 29), as ratios")
    p.add_argument("--writer-warmup", type=float, default=20.0,
                   help="seconds the writer runs before measuring beside it")
    return p.parse_args(argv)


# -- helpers -------------------------------------------------------------------


def median_s(fn, repeat):
    """Median seconds of ``fn(i)`` over ``repeat`` runs (run index ``i``)."""
    times = []
    for i in range(repeat):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def paired(fn_a, fn_b, repeat):
    """Medians of two functions run in turn (a, b, a, b, ...)."""
    ta, tb = [], []
    for i in range(repeat):
        for fn, times in ((fn_a, ta), (fn_b, tb)):
            t = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def timed_once(fn):
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def fmt_s(seconds):
    return f"{seconds * 1000:8.1f} ms" if seconds < 10 else f"{seconds:8.2f} s "


class Table:
    def __init__(self):
        self.rows = []

    def add(self, what, ours, brain=None, note=""):
        ratio = "" if brain is None else f"{ours / brain:5.2f}"
        self.rows.append((what, fmt_s(ours), "" if brain is None else fmt_s(brain),
                          ratio, note))
        print(f"  {what}: ours {fmt_s(ours).strip()}"
              + ("" if brain is None else
                 f", Brain {fmt_s(brain).strip()}, ratio {ratio.strip()}")
              + (f"  ({note})" if note else ""), flush=True)

    def render(self):
        head = ("measurement", "ours", "Brain sklearn", "ours/Brain", "note")
        widths = [max(len(str(r[i])) for r in [head] + self.rows)
                  for i in range(5)]
        lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        for r in self.rows:
            lines.append("| " + " | ".join(str(c).ljust(w)
                                           for c, w in zip(r, widths)) + " |")
        return "\n".join(lines)


# -- setup ---------------------------------------------------------------------


def vit_weights(cache_dir):
    """A random-weight ViT-B-32 saved as ``.safetensors`` (built once)."""
    path = os.path.join(cache_dir, "vit-b-32-random.safetensors")
    if not os.path.exists(path):
        import open_clip
        import torch
        from safetensors.torch import save_file

        os.makedirs(cache_dir, exist_ok=True)
        torch.manual_seed(0)
        model, _, _ = open_clip.create_model_and_transforms("ViT-B-32",
                                                            pretrained=None)
        state = {k: v.detach().clone().contiguous()
                 for k, v in model.state_dict().items()}
        save_file(state, path + ".tmp")
        os.replace(path + ".tmp", path)
    return path


def model_choice(args):
    """``(our model, our pretrained, Brain's open_clip name, Brain's
    pretrained)``: the same weights on both sides."""
    if args.model == "tiny":
        from fiftyone_ai_search.demo import DEFAULT_MODEL_DIR, tiny_clip_model_name

        return (tiny_clip_model_name(), None, "local-dir:" + DEFAULT_MODEL_DIR,
                None)
    path = vit_weights(args.cache_dir)
    return "ViT-B-32", path, "ViT-B-32", path


def brain_model(clip_model, pretrained):
    """FiftyOne's own open_clip wrapper around the same weights."""
    import fiftyone.utils.open_clip as fouo

    config = fouo.TorchOpenClipModelConfig({
        "clip_model": clip_model,
        "pretrained": pretrained,
        "text_prompt": "",
        "device": "cpu",
    })
    return fouo.TorchOpenClipModel(config)


def small_images(root, count=8):
    from PIL import Image

    os.makedirs(root, exist_ok=True)
    paths = []
    for i in range(count):
        path = os.path.join(root, f"{i}.jpg")
        if not os.path.exists(path):
            Image.new("RGB", (64, 64), (30 * i, 255 - 30 * i, 128)).save(path)
        paths.append(path)
    return paths


def build_dataset(n, image_paths):
    import fiftyone as fo

    dataset = fo.Dataset()
    batch = 10_000
    for start in range(0, n, batch):
        dataset.add_samples(
            [fo.Sample(filepath=image_paths[i % len(image_paths)],
                       half=bool(i % 2 == 0))
             for i in range(start, min(n, start + batch))],
            progress=False,
        )
    return dataset


def random_unit_vectors(n, dim, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def fill_index(dataset, ids, vectors, model, pretrained):
    """Enables AI search and writes ``vectors`` straight into our index with
    the images' real fingerprints, then marks the dataset as indexed: what a
    finished sync leaves, so that a sync after an edit that leaves the image
    alone (a tag) embeds nothing, as for a user."""
    import fiftyone_ai_search as ais
    from fiftyone_ai_search.sync import images as sync
    from fiftyone_ai_search.index import indexes
    from fiftyone_ai_search.index import state as st
    from fiftyone_ai_search.store import IndexInfo

    ais.enable_embeddings(dataset, model=model, pretrained=pretrained,
                          compute=False)
    doc = st.get(dataset)
    build = doc["build"]  # the first index, built beside (none) like a sync
    clip = indexes.load_index_model(build)
    store = indexes.open_ref(build)
    store.ensure(IndexInfo(model=clip.spec.name, pretrained=clip.spec.pretrained,
                           model_identity=clip.spec.identity, dim=clip.dim))
    paths = dataset.values("filepath")
    fingerprints = {p: sync.file_fingerprint(p) for p in set(paths)}
    chunk = 10_000
    with store.session():  # one opening (~2.5 s at 1M)
        for start in range(0, len(ids), chunk):
            sl = slice(start, start + chunk)
            store.upsert(ids[sl], vectors[sl],
                         [sync._payload(p, fingerprints[p]) for p in paths[sl]])
    store.close()
    now = st.utcnow()
    st.switch_to_build(dataset, doc["generation"], build["name"],
                       updated_at=now, watermark=now,
                       deletion_watermark=dataset._doc.last_deletion_at)
    return clip


# -- beside a writer (issue 29) -------------------------------------------------


#: the rows measured alone and beside a writer: the prompt within a view of
#: half the dataset, diverse search with 10 and 100 clusters (and targets)
BESIDE_ROWS = (
    ("prompt, view of half the samples", None, 0.2),
    ("diverse centroids, kmeans, 10 clusters",
     dict(method="centroids", clustering_method="kmeans", num_clusters=10),
     2.0),
    ("diverse centroids, kmeans, 100 clusters",
     dict(method="centroids", clustering_method="kmeans", num_clusters=100),
     5.0),
)


def beside_writer(args, dataset, half, store, ids, vectors, scratch):
    """The rows of :data:`BESIDE_ROWS` alone, then beside a writer process
    (``bench_concurrent.py``'s, in its own process as a sync's worker is)
    that writes 32 of the dataset's points again every 1.6 s, in a kept-open
    session as a sync commits; medians, the machine's load average and this
    process's CPU seconds beside each."""
    import json
    import subprocess

    import numpy as np

    import fiftyone_ai_search as ais
    from fiftyone_ai_search.store import edge
    from fiftyone_ai_search.sync import images as sync

    rng = np.random.default_rng(5)
    pick = np.sort(rng.choice(len(ids), size=min(3200, len(ids)),
                              replace=False))
    paths = dataset.select([ids[i] for i in pick],
                           ordered=True).values("filepath")
    fingerprints = {p: sync.file_fingerprint(p) for p in set(paths)}
    rewrite = os.path.join(scratch, "rewrite.npz")
    np.savez(rewrite, ids=np.array([ids[i] for i in pick]),
             vectors=vectors[pick],
             payloads=json.dumps([sync._payload(p, fingerprints[p])
                                  for p in paths]))
    stop = os.path.join(scratch, "writer.stop")
    out = os.path.join(scratch, "writer.json")

    def run_rows(label):
        # not measured: the index opened, or the writer found holding it
        ais.perform_ai_search(half, prompt=f"{label} warm-up", limit=LIMIT)
        got = {}
        for name, kwargs, _ in BESIDE_ROWS:
            runs, cpu = [], []
            repeat = args.repeat if kwargs is None else args.diverse_repeat
            for i in range(repeat):
                c, t = time.process_time(), time.perf_counter()
                if kwargs is None:
                    ais.perform_ai_search(half, prompt=f"{label} half {i}",
                                          limit=LIMIT)
                else:
                    ais.perform_ai_search(dataset, limit=LIMIT, **kwargs)
                runs.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            got[name] = (statistics.median(runs), statistics.median(cpu),
                         min(runs), max(runs))
        return got

    store.close()
    load = [os.getloadavg()[0]]
    before = dict(edge.stats)
    solo = run_rows("solo")
    load.append(os.getloadavg()[0])
    store.close()  # the writer takes the index, as a sync's worker would
    writer = subprocess.Popen([
        sys.executable, os.path.join(os.path.dirname(__file__),
                                     "bench_concurrent.py"),
        "--role", "writer", "--root", store.root_dir, "--name", store.name,
        "--n", str(len(ids)), "--rewrite", rewrite, "--until", stop,
        "--seconds", "3600", "--out", out])
    try:
        time.sleep(args.writer_warmup)
        mid = dict(edge.stats)
        beside = run_rows("beside")
        after = dict(edge.stats)
        load.append(os.getloadavg()[0])
    finally:
        with open(stop, "w"):
            pass
        writer.wait()
    with open(out) as f:
        wrote = json.load(f)
    commits = wrote["commit_s"]

    print()
    print(f"alone and beside a writer (issue 29): load average "
          f"{' / '.join(f'{x:.1f}' for x in load)} (before / after alone / "
          f"after beside), {os.cpu_count()} cpus")
    print("| row | alone: median (min-max), CPU | beside the writer: median "
          "(min-max), CPU | beside / alone | target |")
    print("|---|---|---|---|---|")
    for name, _, target in BESIDE_ROWS:
        a, b = solo[name], beside[name]
        print(f"| {name} | {fmt_s(a[0]).strip()} ({fmt_s(a[2]).strip()}-"
              f"{fmt_s(a[3]).strip()}), {fmt_s(a[1]).strip()} CPU | "
              f"{fmt_s(b[0]).strip()} ({fmt_s(b[2]).strip()}-"
              f"{fmt_s(b[3]).strip()}), {fmt_s(b[1]).strip()} CPU | "
              f"{b[0] / a[0]:.2f} | <= {fmt_s(target).strip()} |")
    print(f"writer: {len(commits)} commits of 32 in {wrote['elapsed']:.0f} s"
          f" ({len(commits) / wrote['elapsed']:.3f}/s), commit p50 "
          f"{fmt_s(statistics.median(commits)).strip()}, max "
          f"{fmt_s(max(commits)).strip()}; it answered {wrote['served']} "
          f"requests of this process and opened the shard "
          f"{wrote['opens']} times")
    print("this process: alone {} openings; beside the writer {} openings, "
          "{} requests answered by the writer".format(
              mid["opens"] - before["opens"], after["opens"] - mid["opens"],
              after["asked"] - mid["asked"]))


# -- measurements --------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    scratch = _env.setup()

    import numpy as np

    import fiftyone as fo  # noqa: F401
    import fiftyone.brain as fob
    from fiftyone import ViewField as F

    import fiftyone_ai_search as ais
    from fiftyone_ai_search import results as colls
    from fiftyone_ai_search.query import topk, walk
    from fiftyone_ai_search.index import indexes
    from fiftyone_ai_search.index import state as st

    n = args.samples
    if args.threads:
        import sklearn.cluster  # noqa: F401 (loaded before the limit is set)
        import sklearn.neighbors  # noqa: F401
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(limits=args.threads)  # in force until exit
    model, pretrained, brain_clip, brain_pretrained = model_choice(args)
    print(f"{n:,} samples, model {args.model}, {args.repeat} runs per "
          f"measurement (median), threads {args.threads or 'default'}, cpus "
          f"{os.cpu_count()}, load average {os.getloadavg()[0]:.1f}",
          flush=True)

    t, dataset = timed_once(
        lambda: build_dataset(n, small_images(os.path.join(scratch, "images"))))
    print(f"dataset of {n:,} samples built in {t:.1f} s", flush=True)
    ids = dataset.values("id")
    dim = 64 if args.model == "tiny" else 512
    if args.world == "clip-b32":
        from bench_scale import CLIP_B32_PARAMS, ClipLike

        rng = np.random.default_rng(0)
        world = ClipLike(dim, 1000, seed=0, **CLIP_B32_PARAMS)
        vectors = world.images(world.labels(n, rng), rng)
    else:
        vectors = random_unit_vectors(n, dim)
    t, clip = timed_once(
        lambda: fill_index(dataset, ids, vectors, model, pretrained))
    print(f"our index filled ({vectors.shape[1]}-d, {args.world}) in "
          f"{t:.1f} s", flush=True)
    if args.cells:
        t, assigned = timed_once(lambda: ais.maintain_index(dataset))
        cells = indexes.open_index(dataset).cells()
        print(f"maintain_index: {assigned:,} points given their cell of "
              f"{len(cells) if cells else 0} cells in {t:.1f} s", flush=True)
        # what the audit set: the searches' cost follows its probe depths
        rule = cells.rule if cells else None
        if rule:
            print(f"  audit: estimates {rule['estimates']}, probe depths "
                  f"{rule.get('depths')}", flush=True)

    brain = "brain" not in skip
    results = None
    if brain:
        bmodel = brain_model(brain_clip, brain_pretrained)
        t, results = timed_once(lambda: fob.compute_similarity(
            dataset, embeddings=vectors, backend="sklearn", brain_key="bench",
            model=bmodel))
        print(f"Brain sklearn index built in {t:.1f} s", flush=True)
        # same model, same query vector: the two must agree
        q = clip.encode_text(["a check of both sides"])[0]
        qb = bmodel.embed_prompt("a check of both sides")
        qb = qb / np.linalg.norm(qb)
        assert float(q @ qb) > 0.999, "the two model wrappers disagree"

    table = Table()
    half = dataset.match(F("half") == True)  # noqa: E712

    def compare(label, ours_fn, brain_fn, note=""):
        if brain:
            table.add(label, *paired(ours_fn, brain_fn, args.repeat), note=note)
        else:
            table.add(label, median_s(ours_fn, args.repeat), note=note)
    doc = st.load(dataset)  # the typed state open_index reads

    def ours_prompt(samples, prompt):
        name = ais.perform_ai_search(samples, prompt=prompt, limit=LIMIT)
        return ais.get_collection(dataset, name).values("id")

    def brain_query(samples, query):
        return samples.sort_by_similarity(query, k=LIMIT,
                                          brain_key="bench").values("id")

    def check_same(ours_ids, brain_ids, what):
        if brain and ours_ids != brain_ids:
            common = len(set(ours_ids) & set(brain_ids))
            print(f"  !! {what}: results differ ({common} of {LIMIT} shared)")

    # cold: the first call of each (model loads, index opens, Brain loads)
    t_ours, got = timed_once(lambda: ours_prompt(dataset, "a cold start"))
    t_brain, want = (timed_once(lambda: brain_query(dataset, "a cold start"))
                     if brain else (None, None))
    table.add("(a) prompt, first call in the process", t_ours, t_brain,
              "models loaded by setup; ours opens the index")
    check_same(got, want, "prompt")

    print("(a) prompt search, whole dataset", flush=True)
    compare("(a) prompt, new prompt each run",
            lambda i: ours_prompt(dataset, f"a photo of thing {i}"),
            lambda i: brain_query(dataset, f"a photo of thing {i}"))
    ours_rep = median_s(lambda i: ours_prompt(dataset, "a photo of thing 0"),
                        args.repeat)
    table.add("(a) prompt, same prompt again (our text cache)", ours_rep,
              None, "Brain has no prompt cache: compare with the row above")

    qvecs = [clip.encode_text([f"vector {i}"])[0] for i in range(args.repeat)]

    def ours_vector(i):
        store = indexes.open_index(dataset, doc=doc)
        got_ids, scores = topk.nearest(store, qvecs[i], LIMIT)
        colls.write_collection(dataset, colls.TEMPORARY_COLLECTION, got_ids,
                               scores)
        return ais.get_collection(dataset, colls.TEMPORARY_COLLECTION).values("id")

    if brain:
        check_same(ours_vector(0), brain_query(dataset, qvecs[0]), "vector")
    compare("(a) query vector given (no encoding)", ours_vector,
            lambda i: brain_query(dataset, qvecs[i]),
            "ours: topk.nearest + collection saved (internal API)")

    print("(b) image search by sample id", flush=True)
    rng = np.random.default_rng(1)
    refs = [ids[j] for j in rng.choice(n, size=args.repeat, replace=False)]

    def ours_image(i):
        name = ais.perform_ai_search(dataset, image_id=refs[i], limit=LIMIT)
        return ais.get_collection(dataset, name).values("id")

    if brain:
        check_same(ours_image(0), brain_query(dataset, refs[0]), "image")
    compare("(b) image search by a sample id", ours_image,
            lambda i: brain_query(dataset, refs[i]))

    print("(c) prompt search within half the dataset", flush=True)
    if brain:
        check_same(ours_prompt(half, "half check"),
                   brain_query(half, "half check"), "half view")
    compare(f"(c) prompt, view of {n // 2:,} samples",
            lambda i: ours_prompt(half, f"a half photo {i}"),
            lambda i: brain_query(half, f"a half photo {i}"))
    t_scope = median_s(lambda i: half.values("id"), args.repeat)
    table.add("(c) of which: the view's ids (values('id'))", t_scope, None,
              "paid by both sides")

    if "diverse" not in skip:
        print("(d) diverse search", flush=True)
        for label, kwargs in (
            ("centroids, kmeans, 10 clusters",
             dict(method="centroids", clustering_method="kmeans",
                  num_clusters=10)),
            ("centroids, kmeans, 100 clusters",
             dict(method="centroids", clustering_method="kmeans",
                  num_clusters=100)),
            ("random, kmeans (default clusters)",
             dict(method="random", clustering_method="kmeans")),
            ("centroids, dbscan", dict(method="centroids",
                                       clustering_method="dbscan")),
        ):
            runs = []
            for i in range(args.diverse_repeat):
                t, name = timed_once(lambda: ais.perform_ai_search(
                    dataset, limit=LIMIT, **kwargs))
                runs.append(t)
                picked = ais.get_collection_scores(dataset, name)
                if i == 0:
                    first = picked
                elif picked != first:
                    print(f"  !! diverse {label}: not reproducible")
            table.add(f"(d) diverse {label}", statistics.median(runs), None,
                      f"{len(first)} picked")
            if label.endswith("100 clusters"):
                near_picks = first

        if args.cells:
            # the centre queries of a diverse search probe fewer cells than
            # a prompt's (they lie among the images): what that saves, and
            # whether it changes the picks
            from fiftyone_ai_search.store import cells as cl

            saved = cl.NEAR_PROBE_SHARE, cl.MIN_NEAR_PROBED
            cl.NEAR_PROBE_SHARE, cl.MIN_NEAR_PROBED = (cl.PROBE_SHARE,
                                                       cl.MIN_PROBED)
            try:
                runs = []
                for i in range(args.diverse_repeat):
                    t, name = timed_once(lambda: ais.perform_ai_search(
                        dataset, limit=LIMIT, method="centroids",
                        clustering_method="kmeans", num_clusters=100))
                    runs.append(t)
            finally:
                cl.NEAR_PROBE_SHARE, cl.MIN_NEAR_PROBED = saved
            picked = ais.get_collection_scores(dataset, name)
            same = len({i for i, _ in picked} & {i for i, _ in near_picks})
            table.add("(d) diverse centroids, kmeans, 100 clusters, centre "
                      "queries probing as many cells as a prompt",
                      statistics.median(runs), None,
                      f"{same} of {len(picked)} picks the same")

        # what reading every vector of the scope costs (the result is the
        # same; with cells, only within the probed cells)
        store = indexes.open_index(dataset, doc=doc)
        if n <= 200_000 and not args.cells:
            t, (all_ids, _) = timed_once(lambda: walk.diverse_from_index(
                store, LIMIT, method="centroids", num_clusters=10,
                read_all=True))
            lazy_ids, _ = walk.diverse_from_index(
                store, LIMIT, method="centroids", num_clusters=10)
            table.add("(d) diverse centroids, kmeans, 10 clusters, every "
                      "vector read", t, None,
                      "same picks" if all_ids == lazy_ids else "!! other picks")

    if args.beside_writer:
        print("alone and beside a writer", flush=True)
        beside_writer(args, dataset, half,
                      indexes.open_index(dataset, doc=doc), ids, vectors,
                      scratch)

    if "scopes" not in skip:
        print("(e) in-Qdrant id filter vs over-fetch", flush=True)
        store = indexes.open_index(dataset, doc=doc)
        with store.session():  # only the queries are measured
            total = store.count()
            for size in [int(s) for s in args.scopes.split(",") if s]:
                scope = [ids[j] for j in np.sort(
                    np.random.default_rng(size).choice(n, size=min(size, n),
                                                       replace=False))]

                def id_filter(i):
                    return store.query(qvecs[i], LIMIT, sample_ids=scope)

                def over_fetch(i):
                    return topk._over_fetch(store, qvecs[i], LIMIT, scope,
                                              None, total)

                assert id_filter(0) == over_fetch(0)
                t_f, t_o = paired(id_filter, over_fetch, args.repeat)
                chosen = ("id filter" if topk._use_id_filter(size, LIMIT, total)
                          else "over-fetch")
                table.add(f"(e) scope {size:,}: id filter in Qdrant", t_f, None)
                table.add(f"(e) scope {size:,}: over-fetch + filter here", t_o,
                          None, f"search chooses: {chosen}")

    if "store" not in skip:
        print("store costs", flush=True)
        store = indexes.open_index(dataset, doc=doc)
        store.close()  # nothing kept open: each run below opens the shard

        def open_count(i):
            store.count()
            store.close()

        table.add("store: open + count + close", median_s(open_count,
                                                          args.repeat), None)
        t = median_s(lambda i: store.get_vectors(), args.diverse_repeat)
        table.add(f"store: get_vectors() of all {n:,}", t, None)
        store.close()

    if "refresh" not in skip:
        # last: it adds samples to the dataset
        print("refresher passes", flush=True)
        import fiftyone as fo
        from fiftyone_ai_search.scheduler import refresh_all

        def idle_pass(i):
            report = refresh_all([dataset.name])
            assert report.unchanged == [dataset.name], report

        table.add(f"(f) refresher pass, nothing changed ({n:,} samples)",
                  median_s(idle_pass, args.repeat), None,
                  "no model loaded; the index counted")

        images = small_images(os.path.join(scratch, "images"))

        def pass_with_new(i):
            dataset.add_samples(
                [fo.Sample(filepath=images[k % len(images)]) for k in
                 range(10)], progress=False)
            report = refresh_all([dataset.name])
            assert report.synced[dataset.name].added == 10, report

        table.add(f"(f) refresher pass, 10 new samples ({n:,} samples)",
                  median_s(pass_with_new, args.diverse_repeat), None,
                  "finds them, embeds 10, commits")

    print()
    print(f"{n:,} samples x {vectors.shape[1]}-d, limit {LIMIT}, medians of "
          f"{args.repeat} runs ({args.diverse_repeat} for diverse and "
          f"get_vectors), threads {args.threads or 'default'}; ours/Brain < 1 "
          "means ours is faster")
    print(table.render())


if __name__ == "__main__":
    main()
