"""Throughput of the embedding pipeline against the model alone.

Measures, on synthetic 1280x960 JPEGs (written once to ``--dir``):

- decoding alone in one process: full size, with ``draft``, and ``draft`` +
  open_clip's preprocessing;
- the model alone on ready-made tensors (``encode_images``);
- :func:`fiftyone_ai_search.embedder.embed_images` end to end, for each
  ``--workers`` value, with workers already warm (the cold start, which
  includes starting the workers, is reported separately).

Every figure is the best of ``--repeat`` runs, taken in turn so that a busy
machine affects them alike. Examples::

    # compute-bound: ViT-B-32 (random weights: speed does not depend on them)
    python bench/bench_embedding.py --model ViT-B-32 --images 96

    # decode-bound: the bundled tiny CLIP (32 px input)
    python bench/bench_embedding.py \\
        --model local-dir:src/fiftyone_ai_search/demo/tiny_clip --images 512
"""

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image, ImageDraw

from fiftyone_ai_search import embedder
from fiftyone_ai_search.embedder import DRAFT_FACTOR, embed_images
from fiftyone_ai_search.images import load_image
from fiftyone_ai_search.model import load_model, resolve_model


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


def rate(count, seconds):
    return count / seconds if seconds > 0 else float("inf")


def decode_rates(model, paths):
    draft = DRAFT_FACTOR * model.image_size
    # what the pipeline runs per batch, in this process
    decoder = embedder._Decoder(model.preprocess, draft_size=draft)
    results = {}
    for name, work in (
        ("decode full", lambda p: load_image(p)),
        ("decode draft", lambda p: load_image(p, draft_size=draft)),
        ("decode draft + preprocess", lambda p: decoder.decode([(p, p)])),
    ):
        start = time.perf_counter()
        for path in paths:
            work(path)
        results[name] = rate(len(paths), time.perf_counter() - start)

    return results


def model_rate(model, paths, batch_size, count):
    draft = DRAFT_FACTOR * model.image_size
    images = [load_image(p, draft_size=draft) for p in paths[:batch_size]]
    batch = torch.stack([model.preprocess(image) for image in images])
    model.encode_images(batch)  # warm-up
    done = 0
    start = time.perf_counter()
    while done < count:
        model.encode_images(batch[: min(batch_size, count - done)])
        done += min(batch_size, count - done)

    return rate(count, time.perf_counter() - start)


def pipeline_rate(model, paths, batch_size, num_workers):
    items = [(p, p) for p in paths]
    start = time.perf_counter()
    embedded = 0
    for batch in embed_images(
        model, items, batch_size=batch_size, num_workers=num_workers
    ):
        embedded += len(batch.keys)
        assert not batch.failures, batch.failures

    return rate(embedded, time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", default="/tmp/ais-bench-1280x960")
    args = parser.parse_args(argv)

    # short benchmark runs must still use workers
    embedder.MIN_ITEMS_FOR_WORKERS = 0

    paths = make_images(args.dir, args.images)
    model = load_model(resolve_model(args.model, args.pretrained), "cpu")
    workers = [int(w) for w in args.workers.split(",")]
    print(
        f"model {model.spec.identity}, input {model.image_size} px, "
        f"{args.images} images of 1280x960, batch {args.batch_size}, "
        f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}"
    )

    for name, value in decode_rates(model, paths[:48]).items():
        print(f"{name:>32}: {value:7.1f} img/s (one process)")

    cold = {}
    for w in workers:
        start = time.perf_counter()
        cold[w] = pipeline_rate(model, paths, args.batch_size, w)
        print(f"{f'pipeline cold, workers={w}':>32}: {cold[w]:7.1f} img/s "
              f"({time.perf_counter() - start:.1f} s, incl. worker start)")

    best = {"model": 0.0, **{w: 0.0 for w in workers}}
    for _ in range(args.repeat):
        best["model"] = max(
            best["model"],
            model_rate(model, paths, args.batch_size, args.images),
        )
        for w in workers:
            best[w] = max(
                best[w], pipeline_rate(model, paths, args.batch_size, w)
            )

    print(f"{'model only (ready tensors)':>32}: {best['model']:7.1f} img/s")
    for w in workers:
        print(
            f"{f'pipeline warm, workers={w}':>32}: {best[w]:7.1f} img/s "
            f"= {best[w] / best['model']:.2f} x model only"
        )


if __name__ == "__main__":
    sys.exit(main())
