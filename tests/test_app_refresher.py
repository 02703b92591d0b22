"""Starting a refresher from the App (issue 26, point 9): one form (the
operator's, which the panel's "Start a refresher" opens) with the options
of the SDK's refresher, ``start_refresher(interval_minutes, datasets)``:
how often it passes, and over this dataset, every dataset with AI search
on, or chosen ones. The service it starts runs outside the App's server."""

import os
import signal
import time

import pytest

import fiftyone_ai_search as ais
from fiftyone_ai_search import refreshers
from fiftyone_ai_search.app import forms
from fiftyone_ai_search.index.state import pid_alive

from tests.helpers import shapes_dataset
from tests.test_operators import _Panel, _execute, _form, uri
from tests.test_operators import repo_as_plugin  # noqa: F401 (the plugin, found)


@pytest.fixture(autouse=True)
def no_records():
    """Each test sees only the refreshers it starts."""
    refreshers._coll().delete_many({})
    yield
    refreshers._coll().delete_many({})


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two datasets with AI search on (state only: nothing computed)."""
    return [shapes_dataset(tmp_path_factory.mktemp(f"refresher{i}"),
                           num_samples=4, seed=i, enable=True)
            for i in range(2)]


def _blocking(form):
    return {k: p.get("error_message") for k, p in form.items()
            if p.get("invalid")}


def _stop(pid):
    """Stops a service started here (before its first pass, mostly: it
    imports torch first)."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while pid_alive(pid):  # (reaps it: the test process is its parent)
        assert time.monotonic() < deadline, "the service did not stop"
        time.sleep(0.2)


def _argv_of_service(pid):
    """The command line of the service ``pid``, once it runs it (until
    its exec, a forked child shows its parent's)."""
    deadline = time.monotonic() + 60
    while True:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        if b"fiftyone_ai_search" in argv:
            return argv
        assert time.monotonic() < deadline, f"not the service: {argv}"
        time.sleep(0.05)


def test_the_form_offers_the_sdk_options(two):
    dataset, other = two
    form = _form(dataset, operator="start_refresher")
    # what keeps it fresh now, the interval (the configured default), and
    # over which datasets
    assert "No refresher keeps this dataset fresh" in form[
        "refresher_status"]["default"]
    interval = form["interval_minutes"]
    assert interval["default"] == ais.get_settings().refresh_minutes
    assert interval["required"]
    choices = [c["value"] for c in form["refresh"]["view"]["choices"]]
    assert choices == [forms.REFRESH_THIS, forms.REFRESH_ALL,
                       forms.REFRESH_CHOSEN]
    assert form["refresh"]["default"] == forms.REFRESH_THIS
    assert "datasets" not in form  # only for chosen datasets
    # it says what it will run
    assert (f"refresher --interval-minutes "
            f"{ais.get_settings().refresh_minutes} --dataset "
            f"{dataset.name}") in form["service"]["view"]["label"]
    assert not _blocking(form)

    # chosen datasets: among those with AI search on
    form = _form(dataset, operator="start_refresher",
                 params={"refresh": forms.REFRESH_CHOSEN,
                         "datasets": [dataset.name, other.name]})
    offered = [c["value"] for c in form["datasets"]["view"]["choices"]]
    assert {dataset.name, other.name} <= set(offered)
    assert form["datasets"]["default"] == [dataset.name]
    assert f"--dataset {other.name}" in form["service"]["view"]["label"]

    # every dataset: no --dataset
    form = _form(dataset, operator="start_refresher",
                 params={"refresh": forms.REFRESH_ALL,
                         "interval_minutes": 3})
    assert form["service"]["view"]["label"].split(": ")[1].startswith(
        "python -m fiftyone_ai_search refresher --interval-minutes 3. ")


@pytest.mark.parametrize("minutes", [0, 1441, 2.5, -3, True, "ten"])
def test_an_interval_out_of_range_blocks_the_form(two, minutes):
    form = _form(two[0], operator="start_refresher",
                 params={"interval_minutes": minutes})
    assert _blocking(form)["interval_minutes"] == (
        f"A pass every 1 to 1440 minutes (a day), in whole minutes: not "
        f"{minutes!r}.")
    # the command it says it runs holds no interval it would not run with
    # (the default's was shown, as if the form would start it)
    assert ("refresher --interval-minutes MINUTES --dataset "
            f"{two[0].name}") in form["service"]["view"]["label"]
    with pytest.raises(ValueError, match="A pass every 1 to 1440 minutes"):
        _execute(two[0], "start_refresher",
                 params={"interval_minutes": minutes})
    assert not refreshers.refreshers_of(two[0].name)["running"]


def test_chosen_datasets_must_have_ai_search_on(two):
    params = {"refresh": forms.REFRESH_CHOSEN,
              "datasets": [two[0].name, "no-such-dataset"]}
    form = _form(two[0], operator="start_refresher", params=params)
    assert _blocking(form)["datasets"] == (
        "AI search is off for 'no-such-dataset': a refresher only "
        "refreshes datasets with AI search on.")
    params["datasets"] = []
    form = _form(two[0], operator="start_refresher", params=params)
    assert _blocking(form)["datasets"] == "Choose one dataset or more."
    # no --dataset would read as every dataset
    assert form["service"]["view"]["label"].split(": ")[1].startswith(
        "python -m fiftyone_ai_search refresher --interval-minutes "
        f"{ais.get_settings().refresh_minutes} --dataset DATASET. ")


def test_this_dataset_with_ai_search_off_is_said(tmp_path, two):
    off = shapes_dataset(tmp_path, num_samples=2, enable=False)
    form = _form(off, operator="start_refresher")
    assert _blocking(form)["refresh"].startswith(
        "AI search is off for this dataset: switch it on first")
    # every dataset with AI search on: what there is to refresh
    form = _form(off, operator="start_refresher",
                 params={"refresh": forms.REFRESH_ALL})
    assert not _blocking(form)


@pytest.mark.parametrize("params, datasets, scope", [
    ({"interval_minutes": 7}, "this", "this dataset"),
    ({"interval_minutes": 7.0, "refresh": forms.REFRESH_ALL}, None,
     "every dataset with AI search on"),
    ({"interval_minutes": 7, "refresh": forms.REFRESH_CHOSEN,
      "datasets": ["this", "other"]}, ["this", "other"],
     "2 datasets, this one included"),
])
def test_it_starts_a_service_with_the_options_chosen(two, params, datasets,
                                                     scope):
    dataset, other = two
    names = {"this": dataset.name, "other": other.name}
    if "datasets" in params:
        params = dict(params, datasets=[names[n] for n in params["datasets"]])
    result, asked = _execute(dataset, "start_refresher", params=params)
    pid = result["pid"]
    try:
        (note,) = asked["notify"]
        assert note["message"].startswith(
            f"Started a refresher (pid {pid}): a pass every 7 min over ")
        (running,) = refreshers.refreshers_of(dataset.name)["running"]
        assert running["pid"] == pid and running["interval_minutes"] == 7
        expected = datasets if datasets is None else (
            [dataset.name] if datasets == "this" else
            [names[n] for n in datasets])
        assert running["datasets"] == expected
        # a service of its own, started with those options
        argv = _argv_of_service(pid)
        assert argv[argv.index(b"--interval-minutes") + 1] == b"7"
        assert [argv[i + 1].decode() for i, a in enumerate(argv)
                if a == b"--dataset"] == (expected or [])
        text, is_running = forms.refresher_status(dataset)
        assert is_running and f"a pass every 7 min over {scope}." in text
    finally:
        _stop(pid)


def test_the_panel_opens_the_form_and_shows_what_started(two):
    dataset = two[0]
    panel = _Panel(dataset)
    panel("on_load")
    assert "start_refresher" in panel.render()
    panel("on_start_refresher")
    (prompt,) = panel.asked("prompt_user_for_operation")
    assert prompt["operator_uri"] == uri("start_refresher")
    assert not panel.asked("patch_panel_state")  # nothing written yet
    result, _ = _execute(dataset, "start_refresher",
                         params={"interval_minutes": 5})
    try:
        panel("on_refresher_started")  # the prompt's on_success
        # in one write of its state; no button now
        assert len(panel.asked("patch_panel_state")) == 1
        props = panel.render()
        assert (f"(pid {result['pid']}): a pass every 5 min over this "
                "dataset") in props["refresher"]["default"]
        assert "start_refresher" not in props
    finally:
        _stop(result["pid"])
