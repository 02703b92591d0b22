"""The geometry of object crops: which pixels of an image an object's
embedding sees.

A box is FiftyOne's relative ``[x, y, width, height]`` (top-left corner,
width and height, as fractions of the image's width and height). The region
cropped for it follows FiftyOne's patch extraction
(``fiftyone.utils.patches.extract_patch(img, detection, force_square=square,
alpha=margin)``), so that an object's crop is the patch the App shows for
it; see :class:`CropSettings` for the rule.

This module imports only the standard library: it runs in the decoding
workers (:mod:`fiftyone_ai_search.embedding.pipeline`).
"""

import dataclasses
import math
import numbers

from ..errors import CropError

# Pixel coordinates within this of an integer count as that integer: a box
# stored as 0.29 on a 100-pixel side (28.999999999999996 pixels) starts at
# pixel 29, not 28
_PIXEL_NOISE = 1e-6

# Decimals a box fingerprint keeps: float noise below them is no move
_FINGERPRINT_DECIMALS = 6


@dataclasses.dataclass(frozen=True)
class CropSettings:
    """How an object's box becomes the pixels its embedding sees.

    For a box ``[x, y, w, h]`` in an image of ``W x H`` pixels:

    1.  The box is clamped to the image: ``[x, x + w] x [y, y + h]``
        intersected with ``[0, 1] x [0, 1]``.
    2.  Each side grows by ``margin`` times the clamped box's length along
        it, half on each end (``margin=0.1`` makes a 100-pixel-wide box 110
        pixels wide), and the result is clamped to the image again.
    3.  Its corners become pixels: ``left = floor(x0 * W)``,
        ``right = floor(x1 * W)`` (likewise top and bottom; right and bottom
        are exclusive), and a box thinner than one pixel is widened to one.
    4.  If ``square``, the box is minimally made square: its shorter side
        grows to the longer one, split evenly between both ends (the extra
        pixel of an odd difference at the far end), and is shifted back
        inside the image where it would cross an edge. If the image is too
        narrow (or short) for that square, the square's side is the
        image's width (height) instead, and the longer side shrinks to it,
        evenly from both ends: the part of the box that the model's centre
        crop would keep anyway.

    Steps 2-4 are FiftyOne's ``BoundingBox.pad_relative(margin)`` and
    ``BoundingBox.extract_from(img, force_square=square)``: the crop is the
    patch FiftyOne extracts, except that step 3 ignores float noise below
    1e-6 pixels where FiftyOne truncates it (at most one pixel of
    difference), and a box thinner than one pixel still gets one.

    The default margin, 0.5 (a quarter of the box's side of context on each
    end), was chosen by measurement (``tests/test_scenes.py``'s world, the
    bundled tiny CLIP, prompt precision@10 over 30 classes): 0.69 at
    margin 0.1, 0.95 at 0.25, 1.00 (every class) at 0.5 and 1.0; tight
    crops lose what tells an object from its look-alikes, and context of
    more than the object's own size lets its neighbours in. FiftyOne's
    patch embeddings default to no margin (``alpha=None``).

    Args:
        margin (0.5): the growth of each side, relative to its length; a
            finite number >= 0
        square (True): whether crops are made square. The model's transform
            resizes the shorter side and centre-crops the longer one, so a
            non-square crop of an elongated object loses its ends
    """

    margin: float = 0.5
    square: bool = True

    def __post_init__(self):
        margin = self.margin
        if (
            isinstance(margin, bool)
            or not isinstance(margin, numbers.Real)
            or not math.isfinite(margin)
            or margin < 0
        ):
            raise ValueError(
                f"margin must be a finite number >= 0, got {margin!r}"
            )

        if not isinstance(self.square, bool):
            raise ValueError(f"square must be a bool, got {self.square!r}")

        # Frozen: the stored value is a plain float whatever the input
        object.__setattr__(self, "margin", float(margin))

    def to_dict(self) -> dict:
        """Returns the settings as a JSON-serialisable dict."""
        return {"margin": self.margin, "square": self.square}

    @classmethod
    def from_dict(cls, d: dict) -> "CropSettings":
        """Builds settings from :meth:`to_dict`'s output; missing keys take
        their defaults.

        Raises:
            ValueError: on unknown keys (settings of another rule) or
                invalid values
        """
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(
                f"unknown crop settings: {', '.join(sorted(unknown))}"
            )

        return cls(**d)


def relative_box(box, settings: CropSettings) -> tuple:
    """The region of a box before it is made square: steps 1 and 2 of
    :class:`CropSettings`, in relative coordinates.

    Args:
        box: a relative ``[x, y, width, height]``
        settings: a :class:`CropSettings`

    Returns:
        ``(x0, y0, x1, y1)``, within ``[0, 1]``, with ``x0 <= x1`` and
        ``y0 <= y1`` (equal only for a side below float precision)

    Raises:
        CropError: if ``box`` is not 4 finite numbers, has a width or height
            <= 0 or lies entirely outside the image
    """
    x, y, w, h = _numbers(box)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise CropError(f"box is not 4 finite numbers: {_show(box)}")

    if w <= 0 or h <= 0:
        side = "width" if w <= 0 else "height"
        raise CropError(f"box has {side} <= 0: {_show(box)}")

    if x >= 1 or y >= 1 or x + w <= 0 or y + h <= 0:
        raise CropError(f"box lies outside the image: {_show(box)}")

    x0, x1 = _grow(_clamp(x), _clamp(x + w), settings.margin)
    y0, y1 = _grow(_clamp(y), _clamp(y + h), settings.margin)
    return x0, y0, x1, y1


def pixel_box(box, width: int, height: int, settings: CropSettings) -> tuple:
    """The pixels of an image that a box's crop covers (see
    :class:`CropSettings` for the rule).

    Args:
        box: a relative ``[x, y, width, height]``, as FiftyOne stores
            ``Detection.bounding_box``
        width: the image's width in pixels
        height: the image's height in pixels
        settings: a :class:`CropSettings`

    Returns:
        ``(left, top, right, bottom)`` ints, right and bottom exclusive (as
        ``PIL.Image.crop`` takes them), at least 1 pixel wide and high

    Raises:
        CropError: if ``box`` is not 4 finite numbers, has a width or height
            <= 0 or lies entirely outside the image
    """
    if width < 1 or height < 1:
        raise ValueError(f"empty image: {width}x{height} pixels")

    x0, y0, x1, y1 = relative_box(box, settings)
    left, right = _pixels(x0, x1, width)
    top, bottom = _pixels(y0, y1, height)
    if settings.square:
        left, top, right, bottom = _square(
            left, top, right, bottom, width, height
        )

    return left, top, right, bottom


def box_fingerprint(box) -> str:
    """A stable string of a box, rounded to 1e-6, for telling whether an
    object moved: float noise (a box read back as float32, or recomputed)
    does not change it.

    Every value has one, valid boxes or not, so that a bad box fails
    (when it is embedded) rather than the bookkeeping, and counts as moved
    once it is fixed: non-finite numbers read ``nan``, ``inf``, and what is
    not 4 numbers reads ``"invalid:"`` and its (shortened) ``repr``.

    Args:
        box: a relative ``[x, y, width, height]``

    Returns:
        a string such as ``"0.100000,0.200000,0.300000,0.400000"``
    """
    try:
        values = _numbers(box)
    except CropError:
        return "invalid:" + _show(box)

    return ",".join(_fingerprint_number(v) for v in values)


def _numbers(box):
    """``box`` as 4 floats, or a CropError."""
    try:
        values = list(box)
    except TypeError:
        values = None

    if (
        values is None
        or len(values) != 4
        or not all(_is_number(v) for v in values)
    ):
        raise CropError(f"box is not 4 finite numbers: {_show(box)}")

    return [float(v) for v in values]


def _is_number(value):
    # numpy scalars are numbers.Real; True is not a coordinate
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _show(box):
    # FiftyOne's BaseList reprs as a plain list
    text = repr(list(box)) if isinstance(box, (list, tuple)) else repr(box)
    return text if len(text) <= 80 else text[:77] + "..."


def _fingerprint_number(value):
    text = f"{value:.{_FINGERPRINT_DECIMALS}f}"
    # -1e-9 and 1e-9 are the same position
    return text.lstrip("-") if float(text) == 0 else text


def _clamp(value):
    return min(1.0, max(0.0, value))


def _grow(start, stop, margin):
    """``[start, stop]`` grown by ``margin`` x its length, half on each end,
    clamped to ``[0, 1]`` (FiftyOne's ``pad_relative``)."""
    pad = 0.5 * margin * (stop - start)
    return _clamp(start - pad), _clamp(stop + pad)


def _pixels(start, stop, size):
    """Relative ``[start, stop]`` as pixels ``[first, end)`` of a side of
    ``size`` pixels, at least one pixel long."""
    first = min(size - 1, math.floor(start * size + _PIXEL_NOISE))
    end = min(size, math.floor(stop * size + _PIXEL_NOISE))
    return first, max(end, first + 1)


def _square(left, top, right, bottom, width, height):
    """The box minimally made square inside a ``width x height`` image
    (FiftyOne's ``eta.core.geometry._make_square``)."""
    box_width, box_height = right - left, bottom - top
    if box_width <= box_height:
        side = min(box_height, width)
        left, right = _resize(left, right, side, width)
        top, bottom = _resize(top, bottom, side, height)
    else:
        side = min(box_width, height)
        top, bottom = _resize(top, bottom, side, height)
        left, right = _resize(left, right, side, width)

    return left, top, right, bottom


def _resize(start, stop, length, limit):
    """``[start, stop)`` grown or shrunk to ``length``, evenly on both ends
    (the far end takes the odd pixel), then shifted to stay in
    ``[0, limit)``."""
    change = length - (stop - start)
    near = int(0.5 * change)  # truncates towards zero, as FiftyOne's
    far = change - near
    start, stop = start - near, stop + far
    shift = max(0, -start) - max(0, stop - limit)
    return start + shift, stop + shift
