"""The frame index of a video dataset as a FiftyOne Brain similarity index:
``to_frames(...).sort_by_similarity(query, brain_key=...)`` searches it
(issue 24, point 5; see docs/design.md, "Video frames").

A frames run is a door to the dataset's frame index (the one
:func:`fiftyone_ai_search.search_frames` searches), never a copy of it:
it lives on the video dataset, as FiftyOne keeps every run of a frames
view, and its view is a frames view. FiftyOne gives the frames of a frames
view new ids each time the view is built (every frame that has no frame
document in the video dataset: all of them, for unlabelled videos), so
nothing here stores a frame id: each query maps the current frames view's
ids to the index's keys, ``(video sample id, frame number)``
(:func:`fiftyone_ai_search.index.targets.frame_key`), and the hits back to
the ids of that view, which the Brain selects.

Two ways in:

- ``enable_embeddings(video_dataset, frames=True, brain_key="frames")``
  registers a run whose view is ``to_frames(sample_frames="dynamic",
  fps=<the index's rate>)``, FiftyOne's frames of the index's own grid;
- ``fob.compute_similarity(frames_view, backend="ai_search", ...)`` with
  an open_clip model switches the frame index on with that model (at the
  view's ``fps``, else 1 frame per second) and builds it, or uses the
  frame index the dataset has.

What a frames view holds that the index does not (frames off its sampling
grid, videos not embedded yet) is left out of the run's view, as the Brain
leaves out samples without embeddings. Not supported, with a message that
says so: video datasets and views of videos, clips views, and runs of
vectors of other models (``embeddings=`` of another model,
``add_to_index``). A grouped dataset's frame index (of every video slice)
is a run alike, of frames views of its video slices
(``grouped.select_group_slices(media_type="video").to_frames(...)``, or
of one slice).

Examples::

    ais.enable_embeddings(videos, frames=True, brain_key="frames")
    ais.calculate_embeddings(videos, frames=True, wait=True)

    frames = videos.to_frames(sample_frames="dynamic", fps=1)
    view = frames.sort_by_similarity("a red circle", k=10,
                                      brain_key="frames")
    view = frames.sort_by_similarity(view.first().id, k=10,
                                      brain_key="frames")

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

import sys

import numpy as np
from bson import ObjectId

import fiftyone.core.collections as foc
from fiftyone.brain.similarity import DuplicatesMixin, SimilarityIndex

from . import brain_index
from . import lifecycle
from .embedding.frames import FrameSampling
from .embedding.model import resolve_model
from .errors import UnsupportedMediaError
from .index import indexes
from .index import media
from .index import state as st
from .index import targets
from .query.vectors import normalize

#: what searches frames outside the Brain (every refusal names it)
FRAME_SEARCH = (
    "fiftyone_ai_search.search_frames(video_dataset, prompt=...) searches "
    "the frames themselves and fiftyone_ai_search.frames_view("
    "video_dataset, hits) opens the hits as a frames view")


def grid_view(dataset, rule):
    """FiftyOne's frames view of the frames a rule samples: every video's
    frames on the rule's grid (``to_frames(sample_frames="dynamic",
    fps=rule.fps)``), shown from the videos themselves (of every video
    slice of a grouped dataset)."""
    return media.video_samples(dataset).to_frames(sample_frames="dynamic",
                                                  fps=rule.fps)


def view_sampling(frames_view):
    """The sampling rule a frames view asks for: its ``to_frames`` stage's
    ``fps`` (or ``max_fps``), else the default (1 frame per second)."""
    config = {}
    for stage in frames_view._all_stages:
        if type(stage).__name__ == "ToFrames":
            config = stage.config or {}
            break
    fps = config.get("fps") or config.get("max_fps")
    return FrameSampling(fps=float(fps)) if fps else FrameSampling()


#: the Brain's function that starts a run (it calls the backend's
#: ``initialize``), and the module that defines it
_COMPUTE = ("compute_similarity", "fiftyone.brain.similarity")


def given_samples(samples):
    """The collection ``fob.compute_similarity`` was given, for the run its
    backend initializes on ``samples``; ``samples`` itself when it is not
    found.

    The Brain hands the backend the root dataset of any collection but a
    frames view: a view of a grouped dataset's video slice
    (``grouped.select_group_slices("front")``) or its clips reach
    ``initialize`` as the grouped dataset, whose run is of images, and the
    Brain then embeds the videos' frames for it, to fail on the first
    vectors with the run registered. The collection itself is read from
    the Brain's call (its ``samples``), so that such a run is refused
    before anything is embedded or switched on."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if (code.co_name, frame.f_globals.get("__name__")) == _COMPUTE:
            given = frame.f_locals.get("samples")
            if isinstance(given, foc.SampleCollection) and (
                    given._root_dataset.name == samples._root_dataset.name):
                return given
            break
        frame = frame.f_back
    return samples


def is_of_videos(samples):
    """Whether ``samples`` are videos or clips (of a video dataset, or of a
    grouped dataset's video slices, or a grouped collection whose active
    slice, which it iterates, is of videos): what a run refuses (a frames
    view of them is what it takes)."""
    if samples._is_clips:
        return True
    if samples._is_frames:
        return False
    if media.is_grouped(samples):
        slices = samples.group_media_types or {}
        return slices.get(samples.group_slice) == "video"
    return samples.media_type == "video"


def _slices_selected(samples):
    """The group slices a view of a grouped dataset selects by name
    (``select_group_slices("front")``), else None."""
    # (_all_stages: a clips view's own stages follow its source's)
    for stage in getattr(samples, "_all_stages", None) or []:
        if type(stage).__name__ == "SelectGroupSlices" and stage.slices:
            return stage.slices
    return None


def refuse_videos(samples):
    """Why a run of the ``ai_search`` backend refuses a video dataset, a
    view of its videos or a clips view (of a grouped dataset's video
    slices too): its frames are searched through a frames view."""
    root = samples._root_dataset
    name = root.name
    grouped = media.is_grouped(root)
    # (a grouped dataset's videos: the frames view of its video slices, or
    # of the slices the view selected)
    target = "grouped_dataset" if grouped else "video_dataset"
    slices = _slices_selected(samples) if grouped else None
    videos = (f"{target}.select_group_slices({slices!r})" if slices
              else f"{target}.select_group_slices(media_type='video')"
              if grouped else target)
    of = (f"the video slices of the grouped dataset '{name}'" if grouped
          else f"the video dataset '{name}'")
    if samples._is_clips:
        what = f"samples is a clips view of {of}"
    elif grouped:
        what = f"samples are videos of {of}"
    else:
        what = f"Dataset '{name}' is a video dataset"
    return UnsupportedMediaError(
        f"{what}: the ai_search Brain backend searches the frames of a "
        "video dataset through a frames view, not its videos or clips. "
        "Run it on a frames "
        f"view: fob.compute_similarity({videos}.to_frames("
        "sample_frames='dynamic', fps=1), backend='ai_search', ...), or "
        "register the frame index as a run with fiftyone_ai_search."
        f"enable_embeddings({target}, frames=True, brain_key=...); "
        f"{FRAME_SEARCH}")


def initialize(method, samples, brain_key):
    """``fob.compute_similarity(frames_view, backend="ai_search")``: the
    run of the dataset's frame index, switched on with the run's model
    and built when it is off. The Brain registered the run already: on
    failure it is deleted again."""
    config = method.config
    try:
        dataset = _video_dataset(samples)
        if config.plain or not config.names_a_model:
            raise ValueError(
                "embeddings: a frames run of the ai_search backend is the "
                "frame index, embedded by AI search with an open_clip "
                "model; these vectors are of no model it runs (vectors of "
                "other models: use another backend, e.g. 'sklearn', on "
                "frames written to disk). Pass clip_model= (or model="
                "'open-clip-torch' with model_kwargs)")
        spec = (config.clip_model, config.pretrained)
        if spec[0] is None:
            spec = config._model_spec
        switch_on(dataset, *spec, view_sampling(samples),
                  config.index_backend)
        config.frames = True
        config.supports_prompts = True
        if brain_key is not None:
            method.update_run_config(samples, brain_key, config)
    except Exception:
        if brain_key is not None:
            method.delete_run(samples, brain_key, cleanup=False)
        raise
    return FramesSimilarityIndex(samples, config, brain_key, backend=method)


def switch_on(dataset, model, pretrained, rule, backend=None):
    """Makes sure the frame index of ``dataset`` is on with this model and
    built (a run never mixes models): switched on at ``rule`` and built
    when it is off; an index that is on keeps its own rule."""
    target = targets.Frames(dataset)
    doc = st.load(target)
    if doc and doc.enabled:
        wanted = resolve_model(model, pretrained).identity
        if wanted != doc.model_identity:
            raise ValueError(
                f"model: the frame index of video dataset '{dataset.name}' "
                f"embeds with {doc.model}/{doc.pretrained}; a run with "
                f"model {model}/{pretrained} would mix two models in one "
                "index. Use the index's model, or change it with "
                "fiftyone_ai_search.enable_embeddings(video_dataset, "
                "frames=True, model=...)")
    else:
        lifecycle.enable(dataset, model=model, pretrained=pretrained,
                         backend=backend, compute=False, frames=rule)
    if not st.load(target).index:
        lifecycle.calculate_embeddings(dataset, wait=True, frames=True,
                                       progress=False)


def _video_dataset(samples):
    """The video dataset of a frames view (a run's view), refusing other
    collections."""
    if not isinstance(samples, foc.SampleCollection):
        got = "None" if samples is None else type(samples).__name__
        raise ValueError(
            f"samples must be a frames view of a video dataset, got {got}")
    if samples._is_clips or not samples._is_frames:
        raise refuse_videos(samples)
    dataset = samples._root_dataset
    targets.Frames(dataset)  # (refuses a dataset of no videos)
    return dataset


class FramesSimilarityIndex(brain_index.AISearchSimilarityIndex):
    """A Brain run over the frame index of a video dataset: its view is a
    frames view of that dataset (see the module's doc).

    The run holds the whole index and follows it as it syncs; its current
    view's frames are mapped to the index at each query, by ``(video,
    frame number)``. Queries: prompts, frame ids (of the current view, of
    the run's view, or of the dataset's frame documents), vectors.

    Args:
        samples: a frames view of a video dataset
        config: an :class:`~fiftyone_ai_search.brain.AISearchSimilarityConfig`
            with ``frames`` set
        brain_key: the brain key
        backend (None): an :class:`~fiftyone_ai_search.brain.AISearchSimilarity`
    """

    def __init__(self, samples, config, brain_key, backend=None):
        self._dataset = _video_dataset(samples)
        self._target = targets.Frames(self._dataset)
        self._objects = False
        self._members = None
        self._lengths = {}
        self._held_cache = None
        #: ``{frame id: frame key}`` and back, of the current view's
        #: indexed frames (mapped again by each use_view and reload)
        self._key_of, self._id_of = {}, {}
        #: ``{frame id: frame key}`` of every view mapped so far: an id
        #: is never given to another frame, so what was learned stays true
        #: (queries by the ids of an earlier view)
        self._known = {}
        SimilarityIndex.__init__(self, samples, config, brain_key,
                                 backend=backend)
        DuplicatesMixin.__init__(self)

    @property
    def is_external(self):
        # the vectors are the frame index's, which its sync fills: with
        # False, compute_similarity does not embed the frames once more
        # (and add them) when the index holds some
        return False

    def attributes(self):
        return ["cls"]

    @classmethod
    def _from_dict(cls, d, samples, config, brain_key):
        return cls(samples, config, brain_key)

    # -- the view and its frames ----------------------------------------------

    def use_view(self, samples, allow_missing=True, warn_missing=False):
        """Restricts the run to a frames view of its video dataset (any
        view of one: matched, sorted, of some videos)."""
        if not isinstance(samples, foc.SampleCollection):
            got = "None" if samples is None else type(samples).__name__
            raise ValueError(
                f"samples must be a frames view of video dataset "
                f"'{self._dataset.name}', got {got}")
        if samples._is_clips or not samples._is_frames:
            raise ValueError(
                f"samples: run '{self.key}' searches the frames of video "
                f"dataset '{self._dataset.name}'; use_view() and "
                "sort_by_similarity() take a frames view of it "
                "(video_dataset.to_frames(sample_frames='dynamic', "
                "fps=...) and views of that), not its videos or clips; "
                f"{FRAME_SEARCH} (best_per_video=True: the best frame of "
                "each video)")
        if samples._root_dataset.name != self._dataset.name:
            raise ValueError(
                f"samples: a frames view of video dataset "
                f"'{samples._root_dataset.name}'; run '{self.key}' searches "
                f"the frames of '{self._dataset.name}'")
        return SimilarityIndex.use_view(self, samples,
                                        allow_missing=allow_missing,
                                        warn_missing=warn_missing)

    def _apply_view(self):
        """The current view's frames that the index holds, in the view's
        order, mapped to their keys now (frame ids change each time
        FiftyOne builds a frames view)."""
        ids, keys = _frames_of(self._curr_view)
        held = self._held_keys(keys)
        pairs = [(i, k) for i, k in zip(ids, keys) if k in held]
        missing = len(ids) - len(pairs)
        if missing and not self._curr_view_allow_missing:
            raise ValueError(
                f"{missing} frames of the view are not in the frame index "
                "(off its sampling grid, or not embedded yet)")
        if missing and self._curr_view_warn_missing:
            brain_index.logger.warning("Ignoring %d frames that are not in the "
                                 "frame index", missing)
        self._key_of = dict(pairs)
        self._id_of = {k: i for i, k in pairs}
        self._known.update(pairs)
        self._curr_sample_ids = np.array([i for i, _ in pairs], dtype=object)
        self._curr_label_ids = None
        self._curr_keep_inds = None
        self._curr_missing_size = missing or None

    def _held_keys(self, keys):
        """Those of ``keys`` the frame index holds."""
        doc = st.load(self._target)
        if not keys or not doc or not doc.enabled or not doc.index:
            return set()
        with self._store(doc) as store:
            return set(store.get_payloads(list(keys)))

    def reload(self):
        self.use_view(self._curr_view,
                      allow_missing=self._curr_view_allow_missing,
                      warn_missing=self._curr_view_warn_missing)

    @property
    def sample_ids(self):
        """The ids of the current view's frames that the index holds (a
        frames view's ids are its own: there are no others to list)."""
        return self.current_sample_ids

    @property
    def total_index_size(self):
        """How many frames the index holds (of every video, scene-change
        frames off the grid included)."""
        doc = st.load(self._target)
        if not doc or not doc.enabled or not doc.index:
            return 0
        return indexes.index_size(doc.index)

    def _keys_of(self, frame_ids):
        """``{frame id: frame key}`` of ``frame_ids``: looked up in the
        views mapped so far (the current one included), then in the run's
        own view, then among the video dataset's frame documents (a
        labelled frame keeps its document's id in every frames view)."""
        self._apply_view_if_necessary()
        found = {i: self._known[i] for i in frame_ids if i in self._known}
        left = [i for i in frame_ids if i not in found]
        if left and self._samples is not self._curr_view:
            ids, keys = _frames_of(self._samples.select(left))
            found.update(zip(ids, keys))
            left = [i for i in left if i not in found]
        valid = [ObjectId(i) for i in left if ObjectId.is_valid(i)]
        if valid:
            # (FiftyOne's own collection of the video dataset's frames)
            for d in self._dataset._frame_collection.find(
                    {"_id": {"$in": valid}},
                    {"_sample_id": 1, "frame_number": 1}):
                found[str(d["_id"])] = targets.frame_key(
                    str(d["_sample_id"]), d["frame_number"])
        return found

    # -- embeddings -------------------------------------------------------------

    def get_embeddings(self, sample_ids=None, label_ids=None,
                       allow_missing=True, warn_missing=False):
        """The vectors of frames (by their ids; default the current
        view's), from the frame index."""
        brain_index._no_labels(label_ids)
        wanted = (list(self.current_sample_ids) if sample_ids is None
                  else brain_index._id_strings(sample_ids))
        keys = self._keys_of(wanted)
        vectors = {}
        if keys:
            with self._store() as store:
                got, array = store.get_vectors(list(dict.fromkeys(
                    keys.values())))
            vectors = dict(zip(got, np.asarray(array, dtype=np.float32)))
        found = [i for i in wanted if keys.get(i) in vectors]
        brain_index._missing([i for i in wanted if keys.get(i) not in vectors],
                       allow_missing, warn_missing)
        dim = next(iter(vectors.values())).shape[0] if vectors else 0
        array = (np.stack([vectors[keys[i]] for i in found]) if found
                 else np.zeros((0, dim), dtype=np.float32))
        return array, np.array(found), None

    def add_to_index(self, embeddings, sample_ids, label_ids=None,
                     overwrite=True, allow_existing=True,
                     warn_existing=False, reload=True):
        if len(sample_ids) == 0:
            return
        raise ValueError(
            "add_to_index: a frames run is the frame index of video dataset "
            f"'{self._dataset.name}', which AI search embeds and keeps in "
            "sync itself (fiftyone_ai_search.calculate_embeddings("
            "video_dataset, frames=True)); it takes no vectors")

    def remove_from_index(self, sample_ids=None, label_ids=None,
                          allow_missing=True, warn_missing=False,
                          reload=True):
        raise ValueError(
            "remove_from_index: a frames run is the whole frame index of "
            f"video dataset '{self._dataset.name}'; restrict it to some "
            "frames with use_view(frames_view) instead")

    # -- queries ----------------------------------------------------------------

    def _nearest(self, queries, k, reverse, aggregation):
        """``(frame ids, scores)`` of each query, best first, over the
        current view's frames."""
        self._apply_view_if_necessary()
        scope = list(self._id_of)
        for kind, value in queries:
            vectors = self._vectors_of(kind, value)
            if aggregation == "mean" and len(vectors) > 1:
                vectors = normalize(vectors.mean(axis=0, keepdims=True))
            if not scope:
                yield [], np.zeros(0)
                continue
            if reverse or k is None:
                keys, scores = self._exact(vectors, scope, k, reverse)
            else:
                keys, scores = self._engine(vectors, scope, k)
            yield [self._id_of[key] for key in keys], scores

    def _engine(self, vectors, scope, k):
        """The ``k`` nearest keys of ``scope`` (a frame's score: its best
        over ``vectors``), through the index's own search."""
        scores = {}
        with self._store() as store:
            # every frame of the index in view: the search of the whole
            # index (its cells) serves it
            within = None if len(scope) >= store.count() else scope
            for vector in vectors:
                for key, score in store.query(vector, k, sample_ids=within):
                    if key in self._id_of:
                        scores[key] = max(score, scores.get(key, -2.0))
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])[:k]
        return [key for key, _ in ranked], np.array([s for _, s in ranked])

    def _exact(self, vectors, scope, k, reverse):
        """Every key of ``scope`` scored exactly (least similar first with
        ``reverse``), the first ``k``."""
        with self._store() as store:
            keys, array = store.get_vectors(scope)
        array = normalize(np.asarray(array, dtype=np.float32))
        scores = (array @ vectors.T).max(axis=1) if len(array) else (
            np.zeros(0))
        order = np.argsort(scores if reverse else -scores, kind="stable")
        order = order[:k] if k is not None else order
        return [keys[i] for i in order], scores[order]

    def find_duplicates(self, thresh=None, fraction=None):
        """The Brain's near-duplicates of the current view's frames (see
        :class:`fiftyone.brain.similarity.DuplicatesMixin`): every frame's
        neighbours within ``thresh`` through the frame index's cells where
        it has them (as for images), else every pair compared exactly."""
        # FiftyOne selects the frames it keeps from the run's own view by
        # the current view's ids; a frames view's ids are its own, so the
        # current view stands for the run's meanwhile
        samples, self._samples = self._samples, self._curr_view
        try:
            super().find_duplicates(thresh=thresh, fraction=fraction)
        finally:
            self._samples = samples

    def _within_by_cells(self, ids, min_similarity):
        """The neighbours of every frame ``ids`` (the current view's, in
        the Brain's order) through the cells of the frame index, as for
        images (see ``brain_index.AISearchSimilarityIndex``): the index
        is keyed by frame keys, so the view's frame ids are mapped to
        theirs, row for row. None where every pair is compared exactly
        (a small view, an index without cells)."""
        self._apply_view_if_necessary()
        return super()._within_by_cells([self._key_of[i] for i in ids],
                                        min_similarity)


def _frames_of(view):
    """``(frame ids, frame keys)`` of a frames view, in its order."""
    ids, videos, numbers = view.values(["id", "sample_id", "frame_number"])
    return ids, [targets.frame_key(v, n) for v, n in zip(videos, numbers)]
