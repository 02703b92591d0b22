"""What AI search indexes and searches beyond plain image datasets: grouped
datasets (every image slice), patches views (their source samples), and what
it refuses (videos, 3D, point clouds, frames and clips views, non-collections),
on real shape images with the tiny CLIP."""

import uuid

import pytest

import fiftyone as fo
import fiftyone.operators.types as types
from fiftyone import ViewField as F

import fiftyone_ai_search as ais
from fiftyone_ai_search.index import media
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search.app import forms
from fiftyone_ai_search.demo import (make_scenes_dataset, make_shapes_dataset,
                                     tiny_clip_model_name)

from tests.helpers import labelled_video, shapes_dataset

RED_CIRCLE = "a photo of a red circle"


def _name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _enable_and_index(dataset):
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(), compute=False)
    return ais.calculate_embeddings(dataset, wait=True, progress=False)


def _grouped(tmp_path, num_per_slice=30, video_slice=True,
             make=make_shapes_dataset, seed=3):
    """A grouped dataset: slices "left" and "right" of other images of
    ``make`` (shapes: each slice holds every colour x shape class once per
    30; scenes: their Detections), in "ground_truth", and optionally a
    "video" slice (never indexed; its files need not exist). Active: left."""
    images = make(num_samples=2 * num_per_slice, seed=seed,
                  images_dir=str(tmp_path / _name("grouped")))
    rows = list(zip(*images.values(["filepath", "ground_truth"])))
    images.delete()

    dataset = fo.Dataset(_name("test-grouped"))
    dataset.add_group_field("group", default="left")
    samples = []
    for i in range(num_per_slice):
        group = fo.Group()
        for slice_name, (path, label) in (
            ("left", rows[i]), ("right", rows[num_per_slice + i])
        ):
            samples.append(fo.Sample(
                filepath=path, group=group.element(slice_name),
                ground_truth=label,
            ))
        if video_slice:
            samples.append(fo.Sample(
                filepath=str(tmp_path / f"clip{i}.mp4"),
                group=group.element("video"),
            ))
    dataset.add_samples(samples)
    return dataset


def _slice_ids(dataset, name):
    return dataset.select_group_slices(name).values("id")


def _collection_labels(dataset, name):
    return ais.get_collection(dataset, name).values("ground_truth.label")


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """A grouped dataset with two image slices and a video slice, indexed
    while the *right* slice was active."""
    dataset = _grouped(tmp_path_factory.mktemp("grouped"))
    dataset.group_slice = "right"
    report = _enable_and_index(dataset)
    dataset.group_slice = "left"
    return dataset, report


# -- grouped datasets ------------------------------------------------------------


def test_every_image_slice_is_indexed_whatever_slice_is_active(grouped):
    dataset, report = grouped
    assert dataset.group_slice == "left"

    # both image slices, whichever was active; the video slice not tried
    assert (report.added, report.failed) == (60, 0)
    ids, vectors = ais.get_embeddings(
        dataset.select_group_slices(["left", "right"]))
    assert set(ids) == set(_slice_ids(dataset, "left")) | set(
        _slice_ids(dataset, "right"))
    assert vectors.shape[0] == 60

    counts = ais.get_status(dataset)["counts"]
    assert counts == {"num_samples": 60, "num_indexed": 60, "num_failed": 0}
    # the same whichever slice is active
    dataset.group_slice = "right"
    try:
        assert ais.get_status(dataset)["counts"]["num_samples"] == 60
        # nothing left to do: a second sync embeds (and removes) nothing
        again = ais.calculate_embeddings(dataset, wait=True, progress=False)
        assert (again.added, again.updated, again.removed) == (0, 0, 0)
    finally:
        dataset.group_slice = "left"


def test_a_grouped_dataset_searches_its_active_slice(grouped):
    dataset, _ = grouped
    left, right = _slice_ids(dataset, "left"), _slice_ids(dataset, "right")

    name = ais.perform_ai_search(dataset, prompt=RED_CIRCLE, limit=5)
    found = [i for i, _ in ais.get_collection_scores(dataset, name)]
    assert len(found) == 5 and set(found) <= set(left)
    assert _collection_labels(dataset, name)[0] == "red circle"

    dataset.group_slice = "right"
    try:
        name = ais.perform_ai_search(dataset, prompt=RED_CIRCLE, limit=5)
        found = [i for i, _ in ais.get_collection_scores(dataset, name)]
        assert set(found) <= set(right)
        assert _collection_labels(dataset, name)[0] == "red circle"
    finally:
        dataset.group_slice = "left"


def test_select_group_slices_searches_both_slices(grouped):
    dataset, _ = grouped
    left, right = _slice_ids(dataset, "left"), _slice_ids(dataset, "right")

    both = dataset.select_group_slices(["left", "right"])
    name = ais.perform_ai_search(both, prompt=RED_CIRCLE, limit=2)
    found = [i for i, _ in ais.get_collection_scores(dataset, name)]
    # each slice holds one red circle: one of each
    assert len(set(found) & set(left)) == 1
    assert len(set(found) & set(right)) == 1
    assert _collection_labels(dataset, name) == ["red circle", "red circle"]

    # one slice, not the active one
    name = ais.perform_ai_search(dataset.select_group_slices("right"),
                                 prompt=RED_CIRCLE, limit=3)
    assert set(i for i, _ in ais.get_collection_scores(dataset, name)) <= set(
        right)


def test_collections_of_a_grouped_dataset_show_their_samples(grouped):
    """FiftyOne's select() on a grouped dataset only matches the active
    slice (ids of another slice select nothing), and a saved view does not
    keep the slice that was active: a collection must not depend on it."""
    dataset, _ = grouped
    right = _slice_ids(dataset, "right")
    assert len(dataset.select(right)) == 0  # what FiftyOne does

    both = dataset.select_group_slices(["left", "right"])
    name = ais.perform_ai_search(both, prompt=RED_CIRCLE, limit=4)
    expected = [i for i, _ in ais.get_collection_scores(dataset, name)]
    kept = ais.save_collection(dataset, _name("kept"))
    cut = ais.get_collection_scores(dataset, name)[1][1]
    for active in ("left", "right"):
        dataset.group_slice = active
        try:
            assert ais.get_collection(dataset, name).values("id") == expected
            assert ais.get_collection(dataset, kept).values("id") == expected
            assert dataset.load_saved_view(kept).values("id") == expected
            assert ais.get_collection(dataset, name, min_score=cut).values(
                "id") == expected[:2]
        finally:
            dataset.group_slice = "left"

    # the App never searches the latest results again, grouped or not
    latest = dataset.load_saved_view(ais.TEMPORARY_COLLECTION)
    assert ais.is_latest_results(latest)
    assert ais.is_latest_results(
        ais.get_collection(dataset, name, min_score=cut))
    assert not ais.is_latest_results(dataset)
    assert not ais.is_latest_results(both)


def test_similar_to_a_sample_of_another_slice(grouped):
    dataset, _ = grouped
    right = dataset.select_group_slices("right")
    ref = right.match(F("ground_truth.label") == "blue star").first()

    # a reference of any image slice; the scope is the active slice
    name = ais.perform_ai_search(dataset, image_id=ref.id, limit=3)
    found = [i for i, _ in ais.get_collection_scores(dataset, name)]
    assert set(found) <= set(_slice_ids(dataset, "left"))
    assert _collection_labels(dataset, name)[0] == "blue star"

    # image_id_scope: ids of any image slice, intersected with the scope
    both = dataset.select_group_slices(["left", "right"])
    scope = right.values("id")[:10]
    name = ais.perform_ai_search(both, prompt=RED_CIRCLE, limit=20,
                                 image_id_scope=scope)
    assert set(i for i, _ in ais.get_collection_scores(dataset, name)) == set(
        scope)


def test_deleting_in_the_active_slice_keeps_the_other_slices(tmp_path):
    dataset = _grouped(tmp_path, num_per_slice=6, video_slice=False)
    _enable_and_index(dataset)
    left, right = _slice_ids(dataset, "left"), _slice_ids(dataset, "right")

    dataset.group_slice = "left"
    dataset.delete_samples(left[:2])
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)

    assert report.removed == 2
    ids, _ = ais.get_embeddings(dataset.select_group_slices(["left", "right"]))
    assert set(ids) == set(left[2:]) | set(right)
    assert ais.get_status(dataset)["counts"]["num_indexed"] == 10

    # a new image in the other slice is found while "left" is active
    first, other = dataset.select_group_slices("right").limit(2)
    first.filepath = other.filepath
    first.save()
    assert dataset.group_slice == "left"
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert (report.updated, report.removed, report.added) == (1, 0, 0)


def test_a_grouped_dataset_needs_an_image_slice(tmp_path):
    dataset = fo.Dataset(_name("test-no-image-slice"))
    dataset.add_group_field("group", default="video")
    group = fo.Group()
    dataset.add_samples([
        fo.Sample(filepath=str(tmp_path / "a.mp4"),
                  group=group.element("video")),
        fo.Sample(filepath=str(tmp_path / "a.pcd"),
                  group=group.element("lidar")),
    ])
    with pytest.raises(media.UnsupportedMediaError,
                       match="no image slice") as e:
        ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                              compute=False)
    assert "grouped datasets with image slices" in str(e.value)
    # its video slices' frames are indexed by a frame index: the way named
    assert "frames of its video slices" in str(e.value)
    assert "frames=True)" in str(e.value)
    assert "search_frames(grouped_dataset" in str(e.value)
    assert "clone(" not in str(e.value)
    assert st.get(dataset) is None


# -- patches views -----------------------------------------------------------------


@pytest.fixture(scope="module")
def with_patches(tmp_path_factory):
    """30 shape images, indexed; the red and blue ones have a box each
    (``boxes``), and predictions that match half of them (``preds``)."""
    dataset = shapes_dataset(tmp_path_factory.mktemp("patches"),
                             num_samples=30, enable=False)
    for sample in dataset.match(F("color").is_in(["red", "blue"])):
        box = [0.2, 0.2, 0.6, 0.6]
        sample["boxes"] = fo.Detections(detections=[
            fo.Detection(label=sample.shape, bounding_box=box)])
        sample["preds"] = fo.Detections(detections=[
            fo.Detection(label=sample.shape if sample.color == "red"
                         else "other", bounding_box=box, confidence=0.9)])
        sample.save()
    _enable_and_index(dataset)
    return dataset


def test_a_patches_view_searches_the_samples_of_its_patches(with_patches):
    dataset = with_patches
    patches = dataset.to_patches("boxes")
    sources = set(patches.values("sample_id"))
    assert len(patches) == len(sources) > 0

    name = ais.perform_ai_search(patches, prompt=RED_CIRCLE, limit=100)
    assert name == ais.TEMPORARY_COLLECTION
    found = [i for i, _ in ais.get_collection_scores(dataset, name)]
    assert set(found) == sources  # the samples of the patches, no others
    assert _collection_labels(dataset, name)[0] == "red circle"
    # kept as a collection of the source dataset
    assert ais.get_collection(patches, name).values("id") == found

    # a view of the patches: the samples of those patches only
    stars = patches.match(F("boxes.label") == "star")
    name = ais.perform_ai_search(stars, prompt=RED_CIRCLE, limit=100)
    assert set(ais.get_collection(dataset, name).values("shape")) == {"star"}
    assert len(ais.get_collection(dataset, name)) == 2  # red, blue

    # the other SDK functions see the source dataset too
    assert ais.is_embeddings_enabled(patches)
    assert ais.get_status(patches)["counts"]["num_samples"] == 30


def test_an_evaluation_patches_view_searches_its_samples(with_patches):
    dataset = with_patches
    key = "ev" + uuid.uuid4().hex[:6]
    dataset.evaluate_detections("preds", gt_field="boxes", eval_key=key)
    try:
        mistakes = dataset.to_evaluation_patches(key).match(F("type") != "tp")
        # blue samples: their predictions are wrong
        name = ais.perform_ai_search(mistakes, prompt="something blue",
                                     limit=100)
        assert set(ais.get_collection(dataset, name).values("color")) == {
            "blue"}
        assert len(ais.get_collection(dataset, name)) == 5
    finally:
        dataset.delete_evaluation(key)


def test_the_app_searches_the_samples_of_a_patches_view(with_patches):
    dataset = with_patches
    patches = dataset.to_patches("boxes")
    ctx = _context(dataset, view=patches)

    scope = forms.search_scope(ctx, {})
    assert set(scope.values("id")) == set(patches.values("sample_id"))
    inputs = types.Object()
    forms.scope_form(ctx, inputs, {})
    label = inputs.to_json()["properties"]["scope"]["view"]["label"]
    assert "10 samples that the patches of the current view belong to" in label

    name = forms.search_from_params(ctx, {"mode": "prompt",
                                          "prompt": RED_CIRCLE}, [])
    assert set(ais.get_collection(dataset, name).values("color")) <= {
        "red", "blue"}


def _context(dataset, view=None, params=None):
    from fiftyone.operators.executor import ExecutionContext, Executor

    request = {"dataset_name": dataset.name, "params": dict(params or {})}
    if view is not None:
        request["view"] = view._serialize()
    return ExecutionContext(request, executor=Executor())


# -- videos, 3D, point clouds: refused ------------------------------------------------


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A video dataset (files never read) with a frame label."""
    dataset = labelled_video(tmp_path_factory.mktemp("video"),
                             _name("test-video"))
    return dataset


def test_a_video_dataset_is_refused_at_enable(video):
    with pytest.raises(media.UnsupportedMediaError) as e:
        ais.enable_embeddings(video, model=tiny_clip_model_name(),
                              compute=False)
    message = str(e.value)
    assert f"'{video.name}' is a video dataset" in message
    # its frames are indexed in place (issue 24), not cloned into images
    assert "enable_embeddings(dataset, frames=True)" in message
    assert "search_frames(dataset" in message
    # refused before anything is written
    assert st.get(video) is None
    assert not ais.is_embeddings_enabled(video)
    # catchable as the package's error and as a ValueError
    assert isinstance(e.value, ais.AISearchError)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("ext,media_type", [(".pcd", "point-cloud"),
                                            (".fo3d", "3d")])
def test_3d_and_point_cloud_datasets_are_refused(tmp_path, ext, media_type):
    dataset = fo.Dataset(_name("test-" + media_type))
    dataset.add_sample(fo.Sample(filepath=str(tmp_path / f"a{ext}")))
    assert dataset.media_type == media_type
    with pytest.raises(media.UnsupportedMediaError,
                       match=f"is a {media_type} dataset; AI search indexes "
                       "image datasets"):
        ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                              compute=False)
    assert st.get(dataset) is None


def test_an_empty_dataset_may_be_enabled():
    # its media type comes with its first samples
    dataset = fo.Dataset(_name("test-empty"))
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          compute=False)
    assert ais.is_embeddings_enabled(dataset)
    ais.disable_embeddings(dataset)


def _frames_and_clips(video):
    return {
        "frames": video.to_frames(sample_frames=False),
        "clips": video.to_clips("frames.objects"),
    }


@pytest.mark.parametrize("kind", ["frames", "clips"])
def test_frames_and_clips_views_are_refused(video, kind):
    view = _frames_and_clips(video)[kind]
    expected = (f"samples is a {kind} view of the video dataset "
                f"'{video.name}'")
    with pytest.raises(media.UnsupportedMediaError, match=expected) as e:
        ais.perform_ai_search(view, prompt=RED_CIRCLE)
    assert "frames=True)" in str(e.value)
    assert "search_frames(video_dataset" in str(e.value)
    assert "clone(" not in str(e.value)
    with pytest.raises(media.UnsupportedMediaError, match="samples is a"):
        ais.get_embeddings(view)

    # the functions taking a dataset name it
    for call in (
        lambda: ais.get_status(view),
        lambda: ais.calculate_embeddings(view, wait=True),
        lambda: ais.disable_embeddings(view),
        lambda: ais.enable_embeddings(view, model=tiny_clip_model_name(),
                                      compute=False),
        lambda: ais.list_collections(view),
        lambda: ais.get_collection(view, ais.TEMPORARY_COLLECTION),
    ):
        with pytest.raises(media.UnsupportedMediaError,
                           match=f"dataset is a {kind} view"):
            call()
    assert st.get(video) is None
    assert not ais.is_latest_results(view)


def test_the_app_refuses_a_frames_view(video):
    view = _frames_and_clips(video)["frames"]
    ctx = _context(video, view=view)
    inputs = types.Object()
    assert forms.scope_form(ctx, inputs, {}) is False
    scope = inputs.to_json()["properties"]["scope"]
    assert scope.get("invalid") is True
    assert "frames view" in scope["view"]["label"]


# -- not a collection ------------------------------------------------------------------


@pytest.mark.parametrize("value,got", [(None, "None"), ([], "list"),
                                       ("my-dataset", "str")])
def test_samples_must_be_a_dataset_or_a_view(value, got):
    message = f"must be a FiftyOne Dataset or DatasetView, got {got}$"
    with pytest.raises(ValueError, match="^samples " + message):
        ais.perform_ai_search(value, prompt=RED_CIRCLE)
    with pytest.raises(ValueError, match="^samples " + message):
        ais.get_embeddings(value)
    for call in (ais.get_status, ais.is_embeddings_enabled,
                 ais.disable_embeddings, ais.calculate_embeddings,
                 ais.get_embeddings_in_progress, ais.list_collections,
                 lambda d: ais.enable_embeddings(
                     d, model=tiny_clip_model_name(), compute=False),
                 lambda d: ais.get_collection(d, ais.TEMPORARY_COLLECTION)):
        with pytest.raises(ValueError, match="^dataset " + message):
            call(value)


# -- objects of a grouped dataset --------------------------------------------------


def _label_ids(dataset, slice_name):
    return {i for ids in dataset.select_group_slices(slice_name).values(
        "ground_truth.detections.id") for i in ids}


def _found_labels(dataset, name):
    by_id = {}
    both = dataset.select_group_slices(["left", "right"])
    for ids, labels in zip(*both.values(["ground_truth.detections.id",
                                         "ground_truth.detections.label"])):
        by_id.update(zip(ids, labels))
    return [by_id[i] for i, _ in ais.get_collection_scores(dataset, name)]


def test_objects_of_every_image_slice_are_indexed_and_kept_in_sync(tmp_path):
    dataset = _grouped(tmp_path, num_per_slice=20, make=make_scenes_dataset,
                       seed=5)
    left, right = _label_ids(dataset, "left"), _label_ids(dataset, "right")
    dataset.group_slice = "right"  # indexed while another slice is active
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          patches_field="ground_truth", compute=False)
    report = ais.calculate_embeddings(dataset, patches_field="ground_truth",
                                      wait=True, progress=False)
    dataset.group_slice = "left"

    assert (report.added, report.failed) == (len(left | right), 0)
    counts = ais.get_status(dataset, patches_field="ground_truth")["counts"]
    assert counts["num_objects"] == counts["num_indexed"] == len(left | right)

    # the active slice's objects are searched; select_group_slices, both
    name = ais.perform_ai_search(dataset, prompt="a red circle", limit=3,
                                 patches_field="ground_truth")
    found = [i for i, _ in ais.get_collection_scores(dataset, name)]
    assert set(found) <= left
    assert _found_labels(dataset, name)[0] == "red circle"
    both = dataset.select_group_slices(["left", "right"])
    name = ais.perform_ai_search(both, prompt="a red circle", limit=40,
                                 patches_field="ground_truth")
    found = [i for i, _ in ais.get_collection_scores(dataset, name)]
    assert set(found) & left and set(found) & right
    patches = ais.get_collection(dataset, name)
    assert patches._is_patches and patches.values("id") == found

    # an object deleted in the slice that is not active is found
    sample = dataset.select_group_slices("right").first()
    gone = sample.ground_truth.detections.pop(0).id
    sample.save()
    report = ais.calculate_embeddings(dataset, patches_field="ground_truth",
                                      wait=True, progress=False)
    assert (report.added, report.updated, report.removed) == (0, 0, 1)
    ids, _ = ais.get_embeddings(both, patches_field="ground_truth")
    assert set(ids) == (left | right) - {gone}
