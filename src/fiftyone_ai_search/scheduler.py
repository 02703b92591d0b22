"""The refresher: keeps the index of every dataset with AI search on in sync
with its dataset, on a schedule (APScheduler).

As a service, for a shared install (one per database is enough; more do no
harm)::

    python -m fiftyone_ai_search refresher                 # every 10 minutes
    python -m fiftyone_ai_search refresher --interval-minutes 1
    python -m fiftyone_ai_search refresher --once          # one pass (cron)

or in a Python process (a background thread)::

    import fiftyone_ai_search as ais

    ais.start_refresher()  # every FIFTYONE_AI_SEARCH_REFRESH_MINUTES (10)
    ...
    ais.stop_refresher()

A pass looks at each dataset whose AI search is on, one after another, in
this process. A dataset where nothing changed costs a few indexed queries
(:func:`fiftyone_ai_search.sync.images.has_changes`) and a count of its index (the
consistency check, :func:`fiftyone_ai_search.sync.images.is_consistent`, whose
mismatch makes the pass sync and so repair it): no model is loaded. A dataset whose computation runs elsewhere is asked to sync
once more when done rather than waited for, and the dataset lease keeps two
refreshers from ever computing one dataset at once. A deleted dataset's index
and state are removed. Disabling AI search drops a dataset from the passes.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import time

from . import refreshers, validate
from .config import MAX_REFRESH_MINUTES, get_settings
from .embeddings import finish_disable
from .errors import IndexDamagedError, StateDamagedError, SyncCancelled
from .index import state as st
from .index.indexes import open_index
from .index import targets
from .index.targets import field_of
from .lifecycle import forget_deleted, maintain_index
from .store import IndexNotFoundError
from .sync.frames import frames_consistent
from .sync.images import has_changes, is_consistent
from .sync.runner import run_sync

logger = logging.getLogger(__name__)

JOB_ID = "ai-search-refresh"
HEARTBEAT_JOB_ID = "ai-search-refresher-heartbeat"


@dataclasses.dataclass
class RefreshReport:
    """What one pass of the refresher did.

    Attributes:
        synced: dataset name -> :class:`fiftyone_ai_search.sync.images.SyncReport`
            (an object index as ``"name (field)"``, here and below)
        unchanged: names of datasets with nothing to sync
        busy: names of datasets whose computation ran elsewhere (asked to
            sync once more when done)
        removed: ids of deleted datasets whose index and state were removed,
            and names of datasets whose disable was killed midway and whose
            leftovers this pass removed
        errors: dataset name (or id) -> what went wrong
        seconds: wall time of the pass
    """

    synced: dict = dataclasses.field(default_factory=dict)
    unchanged: list = dataclasses.field(default_factory=list)
    busy: list = dataclasses.field(default_factory=list)
    removed: list = dataclasses.field(default_factory=list)
    errors: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    def __str__(self):
        return (
            f"synced {len(self.synced)}, unchanged {len(self.unchanged)}, "
            f"busy {len(self.busy)}, removed {len(self.removed)}, errors "
            f"{len(self.errors)} in {self.seconds:.1f} s"
        )


def refresh_all(datasets=None, settings=None):
    """Runs one pass: syncs every dataset whose AI search is on and that
    changed since its last sync.

    An error in one dataset is recorded in the report (and the dataset's
    status) and the pass goes on with the next.

    Args:
        datasets (None): names of the datasets to look at; by default every
            dataset whose AI search is on
        settings (None): the :class:`fiftyone_ai_search.config.Settings`

    Returns:
        a :class:`RefreshReport`
    """
    report = _refresh_all(datasets, settings)
    # a one-off pass (cron): the App says when it ran and what it did
    refreshers.record_pass(report, once=True)
    return report


def _refresh_all(datasets, settings):
    names = validate.names(datasets, "datasets")
    names = None if names is None else set(names)
    settings = settings or get_settings()
    report = RefreshReport()
    start = time.time()
    for doc in st.enabled_states():
        key = doc.key
        name = doc.dataset_name or key
        try:
            # a dataset, or the objects of one of its fields
            dataset, name, wanted = _target_of(doc, names)
            if not wanted:
                continue

            _refresh_one(key, dataset, doc, settings, report)
        except Exception as e:  # one dataset must not stop the others
            logger.exception("AI search refresh of '%s' failed", name)
            report.errors[name] = f"{type(e).__name__}: {e}"
    _finish_abandoned_disables(names, settings, report)

    report.seconds = time.time() - start
    logger.info("AI search refresh: %s", report)
    return report


def _refresh_one(key, dataset, doc, settings, report):
    if dataset is None:
        _forget(doc, settings)
        report.removed.append(key)
        return

    # read again: earlier datasets of this pass may have taken a while
    doc = st.load(dataset)
    if doc is None or not doc.enabled:
        return

    name = _label(dataset)
    if st.is_running(doc):
        st.request_rerun(dataset)
        report.busy.append(name)
        return

    if not has_changes(dataset, doc) and _consistent(dataset, doc, settings):
        report.unchanged.append(name)
    else:
        try:
            report.synced[name] = run_sync(dataset, settings=settings)
        except SyncCancelled:
            return  # disabled meanwhile: nothing to refresh
    maintain_index(dataset, settings)


def _label(target):
    """How a report names a target: its dataset's name, with the field for
    an object index."""
    field = field_of(target)
    return target.name if field is None else f"{target.name} ({field})"


#: the consistency check of each kind of target
#: (:attr:`~fiftyone_ai_search.index.targets.Target.kind`): a frame index
#: counts its points by its videos' frame 1
_CONSISTENT = {"images": is_consistent, "objects": is_consistent,
               "frames": frames_consistent}


def _consistent(dataset, doc, settings):
    """The consistency check of a dataset with nothing new: a mismatch
    (an index changed behind our back) makes the pass sync it, which
    repairs it."""
    store = open_index(dataset, settings, doc)
    try:
        store.check()
        return _CONSISTENT[targets.of(dataset).kind](dataset, store)
    except IndexNotFoundError:
        return False  # the sync rebuilds it
    except IndexDamagedError as e:
        if isinstance(e, StateDamagedError):
            raise
        return False  # the sync rebuilds it
    finally:
        store.close()


def _target_of(doc, names):
    """The target of a state (None if its dataset is gone), how a report
    names it, and whether a pass over the datasets ``names`` (None: all)
    looks at it."""
    target = st.load_target(doc.key)
    name = doc.dataset_name or doc.key
    if target is not None:
        name = target.name
    wanted = names is None or name in names
    return target, (name if target is None else _label(target)), wanted


def _finish_abandoned_disables(names, settings, report):
    """Finishes the disables that were killed midway: what they left
    (indexes, state, Brain runs, the latest results) is removed, as the
    disable would have."""
    for doc in st.abandoned_disables():
        name = doc.dataset_name or doc.key
        try:
            target, name, wanted = _target_of(doc, names)
            if not wanted:
                continue
            finish_disable(target, doc, settings=settings)
            report.removed.append(name)
            logger.info("AI search: removed what a disable of '%s' left",
                        name)
        except Exception as e:  # one dataset must not stop the others
            logger.exception("AI search: removing what a disable of '%s' "
                             "left failed", name)
            report.errors[name] = f"{type(e).__name__}: {e}"


def _forget(doc, settings):
    """Removes the index, collection scores and state of a deleted
    dataset."""
    forget_deleted(doc.key, settings)


class Refresher:
    """Runs :func:`refresh_all` every ``interval_minutes``, the first pass
    at once.

    Args:
        interval_minutes (None): 1-1440; defaults to the configured
            ``FIFTYONE_AI_SEARCH_REFRESH_MINUTES`` (10)
        datasets (None): names of the datasets to refresh; by default every
            dataset whose AI search is on
        settings (None): the :class:`fiftyone_ai_search.config.Settings`
    """

    def __init__(self, interval_minutes=None, datasets=None, settings=None):
        self.datasets = validate.names(datasets, "datasets")
        settings = settings or get_settings()
        if interval_minutes is not None:
            # a number, in the setting's range (named here, not as the
            # setting)
            interval_minutes = validate.number(
                interval_minutes, "interval_minutes", 1, MAX_REFRESH_MINUTES)
            # validated like the setting
            settings = settings.replace(refresh_minutes=interval_minutes)

        self.settings = settings
        self.interval_minutes = settings.refresh_minutes
        self.last_report = None
        self._scheduler = None

    @property
    def running(self):
        return self._scheduler is not None and self._scheduler.running

    def start(self, blocking=False):
        """Starts the schedule.

        Args:
            blocking (False): run the passes in this thread until stopped
                (Ctrl-C, SIGTERM) rather than in a background thread
        """
        if self.running:
            return

        if blocking:
            # start-up: APScheduler
            from apscheduler.schedulers.blocking import BlockingScheduler

            self._scheduler = BlockingScheduler()
        else:
            # start-up: APScheduler
            from apscheduler.schedulers.background import BackgroundScheduler

            self._scheduler = BackgroundScheduler(daemon=True)

        # seen by the App from now on, renewed during passes too (its own
        # job: the scheduler runs it beside a pass)
        refreshers.register(self.interval_minutes, self.datasets)
        self._scheduler.add_job(refreshers.heartbeat, "interval",
                                id=HEARTBEAT_JOB_ID,
                                seconds=refreshers.HEARTBEAT_SECONDS)
        self._scheduler.add_job(
            self._pass,
            "interval",
            id=JOB_ID,
            minutes=self.interval_minutes,
            next_run_time=datetime.datetime.now(datetime.timezone.utc),
            # a pass that outlasts the interval is not run twice at once,
            # and missed passes are one pass
            max_instances=1,
            coalesce=True,
        )
        logger.info(
            "AI search refresher: every %d minute(s)", self.interval_minutes
        )
        try:
            self._scheduler.start()
        except (KeyboardInterrupt, SystemExit):
            # blocking: no more passes; one in progress ends at exit with
            # its batches committed
            self.stop(wait=False)

    def stop(self, wait=True):
        """Stops the schedule; ``wait`` for a pass in progress to end."""
        if self.running:
            self._scheduler.shutdown(wait=wait)
        if self._scheduler is not None:
            refreshers.unregister()
        self._scheduler = None

    def _pass(self):
        refreshers.pass_started()
        report = _refresh_all(self.datasets, self.settings)
        # recorded before it is shown here: whoever sees last_report finds
        # the pass in the database too
        refreshers.record_pass(report)
        self.last_report = report


_REFRESHER = None
_REFRESHER_LOCK = threading.Lock()


def start_refresher(interval_minutes: float | None = None,
                    datasets: list[str] | None = None) -> Refresher:
    """Starts refreshing every enabled dataset's index in a background
    thread of this process, the first pass at once; a no-op if it runs.

    Examples::

        import fiftyone_ai_search as ais

        refresher = ais.start_refresher(interval_minutes=5)
        ...
        print(refresher.last_report)  # synced 1, unchanged 3, ...
        ais.stop_refresher()

    Args:
        interval_minutes (None): 1-1440; defaults to the configured
            ``FIFTYONE_AI_SEARCH_REFRESH_MINUTES`` (10)
        datasets (None): names of the datasets to refresh; by default every
            dataset whose AI search is on

    Returns:
        the :class:`Refresher`
    """
    global _REFRESHER
    with _REFRESHER_LOCK:
        if _REFRESHER is None or not _REFRESHER.running:
            _REFRESHER = Refresher(interval_minutes, datasets)
            _REFRESHER.start()

        return _REFRESHER


def stop_refresher(wait: bool = True) -> None:
    """Stops the refresher started by :func:`start_refresher`, if any."""
    wait = validate.boolean(wait, "wait")
    global _REFRESHER
    with _REFRESHER_LOCK:
        if _REFRESHER is not None:
            _REFRESHER.stop(wait=wait)
            _REFRESHER = None
