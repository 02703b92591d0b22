"""Embeddings a dataset already has: a field (what FiftyOne's
``compute_embeddings`` wrote) or a FiftyOne Brain similarity run.

A first index (or a rebuild with another model) may be filled from them
instead of running the model: :func:`fiftyone_ai_search.enable_embeddings`
with ``embeddings_field=`` or ``from_brain_key=``. The build records where
they come from, and the sync stores a sample's existing vector in place of
embedding its image (with the image's fingerprint, so it is kept until the
image changes); samples without one are embedded as usual. From then on
the index keeps itself in sync with the model as always.

The index never mixes models, so the model must be known: given
(``model=``), or read from the Brain run when it names one this package
can load. Before anything is written the claim is checked: the model
embeds a few of the samples and their existing vectors must agree.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

import logging

import numpy as np

from ..errors import ExistingEmbeddingsError
from ..index import media

logger = logging.getLogger(__name__)

#: FiftyOne zoo models whose embeddings are those of an open_clip model:
#: zoo name -> (open_clip model, pretrained tag)
ZOO_MODELS = {
    "clip-vit-base32-torch": ("ViT-B-32", "openai"),
}

#: the zoo model wrapping any open_clip model, named by its model_kwargs
#: (FiftyOne's defaults: ViT-B-32, openai)
OPEN_CLIP_ZOO_MODEL = ("open-clip-torch", "ViT-B-32", "openai")


def zoo_open_clip(name, model_kwargs=None):
    """``(model, pretrained)`` of open_clip that a FiftyOne zoo model name
    (with its ``model_kwargs``) stands for, or None for a zoo model that is
    not an open_clip CLIP this package can run."""
    if name in ZOO_MODELS:
        return ZOO_MODELS[name]
    zoo, default_model, default_tag = OPEN_CLIP_ZOO_MODEL
    if name == zoo:
        kwargs = model_kwargs or {}
        return (kwargs.get("clip_model", default_model),
                kwargs.get("pretrained", default_tag))
    return None


#: how many samples the model embeds to check the claim
CHECK_SAMPLES = 4

#: the least cosine similarity between a sample's existing vector and the
#: model's: the same model with another image loader or resize scores
#: above 0.97; another model's vectors are unrelated (near 0) or of
#: another size
MIN_AGREEMENT = 0.9

#: vectors read from the source at once
CHUNK = 1000


class ExistingEmbeddings:
    """Vectors of a dataset's samples kept in a field or a Brain run.

    Args:
        dataset: the dataset
        field (None): a sample field of vectors
        brain_key (None): a Brain similarity run of the dataset
    """

    def __init__(self, dataset, field=None, brain_key=None):
        if (field is None) == (brain_key is None):
            raise ValueError("Give one of embeddings_field and from_brain_key")
        self.dataset = dataset
        self.field = field
        self.brain_key = brain_key
        self._results = None
        if field is not None:
            if not isinstance(field, str) or not dataset.has_sample_field(field):
                raise ValueError(
                    f"embeddings_field: dataset '{dataset.name}' has no "
                    f"field {field!r}"
                )
        else:
            if brain_key not in dataset.list_brain_runs(type="similarity"):
                raise ValueError(
                    f"from_brain_key: dataset '{dataset.name}' has no "
                    f"similarity run {brain_key!r}; it has "
                    f"{dataset.list_brain_runs(type='similarity')}"
                )
            config = dataset.get_brain_info(brain_key).config
            if getattr(config, "patches_field", None):
                raise ValueError(
                    f"from_brain_key: '{brain_key}' indexes objects "
                    f"('{config.patches_field}'), not images"
                )

    def __repr__(self):
        return (f"field {self.field!r}" if self.field
                else f"brain run {self.brain_key!r}")

    @classmethod
    def from_ref(cls, dataset, ref):
        """The source a build's ``existing`` reference names, or None."""
        if not ref:
            return None
        return cls(dataset, field=ref.get("field"),
                   brain_key=ref.get("brain_key"))

    def to_ref(self):
        """What a build records of the source."""
        return ({"field": self.field} if self.field
                else {"brain_key": self.brain_key})

    def model(self):
        """``(model, pretrained)`` of open_clip that the source says made
        its vectors, or None if it does not say (a field) or names a model
        this package does not know."""
        if self.field is not None:
            return None
        config = self.dataset.get_brain_info(self.brain_key).config
        return zoo_open_clip(getattr(config, "model", None),
                             getattr(config, "model_kwargs", None))

    def vectors(self, sample_ids):
        """The source's vectors of those of ``sample_ids`` that it has.

        Returns:
            ``(ids, vectors)``: a list, and an ``(n, dim)`` float32 array of
            unit vectors; empty, unusable (non-finite, zero or ragged)
            vectors are left out
        """
        ids, rows = [], []
        for start in range(0, len(sample_ids), CHUNK):
            chunk = list(sample_ids[start : start + CHUNK])
            for sample_id, v in zip(*self._read(chunk)):
                if v is None:
                    continue
                v = np.asarray(v, dtype=np.float32).ravel()
                norm = np.linalg.norm(v)
                if v.size and np.isfinite(norm) and norm > 0 and (
                        not rows or v.size == rows[0].size):
                    ids.append(sample_id)
                    rows.append(v / norm)
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        return ids, np.stack(rows)

    def _read(self, sample_ids):
        if self.field is not None:
            return media.indexed_samples(self.dataset).select(
                sample_ids).values(["id", self.field])
        if self._results is None:
            self._results = self.dataset.load_brain_results(self.brain_key)
        vectors, ids, _ = self._results.get_embeddings(
            sample_ids=sample_ids, allow_missing=True)
        return list(ids), list(vectors)

    def check(self, model):
        """Checks that the vectors are ``model``'s: it embeds a few of the
        samples (:data:`CHECK_SAMPLES`) and compares.

        Raises:
            ExistingEmbeddingsError: if they disagree, or the source holds
                no usable vector at all
        """
        from ..embedding.pipeline import embed_images  # start-up: PIL

        samples = media.indexed_samples(self.dataset)
        candidates = samples.limit(50 * CHECK_SAMPLES).values(
            ["id", "filepath"])
        ids, vectors = self.vectors(candidates[0])
        if not ids:
            raise ExistingEmbeddingsError(
                f"The {self} of dataset '{self.dataset.name}' holds no "
                "usable vectors (among its first samples)"
            )
        if vectors.shape[1] != model.dim:
            raise ExistingEmbeddingsError(
                f"The {self} holds {vectors.shape[1]}-d vectors; model "
                f"{model.spec.identity} makes {model.dim}-d ones. Pass the "
                "model that computed them (model=..., pretrained=...)"
            )
        path = dict(zip(*candidates))
        picked = {i: v for i, v in zip(ids[:CHECK_SAMPLES],
                                       vectors[:CHECK_SAMPLES])}
        agreement = []
        for batch in embed_images(model, [(i, path[i]) for i in picked],
                                  num_workers=0):
            for key, v in zip(batch.keys, batch.vectors):
                agreement.append(float(np.dot(v, picked[key])))
        if not agreement:
            logger.warning("Could not read the images of %d samples to "
                           "check the %s", len(picked), self)
            return
        if min(agreement) < MIN_AGREEMENT:
            raise ExistingEmbeddingsError(
                f"The {self} of dataset '{self.dataset.name}' does not hold "
                f"embeddings of model {model.spec.identity}: cosine "
                f"{min(agreement):.2f} with the model's own embeddings of "
                f"{len(agreement)} of its images (needs >= {MIN_AGREEMENT}). "
                "Pass the model that computed them (model=..., pretrained=...)"
            )
