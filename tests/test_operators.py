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


def _run(name, dataset, **params):
    result = foo.execute_operator(uri(name), ctx={"dataset": dataset,
                                                  "params": params})
    assert result.error is None, result.error_message
    return result.result


def test_repository_checkout_is_found_as_a_plugin():
    plugin = fop.get_plugin(PLUGIN_NAME)
    assert os.path.realpath(plugin.directory) == REPO_DIR
    assert set(plugin.operators) == set(manifest()["operators"])


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
