"""Running the peers' own similarity tests on our Brain backend.

The yardsticks (see ``tests/test_peer_brain.py``):

- FiftyOne Brain's tests, taken unmodified from the ``fiftyone-brain``
  source distribution on PyPI at a pinned version (fetched once into
  ``.peer-tests/``, checked against its sha256): ``tests/intensive/
  test_similarity.py`` (every test), ``test_uniqueness.py::
  test_uniqueness_similarity_index`` and ``test_visualization.py::
  test_similarity_index``.
- FiftyOne's ``tests/unittests/similarity_tests.py``, which no package
  ships: vendored in ``tests/peer/`` with its origin and licence.

Each runs twice: on the backend under test (``ai_search``) and on the
Brain's ``sklearn`` backend as the control. They are adapted only where
they need a download or a package that cannot be had here; every
adaptation is one of these, applied around the unmodified test code:

1. ``foz.load_zoo_dataset("quickstart", ...)`` downloads: it returns a
   local stand-in with the quickstart's shape instead (200 images, 1,232
   ``ground_truth`` detections, some of them labelled ``person``, and a
   ``uniqueness`` field), drawn from the scenes world
   (``fiftyone_ai_search.demo.shapes``).
2. ``foz.load_zoo_model(name)`` downloads weights: every zoo model is
   FiftyOne's own ``open-clip-torch`` zoo model holding the bundled tiny
   CLIP (``clip_model="local-dir:..."``), widened to the 512 dimensions
   of ViT-B-32 that the peer's assertions name (:func:`tiny_clip_512`:
   the same cosines). A zoo model name given to
   ``compute_similarity`` (or the Brain's implicit default model) becomes
   that zoo model and its ``model_kwargs``, so a run records a model that
   loads again offline.
3. ``compute_visualization`` defaults to UMAP (``umap-learn``, not a
   dependency): PCA instead.
4. The backend: ``backend="sklearn"``, the Brain's default backend and
   ``SIMILARITY_BACKENDS`` (the peer's list of custom backends) all name
   the backend under test. In the control run that is ``sklearn`` itself,
   so nothing changes there.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import subprocess
import sys
import tarfile

import fiftyone as fo
import fiftyone.brain as fob
import fiftyone.zoo as foz
import fiftyone.zoo.models as fozm

from fiftyone_ai_search.demo import shapes

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: the pinned source distribution the Brain's tests are read from
BRAIN_SDIST = "fiftyone_brain-0.25.0.tar.gz"
BRAIN_SDIST_REQ = "fiftyone-brain==0.25.0"
BRAIN_SDIST_SHA256 = (
    "050c950e0bb9f1d4c0a8cb09ba1a4cde6a242bbbd44536337b2d90452649e656")

#: where fetched peer tests are kept (git-ignored)
CACHE_DIR = os.path.join(REPO_DIR, ".peer-tests")

#: the zoo model that stands in for every zoo model (adaptation 2)
ZOO_CLIP = "open-clip-torch"

#: the quickstart's shape (adaptation 1)
QUICKSTART_SAMPLES = 200
QUICKSTART_OBJECTS = 1232

_ORIGINAL = {
    "load_zoo_dataset": foz.load_zoo_dataset,
    "load_zoo_model": foz.load_zoo_model,
    "compute_similarity": fob.compute_similarity,
    "compute_visualization": fob.compute_visualization,
}


class PeerTestsUnavailable(RuntimeError):
    """The pinned peer tests could not be fetched."""


def brain_tests_dir():
    """The ``tests/`` folder of the pinned fiftyone-brain sdist, fetched
    from PyPI once (pip download) and unpacked into :data:`CACHE_DIR`."""
    root = os.path.join(CACHE_DIR, BRAIN_SDIST[:-len(".tar.gz")])
    tests = os.path.join(root, "tests")
    os.makedirs(CACHE_DIR, exist_ok=True)
    # every pytest-xdist worker collects the peer tests: one fetches and
    # unpacks, the others wait for it (never reading a half-unpacked folder)
    with open(os.path.join(CACHE_DIR, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isdir(tests):
            _fetch_brain_tests()
    return tests


def _fetch_brain_tests():
    archive = os.path.join(CACHE_DIR, BRAIN_SDIST)
    if not os.path.exists(archive):
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps",
             "--no-binary", ":all:", "--no-build-isolation", "-q",
             "-d", CACHE_DIR, BRAIN_SDIST_REQ],
            capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(archive):
            raise PeerTestsUnavailable(
                f"pip download {BRAIN_SDIST_REQ} failed: "
                f"{(proc.stderr or proc.stdout)[-500:]}")
    with open(archive, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != BRAIN_SDIST_SHA256:
        raise PeerTestsUnavailable(
            f"{archive}: sha256 {digest}, expected "
            f"{BRAIN_SDIST_SHA256} (not the pinned release)")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers()
                   if "/tests/" in m.name and m.isfile()]
        tar.extractall(CACHE_DIR, members=members, filter="data")


def load_module(path, name):
    """Imports a peer test file as a module of its own name."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- adaptation 1: the quickstart stand-in -----------------------------------


_TEMPLATE = "peer-quickstart-standin"


def _quickstart_template():
    """200 scenes with exactly 1,232 ground_truth objects, made once a
    session (persistent in the test database, so clones are cheap)."""
    if fo.dataset_exists(_TEMPLATE):
        return fo.load_dataset(_TEMPLATE)
    images_dir = os.path.join(fo.config.default_dataset_dir, _TEMPLATE)
    os.makedirs(images_dir, exist_ok=True)
    samples = []
    for index in range(QUICKSTART_SAMPLES):
        spec = shapes.scene_spec(51, index, shapes_per_image=(5, 8),
                                 size_range=(0.1, 0.18))
        img, boxes = shapes.render_scene(spec, image_size=192, seed=index)
        path = os.path.join(images_dir, f"{index:06d}.jpg")
        img.save(path, quality=90)
        # the quickstart also has a uniqueness field (the peer deletes it)
        samples.append(fo.Sample(filepath=path, uniqueness=index / 200,
                                 ground_truth=fo.Detections(
            detections=[fo.Detection(label=s.label, bounding_box=box)
                        for s, box in zip(spec.shapes, boxes)])))
    dataset = fo.Dataset(_TEMPLATE, persistent=True)
    dataset.add_samples(samples)
    # drop objects (their shapes stay drawn, unlabelled) until the count
    # is the quickstart's; relabel one class as "person", as the
    # quickstart's most common label, for the peer's filter_labels()
    extra = dataset.count("ground_truth.detections") - QUICKSTART_OBJECTS
    assert extra >= 0, extra
    for sample in dataset.iter_samples(autosave=True):
        dets = sample.ground_truth.detections
        while extra > 0 and len(dets) > 5:
            dets.pop()
            extra -= 1
        for det in dets:
            if det.label == shapes.class_label("red", "circle"):
                det.label = "person"
    assert dataset.count("ground_truth.detections") == QUICKSTART_OBJECTS
    return dataset


def load_zoo_dataset(name, *args, dataset_name=None, max_samples=None,
                     drop_existing_dataset=False, **kwargs):
    """Adaptation 1: the zoo's loader, for the quickstart only."""
    if name != "quickstart":
        raise AssertionError(f"the peer tests asked for zoo dataset {name!r}"
                             " that has no stand-in")
    dataset_name = dataset_name or (
        "quickstart" if max_samples is None else f"quickstart-{max_samples}")
    if fo.dataset_exists(dataset_name):
        if not drop_existing_dataset:
            return fo.load_dataset(dataset_name)
        fo.delete_dataset(dataset_name)
    template = _quickstart_template()
    view = template if max_samples is None else template.limit(max_samples)
    return view.clone(dataset_name)


# -- adaptation 2: the tiny CLIP for every zoo model ---------------------------


def tiny_clip_512():
    """The bundled tiny CLIP widened to 512-d, ViT-B-32's size, which the
    peer's assertions name: both towers' output projections are followed
    by one fixed map with orthonormal columns (64 -> 512), so every cosine
    is the tiny CLIP's. Written once into :data:`CACHE_DIR`."""
    import json

    import numpy as np
    from safetensors.numpy import load_file, save_file

    out = os.path.join(CACHE_DIR, "tiny-clip-512")
    if os.path.exists(os.path.join(out, "open_clip_model.safetensors")):
        return "local-dir:" + out
    src = shapes.tiny_clip_model_name()[len("local-dir:"):]
    with open(os.path.join(src, "open_clip_config.json")) as f:
        config = json.load(f)
    dim = config["model_cfg"]["embed_dim"]
    config["model_cfg"]["embed_dim"] = 512
    weights = {k: v.astype(np.float32)
               for k, v in load_file(
                   os.path.join(src, "open_clip_model.safetensors")).items()}
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((512, dim)))
    weights["visual.attnpool.c_proj.weight"] = (
        q @ weights["visual.attnpool.c_proj.weight"])
    weights["visual.attnpool.c_proj.bias"] = (
        q @ weights["visual.attnpool.c_proj.bias"])
    weights["text_projection"] = weights["text_projection"] @ q.T
    os.makedirs(out, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()},
              os.path.join(out, "open_clip_model.safetensors"))
    with open(os.path.join(out, "open_clip_config.json"), "w") as f:
        json.dump(config, f)
    return "local-dir:" + out


def tiny_zoo_model_kwargs():
    return {"clip_model": tiny_clip_512(), "pretrained": None}


def load_zoo_model(name, *args, **kwargs):
    """Adaptation 2: every zoo model is the zoo's open_clip model holding
    the bundled tiny CLIP."""
    return _ORIGINAL["load_zoo_model"](ZOO_CLIP, **tiny_zoo_model_kwargs())


def _brain_defaults_model(samples, embeddings, kwargs, patches_field,
                          roi_field):
    """Whether the Brain would pick its default zoo model (as its own
    compute_similarity decides)."""
    import fiftyone.brain.internal.core.utils as fbu

    field = kwargs.get("embeddings_field")
    if field is None and isinstance(embeddings, str):
        field, embeddings = embeddings, None
    exists = False
    if field is not None:
        _, exists = fbu.parse_data_field(
            samples, field, patches_field=patches_field or roi_field,
            data_type="embeddings")
    return embeddings is None and not exists


# -- the harness ---------------------------------------------------------------


@contextlib.contextmanager
def adapted(backend):
    """Applies the adaptations for a run on ``backend`` (``"sklearn"`` or
    ``"ai_search"``), and undoes them after; deletes the datasets the peer
    test made."""
    import fiftyone_ai_search.brain  # noqa: F401  registers "ai_search"

    def compute_similarity(samples, patches_field=None, roi_field=None,
                           embeddings=None, brain_key=None, model=None,
                           model_kwargs=None, backend=None, **kwargs):
        if isinstance(model, str) or (model is None and _brain_defaults_model(
                samples, embeddings, kwargs, patches_field, roi_field)):
            model, model_kwargs = ZOO_CLIP, tiny_zoo_model_kwargs()
        if backend in (None, "sklearn"):
            backend = under_test
        return _ORIGINAL["compute_similarity"](
            samples, patches_field=patches_field, roi_field=roi_field,
            embeddings=embeddings, brain_key=brain_key, model=model,
            model_kwargs=model_kwargs, backend=backend, **kwargs)

    def compute_visualization(*args, method=None, **kwargs):
        return _ORIGINAL["compute_visualization"](
            *args, method=method or "pca", **kwargs)

    under_test = backend
    before = set(fo.list_datasets())
    env = os.environ.get("SIMILARITY_BACKENDS")
    patches = [(foz, "load_zoo_dataset", load_zoo_dataset),
               (foz, "load_zoo_model", load_zoo_model),
               (fozm, "load_zoo_model", load_zoo_model),
               (fob, "compute_similarity", compute_similarity),
               (fob, "compute_visualization", compute_visualization)]
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    os.environ["SIMILARITY_BACKENDS"] = backend
    for obj, attr, value in patches:
        setattr(obj, attr, value)
    try:
        yield
    finally:
        for obj, attr, value in saved:
            setattr(obj, attr, value)
        if env is None:
            os.environ.pop("SIMILARITY_BACKENDS", None)
        else:
            os.environ["SIMILARITY_BACKENDS"] = env
        for name in set(fo.list_datasets()) - before - {_TEMPLATE}:
            _delete(name)


def _delete(name):
    import fiftyone_ai_search as ais

    dataset = fo.load_dataset(name)
    for key in dataset.list_brain_runs():
        try:
            dataset.delete_brain_run(key)
        except Exception:  # a failed test may leave a broken run behind
            dataset.delete_brain_run(key, cleanup=False)
    if ais.is_embeddings_enabled(dataset):
        ais.disable_embeddings(dataset)
    dataset.delete()
