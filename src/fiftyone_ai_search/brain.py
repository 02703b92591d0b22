"""The AI search index as a FiftyOne Brain similarity index.

:func:`fiftyone_ai_search.enable_embeddings` registers a Brain run (brain
key ``"ai_search"`` by default) whose results are an
:class:`AISearchSimilarityIndex` over the dataset's AI search index. So the
index that keeps itself in sync is also the one FiftyOne's own similarity
machinery uses: ``sort_by_similarity(..., brain_key="ai_search")``, the
App's similarity search (by text, by selected samples),
``compute_visualization`` / ``compute_uniqueness`` with
``similarity_index="ai_search"``, and ``find_duplicates``.

The run stores nothing but its config: every call reads the index the
dataset's AI search state names, so results loaded in any process (the App
server's too) see the index as the last sync left it, and a model change
or a rebuild is picked up without reloading. Queries run through the
searches of :func:`fiftyone_ai_search.perform_ai_search`: the same samples
in the same order (exact up to ``store.cells.MIN_POINTS`` vectors, above
that within the audited cells), prompts through the index's own open_clip
model.

Distances are cosine distances (``1 - cosine similarity``), as the Brain's
sklearn backend reports them.

Two kinds of runs:

- a run of an open_clip model AI search can run (the run
  ``enable_embeddings`` registers, ``clip_model=``, the zoo's
  ``open-clip-torch`` with its ``model_kwargs``, ``clip-vit-base32-torch``,
  or such a model object) is a door to the dataset's self-syncing AI
  search index (:class:`AISearchSimilarityIndex`);
- any other run (an ``embeddings=`` field or array of another or unknown
  model, ``add_to_index`` of any vectors) is a plain index of the run's own
  vectors (:class:`PlainSimilarityIndex`, its config's ``plain`` set): an
  index of its own in the same Qdrant engine
  (:mod:`fiftyone_ai_search.brain_plain`), added to and removed from by the
  user as with every Brain backend, without prompts, never touching AI
  search's index or state.

Examples::

    import fiftyone.brain as fob
    import fiftyone_ai_search as ais

    ais.enable_embeddings(dataset)          # registers brain key "ai_search"
    ais.calculate_embeddings(dataset, wait=True)

    index = dataset.load_brain_results("ai_search")
    view = dataset.sort_by_similarity("a dog on a beach", k=25,
                                      brain_key="ai_search")
    fob.compute_visualization(dataset, similarity_index="ai_search",
                              method="pca", brain_key="ai_search_pca")
    index.find_duplicates(thresh=0.05)     # cosine distance

    # or created the Brain's way
    fob.compute_similarity(dataset, backend="ai_search", brain_key="img",
                           embeddings=False, clip_model="ViT-B-32",
                           pretrained="openai")

    # vectors of any other model: a plain run, an index of its own
    fob.compute_similarity(dataset, backend="ai_search", brain_key="other",
                           embeddings="resnet_embeddings")

    # an object index is a Brain run with a patches field (brain key
    # "ai_search_<field>" by default): sort_by_similarity on its patches
    ais.enable_embeddings(dataset, patches_field="ground_truth")
    patches = dataset.to_patches("ground_truth")
    view = patches.sort_by_similarity("a red car", k=25,
                                      brain_key="ai_search_ground_truth")

    # a video dataset's frame index is a run of its frames views under a
    # key given to it (see fiftyone_ai_search.brain_frames)
    ais.enable_embeddings(videos, frames=True, brain_key="frames")
    frames = videos.to_frames(sample_frames="dynamic", fps=1)
    view = frames.sort_by_similarity("a red car", k=25, brain_key="frames")

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

import logging

import fiftyone.brain as fb
from fiftyone.brain.similarity import Similarity, SimilarityConfig

from . import brain_frames
from . import brain_plain
from . import brain_registry
from . import search
from .brain_index import (  # noqa: F401 (re-exported: runs keep these paths)
    AISearchSimilarityIndex,
    ClipBrainModel,
    PlainSimilarityIndex,
    _open_clip_of_model,
    _release,
    _switch_on,
    runs_of,
)
from .config import BACKENDS
from .embedding.frames import FrameSampling
from .embedding.model import resolve_model
from .errors import BrainKeyTakenError
from .index import media
from .index import state as st
from .index import targets
from .sync.existing import zoo_open_clip

logger = logging.getLogger(__name__)

#: the name of this backend in ``fiftyone.brain.brain_config``
BACKEND_NAME = brain_registry.BACKEND_NAME

#: the brain key ``enable_embeddings`` registers unless told otherwise
DEFAULT_BRAIN_KEY = "ai_search"


#: the distances a run may report. Both rank alike: the index holds unit
#: vectors, whose euclidean distance is ``sqrt(2 - 2 * cosine)``
METRICS = ("cosine", "euclidean")

#: parameters of the Brain's own Qdrant backend that name a server or a
#: collection: refused, not silently ignored
_SERVER_PARAMS = ("url", "api_key", "collection_name", "grpc_port",
                  "prefer_grpc", "replication_factor", "shard_number",
                  "write_consistency_factor", "hnsw_config",
                  "optimizers_config", "wal_config")


class AISearchSimilarityConfig(SimilarityConfig):
    """Configuration of the AI search similarity backend.

    What a run records of the model is a label; the model searches use is
    the one the dataset's AI search state names (see
    :mod:`fiftyone_ai_search.index.state`).

    Args:
        clip_model (None): the open_clip model to enable AI search with when
            the Brain creates the index (``fob.compute_similarity``);
            default from settings
        pretrained (None): its pretrained tag or weights file
        index_backend (None): ``"edge"`` or ``"server"``; default from
            settings
        metric ("cosine"): the only metric: CLIP embeddings are compared by
            cosine similarity
        **kwargs: keyword arguments for
            :class:`fiftyone.brain.similarity.SimilarityConfig`;
            ``embeddings_field`` names vectors the dataset already has,
            used instead of running the model (see
            :func:`fiftyone_ai_search.enable_embeddings`);
            ``patches_field`` makes the run the object index of that label
            field (its objects cropped as the index's settings say)
        plain (False): whether the run is a plain index of its own vectors
            (set when it is created: the run names no open_clip model)
        frames (False): whether the run is the frame index of a video
            dataset (set when it is created on a frames view; see
            :mod:`fiftyone_ai_search.brain_frames`)
    """

    def __init__(self, clip_model=None, pretrained=None, index_backend=None,
                 metric="cosine", plain=False, frames=False, **kwargs):
        if metric not in METRICS:
            raise ValueError(
                f"metric: the AI search backend compares CLIP embeddings by "
                f"cosine similarity; it reports distances as {METRICS}, got "
                f"{metric!r}"
            )
        taken = sorted(k for k in _SERVER_PARAMS if kwargs.get(k) is not None)
        if taken:
            raise ValueError(
                f"{', '.join(taken)}: the AI search backend keeps one index "
                "per dataset, on the Qdrant it is configured with (embedded "
                "by default; a server by FIFTYONE_AI_SEARCH_QDRANT_URL and "
                "FIFTYONE_AI_SEARCH_QDRANT_API_KEY, or the plugin's secrets) "
                "and named by itself; pass index_backend='server' to use the "
                "server"
            )
        if kwargs.get("roi_field") is not None:
            raise ValueError(
                "roi_field: the AI search backend embeds whole images or the "
                "objects of a patches_field, not regions of interest"
            )
        # the open_clip model behind a model object the Brain passes (it
        # keeps no object in the config): known only now
        model = kwargs.get("model")
        self._model_spec = (None if model is None or isinstance(model, str)
                            else _open_clip_of_model(model))
        if not plain:
            kwargs["supports_prompts"] = True  # CLIP: text and images align
        super().__init__(**kwargs)
        if clip_model is None and self.model is not None:
            # a zoo model name (the Brain's model=, model_kwargs=); one that
            # is no open_clip CLIP makes a plain run
            clip_model, pretrained = zoo_open_clip(
                self.model, self.model_kwargs) or (None, None)
        self.clip_model = clip_model
        self.pretrained = pretrained
        self.index_backend = index_backend
        self.metric = metric
        #: whether the run is a plain index of its own vectors (see
        #: :mod:`fiftyone_ai_search.brain_plain`), not AI search's index
        self.plain = bool(plain)
        self.supports_prompts = not self.plain
        #: whether the run is the frame index of a video dataset, its view
        #: a frames view (:mod:`fiftyone_ai_search.brain_frames`)
        self.frames = bool(frames)

    @property
    def names_a_model(self):
        """Whether the run names an open_clip model AI search can run (then
        it is the dataset's AI search index; else a plain run)."""
        return self.clip_model is not None or self._model_spec is not None

    @property
    def method(self):
        return BACKEND_NAME

    @property
    def max_k(self):
        return None

    @property
    def supports_least_similarity(self):
        return True

    @property
    def supported_aggregations(self):
        return search.AGGREGATIONS


class AISearchSimilarity(Similarity):
    """The AI search similarity backend.

    A run that names an open_clip model (see the module's doc) is a door
    to the dataset's one AI search index (of its images, or of the objects of its ``patches_field``): a
    run made by :func:`fiftyone_ai_search.enable_embeddings` holds the
    whole dataset and follows it as it syncs; a run made by
    ``fob.compute_similarity`` holds what the Brain adds to it (the
    samples of the view it was computed on), as the Brain's other backends
    do. Vectors a run is given are stored in the index (and kept by the
    syncs until their images change), never in a second index. Any other
    run is a plain index of its own vectors (:class:`PlainSimilarityIndex`).

    Args:
        config: an :class:`AISearchSimilarityConfig`
    """

    def initialize(self, samples, brain_key):
        """A new run (``fob.compute_similarity`` calls this, then adds the
        vectors of its samples): empty, or the whole index when made with
        ``clip_model=`` alone. AI search is switched on for the dataset
        when the run names its model; else the model of the first vectors
        added decides."""
        # (the Brain gives a frames view's run its frames view, a clips
        # view's the video dataset, a video slice's the grouped dataset:
        # what it was given is read from its call)
        if samples._is_frames and not samples._is_clips:
            return brain_frames.initialize(self, samples, brain_key)
        given = brain_frames.given_samples(samples)
        if brain_frames.is_of_videos(given):
            # the Brain registered the run before this: a run left without
            # results would break every later use of its key
            if brain_key is not None:
                self.delete_run(samples, brain_key, cleanup=False)
            raise brain_frames.refuse_videos(given)
        dataset = media.source_dataset(samples)
        if self.config.plain or not self.config.names_a_model:
            return self._initialize_plain(dataset, brain_key)
        if self.config.clip_model is not None:
            try:
                _switch_on(targets.target_of(dataset,
                                             self.config.patches_field),
                           self.config.clip_model, self.config.pretrained,
                           self.config.index_backend)
            except Exception:
                # the Brain registered the run before this: a run left
                # without results would break every later use, and a retry
                if brain_key is not None:
                    self.delete_run(dataset, brain_key, cleanup=False)
                raise
        # clip_model= (without the Brain's model=) asks for AI search's
        # index as it is: the whole of it; else the run holds what the
        # Brain adds to it, as the Brain's other backends do
        whole = self.config.clip_model is not None and self.config.model is None
        return AISearchSimilarityIndex(dataset, self.config, brain_key,
                                       backend=self,
                                       members=None if whole else [])

    def _initialize_plain(self, dataset, brain_key):
        """A plain run: vectors of no model AI search can run get an index
        of the run's own (see :mod:`fiftyone_ai_search.brain_plain`)."""
        self.config.plain = True
        self.config.supports_prompts = False
        if brain_key is not None:
            # the Brain registered the config before it was known
            self.update_run_config(dataset, brain_key, self.config)
        ref = brain_plain.new_ref(dataset, brain_key,
                                  self.config.index_backend)
        return PlainSimilarityIndex(dataset, self.config, brain_key,
                                    backend=self, index_ref=ref)

    def ensure_requirements(self):
        """Checks what the run names before the Brain registers it (it
        loads nothing): an unknown model or backend fails here."""
        super().ensure_requirements()
        if self.config.index_backend not in (None,) + tuple(BACKENDS):
            raise ValueError(
                f"index_backend must be one of {tuple(BACKENDS)} or None, "
                f"got {self.config.index_backend!r}")
        if self.config.clip_model is not None:
            resolve_model(self.config.clip_model, self.config.pretrained)

    def cleanup(self, samples, brain_key):
        """``dataset.delete_brain_run(key)``: when no other run uses the
        index, switches AI search off, as
        :func:`fiftyone_ai_search.disable_embeddings` does. A plain
        run's own index is deleted."""
        if self.config.plain:
            results = self.load_run_results(samples, brain_key, cache=False,
                                            load_view=False)
            if results is not None:
                results.cleanup()
            return
        _release(self._target_of(samples), brain_key)

    def rename(self, samples, brain_key, new_brain_key):
        if self.config.plain:
            return  # its index's reference is in its results
        target = self._target_of(samples)
        doc = st.load(target)
        if doc and doc.brain_key == brain_key:
            st.update(target, brain_key=new_brain_key)

    def _target_of(self, samples):
        if self.config.frames:
            return targets.Frames(samples._root_dataset)
        return targets.target_of(media.source_dataset(samples),
                                 self.config.patches_field)


# -- registration ------------------------------------------------------------


def register_backend():
    """Adds this backend to ``fiftyone.brain.brain_config`` of this process,
    so that ``fob.compute_similarity(..., backend="ai_search")`` finds it
    (importing :mod:`fiftyone_ai_search` does it)."""
    brain_registry.declare(fb)


register_backend()


def default_brain_key(patches_field=None):
    """The brain key of an index unless told otherwise: ``"ai_search"``
    for images, ``"ai_search_<field>"`` for the objects of a field."""
    if patches_field is None:
        return DEFAULT_BRAIN_KEY
    tail = "".join(c if c.isalnum() or c == "_" else "_"
                   for c in patches_field)
    return f"{DEFAULT_BRAIN_KEY}_{tail}"


def check_brain_key(dataset, brain_key, patches_field=None, frames=False):
    """Raises if ``brain_key`` names a Brain run that is not AI search's
    index of the same thing (the images, the objects of ``patches_field``,
    or with ``frames`` the frames of a video dataset)."""
    if not isinstance(brain_key, str) or not brain_key.isidentifier():
        raise ValueError(
            f"brain_key must be a name of letters, digits and underscores, "
            f"got {brain_key!r}"
        )
    if brain_key in dataset.list_brain_runs():
        config = dataset.get_brain_info(brain_key).config
        if not isinstance(config, AISearchSimilarityConfig) or config.plain:
            raise BrainKeyTakenError(
                f"brain_key: '{brain_key}' is a "
                f"{'plain ' if getattr(config, 'plain', False) else ''}"
                f"{config.method} brain run of "
                f"dataset '{dataset.name}'; pass another brain_key to "
                "enable_embeddings or delete that run"
            )
        if (config.patches_field != patches_field
                or config.frames != frames):
            of = (f"the objects of '{config.patches_field}'"
                  if config.patches_field else
                  "the frames" if config.frames else "the images")
            raise BrainKeyTakenError(
                f"brain_key: '{brain_key}' is the AI search run of {of} of "
                f"dataset '{dataset.name}'; pass another brain_key")


def register(target, doc, brain_key):
    """Registers the Brain run of a target's AI search index (of a
    dataset's images, or of the objects of one of its fields) under
    ``brain_key``: a run of the whole index. Other runs of the index stay;
    an existing run of that key keeps what it holds and learns the
    index's model."""
    _REGISTER[targets.of(target).kind](target, doc, brain_key)


def _register_samples(target, doc, brain_key):
    """Registers the Brain run of an image or object index under
    ``brain_key`` (see :func:`register`)."""
    dataset, field = targets.dataset_of(target), targets.field_of(target)
    check_brain_key(dataset, brain_key, field)
    if brain_key in dataset.list_brain_runs() and dataset.load_brain_results(
            brain_key, cache=False) is not None:
        config = dataset.get_brain_info(brain_key).config
        _label_model(config, doc)
        config.build().update_run_config(dataset, brain_key, config)
    else:
        # (a run left without results, by a process killed in between)
        unregister(dataset, brain_key)
        config = AISearchSimilarityConfig(index_backend=doc.backend,
                                          patches_field=field)
        _label_model(config, doc)
        method = config.build()
        method.register_run(dataset, brain_key, overwrite=False)
        # at once (a few bytes): a run registered by a process killed
        # before it saved its results would otherwise never load
        method.save_run_results(
            dataset, brain_key,
            AISearchSimilarityIndex(dataset, config, brain_key,
                                    backend=method),
        )
    if doc.brain_key is None:
        st.update(target, brain_key=brain_key)


def _register_frames(target, doc, brain_key):
    """Registers the Brain run of a frame index under ``brain_key`` (by
    ``enable_embeddings(video_dataset, frames=True, brain_key=...)``): a
    run of the whole index whose view is FiftyOne's frames view of the
    rule's grid. An existing run of that key (of this frame index) is
    registered again, with the grid of the rule asked for now."""
    dataset = target.dataset
    check_brain_key(dataset, brain_key, frames=True)
    unregister(dataset, brain_key)
    config = AISearchSimilarityConfig(index_backend=doc.backend,
                                      frames=True)
    _label_model(config, doc)
    method = config.build()
    view = brain_frames.grid_view(
        dataset, FrameSampling.from_dict(doc.sampling or {}))
    method.register_run(view, brain_key, overwrite=False)
    # at once: a run without results would never load
    method.save_run_results(
        view, brain_key,
        brain_frames.FramesSimilarityIndex(view, config, brain_key,
                                           backend=method))
    if doc.brain_key is None:
        st.update(target, brain_key=brain_key)


#: how each kind of target
#: (:attr:`~fiftyone_ai_search.index.targets.Target.kind`) registers the
#: Brain run of its index
_REGISTER = {"images": _register_samples, "objects": _register_samples,
             "frames": _register_frames}


def unregister(dataset, brain_key):
    """Deletes the Brain run, leaving the index alone (the caller's)."""
    if brain_key in dataset.list_brain_runs():
        config = dataset.get_brain_info(brain_key).config
        if isinstance(config, AISearchSimilarityConfig) and not config.plain:
            AISearchSimilarity.delete_run(dataset, brain_key, cleanup=False)


def unregister_all(target):
    """Deletes every Brain run of a target's index, leaving the index
    alone (the caller's: AI search is being switched off)."""
    dataset = targets.dataset_of(target)
    for key in runs_of(target):
        AISearchSimilarity.delete_run(dataset, key, cleanup=False)


def _label_model(config, doc):
    config.clip_model = doc.model if doc else None
    config.pretrained = doc.pretrained if doc else None


