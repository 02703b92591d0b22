"""Issue 28: a curator's hands on the App, on 10,000 images, in a real
browser: the grid button shows where AI search stands on itself, with
Disable beside it; a sidebar filter is the scope of a search from the panel
and survives it; a limit of 0 and an empty name are refused where typed;
the score-range slider holds both bounds; a collection open in the App can
be renamed, loaded and deleted, and AI search disabled with the results
open, with no broken page; and how long a prompt search takes from the
click to the grid drawn, with the panel open and closed.

Waits poll for what the App shows with generous deadlines (the App's page
reloads, the grid loads): none depends on how fast the machine is.
"""

import json
import re
import time

import pytest
from fiftyone import ViewField as F

import fiftyone_ai_search as ais
from fiftyone_ai_search.app import PLUGIN_NAME
from tests.helpers import shapes_dataset

pytestmark = pytest.mark.slow

NUM_SAMPLES = 10_000
PANEL = "AI Search"
COLLECTION = "red circles"
PAGE_ERROR = "GraphQL API Error"


@pytest.fixture(scope="module")
def app_dataset(tmp_path_factory):
    """10,000 shapes, AI search on and computed (enabling from the grid is
    walked in test_app_browser.py)."""
    dataset = shapes_dataset(tmp_path_factory.mktemp("curator"),
                             num_samples=NUM_SAMPLES)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    yield dataset
    if ais.is_embeddings_enabled(dataset):
        ais.disable_embeddings(dataset)
    dataset.delete()


def panel(app):
    return lambda: app.panel(PANEL)


def page_ok(app):
    """The page is not FiftyOne's error page."""
    assert PAGE_ERROR not in app.text(), app.text()[:300]


def grid_drawn(app, count):
    """Waits for the grid to show ``count`` samples, every tile in the
    viewport drawn."""
    app.wait_for_count(count)
    app.wait(lambda: (lambda labels: labels and all(labels)
                      and app.tiles_drawn())(app.tile_labels()),
             "the grid's tiles drawn")


def test_the_grid_button_shows_its_state_with_disable_beside_it(
        app, app_dataset):
    app.open_dataset(app_dataset.name)
    assert app.sample_count() == NUM_SAMPLES
    # a text button: the state reads on the button itself, no hover
    # (the App may draw it before it asks the plugin for its label)
    app.wait(lambda: app.js("""
        const e = [...document.querySelectorAll(arguments[0])]
          .find(e => visible(e) && norm(e.innerText));
        return e ? norm(e.innerText) : null;""",
        f'[data-item-id="{PLUGIN_NAME}/ai_search"]') == "AI Search: ready",
        "the AI Search button to read 'AI Search: ready'")
    assert app.js("return !!document.querySelector(arguments[0])",
                  f'[data-item-id="{PLUGIN_NAME}/disable_ai_search"]')
    grid_drawn(app, NUM_SAMPLES)  # the screenshot shows the grid too
    app.screenshot("curator-01-grid-button")
    assert app.console_errors() == []


def test_a_sidebar_filter_is_the_scope_of_a_panel_search(app, app_dataset):
    app.open_panel(PANEL)
    app.wait_for_text("Ready", root=panel(app))
    reds = app_dataset.match(F("color") == "red")
    app.sidebar_filter("color", "red")
    app.wait_for_count(len(reds))
    app.open_search_prompt(panel(app), "prompt")
    app.wait_for_text(f"Searching within the current view: {len(reds)} "
                      "samples", root=app.prompt)
    app.fill("Prompt", "a photo of a circle", root=app.prompt)
    # the filter is still there after typing (the panel wrote nothing)
    assert app.sample_count() == len(reds)
    # a limit of 0 is refused where it is typed, in a curator's words
    app.fill("Limit", 0, root=app.prompt)
    app.wait_for_text("1 or more, not 0", root=app.prompt)
    app.wait(app.execute_disabled, "Execute to be disabled")
    app.fill("Limit", 30, root=app.prompt)
    app.execute_prompt()
    ids = app.wait_for_view(lambda v: len(v) == 30, "the 30 results")
    red = set(reds.values("id"))
    assert all(i in red for i in ids)  # searched within the filter
    grid_drawn(app, 30)
    app.wait_for_text("Latest results: prompt 'a photo of a circle', 30",
                      root=panel(app))
    page_ok(app)
    app.screenshot("curator-02-filtered-search")
    assert app.console_errors() == []


def test_the_slider_holds_both_bounds(app, app_dataset):
    pairs = ais.get_collection_scores(app_dataset, ais.TEMPORARY_COLLECTION)
    scores = [s for _, s in pairs]
    lo, hi = round(scores[20], 3), round(scores[5], 3)
    app.fill("Min", lo, root=panel(app))
    app.field("Min", panel(app)).send_keys("\n")
    expected_lo = [i for i, s in pairs if s >= lo]
    app.wait_for_view(lambda v: v == expected_lo, "the range's lower bound")
    # the thumb and the Min box stay where they were set
    app.wait(lambda: abs(app.slider_values(app.sliders(panel(app))[0])[0]
                         - lo) < 1e-3, "the lower thumb at the bound")
    app.fill("Max", hi, root=panel(app))
    app.field("Max", panel(app)).send_keys("\n")
    expected = [i for i, s in pairs if lo <= s <= hi]
    shown = app.wait_for_view(lambda v: v == expected, "both bounds")
    values = app.wait(lambda: (lambda v: v if abs(v[0] - lo) < 1e-3
                               and abs(v[1] - hi) < 1e-3 else None)(
        app.slider_values(app.sliders(panel(app))[0])), "both thumbs")
    assert values
    app.wait_for_text(re.compile(rf"Showing scores {lo:.3f} to {hi:.3f}: "
                                 rf"{len(shown)} of 30"), root=panel(app))
    grid_drawn(app, len(shown))
    app.screenshot("curator-03-slider-both-bounds")
    assert app.console_errors() == []


def test_save_refuses_an_empty_name_then_saves(app, app_dataset):
    shown = app.view_ids()
    app.click_button("Save what is shown as a collection", root=panel(app))
    app.prompt()
    app.wait(app.execute_disabled, "Execute disabled with no name")
    app.fill("Name", "  ", root=app.prompt)
    app.wait_for_text("Type a name for the collection", root=app.prompt)
    app.wait(app.execute_disabled, "Execute disabled with a blank name")
    app.fill("Name", COLLECTION, root=app.prompt)
    app.execute_prompt()
    app.wait_for_notification("Saved collection")
    assert [i for i, _ in ais.get_collection_scores(
        app_dataset, COLLECTION)] == shown


def test_rename_load_and_delete_a_collection_open_in_the_app(app,
                                                             app_dataset):
    app.clear_view()
    app.open_saved_view(COLLECTION)
    # (the session hears of the view a moment after the list shows it)
    ids = app.wait_for_view(
        lambda v: v == ais.get_collection(app_dataset, COLLECTION).values(
            "id"), "the collection open in the App")
    app.wait(app.view_slug, "the saved view's address")
    app.wait_for_text("Collections", root=panel(app))
    app.click_button("Rename", root=panel(app))
    app.fill("New name", "reds", root=app.prompt)
    app.execute_prompt()
    # renamed: the panel lists the new name
    app.wait(lambda: app.text(app.field("Collections", panel(app))) == "reds",
             "the panel to list the new name")
    app_dataset.reload()
    assert "reds" in app_dataset.list_saved_views()
    assert COLLECTION not in app_dataset.list_saved_views()
    # the page lives on, showing the same samples
    app.wait(lambda: "view=" not in app.driver.current_url,
             "the App to leave the renamed saved view's address")
    app.wait_for_view(lambda v: v == ids, "the renamed collection shown")
    grid_drawn(app, len(ids))
    page_ok(app)
    # Load selects the saved view in FiftyOne's list
    app.click_button("Load", root=panel(app))
    app.wait(lambda: app.current_saved_view() == "reds",
             "'reds' selected in the saved views list")
    # deleting it warns, then shows the dataset
    app.click_button("Delete", root=panel(app))
    app.wait_for_text("cannot be undone", root=app.prompt)
    app.screenshot("curator-04-delete-warning")
    app.execute_prompt()
    app.wait_for_count(NUM_SAMPLES, timeout=120)
    page_ok(app)
    app_dataset.reload()
    assert "reds" not in app_dataset.list_saved_views()
    app.reload()
    page_ok(app)
    assert app.console_errors() == []


def test_prompt_search_latency_with_the_panel_open_and_closed(
        app, app_dataset, browser_artifacts):
    """Click on Execute to the grid drawn, with the panel open and closed
    (reported, not asserted: it depends on the machine)."""
    def search(text, limit):
        if app.find_text(PANEL):
            app.open_search_prompt(panel(app), "prompt")
        else:
            app.click_placement(f"{PLUGIN_NAME}/ai_search")
            app.click_away(app.prompt())
        app.fill("Prompt", text, root=app.prompt)
        app.fill("Limit", limit, root=app.prompt)
        app.wait_executable()
        start = time.monotonic()
        app.click(app.execute_button())
        grid_drawn(app, limit)
        return time.monotonic() - start

    # one search each way (the time is bench/'s to measure: a search at
    # this size costs the suite ~8 s of the App's and Chromium's CPU)
    times = {"open": [search("a red circle", 40)]}
    app.close_panel(PANEL)
    times["closed"] = [search("a green star", 50)]
    (browser_artifacts / "curator-latency.json").write_text(
        json.dumps(times, indent=1))
    print(f"\nclick to grid drawn, s: {times}")
    app.open_panel(PANEL)


def test_disable_with_the_results_open_as_a_saved_view(app, app_dataset):
    app.clear_view()
    app.open_saved_view(ais.TEMPORARY_COLLECTION)
    app.click_button("Disable AI search", root=panel(app))
    app.wait_for_text("Disable AI search?", root=app.prompt)
    app.execute_prompt()
    app.wait_for_text("AI search is off", root=panel(app), timeout=120)
    app.wait_for_count(NUM_SAMPLES, timeout=120)
    page_ok(app)
    app.reload()
    page_ok(app)
    assert not ais.is_embeddings_enabled(app_dataset)
    app.screenshot("curator-05-disabled")
    assert app.console_errors() == []
