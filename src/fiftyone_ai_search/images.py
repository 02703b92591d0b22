"""Image decoding for the embedding pipeline.

:func:`load_image` turns any file PIL can read into an RGB image the model can
take: EXIF orientation applied, every mode converted to 8-bit RGB, large JPEGs
decoded at reduced size, decompression bombs refused. Every failure is an
:class:`ImageDecodeError` whose message is a short reason meant to be stored
with the sample.
"""

import os
import re

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import AISearchError

#: largest image (width x height) decoded by default. It equals the size at
#: which PIL itself raises ``DecompressionBombError`` with its own defaults,
#: but is enforced here whatever the process-wide ``Image.MAX_IMAGE_PIXELS``
DEFAULT_MAX_PIXELS = 178_956_970

# PIL modes that hold more than 8 bits per sample
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")

# modes whose last band is alpha ("a" modes are premultiplied)
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")

_BACKGROUND = (255, 255, 255)


class ImageDecodeError(AISearchError):
    """An image file could not be decoded.

    ``str(error)`` (also ``error.reason``) is a short human reason, e.g.
    ``"file not found"`` or ``"truncated image"``.

    Args:
        reason: the reason
    """

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def load_image(filepath, draft_size=None, max_pixels=None):
    """Loads an image file as an 8-bit RGB image.

    Args:
        filepath: the path of the image file
        draft_size (None): an int or ``(width, height)``: the smallest size
            the decoded image may have. JPEGs are then decoded at 1/2, 1/4 or
            1/8 scale (PIL ``draft``) while both sides stay at least this
            large. None decodes at full size
        max_pixels (None): refuse images with more pixels than this (width x
            height as stored in the file). Defaults to
            :data:`DEFAULT_MAX_PIXELS`

    Returns:
        a loaded ``PIL.Image.Image`` in mode ``"RGB"``

    Raises:
        ImageDecodeError: if the file cannot be read as an image
    """
    if max_pixels is None:
        max_pixels = DEFAULT_MAX_PIXELS

    _check_file(filepath)

    try:
        with open(filepath, "rb") as fp:
            image = _open(fp)
            _check_pixels(image.size, max_pixels)
            if draft_size is not None:
                _draft(image, draft_size)

            image.load()
            return to_rgb(_apply_orientation(image))
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
        # which would otherwise leak into the embedding
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")

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


def _check_file(filepath):
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


def _open(fp):
    try:
        return Image.open(fp)
    except UnidentifiedImageError:
        raise ImageDecodeError(
            "not an image (cannot identify image file)"
        ) from None


def _check_pixels(size, max_pixels):
    width, height = size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image too large: {width}x{height} pixels > limit {max_pixels}"
        )


def _draft(image, draft_size):
    if isinstance(draft_size, int):
        draft_size = (draft_size, draft_size)

    # Only JPEG implements draft; elsewhere it is a no-op. Keeping the mode
    # leaves colour conversion to to_rgb()
    image.draft(image.mode, tuple(int(s) for s in draft_size))


def _apply_orientation(image):
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        # A broken EXIF block does not make the pixels unusable
        return image


def _describe_bomb(error):
    match = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(error))
    if match is None:
        return f"image too large: {error}"

    return f"image too large: {match[1]} pixels > limit {match[2]}"


def _describe(error):
    message = str(error)
    if "truncated" in message.lower():
        return "truncated image"

    if message:
        return f"cannot decode image: {message}"

    return f"cannot decode image: {type(error).__name__}"
