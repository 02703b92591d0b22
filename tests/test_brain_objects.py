"""An object index as a FiftyOne Brain similarity run with a patches field:
the Brain's patches contract (label ids) on our backend, asserted against
the Brain's own sklearn backend built on the same vectors, on scene images
with the tiny CLIP."""

import uuid

import numpy as np
import pytest

import fiftyone as fo
import fiftyone.brain as fob

import fiftyone_ai_search as ais
from fiftyone_ai_search import brain
from fiftyone_ai_search.index import indexes
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search.demo import shapes, tiny_clip_model_name
from fiftyone_ai_search.embedding.model import load_model, resolve_model
from fiftyone_ai_search.index.targets import Objects

FIELD = "ground_truth"
KEY = brain.default_brain_key(FIELD)


def _tiny():
    return load_model(resolve_model(tiny_clip_model_name(), None))


def _scenes(tmp_path, num_samples):
    name = "brain-objects-" + uuid.uuid4().hex[:8]
    return shapes.make_scenes_dataset(name=name, num_samples=num_samples,
                                      images_dir=str(tmp_path / name))


def _object_vectors(dataset):
    store = indexes.open_ref(st.get(Objects(dataset, FIELD))["index"])
    try:
        ids, vectors = store.get_vectors()
        payloads = store.get_payloads(ids)
    finally:
        store.close()
    return ids, [payloads[i]["source_id"] for i in ids], vectors


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """Scenes whose objects are indexed, and the sklearn twin of the same
    object vectors (brain key "sk")."""
    dataset = _scenes(tmp_path_factory.mktemp("brain-objects"), 80)
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          patches_field=FIELD, compute=False)
    ais.calculate_embeddings(dataset, patches_field=FIELD, wait=True,
                             progress=False)
    label_ids, sample_ids, vectors = _object_vectors(dataset)
    twin = fob.compute_similarity(
        dataset, patches_field=FIELD, embeddings=False, backend="sklearn",
        brain_key="sk", model=brain.ClipBrainModel(_tiny()))
    twin.add_to_index(vectors, sample_ids, label_ids=label_ids)
    twin.save()
    return dataset


def test_enabling_object_search_registers_a_patches_run(indexed):
    assert KEY == "ai_search_ground_truth"
    info = indexed.get_brain_info(KEY)
    assert info.config.method == "ai_search"
    assert info.config.patches_field == FIELD
    index = indexed.load_brain_results(KEY)
    assert index.total_index_size == indexed.count(f"{FIELD}.detections")


def test_sort_patches_by_prompt_as_sklearn_and_as_perform_ai_search(indexed):
    patches = indexed.to_patches(FIELD)
    prompt = shapes.prompt("red", "circle")
    ours = patches.sort_by_similarity(prompt, k=10, brain_key=KEY)
    theirs = patches.sort_by_similarity(prompt, k=10, brain_key="sk")
    assert ours.values("id") == theirs.values("id")
    name = ais.perform_ai_search(patches, prompt=prompt, limit=10)
    assert ours.values("id") == ais.get_collection(indexed, name).values("id")
    # the tiny CLIP finds the red circles among the crops
    num = indexed.count_values(f"{FIELD}.detections.label")["red circle"]
    top = patches.sort_by_similarity(prompt, k=num, brain_key=KEY)
    labels = top.values(f"{FIELD}.label")
    assert labels.count("red circle") >= num - 1, labels


def test_sort_by_an_object_as_sklearn(indexed):
    patches = indexed.to_patches(FIELD)
    ref = patches.first()
    ours = patches.sort_by_similarity(ref.id, k=8, brain_key=KEY)
    assert ours.values("id")[0] == ref.id
    label_ids, _, vectors = _object_vectors(indexed)
    v = vectors[label_ids.index(ref.id)]
    theirs = patches.sort_by_similarity(v, k=8, brain_key="sk")
    assert ours.values("id") == theirs.values("id")


def test_sort_samples_by_their_objects(indexed):
    """On the dataset itself (not patches), the Brain orders samples by
    their best objects and keeps only the matching labels."""
    prompt = shapes.prompt("blue", "square")
    ours = indexed.sort_by_similarity(prompt, k=5, brain_key=KEY)
    theirs = indexed.sort_by_similarity(prompt, k=5, brain_key="sk")
    assert ours.values("id") == theirs.values("id")
    assert ours.count(f"{FIELD}.detections") == 5
    assert set(ours.values(f"{FIELD}.detections.label", unwind=True)) == {
        "blue square"}


def test_embeddings_by_labels_and_by_samples(indexed):
    index = indexed.load_brain_results(KEY)
    label_ids, sample_ids, vectors = _object_vectors(indexed)
    got, sources, labels = index.get_embeddings(label_ids=label_ids[:4])
    assert list(labels) == label_ids[:4]
    assert list(sources) == sample_ids[:4]
    assert np.allclose(got, vectors[:4], atol=1e-6)
    sample = indexed.first()
    _, sources, labels = index.get_embeddings(sample_ids=[sample.id])
    assert set(labels) == {d.id for d in sample[FIELD].detections}
    assert set(sources) == {sample.id}


def test_compute_similarity_with_the_backend_creates_the_object_index(
        tmp_path):
    dataset = _scenes(tmp_path, 8)
    fob.compute_similarity(
        dataset, patches_field=FIELD, backend="ai_search", brain_key="objs",
        embeddings=False, clip_model=tiny_clip_model_name())
    status = ais.get_status(dataset, patches_field=FIELD)
    assert status["counts"]["num_indexed"] == dataset.count(
        f"{FIELD}.detections")
    view = dataset.to_patches(FIELD).sort_by_similarity(
        "a red circle", k=3, brain_key="objs")
    assert len(view) == 3

    dataset.delete_brain_run("objs")  # as disable_embeddings(patches_field)
    assert not ais.is_embeddings_enabled(dataset, patches_field=FIELD)


def test_the_image_run_and_the_object_run_are_apart(tmp_path):
    dataset = _scenes(tmp_path, 6)
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          compute=False)
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          patches_field=FIELD, compute=False)
    assert {brain.DEFAULT_BRAIN_KEY, KEY} <= set(dataset.list_brain_runs())
    with pytest.raises(brain.BrainKeyTakenError, match="the images"):
        ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                              patches_field=FIELD, compute=False,
                              brain_key=brain.DEFAULT_BRAIN_KEY)
    ais.disable_embeddings(dataset, patches_field=FIELD)
    assert KEY not in dataset.list_brain_runs()
    assert brain.DEFAULT_BRAIN_KEY in dataset.list_brain_runs()
    assert fo.load_dataset(dataset.name) is not None
