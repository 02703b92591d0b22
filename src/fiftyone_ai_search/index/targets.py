"""What an index indexes: a dataset's images, or the objects of one of its
label fields.

A :class:`Target` is either: :class:`Images` (a dataset's images; the
dataset itself stands for them wherever a target is asked for, see
:func:`of`), :class:`Objects` (the dataset and a ``Detections``,
``Polylines`` or ``Keypoints`` field) or :class:`Frames` (the sampled
frames of the videos of a video dataset, keyed ``"<dataset id>~frames"``:
``frames`` is FiftyOne's reserved field of video datasets, so no label
field of one has that name). What differs between the two (what
they count, how messages name them) is behind the type, so that callers
never ask which one they hold. Each target has its own state document
(:mod:`fiftyone_ai_search.index.state`), its own index, lease, watermarks
and failures, keyed by :func:`dataset_key`: object indexes of several
fields live beside the image index and are synced, rebuilt and switched
off each on its own.

Examples::

    objects = Objects(dataset, "ground_truth")
    objects.key          # "<dataset id>~ground_truth"
    ids, paths, boxes = objects.objects_of(dataset.limit(10))
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..errors import ObjectFieldError, UnsupportedMediaError
from . import media

if TYPE_CHECKING:  # for annotations only
    import fiftyone.core.dataset as fod

#: separates a dataset's id from a label field's name in a target's key
#: (FiftyOne field names never hold it)
KEY_SEPARATOR = "~"

#: what follows :data:`KEY_SEPARATOR` in the key of a :class:`Frames`
#: target (FiftyOne's reserved field of video datasets)
FRAMES = "frames"


def _object_types():
    import fiftyone.core.labels as fol  # start-up: FiftyOne, on first use

    # the label list types FiftyOne's patches views are made of
    return {
        fol.Detections: "detections",
        fol.Polylines: "polylines",
        fol.Keypoints: "keypoints",
    }


def object_label_fields(dataset: fod.Dataset) -> list[str]:
    """The label fields of ``dataset`` whose objects object search can
    index (the ``patches_field`` of
    :func:`~fiftyone_ai_search.embeddings.enable_embeddings`): its
    ``Detections``, ``Polylines`` and ``Keypoints`` fields, sorted."""
    dataset = media.source_dataset(dataset, "dataset")
    return sorted(dataset.get_field_schema(
        embedded_doc_type=tuple(_object_types())))


def dataset_key(target) -> str:
    """The key that names a target's state and index: a dataset's id
    (stable across renames) for its images, ``"<dataset id>~<field>"`` for
    the objects of a label field.

    Args:
        target: a dataset, or a :class:`Target`
    """
    return of(target).key


class Target:
    """What an index indexes: the images of a dataset (:class:`Images`) or
    the objects of one of its label fields (:class:`Objects`). Use
    :func:`of` to get the target a dataset stands for."""

    #: the dataset
    dataset = None
    #: the label field of an object target; None for images
    field = None
    #: whether it is the objects of a label field
    is_objects = False
    #: whether it is the frames of the videos of a video dataset
    is_frames = False
    #: which kind of target it is, ``"images"``, ``"objects"`` or
    #: ``"frames"``: what the layers above key their own per-kind behaviour
    #: by (the synchronizer, the consistency check, the Brain run, the
    #: scope of a search), as they sit above this module
    kind = "images"
    #: whether a vector's key is its sample's id (images); else it is an
    #: object's label id or a frame's key, whose sample is kept beside it
    keyed_by_sample = True
    #: what a status's counts call the number :meth:`count` gives
    count_key = "num_samples"

    @property
    def key(self) -> str:
        """See :func:`dataset_key`."""
        return str(self.dataset._doc.id)

    @property
    def name(self) -> str:
        """The dataset's name (messages name the dataset)."""
        return self.dataset.name

    @property
    def call_args(self) -> str:
        """The arguments that name the target in an SDK call, for
        messages: ``"dataset"``."""
        return "dataset"

    @property
    def what(self) -> str:
        """How messages name its search: ``"AI search of dataset 'x'"``."""
        return f"AI search of dataset '{self.name}'"

    @property
    def not_enabled(self) -> str:
        """What a message says when its search is off."""
        return (f"{self.what} is not enabled. Enable it with "
                f"fiftyone_ai_search.enable_embeddings({self.call_args})")

    @property
    def id_name(self) -> str:
        """The name of the argument that takes the ids it indexes."""
        return "image_id"

    @property
    def not_embedded(self) -> str:
        """Why an id has no vector, when no failure is recorded for it."""
        return "not embedded yet"

    @property
    def sync_args(self) -> list:
        """The arguments that name the target on the command line
        (``python -m fiftyone_ai_search sync --dataset-id ID ...``):
        none for images."""
        return []

    def failure_ids(self, key: str) -> dict:
        """The ids a failure record of the item keyed ``key`` carries
        beside its ``key`` and ``sample_id``: none for images (the key is
        the sample id)."""
        return {}

    def status_fields(self, doc) -> dict:
        """What a status says of the target itself, beside what every
        status holds: nothing for images. ``doc``: its
        :class:`~fiftyone_ai_search.index.state.IndexState`, None when
        its search is off."""
        return {}

    def count(self, samples) -> int:
        """How many vectors a complete index of ``samples`` holds (failures
        included)."""
        return samples.count()

    def samples(self):
        """The samples whose vectors (or objects') it indexes (see
        :func:`fiftyone_ai_search.index.media.indexed_samples`)."""
        return media.indexed_samples(self.dataset)

    def __eq__(self, other):
        return isinstance(other, Target) and other.key == self.key

    def __hash__(self):
        return hash(self.key)


class Images(Target):
    """The images of a dataset: what an image index indexes.

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset`
    """

    def __init__(self, dataset):
        self.dataset = dataset

    @property
    def not_enabled(self) -> str:
        if self.dataset.media_type == "video":
            # its images are never indexed: its frames are
            return (f"Dataset '{self.name}' is a video dataset: AI search "
                    "indexes the frames of its videos. Enable it with "
                    "fiftyone_ai_search.enable_embeddings(dataset, "
                    "frames=True) and search them with "
                    "fiftyone_ai_search.search_frames(dataset, prompt=...)")
        return (f"AI search is not enabled on dataset '{self.name}'. Enable "
                "it with fiftyone_ai_search.enable_embeddings(dataset) (or "
                "the 'AI search: enable' operator in the App)")

    def __repr__(self):
        return f"Images({self.dataset.name!r})"

    def __str__(self):
        return f"images of dataset '{self.dataset.name}'"


class Objects(Target):
    """The objects of a label field of a dataset: what an object index
    indexes. Detections by their boxes; polylines and keypoints by the box
    around their points.

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset`
        field: the name of a field of ``fiftyone.core.labels.Detections``,
            ``Polylines`` or ``Keypoints``

    Raises:
        ObjectFieldError: for a field the dataset lacks or of another type
    """

    def __init__(self, dataset, field: str):
        if not isinstance(field, str) or not field:
            raise ObjectFieldError(
                f"patches_field: expected the name of a label field, got "
                f"{field!r}")
        self.dataset = dataset
        self.field = field
        self.list_field = _list_field(dataset, field)

    @classmethod
    def of_state(cls, dataset, field: str) -> "Objects":
        """The objects of a field named by a state document: the field may
        have been deleted or changed type since, and then holds no
        objects (its index is emptied by the next sync)."""
        try:
            return cls(dataset, field)
        except ObjectFieldError:
            objects = cls.__new__(cls)
            objects.dataset, objects.field, objects.list_field = (
                dataset, field, None)
            return objects

    is_objects = True
    kind = "objects"
    keyed_by_sample = False
    count_key = "num_objects"

    @property
    def sync_args(self) -> list:
        return ["--patches-field", self.field]

    def failure_ids(self, key: str) -> dict:
        # an object's failure is keyed by its label id
        return {"label_id": key}

    def status_fields(self, doc) -> dict:
        fields = {"patches_field": self.field}
        if doc is not None:
            fields["crop"] = doc.crop
        return fields

    @property
    def key(self) -> str:
        return super().key + KEY_SEPARATOR + self.field

    @property
    def call_args(self) -> str:
        return f"dataset, patches_field={self.field!r}"

    @property
    def what(self) -> str:
        return (f"Object search of field '{self.field}' of dataset "
                f"'{self.name}'")

    @property
    def id_name(self) -> str:
        return "label_id"

    @property
    def not_embedded(self) -> str:
        return f"not an object of '{self.field}', or not embedded yet"

    @property
    def path(self) -> str:
        """The path of the label list: ``"ground_truth.detections"``."""
        return f"{self.field}.{self.list_field}"

    @property
    def exists(self) -> bool:
        """Whether the field (still) holds objects."""
        return self.list_field is not None

    def __repr__(self):
        return f"Objects({self.dataset.name!r}, {self.field!r})"

    def __str__(self):
        return f"objects of '{self.field}' of dataset '{self.dataset.name}'"

    def objects_of(self, samples) -> tuple:
        """``(sample ids, filepaths, objects)`` of ``samples``: ``objects``
        holds, per sample, a list of ``(label id, box)``, the box in
        FiftyOne's relative ``[x, y, w, h]`` (None for a label whose box
        cannot be told: a polyline without points)."""
        if self.list_field is None:  # the field is gone
            ids, paths = samples.values(["id", "filepath"])
            return ids, paths, [[] for _ in ids]
        if self.list_field == "detections":
            ids, paths, label_ids, boxes = samples.values(
                ["id", "filepath", f"{self.path}.id",
                 f"{self.path}.bounding_box"])
        else:
            ids, paths, label_ids, points = samples.values(
                ["id", "filepath", f"{self.path}.id", f"{self.path}.points"])
            boxes = [[_points_box(p, self.list_field) for p in sample]
                     if sample else sample for sample in points]
        objects = [list(zip(labels or [], sample_boxes or []))
                   for labels, sample_boxes in zip(label_ids, boxes)]
        return ids, paths, objects

    def count(self, samples) -> int:
        """How many objects ``samples`` hold."""
        return 0 if self.list_field is None else samples.count(self.path)


class Frames(Target):
    """The sampled frames of the videos of a video dataset, or of the video
    slices of a grouped dataset: what a frame index indexes (see
    docs/design.md, "Video frames"). Which frames is the index's sampling
    rule (a :class:`~fiftyone_ai_search.embedding.frames.FrameSampling`,
    kept in its state); a frame's vector is keyed :func:`frame_key`.

    Args:
        dataset: a video :class:`fiftyone.core.dataset.Dataset`, or a
            grouped one with a video slice (or no slice yet): every video
            slice is indexed, whatever slice is active

    Raises:
        UnsupportedMediaError: for a dataset of no videos
    """

    def __init__(self, dataset):
        if not (media.has_videos(dataset) or (
                media.is_grouped(dataset) and not dataset.group_media_types)):
            if media.is_grouped(dataset):
                slices = ", ".join(
                    f"{k!r} ({v})"
                    for k, v in sorted(dataset.group_media_types.items()))
                what = f"a grouped dataset with no video slice ({slices})"
            else:
                kind = dataset.media_type or "empty"
                article = "an" if kind[0] in "aeiou" else "a"
                what = f"{article} {kind} dataset, not a video dataset"
            raise UnsupportedMediaError(
                f"frames: dataset '{dataset.name}' is {what}; frame search "
                "indexes the frames of video datasets and of grouped "
                "datasets' video slices")
        self.dataset = dataset

    def samples(self):
        """The videos whose frames it indexes (see
        :func:`fiftyone_ai_search.index.media.video_samples`)."""
        return media.video_samples(self.dataset)

    @property
    def _of(self) -> str:
        # how messages name the videos
        if media.is_grouped(self.dataset):
            return f"the video slices of grouped dataset '{self.name}'"
        return f"video dataset '{self.name}'"

    is_frames = True
    kind = "frames"
    keyed_by_sample = False
    count_key = "num_videos"

    @property
    def sync_args(self) -> list:
        return ["--frames"]

    def status_fields(self, doc) -> dict:
        # its sampling rule (None when off: the same keys either way)
        return {"sampling": None if doc is None else doc.sampling}

    @property
    def key(self) -> str:
        return super().key + KEY_SEPARATOR + FRAMES

    @property
    def call_args(self) -> str:
        return "dataset, frames=True"

    @property
    def what(self) -> str:
        return f"Frame search of {self._of}"

    @property
    def id_name(self) -> str:
        return "frame_key"

    @property
    def not_embedded(self) -> str:
        return "not a sampled frame of a video, or not embedded yet"

    def count(self, samples) -> int:
        """How many videos ``samples`` hold (the frames an index holds of
        them is known from its videos' summaries only)."""
        return samples.count()

    def __repr__(self):
        return f"Frames({self.dataset.name!r})"

    def __str__(self):
        return f"frames of {self._of}"


def frame_key(sample_id: str, frame_number: int) -> str:
    """The key of a frame's vector: its video's sample id (24 hex digits)
    followed by its frame number (1-based) in 8 hex digits. Reversible
    (:func:`split_frame_key`), never a sample id, and ordered by (video,
    frame number)."""
    if not 0 < frame_number < 1 << 32:
        raise ValueError(f"frame_number must be in 1..2**32-1, got "
                         f"{frame_number!r}")
    return f"{sample_id}{int(frame_number):08x}"


def split_frame_key(key: str) -> tuple:
    """``(sample id, frame number)`` of a :func:`frame_key`."""
    return frame_video(key), int(key[24:], 16)


def frame_video(key: str) -> str:
    """The sample id of the video of a :func:`frame_key`."""
    return key[:24]


def best_of_each_video(rows) -> list:
    """The best of each video's rows (``(frame key, score, ...)``), best
    first: what a search or a collection of frames gives with
    ``best_per_video``. Rows of equal score keep their order."""
    best = {}
    for row in sorted(rows, key=lambda r: -r[1]):
        best.setdefault(frame_video(row[0]), row)
    return list(best.values())


def _list_field(dataset, field):
    schema = dataset.get_field_schema(flat=True)
    if field not in schema:
        raise ObjectFieldError(
            f"patches_field: dataset '{dataset.name}' has no field "
            f"'{field}'")
    types = _object_types()
    kind = getattr(schema[field], "document_type", None)
    if kind not in types:
        names = ", ".join(t.__name__ for t in types)
        raise ObjectFieldError(
            f"patches_field: field '{field}' of dataset '{dataset.name}' "
            f"holds {getattr(kind, '__name__', type(schema[field]).__name__)}"
            f", not objects with boxes ({names})")
    return types[kind]


def _points_box(points, kind):
    """The box ``[x, y, w, h]`` around a polyline's shapes (lists of
    points) or a keypoint's points; None without a finite point."""
    if not points:
        return None
    flat = [p for shape in points for p in shape] if kind == "polylines" \
        else points
    xs = [p[0] for p in flat if p and _finite(p)]
    ys = [p[1] for p in flat if p and _finite(p)]
    if not xs:
        return None
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def _finite(point):
    return all(isinstance(v, (int, float)) and math.isfinite(v)
               for v in point[:2])


def of(target) -> Target:
    """The :class:`Target` that ``target`` names: itself, or the images
    of a dataset (a dataset stands for its images wherever a target is
    asked for: the public API and the state take datasets)."""
    return target if isinstance(target, Target) else Images(target)


def split_key(key: str) -> tuple:
    """``(dataset id, field or None)`` of a target's key."""
    dataset_id, _, field = key.partition(KEY_SEPARATOR)
    return dataset_id, field or None


def dataset_of(target):
    """The dataset of a target."""
    return of(target).dataset


def field_of(target) -> "str | None":
    """The label field of an object target, None for a dataset."""
    return of(target).field


def target_of(dataset, patches_field: "str | None" = None,
              frames: bool = False):
    """The target of ``dataset``'s images, or of the objects of
    ``patches_field``: a field deleted since an index of it was made is
    taken too (its index empties on the next sync; :class:`Objects` itself
    refuses a field that holds no objects); or, with ``frames``, of the
    frames of its videos.

    Args:
        dataset: the dataset
        patches_field (None): a label field
        frames (False): the frames of a video dataset
    """
    if frames:
        if patches_field is not None:
            raise ValueError("frames, patches_field: frame search and object "
                             "search are separate indexes; pass one")
        return Frames(dataset)
    if patches_field is None:
        return dataset
    return Objects.of_state(dataset, patches_field)


def of_key(dataset, key: str):
    """The target of ``dataset`` that a state's ``key`` names: its
    images, the objects of a field, or the frames of a video dataset."""
    field = split_key(key)[1]
    if field is None:
        return dataset
    if field == FRAMES and (media.has_videos(dataset)
                            or media.is_grouped(dataset)):
        return Frames(dataset)
    return Objects.of_state(dataset, field)
