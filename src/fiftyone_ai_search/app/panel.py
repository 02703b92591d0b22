"""The "AI Search" panel: status of the images and of the objects of label
fields (live while computing), the search modes over either, the score
histogram and range of the latest results, saving what is shown as a
collection, the collections, whether a refresher keeps the dataset fresh
(starting one as a background service where none does), and switching AI
search on and off.

Every action calls the SDK; forms come from :mod:`.forms`, shared with the
operators. An error in an action is shown as a notification, never as a
broken panel.

FiftyOne's App keeps a panel's state in the workspace, which outlives the
browser's page, and its data (the histogram) in the page only: whatever
state a panel loads with, its data is sent again. Each change of the state
(a keystroke in an input of the panel, a ``set_state`` here) is sent to the
server and reloads the dataset page, which clears the sidebar filters and
makes the grid load again. So the panel holds no form a curator types into:
searching, saving and renaming open the operators' prompts (the same forms
as the grid button's), and the panel writes its state only where a value
changed, at most once an event: what an event changes is sent in one write
when it ends (see :func:`_set`).
"""

import functools
import json
import logging
import os
import threading
import time

import fiftyone.operators as foo
import fiftyone.operators.types as types

import fiftyone_ai_search as ais
from fiftyone_ai_search.results import collection_summary
from fiftyone_ai_search.words import counted

from . import forms
from .manifest import PANEL_NAMES

logger = logging.getLogger(__name__)

HISTOGRAM_BINS = 25

#: how often the panel polls the status while embeddings are computed
#: (a poll that finds new progress writes the panel's state: one page
#: reload of the App each)
POLL_MS = 2000


def histogram_chart(edges, counts):
    """Plotly bar chart data of a score histogram (bars at bin centres)."""
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    width = (edges[1] - edges[0]) if len(edges) > 1 else 0.01
    return [{
        "type": "bar",
        "x": centres,
        "y": counts,
        "width": [width] * len(counts),
        "name": "scores",
        "marker": {"color": "#FF6D04"},
    }]


def selected_range(points, edges):
    """The score range covered by the bars a user selected, or None."""
    xs = [p["x"] for p in points or [] if "x" in p]
    if not xs or len(edges) < 2:
        return None
    half = (edges[1] - edges[0]) / 2
    return max(-1.0, min(xs) - half), min(1.0, max(xs) + half)


def image_query_text(query):
    """A search by an outside image as the panel names it: a file by its
    name; an image given in memory (an upload to the App, or a PIL image
    given to the SDK) by its file's name, said to be kept nowhere (the
    collection holds no path to it)."""
    if query.get("image"):
        return f"image '{os.path.basename(query['image'])}'"
    name = query.get("image_name")
    if name and query.get("uploaded"):
        return f"uploaded image '{name}' (not kept)"
    if name:
        return f"image '{name}' given in memory (not kept)"
    return "an image given in memory (not kept)"


def results_summary(dataset):
    """What the panel shows of the latest results, or None: a JSON-able
    dict with ``query`` (text), ``count``, ``noun`` (what they are:
    "samples", "objects of ground_truth"), ``low`` / ``high`` (scores),
    ``score_label`` and ``created_at`` (ISO: which results they are)."""
    latest = collection_summary(dataset, ais.TEMPORARY_COLLECTION)
    if latest is None:
        return None
    query = latest["query"] or {}
    field = latest["patches_field"]
    scores = [s for _, s in ais.get_collection_scores(
        dataset, ais.TEMPORARY_COLLECTION)]
    things = ("frames" if query.get("frames") else
              "samples" if field is None else "objects")
    mode = query.get("mode")
    if mode == "frame":  # a search like a frame of the videos
        text = f"similar to frame {(query.get('frame') or [0, '?'])[1]}"
        label = "Score: similarity to the reference frame"
    elif mode == "prompt":
        text = f"prompt '{query.get('prompt')}'"
        if query.get("negative_prompt"):
            text += f", not '{query['negative_prompt']}'"
        label = "Score: similarity to the prompt"
    elif mode == "diverse":
        text = (f"diverse ({query.get('method')}, "
                f"{query.get('clustering_method')})")
        # not a query score: say what it is
        label = (f"Similarity to the {things[:-1]}'s cluster centre (diverse "
                 "results are not ranked by a query)")
    elif mode == "duplicates":
        text = (f"near-duplicates ({query.get('groups')} images with copies "
                f"at similarity {query.get('threshold')} or more)")
        label = ("Similarity to the image each group keeps (1: the kept "
                 "image itself)")
    elif mode == "object":
        refs = query.get("label_id") or []
        text = f"similar to {len(refs)} object(s)"
        label = "Score: similarity to the reference object(s)"
    elif query.get("image_id"):
        text = f"similar to {len(query['image_id'])} sample(s)"
        label = "Score: similarity to the reference image(s)"
    else:
        text = image_query_text(query)
        label = "Score: similarity to the image"
    if query.get("best_per_video"):
        text += ", best frame per video"
    return {"query": text, "count": len(scores), "low": min(scores),
            "high": max(scores), "score_label": label, "things": things,
            "noun": things if field is None else f"{things} of {field}",
            "created_at": latest["created_at"].isoformat()}


def _reported(method):
    """Runs a panel event; an error becomes a notification (the panel
    stays usable). The state it changes is written once, when it ends
    (what it changed before an error too)."""

    @functools.wraps(method)
    def wrapper(self, ctx):
        pending = _PENDING[id(ctx)] = {}
        try:
            return method(self, ctx)
        except Exception as e:  # shown to the user, not swallowed
            logger.warning("AI Search panel: %s failed", method.__name__,
                           exc_info=True)
            ctx.ops.notify(f"{e}", variant="error")
            return None
        finally:
            del _PENDING[id(ctx)]
            _write(ctx, pending)

    return wrapper


class AISearchPanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(
            name=PANEL_NAMES[0],
            label="AI Search",
            icon="travel_explore",
            surfaces="grid",
            help_markdown="Search this dataset's images, the objects of "
            "a label field, or the frames of a video dataset's videos, by "
            "prompt, by similarity to the selected ones, by an image, or "
            "for a diverse spread; cut the results by score; keep them as "
            "collections.",
        )

    def _uri(self, operator):
        return f"{self.plugin_name}/{operator}"

    # -- events --------------------------------------------------------------

    @_reported
    def on_load(self, ctx):
        self._refresh(ctx)

    @_reported
    def on_change_dataset(self, ctx):
        ctx.panel.set_state("range", None)
        self._refresh(ctx)

    @_reported
    def on_change_group_slice(self, ctx):
        # a grouped dataset: the panel is of what the slice shown holds
        # (images: the image index; videos: the frame index)
        self._refresh(ctx)

    @_reported
    def on_change_view(self, ctx):
        # The App sends each change of view 3-4 times at once: one copy at
        # a time does the work, the others find it done (_SHOWN, _WRITTEN)
        with _panel_lock(ctx):
            self._changed_view(ctx)

    def _changed_view(self, ctx):
        # Latest results that were not made here (the grid's AI Search and
        # Find near-duplicates buttons) replace those the panel shows,
        # histogram and range too. Any other view: nothing to read or write
        # (this runs on every change of the grid's view).
        # A prompt that also changed the view (renaming, deleting or
        # disabling with a collection open) never calls its on_success:
        # the App drops it when it changes view. What it did is seen here
        if ctx.panel.state.get("ready") and not forms.enabled_targets(
                ctx.dataset):
            self._refresh(ctx)  # disabled
            return
        if _listed_collection_gone(ctx):  # renamed or deleted
            self._refresh_collections(ctx)
        if not ctx.panel.state.get("ready") or not forms.showing_results(
                ctx.view):
            return
        latest = collection_summary(ctx.dataset, ais.TEMPORARY_COLLECTION)
        shown = (ctx.panel.state.get("results") or {}).get("created_at")
        if latest and latest["created_at"].isoformat() not in (
                shown, _SHOWN.get(ctx.panel.id)):
            _set(ctx, "range", None)
            self._refresh_results(ctx)

    @_reported
    def on_refresh(self, ctx):
        self._refresh(ctx)

    @_reported
    def on_poll(self, ctx):
        was_ready = set(ctx.panel.state.get("ready") or [])
        all_statuses = self._refresh(ctx, counts=False)
        if forms.computing(all_statuses) is None:
            all_statuses = self._refresh(ctx)
            for target in forms.ready_targets(ctx.dataset, all_statuses):
                if forms.objects_choice(target) not in was_ready:
                    ctx.ops.notify(
                        "AI search is ready" if target is None else
                        f"Object search of {target} is ready",
                        variant="success")

    def on_enable(self, ctx):
        ctx.prompt(self._uri("enable_ai_search"), on_success=self.on_refresh)

    def on_enable_objects(self, ctx):
        field = ctx.panel.state.get("enable_objects")
        ctx.prompt(self._uri("enable_ai_search"),
                   params={"search_in": forms.objects_choice(field)},
                   on_success=self.on_refresh)

    def on_disable(self, ctx):
        ctx.prompt(self._uri("disable_ai_search"), on_success=self.on_refresh)

    def on_start_refresher(self, ctx):
        # its form (interval, datasets: the SDK's options), shared with the
        # operator browser; a background service: the App's server only
        # starts it
        ctx.prompt(self._uri("start_refresher"),
                   on_success=self.on_refresher_started)

    @_reported
    def on_refresher_started(self, ctx):
        self._refresh_refresher(ctx, True)

    def on_failures(self, ctx):
        ctx.prompt(self._uri("ai_search_status"))

    def on_search(self, ctx):
        # the grid button's form (one definition), with the App's view and
        # sidebar filters as its scope; on_change_view then shows the new
        # results (one state write, not two: each reloads the page)
        ctx.prompt(self._uri("ai_search"))

    @_reported
    def on_histogram_select(self, ctx):
        # panel data is write-only: the bins are recomputed (no model run)
        edges, _ = ais.get_score_histogram(
            ctx.dataset, ais.TEMPORARY_COLLECTION, bins=HISTOGRAM_BINS)
        score_range = selected_range(ctx.params.get("data"), edges)
        if score_range is not None:
            self._show_range(ctx, *score_range)

    @_reported
    def on_slider(self, ctx):
        path = ctx.params.get("path")
        if path is not None and path != (
                f"score_range_{ctx.panel.state.get('slider') or 0}"):
            # a slider no longer shown: the App sends its default again
            # after a new one replaced it, which undid the range just set
            return
        value = [float(v) for v in ctx.params.get("value") or []]
        default = ctx.panel.state.get("slider_default") or []
        if len(value) != 2 or (len(default) == 2 and all(
                abs(a - b) < 1e-9 for a, b in zip(value, default))):
            return  # the App setting a new slider to its default: no change
        self._show_range(ctx, *sorted(value))

    @_reported
    def on_reset_range(self, ctx):
        _set(ctx, "range", None)
        self._new_slider(ctx)
        forms.show_collection(ctx, ais.TEMPORARY_COLLECTION)

    def on_save(self, ctx):
        lo, hi = ctx.panel.state.get("range") or (None, None)
        ctx.prompt(self._uri("save_collection"),
                   params={"source": ais.TEMPORARY_COLLECTION,
                           "min_score": lo, "max_score": hi},
                   on_success=self.on_saved)

    @_reported
    def on_saved(self, ctx):
        names = forms.named_collections(ctx.dataset)
        _set(ctx, "collections", names)
        _set(ctx, "collection", names[-1] if names else None)  # the new one

    @_reported
    def on_load_collection(self, ctx):
        name = self._chosen_collection(ctx)
        if name is not None:
            # selected in FiftyOne's saved views list, as if picked there
            ctx.ops.set_view(name=name)

    @_reported
    def on_rename_collection(self, ctx):
        name = self._chosen_collection(ctx)
        if name is not None:
            ctx.prompt(self._uri("rename_collection"), params={"name": name},
                       on_success=self.on_refresh)

    @_reported
    def on_delete_collection(self, ctx):
        name = self._chosen_collection(ctx)
        if name is not None:
            ctx.prompt(self._uri("delete_collection"), params={"name": name},
                       on_success=self.on_refresh)

    def _chosen_collection(self, ctx):
        """The collection chosen in the panel, or None (said) where it is
        gone: renamed or deleted elsewhere (another tab, FiftyOne's saved
        view dialog, the SDK) since the panel listed it."""
        name = ctx.panel.state.get("collection")
        if name in forms.named_collections(ctx.dataset):
            return name
        self._refresh_collections(ctx)
        ctx.ops.notify(f"The collection '{name}' is gone (renamed or "
                       "deleted elsewhere); the list is up to date now",
                       variant="warning")
        return None

    # -- state -----------------------------------------------------------------

    def _show_range(self, ctx, lo, hi):
        view = forms.show_collection(ctx, ais.TEMPORARY_COLLECTION,
                                     min_score=lo, max_score=hi)
        _set(ctx, "range", [lo, hi])
        _set(ctx, "range_count", len(view))
        # the slider shows the range, however it was chosen (bars, thumbs,
        # Min/Max): both its bounds stay where they were set
        self._new_slider(ctx)

    @staticmethod
    def _new_slider(ctx):
        # The App keeps the value a slider was last moved to, whatever the
        # state says; a slider of another name starts from its default
        number = (ctx.panel.state.get("slider") or 0) + 1
        _set(ctx, "slider", number)
        results = ctx.panel.state.get("results") or {}
        default = ctx.panel.state.get("range")
        if default is None and results:
            default = list(_slider_bounds(results["low"], results["high"]))
        _set(ctx, "slider_default", default)
        if default is not None:
            # its value too, in the same write: a Min or Max typed into the
            # slider takes the other bound from its value in the state, not
            # from its thumbs
            _set(ctx, f"score_range_{number}", default)

    def _refresh(self, ctx, counts=True):
        all_statuses = forms.app_statuses(ctx, counts=counts)
        images = all_statuses[None]
        objects = [s for t, s in all_statuses.items() if t is not None]
        ready = forms.ready_targets(ctx.dataset, all_statuses)
        _set(ctx, {
            "status": forms.status_text(images),
            "object_status": "\n\n".join(
                forms.status_text(s) for s in objects),
            "num_failed_objects": sum(
                (s.get("counts") or {}).get("num_failed", 0)
                for s in objects),
            "readiness": forms.readiness(images),
            "ready": [forms.objects_choice(t) for t in ready],
            "in_progress": forms.computing(all_statuses) is not None,
            "num_failed": (images.get("counts") or {}).get("num_failed", 0),
            # a label field of objects without object search: offered
            # (not where frames are searched: objects are of images)
            "enable_objects": None if forms.searches_frames(ctx) else next(
                (f for f in ais.object_label_fields(ctx.dataset)
                 if f not in all_statuses), None),
        })
        if counts:
            enabled = bool(ready) or any(
                s["enabled"] for s in all_statuses.values())
            self._refresh_results(ctx, enabled=enabled)
            self._refresh_collections(ctx)
            self._refresh_refresher(ctx, enabled)
        return all_statuses

    @staticmethod
    def _refresh_refresher(ctx, enabled):
        # in the event's one write (not on polls: nothing a curator waits
        # for), absolute times only: it changes when a pass ran
        text, running = forms.refresher_status(ctx.dataset) if enabled else (
            None, False)
        _set(ctx, {"refresher": text, "refresher_running": running})

    def _refresh_results(self, ctx, enabled=None):
        if enabled is None:
            enabled = bool(forms.enabled_targets(ctx.dataset))
        summary = results_summary(ctx.dataset) if enabled else None
        unchanged = summary == ctx.panel.state.get("results")
        _set(ctx, "results", summary)
        _SHOWN[ctx.panel.id] = summary and summary["created_at"]
        if summary is None:
            _set(ctx, "range", None)
            ctx.panel.set_data("histogram", [])
            return
        # The histogram is sent every time, the same results or not: panel
        # data lives in the browser tab only, while the state that names
        # the results shown is the workspace's and outlives the tab's page
        # (a reload, another tab, the App opened again). On a page load
        # the panel's on_load finds the results in its state and none of
        # its data: skipped, the plot drew empty axes beside them. (Data
        # is no state write: no page reload.)
        edges, counts = ais.get_score_histogram(
            ctx.dataset, ais.TEMPORARY_COLLECTION, bins=HISTOGRAM_BINS)
        ctx.panel.set_data("histogram", histogram_chart(edges, counts))
        if unchanged and ctx.panel.state.get("slider_default"):
            return  # the same results: the slider is drawn
        if ctx.panel.state.get("range") is None:
            self._new_slider(ctx)

    def _refresh_collections(self, ctx):
        names = forms.named_collections(ctx.dataset) \
            if forms.enabled_targets(ctx.dataset) else []
        _set(ctx, "collections", names)
        if ctx.panel.state.get("collection") not in names:
            _set(ctx, "collection", names[-1] if names else None)

    # -- layout ----------------------------------------------------------------

    def render(self, ctx):
        state = ctx.panel.state
        panel = types.Object()
        panel.md(state.get("status") or "", name="status")
        if state.get("object_status"):
            panel.md(state.get("object_status"), name="object_status")
        readiness = state.get("readiness")

        if state.get("in_progress"):
            # polls get_status until the computation is done: no clicks
            panel.view("poll", types.TimerView(interval=POLL_MS,
                                               on_interval=self.on_poll))
        if readiness in ("off", "failed"):
            panel.btn("enable", label="Enable AI search",
                      on_click=self.on_enable, variant="contained")
        elif state.get("enable_objects"):
            panel.btn("enable_objects", label="Enable object search",
                      on_click=self.on_enable_objects)
        if state.get("num_failed"):
            panel.btn("failures", label=f"Show {state.get('num_failed')} failed "
                      "sample(s)", on_click=self.on_failures)
        if state.get("num_failed_objects"):
            panel.btn("object_failures", label="Show "
                      f"{state.get('num_failed_objects')} failed object(s)",
                      on_click=self.on_failures)

        if state.get("ready"):
            panel.btn("search_btn", label="Search", on_click=self.on_search,
                      variant="contained", icon="travel_explore")
            if state.get("results"):
                self._render_results(panel, state)
            if state.get("collections"):
                self._render_collections(panel, state)
            self._render_refresher(panel, state)
            panel.btn("disable", label="Disable AI search",
                      on_click=self.on_disable, variant="outlined")
        else:
            self._render_refresher(panel, state)
            panel.btn("refresh", label="Refresh", on_click=self.on_refresh)
        # (layout keys of FiftyOne's views: px / py pad the panel)
        return types.Property(panel, view=types.GridView(
            orientation="vertical", gap=2, px=2, py=2))

    def _render_results(self, panel, state):
        results = state.get("results")
        panel.md(f"**Latest results**: {results['query']}, "
                 f"{results['count']} {results.get('noun', 'samples')}, "
                 f"scores {results['low']:.3f} to {results['high']:.3f}",
                 name="results_title")
        panel.plot(
            "histogram",
            label=f"{results['score_label']}. Select bars to show that range",
            config={"displayModeBar": False},
            layout={"dragmode": "select", "selectdirection": "h",
                    "xaxis": {"title": "score"},
                    "yaxis": {"title": results.get("things", "samples")},
                    "height": 220,
                    "margin": {"t": 10, "b": 40, "l": 50, "r": 10}},
            on_selected=self.on_histogram_select,
        )
        lo, hi = _slider_bounds(results["low"], results["high"])
        panel.list(f"score_range_{state.get('slider') or 0}", types.Number(),
                   label="Score range",
                   default=state.get("slider_default") or [lo, hi],
                   on_change=self.on_slider,
                   # label on top: the App drops an inline ("left") label
                   # after the first render and shows "Threshold"; the
                   # value bubbles only while a thumb moves (always shown,
                   # they cover the label)
                   view=types.SliderView(min=lo, max=hi, value_precision=3,
                                         variant="withInputs",
                                         label_position="top",
                                         value_label_display="auto"))
        shown = state.get("range")
        if shown:
            panel.md(f"Showing scores {shown[0]:.3f} to {shown[1]:.3f}: "
                     f"{state.get('range_count', 0)} of "
                     f"{counted(results['count'], 'result')}.",
                     name="range_text")
            panel.btn("reset_range", label="Show all results",
                      on_click=self.on_reset_range)
        else:
            every = "all " if results["count"] != 1 else "the "
            panel.md(f"Showing {every}{counted(results['count'], 'result')}.",
                     name="range_text")
        panel.btn("save", label="Save what is shown as a collection",
                  on_click=self.on_save)

    def _render_refresher(self, panel, state):
        if not state.get("refresher"):
            return
        panel.md(state.get("refresher"), name="refresher")
        if not state.get("refresher_running"):
            panel.btn("start_refresher", label="Start a refresher",
                      icon="autorenew", on_click=self.on_start_refresher)

    def _render_collections(self, panel, state):
        names = state.get("collections")
        choices = types.Dropdown()
        for name in names:
            choices.add_choice(name, label=name)
        panel.enum("collection", names, label="Collections",
                   default=state.get("collection"), view=choices)
        row = panel.h_stack("collection_actions", gap=1)
        row.btn("load_collection", label="Load",
                on_click=self.on_load_collection)
        row.btn("rename_collection", label="Rename",
                on_click=self.on_rename_collection)
        row.btn("delete_collection", label="Delete",
                on_click=self.on_delete_collection)


def _listed_collection_gone(ctx):
    """Whether a collection the panel lists is no longer a saved view of
    the dataset (one cheap read: the dataset's saved view names)."""
    listed = ctx.panel.state.get("collections") or []
    if not listed:
        return False
    ctx.dataset._doc.reload("saved_views")
    return not set(listed) <= set(ctx.dataset.list_saved_views())


def _set(ctx, key, value=None):
    """Sets panel state (a key, or a dict of them) where it differs from
    what the panel holds: each write reloads the App's dataset page (see
    the module's doc). Within an event (:func:`_reported`) the changes
    are kept (later reads see them) and written in one go when it ends;
    outside one, written at once, in one write."""
    changes = key if isinstance(key, dict) else {key: value}
    changed = {k: v for k, v in changes.items()
               if ctx.panel.state.get(k, _UNSET) != v}
    if not changed:
        return
    pending = _PENDING.get(id(ctx))
    if pending is None:
        _write(ctx, changed)
        return
    for k, v in changed.items():  # what the panel holds, not sent yet
        ctx.panel.state._data[k] = v
    pending.update(changed)


def _write(ctx, changes):
    """Writes state changes to the panel, unless the same changes were
    just written to it: the App sends each change of view to the panel
    3-4 times at once, every copy computes the same changes from the same
    old state, and every write reloads the dataset page."""
    if not changes:
        return
    key = json.dumps(changes, sort_keys=True, default=str)
    now = time.monotonic()
    with _WRITTEN_LOCK:
        for panel_id, (_, when) in list(_WRITTEN.items()):
            if now - when > SAME_WRITE_S:
                del _WRITTEN[panel_id]
        if _WRITTEN.get(ctx.panel.id, (None,))[0] == key:
            return
        _WRITTEN[ctx.panel.id] = (key, now)
    ctx.panel.set_state(changes)


def _panel_lock(ctx):
    """The lock that makes a panel's copies of one event run one at a
    time."""
    with _WRITTEN_LOCK:
        return _PANEL_LOCKS.setdefault(ctx.panel.id, threading.Lock())


#: one lock per panel (see :func:`_panel_lock`)
_PANEL_LOCKS = {}

#: the latest results each panel was sent: panel id -> their ``created_at``
_SHOWN = {}

#: how long a write is remembered as just made (the copies of one view
#: change reach the panel within a fraction of a second of one another)
SAME_WRITE_S = 3.0

#: the last write to each panel: panel id -> (its changes as JSON, when)
_WRITTEN = {}
_WRITTEN_LOCK = threading.Lock()

_UNSET = object()

#: the state changes of the events under way, by id of their context
_PENDING = {}


def _slider_bounds(low, high):
    # the App's slider is a range slider only when both bounds are truthy
    # (0.0 is not), and it needs some width
    if high - low < 1e-3:
        low, high = low - 0.005, high + 0.005
    return (low or 1e-6), (high or 1e-6)
