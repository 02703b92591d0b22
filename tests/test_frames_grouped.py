"""Frame search of a grouped dataset's video slices (issue 24): every
video slice is indexed, whatever slice is active, keyed by the video
samples' ids as for a video dataset; kept in sync as groups come and go;
searched as a whole or one slice at a time; its hits open as FiftyOne's
frames views of the video slices (``select_group_slices(media_type=
"video").to_frames(...)``). Small synthetic videos (tests/videos.py), the
tiny CLIP, a real mongod."""

import os
import uuid

import pytest

import fiftyone as fo
import fiftyone.brain as fob

import fiftyone_ai_search as ais
from fiftyone_ai_search.demo import tiny_clip_model_name
from fiftyone_ai_search.errors import UnsupportedMediaError
from fiftyone_ai_search.index import indexes
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search.index.targets import Frames, frame_key

from tests.videos import FRAME_RATE, write_video

RED = ("red", "circle")
BLUE = ("blue", "square")
GREEN = ("green", "star")

#: each group: its front video's and its rear video's segments
GROUPS = [([RED, BLUE, RED], [GREEN, BLUE, GREEN]),
          ([BLUE, GREEN, BLUE], [RED, RED, GREEN]),
          ([GREEN, RED, GREEN], [BLUE, GREEN, BLUE])]


def _video(folder, name, layout, seed):
    path = os.path.join(folder, f"{name}.mp4")
    write_video(path, layout, seed=seed)
    seconds = len(layout)
    # what FiftyOne's frames views count frames with (ffprobe computes it)
    metadata = fo.VideoMetadata(
        frame_rate=float(FRAME_RATE), total_frame_count=FRAME_RATE * seconds,
        duration=float(seconds), frame_width=128, frame_height=128)
    return dict(filepath=path, metadata=metadata,
                layout=[f"{c} {s}" for c, s in layout])


def _group(folder, index, front, rear, image):
    """The samples of one group: an image ("left", the default slice) and
    two videos ("front" and "rear")."""
    group = fo.Group()
    return [
        fo.Sample(filepath=image, group=group.element("left")),
        fo.Sample(group=group.element("front"),
                  **_video(folder, f"front-{index}", front, 100 * index)),
        fo.Sample(group=group.element("rear"),
                  **_video(folder, f"rear-{index}", rear, 100 * index + 50)),
    ]


def _image(folder):
    from PIL import Image

    path = os.path.join(folder, "left.png")
    Image.new("RGB", (64, 64), (200, 200, 200)).save(path)
    return path


def grouped_dataset(folder, groups=GROUPS):
    folder = str(folder)
    image = _image(folder)
    dataset = fo.Dataset("grouped-frames-" + uuid.uuid4().hex[:10])
    dataset.add_group_field("group", default="left")
    dataset.add_samples([s for i, (front, rear) in enumerate(groups)
                         for s in _group(folder, i, front, rear, image)])
    return dataset


def _sync(dataset):
    return ais.calculate_embeddings(dataset, frames=True, wait=True,
                                    progress=False)


def _points(dataset):
    store = indexes.open_ref(st.get(Frames(dataset))["index"])
    try:
        return sorted(k for page in store.iter_sample_ids() for k in page)
    finally:
        store.close()


def _videos(dataset):
    return dataset.select_group_slices(media_type="video")


def _shown(dataset, pairs):
    """What each ``(video id, frame number)`` shows."""
    layouts = dict(zip(*_videos(dataset).values(["id", "layout"])))
    # 1 frame a second at 10 fps: frame 10 k + 1 is of second k
    return [layouts[v][(n - 1) // FRAME_RATE] for v, n in pairs]


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """A grouped dataset of 3 groups (an image, two videos each), its
    frame index built (read-only for tests)."""
    dataset = grouped_dataset(tmp_path_factory.mktemp("grouped"))
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          frames=True, compute=False)
    _sync(dataset)
    yield dataset
    ais.disable_embeddings(dataset, frames=True)
    dataset.delete()


def test_every_video_slice_is_indexed_by_its_samples_ids(grouped):
    videos = _videos(grouped)
    assert len(videos) == 6  # front and rear of 3 groups
    assert _points(grouped) == sorted(
        frame_key(i, n) for i in videos.values("id") for n in (1, 11, 21))
    status = ais.get_status(grouped, frames=True)
    assert status["counts"] == {"num_videos": 6, "num_indexed": 18,
                                "num_failed": 0}
    # whatever slice is active
    grouped.group_slice = "rear"
    try:
        assert ais.get_status(grouped, frames=True)["counts"][
            "num_videos"] == 6
    finally:
        grouped.group_slice = "left"
    # the images are not indexed by the frame index (their own index is
    # off until asked for)
    assert not ais.get_status(grouped)["enabled"]


def test_a_prompt_finds_red_circles_in_every_video_slice(grouped):
    hits = ais.search_frames(grouped, prompt="a red circle", limit=5)
    pairs = [(h["sample_id"], h["frame_number"]) for h in hits]
    assert _shown(grouped, pairs).count("red circle") >= 4
    # both slices hold red circles: hits come from both
    slices = dict(zip(*_videos(grouped).values(["id", "group.name"])))
    assert {slices[v] for v, _ in pairs} == {"front", "rear"}


def test_one_slice_scopes_the_search(grouped):
    front = grouped.select_group_slices("front")
    hits = ais.search_frames(front, prompt="a red circle", limit=20)
    front_ids = set(front.values("id"))
    assert hits and {h["sample_id"] for h in hits} <= front_ids
    # a grouped view (not flattened): the videos of its video slices
    group_id = grouped.first().group.id
    one = grouped.select_groups([group_id])
    got = {h["sample_id"] for h in ais.search_frames(
        one, prompt="a red circle", limit=20)}
    assert got == set(one.select_group_slices(media_type="video").values(
        "id"))


def test_hits_open_as_frames_views_of_the_video_slices(grouped):
    hits = ais.search_frames(grouped, prompt="a red circle", limit=5)
    pairs = [(h["sample_id"], h["frame_number"]) for h in hits]
    view = ais.frames_view(grouped, hits)
    assert view._is_frames
    assert list(zip(*view.values(["sample_id", "frame_number"]))) == pairs

    name = ais.perform_frame_search(grouped, prompt="a red circle", limit=5)
    frames = ais.get_collection(grouped, name)
    assert list(zip(*frames.values(["sample_id", "frame_number"]))) == pairs
    # a saved view of the grouped dataset: it loads again, same frames
    ais.save_collection(grouped, "red circles")
    again = fo.load_dataset(grouped.name).load_saved_view("red circles")
    assert list(zip(*again.values(["sample_id", "frame_number"]))) == pairs
    ais.delete_collection(grouped, "red circles")
    # as clips (the App's player at the hit): clips of the video slices
    clips = ais.get_collection(grouped, name, as_clips=True)
    assert clips._is_clips
    assert [(v, s[0]) for v, s in zip(
        *clips.values(["sample_id", "support"]))] == pairs
    # a frames view of the video slices scopes a search to its frames
    within = ais.search_frames(frames, prompt="a red circle", limit=20)
    assert {(h["sample_id"], h["frame_number"]) for h in within} == set(
        pairs)


def test_sync_follows_new_and_deleted_groups(tmp_path):
    dataset = grouped_dataset(tmp_path, GROUPS[:2])
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          frames=True, compute=False)
    try:
        assert _sync(dataset).added == 4
        dataset.add_samples(_group(str(tmp_path), 7, *GROUPS[2],
                                   _image(str(tmp_path))))
        report = _sync(dataset)
        # only the new group's two videos embedded (the others may be looked
        # at again, unchanged, when they were written within the watermark's
        # margin before the first sync: how soon depends on the machine)
        assert (report.added, report.updated, report.removed) == (2, 0, 0)
        assert len(_points(dataset)) == 18

        # a tag on a video embeds nothing
        video = _videos(dataset).first()
        video.tags.append("seen")
        video.save()
        report = _sync(dataset)
        assert (report.added, report.updated, report.removed) == (0, 0, 0)

        # a deleted group takes its videos' frames with it
        gone = dataset.first().group.id
        gone_ids = set(dataset.select_groups([gone]).select_group_slices(
            media_type="video").values("id"))
        dataset.delete_groups([gone])
        report = _sync(dataset)
        assert report.removed == 6  # the frames of its two videos
        held = {k[:24] for k in _points(dataset)}
        assert held == set(_videos(dataset).values("id"))
        assert not held & gone_ids
        assert ais.get_status(dataset, frames=True)["counts"][
            "num_indexed"] == 12
    finally:
        ais.disable_embeddings(dataset, frames=True)
        dataset.delete()


def test_what_is_refused_says_the_way_around(tmp_path):
    folder = str(tmp_path)
    images = fo.Dataset("grouped-images-" + uuid.uuid4().hex[:10])
    images.add_group_field("group", default="left")
    images.add_samples([fo.Sample(filepath=_image(folder),
                                  group=fo.Group().element("left"))])
    with pytest.raises(UnsupportedMediaError, match="no video slice"):
        ais.enable_embeddings(images, model=tiny_clip_model_name(),
                              frames=True, compute=False)
    images.delete()

    videos = fo.Dataset("grouped-videos-" + uuid.uuid4().hex[:10])
    videos.add_group_field("group", default="front")
    videos.add_samples([fo.Sample(group=fo.Group().element("front"),
                                  **_video(folder, "v", [RED], 0))])
    # its images: none; the message names the frame index of its video
    # slices, which is supported now
    with pytest.raises(UnsupportedMediaError) as info:
        ais.enable_embeddings(videos, model=tiny_clip_model_name(),
                              compute=False)
    message = str(info.value)
    assert "not supported yet" not in message
    assert "frames=True" in message and "select_group_slices" in message
    # FiftyOne itself refuses to_frames() of a grouped collection: the
    # frames view of the video slices is the way
    with pytest.raises(Exception, match="select_group_slices"):
        videos.to_frames(sample_frames="dynamic", fps=1)
    assert len(_videos(videos).to_frames(sample_frames="dynamic",
                                         fps=1)) == 1
    videos.delete()


def test_the_brain_sorts_frames_views_of_the_video_slices(tmp_path):
    dataset = grouped_dataset(tmp_path)
    ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                          frames=True, brain_key="frames", compute=False)
    try:
        _sync(dataset)
        frames = _videos(dataset).to_frames(sample_frames="dynamic", fps=1)
        view = frames.sort_by_similarity("a red circle", k=5,
                                         brain_key="frames")
        pairs = list(zip(*view.values(["sample_id", "frame_number"])))
        hits = ais.search_frames(dataset, prompt="a red circle", limit=5)
        assert pairs == [(h["sample_id"], h["frame_number"]) for h in hits]
        # one slice's frames view
        front = dataset.select_group_slices("front").to_frames(
            sample_frames="dynamic", fps=1)
        some = front.sort_by_similarity("a red circle", k=3,
                                        brain_key="frames")
        assert set(some.values("sample_id")) <= set(
            dataset.select_group_slices("front").values("id"))
        results = dataset.load_brain_results("frames")
        assert len(results.view) == 18
        results.find_duplicates(thresh=0.5)
        assert set(results.duplicate_ids) <= set(results.view.values("id"))
    finally:
        ais.disable_embeddings(dataset, frames=True)
        dataset.delete()


def test_compute_similarity_on_a_frames_view_of_the_video_slices(tmp_path):
    dataset = grouped_dataset(tmp_path, GROUPS[:2])
    frames = _videos(dataset).to_frames(sample_frames="dynamic", fps=1)
    try:
        results = fob.compute_similarity(
            frames, backend="ai_search", brain_key="sim",
            model="open-clip-torch",
            model_kwargs={"clip_model": tiny_clip_model_name(),
                          "pretrained": None})
        # the frame index of every video slice, switched on and built
        assert ais.is_embeddings_enabled(dataset, frames=True)
        assert results.total_index_size == 12
        view = frames.sort_by_similarity("a red circle", k=3,
                                         brain_key="sim")
        pairs = list(zip(*view.values(["sample_id", "frame_number"])))
        assert _shown(dataset, pairs) == ["red circle"] * 3
        dataset.delete_brain_run("sim")  # its last run: the index goes
        assert not ais.is_embeddings_enabled(dataset, frames=True)
    finally:
        dataset.delete()


def test_a_frames_view_of_the_video_slices_is_refused_naming_them(tmp_path):
    """An image search given a frames view of a grouped dataset's video
    slices names them (it said "the video dataset", which it is not)."""
    dataset = grouped_dataset(tmp_path)
    try:
        frames = _videos(dataset).to_frames(sample_frames="dynamic", fps=1)
        with pytest.raises(UnsupportedMediaError) as info:
            ais.perform_ai_search(frames, prompt="a red circle")
        message = str(info.value)
        assert (f"is a frames view of the video slices of the grouped "
                f"dataset '{dataset.name}'") in message
        assert "the video dataset" not in message
        assert "select_group_slices" in message  # how to search them
    finally:
        dataset.delete()
