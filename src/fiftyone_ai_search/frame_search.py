"""Public SDK: searching the frame index of a video dataset (see
docs/design.md, "Video frames"): by prompt, by an example frame of the
dataset or an outside image, over every frame or the best frame per
video; the hits open as FiftyOne's frames view of the same sampling grid.

A first cut of frame search: hits come back as a list (no results
collection, histogram or diverse sampling yet; those, the Brain's
``to_frames`` path and the App come next).

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from . import validate
from .index import indexes
from .index import media
from .index import targets
from .index.targets import frame_key, split_frame_key
from .query.vectors import image_vector, prompt_vectors
from .search import check_index_model
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


def search_frames(samples: foc.SampleCollection, prompt: str | None = None,
                  image: str | os.PathLike | PIL.Image.Image | None = None,
                  frame: tuple | None = None, limit: int = 100,
                  threshold: float | None = None,
                  best_per_video: bool = False) -> list[dict]:
    """Searches the frames of the videos of ``samples`` (a video dataset
    whose frame index is on, or a view of its videos).

    Exactly one query: ``prompt`` (natural language; commas split it into
    prompts, a frame's score is its best over them), ``image`` (an outside
    image: a file path or a PIL image) or ``frame`` (``(video sample id,
    frame number)`` of an indexed frame).

    Examples::

        ais.enable_embeddings(videos, frames=True)
        ais.calculate_embeddings(videos, frames=True, wait=True)
        hits = ais.search_frames(videos, prompt="a red circle", limit=20)
        hits[0]  # {"sample_id": ..., "frame_number": 31, "timestamp": 3.0,
                 #  "score": 0.31}
        view = ais.frames_view(videos, hits)  # FiftyOne's frames view

    Args:
        samples: a video dataset, or a view of its videos
        prompt (None): what to look for
        image (None): an outside image to find frames like
        frame (None): ``(sample_id, frame_number)`` of an indexed frame to
            find frames like
        limit (100): the most hits (videos, with ``best_per_video``)
        threshold (None): only hits scoring at least this (cosine)
        best_per_video (False): one hit per video, its best frame

    Returns:
        a list of dicts ``sample_id`` (the video), ``frame_number``,
        ``timestamp`` (seconds) and ``score``, best first

    Raises:
        AISearchNotEnabledError: if the dataset's frame index is off
        IndexNotReadyError: before its first index is complete
    """
    limit = validate.integer(limit, "limit", 1, validate.MAX_LIMIT)
    best_per_video = validate.boolean(best_per_video, "best_per_video")
    threshold = validate.optional_number(threshold, "threshold", -1.0, 1.0)
    # every argument is checked before the dataset is looked at
    prompts = None if prompt is None else _prompts(prompt)
    key = None if frame is None else _frame_key(frame)
    given = [q for q in (prompt, image, frame) if q is not None]
    if len(given) != 1:
        raise ValueError("prompt, image, frame: give exactly one of them")
    dataset = media.source_dataset(samples, "samples")
    target = targets.Frames(dataset)
    doc = indexes.require_index(target)
    videos = None if samples is dataset else samples.values("id")

    def run(doc, store):
        try:
            ref = doc.index
            if key is not None:
                queries = _frame_vector(store, key)
                check_index_model(store, ref)
            else:
                model = indexes.load_index_model(ref)
                check_index_model(store, ref, model)
                queries = (prompt_vectors(model, prompts) if prompts
                           else image_vector(model, _image(image)))
            scope = None
            if videos is not None:
                scope = store.keys_where(SOURCE_KEY, videos)
                if not scope:
                    return []
            return _hits(store, queries, limit, threshold, scope,
                         best_per_video)
        finally:
            store.close()

    return indexes.read_index(target, doc, run)


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
    dataset = media.source_dataset(samples, "samples")
    doc = indexes.require_index(targets.Frames(dataset))
    rule = sampling_of(doc.index)
    videos = list(dict.fromkeys(h["sample_id"] for h in hits))
    frames = dataset.select(videos).to_frames(sample_frames="dynamic",
                                              fps=rule.fps)
    ids, video_ids, numbers = frames.values(["id", "sample_id",
                                             "frame_number"])
    where = {(v, n): i for i, v, n in zip(ids, video_ids, numbers)}
    ordered = {}  # (a scene hit and a grid hit may show the same frame)
    for hit in hits:
        found = _nearest_grid_frame(where, hit["sample_id"],
                                    hit["frame_number"])
        if found is not None:
            ordered.setdefault(where[found], None)
    return frames.select(list(ordered), ordered=True)


def _nearest_grid_frame(where, video, number):
    """The ``(video, frame number)`` of the frames view nearest to a hit's
    frame (itself, for a frame on the grid)."""
    if (video, number) in where:
        return video, number
    near = [n for v, n in where if v == video]
    if not near:
        return None
    return video, min(near, key=lambda n: abs(n - number))


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


def _hits(store, queries, limit, threshold, scope, best_per_video):
    """The nearest frames of the queries (a frame's score: its best over
    them), best first; one per video with ``best_per_video``."""
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
            best = {}
            for key, score in ranked:
                best.setdefault(key[:24], (key, score))
            ranked = list(best.values())
        if (len(ranked) >= limit or not best_per_video
                or fetch >= total):
            break
        fetch *= 4  # a few videos hold the nearest frames: look further
    ranked = ranked[:limit]
    payloads = store.get_payloads([k for k, _ in ranked])
    hits = []
    for key, score in ranked:
        video, number = split_frame_key(key)
        payload = payloads.get(key, {})
        hits.append({"sample_id": video,
                     "frame_number": payload.get(FRAME_NUMBER_KEY, number),
                     "timestamp": payload.get(TIMESTAMP_KEY),
                     "score": float(score)})
    return hits
