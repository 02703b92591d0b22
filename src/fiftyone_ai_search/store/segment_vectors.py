"""The original vectors of an embedded index's points, read straight from
its segments' files into float32 rows, without the engine.

The engine (qdrant-edge-py) hands each vector over as a Python list of
floats: ~21 us a 512-d vector to make, and more to convert to numpy. A
pass that gives every point its cell reads every vector: at 10M points
that conversion took 426 s of CPU (``bench/README.md``), more than the
products that choose the cells. The files hold the same float32 values;
reading them costs a copy.

The layouts of an **appendable** segment (where a written index's points
are until its first compaction) and of an **immutable** one with its
vectors in one memory-mapped file (what a compaction makes of them) are
read, on the engine's versions they were checked on (:data:`KNOWN_VERSIONS`);
any other kind of segment in the shard, or another engine version, makes
:meth:`SegmentVectors.open` answer None (the caller then reads every vector
through the engine). The layouts (qdrant
``lib/segment``, read to write this):

- appendable, ``<segment>/mutable_id_tracker.mappings``: a log of the
  segment's mapping changes, concatenated, each a type byte and then: 1
  (insert of a numeric id): u64 id, u32 offset; 2 (insert of a UUID): its
  16 bytes in order, u32 offset; 3 / 4: a delete of a numeric id / a UUID
  (no offset). Little-endian. Written at each flush; a crash may leave an
  incomplete entry at its end, which the engine drops at its next opening.
- appendable, ``<segment>/vector_storage/vectors/``: ``config.json``
  (``chunk_size_vectors``, ``dim``), ``status.dat`` (the number of vectors
  written, a native u64) and ``chunk_<n>.mmap``: the float32 vector at an
  offset ``k`` lies in chunk ``k // chunk_size_vectors`` at row
  ``k % chunk_size_vectors``, no header. An update of a point's vector
  writes its row in place; a point deleted and written again gets a new
  offset (its old row stays, unreachable).
- immutable, ``<segment>/id_tracker.mappings``: a u64 count, then that many
  entries, each a type byte (0: a numeric id, u64; 1: a UUID, its 16 bytes
  in order) and the u32 offset; written once. ``id_tracker.deleted``: a
  bit per offset (least significant bit first), set where the point was
  deleted or written again elsewhere since (a write goes to an appendable
  segment); rewritten at a flush.
- immutable, ``<segment>/vector_storage/matrix.dat``: the 4 bytes ``data``,
  then the float32 vector at offset ``k`` at row ``k``.

What makes a wrong row unlikely to go unnoticed: a point found in two
segments, or inserted twice without a delete between (the engine's
"deferred" slots), is left to the engine; the files are re-read where any
changed since (:meth:`SegmentVectors.current`); and the caller compares a
sample of every block with the engine's own vectors (see
:meth:`fiftyone_ai_search.store.edge.EdgeStore._original_rows`).
"""

import hashlib
import importlib.metadata
import json
import logging
import os
import uuid
from typing import NamedTuple, Optional

import numpy as np

logger = logging.getLogger(__name__)

#: the qdrant-edge-py versions whose appendable segments' files were checked
#: against the engine's own vectors (``tests/test_cells.py``)
KNOWN_VERSIONS = ("0.9.",)

_MAPPINGS = "mutable_id_tracker.mappings"
_VECTORS = os.path.join("vector_storage", "vectors")
_FIXED_MAPPINGS = "id_tracker.mappings"
_FIXED_DELETED = "id_tracker.deleted"
_MATRIX = os.path.join("vector_storage", "matrix.dat")
_MATRIX_MAGIC = b"data"
#: an immutable segment's entry: a type byte, a UUID, a u32 offset
_FIXED_UUID, _FIXED_ENTRY = 1, 21

#: a mapping change's type byte -> its size in bytes
_ENTRY_SIZE = {1: 13, 2: 21, 3: 9, 4: 17}
_INSERT_UUID = 2
_DELETE_UUID = 4


def _engine_version():
    try:
        return importlib.metadata.version("qdrant-edge-py")
    except importlib.metadata.PackageNotFoundError:
        return None


class SegmentVectors:
    """Where each point's original vector lies in the shard's files (see
    the module's docstring), and reads of them."""

    def __init__(self, shard_path, dim, keys, segment, offset, segments,
                 signature):
        self.shard_path = shard_path
        self.dim = dim
        #: the points' UUIDs (16 bytes each), sorted
        self._keys = keys
        #: the segment (index in ``_segments``) and offset of each key
        self._segment = segment
        self._offset = offset
        #: per segment: where its rows lie (:class:`_Files`)
        self._segments = segments
        self._signature = signature

    def __len__(self):
        return len(self._keys)

    @classmethod
    def open(cls, shard_path: str, dim: int) -> Optional["SegmentVectors"]:
        """The points' places in the shard at ``shard_path`` (flushed: the
        mappings on disk are those of the last flush), or None where a
        segment's layout is not the one understood or the engine's
        version is not one of :data:`KNOWN_VERSIONS`."""
        version = _engine_version()
        if version is None or not version.startswith(KNOWN_VERSIONS):
            return None
        signature = _signature(shard_path)
        if signature is None:
            return None
        keys, segs, offsets, segments = [], [], [], []
        for path in _segment_dirs(shard_path):
            found = _appendable(path, dim)
            if found is None:
                found = _immutable(path, dim)
            if found is None:
                # another kind of segment: all are read through the engine
                # (a point in this one and another could not be told)
                logger.debug("segment %s: layout not read", path)
                return None
            files, k, o = found
            if not len(k):
                continue
            index = len(segments)
            keys.append(k)
            offsets.append(o)
            segs.append(np.full(len(k), index, dtype=np.uint16))
            segments.append(files)
        if not segments:
            return None
        keys = np.concatenate(keys)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        segment = np.concatenate(segs)[order]
        offset = np.concatenate(offsets)[order]
        # a point in two segments (a crash between a move's two writes):
        # which copy the engine answers is its versions' call, not read
        # here: the engine reads it
        twice = np.zeros(len(keys), dtype=bool)
        if len(keys) > 1:
            same = keys[1:] == keys[:-1]
            twice[1:] |= same
            twice[:-1] |= same
        if twice.any():
            keys, segment, offset = keys[~twice], segment[~twice], offset[~twice]
        return cls(shard_path, dim, keys, segment, offset, segments,
                   signature)

    def current(self) -> bool:
        """Whether none of the files read by :meth:`open` changed since
        (a write by another holder between two rounds of a pass)."""
        return _signature(self.shard_path) == self._signature

    def rows(self, point_ids):
        """The original vectors of ``point_ids`` (UUIDs, or their strings)
        read from the files: ``(rows, found)``, a float32 ``(n, dim)``
        array and whether each was found (the rows of those not found
        are zeros: the engine's to read)."""
        n = len(point_ids)
        out = np.zeros((n, self.dim), dtype=np.float32)
        found = np.zeros(n, dtype=bool)
        if not n or not len(self._keys):
            return out, found
        wanted = np.frombuffer(b"".join(_uuid_bytes(p) for p in point_ids),
                               dtype="S16")
        at = np.minimum(np.searchsorted(self._keys, wanted),
                        len(self._keys) - 1)
        found = self._keys[at] == wanted
        rows = np.flatnonzero(found)
        if not len(rows):
            return out, found
        seg = self._segment[at[rows]].astype(np.int64)
        off = self._offset[at[rows]].astype(np.int64)
        order = np.lexsort((off, seg))
        rows, seg, off = rows[order], seg[order], off[order]
        buf = np.empty((len(rows), self.dim), dtype=np.float32)
        row_bytes = self.dim * 4
        # runs of consecutive offsets in one file: one read each
        start = 0
        while start < len(rows):
            files = self._segments[seg[start]]
            chunk = off[start] // files.per_chunk
            end = start + 1
            while (end < len(rows) and seg[end] == seg[start]
                   and off[end] == off[end - 1] + 1
                   and off[end] // files.per_chunk == chunk):
                end += 1
            path = files.path(chunk)
            want = (end - start) * row_bytes
            with open(path, "rb", buffering=0) as f:
                got = os.preadv(f.fileno(), [memoryview(buf[start:end])],
                                files.header
                                + (off[start] % files.per_chunk) * row_bytes)
            if got != want:
                raise OSError(f"Short read of {path}: {got} of {want} bytes")
            start = end
        out[rows] = buf
        return out, found


class _Files(NamedTuple):
    """Where a segment's rows lie: numbered chunk files of ``per_chunk``
    rows in ``directory`` (appendable), or the one file ``single`` whose
    rows follow ``header`` bytes (immutable)."""

    directory: str
    per_chunk: int
    single: Optional[str] = None
    header: int = 0

    def path(self, chunk):
        if self.single is not None:
            return self.single
        return os.path.join(self.directory, f"chunk_{chunk}.mmap")


def _uuid_bytes(point_id):
    if isinstance(point_id, uuid.UUID):
        return point_id.bytes
    return uuid.UUID(str(point_id)).bytes


def _segment_dirs(shard_path):
    root = os.path.join(shard_path, "segments")
    return sorted(e.path for e in os.scandir(root) if e.is_dir())


def _signature(shard_path):
    """What of the shard's files :meth:`SegmentVectors.open` depends on:
    the segments, their mappings logs' sizes and times (appended to at a
    flush that has changes), their counts of vectors written (the count's
    file is rewritten at every flush: its content, not its time), and an
    immutable segment's deleted bits (written in place at a flush: their
    content)."""
    try:
        parts = []
        for path in _segment_dirs(shard_path):
            try:
                st = os.stat(os.path.join(path, _MAPPINGS))
                mappings = (st.st_ino, st.st_size, st.st_mtime_ns)
            except FileNotFoundError:
                mappings = None
            try:
                with open(os.path.join(path, _VECTORS, "status.dat"),
                          "rb") as f:
                    written = f.read(8)
            except FileNotFoundError:
                written = None
            try:
                with open(os.path.join(path, _FIXED_DELETED), "rb") as f:
                    deleted = hashlib.blake2b(f.read(),
                                              digest_size=16).digest()
            except FileNotFoundError:
                deleted = None
            parts.append((path, mappings, written, deleted))
        return tuple(parts)
    except OSError:
        return None


def _appendable(path, dim):
    """``(files, keys, offsets)`` of the appendable segment at ``path``,
    or None where it is another kind of segment or holds what is not read
    here (see :func:`_layout`, :func:`_read_mappings`)."""
    layout = _layout(path, dim)
    if layout is None:
        return None
    per_chunk, _, written = layout
    files = _Files(os.path.join(path, _VECTORS), per_chunk)
    if written == 0:
        # empty (its mappings may not be written yet)
        return files, np.zeros(0, dtype="S16"), np.zeros(0, dtype=np.uint32)
    mapped = _read_mappings(os.path.join(path, _MAPPINGS), written)
    if mapped is None:
        return None
    return (files, *mapped)


def _immutable(path, dim):
    """``(files, keys, offsets)`` of the live points of the immutable
    segment at ``path`` whose one unnamed dense float32 vector of ``dim``
    lies in one memory-mapped file, or None where it is another kind of
    segment or holds numeric ids."""
    matrix = os.path.join(path, _MATRIX)
    try:
        with open(os.path.join(path, "segment.json")) as f:
            meta = json.load(f)
        with open(matrix, "rb") as f:
            magic = f.read(len(_MATRIX_MAGIC))
        size = os.path.getsize(matrix)
        data = np.fromfile(os.path.join(path, _FIXED_MAPPINGS),
                           dtype=np.uint8)
        deleted = np.fromfile(os.path.join(path, _FIXED_DELETED),
                              dtype=np.uint8)
    except (OSError, ValueError):
        return None
    if not _one_dense_vector(meta, dim, "Mmap") or magic != _MATRIX_MAGIC:
        return None
    row_bytes = dim * 4
    written, extra = divmod(size - len(_MATRIX_MAGIC), row_bytes)
    if extra or len(data) < 8:
        return None
    count = int(data[:8].view("<u8")[0])
    entries = data[8:]
    if len(entries) != count * _FIXED_ENTRY:
        return None  # numeric ids among them, or not the layout read
    entries = entries.reshape(count, _FIXED_ENTRY)
    if count and not np.all(entries[:, 0] == _FIXED_UUID):
        return None
    keys = np.ascontiguousarray(entries[:, 1:17]).view("S16").ravel()
    offsets = np.ascontiguousarray(entries[:, 17:21]).view("<u4").ravel()
    bits = np.unpackbits(deleted, bitorder="little")
    if len(offsets) and int(offsets.max()) >= len(bits):
        return None
    live = ~bits[offsets].astype(bool)
    kept = _below(keys[live], offsets[live].astype(np.uint32), written)
    if kept is None:
        return None
    files = _Files(path, max(written, 1), single=matrix,
                   header=len(_MATRIX_MAGIC))
    return (files, *kept)


def _one_dense_vector(meta, dim, storage_type):
    """Whether a segment's ``segment.json`` (``meta``) holds one unnamed
    dense float32 vector of ``dim`` stored as ``storage_type``."""
    vectors = ((meta.get("config") or {}).get("vector_data") or {})
    ours = vectors.get("")
    return (len(vectors) == 1 and isinstance(ours, dict)
            and ours.get("storage_type") == storage_type
            and ours.get("size") == dim
            and ours.get("datatype") in (None, "float32")
            and ours.get("multivector_config") is None)


def _layout(path, dim):
    """``(chunk_size_vectors, dim, vectors written)`` of the appendable
    segment at ``path`` whose one unnamed dense float32 vector of ``dim``
    is stored in chunks, or None where it is another kind of segment."""
    try:
        with open(os.path.join(path, "segment.json")) as f:
            meta = json.load(f)
        with open(os.path.join(path, _VECTORS, "config.json")) as f:
            config = json.load(f)
        with open(os.path.join(path, _VECTORS, "status.dat"), "rb") as f:
            status = f.read(8)
        if (not os.path.exists(os.path.join(path, _MAPPINGS))
                and status != bytes(8)):
            return None
    except (OSError, ValueError):
        return None
    if not _one_dense_vector(meta, dim, "ChunkedMmap") or len(status) != 8:
        return None
    per_chunk = config.get("chunk_size_vectors")
    if (config.get("dim") != dim or not isinstance(per_chunk, int)
            or per_chunk <= 0
            or config.get("chunk_size_bytes") != per_chunk * dim * 4):
        return None
    return per_chunk, dim, int.from_bytes(status, "little")


def _read_mappings(path, written):
    """``(keys, offsets)`` of the live UUID points of a segment's mappings
    log at ``path`` (the last insert of each, but for a delete after it),
    offsets below ``written``; None where the log holds numeric ids or a
    type byte not understood. A point inserted twice without a delete
    between (the engine's "deferred" slots) is left out: the engine reads
    it."""
    data = np.fromfile(path, dtype=np.uint8)
    size = _ENTRY_SIZE[_INSERT_UUID]
    usable = len(data) - len(data) % size
    if usable == len(data) and np.all(data[::size] == _INSERT_UUID):
        # inserts only (an index written and not deleted from): one array.
        # A point inserted twice is found twice, and left to the engine
        # (SegmentVectors.open)
        entries = data.reshape(-1, size)
        keys = np.ascontiguousarray(entries[:, 1:17]).view("S16").ravel()
        offsets = np.ascontiguousarray(entries[:, 17:21]).view("<u4").ravel()
        return _below(keys, offsets.astype(np.uint32), written)
    return _replay(bytes(data), written)


def _replay(data, written):
    """:func:`_read_mappings` of a log with deletes, one entry at a time."""
    live, doubled = {}, set()
    at = 0
    while at < len(data):
        kind = data[at]
        size = _ENTRY_SIZE.get(kind)
        if size is None or kind not in (_INSERT_UUID, _DELETE_UUID):
            return None
        if at + size > len(data):
            break  # an incomplete last entry: the engine drops it too
        key = data[at + 1 : at + 17]
        if kind == _INSERT_UUID:
            if key in live:  # left to the engine (see open)
                doubled.add(key)
            live[key] = int.from_bytes(data[at + 17 : at + 21], "little")
        else:
            live.pop(key, None)
            doubled.discard(key)
        at += size
    for key in doubled:
        del live[key]
    keys = np.frombuffer(b"".join(live), dtype="S16") if live else (
        np.zeros(0, dtype="S16"))
    offsets = np.fromiter(live.values(), dtype=np.uint32, count=len(live))
    return _below(keys, offsets, written)


def _below(keys, offsets, written):
    """The keys whose offsets lie among the vectors written (others are
    the engine's to read); None where any does not."""
    if len(offsets) and int(offsets.max()) >= written:
        return None
    return keys, offsets
