"""Measures how well a CLIP model retrieves images of the shapes world.

On a held-out seed (never used in training), for images rendered in memory
and for images written as files (128 px JPEG by default, what the demo
dataset uses), it prints mean precision@10 of:

-   text -> image, colour+shape prompts ("a photo of a red circle"),
-   text -> image, every colour+shape caption template,
-   text -> image, colour-only prompts ("something red"),
-   text -> image, shape-only prompts ("a photo of a circle"),
-   image -> image, same colour+shape class (the query itself excluded),

and the mean cosine of matching and best non-matching text/image pairs.

Usage::

    python tools/eval_tiny_clip.py                  # the bundled model
    python tools/eval_tiny_clip.py --model local-dir:/path --image-size 224
"""

import argparse
import importlib.util
import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import open_clip

_HERE = os.path.dirname(os.path.abspath(__file__))
_SHAPES_PY = os.path.join(
    os.path.dirname(_HERE), "src", "fiftyone_ai_search", "demo", "shapes.py"
)


def _load_shapes():
    # by path, not through the package: the tools need neither an installed
    # package nor FiftyOne's database, which the package's __init__ may pull in
    spec = importlib.util.spec_from_file_location("_shapes_world", _SHAPES_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


shapes = _load_shapes()

#: the held-out seed; training uses 0 and the demo dataset 1 by default
HELD_OUT_SEED = 2024

TARGET = 0.95


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=shapes.tiny_clip_model_name())
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    p.add_argument("--per-class", type=int, default=20, help="images per class")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def load_model(model_name):
    """Loads a model the way the project does, in eval mode.

    Args:
        model_name: an open_clip name, e.g. ``"local-dir:/path"``

    Returns:
        a ``(model, preprocess, tokenizer)`` tuple
    """
    model, _, preprocess = open_clip.create_model_and_transforms(model_name)
    # BatchNorm towers: an embedding must not depend on its batch mates
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(model_name)


@torch.no_grad()
def embed_images(model, preprocess, images, batch_size=256):
    """Returns L2-normalised embeddings of PIL images, ``N x D`` numpy."""
    out = []
    for i in range(0, len(images), batch_size):
        batch = torch.stack([preprocess(im) for im in images[i : i + batch_size]])
        out.append(F.normalize(model.encode_image(batch), dim=-1))

    return torch.cat(out).numpy()


@torch.no_grad()
def embed_texts(model, tokenizer, texts):
    """Returns L2-normalised embeddings of strings, ``N x D`` numpy."""
    return F.normalize(model.encode_text(tokenizer(texts)), dim=-1).numpy()


def precision_at_k(scores, relevant, k):
    """Mean precision@k of rows of scores.

    Args:
        scores: ``Q x N`` similarities
        relevant: boolean ``Q x N``, whether item ``n`` answers query ``q``
        k: the cut-off

    Returns:
        a float
    """
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.take_along_axis(relevant, top, axis=1).mean())


def evaluate(model, preprocess, tokenizer, images, specs, k=10):
    """Computes the retrieval figures for a set of images.

    Args:
        model, preprocess, tokenizer: from :func:`load_model`
        images: a list of PIL images
        specs: their :class:`fiftyone_ai_search.demo.shapes.ShapeSpec`
        k (10): the cut-off

    Returns:
        a dict of figure name to value
    """
    emb = embed_images(model, preprocess, images)
    colors = np.array([s.color for s in specs])
    kinds = np.array([s.shape for s in specs])
    labels = np.array([s.label for s in specs])
    res = {}

    def text_p(queries, relevant):
        return precision_at_k(embed_texts(model, tokenizer, queries) @ emb.T, relevant, k)

    res["text->image color+shape"] = text_p(
        [shapes.prompt(c, s) for c, s in shapes.CLASSES],
        np.stack([labels == shapes.class_label(c, s) for c, s in shapes.CLASSES]),
    )
    queries, relevant = [], []
    for c, s in shapes.CLASSES:
        caps = shapes.captions(c, s)
        queries.extend(caps)
        relevant.extend([labels == shapes.class_label(c, s)] * len(caps))

    res["text->image all templates"] = text_p(queries, np.stack(relevant))
    res["text->image color only"] = text_p(
        [shapes.prompt(color=c) for c in shapes.COLORS],
        np.stack([colors == c for c in shapes.COLORS]),
    )
    res["text->image shape only"] = text_p(
        [shapes.prompt(shape=s) for s in shapes.SHAPES],
        np.stack([kinds == s for s in shapes.SHAPES]),
    )

    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)  # a query is not its own result
    res["image->image same class"] = precision_at_k(sims, labels[:, None] == labels[None], k)

    txt = embed_texts(model, tokenizer, [shapes.prompt(c, s) for c, s in shapes.CLASSES])
    cos = txt @ emb.T
    match = np.stack([labels == shapes.class_label(c, s) for c, s in shapes.CLASSES])
    res["cosine text/image match (mean)"] = float(cos[match].mean())
    res["cosine text/image non-match (max)"] = float(cos[~match].max())
    return res


def _load_files(files):
    images = []
    for path, _ in files:
        with Image.open(path) as im:
            images.append(im.convert("RGB"))

    return images, [spec for _, spec in files]


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model, preprocess, tokenizer = load_model(args.model)
    n = args.per_class * len(shapes.CLASSES)
    rendered = list(shapes.render_images(n, seed=args.seed, image_size=args.image_size))
    columns = {
        f"{args.image_size}px in memory": evaluate(
            model, preprocess, tokenizer, [r[0] for r in rendered], [r[1] for r in rendered], args.k
        )
    }
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("jpg", "png"):
            files = shapes.write_shapes_images(
                os.path.join(tmp, fmt), n, seed=args.seed, image_size=args.image_size, image_format=fmt
            )
            columns[f"{args.image_size}px {fmt} files"] = evaluate(
                model, preprocess, tokenizer, *_load_files(files), k=args.k
            )

    print(f"\nmodel {args.model}")
    print(f"held-out seed {args.seed}, {n} images ({args.per_class} per class), k={args.k}\n")
    names = list(next(iter(columns.values())))
    width = max(len(x) for x in names) + 2
    print(f"{'figure':<{width}}" + "".join(f"{c:>20}" for c in columns))
    failed = False
    for name in names:
        row = [columns[c][name] for c in columns]
        print(f"{name:<{width}}" + "".join(f"{v:>20.3f}" for v in row))
        if not name.startswith("cosine") and min(row) < TARGET:
            failed = True

    print(f"\n{'FAILED' if failed else 'OK'}: every precision@{args.k} >= {TARGET}?")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
