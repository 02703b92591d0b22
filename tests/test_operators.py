"""The App operators, run headless through FiftyOne's own operator machinery,
with the plugin found the two ways users install it."""

import importlib.util
import os

import pytest
import yaml

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.plugins as fop
from fiftyone.operators.delegated import DelegatedOperationService

import fiftyone_ai_search as ais
from fiftyone_ai_search.app import PLUGIN_NAME, manifest
from fiftyone_ai_search.app.install import install_plugin
from fiftyone_ai_search.demo import tiny_clip_model_name

from conftest import REPO_DIR
from helpers import shapes_dataset, wait_until_idle


def uri(name):
    return f"{PLUGIN_NAME}/{name}"


@pytest.fixture(scope="module", autouse=True)
def repo_as_plugin():
    """The repository placed under the plugins dir, as
    ``fiftyone plugins download`` would."""
    link = os.path.join(fo.config.plugins_dir, "fiftyone-ai-search")
    if not os.path.islink(link):
        os.symlink(REPO_DIR, link)
    yield link
    os.unlink(link)


def _run(operator, dataset, **params):
    result = foo.execute_operator(uri(operator), ctx={"dataset": dataset,
                                                      "params": params})
    assert result.error is None, result.error_message
    return result.result


def test_repository_checkout_is_found_as_a_plugin():
    plugin = fop.get_plugin(PLUGIN_NAME)
    assert os.path.realpath(plugin.directory) == REPO_DIR
    assert set(plugin.operators) == set(manifest()["operators"]) | set(
        manifest()["panels"])


def test_manifest_lists_every_operator_and_panel():
    from fiftyone_ai_search.app.operators import OPERATORS
    from fiftyone_ai_search.app.panel import AISearchPanel

    assert [op.CONFIG["name"] for op in OPERATORS] == manifest()["operators"]
    assert [AISearchPanel().config.name] == manifest()["panels"]


def test_repository_manifest_is_the_package_manifest():
    with open(os.path.join(REPO_DIR, "fiftyone.yml")) as f:
        on_disk = yaml.safe_load(f)
    assert on_disk == manifest(py_entry="plugin/__init__.py")


def test_pip_install_plugin_writes_a_loadable_plugin(tmp_path):
    path = install_plugin(plugins_dir=str(tmp_path))

    with open(os.path.join(path, "fiftyone.yml")) as f:
        assert yaml.safe_load(f) == manifest()
    spec = importlib.util.spec_from_file_location(
        "installed_plugin_entry", os.path.join(path, "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.register is ais.app.register


def test_enable_status_compute_disable(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=20, enable=False)

    status = _run("enable_ai_search", dataset, model=tiny_clip_model_name(),
                  pretrained="")
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


def test_panel_loads_searches_and_filters_by_a_histogram_range(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=30)
    panel = uri("ai_search_panel")

    def call(method, state=None, **params):
        result = foo.execute_operator(panel, ctx={
            "dataset": dataset,
            "params": dict(params, __method__=method, panel_id="p1",
                           panel_state=state or {})})
        assert result.error is None, result.error_message
        return result

    call("on_load")  # enabled, not computed yet: renders without error
    ais.calculate_embeddings(dataset, wait=True, progress=False)

    state = {"search": {"mode": "prompt", "prompt": "a photo of a red circle",
                        "limit": 10}}
    call("on_search", state=state)
    scores = ais.get_collection_scores(dataset, ais.TEMPORARY_COLLECTION)
    assert len(scores) == 10

    edges, counts = ais.get_score_histogram(
        dataset, ais.TEMPORARY_COLLECTION, bins=25)
    from fiftyone_ai_search.app.panel import selected_range, histogram_chart
    chart = histogram_chart(edges, counts)
    top_bar = [{"x": chart[0]["x"][-1], "y": chart[0]["y"][-1]}]
    lo, hi = selected_range(top_bar, edges)
    assert lo <= scores[0][1] <= hi
    call("on_range", state=state, data=top_bar)
    view = ais.get_collection(dataset, ais.TEMPORARY_COLLECTION,
                              min_score=lo, max_score=hi)
    assert scores[0][0] in view.values("id")
    assert len(view) == counts[-1]

    call("on_save", state=dict(state, collection_name="from panel"))
    assert "from panel" in [c["name"] for c in ais.list_collections(dataset)]


def test_ai_search_has_a_grid_button_and_says_when_it_cannot_search(
    tmp_path,
):
    from fiftyone.operators.executor import (
        ExecutionContext,
        resolve_placement,
    )

    dataset = shapes_dataset(tmp_path, num_samples=8, enable=False)
    operator = foo.get_operator(uri("ai_search"))
    request = {"dataset_name": dataset.name, "params": {}}

    placement = resolve_placement(operator, request).to_json()
    assert placement["place"] == "samples-grid-actions"
    assert placement["view"]["label"] == "AI Search"
    assert placement["view"]["prompt"] is True

    def warning():
        ctx = ExecutionContext(request, operator_uri=operator.uri)
        form = operator.resolve_input(ctx).to_json()
        notice = form["type"]["properties"].get("not_ready")
        return notice and notice["view"]["label"]

    assert "AI search is off" in warning()
    assert "'AI search: enable'" in warning()

    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          compute=False)
    assert "first indexing has to finish" in warning()

    ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert warning() is None
