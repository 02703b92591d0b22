"""What the store's own child processes share: each dies with the
process that started it (a compaction's child with its holder, a reader
of the builder's file with whoever runs the optimize)."""

import contextlib
import ctypes
import os
import sys

#: prctl's option that sends the caller a signal when its parent dies
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid):
    """Makes this process die (SIGKILL) with its parent ``parent_pid``, kill
    -9 included, so that no child works on for nobody: a compaction's
    child would write a copy that the next holder removes, a reader would
    read on. Linux; elsewhere the child runs to its own end. Exits at once
    where the parent died before this was asked."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, 9)  # SIGKILL
    if os.getppid() != parent_pid:
        sys.exit(1)  # the parent died before the prctl
