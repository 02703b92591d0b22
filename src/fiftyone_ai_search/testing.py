"""An isolated, offline FiftyOne for tests and benchmarks: a private
``mongod`` on a free port and a scratch directory, set up before ``fiftyone``
is first imported (FiftyOne reads its configuration at import).

Call :func:`isolated_fiftyone` first thing, before importing ``fiftyone`` or
anything that imports it (``fiftyone_ai_search`` itself imports it lazily)::

    from fiftyone_ai_search.testing import isolated_fiftyone
    scratch = isolated_fiftyone()

    import fiftyone as fo

The ``mongod`` is stopped after FiftyOne's own exit handlers (``atexit`` runs
last-registered first), or exit hangs ~30 s. Needs a ``mongod``: the one the
``[mongod]`` extra installs into FiftyOne, or one on the PATH.
"""

import atexit
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mongod_binary():
    # find_spec does not run fiftyone/__init__ (which would read the config)
    spec = importlib.util.find_spec("fiftyone")
    path = os.path.join(os.path.dirname(spec.origin), "db", "bin", "mongod")
    if not os.path.isfile(path):
        path = shutil.which("mongod")
    if not path:
        raise RuntimeError("No mongod found: install the '[mongod]' extra")
    return path


def _start_mongod(dbpath, log_path):
    os.makedirs(dbpath, exist_ok=True)
    port = _free_port()
    proc = subprocess.Popen(
        [_mongod_binary(), "--dbpath", dbpath, "--port", str(port),
         "--bind_ip", "127.0.0.1", "--quiet"],
        stdout=open(log_path, "w"),
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


def _stop(proc, scratch, keep):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    if not keep:
        shutil.rmtree(scratch, ignore_errors=True)


def isolated_fiftyone(scratch=None, keep=False):
    """Starts a private ``mongod`` and points FiftyOne and AI search at a
    scratch directory. Must run before ``fiftyone`` is imported.

    Args:
        scratch (None): the scratch directory; default a new temporary one
        keep (False): whether to keep the scratch directory at exit

    Returns:
        the scratch directory
    """
    if "fiftyone" in sys.modules:
        raise RuntimeError(
            "isolated_fiftyone() must run before fiftyone is imported"
        )

    scratch = scratch or tempfile.mkdtemp(prefix="fiftyone-ai-search-")
    os.makedirs(scratch, exist_ok=True)
    proc, port = _start_mongod(
        os.path.join(scratch, "db"), os.path.join(scratch, "mongod.log")
    )
    # before fiftyone registers its own handlers, so this one runs after them
    atexit.register(_stop, proc, scratch, keep)

    os.environ.update(
        {
            "FIFTYONE_DATABASE_URI": f"mongodb://127.0.0.1:{port}",
            "FIFTYONE_DATABASE_VALIDATION": "false",
            "FIFTYONE_DATABASE_DIR": os.path.join(scratch, "fo-db-unused"),
            "FIFTYONE_DO_NOT_TRACK": "true",
            "FIFTYONE_PLUGINS_DIR": os.path.join(scratch, "plugins"),
            "FIFTYONE_DEFAULT_DATASET_DIR": os.path.join(scratch, "fo-datasets"),
            "FIFTYONE_AI_SEARCH_DIR": os.path.join(scratch, "ai_search"),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    os.makedirs(os.environ["FIFTYONE_PLUGINS_DIR"], exist_ok=True)
    return scratch


def perturbed_tiny_clip(out_dir, seed=0, scale=0.05):
    """Writes a ``local-dir:`` checkpoint of the bundled tiny CLIP's
    architecture with perturbed weights: another model as far as an index
    is concerned, for tests of model changes.

    Returns:
        the model name, ``"local-dir:<out_dir>"``
    """
    import torch  # start-up: torch
    from safetensors.torch import load_file, save_file  # start-up: torch

    from .demo import DEFAULT_MODEL_DIR  # start-up: PIL (the demo world draws)

    os.makedirs(out_dir, exist_ok=True)
    shutil.copy(os.path.join(DEFAULT_MODEL_DIR, "open_clip_config.json"),
                out_dir)
    weights = load_file(
        os.path.join(DEFAULT_MODEL_DIR, "open_clip_model.safetensors")
    )
    gen = torch.Generator().manual_seed(seed)
    perturbed = {
        k: (v.float() + scale * torch.randn(v.shape, generator=gen)).to(v.dtype)
        if v.is_floating_point() and v.ndim >= 2 else v
        for k, v in weights.items()
    }
    save_file(perturbed, os.path.join(out_dir, "open_clip_model.safetensors"))
    return f"local-dir:{out_dir}"
