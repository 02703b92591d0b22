"""Locks that let threads and processes take turns on one embedded index.

A Qdrant Edge shard can be open in one place at a time (it locks its WAL), so
every user of an index takes two locks around each opening:

- :class:`FairLock`, between the threads of a process: first come, first
  served, so a thread that commits in a loop cannot starve a searching one;
- :class:`ProcessLock`, between processes: ``flock`` on files in the index
  directory, with a turnstile (a second lock file that a waiting process
  holds) so that a process that releases and immediately re-acquires lets a
  waiting process in first, and so that a holder can see that someone waits
  (:meth:`ProcessLock.wanted`) and yield.

``flock`` locks die with their process, so a crashed or killed holder never
leaves an index locked.
"""

import collections
import contextlib
import errno
import os
import random
import threading
import time
import weakref

from .portability import check_embedded_index

check_embedded_index()  # no fcntl (Windows): says what to use instead
import fcntl  # noqa: E402

#: first and largest pause between two attempts at a busy lock (seconds)
_MIN_BACKOFF = 0.002
_MAX_BACKOFF = 0.05

#: how often a waiter with an ``abandon`` check checks it (seconds)
ABANDON_POLL = 0.01

MUTEX_FILE = ".lock"
GATE_FILE = ".gate"


class FairLock:
    """A re-entrant thread lock that is granted in request order.

    Unlike :class:`threading.RLock`, a thread that releases and re-acquires
    it goes behind the threads already waiting.
    """

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._queue = collections.deque()
        self._owner = None
        self._depth = 0
        #: how many times the lock was granted (re-entries not counted): a
        #: waiter that notes it on arrival knows how many turns it waited
        self.grants = 0

    @property
    def depth(self):
        """How many times the owner holds the lock (0 when free)."""
        return self._depth

    def is_owned(self):
        """Whether the calling thread holds the lock."""
        return self._owner == threading.get_ident()

    def waiting(self):
        """The number of threads waiting for the lock."""
        with self._cond:
            return len(self._queue)

    def acquire(self, timeout=None, abandon=None):
        """Acquires the lock.

        Args:
            timeout (None): the most seconds to wait, or None for no limit
            abandon (None): a function checked while waiting (at least
                every :data:`ABANDON_POLL` seconds): once it returns True,
                the wait ends as a timeout does

        Returns:
            True if acquired, False on timeout (or abandon)
        """
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True

            token = object()
            self._queue.append(token)
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._owner is not None or self._queue[0] is not token:
                remaining = None
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                if (remaining is not None and remaining <= 0) or (
                        abandon is not None and abandon()):
                    self._queue.remove(token)
                    # the next in line may be free to go now
                    self._cond.notify_all()
                    return False
                if abandon is not None:
                    remaining = min(remaining or ABANDON_POLL, ABANDON_POLL)
                self._cond.wait(remaining)

            self._queue.popleft()
            self._owner = me
            self._depth = 1
            self.grants += 1
            return True

    def release(self):
        """Releases one level of the lock held by the calling thread."""
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a FairLock not held")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()


def _try_flock(path, create):
    """Tries once to lock ``path`` exclusively.

    Returns:
        a file descriptor holding the lock, or None if the lock is busy or
        the file was replaced meanwhile

    Raises:
        FileNotFoundError: if the directory of ``path`` does not exist and
            ``create`` is False
    """
    dirpath = os.path.dirname(path)
    if create:
        os.makedirs(dirpath, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        if create:
            return None  # the directory was removed meanwhile: try again
        raise

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise

    # the index may have been dropped (its directory removed) between our
    # open() and flock(): a lock on an unlinked file excludes nobody
    try:
        st = os.stat(path)
        same = (st.st_ino, st.st_dev) == (os.fstat(fd).st_ino, os.fstat(fd).st_dev)
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None

    return fd


def backoff(attempt):
    """Seconds to sleep before retry number ``attempt`` of a busy lock."""
    pause = min(_MAX_BACKOFF, _MIN_BACKOFF * 1.5**attempt)
    return pause * random.uniform(0.5, 1.0)


class ProcessLock:
    """An exclusive lock on a directory, shared by all processes.

    Not thread-safe by itself: guard it with a :class:`FairLock`.

    Args:
        dirpath: the directory (the index directory)
    """

    def __init__(self, dirpath):
        self.dirpath = dirpath
        self._mutex_path = os.path.join(dirpath, MUTEX_FILE)
        self._gate_path = os.path.join(dirpath, GATE_FILE)
        self._fd = None
        _ALL_LOCKS.add(self)

    @property
    def held(self):
        return self._fd is not None

    def acquire(self, deadline, create=False):
        """Acquires the lock, waiting until ``deadline`` at most.

        Args:
            deadline: a :func:`time.monotonic` time
            create (False): whether to create the directory if missing

        Returns:
            True if acquired, False if ``deadline`` passed

        Raises:
            FileNotFoundError: if the directory does not exist and ``create``
                is False
        """
        if self._fd is not None:
            raise RuntimeError("ProcessLock already held")

        gate = None
        attempt = 0
        try:
            while True:
                # holding the gate while waiting for the mutex makes the
                # holder's next acquire() wait until we got the mutex
                if gate is None:
                    gate = _try_flock(self._gate_path, create)
                if gate is not None:
                    fd = _try_flock(self._mutex_path, create)
                    if fd is not None:
                        self._fd = fd
                        return True
                    if not _same_file(gate, self._gate_path):
                        os.close(gate)  # the directory was replaced
                        gate = None

                if time.monotonic() >= deadline:
                    return False
                time.sleep(backoff(attempt))
                attempt += 1
        finally:
            if gate is not None:
                os.close(gate)

    def try_acquire(self, create=False):
        """Takes the lock if it is free and nobody waits for it, without
        waiting, and without a sign to a holder that someone waits (the
        turnstile is looked at only once the lock is ours: a holder's
        :meth:`wanted` never sees this attempt).

        Returns:
            True if acquired

        Raises:
            FileNotFoundError: as :meth:`acquire`
        """
        if self._fd is not None:
            raise RuntimeError("ProcessLock already held")
        fd = _try_flock(self._mutex_path, create)
        if fd is None:
            return False
        gate = _try_flock(self._gate_path, create)
        if gate is None:
            os.close(fd)  # someone waits for it: theirs
            return False
        os.close(gate)
        self._fd = fd
        return True

    def release(self):
        """Releases the lock."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def wanted(self):
        """Whether another process is waiting for the lock (we hold it)."""
        try:
            gate = _try_flock(self._gate_path, create=False)
        except FileNotFoundError:
            return False
        if gate is None:
            return True
        os.close(gate)
        return False

    def _forget_after_fork(self):
        # the child's copy of the descriptor shares the parent's lock: close
        # it, or the lock would outlive the parent's release
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def _same_file(fd, path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (fst.st_ino, fst.st_dev)


_ALL_LOCKS = weakref.WeakSet()


def _after_fork_in_child():
    lock_files = set()
    for lock in list(_ALL_LOCKS):
        lock._forget_after_fork()
        lock_files.update((lock._mutex_path, lock._gate_path))
    _close_descriptors_of(lock_files)


def _close_descriptors_of(paths):
    """Closes this process's descriptors of the files ``paths``: those
    that another thread of the parent held at the fork, in no lock's
    ``_fd`` (the keeper's look at the turnstile, an acquire under way).
    The child's copy shares the parent's lock: kept, it would hold the
    index (or its turnstile) for the child's lifetime, e.g. a data
    loader's workers forked while the index is kept open."""
    wanted = set()
    for path in paths:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            wanted.add((st.st_dev, st.st_ino))
    if wanted:
        close_descriptors(lambda fd: _file_id(fd) in wanted)


def _file_id(fd):
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def close_descriptors(match):
    """Closes each of this process's descriptors ``fd`` for which
    ``match(fd)`` is True (an ``OSError`` in it: not closed). For a forked
    child's hooks, which close the copies of what the parent holds."""
    try:
        fds = [int(fd) for fd in os.listdir("/dev/fd")]  # Linux, macOS
    except OSError:
        return
    for fd in fds:
        try:
            matched = match(fd)
        except OSError:
            continue  # the listing's own descriptor, closed by now
        if matched:
            with contextlib.suppress(OSError):
                os.close(fd)


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- who holds an index (for messages) -------------------------------------------


def holders(dirpath):
    """The processes that have the lock files of ``dirpath`` open: those
    with the mutex hold the index (a process closes a lock file it did
    not get), those with only the turnstile wait for it. For an
    :class:`~fiftyone_ai_search.errors.IndexBusyError` to name who keeps
    the index busy; Linux only (``/proc``), else empty.

    Returns:
        a list of ``(pid, role, command)``, ``role`` "holds" or "waits",
        ``command`` the process's command line (shortened)
    """
    wanted = {}
    for name, role in ((MUTEX_FILE, "holds"), (GATE_FILE, "waits")):
        try:
            st = os.stat(os.path.join(dirpath, name))
        except OSError:
            continue
        wanted[(st.st_dev, st.st_ino)] = role
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    found = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone, or another user's
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            role = wanted.get((st.st_dev, st.st_ino))
            if role and found.get(pid) != "holds":
                found[pid] = role
    return [(pid, role, _command(pid)) for pid, role in sorted(
        found.items(), key=lambda kv: (kv[1] != "holds", kv[0]))]


def _command(pid, most=120):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return "?"
    line = " ".join(a.decode("utf-8", "replace") for a in args if a)
    return line if len(line) <= most else line[: most - 3] + "..."


def describe_holders(dirpath):
    """What :func:`holders` finds, as a clause of a message ("" if
    nothing): who holds the index, and whether that is this process or
    a child of it (a descriptor it should not have)."""
    me = os.getpid()
    parts = []
    for pid, role, command in holders(dirpath):
        if pid == me:
            who = f"this process (pid {pid})"
        else:
            who = f"pid {pid}"
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{pid}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                        who += ", a child of this process"
        parts.append(f"{who} {role}: {command}")
    return "; ".join(parts)
