"""Build an annotation batch from a prompt search.

A curator wants the images showing "a red circle" labelled first. This
example searches the dataset by that description, keeps only results scoring
at least ``threshold`` (cosine similarity), tags them ``to_annotate`` in the
dataset, and clones them into a new dataset: the batch to send to the
annotators (with FiftyOne's annotation integrations, an export, ...).

Run it::

    python examples/annotation_batch.py
"""

import _shapes_setup as setup  # first: sets up the environment for fiftyone

import fiftyone_ai_search as ais


def main(name="ai-search-example-annotation", num_samples=300,
         prompt="a photo of a red circle", threshold=0.8, limit=100,
         tag="to_annotate", batch_name=None):
    """Searches ``prompt``, tags the results ``tag`` and clones them into
    the dataset ``batch_name`` (default ``"<name>-batch"``).

    Returns:
        a dict with ``dataset``, ``collection`` (the search results' name)
        and ``batch`` (the cloned dataset)
    """
    dataset = setup.shapes_dataset(name, num_samples=num_samples)

    collection = ais.perform_ai_search(
        dataset, prompt=prompt, threshold=threshold, limit=limit
    )
    if collection is None:
        print(f"Nothing scores >= {threshold} for {prompt!r}; lower the "
              "threshold")
        return {"dataset": dataset, "collection": None, "batch": None}

    results = ais.get_collection(dataset, collection)
    scores = [s for _, s in ais.get_collection_scores(dataset, collection)]
    print(f"Search {prompt!r} (scores >= {threshold}): {len(results)} "
          f"images, scores {min(scores):.3f}..{max(scores):.3f}, in "
          f"collection '{collection}'")

    results.tag_samples(tag)
    to_annotate = dataset.match_tags(tag)
    print(f"Tagged them '{tag}': {len(to_annotate)} images of "
          f"'{dataset.name}' now carry the tag")

    batch = setup.clone_to_dataset(results, batch_name or f"{name}-batch")
    print(f"Annotation batch: dataset '{batch.name}' with {len(batch)} "
          f"images ({setup.label_counts(batch)})")
    return {"dataset": dataset, "collection": collection, "batch": batch}


if __name__ == "__main__":
    main()
