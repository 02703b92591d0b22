"""Stress: ``kill -9`` of real sync workers at random moments, then a sync;
does the index always converge to what a fresh build would hold?

Each trial changes something, starts ``python -m fiftyone_ai_search sync``
(batches of 2, so that it is caught mid-run), kills it with SIGKILL (during
its start, or once it committed a random number of samples), then runs one
``calculate_embeddings(wait=True)`` in this process and checks:

- the index holds exactly one vector per sample without a failure, equal to
  the image's embedding by the model the state asks for (a fresh build);
- nothing is left over: no index being built, no retired index, no index
  directory on disk but the one searched;
- searches work and use that model.

The changes, drawn at random: a forced rebuild, a model change (between the
bundled tiny CLIP and a perturbed copy), samples added and deleted, and
disable + enable with the other model while the worker runs.

    .venv/bin/python bench/stress_kill.py --trials 40

Prints one line per trial and ``converged / total`` at the end; exits 1 if
any trial did not converge. Not a test (it takes minutes), run by hand.

Hostile mode (``--hostile-minutes M``): for M minutes, trials run one
after the other while three searcher processes search and read their
results back and a mutator process tags, edits, adds and deletes samples
(``bench/_hostile.py``). It prints, besides the trials, the searches'
``errors`` (anything but the documented refusals while AI search is off),
``wrong`` results (not best first, or over the limit) and ``torn`` reads (a
collection's view and scores from different searches); target 0 / 0 / 0:

    .venv/bin/python bench/stress_kill.py --hostile-minutes 10
"""

import argparse
import datetime
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _env  # noqa: E402

SCRATCH = _env.setup()

import numpy as np  # noqa: E402

import fiftyone as fo  # noqa: E402
import fiftyone_ai_search as ais  # noqa: E402
from fiftyone_ai_search.sync import runner  # noqa: E402
from fiftyone_ai_search.index import state as st  # noqa: E402
from fiftyone_ai_search.demo import make_shapes_dataset, tiny_clip_model_name  # noqa: E402
from fiftyone_ai_search.embedding.pipeline import embed_images  # noqa: E402
from fiftyone_ai_search.embedding.model import load_model, resolve_model  # noqa: E402
from fiftyone_ai_search.testing import perturbed_tiny_clip  # noqa: E402

CHANGES = ("force", "model", "add_delete", "disable_enable")


class Fresh:
    """Embeddings of images by a model, computed directly (what a fresh
    build holds), cached per (model, file)."""

    def __init__(self):
        self.cache = {}

    def of(self, model_name, items):
        model = load_model(resolve_model(model_name, None))
        todo = [(k, p) for k, p in items if (model_name, p) not in self.cache]
        path = dict(todo)
        for batch in embed_images(model, todo, num_workers=0):
            for k, v in zip(batch.keys, batch.vectors):
                self.cache[(model_name, path[k])] = v
        return {k: self.cache.get((model_name, p)) for k, p in items}


def start_worker(dataset, force=False):
    env = dict(os.environ, FIFTYONE_AI_SEARCH_BATCH_SIZE="2",
               FIFTYONE_AI_SEARCH_NUM_WORKERS="0")
    cmd = [sys.executable, "-m", "fiftyone_ai_search", "sync", "--quiet",
           "--dataset", dataset.name] + (["--force"] if force else [])
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_for_commits(dataset, worker, done, since, timeout=60):
    """Waits until the worker committed ``done`` samples of what it works
    on now (the index being built, else the one searched), or exited.

    Returns:
        the samples committed then
    """
    deadline = time.time() + timeout
    while time.time() < deadline and worker.poll() is None:
        doc = st.get(dataset) or {}
        progress = doc.get("progress") or {}
        target = doc.get("build") or doc.get("index") or {}
        if (
            progress.get("index") == target.get("name")
            and progress.get("started_at", since) >= since  # not an old run's
            and progress.get("done", 0) >= done
        ):
            return progress["done"]
        time.sleep(0.01)
    return None


def check(dataset, fresh):
    """What is wrong with the index, or an empty list."""
    problems = []
    doc = st.get(dataset)
    if doc.get("build") or doc.get("retired"):
        problems.append(f"left over: build={doc.get('build')}, "
                        f"retired={doc.get('retired')}")
    failed = {f["sample_id"] for f in st.get_failures(dataset)}
    ids, paths = dataset.values(["id", "filepath"])
    expected = {k: v for k, v in fresh.of(doc["model"], list(zip(ids, paths))).items()
                if k not in failed}
    got_ids, got = ais.get_embeddings(dataset)
    got = dict(zip(got_ids, got))
    if sorted(got) != sorted(expected):
        problems.append(f"{len(got)} vectors for {len(expected)} samples")
    else:
        bad = [k for k in expected
               if not np.allclose(got[k], expected[k], atol=2e-5)]
        if bad:
            problems.append(f"{len(bad)} vectors not of model {doc['model']}")
    dirs = set(os.listdir(ais.get_settings().storage_dir)) - {"logs"}
    if dirs != {doc["index"]["name"]}:
        problems.append(f"index directories on disk: {sorted(dirs)}")
    name = ais.perform_ai_search(dataset, prompt="a red circle", limit=5)
    if name is None:
        problems.append("search found nothing")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--samples", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hostile-minutes", type=float, default=0.0,
                        help="run trials for this long beside searchers "
                             "and a mutator (see above) instead of --trials")
    parser.add_argument("--max-delay", type=float, default=4.0,
                        help="a kill during the worker's start comes within "
                             "this many seconds")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    models = [tiny_clip_model_name(),
              perturbed_tiny_clip(tempfile.mkdtemp(dir=SCRATCH))]
    dataset = make_shapes_dataset(
        name="stress", num_samples=args.samples, seed=1,
        images_dir=os.path.join(SCRATCH, "images"),
    )
    ais.enable_embeddings(dataset, model=models[0], compute=False)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    fresh = Fresh()
    converged = 0
    others = []
    # while it exists the mutator holds still: a trial checks its sync
    pause = os.path.join(SCRATCH, "mutator-paused")
    if args.hostile_minutes:
        seconds = 60 * args.hostile_minutes
        deadline = time.time() + seconds
        others = [subprocess.Popen(
            [sys.executable, os.path.join(os.path.dirname(__file__),
                                          "_hostile.py"),
             role, dataset.name, str(seconds), str(args.seed + n), pause],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for n, role in enumerate(["searcher"] * 3 + ["mutator"])]

    trial = 0
    while (time.time() < deadline if others else trial < args.trials):
        trial += 1
        change = rng.choice(CHANGES)
        current = st.get(dataset)["model"]
        other = models[1] if current == models[0] else models[0]
        if change == "model":
            ais.enable_embeddings(dataset, model=other, compute=False)
        elif change == "add_delete":
            dataset.delete_samples(dataset.take(rng.randint(1, 10),
                                                seed=trial).values("id"))
            more = make_shapes_dataset(
                num_samples=rng.randint(1, 15), seed=100 + trial,
                images_dir=os.path.join(SCRATCH, f"more-{trial}"),
            )
            dataset.add_samples([fo.Sample(filepath=s.filepath) for s in more])
            more.delete()
        since = st.utcnow() - datetime.timedelta(seconds=1)
        worker = start_worker(dataset, force=change == "force")
        # a third of the kills during the worker's start, the others after
        # a random number of commits
        kill_at = rng.choice([0, rng.randint(1, args.samples)])
        if change == "disable_enable":
            wait_for_commits(dataset, worker, kill_at // 2, since)
            ais.disable_embeddings(dataset)
            ais.enable_embeddings(dataset, model=other, compute=False)
        if kill_at == 0:
            time.sleep(rng.uniform(0.0, args.max_delay))
            where = "during its start"
        else:
            committed = wait_for_commits(dataset, worker, kill_at, since)
            where = (f"after {committed} commits" if committed is not None
                     else "(had finished)")
        worker.send_signal(signal.SIGKILL)
        worker.wait()

        if others:
            open(pause, "w").close()
            time.sleep(0.5)  # its write under way lands
        start = time.time()
        try:
            report = ais.calculate_embeddings(dataset, wait=True,
                                              progress=False)
            problems = check(dataset, fresh)
        except Exception as e:  # a trial that raises did not converge
            report, problems = None, [f"{type(e).__name__}: {e}"]
        if others:
            os.remove(pause)
        ok = not problems
        converged += ok
        print(f"trial {trial:3d} {change:15s} killed {where}: "
              f"{'converged' if ok else 'NOT converged: ' + '; '.join(problems)}"
              f" (resume: {report}, {time.time() - start:.1f} s)", flush=True)

    print(f"\nconverged {converged} / {trial}")
    if not others:
        return 0 if converged == trial else 1
    seen = [json.loads(p.communicate()[0].strip().splitlines()[-1])
            for p in others]
    searchers = [s for s in seen if s["role"] == "searcher"]
    errors = [e for s in seen for e in s["errors"]]
    total = {k: sum(s[k] for s in searchers)
             for k in ("searches", "refused", "wrong", "torn")}
    print(f"hostile: {total['searches']} searches ({total['refused']} "
          f"refused while off), {seen[-1]['mutations']} mutations; "
          f"errors {len(errors)} / wrong {total['wrong']} / torn "
          f"{total['torn']}")
    for error in errors[:10]:
        print("  ", error)
    bad = len(errors) + total["wrong"] + total["torn"]
    return 0 if converged == trial and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
