"""Searching an embedded index while another process writes and maintains it
(issue 29): two real processes, the index large enough for its cells (forced
on at a small size).

No assertion here depends on the machine's speed: the writer does a fixed
list of work, the searcher searches until the writer is done (and at least a
fixed number of times), and waits are counted in turns of the holder's lock
(a turn is one chunk of a write, one round of upkeep, one commit), not in
seconds.
"""

import multiprocessing
import os
import time

import numpy as np
import pytest

from fiftyone_ai_search.store import IndexInfo, ranks
from fiftyone_ai_search.store.edge import (CHUNK, WRITE_CHUNK,
                                           WRITE_CHUNK_BESIDE, EdgeStore)

# processes race on one index: the full suite runs it, not the fast tier
pytestmark = pytest.mark.slow

DIM = 32
N = 3000
LIMIT = 10
NAME = "shared"
INFO = IndexInfo("m", None, "m@1", DIM)
SPAWN = multiprocessing.get_context("spawn")

#: searches the searcher makes at least while the writer holds the index
MIN_SEARCHES = 12


def _ids(start, count):
    return [f"{i:024x}" for i in range(start + 1, start + count + 1)]


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _base_vectors():
    """The index's points: all on the positive side of dimension 0."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    x[:, 0] = np.abs(x[:, 0]) + 4.0
    return _unit(x)


def _written_vectors(count, seed):
    """The writer's points: on the negative side, so they never enter the
    top results of a query among the index's points."""
    x = np.random.default_rng(seed).standard_normal((count, DIM))
    x = x.astype(np.float32)
    x[:, 0] = -np.abs(x[:, 0]) - 4.0
    return _unit(x)


def _payloads(ids):
    return [{"filepath": f"/d/{i}.jpg", "fingerprint": "1:2"} for i in ids]


def _writer(root, searcher_done, holding, work_done, result):
    from fiftyone_ai_search.store import edge

    store = EdgeStore(NAME, root, lock_timeout=120)
    next_id = 10 * N
    work = 0
    with store.session():
        store.count()
    holding.set()
    for round_ in range(4):
        for _ in range(6):  # sync-like commits
            ids = _ids(next_id, 40)
            with store.session():
                store.upsert(ids, _written_vectors(40, next_id), _payloads(ids))
            next_id += 40
            work += 1
        # a big write: several chunks, handed over between them
        ids = _ids(next_id, 3 * CHUNK + 10)
        store.upsert(ids, _written_vectors(len(ids), next_id), _payloads(ids))
        next_id += len(ids)
        # the upkeep: assigns the new points their cells, and compacts
        store.maintain(min_points=1000)
        work += 1
    work_done.set()
    # stay the holder until the searcher is done
    while not searcher_done.wait(0.05):
        with store.session():
            store.count()
    result.put(("writer", {"written": next_id - 10 * N, "work": work,
                           **edge.stats}))
    store.close()


def _searcher(root, holding, work_done, searcher_done, result):
    from fiftyone_ai_search.store import edge

    store = EdgeStore(NAME, root, lock_timeout=120)
    vectors = _base_vectors()
    ids = _ids(0, N)
    truth = {}
    rng = np.random.default_rng(1)
    picks = rng.choice(N, 64, replace=False)
    for i in picks:
        scores = vectors @ vectors[i]
        top = np.argsort(-scores, kind="stable")[:LIMIT]
        truth[i] = [ids[j] for j in top]
    holding.wait(120)
    searches, wrong = 0, []
    k = 0
    while searches < MIN_SEARCHES or not work_done.is_set():
        i = picks[k % len(picks)]
        k += 1
        with store.session():
            got = store.query(vectors[i], LIMIT)
        searches += 1
        if [sid for sid, _ in got] != truth[i]:
            wrong.append((int(i), got[:3]))
    store.close()
    result.put(("searcher", {"searches": searches, "wrong": wrong[:5],
                             "num_wrong": len(wrong), **edge.stats}))
    searcher_done.set()


def _writer_main(root, searcher_done, holding, work_done, result):
    try:
        _writer(root, searcher_done, holding, work_done, result)
    finally:
        work_done.set()  # a failed writer lets the searcher finish


def _searcher_main(root, holding, work_done, searcher_done, result):
    try:
        _searcher(root, holding, work_done, searcher_done, result)
    finally:
        searcher_done.set()


def _index_with_cells(tmp_path):
    """An index of N points with its cells (forced on at this size),
    closed; returns its store."""
    store = EdgeStore(NAME, tmp_path)
    store.ensure(INFO)
    ids = _ids(0, N)
    store.upsert(ids, _base_vectors(), _payloads(ids))
    store.maintain(min_points=1000)
    cells = store.cells()
    assert cells is not None and cells.searchable
    store.close()
    return store


def test_search_beside_a_writing_and_maintaining_process(tmp_path):
    _index_with_cells(tmp_path)

    holding, work_done, searcher_done = (SPAWN.Event() for _ in range(3))
    result = SPAWN.Queue()
    procs = [
        SPAWN.Process(target=_writer_main, args=(
            str(tmp_path), searcher_done, holding, work_done, result)),
        SPAWN.Process(target=_searcher_main, args=(
            str(tmp_path), holding, work_done, searcher_done, result)),
    ]
    for p in procs:
        p.start()
    got = dict(result.get(timeout=540) for _ in procs)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    writer, searcher = got["writer"], got["searcher"]
    seen = f"writer {writer}, searcher {searcher}"

    # right results throughout
    assert searcher["num_wrong"] == 0, seen
    assert searcher["searches"] >= MIN_SEARCHES, seen
    # the writer held the index all along and answered the searches: the
    # searcher never took the index away from it (no opening per search)
    assert searcher["asked"] >= MIN_SEARCHES, seen
    assert writer["served"] >= searcher["asked"], seen
    assert searcher["opens"] == 0, seen
    assert writer["opens"] == 1, seen
    # and each search waited for at most the turn under way and one more
    # (a chunk of a write, a round of upkeep), never a whole write or pass
    assert searcher["turns_waited"] <= 2, seen

    # the written points are all there, with their cells
    store = EdgeStore(NAME, tmp_path)
    assert store.count() == N + writer["written"]
    assert store.cells().complete
    store.close()


def _closed_index_of_200(tmp_path):
    """An index of 200 points, closed (for a holder in another process);
    the store, their ids and vectors."""
    store = EdgeStore(NAME, tmp_path, lock_timeout=120)
    store.ensure(INFO)
    ids = _ids(0, 200)
    vectors = _base_vectors()[:200]
    store.upsert(ids, vectors, _payloads(ids))
    store.close()
    return store, ids, vectors


def _answer_until_killed(store):
    """Keeps the shard of ``store`` open, and answers, until killed."""
    while True:
        with store.session():
            store.count()
        time.sleep(0.05)


def _hold(root, holding):
    store = EdgeStore(NAME, root)
    with store.session():
        store.count()
    holding.set()
    _answer_until_killed(store)


def test_a_holder_answers_and_a_killed_one_blocks_nobody(tmp_path):
    import signal

    from fiftyone_ai_search.store import edge

    store, ids, vectors = _closed_index_of_200(tmp_path)

    holding = SPAWN.Event()
    holder = SPAWN.Process(target=_hold, args=(str(tmp_path), holding))
    holder.start()
    try:
        assert holding.wait(120)
        asked, opens = edge.stats["asked"], edge.stats["opens"]
        # searched, counted and read by the holder, not opened here
        assert store.query(vectors[3], 5)[0][0] == ids[3]
        assert store.count() == 200
        got_ids, got = store.get_vectors(ids[:3])
        assert got_ids == ids[:3]
        np.testing.assert_allclose(got, vectors[:3], atol=1e-6)
        payloads = store.get_payloads(ids[:1])
        assert payloads[ids[0]]["filepath"] == _payloads(ids[:1])[0]["filepath"]
        # every vector, packed by the holder (serve.pack): the same bits as
        # read here once the holder is gone
        all_ids, served = store.get_vectors(ids)
        # a diverse search's walk: whether all points have their rank, and
        # a stretch of rank buckets with their vectors
        assert store.ranked()
        buckets = sorted({ranks.rank_of(i) for i in ids})[:7]
        bucket_ids, bucket_vectors = store.get_bucket_vectors(buckets)
        assert bucket_ids
        assert edge.stats["asked"] == asked + 7
        assert edge.stats["opens"] == opens
        # killed while holding: its lock and its socket go with it
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(60)
        assert store.query(vectors[7], 5)[0][0] == ids[7]
        assert edge.stats["asked"] == asked + 7
        assert edge.stats["opens"] == opens + 1
        assert store.get_vectors(ids)[0] == all_ids == ids
        assert np.array_equal(store.get_vectors(ids)[1], served)
        here_ids, here_vectors = store.get_bucket_vectors(buckets)
        assert here_ids == bucket_ids
        assert np.array_equal(here_vectors, bucket_vectors)
    finally:
        if holder.is_alive():
            holder.kill()
        store.close()


#: searches of the other process the session's writer waits to have
#: answered before it ends its session (and reads answered on the shard it
#: lent between two chunks of one write)
SERVED_IN_SESSION = 4

#: the most writes of the session before it gives up waiting for them (a
#: searcher left waiting for the session's end, as before, fails the test)
MAX_WRITES = 1500

#: a commit's points, and a large write's: several chunks
SMALL = 40
LARGE = 2 * WRITE_CHUNK + 8


def _session_writer(root, holding, asking, ending, done, result,
                    stay=False):
    """One long session of writes: small commits until the other process's
    searches were answered during it, then large writes (several chunks
    each) until reads were answered between two of their chunks, then a
    read-modify-write that relies on nobody else having written."""
    from fiftyone_ai_search.store import edge

    store = EdgeStore(NAME, root, lock_timeout=120)
    next_id = 10 * N
    chunks = []  # the sizes of the chunks written, in order

    in_chunks = EdgeStore._in_chunks

    def recorded(self, n, work, writes=False, prepare=None):
        def chunk_recorded(shard, info, chunk, *prepared):
            work(shard, info, chunk, *prepared)
            chunks.append(min(chunk.stop, n) - chunk.start)

        return in_chunks(self, n, chunk_recorded if writes else work, writes,
                         prepare)

    EdgeStore._in_chunks = recorded
    large = []  # the chunks of the large writes

    def write(count):
        nonlocal next_id
        ids = _ids(next_id, count)
        mark = len(chunks)
        store.upsert(ids, _written_vectors(count, next_id), _payloads(ids))
        if count == LARGE:
            large.extend(chunks[mark:])
        next_id += count

    writes = 0
    with store.session():
        assert store.count() == N  # the index held from here to the end
        assert edge.stats["opens"] == 1  # opened here: nobody else holds
        holding.set()
        assert asking.wait(120)  # the searcher asks from now on
        served, lent_turns = edge.stats["served"], edge.stats["lent_turns"]
        while (edge.stats["served"] - served < SERVED_IN_SESSION
               and writes < MAX_WRITES):
            write(SMALL)
            writes += 1
        while ((edge.stats["lent_turns"] - lent_turns < SERVED_IN_SESSION
                or not edge.stats["lent_while_preparing"])
               and writes < MAX_WRITES):
            write(LARGE)
            writes += 1
        served_in_session = edge.stats["served"] - served
        # what the session relies on is whole: nobody else wrote, and its
        # first points read back as written
        count = store.count()
        first = store.get_payloads(_ids(10 * N, 3))
        done.put(("writer", {"chunks": chunks, "large": large,
                             "count": count,
                             "first": sorted(first), "writes": writes,
                             "served_in_session": served_in_session,
                             **edge.stats}))
        while stay:  # until killed, inside the session
            write(SMALL)
        ending.set()  # the last thing before the session ends
    result.put(("writer", edge.stats))
    store.close()


def _session_searcher(root, holding, asking, ending, result):
    """Searches and counts until the writer's session ends; notes for each
    answer whether it came before the end."""
    from fiftyone_ai_search.store import edge

    store = EdgeStore(NAME, root, lock_timeout=120)
    vectors = _base_vectors()
    ids = _ids(0, N)
    picks = np.random.default_rng(2).choice(N, 16, replace=False)
    truth = {}
    for i in picks:
        top = np.argsort(-(vectors @ vectors[i]), kind="stable")[:LIMIT]
        truth[i] = [ids[j] for j in top]
    answers, wrong, counts, opens = 0, [], [], 0
    k = 0
    assert holding.wait(120)
    asking.set()
    while not ending.is_set():
        i = picks[k % len(picks)]
        k += 1
        with store.session():
            got = store.query(vectors[i], LIMIT)
            count = store.count()
        if not ending.is_set():
            answers += 1  # answered while the session still held the index
            counts.append(count)
            opens = edge.stats["opens"]
        if [sid for sid, _ in got] != truth[i]:
            wrong.append((int(i), got[:3]))
    store.close()
    result.put(("searcher", {"answers": answers, "counts": counts,
                             "opens_in_session": opens,
                             "wrong": wrong[:5], "num_wrong": len(wrong),
                             **edge.stats}))


def _start_session_pair(tmp_path, stay=False):
    _index_with_cells(tmp_path)

    holding, asking, ending = SPAWN.Event(), SPAWN.Event(), SPAWN.Event()
    done, result = SPAWN.Queue(), SPAWN.Queue()
    writer = SPAWN.Process(target=_session_writer, args=(
        str(tmp_path), holding, asking, ending, done, result, stay))
    searcher = SPAWN.Process(target=_session_searcher, args=(
        str(tmp_path), holding, asking, ending, result))
    writer.start()
    searcher.start()
    # the children unpickle the events after start() returns: they must
    # outlive this function (a collected one is gone for them)
    writer.keep = searcher.keep = (holding, asking, ending, done, result)
    return writer, searcher, ending, done, result


def _possible_counts(chunks):
    """The counts a reader may see during the session: each chunk is
    written whole."""
    return set((N + np.cumsum([0, *chunks])).tolist())


def test_a_long_write_session_lets_other_processes_search(tmp_path):
    writer, searcher, _, done, result = _start_session_pair(tmp_path)
    _, wrote = done.get(timeout=300)
    got = dict(result.get(timeout=300) for _ in range(2))
    for p in (writer, searcher):
        p.join(60)
        assert p.exitcode == 0
    found = got["searcher"]
    seen = f"writer {wrote}, searcher {found}"

    # the session went on to its end without waiting for the searcher, and
    # what it relies on held: only its own writes, read back whole
    assert wrote["writes"] < MAX_WRITES, seen
    assert wrote["count"] == N + sum(wrote["chunks"]), seen
    assert wrote["first"] == _ids(10 * N, 3), seen
    # the searcher was answered during the session, between two writes
    # and between two chunks of one write, by the session's process
    assert wrote["served_in_session"] >= SERVED_IN_SESSION, seen
    assert wrote["lent_turns"] >= SERVED_IN_SESSION, seen
    # and while the write made a chunk's points, not only between chunks:
    # a search waits for the engine's part of a chunk only
    assert wrote["lent_while_preparing"] >= 1, seen
    assert found["answers"] >= SERVED_IN_SESSION, seen
    assert found["opens_in_session"] == 0, seen
    assert got["writer"]["opens"] == 1, seen
    # with right results, and each count a whole number of chunks
    assert found["num_wrong"] == 0, seen
    assert set(found["counts"]) <= _possible_counts(wrote["chunks"]), seen
    # the large writes, made while the other process searched, went in
    # the small chunks that keep its searches' waits short
    assert wrote["large"], seen
    assert set(wrote["large"]) <= {WRITE_CHUNK_BESIDE,
                                   LARGE % WRITE_CHUNK_BESIDE}, seen

    store = EdgeStore(NAME, tmp_path)
    assert store.count() == N + sum(wrote["chunks"])
    store.close()


def test_a_writer_killed_in_its_session_blocks_nobody(tmp_path):
    import signal

    writer, searcher, ending, done, result = _start_session_pair(
        tmp_path, stay=True)
    try:
        _, wrote = done.get(timeout=300)
        assert wrote["served_in_session"] >= SERVED_IN_SESSION, wrote
        # killed while it writes inside its session, lending its shard
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(60)
        ending.set()
        _, found = result.get(timeout=300)
        searcher.join(60)
        assert searcher.exitcode == 0
        assert found["num_wrong"] == 0, found
        assert found["answers"] >= SERVED_IN_SESSION, found
    finally:
        for p in (writer, searcher):
            if p.is_alive():
                p.kill()

    # the index opens here, with every chunk written whole, and searches
    store = EdgeStore(NAME, tmp_path, lock_timeout=120)
    count = store.count()
    assert count >= N + sum(wrote["chunks"])
    assert (count - N - sum(wrote["chunks"])) % SMALL == 0
    vectors = _base_vectors()
    assert store.query(vectors[5], LIMIT)[0][0] == _ids(0, N)[5]
    store.close()


#: points written without their cells, for the upkeep pass below to assign
#: (more than upkeep.COMPACT_SHARE of the index: the pass compacts)
UNASSIGNED = N // 2

#: points per round of that pass: several rounds
PASS_ROUND = 256


def _assert_assigned_and_compacted(root):
    """The index of ``root`` after the upkeep: every point, each in its
    cell, no compaction owed, and a search finds what it should."""
    store = EdgeStore(NAME, root)
    assert store.count() == N + UNASSIGNED
    assert store.cells().complete
    assert not store._compaction_owed()
    assert store.query(_base_vectors()[5], LIMIT)[0][0] == _ids(0, N)[5]
    store.close()


def _written_without_cells(root):
    """The index of ``root``, opened, with ``10 * N`` new points written
    without their cells (as by a writer that had not read them): an upkeep
    pass then assigns them and compacts."""
    store = EdgeStore(NAME, root, lock_timeout=120)
    ids = _ids(10 * N, UNASSIGNED)
    with store.session():
        store.cells = lambda: None
        store.upsert(ids, _written_vectors(UNASSIGNED, 10 * N),
                     _payloads(ids))
        del store.cells
    return store


def _upkeep_writer(root, holding, asking, ending, go_on, done, result):
    """Writes points without their cells, then runs an upkeep pass that
    assigns them and compacts while the other process searches (each round
    starts once a search was answered since the last one), and another
    pass once the searcher has stopped."""
    from fiftyone_ai_search.store import edge, upkeep

    upkeep.ASSIGN_CHUNK = PASS_ROUND
    store = _written_without_cells(root)
    holding.set()
    assert asking.wait(120)
    rounds, answered = [], []
    assign_round = upkeep._assign_round

    def a_round(*args):
        # not timing: the round waits for the searcher's next answer (the
        # deadline only keeps a broken test from hanging)
        mark, deadline = edge.stats["served"], time.monotonic() + 120
        while edge.stats["served"] == mark and time.monotonic() < deadline:
            time.sleep(0.005)
        answered.append(edge.stats["served"] - mark)
        records = assign_round(*args)
        rounds.append(0 if records is None else len(records))
        return records

    upkeep._assign_round = a_round
    # the BLAS threads each product of the pass ran on, and the process's
    # own before and after it
    blas = _blas_threads()
    products, gives_way = [], []
    cells_of = upkeep._cells_of

    def counted(known, rows, exact, one_core, give_way):
        where = cells_of(known, rows, exact, one_core, give_way)
        products.append(one_core)
        # each product first waits while a search is answered here
        gives_way.append(give_way == store._give_way)
        return where

    assign = type(store.cells()).assign

    def assign_counted(cells, vectors):
        products.append(_blas_threads())
        return assign(cells, vectors)

    upkeep._cells_of = counted
    type(store.cells()).assign = assign_counted
    # searched within the quiet time, whatever this machine's speed
    edge.COMPACT_QUIET_S = 3600.0
    before = dict(edge.stats)
    assigned = store.maintain(min_points=1000)
    upkeep._cells_of = cells_of
    type(store.cells()).assign = assign
    first = {k: edge.stats[k] - before[k]
             for k in ("served", "compactions", "compactions_put_off")}
    done.put(("first", {"assigned": assigned, "rounds": rounds,
                        "answered": answered, "blas_before": blas,
                        "products": products, "blas_after": _blas_threads(),
                        "gives_way": gives_way,
                        "owed": store._compaction_owed(), **first}))
    upkeep._assign_round = assign_round
    ending.set()  # the searcher stops
    assert go_on.wait(120)
    # nobody searches now (else COMPACT_QUIET_S of quiet, 30 s)
    edge.COMPACT_QUIET_S = 0.0
    before = dict(edge.stats)
    assigned = store.maintain(min_points=1000)
    result.put(("writer", {
        "assigned": assigned, "owed": store._compaction_owed(),
        "compactions": edge.stats["compactions"] - before["compactions"],
        "opens": edge.stats["opens"]}))
    store.close()


def _blas_threads():
    """The threads numpy's BLAS runs a product on now."""
    from threadpoolctl import threadpool_info

    return max(i["num_threads"] for i in threadpool_info()
               if i["user_api"] == "blas")


def test_an_upkeep_pass_answers_searches_and_puts_its_compaction_off(
        tmp_path):
    assert not _index_with_cells(tmp_path)._compaction_owed()

    holding, asking, ending, go_on = (SPAWN.Event() for _ in range(4))
    done, result = SPAWN.Queue(), SPAWN.Queue()
    writer = SPAWN.Process(target=_upkeep_writer, args=(
        str(tmp_path), holding, asking, ending, go_on, done, result))
    searcher = SPAWN.Process(target=_session_searcher, args=(
        str(tmp_path), holding, asking, ending, result))
    writer.start()
    searcher.start()
    try:
        _, first = done.get(timeout=300)
        _, found = result.get(timeout=300)  # the searcher stopped
        go_on.set()
        _, second = result.get(timeout=300)
        for p in (writer, searcher):
            p.join(60)
            assert p.exitcode == 0
    finally:
        for p in (writer, searcher):
            if p.is_alive():
                p.kill()
    seen = f"first pass {first}, searcher {found}, second pass {second}"

    # the pass assigned every point, round after round, and the searcher
    # was answered before each round: searches are answered during a pass
    assert first["assigned"] == UNASSIGNED, seen
    rounds = -(-UNASSIGNED // PASS_ROUND)
    assert first["rounds"][:rounds] == [PASS_ROUND] * (rounds - 1) + [
        UNASSIGNED - PASS_ROUND * (rounds - 1)], seen
    assert all(first["answered"]), seen
    assert first["served"] >= len(first["rounds"]), seen
    # its products left the searches a core: one BLAS thread each, the
    # process's own number of threads back after the pass
    assert first["products"] == [1, True] * rounds, seen
    assert first["gives_way"] == [True] * rounds, seen
    assert first["blas_after"] == first["blas_before"], seen
    # the compaction it owed was put off: the engine's optimize answers
    # nobody until its end, and the other process was searching
    assert first["compactions"] == 0, seen
    assert first["compactions_put_off"] == 1, seen
    assert first["owed"], seen
    # right results throughout, every one from the writer, the count whole
    assert found["num_wrong"] == 0, seen
    assert found["answers"] >= len(first["rounds"]), seen
    assert found["opens_in_session"] == 0, seen
    assert set(found["counts"]) == {N + UNASSIGNED}, seen
    # once nobody searches, the next pass compacts what it owed (nothing
    # left to assign)
    assert second["assigned"] == 0, seen
    assert second["compactions"] == 1, seen
    assert not second["owed"], seen
    assert second["opens"] == 1, seen

    _assert_assigned_and_compacted(tmp_path)


def test_another_thread_searches_during_a_long_session(tmp_path):
    """A thread of the holder's own process is answered between two
    operations of another thread's session (on the shard it lends), not
    after the session's end."""
    import threading

    from fiftyone_ai_search.store import edge

    store = EdgeStore(NAME, tmp_path, lock_timeout=120)
    store.ensure(INFO)
    ids = _ids(0, N)
    vectors = _base_vectors()
    store.upsert(ids, vectors, _payloads(ids))
    store.close()
    picks = np.random.default_rng(3).choice(N, 8, replace=False)
    truth = {int(i): [ids[j] for j in np.argsort(
        -(vectors @ vectors[i]), kind="stable")[:LIMIT]] for i in picks}
    holding, ending = threading.Event(), threading.Event()
    found = {"answers": 0, "wrong": [], "counts": []}

    def search():
        assert holding.wait(120)
        k = 0
        while not ending.is_set():
            i = int(picks[k % len(picks)])
            k += 1
            got = store.query(vectors[i], LIMIT)
            count = store.count()
            if not ending.is_set():
                found["answers"] += 1  # while the session held the index
                found["counts"].append(count)
            if [sid for sid, _ in got] != truth[i]:
                found["wrong"].append(i)

    searcher = threading.Thread(target=search)
    searcher.start()
    chunks, writes, next_id = [], 0, 10 * N
    try:
        with store.session():
            assert store.count() == N
            before = edge.stats["beside_a_session"]
            holding.set()
            while (edge.stats["beside_a_session"] - before
                   < 2 * SERVED_IN_SESSION and writes < MAX_WRITES):
                new = _ids(next_id, SMALL)
                store.upsert(new, _written_vectors(SMALL, next_id),
                             _payloads(new))
                next_id += SMALL
                chunks.append(SMALL)
                writes += 1
            beside = edge.stats["beside_a_session"] - before
            ending.set()
    finally:
        ending.set()
        holding.set()
        searcher.join(120)
    store.close()

    # the session ended without waiting for the other thread, which was
    # answered during it, with right results and whole writes
    assert writes < MAX_WRITES, (writes, found)
    assert beside >= 2 * SERVED_IN_SESSION, (beside, found)
    assert found["answers"] >= SERVED_IN_SESSION, found
    assert not found["wrong"], found
    assert set(found["counts"]) <= _possible_counts(chunks), found


def test_the_upkeep_gives_way_while_a_search_is_answered(tmp_path):
    """The upkeep's work outside the engine (its reads of the vectors, its
    products, its reads ahead) waits at its next step while the holder
    computes an answer for another's search (they would share the cores),
    and goes on once it is answered, or after a bounded wait."""
    import threading

    from fiftyone_ai_search.store import edge

    store = EdgeStore(NAME, tmp_path, lock_timeout=120)
    store.ensure(INFO)
    ids = _ids(0, N)
    vectors = _base_vectors()
    store.upsert(ids, vectors, _payloads(ids))
    answer = EdgeStore._answer
    started, release = threading.Event(), threading.Event()
    order = []

    def held(shard, request):
        # the search's answer, computed on the shard the session lends,
        # held until the test lets it end
        started.set()
        assert release.wait(120)
        got = answer(shard, request)
        order.append("answered")
        return got

    def gives_way():
        store._give_way()
        order.append("went on")

    def search_during(step):
        """A search of another thread, answered beside this thread's
        session while ``step`` runs; returns its results."""
        found = []
        searcher = threading.Thread(
            target=lambda: found.extend(store.query(vectors[7], LIMIT)))
        searcher.start()
        assert started.wait(120)
        step()
        release.set()
        searcher.join(120)
        started.clear()
        release.clear()
        return found

    edge.EdgeStore._answer = staticmethod(held)
    bound = edge.GIVE_WAY_MAX_S
    try:
        with store.session():
            # an operation: the session lends its shard after it
            assert store.count() == N
            # no answer under way: the upkeep goes on at once
            gives_way()
            assert order == ["went on"]
            order.clear()

            # an answer under way: the upkeep's step waits for it
            edge.GIVE_WAY_MAX_S = 3600.0
            before = edge.stats["gave_way"]
            upkeep = threading.Thread(target=gives_way)

            def waits():
                upkeep.start()
                # until it waits (the deadline only keeps a broken test
                # from hanging)
                deadline = time.monotonic() + 120
                while (edge.stats["gave_way"] == before
                       and time.monotonic() < deadline):
                    time.sleep(0.001)

            found = search_during(waits)
            upkeep.join(120)
            assert order == ["answered", "went on"], order
            assert [sid for sid, _ in found][:1] == [ids[7]]
            order.clear()

            # an answer that does not end holds the upkeep up for at most
            # GIVE_WAY_MAX_S: it goes on while the answer is still held
            edge.GIVE_WAY_MAX_S = 0.01
            found = search_during(gives_way)
            assert order == ["went on", "answered"], order
            assert [sid for sid, _ in found][:1] == [ids[7]]
    finally:
        edge.EdgeStore._answer = staticmethod(answer)
        edge.GIVE_WAY_MAX_S = bound
        release.set()
    store.close()


def test_exact_searches_go_by_small_batches_while_another_process_searches(
        tmp_path):
    """The audit's exact searches: a batch is one engine call that holds
    the GIL, so while another process searches through the holder they go
    a few at a time, with the same results."""
    from fiftyone_ai_search.store import edge

    store = EdgeStore(NAME, tmp_path)
    store.ensure(INFO)
    ids = _ids(0, N)
    vectors = _base_vectors()
    store.upsert(ids, vectors, _payloads(ids))
    queries = vectors[:40]
    alone = store._exact_neighbour_vectors(queries, LIMIT)
    sizes = []
    with store.session(), store._locked() as shared:
        real, _ = store._open(shared)

        class Counting:
            """The engine's shard, its batches counted."""

            def __getattr__(self, name):
                return getattr(real, name)

            def query_batch(self, request):
                answers = real.query_batch(request)
                sizes.append(len(answers))
                return answers

        shared.shard = Counting()
        shared.asked_at = time.monotonic()  # another process just asked
        try:
            beside = store._exact_neighbour_vectors(queries, LIMIT)
        finally:
            shared.shard, shared.asked_at = real, None
    store.close()

    assert edge.QUERY_BATCH_BESIDE < edge.QUERY_BATCH
    assert sizes == [edge.QUERY_BATCH_BESIDE] * (
        len(queries) // edge.QUERY_BATCH_BESIDE)
    assert len(beside) == len(alone) == len(queries)
    for a, b in zip(alone, beside):
        np.testing.assert_allclose(a, b)


#: searches (each a query and a count) the searcher makes while the other
#: process compacts
SEARCHES_IN_COMPACTION = 6

#: the steps of a compaction beside the holder, in order (edge._compact_hook)
COMPACT_STEPS = ["copied", "optimizing", "optimized", "relayed", "retired",
                 "swapped", "removed"]


def _compacting_writer(root, holding, compacting, searched, result,
                       wait_at="optimizing"):
    """Writes points without their cells, then runs an upkeep pass that
    assigns them and compacts on a copy beside (forced on at this size):
    the compaction waits at step ``wait_at`` (once its child is started,
    or once the child relays and the shard is swapped, before the
    reopening) until the other process was answered its searches."""
    from fiftyone_ai_search.store import edge

    edge.COMPACT_BESIDE_MIN_BYTES = 0
    # the other process searches: a compaction in place would be put off
    edge.COMPACT_QUIET_S = 3600.0
    store = _written_without_cells(root)
    events = []

    def step(name):
        events.append((name, edge.stats["served"], edge.stats["side_reads"]))
        if name == wait_at:
            compacting.set()
            # not timing: the deadline only keeps a broken test from hanging
            searched.wait(300)
            events.append(("searched", edge.stats["served"],
                           edge.stats["side_reads"]))

    edge._compact_hook = step
    holding.set()
    before = dict(edge.stats)
    assigned = store.maintain(min_points=1000)
    result.put(("writer", {
        "assigned": assigned, "events": events,
        "owed": store._compaction_owed(),
        "relayed": edge.stats["last_compaction"]["relayed"],
        **{k: edge.stats[k] - before[k] for k in (
            "compactions", "compactions_beside", "compactions_put_off")}}))
    store.close()


def _compaction_searcher(root, holding, compacting, searched, result):
    """Once the other process compacts, searches and counts
    SEARCHES_IN_COMPACTION times, then tells it."""
    from fiftyone_ai_search.store import edge

    store = EdgeStore(NAME, root, lock_timeout=120)
    vectors = _base_vectors()
    ids = _ids(0, N)
    picks = np.random.default_rng(4).choice(N, SEARCHES_IN_COMPACTION,
                                            replace=False)
    assert holding.wait(120)
    assert compacting.wait(300)
    wrong, counts = [], []
    for i in picks:
        got = store.query(vectors[i], LIMIT)
        counts.append(store.count())
        truth = np.argsort(-(vectors @ vectors[i]), kind="stable")[:LIMIT]
        if [sid for sid, _ in got] != [ids[j] for j in truth]:
            wrong.append((int(i), got[:3]))
    searched.set()
    result.put(("searcher", {"counts": counts, "wrong": wrong,
                             **edge.stats}))


def _compaction_beside_searched(tmp_path, writer_target):
    """Runs ``writer_target`` (a compaction beside, with its hooks) and
    :func:`_compaction_searcher` in two processes on an index with cells;
    returns what each reported, and both in words for the asserts."""
    _index_with_cells(tmp_path)
    holding, compacting, searched = (SPAWN.Event() for _ in range(3))
    result = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(
        str(tmp_path), holding, compacting, searched, result))
        for target in (writer_target, _compaction_searcher)]
    for p in procs:
        p.start()
    try:
        got = dict(result.get(timeout=300) for _ in procs)
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    writer, searcher = got["writer"], got["searcher"]
    return writer, searcher, f"writer {writer}, searcher {searcher}"


def test_searches_are_answered_during_a_compaction_beside(tmp_path):
    """The compaction runs on a copy in a child process: the holder answers
    the other process's searches meanwhile, on the original shard, with
    right results, then swaps the compacted copy in."""
    writer, searcher, seen = _compaction_beside_searched(tmp_path, _compacting_writer)

    # compacted on a copy, not put off, though the other process searched
    assert writer["assigned"] == UNASSIGNED, seen
    assert writer["compactions"] == writer["compactions_beside"] == 1, seen
    assert writer["compactions_put_off"] == 0, seen
    assert not writer["owed"], seen
    # every search was answered by the holder while its compaction was
    # under way (between its child's start and the swap), on the shard
    # beside the compaction
    events = writer["events"]
    assert [e[0] for e in events] == (
        COMPACT_STEPS[:2] + ["searched"] + COMPACT_STEPS[2:]), seen
    during = {name: (served, side) for name, served, side in events}
    asked = 2 * SEARCHES_IN_COMPACTION  # a query and a count each
    assert during["searched"][0] - during["optimizing"][0] >= asked, seen
    assert during["searched"][1] - during["optimizing"][1] >= asked, seen
    _assert_searcher_answered_right(searcher, asked, seen)

    _assert_assigned_and_compacted(tmp_path)
    assert _leftovers(tmp_path) == []


def _assert_searcher_answered_right(searcher, asked, seen):
    """The searcher of a compaction beside asked all its ``asked``
    questions without opening the index, with right results, on the
    whole index."""
    assert searcher["asked"] == asked, seen
    assert searcher["opens"] == 0, seen
    assert searcher["wrong"] == [], seen
    assert searcher["counts"] == [N + UNASSIGNED] * SEARCHES_IN_COMPACTION


def _leftovers(root):
    """What of a compaction beside is left in the index directory."""
    return sorted(name for name in os.listdir(os.path.join(root, NAME))
                  if name.startswith("shard.") or name == "compact.swap")


def _compact_killed_at(root, step):
    """Compacts the index beside, and is killed (-9) at ``step``."""
    import signal

    from fiftyone_ai_search.store import edge

    edge.COMPACT_BESIDE_MIN_BYTES = 0

    def kill(name):
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    edge._compact_hook = kill
    EdgeStore(NAME, root, lock_timeout=120)._compact()


@pytest.mark.parametrize("step", COMPACT_STEPS)
def test_a_compaction_beside_killed_at_any_step_leaves_a_whole_index(
        tmp_path, step, monkeypatch):
    from fiftyone_ai_search.store import edge

    store = EdgeStore(NAME, tmp_path, lock_timeout=120)
    store.ensure(INFO)
    ids = _ids(0, N)
    vectors = _base_vectors()
    store.upsert(ids, vectors, _payloads(ids))
    store.close()

    proc = SPAWN.Process(target=_compact_killed_at, args=(str(tmp_path), step))
    proc.start()
    proc.join(300)
    assert proc.exitcode == -9
    # the killed one left the old shard or the new, and what else it left
    # goes at the next opening; the compaction is owed again unless the
    # new shard was in
    assert os.path.isdir(tmp_path / NAME / "shard") or os.path.isdir(
        tmp_path / NAME / "shard.old")
    assert store.count() == N
    assert _leftovers(tmp_path) == []
    assert store._compaction_owed() == (step != "removed")
    assert store.query(vectors[5], LIMIT)[0][0] == ids[5]
    # and the next compaction does it (again)
    monkeypatch.setattr(edge, "COMPACT_BESIDE_MIN_BYTES", 0)
    beside = edge.stats["compactions_beside"]
    assert store._compact()
    assert edge.stats["compactions_beside"] == beside + 1
    assert not store._compaction_owed()
    assert store.count() == N
    assert store.query(vectors[7], LIMIT)[0][0] == ids[7]
    store.close()
    assert _leftovers(tmp_path) == []


#: commits of the holder killed with its changes unflushed
UNFLUSHED_COMMITS = 5


def _unflushed_holder(root, holding):
    """Commits in sessions, as a sync does, and is killed holding the
    shard with none of them flushed (a kept shard is flushed once idle,
    here never)."""
    from fiftyone_ai_search.store import edge

    edge.FLUSH_IDLE_S = 3600.0
    store = EdgeStore(NAME, root)
    for k in range(UNFLUSHED_COMMITS):
        ids = _ids(10 * N + k * SMALL, SMALL)
        with store.session():
            store.upsert(ids, _written_vectors(SMALL, 10 * N + k * SMALL),
                         _payloads(ids))
    # the sessions' ends flushed nothing: the shard is kept, changed
    holding.put({"flushes": edge.stats["flushes"],
                 "dirty": edge._shared_for(store.path).dirty})
    _answer_until_killed(store)


def test_a_holder_killed_with_unflushed_commits_loses_none(tmp_path):
    import signal

    store, ids, vectors = _closed_index_of_200(tmp_path)

    holding = SPAWN.Queue()
    holder = SPAWN.Process(target=_unflushed_holder,
                           args=(str(tmp_path), holding))
    holder.start()
    try:
        kept = holding.get(timeout=300)
        assert kept == {"flushes": 0, "dirty": True}
        # answered by the holder: its commits are there
        assert store.count() == 200 + UNFLUSHED_COMMITS * SMALL
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(60)
        # opened here: the engine's write-ahead log is replayed
        assert store.count() == 200 + UNFLUSHED_COMMITS * SMALL
        last = 10 * N + (UNFLUSHED_COMMITS - 1) * SMALL
        written = _written_vectors(SMALL, last)
        assert store.query(written[3], 1)[0][0] == _ids(last, SMALL)[3]
        assert store.query(vectors[7], 5)[0][0] == ids[7]
    finally:
        if holder.is_alive():
            holder.kill()
        store.close()


def _relayed_writer(root, holding, compacting, searched, result):
    _compacting_writer(root, holding, compacting, searched, result,
                       wait_at="swapped")


def test_the_compactions_child_answers_during_the_reopening(tmp_path):
    """Between the swap and the holder's reopening (an opening holds the
    GIL: its server could answer nobody), the compaction's child answers
    on the holder's address, on its compacted copy, with right results;
    the holder then answers again."""
    writer, searcher, seen = _compaction_beside_searched(tmp_path, _relayed_writer)

    assert writer["compactions"] == writer["compactions_beside"] == 1, seen
    events = writer["events"]
    assert [e[0] for e in events] == (
        COMPACT_STEPS[:-1] + ["searched"] + COMPACT_STEPS[-1:]), seen
    during = {name: (served, side) for name, served, side in events}
    asked = 2 * SEARCHES_IN_COMPACTION  # a query and a count each
    # none of them by the holder, all by its child, none opened the index
    assert during["searched"] == during["swapped"], seen
    assert writer["relayed"] >= asked, seen
    _assert_searcher_answered_right(searcher, asked, seen)

    _assert_assigned_and_compacted(tmp_path)
    assert _leftovers(tmp_path) == []
