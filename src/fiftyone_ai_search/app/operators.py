"""FiftyOne App operators. They read parameters and call the SDK; no logic.

Each operator declares its FiftyOne config as data (``CONFIG``) and its form
in ``form()``. Headless, form defaults are not applied, so every ``execute``
reads its parameters with the same defaults as its form.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

import fiftyone_ai_search as ais
from fiftyone_ai_search.config import BACKENDS

SEARCH_MODES = ("prompt", "similar", "diverse")


def _secrets(ctx):
    return {k: v for k, v in (ctx.secrets or {}).items() if v}


def _jsonable(status):
    """Dates as ISO strings, so the App can show the status."""
    out = {}
    for key, value in status.items():
        if isinstance(value, dict):
            value = _jsonable(value)
        elif hasattr(value, "isoformat"):
            value = value.isoformat()
        out[key] = value
    return out


def status_text(status):
    """One line saying where AI search of a dataset stands."""
    if not status["enabled"]:
        return "AI search is off for this dataset."
    if status["in_progress"]:
        p = status.get("progress") or {}
        return f"Computing embeddings: {p.get('done', 0)} / {p.get('total', '?')}"
    c = status["counts"]
    return (
        f"Ready: {c['num_indexed']} of {c['num_samples']} samples indexed"
        f" with {status['model']}, {c['num_failed']} failed."
    )


class _Operator(foo.Operator):
    """An operator whose config is the data in ``CONFIG`` and whose form is
    built by :meth:`form`."""

    #: keyword arguments of ``fiftyone.operators.OperatorConfig``
    CONFIG = {}

    #: where the App shows a button for it: ``(place, label)``, ``place`` a
    #: ``fiftyone.operators.types.Places``; None: the operator menu only
    BUTTON = None

    @property
    def config(self):
        return foo.OperatorConfig(**self.CONFIG)

    def resolve_placement(self, ctx):
        if self.BUTTON is None:
            return None
        place, label = self.BUTTON
        return types.Placement(place, types.Button(
            label=label, icon=self.CONFIG.get("icon"), prompt=True))

    def form(self, ctx, inputs):
        """Adds the operator's inputs to ``inputs``."""

    def resolve_input(self, ctx):
        inputs = types.Object()
        self.form(ctx, inputs)
        return types.Property(
            inputs, view=types.View(label=self.CONFIG["label"])
        )


# -- the index -----------------------------------------------------------------


class EnableAISearch(_Operator):
    CONFIG = dict(
        name="enable_ai_search",
        label="AI search: enable",
        description="Embed this dataset's images with CLIP and keep them in "
        "sync, so it can be searched by prompt and example",
        icon="travel_explore",
        dynamic=True,
    )

    def form(self, ctx, inputs):
        settings = ais.get_settings()
        inputs.str("model", label="Model", default=settings.model,
                   description="An open_clip model name or local-dir:/path")
        inputs.str("pretrained", label="Pretrained",
                   default=settings.pretrained,
                   description="An open_clip tag or a local weights file")
        inputs.enum("backend", list(BACKENDS), label="Index",
                    default=settings.backend,
                    description="edge: embedded, nothing to run; server: a "
                    "Qdrant server (URL and API key from plugin secrets)")

    def execute(self, ctx):
        status = ais.enable_embeddings(
            ctx.dataset,
            model=ctx.params.get("model") or None,
            pretrained=ctx.params.get("pretrained") or None,
            backend=ctx.params.get("backend") or None,
            secrets=_secrets(ctx),
        )
        return _jsonable(status)


class DisableAISearch(_Operator):
    CONFIG = dict(
        name="disable_ai_search",
        label="AI search: disable",
        description="Delete this dataset's AI search index",
        icon="search_off",
    )

    def form(self, ctx, inputs):
        inputs.view("warning", types.Warning(
            label="This deletes the dataset's embeddings index. "
            "Re-enabling computes it again."))

    def execute(self, ctx):
        ais.disable_embeddings(ctx.dataset)
        return {"enabled": False}


class ComputeEmbeddings(_Operator):
    CONFIG = dict(
        name="compute_embeddings",
        label="AI search: compute embeddings",
        description="Embed new and changed samples, remove deleted ones",
        icon="sync",
        dynamic=True,
        allow_immediate_execution=True,
        allow_delegated_execution=True,
        default_choice_to_delegated=True,
    )

    def form(self, ctx, inputs):
        inputs.bool("force", label="Rebuild", default=False,
                    description="Embed every sample again from scratch")
        inputs.bool("verify_files", label="Check every file", default=False,
                    description="Also find images overwritten on disk")

    def resolve_delegation(self, ctx):
        return ctx.params.get("delegate", None)

    def execute(self, ctx):
        force = bool(ctx.params.get("force", False))
        verify_files = bool(ctx.params.get("verify_files", False))
        if not ctx.delegated:
            # immediate: hand the work to a background worker, return at once
            ais.calculate_embeddings(
                ctx.dataset, force=force, verify_files=verify_files,
                wait=False, secrets=_secrets(ctx),
            )
            return {"started": True}

        def progress(done, total):
            ctx.set_progress(progress=done / total if total else 1.0,
                             label=f"Embedded {done} / {total}")

        report = ais.calculate_embeddings(
            ctx.dataset, force=force, verify_files=verify_files, wait=True,
            progress=progress, secrets=_secrets(ctx),
        )
        return report.to_dict()


class AISearchStatus(_Operator):
    CONFIG = dict(
        name="ai_search_status",
        label="AI search: status",
        icon="info",
        dynamic=True,
    )

    def form(self, ctx, inputs):
        status = ais.get_status(ctx.dataset)
        inputs.view("status", types.Notice(label=status_text(status)))

    def execute(self, ctx):
        return _jsonable(ais.get_status(ctx.dataset))

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.obj("counts", label="Counts", view=types.JSONView())
        outputs.list("failures", types.Object(), label="Failures",
                     view=types.JSONView())
        return types.Property(outputs)


# -- search and collections ------------------------------------------------------


def search_form(ctx, inputs):
    """The search form; shared by the operator and the panel."""
    # the form is resolved again on every edit: one state read when ready
    if ais.get_embeddings_updated_at(ctx.dataset) is None:
        # off, or never indexed: nothing to search yet. Say why, what to do
        status = ais.get_status(ctx.dataset)
        what = ("run 'AI search: enable' first" if not status["enabled"]
                else "the first indexing has to finish")
        inputs.view("not_ready", types.Warning(
            label=f"{status_text(status)} To search, {what}."))
    mode = ctx.params.get("mode") or ("similar" if ctx.selected else "prompt")
    inputs.enum(
        "mode", list(SEARCH_MODES), label="Search by", default=mode,
        view=types.RadioGroup(),
        description="prompt: describe it; similar: like the selected "
        "samples; diverse: a representative spread",
    )
    if mode == "prompt":
        inputs.str("prompt", label="Prompt", required=True,
                   description="Commas separate several prompts")
        inputs.str("negative_prompt", label="Negative prompt",
                   description="Push away what this describes (optional)")
    elif mode == "similar":
        n = len(ctx.selected or [])
        inputs.view("selected", types.Notice(
            label=f"Similar to the {n} selected sample(s)" if n else
            "Select samples in the grid first"))
    else:
        inputs.enum("method", ["centroids", "random"], label="Take",
                    default="centroids",
                    description="centroids: the most typical of each "
                    "cluster; random: random members")
        inputs.enum("clustering_method", ["kmeans", "dbscan"],
                    label="Clustering", default="kmeans")
        if ctx.params.get("clustering_method", "kmeans") == "kmeans":
            inputs.int("num_clusters", label="Clusters",
                       description="Default: one per result (up to a cap)")
    inputs.int("limit", label="Limit", default=100, min=1)
    inputs.float("threshold", label="Minimum score",
                 description="Only results scoring at least this (-1 to 1)",
                 min=-1.0, max=1.0)


def search_from_params(ctx, params):
    """Runs the search that ``params`` (the form above) describes, within
    the App's current view. Returns the collection name or None."""
    mode = params.get("mode") or "prompt"
    kwargs = dict(limit=int(params.get("limit") or 100),
                  threshold=params.get("threshold"))
    if mode == "prompt":
        kwargs.update(prompt=params.get("prompt") or "",
                      negative_prompt=params.get("negative_prompt") or None)
    elif mode == "similar":
        kwargs["image_id"] = list(ctx.selected or [])
    elif mode == "diverse":
        kwargs.update(method=params.get("method") or "centroids",
                      clustering_method=params.get("clustering_method")
                      or "kmeans")
        if kwargs["clustering_method"] == "kmeans":
            kwargs["num_clusters"] = params.get("num_clusters") or None
    else:
        raise ValueError(f"mode must be one of {SEARCH_MODES}, got {mode!r}")
    return ais.perform_ai_search(ctx.view, **kwargs)


def _collection_choice(ctx, inputs):
    names = [c["name"] for c in ais.list_collections(ctx.dataset)]
    choices = types.Dropdown()
    for name in names:
        choices.add_choice(name, label=name)
    inputs.enum("name", names, label="Collection", required=True,
                view=choices)


class AISearch(_Operator):
    CONFIG = dict(
        name="ai_search",
        label="AI search",
        description="Find samples by prompt, by similarity to the selected "
        "samples, or a diverse spread; within the current view",
        icon="travel_explore",
        dynamic=True,
    )
    BUTTON = (types.Places.SAMPLES_GRID_ACTIONS, "AI Search")

    def form(self, ctx, inputs):
        search_form(ctx, inputs)

    def execute(self, ctx):
        name = search_from_params(ctx, ctx.params)
        if name is None:
            ctx.ops.notify("Nothing matched", variant="warning")
            return {"collection": None, "count": 0}
        ctx.ops.set_view(name=name)
        return {"collection": name,
                "count": len(ais.get_collection_scores(ctx.dataset, name))}


class FilterByScore(_Operator):
    CONFIG = dict(
        name="filter_by_score",
        label="AI search: filter results by score",
        icon="filter_alt",
        dynamic=True,
    )

    def form(self, ctx, inputs):
        inputs.str("collection", label="Collection",
                   default=ais.TEMPORARY_COLLECTION)
        inputs.float("min_score", label="Minimum score", min=-1.0, max=1.0)
        inputs.float("max_score", label="Maximum score", min=-1.0, max=1.0)

    def execute(self, ctx):
        name = ctx.params.get("collection") or ais.TEMPORARY_COLLECTION
        view = ais.get_collection(
            ctx.dataset, name,
            min_score=ctx.params.get("min_score"),
            max_score=ctx.params.get("max_score"),
        )
        ctx.ops.set_view(view=view)
        return {"collection": name, "count": len(view)}


class SaveCollection(_Operator):
    CONFIG = dict(
        name="save_collection",
        label="AI search: save results as a collection",
        icon="bookmark_add",
        dynamic=True,
    )

    def form(self, ctx, inputs):
        inputs.str("name", label="Name", required=True)
        inputs.str("source", label="Collection to save",
                   default=ais.TEMPORARY_COLLECTION)
        inputs.bool("overwrite", label="Replace a view of that name",
                    default=False)

    def execute(self, ctx):
        name = ais.save_collection(
            ctx.dataset, ctx.params.get("name"),
            source=ctx.params.get("source") or ais.TEMPORARY_COLLECTION,
            overwrite=bool(ctx.params.get("overwrite", False)),
        )
        return {"collection": name}


class RenameCollection(_Operator):
    CONFIG = dict(
        name="rename_collection",
        label="AI search: rename a collection",
        icon="edit",
        dynamic=True,
    )

    def form(self, ctx, inputs):
        _collection_choice(ctx, inputs)
        inputs.str("new_name", label="New name", required=True)

    def execute(self, ctx):
        name = ais.rename_collection(ctx.dataset, ctx.params.get("name"),
                                     ctx.params.get("new_name"))
        return {"collection": name}


class DeleteCollection(_Operator):
    CONFIG = dict(
        name="delete_collection",
        label="AI search: delete a collection",
        icon="delete",
        dynamic=True,
    )

    def form(self, ctx, inputs):
        _collection_choice(ctx, inputs)

    def execute(self, ctx):
        name = ctx.params.get("name")
        ais.delete_collection(ctx.dataset, name)
        return {"deleted": name}


OPERATORS = (
    EnableAISearch,
    DisableAISearch,
    ComputeEmbeddings,
    AISearchStatus,
    AISearch,
    FilterByScore,
    SaveCollection,
    RenameCollection,
    DeleteCollection,
)
