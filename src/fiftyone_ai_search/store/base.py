"""The vector-store interface that every backend implements.

A store holds one index per dataset: one vector per sample, keyed by the
sample id, with a small payload (``filepath``, ``fingerprint``). It also
records which model produced the vectors (:class:`IndexInfo`), so an index can
never hold vectors of two models.
"""

import abc
import contextlib
import dataclasses
import re
import uuid

import numpy as np

#: Version of the on-disk / in-collection layout of an index. Bump it, and
#: teach the backends to migrate (or rebuild) older indexes, whenever the
#: layout of points, payloads or the recorded :class:`IndexInfo` changes.
SCHEMA_VERSION = 1


class IndexMismatchError(ValueError):
    """The index was built with another model (or schema) than requested."""


class IndexBusyError(RuntimeError):
    """The index stayed locked by another process for longer than allowed."""


class IndexNotFoundError(LookupError):
    """The index does not exist."""


class IndexExistsError(ValueError):
    """The index already exists (raised by :meth:`VectorStore.create`)."""


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def validate_index_name(name):
    """Checks that ``name`` is usable as a directory and a collection name.

    Raises:
        ValueError: if it is not 1-128 letters, digits, ``_`` or ``-``,
            starting with a letter or digit
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"Invalid index name {name!r}: use 1-128 letters, digits, '_' "
            "or '-', starting with a letter or digit"
        )
    return name


@dataclasses.dataclass(frozen=True)
class IndexInfo:
    """What an index holds: which model made its vectors, and their size.

    Args:
        model: the model name as the user gave it (an open_clip name or
            ``"local-dir:/path"``)
        pretrained: the pretrained tag or weights path as given, or None
        model_identity: a stable identity of the weights; two indexes are
            compatible iff their identities and dimensions match
        dim: the embedding size
        schema_version: the layout version, :data:`SCHEMA_VERSION`
    """

    model: str
    pretrained: str | None
    model_identity: str
    dim: int
    schema_version: int = SCHEMA_VERSION

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})

    def is_compatible(self, other):
        return (
            self.model_identity == other.model_identity
            and self.dim == other.dim
            and self.schema_version == other.schema_version
        )


_SAMPLE_ID_RE = re.compile(r"[0-9a-fA-F]{24}")


def sample_id_to_point_id(sample_id):
    """Maps a FiftyOne sample id (24 hex digits) to a Qdrant point id (UUID).

    The mapping is reversible, so the sample id never needs a payload lookup.
    The result is the canonical (lowercase, hyphenated) UUID string.
    """
    # string slicing, not uuid.UUID: scopes of 100k ids are mapped per query
    if not isinstance(sample_id, str) or not _SAMPLE_ID_RE.fullmatch(sample_id):
        raise ValueError(f"Not a sample id: {sample_id!r}")
    h = sample_id.lower()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}00000000"


def point_id_to_sample_id(point_id):
    """Inverse of :func:`sample_id_to_point_id`."""
    if isinstance(point_id, uuid.UUID):
        return point_id.hex[:24]
    return uuid.UUID(str(point_id)).hex[:24]


class VectorStore(abc.ABC):
    """One index of sample embeddings.

    Implementations: :class:`fiftyone_ai_search.store.edge.EdgeStore`
    (embedded Qdrant Edge shard) and
    :class:`fiftyone_ai_search.store.server.ServerStore` (Qdrant server or
    cluster through ``qdrant-client``).

    Vectors go in and come out L2-normalised ``float32``; scores are cosine
    similarities. Reads and writes of an index that does not exist raise
    :class:`IndexNotFoundError`.
    """

    #: short backend name, e.g. ``"edge"`` or ``"server"``
    backend = None

    def __init__(self, name):
        self.name = validate_index_name(name)

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"

    # -- lifecycle ---------------------------------------------------------

    @abc.abstractmethod
    def exists(self):
        """Whether the index exists."""

    @abc.abstractmethod
    def info(self):
        """The :class:`IndexInfo` of the index, or None if it does not exist."""

    @abc.abstractmethod
    def create(self, info):
        """Creates an empty index for vectors described by ``info``.

        Raises:
            IndexExistsError: if the index already exists
        """

    @abc.abstractmethod
    def drop(self):
        """Deletes the index and everything in it. No-op if missing."""

    def ensure(self, info, rebuild=False):
        """Opens the index for ``info``, creating it if needed.

        Args:
            info: the :class:`IndexInfo` the caller will write
            rebuild (False): whether an index of another model may be dropped
                and recreated; otherwise that is an error

        Returns:
            True if the index was (re)created empty, False if it existed

        Raises:
            IndexMismatchError: if the index holds another model's vectors and
                ``rebuild`` is False
        """
        # one session: an embedded index stays locked from the check to the
        # creation, so two processes cannot both (re)create it
        with self.session():
            current = self.info()
            if current is not None and current.is_compatible(info):
                return False

            if current is not None:
                if not rebuild:
                    raise IndexMismatchError(
                        f"Index '{self.name}' holds embeddings of model "
                        f"{current.model!r} (pretrained={current.pretrained!r}"
                        f", dim={current.dim}), not of {info.model!r} "
                        f"(pretrained={info.pretrained!r}, dim={info.dim}). "
                        "Rebuild it (calculate_embeddings(..., force=True)) "
                        "or use the model it was built with."
                    )
                self.drop()

            try:
                self.create(info)
            except IndexExistsError:
                # a server index created concurrently by another process:
                # fine if it is the same model
                current = self.info()
                if current is None or not current.is_compatible(info):
                    raise
                return False

            return True

    def close(self):
        """Releases any resources held. The store can be reused afterwards."""

    @contextlib.contextmanager
    def session(self):
        """Groups several operations so that they share one opening.

        An embedded index is locked (other processes wait) for the whole
        block, so keep it short: a few reads or one commit, never a model
        computation. For a server it is a no-op. Sessions nest.

        Returns:
            a context manager yielding this store
        """
        yield self

    # -- writes ------------------------------------------------------------

    @abc.abstractmethod
    def upsert(self, sample_ids, vectors, payloads):
        """Inserts or replaces the vectors of the given samples.

        Args:
            sample_ids: a list of sample ids
            vectors: an ``(n, dim)`` array
            payloads: a list of ``n`` dicts (JSON-serialisable); the sample id
                is added to each by the store
        """

    @abc.abstractmethod
    def delete(self, sample_ids):
        """Deletes the given samples' vectors. Missing ids are ignored."""

    # -- reads -------------------------------------------------------------

    @abc.abstractmethod
    def count(self):
        """The number of vectors in the index."""

    @abc.abstractmethod
    def get_payloads(self, sample_ids):
        """Returns ``{sample_id: payload}`` for those ids that are present.

        Each payload is the dict given to :meth:`upsert`, plus ``sample_id``.
        """

    @abc.abstractmethod
    def get_sample_ids(self):
        """Returns the ids of all samples in the index (any order)."""

    @abc.abstractmethod
    def get_vectors(self, sample_ids=None):
        """Returns ``(sample_ids, vectors)`` of the given (default all) samples.

        Missing ids are left out; ``vectors`` is an ``(n, dim)`` float32 array
        of unit rows in the order of the returned ids, which follow the order
        of ``sample_ids`` when given.
        """

    @abc.abstractmethod
    def query(self, vector, limit, sample_ids=None, min_score=None):
        """Exact nearest neighbours of ``vector`` by cosine similarity.

        Args:
            vector: a ``(dim,)`` array
            limit: the most results to return
            sample_ids (None): restrict the search to these samples
            min_score (None): only return scores ``>= min_score``

        Returns:
            a list of ``(sample_id, score)``, best first
        """


def as_float32_matrix(vectors, dim=None):
    """Validates and converts ``vectors`` to a C-contiguous float32 matrix."""
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"Expected a 2-D array of vectors, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(
            f"Expected vectors of size {dim}, got size {arr.shape[1]}"
        )
    return arr


def normalize_rows(vectors, dim=None):
    """Validates ``vectors`` and L2-normalises each row.

    Args:
        vectors: an ``(n, dim)`` array-like
        dim (None): the required vector size

    Returns:
        a C-contiguous float32 ``(n, dim)`` array of unit rows

    Raises:
        ValueError: for a wrong shape, a non-finite value or a zero vector,
            none of which has a cosine similarity
    """
    arr = as_float32_matrix(vectors, dim=dim)
    if not np.isfinite(arr).all():
        raise ValueError("Vectors must be finite")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("Vectors must not be zero")
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


def normalize_vector(vector, dim=None):
    """Like :func:`normalize_rows` for one ``(dim,)`` query vector."""
    arr = np.asarray(vector, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"Expected a 1-D query vector, got shape {arr.shape}")
    return normalize_rows(arr[None, :], dim=dim)[0]


def check_limit(limit):
    """Validates a query ``limit`` (a positive integer) and returns it."""
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)):
        raise ValueError(f"limit must be an integer, got {limit!r}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return int(limit)
