"""Plain runs of the ``ai_search`` backend: vectors of no open_clip model
it can run become an index of the run's own, as with every Brain backend
(issue 20), never the dataset's AI search index."""

import numpy as np
import pytest

import fiftyone as fo
import fiftyone.brain as fob

import fiftyone_ai_search as ais
from fiftyone_ai_search import brain
from fiftyone_ai_search.errors import BrainKeyTakenError
from fiftyone_ai_search.index import state as st

from tests.helpers import shapes_dataset


def _no_images(n, name):
    dataset = fo.Dataset(name)
    dataset.add_samples([fo.Sample(filepath=f"missing{i}.png")
                         for i in range(n)])
    return dataset


def _store_exists(index):
    return index._run_vectors.store.exists()


def test_random_vectors_of_missing_images_are_a_plain_run():
    dataset = _no_images(9, "plain-random")
    vectors = np.random.default_rng(0).standard_normal((9, 4))
    index = fob.compute_similarity(dataset, embeddings=vectors,
                                   backend="ai_search", brain_key="rand")
    assert isinstance(index, brain.PlainSimilarityIndex)
    assert dataset.get_brain_info("rand").config.plain
    assert not index.supports_prompts and not index.config.supports_prompts
    assert index.total_index_size == 9
    assert set(index.sample_ids) == set(dataset.values("id"))
    # nothing of AI search: no state, not enabled
    assert st.get(dataset) is None and not ais.is_embeddings_enabled(dataset)

    # the vectors come back as given (the store keeps their directions)
    ids = dataset.values("id")
    got, got_ids, _ = index.get_embeddings(ids)
    assert list(got_ids) == ids
    np.testing.assert_allclose(got, vectors, rtol=1e-5, atol=1e-6)

    # queries by id and by vector: exact cosine, as numpy says
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = [ids[i] for i in np.argsort(-(unit @ unit[0]), kind="stable")]
    view = dataset.sort_by_similarity(ids[0], brain_key="rand")
    assert view.values("id") == expected
    back = dataset.sort_by_similarity(ids[0], reverse=True, brain_key="rand")
    assert back.values("id") == expected[::-1]
    assert len(dataset.sort_by_similarity(vectors[3], k=4,
                                          brain_key="rand")) == 4
    with pytest.raises(ValueError, match="prompt"):
        dataset.sort_by_similarity("a red circle", k=3, brain_key="rand")
    with pytest.raises(ValueError, match="size 4"):
        index._kneighbors(np.ones(5), k=3)

    # reloaded from the database: the same run
    again = dataset.load_brain_results("rand", cache=False)
    assert isinstance(again, brain.PlainSimilarityIndex)
    assert again.total_index_size == 9

    # cleanup deletes its index, then the run goes as for every backend
    index.cleanup()
    assert not _store_exists(index)
    dataset.delete_brain_run("rand")
    assert dataset.list_brain_runs() == []
    dataset.delete()


def test_add_remove_validate_and_views():
    dataset = _no_images(12, "plain-add")
    ids = dataset.values("id")
    index = fob.compute_similarity(dataset, embeddings=False,
                                   backend="ai_search", brain_key="own")
    assert index.total_index_size == 0
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((12, 8)) * 3
    index.add_to_index(vectors[:10], ids[:10])
    assert index.total_index_size == 10
    with pytest.raises(ValueError, match="size 8"):
        index.add_to_index(rng.standard_normal((2, 6)), ids[10:])
    bad = vectors[10:].copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="embeddings: .*not finite"):
        index.add_to_index(bad, ids[10:])
    with pytest.raises(ValueError, match="embeddings: .*zero"):
        index.add_to_index(np.zeros((2, 8)), ids[10:])
    with pytest.raises(ValueError, match="embeddings: expected one vector"):
        index.add_to_index(vectors[:3], ids[10:])
    with pytest.raises(ValueError, match="already exist"):
        index.add_to_index(vectors[:2], ids[:2], allow_existing=False)
    assert index.total_index_size == 10  # nothing written by a refusal

    index.remove_from_index(sample_ids=ids[:3])
    assert index.total_index_size == 7
    with pytest.raises(ValueError, match="not in the index"):
        index.remove_from_index(sample_ids=ids[:1], allow_missing=False)

    with index.use_view(dataset.select(ids[3:6])):
        assert index.index_size == 3
        found, _ = index._kneighbors(ids[4], k=10)
        assert set(found) == set(ids[3:6])
    # one more, in the direction of another: its duplicate (cosine)
    index.add_to_index(vectors[5:6] * 2, ids[10:11])
    index.find_duplicates(thresh=1e-4)
    assert len(index.duplicate_ids) == 1
    fob.compute_uniqueness(dataset.select(ids[3:11]), similarity_index="own")
    assert len(dataset.exists("uniqueness")) == 8
    viz = fob.compute_visualization(dataset, similarity_index="own",
                                    method="pca", brain_key="own_viz")
    assert len(viz.points) == 8
    index.cleanup()
    dataset.delete()


def test_plain_runs_beside_ai_search(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=10)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    before = st.get(dataset)
    n = len(dataset)
    rng = np.random.default_rng(2)
    dataset.set_values("other", list(rng.standard_normal((n, 5))))
    one = fob.compute_similarity(dataset, embeddings="other",
                                 backend="ai_search", brain_key="other_sim")
    two = fob.compute_similarity(dataset, embeddings=rng.random((n, 3)),
                                 backend="ai_search", brain_key="third")
    assert one.total_index_size == two.total_index_size == n
    assert one.index_ref["name"] != two.index_ref["name"]
    # AI search's own run and state are as they were
    after = st.get(dataset)
    assert after["index"] == before["index"]
    assert brain.runs_of(dataset) == [brain.DEFAULT_BRAIN_KEY]
    assert len(dataset.sort_by_similarity("a red circle", k=3,
                                          brain_key="ai_search")) == 3
    first = dataset.first().id
    assert dataset.sort_by_similarity(
        first, k=1, brain_key="other_sim").first().id == first
    # a plain run's key is not AI search's
    with pytest.raises(BrainKeyTakenError, match="plain"):
        ais.enable_embeddings(dataset, brain_key="third", compute=False)

    # renamed, and deleted: the others keep working
    dataset.rename_brain_run("third", "third2")
    assert dataset.load_brain_results("third2").total_index_size == n
    dataset.delete_brain_run("other_sim")
    assert ais.is_embeddings_enabled(dataset)
    assert dataset.load_brain_results("third2").total_index_size == n
    # switching AI search off leaves a plain run alone
    ais.disable_embeddings(dataset)
    assert dataset.load_brain_results("third2").total_index_size == n
    dataset.delete_brain_run("third2")
    assert not _store_exists(two)


def test_a_model_that_is_no_open_clip_makes_a_plain_run():
    config = brain.AISearchSimilarityConfig(model="mobilenet-v2-imagenet-torch")
    assert config.clip_model is None and not config.names_a_model
    named = brain.AISearchSimilarityConfig(
        model="open-clip-torch", model_kwargs={"clip_model": "ViT-B-32",
                                               "pretrained": "openai"})
    assert named.names_a_model and named.supports_prompts


def test_objects_of_a_plain_run():
    dataset = fo.Dataset("plain-objects")
    dataset.add_samples([
        fo.Sample(filepath="a.png", gt=fo.Detections(detections=[
            fo.Detection(label=x) for x in ("cat", "dog", "rabbit", "fox")])),
        fo.Sample(filepath="b.png", gt=fo.Detections(detections=[
            fo.Detection(label=x) for x in ("cat", "dog")])),
    ])
    rng = np.random.default_rng(3)
    vectors = {s.id: rng.standard_normal((len(s.gt.detections), 4))
               for s in dataset}
    index = fob.compute_similarity(dataset, patches_field="gt",
                                   embeddings=vectors, backend="ai_search",
                                   brain_key="objs")
    assert index.total_index_size == 6
    label_ids = dataset.values("gt.detections.id", unwind=True)
    assert set(index.label_ids) == set(label_ids)
    query = label_ids[0]
    view = dataset.sort_by_similarity(query, k=3, brain_key="objs")
    assert view.count("gt.detections") == 3
    index.remove_from_index(label_ids=label_ids[:2])
    assert index.total_index_size == 4
    index.remove_from_index(sample_ids=[dataset.last().id])
    assert index.total_index_size == 2
    dataset.delete_brain_run("objs")
    assert not _store_exists(index)
    dataset.delete()


def test_a_plain_run_on_the_server_backend(monkeypatch):
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_QDRANT_URL", ":memory:")
    dataset = _no_images(5, "plain-server")
    index = fob.compute_similarity(
        dataset, embeddings=np.random.default_rng(4).random((5, 4)),
        backend="ai_search", brain_key="srv", index_backend="server")
    assert index.index_ref["backend"] == "server"
    assert index.total_index_size == 5
    dataset.delete_brain_run("srv")
    assert not _store_exists(index)
    dataset.delete()
