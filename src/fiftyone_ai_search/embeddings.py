"""Public SDK: switching AI search on and off, computing embeddings, status.

Switching on and off registers and deletes the index's FiftyOne Brain runs
(:mod:`fiftyone_ai_search.brain`); the rest of the lifecycle, which the
Brain backend builds on too, is :mod:`fiftyone_ai_search.lifecycle`.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import lifecycle
from .embedding.sampling import FrameSampling
# the errors and the rest of the SDK's lifecycle, importable from here
from .errors import (  # noqa: F401
    AISearchNotEnabledError,
    IndexDamagedError,
    IndexNotReadyError,
)
from .lifecycle import (  # noqa: F401
    calculate_embeddings,
    forget_deleted,
    get_embeddings,
    get_embeddings_in_progress,
    get_embeddings_updated_at,
    get_status,
    is_embeddings_enabled,
    maintain_index,
)

if TYPE_CHECKING:  # for annotations only
    import fiftyone.core.dataset as fod


def _brain():
    """The module that keeps the Brain runs. Imported when a run is
    registered or deleted, not with the package: it imports
    ``fiftyone.brain`` (start-up cost)."""
    from . import brain  # start-up: fiftyone.brain

    return brain


def enable_embeddings(dataset: fod.Dataset, model: str | None = None,
                      pretrained: str | None = None,
                      backend: str | None = None, compute: bool = True,
                      secrets: dict | None = None, load: bool = True,
                      brain_key: str | None = None,
                      embeddings_field: str | None = None,
                      from_brain_key: str | None = None,
                      patches_field: str | None = None,
                      margin: float | None = None,
                      square: bool | None = None,
                      frames: bool | FrameSampling | None = None) -> dict:
    """Switches AI search on for a dataset and starts computing embeddings.

    Returns once the model is loaded (a few seconds; up to a minute for a
    large model the first time in a process), so that a missing or broken
    model fails here, not in the background; ``load=False`` returns at
    once. The embeddings are computed by a background worker: use
    :func:`get_status` to follow it, or :func:`calculate_embeddings` with
    ``wait=True`` to block.

    Enabling an already-enabled dataset with the same model is a no-op
    (besides starting a sync); another model means the index is rebuilt with
    it on the next sync, never mixed.

    Examples::

        import fiftyone.zoo as foz
        import fiftyone_ai_search as ais

        dataset = foz.load_zoo_dataset("quickstart")
        ais.enable_embeddings(dataset)  # ViT-B-32 / laion2b_s34b_b79k

        # any open_clip model and tag, a local weights file, or a checkpoint
        ais.enable_embeddings(dataset, model="ViT-B-16", pretrained="openai")
        ais.enable_embeddings(dataset, model="ViT-B-32",
                              pretrained="/models/vit-b-32.safetensors")
        ais.enable_embeddings(dataset, model="local-dir:/models/my-clip")

        # from embeddings the dataset already has, without running the model
        dataset.compute_embeddings(model, embeddings_field="clip")
        ais.enable_embeddings(dataset, model="ViT-B-32", pretrained="openai",
                              embeddings_field="clip")
        ais.enable_embeddings(dataset, from_brain_key="clip_sim")

        # the index is also a FiftyOne Brain similarity index
        dataset.sort_by_similarity("a dog", k=10, brain_key="ai_search")

        # object search: an index of the objects of a label field, beside
        # the image index (each object a crop of its box)
        ais.enable_embeddings(dataset, patches_field="ground_truth")
        ais.perform_ai_search(dataset, prompt="a bumper",
                              patches_field="ground_truth")

        # a video dataset: an index of the frames of its videos, 1 frame
        # per second (or FrameSampling(fps=...)), kept in sync
        ais.enable_embeddings(video_dataset, frames=True)
        ais.get_status(video_dataset, frames=True)

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset`
        model (None): an open_clip model name, ``"local-dir:/path"`` or
            ``"hf-hub:org/name"``; default the model in use when AI search
            is on, else from settings (``ViT-B-32``)
        pretrained (None): an open_clip pretrained tag or a local weights
            file; default from settings when ``model`` is also None
        backend (None): ``"edge"`` (embedded Qdrant Edge, the default) or
            ``"server"`` (Qdrant server, from the configured URL)
        compute (True): whether to start computing now
        secrets (None): plugin secrets (Qdrant URL / API key) for the worker
        load (True): load the model now, so that a missing or broken model
            fails here rather than in the background. False only checks
            that its weights are on this machine or may be downloaded, and
            leaves loading to the worker: for callers that must answer at
            once, like the App
        brain_key (None): the key of the FiftyOne Brain similarity run
            that makes the index usable by FiftyOne's similarity machinery
            (see :mod:`fiftyone_ai_search.brain`): default the current one,
            else ``"ai_search"`` (``"ai_search_<field>"`` for object
            search); False registers none. A frame index is a run (of
            frames views: ``to_frames(...).sort_by_similarity(...,
            brain_key=...)``) only under a key given here, kept by later
            calls
        embeddings_field (None): a field of vectors the dataset already has
            (e.g. written by ``compute_embeddings``), stored instead of
            running the model for the samples that have one; ``model`` must
            say which model computed them
        from_brain_key (None): likewise, the vectors of an existing Brain
            similarity run; its model is read from it when it names one this
            package knows (``clip-vit-base32-torch``, ``open-clip-torch``)
        patches_field (None): a label field (``Detections``, ``Polylines``
            or ``Keypoints``): switches on object search of its objects, an
            index of its own beside the image index. ``model`` defaults to
            the image index's
        margin (None): object search: how much context a crop keeps around
            a box, as a share of its sides (each side grows by ``margin``;
            FiftyOne's ``alpha``); default 0.5 (measured: see
            :class:`fiftyone_ai_search.embedding.crops.CropSettings`)
        square (None): object search: whether the box is made square
            (centred) before cropping, so that the model's centre crop
            keeps all of a long object (FiftyOne's ``force_square``);
            default True. Other crop settings than an index's mean a
            rebuild of it
        frames (None): a video dataset: True switches on the index of the
            frames of its videos, sampled at 1 frame per second (the frames
            of FiftyOne's ``to_frames(fps=1)``); a
            :class:`fiftyone_ai_search.FrameSampling` samples another rate
            (and optionally scene changes). Another rule than an index's
            means a rebuild of it. Searching the frame index is not
            available yet

    Returns:
        the result of :func:`get_status`

    Raises:
        ValueError: for an unknown backend or model
        fiftyone_ai_search.QdrantUnreachableError: for ``backend="server"``
            when the server does not answer or refuses the API key; checked
            before anything is written
        fiftyone_ai_search.errors.UnsupportedMediaError: for a dataset that
            is not of images (3D, point clouds; a grouped dataset without
            an image slice; a video dataset without ``frames=``, or
            ``frames=`` of a dataset that is not of videos); nothing is
            written then
        fiftyone_ai_search.errors.ModelUnavailableError: if the weights cannot
            be found (offline); the message says how to supply them
        fiftyone_ai_search.errors.ExistingEmbeddingsError: if the existing
            embeddings are not of the model (it embeds a few samples to
            check); nothing is written then
        fiftyone_ai_search.errors.BrainKeyTakenError: if ``brain_key`` names
            another kind of Brain run
    """
    return lifecycle.enable(
        dataset, model=model, pretrained=pretrained, backend=backend,
        compute=compute, secrets=secrets, load=load, brain_key=brain_key,
        embeddings_field=embeddings_field, from_brain_key=from_brain_key,
        patches_field=patches_field, margin=margin, square=square,
        runs=_brain(), frames=frames)


def disable_embeddings(dataset: fod.Dataset, patches_field: str | None = None,
                       secrets: dict | None = None,
                       frames: bool = False) -> None:
    """Switches AI search off: deletes the index, all its state, its
    FiftyOne Brain run and the latest search results (the temporary
    collection). Named collections stay, as plain saved views.
    ``dataset.delete_brain_run(brain_key)`` of its Brain run does the same.

    A computation still running stops before its next commit; until it
    has, a new :func:`enable_embeddings` waits for it.

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset`
        patches_field (None): switch off the object search of this label
            field instead (the image index and other fields' stay)
        secrets (None): plugin secrets (Qdrant URL / API key), for an index
            on a Qdrant server whose URL this process's environment lacks
        frames (False): switch off the frame index of a video dataset

    Raises:
        ValueError: if the index is on a Qdrant server and no URL is
            configured (nothing is changed then)
    """
    target = lifecycle.resolve_target(dataset, patches_field, frames)
    lifecycle.disable(target, secrets=secrets, runs=_brain())


def finish_disable(target, doc, settings=None):
    """What :func:`disable_embeddings` does after its first write, Brain
    runs included (see :func:`fiftyone_ai_search.lifecycle.finish_disable`):
    the refresher runs it for a disable that was killed midway."""
    lifecycle.finish_disable(target, doc, runs=_brain(), settings=settings)
