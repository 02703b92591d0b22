"""Opening an embedded index in a fresh process (issue 29, point 3): the
shard's files are read ahead of Qdrant's opening (but what the page cache
holds already), and read back into the page cache after it for the next
process.

Real processes on a real shard; what is asserted is counted (bytes read,
openings, results), never timed.
"""

import json
import multiprocessing
import os
import re
import sys
import threading

import numpy as np
import pytest
import qdrant_edge as qe

from fiftyone_ai_search.store import IndexInfo
from fiftyone_ai_search.store import cells as cl
from fiftyone_ai_search.store import compaction as cp
from fiftyone_ai_search.store import page_cache
from fiftyone_ai_search.store import priority
from fiftyone_ai_search.store import upkeep
from fiftyone_ai_search.store import edge
from fiftyone_ai_search.store.edge import EdgeStore
from tests.test_concurrent_search import _blas_threads

DIM = 32
N = 2000
NAME = "opened"
INFO = IndexInfo("m", None, "m@1", DIM)
SPAWN = multiprocessing.get_context("spawn")


def _vectors():
    x = np.random.default_rng(0).standard_normal((N, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ids():
    return [f"{i:024x}" for i in range(1, N + 1)]


def _segment_files(root):
    """``{path: size}`` of the shard's segment files, but the original
    vectors (which an opening does not read whole)."""
    sizes = {}
    segments = os.path.join(root, NAME, edge.SHARD_DIR, "segments")
    for dirpath, _, names in os.walk(segments):
        if any(os.sep + c + os.sep in dirpath + os.sep
               for c in edge._COLD_DIRS):
            continue
        for name in names:
            if name not in edge._COLD_FILES:
                path = os.path.join(dirpath, name)
                sizes[path] = os.path.getsize(path)
    return sizes


def _drop_from_page_cache(paths):
    # this process's openings read the files back in the background
    # (edge._rewarm): done first, or they could come back after the drop
    for thread in threading.enumerate():
        if thread.name == "ai-search-rewarm":
            thread.join()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _can_tell_cached(path):
    """Whether this platform and file system tell a cached stretch (a file
    just read is)."""
    with open(path, "rb") as f:
        f.read()
        return edge._cached(f.fileno(), 0, 1)


def _fresh_search(root, query, result):
    store = EdgeStore(NAME, root, lock_timeout=60)
    hits = store.query(query, 10)
    stats = dict(edge.stats)
    # the read back for the next process runs in the background: waited for
    # here, so that the next process finds what it read
    for thread in threading.enumerate():
        if thread.name == "ai-search-rewarm":
            thread.join()
    result.put({"hits": [h[0] for h in hits], **stats})


def _search_in_a_fresh_process(root, query):
    result = SPAWN.Queue()
    proc = SPAWN.Process(target=_fresh_search, args=(root, query, result))
    proc.start()
    got = result.get(timeout=120)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    return got


def test_a_fresh_process_reads_the_shard_ahead_of_opening_it(tmp_path):
    root = str(tmp_path)
    store = EdgeStore(NAME, root)
    store.ensure(INFO)
    vectors = _vectors()
    store.upsert(_ids(), vectors, [{} for _ in range(N)])
    store.close()
    files = _segment_files(root)
    assert files  # the id tracker, the payload storage, ...
    total = sum(files.values())
    query = vectors[7]
    want = [_ids()[i] for i in np.argsort(-(vectors @ query))[:10]]
    tells = _can_tell_cached(next(iter(files)))

    # cold (as after a reboot): every file Qdrant reads whole is read ahead
    # of its opening, and nothing of the originals
    _drop_from_page_cache(files)
    got = _search_in_a_fresh_process(root, query)
    assert got["asked"] == 0  # nobody held the index: this process opened it
    assert got["opens"] == 1
    assert got["read_ahead"] == total
    # read from the disk: all but the holes of sparse files (which the
    # page cache answers without the disk)
    assert 0 < got["read_ahead_read"] <= total
    assert got["hits"] == want

    # the next process finds them where the last one read them back
    got = _search_in_a_fresh_process(root, query)
    assert got["opens"] == 1
    assert got["read_ahead"] == total
    assert got["read_ahead_read"] == (0 if tells else total)
    assert got["hits"] == want
    assert _segment_files(root) == files


def test_read_ahead_skips_the_originals_and_vanished_files(tmp_path):
    root = str(tmp_path)
    store = EdgeStore(NAME, root)
    store.ensure(INFO)
    store.upsert(_ids()[:100], _vectors()[:100], [{} for _ in range(100)])
    store.close()
    files = _segment_files(root)
    _drop_from_page_cache(files)
    shard = os.path.join(root, NAME, edge.SHARD_DIR)
    total = sum(files.values())
    covered, read = edge._read_ahead(shard)
    assert covered == total and 0 < read <= total
    # read once, then found in the page cache (where that can be told)
    tells = _can_tell_cached(next(iter(files)))
    assert edge._read_ahead(shard) == (total, 0 if tells else read)
    # no shard (dropped meanwhile): nothing read, nothing raised
    assert edge._read_ahead(os.path.join(root, "missing")) == (0, 0)



def test_the_originals_are_read_where_they_fit_in_memory(tmp_path,
                                                          monkeypatch):
    # a search by cells rescores its best on the originals: read into the
    # page cache after an opening where they fit, never where they do not
    root = str(tmp_path)
    store = EdgeStore(NAME, root)
    store.ensure(INFO)
    store.upsert(_ids()[:100], _vectors()[:100], [{} for _ in range(100)])
    store.close()
    shard = os.path.join(root, NAME, edge.SHARD_DIR)
    originals = edge._shard_files(shard, cold=True)
    total = sum(os.path.getsize(p) for p in originals)
    assert total > 0
    monkeypatch.setattr(edge, "WARM_ORIGINALS_SHARE", 0.0)
    assert edge._warm_originals(shard) is None
    monkeypatch.undo()
    covered, read = edge._warm_originals(shard)
    assert covered == total and read <= total
    # no shard (dropped meanwhile): nothing read, nothing raised
    assert edge._warm_originals(os.path.join(root, "missing")) == (0, 0)
    # another process searches through this one: not read, and a read
    # under way stops at its next chunk
    _drop_from_page_cache(originals)
    assert edge._warm_originals(shard, stop=lambda: True) == (0, 0)
    asked = iter([False, True])
    monkeypatch.setattr(edge, "READ_AHEAD_CHUNK", 4096)
    covered, read = edge._warm_originals(shard, stop=lambda: next(asked))
    assert 0 < covered <= 4096 and covered < total and read <= covered


def _persisted(root):
    with open(os.path.join(root, NAME, edge.SHARD_DIR,
                           "edge_config.json")) as f:
        return json.load(f)


def test_searches_run_on_the_engines_threads_the_config_gives(tmp_path):
    # the engine's search pool cost a small search more than its scan (see
    # edge.SEARCH_THREADS): a new shard is made with it, a shard made
    # before gets it at its first opening, answers unchanged
    store = _index(tmp_path)
    assert _persisted(tmp_path)["max_search_threads"] == edge.SEARCH_THREADS
    expected = store.query(_vectors()[7], 10)

    config = _persisted(tmp_path)
    del config["max_search_threads"]  # as the previous version made it
    with open(os.path.join(tmp_path, NAME, edge.SHARD_DIR,
                           "edge_config.json"), "w") as f:
        json.dump(config, f)
    shard = os.path.join(tmp_path, NAME, edge.SHARD_DIR)
    assert edge._load_config(shard) is not None
    assert store.query(_vectors()[7], 10) == expected
    store.close()
    assert _persisted(tmp_path)["max_search_threads"] == edge.SEARCH_THREADS
    assert edge._load_config(shard) is None  # passed once only

    # a shard no version of ours made (int8 codes of another quantile) is
    # left as it is
    config["vectors"][""]["quantization_config"] = {"scalar": {
        "type": "int8", "quantile": 0.5, "always_ram": True}}
    with open(os.path.join(shard, "edge_config.json"), "w") as f:
        json.dump(config, f)
    assert edge._load_config(shard) is None


def _codes(root):
    """The kinds of codes the shard's segments hold, as the engine wrote
    them (a segment holds none before its first optimize)."""
    segments = os.path.join(root, NAME, edge.SHARD_DIR, "segments")
    found = set()
    for segment in os.listdir(segments):
        path = os.path.join(segments, segment, "vector_storage",
                            "quantized.config.json")
        if os.path.exists(path):
            with open(path) as f:
                found.update(json.load(f)["quantization_config"])
    return found


def test_an_index_of_int8_codes_is_quantized_again_by_its_next_upkeep(
        tmp_path, monkeypatch):
    """An index made by a version that scanned int8 codes: opened by this
    one, it answers as before and owes a compaction; the next maintenance
    pass quantizes it with this version's 4-bit codes, answers unchanged
    for queries whose neighbours are clear. (The engine quantizes a
    segment past ~10 MB of vectors: 6,000 512-d points.)"""
    dim, count = 512, 6000
    info = IndexInfo("m", None, "m@1", dim)
    vectors = np.random.default_rng(1).standard_normal(
        (count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[[3, 7]]
    with monkeypatch.context() as before:
        # what the versions before made: int8 codes, nothing to quantize
        # again
        before.setattr(edge, "_quantization",
                       lambda: qe.ScalarQuantizationConfig(
                           type=qe.ScalarType.Int8, quantile=0.99,
                           always_ram=True))
        before.setattr(edge, "_QUANTIZATION_KEPT", edge._INT8_KEPT)
        before.setattr(edge, "_INT8_KEPT", None)
        store = EdgeStore(NAME, tmp_path)
        store.ensure(info)
        store.upsert([f"{i:024x}" for i in range(1, count + 1)], vectors,
                     [{"filepath": "a"}] * count)
        store.maintain(min_points=1000)
        assert store.cells() is not None and not store._compaction_owed()
        expected = [store.query(q, 10) for q in queries]
        store.close()
    assert _codes(tmp_path) == {"scalar"}

    assert [store.query(q, 10) for q in queries] == expected
    assert store._compaction_owed()
    assert _codes(tmp_path) == {"scalar"}  # until the compaction

    store.maintain(min_points=1000)
    assert not store._compaction_owed()
    assert (_persisted(tmp_path)["vectors"][""]["quantization_config"]
            == edge._QUANTIZATION_KEPT)
    got = [store.query(q, 10) for q in queries]
    assert [[hit[0] for hit in hits] for hits in got] == [
        [hit[0] for hit in hits] for hits in expected]
    store.close()
    # (the segments replaced go at the closing)
    assert _codes(tmp_path) == {"turbo"}
    shard = os.path.join(tmp_path, NAME, edge.SHARD_DIR)
    assert edge._compaction_config(shard) is None  # done once


def test_a_new_index_gets_its_codes_with_its_first_compaction(tmp_path):
    """No codes while a new index is written (the engine would keep them
    for every point of its appendable segments, and a compaction asks
    twice what it holds free: at 10M points 2.4 GB of codes made it ask
    4.9 GB more); its first compaction builds the 4-bit ones, and the
    points written after it get theirs as they are written."""
    store = _index(tmp_path)
    assert edge._kept_codes(_persisted(tmp_path)) is None
    assert _codes(tmp_path) == set()
    expected = store.query(_vectors()[7], 10)
    store._compact()
    store.close()
    assert _codes(tmp_path) == {"turbo"}
    assert (_persisted(tmp_path)["vectors"][""]["quantization_config"]
            == edge._QUANTIZATION_KEPT)
    assert not store._compaction_owed()
    assert store.query(_vectors()[7], 10) == expected  # exact: no cells
    store.upsert([f"{N + 1:024x}"], _vectors()[:1], [{"filepath": "b"}])
    store.close()
    assert _codes(tmp_path) == {"turbo"}
    assert edge._compaction_config(
        os.path.join(tmp_path, NAME, edge.SHARD_DIR)) is None


def _index(root):
    store = EdgeStore(NAME, root)
    store.ensure(INFO)
    store.upsert(_ids(), _vectors(), [{"filepath": "a"}] * N)
    store.close()
    return store


def _leftovers(root):
    return sorted(name for name in os.listdir(os.path.join(root, NAME))
                  if name.startswith(edge.SHARD_DIR + ".")
                  or name == cp.SWAP_FILE)


def test_an_opening_recovers_the_shard_of_a_compaction_cut_short(tmp_path):
    """What a compaction beside killed between its two renames leaves: the
    old shard renamed away, the compacted copy beside it, the marker. The
    next opening puts the old shard back, removes the rest, and owes the
    compaction (the slow tier kills real processes at each step)."""
    store = _index(tmp_path)
    shard = os.path.join(tmp_path, NAME, edge.SHARD_DIR)
    with open(cp.marker_path(shard), "w") as f:
        f.write("{}")
    os.rename(shard, cp.old_path(shard))
    os.makedirs(os.path.join(cp.copy_path(shard), "segments"))

    assert store.count() == N
    assert _leftovers(tmp_path) == []
    assert store._compaction_owed()
    assert store.query(_vectors()[3], 5)[0][0] == _ids()[3]
    store.close()


def test_a_compaction_beside_and_in_place_where_the_disk_lacks_room(
        tmp_path, monkeypatch):
    store = _index(tmp_path)
    monkeypatch.setattr(edge, "COMPACT_BESIDE_MIN_BYTES", 0)
    before = dict(edge.stats)
    assert store._compact()
    assert edge.stats["compactions_beside"] == before["compactions_beside"] + 1
    assert store.count() == N
    assert store.query(_vectors()[4], 5)[0][0] == _ids()[4]
    assert not store._compaction_owed()
    assert _leftovers(tmp_path) == []
    # the copy got its codes as it was compacted (in its child)
    assert (_persisted(tmp_path)["vectors"][""]["quantization_config"]
            == edge._QUANTIZATION_KEPT)
    # too little room for the copy (three times the shard): in place
    monkeypatch.setattr(edge, "RESERVE_BYTES", 2**62)
    assert store._compact()
    assert edge.stats["compactions_beside"] == before["compactions_beside"] + 1
    assert edge.stats["compactions"] == before["compactions"] + 2
    assert store.query(_vectors()[4], 5)[0][0] == _ids()[4]
    store.close()
    assert _leftovers(tmp_path) == []


def _priority_here():
    tid = threading.get_native_id()
    return tid, os.getpriority(os.PRIO_PROCESS, tid)


def _fails(message):
    raise ValueError(message)


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="a thread's own niceness is Linux's")
def test_a_compactions_own_work_runs_at_a_low_priority_beside_the_caller():
    """The copies, opening and optimize of a compaction beside run at
    ``priority.NICENESS`` on a thread of their own, so that the searches
    answered meanwhile come first on a busy machine; the calling thread
    keeps its priority (an unprivileged process could not raise it back),
    and gets what the work returns or raises."""
    caller, before = _priority_here()
    tid, niceness = priority.run_niced(_priority_here)
    assert tid != caller
    assert niceness == max(before, priority.NICENESS)
    assert os.getpriority(os.PRIO_PROCESS, caller) == before
    try:
        priority.run_niced(_fails, "no room")
    except ValueError as e:
        assert str(e) == "no room"
    else:
        raise AssertionError("the work's error did not reach the caller")


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="a thread's own niceness is Linux's")
def test_an_upkeep_pass_assigns_cells_at_a_low_priority(tmp_path, monkeypatch):
    """An upkeep pass computes the points' cells on a worker thread at
    ``priority.NICENESS`` (a search another process asks the holder
    meanwhile gets the core first), never on the caller's thread, which
    keeps its priority."""
    seen = []
    assign = upkeep._cells_of

    def spy(*args, **kwargs):
        seen.append(_priority_here())
        return assign(*args, **kwargs)

    monkeypatch.setattr(upkeep, "_cells_of", spy)
    caller, before = _priority_here()
    store = EdgeStore(NAME, str(tmp_path))
    store.ensure(IndexInfo("m", None, "m", DIM))
    vectors = np.random.default_rng(3).standard_normal((1500, DIM))
    ids = [f"{i:024x}" for i in range(len(vectors))]
    store.upsert(ids, vectors.astype(np.float32), [{} for _ in ids])
    assert store.maintain(min_points=1000) == len(ids)
    store.close()
    assert seen, "no cells were computed"
    assert all(tid != caller for tid, _ in seen)
    assert {n for _, n in seen} == {max(before, priority.NICENESS)}
    assert os.getpriority(os.PRIO_PROCESS, caller) == before


def _originals(root):
    return edge._shard_files(os.path.join(root, NAME, edge.SHARD_DIR),
                             cold=True)


def _read_whole(paths):
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the page cache is asked with Linux's mincore")
def test_a_hand_over_leaves_the_cached_originals_to_the_next_holder(tmp_path):
    """Qdrant drops a shard's original vectors from the page cache when it
    closes it; a process that gives the index up to another keeps what was
    cached there for the next holder (page_cache.py), where a closing that
    drops the index does not."""
    root = str(tmp_path)
    store = EdgeStore(NAME, root)
    store.ensure(INFO)
    store.upsert(_ids(), _vectors(), [{} for _ in range(N)])
    store.close()
    originals = _originals(root)
    assert originals

    def cached():
        return sum(page_cache.cached_pages(p) or 0 for p in originals)

    def opened_with_originals_cached():
        for thread in threading.enumerate():
            if thread.name == "ai-search-rewarm":
                thread.join()
        with store.session():  # opens the shard and keeps it open
            store.query(_vectors()[0], 5)
        _read_whole(originals)
        # written back: the kernel drops no dirty page, and under another
        # job's heavy writes these may still wait for their writeback
        for path in originals:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        full = cached()
        assert full > 0
        return full

    # the hand-over (the index given up): the pages stay cached
    full = opened_with_originals_cached()
    for thread in threading.enumerate():  # the opening's reads back done
        if thread.name == "ai-search-rewarm":
            thread.join()
    kept_before = edge.stats["kept_cached"]
    store.close()
    assert cached() == full
    assert edge.stats["kept_cached"] - kept_before >= full * page_cache.PAGE

    # the same closing without keeping them: Qdrant drops them (what the
    # hand-over prevents)
    opened_with_originals_cached()
    with store._locked() as shared:
        store._close_shard(shared)
    assert cached() < full
    store.close()


def _advised_at_random(paths):
    """``{path: whether this process's maps of it are advised random}``
    (the kernel's own flag, ``rr`` in /proc/self/smaps), for the mapped
    ones of ``paths``."""
    wanted = {os.path.realpath(p) for p in paths}
    advised, current = {}, None
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if re.match(r"[0-9a-f]+-[0-9a-f]+$", fields[0]):
                # a mapping's first line; an anonymous one names no file
                path = fields[5] if len(fields) >= 6 else None
                current = path if path in wanted else None
            elif current and fields[0] == "VmFlags:":
                advised[current] = advised.get(current, True) and (
                    "rr" in fields[1:])
    return advised


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the advice is Linux's madvise")
def test_random_access_advises_the_maps_of_the_files_named_only(tmp_path):
    import mmap

    paths = []
    for name in ("a", "b"):
        path = tmp_path / name
        path.write_bytes(b"x" * (4 * page_cache.PAGE))
        paths.append(str(path))
    files = [open(p, "rb") for p in paths]
    maps = [mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) for f in files]
    try:
        assert _advised_at_random(paths) == {paths[0]: False,
                                             paths[1]: False}
        assert page_cache.random_access([paths[0]]) == 4 * page_cache.PAGE
        assert _advised_at_random(paths) == {paths[0]: True,
                                             paths[1]: False}
        assert page_cache.random_access([str(tmp_path / "c")]) == 0
    finally:
        for m, f in zip(maps, files):
            m.close()
            f.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the advice is Linux's madvise")
def test_a_compaction_reads_originals_that_do_not_fit_a_page_a_fault(
        tmp_path, monkeypatch):
    """Where the original vectors exceed the memory available, the
    engine's maps of them are advised random before its optimize (one page
    read a fault, not the kernel's read-around); elsewhere left as they
    are. The index is the same either way. A shard with places (made by
    this version) is never advised: its optimize reads one stretch of the
    files at a time."""
    placed = _index(tmp_path / "placed")
    # a shard made before the places: ordered by cell alone
    made_before = edge._upkeep_indexes()
    made_before.pop(cl.PLACE_KEY)
    made_before[cl.CELL_KEY] = qe.IntegerIndexParams(
        lookup=True, range=False, is_principal=True)
    monkeypatch.setattr(edge, "_upkeep_indexes", lambda: made_before)
    store = _index(tmp_path)
    seen = []
    advise = page_cache.random_access

    def spied(paths):
        advised = advise(paths)
        seen.append((advised, _advised_at_random(paths)))
        return advised

    monkeypatch.setattr(page_cache, "random_access", spied)
    monkeypatch.setattr(edge, "COMPACT_BESIDE", False)  # in this process
    before = edge.stats["optimized_at_random"]
    with store.session():
        store.query(_vectors()[0], 5)  # the shard open: its maps made
        assert store._compact()
    assert seen == []  # 2000 points fit
    assert edge.stats["optimized_at_random"] == before

    monkeypatch.setattr(edge, "OPTIMIZE_RANDOM_ABOVE", 0.0)
    store.upsert(_ids()[:10], _vectors()[:10], [{"filepath": "b"}] * 10)
    with store.session():
        store.query(_vectors()[0], 5)
        assert store._compact()
    assert len(seen) == 1
    advised, flags = seen[0]
    assert advised > 0
    assert flags and all(flags.values())
    assert edge.stats["optimized_at_random"] == before + 1
    assert store.count() == N
    assert [h[0] for h in store.query(_vectors()[4], 3)][0] == _ids()[4]
    store.close()

    placed.upsert(_ids()[:10], _vectors()[:10], [{"filepath": "b"}] * 10)
    with placed.session():
        placed.query(_vectors()[0], 5)
        assert placed._compact()
    assert len(seen) == 1
    assert edge.stats["optimized_at_random"] == before + 1
    placed.close()


@pytest.mark.skipif(not os.access("/sys/fs/cgroup/memory", os.W_OK),
                    reason="needs a writable cgroup v1 memory controller")
def test_the_memory_available_is_bounded_by_the_process_memory_cgroup():
    """In a container (a memory cgroup with a limit), the page cache holds
    what the limit allows, not the machine's free memory: what decides
    whether the originals are read ahead, and how a compaction reads."""
    import subprocess

    group = f"/sys/fs/cgroup/memory/ais-test-{os.getpid()}"
    limit = 512 * 2**20
    os.mkdir(group)
    try:
        with open(os.path.join(group, "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit))
        code = ("import os, sys; "
                f"open('{group}/cgroup.procs', 'w').write(str(os.getpid())); "
                "from fiftyone_ai_search.store import page_cache; "
                "print(page_cache.memory_available())")
        out = subprocess.run([sys.executable, "-c", code], check=True,
                             capture_output=True, text=True).stdout
        available = int(out.strip())
        assert 0 < available <= limit
        # the process's own memory is counted against the limit
        assert available < limit
    finally:
        os.rmdir(group)
    assert page_cache.memory_available() > limit  # this machine's, here


def test_a_write_beside_a_search_computes_its_cells_on_one_blas_thread(
        tmp_path, monkeypatch):
    """A write's cells (its points' product against the centres) are
    computed on one BLAS thread while another process searches through
    this one (the answers get the other core), on all of them otherwise;
    the process's BLAS threads are as before after it."""
    default = _blas_threads()
    if default < 2:
        pytest.skip("numpy's BLAS runs on one thread here")
    store = EdgeStore(NAME, str(tmp_path))
    store.ensure(IndexInfo("m", None, "m", DIM))
    rng = np.random.default_rng(4)
    ids = [f"{i:024x}" for i in range(1500)]
    store.upsert(ids, rng.standard_normal((len(ids), DIM)).astype(np.float32),
                 [{} for _ in ids])
    store.maintain(min_points=1000)
    known = store.cells()
    assert known is not None
    seen = []
    assign = type(known).assign

    def spy(cells, vectors):
        seen.append(_blas_threads())
        return assign(cells, vectors)

    monkeypatch.setattr(type(known), "assign", spy)
    more = [f"{i:024x}" for i in range(2000, 2100)]
    for searched in (True, False):
        monkeypatch.setattr(store, "_shares_cpu", lambda: searched)
        store.upsert(more, rng.standard_normal((len(more), DIM)).astype(
            np.float32), [{} for _ in more])
    store.close()
    assert seen == [1, default]
    assert _blas_threads() == default
