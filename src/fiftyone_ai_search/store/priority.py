"""The upkeep's own threads at a low CPU priority, the searches it answers
at the process's.

On 2 cores, an upkeep pass's products and a compaction's optimize took
both cores, and a search another process asked this one meanwhile waited
for a core as long as it ran on one (issue 29, bench/README.md). Linux
gives each thread a niceness of its own, inherited by the threads it
starts; an unprivileged process may lower a thread's priority but never
raise it back, so only threads that do nothing but background work are
lowered, never a caller's.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

import contextlib
import os
import sys
import threading

#: the niceness of the upkeep's own work: a compaction's copies, opening
#: and optimize, and an upkeep pass's assignment of the points' cells. A
#: niced thread still gets a whole core where nothing else wants it
NICENESS = 19


def lower_this_thread(niceness: int = NICENESS) -> None:
    """Lowers the calling thread's CPU priority to ``niceness`` (Linux; a
    no-op elsewhere, and where the thread's priority is lower already)."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        # never a higher priority than the thread's own (root may raise it)
        if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
            os.setpriority(os.PRIO_PROCESS, tid, niceness)


def run_niced(fn, *args):
    """Runs ``fn(*args)`` on a thread of its own at :data:`NICENESS` and
    returns what it returns, or raises what it raises.

    A thread of its own, not the caller's lowered and restored (see the
    module's docstring). The engine's optimize, opening and flush run on
    the calling thread (no pool of their own, seen in /proc), so they are
    niced whole.
    """
    outcome = {}

    def run():
        lower_this_thread()
        try:
            outcome["result"] = fn(*args)
        except BaseException as e:  # handed to the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=run, name="ai-search-compaction",
                              daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
