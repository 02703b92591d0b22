"""The approximate search audits its recall on the data it holds
(store/audit.py): an index whose prompts lose recall at the default probe
count is found out, and the rule it stores holds the target on prompts it
was not audited with; a query the rule cannot serve within its cost bound
is exact; the estimate is what queries then get."""

import os

import numpy as np
import pytest

from fiftyone_ai_search.store import audit
from fiftyone_ai_search.store import point_id_to_sample_id
from fiftyone_ai_search.store import cells as cl
from fiftyone_ai_search.store import upkeep
from fiftyone_ai_search.store.edge import EdgeStore

from tests.store_processes import audit_until_killed, kill_once_held
from tests.test_cells import clustered, exact_in, make_ids, sized, unit
from tests.test_store import (  # noqa: F401 (store: a fixture)
    DIM, INFO, SERVER_SLOW, store)

pytestmark = pytest.mark.filterwarnings(
    "ignore:Failed to obtain server version:UserWarning"
)


@pytest.fixture(autouse=True)
def few_probed_cells(monkeypatch):
    """A small index has few cells: the default would probe all of them."""
    monkeypatch.setattr(cl, "MIN_PROBED", 4)


def prompts(n, seed, gap):
    """Text-like queries: a cluster centre of :func:`clustered`'s world
    pushed along one shared direction (the modality gap)."""
    rng = np.random.default_rng(0)  # the world of clustered(seed=0)
    centres = rng.standard_normal((40, DIM))
    rng.integers(0, 40, 4000)
    rng.standard_normal((4000, DIM))
    shift = rng.standard_normal(DIM)
    pick = np.random.default_rng(seed).integers(0, 40, n)
    noise = np.random.default_rng(seed + 1).standard_normal((n, DIM))
    return unit(centres[pick] + gap * shift + 0.3 * noise)


def recall(index, ids, x, queries, k=50):
    got = []
    for q in queries:
        expected, _ = exact_in(ids, x, q, k)
        found = [i for i, _ in index.query(q, k)]
        got.append(len(set(found) & set(expected)) / k)
    return float(np.mean(got)), got


@pytest.fixture
def indexed(store):
    # the first points of the world prompts() shifts (see sized())
    x, _ = clustered(4000)
    x = x[:sized(store, len(x))]
    ids = make_ids(len(x))
    store.ensure(INFO)
    store.upsert(ids, x, [{} for _ in ids])
    store.maintain(min_points=1000)
    assert store.cells().complete
    return store, ids, x


@SERVER_SLOW
def test_the_audit_finds_poor_prompt_recall_and_its_rule_holds_it(indexed):
    index, ids, x = indexed
    fresh = prompts(40, seed=7, gap=2.0)
    before, _ = recall(index, ids, x, fresh)
    assert before < audit.TARGET  # the default probe count loses prompts
    index.forget_recent_queries()  # the test's own: audited prompts apart

    rule = audit.audit(index, prompts(60, seed=3, gap=2.0), k=50,
                       image_queries=60)
    assert index.cells().rule == rule  # stored: every process uses it
    assert len(rule["spreads"]) == len(rule["depths"])
    after, _ = recall(index, ids, x, fresh)  # prompts it never saw
    assert after >= audit.TARGET
    images = x[np.random.default_rng(5).choice(len(x), 30, replace=False)]
    assert recall(index, ids, x, images)[0] >= audit.TARGET
    # the estimate says what queries get
    text = rule["estimates"]["text"]
    assert text["queries"] == 60 and 0 <= text["lower"] <= text["recall"]
    assert abs(text["recall"] - after) <= 0.03
    assert rule["estimates"]["image"]["recall"] >= audit.TARGET
    # prompts scan more cells than images do
    assert (rule["estimates"]["text"]["cells_scanned"]
            > rule["estimates"]["image"]["cells_scanned"])


@SERVER_SLOW
def test_a_band_past_the_cost_bound_is_exact(indexed, monkeypatch):
    index, ids, x = indexed
    monkeypatch.setattr(audit, "MAX_SHARE", 0.02)  # ~1 cell: never enough
    rule = audit.audit(index, prompts(40, seed=3, gap=2.0), k=50,
                       image_queries=40)
    assert None in rule["depths"]
    fresh = prompts(20, seed=9, gap=2.0)
    _, each = recall(index, ids, x, fresh)
    exact = [cl.rule_depth(rule, float((index.cells().centres @ q).max()))
             is None for q in fresh]
    assert all(r == 1.0 for r, e in zip(each, exact) if e)
    assert rule["estimates"]["text"]["exact"] > 0

    # a diverse search's cluster centre in an exact band scans the nearest
    # cells a query away from the images scans unaudited, within the cost
    # bound (and its ties), and is not taken for one of the user's queries
    q = next(q for q, e in zip(fresh, exact) if e)
    known = index.cells()
    remembered = len(index.recent_queries())
    got = index.query(q, 10, centre=True)
    depth = max(min(rule["cap"], cl.num_probed(len(known))),
                cl.tied(known.centres @ q))
    assert depth < len(known)
    bounded = known.probe(q, count=depth)
    expected = [(point_id_to_sample_id(p.id), p.score)
                for p in index._query_points(q, 10, None, None, bounded)]
    assert [g[0] for g in got] == [e[0] for e in expected]
    assert len(index.recent_queries()) == remembered
    assert index.query(q, 10) == index.query(q, 10, exact=True)


@SERVER_SLOW
def test_an_audit_is_due_when_the_cells_are_new_or_the_index_grew(indexed):
    index, _, x = indexed
    assert audit.due(index.cells(), len(x))
    audit.audit(index, prompts(20, seed=3, gap=2.0), k=20, image_queries=20)
    assert not audit.due(index.cells(), len(x))
    assert audit.due(index.cells(), len(x) * 5 // 4)
    summary = audit.summary(index.cells())
    assert summary["audited"] and summary["estimates"]["text"]["queries"] == 20


@pytest.mark.slow
def test_upkeep_audits_and_the_status_shows_it(tmp_path):
    import fiftyone_ai_search as ais
    from fiftyone_ai_search import embeddings
    from fiftyone_ai_search.index import indexes

    from tests.helpers import shapes_dataset

    dataset = shapes_dataset(tmp_path, num_samples=300)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert ais.get_status(dataset)["approximate"] is None  # exact
    embeddings.maintain_index(dataset, min_points=100)
    status = ais.get_status(dataset)["approximate"]
    assert status["audited"] and status["points"] == 300
    text = status["estimates"]["text"]
    assert text["queries"] == len(audit.GENERIC_PROMPTS)
    assert 0.0 <= text["lower"] <= text["recall"] <= 1.0
    assert status["estimates"]["image"]["queries"] == audit.IMAGE_QUERIES
    # its exact answers were taken by the pass that learned the cells
    from fiftyone_ai_search.index import state as st

    index = indexes.open_ref(st.get(dataset)["index"])
    try:
        assert index.cells().rule["truth"] == "pass"
    finally:
        index.close()
    # the App's status line says it, in numbers
    from fiftyone_ai_search.app import forms

    line = forms.status_text(ais.get_status(dataset))
    assert "estimated recall@" in line, line
    assert f"prompts {text['recall']:.2f}" in line or "prompts exact" in line
    # a prompt search of the audited index finds what an exact one does
    from fiftyone_ai_search.query.vectors import prompt_vectors

    name = ais.perform_ai_search(dataset, prompt="a red circle", limit=10)
    found = [i for i, _ in ais.get_collection_scores(dataset, name)]
    model = indexes.load_index_model(st.get(dataset)["index"])
    query = prompt_vectors(model, ["a red circle"])[0]
    ids, vectors = ais.get_embeddings(dataset)
    exact = [ids[i] for i in np.argsort(-(vectors @ query))[:10]]
    assert len(set(found) & set(exact)) >= 9


@SERVER_SLOW
def test_exact_on_request_whatever_the_cells(indexed, monkeypatch):
    index, ids, x = indexed
    monkeypatch.setattr(cl, "MIN_PROBED", 1)  # one cell: poor recall
    queries = prompts(10, seed=7, gap=2.0)
    approximate = recall(index, ids, x, queries)[0]
    assert approximate < 1.0
    for q in queries:
        expected, _ = exact_in(ids, x, q, 50)
        assert [i for i, _ in index.query(q, 50, exact=True)] == expected


def test_perform_ai_search_exact_is_a_flag(tmp_path):
    import fiftyone_ai_search as ais

    from tests.helpers import shapes_dataset

    dataset = shapes_dataset(tmp_path, num_samples=20)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    with pytest.raises(ValueError, match="exact"):
        ais.perform_ai_search(dataset, prompt="a red circle", exact="yes")
    assert ais.perform_ai_search(dataset, prompt="a red circle", limit=5,
                                 exact=True)


@pytest.mark.slow
@pytest.mark.parametrize("held", [
    ("audit", "_measure", 1),  # the first audit's exact searches
    ("EdgeStore", "_write_cells", 1),  # its rule about to be written
    ("audit", "_measure", 2),  # a second audit, over a stored rule
], ids=["measuring", "writing", "again"])
def test_an_audit_killed_at_any_moment_leaves_index_and_estimate_whole(
        tmp_path, held):
    x, _ = clustered(4000)
    ids = make_ids(len(x))
    index = EdgeStore("audited", tmp_path, lock_timeout=60)
    index.ensure(INFO)
    index.upsert(ids, x, [{} for _ in ids])
    index.maintain(min_points=1000)
    index.close()
    # audits in a process of its own until killed at ``held`` (``where``
    # "audit", the module, or "EdgeStore", the class), probing as few
    # cells as this one (few_probed_cells)
    kill_once_held(audit_until_killed, (
        str(tmp_path), "audited", {"cells.MIN_PROBED": 4},
        prompts(60, seed=3, gap=2.0), held), held)

    cells = index.cells()  # readable: the old cells, or with a whole rule
    assert cells.complete and len(cells) == 64
    if cells.rule is not None:
        assert set(cells.rule["estimates"]) == {"text", "image"}
    q = prompts(1, seed=9, gap=2.0)[0]
    expected, _ = exact_in(ids, x, q, 20)
    assert [i for i, _ in index.query(q, 20, exact=True)] == expected
    assert audit.audit(index, prompts(20, seed=4, gap=2.0), k=20,
                       image_queries=20) is not None


@SERVER_SLOW
def test_the_users_recent_prompts_are_audited(indexed):
    """The index keeps its last searches of the whole index (a repeat
    once, a search by a sample too), and the audit asks them: the user's
    prompts, unlike the generic ones, are held at the target where the
    generic ones alone leave them poor."""
    from fiftyone_ai_search.store import recent

    index, ids, x = indexed
    user = prompts(40, seed=3, gap=2.0)
    generic = prompts(30, seed=5, gap=0.0)  # on the images' side
    # what a rule chosen on the generic prompts gives the user's
    audit.audit(index, generic, k=50, image_queries=60)
    fresh = prompts(40, seed=7, gap=2.0)
    assert recall(index, ids, x, fresh)[0] < audit.TARGET
    index.forget_recent_queries()

    for q in user:
        index.query(q, 50)
    index.query(user[-1], 10)  # a repeat (e.g. an over-fetch): kept once
    index.query(x[0], 50)  # a search by a sample
    index.query(user[0], 50, exact=True)  # exact: the cells are not used
    kept = index.recent_queries()
    assert len(kept) == 41 <= recent.SIZE
    np.testing.assert_allclose(kept[:40], user, atol=2e-3)
    rule = audit.audit(index, generic, k=50, image_queries=60)
    assert rule["recent"] == 41
    assert audit.summary(index.cells())["recent_queries"] == 41
    # the search by a sample lies among the images: an image query; and so
    # may a prompt of this 16-d world that lies as near a centre as they do
    text = rule["estimates"]["text"]["queries"]
    assert 30 + 30 <= text <= 30 + 40
    assert rule["estimates"]["image"]["queries"] == 60 + 40 + 30 + 1 - text
    assert recall(index, ids, x, fresh)[0] >= audit.TARGET


@pytest.mark.parametrize("store", ["edge"], indirect=True)
def test_recent_queries_are_a_bounded_ring_that_survives_a_torn_file(
        indexed):
    """At most recent.SIZE, the latest last; a file torn by a crash reads as
    none, and the next search writes a whole one; they go with the index."""
    from fiftyone_ai_search.store import recent, recent_ring

    index, _, _ = indexed
    queries = prompts(recent.SIZE + 6, seed=11, gap=1.0)
    for q in queries:
        index.query(q, 5)
    kept = index.recent_queries()
    assert len(kept) == recent.SIZE
    np.testing.assert_allclose(kept, queries[6:], atol=2e-3)
    path = os.path.join(index.path, recent_ring.FILE)
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY torn")
    assert len(index.recent_queries()) == 0
    index.query(queries[0], 5)
    assert len(index.recent_queries()) == 1
    index.drop()
    assert not os.path.exists(path)
    index.ensure(INFO)
    assert len(index.recent_queries()) == 0


def test_a_query_among_near_equal_centres_scans_every_tied_cell(monkeypatch):
    # the floor under the audited rule (cells.TIE_MARGIN): where a dense
    # cluster is split among cells of near-equal centres, a query near
    # them scans them all, whatever its band's depth; alone, it scans its
    # band's depth
    rng = np.random.default_rng(0)
    base = unit(rng.standard_normal((1, DIM)))[0]
    split = unit(base + 0.02 * rng.standard_normal((5, DIM)))  # ~ties
    far = unit(rng.standard_normal((15, DIM)))
    centres = np.vstack([split, far]).astype(np.float32)
    known = cl.Cells(centres, generation=1, complete=True,
                     rule={"edges": [], "depths": [1]})
    tied = known.probe(base)
    scores = centres @ base
    assert sorted(tied[1:]) == sorted(
        np.flatnonzero(scores >= scores.max() - cl.TIE_MARGIN).tolist())
    assert len(tied) - 1 == 5
    alone = unit(far[0] + 0.01 * rng.standard_normal(DIM))
    assert len(known.probe(alone)) - 1 == 1
    monkeypatch.setattr(cl, "TIE_CAP", 3)  # a bounded floor
    assert len(known.probe(base)) - 1 == 3
    # an exact band stays exact
    exact = cl.Cells(centres, generation=1, complete=True,
                     rule={"edges": [], "depths": [None]})
    assert exact.probe(base) is None


def test_a_spread_scans_every_cell_near_a_querys_nearest():
    # the band's spread (cells.rule_depth): a query scans every cell whose
    # centre scores within it of its nearest's, at most the rule's cap;
    # a rule from before spreads scans its depth (and the ties) alone
    q = np.zeros(DIM, dtype=np.float32)
    q[0] = 1.0
    near = [0.9, 0.85, 0.82, 0.78, 0.5, 0.3, 0.2, 0.1]
    centres = np.zeros((len(near), DIM), dtype=np.float32)
    for i, c in enumerate(near):
        centres[i, 0], centres[i, i + 1] = c, np.sqrt(1 - c * c)
    scores = centres @ q
    assert cl.tied(scores) == 1  # no ties within TIE_MARGIN
    rule = {"edges": [], "depths": [1], "spreads": [0.1], "cap": 10}
    known = cl.Cells(centres, generation=1, complete=True, rule=rule)
    assert sorted(known.probe(q)[1:]) == [0, 1, 2]  # 0.9, 0.85, 0.82
    assert len(known.probe(q)) - 1 == cl.rule_depth(
        rule, 0.9, 1, scores.max() - scores)
    # at most the cap
    capped = dict(rule, cap=2)
    assert len(cl.Cells(centres, generation=1, complete=True,
                        rule=capped).probe(q)) - 1 == 2
    # the band's depth when it is more; no spread: the depth alone
    deeper = dict(rule, depths=[5])
    assert len(cl.Cells(centres, generation=1, complete=True,
                        rule=deeper).probe(q)) - 1 == 5
    for old in ({"edges": [], "depths": [1]},
                dict(rule, spreads=[0.0])):
        assert cl.Cells(centres, generation=1, complete=True,
                        rule=old).probe(q)[1:] == [0]
    # an exact band stays exact, whatever its spread
    exact = dict(rule, depths=[None])
    assert cl.Cells(centres, generation=1, complete=True,
                    rule=exact).probe(q) is None
    # but for the centre of a group of images (a diverse search's
    # cluster): the nearest cells, as unaudited, at most the cap
    assert sorted(cl.Cells(centres, generation=1, complete=True,
                           rule=dict(exact, cap=2)).probe(
        q, centre=True)[1:]) == [0, 1]
    # and never more than a query away from the images scans unaudited,
    # where the rule's band would scan more
    many = np.random.default_rng(2).standard_normal((200, DIM))
    many = (many / np.linalg.norm(many, axis=1, keepdims=True)).astype(
        np.float32)
    deep = {"edges": [], "depths": [150], "spreads": [0.0], "cap": 180}
    wide = cl.Cells(many, generation=1, complete=True, rule=deep)
    assert len(wide.probe(q)) - 1 == 150
    assert cl.num_probed(200) < 150
    assert len(wide.probe(q, centre=True)) - 1 == max(
        cl.num_probed(200), cl.tied(many @ q))
    # and at least the cells that tie with its nearest, as any band's
    # depth: three within TIE_MARGIN of 0.9, a cap of 2
    tight = np.zeros((len(near), DIM), dtype=np.float32)
    for i, c in enumerate([0.9, 0.89, 0.88] + near[3:]):
        tight[i, 0], tight[i, i + 1] = c, np.sqrt(1 - c * c)
    assert cl.tied(tight @ q) == 3
    assert sorted(cl.Cells(tight, generation=1, complete=True,
                           rule=dict(exact, cap=2)).probe(
        q, centre=True)[1:]) == [0, 1, 2]


@SERVER_SLOW
def test_spreads_scan_no_more_cells_than_depths_alone(indexed, monkeypatch):
    """The audit chooses each band's depth and spread among pairs that
    include the depth alone (spread 0): on the queries that choose, the
    rule scans no more cells than depths alone would, and holds the
    target for each kind of query."""
    index, ids, x = indexed
    known = index.cells()
    images = x[np.random.default_rng(5).choice(len(x), 60, replace=False)]
    texts = prompts(60, seed=3, gap=2.0)
    measured = audit._measure(index, known, np.vstack([images, texts]),
                              ["image"] * 60 + ["text"] * 60, 50)

    def scanned(rule):
        depths = [cl.rule_depth(rule, m.nearest, m.ties, m.gaps)
                  for m in measured]
        cells = np.mean([len(known) if d is None else d for d in depths])
        recalls = {kind: np.mean([m.recall(d) for m, d in
                                  zip(measured, depths) if m.kind == kind])
                   for kind in ("image", "text")}
        return cells, recalls

    with_spreads = audit.choose(measured, len(known))
    monkeypatch.setattr(audit, "SPREADS", np.zeros(1))
    alone = audit.choose(measured, len(known))
    assert alone["spreads"] == [0.0] * len(alone["depths"])
    cells, recalls = scanned(with_spreads)
    cells_alone, recalls_alone = scanned(alone)
    assert cells <= cells_alone + 1e-9
    for got in (recalls, recalls_alone):
        assert min(got.values()) >= audit.TARGET + audit.MARGIN - 1e-9


def test_the_audited_images_are_not_the_points_the_cells_were_learned_from():
    """k-means fits its centres to its own sample: from the size where
    cells turn on, the audit's image queries are drawn from other buckets,
    so that its estimate does not depend on that fit."""
    for n in (cl.MIN_POINTS, 300_000, 1_000_000, 4_000_000, 10_000_000):
        learned = set(upkeep.learning_buckets(n).tolist())
        audited = set(audit.image_buckets(n, audit.IMAGE_QUERIES).tolist())
        assert audited and learned and not learned & audited, n


def _rule_of(rule):
    """What an audit chose and estimated (not when, nor how long)."""
    return {key: rule[key] for key in ("edges", "depths", "spreads",
                                       "margins", "estimates", "points",
                                       "recent")}


@SERVER_SLOW
def test_the_pass_that_learns_the_cells_takes_the_audits_exact_answers(
        store):
    """The pass that learns the cells reads every vector: it takes the
    audit's exact top-k there, and the audit after it runs no exact search.
    Same answers, so the same rule and estimates, as the exact searches
    give; duplicated points tie everywhere (they have the same cell)."""
    x, _ = clustered(4000)
    x = x[:sized(store, len(x))]
    x = np.vstack([x, x[:len(x) // 5]])  # ties: a fifth stored twice
    ids = make_ids(len(x))
    store.ensure(INFO)
    store.upsert(ids, x, [{} for _ in ids])
    texts = prompts(40, seed=3, gap=2.0)
    exact = audit.ExactTopK(store, lambda: texts, k=50, image_queries=60)
    store.maintain(min_points=1000, exact=exact)
    assert exact.seen == len(x) and exact.holds(store.cells(), len(x), 50)
    # each query's top-50 cells, as the exact searches find them
    known = store.cells()
    searched = store._exact_neighbour_vectors(exact.queries, 50)
    for query, found, vectors in zip(exact.queries, exact.neighbour_cells(),
                                     searched):
        assert sorted(found) == sorted(known.assign(vectors))
    from_pass = audit.audit(store, texts, k=50, image_queries=60,
                            exact=exact)
    assert from_pass["truth"] == "pass"  # no exact search
    searched = audit.audit(store, texts, k=50, image_queries=60)
    assert searched["truth"] == "searches"
    assert _rule_of(from_pass) == _rule_of(searched)
    assert from_pass["estimates"]["image"]["queries"] == 60


@SERVER_SLOW
def test_an_audit_after_a_pass_that_did_not_read_every_point_searches(
        indexed):
    """A pass that assigns only new points, or an index written to after
    the pass, leaves the audit its exact searches."""
    index, ids, x = indexed
    texts = prompts(20, seed=3, gap=2.0)
    exact = audit.ExactTopK(index, texts, k=20, image_queries=20)
    more = unit(np.random.default_rng(3).standard_normal((50, DIM)))
    index.upsert(make_ids(len(x) + 50)[len(x):], more, [{} for _ in more])
    index.maintain(min_points=1000, exact=exact)  # the new points only
    assert exact.queries is None
    assert audit.audit(index, texts, k=20, image_queries=20,
                       exact=exact)["truth"] == "searches"
    # the answers of a pass that learned, then a point written after it
    index.drop()
    index.ensure(INFO)
    index.upsert(ids, x, [{} for _ in ids])
    exact = audit.ExactTopK(index, texts, k=20, image_queries=20)
    index.maintain(min_points=1000, exact=exact)
    assert exact.holds(index.cells(), len(x), 20)
    index.upsert(make_ids(len(x) + 1)[len(x):], more[:1], [{}])
    assert audit.audit(index, texts, k=20, image_queries=20,
                       exact=exact)["truth"] == "searches"
