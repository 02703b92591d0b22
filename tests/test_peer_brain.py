"""The peers' own similarity tests, on our Brain backend and on the Brain's
sklearn backend as the control (how they are fetched and adapted:
``tests/peer.py``).

Every peer test runs on both. A test that fails on ours for a documented
reason (docs/brain.md, "What differs from the Brain's backends") is
listed in :data:`LIMITATIONS` with that reason and
marked expected-to-fail, strictly: if it starts passing, the list is out
of date and the run fails.
"""

import os

import pytest

from tests import peer

pytestmark = pytest.mark.slow  # the peer projects' own suites

#: the peer tests: (file, test) with file relative to the Brain's tests/,
#: or "fiftyone:" for FiftyOne's vendored unit tests
BRAIN_SIMILARITY = [
    "test_brain_config",
    "test_image_similarity_backends",
    "test_patch_similarity_backends",
    "test_qdrant_backend_config",
    "test_images",
    "test_images_subset",
    "test_images_missing",
    "test_images_embeddings",
    "test_patches",
    "test_patches_subset",
    "test_patches_missing",
    "test_patches_embeddings",
    "test_pgvector_config_validation",
    "test_pgvector_ivfflat_backend",
    "test_pgvector_halfvec_backend",
]
PEER_TESTS = (
    [("intensive/test_similarity.py", t) for t in BRAIN_SIMILARITY]
    + [("intensive/test_uniqueness.py", "test_uniqueness_similarity_index"),
       ("intensive/test_visualization.py", "test_similarity_index"),
       ("fiftyone:similarity_tests.py", "SimilarityTests.test_image_similarity"),
       ("fiftyone:similarity_tests.py", "SimilarityTests.test_object_similarity")]
)

#: tests that need a backend the peer's file skips itself (they return at
#: once unless their backend is in SIMILARITY_BACKENDS): they prove nothing
#: on either backend, but are run so the count matches the peer's file
NOT_OURS = {"test_qdrant_backend_config", "test_pgvector_ivfflat_backend",
            "test_pgvector_halfvec_backend"}

_RUN_DOCUMENT = (
    "asserts that a run without an embeddings field keeps its vectors in "
    "the run's document (index3: sklearn's storage); ours keeps them in the "
    "Qdrant index, as every external backend does")

#: (test, backend) -> the documented reason it fails there
LIMITATIONS = {
    ("test_images_embeddings", "ai_search"): _RUN_DOCUMENT,
    ("test_patches_embeddings", "ai_search"): _RUN_DOCUMENT,
    # the control's own failures: artefacts of running the peer here
    ("test_image_similarity_backends", "sklearn"): (
        "control artefact: the peer's loop over custom backends reloads a "
        "run it never save()d; sklearn keeps its vectors in the run "
        "document only after save(), so the reloaded run is empty"),
    ("test_patch_similarity_backends", "sklearn"): (
        "control artefact: as test_image_similarity_backends"),
    ("test_images_embeddings", "sklearn"): (
        "control artefact of adaptation 2: the last run gets the Brain's "
        "default zoo model, the tiny CLIP here, so supports_prompts is True "
        "where the peer expects mobilenet's False"),
    ("test_patches_embeddings", "sklearn"): (
        "control artefact: as test_images_embeddings"),
}

BACKENDS = ["ai_search", "sklearn"]


def _params():
    for backend in BACKENDS:
        for path, name in PEER_TESTS:
            reason = LIMITATIONS.get((name, backend))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(path, name, backend, marks=marks,
                               id=f"{backend}-{path.split('/')[-1]}::{name}")


_modules = {}


def _module(path):
    if path not in _modules:
        if path.startswith("fiftyone:"):
            file = os.path.join(os.path.dirname(__file__), "peer",
                                "fiftyone_" + path.split(":", 1)[1])
        else:
            try:
                tests = peer.brain_tests_dir()
            except peer.PeerTestsUnavailable as e:
                if os.environ.get("CI"):
                    raise
                pytest.skip(str(e))
            file = os.path.join(tests, path)
        name = "peer_" + os.path.basename(file)[:-3]
        _modules[path] = peer.load_module(file, name)
    return _modules[path]


def test_the_list_is_the_peers_whole_file():
    """No peer test is left out of the similarity file silently."""
    module = _module("intensive/test_similarity.py")
    found = sorted(n for n in dir(module) if n.startswith("test_"))
    assert found == sorted(BRAIN_SIMILARITY)


@pytest.mark.parametrize("path,name,backend", list(_params()))
def test_peer(path, name, backend):
    module = _module(path)
    with peer.adapted(backend):
        if "." in name:
            case, method = name.split(".")
            getattr(module, case)(method).debug()  # unittest, errors raised
        else:
            getattr(module, name)()
