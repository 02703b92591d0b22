"""Compacting an embedded index's shard beside its holder: on a copy, in a
child process, then swapped in.

Qdrant Edge's ``optimize`` holds the GIL from its start to its end
(qdrant-edge-py 0.9: 4.4 s at 1M 512-d points after 100,000 new ones, ~40 s
for a first compaction of 1M), and a shard opens in one process at a time:
compacted in the holder's process, it answers nobody meanwhile. So the
holder, which lets nobody write meanwhile (it keeps its thread lock),
copies its shard beside it, a child process opens the copy and
optimizes it, while the holder goes on answering the other processes'
searches on the original, and the holder then swaps the compacted copy in
and reopens it, while the child answers (below).

qdrant-edge-py 0.9 offers no cheaper way: it creates no snapshot (it only
unpacks and applies one), opens no shard read-only beside another
process's, and its optimizer's thresholds bound a segment's size, not one
call's work (a compaction is the merge of every segment into one, ordered
by cell). The copy is a real one: hard links would share the files Qdrant
writes in place (a segment's deletion flags and versions, its payloads),
and that it never writes them during an optimize of its own copy could
not be shown. Measured in ``bench/README.md`` (issue 29).

The reopening (1.7 s at 1M quiet, with the GIL held: the holder's server
answers nobody meanwhile) is hidden too: the child keeps its compacted
copy open, the holder makes a second copy of it to swap in, and while the
holder closes, swaps and reopens, the child answers the index's searches
on the socket (a *relay*, :func:`relay`): the holder stops its server, the
child takes the address, and gives it back once the holder has reopened.
A search meets at most the few milliseconds in which neither listens (it
asks again, ``edge.ASK_GRACE``). The price: a second copy's I/O (~4 s at
1M, quiet), while nothing is written (writers wait for the whole
compaction, as before).

The swap, in the index directory (``shard`` the live shard)::

    compact.swap        written first (the marker), removed last
    shard.compacting/   the copy; the child optimizes it, and keeps it open
    shard.swapin/       a copy of the compacted copy (the relay's), read ahead
    shard -> shard.old  the old shard retired
    shard.swapin -> shard
    shard.compacting/   removed once the child is gone
    shard.old/          removed

A process killed at any line leaves ``shard`` or ``shard.old`` whole: the
next opening of the index finds the marker and :func:`recover` puts the
old shard back where ``shard`` is missing and removes the rest (the
compaction is then owed again, see ``edge.COMPACT_FILE``). Nothing is
written to the shard between the copy and the swap (the holder keeps the
thread lock; other processes' writes wait for the index), so the copy
loses nothing. The shard is copied unflushed (a flush holds the GIL: a
search would wait for it): its write-ahead log goes with the copy, and
the child's opening replays it, as after a ``kill -9``. The child dies
with the holder (``kill -9`` included), and its socket with it.

The child runs :mod:`~fiftyone_ai_search.store.compaction_child`
(``python -m``), the child's side of this exchange.
"""

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile

#: the marker of a compaction beside the holder, in the index directory
SWAP_FILE = "compact.swap"

#: the copy being compacted, beside the shard
COPY_SUFFIX = ".compacting"

#: the old shard between the swap and its removal
OLD_SUFFIX = ".old"

#: the copy of the compacted copy, swapped in (the child keeps the other
#: open, to answer searches during the holder's reopening)
SWAP_SUFFIX = ".swapin"

#: the most seconds the holder waits for the child to start or stop
#: relaying; past it the child is killed (searches then wait for the
#: reopening, as without a relay)
RELAY_TIMEOUT = 30.0

#: tries of the relay's child at the holder's address, 10 ms apart
RELAY_BIND_TRIES = 100

#: the child's exit status where the engine refused for want of space
NO_SPACE_EXIT = 3

#: the module the child runs (``python -m``)
CHILD_MODULE = "fiftyone_ai_search.store.compaction_child"

#: the folder that holds this package: first on the child's path
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def copy_path(shard_path):
    return shard_path + COPY_SUFFIX


def old_path(shard_path):
    return shard_path + OLD_SUFFIX


def swap_path(shard_path):
    return shard_path + SWAP_SUFFIX


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
    # the copies are removed before the old shard (finish): with the old
    # shard there, the new one is in
    lost = ((os.path.isdir(copy_path(shard_path))
             or os.path.isdir(swap_path(shard_path)))
            and not os.path.isdir(old))
    if not os.path.isdir(shard_path) and os.path.isdir(old):
        # killed between the two renames: the old shard is whole (nothing
        # written since the copy; what was not flushed is in its log)
        os.rename(old, shard_path)
        lost = True
    shutil.rmtree(swap_path(shard_path), ignore_errors=True)
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


class Child:
    """The child process that optimizes the copy and may relay (see
    :func:`main`): a ``subprocess.Popen`` spoken to by lines on its
    standard input and output."""

    def __init__(self, shard_path):
        # errors to a file: a pipe nobody reads could fill and block it
        self._err = tempfile.TemporaryFile()
        # the child imports this very package (the holder's code, not
        # another installed copy): its folder first on the child's path
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [_PACKAGE_PARENT] + [p for p in [env.get("PYTHONPATH")] if p])
        self.popen = subprocess.Popen(
            [sys.executable, "-m", CHILD_MODULE,
             copy_path(shard_path), str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
            env=env)

    @property
    def returncode(self):
        return self.popen.returncode

    def _line(self, timeout=None):
        """The child's next line ('' at its end, or past ``timeout``)."""
        out = self.popen.stdout
        if timeout is not None and not select.select([out], [], [],
                                                      timeout)[0]:
            return ""
        return out.readline().decode(errors="replace").strip()

    def _say(self, line):
        try:
            self.popen.stdin.write(line.encode() + b"\n")
            self.popen.stdin.flush()
            return True
        except OSError:  # it died
            return False

    def optimized(self):
        """Waits for the child's optimize (no limit: ~5 s at 1M after
        100,000 new points, minutes for a first compaction of 10M).

        Returns:
            True if the compacted copy is flushed (the child keeps it open
            until :meth:`end`); else the child has ended (see :meth:`error`)
        """
        if self._line() == "optimized":
            return True
        self.popen.wait()
        return False

    def error(self):
        """What the child said of its failure."""
        self._err.seek(0)
        return self._err.read().decode(errors="replace").strip() or (
            f"exit status {self.popen.returncode}")

    def relay(self, dirpath):
        """Has the child answer the index's requests on its copy (the
        caller stopped its server).

        Returns:
            True if it listens; else the caller answers again itself
        """
        return (self._say(f"serve {dirpath}")
                and self._line(RELAY_TIMEOUT) == "serving")

    def stop_relay(self):
        """Stops the child's relay (if any): the address is free when this
        returns, while the child closes its copy and exits (at 1M points
        ~0.4 s, in which the holder answers again rather than wait: see
        :meth:`end`).

        Returns:
            the requests its relay answered
        """
        served = 0
        if self._say("stop"):
            said = self._line(RELAY_TIMEOUT).split()
            if said[:1] == ["stopped"] and len(said) == 2:
                served = int(said[1])
        with contextlib.suppress(OSError):
            self.popen.stdin.close()
        return served

    def end(self):
        """Waits for the child's end (after :meth:`stop_relay`): kills it
        where it does not end."""
        with contextlib.suppress(OSError):
            self.popen.stdin.close()
        try:
            self.popen.wait(RELAY_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self):
        if self.popen.returncode is None:
            self.popen.kill()
            self.popen.wait()
        self.popen.stdout.close()
        self._err.close()


def spawn(shard_path):
    """Starts the child that optimizes the copy (see :func:`main`).

    Returns:
        a :class:`Child`
    """
    return Child(shard_path)


def copy_for_swap(shard_path):
    """Copies the compacted copy (flushed, open in the child, which writes
    nothing) to the one swapped in."""
    shutil.copytree(copy_path(shard_path), swap_path(shard_path),
                    copy_function=shutil.copyfile)


def swap_in(shard_path, at=None):
    """Swaps the compacted copy in (the caller closed the shard), then
    :func:`finish` removes the old one. ``at(step)`` is called after each
    step (tests kill the process there)."""
    at = at or (lambda step: None)
    os.rename(shard_path, old_path(shard_path))
    at("retired")
    os.rename(swap_path(shard_path), shard_path)
    _sync_dir(os.path.dirname(shard_path))
    at("swapped")


def finish(shard_path, at=None):
    """Removes the child's copy, the old shard, then the marker: the
    compaction is over (the new shard may be open meanwhile: the others
    are nobody's)."""
    at = at or (lambda step: None)
    shutil.rmtree(copy_path(shard_path))
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
