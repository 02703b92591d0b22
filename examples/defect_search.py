"""Find defects by description, keep them, cut them at a score threshold.

In an inspection dataset one would search "a scratch on the casing"; in the
shapes world an orange cross stands in for the defect. This example

1.  searches the defect by its description and saves the results as a
    collection (a FiftyOne saved view whose scores are kept with it),
2.  looks at the collection's score histogram: matches form a group of high
    scores, separated by an empty stretch from everything else; the middle
    of the widest empty stretch is taken as the threshold (or pass
    ``min_score``),
3.  cuts the collection at that threshold (no model is run again) and clones
    the cut into a review dataset,
4.  searches "more like these" with the three best matches as reference
    images, and saves that as a second collection.

Run it::

    python examples/defect_search.py
"""

import _shapes_setup as setup  # first: sets up the environment for fiftyone

import fiftyone_ai_search as ais


def main(name="ai-search-example-defects", num_samples=300,
         description="a photo of an orange cross", limit=50, min_score=None,
         collection="defects", review_name=None, num_references=3):
    """Finds ``description``, keeps it as collection ``collection``, cuts it
    at ``min_score`` (default: read off the histogram) into the dataset
    ``review_name`` (default ``"<name>-review"``).

    Returns:
        a dict with ``dataset``, ``collection``, ``min_score`` (the cut),
        ``review`` (the new dataset) and ``similar`` (the name of the
        "more like these" collection)
    """
    dataset = setup.shapes_dataset(name, num_samples=num_samples)

    ais.perform_ai_search(dataset, prompt=description, limit=limit)
    ais.save_collection(dataset, collection, overwrite=True)
    print(f"Search {description!r}: top {limit} saved as collection "
          f"'{collection}'")

    edges, counts = ais.get_score_histogram(dataset, collection, bins=20)
    print("Score histogram:")
    print_histogram(edges, counts)
    if min_score is None:
        min_score = widest_gap(edges, counts)
        print(f"Threshold from the histogram's widest empty stretch: "
              f"{min_score:.3f}")

    cut = ais.get_collection(dataset, collection, min_score=min_score)
    review = setup.clone_to_dataset(cut, review_name or f"{name}-review")
    print(f"Scores >= {min_score:.3f}: {len(cut)} images -> review dataset "
          f"'{review.name}' ({setup.label_counts(review)})")

    references = cut.limit(num_references).values("id")
    similar = f"{collection}: more like these"
    ais.perform_ai_search(dataset, image_id=references, limit=len(cut))
    ais.save_collection(dataset, similar, overwrite=True)
    print(f"More like the best {len(references)}: top {len(cut)} saved as "
          f"'{similar}' ({setup.label_counts(ais.get_collection(dataset, similar))})")

    print("Collections: " + ", ".join(
        f"'{c['name']}' ({c['size']})" for c in ais.list_collections(dataset)
    ))
    return {"dataset": dataset, "collection": collection,
            "min_score": min_score, "review": review, "similar": similar}


def widest_gap(edges, counts):
    """The middle of the widest run of empty bins between two non-empty
    ones (the highest such run on a tie); the lowest edge if there is none
    (keep everything)."""
    filled = [i for i, n in enumerate(counts) if n]
    best, threshold = 0, edges[0]
    for lo, hi in zip(filled, filled[1:]):
        width = hi - lo - 1  # empty bins between two filled ones
        if width and width >= best:
            best, threshold = width, (edges[lo + 1] + edges[hi]) / 2
    return threshold


def print_histogram(edges, counts, width=40):
    top = max(counts) or 1
    for lo, hi, n in zip(edges, edges[1:], counts):
        print(f"  {lo:6.3f}..{hi:6.3f} {n:4d} {'#' * round(width * n / top)}")


if __name__ == "__main__":
    main()
