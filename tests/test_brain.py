"""The AI search index as a FiftyOne Brain similarity index: the contract of
the Brain's SimilarityIndex, asserted on our backend and on the Brain's own
sklearn backend built on the same vectors (same neighbours), on real shape
images with the tiny CLIP."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fiftyone as fo
import fiftyone.brain as fob

import fiftyone_ai_search as ais
from fiftyone_ai_search import brain
from fiftyone_ai_search.index import indexes
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search.demo import tiny_clip_model_name
from fiftyone_ai_search.sync.existing import ExistingEmbeddingsError
from fiftyone_ai_search.embedding.model import load_model, resolve_model

from tests.helpers import add_shape_samples, shapes_dataset

KEY = brain.DEFAULT_BRAIN_KEY
KEYS = [KEY, "sk"]


def _tiny():
    return load_model(resolve_model(tiny_clip_model_name(), None))


def _indexed(tmp_path, num_samples=60, seed=1):
    dataset = shapes_dataset(tmp_path, num_samples=num_samples, seed=seed)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    return dataset


def _sklearn_twin(dataset, key="sk"):
    """The Brain's sklearn index of the same vectors, with the same model
    for prompts (in this process)."""
    ids, vectors = ais.get_embeddings(dataset)
    assert ids == dataset.values("id")
    return fob.compute_similarity(
        dataset, embeddings=vectors, backend="sklearn", brain_key=key,
        model=brain.ClipBrainModel(_tiny()),
    )


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """120 shape images indexed by AI search, and the sklearn twin."""
    dataset = _indexed(tmp_path_factory.mktemp("brain"), num_samples=120)
    _sklearn_twin(dataset)
    return dataset


def _sims(dataset, query_vector):
    ids, vectors = ais.get_embeddings(dataset)
    return dict(zip(ids, vectors @ query_vector))


def _assert_same_ranking(a, b, sims, tol=1e-5):
    """The same samples in the same order, up to exact ties (the two
    backends compute cosines in float32 and float64)."""
    assert len(a) == len(b)
    for pos, (x, y) in enumerate(zip(a, b)):
        assert x == y or abs(sims[x] - sims[y]) < tol, (
            pos, [round(float(sims[i]), 5) for i in a[pos - 1:pos + 3]],
            [round(float(sims[i]), 5) for i in b[pos - 1:pos + 3]])


# -- registration -------------------------------------------------------------


def test_enabling_registers_a_similarity_run_that_loads(indexed):
    assert KEY in indexed.list_brain_runs(type="similarity")
    info = indexed.get_brain_info(KEY)
    assert info.config.method == "ai_search"
    assert info.config.supports_prompts
    assert info.config.clip_model == st.get(indexed)["index"]["model"]
    index = indexed.load_brain_results(KEY)
    assert isinstance(index, brain.AISearchSimilarityIndex)
    assert index.supports_prompts


@pytest.mark.slow
def test_the_run_loads_in_a_fresh_process_and_answers_as_here(indexed):
    script = (
        "import json, sys, fiftyone as fo\n"
        "d = fo.load_dataset(sys.argv[1])\n"
        "r = d.load_brain_results('ai_search')\n"
        "v = d.sort_by_similarity('a photo of a red circle', k=10, "
        "brain_key='ai_search')\n"
        "print(json.dumps([r.total_index_size, v.values('id')]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, indexed.name],
                         capture_output=True, text=True, timeout=300,
                         check=True).stdout
    size, ids = json.loads(out.strip().splitlines()[-1])
    here = indexed.sort_by_similarity("a photo of a red circle", k=10,
                                      brain_key=KEY)
    assert size == len(indexed)
    assert ids == here.values("id")


# -- the SimilarityIndex contract, on both backends --------------------------


@pytest.mark.parametrize("key", KEYS)
def test_sizes_ids_and_embeddings(indexed, key):
    index = indexed.load_brain_results(key)
    assert index.total_index_size == len(indexed)
    assert index.index_size == len(indexed)
    assert sorted(index.sample_ids) == sorted(indexed.values("id"))

    some = indexed.take(5, seed=3).values("id")
    vectors, ids, labels = index.get_embeddings(sample_ids=some)
    assert list(ids) == some and labels is None
    _, expected = ais.get_embeddings(indexed.select(some, ordered=True))
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


@pytest.mark.parametrize("key", KEYS)
def test_use_view_restricts_the_index(indexed, key):
    index = indexed.load_brain_results(key)
    view = indexed.take(30, seed=5)
    with index.use_view(view):
        assert index.index_size == 30
        assert sorted(index.current_sample_ids) == sorted(view.values("id"))
        ranked = index.sort_by_similarity("a photo of a blue square", k=10)
        assert set(ranked.values("id")) <= set(view.values("id"))
    assert index.index_size == len(indexed)


def test_prompts_ids_and_vectors_rank_as_sklearn_and_as_perform_ai_search(
        indexed):
    model = _tiny()
    prompt = "a photo of a red circle"
    q = model.encode_text(prompt)[0]
    sims = _sims(indexed, q)
    ours = indexed.sort_by_similarity(prompt, k=20, brain_key=KEY)
    theirs = indexed.sort_by_similarity(prompt, k=20, brain_key="sk")
    _assert_same_ranking(ours.values("id"), theirs.values("id"), sims)
    name = ais.perform_ai_search(indexed, prompt=prompt, limit=20)
    assert ours.values("id") == ais.get_collection(indexed, name).values("id")
    # the tiny CLIP really aligns text and images
    num_red_circles = indexed.count_values("ground_truth.label")["red circle"]
    top = ours.values("ground_truth.label")[:num_red_circles]
    assert top.count("red circle") >= num_red_circles - 1

    # a query vector
    ours = indexed.sort_by_similarity(q, k=15, brain_key=KEY)
    theirs = indexed.sort_by_similarity(q, k=15, brain_key="sk")
    _assert_same_ranking(ours.values("id"), theirs.values("id"), sims)

    # one sample id: it comes first; several: their mean. (Compared with
    # sklearn's query by their vectors: sklearn centres its embeddings for
    # queries by id, and then keeps them centred, see docs/brain.md)
    ids = indexed.take(3, seed=7).values("id")
    _, vectors = ais.get_embeddings(indexed.select(ids, ordered=True))
    ours = indexed.sort_by_similarity(ids[0], k=10, brain_key=KEY)
    assert ours.values("id")[0] == ids[0]
    _assert_same_ranking(
        ours.values("id"),
        indexed.sort_by_similarity(vectors[0], k=10,
                                   brain_key="sk").values("id"),
        _sims(indexed, vectors[0]))
    mean = vectors.mean(axis=0)
    mean = mean / np.linalg.norm(mean)
    ours = indexed.sort_by_similarity(ids, k=10, brain_key=KEY)
    _assert_same_ranking(
        ours.values("id"),
        indexed.sort_by_similarity(mean, k=10, brain_key="sk").values("id"),
        _sims(indexed, mean))
    name = ais.perform_ai_search(indexed, image_id=ids, aggregation="mean",
                                 limit=10)
    assert ours.values("id") == ais.get_collection(indexed, name).values("id")


def test_reverse_dist_field_and_views_as_sklearn(indexed):
    q = _tiny().encode_text("a photo of a green star")[0]
    sims = _sims(indexed, q)
    ours = indexed.sort_by_similarity(q, k=10, reverse=True, brain_key=KEY,
                                      dist_field="d_ours")
    theirs = indexed.sort_by_similarity(q, k=10, reverse=True,
                                        brain_key="sk", dist_field="d_sk")
    _assert_same_ranking(ours.values("id"), theirs.values("id"), sims)
    # the least similar first; distances are cosine distances, as sklearn's
    d = dict(zip(*indexed.values(["id", "d_ours"])))
    assert ours.values("id")[0] == min(sims, key=sims.get)
    for sample_id in ours.values("id"):
        assert d[sample_id] == pytest.approx(1 - sims[sample_id], abs=1e-5)
    np.testing.assert_allclose(ours.values("d_ours"), theirs.values("d_sk"),
                               atol=1e-5)

    # on a view: only its samples, ranked as sklearn does
    view = indexed.match(fo.ViewField("color") != "red")
    ours = view.sort_by_similarity(q, k=25, brain_key=KEY)
    theirs = view.sort_by_similarity(q, k=25, brain_key="sk")
    assert set(ours.values("color")) <= set(view.distinct("color"))
    _assert_same_ranking(ours.values("id"), theirs.values("id"), sims)

    # k=None sorts the whole view
    assert len(view.sort_by_similarity(q, brain_key=KEY)) == len(view)


def test_bad_queries_name_the_problem(indexed):
    index = indexed.load_brain_results(KEY)
    with pytest.raises(ValueError, match="no embedding"):
        indexed.sort_by_similarity("0" * 24, k=5, brain_key=KEY)
    with pytest.raises(ValueError, match="aggregation"):
        index.sort_by_similarity("a red circle", k=5, aggregation="median")
    with pytest.raises(ValueError, match="label_ids"):
        index.get_embeddings(label_ids=["0" * 24])


# -- downstream Brain methods, off the index ---------------------------------


def test_visualization_and_uniqueness_run_off_the_index(indexed):
    ours = fob.compute_visualization(indexed, similarity_index=KEY,
                                     method="pca", brain_key="viz_ours")
    theirs = fob.compute_visualization(indexed, similarity_index="sk",
                                       method="pca", brain_key="viz_sk")
    assert ours.points.shape == (len(indexed), 2)
    # the same embeddings give the same projection (up to the axes' signs)
    for c in range(2):
        a, b = ours.points[:, c], theirs.points[:, c]
        assert np.allclose(a, b, atol=1e-4) or np.allclose(a, -b, atol=1e-4)

    # uniqueness: the Brain's formula on the cosine distances of the index
    # (sklearn's would use distances of centred embeddings)
    fob.compute_uniqueness(indexed, uniqueness_field="u_ours",
                           similarity_index=KEY)
    ids, vectors = ais.get_embeddings(indexed)
    dists = 1 - vectors @ vectors.T
    np.fill_diagonal(dists, np.inf)
    nearest = np.sort(dists, axis=1)[:, :3]
    expected = (nearest * [0.6, 0.3, 0.1]).mean(axis=1)
    expected /= expected.max()
    got = dict(zip(*indexed.values(["id", "u_ours"])))
    np.testing.assert_allclose([got[i] for i in ids], expected, atol=1e-4)


def _with_copies(tmp_path, num_copies=4):
    """A dataset in which ``num_copies`` images appear twice (copied files)."""
    dataset = shapes_dataset(tmp_path, num_samples=40, seed=11)
    copies = []
    for i, sample in enumerate(dataset.limit(num_copies)):
        path = str(tmp_path / f"copy-{i}.png")
        shutil.copyfile(sample.filepath, path)
        copies.append(fo.Sample(filepath=path, copy_of=sample.id))
    dataset.add_samples(copies)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    return dataset


def test_near_duplicates_as_the_brain_finds_them(tmp_path):
    dataset = _with_copies(tmp_path)
    _sklearn_twin(dataset)
    threshold = 0.999

    groups = ais.near_duplicate_groups(dataset, threshold)
    # each copy is found with its original (or the original with the copy)
    pairs = dataset.exists("copy_of").values(["id", "copy_of"])
    for copy_id, original in zip(*pairs):
        found = {k: {d for d, _ in v} for k, v in groups.items()}
        assert copy_id in found.get(original, ()) or original in found.get(
            copy_id, ())

    # the Brain's find_duplicates gives the same groups on our index and
    # on sklearn's
    maps = []
    for key in KEYS:
        index = dataset.load_brain_results(key)
        index.find_duplicates(thresh=1 - threshold)
        maps.append({k: sorted(d for d, _ in v)
                     for k, v in index.neighbors_map.items()})
    assert maps[0] == maps[1]
    assert maps[0] == {k: sorted(d for d, _ in v) for k, v in groups.items()}

    name = ais.find_near_duplicates(dataset, threshold=threshold)
    view = ais.get_collection(dataset, name)
    assert len(view) == sum(1 + len(v) for v in groups.values())
    scores = [s for _, s in ais.get_collection_scores(dataset, name)]
    # each group starts with the image it keeps (1.0); a copy may score a
    # rounding error above it
    assert scores[0] == 1.0 and all(threshold <= s <= 1.0 + 1e-6
                                    for s in scores)


def test_no_near_duplicates_gives_no_collection(indexed):
    assert ais.find_near_duplicates(indexed.take(5, seed=1),
                                    threshold=1.0) is None
    with pytest.raises(ValueError, match="threshold"):
        ais.find_near_duplicates(indexed, threshold=1.5)


# -- the index keeps itself in sync ------------------------------------------


def test_sort_by_similarity_sees_exactly_the_dataset_after_a_refresh(
        tmp_path):
    from fiftyone_ai_search.scheduler import refresh_all

    dataset = _indexed(tmp_path, num_samples=30)
    index = dataset.load_brain_results(KEY)
    add_shape_samples(dataset, tmp_path, num_samples=6, seed=21)
    dataset.delete_samples(dataset.take(4, seed=2))
    edited = dataset.skip(3).first()
    other = add_shape_samples(dataset, tmp_path, num_samples=1, seed=22)
    new_path = dataset[other[0]].filepath
    dataset.delete_samples(other)
    edited.filepath = new_path
    edited.save()

    refresh_all([dataset.name])
    index.reload()

    everything = dataset.sort_by_similarity("a photo of a circle",
                                            brain_key=KEY)
    assert sorted(everything.values("id")) == sorted(dataset.values("id"))
    assert index.total_index_size == len(dataset) == 32
    _, expected = ais.get_embeddings(dataset.select([edited.id]))
    vectors, _, _ = index.get_embeddings(sample_ids=[edited.id])
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    direct = _tiny().encode_images(
        _tiny().preprocess(__import__("PIL.Image").Image.open(new_path)
                           .convert("RGB")).unsqueeze(0))
    assert float(vectors[0] @ direct[0]) > 0.99


def test_add_and_remove_with_embeddings_given(tmp_path):
    dataset = _indexed(tmp_path, num_samples=20)
    index = dataset.load_brain_results(KEY)
    gone = dataset.take(3, seed=4).values("id")
    vectors, _, _ = index.get_embeddings(sample_ids=gone)

    index.remove_from_index(sample_ids=gone)
    assert index.total_index_size == 17
    assert not set(gone) & set(index.sample_ids)
    assert not set(gone) & set(
        dataset.sort_by_similarity("a red circle", brain_key=KEY).values("id"))
    with pytest.raises(ValueError, match="not in the index"):
        index.remove_from_index(sample_ids=gone, allow_missing=False)

    index.add_to_index(vectors, gone)
    assert index.total_index_size == 20
    # given vectors are kept: a sync finds them up to date
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert (report.added, report.updated) == (0, 0)
    with pytest.raises(ValueError, match="not in dataset"):
        index.add_to_index(vectors[:1], ["0" * 24])
    with pytest.raises(ValueError, match="already exist"):
        index.add_to_index(vectors, gone, overwrite=False,
                           allow_existing=False)

    # removing takes samples out of the run only: the index (and the SDK's
    # searches, and other runs) keep them, and the run no longer follows
    # the dataset as a whole
    index.remove_from_index(sample_ids=gone[:1])
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert report.added == 0 and index.total_index_size == 19
    assert dataset.load_brain_results(KEY).total_index_size == 19
    assert ais.get_embeddings(dataset.select(gone[:1]))[0] == gone[:1]


# -- one thing: the brain run and AI search ----------------------------------


@pytest.mark.parametrize("how", ["delete_brain_run", "cleanup", "disable"])
def test_deleting_the_run_disabling_and_cleanup_are_the_same(tmp_path, how):
    dataset = _indexed(tmp_path, num_samples=10)
    index_name = st.get(dataset)["index"]["name"]
    if how == "delete_brain_run":
        dataset.delete_brain_run(KEY)
    elif how == "cleanup":  # the Brain's sequence: the backend's, the run
        dataset.load_brain_results(KEY).cleanup()
        assert not ais.is_embeddings_enabled(dataset)
        dataset.delete_brain_run(KEY)
    else:
        ais.disable_embeddings(dataset)
    assert not ais.is_embeddings_enabled(dataset)
    assert KEY not in dataset.list_brain_runs()
    assert st.get(dataset) is None
    assert not indexes.open_ref({"name": index_name, "backend": "edge"}).exists()


def test_enabling_again_repairs_a_run_left_without_results(tmp_path):
    """A process killed between registering the run and saving its
    results; or a dataset enabled before the run existed."""
    dataset = _indexed(tmp_path, num_samples=6)
    brain.AISearchSimilarity.save_run_results(dataset, KEY, None)
    dataset.reload()
    assert dataset.load_brain_results(KEY, cache=False) is None
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          compute=False)
    assert dataset.load_brain_results(KEY, cache=False).total_index_size == 6

    brain.unregister(dataset, KEY)
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          compute=False)
    assert dataset.load_brain_results(KEY).total_index_size == 6


def test_a_taken_brain_key_is_refused_before_anything_is_written(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=6, enable=False)
    fob.compute_similarity(dataset, embeddings=np.random.rand(6, 8),
                           backend="sklearn", brain_key="ai_search")
    with pytest.raises(brain.BrainKeyTakenError, match="sklearn"):
        ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                              compute=False)
    assert st.get(dataset) is None
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          compute=False, brain_key="clip_search")
    assert dataset.get_brain_info("clip_search").config.method == "ai_search"
    # renaming the run moves AI search's key with it
    dataset.rename_brain_run("clip_search", "renamed")
    assert st.get(dataset)["brain_key"] == "renamed"
    ais.disable_embeddings(dataset)
    assert dataset.list_brain_runs() == ["ai_search"]  # the sklearn run stays


def test_compute_similarity_with_the_backend_creates_the_index(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=12, enable=False)
    index = fob.compute_similarity(
        dataset, backend="ai_search", brain_key="img", embeddings=False,
        clip_model=tiny_clip_model_name(),
    )
    assert index.total_index_size == 12
    assert index.supports_prompts
    assert index.get_model().can_embed_prompts
    assert brain.runs_of(dataset) == ["img"]
    assert dataset.get_brain_info("img").config.clip_model
    view = dataset.sort_by_similarity("a photo of a star", k=3,
                                      brain_key="img")
    assert len(view) == 3


@pytest.mark.slow
def test_the_backend_is_found_by_the_brain_config_of_another_process(
        tmp_path):
    """Declared in the Brain's config (here by its environment variables),
    without importing this package first."""
    dataset = shapes_dataset(tmp_path, num_samples=8, enable=False)
    env = dict(os.environ,
               FIFTYONE_BRAIN_SIMILARITY_BACKENDS="*,ai_search",
               FIFTYONE_BRAIN_SIMILARITY_AI_SEARCH_CONFIG_CLS=(
                   "fiftyone_ai_search.brain.AISearchSimilarityConfig"))
    script = (
        "import sys, fiftyone as fo, fiftyone.brain as fob\n"
        "assert 'fiftyone_ai_search' not in sys.modules\n"
        "d = fo.load_dataset(sys.argv[1])\n"
        "r = fob.compute_similarity(d, backend='ai_search', brain_key='b', "
        "embeddings=False, clip_model=sys.argv[2])\n"
        "print(r.total_index_size)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, dataset.name, tiny_clip_model_name()],
        capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "8"


def test_a_model_change_relabels_the_run_and_searches_the_old_index_meanwhile(
        tmp_path, other_tiny_model):
    dataset = _indexed(tmp_path, num_samples=12)
    before = dataset.sort_by_similarity("a red circle", k=5, brain_key=KEY)
    before_ids = before.values("id")
    before_model = st.get(dataset)["index"]["model"]
    ais.enable_embeddings(dataset, model=other_tiny_model, compute=False)
    assert dataset.get_brain_info(KEY).config.clip_model == (
        st.get(dataset)["model"])
    # the rebuild has not run: searches use the complete former index
    assert dataset.sort_by_similarity("a red circle", k=5,
                                      brain_key=KEY).values("id") == before_ids
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    index = dataset.load_brain_results(KEY)
    doc = st.get(dataset)
    assert index.get_model().identity == doc["index"]["model_identity"]
    assert doc["index"]["model"] == doc["model"] != before_model
    assert index.total_index_size == 12


# -- bring your own embeddings ----------------------------------------------


def test_enable_from_a_field_written_by_compute_embeddings(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=16, enable=False)
    model = brain.ClipBrainModel(_tiny())
    dataset.compute_embeddings(model, embeddings_field="clip")

    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          embeddings_field="clip", compute=False)
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert (report.reused, report.added) == (16, 0)
    ids, vectors = ais.get_embeddings(dataset)
    np.testing.assert_allclose(
        vectors, np.stack(dataset.select(ids, ordered=True).values("clip")),
        atol=1e-5)
    # then it keeps itself in sync with the model as usual
    add_shape_samples(dataset, tmp_path, num_samples=3, seed=30)
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert (report.added, report.reused) == (3, 0)
    view = dataset.sort_by_similarity("a photo of a red circle", k=3,
                                      brain_key=KEY)
    assert len(view) == 3


def test_enable_from_a_brain_run(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=10, enable=False)
    vectors = brain.ClipBrainModel(_tiny()).embed_all(
        [np.asarray(__import__("PIL.Image").Image.open(p).convert("RGB"))
         for p in dataset.values("filepath")])
    fob.compute_similarity(dataset, embeddings=vectors, backend="sklearn",
                           brain_key="old")
    # the run does not say which model made them: it must be given
    with pytest.raises(ValueError, match="model"):
        ais.enable_embeddings(dataset, from_brain_key="old", compute=False)
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          from_brain_key="old", compute=False)
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert (report.reused, report.added) == (10, 0)


def test_a_brain_run_of_a_known_zoo_model_names_its_open_clip_model(tmp_path):
    from fiftyone_ai_search.sync.existing import ExistingEmbeddings

    dataset = shapes_dataset(tmp_path, num_samples=4, enable=False)
    fob.compute_similarity(dataset, embeddings=np.random.rand(4, 8),
                           backend="sklearn", brain_key="zoo")
    info = dataset.get_brain_info("zoo")
    for name, kwargs, expected in [
        ("clip-vit-base32-torch", None, ("ViT-B-32", "openai")),
        ("open-clip-torch", {"clip_model": "ViT-B-16",
                             "pretrained": "laion2b_s34b_b88k"},
         ("ViT-B-16", "laion2b_s34b_b88k")),
        ("mobilenet-v2-imagenet-torch", None, None),
    ]:
        info.config.model, info.config.model_kwargs = name, kwargs
        fob.similarity.Similarity.update_run_config(dataset, "zoo",
                                                    info.config)
        assert ExistingEmbeddings(dataset, brain_key="zoo").model() == expected


def test_embeddings_of_another_model_are_refused(tmp_path, other_tiny_model):
    dataset = shapes_dataset(tmp_path, num_samples=8, enable=False)
    other = load_model(resolve_model(other_tiny_model, None))
    dataset.compute_embeddings(brain.ClipBrainModel(other),
                               embeddings_field="other")
    with pytest.raises(ExistingEmbeddingsError, match="does not hold"):
        ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                              embeddings_field="other", compute=False)
    assert st.get(dataset) is None and not dataset.list_brain_runs()
    with pytest.raises(ValueError, match="no field"):
        ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                              embeddings_field="nope", compute=False)


@pytest.mark.slow
def test_kill_9_while_filling_from_existing_embeddings_resumes(tmp_path):
    from tests.test_generations import _kill, _wait_for_progress, _worker

    dataset = shapes_dataset(tmp_path, num_samples=120, enable=False)
    dataset.compute_embeddings(brain.ClipBrainModel(_tiny()),
                               embeddings_field="clip")
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          embeddings_field="clip", compute=False)
    worker = _worker(dataset)
    _wait_for_progress(dataset, worker, 16)
    _kill(worker)

    report = ais.calculate_embeddings(dataset, wait=True, progress=False)
    # what was committed is kept, the rest reused: the model embeds nothing
    assert report.added == 0 and 0 < report.reused < 120
    ids, vectors = ais.get_embeddings(dataset)
    assert len(ids) == 120
    np.testing.assert_allclose(
        vectors, np.stack(dataset.select(ids, ordered=True).values("clip")),
        atol=1e-5)


def test_the_near_duplicates_docstring_example_runs(tmp_path):
    """The example of find_near_duplicates' docstring, as written (issue
    26, item 5: it raised ValueError); ``session`` is the App's session."""
    import textwrap
    import types

    doc = ais.find_near_duplicates.__doc__
    example = textwrap.dedent(doc.split("Examples::")[1].split("Args:")[0])
    dataset = _with_copies(tmp_path)
    session = types.SimpleNamespace(view=None)
    exec(example, {"dataset": dataset, "session": session})
    assert len(session.view) > 0
    tagged = set(dataset.match_tags("duplicate").values("id"))
    kept = set(ais.near_duplicate_groups(dataset, threshold=0.97))
    # of each copied image, the copy or the original is tagged; what a
    # group keeps is not
    for copy_id, original in zip(*dataset.exists("copy_of").values(
            ["id", "copy_of"])):
        assert copy_id in tagged or original in tagged
    assert tagged and not tagged & kept
