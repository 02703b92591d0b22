"""Frame hits as FiftyOne clips views: a clip starting at each hit, so
that the App's video player opens at the hit.

FiftyOne 1.22's sample modal plays a frames view's sample (a frame of a
video) from the beginning of its video, and offers no way to seek it. It
plays a clips view's sample from the first frame of its support, locked to
it (``l`` in the player unlocks the whole video), and the grid's tile of a
clip is that frame. So a clip per hit, one sampling interval from it (the
stretch of video a grid frame stands for), opens where the hit is.

The view is ``select(videos).to_clips(supports)`` (one list of supports
per video, FiftyOne's "manual" clips), then one
:class:`fiftyone.core.stages.Mongo` stage that orders the clips as the hits
are, by ``(sample id, first frame)``: like a frames view's, a clips view's
ids are generated anew with its clips dataset, so the stage never names
them (see :mod:`fiftyone_ai_search.frame_views`).

FiftyOne generates manual clips (and clips of an expression) by writing
their supports on the source videos for a moment (a ``_support`` field,
unset again at once): that would bump the hit videos'
``last_modified_at`` each time a clips view of results is built, and the
frame index's next sync would check them again; only a field of the
dataset's schema (a ``FrameSupportField`` or temporal detections) is
clipped without a write, and adding one would show in the user's
sidebar. So the clips dataset is written here, by one aggregation over
the videos that reads them and writes the clips dataset alone
(:func:`_write_clips_dataset`), and the ``to_clips`` stage names it in
its state: FiftyOne reuses a clips dataset its stage names while the
stage's inputs are unchanged (the App's rebuilds of the view included),
and generates it anew itself only when it is gone.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from . import frame_views

if TYPE_CHECKING:  # for annotations only
    import fiftyone.core.dataset as fod
    import fiftyone.core.view as fov

#: the field the rank stage adds (and removes again) to order the clips;
#: also how :func:`shown_keys_of` recognises a view of ours
RANK_FIELD = "_ais_clip_rank"

#: the separator of a clip's ``"<sample id>:<first frame>"`` in the rank
#: stage: a frame key's (:func:`frame_views.ranked_keys` reads both)
_SEP = frame_views.KEY_SEP

#: the frame rate assumed for a video without a usable one in its metadata
#: (the frame index assumes the same: embedding.frames.ASSUMED_FRAME_RATE)
ASSUMED_FRAME_RATE = 30.0


def clip_supports(hits, fps, frame_rates, frame_counts=None):
    """The support ``[first, last]`` of the clip of each hit: one sampling
    interval of the grid at ``fps`` from the hit frame (``frame_rate /
    fps`` frames, rounded down; at least the hit frame): on the grid, the
    hit and the frames before the next one sampled. Never past the
    video's last frame.

    Args:
        hits: ``(video id, frame number)`` pairs
        fps: the frame index's samples per second
        frame_rates: ``{video id: metadata.frame_rate}`` (None or missing:
            :data:`ASSUMED_FRAME_RATE`)
        frame_counts (None): ``{video id: metadata.total_frame_count}``

    Returns:
        a list of ``(first, last)``, one per hit
    """
    frame_counts = frame_counts or {}
    out = []
    for video, number in hits:
        rate = frame_rates.get(video)
        if not (isinstance(rate, (int, float)) and math.isfinite(rate)
                and rate > 0):
            rate = ASSUMED_FRAME_RATE
        step = max(1, int(math.floor(rate / float(fps))))
        last = int(number) + step - 1
        count = frame_counts.get(video)
        if count:
            last = min(last, int(count))
        out.append((int(number), max(int(number), last)))
    return out


def clips_of(dataset: fod.Dataset, hits: list[tuple], fps: float,
             persistent: bool = False) -> fov.DatasetView:
    """The clips view of ``hits`` (``(video id, frame number)`` pairs, best
    first), a clip starting at each hit (:func:`clip_supports`), in this
    order; a hit given twice shows once, where it first appears. The
    videos' metadata gives their frame rates and lengths. ``persistent``:
    its clips dataset outlives this process (a saved view's, as FiftyOne
    makes a saved view's generated dataset; FiftyOne makes it
    non-persistent again when the saved view is deleted)."""
    import fiftyone.core.stages as fos  # start-up: FiftyOne, on first use

    hits = list(dict.fromkeys((str(v), int(n)) for v, n in hits))
    videos = list(dict.fromkeys(v for v, _ in hits))
    base = dataset
    if dataset.media_type == "group":
        # the videos are in its video slices: select() of a grouped dataset
        # sees the active slice only, and FiftyOne clips no grouped view
        base = dataset.select_group_slices(media_type="video")
    view = base.select(videos, ordered=True)
    ids, rates, counts = view.values(
        ["id", "metadata.frame_rate", "metadata.total_frame_count"])
    supports = clip_supports(hits, fps, dict(zip(ids, rates)),
                             dict(zip(ids, counts)))
    per_video = {v: [] for v in ids}
    starts = []
    for (video, _), support in zip(hits, supports):
        if video in per_video:  # a video deleted since the search: none
            per_video[video].append(list(support))
            starts.append((video, support[0]))
    if not starts:
        return dataset.limit(0)
    supports = [per_video[v] for v in ids]
    clips = _write_clips_dataset(view, ids, supports, persistent)
    # the state FiftyOne's ToClips.load_view records for these inputs,
    # naming the dataset written above: it reuses it rather than
    # generating (and writing on the videos)
    state = {"dataset_id": str(view._root_dataset._doc.id),
             "stages": view.view()._serialize(include_uuids=False),
             "field_or_expr": supports, "config": None,
             "name": clips.name}
    view = view.add_stage(fos.ToClips(supports, _state=state))
    return view.add_stage(fos.Mongo(_rank_pipeline(starts)))


def _write_clips_dataset(view, ids, supports, persistent=False):
    """The clips dataset of the videos ``view`` (ids ``ids``, in its
    order), the clips of each ``supports[i]``: what FiftyOne's
    ``make_clips_dataset`` writes for manual clips (one sample per clip,
    with its video's id, support, media fields and tags; the frames are
    the videos' own), written by one aggregation that only reads the
    videos."""
    import fiftyone.core.dataset as fod  # start-up: FiftyOne, on first use
    import fiftyone.core.fields as fof
    import fiftyone.core.media as fom

    clips = fod.Dataset(persistent=persistent, _clips=True,
                        _src_collection=view)
    clips.media_type = fom.VIDEO
    clips.add_sample_field("sample_id", fof.ObjectIdField)
    clips.add_sample_field("support", fof.FrameSupportField)
    clips.create_index("sample_id")
    # each video's supports, found by its id (plain JSON: strings)
    support = {"$arrayElemAt": [
        {"$literal": [[list(map(int, s)) for s in clips_of_video]
                      for clips_of_video in supports]},
        {"$indexOfArray": [list(ids), {"$toString": "$_id"}]}]}
    view._aggregate(post_pipeline=[
        {"$project": {"_id": False, "_sample_id": "$_id",
                      "_media_type": True, "filepath": True,
                      "support": support, "metadata": True, "tags": True,
                      "created_at": True, "last_modified_at": True}},
        {"$unwind": "$support"},
        {"$addFields": {"_rand": {"$rand": {}},
                        "_dataset_id": clips._doc.id}},
        {"$out": clips._sample_collection_name},
    ])
    return clips


def _rank_pipeline(starts):
    keys = [f"{v}{_SEP}{int(n)}" for v, n in starts]
    key = {"$concat": [{"$toString": "$_sample_id"}, _SEP,
                       {"$toString": {"$arrayElemAt": ["$support", 0]}}]}
    # plain JSON (no ObjectId): the App sends a view's stages back as JSON
    return [
        {"$addFields": {RANK_FIELD: {"$indexOfArray": [keys, key]}}},
        {"$match": {RANK_FIELD: {"$gte": 0}}},
        {"$sort": {RANK_FIELD: 1}},
        {"$unset": RANK_FIELD},
    ]


def shown_keys_of(view) -> list[tuple] | None:
    """The ``(video id, first frame)`` of the clips a clips view built here
    (:func:`clips_of`) shows, from its rank stage; None for any other
    view."""
    if not getattr(view, "_is_clips", False):
        return None
    return frame_views.ranked_keys(view, RANK_FIELD)
