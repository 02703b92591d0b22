"""A synthetic "shapes" world and the tiny CLIP model bundled for it.

Lets everything (demos, tests, CI) run offline with a model that really aligns
text and images: ``make_shapes_dataset()`` builds a dataset of coloured
shapes, ``make_scenes_dataset()`` one of scenes of several boxed shapes
(object search), ``tiny_clip_model_name()`` names the model that
understands them.
"""

from .shapes import (
    CLASSES,
    COLORS,
    DEFAULT_MODEL_DIR,
    SHAPES,
    captions,
    class_label,
    make_scenes_dataset,
    make_shapes_dataset,
    prompt,
    render_image,
    render_images,
    tiny_clip_model_name,
    write_scenes_images,
    write_shapes_images,
)

__all__ = [
    "CLASSES",
    "COLORS",
    "DEFAULT_MODEL_DIR",
    "SHAPES",
    "captions",
    "class_label",
    "make_scenes_dataset",
    "make_shapes_dataset",
    "prompt",
    "render_image",
    "render_images",
    "tiny_clip_model_name",
    "write_scenes_images",
    "write_shapes_images",
]
