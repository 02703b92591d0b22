"""Frame search in the App: the search form of a video dataset (whose
index is of the frames of its videos, see :mod:`fiftyone_ai_search.frame_search`)
and the search it runs, shared by the grid's AI Search button, the panel
and "Find similar" in the sample modal.

The hits open as FiftyOne's frames view of the index's sampling grid
(:func:`fiftyone_ai_search.frames_view`), best first: each tile is a frame,
and clicking one opens that frame of its video in the sample modal. (The
App's video player has no way to be opened at a frame from a plugin: a
frames view is how FiftyOne shows a frame.)

By example, a search starts from frames: those selected in a frames view
(the results, or any ``to_frames`` view on the index's grid), or the frame
open in the modal.
"""

import fiftyone.operators.types as types

import fiftyone_ai_search as ais

from . import forms

#: the search modes of frames (a diverse spread of frames is not offered:
#: the SDK has none yet)
FRAME_MODES = ("prompt", "similar", "image")


def selected_frames(ctx, selected):
    """The frames a search by example starts from, ``(video sample id,
    frame number)`` each, in the order selected: the selected samples of a
    frames view (or the frame open in the modal); none elsewhere (a video
    is not a frame)."""
    view = ctx.view
    ids = list(selected or ())
    if not ids or not getattr(view, "_is_frames", False):
        return []
    frame_ids, videos, numbers = view.select(ids).values(
        ["id", "sample_id", "frame_number"])
    found = {i: (v, n) for i, v, n in zip(frame_ids, videos, numbers)}
    return [found[i] for i in ids if i in found]


def search_scope(ctx, params):
    """The videos a frame search from the App searches: the App's view of
    videos; the whole dataset when it shows frames (the results are a
    frames view: a new search searches every video) or clips, when the
    view has no stages, or when the user asked for the whole dataset."""
    view = ctx.view
    if (params.get("whole_dataset") or not view._stages
            or view._is_frames or view._is_clips):
        return ctx.dataset
    return view


def scope_form(ctx, inputs, params, on_change=None):
    """Says which videos a frame search searches; offers the whole dataset
    when the App's view is a narrower view of videos."""
    scope = search_scope(ctx, params)
    whole = (f"Searching the frames of all {len(ctx.dataset)} videos of the "
             "dataset")
    if scope is ctx.dataset and not params.get("whole_dataset"):
        note = ""
        if ctx.view._is_frames or ctx.view._is_clips:
            note = (" (a search from a frames view, the results included, "
                    "searches every video)")
        inputs.view("scope", types.Notice(label=f"{whole}{note}."))
        return
    label = (f"{whole}." if params.get("whole_dataset") else
             f"Searching the frames of the {ctx.view.count()} videos of the "
             "current view.")
    inputs.view("scope", types.Notice(label=label))
    inputs.bool("whole_dataset", label="Search the whole dataset instead",
                default=False, on_change=on_change)


def _mode(params, refs, modes):
    mode = params.get("mode")
    if mode in modes:
        return mode
    return "similar" if refs and "similar" in modes else modes[0]


def search_form(ctx, inputs, params, selected, on_change=None,
                modes=FRAME_MODES):
    """The search form of a video dataset's frames: the mode (prompt,
    similar to the selected frames, an image), its fields, whether to keep
    the best frame per video, the limit, the minimum score and the scope.

    Args:
        ctx: the execution context
        inputs: the :class:`fiftyone.operators.types.Object` to fill
        params: the form's current values
        selected: the selected samples (frames, in a frames view)
        on_change (None): called when the mode or the scope changes
        modes (FRAME_MODES): the modes offered; with one, no mode choice

    Returns:
        whether the form can be run (False: an input is invalid)
    """
    runnable = True
    modes = [m for m in modes if m in FRAME_MODES]
    refs = selected_frames(ctx, selected)
    mode = _mode(params, refs, modes)
    if len(modes) > 1:
        inputs.enum(
            "mode", modes, label="Search frames by", default=mode,
            on_change=on_change,
            view=types.RadioGroup(orientation="horizontal"),
            description="prompt: describe it; similar: like the selected "
            "frames; image: like an image file",
        )
    if mode == "prompt":
        inputs.str("prompt", label="Prompt", required=True,
                   description="Commas separate several prompts (a frame "
                   "scores its best over them)")
    elif mode == "similar":
        if refs:
            inputs.view("selected", types.Notice(
                label=f"Similar to the {len(refs)} selected frame(s)."))
        else:
            runnable = False
            forms.blocked(inputs, "selected", NOTHING_SELECTED)
    elif not forms.image_input(inputs, params):
        runnable = False
    inputs.bool("best_per_video", label="Best frame per video",
                default=False, description="One result per video: its frame "
                "that scores best")
    prop = inputs.int("limit", label="Limit", default=forms.DEFAULT_LIMIT,
                      min=1, description="How many frames to show (videos, "
                      "with the best frame per video)")
    problem = forms.limit_problem(params.get("limit"))
    if problem:
        runnable = False
        forms.invalid(prop, problem)
    inputs.float("threshold", label="Minimum score", min=-1.0, max=1.0,
                 description="Only frames scoring at least this (cosine "
                 "similarity, -1 to 1)")
    scope_form(ctx, inputs, params, on_change)
    return runnable


#: what the similar mode says with no frame selected
NOTHING_SELECTED = (
    "Nothing selected: select frames in a frames view (search by prompt "
    "first: the results are one), or open a frame and use 'Find similar', "
    "then search.")


def search_from_params(ctx, params, selected):
    """Runs the frame search that ``params`` (the form above) describes.

    Returns:
        the hits (:func:`fiftyone_ai_search.search_frames`'s), best first
    """
    refs = selected_frames(ctx, selected)
    mode = _mode(params, refs, FRAME_MODES)
    scope = search_scope(ctx, params)
    kwargs = dict(limit=forms.form_limit(params),
                  threshold=params.get("threshold"),
                  best_per_video=bool(params.get("best_per_video", False)))
    if mode == "prompt":
        return ais.search_frames(scope, prompt=params.get("prompt") or "",
                                 **kwargs)
    if mode == "image":
        return ais.search_frames(scope, image=forms.searched_image(params),
                                 **kwargs)
    if not refs:
        raise ValueError(NOTHING_SELECTED)
    return _similar(scope, refs, **kwargs)


def _similar(scope, refs, limit, threshold, best_per_video):
    """The frames like any of ``refs``: a frame's score is its best over
    them (one search per reference frame)."""
    best = {}
    for ref in refs:
        for hit in ais.search_frames(scope, frame=ref, limit=limit,
                                     threshold=threshold,
                                     best_per_video=best_per_video):
            key = ((hit["sample_id"],) if best_per_video
                   else (hit["sample_id"], hit["frame_number"]))
            if key not in best or hit["score"] > best[key]["score"]:
                best[key] = hit
    return sorted(best.values(), key=lambda h: -h["score"])[:limit]


def search_and_show(ctx, params, selected):
    """Runs the frame search of ``params`` and shows its hits in the App as
    a frames view, best first. Says when nothing matched, and when hits
    cannot be shown (videos without metadata: FiftyOne's frames views
    count frames with it).

    Returns:
        ``{"count": hits, "shown": frames shown, "best": the best hit or
        None}``
    """
    hits = search_from_params(ctx, params, selected)
    if not hits:
        ctx.ops.notify("Nothing matched", variant="warning")
        return {"count": 0, "shown": 0, "best": None}
    view = ais.frames_view(ctx.dataset, hits)
    shown = len(view)
    if shown == 0:
        raise ValueError(
            f"{len(hits)} frames matched, but FiftyOne cannot show frames "
            "of videos without metadata (it counts their frames with it): "
            "run dataset.compute_metadata() (FiftyOne runs ffprobe for it) "
            "and search again.")
    ctx.ops.set_view(view=view)
    return {"count": len(hits), "shown": shown, "best": hits[0]}
