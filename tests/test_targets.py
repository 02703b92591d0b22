"""What differs between the kinds of target (a dataset's images, a label
field's objects, a video dataset's frames) is behind the type: its words,
its command-line arguments, its failure records and status fields, and,
in the layers above the index (which the type may not import), one entry
per kind in each table keyed by :attr:`Target.kind`."""

import fiftyone as fo
import pytest

from fiftyone_ai_search import brain, scheduler, search
from fiftyone_ai_search.index import targets
from fiftyone_ai_search.index.state import IndexState
from fiftyone_ai_search.index.targets import Frames, Images, Objects, Target
from fiftyone_ai_search.sync import runner

from tests.helpers import labelled_video


@pytest.fixture
def each(tmp_path):
    """``{kind: target}``: one target of each kind."""
    images = fo.Dataset()
    images.add_sample_field("ground_truth", fo.EmbeddedDocumentField,
                            embedded_doc_type=fo.Detections)
    videos = labelled_video(tmp_path, fo.get_default_dataset_name())
    yield {"images": Images(images),
           "objects": Objects(images, "ground_truth"),
           "frames": Frames(videos)}
    images.delete()
    videos.delete()


def test_each_kind_is_one_class():
    kinds = [cls.kind for cls in Target.__subclasses__()]
    assert sorted(kinds) == ["frames", "images", "objects"]
    assert targets.of(fo.Dataset()).kind == "images"  # a dataset: images


def test_what_differs_is_an_attribute_of_the_kind(each):
    images, objects, frames = each["images"], each["objects"], each["frames"]
    key = "0" * 24

    assert images.sync_args == []
    assert objects.sync_args == ["--patches-field", "ground_truth"]
    assert frames.sync_args == ["--frames"]

    # an object's failure is keyed by its label id, said as such
    assert images.failure_ids(key) == {} == frames.failure_ids(key)
    assert objects.failure_ids(key) == {"label_id": key}

    # a status says what it is of: the objects' field (and crop), the
    # frames' sampling rule; None when off, the same keys either way
    state = IndexState(key="k", crop={"margin": 0.1},
                       sampling={"fps": 1.0})
    assert images.status_fields(None) == {} == images.status_fields(state)
    assert objects.status_fields(None) == {"patches_field": "ground_truth"}
    assert objects.status_fields(state) == {"patches_field": "ground_truth",
                                            "crop": {"margin": 0.1}}
    assert frames.status_fields(None) == {"sampling": None}
    assert frames.status_fields(state) == {"sampling": {"fps": 1.0}}

    # the label field a state names: none for images and frames
    assert [t.field for t in (images, objects, frames)] == [
        None, "ground_truth", None]


@pytest.mark.parametrize("table", [
    runner._SYNCHRONIZERS, scheduler._CONSISTENT, brain._REGISTER,
    search._LIVE], ids=["synchronizer", "consistency", "brain run", "scope"])
def test_the_layers_above_define_each_kind_once(table):
    # a new kind of target without its synchronizer, consistency check,
    # Brain registration or search scope fails here, not in a user's sync
    assert set(table) == {cls.kind for cls in Target.__subclasses__()}
