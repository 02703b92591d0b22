"""The command line: every command end to end on a real dataset with the
bundled tiny CLIP (in-process through ``main(argv)``, which is what the
console script calls), one-line errors with exit status 2, and a few real
subprocesses for the console script and what reaches stdout and stderr."""

import argparse
import json
import os
import subprocess
import sys

import fiftyone as fo
import pytest

import fiftyone_ai_search as ais
from fiftyone_ai_search.__main__ import _parser, main
from fiftyone_ai_search.demo import make_scenes_dataset, tiny_clip_model_name

from tests.helpers import shapes_dataset
from tests.videos import video_dataset

TINY = tiny_clip_model_name()


def _run(capsys, *argv):
    """``main(argv)``: (exit status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys, *argv):
    code, out, err = _run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def _assert_one_line_error(code, err, *words):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fiftyone-ai-search: error: "), err
    for word in words:
        assert word in lines[0]


def _subprocess(*argv, console_script=False):
    env = dict(os.environ, FIFTYONE_DATABASE_URI=fo.config.database_uri)
    if console_script:
        cmd = [os.path.join(os.path.dirname(sys.executable),
                            "fiftyone-ai-search")]
    else:
        cmd = [sys.executable, "-m", "fiftyone_ai_search"]
    return subprocess.run(cmd + [str(a) for a in argv], env=env,
                          capture_output=True, text=True, timeout=600)


def test_version_description_and_every_option_has_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    from importlib.metadata import version

    assert capsys.readouterr().out.strip() == (
        f"fiftyone-ai-search {version('fiftyone-ai-search')}")

    parser = _parser()
    text = parser.format_help()
    assert "``" not in text and "::" not in text  # no raw RST
    for command in ("enable", "disable", "status", "search", "collections",
                    "sync", "refresher", "demo", "install-plugin"):
        assert command in text

    def check(p, where):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    check(child, f"{where} {name}")
            elif not isinstance(action, (argparse._HelpAction,
                                         argparse._VersionAction)):
                assert action.help, f"{where}: {action.dest} has no help"

    check(parser, "fiftyone-ai-search")


# slow: the whole CLI walk, a sync included (the fast tier's budget)
@pytest.mark.slow
def test_enable_status_search_collections_disable(tmp_path, capsys):
    dataset = shapes_dataset(tmp_path, num_samples=90, enable=False)
    name = dataset.name

    code, out, _ = _run(capsys, "status", name)
    assert code == 0 and "off" in out
    code, out, err = _run(capsys, "enable", name, "--model", TINY, "--wait",
                          "--quiet")
    assert code == 0, err
    assert "added 90" in out

    code, out, _ = _run(capsys, "status", name)
    assert code == 0 and "indexed 90" in out and TINY in out
    status = _json(capsys, "status", name)
    assert status["enabled"] and status["counts"]["num_indexed"] == 90

    # a prompt: the tiny CLIP aligns text and images
    found = _json(capsys, "search", name, "a red circle", "-n", 3)
    assert found["collection"] == ais.TEMPORARY_COLLECTION
    labels = [dataset[r["id"]].ground_truth.label for r in found["results"]]
    assert labels.count("red circle") >= 2, labels
    scores = [r["score"] for r in found["results"]]
    assert scores == sorted(scores, reverse=True)
    code, out, _ = _run(capsys, "search", name, "a red circle", "-n", 3)
    assert code == 0
    assert [line.split()[1] for line in out.splitlines()] == [
        r["id"] for r in found["results"]]

    # more like a sample, saved under a name; a diverse spread
    first = found["results"][0]["id"]
    code, out, err = _run(capsys, "search", name, "--similar", first, "-n", 5,
                          "--save", "like it", "--paths")
    assert code == 0, err
    assert out.splitlines()[0] == dataset[first].filepath
    assert len(out.splitlines()) == 5
    spread = _json(capsys, "search", name, "--diverse", "centroids", "-n", 6)
    assert len(spread["results"]) == 6

    listed = _json(capsys, "collections", "list", name)
    assert {c["name"]: c["size"] for c in listed} == {
        "like it": 5, ais.TEMPORARY_COLLECTION: 6}
    code, out, _ = _run(capsys, "collections", "list", name)
    assert code == 0 and "like it: 5 results" in out

    # an image given in memory (the App's upload) is listed by its file's
    # name, never as a path (it was kept nowhere) nor as "image=None"
    from PIL import Image

    with Image.open(dataset.first().filepath) as upload:
        upload.load()
        ais.perform_ai_search(dataset, image=upload, limit=3)
    ais.save_collection(dataset, "by upload")
    code, out, _ = _run(capsys, "collections", "list", name)
    line = next(x for x in out.splitlines() if x.startswith("by upload:"))
    assert (f"image_name={os.path.basename(dataset.first().filepath)}"
            in line), line
    assert "image=" not in line.replace("image_name=", ""), line
    ais.delete_collection(dataset, "by upload")
    shown = _json(capsys, "collections", "show", name, "like it")
    assert [r["id"] for r in shown["results"]] == [
        i for i, _ in ais.get_collection_scores(dataset, "like it")]
    code, _, err = _run(capsys, "collections", "save", name, "spread",
                        "--min-score", -1)
    assert code == 0, err
    code, _, err = _run(capsys, "collections", "rename", name, "spread",
                        "a spread")
    assert code == 0, err
    code, _, err = _run(capsys, "collections", "delete", name, "like it")
    assert code == 0, err
    assert {c["name"] for c in ais.list_collections(dataset)} == {
        ais.TEMPORARY_COLLECTION, "a spread"}

    code, out, err = _run(capsys, "disable", name)
    assert code == 0, err
    assert not ais.is_embeddings_enabled(dataset)
    code, out, _ = _run(capsys, "status", name)
    assert code == 0 and "AI search: off" in out


def test_mistakes_are_one_line_errors_with_status_2(tmp_path, capsys):
    off = shapes_dataset(tmp_path, num_samples=6, enable=False)
    on = shapes_dataset(tmp_path, num_samples=6)  # on, nothing computed
    capsys.readouterr()  # their progress bars

    for argv in (["status", "no-such-dataset"],
                 ["enable", "no-such-dataset"],
                 ["disable", "no-such-dataset"],
                 ["search", "no-such-dataset", "a dog"],
                 ["collections", "list", "no-such-dataset"],
                 ["sync", "--dataset", "no-such-dataset"],
                 ["refresher", "--once", "--dataset", "no-such-dataset"]):
        code, out, err = _run(capsys, *argv)
        _assert_one_line_error(code, err, "'no-such-dataset' does not exist")
        assert not out

    for argv in (["search", off.name, "a dog"],
                 ["disable", off.name],
                 ["refresher", "--once", "--dataset", off.name]):
        code, _, err = _run(capsys, *argv)
        _assert_one_line_error(code, err, "AI search is off",
                               f"fiftyone-ai-search enable {off.name}")

    # the SDK's own refusals and argument checks
    code, _, err = _run(capsys, "search", on.name, "a dog")
    _assert_one_line_error(code, err)  # not indexed yet
    code, _, err = _run(capsys, "search", on.name, "a dog", "--patches-field",
                        "ground_truth")
    _assert_one_line_error(code, err, "ground_truth")
    code, _, err = _run(capsys, "collections", "show", on.name, "nope")
    _assert_one_line_error(code, err, "nope")
    code, _, err = _run(capsys, "enable", off.name, "--model", "ViT-B-99")
    _assert_one_line_error(code, err)
    assert not ais.is_embeddings_enabled(off)

    # argparse's own: two queries at once
    with pytest.raises(SystemExit) as e:
        main(["search", on.name, "a dog", "--diverse", "random"])
    assert e.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_frames_enable_status_disable(tmp_path, capsys):
    # --frames as the SDK's frames=True, on enable, status, disable (and
    # sync): the frame index of a video dataset, its images untouched
    videos = video_dataset(tmp_path, [[("red", "circle"), ("blue", "square")]])
    name = videos.name

    code, out, _ = _run(capsys, "status", name, "--frames")
    assert code == 0 and f"off for the frames of dataset '{name}'" in out
    assert _json(capsys, "status", name, "--frames")["sampling"] is None
    code, _, err = _run(capsys, "disable", name, "--frames")
    _assert_one_line_error(code, err, "frame search is off",
                           f"fiftyone-ai-search enable {name} --frames")

    code, out, err = _run(capsys, "enable", name, "--frames", "--model",
                          TINY, "--wait", "--quiet")
    assert code == 0, err
    assert f"on for the frames of dataset '{name}'" in out
    assert "added 1" in out  # one video
    assert ais.is_embeddings_enabled(videos, frames=True)
    assert not ais.is_embeddings_enabled(videos)

    code, out, _ = _run(capsys, "status", name, "--frames")
    assert code == 0 and "sampling:" in out and "fps 1.0" in out
    assert "videos 1" in out and "indexed 2" in out  # 1 frame a second
    status = _json(capsys, "status", name, "--frames")
    assert status["enabled"] and status["counts"]["num_indexed"] == 2
    code, out, _ = _run(capsys, "status", name)  # the images: off
    assert code == 0 and "off" in out

    # one index at a time, as the SDK's frames= and patches_field=
    with pytest.raises(SystemExit) as e:
        main(["status", name, "--frames", "--patches-field", "x"])
    assert e.value.code == 2
    assert "not allowed with" in capsys.readouterr().err
    # an image dataset has no frames: one line, the SDK's refusal
    images = shapes_dataset(tmp_path, num_samples=2, enable=False)
    capsys.readouterr()
    code, _, err = _run(capsys, "enable", images.name, "--frames")
    _assert_one_line_error(code, err, "not a video dataset")

    code, out, err = _run(capsys, "disable", name, "--frames")
    assert code == 0, err
    assert f"off for the frames of dataset '{name}'" in out
    assert not ais.is_embeddings_enabled(videos, frames=True)


@pytest.mark.slow  # real processes, each importing FiftyOne
def test_console_script_and_reports_said_once(tmp_path):
    # the console script: a mistake is one line and status 2
    result = _subprocess("search", "no-such-dataset", "a dog",
                         console_script=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fiftyone-ai-search: error: dataset 'no-such-dataset' does not "
        "exist (`fiftyone datasets list` lists them)"]
    assert "Traceback" not in result.stderr and not result.stdout

    # an object index synced by the command: its report once, on stdout
    scenes = make_scenes_dataset(num_samples=4,
                                 images_dir=str(tmp_path / "scenes"))
    ais.enable_embeddings(scenes, model=TINY, compute=False)
    ais.enable_embeddings(scenes, patches_field="ground_truth", compute=False)
    result = _subprocess("sync", "--dataset", scenes.name, "--patches-field",
                         "ground_truth", "--quiet")
    assert result.returncode == 0, result.stderr
    assert (f"AI search sync of the objects of 'ground_truth' of dataset "
            f"'{scenes.name}': added") in result.stdout
    assert (result.stdout + result.stderr).count("added") == 1, result

    result = _subprocess("refresher", "--once", "--dataset", scenes.name)
    assert result.returncode == 0, result.stderr
    both = result.stdout + result.stderr
    assert both.count("AI search refresh: synced") == 1, both
