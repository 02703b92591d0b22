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
in the same order, exact, prompts through the index's own open_clip model.

Distances are cosine distances (``1 - cosine similarity``), as the Brain's
sklearn backend reports them.

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

    # an object index is a Brain run with a patches field (brain key
    # "ai_search_<field>" by default): sort_by_similarity on its patches
    ais.enable_embeddings(dataset, patches_field="ground_truth")
    patches = dataset.to_patches("ground_truth")
    view = patches.sort_by_similarity("a red car", k=25,
                                      brain_key="ai_search_ground_truth")

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

import logging

import numpy as np
from bson import ObjectId

import fiftyone.brain as fb
import fiftyone.core.models as fom
from fiftyone.brain.similarity import (
    DuplicatesMixin,
    Similarity,
    SimilarityConfig,
    SimilarityIndex,
)

from . import duplicates
from . import media
from . import runner
from . import search
from . import state as st
from . import targets
from .embeddings import require_index
from .errors import AISearchError

logger = logging.getLogger(__name__)

#: the name of this backend in ``fiftyone.brain.brain_config``
BACKEND_NAME = "ai_search"

#: the brain key ``enable_embeddings`` registers unless told otherwise
DEFAULT_BRAIN_KEY = "ai_search"

_CONFIG_CLS = "fiftyone_ai_search.brain.AISearchSimilarityConfig"


class BrainKeyTakenError(AISearchError, ValueError):
    """The brain key names another kind of Brain run."""


class AISearchSimilarityConfig(SimilarityConfig):
    """Configuration of the AI search similarity backend.

    What a run records of the model is a label; the model searches use is
    the one the dataset's AI search state names (see
    :mod:`fiftyone_ai_search.state`).

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
    """

    def __init__(self, clip_model=None, pretrained=None, index_backend=None,
                 metric="cosine", **kwargs):
        if metric != "cosine":
            raise ValueError(
                f"metric: the AI search backend compares CLIP embeddings by "
                f"cosine similarity only, got {metric!r}"
            )
        if kwargs.get("roi_field") is not None:
            raise ValueError(
                "roi_field: the AI search backend embeds whole images or the "
                "objects of a patches_field, not regions of interest"
            )
        if (kwargs.get("patches_field") is not None
                and kwargs.get("embeddings_field") is not None):
            raise ValueError(
                "embeddings_field: an object index (patches_field) embeds "
                "its objects itself")
        kwargs["supports_prompts"] = True  # CLIP: text and images align
        super().__init__(**kwargs)
        self.supports_prompts = True
        self.clip_model = clip_model
        self.pretrained = pretrained
        self.index_backend = index_backend
        self.metric = metric

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

    Args:
        config: an :class:`AISearchSimilarityConfig`
    """

    def initialize(self, samples, brain_key):
        """Switches AI search on for the dataset of ``samples`` and brings
        its index up to date (``fob.compute_similarity`` calls this).
        """
        from .embeddings import calculate_embeddings, enable_embeddings

        dataset = media.dataset_of(samples)
        field = self.config.patches_field
        enable_embeddings(
            dataset, model=self.config.clip_model,
            pretrained=self.config.pretrained,
            backend=self.config.index_backend, compute=False,
            brain_key=brain_key or default_brain_key(field),
            embeddings_field=self.config.embeddings_field,
            patches_field=field,
        )
        calculate_embeddings(dataset, wait=True, patches_field=field)
        _label_model(self.config, st.get(targets.target_of(dataset, field)))
        return AISearchSimilarityIndex(samples, self.config, brain_key,
                                       backend=self)

    def cleanup(self, samples, brain_key):
        """``dataset.delete_brain_run(key)``: switches AI search off, as
        :func:`fiftyone_ai_search.disable_embeddings` does."""
        from .embeddings import disable

        target = self._target_of(samples)
        doc = st.get(target)
        if doc and doc.get("enabled") and doc.get("brain_key") == brain_key:
            disable(target, unregister=False)

    def rename(self, samples, brain_key, new_brain_key):
        target = self._target_of(samples)
        doc = st.get(target)
        if doc and doc.get("brain_key") == brain_key:
            st.update(target, brain_key=new_brain_key)

    def _target_of(self, samples):
        return targets.target_of(media.dataset_of(samples),
                                 self.config.patches_field)


class AISearchSimilarityIndex(SimilarityIndex, DuplicatesMixin):
    """The AI search index of a dataset, as a Brain similarity index.

    The index keeps itself in sync with the dataset (by its syncs and the
    refresher), so :meth:`add_to_index` and :meth:`remove_from_index`
    matter until then: a sample removed while it is still in the dataset
    is embedded again by the next sync, and a vector added for a sample is
    kept until its image changes.

    Args:
        samples: the :class:`fiftyone.core.collections.SampleCollection`
        config: an :class:`AISearchSimilarityConfig`
        brain_key: the brain key
        backend (None): an :class:`AISearchSimilarity`
    """

    def __init__(self, samples, config, brain_key, backend=None):
        self._dataset = media.dataset_of(samples)
        #: what the index indexes: the dataset's images, or the objects of
        #: the run's patches field
        self._target = targets.target_of(self._dataset, config.patches_field)
        self._objects = config.patches_field is not None
        self._index_ids = None
        SimilarityIndex.__init__(self, samples, config, brain_key,
                                 backend=backend)
        DuplicatesMixin.__init__(self)

    # -- the index ------------------------------------------------------------

    @property
    def supports_prompts(self):
        # always (CLIP), whatever compute_similarity() concluded from the
        # model it was given (none, with embeddings=False)
        return True

    @property
    def is_external(self):
        # vectors of an embeddings field are the index's (the Brain reads
        # nothing back from the field)
        return self.config.embeddings_field is None

    @property
    def sample_ids(self):
        """The ids of the samples the index holds, in dataset order (None
        for an object index: the Brain then takes the view's)."""
        if self._objects:
            return None
        if self._index_ids is None:
            with self._store() as store:
                held = set(store.get_sample_ids())
            order = media.indexed_samples(self._dataset).values("id")
            self._index_ids = np.array([i for i in order if i in held])
        return self._index_ids

    @property
    def total_index_size(self):
        doc = st.get(self._target)
        if not doc or not doc.get("enabled") or not doc.get("index"):
            return 0
        return runner.index_size(doc["index"])

    def get_model(self):
        """The index's open_clip model, as a FiftyOne model
        (:class:`ClipBrainModel`)."""
        doc = require_index(self._target)
        # (compute_similarity() sets _model to whatever it was given)
        if not isinstance(self._model, ClipBrainModel) or (
                self._model.identity != doc["index"]["model_identity"]):
            self._model = ClipBrainModel(runner.load_index_model(doc["index"]))
        return self._model

    def reload(self):
        self._index_ids = None
        super().reload()

    def cleanup(self):
        """Switches AI search off for the dataset (as
        :func:`fiftyone_ai_search.disable_embeddings`, which also deletes
        this brain run)."""
        from .embeddings import disable_embeddings

        disable_embeddings(self._dataset,
                           patches_field=self.config.patches_field)

    # -- embeddings -----------------------------------------------------------

    def get_embeddings(self, sample_ids=None, label_ids=None,
                       allow_missing=True, warn_missing=False):
        if self._objects:
            return self._object_embeddings(sample_ids, label_ids,
                                           allow_missing, warn_missing)
        _no_labels(label_ids)
        wanted = (list(self.sample_ids) if sample_ids is None
                  else _id_strings(sample_ids))
        with self._store() as store:
            ids, vectors = store.get_vectors(wanted)
        row = {sample_id: i for i, sample_id in enumerate(ids)}
        missing = [i for i in wanted if i not in row]
        _missing(missing, allow_missing, warn_missing)
        keep = [i for i in wanted if i in row]
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)
        return vectors[[row[i] for i in keep]], np.array(keep), None

    def _object_embeddings(self, sample_ids, label_ids, allow_missing,
                           warn_missing):
        """:meth:`get_embeddings` of an object index: of the given labels,
        of the objects of the given samples, else of all it holds."""
        from .object_sync import SOURCE_KEY

        with self._store() as store:
            if label_ids is not None:
                wanted = _id_strings(label_ids)
            elif sample_ids is not None:
                wanted = store.keys_where(SOURCE_KEY, _id_strings(sample_ids))
            else:
                wanted = None
            ids, vectors = store.get_vectors(wanted)
            payloads = store.get_payloads(ids)
        if wanted is not None:
            held = set(ids)
            _missing([i for i in wanted if i not in held], allow_missing,
                     warn_missing)
        sources = [payloads[i].get(SOURCE_KEY) for i in ids]
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)
        return vectors, np.array(sources), np.array(ids)

    def add_to_index(self, embeddings, sample_ids, label_ids=None,
                     overwrite=True, allow_existing=True,
                     warn_existing=False, reload=True):
        """Stores the given embeddings of samples of the dataset (of
        objects, by their ``label_ids``, for an object index; of the
        index's model: they are kept until the sample's image, or the
        object's box, changes)."""
        from .object_sync import write_given_objects
        from .sync import write_given

        if self._objects:
            if label_ids is None:
                raise ValueError("label_ids: an object index stores objects; "
                                 "give the label id of each embedding")
            keys, write = [str(i) for i in label_ids], write_given_objects
        else:
            _no_labels(label_ids)
            keys, write = [str(i) for i in sample_ids], write_given
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) != len(keys):
            raise ValueError(
                f"embeddings: expected one vector per id ({len(keys)}), got "
                f"an array of shape {embeddings.shape}"
            )
        doc = require_index(self._target)
        with self._store(doc) as store:
            existing = set(store.get_payloads(keys))
            if existing and not allow_existing and not overwrite:
                raise ValueError(
                    f"Found {len(existing)} ids (e.g. {next(iter(existing))}) "
                    "that already exist in the index"
                )
            if existing and warn_existing:
                logger.warning("%s %d ids that already exist in the index",
                               "Overwriting" if overwrite else "Skipping",
                               len(existing))
            if not overwrite:
                keep = [i for i, k in enumerate(keys) if k not in existing]
                keys = [keys[i] for i in keep]
                embeddings = embeddings[keep]
            write(self._target, store, keys, embeddings)
        if reload:
            self.reload()

    def remove_from_index(self, sample_ids=None, label_ids=None,
                          allow_missing=True, warn_missing=False,
                          reload=True):
        if self._objects:
            sample_ids, label_ids = [str(i) for i in (label_ids or [])], None
        _no_labels(label_ids)
        sample_ids = [str(i) for i in (sample_ids or [])]
        with self._store() as store:
            held = set(store.get_payloads(sample_ids))
            _missing([i for i in sample_ids if i not in held], allow_missing,
                     warn_missing)
            if held:
                store.delete(list(held))
        if reload:
            self.reload()

    # -- queries --------------------------------------------------------------

    def _parse_query(self, query):
        # prompts are embedded by the index's model in the search itself
        # (cached, and checked against the index), not by get_model() here
        if query is not None and not isinstance(query, np.ndarray):
            items = [query] if isinstance(query, str) else list(query)
            if items and isinstance(items[0], str) and not ObjectId.is_valid(
                    items[0]):
                return _Prompts(items)
        return super()._parse_query(query)

    def _kneighbors(self, query=None, k=None, reverse=False,
                    aggregation=None, return_dists=False):
        if query is None:
            raise ValueError(
                "The AI search backend does not compute the neighbours of "
                "every sample at once; query by ids or vectors"
            )
        if aggregation is not None and aggregation not in search.AGGREGATIONS:
            raise ValueError(
                f"aggregation must be one of {search.AGGREGATIONS} or None, "
                f"got {aggregation!r}"
            )
        queries, single = _split_queries(query, aggregation)
        if reverse and aggregation == "max" and len(queries[0][1]) > 1:
            raise ValueError(
                "reverse=True needs aggregation='mean' when several queries "
                "are given (the least similar by best score is not defined)"
            )
        sample_ids, label_ids, dists = [], [], []
        for kind, value in queries:
            ids, scores = search.run_query(
                self.view, limit=k, reverse=reverse,
                aggregation=aggregation or "mean",
                patches_field=self.config.patches_field, **{kind: value},
            )
            if self._objects:
                label_ids.append(ids)
                ids = self._sources(ids)
            sample_ids.append(ids)
            dists.append([1.0 - s for s in scores])
        label_ids = label_ids or None
        if single:
            sample_ids, dists = sample_ids[0], dists[0]
            label_ids = label_ids and label_ids[0]
        if return_dists:
            return sample_ids, label_ids, dists
        return sample_ids, label_ids

    def _sources(self, label_ids):
        """The ids of the samples holding these objects, in their order."""
        return search.sources_of(require_index(self._target), label_ids)

    def _radius_neighbors(self, query=None, thresh=None, return_dists=False):
        # the Brain maps rows to current_sample_ids (current_label_ids of an
        # object index): all must be there (a sync may have removed some
        # since: reload() then)
        if self._objects:
            ids = list(self.current_label_ids)
            vectors, _, _ = self.get_embeddings(label_ids=ids,
                                                allow_missing=False)
        else:
            ids = list(self.current_sample_ids)
            vectors, _, _ = self.get_embeddings(ids, allow_missing=False)
        full = query is None
        if full:
            queries, single = vectors, False
        else:
            (pairs, single) = _split_queries(query, None)
            queries = np.concatenate([self._vectors_of(kind, value)
                                      for kind, value in pairs])
        inds, sims = duplicates.neighbors_within(
            vectors, 1.0 - thresh, queries=queries)
        dists = [1.0 - s for s in sims]
        if full:
            return (inds, dists) if return_dists else inds
        sample_ids = [[ids[i] for i in row] for row in inds]
        if single:
            sample_ids, dists = sample_ids[0], dists[0]
        return (sample_ids, None, dists) if return_dists else (sample_ids, None)

    def _vectors_of(self, kind, value):
        if kind == "vectors":
            return search._normalize(np.atleast_2d(value))
        if kind == "image_ids":
            ids = dict(label_ids=value) if self._objects else dict(
                sample_ids=value)
            return self.get_embeddings(allow_missing=False, **ids)[0]
        return search.prompt_vectors(self.get_model().clip, value)

    # -- helpers --------------------------------------------------------------

    def _store(self, doc=None):
        # kept open for the next call (see VectorStore.session)
        store = runner.open_ref((doc or require_index(self._target))["index"])
        return store.session(keep_open=True)

    @classmethod
    def _from_dict(cls, d, samples, config, brain_key):
        return cls(samples, config, brain_key)


class _Prompts(list):
    """Prompts of a query, kept apart from ids and vectors."""


def _split_queries(query, aggregation):
    """``([(kind, value), ...], single)``: the searches a Brain query asks
    for, as :func:`fiftyone_ai_search.search.run_query` fields: one search
    when aggregated or for one query, else one per query."""
    if isinstance(query, _Prompts):
        kind, items = "prompts", list(query)
    elif isinstance(query, str):
        return [("image_ids", [query])], True
    else:
        array = np.asarray(query)
        if np.issubdtype(array.dtype, np.number):
            if array.ndim == 1:
                return [("vectors", array[np.newaxis])], True
            kind, items = "vectors", list(array)
        else:
            kind, items = "image_ids", [str(i) for i in query]
    if not items:
        raise ValueError("At least one query must be provided")
    if aggregation is not None or len(items) == 1:
        value = np.stack(items) if kind == "vectors" else items
        return [(kind, value)], True
    return [(kind, np.stack([v]) if kind == "vectors" else [v])
            for v in items], False


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
        clip: a :class:`fiftyone_ai_search.model.ClipModel`
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
        from PIL import Image

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
        return search.prompt_vectors(self.clip, list(prompts))


# -- registration ------------------------------------------------------------


def register_backend():
    """Adds this backend to ``fiftyone.brain.brain_config`` of this process,
    so that ``fob.compute_similarity(..., backend="ai_search")`` finds it.
    Importing this module does it; other processes may declare it in the
    Brain's config instead (see the README)."""
    fb.brain_config.similarity_backends.setdefault(
        BACKEND_NAME, {"config_cls": _CONFIG_CLS})


register_backend()


def default_brain_key(patches_field=None):
    """The brain key of an index unless told otherwise: ``"ai_search"``
    for images, ``"ai_search_<field>"`` for the objects of a field."""
    if patches_field is None:
        return DEFAULT_BRAIN_KEY
    tail = "".join(c if c.isalnum() or c == "_" else "_"
                   for c in patches_field)
    return f"{DEFAULT_BRAIN_KEY}_{tail}"


def check_brain_key(dataset, brain_key, patches_field=None):
    """Raises if ``brain_key`` names a Brain run that is not AI search's
    index of the same thing (the images, or the objects of
    ``patches_field``)."""
    if not isinstance(brain_key, str) or not brain_key.isidentifier():
        raise ValueError(
            f"brain_key must be a name of letters, digits and underscores, "
            f"got {brain_key!r}"
        )
    if brain_key in dataset.list_brain_runs():
        config = dataset.get_brain_info(brain_key).config
        if not isinstance(config, AISearchSimilarityConfig):
            raise BrainKeyTakenError(
                f"brain_key: '{brain_key}' is a {config.method} brain run of "
                f"dataset '{dataset.name}'; pass another brain_key to "
                "enable_embeddings or delete that run"
            )
        if config.patches_field != patches_field:
            of = (f"the objects of '{config.patches_field}'"
                  if config.patches_field else "the images")
            raise BrainKeyTakenError(
                f"brain_key: '{brain_key}' is the AI search run of {of} of "
                f"dataset '{dataset.name}'; pass another brain_key")


def register(target, doc, brain_key):
    """Registers (or updates) the Brain run of a target's AI search index
    (of a dataset's images, or of the objects of one of its fields) under
    ``brain_key``, and moves it there from a former key."""
    dataset, field = targets.dataset_of(target), targets.field_of(target)
    check_brain_key(dataset, brain_key, field)
    former = doc.get("brain_key")
    if former and former != brain_key:
        unregister(dataset, former)
    config = AISearchSimilarityConfig(index_backend=doc.get("backend"),
                                      patches_field=field)
    _label_model(config, doc)
    method = config.build()
    if brain_key in dataset.list_brain_runs():
        method.update_run_config(dataset, brain_key, config)
    else:
        method.register_run(dataset, brain_key, overwrite=False)
    # always (a few bytes): a run registered by a process killed before it
    # saved its results would otherwise never load
    method.save_run_results(
        dataset, brain_key,
        AISearchSimilarityIndex(dataset, config, brain_key, backend=method),
    )
    if former != brain_key:
        st.update(target, brain_key=brain_key)


def unregister(dataset, brain_key):
    """Deletes the Brain run, leaving the index alone (the caller's)."""
    if brain_key in dataset.list_brain_runs():
        config = dataset.get_brain_info(brain_key).config
        if isinstance(config, AISearchSimilarityConfig):
            AISearchSimilarity.delete_run(dataset, brain_key, cleanup=False)


def _label_model(config, doc):
    target = doc or {}
    config.clip_model = target.get("model")
    config.pretrained = target.get("pretrained")
