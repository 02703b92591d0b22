"""Image decoding: every PIL mode to RGB, EXIF orientation, draft decoding of
large JPEGs, reduced decoding of other large images within bounded memory,
decompression bombs and broken files with their reasons."""

import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fiftyone_ai_search.embedding import images
from fiftyone_ai_search.embedding.decode import Decoder
from fiftyone_ai_search.embedding.images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    load_image,
    to_rgb,
)
from fiftyone_ai_search.embedding.preprocess import Recipe

LIMIT_VARIABLE = "FIFTYONE_AI_SEARCH_MAX_IMAGE_PIXELS"


def _gradient(width=64, height=48):
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [x * 255 // (width - 1), y * 255 // (height - 1), (x + y) % 256], -1
    ).astype(np.uint8)


def _save(image, path, **kwargs):
    image.save(path, **kwargs)
    return str(path)


def _reason(path, **kwargs):
    with pytest.raises(ImageDecodeError) as info:
        load_image(path, **kwargs)

    assert str(info.value) == info.value.reason
    return info.value.reason


def _gray(image):
    return np.asarray(image)[0, :, 0].tolist()


def _png_header_only(path, width, height):
    """A PNG that claims ``width`` x ``height`` but holds almost no data:
    a decompression bomb as far as its header goes."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(
            ">I", zlib.crc32(body)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    with open(path, "wb") as f:
        f.write(data)

    return str(path)


# --- modes -----------------------------------------------------------------


def test_rgb_jpeg_and_png(tmp_path):
    pixels = _gradient()
    png = load_image(_save(Image.fromarray(pixels), tmp_path / "a.png"))
    assert png.mode == "RGB" and png.size == (64, 48)
    assert np.array_equal(np.asarray(png), pixels)

    jpg = load_image(_save(Image.fromarray(pixels), tmp_path / "a.jpg"))
    assert jpg.mode == "RGB" and jpg.size == (64, 48)


def test_grayscale_and_bilevel(tmp_path):
    gray = Image.fromarray(_gradient()[..., 0])
    image = load_image(_save(gray, tmp_path / "l.png"))
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image)[..., 1], np.asarray(gray))

    bilevel = Image.fromarray(_gradient()[..., 0] > 127).convert("1")
    image = load_image(_save(bilevel, tmp_path / "1.png"))
    assert image.mode == "RGB"
    assert set(np.unique(np.asarray(image))) <= {0, 255}


def test_rgba_is_composited_on_white(tmp_path):
    pixels = np.zeros((10, 20, 4), np.uint8)
    pixels[..., 0] = 200  # red, hidden where transparent
    pixels[:, :10, 3] = 255  # left half opaque, right half transparent
    path = _save(Image.fromarray(pixels, "RGBA"), tmp_path / "a.png")
    image = load_image(path)

    out = np.asarray(image)
    assert image.mode == "RGB"
    assert tuple(out[5, 2]) == (200, 0, 0)
    assert tuple(out[5, 15]) == (255, 255, 255)


def test_la_is_composited_on_white(tmp_path):
    pixels = np.zeros((10, 20, 2), np.uint8)
    pixels[:, :10, 1] = 255
    path = _save(Image.fromarray(pixels, "LA"), tmp_path / "la.png")
    image = load_image(path)

    out = np.asarray(image)
    assert tuple(out[5, 2]) == (0, 0, 0)
    assert tuple(out[5, 15]) == (255, 255, 255)


def test_palette_with_and_without_transparency(tmp_path):
    palette = Image.new("P", (20, 10), 0)
    palette.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)
    palette.paste(1, (0, 0, 10, 10))  # left half red, right half blue

    plain = np.asarray(load_image(_save(palette, tmp_path / "p.png")))
    assert tuple(plain[5, 2]) == (255, 0, 0)
    assert tuple(plain[5, 15]) == (0, 0, 255)

    # index 0 (blue) transparent
    path = _save(palette, tmp_path / "pt.png", transparency=0)
    assert "transparency" in Image.open(path).info
    out = np.asarray(load_image(path))
    assert tuple(out[5, 2]) == (255, 0, 0)
    assert tuple(out[5, 15]) == (255, 255, 255)

    gif = _save(palette, tmp_path / "pt.gif", transparency=0)
    gif = np.asarray(load_image(gif))
    assert tuple(gif[5, 15]) == (255, 255, 255)


def test_16_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "g16.png")
    assert Image.open(path).mode == "I;16"

    out = np.asarray(load_image(path))[0, :, 0]
    assert out.tolist() == [0, 64, 128, 255]

    tiff = _save(Image.fromarray(values), tmp_path / "g16.tif")
    assert np.asarray(load_image(tiff))[0, :, 0].tolist() == [0, 64, 128, 255]


def test_32_bit_integer_and_float(tmp_path):
    sixteen = np.array([[0, 257 * 100, 65535]], dtype=np.int32)
    image = to_rgb(Image.fromarray(sixteen, "I"))
    assert np.asarray(image)[0, :, 0].tolist() == [0, 100, 255]

    eight = np.array([[0, 100, 255]], dtype=np.int32)
    assert _gray(to_rgb(Image.fromarray(eight, "I"))) == [0, 100, 255]

    wide = np.array([[-1000, 0, 1000]], dtype=np.int32)
    assert _gray(to_rgb(Image.fromarray(wide, "I"))) == [0, 128, 255]

    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    path = _save(Image.fromarray(unit, "F"), tmp_path / "f.tif")
    assert Image.open(path).mode == "F"
    assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 128, 255]

    odd = np.array([[np.nan, -2.0, 2.0]], dtype=np.float32)
    assert np.asarray(to_rgb(Image.fromarray(odd, "F")))[0, :, 0].tolist() == [
        128,
        0,
        255,
    ]


def test_cmyk(tmp_path):
    cmyk = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # red
    for name in ("c.jpg", "c.tif"):
        image = load_image(_save(cmyk, tmp_path / name))
        red, green, blue = np.asarray(image)[4, 8].tolist()
        assert image.mode == "RGB"
        assert red > 200 and green < 60 and blue < 60, name


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :40] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs 90 degrees clockwise
    path = _save(Image.fromarray(pixels), tmp_path / "rot.jpg", exif=exif)

    image = load_image(path)
    assert image.size == (40, 80)
    out = np.asarray(image).astype(int)
    assert out[10, 20, 0] > 200 and out[10, 20, 2] < 60  # top is red
    assert out[70, 20, 0] < 60  # bottom is black


# --- draft -----------------------------------------------------------------


@pytest.fixture(scope="module")
def large_jpeg(tmp_path_factory):
    height, width = 3000, 4000
    y, x = np.mgrid[0:height:8, 0:width:8]
    small = np.stack([x % 256, y % 256, (x // 16 + y // 16) % 256], -1)
    image = Image.fromarray(small.astype(np.uint8)).resize((width, height))
    path = tmp_path_factory.mktemp("large") / "large.jpg"
    return _save(image, path, quality=85)


def test_draft_decodes_large_jpeg_at_reduced_size(large_jpeg):
    full = load_image(large_jpeg)
    assert full.size == (4000, 3000)

    reduced = load_image(large_jpeg, draft_size=448)
    assert reduced.mode == "RGB"
    assert reduced.size == (1000, 750)  # 1/4: both sides stay >= 448

    assert load_image(large_jpeg, draft_size=(1200, 800)).size == (2000, 1500)
    assert load_image(large_jpeg, draft_size=5000).size == (4000, 3000)


def test_draft_reduces_other_formats_by_an_integer_factor(tmp_path):
    pixels = _gradient(640, 480)
    path = _save(Image.fromarray(pixels), tmp_path / "a.png")

    # 1/15: both sides stay >= 32 (640/15 rounds up: the last block is
    # partial)
    reduced = load_image(path, draft_size=32)
    assert reduced.mode == "RGB" and reduced.size == (43, 32)
    assert np.array_equal(
        np.asarray(reduced), np.asarray(Image.fromarray(pixels).reduce(15))
    )
    assert load_image(path, draft_size=(100, 300)).size == (640, 480)
    assert load_image(path).size == (640, 480)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16", "1", "CMYK"])
def test_reducing_in_strips_equals_converting_then_reducing(
    tmp_path, monkeypatch, mode
):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (130, 170, 4), dtype=np.uint8)
    noise[..., 3] = np.where(rng.random((130, 170)) < 0.4, 0, noise[..., 3])
    rgba = Image.fromarray(noise, "RGBA")
    if mode == "I;16":
        image = Image.fromarray(
            rng.integers(0, 65536, (130, 170), dtype=np.uint16)
        )
    elif mode == "P":
        image = rgba.convert("RGB").quantize(64)
        image.info["transparency"] = 3
    else:
        image = rgba.convert(mode)
    ext = "tif" if mode == "CMYK" else "png"
    path = _save(image, tmp_path / f"a.{ext}")

    # strips of 7 blocks of 5 rows (and a partial last one)
    monkeypatch.setattr(images, "_STRIP_PIXELS", 170 * 5 * 7)
    reduced = load_image(path, draft_size=(30, 20))
    expected = to_rgb(Image.open(path)).reduce(5)
    assert reduced.mode == "RGB" and reduced.size == (34, 26)
    assert np.array_equal(np.asarray(reduced), np.asarray(expected))


def test_transparent_pixels_are_not_averaged_in_when_reducing(tmp_path):
    pixels = np.zeros((400, 400, 4), np.uint8)  # black, transparent
    pixels[:, :200] = (200, 0, 0, 255)  # left half opaque red
    path = _save(Image.fromarray(pixels, "RGBA"), tmp_path / "a.png")

    out = np.asarray(load_image(path, draft_size=100))
    assert out.shape == (100, 100, 3)
    assert tuple(out[50, 10]) == (200, 0, 0)
    assert tuple(out[50, 90]) == (255, 255, 255)


def test_orientation_is_applied_to_reduced_images(tmp_path):
    pixels = np.zeros((400, 800, 3), np.uint8)
    pixels[:, :400] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # display needs 90 degrees clockwise
    path = _save(Image.fromarray(pixels), tmp_path / "rot.png", exif=exif)

    image = load_image(path, draft_size=100)
    assert image.size == (100, 200)  # reduced 1/4, then turned
    out = np.asarray(image).astype(int)
    assert out[20, 50, 0] > 200  # top is red
    assert out[180, 50, 0] < 60  # bottom is black


# --- bounded memory ---------------------------------------------------------

_MEASURE = textwrap.dedent("""
    import json, resource, sys
    from fiftyone_ai_search.embedding.images import load_image

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    before = peak()
    image = load_image(sys.argv[1], draft_size=448)
    print(json.dumps({"before": before, "after": peak(),
                      "size": list(image.size), "mode": image.mode}))
""")


def _peak_rss_of_decoding(path, env=None):
    """Peak RSS growth (bytes) of a fresh process decoding ``path`` as the
    embedding pipeline does (ru_maxrss is kB on Linux)."""
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, path],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return data["after"] - data["before"], data


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="ru_maxrss in kB on Linux"
)
def test_decoding_a_large_rgba_png_holds_one_frame(tmp_path):
    side = 6000  # 36 MP: one RGBA frame is 144 MB
    image = Image.new("RGBA", (side, side), (30, 120, 200, 255))
    draw = ImageDraw.Draw(image)
    draw.ellipse((1500, 1500, 4500, 4500), fill=(220, 40, 40, 128))
    draw.rectangle((0, 0, 2000, 2000), fill=(0, 0, 0, 0))
    path = _save(image, tmp_path / "large.png", compress_level=1)
    del image, draw

    growth, data = _peak_rss_of_decoding(path)
    assert data["size"] == [462, 462] and data["mode"] == "RGB"  # 1/13
    # one frame (4 bytes a pixel) and change; converting at full size
    # first, as before, took ~23 bytes a pixel (830 MB here)
    frame = 4 * side * side
    assert growth < 1.6 * frame, f"{growth / 1e6:.0f} MB"


# --- refusals and broken files ---------------------------------------------


# --- refusals and broken files ---------------------------------------------


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    path = _save(Image.new("L", (1200, 1000)), tmp_path / "big.png")
    assert _reason(path, max_pixels=1_000_000) == (
        "image too large: 1200x1000 pixels > limit 1000000 (1 MP); raise "
        "the limit with FIFTYONE_AI_SEARCH_MAX_IMAGE_PIXELS"
    )
    assert load_image(path, max_pixels=1_200_000).size == (1200, 1000)

    # by default, from the environment
    monkeypatch.setenv(LIMIT_VARIABLE, "1100000")
    assert "> limit 1100000 (1.1 MP)" in _reason(path)
    monkeypatch.setenv(LIMIT_VARIABLE, "1200000")
    assert load_image(path).size == (1200, 1000)

    monkeypatch.setenv(LIMIT_VARIABLE, "lots")
    with pytest.raises(ValueError, match=LIMIT_VARIABLE):
        load_image(path)


def test_byte_limit_and_decode_timeout_are_configurable(tmp_path,
                                                        monkeypatch):
    path = _save(Image.fromarray(_gradient()), tmp_path / "small.png")
    size = os.path.getsize(path)
    assert _reason(path, max_bytes=size - 1) == (
        f"file too large: {size} bytes > limit {size - 1}; raise the limit "
        "with FIFTYONE_AI_SEARCH_MAX_IMAGE_BYTES")
    assert load_image(path, max_bytes=size).size == (64, 48)
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_MAX_IMAGE_BYTES", str(size - 1))
    assert "file too large" in _reason(path)
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_MAX_IMAGE_BYTES", "1_048_576")
    assert load_image(path).size == (64, 48)
    assert images.DEFAULT_MAX_BYTES == 1 << 30
    assert images.DEFAULT_TIMEOUT == 60

    # a bad value fails where it is read, naming the variable
    for name, bad in (("MAX_IMAGE_BYTES", "0"), ("DECODE_TIMEOUT", "-1"),
                      ("DECODE_TIMEOUT", "nan"), ("DECODE_TIMEOUT", "soon")):
        monkeypatch.setenv("FIFTYONE_AI_SEARCH_" + name, bad)
        with pytest.raises(ValueError, match="FIFTYONE_AI_SEARCH_" + name):
            load_image(path)
        monkeypatch.delenv("FIFTYONE_AI_SEARCH_" + name)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_default_pixel_limit(tmp_path, monkeypatch):
    monkeypatch.delenv(LIMIT_VARIABLE, raising=False)
    assert DEFAULT_MAX_PIXELS == 100_000_000
    path = _png_header_only(tmp_path / "huge.png", 13000, 13000)
    assert _reason(path) == (
        "image too large: 13000x13000 pixels > limit 100000000 (100 MP); "
        "raise the limit with FIFTYONE_AI_SEARCH_MAX_IMAGE_PIXELS"
    )


def test_jpeg_limit_counts_the_pixels_decoded(large_jpeg):
    # 4000x3000 stored, 1000x750 decoded at 1/4
    assert load_image(large_jpeg, draft_size=448, max_pixels=800_000).size == (
        1000, 750)
    assert _reason(large_jpeg, draft_size=448, max_pixels=700_000) == (
        "image too large: 4000x3000 pixels, 1000x750 at reduced size > limit "
        "700000 (0.7 MP); raise the limit with "
        "FIFTYONE_AI_SEARCH_MAX_IMAGE_PIXELS"
    )
    assert "4000x3000 pixels > limit" in _reason(
        large_jpeg, max_pixels=800_000)


def test_a_refused_image_fails_its_sample_not_the_batch(
    tmp_path, monkeypatch
):
    monkeypatch.setenv(LIMIT_VARIABLE, "1000000")
    big = _save(Image.new("RGBA", (1500, 1000)), tmp_path / "big.png")
    small = _save(Image.fromarray(_gradient()), tmp_path / "small.png")
    recipe = Recipe((("resize", 32, None, "bicubic"),
                     ("center_crop", 32, 32), ("rgb",), ("to_array",)))

    keys, pixels, failures = Decoder(recipe, draft_size=64).decode(
        [("big", big), ("small", small)]
    )
    assert keys == ["small"] and pixels.shape == (1, 3, 32, 32)
    assert failures == {
        "big": "image too large: 1500x1000 pixels > limit 1000000 (1 MP); "
        "raise the limit with FIFTYONE_AI_SEARCH_MAX_IMAGE_PIXELS"
    }


def test_header_bomb_is_refused_whatever_pil_says(tmp_path, monkeypatch):
    path = _png_header_only(tmp_path / "bomb.png", 30000, 30000)
    before = Image.MAX_IMAGE_PIXELS

    # PIL's own check refuses it first
    reason = _reason(path)
    assert reason == (
        "image too large: 900000000 pixels > limit 178956970 (Pillow's "
        "decompression bomb limit: twice PIL.Image.MAX_IMAGE_PIXELS)"
    )

    # with PIL's check switched off, ours still holds
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert _reason(path).startswith(
        f"image too large: 30000x30000 pixels > limit {DEFAULT_MAX_PIXELS} "
    )
    monkeypatch.undo()
    assert Image.MAX_IMAGE_PIXELS == before


def test_missing_empty_directory_and_not_an_image(tmp_path):
    assert _reason(str(tmp_path / "missing.jpg")) == "file not found"

    (tmp_path / "empty.jpg").write_bytes(b"")
    assert _reason(str(tmp_path / "empty.jpg")) == "empty file"

    (tmp_path / "dir.jpg").mkdir()
    assert _reason(str(tmp_path / "dir.jpg")) == "not a file"

    (tmp_path / "text.jpg").write_text("this is not an image\n")
    assert (
        _reason(str(tmp_path / "text.jpg"))
        == "not an image (cannot identify image file)"
    )


@pytest.mark.parametrize(
    "ext,keep", [("jpg", 0.5), ("jpg", 0.98), ("png", 0.5)]
)
def test_truncated_files_fail(tmp_path, ext, keep):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    path = _save(Image.fromarray(noise), tmp_path / f"full.{ext}")
    data = open(path, "rb").read()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: int(len(data) * keep)])

    assert _reason(str(cut)) == "truncated image"
    # also with draft decoding
    assert _reason(str(cut), draft_size=64) == "truncated image"


def test_truncated_header_is_not_an_image(tmp_path):
    path = _save(Image.fromarray(_gradient()), tmp_path / "a.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(open(path, "rb").read()[:20])
    assert _reason(str(cut)).startswith(("not an image", "truncated image"))
