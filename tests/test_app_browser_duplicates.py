"""Issue 23, point 4, in a real browser: a curator finds near-duplicates
from the grid and sees them grouped (each group's kept image first, its
copies after it), tags all but the kept images in one go from the "Tag
near-duplicates" button, and schedules the same search as a delegated
operation, whose groups open as a saved view once it ran.

The delegated operation is run by this test process, as FiftyOne's
``fiftyone delegated launch`` would run it: the same queue, the same
database. Waits poll for what the App shows (none depends on the
machine's speed).
"""

import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from selenium.webdriver.common.by import By

import fiftyone_ai_search as ais
from fiftyone_ai_search.app import PLUGIN_NAME
from fiftyone_ai_search.app.forms import DUPLICATES_COLLECTION
from tests.helpers import shapes_dataset

pytestmark = pytest.mark.slow

NUM_SAMPLES = 60
#: the tiny CLIP finds images of one class near-duplicates at 0.99
THRESHOLD = 0.99
FIND = f"{PLUGIN_NAME}/find_near_duplicates"
TAG = f"{PLUGIN_NAME}/tag_near_duplicates"


@pytest.fixture(scope="module")
def app_dataset(tmp_path_factory):
    """60 shapes, AI search on and computed; the App (started after, in a
    child process with this environment) lets a curator schedule
    operations: open-source FiftyOne offers "Schedule" where delegated
    operations run by ``fiftyone delegated launch`` are allowed
    (``allow_legacy_orchestrators``; else it reads "NOT AVAILABLE")."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS", "true")
    dataset = shapes_dataset(tmp_path_factory.mktemp("duplicates"),
                             num_samples=NUM_SAMPLES)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    yield dataset
    mp.undo()
    ais.disable_embeddings(dataset)
    dataset.delete()


def expected_layout(dataset):
    """The SDK's groups, as the collection lays them out: the largest
    group first, each kept image then its copies."""
    groups = ais.near_duplicate_groups(dataset, THRESHOLD)
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    return [[kept] + [d for d, _ in dups] for kept, dups in ordered]


def short(ids):
    """Ids (or lists of them) by their last 6 digits, for a message."""
    return [short(i) if isinstance(i, list) else i[-6:] for i in ids]


def labels_of(dataset, ids):
    by_id = dict(zip(*dataset.values(["id", "ground_truth.label"])))
    return [by_id[i] for i in ids]


def wait_for_grid(app, dataset, ids, tagged=None):
    """The grid shows ``ids``: its count, and the labels of the tiles it
    drew, in their order; with ``tagged`` (ids), those tiles read the tag
    "duplicate" before their label, and the others none (else tags are
    not looked at)."""
    app.wait_for_count(len(ids))

    def expected(n):
        labels = labels_of(dataset, ids[:n])
        if tagged is None:
            return labels
        return [f"duplicate, {label}" if i in tagged else label
                for i, label in zip(ids, labels)]

    def seen(labels):
        if tagged is not None:
            return labels
        return [", ".join(t for t in label.split(", ") if t != "duplicate")
                for label in labels]

    def shown():
        labels = app.tile_labels()
        return labels if labels and all(labels) and seen(
            labels) == expected(len(labels)) and app.tiles_drawn() else None
    return app.wait(shown, f"the grid's tiles to show {len(ids)} samples")


def open_form(app, operator_uri, title):
    app.click_placement(operator_uri)
    app.click_away(app.prompt())  # the grid's "More items" popup, if open
    app.wait_for_text(title, root=app.prompt)


def any_prompt(app):
    """The open operator prompt, whatever its button reads (Schedule)."""
    return app.js("""
        const ds = [...document.querySelectorAll(
            "[data-cy=operators-prompt-modal], [role=dialog]")].filter(visible);
        return ds.reverse()[0] || null;""")


def test_find_near_duplicates_shows_the_groups(app, app_dataset):
    app.open_dataset(app_dataset.name)
    app.wait_for_count(NUM_SAMPLES)
    open_form(app, FIND, "AI search: find near-duplicates")
    app.fill("Similarity threshold", THRESHOLD, root=app.prompt)
    app.wait_executable()
    app.screenshot("duplicates-01-form")
    app.execute_prompt()

    groups = expected_layout(app_dataset)
    expected = [i for group in groups for i in group]
    app.wait_for_notification(f"Found {len(expected) - len(groups)} "
                              f"near-duplicates of {len(groups)} images")
    try:
        app.wait_for_view(lambda v: v == expected,
                          "the grid to show the groups, kept images first")
    except TimeoutError as e:
        # the groups the App's operator wrote against the SDK's (ids by
        # their last 6 digits): a different grouping, or a view not shown
        written = ais.duplicates.duplicate_groups_in(app_dataset)
        raise TimeoutError(f"{e}; wanted {short(expected)}; the App's "
                           f"collection has the groups {short(written)}, "
                           f"the SDK finds {short(groups)}") from None
    assert ais.duplicates.duplicate_groups_in(app_dataset) == groups
    wait_for_grid(app, app_dataset, expected)
    app.screenshot("duplicates-02-groups")
    assert app.console_errors() == []


def test_tag_all_but_the_kept_images(app, app_dataset):
    groups = ais.duplicates.duplicate_groups_in(app_dataset)
    copies = [i for group in groups for i in group[1:]]
    # the button shows now that the dataset has near-duplicates (placements
    # are read when the page loads)
    app.reload()
    open_form(app, TAG, "AI search: tag near-duplicates")
    app.wait_for_text(f"Tags {len(copies)} images with duplicate: every "
                      f"image of the {len(groups)} groups", root=app.prompt)
    app.wait_executable()
    assert "Required property" not in app.text(app.prompt)
    app.screenshot("duplicates-03-tag-form")
    app.execute_prompt()
    app.wait_for_notification(f"Tagged {len(copies)} near-duplicates "
                              "'duplicate'")
    tagged = app_dataset.match_tags("duplicate").values("id")
    assert sorted(tagged) == sorted(copies)
    assert not {group[0] for group in groups} & set(tagged)
    # the grid still shows the groups; with the sidebar's sample tags on,
    # the copies' tiles read their tag, the kept images' none
    expected = [i for group in groups for i in group]
    wait_for_grid(app, app_dataset, expected)
    app.click(app.wait(lambda: app.js("""
        let e = byText(document, "sample tags", true)[0];
        while (e && !e.querySelector("input[type=checkbox]"))
            e = e.parentElement;
        return e ? e.querySelector("input[type=checkbox]") : null;"""),
        "the sidebar's sample tags checkbox"))
    wait_for_grid(app, app_dataset, expected, tagged=set(copies))
    app.screenshot("duplicates-04-tagged")
    assert app.console_errors() == []


def test_a_scheduled_run_reports_progress_and_opens_as_a_saved_view(
        app, app_dataset):
    app.clear_view()
    app.wait_for_count(NUM_SAMPLES)
    open_form(app, FIND, "AI search: find near-duplicates")
    app.fill("Similarity threshold", THRESHOLD, root=app.prompt)
    app.wait_executable()
    # the Execute button's menu: run now, or schedule it in the background
    arrow = app.wait(lambda: app.js("""
        const svg = [...arguments[0].querySelectorAll(
            "svg[data-testid=ArrowDropDownIcon]")].find(visible);
        return svg ? (svg.closest("button") || svg.parentElement) : null;
    """, app.prompt()), "the Execute button's menu")
    app.click(arrow)
    app.click_button("Run this operation in the background")
    app.wait(lambda: app.find_text("Schedule", any_prompt(app)),
             "the button to read Schedule")
    app.screenshot("duplicates-05-schedule")
    app.click(app.wait(lambda: app.js("""
        const b = [...arguments[0].querySelectorAll("button")].find(
            b => visible(b) && norm(b.innerText) === "Schedule");
        return b || null;""", any_prompt(app)), "the Schedule button"))

    service = DelegatedOperationService()

    def queued():
        ops = [o for o in service.list_operations(
            dataset_name=app_dataset.name) if o.operator == FIND]
        return ops or None
    (op,) = app.wait(queued, "the operation to be queued")
    assert op.run_state == "queued"
    if any_prompt(app) is not None:
        app.press("Escape")  # the prompt's note that it was scheduled
    service.execute_queued_operations(operator=FIND)
    (op,) = queued()
    assert op.run_state == "completed", op.result
    assert op.status.progress == pytest.approx(1.0)
    groups = expected_layout(app_dataset)
    expected = [i for group in groups for i in group]
    assert op.result.result == {"collection": DUPLICATES_COLLECTION,
                                "count": len(expected),
                                "groups": len(groups)}

    # its groups as a saved view: the App lists it once reloaded
    app.reload()
    app.open_saved_view(DUPLICATES_COLLECTION)
    app.wait_for_view(lambda v: v == expected,
                      "the saved view to show the groups")
    wait_for_grid(app, app_dataset, expected)
    app.screenshot("duplicates-06-scheduled-groups")
    assert app.console_errors() == []
