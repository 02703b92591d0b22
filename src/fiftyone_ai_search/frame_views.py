"""Frames as FiftyOne frames views, keyed by ``(video, frame number)``.

A frames view's sample ids are not stable: FiftyOne generates the frames
dataset anew (when the saved view's one is gone, or the videos changed),
and every frame without a frame document then gets a new id (see
docs/design.md, "Video frames"). So the view of a set of frames is never
an ``select`` of frame ids: it is ``select(videos).to_frames(
sample_frames="dynamic", fps=...)`` of their videos at the index's rate,
then one :class:`fiftyone.core.stages.Mongo` stage that keeps the frames by
``(sample id, frame number)`` and orders them as given. That stage is what
a frame collection's saved view holds; it rebuilds the same frames however
often the frames dataset is generated.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bson import json_util


if TYPE_CHECKING:  # for annotations only
    import fiftyone.core.dataset as fod
    import fiftyone.core.view as fov

#: the field the rank stage adds (and removes again) to order the frames;
#: also how :func:`shown_keys_of` recognises a view of ours
RANK_FIELD = "_ais_frame_rank"

#: the separator of a frame's ``"<sample id>:<frame number>"`` in the
#: rank stage (what MongoDB can build from a frame document)
KEY_SEP = ":"


def grid_stages(video_ids, fps, shown, state=None, grouped=False):
    """The view stages of the frames ``shown`` (a list of
    ``(video id, frame number)`` on the grid of ``fps``, best first) of the
    videos ``video_ids``: fresh stage objects, to serialize into a saved
    view or to add to a view; ``state``: the ``to_frames`` stage's state of
    an earlier view of the same videos (:func:`generated_state`), whose
    frames dataset FiftyOne then reuses if it is still there (None: none
    named, FiftyOne generates one); ``grouped``: the videos are of a
    grouped dataset's video slices (FiftyOne's ``to_frames`` takes a flat
    collection of videos: ``select_group_slices(media_type="video")``
    first)."""
    import fiftyone.core.stages as fos  # start-up: FiftyOne, on first use

    flat = [fos.SelectGroupSlices(media_type="video")] if grouped else []
    return flat + [
        fos.Select(list(video_ids)),
        fos.ToFrames(config={"sample_frames": "dynamic", "fps": fps},
                     _state=state),
        fos.Mongo(_rank_pipeline(shown)),
    ]


def serialized_stages(video_ids, fps, shown, grouped=False):
    """:func:`grid_stages` as a saved view stores them."""
    return [stage._serialize(include_uuid=False)
            for stage in grid_stages(video_ids, fps, shown, grouped=grouped)]


def frames_of(dataset: fod.Dataset, shown: list[tuple], fps: float,
              videos: list[str] | None = None, state: dict | None = None
              ) -> fov.DatasetView:
    """The frames view of ``shown`` (``(video id, frame number)`` pairs on
    the grid of ``fps``), in this order; a frame given twice shows once,
    where it first appears.

    Args:
        videos (None): the videos whose frames FiftyOne generates (default:
            those of ``shown``): all those of a collection, so that its
            score ranges reuse one frames dataset
        state (None): see :func:`grid_stages`
    """
    if videos is None:
        videos = list(dict.fromkeys(v for v, _ in shown))
    view = dataset.view()
    grouped = dataset.media_type == "group"
    for stage in grid_stages(videos, fps, shown, state, grouped):
        view = view.add_stage(stage)
    return view


def generated_state(view) -> dict | None:
    """The state of the ``to_frames`` stage of a view of :func:`frames_of`:
    what names the frames dataset FiftyOne generated for it."""
    stage = getattr(view, "_frames_stage", None)
    return None if stage is None else stage._state


def _rank_pipeline(shown):
    keys = list(dict.fromkeys(f"{v}{KEY_SEP}{int(n)}" for v, n in shown))
    numbers = sorted({int(n) for _, n in shown})
    key = {"$concat": [{"$toString": "$_sample_id"}, KEY_SEP,
                       {"$toString": "$frame_number"}]}
    # the match first, so only the frames shown are ranked. No ObjectId in
    # the stage: the App sends a view's stages back as JSON, where an
    # ObjectId comes back as {"$oid": ...}, which MongoDB refuses as an
    # operator (the modal's frame labels failed so); the frame numbers
    # narrow the scan through FiftyOne's index of them
    match = {"frame_number": {"$in": numbers},
             "$expr": {"$in": [key, keys]}} if keys else {"_id": None}
    rank = {"$indexOfArray": [keys, key]}
    return [
        {"$match": match},
        {"$addFields": {RANK_FIELD: rank}},
        {"$sort": {RANK_FIELD: 1}},
        {"$unset": RANK_FIELD},
    ]


def shown_keys_of(view) -> list[tuple] | None:
    """The ``(video id, frame number)`` pairs a frames view built here (by
    :func:`frames_of`, or a frame collection's saved view) shows, from its
    rank stage; None for any other view."""
    if not getattr(view, "_is_frames", False):
        return None
    return ranked_keys(view, RANK_FIELD)


def ranked_keys(view, rank_field) -> list[tuple] | None:
    """The ``(video id, frame number)`` keys, in order, of the rank stage of
    ``view`` that adds ``rank_field`` (a :class:`fiftyone.core.stages.Mongo`
    stage built here, or by :mod:`fiftyone_ai_search.clip_views`); None if
    it has none."""
    import fiftyone.core.stages as fos  # start-up: FiftyOne, on first use

    for stage in getattr(view, "_stages", None) or []:
        if not isinstance(stage, fos.Mongo):
            continue
        for step in stage.pipeline:
            ranked = step.get("$addFields", {}).get(rank_field)
            if ranked is not None:
                return [(k.split(KEY_SEP)[0], int(k.split(KEY_SEP)[1]))
                        for k in ranked["$indexOfArray"][0]]
    return None


def release_generated(stage_strings):
    """Marks the frames (or clips) datasets generated for these saved view
    stages (JSON strings, as a saved view stores them) non-persistent, so
    that FiftyOne deletes them once no process uses them, as it does for a
    saved view it deletes itself.

    FiftyOne names the frames dataset of a saved frames view in its
    ``to_frames`` stage's ``_state`` and makes it persistent when it loads
    the view (``load_saved_view``); a frame collection's stages are
    rewritten without it at each search, which would leave it behind. A
    frame collection kept as clips names the persistent clips dataset
    written for it (:mod:`fiftyone_ai_search.clip_views`) in its
    ``to_clips`` stage's ``_state`` alike."""
    import fiftyone.core.dataset as fod  # start-up: FiftyOne, on first use

    names = []
    for text in stage_strings:
        stage = json_util.loads(text)
        if not str(stage.get("_cls", "")).endswith((".ToFrames",
                                                    ".ToClips")):
            continue
        state = dict(stage.get("kwargs") or []).get("_state") or {}
        if state.get("name"):
            names.append(state["name"])
    for name in names:
        try:
            generated = fod.load_dataset(name)
        except ValueError:
            continue  # gone already
        if generated._is_generated and generated.persistent:
            generated._doc.persistent = False
            generated.save()


def nearest_on_grid(frame_rates, fps, frames, frame_counts=None):
    """``frames`` (``(video id, frame number)`` pairs) each moved to the
    nearest frame of its video's sampling grid at ``fps`` (a frame on the
    grid stays): how a scene-change frame, sampled off the grid, shows in a
    frames view of the grid. ``frame_rates``: ``{video id: frame rate}``
    (FiftyOne's ``metadata.frame_rate``, which its frames views count
    with; None: the rate assumed for videos without one);
    ``frame_counts``: ``{video id: metadata.total_frame_count}``, where
    FiftyOne's grid ends (a grid frame past it is not in the view)."""
    # here: the module of the grid imports OpenCV, which `import
    # fiftyone_ai_search` never loads (only scene hits come here)
    from .embedding.frames import UniformGrid

    frame_counts = frame_counts or {}
    out = []
    for video, number in frames:
        # the grid's positions, accumulated and rounded as UniformGrid
        # (and FiftyOne) do: the same float error, the same frames
        step = UniformGrid(frame_rates.get(video), fps).step
        position, before, after = 1.0, 1, 1
        while after <= number:
            before = after
            position += step
            after = int(round(position))
        last = frame_counts.get(video)
        nearer = after - number < number - before and (
            last is None or after <= last)
        out.append((video, after if nearer else before))
    return out
