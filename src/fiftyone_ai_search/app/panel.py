"""The "AI Search" panel: status, the three search modes, the score histogram
of the latest results (drag a range on it to view that score range), and
saving results as a collection. Every action calls the SDK.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

import fiftyone_ai_search as ais

from .operators import search_from_params, status_text

HISTOGRAM_BINS = 25


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


class AISearchPanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(
            name="ai_search_panel",
            label="AI Search",
            icon="travel_explore",
            surfaces="grid",
            help_markdown="Search this dataset by prompt, by similarity to "
            "the selected samples, or for a diverse spread; cut the results "
            "by score; keep them as collections.",
        )

    # -- events --------------------------------------------------------------

    def on_load(self, ctx):
        self._refresh(ctx)

    def on_change_dataset(self, ctx):
        self._refresh(ctx)

    def on_refresh(self, ctx):
        self._refresh(ctx)

    def on_enable(self, ctx):
        ctx.trigger(f"{self.plugin_name}/enable_ai_search")

    def on_search(self, ctx):
        state = dict(ctx.panel.state.get("search") or {})
        name = search_from_params(ctx, state)
        if name is None:
            ctx.ops.notify("Nothing matched", variant="warning")
        else:
            ctx.ops.set_view(name=name)
        self._refresh(ctx)

    def on_range(self, ctx):
        # panel data is write-only: the bins are recomputed (no model run)
        edges, _ = ais.get_score_histogram(
            ctx.dataset, ais.TEMPORARY_COLLECTION, bins=HISTOGRAM_BINS)
        score_range = selected_range(ctx.params.get("data"), edges)
        if score_range is None:
            return
        lo, hi = score_range
        view = ais.get_collection(ctx.dataset, ais.TEMPORARY_COLLECTION,
                                  min_score=lo, max_score=hi)
        ctx.panel.set_state("range", [lo, hi])
        ctx.ops.set_view(view=view)

    def on_save(self, ctx):
        name = (ctx.panel.state.get("collection_name") or "").strip()
        ais.save_collection(ctx.dataset, name)
        ctx.ops.notify(f"Saved collection '{name}'", variant="success")
        self._refresh(ctx)

    # -- state -----------------------------------------------------------------

    def _refresh(self, ctx):
        status = ais.get_status(ctx.dataset)
        ctx.panel.set_state("status", status_text(status))
        ctx.panel.set_state("enabled", status["enabled"])
        edges, counts = [], []
        names = [c["name"] for c in ais.list_collections(ctx.dataset)] \
            if status["enabled"] else []
        if ais.TEMPORARY_COLLECTION in names:
            edges, counts = ais.get_score_histogram(
                ctx.dataset, ais.TEMPORARY_COLLECTION, bins=HISTOGRAM_BINS)
        ctx.panel.set_data("histogram", histogram_chart(edges, counts)
                           if counts else [])

    # -- layout ----------------------------------------------------------------

    def render(self, ctx):
        panel = types.Object()
        panel.md(ctx.panel.state.get("status") or "", name="status")
        panel.btn("refresh", label="Refresh", on_click=self.on_refresh)

        if not ctx.panel.state.get("enabled"):
            panel.btn("enable", label="Enable AI search",
                      on_click=self.on_enable, variant="contained")
            return types.Property(panel, view=types.GridView(
                orientation="vertical", gap=2, padding=2))

        search = types.Object()
        search.enum("mode", ["prompt", "similar", "diverse"],
                    label="Search by", default="prompt",
                    view=types.RadioGroup(orientation="horizontal"))
        search.str("prompt", label="Prompt (commas: several)")
        search.str("negative_prompt", label="Negative prompt (optional)")
        search.enum("method", ["centroids", "random"], label="Diverse: take",
                    default="centroids")
        search.enum("clustering_method", ["kmeans", "dbscan"],
                    label="Diverse: clustering", default="kmeans")
        search.int("limit", label="Limit", default=100, min=1)
        search.float("threshold", label="Minimum score", min=-1.0, max=1.0)
        panel.define_property("search", search, label="Search")
        panel.btn("search_btn", label="Search", on_click=self.on_search,
                  variant="contained")

        panel.plot(
            "histogram",
            label="Scores of the latest results (select bars to filter)",
            config={"displayModeBar": False},
            layout={"dragmode": "select", "selectdirection": "h",
                    "xaxis": {"title": "score"},
                    "yaxis": {"title": "samples"}, "height": 240},
            on_selected=self.on_range,
        )

        panel.str("collection_name", label="Save results as collection")
        panel.btn("save", label="Save", on_click=self.on_save)
        return types.Property(panel, view=types.GridView(
            orientation="vertical", gap=2, padding=2))
