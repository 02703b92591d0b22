"""Incremental synchronisation of a dataset with its vector index.

What changed is found with FiftyOne's own bookkeeping, so the cost of a
refresh grows with what changed, not with the dataset:

- new and edited samples: ``last_modified_at`` (indexed by FiftyOne) above
  the dataset's watermark;
- deleted samples: an id diff, run only when ``last_deletion_at`` moved;
- whether an edited sample's *image* changed: its file fingerprint (path,
  size, mtime) against the one stored with its vector. Tag and label edits
  embed nothing.

Vectors are committed batch by batch and the watermark only advances at the
end, so an interrupted run (even ``kill -9``) keeps what it committed and the
next run embeds only the rest: committed samples match their fingerprint and
are skipped.
"""

import dataclasses
import datetime
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from bson import ObjectId

from . import state as st
from .errors import AISearchError
from .store import IndexInfo

logger = logging.getLogger(__name__)

#: samples looked up in the index per round trip while diffing fingerprints
LOOKUP_CHUNK = 2000

#: the watermark is set this much before the run started, so edits made by
#: writers whose clocks lag slightly are re-examined (cheaply) next time
WATERMARK_MARGIN = datetime.timedelta(seconds=2)


class SyncCancelled(AISearchError):
    """AI search was disabled while the computation ran."""


@dataclasses.dataclass
class SyncReport:
    """What one synchronisation did.

    Attributes:
        added: samples embedded for the first time
        updated: samples re-embedded because their image changed
        removed: vectors deleted because their samples were deleted
        failed: samples whose image could not be read (see ``get_status``)
        skipped: samples looked at whose image had not changed
        seconds: wall time of the run
        rebuilt: whether the index was (re)created from scratch
    """

    added: int = 0
    updated: int = 0
    removed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    rebuilt: bool = False

    def to_dict(self):
        return dataclasses.asdict(self)

    def __str__(self):
        return (
            f"added {self.added}, updated {self.updated}, removed "
            f"{self.removed}, failed {self.failed}, skipped {self.skipped} "
            f"in {self.seconds:.1f} s"
        )


def file_fingerprint(filepath):
    """A cheap fingerprint of an image file: its size and mtime.

    Returns None for files that cannot be stat'ed (missing, or remote paths);
    such samples are then compared by filepath alone.
    """
    try:
        st_ = os.stat(filepath)
    except (OSError, ValueError):
        return None
    return f"{st_.st_size}:{st_.st_mtime_ns}"


def _last_deletion_at(dataset):
    # read fresh from the database: another process may have deleted samples
    # since this process loaded the dataset
    import fiftyone.core.odm as foo

    doc = foo.get_db_conn().datasets.find_one(
        {"_id": ObjectId(st.dataset_key(dataset))}, {"last_deletion_at": 1}
    )
    return (doc or {}).get("last_deletion_at")


def _edited_since(dataset, watermark):
    """The samples created or edited after ``watermark`` (all if None)."""
    from fiftyone import ViewField as F

    if watermark is None:
        return dataset
    return dataset.match(F("last_modified_at") > watermark)


def _changed_samples(dataset, watermark):
    """``(ids, filepaths)`` of samples created or edited after ``watermark``."""
    return _edited_since(dataset, watermark).values(["id", "filepath"])


def has_changes(dataset, doc):
    """Whether a sync of ``dataset`` would find anything to do.

    Costs at most a few indexed queries, and loads no model and opens no
    index: a refresher asks it of every dataset on every pass.

    Args:
        dataset: the dataset
        doc: its state document (:func:`fiftyone_ai_search.state.get`)
    """
    watermark = doc.get("watermark")
    if watermark is None or doc.get("rebuild"):
        return True  # never indexed, or another model asked for

    if _deleted_since(doc, _last_deletion_at(dataset)):
        return True

    if len(_edited_since(dataset, watermark).limit(1)):
        return True

    return bool(_repaired(st.get_failures(dataset)))


def _deleted_since(doc, deletion_at):
    """Whether samples were deleted since the last sync looked."""
    return deletion_at is not None and (
        doc.get("deletion_watermark") is None
        or deletion_at > doc["deletion_watermark"]
    )


def _repaired(failures):
    """The failures whose file changed since they failed."""
    return [
        f for f in failures
        if file_fingerprint(f["filepath"]) != f.get("fingerprint")
    ]


def _samples_by_id(dataset, sample_ids):
    from fiftyone import ViewField as F

    ids = [ObjectId(i) for i in sample_ids]
    return dataset.match(F("_id").is_in(ids)).values(["id", "filepath"])


class Synchronizer:
    """Brings one dataset's index up to date with the dataset.

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset`
        store: the dataset's :class:`fiftyone_ai_search.store.VectorStore`
        model: a loaded :class:`fiftyone_ai_search.model.ClipModel`
        settings: the :class:`fiftyone_ai_search.config.Settings`
        progress (None): called as ``progress(done, total)`` after each batch
    """

    def __init__(self, dataset, store, model, settings, progress=None):
        self.dataset = dataset
        self.store = store
        self.model = model
        self.settings = settings
        self.progress = progress

    def run(self, force=False, verify_files=False):
        """Runs one synchronisation.

        Args:
            force (False): whether to drop the index and embed everything
            verify_files (False): whether to check the file fingerprint of
                every sample, not only of edited ones; this finds images
                replaced on disk behind FiftyOne's back

        Returns:
            a :class:`SyncReport`
        """
        start = time.time()
        started_at = st.utcnow()
        report = SyncReport()
        doc = st.get(self.dataset)

        spec = self.model.spec
        info = IndexInfo(
            model=spec.name,
            pretrained=spec.pretrained,
            model_identity=spec.identity,
            dim=self.model.dim,
        )
        if force:
            self.store.drop()
        report.rebuilt = self.store.ensure(
            info, rebuild=bool(doc.get("rebuild"))
        )
        if report.rebuilt:
            st.clear_failures(self.dataset)
            watermark = None
        else:
            watermark = doc.get("watermark")

        deletion_at = _last_deletion_at(self.dataset)
        if not report.rebuilt and _deleted_since(doc, deletion_at):
            report.removed = self._remove_deleted()

        if verify_files:
            watermark = None
        ids, paths = _changed_samples(self.dataset, watermark)
        retry_ids, retry_paths = self._failures_to_retry(set(ids))
        ids += retry_ids
        paths += retry_paths

        todo = self._diff(ids, paths, report)
        self._embed(todo, report)

        report.seconds = time.time() - start
        st.update(
            self.dataset,
            watermark=started_at - WATERMARK_MARGIN,
            deletion_watermark=deletion_at,
            updated_at=st.utcnow(),
            rebuild=False,
            last_report=report.to_dict(),
            last_error=None,
        )
        return report

    # -- steps ---------------------------------------------------------------

    def _remove_deleted(self):
        indexed = set(self.store.get_sample_ids())
        present = set(self.dataset.values("id"))
        gone = list(indexed - present)
        if gone:
            self.store.delete(gone)
        # failures of deleted samples are moot
        failed = {f["sample_id"] for f in st.get_failures(self.dataset)}
        st.clear_failures(self.dataset, failed - present)
        return len(gone)

    def _failures_to_retry(self, already):
        """Failed samples whose file changed since they failed.

        Failures are few, so checking each of them on every run is cheap, and
        a fixed file is picked up even when the sample itself was not edited.
        """
        failures = [
            f for f in st.get_failures(self.dataset)
            if f["sample_id"] not in already
        ]
        changed = [f["sample_id"] for f in _repaired(failures)]
        if not changed:
            return [], []
        ids, paths = _samples_by_id(self.dataset, changed)
        return list(ids), list(paths)

    def _diff(self, ids, paths, report):
        """Sorts candidates into new, changed and unchanged samples.

        Returns:
            a list of ``(sample_id, filepath, fingerprint, is_new)`` to embed
        """
        todo = []
        failures = {
            f["sample_id"]: f for f in st.get_failures(self.dataset)
        }
        fingerprints = [file_fingerprint(path) for path in paths]
        # one opening of the index for all lookups (each costs ~0.2-0.5 s)
        with self.store.session():
            empty = self.store.count() == 0
            stored = {}
            for i in range(0, 0 if empty else len(ids), LOOKUP_CHUNK):
                stored.update(
                    self.store.get_payloads(ids[i : i + LOOKUP_CHUNK])
                )

        for sample_id, path, fp in zip(ids, paths, fingerprints):
            old = stored.get(sample_id) or failures.get(sample_id)
            if (
                old is not None
                and old.get("filepath") == path
                and old.get("fingerprint") == fp
            ):
                report.skipped += 1
                continue
            todo.append((sample_id, path, fp, sample_id not in stored))
        return todo

    def _embed(self, todo, report):
        from .embedder import embed_images

        total = len(todo)
        st.update(
            self.dataset,
            progress={"done": 0, "total": total, "started_at": st.utcnow()},
        )
        if self.progress:
            self.progress(0, total)
        if not todo:
            return

        meta = {sample_id: (path, fp, new) for sample_id, path, fp, new in todo}
        items = [(sample_id, path) for sample_id, path, _, _ in todo]
        done = 0

        # commits run on their own thread, so the model never waits for the
        # index. An embedded shard stays open from one commit to the next
        # (reopening it costs ~0.05 s per commit on a new index, ~0.1-0.5 s
        # at 20k-100k points); another process that asks for it still gets it
        # between two commits (see VectorStore.session)
        try:
            with ThreadPoolExecutor(
                1, thread_name_prefix="ai-search-commit"
            ) as ex:
                pending = None
                for batch in embed_images(
                    self.model,
                    items,
                    batch_size=self.settings.batch_size,
                    num_workers=self.settings.num_workers,
                ):
                    if pending is not None:
                        pending.result()
                    done += len(batch.keys) + len(batch.failures)
                    pending = ex.submit(
                        self._commit, batch, meta, report, done, total
                    )
                if pending is not None:
                    pending.result()
        finally:
            self.store.close()

    def _commit(self, batch, meta, report, done, total):
        doc = st.get(self.dataset)
        if doc is None or not doc.get("enabled"):
            raise SyncCancelled("AI search was disabled during the computation")

        if batch.keys:
            payloads = [
                {"filepath": meta[k][0], "fingerprint": meta[k][1]}
                for k in batch.keys
            ]
            with self.store.session(keep_open=True):
                self.store.upsert(batch.keys, batch.vectors, payloads)
            st.clear_failures(self.dataset, batch.keys)
            for k in batch.keys:
                if meta[k][2]:
                    report.added += 1
                else:
                    report.updated += 1

        if batch.failures:
            failed = list(batch.failures)
            # a sample that now fails must not keep a stale vector
            with self.store.session(keep_open=True):
                self.store.delete(failed)
            st.record_failures(
                self.dataset,
                [
                    {
                        "sample_id": k,
                        "filepath": meta[k][0],
                        "fingerprint": meta[k][1],
                        "reason": reason,
                    }
                    for k, reason in batch.failures.items()
                ],
            )
            report.failed += len(failed)

        st.update(self.dataset, **{"progress.done": done})
        if self.progress:
            self.progress(done, total)
