"""Where the embedded index cannot run (issue 26, point 8): on Windows it is
refused with a message that says what to do, and the server backend, which
needs no ``fcntl``, still works.

This machine runs Linux: Windows is simulated where the platform is looked
at, by hiding ``fcntl`` (``import fcntl`` then fails, as it does on Windows);
the package's own code is not touched. (``sys.platform`` stays: torch, once
imported, takes Windows-only paths when it says ``win32``.)
"""

import sys

import fiftyone.operators.types as types
import pytest

import fiftyone_ai_search as ais
from fiftyone_ai_search.app import forms
from fiftyone_ai_search.config import Settings
from fiftyone_ai_search.demo import tiny_clip_model_name
from fiftyone_ai_search.errors import UnsupportedPlatformError
from fiftyone_ai_search.store import open_store
from fiftyone_ai_search.store.portability import (
    check_embedded_index,
    embedded_index_supported,
)

from tests.helpers import shapes_dataset

#: the modules that import fcntl when the embedded index is first used
_EMBEDDED_MODULES = ("fiftyone_ai_search.store.locks",
                     "fiftyone_ai_search.store.edge")


@pytest.fixture
def windows(monkeypatch):
    """This process as if on Windows: no ``fcntl``, and the embedded
    index's modules not imported yet (as in a fresh process)."""
    monkeypatch.setitem(sys.modules, "fcntl", None)  # import fails
    for name in _EMBEDDED_MODULES:
        if name in sys.modules:
            monkeypatch.delitem(sys.modules, name)


def _says_the_way_out(message):
    assert f"({sys.platform})" in message and "fcntl" in message
    assert "backend='server'" in message
    assert "FIFTYONE_AI_SEARCH_QDRANT_URL" in message


def test_the_embedded_index_runs_here():
    assert embedded_index_supported()
    check_embedded_index()  # no error


def test_on_windows_the_embedded_index_is_refused_saying_why(windows,
                                                             tmp_path):
    assert not embedded_index_supported()
    with pytest.raises(UnsupportedPlatformError) as error:
        check_embedded_index()
    _says_the_way_out(str(error.value))
    assert isinstance(error.value, ais.AISearchError)

    # where fcntl is needed, at its (lazy) import: opening an embedded index
    with pytest.raises(UnsupportedPlatformError) as error:
        open_store("an-index", Settings(backend="edge",
                                        storage_dir=str(tmp_path)))
    _says_the_way_out(str(error.value))
    with pytest.raises(UnsupportedPlatformError):
        import fiftyone_ai_search.store.locks  # noqa: F401


def test_on_windows_enabling_the_embedded_index_is_refused(windows,
                                                            tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=3, enable=False)
    with pytest.raises(UnsupportedPlatformError) as error:
        ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                              backend="edge", compute=False)
    _says_the_way_out(str(error.value))
    assert not ais.is_embeddings_enabled(dataset)  # nothing written


def test_on_windows_the_app_enable_form_refuses_the_embedded_index(windows):
    inputs = types.Object()
    forms.enable_form(inputs, {"backend": "edge"})
    backend = inputs.to_json()["properties"]["backend"]
    assert backend["invalid"]
    _says_the_way_out(backend["error_message"])

    inputs = types.Object()
    forms.enable_form(inputs, {"backend": "server"})
    assert not inputs.to_json()["properties"]["backend"].get("invalid")


def test_on_windows_the_server_backend_works(windows, tmp_path, monkeypatch):
    # qdrant-client's :memory: mode speaks the server API (no server here)
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_QDRANT_URL", ":memory:")
    dataset = shapes_dataset(tmp_path, num_samples=20, enable=False)
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          backend="server", compute=False)
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)
    assert report.added == 20
    name = ais.perform_ai_search(dataset, prompt="a photo of a red circle",
                                 limit=1)
    assert ais.get_collection(dataset, name).values(
        "ground_truth.label") == ["red circle"]
    assert "fiftyone_ai_search.store.locks" not in sys.modules
