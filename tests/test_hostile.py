"""Hostile inputs and broken environments (issue 21): poisoned vectors,
damaged state documents, corrupt index files, torn collections, a full
disk. Each must fail alone with an error that says what is wrong and what
repairs it, never hang, poison or tear anything; and disable always works.

Real components throughout: the bundled tiny CLIP, the embedded index,
a private mongod.
"""

import numpy as np
import pytest

import fiftyone_ai_search as ais
from fiftyone_ai_search.index import indexes
from fiftyone_ai_search.errors import IndexDamagedError
from fiftyone_ai_search.store import edge, sample_id_to_point_id

from fiftyone_ai_search.demo import tiny_clip_model_name

from tests.helpers import server_dataset_by_secrets, shapes_dataset

# each test builds, damages and repairs an index of its own (worker
# processes, rebuilds): ~100 s of CPU, a fifth of the fast tier's
pytestmark = pytest.mark.slow

KEY = "ai_search"


def _indexed(tmp_path, num_samples=12):
    dataset = shapes_dataset(tmp_path, num_samples=num_samples)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    return dataset


def _store(dataset):
    return indexes.open_index(dataset)


# -- (2) poisoned vectors ------------------------------------------------------


def test_vectors_whose_norm_overflows_float32_are_stored_right(tmp_path):
    dataset = _indexed(tmp_path)
    index = dataset.load_brain_results(KEY)
    ids = dataset.values("id")[:2]
    huge = np.full((2, 64), 3e38, dtype=np.float32)  # norm: no float32
    huge[1, ::2] = -3e38

    index.add_to_index(huge, ids)

    held = dict(zip(*ais.get_embeddings(dataset)))
    np.testing.assert_allclose(held[ids[0]], np.full(64, 0.125), atol=1e-6)
    np.testing.assert_allclose(held[ids[1]], huge[1] / 3e38 / 8, atol=1e-6)
    # and everything that reads all vectors works
    assert ais.perform_ai_search(dataset, method="centroids", limit=5)


@pytest.mark.parametrize("bad, problem", [
    (np.zeros(64), "must not be zero"),
    (np.full(64, 1e-50), "must not be zero"),  # zero in float32
    (np.full(64, np.nan), "must be finite"),
    (np.r_[np.ones(63), np.inf], "must be finite"),
    (np.full(64, 1e39), "must be finite"),  # inf in float32
    (np.ones(65), "size 64"),
])
def test_unusable_vectors_are_refused_at_every_write(tmp_path, bad, problem):
    dataset = _indexed(tmp_path, num_samples=4)
    before = dict(zip(*ais.get_embeddings(dataset)))
    sample_id = dataset.first().id
    store = _store(dataset)
    vectors = np.stack([np.ones(len(bad)), bad])
    two = [dataset.values("id")[1], sample_id]

    # the Brain's add_to_index goes through the sync's write_given, which
    # goes through the store's upsert: each refuses, nothing written
    from fiftyone_ai_search.sync.images import write_given

    with pytest.raises(ValueError, match=problem):
        write_given(dataset, store, two, vectors)
    with pytest.raises(ValueError, match=problem):
        store.upsert(two, vectors, [{}, {}])
    if len(bad) == 64:
        with pytest.raises(ValueError, match=problem):
            dataset.load_brain_results(KEY).add_to_index(vectors, two)

    after = dict(zip(*ais.get_embeddings(dataset)))
    assert after.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_verify_files_repairs_vectors_that_slipped_in(tmp_path):
    dataset = _indexed(tmp_path)
    good = dict(zip(*ais.get_embeddings(dataset)))
    zero, nan = dataset.values("id")[3:5]
    store = _store(dataset)
    # as an older version would have stored them: past the checks
    store._upsert_points(
        [sample_id_to_point_id(zero), sample_id_to_point_id(nan)],
        np.stack([np.zeros(64), np.full(64, np.nan)]).astype(np.float32),
        [{"sample_id": zero}, {"sample_id": nan}])
    store.close()

    # what reads them says what is wrong and what repairs it
    with pytest.raises(IndexDamagedError, match="verify_files=True"):
        ais.get_embeddings(dataset)
    with pytest.raises(IndexDamagedError, match="verify_files=True"):
        ais.perform_ai_search(dataset, method="centroids", limit=5)
    # a plain sync sees nothing changed; the full check finds them
    report = ais.calculate_embeddings(dataset, wait=True, verify_files=True,
                                      progress=False)

    assert report.added == 2 and report.failed == 0
    repaired = dict(zip(*ais.get_embeddings(dataset)))
    assert repaired.keys() == good.keys()
    for k in good:
        np.testing.assert_allclose(repaired[k], good[k], atol=1e-6)


# -- (5) damaged state documents -----------------------------------------------


def _in_time(call, seconds=60):
    """``call()``'s result or error, failing if it takes over ``seconds``
    (a loop that never ends)."""
    import threading

    out = {}

    def run():
        try:
            out["result"] = call()
        except BaseException as e:  # noqa: BLE001 (handed to the test)
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["result"]


@pytest.mark.parametrize("garbage, problem", [
    ({"enabled": "yes"}, "enabled"),
    ({"build": {}}, "build"),
    ({"index": "garbage"}, "index"),
    ({"lease": {"token": "t", "host": "elsewhere", "pid": 1}}, "lease"),
    ({"retired": "notalist"}, "retired"),
    ({"schema_version": "2"}, "schema_version"),
    ({"watermark": "yesterday"}, "watermark"),
    ({"generation": None}, "generation"),
])
def test_a_damaged_state_says_so_never_loops_and_disable_repairs_it(
        tmp_path, garbage, problem):
    import os

    from fiftyone_ai_search.index import state as st
    from fiftyone_ai_search.errors import StateDamagedError

    dataset = _indexed(tmp_path, num_samples=6)
    index_dir = _store(dataset).path
    st._states().update_one({"_id": st.dataset_key(dataset)},
                            {"$set": garbage})

    # every call says what is wrong and what repairs it, at once
    for call in (
        lambda: ais.calculate_embeddings(dataset, wait=True, progress=False),
        lambda: ais.calculate_embeddings(dataset, force=True, wait=True,
                                         progress=False),
        lambda: ais.perform_ai_search(dataset, prompt="a red circle"),
        lambda: ais.get_status(dataset),
        lambda: ais.get_embeddings(dataset),
    ):
        with pytest.raises(StateDamagedError) as e:
            _in_time(call)
        assert problem in str(e.value)
        assert "disable_embeddings(dataset)" in str(e.value)
        assert dataset.name in str(e.value)

    # disable always works, and leaves nothing behind
    _in_time(lambda: ais.disable_embeddings(dataset))
    assert st.get(dataset) is None
    assert not os.path.exists(index_dir)
    # enable again: a working index
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          compute=False)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert ais.perform_ai_search(dataset, prompt="a red circle", limit=3)


# -- (4) corrupt index files ---------------------------------------------------


def _truncate(path, keep=0):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:keep])


def _garbage(path):
    with open(path, "wb") as f:
        f.write(b"\x00garbage\xff" * 50)


def _damage_segments(index_dir):
    import os

    for root, _, files in os.walk(os.path.join(index_dir, "shard")):
        for name in files:
            if not name.endswith(".json"):
                _garbage(os.path.join(root, name))


def _replace_by_file(index_dir):
    import shutil

    shutil.rmtree(index_dir)
    with open(index_dir, "w") as f:
        f.write("not an index")


def _learn_cells(dataset):
    ais.maintain_index(dataset, min_points=1)
    assert _store(dataset).cells() is not None


@pytest.mark.parametrize("damage, says", [
    (lambda d, cells: _truncate(f"{d}/index.json", 10), "index.json"),
    (lambda d, cells: _truncate(f"{d}/index.json"), "index.json"),
    (lambda d, cells: __import__("shutil").rmtree(f"{d}/shard"), "shard"),
    (lambda d, cells: _damage_segments(d), "shard"),
    (lambda d, cells: _garbage(f"{d}/cells.json"), "cells.json"),
    (lambda d, cells: _truncate(cells, 100), "cell centres"),
    (lambda d, cells: _replace_by_file(d), "not a directory"),
])
def test_a_damaged_index_is_said_and_a_plain_sync_rebuilds_it(
        tmp_path, damage, says):
    import glob
    import os

    dataset = _indexed(tmp_path, num_samples=16)
    _learn_cells(dataset)
    best = ais.get_collection_scores(
        dataset, ais.perform_ai_search(dataset, prompt="a red circle",
                                       limit=5))
    index_dir = _store(dataset).path
    indexes.open_index(dataset).close()
    damage(index_dir, glob.glob(f"{index_dir}/cells-*.npy")[0])
    edge._cells_cache.clear()  # what this process read: as a new process

    # searches say what is wrong and what repairs it; so does the status
    with pytest.raises(IndexDamagedError) as e:
        ais.perform_ai_search(dataset, prompt="a red circle", limit=5)
    assert says in str(e.value)
    assert "calculate_embeddings(dataset, wait=True)" in str(e.value)
    status = ais.get_status(dataset)
    assert status["counts"]["num_indexed"] is None
    assert says in status["index_error"]

    # a plain sync rebuilds it beside, and searches work as before
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert report.rebuilt and report.added == 16
    again = ais.get_collection_scores(
        dataset, ais.perform_ai_search(dataset, prompt="a red circle",
                                       limit=5))
    assert [i for i, _ in again] == [i for i, _ in best]
    assert not os.path.exists(index_dir)  # the damaged one was dropped
    assert ais.get_status(dataset)["counts"]["num_indexed"] == 16


def test_disable_removes_a_damaged_index(tmp_path):
    import os

    for damage in (_replace_by_file, _damage_segments,
                   lambda d: _truncate(f"{d}/index.json", 3)):
        dataset = _indexed(tmp_path, num_samples=4)
        index_dir = _store(dataset).path
        indexes.open_index(dataset).close()
        damage(index_dir)

        ais.disable_embeddings(dataset)

        assert not os.path.exists(index_dir)
        assert not ais.is_embeddings_enabled(dataset)


def test_the_refresher_rebuilds_a_damaged_index(tmp_path):
    from fiftyone_ai_search.scheduler import refresh_all

    dataset = _indexed(tmp_path, num_samples=8)
    _learn_cells(dataset)
    index_dir = _store(dataset).path
    indexes.open_index(dataset).close()
    _garbage(f"{index_dir}/cells.json")

    report = refresh_all([dataset.name])

    assert report.synced[dataset.name].rebuilt
    assert ais.perform_ai_search(dataset, prompt="a red circle", limit=3)


# -- (3) torn collections ------------------------------------------------------


def _view_and_scores(dataset, name=ais.TEMPORARY_COLLECTION):
    dataset.reload()  # saved views written by other processes
    view_ids = dataset.load_saved_view(name).values("id")
    return view_ids, [i for i, _ in ais.get_collection_scores(dataset, name)]


def test_near_duplicates_take_a_numpy_threshold(tmp_path):
    dataset = _indexed(tmp_path, num_samples=12)
    ais.perform_ai_search(dataset, prompt="a red circle", limit=3)

    name = ais.find_near_duplicates(dataset, threshold=np.float32(0.5))

    view_ids, score_ids = _view_and_scores(dataset, name)
    assert view_ids == score_ids and len(view_ids) > 3
    query = [c for c in ais.list_collections(dataset)
             if c["name"] == name][0]["query"]
    assert query["threshold"] == 0.5


def test_a_collection_that_cannot_be_stored_changes_nothing(tmp_path):
    from fiftyone_ai_search import results as colls

    dataset = _indexed(tmp_path, num_samples=12)
    ais.perform_ai_search(dataset, prompt="a red circle", limit=3)
    before = _view_and_scores(dataset)

    with pytest.raises(Exception, match="(?i)encode|document"):
        colls.write_collection(dataset, ais.TEMPORARY_COLLECTION,
                               dataset.values("id"), [0.5] * 12,
                               query={"bad": object()})

    assert _view_and_scores(dataset) == before


def _search_loop(name, prompt, rounds, gos, done):
    import fiftyone as fo

    import fiftyone_ai_search as ais

    dataset = fo.load_dataset(name)
    for go in gos:  # a round each, all processes at once
        go.wait(180)
        dataset.reload()  # as a fresh process would load it
        for n in range(rounds):
            ais.perform_ai_search(dataset, prompt=prompt, limit=3 + n % 9)
        done.put(prompt)


@pytest.mark.slow
def test_concurrent_searches_never_tear_the_temporary_collection(tmp_path):
    import multiprocessing
    import queue
    import time

    spawn = multiprocessing.get_context("spawn")
    dataset = _indexed(tmp_path, num_samples=30)
    prompts = ["a red circle", "a blue square", "a green triangle"]
    ais.perform_ai_search(dataset, prompt="a yellow star", limit=2)

    # two rounds in the same three processes (each process start imports
    # FiftyOne and torch: seconds of the run), checked after each round
    gos, done = [spawn.Event(), spawn.Event()], spawn.Queue()
    procs = [spawn.Process(target=_search_loop,
                           args=(dataset.name, p, 12, gos, done))
             for p in prompts]
    for p in procs:
        p.start()
    try:
        for go in gos:
            go.set()
            for _ in procs:  # each says when its round is done
                deadline = time.monotonic() + 180
                while True:
                    try:
                        done.get(timeout=0.5)
                        break
                    except queue.Empty:
                        codes = [p.exitcode for p in procs]
                        assert not any(codes), f"a search failed: {codes}"
                        assert time.monotonic() < deadline, "no round end"
            view_ids, score_ids = _view_and_scores(dataset)
            assert view_ids == score_ids
            # what get_collection hands out agrees with the scores too
            got = ais.get_collection(dataset, ais.TEMPORARY_COLLECTION)
            assert got.values("id") == score_ids
        for p in procs:
            p.join(180)
        assert [p.exitcode for p in procs] == [0, 0, 0]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()


# -- (1) a full disk -----------------------------------------------------------

_FILL = """
import sys
import numpy as np
sys.path.insert(0, {repo!r})  # where the tests package is
from tests.test_store import INFO, make_ids, make_vectors, payloads_for
from fiftyone_ai_search.errors import DiskFullError
from fiftyone_ai_search.store.edge import EdgeStore

store = EdgeStore("full", {root!r})
store.ensure(INFO)
written = 0
try:
    for k in range(200):
        ids = make_ids(2000, seed=k)
        store.upsert(ids, make_vectors(2000, seed=k), payloads_for(ids))
        written += 2000
except DiskFullError as e:
    print("REFUSED", e)
assert store.count() == written, (store.count(), written)
print("FOUND", len(store.query(make_vectors(1)[0], 5)))
"""


@pytest.mark.slow
def test_a_full_disk_refuses_writes_and_keeps_serving_searches(tmp_path):
    import os
    import subprocess
    import sys

    root = tmp_path / "small"
    root.mkdir()
    # room for a few writes above the reserve (edge.RESERVE_BYTES) beside
    # the empty shard (~6 MB: its three payload indexes), then a full disk
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs",
                       str(root)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root?)")
    try:
        # in a process of its own: without the check it dies of SIGBUS
        out = subprocess.run(
            [sys.executable, "-c", _FILL.format(
                repo=os.path.dirname(os.path.dirname(__file__)),
                root=str(root))],
            capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(["umount", "-l", str(root)])

    assert out.returncode == 0, out.stderr[-2000:]
    assert f"REFUSED Not enough free space" in out.stdout
    assert str(root) in out.stdout and "MiB needed" in out.stdout
    assert "FOUND 5" in out.stdout


# -- (8) samples deleted but not yet synced ------------------------------------


@pytest.mark.parametrize("query", [
    dict(prompt="a red circle"),
    dict(method="centroids"),
    dict(image_id=0),  # the first sample (kept), by position
])
def test_deleted_samples_not_yet_synced_never_count_against_the_limit(
        tmp_path, query):
    dataset = _indexed(tmp_path, num_samples=30)
    if "image_id" in query:
        query = dict(image_id=dataset.first().id)
    name = ais.perform_ai_search(dataset, limit=10, **query)
    top = [i for i, _ in ais.get_collection_scores(dataset, name)]
    assert len(top) == 10
    gone = [i for i in top if i != query.get("image_id")][-3:]
    dataset.delete_samples(gone)  # no sync after it

    name = ais.perform_ai_search(dataset, limit=10, **query)

    scores = ais.get_collection_scores(dataset, name)
    assert len(scores) == 10
    assert not {i for i, _ in scores} & set(gone)
    assert len(ais.get_collection(dataset, name)) == 10
    # the search within a view (the same search, the same result)
    name = ais.perform_ai_search(dataset.limit(100), limit=10, **query)
    assert len(ais.get_collection(dataset, name)) == 10


def test_sort_by_similarity_fills_k_from_the_live_dataset(tmp_path):
    dataset = _indexed(tmp_path, num_samples=30)
    first = dataset.sort_by_similarity("a red circle", k=10, brain_key=KEY)
    top = first.values("id")
    dataset.delete_samples(top[-3:])

    view = dataset.sort_by_similarity("a red circle", k=10, brain_key=KEY)

    assert len(view) == 10
    assert view.values("id")[:7] == top[:7]


def test_objects_of_deleted_samples_never_count_against_the_limit(tmp_path):
    from fiftyone_ai_search.demo import shapes

    dataset = shapes.make_scenes_dataset(
        name="objects-" + tmp_path.name[-20:], num_samples=20, seed=1,
        images_dir=str(tmp_path / "scenes"))
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          patches_field="ground_truth", compute=False)
    ais.calculate_embeddings(dataset, patches_field="ground_truth",
                             wait=True, progress=False)
    query = dict(prompt="a red circle", patches_field="ground_truth",
                 limit=10)
    top = ais.get_collection(dataset, ais.perform_ai_search(dataset, **query))
    gone = list(dict.fromkeys(top.values("sample_id")))[-2:]
    dataset.delete_samples(gone)

    patches = ais.get_collection(dataset,
                                 ais.perform_ai_search(dataset, **query))

    assert len(patches) == 10
    assert not set(patches.values("sample_id")) & set(gone)


# -- (9) a rebuild's switch under a reader ----------------------------------------


def _switch_before_first_open(monkeypatch, dataset):
    """Makes a forced rebuild switch over (and drop the former index)
    between a reader's read of the state and its opening of the index the
    state named: the interleaving that made get_status and get_embeddings
    fail under load, made certain."""
    real = indexes.open_ref
    switched = []

    def open_ref(ref, settings=None):
        if not switched:
            switched.append(ref.name)
            ais.calculate_embeddings(dataset, force=True, wait=True,
                                     progress=False)
            assert indexes.open_index(dataset).name != ref.name
        return real(ref, settings)

    monkeypatch.setattr(indexes, "open_ref", open_ref)
    return switched


@pytest.mark.parametrize("read", ["get_status", "get_embeddings",
                                  "perform_ai_search"])
def test_readers_read_the_new_index_when_a_rebuild_switches_under_them(
        tmp_path, monkeypatch, read):
    dataset = _indexed(tmp_path)
    ids = dataset.values("id")
    switched = _switch_before_first_open(monkeypatch, dataset)

    if read == "get_status":
        status = ais.get_status(dataset)
        assert status["counts"]["num_indexed"] == 12
        assert "index_error" not in status
    elif read == "get_embeddings":
        held, vectors = ais.get_embeddings(dataset)
        assert held == ids and vectors.shape == (12, 64)
    else:
        name = ais.perform_ai_search(dataset, prompt="a red circle", limit=5)
        assert len(ais.get_collection(dataset, name)) == 5
    assert switched  # the switch did happen under the reader


# -- (10) an image that would take minutes to decode ------------------------------


def _jpeg_header_then_zeros(path, size):
    """A JPEG's first segment followed by zeros up to ``size`` bytes: a
    sparse file, so it costs no disk. PIL scans the zeros a byte at a time
    for the next marker (2 GB took ~8 min to fail)."""
    import io

    from PIL import Image

    data = io.BytesIO()
    Image.new("RGB", (8, 8)).save(data, "JPEG")
    with open(path, "wb") as f:
        f.write(data.getvalue()[:20])  # SOI + APP0
        f.truncate(size)
    return str(path)


def _sync_with(dataset, path):
    import fiftyone as fo

    sample = fo.Sample(filepath=path)
    dataset.add_sample(sample)
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)
    reasons = {f["sample_id"]: f["reason"]
               for f in ais.get_status(dataset)["failures"]}
    return report, reasons[sample.id]


def test_an_image_file_over_the_byte_limit_fails_alone_unread(tmp_path):
    dataset = _indexed(tmp_path, num_samples=4)
    huge = _jpeg_header_then_zeros(tmp_path / "huge.jpg", 2 << 30)  # 2 GiB

    report, reason = _sync_with(dataset, huge)

    assert reason == (
        f"file too large: {2 << 30} bytes > limit {1 << 30} (1024 MiB); "
        "raise the limit with FIFTYONE_AI_SEARCH_MAX_IMAGE_BYTES")
    assert report.failed == 1
    assert ais.get_status(dataset)["counts"]["num_indexed"] == 4


def test_an_image_that_takes_too_long_to_decode_fails_alone(
        tmp_path, monkeypatch):
    dataset = _indexed(tmp_path, num_samples=4)
    # within a byte limit raised for it, 1 GiB of zeros: a billion reads of
    # a byte, minutes on any machine, far beyond the 1 s allowed
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_MAX_IMAGE_BYTES", str(2 << 30))
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_DECODE_TIMEOUT", "1")
    slow = _jpeg_header_then_zeros(tmp_path / "slow.jpg", 1 << 30)

    report, reason = _sync_with(dataset, slow)

    assert reason.startswith("decoding took more than 1 s (the limit), ")
    assert reason.endswith(
        "raise the limit with FIFTYONE_AI_SEARCH_DECODE_TIMEOUT")
    assert report.failed == 1
    assert ais.get_status(dataset)["counts"]["num_indexed"] == 4
    name = ais.perform_ai_search(dataset, prompt="a red circle", limit=10)
    assert len(ais.get_collection(dataset, name)) == 4


# -- (6) clocks that disagree between hosts -------------------------------------


def _host_clock_ahead(monkeypatch, seconds):
    """Makes this process's clock (the host's, as state.py reads it) run
    ``seconds`` ahead; FiftyOne's own stamps (an edit made from another
    host) keep the true time."""
    import datetime as real

    from fiftyone_ai_search.index import state as st

    skew = real.timedelta(seconds=seconds)

    class SkewedDatetime(real.datetime):
        @classmethod
        def now(cls, tz=None):
            return real.datetime.now(tz) + skew

        @classmethod
        def utcnow(cls):
            return real.datetime.utcnow() + skew

    clock = type("datetime", (), dict(vars(real)))
    clock.datetime = SkewedDatetime
    monkeypatch.setattr(st, "datetime", clock)


def test_a_sync_on_a_host_whose_clock_runs_ahead_misses_no_edit(
        tmp_path, monkeypatch):
    dataset = _indexed(tmp_path, num_samples=10)
    _host_clock_ahead(monkeypatch, 300)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    # edits made afterwards from a host whose clock is right
    edited = dataset.limit(4)
    paths = edited.values("filepath")
    edited.set_values("filepath", paths[::-1])

    report = ais.calculate_embeddings(dataset, wait=True, progress=False)

    assert report.updated == 4


def test_a_dead_lease_holder_whose_clock_ran_ahead_blocks_no_one(
        tmp_path, monkeypatch):
    import socket
    import time

    from fiftyone_ai_search.index import state as st

    dataset = _indexed(tmp_path, num_samples=4)
    # a computation on another host whose clock runs 300 s ahead takes the
    # lease, then dies (its heartbeat stops, the lease stays)
    with monkeypatch.context() as other_host:
        _host_clock_ahead(other_host, 300)
        other_host.setattr(socket, "gethostname", lambda: "other-host")
        lease = st.try_acquire(dataset)
        lease._stop.set()
    assert ais.get_embeddings_in_progress(dataset)

    monkeypatch.setattr(st, "LEASE_STALE_SECONDS", 1.0)
    time.sleep(1.5)  # older than stale by any clock that agrees with itself

    assert not ais.get_embeddings_in_progress(dataset)
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert report.failed == 0


# -- (7) what a killed disable leaves --------------------------------------------


def test_the_refresher_removes_what_a_killed_disable_left(tmp_path,
                                                          monkeypatch):
    from fiftyone_ai_search.index import state as st
    from fiftyone_ai_search.scheduler import refresh_all

    dataset = _indexed(tmp_path, num_samples=4)
    ais.perform_ai_search(dataset, prompt="a red circle", limit=2)
    store = _store(dataset)
    # a disable killed right after its first write (switched off, nothing
    # removed yet)
    st.disable(dataset)
    assert not ais.is_embeddings_enabled(dataset)

    # a disable that may still be running elsewhere is left to finish
    assert refresh_all([dataset.name]).removed == []
    assert store.exists() and st.get(dataset) is not None

    monkeypatch.setattr(st, "ABANDONED_DISABLE_SECONDS", 0.0)
    report = refresh_all([dataset.name])

    assert report.removed == [dataset.name] and not report.errors
    assert not store.exists()
    assert st.get(dataset) is None
    assert KEY not in dataset.list_brain_runs()
    assert ais.list_collections(dataset) == []  # the latest results went
    # and AI search can be switched on again
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          compute=False)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert ais.get_status(dataset)["counts"]["num_indexed"] == 4


def test_a_dataset_deleted_mid_sync_ends_its_worker_cleanly(tmp_path,
                                                             monkeypatch,
                                                             capsys):
    """The worker's command (``python -m fiftyone_ai_search sync``), run
    here, with the dataset deleted at the check a sync makes before a
    commit, once 10 images are committed: where a deletion from another
    process lands between two commits."""
    import os

    from fiftyone_ai_search import __main__ as cli
    from fiftyone_ai_search.index import state as st
    from fiftyone_ai_search.config import get_settings

    from tests.helpers import at_the_check_before_a_commit

    monkeypatch.setenv("FIFTYONE_AI_SEARCH_BATCH_SIZE", "2")
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_NUM_WORKERS", "0")
    dataset = shapes_dataset(tmp_path, num_samples=40)
    key = st.dataset_key(dataset)
    name = dataset.name
    deleted = at_the_check_before_a_commit(monkeypatch, dataset, 10,
                                           dataset.delete)

    status = cli.main(["sync", "--quiet", "--dataset", name])

    said = capsys.readouterr()
    said = said.out + said.err
    assert deleted  # mid-sync
    assert status == 0, said
    assert "Traceback" not in said
    assert f"dataset '{name}' was deleted" in said
    # and what it had made of it is gone
    assert st.get_key(key) is None
    assert not [n for n in os.listdir(get_settings().storage_dir)
                if key in n]


def test_disable_of_a_server_index_whose_url_is_only_in_plugin_secrets(
        tmp_path, monkeypatch):
    from fiftyone_ai_search.index import state as st
    from fiftyone_ai_search.config import get_settings
    from fiftyone_ai_search.store import open_store

    monkeypatch.delenv("FIFTYONE_AI_SEARCH_QDRANT_URL", raising=False)
    secrets = {"FIFTYONE_AI_SEARCH_QDRANT_URL": ":memory:"}
    dataset, name = server_dataset_by_secrets(tmp_path, 4, secrets)
    server = get_settings(secrets=secrets)
    assert open_store(name, server).exists()
    assert KEY in dataset.list_brain_runs()

    # without the URL: refused before anything changed
    with pytest.raises(ValueError, match="FIFTYONE_AI_SEARCH_QDRANT_URL"):
        ais.disable_embeddings(dataset)
    assert ais.is_embeddings_enabled(dataset)
    assert KEY in dataset.list_brain_runs()
    assert open_store(name, server).exists()

    # with the App's plugin secrets: all of it goes
    ais.disable_embeddings(dataset, secrets=secrets)
    assert not ais.is_embeddings_enabled(dataset)
    assert st.get(dataset) is None
    assert KEY not in dataset.list_brain_runs()
    assert not open_store(name, server).exists()
