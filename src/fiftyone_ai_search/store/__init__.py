"""Vector stores: one interface (:class:`VectorStore`), two backends.

- :class:`EdgeStore`: embedded Qdrant Edge shards on local disk (default);
- :class:`ServerStore`: a Qdrant server or cluster through ``qdrant-client``.

Use :func:`open_store` to get the one the settings ask for.
"""

from ..errors import (IndexBusyError, IndexExistsError, IndexMismatchError,
                      IndexNotFoundError, QdrantUnreachableError)
from .base import (
    SCHEMA_VERSION,
    IndexInfo,
    VectorStore,
    point_id_to_sample_id,
    sample_id_to_point_id,
)

__all__ = [
    "SCHEMA_VERSION",
    "EdgeStore",
    "IndexBusyError",
    "IndexExistsError",
    "IndexInfo",
    "IndexMismatchError",
    "IndexNotFoundError",
    "QdrantUnreachableError",
    "ServerStore",
    "VectorStore",
    "open_store",
    "point_id_to_sample_id",
    "sample_id_to_point_id",
]


def open_store(name, settings):
    """Returns the vector store of index ``name`` for the given settings.

    Nothing is created: use :meth:`VectorStore.ensure` for that. In server
    mode, stores of one process share one client per (URL, API key), so that
    they share a connection pool (and, for ``":memory:"``, the data).

    Args:
        name: the index name
        settings: a :class:`fiftyone_ai_search.config.Settings`

    Returns:
        a :class:`VectorStore`
    """
    if settings.backend == "edge":
        from .edge import EdgeStore  # start-up: qdrant-edge

        if not settings.storage_dir:
            raise ValueError("The embedded backend needs a storage_dir")
        return EdgeStore(
            name, settings.storage_dir, lock_timeout=settings.lock_timeout
        )

    if settings.backend == "server":
        from .server import ServerStore  # start-up: qdrant-client

        return ServerStore(
            name, url=settings.qdrant_url, api_key=settings.qdrant_api_key,
            shards=settings.qdrant_shards, replicas=settings.qdrant_replicas,
            on_disk=settings.qdrant_on_disk,
        )

    raise ValueError(f"Unknown vector store backend {settings.backend!r}")


def __getattr__(name):
    # qdrant-client takes ~1 s to import: load backends only when used
    if name == "EdgeStore":
        from .edge import EdgeStore  # start-up: qdrant-edge

        return EdgeStore
    if name == "ServerStore":
        from .server import ServerStore  # start-up: qdrant-client

        return ServerStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
