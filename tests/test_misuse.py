"""Misuse of the public SDK: every bad argument is a ValueError whose message
starts with the argument's name, and nothing is written when it is raised;
numpy scalars are numbers like any other."""

import io
import math
import pathlib

import numpy as np
import pytest
from bson import ObjectId
from PIL import Image

import fiftyone_ai_search as ais
from fiftyone_ai_search import validate
from fiftyone_ai_search.query import diverse
from fiftyone_ai_search.embedding import images
from fiftyone_ai_search.store.base import check_limit

from tests.helpers import shapes_dataset

KEPT = "kept"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """30 shape images, indexed, with latest results and a saved collection."""
    dataset = shapes_dataset(tmp_path_factory.mktemp("misuse"), num_samples=30)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    ais.perform_ai_search(dataset, prompt="a red circle", limit=10)
    ais.save_collection(dataset, KEPT)
    return dataset


def _state(dataset):
    """Everything a call could write: collections, their scores, saved views."""
    collections = {c["name"]: (c["size"], c["created_at"], c["query"])
                   for c in ais.list_collections(dataset)}
    scores = {n: ais.get_collection_scores(dataset, n) for n in collections}
    return sorted(dataset.list_saved_views()), collections, scores


def _assert_refused(dataset, arg, call):
    before = _state(dataset)
    # the message starts with the argument's name (not another's containing it)
    with pytest.raises(ValueError, match=rf"^{arg}\b(?!_)"):
        call()
    assert _state(dataset) == before  # nothing written


def _truncated_image():
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "PNG")
    return Image.open(io.BytesIO(buffer.getvalue()[:-40]))  # lazily opened


NAN = float("nan")
ID = "0123456789abcdef01234567"
DIVERSE = {"method": "random"}
KMEANS = {"method": "centroids", "clustering_method": "kmeans"}
NEGATIVE = {"prompt": "a circle", "negative_prompt": "a square"}

SEARCH_MISUSE = [
    ({"image": Image.new("RGB", (0, 0))}, "image"),
    ({"image": Image.new("RGB", (5, 0))}, "image"),
    ({"image": 5}, "image"),
    ({"image": ""}, "image"),
    ({"image": b""}, "image"),
    ({"image": "/nonexistent/query.png"}, "image"),
    ({"image": "truncated"}, "image"),  # replaced by _truncated_image()
    ({**DIVERSE, "seed": "x"}, "seed"),
    ({**DIVERSE, "seed": True}, "seed"),
    ({**DIVERSE, "seed": 1.5}, "seed"),
    ({**DIVERSE, "seed": -1}, "seed"),
    ({**DIVERSE, "seed": 2**32}, "seed"),
    ({"prompt": "a circle", "seed": "x"}, "seed"),
    ({"prompt": "a", "threshold": True}, "threshold"),
    ({"prompt": "a", "threshold": NAN}, "threshold"),
    ({"prompt": "a", "threshold": math.inf}, "threshold"),
    ({"prompt": "a", "threshold": "0.5"}, "threshold"),
    ({"prompt": "a", "threshold": np.float64(1.5)}, "threshold"),
    ({**NEGATIVE, "negative_weight": "a"}, "negative_weight"),
    ({**NEGATIVE, "negative_weight": NAN}, "negative_weight"),
    ({**NEGATIVE, "negative_weight": math.inf}, "negative_weight"),
    ({**NEGATIVE, "negative_weight": -0.5}, "negative_weight"),
    ({**NEGATIVE, "negative_weight": True}, "negative_weight"),
    ({"prompt": "a", "limit": "5"}, "limit"),
    ({"prompt": "a", "limit": 5.0}, "limit"),
    ({"prompt": "a", "limit": np.float64(5)}, "limit"),
    ({"prompt": "a", "limit": True}, "limit"),
    ({"prompt": "a", "limit": None}, "limit"),
    ({"prompt": "a", "limit": -1}, "limit"),
    ({"prompt": "a", "limit": 2**64}, "limit"),
    ({**KMEANS, "num_clusters": "3"}, "num_clusters"),
    ({**KMEANS, "num_clusters": 3.5}, "num_clusters"),
    ({**KMEANS, "num_clusters": True}, "num_clusters"),
    ({**KMEANS, "num_clusters": 0}, "num_clusters"),
    ({**KMEANS, "num_clusters": np.float32(3)}, "num_clusters"),
    ({"method": ["random"]}, "method"),
    ({"method": 5}, "method"),
    ({**DIVERSE, "clustering_method": 5}, "clustering_method"),
    ({"prompt": "a", "aggregation": ["max"]}, "aggregation"),
    ({"prompt": "a", "aggregation": None}, "aggregation"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "a", "negative_prompt": 5}, "negative_prompt"),
    ({"prompt": "a", "negative_prompt": " , "}, "negative_prompt"),
    ({"image_id": 5}, "image_id"),
    ({"image_id": []}, "image_id"),
    ({"image_id": [ID, 5]}, "image_id"),
    ({"prompt": "a", "image_id_scope": []}, "image_id_scope"),
    ({"prompt": "a", "image_id_scope": 5}, "image_id_scope"),
    ({"prompt": "a", "image_id_scope": ["x"]}, "image_id_scope"),
    ({"prompt": "a", "image_id_scope": [ID]}, "image_id_scope"),
]


@pytest.mark.parametrize("kwargs,arg", SEARCH_MISUSE,
                         ids=[f"{a}-{i}" for i, (_, a) in
                              enumerate(SEARCH_MISUSE)])
def test_search_misuse(indexed, kwargs, arg):
    if kwargs.get("image") == "truncated":
        kwargs = {"image": _truncated_image()}
    _assert_refused(indexed, arg,
                    lambda: ais.perform_ai_search(indexed, **kwargs))


COLLECTION_MISUSE = [
    (ais.get_collection, (KEPT,), {"min_score": "a"}, "min_score"),
    (ais.get_collection, (KEPT,), {"max_score": "a"}, "max_score"),
    (ais.get_collection, (KEPT,), {"min_score": True}, "min_score"),
    (ais.get_collection, (KEPT,), {"min_score": NAN}, "min_score"),
    (ais.get_collection, (KEPT,), {"max_score": 1.5}, "max_score"),
    (ais.get_collection, (KEPT,), {"min_score": 0.5, "max_score": 0.1},
     "min_score"),
    (ais.get_collection, (None,), {}, "name"),
    (ais.get_collection, (5,), {"min_score": 0.1}, "name"),
    (ais.get_collection, ("",), {}, "name"),
    (ais.get_collection_scores, (None,), {}, "name"),
    (ais.get_score_histogram, (KEPT,), {"bins": "a"}, "bins"),
    (ais.get_score_histogram, (KEPT,), {"bins": 0}, "bins"),
    (ais.get_score_histogram, (KEPT,), {"bins": 10**9}, "bins"),
    (ais.get_score_histogram, (KEPT,), {"bins": True}, "bins"),
    (ais.get_score_histogram, (KEPT,), {"bins": 2.0}, "bins"),
    (ais.get_score_histogram, (None,), {}, "name"),
    (ais.save_collection, ("",), {}, "name"),
    (ais.save_collection, (None,), {}, "name"),
    (ais.save_collection, ("new",), {"source": None}, "source"),
    (ais.save_collection, ("new",), {"source": 5}, "source"),
    (ais.save_collection, ("new",), {"overwrite": "yes"}, "overwrite"),
    (ais.save_collection, ("new",), {"min_score": "a"}, "min_score"),
    (ais.save_collection, ("new",), {"max_score": NAN}, "max_score"),
    (ais.save_collection, ("new",), {"min_score": 0.5, "max_score": 0.1},
     "min_score"),
    (ais.save_collection, (KEPT,), {}, "name"),  # taken
    (ais.rename_collection, (KEPT, ""), {}, "new_name"),
    (ais.rename_collection, (KEPT, None), {}, "new_name"),
    (ais.rename_collection, (KEPT, "  "), {}, "new_name"),
    (ais.rename_collection, (KEPT, ais.TEMPORARY_COLLECTION), {}, "new_name"),
    (ais.rename_collection, (None, "other"), {}, "name"),
    (ais.delete_collection, (None,), {}, "name"),
    (ais.delete_collection, ("",), {}, "name"),
]


@pytest.mark.parametrize(
    "func,args,kwargs,arg", COLLECTION_MISUSE,
    ids=[f"{f.__name__}-{a}-{i}" for i, (f, _, _, a) in
         enumerate(COLLECTION_MISUSE)])
def test_collection_misuse(indexed, func, args, kwargs, arg):
    _assert_refused(indexed, arg, lambda: func(indexed, *args, **kwargs))


def test_numpy_scalars_are_numbers(indexed):
    def search(**kwargs):
        ais.perform_ai_search(indexed, **kwargs)
        return ais.get_collection_scores(indexed, ais.TEMPORARY_COLLECTION)

    prompt = {"prompt": "a blue square", "negative_prompt": "a red circle"}
    scores = [s for _, s in search(**prompt, limit=20)]
    cut = np.float32(np.median(scores))
    # the same search with numpy scalars and with the plain values
    pairs = [
        (dict(prompt, limit=np.int64(5), threshold=cut,
              negative_weight=np.float32(0.25)),
         dict(prompt, limit=5, threshold=float(cut), negative_weight=0.25)),
        (dict(method="centroids", limit=np.int32(6),
              num_clusters=np.int64(3), seed=np.int64(1)),
         dict(method="centroids", limit=6, num_clusters=3, seed=1)),
        (dict(method="random", limit=np.uint8(6), seed=np.uint32(7),
              clustering_method="dbscan"),
         dict(method="random", limit=6, seed=7, clustering_method="dbscan")),
    ]
    for with_numpy, plain in pairs:
        got = search(**with_numpy)
        assert got and got == search(**plain)
        query = ais.list_collections(indexed)[-1]["query"]
        assert type(query["limit"]) is int  # stored as a plain number

    first = search(**prompt, limit=10)
    lo = np.float32(first[-3][1])
    view = ais.get_collection(indexed, ais.TEMPORARY_COLLECTION, min_score=lo,
                              max_score=np.float64(1.0))
    assert view.values("id") == ais.get_collection(
        indexed, ais.TEMPORARY_COLLECTION, min_score=float(lo),
        max_score=1).values("id")
    assert len(view) >= 3

    assert ais.get_score_histogram(indexed, KEPT, bins=np.int64(10)) == \
        ais.get_score_histogram(indexed, KEPT, bins=10)
    assert len(ais.get_score_histogram(
        indexed, KEPT, bins=ais.results.MAX_BINS)[1]) == \
        ais.results.MAX_BINS

    ais.save_collection(indexed, "numpy range", min_score=lo,
                        overwrite=np.bool_(True))
    saved = ais.list_collections(indexed)[-1]
    assert saved["name"] == "numpy range"
    assert saved["query"]["score_range"] == [float(lo), None]
    ais.delete_collection(indexed, "numpy range")


def test_other_forms_of_ids_and_paths(indexed, tmp_path):
    ids = indexed.take(2, seed=1).values("id")
    ais.perform_ai_search(indexed, image_id=ids, limit=5)
    expected = ais.get_collection_scores(indexed, ais.TEMPORARY_COLLECTION)
    for same in ([ObjectId(i) for i in ids], [i.upper() for i in ids],
                 np.array(ids)):
        ais.perform_ai_search(indexed, image_id=same, limit=5)
        assert ais.get_collection_scores(
            indexed, ais.TEMPORARY_COLLECTION) == expected
    ais.perform_ai_search(indexed, image_id=ObjectId(ids[0]), limit=3)

    path = tmp_path / "query.png"
    Image.open(indexed.first().filepath).save(path)
    ais.perform_ai_search(indexed, image=str(path), limit=5)
    expected = ais.get_collection_scores(indexed, ais.TEMPORARY_COLLECTION)
    ais.perform_ai_search(indexed, image=pathlib.Path(path), limit=5)
    assert ais.get_collection_scores(
        indexed, ais.TEMPORARY_COLLECTION) == expected


def test_an_empty_image_file_fails_with_a_reason(monkeypatch, tmp_path):
    # PIL writes no 0-pixel file, nor reads one; as if it did
    path = tmp_path / "empty.png"
    Image.new("RGB", (4, 4)).save(path)
    monkeypatch.setattr(images, "_open", lambda fp: Image.new("RGB", (0, 3)))
    with pytest.raises(images.ImageDecodeError, match="empty image: 0x3"):
        images.load_image(str(path))


def test_diverse_and_store_checks():
    vectors = np.random.default_rng(0).standard_normal((40, 8))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    plain = diverse.diverse_sample(vectors, 6, num_clusters=3, seed=2)
    numpy = diverse.diverse_sample(vectors, np.int64(6),
                                   num_clusters=np.int16(3), seed=np.int64(2))
    assert [a.tolist() for a in plain] == [a.tolist() for a in numpy]
    for kwargs, arg in [({"limit": "6"}, "limit"), ({"seed": "x"}, "seed"),
                        ({"num_clusters": True}, "num_clusters"),
                        ({"method": "best"}, "method"),
                        ({"clustering_method": "hdbscan"},
                         "clustering_method")]:
        with pytest.raises(ValueError, match=rf"^{arg}\b"):
            diverse.diverse_sample(vectors, **{"limit": 6, **kwargs})

    assert check_limit(np.int64(5)) == 5 and type(check_limit(np.int64(5))) is int
    for bad in (0, True, 2.0, 2**64, "5"):
        with pytest.raises(ValueError, match="^limit"):
            check_limit(bad)


@pytest.mark.parametrize("check,value,expected", [
    (validate.integer, np.int64(3), 3),
    (validate.integer, np.uint64(3), 3),
    (validate.number, np.float32(0.5), 0.5),
    (validate.number, np.int8(-2), -2.0),
    (validate.number, 1, 1.0),
])
def test_validate_returns_plain_values(check, value, expected):
    got = check(value, "x")
    assert got == expected and type(got) is type(expected)


# -- the SDK's flags, counts and field names (issue 21, item 11) -----------------


def _sdk_state(dataset):
    from fiftyone_ai_search.index import state as st

    doc = dict(st.get(dataset) or {})
    for volatile in ("lease", "progress", "pending"):
        doc.pop(volatile, None)
    return doc, _state(dataset)


SDK_MISUSE = [
    ("enable_embeddings", {"compute": "no"}, "compute"),
    ("enable_embeddings", {"compute": 1}, "compute"),
    ("enable_embeddings", {"load": "yes"}, "load"),
    ("calculate_embeddings", {"force": "no"}, "force"),
    ("calculate_embeddings", {"wait": "no"}, "wait"),
    ("calculate_embeddings", {"verify_files": 0}, "verify_files"),
    ("calculate_embeddings", {"wait": True, "progress": "x"}, "progress"),
    ("get_status", {"max_failures": -1}, "max_failures"),
    ("get_status", {"max_failures": 1.5}, "max_failures"),
    ("get_status", {"max_failures": NAN}, "max_failures"),
    ("get_status", {"max_failures": True}, "max_failures"),
    ("get_status", {"counts": "no"}, "counts"),
    *[(func, {"patches_field": bad}, "patches_field")
      for func in ("enable_embeddings", "disable_embeddings",
                   "calculate_embeddings", "get_status",
                   "is_embeddings_enabled", "get_embeddings_in_progress",
                   "get_embeddings_updated_at")
      for bad in (5, ["ground_truth"], "")],
    ("maintain_index", {"min_points": NAN}, "min_points"),
    ("maintain_index", {"min_points": 0}, "min_points"),
    ("maintain_index", {"min_points": "10"}, "min_points"),
]


@pytest.mark.parametrize("func,kwargs,arg", SDK_MISUSE,
                         ids=[f"{f}-{a}-{k[a]!r}" for f, k, a in SDK_MISUSE])
def test_sdk_misuse_is_refused_naming_the_argument_and_writes_nothing(
        indexed, func, kwargs, arg):
    before = _sdk_state(indexed)
    with pytest.raises(ValueError, match=rf"^{arg}\b(?!_)"):
        getattr(ais, func)(indexed, **kwargs)
    assert _sdk_state(indexed) == before
    assert not ais.get_embeddings_in_progress(indexed)  # no worker started


def test_get_embeddings_refuses_a_patches_field_that_is_no_name(indexed):
    with pytest.raises(ValueError, match=r"^patches_field\b"):
        ais.get_embeddings(indexed, patches_field=5)


def test_start_refresher_refuses_one_name_for_a_list(indexed):
    with pytest.raises(ValueError, match=r"^datasets\b"):
        ais.start_refresher(datasets=indexed.name)
    with pytest.raises(ValueError, match=r"^datasets\b"):
        ais.start_refresher(datasets=[indexed.name, 5])


def test_max_failures_takes_numpy_integers_and_zero_lists_none(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=3)
    for i, sample in enumerate(dataset.limit(2)):
        sample.filepath = str(tmp_path / f"missing-{i}.png")
        sample.save()
    ais.calculate_embeddings(dataset, wait=True, progress=False)

    assert len(ais.get_status(dataset)["failures"]) == 2
    assert len(ais.get_status(dataset, max_failures=np.int64(1))
               ["failures"]) == 1
    assert ais.get_status(dataset, max_failures=0)["failures"] == []
    assert ais.get_status(dataset, max_failures=np.uint8(5),
                          counts=np.bool_(True))["counts"]["num_failed"] == 2


SDK_MISUSE_MORE = [
    ("enable_embeddings", {"model": 5}, "model"),
    ("enable_embeddings", {"pretrained": 5}, "pretrained"),
    ("enable_embeddings", {"secrets": "x"}, "secrets"),
    ("calculate_embeddings", {"wait": True, "secrets": 5}, "secrets"),
    ("disable_embeddings", {"secrets": ["x"]}, "secrets"),
]


@pytest.mark.parametrize("func,kwargs,arg", SDK_MISUSE_MORE,
                         ids=[f"{f}-{a}" for f, _, a in SDK_MISUSE_MORE])
def test_more_sdk_misuse_is_refused_naming_the_argument(indexed, func,
                                                        kwargs, arg):
    test_sdk_misuse_is_refused_naming_the_argument_and_writes_nothing(
        indexed, func, kwargs, arg)


def test_the_refresher_and_field_listing_refuse_what_is_no_argument():
    with pytest.raises(ValueError, match=r"^interval_minutes\b"):
        ais.start_refresher(interval_minutes="5")
    with pytest.raises(ValueError, match=r"^interval_minutes\b"):
        ais.start_refresher(interval_minutes=NAN)
    with pytest.raises(ValueError, match=r"^wait\b"):
        ais.stop_refresher(wait="no")
    with pytest.raises(ValueError, match=r"^dataset\b"):
        ais.object_label_fields(None)
