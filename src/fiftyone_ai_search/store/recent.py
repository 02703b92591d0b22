"""The recent queries of an index: what its self-audit asks first.

The audit of the approximate search (:mod:`~fiftyone_ai_search.store.audit`)
measures recall on queries like the user's. Generic prompts stand in for
them; the queries the user actually made stand in better. So an index keeps
the vectors of its last :data:`SIZE` searches of the whole index (a small
ring; a search repeated, e.g. by the over-fetching of a scoped search, is
kept once).

An embedded index keeps them in its directory, in a file of fixed slots
that a search writes one slot of, in place
(:mod:`~fiftyone_ai_search.store.recent_ring`); a server's index keeps them
in the searching process. A sample of recent queries, not a log.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

import numpy as np

#: the most recent queries kept
SIZE = 64

#: a query this similar to one kept is that one again
SAME = 0.9999


def with_query(ring, vector, size=SIZE):
    """``ring`` (an ``(n, dim)`` array, oldest first) with the unit
    ``vector`` last, at most ``size`` rows; None if it holds the query
    already (nothing to write)."""
    vector = np.asarray(vector, dtype=np.float32)
    if len(ring) and ring.shape[1] == len(vector):
        if float(np.max(ring.astype(np.float32) @ vector)) >= SAME:
            return None
        ring = ring[-(size - 1):] if size > 1 else ring[:0]
    else:
        ring = np.zeros((0, len(vector)), dtype=np.float16)
    return np.vstack([ring, vector[None].astype(np.float16)])


def read(path):
    """The ring in ``path``, an ``.npy`` file (the embedded index's former
    format, read once to carry it over): an ``(n, dim)`` float16 array,
    empty if there is none or it is unreadable."""
    try:
        ring = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return np.zeros((0, 0), dtype=np.float16)
    if (ring.ndim != 2 or ring.dtype != np.float16
            or not np.isfinite(ring).all()):
        return np.zeros((0, 0), dtype=np.float16)
    return ring
