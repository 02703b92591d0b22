"""The refresher: passes over the enabled datasets that sync what changed,
leave unchanged and busy datasets alone, clean up after deleted datasets,
keep going past a broken one; on a schedule, in-process and as a command."""

import datetime
import os
import shutil
import signal
import subprocess
import sys
import time

import fiftyone as fo
import pytest

import fiftyone_ai_search as ais
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search.sync import images as sync
from fiftyone_ai_search.sync import runner
from fiftyone_ai_search.demo import DEFAULT_MODEL_DIR
from fiftyone_ai_search.scheduler import Refresher, refresh_all
from fiftyone_ai_search.store import open_store

from tests.helpers import add_shape_samples, shapes_dataset


@pytest.fixture(autouse=True)
def no_watermark_margin(monkeypatch):
    """A sync sets its watermark a little before it started, so samples
    edited just before it count as changed once more (for writers whose
    clocks lag); here datasets are edited and synced within that margin, and
    the tests ask whether a pass finds changes *after* a sync."""
    monkeypatch.setattr(sync, "WATERMARK_MARGIN", datetime.timedelta(0))


def _synced(tmp_path, num_samples=12, seed=1):
    dataset = shapes_dataset(tmp_path, num_samples=num_samples, seed=seed)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    return dataset


def test_a_pass_syncs_what_changed_and_leaves_the_rest(tmp_path):
    edited = _synced(tmp_path, seed=1)
    unchanged = _synced(tmp_path, seed=2)
    never_indexed = shapes_dataset(tmp_path, num_samples=8, seed=3)
    add_shape_samples(edited, tmp_path, num_samples=4, seed=4)
    updated_at = ais.get_embeddings_updated_at(unchanged)

    report = refresh_all([edited.name, unchanged.name, never_indexed.name])

    assert set(report.synced) == {edited.name, never_indexed.name}
    assert report.synced[edited.name].added == 4
    assert report.synced[never_indexed.name].added == 8
    assert report.unchanged == [unchanged.name]
    assert not (report.busy or report.removed or report.errors)
    assert len(ais.get_embeddings(edited)[0]) == 16
    # nothing was run for the unchanged dataset
    assert ais.get_embeddings_updated_at(unchanged) == updated_at

    # and the next pass finds nothing to do
    again = refresh_all([edited.name, unchanged.name, never_indexed.name])
    assert not again.synced
    assert sorted(again.unchanged) == sorted(
        [edited.name, unchanged.name, never_indexed.name])


def test_edits_deletions_and_repaired_files_count_as_changes(tmp_path):
    dataset = _synced(tmp_path, num_samples=10)

    dataset.delete_samples(dataset.take(2, seed=0))
    report = refresh_all([dataset.name])
    assert report.synced[dataset.name].removed == 2

    # a tag edits the sample but not its image: a pass runs, embeds nothing
    dataset.take(1, seed=1).tag_samples("x")
    report = refresh_all([dataset.name])
    assert report.synced[dataset.name].added == 0
    assert report.synced[dataset.name].updated == 0

    # a failure whose file is then repaired is picked up without an edit
    sample = dataset.first()
    path = sample.filepath
    good = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(b"not an image")
    ais.calculate_embeddings(dataset, verify_files=True, wait=True,
                             progress=False)
    assert ais.get_status(dataset)["counts"]["num_failed"] == 1
    assert refresh_all([dataset.name]).unchanged == [dataset.name]

    with open(path, "wb") as f:
        f.write(good)
    report = refresh_all([dataset.name])
    # its stale vector went when it failed: it is embedded anew
    assert report.synced[dataset.name].added == 1
    assert ais.get_status(dataset)["counts"]["num_failed"] == 0


def test_a_running_computation_is_asked_to_sync_again_not_waited_for(
    tmp_path, monkeypatch,
):
    dataset = _synced(tmp_path)
    add_shape_samples(dataset, tmp_path, num_samples=2, seed=5)

    def acquire(*args, **kwargs):  # where a sync waits for the lease
        raise AssertionError("the pass waited for the running computation")

    # not waited for: the wait is never entered (no bound on the time the
    # call took, which depends on the machine)
    monkeypatch.setattr(runner, "acquire", acquire)
    lease = st.try_acquire(dataset)  # as another process computing it
    try:
        report = refresh_all([dataset.name])
        assert not report.errors
        assert report.busy == [dataset.name] and not report.synced
        assert st.take_rerun_request(dataset)
    finally:
        lease.release()


def test_a_deleted_datasets_index_and_state_are_removed(tmp_path):
    dataset = _synced(tmp_path)
    name, key = dataset.name, st.dataset_key(dataset)
    settings = ais.get_settings()
    index_name = st.get(dataset)["index"]["name"]
    store = open_store(index_name, settings)
    assert store.exists()
    store.close()

    dataset.delete()
    report = refresh_all([name])

    assert report.removed == [key]
    assert st.get_key(key) is None
    store = open_store(index_name, settings)
    try:
        assert not store.exists()
    finally:
        store.close()


def test_disabled_datasets_are_left_out(tmp_path):
    dataset = _synced(tmp_path)
    add_shape_samples(dataset, tmp_path, num_samples=2, seed=6)
    ais.disable_embeddings(dataset)

    report = refresh_all([dataset.name])

    assert not (report.synced or report.unchanged or report.busy
                or report.removed or report.errors)
    assert not ais.is_embeddings_enabled(dataset)


def test_one_broken_dataset_does_not_stop_the_pass(tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model_dir)
    broken = shapes_dataset(tmp_path, num_samples=6, seed=7, enable=False)
    ais.enable_embeddings(broken, model=f"local-dir:{model_dir}",
                          compute=False)
    shutil.rmtree(model_dir)  # its weights are gone
    healthy = shapes_dataset(tmp_path, num_samples=6, seed=8)

    report = refresh_all([broken.name, healthy.name])

    assert list(report.errors) == [broken.name]
    assert str(model_dir) in report.errors[broken.name]
    assert report.synced[healthy.name].added == 6
    # the broken dataset's status says what went wrong
    assert str(model_dir) in ais.get_status(broken)["last_error"]


def test_the_refresher_runs_a_first_pass_at_once_then_on_schedule(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=6, seed=9)

    refresher = ais.start_refresher(interval_minutes=60,
                                    datasets=[dataset.name])
    try:
        assert refresher.running and refresher.interval_minutes == 60
        # a second start while it runs is the same refresher
        assert ais.start_refresher() is refresher
        deadline = time.time() + 120
        while refresher.last_report is None and time.time() < deadline:
            time.sleep(0.2)
        assert refresher.last_report.synced[dataset.name].added == 6
    finally:
        ais.stop_refresher()

    assert not refresher.running


def test_the_refresh_interval_is_checked():
    with pytest.raises(ValueError,
                       match=r"^interval_minutes must be in \[1, 1440\]"):
        Refresher(interval_minutes=0)

    with pytest.raises(ValueError,
                       match=r"^interval_minutes must be in \[1, 1440\]"):
        Refresher(interval_minutes=1441)


@pytest.mark.slow
def test_the_refresher_command_runs_one_pass(tmp_path):
    dataset = _synced(tmp_path)
    add_shape_samples(dataset, tmp_path, num_samples=3, seed=10)
    env = dict(os.environ, FIFTYONE_DATABASE_URI=fo.config.database_uri)

    result = subprocess.run(
        [sys.executable, "-m", "fiftyone_ai_search", "refresher", "--once",
         "--dataset", dataset.name],
        env=env, capture_output=True, text=True, timeout=300,
    )

    assert result.returncode == 0, result.stderr
    assert f"'{dataset.name}': added 3" in result.stdout
    assert "synced 1, unchanged 0" in result.stdout
    assert len(ais.get_embeddings(dataset)[0]) == 15


@pytest.mark.slow
def test_the_refresher_service_syncs_at_once_and_stops_on_sigterm(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=5, seed=11)
    env = dict(os.environ, FIFTYONE_DATABASE_URI=fo.config.database_uri)
    service = subprocess.Popen(
        [sys.executable, "-m", "fiftyone_ai_search", "refresher",
         "--interval-minutes", "60", "--dataset", dataset.name],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.time() + 180
        while not ais.get_embeddings_updated_at(dataset):
            assert service.poll() is None, service.stdout.read()
            assert time.time() < deadline, "the first pass did not run"
            time.sleep(0.2)

        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=30) == 0
    finally:
        service.kill()

    assert len(ais.get_embeddings(dataset)[0]) == 5
    assert "AI search refresh: synced 1" in service.stdout.read()
