"""The quick-start demo: offline, on synthetic shapes, in well under a minute.

``python -m fiftyone_ai_search demo``
"""

import os
import time

# before fiftyone is imported: its bundled mongod on Debian is older than
# FiftyOne's validation expects, which only matters for a notice
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")


def run_demo(name="ai-search-demo", num_samples=300, images_dir=None):
    """Builds the shapes dataset, enables AI search with the bundled tiny
    CLIP, computes its embeddings (with a progress bar), shows the status and
    runs a first prompt search.

    Args:
        name ("ai-search-demo"): the dataset name (replaced if it exists)
        num_samples (300): how many images
        images_dir (None): where to write the images

    Returns:
        the dataset
    """
    import fiftyone_ai_search as ais
    from fiftyone_ai_search.demo import make_shapes_dataset, tiny_clip_model_name

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

    print(f"Done in {time.time() - t0:.1f} s. Open it in the App with:\n"
          f"  python -c \"import fiftyone as fo; "
          f"fo.launch_app(fo.load_dataset('{dataset.name}')).wait()\"")
    return dataset


def _first_search(ais, dataset):
    prompt = "a photo of a red circle"
    name = ais.perform_ai_search(dataset, prompt=prompt, limit=10)
    labels = dict(zip(*dataset.values(["id", "ground_truth.label"])))
    print(f"Top 10 for {prompt!r} (collection '{name}'):")
    for sample_id, score in ais.get_collection_scores(dataset, name):
        print(f"  {score:.3f}  {labels[sample_id]}")
