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

Memory is bounded by :data:`PAGE_SIZE`, not by the dataset: edited
samples are read and processed a page at a time, and id diffs merge the
samples and the index, both sorted by id, page by page.

Every sync ends with a consistency check (vectors + failures against the
samples; counts only, cheap); a mismatch, whatever left it, runs the id diff
that repairs it. A rebuild fills an index of its own beside the one searches
use (:mod:`fiftyone_ai_search.index.state`) and, once complete and consistent,
switches over in one write. Before each commit a run checks that the state
is still at the generation it started from, and stops if not.
"""

import bisect
import contextlib
import dataclasses
import datetime
import itertools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from bson import ObjectId

from ..errors import AISearchError, SyncCancelled  # noqa: F401 (its old path)
from ..index import state as st
from ..index import targets
from ..store import IndexInfo, IndexNotFoundError

logger = logging.getLogger(__name__)

#: samples looked up in the index per round trip while diffing fingerprints
LOOKUP_CHUNK = 2000

#: ids per page of an id diff, and edited samples per chunk: what a sync
#: holds at a time (a few MB), whatever the size of the dataset
PAGE_SIZE = 10000

#: the watermark is set this much before the run started (by the database
#: server's clock, see :func:`fiftyone_ai_search.index.state.utcnow`), so edits
#: made by writers whose clocks lag slightly behind the server's (FiftyOne
#: stamps ``last_modified_at`` with the writer's clock) are re-examined
#: (cheaply) next time
WATERMARK_MARGIN = datetime.timedelta(seconds=2)


@dataclasses.dataclass
class SyncReport:
    """What one synchronisation did.

    Attributes:
        added: samples embedded for the first time
        updated: samples re-embedded because their image changed
        removed: vectors deleted because their samples were deleted
        failed: samples whose image could not be read (see ``get_status``)
        skipped: samples looked at whose image had not changed (each
            counted once in a run of several passes: see :meth:`then`)
        seconds: wall time of the run
        rebuilt: whether a new index was built (a first index, another
            model, or a forced rebuild) and then switched to
        reused: samples whose existing embeddings (a field, a Brain run:
            :mod:`fiftyone_ai_search.sync.existing`) were stored instead of
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

    def then(self, later):
        """The report of this pass followed by the ``later`` one, in one
        run. A later pass looks again at samples this one counted (those
        edited while it ran, and within the watermark's margin before it
        started): what it skipped is not counted twice; what it embedded,
        removed or failed again is."""
        counts = {
            f.name: getattr(self, f.name) + getattr(later, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("rebuilt", "skipped")
        }
        return SyncReport(**counts, skipped=self.skipped,
                          rebuilt=self.rebuilt or later.rebuilt)

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
        {"_id": ObjectId(targets.dataset_key(dataset))},
        {"last_deletion_at": 1}
    )
    return (doc or {}).get("last_deletion_at")


def edited_since(target, watermark):
    """The indexed samples of ``target`` (a dataset, or a
    :class:`~fiftyone_ai_search.index.targets.Target`) created or edited
    after ``watermark`` (all if None); see
    :func:`fiftyone_ai_search.index.media.indexed_samples`."""
    from fiftyone import ViewField as F  # start-up: FiftyOne, on first use

    # all image slices of a grouped dataset, not only its active one (its
    # video slices for a frame index)
    samples = targets.of(target).samples()
    if watermark is None:
        return samples
    return samples.match(F("last_modified_at") > watermark)


def sample_pages(samples, page_size, after=None):
    """Yields ``(ids, filepaths)`` of ``samples`` sorted by id, at most
    ``page_size`` at a time, from after the sample id ``after`` on.

    Each page is a query of its own that starts after the last id of the
    one before (keyset pagination on the ``_id`` index): no cursor outlives
    a page, so the work between two pages (embedding) may take as long as
    it needs.
    """
    while True:
        view = samples
        if after is not None:
            view = view.match({"_id": {"$gt": ObjectId(after)}})
        ids, paths = view.sort_by("id").limit(page_size).values(
            ["id", "filepath"])
        if not ids:
            return
        # before the page is handed over (and used up)
        last, full = ids[-1], len(ids) == page_size
        yield ids, paths
        if not full:
            return
        after = last


@dataclasses.dataclass
class _Stretch:
    """One step of :func:`_id_diff`: what it found of the ids up to
    ``last``."""

    #: ``(sample_id, filepath)`` of the samples without a vector
    missing: list
    #: ids of the vectors without a sample
    gone: list
    #: ids of the vectors of the stretch
    indexed: set
    #: how many samples the stretch holds
    num_samples: int
    #: the last id of the stretch: a diff resumed after it goes on
    last: str


def _id_diff(samples, store, page_size, after=None):
    """Diffs the ids of ``samples`` and of the vectors in ``store``,
    streamed: both sides sorted by id (MongoDB's ``_id`` order is the
    index's point id order, see
    :meth:`~fiftyone_ai_search.store.VectorStore.iter_sample_ids`), merged
    a page at a time.

    Holds at most a page of each side. An embedded index is held while the
    generator runs (handed over between pages to whoever waits): close it
    before embedding.

    Args:
        samples: the samples, a collection
        store: the :class:`fiftyone_ai_search.store.VectorStore`
        page_size: ids per page of each side
        after (None): resume after this sample id

    Returns:
        an iterator (a generator) of :class:`_Stretch`, one per step, in id
        order
    """
    return _merge_ids(sample_pages(samples, page_size, after),
                      store.iter_sample_ids(page_size, after))


def _merge_ids(samples_pages, index_pages):
    """The merge of :func:`_id_diff`: of pages of ``(ids, filepaths)`` of
    samples and pages of ids of vectors, each sorted by id, it holds at
    most one page of each."""
    ids, paths, held = [], [], []
    with contextlib.closing(samples_pages), contextlib.closing(index_pages):
        while True:
            # each side is refilled once used up; still empty, it is done
            if not ids:
                ids, paths = next(samples_pages, ([], []))
            if not held:
                held = next(index_pages, [])
            if not ids and not held:
                return

            # up to the smaller last id, both sides are known
            last = min(page[-1] for page in (ids, held) if page)
            n = bisect.bisect_right(ids, last)
            m = bisect.bisect_right(held, last)
            present = set(ids[:n])
            indexed = set(held[:m])
            yield _Stretch(
                missing=[(i, p) for i, p in zip(ids[:n], paths[:n])
                         if i not in indexed],
                gone=[i for i in held[:m] if i not in present],
                indexed=indexed,
                num_samples=n,
                last=last,
            )
            del ids[:n], paths[:n], held[:m]


def has_changes(target, doc):
    """Whether a sync of ``target`` (a dataset, or the objects of one of
    its fields) would find anything to do.

    Costs at most a few indexed queries, and loads no model and opens no
    index: a refresher asks it of every dataset on every pass.

    Args:
        target: the dataset, or a :class:`~fiftyone_ai_search.index.targets.Objects`
        doc: its :class:`~fiftyone_ai_search.index.state.IndexState` (or
            state document)
    """
    dataset = targets.dataset_of(target)
    doc = st.as_state(doc)
    watermark = doc.watermark
    if watermark is None or doc.build or doc.retired:
        return True  # never indexed, a rebuild to do, or indexes to drop

    if _deleted_since(doc.deletion_watermark, _last_deletion_at(dataset)):
        return True

    if len(edited_since(target, watermark).limit(1)):
        return True

    return bool(repaired(st.get_failures(target)))


def is_consistent(target, store):
    """The consistency check: whether ``store`` holds as many vectors as
    the dataset has samples (or the field objects) without a recorded
    failure (counts only: a few cheap queries, but it opens the index).

    Args:
        target: the dataset, or a :class:`~fiftyone_ai_search.index.targets.Objects`
        store: its :class:`fiftyone_ai_search.store.VectorStore`
    """
    with store.session():
        num_indexed = store.count() if store.exists() else -1
    return num_indexed + st.count_failures(target) == _num_units(target)


def _num_units(target):
    """How many vectors a complete index of ``target`` holds, failures
    included: its dataset's samples, or the objects of its field."""
    target = targets.of(target)
    return target.count(edited_since(target, None))


def deletions_pending(target, doc):
    """Whether samples of the dataset of ``target`` were deleted since the
    last sync of the index ``doc`` (its state document) serves looked:
    their vectors are then still in the index until the next sync, and a
    search must not count them (one indexed read of the dataset's
    document).

    Args:
        target: the dataset, or a :class:`~fiftyone_ai_search.index.targets.Objects`
        doc: its :class:`~fiftyone_ai_search.index.state.IndexState`
    """
    return _deleted_since(doc.deletion_watermark,
                          _last_deletion_at(targets.dataset_of(target)))


def _deleted_since(deletion_watermark, deletion_at):
    """Whether samples were deleted since the last sync looked."""
    return deletion_at is not None and (
        deletion_watermark is None or deletion_at > deletion_watermark
    )


def repaired(failures):
    """The failures whose file changed since they failed (an object's
    failure keeps its image's fingerprint apart from its own)."""
    return [
        f for f in failures
        if file_fingerprint(f["filepath"]) != f.get(
            "file_fingerprint", f.get("fingerprint"))
    ]


def samples_by_id(dataset, sample_ids):
    """``(ids, filepaths)`` of the indexed samples among ``sample_ids``
    (``dataset``: a dataset, or a
    :class:`~fiftyone_ai_search.index.targets.Target`)."""
    # select() matches on the _id index; an $expr is_in would scan
    return targets.of(dataset).samples().select(list(sample_ids)).values(
        ["id", "filepath"]
    )


def _payload(filepath, fingerprint):
    """What the index keeps with a vector to tell whether its image
    changed."""
    return {"filepath": filepath, "fingerprint": fingerprint}


@dataclasses.dataclass
class Unit:
    """One thing an index holds a vector of: a sample's image, or an
    object (a crop of its box) of a sample.

    Attributes:
        key: the id of the vector: the sample id, or the object's label id
        filepath: the image file
        fingerprint: what the stored vector must match to be kept: the
            file's fingerprint, with the box's for an object
        new: whether the index holds no vector of it yet (set by the diff)
        sample_id: the sample holding an object (its own id for a sample)
        box: an object's box (``[x, y, w, h]``, relative)
        file_fingerprint: the image file's fingerprint alone
    """

    key: str
    filepath: str
    fingerprint: str = None
    new: bool = False
    sample_id: str = None
    box: list = None
    file_fingerprint: str = None

    def payload(self):
        return _payload(self.filepath, self.fingerprint)

    def failure(self, reason):
        """The failure record of this unit (see
        :func:`fiftyone_ai_search.index.state.record_failures`)."""
        return {"key": self.key, "sample_id": self.sample_id or self.key,
                "filepath": self.filepath, "fingerprint": self.fingerprint,
                "reason": reason}


def write_given(dataset, store, sample_ids, vectors):
    """Stores vectors given for samples of ``dataset`` (the Brain's
    ``add_to_index``), with their images' fingerprints as of now: a sync
    keeps them until the image changes.

    Raises:
        ValueError: for ids of no sample of the dataset, or vectors of the
            wrong size
    """
    ids, paths = samples_by_id(dataset, sample_ids)
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
    """Brings one index of a dataset's images up to date with the dataset.

    The run is written in units (:class:`Unit`): what changed is found a
    page of edited samples at a time, each page made into units
    (:meth:`_units`), diffed against the index (:meth:`_diff`) and
    embedded (:meth:`_embed`); :class:`fiftyone_ai_search.objects_sync.
    ObjectSynchronizer` makes the objects of a label field its units.

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset`
        store: the :class:`fiftyone_ai_search.store.VectorStore` to fill
        model: a loaded :class:`fiftyone_ai_search.embedding.model.ClipModel`
        settings: the :class:`fiftyone_ai_search.config.Settings`
        generation: the state generation the run works for
        building (False): whether ``store`` is the index being built beside
            the one searches use (see :mod:`fiftyone_ai_search.index.state`); it
            is switched to once complete
        progress (None): called as ``progress(done, total)`` after each batch
        existing (None): an
            :class:`~fiftyone_ai_search.sync.existing.ExistingEmbeddings` whose
            vectors are stored instead of embedding those samples
    """

    def __init__(self, dataset, store, model, settings, generation,
                 building=False, progress=None, existing=None):
        #: what the state is of: the dataset here, its objects in a subclass
        self.target = dataset
        self.dataset = targets.dataset_of(dataset)
        self.existing = existing
        self.store = store
        self.model = model
        self.settings = settings
        self.generation = generation
        self.building = building
        self.progress = progress
        # the progress of the current phase: done, and at most to do
        self._done = self._total = 0
        # whether the index was seen to hold vectors (else none to look up)
        self._has_vectors = False

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
            fiftyone_ai_search.index.state.StaleGeneration: if the state changed
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
        self._prepare()
        if self.building or verify_files:
            watermark = None
        if verify_files and not self.building:
            self._drop_invalid()

        deletion_at = _last_deletion_at(self.dataset)
        # (a build looks at every sample; what it holds of samples deleted
        # meanwhile, the consistency check finds)
        if not self.building and _deleted_since(deletion_watermark,
                                                deletion_at):
            report.removed = self._remove_deleted()

        # a page of edited samples at a time, then the failures to retry
        failures = {f["key"]: f for f in st.get_failures(self.target)}
        edited = edited_since(self.target, watermark)
        retry = self._failures_to_retry(failures, edited)
        total = self._count_units(edited, retry[0])
        self._start_progress(total)
        for ids, paths in itertools.chain(
            sample_pages(edited, PAGE_SIZE), [retry] if retry[0] else []
        ):
            todo = self._diff(self._units(ids, paths, report), report,
                              failures)
            # at most as many to embed as were not skipped yet
            self._set_total(total - report.skipped)
            self._embed(todo, report)
        self._set_total(self._done)
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
                self.target, self.generation, self.store.name, **fields
            )
        else:
            st.finish_sync(self.target, self.generation, **fields)
        return report

    # -- steps ---------------------------------------------------------------

    def _check(self):
        st.check_generation(self.target, self.generation)

    def _prepare(self):
        """Readies the index (it exists) for this kind of units."""

    def _drop_invalid(self):
        """Deletes the vectors that are zero or not finite (none gets in
        now: left by an older version, or damage), so that this pass, which
        looks at every unit, embeds theirs again as new."""
        bad = self.store.invalid_keys()
        if bad:
            self._check()
            self.store.delete(bad)
            logger.warning(
                "AI search index of %s held %d vector(s) that were zero or "
                "not finite: deleted, embedded again", self.target, len(bad))

    def _remove_deleted(self):
        """Deletes the vectors of deleted samples, found by an id diff
        (:func:`_id_diff`), a page at a time."""
        removed = 0
        diff = _id_diff(edited_since(self.target, None), self.store,
                        PAGE_SIZE)
        with contextlib.closing(diff):
            for part in diff:
                removed += self._delete_gone(part.gone)
        # failures of deleted samples are moot
        failed = [f["key"] for f in st.get_failures(self.target)]
        present = set(samples_by_id(self.target, failed)[0])
        st.clear_failures(self.target, set(failed) - present)
        return removed

    def _delete_gone(self, sample_ids):
        """Deletes the vectors of those of ``sample_ids`` that have no
        sample now; returns how many. Asked again here: a sample added
        since its page was read (and indexed by another process, e.g. the
        Brain's ``add_to_index``) keeps its vector."""
        if not sample_ids:
            return 0
        present = set(samples_by_id(self.target, sample_ids)[0])
        gone = [i for i in sample_ids if i not in present]
        if gone:
            self._check()
            self.store.delete(gone)
        return len(gone)

    def _reconcile(self, report):
        """The consistency check: every sample has a vector or a failure,
        and nothing else does. Counts first (cheap); on a mismatch (a crash
        between two writes, an index changed behind our back, samples added
        or deleted meanwhile), the id diff that repairs it."""
        if is_consistent(self.target, self.store):
            return

        failures = {f["key"]: f for f in st.get_failures(self.target)}
        failed = set(failures)
        kept = set()  # failures of present samples without a vector
        counts = dict(vectors=0, samples=0, removed=0, missing=0)
        self._start_progress(0)
        after, finished = None, False
        while not finished:
            missing = []
            diff = _id_diff(edited_since(self.target, None), self.store,
                            PAGE_SIZE, after)
            with contextlib.closing(diff):
                for part in diff:
                    counts["vectors"] += len(part.indexed)
                    counts["samples"] += part.num_samples
                    counts["removed"] += self._delete_gone(part.gone)
                    for sample_id, path in part.missing:
                        if sample_id in failed:
                            kept.add(sample_id)
                        else:
                            missing.append((sample_id, path))
                    after = part.last
                    if len(missing) >= PAGE_SIZE:
                        break  # embedded before the diff goes on
                else:
                    finished = True
            # (the diff is closed: commits need the index)
            if missing:
                counts["missing"] += len(missing)
                self._set_total(self._done + len(missing))
                ids, paths = map(list, zip(*missing))
                self._embed(self._diff(self._units(ids, paths, report),
                                       report, failures), report)

        report.removed += counts["removed"]
        # failures of deleted samples go; a vector wins over a failure: its
        # fingerprint is checked anyway
        st.clear_failures(self.target, failed - kept)
        logger.info(
            "AI search index of '%s' was inconsistent (%d vectors + %d "
            "failures for %d samples): removed %d, embedded %d",
            self.dataset.name, counts["vectors"], len(failed),
            counts["samples"], counts["removed"], counts["missing"],
        )

    def _count_units(self, edited, retry_ids):
        """How many units the ``edited`` samples and those retried hold."""
        return edited.count() + len(retry_ids)

    def _failures_to_retry(self, failures, edited):
        """``(ids, filepaths)`` of the failed samples whose file changed
        since they failed, leaving out those among the ``edited`` samples
        (looked at anyway).

        Failures are few, so checking each of them on every run is cheap, and
        a fixed file is picked up even when the sample itself was not edited.
        """
        if not failures:
            return [], []
        already = set(edited.select(list(failures)).values("id"))
        changed = [
            f["key"] for f in repaired(
                [f for i, f in failures.items() if i not in already])
        ]
        if not changed:
            return [], []
        ids, paths = samples_by_id(self.target, changed)
        return list(ids), list(paths)

    def _units(self, ids, paths, report):
        """The units of a page of samples: their images."""
        return [Unit(i, p, fp, sample_id=i, file_fingerprint=fp)
                for i, p in zip(ids, paths)
                for fp in [file_fingerprint(p)]]

    def _diff(self, units, report, failures):
        """Sorts candidates (a page of units) into new, changed and
        unchanged ones.

        Args:
            units: a list of :class:`Unit`
            report: the :class:`SyncReport` to count skipped units in
            failures: ``{key: failure}`` of the recorded failures

        Returns:
            the list of the units to embed, each with ``new`` set
        """
        todo = []
        keys = [u.key for u in units]
        # one opening of the index for all lookups (each costs ~0.2-0.5 s at
        # 20k-100k, ~2.5 s at 1M), and the next page's (see
        # VectorStore.session)
        with self.store.session():
            empty = not self._holds_vectors()
            stored = {}
            for i in range(0, 0 if empty else len(keys), LOOKUP_CHUNK):
                stored.update(
                    self.store.get_payloads(keys[i : i + LOOKUP_CHUNK])
                )

        for unit in units:
            old = stored.get(unit.key) or failures.get(unit.key)
            if (
                old is not None
                and old.get("filepath") == unit.filepath
                and old.get("fingerprint") == unit.fingerprint
            ):
                report.skipped += 1
                continue
            unit.new = unit.key not in stored
            todo.append(unit)
        return todo

    def _holds_vectors(self):
        """Whether the index was seen to hold vectors (else there are none
        to look up): counted until it does (an exact count is not free at
        1M); lookups in an index emptied since merely find nothing."""
        if not self._has_vectors:
            self._has_vectors = self.store.count() > 0
        return self._has_vectors

    def _start_progress(self, total):
        """Starts the progress of a phase that embeds at most ``total``."""
        self._done, self._total = 0, total
        st.start_progress(self.target, st.Progress(
            done=0, total=total, started_at=st.utcnow(),
            building=self.building, index=self.store.name))
        if self.progress:
            self.progress(0, total)

    def _set_total(self, total):
        """Sets a closer estimate of how many the phase embeds (a page at a
        time, it learns that as it goes)."""
        total = max(total, self._done)
        if total != self._total:
            self._total = total
            st.set_progress(self.target, total=total)
            if self.progress:
                self.progress(self._done, total)

    def _items(self, todo):
        """The items of :func:`~fiftyone_ai_search.embedding.pipeline.embed_images`
        for units to embed, and its keyword arguments."""
        return [(u.key, u.filepath) for u in todo], {}

    def _embed(self, todo, report):
        """Embeds and commits ``todo`` (a page of :meth:`_diff`)."""
        from ..embedding.pipeline import embed_images  # start-up: PIL

        if not todo:
            return

        meta = {u.key: u for u in todo}
        items, options = self._items(todo)
        if self.existing is not None:
            items = self._reuse(items, meta, report)
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
                    **options,
                ):
                    if pending is not None:
                        pending.result()
                    pending = ex.submit(self._commit, batch, meta, report)
                if pending is not None:
                    pending.result()
        finally:
            self.store.close()

    def _reuse(self, items, meta, report):
        """Stores the existing vectors of ``items`` instead of embedding
        them; returns the items left to embed."""
        from ..embedding.pipeline import EmbeddedBatch  # start-up: PIL

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
                self._commit_progress(len(ids))
        return left

    def _commit_progress(self, count):
        self._done += count
        st.set_progress(self.target, done=self._done)
        if self.progress:
            self.progress(self._done, max(self._total, self._done))

    def _commit(self, batch, meta, report):
        try:
            self._write(batch, meta, report)
        except IndexNotFoundError:
            self._check()  # dropped because the state changed: say so
            raise
        self._commit_progress(len(batch.keys) + len(batch.failures))

    def _write(self, batch, meta, report, reused=False):
        self._check()
        if batch.keys:
            payloads = [meta[k].payload() for k in batch.keys]
            with self.store.session():
                self.store.upsert(batch.keys, batch.vectors, payloads)
            st.clear_failures(self.target, batch.keys)
            if reused:
                report.reused += len(batch.keys)
            else:
                new = sum(meta[k].new for k in batch.keys)
                report.added += new
                report.updated += len(batch.keys) - new

        if batch.failures:
            failed = list(batch.failures)
            # a sample that now fails must not keep a stale vector
            with self.store.session():
                self.store.delete(failed)
            st.record_failures(
                self.target,
                [meta[k].failure(reason)
                 for k, reason in batch.failures.items()],
            )
            report.failed += len(failed)
