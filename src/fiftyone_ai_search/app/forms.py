"""Form definitions shared by the operators and the panel, and the calls
they make.

Each form is built from a dict of parameters (``ctx.params`` in an operator,
the panel's state in the panel) so that one definition serves both. Inputs
that cannot be run (nothing selected, not indexed yet) are marked
``invalid``, as FiftyOne's own plugins do, so that Execute is blocked rather
than failing.
"""

import os

import fiftyone.operators.types as types

import fiftyone_ai_search as ais
from fiftyone_ai_search import media
from fiftyone_ai_search.config import BACKENDS
from fiftyone_ai_search.duplicates import DEFAULT_THRESHOLD

SEARCH_MODES = ("prompt", "similar", "diverse")
DEFAULT_LIMIT = 100

#: the choice of the enable form that reveals free model / pretrained fields
CUSTOM_MODEL = "custom"


# -- status --------------------------------------------------------------------


def readiness(status):
    """``"off"``, ``"indexing"`` (the first index is not complete yet),
    ``"failed"`` (the first indexing stopped with an error) or ``"ready"``."""
    if not status["enabled"]:
        return "off"
    if status.get("updated_at") is not None:
        return "ready"
    return "indexing" if status["in_progress"] else "failed"


def progress_text(status):
    p = status.get("progress") or {}
    if not p.get("total"):
        return "starting the worker"
    return f"{p['done']} / {p['total']} ({100 * p['done'] // p['total']}%)"


def status_text(status):
    """Where AI search of a dataset stands, in one line (markdown)."""
    state = readiness(status)
    if state == "off":
        return "**AI search is off** for this dataset."
    index, rebuild = status.get("index"), status.get("rebuild")
    if status["in_progress"] and index and rebuild:
        return (f"**Rebuilding with {model_label(**_model(rebuild))}**: "
                f"{progress_text(status)}. Searches use "
                f"{model_label(**_model(index))} until it is complete.")
    if status["in_progress"]:
        return f"**Computing embeddings**: {progress_text(status)}"
    if state == "failed":
        return (f"**Indexing failed**: {status.get('last_error') or 'stopped'}."
                " Enable again, or run 'AI search: compute embeddings'.")
    text = f"**Ready** ({model_label(**_model(index or status))}"
    updated = status.get("updated_at")
    if updated is not None:
        text += f", updated {updated:%Y-%m-%d %H:%M} UTC"
    text += ")"
    counts = status.get("counts")
    if counts:
        text += (f": {counts['num_indexed']} of {counts['num_samples']} "
                 f"samples indexed, {counts['num_failed']} failed")
    if status.get("last_error"):
        text += f". Last sync failed: {status['last_error']}"
    if rebuild:
        text += (f". A rebuild with {model_label(**_model(rebuild))} is "
                 "pending: run 'AI search: compute embeddings'")
    return text + "."


def _model(ref):
    return {"model": ref["model"], "pretrained": ref.get("pretrained")}


def model_label(model, pretrained):
    """A model as a curator reads it: a checkpoint by its folder's name."""
    if model.startswith("local-dir:"):
        return os.path.basename(model.rstrip("/")) + " (local checkpoint)"
    return f"{model} / {pretrained}" if pretrained else model


def jsonable(value):
    """Dates as ISO strings, recursively, so the App can show them."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def blocked(inputs, name, message, kind=types.Warning):
    """A notice that also blocks Execute (``invalid``)."""
    prop = inputs.view(name, kind(label=message))
    prop.invalid = True
    prop.error_message = message
    return prop


def require_ready(ctx, inputs):
    """Blocks the form unless the dataset's index is ready to search (a
    first indexing complete); says where to enable it.

    Returns:
        whether it is ready
    """
    status = ais.get_status(ctx.dataset, counts=False)
    if readiness(status) == "ready":
        return True
    blocked(inputs, "not_ready", status_text(status) + " Enable it from the "
            "AI Search button above the grid.")
    return False


# -- enabling --------------------------------------------------------------------


def enable_form(inputs, params):
    """The model choice (with what is on this machine) and the index
    backend."""
    choices = ais.available_models()
    default = choices[0]
    offered = next((c for c in choices if c.available), default)
    if not default.available:
        inputs.view("model_notice", types.Notice(label=(
            f"The default model {default.model} ({default.pretrained}) is not "
            "on this machine; its weights are downloaded on first use (about "
            "600 MB), which fails offline. The models listed as on this "
            "machine work offline.")))

    dropdown = types.Dropdown()
    for choice in choices:
        dropdown.add_choice(choice.key, label=choice.label)
    dropdown.add_choice(CUSTOM_MODEL, label="Another open_clip model...")
    inputs.enum("model_choice", dropdown.values(), label="Model",
                default=offered.key, view=dropdown)

    key = params.get("model_choice") or offered.key
    if key == CUSTOM_MODEL:
        inputs.str("model", label="open_clip model", required=True,
                   description="A name such as ViT-B-16, or local-dir:/path")
        inputs.str("pretrained", label="Pretrained",
                   description="A tag of that model (e.g. openai) or a "
                   "local weights file")
    else:
        chosen = next((c for c in choices if c.key == key), None)
        if chosen is not None and not chosen.available:
            try:
                ais.check_model(chosen.model, chosen.pretrained)
            except ais.ModelUnavailableError as e:
                blocked(inputs, "model_unavailable", str(e), types.Error)

    settings = ais.get_settings()
    inputs.enum("backend", list(BACKENDS), label="Index",
                default=settings.backend, view=types.RadioGroup(
                    orientation="horizontal"),
                description="edge: embedded, nothing to run; server: a "
                "Qdrant server (URL and API key from plugin secrets)")


def model_from_params(params):
    """``(model, pretrained)`` that the enable form's parameters name."""
    model = params.get("model") or None
    pretrained = params.get("pretrained") or None
    key = params.get("model_choice")
    if key and key != CUSTOM_MODEL and model is None:
        model, _, pretrained = key.partition("|")
        pretrained = pretrained or None
    elif model is None:
        # headless without a choice: what the form offers first
        choices = ais.available_models()
        first = next((c for c in choices if c.available), choices[0])
        model, pretrained = first.model, first.pretrained
    return model, pretrained


def enable_from_params(ctx, params, secrets):
    """Enables AI search as the enable form says; loads no model here (the
    background worker does)."""
    model, pretrained = model_from_params(params)
    return ais.enable_embeddings(
        ctx.dataset, model=model, pretrained=pretrained,
        backend=params.get("backend") or None, secrets=secrets, load=False,
    )


# -- searching -------------------------------------------------------------------


def search_scope(ctx, params):
    """What a search from the App searches: the dataset when the App shows
    the latest results (or a score range of them) or the user asked for the
    whole dataset, else the App's current view; for a patches view, the
    samples its patches belong to (a search finds samples, not patches).

    Raises:
        fiftyone_ai_search.media.UnsupportedMediaError: for a frames or
            clips view (videos are not indexed); the message says what to do
    """
    view = ctx.view
    # (a patches view has no stages of its own: its stages are those of
    # the hidden dataset FiftyOne generates for it)
    whole = not view._stages and not view._is_generated
    if (params.get("whole_dataset") or whole  # the whole dataset
            or ais.is_latest_results(view)):
        return ctx.dataset
    _, samples = media.resolve(view)
    return view if samples is None else samples


def scope_form(ctx, inputs, params, on_change=None):
    """Says what a search will search; offers the whole dataset when that
    is a narrower view.

    Returns:
        False if the view cannot be searched (frames, clips), else None
    """
    try:
        scope = search_scope(ctx, {})
    except media.UnsupportedMediaError as e:
        blocked(inputs, "scope", str(e), types.Error)
        return False
    whole = f"Searching the whole dataset: {len(ctx.dataset)} samples"
    if media.is_grouped(ctx.dataset):
        # a grouped dataset is searched in its active slice
        whole = (f"Searching slice '{ctx.dataset.group_slice}' of the "
                 f"dataset: {len(ctx.dataset)} samples")
    if scope is ctx.dataset:
        note = ""
        if ais.is_latest_results(ctx.view):
            note = " (a new search never searches the latest results)"
        inputs.view("scope", types.Notice(label=f"{whole}{note}."))
        return
    if params.get("whole_dataset"):
        label = f"{whole}."
    elif ctx.view._is_patches:
        label = (f"Searching the {scope.count()} samples that the patches "
                 "of the current view belong to (a search finds samples, "
                 "not patches).")
    else:
        label = (f"Searching within the current view: {ctx.view.count()} "
                 "samples.")
    inputs.view("scope", types.Notice(label=label))
    inputs.bool("whole_dataset", label="Search the whole dataset instead",
                default=False, on_change=on_change)


def search_form(ctx, inputs, params, selected, on_change=None,
                modes=SEARCH_MODES):
    """The search form: mode, then the fields of that mode only.

    Args:
        ctx: the execution context
        inputs: the :class:`fiftyone.operators.types.Object` to fill
        params: the form's current values
        selected: the sample ids to search similar to
        on_change (None): called when the mode or the clustering changes
            (a panel re-renders then; an operator's form is re-resolved)
        modes (SEARCH_MODES): the modes offered; with one, no mode choice

    Returns:
        whether the form can be run (False: an input is invalid)
    """
    runnable = True
    mode = params.get("mode") or ("similar" if selected else "prompt")
    if len(modes) > 1:
        inputs.enum(
            "mode", list(modes), label="Search by", default=mode,
            on_change=on_change,
            view=types.RadioGroup(orientation="horizontal"),
            description="prompt: describe it; similar: like the selected "
            "samples; diverse: a representative spread",
        )
    if mode == "prompt":
        inputs.str("prompt", label="Prompt", required=True,
                   description="Commas separate several prompts")
        inputs.str("negative_prompt", label="Negative prompt",
                   description="Push away what this describes (optional)")
    elif mode == "similar":
        if selected:
            inputs.view("selected", types.Notice(
                label=f"Similar to the {len(selected)} selected sample(s)."))
        else:
            runnable = False
            blocked(inputs, "selected",
                    "Nothing selected: select samples in the grid (or open "
                    "one and use 'Find similar'), then search.")
    else:
        inputs.enum("method", ["centroids", "random"], label="Take",
                    default="centroids",
                    view=types.RadioGroup(orientation="horizontal"),
                    description="centroids: the most typical of each "
                    "cluster; random: random members")
        inputs.enum("clustering_method", ["kmeans", "dbscan"],
                    label="Clustering", default="kmeans", on_change=on_change,
                    view=types.RadioGroup(orientation="horizontal"))
        if (params.get("clustering_method") or "kmeans") == "kmeans":
            inputs.int("num_clusters", label="Clusters", min=1,
                       description="Default: one per result (up to 100)")
    inputs.int("limit", label="Limit", default=DEFAULT_LIMIT, min=1)
    if mode != "diverse":
        inputs.float("threshold", label="Minimum score", min=-1.0, max=1.0,
                     description="Only results scoring at least this "
                     "(cosine similarity, -1 to 1)")
    if scope_form(ctx, inputs, params, on_change) is False:
        runnable = False
    return runnable


def search_from_params(ctx, params, selected):
    """Runs the search that ``params`` (the form above) describes. Returns
    the collection name or None."""
    mode = params.get("mode") or ("similar" if selected else "prompt")
    kwargs = dict(limit=int(params.get("limit") or DEFAULT_LIMIT))
    if mode == "prompt":
        kwargs.update(prompt=params.get("prompt") or "",
                      negative_prompt=params.get("negative_prompt") or None,
                      threshold=params.get("threshold"))
    elif mode == "similar":
        if not selected:
            raise ValueError("image_id: nothing selected; select samples in "
                             "the grid first")
        kwargs.update(image_id=list(selected),
                      threshold=params.get("threshold"))
    elif mode == "diverse":
        kwargs.update(method=params.get("method") or "centroids",
                      clustering_method=params.get("clustering_method")
                      or "kmeans")
        if kwargs["clustering_method"] == "kmeans":
            kwargs["num_clusters"] = params.get("num_clusters") or None
    else:
        raise ValueError(f"mode must be one of {SEARCH_MODES}, got {mode!r}")
    return ais.perform_ai_search(search_scope(ctx, params), **kwargs)


def search_and_show(ctx, params, selected):
    """Runs the search of ``params`` and shows its results in the App.

    Returns:
        ``{"collection": name or None, "count": n}``
    """
    name = search_from_params(ctx, params, selected)
    if name is None:
        ctx.ops.notify("Nothing matched", variant="warning")
        return {"collection": None, "count": 0}
    return {"collection": name, "count": len(show_collection(ctx, name))}


def show_collection(ctx, name, min_score=None, max_score=None):
    """Sets the App's view to a collection (or a score range of it).

    The view is sent as stages rather than by saved-view name: the App's
    list of saved views does not know a view saved during this request
    yet, and setting it by name failed on the first search.
    """
    view = ais.get_collection(ctx.dataset, name, min_score=min_score,
                              max_score=max_score)
    ctx.ops.set_view(view=view)
    return view


# -- near-duplicates ---------------------------------------------------------------


def duplicates_threshold(params):
    """The threshold of the near-duplicates form's parameters (its default
    when absent)."""
    value = params.get("threshold")
    return DEFAULT_THRESHOLD if value is None else value


def duplicates_form(ctx, inputs, params, on_change=None):
    """The near-duplicates form: the similarity threshold, and what is
    searched (as a search's scope).

    Returns:
        whether the form can be run (False: an input is invalid)
    """
    runnable = True
    threshold = duplicates_threshold(params)
    prop = inputs.float(
        "threshold", label="Similarity threshold", default=DEFAULT_THRESHOLD,
        min=0.0, max=1.0, required=True,
        description="Images at least this similar (cosine similarity, above "
        f"0 and at most 1; default {DEFAULT_THRESHOLD}) are near-duplicates. "
        "Lower finds looser copies",
    )
    if isinstance(threshold, bool) or not isinstance(
            threshold, (int, float)) or not 0 < threshold <= 1:
        runnable = False
        prop.invalid = True
        prop.error_message = ("The threshold is a similarity above 0 and at "
                              f"most 1, got {threshold!r}")
    if scope_form(ctx, inputs, params, on_change) is False:
        runnable = False
    return runnable


def duplicates_and_show(ctx, params):
    """Finds the near-duplicates that ``params`` (the form above) asks for
    and shows them in the App: each group is the sample it keeps, then its
    duplicates. When there are none, says so and leaves the view alone.

    Returns:
        ``{"collection": name or None, "count": n, "groups": g}``
    """
    threshold = duplicates_threshold(params)
    name = ais.find_near_duplicates(search_scope(ctx, params),
                                    threshold=threshold)
    if name is None:
        ctx.ops.notify(f"No near-duplicates: no two images have a "
                       f"similarity of {threshold:g} or more", variant="info")
        return {"collection": None, "count": 0, "groups": 0}
    view = show_collection(ctx, name)
    (latest,) = [c for c in ais.list_collections(ctx.dataset)
                 if c["name"] == name]
    groups = latest["query"].get("groups", 0)
    ctx.ops.notify(f"Found {len(view) - groups} near-duplicates of {groups} "
                   "images: each image is shown first, its copies after it",
                   variant="success")
    return {"collection": name, "count": len(view), "groups": groups}


def named_collections(dataset):
    """The names of the dataset's saved collections (not the latest
    results), oldest first."""
    return [c["name"] for c in ais.list_collections(dataset)
            if c["name"] != ais.TEMPORARY_COLLECTION]


def collection_choice(ctx, inputs, params):
    """A dropdown of the dataset's named collections (blocked when there
    are none)."""
    names = named_collections(ctx.dataset)
    if not names:
        blocked(inputs, "no_collections",
                 "This dataset has no saved collections yet.")
        return None
    choices = types.Dropdown()
    for name in names:
        choices.add_choice(name, label=name)
    inputs.enum("name", names, label="Collection", required=True,
                default=params.get("name") if params.get("name") in names
                else names[-1], view=choices)
    return names
