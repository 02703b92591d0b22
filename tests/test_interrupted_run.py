"""An interrupted test run leaves no ``mongod`` of its own behind.

Each test process starts a private ``mongod`` (``tests/conftest.py``); a
run stopped midway (Ctrl-C, a SIGTERM from CI or a shell, a ``kill -9``)
must stop it too, in one process and under pytest-xdist. A real pytest
run with this conftest is started here, held in a test that waits, and
killed; then its ``mongod`` (found by the waiting test itself) must be
gone, and its scratch directory with it. The waits are bounds that tell a
hang from a wait, not timings.
"""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow  # pytest runs of their own, killed

# the inner run's conftest: the suite's own, as a plugin (the inner run's
# root is its temporary directory)
INNER_CONFTEST = 'pytest_plugins = ["tests.conftest"]\n'

# the inner run's test: says who runs it and which mongod it has, then
# waits to be killed
INNER_TEST = '''
import json, os, time
import psutil

def test_waits_to_be_killed():
    me = psutil.Process()
    mongods = [p.pid for p in me.children() if p.name() == "mongod"]
    scratch = os.path.dirname(os.environ["FIFTYONE_AI_SEARCH_DIR"])
    with open(os.environ["AIS_STARTED"] + ".tmp", "w") as f:
        json.dump({"pid": me.pid, "mongods": mongods, "scratch": scratch}, f)
    os.rename(os.environ["AIS_STARTED"] + ".tmp", os.environ["AIS_STARTED"])
    time.sleep(600)
'''


def _wait(condition, what, timeout):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def _default_signals():
    """The inner run gets the signals a terminal's would: a suite started
    in the background (``cmd &`` in a script, ``nohup``) ignores SIGINT,
    SIGQUIT and SIGHUP, and a child inherits that (Python then installs no
    KeyboardInterrupt handler), so the Ctrl-C under test would never
    arrive."""
    for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                   signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def _alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("workers, signum", [
    (0, signal.SIGINT),
    (0, signal.SIGTERM),
    (0, signal.SIGKILL),
    (1, signal.SIGINT),
    (1, signal.SIGTERM),
], ids=["one-process-sigint", "one-process-sigterm", "one-process-sigkill",
        "xdist-sigint", "xdist-sigterm"])
def test_a_killed_run_leaves_no_mongod(tmp_path, workers, signum):
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    started = tmp_path / "started.json"
    env = dict(os.environ, AIS_STARTED=str(started),
               PYTHONPATH=os.pathsep.join(
                   [REPO_DIR] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    # the outer run's FiftyOne settings must not leak into the inner one
    for name in list(env):
        if name.startswith("FIFTYONE_"):
            del env[name]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")]
    if workers:
        cmd += ["-n", str(workers)]
    run = subprocess.Popen(cmd, cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           preexec_fn=_default_signals)
    try:
        _wait(lambda: started.exists() or run.poll() is not None,
              "the inner test to start", 300)
        assert started.exists(), run.communicate()[0].decode()
        inner = json.loads(started.read_text())
        assert len(inner["mongods"]) == 1, inner
        (mongod,) = inner["mongods"]
        assert _alive(mongod)
        if workers:
            # the controller runs no test: no mongod of its own
            assert inner["pid"] != run.pid
            assert not [p for p in psutil.Process(run.pid).children()
                        if p.name() == "mongod"]
        run.send_signal(signum)
        output = run.communicate(timeout=300)[0].decode()
    finally:
        if run.poll() is None:
            run.kill()
    _wait(lambda: not _alive(mongod), f"mongod {mongod} to stop", 120)
    _wait(lambda: not os.path.exists(inner["scratch"]),
          "the scratch directory to go", 60)
    assert run.returncode != 0, output
