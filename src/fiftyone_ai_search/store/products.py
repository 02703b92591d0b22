"""The scores of one query vector against a matrix of vectors, computed on
the calling thread.

numpy's ``matrix @ vector`` goes to OpenBLAS, which splits a product of
1,000 rows or more (at 512-d) over its thread pool, and the pool's threads
then spin for ~0.1 s waiting for more work. Every search at 500k points or
more makes such a product (its query against the cells' centres: 2,000 x
512 at 1M), and the spin took the other core of a 2-core machine for
~65 ms after every search: 6.4 s of CPU for 100 searches of a process
that searched every 0.2 s and did nothing else. On 2 cores that is the
core a holder needs to answer another process's search, or a writer to
write; with the spin gone, a search beside a writer's large import went
from 4.2x its solo p95 to 1.2-2.2x (``bench/README.md``, issue 29). ``einsum`` computes the
same scores in numpy's own loops on this thread: ~0.2 ms for 2,000 x 512,
against ~0.04 ms and a spinning core for the pool's; they agree to ~2e-5.

Products of many vectors at once (a write's or the upkeep's assignment of
cells, the audit's exact searches) stay with BLAS: there the pool's
threads do real work, on one of them while another process searches
through this one (:func:`blas_threads`).
"""

import contextlib

import numpy as np
from threadpoolctl import threadpool_limits


def scores(matrix, vector):
    """``matrix @ vector`` (``(n, dim)`` and ``(dim,)``: ``(n,)``) on this
    thread, never OpenBLAS's pool (see the module's docstring)."""
    return np.einsum("ij,j->i", matrix, vector)


def blas_threads(limit):
    """A context in which numpy's BLAS runs on at most ``limit`` threads
    (None: as configured). The limit is the process's, not the thread's:
    while it holds, the answers this process computes for another's
    searches get the core that a product on every core would take (at 1M
    points their p95 doubled during an upkeep pass beside them, see
    bench/README.md, issue 29), at the cost of a slower product."""
    if limit is None:
        return contextlib.nullcontext()
    return threadpool_limits(limits=limit, user_api="blas")
