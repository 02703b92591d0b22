"""Public SDK: ``perform_ai_search`` — by prompt, by example images, diverse.

Scores are cosine similarities between L2-normalised CLIP embeddings. Results
are exact: the same as a brute-force top-k over the stored vectors of the
search scope.
"""

from __future__ import annotations

import collections as _collections
import logging
import math
import threading
from typing import TYPE_CHECKING

import numpy as np
from bson import ObjectId

from . import results as colls
from . import diverse
from .index import media
from .sync import images as sync
from .index import state as st
from .index import targets
from . import validate
from .index import indexes
from .index.indexes import model_label, read_index, require_index
from .store import IndexMismatchError, IndexNotFoundError
from .store import cells as cl
from .store import ranks

if TYPE_CHECKING:  # for annotations only
    import os
    from collections.abc import Sequence

    import fiftyone.core.collections as foc
    import PIL.Image

logger = logging.getLogger(__name__)

#: how many more hits than ``limit x total / scope size`` a search of a
#: large scope fetches from the whole index, to keep what is in scope
OVER_FETCH = 1.5

#: what a hit fetched by over-fetching costs, relative to an id of an id
#: filter (measured, see :func:`_use_id_filter`)
HIT_COST = 1.5

#: never filter more ids than this inside Qdrant, whatever
#: :func:`_use_id_filter` says (a bound on the size of one request)
MAX_FILTERED_SCOPE = 50_000

#: default weight of a negative prompt, see :func:`prompt_vectors`
NEGATIVE_WEIGHT = 0.5

AGGREGATIONS = ("max", "mean")


def perform_ai_search(
    samples: foc.SampleCollection,
    prompt: str | None = None,
    image_id: str | Sequence[str] | None = None,
    method: str | None = None,
    limit: int = 100,
    clustering_method: str | None = None,
    num_clusters: int | None = None,
    image_id_scope: Sequence[str] | None = None,
    threshold: float | None = None,
    negative_prompt: str | None = None,
    image: str | os.PathLike | PIL.Image.Image | None = None,
    aggregation: str = "max",
    negative_weight: float = NEGATIVE_WEIGHT,
    seed: int = 0,
    patches_field: str | None = None,
    label_id: str | Sequence[str] | None = None,
    exact: bool = False,
) -> str | None:
    """Searches a dataset (or a view of it) and keeps the results as the
    dataset's temporary collection.

    With ``patches_field`` (or given a patches view), it searches the
    objects of that label field instead (its object index, see
    :func:`~fiftyone_ai_search.embeddings.enable_embeddings`), and the
    collection is a patches view of the objects found, best first.

    Exactly one kind of query is given:

    -   ``prompt``: natural language. Commas split it into several prompts;
        a sample's score is its best score over them. ``negative_prompt``
        (commas too) pushes away what it describes: each prompt's query
        vector becomes ``normalize(p - negative_weight * n)``, with ``p`` the
        prompt's embedding and ``n`` the normalised mean embedding of the
        negative prompts, so scores stay cosines.
    -   ``image_id``: one or more sample ids of the dataset ("more like
        these"). ``aggregation="max"`` (default) scores each sample by its
        best similarity to any of them (the union of their neighbours);
        ``"mean"`` searches with their mean embedding. The reference samples
        themselves are part of the results when in scope (score 1.0 for
        ``"max"``, so they come first).
    -   ``label_id``: object search: one or more label ids of objects of
        the field ("more objects like these"), aggregated as ``image_id``.
    -   ``image``: an image from outside the dataset, a file path or a
        ``PIL.Image``.
    -   ``method``: diverse sampling, no query: ``"centroids"`` or
        ``"random"``, over ``clustering_method`` ``"kmeans"`` (default, with
        ``num_clusters``) or ``"dbscan"``; see
        :mod:`fiftyone_ai_search.diverse`. Results are in pick order
        (round-robin over clusters), scored by similarity to their cluster
        centre; the same call gives the same result.

    Examples::

        import fiftyone_ai_search as ais

        name = ais.perform_ai_search(dataset, prompt="a red car, a red truck")
        view = ais.get_collection(dataset, name)

        ais.perform_ai_search(dataset.match_tags("unlabeled"),
                              prompt="a dog", negative_prompt="a cartoon")
        ais.perform_ai_search(dataset, image_id=[id1, id2], limit=50)
        ais.perform_ai_search(dataset, method="centroids", limit=200,
                              clustering_method="kmeans", num_clusters=20)

        # objects: a patches view of the boxes that best match
        name = ais.perform_ai_search(dataset, prompt="a damaged bumper",
                                     patches_field="ground_truth")
        patches = ais.get_collection(dataset, name)
        ais.perform_ai_search(patches, label_id=patches.first().id)

    Args:
        samples: a :class:`fiftyone.core.dataset.Dataset` or a view of it:
            the search scope
        prompt (None): a text prompt; commas separate several
        image_id (None): a sample id or a list of them
        method (None): ``"centroids"`` or ``"random"`` (diverse search)
        limit (100): the most results
        clustering_method (None): ``"kmeans"`` or ``"dbscan"`` (diverse)
        num_clusters (None): the k-means cluster count (diverse, kmeans)
        image_id_scope (None): sample ids to search within (intersected with
            ``samples``)
        threshold (None): only results scoring ``>= threshold``, in [-1, 1]
        negative_prompt (None): what to push away (prompt search)
        image (None): a file path or ``PIL.Image`` to search by
        aggregation ("max"): ``"max"`` or ``"mean"`` (several references)
        negative_weight (0.5): how hard a negative prompt pushes
        seed (0): the random seed of diverse search
        patches_field (None): search the objects of this label field
            (default: the field of ``samples`` when it is a patches view;
            else the images)
        label_id (None): a label id or a list of them (object search)
        exact (False): scan every image of the scope even where a large
            index searches approximately (see ``get_status(dataset)
            ["approximate"]`` for the recall it measured); slower

    Returns:
        the name of the collection holding the results, or None when nothing
        matched (the previous results are then left as they were)

    Raises:
        ValueError: for invalid arguments; the message names the argument
        AISearchNotEnabledError: if AI search is off for the dataset
        IndexNotReadyError: if the first indexing has not finished
        fiftyone_ai_search.store.IndexMismatchError: if the index does not
            hold embeddings of the model it is recorded with (never served)
    """
    query = _Query.validate(
        prompt=prompt, image_id=image_id, method=method, limit=limit,
        clustering_method=clustering_method, num_clusters=num_clusters,
        threshold=threshold, negative_prompt=negative_prompt, image=image,
        aggregation=aggregation, negative_weight=negative_weight, seed=seed,
        image_id_scope=image_id_scope, label_id=label_id, exact=exact,
    )
    dataset = media.dataset_of(samples)  # a patches view: its source dataset
    field = _patches_field(samples, patches_field, query)
    target = targets.target_of(dataset, field)
    doc = require_index(target)
    if field is None:
        scope = _make_scope(samples, query.image_id_scope)
        if query.image_ids:
            _check_known_ids(dataset, query.image_ids, "image_id")
    else:
        scope = _object_scope(samples, target, query.image_id_scope)

    ids, scores, doc = _search(target, doc, query, _live(scope, target, doc))

    if not ids:
        return None
    described = query.describe(scope)
    if field is not None:
        described["patches_field"] = field
    described["model"] = model_label(doc["index"])
    if doc.get("build"):
        # searches use the complete index until the rebuild switches over
        described["rebuilding"] = model_label(doc["build"])
        logger.warning(
            "AI search of '%s' is being rebuilt (%s); this search used the "
            "complete index of %s", dataset.name, described["rebuilding"],
            described["model"],
        )
    return colls.write_collection(
        dataset, colls.TEMPORARY_COLLECTION, ids, scores, query=described,
        patches_field=field,
        source_ids=None if field is None else sources_of(doc, ids),
    )


def sources_of(doc, label_ids):
    """The ids of the samples holding these objects (their vectors'
    ``source_id``), in their order."""
    from .sync.objects import SOURCE_KEY

    store = indexes.open_ref(doc["index"])
    with store.session(keep_open=True):
        payloads = store.get_payloads(label_ids)
    return [payloads.get(i, {}).get(SOURCE_KEY) for i in label_ids]


def _patches_field(samples, patches_field, query):
    """The label field whose objects a search searches (None: the images):
    ``patches_field``, or that of a patches view whose field has object
    search on (a patches view of another field searches the images its
    patches belong to)."""
    field = validate.field_name(patches_field)
    view_field = getattr(samples, "_patches_field", None) \
        if getattr(samples, "_is_patches", False) else None
    if field is not None and view_field is not None and field != view_field:
        raise ValueError(
            f"patches_field: the view holds patches of '{view_field}', not "
            f"'{field}'")
    if field is None and view_field is not None and (
            query.label_ids is not None or view_field in st.object_fields(
                targets.dataset_key(media.dataset_of(samples)))):
        field = view_field
    if field is None and query.label_ids is not None:
        raise ValueError(
            "label_id: give patches_field=... (the label field the objects "
            "are of), or search a patches view of it")
    if field is not None and query.image_ids is not None:
        raise ValueError(
            "image_id: object search takes reference objects (label_id=...) "
            "or an image (image=...), not sample ids")
    return field


def _object_scope(samples, objects, sample_scope):
    """The objects (a :class:`~fiftyone_ai_search.index.targets.Objects`) to
    search within: None for all the object index holds, else a
    :class:`_ViewScope` of patches (a patch's id is its label's), or the
    objects a view of samples shows (:class:`_ObjectsOfView`)."""
    dataset = objects.dataset
    is_patches = getattr(samples, "_is_patches", False)
    if sample_scope is not None:
        _check_known_ids(dataset, sample_scope, "image_id_scope")
        if is_patches:
            return _ViewScope(samples.match(
                {"sample_id": {"$in": [ObjectId(i) for i in sample_scope]}}))
        return _ObjectsOfView(samples.select(sample_scope), objects)
    if is_patches:
        return _ViewScope(samples)
    if samples is dataset and not media.is_grouped(dataset):
        return None
    return _ObjectsOfView(samples, objects)


def _live(scope, target, doc):
    """``scope``, or, for a search of all the index holds (None) while
    samples deleted since the last sync still have vectors in it, the
    samples (or objects) the dataset still holds: a deleted sample never
    takes the place of a live one in the results (the search fills its
    limit as for any scope, asking MongoDB which hits still exist)."""
    if scope is not None or not sync.deletions_pending(target, doc):
        return scope
    live = media.indexed_samples(targets.dataset_of(target))
    if isinstance(target, targets.Objects):
        return _ObjectsOfView(live, target)
    return _ViewScope(live)


def _search(target, doc, query, scope):
    """Runs ``query`` on the index searches use of ``target`` (a dataset,
    or the objects of one of its fields); returns ``(ids, scores,
    doc)``. A rebuild that switches over and drops the former index during
    the search makes it run again on the new one."""
    def run(doc, store):
        # not closed: an embedded index stays open for the next search
        # while nobody else wants it (see VectorStore.session(keep_open=True))
        ids, scores = query.run(target, doc["index"], store, scope)
        return ids, scores, doc

    return read_index(target, doc, run)


def run_query(samples, patches_field=None, **fields):
    """Runs a search on the index of the dataset of ``samples``, within
    ``samples``, and returns ``(ids, scores)`` best first, keeping no
    collection: the search :func:`perform_ai_search` runs, for the
    FiftyOne Brain backend.

    Args:
        samples: a dataset or a view of it: the search scope
        patches_field (None): search the object index of this label field
            (the ids are then label ids; ``image_ids`` are label ids too)
        **fields: the query: ``prompts`` (a list, not split at commas),
            ``image_ids``, ``vectors``, ``limit`` (None: the whole scope),
            ``aggregation``, ``reverse``
    """
    dataset = media.dataset_of(samples)
    target = targets.target_of(dataset, patches_field)
    doc = require_index(target)
    if patches_field is None:
        scope = _make_scope(samples, None)
    else:
        scope = _object_scope(samples, target, None)
        if "image_ids" in fields:
            fields["label_ids"] = fields.pop("image_ids")
    scope = _live(scope, target, doc)
    if fields.get("limit") is None:
        fields["limit"] = max(1, len(scope) if scope is not None
                              else indexes.index_size(doc["index"]))
    ids, scores, _ = _search(target, doc, _Query(**fields), scope)
    return ids, scores


def check_index_model(store, ref, model=None):
    """Checks that ``store`` holds vectors of the model its state reference
    ``ref`` names (and of ``model``, the one about to encode queries): a
    search never compares vectors of two models.

    Raises:
        IndexNotFoundError: if the index is gone (replaced meanwhile)
        IndexMismatchError: if it holds another model's vectors
    """
    info = store.info()
    if info is None:
        raise IndexNotFoundError(f"The AI search index '{store.name}' is gone")
    identities = {info.model_identity, ref["model_identity"]}
    if model is not None:
        identities.add(model.spec.identity)
    if len(identities) != 1:
        raise IndexMismatchError(
            f"The AI search index '{store.name}' holds embeddings of "
            f"{info.model!r} ({info.pretrained!r}), not of the model "
            f"{model_label(ref)} it is recorded with: refusing to search it. "
            "Rebuild it: calculate_embeddings(dataset, force=True)"
        )


# -- validation ---------------------------------------------------------------


def _split(text, arg):
    if not isinstance(text, str):
        raise ValueError(f"{arg} must be a string, got {type(text).__name__}")
    parts = [p.strip() for p in text.split(",")]
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError(f"{arg} is empty")
    return parts


def _id_list(value, arg, kind="sample"):
    values = [value] if isinstance(value, (str, ObjectId)) else value
    try:
        values = list(values)
    except TypeError:
        raise ValueError(
            f"{arg} must be a {kind} id or a list of them, got {value!r}"
        ) from None
    bad = [v for v in values if not _is_object_id(v)]
    if bad:
        raise ValueError(f"{arg}: not {kind} ids: {bad[:5]}")
    if not values:
        raise ValueError(f"{arg} is empty")
    # as FiftyOne spells ids (lower-case str): an ObjectId (sample["_id"]),
    # an np.str_ or upper-case hex would not match them
    return list(dict.fromkeys(str(v).lower() for v in values))  # order kept


def _is_object_id(value):
    if isinstance(value, ObjectId):
        return True
    return (isinstance(value, str) and len(value) == 24
            and all(c in "0123456789abcdef" for c in value.lower()))


class _Query:
    """A validated search request; validation touches nothing, so nothing
    is written when it fails.

    ``vectors`` (query vectors given as such) and ``reverse`` (least
    similar first) serve the FiftyOne Brain backend
    (:mod:`fiftyone_ai_search.brain`), which runs its queries through
    :func:`run_query` so that they are the searches of
    :func:`perform_ai_search`.
    """

    prompts = None
    negatives = ()
    image_ids = None
    #: object search by reference objects: their label ids
    label_ids = None
    image = None
    vectors = None
    method = None
    clustering_method = "kmeans"
    num_clusters = None
    limit = 100
    threshold = None
    aggregation = "max"
    negative_weight = NEGATIVE_WEIGHT
    seed = 0
    image_id_scope = None
    reverse = False
    #: search every point, whatever the index's cells (see store/cells.py)
    exact = False

    def __init__(self, **fields):
        for name, value in fields.items():
            if not hasattr(type(self), name):
                raise TypeError(f"unknown query field {name!r}")
            setattr(self, name, value)

    @classmethod
    def validate(cls, prompt, image_id, method, limit, clustering_method,
                 num_clusters, threshold, negative_prompt, image, aggregation,
                 negative_weight, seed, image_id_scope, label_id=None,
                 exact=False):
        given = [name for name, v in (("prompt", prompt),
                                      ("image_id", image_id),
                                      ("label_id", label_id),
                                      ("image", image),
                                      ("method", method)) if v is not None]
        if len(given) != 1:
            kinds = ("prompt, image_id, image or method" if label_id is None
                     else "prompt, image_id, label_id, image or method")
            raise ValueError(
                f"Give exactly one of {kinds} (diverse "
                f"search); got {', '.join(given) if given else 'none'}"
            )
        limit = validate.limit(limit)
        threshold = validate.optional_number(threshold, "threshold", -1.0, 1.0)
        if method is not None:
            validate.choice(method, "method", diverse.METHODS)
        if clustering_method is not None:
            validate.choice(clustering_method, "clustering_method",
                            diverse.CLUSTERING_METHODS)
        if clustering_method is not None and method is None:
            raise ValueError("clustering_method applies to diverse search "
                             "only (method=...)")
        if num_clusters is not None:
            if (clustering_method or "kmeans") != "kmeans" or method is None:
                raise ValueError(
                    "num_clusters applies to diverse search with "
                    "clustering_method='kmeans' only"
                )
            num_clusters = validate.integer(num_clusters, "num_clusters", 1,
                                            validate.MAX_LIMIT)
        if negative_prompt is not None and prompt is None:
            raise ValueError("negative_prompt applies to prompt search only")
        validate.choice(aggregation, "aggregation", AGGREGATIONS)
        # below 0 it would pull towards the negative prompt
        negative_weight = validate.number(negative_weight, "negative_weight", 0.0)
        seed = validate.seed(seed)
        if image is not None:
            image = validate.image(image)

        return cls(
            prompts=_split(prompt, "prompt") if prompt is not None else None,
            negatives=(_split(negative_prompt, "negative_prompt")
                       if negative_prompt is not None else []),
            image_ids=(_id_list(image_id, "image_id")
                       if image_id is not None else None),
            label_ids=(_id_list(label_id, "label_id", "label")
                       if label_id is not None else None),
            image=image,
            method=method,
            clustering_method=clustering_method or "kmeans",
            num_clusters=num_clusters,
            limit=limit,
            threshold=threshold,
            aggregation=aggregation,
            negative_weight=negative_weight,
            seed=seed,
            image_id_scope=(_id_list(image_id_scope, "image_id_scope")
                            if image_id_scope is not None else None),
            exact=validate.boolean(exact, "exact"),
        )

    def run(self, target, ref, store, scope):
        """Returns ``(sample_ids, scores)``, searching ``store``, the index
        of the state reference ``ref``."""
        if self.method is not None:
            check_index_model(store, ref)
            return _diverse(store, scope, self)

        references = (self.image_ids if self.label_ids is None
                      else self.label_ids)
        if references is not None or self.vectors is not None:
            # one opening of the index for the references and the search
            with store.session(keep_open=True):
                check_index_model(store, ref)
                if self.vectors is not None:
                    vectors = _normalize(np.atleast_2d(self.vectors))
                else:
                    vectors = _reference_vectors(target, store, references)
                return self._nearest(store, vectors, scope)

        # the model runs before the index is opened: never hold it meanwhile
        model = indexes.load_index_model(ref)
        if self.prompts is not None:
            vectors = prompt_vectors(model, self.prompts, self.negatives,
                                     self.negative_weight)
        else:
            vectors = _image_vector(model, self.image)
        with store.session(keep_open=True):
            check_index_model(store, ref, model)
            return self._nearest(store, vectors, scope)

    def _nearest(self, store, vectors, scope):
        if self.aggregation == "mean" and len(vectors) > 1:
            vectors = _normalize(vectors.mean(axis=0, keepdims=True))
        if not self.reverse:
            return nearest(store, vectors, self.limit, scope, self.threshold,
                           keep_open=True, exact=self.exact)
        # the least similar to v are the most similar to -v (cosine)
        ids, scores = nearest(store, -vectors, self.limit, scope,
                              keep_open=True, exact=self.exact)
        return ids, [-s for s in scores]

    def describe(self, scope):
        """What produced a collection (kept with it, shown in the App)."""
        # a large view is searched without counting it: its size is
        # recorded when the search counted it
        d = {"limit": self.limit, "threshold": self.threshold,
             "scope_size": None if scope is None else _known_size(scope)}
        if self.method is not None:
            d.update(mode="diverse", method=self.method,
                     clustering_method=self.clustering_method,
                     num_clusters=self.num_clusters, seed=self.seed)
        elif self.prompts is not None:
            d.update(mode="prompt", prompt=", ".join(self.prompts),
                     negative_prompt=", ".join(self.negatives) or None)
        elif self.image_ids is not None:
            d.update(mode="image", image_id=self.image_ids,
                     aggregation=self.aggregation)
        elif self.label_ids is not None:
            d.update(mode="object", label_id=self.label_ids,
                     aggregation=self.aggregation)
        else:
            d.update(mode="image", image=str(getattr(self.image, "filename", "")
                                             or self.image)[:500])
        return d


# -- readiness and scope ---------------------------------------------------------


def _make_scope(samples, image_id_scope):
    """The samples to search within: None for all that the index holds, a
    list of sample ids, or a :class:`_ViewScope`.

    The index of a grouped dataset holds all its image slices, so the
    dataset itself is a scope (its active slice); a patches view searches
    the samples its patches belong to (see
    :func:`fiftyone_ai_search.index.media.resolve`).
    """
    dataset, view = media.resolve(samples)
    if image_id_scope is not None:
        _check_known_ids(dataset, image_id_scope, "image_id_scope")
        if view is None:
            return image_id_scope
        # in the view's order
        return view.select(image_id_scope).values("id")
    if view is None:
        return None
    return _ViewScope(view)


class _ViewScope:
    """A view of the dataset as a search scope, its ids read only if needed.

    Reading all ids of a large view costs more than the search itself
    (measured: 50k ids of a 100k dataset ~0.5 s, a search ~25 ms), so a
    large view is searched like any large scope, by over-fetching from the
    whole index (:func:`_over_fetch`), and MongoDB is asked which of the
    hits are in the view (an ``_id`` lookup within the view's pipeline).
    """

    def __init__(self, view):
        self.view = view
        self._size = None
        self._ids = None
        self._member = {}

    @property
    def size(self):
        """The number of samples of the view if counted already, else
        None."""
        return self._size

    def __len__(self):
        if self._size is None:
            self._size = self.view.count()
        return self._size

    def ids(self):
        """All sample ids of the view, in its order."""
        if self._ids is None:
            self._ids = self.view.values("id")
            self._size = len(self._ids)
        return self._ids

    def contains(self, sample_ids):
        """The subset of ``sample_ids`` in the view."""
        unknown = [i for i in sample_ids if i not in self._member]
        if unknown:
            found = set(self.view.select(unknown).values("id"))
            for i in unknown:
                self._member[i] = i in found
        return {i for i in sample_ids if self._member[i]}


class _ObjectsOfView(_ViewScope):
    """The objects of the samples of a view as a search scope: their label
    ids, read from the samples (a patches view of the whole view would
    first write a patch of each of its objects)."""

    def __init__(self, view, objects):
        super().__init__(view)
        self.objects = objects

    def __len__(self):
        if self._size is None:
            self._size = self.objects.count(self.view)
        return self._size

    def ids(self):
        if self._ids is None:
            self._ids = (self.view.values(f"{self.objects.path}.id",
                                          unwind=True)
                         if self.objects.exists else [])
            self._size = len(self._ids)
        return self._ids

    def contains(self, sample_ids):
        unknown = [i for i in sample_ids if i not in self._member]
        if unknown and self.objects.exists:
            found = set(self.view.select_labels(
                ids=unknown, fields=self.objects.field
            ).values(f"{self.objects.path}.id", unwind=True))
            for i in unknown:
                self._member[i] = i in found
        return {i for i in sample_ids if self._member.get(i)}


def _known_size(scope):
    return scope.size if isinstance(scope, _ViewScope) else len(scope)


def _check_known_ids(dataset, ids, arg):
    # select() matches on _id (indexed); F("_id").is_in() would be an $expr
    # that scans the whole collection (~65 ms at 100k samples)
    # (of any image slice of a grouped dataset, not only the active one)
    found = set(media.indexed_samples(dataset).select(ids).values("id"))
    unknown = [i for i in ids if i not in found]
    if unknown:
        raise ValueError(
            f"{arg}: {len(unknown)} sample id(s) not in dataset "
            f"'{dataset.name}': {unknown[:5]}"
        )


# -- query vectors -------------------------------------------------------------


def _normalize(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class _TextCache:
    """Text embeddings of recent prompts, per model (prompts repeat: the
    App re-runs a search as its limit or threshold changes)."""

    def __init__(self, size=1024):
        self.size = size
        self._items = _collections.OrderedDict()
        self._lock = threading.Lock()

    def encode(self, model, prompts):
        keys = [(model.spec.identity, p) for p in prompts]
        with self._lock:
            missing = [k[1] for k in keys if k not in self._items]
        if missing:
            vectors = model.encode_text(missing)
            with self._lock:
                for p, v in zip(missing, vectors):
                    self._items[(model.spec.identity, p)] = v
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        with self._lock:
            for k in keys:
                self._items.move_to_end(k)
            return np.stack([self._items[k] for k in keys])


_TEXT_CACHE = _TextCache()


def prompt_vectors(model, prompts, negatives=(), negative_weight=NEGATIVE_WEIGHT):
    """Query vectors of prompts, with negative prompts subtracted.

    Returns:
        an ``(len(prompts), dim)`` array of unit vectors
    """
    vectors = _TEXT_CACHE.encode(model, list(prompts))
    if negatives:
        n = _normalize(_TEXT_CACHE.encode(model, list(negatives)).mean(axis=0))
        vectors = _normalize(vectors - negative_weight * n)
    return vectors


def _reference_vectors(target, store, image_ids):
    """The stored vectors of the reference samples (or objects, for an
    object index's ``target``)."""
    ids, vectors = store.get_vectors(image_ids)
    missing = [i for i in image_ids if i not in set(ids)]
    if missing:
        failed = {f["sample_id"]: f["reason"] for f in st.get_failures(target)}
        objects = isinstance(target, targets.Objects)
        unknown = (f"not an object of '{targets.field_of(target)}', or not "
                   "embedded yet" if objects else "not embedded yet")
        why = "; ".join(
            f"{i}: " + (f"its image failed ({failed[i]})" if i in failed
                        else unknown)
            for i in missing[:5]
        )
        raise ValueError(
            f"{'label_id' if objects else 'image_id'}: no embedding for {why}")
    return np.asarray(vectors, dtype=np.float32)


def _image_vector(model, image):
    from .embedding.pipeline import embed_images

    if isinstance(image, str):
        (batch,) = list(embed_images(model, [("image", image)], num_workers=0))
        if batch.failures:
            raise ValueError(f"image: cannot read {image!r}: "
                             f"{batch.failures['image']}")
        return batch.vectors[:1]
    if hasattr(image, "convert"):
        return model.encode_pil([image])
    raise ValueError(
        f"image must be a file path or a PIL image, got {type(image).__name__}"
    )


# -- nearest neighbours ----------------------------------------------------------


def nearest(store, vectors, limit, scope=None, threshold=None,
            keep_open=False, exact=False):
    """Exact top-``limit`` of the union of several queries (best score per
    sample), within ``scope``.

    Args:
        store: the :class:`fiftyone_ai_search.store.VectorStore`
        vectors: a ``(dim,)`` query vector or ``(n, dim)`` several
        limit: the most results
        scope (None): sample ids to search within (a list, or a
            :class:`_ViewScope`), or None for all
        threshold (None): only scores ``>= threshold``
        keep_open (False): keep an embedded index open afterwards (see
            :meth:`~fiftyone_ai_search.store.VectorStore.session`)
        exact (False): scan every point even where the index has cells

    Returns:
        ``(sample_ids, scores)``, best first
    """
    best = {}
    with store.session(keep_open=keep_open):
        # only a scope needs the index size, to choose how to search it;
        # an estimate is enough (an exact count costs as much as a query)
        total = None if scope is None else max(1, store.estimate_count())
        for vector in np.atleast_2d(vectors):
            for sample_id, score in _top_k(store, vector, limit, scope,
                                           threshold, total, exact=exact):
                if score > best.get(sample_id, -np.inf):
                    best[sample_id] = score
    ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return [k for k, _ in ranked], [v for _, v in ranked]


def _use_id_filter(scope_size, limit, total):
    """Whether to search a scope with an id filter inside Qdrant rather than
    by over-fetching (:func:`_over_fetch`): whichever handles fewer items,
    weighted by their cost. The filter costs ~3-5 us per id of the scope,
    the over-fetch ~5-7 us (``HIT_COST`` times more) per hit it fetches,
    ``OVER_FETCH x limit x total / scope`` of them.

    Measured on an open Qdrant Edge shard of 100k 512-d points (2 shared
    cores, medians of 7-9 runs, ``bench/bench_search.py`` part e), limit
    100, random scopes of 1k / 2k / 4k / 7k / 10k / 20k / 50k ids: filter
    4 / 6 / 12 / - / 30 / - / 153 ms and 19 / 17 / 36 / 40 / 47 / 91 / -
    ms in a busier run; over-fetch 44 / 25 / 17 / - / 15 / - / 13 ms and
    90 / 42 / 42 / 27 / 23 / 23 / - ms. The cross-over lies at 4k-7k ids;
    the rule puts it at 4.7k. Limit 1000: filter 64 / 126 ms, over-fetch
    126 / 50 ms at 10k / 20k ids (the rule: 15k). The former fixed bound,
    10k ids, filtered 5k-10k ids at up to twice the cost.
    """
    fetched = OVER_FETCH * limit * total / max(scope_size, 1)
    return scope_size <= min(MAX_FILTERED_SCOPE, HIT_COST * fetched)


def _top_k(store, vector, limit, scope, threshold, total, near=False,
           exact=False):
    if scope is None:
        return store.query(vector, limit, min_score=threshold, near=near,
                           exact=exact)
    share = None
    if isinstance(scope, _ViewScope) and scope.size is None:
        # counting a view costs ~1 s at 1M samples, more than the search:
        # a first over-fetch as if the view held half the index, and its
        # hits tell whether the view is large enough to go on so
        k = math.ceil(2 * OVER_FETCH * limit) + 16
        hits, kept = _hits_in(store, vector, k, scope, threshold, exact)
        if _enough(hits, kept, k, limit):
            return kept[:limit]
        share = max(len(kept), 1) / max(len(hits), 1)
        if _use_id_filter(share * total, limit, total):
            share = None  # looks small: count it, and choose as below
        else:
            k = max(2 * k, math.ceil(OVER_FETCH * limit / share) + 16)
    if share is None:
        size = len(scope)
        if not size:
            return []
        if _use_id_filter(size, limit, total):
            return _filtered(store, vector, limit, scope, threshold)
        share = size / total
        k = math.ceil(OVER_FETCH * limit / share) + 16
    return _over_fetch(store, vector, limit, scope, threshold, total, k,
                       exact)


def _filtered(store, vector, limit, scope, threshold):
    """Top-``limit`` within ``scope`` by an id filter inside Qdrant."""
    ids = scope.ids() if isinstance(scope, _ViewScope) else scope
    return store.query(vector, limit, sample_ids=ids, min_score=threshold)


def _hits_in(store, vector, k, scope, threshold, exact=False):
    """The unscoped top-``k`` hits, and those of them in ``scope``."""
    hits = store.query(vector, k, min_score=threshold, exact=exact)
    if isinstance(scope, _ViewScope):
        inside = scope.contains([h[0] for h in hits])
    else:
        inside = set(scope).intersection(h[0] for h in hits)
    return hits, [h for h in hits if h[0] in inside]


def _enough(hits, kept, k, limit):
    """Whether a round of over-fetching found the scoped top-``limit``:
    ``limit`` in scope (nothing in scope can score above a hit we kept), or
    fewer hits than asked (there are no more)."""
    return len(kept) >= limit or len(hits) < k


def _over_fetch(store, vector, limit, scope, threshold, total, k,
                exact=False):
    """Top-``limit`` within a large scope: fetches the unscoped top-k and
    keeps what is in scope; k doubles until :func:`_enough`. Once k passes
    the (estimated) index size, the id filter decides, exactly."""
    while True:
        if k >= total:
            return _filtered(store, vector, limit, scope, threshold)
        hits, kept = _hits_in(store, vector, k, scope, threshold, exact)
        if _enough(hits, kept, k, limit):
            return kept[:limit]
        k *= 2


class _IndexSource:
    """The embeddings of a search scope, read from the index as diverse
    sampling asks for them (see :class:`fiftyone_ai_search.diverse.ArraySource`):
    a diverse search of a large scope reads a sample of its vectors and asks
    nearest-neighbour queries, rather than reading every vector.

    The walk is a seeded permutation of the scope's ids, or, for a whole
    large index, of its rank buckets (see
    :mod:`fiftyone_ai_search.store.ranks`): then no id is read that the
    search does not need, and rows are numbered as points turn up.

    Each read is a session of its own that keeps the index open, so nothing
    is locked while the clustering computes, and nothing reopens the index
    unless another process asked for it meanwhile.
    """

    def __init__(self, store, scope):
        self.store = store
        self.scope = scope
        self._vectors = {}  # row -> vector read by the walk, until fetched
        with store.session(keep_open=True):
            self.total = max(1, store.estimate_count())
            self.bucketed = (scope is None and self.total >= ranks.MIN_POINTS
                             and store.ranked())
            if scope is None and not self.bucketed:
                # sorted: the scroll order is the engine's business
                self.ids = sorted(store.get_sample_ids())
        if scope is not None:
            self.ids = list(scope.ids() if isinstance(scope, _ViewScope)
                            else scope)
            self.scope = self.ids
        if self.bucketed:
            self.ids = []
        self.size = self.total if self.bucketed else len(self.ids)
        self._rows = {sample_id: i for i, sample_id in enumerate(self.ids)}

    def _row(self, sample_id):
        row = self._rows.get(sample_id)
        if row is None:
            row = self._rows[sample_id] = len(self.ids)
            self.ids.append(sample_id)
        return row

    def walk(self, seed):
        if self.bucketed:
            return _BucketWalk(self, seed)
        return diverse.Walk(self.size, seed)

    def fetch(self, rows):
        rows = np.asarray(rows, dtype=int).tolist()
        unread = [r for r in rows if r not in self._vectors]
        if unread:
            with self.store.session(keep_open=True):
                ids, vectors = self.store.get_vectors(
                    [self.ids[r] for r in unread])
            self._vectors.update(zip((self._rows[i] for i in ids), vectors))
        found = [r for r in rows if r in self._vectors]
        if not found:
            return np.zeros(0, dtype=int), np.zeros((0, 0), dtype=np.float32)
        return (np.array(found, dtype=int),
                np.stack([self._vectors.pop(r) for r in found]))

    def nearest(self, vector, k, share=None):
        with self.store.session(keep_open=True):
            hits = _top_k(self.store, vector, k, self.scope, None, self.total,
                          near=self._near(share))
        if self.bucketed:  # the whole index: every hit is in scope
            return np.array([self._row(i) for i, _ in hits], dtype=int)
        # a sample added meanwhile by a sync is not part of this search
        rows = [self._rows.get(sample_id) for sample_id, _ in hits]
        return np.array([r for r in rows if r is not None], dtype=int)


    def _near(self, share):
        """Whether the centre of a group of ``share`` of the index lies
        among the images, so that probing fewer cells finds its nearest
        members: a group that fits in the cells a near query probes. (The
        centre of a large group lies between many kinds of images, as a
        prompt does; measured at 1M: with 10 groups, 49 of 100 picks
        changed when it probed fewer cells, with 100 groups 8.)"""
        cells = self.store.cells()
        if share is None or cells is None:
            return False
        return share <= cl.num_probed(len(cells), near=True) / len(cells)


class _BucketWalk:
    """The walk of a whole large index, a few rank buckets at a time (see
    :class:`fiftyone_ai_search.diverse.Walk`)."""

    def __init__(self, source, seed):
        self._source = source
        self._order = ranks.bucket_order(seed)
        self._next = 0
        self.rows = []

    @property
    def done(self):
        return self._next >= len(self._order)

    def read(self, count=None):
        source = self._source
        start = len(self.rows)
        while not self.done and (count is None or len(self.rows) < count):
            wanted = (len(self._order) if count is None else
                      ranks.buckets_for(count - len(self.rows), source.total))
            buckets = self._order[self._next : self._next + wanted]
            self._next += len(buckets)
            with source.store.session(keep_open=True):
                ids, vectors = source.store.get_bucket_vectors(buckets)
            for sample_id, vector in zip(ids, vectors):
                row = source._row(sample_id)
                source._vectors[row] = vector
                self.rows.append(row)
        return np.array(self.rows[start:], dtype=int)


def diverse_sample(store, limit, scope=None, method="centroids",
                   clustering_method="kmeans", num_clusters=None, seed=0,
                   read_all=False):
    """Diverse sampling of the vectors of an index (see
    :mod:`fiftyone_ai_search.diverse`), reading only what it needs.

    Args:
        store: the :class:`fiftyone_ai_search.store.VectorStore`
        limit: the most samples to pick
        scope (None): sample ids to pick from, or None for all
        method, clustering_method, num_clusters, seed: see
            :func:`fiftyone_ai_search.diverse.diverse_sample`
        read_all (False): read every vector of the scope (same result,
            slower; for tests and benchmarks)

    Returns:
        ``(sample_ids, scores)`` in pick order
    """
    source = _IndexSource(store, scope)
    picked, scores = diverse.sample_source(
        source, limit, method=method, clustering_method=clustering_method,
        num_clusters=num_clusters, seed=seed, read_all=read_all,
    )
    return [source.ids[i] for i in picked], [float(s) for s in scores]


def _diverse(store, scope, q):
    ids, scores = diverse_sample(
        store, q.limit, scope=scope, method=q.method,
        clustering_method=q.clustering_method,
        num_clusters=q.num_clusters, seed=q.seed,
    )
    out = [(i, s) for i, s in zip(ids, scores)
           if q.threshold is None or s >= q.threshold]
    return [i for i, _ in out], [s for _, s in out]
