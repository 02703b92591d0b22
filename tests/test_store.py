"""The vector stores: one suite for both backends, plus what only the embedded
one has to prove (persistence, several processes, ``kill -9``, busy errors).

Needs neither FiftyOne nor MongoDB.
"""

import logging
import multiprocessing
import os
import signal
import threading
import time
import uuid

import numpy as np
import pytest

from fiftyone_ai_search.config import Settings
from fiftyone_ai_search.store import (
    IndexBusyError,
    IndexExistsError,
    IndexInfo,
    IndexMismatchError,
    IndexNotFoundError,
    open_store,
)
from fiftyone_ai_search.store import locks
from fiftyone_ai_search.store.edge import EdgeStore

DIM = 16
INFO = IndexInfo(
    model="ViT-B-32", pretrained="laion2b", model_identity="vitb32@abc", dim=DIM
)
OTHER = IndexInfo(
    model="RN50", pretrained="openai", model_identity="rn50@def", dim=DIM
)

SPAWN = multiprocessing.get_context("spawn")

# qdrant-client checks a server's version in the background and warns, later
# and in whatever test runs then, when there is no server (the API key test)
pytestmark = pytest.mark.filterwarnings(
    "ignore:Failed to obtain server version:UserWarning"
)


def make_ids(n, seed=0):
    rng = np.random.default_rng(seed)
    return [bytes(rng.integers(0, 256, 12, dtype=np.uint8)).hex() for _ in range(n)]


def make_vectors(n, dim=DIM, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def payloads_for(ids, tag="a"):
    return [{"filepath": f"/data/{i}.jpg", "fingerprint": f"{tag}:{i[:6]}"} for i in ids]


def brute_force(ids, vectors, query, limit, scope=None, min_score=None):
    scores = unit(vectors) @ unit(query)
    order = np.argsort(-scores, kind="stable")
    keep = None if scope is None else set(scope)
    result = []
    for i in order:
        if keep is not None and ids[i] not in keep:
            continue
        if min_score is not None and scores[i] < min_score:
            break
        result.append((ids[i], float(scores[i])))
        if len(result) == limit:
            break
    return result


def assert_same_results(got, expected, atol=1e-5):
    """Same ranking and scores; ids may swap only between near-ties."""
    assert len(got) == len(expected)
    np.testing.assert_allclose(
        [s for _, s in got], [s for _, s in expected], atol=atol
    )
    got_ids = [i for i, _ in got]
    assert len(set(got_ids)) == len(got_ids)
    true_score = dict(expected)
    for (gid, gscore), (eid, _) in zip(got, expected):
        if gid != eid and gid in true_score:
            assert abs(true_score[gid] - gscore) <= atol, (gid, eid)
    mismatches = sum(g != e for g, (e, _) in zip(got_ids, expected))
    assert mismatches <= max(2, len(got) // 100), mismatches


#: for a test whose server run is slow (qdrant-client's local mode computes
#: in Python): ``@SERVER_SLOW`` keeps its Edge run in the fast tier and puts
#: its server run in the full suite only (``pytest -m "not slow"``)
def _server_store(*args, **kwargs):
    """A :class:`ServerStore`. qdrant-client is imported where a test asks
    for one, not with this module: the processes its tests spawn (and
    tests/test_hostile.py's) import this module and need no server, and
    qdrant-client costs each of them ~1.5 s of CPU."""
    from fiftyone_ai_search.store.server import ServerStore

    return ServerStore(*args, **kwargs)


SERVER_SLOW = pytest.mark.parametrize(
    "store", ["edge", pytest.param("server", marks=pytest.mark.slow)],
    indirect=True)


@pytest.fixture(params=["edge", "server"])
def store(request, tmp_path):
    name = "test_" + uuid.uuid4().hex[:12]
    if request.param == "edge":
        s = EdgeStore(name, tmp_path / "indexes", lock_timeout=20)
    else:
        s = _server_store(name, location=":memory:")
    yield s
    s.drop()


@pytest.fixture
def filled(store):
    """A store holding 500 random vectors."""
    store.ensure(INFO)
    ids = make_ids(500)
    vectors = make_vectors(500)
    store.upsert(ids, vectors, payloads_for(ids))
    return store, ids, vectors


# -- both backends -------------------------------------------------------------


def test_create_ensure_info(store):
    assert not store.exists()
    assert store.info() is None

    assert store.ensure(INFO) is True
    assert store.exists()
    assert store.info() == INFO
    assert store.count() == 0

    assert store.ensure(INFO) is False
    with pytest.raises(IndexExistsError):
        store.create(INFO)


def test_ensure_other_model(filled):
    store, ids, _ = filled

    with pytest.raises(IndexMismatchError, match="RN50"):
        store.ensure(OTHER)
    other_dim = IndexInfo(INFO.model, INFO.pretrained, INFO.model_identity, DIM * 2)
    with pytest.raises(IndexMismatchError):
        store.ensure(other_dim)
    assert store.info() == INFO
    assert store.count() == len(ids)

    assert store.ensure(OTHER, rebuild=True) is True
    assert store.info() == OTHER
    assert store.count() == 0
    assert store.ensure(OTHER, rebuild=True) is False


def test_upsert_replace_delete_count(filled):
    store, ids, vectors = filled
    assert store.count() == 500

    # replacing keeps the count and overwrites vector and payload
    changed = ids[:10]
    new_vectors = make_vectors(10, seed=1)
    store.upsert(changed, new_vectors, payloads_for(changed, tag="b"))
    assert store.count() == 500
    got_ids, got = store.get_vectors(changed)
    assert got_ids == changed
    np.testing.assert_allclose(got, unit(new_vectors), atol=1e-6)
    assert store.get_payloads(changed[:1])[changed[0]]["fingerprint"].startswith("b:")

    missing = make_ids(1, seed=99)
    store.delete(ids[-5:] + missing)
    assert store.count() == 495
    assert not set(store.get_payloads(ids[-5:]))

    store.delete([])
    store.upsert([], np.zeros((0, DIM)), [])
    assert store.count() == 495


def test_get_payloads(filled):
    store, ids, _ = filled
    missing = make_ids(3, seed=42)
    got = store.get_payloads(ids[:3] + missing + ids[100:101])
    assert set(got) == set(ids[:3] + ids[100:101])
    assert got[ids[1]] == {**payloads_for([ids[1]])[0], "sample_id": ids[1]}
    assert store.get_payloads([]) == {}


def test_get_sample_ids(filled):
    store, ids, _ = filled
    got = store.get_sample_ids()
    assert len(got) == len(ids)
    assert set(got) == set(ids)


def test_get_vectors_order_and_normalisation(filled):
    store, ids, vectors = filled
    wanted = [ids[7], ids[3], make_ids(1, seed=7)[0], ids[250]]
    got_ids, got = store.get_vectors(wanted)
    assert got_ids == [ids[7], ids[3], ids[250]]
    assert got.dtype == np.float32 and got.shape == (3, DIM)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(got, unit(vectors[[7, 3, 250]]), atol=1e-6)

    all_ids, all_vectors = store.get_vectors()
    assert sorted(all_ids) == sorted(ids)
    row = {i: k for k, i in enumerate(ids)}
    np.testing.assert_allclose(
        all_vectors, unit(vectors[[row[i] for i in all_ids]]), atol=1e-6
    )


@pytest.mark.parametrize("limit", [1, 10, 1000])
def test_query_matches_brute_force(filled, limit):
    store, ids, vectors = filled
    for seed in range(3):
        query = make_vectors(1, seed=100 + seed)[0]
        expected = brute_force(ids, vectors, query, limit)
        assert_same_results(store.query(query, limit), expected)


def test_query_in_scope(filled):
    store, ids, vectors = filled
    query = make_vectors(1, seed=5)[0]
    scope = ids[::7] + make_ids(4, seed=77)  # unknown ids are ignored
    expected = brute_force(ids, vectors, query, 20, scope=scope)
    assert_same_results(store.query(query, 20, sample_ids=scope), expected)
    assert store.query(query, 20, sample_ids=[]) == []


def test_query_in_large_scope(store):
    dim = 32
    info = IndexInfo("m", None, "m@1", dim)
    store.ensure(info)
    ids = make_ids(5000, seed=3)
    vectors = make_vectors(5000, dim=dim, seed=3)
    store.upsert(ids, vectors, payloads_for(ids))

    rng = np.random.default_rng(0)
    scope = [ids[i] for i in rng.choice(5000, 3000, replace=False)]
    query = make_vectors(1, dim=dim, seed=9)[0]
    expected = brute_force(ids, vectors, query, 100, scope=scope)
    assert_same_results(store.query(query, 100, sample_ids=scope), expected)


def test_query_min_score(filled):
    store, ids, vectors = filled
    query = make_vectors(1, seed=11)[0]
    threshold = brute_force(ids, vectors, query, 30)[-1][1] - 1e-4
    expected = brute_force(ids, vectors, query, 100, min_score=threshold)
    got = store.query(query, 100, min_score=threshold)
    assert 25 <= len(got) <= 35
    assert_same_results(got, expected)
    assert all(s >= threshold for _, s in got)
    assert store.query(query, 100, min_score=1.0 + 1e-3) == []


def test_empty_index(store):
    store.ensure(INFO)
    assert store.count() == 0
    assert store.get_sample_ids() == []
    got_ids, got = store.get_vectors()
    assert got_ids == [] and got.shape == (0, DIM)
    assert store.get_vectors(make_ids(2))[0] == []
    assert store.get_payloads(make_ids(2)) == {}
    assert store.query(make_vectors(1)[0], 10) == []


def test_drop(filled):
    store, ids, vectors = filled
    store.drop()
    assert not store.exists()
    assert store.info() is None
    store.drop()  # no-op

    with pytest.raises(IndexNotFoundError):
        store.count()
    with pytest.raises(IndexNotFoundError):
        store.upsert(ids[:1], vectors[:1], payloads_for(ids[:1]))
    with pytest.raises(IndexNotFoundError):
        store.query(vectors[0], 5)

    assert store.ensure(INFO) is True
    assert store.count() == 0


def test_invalid_input(filled):
    store, ids, vectors = filled
    with pytest.raises(ValueError, match="size"):
        store.upsert(ids[:2], make_vectors(2, dim=DIM + 1), payloads_for(ids[:2]))
    with pytest.raises(ValueError, match="zero"):
        store.upsert(ids[:1], np.zeros((1, DIM)), payloads_for(ids[:1]))
    with pytest.raises(ValueError):
        store.upsert(ids[:2], vectors[:3], payloads_for(ids[:2]))
    with pytest.raises(ValueError, match="sample id"):
        store.upsert(["nope"], vectors[:1], [{}])
    with pytest.raises(ValueError, match="limit"):
        store.query(vectors[0], 0)
    with pytest.raises(ValueError):
        EdgeStore("../escape", "/tmp")
    assert store.count() == 500


def test_session_groups_operations(filled):
    store, ids, vectors = filled
    with store.session() as s:
        assert s is store
        with store.session():  # nests
            assert store.count() == 500
        store.delete(ids[:10])
        assert store.count() == 490
        assert store.query(vectors[20], 1)[0][0] == ids[20]
    assert store.count() == 490


def test_threads_share_a_store(filled):
    store, ids, vectors = filled
    errors = []
    stop = time.monotonic() + 1.5

    def write():
        k = 0
        while time.monotonic() < stop:
            new = make_ids(50, seed=1000 + k)
            store.upsert(new, make_vectors(50, seed=5000 + k), payloads_for(new))
            k += 1

    def read():
        while time.monotonic() < stop:
            try:
                assert store.query(vectors[0], 1)[0][0] == ids[0]
                store.count()
            except Exception as e:  # noqa: BLE001 -- reported below
                errors.append(e)
                return

    threads = [threading.Thread(target=f) for f in (write, read, read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_open_store(tmp_path):
    from fiftyone_ai_search.store.server import ServerStore

    edge = open_store("ds_a", Settings(backend="edge", storage_dir=str(tmp_path)))
    assert isinstance(edge, EdgeStore)
    assert edge.path == os.path.join(str(tmp_path), "ds_a")

    settings = Settings(backend="server", qdrant_url=":memory:")
    name = "ds_" + uuid.uuid4().hex[:8]
    first = open_store(name, settings)
    assert isinstance(first, ServerStore)
    first.ensure(INFO)
    try:
        ids = make_ids(3)
        first.upsert(ids, make_vectors(3), payloads_for(ids))
        # a second opening in this process sees the same data
        assert open_store(name, settings).count() == 3
    finally:
        first.drop()


# -- server only ---------------------------------------------------------------


# no server there: qdrant-client warns that it cannot check its version, and
# that the key travels over plain http
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_server_never_shows_api_key(caplog):
    secret = "s3cret-KEY-" + uuid.uuid4().hex
    caplog.set_level(logging.DEBUG)
    s = _server_store("x", url="http://user:pw@127.0.0.1:1", api_key=secret)
    assert secret not in repr(s) and secret not in str(s)
    assert "pw" not in repr(s)
    with pytest.raises(Exception) as excinfo:
        s.count()
    assert secret not in str(excinfo.value)
    assert secret not in repr(excinfo.value)
    assert secret not in caplog.text


def test_server_foreign_collection_is_never_reused():
    from qdrant_client import models

    s = _server_store("foreign_" + uuid.uuid4().hex[:8], location=":memory:")
    s._client.create_collection(
        s.collection_name,
        vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE),
    )
    try:
        assert s.info().model_identity == ""
        with pytest.raises(IndexMismatchError):
            s.ensure(INFO)
        assert s.ensure(INFO, rebuild=True) is True
        assert s.info() == INFO
    finally:
        s.drop()


# -- embedded only: persistence, processes ---------------------------------------


def test_edge_persists_and_releases(tmp_path):
    ids = make_ids(300)
    vectors = make_vectors(300)
    store = EdgeStore("persist", tmp_path)
    store.ensure(INFO)
    store.upsert(ids, vectors, payloads_for(ids))
    store.close()

    # nothing stays open: the shard itself can be opened directly
    import qdrant_edge

    qdrant_edge.EdgeShard.load(os.path.join(store.path, "shard")).close()

    again = EdgeStore("persist", tmp_path)
    assert again.info() == INFO
    assert again.count() == 300
    got_ids, got = again.get_vectors(ids[:5])
    assert got_ids == ids[:5]
    np.testing.assert_allclose(got, unit(vectors[:5]), atol=1e-6)

    again.drop()
    assert not os.path.exists(again.path)  # lock files and all


#: the writer's commits: mostly small ones back to back, sometimes a big
#: one that takes many chunks
WRITES = [10000 if k % 4 == 1 else 500 for k in range(8)]


def _write_for(root, name, started, ready, finished):
    store = EdgeStore(name, root, lock_timeout=120)
    ready.set()
    started.wait()
    for k, n in enumerate(WRITES):
        ids = make_ids(n, seed=10000 + k)
        store.upsert(ids, make_vectors(n, dim=64, seed=k), payloads_for(ids))
    finished.set()
    return len(WRITES)


def _writer_main(root, name, started, ready, finished, result):
    result.put(("writer", _write_for(root, name, started, ready, finished)))


def _reader_main(root, name, started, ready, finished, result):
    store = EdgeStore(name, root, lock_timeout=120)
    query = make_vectors(1, dim=64, seed=1)[0]
    ready.set()
    started.wait()
    counts, errors, last = [], [], False
    while not last:
        # one more search once the writer is done: it must see every write
        last = finished.is_set()
        try:
            with store.session():
                assert len(store.query(query, 10)) == 10
                counts.append(store.count())
        except Exception as e:  # noqa: BLE001 -- sent to the test
            errors.append(repr(e))
    result.put(("reader", (counts, errors)))


@pytest.mark.slow
def test_edge_reader_and_writer_processes(tmp_path):
    name = "shared"
    store = EdgeStore(name, tmp_path)
    store.ensure(IndexInfo("m", None, "m@1", 64))
    ids = make_ids(100)
    store.upsert(ids, make_vectors(100, dim=64), payloads_for(ids))

    started, finished = SPAWN.Event(), SPAWN.Event()
    result = SPAWN.Queue()
    procs, readies = [], []
    for target in (_writer_main, _reader_main):
        ready = SPAWN.Event()
        procs.append(
            SPAWN.Process(
                target=target,
                args=(str(tmp_path), name, started, ready, finished, result),
            )
        )
        readies.append(ready)
    for p in procs:
        p.start()
    for ready in readies:
        assert ready.wait(60)
    started.set()
    got = dict(result.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(30)

    commits = got["writer"]
    counts, errors = got["reader"]
    total = 100 + sum(WRITES)
    seen = f"writer commits {commits}, reader counts {counts}, " \
        f"errors {errors}"
    # both processes went through the same index without an error (no lock
    # timeout, no broken read), every search answered in full
    assert not errors, seen
    assert commits == len(WRITES), seen
    # the reader saw the writes as they were committed, never one undone,
    # and all of them once the writer was done (what a search in another
    # process waits for, by events, is tests/test_concurrent_search.py's)
    assert counts == sorted(counts), seen
    assert 100 <= counts[0] and counts[-1] == total, seen
    assert store.count() == total


def _upsert_then_hang(root, name, ids, in_session, done):
    store = EdgeStore(name, root)
    store.ensure(INFO)
    vectors = make_vectors(len(ids))
    if in_session:
        with store.session():
            store.upsert(ids, vectors, payloads_for(ids))
            done.set()
            time.sleep(600)  # killed while still holding the index
    else:
        store.upsert(ids, vectors, payloads_for(ids))
        done.set()
        time.sleep(600)


@pytest.mark.slow
@pytest.mark.parametrize("in_session", [False, True])
def test_edge_survives_kill_9(tmp_path, in_session):
    ids = make_ids(2000)
    done = SPAWN.Event()
    p = SPAWN.Process(
        target=_upsert_then_hang, args=(str(tmp_path), "kill", ids, in_session, done)
    )
    p.start()
    try:
        assert done.wait(60)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
    assert p.exitcode == -signal.SIGKILL

    store = EdgeStore("kill", tmp_path, lock_timeout=10)
    assert store.count() == 2000
    got_ids, got = store.get_vectors(ids[-3:])
    assert got_ids == ids[-3:]
    np.testing.assert_allclose(got, unit(make_vectors(2000)[-3:]), atol=1e-6)


def _hold_session(root, name, held):
    store = EdgeStore(name, root)
    with store.session():
        store.count()
        held.set()
        time.sleep(600)


@pytest.mark.slow
def test_edge_busy_error_after_lock_timeout(tmp_path):
    store = EdgeStore("busy", tmp_path, lock_timeout=1.0)
    store.ensure(INFO)
    held = SPAWN.Event()
    p = SPAWN.Process(target=_hold_session, args=(str(tmp_path), "busy", held))
    p.start()
    try:
        assert held.wait(60)
        # a read is answered by the session's process (it lends its shard
        # between its operations); a write waits for the session's end
        assert store.count() == 0
        ids = make_ids(1)
        # it waited its lock_timeout for the other process, then gave up
        # while that process still held the index, having written nothing
        with pytest.raises(IndexBusyError,
                           match="in use by another process and stayed "
                                 "busy for more than 1 s") as busy:
            store.upsert(ids, make_vectors(1), payloads_for(ids))
        # it names the process that holds the index, and says that this
        # process does not (a user tells a long sync from a stuck process)
        assert f"pid {p.pid}, a child of this process holds: " in str(
            busy.value)
        assert "this process (pid" not in str(busy.value)
        assert p.is_alive()
        assert store.count() == 0
        # lock-free metadata still answers
        assert store.info() == INFO
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)

    # the kernel released the dead holder's locks
    assert store.count() == 0


def _kill_forked(pid, *fds):
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    for fd in fds:
        os.close(fd)


@pytest.mark.slow
def test_edge_fork_while_open_does_not_lock_the_index(tmp_path):
    import qdrant_edge

    store = EdgeStore("fork", tmp_path)
    store.ensure(INFO)
    ready_r, ready_w = os.pipe()
    with store.session():
        store.count()  # the shard is open now
        pid = os.fork()
        if pid == 0:  # a worker forked at a bad moment: it just lives on
            # at-fork hooks have run once fork() returns here
            os.write(ready_w, b"x")
            time.sleep(30)
            os._exit(0)
    store.close()  # the session kept it open: the parent lets go
    try:
        assert os.read(ready_r, 1) == b"x"
        # the child's copies of the lock and shard descriptors were closed,
        # so the parent's close really released the index
        qdrant_edge.EdgeShard.load(os.path.join(store.path, "shard")).close()
        assert store.count() == 0
    finally:
        _kill_forked(pid, ready_r, ready_w)


@pytest.mark.slow
@pytest.mark.parametrize("lock_file", [locks.GATE_FILE, locks.MUTEX_FILE])
def test_edge_fork_while_a_thread_has_a_lock_file_in_hand(tmp_path,
                                                            lock_file):
    """A child forked while another thread of the parent has a lock
    file's descriptor in hand (the keeper of a kept-open index looks at
    the turnstile 50 times a second; an acquire under way holds it or the
    mutex before it records it) closes that descriptor: else the child
    holds the turnstile or the index for its lifetime, and the parent's
    next turn waits out its lock timeout (a CI run: a data loader's
    workers forked while the index was kept open)."""
    store = EdgeStore("fork", tmp_path)
    store.ensure(INFO)
    ready_r, ready_w = os.pipe()
    with store.session():
        store.count()  # the shard is open and kept open
    if lock_file == locks.MUTEX_FILE:
        store.close()  # the mutex: as a thread taking the index has it
    # what another thread holds for a moment, in no lock's record
    in_hand = locks._try_flock(os.path.join(store.path, lock_file), False)
    assert in_hand is not None
    pid = os.fork()
    if pid == 0:  # a worker forked at that moment: it just lives on
        os.write(ready_w, b"x")
        time.sleep(30)
        os._exit(0)
    os.close(in_hand)
    store.close()
    try:
        assert os.read(ready_r, 1) == b"x"
        # the child's copy was closed: the lock is free for anyone (a lock
        # of its own is another process's as far as flock is concerned)
        other = locks.ProcessLock(store.path)
        assert other.acquire(time.monotonic() + 2)
        other.release()
        assert store.count() == 0
    finally:
        _kill_forked(pid, ready_r, ready_w)
