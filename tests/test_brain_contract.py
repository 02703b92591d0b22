"""The Brain's contract where the peers' suites found us wrong (issue 20):
each test failed before the fix it names."""

import os
import subprocess
import sys

import pytest

import fiftyone.brain as fob

import fiftyone_ai_search as ais
from fiftyone_ai_search import brain
from fiftyone_ai_search.demo import make_scenes_dataset, tiny_clip_model_name

from tests.helpers import shapes_dataset

TINY = dict(model="open-clip-torch",
            model_kwargs={"clip_model": tiny_clip_model_name(),
                          "pretrained": None})


def _indexed(tmp_path, num_samples):
    dataset = shapes_dataset(tmp_path, num_samples=num_samples)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    return dataset


def test_one_element_list_is_several_queries_of_one(tmp_path):
    dataset = _indexed(tmp_path, 12)
    index = dataset.load_brain_results(brain.DEFAULT_BRAIN_KEY)
    first = dataset.first().id
    ids, _ = index._kneighbors([first], k=3)
    assert len(ids) == 1 and len(ids[0]) == 3 and ids[0][0] == first
    vectors = index.get_embeddings([first])[0]
    ids, _ = index._kneighbors(vectors, k=3)  # a 1 x d array
    assert len(ids) == 1 and ids[0][0] == first
    ids, _ = index._kneighbors(first, k=3)  # one id: the single shape
    assert len(ids) == 3 and ids[0] == first


def test_find_duplicates_with_exactly_one_duplicate(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=6)
    dup = dataset.first().filepath
    import fiftyone as fo
    dataset.add_sample(fo.Sample(filepath=dup))
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    index = dataset.load_brain_results(brain.DEFAULT_BRAIN_KEY)
    index.find_duplicates(thresh=1e-4)
    assert len(index.duplicate_ids) == 1


@pytest.mark.parametrize("num_samples", [11, 21])
def test_uniqueness_off_the_index_with_a_last_batch_of_one(tmp_path,
                                                          num_samples):
    dataset = _indexed(tmp_path, num_samples)
    fob.compute_uniqueness(dataset, similarity_index=brain.DEFAULT_BRAIN_KEY)
    assert len(dataset.exists("uniqueness")) == num_samples


def test_cleanup_then_delete_brain_run(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=8, enable=False)
    index = fob.compute_similarity(dataset, backend="ai_search",
                                   brain_key="img", **TINY)
    assert index.total_index_size == 8
    index.cleanup()
    dataset.delete_brain_run("img")
    assert "img" not in dataset.list_brain_runs()
    assert not ais.is_embeddings_enabled(dataset)


@pytest.mark.slow
def test_package_import_declares_the_backend_in_a_fresh_process(tmp_path):
    code = (
        "from fiftyone_ai_search.testing import isolated_fiftyone\n"
        "isolated_fiftyone()\n"
        "import fiftyone_ai_search\n"
        "import fiftyone.brain as fob\n"
        "from fiftyone_ai_search.demo import make_shapes_dataset, "
        "tiny_clip_model_name\n"
        f"ds = make_shapes_dataset(num_samples=4, images_dir={str(tmp_path)!r})\n"
        "i = fob.compute_similarity(ds, backend='ai_search', brain_key='k',\n"
        "    model='open-clip-torch', model_kwargs={'clip_model': "
        "tiny_clip_model_name(), 'pretrained': None})\n"
        "print('size', i.total_index_size)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=600,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "size 4" in proc.stdout


def test_object_index_after_removals(tmp_path):
    dataset = make_scenes_dataset(num_samples=6, seed=3,
                                  images_dir=str(tmp_path / "scenes"))
    index = fob.compute_similarity(dataset, patches_field="ground_truth",
                                   backend="ai_search", brain_key="obj",
                                   **TINY)
    total = dataset.count("ground_truth.detections")
    assert index.total_index_size == total
    gone = list(index.label_ids[:2])
    index.remove_from_index(label_ids=gone)
    assert index.total_index_size == total - 2
    assert index.index_size == total - 2
    assert not set(gone) & set(index.label_ids)
    index.find_unique(3)  # raised "Found 2 ids ... not in the index"
    assert index.unique_ids and set(index.unique_ids) <= set(index.label_ids)


def test_embeddings_of_ids_none_indexed(tmp_path):
    dataset = _indexed(tmp_path, 6)
    index = dataset.load_brain_results(brain.DEFAULT_BRAIN_KEY)
    vectors, ids, _ = index.get_embeddings(["0" * 24], allow_missing=True)
    assert vectors.shape[0] == 0 and len(ids) == 0


def test_several_runs_coexist_and_a_run_on_a_view_is_of_that_view(tmp_path):
    dataset = _indexed(tmp_path, 20)
    view = dataset.limit(8)
    part = fob.compute_similarity(view, backend="ai_search",
                                  brain_key="part", **TINY)
    assert part.total_index_size == 8
    assert set(part.sample_ids) == set(view.values("id"))
    ids = dataset.sort_by_similarity(dataset.first().id, k=20,
                                     brain_key="part").values("id")
    assert set(ids) <= set(view.values("id"))
    whole = dataset.load_brain_results(brain.DEFAULT_BRAIN_KEY)
    assert whole.total_index_size == 20  # the SDK's run: untouched
    dataset.delete_brain_run("part")
    assert ais.is_embeddings_enabled(dataset)  # another run still uses it
    assert len(dataset.sort_by_similarity(
        dataset.first().id, k=5, brain_key=brain.DEFAULT_BRAIN_KEY)) == 5
    # brain_key=None registers nothing
    fob.compute_similarity(dataset, backend="ai_search", **TINY)
    assert set(dataset.list_brain_runs()) == {brain.DEFAULT_BRAIN_KEY}


def test_refusals_say_what_to_do(tmp_path):
    dataset = _indexed(tmp_path, 4)
    with pytest.raises(ValueError, match="url"):
        fob.compute_similarity(dataset, backend="ai_search", brain_key="u",
                               url="http://localhost:6333", **TINY)
    with pytest.raises(ValueError, match="metric"):
        fob.compute_similarity(dataset, backend="ai_search", brain_key="m",
                               metric="manhattan", **TINY)


def test_full_index_query(tmp_path):
    dataset = _indexed(tmp_path, 10)
    index = dataset.load_brain_results(brain.DEFAULT_BRAIN_KEY)
    inds, dists = index._kneighbors(k=2, return_dists=True)
    assert len(inds) == 10
    assert [row[0] for row in inds] == list(range(10))  # itself first
    assert all(abs(d[0]) < 1e-5 for d in dists)


def test_delete_brain_run_of_a_damaged_state_switches_off(tmp_path):
    from fiftyone_ai_search.index import state as st

    dataset = _indexed(tmp_path, 4)
    st._states().update_one({"_id": st.dataset_key(dataset)},
                            {"$set": {"enabled": "yes"}})
    dataset.delete_brain_run(brain.DEFAULT_BRAIN_KEY)
    assert brain.DEFAULT_BRAIN_KEY not in dataset.list_brain_runs()
    assert st.get_raw(st.dataset_key(dataset)) is None


def test_a_run_on_a_dataset_switched_on_but_not_computed_yet(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=6)  # on, nothing computed
    index = fob.compute_similarity(dataset.limit(4), backend="ai_search",
                                   brain_key="early", **TINY)
    assert index.total_index_size == 4


def test_a_failed_compute_similarity_leaves_no_run_behind(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=4, enable=False)
    with pytest.raises(Exception):
        fob.compute_similarity(dataset, backend="ai_search", brain_key="b",
                               embeddings=False, clip_model="nope")
    assert "b" not in dataset.list_brain_runs()
    with pytest.raises(ValueError, match="index_backend"):
        fob.compute_similarity(dataset, backend="ai_search", brain_key="b",
                               embeddings=False,
                               clip_model=tiny_clip_model_name(),
                               index_backend="nope")
    assert "b" not in dataset.list_brain_runs()
    # a retry with a right model works
    index = fob.compute_similarity(dataset, backend="ai_search",
                                   brain_key="b", embeddings=False,
                                   clip_model=tiny_clip_model_name())
    assert index.total_index_size == 4


def test_brain_misuse_is_refused_naming_the_argument(tmp_path):
    dataset = _indexed(tmp_path, 6)
    index = dataset.load_brain_results(brain.DEFAULT_BRAIN_KEY)
    first = dataset.first().id
    with pytest.raises(ValueError, match="query"):
        dataset.sort_by_similarity("", brain_key=brain.DEFAULT_BRAIN_KEY)
    # (sort_by_similarity(5) is refused by FiftyOne's stage, a TypeError,
    # before any backend sees it)
    with pytest.raises(ValueError, match="query"):
        index._kneighbors(5, k=2)
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must"):
            index._kneighbors(first, k=k)
    for thresh in (-1, float("nan"), "x"):
        with pytest.raises(ValueError, match="thresh"):
            index.find_duplicates(thresh=thresh)
    import fiftyone as fo

    videos = fo.Dataset()
    videos.add_sample(fo.Sample(filepath=str(tmp_path / "clip.mp4")))
    with pytest.raises(ValueError, match="frames"):
        index.use_view(videos)
