"""Shared test helpers: datasets of real shape images, the bundled tiny CLIP."""

import contextlib
import json
import os
import time
import uuid

import fiftyone as fo
import numpy as np

import fiftyone_ai_search as ais
from fiftyone_ai_search.demo import make_shapes_dataset, tiny_clip_model_name
from fiftyone_ai_search.query import pairs


def shapes_dataset(tmp_path, num_samples=30, seed=1, enable=True):
    """A fresh dataset of ``num_samples`` shape images under ``tmp_path``,
    with AI search enabled on the bundled tiny CLIP (nothing computed yet)."""
    name = "test-" + uuid.uuid4().hex[:10]
    dataset = make_shapes_dataset(
        name=name,
        num_samples=num_samples,
        seed=seed,
        images_dir=str(tmp_path / name),
    )
    if enable:
        ais.enable_embeddings(
            dataset, model=tiny_clip_model_name(), compute=False
        )
    return dataset


def server_dataset_by_secrets(tmp_path, num_samples, secrets):
    """Shapes indexed on a Qdrant server (qdrant-client's ``:memory:``)
    whose URL is only in ``secrets``, as the App's plugin secrets hold it
    (the caller unsets the URL in the environment). Returns the dataset and
    the name of its index."""
    from fiftyone_ai_search.index import state as st

    dataset = shapes_dataset(tmp_path, num_samples=num_samples, enable=False)
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          backend="server", secrets=secrets, compute=False)
    ais.calculate_embeddings(dataset, wait=True, progress=False,
                             secrets=secrets)
    return dataset, st.get(dataset)["index"]["name"]


def add_shape_samples(dataset, tmp_path, num_samples, seed):
    """Adds ``num_samples`` new shape images (another seed) to ``dataset``."""
    other = make_shapes_dataset(
        num_samples=num_samples, seed=seed,
        images_dir=str(tmp_path / ("more-" + uuid.uuid4().hex[:8])),
    )
    samples = [fo.Sample(filepath=s.filepath, shape=s.shape, color=s.color,
                         ground_truth=s.ground_truth) for s in other]
    other.delete()
    return dataset.add_samples(samples)


def wait_until_idle(dataset, timeout=180):
    """Waits for a background computation to finish; fails on timeout."""
    deadline = time.time() + timeout
    while ais.get_embeddings_in_progress(dataset):
        if time.time() > deadline:
            raise AssertionError(
                f"still computing after {timeout} s: {ais.get_status(dataset)}"
            )
        time.sleep(0.2)


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def truncated_copy(src, dst, keep=0.5):
    with open(src, "rb") as f:
        data = f.read()
    return write_bytes(dst, data[: int(len(data) * keep)])


def bump_mtime(path):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))


# Small random-weight architectures that build offline in well under a second
SMALL_VIT = "ais-test-small-vit"
SMALL_RN = "ais-test-small-rn"
_SMALL_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32,
               "heads": 2, "layers": 1}
SMALL_CONFIGS = {
    SMALL_VIT: {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 64,
                       "patch_size": 32, "head_width": 32},
        "text_cfg": _SMALL_TEXT,
    },
    # a BatchNorm tower, as in the bundled tiny CLIP
    SMALL_RN: {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8,
                       "head_width": 32},
        "text_cfg": _SMALL_TEXT,
    },
}


def register_small_models(directory):
    """Registers :data:`SMALL_CONFIGS` with open_clip (configs in
    ``directory``)."""
    import open_clip

    for name, config in SMALL_CONFIGS.items():
        with open(os.path.join(directory, f"{name}.json"), "w") as f:
            json.dump(config, f)
    open_clip.add_model_config(str(directory))


def at_the_check_before_a_commit(monkeypatch, target, done, action):
    """Runs ``action()`` once, at the check a sync of ``target`` makes
    before a commit (of the state's generation), once ``done`` of its units
    are committed: where a change made by another process lands between two
    commits of a running sync, with no process to catch mid-run. Returns a
    list that gets the progress it ran at (empty: it never ran)."""
    from fiftyone_ai_search.index import state

    check = state.check_generation
    ran = []

    def check_after(checked, generation):
        progress = (state.get(target) or {}).get("progress") or {}
        if not ran and progress.get("done", 0) >= done:
            ran.append(dict(progress))
            action()
        return check(checked, generation)

    monkeypatch.setattr(state, "check_generation", check_after)
    return ran


def kill_sync_worker_midway(target, args, done=20, timeout=120):
    """Starts a sync worker (``python -m fiftyone_ai_search sync --quiet
    ARGS``, two images a batch), waits until it committed ``done`` of
    ``target``'s units (a dataset, or an object target), and kills it
    with SIGKILL; fails if it finished first."""
    import signal
    import subprocess
    import sys

    from fiftyone_ai_search.index import state

    env = dict(os.environ, FIFTYONE_AI_SEARCH_BATCH_SIZE="2",
               FIFTYONE_AI_SEARCH_NUM_WORKERS="0")
    worker = subprocess.Popen(
        [sys.executable, "-m", "fiftyone_ai_search", "sync", "--quiet",
         *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + timeout
    while time.time() < deadline and worker.poll() is None:
        progress = (state.get(target) or {}).get("progress") or {}
        if progress.get("done", 0) >= done:
            break
        time.sleep(0.05)
    assert worker.poll() is None, "worker finished before it could be killed"
    worker.send_signal(signal.SIGKILL)
    worker.wait()


@contextlib.contextmanager
def worker_paused_midway(target, beyond=0, timeout=180, step=0.02):
    """Holds the background worker computing ``target`` (started by the App
    or the SDK) paused in the middle of its computation: it single-steps the
    worker's process group (SIGCONT, ``step`` seconds, SIGSTOP) until the
    state shows more than ``beyond`` but not all units embedded, and
    yields that progress (``{"done", "total", ...}``); the worker runs on
    when the block exits.
    A fast machine can then not finish before a poll sees the progress.

    Until the run has started its progress (before its first commit), the
    worker runs free, looked at every ``step`` seconds, and is stopped once
    it has: that start (its imports, its model, its look at what to embed:
    seconds of CPU) single-stepped held the worker to a third of a core
    for all of it, ~13 s of a browser test's 32 here."""
    import signal

    from fiftyone_ai_search.index import state

    def doc():
        return state.get(target) or {}

    deadline = time.time() + timeout
    pid = None
    while pid is None:  # the worker's pid, once it took the lease
        lease = doc().get("lease")
        pid = lease and lease["pid"]
        assert time.time() < deadline, f"no worker took the lease: {doc()}"
        time.sleep(0.01)
    group = os.getpgid(pid)  # the worker leads its session (and its pool)
    while not doc().get("progress"):
        assert time.time() < deadline, f"no progress started: {doc()}"
        time.sleep(step)
    os.killpg(group, signal.SIGSTOP)
    try:
        while True:
            time.sleep(0.05)  # a write sent just before the stop lands
            progress = doc().get("progress") or {}
            if beyond < progress.get("done", 0) < progress.get("total", 0):
                break
            assert progress.get("done", 0) < progress.get("total", 1), (
                f"the worker finished in one step: {progress}")
            assert time.time() < deadline, f"no progress: {doc()}"
            os.killpg(group, signal.SIGCONT)
            time.sleep(step)
            os.killpg(group, signal.SIGSTOP)
        yield progress
    finally:
        os.killpg(group, signal.SIGCONT)


def collect_batches(batches, dim):
    """``(vectors, failures, keys of each batch)`` of the batches of
    ``embed_images``, checking that each key comes once and each vector is
    a float32 row of ``dim``."""
    from fiftyone_ai_search.embedding.pipeline import EmbeddedBatch

    vectors, failures, keys = {}, {}, []
    for batch in batches:
        assert isinstance(batch, EmbeddedBatch)
        assert batch.vectors.dtype == np.float32
        assert batch.vectors.shape == (len(batch.keys), dim)
        for key, vector in zip(batch.keys, batch.vectors):
            assert key not in vectors and key not in failures
            vectors[key] = vector

        for key, reason in batch.failures.items():
            assert key not in vectors and key not in failures
            failures[key] = reason

        keys.append(list(batch.keys) + list(batch.failures))
    return vectors, failures, keys


def labelled_video(directory, name):
    """A video dataset ``name`` of one video of 3 frames at 1 fps whose
    file is never read (nothing decodes it), with a detection on its
    first frame: enough for its frames and clips views."""
    dataset = fo.Dataset(name)
    sample = fo.Sample(
        filepath=str(directory / "a.mp4"),
        metadata=fo.VideoMetadata(total_frame_count=3, frame_rate=1.0,
                                  frame_width=32, frame_height=32,
                                  duration=3.0),
    )
    sample.frames[1]["objects"] = fo.Detections(detections=[
        fo.Detection(label="thing", bounding_box=[0, 0, 0.5, 0.5])])
    dataset.add_sample(sample)
    return dataset


def count_pair_passes(monkeypatch):
    """The thresholds of the near-duplicate passes through the cells from
    now on (a spy: the real pass runs)."""
    passes = []
    through_cells = pairs.pairs_by_cells

    def counted(*args, **kwargs):
        passes.append(args[3])
        return through_cells(*args, **kwargs)

    monkeypatch.setattr(pairs, "pairs_by_cells", counted)
    return passes
