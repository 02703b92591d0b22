"""Near-duplicates through an index's cells (issue 23): the same groups as
comparing every pair, at several thresholds, with planted copies of
several closeness; on the real embedded index with its cells forced on at
a small size, and on the shapes world through the SDK."""

import multiprocessing
import os
import shutil
import signal
import time
import uuid

import fiftyone as fo
import fiftyone.brain as fob
import numpy as np
import pytest
from PIL import Image

import fiftyone_ai_search as ais
from fiftyone_ai_search import brain, duplicates, embeddings, uniqueness
from fiftyone_ai_search.index import indexes
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search.query import pairs
from fiftyone_ai_search.store import cells as cl
from fiftyone_ai_search.store.edge import EdgeStore
from tests.helpers import count_pair_passes, shapes_dataset
from tests.test_store import INFO, DIM, make_ids, unit

THRESHOLDS = [0.999, 0.97, 0.93, 0.85]


def planted(n, seed=0):
    """Clustered unit vectors, a tenth of them copied once or twice at
    several closeness (exact copies, ~0.99, ~0.96, ~0.9): the copies follow
    the rest, in a shuffled order."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, DIM))
    x = unit(centres[rng.integers(0, 30, n)]
             + 0.8 * rng.standard_normal((n, DIM)))
    originals = rng.choice(n, n // 10, replace=False)
    copies = []
    for i, o in enumerate(originals):
        for _ in range(1 + i % 2):
            noise = [0.0, 0.1, 0.2, 0.35][i % 4]
            copies.append(unit(x[o] + noise / np.sqrt(DIM)
                               * rng.standard_normal(DIM)))
    x = np.vstack([x, np.array(copies)]).astype(np.float32)
    return x[rng.permutation(len(x))]


def exact_groups(ids, x, threshold):
    return duplicates.group(ids, x, threshold)


def assert_same_groups(got, expected):
    """The same groups, each with the same duplicates at the same scores,
    best first. Two copies of one original can score within float32's
    rounding of each other (the cells' products and the exact ones add in
    another order): those may come in either order, nothing else may."""
    assert list(got) == list(expected)
    for kept, dups in expected.items():
        mine, exact = dict(got[kept]), dict(dups)
        assert len(mine) == len(got[kept]) and set(mine) == set(exact), kept
        np.testing.assert_allclose([mine[d] for d in exact],
                                   list(exact.values()), atol=1e-5)
        scores = [s for _, s in got[kept]]
        assert all(a >= b - 1e-5 for a, b in zip(scores, scores[1:])), kept


def groups_by_cells(store, ids, threshold, probe=None):
    position = {sid: i for i, sid in enumerate(ids)}

    def rows_of(found):
        return np.array([position.get(i, -1) for i in found], np.int64)

    lo, hi, sim, seen = pairs.pairs_by_cells(
        store.cells(), store.get_cell_vectors, rows_of, threshold,
        probe=probe)
    assert seen == store.count()
    return pairs.named_groups(ids, *pairs.group_pairs(len(ids), lo, hi, sim))


@pytest.fixture
def celled(tmp_path):
    """An embedded index of 3,300 planted vectors, its cells learned (forced
    on at this size); 200 more written after, without a cell."""
    x = planted(3000)
    ids = make_ids(len(x))
    store = EdgeStore("dups", tmp_path / "indexes", lock_timeout=20)
    store.ensure(INFO)
    store.upsert(ids[:-200], x[:-200], [{} for _ in ids[:-200]])
    store.maintain(min_points=1000)
    known = store.cells()
    assert known is not None and known.complete and len(known) >= 8
    store.upsert(ids[-200:], x[-200:], [{} for _ in ids[-200:]])
    yield store, ids, x
    store.close()


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_pairs_through_the_cells_group_as_every_pair(celled, threshold):
    store, ids, x = celled
    expected = exact_groups(ids, x, threshold)
    assert expected  # the planted copies
    # the band alone is exact
    assert_same_groups(groups_by_cells(store, ids, threshold), expected)
    if threshold >= 0.9:
        # the nearest cells within it (what the SDK runs) too; far pairs
        # (0.85 in 16-d) may lie past a point's few nearest cells
        assert_same_groups(
            groups_by_cells(store, ids, threshold, pairs.PROBE), expected)


def exact_nearest(x, k=3):
    found = pairs.nearest_every_pair(x, k)
    return found.rows, found.sims


def brain_uniqueness(x):
    """The Brain's formula (tests/test_brain.py), every pair compared."""
    dists = 1 - x @ x.T
    np.fill_diagonal(dists, np.inf)
    nearest = np.sort(dists, axis=1)[:, :3]
    expected = (nearest * [0.6, 0.3, 0.1]).mean(axis=1)
    return expected / expected.max()


def test_nearest_through_the_cells(celled):
    store, ids, x = celled
    rows, sims = exact_nearest(x)
    # every pair compared exactly: the sink keeps the 3 nearest, best first
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    np.testing.assert_allclose(sims, -np.sort(-full, axis=1)[:, :3],
                               atol=1e-5)
    np.testing.assert_allclose(uniqueness.scores_of(sims),
                               brain_uniqueness(x), atol=1e-5)
    position = {sid: i for i, sid in enumerate(ids)}

    def rows_of(found):
        return np.array([position[i] for i in found], np.int64)

    # through every cell (probe None): the same neighbours
    _, got_sims, present, seen = pairs.nearest_by_cells(
        store.cells(), store.get_cell_vectors, rows_of, len(ids), 3,
        probe=None)
    assert seen == len(ids) and present.all()
    np.testing.assert_allclose(got_sims, sims, atol=1e-5)
    # the nearest cells only (what compute_uniqueness runs): a neighbour
    # may be missed, and a farther one takes its place
    _, near_sims, _, _ = pairs.nearest_by_cells(
        store.cells(), store.get_cell_vectors, rows_of, len(ids), 3)
    assert (near_sims <= sims + 1e-5).all()
    close = np.isclose(near_sims, sims, atol=1e-5).all(axis=1).mean()
    assert close > 0.9, close


def _hold(path, holding):
    """Holds the index at ``path`` (its shard open, answering the others'
    reads) until killed."""
    store = EdgeStore("dups", path, lock_timeout=60)
    with store.session():
        store.count()
    holding.set()
    while True:
        with store.session():
            store.count()
        time.sleep(0.05)


@pytest.mark.slow
def test_cells_read_through_the_process_holding_the_index(celled):
    # the holder packs the rows in one block; the reader takes the block
    # as it is: the same ids and bits as read here once the holder is gone
    from fiftyone_ai_search.store import edge

    store, ids, x = celled
    values = [store.cells().offset + c for c in (0, 3, 5)]
    store.close()
    spawn = multiprocessing.get_context("spawn")
    holding = spawn.Event()
    holder = spawn.Process(target=_hold, args=(store.root_dir, holding))
    holder.start()
    try:
        assert holding.wait(120)
        asked = edge.stats["asked"]
        served_ids, served = store.get_cell_vectors(values)
        assert edge.stats["asked"] == asked + 1
        assert served_ids and served.dtype == np.float32
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(60)
        here_ids, here = store.get_cell_vectors(values)
        assert edge.stats["asked"] == asked + 1
        assert here_ids == served_ids
        assert np.array_equal(here, served)
    finally:
        if holder.is_alive():
            holder.kill()
        store.close()


def test_a_subset_in_its_own_order_groups_as_every_pair(celled):
    store, ids, x = celled
    rng = np.random.default_rng(3)
    pick = rng.choice(len(ids), 2000, replace=False)  # shuffled, a subset
    sub = [ids[i] for i in pick]
    expected = exact_groups(sub, x[pick], 0.93)
    assert expected
    assert_same_groups(groups_by_cells(store, sub, 0.93), expected)


def test_the_boundary_band_is_exact_where_cells_cut_between_copies(
        tmp_path):
    # every point has a copy at ~0.97 and many cells: many pairs straddle
    # a boundary, and none is missed
    rng = np.random.default_rng(7)
    base = unit(rng.standard_normal((1200, DIM)))
    x = np.vstack([base, unit(base + 0.035 * rng.standard_normal(
        base.shape))]).astype(np.float32)
    ids = make_ids(len(x), seed=4)
    store = EdgeStore("band", tmp_path / "indexes", lock_timeout=20)
    store.ensure(INFO)
    store.upsert(ids, x, [{} for _ in ids])
    store.maintain(min_points=1000)
    try:
        known = store.cells()
        cell_of = known.assign(x)
        expected = exact_groups(ids, x, 0.9)
        split = sum(cell_of[i] != cell_of[i + 1200] for i in range(1200))
        assert split > 20  # copies in different cells
        assert_same_groups(groups_by_cells(store, ids, 0.9), expected)
    finally:
        store.close()


def _copy_variants(dataset, tmp_path):
    """Adds near-copies of some shape images: exact copies of the file,
    JPEGs re-encoded at quality 60, 3% crops and 80% resizes."""
    folder = tmp_path / ("copies-" + uuid.uuid4().hex[:6])
    os.makedirs(folder)
    samples = []
    for i, s in enumerate(dataset.limit(24)):
        kind = ["copy", "jpeg", "crop", "resize"][i % 4]
        path = str(folder / f"{i}-{kind}.jpg")
        if kind == "copy":
            path = path[:-4] + os.path.splitext(s.filepath)[1]
            shutil.copyfile(s.filepath, path)
        else:
            img = Image.open(s.filepath).convert("RGB")
            w, h = img.size
            if kind == "crop":
                img = img.crop((int(0.03 * w), int(0.03 * h),
                                w - int(0.03 * w), h - int(0.03 * h)))
            elif kind == "resize":
                img = img.resize((int(0.8 * w), int(0.8 * h)))
            img.save(path, format="JPEG", quality=60)
        samples.append(fo.Sample(filepath=path, copy_of=s.id, kind=kind))
    dataset.add_samples(samples)


def test_planted_copies_on_the_shapes_world_group_as_every_pair(
        tmp_path, monkeypatch):
    passes = count_pair_passes(monkeypatch)
    nearest = pairs.nearest_by_cells

    def counted_nearest(*args, **kwargs):
        passes.append("nearest")
        return nearest(*args, **kwargs)

    monkeypatch.setattr(pairs, "nearest_by_cells", counted_nearest)
    # at this size exact costs less: through the cells all the same
    monkeypatch.setattr(duplicates, "EXACT_PAIR_S", 1.0)
    # cells of ~3 points here (an index's hold ~500): a point's few
    # nearest cells hold a dozen points, so the whole band (exact)
    monkeypatch.setattr(pairs, "PROBE", None)
    dataset = shapes_dataset(tmp_path, num_samples=160)
    _copy_variants(dataset, tmp_path)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    embeddings.maintain_index(dataset, min_points=100)
    store = indexes.open_ref(st.get(dataset)["index"])
    try:
        known = store.cells()
        assert known is not None and known.complete and known.previous is None
    finally:
        store.close()
    ids, x = ais.get_embeddings(dataset)
    for threshold in [0.999, 0.98, 0.95, 0.9]:
        expected = exact_groups(ids, x, threshold)
        got = ais.near_duplicate_groups(dataset, threshold)
        assert_same_groups(got, expected)
    assert passes == [0.999, 0.98, 0.95, 0.9]  # through the cells
    # every exact copy is in its original's group
    groups = ais.near_duplicate_groups(dataset, 0.98)
    group_of = {}
    for kept, dups in groups.items():
        for sid in [kept, *(d for d, _ in dups)]:
            group_of[sid] = kept
    for copy_id, original, kind in zip(*dataset.exists("copy_of").values(
            ["id", "copy_of", "kind"])):
        if kind == "copy":
            assert group_of.get(copy_id) == group_of.get(original) != None
    # a view: its own samples, in its order
    view = dataset.sort_by("filepath", reverse=True).limit(150)
    vids, vx = ais.get_embeddings(view)
    assert_same_groups(ais.near_duplicate_groups(view, 0.95),
                       exact_groups(vids, vx, 0.95))
    # uniqueness through the same cells: the Brain's scores, and None for
    # a sample the index does not hold yet
    ais.compute_uniqueness(dataset, "u_cells")
    assert passes[-1] == "nearest"
    got = dict(zip(*dataset.values(["id", "u_cells"])))
    np.testing.assert_allclose([got[i] for i in ids], brain_uniqueness(x),
                               atol=1e-5)
    late = dataset.add_sample(fo.Sample(filepath=dataset.first().filepath))
    ais.compute_uniqueness(dataset, "u_cells")
    assert dataset[late].u_cells is None


def test_the_server_backend_reads_cells_as_the_embedded_one(
        tmp_path, monkeypatch):
    # the server backend (qdrant-client's :memory: mode speaks its API)
    # with its cells forced on: each cell's points read through
    # ServerStore._vectors_in (pages of a few points here, so that a read
    # joins several), and the near-duplicates found through them are the
    # embedded backend's, and every pair's
    from fiftyone_ai_search.store import server

    monkeypatch.setattr(server, "ID_CHUNK", 100)
    monkeypatch.setattr(duplicates, "EXACT_PAIR_S", 1.0)
    monkeypatch.setattr(pairs, "PROBE", None)  # the whole band: exact
    read = []
    vectors_in = server.ServerStore._vectors_in

    def counted(self, key, values):  # a spy: the real read runs
        point_ids, vectors = vectors_in(self, key, values)
        read.append(len(point_ids))
        return point_ids, vectors

    monkeypatch.setattr(server.ServerStore, "_vectors_in", counted)
    x = planted(1200, seed=1)
    ids = make_ids(len(x), seed=1)
    stores = [EdgeStore("dups", tmp_path / "indexes", lock_timeout=20),
              server.ServerStore("dups_" + uuid.uuid4().hex[:8],
                                 location=":memory:")]
    try:
        for store in stores:
            store.ensure(INFO)
            store.upsert(ids[:-200], x[:-200], [{} for _ in ids[:-200]])
            store.maintain(min_points=500)
            known = store.cells()
            assert known is not None and known.complete and len(known) > 1
            # written after the cells were learned
            store.upsert(ids[-200:], x[-200:], [{} for _ in ids[-200:]])
        edge, srv = stores
        # every point in the server's cells, each once, as stored
        known = srv.cells()
        got_ids, got_x = srv.get_cell_vectors(
            [cl.UNASSIGNED] + [known.offset + c for c in range(len(known))])
        assert sorted(got_ids) == sorted(ids)
        row = {sid: i for i, sid in enumerate(ids)}
        np.testing.assert_allclose(got_x, x[[row[i] for i in got_ids]],
                                   atol=1e-6)
        assert srv.get_cell_vectors([])[0] == []
        for threshold in [0.999, 0.97, 0.93]:
            expected = exact_groups(ids, x, threshold)
            del read[:]
            assert_same_groups(duplicates._groups_in(srv, ids, threshold),
                               expected)
            # through the server's cells, a read of several pages
            assert sum(read) == len(ids) and max(read) > server.ID_CHUNK
            assert_same_groups(duplicates._groups_in(edge, ids, threshold),
                               expected)
    finally:
        for store in stores:
            store.drop()


def symmetric(m, dim, seed=0):
    """``2m`` unit vectors whose mean is zero: planted copies of several
    closeness (as :func:`planted`), and each vector's opposite. The Brain's
    sklearn backend centres the vectors it is given before it measures
    cosine distances; these it measures as they are."""
    rng = np.random.default_rng(seed)
    x = unit(rng.standard_normal((m, dim)))
    for i in range(m // 5):
        noise = [0.0, 0.1, 0.2, 0.35][i % 4]
        x[m - 1 - i] = unit(x[i] + noise / np.sqrt(dim)
                            * rng.standard_normal(dim))
    x = np.vstack([x, -x]).astype(np.float32)
    return x[rng.permutation(len(x))]


def test_the_brains_find_duplicates_through_the_cells_as_sklearns(
        tmp_path, monkeypatch):
    # the Brain's find_duplicates on our index goes through the same cells
    # (at this size exact costs less, and cells of a few points: the whole
    # band), and finds what the Brain's sklearn backend finds on the same
    # vectors: each point's neighbours within the distance (not itself),
    # the kept and duplicate samples and each duplicate's kept one
    monkeypatch.setattr(duplicates, "EXACT_PAIR_S", 1.0)
    monkeypatch.setattr(pairs, "PROBE", None)
    passes = count_pair_passes(monkeypatch)
    dataset = shapes_dataset(tmp_path, num_samples=160)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    ids = dataset.values("id")
    ours = dataset.load_brain_results(brain.DEFAULT_BRAIN_KEY)
    x = symmetric(80, len(ais.get_embeddings(dataset)[1][0]))
    ours.add_to_index(x, ids)  # the planted vectors replace the images'
    embeddings.maintain_index(dataset, min_points=100)
    got_ids, got_x = ais.get_embeddings(dataset)
    assert got_ids == ids
    np.testing.assert_allclose(got_x, x, atol=1e-6)
    fob.compute_similarity(dataset, embeddings=x, backend="sklearn",
                           brain_key="sk")
    theirs = dataset.load_brain_results("sk")
    ours = dataset.load_brain_results(brain.DEFAULT_BRAIN_KEY)
    for thresh in [0.001, 0.02, 0.05, 0.12]:
        del passes[:]
        got, got_dists = ours._radius_neighbors(thresh=thresh,
                                                return_dists=True)
        assert passes == [pytest.approx(1 - thresh)]  # through the cells
        want, want_dists = theirs._radius_neighbors(thresh=thresh,
                                                    return_dists=True)
        assert len(got) == len(want) == len(ids)
        for row, (g, w) in enumerate(zip(got, want)):
            assert sorted(g) == sorted(w), row
            np.testing.assert_allclose(
                sorted(got_dists[row]), sorted(want_dists[row]), atol=1e-5)
        ours.find_duplicates(thresh=thresh)
        theirs.find_duplicates(thresh=thresh)
        assert sorted(ours.unique_ids) == sorted(theirs.unique_ids)
        assert ours.duplicate_ids == theirs.duplicate_ids
        assert {k: [d for d, _ in v] for k, v in
                ours.neighbors_map.items()} == {
            k: [d for d, _ in v] for k, v in theirs.neighbors_map.items()}
        # the same groups as near_duplicate_groups (thresh: a distance)
        groups = ais.near_duplicate_groups(dataset, 1 - thresh)
        assert {k: sorted(d for d, _ in v) for k, v in groups.items()} == {
            k: sorted(d for d, _ in v) for k, v in ours.neighbors_map.items()}
        assert groups  # the planted copies
    # below the cells' size (a small view): every pair, exactly, as sklearn
    monkeypatch.setattr(duplicates, "EXACT_PAIR_S", 0.0)
    view = dataset.limit(50)
    with ours.use_view(view), theirs.use_view(view):
        del passes[:]
        got = ours._radius_neighbors(thresh=0.05)
        want = theirs._radius_neighbors(thresh=0.05)
    assert passes == []
    assert [sorted(g) for g in got] == [sorted(w) for w in want]


def test_a_small_view_of_a_large_index_is_compared_exactly():
    # reading a million points' cells costs more than 1,000 samples' pairs
    assert duplicates._exact_is_cheaper(1_000, 1_000_000)
    assert not duplicates._exact_is_cheaper(1_000_000, 1_000_000)


def test_an_index_without_cells_stays_exact(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=40)
    _copy_variants(dataset, tmp_path)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    ids, x = ais.get_embeddings(dataset)
    assert_same_groups(ais.near_duplicate_groups(dataset, 0.97),
                       exact_groups(ids, x, 0.97))
    # uniqueness: what the Brain's compute_uniqueness gives on our index
    ais.compute_uniqueness(dataset)
    fob.compute_uniqueness(dataset, uniqueness_field="u_brain",
                           similarity_index=brain.DEFAULT_BRAIN_KEY)
    ours, theirs = dataset.values(["uniqueness", "u_brain"])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # a view's samples among themselves
    view = dataset.limit(30)
    ais.compute_uniqueness(view, "u_view")
    vids, vx = ais.get_embeddings(view)
    got = dict(zip(*view.values(["id", "u_view"])))
    np.testing.assert_allclose([got[i] for i in vids], brain_uniqueness(vx),
                               atol=1e-5)
    assert dataset.exists("u_view", False).count() == len(dataset) - 30


def test_copies_added_are_found_after_a_refresh_and_deleted_ones_drop_out(
        tmp_path, monkeypatch):
    # through the cells at this size, and the whole band (cells of a few
    # points, as in the shapes test above)
    monkeypatch.setattr(duplicates, "EXACT_PAIR_S", 1.0)
    monkeypatch.setattr(pairs, "PROBE", None)
    dataset = shapes_dataset(tmp_path, num_samples=120)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    embeddings.maintain_index(dataset, min_points=100)
    before = ais.near_duplicate_groups(dataset, 0.98)
    _copy_variants(dataset, tmp_path)
    # one refresh: the copies are written without a cell yet
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    groups = ais.near_duplicate_groups(dataset, 0.98)
    ids, x = ais.get_embeddings(dataset)
    assert_same_groups(groups, exact_groups(ids, x, 0.98))
    group_of = {}
    for kept, dups in groups.items():
        for sid in [kept, *(d for d, _ in dups)]:
            group_of[sid] = kept
    copies = dataset.exists("copy_of")
    for copy_id, original, kind in zip(*copies.values(
            ["id", "copy_of", "kind"])):
        if kind == "copy":
            assert group_of.get(copy_id) == group_of.get(original) != None
    # deleted and refreshed: they drop out
    dataset.delete_samples(copies)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert_same_groups(ais.near_duplicate_groups(dataset, 0.98), before)
