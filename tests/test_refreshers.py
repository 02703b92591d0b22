"""What the App says of the refreshers (issue 26, point 9): whether one keeps
a dataset fresh, when a pass last looked at it and what it did, and starting
one as a background service from the panel."""

import os
import signal
import socket
import time

import pytest

import fiftyone_ai_search as ais
from fiftyone_ai_search import refreshers
from fiftyone_ai_search.app import forms
from fiftyone_ai_search.scheduler import Refresher, refresh_all

from tests.helpers import add_shape_samples, shapes_dataset
from tests.test_operators import _Panel, _execute
from tests.test_operators import repo_as_plugin  # noqa: F401 (the plugin, found)


@pytest.fixture(autouse=True)
def no_records():
    """Each test sees only the refreshers it starts."""
    refreshers._coll().delete_many({})
    yield
    refreshers._coll().delete_many({})


def _wait(condition, what, seconds=180):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_a_one_off_pass_is_recorded_for_the_app(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=6, seed=3)
    assert refreshers.refreshers_of(dataset.name) == {
        "running": [], "last_pass": None}
    text, running = forms.refresher_status(dataset)
    assert not running and "No refresher keeps this dataset fresh" in text
    assert "No refresher pass has looked at it yet" in text

    add_shape_samples(dataset, tmp_path, num_samples=2, seed=4)
    refresh_all([dataset.name])  # as `refresher --once` (cron) runs it
    info = refreshers.refreshers_of(dataset.name)
    assert info["running"] == []  # a one-off pass keeps nothing fresh
    (outcome,) = info["last_pass"]["outcomes"]
    assert outcome[0] == dataset.name and outcome[1].startswith(
        "synced: added 8, updated 0")
    text, _ = forms.refresher_status(dataset)
    assert "by a one-off pass (refresher --once): images: synced: added 8" \
        in text

    report = refresh_all([dataset.name])  # the newest pass is the one said
    said = (f"images: synced: {report.synced[dataset.name]}"
            if report.synced else "images: nothing changed")
    assert forms.refresher_status(dataset)[0].endswith(said + ".")
    # another dataset's record says nothing of this one
    assert refreshers.refreshers_of(dataset.name + "-other") == {
        "running": [], "last_pass": None}


def test_a_refresher_is_seen_while_it_runs_and_its_passes_stay(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=5, seed=5)
    refresher = Refresher(interval_minutes=60, datasets=[dataset.name])
    refresher.start()
    try:
        _wait(lambda: refresher.last_report is not None, "no first pass")
        info = refreshers.refreshers_of(dataset.name)
        (running,) = info["running"]
        assert running["pid"] == os.getpid()
        assert running["interval_minutes"] == 60
        assert running["datasets"] == [dataset.name]
        assert info["last_pass"]["outcomes"] == [(
            dataset.name,
            f"synced: {refresher.last_report.synced[dataset.name]}")]
        text, is_running = forms.refresher_status(dataset)
        assert is_running and text.startswith(
            f"**Kept fresh** by a refresher on {socket.gethostname()} (pid "
            f"{os.getpid()}): a pass every 60 min over this dataset.")
        # it covers only the datasets it was given
        assert refreshers.refreshers_of("another")["running"] == []
    finally:
        refresher.stop()

    info = refreshers.refreshers_of(dataset.name)
    assert info["running"] == []
    assert info["last_pass"]["by"] == (
        f"the refresher on {socket.gethostname()} (pid {os.getpid()})")


def test_a_refresher_whose_heartbeat_stopped_is_gone():
    # another host's refresher, last heard of long ago (a kill -9 there)
    refreshers._coll().insert_one({
        "host": "elsewhere", "pid": 1, "interval_minutes": 10,
        "datasets": None, "once": False, "stopped": False})
    refreshers._coll().update_one({"host": "elsewhere"}, [{"$set": {
        "seen_at": {"$subtract": [
            "$$NOW", (refreshers.STALE_SECONDS + 5) * 1000]}}}])
    assert refreshers.refreshers_of("any")["running"] == []
    # heard of now: it covers every dataset
    refreshers._coll().update_one({"host": "elsewhere"},
                                  {"$currentDate": {"seen_at": True}})
    (running,) = refreshers.refreshers_of("any")["running"]
    assert running["host"] == "elsewhere" and running["datasets"] is None


@pytest.mark.slow
def test_the_panel_starts_a_refresher_service_and_says_what_it_did(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=6, seed=6)
    panel = _Panel(dataset)
    panel("on_load")
    props = panel.render()
    assert "No refresher keeps this dataset fresh" in props["refresher"][
        "default"]
    assert "start_refresher" in props

    # its form (tests/test_app_refresher.py), run with its defaults
    panel("on_start_refresher")
    (prompt,) = panel.asked("prompt_user_for_operation")
    assert prompt["operator_uri"].endswith("/start_refresher")
    pid = _execute(dataset, "start_refresher")[0]["pid"]
    panel("on_refresher_started")
    try:
        # seen at once, in the event's one state write; no button now
        assert len(panel.asked("patch_panel_state")) == 1
        props = panel.render()
        assert f"**Kept fresh** by a refresher on {socket.gethostname()} " \
            f"(pid {pid})" in props["refresher"]["default"]
        assert "start_refresher" not in props
        # the service runs its first pass by itself, outside this process
        _wait(lambda: refreshers.refreshers_of(dataset.name)["last_pass"],
              "the service ran no pass")
        panel("on_refresh")
        assert "by the refresher on" in panel.render()["refresher"][
            "default"]
        assert "images: synced: added 6" in panel.render()["refresher"][
            "default"]
    finally:
        os.kill(pid, signal.SIGTERM)
    _wait(lambda: not refreshers.refreshers_of(dataset.name)["running"],
          "the service did not stop", seconds=60)
    panel("on_refresh")
    props = panel.render()
    assert "No refresher keeps this dataset fresh" in props["refresher"][
        "default"] and "start_refresher" in props
