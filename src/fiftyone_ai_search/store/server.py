"""Indexes in a Qdrant server or cluster, through ``qdrant-client``.

One collection per index, named ``<prefix><name>``. The :class:`IndexInfo`
lives in the collection's metadata (Qdrant >= 1.16), under the key
:data:`METADATA_KEY`, so it is created and deleted with the collection.

``":memory:"`` as the URL runs qdrant-client's in-process local mode, which
speaks the same API; it is how this code path is tested without a server.

The API key is handed to the client and kept nowhere else: it never appears
in a repr, a log message or an error of this module. The URL may hold
credentials too: it is shown only through
:func:`fiftyone_ai_search.config.redact_url`.

:func:`check_server` tells at once whether a server answers, before anything
is written that would need it.
"""

import contextlib
import hashlib
import re
import threading
import time
import weakref

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from ..config import ENV_PREFIX, redact_url, url_secrets
from ..errors import (IndexExistsError, IndexNotFoundError,
                      QdrantUnreachableError)
from . import cells as cl
from . import ranks as rk
from . import upkeep
from .base import (
    IndexInfo,
    VectorStore,
    check_dim,
    records_to_matrix,
    rows_of_pages,
)

DEFAULT_PREFIX = "fiftyone_ai_search_"

#: where the IndexInfo is kept in the collection metadata
METADATA_KEY = "fiftyone_ai_search"

#: where the collection metadata names its cells (see cells.py), whose
#: centres are the points of the collection ``<collection>__cells_<generation>``
CELLS_KEY = "fiftyone_ai_search_cells"

#: seconds a process trusts what it read of an index's cells: a search does
#: not ask the server each time (cells, once complete, only ever stay so)
CELLS_TTL = 5.0

#: cell updates per request
CELL_OPS = 256

MEMORY = ":memory:"

#: points per upsert request (~2.5 MB of JSON at 512-d)
UPSERT_CHUNK = 256

#: ids per retrieve / delete request, and records per scroll page
ID_CHUNK = 2048

#: seconds a request to a server may take
REQUEST_TIMEOUT = 60

#: seconds :func:`check_server` waits for the server's answer
CHECK_TIMEOUT = 5

_NO_URL = (
    "The Qdrant server backend needs a URL: set "
    f"{ENV_PREFIX}QDRANT_URL (or ':memory:' for an in-process store)"
)

_clients = {}
_clients_lock = threading.Lock()

#: local-mode clients are not thread-safe: their calls are serialised
_local_locks = weakref.WeakKeyDictionary()


def get_client(url=None, api_key=None, location=None):
    """Returns this process's client for a server (one per URL and key).

    Args:
        url (None): the server URL, or ``":memory:"``
        api_key (None): the API key
        location (None): a qdrant-client location, e.g. ``":memory:"``

    Returns:
        a :class:`qdrant_client.QdrantClient`
    """
    if url == MEMORY:
        url, location = None, MEMORY
    if not (url or location):
        raise ValueError(_NO_URL)

    # the key itself is not kept as a cache key, only its digest
    digest = hashlib.sha256(api_key.encode()).hexdigest() if api_key else None
    key = (url, location, digest)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            if location is not None:
                client = QdrantClient(location=location)
            else:
                client = QdrantClient(
                    url=url, api_key=api_key, timeout=REQUEST_TIMEOUT
                )
            _clients[key] = client
        return client


def _is_local(client):
    """Whether ``client`` runs qdrant-client's in-process local mode."""
    options = client.init_options
    return options.get("location") == MEMORY or options.get("path") is not None


def _local_lock(client):
    """The lock serialising calls to a local-mode client, or None."""
    if not _is_local(client):
        return None
    with _clients_lock:
        return _local_locks.setdefault(client, threading.RLock())


def check_server(url, api_key=None, timeout=CHECK_TIMEOUT):
    """Checks that a Qdrant server answers and accepts the API key.

    Cheap: one ``get_collections`` request with a short timeout, on a client
    of its own. ``":memory:"`` is always reachable.

    Args:
        url: the server URL, or ``":memory:"``
        api_key (None): the API key
        timeout (CHECK_TIMEOUT): seconds to wait for the answer

    Raises:
        QdrantUnreachableError: if the server cannot be reached, answers
            with an error, or refuses the API key
    """
    if url == MEMORY:
        return
    if not url:
        raise ValueError(_NO_URL)

    where = redact_url(url)
    client = None
    try:
        client = QdrantClient(
            url=url, api_key=api_key, timeout=timeout,
            check_compatibility=False,
        )
        client.get_collections()
    except UnexpectedResponse as e:
        raise QdrantUnreachableError(
            _refusal(e, where, url, api_key)
        ) from None
    except Exception as e:
        reason = _scrub(_reason_of(e, timeout), url, api_key)
        raise QdrantUnreachableError(
            f"Cannot reach the Qdrant server at {where} ({reason}). Start "
            f"the server, or check {ENV_PREFIX}QDRANT_URL and "
            f"{ENV_PREFIX}QDRANT_API_KEY; or use the embedded backend, which "
            "needs no server: backend='edge'"
        ) from None
    finally:
        if client is not None:
            client.close()


def _refusal(error, where, url, api_key):
    """The message of a server's error answer to :func:`check_server`."""
    status = f"HTTP {error.status_code} {error.reason_phrase}".strip()
    if error.status_code in (401, 403):
        if api_key:
            message = (
                f"The Qdrant server at {where} refused the API key "
                f"({status}): check {ENV_PREFIX}QDRANT_API_KEY"
            )
        else:
            message = (
                f"The Qdrant server at {where} needs an API key ({status}): "
                f"set {ENV_PREFIX}QDRANT_API_KEY"
            )
        if "@" in url:
            # qdrant-client sends no user info: only the API key counts
            message += (
                " (credentials in the URL are not sent: Qdrant takes an "
                "API key)"
            )
        return message

    return (
        f"The server at {where} answered a Qdrant request with {status}: "
        f"check {ENV_PREFIX}QDRANT_URL (host, port and path of a Qdrant "
        "server); or use the embedded backend, which needs no server: "
        "backend='edge'"
    )


def _reason_of(error, timeout):
    """A short reason for a failed request, e.g. ``"Connection refused"``."""
    text = str(error).strip()
    name = type(error).__name__.lower()
    if "timed out" in text.lower() or "timeout" in name:
        return f"no answer within {timeout} s"
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    return text or type(error).__name__


def _scrub(text, url, api_key):
    """``text`` with the URL's and the API key's secrets redacted."""
    text = text.replace(url, redact_url(url))
    for secret in [*url_secrets(url), api_key]:
        if secret:
            text = text.replace(secret, "***")
    return text


class ServerStore(VectorStore):
    """An index in a collection of a Qdrant server or cluster.

    Thread- and process-safe (the server serialises writes).

    Args:
        name: the index name (letters, digits, ``_``, ``-``)
        url (None): the server URL, or ``":memory:"``
        api_key (None): the API key
        location (None): a qdrant-client location instead of ``url``, e.g.
            ``":memory:"``
        prefix ("fiftyone_ai_search_"): prepended to ``name`` to make the
            collection name
        client (None): a :class:`qdrant_client.QdrantClient` to use instead
            of this process's shared one for ``url`` / ``location``
        shards (1): the ``shard_number`` of a collection it creates
        replicas (1): the ``replication_factor`` of a collection it creates
        on_disk (True): whether a collection it creates keeps its original
            vectors on disk (an int8 copy is always in RAM)
    """

    backend = "server"

    def __init__(
        self,
        name,
        url=None,
        api_key=None,
        location=None,
        prefix=DEFAULT_PREFIX,
        client=None,
        shards=1,
        replicas=1,
        on_disk=True,
    ):
        super().__init__(name)
        self.shards, self.replicas = int(shards), int(replicas)
        self.on_disk = bool(on_disk)
        if client is None:
            client = get_client(url=url, api_key=api_key, location=location)
        self._client = client
        self._local_lock = _local_lock(client)
        self.collection_name = prefix + name
        self._where = redact_url(url or location) or "<client>"

    def __repr__(self):
        return (
            f"ServerStore(name={self.name!r}, "
            f"collection={self.collection_name!r}, url={self._where!r})"
        )

    # -- plumbing ------------------------------------------------------------

    def _guard(self):
        lock = self._local_lock
        return lock if lock is not None else contextlib.nullcontext()

    def _exists(self):
        with self._guard():
            return self._client.collection_exists(self.collection_name)

    def _call(self, method, *args, **kwargs):
        """Calls a client method on our collection; a missing collection
        becomes :class:`IndexNotFoundError`."""
        try:
            with self._guard():
                return getattr(self._client, method)(
                    self.collection_name, *args, **kwargs
                )
        except Exception:
            if not self._exists():
                raise self._not_found() from None
            raise

    def _not_found(self):
        return IndexNotFoundError(
            f"The AI search index '{self.name}' does not exist (collection "
            f"'{self.collection_name}' on {self._where})"
        )

    # -- lifecycle -----------------------------------------------------------

    def exists(self):
        return self._exists()

    def info(self):
        if not self._exists():
            return None
        try:
            desc = self._call("get_collection")
        except IndexNotFoundError:
            return None  # dropped meanwhile

        meta = (desc.config.metadata or {}).get(METADATA_KEY)
        if meta:
            return IndexInfo.from_dict(meta)

        # a collection we did not make (or an old server that dropped the
        # metadata): compatible with nothing, so ensure() never writes to it
        vectors = desc.config.params.vectors
        size = vectors.size if isinstance(vectors, models.VectorParams) else 0
        return IndexInfo(
            model="<unknown>",
            pretrained=None,
            model_identity="",
            dim=size,
            schema_version=0,
        )

    def create(self, info):
        if self._exists():
            raise IndexExistsError(
                f"The AI search index '{self.name}' already exists"
            )
        try:
            with self._guard():
                self._client.create_collection(
                    self.collection_name,
                    metadata={METADATA_KEY: info.to_dict()},
                    **self._collection_config(info.dim),
                )
        except Exception:
            if self._exists():  # created concurrently by another process
                raise IndexExistsError(
                    f"The AI search index '{self.name}' already exists"
                ) from None
            raise

        stored = self.info()
        if stored is None or stored.model_identity != info.model_identity:
            self.drop()
            raise RuntimeError(
                f"The Qdrant server at {self._where} did not keep the "
                "collection metadata: AI search needs Qdrant >= 1.16"
            )

    def _collection_config(self, dim):
        """How a collection is made, explicitly (never the server's
        defaults): as the embedded index (see ``edge._shard_config``), no
        HNSW graph (``m=0``: exact search, or exact within the probed cells,
        see cells.py), an int8 copy of the vectors in RAM with the
        originals on disk (``on_disk``) for rescoring, payloads on disk but
        their indexes in RAM, and the shards and replicas asked for."""
        local = self._local_lock is not None
        return dict(
            vectors_config=models.VectorParams(
                size=int(dim), distance=models.Distance.COSINE,
                on_disk=None if local else self.on_disk),
            # local mode has none of these, and warns about them
            **({} if local else dict(
                hnsw_config=models.HnswConfigDiff(m=0, ef_construct=100),
                quantization_config=models.ScalarQuantization(
                    scalar=models.ScalarQuantizationConfig(
                        type=models.ScalarType.INT8, quantile=cl.QUANTILE,
                        always_ram=True)),
                on_disk_payload=True,
                shard_number=self.shards,
                replication_factor=self.replicas,
            )),
        )

    def drop(self):
        with self._guard():
            names = [c.name for c in self._client.get_collections().collections
                     if c.name.startswith(self._cells_prefix)]
            self._client.delete_collection(self.collection_name)
            for name in names:
                self._client.delete_collection(name)
        _cells_cache.pop(self._cells_key, None)

    # -- reads ---------------------------------------------------------------

    def count(self):
        return self._call("count", exact=True).count

    def estimate_count(self):
        return self._call("count", exact=False).count

    # -- engine --------------------------------------------------------------

    def _upsert_points(self, point_ids, vectors, payloads):
        check_dim(vectors, self._require_info().dim)
        for start in range(0, len(point_ids), UPSERT_CHUNK):
            chunk = slice(start, start + UPSERT_CHUNK)
            self._call(
                "upsert",
                points=models.Batch(
                    ids=point_ids[chunk],
                    vectors=vectors[chunk].tolist(),
                    payloads=payloads[chunk],
                ),
                wait=True,
            )

    def _delete_points(self, point_ids):
        for start in range(0, len(point_ids), ID_CHUNK):
            self._call(
                "delete",
                points_selector=models.PointIdsList(
                    points=point_ids[start : start + ID_CHUNK]
                ),
                wait=True,
            )

    def _retrieve_points(self, point_ids, with_payload, with_vector):
        records = []
        for start in range(0, len(point_ids), ID_CHUNK):
            records.extend(
                self._call(
                    "retrieve",
                    point_ids[start : start + ID_CHUNK],
                    with_payload=with_payload,
                    with_vectors=with_vector,
                )
            )
        return records

    def _scroll_points(self, with_vector):
        return [r for page in self._scroll_pages(ID_CHUNK, None, with_vector)
                for r in page]

    def _scroll_pages(self, limit, offset=None, with_vector=False,
                      query_filter=None, with_payload=False):
        while True:
            batch, offset = self._call(
                "scroll",
                limit=limit,
                offset=offset,
                scroll_filter=query_filter,
                with_payload=with_payload,
                with_vectors=with_vector,
            )
            yield batch
            if offset is None:
                return

    def _query_points(self, vector, limit, point_ids, min_score, cells=None):
        query_filter = None
        if point_ids is not None:
            query_filter = models.Filter(
                must=[models.HasIdCondition(has_id=list(point_ids))]
            )
        elif cells is not None:
            query_filter = _cells_filter(cells)

        # as the embedded backend: exact, or the probed cells on the int8
        # copy, rescored; local mode is always exact and warns about these
        search_params = None
        if self._local_lock is None:
            search_params = (
                models.SearchParams(exact=True) if cells is None
                else models.SearchParams(
                    exact=False, quantization=models.QuantizationSearchParams(
                        rescore=True, oversampling=cl.OVERSAMPLING)))
        return self._call(
            "query_points",
            query=vector.tolist(),
            limit=limit,
            query_filter=query_filter,
            score_threshold=min_score,
            search_params=search_params,
            with_payload=False,
            with_vectors=False,
        ).points

    # -- cells ---------------------------------------------------------------

    def maintain(self, min_points=cl.MIN_POINTS, seed=0, progress=None,
                 exact=None):
        # the upkeep both backends share (upkeep.py), on this one's hooks
        return upkeep.maintain(self, min_points, seed, progress, exact)

    @property
    def _cells_key(self):
        # a store is made per search: what was read is kept per process
        return (id(self._client), self.collection_name)

    @property
    def _cells_prefix(self):
        return f"{self.collection_name}__cells_"

    @property
    def _cells_read_age_s(self):
        # another process's cache, and one upsert in flight; a local
        # (:memory:, path) client has no other process
        return 0.0 if self._local_lock is not None else 2 * CELLS_TTL

    def _read_cells(self):
        cached = _cells_cache.get(self._cells_key)
        if cached is not None and time.monotonic() - cached[0] < CELLS_TTL:
            return cached[1]
        cells = None
        try:
            meta = (self._call("get_collection").config.metadata or {}).get(
                CELLS_KEY)
        except IndexNotFoundError:
            meta = None
        if meta:
            # centres never change for a generation: those read before are
            # kept
            known = {} if cached is None or cached[1] is None else {
                g.generation: g.centres for g in cached[1].generations()}
            cells = cl.Cells.from_dict(
                meta, lambda m: (known[m["generation"]]
                                 if m["generation"] in known
                                 else self._read_centres(m)))
        _cells_cache[self._cells_key] = (time.monotonic(), cells)
        return cells

    def _read_centres(self, meta):
        name = f"{self._cells_prefix}{meta['generation']}"
        try:
            with self._guard():
                records, _ = self._client.scroll(
                    name, limit=int(meta["count"]) + 1, with_vectors=True,
                    with_payload=False)
        except Exception:
            return None  # dropped meanwhile
        if len(records) != meta["count"]:
            return None
        records = sorted(records, key=lambda r: int(r.id))
        return records_to_matrix(records)

    def _write_cells(self, cells):
        kept = set()
        for generation in cells.generations():
            name = f"{self._cells_prefix}{generation.generation}"
            kept.add(name)
            with self._guard():
                if not self._client.collection_exists(name):
                    self._client.create_collection(
                        name, vectors_config=models.VectorParams(
                            size=generation.centres.shape[1],
                            distance=models.Distance.COSINE))
                    self._client.upsert(name, points=models.Batch(
                        ids=list(range(len(generation))),
                        vectors=generation.centres.tolist()), wait=True)
        if self._local_lock is None:  # local mode has no payload indexes
            # principal: the server keeps each cell's points together
            self._call("create_payload_index", field_name=cl.CELL_KEY,
                       field_schema=models.IntegerIndexParams(
                           type=models.IntegerIndexType.INTEGER, lookup=True,
                           range=False, is_principal=True), wait=True)
        self._call("update_collection", metadata={CELLS_KEY: cells.to_dict()})
        _cells_cache.pop(self._cells_key, None)
        with self._guard():
            stale = [c.name for c in self._client.get_collections().collections
                     if c.name.startswith(self._cells_prefix)
                     and c.name not in kept]
            for old in stale:
                self._client.delete_collection(old)

    def _points_lacking(self, key, limit, with_vector, values, after=None):
        records, _ = self._call("scroll", scroll_filter=_lacking(key, values),
                                offset=after, limit=limit, with_payload=False,
                                with_vectors=with_vector)
        return records

    def _points_in(self, key, values, with_vector=True):
        where = models.Filter(must=[models.FieldCondition(
            key=key, match=models.MatchAny(any=values))])
        return [r for page in self._scroll_pages(ID_CHUNK, None, with_vector,
                                                 where)
                for r in page]

    def _vectors_in(self, key, values):
        where = models.Filter(must=[models.FieldCondition(
            key=key, match=models.MatchAny(any=values))])
        return rows_of_pages(self._scroll_pages(ID_CHUNK, None, True, where))

    def _ensure_keyword_index(self, key):
        self._ensure_index(key, models.KeywordIndexParams(
            type=models.KeywordIndexType.KEYWORD))

    def _ensure_rank_index(self):
        self._ensure_index(rk.RANK_KEY, models.IntegerIndexParams(
            type=models.IntegerIndexType.INTEGER, lookup=True, range=False))

    def _ensure_index(self, key, params):
        """Gives the payload ``key`` a payload index of ``params`` unless
        it has one."""
        if self._local_lock is not None:  # local mode has no payload indexes
            return
        schema = self._call("get_collection").payload_schema or {}
        if key not in schema:
            self._call("create_payload_index", field_name=key,
                       field_schema=params, wait=True)

    def _set_field(self, key, groups, lacking):
        ops = [
            models.SetPayloadOperation(set_payload=models.SetPayload(
                payload={key: int(value)},
                filter=models.Filter(
                    must=[models.HasIdCondition(has_id=point_ids)],
                    should=(None if lacking is None
                            else _lacking(key, lacking).should))))
            for value, point_ids in groups.items()
        ]
        for start in range(0, len(ops), CELL_OPS):
            self._call("batch_update_points",
                       update_operations=ops[start : start + CELL_OPS],
                       wait=True)

    def _compact(self):
        pass  # the server's optimizer orders the points by cell itself


#: ``{(client id, collection): (read at, Cells or None)}``
_cells_cache = {}

def _cells_filter(cells):
    """Points in one of the probed ``cells``: one exact match a cell, any
    of which suffices, as the embedded index asks its engine (where one
    ``MatchAny`` of the cells cost ~twice the CPU a point scanned:
    bench/README.md). Not measured on a Qdrant server (none can be had on
    the bench's machine; the ``:memory:`` mode scans in Python): the same
    shape, so that both backends ask the same query."""
    return models.Filter(should=[
        models.FieldCondition(key=cl.CELL_KEY,
                              match=models.MatchValue(value=int(cell)))
        for cell in cells])


def _lacking(key, values):
    """Points without ``key`` yet, or with one of ``values``."""
    should = [models.IsEmptyCondition(is_empty=models.PayloadField(key=key))]
    if values:
        should.append(models.FieldCondition(
            key=key, match=models.MatchAny(any=list(values))))
    return models.Filter(should=should)
