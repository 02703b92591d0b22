"""Results kept as collections: FiftyOne saved views, with their scores.

A collection is an ordinary saved view of the dataset (an ordered
``select`` of the result samples), so the App lists it, and it can be tagged,
cloned or exported like any view. Its scores are kept beside it in our own
MongoDB collection (``ai_search_collections``), keyed by the saved view's id
so that a rename in the App keeps them. Scores never go on samples: that
would bump ``last_modified_at`` and make the index re-sync itself.

Every search overwrites the dataset's temporary collection,
:data:`TEMPORARY_COLLECTION`; :func:`save_collection` keeps it under a name.

A collection of the frames of a video dataset (:func:`fiftyone_ai_search.
frame_search.perform_frame_search`) is a frames view of the hit videos at
the frame index's rate; its ids are frame keys ``(video, frame number)``,
never a frames view's ids, which FiftyOne generates anew (see
:mod:`fiftyone_ai_search.frame_views`). It also opens as a clips view, a
clip starting at each hit, which the App's video player opens at the hit
(:mod:`fiftyone_ai_search.clip_views`); a collection kept so (the App's
"Open as clips", ``save_collection(..., as_clips=True)``) opens as clips
by default, its saved view too.

A collection of a grouped dataset selects from all its image slices
(``select_group_slices(media_type="image")``, a flat view): FiftyOne's
``select()`` on a grouped dataset only sees the active slice, so results of
another slice (or of several) would show as nothing, and a saved view does
not keep the slice that was active when it was saved.
"""

from __future__ import annotations

import datetime
import time
import uuid
from typing import TYPE_CHECKING

import bson
import numpy as np
from bson import json_util
from pymongo import ReturnDocument

from . import clip_views
from . import frame_views
from . import validate
from .errors import CollectionNotFoundError
from .index import media
from .index import state as st
from .index.targets import best_of_each_video, frame_video, split_frame_key

if TYPE_CHECKING:  # for annotations only
    import fiftyone.core.collections as foc
    import fiftyone.core.dataset as fod
    import fiftyone.core.view as fov

#: the collection each search overwrites
TEMPORARY_COLLECTION = "AI search results"

SCORES_COLLECTION = "ai_search_collections"

#: the most bins :func:`get_score_histogram` makes (its arrays are this long;
#: a chart shows far fewer)
MAX_BINS = 10_000


def _scores():
    coll = st.database()[SCORES_COLLECTION]
    coll.create_index([("dataset_id", 1), ("view_id", 1)], unique=True)
    return coll


def _saved_view_doc(dataset, name):
    # reload: another process (the App, a notebook) may have changed them
    for attempt in range(3):
        dataset._doc.reload("saved_views")
        try:
            for doc in dataset._doc.saved_views:
                if doc.name == name:
                    return doc
            return None
        except AttributeError:
            # a saved view deleted (a disable, another process) between
            # the reload of the dataset's list and its dereference: the
            # reference reads as a bare DBRef; the list read again is right
            if attempt == 2:
                raise
    return None


def _view_id(dataset, name):
    doc = _saved_view_doc(dataset, name)
    return None if doc is None else str(doc.id)


def _require_view_id(dataset, name, arg="name"):
    validate.collection_name(name, arg)
    view_id = _view_id(dataset, name)
    if view_id is None or _scores().find_one(
        {"dataset_id": st.dataset_key(dataset), "view_id": view_id}, {"_id": 1}
    ) is None:
        raise CollectionNotFoundError(
            f"Dataset '{dataset.name}' has no AI search collection named "
            f"{name!r}; see list_collections(dataset)"
        )
    return view_id


def write_collection(dataset, name, sample_ids, scores, query=None,
                     patches_field=None, source_ids=None, frames=None):
    """Saves ``sample_ids`` (in this order) and their scores as collection
    ``name``, replacing any collection of that name.

    The saved view and its scores change together: the scores document
    is written first, under a new ``version`` (its ``view_version`` unset:
    readers stop trusting the saved view); then one writer at a time (a
    lease on the scores document, :data:`VIEW_LEASE_S`, so a writer killed
    with ``kill -9`` holds nobody up for long) rewrites the view from the
    scores document as it is then, and sets ``view_version`` to the
    version it wrote, if the document is still that version. A writer
    whose version was superseded meanwhile leaves the view to the newer
    one. So the saved view is only ever written from the latest scores,
    and :func:`get_collection` trusts it only when ``view_version`` equals
    ``version``; until then it builds the view from the scores. (Before
    the lease, a slow writer could rewrite the view with its older results
    after a newer one had marked it complete: readers saw one search's view
    with another's scores until that writer corrected it.) A document that
    cannot be stored is refused before anything is written.

    Args:
        patches_field (None): the ids are label ids of objects of this
            field: the collection is a patches view of those objects
        source_ids (None): with ``patches_field``, the ids of the samples
            holding the objects (so that the view reads only those)
        frames (None): the ids are frame keys of a video dataset's frame
            index: a dict ``fps`` (the index's rate, the frames view's),
            ``timestamps`` and ``shown`` (each frame's grid frame number
            in the frames view, see :func:`_frame_fields`), one a frame,
            and optionally ``clips`` (the collection opens as clips, its
            saved view a clips view)

    Returns:
        the name
    """
    record = {
        "dataset_id": st.dataset_key(dataset),
        "sample_ids": [str(i) for i in sample_ids],
        "scores": [float(s) for s in scores],
        "patches_field": patches_field,
        "source_ids": None if source_ids is None else list(source_ids),
        **_frame_fields(frames),
        "query": _plain(query or {}),
        "version": uuid.uuid4().hex,
        "view_version": None,
    }
    bson.encode(record)  # refused here, before the view is touched
    view_doc = _saved_view_doc(dataset, name)
    if view_doc is None:
        # a frames view is not built here (that generates its frames
        # dataset): its stages are written below, as every rewrite's
        dataset.save_view(name, dataset.limit(0) if frames else _select(
            dataset, record["sample_ids"], patches_field, source_ids))
        view_doc = _saved_view_doc(dataset, name)
    key = {"dataset_id": record["dataset_id"], "view_id": str(view_doc.id)}
    # $set, not a replacement: a writer's lease on the view stays
    _scores().update_one(key, {"$set": dict(
        record, view_id=key["view_id"], created_at=st.utcnow())},
        upsert=True)
    _write_view(dataset, view_doc, key, record["version"])
    return name


#: how long a writer holds the right to rewrite a collection's view; a
#: rewrite takes milliseconds, so this only bounds the wait a writer
#: killed while holding it causes
VIEW_LEASE_S = 30.0

#: how long a writer waits for the lease before it leaves the view to the
#: next writer or reader (its scores are stored: get_collection builds the
#: view from them meanwhile)
VIEW_WAIT_S = 45.0


def _write_view(dataset, view_doc, key, version):
    """Makes the saved view show the scores document of ``key``, unless a
    newer version supersedes ``version`` (its writer does it then)."""
    token = uuid.uuid4().hex
    deadline = time.monotonic() + VIEW_WAIT_S
    while True:
        now = st.utcnow()
        held = _scores().update_one(
            dict(key, **{"$or": [{"writer": None},
                                 {"writer": {"$exists": False}},
                                 {"writer_until": {"$lt": now}}]}),
            {"$set": {"writer": token, "writer_until": now
                      + datetime.timedelta(seconds=VIEW_LEASE_S)}})
        if held.matched_count:
            try:
                latest = _scores().find_one(key)
                if latest and latest.get("view_version") != latest["version"]:
                    _rewrite_view(view_doc, _stages(dataset, latest))
                    _scores().update_one(
                        dict(key, version=latest["version"]),
                        {"$set": {"view_version": latest["version"]}})
                    # this process's copy of the saved views (written raw)
                    dataset._doc.reload("saved_views")
            finally:
                _scores().update_one(dict(key, writer=token),
                                     {"$set": {"writer": None}})
        doc = _scores().find_one(key)
        if (doc is None or doc["version"] != version
                or doc.get("view_version") == version
                or time.monotonic() > deadline):
            return
        time.sleep(0.01)


def _stages(dataset, doc):
    """The serialized view stages of the scores document ``doc``."""
    if doc.get("frames") and doc["frames"].get("clips"):
        # a clip per hit, its clips dataset written now and kept with the
        # saved view (FiftyOne would write on the videos to generate it)
        return _clips_view(dataset, doc, _rows(doc), persistent=True
                           )._serialize(include_uuids=False)
    if doc.get("frames"):
        shown = _shown(doc, _rows(doc))
        return frame_views.serialized_stages(
            list(dict.fromkeys(v for v, _ in shown)), doc["frames"]["fps"],
            shown, grouped=dataset.media_type == "group")
    view = _select(dataset, doc["sample_ids"], doc.get("patches_field"),
                   doc.get("source_ids"))
    return view._serialize(include_uuids=False)


def _frame_fields(frames):
    """The fields of a frame collection's scores document: ``frames``
    (``{"fps": ..., "clips": whether it opens as clips}``, None for other
    collections), and per frame its
    ``timestamps`` (seconds) and ``shown`` frame number: the frame itself,
    or, for a scene-change frame off the grid, its video's nearest grid
    frame, which the frames view shows in its place."""
    if frames is None:
        return {"frames": None, "frames_state": None}
    # frames_state: none yet (see _frames_view): a rewrite's videos are
    # generated anew once, their metadata as it is now
    return {"frames": {"fps": float(frames["fps"]),
                       "clips": bool(frames.get("clips", False))},
            "frames_state": None,
            "timestamps": [None if t is None else float(t)
                           for t in frames["timestamps"]],
            "shown": [int(n) for n in frames["shown"]]}


def _rewrite_view(view_doc, stages):
    """Rewrites the stages of a saved view in place, not by
    ``save_view(overwrite=True)``: that deletes it and makes a new one,
    whose new id left the old scores behind, and costs ~60 ms of
    dataset-document writes (every search does it).

    One raw write of the stages, not the document's ``save()``: that
    writes only what differs from the copy this process loaded, so stages
    equal to a stale copy's were not written at all, and the view kept
    another search's results while its scores said otherwise."""
    stages = [json_util.dumps(stage) for stage in stages]
    before = view_doc._get_collection().find_one_and_update(
        {"_id": view_doc.id},
        {"$set": {"view_stages": stages, "last_modified_at": st.utcnow()}},
        projection={"view_stages": 1}, return_document=ReturnDocument.BEFORE)
    # the frames dataset FiftyOne generated for the stages replaced, and
    # made persistent when it loaded them, is garbage now (as FiftyOne
    # leaves it when a saved view is deleted)
    frame_views.release_generated((before or {}).get("view_stages") or [])


def _plain(value):
    """``value`` with numpy scalars and arrays made Python numbers and
    lists, so that MongoDB can store it (``threshold=np.float32(0.5)``)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _select(dataset, sample_ids, patches_field=None, source_ids=None):
    """The samples of these ids, in this order, whatever their slice; or,
    with ``patches_field``, the patches of the objects of these label ids
    (a patch's id is its label's id), of the samples ``source_ids``."""
    samples = media.indexed_samples(dataset)
    if patches_field is not None:
        if source_ids is not None:
            # by _id first: the label filter then reads these samples only
            samples = samples.select(list(dict.fromkeys(source_ids)))
        # only these objects become patches (a patches view of the whole
        # field would write a patch of every object first)
        samples = samples.select_labels(
            ids=list(sample_ids), fields=patches_field
        ).to_patches(patches_field)
    return samples.select(list(sample_ids), ordered=True)


def _load(dataset, name, arg="name"):
    view_id = _require_view_id(dataset, name, arg)
    return _scores().find_one(
        {"dataset_id": st.dataset_key(dataset), "view_id": view_id}
    )


def get_collection_scores(dataset: fod.Dataset, name: str
                          ) -> list[tuple[str, float]]:
    """The ``(sample_id, score)`` pairs of a collection, in its order; of
    a collection of frames, ``((video sample id, frame number), score)``.

    Examples::

        name = ais.perform_ai_search(dataset, prompt="a dog on a beach")
        for sample_id, score in ais.get_collection_scores(dataset, name):
            print(sample_id, score)

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset`
        name: the collection's name

    Returns:
        a list of ``(sample_id, score)`` tuples
    """
    dataset = media.source_dataset(dataset, "dataset")
    doc = _load(dataset, name)
    if is_frames(doc):
        return [(split_frame_key(k), s)
                for k, s in zip(doc["sample_ids"], doc["scores"])]
    return list(zip(doc["sample_ids"], doc["scores"]))


def get_collection(dataset: fod.Dataset, name: str,
                   min_score: float | None = None,
                   max_score: float | None = None,
                   as_clips: bool | None = None) -> fov.DatasetView:
    """The samples of a collection, in its order, optionally cut to a score
    range. No model is run.

    A collection of the frames of a video dataset is a frames view of its
    videos (``to_frames(sample_frames="dynamic", fps=...)`` at the frame
    index's rate), its frames in the collection's order; FiftyOne counts
    frames with the videos' metadata (``compute_metadata()``). With
    ``as_clips``, it is a clips view instead, a clip starting at each hit
    (to the frame before the next one the index samples), in the same
    order: the App's video player opens a clip at its first frame, where
    it opens a frame of a frames view at the start of its video (see
    :mod:`fiftyone_ai_search.clip_views`). A collection kept as clips (the
    App's "Open as clips", ``save_collection(..., as_clips=True)``) opens
    as clips unless ``as_clips=False``. Opening clips writes nothing on
    the videos.

    Examples::

        view = ais.get_collection(dataset, name, min_score=0.25)
        session.view = view

        # frames: play each hit in the App's video player
        session.view = ais.get_collection(videos, name, as_clips=True)

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset`
        name: the collection's name
        min_score (None): keep samples scoring ``>= min_score``, in [-1, 1]
        max_score (None): keep samples scoring ``<= max_score``, in [-1, 1],
            not below ``min_score``
        as_clips (None): a collection of frames as a clips view of its
            hits (True; only for one) or a frames view (False); None: as
            the collection was kept (frames unless kept as clips)

    Returns:
        a :class:`fiftyone.core.view.DatasetView`

    Raises:
        ValueError: for invalid arguments; the message names the argument
        CollectionNotFoundError: if there is no such collection
    """
    dataset = media.source_dataset(dataset, "dataset")
    min_score, max_score = validate.score_range(min_score, max_score)
    if as_clips is not None:
        as_clips = validate.boolean(as_clips, "as_clips")
    doc = _load(dataset, name)
    if _opens_as_clips(dataset, name, doc, as_clips):
        return _clips_view(dataset, doc,
                           _in_range(_rows(doc), min_score, max_score))
    if min_score is None and max_score is None and not is_frames(doc) \
            and doc.get("view_version", doc.get("version")) == doc.get(
                "version"):
        # the saved view shows these scores (or newer ones written since).
        # (Not for frames: FiftyOne's load_saved_view writes a frames view's
        # stages back, with the frames dataset it generated, and may so
        # undo a newer search's rewrite of them)
        return dataset.load_saved_view(name)
    # a range; or the view is being rewritten for these scores: from them
    rows = _in_range(_rows(doc), min_score, max_score)
    if is_frames(doc):
        return _frames_view(dataset, doc, rows)
    return _select(dataset, [r[0] for r in rows], doc.get("patches_field"),
                   _sources(doc, rows))


def get_score_histogram(dataset: fod.Dataset, name: str, bins: int = 20
                        ) -> tuple[list[float], list[int]]:
    """A histogram of a collection's scores, for a chart.

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset`
        name: the collection's name
        bins (20): the number of bins, 1 to :data:`MAX_BINS` (10,000)

    Returns:
        a tuple ``(edges, counts)``: ``bins + 1`` bin edges and ``bins``
        counts (lists)

    Raises:
        ValueError: for invalid arguments; the message names the argument
        CollectionNotFoundError: if there is no such collection
    """
    dataset = media.source_dataset(dataset, "dataset")
    bins = validate.integer(bins, "bins", 1, MAX_BINS)
    scores = np.asarray(_load(dataset, name)["scores"], dtype=float)
    if len(scores) == 0:
        return [], []
    lo, hi = float(scores.min()), float(scores.max())
    if lo == hi:  # one distinct score: a bin around it
        lo, hi = lo - 0.005, hi + 0.005
    counts, edges = np.histogram(scores, bins=bins, range=(lo, hi))
    return edges.tolist(), counts.tolist()


def is_frame_collection(dataset: fod.Dataset, name: str) -> bool:
    """Whether the collection ``name`` holds frames of the videos of
    ``dataset`` (made by :func:`fiftyone_ai_search.perform_frame_search`).

    Raises:
        CollectionNotFoundError: if there is no such collection
    """
    dataset = media.source_dataset(dataset, "dataset")
    return is_frames(_load(dataset, name))


def get_frame_hits(dataset: fod.Dataset, name: str,
                   min_score: float | None = None,
                   max_score: float | None = None,
                   best_per_video: bool = False) -> list[dict]:
    """The hits of a collection of frames, in its order (best first; pick
    order for diverse sampling), optionally cut to a score range: dicts as
    :func:`fiftyone_ai_search.search_frames` returns them. No view is
    built and no model is run.

    Examples::

        name = ais.perform_frame_search(videos, prompt="a red circle")
        best = ais.get_frame_hits(videos, name, best_per_video=True)
        best[0]  # {"sample_id": ..., "frame_number": 31,
                 #  "timestamp": 3.0, "score": 0.31}

    Args:
        dataset: the video dataset
        name: the collection's name
        min_score (None): keep frames scoring ``>= min_score``
        max_score (None): keep frames scoring ``<= max_score``
        best_per_video (False): only the best frame of each video (its
            highest score), best first

    Returns:
        a list of dicts ``sample_id``, ``frame_number``, ``timestamp`` and
        ``score``

    Raises:
        ValueError: for invalid arguments, or if the collection is not of
            frames
        CollectionNotFoundError: if there is no such collection
    """
    dataset = media.source_dataset(dataset, "dataset")
    rows = _frame_rows(dataset, name, min_score, max_score, best_per_video)
    return [{"sample_id": video, "frame_number": number, "timestamp": r[3],
             "score": r[1]}
            for r in rows for video, number in [split_frame_key(r[0])]]


def get_frame_collection(dataset: fod.Dataset, name: str,
                         min_score: float | None = None,
                         max_score: float | None = None,
                         best_per_video: bool = False,
                         as_clips: bool | None = None) -> fov.DatasetView:
    """A collection of frames as a FiftyOne frames view, in its order, as
    :func:`get_collection` opens it; with ``best_per_video``, the best
    frame of each video only, best first; with ``as_clips``, a clips view
    with a clip starting at each of these frames, which the App's video
    player opens at the hit.

    Examples::

        name = ais.perform_frame_search(videos, prompt="a red circle")
        view = ais.get_frame_collection(videos, name, best_per_video=True,
                                        as_clips=True)
        view.first().support  # [21, 30]: the best hit of the best video

    Args:
        dataset: the video dataset
        name: the collection's name
        min_score (None): keep frames scoring ``>= min_score``
        max_score (None): keep frames scoring ``<= max_score``
        best_per_video (False): only the best frame of each video
        as_clips (None): a clips view (a clip from each hit to the frame
            before the next one the index samples) instead of frames;
            None: as the collection was kept (frames unless kept as clips)

    Returns:
        a :class:`fiftyone.core.view.DatasetView` of frames, or of clips

    Raises:
        ValueError: for invalid arguments, or if the collection is not of
            frames
        CollectionNotFoundError: if there is no such collection
    """
    dataset = media.source_dataset(dataset, "dataset")
    best_per_video = validate.boolean(best_per_video, "best_per_video")
    if as_clips is not None:
        as_clips = validate.boolean(as_clips, "as_clips")
    validate.score_range(min_score, max_score)
    if not best_per_video:
        if not is_frame_collection(dataset, name):
            raise _not_frames(dataset, name)
        return get_collection(dataset, name, min_score, max_score, as_clips)
    doc = _load(dataset, name)
    rows = _frame_rows(dataset, name, min_score, max_score, True, doc)
    if _opens_as_clips(dataset, name, doc, as_clips):
        return _clips_view(dataset, doc, rows)
    return _frames_view(dataset, doc, rows)


def _opens_as_clips(dataset, name, doc, as_clips):
    """Whether collection ``name`` (scores document ``doc``) opens as
    clips: ``as_clips``, or when None as it was kept. Refuses clips of a
    collection that is not of frames."""
    if as_clips is None:
        return bool(is_frames(doc) and doc["frames"].get("clips"))
    as_clips = validate.boolean(as_clips, "as_clips")
    if as_clips and not is_frames(doc):
        raise _not_frames(dataset, name, "as_clips")
    return as_clips


def keep_clips_choice(dataset: fod.Dataset, name: str,
                      as_clips: bool) -> None:
    """Records on the frame collection ``name`` whether it opens as clips
    (the App's "Open as clips" on the latest results), which
    :func:`save_collection` keeps with a collection saved from it. Its own
    saved view is not rewritten (the latest results' stays a frames view,
    rewritten by each search)."""
    dataset = media.source_dataset(dataset, "dataset")
    as_clips = validate.boolean(as_clips, "as_clips")
    doc = _load(dataset, name)
    if not is_frames(doc):
        if as_clips:
            raise _not_frames(dataset, name, "as_clips")
        return
    # only this version: a newer search's results carry their own choice
    _scores().update_one({"_id": doc["_id"], "version": doc["version"]},
                         {"$set": {"frames.clips": as_clips}})


def _clips_view(dataset, doc, rows, persistent=False):
    """The clips view of ``rows`` of the frame collection of the scores
    document ``doc``: a clip starting at each hit frame itself (a
    scene-change frame too, which a frames view shows as its nearest grid
    frame); ``persistent``: its clips dataset outlives this process (a
    saved view's)."""
    return clip_views.clips_of(dataset, [split_frame_key(r[0]) for r in rows],
                               doc["frames"]["fps"], persistent=persistent)


def _frames_view(dataset, doc, rows):
    """The frames view of ``rows`` of the frame collection of the scores
    document ``doc``. FiftyOne generates the frames of all the collection's
    videos once and reuses them for its score ranges and later opens (the
    frames dataset is named in ``doc``'s ``frames_state``), until it is
    gone or the collection is rewritten: generating them is what opening a
    collection costs (measured in docs/design.md, "Frame collections")."""
    videos = list(dict.fromkeys(frame_video(k) for k in doc["sample_ids"]))
    state = doc.get("frames_state")
    view = frame_views.frames_of(dataset, _shown(doc, rows),
                                 doc["frames"]["fps"], videos=videos,
                                 state=state)
    generated = frame_views.generated_state(view)
    if generated != state:
        # only while the document is this version: a newer search's
        # videos are others
        _scores().update_one({"_id": doc["_id"], "version": doc["version"]},
                             {"$set": {"frames_state": generated}})
    return view


def _frame_rows(dataset, name, min_score, max_score, best_per_video,
                doc=None):
    """The rows of the frame collection ``name`` within the score range,
    the best of each video alone with ``best_per_video``."""
    min_score, max_score = validate.score_range(min_score, max_score)
    best_per_video = validate.boolean(best_per_video, "best_per_video")
    doc = doc or _load(dataset, name)
    if not is_frames(doc):
        raise _not_frames(dataset, name)
    rows = _in_range(_rows(doc), min_score, max_score)
    if best_per_video:
        # by score: a diverse collection is in pick order
        rows = best_of_each_video(rows)
    return rows


def _not_frames(dataset, name, arg="name"):
    return ValueError(
        f"{arg}: the collection {name!r} of dataset '{dataset.name}' is not "
        "of video frames" + (" (only frames open as clips)"
                             if arg == "as_clips" else ""))


def list_collections(dataset: fod.Dataset) -> list[dict]:
    """The dataset's AI search collections.

    Returns:
        a list of dicts with ``name``, ``size``, ``created_at``, ``query``
        (what produced it), ``patches_field`` (the label field of a
        collection of objects, else None) and ``frames`` (whether it is a
        collection of video frames; its ``size`` counts frames), the
        temporary collection included
    """
    dataset = media.source_dataset(dataset, "dataset")
    dataset._doc.reload("saved_views")
    names = {str(doc.id): doc.name for doc in dataset._doc.saved_views}
    docs = _scores().aggregate(
        [
            {"$match": {"dataset_id": st.dataset_key(dataset)}},
            {"$project": {"view_id": 1, "created_at": 1, "query": 1,
                          "patches_field": 1, "frames": 1,
                          "size": {"$size": "$sample_ids"}}},
            {"$sort": {"created_at": 1}},
        ]
    )
    return [
        {
            "name": names[doc["view_id"]],
            "size": doc["size"],
            "created_at": doc["created_at"],
            "query": doc.get("query", {}),
            "patches_field": doc.get("patches_field"),
            "frames": is_frames(doc),
        }
        for doc in docs
        if doc["view_id"] in names  # its saved view may be gone
    ]


def collection_summary(dataset: fod.Dataset, name: str) -> dict | None:
    """The summary of collection ``name`` of ``dataset``, as
    :func:`list_collections` gives it (``name``, ``size``, ``created_at``,
    ``query``, ``patches_field``, ``frames``), or None if there is none
    (e.g. no latest results for :data:`TEMPORARY_COLLECTION`)."""
    found = [c for c in list_collections(dataset) if c["name"] == name]
    return found[0] if found else None


def save_collection(dataset: fod.Dataset, name: str,
                    source: str = TEMPORARY_COLLECTION,
                    overwrite: bool = False, min_score: float | None = None,
                    max_score: float | None = None,
                    as_clips: bool | None = None) -> str:
    """Keeps a collection (by default the latest search results) under a name.

    With ``min_score`` / ``max_score``, only the samples of that score range
    are kept: what the App shows after a range was chosen on the histogram.

    Examples::

        ais.perform_ai_search(dataset, prompt="a scratch on metal")
        ais.save_collection(dataset, "scratches")
        ais.save_collection(dataset, "clear scratches", min_score=0.3)

        # frames: a collection that opens at the hits in the video player
        ais.perform_frame_search(videos, prompt="a red circle")
        ais.save_collection(videos, "red circles", as_clips=True)

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset`
        name: the new collection's name
        source (TEMPORARY_COLLECTION): the collection to copy
        overwrite (False): whether to replace an existing saved view ``name``
        min_score (None): keep only samples scoring ``>= min_score``, in
            [-1, 1]
        max_score (None): keep only samples scoring ``<= max_score``, in
            [-1, 1], not below ``min_score``
        as_clips (None): a collection of frames kept as clips (True: its
            saved view, and :func:`get_collection` by default, open a clip
            starting at each hit, where the App's video player opens at
            the hit) or frames (False); None: as ``source`` was kept (the
            App's "Open as clips" choice)

    Returns:
        the name

    Raises:
        ValueError: for invalid arguments (the message names the argument),
            if the name is taken (and not ``overwrite``), if no sample of
            ``source`` is in the score range, or for ``as_clips=True`` of a
            collection that is not of frames
        CollectionNotFoundError: if there is no collection ``source``
    """
    dataset = media.source_dataset(dataset, "dataset")
    validate.collection_name(name, "name")
    validate.collection_name(source, "source")
    overwrite = validate.boolean(overwrite, "overwrite")
    min_score, max_score = validate.score_range(min_score, max_score)
    if not overwrite and dataset.has_saved_view(name):
        raise ValueError(
            f"name: dataset '{dataset.name}' already has a saved view named "
            f"{name!r}; pass overwrite=True to replace it"
        )
    doc = _load(dataset, source, "source")
    as_clips = _opens_as_clips(dataset, source, doc, as_clips)
    rows = _in_range(_rows(doc), min_score, max_score)
    if not rows:
        raise ValueError(
            f"min_score, max_score: no sample of {source!r} scores within "
            f"[{min_score}, {max_score}]"
        )
    query = dict(doc.get("query") or {})
    if min_score is not None or max_score is not None:
        query["score_range"] = [min_score, max_score]
    return write_collection(
        dataset, name, [r[0] for r in rows], [r[1] for r in rows], query,
        patches_field=doc.get("patches_field"),
        source_ids=_sources(doc, rows),
        frames=_frames(doc, rows, as_clips),
    )


def _rows(doc):
    """``(id, score, source id or None, timestamp or None, shown frame
    number or None)`` of a collection's scores doc (the last two: of a
    frame collection)."""
    nones = [None] * len(doc["sample_ids"])
    return list(zip(doc["sample_ids"], doc["scores"],
                    doc.get("source_ids") or nones,
                    doc.get("timestamps") or nones,
                    doc.get("shown") or nones))


def _shown(doc, rows):
    """The ``(video id, frame number)`` that the frames view of a frame
    collection shows for each of ``rows``."""
    return [(frame_video(r[0]),
             r[4] if r[4] is not None else split_frame_key(r[0])[1])
            for r in rows]


def _frames(doc, rows, as_clips=False):
    """The ``frames`` of :func:`write_collection` for ``rows`` of a frame
    collection's scores doc (None for another collection), opening as
    clips with ``as_clips``."""
    if not doc.get("frames"):
        return None
    shown = _shown(doc, rows)
    return {"fps": doc["frames"]["fps"], "timestamps": [r[3] for r in rows],
            "shown": [n for _, n in shown], "clips": bool(as_clips)}


def is_frames(doc) -> bool:
    """Whether the scores document ``doc`` is of a frame collection."""
    return bool(doc.get("frames"))


def _sources(doc, rows):
    """The source ids of ``rows``, if the collection keeps them."""
    return [r[2] for r in rows] if doc.get("source_ids") else None


def _in_range(rows, min_score, max_score):
    lo = -np.inf if min_score is None else min_score
    hi = np.inf if max_score is None else max_score
    return [r for r in rows if lo <= r[1] <= hi]


def is_latest_results(samples: foc.SampleCollection) -> bool:
    """Whether ``samples`` shows the latest search results: the temporary
    collection, or a view of it such as a score range of it.

    The App uses it to decide what a new search searches: the latest results
    are never its scope (a new search searches the dataset), any other view
    is.

    Args:
        samples: a :class:`fiftyone.core.collections.SampleCollection`

    Returns:
        True or False
    """
    import fiftyone.core.stages as fos  # start-up: FiftyOne, on first use

    if getattr(samples, "_is_frames", False):
        return _is_latest_frames(samples)
    if getattr(samples, "_is_clips", False):
        return _is_latest_clips(samples)
    try:
        dataset = media.source_dataset(samples)
    except media.UnsupportedMediaError:
        return False  # clips: never results
    # (a patches view may be object results: its own stages select them)
    if samples is dataset or (samples._is_generated
                              and not samples._is_patches):
        return False
    if getattr(samples, "name", None) == TEMPORARY_COLLECTION:
        return True
    stages = list(getattr(samples, "_stages", None) or [])
    if stages and isinstance(stages[0], fos.SelectGroupSlices):
        stages = stages[1:]  # a collection of a grouped dataset
    if not stages or not isinstance(stages[0], fos.Select):
        return False
    try:
        results = _load(dataset, TEMPORARY_COLLECTION)["sample_ids"]
    except CollectionNotFoundError:
        return False
    # a collection and its score ranges are ordered selects of its ids
    return set(stages[0].sample_ids) <= set(results)


def _is_latest_frames(frames):
    """Whether a frames view shows the latest frame search results (or a
    score range of them): its frames are some of theirs."""
    return _shows_latest(frames, frame_views.shown_keys_of(frames),
                         lambda doc: _shown(doc, _rows(doc)))


def _is_latest_clips(clips):
    """Whether a clips view shows the latest frame search results as clips
    (:func:`get_collection` ``as_clips``, or a score range of them): its
    clips start at some of their frames."""
    return _shows_latest(clips, clip_views.shown_keys_of(clips),
                         lambda doc: {split_frame_key(k)
                                      for k in doc["sample_ids"]})


def _shows_latest(view, shown, keys_of):
    """Whether the ``(video, frame number)`` keys ``shown`` by ``view``
    (None: not a view of ours) are some of ``keys_of(doc)`` of the latest
    frame search results."""
    if shown is None:
        return False
    try:
        doc = _load(view._root_dataset, TEMPORARY_COLLECTION)
    except CollectionNotFoundError:
        return False
    return is_frames(doc) and set(shown) <= set(keys_of(doc))


def delete_temporary_collection(dataset, patches_field=None):
    """Deletes the latest search results (the temporary collection), if any
    and if they are of the images (of the objects of ``patches_field``, if
    given): the results of the index switched off."""
    dataset = media.source_dataset(dataset, "dataset")
    view_id = _view_id(dataset, TEMPORARY_COLLECTION)
    if view_id is None:
        return
    doc = _scores().find_one(
        {"dataset_id": st.dataset_key(dataset), "view_id": view_id},
        {"patches_field": 1}) or {}
    if doc.get("patches_field") == patches_field:
        _delete(dataset, TEMPORARY_COLLECTION, view_id)


def rename_collection(dataset: fod.Dataset, name: str, new_name: str) -> str:
    """Renames a collection (its saved view; the scores follow).

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset`
        name: the collection's name
        new_name: its new name, not taken by another saved view

    Returns:
        the new name

    Raises:
        ValueError: for invalid arguments; the message names the argument
        CollectionNotFoundError: if there is no collection ``name``
    """
    dataset = media.source_dataset(dataset, "dataset")
    validate.collection_name(new_name, "new_name")
    _require_view_id(dataset, name)
    if dataset.has_saved_view(new_name):
        raise ValueError(
            f"new_name: dataset '{dataset.name}' already has a saved view "
            f"named {new_name!r}"
        )
    dataset.update_saved_view_info(name, {"name": new_name})
    return new_name


def delete_collection(dataset: fod.Dataset, name: str) -> None:
    """Deletes a collection: its saved view and its scores."""
    dataset = media.source_dataset(dataset, "dataset")
    _delete(dataset, name, _require_view_id(dataset, name))


def _delete(dataset, name, view_id):
    dataset.delete_saved_view(name)
    _scores().delete_one(
        {"dataset_id": st.dataset_key(dataset), "view_id": view_id}
    )


#: scores whose saved view is gone are swept once this old: a collection's
#: scores are written just after its saved view, so a younger one may belong
#: to a view being saved right now
ORPHAN_AGE = datetime.timedelta(hours=1)


def sweep_orphaned_scores(dataset):
    """Deletes the scores left behind by collections whose saved view is
    gone: one per search by earlier builds (which made the temporary
    collection anew each time), or a saved view deleted through FiftyOne
    rather than :func:`delete_collection`. Run by the background upkeep.

    Returns:
        how many were deleted
    """
    dataset._doc.reload("saved_views")
    live = [str(doc.id) for doc in dataset._doc.saved_views]
    return _scores().delete_many({
        "dataset_id": st.dataset_key(dataset),
        "view_id": {"$nin": live},
        "created_at": {"$lt": st.utcnow() - ORPHAN_AGE},
    }).deleted_count


def delete_collections_of(dataset_id):
    """Deletes the scores of every collection of the dataset with this id,
    also of one that no longer exists (saved views are left to FiftyOne:
    they outlive AI search as plain views)."""
    _scores().delete_many({"dataset_id": dataset_id})

