"""Public SDK: ``perform_ai_search`` — by prompt, by example images, diverse.

Scores are cosine similarities between L2-normalised CLIP embeddings. Results
are exact (the same as a brute-force top-k over the stored vectors of the
search scope) while an index holds up to ``store.cells.MIN_POINTS`` vectors;
above that a search scans the cells nearest its query, at the recall the
index's self-audit measured (``get_status(...)["approximate"]``), unless it
asks for ``exact=True``.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np
from bson import ObjectId

from . import results as colls
from . import validate
from .index import indexes
from .index import media
from .index import state as st
from .index import targets
from .index.indexes import read_index, require_index
from .query import diverse
from .query.scope import (ObjectsOfView, ViewScope, check_known_ids,
                          known_size, make_scope)
from .query.topk import nearest
from .query.vectors import (NEGATIVE_WEIGHT, image_vector, normalize,
                            prompt_vectors, reference_vectors)
from .query.walk import diverse_from_index
from .store import IndexMismatchError, IndexNotFoundError
from .sync.images import deletions_pending
from .sync.objects import SOURCE_KEY

if TYPE_CHECKING:  # for annotations only
    from collections.abc import Sequence

    import fiftyone.core.collections as foc
    import PIL.Image

logger = logging.getLogger(__name__)

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
        As for every query, the scope is ``samples``: a patches view of
        earlier results is searched alone, as FiftyOne's
        ``sort_by_similarity`` sorts the view it is given; pass the dataset
        with ``patches_field`` for objects like these anywhere in it.
    -   ``image``: an image from outside the dataset, a file path or a
        ``PIL.Image``. The collection records a path as ``image``; an
        image given in memory is kept nowhere, so it records ``image``
        None and ``image_name``, the name of the file it was read from
        (PIL's ``filename``), if any.
    -   ``method``: diverse sampling, no query: ``"centroids"`` or
        ``"random"``, over ``clustering_method`` ``"kmeans"`` (default, with
        ``num_clusters``) or ``"dbscan"``; see
        :mod:`fiftyone_ai_search.query.diverse`. Results are in pick order
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
        # objects like the best one, anywhere in the dataset
        ais.perform_ai_search(dataset, label_id=patches.first().id,
                              patches_field="ground_truth")
        # ... or only among these results, best first
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
    dataset = media.source_dataset(samples)  # a patches view's too
    field = _patches_field(samples, patches_field, query)
    target = targets.target_of(dataset, field)
    doc = require_index(target)
    if field is None:
        scope = make_scope(samples, query.image_id_scope)
        if query.image_ids:
            check_known_ids(dataset, query.image_ids, "image_id")
    else:
        scope = _object_scope(samples, target, query.image_id_scope)

    ids, scores, doc = _search(target, doc, query, _live(scope, target, doc))

    if not ids:
        return None
    described = query.describe(scope)
    if field is not None:
        described["patches_field"] = field
    described["model"] = doc.index.model_label
    if doc.build:
        # searches use the complete index until the rebuild switches over
        described["rebuilding"] = doc.build.model_label
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
    ``source_id``), in their order, in the index of the state ``doc``."""
    store = indexes.open_ref(doc.index)
    with store.session():
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
                targets.dataset_key(media.source_dataset(samples)))):
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
    :class:`ViewScope` of patches (a patch's id is its label's), or the
    objects a view of samples shows (:class:`ObjectsOfView`)."""
    dataset = objects.dataset
    is_patches = getattr(samples, "_is_patches", False)
    if sample_scope is not None:
        check_known_ids(dataset, sample_scope, "image_id_scope")
        if is_patches:
            return ViewScope(samples.match(
                {"sample_id": {"$in": [ObjectId(i) for i in sample_scope]}}))
        return ObjectsOfView(samples.select(sample_scope), objects)
    if is_patches:
        return ViewScope(samples)
    if samples is dataset and not media.is_grouped(dataset):
        return None
    return ObjectsOfView(samples, objects)


def _live(scope, target, doc):
    """``scope``, or, for a search of all the index holds (None) while
    samples deleted since the last sync still have vectors in it, the
    samples (or objects) the dataset still holds: a deleted sample never
    takes the place of a live one in the results (the search fills its
    limit as for any scope, asking MongoDB which hits still exist)."""
    if scope is not None or not deletions_pending(target, doc):
        return scope
    target = targets.of(target)
    return _LIVE[target.kind](media.indexed_samples(target.dataset), target)


#: the scope of the samples a dataset still holds, for each kind of
#: target (:attr:`~fiftyone_ai_search.index.targets.Target.kind`): their
#: objects for an object index, else the samples themselves
_LIVE = {"images": lambda live, target: ViewScope(live),
         "objects": ObjectsOfView,
         "frames": lambda live, target: ViewScope(live)}


def _search(target, doc, query, scope):
    """Runs ``query`` on the index searches use of ``target`` (a dataset,
    or the objects of one of its fields); returns ``(ids, scores,
    doc)``. A rebuild that switches over and drops the former index during
    the search makes it run again on the new one."""
    def run(doc, store):
        # not closed: an embedded index stays open for the next search
        # while nobody else wants it (see VectorStore.session)
        ids, scores = query.run(target, doc.index, store, scope)
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
    dataset = media.source_dataset(samples)
    target = targets.target_of(dataset, patches_field)
    doc = require_index(target)
    if patches_field is None:
        scope = make_scope(samples, None)
    else:
        scope = _object_scope(samples, target, None)
        if "image_ids" in fields:
            fields["label_ids"] = fields.pop("image_ids")
    scope = _live(scope, target, doc)
    if fields.get("limit") is None:
        fields["limit"] = max(1, len(scope) if scope is not None
                              else indexes.index_size(doc.index))
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
    identities = {info.model_identity, ref.model_identity}
    if model is not None:
        identities.add(model.spec.identity)
    if len(identities) != 1:
        raise IndexMismatchError(
            f"The AI search index '{store.name}' holds embeddings of "
            f"{info.model!r} ({info.pretrained!r}), not of the model "
            f"{ref.model_label} it is recorded with: refusing to search it. "
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
            with store.session():
                check_index_model(store, ref)
                if self.vectors is not None:
                    vectors = normalize(np.atleast_2d(self.vectors))
                else:
                    vectors = reference_vectors(target, store, references)
                return self._nearest(store, vectors, scope)

        # the model runs before the index is opened: never hold it meanwhile
        model = indexes.load_index_model(ref)
        if self.prompts is not None:
            vectors = prompt_vectors(model, self.prompts, self.negatives,
                                     self.negative_weight)
        else:
            vectors = image_vector(model, self.image)
        with store.session():
            check_index_model(store, ref, model)
            return self._nearest(store, vectors, scope)

    def _nearest(self, store, vectors, scope):
        if self.aggregation == "mean" and len(vectors) > 1:
            vectors = normalize(vectors.mean(axis=0, keepdims=True))
        if not self.reverse:
            return nearest(store, vectors, self.limit, scope, self.threshold,
                           exact=self.exact)
        # the least similar to v are the most similar to -v (cosine)
        ids, scores = nearest(store, -vectors, self.limit, scope,
                              exact=self.exact)
        return ids, [-s for s in scores]

    def describe(self, scope):
        """What produced a collection (kept with it, shown in the App)."""
        # a large view is searched without counting it: its size is
        # recorded when the search counted it
        d = {"limit": self.limit, "threshold": self.threshold,
             "scope_size": None if scope is None else known_size(scope)}
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
            d.update(mode="image", **image_query(self.image))
        return d


# -- query vectors -------------------------------------------------------------


# -- nearest neighbours ----------------------------------------------------------


def _diverse(store, scope, q):
    ids, scores = diverse_from_index(
        store, q.limit, scope=scope, method=q.method,
        clustering_method=q.clustering_method,
        num_clusters=q.num_clusters, seed=q.seed,
    )
    out = [(i, s) for i, s in zip(ids, scores)
           if q.threshold is None or s >= q.threshold]
    return [i for i, _ in out], [s for _, s in out]


#: the mark (in a PIL image's ``info``) of an image the App decoded from an
#: upload: its results record ``uploaded``, and the panel says so
UPLOAD_MARK = "ai_search_upload"


def image_query(image) -> dict:
    """How a search's query image is recorded with its results: its path,
    or, for an image given in memory (a PIL image; the App's uploads),
    which is kept nowhere, its file's name alone, if it has one, and no
    path that could be taken for one to search again; an upload to the
    App (:data:`UPLOAD_MARK`) is recorded as ``uploaded``."""
    if isinstance(image, str):
        return {"image": image[:500]}
    name = os.path.basename(str(getattr(image, "filename", "") or ""))
    query = {"image": None, "image_name": name[:500] or None}
    if (getattr(image, "info", None) or {}).get(UPLOAD_MARK):
        query["uploaded"] = True
    return query
