"""Image decoding for the embedding pipeline.

:func:`load_image` turns any file PIL can read into an RGB image the model can
take: EXIF orientation applied, every mode converted to 8-bit RGB, large JPEGs
decoded at reduced size, decompression bombs refused. Every failure is an
:class:`ImageDecodeError` whose message is a short reason meant to be stored
with the sample.

Memory: decoding holds one full-size frame of the image (PIL keeps RGB and
RGBA at 4 bytes a pixel, L at 1) and little else: with a ``draft_size``, an
image is reduced by an integer factor right after decoding, before its mode
is converted, and modes whose conversion is not per-pixel linear (alpha,
palettes, 16-bit) are converted and reduced in strips, so no second
full-size copy is made. The pixel limit bounds that frame.
"""

import os
import re
import time

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..config import (
    DEFAULT_DECODE_TIMEOUT,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    ENV_PREFIX,
    decode_timeout,
    max_image_bytes,
    max_image_pixels,
)
from ..errors import ImageDecodeError

#: largest image decoded by default, in pixels (width x height, after JPEG
#: draft decoding), overridden by ``FIFTYONE_AI_SEARCH_MAX_IMAGE_PIXELS``.
#: The model sees 224 x 224 pixels; what decoding costs is one full-size
#: frame, ~400 MB at this limit for RGB(A) (a 13000 x 13000 RGBA PNG took
#: 3.9 GB before decoding was bounded), so several decoding workers on a
#: laptop stay within a few GB even when they all meet such an image at once.
#: It admits 10000 x 10000 scans and stitched images, and JPEGs of any
#: camera (drafted to 1/8 scale, they are decoded far below it). It is
#: enforced whatever the process-wide ``Image.MAX_IMAGE_PIXELS``
DEFAULT_MAX_PIXELS = DEFAULT_MAX_IMAGE_PIXELS

#: largest image file read by default, in bytes (1 GiB), overridden by
#: ``FIFTYONE_AI_SEARCH_MAX_IMAGE_BYTES``: a larger file fails at once,
#: unread. An image within the pixel limit stored uncompressed takes at most
#: 800 MB (16-bit RGBA); a JPEG header followed by 2 GB of zeros took ~8
#: min to fail, stalling its whole sync
DEFAULT_MAX_BYTES = DEFAULT_MAX_IMAGE_BYTES

#: most seconds one image may take to decode by default, overridden by
#: ``FIFTYONE_AI_SEARCH_DECODE_TIMEOUT``; checked at each read of the file
#: (PIL reads it in blocks of at most 64 KiB as it decodes, a byte at a time
#: where it scans for JPEG markers), so a file that keeps the decoder busy
#: fails its sample rather than stalling the sync. An image within the
#: limits decodes in well under a second
DEFAULT_TIMEOUT = DEFAULT_DECODE_TIMEOUT

# pixels of the strips in which large images are converted and reduced
_STRIP_PIXELS = 1 << 20

# modes that reduce() averages as they are and that to_rgb() converts
# pixel by pixel (or with one image-wide scale): reduced before converting
_REDUCE_FIRST_MODES = ("RGB", "L", "I", "F")

# EXIF orientation -> the transposition that displays the image upright
# (as PIL.ImageOps.exif_transpose)
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# PIL modes that hold more than 8 bits per sample
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")

# modes whose last band is alpha ("a" modes are premultiplied)
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")

_BACKGROUND = (255, 255, 255)


class _BoundedFile:
    """A file that PIL reads through, with a deadline: a read past it
    raises :class:`ImageDecodeError`. Everything but ``read`` is the
    file's."""

    def __init__(self, fp, timeout):
        self._fp = fp
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout

    def read(self, size=-1):
        if time.monotonic() > self._deadline:
            raise ImageDecodeError(
                f"decoding took more than {self._timeout:g} s (the limit), "
                f"{self._fp.tell()} bytes read; raise the limit with "
                f"{ENV_PREFIX}DECODE_TIMEOUT")
        return self._fp.read(size)

    def __getattr__(self, name):
        return getattr(self._fp, name)


def load_image(filepath, draft_size=None, max_pixels=None, max_bytes=None,
               timeout=None):
    """Loads an image file as an 8-bit RGB image.

    Args:
        filepath: the path of the image file
        draft_size (None): an int or ``(width, height)``: the smallest size
            the decoded image may have. JPEGs are then decoded at 1/2, 1/4 or
            1/8 scale (PIL ``draft``), and any image is then reduced by an
            integer factor (box average), while both sides stay at least this
            large. None decodes at full size
        max_pixels (None): refuse images with more pixels than this (width x
            height as decoded: after JPEG draft decoding). Defaults to
            ``FIFTYONE_AI_SEARCH_MAX_IMAGE_PIXELS`` or
            :data:`DEFAULT_MAX_PIXELS`
        max_bytes (None): refuse files larger than this, unread. Defaults
            to ``FIFTYONE_AI_SEARCH_MAX_IMAGE_BYTES`` or
            :data:`DEFAULT_MAX_BYTES`
        timeout (None): give up after this many seconds of decoding.
            Defaults to ``FIFTYONE_AI_SEARCH_DECODE_TIMEOUT`` or
            :data:`DEFAULT_TIMEOUT`

    Returns:
        a loaded ``PIL.Image.Image`` in mode ``"RGB"``

    Raises:
        ImageDecodeError: if the file cannot be read as an image
    """
    if max_pixels is None:
        max_pixels = max_image_pixels()
    if max_bytes is None:
        max_bytes = max_image_bytes()
    if timeout is None:
        timeout = decode_timeout()

    _check_file(filepath, max_bytes)

    try:
        with open(filepath, "rb") as fp:
            image = _open(_BoundedFile(fp, timeout))
            stored = image.size
            if draft_size is not None:
                _draft(image, draft_size)
            _check_pixels(stored, max_pixels, decoded=image.size)

            image.load()
            orientation = _orientation(image)
            if draft_size is not None:
                image = _reduce(image, draft_size)
            return _orient(to_rgb(image), orientation)
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except PermissionError:
        raise ImageDecodeError("permission denied") from None
    except Image.DecompressionBombError as e:
        # PIL's own process-wide limit was lower than ours
        raise ImageDecodeError(_describe_bomb(e)) from None
    except MemoryError:
        raise ImageDecodeError("image too large: out of memory") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError...
        raise ImageDecodeError(_describe(e)) from None


def to_rgb(image):
    """Converts an image of any PIL mode to 8-bit RGB.

    Transparent pixels are composited on white; 16-bit, 32-bit integer and
    float images are scaled to 8 bits (see :func:`_high_depth_to_l`) rather
    than clipped as PIL's ``convert("RGB")`` does.

    Args:
        image: a ``PIL.Image.Image``

    Returns:
        a ``PIL.Image.Image`` in mode ``"RGB"``
    """
    mode = image.mode
    if mode == "RGB":
        return image

    if mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_l(image).convert("RGB")

    if mode in _ALPHA_MODES or "transparency" in image.info:
        # Pixels under full transparency hold arbitrary colours (often black),
        # which would otherwise leak into the embedding. Pasting through the
        # alpha band composites in place: one full-size copy, not four
        rgba = image if mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _BACKGROUND)
        background.paste(rgba, (0, 0), rgba)
        return background

    return image.convert("RGB")


def _high_depth_to_l(image):
    """Scales a high-depth single-band image to mode ``"L"``.

    16-bit data (``I;16*``, or ``I`` within 0-65535) maps 0-65535 onto 0-255,
    integer data within 0-255 is kept, floats within 0-1 map onto 0-255, and
    anything else is stretched from its minimum to its maximum.
    """
    values = np.asarray(image).astype(np.float64)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low = float(values.min()) if values.size else 0.0
    high = float(values.max()) if values.size else 0.0

    if image.mode.startswith("I;16"):
        scaled = values / 257.0
    elif image.mode == "F" and low >= 0.0 and high <= 1.0:
        scaled = values * 255.0
    elif low >= 0.0 and high <= 255.0:
        scaled = values
    elif image.mode == "I" and low >= 0.0 and high <= 65535.0:
        scaled = values / 257.0
    else:
        span = high - low
        scaled = (values - low) * (255.0 / span) if span > 0 else values * 0.0

    pixels = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="L")


def _check_file(filepath, max_bytes):
    try:
        size = os.stat(filepath).st_size
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except PermissionError:
        raise ImageDecodeError("permission denied") from None
    except OSError as e:
        reason = f"cannot read file: {e.strerror or e}"
        raise ImageDecodeError(reason) from None

    if not os.path.isfile(filepath):
        raise ImageDecodeError("not a file")

    if size == 0:
        raise ImageDecodeError("empty file")

    if size > max_bytes:
        raise ImageDecodeError(
            f"file too large: {size} bytes > limit {max_bytes}"
            f"{_mebibytes(max_bytes)}; raise the limit with "
            f"{ENV_PREFIX}MAX_IMAGE_BYTES"
        )


def _mebibytes(size):
    return f" ({size / (1 << 20):.0f} MiB)" if size >= 1 << 20 else ""


def _open(fp):
    try:
        return Image.open(fp)
    except UnidentifiedImageError:
        raise ImageDecodeError(
            "not an image (cannot identify image file)"
        ) from None


def _check_pixels(size, max_pixels, decoded=None):
    width, height = size
    if width < 1 or height < 1:
        # PIL reads none that we know of, but the model's resize would
        # divide by zero on one
        raise ImageDecodeError(f"empty image: {width}x{height} pixels")
    decoded_width, decoded_height = decoded or size
    if decoded_width * decoded_height > max_pixels:
        at = (
            "" if (decoded_width, decoded_height) == (width, height)
            else f", {decoded_width}x{decoded_height} at reduced size"
        )
        raise ImageDecodeError(
            f"image too large: {width}x{height} pixels{at} > limit "
            f"{max_pixels} ({_megapixels(max_pixels)}); raise the limit with "
            f"{ENV_PREFIX}MAX_IMAGE_PIXELS"
        )


def _megapixels(pixels):
    return f"{pixels / 1e6:.3g} MP"


def _draft(image, draft_size):
    if isinstance(draft_size, int):
        draft_size = (draft_size, draft_size)

    # Only JPEG implements draft; elsewhere it is a no-op. Keeping the mode
    # leaves colour conversion to to_rgb()
    image.draft(image.mode, tuple(int(s) for s in draft_size))


def _reduce(image, draft_size):
    """``image`` reduced by the largest integer factor that keeps both sides
    at least ``draft_size``; modes outside :data:`_REDUCE_FIRST_MODES` come
    back in RGB, converted strip by strip."""
    if isinstance(draft_size, int):
        draft_size = (draft_size, draft_size)

    width, height = image.size
    factor = min(width // max(1, int(draft_size[0])),
                 height // max(1, int(draft_size[1])))
    if factor < 2:
        return image

    if image.mode in _REDUCE_FIRST_MODES and "transparency" not in image.info:
        return image.reduce(factor)

    # Converting first would make full-size copies (RGBA -> composite, P ->
    # RGB...), and reducing first would average colours hidden under
    # transparency or palette indices: convert and reduce strip by strip.
    # Strips are a whole number of blocks high, so this equals reducing the
    # converted image
    reduced = Image.new(
        "RGB", (-(-width // factor), -(-height // factor))
    )
    rows = max(1, _STRIP_PIXELS // (width * factor)) * factor
    for top in range(0, height, rows):
        strip = image.crop((0, top, width, min(height, top + rows)))
        reduced.paste(to_rgb(strip).reduce(factor), (0, top // factor))
    return reduced


def _orientation(image):
    """The image's EXIF orientation (1 when it has none)."""
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:
        # A broken EXIF block does not make the pixels unusable
        return 1


def _orient(image, orientation):
    """``image`` turned upright for an EXIF ``orientation``."""
    method = _ORIENTATIONS.get(orientation)
    return image if method is None else image.transpose(method)


def _describe_bomb(error):
    match = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(error))
    if match is None:
        return f"image too large: {error}"

    return (
        f"image too large: {match[1]} pixels > limit {match[2]} (Pillow's "
        "decompression bomb limit: twice PIL.Image.MAX_IMAGE_PIXELS)"
    )


def _describe(error):
    message = str(error)
    if "truncated" in message.lower():
        return "truncated image"

    if message:
        return f"cannot decode image: {message}"

    return f"cannot decode image: {type(error).__name__}"
