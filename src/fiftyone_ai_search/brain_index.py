"""The indexes behind the ``"ai_search"`` Brain backend's runs: the door to
a target's self-syncing AI search index (:class:`AISearchSimilarityIndex`),
a plain index of a run's own vectors (:class:`PlainSimilarityIndex`), and
the open_clip model they embed prompts with (:class:`ClipBrainModel`).

The backend itself (its config, the run's start, registration) is
:mod:`fiftyone_ai_search.brain`, which imports this module; the frames
bridge (:mod:`fiftyone_ai_search.brain_frames`) subclasses the index here.
Kept apart so that both can import the index without an import circle.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

import logging

import numpy as np
from bson import ObjectId
from PIL import Image

import fiftyone.brain.internal.core.utils as fbu
import fiftyone.core.collections as foc
import fiftyone.core.models as fom
from fiftyone.brain.similarity import DuplicatesMixin, SimilarityIndex

from . import brain_plain
from . import brain_registry
from . import duplicates
from . import lifecycle
from . import search
from . import validate
from .embedding.model import resolve_model
from .errors import StateDamagedError
from .index import indexes
from .index import media
from .index import state as st
from .index import targets
from .index.indexes import require_index
from .query.vectors import normalize, prompt_vectors
from .sync.images import write_given
from .sync.objects import SOURCE_KEY, write_given_objects

# (one logger for the whole backend, as before this module was split off)
logger = logging.getLogger("fiftyone_ai_search.brain")

BACKEND_NAME = brain_registry.BACKEND_NAME


#: the most points a full index query (every point's neighbours) compares
MAX_FULL_INDEX = 20_000


def _switch_on(target, model, pretrained, backend=None):
    """Makes sure AI search of a target is on with this model and has an
    index (the vectors a run is given go into it): switches it on and
    builds the first index when there is none, registering no run.
    Another model than the index's is refused: a run never mixes models,
    nor changes another run's."""
    doc = st.load(target)
    if doc and doc.enabled:
        wanted = resolve_model(model, pretrained).identity
        if wanted != doc.model_identity:
            raise ValueError(
                f"model: AI search of {target_name(target)} embeds with "
                f"{doc.model}/{doc.pretrained}; a run with "
                f"model {model}/{pretrained} would mix two models in one "
                "index. Use the index's model, or change the model of AI "
                "search with fiftyone_ai_search.enable_embeddings (every run "
                "then follows)"
            )
    dataset, field = targets.dataset_of(target), targets.field_of(target)
    if not (doc and doc.enabled):
        lifecycle.enable(dataset, model=model, pretrained=pretrained,
                         backend=backend, compute=False,
                         patches_field=field)
    if not st.load(target).index:
        lifecycle.calculate_embeddings(dataset, wait=True,
                                       patches_field=field)


#: what searches video frames, for an image run given frames
_FRAME_SEARCH_HINT = (
    "A video dataset's frames have their own index: fiftyone_ai_search."
    "enable_embeddings(video_dataset, frames=True, brain_key=...) indexes "
    "them and registers it as a run of frames views, fiftyone_ai_search."
    "search_frames(video_dataset, prompt=...) searches them and "
    "fiftyone_ai_search.frames_view(video_dataset, hits) opens the hits as "
    "a frames view")


def target_name(target):
    field = targets.field_of(target)
    name = f"dataset '{targets.dataset_of(target).name}'"
    return name if field is None else f"the objects of '{field}' of {name}"


def runs_of(target):
    """The brain keys of the AI search runs of a target."""
    dataset, field = targets.dataset_of(target), targets.field_of(target)
    frames = targets.of(target).is_frames
    keys = []
    for key in dataset.list_brain_runs(type="similarity"):
        config = dataset.get_brain_info(key).config
        if (config.method == BACKEND_NAME
                and not config.plain and config.patches_field == field
                and config.frames == frames):
            keys.append(key)
    return keys


def _release(target, brain_key):
    """Switches AI search of a target off when ``brain_key`` was the last
    run using its index (the Brain deletes the run itself)."""
    if any(key != brain_key for key in runs_of(target)):
        return
    try:
        doc = st.load(target)
        enabled = bool(doc and doc.enabled)
    except StateDamagedError:
        enabled = True  # damaged: disabling always works
    if enabled:
        lifecycle.disable(target)  # the Brain deletes the run itself


def _open_clip_of_model(model):
    """``(model, pretrained)`` of open_clip behind a FiftyOne model object,
    or None when it is not one this package can run."""
    if isinstance(model, ClipBrainModel):
        return model.clip.spec.name, model.clip.spec.pretrained
    config = getattr(model, "config", None)
    clip_model = getattr(config, "clip_model", None)
    if isinstance(clip_model, str) and type(model).__name__ == (
            "TorchOpenClipModel"):
        return clip_model, getattr(config, "pretrained", None)
    if type(model).__name__ == "TorchCLIPModel":  # clip-vit-base32-torch
        return "ViT-B-32", "openai"
    return None


class AISearchSimilarityIndex(SimilarityIndex, DuplicatesMixin):
    """A Brain run over the AI search index of a dataset (of its images, or
    of the objects of its ``patches_field``).

    A run holds either the whole index, following the dataset as it syncs
    (``members`` None: the run :func:`fiftyone_ai_search.enable_embeddings`
    registers), or the ids added to it (``fob.compute_similarity`` on a
    view, :meth:`add_to_index`, :meth:`remove_from_index`), kept with the
    run. Adding stores the vectors in the index (kept until the image, or
    the object's box, changes); removing takes ids out of the run only:
    the index and the other runs keep them.

    Args:
        samples: the :class:`fiftyone.core.collections.SampleCollection`
        config: an :class:`AISearchSimilarityConfig`
        brain_key: the brain key
        backend (None): an :class:`AISearchSimilarity`
        members (None): the ids the run holds, or None for the whole index
        lengths (None): ``{id: length}`` of vectors added with a length
            other than 1 (the index holds unit vectors; the Brain gets back
            what it added)
    """

    def __init__(self, samples, config, brain_key, backend=None,
                 members=None, lengths=None):
        self._dataset = media.source_dataset(samples)
        #: what the index indexes: the dataset's images, or the objects of
        #: the run's patches field
        self._target = targets.target_of(self._dataset, config.patches_field)
        self._objects = config.patches_field is not None
        self._members = None if members is None else list(members)
        self._lengths = dict(lengths or {})
        self._held_cache = None
        SimilarityIndex.__init__(self, samples, config, brain_key,
                                 backend=backend)
        DuplicatesMixin.__init__(self)

    # -- what the run holds -------------------------------------------------

    @property
    def supports_prompts(self):
        # always (CLIP), whatever compute_similarity() concluded from the
        # model it was given
        return True

    @property
    def is_external(self):
        return True  # the vectors live in the AI search index

    @property
    def members(self):
        """The ids the run holds (label ids for objects), or None when it
        holds the whole index."""
        return self._members

    def _held(self):
        """``(keys, sample_ids)`` the run holds now, in dataset order: keys
        are sample ids, or label ids for objects (then with their
        samples')."""
        if self._held_cache is None:
            doc = st.load(self._target)
            if not doc or not doc.enabled or not doc.index:
                self._held_cache = ([], [])
                return self._held_cache
            with self._store(doc) as store:
                wanted = (store.get_sample_ids() if self._members is None
                          else self._members)
                if self._objects:
                    payloads = store.get_payloads(wanted)
                    sources = {k: p.get(SOURCE_KEY)
                               for k, p in payloads.items()}
                else:
                    # the members the index still holds (a sync removes
                    # deleted samples)
                    held = (wanted if self._members is None
                            else store.get_payloads(wanted))
                    sources = {k: k for k in held}
            order = {i: n for n, i in enumerate(
                media.indexed_samples(self._dataset).values("id"))}
            keys = sorted((k for k in sources if sources[k] in order),
                          key=lambda k: (order[sources[k]], k))
            self._held_cache = (keys, [sources[k] for k in keys])
        return self._held_cache

    @property
    def sample_ids(self):
        """The ids of the samples the run holds, in dataset order (of the
        objects' samples, for an object index)."""
        return np.array(self._held()[1])

    @property
    def label_ids(self):
        """The ids of the objects the run holds (None for images)."""
        return np.array(self._held()[0]) if self._objects else None

    @property
    def total_index_size(self):
        if self._members is None:
            doc = st.load(self._target)
            if not doc or not doc.enabled or not doc.index:
                return 0
            return indexes.index_size(doc.index)
        return len(self._held()[0])

    def get_model(self):
        """The index's open_clip model, as a FiftyOne model
        (:class:`ClipBrainModel`)."""
        doc = require_index(self._target)
        if not isinstance(self._model, ClipBrainModel) or (
                self._model.identity != doc.index.model_identity):
            self._model = ClipBrainModel(indexes.load_index_model(doc.index))
        return self._model

    def reload(self):
        self._held_cache = None
        super().reload()

    def use_view(self, samples, allow_missing=True, warn_missing=False):
        if not isinstance(samples, foc.SampleCollection):
            got = "None" if samples is None else type(samples).__name__
            raise ValueError(
                f"samples must be a FiftyOne Dataset or DatasetView of "
                f"dataset '{self._dataset.name}', got {got}")
        if getattr(samples, "_is_frames", False) or (
                getattr(samples, "media_type", "image") == "video"):
            raise ValueError(
                "samples: the AI search index holds images (or objects of "
                "images), not video frames; use_view() takes a view of "
                f"dataset '{self._dataset.name}'. "
                f"{_FRAME_SEARCH_HINT}")
        return super().use_view(samples, allow_missing=allow_missing,
                                warn_missing=warn_missing)

    def cleanup(self):
        """Deletes what the run keeps in the backend: when no other run
        uses the index, the index itself (AI search is switched off, as
        :func:`fiftyone_ai_search.disable_embeddings` does); the run is
        left for ``dataset.delete_brain_run(key)``."""
        _release(self._target, self.key)
        self._members, self._lengths, self._held_cache = [], {}, None

    def attributes(self):
        return ["cls", "members", "lengths"]

    @property
    def lengths(self):
        return self._lengths

    @classmethod
    def _from_dict(cls, d, samples, config, brain_key):
        return cls(samples, config, brain_key, members=d.get("members"),
                   lengths=d.get("lengths"))

    # -- embeddings -----------------------------------------------------------

    def get_embeddings(self, sample_ids=None, label_ids=None,
                       allow_missing=True, warn_missing=False):
        keys, sources = self._held()
        source_of = dict(zip(keys, sources))
        if self._objects:
            if label_ids is not None:
                wanted = _id_strings(label_ids)
            elif sample_ids is not None:
                of = set(_id_strings(sample_ids))
                wanted = [k for k in keys if source_of[k] in of]
            else:
                wanted = keys
        else:
            _no_labels(label_ids)
            wanted = keys if sample_ids is None else _id_strings(sample_ids)
        found = [k for k in wanted if k in source_of]
        _missing([k for k in wanted if k not in source_of], allow_missing,
                 warn_missing)
        vectors = self._vectors(found)
        if self._objects:
            return (vectors, np.array([source_of[k] for k in found]),
                    np.array(found))
        return vectors, np.array(found), None

    def _vectors(self, keys):
        """The vectors of ``keys``, in order, at the lengths they were
        added with."""
        with self._store() as store:
            ids, vectors = store.get_vectors(list(keys))
        vectors = np.asarray(vectors, dtype=np.float32)
        row = {k: i for i, k in enumerate(ids)}
        out = vectors[[row[k] for k in keys]]
        scale = np.array([self._lengths.get(k, 1.0) for k in keys],
                         dtype=np.float32)
        return out * scale[:, np.newaxis]

    def add_to_index(self, embeddings, sample_ids, label_ids=None,
                     overwrite=True, allow_existing=True,
                     warn_existing=False, reload=True):
        """Stores the given embeddings in the index (of samples, or of
        objects by their ``label_ids``) and adds them to the run. They
        must be of the index's model: the run's ``model``, or the model
        the Brain embedded them with (AI search is switched on with it if
        it is off)."""
        if self._objects:
            if label_ids is None:
                raise ValueError("label_ids: an object index stores objects; "
                                 "give the label id of each embedding")
            keys, write = _id_strings(label_ids), write_given_objects
        else:
            _no_labels(label_ids)
            keys, write = _id_strings(sample_ids), write_given
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) != len(keys):
            raise ValueError(
                f"embeddings: expected one vector per id ({len(keys)}), got "
                f"an array of shape {embeddings.shape}"
            )
        self._switch_on_for(embeddings)
        held = set(self._held()[0])
        existing = [k for k in keys if k in held]
        if existing and not allow_existing:
            raise ValueError(
                f"Found {len(existing)} ids (e.g. {existing[0]}) that already "
                "exist in the index"
            )
        if existing and warn_existing:
            logger.warning("%s %d ids that already exist in the index",
                           "Overwriting" if overwrite else "Skipping",
                           len(existing))
        rows = [i for i, k in enumerate(keys) if overwrite or k not in held]
        keys, embeddings = [keys[i] for i in rows], embeddings[rows]
        if not keys:
            return
        with self._store(require_index(self._target)) as store:
            write(self._target, store, keys, embeddings)
        if self.config.embeddings_field is not None:
            # the Brain's contract: the run's field holds its vectors
            fbu.add_embeddings(
                self._dataset, embeddings,
                np.asarray(_id_strings(sample_ids))[rows],
                np.asarray(keys) if self._objects else None,
                self.config.embeddings_field,
                patches_field=self.config.patches_field)
        norms = np.linalg.norm(embeddings.astype(np.float64), axis=1)
        for k, n in zip(keys, norms):
            if abs(n - 1.0) > 1e-6:
                self._lengths[k] = float(n)
            else:
                self._lengths.pop(k, None)
        if self._members is not None:
            known = set(self._members)
            self._members.extend(k for k in keys if k not in known)
            self._held_cache = None
            if len(self._held()[0]) and self._holds_everything():
                self._members = None
        self._changed(reload)

    def _switch_on_for(self, embeddings):
        """Switches AI search on with the model the Brain embedded with,
        when it is off; refuses vectors of another model than the index's
        or of the wrong size."""
        doc = st.load(self._target)
        spec = (_open_clip_of_model(self._model)
                if self._model is not None else None)
        if self._model is not None and spec is None:
            raise ValueError(
                f"add_to_index: these vectors are of model "
                f"{type(self._model).__name__}, not of an open_clip CLIP; "
                f"the AI search index of {target_name(self._target)} holds "
                "CLIP vectors only (pass the run's model as model="
                "'open-clip-torch' with model_kwargs, or embeddings=False "
                "with clip_model=)"
            )
        if spec is not None:
            _switch_on(self._target, *spec, self.config.index_backend)
        elif not (doc and doc.enabled):
            raise ValueError(
                f"add_to_index: AI search of {target_name(self._target)} is "
                "off, and nothing says which open_clip model made these "
                "vectors. Create the run with its model (model="
                "'open-clip-torch' and model_kwargs, or clip_model=), or "
                "switch AI search on first (fiftyone_ai_search."
                "enable_embeddings). The AI search backend indexes CLIP "
                "embeddings of a model it runs itself, to keep the index in "
                "sync; for vectors of other models use another backend "
                "(e.g. 'sklearn')"
            )

    def _holds_everything(self):
        """Whether the run's members cover every sample (object) of the
        dataset: it then follows the dataset as a whole."""
        samples = media.indexed_samples(self._dataset)
        total = (self._target.count(samples) if self._objects
                 else len(samples))
        return len(set(self._members)) >= total

    def remove_from_index(self, sample_ids=None, label_ids=None,
                          allow_missing=True, warn_missing=False,
                          reload=True):
        """Takes ids out of the run (the index, and other runs, keep
        them)."""
        if self._objects:
            gone = _id_strings(label_ids) if label_ids is not None else []
            if sample_ids is not None:
                of = set(_id_strings(sample_ids))
                keys, sources = self._held()
                gone += [k for k, s in zip(keys, sources) if s in of]
        else:
            _no_labels(label_ids)
            gone = _id_strings(sample_ids) if sample_ids is not None else []
        keys = self._held()[0]
        held = set(keys)
        _missing([i for i in gone if i not in held], allow_missing,
                 warn_missing)
        gone = set(gone)
        self._members = [k for k in keys if k not in gone]
        for k in gone:
            self._lengths.pop(k, None)
        self._changed(reload)

    def _changed(self, reload):
        """Keeps the run's members with the run at once (the vectors are
        in the index already)."""
        self._held_cache = None
        if self.key is not None and self.key in self._dataset.list_brain_runs():
            self.save()
        if reload:
            self.reload()

    # -- queries --------------------------------------------------------------

    def _parse_query(self, query):
        # prompts are embedded by the index's model in the search itself
        # (cached, and checked against the index), not by get_model() here
        if query is None or (isinstance(query, (list, tuple))
                             and not query) or (
                isinstance(query, np.ndarray) and query.size == 0):
            # (the Brain's own message names no argument)
            raise ValueError(
                f"query: at least one query must be provided, got {query!r}")
        if not isinstance(query, (str, list, tuple, np.ndarray)):
            raise ValueError(
                f"query: a prompt, a sample (label) id, a list of them, or "
                f"query vectors; got {type(query).__name__} {query!r}")
        if not isinstance(query, np.ndarray):
            if isinstance(query, str) and not query.strip():
                raise ValueError("query: an empty prompt")
            items = [query] if isinstance(query, str) else list(query)
            if items and isinstance(items[0], str) and not ObjectId.is_valid(
                    items[0]):
                prompts = _Prompts(items)
                prompts.single = isinstance(query, str)
                return prompts
        return super()._parse_query(query)

    #: the largest ``k`` a query takes (None: any)
    _MAX_K = validate.MAX_LIMIT

    def _kneighbors(self, query=None, k=None, reverse=False,
                    aggregation=None, return_dists=False):
        if aggregation is not None and aggregation not in search.AGGREGATIONS:
            raise ValueError(
                f"aggregation must be one of {search.AGGREGATIONS} or None, "
                f"got {aggregation!r}"
            )
        top = self._MAX_K
        if k is not None and (isinstance(k, bool) or not isinstance(
                k, (int, np.integer)) or k < 1 or (top and k > top)):
            # (named here: the search would name its own limit)
            raise ValueError(
                "k must be a whole number "
                + (f"in [1, {top}]" if top else ">= 1")
                + f" or None, got {k!r}")
        if query is None:
            if aggregation is not None:
                raise ValueError(
                    "Full index queries do not support aggregation")
            return self._full_kneighbors(k, reverse, return_dists)
        queries, single = _split_queries(query, aggregation)
        if reverse and aggregation == "max" and len(queries[0][1]) > 1:
            raise ValueError(
                "reverse=True needs aggregation='mean' when several queries "
                "are given (the least similar by best score is not defined)"
            )
        sample_ids, label_ids, dists = [], [], []
        for ids, scores in self._nearest(queries, k, reverse, aggregation):
            if self._objects:
                label_ids.append(ids)
                ids = self._sources(ids)
            sample_ids.append(ids)
            dists.append(self._distances(scores))
        label_ids = label_ids or None
        if single:
            sample_ids, dists = sample_ids[0], dists[0]
            label_ids = label_ids and label_ids[0]
        if return_dists:
            return sample_ids, label_ids, dists
        return sample_ids, label_ids

    def _nearest(self, queries, k, reverse, aggregation):
        """``(ids, scores)`` of each query, best first: through AI search's
        searches over the run's scope."""
        scope = self._scope()
        for kind, value in queries:
            yield search.run_query(
                scope, limit=k, reverse=reverse,
                aggregation=aggregation or "mean",
                patches_field=self.config.patches_field, **{kind: value},
            )

    def _full_kneighbors(self, k, reverse, return_dists):
        """The ``k`` nearest (farthest) neighbours of every point of the
        current view, exact, as indices into it (``plot_distances``)."""
        vectors = self._current_vectors()
        n = len(vectors)
        if n > MAX_FULL_INDEX:
            raise ValueError(
                f"A full index query compares every pair of the {n} points "
                f"in view; the AI search backend does so up to "
                f"{MAX_FULL_INDEX}. Query by ids or vectors, or use_view() "
                "a smaller view")
        k = n if k is None else min(int(k), n)
        unit = normalize(vectors) if n else vectors
        inds, dists = [], []
        for start in range(0, n, 1024):
            sims = unit[start:start + 1024] @ unit.T
            order = np.argsort(sims if reverse else -sims, axis=1,
                               kind="stable")[:, :k]
            for row, picked in enumerate(order):
                inds.append(picked)
                dists.append(np.array(self._distances(sims[row, picked])))
        return (inds, dists) if return_dists else inds

    def _current_vectors(self):
        """The vectors of the current view's points, in the Brain's order
        (``current_sample_ids``, or ``current_label_ids``)."""
        if self._objects:
            return self.get_embeddings(
                label_ids=list(self.current_label_ids),
                allow_missing=False)[0]
        return self.get_embeddings(list(self.current_sample_ids),
                                   allow_missing=False)[0]

    def _distances(self, scores):
        """The run's distances of cosine similarities."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.config.metric == "euclidean":
            return list(np.sqrt(np.clip(2.0 - 2.0 * scores, 0.0, None)))
        return list(1.0 - scores)

    def _similarity(self, distance):
        """The cosine similarity of a distance of the run's metric."""
        if self.config.metric == "euclidean":
            return 1.0 - distance * distance / 2.0
        return 1.0 - distance

    def _scope(self):
        """The view the run searches: the current view, within the run's
        members."""
        view = self.view
        if self._members is None:
            return view
        if self._objects and not view._is_patches:
            return view.select_labels(ids=self._members,
                                      fields=self.config.patches_field)
        return view.select(self._members)

    def _sources(self, label_ids):
        """The ids of the samples holding these objects, in their order."""
        return search.sources_of(require_index(self._target), label_ids)

    def _radius_neighbors(self, query=None, thresh=None, return_dists=False):
        if (isinstance(thresh, bool) or not isinstance(
                thresh, (int, float, np.number)) or not np.isfinite(thresh)
                or thresh < 0):
            raise ValueError(f"thresh must be a distance >= 0, got "
                             f"{thresh!r}")
        # the Brain maps rows to current_sample_ids (current_label_ids of an
        # object index): all must be there (a sync may have removed some
        # since: reload() then)
        ids = list(self.current_label_ids if self._objects
                   else self.current_sample_ids)
        full = query is None
        if full:
            # every point's neighbours (find_duplicates): through the
            # index's cells where it has them, else every pair. As the
            # sklearn backend (its precomputed distances, up to 15,000
            # points), a point is not its own neighbour
            found = self._within_by_cells(ids, self._similarity(thresh))
            if found is None:
                vectors = self._unit_current_vectors()
                found = duplicates.neighbors_within(
                    vectors, self._similarity(thresh), itself=False)
            inds, sims = found
            if not return_dists:
                return inds
            return inds, [self._distances(s) for s in sims]
        vectors = self._unit_current_vectors()
        (pairs, single) = _split_queries(query, None)
        queries = np.concatenate([self._vectors_of(kind, value)
                                  for kind, value in pairs])
        inds, sims = duplicates.neighbors_within(
            vectors, self._similarity(thresh), queries=queries)
        dists = [self._distances(s) for s in sims]
        sample_ids = [[ids[i] for i in row] for row in inds]
        if single:
            sample_ids, dists = sample_ids[0], dists[0]
        return (sample_ids, None, dists) if return_dists else (sample_ids, None)

    def _unit_current_vectors(self):
        # unit rows: vectors added at another length compare by direction
        vectors = self._current_vectors()
        return normalize(vectors) if len(vectors) else vectors

    def _within_by_cells(self, ids, min_similarity):
        """The neighbours of every point ``ids`` (the current view's, in
        the Brain's order) at least ``min_similarity`` similar, through
        the cells of the index (see
        :func:`fiftyone_ai_search.duplicates.within_through_cells`): a
        few cells in memory at a time, never every vector. None where
        every pair is compared exactly (an index without cells, a view
        small enough). A point the index no longer holds (a sync since)
        has no neighbours."""
        doc = st.load(self._target)
        if not doc or not doc.enabled or not doc.index:
            return None

        def read(doc, store):
            try:
                return duplicates.within_through_cells(
                    store, ids, min_similarity, itself=False)
            finally:
                store.close()

        return indexes.read_index(self._target, doc, read)

    def _vectors_of(self, kind, value):
        if kind == "vectors":
            return normalize(np.atleast_2d(value))
        if kind == "image_ids":
            ids = dict(label_ids=value) if self._objects else dict(
                sample_ids=value)
            vectors = self.get_embeddings(allow_missing=False, **ids)[0]
            return normalize(vectors)
        return prompt_vectors(self.get_model().clip, value)

    # -- helpers --------------------------------------------------------------

    def _store(self, doc=None):
        # a session: the next call finds the index open (see
        # VectorStore.session)
        store = indexes.open_ref((doc or require_index(self._target)).index)
        return store.session()


class PlainSimilarityIndex(AISearchSimilarityIndex):
    """A plain run of the AI search backend: the Brain's index of vectors
    of no open_clip model AI search can run (an embeddings field or array
    of another or unknown model, vectors given to :meth:`add_to_index`).

    It holds exactly what it is given, in an index of its own in the same
    Qdrant engine (:mod:`fiftyone_ai_search.brain_plain`), as the Brain's
    other backends do: no sync (add and remove with :meth:`add_to_index`
    and :meth:`remove_from_index`), no prompts, queries by ids or vectors,
    exact over the current view. The dataset's AI search index and state
    are never touched.

    Args:
        samples: the :class:`fiftyone.core.collections.SampleCollection`
        config: an :class:`AISearchSimilarityConfig` with ``plain`` set
        brain_key: the brain key
        backend (None): an :class:`AISearchSimilarity`
        index_ref (None): the reference of its index
            (:func:`fiftyone_ai_search.brain_plain.new_ref`)
    """

    def __init__(self, samples, config, brain_key, backend=None,
                 index_ref=None):
        self.index_ref = dict(index_ref)
        self._run_vectors = brain_plain.RunVectors(self.index_ref)
        super().__init__(samples, config, brain_key, backend=backend,
                         members=[])

    @property
    def supports_prompts(self):
        return False  # vectors of no model that embeds text

    def attributes(self):
        return ["cls", "index_ref"]

    @classmethod
    def _from_dict(cls, d, samples, config, brain_key):
        return cls(samples, config, brain_key, index_ref=d["index_ref"])

    def _held(self):
        if self._held_cache is None:
            self._held_cache = self._run_vectors.held(self._objects)
        return self._held_cache

    @property
    def total_index_size(self):
        return len(self._held()[0])

    def get_model(self):
        return SimilarityIndex.get_model(self)

    def cleanup(self):
        """Deletes the run's own index (the run is left for
        ``dataset.delete_brain_run(key)``)."""
        self._run_vectors.drop()
        self._held_cache = None

    def _vectors(self, keys):
        return self._run_vectors.vectors(keys)

    def add_to_index(self, embeddings, sample_ids, label_ids=None,
                     overwrite=True, allow_existing=True,
                     warn_existing=False, reload=True):
        """Stores the given vectors (of samples, or of objects by their
        ``label_ids``) in the run's own index: any finite, non-zero
        vectors, all of one size."""
        sample_ids = _id_strings(sample_ids)
        if self._objects:
            if label_ids is None:
                raise ValueError("label_ids: an object index stores objects; "
                                 "give the label id of each embedding")
            keys = _id_strings(label_ids)
            if len(sample_ids) != len(keys):
                raise ValueError(
                    f"sample_ids: expected one per label id ({len(keys)}), "
                    f"got {len(sample_ids)}")
        else:
            _no_labels(label_ids)
            keys = sample_ids
        vectors, lengths = brain_plain.check_vectors(embeddings, len(keys))
        for key in keys:
            if not ObjectId.is_valid(key):
                raise ValueError(f"sample_ids: not an id: {key!r}")
        held = set(self._held()[0])
        existing = [k for k in keys if k in held]
        if existing and not allow_existing:
            raise ValueError(
                f"Found {len(existing)} ids (e.g. {existing[0]}) that already "
                "exist in the index")
        if existing and warn_existing:
            logger.warning("%s %d ids that already exist in the index",
                           "Overwriting" if overwrite else "Skipping",
                           len(existing))
        rows = [i for i, k in enumerate(keys) if overwrite or k not in held]
        if not rows:
            return
        keys = [keys[i] for i in rows]
        sources = [sample_ids[i] for i in rows]
        self._run_vectors.write(keys, vectors[rows], lengths[rows],
                                sources=sources if self._objects else None)
        if self.config.embeddings_field is not None:
            # the Brain's contract: the run's field holds its vectors
            fbu.add_embeddings(
                self._dataset, np.asarray(embeddings)[rows],
                np.asarray(sources), np.asarray(keys) if self._objects
                else None, self.config.embeddings_field,
                patches_field=self.config.patches_field)
        self._changed(reload)

    def remove_from_index(self, sample_ids=None, label_ids=None,
                          allow_missing=True, warn_missing=False,
                          reload=True):
        """Deletes ids (of samples, or objects) from the run's index."""
        keys, sources = self._held()
        if self._objects:
            gone = _id_strings(label_ids) if label_ids is not None else []
            if sample_ids is not None:
                of = set(_id_strings(sample_ids))
                gone += [k for k, s in zip(keys, sources) if s in of]
        else:
            _no_labels(label_ids)
            gone = _id_strings(sample_ids) if sample_ids is not None else []
        held = set(keys)
        _missing([i for i in gone if i not in held], allow_missing,
                 warn_missing)
        self._run_vectors.delete([i for i in dict.fromkeys(gone)
                                  if i in held])
        if self.config.embeddings_field is not None and gone:
            fbu.remove_embeddings(
                self._dataset, self.config.embeddings_field,
                sample_ids=None if self._objects else list(gone),
                label_ids=list(gone) if self._objects else None,
                patches_field=self.config.patches_field)
        self._changed(reload)

    _MAX_K = None  # exact over the view: no search limit to respect

    def _nearest(self, queries, k, reverse, aggregation):
        """``(ids, scores)`` of each query, best first: exact over the
        vectors of the current view."""
        ids = np.array(self.current_label_ids if self._objects
                       else self.current_sample_ids)
        vectors = self._current_vectors()
        unit = normalize(vectors) if len(vectors) else vectors
        for kind, value in queries:
            q = self._vectors_of(kind, value)
            if aggregation == "mean" and len(q) > 1:
                q = normalize(q.mean(axis=0, keepdims=True))
            scores = (unit @ q.T).max(axis=1) if len(unit) else np.zeros(0)
            order = np.argsort(scores if reverse else -scores,
                               kind="stable")[:k]
            yield [str(i) for i in ids[order]], scores[order]

    def _sources(self, label_ids):
        keys, sources = self._held()
        source_of = dict(zip(keys, sources))
        return [source_of[k] for k in label_ids]

    def _within_by_cells(self, ids, min_similarity):
        return None  # its own index has no cells: every pair, exactly

    def _vectors_of(self, kind, value):
        if kind == "prompts":
            raise ValueError(
                "query: this run indexes vectors of no model that embeds "
                "text, so it takes no prompts; query by sample (label) ids "
                "or vectors (a run of an open_clip model, clip_model= or "
                "model='open-clip-torch', is AI search's index and takes "
                "prompts)")
        if kind == "vectors":
            dim = self._run_vectors.dim()
            if dim is not None and np.shape(value)[-1] != dim:
                raise ValueError(
                    f"query: this run holds vectors of size {dim}, got a "
                    f"query vector of size {np.shape(value)[-1]}")
        return super()._vectors_of(kind, value)


class _Prompts(list):
    """Prompts of a query, kept apart from ids and vectors; ``single``
    when the query was one string."""

    single = False


def _split_queries(query, aggregation):
    """``([(kind, value), ...], single)``: the searches a Brain query asks
    for, as :func:`fiftyone_ai_search.search.run_query` fields: one search
    when aggregated, else one per query. As for the Brain's own backends,
    one id, one prompt or one vector is a single query; a list or a 2-D
    array is several, even of one."""
    if isinstance(query, _Prompts):
        kind, items, single = "prompts", list(query), query.single
    elif isinstance(query, str):
        return [("image_ids", [query])], True
    else:
        array = np.asarray(query)
        if array.ndim == 0 or array.ndim > 2:
            raise ValueError(
                f"query: a prompt, a sample (label) id, a list of them, or "
                f"query vectors; got {query!r}")
        if np.issubdtype(array.dtype, np.number):
            if array.ndim == 1:
                return [("vectors", array[np.newaxis])], True
            kind, items, single = "vectors", list(array), False
        else:
            kind, items, single = "image_ids", [str(i) for i in query], False
    if not items:
        raise ValueError("At least one query must be provided")
    if aggregation is not None:
        value = np.stack(items) if kind == "vectors" else items
        return [(kind, value)], True
    return [(kind, np.stack([v]) if kind == "vectors" else [v])
            for v in items], single


def _id_strings(ids):
    """An id or ids as a list of strings."""
    return [ids] if isinstance(ids, str) else [str(i) for i in ids]


def _no_labels(label_ids):
    if label_ids is not None:
        raise ValueError(
            "label_ids: the AI search index holds whole images, not objects"
        )


def _missing(missing, allow_missing, warn_missing):
    if missing and not allow_missing:
        raise ValueError(
            f"Found {len(missing)} ids (e.g. {missing[0]}) that are not in "
            "the index"
        )
    if missing and warn_missing:
        logger.warning("Skipping %d ids that are not in the index",
                       len(missing))


class ClipBrainModel(fom.Model, fom.EmbeddingsMixin, fom.PromptMixin):
    """An AI search open_clip model as a FiftyOne model: it embeds images
    (``dataset.compute_embeddings(model)``) and prompts exactly as AI search
    does.

    Args:
        clip: a :class:`fiftyone_ai_search.embedding.model.ClipModel`
    """

    def __init__(self, clip):
        self.clip = clip

    @property
    def identity(self):
        return self.clip.spec.identity

    @property
    def media_type(self):
        return "image"

    @property
    def ragged_batches(self):
        return True  # images of any size; preprocessed one by one

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self):
        return False

    @preprocess.setter
    def preprocess(self, value):
        pass

    @property
    def has_embeddings(self):
        return True

    @property
    def can_embed_prompts(self):
        return True

    def embed(self, arg):
        return self.embed_all([arg])[0]

    def embed_all(self, args):
        # FiftyOne passes uint8 HWC arrays
        return self.clip.encode_pil([
            a if hasattr(a, "convert") else Image.fromarray(np.asarray(a))
            for a in args
        ])

    def predict(self, arg):
        return self.embed(arg)

    def predict_all(self, args):
        return self.embed_all(args)

    def embed_prompt(self, prompt):
        return self.embed_prompts([prompt])[0]

    def embed_prompts(self, prompts):
        return prompt_vectors(self.clip, list(prompts))
