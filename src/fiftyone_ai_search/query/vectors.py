"""Query vectors: of prompts (with negative prompts, and a cache of recent
prompts' text embeddings), of reference samples or objects read from the
index, and of an image given by path or as a PIL image.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

import collections
import threading

import numpy as np

from ..index import state as st
from ..index import targets

#: default weight of a negative prompt, see :func:`prompt_vectors`
NEGATIVE_WEIGHT = 0.5


def normalize(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class _TextCache:
    """Text embeddings of recent prompts, per model (prompts repeat: the
    App re-runs a search as its limit or threshold changes)."""

    def __init__(self, size=1024):
        self.size = size
        self._items = collections.OrderedDict()
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
        n = normalize(_TEXT_CACHE.encode(model, list(negatives)).mean(axis=0))
        vectors = normalize(vectors - negative_weight * n)
    return vectors


def reference_vectors(target, store, image_ids):
    """The stored vectors of the reference samples (or objects, for an
    object index's ``target``)."""
    ids, vectors = store.get_vectors(image_ids)
    missing = [i for i in image_ids if i not in set(ids)]
    if missing:
        failed = {f["key"]: f["reason"] for f in st.get_failures(target)}
        target = targets.of(target)
        why = "; ".join(
            f"{i}: " + (f"its image failed ({failed[i]})" if i in failed
                        else target.not_embedded)
            for i in missing[:5]
        )
        raise ValueError(f"{target.id_name}: no embedding for {why}")
    return np.asarray(vectors, dtype=np.float32)


def image_vector(model, image):
    from ..embedding.pipeline import embed_images  # start-up: PIL

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
