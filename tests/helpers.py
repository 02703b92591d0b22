"""Shared test helpers: datasets of real shape images, the bundled tiny CLIP."""

import json
import os
import time
import uuid

import fiftyone as fo

import fiftyone_ai_search as ais
from fiftyone_ai_search.demo import make_shapes_dataset, tiny_clip_model_name


def shapes_dataset(tmp_path, num_samples=30, seed=1, enable=True):
    """A fresh dataset of ``num_samples`` shape images under ``tmp_path``,
    with AI search enabled on the bundled tiny CLIP (nothing computed yet)."""
    name = "test-" + uuid.uuid4().hex[:10]
    dataset = make_shapes_dataset(
        name=name,
        num_samples=num_samples,
        seed=seed,
        images_dir=str(tmp_path / name),
    )
    if enable:
        ais.enable_embeddings(
            dataset, model=tiny_clip_model_name(), compute=False
        )
    return dataset


def add_shape_samples(dataset, tmp_path, num_samples, seed):
    """Adds ``num_samples`` new shape images (another seed) to ``dataset``."""
    other = make_shapes_dataset(
        num_samples=num_samples, seed=seed,
        images_dir=str(tmp_path / ("more-" + uuid.uuid4().hex[:8])),
    )
    samples = [fo.Sample(filepath=s.filepath, shape=s.shape, color=s.color,
                         ground_truth=s.ground_truth) for s in other]
    other.delete()
    return dataset.add_samples(samples)


def wait_until_idle(dataset, timeout=180):
    """Waits for a background computation to finish; fails on timeout."""
    deadline = time.time() + timeout
    while ais.get_embeddings_in_progress(dataset):
        if time.time() > deadline:
            raise AssertionError(
                f"still computing after {timeout} s: {ais.get_status(dataset)}"
            )
        time.sleep(0.2)


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def truncated_copy(src, dst, keep=0.5):
    with open(src, "rb") as f:
        data = f.read()
    return write_bytes(dst, data[: int(len(data) * keep)])


def bump_mtime(path):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))


# Small random-weight architectures that build offline in well under a second
SMALL_VIT = "ais-test-small-vit"
SMALL_RN = "ais-test-small-rn"
_SMALL_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32,
               "heads": 2, "layers": 1}
SMALL_CONFIGS = {
    SMALL_VIT: {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 64,
                       "patch_size": 32, "head_width": 32},
        "text_cfg": _SMALL_TEXT,
    },
    # a BatchNorm tower, as in the bundled tiny CLIP
    SMALL_RN: {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8,
                       "head_width": 32},
        "text_cfg": _SMALL_TEXT,
    },
}


def register_small_models(directory):
    """Registers :data:`SMALL_CONFIGS` with open_clip (configs in
    ``directory``)."""
    import open_clip

    for name, config in SMALL_CONFIGS.items():
        with open(os.path.join(directory, f"{name}.json"), "w") as f:
            json.dump(config, f)
    open_clip.add_model_config(str(directory))
