"""The scripts in examples/ run, small, and do what they say."""

import os
import sys
import uuid

import pytest

import fiftyone as fo

import fiftyone_ai_search as ais

EXAMPLES_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"
)
sys.path.insert(0, EXAMPLES_DIR)

import active_learning  # noqa: E402
import annotation_batch  # noqa: E402
import defect_search  # noqa: E402


def _name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# slow: an example end to end, a dataset synced and searched (the fast tier's budget)
@pytest.mark.slow
def test_annotation_batch_clones_the_tagged_results():
    out = annotation_batch.main(name=_name("ex-annotation"), num_samples=90,
                                threshold=0.8)

    dataset, batch = out["dataset"], out["batch"]
    assert fo.dataset_exists(batch.name)
    tagged = dataset.match_tags("to_annotate")
    assert len(tagged) > 0
    assert sorted(batch.values("filepath")) == sorted(tagged.values("filepath"))
    scores = [s for _, s in ais.get_collection_scores(dataset, out["collection"])]
    assert len(scores) == len(batch) and min(scores) >= 0.8
    assert set(batch.values("ground_truth.label")) == {"red circle"}


# slow: an example end to end, a dataset synced and searched (the fast tier's budget)
@pytest.mark.slow
def test_active_learning_selection_covers_the_pool():
    out = active_learning.main(name=_name("ex-active"), num_samples=120,
                               num_labelled=10, budget=40)

    dataset, training = out["dataset"], out["training"]
    assert fo.dataset_exists(training.name)
    assert len(training) == 40
    # 120 balanced samples: every one of the 30 classes is still in the pool
    assert out["pool_classes"] == 30
    assert len(training.distinct("ground_truth.label")) == out["pool_classes"]
    assert out["diverse_classes"] == out["pool_classes"] > out["random_classes"]
    # the selection left the pool: the next round will not pick it again
    assert len(dataset.match_tags("train")) == 10 + 40
    selected = set(training.values("filepath"))
    pool = dataset.match_tags("train", bool=False)
    assert selected.isdisjoint(pool.values("filepath"))


# slow: an example end to end, a dataset synced and searched (the fast tier's budget)
@pytest.mark.slow
def test_defect_search_reviews_only_samples_above_the_threshold():
    out = defect_search.main(name=_name("ex-defects"), num_samples=120,
                             limit=30)

    dataset, review, threshold = out["dataset"], out["review"], out["min_score"]
    assert fo.dataset_exists(review.name)
    scores = ais.get_collection_scores(dataset, out["collection"])
    assert len(scores) == 30
    paths = dict(zip(*dataset.values(["id", "filepath"])))
    above = {paths[i] for i, s in scores if s >= threshold}
    assert 0 < len(above) < 30
    assert set(review.values("filepath")) == above
    assert set(review.values("ground_truth.label")) == {"orange cross"}
    names = {c["name"] for c in ais.list_collections(dataset)}
    assert {out["collection"], out["similar"]} <= names


@pytest.mark.parametrize("edges,counts,expected", [
    ([0, 1, 2, 3, 4, 5], [3, 0, 0, 1, 2], 2),     # the widest run wins
    ([0, 1, 2, 3, 4, 5], [3, 0, 1, 0, 2], 3.5),   # a tie: the highest run
    ([0, 1, 2, 3], [1, 1, 1], 0),                 # no gap: keep everything
])
def test_widest_gap(edges, counts, expected):
    assert defect_search.widest_gap(edges, counts) == expected
