"""Incremental synchronisation of a frame index: one vector per sampled
frame of every video of a video dataset, kept in sync with the dataset
(see docs/design.md, "Video frames").

It is the object sync (:mod:`fiftyone_ai_search.sync.objects`) with videos
for units, and it finds changes as cheaply:

- FiftyOne bumps a sample's ``last_modified_at`` when it is edited, so the
  edited videos are the candidates, a page at a time, as for images;
- **a video is complete when its frame 1 is**: frame 1 is always sampled,
  and its vector is written last, after every other frame of the video is
  committed, with the video's summary in its payload (``frames``: how many
  points the video has, ``frames_read``, ``declared_frames``). So one point
  per edited video tells new, replaced and half-done videos apart: no
  frame 1 is new or was killed midway (``kill -9``), another fingerprint
  (:func:`~fiftyone_ai_search.embedding.frames.frame_fingerprint` of the
  video file's, frame 1 and the rule) is replaced or re-ruled, the same is
  untouched (a tag or a label edit embeds nothing);
- a replaced video first loses its frame 1, then gets its new frames, then
  the frames it no longer has are deleted (found by their ``source_id``),
  then frame 1 is written;
- deleted videos: when ``last_deletion_at`` moved, the index is read a page
  at a time and the frames of videos that are gone are deleted.

Every video is decoded once, front to back, streaming its frames through
the model (:func:`fiftyone_ai_search.embedding.pipeline.embed_videos`).
A video that cannot be read is one failure record with its reason,
retried when its file changes. The consistency check compares the points
with the sum of the frame-1 summaries, and the complete videos plus the
failed ones with the videos: a mismatch runs the full pass that repairs
it, re-embedding the videos whose points do not match their summary.
"""

import collections
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor

from ..embedding.sampling import FrameSampling, frame_fingerprint
from ..index import state as st
from ..index.targets import frame_key, frame_video
from ..store import IndexNotFoundError
from .images import (
    LOOKUP_CHUNK,
    PAGE_SIZE,
    Unit,
    edited_since,
    file_fingerprint,
    sample_pages,
)
from .objects import SOURCE_KEY, ObjectSynchronizer

logger = logging.getLogger(__name__)

#: the payload keys of a frame: its number (1-based) and time (seconds)
FRAME_NUMBER_KEY = "frame_number"
TIMESTAMP_KEY = "timestamp"

#: the payload key of frame 1 that holds how many points its video has
FRAMES_KEY = "frames"


@dataclasses.dataclass
class VideoUnit(Unit):
    """A video of the dataset: its frame 1's key stands for it in the
    index; ``key`` is its sample id.

    Attributes:
        frame_rate: the sample's ``metadata.frame_rate`` (None: the
            stream's)
        redo: whether the index holds frames of it to replace (its frame 1
            is deleted before the new frames come)
    """

    frame_rate: float = None
    redo: bool = False

    def failure(self, reason):
        return dict(super().failure(reason),
                    file_fingerprint=self.file_fingerprint)


def _videos(target, ids, paths, sampling):
    """The :class:`VideoUnit` s of a page of videos, as they are now."""
    samples = edited_since(target, None).select(list(ids))
    rates = dict(zip(*samples.values(["id", "metadata.frame_rate"])))
    units = []
    for sample_id, path in zip(ids, paths):
        rate = rates.get(sample_id)
        file_fp = file_fingerprint(path)
        units.append(VideoUnit(
            sample_id, path, frame_fingerprint(file_fp, 1, sampling, rate),
            sample_id=sample_id, file_fingerprint=file_fp, frame_rate=rate))
    return units


def _first_frames(store, video_ids):
    """``{video id: payload of its frame 1}`` of the complete videos among
    ``video_ids``."""
    found = {}
    video_ids = list(video_ids)
    for start in range(0, len(video_ids), LOOKUP_CHUNK):
        keys = [frame_key(v, 1) for v in video_ids[start:start + LOOKUP_CHUNK]]
        found.update((frame_video(k), p)
                     for k, p in store.get_payloads(keys).items())
    return found


def frames_consistent(target, store) -> bool:
    """The consistency check of a frame index: every video has a complete
    frame 1 or a failure, and the index holds as many points as the
    frame-1 summaries say (reads one point per video)."""
    video_ids = edited_since(target, None).values("id")
    with store.session():
        if not store.exists():
            return False
        num_points = store.count()
        first = _first_frames(store, video_ids)
    frames = sum(int(p.get(FRAMES_KEY) or 0) for p in first.values())
    return (len(first) + st.count_failures(target) == len(video_ids)
            and num_points == frames)


class FrameSynchronizer(ObjectSynchronizer):
    """Brings a frame index up to date with the videos of a video dataset.

    Args:
        frames: the :class:`~fiftyone_ai_search.index.targets.Frames`
        store, model, settings, generation, building, progress: as for
            :class:`~fiftyone_ai_search.sync.images.Synchronizer`
        sampling (None): the index's
            :class:`~fiftyone_ai_search.embedding.frames.FrameSampling`
    """

    def __init__(self, frames, store, model, settings, generation,
                 building=False, progress=None, sampling=None):
        super().__init__(frames, store, model, settings, generation,
                         building=building, progress=progress)
        self.sampling = sampling or FrameSampling()
        #: frames committed by this run (the state's ``progress.frames``)
        self._frames_done = 0

    def _units(self, ids, paths, report):
        return _videos(self.target, ids, paths, self.sampling)

    def _diff(self, units, report, failures):
        """The videos to embed: those whose frame 1 is missing (new, or
        half-done) or of another fingerprint (replaced, or re-ruled)."""
        with self.store.session():
            stored = (_first_frames(self.store, [u.key for u in units])
                      if self._holds_vectors() else {})
        todo = []
        for unit in units:
            old = stored.get(unit.key) or failures.get(unit.key)
            if (old is not None and old.get("filepath") == unit.filepath
                    and old.get("fingerprint") == unit.fingerprint):
                report.skipped += 1
                continue
            unit.new = unit.key not in stored
            unit.redo = not unit.new
            todo.append(unit)
        return todo

    def _embed(self, todo, report):
        """Embeds and commits the frames of ``todo`` (videos), each video
        completed by its frame 1."""
        # start-up: PIL
        from ..embedding.pipeline import VideoEnd, embed_videos

        if not todo:
            return
        meta = {u.key: u for u in todo}
        # replaced videos lose their frame 1 first: killed midway, they
        # read as half-done, never as complete with stale frames
        redo = [frame_key(u.key, 1) for u in todo if u.redo]
        if redo:
            self._check()
            with self.store.session():
                self.store.delete(redo)
        streams = collections.defaultdict(_Stream)
        videos = [(u.key, u.filepath, u.frame_rate) for u in todo]
        # commits on their own thread, in order, as for images
        try:
            with ThreadPoolExecutor(
                1, thread_name_prefix="ai-search-commit"
            ) as ex:
                pending = None
                for event in embed_videos(
                    self.model, videos, self.sampling,
                    batch_size=self.settings.batch_size,
                    num_workers=self.settings.num_workers,
                ):
                    if pending is not None:
                        pending.result()
                    commit = (self._end if isinstance(event, VideoEnd)
                              else self._part)
                    pending = ex.submit(self._committed, commit, event,
                                        meta[event.key],
                                        streams[event.key], report)
                if pending is not None:
                    pending.result()
        finally:
            self.store.close()

    def _committed(self, commit, event, unit, stream, report):
        try:
            commit(event, unit, stream, report)
        except IndexNotFoundError:
            self._check()  # dropped because the state changed: say so
            raise

    def _payload(self, unit, number, timestamp, scene):
        return {
            SOURCE_KEY: unit.key,
            FRAME_NUMBER_KEY: int(number),
            TIMESTAMP_KEY: float(timestamp),
            "scene": bool(scene),
            "filepath": unit.filepath,
            "fingerprint": frame_fingerprint(
                unit.file_fingerprint, number, self.sampling,
                unit.frame_rate),
        }

    def _part(self, part, unit, stream, report):
        """Commits a part of a video's frames; its frame 1 is held back
        until the video ends."""
        keys, rows, payloads = [], [], []
        for row, (number, timestamp, scene) in enumerate(zip(
                part.frame_numbers, part.timestamps, part.scenes)):
            payload = self._payload(unit, number, timestamp, scene)
            if number == 1:
                stream.first = (part.vectors[row:row + 1], payload)
                continue
            keys.append(frame_key(unit.key, number))
            rows.append(row)
            payloads.append(payload)
        stream.numbers.extend(part.frame_numbers)
        stream.failed += len(part.failures)
        if keys:
            self._check()
            with self.store.session():
                self.store.upsert(keys, part.vectors[rows], payloads)
            self._frames_done += len(keys)
            st.set_progress(self.target, frames=self._frames_done)

    def _end(self, end, unit, stream, report):
        """Completes a video: its frames it no longer has go, then its
        frame 1 is written with its summary; or it fails as a whole."""
        reason = end.reason
        if reason is None and stream.first is None:
            reason = "frame 1 cannot be decoded"
        self._check()
        with self.store.session():
            held = self.store.keys_where(SOURCE_KEY, [unit.key])
        if reason is not None:
            with self.store.session():
                self.store.delete(held)
            st.record_failures(self.target, [unit.failure(reason)])
            report.failed += 1
        else:
            keep = {frame_key(unit.key, n) for n in stream.numbers}
            stale = [k for k in held if k not in keep]
            vector, payload = stream.first
            summary = end.summary
            payload = dict(
                payload, **{FRAMES_KEY: len(stream.numbers)},
                frames_read=summary["frames_read"],
                declared_frames=summary["declared_frames"],
                frame_rate=summary["frame_rate"],
                failed_frames=stream.failed)
            with self.store.session():
                if stale:
                    self.store.delete(stale)
                self.store.upsert([frame_key(unit.key, 1)], vector,
                                  [payload])
            st.clear_failures(self.target, [unit.key])
            self._frames_done += 1
            st.set_progress(self.target, frames=self._frames_done)
            if unit.new:
                report.added += 1
            else:
                report.updated += 1
        self._commit_progress(1)

    def _reconcile(self, report):
        """The consistency check (:func:`frames_consistent`); on a
        mismatch, a full pass: the frames of deleted videos go, and every
        video whose frame 1 is missing or stale, or whose points do not
        match its summary, is embedded again."""
        if frames_consistent(self.target, self.store):
            return
        before = report.removed, report.added + report.updated
        report.removed += self._remove_deleted()
        failures = {f["key"]: f for f in st.get_failures(self.target)}
        self._start_progress(0)
        for ids, paths in sample_pages(edited_since(self.target, None),
                                       PAGE_SIZE):
            units = self._units(ids, paths, report)
            todo = self._diff(units, report, failures)
            queued = {u.key for u in todo}
            todo.extend(self._mismatched(
                [u for u in units
                 if u.key not in queued and u.key not in failures], report))
            self._set_total(self._done + len(todo))
            self._embed(todo, report)
        logger.info(
            "AI search frame index of %s was inconsistent: removed %d, "
            "embedded %d videos", self.target,
            report.removed - before[0],
            report.added + report.updated - before[1])

    def _mismatched(self, units, report):
        """The complete videos among ``units`` whose points in the index do
        not match their frame 1's summary (a crash between two writes, an
        index changed behind our back): embedded again."""
        if not units:
            return []
        with self.store.session():
            first = _first_frames(self.store, [u.key for u in units])
            held = collections.Counter(
                frame_video(key) for key in self.store.keys_where(
                    SOURCE_KEY, [u.key for u in units]))
        redo = []
        for unit in units:
            summary = first.get(unit.key)
            if summary is not None and held[unit.key] != summary.get(
                    FRAMES_KEY):
                unit.redo, unit.new = True, False
                report.skipped -= 1  # (its diff counted it)
                redo.append(unit)
        return redo


@dataclasses.dataclass
class _Stream:
    """What a sync keeps of a video while its frames come: the frame
    numbers committed, its frame 1 (vector and payload) held back, and
    the frames that could not be preprocessed."""

    numbers: list = dataclasses.field(default_factory=list)
    first: tuple = None
    failed: int = 0


def sampling_of(ref: "st.IndexRef | dict") -> FrameSampling:
    """The sampling rule of a frame index's reference (or its stored
    form)."""
    return FrameSampling.from_dict(st.IndexRef.of(ref).sampling or {})
