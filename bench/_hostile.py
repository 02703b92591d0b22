"""The other processes of ``stress_kill.py --hostile-minutes``: searchers
and a mutator on the same dataset while workers are killed, rebuilt and
switched. Each prints one JSON line of what it saw when its time is up.

    python bench/_hostile.py searcher DATASET SECONDS SEED
    python bench/_hostile.py mutator DATASET SECONDS SEED PAUSE_FILE

Run by stress_kill.py, with its environment (its private database).
"""

import json
import os
import random
import sys
import time
import traceback

import fiftyone as fo

import fiftyone_ai_search as ais
from fiftyone_ai_search.demo import shapes

LIMIT = 20


def _subsequence(part, whole):
    it = iter(whole)
    return all(any(x == y for y in it) for x in part)


def _stored(dataset, name):
    """``(view ids, score ids)`` of a collection as stored, when its scores
    document says its saved view shows it and did so before and after the
    view was read (else None: a write in flight, nothing to compare)."""
    from fiftyone_ai_search import results as co
    from fiftyone_ai_search.index import state as st

    key = {"dataset_id": st.dataset_key(dataset),
           "view_id": str(co._view_id(dataset, name))}
    before = co._scores().find_one(key)
    dataset._doc.reload("saved_views")  # the stages as they are now
    view = dataset.load_saved_view(name).values("id")
    after = co._scores().find_one(key)
    if co._view_id(dataset, name) != key["view_id"]:
        return None  # deleted and made again meanwhile (a disable)
    if not before or not after or not (
            before["version"] == after["version"]
            == before.get("view_version") == after.get("view_version")):
        return None
    return view, before["sample_ids"]


def searcher(dataset, seconds, rng):
    """Searches and reads the results back: ``torn`` when the collection's
    saved view, as stored and said to be complete, is not the order of its
    scores (the two from different searches),
    ``wrong`` when the scores are not best first or too many, ``errors``
    for anything but the documented refusals (AI search off, no index yet
    during a disable and enable)."""
    seen = {"searches": 0, "refused": 0, "errors": [], "wrong": 0, "torn": 0}
    prompts = [caption for caption, _, _ in shapes.all_captions()]
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            name = ais.perform_ai_search(dataset, prompt=rng.choice(prompts),
                                         limit=LIMIT)
            seen["searches"] += 1
            if name is None:
                continue
            scores = ais.get_collection_scores(dataset, name)
            stored = _stored(dataset, name)
        except ais.AISearchError:
            seen["refused"] += 1  # documented: off, or no index yet
            time.sleep(0.05)
            continue
        except Exception as e:  # noqa: BLE001 - what the bench counts
            where = traceback.extract_tb(e.__traceback__)[-3:]
            seen["errors"].append(f"{type(e).__name__}: {e} at " + " < ".join(
                f"{os.path.basename(f.filename)}:{f.lineno}"
                for f in reversed(where)))
            continue
        ids = [i for i, _ in scores]
        values = [s for _, s in scores]
        if len(ids) > LIMIT or any(a < b for a, b in zip(values,
                                                         values[1:])):
            seen["wrong"] += 1
        if stored is not None and not _subsequence(*stored):
            seen["torn"] += 1
            if seen["torn"] <= 2:  # what it looked like
                view, ids_ = stored
                seen["errors"].append(
                    f"torn: a view of {len(view)} ({view[:2]}...) for "
                    f"scores of {len(ids_)} ({ids_[:2]}...)")
    return seen


def mutator(dataset, seconds, rng, pause):
    """Tags, edits, adds and deletes samples, a few at a time; holds still
    while the file ``pause`` exists."""
    seen = {"mutations": 0, "errors": []}
    deadline = time.time() + seconds
    paths = dataset.values("filepath")
    while time.time() < deadline:
        if os.path.exists(pause):  # the trial checks what a sync built
            time.sleep(0.05)
            continue
        try:
            ids = dataset.values("id")
            kind = rng.choice(["tag", "edit", "add", "delete"])
            if kind == "tag" and ids:
                dataset.select(rng.sample(ids, min(5, len(ids)))).tag_samples(
                    "touched")
            elif kind == "edit" and ids:
                sample = dataset[rng.choice(ids)]
                sample["note"] = f"edited {time.time()}"
                sample.save()
            elif kind == "add":
                dataset.add_sample(fo.Sample(filepath=rng.choice(paths)))
            elif kind == "delete" and len(ids) > 50:
                dataset.delete_samples([rng.choice(ids)])
            seen["mutations"] += 1
        except Exception as e:  # noqa: BLE001 - what the bench counts
            seen["errors"].append(f"{type(e).__name__}: {e}"[:300])
        time.sleep(0.2)
    return seen


def main():
    role, name, seconds, seed = sys.argv[1:5]
    dataset = fo.load_dataset(name)
    rng = random.Random(int(seed))
    if role == "mutator":
        seen = mutator(dataset, float(seconds), rng, sys.argv[5])
    else:
        seen = searcher(dataset, float(seconds), rng)
    print(json.dumps({"role": role, **seen}), flush=True)


if __name__ == "__main__":
    main()
