"""Sync at scale: wall time and peak memory of ``calculate_embeddings`` on a
big dataset whose index is up to date, with nothing changed and after edits
of a fraction of its samples.

One run builds a FiftyOne dataset of ``--samples`` samples fast (sample
documents inserted in bulk, as FiftyOne writes them; filepaths point at a
pool of ``--pool`` real small JPEGs, reused), enables AI search with the
bundled tiny CLIP (64-d) and fills its index with random unit vectors and
the images' real fingerprints, as a sync writes them, without running the
model (``bench_search.fill_index``). Then each case
edits the dataset in this process and syncs in a fresh one, which reports
its wall time and its peak RSS during the sync (``VmHWM``, reset before
the sync), also as the growth over what the process held before the sync
(imports, the model loaded):

- nothing changed;
- ``--fraction`` of the samples tagged (their images unchanged: looked at,
  nothing embedded);
- ``--fraction`` of the samples pointed at new image files (embedded);
- ``--fraction`` of the samples deleted (the id diff);
- ``--fraction`` of the vectors deleted behind the sync's back (the
  consistency check's id diff, then those embedded again);
- every sample tagged (all looked at, nothing embedded).

The cases run in that order on the same dataset, each starting from what
the one before left (in sync). The code measured is whatever
``fiftyone_ai_search`` imports: run the script with ``PYTHONPATH`` at
another checkout's ``src`` to measure that one. Examples::

    python bench/bench_sync_scale.py                     # 1M samples
    python bench/bench_sync_scale.py --samples 100000 --skip all-tags
"""

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _env  # noqa: E402
import bench_search as bs  # noqa: E402  (imports nothing of fiftyone)

CASES = ("nothing", "tags", "images", "deleted", "lost", "all-tags")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=1_000_000)
    p.add_argument("--fraction", type=float, default=0.01,
                   help="share of the samples each edit case edits")
    p.add_argument("--pool", type=int, default=1000,
                   help="real image files the samples' filepaths point at")
    p.add_argument("--skip", default="",
                   help="comma-separated cases to skip: " + ",".join(CASES))
    p.add_argument("--child", metavar="DATASET", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def rss_mb(field):
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    # not Linux: the peak of the whole process
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss():
    """Makes the peak RSS the current one (Linux), so that what the
    imports and the model load peaked at is not counted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def child(name):
    """In a fresh process: one sync of the dataset; prints a line of JSON."""
    import fiftyone as fo

    import fiftyone_ai_search as ais
    from fiftyone_ai_search.index import indexes
    from fiftyone_ai_search.index import state as st

    dataset = fo.load_dataset(name)
    indexes.load_index_model(st.get(dataset)["index"])  # cached for the sync
    before = rss_mb("VmRSS")
    reset_peak_rss()
    t = time.perf_counter()
    report = ais.calculate_embeddings(dataset, wait=True, progress=False)
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "peak_mb": rss_mb("VmHWM"),
                      "before_mb": before, "report": report.to_dict(),
                      "code": os.path.dirname(ais.__file__)}))


def fresh_sync(name):
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", name],
        env=dict(os.environ),  # the private mongod and scratch dirs of _env
        capture_output=True, text=True, check=False,
    )
    if out.returncode:
        raise RuntimeError(f"sync process failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_images(root, count, seed):
    """``count`` distinct small JPEGs (random colour blocks)."""
    import numpy as np
    from PIL import Image

    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = os.path.join(root, f"{i}.jpg")
        cells = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(cells).resize((64, 64), Image.NEAREST).save(path)
        paths.append(path)
    return paths


def build_dataset(n, pool):
    """A dataset of ``n`` samples whose documents are inserted in bulk, as
    ``add_samples`` writes them (minutes faster at 1M); returns it and its
    sample ids in order."""
    import fiftyone as fo
    from bson import ObjectId

    dataset = fo.Dataset()
    coll = dataset._sample_collection
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    ids = [ObjectId() for _ in range(n)]
    batch = 50_000
    for start in range(0, n, batch):
        coll.insert_many([
            {"_id": ids[i], "filepath": pool[i % len(pool)], "tags": [],
             "_media_type": "image", "_rand": (i * 0.618034) % 1,
             "_dataset_id": dataset._doc.id, "created_at": now,
             "last_modified_at": now}
            for i in range(start, min(n, start + batch))
        ], ordered=False)
    return dataset, [str(i) for i in ids]


def fill_index(dataset, ids):
    """Enables AI search with the tiny CLIP and fills its index the way
    ``bench_search.py`` does: random unit vectors with the images' real
    fingerprints, then searches switched over to it. Checks that this is
    what a finished sync leaves."""
    from fiftyone_ai_search.sync import images as sync
    from fiftyone_ai_search.index import indexes
    from fiftyone_ai_search.index import state as st
    from fiftyone_ai_search.demo import tiny_clip_model_name

    vectors = bs.random_unit_vectors(len(ids), 64)
    bs.fill_index(dataset, ids, vectors, tiny_clip_model_name(), None)
    doc = st.get(dataset)
    assert not sync.has_changes(dataset, doc), "the index is not in sync"
    assert sync.is_consistent(dataset, indexes.open_index(dataset, doc=doc))


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child(args.child)

    skip = set(filter(None, args.skip.split(",")))
    scratch = _env.setup()

    import fiftyone_ai_search as ais
    from fiftyone_ai_search.index import indexes

    n = args.samples
    k = max(1, int(n * args.fraction))
    print(f"{n:,} samples, edits of {k:,}, code {os.path.dirname(ais.__file__)}"
          f", cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}",
          flush=True)
    t = time.perf_counter()
    pool = write_images(os.path.join(scratch, "pool"), args.pool, seed=0)
    dataset, ids = build_dataset(n, pool)
    print(f"dataset built in {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    fill_index(dataset, ids)
    print(f"index filled in {time.perf_counter() - t:.1f} s", flush=True)

    # disjoint samples for the edit cases, spread over the dataset
    def some(offset):
        return ids[offset::max(1, n // k)][:k]

    def new_images():
        paths = write_images(os.path.join(scratch, "new"), k, seed=1)
        dataset.select(some(1), ordered=True).set_values("filepath", paths)

    def lose_vectors():
        store = indexes.open_index(dataset)
        store.delete(some(3))
        store.close()

    edits = {
        "nothing": ("nothing changed", lambda: None),
        "tags": (f"{k:,} samples tagged", lambda: dataset.select(
            some(0)).tag_samples("edited")),
        "images": (f"{k:,} samples' images changed", new_images),
        "deleted": (f"{k:,} samples deleted",
                    lambda: dataset.delete_samples(some(2))),
        "lost": (f"{k:,} vectors lost (repaired)", lose_vectors),
        "all-tags": ("every sample tagged",
                     lambda: dataset.tag_samples("all")),
    }
    rows = []
    for case in CASES:
        if case in skip:
            continue
        label, edit = edits[case]
        edit()
        got = fresh_sync(dataset.name)
        r = got["report"]
        did = (f"added {r['added']}, updated {r['updated']}, removed "
               f"{r['removed']}, skipped {r['skipped']}")
        rows.append((label, f"{got['seconds']:.1f} s",
                     f"{got['peak_mb']:,.0f} MB",
                     f"{got['peak_mb'] - got['before_mb']:,.0f} MB", did))
        print("  " + " | ".join(rows[-1]), flush=True)

    head = ("case", "sync", "peak RSS", "growth in the sync", "report")
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    print()
    print(f"{n:,} samples, tiny CLIP (64-d), embedded index (Qdrant Edge); "
          f"a fresh process per sync; growth: its peak RSS during the sync "
          f"over its RSS before (imports, model loaded)")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


if __name__ == "__main__":
    main()
