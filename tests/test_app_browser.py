"""AI Search in the FiftyOne App, as a curator uses it, in a real browser.

Headless Chromium drives the real App server (with our plugin) over the
synthetic shapes dataset, AI search off at first: enable it from the grid's
AI Search button with the bundled tiny CLIP, watch the panel follow the
computation by itself, search by prompt (the grid shows the results in score
order), search again (the dataset, not the previous results), cut the
results by score on the histogram and the slider, save what is shown as a
collection (the saved-views list shows it at once), search similar to a grid
selection and from the sample modal, see that nothing selected is a message,
take a diverse sample; then FiftyOne's own similarity search (the grid's
"Sort by text/image similarity" and its Similarity Search panel) on our
Brain run "ai_search", by prompt and by a selected sample; find
near-duplicates from the grid (and none, from the operator browser); and
disable.

The tests share one page and run in file order, each from where the previous
one left it. Screenshots go to ``tests/artifacts/browser/`` (some are in
docs/images/, shown by the README and docs/app.md). Needs chromium, chromedriver and selenium: skips without them,
fails under CI.
"""

import re

import pytest

import fiftyone_ai_search as ais
from fiftyone_ai_search.app import PLUGIN_NAME
from fiftyone_ai_search.brain import DEFAULT_BRAIN_KEY as BRAIN_KEY
from tests.helpers import shapes_dataset, worker_paused_midway

pytestmark = pytest.mark.slow

NUM_SAMPLES = 1200  # enough batches for the progress to be held twice
PANEL = "AI Search"
SAVED = "clear blue squares"
BUILTIN_K = 25  # the matches FiftyOne's own similarity search asks for
DUPLICATES_THRESHOLD = 0.99


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


def show_builtin_results(app, text, expected):
    """Waits for the search ``text`` of FiftyOne's Similarity Search panel
    to complete, and for the grid to show ``expected`` (ids): an open panel
    applies a new search by itself; a panel that the search opened is
    applied with the card's "Show results", pressed unless the view is
    already applied (pressed on an applied view, it applies the same one:
    no wait to find out which panel it is). Returns the card's text."""
    card, _ = app.similarity_run(text)
    if app.view_ids() != expected:
        app.show_similarity_run(text)
    app.wait_for_view(lambda v: v == expected,
                      "the grid to show the similarity search")
    return card


def wait_for_grid(app, dataset, ids):
    """Waits until the grid shows ``ids``: the count above it, and the
    labels of its first tiles in the order of ``ids`` (the grid renders
    those near the viewport); returns those labels."""
    app.wait_for_count(len(ids))

    def shown():
        labels = app.tile_labels()
        return labels if labels and all(labels) and labels == labels_of(
            dataset, ids[:len(labels)]) and app.tiles_drawn() else None
    return app.wait(shown, f"the grid's tiles to show {len(ids)} samples")


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

    # the panel opens and follows the computation with no clicks: the
    # worker is held at two points midway, and the panel shows each
    app.panel(PANEL, timeout=60)
    done = 0
    for step in (1, 2):
        with worker_paused_midway(app_dataset, beyond=done) as progress:
            done, total = progress["done"], progress["total"]
            assert total == NUM_SAMPLES
            app.wait_for_text(f"Computing embeddings: {done} / {total} ",
                              root=panel(app))
            app.screenshot(f"01-computing-{step}")
    app.wait_for_text("Ready", root=panel(app), timeout=240)
    text = app.wait_for_text(f"{NUM_SAMPLES} of {NUM_SAMPLES} samples "
                             "indexed, 0 failed", root=panel(app))
    assert "updated" in text
    app.screenshot("02-ready")
    assert ais.get_status(app_dataset)["counts"]["num_indexed"] == NUM_SAMPLES
    assert app.console_errors() == []


def test_first_prompt_search_shows_the_results_in_score_order(app,
                                                             app_dataset):
    # the panel's Search opens the search form in a prompt; it says what
    # it searches: the whole dataset
    app.open_search_prompt(panel(app), "prompt")
    app.wait_for_text(f"Searching the whole dataset: {NUM_SAMPLES} samples",
                      root=app.prompt)
    app.fill("Prompt", "a photo of a red circle", root=app.prompt)
    app.fill("Limit", 20, root=app.prompt)
    app.execute_prompt()
    ids = app.wait_for_view(lambda ids: len(ids) == 20, "the 20 results")
    assert ids == results(app_dataset)[0]
    app.wait_for_count(20)
    labels = app.wait_for_tiles(20)
    assert labels[:5] == ["red circle"] * 5, labels
    assert labels_of(app_dataset, ids)[:10] == ["red circle"] * 10
    app.wait_for_text("Latest results: prompt 'a photo of a red circle', "
                      "20 samples", root=panel(app))
    assert app.console_errors() == []


def test_a_second_search_searches_the_dataset(app, app_dataset):
    before = set(app.view_ids())
    # the grid shows the latest results: the search form says it searches
    # the dataset, not them
    app.open_search_prompt(panel(app), "prompt")
    app.wait_for_text(f"Searching the whole dataset: {NUM_SAMPLES} samples "
                      "(a new search never searches the latest results)",
                      root=app.prompt)
    app.fill("Prompt", "a photo of a blue square", root=app.prompt)
    app.fill("Limit", 30, root=app.prompt)
    app.execute_prompt()
    ids = app.wait_for_view(lambda ids: len(ids) == 30, "the 30 results")
    assert ids == results(app_dataset)[0]
    assert labels_of(app_dataset, ids)[:10] == ["blue square"] * 10
    assert not set(ids[:10]) & before  # not found among the red circles
    app.wait_for_tiles(30)
    # the panel's text follows the grid (a state write after the data): the
    # screenshot shows what a user sees once it settled
    app.wait_for_text("Latest results: prompt 'a photo of a blue square', "
                      "30 samples", root=panel(app))
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
    app.save_from_panel(panel(app), SAVED)
    app.wait_for_notification("Saved collection")
    kept = [i for i, _ in ais.get_collection_scores(app_dataset, SAVED)]
    assert kept == shown  # what was on screen, not all the results
    # without a reload; the App refetches the dataset a moment after the
    # notification shows, as a user opening the list would see
    app.wait(lambda: SAVED in app.saved_view_names(),
             "the new collection in the saved views list", timeout=10)
    app.wait_for_text("Collections", root=panel(app))
    assert app.console_errors() == []


def test_nothing_selected_is_a_message_not_a_broken_panel(app, app_dataset):
    app.nothing_selected_is_said(panel(app))
    # the panel still works
    assert "Ready" in app.text(panel(app))
    assert app.console_errors() == []


def test_similar_to_a_grid_selection(app, app_dataset):
    app.clear_view()
    app.wait_for_count(NUM_SAMPLES)
    first = app.view_ids()[0]
    app.select_tile(0)
    app.wait(lambda: app.selected_ids() == [first], "the selection")
    app.open_search_prompt(panel(app), "similar")
    app.wait_for_text("Similar to the 1 selected sample", root=app.prompt)
    app.fill("Limit", 10, root=app.prompt)
    app.execute_prompt()
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
    app.open_search_prompt(panel(app), "diverse")
    app.wait_for_text("Clustering", root=app.prompt)
    app.fill("Limit", 30, root=app.prompt)
    app.execute_prompt()
    ids = app.wait_for_view(lambda v: len(v) == 30, "30 diverse samples")
    assert ids == results(app_dataset)[0]
    assert len(set(labels_of(app_dataset, ids))) >= 20  # 30 classes exist
    text = app.wait_for_text("cluster centre", root=panel(app))
    assert "Latest results: diverse" in text
    # what the user sees: the grid shows them, not the previous results
    wait_for_grid(app, app_dataset, ids)
    app.screenshot("06-diverse")
    assert app.console_errors() == []


def test_fiftyones_own_text_similarity_search_uses_our_index(app,
                                                              app_dataset):
    """FiftyOne's built-in "Sort by text similarity" (not our panel): the
    App lists our Brain run "ai_search" as a similarity index that takes
    prompts, searches it, and its Similarity Search panel shows the result
    in the grid."""
    app.clear_view()
    app.wait_for_count(NUM_SAMPLES)
    prompt = "a photo of a red circle"
    app.sort_by_similarity(prompt)
    expected = app_dataset.sort_by_similarity(
        prompt, k=BUILTIN_K, brain_key=BRAIN_KEY).values("id")
    card = show_builtin_results(app, prompt, expected)
    # the App's search ran on our index, with its default 25 matches
    assert BRAIN_KEY in card and f"{BUILTIN_K} results" in card, card
    assert labels_of(app_dataset, expected)[:10] == ["red circle"] * 10
    labels = wait_for_grid(app, app_dataset, expected)
    assert labels[:5] == ["red circle"] * 5, labels
    app.screenshot("08-fiftyone-text-similarity")
    # done with it: three columns leave the grid no room for its actions
    app.close_panel("Similarity Search")
    assert app.console_errors() == []


def test_fiftyones_own_similarity_to_the_selected_sample(app, app_dataset):
    """FiftyOne's built-in "Sort by image similarity" to a sample selected
    in the grid: the sample itself first, then those like it."""
    app.clear_view()
    app.wait_for_count(NUM_SAMPLES)
    first = app.view_ids()[0]
    app.select_tile(0)
    app.wait(lambda: app.selected_ids() == [first], "the selection")
    app.sort_by_similarity()  # "Show similar samples"
    expected = app_dataset.sort_by_similarity(
        [first], k=BUILTIN_K, brain_key=BRAIN_KEY).values("id")
    card = show_builtin_results(app, "1 sample", expected)
    assert "Image similarity" in card and BRAIN_KEY in card, card
    assert expected[0] == first
    label = labels_of(app_dataset, [first])[0]
    assert labels_of(app_dataset, expected)[:10] == [label] * 10
    labels = wait_for_grid(app, app_dataset, expected)
    assert labels[0] == label
    app.screenshot("09-fiftyone-image-similarity")
    app.close_panel("Similarity Search")
    assert app.console_errors() == []


def test_find_near_duplicates_from_the_grid(app, app_dataset):
    app.clear_view()
    app.wait_for_count(NUM_SAMPLES)
    app.click_placement(f"{PLUGIN_NAME}/find_near_duplicates")
    app.click_away(app.prompt())  # the grid's "More items" popup, if open
    app.wait_for_text("AI search: find near-duplicates", root=app.prompt)
    app.wait_for_text(f"Searching the whole dataset: {NUM_SAMPLES} samples",
                      root=app.prompt)
    # a threshold out of (0, 1] is refused where it is typed
    app.fill("Similarity threshold", "1.5", root=app.prompt)
    app.wait_for_text("The threshold is a similarity above 0 and at most 1, "
                      "not 1.5.", root=app.prompt)
    app.wait(app.execute_disabled, "Execute to be disabled")
    app.fill("Similarity threshold", DUPLICATES_THRESHOLD, root=app.prompt)
    app.wait_executable()
    app.screenshot("10-find-near-duplicates")
    app.execute_prompt()

    groups = ais.near_duplicate_groups(app_dataset, DUPLICATES_THRESHOLD)
    expected = [i for kept, dups in sorted(groups.items(),
                                           key=lambda kv: -len(kv[1]))
                for i in [kept] + [d for d, _ in dups]]
    app.wait_for_notification(f"Found {len(expected) - len(groups)} "
                              f"near-duplicates of {len(groups)} images")
    app.wait_for_view(lambda v: v == expected,
                      "the grid to show the near-duplicates")
    assert results(app_dataset)[0] == expected
    scores = results(app_dataset)[1]
    assert scores[0] == 1.0 and all(
        DUPLICATES_THRESHOLD <= s <= 1.0 + 1e-6 for s in scores)
    # our panel follows: these are the latest results now
    app.wait_for_text(f"Latest results: near-duplicates ({len(groups)} "
                      f"images with copies at similarity "
                      f"{DUPLICATES_THRESHOLD} or more), {len(expected)} "
                      "samples", root=panel(app))
    # the largest group first: the image kept, then its copies
    wait_for_grid(app, app_dataset, expected)
    app.screenshot("11-near-duplicates")
    assert app.console_errors() == []


def test_no_near_duplicates_is_said_from_the_operator_browser(app,
                                                             app_dataset):
    shown = app.view_ids()
    app.open_operator("AI search: find near-duplicates", search="near-dup")
    app.fill("Similarity threshold", 1, root=app.prompt)
    app.execute_prompt()
    app.wait_for_notification("No near-duplicates")
    assert app.view_ids() == shown  # the grid stays as it was
    app.screenshot("12-no-near-duplicates")
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
    app.wait(lambda: (lambda names: ais.TEMPORARY_COLLECTION not in names
                      and SAVED in names)(app.saved_view_names()),
             "the results gone from the saved views list", timeout=10)
    app.wait_for_count(NUM_SAMPLES)  # the results view went with it
    app.wait(app.tiles_drawn, "the grid's images")
    app.screenshot("07-disabled")
    assert app.console_errors() == []
