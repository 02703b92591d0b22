"""How a status reads in words: the App's status line and the command
line's status rows count in the singular where there is one ("1 video
failed", never "1 videos failed"), and name models and flags as a user
reads them. Status dicts as get_status returns them; nothing is run."""

import datetime

from fiftyone_ai_search.__main__ import _pairs, status_rows
from fiftyone_ai_search.app import forms
from fiftyone_ai_search.words import counted

UPDATED = datetime.datetime(2026, 12, 6, 5, 30)


def test_a_count_reads_in_the_singular_for_one():
    assert counted(1, "video") == "1 video"
    assert counted(0, "video") == "0 videos"
    assert counted(2, "frame") == "2 frames"
    assert counted(3, "match", "matches") == "3 matches"


def _frame_status(**counts):
    return {"enabled": True, "in_progress": False, "updated_at": UPDATED,
            "model": "tiny_clip", "pretrained": None, "backend": "edge",
            "index": {"model": "tiny_clip", "pretrained": None,
                      "backend": "edge"},
            "rebuild": None, "sampling": {"fps": 1.0},
            "counts": dict({"num_indexed": 1, "num_videos": 1,
                            "num_failed": 1}, **counts)}


def test_the_status_line_of_a_frame_index_counts_in_the_singular():
    text = forms.status_text(_frame_status())
    assert ("1 frame of 1 video indexed (1 frame per second), 1 video "
            "failed") in text, text
    text = forms.status_text(_frame_status(num_indexed=36, num_videos=6,
                                           num_failed=0))
    assert ("36 frames of 6 videos indexed (1 frame per second), 0 videos "
            "failed") in text, text
    running = dict(_frame_status(), in_progress=True,
                   progress={"done": 1, "total": 1, "frames": 1})
    assert forms.progress_text(running) == "1 / 1 video (100%), 1 frame"


def test_the_command_lines_status_rows_read_as_words():
    status = {"enabled": True, "in_progress": True, "model": "ViT-B-32",
              "pretrained": "laion2b_s34b_b79k", "backend": "edge",
              "progress": {"done": 2, "total": 6, "frames": 1},
              "rebuild": {"model": "ViT-L-14", "pretrained": "openai",
                          "backend": "edge"},
              "counts": {"num_samples": 6, "num_indexed": 5,
                         "num_failed": 1},
              "last_report": {"added": 5, "updated": 0, "failed": 1,
                              "seconds": 1.23, "rebuilt": True,
                              "reused": 0}}
    rows = dict(status_rows(status, "dataset 'x'"))
    assert rows["AI search"] == "on for dataset 'x'"
    assert rows["model"] == "ViT-B-32 / laion2b_s34b_b79k"
    # the model being built beside, named like the model (was: its
    # architecture alone)
    assert rows["rebuilding with"] == "ViT-L-14 / openai"
    # a frame index's run counts videos, and frames
    assert rows["computing"] == "2 of 6 videos, 1 frame"
    assert rows["counts"] == "samples 6, indexed 5, failed 1"
    # a flag by its name where it is true (was: "rebuilt True")
    assert rows["last report"] == (
        "added 5, updated 0, failed 1, rebuilt, reused 0 in 1.2 s")
    assert _pairs({"rebuilt": False, "added": 1}) == "added 1"
