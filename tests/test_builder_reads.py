"""The compaction's copy of the originals read ahead of the engine
(store/builder_reads.py): a process that follows the builder's map of its
file, a window ahead of it, and never outlives its holder."""

import os
import signal
import subprocess
import sys
import time

import pytest

from fiftyone_ai_search.store import builder_reads, edge, page_cache
from tests.test_store_open import N, _ids, _index, _vectors

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="reads the holder's maps and page tables (/proc)")

MB = 2**20

#: a builder as the engine's: writes its file with write(), maps it whole,
#: advised random (as Qdrant advises its maps: no read-around), and reads
#: it back in order, a page a touch, when told; pauses where told
BUILDER = """
import mmap, os, sys
path, size = sys.argv[1], int(sys.argv[2])
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "wb") as f:
    for _ in range(size // 2**20):
        f.write(os.urandom(2**20))
    f.flush(); os.fsync(f.fileno())
fd = os.open(path, os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
m.madvise(mmap.MADV_RANDOM)
print("mapped", flush=True)
page = mmap.PAGESIZE
at = 0
for line in sys.stdin:
    until = min(size, int(line))
    while at < until:
        m[at]
        at += page
    print("at", at, flush=True)
    if at >= size:
        break
"""


def _cached(path):
    return page_cache.cached_pages(path) * page_cache.PAGE


def _wait(condition, timeout=120.0):
    # a condition that must come true, however loaded the machine: never
    # a bound on how fast
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _catches_sigterm(pid):
    """Whether process ``pid`` has its handler of SIGTERM (the reader's
    report on its way out) installed."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16)
                            >> (signal.SIGTERM - 1) & 1)
    return False


def _builder(shard, size):
    path = os.path.join(str(shard), builder_reads.BUILDER_DIR,
                        "segment_builder_x", builder_reads.BUILDER_FILE)
    proc = subprocess.Popen([sys.executable, "-c", BUILDER, path, str(size)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().split() == ["mapped"]
    return proc, path


def _step(proc, until):
    proc.stdin.write(f"{until}\n")
    proc.stdin.flush()
    return int(proc.stdout.readline().split()[1])


def test_the_reader_follows_the_builder_a_window_ahead(tmp_path):
    """Nothing is read before the builder reads its file; then the file is
    read ahead of it, never more than the window (and one read) ahead, to
    its end; the reader says what it read."""
    size, window = 64 * MB, 16 * MB
    builder, path = _builder(tmp_path, size)
    reader = subprocess.Popen(
        [sys.executable, "-m", builder_reads.__name__, str(builder.pid),
         str(tmp_path), str(window)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # the reader looks at the maps meanwhile
        assert _cached(path) == 0  # the builder has not begun to read
        at = _step(builder, 8 * MB)
        # ahead of the builder, as far as the window
        _wait(lambda: _cached(path) >= at + window - builder_reads.CHUNK)
        time.sleep(0.5)
        assert _cached(path) <= at + window + builder_reads.CHUNK
        assert _step(builder, size) == size
        builder.wait(timeout=60)
        out, _ = reader.communicate(timeout=60)  # it ends by itself
    finally:
        for proc in (builder, reader):
            if proc.poll() is None:
                proc.kill()
    said = builder_reads._said(out)
    assert said["followed"] and said["size"] == size
    # what it read ahead, at the least; what the builder overtook, not
    assert window - builder_reads.CHUNK <= said["read"] <= size


def test_a_reader_started_late_follows_the_builder_from_where_it_is(
        tmp_path):
    """A reader that finds the builder well into its file reads on from
    there, not from the file's beginning."""
    size, window = 64 * MB, 8 * MB
    builder, path = _builder(tmp_path, size)
    try:
        at = _step(builder, 32 * MB)
        reader = builder_reads.start(builder.pid, str(tmp_path), window)
        _wait(lambda: _cached(path) >= at + window - builder_reads.CHUNK)
        assert _step(builder, size) == size
        builder.wait(timeout=60)
        out, _ = reader.communicate(timeout=60)
    finally:
        builder.kill()
    said = builder_reads._said(out)
    assert said["followed"] and said["size"] == size
    assert said["read"] <= size - at + builder_reads.LOOK_PAST


def test_a_reader_with_no_builder_to_follow_reads_nothing(tmp_path):
    """Where the engine writes no such file (another version, a small
    shard done before the reader looks), the reader reads nothing and ends
    when stopped."""
    sleeper = subprocess.Popen([sys.executable, "-c",
                                "import time; time.sleep(600)"])
    try:
        reader = builder_reads.start(sleeper.pid, str(tmp_path), 16 * MB)
        # looking for the builder (a stop before it has started, e.g.
        # while a loaded machine imports its modules, kills it silently)
        _wait(lambda: _catches_sigterm(reader.pid))
        time.sleep(0.5)
        assert reader.poll() is None
        assert builder_reads.stop(reader) == {
            "followed": False, "read": 0, "size": 0}
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.slow
def test_the_reader_dies_with_its_holder(tmp_path):
    """A holder killed (-9) during its compaction leaves no reader behind
    (it would read on for nobody)."""
    code = ("import sys, time; "
            "from fiftyone_ai_search.store import builder_reads; "
            "import os; "
            f"p = builder_reads.start(os.getpid(), {str(tmp_path)!r}, 2**24); "
            "print(p.pid, flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code],
                              stdout=subprocess.PIPE, text=True)
    reader_pid = int(holder.stdout.readline())
    os.kill(reader_pid, 0)  # running
    holder.send_signal(signal.SIGKILL)
    holder.wait()

    def gone():
        try:
            os.kill(reader_pid, 0)
        except ProcessLookupError:
            return True
        # a zombie whose parent (init here) has not reaped it yet
        with open(f"/proc/{reader_pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")

    _wait(gone)


def test_a_compaction_too_large_for_memory_runs_the_reader(tmp_path,
                                                           monkeypatch):
    """A compaction whose originals take more than READ_BUILDER_ABOVE of
    the memory available runs the reader for the time of the engine's
    optimize, and stops it after; the index is the same. One that fits
    runs none."""
    started, stopped = [], []
    start, stop = builder_reads.start, builder_reads.stop

    def spied_start(pid, shard_path, window):
        process = start(pid, shard_path, window)
        started.append((pid, shard_path, window, process))
        return process

    def spied_stop(process, **kwargs):
        said = stop(process, **kwargs)
        if process is not None:
            stopped.append((process, said, process.poll()))
        return said

    monkeypatch.setattr(builder_reads, "start", spied_start)
    monkeypatch.setattr(builder_reads, "stop", spied_stop)
    monkeypatch.setattr(edge, "COMPACT_BESIDE", False)  # in this process
    store = _index(tmp_path)
    expected = [h[0] for h in store.query(_vectors()[4], 3)]
    with store.session():
        assert store._compact()
    assert started == []  # 2000 points fit

    monkeypatch.setattr(edge, "READ_BUILDER_ABOVE", 0.0)
    store.upsert(_ids()[:10], _vectors()[:10], [{"filepath": "b"}] * 10)
    with store.session():
        assert store._compact()
    assert len(started) == 1
    pid, shard_path, window, process = started[0]
    assert pid == os.getpid() and shard_path == store._shard_path
    assert 0 < window <= edge.VECTORS_AHEAD_WINDOW
    assert len(stopped) == 1 and stopped[0][0] is process
    said, code = stopped[0][1:]
    assert code is not None  # ended
    # a reader stopped before it began (this optimize is quick) says nothing
    assert said is None or said["read"] <= said["size"]
    assert [h[0] for h in store.query(_vectors()[4], 3)] == expected
    assert store.count() == N
    store.close()
