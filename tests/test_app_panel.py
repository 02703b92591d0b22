"""The panel's data outlives none of its re-renders: FiftyOne's App keeps
a panel's state in the workspace (it outlives the browser's page: a
reload, the App opened again) and its data, the score histogram, in the
page only. Every load of the panel sends the histogram of the results its
state names, the same results or not (the browser test,
tests/test_app_browser_upload.py, watches the bars through a reload, a
state write, and closing and reopening the panel)."""

import pytest

import fiftyone_ai_search as ais

from tests.helpers import shapes_dataset
from tests.test_operators import _Panel
from tests.test_operators import repo_as_plugin  # noqa: F401 (the plugin, found)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    dataset = shapes_dataset(tmp_path_factory.mktemp("panel"),
                             num_samples=20)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    ais.perform_ai_search(dataset, prompt="a red circle", limit=8)
    return dataset


def _histograms(panel):
    """The histograms the last event sent (patch_panel_data)."""
    return [p["data"]["histogram"] for p in panel.asked("patch_panel_data")
            if "histogram" in p["data"]]


def _bars(chart):
    return sum(chart[0]["y"]) if chart else 0


def test_every_load_sends_the_histogram_of_the_results_shown(searched):
    panel = _Panel(searched)
    panel("on_load")
    (chart,) = _histograms(panel)
    assert _bars(chart) == 8
    assert "8 samples" in panel.render()["results_title"]["default"]
    assert panel.render()["range_text"]["default"] == (
        "Showing all 8 results.")

    # the page loaded again: the workspace gives the panel its state back
    # (the results it showed, its slider), its data is gone
    again = _Panel(searched)
    again.state = dict(panel.state)
    again("on_load")
    (chart,) = _histograms(again)
    assert _bars(chart) == 8
    assert not again.asked("patch_panel_state")  # nothing else changed

    # any refresh of the same results sends it too; no state write
    again("on_refresh")
    (chart,) = _histograms(again)
    assert _bars(chart) == 8
    assert not again.asked("patch_panel_state")


def test_one_result_is_said_in_the_singular(searched):
    ais.perform_ai_search(searched, prompt="a red circle", limit=1)
    panel = _Panel(searched)
    panel("on_load")
    assert panel.render()["range_text"]["default"] == (
        "Showing the 1 result.")


def test_no_results_no_histogram(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=4, enable=False)
    panel = _Panel(dataset)
    panel("on_load")
    assert _histograms(panel) in ([], [[]])
    assert "results_title" not in panel.render()
