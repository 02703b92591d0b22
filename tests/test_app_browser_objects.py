"""Object search in the FiftyOne App, as a curator uses it, in a real browser.

Headless Chromium drives the real App server (with our plugin) over a scenes
dataset (several boxed shapes an image, Detections in ``ground_truth``), AI
search off at first: enable object search of ``ground_truth`` from the
grid's AI Search button, watch the panel follow it, search the objects by
prompt (the grid shows patches, red circles first), cut the results by
score, save them, find objects similar to a patch opened in the sample
modal and to a patch selected in the grid, and switch object search off
again.

The tests share one page and run in file order, each from where the previous
one left it. Screenshots go to ``tests/artifacts/browser/objects-*.png``.
Needs chromium, chromedriver and selenium: skips without them, fails under
CI.
"""

import re
import uuid

import pytest

import fiftyone_ai_search as ais
from fiftyone_ai_search.app import PLUGIN_NAME
from fiftyone_ai_search.demo import make_scenes_dataset
from fiftyone_ai_search.index.targets import Objects
from tests.helpers import worker_paused_midway

pytestmark = pytest.mark.slow

NUM_SAMPLES = 150  # ~450 objects: several batches
FIELD = "ground_truth"
PANEL = "AI Search"
SAVED = "red circles"


@pytest.fixture(scope="module")
def app_dataset(tmp_path_factory):
    """The scenes dataset, with AI search off."""
    name = "scenes-" + uuid.uuid4().hex[:8]
    dataset = make_scenes_dataset(
        name=name, num_samples=NUM_SAMPLES,
        images_dir=str(tmp_path_factory.mktemp("scenes") / name))
    yield dataset
    for field in (FIELD, None):
        if ais.is_embeddings_enabled(dataset, patches_field=field):
            ais.disable_embeddings(dataset, patches_field=field)
    dataset.delete()


def panel(app):
    """The panel's content, found again wherever it is used."""
    return lambda: app.panel(PANEL)


def results(dataset):
    """The latest results as ``(label ids, scores)``, best first."""
    pairs = ais.get_collection_scores(dataset, ais.TEMPORARY_COLLECTION)
    return [i for i, _ in pairs], [s for _, s in pairs]


def labels_of(dataset, label_ids):
    """The class of each object (``"red circle"``), by label id."""
    patches = dataset.to_patches(FIELD)
    by_id = dict(zip(*patches.values(["id", f"{FIELD}.label"])))
    return [by_id[i] for i in label_ids]


def wait_for_patches(app, dataset, ids):
    """Waits until the grid shows the patches ``ids``: the count above it,
    and the labels of its first tiles in their order (each tile of a
    patches view shows its object's label); returns those labels."""
    app.wait_for_count(len(ids))

    def shown():
        labels = app.tile_labels()
        return labels if labels and all(labels) and labels == labels_of(
            dataset, ids[:len(labels)]) and app.tiles_drawn() else None
    return app.wait(shown, f"the grid's tiles to show {len(ids)} patches")


def test_enable_object_search_from_the_grid_button(app, app_dataset):
    app.open_dataset(app_dataset.name)
    assert app.sample_count() == NUM_SAMPLES

    app.click_placement(f"{PLUGIN_NAME}/ai_search")
    app.wait_for_text("AI search is off", root=app.prompt)
    app.choose("Search in", f"objects of {FIELD}", root=app.prompt)
    # no image index: the objects' model is chosen here (offline: the
    # bundled one)
    app.wait_for_text("tiny CLIP bundled", root=app.prompt)
    app.wait_executable()
    app.screenshot("objects-01-enable-form")
    app.execute_prompt()

    # the panel opens and follows the computation of the objects (the
    # worker held midway, so that a fast machine cannot finish first)
    app.panel(PANEL, timeout=60)
    num_objects = app_dataset.count(f"{FIELD}.detections")
    with worker_paused_midway(Objects(app_dataset, FIELD)) as progress:
        assert progress["total"] == num_objects
        app.wait_for_text(f"Objects of {FIELD}: computing embeddings: "
                          f"{progress['done']} / {num_objects} ",
                          root=panel(app))
    app.wait_for_text(f"Objects of {FIELD}: ready", root=panel(app),
                      timeout=240)
    text = app.wait_for_text(f"{num_objects} of {num_objects} objects "
                             "indexed, 0 failed", root=panel(app))
    assert "AI search is off" in text  # the images are another index
    assert ais.is_embeddings_enabled(app_dataset, patches_field=FIELD)
    assert not ais.is_embeddings_enabled(app_dataset)
    app.screenshot("objects-02-ready")
    assert app.console_errors() == []


def test_prompt_search_shows_patches_red_circles_first(app, app_dataset):
    app.open_search_prompt(panel(app), "prompt")
    text = app.wait_for_text(f"objects of {FIELD}", root=app.prompt)
    assert "Searching the whole dataset" in text
    app.fill("Prompt", "a red circle", root=app.prompt)
    app.fill("Limit", 20, root=app.prompt)
    app.execute_prompt()

    ids = app.wait_for_view(lambda v: len(v) == 20, "the 20 objects found")
    assert ids == results(app_dataset)[0]
    assert app.session.view._is_patches  # the grid shows patches
    assert labels_of(app_dataset, ids)[:5] == ["red circle"] * 5
    labels = wait_for_patches(app, app_dataset, ids)
    assert labels[:5] == ["red circle"] * 5, labels
    app.wait_for_text(f"Latest results: prompt 'a red circle', 20 objects "
                      f"of {FIELD}", root=panel(app))
    app.screenshot("objects-03-prompt-search")
    assert app.console_errors() == []


def test_cut_the_objects_by_score_and_save_them(app, app_dataset):
    ids, scores = results(app_dataset)
    score_of = dict(zip(ids, scores))
    plot = app.wait(lambda: app.plots(panel(app)), "the histogram")[0]
    app.box_select(plot, 0.5, 1.0)
    shown = app.wait_for_view(lambda v: 0 < len(v) < 20, "a score range")
    kept = [score_of[i] for i in shown]
    assert kept == sorted(kept, reverse=True) and min(kept) > min(scores)
    assert shown == [i for i in ids if i in set(shown)]
    assert app.session.view._is_patches
    app.wait_for_text(re.compile(rf"Showing scores .*: {len(shown)} of 20"),
                      root=panel(app))
    wait_for_patches(app, app_dataset, shown)
    app.screenshot("objects-04-score-range")

    app.save_from_panel(panel(app), SAVED)
    app.wait_for_notification("Saved collection")
    assert [i for i, _ in ais.get_collection_scores(app_dataset, SAVED)] == (
        shown)
    assert ais.get_collection(app_dataset, SAVED)._is_patches
    app.wait(lambda: SAVED in app.saved_view_names(),
             "the new collection in the saved views list", timeout=10)
    assert app.console_errors() == []


def test_find_similar_to_a_patch_in_the_sample_modal(app, app_dataset):
    app.click_button("Show all results", root=panel(app))
    ids = app.wait_for_view(lambda v: len(v) == 20, "all 20 results again")
    wait_for_patches(app, app_dataset, ids)
    # a patch of another class than red circle, if the results hold one
    labels = labels_of(app_dataset, ids)
    index = next((i for i, label in enumerate(labels[:8])
                  if label != "red circle"), 1)
    reference, label = ids[index], labels[index]

    app.open_sample(index)
    app.click_icon("image_search", root=app.sample_modal)
    app.wait_for_text("AI search: find similar", root=app.prompt)
    app.wait_for_text(f"Similar to the 1 selected object(s) of {FIELD}",
                      root=app.prompt)
    app.fill("Limit", 12, root=app.prompt)
    app.wait_executable()
    app.screenshot("objects-05-find-similar")
    app.execute_prompt()

    found = app.wait_for_view(lambda v: len(v) == 12 and v[0] == reference,
                              "12 objects like the patch")
    assert found == results(app_dataset)[0]
    assert labels_of(app_dataset, found).count(label) >= 8, (
        label, labels_of(app_dataset, found))
    shown = wait_for_patches(app, app_dataset, found)
    assert shown[0] == label
    app.wait_for_text("Latest results: similar to 1 object(s), 12 objects",
                      root=panel(app))
    app.screenshot("objects-06-similar-objects")
    assert app.console_errors() == []


def test_similar_to_patches_selected_in_the_grid(app, app_dataset):
    # the grid shows the patches found last: select one, search from the
    # panel (a patch's id is its object's)
    ids = app.view_ids()
    app.select_tile(2)
    app.wait(lambda: app.selected_ids() == [ids[2]], "the selection")
    app.open_search_prompt(panel(app), "similar")
    app.wait_for_text(f"Similar to the 1 selected object(s) of {FIELD}",
                      root=app.prompt)
    app.fill("Limit", 8, root=app.prompt)
    app.execute_prompt()
    found = app.wait_for_view(lambda v: len(v) == 8 and v[0] == ids[2],
                              "8 objects like the selected patch")
    assert found == results(app_dataset)[0]
    wait_for_patches(app, app_dataset, found)
    app.select_tile(0, selected=False)
    app.wait(lambda: app.selected_ids() == [], "an empty selection")
    assert app.console_errors() == []


def test_nothing_selected_is_a_message(app, app_dataset):
    app.clear_view()
    app.wait_for_count(NUM_SAMPLES)
    app.nothing_selected_is_said(panel(app))
    assert f"Objects of {FIELD}: ready" in app.text(panel(app))
    assert app.console_errors() == []


def test_disable_object_search_from_the_panel(app, app_dataset):
    app.click_button("Disable AI search", root=panel(app))
    app.wait_for_text(f"Disable object search of {FIELD}?", root=app.prompt)
    app.execute_prompt()
    # nothing is on now: the panel offers to enable AI search again
    app.wait(lambda: f"Objects of {FIELD}" not in app.text(panel(app)),
             "the objects' status to go", timeout=60)
    text = app.wait_for_text("Enable AI search", root=panel(app))
    assert "AI search is off" in text and "Latest results" not in text
    assert not ais.is_embeddings_enabled(app_dataset, patches_field=FIELD)
    app.wait(lambda: SAVED in app.saved_view_names(),
             "the saved collection kept as a view", timeout=10)
    app.wait_for_count(NUM_SAMPLES)
    app.wait(app.tiles_drawn, "the grid's images")
    app.screenshot("objects-07-disabled")
    assert app.console_errors() == []
