"""What a spawned process runs on an embedded index, for the tests that
kill it with ``kill -9`` at a known line or race it from another process,
and the helpers that hold it there.

Kept light on purpose: numpy and the store only, no FiftyOne, no torch. A
spawned process imports the module of the function it runs; a test module
that imports FiftyOne and open_clip costs each child ~5 s of CPU before it
does anything, this one ~0.5 s (and the tests kill or race 14 of them).
"""

import functools
import multiprocessing
import os
import signal
import time

from fiftyone_ai_search.store import audit, upkeep
from fiftyone_ai_search.store import cells as cl
from fiftyone_ai_search.store.edge import EdgeStore

#: cells of 25 points (``cells`` settings): a few thousand points outgrow
#: their cells
SMALL_CELLS = {"POINTS_PER_CELL": 25, "MIN_CELLS": 8, "SWITCH_GRACE_S": 0.0}

#: what a child's ``settings`` and ``held`` name: ``"module.NAME"``
_OWNERS = {"upkeep": upkeep, "cells": cl, "audit": audit,
           "EdgeStore": EdgeStore}


def hold_at(owner, name, reached, call=1):
    """In a process that is about to be killed (``kill -9``): call number
    ``call`` of ``owner.name`` (a module's function, or a class's method)
    sets ``reached`` (a multiprocessing event) and waits there, without
    running, for the kill. The kill lands at that line whatever the
    machine's speed, where a sleep before the kill lands anywhere, or past
    the end on a fast machine. The process's other calls run as before."""
    original = getattr(owner, name)
    calls = []

    @functools.wraps(original)
    def held(*args, **kwargs):
        calls.append(name)
        if len(calls) == call:
            reached.set()
            while True:  # until killed
                time.sleep(60)
        return original(*args, **kwargs)

    setattr(owner, name, held)


def kill_once_held(target, args, what, timeout=120):
    """Runs ``target(*args, reached)`` in a spawned process, where it
    holds itself at a line with :func:`hold_at` (``reached`` set there),
    and kills it with SIGKILL once it is held; fails if it ended before,
    or never got there within ``timeout`` s (a deadline, not a speed
    check). ``what``: the place, named in the failure."""
    spawn = multiprocessing.get_context("spawn")
    reached = spawn.Event()
    p = spawn.Process(target=target, args=(*args, reached))
    p.start()
    deadline = time.monotonic() + timeout
    try:
        while not reached.wait(0.05):
            assert p.is_alive(), f"the pass ended before {what}"
            assert time.monotonic() < deadline, f"never reached {what}"
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.join()


def _set_up(settings, held, reached):
    """The child's module settings (``{"cells.MIN_PROBED": 6, ...}``, what
    the test's process set for itself) and, with ``held`` (``(owner,
    function, call)``, owner a key of :data:`_OWNERS`), where it holds for
    its kill."""
    for path, value in settings.items():
        owner, name = path.split(".")
        setattr(_OWNERS[owner], name, value)
    if held is not None:
        owner, function, call = held
        hold_at(_OWNERS[owner], function, reached, call)


def maintain(root, name, settings, held=None, reached=None):
    """A maintenance pass over the embedded index ``name`` under ``root``
    (``min_points=1000``), held at ``held`` for its kill if given."""
    _set_up(settings, held, reached)
    EdgeStore(name, root, lock_timeout=60).maintain(min_points=1000)


def audit_until_killed(root, name, settings, queries, held, reached):
    """Audits the index with ``queries`` (k=50, 60 image queries) over and
    over, held at ``held`` for its kill."""
    _set_up(settings, held, reached)
    index = EdgeStore(name, root, lock_timeout=60)
    while True:
        audit.audit(index, queries, k=50, image_queries=60)


def write_in_steps(root, name, ids, x, started):
    """Writes ``x`` under ``ids`` 50 points a commit (empty payloads),
    setting ``started`` once the index is open."""
    store = EdgeStore(name, root, lock_timeout=60)
    started.set()
    for start in range(0, len(ids), 50):
        store.upsert(ids[start:start + 50], x[start:start + 50],
                     [{} for _ in ids[start:start + 50]])
        time.sleep(0.01)
    store.close()


def take_then_replace(root, name, ids, x, take, taken, replace, replaced):
    """Once ``take`` is set, takes the embedded index ``name`` (a session's
    write of ``ids[0]``'s own vector, the index kept open after it, as a
    sync's worker holds it) and sets ``taken``; once ``replace`` is set,
    writes ``x`` under ``ids`` and sets ``replaced``."""
    store = EdgeStore(name, root, lock_timeout=60)
    take.wait(120)
    with store.session():
        store.upsert(ids[:1], x[:1], [{}])
    taken.set()
    replace.wait(120)
    with store.session():
        store.upsert(ids, x, [{} for _ in ids])
    replaced.set()
    store.close()
