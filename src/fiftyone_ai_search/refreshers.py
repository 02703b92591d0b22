"""Which refreshers run, and what their last passes did, so that the App can
say whether a dataset is kept fresh; and starting one as a service.

Every refresher (:class:`fiftyone_ai_search.scheduler.Refresher`, as a
service or in a Python process) keeps one document in the
``ai_search_refreshers`` collection of FiftyOne's database: where it runs
(host, pid), its interval and datasets, a heartbeat (``seen_at``, renewed
every :data:`HEARTBEAT_SECONDS`, also during a long pass), and what its last
pass did to each dataset. A one-off pass (``refresher --once``, e.g. from
cron) records its pass under a document of its host, without a heartbeat.

Times are the database server's clock (``$currentDate``, ``$$NOW``), the one
clock of everything this package stores, so that hosts whose clocks
disagree agree on it.

A refresher is alive while its heartbeat is recent, and on this host while
its process exists (a ``kill -9`` is seen at once). Documents of refreshers
gone for a week are removed when another one starts.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

import pymongo

from .config import get_settings
from .index.state import pid_alive

logger = logging.getLogger(__name__)

COLLECTION = "ai_search_refreshers"

#: how often a running refresher renews its heartbeat
HEARTBEAT_SECONDS = 30
#: a refresher whose heartbeat is older than this is taken for gone
STALE_SECONDS = 120
#: documents of refreshers gone longer than this are removed
FORGET_SECONDS = 7 * 24 * 3600


def _coll():
    import fiftyone.core.odm as foo  # start-up: FiftyOne, on first use

    return foo.get_db_conn()[COLLECTION]


def _me():
    return {"host": socket.gethostname(), "pid": os.getpid()}


# -- written by the refreshers -------------------------------------------------


def register(interval_minutes: int, datasets: list[str] | None) -> None:
    """Records that a refresher runs in this process, every
    ``interval_minutes`` over ``datasets`` (None: every dataset with AI
    search on). A document prepared by :func:`start_service` for this
    process is taken over."""
    coll = _coll()
    coll.delete_many({"$expr": {"$lt": [
        "$seen_at", {"$subtract": ["$$NOW", FORGET_SECONDS * 1000]}]}})
    coll.update_one(
        _me(),
        {"$set": {"interval_minutes": interval_minutes,
                  "datasets": datasets, "once": False, "stopped": False},
         "$currentDate": {"started_at": True, "seen_at": True}},
        upsert=True)


def _update(update, what):
    try:
        _coll().update_one(_me(), update)
    except pymongo.errors.PyMongoError:  # the refresher goes on
        logger.warning("AI search refresher: could not record %s", what,
                       exc_info=True)


def heartbeat() -> None:
    """Says that the refresher of this process is still running."""
    _update({"$currentDate": {"seen_at": True}}, "its heartbeat")


def unregister() -> None:
    """Records that the refresher of this process stopped (its last pass
    stays on record)."""
    _update({"$set": {"stopped": True, "running": False},
             "$currentDate": {"seen_at": True}}, "its stop")


def pass_started() -> None:
    """Records that a pass of this process's refresher begins."""
    _update({"$set": {"running": True},
             "$currentDate": {"seen_at": True, "pass_started_at": True}},
            "a pass")


def record_pass(report, once: bool = False) -> None:
    """Records what a pass did (a
    :class:`fiftyone_ai_search.scheduler.RefreshReport`). A one-off pass
    (``once``) is recorded under its host's document."""
    outcomes = [{"target": name, "outcome": f"synced: {sync}"}
                for name, sync in report.synced.items()]
    outcomes += [{"target": name, "outcome": "nothing changed"}
                 for name in report.unchanged]
    outcomes += [{"target": name, "outcome": "being computed elsewhere: "
                  "asked to sync again when done"} for name in report.busy]
    outcomes += [{"target": str(name), "outcome": f"failed: {error}"}
                 for name, error in report.errors.items()]
    # an update pipeline, to stamp the pass with the server's clock ($$NOW)
    # inside it; $literal: a name starting with "$" is not a field path
    last = {"summary": {"$literal": str(report)},
            "outcomes": {"$literal": outcomes}, "ended_at": "$$NOW"}
    fields = {"last_pass": last, "running": False, "seen_at": "$$NOW"}
    if once:
        key = {"host": socket.gethostname(), "pid": None, "once": True}
        fields["stopped"] = True
    else:
        key = _me()
    update = [{"$set": fields}]
    try:
        _coll().update_one(key, update, upsert=once)
    except pymongo.errors.PyMongoError:  # the pass itself succeeded
        logger.warning("AI search refresher: could not record the pass",
                       exc_info=True)


# -- read by the App -------------------------------------------------------------


def _alive(doc):
    if doc.get("once") or doc.get("stopped"):
        return False
    if doc["age_s"] > STALE_SECONDS:
        return False
    if doc.get("host") == socket.gethostname():
        return pid_alive(doc["pid"])
    return True


def _covers(doc, name):
    return doc.get("datasets") is None or name in doc["datasets"]


def _of_dataset(outcome, name):
    target = outcome["target"]
    return target == name or target.startswith(name + " (")


def refreshers_of(dataset_name: str) -> dict:
    """Whether a refresher keeps the dataset ``dataset_name`` fresh, and
    what the last pass that looked at it did.

    Returns:
        a dict with ``running`` (the alive refreshers covering it: dicts of
        ``host``, ``pid``, ``interval_minutes``, ``datasets``,
        ``started_at``, ``in_pass``) and ``last_pass`` (None, or a dict of
        ``ended_at`` (naive UTC), ``outcomes`` (``(target, outcome)``
        pairs of this dataset and its object indexes) and ``by`` (a
        description of the refresher that ran it))
    """
    docs = list(_coll().aggregate([{"$addFields": {"age_s": {"$divide": [
        {"$subtract": ["$$NOW", "$seen_at"]}, 1000]}}}]))
    running = [
        {"host": d["host"], "pid": d["pid"],
         "interval_minutes": d["interval_minutes"],
         "datasets": d.get("datasets"), "started_at": d.get("started_at"),
         "in_pass": bool(d.get("running"))}
        for d in docs if _alive(d) and _covers(d, dataset_name)]
    last = None
    for d in docs:
        p = d.get("last_pass") or {}
        outcomes = [(o["target"], o["outcome"]) for o in p.get("outcomes", [])
                    if _of_dataset(o, dataset_name)]
        if outcomes and (last is None or p["ended_at"] > last["ended_at"]):
            by = ("a one-off pass (refresher --once)" if d.get("once") else
                  f"the refresher on {d['host']} (pid {d['pid']})")
            last = {"ended_at": p["ended_at"], "outcomes": outcomes,
                    "by": by}
    return {"running": running, "last_pass": last}


# -- started from the App ----------------------------------------------------------


def start_service(interval_minutes: int | None = None,
                  datasets: list[str] | None = None,
                  log_path: str | None = None) -> int:
    """Starts a refresher as a service of its own: a background process
    (``python -m fiftyone_ai_search refresher``) in a session of its own,
    that outlives the caller (the App's server) and runs until stopped
    (``kill <pid>``). Returns at once: the passes never run in the caller.

    Args:
        interval_minutes (None): 1-1440; default the configured interval
        datasets (None): names of the datasets it refreshes; default every
            dataset whose AI search is on
        log_path (None): where its output goes; default
            ``<storage dir>/logs/refresher.log``

    Returns:
        the pid of the service
    """
    import fiftyone as fo  # start-up: FiftyOne, on first use

    settings = get_settings()
    if log_path is None:
        logs = os.path.join(settings.storage_dir, "logs")
        os.makedirs(logs, exist_ok=True)
        log_path = os.path.join(logs, "refresher.log")
    cmd = [sys.executable, "-m", "fiftyone_ai_search", "refresher"]
    if interval_minutes is not None:
        cmd += ["--interval-minutes", str(int(interval_minutes))]
    for name in datasets or ():
        cmd += ["--dataset", name]
    env = dict(os.environ)
    if fo.config.database_uri:  # the service must reach this database
        env["FIFTYONE_DATABASE_URI"] = fo.config.database_uri
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, env=env, close_fds=True,
            start_new_session=True)  # survives the App's server
    # seen at once (the service takes this document over when it starts:
    # it imports torch first)
    _coll().update_one(
        {"host": socket.gethostname(), "pid": proc.pid},
        {"$set": {"interval_minutes": interval_minutes or
                  settings.refresh_minutes, "datasets": datasets,
                  "once": False, "stopped": False},
         "$currentDate": {"started_at": True, "seen_at": True}},
        upsert=True)
    logger.info("AI search: started a refresher service, pid %d (log: %s)",
                proc.pid, log_path)
    return proc.pid
