"""The quick-start demo: offline, on synthetic shapes (images, then objects
in scenes), in well under a minute.

``python -m fiftyone_ai_search demo``
"""

import os
import sys
import time

import fiftyone_ai_search as ais
from fiftyone_ai_search.app import PLUGIN_NAME
from fiftyone_ai_search.app.install import install_plugin
from fiftyone_ai_search.demo import (make_scenes_dataset, make_shapes_dataset,
                                     tiny_clip_model_name)

# before fiftyone is imported: its bundled mongod on Debian is older than
# FiftyOne's validation expects, which only matters for a notice
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")


def run_demo(name="ai-search-demo", num_samples=300, images_dir=None):
    """Builds the shapes dataset, enables AI search with the bundled tiny
    CLIP, computes its embeddings (with a progress bar), shows the status and
    runs a first prompt search; then object search on a scenes dataset
    (``<name>-objects``).

    Args:
        name ("ai-search-demo"): the dataset name (replaced if it exists)
        num_samples (300): how many images
        images_dir (None): where to write the images

    Returns:
        the dataset
    """
    t0 = time.time()
    dataset = make_shapes_dataset(
        name=name,
        num_samples=num_samples,
        images_dir=images_dir,
        overwrite=True,
        persistent=True,
    )
    print(f"Built dataset '{dataset.name}': {len(dataset)} images "
          f"({time.time() - t0:.1f} s)")

    if ais.is_embeddings_enabled(dataset):
        ais.disable_embeddings(dataset)
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(), compute=False)
    report = ais.calculate_embeddings(dataset, wait=True)
    print(f"Embeddings: {report}")

    status = ais.get_status(dataset)
    counts = status["counts"]
    print(
        f"Status: {counts['num_indexed']}/{counts['num_samples']} indexed, "
        f"{counts['num_failed']} failed, model {status['model']}, "
        f"backend {status['backend']}, updated {status['updated_at']:%Y-%m-%d %H:%M:%S} UTC"
    )

    _first_search(ais, dataset)
    scenes = _object_search(ais, f"{name}-objects",
                            None if images_dir is None
                            else os.path.join(images_dir, "scenes"))

    print(f"Done in {time.time() - t0:.1f} s.")
    print(_app_plugin())
    python = sys.executable
    print(
        "Open the images in the App (then http://localhost:5151):\n"
        f"  {python} -c \"import fiftyone as fo; "
        f"fo.launch_app(fo.load_dataset('{dataset.name}')).wait()\"\n"
        "There, above the grid, the 'AI Search: ready' button searches (by "
        "prompt, like the images selected in the grid, by an image file, or "
        "for a diverse spread); '+' beside the Samples tab, then 'AI Search', "
        "opens the panel (status, score histogram, collections); the first "
        "search above is the saved view 'AI search results'.\n"
        f"The objects: the same with fo.load_dataset('{scenes.name}'), "
        "where the button searches the objects of ground_truth.")
    return dataset


def _app_plugin():
    """Makes sure FiftyOne's App finds the AI search plugin (installs it
    where it does not); says which."""
    import fiftyone.plugins as fop  # start-up: FiftyOne, when run

    try:
        plugin = fop.get_plugin(PLUGIN_NAME)
    except ValueError:
        path = install_plugin()
        return f"Installed the App plugin {PLUGIN_NAME} in {path}."
    return f"The App plugin {PLUGIN_NAME} is installed ({plugin.directory})."


def _first_search(ais, dataset):
    prompt = "a photo of a red circle"
    name = ais.perform_ai_search(dataset, prompt=prompt, limit=10)
    labels = dict(zip(*dataset.values(["id", "ground_truth.label"])))
    print(f"Top 10 for {prompt!r} (collection '{name}'):")
    for sample_id, score in ais.get_collection_scores(dataset, name):
        print(f"  {score:.3f}  {labels[sample_id]}")


def _object_search(ais, name, images_dir, num_samples=60):
    """Object search: scenes of several boxed shapes, an index of their
    boxes, and the objects that best match a prompt, as patches."""
    scenes = make_scenes_dataset(name=name, num_samples=num_samples,
                                 images_dir=images_dir, overwrite=True,
                                 persistent=True)
    ais.enable_embeddings(scenes, model=tiny_clip_model_name(),
                          patches_field="ground_truth", compute=False)
    report = ais.calculate_embeddings(scenes, patches_field="ground_truth",
                                      wait=True)
    print(f"Objects of '{scenes.name}' ({len(scenes)} scenes): {report}")
    prompt = "a photo of a blue square"
    collection = ais.perform_ai_search(scenes, prompt=prompt, limit=5,
                                       patches_field="ground_truth")
    patches = ais.get_collection(scenes, collection)
    print(f"Top 5 objects for {prompt!r} (a patches view of "
          f"'{collection}'):")
    scores = dict(ais.get_collection_scores(scenes, collection))
    for patch_id, label in zip(*patches.values(["id", "ground_truth.label"])):
        print(f"  {scores[patch_id]:.3f}  {label}")
    return scenes
