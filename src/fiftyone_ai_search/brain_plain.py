"""The vectors of a plain Brain run: a run of the ``ai_search`` backend
whose vectors are of no open_clip model it can run (an embeddings field or
array of another or unknown model, vectors given to ``add_to_index``).

Such a run cannot be the dataset's AI search index (that index keeps
itself in sync by embedding new images with its own model), so it gets an
index of its own in the same Qdrant engine, as every other Brain backend
keeps one: named after the dataset and the brain key, holding exactly what
the run is given, and dropped with the run. It never touches AI search's
state nor its indexes.

Its :class:`~fiftyone_ai_search.store.IndexInfo` records ``"vectors of
<dim>, no model"``: the store refuses vectors of another size, so one index
never mixes two kinds of vectors.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

import uuid

import numpy as np

from .config import get_settings
from .index import indexes
from .store import IndexInfo

#: the payload keys of a point: the sample holding an object (object runs),
#: and the length of the vector as given (the store keeps unit vectors)
SOURCE_KEY = "source_id"
LENGTH_KEY = "length"

#: the model a plain run's index records
NO_MODEL = "no model"


def new_ref(dataset, brain_key, backend=None):
    """The reference of a new plain run index of ``dataset`` for
    ``brain_key``: ``{"name", "backend"}``, under a name nobody else uses
    (the dataset's id, the brain key, a random tag: a rename keeps it, and
    a run deleted and made again never finds the old vectors)."""
    key = "".join(c if c.isalnum() or c in "_-" else "_"
                  for c in (brain_key or "unnamed"))[:40]
    name = f"run_{dataset._doc.id}_{key}_{uuid.uuid4().hex[:12]}"
    return {"name": name, "backend": backend or get_settings().backend}


def info_of(dim):
    """The :class:`IndexInfo` of a plain run index of ``dim``-d vectors."""
    return IndexInfo(model=NO_MODEL, pretrained=None,
                     model_identity=f"vectors of {dim}, no model", dim=dim)


def check_vectors(embeddings, count):
    """The embeddings a run is given, as a float32 ``(count, dim)`` array,
    and their lengths (float64).

    Raises:
        ValueError: (naming ``embeddings``) for a wrong shape, values that
            are not numbers, or rows that are not finite or zero (they
            have no direction to compare)
    """
    try:
        raw = np.asarray(embeddings, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("embeddings: expected an array of numbers") from None
    if raw.ndim != 2 or len(raw) != count or raw.shape[1] == 0:
        raise ValueError(
            f"embeddings: expected one vector per id ({count}), got an "
            f"array of shape {raw.shape}")
    with np.errstate(over="ignore"):
        vectors = raw.astype(np.float32)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise ValueError(
            f"embeddings: {int(bad.sum())} of {count} vectors are not finite "
            f"(in float32), e.g. row {int(np.argmax(bad))}")
    lengths = np.linalg.norm(vectors.astype(np.float64), axis=1)
    zero = lengths == 0
    if zero.any():
        raise ValueError(
            f"embeddings: {int(zero.sum())} of {count} vectors are zero "
            f"(they have no cosine similarity), e.g. row "
            f"{int(np.argmax(zero))}")
    return vectors, lengths


class RunVectors:
    """The index of one plain run.

    Args:
        ref: its reference (:func:`new_ref`)
    """

    def __init__(self, ref):
        self.ref = ref
        self._store = None

    @property
    def store(self):
        if self._store is None:
            self._store = indexes.open_ref(self.ref)
        return self._store

    def dim(self):
        """The size of its vectors, or None while it holds none."""
        info = self.store.info()
        return None if info is None else info.dim

    def write(self, keys, vectors, lengths, sources=None):
        """Stores ``vectors`` (``float32 (n, dim)``, checked by
        :func:`check_vectors`) under ``keys`` (sample ids, or label ids with
        their ``sources``), replacing those that are there."""
        dim = self.dim()
        if dim is not None and vectors.shape[1] != dim:
            raise ValueError(
                f"embeddings: this run's index holds vectors of size {dim}, "
                f"got size {vectors.shape[1]} (one index never mixes two "
                "kinds of vectors)")
        payloads = [{LENGTH_KEY: float(n)} for n in lengths]
        if sources is not None:
            for payload, source in zip(payloads, sources):
                payload[SOURCE_KEY] = source
        with self.store.session() as store:
            store.ensure(info_of(vectors.shape[1]))
            store.upsert(list(keys), vectors, payloads)

    def held(self, objects):
        """``(keys, sources)`` of what it holds: sample ids (twice), or
        label ids and the ids of their samples."""
        if not self.store.exists():
            return [], []
        with self.store.session() as store:
            keys = store.get_sample_ids()
            if not objects:
                return keys, list(keys)
            payloads = store.get_payloads(keys)
        keys = [k for k in keys if k in payloads]
        return keys, [payloads[k].get(SOURCE_KEY) for k in keys]

    def vectors(self, keys):
        """The vectors of ``keys`` (all held), in order, at the lengths
        they were given."""
        keys = list(keys)
        if not keys or not self.store.exists():
            return np.zeros((0, self.dim() or 0), dtype=np.float32)
        with self.store.session() as store:
            ids, unit = store.get_vectors(keys)
            payloads = store.get_payloads(keys)
        row = {k: i for i, k in enumerate(ids)}
        out = np.asarray(unit, dtype=np.float32)[[row[k] for k in keys]]
        scale = np.array([payloads[k].get(LENGTH_KEY, 1.0) for k in keys],
                         dtype=np.float32)
        return out * scale[:, np.newaxis]

    def delete(self, keys):
        if keys and self.store.exists():
            with self.store.session() as store:
                store.delete(list(keys))

    def drop(self):
        """Deletes the index and everything in it."""
        store = self.store
        store.close()
        store.drop()
        store.close()
        self._store = None
