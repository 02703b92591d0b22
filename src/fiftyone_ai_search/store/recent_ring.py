"""The recent queries of an embedded index, in a file of fixed slots.

What :mod:`~fiftyone_ai_search.store.recent` keeps, kept in the index's
directory and shared by the processes that search it. A search must not
rewrite a file (rewriting the whole ring and renaming it was ~0.4 ms, ~15%
of an image search at 300k points): a query is written into one slot of a
file of :data:`~fiftyone_ai_search.store.recent.SIZE` slots, in place (one
``pwrite`` of ~1 KiB), under the file's ``flock``, so that two processes
searching at once each keep theirs.

The file (little-endian): a header of :data:`HEADER` bytes (magic, the
vectors' dimension, the slot count, a CRC-32 of those), then the slots, each
``(sequence, CRC-32, 0, dim x float16)``. A slot counts only where its
sequence is not 0 and its CRC-32 (of the sequence and the vector) holds: a
write torn by a crash reads as an empty slot, which the next query fills
(the newest valid sequence + 1 goes to the slot after it). A header torn or
foreign reads as no ring, and the next query writes a whole one in place.
The ring of the former format (``recent-queries.npy``, rewritten whole at
each query) is read once and carried over by the first query that writes.

Only the embedded index keeps this file (``fcntl``: Linux, macOS; see
:mod:`~fiftyone_ai_search.store.portability`).

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

import contextlib
import fcntl
import os
import struct
import zlib

import numpy as np

from . import recent

#: the ring's file, in the index's directory
FILE = "recent-queries.ring"

#: the former format's file: read once, carried over, removed
OLD_FILE = "recent-queries.npy"

#: the header's bytes; the slots follow
HEADER = 64

#: the start of the header
MAGIC = b"AISRING1"

#: magic, dim, slots; then the CRC-32 of those
_HEAD = struct.Struct("<8sII")

#: ``{file path: _Slots}``: the last read of each ring, so that a search
#: that finds the file as it left it skips the checksums and the conversion
#: from float16 (~0.15 ms of the ~0.3 ms it took otherwise), and updates it
#: in place after its write
_parsed = {}


def path_of(directory):
    """The ring's file in an index's ``directory``."""
    return os.path.join(directory, FILE)


def files(directory):
    """Every file of the recent queries in ``directory`` (the former
    format's too): what goes when the index drops them."""
    return [os.path.join(directory, FILE), os.path.join(directory, OLD_FILE)]


def read(directory):
    """The recent queries kept in ``directory``: an ``(n, dim)`` float16
    array, oldest first; empty where there are none or the file is
    unreadable. Where only the former format's file is there, its ring."""
    path = path_of(directory)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return recent.read(os.path.join(directory, OLD_FILE))
    except OSError:
        return _none()
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        slots = _parse(path, _read_all(fd))
        if slots is None:
            return _none()
        ring = slots.ring()
    except OSError:
        return _none()
    finally:
        os.close(fd)
    return ring


def remember(directory, vector):
    """Keeps the unit ``vector`` as the newest of the recent queries in
    ``directory``: one slot written in place, nothing where the ring holds
    it already (a repeat, e.g. a scoped search's over-fetch). A ring of
    another dimension (another model's) is started afresh. Silently does
    nothing where the directory is gone (the index was dropped meanwhile)
    or cannot be written: the recent queries are a sample, never worth a
    failed search. No fsync: a crash may lose the latest queries, never
    the ring."""
    vector = np.asarray(vector, dtype=np.float32)
    try:
        with _locked(directory) as (fd, path):
            slots = _parse(path, _read_all(fd))
            if slots is None or slots.dim != len(vector):
                # no ring yet, a torn or foreign one, or another model's
                slots = _parse(path, _start(fd, path, directory,
                                            len(vector)))
            # an empty slot's row is zeros: never the same query
            if float(np.max(slots.rows @ vector)) >= recent.SAME:
                return
            slots.write(fd, vector)
    except OSError:
        return


def replace(directory, ring):
    """Writes ``ring`` (``(n, dim)`` float16, oldest first; empty: none) as
    the recent queries of ``directory``, in place of what was kept."""
    ring = np.asarray(ring, dtype=np.float16)
    if not len(ring):
        for path in files(directory):
            _parsed.pop(path, None)
            with contextlib.suppress(OSError):
                os.remove(path)
        return
    try:
        with _locked(directory) as (fd, path):
            _write_whole(fd, path, ring[-recent.SIZE:])
    except OSError:
        return


# -- the file -----------------------------------------------------------------


def _none():
    return np.zeros((0, 0), dtype=np.float16)


@contextlib.contextmanager
def _locked(directory):
    """The ring's file (created where missing), open for writing and held
    by this process alone: the other writers wait (~a few us each: a
    write is one slot)."""
    path = path_of(directory)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd, path
    finally:
        os.close(fd)  # releases the lock


def _read_all(fd):
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def _slot_dtype(dim):
    return np.dtype([("seq", "<u8"), ("crc", "<u4"), ("zero", "<u4"),
                     ("vec", "<f2", (dim,))])


def _header(dim, size):
    head = _HEAD.pack(MAGIC, dim, size)
    return (head + struct.pack("<I", zlib.crc32(head))).ljust(HEADER, b"\0")


def _slot_crc(seq_bytes, vec_bytes):
    return zlib.crc32(vec_bytes, zlib.crc32(seq_bytes))


class _Slots:
    """A ring's file as read: its bytes, and per slot its sequence (0:
    empty or torn), its vector and that vector as float32 (zeros where
    the slot is empty)."""

    def __init__(self, raw, dim, seqs, vectors):
        self.raw = bytearray(raw)
        self.dim = dim
        self.seqs = seqs
        self.vectors = vectors
        self.rows = vectors.astype(np.float32)
        self.rows[seqs == 0] = 0

    def ring(self):
        """The valid slots' vectors, oldest first."""
        order = np.flatnonzero(self.seqs)
        order = order[np.argsort(self.seqs[order], kind="stable")]
        return self.vectors[order].copy()

    def write(self, fd, vector):
        """Writes the float32 ``vector`` as the newest query (sequence: the
        newest valid + 1) into its slot, with one ``pwrite``, and updates
        this copy of the file in place."""
        seq = int(self.seqs.max()) + 1
        index = (seq - 1) % len(self.seqs)
        start = HEADER + index * (16 + 2 * self.dim)  # _slot_dtype's size
        half = vector.astype(np.float16)
        seq_bytes = struct.pack("<Q", seq)
        vec_bytes = half.tobytes()
        data = (seq_bytes
                + struct.pack("<II", _slot_crc(seq_bytes, vec_bytes), 0)
                + vec_bytes)
        os.pwrite(fd, data, start)
        self.raw[start:start + len(data)] = data
        self.seqs[index] = seq
        self.vectors[index] = half
        self.rows[index] = half


def _parse(path, raw):
    """The :class:`_Slots` of the file's bytes ``raw`` (a valid slot has
    its sequence and checksum; the others read as empty); None where the
    header is torn, foreign or of a file of another length."""
    cached = _parsed.get(path)
    if cached is not None and cached.raw == raw:
        return cached
    if len(raw) < HEADER:
        return None
    magic, dim, size = _HEAD.unpack_from(raw)
    (crc,) = struct.unpack_from("<I", raw, _HEAD.size)
    slot = _slot_dtype(dim)
    if (magic != MAGIC or crc != zlib.crc32(raw[:_HEAD.size]) or not dim
            or not size or len(raw) != HEADER + size * slot.itemsize):
        return None
    slots = np.frombuffer(raw, slot, count=size, offset=HEADER)
    view = memoryview(raw)
    seqs = slots["seq"].copy()
    for i in np.flatnonzero(seqs):
        start = HEADER + int(i) * slot.itemsize
        end = start + slot.itemsize
        if (int(slots["crc"][i]) != _slot_crc(view[start:start + 8],
                                              view[start + 16:end])
                or not np.isfinite(slots["vec"][i]).all()):
            seqs[i] = 0  # torn: empty
    _parsed[path] = _Slots(raw, dim, seqs, slots["vec"].copy())
    return _parsed[path]


def _start(fd, path, directory, dim):
    """Writes a whole ring of ``dim``-d slots in place of a missing, torn
    or foreign one: the former format's ring where there is one (then
    removed), else an empty one. Returns its bytes."""
    old_path = os.path.join(directory, OLD_FILE)
    old = recent.read(old_path)
    if not len(old) or old.shape[1] != dim:
        old = np.zeros((0, dim), dtype=np.float16)
    raw = _write_whole(fd, path, old[-recent.SIZE:])
    with contextlib.suppress(OSError):
        os.remove(old_path)
    return raw


def _write_whole(fd, path, ring):
    """Writes the file of ``ring`` in place (header, then the rows in
    slots 0.., sequences 1..); returns its bytes."""
    size, dim = recent.SIZE, ring.shape[1]
    slot = _slot_dtype(dim)
    slots = np.zeros(size, dtype=slot)
    slots["vec"][:len(ring)] = ring
    slots["seq"][:len(ring)] = np.arange(1, len(ring) + 1)
    raw = bytearray(_header(dim, size) + slots.tobytes())
    for i in range(len(ring)):
        start = HEADER + i * slot.itemsize
        struct.pack_into("<I", raw, start + 8, _slot_crc(
            raw[start:start + 8], raw[start + 16:start + slot.itemsize]))
    raw = bytes(raw)
    os.ftruncate(fd, len(raw))
    os.pwrite(fd, raw, 0)
    _parsed.pop(path, None)
    return raw
