"""Active-learning selection: a diverse batch of the unlabelled pool.

A team has labelled a few images (tagged ``train``) and can afford to label
``budget`` more. Which ones? A random sample over-represents what is common
and misses what is rare; a diverse sample spreads the budget over everything
the pool contains. This example runs AI search's diverse search on the pool
(a view: the samples not tagged ``train``), with k-means into ``budget``
clusters and ``centroids`` (each cluster gives its most typical image),
clones the selection into a training dataset and tags it ``train`` in the
source dataset (so the next round's pool excludes it). It then compares how
many of the pool's classes the selection covers with a random sample of the
same size.

Run it::

    python examples/active_learning.py
"""

import _shapes_setup as setup  # first: sets up the environment for fiftyone

import fiftyone_ai_search as ais


def main(name="ai-search-example-active-learning", num_samples=300,
         num_labelled=10, budget=40, train_name=None, seed=0):
    """Selects ``budget`` diverse samples of the unlabelled pool into the
    dataset ``train_name`` (default ``"<name>-train"``).

    Returns:
        a dict with ``dataset``, ``training`` (the new dataset) and the
        class counts ``pool_classes``, ``diverse_classes``,
        ``random_classes``
    """
    dataset = setup.shapes_dataset(name, num_samples=num_samples)
    dataset.take(num_labelled, seed=seed).tag_samples("train")
    pool = dataset.match_tags("train", bool=False)
    pool_classes = len(pool.distinct("ground_truth.label"))
    print(f"Labelled: {num_labelled} images tagged 'train'; unlabelled pool: "
          f"{len(pool)} images of {pool_classes} classes")

    collection = ais.perform_ai_search(
        pool, method="centroids", clustering_method="kmeans",
        num_clusters=budget, limit=budget, seed=seed,
    )
    selection = ais.get_collection(dataset, collection)
    diverse_classes = len(selection.distinct("ground_truth.label"))

    # the baseline: as many random images of the same pool
    random_classes = len(
        pool.take(len(selection), seed=seed).distinct("ground_truth.label")
    )

    training = setup.clone_to_dataset(selection, train_name or f"{name}-train")
    selection.tag_samples("train")
    print(f"Diverse selection of {len(selection)} (k-means, {budget} "
          f"clusters, centroids) -> dataset '{training.name}'; tagged "
          f"'train', pool now {len(pool)} images")
    print(f"Classes covered: diverse {diverse_classes}/{pool_classes}, "
          f"random sample of {len(selection)}: {random_classes}/{pool_classes}")
    per_class = training.count_values("ground_truth.label").values()
    print(f"Training batch: {len(training)} images, at most "
          f"{max(per_class)} of one class")
    return {
        "dataset": dataset,
        "training": training,
        "pool_classes": pool_classes,
        "diverse_classes": diverse_classes,
        "random_classes": random_classes,
    }


if __name__ == "__main__":
    main()
