"""open_clip's evaluation transforms read into recipes that decoding workers
run with PIL and numpy alone: the same arrays as the transforms themselves,
and no recipe for what cannot be run that way."""

import pickle
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torchvision.transforms as T
from PIL import Image

from fiftyone_ai_search.embedding import preprocess
from fiftyone_ai_search.demo import tiny_clip_model_name
from fiftyone_ai_search.embedding.model import load_model, resolve_model
from fiftyone_ai_search.embedding.preprocess import recipe_of

# (width, height): landscape, portrait, odd sizes whose crop rounds, smaller
# than the model's input (scaled up), exactly its size, extreme ratios
SIZES = [
    (1280, 960), (960, 1280), (225, 224), (224, 225), (301, 257),
    (100, 50), (224, 224), (7, 300), (640, 3),
]


def _image(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(
        rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    )


def _transforms():
    """open_clip's inference transforms, as open_clip builds them."""
    yield "ViT-B-32 (shortest side, bicubic)", open_clip.image_transform(
        224, is_train=False
    )
    yield "SigLIP-style (squash)", open_clip.image_transform(
        384, is_train=False, resize_mode="squash",
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    )
    yield "bilinear", open_clip.image_transform(
        64, is_train=False, interpolation="bilinear"
    )
    yield "the bundled tiny CLIP", load_model(
        resolve_model(tiny_clip_model_name()), "cpu"
    ).preprocess


@pytest.mark.parametrize(
    "name, transform", list(_transforms()), ids=lambda v: str(v)[:24]
)
def test_recipe_gives_the_transforms_arrays(name, transform):
    recipe = recipe_of(transform)
    assert recipe is not None, name

    for i, (width, height) in enumerate(SIZES):
        image = _image(width, height, seed=i)
        expected = transform(image).numpy()
        got = recipe(image)
        assert got.dtype == np.float32
        assert got.shape == expected.shape, (name, width, height)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_center_crop_pads_small_images_like_torchvision():
    transform = T.Compose([
        T.CenterCrop((9, 12)), T.ToTensor(),
        T.Normalize((0.1, 0.2, 0.3), (0.5, 0.6, 0.7)),
    ])
    recipe = recipe_of(transform)
    for width, height in [(5, 4), (12, 3), (4, 9), (13, 10)]:
        image = _image(width, height)
        np.testing.assert_allclose(
            recipe(image), transform(image).numpy(), rtol=0, atol=1e-6
        )


def test_resize_with_max_size_like_torchvision():
    transform = T.Compose([T.Resize(32, max_size=40), T.ToTensor()])
    recipe = recipe_of(transform)
    for width, height in [(200, 50), (50, 200), (60, 50)]:
        image = _image(width, height)
        np.testing.assert_array_equal(recipe(image), transform(image).numpy())


@pytest.mark.parametrize(
    "transform",
    [
        # a step it does not know
        T.Compose([T.Resize(32), T.Lambda(lambda x: x), T.ToTensor()]),
        open_clip.image_transform(224, is_train=False, resize_mode="longest"),
        # arithmetic on images, PIL steps on tensors: torch's business
        T.Compose([T.ToTensor(), T.Resize(32)]),
        T.Compose([T.Normalize((0.5,) * 3, (0.5,) * 3), T.ToTensor()]),
        # no array at the end
        T.Compose([T.Resize(32), T.CenterCrop(32)]),
        T.Compose([T.Resize(32), T.ToTensor(), T.ToTensor()]),
        # a tensor-only transform
        T.Compose([T.ToTensor(), T.Grayscale()]),
        # training augmentation is random
        open_clip.image_transform(224, is_train=True),
    ],
    ids=range(8),
)
def test_no_recipe_for_what_needs_torch(transform):
    assert recipe_of(transform) is None


def test_recipe_runs_in_a_process_without_torch(tmp_path):
    """What a decoding worker gets: a pickled recipe that unpickles and runs
    with PIL and numpy only."""
    recipe = recipe_of(open_clip.image_transform(224, is_train=False))
    image_path = tmp_path / "image.png"
    _image(320, 240).save(image_path)
    expected = recipe(Image.open(image_path))
    (tmp_path / "recipe.pkl").write_bytes(pickle.dumps(recipe))

    script = f"""
import pickle, sys, types
package = types.ModuleType("fiftyone_ai_search")
package.__path__ = [{preprocess.__file__.rsplit('/', 2)[0]!r}]
sys.modules["fiftyone_ai_search"] = package
import numpy as np
from PIL import Image
recipe = pickle.loads(open({str(tmp_path / 'recipe.pkl')!r}, "rb").read())
np.save({str(tmp_path / 'out.npy')!r}, recipe(Image.open({str(image_path)!r})))
assert "torch" not in sys.modules, "torch was imported"
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)
