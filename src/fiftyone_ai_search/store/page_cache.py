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
