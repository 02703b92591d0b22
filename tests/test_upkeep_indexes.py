"""The payload indexes the upkeep relies on (store/upkeep.py): the cell's
and the rank's.

What a user relies on: a new embedded index keeps both from its first
point, so the first maintenance pass of a large index builds neither (at
10M points each build read every point's payload: ~60 s); an index of an
older version, made without them and written without ranks, gets them and
every point its rank from the next pass, also after points written
without a rank later, and after a pass killed with ``kill -9`` while it
gave the ranks.
"""

import uuid

import numpy as np
import pytest
import qdrant_edge as qe

from fiftyone_ai_search.store import base, cells as cl, edge, ranks, upkeep
from fiftyone_ai_search.store import segment_vectors
from fiftyone_ai_search.store import sample_id_to_point_id
from fiftyone_ai_search.store.edge import EdgeStore
from tests.store_processes import kill_once_held, maintain
from tests.test_store import DIM, INFO

#: points of the test indexes: above the passes' min_points (1,000)
N = 3000


def _vectors(n, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _ids(n, start=1):
    return [f"{i:024x}" for i in range(start, start + n)]


def _indexed(store):
    """``({payload key: points its index counts}, points)`` of the shard."""
    with store._locked() as shared:
        shard, _ = store._open(shared)
        info = shard.info()
        return ({k: v.points for k, v in info.payload_schema.items()},
                info.points_count)


def _write_as_before_ranks(store, ids, x):
    """Points as a version before the ranks and cells wrote them: the
    sample id alone in their payload."""
    store._upsert_points([sample_id_to_point_id(i) for i in ids],
                         base.normalize_rows(x),
                         [{"sample_id": i} for i in ids])


def _old_index(root, name, monkeypatch):
    """An embedded index as a version before the payload indexes at
    creation made it (none), holding :data:`N` points written without
    their rank or cell."""
    store = EdgeStore(name, root, lock_timeout=60)
    with monkeypatch.context() as m:
        m.setattr(edge, "_upkeep_indexes", dict)
        store.ensure(INFO)
    x = _vectors(N)
    ids = _ids(N)
    _write_as_before_ranks(store, ids, x)
    assert _indexed(store) == ({}, N)
    return store, ids, x


def _assert_ranked(store, ids):
    """Every point holds its rank, and the rank's index counts them all."""
    assert store.ranked()
    counts, points = _indexed(store)
    assert points == len(ids) and counts[ranks.RANK_KEY] == len(ids)
    rank = {i: ranks.rank_of(i) for i in ids}
    for bucket in ranks.bucket_order(3)[:20].tolist():
        got = [str(r.id) for r in store._points_in(ranks.RANK_KEY, [bucket],
                                              with_vector=False)]
        assert sorted(got) == sorted(
            sample_id_to_point_id(i) for i in ids if rank[i] == bucket)


def _assert_a_pass_completes(store, ids, x):
    """A pass gives every point its cell and its rank, and searches find
    each point (closes ``store``)."""
    assert store.maintain(min_points=1000) == len(ids)
    assert store.cells().complete
    _assert_ranked(store, ids)
    for i in range(0, len(ids), 300):
        assert store.query(x[i], 1)[0][0] == ids[i]
    store.close()


def test_a_new_index_keeps_the_upkeep_payload_indexes_from_its_first_point(
        tmp_path):
    store = EdgeStore("fresh", tmp_path, lock_timeout=60)
    store.ensure(INFO)
    assert _indexed(store) == ({cl.CELL_KEY: 0, cl.PLACE_KEY: 0,
                                ranks.RANK_KEY: 0}, 0)
    x, ids = _vectors(N), _ids(N)
    store.upsert(ids, x, [{} for _ in ids])
    # every write kept them: nothing left for the first pass to build
    assert _indexed(store) == ({cl.CELL_KEY: N, cl.PLACE_KEY: N,
                                ranks.RANK_KEY: N}, N)
    assert store.ranked()
    _assert_a_pass_completes(store, ids, x)


def test_an_old_index_gets_its_payload_indexes_and_ranks_from_a_pass(
        tmp_path, monkeypatch):
    store, ids, x = _old_index(tmp_path, "old", monkeypatch)
    assert not store.ranked()
    assert store.maintain(min_points=1000) == N
    assert store.cells().complete
    counts, _ = _indexed(store)
    assert counts[cl.CELL_KEY] == N
    _assert_ranked(store, ids)

    # an older version writes on: its points lack a rank (and a cell),
    # whatever the index knew before; the next pass finds them
    more, y = _ids(200, start=N + 1), _vectors(200, seed=1)
    _write_as_before_ranks(store, more, y)
    assert not store.ranked()
    assert _indexed(store)[0][ranks.RANK_KEY] == N
    assert store.maintain(min_points=1000) == 200
    _assert_ranked(store, ids + more)
    store.close()


@pytest.mark.slow
@pytest.mark.parametrize("held", [
    ("EdgeStore", "_set_field", 3),  # two rounds of ranks written
    ("upkeep", "_learn", 1),  # every rank written, nothing after
], ids=["mid-ranks", "after-the-last-rank"])
def test_a_pass_killed_while_it_gives_ranks_leaves_them_to_the_next(
        tmp_path, monkeypatch, held):
    store, ids, x = _old_index(tmp_path, "killed", monkeypatch)
    store.close()
    # a pass in a process of its own, ranks given 500 a round
    kill_once_held(maintain, (str(tmp_path), "killed",
                              {"upkeep.RANK_CHUNK": 500}, held), held)

    # what the killed pass wrote is there, no more: the rank's index
    # counts the points it gave a rank, which each hold their own
    counts, points = _indexed(store)
    assert points == N
    given = counts[ranks.RANK_KEY]
    if held[1] == "_set_field":
        assert given == 1000 and not store.ranked()
    else:
        assert given == N and store.ranked()
    lacking = {str(r.id) for r in store._points_lacking(ranks.RANK_KEY, N, False,
                                                   ())}
    assert len(lacking) == N - given
    # the next pass finishes the job
    _assert_a_pass_completes(store, ids, x)


def test_a_field_written_by_ids_skips_a_point_gone(tmp_path):
    """The upkeep writes a group's value by the points' ids (the engine
    refuses a missing one): a point gone meanwhile, which the round's
    lock rules out, would not fail the others."""
    store = EdgeStore("gone", tmp_path, lock_timeout=60)
    store.ensure(INFO)
    ids = _ids(10)
    store.upsert(ids, _vectors(10), [{} for _ in ids])
    points = [sample_id_to_point_id(i) for i in ids]
    store.delete(ids[:1])
    store._set_field(cl.CELL_KEY, {7: points[:5], 9: points[5:]}, None)
    got = {str(r.id): r.payload[cl.CELL_KEY]
           for r in store._retrieve_points(points, True, False)}
    assert got == {p: 7 if k < 5 else 9 for k, p in enumerate(points) if k}
    store.close()


def _places(store, ids):
    """``{sample id: place}`` of ``ids``, as the engine holds them."""
    records = store._retrieve_points(
        [sample_id_to_point_id(i) for i in ids], with_payload=True,
        with_vector=False)
    return {r.payload["sample_id"]: r.payload[cl.PLACE_KEY]
            for r in records}


def _laid_out(store):
    """The point ids of ``store`` in the order of their rows in the
    shard's files, one segment after the other (flushed first)."""
    with store.session(), store._locked() as shared:
        store._open(shared)[0].flush()
    vectors = segment_vectors.SegmentVectors.open(store._shard_path, DIM)
    order = np.lexsort((vectors._offset, vectors._segment))
    raw = np.ascontiguousarray(vectors._keys[order]).view(np.uint8)
    return [str(uuid.UUID(bytes=k.tobytes())) for k in raw.reshape(-1, 16)]


def test_a_pass_places_each_cell_within_its_stretch_of_the_files(
        tmp_path, monkeypatch):
    """Where the original vectors exceed what the page cache holds, a
    compaction ordered by cell alone read them at random over all the
    files (10M points on 23 GB: 689 s of maintain's 1,372 s). A pass that
    learns the cells gives each point its place: its stretch of the files
    (in the order the pass writes the points, that of their ids), then its
    cell; the compaction then copies one stretch after the other, each
    cell's points together within it. A writer's points go to the first
    stretch. What a search finds is unchanged."""
    monkeypatch.setattr(edge, "COMPACT_BESIDE", False)
    # four stretches of the files, as where a quarter of the vectors
    # takes edge.STRETCH_SHARE of the memory available; rounds of 500
    monkeypatch.setattr(edge, "_stretch_rows", lambda dim: N // 4)
    monkeypatch.setattr(upkeep, "ASSIGN_CHUNK", 500)
    made = edge._shard_config

    def compacted_small(dim, codes=True):
        # the engine lays out a segment of this few points only above its
        # indexing threshold (a real index's 200,000 points are far above)
        config = made(dim, codes)
        return qe.EdgeConfig(
            vectors=config.vectors, hnsw_config=config.hnsw_config,
            max_search_threads=config.max_search_threads,
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1))

    monkeypatch.setattr(edge, "_shard_config", compacted_small)
    store = EdgeStore("placed", tmp_path, lock_timeout=60)
    store.ensure(INFO)
    x, ids = _vectors(N), _ids(N)
    store.upsert(ids, x, [{} for _ in ids])
    assert store.maintain(min_points=1000) == N
    cells = store.cells().assign(base.normalize_rows(x))
    held = _places(store, ids)
    places = np.array([held[i] for i in ids])
    stretch = places // cl.STRETCH_SPAN
    assert (places == cl.place(cells, stretch)).all()
    assert np.bincount(stretch).tolist() == [N // 4] * 4
    # a round's points (500 ids in order) lie in the stretch(es) of the
    # rows the pass writes them to
    first = np.arange(N) // 500 * 500
    assert ((stretch >= first // (N // 4))
            & (stretch <= (first + 499) // (N // 4))).all()

    # compacted (the pass's end): the points lie in the order of their
    # places, the stretches one after the other
    by_point = {sample_id_to_point_id(i): p for i, p in zip(ids, places)}
    laid = [by_point[k] for k in _laid_out(store)]
    assert laid == sorted(laid)
    assert [h[0] for h in store.query(x[5], 3)][0] == ids[5]

    # a writer's points: their cell in the first stretch
    more, y = _ids(10, start=N + 1), _vectors(10, seed=2)
    store.upsert(more, y, [{} for _ in more])
    held = _places(store, more)
    assert [held[i] for i in more] == cl.place(
        store.cells().assign(base.normalize_rows(y))).tolist()
    store.close()
