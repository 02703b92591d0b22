"""The Brain and video frames: a frame index is not a Brain run, so the
Brain's paths to frames are refused with what searches them instead
(``search_frames`` and ``frames_view``), and refusing leaves no run behind
(issue 24, point 5; the bridge is designed in docs/design.md, "Video
frames"). On a real video dataset in a real mongod, with the tiny CLIP."""

import uuid

import pytest

import fiftyone.brain as fob

import fiftyone_ai_search as ais
from fiftyone_ai_search.demo import tiny_clip_model_name
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search.index import targets

from tests.helpers import labelled_video, shapes_dataset


#: the Brain's model: the tiny CLIP (offline), as in test_brain_contract
TINY = dict(model="open-clip-torch",
            model_kwargs={"clip_model": tiny_clip_model_name(),
                          "pretrained": None})


def _name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A video dataset (files never read: nothing here decodes) with a
    frame label, for its frames and clips views."""
    dataset = labelled_video(tmp_path_factory.mktemp("video"),
                             _name("test-brain-frames"))
    yield dataset
    dataset.delete()


def _names_frame_search(message):
    assert "search_frames(" in message
    assert "frames_view(" in message


def test_brain_key_with_a_frame_index_is_refused(video):
    with pytest.raises(ValueError, match="brain_key: a frame index is not "
                       "a FiftyOne Brain run") as e:
        ais.enable_embeddings(video, model=tiny_clip_model_name(),
                              frames=True, brain_key="frames",
                              compute=False)
    message = str(e.value)
    assert "sort_by_similarity(brain_key=...) does not search it" in message
    _names_frame_search(message)
    # refused before anything is written
    assert st.get(targets.Frames(video)) is None
    assert not ais.is_embeddings_enabled(video, frames=True)
    assert video.list_brain_runs() == []


@pytest.mark.parametrize("kind", ["frames", "clips", "videos"])
@pytest.mark.parametrize("brain_key", ["frames_run", None])
def test_compute_similarity_on_videos_is_refused(video, kind, brain_key):
    # the Brain runs a frames view's run on its frames view, a clips view's
    # on the video dataset
    view, expected = {
        "frames": (video.to_frames(sample_frames=False),
                   f"samples is a frames view of the video dataset "
                   f"'{video.name}'"),
        "clips": (video.to_clips("frames.objects"),
                  f"Dataset '{video.name}' is a video dataset"),
        "videos": (video, f"Dataset '{video.name}' is a video dataset"),
    }[kind]
    with pytest.raises(ais.UnsupportedMediaError, match=expected) as e:
        fob.compute_similarity(view, backend="ai_search",
                               brain_key=brain_key, **TINY)
    message = str(e.value)
    assert "not video frames" in message
    assert "enable_embeddings(video_dataset, frames=True)" in message
    _names_frame_search(message)
    # the Brain had registered the run: it is gone, and its key is free
    assert video.list_brain_runs() == []
    assert not ais.is_embeddings_enabled(video, frames=True)
    assert st.get(targets.Frames(video)) is None


def test_an_image_run_refuses_a_frames_view(tmp_path, video):
    images = shapes_dataset(tmp_path, num_samples=4, enable=False)
    index = fob.compute_similarity(images, backend="ai_search",
                                   brain_key="img", **TINY)
    try:
        with pytest.raises(ValueError, match="not video frames") as e:
            index.use_view(video.to_frames(sample_frames=False))
        _names_frame_search(str(e.value))
        # the run still serves its images
        assert index.total_index_size == 4
    finally:
        index.cleanup()
        images.delete_brain_run("img")
        images.delete()
