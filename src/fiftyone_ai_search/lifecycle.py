"""The lifecycle of an index: switching AI search on and off, computing
embeddings, the upkeep, the status and reading embeddings back.

The public calls that also register or delete the index's FiftyOne Brain
runs (``enable_embeddings``, ``disable_embeddings``) are in
:mod:`fiftyone_ai_search.embeddings`, above the Brain backend
(:mod:`fiftyone_ai_search.brain`), which builds on this module: here those
runs are kept by a module passed in (``runs``), so that nothing here
imports the Brain.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import validate
from .config import BACKENDS, ENV_PREFIX, Settings, get_settings
from .embedding.crops import CropSettings
from .embedding.sampling import FrameSampling
from .embedding.model import (check_weights, load_model,
                              resolve_model)
from .errors import IndexDamagedError, UnsupportedMediaError
from .index import audit_prompts, indexes
from .index import media
from .index import state as st
from .index import targets
from .results import (delete_collections_of, delete_temporary_collection,
                      sweep_orphaned_scores)
from .store import IndexNotFoundError, audit, cells
from .store.audit import summary as audit_summary
from .store.portability import check_embedded_index
from .sync import runner
from .sync.existing import ExistingEmbeddings

if TYPE_CHECKING:  # for annotations only
    import datetime
    from collections.abc import Callable

    import numpy as np
    import fiftyone.core.collections as foc
    import fiftyone.core.dataset as fod

    from .sync.images import SyncReport

logger = logging.getLogger(__name__)


def resolve_target(dataset, patches_field, frames=False):
    """The target of an SDK call: the dataset's images, the objects of
    ``patches_field``, or with ``frames`` the frames of its videos."""
    return targets.target_of(media.source_dataset(dataset, "dataset"),
                             validate.field_name(patches_field),
                             frames=validate.boolean(frames, "frames"))


def frame_sampling(frames) -> "FrameSampling | None":
    """The sampling rule that ``frames`` (``enable_embeddings``'s) asks
    for: None for None or False, the default rule (1 frame per second)
    for True, else a :class:`FrameSampling` itself."""
    if frames is None:
        return None
    if isinstance(frames, FrameSampling):
        return frames
    try:
        on = validate.boolean(frames, "frames")  # (numpy's too)
    except ValueError:
        raise ValueError(
            f"frames must be True, False, None or a FrameSampling "
            f"(fiftyone_ai_search.FrameSampling(fps=...)), got {frames!r}"
        ) from None
    return FrameSampling() if on else None


def _video_without_frames(dataset):
    """Refuses AI search of a video dataset's videos: its frames are what
    is indexed, with ``frames=``."""
    if dataset.media_type == "video":
        raise UnsupportedMediaError(
            f"Dataset '{dataset.name}' is a video dataset: AI search "
            "indexes the frames of its videos. Enable it with "
            "fiftyone_ai_search.enable_embeddings(dataset, frames=True) "
            "(1 frame per second), or frames=FrameSampling(fps=...) for "
            "another rate, and search them with "
            "fiftyone_ai_search.search_frames(dataset, prompt=...)")


def enable(dataset, model=None, pretrained=None, backend=None,
           compute=True, secrets=None, load=True, brain_key=None,
           embeddings_field=None, from_brain_key=None, patches_field=None,
           margin=None, square=None, runs=None, frames=None):
    """:func:`fiftyone_ai_search.embeddings.enable_embeddings`, registering
    the index's Brain run with ``runs`` (the module that keeps them,
    :mod:`fiftyone_ai_search.brain`); with ``runs=None`` no run is
    registered nor checked (``brain_key`` is taken as False): for the
    Brain backend, which registers its own."""
    if runs is None:
        brain_key = False
    compute = validate.boolean(compute, "compute")
    load = validate.boolean(load, "load")
    model = validate.model_name(model)
    pretrained = validate.pretrained(pretrained)
    patches_field = validate.field_name(patches_field)
    # how objects are cropped: checked here, before the field is looked at
    margin = validate.optional_number(margin, "margin", 0.0)
    if square is not None:
        square = validate.boolean(square, "square")
    sampling = frame_sampling(frames)
    if sampling is not None:
        given = [name for name, value in (
            ("patches_field", patches_field),
            ("embeddings_field", embeddings_field),
            ("from_brain_key", from_brain_key), ("margin", margin),
            ("square", square)) if value is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)}: not supported with frames=... (a "
                "frame index embeds the frames it samples, with the model)")
        frames = targets.Frames(media.source_dataset(dataset, "dataset"))
        if brain_key is None:
            # a frame index is a Brain run only when asked (the run of
            # its frames views, see fiftyone_ai_search.brain_frames); one
            # it has follows a new sampling rule
            current = st.load(frames)
            brain_key = (current.brain_key if current and current.enabled
                         and current.brain_key else False)
        if brain_key is not False:
            runs.check_brain_key(frames.dataset, brain_key, frames=True)
        return _enable_frames(frames, sampling, model, pretrained, backend,
                              compute, secrets, load, brain_key, runs)
    dataset = media.source_dataset(dataset, "dataset")
    _video_without_frames(dataset)
    dataset = media.check_supported(dataset)
    settings = get_settings(secrets=secrets)
    if patches_field is not None:
        if embeddings_field is not None or from_brain_key is not None:
            raise ValueError(
                "embeddings_field, from_brain_key: existing embeddings are "
                "of images; object search (patches_field) computes its own")
        return _enable_objects(
            targets.Objects(dataset, patches_field), model, pretrained,
            backend, margin, square, compute, secrets, load, settings,
            brain_key, runs)
    if margin is not None or square is not None:
        raise ValueError("margin, square: they say how objects are cropped; "
                         "pass patches_field=... for object search")
    current = st.load(dataset) or st.IndexState(key=st.dataset_key(dataset))
    if brain_key is None:
        brain_key = current.brain_key or runs.DEFAULT_BRAIN_KEY
    if brain_key is not False:
        runs.check_brain_key(dataset, brain_key)
    existing = None
    if embeddings_field is not None or from_brain_key is not None:
        existing = ExistingEmbeddings(dataset, field=embeddings_field,
                                      brain_key=from_brain_key)
        if model is None:
            model, pretrained = existing.model() or (None, None)
        if model is None:
            raise ValueError(
                f"model: say which open_clip model computed the {existing} "
                "(model=..., pretrained=...): the index never mixes models"
            )
    if model is None and pretrained is None and current.enabled:
        # the model in use, as for the backend: enabling again (e.g. to
        # register another brain key) never switches to the default model
        model, pretrained = current.model, current.pretrained
    backend = _backend(backend, current, settings)
    spec = _model_spec(model, pretrained, settings)
    if load or existing is not None:
        loaded = load_model(spec, device=settings.device)
        if existing is not None:
            existing.check(loaded)  # before anything is written
    else:
        check_weights(spec)

    doc = st.enable(dataset, spec.name, spec.pretrained, spec.identity,
                    backend, existing=existing.to_ref() if existing else None)
    if existing is not None and not doc.build:
        logger.info("AI search of '%s' already has an index of %s: the %s "
                    "is not needed", dataset.name,
                    doc.model_label, existing)
    _register(dataset, doc, brain_key, runs)
    if compute:
        runner.start_background(dataset, secrets=secrets)
    return get_status(dataset)


def _register(target, doc, brain_key, runs):
    """Makes the index a Brain run under ``brain_key`` (False: none; the
    runs it has stay)."""
    if brain_key is not False:
        runs.register(target, doc, brain_key)


def _enable_objects(objects, model, pretrained, backend, margin, square,
                    compute, secrets, load, settings, brain_key, runs):
    """:func:`enable` of the objects of a label field."""
    crop = CropSettings(
        margin=CropSettings.margin if margin is None else margin,
        square=CropSettings.square if square is None else square)
    current = st.load(objects) or st.IndexState(key=objects.key)
    if brain_key is None:
        brain_key = current.brain_key or runs.default_brain_key(
            objects.field)
    if brain_key is not False:
        runs.check_brain_key(objects.dataset, brain_key, objects.field)
    images = (st.load(objects.dataset)
              or st.IndexState(key=st.dataset_key(objects.dataset)))
    if model is None and images.enabled:
        # the image index's model: prompts then mean the same in both
        model, pretrained = images.model, images.pretrained
    backend = _backend(backend, current if current.enabled else images,
                       settings)
    spec = _model_spec(model, pretrained, settings)
    if load:
        load_model(spec, device=settings.device)
    else:
        check_weights(spec)
    doc = st.enable(objects, spec.name, spec.pretrained, spec.identity,
                    backend, crop=crop.to_dict())
    _register(objects, doc, brain_key, runs)
    if compute:
        runner.start_background(objects, secrets=secrets)
    return get_status(objects.dataset, patches_field=objects.field)


def _enable_frames(frames, sampling, model, pretrained, backend, compute,
                   secrets, load, brain_key, runs):
    """:func:`enable` of the frames of a video dataset."""
    settings = get_settings(secrets=secrets)
    current = st.load(frames) or st.IndexState(key=frames.key)
    if model is None and pretrained is None and current.enabled:
        model, pretrained = current.model, current.pretrained
    backend = _backend(backend, current, settings)
    spec = _model_spec(model, pretrained, settings)
    if load:
        load_model(spec, device=settings.device)
    else:
        check_weights(spec)
    doc = st.enable(frames, spec.name, spec.pretrained, spec.identity,
                    backend, sampling=sampling.to_dict())
    _register(frames, doc, brain_key, runs)
    if compute:
        runner.start_background(frames, secrets=secrets)
    return get_status(frames.dataset, frames=True)


def _backend(backend, current, settings):
    """The backend asked for: by default the one in use, else the
    configured one (checked to answer, before anything is written)."""
    if backend is None:
        backend = current.backend if current.enabled else settings.backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "server" and not settings.qdrant_url:
        raise ValueError(
            "backend='server' needs a Qdrant URL: set "
            "FIFTYONE_AI_SEARCH_QDRANT_URL (and FIFTYONE_AI_SEARCH_QDRANT_API_KEY)"
        )
    if backend == "server":
        # before anything is written: an unreachable server fails here
        from .store.server import check_server

        check_server(settings.qdrant_url, settings.qdrant_api_key)
    if backend == "edge":
        check_embedded_index()  # Windows: no fcntl; says what to use
    return backend


def _model_spec(model, pretrained, settings):
    """The :class:`~fiftyone_ai_search.embedding.model.ModelSpec` asked for
    (default from settings); a model without weights is refused."""
    if model is None:
        model = settings.model
        if pretrained is None:
            pretrained = settings.pretrained
    if pretrained is None and not str(model).startswith(("local-dir:", "hf-hub:")):
        # open_clip would build a model with random weights: never what a
        # search index wants
        import open_clip

        tags = open_clip.list_pretrained_tags_by_model(model) or []
        raise ValueError(
            f"pretrained: model {model!r} needs pretrained weights: a tag "
            f"(one of {tags}) or a local weights file"
        )
    return resolve_model(model, pretrained)


def disable(dataset, secrets=None, runs=None):
    """:func:`fiftyone_ai_search.embeddings.disable_embeddings` of a target,
    deleting its Brain runs with ``runs`` (the module that keeps them,
    :mod:`fiftyone_ai_search.brain`); ``runs=None`` leaves them alone (for
    the Brain, which deletes its run itself)."""
    settings = get_settings(secrets=secrets)
    _check_can_drop(dataset, settings)  # before anything is written
    doc = st.disable(dataset)  # one write: running computations are stale
    if doc is None:
        return
    finish_disable(dataset, doc, runs=runs, settings=settings)


def _check_can_drop(target, settings):
    """Refuses to start a disable that could not drop the indexes: those
    on a Qdrant server when no URL is configured (a disable from the App
    whose URL was only in its plugin secrets switched AI search off and
    removed the Brain run, then failed, leaving the state and the server's
    collection behind)."""
    doc = st.load_raw(st.dataset_key(target))
    if doc is None or settings.qdrant_url:
        return
    if any(ref.backend == "server" for ref in doc.indexes):
        raise ValueError(
            f"{indexes.what(target)} keeps its index on a Qdrant server, and no "
            f"server URL is configured here: set {ENV_PREFIX}QDRANT_URL "
            f"(and {ENV_PREFIX}QDRANT_API_KEY), or pass secrets=... (the "
            "App's plugin secrets). Nothing was changed")


def finish_disable(target, doc, runs=None, settings=None):
    """What :func:`disable` does after its first write: deletes the Brain
    runs, the indexes, the state and the latest results of ``target``. The
    refresher runs it for a disable that was killed midway (see
    :func:`fiftyone_ai_search.index.state.abandoned_disables`).

    Args:
        target: the dataset, or a :class:`~fiftyone_ai_search.index.targets.Objects`;
            None if its dataset no longer exists
        doc: its :class:`~fiftyone_ai_search.index.state.IndexState`,
            switched off
        runs (None): the module that keeps the Brain runs of the index
            (:mod:`fiftyone_ai_search.brain`), to delete them; None leaves
            them
        settings (None): the :class:`fiftyone_ai_search.config.Settings`
    """
    if runs is not None and target is not None:  # every run of the index goes
        runs.unregister_all(target)
    delete_index_and_state(doc, settings)
    if target is not None:
        # the latest results go with the index; named collections stay, as
        # plain saved views
        delete_temporary_collection(targets.dataset_of(target),
                                    targets.field_of(target))


def forget_deleted(key, settings=None):
    """Removes the index, collection scores and state of a target (its
    ``key``) whose dataset was deleted."""
    doc = st.disable(key)
    if doc is not None:
        delete_index_and_state(doc, settings)
    logger.info("AI search: dataset '%s' was deleted; removed its index",
                (doc.dataset_name if doc else None) or key)


def delete_index_and_state(doc, settings=None):
    """Deletes a dataset's indexes, its collections' scores and its state;
    also of a dataset that no longer exists.

    Args:
        doc: the dataset's :class:`~fiftyone_ai_search.index.state.IndexState`
            (its ``key`` is the dataset's id), already switched off
            (:func:`fiftyone_ai_search.index.state.disable`)
        settings (None): the :class:`fiftyone_ai_search.config.Settings`
    """
    doc = st.as_state(doc)  # (a caller may hand the stored document)
    indexes.drop_indexes(doc.key, doc.indexes, settings)
    delete_collections_of(doc.key)
    st.delete_key(doc.key)
    if doc.problems():  # it may have lost the names of its indexes
        indexes.drop_unreferenced(doc.key, settings)


def is_embeddings_enabled(dataset: fod.Dataset,
                          patches_field: str | None = None,
                          frames: bool = False) -> bool:
    """Whether AI search is on for ``dataset`` (for the objects of
    ``patches_field``, if given; for the frames of a video dataset, with
    ``frames=True``)."""
    doc = st.load(resolve_target(dataset, patches_field, frames))
    return bool(doc and doc.enabled)


def calculate_embeddings(dataset: fod.Dataset, force: bool = False,
                         wait: bool = False, verify_files: bool = False,
                         progress: bool | Callable[[int, int], None] = True,
                         secrets: dict | None = None,
                         patches_field: str | None = None,
                         frames: bool = False
                         ) -> SyncReport | None:
    """Brings the dataset's embeddings up to date (incrementally).

    New samples are embedded, samples whose image changed (other filepath or
    file content) are re-embedded, deleted samples are removed; edits that do
    not touch the image embed nothing. If a computation already runs for the
    dataset (in any process), ``wait=True`` waits for it and then syncs what
    is left, and ``wait=False`` asks it to sync once more when done.

    Examples::

        report = ais.calculate_embeddings(dataset, wait=True)
        print(report)  # added 200, updated 0, removed 0, failed 1, ...

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset`
        force (False): rebuild the index from scratch
        wait (False): block until done and return a report
        verify_files (False): check the fingerprint of every sample's file,
            not only of samples edited since the last sync (finds images
            overwritten on disk without FiftyOne knowing), and every stored
            vector (re-embeds those that are zero or not finite)
        progress (True): show a progress bar when ``wait=True`` (unless
            FiftyOne's ``show_progress_bars`` config is off); or a callable
            ``progress(done, total)``
        secrets (None): plugin secrets (Qdrant URL / API key)
        patches_field (None): sync the object index of this label field
            instead (its report counts objects)
        frames (False): sync the frame index of a video dataset instead
            (its report counts videos)

    Returns:
        a :class:`fiftyone_ai_search.sync.images.SyncReport` if ``wait=True``, else
        None

    Raises:
        fiftyone_ai_search.errors.SyncCancelled: with ``wait=True``, if AI
            search is switched off for it while the call waits or computes
    """
    force = validate.boolean(force, "force")
    wait = validate.boolean(wait, "wait")
    verify_files = validate.boolean(verify_files, "verify_files")
    progress = validate.progress(progress)
    dataset = resolve_target(dataset, patches_field, frames)
    indexes.require_enabled(dataset)
    if not wait:
        runner.start_background(
            dataset, force=force, verify_files=verify_files, secrets=secrets
        )
        return None

    settings = get_settings(secrets=secrets)
    bar = None
    if progress is True and not _show_progress_bars():
        progress = None
    if progress is True:
        from tqdm.auto import tqdm  # start-up: tqdm, for progress=True

        bar = tqdm(desc=f"Embedding '{dataset.name}'",
                   unit="video" if frames else
                   "img" if patches_field is None else "obj")

        def progress(done, total):
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        return runner.run_sync(
            dataset,
            force=force,
            verify_files=verify_files,
            progress=progress or None,
            settings=settings,
        )
    finally:
        if bar is not None:
            bar.close()


def _show_progress_bars() -> bool:
    # imported here: importing the package must not import FiftyOne (it
    # reads its config once, when first imported; see testing.py)
    import fiftyone as fo

    return bool(fo.config.show_progress_bars)


def maintain_index(dataset: fod.Dataset, settings: Settings | None = None,
                   min_points: int | None = None) -> int:
    """The background upkeep of the approximate search of ``dataset``'s
    index (see :meth:`fiftyone_ai_search.store.VectorStore.maintain`):
    learns its cells once it is large enough (again as it grows), and gives
    new points theirs; and sweeps scores left behind by deleted collections
    (see :func:`fiftyone_ai_search.results.sweep_orphaned_scores`).
    The worker runs it after each sync, the refresher on each pass; searches
    stay correct (exact where no cells are complete) at any point of it.

    Args:
        dataset: the dataset
        settings (None): the :class:`fiftyone_ai_search.config.Settings`
        min_points (None): the index size from which the cells pay; default
            :data:`fiftyone_ai_search.store.cells.MIN_POINTS`

    Returns:
        the number of points given a cell (0 when there was nothing to do)
    """
    if not isinstance(dataset, targets.Target):  # (the worker's targets)
        dataset = media.source_dataset(dataset, "dataset")
    if settings is not None and not isinstance(settings, Settings):
        raise ValueError("settings must be a Settings "
                         f"(fiftyone_ai_search.get_settings()), got "
                         f"{settings!r}")
    if min_points is not None:
        min_points = validate.integer(min_points, "min_points", 1,
                                      validate.MAX_LIMIT)
    doc = st.load(dataset)
    if doc is None or not doc.enabled or not doc.index:
        return 0
    sweep_orphaned_scores(targets.dataset_of(dataset))
    store = indexes.open_ref(doc.index, settings)
    # a pass that learns the cells takes the audit's exact answers
    exact = audit.ExactTopK(
        store, lambda: audit_prompts.vectors(doc.index, settings))
    try:
        done = store.maintain(
            min_points=cells.MIN_POINTS if min_points is None else min_points,
            exact=exact)
        _audit_if_due(store, doc, settings, exact)
        return done
    except IndexNotFoundError:
        return 0  # replaced by a rebuild meanwhile: its own upkeep follows
    finally:
        store.close()


def _audit_if_due(store, doc, settings, exact=None):
    """Audits the recall of the approximate search (see
    :mod:`fiftyone_ai_search.store.audit`) when its cells are new or the
    index grew: prompts encoded by the index's own model, and stored
    vectors; with the exact answers that the pass which learned the cells
    took (``exact``, an :class:`~fiftyone_ai_search.store.audit.ExactTopK`)
    where it read every point, else by exact searches."""
    known = store.cells()
    if not audit.due(known, store.estimate_count()):
        return
    # as the sync stored them: the model is loaded only where none did
    # (and once: the pass that learned may have asked for them)
    texts = (exact.texts() if exact is not None
             else audit_prompts.vectors(doc.index, settings))
    rule = audit.audit(store, texts, exact=exact)
    if rule is not None:
        logger.info("AI search index '%s': approximate search audited in "
                    "%.1f s (exact top-k from %s): %s", store.name,
                    rule["seconds"], rule["truth"], rule["estimates"])


def get_embeddings_in_progress(dataset: fod.Dataset,
                               patches_field: str | None = None) -> bool:
    """Whether embeddings of ``dataset`` (of the objects of
    ``patches_field``, if given) are being computed right now."""
    return st.is_running(st.load(resolve_target(dataset, patches_field)))


def get_embeddings_updated_at(dataset: fod.Dataset,
                              patches_field: str | None = None
                              ) -> datetime.datetime | None:
    """When the index (of the objects of ``patches_field``, if given) last
    finished a sync (naive UTC datetime), or None."""
    doc = st.load(resolve_target(dataset, patches_field))
    return doc.updated_at if doc else None


def get_status(dataset: fod.Dataset, max_failures: int = 100,
               counts: bool = True, patches_field: str | None = None,
               frames: bool = False) -> dict:
    """The AI search status of a dataset.

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset`
        max_failures (100): the most failures to list (0: none)
        counts (True): whether to count the samples and the index. False
            reads the state alone (``counts`` and ``failures`` are then
            None): cheap enough to poll, and it never opens the index while
            a computation holds it
        patches_field (None): the status of the object search of this
            label field instead: ``counts`` then has ``num_objects`` (of
            the field) where images have ``num_samples``; ``crop`` says how
            objects are cropped, and each failure names the object
            (``label_id``) and its sample
        frames (False): the status of the frame index of a video dataset
            instead: ``counts`` then has ``num_videos`` (of the dataset)
            and ``num_indexed`` counts frames; ``sampling`` is the rule
            (``FrameSampling.to_dict()``), ``progress`` has ``frames``
            (committed by the running sync) and each failure is a video

    Returns:
        a dict with ``enabled``, ``in_progress``, ``progress`` (``done``,
        ``total``, ``fraction``, ``building``), ``updated_at``, ``model``,
        ``pretrained``, ``backend`` (what was asked for), ``index`` (the
        ``model``, ``pretrained`` and ``backend`` of the complete index that
        searches use, or None before the first one), ``rebuild`` (the same
        of an index being built beside it, or None), ``counts``
        (``num_samples``, ``num_indexed`` in the index searches use,
        ``num_failed``), ``failures`` (up to ``max_failures`` of
        ``sample_id``, ``filepath``, ``reason``), ``last_report`` and
        ``last_error``; and ``object_fields``: the label fields with object
        search on. Where the index is damaged, ``num_indexed`` is None and
        ``index_error`` says what is wrong and what repairs it.
        ``approximate``: None while searches are exact; above the size
        where the index's cells pay, what its self-audit measured (see
        :mod:`fiftyone_ai_search.store.audit`): ``estimates`` of recall@k
        for ``text`` and ``image`` queries (``recall``, its 95% ``lower``
        bound, ``worst``, ``queries``, ``cells_scanned``, the share left
        ``exact``), ``measured_at``, ``points``
    """
    max_failures = validate.integer(max_failures, "max_failures", 0)
    counts = validate.boolean(counts, "counts")
    target = resolve_target(dataset, patches_field, frames)
    dataset = targets.dataset_of(target)
    doc = st.load(target)
    if doc is None or not doc.enabled:
        # the same keys as when enabled, so that a caller reads them alike
        status = dict.fromkeys(_STATUS_KEYS)
        status.update(enabled=False, in_progress=False,
                      object_fields=object_fields(dataset))
        status.update(targets.of(target).status_fields(None))
        if counts:
            status.update(counts=_item_counts(target, num_indexed=0,
                                              num_failed=0),
                          failures=[], approximate=None)
        return status

    running = doc.is_running()
    progress = (doc.progress or st.Progress()).to_status()

    def model_of(ref):
        return ref and {"model": ref.model, "pretrained": ref.pretrained,
                        "backend": ref.backend}

    status = {
        "enabled": True,
        "in_progress": running,
        "progress": progress if running else None,
        "updated_at": doc.updated_at,
        "model": doc.model,
        "pretrained": doc.pretrained,
        "backend": doc.backend,
        "index": model_of(doc.index),
        "rebuild": model_of(doc.build),
        "counts": None,
        "failures": None,
        "last_report": doc.last_report,
        "last_error": doc.last_error,
        "object_fields": object_fields(dataset),
    }
    status.update(targets.of(target).status_fields(doc))
    if not counts:
        return status

    approximate = {}

    def count(doc, store):
        try:
            # a missing index raises IndexNotFoundError (dropped by a
            # rebuild's switch: read_index reads the new one), a damaged
            # one (a file where it was included) IndexDamagedError
            store.check()
            approximate["summary"] = audit_summary(store.cells())
            return doc, store.count(), None
        except IndexDamagedError as e:
            # said, not raised: the status is where one looks for why
            return doc, None, str(e)
        finally:
            store.close()

    num_indexed = 0
    if doc.index:
        try:
            newer, num_indexed, error = indexes.read_index(target, doc, count,
                                                   required=False)
        except IndexNotFoundError:
            newer, num_indexed, error = doc, 0, None  # gone, none newer
        if newer is not doc:  # the index searches use switched meanwhile
            return get_status(dataset, max_failures=max_failures,
                              patches_field=patches_field, frames=frames)
        if error is not None:
            status["index_error"] = error
    # None while searches are exact; else the audited recall estimates
    status["approximate"] = approximate.get("summary")
    status["counts"] = _item_counts(target, num_indexed=num_indexed,
                                    num_failed=st.count_failures(target))
    keys = ("sample_id",) if patches_field is None else ("label_id",
                                                         "sample_id")
    status["failures"] = [
        dict({k: f[k] for k in keys}, filepath=f.get("filepath"),
             reason=f.get("reason"))
        for f in (st.get_failures(target, limit=max_failures)
                  if max_failures else [])
    ]
    return status


#: the keys of get_status() whether AI search is on or off (``approximate``,
#: ``patches_field`` and ``crop`` come with counts / an object index)
_STATUS_KEYS = ("enabled", "in_progress", "progress", "updated_at", "model",
                "pretrained", "backend", "index", "rebuild", "counts",
                "failures", "last_report", "last_error", "object_fields")


def _item_counts(target, **counts):
    """``counts`` with the number of what the index is of: ``num_samples``,
    ``num_objects`` for an object index, ``num_videos`` for a frame index
    (:attr:`~fiftyone_ai_search.index.targets.Target.count_key`)."""
    target = targets.of(target)
    # (the videos of every video slice for a grouped dataset's frames)
    return dict(counts, **{target.count_key: target.count(target.samples())})


def object_fields(dataset):
    """The label fields of ``dataset`` whose object search is on."""
    return st.object_fields(targets.dataset_key(dataset))


def get_embeddings(samples: foc.SampleCollection,
                   patches_field: str | None = None
                   ) -> tuple[list[str], np.ndarray]:
    """The embeddings the index holds for ``samples``.

    Args:
        samples: a :class:`fiftyone.core.collections.SampleCollection`
        patches_field (None): the embeddings of the objects of this label
            field in ``samples`` instead (its object index); a patches view
            of a field with object search on implies it

    Returns:
        a tuple ``(ids, embeddings)``: the ids (in the order of
        ``samples``) of the samples (label ids, for objects) that have an
        embedding, and an ``(n, dim)`` float32 array of L2-normalised
        vectors

    Raises:
        IndexNotReadyError: before the first index is complete, and while
            the index is rebuilt with another model (it holds the former
            model's embeddings until then)
    """
    dataset, view = media.resolve(samples)
    field = patches_field
    if field is None and getattr(samples, "_is_patches", False) and (
            samples._patches_field in object_fields(dataset)):
        field = samples._patches_field
    target = targets.target_of(dataset, validate.field_name(field))
    doc = indexes.require_index(target, same_model=True)
    if field is None:
        wanted = (dataset if view is None else view).values("id")
    elif getattr(samples, "_is_patches", False):
        wanted = samples.values("id")  # a patch's id is its label's
    else:
        wanted = samples.values(f"{field}.{target.list_field}.id",
                                unwind=True) if target.exists else []

    def vectors(doc, store):
        try:
            # in the order of wanted (each once), missing ones left out
            return store.get_vectors(wanted)
        finally:
            store.close()

    return indexes.read_index(target, doc, vectors, same_model=True)
