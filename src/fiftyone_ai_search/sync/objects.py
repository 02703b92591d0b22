"""Incremental synchronisation of an object index: one vector per object of
a label field (a crop of its box), kept in sync with the dataset.

It is the image sync (:mod:`fiftyone_ai_search.sync.images`) with objects for
units, and it finds changes as cheaply:

- FiftyOne bumps a sample's ``last_modified_at`` when its labels are
  edited (added, moved, relabelled, deleted), so the edited samples are
  the candidates, a page at a time, as for images;
- an object's fingerprint is its image file's with its box's
  (:func:`fiftyone_ai_search.embedding.crops.box_fingerprint`): a moved box or a
  replaced image re-embeds the object, a relabel (same box) embeds nothing;
- the objects an edited sample no longer holds are found in the index by
  their sample (the ``source_id`` every vector carries) and deleted;
- deleted samples: when ``last_deletion_at`` moved, the index is read a
  page at a time and the objects of samples that are gone are deleted.

Every object of an image comes from one decode of it, in the embedding
worker pool (:func:`fiftyone_ai_search.embedding.pipeline.embed_images` with crops).
Commits, generations, the kill -9 resume and the consistency check are the
image sync's: the check compares the index with the field's object count,
and a mismatch runs a full pass that repairs it.
"""

import dataclasses
import logging

from ..embedding.crops import CropSettings, box_fingerprint
from ..index import state as st
from .images import (
    PAGE_SIZE,
    Synchronizer,
    Unit,
    edited_since,
    repaired,
    sample_pages,
    samples_by_id,
    file_fingerprint,
    is_consistent,
)

logger = logging.getLogger(__name__)

#: the payload key of the sample that holds an object
SOURCE_KEY = "source_id"


@dataclasses.dataclass
class ObjectUnit(Unit):
    """An object of a sample: its vector's key is its label id."""

    def payload(self):
        return dict(super().payload(), **{SOURCE_KEY: self.sample_id})

    def failure(self, reason):
        return dict(super().failure(reason), label_id=self.key,
                    file_fingerprint=self.file_fingerprint)


def object_fingerprint(file_fp: "str | None", box) -> str:
    """What an object's stored vector must match to be kept: its image
    file and its box."""
    return f"{file_fp}|{box_fingerprint(box) if box is not None else None}"


def _object_units(objects, samples):
    """``(sample ids, units)``: the objects of ``samples`` as they are
    now, with their fingerprints."""
    ids, paths, found = objects.objects_of(samples)
    units = []
    for sample_id, path, boxes in zip(ids, paths, found):
        file_fp = file_fingerprint(path)
        units.extend(
            ObjectUnit(label_id, path, object_fingerprint(file_fp, box),
                       sample_id=sample_id, box=box, file_fingerprint=file_fp)
            for label_id, box in boxes)
    return ids, units


class ObjectSynchronizer(Synchronizer):
    """Brings an object index up to date with the objects of a label field.

    Args:
        objects: the :class:`~fiftyone_ai_search.index.targets.Objects`
        store, model, settings, generation, building, progress: as for
            :class:`~fiftyone_ai_search.sync.images.Synchronizer`
        crop (None): the :class:`~fiftyone_ai_search.embedding.crops.CropSettings`
            of the index
    """

    def __init__(self, objects, store, model, settings, generation,
                 building=False, progress=None, crop=None):
        super().__init__(objects, store, model, settings, generation,
                         building=building, progress=progress)
        self.crop = crop or CropSettings()

    def _prepare(self):
        # the objects of a page of samples are found by their source_id
        with self.store.session():
            self.store.ensure_keyword_index(SOURCE_KEY)

    def _units(self, ids, paths, report):
        """The objects of a page of samples, read now; the objects the
        index holds of these samples and they no longer do are deleted."""
        samples = edited_since(self.target, None).select(list(ids))
        ids, units = _object_units(self.target, samples)
        self._drop_removed(ids, {u.key for u in units}, report)
        return units

    def _drop_removed(self, sample_ids, present, report):
        """Deletes the vectors (and failures) of objects that samples no
        longer hold."""
        with self.store.session():
            held = self.store.keys_where(SOURCE_KEY, sample_ids) \
                if self._holds_vectors() else []
        gone = [k for k in held if k not in present]
        if gone:
            self._check()
            with self.store.session():
                self.store.delete(gone)
            report.removed += len(gone)
        failed = st.get_failures_of(self.target, sample_ids)
        st.clear_failures(self.target, [f["key"] for f in failed
                                        if f["key"] not in present])

    def _items(self, todo):
        # all objects of an image from one decode
        by_sample = {}
        for unit in todo:
            _, crops = by_sample.setdefault(unit.sample_id,
                                            (unit.filepath, []))
            crops.append((unit.key, unit.box))
        items = [(sample_id, path, crops)
                 for sample_id, (path, crops) in by_sample.items()]
        return items, {"crop": self.crop}

    def _count_units(self, edited, retry_ids):
        count = self.target.count(edited)
        if retry_ids:
            count += self.target.count(
                edited_since(self.target, None).select(list(retry_ids)))
        return count

    def _failures_to_retry(self, failures, edited):
        """``(ids, filepaths)`` of the samples holding failed objects whose
        image changed since, leaving out the ``edited`` samples."""
        sources = {f["sample_id"] for f in repaired(failures.values())}
        sources.discard(None)
        if not sources:
            return [], []
        already = set(edited.select(list(sources)).values("id"))
        ids, paths = samples_by_id(self.target, sources - already)
        return list(ids), list(paths)

    def _remove_deleted(self):
        """Deletes the vectors of the objects of deleted samples: the index
        is read a page at a time, the samples of each page looked up."""
        removed = 0
        pages = self.store.iter_payload_pages(SOURCE_KEY, PAGE_SIZE)
        gone = []
        try:
            for page in pages:
                sources = {source for _, source in page}
                present = set(samples_by_id(self.target, sources)[0])
                gone.extend(k for k, source in page if source not in present)
        finally:
            pages.close()
        if gone:
            self._check()
            with self.store.session():
                for start in range(0, len(gone), PAGE_SIZE):
                    self.store.delete(gone[start : start + PAGE_SIZE])
            removed = len(gone)
        # failures of objects of deleted samples are moot
        failed = st.get_failures(self.target)
        sources = {f["sample_id"] for f in failed}
        present = set(samples_by_id(self.target, sources)[0])
        st.clear_failures(self.target, [f["key"] for f in failed
                                        if f["sample_id"] not in present])
        return removed

    def _reconcile(self, report):
        """The consistency check (counts: the index's vectors and the
        failures against the field's objects); on a mismatch, a full pass
        over the samples repairs it."""
        if is_consistent(self.target, self.store):
            return
        before = report.removed, report.added
        report.removed += self._remove_deleted()
        failures = {f["key"]: f for f in st.get_failures(self.target)}
        self._start_progress(0)
        for ids, paths in sample_pages(edited_since(self.target, None),
                                        PAGE_SIZE):
            todo = self._diff(self._units(ids, paths, report), report,
                              failures)
            self._set_total(self._done + len(todo))
            self._embed(todo, report)
        logger.info(
            "AI search object index of %s was inconsistent: removed %d, "
            "embedded %d", self.target, report.removed - before[0],
            report.added - before[1])


def write_given_objects(objects, store, label_ids, vectors):
    """Stores vectors given for objects (the Brain's ``add_to_index`` of an
    object index), with their fingerprints as of now: a sync keeps them
    until the object's box or its image changes.

    Raises:
        ValueError: for label ids of no object of the field
    """
    wanted = set(label_ids)
    samples = edited_since(objects.dataset, None).select_labels(
        ids=list(wanted), fields=objects.field)
    units = {u.key: u for u in _object_units(objects, samples)[1]
             if u.key in wanted}
    unknown = sorted(wanted - set(units))
    if unknown:
        raise ValueError(
            f"label_ids: {len(unknown)} id(s) not of objects of {objects}: "
            f"{unknown[:5]}")
    with store.session():
        store.upsert(list(label_ids), vectors,
                     [units[i].payload() for i in label_ids])
    st.clear_failures(objects, list(label_ids))


def crop_settings(ref: "st.IndexRef | dict") -> CropSettings:
    """The crop settings of an object index's reference (or its stored
    form)."""
    return CropSettings.from_dict(st.IndexRef.of(ref).crop or {})
