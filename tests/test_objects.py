"""Object search through the public SDK: the objects of a Detections field
of scene images (several shapes an image), embedded as crops with the
tiny CLIP, kept in sync, searched, and opened as patches views."""

import uuid

import fiftyone as fo
import pytest

import fiftyone_ai_search as ais
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search.index import indexes
from fiftyone_ai_search.demo import shapes, tiny_clip_model_name
from fiftyone_ai_search.index.targets import ObjectFieldError, Objects
from fiftyone_ai_search.sync.images import SyncCancelled

from tests.helpers import at_the_check_before_a_commit, kill_sync_worker_midway

FIELD = "ground_truth"


def scenes_dataset(tmp_path, num_samples=60, seed=1):
    name = "objects-" + uuid.uuid4().hex[:10]
    return shapes.make_scenes_dataset(
        name=name, num_samples=num_samples, seed=seed,
        images_dir=str(tmp_path / name))


def enable_objects(dataset, **kwargs):
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          patches_field=FIELD, compute=False, **kwargs)


def sync(dataset):
    return ais.calculate_embeddings(dataset, patches_field=FIELD, wait=True,
                                    progress=False)


def object_vectors(dataset):
    # (of_state: the field may be gone)
    doc = st.get(Objects.of_state(dataset, FIELD))
    store = indexes.open_ref(doc["index"])
    try:
        return dict(zip(*store.get_vectors()))
    finally:
        store.close()


def detection(dataset, label_id):
    for sample in dataset:
        for det in sample[FIELD].detections:
            if det.id == label_id:
                return sample, det
    raise KeyError(label_id)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A scenes dataset whose objects are indexed (read-only for tests)."""
    dataset = scenes_dataset(tmp_path_factory.mktemp("scenes"),
                             num_samples=150)
    enable_objects(dataset)
    report = sync(dataset)
    return dataset, report


def test_first_sync_embeds_every_object_from_one_decode_per_image(indexed):
    dataset, report = indexed
    num_objects = dataset.count(f"{FIELD}.detections")
    assert report.added == num_objects > len(dataset)
    # (objects of samples made just before are looked at again after the
    # build: each counts once)
    assert report.failed == report.skipped == 0
    status = ais.get_status(dataset, patches_field=FIELD)
    assert status["counts"]["num_objects"] == num_objects
    assert status["counts"]["num_indexed"] == num_objects
    assert status["crop"] == {"margin": 0.5, "square": True}
    assert status["object_fields"] == [FIELD]
    # the image index is another matter: not enabled here
    assert not ais.is_embeddings_enabled(dataset)
    assert ais.is_embeddings_enabled(dataset, patches_field=FIELD)


@pytest.mark.parametrize("color, shape", [
    ("red", "circle"), ("blue", "square"), ("green", "triangle"),
    ("yellow", "star"), ("purple", "cross"),
])
def test_prompt_finds_the_objects_inside_mixed_images(indexed, color, shape):
    dataset, _ = indexed
    name = ais.perform_ai_search(dataset, prompt=shapes.prompt(color, shape),
                                 patches_field=FIELD, limit=10)
    patches = ais.get_collection(dataset, name)
    assert patches._is_patches  # opens as a patches view
    labels = patches.values(f"{FIELD}.label")
    wanted = shapes.class_label(color, shape)
    assert len(labels) == 10
    assert sum(label == wanted for label in labels) >= 9, labels


def test_results_are_a_patches_view_of_exactly_those_objects_best_first(indexed):
    dataset, _ = indexed
    name = ais.perform_ai_search(dataset, prompt="a red circle",
                                 patches_field=FIELD, limit=25)
    pairs = ais.get_collection_scores(dataset, name)
    patches = ais.get_collection(dataset, name)
    assert patches.values("id") == [i for i, _ in pairs]
    scores = [s for _, s in pairs]
    assert scores == sorted(scores, reverse=True)
    # each patch's id is its label's, in the sample it came from
    sample_ids = patches.values("sample_id")
    for label_id, sample_id in zip(patches.values("id")[:5], sample_ids):
        sample, det = detection(dataset, label_id)
        assert sample.id == sample_id
    # a score range cuts the patches, without the model
    lo = scores[len(scores) // 2]
    cut = ais.get_collection(dataset, name, min_score=lo)
    assert cut._is_patches
    assert cut.values("id") == [i for i, s in pairs if s >= lo]
    listed = {c["name"]: c for c in ais.list_collections(dataset)}
    assert listed[name]["patches_field"] == FIELD


def test_reference_objects_find_objects_of_their_class(indexed):
    dataset, _ = indexed
    patches = dataset.to_patches(FIELD)
    ref = patches.match(fo.ViewField(f"{FIELD}.label") == "blue square").first()
    # a patches view names the field by itself
    name = ais.perform_ai_search(patches, label_id=ref.id, limit=10)
    labels = ais.get_collection(dataset, name).values(f"{FIELD}.label")
    assert labels[0] == "blue square"
    assert sum(label == "blue square" for label in labels) >= 9, labels


def test_objects_like_a_result_anywhere_or_among_the_results(indexed):
    """The docstring's recipe (issue 26, item 5): from a patches view of
    earlier results, label_id with the dataset searches every object;
    with the results' view, only those."""
    dataset, _ = indexed
    name = ais.perform_ai_search(dataset, prompt="a blue square",
                                 patches_field=FIELD, limit=5)
    patches = ais.get_collection(dataset, name)
    ref = patches.first().id
    among = ais.get_collection(dataset, ais.perform_ai_search(
        patches, label_id=ref, limit=50))
    assert set(among.values("id")) <= set(patches.values("id"))
    anywhere = ais.get_collection(dataset, ais.perform_ai_search(
        dataset, label_id=ref, patches_field=FIELD, limit=50))
    assert len(anywhere) == 50
    assert set(anywhere.values("id")) - set(patches.values("id"))


def test_an_outside_image_finds_its_objects(indexed, tmp_path):
    dataset, _ = indexed
    spec = shapes.sample_spec(seed=77, index=0, color="green", shape="circle")
    path = str(tmp_path / "query.png")
    shapes.render(spec, image_size=128, seed=77).save(path)
    name = ais.perform_ai_search(dataset, image=path, patches_field=FIELD,
                                 limit=10)
    labels = ais.get_collection(dataset, name).values(f"{FIELD}.label")
    assert sum(label == "green circle" for label in labels) >= 8, labels


def test_scope_a_view_searches_the_objects_of_its_samples_only(indexed):
    dataset, _ = indexed
    view = dataset.take(30, seed=3)
    name = ais.perform_ai_search(view, prompt="a red circle",
                                 patches_field=FIELD, limit=200)
    found = set(ais.get_collection(dataset, name).values("sample_id"))
    assert found and found <= set(view.values("id"))
    # the objects a view shows: filtered labels, or some samples
    reds = dataset.filter_labels(FIELD,
                                 fo.ViewField("label").starts_with("red"))
    name = ais.perform_ai_search(reds, prompt="a blue square",
                                 patches_field=FIELD, limit=200)
    labels = set(ais.get_collection(dataset, name).values(f"{FIELD}.label"))
    assert labels and all(label.startswith("red") for label in labels)
    some = view.values("id")[:4]
    name = ais.perform_ai_search(dataset, prompt="a red circle",
                                 patches_field=FIELD, image_id_scope=some)
    assert set(ais.get_collection(dataset, name).values("sample_id")) <= set(
        some)
    # a patches view narrowed by label: only those patches
    reds = dataset.to_patches(FIELD).match(
        fo.ViewField(f"{FIELD}.label").starts_with("red"))
    name = ais.perform_ai_search(reds, prompt="a circle", limit=200)
    labels = set(ais.get_collection(dataset, name).values(f"{FIELD}.label"))
    assert labels and all(label.startswith("red") for label in labels)


def test_diverse_sampling_over_objects(indexed):
    dataset, _ = indexed
    name = ais.perform_ai_search(dataset, method="centroids", limit=30,
                                 patches_field=FIELD, num_clusters=30)
    patches = ais.get_collection(dataset, name)
    ids = patches.values("id")
    assert len(ids) == len(set(ids)) == 30
    # representatives of 30 clusters cover most of the 30 classes
    assert len(set(patches.values(f"{FIELD}.label"))) >= 20
    again = ais.perform_ai_search(dataset, method="centroids", limit=30,
                                  patches_field=FIELD, num_clusters=30)
    assert ais.get_collection(dataset, again).values("id") == ids


def test_sync_embeds_exactly_what_changed(tmp_path):
    dataset = scenes_dataset(tmp_path, num_samples=20)
    enable_objects(dataset)
    sync(dataset)
    before = object_vectors(dataset)
    samples = list(dataset)

    # added: a new object in an image
    added = fo.Detection(label="red circle", bounding_box=[0.0, 0.0, 0.2, 0.2])
    samples[0][FIELD].detections.append(added)
    samples[0].save()
    # moved: a box edited
    moved = samples[1][FIELD].detections[0]
    moved.bounding_box = [0.05, 0.05, 0.5, 0.5]
    samples[1].save()
    # relabelled: same box, nothing to embed
    relabelled = samples[2][FIELD].detections[0]
    relabelled.label = "something else"
    samples[2].save()
    # deleted: an object removed from its sample
    removed = samples[3][FIELD].detections[0]
    dataset.delete_labels(ids=[removed.id])

    report = sync(dataset)

    assert (report.added, report.updated, report.removed) == (1, 1, 1)
    after = object_vectors(dataset)
    assert set(after) == (set(before) | {added.id}) - {removed.id}
    assert (after[moved.id] != before[moved.id]).any()
    assert (after[relabelled.id] == before[relabelled.id]).all()
    unchanged = set(before) - {moved.id, removed.id}
    assert all((after[i] == before[i]).all() for i in unchanged)

    # nothing changed: nothing embedded
    report = sync(dataset)
    assert (report.added, report.updated, report.removed) == (0, 0, 0)


def test_deleted_samples_and_replaced_images(tmp_path):
    dataset = scenes_dataset(tmp_path, num_samples=20)
    enable_objects(dataset)
    sync(dataset)
    samples = list(dataset)
    gone = samples[0]
    gone_ids = {d.id for d in gone[FIELD].detections}
    dataset.delete_samples([gone.id])
    # another image at the sample's path: its objects are embedded again
    replaced = samples[1]
    other = samples[2].filepath
    replaced.filepath = other
    replaced.save()

    report = sync(dataset)

    assert report.removed == len(gone_ids)
    assert report.updated == len(replaced[FIELD].detections)
    assert not gone_ids & set(object_vectors(dataset))
    counts = ais.get_status(dataset, patches_field=FIELD)["counts"]
    assert counts["num_indexed"] == counts["num_objects"]


def test_deleting_the_field_empties_its_index(tmp_path):
    dataset = scenes_dataset(tmp_path, num_samples=10)
    enable_objects(dataset)
    sync(dataset)
    dataset.delete_sample_field(FIELD)  # no sample's last_modified_at moves

    sync(dataset)  # the consistency check finds it

    assert object_vectors(dataset) == {}


def test_a_broken_image_fails_its_objects_with_a_reason(tmp_path):
    dataset = scenes_dataset(tmp_path, num_samples=10)
    broken = dataset.first()
    with open(broken.filepath, "wb") as f:
        f.write(b"not an image")
    enable_objects(dataset)

    report = sync(dataset)

    num_broken = len(broken[FIELD].detections)
    assert report.failed == num_broken
    status = ais.get_status(dataset, patches_field=FIELD)
    assert len(status["failures"]) == num_broken
    failure = status["failures"][0]
    assert failure["sample_id"] == broken.id
    assert failure["label_id"] in {d.id for d in broken[FIELD].detections}
    assert failure["reason"]
    counts = status["counts"]
    assert counts["num_indexed"] + counts["num_failed"] == counts["num_objects"]
    # unchanged: not retried
    assert sync(dataset).failed == 0


def test_object_index_lives_beside_the_image_index(tmp_path):
    dataset = scenes_dataset(tmp_path, num_samples=12)
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(), compute=False)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    enable_objects(dataset)
    sync(dataset)
    assert ais.get_status(dataset)["counts"]["num_indexed"] == 12

    images = ais.perform_ai_search(dataset, prompt="a red circle", limit=5)
    assert not ais.get_collection(dataset, images)._is_patches

    ais.disable_embeddings(dataset, patches_field=FIELD)
    assert not ais.is_embeddings_enabled(dataset, patches_field=FIELD)
    assert ais.is_embeddings_enabled(dataset)
    assert ais.get_status(dataset)["object_fields"] == []
    # the image results stay: they are not of the objects
    assert ais.get_collection(dataset, images).count() == 5


def test_crop_settings_are_part_of_the_index(tmp_path):
    dataset = scenes_dataset(tmp_path, num_samples=6)
    enable_objects(dataset)
    sync(dataset)
    first = st.get(Objects(dataset, FIELD))["index"]["name"]

    enable_objects(dataset)  # the same: nothing to rebuild
    assert st.get(Objects(dataset, FIELD)).get("build") is None

    enable_objects(dataset, margin=1.0)
    report = sync(dataset)
    assert report.rebuilt
    doc = st.get(Objects(dataset, FIELD))
    assert doc["index"]["name"] != first
    assert doc["index"]["crop"]["margin"] == 1.0


@pytest.mark.slow
def test_kill_9_keeps_committed_objects_and_resume_finishes(tmp_path):
    dataset = scenes_dataset(tmp_path, num_samples=80)
    enable_objects(dataset)
    total = dataset.count(f"{FIELD}.detections")
    target = Objects(dataset, FIELD)
    kill_sync_worker_midway(target, ["--dataset", dataset.name,
                                     "--patches-field", FIELD])

    with pytest.raises(ais.IndexNotReadyError):
        ais.perform_ai_search(dataset, prompt="a red circle",
                              patches_field=FIELD)
    committed = indexes.open_ref(st.get(target)["build"]).count()
    assert 0 < committed < total

    report = sync(dataset)

    assert report.added == total - committed
    assert report.skipped == committed


def test_bad_requests_say_what_is_wrong(indexed, tmp_path):
    dataset, _ = indexed
    with pytest.raises(ObjectFieldError, match="no field 'nope'"):
        ais.enable_embeddings(dataset, patches_field="nope", compute=False)
    with pytest.raises(ObjectFieldError, match="'filepath'.*not objects"):
        ais.enable_embeddings(dataset, patches_field="filepath",
                              compute=False)
    with pytest.raises(ValueError, match="label_id: give patches_field"):
        ais.perform_ai_search(dataset, label_id=str(dataset.first().id))
    with pytest.raises(ValueError, match="image_id: object search"):
        ais.perform_ai_search(dataset, image_id=dataset.first().id,
                              patches_field=FIELD)
    with pytest.raises(ValueError, match="margin"):
        ais.enable_embeddings(dataset, margin=0.2, compute=False)
    with pytest.raises(ValueError, match="label_id: no embedding"):
        ais.perform_ai_search(dataset, label_id="0" * 24, patches_field=FIELD)
    fresh = scenes_dataset(tmp_path, num_samples=2)
    with pytest.raises(ais.AISearchNotEnabledError,
                       match="Object search of field 'ground_truth'.*"
                       "patches_field='ground_truth'"):
        ais.perform_ai_search(fresh, prompt="x", patches_field=FIELD)


@pytest.mark.slow
def test_the_refresher_keeps_object_indexes_fresh(tmp_path):
    from fiftyone_ai_search.scheduler import refresh_all

    dataset = scenes_dataset(tmp_path, num_samples=8)
    enable_objects(dataset)
    label = f"{dataset.name} ({FIELD})"

    report = refresh_all(datasets=[dataset.name])
    assert report.synced[label].added == dataset.count(f"{FIELD}.detections")
    # nothing changed: nothing embedded (samples edited within the sync's
    # watermark margin are looked at again, cheaply)
    again = refresh_all(datasets=[dataset.name])
    assert label in again.unchanged or again.synced[label].added == 0

    sample = dataset.first()
    sample[FIELD].detections[0].bounding_box = [0.1, 0.1, 0.4, 0.4]
    sample.save()
    report = refresh_all(datasets=[dataset.name])
    assert report.synced[label].updated == 1

    # a deleted dataset's object index goes with it
    key = Objects(dataset, FIELD).key
    dataset.delete()
    report = refresh_all()
    assert key in report.removed
    assert st.get_key(key) is None


def test_object_search_on_the_server_backend(tmp_path, monkeypatch):
    # qdrant-client's :memory: mode speaks the server API
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_QDRANT_URL", ":memory:")
    dataset = scenes_dataset(tmp_path, num_samples=30)
    enable_objects(dataset, backend="server")
    assert sync(dataset).added == dataset.count(f"{FIELD}.detections")
    sample = dataset.first()
    gone = sample[FIELD].detections.pop()
    sample.save()
    report = sync(dataset)
    assert (report.added, report.updated, report.removed) == (0, 0, 1)
    assert gone.id not in object_vectors(dataset)

    name = ais.perform_ai_search(dataset, prompt="a red circle",
                                 patches_field=FIELD, limit=3)
    assert ais.get_collection(dataset, name)._is_patches
    assert ais.get_status(dataset, patches_field=FIELD)["backend"] == "server"


def test_another_model_rebuilds_the_object_index_beside(tmp_path,
                                                         other_tiny_model):
    dataset = scenes_dataset(tmp_path, num_samples=10)
    enable_objects(dataset)
    sync(dataset)
    target = Objects(dataset, FIELD)
    first = st.get(target)["index"]

    ais.enable_embeddings(dataset, model=other_tiny_model,
                          patches_field=FIELD, compute=False)
    doc = st.get(target)
    assert doc["index"]["name"] == first["name"]  # searched until replaced
    assert doc["build"]["model"] == other_tiny_model
    name = ais.perform_ai_search(dataset, prompt="a red circle",
                                 patches_field=FIELD, limit=3)
    assert ais.list_collections(dataset)[-1]["query"]["rebuilding"]

    report = sync(dataset)

    assert report.rebuilt
    assert report.added == dataset.count(f"{FIELD}.detections")
    doc = st.get(target)
    assert doc["index"]["model"] == other_tiny_model
    assert doc["build"] is None
    store = indexes.open_ref(doc["index"])
    try:
        assert store.info().model_identity == doc["index"]["model_identity"]
    finally:
        store.close()
    assert name


def test_a_model_change_while_an_object_sync_runs_never_mixes_models(
        tmp_path, other_tiny_model, monkeypatch):
    """The race at the check before a commit (a real worker process and
    the model changed from another is test_generations' image case): the
    model changes once 10 objects are committed."""
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_BATCH_SIZE", "8")  # many commits
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_NUM_WORKERS", "0")
    dataset = scenes_dataset(tmp_path, num_samples=20)
    enable_objects(dataset)
    target = Objects(dataset, FIELD)
    changed = at_the_check_before_a_commit(
        monkeypatch, target, 10, lambda: ais.enable_embeddings(
            dataset, model=other_tiny_model, patches_field=FIELD,
            compute=False))

    # the sync stops before its next commit, then builds what the state
    # asks for now
    sync(dataset)

    assert changed  # before a commit: mid-sync
    doc = st.get(target)
    assert doc["index"]["model"] == other_tiny_model and doc["build"] is None
    from fiftyone_ai_search.embedding.pipeline import embed_images
    from fiftyone_ai_search.embedding.model import load_model, resolve_model
    from fiftyone_ai_search.sync.objects import crop_settings

    # every stored vector is the new model's embedding of its crop
    model = load_model(resolve_model(other_tiny_model, None))
    stored = object_vectors(dataset)
    items = [(s.id, s.filepath, [(d.id, d.bounding_box)
                                 for d in s[FIELD].detections])
             for s in dataset]
    fresh = {k: v for batch in embed_images(
        model, items, num_workers=0, crop=crop_settings(doc["index"]))
        for k, v in zip(batch.keys, batch.vectors)}
    assert set(stored) == set(fresh)
    assert all(float(stored[k] @ fresh[k]) > 0.999 for k in fresh)


def test_disable_while_an_object_sync_runs_stops_it_and_leaves_nothing(
        tmp_path, monkeypatch):
    """The race at the check before a commit (a real worker process
    disabled from another is test_generations' image case): the object
    index is disabled once 10 objects are committed."""
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_BATCH_SIZE", "8")  # many commits
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_NUM_WORKERS", "0")
    dataset = scenes_dataset(tmp_path, num_samples=20)
    enable_objects(dataset)
    target = Objects(dataset, FIELD)
    builds = []

    def disable():
        builds.append(st.get(target)["build"])
        ais.disable_embeddings(dataset, patches_field=FIELD)

    disabled = at_the_check_before_a_commit(monkeypatch, target, 10, disable)

    # stops before its next commit, and lets go (a worker's command ends
    # there without an error: test_generations)
    with pytest.raises(SyncCancelled, match="not enabled"):
        sync(dataset)

    assert disabled  # before a commit: mid-sync
    assert st.get(target) is None  # the sync let go: nothing is left
    (build,) = builds
    store = indexes.open_ref(build)
    try:
        assert not store.exists()
    finally:
        store.close()


def test_embeddings_of_objects(indexed):
    dataset, _ = indexed
    patches = dataset.to_patches(FIELD).take(5, seed=1)
    ids, vectors = ais.get_embeddings(patches)  # a patches view: objects
    assert ids == patches.values("id")
    assert vectors.shape == (5, 64)
    assert abs(float((vectors ** 2).sum(axis=1).mean()) - 1.0) < 1e-5
    view = dataset.limit(3)
    ids, _ = ais.get_embeddings(view, patches_field=FIELD)
    assert ids == view.values(f"{FIELD}.detections.id", unwind=True)


def test_threshold_and_histogram_of_object_results(indexed):
    dataset, _ = indexed
    name = ais.perform_ai_search(dataset, prompt="a red circle",
                                 patches_field=FIELD, limit=100,
                                 threshold=0.6)
    scores = [s for _, s in ais.get_collection_scores(dataset, name)]
    assert scores and min(scores) >= 0.6
    edges, counts = ais.get_score_histogram(dataset, name, bins=5)
    assert sum(counts) == len(scores)
    kept = ais.save_collection(dataset, "clear red circles",
                               min_score=edges[2])
    saved = ais.get_collection(dataset, kept)
    assert saved._is_patches
    assert len(saved) == sum(counts[2:])
    assert set(saved.values(f"{FIELD}.label")) <= {
        label for label in dataset.distinct(f"{FIELD}.detections.label")}


def test_polylines_and_keypoints_are_indexed_by_the_box_around_them(tmp_path):
    dataset = scenes_dataset(tmp_path, num_samples=30)
    for sample in dataset:
        lines, points = [], []
        for det in sample[FIELD].detections:
            x, y, w, h = det.bounding_box
            corners = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
            lines.append(fo.Polyline(label=det.label, points=[corners],
                                     closed=True))
            points.append(fo.Keypoint(label=det.label, points=corners))
        sample["outlines"] = fo.Polylines(polylines=lines)
        sample["corners"] = fo.Keypoints(keypoints=points)
        sample.save()
    for field in ("outlines", "corners"):
        ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                              patches_field=field, compute=False)
        report = ais.calculate_embeddings(dataset, patches_field=field,
                                          wait=True, progress=False)
        assert report.added == dataset.count(f"{FIELD}.detections")
        name = ais.perform_ai_search(dataset, prompt="a red circle",
                                     patches_field=field, limit=1)
        assert ais.get_collection(dataset, name).values(
            f"{field}.label") == ["red circle"]
    # the same boxes: the same crops as the detections'
    boxes = Objects(dataset, "outlines").objects_of(dataset.limit(1))[2][0]
    first = dataset.first()
    for (_, box), det in zip(boxes, first[FIELD].detections):
        assert box == pytest.approx(det.bounding_box, abs=1e-9)


def test_object_results_are_known_as_the_latest_results(indexed):
    dataset, _ = indexed
    name = ais.perform_ai_search(dataset, prompt="a red circle",
                                 patches_field=FIELD, limit=10)
    results = ais.get_collection(dataset, name)
    assert ais.is_latest_results(results)
    scores = [s for _, s in ais.get_collection_scores(dataset, name)]
    assert ais.is_latest_results(
        ais.get_collection(dataset, name, min_score=scores[3]))
    # a patches view of the field is not: a new search searches it
    assert not ais.is_latest_results(dataset.to_patches(FIELD))
    assert ais.object_label_fields(dataset) == [FIELD]
