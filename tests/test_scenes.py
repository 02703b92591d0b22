"""The synthetic "scenes" world: several shapes an image, with tight boxes.

The scenes world is the test bed of object-level search, so these tests pin
what such search relies on: the same seed gives the same images and boxes,
boxes are tight and never overlap, classes are balanced, and the bundled tiny
CLIP recognises crops of the boxes (with context around them).
"""

import collections
import dataclasses
import uuid

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fiftyone_ai_search.demo import shapes

# the crop rule measured best for the tiny CLIP on scenes: every side of the
# box grows by half its length (a crop twice the box), made square, so a
# shape fills about half of its crop as in the model's training images
CROP_MARGIN = 1.0
CROP_SQUARE = True


def _crop(img, box, margin=CROP_MARGIN, square=CROP_SQUARE):
    # FiftyOne's relative [x, y, w, h] box, grown by `margin` of its sides,
    # optionally squared (centred), then clamped to the image
    width, height = img.size
    x, y, w, h = box
    cx, cy = (x + w / 2) * width, (y + h / 2) * height
    cw, ch = w * width * (1 + margin), h * height * (1 + margin)
    if square:
        cw = ch = max(cw, ch)

    left, right = max(0, cx - cw / 2), min(width, cx + cw / 2)
    top, bottom = max(0, cy - ch / 2), min(height, cy + ch / 2)
    return img.crop(tuple(int(round(v)) for v in (left, top, right, bottom)))


def _pixel_box(box, image_size):
    return [int(round(v * image_size)) for v in box]


def _disjoint_by(a, b):
    # how far apart two [x, y, w, h] boxes are along their best axis; < 0
    # when they overlap
    dx = max(b[0] - (a[0] + a[2]), a[0] - (b[0] + b[2]))
    dy = max(b[1] - (a[1] + a[3]), a[1] - (b[1] + b[3]))
    return max(dx, dy)


def test_same_seed_same_scenes_other_seed_other_scenes():
    a = [shapes.render_scene_image(5, i) for i in range(12)]
    b = [shapes.render_scene_image(5, i) for i in range(12)]
    for (ia, sa, ba), (ib, sb, bb) in zip(a, b):
        assert sa == sb and ba == bb
        np.testing.assert_array_equal(np.asarray(ia), np.asarray(ib))

    # any order, one at a time: a scene depends on (seed, index) alone
    assert shapes.scene_spec(5, 11) == a[11][1]
    other = [shapes.scene_spec(6, i) for i in range(12)]
    assert other != [spec for _, spec, _ in a]


def test_counts_cycle_and_classes_are_balanced():
    specs = [shapes.scene_spec(2, i) for i in range(60)]
    counts = collections.Counter(len(s.shapes) for s in specs)
    assert counts == {2: 20, 3: 20, 4: 20}
    classes = [(x.color, x.shape) for s in specs for x in s.shapes]
    assert sorted(classes) == sorted(shapes.CLASSES * 6)  # 180 shapes

    # any prefix: every class equally often, give or take one
    prefix = collections.Counter(
        (x.color, x.shape) for i in range(47) for x in shapes.scene_spec(2, i).shapes
    )
    assert set(prefix) == set(shapes.CLASSES)
    assert max(prefix.values()) - min(prefix.values()) <= 1

    fixed = [shapes.scene_spec(2, i, shapes_per_image=3) for i in range(20)]
    assert {len(s.shapes) for s in fixed} == {3}
    assert len({s.background for s in specs}) == len(shapes.BACKGROUNDS)


@pytest.mark.parametrize(
    "shapes_per_image, size_range",
    [((2, 4), None), ((1, 6), (0.1, 0.2)), (4, (0.3, 0.3))],  # last: crowded
)
def test_boxes_lie_in_the_image_and_never_overlap(shapes_per_image, size_range):
    fixed = isinstance(shapes_per_image, int)
    lo, hi = (shapes_per_image,) * 2 if fixed else shapes_per_image
    for index in range(40):
        spec = shapes.scene_spec(
            8, index, shapes_per_image=shapes_per_image, size_range=size_range
        )
        assert lo <= len(spec.shapes) <= hi
        _, boxes = shapes.render_scene(spec, image_size=128)
        assert len(boxes) == len(spec.shapes)
        for x, y, w, h in boxes:
            assert 0 <= x and 0 <= y and w > 0 and h > 0
            assert x + w <= 1 and y + h <= 1

        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                # the gap between boxes is SCENE_GAP, less anti-aliasing
                assert _disjoint_by(a, b) >= shapes.SCENE_GAP - 2 / 128, (index, a, b)


@pytest.mark.parametrize("image_size", [256, 97])
def test_each_box_is_tight_around_its_drawn_shape(image_size):
    for index in range(24):
        spec = shapes.scene_spec(4, index)
        img, boxes = shapes.render_scene(spec, image_size=image_size, seed=index)
        # the same background, nothing drawn on it
        bg, no_boxes = shapes.render_scene(
            dataclasses.replace(spec, shapes=()), image_size=image_size, seed=index
        )
        assert no_boxes == []
        drawn = (np.asarray(img, int) != np.asarray(bg, int)).any(axis=-1)
        inside = np.zeros_like(drawn)
        for shape, box in zip(spec.shapes, boxes):
            x0, y0, w, h = _pixel_box(box, image_size)
            inside[y0:y0 + h, x0:x0 + w] = True
            ys, xs = np.nonzero(drawn[y0:y0 + h, x0:x0 + w])
            # the drawn pixels reach every side of the box, within a pixel
            assert xs.min() <= 1 and ys.min() <= 1, (index, shape.label)
            assert xs.max() >= w - 2 and ys.max() >= h - 2, (index, shape.label)
            # and the box holds the shape's own colour, not another's
            rgb = np.asarray(img, int)[y0:y0 + h, x0:x0 + w][ys, xs]
            dist = np.abs(rgb - shape.rgb).sum(axis=-1)
            assert np.median(dist) < 10, (index, shape.label)

        assert not drawn[~inside].any(), index  # nothing drawn outside boxes


def test_bad_scene_parameters_are_refused():
    for bad in (0, (0, 2), (3, 2)):
        with pytest.raises(ValueError, match="shapes_per_image"):
            shapes.scene_spec(0, 0, shapes_per_image=bad)

    with pytest.raises(ValueError, match="do not fit"):
        shapes.scene_spec(0, 0, shapes_per_image=4, size_range=(0.4, 0.4))

    with pytest.raises(ValueError, match="size_range"):
        shapes.scene_spec(0, 0, size_range=(0.3, 0.2))


def test_make_scenes_dataset(tmp_path):
    import fiftyone as fo

    name = "scenes-" + uuid.uuid4().hex[:8]
    dataset = shapes.make_scenes_dataset(
        name=name, num_samples=30, seed=3, images_dir=str(tmp_path / "images"),
        label_field="objects",
    )
    try:
        assert dataset.name == name and len(dataset) == 30
        schema = dataset.get_field_schema()
        assert schema["objects"].document_type is fo.Detections
        assert dataset.info["scenes_world"]["shapes_per_image"] == [2, 4]

        expected = [shapes.render_scene_image(3, i) for i in range(30)]
        for sample, (_, spec, boxes) in zip(dataset, expected):
            dets = sample["objects"].detections
            assert [d.label for d in dets] == spec.labels
            assert [d.label for d in dets] == [
                shapes.class_label(c, s) for c, s in zip(sample.colors, sample.shapes)
            ]
            np.testing.assert_allclose([d.bounding_box for d in dets], boxes)
            with Image.open(sample.filepath) as im:
                assert im.format == "JPEG" and im.size == (256, 256)

        # 30 scenes of 2, 3 and 4 shapes: 90 shapes, every class 3 times
        assert dataset.count("objects.detections") == 90
        by_label = dataset.count_values("objects.detections.label")
        assert by_label == {shapes.class_label(c, s): 3 for c, s in shapes.CLASSES}
    finally:
        dataset.delete()

    before = fo.list_datasets()
    with pytest.raises(ValueError, match="shapes_per_image"):
        shapes.make_scenes_dataset(num_samples=1, shapes_per_image=(3, 1))
    assert fo.list_datasets() == before  # refused before creating anything

    with pytest.raises(ValueError, match="image_format"):
        shapes.write_scenes_images(str(tmp_path / "gif"), 1, image_format="gif")


def test_the_tiny_clip_finds_objects_in_crops(tiny, tmp_path):
    model, preprocess, tokenizer = tiny
    dataset = shapes.make_scenes_dataset(
        num_samples=150, seed=11, images_dir=str(tmp_path / "scenes")
    )
    try:
        crops, labels = [], []
        for path, dets in zip(*dataset.values(["filepath", "ground_truth.detections"])):
            with Image.open(path) as im:
                img = im.convert("RGB")

            for det in dets:
                crops.append(preprocess(_crop(img, det.bounding_box)))
                labels.append(det.label)
    finally:
        dataset.delete()

    labels = np.array(labels)
    prompts = [shapes.prompt(c, s) for c, s in shapes.CLASSES]
    with torch.no_grad():
        images = F.normalize(model.encode_image(torch.stack(crops)), dim=-1).numpy()
        texts = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1).numpy()

    top = np.argsort(-(texts @ images.T), axis=1, kind="stable")[:, :10]
    hits = {
        p: int((labels[t] == shapes.class_label(c, s)).sum())
        for p, t, (c, s) in zip(prompts, top, shapes.CLASSES)
    }
    assert min(hits.values()) >= 9, hits

    # a crop as the query: its nearest other crops are of its class
    sims = images @ images.T
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    assert (labels[nearest] == labels[:, None]).mean() >= 0.9
