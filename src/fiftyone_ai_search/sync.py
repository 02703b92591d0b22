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

Every sync ends with a consistency check (vectors + failures against the
samples; counts only, cheap); a mismatch, whatever left it, runs the id diff
that repairs it. A rebuild fills an index of its own beside the one searches
use (:mod:`fiftyone_ai_search.state`) and, once complete and consistent,
switches over in one write. Before each commit a run checks that the state
is still at the generation it started from, and stops if not.
"""

import dataclasses
import datetime
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from bson import ObjectId

from . import media
from . import state as st
from .errors import AISearchError
from .store import IndexInfo, IndexNotFoundError

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
        rebuilt: whether a new index was built (a first index, another
            model, or a forced rebuild) and then switched to
        reused: samples whose existing embeddings (a field, a Brain run:
            :mod:`fiftyone_ai_search.existing`) were stored instead of
            running the model
    """

    added: int = 0
    updated: int = 0
    removed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    rebuilt: bool = False
    reused: int = 0

    def to_dict(self):
        return dataclasses.asdict(self)

    def __add__(self, other):
        """The report of two passes, one after the other."""
        counts = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in dataclasses.fields(self) if f.name != "rebuilt"
        }
        return SyncReport(**counts, rebuilt=self.rebuilt or other.rebuilt)

    def __str__(self):
        reused = f", reused {self.reused}" if self.reused else ""
        return (
            f"added {self.added}, updated {self.updated}, removed "
            f"{self.removed}, failed {self.failed}, skipped {self.skipped}"
            f"{reused} in {self.seconds:.1f} s"
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
    """The indexed samples created or edited after ``watermark`` (all if
    None); see :func:`fiftyone_ai_search.media.indexed_samples`."""
    from fiftyone import ViewField as F

    # all image slices of a grouped dataset, not only its active one
    samples = media.indexed_samples(dataset)
    if watermark is None:
        return samples
    return samples.match(F("last_modified_at") > watermark)


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
    if watermark is None or doc.get("build") or doc.get("retired"):
        return True  # never indexed, a rebuild to do, or indexes to drop

    if _deleted_since(doc.get("deletion_watermark"), _last_deletion_at(dataset)):
        return True

    if len(_edited_since(dataset, watermark).limit(1)):
        return True

    return bool(_repaired(st.get_failures(dataset)))


def is_consistent(dataset, store):
    """The consistency check: whether ``store`` holds as many vectors as
    the dataset has samples without a recorded failure (counts only: a few
    cheap queries, but it opens the index).

    Args:
        dataset: the dataset
        store: its :class:`fiftyone_ai_search.store.VectorStore`
    """
    with store.session():
        num_indexed = store.count() if store.exists() else -1
    return num_indexed + st.count_failures(dataset) == (
        _edited_since(dataset, None).count()
    )


def _deleted_since(deletion_watermark, deletion_at):
    """Whether samples were deleted since the last sync looked."""
    return deletion_at is not None and (
        deletion_watermark is None or deletion_at > deletion_watermark
    )


def _repaired(failures):
    """The failures whose file changed since they failed."""
    return [
        f for f in failures
        if file_fingerprint(f["filepath"]) != f.get("fingerprint")
    ]


def _samples_by_id(dataset, sample_ids):
    # select() matches on the _id index; an $expr is_in would scan
    return media.indexed_samples(dataset).select(list(sample_ids)).values(
        ["id", "filepath"]
    )


def _payload(filepath, fingerprint):
    """What the index keeps with a vector to tell whether its image
    changed."""
    return {"filepath": filepath, "fingerprint": fingerprint}


def write_given(dataset, store, sample_ids, vectors):
    """Stores vectors given for samples of ``dataset`` (the Brain's
    ``add_to_index``), with their images' fingerprints as of now: a sync
    keeps them until the image changes.

    Raises:
        ValueError: for ids of no sample of the dataset, or vectors of the
            wrong size
    """
    ids, paths = _samples_by_id(dataset, sample_ids)
    unknown = sorted(set(sample_ids) - set(ids))
    if unknown:
        raise ValueError(
            f"sample_ids: {len(unknown)} id(s) not in dataset "
            f"'{dataset.name}': {unknown[:5]}"
        )
    path = dict(zip(ids, paths))
    with store.session():
        store.upsert(
            list(sample_ids), vectors,
            [_payload(path[i], file_fingerprint(path[i])) for i in sample_ids],
        )
    st.clear_failures(dataset, list(sample_ids))


class Synchronizer:
    """Brings one index of a dataset up to date with the dataset.

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset`
        store: the :class:`fiftyone_ai_search.store.VectorStore` to fill
        model: a loaded :class:`fiftyone_ai_search.model.ClipModel`
        settings: the :class:`fiftyone_ai_search.config.Settings`
        generation: the state generation the run works for
        building (False): whether ``store`` is the index being built beside
            the one searches use (see :mod:`fiftyone_ai_search.state`); it
            is switched to once complete
        progress (None): called as ``progress(done, total)`` after each batch
        existing (None): an
            :class:`~fiftyone_ai_search.existing.ExistingEmbeddings` whose
            vectors are stored instead of embedding those samples
    """

    def __init__(self, dataset, store, model, settings, generation,
                 building=False, progress=None, existing=None):
        self.dataset = dataset
        self.existing = existing
        self.store = store
        self.model = model
        self.settings = settings
        self.generation = generation
        self.building = building
        self.progress = progress

    def run(self, watermark=None, deletion_watermark=None, verify_files=False):
        """Runs one synchronisation and records its end in the state.

        Args:
            watermark (None): only samples edited after it are looked at
                (ignored when building: all are)
            deletion_watermark (None): the ``last_deletion_at`` of the
                dataset that the index last caught up with
            verify_files (False): whether to check the file fingerprint of
                every sample, not only of edited ones; this finds images
                replaced on disk behind FiftyOne's back

        Returns:
            a :class:`SyncReport`

        Raises:
            fiftyone_ai_search.state.StaleGeneration: if the state changed
                meanwhile; nothing was
                written after the change
        """
        start = time.time()
        started_at = st.utcnow()
        report = SyncReport(rebuilt=self.building)

        spec = self.model.spec
        info = IndexInfo(
            model=spec.name,
            pretrained=spec.pretrained,
            model_identity=spec.identity,
            dim=self.model.dim,
        )
        self._check()
        # an index being built is ours alone: a leftover of another model
        # under its name (impossible by naming) would be replaced
        self.store.ensure(info, rebuild=self.building)
        if self.building or verify_files:
            watermark = None

        deletion_at = _last_deletion_at(self.dataset)
        # (a build looks at every sample; what it holds of samples deleted
        # meanwhile, the consistency check finds)
        if not self.building and _deleted_since(deletion_watermark,
                                                deletion_at):
            report.removed = self._remove_deleted()

        ids, paths = _changed_samples(self.dataset, watermark)
        retry_ids, retry_paths = self._failures_to_retry(set(ids))
        ids += retry_ids
        paths += retry_paths

        todo = self._diff(ids, paths, report)
        self._embed(todo, report)
        self._reconcile(report)

        report.seconds = time.time() - start
        fields = dict(
            watermark=started_at - WATERMARK_MARGIN,
            deletion_watermark=deletion_at,
            updated_at=st.utcnow(),
            last_report=report.to_dict(),
            last_error=None,
        )
        if self.building:
            st.switch_to_build(
                self.dataset, self.generation, self.store.name, **fields
            )
        else:
            st.finish_sync(self.dataset, self.generation, **fields)
        return report

    # -- steps ---------------------------------------------------------------

    def _check(self):
        st.check_generation(self.dataset, self.generation)

    def _remove_deleted(self):
        indexed = set(self.store.get_sample_ids())
        present = set(_edited_since(self.dataset, None).values("id"))
        gone = list(indexed - present)
        if gone:
            self._check()
            self.store.delete(gone)
        # failures of deleted samples are moot
        failed = {f["sample_id"] for f in st.get_failures(self.dataset)}
        st.clear_failures(self.dataset, failed - present)
        return len(gone)

    def _reconcile(self, report):
        """The consistency check: every sample has a vector or a failure,
        and nothing else does. Counts first (cheap); on a mismatch (a crash
        between two writes, an index changed behind our back, samples added
        or deleted meanwhile), the id diff that repairs it."""
        if is_consistent(self.dataset, self.store):
            return

        ids, paths = _edited_since(self.dataset, None).values(
            ["id", "filepath"])
        present = set(ids)
        with self.store.session():
            indexed = set(self.store.get_sample_ids())
        failed = {f["sample_id"] for f in st.get_failures(self.dataset)}
        gone = list(indexed - present)
        if gone:
            self._check()
            self.store.delete(gone)
            report.removed += len(gone)
        # a vector wins over a failure: its fingerprint is checked anyway
        st.clear_failures(self.dataset, (failed - present) | (failed & indexed))
        missing = [
            (i, p) for i, p in zip(ids, paths)
            if i not in indexed and i not in failed
        ]
        logger.info(
            "AI search index of '%s' was inconsistent (%d vectors + %d "
            "failures for %d samples): removed %d, embedding %d",
            self.dataset.name, len(indexed), len(failed), len(present),
            len(gone), len(missing),
        )
        if missing:
            todo = self._diff([i for i, _ in missing],
                              [p for _, p in missing], report)
            self._embed(todo, report)

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
            progress={"done": 0, "total": total, "started_at": st.utcnow(),
                      "building": self.building, "index": self.store.name},
        )
        if self.progress:
            self.progress(0, total)
        if not todo:
            return

        meta = {sample_id: (path, fp, new) for sample_id, path, fp, new in todo}
        items = [(sample_id, path) for sample_id, path, _, _ in todo]
        done = 0
        if self.existing is not None:
            items, done = self._reuse(items, meta, report, total)
            if not items:
                return

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

    def _reuse(self, items, meta, report, total):
        """Stores the existing vectors of ``items`` instead of embedding
        them; returns the items left to embed and how many were stored."""
        from .embedder import EmbeddedBatch

        done = 0
        left = []
        chunk = self.settings.batch_size * 8
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            ids, vectors = self.existing.vectors([i for i, _ in part])
            if vectors.size and vectors.shape[1] != self.model.dim:
                raise AISearchError(
                    f"The {self.existing} holds {vectors.shape[1]}-d "
                    f"vectors, not {self.model.dim}-d ones of "
                    f"{self.model.spec.identity}"
                )
            given = set(ids)
            left.extend(it for it in part if it[0] not in given)
            if ids:
                self._write(EmbeddedBatch(ids, vectors, {}), meta, report,
                            reused=True)
                done += len(ids)
                self._commit_progress(done, total)
        return left, done

    def _commit_progress(self, done, total):
        st.update(self.dataset, **{"progress.done": done})
        if self.progress:
            self.progress(done, total)

    def _commit(self, batch, meta, report, done, total):
        try:
            self._write(batch, meta, report)
        except IndexNotFoundError:
            self._check()  # dropped because the state changed: say so
            raise
        self._commit_progress(done, total)

    def _write(self, batch, meta, report, reused=False):
        self._check()
        if batch.keys:
            payloads = [_payload(meta[k][0], meta[k][1]) for k in batch.keys]
            with self.store.session(keep_open=True):
                self.store.upsert(batch.keys, batch.vectors, payloads)
            st.clear_failures(self.dataset, batch.keys)
            if reused:
                report.reused += len(batch.keys)
            else:
                new = sum(meta[k][2] for k in batch.keys)
                report.added += new
                report.updated += len(batch.keys) - new

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
