"""The audit's generic prompts (:data:`fiftyone_ai_search.store.audit.
GENERIC_PROMPTS`) encoded by an index's model, kept on disk per model.

The audit of an index's recall (see :mod:`fiftyone_ai_search.store.audit`)
asks these prompts as its text queries, encoded by the index's own model.
Loading a CLIP model only to encode them cost the upkeep pass that audits
~4-5 s of CPU at 1M points, in a process that had not loaded it. So the
sync, which loads the model anyway, stores them (:func:`keep`) under the
storage directory, one file per model identity and prompt list, and the
audit reads them (:func:`vectors`); it loads the model only where no sync
of this machine stored them yet, and stores them then.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

import hashlib
import logging
import os

import numpy as np

from ..config import get_settings
from ..store import audit
from . import indexes
from . import state as st

logger = logging.getLogger(__name__)

#: the folder of the storage directory that holds the encoded prompts
FOLDER = "audit-prompts"


def vectors(ref, settings=None):
    """The generic prompts encoded by the model of an index reference (a
    state's ``index``, see :func:`fiftyone_ai_search.index.indexes.open_ref`): as stored by :func:`keep`, else encoded
    now (the model loaded) and stored.

    Returns:
        an ``(len(GENERIC_PROMPTS), dim)`` float32 array
    """
    settings = settings or get_settings()
    path = _path(st.IndexRef.of(ref).model_identity, settings)
    stored = _read(path)
    if stored is not None:
        return stored
    model = indexes.load_index_model(ref, settings)
    return _encode_and_store(model, path)


def keep(model, settings=None):
    """Stores the generic prompts encoded by ``model`` (an open
    :class:`~fiftyone_ai_search.embedding.model.ClipModel`) unless stored
    already: where the model is loaded anyway (a sync), so that the
    audit need not load it."""
    path = _path(model.spec.identity, settings or get_settings())
    if path is not None and not os.path.isfile(path):
        _encode_and_store(model, path)


def _path(identity, settings):
    """The file of the prompts of the model ``identity``, or None where
    there is no storage directory."""
    if not settings.storage_dir or not identity:
        return None
    key = hashlib.sha256("\n".join(
        (identity,) + tuple(audit.GENERIC_PROMPTS)).encode()).hexdigest()
    return os.path.join(settings.storage_dir, FOLDER, f"{key[:32]}.npy")


def _read(path):
    """The prompts stored at ``path``, or None (none, or not whole)."""
    if path is None:
        return None
    try:
        stored = np.load(path)
    except (OSError, ValueError):
        return None
    if (stored.ndim != 2 or len(stored) != len(audit.GENERIC_PROMPTS)
            or not np.isfinite(stored).all()):
        return None
    return stored.astype(np.float32, copy=False)


def _encode_and_store(model, path):
    encoded = np.asarray(model.encode_text(list(audit.GENERIC_PROMPTS)),
                         dtype=np.float32)
    if path is None:
        return encoded
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # whole or absent: a reader never sees part of it
        tmp = f"{path}.{os.getpid()}.tmp.npy"
        np.save(tmp, encoded)
        os.replace(tmp, path)
    except OSError as e:  # read-only or full: encoded again next time
        logger.debug("Audit prompts not stored at %s: %s", path, e)
    return encoded
