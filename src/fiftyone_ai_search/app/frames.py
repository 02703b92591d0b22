"""Frame search in the App: the search form of a video dataset (whose
index is of the frames of its videos, see :mod:`fiftyone_ai_search.frame_search`)
and the search it runs, shared by the grid's AI Search button, the panel
and "Find similar" in the sample modal. In a grouped dataset, the same
where the App shows a video slice: it searches the frames of that slice's
videos (or, asked, of every video slice).

The hits are kept as the latest results (a frame collection, as
:func:`fiftyone_ai_search.perform_frame_search` keeps them) and open, by
default, as a clips view: a clip from each hit, one sampling interval
long, best first. Its tile is the hit frame, and clicking it opens the
video player at the hit, playing that clip (``l`` unlocks the whole
video): FiftyOne 1.22 plays a clips view's sample from its first frame,
where it plays a frames view's sample from the video's beginning, and
offers a plugin no other way to open the player at a frame. Unticking
"Open as clips" shows FiftyOne's frames view of the hits instead (each
tile the hit frame; its player starts at the video's beginning). The
panel's histogram, score range and saving work on them as on images; the
choice is kept with the results, and a collection saved from them opens
so (as clips at the hits, from the panel's list or FiftyOne's saved
views).

By example, a search starts from a frame: the one selected in a frames
view (the results, or any frames view on the index's grid), the hit of a
result clip selected, or the frame (the result clip) open in the modal.
"""

import fiftyone.operators.types as types

import fiftyone_ai_search as ais
from fiftyone_ai_search import clip_views
from fiftyone_ai_search import results
from fiftyone_ai_search.index import media
from fiftyone_ai_search.words import counted

from . import forms

#: the search modes of frames
FRAME_MODES = ("prompt", "similar", "image", "diverse")


def selected_frames(ctx, selected):
    """The frames a search by example may start from, ``(video sample id,
    frame number)`` each, in the order selected: the selected samples of a
    frames view (or the frame open in the modal), the hit frames of
    selected clips of frame results (the first frame of each clip); none
    elsewhere (a video is not a frame)."""
    view = ctx.view
    ids = list(selected or ())
    if ids and clip_views.shown_keys_of(view) is not None:
        clip_ids, videos, supports = view.select(ids).values(
            ["id", "sample_id", "support"])
        found = {i: (v, s[0]) for i, v, s in zip(clip_ids, videos, supports)}
        return [found[i] for i in ids if i in found]
    if not ids or not getattr(view, "_is_frames", False):
        return []
    frame_ids, videos, numbers = view.select(ids).values(
        ["id", "sample_id", "frame_number"])
    found = {i: (v, n) for i, v, n in zip(frame_ids, videos, numbers)}
    return [found[i] for i in ids if i in found]


def search_scope(ctx, params):
    """What a frame search from the App searches: the App's view (of
    videos: their frames; a frames view: its frames), or the whole dataset
    when the App shows the latest results (or a score range of them), when
    the view has no stages or is of clips, or when the user asked for the
    whole dataset.

    In a grouped dataset, as FiftyOne's App works in the slice it shows,
    that is the videos of the active video slice (of the view), or of
    every video slice when the user asked for them all (``all_slices``) or
    when the App shows no video slice (frames or clips of the results).
    """
    view = ctx.view
    # (a frames view has no stages of its own: its stages are those of the
    # frames dataset FiftyOne generates for it)
    whole = not view._stages and not view._is_generated
    scope = view
    if (params.get("whole_dataset") or whole or view._is_clips
            or forms.showing_results(view)):
        scope = ctx.dataset
    active = _active_video_slice(ctx)
    if (active is not None and scope.media_type == "group"
            and not params.get("all_slices")):
        return scope.select_group_slices(active)
    return scope


def _active_video_slice(ctx):
    """The grouped dataset's slice the App shows, if it is a video slice."""
    dataset = ctx.dataset
    if dataset.group_slice in forms.video_slices(dataset):
        return dataset.group_slice
    return None


def _narrower(ctx):
    """Whether the App's view is narrower than the dataset: a view of the
    user's, not the latest results nor a clips view (searched as the whole
    dataset, see :func:`search_scope`)."""
    view = ctx.view
    return ((bool(view._stages) or view._is_generated) and not view._is_clips
            and not forms.showing_results(view))


def _named(slices):
    return ", ".join(f"'{s}'" for s in slices)


def _videos(count):
    return f"the {counted(count, 'video')}"


def _grouped_scope_form(ctx, inputs, params, on_change):
    """:func:`scope_form` in a grouped dataset: which video slice (and
    which of its videos) is searched; offers every video slice."""
    scope = search_scope(ctx, params)
    slices = forms.video_slices(ctx.dataset)
    active = _active_video_slice(ctx)
    narrower = _narrower(ctx) and not params.get("whole_dataset")
    where = " in the current view" if narrower else ""
    if scope._is_frames:
        label = f"Searching the {scope.count()} frames of the current view."
    elif scope.media_type == "group":  # every video slice
        count = scope.select_group_slices(media_type="video").count()
        label = (f"Searching the frames of {_videos(count)} of the video "
                 f"slices {_named(slices)}{where}.")
    else:
        of = f" of slice '{active}'" if active else ""
        label = (f"Searching the frames of {_videos(scope.count())}{of}"
                 f"{where}.")
    if forms.showing_results(ctx.view):
        label += " A new search never searches the latest results."
    inputs.view("scope", types.Notice(label=label))
    if active is not None and len(slices) > 1:
        inputs.bool("all_slices", label="Search every video slice",
                    default=False, on_change=on_change,
                    description=f"The frames of the videos of "
                    f"{_named(slices)}, not of '{active}' alone (the slice "
                    "shown)")
    if _narrower(ctx):
        inputs.bool("whole_dataset", label="Search the whole dataset "
                    "instead", default=False, on_change=on_change)


def scope_form(ctx, inputs, params, on_change=None):
    """Says what a frame search searches; offers the whole dataset when
    the App's view is a narrower one (and, in a grouped dataset, every
    video slice)."""
    if media.is_grouped(ctx.dataset):
        _grouped_scope_form(ctx, inputs, params, on_change)
        return
    scope = search_scope(ctx, params)
    whole = (f"Searching the frames of all {len(ctx.dataset)} videos of the "
             "dataset")
    if scope is ctx.dataset and not params.get("whole_dataset"):
        note = ""
        if forms.showing_results(ctx.view):
            note = " (a new search never searches the latest results)"
        inputs.view("scope", types.Notice(label=f"{whole}{note}."))
        return
    if params.get("whole_dataset"):
        label = f"{whole}."
    elif ctx.view._is_frames:
        label = (f"Searching the {ctx.view.count()} frames of the current "
                 "view.")
    else:
        label = (f"Searching the frames of the {ctx.view.count()} videos of "
                 "the current view.")
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
    similar to the selected frame, an image, a diverse spread), its
    fields, whether to keep the best frame per video, whether to open the
    results as clips, the limit, the minimum score and the scope.

    Args:
        ctx: the execution context
        inputs: the :class:`fiftyone.operators.types.Object` to fill
        params: the form's current values
        selected: the selected samples (frames, in a frames view)
        on_change (None): called when the mode, the clustering or the scope
            changes
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
            "frame; image: like an image file; diverse: a representative "
            "spread of frames",
        )
    if mode == "prompt":
        inputs.str("prompt", label="Prompt", required=True,
                   description="Commas separate several prompts (a frame "
                   "scores its best over them)")
    elif mode == "similar":
        problem = similar_problem(refs)
        if problem:
            runnable = False
            forms.blocked(inputs, "selected", problem)
        else:
            _, number = refs[0]
            inputs.view("selected", types.Notice(
                label=f"Similar to the selected frame (frame {number} of "
                f"its video)."))
    elif mode == "image":
        if not forms.image_input(inputs, params):
            runnable = False
    else:
        forms.diverse_inputs(inputs, params, on_change)
    if mode != "diverse":
        inputs.bool("best_per_video", label="Best frame per video",
                    default=False, description="One result per video: its "
                    "frame that scores best")
    inputs.bool("as_clips", label="Open as clips", default=True,
                description="Each result a clip from its frame: the video "
                "player opens at the hit. Off: a frames view, whose player "
                "starts at the video's beginning")
    prop = inputs.int("limit", label="Limit", default=forms.DEFAULT_LIMIT,
                      min=1, description="How many frames to show (videos, "
                      "with the best frame per video)")
    problem = forms.limit_problem(params.get("limit"))
    if problem:
        runnable = False
        forms.invalid(prop, problem)
    if mode != "diverse":
        inputs.float("threshold", label="Minimum score", min=-1.0, max=1.0,
                     description="Only frames scoring at least this (cosine "
                     "similarity, -1 to 1)")
    scope_form(ctx, inputs, params, on_change)
    return runnable


def similar_problem(refs):
    """Why a search like the selected frame cannot run, or None: it starts
    from one frame."""
    if not refs:
        return ("Nothing selected: select a frame in a frames view (search "
                "by prompt first: the results are one), or open a frame and "
                "use 'Find similar', then search.")
    if len(refs) > 1:
        return (f"{len(refs)} frames are selected: a search like a frame "
                "starts from one. Select one frame.")
    return None


def search_from_params(ctx, params, selected):
    """Runs the frame search that ``params`` (the form above) describes,
    keeping its hits as the latest results.

    Returns:
        the collection's name, or None when nothing matched
    """
    refs = selected_frames(ctx, selected)
    mode = _mode(params, refs, FRAME_MODES)
    kwargs = dict(limit=forms.form_limit(params))
    if mode != "diverse":
        kwargs.update(threshold=params.get("threshold"),
                      best_per_video=bool(params.get("best_per_video",
                                                     False)))
    if mode == "prompt":
        kwargs["prompt"] = params.get("prompt") or ""
    elif mode == "image":
        kwargs["image"] = forms.searched_image(params)
    elif mode == "similar":
        problem = similar_problem(refs)
        if problem:
            raise ValueError(problem)
        kwargs["frame"] = refs[0]
    else:
        kwargs.update(forms.diverse_kwargs(params))
    return ais.perform_frame_search(search_scope(ctx, params), **kwargs)


def search_and_show(ctx, params, selected):
    """Runs the frame search of ``params`` and shows its hits in the App,
    best first: as clips starting at each hit (the form's "Open as clips",
    on by default), or as a frames view. Says when nothing matched, and
    when the hits cannot be shown (videos without metadata: FiftyOne's
    frames views count frames with it).

    Returns:
        ``{"collection": name or None, "count": frames shown}``
    """
    name = search_from_params(ctx, params, selected)
    if name is None:
        ctx.ops.notify("Nothing matched", variant="warning")
        return {"collection": None, "count": 0}
    as_clips = bool(params.get("as_clips", True))
    # kept with the results: a collection saved from them opens so too
    results.keep_clips_choice(ctx.dataset, name, as_clips)
    view = ais.get_collection(ctx.dataset, name, as_clips=as_clips)
    if len(view) == 0:
        raise ValueError(
            "Frames matched, but FiftyOne cannot show frames of videos "
            "without metadata (it counts their frames with it): run "
            "dataset.compute_metadata() (FiftyOne runs ffprobe for it) and "
            "search again.")
    ctx.ops.set_view(view=view)
    return {"collection": name, "count": len(view)}
