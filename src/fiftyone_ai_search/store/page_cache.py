"""Keeping a shard's files in the page cache while Qdrant closes it.

Qdrant Edge drops a shard's files from the page cache when it closes it
(``POSIX_FADV_DONTNEED``; seen with ``fincore``: the original vectors and
the payload pages go, at 1M 512-d points ~2.5 GB). The next process to
open the shard (the other side of a hand-over: a searcher after the
writer, the writer after a searcher) then reads them back from disk, page
fault after page fault, while it answers searches: issue 29's searches
after a takeover (38 disk faults, 116 ms) and the rereads of ``_rewarm``.

Linux does not drop a page that some process has mapped. So, around a
closing, :func:`kept` maps the files and touches the pages of theirs that
are in the page cache (``mincore``: never one that is not, which would be
a read from disk), lets Qdrant close, and unmaps them: the pages stay
cached, unowned, as any file's pages do, for whoever opens the shard
next. It costs a mapping of what is there (a minor fault a 64 kB stretch
at most: the kernel maps the cached pages around a fault) and no read.
Elsewhere than Linux it does nothing.

Two more things here about a shard's files and memory:
:func:`memory_available` (what the page cache can hold for this process:
Linux's estimate, bounded by the process's memory cgroup, a container's
limit) and :func:`random_access`, which tells the kernel that the engine
reads a file it has mapped at random (a compaction that does not fit in
memory, see ``edge._optimize_reads``).
"""

import contextlib
import ctypes
import ctypes.util
import mmap
import os
import sys

import numpy as np

#: the page size (mincore's unit)
PAGE = mmap.PAGESIZE


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None,
                           use_errno=True)
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t,
                                 ctypes.c_void_p]
        libc.mincore.restype = ctypes.c_int
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t,
                                 ctypes.c_int]
        libc.madvise.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


class _Mapping:
    """One file mapped read-only, its cached pages touched."""

    def __init__(self, path):
        self.file = open(path, "rb")
        try:
            self.map = mmap.mmap(self.file.fileno(), 0,
                                 prot=mmap.PROT_READ)
        except BaseException:
            self.file.close()
            raise

    def cached(self):
        """The page numbers of the file that the page cache holds."""
        view = np.frombuffer(self.map, dtype=np.uint8)
        try:
            resident = np.zeros((len(view) + PAGE - 1) // PAGE,
                                dtype=np.uint8)
            if _LIBC.mincore(view.ctypes.data, len(view),
                             resident.ctypes.data) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            return np.flatnonzero(resident & 1)
        finally:
            del view  # no exported buffer left: the map can close

    def touch_cached(self):
        """Touches every cached page (a read of one byte each: its mapping
        made); returns how many. Most are mapped by the kernel around
        the fault of a neighbour and cost no fault of their own; the
        kernel maps those best-effort (a page it cannot lock at once is
        left), so each is touched, not one a stretch."""
        cached = self.cached()
        if len(cached):
            view = np.frombuffer(self.map, dtype=np.uint8)
            view[cached * PAGE].sum()
            del view
        return len(cached)

    def close(self):
        with contextlib.suppress(BufferError, ValueError):
            self.map.close()
        self.file.close()


def cached_pages(path):
    """The pages of the file at ``path`` in the page cache (None where that
    cannot be asked)."""
    if _LIBC is None or os.path.getsize(path) == 0:
        return None
    mapping = _Mapping(path)
    try:
        return len(mapping.cached())
    finally:
        mapping.close()


@contextlib.contextmanager
def kept(paths):
    """Keeps the cached pages of the files at ``paths`` in the page cache
    for the time of the ``with`` block (a shard's closing), then lets the
    kernel manage them again. A file that cannot be mapped (gone, empty)
    is skipped.

    Yields:
        the number of cached pages kept
    """
    mappings, pages = [], 0
    if _LIBC is not None:
        for path in paths:
            try:
                if os.path.getsize(path) == 0:
                    continue
                mapping = _Mapping(path)
            except (OSError, ValueError):
                continue
            mappings.append(mapping)
            with contextlib.suppress(OSError, ValueError):
                pages += mapping.touch_cached()
    try:
        yield pages
    finally:
        for mapping in mappings:
            mapping.close()


#: ``madvise``'s advice that a mapping is read at random (Linux's value)
_MADV_RANDOM = 1


def random_access(paths):
    """Tells the kernel that this process reads its maps of the files at
    ``paths`` (the engine's, made when it opened a shard) at random: a page
    fault then reads that page from disk, not the stretch around it.

    The kernel reads around a fault in a mapped file (the device's
    read-ahead, 8 MB on this machine's disk) on the guess that the next
    reads are near. A compaction ordered by cell reads the original
    vectors out of the order they lie in; where they do not fit in memory,
    each fault then read megabytes of which it used 2 kB, and pushed out
    of the page cache the pages that the next faults wanted (a 1M index in
    a 2.4 GB memory cgroup: 486 s and 284 s of CPU for the compaction,
    145 s and 67 s with this advice; bench/README.md, issue 25).

    Returns:
        the bytes of the mappings advised (0 elsewhere than Linux, or where
        none of the files is mapped)
    """
    if _LIBC is None:
        return 0
    wanted = {os.path.realpath(p) for p in paths}
    advised = 0
    try:
        with open("/proc/self/maps") as f:
            lines = f.readlines()
    except OSError:
        return 0
    for line in lines:
        # "start-end perms offset dev inode path"
        fields = line.split(None, 5)
        if len(fields) < 6 or fields[5].rstrip("\n") not in wanted:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if _LIBC.madvise(start, end - start, _MADV_RANDOM) == 0:
            advised += end - start
    return advised


def memory_available():
    """The bytes of memory that the page cache can hold for this process:
    Linux's estimate (``MemAvailable``), or less where the process's
    memory cgroup (a container) is limited: its limit less its own
    anonymous memory. None where it cannot be read."""
    available = _meminfo_available()
    limited = _cgroup_available()
    if available is None:
        return limited
    return available if limited is None else min(available, limited)


def _meminfo_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available():
    """The memory cgroup's limit less its anonymous memory (cgroup v2 or
    v1), or None where it has no limit or none can be read."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        # v2: "0::/path"; v1: "N:memory:/path" (or with other controllers)
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            base, limit_file, anon_key = ("/sys/fs/cgroup", "memory.max",
                                          "anon")
        elif "memory" in controllers.split(","):
            base, limit_file, anon_key = ("/sys/fs/cgroup/memory",
                                          "memory.limit_in_bytes",
                                          "total_rss")
        else:
            continue
        folder = os.path.join(base, path.lstrip("/"))
        try:
            with open(os.path.join(folder, limit_file)) as f:
                limit = f.read().strip()
            if limit == "max" or int(limit) >= 2**60:
                return None  # no limit (v1 writes a huge number)
            with open(os.path.join(folder, "memory.stat")) as f:
                anon = next(int(value) for key, value in
                            (row.split() for row in f) if key == anon_key)
        except (OSError, ValueError, StopIteration):
            continue
        return max(0, int(limit) - anon)
    return None
