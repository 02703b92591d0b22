"""The App operators, run headless through FiftyOne's own operator machinery,
with the plugin found the two ways users install it."""

import importlib.util
import os

import pytest
import yaml

import fiftyone as fo
import fiftyone.core.utils as fou
import fiftyone.operators as foo
import fiftyone.plugins as fop
from fiftyone.operators.delegated import DelegatedOperationService

import fiftyone_ai_search as ais
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search.app import PLUGIN_NAME, manifest
from fiftyone_ai_search.app.install import install_plugin, plugin_files
from fiftyone_ai_search.app.manifest import REQUIREMENT
from fiftyone_ai_search.demo import tiny_clip_model_name

from tests.conftest import REPO_DIR
from tests.helpers import (
    server_dataset_by_secrets,
    shapes_dataset,
    wait_until_idle,
)


def uri(name):
    return f"{PLUGIN_NAME}/{name}"


@pytest.fixture(scope="module", autouse=True)
def repo_as_plugin():
    """The repository placed under the plugins dir, as ``fiftyone plugins
    download`` would (its root is the plugin directory: ``fiftyone.yml``,
    ``requirements.txt``, ``plugin/``; see test_packaging.py)."""
    link = os.path.join(fo.config.plugins_dir, "ai-search")
    if not os.path.islink(link):
        os.symlink(REPO_DIR, link)
    yield link
    os.unlink(link)


def _run(operator, dataset, **params):
    result = foo.execute_operator(uri(operator), ctx={"dataset": dataset,
                                                      "params": params})
    assert result.error is None, result.error_message
    return result.result


def test_repository_root_is_found_as_the_plugin():
    plugin = fop.get_plugin(PLUGIN_NAME)
    assert os.path.realpath(plugin.directory) == os.path.realpath(REPO_DIR)
    assert plugin.py_entry == "plugin/__init__.py"
    assert set(plugin.operators) == set(manifest()["operators"]) | set(
        manifest()["panels"])


def test_manifest_lists_every_operator_and_panel():
    from fiftyone_ai_search.app.operators import OPERATORS
    from fiftyone_ai_search.app.panel import AISearchPanel

    assert [op.CONFIG["name"] for op in OPERATORS] == manifest()["operators"]
    assert [AISearchPanel().config.name] == manifest()["panels"]


def test_repository_plugin_files_are_what_install_plugin_writes(tmp_path):
    """One definition of the plugin directory: the repository's files (for
    ``fiftyone plugins download``) are the pip install's, file for file."""
    with open(os.path.join(REPO_DIR, "fiftyone.yml")) as f:
        assert yaml.safe_load(f) == manifest()
    # as ``fiftyone plugins requirements`` reads it
    assert fou.load_requirements(
        os.path.join(REPO_DIR, "requirements.txt")) == [REQUIREMENT]

    written = install_plugin(plugins_dir=str(tmp_path))
    files = sorted(
        os.path.relpath(os.path.join(root, f), written).replace(os.sep, "/")
        for root, _, names in os.walk(written) for f in names)
    assert files == sorted(plugin_files()) == [
        "fiftyone.yml", "plugin/__init__.py", "requirements.txt"]
    for name in files:
        with open(os.path.join(REPO_DIR, name)) as a, \
                open(os.path.join(written, name)) as b:
            assert a.read() == b.read(), name


def test_pip_install_plugin_writes_a_loadable_plugin(tmp_path):
    path = install_plugin(plugins_dir=str(tmp_path))
    # where ``fiftyone plugins download`` would put it
    assert path == os.path.join(str(tmp_path), "@fiftyone-ai-search",
                                "ai-search")

    with open(os.path.join(path, "fiftyone.yml")) as f:
        assert yaml.safe_load(f) == manifest()
    spec = importlib.util.spec_from_file_location(
        "installed_plugin_entry",
        os.path.join(path, "plugin", "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.register is ais.app.register


def test_demo_installs_the_plugin_where_the_app_finds_it(tmp_path,
                                                         monkeypatch):
    """The quick start leaves the App ready: it writes the plugin where none
    is found, and says where one already is."""
    from fiftyone_ai_search.demo.quickstart import _app_plugin

    monkeypatch.setattr(fo.config, "plugins_dir", str(tmp_path))
    path = os.path.join(str(tmp_path), "@fiftyone-ai-search", "ai-search")
    assert _app_plugin() == (f"Installed the App plugin {PLUGIN_NAME} in "
                             f"{path}.")
    plugin = fop.get_plugin(PLUGIN_NAME)
    assert plugin.directory == path and plugin.has_py
    assert _app_plugin() == (f"The App plugin {PLUGIN_NAME} is installed "
                             f"({path}).")


@pytest.mark.slow
def test_enable_status_compute_disable(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=20, enable=False)

    status = _run("enable_ai_search", dataset,
                  model_choice=tiny_clip_model_name())
    assert status["enabled"]
    wait_until_idle(dataset)

    status = _run("ai_search_status", dataset)
    assert status["counts"]["num_indexed"] == 20
    assert isinstance(status["updated_at"], str)  # JSON-friendly for the App

    dataset.delete_samples(dataset.take(3, seed=0))
    assert _run("compute_embeddings", dataset) == {"started": True}
    wait_until_idle(dataset)
    assert ais.get_status(dataset)["counts"]["num_indexed"] == 17

    assert _run("disable_ai_search", dataset) == {"enabled": False}
    assert not ais.is_embeddings_enabled(dataset)


@pytest.mark.slow
def test_immediate_compute_hands_off_and_says_so(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=5)
    ctx_ops = foo.execute_operator(uri("compute_embeddings"), ctx={
        "dataset": dataset, "params": {}})
    assert ctx_ops.result == {"started": True}
    wait_until_idle(dataset)
    assert ais.get_status(dataset)["counts"]["num_indexed"] == 5


def test_compute_embeddings_delegated_reports_progress(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=15)

    queued = foo.execute_operator(
        uri("compute_embeddings"),
        ctx={"dataset": dataset, "params": {"delegate": True}},
    )
    assert queued.delegated
    assert not ais.get_status(dataset)["counts"]["num_indexed"]

    service = DelegatedOperationService()
    service.execute_queued_operations(operator=uri("compute_embeddings"))

    (op,) = [
        o for o in service.list_operations(dataset_name=dataset.name)
        if o.operator == uri("compute_embeddings")
    ]
    assert op.run_state == "completed", op.result
    assert op.result.result["added"] == 15
    assert op.status.progress == pytest.approx(1.0)
    assert ais.get_status(dataset)["counts"]["num_indexed"] == 15


def test_search_operators(tmp_path):
    from fiftyone import ViewField as F

    dataset = shapes_dataset(tmp_path, num_samples=60)
    ais.calculate_embeddings(dataset, wait=True, progress=False)

    out = _run("ai_search", dataset, mode="prompt",
               prompt="a photo of a red circle", limit=5)
    assert out == {"collection": ais.TEMPORARY_COLLECTION, "count": 5}
    labels = ais.get_collection(dataset, out["collection"]).values(
        "ground_truth.label")
    assert labels.count("red circle") >= 2  # 60 samples hold 2 of each class

    # similar to the App's selected samples, within the App's current view
    ref = dataset.match(F("ground_truth.label") == "blue star").first()
    view = dataset.match(F("shape") == "star")
    result = foo.execute_operator(uri("ai_search"), ctx={
        "dataset": dataset, "view": view, "selected": [ref.id],
        "params": {"mode": "similar", "limit": 3}})
    assert result.error is None, result.error_message
    scores = ais.get_collection_scores(dataset, ais.TEMPORARY_COLLECTION)
    assert scores[0][0] == ref.id and len(scores) == 3
    assert set(ais.get_collection(dataset, ais.TEMPORARY_COLLECTION)
               .values("shape")) == {"star"}

    out = _run("ai_search", dataset, mode="diverse", method="random",
               clustering_method="kmeans", num_clusters=4, limit=8)
    assert out["count"] == 8

    cut = scores[1][1]
    out = _run("filter_by_score", dataset, min_score=cut)
    assert out["count"] == sum(s >= cut for _, s in
                               ais.get_collection_scores(dataset, ais.TEMPORARY_COLLECTION))

    assert _run("save_collection", dataset, name="keep") == {"collection": "keep"}
    assert _run("rename_collection", dataset, name="keep", new_name="kept") == {
        "collection": "kept"}
    assert _run("delete_collection", dataset, name="kept") == {"deleted": "kept"}
    assert "kept" not in dataset.list_saved_views()

    # the SDK's error, naming the argument, reaches the App
    with pytest.raises(Exception, match="prompt is empty"):
        foo.execute_operator(uri("ai_search"), ctx={
            "dataset": dataset, "params": {"mode": "prompt", "prompt": " , "}})



# -- forms, as the App resolves them -------------------------------------------


def _context(dataset, params=None, view=None, selected=None,
             current_sample=None, panel_state=None, operator="ai_search",
             selected_labels=None):
    from fiftyone.operators.executor import ExecutionContext, Executor

    request = {"dataset_name": dataset.name, "params": dict(params or {}),
               "selected": selected or [], "current_sample": current_sample,
               "selected_labels": selected_labels or []}
    if view is not None:
        request["view"] = view._serialize()
        if view.name is not None:  # a saved view: the App sends its name
            request["view_name"] = view.name
    if panel_state is not None:
        request["params"].update(panel_id="p1", panel_state=panel_state)
    return ExecutionContext(request, executor=Executor(),
                            operator_uri=uri(operator))


def _form(dataset, operator="ai_search", **kwargs):
    """The properties of an operator's form, as the App gets them."""
    ctx = _context(dataset, operator=operator, **kwargs)
    form = foo.get_operator(uri(operator)).resolve_input(ctx).to_json()
    return form["type"]["properties"]


def _blocking(properties):
    return {k: p["view"].get("label") for k, p in properties.items()
            if p.get("invalid")}


def test_grid_button_offers_to_enable_then_follows_then_searches(tmp_path):
    from fiftyone.operators.executor import resolve_placement

    dataset = shapes_dataset(tmp_path, num_samples=8, enable=False)
    operator = foo.get_operator(uri("ai_search"))
    request = {"dataset_name": dataset.name, "params": {}}

    def button():
        view = resolve_placement(operator, request).to_json()
        assert view["place"] == "samples-grid-actions"
        assert view["view"]["prompt"] is True
        return view["view"]["label"]

    def disable_button():
        view = resolve_placement(foo.get_operator(uri("disable_ai_search")),
                                 request)
        return view and view.to_json()["view"]["label"]

    # the state on the button itself (a text button: no icon, whose label
    # FiftyOne shows only as a tooltip); disable beside it once on
    assert button() == "AI Search: off"
    assert "icon" not in resolve_placement(operator, request).to_json()[
        "view"]
    assert disable_button() is None

    # off: the form is the enable form; offline, with the default weights
    # absent, the bundled model is what it offers, and it says why
    ctx = _context(dataset)
    title = operator.resolve_input(ctx).to_json()["view"]["label"]
    assert title == "AI search: enable"
    form = _form(dataset)
    assert "AI search is off" in form["status"]["default"]
    choice = form["model_choice"]
    keys = [c["value"] for c in choice["view"]["choices"]]
    assert keys[0] == "ViT-B-32|laion2b_s34b_b79k"
    assert choice["default"] == tiny_clip_model_name()
    assert "not on this machine" in form["model_notice"]["view"]["label"]
    assert not _blocking(form)
    # the default, chosen here where downloads are off, is blocked
    form = _form(dataset, params={"model_choice": keys[0]})
    assert "HF_HUB_OFFLINE" in _blocking(form)["model_unavailable"]

    from fiftyone_ai_search.embedding import model as model_module

    loaded = set(model_module._MODELS)
    result = foo.execute_operator(uri("ai_search"), ctx={
        "dataset": dataset, "params": {"model_choice": choice["default"]}})
    assert result.error is None, result.error_message
    assert result.result == {"enabled": True}
    assert set(model_module._MODELS) == loaded  # no model in the request
    assert ais.get_status(dataset, counts=False)["model"] == (
        tiny_clip_model_name())

    # indexing: progress, and nothing to execute
    ais.disable_embeddings(dataset)
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          compute=False)
    from fiftyone_ai_search.index import state as st

    st.mark_pending(dataset, os.getpid())
    assert button() == "AI Search: starting"
    st.update(dataset, progress={"done": 3, "total": 8})
    assert button() == "AI Search: computing 37%"
    assert disable_button() == "Disable AI search"
    assert "Computing the embeddings" in _blocking(_form(dataset))["indexing"]
    st.update(dataset, pending=None)

    ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert button() == "AI Search: ready"
    form = _form(dataset)
    assert form["mode"]["default"] == "prompt"
    assert not _blocking(form)


def test_search_form_shows_only_the_fields_of_its_mode(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=12)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    ids = dataset.values("id")

    prompt = _form(dataset, params={"mode": "prompt"})
    assert {"prompt", "negative_prompt", "threshold"} <= set(prompt)
    assert not {"method", "clustering_method"} & set(prompt)

    diverse = _form(dataset, params={"mode": "diverse"})
    assert {"method", "clustering_method", "num_clusters"} <= set(diverse)
    assert not {"prompt", "threshold"} & set(diverse)
    dbscan = _form(dataset, params={"mode": "diverse",
                                    "clustering_method": "dbscan"})
    assert "num_clusters" not in dbscan

    # similar: a selection makes it the default mode and says how many
    similar = _form(dataset, selected=ids[:2])
    assert similar["mode"]["default"] == "similar"
    assert "2 selected" in similar["selected"]["view"]["label"]
    # nothing selected: the form is blocked, and executing says why
    blocked = _blocking(_form(dataset, params={"mode": "similar"}))
    assert "Nothing selected" in blocked["selected"]
    with pytest.raises(Exception, match="Nothing selected"):
        foo.execute_operator(uri("ai_search"), ctx={
            "dataset": dataset, "params": {"mode": "similar"}})


def test_a_new_search_searches_the_dataset_not_the_latest_results(tmp_path):
    from fiftyone import ViewField as F

    dataset = shapes_dataset(tmp_path, num_samples=60)
    ais.calculate_embeddings(dataset, wait=True, progress=False)

    def search(view, prompt, **params):
        result = foo.execute_operator(uri("ai_search"), ctx={
            "dataset": dataset, "view": view,
            "params": dict(params, mode="prompt", prompt=prompt, limit=5)})
        assert result.error is None, result.error_message
        return ais.get_collection(dataset, ais.TEMPORARY_COLLECTION)

    reds = search(dataset.view(), "a photo of a red circle")
    assert "red circle" in reds.values("ground_truth.label")
    latest = dataset.load_saved_view(ais.TEMPORARY_COLLECTION)
    assert "latest results" in _form(dataset, view=latest)["scope"][
        "view"]["label"]

    # from the results (and from a score range of them): the whole dataset
    blues = search(latest, "a photo of a blue square")
    assert blues.values("ground_truth.label")[0] == "blue square"
    scores = ais.get_collection_scores(dataset, ais.TEMPORARY_COLLECTION)
    ranged = ais.get_collection(dataset, ais.TEMPORARY_COLLECTION,
                                min_score=scores[2][1])
    again = search(ranged, "a photo of a red circle")
    assert again.values("ground_truth.label")[0] == "red circle"

    # any other view is the scope, and the form says so; or the dataset
    stars = dataset.match(F("shape") == "star")
    label = _form(dataset, view=stars)["scope"]["view"]["label"]
    assert f"within the current view: {len(stars)} samples" in label
    assert set(search(stars, "a photo of a red circle").values("shape")) == {
        "star"}
    whole = search(stars, "a photo of a red circle", whole_dataset=True)
    assert whole.values("ground_truth.label")[0] == "red circle"


def test_find_similar_in_the_sample_modal(tmp_path):
    from fiftyone import ViewField as F
    from fiftyone.operators.executor import resolve_placement

    dataset = shapes_dataset(tmp_path, num_samples=60)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    operator = foo.get_operator(uri("search_similar"))
    placement = resolve_placement(
        operator, {"dataset_name": dataset.name, "params": {}}).to_json()
    assert placement["place"] == "samples-viewer-actions"
    assert placement["view"]["label"] == "Find similar"

    ref = dataset.match(F("ground_truth.label") == "green triangle").first()
    form = _form(dataset, operator="search_similar", current_sample=ref.id)
    assert "1 selected" in form["selected"]["view"]["label"]
    assert "mode" not in form  # no choice: it is a similar search
    result = foo.execute_operator(uri("search_similar"), ctx={
        "dataset": dataset, "current_sample": ref.id,
        "params": {"limit": 3}})
    assert result.error is None, result.error_message
    scores = ais.get_collection_scores(dataset, ais.TEMPORARY_COLLECTION)
    assert scores[0][0] == ref.id and len(scores) == 3


def test_collections_save_what_is_shown_and_disable_cleans_up(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=30)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert _blocking(_form(dataset, operator="delete_collection"))

    _run("ai_search", dataset, mode="prompt", prompt="a photo of a red circle",
         limit=10)
    scores = ais.get_collection_scores(dataset, ais.TEMPORARY_COLLECTION)
    cut = scores[3][1]
    _run("save_collection", dataset, name="top", min_score=cut)
    kept = ais.get_collection_scores(dataset, "top")
    assert kept == [(i, s) for i, s in scores if s >= cut]

    form = _form(dataset, operator="rename_collection")
    assert form["name"]["default"] == "top"

    assert _run("disable_ai_search", dataset) == {"enabled": False}
    # the latest results go with the index; named collections stay as views
    assert ais.TEMPORARY_COLLECTION not in dataset.list_saved_views()
    assert "top" in dataset.list_saved_views()


# -- the panel -------------------------------------------------------------------


class _Panel:
    """The panel's events and render, on one App context."""

    def __init__(self, dataset, **context):
        from fiftyone_ai_search.app.panel import AISearchPanel

        self.panel = AISearchPanel()
        self.panel.plugin_name = PLUGIN_NAME
        self.dataset = dataset
        self.state = {}
        self.context = context

    def __call__(self, method, **params):
        ctx = _context(self.dataset, params=params, panel_state=self.state,
                       **self.context)
        getattr(self.panel, method)(ctx)
        self.state = ctx.panel.state._data
        # what the App is asked to do: [(operator, params)]
        self.triggered = [(r["operator_uri"], r["params"])
                          for r in ctx.executor.to_json()["requests"]]
        return ctx

    def asked(self, operator):
        return [p for o, p in self.triggered if o == operator]

    def render(self):
        ctx = _context(self.dataset, panel_state=self.state, **self.context)
        return self.panel.render(ctx).to_json()["type"]["properties"]

    def search(self, **params):
        """The panel's Search: the prompt it opens is the grid button's
        (run here with ``params``); the grid then shows the results, and
        the panel hears of the new view. Returns what the search asked
        the App to do."""
        self("on_search")
        (prompt,) = self.asked("prompt_user_for_operation")
        assert prompt["operator_uri"] == uri("ai_search")
        _, asked = _execute(self.dataset, "ai_search", params=params,
                            **self.context)
        self.context["view"] = fo.core.view.DatasetView._build(
            self.dataset, asked["set_view"][0]["view"])
        self("on_change_view")
        return asked

    def save(self, name):
        """The panel's "Save what is shown": the save prompt it opens, with
        the range shown, run with ``name``."""
        self("on_save")
        (prompt,) = self.asked("prompt_user_for_operation")
        assert prompt["operator_uri"] == uri("save_collection")
        _, asked = _execute(self.dataset, "save_collection",
                            params=dict(prompt["params"], name=name))
        self("on_saved")
        return asked


@pytest.mark.slow
def test_panel_follows_the_computation_then_searches_and_narrows(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=30, enable=False)
    panel = _Panel(dataset)
    panel("on_load")
    props = panel.render()
    assert "off" in props["status"]["default"] and "enable" in props

    ais.enable_embeddings(dataset, model=tiny_clip_model_name())
    panel("on_refresh")
    props = panel.render()
    assert "Computing embeddings" in props["status"]["default"]
    assert props["poll"]["view"]["name"] == "TimerView"  # polls by itself
    wait_until_idle(dataset)
    panel("on_poll")
    # each write of a panel's state reloads the App's page (FiftyOne 1.22):
    # an event sends what it changed in one write
    assert len(panel.asked("patch_panel_state")) == 1
    props = panel.render()
    assert "Ready" in props["status"]["default"]
    assert "30 of 30 samples indexed" in props["status"]["default"]
    assert "poll" not in props and "search_btn" in props
    panel("on_refresh")
    assert not panel.asked("patch_panel_state")  # nothing changed

    asked = panel.search(mode="prompt", prompt="a photo of a red circle",
                         limit=10)
    # the panel hears of the new results: one write of its state
    assert len(panel.asked("patch_panel_state")) == 1
    scores = ais.get_collection_scores(dataset, ais.TEMPORARY_COLLECTION)
    assert len(scores) == 10
    # the grid gets the results as stages (by name it failed the first time)
    (shown,) = asked["set_view"]
    assert "name" not in shown and len(shown["view"]) == 1
    props = panel.render()
    assert "prompt 'a photo of a red circle', 10 samples" in props[
        "results_title"]["default"]
    (slider,) = [k for k in props if k.startswith("score_range_")]
    assert props[slider]["view"]["name"] == "SliderView"
    assert props[slider]["default"] == [scores[-1][1], scores[0][1]]

    # the App setting the slider to its default changes nothing
    panel("on_slider", value=props[slider]["default"])
    assert panel.state.get("range") is None and not panel.asked("set_view")

    # a slider range narrows what is shown, and saving keeps just that
    lo = scores[4][1]
    panel("on_slider", value=[lo, scores[0][1]])
    assert panel.state["range"] == [lo, scores[0][1]]
    assert panel.state["range_count"] == 5
    # range, count and the new slider with its default in one write: the
    # App never draws the new slider with the old default
    (written,) = panel.asked("patch_panel_state")
    assert written["state"]["slider_default"] == [lo, scores[0][1]]
    assert {"range", "range_count", "slider"} <= set(written["state"])
    props = panel.render()
    assert "5 of 10 results" in props["range_text"]["default"]
    # the slider holds both bounds where they were set (a new slider whose
    # default is the range), so setting the other bound keeps this one
    (moved,) = [k for k in props if k.startswith("score_range_")]
    assert moved != slider and props[moved]["default"] == [lo, scores[0][1]]
    # and its value from the start (a Min or Max typed there takes the
    # other bound from it)
    assert panel.state[moved] == [lo, scores[0][1]]
    # the slider replaced sends its old value again as it goes: not a range
    panel("on_slider", path=slider, value=[scores[-1][1],
                                          scores[0][1]])
    assert not panel.asked("set_view")
    assert panel.state["range"] == [lo, scores[0][1]]
    panel("on_slider", value=props[moved]["default"])
    assert not panel.asked("set_view")  # its default: no change
    panel("on_slider", value=[lo, scores[2][1]])
    assert panel.state["range"] == [lo, scores[2][1]]
    assert panel.state["range_count"] == 3
    panel("on_slider", value=[lo, scores[0][1]])
    asked = panel.save("reds")
    assert asked["reload_dataset"]  # the saved views list shows it
    assert asked["notify"][0]["message"] == "Saved collection 'reds'"
    assert [i for i, _ in ais.get_collection_scores(dataset, "reds")] == [
        i for i, _ in scores[:5]]
    props = panel.render()
    assert props["collection"]["default"] == "reds"
    # Load selects it in FiftyOne's saved views list, by name
    panel("on_load_collection")
    assert panel.asked("set_view") == [{"name": "reds"}]

    # bars selected on the histogram do the same
    from fiftyone_ai_search.app.panel import histogram_chart

    edges, counts = ais.get_score_histogram(
        dataset, ais.TEMPORARY_COLLECTION, bins=25)
    chart = histogram_chart(edges, counts)
    panel("on_histogram_select",
          data=[{"x": chart[0]["x"][-1], "y": chart[0]["y"][-1]}])
    assert panel.state["range_count"] == counts[-1]
    panel("on_reset_range")
    assert panel.state["range"] is None
    # a new slider (the App keeps an old one's value), at the full range
    (again,) = [k for k in panel.render() if k.startswith("score_range_")]
    assert again != slider


def test_panel_reports_errors_instead_of_breaking(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=10)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    panel = _Panel(dataset)
    panel("on_load")
    # an event that fails says so in a notification
    panel.state["slider_default"] = None
    panel("on_histogram_select", data=[{"x": 0.5}])  # no results yet
    (note,) = panel.asked("notify")
    assert note["variant"] == "error"
    assert "Ready" in panel.render()["status"]["default"]

    ais.disable_embeddings(dataset)
    panel("on_refresh")
    props = panel.render()
    assert "off" in props["status"]["default"] and "search_btn" not in props


def test_panel_says_a_rebuild_with_another_model_runs_and_what_searches_use(
    tmp_path, other_tiny_model
):
    dataset = shapes_dataset(tmp_path, num_samples=20)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    ais.enable_embeddings(dataset, model=other_tiny_model, compute=False)
    panel = _Panel(dataset)
    panel("on_load")

    status = panel.render()["status"]["default"]
    assert status.startswith("**Ready** (tiny")  # the index searches use
    assert "20 of 20 samples indexed" in status
    assert "A rebuild with other-tiny-clip" in status and "pending" in status

    lease = st.try_acquire(dataset)  # a computation of the rebuild runs
    try:
        st.update(dataset, progress={"done": 6, "total": 20})
        panel("on_refresh")
        status = panel.render()["status"]["default"]
        assert status.startswith("**Rebuilding with other-tiny-clip")
        assert "6 / 20 (30%)" in status
        assert "Searches use tiny" in status
        assert "search_btn" in panel.render()  # searching stays possible
    finally:
        lease.release()


# -- near-duplicates -------------------------------------------------------------


def _execute(dataset, operator, **context):
    """Runs an operator's ``execute`` on an App context; returns its result
    and what the App is asked to do: ``{operator: [params, ...]}``."""
    ctx = _context(dataset, operator=operator, **context)
    result = foo.get_operator(uri(operator)).execute(ctx)
    asked = {}
    for request in ctx.executor.to_json()["requests"]:
        asked.setdefault(request["operator_uri"], []).append(request["params"])
    return result, asked


def _layout(groups):
    """The ids and scores a near-duplicates collection holds for ``groups``
    (the SDK's): largest group first, each kept sample (1.0) then its
    duplicates."""
    pairs = []
    for kept, dups in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        pairs += [(kept, 1.0)] + list(dups)
    return pairs


def test_find_near_duplicates_shows_the_groups_in_the_grid(tmp_path):
    from fiftyone import ViewField as F
    from fiftyone.operators.executor import resolve_placement

    from fiftyone_ai_search.duplicates import DEFAULT_THRESHOLD

    dataset = shapes_dataset(tmp_path, num_samples=60)
    operator = foo.get_operator(uri("find_near_duplicates"))
    placement = resolve_placement(
        operator, {"dataset_name": dataset.name, "params": {}}).to_json()
    assert placement["place"] == "samples-grid-actions"
    assert placement["view"]["label"] == "Find near-duplicates"
    assert placement["view"]["prompt"] is True

    # not indexed yet: the form says so and blocks Execute
    form = _form(dataset, operator="find_near_duplicates")
    assert "Enable it from the AI Search button" in _blocking(form)[
        "not_ready"]

    ais.calculate_embeddings(dataset, wait=True, progress=False)
    form = _form(dataset, operator="find_near_duplicates")
    assert not _blocking(form)
    assert form["threshold"]["default"] == DEFAULT_THRESHOLD
    assert "whole dataset: 60 samples" in form["scope"]["view"]["label"]

    # the tiny CLIP finds images of one class near-duplicates at 0.99
    threshold = 0.99
    groups = ais.near_duplicate_groups(dataset, threshold)
    assert len(groups) >= 3
    result, asked = _execute(dataset, "find_near_duplicates",
                             params={"threshold": threshold})
    expected = _layout(groups)
    assert result == {"collection": ais.TEMPORARY_COLLECTION,
                      "count": len(expected), "groups": len(groups)}
    scores = ais.get_collection_scores(dataset, ais.TEMPORARY_COLLECTION)
    assert [i for i, _ in scores] == [i for i, _ in expected]
    assert [s for _, s in scores] == pytest.approx([s for _, s in expected])
    # the grid gets the collection, as stages (as searches do)
    (shown,) = asked["set_view"]
    assert "name" not in shown
    assert fo.DatasetView._build(dataset, shown["view"]).values("id") == [
        i for i, _ in expected]
    (note,) = asked["notify"]
    assert note["variant"] == "success"
    dups = len(expected) - len(groups)
    assert f"Found {dups} near-duplicates of {len(groups)} images" in note[
        "message"]

    # from the latest results, a new run looks at the whole dataset again
    latest = dataset.load_saved_view(ais.TEMPORARY_COLLECTION)
    form = _form(dataset, operator="find_near_duplicates", view=latest)
    assert "whole dataset" in form["scope"]["view"]["label"]

    # within the current view, or the whole dataset when asked
    stars = dataset.match(F("shape") == "star")
    form = _form(dataset, operator="find_near_duplicates", view=stars)
    assert f"within the current view: {len(stars)} samples" in form[
        "scope"]["view"]["label"]
    assert "whole_dataset" in form
    result, _ = _execute(dataset, "find_near_duplicates", view=stars,
                         params={"threshold": threshold})
    in_stars = ais.near_duplicate_groups(stars, threshold)
    assert result["groups"] == len(in_stars)
    assert set(ais.get_collection(dataset, ais.TEMPORARY_COLLECTION)
               .values("shape")) == {"star"}
    result, _ = _execute(dataset, "find_near_duplicates", view=stars,
                         params={"threshold": threshold,
                                 "whole_dataset": True})
    assert result["groups"] == len(groups)


def test_no_near_duplicates_is_said_and_the_view_stays(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=30)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert not ais.near_duplicate_groups(dataset, 1.0)

    result, asked = _execute(dataset, "find_near_duplicates",
                             params={"threshold": 1.0})
    assert result == {"collection": None, "count": 0, "groups": 0}
    assert "set_view" not in asked
    (note,) = asked["notify"]
    assert note["variant"] == "info"
    assert "No near-duplicates" in note["message"]
    # headless, through FiftyOne's machinery: no error either
    assert _run("find_near_duplicates", dataset, threshold=1.0)[
        "collection"] is None


def test_find_near_duplicates_blocks_a_bad_threshold(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=10)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    for bad in (0, -0.5, 1.5):
        form = _form(dataset, operator="find_near_duplicates",
                     params={"threshold": bad})
        prop = form["threshold"]
        assert prop["invalid"] is True, bad
        assert "above 0 and at most 1" in prop["error_message"]
    for good in (0.5, 1, 1.0):
        assert not _blocking(_form(dataset, operator="find_near_duplicates",
                                   params={"threshold": good}))
    # executed anyway (headless), the SDK's error names the argument
    with pytest.raises(Exception, match="threshold"):
        foo.execute_operator(uri("find_near_duplicates"), ctx={
            "dataset": dataset, "params": {"threshold": 1.5}})


def test_find_near_duplicates_delegated_reports_progress_and_keeps_groups(
        tmp_path, monkeypatch):
    from fiftyone_ai_search.app import forms

    dataset = shapes_dataset(tmp_path, num_samples=60)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    name = uri("find_near_duplicates")
    operator = foo.get_operator(name)

    def options():
        ctx = _context(dataset, operator="find_near_duplicates")
        return operator.resolve_execution_options(ctx).to_dict()

    # either way; scheduling offered first on a large dataset
    assert options()["allow_immediate_execution"]
    assert options()["allow_delegated_execution"]
    assert not options()["default_choice_to_delegated"]
    monkeypatch.setattr(forms, "DELEGATE_DUPLICATES", 50)
    assert options()["default_choice_to_delegated"]

    threshold = 0.99
    groups = ais.near_duplicate_groups(dataset, threshold)
    assert len(groups) >= 3
    queued = foo.execute_operator(name, ctx={
        "dataset": dataset,
        "params": {"threshold": threshold, "delegate": True}})
    assert queued.delegated
    assert forms.DUPLICATES_COLLECTION not in [
        c["name"] for c in ais.list_collections(dataset)]

    service = DelegatedOperationService()
    service.execute_queued_operations(operator=name)
    (op,) = [o for o in service.list_operations(dataset_name=dataset.name)
             if o.operator == name]
    assert op.run_state == "completed", op.result
    expected = _layout(groups)
    assert op.result.result == {"collection": forms.DUPLICATES_COLLECTION,
                                "count": len(expected),
                                "groups": len(groups)}
    assert op.status.progress == pytest.approx(1.0)
    assert f"of {len(groups)} images" in op.status.label
    # the groups as a saved view (kept image first), what the SDK finds
    scores = ais.get_collection_scores(dataset, forms.DUPLICATES_COLLECTION)
    assert [i for i, _ in scores] == [i for i, _ in expected]
    assert dataset.load_saved_view(forms.DUPLICATES_COLLECTION).values(
        "id") == [i for i, _ in expected]


def test_tag_near_duplicates_tags_all_but_the_kept_image(tmp_path):
    from fiftyone.operators.executor import resolve_placement

    dataset = shapes_dataset(tmp_path, num_samples=60)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    operator = foo.get_operator(uri("tag_near_duplicates"))
    request = {"dataset_name": dataset.name, "params": {}}
    # no near-duplicates found yet: no button, and the form says why
    assert resolve_placement(operator, request) is None
    form = _form(dataset, operator="tag_near_duplicates")
    assert "find them first" in _blocking(form)["no_duplicates"]
    ais.perform_ai_search(dataset, prompt="a red circle", limit=5)
    assert resolve_placement(operator, request) is None  # not duplicates

    threshold = 0.99
    groups = ais.near_duplicate_groups(dataset, threshold)
    _execute(dataset, "find_near_duplicates", params={"threshold": threshold})
    placement = resolve_placement(operator, request).to_json()
    assert placement["place"] == "samples-grid-actions"
    assert placement["view"]["label"] == "Tag near-duplicates"
    # the groups as the collection holds them: the SDK's, kept image first
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    assert ais.duplicates.duplicate_groups_in(dataset) == [
        [k] + [d for d, _ in v] for k, v in ordered]
    dups = [d for _, v in ordered for d, _ in v]
    form = _form(dataset, operator="tag_near_duplicates")
    assert not _blocking(form)
    assert form["collection"]["default"] == ais.TEMPORARY_COLLECTION
    assert form["tag"]["default"] == "duplicate"
    assert (f"Tags **{len(dups)}** images with `duplicate`: every image of "
            f"the {len(groups)} groups") in form["what"]["default"]
    form = _form(dataset, operator="tag_near_duplicates",
                 params={"tag": " "})
    assert form["tag"]["invalid"] is True

    result, asked = _execute(dataset, "tag_near_duplicates", params={})
    assert result == {"collection": ais.TEMPORARY_COLLECTION,
                      "tag": "duplicate", "tagged": len(dups)}
    assert "reload_dataset" in asked
    (note,) = asked["notify"]
    assert f"Tagged {len(dups)} near-duplicates" in note["message"]
    assert sorted(dataset.match_tags("duplicate").values("id")) == sorted(
        dups)
    assert not set(groups) & set(dataset.match_tags("duplicate").values(
        "id"))  # each group's kept image stays untagged
    # a saved copy (a score range: the kept images stay), another tag;
    # the SDK tags as the App does
    ais.save_collection(dataset, "dups", min_score=0.995)
    kept_range = [d for _, v in ordered for d, s in v if s >= 0.995]
    result = _run("tag_near_duplicates", dataset, collection="dups",
                  tag="close copy")
    assert result["tagged"] == len(kept_range)
    assert sorted(dataset.match_tags("close copy").values("id")) == sorted(
        kept_range)
    assert ais.tag_near_duplicates(dataset, "dups", "again") == len(
        kept_range)
    # the latest results are a search now: nothing to tag there
    ais.perform_ai_search(dataset, prompt="a star", limit=3)
    with pytest.raises(ValueError, match="no near-duplicates"):
        ais.tag_near_duplicates(dataset)


def test_panel_shows_near_duplicates_found_from_the_grid(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=60)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    panel = _Panel(dataset)
    panel("on_load")
    panel.search(mode="prompt", prompt="a photo of a red circle", limit=10)
    assert "prompt 'a photo of a red circle'" in panel.render()[
        "results_title"]["default"]
    # the App shows the panel's own results: nothing to refresh or write
    panel.context["view"] = dataset.load_saved_view(ais.TEMPORARY_COLLECTION)
    panel("on_change_view")
    assert not panel.triggered

    # the grid's button finds near-duplicates; the App's view changes
    result, _ = _execute(dataset, "find_near_duplicates",
                         params={"threshold": 0.99})
    panel.context["view"] = dataset.load_saved_view(ais.TEMPORARY_COLLECTION)
    panel("on_change_view")
    props = panel.render()
    title = props["results_title"]["default"]
    assert (f"near-duplicates ({result['groups']} images with copies at "
            f"similarity 0.99 or more), {result['count']} samples") in title
    (slider,) = [k for k in props if k.startswith("score_range_")]
    scores = [s for _, s in ais.get_collection_scores(
        dataset, ais.TEMPORARY_COLLECTION)]
    assert props[slider]["default"][1] == pytest.approx(1.0)
    assert props[slider]["default"][0] == pytest.approx(min(scores))
    assert "Similarity to the image each group keeps" in str(
        props["histogram"])


# -- object search ------------------------------------------------------------------

FIELD = "ground_truth"
OBJECTS = f"objects:{FIELD}"


def scenes_dataset(tmp_path, num_samples=60):
    """Scene images of several boxed shapes each (Detections in
    ``ground_truth``), AI search off."""
    import uuid

    from fiftyone_ai_search.demo import make_scenes_dataset

    name = "scenes-" + uuid.uuid4().hex[:10]
    return make_scenes_dataset(name=name, num_samples=num_samples,
                               images_dir=str(tmp_path / name))


def wait_until_objects_idle(dataset, timeout=180):
    import time

    deadline = time.time() + timeout
    while ais.get_embeddings_in_progress(dataset, patches_field=FIELD):
        assert time.time() < deadline, ais.get_status(
            dataset, patches_field=FIELD)
        time.sleep(0.2)


def _labels(view):
    return view.values(f"{FIELD}.label")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A scenes dataset with its images and the objects of ground_truth
    indexed (each test leaves the indexes as it found them)."""
    dataset = scenes_dataset(tmp_path_factory.mktemp("scenes"))
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          compute=False)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    ais.enable_embeddings(dataset, patches_field=FIELD, compute=False)
    ais.calculate_embeddings(dataset, patches_field=FIELD, wait=True,
                             progress=False)
    return dataset


def _shown(dataset, asked):
    """The view the App is asked to show (the last ``set_view``)."""
    import fiftyone.core.view as fov

    return fov.DatasetView._build(dataset, asked["set_view"][-1]["view"])


@pytest.mark.slow
def test_enable_object_search_from_the_app_and_follow_it(tmp_path):
    dataset = scenes_dataset(tmp_path, num_samples=20)
    # off: the grid button's form is the enable form, with the choice of
    # the images or the objects of a label field
    form = _form(dataset)
    choice = form["search_in"]
    assert [c["value"] for c in choice["view"]["choices"]] == [
        "images", OBJECTS]
    assert [c["label"] for c in choice["view"]["choices"]] == [
        "images", f"objects of {FIELD}"]
    assert choice["default"] == "images"
    # objects with no image index: the model is chosen here too
    form = _form(dataset, params={"search_in": OBJECTS})
    assert "model_choice" in form and "objects_model" not in form

    result = foo.execute_operator(uri("ai_search"), ctx={
        "dataset": dataset, "params": {
            "search_in": OBJECTS, "model_choice": tiny_clip_model_name()}})
    assert result.error is None, result.error_message
    assert result.result == {"enabled": True}
    assert ais.is_embeddings_enabled(dataset, patches_field=FIELD)
    assert not ais.is_embeddings_enabled(dataset)
    wait_until_objects_idle(dataset)

    # ready: the button searches the objects (the images are not indexed)
    from fiftyone.operators.executor import resolve_placement

    def button():
        return resolve_placement(foo.get_operator(uri("ai_search")), {
            "dataset_name": dataset.name, "params": {}}).to_json()[
                "view"]["label"]

    assert button() == "AI Search: ready"
    # a computation of the objects shows on the button too
    from fiftyone_ai_search.index.targets import Objects

    st.mark_pending(Objects(dataset, FIELD), os.getpid())
    assert button().startswith("AI Search: computing")
    st.update(Objects(dataset, FIELD), pending=None)
    form = _form(dataset)
    assert [c["value"] for c in form["search_in"]["view"]["choices"]] == [
        OBJECTS]
    num_objects = dataset.count(f"{FIELD}.detections")
    assert (f"whole dataset: all objects of {FIELD}"
            in form["scope"]["view"]["label"])

    # the status says how far each index is
    status = _run("ai_search_status", dataset)
    assert status["objects"][FIELD]["counts"]["num_indexed"] == num_objects
    form = _form(dataset, operator="ai_search_status")
    assert "AI search is off" in form["status"]["default"]
    assert (f"**Objects of {FIELD}: ready**" in form["objects_0"]["default"]
            and f"{num_objects} of {num_objects} objects indexed"
            in form["objects_0"]["default"])

    # with an image index, objects take its model: no model to choose
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          compute=False)
    form = _form(dataset, operator="enable_ai_search",
                 params={"search_in": OBJECTS})
    assert "image index's model" in form["objects_model"]["view"]["label"]
    assert "already" in form["objects_on"]["view"]["label"]
    assert "model_choice" not in form and "backend" not in form

    # compute and disable choose between the two
    form = _form(dataset, operator="compute_embeddings")
    assert [c["value"] for c in form["search_in"]["view"]["choices"]] == [
        "images", OBJECTS]
    dataset.delete_labels(ids=[dataset.first()[FIELD].detections[0].id])
    assert _run("compute_embeddings", dataset, search_in=OBJECTS) == {
        "started": True}
    wait_until_objects_idle(dataset)
    assert ais.get_status(dataset, patches_field=FIELD)["counts"][
        "num_indexed"] == num_objects - 1

    # a patches view of the field makes it the default of disable
    form = _form(dataset, operator="disable_ai_search",
                 view=dataset.to_patches(FIELD))
    assert form["search_in"]["default"] == OBJECTS
    assert "Disable object search" in form["warning"]["view"]["label"]
    assert _run("disable_ai_search", dataset, search_in=OBJECTS) == {
        "enabled": False, "patches_field": FIELD}
    assert not ais.is_embeddings_enabled(dataset, patches_field=FIELD)
    assert ais.is_embeddings_enabled(dataset)  # the image index stays


def test_search_objects_by_prompt_image_and_diverse(scenes, tmp_path):
    from fiftyone_ai_search.demo import shapes

    dataset = scenes
    # images first where both can be searched; a patches view of the
    # field searches its objects by default
    form = _form(dataset)
    assert [c["value"] for c in form["search_in"]["view"]["choices"]] == [
        "images", OBJECTS]
    assert form["search_in"]["default"] == "images"
    form = _form(dataset, view=dataset.to_patches(FIELD))
    assert form["search_in"]["default"] == OBJECTS
    assert (f"the {dataset.count(f'{FIELD}.detections')} objects of the "
            "current view" in form["scope"]["view"]["label"])

    # prompt: the grid gets a patches view of the objects found, best first
    result, asked = _execute(dataset, "ai_search", params={
        "search_in": OBJECTS, "mode": "prompt", "prompt": "a red circle",
        "limit": 5})
    assert result == {"collection": ais.TEMPORARY_COLLECTION, "count": 5}
    shown = _shown(dataset, asked)
    assert shown._is_patches
    scores = ais.get_collection_scores(dataset, ais.TEMPORARY_COLLECTION)
    assert shown.values("id") == [i for i, _ in scores]
    assert _labels(shown).count("red circle") >= 4, _labels(shown)

    # from the results, a new search searches all the objects again
    form = _form(dataset, view=shown)
    assert form["search_in"]["default"] == OBJECTS
    assert "never searches the latest results" in form["scope"]["view"][
        "label"]
    _, asked = _execute(dataset, "ai_search", view=shown, params={
        "mode": "prompt", "prompt": "a blue square", "limit": 5})
    assert _labels(_shown(dataset, asked)).count("blue square") >= 4

    # an image file, from outside the dataset
    path = str(tmp_path / "query.png")
    shapes.render(shapes.sample_spec(seed=7, index=0, color="green",
                                     shape="circle"),
                  image_size=128, seed=7).save(path)
    form = _form(dataset, params={"search_in": OBJECTS, "mode": "image"})
    assert "image_upload" in form and "prompt" not in form  # by default
    form = _form(dataset, params={"search_in": OBJECTS, "mode": "image",
                                  "image_source": "server_path"})
    assert "image_path" in form and "image_upload" not in form
    bad = _form(dataset, params={"search_in": OBJECTS, "mode": "image",
                                 "image_source": "server_path",
                                 "image_path": str(tmp_path / "none.png")})
    assert bad["image_path"]["invalid"] is True
    assert "No file" in bad["image_path"]["error_message"]
    _, asked = _execute(dataset, "ai_search", params={
        "search_in": OBJECTS, "mode": "image", "image_path": path,
        "limit": 5})
    assert _labels(_shown(dataset, asked)).count("green circle") >= 4

    # diverse: objects of many classes
    out = _run("ai_search", dataset, search_in=OBJECTS, mode="diverse",
               num_clusters=20, limit=20)
    assert out["count"] == 20
    diverse = ais.get_collection(dataset, ais.TEMPORARY_COLLECTION)
    assert diverse._is_patches and len(set(_labels(diverse))) >= 12

    # score range and saving: patches still
    _run("ai_search", dataset, search_in=OBJECTS, mode="prompt",
         prompt="a red circle", limit=10)
    scores = ais.get_collection_scores(dataset, ais.TEMPORARY_COLLECTION)
    cut = scores[4][1]
    result, asked = _execute(dataset, "filter_by_score",
                             params={"min_score": cut})
    assert result["count"] == 5
    assert _shown(dataset, asked).values("id") == [i for i, _ in scores[:5]]
    assert _run("save_collection", dataset, name="red circles",
                min_score=cut) == {"collection": "red circles"}
    kept = ais.get_collection(dataset, "red circles")
    assert kept._is_patches and kept.values("id") == [
        i for i, _ in scores[:5]]
    _run("delete_collection", dataset, name="red circles")

    # images are still searched as before, also from a patches view
    out = _run("ai_search", dataset, search_in="images", mode="prompt",
               prompt="a red circle", limit=5)
    assert not ais.get_collection(dataset, out["collection"])._is_patches


def test_similar_objects_from_patches_and_selected_labels(scenes):
    from fiftyone import ViewField as F

    dataset = scenes
    patches = dataset.to_patches(FIELD)
    ref = patches.match(F(f"{FIELD}.label") == "yellow star").first()

    # patches selected in the grid of a patches view: their labels
    form = _form(dataset, view=patches, selected=[ref.id])
    assert form["search_in"]["default"] == OBJECTS
    assert form["mode"]["default"] == "similar"
    assert (f"Similar to the 1 selected object(s) of {FIELD}"
            in form["selected"]["view"]["label"])
    _, asked = _execute(dataset, "ai_search", view=patches,
                        selected=[ref.id], params={"limit": 5})
    shown = _shown(dataset, asked)
    assert shown.values("id")[0] == ref.id
    assert _labels(shown).count("yellow star") >= 4
    # the same selection, searching images: the image of that patch
    form = _form(dataset, view=patches, selected=[ref.id],
                 params={"search_in": "images"})
    assert "Similar to the 1 selected sample(s)" in form["selected"][
        "view"]["label"]
    _, asked = _execute(dataset, "ai_search", view=patches,
                        selected=[ref.id],
                        params={"search_in": "images", "limit": 3})
    assert _shown(dataset, asked).values("id")[0] == ref.sample_id

    # "Find similar" in the modal of a patches view: the patch shown
    form = _form(dataset, operator="search_similar", view=patches,
                 current_sample=ref.id)
    assert form["search_in"]["default"] == OBJECTS
    assert "1 selected object(s)" in form["selected"]["view"]["label"]
    result, asked = _execute(dataset, "search_similar", view=patches,
                             current_sample=ref.id, params={"limit": 5})
    assert _shown(dataset, asked).values("id")[0] == ref.id
    assert asked.get("close_sample")  # to the grid, where the results are

    # in the modal of a sample with a label of the field selected: objects
    sample = dataset[ref.sample_id]
    selected_labels = [{"label_id": ref.id, "sample_id": sample.id,
                        "field": FIELD, "type": "default"}]
    form = _form(dataset, operator="search_similar", current_sample=sample.id,
                 selected_labels=selected_labels)
    assert form["search_in"]["default"] == OBJECTS
    result, asked = _execute(dataset, "search_similar",
                             current_sample=sample.id,
                             selected_labels=selected_labels,
                             params={"limit": 5})
    assert _shown(dataset, asked).values("id")[0] == ref.id
    # no label selected: similar images, as before
    form = _form(dataset, operator="search_similar", current_sample=sample.id)
    assert form["search_in"]["default"] == "images"
    assert "1 selected sample(s)" in form["selected"]["view"]["label"]

    # objects with nothing selected: a message that blocks, and says how
    blocked = _blocking(_form(dataset, operator="search_similar",
                              current_sample=sample.id,
                              params={"search_in": OBJECTS}))
    assert "Nothing selected" in blocked["selected"]
    assert f"an object of {FIELD} in the sample modal" in blocked["selected"]
    with pytest.raises(Exception, match="Nothing selected"):
        foo.execute_operator(uri("ai_search"), ctx={
            "dataset": dataset, "params": {"search_in": OBJECTS,
                                           "mode": "similar"}})


@pytest.mark.slow
def test_panel_enables_follows_and_searches_objects(tmp_path):
    dataset = scenes_dataset(tmp_path, num_samples=40)
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          compute=False)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    panel = _Panel(dataset)
    panel("on_load")
    props = panel.render()
    # images ready, the objects of ground_truth can be indexed too
    assert "search_in" not in _form(dataset)
    panel("on_enable_objects")
    (prompt,) = panel.asked("prompt_user_for_operation")
    assert prompt["operator_uri"] == uri("enable_ai_search")
    assert prompt["params"] == {"search_in": OBJECTS}

    ais.enable_embeddings(dataset, patches_field=FIELD)  # computes
    panel("on_refresh")
    props = panel.render()
    assert props["poll"]["view"]["name"] == "TimerView"
    assert f"Objects of {FIELD}:" in props["object_status"]["default"]
    wait_until_objects_idle(dataset)
    panel("on_poll")
    (note,) = panel.asked("notify")
    assert note["message"] == f"Object search of {FIELD} is ready"
    props = panel.render()
    num_objects = dataset.count(f"{FIELD}.detections")
    assert "poll" not in props
    assert (f"{num_objects} of {num_objects} objects indexed"
            in props["object_status"]["default"])
    assert "enable_objects" not in props
    search = _form(dataset)
    assert [c["label"] for c in search["search_in"]["view"]["choices"]] == [
        "images", f"objects of {FIELD}"]

    asked = panel.search(search_in=OBJECTS, mode="prompt",
                         prompt="a red circle", limit=10)
    (shown,) = asked["set_view"]
    import fiftyone.core.view as fov

    assert fov.DatasetView._build(dataset, shown["view"])._is_patches
    props = panel.render()
    assert (f"prompt 'a red circle', 10 objects of {FIELD}"
            in props["results_title"]["default"])
    scores = ais.get_collection_scores(dataset, ais.TEMPORARY_COLLECTION)
    (slider,) = [k for k in props if k.startswith("score_range_")]
    panel("on_slider", value=[scores[2][1], scores[0][1]])
    assert panel.state["range_count"] == 3
    panel.save("top reds")
    assert ais.get_collection(dataset, "top reds")._is_patches

    # the grid showing the results (a patches view): the panel keeps them,
    # and the next search searches the objects of that field
    panel.context["view"] = ais.get_collection(dataset,
                                               ais.TEMPORARY_COLLECTION)
    panel("on_change_view")
    assert "results_title" in panel.render()
    form = _form(dataset, view=panel.context["view"])
    assert form["search_in"]["default"] == OBJECTS
    assert "never searches the latest results" in form["scope"]["view"][
        "label"]

    # disabling the objects' index takes its results with it
    _execute(dataset, "disable_ai_search", params={"search_in": OBJECTS})
    panel.context.pop("view")
    panel("on_refresh")
    props = panel.render()
    assert "results_title" not in props
    assert "object_status" not in props and "search_btn" in props
    assert props["enable_objects"]["view"]["label"] == "Enable object search"


# -- what a curator types, checked where it is typed -------------------------------


def test_forms_refuse_what_cannot_run_in_a_curators_words(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=10)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    # a limit below 1 blocks Execute; executed anyway, it is not 100
    for bad in (0, -3):
        blocking = _blocking(_form(dataset, params={"prompt": "a red circle",
                                                    "limit": bad}))
        assert list(blocking) == ["limit"]
        form = _form(dataset, params={"limit": bad})
        assert f"1 or more, not {bad}" in form["limit"]["error_message"]
    with pytest.raises(Exception, match="limit"):
        foo.execute_operator(uri("ai_search"), ctx={
            "dataset": dataset, "params": {"prompt": "a red circle",
                                           "limit": 0}})

    # a typed model that open_clip does not have blocks the enable form
    form = _form(dataset, operator="enable_ai_search",
                 params={"model_choice": "custom", "model": "NoSuchNet-7"})
    message = form["model"]["error_message"]
    assert form["model"]["invalid"] and "open_clip has no model" in message
    assert "NoSuchNet-7" in message and "Traceback" not in message
    form = _form(dataset, operator="enable_ai_search",
                 params={"model_choice": "custom",
                         "model": tiny_clip_model_name()})
    assert not _blocking(form)

    # names: empty or taken, said in the App's words (not the SDK's)
    ais.perform_ai_search(dataset, prompt="a red circle", limit=3)
    ais.save_collection(dataset, "reds")
    for params, expected in (({"name": ""}, "Type a name"),
                             ({"name": "reds"}, "exists already")):
        form = _form(dataset, operator="save_collection", params=params)
        assert form["name"]["invalid"], params
        assert expected in form["name"]["error_message"]
        assert "overwrite=True" not in form["name"]["error_message"]
    form = _form(dataset, operator="save_collection",
                 params={"name": "reds", "overwrite": True})
    assert not form["name"].get("invalid")
    form = _form(dataset, operator="rename_collection",
                 params={"name": "reds", "new_name": "reds"})
    assert "exists already" in form["new_name"]["error_message"]
    # deleting warns what goes and what stays
    form = _form(dataset, operator="delete_collection",
                 params={"name": "reds"})
    assert "cannot be undone" in form["warning"]["view"]["label"]


def test_a_collection_open_in_the_app_is_left_before_it_goes(tmp_path):
    """FiftyOne 1.22's App left on a saved view that no longer exists fails
    ("Object of type SavedView is not JSON serializable"): renaming,
    deleting or disabling first moves the App off it."""
    dataset = shapes_dataset(tmp_path, num_samples=10)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    ais.perform_ai_search(dataset, prompt="a red circle", limit=4)
    ais.save_collection(dataset, "reds")
    ais.save_collection(dataset, "other")
    ids = dataset.load_saved_view("reds").values("id")

    # renamed while open: the same samples, unsaved, then the list reloads
    _, asked = _execute(dataset, "rename_collection",
                        view=dataset.load_saved_view("reds"),
                        params={"name": "reds", "new_name": "red ones"})
    (shown,) = asked["set_view"]
    assert "name" not in shown
    assert fo.core.view.DatasetView._build(
        dataset, shown["view"]).values("id") == ids
    # (the new view reloads the page: a reload_dataset sent with it would
    # reload the old saved view's address, and fail)
    assert list(asked) == ["set_view"]
    # renamed while another is open: the App's view is left alone
    _, asked = _execute(dataset, "rename_collection",
                        view=dataset.load_saved_view("other"),
                        params={"name": "red ones", "new_name": "reds"})
    assert list(asked) == ["reload_dataset"]

    # deleted while open: the whole dataset
    _, asked = _execute(dataset, "delete_collection",
                        view=dataset.load_saved_view("reds"),
                        params={"name": "reds"})
    assert asked["set_view"] == [{"view": []}]
    assert list(asked) == ["set_view"]

    # disabled with the latest results open as a saved view: the dataset
    _, asked = _execute(
        dataset, "disable_ai_search",
        view=dataset.load_saved_view(ais.TEMPORARY_COLLECTION))
    assert asked["set_view"] == [{"view": []}]
    assert list(asked) == ["set_view"]


def test_disable_drops_a_server_index_with_the_plugin_secrets(tmp_path,
                                                              monkeypatch):
    """The Qdrant URL only in the App's plugin secrets (FiftyOne Enterprise
    keeps them in its secrets manager, not in the App's environment): the
    disable operator drops the server's index with them."""
    from fiftyone.internal.secrets.secret import UnencryptedSecret
    from fiftyone.plugins.secrets import PluginSecretsResolver

    from fiftyone_ai_search.store import open_store

    secrets = {"FIFTYONE_AI_SEARCH_QDRANT_URL": ":memory:"}

    async def get_secret(self, key, operator_uri, **kwargs):
        return self.get_secret_sync(key, operator_uri)

    def get_secret_sync(self, key, operator_uri, **kwargs):
        return (UnencryptedSecret(key, secrets[key]) if key in secrets
                else None)

    monkeypatch.delenv("FIFTYONE_AI_SEARCH_QDRANT_URL", raising=False)
    monkeypatch.setattr(PluginSecretsResolver, "get_secret", get_secret)
    monkeypatch.setattr(PluginSecretsResolver, "get_secret_sync",
                        get_secret_sync)
    dataset, name = server_dataset_by_secrets(tmp_path, 6, secrets)

    def index_exists():
        store = open_store(name, ais.get_settings(secrets=secrets))
        try:
            return store.exists()
        finally:
            store.close()

    assert index_exists()
    assert _run("disable_ai_search", dataset) == {"enabled": False}
    assert not ais.is_embeddings_enabled(dataset)
    assert not index_exists()
