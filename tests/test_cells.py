"""The approximate search: k-means cells kept in the index (store/cells.py).

What a user relies on: above the size threshold a search scans the probed
cells and nothing is missed inside them (exact there); below it, and until
every point has its cell, a search is exact; a point written at any moment
is searchable at once; a maintenance pass killed with ``kill -9`` at any
moment leaves a working index, and the next pass finishes the job; the cells
go with the index.
"""

import multiprocessing
import os
import threading
import time

import numpy as np
import pytest

import fiftyone_ai_search as ais
from fiftyone_ai_search import scheduler
from fiftyone_ai_search.query import walk
from fiftyone_ai_search.query.vectors import prompt_vectors
from fiftyone_ai_search.index import indexes
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search.store import cells as cl
from fiftyone_ai_search.store import point_id_to_sample_id
from fiftyone_ai_search.store import ranks
from fiftyone_ai_search.store.base import IndexInfo
from fiftyone_ai_search.store.edge import EdgeStore
from fiftyone_ai_search.store.server import ServerStore
from tests.helpers import shapes_dataset
from tests.store_processes import (
    SMALL_CELLS, kill_once_held, maintain, take_then_replace, write_in_steps)
from tests.test_store import (  # noqa: F401 (store: a fixture)
    DIM, INFO, SERVER_SLOW, store)

SPAWN = multiprocessing.get_context("spawn")

pytestmark = pytest.mark.filterwarnings(
    "ignore:Failed to obtain server version:UserWarning"
)


def clustered(n, clusters=40, seed=0):
    """Image-like vectors in clusters, and text-like queries: a cluster's
    centre shifted along one direction shared by all texts (a modality gap),
    so they lie far from every vector."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM))
    labels = rng.integers(0, clusters, n)
    x = centres[labels] + 0.5 * rng.standard_normal((n, DIM))
    gap = rng.standard_normal(DIM)
    texts = centres[rng.integers(0, clusters, 20)] + 2.0 * gap
    return unit(x), unit(texts)


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_ids(n, start=1):
    return [f"{i:024x}" for i in range(start, start + n)]


def sized(index, n):
    """``n`` points for the embedded index; half as many for the server
    backend's stand-in, qdrant-client's ``:memory:`` mode, which evaluates
    every filter of a request in Python, point by point: a request costs
    it tens of times what it costs the embedded index, more the larger
    the index (docs/development.md). The server's variants show that both
    backends agree; the embedded one's carry the size."""
    return n if isinstance(index, EdgeStore) else n // 2


@pytest.fixture(autouse=True)
def few_probed_cells(monkeypatch):
    """Small indexes have few cells: probe few of them (the default, 64,
    would probe all of them here, and test nothing)."""
    monkeypatch.setattr(cl, "MIN_PROBED", 6)


@pytest.fixture
def index(store):
    """An empty index on each backend (``test_store``'s ``store``)."""
    store.ensure(INFO)
    return store


def exact_in(ids, vectors, query, limit, allowed=None):
    scores = vectors @ query
    order = [i for i in np.argsort(-scores, kind="stable")
             if allowed is None or allowed[i]]
    return [ids[i] for i in order[:limit]], scores


def assert_same(got, expected_ids, scores, ids):
    """Same samples in the same order, but for near-ties."""
    got_ids = [i for i, _ in got]
    assert len(got_ids) == len(expected_ids)
    by_id = dict(zip(ids, scores))
    np.testing.assert_allclose([s for _, s in got],
                               [by_id[i] for i in expected_ids], atol=1e-5)
    assert sum(a != b for a, b in zip(got_ids, expected_ids)) <= 2


@SERVER_SLOW
def test_search_is_exact_within_the_probed_cells(index):
    x, texts = clustered(sized(index, 3000))
    ids = make_ids(len(x))
    index.upsert(ids, x, [{} for _ in ids])
    assert index.maintain(min_points=1000) == len(x)
    cells = index.cells()
    assert cells is not None and cells.complete
    assert len(cells) == cl.num_cells(len(x))
    where = cells.assign(x)

    queries = np.concatenate([x[:10] + 0.05, texts])
    for q in unit(queries):
        probed = set(cells.probe(q))
        assert cl.UNASSIGNED in probed
        assert len(probed) == cl.num_probed(len(cells)) + 1 < len(cells)
        expected, scores = exact_in(ids, x, q, 50,
                                    np.isin(where, list(probed)))
        assert_same(index.query(q, 50), expected, scores, ids)
    # the cells are the index's business: payloads are what was given
    assert index.get_payloads(ids[:2]) == {i: {"sample_id": i}
                                           for i in ids[:2]}


@pytest.mark.parametrize("store", ["edge", "server"], indirect=True)
def test_a_search_through_one_cell_or_every_cell_is_exact_within_them(
        index, small_cells):
    """The probed cells reach the engine as one condition a cell (see
    edge._cells_filter and server._cells_filter): one cell, a few, and more cells than any rule
    probes (here 160, at most 100 + ties in use) find exactly the points
    of those cells."""
    x, texts = clustered(4000, seed=5)
    ids = make_ids(len(x))
    index.upsert(ids, x, [{} for _ in ids])
    index.maintain(min_points=1000)
    cells = index.cells()
    assert cells.complete and len(cells) == 160
    where = stored_cells(index, ids)
    # the server's stand-in: a query of each kind (see sized())
    each = 3 if isinstance(index, EdgeStore) else 1
    for q in unit(np.concatenate([x[:each] + 0.05, texts[:each]])):
        for count in (1, 7, len(cells)):
            probed = cells.probe(q, count=count)
            expected, scores = exact_in(ids, x, q, 60,
                                        np.isin(where, probed))
            got = [(point_id_to_sample_id(h.id), h.score)
                   for h in index._query_points(q, 60, None, None, probed)]
            assert_same(got, expected, scores, ids)


def test_a_query_scans_a_share_of_the_cells_but_at_most_max_probed():
    # past MAX_CELLS the cells only grow: at 10M, 5% of 4096 cells scanned
    # 500k points a query (~165 ms), for recall that 100 cells nearly match
    assert cl.num_probed(2000) == max(cl.MIN_PROBED, 100)
    assert cl.num_probed(cl.MAX_CELLS) == cl.MAX_PROBED
    assert cl.num_probed(cl.MAX_CELLS) < round(cl.PROBE_SHARE * cl.MAX_CELLS)
    # a near query is already under the cap
    assert cl.num_probed(cl.MAX_CELLS, near=True) == round(
        cl.NEAR_PROBE_SHARE * cl.MAX_CELLS)


@SERVER_SLOW
def test_a_query_among_the_images_probes_fewer_cells(index, monkeypatch):
    """A diverse search's cluster centres lie among the images: a near
    query scans fewer cells, exactly, and still finds an image's
    neighbours."""
    monkeypatch.setattr(cl, "MIN_NEAR_PROBED", 2)
    x, _ = clustered(sized(index, 3000))
    ids = make_ids(len(x))
    index.upsert(ids, x, [{} for _ in ids])
    index.maintain(min_points=1000)
    cells = index.cells()
    where = cells.assign(x)
    for i in range(0, len(x), len(x) // 10):
        q = unit(x[i] + 0.05)
        near = cells.probe(q, near=True)
        assert len(near) == cl.num_probed(len(cells), near=True) + 1
        assert len(near) < len(cells.probe(q))
        expected, scores = exact_in(ids, x, q, 20, np.isin(where, near))
        got = index.query(q, 20, near=True)
        assert_same(got, expected, scores, ids)
        assert got[0][0] == ids[i]


@SERVER_SLOW
def test_diverse_search_probes_fewer_cells_only_for_small_groups(index):
    """The centre of a group that fits in the cells a near query probes
    lies among the images; the centre of a large group does not (it lies
    between many kinds of images, as a prompt does)."""
    x, _ = clustered(3000)
    ids = make_ids(len(x))
    index.upsert(ids, x, [{} for _ in ids])
    source = walk.IndexSource(index, None)
    assert not source._near(0.001)  # no cells yet: every query is exact
    index.maintain(min_points=1000)
    cells = index.cells()
    fits = cl.num_probed(len(cells), near=True) / len(cells)
    assert source._near(fits) and source._near(fits / 2)
    assert not source._near(2 * fits) and not source._near(None)


def test_a_small_index_stays_exact(index):
    x, texts = clustered(500)
    ids = make_ids(len(x))
    index.upsert(ids, x, [{} for _ in ids])
    assert index.maintain(min_points=1000) == 0
    assert index.cells() is None
    for q in texts[:5]:
        expected, scores = exact_in(ids, x, q, 20)
        assert_same(index.query(q, 20), expected, scores, ids)


def test_points_written_later_are_searchable_at_once(index):
    x, _ = clustered(2500)
    ids = make_ids(len(x))
    index.upsert(ids[:2000], x[:2000], [{} for _ in range(2000)])
    index.maintain(min_points=1000)
    index.upsert(ids[2000:], x[2000:], [{} for _ in range(500)])
    for i in range(2000, 2500, 50):
        assert index.query(x[i], 1)[0][0] == ids[i]
    # written with their cell: nothing left to assign
    assert index.maintain(min_points=1000) == 0


def test_a_syncs_points_are_compacted_once_they_are_many(tmp_path):
    """Points a writer gives their cell itself (a sync's) leave the upkeep
    nothing to assign, but Qdrant Edge keeps them outside its segments'
    order, scanned slower, until a compaction: the upkeep compacts once
    those written since the last one are COMPACT_SHARE of the index. The
    count is kept with the index, across processes (written.json)."""
    from fiftyone_ai_search.store import edge, upkeep

    x, _ = clustered(2600)
    ids = make_ids(len(x))
    store = EdgeStore("written", tmp_path)
    store.ensure(INFO)
    store.upsert(ids[:2000], x[:2000], [{} for _ in range(2000)])
    assert store.maintain(min_points=1000) == 2000  # learned, compacted
    store.close()
    assert edge.written_since_compaction(store.path) == 0
    share = int(upkeep.COMPACT_SHARE * store.cells().learned_from)

    compactions = edge.stats["compactions"]
    half = share // 2
    store.upsert(ids[2000:2000 + half], x[2000:2000 + half],
                 [{} for _ in range(half)])
    assert store.maintain(min_points=1000) == 0  # their cells: theirs
    assert edge.stats["compactions"] == compactions  # not many yet
    store.close()
    assert edge.written_since_compaction(store.path) == half

    rest = ids[2000 + half:2000 + share], x[2000 + half:2000 + share]
    store.upsert(*rest, [{} for _ in rest[0]])
    store.delete(ids[:1])  # deletes count too
    store.close()
    assert edge.written_since_compaction(store.path) == share + 1
    assert store.maintain(min_points=1000) == 0
    assert edge.stats["compactions"] == compactions + 1
    store.close()
    assert edge.written_since_compaction(store.path) == 0
    for i in range(1, 2000 + share, 40):
        assert store.query(x[i], 1)[0][0] == ids[i]
    store.drop()


@pytest.mark.slow
def test_points_written_without_their_cell_are_scanned_then_assigned():
    """Points without a cell: written by an older version of this package
    (no cell field: an index made before the cells), or by a process that
    had not seen the cells yet (UNASSIGNED, which every search scans). The
    next pass assigns them. Written here straight through qdrant-client, as
    those writers did."""
    from qdrant_client import models

    from fiftyone_ai_search.store import sample_id_to_point_id

    # (the server's stand-in, on as few points as sized() gives it)
    x, _ = clustered(1150)
    ids = make_ids(len(x))
    index = ServerStore("old_writers", location=":memory:")
    index.ensure(INFO)

    def write(rows, payload):
        with index._guard():
            index._client.upsert(index.collection_name, points=[
                models.PointStruct(
                    id=sample_id_to_point_id(ids[i]), vector=x[i].tolist(),
                    payload={"sample_id": ids[i], **payload})
                for i in rows])

    write(range(1000), {})  # an index of the version before the cells
    assert not index.ranked()
    assert index.maintain(min_points=500) == 1000
    assert index.cells().complete
    assert index.ranked()  # and given their ranks (see ranks.py)
    write(range(1000, 1150), {cl.CELL_KEY: cl.UNASSIGNED})
    for i in range(1000, 1150, 25):
        assert index.query(x[i], 1)[0][0] == ids[i]
    assert index.maintain(min_points=500) == 150
    assert index.maintain(min_points=500) == 0
    for i in range(0, 1150, 25):
        assert index.query(x[i], 1)[0][0] == ids[i]
    index.drop()


def test_rank_buckets_partition_the_index(index):
    """Each point is in the bucket of its rank, and a walk of all buckets
    reads every point once, bucket by bucket in the order asked, each in id
    order."""
    x, _ = clustered(1200)
    ids = make_ids(len(x))
    index.upsert(ids, x, [{} for _ in ids])
    assert index.ranked()
    order = ranks.bucket_order(7)
    got_ids, got = index.get_bucket_vectors(order[:40])
    rank = {i: ranks.rank_of(i) for i in ids}
    expected = sorted((i for i in ids if rank[i] in set(order[:40].tolist())),
                      key=lambda i: (order[:40].tolist().index(rank[i]), i))
    assert got_ids == expected and len(expected) > 0
    by_id = dict(zip(ids, x))
    np.testing.assert_allclose(got, [by_id[i] for i in got_ids], atol=1e-6)
    all_ids, _ = index.get_bucket_vectors(order)
    assert sorted(all_ids) == ids
    assert index.get_payloads(ids[:1]) == {ids[0]: {"sample_id": ids[0]}}


@SERVER_SLOW
def test_cells_are_learned_the_same_from_the_same_index(index, tmp_path):
    """The learning sample is a seeded walk of rank buckets: the same
    points and seed give the same cells, whatever order they were written
    in; another seed gives others."""
    x, _ = clustered(8_000, seed=2)  # a sample of about half
    ids = make_ids(len(x))
    index.upsert(ids, x, [{} for _ in ids])
    index.maintain(min_points=1000, seed=5)
    again = EdgeStore("again", tmp_path)
    again.ensure(INFO)
    backwards = slice(None, None, -1)
    again.upsert(ids[backwards], x[backwards], [{} for _ in ids])
    again.maintain(min_points=1000, seed=5)
    np.testing.assert_allclose(index.cells().centres, again.cells().centres,
                               atol=1e-5)
    other = EdgeStore("other", tmp_path)
    other.ensure(INFO)
    other.upsert(ids, x, [{} for _ in ids])
    other.maintain(min_points=1000, seed=6)
    assert not np.allclose(index.cells().centres, other.cells().centres)


def test_cells_go_with_the_index(index):
    x, _ = clustered(1500)
    ids = make_ids(len(x))
    index.upsert(ids, x, [{} for _ in ids])
    index.maintain(min_points=1000)
    index.drop()
    assert index.cells() is None
    if isinstance(index, ServerStore):
        with index._guard():
            names = [c.name for c in
                     index._client.get_collections().collections]
        assert not [n for n in names if n.startswith(index.collection_name)]
    else:
        assert not os.path.exists(index.path)
    # a new index of the same name starts without cells, and exact
    index.ensure(INFO)
    index.upsert(ids[:10], x[:10], [{} for _ in range(10)])
    assert index.cells() is None
    assert index.query(x[3], 1)[0][0] == ids[3]


def _kill_maintenance_held_at(root, name, chunk, held, small_cells=False):
    """Runs a maintenance pass (``chunk`` points a round: a kill lands
    mid-way) in a spawned process and kills it with SIGKILL where ``held``
    holds it (``(where, function, call)``, tests.store_processes.hold_at,
    ``where`` "upkeep" or "EdgeStore"); fails if it never got there."""
    kill_once_held(maintain, (root, name, _child_settings(chunk, small_cells),
                              held), held)


def _child_settings(chunk, small_cells):
    """What a maintenance pass in another process must share with this
    one's: its round size, the probe count (few_probed_cells), the cells'
    size (small_cells)."""
    settings = {"upkeep.ASSIGN_CHUNK": chunk, "cells.MIN_PROBED": 6}
    if small_cells:
        settings.update({f"cells.{k}": v for k, v in SMALL_CELLS.items()})
    return settings


@pytest.mark.slow
@pytest.mark.parametrize("held", [
    ("upkeep", "_assign_round", 1),  # cells learned, no point given one
    ("upkeep", "_assign_round", 2),  # one round of 256 written
    ("upkeep", "_assign_round", 12),  # about half of the points
    ("EdgeStore", "_compact", 1),  # every point, cells not yet complete
], ids=["learned", "one-round", "half", "before-compaction"])
def test_maintenance_killed_at_any_moment_leaves_a_working_index(tmp_path,
                                                                 held):
    x, texts = clustered(6000)
    ids = make_ids(len(x))
    store = EdgeStore("killed", tmp_path, lock_timeout=60)
    store.ensure(INFO)
    store.upsert(ids, x, [{} for _ in ids])
    store.close()

    _kill_maintenance_held_at(str(tmp_path), "killed", 256, held)

    # whatever it left, searches are right: exact until the cells are
    # complete, exact within the probed cells after
    assert store.count() == len(x)
    cells = store.cells()
    for q in texts[:5]:
        allowed = None
        if cells is not None and cells.complete:
            allowed = np.isin(cells.assign(x), cells.probe(q))
        expected, scores = exact_in(ids, x, q, 30, allowed)
        assert_same(store.query(q, 30), expected, scores, ids)

    # the next pass finishes the job, redoing nothing already assigned
    left = store.maintain(min_points=1000)
    assert left <= len(x)
    cells = store.cells()
    assert cells.complete and store.maintain(min_points=1000) == 0
    where = cells.assign(x)
    for q in texts[:5]:
        expected, scores = exact_in(ids, x, q, 30,
                                    np.isin(where, cells.probe(q)))
        assert_same(store.query(q, 30), expected, scores, ids)
    store.close()


@pytest.mark.slow
def test_the_refresher_builds_the_cells_in_the_background(tmp_path,
                                                         monkeypatch):
    """Each refresher pass runs the upkeep of every enabled dataset's index;
    prompt search then scans the probed cells."""
    dataset = shapes_dataset(tmp_path, num_samples=200)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert indexes.open_index(dataset).cells() is None
    monkeypatch.setattr(cl, "MIN_POINTS", 10)
    scheduler.refresh_all([dataset.name])
    store = indexes.open_index(dataset)
    cells = store.cells()
    assert cells is not None and cells.complete
    ids, vectors = store.get_vectors()
    where = cells.assign(vectors)

    name = ais.perform_ai_search(dataset, prompt="a red circle", limit=10)
    got = [i for i, _ in ais.get_collection_scores(dataset, name)]
    # the same as an exact search of the probed cells
    query = prompt_vectors(
        indexes.load_index_model(st.get(dataset)["index"]),
        ["a red circle"])[0]
    # (the upkeep also audited the cells: its rule may search exactly)
    probed = store.cells().probe(query)
    expected, _ = exact_in(ids, vectors, query, 10,
                           None if probed is None else np.isin(where, probed))
    assert got == expected
    store.close()


def test_a_server_collection_is_made_as_configured(monkeypatch):
    """What a Qdrant server is asked for, from the settings (no server runs
    here: the request itself is checked): no HNSW graph, an int8 copy in
    RAM, originals on disk, the shards and replicas given."""
    from fiftyone_ai_search.config import get_settings
    from fiftyone_ai_search.store import open_store

    monkeypatch.setenv("FIFTYONE_AI_SEARCH_QDRANT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_QDRANT_SHARDS", "6")
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_QDRANT_REPLICAS", "2")
    store = open_store("sized", get_settings())
    config = store._collection_config(512)
    assert config["shard_number"] == 6 and config["replication_factor"] == 2
    assert config["hnsw_config"].m == 0
    assert config["vectors_config"].on_disk is True
    assert config["vectors_config"].size == 512
    scalar = config["quantization_config"].scalar
    assert scalar.type.value == "int8" and scalar.always_ram

    monkeypatch.setenv("FIFTYONE_AI_SEARCH_QDRANT_ON_DISK", "false")
    assert open_store("sized", get_settings())._collection_config(
        512)["vectors_config"].on_disk is False
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_QDRANT_ON_DISK", "maybe")
    with pytest.raises(ValueError, match="QDRANT_ON_DISK='maybe'"):
        get_settings()
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_QDRANT_ON_DISK", "1")
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_QDRANT_SHARDS", "0")
    with pytest.raises(ValueError, match="qdrant_shards must be >= 1"):
        get_settings()


# -- cells learned again as the index grows ------------------------------------


def outgrown(tmp_path, name, ids, x, grown_to):
    """An embedded index whose cells were learned from its first 1000
    points, grown to ``grown_to`` since (written with those cells)."""
    store = EdgeStore(name, tmp_path, lock_timeout=60)
    store.ensure(INFO)
    store.upsert(ids[:1000], x[:1000], [{} for _ in range(1000)])
    store.maintain(min_points=1000)
    store.upsert(ids[1000:grown_to], x[1000:grown_to],
                 [{} for _ in range(grown_to - 1000)])
    return store


@pytest.fixture
def small_cells(monkeypatch):
    """Cells of 25 points: a few thousand points outgrow their cells."""
    for name, value in SMALL_CELLS.items():
        monkeypatch.setattr(cl, name, value)


def stored_cells(index, ids):
    """The cell value each point carries (what a query's filter reads)."""
    from fiftyone_ai_search.store import sample_id_to_point_id

    records = index._retrieve_points([sample_id_to_point_id(i) for i in ids],
                                     with_payload=True, with_vector=False)
    by_point = {str(r.id): r.payload[cl.CELL_KEY] for r in records}
    return np.array([by_point[sample_id_to_point_id(i)] for i in ids])


def probed_values(cells, q):
    """What a query must scan: unassigned points, and in each generation of
    cells (new and, while points move, old) the points of the cells whose
    centres are nearest the query."""
    values = [cl.UNASSIGNED]
    for generation in cells.generations():
        count = cl.num_probed(len(generation))
        best = np.argsort(-(generation.centres @ q))[:count]
        values += (best + generation.ordinal * cl.SPAN).tolist()
    return values


def assert_exact_within_probed(index, ids, x, queries, limit=30):
    """Each query's results are the exact best of the points whose stored
    cell it probes (whichever cells, old or new, a point is in)."""
    where = stored_cells(index, ids)
    for q in queries:
        allowed = np.isin(where, probed_values(index.cells(), q))
        expected, scores = exact_in(ids, x, q, limit, allowed)
        assert_same(index.query(q, limit), expected, scores, ids)


@SERVER_SLOW
def test_cells_are_learned_again_as_the_index_grows(index, small_cells,
                                                    monkeypatch):
    x, texts = clustered(sized(index, 4000))
    ids = make_ids(len(x))
    first_n = len(x) // 4
    index.upsert(ids[:first_n], x[:first_n], [{} for _ in range(first_n)])
    index.maintain(min_points=first_n // 2)
    first = index.cells()
    # cells of 25 points (small_cells)
    assert first.complete and len(first) == first_n // 25
    assert first.ordinal == 0

    # grown 4x: written with the old cells, which now hold 100 points each
    index.upsert(ids[first_n:], x[first_n:],
                 [{} for _ in range(len(x) - first_n)])
    assert np.isin(stored_cells(index, ids), list(first.values())).all()
    # all of them moved
    assert index.maintain(min_points=first_n // 2) == len(x)
    cells = index.cells()
    assert len(cells) == cl.num_cells(len(x)) == len(x) // 25
    assert cells.ordinal == 1 and cells.complete and cells.previous is None
    assert cells.learned_from == len(x)
    np.testing.assert_array_equal(stored_cells(index, ids), cells.assign(x))
    assert len(cells.probe(texts[0])) == cl.num_probed(len(cells)) + 1
    assert_exact_within_probed(index, ids, x, unit(texts[:5]))
    # not outgrown again: nothing to do
    assert index.maintain(min_points=first_n // 2) == 0
    assert index.cells().generation == cells.generation


@SERVER_SLOW
def test_while_points_move_searches_probe_old_and_new_cells(index,
                                                            small_cells,
                                                            monkeypatch):
    """Mid-move (points in old and new cells) and after it, until the old
    cells are dropped, a search is exact within the probed cells of both,
    and a point written meanwhile gets a new cell from its writer."""
    from fiftyone_ai_search.store import upkeep

    n = sized(index, 4000)  # the index before the points written mid-move
    monkeypatch.setattr(cl, "SWITCH_GRACE_S", 3600.0)
    monkeypatch.setattr(upkeep, "ASSIGN_CHUNK", n // 8)
    x, texts = clustered(n + n // 20, seed=3)
    ids = make_ids(len(x))
    first = n // 4  # the cells learned from these, then grown 4x
    index.upsert(ids[:first], x[:first], [{} for _ in range(first)])
    index.maintain(min_points=first // 2)
    index.upsert(ids[first:n], x[first:n], [{} for _ in range(n - first)])
    checked = []

    def midway(done, _):
        if done == 3 * n // 8:  # three rounds: both kinds of points
            cells = index.cells()
            assert cells.ordinal == 1 and cells.previous is not None
            where = stored_cells(index, ids[:n])
            assert np.isin(where, list(cells.values())).sum() == done
            assert_exact_within_probed(index, ids[:n], x[:n],
                                       unit(texts[:4]))
            index.upsert(ids[n:], x[n:], [{} for _ in ids[n:]])
            checked.append(done)

    index.maintain(min_points=first // 2, progress=midway)
    assert checked
    cells = index.cells()
    assert cells.previous is not None  # kept for the grace period
    np.testing.assert_array_equal(stored_cells(index, ids), cells.assign(x))
    assert_exact_within_probed(index, ids, x, unit(texts[:4]))
    for i in range(n, len(x), 20):  # written mid-move: found at once
        assert index.query(x[i], 1)[0][0] == ids[i]

    monkeypatch.setattr(cl, "SWITCH_GRACE_S", 0.0)
    assert index.maintain(min_points=first // 2) == 0
    cells = index.cells()
    assert cells.previous is None and cells.complete
    assert_exact_within_probed(index, ids, x, unit(texts[:4]))


@pytest.mark.slow
@pytest.mark.parametrize("call", [1, 2, 16],
                         ids=["learned", "one-round", "half"])
def test_a_move_to_new_cells_killed_at_any_moment_resumes(tmp_path, call,
                                                          small_cells):
    x, texts = clustered(4000, seed=4)
    ids = make_ids(len(x))
    store = outgrown(tmp_path, "moved", ids, x, 4000)
    first = store.cells()
    store.close()

    # held at a round of the move: the new cells learned, then ``call - 1``
    # rounds of 128 points moved to them
    _kill_maintenance_held_at(str(tmp_path), "moved", 128,
                              ("upkeep", "_assign_round", call),
                              small_cells=True)
    assert store.cells().generation != first.generation

    # whatever it left: searches right within what they probe
    assert store.count() == len(x)
    assert store.cells().searchable
    assert_exact_within_probed(store, ids, x, unit(texts[:5]))
    moved = np.isin(stored_cells(store, ids),
                    list(store.cells().values())).sum()

    # the next pass moves only what is left, and drops the old cells
    assert store.maintain(min_points=1000) == len(x) - moved
    cells = store.cells()
    assert cells.ordinal == 1 and cells.previous is None and cells.complete
    np.testing.assert_array_equal(stored_cells(store, ids), cells.assign(x))
    assert_exact_within_probed(store, ids, x, unit(texts[:5]))
    store.close()


@pytest.mark.slow
def test_points_written_by_another_process_during_a_move_are_not_lost(
        tmp_path, small_cells):
    """Another process adds points and replaces some that are being moved:
    none is lost, and each ends in the cell of its latest vector (the move
    never overwrites what a writer wrote meanwhile)."""
    x, texts = clustered(5000, seed=5)
    replaced, _ = clustered(1000, seed=6)
    ids = make_ids(len(x))
    store = outgrown(tmp_path, "busy", ids, x, 4000)
    store.close()

    final = x.copy()
    final[1000:2000] = replaced
    written = list(range(1000, 2000)) + list(range(4000, 5000))
    started = SPAWN.Event()
    writer = SPAWN.Process(target=write_in_steps, args=(
        str(tmp_path), "busy", [ids[i] for i in written], final[written],
        started))
    mover = SPAWN.Process(target=maintain, args=(
        str(tmp_path), "busy", _child_settings(128, small_cells=True)))
    writer.start()
    started.wait(60)
    mover.start()
    writer.join(120)
    mover.join(120)
    assert writer.exitcode == 0 and mover.exitcode == 0

    store.maintain(min_points=1000)  # whatever the writer left behind
    cells = store.cells()
    assert cells.ordinal == 1 and cells.complete and cells.previous is None
    assert store.count() == len(x)
    np.testing.assert_array_equal(stored_cells(store, ids),
                                  cells.assign(final))
    for i in range(0, len(x), 97):
        assert store.query(final[i], 1)[0][0] == ids[i]
    assert_exact_within_probed(store, ids, final, unit(texts[:5]))
    store.close()


def test_a_round_holds_the_index_from_its_reads_to_its_writes(
        tmp_path, small_cells, monkeypatch):
    """Another process took the index (a worker's sync, kept open) when a
    pass's round began, and replaced the round's points between the round's
    reads of their vectors and its write of their cells: the round must not
    give them the cells of the vectors it read. It holds the index from its
    reads to its writes, so the replacement waits for the round's end and
    gets its own cells."""
    from fiftyone_ai_search.store import upkeep

    x, _ = clustered(3000, seed=5)
    replaced, _ = clustered(3000, seed=6)
    ids = make_ids(len(x))
    store = EdgeStore("taken", tmp_path, lock_timeout=60)
    store.ensure(INFO)
    store.upsert(ids, x, [{} for _ in ids])  # no cells yet: all learned
    store.close()

    take, taken = SPAWN.Event(), SPAWN.Event()
    replace, done = SPAWN.Event(), SPAWN.Event()
    other = SPAWN.Process(target=take_then_replace, args=(
        str(tmp_path), "taken", ids, replaced, take, taken, replace, done))
    other.start()
    monkeypatch.setattr(upkeep, "ASSIGN_CHUNK", 500)
    first_round, first_write = upkeep._assign_round, EdgeStore._set_field
    rounds, writes = [], []

    def round_begins(*args, **kwargs):
        rounds.append(1)
        if len(rounds) == 1:
            # the other process takes the index before the first round
            take.set()
            assert taken.wait(120)
        return first_round(*args, **kwargs)

    def write_cells(self, key, groups, lacking):
        if key == cl.CELL_KEY and not writes:
            writes.append(1)
            # read, not yet written: the other process replaces the
            # points now if the round let go of the index; else its
            # write waits for the round's end (this wait then ends
            # first, its bound a deadline, never what is checked)
            replace.set()
            done.wait(3)
        return first_write(self, key, groups, lacking)

    monkeypatch.setattr(upkeep, "_assign_round", round_begins)
    monkeypatch.setattr(EdgeStore, "_set_field", write_cells)
    store = EdgeStore("taken", tmp_path, lock_timeout=60)
    store.maintain(min_points=1000)
    other.join(120)
    assert other.exitcode == 0 and writes
    monkeypatch.undo()
    store.maintain(min_points=1000)  # whatever the other left lacking
    np.testing.assert_array_equal(stored_cells(store, ids),
                                  store.cells().assign(replaced))
    store.close()


@SERVER_SLOW
def test_a_pass_finds_points_written_behind_its_scan(index, monkeypatch):
    """A pass's rounds scan on from where the round before stopped; points
    written meanwhile behind that (lower ids, by a process that had not
    read the cells: UNASSIGNED) are found by the scan from the first point
    that ends the pass."""
    from fiftyone_ai_search.store import base, sample_id_to_point_id, upkeep

    n = sized(index, 3000)
    monkeypatch.setattr(upkeep, "ASSIGN_CHUNK", n // 6)
    x, _ = clustered(n, seed=5)
    ids = make_ids(len(x))
    behind = list(range(0, n, 10))
    first = [i for i in range(n) if i % 10]
    index.upsert([ids[i] for i in first], x[first], [{} for _ in first])
    written = []

    def midway(done, _):
        if done >= n // 2 and not written:
            index._upsert_points(
                [sample_id_to_point_id(ids[i]) for i in behind],
                base.normalize_rows(x[behind]),
                [{"sample_id": ids[i], cl.CELL_KEY: cl.UNASSIGNED,
                  ranks.RANK_KEY: ranks.rank_of(ids[i])} for i in behind])
            written.append(done)

    assert index.maintain(min_points=n // 3, progress=midway) == n
    assert written
    np.testing.assert_array_equal(stored_cells(index, ids),
                                  index.cells().assign(x))
    assert index.maintain(min_points=n // 3) == 0


def _until(condition, what, seconds=60.0):
    """Waits for ``condition()``: the bound tells a hang from a wait."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_the_vectors_are_read_ahead_of_the_scans_within_a_window(
        tmp_path, monkeypatch):
    """A pass that learns the cells reads every original vector: the
    reads ahead of its scans go in sequence, at most a window ahead of the
    share of the points scanned (at 10M 512-d points the vectors, 20 GB,
    outgrow this machine's memory), and end with the pass."""
    from fiftyone_ai_search.store import edge

    monkeypatch.setattr(edge, "READ_AHEAD_CHUNK", 1024)
    files = []
    for name in ("chunk_10.mmap", "chunk_2.mmap"):
        path = tmp_path / "segments" / "s" / "vector_storage" / "vectors"
        path.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(os.urandom(10 * 1024))
        files.append(str(path / name))
    segments = edge._vector_files(str(tmp_path))
    # in the order the segment stores its points: chunk 2 before chunk 10
    assert [[os.path.basename(p) for p, _ in s] for s in segments] == [
        ["chunk_2.mmap", "chunk_10.mmap"]]
    ahead = edge._VectorsAhead(segments, num_points=10, window=4 * 1024)
    reader = threading.Thread(target=ahead.run, daemon=True)
    reader.start()
    _until(lambda: ahead.read == 4 * 1024, "the window read before a scan")
    time.sleep(0.2)
    assert ahead.read == 4 * 1024  # and no more, until the scans move
    ahead.scanned(5)  # half the points: half the bytes, and the window
    _until(lambda: ahead.read == 14 * 1024, "the window past half")
    ahead.scanned(5)
    reader.join(60)
    assert not reader.is_alive() and ahead.read == 20 * 1024

    stopped = edge._VectorsAhead(segments, num_points=10, window=1024)
    reader = threading.Thread(target=stopped.run, daemon=True)
    reader.start()
    _until(lambda: stopped.read == 1024, "the window read")
    stopped.stop()
    reader.join(60)
    assert not reader.is_alive() and stopped.read == 1024


def test_a_pass_that_learns_ends_its_reads_ahead(tmp_path):
    store = EdgeStore("ahead", str(tmp_path))
    store.ensure(INFO)
    x, _ = clustered(3000)
    store.upsert(make_ids(len(x)), x, [{} for _ in range(len(x))])
    store.maintain(min_points=1000)
    assert store.cells().complete and store._ahead is None
    _until(lambda: not any(t.name == "ai-search-vectors-ahead"
                           for t in threading.enumerate()),
           "the reader's end")
    store.close()


def test_a_thread_that_reuses_its_block_of_scores_gets_the_same_cells():
    """The upkeep's worker scores every stretch into one block kept from
    one call to the next (cells.reuse_scores): each point gets the same
    cell as by a product of its own, whatever the stretches' sizes and
    the cells' number from one call to the next; a thread that did not
    ask keeps no block."""
    rng = np.random.default_rng(3)
    small = cl.Cells(unit(rng.standard_normal((40, DIM))), generation=1)
    large = cl.Cells(unit(rng.standard_normal((300, DIM))), generation=2,
                     ordinal=1)
    got, expected = [], []
    for cells, rows in ((small, 5), (small, cl._ROWS + 3), (large, 7),
                        (large, 2 * cl._ROWS), (small, 1)):
        x = rng.standard_normal((rows, DIM)).astype(np.float32)
        got.append((cells, x))
        expected.append(np.argmax(x @ cells.centres.T, axis=1)
                        + cells.offset)
    answers = []

    def worker():
        cl.reuse_scores()
        answers.extend(cells.assign(x) for cells, x in got)
        answers.append(cl._kept.block.shape)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    for cells_of, expect in zip(answers, expected):
        np.testing.assert_array_equal(cells_of, expect)
    # grown to the largest stretch scored at once, of the last cells' number
    assert answers[-1] == (cl._ROWS, len(small))
    assert getattr(cl._kept, "block", None) is None


WIDE = IndexInfo(model="ViT-B-32", pretrained="laion2b",
                 model_identity="vitb32@abc", dim=512)


def _wide_index(tmp_path, n=17000):
    """An index of ``n`` 512-d points (more than one chunk file of the
    engine's appendable segment: 16,384 such vectors a chunk), some
    deleted, some deleted and written again, some written again in place."""
    store = EdgeStore("wide", str(tmp_path))
    store.ensure(WIDE)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, WIDE.dim)).astype(np.float32)
    ids = make_ids(n)
    store.upsert(ids, x, [{} for _ in ids])
    store.delete(ids[100:200])
    again = rng.standard_normal((30, WIDE.dim)).astype(np.float32)
    # across the first chunk's end where there are two
    at = min(16380, n - 20)
    store.upsert(ids[150:160] + ids[at : at + 20], again,
                 [{} for _ in range(30)])
    return store


def test_the_vectors_read_from_the_files_are_the_engines(tmp_path):
    """A pass over every point reads the original vectors straight from
    the segments' files (store/segment_vectors.py), appendable or compacted:
    each row equals the engine's own vector of the point, deleted points
    are not found, and points written again are read where they now are."""
    store = _wide_index(tmp_path)
    direct = store._segment_vectors()
    assert direct is not None and len(direct) == 17000 - 100 + 10
    records = store._scroll_points(True)
    expected = store._stored_rows(records, unit=False)
    rows, found = direct.rows([r.id for r in records])
    assert found.all()
    np.testing.assert_array_equal(rows, expected)
    # as the ids' strings too, and a point that is not there
    rows, found = direct.rows([str(records[7].id), "0" * 8 + "-0000-0000"
                               "-0000-" + "f" * 12])
    assert found.tolist() == [True, False]
    np.testing.assert_array_equal(rows[0], expected[7])
    assert not rows[1].any()
    # a pass's hook: the same rows, from records the scan brought with
    # their vectors or without (what a pass reading the files scans)
    store._direct = direct
    assert store._pass_reads_files()
    np.testing.assert_array_equal(store._original_rows(records), expected)
    bare = store._scroll_points(False)
    assert [r.id for r in bare] == [r.id for r in records]
    np.testing.assert_array_equal(store._original_rows(bare), expected)
    assert store._direct is direct
    store._direct = None
    assert not store._pass_reads_files()

    # compacted: an immutable segment's one file of rows, read as well
    assert store._compact() is not False
    direct = store._segment_vectors()
    assert direct is not None and len(direct) == 17000 - 100 + 10
    assert any(files.single for files in direct._segments)
    records = store._scroll_points(True)
    rows, found = direct.rows([r.id for r in records])
    assert found.all()
    np.testing.assert_array_equal(rows, store._stored_rows(records,
                                                           unit=False))
    # then some of its points deleted, some written again (the write goes
    # to an appendable segment, the immutable one marks its row deleted)
    ids = [r.id for r in records]
    samples = [point_id_to_sample_id(i) for i in ids]
    store.delete(samples[:50])
    again = np.random.default_rng(6).standard_normal(
        (40, WIDE.dim)).astype(np.float32)
    store.upsert(samples[1000:1040], again, [{} for _ in range(40)])
    assert not direct.current()
    direct = store._segment_vectors()
    assert len(direct) == 17000 - 100 + 10 - 50
    rows, found = direct.rows(ids)
    assert not found[:50].any() and found[50:].all()
    records = store._scroll_points(True)
    assert [r.id for r in records] == ids[50:]
    np.testing.assert_array_equal(rows[50:], store._stored_rows(
        records, unit=False))
    # as a pass reads them
    store._direct = direct
    np.testing.assert_array_equal(store._original_rows(records),
                                  store._stored_rows(records, unit=False))
    store.close()


def test_vectors_this_process_wrote_since_the_files_were_read_are_read_as_written(
        tmp_path):
    """A write of this process (another thread's, between two rounds of a
    pass) leaves the files as they were until the kept-open shard is
    flushed: a point written again is still found in its compacted
    segment, with its old vector. The rows are read again, flushed."""
    store = _wide_index(tmp_path)
    assert store._compact() is not False
    with store.session():  # the shard kept open after, as a worker's
        store._direct = direct = store._segment_vectors()
    records = store._scroll_points(True)[:10]
    again = np.random.default_rng(7).standard_normal(
        (1, WIDE.dim)).astype(np.float32)
    with store.session():
        store.upsert([point_id_to_sample_id(records[5].id)], again, [{}])
        assert direct.current()  # nothing of it in the files yet
        # (the first row, unchanged, is the one compared with the engine)
        rows = store._original_rows(records)
    np.testing.assert_array_equal(
        rows, store._stored_rows(store._scroll_points(True)[:10],
                                 unit=False))
    assert store._direct is not direct
    store.close()


def test_vectors_are_read_through_the_engine_where_the_files_are_not_understood(
        tmp_path, monkeypatch):
    """An engine version the layout was not checked on, files changed
    since they were read, or rows that differ from the engine's sample of
    them: the rows come from the engine."""
    from fiftyone_ai_search.store import edge, segment_vectors

    store = _wide_index(tmp_path, n=3000)
    records = store._scroll_points(True)
    expected = store._stored_rows(records, unit=False)

    monkeypatch.setattr(segment_vectors, "KNOWN_VERSIONS", ("0.0.",))
    assert store._segment_vectors() is None
    monkeypatch.undo()

    # another holder's write since the files were read: read again
    direct = store._segment_vectors()
    store.upsert(make_ids(1, start=5000), expected[:1], [{}])
    assert not direct.current()
    store._direct = direct
    np.testing.assert_array_equal(store._original_rows(records), expected)
    assert store._direct is not direct and store._direct.current()

    # rows that differ from the engine's: the rest of the pass through it
    monkeypatch.setattr(edge, "DIRECT_CHECK_EVERY", 1000)
    real = segment_vectors.SegmentVectors.rows

    def shifted(self, point_ids):
        rows, found = real(self, point_ids)
        return np.roll(rows, 1, axis=0), found

    monkeypatch.setattr(segment_vectors.SegmentVectors, "rows", shifted)
    np.testing.assert_array_equal(store._original_rows(records), expected)
    assert store._direct is None
    # the same where the scan brought no vectors: the engine's retrieved
    store._direct = store._segment_vectors()
    bare = store._scroll_points(False)
    np.testing.assert_array_equal(
        store._original_rows(bare),
        store._stored_rows(store._scroll_points(True), unit=False))
    assert store._direct is None
    monkeypatch.undo()

    store.close()


def test_a_pass_reading_the_files_gives_the_cells_of_the_engines_vectors(
        tmp_path, small_cells, monkeypatch):
    """Every point of a pass that read its vector from the files gets the
    cell of the most similar centre to its vector as the engine holds it,
    once: its rounds read their points a stretch at a time (each scan
    starts at the last point of the stretch before, not yet given its
    cell)."""
    from fiftyone_ai_search.store import upkeep

    monkeypatch.setattr(upkeep, "ASSIGN_STRETCH", 64)
    monkeypatch.setattr(upkeep, "ASSIGN_CHUNK", 200)
    store = EdgeStore("cells", str(tmp_path))
    store.ensure(INFO)
    x, _ = clustered(3000)
    ids = make_ids(len(x))
    store.upsert(ids, x, [{} for _ in ids])
    read = []
    original = store._original_rows

    def counted(records):
        # read from the files, and scanned without the engine's vectors
        read.append(store._direct is not None
                    and all(r.vector is None for r in records))
        return original(records)

    store._original_rows = counted
    assert store.maintain(min_points=1000) == len(ids)
    # 15 rounds of 3 stretches of 64 and one of 8 (200 = 3 x 64 + 8)
    assert len(read) == 15 * 4 and all(read)
    cells = store.cells()
    records = store._retrieve_points(
        [r.id for r in store._scroll_points(False)], False, True)
    by_id = dict(zip((str(r.id) for r in records),
                     store._stored_rows(records, unit=False)))
    from fiftyone_ai_search.store import sample_id_to_point_id

    vectors = np.stack([by_id[sample_id_to_point_id(i)] for i in ids])
    np.testing.assert_array_equal(stored_cells(store, ids),
                                  cells.assign(vectors))
    store.close()


def _other_threads_cpu_s():
    """The CPU seconds of this process's threads but the calling one."""
    me, total = threading.get_native_id(), 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"),
                    reason="threads' CPU is read from Linux's /proc")
def test_a_search_leaves_no_thread_working_behind_it():
    """A search's product of its query with the cells' centres (2,000 of
    512-d at 1M points) runs on the searching thread: OpenBLAS's pool,
    which takes a product of 1,000 rows or more, spun a core for ~0.1 s
    after each search, and on 2 cores that is the core another process's
    search or write needs (issue 29)."""
    from threadpoolctl import threadpool_info
    if max([i["num_threads"] for i in threadpool_info()
            if i["user_api"] == "blas"] or [1]) < 2:
        pytest.skip("BLAS runs on one thread here: nothing could spin")
    rng = np.random.default_rng(3)
    cells = cl.Cells(unit(rng.standard_normal((2000, 512))), generation=1,
                     complete=True)
    queries = unit(rng.standard_normal((11, 512)))
    cells.probe(queries[0])
    before = _other_threads_cpu_s()
    for q in queries[1:]:
        assert len(cells.probe(q)) == cl.num_probed(len(cells)) + 1
        time.sleep(0.05)  # a user's pace: the pool would spin meanwhile
    spun = _other_threads_cpu_s() - before
    # ~0.5 s of another thread's CPU for 10 searches where the pool spun
    assert spun < 0.15, f"other threads worked {spun:.2f} s beside 10 searches"
