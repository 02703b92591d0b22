"""Issue 26, point 9, in a real browser: a curator searches by an image
uploaded from the browser (FiftyOne's file input in the search form), is
told where a file is no image, and sees in the panel whether a refresher
keeps the dataset fresh, then starts one as a background service with the
options of the SDK's refresher (its interval, its datasets). The score
histogram stays drawn through the panel's re-renders: a page reload, the
refresher line's write, closing and reopening the panel.

Waits poll for what the App shows (none depends on the machine's speed).
"""

import os
import re
import signal

import pytest

import fiftyone_ai_search as ais
from fiftyone_ai_search import refreshers
from fiftyone_ai_search.demo import shapes
from selenium.webdriver.common.by import By

from tests.helpers import shapes_dataset

pytestmark = pytest.mark.slow

PANEL = "AI Search"


@pytest.fixture(scope="module")
def app_dataset(tmp_path_factory):
    """60 shapes, AI search on and computed."""
    dataset = shapes_dataset(tmp_path_factory.mktemp("upload"),
                             num_samples=60)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    yield dataset
    for running in refreshers.refreshers_of(dataset.name)["running"]:
        # a refresher the panel started: a service of its own, stopped here
        os.kill(running["pid"], signal.SIGTERM)
    ais.disable_embeddings(dataset)
    dataset.delete()


def panel(app):
    return lambda: app.panel(PANEL)


def _choose_file(app, path):
    """Gives the prompt's file input a file, as a curator's file dialog
    (or a drop) does."""
    def file_input():
        inputs = app.prompt().find_elements(By.CSS_SELECTOR,
                                            "input[type=file]")
        return inputs[0] if inputs else None
    app.wait(file_input, "the file input").send_keys(str(path))


def test_search_by_an_uploaded_image(app, app_dataset, tmp_path):
    query = tmp_path / "my green circle.png"
    shapes.render(shapes.sample_spec(seed=7, index=0, color="green",
                                     shape="circle"),
                  image_size=128, seed=7).save(query)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")

    app.open_dataset(app_dataset.name)
    app.open_panel(PANEL)
    app.open_search_prompt(panel(app), "image")
    app.wait_for_text("Upload from this computer", root=app.prompt)
    app.wait(app.execute_disabled, "Execute disabled: nothing uploaded")

    _choose_file(app, query)
    app.fill("Limit", 5, root=app.prompt)
    app.wait_executable()
    app.screenshot("upload-01-image-chosen")
    app.execute_prompt()

    # named by its file, and said to be kept nowhere (no path recorded)
    app.wait_for_text("Latest results: uploaded image 'my green circle.png' "
                      "(not kept), 5 samples", root=panel(app))
    app.wait_for_count(5)
    app.wait(lambda: app.tile_labels() and app.tile_labels()[0]
             == "green circle", "a green circle first in the grid")
    app.screenshot("upload-02-results")
    assert not app.console_errors()

    # a file that is no image: said (the App's file input refuses it by
    # its name's ending, before the form's own check), and it cannot run
    app.open_search_prompt(panel(app), "image")
    _choose_file(app, notes)
    app.wait_for_text(re.compile(r"Only \.jpg,.* files are allowed"),
                      root=app.prompt)
    app.wait(app.execute_disabled, "Execute disabled: not an image")
    app.screenshot("upload-03-not-an-image")
    app.cancel_prompt()


def _histogram_drawn(app, what):
    """The panel's score histogram draws bars (not just its axes) beside
    the results it names."""
    app.wait_for_text("Latest results: prompt 'a green circle', 10 samples",
                      root=panel(app))
    try:
        app.wait_for_bars(panel(app))
    except TimeoutError:
        app.screenshot(f"FAILED-no-bars-{what}")
        raise AssertionError(f"the histogram draws no bars {what}") from None


def test_the_histogram_stays_drawn_and_a_refresher_starts(app, app_dataset):
    app.open_dataset(app_dataset.name)
    app.open_panel(PANEL)
    app.search_from_panel(panel(app), "prompt", 10, Prompt="a green circle")
    _histogram_drawn(app, "after a search")

    # the page loaded again: the panel's state outlives it, its data not
    app.reload()
    app.open_panel(PANEL)
    _histogram_drawn(app, "after a page reload")
    app.wait_for_text("No refresher keeps this dataset fresh",
                      root=panel(app))
    app.screenshot("refresher-01-none")

    # its form: the SDK's options (interval, datasets), what it will run
    app.click_button("Start a refresher", root=panel(app))
    app.wait_for_text("A pass every (minutes)", root=app.prompt)
    app.wait_for_text("Every dataset with AI search on", root=app.prompt)
    app.fill("A pass every (minutes)", 0, root=app.prompt)
    app.wait_for_text("A pass every 1 to 1440 minutes", root=app.prompt)
    app.wait(app.execute_disabled, "Execute disabled: 0 minutes")
    # chosen datasets: a multi-select of those with AI search on
    app.choose("Over", "Chosen datasets", root=app.prompt)
    app.field("Datasets", root=app.prompt)
    app.wait_for_text(app_dataset.name, root=app.prompt)
    app.screenshot("refresher-02-chosen")
    app.choose("Over", f"This dataset ({app_dataset.name})", root=app.prompt)
    app.fill("A pass every (minutes)", 7, root=app.prompt)
    app.wait_for_text("refresher --interval-minutes 7 --dataset "
                      f"{app_dataset.name}", root=app.prompt)
    app.wait_executable()
    app.screenshot("refresher-02-form")
    app.execute_prompt()
    app.wait_for_notification("Started a refresher (pid")
    app.wait_for_text("a pass every 7 min over this dataset",
                      root=panel(app))
    assert not app.find_text("Start a refresher", panel(app))
    # the refresher line's state write re-rendered the panel: still drawn
    _histogram_drawn(app, "after the refresher line was written")
    # a service of its own: not the App server, and it runs its passes
    (running,) = refreshers.refreshers_of(app_dataset.name)["running"]
    assert running["interval_minutes"] == 7
    assert running["datasets"] == [app_dataset.name]
    with open(f"/proc/{running['pid']}/cmdline", "rb") as f:
        assert b"fiftyone_ai_search\0refresher" in f.read()
    app.wait(lambda: refreshers.refreshers_of(app_dataset.name)[
        "last_pass"], "the service's first pass", timeout=300)
    app.reload()
    app.open_panel(PANEL)
    app.wait_for_text(re.compile(r"Last pass \S+ \S+ UTC, by the refresher "
                                 r"on \S+ \(pid \d+\): images: "
                                 "(nothing changed|synced)"),
                      root=panel(app))
    _histogram_drawn(app, "after a reload with a refresher running")
    app.screenshot("refresher-03-kept-fresh")

    # closed and opened again: a new panel, drawn from the start
    app.close_panel(PANEL)
    app.open_panel(PANEL)
    _histogram_drawn(app, "after the panel was closed and reopened")
    app.screenshot("refresher-04-reopened")
    assert not app.console_errors()
