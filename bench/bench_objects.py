"""Object embedding throughput end to end: our object index sync against our
image sync on the same files, and against FiftyOne Brain's patch
embeddings, on the same dataset and model weights, in the same run.

For each configuration (a model x an image size), one run builds a scenes
dataset (:func:`fiftyone_ai_search.demo.shapes.make_scenes_dataset`:
``--images`` JPEGs of ``--image-size`` px squares, 2-4 boxed shapes each in
the ``Detections`` field ``"ground_truth"``) and times, in each of
``--repeat`` rounds, back to back:

- Brain: ``fob.compute_similarity(dataset, patches_field="ground_truth",
  model=<zoo "open-clip-torch" of the same weights>,
  backend="sklearn", brain_key=...)`` with its default crops
  (``alpha=None, force_square=False``) and its fastest ``num_workers`` of
  ``--brain-workers`` (measured once, on ``--grid-images`` images);
- ours, images: ``ais.calculate_embeddings(dataset, force=True, wait=True)``
  of the image index;
- ours, objects: the same with ``patches_field="ground_truth"``, default
  crops (``margin=0.5, square=True``);
- ours, objects like Brain: the same after ``enable_embeddings(...,
  margin=0, square=False)``, Brain's crops (which rebuilds the index);
- the model alone: ``encode_images`` on ready-made 32-tensor batches, the
  ceiling of any pipeline.

Everything is wall time around the call a user makes, index writes and
Brain's sklearn index included. Our decoding workers are warm (a warm-up
sync on a small dataset starts them); Brain's DataLoader forks its workers
in every call. Medians over the rounds are reported, and the ratios are
medians of the per-round ratios: the machine is shared.

Agreement: for every object, the cosine between the vector our object index
stores for it (by label id) and Brain's patch embedding of it (its sklearn
results' ``embeddings`` / ``label_ids``). With Brain's crops it should be ~1
(the two preprocess alike up to resampling); with ours it is lower by
design: other pixels.

Examples (``--threads 1``, the default, as ``bench_search.py`` and
``bench_brain.py``)::

    python bench/bench_objects.py --model tiny --images 1000
    python bench/bench_objects.py --model vit-b-32 --images 300
    python bench/bench_objects.py --model vit-b-32 --images 200 \\
        --image-size 256,640 --repeat 3
"""

import argparse
import logging
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _env  # noqa: E402
import bench_brain as bb  # noqa: E402  (imports nothing of fiftyone)
import bench_search as bs  # noqa: E402  (imports nothing of fiftyone)

FIELD = "ground_truth"
BRAIN_KEY = "brain_patches"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("tiny", "vit-b-32"), default="tiny",
                   help="the bundled tiny CLIP (32 px input, 64-d) or a "
                        "random-weight ViT-B-32 (224 px, 512-d): the "
                        "realistic cost")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--image-size", default="256",
                   help="comma-separated sides of the square images, in px "
                        "(one configuration each)")
    p.add_argument("--shapes-per-image", default="2,4",
                   help="objects an image: N, or MIN,MAX")
    p.add_argument("--repeat", type=int, default=2,
                   help="rounds (medians reported)")
    p.add_argument("--brain-workers", default="0,1,2",
                   help="Brain num_workers to try (fastest used)")
    p.add_argument("--grid-images", type=int, default=48,
                   help="images of the Brain num_workers trial")
    _env.add_model_args(p)
    return p.parse_args(argv)


def load_avg():
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def timed(fn):
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


# -- the two sides -------------------------------------------------------------


def enable_objects(dataset, model, pretrained, margin, square):
    import fiftyone_ai_search as ais

    ais.enable_embeddings(dataset, model=model, pretrained=pretrained,
                          patches_field=FIELD, compute=False, margin=margin,
                          square=square)


def ours(dataset, patches_field=None):
    """Seconds of a forced sync (a full rebuild) of the image index, or of
    the object index of ``patches_field``; checks its count."""
    import fiftyone_ai_search as ais

    seconds, report = timed(lambda: ais.calculate_embeddings(
        dataset, force=True, wait=True, progress=False,
        patches_field=patches_field))
    want = (len(dataset) if patches_field is None
            else dataset.count(f"{patches_field}.detections"))
    assert report.added == want and not report.failed, report
    return seconds


def brain(samples, model, num_workers):
    import fiftyone.brain as fob

    dataset = samples._dataset
    if BRAIN_KEY in dataset.list_brain_runs():
        dataset.delete_brain_run(BRAIN_KEY)
    seconds, _ = timed(lambda: fob.compute_similarity(
        samples, patches_field=FIELD, model=model, backend="sklearn",
        brain_key=BRAIN_KEY, num_workers=num_workers, progress=False))
    return seconds


def model_rate(clip, batch, count):
    """Images (crops) per second of ``encode_images`` alone, ``count`` of
    them in batches of ``len(batch)``."""
    done = 0
    t = time.perf_counter()
    while done < count:
        size = min(len(batch), count - done)
        clip.encode_images(batch[:size])
        done += size
    return done / (time.perf_counter() - t)


def agreement(dataset):
    """Cosines between our object index's vectors and Brain's patch
    embeddings, label by label: ``(mean, min, count)``."""
    import numpy as np

    from fiftyone_ai_search.index import indexes
    from fiftyone_ai_search.index import state as st
    from fiftyone_ai_search.index.targets import Objects

    results = dataset.load_brain_results(BRAIN_KEY)
    theirs = np.asarray(results.embeddings, dtype=np.float64)
    theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
    row = {label_id: i for i, label_id in enumerate(results.label_ids)}
    store = indexes.open_ref(st.get(Objects(dataset, FIELD))["index"])
    try:
        ids, vectors = store.get_vectors(list(row))
    finally:
        store.close()
    assert len(ids) == len(row), (len(ids), len(row))
    cos = np.einsum("ij,ij->i", vectors.astype(np.float64),
                    theirs[[row[i] for i in ids]])
    return float(cos.mean()), float(cos.min()), len(cos)


# -- one configuration -----------------------------------------------------------


def bench_config(args, size, scratch, model, pretrained, brain_model, clip,
                 shapes_per_image):
    import torch

    import fiftyone_ai_search as ais
    from fiftyone_ai_search.demo import shapes
    from fiftyone_ai_search.embedding.decode import DRAFT_FACTOR
    from fiftyone_ai_search.embedding.images import load_image

    name = f"bench-objects-{size}"
    t, dataset = timed(lambda: shapes.make_scenes_dataset(
        name, args.images, images_dir=os.path.join(scratch, name),
        image_size=size, shapes_per_image=shapes_per_image, overwrite=True))
    n_images = len(dataset)
    n_objects = dataset.count(f"{FIELD}.detections")
    print(f"\n## {size}x{size} px: {n_images} images, {n_objects} objects "
          f"({n_objects / n_images:.2f} an image), built in {t:.1f} s; "
          f"load {load_avg()}", flush=True)
    ais.enable_embeddings(dataset, model=model, pretrained=pretrained,
                          compute=False)

    # ready-made tensors of crops (what the model alone gets)
    batch = []
    for sample in dataset.limit(16):
        image = load_image(sample.filepath,
                           draft_size=DRAFT_FACTOR * clip.image_size)
        w, h = image.size
        for det in sample[FIELD].detections:
            x, y, bw, bh = det.bounding_box
            batch.append(clip.preprocess(image.crop(
                (int(x * w), int(y * h), int((x + bw) * w),
                 int((y + bh) * h)))))
    batch = torch.stack(batch[:32])

    # Brain's fastest num_workers, on a subset (also its warm-up)
    subset = dataset.limit(args.grid_images)
    subset_objects = subset.count(f"{FIELD}.detections")
    grid = {}
    for workers in args.brain_workers:
        grid[workers] = subset_objects / brain(subset, brain_model, workers)
        print(f"  Brain num_workers {workers}: {grid[workers]:.1f} obj/s "
              f"({args.grid_images} images)", flush=True)
    workers = max(grid, key=grid.get)

    rounds = []
    cos_brain = cos_ours = None
    for r in range(args.repeat):
        row = {"load_before": os.getloadavg()[0]}
        row["brain"] = brain(dataset, brain_model, workers)
        row["model_before"] = model_rate(clip, batch, n_objects // 2)
        row["images"] = ours(dataset)
        enable_objects(dataset, model, pretrained, margin=None, square=None)
        row["objects"] = ours(dataset, FIELD)
        if r == 0:
            cos_ours = agreement(dataset)
        enable_objects(dataset, model, pretrained, margin=0, square=False)
        row["objects_tight"] = ours(dataset, FIELD)
        if r == 0:
            cos_brain = agreement(dataset)
        row["model_after"] = model_rate(clip, batch, n_objects // 2)
        rounds.append(row)
        print(f"  round {r + 1}: Brain {row['brain']:.1f} s "
              f"({n_objects / row['brain']:.1f} obj/s), ours images "
              f"{row['images']:.1f} s ({n_images / row['images']:.1f} img/s), "
              f"objects {row['objects']:.1f} s "
              f"({n_objects / row['objects']:.1f} obj/s), objects like Brain "
              f"{row['objects_tight']:.1f} s "
              f"({n_objects / row['objects_tight']:.1f} obj/s); model alone "
              f"{row['model_before']:.0f} / {row['model_after']:.0f} obj/s; "
              f"load {row['load_before']:.1f} -> {load_avg()}", flush=True)
        if r == 0:
            print(f"  agreement with Brain's patch embeddings (cosine, "
                  f"{cos_brain[2]} objects): Brain's crops mean "
                  f"{cos_brain[0]:.4f} min {cos_brain[1]:.4f}; our default "
                  f"crops mean {cos_ours[0]:.4f} min {cos_ours[1]:.4f}",
                  flush=True)

    def med(key):
        return statistics.median(r[key] for r in rounds)

    def ratio(a, b):
        return statistics.median(r[a] / r[b] for r in rounds)

    settings = ais.get_settings()
    ais.disable_embeddings(dataset, patches_field=FIELD)
    ais.disable_embeddings(dataset)
    dataset.delete()
    return {
        "size": size, "images": n_images, "objects": n_objects,
        "brain_workers": workers,
        "ours_workers": settings.num_workers, "ours_batch": settings.batch_size,
        "brain": med("brain"), "img": med("images"), "obj": med("objects"),
        "tight": med("objects_tight"),
        "model": statistics.median((r["model_before"] + r["model_after"]) / 2
                                   for r in rounds),
        "obj_brain": ratio("objects", "brain"),
        "tight_brain": ratio("objects_tight", "brain"),
        "obj_img": ratio("objects", "images"),
        "cos_brain": cos_brain, "cos_ours": cos_ours,
        "ratios": [(r["objects"] / r["brain"], r["objects_tight"] / r["brain"])
                   for r in rounds],
    }


def print_table(args, results):
    print()
    print(f"# model {args.model}, {args.repeat} rounds (medians), threads "
          f"{args.threads or 'default'}, {os.cpu_count()} cores, load "
          f"average now {load_avg()}; ratios are times (< 1: ours faster), "
          "medians of the per-round ratios")
    print()
    print("| image px | images | objects | ours images: s, img/s "
          "| ours objects: s, obj/s | ours objects, Brain's crops: s, obj/s "
          "| Brain patches: s, obj/s | model alone, obj/s "
          "| objects / images (time) | ours / Brain (time) "
          "| ours, Brain's crops / Brain (time) | cosine to Brain, Brain's "
          "crops: mean (min) | cosine to Brain, our crops: mean |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        n, m = r["images"], r["objects"]
        print(f"| {r['size']} | {n} | {m} "
              f"| {r['img']:.1f} s, {n / r['img']:.1f} "
              f"| {r['obj']:.1f} s, {m / r['obj']:.1f} "
              f"| {r['tight']:.1f} s, {m / r['tight']:.1f} "
              f"| {r['brain']:.1f} s, {m / r['brain']:.1f} "
              f"| {r['model']:.1f} "
              f"| {r['obj_img']:.2f} "
              f"| **{r['obj_brain']:.2f}** "
              f"| {r['tight_brain']:.2f} "
              f"| {r['cos_brain'][0]:.4f} ({r['cos_brain'][1]:.4f}) "
              f"| {r['cos_ours'][0]:.4f} |")
    print()
    for r in results:
        print(f"{r['size']} px: ours batch {r['ours_batch']}, decoding "
              f"workers {r['ours_workers']}; Brain num_workers "
              f"{r['brain_workers']} (fastest of {args.brain_workers}); "
              "per-round ratios ours / Brain, Brain's crops / Brain: "
              + ", ".join(f"{a:.2f} {b:.2f}" for a, b in r["ratios"]))


def main(argv=None):
    args = parse_args(argv)
    args.brain_workers = [int(v) for v in args.brain_workers.split(",")]
    sizes = [int(v) for v in args.image_size.split(",")]
    counts = [int(v) for v in args.shapes_per_image.split(",")]
    shapes_per_image = counts[0] if len(counts) == 1 else tuple(counts)
    scratch = _env.setup()

    import fiftyone as fo
    import fiftyone.zoo as foz

    import fiftyone_ai_search as ais
    from fiftyone_ai_search.embedding import pool
    from fiftyone_ai_search.demo import shapes
    from fiftyone_ai_search.embedding.model import load_model, resolve_model

    # the table is the output: no progress bars, no library notices
    fo.config.show_progress_bars = False
    for name in ("", "fiftyone", "eta"):
        logging.getLogger(name).setLevel(logging.ERROR)
    bb.limit_threads(args.threads)

    model, pretrained, brain_name, brain_pretrained = bs.model_choice(args)
    # what a Brain user writes (as bench_embedding.py): the zoo entry wraps
    # open_clip (fiftyone.utils.open_clip.TorchOpenClipModel) and exposes
    # its visual tower's embeddings
    brain_model = foz.load_zoo_model("open-clip-torch", clip_model=brain_name,
                                     pretrained=brain_pretrained)
    clip = load_model(resolve_model(model, pretrained), "cpu")
    print(f"model {args.model} ({model}, input {clip.image_size} px, "
          f"{clip.dim}-d), {args.images} images of {sizes} px, shapes an "
          f"image {shapes_per_image}, threads {args.threads or 'default'}, "
          f"cpus {os.cpu_count()}, load average {load_avg()}", flush=True)

    # warm-up: starts our decoding workers (kept for the next runs) and
    # loads what the first sync of a process loads
    warm = shapes.make_scenes_dataset(
        "bench-objects-warmup", 8, images_dir=os.path.join(scratch, "warmup"),
        overwrite=True)
    enable_objects(warm, model, pretrained, None, None)
    t = ours(warm, FIELD)
    print(f"warm-up sync (8 images) {t:.1f} s", flush=True)
    spares = pool._SPARES
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
            spares._workers and all(w.ready for w in spares._workers)):
        time.sleep(0.1)

    results = [bench_config(args, size, scratch, model, pretrained,
                            brain_model, clip, shapes_per_image)
               for size in sizes]
    ais.disable_embeddings(warm, patches_field=FIELD)
    print_table(args, results)


if __name__ == "__main__":
    main()
