"""The synthetic "shapes" world: coloured shapes on grey backgrounds.

One small world serves three jobs, so that they can never drift apart:

-   the trainer (``tools/train_tiny_clip.py``) renders its training images and
    captions here,
-   :func:`make_shapes_dataset` writes the same kind of images to disk as a
    FiftyOne dataset for demos and tests,
-   the bundled tiny CLIP model (:data:`DEFAULT_MODEL_DIR`) understands
    exactly this world: prompts such as ``"a red circle"``,
    ``"something blue"`` or ``"a star"``.

Its "scenes" (:func:`make_scenes_dataset`) hold several such shapes an
image, each with a tight box, for object-level search: the tiny model
recognises crops of those boxes taken with context around them.

Every image is a pure function of ``(seed, index)``: its random numbers come
from ``numpy.random.default_rng([seed, index])``, so images can be rendered
in any order, in any number of processes, and come out the same.

Backgrounds are achromatic (grey levels, gradients, grey noise), so a
background never has the colour of any colour class.
"""

import dataclasses
import os

import numpy as np
from PIL import Image, ImageDraw

#: the shape classes
SHAPES = ("circle", "square", "triangle", "star", "cross")

#: the colour classes and their base RGB values; rendered colours are jittered
#: around these, never far enough to reach a neighbouring class
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
}

#: every ``(color, shape)`` class, in a fixed order
CLASSES = tuple((c, s) for s in SHAPES for c in COLORS)

#: the kinds of background an image may have
BACKGROUNDS = ("light", "dark", "noise", "gradient")

#: the bundled tiny CLIP model trained on this world
DEFAULT_MODEL_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "tiny_clip"
)

#: the smallest and largest shape size, as a fraction of the image side; the
#: tiny model sees 32 px images, where a smaller shape becomes a blob
MIN_SHAPE_FRACTION = 0.3
MAX_SHAPE_FRACTION = 0.6

_COLOR_JITTER = 20  # per RGB channel
_MAX_ROTATION = 20.0  # degrees; more would turn squares into diamonds
_SUPERSAMPLING = 2  # shape masks are drawn larger, then reduced: smooth edges
_REACH = 1.27  # how far any vertex may lie from a shape's centre, in radii

# caption templates. "{a}" is the article ("a" or "an") for the word after it
_COLOR_SHAPE_TEMPLATES = (
    "a photo of {a} {color} {shape}",
    "{a} {color} {shape}",
    "{color} {shape}",
    "a picture of {a} {color} {shape}",
    "an image of {a} {color} {shape}",
    "a drawing of {a} {color} {shape}",
    "{a} {shape} that is {color}",
    "a {shape} in {color}",
    "a small {color} {shape}",
    "a big {color} {shape}",
    "{color} {shapes}",
    "a photo of {color} {shapes}",
)
_COLOR_TEMPLATES = (
    "something {color}",
    "a photo of something {color}",
    "{a} {color} object",
    "{a} {color} thing",
    "{a} {color} shape",
    "{color}",
    "the color {color}",
    "{color} things",
)
_SHAPE_TEMPLATES = (
    "{a} {shape}",
    "a photo of {a} {shape}",
    "a picture of {a} {shape}",
    "a drawing of {a} {shape}",
    "{a} {shape} shape",
    "{shape}",
    "{shapes}",
    "a photo of {shapes}",
)


@dataclasses.dataclass(frozen=True)
class ShapeSpec:
    """Everything needed to draw one image.

    Args:
        shape: one of :data:`SHAPES`
        color: one of :data:`COLORS`
        rgb: the jittered RGB fill colour
        background: one of :data:`BACKGROUNDS`
        size: the shape's size as a fraction of the image side
        center: the shape's centre ``(x, y)`` as fractions of the image side
        rotation: the shape's rotation in degrees
    """

    shape: str
    color: str
    rgb: tuple
    background: str
    size: float
    center: tuple
    rotation: float

    @property
    def label(self):
        """The class label, e.g. ``"red circle"``."""
        return class_label(self.color, self.shape)


def class_label(color, shape):
    """Returns the class label of a colour and a shape, e.g. ``"red circle"``.

    Args:
        color: a colour name
        shape: a shape name

    Returns:
        a string
    """
    return f"{color} {shape}"


def prompt(color=None, shape=None):
    """Returns the canonical prompt for a colour, a shape, or both.

    Args:
        color (None): a colour name
        shape (None): a shape name

    Returns:
        a string such as ``"a photo of a red circle"``, ``"something red"``
        or ``"a photo of a circle"``
    """
    if color and shape:
        return _fill(_COLOR_SHAPE_TEMPLATES[0], color, shape)

    if color:
        return _fill(_COLOR_TEMPLATES[0], color, None)

    if shape:
        return _fill(_SHAPE_TEMPLATES[1], None, shape)

    raise ValueError("prompt() needs a color, a shape or both")


def captions(color=None, shape=None):
    """Returns every template caption for a colour, a shape, or both.

    Args:
        color (None): a colour name
        shape (None): a shape name

    Returns:
        a list of strings
    """
    if color and shape:
        templates = _COLOR_SHAPE_TEMPLATES
    elif color:
        templates = _COLOR_TEMPLATES
    elif shape:
        templates = _SHAPE_TEMPLATES
    else:
        raise ValueError("captions() needs a color, a shape or both")

    return [_fill(t, color, shape) for t in templates]


def all_captions():
    """Returns every caption of the world with what it asks for.

    Returns:
        a list of ``(caption, color or None, shape or None)`` tuples: first
        all colour+shape captions, then colour-only, then shape-only ones
    """
    result = []
    for color, shape in CLASSES:
        result.extend((c, color, shape) for c in captions(color, shape))

    for color in COLORS:
        result.extend((c, color, None) for c in captions(color=color))

    for shape in SHAPES:
        result.extend((c, None, shape) for c in captions(shape=shape))

    return result


def _fill(template, color, shape):
    # the article agrees with the word that follows "{a}"
    if "{a} {color}" in template:
        nxt = color
    elif "{a} {shape}" in template:
        nxt = shape
    else:
        nxt = ""

    article = "an" if nxt[:1] in ("a", "e", "i", "o", "u") else "a"
    return template.format(
        a=article, color=color, shape=shape, shapes=_plural(shape)
    )


def _plural(word):
    if word is None:
        return None

    return word + "es" if word.endswith(("s", "x", "ss")) else word + "s"


def sample_spec(seed, index, color=None, shape=None):
    """Draws the random description of image ``index`` of a seed.

    The class of image ``index`` is balanced: each consecutive block of
    ``len(CLASSES)`` indices holds every class once, in an order that depends
    on the seed.

    Args:
        seed: an integer
        index: the image's index, an integer >= 0
        color (None): force this colour instead of the balanced one
        shape (None): force this shape instead of the balanced one

    Returns:
        a :class:`ShapeSpec`
    """
    bal_color, bal_shape = _balanced_class(seed, index, stream=1)
    color = color or bal_color
    shape = shape or bal_shape
    if color not in COLORS:
        raise ValueError(f"Unknown color {color!r}; one of {list(COLORS)}")

    if shape not in SHAPES:
        raise ValueError(f"Unknown shape {shape!r}; one of {SHAPES}")

    rng = np.random.default_rng([seed, index, 0])
    rgb = _jittered_rgb(color, rng)
    size = float(rng.uniform(MIN_SHAPE_FRACTION, MAX_SHAPE_FRACTION))
    # keep the whole shape and a margin inside the image: a triangle's
    # vertex reaches up to 1.26 times the shape's radius from its centre
    reach = _REACH * size / 2 + 0.02
    lo, hi = reach, 1 - reach
    center = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
    rotation = float(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return ShapeSpec(
        shape=shape,
        color=color,
        rgb=rgb,
        background=background,
        size=size,
        center=center,
        rotation=rotation,
    )


def _balanced_class(seed, slot, stream):
    # each consecutive block of len(CLASSES) slots holds every class once, in
    # an order drawn from its own random stream
    block, pos = divmod(slot, len(CLASSES))
    order = np.random.default_rng([seed, block, stream]).permutation(len(CLASSES))
    return CLASSES[order[pos]]


def _jittered_rgb(color, rng):
    jitter = rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, size=3)
    return tuple(int(v) for v in np.clip(np.add(COLORS[color], jitter), 0, 255))


def render(spec, image_size=128, seed=0):
    """Draws a :class:`ShapeSpec` as a square RGB image.

    Args:
        spec: a :class:`ShapeSpec`
        image_size (128): the side of the image in pixels
        seed (0): seeds the background's texture (noise)

    Returns:
        a ``PIL.Image.Image`` in RGB mode
    """
    rng = np.random.default_rng([seed, image_size, 2])
    background = _background(spec.background, image_size, rng)
    fill = Image.new("RGB", (image_size, image_size), spec.rgb)
    mask = _shape_mask(spec, image_size)
    return Image.composite(fill, background, mask)


def render_image(seed, index, image_size=128):
    """Renders image ``index`` of a seed.

    Args:
        seed: an integer
        index: an integer >= 0
        image_size (128): the side of the image in pixels

    Returns:
        a ``(PIL.Image.Image, ShapeSpec)`` tuple
    """
    spec = sample_spec(seed, index)
    return render(spec, image_size=image_size, seed=_texture_seed(seed, index)), spec


def render_images(num_samples, seed=0, image_size=128, start=0):
    """Renders images ``start, ..., start + num_samples - 1`` of a seed.

    Args:
        num_samples: how many images
        seed (0): an integer
        image_size (128): the side of the images in pixels
        start (0): the first index

    Returns:
        a generator of ``(PIL.Image.Image, ShapeSpec)`` tuples
    """
    for index in range(start, start + num_samples):
        yield render_image(seed, index, image_size=image_size)


def _texture_seed(seed, index, stream=3):
    # one integer from (seed, index) that differs from the spec's stream
    return int(np.random.default_rng([seed, index, stream]).integers(2**31))


def _background(kind, size, rng):
    if kind == "light":
        g = int(rng.integers(185, 251))
        return Image.new("RGB", (size, size), (g, g, g))

    if kind == "dark":
        g = int(rng.integers(5, 71))
        return Image.new("RGB", (size, size), (g, g, g))

    if kind == "noise":
        base = rng.uniform(40, 215)
        std = rng.uniform(8, 35)
        # the same noise in every channel keeps the background grey
        grey = rng.normal(base, std, size=(size, size))
    elif kind == "gradient":
        a, b = rng.uniform(0, 255, size=2)
        if abs(a - b) < 60:
            b = a + 60 if a < 128 else a - 60
        ramp = np.linspace(a, b, size)
        axis = int(rng.integers(3))
        if axis == 0:
            grey = np.tile(ramp, (size, 1))
        elif axis == 1:
            grey = np.tile(ramp[:, None], (1, size))
        else:
            grey = (np.add.outer(ramp, ramp)) / 2
    else:
        raise ValueError(f"Unknown background {kind!r}")

    grey = np.clip(grey, 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([grey] * 3, axis=-1), mode="RGB")


def _shape_mask(spec, image_size):
    side = image_size * _SUPERSAMPLING
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = spec.center[0] * side, spec.center[1] * side
    r = spec.size * side / 2
    if spec.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        points = _outline(spec.shape, r)
        draw.polygon(_place(points, cx, cy, spec.rotation), fill=255)

    return mask.reduce(_SUPERSAMPLING)


def _outline(shape, r):
    # vertices around (0, 0), y pointing down, for a shape of radius r
    if shape == "square":
        h = 0.8 * r  # a square of side 2r would look much bigger than a circle
        return [(-h, -h), (h, -h), (h, h), (-h, h)]

    if shape == "triangle":
        # equilateral, pointing up, its bounding box centred on (0, 0)
        R = 1.1 * r
        pts = [
            (R * np.cos(np.radians(a)), R * np.sin(np.radians(a)))
            for a in (-90, 30, 150)
        ]
        dy = R / 4
        return [(x, y + dy) for x, y in pts]

    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = np.radians(-90 + 36 * k)
            pts.append((rad * np.cos(a), rad * np.sin(a)))

        return pts

    if shape == "cross":
        w = 0.3 * r
        return [
            (-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w),
            (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w),
        ]  # fmt: skip

    raise ValueError(f"Unknown shape {shape!r}")


def _place(points, cx, cy, degrees):
    t = np.radians(degrees)
    c, s = np.cos(t), np.sin(t)
    return [(cx + c * x - s * y, cy + s * x + c * y) for x, y in points]


def write_shapes_images(
    images_dir,
    num_samples,
    seed=0,
    image_size=128,
    image_format="jpg",
    jpeg_quality=90,
):
    """Renders images of the shapes world and writes them to files.

    Args:
        images_dir: the directory to write to (created if needed)
        num_samples: how many images
        seed (0): an integer
        image_size (128): the side of the images in pixels
        image_format ("jpg"): ``"jpg"`` (or ``"jpeg"``) or ``"png"``
        jpeg_quality (90): the JPEG quality

    Returns:
        a list of ``(filepath, ShapeSpec)`` tuples, in index order
    """
    fmt = _image_format(image_format)
    os.makedirs(images_dir, exist_ok=True)
    width = max(6, len(str(max(num_samples - 1, 0))))
    results = []
    for index, (img, spec) in enumerate(
        render_images(num_samples, seed=seed, image_size=image_size)
    ):
        path = os.path.join(os.path.abspath(images_dir), f"shape_{index:0{width}d}.{fmt}")
        _save_image(img, path, fmt, jpeg_quality)
        results.append((path, spec))

    return results


def _image_format(image_format):
    fmt = image_format.lower().lstrip(".")
    if fmt == "jpeg":
        fmt = "jpg"

    if fmt not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', not {image_format!r}")

    return fmt


def _save_image(img, path, fmt, jpeg_quality):
    if fmt == "jpg":
        img.save(path, format="JPEG", quality=jpeg_quality)
    else:
        img.save(path, format="PNG")


def _new_dataset(name, persistent, overwrite, images_dir):
    """A new dataset, and where its images go (by default a directory named
    after it in FiftyOne's ``default_dataset_dir``)."""
    # imported here: rendering and training must not need a database
    import fiftyone as fo

    dataset = fo.Dataset(name, persistent=persistent, overwrite=overwrite)
    if images_dir is None:
        images_dir = os.path.join(fo.config.default_dataset_dir, dataset.slug)
    return dataset, images_dir


def make_shapes_dataset(
    name=None,
    num_samples=300,
    seed=1,
    images_dir=None,
    image_size=128,
    overwrite=False,
    persistent=False,
    image_format="jpg",
):
    """Builds a FiftyOne dataset of the shapes world, with real image files.

    Each sample has the string fields ``shape`` and ``color`` and a
    ``ground_truth`` :class:`fiftyone.core.labels.Classification` whose label
    is e.g. ``"red circle"``. The classes are balanced: every block of 30
    consecutive samples holds each ``(color, shape)`` class once.

    The default seed differs from the one the bundled model was trained on,
    so the dataset is held out from that model.

    Args:
        name (None): the dataset's name; None picks a fresh one
        num_samples (300): how many samples
        seed (1): the seed of the images; the same seed gives the same images
        images_dir (None): where to write the images; defaults to a
            directory named after the dataset in FiftyOne's
            ``default_dataset_dir``
        image_size (128): the side of the square images in pixels
        overwrite (False): whether to replace an existing dataset of that name
        persistent (False): whether the dataset outlives the database session
        image_format ("jpg"): ``"jpg"`` or ``"png"``

    Returns:
        a :class:`fiftyone.core.dataset.Dataset`
    """
    import fiftyone as fo  # start-up: FiftyOne, on first use

    dataset, images_dir = _new_dataset(name, persistent, overwrite,
                                       images_dir)
    files = write_shapes_images(
        images_dir,
        num_samples,
        seed=seed,
        image_size=image_size,
        image_format=image_format,
    )
    samples = [
        fo.Sample(
            filepath=path,
            shape=spec.shape,
            color=spec.color,
            ground_truth=fo.Classification(label=spec.label),
        )
        for path, spec in files
    ]
    dataset.add_samples(samples)
    dataset.info["shapes_world"] = {"seed": seed, "image_size": image_size}
    dataset.save()
    return dataset


def tiny_clip_model_name(model_dir=None):
    """Returns the open_clip name of the bundled tiny CLIP model.

    Pass it wherever an open_clip model name is accepted, e.g.
    ``open_clip.create_model_and_transforms(tiny_clip_model_name())``.

    Args:
        model_dir (None): the model directory; defaults to
            :data:`DEFAULT_MODEL_DIR`

    Returns:
        ``"local-dir:/abs/path/to/tiny_clip"``
    """
    return "local-dir:" + os.path.abspath(model_dir or DEFAULT_MODEL_DIR)


# --- scenes: several shapes an image, with boxes, for object-level search ---

#: the default smallest and largest shape size in a scene, as a fraction of
#: the image side
SCENE_MIN_SHAPE_FRACTION = 0.15
SCENE_MAX_SHAPE_FRACTION = 0.3

#: the default gap between two shapes' boxes in a scene, as a fraction of the
#: image side: crops of one shape with some context rarely reach the next one
SCENE_GAP = 0.05

_SCENE_BORDER = 0.02  # every shape keeps this far from the image's edges
_PLACEMENT_LAYOUTS = 50  # random layouts tried before falling back to a grid
_PLACEMENT_TRIES = 30  # random positions tried per shape in one layout


@dataclasses.dataclass(frozen=True)
class SceneSpec:
    """Everything needed to draw one image of the scenes world.

    Args:
        background: one of :data:`BACKGROUNDS`
        shapes: a tuple of :class:`ShapeSpec`, one per shape, whose boxes do
            not overlap; each has the scene's ``background``, so that
            :func:`render` draws it alone on the same kind of background
    """

    background: str
    shapes: tuple

    @property
    def labels(self):
        """The class labels of the shapes, in order, e.g. ``["red circle"]``."""
        return [s.label for s in self.shapes]


def scene_spec(
    seed: int,
    index: int,
    shapes_per_image=(2, 4),
    size_range=None,
    gap: float = None,
) -> SceneSpec:
    """Draws the random description of scene ``index`` of a seed.

    Scenes are balanced: the number of shapes cycles through every count of
    ``shapes_per_image`` once per block of consecutive scenes, and the
    shapes' classes are read from a stream in which each block of
    ``len(CLASSES)`` consecutive shapes holds every class once. So over ``n``
    scenes every class appears equally often, give or take one.

    Example::

        from fiftyone_ai_search.demo import shapes

        spec = shapes.scene_spec(seed=1, index=0)
        print(spec.background, spec.labels)

    Args:
        seed: an integer
        index: the scene's index, an integer >= 0
        shapes_per_image ((2, 4)): the number of shapes, an integer or an
            inclusive ``(min, max)`` range
        size_range (None): the ``(min, max)`` shape size as a fraction of the
            image side; defaults to :data:`SCENE_MIN_SHAPE_FRACTION` and
            :data:`SCENE_MAX_SHAPE_FRACTION`
        gap (None): the least gap between two shapes' boxes as a fraction of
            the image side; defaults to :data:`SCENE_GAP`

    Returns:
        a :class:`SceneSpec`
    """
    lo, hi = _count_range(shapes_per_image)
    if size_range is None:
        size_range = (SCENE_MIN_SHAPE_FRACTION, SCENE_MAX_SHAPE_FRACTION)

    gap = SCENE_GAP if gap is None else float(gap)
    _check_scene_fits(hi, size_range, gap)

    count, first_slot = _scene_slots(seed, index, lo, hi)
    classes = [_balanced_class(seed, first_slot + k, stream=7) for k in range(count)]
    rng = np.random.default_rng([seed, index, 5])
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    sizes = [float(rng.uniform(*size_range)) for _ in classes]
    rgbs = [_jittered_rgb(color, rng) for color, _ in classes]
    rotations = [float(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION)) for _ in classes]
    centers = _place_shapes(rng, sizes, gap)
    shapes = tuple(
        ShapeSpec(
            shape=shape,
            color=color,
            rgb=rgb,
            background=background,
            size=size,
            center=center,
            rotation=rotation,
        )
        for (color, shape), rgb, size, center, rotation in zip(
            classes, rgbs, sizes, centers, rotations
        )
    )
    return SceneSpec(background=background, shapes=shapes)


def _count_range(shapes_per_image):
    if isinstance(shapes_per_image, (int, np.integer)):
        lo = hi = int(shapes_per_image)
    else:
        lo, hi = (int(v) for v in shapes_per_image)

    if not 1 <= lo <= hi:
        raise ValueError(
            f"shapes_per_image must be >= 1 or a (min, max) range with "
            f"1 <= min <= max, not {shapes_per_image!r}"
        )

    return lo, hi


def _check_scene_fits(max_count, size_range, gap):
    # the grid fallback of _place_shapes must always succeed, so placement
    # terminates: the largest shapes must fit the cells of a square grid
    s_lo, s_hi = size_range
    if not 0 < s_lo <= s_hi:
        raise ValueError(f"size_range must be 0 < min <= max, not {size_range!r}")

    k = int(np.ceil(np.sqrt(max_count)))
    cell = (1 - 2 * _SCENE_BORDER) / k
    if _REACH * s_hi + gap > cell:
        raise ValueError(
            f"{max_count} shapes of size up to {s_hi} with a gap of {gap} do "
            f"not fit in one image; use fewer or smaller shapes"
        )


def _scene_slots(seed, index, lo, hi):
    # scenes come in blocks holding every count lo..hi once, in a random
    # order: the first shape's position in the class stream is then known
    # from (seed, index) without visiting the scenes before it
    counts = list(range(lo, hi + 1))
    block, pos = divmod(index, len(counts))
    order = np.random.default_rng([seed, block, 6]).permutation(counts)
    first_slot = block * sum(counts) + int(order[:pos].sum())
    return int(order[pos]), first_slot


def _place_shapes(rng, sizes, gap):
    # a shape's box lies within `reach` of its centre whatever its rotation,
    # so boxes of half side `reach` set apart by `gap` never overlap
    reaches = [_REACH * size / 2 for size in sizes]
    for _ in range(_PLACEMENT_LAYOUTS):
        centers = _random_layout(rng, reaches, gap)
        if centers is not None:
            return centers

    return _grid_layout(rng, reaches, gap)


def _random_layout(rng, reaches, gap):
    placed = []
    for reach in reaches:
        lo, hi = reach + _SCENE_BORDER, 1 - reach - _SCENE_BORDER
        for _ in range(_PLACEMENT_TRIES):
            center = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
            if all(_apart(center, reach, c, r, gap) for c, r in placed):
                placed.append((center, reach))
                break
        else:
            return None

    return [c for c, _ in placed]


def _apart(c1, r1, c2, r2, gap):
    # two axis-aligned boxes are disjoint when they are apart along one axis
    need = r1 + r2 + gap
    return abs(c1[0] - c2[0]) >= need or abs(c1[1] - c2[1]) >= need


def _grid_layout(rng, reaches, gap):
    # crowded scenes: one shape per cell of a square grid, at a random spot
    # in its cell; _check_scene_fits guarantees that every shape fits a cell
    k = int(np.ceil(np.sqrt(len(reaches))))
    cell = (1 - 2 * _SCENE_BORDER) / k
    cells = rng.permutation(k * k)[: len(reaches)]
    centers = []
    for reach, c in zip(reaches, cells):
        row, col = divmod(int(c), k)
        slack = max(cell - 2 * reach - gap, 0) / 2
        dx, dy = rng.uniform(-slack, slack, size=2)
        x = _SCENE_BORDER + (col + 0.5) * cell + float(dx)
        y = _SCENE_BORDER + (row + 0.5) * cell + float(dy)
        centers.append((x, y))

    return centers


def render_scene(spec: SceneSpec, image_size: int = 256, seed: int = 0):
    """Draws a :class:`SceneSpec` as a square RGB image, with its boxes.

    Example::

        from fiftyone_ai_search.demo import shapes

        spec = shapes.scene_spec(seed=1, index=0)
        img, boxes = shapes.render_scene(spec)
        for label, (x, y, w, h) in zip(spec.labels, boxes):
            print(label, x, y, w, h)

    Args:
        spec: a :class:`SceneSpec`
        image_size (256): the side of the image in pixels
        seed (0): seeds the background's texture (noise)

    Returns:
        a ``(PIL.Image.Image, boxes)`` tuple: an RGB image and one box per
        shape, in the order of ``spec.shapes``, each ``[x, y, w, h]`` in
        FiftyOne's relative coordinates: the tight box of the shape's drawn
        pixels
    """
    rng = np.random.default_rng([seed, image_size, 2])
    img = _background(spec.background, image_size, rng)
    boxes = []
    for shape in spec.shapes:
        mask = _shape_mask(shape, image_size)
        fill = Image.new("RGB", (image_size, image_size), shape.rgb)
        img = Image.composite(fill, img, mask)
        boxes.append(_tight_box(mask, shape, image_size))

    return img, boxes


def _tight_box(mask, shape, image_size):
    # the box of every pixel the shape touched, its anti-aliased edge included
    bbox = mask.getbbox()
    if bbox is None:  # too small to touch any pixel: an empty box at its centre
        return [shape.center[0], shape.center[1], 0.0, 0.0]

    left, top, right, bottom = bbox
    return [
        left / image_size,
        top / image_size,
        (right - left) / image_size,
        (bottom - top) / image_size,
    ]


def render_scene_image(
    seed: int, index: int, image_size: int = 256, shapes_per_image=(2, 4)
):
    """Renders scene ``index`` of a seed.

    Args:
        seed: an integer
        index: an integer >= 0
        image_size (256): the side of the image in pixels
        shapes_per_image ((2, 4)): the number of shapes, an integer or an
            inclusive ``(min, max)`` range

    Returns:
        a ``(PIL.Image.Image, SceneSpec, boxes)`` tuple; see
        :func:`render_scene` for the boxes
    """
    spec = scene_spec(seed, index, shapes_per_image=shapes_per_image)
    texture = _texture_seed(seed, index, stream=8)
    img, boxes = render_scene(spec, image_size=image_size, seed=texture)
    return img, spec, boxes


def write_scenes_images(
    images_dir: str,
    num_samples: int,
    seed: int = 0,
    image_size: int = 256,
    shapes_per_image=(2, 4),
    image_format: str = "jpg",
    jpeg_quality: int = 90,
):
    """Renders images of the scenes world and writes them to files.

    Example::

        from fiftyone_ai_search.demo import shapes

        for path, spec, boxes in shapes.write_scenes_images("/tmp/scenes", 3):
            print(path, spec.labels, boxes)

    Args:
        images_dir: the directory to write to (created if needed)
        num_samples: how many images
        seed (0): an integer
        image_size (256): the side of the images in pixels
        shapes_per_image ((2, 4)): the number of shapes an image, an integer
            or an inclusive ``(min, max)`` range
        image_format ("jpg"): ``"jpg"`` (or ``"jpeg"``) or ``"png"``
        jpeg_quality (90): the JPEG quality

    Returns:
        a list of ``(filepath, SceneSpec, boxes)`` tuples, in index order;
        see :func:`render_scene` for the boxes
    """
    fmt = _image_format(image_format)
    os.makedirs(images_dir, exist_ok=True)
    width = max(6, len(str(max(num_samples - 1, 0))))
    results = []
    for index in range(num_samples):
        img, spec, boxes = render_scene_image(
            seed, index, image_size=image_size, shapes_per_image=shapes_per_image
        )
        path = os.path.join(os.path.abspath(images_dir), f"scene_{index:0{width}d}.{fmt}")
        _save_image(img, path, fmt, jpeg_quality)
        results.append((path, spec, boxes))

    return results


def make_scenes_dataset(
    name=None,
    num_samples=200,
    seed=1,
    images_dir=None,
    image_size=256,
    label_field="ground_truth",
    overwrite=False,
    persistent=False,
    shapes_per_image=(2, 4),
    image_format="jpg",
):
    """Builds a FiftyOne dataset of scenes: several shapes an image, boxed.

    Each sample has a :class:`fiftyone.core.labels.Detections` field
    ``label_field`` with one :class:`fiftyone.core.labels.Detection` per
    shape, labelled e.g. ``"red circle"``, whose ``bounding_box`` is tight
    around the drawn shape; and the string list fields ``colors`` and
    ``shapes`` of its shapes, in the same order. The boxes of an image never
    overlap, and every ``(color, shape)`` class appears about equally often.

    The bundled tiny CLIP recognises these objects in crops of their boxes
    with some context around them: the world for object-level search.

    Example::

        import fiftyone as fo
        from fiftyone_ai_search.demo import shapes

        dataset = shapes.make_scenes_dataset(num_samples=100)
        print(dataset.count("ground_truth.detections"))
        print(dataset.count_values("ground_truth.detections.label"))

        patches = dataset.to_patches("ground_truth")
        session = fo.launch_app(patches)

    Args:
        name (None): the dataset's name; None picks a fresh one
        num_samples (200): how many samples
        seed (1): the seed of the images; the same seed gives the same images
        images_dir (None): where to write the images; defaults to a
            directory named after the dataset in FiftyOne's
            ``default_dataset_dir``
        image_size (256): the side of the square images in pixels
        label_field ("ground_truth"): the name of the detections field
        overwrite (False): whether to replace an existing dataset of that name
        persistent (False): whether the dataset outlives the database session
        shapes_per_image ((2, 4)): the number of shapes an image, an integer
            or an inclusive ``(min, max)`` range
        image_format ("jpg"): ``"jpg"`` or ``"png"``

    Returns:
        a :class:`fiftyone.core.dataset.Dataset`
    """
    # fail before creating anything on a bad count
    _count_range(shapes_per_image)
    dataset, images_dir = _new_dataset(name, persistent, overwrite,
                                       images_dir)
    files = write_scenes_images(
        images_dir,
        num_samples,
        seed=seed,
        image_size=image_size,
        shapes_per_image=shapes_per_image,
        image_format=image_format,
    )
    dataset.add_samples(
        [_scene_sample(path, spec, boxes, label_field) for path, spec, boxes in files]
    )
    dataset.info["scenes_world"] = {
        "seed": seed,
        "image_size": image_size,
        "shapes_per_image": list(_count_range(shapes_per_image)),
    }
    dataset.save()
    return dataset


def _scene_sample(path, spec, boxes, label_field):
    import fiftyone as fo  # start-up: FiftyOne, on first use

    detections = [
        fo.Detection(label=s.label, bounding_box=box)
        for s, box in zip(spec.shapes, boxes)
    ]
    return fo.Sample(
        filepath=path,
        colors=[s.color for s in spec.shapes],
        shapes=[s.shape for s in spec.shapes],
        **{label_field: fo.Detections(detections=detections)},
    )
