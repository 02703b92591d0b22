"""Public SDK: searching the frame index of a video dataset (see
docs/design.md, "Video frames"): by prompt, by an example frame of the
dataset or an outside image, or diverse sampling, over every frame or the
best frame per video; the hits come back as a list
(:func:`search_frames`) or are kept as the dataset's latest results, a
collection that opens as FiftyOne's frames view of the same sampling grid
(:func:`perform_frame_search`, then the collection functions of
:mod:`fiftyone_ai_search.results`).

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from . import frame_views
from . import results as colls
from . import validate
from .index import indexes
from .index import media
from .index import targets
from .index.targets import best_of_each_video, frame_key, split_frame_key
from .query import diverse
from .query.vectors import image_vector, prompt_vectors
from .query.walk import diverse_from_index
from .search import check_index_model, image_query
from .sync.frames import FRAME_NUMBER_KEY, TIMESTAMP_KEY, sampling_of
from .sync.objects import SOURCE_KEY

if TYPE_CHECKING:  # for annotations only
    import fiftyone.core.collections as foc
    import fiftyone.core.view as fov
    import PIL.Image

#: hits fetched per video asked for, when the best frame per video is asked
#: (a video may hold many of the nearest frames); more are fetched until
#: ``limit`` videos are found or the index runs out
_PER_VIDEO_OVERFETCH = 8

#: the payload flag of a scene-change frame (sampled off the grid)
_SCENE_KEY = "scene"


def search_frames(samples: foc.SampleCollection, prompt: str | None = None,
                  image: str | os.PathLike | PIL.Image.Image | None = None,
                  frame: tuple | None = None, limit: int = 100,
                  threshold: float | None = None,
                  best_per_video: bool = False, method: str | None = None,
                  clustering_method: str | None = None,
                  num_clusters: int | None = None,
                  seed: int = 0) -> list[dict]:
    """Searches the frames of the videos of ``samples`` (a video dataset
    whose frame index is on, a view of its videos, or a frames view of it)
    and returns the hits; nothing is kept (:func:`perform_frame_search`
    keeps them as a collection).

    Exactly one query: ``prompt`` (natural language; commas split it into
    prompts, a frame's score is its best over them), ``image`` (an outside
    image: a file path or a PIL image), ``frame`` (``(video sample id,
    frame number)`` of an indexed frame), or ``method``: diverse sampling,
    ``"centroids"`` or ``"random"`` over ``clustering_method``
    ``"kmeans"`` (default, with ``num_clusters``) or ``"dbscan"``, as for
    images (:func:`fiftyone_ai_search.perform_ai_search`): frames in pick
    order, round-robin over the clusters, each scored by its similarity to
    its cluster's centre.

    Examples::

        ais.enable_embeddings(videos, frames=True)
        ais.calculate_embeddings(videos, frames=True, wait=True)
        hits = ais.search_frames(videos, prompt="a red circle", limit=20)
        hits[0]  # {"sample_id": ..., "frame_number": 31, "timestamp": 3.0,
                 #  "score": 0.31, "scene": False}
        view = ais.frames_view(videos, hits)  # FiftyOne's frames view
        spread = ais.search_frames(videos, method="centroids", limit=12)

    Args:
        samples: a video dataset, a view of its videos, or a frames view
            of it (its frames alone are searched)
        prompt (None): what to look for
        image (None): an outside image to find frames like
        frame (None): ``(sample_id, frame_number)`` of an indexed frame to
            find frames like
        limit (100): the most hits (videos, with ``best_per_video``)
        threshold (None): only hits scoring at least this (cosine)
        best_per_video (False): one hit per video, its best frame (not for
            diverse sampling)
        method (None): ``"centroids"`` or ``"random"`` (diverse sampling)
        clustering_method (None): ``"kmeans"`` or ``"dbscan"`` (diverse)
        num_clusters (None): the k-means cluster count (diverse, kmeans)
        seed (0): the random seed of diverse sampling

    Returns:
        a list of dicts ``sample_id`` (the video), ``frame_number``,
        ``timestamp`` (seconds), ``score`` and ``scene`` (a scene-change
        frame, off the sampling grid), best first (in pick order for
        diverse sampling)

    Raises:
        ValueError: for invalid arguments; the message names the argument
        AISearchNotEnabledError: if the dataset's frame index is off
        IndexNotReadyError: before its first index is complete
    """
    return _search(samples, prompt, image, frame, limit, threshold,
                   best_per_video, method, clustering_method, num_clusters,
                   seed)[0]


def perform_frame_search(
    samples: foc.SampleCollection, prompt: str | None = None,
    image: str | os.PathLike | PIL.Image.Image | None = None,
    frame: tuple | None = None, limit: int = 100,
    threshold: float | None = None, best_per_video: bool = False,
    method: str | None = None, clustering_method: str | None = None,
    num_clusters: int | None = None, seed: int = 0,
) -> str | None:
    """Searches the frames of the videos of ``samples`` as
    :func:`search_frames` does, and keeps the hits as the video dataset's
    latest results, the temporary collection
    (:data:`fiftyone_ai_search.TEMPORARY_COLLECTION`), as
    :func:`fiftyone_ai_search.perform_ai_search` keeps those of images.

    The collection functions take the video dataset and the name:
    :func:`~fiftyone_ai_search.get_collection` opens it as a frames view
    (``to_frames(sample_frames="dynamic", fps=...)`` of the hit videos at
    the index's rate, the hits best first; it needs the videos' metadata,
    ``dataset.compute_metadata()``), with ``min_score`` / ``max_score``;
    :func:`~fiftyone_ai_search.get_score_histogram`,
    :func:`~fiftyone_ai_search.save_collection`,
    :func:`~fiftyone_ai_search.rename_collection`,
    :func:`~fiftyone_ai_search.delete_collection` and
    :func:`~fiftyone_ai_search.list_collections` as for images;
    :func:`get_frame_hits` gives its hits (and the best frame per video)
    without building a view. The frames are kept by ``(video, frame
    number)``, never by a frames view's ids, which FiftyOne generates anew.

    Examples::

        name = ais.perform_frame_search(videos, prompt="a red circle")
        frames = ais.get_collection(videos, name, min_score=0.25)
        ais.save_collection(videos, "red circles")
        ais.perform_frame_search(videos, method="centroids", limit=20)

    Args:
        samples, prompt, image, frame, limit, threshold, best_per_video,
        method, clustering_method, num_clusters, seed: see
            :func:`search_frames`

    Returns:
        the name of the collection, or None when nothing matched (the
        previous results are then left as they were)

    Raises:
        ValueError: for invalid arguments; the message names the argument
        AISearchNotEnabledError: if the dataset's frame index is off
        IndexNotReadyError: before its first index is complete
    """
    hits, dataset, doc, request = _search(
        samples, prompt, image, frame, limit, threshold, best_per_video,
        method, clustering_method, num_clusters, seed)
    if not hits:
        return None
    fps = sampling_of(doc.index).fps
    frames = [(h["sample_id"], h["frame_number"]) for h in hits]
    shown = _shown(dataset, fps, frames, [h.get("scene") for h in hits])
    described = dict(request.describe(), model=doc.index.model_label)
    return colls.write_collection(
        dataset, colls.TEMPORARY_COLLECTION,
        [frame_key(v, n) for v, n in frames], [h["score"] for h in hits],
        query=described,
        frames={"fps": fps, "timestamps": [h["timestamp"] for h in hits],
                "shown": [n for _, n in shown]})


def frames_view(samples: foc.SampleCollection,
                hits: list[dict]) -> fov.DatasetView:
    """The frames of ``hits`` (:func:`search_frames`'s) as a FiftyOne
    frames view, best first: ``to_frames(sample_frames="dynamic",
    fps=...)`` of the hit videos at the index's sampling rate, FiftyOne's
    own frames of the same grid, shown from the videos themselves (no
    frame image is written). A scene-change hit (off the grid) shows as
    its video's nearest grid frame.

    The videos need their metadata (``dataset.compute_metadata()``, which
    uses ``ffprobe``): FiftyOne's frames views count frames with it.

    Args:
        samples: the video dataset searched, or a view of its videos
        hits: a list of :func:`search_frames`'s hits

    Returns:
        a :class:`fiftyone.core.view.DatasetView` of frames
    """
    dataset = _video_dataset(samples)
    doc = indexes.require_index(targets.Frames(dataset))
    fps = sampling_of(doc.index).fps
    frames = [(h["sample_id"], h["frame_number"]) for h in hits]
    # a hit of another source may not say whether it is off the grid
    shown = _shown(dataset, fps, frames, [h.get("scene", True) for h in hits])
    return frame_views.frames_of(dataset, shown, fps)


def _shown(dataset, fps, frames, scenes):
    """The frame of the frames view that shows each of ``frames``: itself,
    or for a scene-change frame (``scenes``), its video's nearest grid
    frame at ``fps`` (counted with the videos' ``metadata.frame_rate`` and
    ending at their ``total_frame_count``, as FiftyOne's frames views
    count)."""
    moved = [i for i, scene in enumerate(scenes) if scene]
    if not moved:
        return list(frames)
    videos = list(dict.fromkeys(frames[i][0] for i in moved))
    ids, rates, counts = media.video_samples(dataset).select(videos).values(
        ["id", "metadata.frame_rate", "metadata.total_frame_count"])
    near = frame_views.nearest_on_grid(
        dict(zip(ids, rates)), fps, [frames[i] for i in moved],
        dict(zip(ids, counts)))
    shown = list(frames)
    for i, pair in zip(moved, near):
        shown[i] = pair
    return shown


def _search(samples, *args):
    """Validates a frame search (the arguments of :func:`search_frames`
    after ``samples``, in its order) and runs it: ``(hits, the video
    dataset, its state, the request)``."""
    request = _Request.validate(*args)
    return (*_run(samples, request), request)


class _Request:
    """A validated frame search: validation touches nothing, and every
    argument is checked before the dataset is looked at."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    @classmethod
    def validate(cls, prompt, image, frame, limit, threshold, best_per_video,
                 method, clustering_method, num_clusters, seed):
        limit = validate.integer(limit, "limit", 1, validate.MAX_LIMIT)
        best_per_video = validate.boolean(best_per_video, "best_per_video")
        threshold = validate.optional_number(threshold, "threshold", -1.0,
                                             1.0)
        prompts = None if prompt is None else _prompts(prompt)
        key = None if frame is None else _frame_key(frame)
        if image is not None:
            image = validate.image(image)
        if method is not None:
            validate.choice(method, "method", diverse.METHODS)
        given = [q for q in (prompt, image, frame, method) if q is not None]
        if len(given) != 1:
            raise ValueError("prompt, image, frame, method: give exactly one "
                             "of them (method: diverse sampling)")
        if method is not None:
            if best_per_video:
                raise ValueError("best_per_video applies to prompt, image "
                                 "and frame search, not to diverse sampling")
        if clustering_method is not None:
            if method is None:
                raise ValueError("clustering_method applies to diverse "
                                 "sampling only (method=...)")
            validate.choice(clustering_method, "clustering_method",
                            diverse.CLUSTERING_METHODS)
        if num_clusters is not None:
            if method is None or (clustering_method or "kmeans") != "kmeans":
                raise ValueError("num_clusters applies to diverse sampling "
                                 "with clustering_method='kmeans' only")
            num_clusters = validate.integer(num_clusters, "num_clusters", 1,
                                            validate.MAX_LIMIT)
        return cls(prompts=prompts, image=image, key=key, limit=limit,
                   threshold=threshold, best_per_video=best_per_video,
                   method=method,
                   clustering_method=clustering_method or "kmeans",
                   num_clusters=num_clusters, seed=validate.seed(seed))

    def describe(self):
        """What produced a collection (kept with it, shown in the App)."""
        d = {"frames": True, "limit": self.limit,
             "threshold": self.threshold,
             "best_per_video": self.best_per_video}
        if self.method is not None:
            d.update(mode="diverse", method=self.method,
                     clustering_method=self.clustering_method,
                     num_clusters=self.num_clusters, seed=self.seed)
        elif self.prompts is not None:
            d.update(mode="prompt", prompt=", ".join(self.prompts))
        elif self.key is not None:
            video, number = split_frame_key(self.key)
            d.update(mode="frame", frame=[video, number])
        else:
            d.update(mode="image", **image_query(self.image))
        return d


def _video_dataset(samples):
    """The video dataset of ``samples`` (a frames view's too)."""
    if getattr(samples, "_is_frames", False) and not getattr(
            samples, "_is_clips", False):
        return samples._root_dataset
    return media.source_dataset(samples, "samples")


def _run(samples, request):
    """Runs ``request`` within ``samples``; returns ``(hits, dataset,
    state doc)``."""
    dataset = _video_dataset(samples)
    target = targets.Frames(dataset)
    doc = indexes.require_index(target)
    frames = videos = None
    if getattr(samples, "_is_frames", False):
        frames = [frame_key(v, n) for v, n in zip(
            *samples.values(["sample_id", "frame_number"]))]
    elif samples is not dataset:
        # (a view of a grouped dataset: the videos of its video slices)
        videos = (samples.select_group_slices(media_type="video")
                  if media.is_grouped(samples) else samples).values("id")

    def run(doc, store):
        try:
            ref = doc.index
            scope = frames
            if videos is not None:
                scope = store.keys_where(SOURCE_KEY, videos)
            if scope is not None and not scope:
                return [], dataset, doc
            if request.method is not None:
                check_index_model(store, ref)
                ranked = _diverse(store, request, scope)
            else:
                if request.key is not None:
                    queries = _frame_vector(store, request.key)
                    check_index_model(store, ref)
                else:
                    model = indexes.load_index_model(ref)
                    check_index_model(store, ref, model)
                    queries = (prompt_vectors(model, request.prompts)
                               if request.prompts
                               else image_vector(model, _image(
                                   request.image)))
                ranked = _ranked(store, queries, request.limit,
                                 request.threshold, scope,
                                 request.best_per_video)
            return _hits(store, ranked), dataset, doc
        finally:
            store.close()

    return indexes.read_index(target, doc, run)


def _diverse(store, request, scope):
    """Diverse sampling of the frames of ``scope`` (None: all): ``(key,
    score)`` in pick order."""
    keys, scores = diverse_from_index(
        store, request.limit, scope=scope, method=request.method,
        clustering_method=request.clustering_method,
        num_clusters=request.num_clusters, seed=request.seed)
    return [(k, s) for k, s in zip(keys, scores)
            if request.threshold is None or s >= request.threshold]


def _prompts(prompt):
    """The prompts of ``prompt`` (commas split it)."""
    parts = ([p.strip() for p in prompt.split(",") if p.strip()]
             if isinstance(prompt, str) else [])
    if not parts:
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    return parts


def _image(image):
    return os.fspath(image) if isinstance(image, os.PathLike) else image


def _frame_key(frame):
    """The key of ``frame``, ``(video sample id, frame number)``."""
    try:
        video, number = frame
        number = validate.integer(number, "frame", 1, 2**32 - 1)
        video = str(video)
        if len(video) != 24 or any(c not in "0123456789abcdef"
                                   for c in video.lower()):
            raise ValueError
        return frame_key(video, number)
    except (TypeError, ValueError):
        raise ValueError(f"frame must be (video sample id, frame number), "
                         f"got {frame!r}") from None


def _frame_vector(store, key):
    _, vectors = store.get_vectors([key])
    if len(vectors) == 0:
        video, number = split_frame_key(key)
        raise ValueError(f"frame: frame {number} of video {video} is not in "
                         "the frame index (not on its sampling grid, or "
                         "not embedded yet)")
    return np.asarray(vectors[:1], dtype=np.float32)


def _ranked(store, queries, limit, threshold, scope, best_per_video):
    """The nearest frames of the queries (a frame's score: its best over
    them) as ``(key, score)``, best first; one per video with
    ``best_per_video``."""
    fetch = limit * (_PER_VIDEO_OVERFETCH if best_per_video else 1)
    total = store.count()
    while True:
        scores = {}
        for vector in queries:
            for key, score in store.query(vector, fetch, sample_ids=scope,
                                          min_score=threshold):
                scores[key] = max(score, scores.get(key, -2.0))
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])
        if best_per_video:
            ranked = best_of_each_video(ranked)
        if (len(ranked) >= limit or not best_per_video
                or fetch >= total):
            break
        fetch *= 4  # a few videos hold the nearest frames: look further
    return ranked[:limit]


def _hits(store, ranked):
    """The hits of ``ranked`` (``(key, score)``), their time and whether
    they are scene-change frames read from their payloads."""
    payloads = store.get_payloads([k for k, _ in ranked])
    hits = []
    for key, score in ranked:
        video, number = split_frame_key(key)
        payload = payloads.get(key, {})
        hits.append({"sample_id": video,
                     "frame_number": payload.get(FRAME_NUMBER_KEY, number),
                     "timestamp": payload.get(TIMESTAMP_KEY),
                     "score": float(score),
                     "scene": bool(payload.get(_SCENE_KEY, False))})
    return hits
