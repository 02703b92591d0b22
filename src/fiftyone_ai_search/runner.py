"""Running computations: in this process (blocking) or in a background worker.

A computation holds the dataset's lease (:mod:`fiftyone_ai_search.state`) so
that there are never two at once, in any process. A caller that finds one
running either waits for it and then syncs what is left (``wait=True``), or
asks it to run once more before it stops (``wait=False``).

Background work runs in a detached worker process
(``python -m fiftyone_ai_search sync``) so that it outlives the caller: an App
operator returns at once, and a notebook may be closed while it computes.
"""

import logging
import os
import subprocess
import sys
import time

from . import state as st
from .config import get_settings

logger = logging.getLogger(__name__)

#: how often a waiting caller looks at the lease
POLL_SECONDS = 0.5


def open_index(dataset, settings=None, doc=None):
    """Opens the vector store of a dataset whose AI search is on; given its
    state ``doc``, ``dataset`` is not read (it may no longer exist)."""
    from .store import open_store

    doc = doc or st.get(dataset)
    settings = (settings or get_settings()).replace(backend=doc["backend"])
    return open_store(doc["index_name"], settings)


def load_index_model(doc, settings=None):
    """Loads (once per process) the model that a dataset's index uses."""
    from .model import load_model, resolve_model

    settings = settings or get_settings()
    spec = resolve_model(doc["model"], doc["pretrained"])
    return load_model(spec, device=settings.device)


def acquire(dataset, timeout=None):
    """Takes the dataset's lease, waiting while another computation runs.

    Args:
        dataset: the dataset
        timeout (None): the most seconds to wait; None waits as long as the
            other computation runs (a dead holder is detected by the lease)

    Returns:
        a :class:`fiftyone_ai_search.state.Lease`, or None on timeout
    """
    deadline = None if timeout is None else time.time() + timeout
    while True:
        lease = st.try_acquire(dataset)
        if lease is not None:
            return lease
        if deadline is not None and time.time() >= deadline:
            return None
        time.sleep(POLL_SECONDS)


def run_sync(dataset, force=False, verify_files=False, progress=None,
             settings=None):
    """Synchronises ``dataset``'s index in this process, blocking.

    Waits for a computation already running elsewhere, then syncs what is
    left. Re-runs while other callers asked for it during the run.

    Returns:
        the :class:`fiftyone_ai_search.sync.SyncReport` of the last pass
    """
    from .sync import SyncCancelled, Synchronizer

    settings = settings or get_settings()
    with acquire(dataset):
        try:
            while True:
                doc = st.get(dataset)
                if doc is None or not doc.get("enabled"):
                    raise SyncCancelled(
                        f"AI search is not enabled on dataset '{dataset.name}'"
                    )
                model = load_index_model(doc, settings)
                store = open_index(dataset, settings, doc)
                try:
                    report = Synchronizer(
                        dataset, store, model, settings, progress=progress
                    ).run(force=force, verify_files=verify_files)
                finally:
                    store.close()
                logger.info("AI search sync of '%s': %s", dataset.name, report)
                force = False
                if not st.take_rerun_request(dataset):
                    return report
        except SyncCancelled:
            raise
        except Exception as e:
            st.update(dataset, last_error=f"{type(e).__name__}: {e}")
            raise


def _log_path(dataset, settings):
    logs = os.path.join(settings.storage_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    return os.path.join(logs, st.dataset_key(dataset) + ".log")


def start_background(dataset, force=False, verify_files=False, secrets=None):
    """Starts a background computation for ``dataset`` and returns at once.

    If one is already running, it is asked to sync once more when it is done
    instead, so that changes made meanwhile are picked up.

    Args:
        dataset: the dataset
        force (False): whether to rebuild the index
        verify_files (False): whether to check every file's fingerprint
        secrets (None): plugin secrets to hand to the worker (through its
            environment, never its command line)

    Returns:
        the worker's pid, or None if a running computation was asked instead
    """
    doc = st.get(dataset)
    if st.is_running(doc) and not force:
        st.request_rerun(dataset)
        return None

    settings = get_settings(secrets=secrets)
    env = dict(os.environ)
    env.update({k: v for k, v in (secrets or {}).items() if v})
    import fiftyone as fo

    # the worker must reach the same database as this process
    if fo.config.database_uri:
        env["FIFTYONE_DATABASE_URI"] = fo.config.database_uri

    cmd = [sys.executable, "-m", "fiftyone_ai_search", "sync",
           "--dataset-id", st.dataset_key(dataset)]
    if force:
        cmd.append("--force")
    if verify_files:
        cmd.append("--verify-files")

    with open(_log_path(dataset, settings), "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # survives the caller (App, notebook)
            close_fds=True,
        )
    st.mark_pending(dataset, proc.pid)
    return proc.pid
