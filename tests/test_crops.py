"""Object crops: the region of a box is FiftyOne's patch, and a crop item
decoded once in the embedding pipeline gives each crop the vector of that
crop saved and embedded as an image of its own, in workers as in the
calling thread."""

import math
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fiftyone_ai_search.embedding import decode, pipeline, pool
from fiftyone_ai_search.embedding.crops import (
    CropError,
    CropSettings,
    box_fingerprint,
    pixel_box,
    relative_box,
)
from fiftyone_ai_search.demo.shapes import tiny_clip_model_name
from fiftyone_ai_search.embedding.pipeline import embed_images
from fiftyone_ai_search.embedding.model import load_model, resolve_model

from tests.crashing import CrashingModel
from tests.helpers import collect_batches

PLAIN = CropSettings(margin=0.0, square=False)


@pytest.fixture(scope="module")
def model():
    return load_model(resolve_model(tiny_clip_model_name()), "cpu")


@pytest.fixture
def workers_only(monkeypatch):
    """Workers start however short the run, and do all the decoding."""
    monkeypatch.setattr(pipeline, "MIN_ITEMS_FOR_WORKERS", 0)
    monkeypatch.setattr(pool, "_MAIN_THREAD_DECODES", False)


# --- settings ----------------------------------------------------------------


def test_settings_validate_and_round_trip():
    assert CropSettings() == CropSettings(margin=0.5, square=True)
    assert CropSettings(margin=1).margin == 1.0
    assert isinstance(CropSettings(margin=1).margin, float)

    for margin in (-0.1, math.nan, math.inf, "0.1", None, True):
        with pytest.raises(ValueError, match="margin"):
            CropSettings(margin=margin)

    with pytest.raises(ValueError, match="square"):
        CropSettings(square=1)

    settings = CropSettings(margin=0.25, square=False)
    assert settings.to_dict() == {"margin": 0.25, "square": False}
    assert CropSettings.from_dict(settings.to_dict()) == settings
    assert CropSettings.from_dict({}) == CropSettings()
    with pytest.raises(ValueError, match="alpha"):
        CropSettings.from_dict({"margin": 0.1, "alpha": 2})


# --- geometry ----------------------------------------------------------------


def test_plain_box_is_its_pixels():
    assert pixel_box([0.1, 0.2, 0.3, 0.4], 100, 100, PLAIN) == (10, 20, 40, 60)
    # float noise does not lose a pixel: 0.29 * 100 = 28.999999999999996
    assert pixel_box([0.29, 0.29, 0.2, 0.2], 100, 100, PLAIN)[:2] == (29, 29)


def test_margin_grows_each_side_by_half():
    settings = CropSettings(margin=0.5, square=False)
    # 40 x 20 pixels grow by 20 x 10, half on each side
    assert pixel_box([0.2, 0.2, 0.4, 0.2], 100, 100, settings) == (
        10, 15, 70, 45
    )
    assert relative_box([0.2, 0.2, 0.4, 0.2], settings) == pytest.approx(
        (0.1, 0.15, 0.7, 0.45)
    )


def test_margin_is_clamped_at_the_edges():
    settings = CropSettings(margin=0.1, square=False)
    # clamped to the image first (0.1 x 0.1 left), grown, clamped again
    assert pixel_box([0.9, 0.9, 0.2, 0.2], 100, 100, settings) == (
        89, 89, 100, 100
    )
    assert pixel_box([-0.5, -0.5, 0.6, 0.6], 100, 100, settings) == (
        0, 0, 10, 10
    )


def test_square_grows_the_shorter_side_centred():
    square = CropSettings(margin=0.0, square=True)
    assert pixel_box([0.4, 0.4, 0.2, 0.1], 100, 100, square) == (
        40, 35, 60, 55
    )
    assert pixel_box([0.4, 0.4, 0.1, 0.2], 100, 100, square) == (
        35, 40, 55, 60
    )
    # an odd difference: the far end takes the extra pixel
    assert pixel_box([0.4, 0.4, 0.2, 0.15], 100, 100, square) == (
        40, 38, 60, 58
    )


def test_square_shifts_back_inside_the_image():
    square = CropSettings(margin=0.0, square=True)
    assert pixel_box([0.0, 0.0, 0.1, 0.3], 100, 100, square) == (0, 0, 30, 30)
    assert pixel_box([0.95, 0.5, 0.05, 0.3], 100, 100, square) == (
        70, 50, 100, 80
    )


def test_square_on_a_non_square_image():
    square = CropSettings(margin=0.0, square=True)
    # 200 x 100: a box 100 x 25 pixels becomes 100 x 100
    assert pixel_box([0.25, 0.5, 0.5, 0.25], 200, 100, square) == (
        50, 0, 150, 100
    )
    # too wide for a square of its width: the square is the image's height,
    # its width shrinks evenly (the part the model's centre crop keeps)
    assert pixel_box([0.0, 0.0, 1.0, 0.5], 200, 100, square) == (
        50, 0, 150, 100
    )
    # 100 x 200, the same sideways
    assert pixel_box([0.0, 0.0, 0.5, 1.0], 100, 200, square) == (
        0, 50, 100, 150
    )


def test_a_box_thinner_than_a_pixel_gets_one():
    assert pixel_box([0.5, 0.5, 1e-9, 1e-9], 100, 100, PLAIN) == (
        50, 50, 51, 51
    )
    assert pixel_box([0.9999999999, 0.5, 1e-12, 0.1], 100, 100, PLAIN) == (
        99, 50, 100, 60
    )
    assert pixel_box([0.5, 0.5, 1e-20, 1e-20], 1, 1, CropSettings()) == (
        0, 0, 1, 1
    )


@pytest.mark.parametrize(
    "box, reason",
    [
        (None, "not 4 finite numbers"),
        ([0.1, 0.2, 0.3], "not 4 finite numbers"),
        ([0.1, 0.2, 0.3, 0.4, 0.5], "not 4 finite numbers"),
        (["0.1", 0.2, 0.3, 0.4], "not 4 finite numbers"),
        ([True, 0.2, 0.3, 0.4], "not 4 finite numbers"),
        ([math.nan, 0.2, 0.3, 0.4], "not 4 finite numbers"),
        ([0.1, 0.2, math.inf, 0.4], "not 4 finite numbers"),
        ([0.1, 0.2, 0.0, 0.4], "width <= 0"),
        ([0.1, 0.2, 0.3, -0.4], "height <= 0"),
        ([1.0, 0.2, 0.3, 0.4], "outside the image"),
        ([0.1, 1.5, 0.3, 0.4], "outside the image"),
        ([-0.5, 0.2, 0.5, 0.4], "outside the image"),
        ([0.1, -0.9, 0.3, 0.4], "outside the image"),
    ],
)
def test_bad_boxes_raise_with_the_reason(box, reason):
    with pytest.raises(CropError, match=reason) as info:
        pixel_box(box, 100, 100, CropSettings())

    assert info.value.reason == str(info.value)
    assert isinstance(info.value, ValueError)


def test_numpy_boxes_work():
    box = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    assert pixel_box(box, 100, 100, PLAIN) == (10, 20, 40, 60)
    assert pixel_box(tuple(box), 100, 100, PLAIN) == (10, 20, 40, 60)


def test_fingerprint_ignores_float_noise_only():
    box = [0.1, 0.2, 0.3, 0.4]
    assert box_fingerprint(box) == "0.100000,0.200000,0.300000,0.400000"
    assert box_fingerprint([v + 1e-12 for v in box]) == box_fingerprint(box)
    assert box_fingerprint(np.float32(box)) == box_fingerprint(box)
    assert box_fingerprint(tuple(box)) == box_fingerprint(box)
    assert box_fingerprint([0.1, 0.2, 0.3, 0.40001]) != box_fingerprint(box)
    # -0 and +0 are the same position
    assert box_fingerprint([-1e-9, 0, 1, 1]) == box_fingerprint([0, 0, 1, 1])

    # bad boxes have one too (their embedding fails, not their bookkeeping)
    assert box_fingerprint([math.nan, 0, 1, 1]).startswith("nan,")
    assert box_fingerprint(None) == "invalid:None"
    assert box_fingerprint([1, 2]) != box_fingerprint([1, 2, 3])


def test_regions_are_fiftyones_patches():
    import fiftyone as fo
    from fiftyone.utils.patches import extract_patch

    height, width = 240, 320
    # each pixel holds its own (row, column)
    rows, columns = np.mgrid[0:height, 0:width]
    image = np.stack([rows, columns], axis=-1).astype(np.int32)

    rng = np.random.default_rng(0)
    boxes = [
        [0.1, 0.2, 0.3, 0.4],
        [0.0, 0.0, 1.0, 1.0],
        [0.0, 0.0, 1.0, 0.3],
        [0.05, 0.1, 0.02, 0.8],
        [0.9, 0.85, 0.3, 0.3],
        [-0.2, -0.1, 0.4, 0.3],
    ] + [
        [float(rng.uniform(-0.1, 0.95)), float(rng.uniform(-0.1, 0.95)),
         float(rng.uniform(0.02, 0.8)), float(rng.uniform(0.02, 0.8))]
        for _ in range(60)
    ]
    compared = 0
    for margin in (0.0, 0.1, 0.5):
        for square in (False, True):
            settings = CropSettings(margin=margin, square=square)
            for box in boxes:
                try:
                    left, top, right, bottom = pixel_box(
                        box, width, height, settings
                    )
                except CropError:
                    continue  # outside the image: no patch to compare

                patch = extract_patch(
                    image, fo.Detection(bounding_box=box),
                    force_square=square, alpha=margin,
                )
                assert patch.size, box
                expected = (
                    patch[0, 0, 1], patch[0, 0, 0],
                    patch[-1, -1, 1] + 1, patch[-1, -1, 0] + 1,
                )
                assert np.abs(
                    np.subtract((left, top, right, bottom), expected)
                ).max() <= 1, (box, margin, square)
                if square:
                    assert right - left == bottom - top, box

                compared += 1

    assert compared > 300


# --- embedding ---------------------------------------------------------------


def _picture(seed, size=(640, 480)):
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 6, 3)
    waves = [np.sin(x / width * 9 + p + y / height * 5) for p in phase]
    image = Image.fromarray((127 + 100 * np.stack(waves, -1)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
        side = int(rng.integers(20, 120))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse([x0, y0, x0 + side, y0 + side], fill=color)

    return image


# boxes whose square crops stay under 128 pixels on a 640 x 480 image: saved
# as files, they are embedded at full size (no reduction to 2 x 32 pixels)
_BOXES = [
    [0.1, 0.1, 0.15, 0.2],
    [0.5, 0.4, 0.1, 0.05],
    [0.85, 0.7, 0.2, 0.2],
    [0.0, 0.0, 0.05, 0.25],
]


def _crop_items(root, count, boxes=_BOXES, suffix="png"):
    items = []
    for i in range(count):
        path = os.path.join(root, f"image-{i:02d}.{suffix}")
        _picture(i).save(path)
        crops = [(f"{i}/{j}", box) for j, box in enumerate(boxes)]
        items.append((f"image-{i}", path, crops))

    return items


def _collect(batches):
    """``(vectors, failures, keys of each batch)``, the tiny CLIP's 64-d."""
    return collect_batches(batches, 64)


def test_a_crop_embeds_as_the_crop_saved_as_an_image(model, tmp_path):
    items = _crop_items(str(tmp_path), 2)
    settings = CropSettings(margin=0.1)  # crops well inside the image
    vectors, failures, _ = _collect(embed_images(
        model, items, batch_size=4, num_workers=0, crop=settings
    ))
    assert not failures
    assert set(vectors) == {k for _, _, crops in items for k, _ in crops}

    saved = []
    for _, path, crops in items:
        image = Image.open(path).convert("RGB")
        for crop_key, box in crops:
            region = pixel_box(box, *image.size, settings)
            assert max(region[2] - region[0], region[3] - region[1]) < 128
            crop_path = str(tmp_path / (crop_key.replace("/", "-") + ".png"))
            image.crop(region).save(crop_path)
            saved.append((crop_key, crop_path))

    whole, failed, _ = _collect(
        embed_images(model, saved, batch_size=4, num_workers=0)
    )
    assert not failed
    for key, vector in whole.items():
        cosine = float(vector @ vectors[key])
        assert cosine > 0.999, (key, cosine)


def _broken_items(root):
    missing = os.path.join(root, "missing.png")
    text = os.path.join(root, "text.png")
    with open(text, "w") as f:
        f.write("not an image")

    return [
        ("missing", missing, [("missing/0", _BOXES[0]),
                              ("missing/1", _BOXES[1])]),
        ("text", text, [("text/0", _BOXES[0]), ("text/1", _BOXES[2])]),
    ], {
        "missing/0": "file not found",
        "missing/1": "file not found",
        "text/0": "not an image (cannot identify image file)",
        "text/1": "not an image (cannot identify image file)",
    }


def _bad_box_item(root):
    path = os.path.join(root, "bad-boxes.png")
    _picture(50).save(path)
    return ("bad-boxes", path, [
        ("bad/good", _BOXES[1]),
        ("bad/empty", [0.1, 0.1, 0.0, 0.2]),
        ("bad/outside", [1.2, 0.1, 0.1, 0.2]),
        ("bad/none", None),
    ])


def test_broken_images_and_bad_boxes_fail_alone(model, tmp_path):
    good = _crop_items(str(tmp_path), 3)
    broken, reasons = _broken_items(str(tmp_path))
    items = good[:1] + broken + [_bad_box_item(str(tmp_path))] + good[1:]
    done = []

    vectors, failures, _ = _collect(embed_images(
        model, items, batch_size=4, num_workers=0, progress=done.append,
        crop=CropSettings(),
    ))
    assert set(vectors) == {k for _, _, c in good for k, _ in c} | {
        "bad/good"
    }
    assert {k: failures[k] for k in reasons} == reasons
    assert "width <= 0" in failures["bad/empty"]
    assert "outside the image" in failures["bad/outside"]
    assert "not 4 finite numbers" in failures["bad/none"]
    assert len(failures) == len(reasons) + 3
    # progress counts crops
    assert sum(done) == 3 * 4 + 4 + 4


@pytest.mark.slow
def test_workers_give_the_same_crops(model, tmp_path, workers_only):
    good = _crop_items(str(tmp_path), 12)
    broken, reasons = _broken_items(str(tmp_path))
    whole = [(p, p) for _, p, _ in good[:3]]  # whole images may join a run
    items = good[:5] + broken + whole + [_bad_box_item(str(tmp_path))] + (
        good[5:]
    )

    runs = [
        _collect(embed_images(
            model, iter(items), batch_size=8, num_workers=workers,
            crop=CropSettings(),
        ))
        for workers in (2, 0)
    ]
    (in_workers, failed_in_workers, _), (in_thread, failed_in_thread, _) = (
        runs
    )
    assert failed_in_workers == failed_in_thread
    assert {k: failed_in_thread[k] for k in reasons} == reasons
    assert set(in_workers) == set(in_thread)
    assert len(in_thread) == 12 * 4 + 3 + 1
    for key, vector in in_thread.items():
        assert np.allclose(in_workers[key], vector, atol=1e-6), key

    # whole images of a crop run are embedded as in a run without crops
    plain, _, _ = _collect(embed_images(model, whole, 8, num_workers=0))
    for key, vector in plain.items():
        assert np.allclose(in_thread[key], vector, atol=1e-6)


def test_an_image_is_decoded_once_for_all_its_crops(
    model, tmp_path, monkeypatch
):
    calls = []

    def counting_load_image(filepath, **kwargs):
        calls.append(filepath)
        return load_image(filepath, **kwargs)

    load_image = decode.load_image
    monkeypatch.setattr(decode, "load_image", counting_load_image)

    items = _crop_items(str(tmp_path), 5)
    items.append(("no-crops", items[0][1], []))
    items.append(_bad_box_item(str(tmp_path))[:2] + ([
        ("only-bad", [0.5, 0.5, -1, 1]),
    ],))
    vectors, failures, _ = _collect(embed_images(
        model, items, batch_size=3, num_workers=0, crop=CropSettings()
    ))
    assert len(vectors) == 5 * 4 and list(failures) == ["only-bad"]
    # one decode per image; none for an item with no crop to cut
    assert sorted(calls) == sorted(path for _, path, _ in items[:5])


def test_small_crops_keep_their_pixels_through_jpeg_drafting(
    model, tmp_path, monkeypatch
):
    decoded = {}

    def recording_load_image(filepath, **kwargs):
        image = load_image(filepath, **kwargs)
        decoded[filepath] = image.size
        return image

    load_image = decode.load_image
    monkeypatch.setattr(decode, "load_image", recording_load_image)

    path = str(tmp_path / "large.jpg")
    _picture(7, size=(2000, 1500)).save(path, quality=90)
    target = decode.DRAFT_FACTOR * model.image_size
    settings = CropSettings()

    # a small box: decoded at a size that leaves its crop the target
    small = [0.3, 0.3, 0.1, 0.1]
    _collect(embed_images(
        model, [("small", path, [("s", small)])], 4, 0, crop=settings
    ))
    left, top, right, bottom = pixel_box(small, *decoded[path], settings)
    assert min(right - left, bottom - top) >= target
    assert decoded[path] != (2000, 1500)  # and not more than it needs

    # a large box: drafted far down, as a whole image would be
    large = [0.1, 0.1, 0.6, 0.6]
    _collect(embed_images(
        model, [("large", path, [("l", large)])], 4, 0, crop=settings
    ))
    left, top, right, bottom = pixel_box(large, *decoded[path], settings)
    assert min(right - left, bottom - top) >= target
    assert decoded[path][0] <= 2000 // 4

    # the draft is set by the smallest crop of the image
    _collect(embed_images(
        model, [("both", path, [("s", small), ("l", large)])], 4, 0,
        crop=settings,
    ))
    left, top, right, bottom = pixel_box(small, *decoded[path], settings)
    assert min(right - left, bottom - top) >= target


def test_batches_hold_about_batch_size_crops(model, tmp_path):
    items = _crop_items(str(tmp_path), 10, boxes=_BOXES[:3])
    done = []
    _, _, batches = _collect(embed_images(
        model, items, batch_size=8, num_workers=0, progress=done.append,
        crop=CropSettings(),
    ))
    # 3 crops an image: two images a batch (a third would overflow 8)
    assert [len(b) for b in batches] == [6, 6, 6, 6, 6]
    assert done == [6, 6, 6, 6, 6]
    # an image's crops stay in one batch
    for _, _, crops in items:
        keys = {k for k, _ in crops}
        assert sum(bool(keys & set(b)) for b in batches) == 1

    # an image with more crops than batch_size is a batch of its own; the
    # model takes batch_size at a time and the vectors are the same
    many = [(f"k{j}", [0.1 * (j % 9), 0.1, 0.1, 0.1]) for j in range(10)]
    big = [("big", items[0][1], many)]
    vectors, _, batches = _collect(embed_images(
        model, big, batch_size=4, num_workers=0, crop=CropSettings()
    ))
    assert [len(b) for b in batches] == [10]
    one_call, _, _ = _collect(embed_images(
        model, big, batch_size=16, num_workers=0, crop=CropSettings()
    ))
    for key, vector in one_call.items():
        assert np.allclose(vectors[key], vector, atol=1e-5)


def test_crop_items_need_crop_settings(model, tmp_path):
    items = _crop_items(str(tmp_path), 1)
    with pytest.raises(ValueError, match="crop"):
        embed_images(model, items, 4, 0, crop={"margin": 0.1})

    with pytest.raises(ValueError):
        list(embed_images(model, items, 4, 0))


@pytest.mark.slow
def test_a_crashing_crop_fails_only_its_image(model, tmp_path, workers_only):
    good = _crop_items(str(tmp_path), 4)
    poison = str(tmp_path / "poison.png")
    _picture(60, size=(130, 130)).save(poison)
    # last, so that only one restart is waited for
    items = good + [("poison", poison, [
        ("poison/fine", [0.2, 0.2, 0.5, 0.5]),
        ("poison/13px", [0.0, 0.0, 0.1, 0.1]),
    ])]
    settings = CropSettings(margin=0.0)

    vectors, failures, _ = _collect(embed_images(
        CrashingModel(model), items, batch_size=8, num_workers=1,
        crop=settings,
    ))
    assert set(vectors) == {k for _, _, c in good for k, _ in c}
    reason = "decoder crashed (worker exit code 3)"
    assert failures == {"poison/fine": reason, "poison/13px": reason}

    reference, _, _ = _collect(
        embed_images(model, good, batch_size=8, num_workers=0, crop=settings)
    )
    for key, vector in vectors.items():
        assert np.allclose(reference[key], vector, atol=1e-6)
