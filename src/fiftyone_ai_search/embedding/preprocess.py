"""open_clip's evaluation transform as plain data, run with PIL and numpy.

Decoding workers are fresh processes. Running open_clip's own transform (a
torchvision ``Compose``) there means importing torch, torchvision and
open_clip first: ~5 s of CPU per worker on a small machine, paid by every
run that starts workers (a background sync always does). The transforms
open_clip builds for inference are a handful of PIL operations and two
arithmetic steps, so :func:`recipe_of` reads them into a :class:`Recipe` that
needs only PIL and numpy, and gives the same array as the transform (equal
to float32 rounding; ``tests/test_preprocess.py`` checks it).

A transform with any step this module does not know (a custom callable,
``ResizeKeepRatio``...) has no recipe; the pipeline then runs the transform
itself.

Example::

    from fiftyone_ai_search.embedding.model import load_model, resolve_model
    from fiftyone_ai_search.embedding.preprocess import recipe_of

    model = load_model(resolve_model("ViT-B-32", "laion2b_s34b_b79k"))
    recipe = recipe_of(model.preprocess)
    pixels = recipe(image)  # float32, shape (3, 224, 224)
"""

import dataclasses

import numpy as np
from PIL import Image

# torchvision InterpolationMode values -> PIL resampling filters
_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A transform's steps, each a tuple ``(name, *arguments)``:

    - ``("resize", size, max_size, filter)``: torchvision ``Resize`` of a PIL
      image: ``size`` an int (the shorter side) or ``(height, width)``;
    - ``("center_crop", height, width)``: torchvision ``CenterCrop``, padding
      with black where the image is smaller;
    - ``("rgb",)``: ``image.convert("RGB")``;
    - ``("to_array",)``: torchvision ``ToTensor``: float32 in [0, 1], CHW;
    - ``("normalize", mean, std)``: per channel ``(x - mean) / std``.

    Calling a recipe on a PIL image returns a float32 array.
    """

    steps: tuple

    def __call__(self, image):
        value = image
        for name, *args in self.steps:
            value = _STEPS[name](value, *args)

        return np.asarray(value, dtype=np.float32)


def recipe_of(transform):
    """Reads a torchvision transform into a :class:`Recipe`.

    Args:
        transform: a callable, usually open_clip's ``preprocess``

    Returns:
        a :class:`Recipe`, or None if a step is not one this module knows
        or its arguments are not plain (e.g. a tensor ``size``)
    """
    parts = getattr(transform, "transforms", [transform])
    steps = []
    for part in parts:
        step = _read_step(part)
        if step is None:
            return None

        steps.append(step)

    # PIL steps, then the array step, then arithmetic: any other order
    # would need torch
    names = [s[0] for s in steps]
    if names.count("to_array") != 1:
        return None

    cut = names.index("to_array")
    before, after = set(names[:cut]), set(names[cut + 1:])
    if not (before <= _IMAGE_STEPS and after <= _ARRAY_STEPS):
        return None

    return Recipe(tuple(steps))


def _read_step(part):
    # open_clip's older transforms convert with a plain function
    if getattr(part, "__name__", None) == "_convert_to_rgb" and (
        getattr(part, "__module__", "") or ""
    ).startswith("open_clip"):
        return ("rgb",)

    if not type(part).__module__.startswith(("torchvision.", "open_clip.")):
        return None

    name = type(part).__name__
    try:
        if name == "Resize":
            return _read_resize(part)
        if name == "CenterCrop":
            height, width = (int(v) for v in part.size)
            return ("center_crop", height, width)
        if name == "MaybeConvertMode" and part.mode == "RGB":
            return ("rgb",)
        if name in ("ToTensor", "MaybeToTensor"):
            return ("to_array",)
        if name == "Normalize" and not part.inplace:
            mean = tuple(float(v) for v in part.mean)
            std = tuple(float(v) for v in part.std)
            if len(mean) == len(std) == 3:
                return ("normalize", mean, std)
    except (AttributeError, TypeError, ValueError):
        return None

    return None


def _read_resize(part):
    interpolation = getattr(part.interpolation, "value", part.interpolation)
    if interpolation not in _FILTERS:
        return None

    size = part.size
    if isinstance(size, int):
        pass
    elif len(size) == 1:
        size = int(size[0])
    elif len(size) == 2:
        size = (int(size[0]), int(size[1]))
    else:
        return None

    max_size = None if part.max_size is None else int(part.max_size)
    return ("resize", size, max_size, interpolation)


# -- the steps, as torchvision computes them for PIL images ------------------


def _resize(image, size, max_size, interpolation):
    width, height = image.size
    if isinstance(size, int):
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size, int(size * long / short)
        if max_size is not None and new_long > max_size:
            new_short, new_long = int(max_size * new_short / new_long), max_size

        new_width, new_height = (
            (new_short, new_long) if width <= height else (new_long, new_short)
        )
    else:
        new_height, new_width = size

    if (new_width, new_height) == (width, height):
        return image

    return image.resize((new_width, new_height), _FILTERS[interpolation])


def _center_crop(image, height, width):
    image_width, image_height = image.size
    if width > image_width or height > image_height:
        # torchvision pads with black first, left/top getting the smaller half
        padded = Image.new(
            image.mode, (max(width, image_width), max(height, image_height))
        )
        left = (width - image_width) // 2 if width > image_width else 0
        top = (height - image_height) // 2 if height > image_height else 0
        padded.paste(image, (left, top))
        image = padded
        image_width, image_height = image.size
        if (image_width, image_height) == (width, height):
            return image

    top = int(round((image_height - height) / 2.0))
    left = int(round((image_width - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def _rgb(image):
    return image.convert("RGB")


def _to_array(image):
    if image.mode != "RGB":
        # ToTensor keeps other modes' channels; the model takes 3
        raise ValueError(f"expected an RGB image, got mode {image.mode}")

    array = np.asarray(image, dtype=np.uint8)
    return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32) / (
        np.float32(255)
    )


def _normalize(array, mean, std):
    mean = np.asarray(mean, dtype=np.float32)[:, None, None]
    std = np.asarray(std, dtype=np.float32)[:, None, None]
    return (array - mean) / std


_IMAGE_STEPS = {"resize", "center_crop", "rgb"}
_ARRAY_STEPS = {"normalize"}

_STEPS = {
    "resize": _resize,
    "center_crop": _center_crop,
    "rgb": _rgb,
    "to_array": _to_array,
    "normalize": _normalize,
}
