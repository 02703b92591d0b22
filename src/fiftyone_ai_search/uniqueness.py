"""Uniqueness of images off the index: how far each sample lies from its
nearest others, scored as FiftyOne Brain's ``compute_uniqueness`` scores
it, without a query per sample.

The Brain's score of a sample is the weighted mean of the distances to
its 3 nearest other samples (weights 0.6, 0.3, 0.1; cosine distances),
divided by the largest such mean of the collection. Given a similarity
index other than its own in-memory one, the Brain asks it for those
neighbours 10 samples at a time, a search per sample: a million searches
at a million images. Here the neighbours come from one pass through the
index's cells (:func:`fiftyone_ai_search.query.pairs.nearest_by_cells`):
each point against the points of its own cell and of its few nearest
cells, a few cells in memory at a time; exact (every pair) below the size
where that costs less, as near-duplicates are.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from . import duplicates, validate
from .index import media
from .query import pairs

if TYPE_CHECKING:  # for annotations only
    import fiftyone.core.collections as foc

#: the Brain's weights of the distances to the 1st, 2nd and 3rd nearest
WEIGHTS = np.array([0.6, 0.3, 0.1])


def compute_uniqueness(samples: foc.SampleCollection,
                       uniqueness_field: str = "uniqueness",
                       progress: Optional[Callable[[int, int], None]] = None
                       ) -> None:
    """Scores each sample's uniqueness in ``[0, 1]`` into
    ``uniqueness_field``, as FiftyOne Brain's ``compute_uniqueness`` does
    (1: the sample farthest from its nearest others), from the vectors of
    the dataset's AI search index, through its cells where it has them: a
    million images in minutes, where the Brain would search the index once
    per sample. A sample the index does not hold yet gets None.

    Examples::

        import fiftyone_ai_search as ais

        ais.compute_uniqueness(dataset)
        view = dataset.sort_by("uniqueness", reverse=True)

    Args:
        samples: a dataset or a view of it (its samples are scored among
            themselves)
        uniqueness_field ("uniqueness"): the float field to write
        progress (None): called now and then as ``progress(done, total)``
            (cells of the index, or rows compared)
    """
    if validate.field_name(uniqueness_field, "uniqueness_field") is None:
        raise ValueError("uniqueness_field must be a field name, got None")
    progress = duplicates.callback(progress)
    if getattr(samples, "_is_patches", False):
        raise ValueError("compute_uniqueness scores samples, not objects: "
                         "give it a dataset or a view of its samples")
    wanted, scores = duplicates.over_samples(
        samples, lambda store, wanted: scores_in(store, wanted, progress))
    dataset, view = media.resolve(samples)
    collection = dataset if view is None else view
    # declared first, as the Brain does: a view of samples none of which
    # the index holds yet writes only None
    import fiftyone.core.fields as fof  # FiftyOne loads on first use

    dataset.add_sample_field(uniqueness_field, fof.FloatField)
    collection.set_values(uniqueness_field,
                          dict(zip(wanted, scores)), key_field="id")


def scores_in(store, wanted: list, progress=None) -> list:
    """The uniqueness of each of the samples ``wanted`` (ids) among
    themselves in ``store`` (None where it holds no vector)."""
    through = duplicates.cells_pass(store, wanted)
    if through is not None:
        _, sims, present, seen = pairs.nearest_by_cells(
            *through, len(wanted), len(WEIGHTS), probe=pairs.PROBE,
            progress=progress)
        if seen == store.count():
            return _by_row(len(wanted), present, scores_of(sims[present]))
        # else points without any cell key (written by an older version)
    ids, vectors = store.get_vectors(wanted)
    found = pairs.nearest_every_pair(np.asarray(vectors, np.float32),
                                     len(WEIGHTS), progress)
    row = {sid: i for i, sid in enumerate(wanted)}
    present = np.zeros(len(wanted), dtype=bool)
    present[[row[sid] for sid in ids]] = True
    order = np.argsort([row[sid] for sid in ids], kind="stable")
    return _by_row(len(wanted), present, scores_of(found.sims)[order])


def _by_row(n, present, scores):
    """A list of ``n`` scores: ``scores`` in the rows ``present``, in
    order, None in the others."""
    out = [None] * n
    for i, score in zip(np.flatnonzero(present).tolist(), scores.tolist()):
        out[i] = score
    return out


def scores_of(sims: np.ndarray) -> np.ndarray:
    """The Brain's uniqueness of points from the cosine similarities of
    each one's nearest others (``(n, 3)``, best first; ``-inf`` where a
    point has fewer): the weighted mean of their distances, over the
    largest."""
    dists = 1.0 - np.maximum(np.asarray(sims, np.float64), -1.0)
    means = np.mean(dists * WEIGHTS, axis=1)
    top = means.max() if len(means) else 0.0
    return means / top if top > 0 else means
