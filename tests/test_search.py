"""perform_ai_search and collections, on real shape images with the tiny CLIP
(which really aligns text and images)."""

import numpy as np
import pytest

from fiftyone import ViewField as F

import fiftyone_ai_search as ais
from fiftyone_ai_search.query import topk
from fiftyone_ai_search.query.vectors import prompt_vectors
from fiftyone_ai_search.index import indexes
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search.demo import shapes

from tests.helpers import shapes_dataset


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """300 held-out shape images (10 of each colour x shape), indexed."""
    dataset = shapes_dataset(tmp_path_factory.mktemp("search"), num_samples=300)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    return dataset


def _labels(dataset, name):
    return ais.get_collection(dataset, name).values("ground_truth.label")


def _brute_force(dataset, query_vectors, limit, scope=None, threshold=None):
    ids, vectors = ais.get_embeddings(dataset)
    scores = (vectors @ np.atleast_2d(query_vectors).T).max(axis=1)
    keep = [i for i, sid in enumerate(ids)
            if (scope is None or sid in scope)
            and (threshold is None or scores[i] >= threshold)]
    order = sorted(keep, key=lambda i: -scores[i])[:limit]
    return [ids[i] for i in order], scores[order]


def _model(dataset):
    return indexes.load_index_model(st.get(dataset)["index"])


# -- prompt search -----------------------------------------------------------


def test_prompt_finds_what_it_describes(indexed):
    name = ais.perform_ai_search(indexed, prompt="a photo of a red circle",
                                 limit=10)

    assert name == ais.TEMPORARY_COLLECTION
    labels = _labels(indexed, name)
    assert len(labels) == 10
    assert labels.count("red circle") >= 9


@pytest.mark.parametrize("prompt,field,value", [
    ("something blue", "color", "blue"),
    ("a photo of a star", "shape", "star"),
])
def test_colour_only_and_shape_only_prompts(indexed, prompt, field, value):
    name = ais.perform_ai_search(indexed, prompt=prompt, limit=10)
    assert ais.get_collection(indexed, name).values(field).count(value) >= 9


def test_commas_union_prompts_with_best_score(indexed):
    name = ais.perform_ai_search(
        indexed, prompt="a photo of a red circle, a photo of a green square",
        limit=20)

    labels = _labels(indexed, name)
    assert labels.count("red circle") >= 8
    assert labels.count("green square") >= 8
    model = _model(indexed)
    vectors = prompt_vectors(
        model, ["a photo of a red circle", "a photo of a green square"])
    expected_ids, expected_scores = _brute_force(indexed, vectors, 20)
    got = ais.get_collection_scores(indexed, name)
    assert [s for _, s in got] == pytest.approx(expected_scores, abs=1e-4)


def test_negative_prompt_pushes_away_what_it_describes(indexed):
    plain = ais.perform_ai_search(indexed, prompt="a photo of a circle",
                                  limit=20)
    red_plain = ais.get_collection(indexed, plain).values("color").count("red")
    pushed = ais.perform_ai_search(indexed, prompt="a photo of a circle",
                                   negative_prompt="something red", limit=20)
    view = ais.get_collection(indexed, pushed)

    assert view.values("color").count("red") < red_plain
    assert view.values("shape").count("circle") >= 15


def test_prompt_results_equal_brute_force(indexed):
    prompt = "a photo of a yellow triangle"
    name = ais.perform_ai_search(indexed, prompt=prompt, limit=37)

    vector = prompt_vectors(_model(indexed), [prompt])
    expected_ids, expected_scores = _brute_force(indexed, vector, 37)
    got = ais.get_collection_scores(indexed, name)
    assert [s for _, s in got] == pytest.approx(expected_scores, abs=1e-4)
    assert [i for i, _ in got] == ais.get_collection(indexed, name).values("id")
    # ordered best first; scores are cosines
    scores = [s for _, s in got]
    assert scores == sorted(scores, reverse=True)
    assert all(-1 <= s <= 1 for s in scores)


def test_threshold_and_scope(indexed):
    prompt = "a photo of a purple cross"
    scope_view = indexed.match(F("color").is_in(["purple", "orange"]))
    name = ais.perform_ai_search(scope_view, prompt=prompt, limit=100,
                                 threshold=0.3)

    vector = prompt_vectors(_model(indexed), [prompt])
    scope = set(scope_view.values("id"))
    expected_ids, expected_scores = _brute_force(
        indexed, vector, 100, scope=scope, threshold=0.3)
    got = ais.get_collection_scores(indexed, name)
    assert {i for i, _ in got} == set(expected_ids)
    assert all(s >= 0.3 for _, s in got)
    assert set(ais.get_collection(indexed, name).values("color")) <= {
        "purple", "orange"}

    # image_id_scope narrows further
    some = scope_view.take(15, seed=1).values("id")
    name = ais.perform_ai_search(scope_view, prompt=prompt, limit=100,
                                 image_id_scope=some)
    assert {i for i, _ in ais.get_collection_scores(indexed, name)} <= set(some)


@pytest.mark.parametrize("make_view", [
    lambda d: d.match(F("shape") != "star"),
    # membership depends on the whole pipeline, not a filter of samples
    lambda d: d.sort_by("filepath", reverse=True).limit(200),
])
def test_large_view_is_searched_without_reading_its_ids(indexed, make_view,
                                                          monkeypatch):
    view = make_view(indexed)
    prompts = ["a photo of a green circle", "a photo of a red star"]
    # a view this large (for limit 10) is searched by over-fetching from the
    # whole index and asking MongoDB which hits are in the view
    assert not topk._use_id_filter(len(view), 10, len(indexed))
    read = []
    values = type(view).values
    monkeypatch.setattr(type(view), "values", lambda self, *a, **kw: (
        read.append(len(self)) or values(self, *a, **kw)))
    name = ais.perform_ai_search(view, prompt=", ".join(prompts), limit=10)
    assert max(read) < len(view)  # the view's ids were never all read
    monkeypatch.undo()

    vectors = prompt_vectors(_model(indexed), prompts)
    expected_ids, expected_scores = _brute_force(
        indexed, vectors, 10, scope=set(view.values("id")))
    got = ais.get_collection_scores(indexed, name)
    assert [i for i, _ in got] == expected_ids
    assert [s for _, s in got] == pytest.approx(expected_scores, abs=1e-4)


def test_nothing_above_threshold_returns_none(indexed):
    assert ais.perform_ai_search(indexed, prompt="a red circle",
                                 threshold=0.999) is None


# -- image search -----------------------------------------------------------------


def test_image_search_returns_the_same_class(indexed):
    ref = indexed.match(F("ground_truth.label") == "blue square").first()
    name = ais.perform_ai_search(indexed, image_id=ref.id, limit=10)

    scores = ais.get_collection_scores(indexed, name)
    assert scores[0] == (ref.id, pytest.approx(1.0, abs=1e-4))  # itself first
    assert _labels(indexed, name).count("blue square") >= 8


def test_several_reference_images_max_and_mean(indexed):
    a = indexed.match(F("ground_truth.label") == "green star").first()
    b = indexed.match(F("ground_truth.label") == "orange circle").first()

    name = ais.perform_ai_search(indexed, image_id=[a.id, b.id], limit=20)
    labels = _labels(indexed, name)
    assert labels.count("green star") >= 7 and labels.count("orange circle") >= 7

    _, vectors = ais.get_embeddings(indexed.select([a.id, b.id], ordered=True))
    _, expected = _brute_force(indexed, vectors, 20)
    got = [s for _, s in ais.get_collection_scores(indexed, name)]
    assert got == pytest.approx(expected, abs=1e-4)

    name = ais.perform_ai_search(indexed, image_id=[a.id, b.id], limit=20,
                                 aggregation="mean")
    mean = vectors.mean(axis=0)
    _, expected = _brute_force(indexed, mean / np.linalg.norm(mean), 20)
    got = [s for _, s in ais.get_collection_scores(indexed, name)]
    assert got == pytest.approx(expected, abs=1e-4)


def test_image_from_outside_the_dataset(indexed, tmp_path):
    spec = shapes.sample_spec(seed=1234, index=0, color="red", shape="triangle")
    image = shapes.render(spec, image_size=128, seed=1234)
    path = str(tmp_path / "query.png")
    image.save(path)

    for query in (path, image):
        name = ais.perform_ai_search(indexed, image=query, limit=10)
        assert _labels(indexed, name).count("red triangle") >= 7

    with pytest.raises(ValueError, match="image"):
        ais.perform_ai_search(indexed, image=str(tmp_path / "missing.png"))


# -- diverse search ---------------------------------------------------------------


SIX = ["red circle", "green square", "blue triangle", "yellow star",
       "purple cross", "orange circle"]


@pytest.mark.parametrize("method", ["centroids", "random"])
@pytest.mark.parametrize("clustering", ["kmeans", "dbscan"])
def test_diverse_search_covers_every_class(indexed, method, clustering):
    six = indexed.match(F("ground_truth.label").is_in(SIX))
    kwargs = dict(method=method, clustering_method=clustering, limit=12)
    if clustering == "kmeans":
        kwargs["num_clusters"] = 6

    name = ais.perform_ai_search(six, **kwargs)
    first = ais.get_collection_scores(indexed, name)

    assert len(first) == 12
    labels = ais.get_collection(indexed, name).values("ground_truth.label")
    assert set(labels) == set(SIX)
    # reproducible: the same call gives the same result
    ais.perform_ai_search(six, **kwargs)
    assert ais.get_collection_scores(indexed, name) == first


def test_diverse_centroids_are_typical_and_num_clusters_is_honoured(indexed):
    six = indexed.match(F("ground_truth.label").is_in(SIX))
    name = ais.perform_ai_search(six, method="centroids", num_clusters=3,
                                 limit=6)
    got = ais.get_collection_scores(indexed, name)
    # round-robin over 3 clusters: each round gives one per cluster, and a
    # cluster's representative scores higher than its second member
    assert len(got) == 6
    assert all(got[i][1] >= got[i + 3][1] for i in range(3))


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,arg", [
    ({}, "prompt"),
    ({"prompt": "a", "method": "random"}, "prompt"),
    ({"prompt": "a", "image_id": "0" * 24}, "image_id"),
    ({"method": "best"}, "method"),
    ({"method": "random", "clustering_method": "hdbscan"}, "clustering_method"),
    ({"method": "random", "clustering_method": "dbscan", "num_clusters": 3},
     "num_clusters"),
    ({"prompt": "a", "num_clusters": 3}, "num_clusters"),
    ({"prompt": "a", "limit": 0}, "limit"),
    ({"prompt": "a", "threshold": 1.5}, "threshold"),
    ({"prompt": "a", "threshold": -2}, "threshold"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": " , ,"}, "prompt"),
    ({"image_id": "not-an-id"}, "image_id"),
    ({"image_id": "0123456789abcdef01234567"}, "image_id"),
    ({"prompt": "a", "image_id_scope": ["0123456789abcdef01234567"]},
     "image_id_scope"),
    ({"prompt": "a", "aggregation": "sum"}, "aggregation"),
])
def test_misuse_is_a_value_error_naming_the_argument(indexed, kwargs, arg):
    before = ais.get_collection_scores(indexed, ais.TEMPORARY_COLLECTION) \
        if ais.list_collections(indexed) else None

    with pytest.raises(ValueError, match=arg):
        ais.perform_ai_search(indexed, **kwargs)

    after = ais.get_collection_scores(indexed, ais.TEMPORARY_COLLECTION) \
        if ais.list_collections(indexed) else None
    assert after == before  # nothing written


def test_search_when_off_or_not_ready_says_what_to_do(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=5, enable=False)
    with pytest.raises(ais.AISearchNotEnabledError, match="enable_embeddings"):
        ais.perform_ai_search(dataset, prompt="a red circle")

    from fiftyone_ai_search.demo import tiny_clip_model_name
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(), compute=False)
    with pytest.raises(ais.IndexNotReadyError, match="wait=True"):
        ais.perform_ai_search(dataset, prompt="a red circle")
    assert not dataset.list_saved_views()


# -- collections ----------------------------------------------------------------------


def test_each_search_rewrites_the_temporary_collection_in_place(indexed):
    """The temporary collection keeps its saved view (same id: its scores
    doc is replaced, never left behind), and whoever loads the saved view
    by name, as the App does, sees the new results."""
    import fiftyone as fo

    from fiftyone_ai_search import results as colls

    ais.perform_ai_search(indexed, prompt="a red circle", limit=10)
    view_id = colls._view_id(indexed, ais.TEMPORARY_COLLECTION)
    ais.perform_ai_search(indexed, prompt="a blue star", limit=7)
    ais.perform_ai_search(indexed, prompt="a green square", limit=5)

    assert colls._view_id(indexed, ais.TEMPORARY_COLLECTION) == view_id
    docs = list(colls._scores().find(
        {"dataset_id": colls.st.dataset_key(indexed)}, {"view_id": 1}))
    saved = {str(d.id) for d in indexed._doc.saved_views}
    assert {d["view_id"] for d in docs} <= saved
    assert sum(d["view_id"] == view_id for d in docs) == 1
    expected = [i for i, _ in ais.get_collection_scores(
        indexed, ais.TEMPORARY_COLLECTION)]
    assert len(expected) == 5
    # as another process reads it: the saved view's document, from MongoDB
    doc = fo.core.odm.SavedViewDocument.objects.get(id=view_id)
    assert indexed._load_saved_view_from_doc(doc).values("id") == expected
    assert indexed.load_saved_view(ais.TEMPORARY_COLLECTION).values(
        "id") == expected


def test_the_upkeep_sweeps_scores_left_behind(indexed):
    """Scores whose saved view is gone (left by an earlier version, or a
    view deleted through FiftyOne) go in the next upkeep pass, once an hour
    old; a younger one may be a collection being saved, and stays."""
    import datetime

    from bson import ObjectId

    from fiftyone_ai_search import results as colls

    ais.perform_ai_search(indexed, prompt="a red circle", limit=5)
    key = colls.st.dataset_key(indexed)
    now = colls.st.utcnow()
    old, young = str(ObjectId()), str(ObjectId())
    for view_id, age in ((old, 2), (young, 0.5)):
        colls._scores().insert_one({
            "dataset_id": key, "view_id": view_id, "sample_ids": [],
            "scores": [], "query": {},
            "created_at": now - datetime.timedelta(hours=age)})
    # the live collection is old too: it stays
    live = colls._view_id(indexed, ais.TEMPORARY_COLLECTION)
    colls._scores().update_one(
        {"dataset_id": key, "view_id": live},
        {"$set": {"created_at": now - datetime.timedelta(hours=3)}})

    ais.maintain_index(indexed)
    left = {d["view_id"] for d in colls._scores().find({"dataset_id": key})}
    assert old not in left and {young, live} <= left
    assert len(ais.get_collection_scores(indexed,
                                         ais.TEMPORARY_COLLECTION)) == 5
    colls._scores().delete_one({"dataset_id": key, "view_id": young})


def test_collections_lifecycle(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=60)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    before = dict(zip(*dataset.values(["id", "last_modified_at"])))

    first = ais.perform_ai_search(dataset, prompt="a red circle", limit=10)
    first_scores = ais.get_collection_scores(dataset, first)
    ais.save_collection(dataset, "red circles")
    second = ais.perform_ai_search(dataset, prompt="a blue star", limit=5)

    # each search overwrites the temporary collection; saved ones stay
    assert first == second == ais.TEMPORARY_COLLECTION
    assert len(ais.get_collection(dataset, second)) == 5
    assert ais.get_collection_scores(dataset, "red circles") == first_scores
    names = [c["name"] for c in ais.list_collections(dataset)]
    assert sorted(names) == sorted([ais.TEMPORARY_COLLECTION, "red circles"])
    assert "red circles" in dataset.list_saved_views()
    info = {c["name"]: c for c in ais.list_collections(dataset)}
    assert info["red circles"]["size"] == 10
    assert info["red circles"]["query"]["prompt"] == "a red circle"

    # a score range, no model run; order kept
    lo = first_scores[6][1]
    view = ais.get_collection(dataset, "red circles", min_score=lo)
    assert view.values("id") == [i for i, s in first_scores if s >= lo]
    hi = first_scores[2][1]
    view = ais.get_collection(dataset, "red circles", min_score=lo,
                              max_score=hi)
    assert view.values("id") == [i for i, s in first_scores if lo <= s <= hi]

    edges, counts = ais.get_score_histogram(dataset, "red circles", bins=5)
    assert len(edges) == 6 and sum(counts) == 10
    assert edges[0] <= first_scores[-1][1] and edges[-1] >= first_scores[0][1]

    ais.rename_collection(dataset, "red circles", "reds")
    assert ais.get_collection_scores(dataset, "reds") == first_scores
    with pytest.raises(ais.CollectionNotFoundError):
        ais.get_collection(dataset, "red circles")
    with pytest.raises(ValueError, match="new_name"):
        ais.rename_collection(dataset, "reds", ais.TEMPORARY_COLLECTION)

    ais.delete_collection(dataset, "reds")
    assert "reds" not in dataset.list_saved_views()
    assert [c["name"] for c in ais.list_collections(dataset)] == [
        ais.TEMPORARY_COLLECTION]

    # collections never touch samples, so the index has nothing to re-sync
    assert dict(zip(*dataset.values(["id", "last_modified_at"]))) == before
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert report.added == report.updated == 0


def test_default_diverse_search_covers_the_classes_better_than_chance(indexed):
    # no num_clusters: one cluster per result
    name = ais.perform_ai_search(indexed, method="centroids", limit=30)
    labels = ais.get_collection(indexed, name).values("ground_truth.label")
    assert len(labels) == 30
    assert len(set(labels)) >= 28  # of 30 classes; random picks cover ~20
