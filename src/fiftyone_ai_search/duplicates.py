"""Near-duplicate images: pairs of samples whose embeddings are closer than
a similarity threshold, grouped around the sample each group keeps.

The grouping is the FiftyOne Brain's (``DuplicatesMixin.find_duplicates``):
samples are visited in order; a sample not yet marked as a duplicate is
kept, and marks every later sample within the threshold as its duplicate.
Each duplicate then belongs to the kept sample it is most similar to. The
Brain backend (:mod:`fiftyone_ai_search.brain`) answers the Brain's
radius queries with :func:`neighbors_within`, so that
``find_duplicates`` there and :func:`find_near_duplicates` here mean the
same thing.

Exact below the size where the index has cells, on the stored vectors:
one pass of ``n x n`` dot products in chunks (~1 s for 10k samples on 2
cores, ~2 min for 100k). Above it, through the index's cells
(:mod:`fiftyone_ai_search.query.pairs`): each cell's pairs, and a point's
pairs in the nearest cells whose boundary lies within reach of it, read a
few cells at a time, never every vector at once; grouped by the same rules.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from . import results as colls
from . import validate
from .index import indexes, media, targets
from .query import pairs
from .lifecycle import get_embeddings

if TYPE_CHECKING:  # for annotations only
    import fiftyone.core.collections as foc

#: rows of the similarity matrix computed at once (chunk x n float32)
CHUNK = 1024

#: CPU seconds per pair compared exactly, and per point of the index
#: through the cells: a view of ``n`` samples is compared exactly where its
#: ``n^2`` pairs cost less than reading every cell. Measured on 2 cores
#: (``bench/bench_duplicates.py``, CLIP-like 512-d, 50k points: exact 31 s,
#: the cells 21 s, at 0.95)
EXACT_PAIR_S = 1.25e-8
CELLS_POINT_S = 4e-4

#: default similarity above which two images are near-duplicates: CLIP
#: embeddings of re-encoded, resized or slightly cropped copies of one
#: image score above it; different photos of one scene rarely do
DEFAULT_THRESHOLD = 0.95

#: the tag :func:`tag_near_duplicates` gives unless told otherwise
DUPLICATE_TAG = "duplicate"


def neighbors_within(vectors, min_similarity, queries=None, progress=None,
                     itself=True):
    """The indexes of the vectors at least ``min_similarity`` (cosine) from
    each query, and those similarities.

    Args:
        vectors: an ``(n, dim)`` array of unit vectors
        min_similarity: the threshold
        queries (None): an ``(m, dim)`` array of unit vectors; default
            ``vectors`` themselves (each then finds itself too, unless
            ``itself`` is False)
        progress (None): called as ``progress(done, total)``
        itself (True): with ``queries`` None, whether each vector is among
            its own neighbours

    Returns:
        ``(indexes, similarities)``: two lists with an array per query,
        most similar first
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    drop_itself = queries is None and not itself
    queries = vectors if queries is None else np.asarray(queries, np.float32)
    indexes, similarities = [], []
    for start in range(0, len(queries), CHUNK):
        sims = queries[start : start + CHUNK] @ vectors.T
        for i, row in enumerate(sims, start):
            (hits,) = np.nonzero(row >= min_similarity)
            if drop_itself:
                hits = hits[hits != i]
            order = np.argsort(-row[hits], kind="stable")
            indexes.append(hits[order])
            similarities.append(row[hits[order]])
        if progress:
            progress(min(start + CHUNK, len(queries)), len(queries))
    return indexes, similarities


def group(ids, vectors, threshold=DEFAULT_THRESHOLD, progress=None):
    """Groups near-duplicates.

    Args:
        ids: the sample ids, in the order samples are visited
        vectors: their ``(n, dim)`` unit vectors
        threshold (0.95): the similarity at or above which two samples are
            near-duplicates

    Returns:
        a dict ``{kept_id: [(duplicate_id, similarity), ...]}`` of the
        groups that have duplicates, most similar first; a kept sample
        without duplicates is not in it
    """
    neighbors, _ = neighbors_within(vectors, threshold, progress=progress)
    kept = np.ones(len(ids), dtype=bool)
    for i, near in enumerate(neighbors):
        if kept[i]:
            kept[near[near > i]] = False
    kept_rows = np.nonzero(kept)[0]
    dup_rows = np.nonzero(~kept)[0]
    if not len(dup_rows):
        return {}
    vectors = np.asarray(vectors, dtype=np.float32)
    kept_vectors = vectors[kept_rows]
    partners, similarities = [], []
    for start in range(0, len(dup_rows), CHUNK):
        sims = vectors[dup_rows[start : start + CHUNK]] @ kept_vectors.T
        best = np.argmax(sims, axis=1)
        partners.append(kept_rows[best])
        similarities.append(sims[np.arange(len(best)), best])
    return pairs.named_groups(ids, dup_rows, np.concatenate(partners),
                              np.concatenate(similarities))


def find_near_duplicates(samples: foc.SampleCollection,
                         threshold: float = DEFAULT_THRESHOLD,
                         progress: Optional[Callable[[int, int], None]] = None
                         ) -> str | None:
    """Finds near-duplicate images and keeps them as the dataset's
    temporary collection: each group is the sample it keeps (score 1.0)
    followed by its duplicates, scored by their similarity to it, most
    similar first; groups come largest first. Use the collection's score
    range (:func:`fiftyone_ai_search.get_collection` ``min_score``) to keep
    only the closest copies.

    Examples::

        import fiftyone_ai_search as ais

        name = ais.find_near_duplicates(dataset, threshold=0.97)
        view = ais.get_collection(dataset, name)
        session.view = view

        # the duplicates alone, e.g. to tag or delete them
        groups = ais.near_duplicate_groups(dataset, threshold=0.97)
        dups = [d for group in groups.values() for d, _ in group]
        dataset.select(dups).tag_samples("duplicate")

    Args:
        samples: a dataset or a view of it
        threshold (0.95): the cosine similarity, in (0, 1], at or above
            which two images are near-duplicates
        progress (None): called now and then as ``progress(done, total)``
            (cells of the index, or rows compared)

    Returns:
        the name of the collection, or None when there are no duplicates
    """
    # a float from here on: what the collection's query records too
    threshold = validate.number(threshold, "threshold", 0.0, 1.0)
    groups = near_duplicate_groups(samples, threshold, progress=progress)
    if not groups:
        return None
    ids, scores, kept_ids = [], [], []
    for kept, dups in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        ids.append(kept)
        kept_ids.append(kept)
        scores.append(1.0)
        ids.extend(d for d, _ in dups)
        scores.extend(s for _, s in dups)
    # the kept images by id: where each group starts (a copy may score
    # 1.0 as its kept image does), also in a copy saved with a score range
    return colls.write_collection(
        media.source_dataset(samples), colls.TEMPORARY_COLLECTION, ids,
        scores,
        query={"mode": "duplicates", "threshold": threshold,
               "groups": len(groups), "limit": len(ids),
               "kept_ids": kept_ids},
    )


def duplicate_groups_in(dataset: foc.SampleCollection,
                        name: str = colls.TEMPORARY_COLLECTION
                        ) -> list[list[str]]:
    """The groups of a collection of near-duplicates
    (:func:`find_near_duplicates`, or a copy of it saved with
    :func:`fiftyone_ai_search.save_collection`), in its order.

    Args:
        dataset: the dataset
        name (TEMPORARY_COLLECTION): the collection

    Returns:
        a list of groups, each a list of sample ids: the image the group
        keeps, then its duplicates

    Raises:
        ValueError: if the collection holds no near-duplicates
        CollectionNotFoundError: if there is no collection ``name``
    """
    dataset = media.source_dataset(dataset, "dataset")
    rows = colls.get_collection_scores(dataset, name)
    query = colls.collection_summary(dataset, name)["query"] or {}
    if query.get("mode") != "duplicates" or "kept_ids" not in query:
        raise ValueError(
            f"name: collection {name!r} of dataset '{dataset.name}' holds no "
            "near-duplicates; find them with find_near_duplicates()")
    kept = set(query["kept_ids"])
    groups = []
    for sample_id, _ in rows:
        if sample_id in kept:
            groups.append([sample_id])
        elif groups:  # (a group's duplicates follow its kept image)
            groups[-1].append(sample_id)
    return groups


def tag_near_duplicates(dataset: foc.SampleCollection,
                        name: str = colls.TEMPORARY_COLLECTION,
                        tag: str = DUPLICATE_TAG) -> int:
    """Tags every image of a near-duplicates collection but the one each
    group keeps: what a curator reviews, then deletes or excludes (e.g.
    ``dataset.match_tags("duplicate")``).

    Examples::

        import fiftyone_ai_search as ais

        ais.find_near_duplicates(dataset, threshold=0.97)
        ais.tag_near_duplicates(dataset)           # the latest results
        dataset.match_tags("duplicate").count()

    Args:
        dataset: the dataset
        name (TEMPORARY_COLLECTION): the collection of
            :func:`find_near_duplicates` (or a saved copy of it)
        tag ("duplicate"): the tag

    Returns:
        how many images were tagged

    Raises:
        ValueError: if the collection holds no near-duplicates, or the tag
            is empty
        CollectionNotFoundError: if there is no collection ``name``
    """
    if not isinstance(tag, str) or not tag.strip():
        raise ValueError(f"tag: a non-empty string, got {tag!r}")
    dataset = media.source_dataset(dataset, "dataset")
    dups = [d for group in duplicate_groups_in(dataset, name)
            for d in group[1:]]
    if dups:
        dataset.select(dups).tag_samples(tag)
    return len(dups)


def near_duplicate_groups(samples: foc.SampleCollection,
                          threshold: float = DEFAULT_THRESHOLD,
                          progress: Optional[Callable[[int, int], None]]
                          = None) -> dict[str, list[tuple[str, float]]]:
    """The near-duplicate groups of ``samples`` (see :func:`group`), from
    the vectors of its AI search index, visited in the order of
    ``samples``; ``progress``: as :func:`find_near_duplicates`.

    Returns:
        a dict ``{kept_id: [(duplicate_id, similarity), ...]}``
    """

    threshold = validate.number(threshold, "threshold", 0.0, 1.0)
    progress = callback(progress)
    if threshold <= 0:
        raise ValueError("threshold must be in (0, 1], got 0")
    if getattr(samples, "_is_patches", False):
        # objects: their own index, exact
        ids, vectors = get_embeddings(samples)
        return group(ids, vectors, threshold, progress)
    _, groups = over_samples(
        samples,
        lambda store, wanted: _groups_in(store, wanted, threshold, progress))
    return groups


def over_samples(samples, compute):
    """Runs ``compute(store, wanted)`` on the AI search index of the
    images of ``samples`` (a dataset or a view of its samples), ``wanted``
    being their ids in the order of ``samples``; the index is closed after.

    Returns:
        ``(wanted, what compute returned)``

    Raises:
        AISearchNotEnabledError, IndexNotReadyError: see
        :func:`fiftyone_ai_search.index.indexes.require_index`
    """
    dataset, view = media.resolve(samples)
    target = targets.target_of(dataset, None)
    doc = indexes.require_index(target, same_model=True)
    wanted = (dataset if view is None else view).values("id")

    def read(doc, store):
        try:
            return compute(store, wanted)
        finally:
            store.close()

    return wanted, indexes.read_index(target, doc, read, same_model=True)


def _exact_is_cheaper(num_wanted, num_points):
    """Whether comparing every pair of ``num_wanted`` samples costs less
    than a pass through every cell of an index of ``num_points``."""
    return (num_wanted * num_wanted * EXACT_PAIR_S
            < num_points * CELLS_POINT_S)


def callback(progress):
    """A ``progress`` argument checked: None or a callable."""
    if progress is not None and not callable(progress):
        raise ValueError("progress must be None or a callable "
                         f"progress(done, total), got {progress!r}")
    return progress


def _groups_in(store, wanted, threshold, progress=None):
    """The groups of the samples ``wanted`` (ids, in visiting order) in
    ``store``: through its cells where it has them (see
    :mod:`fiftyone_ai_search.query.pairs`), else every pair exactly."""
    found = _pairs_through_cells(store, wanted, threshold, progress)
    if found is not None:
        return pairs.named_groups(
            wanted, *pairs.group_pairs(len(wanted), *found))
    ids, vectors = store.get_vectors(wanted)
    return group(ids, vectors, threshold, progress)


def within_through_cells(store, wanted, min_similarity, progress=None,
                         itself=True):
    """Each of the points ``wanted`` (ids, in visiting order) with the
    points at least ``min_similarity`` similar to it among them (itself
    too, unless ``itself`` is False), through the cells of ``store``: what
    :func:`neighbors_within` gives on their vectors (same order: most
    similar first, then by row), up to the pairs a point's few nearest
    cells miss (see :data:`fiftyone_ai_search.query.pairs.PROBE`).

    Returns:
        ``(indexes, similarities)`` as :func:`neighbors_within`, or None
        where every pair is compared exactly (see :func:`cells_pass`; also
        a threshold of 0 or less, which every pair passes, and points
        without any cell key)
    """
    if min_similarity <= 0:
        return None
    found = _pairs_through_cells(store, wanted, min_similarity, progress)
    if found is None:
        return None
    return neighbor_lists(len(wanted), *found, itself)


def _pairs_through_cells(store, wanted, min_similarity, progress=None):
    """The pairs ``(lo, hi, sim)`` of the points ``wanted`` (ids, in
    visiting order) at least ``min_similarity`` similar, through the cells
    of ``store`` (see :func:`fiftyone_ai_search.query.pairs.pairs_by_cells`),
    or None where every pair is to be compared exactly (see
    :func:`cells_pass`, and points without any cell key, written by an
    older version, which the pass would miss)."""
    through = cells_pass(store, wanted)
    if through is None:
        return None
    lo, hi, sim, seen = pairs.pairs_by_cells(
        *through, min_similarity, probe=pairs.PROBE, progress=progress)
    return (lo, hi, sim) if seen == store.count() else None


def neighbor_lists(n, lo, hi, sim, itself=True):
    """The pairs ``lo < hi`` (rows) of similarity ``sim`` as each of the
    ``n`` rows' list of neighbours (itself among them, similarity 1,
    unless ``itself`` is False), most similar first (the lower row on a
    tie), as :func:`neighbors_within` orders them.

    Returns:
        ``(indexes, similarities)``: a list of arrays each
    """
    rows = np.arange(n if itself else 0, dtype=np.int64)
    row = np.concatenate([rows, lo, hi]).astype(np.int64)
    other = np.concatenate([rows, hi, lo]).astype(np.int64)
    sims = np.concatenate([np.ones(len(rows), np.float32), sim,
                           sim]).astype(np.float32)
    order = np.lexsort((other, -sims, row))
    other, sims = other[order], sims[order]
    cuts = np.cumsum(np.bincount(row, minlength=n))[:-1]
    return np.split(other, cuts), np.split(sims, cuts)


def cells_pass(store, wanted):
    """What a pass through the cells of ``store`` over the samples
    ``wanted`` (ids, in visiting order) takes: ``(cells, read, rows_of)``
    (see :func:`fiftyone_ai_search.query.pairs.pairs_by_cells`), or None
    where every pair is compared exactly: an index without cells (small),
    a small view, or cells being learned or moved. The caller compares
    the points it saw with ``store.count()``."""
    known = store.cells()
    if (known is None or not known.complete or known.previous is not None
            or _exact_is_cheaper(len(wanted), store.count())):
        return None
    position = {sid: i for i, sid in enumerate(wanted)}

    def rows_of(ids):
        return np.fromiter((position.get(i, -1) for i in ids), np.int64,
                           count=len(ids))

    def read(values):
        # one opening for the pass, handed over between reads to whoever
        # waits for the index
        with store.session():
            return store.get_cell_vectors(values)

    return known, read, rows_of
