"""FiftyOne App operators. They read parameters and call the SDK; no logic.

Each operator declares its FiftyOne config as data (``CONFIG``) and its form
in ``form()``; the forms themselves are defined once, in
:mod:`fiftyone_ai_search.app.forms`, and shared with the panel. Headless,
form defaults are not applied, so every ``execute`` reads its parameters
with the same defaults as its form.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone.operators.executor import ExecutionOptions

import fiftyone_ai_search as ais

from . import forms, frames
from .manifest import PANEL_NAMES

#: the App opens a panel by its name
PANEL_NAME = PANEL_NAMES[0]


def _secrets(ctx):
    """The plugin secrets, as strings. (FiftyOne's ``ctx.secrets`` gives a
    secret it resolves on first access as a secret object, not its
    value.)"""
    secrets = {}
    for key in ctx.secrets or ():
        value = ctx.secrets[key]
        value = getattr(value, "value", value)
        if value:
            secrets[key] = value
    return secrets


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

    def button_label(self, ctx):
        return self.BUTTON[1]

    def resolve_placement(self, ctx):
        if self.BUTTON is None:
            return None
        return types.Placement(self.BUTTON[0], types.Button(
            label=self.button_label(ctx), icon=self.CONFIG.get("icon"),
            prompt=True))

    def form(self, ctx, inputs):
        """Adds the operator's inputs to ``inputs``."""

    def title(self, ctx):
        """The title of the operator's form."""
        return self.CONFIG["label"]

    def resolve_input(self, ctx):
        inputs = types.Object()
        self.form(ctx, inputs)
        return types.Property(inputs, view=types.View(label=self.title(ctx)))


# -- the index -----------------------------------------------------------------


class EnableAISearch(_Operator):
    CONFIG = dict(
        name="enable_ai_search",
        label="AI search: enable",
        description="Embed this dataset's images (or the objects of a label "
        "field; the frames of a video dataset's videos) with CLIP and keep "
        "them in sync, so they can be searched by prompt and example",
        icon="travel_explore",
        dynamic=True,
    )

    def form(self, ctx, inputs):
        forms.enable_form(inputs, ctx.params, ctx.dataset)

    def execute(self, ctx):
        status = forms.enable_from_params(ctx, ctx.params, _secrets(ctx))
        return forms.jsonable(status)


def _enabled_choice(ctx, inputs, label):
    """A choice among what has AI search on (images, objects of fields),
    where there is more than the images; returns the one chosen (None:
    images), or False when nothing is on."""
    enabled = forms.enabled_targets(ctx.dataset)
    if not enabled:
        return False
    default = forms.patches_field_of(ctx.view)
    if default not in enabled:
        default = enabled[0]
    if enabled != [None]:
        forms.target_choice(inputs, "search_in", enabled, default,
                            label=label, view=types.Dropdown())
    return forms.chosen_target(ctx.params, enabled, default)


def _chosen_enabled(ctx):
    """The target of an operator with :func:`_enabled_choice`, headless
    too (without a choice: the images)."""
    return forms.field_of(ctx.params.get("search_in"))


class DisableAISearch(_Operator):
    """Also a button beside the grid's AI Search button, while AI search
    is on (the seed's dropdown beside its button)."""

    CONFIG = dict(
        name="disable_ai_search",
        label="AI search: disable",
        description="Delete this dataset's AI search index (of its images, "
        "or of the objects of a label field)",
        icon="search_off",
        dynamic=True,
    )
    BUTTON = (types.Places.SAMPLES_GRID_ACTIONS, "Disable AI search")

    def resolve_placement(self, ctx):
        if not forms.enabled_targets(ctx.dataset):
            return None  # nothing to disable
        return super().resolve_placement(ctx)

    def form(self, ctx, inputs):
        field = _enabled_choice(ctx, inputs, "Disable search in")
        if field is False:
            forms.blocked(inputs, "off", "AI search is already off.",
                          types.Notice)
            return
        if field is None and forms.searches_frames(ctx):
            inputs.view("warning", types.Warning(
                label="Disable AI search? This deletes the index of the "
                "frames of the dataset's videos. Enabling again computes "
                "the embeddings again."))
        elif field is None:
            inputs.view("warning", types.Warning(
                label="Disable AI search? This deletes the dataset's "
                "embeddings index and the latest results; saved collections "
                "stay as saved views. Enabling again computes the "
                "embeddings again."))
        else:
            inputs.view("warning", types.Warning(
                label=f"Disable object search of {field}? This deletes the "
                f"index of its objects, and the latest results if they are "
                "of them; saved collections stay as saved views, the image "
                "index and other fields' indexes stay."))

    def execute(self, ctx):
        field = _chosen_enabled(ctx)
        showing_results = forms.showing_results(ctx.view)
        ais.disable_embeddings(ctx.dataset, patches_field=field,
                               secrets=_secrets(ctx),
                               frames=forms.searches_frames(ctx))
        if showing_results and not forms.has_latest_results(ctx.dataset):
            # they went with the index (also when open as a saved view);
            # the new view reloads the App's page, saved views list too
            forms.show_dataset(ctx)
        else:
            ctx.ops.reload_dataset()  # the saved views list drops them
        if field is None:
            return {"enabled": False}
        return {"enabled": False, "patches_field": field}


class ComputeEmbeddings(_Operator):
    CONFIG = dict(
        name="compute_embeddings",
        label="AI search: compute embeddings",
        description="Embed new and changed samples (or objects), remove "
        "deleted ones",
        icon="sync",
        dynamic=True,
        allow_immediate_execution=True,
        allow_delegated_execution=True,
        default_choice_to_delegated=True,
    )

    def form(self, ctx, inputs):
        _enabled_choice(ctx, inputs, "Compute for")
        inputs.bool("force", label="Rebuild", default=False,
                    description="Embed everything again from scratch")
        inputs.bool("verify_files", label="Check every file", default=False,
                    description="Also find images overwritten on disk")

    def resolve_delegation(self, ctx):
        return ctx.params.get("delegate", None)

    def execute(self, ctx):
        field = _chosen_enabled(ctx)
        force = bool(ctx.params.get("force", False))
        verify_files = bool(ctx.params.get("verify_files", False))
        video = forms.searches_frames(ctx)  # its frame index
        if not ctx.delegated:
            # immediate: never in the App server's process; a background
            # worker computes, and the panel follows it
            ais.calculate_embeddings(
                ctx.dataset, force=force, verify_files=verify_files,
                wait=False, secrets=_secrets(ctx), patches_field=field,
                frames=video,
            )
            ctx.ops.notify("Computing embeddings in a background worker; "
                           "the AI Search panel shows its progress")
            return {"started": True}

        def progress(done, total):
            ctx.set_progress(progress=done / total if total else 1.0,
                             label=f"Embedded {done} / {total}")

        report = ais.calculate_embeddings(
            ctx.dataset, force=force, verify_files=verify_files, wait=True,
            progress=progress, secrets=_secrets(ctx), patches_field=field,
            frames=video,
        )
        return report.to_dict()


class AISearchStatus(_Operator):
    CONFIG = dict(
        name="ai_search_status",
        label="AI search: status",
        icon="info",
        dynamic=True,
    )

    #: the failures table's columns of the images, and of objects
    FAILURE_COLUMNS = (("filepath", "File"), ("reason", "Reason"))
    OBJECT_FAILURE_COLUMNS = (("filepath", "File"), ("label_id", "Object"),
                              ("reason", "Reason"))

    def form(self, ctx, inputs):
        video = forms.searches_frames(ctx)
        status = ais.get_status(ctx.dataset, frames=video)
        inputs.md(forms.status_text(status), name="status")
        # a frame index's failures are videos (their frames unread)
        self._failures(inputs, "failures",
                       "Failed videos" if video else "Failed samples",
                       status.get("failures"), self.FAILURE_COLUMNS)
        for i, field in enumerate(status["object_fields"]):
            objects = ais.get_status(ctx.dataset, patches_field=field,
                                     counts=not ais.get_embeddings_in_progress(
                                         ctx.dataset, patches_field=field))
            inputs.md(forms.status_text(objects), name=f"objects_{i}")
            self._failures(inputs, f"object_failures_{i}",
                           f"Failed objects of {field}",
                           objects.get("failures"),
                           self.OBJECT_FAILURE_COLUMNS)

    @staticmethod
    def _failures(inputs, name, label, failures, columns):
        if not failures:
            return
        table = types.TableView()
        for key, column in columns:
            table.add_column(key, label=column)
        inputs.list(name, types.Object(), label=label, default=failures,
                    view=table)

    def execute(self, ctx):
        status = ais.get_status(ctx.dataset,
                                frames=forms.searches_frames(ctx))
        status["objects"] = {
            field: ais.get_status(ctx.dataset, patches_field=field)
            for field in status["object_fields"]}
        return forms.jsonable(status)


class StartRefresher(_Operator):
    """Starts a refresher, as a background service on the App server's
    machine (never in the App server's request): the panel's "Start a
    refresher", with the SDK's options (its interval, its datasets)."""

    CONFIG = dict(
        name="start_refresher",
        label="AI search: start a refresher",
        description="Keep AI search indexes in sync with their datasets on "
        "a schedule: a background service that outlives the App",
        icon="autorenew",
        dynamic=True,
    )

    def form(self, ctx, inputs):
        forms.refresher_form(ctx, inputs, ctx.params)

    def execute(self, ctx):
        pid, message = forms.start_refresher(ctx, ctx.params)
        ctx.ops.notify(message, variant="success")
        return {"pid": pid}


# -- search and collections ------------------------------------------------------


class AISearch(_Operator):
    """The "AI Search" button above the grid: enables AI search on a dataset
    where it is off, says how far a first indexing is, and searches (the
    images, or the objects of a field with object search)."""

    CONFIG = dict(
        name="ai_search",
        label="AI search",
        description="Find samples (or objects) by prompt, by similarity to "
        "the selected ones, by an image, or a diverse spread",
        icon="travel_explore",
        dynamic=True,
    )
    BUTTON = (types.Places.SAMPLES_GRID_ACTIONS, "AI Search")

    def button_label(self, ctx):
        return forms.button_label(forms.app_statuses(ctx))

    def resolve_placement(self, ctx):
        # a text button, no icon: FiftyOne draws an icon button's label only
        # as a tooltip, and the state must show on the button itself
        return types.Placement(self.BUTTON[0], types.Button(
            label=self.button_label(ctx), prompt=True))

    def title(self, ctx):
        state = forms.search_readiness(forms.app_statuses(ctx))
        return "AI search: enable" if state in ("off", "failed") else (
            "AI search")

    def form(self, ctx, inputs):
        all_statuses = forms.app_statuses(ctx)
        state = forms.search_readiness(all_statuses)
        if state == "ready" and forms.searches_frames(ctx):
            frames.search_form(ctx, inputs, ctx.params, ctx.selected or [])
            return
        if state == "ready":
            forms.search_form(ctx, inputs, ctx.params, ctx.selected or [])
            return
        if state == "indexing":
            field, status = forms.computing(all_statuses)
            what = "" if field is None else f" of the objects of {field}"
            forms.blocked(inputs, "indexing", (
                f"Computing the embeddings{what}: "
                f"{forms.progress_text(status)}. Search once they are ready; "
                "the AI Search panel shows the progress live."), types.Notice)
            return
        inputs.md(forms.status_text(all_statuses[None]), name="status")
        if forms.searches_frames(ctx):
            # the enable form says what is indexed: the frames
            forms.enable_form(inputs, ctx.params, ctx.dataset)
            return
        inputs.md("Enable AI search on this dataset: its images (or the "
                  "objects of a label field) are embedded in the background, "
                  "then you can search.", name="enable_intro")
        forms.enable_form(inputs, ctx.params, ctx.dataset)

    def execute(self, ctx):
        if forms.search_readiness(forms.app_statuses(ctx)) in (
                "off", "failed"):
            forms.enable_from_params(ctx, ctx.params, _secrets(ctx))
            ctx.ops.open_panel(PANEL_NAME, layout="horizontal")  # beside the grid: progress
            return {"enabled": True}
        if forms.searches_frames(ctx):
            return frames.search_and_show(ctx, ctx.params,
                                          ctx.selected or [])
        return forms.search_and_show(ctx, ctx.params, ctx.selected or [])


class SearchSimilar(_Operator):
    """"Find similar" in the sample modal: samples like the one shown; in
    a patches view (or for a label selected in the sample), objects like
    that one."""

    CONFIG = dict(
        name="search_similar",
        label="AI search: find similar",
        description="Samples that look like this one (or the selected ones); "
        "objects like the selected objects",
        icon="image_search",
        dynamic=True,
    )
    BUTTON = (types.Places.SAMPLES_VIEWER_ACTIONS, "Find similar")

    @staticmethod
    def _references(ctx):
        if ctx.current_sample:
            return [ctx.current_sample]
        return list(ctx.selected or [])

    def form(self, ctx, inputs):
        if not forms.require_ready(ctx, inputs, objects=True):
            return
        params = dict(ctx.params, mode="similar")
        if forms.searches_frames(ctx):  # frames like the frame open
            frames.search_form(ctx, inputs, params, self._references(ctx),
                               modes=("similar",))
            return
        forms.search_form(ctx, inputs, params, self._references(ctx),
                          modes=("similar",),
                          in_modal=bool(ctx.current_sample))

    def execute(self, ctx):
        params = dict(ctx.params, mode="similar")
        if forms.searches_frames(ctx):
            result = frames.search_and_show(ctx, params,
                                            self._references(ctx))
        else:
            result = forms.search_and_show(ctx, params,
                                           self._references(ctx),
                                           in_modal=bool(ctx.current_sample))
        if ctx.current_sample:
            ctx.ops.close_sample()  # to the grid, where the results are
        return result


class FindNearDuplicates(_Operator):
    """"Find near-duplicates" above the grid: groups of images at least a
    threshold similar, each kept image followed by its copies."""

    CONFIG = dict(
        name="find_near_duplicates",
        label="AI search: find near-duplicates",
        description="Images that are nearly the same (re-encoded, resized, "
        "slightly cropped copies), grouped around the one to keep",
        icon="content_copy",
        dynamic=True,
        allow_immediate_execution=True,
        allow_delegated_execution=True,
    )
    BUTTON = (types.Places.SAMPLES_GRID_ACTIONS, "Find near-duplicates")

    def resolve_placement(self, ctx):
        if forms.searches_frames(ctx):
            return None  # images only: not offered over frames
        return super().resolve_placement(ctx)

    def form(self, ctx, inputs):
        if forms.searches_frames(ctx):
            forms.blocked(inputs, "video", "Near-duplicates are found among "
                          "images; a video dataset's frames are not "
                          "searched for near-duplicates.")
            return
        if forms.require_ready(ctx, inputs):
            forms.duplicates_form(ctx, inputs, ctx.params)

    def resolve_delegation(self, ctx):
        return ctx.params.get("delegate", None)

    def resolve_execution_options(self, ctx):
        if self.resolve_delegation(ctx) is not None:
            return super().resolve_execution_options(ctx)
        # either; a large dataset offers scheduling first
        return ExecutionOptions(
            allow_immediate_execution=True, allow_delegated_execution=True,
            default_choice_to_delegated=(
                forms.duplicates_delegated_by_default(ctx)))

    def execute(self, ctx):
        if ctx.delegated:
            # in a delegated operation: progress live, the groups kept as
            # a collection (no App to show them to)
            return forms.duplicates_delegated(ctx, ctx.params)
        return forms.duplicates_and_show(ctx, ctx.params)


class TagNearDuplicates(_Operator):
    """"Tag near-duplicates" above the grid, where the dataset has a
    collection of near-duplicates: tags every image of its groups but the
    one each keeps (as the Brain plugin's "deduplicate" keeps each group's
    representative), for curators to review or delete."""

    CONFIG = dict(
        name="tag_near_duplicates",
        label="AI search: tag near-duplicates",
        description="Tag every near-duplicate but the image each group "
        "keeps",
        icon="label",
        dynamic=True,
    )
    BUTTON = (types.Places.SAMPLES_GRID_ACTIONS, "Tag near-duplicates")

    def resolve_placement(self, ctx):
        if not forms.duplicates_collections(ctx.dataset):
            return None  # nothing to tag
        return super().resolve_placement(ctx)

    def form(self, ctx, inputs):
        forms.tag_duplicates_form(ctx, inputs, ctx.params)

    def execute(self, ctx):
        return forms.tag_duplicates(ctx, ctx.params)


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
        view = forms.show_collection(ctx, name, ctx.params.get("min_score"),
                                     ctx.params.get("max_score"))
        return {"collection": name, "count": len(view)}


class SaveCollection(_Operator):
    CONFIG = dict(
        name="save_collection",
        label="AI search: save results as a collection",
        icon="bookmark_add",
        dynamic=True,
    )

    def form(self, ctx, inputs):
        forms.collection_name_input(
            ctx, inputs, "name", "Name",
            replace=bool(ctx.params.get("overwrite", False)))
        inputs.str("source", label="Collection to save",
                   default=ais.TEMPORARY_COLLECTION)
        inputs.float("min_score", label="Minimum score", min=-1.0, max=1.0,
                     description="Keep only results scoring at least this")
        inputs.float("max_score", label="Maximum score", min=-1.0, max=1.0,
                     description="Keep only results scoring at most this")
        inputs.bool("overwrite", label="Replace a saved view of that name",
                    default=False)

    def execute(self, ctx):
        name = ais.save_collection(
            ctx.dataset, ctx.params.get("name"),
            source=ctx.params.get("source") or ais.TEMPORARY_COLLECTION,
            overwrite=bool(ctx.params.get("overwrite", False)),
            min_score=ctx.params.get("min_score"),
            max_score=ctx.params.get("max_score"),
        )
        ctx.ops.reload_dataset()  # so the App's saved views list shows it
        ctx.ops.notify(f"Saved collection '{name}'", variant="success")
        return {"collection": name}


class RenameCollection(_Operator):
    CONFIG = dict(
        name="rename_collection",
        label="AI search: rename a collection",
        icon="edit",
        dynamic=True,
    )

    def form(self, ctx, inputs):
        if forms.collection_choice(ctx, inputs, ctx.params):
            forms.collection_name_input(ctx, inputs, "new_name", "New name")

    def execute(self, ctx):
        name = ctx.params.get("name")
        # shown open, it stays on screen (unsaved: the App cannot select a
        # saved view it does not list yet)
        left = forms.leave_saved_view(ctx, name, to=ctx.view)
        new_name = ais.rename_collection(ctx.dataset, name,
                                         ctx.params.get("new_name"))
        if not left:  # (a new view reloads the saved views list itself)
            ctx.ops.reload_dataset()
        return {"collection": new_name}


class DeleteCollection(_Operator):
    CONFIG = dict(
        name="delete_collection",
        label="AI search: delete a collection",
        icon="delete",
        dynamic=True,
    )

    def form(self, ctx, inputs):
        if forms.collection_choice(ctx, inputs, ctx.params):
            name = forms.chosen_collection(ctx.params,
                                           forms.named_collections(ctx.dataset))
            inputs.view("warning", types.Warning(
                label=f"Delete the collection '{name}'? Its saved view and "
                "its scores are deleted; the samples stay in the dataset. "
                "This cannot be undone."))

    def execute(self, ctx):
        name = ctx.params.get("name")
        # shown open: the dataset instead
        left = forms.leave_saved_view(ctx, name)
        ais.delete_collection(ctx.dataset, name)
        if not left:  # (a new view reloads the saved views list itself)
            ctx.ops.reload_dataset()
        return {"deleted": name}


OPERATORS = (
    EnableAISearch,
    DisableAISearch,
    ComputeEmbeddings,
    AISearchStatus,
    StartRefresher,
    AISearch,
    SearchSimilar,
    FindNearDuplicates,
    TagNearDuplicates,
    FilterByScore,
    SaveCollection,
    RenameCollection,
    DeleteCollection,
)
