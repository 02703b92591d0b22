"""Embedding throughput: our sync against the model alone and FiftyOne Brain.

One run measures, on the same synthetic 1280x960 JPEGs (photo-like: smooth
colour, shapes and sensor-like noise, ~330 KB each, written once to
``--dir``), for each of two models:

- ``vit``: open_clip ``ViT-B-32`` with random weights, saved once to a
  ``.safetensors`` file in ``--dir`` and then loaded by everyone as
  ``pretrained=<file>`` (speed does not depend on the values): compute-bound
  on a CPU;
- ``tiny``: the bundled tiny CLIP (``local-dir:`` checkpoint, 32 px input):
  decode-bound.

Rows, all in images per second:

1. model only: ``encode_images`` on ready-made tensors, batch 32;
2. ours: ``ais.calculate_embeddings(dataset, force=True, wait=True)`` on a
   FiftyOne dataset of the files, with the default settings: everything a
   user waits for (reading the dataset, decoding, the model, writing the
   Qdrant Edge index). *Cold*: no decoding worker is up, they start during
   the call (the model is loaded). *Warm*: the workers left by an earlier
   call are up (they stay for :data:`fiftyone_ai_search.embedding.pool.IDLE_SECONDS`);
3. FiftyOne Brain: ``fob.compute_similarity(dataset, model=<zoo
   "open-clip-torch" with the same open_clip model and weights>,
   backend="sklearn", brain_key=...)`` with its fastest ``batch_size`` x
   ``num_workers`` of a small grid (on ``--grid-images`` images). Its
   DataLoader forks its workers in every call.

Diagnostics: decoding rates in one process; ``embed_images`` alone (no
dataset, no index), which separates the pipeline from the sync around it;
the first call of each in the process.

Each of ``--repeat`` rounds takes the rows back to back, the model alone
before and after ours and Brain. The table gives each row's median and best
over the rounds; the ratios are medians of the per-round ratios, so that a
shared, busy machine slows what is compared alike. A round whose load moved
(the model alone ran at another speed before and after it) is marked
``[unstable]``: the median keeps one such round from moving the ratios.
Example (~12 min on 2 cores)::

    python bench/bench_embedding.py --images 256 --repeat 6
"""

import argparse
import logging
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _env  # noqa: E402  (must run before fiftyone is imported)

SCRATCH = _env.setup()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import fiftyone as fo  # noqa: E402
import fiftyone.brain as fob  # noqa: E402
import fiftyone.zoo as foz  # noqa: E402

import fiftyone_ai_search as ais  # noqa: E402
from fiftyone_ai_search.embedding import decode, pool  # noqa: E402
from fiftyone_ai_search.demo import tiny_clip_model_name  # noqa: E402
from fiftyone_ai_search.embedding.decode import DRAFT_FACTOR  # noqa: E402
from fiftyone_ai_search.embedding.pipeline import embed_images  # noqa: E402
from fiftyone_ai_search.embedding.images import load_image  # noqa: E402
from fiftyone_ai_search.embedding.model import load_model, resolve_model  # noqa: E402

BRAIN_KEY = "bench"

#: a round counts as steady if the model alone ran within this fraction
#: before and after the rest of it
STABLE = 0.10

# the table is the output: no progress bars, no library notices
fo.config.show_progress_bars = False
for _name in ("", "fiftyone", "eta"):
    logging.getLogger(_name).setLevel(logging.ERROR)


# -- inputs ------------------------------------------------------------------


def make_images(root, count, size=(1280, 960)):
    """Writes ``count`` photo-like JPEGs (smooth colour, shapes, noise)."""
    os.makedirs(root, exist_ok=True)
    paths = []
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(count):
        path = os.path.join(root, f"{i:05d}.jpg")
        paths.append(path)
        if os.path.exists(path):
            continue

        rng = np.random.default_rng(i)
        phase = rng.uniform(0, 6, 3)
        waves = [np.sin(x / width * 5 + p + y / height * 3) for p in phase]
        base = 127 + 90 * np.stack(waves, -1)
        # noise keeps JPEG from compressing them absurdly well (~330 KB)
        base += rng.normal(0, 10, base.shape)
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x0 = rng.integers(0, width - 200)
            y0 = rng.integers(0, height - 200)
            w, h = rng.integers(30, 300, 2)
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=color)

        image.save(path, quality=90)

    return paths


def vit_weights(root):
    """Saves random ViT-B-32 weights once; returns the file's path."""
    path = os.path.join(root, "vit-b-32-random.safetensors")
    if not os.path.exists(path):
        import open_clip
        from safetensors.torch import save_file

        torch.manual_seed(0)
        module, _, _ = open_clip.create_model_and_transforms(
            "ViT-B-32", pretrained=None
        )
        state = {k: v.contiguous() for k, v in module.state_dict().items()}
        save_file(state, path + ".tmp")
        os.replace(path + ".tmp", path)

    return path


# -- measurements -------------------------------------------------------------


def rate(count, seconds):
    return count / seconds if seconds > 0 else float("inf")


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def decode_rates(model, paths):
    draft = DRAFT_FACTOR * model.image_size
    # what the pipeline runs per batch (the transform's torch-free recipe
    # where it has one), in this process
    decoder = decode.Decoder.for_model(model)
    results = {}
    for name, work in (
        ("decode full", lambda p: load_image(p)),
        ("decode draft", lambda p: load_image(p, draft_size=draft)),
        ("decode draft + preprocess", lambda p: decoder.decode([(p, p)])),
    ):
        seconds = timed(lambda: [work(p) for p in paths])
        results[name] = rate(len(paths), seconds)

    return results


def model_rate(model, batch, count, min_seconds=2.0):
    """``encode_images`` on ready-made tensors: ``count`` images, and more
    batches until ``min_seconds`` passed (a small model takes milliseconds)."""
    n = len(batch)
    done = 0
    start = time.perf_counter()
    while done < count or time.perf_counter() - start < min_seconds:
        size = min(n, count - done) if done < count else n
        model.encode_images(batch[:size])
        done += size

    return rate(done, time.perf_counter() - start)


def pipeline_rate(model, paths):
    """:func:`embed_images` alone, with the default settings."""
    items = [(p, p) for p in paths]
    embedded = 0

    def run():
        nonlocal embedded
        for batch in embed_images(model, items):
            assert not batch.failures, batch.failures
            embedded += len(batch.keys)

    seconds = timed(run)
    return rate(embedded, seconds)


def ours_rate(dataset):
    reports = []
    seconds = timed(
        lambda: reports.append(
            ais.calculate_embeddings(
                dataset, force=True, wait=True, progress=False
            )
        )
    )
    (report,) = reports
    assert report.added == len(dataset) and not report.failed, report
    return rate(report.added, seconds)


def brain_rate(samples, brain_model, batch_size, num_workers):
    dataset = samples._dataset
    if BRAIN_KEY in dataset.list_brain_runs():
        dataset.delete_brain_run(BRAIN_KEY)

    seconds = timed(
        lambda: fob.compute_similarity(
            samples,
            model=brain_model,
            backend="sklearn",
            brain_key=BRAIN_KEY,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=False,
        )
    )
    return rate(len(samples), seconds)


def wait_for_workers(timeout=60):
    """Waits until the decoding workers left by the last run are ready
    (started, their transform imported), so that the next run is warm."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = list(pool._SPARES._workers)
        if workers and all(w.ready for w in workers):
            return
        time.sleep(0.1)


def load_avg():
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


# -- one model ------------------------------------------------------------------


def bench_model(label, name, pretrained, paths, args):
    """Measures one model; returns what :func:`print_table` shows."""
    spec = resolve_model(name, pretrained)
    model = load_model(spec, "cpu")
    print(
        f"\n## {label}: {spec.name}"
        + (f" pretrained={pretrained}" if pretrained else "")
        + f", input {model.image_size} px, dim {model.dim}, "
        f"torch threads {torch.get_num_threads()}, load {load_avg()}",
        flush=True,
    )

    for what, value in decode_rates(model, paths[:32]).items():
        print(f"  {what:>28}: {value:7.1f} img/s (one process)")

    dataset = fo.Dataset(f"bench-{label}", overwrite=True)
    dataset.add_samples([fo.Sample(filepath=p) for p in paths])
    ais.enable_embeddings(
        dataset, model=name, pretrained=pretrained, compute=False
    )
    # what a Brain user writes; the zoo entry wraps open_clip
    # (fiftyone.utils.open_clip.TorchOpenClipModel)
    brain_model = foz.load_zoo_model(
        "open-clip-torch", clip_model=name, pretrained=pretrained
    )

    draft = DRAFT_FACTOR * model.image_size
    batch = torch.stack(
        [model.preprocess(load_image(p, draft_size=draft)) for p in paths[:32]]
    )
    model.encode_images(batch)  # warm-up, as ours and Brain get one too

    # The first call of each in this process. Ours: no decoding worker up
    # (another model's warm workers would be reused: stop them). Brain: its
    # model's first forward
    pool._SPARES.stop_all()
    first_ours = ours_rate(dataset)
    first_brain = brain_rate(dataset, brain_model, 32, 1)
    print(f"  first call: ours {first_ours:.1f}, Brain (batch 32, workers 1) "
          f"{first_brain:.1f} img/s (load {load_avg()})", flush=True)

    # Brain's best settings, on a subset
    subset = dataset.limit(args.grid_images)
    grid = {}
    for bs in args.brain_batch_sizes:
        for nw in args.brain_workers:
            grid[bs, nw] = brain_rate(subset, brain_model, bs, nw)
            print(f"  Brain grid batch {bs:>3} workers {nw}: "
                  f"{grid[bs, nw]:6.1f} img/s", flush=True)

    best = max(grid, key=grid.get)

    rounds = []
    for r in range(args.repeat):
        row = {}
        pool._SPARES.stop_all()
        row["cold"] = ours_rate(dataset)  # its workers start in the call
        wait_for_workers()
        # the model alone before and after ours and Brain: their ratios to
        # it use the mean, which cancels a load that drifts
        before = model_rate(model, batch, len(paths))
        row["warm"] = ours_rate(dataset)
        row["brain"] = brain_rate(dataset, brain_model, *best)
        after = model_rate(model, batch, len(paths))
        row["model"] = (before + after) / 2
        # a load that changed within the round shows as a gap between them
        row["stable"] = abs(before - after) <= STABLE * row["model"]
        row["pipeline"] = pipeline_rate(model, paths)
        rounds.append(row)
        print(
            f"  round {r + 1}: model {before:.1f} / {after:.1f}, ours cold "
            f"{row['cold']:.1f}, ours warm {row['warm']:.1f}, Brain "
            f"{row['brain']:.1f}, embed_images {row['pipeline']:.1f} img/s; "
            f"warm/model {row['warm'] / row['model']:.2f}, warm/Brain "
            f"{row['warm'] / row['brain']:.2f} (load {load_avg()})"
            + ("" if row["stable"] else " [unstable]"),
            flush=True,
        )

    rows = {
        k: [r[k] for r in rounds]
        for k in ("model", "cold", "warm", "brain", "pipeline")
    }
    settings = ais.get_settings()
    ours = f"batch {settings.batch_size}, workers {settings.num_workers}"
    return {
        "label": label,
        "rows": [
            ("1. model only (ready tensors, batch 32)", rows["model"]),
            (f"2. ours, cold: workers start in the call ({ours})",
             rows["cold"]),
            (f"2. ours, warm: workers up ({ours})", rows["warm"]),
            (f"3. Brain, best of grid (batch {best[0]}, workers {best[1]})",
             rows["brain"]),
            ("diag: embed_images alone, warm (no dataset, no index)",
             rows["pipeline"]),
            ("diag: ours, first call of the process", [first_ours]),
            ("diag: Brain, first call of the process (batch 32, workers 1)",
             [first_brain]),
        ],
        "steady": f"{sum(r['stable'] for r in rounds)} of {len(rounds)}",
        "ratios": {
            "ours warm / model only": [r["warm"] / r["model"] for r in rounds],
            "ours warm / Brain": [r["warm"] / r["brain"] for r in rounds],
            "ours cold / Brain": [r["cold"] / r["brain"] for r in rounds],
            "Brain / model only": [r["brain"] / r["model"] for r in rounds],
        },
    }


def print_table(results, args):
    print(
        f"\n# {args.images} JPEGs of 1280x960 (~330 KB), {os.cpu_count()} "
        f"cores, torch threads {torch.get_num_threads()}, {args.repeat} "
        f"rounds; load average now {load_avg()}"
    )
    print()
    print("| model | row | img/s, median | best |")
    print("|---|---|---:|---:|")
    for res in results:
        for row, values in res["rows"]:
            print(f"| {res['label']} | {row} | {statistics.median(values):.1f} "
                  f"| {max(values):.1f} |")

    print()
    print("Ratios: median of the per-round ratios (each round's rows run back "
          "to back); each round's in brackets. Steady rounds: the model alone "
          f"ran within {STABLE:.0%} before and after the round")
    print()
    names = list(results[0]["ratios"])
    print("| model | steady rounds | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for res in results:
        cells = [
            f"{statistics.median(values):.2f} "
            f"({' '.join(f'{v:.2f}' for v in values)})"
            for values in res["ratios"].values()
        ]
        print(f"| {res['label']} | {res['steady']} | " + " | ".join(cells)
              + " |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=6)
    parser.add_argument("--models", default="vit,tiny",
                        help="comma-separated: vit, tiny")
    parser.add_argument("--grid-images", type=int, default=128)
    parser.add_argument("--brain-batch-sizes", default="16,32,64")
    parser.add_argument("--brain-workers", default="0,1,2")
    parser.add_argument("--dir", default="/tmp/ais-bench-1280x960")
    args = parser.parse_args(argv)
    args.brain_batch_sizes = [int(v) for v in args.brain_batch_sizes.split(",")]
    args.brain_workers = [int(v) for v in args.brain_workers.split(",")]

    paths = make_images(args.dir, args.images)
    print(f"{len(paths)} images in {args.dir}, "
          f"{np.mean([os.path.getsize(p) for p in paths]) / 1024:.0f} KB "
          f"on average; load average {load_avg()}")

    models = {
        "vit": ("ViT-B-32", vit_weights(args.dir)),
        "tiny": (tiny_clip_model_name(), None),
    }
    results = []
    for label in args.models.split(","):
        name, pretrained = models[label]
        results.append(bench_model(label, name, pretrained, paths, args))

    print_table(results, args)


if __name__ == "__main__":
    sys.exit(main())
