"""Reading a compaction's new original vectors ahead of the engine, from a
process of its own.

Qdrant's segment builder writes the compacted segment's original vectors
(``temp_segments/<builder>/vector_storage/matrix.dat``) with ``write()``,
then reads them all back, in order, through a memory map that Qdrant
advises random (``MADV_RANDOM``: a page fault reads its 4 kB page and
nothing around it). Where the file stays in the page cache from its
writing, that costs nothing. Where it does not (the source's originals
and their copy take twice their size: 40 GB at 10M 512-d points on a
23 GB machine), its beginning is gone when the builder comes back to it,
and every page is a read from disk of its own: 5.2M of them, ~470 s of a
586 s compaction at 10M; 500k and 32 s of a 63 s one at 1M in a 2.4 GB
memory cgroup (``perf`` on the ``filemap`` tracepoints;
bench/README.md, issue 25).

The engine's ``optimize`` holds the GIL until its end, so no thread of
the holder can help: :func:`start` runs this module's :func:`main` as a
process. It finds the builder's map of the file in the holder's
``/proc/<pid>/maps``, waits until the builder reads it (the map's first
page is present in the holder's page tables, ``/proc/<pid>/pagemap``:
the writing does not map it), and reads the file in sequence, 8 MB at a
time, at most a window ahead of the furthest page the builder has mapped.
The builder's faults then find their pages cached (at 1M in the 2.4 GB
cgroup: the compaction 30 s against 63 s).

Nothing of the index is written or changed: where the engine's way
differs (no such file, no such map), the process reads nothing and ends
when the holder stops it. Linux only (elsewhere :func:`start` returns
None).
"""

import contextlib
import mmap
import os
import signal
import subprocess
import sys
import time

import numpy as np

from . import children

#: the file of the builder's copy of the original vectors, under the shard
BUILDER_FILE = os.path.join("vector_storage", "matrix.dat")

#: the folder of the engine's segments being built, under the shard
BUILDER_DIR = "temp_segments"

#: bytes read at a time
CHUNK = 8 * 2**20

#: how far past its reads the builder is looked for: one that overtakes
#: them (the reader started late) is followed from where it is
LOOK_PAST = 4 * CHUNK

#: seconds between two looks at the holder's maps, or at the builder's
#: progress where the reads are a window ahead of it
POLL_S = 0.02

#: a page table entry's "present" bit (/proc/<pid>/pagemap)
_PRESENT = np.uint64(1 << 63)

_PAGE = mmap.PAGESIZE


def start(pid, shard_path, window):
    """Starts the reader of the builder's file for the engine of process
    ``pid`` optimizing the shard at ``shard_path``, at most ``window``
    bytes ahead of it.

    Returns:
        the ``subprocess.Popen``, to :func:`stop`; None elsewhere than
        Linux, or where it cannot start
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        return subprocess.Popen(
            [sys.executable, "-m", __name__, str(pid),
             os.path.realpath(shard_path), str(int(window))],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
    except OSError:
        return None


def stop(process, timeout=10.0):
    """Stops the reader ``process`` (from :func:`start`), which says what
    it did on its way out.

    Returns:
        ``{"followed": bool, "read": bytes, "size": bytes}``: whether it
        found the builder reading its file, what it read of it (not what
        the builder had read before it), the file's size; None where it
        said nothing
    """
    if process is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return _said(out)


def _said(out):
    for line in (out or "").splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "read":
            return {"followed": words[1] == "followed",
                    "read": int(words[2]), "size": int(words[3])}
    return None


class _Reader:
    """The reader's state: where it has read to, where the builder is."""

    def __init__(self, pid, shard_path, window):
        self.pid, self.window = pid, window
        self.prefix = os.path.join(shard_path, BUILDER_DIR) + os.sep
        self.pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
        self.followed = False
        self.read = self.skipped = self.size = 0

    def builder_maps(self):
        """The holder's maps of a builder's file: ``[(start, end, path)]``
        (None where the holder is gone)."""
        found = []
        try:
            with open(f"/proc/{self.pid}/maps") as f:
                lines = f.readlines()
        except OSError:
            return None
        for line in lines:
            # "start-end perms offset dev inode path"
            fields = line.split(None, 5)
            if len(fields) < 6:
                continue
            path = fields[5].rstrip("\n")
            if not (path.startswith(self.prefix) and path.endswith(
                    os.sep + BUILDER_FILE) and int(fields[2], 16) == 0):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            with contextlib.suppress(OSError):
                # the whole file's map, not one of a page or two (its
                # header's)
                if end - start >= os.path.getsize(path) // _PAGE * _PAGE:
                    found.append((start, end, path))
        return found

    def present(self, address, pages):
        """The holder's page table entries from ``address`` on: which of
        ``pages`` pages are mapped (present)."""
        raw = os.pread(self.pagemap, 8 * pages, (address // _PAGE) * 8)
        entries = np.frombuffer(raw, dtype="<u8")
        return (entries & _PRESENT) != 0

    def wait_for_builder(self):
        """Waits until the builder reads its file through one of its maps;
        that map's ``(start, end, path)``, or None where the holder went."""
        while True:
            maps = self.builder_maps()
            if maps is None:
                return None
            for start, end, path in maps:
                with contextlib.suppress(OSError):
                    if self.present(start, 1).any():
                        return start, end, path
            time.sleep(POLL_S)

    def follow(self, start, end, path):
        """Reads the file at ``path`` in sequence, at most a window ahead of
        the furthest page of the map ``start``-``end`` that is present."""
        self.followed = True
        fd = os.open(path, os.O_RDONLY)
        try:
            # each read reads what it asks, no more: the kernel's read-ahead
            # past it (8 MB here) would run past the window
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            self.size = os.fstat(fd).st_size
            buf = memoryview(bytearray(CHUNK))
            mapped = min(self.size, end - start)
            builder = 0  # bytes: past the furthest page it has mapped
            while self.read < self.size:
                # the builder moved on from where it was last seen: up to
                # the reads, or a little past them where it overtook them
                first = builder // _PAGE
                last = min(mapped, max(self.read, builder) + LOOK_PAST)
                last = max(first + 1, last // _PAGE)
                present = np.flatnonzero(
                    self.present(start + first * _PAGE, last - first))
                if len(present):
                    builder = (first + int(present[-1]) + 1) * _PAGE
                # what it has read is not read again
                self.skipped += max(0, builder - self.read)
                self.read = max(self.read, builder)
                until = min(self.size, builder + self.window)
                if self.read >= until:
                    time.sleep(POLL_S)
                    continue
                length = min(CHUNK, until - self.read)
                got = os.preadv(fd, [buf[:length]], self.read)
                if got <= 0:
                    break  # shortened meanwhile: the builder is done
                self.read += got
        finally:
            os.close(fd)

    def report(self):
        kind = "followed" if self.followed else "waited"
        read = self.read - self.skipped
        sys.stdout.write(f"read {kind} {read} {self.size}\n")
        sys.stdout.flush()


def main(argv):
    """The reader: ``<holder's pid> <shard path> <window bytes>``."""
    pid, shard_path, window = int(argv[0]), argv[1], int(argv[2])
    if pid == os.getppid():
        children.die_with_parent(pid)
    try:
        reader = _Reader(pid, shard_path, window)
    except OSError:
        sys.stdout.write("read waited 0 0\n")
        return 0

    def stopped(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stopped)
    try:
        found = reader.wait_for_builder()
        if found is not None:
            reader.follow(*found)
    except OSError:
        pass  # the holder or the file went: what was read stays cached
    finally:
        reader.report()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
