"""Test session setup: a private ``mongod`` and offline, isolated FiftyOne.

FiftyOne reads its configuration when it is first imported, so everything
here happens at import time of this conftest, before any test module (or
plugin) imports ``fiftyone``.
"""

import atexit
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TMP = tempfile.mkdtemp(prefix="fiftyone-ai-search-tests-")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mongod_binary():
    # find_spec does not execute fiftyone/__init__ (which would read config)
    spec = importlib.util.find_spec("fiftyone")
    path = os.path.join(os.path.dirname(spec.origin), "db", "bin", "mongod")
    if not os.path.isfile(path):
        path = shutil.which("mongod")
    if not path:
        raise RuntimeError(
            "No mongod found: install the test extras as the README says "
            "(`pip install '.[mongod,test]'`)"
        )
    return path


def _start_mongod():
    dbpath = os.path.join(_TMP, "db")
    os.makedirs(dbpath)
    port = _free_port()
    proc = subprocess.Popen(
        [_mongod_binary(), "--dbpath", dbpath, "--port", str(port),
         "--bind_ip", "127.0.0.1", "--quiet"],
        stdout=open(os.path.join(_TMP, "mongod.log"), "w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mongod exited with code {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mongod did not start within 30 s")


def _stop_mongod(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(_TMP, ignore_errors=True)


_MONGOD, _PORT = _start_mongod()
# Registered before fiftyone is imported, so that it runs AFTER FiftyOne's
# own exit handlers (atexit is LIFO); otherwise exit hangs ~30 s.
atexit.register(_stop_mongod, _MONGOD)

os.environ.update(
    {
        "FIFTYONE_DATABASE_URI": f"mongodb://127.0.0.1:{_PORT}",
        "FIFTYONE_DATABASE_VALIDATION": "false",
        "FIFTYONE_DATABASE_DIR": os.path.join(_TMP, "fo-db-unused"),
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_PLUGINS_DIR": os.path.join(_TMP, "plugins"),
        "FIFTYONE_DEFAULT_DATASET_DIR": os.path.join(_TMP, "fo-datasets"),
        "FIFTYONE_AI_SEARCH_DIR": os.path.join(_TMP, "ai_search"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
)
os.makedirs(os.environ["FIFTYONE_PLUGINS_DIR"])


@pytest.fixture(scope="session")
def tmp_root():
    """The session's private scratch directory."""
    return _TMP


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory):
    """A ``local-dir:`` checkpoint of the tiny CLIP's architecture with other
    (perturbed) weights: another model as far as the index is concerned."""
    import torch
    from safetensors.torch import load_file, save_file

    from fiftyone_ai_search.demo import DEFAULT_MODEL_DIR

    out = tmp_path_factory.mktemp("other-tiny-clip")
    shutil.copy(os.path.join(DEFAULT_MODEL_DIR, "open_clip_config.json"), out)
    weights = load_file(
        os.path.join(DEFAULT_MODEL_DIR, "open_clip_model.safetensors")
    )
    gen = torch.Generator().manual_seed(0)
    perturbed = {
        k: (v.float() + 0.05 * torch.randn(v.shape, generator=gen)).to(v.dtype)
        if v.is_floating_point() and v.ndim >= 2 else v
        for k, v in weights.items()
    }
    save_file(perturbed, str(out / "open_clip_model.safetensors"))
    return f"local-dir:{out}"
