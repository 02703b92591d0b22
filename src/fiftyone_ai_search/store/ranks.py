"""A seeded random walk over a large index that never reads every id.

Diverse sampling fits its clustering on a random sample of the points and
reads on, in the same random order, only while a cluster lacks members (see
:mod:`fiftyone_ai_search.diverse`). A random order of all ids is cheap to
draw at 100k points, but reading 1M ids out of the index alone takes ~6 s.

So every point carries its *rank*: a bucket ``0 .. BUCKETS - 1`` fixed by a
hash of its sample id, in the payload key :data:`RANK_KEY` under a payload
index. A bucket is a uniform random ~1/4096 of the points, the same for
every reader; a seeded permutation of the buckets is a seeded random walk,
read a few buckets at a time (each bucket in id order). The same index and
seed always give the same walk.

Ranks are written by every upsert; points written before ranks existed get
theirs from the background upkeep (``VectorStore.maintain``). A rank is a
function of the sample id alone, so a writer and the upkeep never disagree
about one. Until every point has its rank, diverse sampling reads every id
as below :data:`MIN_POINTS`.
"""

import hashlib
import math

import numpy as np

from . import cells as cl

#: the payload key of a point's rank
RANK_KEY = "rank"

#: the number of buckets: ~250 points each at 1M, ~2,500 at 10M
BUCKETS = 4096

#: the index size from which a walk reads buckets instead of every id
#: (reading every id: ~1 s at 200k points, ~6 s at 1M on 2 cores)
MIN_POINTS = cl.MIN_POINTS


def rank_of(sample_id: str) -> int:
    """The rank of a sample id (24 hex digits): a hash, so ranks are uniform
    whatever the ids (ObjectIds are a timestamp and a counter)."""
    digest = hashlib.blake2b(bytes.fromhex(sample_id), digest_size=4).digest()
    return int.from_bytes(digest, "little") % BUCKETS


def bucket_order(seed: int) -> np.ndarray:
    """The seeded order in which a walk visits the buckets."""
    return np.random.default_rng(seed).permutation(BUCKETS)


def buckets_for(count: int, total: int) -> int:
    """How many buckets hold about ``count`` of an index's ``total`` points
    (all of them, and more, when ``count >= total``)."""
    return max(1, math.ceil(count * BUCKETS / max(total, 1)))
