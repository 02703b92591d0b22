"""Test session setup: a private ``mongod`` and offline, isolated FiftyOne.

FiftyOne reads its configuration when it is first imported, so the
``mongod`` starts in ``pytest_configure``, before collection imports any
test module (nothing this conftest imports imports ``fiftyone``). Each
process that runs tests has its own; an interrupted run stops it too
(tests/test_interrupted_run.py).
"""

import os
import resource
import signal
import subprocess
import sys
import time

# One torch thread in each test process and in the processes it starts (sync
# workers, App servers, refreshers: they inherit it), unless the caller chose.
# `-n auto` runs a test process per core beside Chromium and the servers:
# torch's OpenMP threads, one per core in each process, spin waiting for
# each other on busy cores. Embedding 1,500 shapes here took 9-13 s of CPU
# with torch's 2 threads and 2 s with one, at load 10-20 on 2 cores
# (docs/development.md, test-time budget). numpy's BLAS keeps its own
# default, the core count (OpenBLAS reads OMP_NUM_THREADS too): the tests of
# the upkeep's BLAS threads see what they saw before. The tests of torch's
# thread handling set the count themselves (test_embedder.py).
if "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(os.cpu_count() or 1))

import psutil
import pytest

from fiftyone_ai_search.testing import isolated_fiftyone

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Stops the mongod (and removes the scratch directory) once the process
# that started it is gone, however it went: the write end of its stdin is
# held by that process alone, so the read returns when the process ends
# (a kill -9 too, where no handler runs). Another process that took the pid
# since is left alone (its command line is checked).
_WATCHDOG = r"""
read -r _
for pid in $MONGODS; do
  if tr '\0' ' ' < /proc/$pid/cmdline 2>/dev/null | grep -q "mongod.*$SCRATCH"; then
    kill -TERM $pid
    while kill -0 $pid 2>/dev/null; do sleep 0.1; done
  fi
done
rm -rf "$SCRATCH"
"""


def _stop_mongod_when_this_process_ends(scratch: str) -> None:
    mongods = [str(p.pid) for p in psutil.Process().children()
               if p.name() == "mongod"]
    read_end, write_end = os.pipe()  # neither end passes to exec'd children
    subprocess.Popen(
        ["sh", "-c", _WATCHDOG], stdin=read_end, close_fds=True,
        # its own session: a Ctrl-C or a kill of this process group spares
        # it, and it must outlive this process
        start_new_session=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
             "MONGODS": " ".join(mongods), "SCRATCH": scratch},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(read_end)
    _WATCHDOG_PIPE.append(write_end)  # open until this process ends


_WATCHDOG_PIPE: list = []


def _terminate_as_interrupt(signum, frame):
    # pytest tears the session down on KeyboardInterrupt (module fixtures:
    # App servers, datasets) and exits; the atexit hooks then stop mongod
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@pytest.hookimpl(trylast=True)  # after pytest-xdist's: it says who we are
def pytest_configure(config):
    """A private ``mongod`` and scratch directory for this process, before
    any test module imports fiftyone (collection comes after configure).
    Not in pytest-xdist's controller (``-n N``): it runs no test, its
    workers (each a process with this conftest) have their own.

    A SIGTERM or SIGHUP ends the run as Ctrl-C does (teardown, then mongod
    stopped at exit); a watchdog stops mongod if this process dies with no
    chance to (``kill -9``)."""
    if config.pluginmanager.hasplugin("dsession"):
        return
    scratch = isolated_fiftyone()
    _stop_mongod_when_this_process_ends(scratch)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _terminate_as_interrupt)

# tests/ is a package (tests.helpers, tests.peer, tests.app_browser); the
# browser driver keeps its old import name too, `from app_browser import`,
# for browser tests written against it
from tests import app_browser  # noqa: E402 (after the set-up above)

sys.modules.setdefault("app_browser", app_browser)

# The browser files' fixtures, registered here once for the whole tests/
# folder. Imported into each test module instead, each module would hold
# fixtures of its own, "session" scope notwithstanding: a Chromium per
# file, kept to the end of the run. Here a worker has one Chromium and one
# App server for all the browser files it runs (tests/app_browser.py).
from tests.app_browser import (  # noqa: E402,F401 (fixtures and a hook)
    app, app_server, app_session, browser, browser_artifacts,
    pytest_runtest_makereport)

#: the longest test files, longest first (by their tests' durations in a
#: full run, 2026-12-07; the browser files lead): the scheduler hands them
#: out first, so that the two workers end together rather than one running
#: a long file alone at the end (a 33 s file handed out last left the other
#: worker idle for 40 s). Files not listed, each under ~15 s, follow in
#: pytest-xdist's own order (most tests first); the order need only be
#: roughly right. The duplicates' file is the last browser file: its App
#: server runs in another environment (it lets the App schedule
#: operations), so the worker's server is started again for it
#: (tests/app_browser.py, AppServer), and after it only if another browser
#: file followed.
LONG_FILES = (
    "tests/test_app_browser.py",
    "tests/test_app_browser_curator.py",
    "tests/test_app_browser_objects.py",
    "tests/test_app_browser_upload.py",
    "tests/test_app_browser_frames.py",
    "tests/test_app_browser_grouped.py",
    "tests/test_app_browser_duplicates.py",
    "tests/test_operators.py",
    "tests/test_cells.py",
    "tests/test_generations.py",
    "tests/test_peer_brain.py",
    "tests/test_concurrent_search.py",
    "tests/test_audit.py",
    "tests/test_brain.py",
    "tests/test_hostile.py",
    "tests/test_benches.py",
    "tests/test_sync.py",
    "tests/test_docs.py",
    "tests/test_frames_sync.py",
    "tests/test_cli.py",
    "tests/test_refresher.py",
    "tests/test_objects.py",
    "tests/test_app_frames.py",
    "tests/test_interrupted_run.py",
    "tests/test_near_duplicates.py",
    "tests/test_brain_contract.py",
    "tests/test_store.py",
)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, if installed
def pytest_xdist_make_scheduler(config, log):
    """Under ``pytest -n N --dist loadfile`` (the test command): each test
    file runs whole on one worker, so its module fixtures (datasets,
    indexes, an App server) are built once, and the files go out longest
    first (:data:`LONG_FILES`). Each worker is a process of its own, with
    its own ``mongod`` and scratch directory (``isolated_fiftyone`` at this
    module's import), and, for the browser files, its own App server (on a
    free port) and Chromium (with a profile of its own), each started once
    and kept for the worker's next browser file: workers share nothing but
    the checkout, so the browser files, the longest, run on both workers
    at once."""
    if config.getvalue("dist") != "loadfile":
        return None  # xdist's own scheduling
    # here, not at the top: pytest-xdist is needed only to run in parallel
    from xdist.scheduler import LoadFileScheduling

    class LongestFirst(LoadFileScheduling):
        def _assign_work_unit(self, node):
            if not getattr(self, "_longest_first", False):
                # once, before the first file goes out (the queue is built
                # once every worker has collected)
                for scope in reversed(LONG_FILES):
                    if scope in self.workqueue:
                        self.workqueue.move_to_end(scope, last=False)
                self._longest_first = True
            super()._assign_work_unit(node)

    return LongestFirst(config, log)


def _cpu_now() -> tuple:
    """(this process, its reaped children, its mongod): user + sys CPU s."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    mongod = 0.0
    for child in psutil.Process().children():
        try:
            if child.name() == "mongod":
                times = child.cpu_times()
                mongod += times.user + times.system
        except psutil.Error:
            pass
    return (own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime,
            mongod)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With ``AIS_TEST_CPU=DIR``, each test process appends a row per test
    to ``DIR/<worker>.tsv``: its wall and the CPU it cost (this process,
    the subprocesses it waited for, its ``mongod``), its module fixtures'
    set-up and teardown included (in the first and last test of the file),
    whether it is ``slow``; the first row, ``<collection>``, is the CPU
    spent before the first test. CPU rather than wall, since the machines
    this is measured on are shared (docs/development.md, test-time
    budget). Not counted: processes a test leaves unreaped (Chromium)."""
    out = os.environ.get("AIS_TEST_CPU")
    if not out:
        yield
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    path = os.path.join(out, f"{worker}.tsv")
    before, start = _cpu_now(), time.monotonic()
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write("test\tslow\twall\tcpu\tchildren\tmongod\n"
                    f"<collection>\t0\t0\t{before[0]:.2f}\t{before[1]:.2f}"
                    f"\t{before[2]:.2f}\n")
    yield
    after = _cpu_now()
    slow = int(item.get_closest_marker("slow") is not None)
    with open(path, "a") as f:
        f.write(f"{item.nodeid}\t{slow}\t{time.monotonic() - start:.2f}\t"
                + "\t".join(f"{a - b:.2f}" for a, b in zip(after, before))
                + "\n")


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory):
    """A ``local-dir:`` checkpoint of the tiny CLIP's architecture with other
    (perturbed) weights: another model as far as the index is concerned."""
    from fiftyone_ai_search.testing import perturbed_tiny_clip

    return perturbed_tiny_clip(str(tmp_path_factory.mktemp("other-tiny-clip")))


@pytest.fixture(scope="session")
def tiny():
    """The bundled tiny CLIP as open_clip builds it: ``(model, preprocess,
    tokenizer)``, in eval mode."""
    import open_clip

    from fiftyone_ai_search.demo import shapes

    name = shapes.tiny_clip_model_name()
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    model.eval()  # BatchNorm tower: embeddings must not depend on the batch
    return model, preprocess, open_clip.get_tokenizer(name)
