"""Shared setup of the examples: a dataset of synthetic shapes with AI search
switched on and its embeddings computed, using the tiny CLIP bundled with the
package (so everything runs offline, on a CPU, in seconds).

The examples import this module before anything imports ``fiftyone``.
"""

import os

# before fiftyone is imported: FiftyOne's bundled mongod on some Linux
# distributions is older than its version check expects
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import fiftyone as fo  # noqa: E402

import fiftyone_ai_search as ais  # noqa: E402
from fiftyone_ai_search.demo import (  # noqa: E402
    make_shapes_dataset,
    tiny_clip_model_name,
)


def shapes_dataset(name, num_samples=300, seed=1, images_dir=None):
    """Builds (or rebuilds) the shapes dataset ``name`` and indexes it.

    Each sample has ``ground_truth.label`` such as ``"red circle"`` (30
    classes: 6 colours x 5 shapes, balanced), which the examples use only to
    show how good their selections are.

    Args:
        name: the dataset's name; an existing dataset of that name is
            replaced (its AI search index deleted first)
        num_samples (300): how many images
        seed (1): the images' seed
        images_dir (None): where to write the images; default FiftyOne's
            ``default_dataset_dir``

    Returns:
        the persistent :class:`fiftyone.core.dataset.Dataset`
    """
    delete_dataset(name)
    dataset = make_shapes_dataset(name, num_samples, seed=seed,
                                  images_dir=images_dir, overwrite=True,
                                  persistent=True)
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(), compute=False)
    report = ais.calculate_embeddings(dataset, wait=True)
    print(f"Dataset '{name}': {len(dataset)} shape images, AI search on "
          f"(embeddings: {report})")
    return dataset


def clone_to_dataset(view, name):
    """Clones ``view`` into a new persistent dataset ``name``, replacing a
    dataset of that name if there is one.

    Returns:
        the new :class:`fiftyone.core.dataset.Dataset`
    """
    delete_dataset(name)
    return view.clone(name, persistent=True)


def delete_dataset(name):
    """Deletes dataset ``name`` and its AI search index, if it exists."""
    if not fo.dataset_exists(name):
        return
    dataset = fo.load_dataset(name)
    ais.disable_embeddings(dataset)  # a no-op when AI search was never on
    dataset.delete()


def label_counts(view):
    """``"3 red circle, 1 red square"``: the ground-truth classes of a view,
    most frequent first."""
    counts = view.count_values("ground_truth.label")
    items = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    return ", ".join(f"{n} {label}" for label, n in items) or "nothing"
