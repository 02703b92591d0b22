"""A decoder that crashes, for the tests of the decoding workers: an image
(or a crop) 13 pixels wide kills the worker process, as a decoder segfault
would.

Kept light on purpose: a decoding worker unpickles the crashing transform,
so it imports this module, and nothing heavier. With the model's torch-free
recipe inside it (:class:`CrashingRecipe`), the worker imports neither
FiftyOne nor torch, and starts (and restarts after the crash) in a fraction
of a second: the open_clip transform and ``tests.helpers`` cost seconds
each, twice a test.
"""

import dataclasses
import os

from fiftyone_ai_search.embedding.preprocess import Recipe, recipe_of

#: the width of the images (or crops) that kill the process
CRASH_WIDTH = 13


def _crash_on(image):
    if image.width == CRASH_WIDTH:
        os._exit(3)


@dataclasses.dataclass(frozen=True)
class CrashingRecipe(Recipe):
    """A torch-free recipe that kills the process on a 13-pixel-wide
    image."""

    def __call__(self, image):
        _crash_on(image)
        return super().__call__(image)


class CrashingPreprocess:
    """A transform without a recipe, killing the process as above (its
    worker imports torch)."""

    def __init__(self, preprocess):
        self.preprocess = preprocess

    def __call__(self, image):
        _crash_on(image)
        return self.preprocess(image)


class CrashingModel:
    """A model whose transform crashes on 13-pixel-wide images; what it
    decodes is otherwise the model's own (the recipe the model's decoding
    uses, where it has one)."""

    def __init__(self, model):
        self._model = model
        recipe = recipe_of(model.preprocess)
        self.preprocess = (CrashingRecipe(recipe.steps) if recipe is not None
                           else CrashingPreprocess(model.preprocess))
        self.image_size = model.image_size
        self.dim = model.dim

    def encode_images(self, batch):
        return self._model.encode_images(batch)
