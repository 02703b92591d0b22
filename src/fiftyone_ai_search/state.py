"""Per-dataset AI search state, kept in FiftyOne's own MongoDB.

One document per dataset in the ``ai_search_state`` collection says whether
AI search is on, with which model and backend, how far the index is synced
(the watermarks), what the last run reported, and who is computing right
now (a lease). Per-sample failures live in ``ai_search_failures``.

Nothing is written to the dataset or its samples: a write there would bump
``last_modified_at`` and make the sync re-trigger itself.

The lease makes "never two computations at once" hold across processes and
machines: it is taken with an atomic compare-and-set, renewed by a heartbeat,
and taken over when its holder stops renewing it (a ``kill -9``) or, on the
same host, as soon as the holder's process is gone.
"""

import datetime
import logging
import os
import socket
import threading
import uuid

import pymongo

logger = logging.getLogger(__name__)

#: version of the state document layout; see :func:`_migrate`
STATE_SCHEMA_VERSION = 1

STATE_COLLECTION = "ai_search_state"
FAILURES_COLLECTION = "ai_search_failures"

#: a lease whose heartbeat is older than this is considered abandoned
LEASE_STALE_SECONDS = 30.0
HEARTBEAT_SECONDS = 2.0
#: how long a requested background run counts as "in progress" before its
#: worker has taken the lease (the worker has to import torch first)
PENDING_GRACE_SECONDS = 120.0


def utcnow():
    # FiftyOne stores naive UTC datetimes (millisecond precision in MongoDB)
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def _db():
    import fiftyone.core.odm as foo

    return foo.get_db_conn()


def _states():
    return _db()[STATE_COLLECTION]


def _failures():
    coll = _db()[FAILURES_COLLECTION]
    coll.create_index([("dataset_id", 1), ("sample_id", 1)], unique=True)
    return coll


def _migrate(doc):
    """Upgrades a state document written by an older version, in memory.

    Version 1 is the first layout; later versions add a step here (and the
    document is rewritten on the next save).
    """
    version = doc.get("schema_version", 1)
    if version > STATE_SCHEMA_VERSION:
        raise RuntimeError(
            f"AI search state of dataset {doc['_id']} was written by a newer "
            f"version of fiftyone-ai-search (schema {version}); upgrade it"
        )
    return doc


def dataset_key(dataset):
    """The id that names a dataset's state and index (stable across renames)."""
    return str(dataset._doc.id)


def load_dataset(key):
    """The dataset whose id is ``key``, or None if it no longer exists."""
    import fiftyone as fo
    import fiftyone.core.odm as foo
    from bson import ObjectId

    found = foo.get_db_conn().datasets.find_one(
        {"_id": ObjectId(key)}, {"name": 1}
    )
    return fo.load_dataset(found["name"]) if found else None


def index_name(dataset):
    """The name of the dataset's vector index."""
    return "dataset_" + dataset_key(dataset)


def get(dataset):
    """The state document of ``dataset``, or None if AI search was never on."""
    doc = _states().find_one({"_id": dataset_key(dataset)})
    return _migrate(doc) if doc else None


def enable(dataset, model, pretrained, model_identity, backend):
    """Records that AI search is on for ``dataset`` with the given model.

    A change of model or backend resets the watermarks, so the next sync
    rebuilds the index.
    """
    key = dataset_key(dataset)
    current = get(dataset)
    same_index = (
        current is not None
        and current.get("model_identity") == model_identity
        and current.get("backend") == backend
    )
    fields = {
        "schema_version": STATE_SCHEMA_VERSION,
        "dataset_name": dataset.name,
        "enabled": True,
        "model": model,
        "pretrained": pretrained,
        "model_identity": model_identity,
        "backend": backend,
        "index_name": index_name(dataset),
    }
    if not same_index:
        fields.update(
            watermark=None,
            deletion_watermark=None,
            updated_at=None,
            rebuild=current is not None,
        )
    fields.setdefault("enabled_at", utcnow())
    _states().update_one({"_id": key}, {"$set": fields}, upsert=True)
    return get(dataset)


def enabled_states():
    """The state documents of every dataset whose AI search is on; each
    document's ``_id`` is its dataset's id (:func:`dataset_key`)."""
    return [_migrate(doc) for doc in _states().find({"enabled": True})]


def delete_key(key):
    """Deletes all state (document and failures) of the dataset whose id is
    ``key``, also of one that no longer exists."""
    _states().delete_one({"_id": key})
    _failures().delete_many({"dataset_id": key})


def update(dataset, **fields):
    """Sets fields of the state document of ``dataset``."""
    _states().update_one({"_id": dataset_key(dataset)}, {"$set": fields})


# -- failures -----------------------------------------------------------------


def record_failures(dataset, failures):
    """Records per-sample failures.

    Args:
        dataset: the dataset
        failures: a list of dicts with ``sample_id``, ``filepath``,
            ``fingerprint`` and ``reason``
    """
    if not failures:
        return
    key = dataset_key(dataset)
    now = utcnow()
    ops = [
        pymongo.UpdateOne(
            {"dataset_id": key, "sample_id": f["sample_id"]},
            {"$set": dict(f, dataset_id=key, failed_at=now)},
            upsert=True,
        )
        for f in failures
    ]
    _failures().bulk_write(ops, ordered=False)


def clear_failures(dataset, sample_ids=None):
    """Forgets the failures of the given samples (default: all)."""
    query = {"dataset_id": dataset_key(dataset)}
    if sample_ids is not None:
        query["sample_id"] = {"$in": list(sample_ids)}
    _failures().delete_many(query)


def get_failures(dataset, limit=None):
    """Returns the recorded failures of ``dataset``, oldest first."""
    cursor = _failures().find(
        {"dataset_id": dataset_key(dataset)}, {"_id": 0, "dataset_id": 0}
    ).sort("failed_at", 1)
    if limit:
        cursor = cursor.limit(limit)
    return list(cursor)


def count_failures(dataset):
    return _failures().count_documents({"dataset_id": dataset_key(dataset)})


# -- the computation lease -----------------------------------------------------


def _pid_alive(pid):
    try:
        # reap it if it is our own finished child: a zombie still "exists"
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder_alive(holder, now):
    """Whether the process described by ``holder`` may still be running."""
    if holder is None:
        return False
    if holder.get("host") == socket.gethostname():
        return _pid_alive(holder["pid"])
    return (now - holder["heartbeat"]).total_seconds() < LEASE_STALE_SECONDS


def is_running(doc):
    """Whether a computation holds (or is about to take) the lease."""
    if doc is None:
        return False
    now = utcnow()
    lease = doc.get("lease")
    if lease and _holder_alive(lease, now):
        # a live process whose heartbeat stopped is hung: don't wait forever
        return (now - lease["heartbeat"]).total_seconds() < LEASE_STALE_SECONDS
    pending = doc.get("pending")
    if pending and _holder_alive(dict(pending, heartbeat=pending["since"]), now):
        return (now - pending["since"]).total_seconds() < PENDING_GRACE_SECONDS
    return False


class Lease:
    """The right to compute a dataset's embeddings, held by one process.

    Use :func:`try_acquire`; release with :meth:`release` (or as a context
    manager). While held, a heartbeat thread renews it.
    """

    def __init__(self, dataset, token):
        self.dataset = dataset
        self.key = dataset_key(dataset)
        self.token = token
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name="ai-search-lease", daemon=True
        )
        self._thread.start()

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                _states().update_one(
                    {"_id": self.key, "lease.token": self.token},
                    {"$set": {"lease.heartbeat": utcnow()}},
                )
            except Exception:  # a transient DB error must not kill the run
                logger.debug("Lease heartbeat failed", exc_info=True)

    def release(self):
        self._stop.set()
        _states().update_one(
            {"_id": self.key, "lease.token": self.token},
            {"$set": {"lease": None}},
        )

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.release()


def try_acquire(dataset):
    """Takes the computation lease of ``dataset`` if it is free.

    Returns:
        a :class:`Lease`, or None if another live process holds it
    """
    key = dataset_key(dataset)
    now = utcnow()
    doc = _states().find_one({"_id": key}, {"lease": 1})
    if doc is None:
        return None

    lease = doc.get("lease")
    if lease and is_running({"lease": lease}):
        return None

    token = uuid.uuid4().hex
    new = {
        "token": token,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "acquired": now,
        "heartbeat": now,
    }
    # compare-and-set against what we saw, so two racers cannot both win
    # ({"lease": None} also matches a document without the field)
    seen = {"lease.token": lease["token"]} if lease else {"lease": None}
    res = _states().update_one(
        dict(seen, _id=key), {"$set": {"lease": new, "pending": None}}
    )
    if res.modified_count != 1:
        return None
    return Lease(dataset, token)


def mark_pending(dataset, pid):
    """Records that a background worker (process ``pid``) was started."""
    update(
        dataset,
        pending={"pid": pid, "host": socket.gethostname(), "since": utcnow()},
    )


def request_rerun(dataset):
    """Asks the running computation to sync once more before it stops."""
    update(dataset, rerun_requested=True)


def take_rerun_request(dataset):
    """Returns (and clears) whether a re-run was requested."""
    doc = _states().find_one_and_update(
        {"_id": dataset_key(dataset), "rerun_requested": True},
        {"$set": {"rerun_requested": False}},
    )
    return doc is not None
