"""Running computations: in this process (blocking) or in a background worker.

A computation holds the dataset's lease (:mod:`fiftyone_ai_search.index.state`) so
that there are never two at once, in any process. A caller that finds one
running either waits for it and then syncs what is left (``wait=True``), or
asks it to run once more before it stops (``wait=False``).

Background work runs in a detached worker process
(``python -m fiftyone_ai_search sync``) so that it outlives the caller: an App
operator returns at once, and a notebook may be closed while it computes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

from ..config import get_settings
from ..errors import IndexDamagedError, StateDamagedError, SyncCancelled
from ..index import audit_prompts, indexes
from ..index import state as st
from ..index import targets
from ..store import IndexMismatchError
from .existing import ExistingEmbeddings
from .images import Synchronizer, has_changes
from .frames import FrameSynchronizer, sampling_of
from .objects import ObjectSynchronizer, crop_settings

logger = logging.getLogger(__name__)

#: how often a waiting caller looks at the lease
POLL_SECONDS = 0.5


def acquire(dataset, timeout=None):
    """Takes the dataset's lease, waiting while another computation runs.

    Args:
        dataset: the dataset
        timeout (None): the most seconds to wait; None waits as long as the
            other computation runs (a dead holder is detected by the lease)

    Returns:
        a :class:`fiftyone_ai_search.index.state.Lease`, or None on timeout
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
    left. Re-runs while other callers asked for it during the run. When the
    state changes meanwhile (another model, a rebuild, disable and enable),
    the pass stops before its next commit and the next pass does what the
    state asks now.

    Args:
        dataset: the dataset
        force (False): rebuild the index (beside the current one, which
            searches keep using until the new one is complete)
        verify_files (False): check every file's fingerprint
        progress (None): a callable ``progress(done, total)``, called with
            the counts of the whole run (of all its passes)
        settings (None): the :class:`fiftyone_ai_search.config.Settings`

    Returns:
        the :class:`fiftyone_ai_search.sync.images.SyncReport` of all passes

    Raises:
        SyncCancelled: if AI search is (or was meanwhile) switched off
    """
    settings = settings or get_settings()
    progress = _run_progress(progress) if progress else None
    if force:
        st.plan_rebuild(dataset)  # before waiting: a running sync stops
    with acquire(dataset):
        try:
            total = None
            stale = 0  # passes stopped at the same generation
            damaged = 0  # indexes found damaged, and rebuilt
            while True:
                doc = st.load(dataset)
                if doc is None or not doc.enabled:
                    raise SyncCancelled(
                        f"AI search is not enabled on dataset '{dataset.name}'"
                    )
                indexes.drop_indexes(doc.key, doc.retired, settings)
                try:
                    report = _sync_pass(dataset, doc, settings,
                                        verify_files, progress)
                except st.StaleGeneration as e:
                    logger.info("AI search sync of '%s' stopped: %s",
                                dataset.name, e)
                    stale = _stale_again(dataset, doc, e, stale)
                    continue
                except IndexDamagedError as e:
                    if isinstance(e, StateDamagedError):
                        raise
                    damaged += 1
                    if damaged > MAX_DAMAGED_REBUILDS:
                        raise  # the new one too: something else is wrong
                    # as for a model change: built beside, switched to once
                    # complete; the damaged one is dropped then
                    logger.warning("%s Rebuilding it.", e)
                    st.plan_rebuild(dataset)
                    continue
                logger.info("AI search sync of '%s': %s", dataset.name, report)
                total = report if total is None else total.then(report)
                doc = st.load(dataset)
                indexes.drop_indexes(doc.key, doc.retired, settings)
                # after a rebuild, what changed while it ran
                again = report.rebuilt and has_changes(dataset, doc)
                if not st.take_rerun_request(dataset) and not again:
                    if total is not report:
                        st.update(dataset, last_report=total.to_dict())
                    return total
                verify_files = False
        except SyncCancelled:
            raise
        except Exception as e:
            st.update(dataset, last_error=f"{type(e).__name__}: {e}")
            raise


#: damaged indexes a run rebuilds before it gives up (the rebuilt one damaged
#: again: a disk that fails, a process that writes into the index)
MAX_DAMAGED_REBUILDS = 2

#: passes that may stop at an unchanged generation before the state is
#: taken for damaged (a pass stops when the state changed: a generation
#: that did not change means the state contradicts itself)
MAX_STALE_PASSES = 3


def _stale_again(dataset, doc, error, stale):
    """After a pass stopped (``error``, a StaleGeneration): the count of
    passes stopped at ``doc``'s generation; raises StateDamagedError once
    too many did, rather than loop."""
    now = st.load(dataset)
    if now is None or now.generation != doc.generation:
        return 0
    stale += 1
    if stale >= MAX_STALE_PASSES:
        raise doc.damaged([
            f"{stale} passes stopped with the state unchanged ({error})"])
    return stale


def _run_progress(progress):
    """``progress(done, total)`` of a whole run, from that of its phases:
    each phase of each pass counts from 0 (the follow-up pass after a
    build, the consistency repair), so a new phase goes on from what the
    earlier ones embedded rather than back to 0. A later phase's first
    total is a bound taken before it looked at anything (mostly already
    indexed, for a follow-up pass): it is shown once the phase says more,
    so the bar does not fall back meanwhile."""
    before = last = 0
    first = True  # the next call is the first of a phase

    def run_progress(done, total):
        nonlocal before, last, first
        if done < last:  # a new phase
            before, first = before + last, True
        shown = 0 if first and before else total
        first, last = False, done
        progress(before + done, before + shown)

    return run_progress


def _sync_pass(dataset, doc, settings, verify_files, progress):
    """One synchronisation of the index the state ``doc`` asks for: the one
    being built if any, else the one searches use."""
    ref = doc.build or doc.index
    building = doc.build is not None
    store = indexes.open_ref(ref, settings)
    try:
        if not building and not store.exists():
            # deleted behind our back: rebuild it (beside, as always)
            logger.warning("AI search index of '%s' is missing: rebuilding",
                           dataset.name)
            st.plan_rebuild(dataset)
            raise st.StaleGeneration("the index is missing")
        if not building:
            store.check()  # damaged: rebuilt beside (see run_sync)
        model = indexes.load_index_model(ref, settings)
        if model.spec.identity != ref.model_identity:
            raise IndexMismatchError(
                f"The weights of model {ref.model!r} (pretrained="
                f"{ref.pretrained!r}) changed since AI search was enabled "
                "with them. Enable it again to rebuild with these weights: "
                "fiftyone_ai_search.enable_embeddings(dataset, model=..., "
                "pretrained=...)"
            )
        # the model is loaded: its audit prompts are encoded once for good
        # (the upkeep's audit need not load it, see audit_prompts)
        audit_prompts.keep(model, settings)
        synchronizer, given = _SYNCHRONIZERS[targets.of(dataset).kind](
            dataset, ref, building)
        sync = synchronizer(dataset, store, model, settings,
                            doc.generation, building=building,
                            progress=progress, **given)
        return sync.run(
            watermark=doc.watermark,
            deletion_watermark=doc.deletion_watermark,
            verify_files=verify_files,
        )
    finally:
        store.close()


def _images(dataset, ref, building):
    # the embeddings a build brings from a field or a Brain run
    existing = (ExistingEmbeddings.from_ref(dataset, ref.existing)
                if building else None)
    return Synchronizer, {"existing": existing}


def _objects(dataset, ref, building):
    return ObjectSynchronizer, {"crop": crop_settings(ref)}


def _frames(dataset, ref, building):
    return FrameSynchronizer, {"sampling": sampling_of(ref)}


#: the synchronizer of each kind of target
#: (:attr:`~fiftyone_ai_search.index.targets.Target.kind`), and what it is
#: given beside what every synchronizer is: ``kind -> f(dataset, index
#: ref, building) -> (class, keyword arguments)``
_SYNCHRONIZERS = {"images": _images, "objects": _objects, "frames": _frames}


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
        force (False): whether to rebuild the index (planned in the state
            at once, so a running computation does it)
        verify_files (False): whether to check every file's fingerprint
        secrets (None): plugin secrets to hand to the worker (through its
            environment, never its command line)

    Returns:
        the worker's pid, or None if a running computation was asked instead
    """
    if force:
        # recorded now: a running computation stops at its next commit and
        # rebuilds; a crash before any worker starts loses nothing
        st.plan_rebuild(dataset)
    doc = st.load(dataset)
    if st.is_running(doc):
        st.request_rerun(dataset)
        return None

    settings = get_settings(secrets=secrets)
    env = dict(os.environ)
    env.update({k: v for k, v in (secrets or {}).items() if v})
    import fiftyone as fo  # start-up: FiftyOne, on first use

    # the worker must reach the same database as this process
    if fo.config.database_uri:
        env["FIFTYONE_DATABASE_URI"] = fo.config.database_uri

    target = targets.of(dataset)
    cmd = [sys.executable, "-m", "fiftyone_ai_search", "sync",
           "--dataset-id", targets.dataset_key(target.dataset),
           *target.sync_args]
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
