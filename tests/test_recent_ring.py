"""The embedded index's ring of recent queries (store/recent_ring.py): one
slot written in place per query, shared by real processes, a torn slot or
header ignored and repaired, the former ``.npy`` ring carried over."""

import os
import signal
import subprocess
import sys
import time

import numpy as np

from fiftyone_ai_search.store import recent, recent_ring

DIM = 512

#: a process that remembers its queries (seeded) in a directory
WRITER = """
import sys
import numpy as np
from fiftyone_ai_search.store import recent_ring
import os, time
directory, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(seed)
while len(sys.argv) > 4 and not os.path.exists(sys.argv[4]):
    time.sleep(0.001)  # all writers start together
for _ in range(count):
    v = rng.normal(size=%d).astype(np.float32)
    recent_ring.remember(directory, v / np.linalg.norm(v))
""" % DIM


def queries(n, seed=0, dim=DIM):
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def writer(directory, seed, count, go=None):
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory), str(seed), str(count)]
        + ([str(go)] if go else []))


def fresh_read(directory):
    # as another process would read it: no cache of this one
    recent_ring._parsed.clear()
    return recent_ring.read(str(directory))


def slot_start(i):
    return recent_ring.HEADER + i * (16 + 2 * DIM)


def test_a_bounded_ring_in_one_file_written_in_place(tmp_path):
    d = str(tmp_path)
    q = queries(recent.SIZE + 10)
    for v in q[:3]:
        recent_ring.remember(d, v)
    recent_ring.remember(d, q[2])  # a repeat (an over-fetch): kept once
    path = recent_ring.path_of(d)
    inode = os.stat(path).st_ino
    for v in q[3:]:
        recent_ring.remember(d, v)
    # written in place: no file replaced, of a fixed size
    assert os.stat(path).st_ino == inode
    assert os.path.getsize(path) == slot_start(recent.SIZE)
    assert os.listdir(d) == [recent_ring.FILE]
    for ring in (recent_ring.read(d), fresh_read(d)):
        assert ring.dtype == np.float16
        np.testing.assert_allclose(ring, q[10:], atol=2e-3)
    # another model's queries start a ring afresh
    recent_ring.remember(d, queries(1, seed=1, dim=16)[0])
    assert fresh_read(d).shape == (1, 16)
    recent_ring.replace(d, np.zeros((0, 0), dtype=np.float16))
    assert fresh_read(d).shape[0] == 0
    assert not os.path.exists(path)


def test_torn_slots_and_headers_are_ignored_then_repaired(tmp_path):
    d = str(tmp_path)
    path = recent_ring.path_of(d)
    q = queries(12)
    for v in q[:10]:
        recent_ring.remember(d, v)
    # the newest slot half written by a crash: its checksum fails
    with open(path, "r+b") as f:
        f.seek(slot_start(9) + 16 + 300)
        f.write(os.urandom(200))
    np.testing.assert_allclose(fresh_read(d), q[:9], atol=2e-3)
    # the next query takes the torn slot's place
    recent_ring.remember(d, q[10])
    np.testing.assert_allclose(fresh_read(d), np.vstack([q[:9], q[10:11]]),
                               atol=2e-3)
    # a torn older slot is one query fewer, the rest in order
    with open(path, "r+b") as f:
        f.seek(slot_start(3))
        f.write(b"\xff" * 8)
    np.testing.assert_allclose(fresh_read(d), np.vstack(
        [q[:3], q[4:9], q[10:11]]), atol=2e-3)
    # a torn header, a truncated file, a foreign one: no ring, no error,
    # and the next query writes a whole one in place
    for damage in (lambda f: f.write(b"\0" * 12),
                   lambda f: f.truncate(recent_ring.HEADER + 100),
                   lambda f: (f.truncate(0), f.write(b"\x93NUMPY torn"))):
        with open(path, "r+b") as f:
            damage(f)
        assert fresh_read(d).shape[0] == 0
        recent_ring.remember(d, q[11])
        np.testing.assert_allclose(fresh_read(d), q[11:], atol=2e-3)


def test_two_processes_searching_at_once_keep_each_others_queries(tmp_path):
    d = str(tmp_path)
    count = 2000  # each
    go = tmp_path.parent / f"{tmp_path.name}-go"
    procs = [writer(d, seed, count, go) for seed in (1, 2)]
    time.sleep(0.5)
    go.touch()  # both at once (a writer that starts late still waits)
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    recent_ring._parsed.clear()
    with open(recent_ring.path_of(d), "rb") as f:
        slots = recent_ring._parse("", f.read())
    # one sequence a query, none written over by the other process
    assert int(slots.seqs.max()) == 2 * count
    ring = slots.ring()
    assert len(ring) == recent.SIZE
    ring = ring.astype(np.float32)
    matched = 0
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        mine = rng.normal(size=(count, DIM)).astype(np.float32)
        mine /= np.linalg.norm(mine, axis=1, keepdims=True)
        best = ring @ mine.T
        rows = np.flatnonzero(best.max(axis=1) > 0.999)
        at = np.argmax(best[rows], axis=1)
        # this process's queries among the last, in the order it made them
        assert np.all(np.diff(at) > 0)
        matched += len(rows)
    assert matched == recent.SIZE


def test_a_writer_killed_mid_stream_leaves_a_readable_ring(tmp_path):
    d = str(tmp_path)
    recent_ring.remember(d, queries(1, seed=9)[0])
    proc = writer(d, 3, 10 ** 6)
    deadline = time.monotonic() + 120
    while len(fresh_read(d)) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)  # until it is writing
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    ring = fresh_read(d)
    assert 1 <= len(ring) <= recent.SIZE
    assert np.isfinite(ring.astype(np.float32)).all()
    v = queries(1, seed=10)[0]
    recent_ring.remember(d, v)
    np.testing.assert_allclose(fresh_read(d)[-1], v, atol=2e-3)


def test_the_former_npy_ring_is_read_then_carried_over_once(tmp_path):
    d = str(tmp_path)
    old = queries(5, seed=4).astype(np.float16)
    old_path = os.path.join(d, recent_ring.OLD_FILE)
    np.save(old_path, old, allow_pickle=False)
    # read as it is until a search writes
    np.testing.assert_allclose(fresh_read(d), old)
    v = queries(1, seed=5)[0]
    recent_ring.remember(d, v)
    assert not os.path.exists(old_path)
    np.testing.assert_allclose(fresh_read(d), np.vstack(
        [old.astype(np.float32), v[None]]), atol=2e-3)
    # a torn former file carries nothing over, and is gone too
    d2 = str(tmp_path / "torn")
    os.mkdir(d2)
    with open(os.path.join(d2, recent_ring.OLD_FILE), "wb") as f:
        f.write(b"\x93NUMPY torn")
    assert fresh_read(d2).shape[0] == 0
    recent_ring.remember(d2, v)
    assert os.listdir(d2) == [recent_ring.FILE]
    np.testing.assert_allclose(fresh_read(d2), v[None], atol=2e-3)
