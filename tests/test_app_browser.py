"""AI Search in the FiftyOne App, as a curator uses it, in a real browser.

Headless Chromium drives the real App server (with our plugin) over the
synthetic shapes dataset, AI search off at first: enable it from the grid's
AI Search button with the bundled tiny CLIP, watch the panel follow the
computation by itself, search by prompt (the grid shows the results in score
order), search again (the dataset, not the previous results), cut the
results by score on the histogram and the slider, save what is shown as a
collection (the saved-views list shows it at once), search similar to a grid
selection and from the sample modal, see that nothing selected is a message,
take a diverse sample, and disable.

The tests share one page and run in file order, each from where the previous
one left it. Screenshots go to ``tests/artifacts/browser/`` (two are in the
README). Needs chromium, chromedriver and selenium: skips without them,
fails under CI.
"""

import re

import pytest

import fiftyone_ai_search as ais
from fiftyone_ai_search.app import PLUGIN_NAME
from app_browser import app, app_session, browser, browser_artifacts  # noqa: F401
from helpers import shapes_dataset

NUM_SAMPLES = 1200  # enough for the progress to be seen moving
PANEL = "AI Search"
PROGRESS = re.compile(r"Computing embeddings: (\d+) / (\d+)")
SAVED = "clear blue squares"


@pytest.fixture(scope="module")
def app_dataset(tmp_path_factory):
    """The shapes dataset, with AI search off."""
    dataset = shapes_dataset(tmp_path_factory.mktemp("app"),
                             num_samples=NUM_SAMPLES, enable=False)
    yield dataset
    if ais.is_embeddings_enabled(dataset):
        ais.disable_embeddings(dataset)
    dataset.delete()


def results(dataset):
    """The latest results as ``(ids, scores)``, best first."""
    pairs = ais.get_collection_scores(dataset, ais.TEMPORARY_COLLECTION)
    return [i for i, _ in pairs], [s for _, s in pairs]


def labels_of(dataset, ids):
    by_id = dict(zip(*dataset.values(["id", "ground_truth.label"])))
    return [by_id[i] for i in ids]


def panel(app):
    """The panel's content, found again wherever it is used (it is replaced
    when the panel re-renders)."""
    return lambda: app.panel(PANEL)


def search_in_panel(app, mode, limit, **fields):
    app.choose("Search by", mode, root=panel(app))
    for label, value in fields.items():
        app.fill(label, value, root=panel(app))
    app.fill("Limit", limit, root=panel(app))
    app.click_button("Search", root=panel(app))


def test_enable_from_the_grid_button_and_watch_it_compute(app, app_dataset):
    app.open_dataset(app_dataset.name)
    assert app.sample_count() == NUM_SAMPLES

    app.click_placement(f"{PLUGIN_NAME}/ai_search")
    text = app.wait_for_text("AI search is off", root=app.prompt)
    # offline, the default's weights are absent: the form says so and
    # offers the bundled model instead
    assert "is not on this machine" in text
    assert "tiny CLIP bundled" in app.text(app.prompt)
    app.wait_executable()
    app.screenshot("01-enable-form")
    app.execute_prompt()

    # the panel opens and follows the computation with no clicks
    app.panel(PANEL, timeout=60)
    seen = set()

    def ready():
        text = app.text(panel(app))
        seen.update(PROGRESS.findall(text))
        return "Ready" in text

    app.wait(ready, "the panel to say Ready by itself", timeout=240,
             interval=0.3)
    text = app.wait_for_text(f"{NUM_SAMPLES} of {NUM_SAMPLES} samples "
                             "indexed, 0 failed", root=panel(app))
    done = {int(d) for d, _ in seen}
    assert done, "the panel never showed a progress figure"
    assert {t for _, t in seen} == {str(NUM_SAMPLES)}
    assert "updated" in text
    app.screenshot("02-ready")
    assert ais.get_status(app_dataset)["counts"]["num_indexed"] == NUM_SAMPLES
    assert app.console_errors() == []


def test_first_prompt_search_shows_the_results_in_score_order(app,
                                                             app_dataset):
    assert "Searching the whole dataset" in app.text(panel(app))
    search_in_panel(app, "prompt", 20,
                    Prompt="a photo of a red circle")
    ids = app.wait_for_view(lambda ids: len(ids) == 20, "the 20 results")
    assert ids == results(app_dataset)[0]
    app.wait_for_count(20)
    labels = app.wait_for_tiles(20)
    assert labels[:5] == ["red circle"] * 5, labels
    assert labels_of(app_dataset, ids)[:10] == ["red circle"] * 10
    text = app.wait_for_text("Latest results: prompt 'a photo of a red "
                             "circle', 20 samples", root=panel(app))
    assert "never searches the latest results" in text
    assert app.console_errors() == []


def test_a_second_search_searches_the_dataset(app, app_dataset):
    before = set(app.view_ids())
    search_in_panel(app, "prompt", 30,
                    Prompt="a photo of a blue square")
    ids = app.wait_for_view(lambda ids: len(ids) == 30, "the 30 results")
    assert ids == results(app_dataset)[0]
    assert labels_of(app_dataset, ids)[:10] == ["blue square"] * 10
    assert not set(ids[:10]) & before  # not found among the red circles
    app.wait_for_tiles(30)
    app.screenshot("03-prompt-search")
    assert app.console_errors() == []


def test_histogram_and_slider_narrow_the_grid(app, app_dataset):
    ids, scores = results(app_dataset)
    score_of = dict(zip(ids, scores))
    plot = app.wait(lambda: app.plots(panel(app)), "the histogram")[0]
    app.box_select(plot, 0.55, 1.0)
    shown = app.wait_for_view(lambda v: 0 < len(v) < 30, "a score range")
    kept = [score_of[i] for i in shown]
    assert kept == sorted(kept, reverse=True)
    assert min(kept) > min(scores)
    app.wait_for_text(re.compile(rf"Showing scores .*: {len(shown)} of 30"),
                      root=panel(app))
    app.wait_for_count(len(shown))

    # the slider: its lower thumb dragged up to about the 10th best score
    app.click_button("Show all results", root=panel(app))
    app.wait_for_view(lambda v: len(v) == 30, "all 30 results again")
    app.wait_for_text("Showing all 30 results", root=panel(app))
    app.wait_for_tiles(30)  # as a user would, once the grid has settled
    # (found again on each try: the panel re-renders the slider)
    app.wait(lambda: app.drag_slider(app.sliders(panel(app))[0], 0, scores[9])
             or True, "dragging the range slider")
    shown = app.wait_for_view(lambda v: 0 < len(v) < 30, "the slider's range")
    text = app.wait_for_text(re.compile(rf": {len(shown)} of 30 results"),
                             root=panel(app))
    lo, hi = map(float, re.search(r"Showing scores ([\d.-]+) to ([\d.-]+)",
                                  text).groups())
    # exactly the results within the range shown (to its 3 decimals)
    inside = set(shown)
    assert shown == [i for i in ids if i in inside]
    assert all(lo - 5e-4 <= score_of[i] <= hi + 5e-4 for i in shown)
    assert all(not lo + 5e-4 <= score_of[i] <= hi - 5e-4
               for i in ids if i not in inside)
    app.wait_for_tiles(len(shown))
    app.screenshot("04-score-range")
    assert app.console_errors() == []


def test_save_what_is_shown_and_see_it_in_saved_views(app, app_dataset):
    shown = app.view_ids()
    app.fill("Save what is shown as a collection", SAVED, root=panel(app))
    app.click_button("Save collection", root=panel(app))
    app.wait_for_notification("Saved collection")
    kept = [i for i, _ in ais.get_collection_scores(app_dataset, SAVED)]
    assert kept == shown  # what was on screen, not all the results
    assert SAVED in app.saved_view_names()  # without a reload
    app.wait_for_text("Collections", root=panel(app))
    assert app.console_errors() == []


def test_nothing_selected_is_a_message_not_a_broken_panel(app, app_dataset):
    app.choose("Search by", "similar", root=panel(app))
    app.wait_for_text("Nothing selected", root=panel(app))
    assert app.is_disabled(app.button("Search", root=panel(app)))
    # the panel still works: status and modes are there
    assert "Ready" in app.text(panel(app))
    app.choose("Search by", "prompt", root=panel(app))
    app.wait_for_text("Prompt", root=panel(app))
    assert app.console_errors() == []


def test_similar_to_a_grid_selection(app, app_dataset):
    app.clear_view()
    app.wait_for_count(NUM_SAMPLES)
    first = app.view_ids()[0]
    app.select_tile(0)
    app.wait(lambda: app.selected_ids() == [first], "the selection")
    app.choose("Search by", "similar", root=panel(app))
    app.wait_for_text("Similar to the 1 selected sample", root=panel(app))
    app.fill("Limit", 10, root=panel(app))
    app.click_button("Search", root=panel(app))
    ids = app.wait_for_view(lambda v: len(v) == 10, "10 similar samples")
    assert ids[0] == first
    label = labels_of(app_dataset, [first])[0]
    assert labels_of(app_dataset, ids).count(label) >= 8
    app.wait_for_tiles(10)
    app.select_tile(0, selected=False)
    app.wait(lambda: app.selected_ids() == [], "an empty selection")
    assert app.console_errors() == []


def test_find_similar_from_the_sample_modal(app, app_dataset):
    app.clear_view()
    app.wait_for_count(NUM_SAMPLES)
    reference = app.view_ids()[3]
    app.open_sample(3)
    # "Find similar", our placement among the modal's actions
    app.click_icon("image_search", root=app.sample_modal)
    app.wait_for_text("AI search: find similar", root=app.prompt)
    app.wait_for_text("Similar to the 1 selected sample", root=app.prompt)
    app.fill("Limit", 12, root=app.prompt)
    app.wait_executable()
    app.screenshot("05-find-similar")
    app.execute_prompt()
    ids = app.wait_for_view(lambda v: len(v) == 12, "12 similar samples")
    assert ids[0] == reference
    label = labels_of(app_dataset, [reference])[0]
    assert labels_of(app_dataset, ids).count(label) >= 10
    app.wait_for_count(12)
    assert app.console_errors() == []


def test_diverse_results_are_labelled_as_such(app, app_dataset):
    app.choose("Search by", "diverse", root=panel(app))
    app.wait_for_text("Clustering", root=panel(app))
    app.fill("Limit", 30, root=panel(app))
    app.click_button("Search", root=panel(app))
    ids = app.wait_for_view(lambda v: len(v) == 30, "30 diverse samples")
    assert ids == results(app_dataset)[0]
    assert len(set(labels_of(app_dataset, ids))) >= 20  # 30 classes exist
    text = app.wait_for_text("cluster centre", root=panel(app))
    assert "Latest results: diverse" in text
    app.screenshot("06-diverse")
    assert app.console_errors() == []


def test_disable_from_the_panel(app, app_dataset):
    app.click_button("Disable AI search", root=panel(app))
    app.prompt()
    app.wait_for_text("Disable AI search?", root=app.prompt)
    app.execute_prompt()
    app.wait_for_text("AI search is off", root=panel(app), timeout=60)
    text = app.text(panel(app))
    assert "Latest results" not in text and "Enable AI search" in text
    assert not ais.is_embeddings_enabled(app_dataset)
    names = app.saved_view_names()
    assert ais.TEMPORARY_COLLECTION not in names and SAVED in names
    app.wait_for_count(NUM_SAMPLES)  # the results view went with it
    app.screenshot("07-disabled")
    assert app.console_errors() == []
