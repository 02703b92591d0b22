"""Misuse, swept systematically (issue 21, item 11): every public function of
``ais.__all__`` and every parameter of its signature, with wrong values
chosen by the parameter's kind (a flag, a number, a name, a field, ids, a
dataset ...); and the Brain entry points of an index made by
``fob.compute_similarity(..., backend="ai_search")``.

The house rule (tests/test_misuse.py): a wrong argument is a ``ValueError``
whose message starts with the argument's name, and nothing is written when
it is raised; numpy scalars are numbers (and flags) like any other, so they
are swept as valid values that must be accepted.

Each failing case says which of the four ways it failed: ACCEPTED (no
error), CRASHED (another exception), UNNAMED (a ValueError not naming the
argument), WROTE (refused, but after writing something).
"""

import inspect
import math
import re

import fiftyone as fo
import fiftyone.brain as fob
import numpy as np
import pytest

import fiftyone_ai_search as ais
from fiftyone_ai_search import results
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search.demo import tiny_clip_model_name

from tests.helpers import shapes_dataset

KEPT = "kept"
SPARE = "sweep spare"
NEW = "sweep new"
BRAIN_KEY = "sweep"
NAN = float("nan")
INF = math.inf

# -- the values, by the parameter's kind -------------------------------------

# a view of a video dataset stands for "frames" / "clips"; "NAME" for the
# dataset's name given where the dataset is expected (all resolved at run)
FRAMES, CLIPS, NAME = "<frames view>", "<clips view>", "<dataset name>"
VIEWS = {}  # filled by the fixture

BAD = {
    "flag": ["no", 2, None],
    "number": ["5", NAN, INF, -1, 10**12, [1], True, None],
    "name": [5, b"x", ["a"], "", None],
    "field": [5, b"x", ["a"], ""],
    "ids": [5, "not-an-id"],
    "dataset": [5, None, NAME, FRAMES, CLIPS],
    "secrets": ["x", 5, ["x"]],
    "names": [NAME, 5, [5]],
    "progress": ["x", 2, None],
    "settings": ["x", 5],
}

# parameters whose kind is not read off their type hint
KIND_OF_NAME = {
    "dataset": "dataset", "samples": "dataset",
    "patches_field": "field", "embeddings_field": "field",
    "image_id": "ids", "label_id": "ids", "image_id_scope": "ids",
    "secrets": "secrets", "datasets": "names", "progress": "progress",
    "settings": "settings",
}


def _kind(annotation, name):
    if name in KIND_OF_NAME:
        return KIND_OF_NAME[name]
    hint = str(annotation).split("|")[0].strip()
    return {"bool": "flag", "int": "number", "float": "number",
            "str": "name"}[hint]


def _optional(parameter):
    return parameter.default is None or "None" in str(parameter.annotation)


# where a wrong value of the table is right for one parameter
# ((function or None for any, parameter, repr(value)), why)
VALID_HERE = {
    (None, "min_score", "-1"): "cosine scores are in [-1, 1]",
    (None, "max_score", "-1"): "cosine scores are in [-1, 1]",
    ("perform_ai_search", "threshold", "-1"): "cosine scores are in [-1, 1]",
    (None, "max_failures", repr(10**12)):
        "a cap on a list: more than there are lists them all",
    (None, "negative_weight", repr(10**12)):
        "a weight: normalize(p - w * n) is defined for any finite w >= 0",
    (None, "margin", repr(10**12)):
        "crops grow by margin, clamped to the image: the whole image",
    ("search_frames", "threshold", "-1"): "cosine scores are in [-1, 1]",
    ("perform_frame_search", "threshold", "-1"):
        "cosine scores are in [-1, 1]",
    ("search_frames", "samples", repr(FRAMES)):
        "a frames view scopes frame search (this one's videos have no "
        "frame index: AISearchNotEnabledError)",
    ("perform_frame_search", "samples", repr(FRAMES)):
        "a frames view scopes frame search, as search_frames'",
    ("frames_view", "samples", repr(FRAMES)):
        "a frames view's videos, as search_frames'",
    ("is_latest_results", "samples", repr(FRAMES)):
        "a question: a frames view is never results (False)",
    ("is_latest_results", "samples", repr(CLIPS)):
        "a question: a clips view is never results (False)",
}

# parameters not swept, and why
NOT_SWEPT = {
    ("perform_ai_search", "image"):
        "a path or a PIL image: swept by hand in test_misuse.SEARCH_MISUSE",
    ("get_settings", "overrides"):
        "**overrides: any Settings field, checked by Settings itself",
    ("search_frames", "image"):
        "a path or a PIL image, as perform_ai_search's",
    ("search_frames", "frame"):
        "(video id, frame number): checked in test_frames_sync",
    ("perform_frame_search", "image"): "as search_frames'",
    ("perform_frame_search", "frame"): "as search_frames'",
    ("frames_view", "hits"):
        "search_frames' hits: a list of dicts, not a kind of this table",
    ("enable_embeddings", "brain_key"):
        "False is a valid value (no brain run); the name is checked by "
        "brain.check_brain_key, beside the Brain's own rules",
}

# the rest of a call that is otherwise valid and cheap, per parameter swept
# (None: the function's own default base)
BASE = {
    "perform_ai_search": {"prompt": "a circle", "limit": 5},
    ("perform_ai_search", "prompt"): {"limit": 5},
    ("perform_ai_search", "image_id"): {"limit": 5},
    ("perform_ai_search", "label_id"): {"limit": 5},
    ("perform_ai_search", "method"): {"limit": 5},
    ("perform_ai_search", "clustering_method"): {"method": "random",
                                                  "limit": 5},
    ("perform_ai_search", "num_clusters"): {"method": "centroids",
                                             "clustering_method": "kmeans",
                                             "limit": 5},
    ("perform_ai_search", "seed"): {"method": "random", "limit": 5},
    ("perform_ai_search", "negative_weight"): {
        "prompt": "a circle", "negative_prompt": "a square", "limit": 5},
    "get_collection": {"name": KEPT},
    "get_collection_scores": {"name": KEPT},
    "get_score_histogram": {"name": KEPT},
    "save_collection": {"name": NEW},
    "rename_collection": {"name": SPARE, "new_name": "sweep renamed"},
    "delete_collection": {"name": SPARE},
    "enable_embeddings": {"compute": False},
    ("enable_embeddings", "margin"): {"compute": False,
                                      "patches_field": "ground_truth"},
    ("enable_embeddings", "square"): {"compute": False,
                                      "patches_field": "ground_truth"},
    "calculate_embeddings": {"wait": True, "progress": False},
    ("calculate_embeddings", "wait"): {"progress": False},
    "start_refresher": {"datasets": []},
    "frames_view": {"hits": []},
    "search_frames": {"prompt": "a circle"},
    "perform_frame_search": {"prompt": "a circle"},
    "get_frame_hits": {"name": KEPT},
    "get_frame_collection": {"name": KEPT},
    "is_frame_collection": {"name": KEPT},
}

# functions skipped, and why: none. None needs a server (the index is the
# embedded one); none starts long work: calculate_embeddings runs with
# wait=True on an index already in sync, enable_embeddings with
# compute=False, disable_embeddings only with values it must refuse (one
# taken would show in the cases after it too), and start_refresher is
# stopped after each case
SKIPPED = {}

# numpy scalars, valid: (function, {kwargs}) called on the indexed dataset
NUMPY_VALID = [
    ("perform_ai_search", {"prompt": "a circle", "limit": np.int64(5),
                           "threshold": np.float32(0.01),
                           "exact": np.bool_(True)}),
    ("perform_ai_search", {"prompt": "a circle", "negative_prompt": "a square",
                           "negative_weight": np.float32(0.5),
                           "limit": np.int32(5)}),
    ("perform_ai_search", {"method": "centroids", "limit": np.int64(5),
                           "num_clusters": np.int64(3),
                           "seed": np.int64(1)}),
    ("get_collection", {"name": KEPT, "min_score": np.float32(-1),
                        "max_score": np.float64(1)}),
    ("get_score_histogram", {"name": KEPT, "bins": np.int64(5)}),
    ("save_collection", {"name": NEW, "overwrite": np.bool_(True),
                         "min_score": np.float32(-0.5)}),
    ("find_near_duplicates", {"threshold": np.float32(0.5)}),
    ("near_duplicate_groups", {"threshold": np.float64(0.99)}),
    ("enable_embeddings", {"compute": np.bool_(False),
                           "load": np.bool_(True)}),
    ("calculate_embeddings", {"wait": np.bool_(True),
                              "force": np.bool_(False),
                              "verify_files": np.bool_(False),
                              "progress": np.bool_(False)}),
    ("get_status", {"max_failures": np.int64(5), "counts": np.bool_(True)}),
    ("maintain_index", {"min_points": np.int64(10)}),
    ("available_models", {"refresh": np.bool_(False)}),
    ("start_refresher", {"interval_minutes": np.float32(5), "datasets": []}),
    ("stop_refresher", {"wait": np.bool_(True)}),
]

# functions that take no dataset first
NO_DATASET = {"available_models", "check_model", "get_settings",
              "start_refresher", "stop_refresher"}


def _public_functions():
    return [(n, getattr(ais, n)) for n in ais.__all__
            if inspect.isfunction(getattr(ais, n)) and n not in SKIPPED]


def _cases():
    cases = []
    for fname, func in _public_functions():
        for pname, parameter in inspect.signature(func).parameters.items():
            if (fname, pname) in NOT_SWEPT:
                continue
            kind = _kind(parameter.annotation, pname)
            for value in BAD[kind]:
                if value is None and _optional(parameter):
                    continue
                if (fname, pname, repr(value)) in VALID_HERE or (
                        None, pname, repr(value)) in VALID_HERE:
                    continue
                cases.append(pytest.param(
                    fname, pname, value,
                    id=f"{fname}-{pname}-{value!r}"))
    return cases


# -- the fixture ------------------------------------------------------------


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """30 shape images, indexed, with latest results, two saved collections,
    a Brain index made by compute_similarity, and a video dataset for the
    frames / clips views."""
    dataset = shapes_dataset(tmp_path_factory.mktemp("sweep"), num_samples=30)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    ais.perform_ai_search(dataset, prompt="a red circle", limit=10)
    ais.save_collection(dataset, KEPT)
    ais.save_collection(dataset, SPARE)
    fob.compute_similarity(dataset, backend="ai_search", brain_key=BRAIN_KEY,
                           embeddings=False,
                           clip_model=tiny_clip_model_name())

    directory = tmp_path_factory.mktemp("sweep-video")
    video = fo.Dataset()
    sample = fo.Sample(
        filepath=str(directory / "a.mp4"),
        metadata=fo.VideoMetadata(total_frame_count=3, frame_rate=1.0,
                                  frame_width=32, frame_height=32,
                                  duration=3.0))
    sample.frames[1]["objects"] = fo.Detections(detections=[
        fo.Detection(label="thing", bounding_box=[0, 0, 0.5, 0.5])])
    video.add_sample(sample)
    VIEWS.update({
        FRAMES: video.to_frames(sample_frames=False),
        CLIPS: video.to_clips("frames.objects"),
        NAME: dataset.name,
    })
    yield dataset
    ais.stop_refresher(wait=True)
    video.delete()


def _resolve(dataset, value):
    if isinstance(value, str) and value in VIEWS:
        return VIEWS[value]
    return value


def _state(dataset):
    """Everything a call could write: the state document (less what moves
    by itself), collections, their scores, saved views, brain runs.

    The collections and their scores are read as list_collections and
    get_collection_scores read them (the dataset's saved views, then the
    scores documents), in one read of each rather than one per
    collection: taken twice a case, 1,300 times a run, the per-collection
    reads (a reload of the saved views each) were most of the file's
    time."""
    doc = dict(st.get(dataset) or {})
    for volatile in ("lease", "progress", "pending"):
        doc.pop(volatile, None)
    dataset._doc.reload("saved_views")
    names = {str(view.id): view.name for view in dataset._doc.saved_views}
    collections, scores = {}, {}
    for c in results._scores().find({"dataset_id": st.dataset_key(dataset)}):
        name = names.get(c["view_id"])
        if name is None:
            continue  # its saved view is gone: no collection
        collections[name] = (len(c["sample_ids"]), c["created_at"],
                             c.get("query", {}))
        scores[name] = list(zip(c["sample_ids"], c["scores"]))
    return (doc, sorted(dataset.list_saved_views()), collections, scores,
            sorted(dataset.list_brain_runs()))


def _classify(dataset, arg, call):
    """None when refused as the house rule says, else how it failed."""
    before = _state(dataset)
    try:
        call()
    except ValueError as e:
        if not re.match(rf"^{arg}\b(?!_)", str(e)):
            return f"UNNAMED: {type(e).__name__}: {e}"
        if _state(dataset) != before:
            return f"WROTE: refused ({e}) after writing"
        return None
    except Exception as e:  # noqa: BLE001 - what the sweep looks for
        return f"CRASHED: {type(e).__name__}: {e}"
    return "ACCEPTED: no error"


def _call(dataset, fname, kwargs):
    func = getattr(ais, fname)
    if fname in NO_DATASET:
        return func(**kwargs)
    kwargs = dict(kwargs)
    first = next(iter(inspect.signature(func).parameters))
    target = kwargs.pop(first, dataset)
    return func(target, **kwargs)


@pytest.mark.parametrize("fname,pname,value", _cases())
def test_a_wrong_value_is_refused_naming_it(indexed, fname, pname, value):
    value = _resolve(indexed, value)
    base = BASE.get((fname, pname), BASE.get(fname, {}))
    kwargs = {**base, pname: value}
    try:
        failure = _classify(indexed, pname,
                            lambda: _call(indexed, fname, kwargs))
    finally:
        ais.stop_refresher(wait=True)
    assert failure is None, failure


@pytest.mark.parametrize(
    "fname,kwargs", NUMPY_VALID,
    ids=[f"{f}-{'-'.join(k)}" for f, k in NUMPY_VALID])
def test_numpy_scalars_are_accepted(indexed, fname, kwargs):
    try:
        _call(indexed, fname, kwargs)
    finally:
        ais.stop_refresher(wait=True)
        if NEW in [c["name"] for c in ais.list_collections(indexed)]:
            ais.delete_collection(indexed, NEW)


def test_every_parameter_is_swept_or_said_why_not():
    swept = {(c.values[0], c.values[1]) for c in _cases()}
    for fname, func in _public_functions():
        for pname in inspect.signature(func).parameters:
            assert (fname, pname) in swept or (fname, pname) in NOT_SWEPT, (
                fname, pname)


# -- the Brain entry points ---------------------------------------------------

BRAIN_BAD = [
    ("sort_by_similarity", "query", v) for v in ["", None, 5, [], b"x"]
] + [
    (method, "k", v)
    for method in ("sort_by_similarity", "dataset.sort_by_similarity")
    for v in ["5", NAN, INF, -1, 0, [1], True, 2.5, 10**12]
] + [
    ("dataset.sort_by_similarity", "query", v) for v in ["", None, 5, []]
] + [
    ("find_duplicates", "thresh", v) for v in [-1, NAN, INF, "0.5", True]
] + [
    ("use_view", "samples", v) for v in [FRAMES, CLIPS, 5, "x"]
]


# FiftyOne's SortBySimilarity stage parses the query (list(query)) in its
# constructor, before the backend is asked: a TypeError of FiftyOne's own
_STAGE = ("fiftyone.core.stages.SortBySimilarity iterates the query before "
          "the ai_search backend sees it (FiftyOne's code)")
BRAIN_XFAIL = {("dataset.sort_by_similarity", "query", "None"): _STAGE,
               ("dataset.sort_by_similarity", "query", "5"): _STAGE}


def _brain_params():
    return [pytest.param(
        m, a, v, id=f"{m}-{a}-{v!r}",
        marks=[pytest.mark.xfail(strict=True,
                                 reason=BRAIN_XFAIL[(m, a, repr(v))])]
        if (m, a, repr(v)) in BRAIN_XFAIL else [])
        for m, a, v in BRAIN_BAD]


def _brain_call(dataset, method, arg, value):
    if method == "dataset.sort_by_similarity":
        kwargs = {"query": "a red circle", "k": 5, arg: value}
        return dataset.sort_by_similarity(brain_key=BRAIN_KEY, **kwargs)
    index = dataset.load_brain_results(BRAIN_KEY)
    if method == "sort_by_similarity":
        kwargs = {"query": "a red circle", "k": 5, arg: value}
        return index.sort_by_similarity(**kwargs)
    if method == "find_duplicates":
        return index.find_duplicates(thresh=value)
    return index.use_view(value)


@pytest.mark.parametrize("method,arg,value", _brain_params())
def test_the_brain_refuses_a_wrong_value_naming_it(indexed, method, arg,
                                                    value):
    value = _resolve(indexed, value)
    failure = _classify(indexed, arg,
                        lambda: _brain_call(indexed, method, arg, value))
    assert failure is None, failure


def test_the_brain_takes_numpy_scalars(indexed):
    index = indexed.load_brain_results(BRAIN_KEY)
    plain = index.sort_by_similarity("a red circle", k=5).values("id")
    assert index.sort_by_similarity(
        "a red circle", k=np.int64(5)).values("id") == plain
    index.find_duplicates(thresh=np.float32(0.1))
    assert index.use_view(indexed.limit(np.int64(5))) is not None
    assert indexed.sort_by_similarity(
        "a red circle", k=np.int32(5), brain_key=BRAIN_KEY).values(
        "id") == plain
