"""The indexes of a target (a dataset's images, or the objects of one of
its fields): opening the one searches read, requiring one that is
complete, loading its model, and dropping indexes.

A target's state (:mod:`fiftyone_ai_search.index.state`) names its indexes
by references (:class:`~fiftyone_ai_search.index.state.IndexRef`); this
module turns them into open :class:`fiftyone_ai_search.store.VectorStore`
objects.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

import os
import re

from ..config import get_settings
from ..embedding.model import load_model, resolve_model
from ..errors import AISearchNotEnabledError, IndexNotReadyError
from ..store import IndexNotFoundError, open_store
from . import state as st
from . import targets


def open_ref(ref, settings=None):
    """Opens the vector store of an index reference of a state (its
    ``index``, ``build`` or one of its ``retired``: an
    :class:`~fiftyone_ai_search.index.state.IndexRef`, or its stored form)."""
    ref = st.IndexRef.of(ref)
    settings = (settings or get_settings()).replace(backend=ref.backend)
    return open_store(ref.name, settings)


def index_size(ref, settings=None):
    """How many vectors the index of a state reference holds (an exact
    count: about the cost of a query)."""
    store = open_ref(ref, settings)
    # a session: a search of it usually follows (see VectorStore.session)
    with store.session():
        return store.count()


def open_index(dataset, settings=None, doc=None):
    """Opens the index that searches of a dataset use; given its state
    ``doc`` (an :class:`~fiftyone_ai_search.index.state.IndexState`, or
    its stored document), ``dataset`` is not read (it may no longer
    exist).

    Returns:
        a :class:`fiftyone_ai_search.store.VectorStore`, or None if the
        dataset has no complete index yet
    """
    doc = st.as_state(doc) if doc is not None else st.load(dataset)
    ref = doc.index
    return open_ref(ref, settings) if ref else None


def load_index_model(ref, settings=None):
    """Loads (once per process) the model of an index reference (a state's
    ``index`` or ``build``; see :func:`open_ref`)."""
    settings = settings or get_settings()
    ref = st.IndexRef.of(ref)
    spec = resolve_model(ref.model, ref.pretrained)
    return load_model(spec, device=settings.device)


def drop_indexes(key, refs, settings=None):
    """Drops the given indexes of the dataset whose id is ``key`` and
    removes them from its ``retired`` list."""
    for ref in refs:
        store = open_ref(ref, settings)
        try:
            store.drop()
        finally:
            store.close()
        st.forget_retired(key, ref)


def drop_unreferenced(key, settings=None):
    """Drops the embedded indexes of the target whose key is ``key`` that
    its state no longer names (a damaged state lost their references): by
    their names, which hold the key (see :func:`fiftyone_ai_search.index.state.
    index_name`). Only once its state is gone: an index named by a
    state written meanwhile (a new enable) stays."""
    settings = settings or get_settings()
    root = settings.storage_dir
    if not root or not os.path.isdir(root) or st.get_raw(key) is not None:
        return
    pattern = re.compile(re.escape(st.index_name(key, "@")).replace(
        "@", "[0-9a-z]+") + "$")
    for name in sorted(os.listdir(root)):
        if pattern.match(name):
            drop_indexes(key, [st.IndexRef(name=name, backend="edge")],
                         settings)


def what(target):
    """How messages name a target."""
    return targets.of(target).what


def call_args(target):
    """The arguments that name a target in an SDK call, for messages."""
    return targets.of(target).call_args


def require_enabled(dataset):
    """The state (an :class:`~fiftyone_ai_search.index.state.IndexState`)
    of a target (a dataset, or the objects of one of its fields); raises if
    its AI search is off."""
    doc = st.load(dataset)
    if doc is None or not doc.enabled:
        raise AISearchNotEnabledError(targets.of(dataset).not_enabled)
    return doc


def _computing(doc):
    """What a not-ready message says of the computation."""
    if doc.is_running():
        p = doc.progress
        done = f": {p.done} of {p.total} embedded" if p and p.total else ""
        return f"It is being computed now{done}. Wait for it"
    error = doc.last_error
    why = f" (the last run failed: {error})" if error else ""
    return f"Nothing is computing it{why}. Compute it"


def require_index(dataset, same_model=False):
    """The state of ``dataset`` if it has a complete index to read.

    Args:
        dataset: the dataset
        same_model (False): also require that index to be of the model
            asked for last (during a rebuild with another model, searches
            use the complete index of the former model; embeddings handed
            out must not)

    Raises:
        AISearchNotEnabledError: if AI search is off
        IndexNotReadyError: if there is no such index yet
    """
    doc = require_enabled(dataset)
    index, build = doc.index, doc.build
    args = call_args(dataset)
    how = (f"with fiftyone_ai_search.calculate_embeddings({args}, "
           f"wait=True), or check get_status({args})")
    if index is None:
        raise IndexNotReadyError(
            f"{what(dataset)} has no index yet. "
            f"{_computing(doc)} {how}"
        )
    if same_model and build and not index.same_index(build):
        raise IndexNotReadyError(
            f"{what(dataset)} is being rebuilt with "
            f"model {build.model_label}; its index holds embeddings of "
            f"{index.model_label} until then. {_computing(doc)} {how}"
        )
    return doc


def read_index(target, doc, read, same_model=False, required=True):
    """Runs ``read(doc, store)`` on the index that searches of ``target``
    use (``store`` opened from ``doc.index``, the state ``doc`` of
    ``target``) and returns what it returns. A rebuild that switches over
    and drops that index after ``doc`` was read (``read`` raises
    :class:`~fiftyone_ai_search.store.IndexNotFoundError`) makes it run
    again on the index the state now names; searches, the status and
    :func:`get_embeddings` read an index so.

    Args:
        target: the dataset, or a :class:`~fiftyone_ai_search.index.targets.Objects`
        doc: its :class:`~fiftyone_ai_search.index.state.IndexState`,
            with an ``index``
        read: ``read(doc, store)``; it closes ``store`` if it wants it closed
        same_model (False): see :func:`require_index` (for the state read
            again)
        required (True): whether the state read again must have a complete
            index (:func:`require_index`); False: the state as it is (the
            status says what it is)

    Raises:
        IndexNotFoundError: if the index is gone and the state still names
            it (or names no other)
    """
    while True:
        ref = doc.index
        store = open_ref(ref)
        try:
            return read(doc, store)
        except IndexNotFoundError:
            newer = (require_index(target, same_model=same_model)
                     if required else st.load(target))
            if newer is None or not newer.index or (
                    newer.index.name == ref.name):
                raise
            doc = newer
