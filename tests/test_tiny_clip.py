"""The bundled tiny CLIP and the synthetic shapes world it understands.

The model is loaded from the committed weights exactly as real weights are,
through open_clip's ``local-dir:`` path. Assertions are about rankings
(precision@k on held-out images), never exact scores.
"""

import os
import uuid

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fiftyone_ai_search.demo import shapes

# never used in training (0) nor as the demo default (1)
HELD_OUT_SEED = 777
PER_CLASS = 6


@pytest.fixture(scope="module")
def held_out(tiny):
    """Embeddings of held-out 128 px images rendered in memory."""
    model, preprocess, _ = tiny
    rendered = list(
        shapes.render_images(PER_CLASS * len(shapes.CLASSES), seed=HELD_OUT_SEED)
    )
    with torch.no_grad():
        batch = torch.stack([preprocess(img) for img, _ in rendered])
        emb = F.normalize(model.encode_image(batch), dim=-1).numpy()

    specs = [spec for _, spec in rendered]
    return emb, specs


def _embed_texts(tiny, texts):
    model, _, tokenizer = tiny
    with torch.no_grad():
        return F.normalize(model.encode_text(tokenizer(texts)), dim=-1).numpy()


def _precision_at_k(scores, relevant, k):
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(relevant, top, axis=1).mean(axis=1)


def test_model_name_points_at_committed_weights():
    name = shapes.tiny_clip_model_name()
    assert name == "local-dir:" + os.path.abspath(shapes.DEFAULT_MODEL_DIR)
    assert os.path.isabs(name[len("local-dir:"):])
    for fname in ("open_clip_config.json", "open_clip_model.safetensors"):
        assert os.path.isfile(os.path.join(shapes.DEFAULT_MODEL_DIR, fname))


def test_weights_are_small_half_precision_matrices():
    from safetensors.torch import load_file

    path = os.path.join(shapes.DEFAULT_MODEL_DIR, "open_clip_model.safetensors")
    assert os.path.getsize(path) < 5 * 2**20
    for key, t in load_file(path).items():
        if t.is_floating_point() and t.ndim >= 2:
            assert t.dtype == torch.float16, key
        elif t.is_floating_point():
            assert t.dtype == torch.float32, key


def test_loads_through_open_clip(tiny):
    model, preprocess, tokenizer = tiny
    img, _ = shapes.render_image(HELD_OUT_SEED, 0, image_size=128)
    x = preprocess(img)
    assert tuple(x.shape) == (3, 32, 32)  # open_clip's own resize to 32 px
    tokens = tokenizer(["a photo of a red circle"])
    assert tokens.shape[1] == 16
    with torch.no_grad():
        assert model.encode_image(x[None]).shape[-1] == 64
        assert model.encode_text(tokens).shape[-1] == 64


def test_embedding_does_not_depend_on_batch(tiny):
    model, preprocess, _ = tiny
    imgs = [img for img, _ in shapes.render_images(8, seed=HELD_OUT_SEED)]
    batch = torch.stack([preprocess(img) for img in imgs])
    with torch.no_grad():
        together = model.encode_image(batch)
        alone = model.encode_image(batch[:1])

    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=1e-4)


def test_text_to_image_color_and_shape(tiny, held_out):
    emb, specs = held_out
    labels = np.array([s.label for s in specs])
    prompts = [shapes.prompt(c, s) for c, s in shapes.CLASSES]
    relevant = np.stack([labels == shapes.class_label(c, s) for c, s in shapes.CLASSES])
    p = _precision_at_k(_embed_texts(tiny, prompts) @ emb.T, relevant, PER_CLASS)
    assert p.mean() >= 0.9, dict(zip(prompts, p))
    assert p.min() >= 0.5, dict(zip(prompts, p))


def test_text_to_image_other_templates(tiny, held_out):
    emb, specs = held_out
    labels = np.array([s.label for s in specs])
    prompts, relevant = [], []
    for color, shape in [("orange", "cross"), ("blue", "star"), ("green", "triangle")]:
        caps = shapes.captions(color, shape)
        prompts.extend(caps)
        relevant.extend([labels == shapes.class_label(color, shape)] * len(caps))

    p = _precision_at_k(_embed_texts(tiny, prompts) @ emb.T, np.stack(relevant), 5)
    assert p.mean() >= 0.9, dict(zip(prompts, p))


def test_text_to_image_color_only(tiny, held_out):
    emb, specs = held_out
    colors = np.array([s.color for s in specs])
    prompts = [shapes.prompt(color=c) for c in shapes.COLORS]
    relevant = np.stack([colors == c for c in shapes.COLORS])
    p = _precision_at_k(_embed_texts(tiny, prompts) @ emb.T, relevant, 10)
    assert p.mean() >= 0.9, dict(zip(prompts, p))


def test_text_to_image_shape_only(tiny, held_out):
    emb, specs = held_out
    kinds = np.array([s.shape for s in specs])
    prompts = [shapes.prompt(shape=s) for s in shapes.SHAPES]
    relevant = np.stack([kinds == s for s in shapes.SHAPES])
    p = _precision_at_k(_embed_texts(tiny, prompts) @ emb.T, relevant, 10)
    assert p.mean() >= 0.9, dict(zip(prompts, p))


def test_image_to_image(held_out):
    emb, specs = held_out
    labels = np.array([s.label for s in specs])
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    p = _precision_at_k(sims, labels[:, None] == labels[None], PER_CLASS - 1)
    assert p.mean() >= 0.9


def test_matching_prompt_outscores_other_classes(tiny, held_out):
    emb, specs = held_out
    labels = np.array([s.label for s in specs])
    scores = _embed_texts(tiny, [shapes.prompt("purple", "square")]) @ emb.T
    match = labels == "purple square"
    # every purple square above the median of everything else
    assert scores[0, match].min() > np.median(scores[0, ~match])


def test_rendering_is_deterministic_and_balanced():
    a = [(np.asarray(img), spec) for img, spec in shapes.render_images(30, seed=5)]
    b = [(np.asarray(img), spec) for img, spec in shapes.render_images(30, seed=5)]
    for (ia, sa), (ib, sb) in zip(a, b):
        assert sa == sb
        np.testing.assert_array_equal(ia, ib)

    assert sorted((s.color, s.shape) for _, s in a) == sorted(shapes.CLASSES)
    c = [spec for _, spec in shapes.render_images(30, seed=6)]
    assert c != [spec for _, spec in a]


def test_backgrounds_are_grey_and_shapes_fit():
    for index in range(60):
        img, spec = shapes.render_image(9, index, image_size=96)
        pixels = np.asarray(img).astype(int)
        mask = np.asarray(shapes._shape_mask(spec, 96)) == 0
        bg = pixels[mask]
        assert (bg[:, 0] == bg[:, 1]).all() and (bg[:, 1] == bg[:, 2]).all()
        # the whole shape lies inside the image, clear of the border
        border = ~np.pad(np.ones((94, 94), bool), 1)
        assert mask[border].all()
        assert (~mask).mean() > 0.03  # and is large enough to see


def test_captions():
    assert shapes.prompt("red", "circle") == "a photo of a red circle"
    assert shapes.prompt(color="red") == "something red"
    assert shapes.prompt(shape="circle") == "a photo of a circle"
    assert "an orange cross" in shapes.captions("orange", "cross")
    assert "orange crosses" in shapes.captions("orange", "cross")
    with pytest.raises(ValueError):
        shapes.prompt()


def test_make_shapes_dataset(tmp_path):
    import fiftyone as fo

    name = "shapes-" + uuid.uuid4().hex[:8]
    images_dir = tmp_path / "images"
    dataset = shapes.make_shapes_dataset(
        name=name, num_samples=60, seed=3, images_dir=str(images_dir)
    )
    try:
        assert dataset.name == name
        assert len(dataset) == 60
        assert not dataset.persistent
        schema = dataset.get_field_schema()
        assert isinstance(schema["shape"], fo.StringField)
        assert isinstance(schema["color"], fo.StringField)
        colors, kinds, labels, paths = dataset.values(
            ["color", "shape", "ground_truth.label", "filepath"]
        )
        assert labels == [f"{c} {s}" for c, s in zip(colors, kinds)]
        # balanced: 60 samples, every one of the 30 classes twice
        assert sorted(zip(colors, kinds)) == sorted(shapes.CLASSES * 2)
        for path in paths:
            assert path.startswith(str(images_dir)) and path.endswith(".jpg")
            with Image.open(path) as im:
                assert im.format == "JPEG" and im.size == (128, 128)

        # the same seed as PNG: the same samples, the same images up to JPEG loss
        png = shapes.make_shapes_dataset(
            num_samples=60, seed=3, images_dir=str(tmp_path / "png"),
            image_format="png", image_size=128,
        )
        assert png.values("ground_truth.label") == labels
        with Image.open(png.first().filepath) as a, Image.open(paths[0]) as b:
            assert a.format == "PNG"
            diff = np.abs(np.asarray(a, int) - np.asarray(b, int)).mean()
            assert diff < 4
        png.delete()

        with pytest.raises(ValueError):
            shapes.make_shapes_dataset(name=name, num_samples=1, images_dir=str(tmp_path / "x"))

        again = shapes.make_shapes_dataset(
            name=name, num_samples=30, seed=3, images_dir=str(images_dir), overwrite=True
        )
        assert len(again) == 30
        assert again.values("ground_truth.label") == labels[:30]
        dataset = again
    finally:
        dataset.delete()


def test_make_shapes_dataset_default_dir_and_bad_format(tmp_path):
    import fiftyone as fo

    dataset = shapes.make_shapes_dataset(num_samples=2, image_size=64)
    try:
        path = dataset.first().filepath
        assert path.startswith(os.path.abspath(fo.config.default_dataset_dir))
        with Image.open(path) as im:
            assert im.size == (64, 64)
    finally:
        dataset.delete()

    with pytest.raises(ValueError, match="image_format"):
        shapes.write_shapes_images(str(tmp_path), 1, image_format="gif")
