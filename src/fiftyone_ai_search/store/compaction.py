"""Compacting an embedded index's shard beside its holder: on a copy, in a
child process, then swapped in.

Qdrant Edge's ``optimize`` holds the GIL from its start to its end
(qdrant-edge-py 0.9: 4.4 s at 1M 512-d points after 100,000 new ones, ~40 s
for a first compaction of 1M), and a shard opens in one process at a time:
compacted in the holder's process, it answers nobody meanwhile. So the
holder, which lets nobody write meanwhile (it keeps its thread lock),
copies its flushed shard beside it, a child process opens the copy and
optimizes it, while the holder goes on answering the other processes'
searches on the original, and the holder then swaps the compacted copy in
and reopens it: a search waits for that opening only (~1.2 s of CPU at 1M).

qdrant-edge-py 0.9 offers no cheaper way: it creates no snapshot (it only
unpacks and applies one), opens no shard read-only beside another
process's, and its optimizer's thresholds bound a segment's size, not one
call's work (a compaction is the merge of every segment into one, ordered
by cell). The copy is a real one: hard links would share the files Qdrant
writes in place (a segment's deletion flags and versions, its payloads),
and that it never writes them during an optimize of its own copy could
not be shown. Measured in ``bench/README.md`` (issue 29).

The swap, in the index directory (``shard`` the live shard)::

    compact.swap        written first (the marker), removed last
    shard.compacting/   the copy; the child optimizes it
    shard -> shard.old  the old shard retired
    shard.compacting -> shard
    shard.old/          removed

A process killed at any line leaves ``shard`` or ``shard.old`` whole: the
next opening of the index finds the marker and :func:`recover` puts the
old shard back where ``shard`` is missing and removes the rest (the
compaction is then owed again, see ``edge.COMPACT_FILE``). Nothing is
written to the shard between the copy and the swap (the holder keeps the
thread lock; other processes' writes wait for the index), so the copy
loses nothing.

This module imports nothing of the package: the child runs it by its file
path (``python compaction.py <shard> <parent pid>``), without the
package's imports.
"""

import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import sys

#: the marker of a compaction beside the holder, in the index directory
SWAP_FILE = "compact.swap"

#: the copy being compacted, beside the shard
COPY_SUFFIX = ".compacting"

#: the old shard between the swap and its removal
OLD_SUFFIX = ".old"

#: the child's exit status where the engine refused for want of space
NO_SPACE_EXIT = 3


def copy_path(shard_path):
    return shard_path + COPY_SUFFIX


def old_path(shard_path):
    return shard_path + OLD_SUFFIX


def marker_path(shard_path):
    return os.path.join(os.path.dirname(shard_path), SWAP_FILE)


def tree_bytes(path):
    """Bytes the files under ``path`` take on disk."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def recover(shard_path):
    """Undoes what a compaction killed at any line left: puts the old shard
    back where ``shard`` is missing, removes the copy, the old shard and
    the marker. The caller holds the index (its process lock).

    Returns:
        True if a compaction was lost (the old shard stays: it is to be
        done again)
    """
    marker = marker_path(shard_path)
    if not os.path.exists(marker):
        return False
    old = old_path(shard_path)
    lost = os.path.isdir(copy_path(shard_path))
    if not os.path.isdir(shard_path) and os.path.isdir(old):
        # killed between the two renames: the old shard is whole (flushed
        # before the copy, nothing written since)
        os.rename(old, shard_path)
        lost = True
    shutil.rmtree(copy_path(shard_path), ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    _sync_dir(os.path.dirname(shard_path))
    with contextlib.suppress(FileNotFoundError):
        os.remove(marker)
    return lost


def start(shard_path):
    """Marks a compaction as under way and copies the (flushed, unchanging)
    shard beside it."""
    recover(shard_path)
    marker = marker_path(shard_path)
    tmp = f"{marker}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, marker)
    _sync_dir(os.path.dirname(shard_path))
    # copyfile goes by sendfile: the GIL is free meanwhile, and the
    # holder's server thread answers searches on the original
    shutil.copytree(shard_path, copy_path(shard_path),
                    copy_function=shutil.copyfile)


def spawn(shard_path):
    """Starts the child that optimizes the copy (see :func:`main`).

    Returns:
        the ``subprocess.Popen``
    """
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), copy_path(shard_path),
         str(os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)


def swap_in(shard_path, at=None):
    """Swaps the compacted copy in (the caller closed the shard), then
    :func:`finish` removes the old one. ``at(step)`` is called after each
    step (tests kill the process there)."""
    at = at or (lambda step: None)
    os.rename(shard_path, old_path(shard_path))
    at("retired")
    os.rename(copy_path(shard_path), shard_path)
    _sync_dir(os.path.dirname(shard_path))
    at("swapped")


def finish(shard_path, at=None):
    """Removes the old shard, then the marker: the compaction is over (the
    new shard may be open meanwhile: the old one is nobody's)."""
    at = at or (lambda step: None)
    shutil.rmtree(old_path(shard_path))
    at("removed")
    os.remove(marker_path(shard_path))


def abandon(shard_path):
    """Removes the copy and the marker (the child failed); the shard stays
    as it was."""
    recover(shard_path)


def _sync_dir(path):
    # the renames durable (not only kill -9 safe)
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _die_with_parent(parent_pid):
    """The child dies with the holder (kill -9 included), so that it never
    writes a copy that the next holder removes (Linux; elsewhere it runs to
    its end, on a copy nobody uses)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    if os.getppid() != parent_pid:
        sys.exit(1)  # the parent died before the prctl


def main(argv):
    """The child: optimizes the shard copy at ``argv[0]``."""
    path, parent_pid = argv[0], int(argv[1])
    _die_with_parent(parent_pid)
    import qdrant_edge as qe  # after the prctl: dies with its parent

    shard = qe.EdgeShard.load(path)
    try:
        shard.optimize()
        shard.flush()
    except Exception as e:
        sys.stderr.write(f"{type(e).__name__}: {e}\n")
        return NO_SPACE_EXIT if "not enough space" in str(e).lower() else 2
    finally:
        shard.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
