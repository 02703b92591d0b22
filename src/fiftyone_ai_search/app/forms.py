"""Form definitions shared by the operators and the panel, and the calls
they make.

Each form is built from a dict of parameters (``ctx.params`` in an operator,
the panel's state in the panel) so that one definition serves both. Inputs
that cannot be run (nothing selected, not indexed yet) are marked
``invalid``, as FiftyOne's own plugins do, so that Execute is blocked rather
than failing.

A search searches the images, or the objects of a label field that has an
object index: the "Search in" choice (``search_in``: :data:`IMAGES` or
``"objects:<field>"``), which forms to enable, compute and disable share.
"""

import base64
import binascii
import datetime
import functools
import io
import math
import os
import shlex

import fiftyone.operators.types as types
import PIL.Image

import fiftyone_ai_search as ais
from fiftyone_ai_search.index import media
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search import refreshers, validate
from fiftyone_ai_search.config import BACKENDS, MAX_REFRESH_MINUTES
from fiftyone_ai_search.duplicates import (DEFAULT_THRESHOLD, DUPLICATE_TAG,
                                           duplicate_groups_in)
from fiftyone_ai_search.errors import UnsupportedPlatformError
from fiftyone_ai_search.results import collection_summary
from fiftyone_ai_search.search import UPLOAD_MARK
from fiftyone_ai_search.store.portability import check_embedded_index
from fiftyone_ai_search.words import counted

SEARCH_MODES = ("prompt", "similar", "image", "diverse")
DEFAULT_LIMIT = 100

#: where the image of a search by image comes from: uploaded from the
#: browser, or a path on the App server's machine
UPLOAD = "upload"
SERVER_PATH = "server_path"

#: the largest image a curator may upload (the browser sends it in the
#: request, base64); a larger one is searched by its path on the server
MAX_UPLOAD_BYTES = 20 * 2**20

#: what the file input accepts: FiftyOne's file input matches the end of
#: the file's name, case-sensitively (no "image/*" wildcards)
UPLOAD_TYPES = ",".join(
    ext for e in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif",
                  ".tiff") for ext in (e, e.upper()))

#: the choice of the enable form that reveals free model / pretrained fields
CUSTOM_MODEL = "custom"

#: the "Search in" choice of the images; ``"objects:<field>"`` names the
#: objects of a label field (a field may be called "images")
IMAGES = "images"
_OBJECTS = "objects:"


# -- what is searched: the images, or the objects of a label field ---------------


def objects_choice(field):
    """The "Search in" value of the objects of ``field`` (None: images)."""
    return IMAGES if field is None else _OBJECTS + field


def field_of(choice):
    """The label field a "Search in" value names, None for the images.
    Headless callers may pass the field's name itself."""
    if not choice or choice == IMAGES:
        return None
    return choice[len(_OBJECTS):] if choice.startswith(_OBJECTS) else choice


def target_label(field):
    """A target as the user reads it: "images", "objects of ground_truth"."""
    return "images" if field is None else f"objects of {field}"


def patches_field_of(view):
    """The label field a patches view holds the objects of, else None."""
    if view is None or not getattr(view, "_is_patches", False):
        return None
    return getattr(view, "_patches_field", None)  # None: evaluation patches


def statuses(dataset, counts=False, frames=None):
    """The status of the dataset's images and of each label field with
    object search on, images first: ``{None: status, field: status}``.

    Args:
        counts (False): also count the index and the samples (objects) of
            each one not being computed. Opens their indexes: not for
            polling; without, only state is read
        frames (None): whether the App searches frames here (the frame
            index's status alone); None: :func:`is_video` of ``dataset``
    """
    if is_video(dataset) if frames is None else frames:
        # a video dataset's one index: the frames of its videos (no image
        # or object index), under the key of the images
        status = ais.get_status(dataset, frames=True, counts=counts)
        if media.is_grouped(dataset):  # (what status_text names)
            status["video_slices"] = video_slices(dataset)
        return {None: status}
    images = ais.get_status(dataset, counts=False)
    out = {None: images}
    for field in images["object_fields"]:
        out[field] = ais.get_status(dataset, patches_field=field,
                                    counts=False)
    if counts:
        for target, status in out.items():
            if status["enabled"] and not status["in_progress"]:
                out[target] = ais.get_status(dataset, patches_field=target)
    return out


def is_video(dataset, view=None):
    """Whether the App searches frames in ``dataset``: the frames of its
    videos (the frame index, :mod:`.frames`).

    A video dataset; a grouped dataset where the App shows a video slice
    (FiftyOne sets the App's active slice on ``ctx.dataset``), or shows
    frames or clips of its video slices (``view``: frame search results,
    where the App shows no slice). As FiftyOne's App does everything else
    in a grouped dataset, AI search follows the slice shown: an image
    slice searches the images.

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset`, or None
        view (None): the App's view (``ctx.view``), if known
    """
    if dataset is None:
        return False
    if dataset.media_type == "video":
        return True
    if not media.is_grouped(dataset):
        return False
    if view is not None and (view._is_frames or view._is_clips):
        return True
    return dataset.group_slice in video_slices(dataset)


def video_slices(dataset):
    """The names of the video slices of a grouped dataset (none for any
    other dataset)."""
    if dataset is None or not media.is_grouped(dataset):
        return []
    return [name for name, kind in (dataset.group_media_types or {}).items()
            if kind == "video"]


def video_slices_note(dataset, inputs):
    """Says, in a grouped dataset with video slices where the App shows an
    image slice, that their frames are searched with a video slice shown:
    the App's slice selector picks what AI search works on, as it does for
    the rest of the App."""
    slices = video_slices(dataset)
    if not slices or is_video(dataset):
        return
    named = ", ".join(f"'{s}'" for s in slices)
    inputs.view("video_slices", types.Notice(label=(
        f"This searches the images of slice '{dataset.group_slice}'. To "
        f"search the frames of the videos ({named}), show a video slice: "
        "pick it in the slice selector above the grid.")))


def searches_frames(ctx):
    """Whether the App's search in ``ctx`` is of frames (see
    :func:`is_video`)."""
    return is_video(ctx.dataset, ctx.view)


def app_statuses(ctx, counts=False):
    """:func:`statuses` of what the App searches in ``ctx``: the frame
    index where it searches frames (:func:`searches_frames`)."""
    return statuses(ctx.dataset, counts=counts, frames=searches_frames(ctx))


def ready_targets(dataset, all_statuses=None):
    """What can be searched now: None (the images) and label fields, those
    whose first index is complete, images first."""
    all_statuses = statuses(dataset) if all_statuses is None else all_statuses
    return [t for t, s in all_statuses.items() if readiness(s) == "ready"]


def enabled_targets(dataset):
    """The images (None) and the label fields that have AI search on."""
    return [t for t, s in statuses(dataset).items() if s["enabled"]]


def search_readiness(all_statuses):
    """Where searching stands over the images and the objects: ``"ready"``
    (something can be searched), ``"indexing"`` (a first index is being
    computed), else the images' ``"off"`` or ``"failed"``."""
    states = [readiness(s) for s in all_statuses.values()]
    if "ready" in states:
        return "ready"
    if "indexing" in states:
        return "indexing"
    return readiness(all_statuses[None])


def computing(all_statuses):
    """``(field, status)`` of the first target being computed, or None."""
    return next(((t, s) for t, s in all_statuses.items()
                 if s["in_progress"]), None)


def target_choice(inputs, name, targets, default, label="Search in",
                  on_change=None, description=None, view=None):
    """A choice among targets (None: images; fields), as ``search_in``
    values labelled in the user's words."""
    view = view or types.RadioGroup(orientation="horizontal")
    for target in targets:
        view.add_choice(objects_choice(target), label=target_label(target))
    inputs.enum(name, [objects_choice(t) for t in targets], label=label,
                default=objects_choice(default), view=view,
                on_change=on_change, description=description)


def chosen_target(params, targets, default=None):
    """The target ``params`` chose among ``targets``, else ``default``."""
    field = field_of(params.get("search_in"))
    if params.get("search_in") and field in targets:
        return field
    return default


# -- status --------------------------------------------------------------------


def readiness(status):
    """``"off"``, ``"indexing"`` (the first index is not complete yet),
    ``"failed"`` (the first indexing stopped with an error) or ``"ready"``."""
    if not status["enabled"]:
        return "off"
    if status.get("updated_at") is not None:
        return "ready"
    return "indexing" if status["in_progress"] else "failed"


def button_label(all_statuses):
    """The grid button's text: where AI search stands, at a glance (the
    seed's button animates while computing and turns solid when ready)."""
    running = computing(all_statuses)
    if running is not None:
        p = st.Progress.from_doc(running[1].get("progress"))
        if p is None or p.percent is None:
            return "AI Search: starting"
        return f"AI Search: computing {p.percent}%"
    state = search_readiness(all_statuses)
    return {"ready": "AI Search: ready", "off": "AI Search: off",
            "failed": "AI Search: failed"}.get(state, f"AI Search: {state}")


def progress_text(status):
    p = st.Progress.from_doc(status.get("progress"))
    if p is None or p.percent is None:
        return "starting the worker"
    percent = f"({p.percent}%)"
    if "sampling" in status:  # a frame index counts videos, and frames
        return (f"{p.done} / {counted(p.total, 'video')} {percent}, "
                f"{counted(p.frames or 0, 'frame')}")
    return f"{p.done} / {p.total} {percent}"


def _title(field, text, frames=False):
    """A status line's bold lead; an object index's names its field, a
    frame index says it is one."""
    lead = (f"Objects of {field}" if field is not None
            else "Frame index" if frames else None)
    if lead is None:
        return f"**{text}**"
    return f"**{lead}: {text[0].lower()}{text[1:]}**"


def sampling_text(sampling):
    """A frame index's sampling rule in a curator's words: "1 frame per
    second", "2 frames per second and scene changes"."""
    fps = (sampling or {}).get("fps") or 1.0
    text = f"{fps:g} frame{'' if fps == 1 else 's'} per second"
    if (sampling or {}).get("scene_threshold") is not None:
        text += " and scene changes"
    return text


def status_text(status):
    """Where AI search of a dataset (of the objects of a field, for a
    status with ``patches_field``; of the frames of a video dataset, for a
    status with ``sampling``) stands, in one line (markdown)."""
    field = status.get("patches_field")
    frames = "sampling" in status  # the frame index of a video dataset
    title = functools.partial(_title, field, frames=frames)
    state = readiness(status)
    if state == "off":
        if field is not None:
            return f"**Object search of {field} is off**."
        if frames and status.get("video_slices"):  # of a grouped dataset
            named = ", ".join(f"'{s}'" for s in status["video_slices"])
            return (f"**AI search is off** for the video slices ({named}) "
                    "of this dataset: enabling it indexes the frames of "
                    "their videos.")
        if frames:
            return ("**AI search is off** for this video dataset: enabling "
                    "it indexes the frames of its videos.")
        return "**AI search is off** for this dataset."
    index, rebuild = status.get("index"), status.get("rebuild")
    if status["in_progress"] and index and rebuild:
        return (title("Rebuilding with "
                      f"{model_display_name(**_model(rebuild))}")
                + f": {progress_text(status)}. Searches use "
                f"{model_display_name(**_model(index))} until it is "
                "complete.")
    if status["in_progress"]:
        return f"{title('Computing embeddings')}: {progress_text(status)}"
    if state == "failed":
        return (f"{title('Indexing failed')}: "
                f"{status.get('last_error') or 'stopped'}. Enable again, or "
                "run 'AI search: compute embeddings'.")
    text = (f"{title('Ready')} "
            f"({model_display_name(**_model(index or status))}")
    updated = status.get("updated_at")
    if updated is not None:
        text += f", updated {updated:%Y-%m-%d %H:%M} UTC"
    text += ")"
    counts = status.get("counts")
    if counts and frames:
        text += (f": {counted(counts['num_indexed'], 'frame')} of "
                 f"{counted(counts.get('num_videos'), 'video')} indexed "
                 f"({sampling_text(status['sampling'])}), "
                 f"{counted(counts['num_failed'], 'video')} failed")
    elif counts:
        noun, total = (("samples", counts.get("num_samples")) if field is None
                       else ("objects", counts.get("num_objects")))
        text += (f": {counts['num_indexed']} of {total} {noun} indexed, "
                 f"{counts['num_failed']} failed")
    if status.get("approximate"):
        text += f". {approximate_text(status['approximate'])}"
    if status.get("last_error"):
        text += f". Last sync failed: {status['last_error']}"
    if rebuild:
        text += (". A rebuild with "
                 f"{model_display_name(**_model(rebuild))} is pending: run "
                 "'AI search: compute embeddings'")
    return text + "."


def approximate_text(approximate):
    """What the status's ``approximate`` says, in one sentence: when and on
    how many points its self-audit measured, and per kind of query
    (prompts, images) the recall@k it estimates for the approximate
    search, or that it sends that kind to exact search (all of it, or a
    share)."""
    if not approximate.get("audited"):
        return ("Approximate search (not audited yet: the background "
                "upkeep measures its recall)")
    k, target = approximate["k"], approximate.get("target")
    when = datetime.datetime.fromtimestamp(approximate["measured_at"],
                                           datetime.timezone.utc)
    kinds = [_kind_text(label, approximate["estimates"][kind], target)
             for kind, label in (("text", "prompts"), ("image", "images"))
             if approximate["estimates"].get(kind) is not None]
    aim = f" (target {target:.2f})" if target else ""
    return (f"Approximate search, audited {when:%Y-%m-%d %H:%M} UTC on "
            f"{approximate['points']:,} indexed; estimated recall@{k}{aim}: "
            f"{'; '.join(kinds)}")


def _kind_text(label, estimate, target):
    """One kind of query in :func:`approximate_text`: ``prompts 0.99 (at
    least 0.98)``, with the share the audit sends to exact search; or
    ``prompts exact (...)`` where it sends them all."""
    exact = estimate.get("exact") or 0.0
    if exact >= 1.0:
        # (the audit keeps no recall of the depths it gave up on: only
        # that none within its cost bound held the target)
        held = f"{target:.2f}" if target else "the target"
        return (f"{label} exact (the audit found no approximate search "
                f"within its cost bound that holds {held}: every point is "
                "scanned)")
    text = (f"{label} {estimate['recall']:.2f} approximate (at least "
            f"{estimate['lower']:.2f}")
    if exact > 0:
        text += f"; {exact:.0%} of {label} searched exact"
    return text + ")"


def _model(ref):
    return {"model": ref["model"], "pretrained": ref.get("pretrained")}


def model_display_name(model, pretrained):
    """A model as a curator reads it: a checkpoint by its folder's name."""
    if model.startswith("local-dir:"):
        return os.path.basename(model.rstrip("/")) + " (local checkpoint)"
    return f"{model} / {pretrained}" if pretrained else model


def jsonable(value):
    """Dates as ISO strings, recursively, so the App can show them."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def blocked(inputs, name, message, kind=types.Warning):
    """A notice that also blocks Execute (``invalid``)."""
    return invalid(inputs.view(name, kind(label=message)), message)


def invalid(prop, message):
    """Marks an input invalid: the App shows ``message`` under it and
    blocks Execute (FiftyOne's own plugins check their inputs this way)."""
    prop.invalid = True
    prop.error_message = message
    return prop


def require_ready(ctx, inputs, objects=False):
    """Blocks the form unless the dataset's index is ready to search (a
    first indexing complete; with ``objects``, that of the images or of
    the objects of a field); says where to enable it.

    Returns:
        whether it is ready
    """
    all_statuses = app_statuses(ctx) if objects else {
        None: ais.get_status(ctx.dataset, counts=False)}
    if search_readiness(all_statuses) == "ready":
        return True
    lines = [status_text(s) for s in all_statuses.values()]
    blocked(inputs, "not_ready", " ".join(lines) + " Enable it from the "
            "AI Search button above the grid.")
    return False


# -- enabling --------------------------------------------------------------------


def enable_form(inputs, params, dataset=None):
    """What to index (the images, or the objects of a label field of
    ``dataset``, if it has such fields), the model choice (with what is on
    this machine) and the index backend."""
    video = is_video(dataset)
    slices = ", ".join(f"'{s}'" for s in video_slices(dataset))
    if video and slices:
        inputs.view("frames_intro", types.Notice(label=(
            f"A video slice: AI search indexes the frames of the videos of "
            f"every video slice ({slices}; those of FiftyOne's "
            "to_frames(fps=...)), embedded in the background and kept in "
            "sync; a search finds frames, which open as clips starting at "
            "each hit (or as a frames view).")))
    elif video:
        inputs.view("frames_intro", types.Notice(label=(
            "A video dataset: AI search indexes the frames of its videos "
            "(those of FiftyOne's to_frames(fps=...)), embedded in the "
            "background and kept in sync; a search finds frames, which "
            "open as clips starting at each hit (or as a frames view).")))
    else:
        video_slices_note(dataset, inputs)
    if not video and _enable_target_form(inputs, params, dataset):
        return  # objects of a field: the image index's model and backend

    choices = ais.available_models()
    default = choices[0]
    offered = next((c for c in choices if c.available), default)
    if not default.available:
        inputs.view("model_notice", types.Notice(label=(
            f"The default model {default.model} ({default.pretrained}) is not "
            "on this machine; its weights are downloaded on first use (about "
            "600 MB), which fails offline. The models listed as on this "
            "machine work offline.")))

    dropdown = types.Dropdown()
    for choice in choices:
        dropdown.add_choice(choice.key, label=choice.label)
    dropdown.add_choice(CUSTOM_MODEL, label="Another open_clip model...")
    inputs.enum("model_choice", dropdown.values(), label="Model",
                default=offered.key, view=dropdown)

    key = params.get("model_choice") or offered.key
    if key == CUSTOM_MODEL:
        prop = inputs.str("model", label="open_clip model", required=True,
                          description="A name such as ViT-B-16, or "
                          "local-dir:/path")
        inputs.str("pretrained", label="Pretrained",
                   description="A tag of that model (e.g. openai) or a "
                   "local weights file")
        problem = model_problem(params)
        if problem:
            invalid(prop, problem)
    else:
        chosen = next((c for c in choices if c.key == key), None)
        if chosen is not None and not chosen.available:
            try:
                ais.check_model(chosen.model, chosen.pretrained)
            except ais.ModelUnavailableError as e:
                blocked(inputs, "model_unavailable", str(e), types.Error)

    settings = ais.get_settings()
    prop = inputs.enum("backend", list(BACKENDS), label="Index",
                       default=settings.backend, view=types.RadioGroup(
                           orientation="horizontal"),
                       description="edge: embedded, nothing to run; server: "
                       "a Qdrant server (URL and API key from plugin "
                       "secrets)")
    if (params.get("backend") or settings.backend) == "edge":
        try:
            check_embedded_index()
        except UnsupportedPlatformError as e:  # Windows: no fcntl
            invalid(prop, str(e))
    if video:
        _frame_rate_input(inputs, params)


def _frame_rate_input(inputs, params):
    """The enable form's sampling rate of a frame index, invalid (with the
    reason) where it is not a rate."""
    default = ais.FrameSampling().fps
    prop = inputs.float(
        "fps", label="Frames per second", default=default,
        description=f"How many frames of each second of video are indexed "
        f"(default {default:g}); more finds shorter moments and embeds more "
        "frames. Another rate than an index's rebuilds it")
    try:
        frame_sampling(params)
    except ValueError as e:
        invalid(prop, str(e))


def frame_sampling(params):
    """The sampling rule the enable form's parameters ask for (True: the
    default rule).

    Raises:
        ValueError: the rate is not a number above 0
    """
    fps = params.get("fps")
    if fps is None or fps == "":
        return True
    if isinstance(fps, bool) or not isinstance(fps, (int, float)):
        raise ValueError(f"Frames per second: a number above 0, not {fps!r}.")
    try:
        return ais.FrameSampling(fps=fps)
    except ValueError:
        raise ValueError("Frames per second: a number above 0, not "
                         f"{fps!r}.") from None


def model_problem(params):
    """What is wrong with the model typed under "Another open_clip
    model...", in a curator's words, or None (nothing typed yet, or it can
    be used). Loads nothing: the name is looked up and the weights' files
    are looked for."""
    model = (params.get("model") or "").strip()
    if not model:
        return None
    pretrained = (params.get("pretrained") or "").strip() or None
    try:
        ais.check_model(model, pretrained)
    except ais.ModelUnavailableError as e:
        return str(e)  # says how to supply the weights
    except ValueError:
        which = f"'{model}'" + (f" with weights '{pretrained}'"
                                if pretrained else "")
        return (f"open_clip has no model {which}. Type a model name such "
                "as ViT-B-32 (and a pretrained tag it has, such as "
                "laion2b_s34b_b79k), or local-dir:/path/to/a/checkpoint.")
    return None


def _enable_target_form(inputs, params, dataset):
    """The enable form's "Search in" choice, where the dataset has label
    fields of objects. Returns whether the objects chosen are embedded with
    the image index's model (then there is no model to choose)."""
    fields = ais.object_label_fields(dataset) if dataset is not None else []
    if not fields:
        return False
    target_choice(
        inputs, "search_in", [None] + fields, None, view=types.Dropdown(),
        description="The images, or the objects (boxes) of a label field: "
        "each object is cropped and embedded, to be found on its own")
    field = enable_field(params, dataset)
    if field is None:
        return False
    if ais.is_embeddings_enabled(dataset, patches_field=field):
        inputs.view("objects_on", types.Notice(label=(
            f"Object search of {field} is on already: enabling it again "
            "embeds what changed since.")))
    images = ais.get_status(dataset, counts=False)
    if images["enabled"]:
        # one model for both: a prompt then means the same in either
        inputs.view("objects_model", types.Notice(label=(
            f"The objects of {field} are embedded with the image index's "
            f"model, {model_display_name(**_model(images))}, in an index "
            "of their own beside it.")))
        return True
    return False


def enable_field(params, dataset):
    """The label field whose objects the enable form's parameters ask to
    index, None for the images."""
    return field_of(params.get("search_in")) if dataset is not None else None


def model_from_params(params):
    """``(model, pretrained)`` that the enable form's parameters name."""
    model = params.get("model") or None
    pretrained = params.get("pretrained") or None
    key = params.get("model_choice")
    if key and key != CUSTOM_MODEL and model is None:
        model, _, pretrained = key.partition("|")
        pretrained = pretrained or None
    elif model is None:
        # headless without a choice: what the form offers first
        choices = ais.available_models()
        first = next((c for c in choices if c.available), choices[0])
        model, pretrained = first.model, first.pretrained
    return model, pretrained


def enable_from_params(ctx, params, secrets):
    """Enables AI search (of the images, or of the objects of a field; of
    the frames of a video dataset's videos) as the enable form says; loads
    no model here (the background worker does)."""
    if searches_frames(ctx):  # the frames of its videos
        model, pretrained = model_from_params(params)
        return ais.enable_embeddings(
            ctx.dataset, model=model, pretrained=pretrained,
            backend=params.get("backend") or None, secrets=secrets,
            load=False, frames=frame_sampling(params))
    field = enable_field(params, ctx.dataset)
    if field is not None and ais.is_embeddings_enabled(ctx.dataset):
        # as the form says: the image index's model and backend (the SDK's
        # defaults for objects), whatever an earlier choice left in params
        model = pretrained = backend = None
    else:
        model, pretrained = model_from_params(params)
        backend = params.get("backend") or None
    return ais.enable_embeddings(
        ctx.dataset, model=model, pretrained=pretrained, backend=backend,
        secrets=secrets, load=False, patches_field=field,
    )


# -- searching -------------------------------------------------------------------


def showing_results(view):
    """Whether the App shows the latest results (or a score range of
    them, images or objects): then a new search searches the dataset, not
    them."""
    return ais.is_latest_results(view)


def search_target(ctx, params, selected=(), in_modal=False, ready=None):
    """The label field whose objects a search from the App searches, or
    None for the images: the form's "Search in" choice; by default, in a
    patches view of a field with object search, its objects (what the grid
    shows); in the sample modal, those of the field of a selected label;
    else the images (or, where only objects can be searched, the first
    such field).

    Args:
        ready (None): :func:`ready_targets`, if known
    """
    ready = ready_targets(ctx.dataset) if ready is None else ready
    default = None if None in ready or not ready else ready[0]
    view_field = patches_field_of(ctx.view)
    if view_field is not None and view_field in ready:
        default = view_field
    elif in_modal:
        labelled = [label.get("field") for label in ctx.selected_labels or []]
        default = next((f for f in labelled if f is not None and f in ready),
                       default)
    return chosen_target(params, ready, default)


def references(ctx, field, selected):
    """The ids a similar search starts from, as the SDK takes them: sample
    ids for the images (``field`` None), label ids of objects of ``field``.

    Args:
        selected: what the App has selected (the grid's selection, or the
            sample open in the modal): samples, or in a patches view
            patches (a patch's id is its label's)
    """
    view = ctx.view
    if field is None:
        if getattr(view, "_is_patches", False) and selected:
            # the images the selected patches are of
            return list(dict.fromkeys(
                view.select(list(selected)).values("sample_id")))
        return list(selected)
    ids = list(selected) if patches_field_of(view) == field else []
    ids += [label["label_id"] for label in ctx.selected_labels or []
            if label.get("field") == field and label.get("label_id")]
    return list(dict.fromkeys(ids))


def search_scope(ctx, params, field=None):
    """What a search from the App searches: the dataset when the App shows
    the latest results (or a score range of them) or the user asked for the
    whole dataset, else the App's current view; for a patches view, the
    samples its patches belong to (a search of images finds samples, not
    patches), unless the search is of its objects (``field``, the field of
    the patches).

    Raises:
        fiftyone_ai_search.index.media.UnsupportedMediaError: for a frames or
            clips view (videos are not indexed); the message says what to do
    """
    view = ctx.view
    # (a patches view has no stages of its own: its stages are those of
    # the hidden dataset FiftyOne generates for it)
    whole = not view._stages and not view._is_generated
    if (params.get("whole_dataset") or whole  # the whole dataset
            or showing_results(view)):
        return ctx.dataset
    if field is not None and patches_field_of(view) == field:
        return view  # its patches are the objects searched
    _, samples = media.resolve(view)
    return view if samples is None else samples


def scope_form(ctx, inputs, params, on_change=None, field=None):
    """Says what a search (of the objects of ``field``, if given) will
    search; offers the whole dataset when that is a narrower view.

    Returns:
        False if the view cannot be searched (frames, clips), else None
    """
    try:
        scope = search_scope(ctx, {}, field)
    except media.UnsupportedMediaError as e:
        blocked(inputs, "scope", str(e), types.Error)
        return False
    of = "" if field is None else f" of {field}"
    # (objects are not counted: that reads every sample's labels, on every
    # render of the form)
    size = (f"{len(ctx.dataset)} samples" if field is None
            else f"all objects{of}")
    whole = f"Searching the whole dataset: {size}"
    if media.is_grouped(ctx.dataset):
        # a grouped dataset is searched in its active slice
        whole = (f"Searching slice '{ctx.dataset.group_slice}' of the "
                 f"dataset: {size}")
        video_slices_note(ctx.dataset, inputs)
    if scope is ctx.dataset:
        note = ""
        if showing_results(ctx.view):
            note = " (a new search never searches the latest results)"
        inputs.view("scope", types.Notice(label=f"{whole}{note}."))
        return
    if params.get("whole_dataset"):
        label = f"{whole}."
    elif scope is ctx.view and field is not None:
        label = f"Searching the {scope.count()} objects of the current view."
    elif ctx.view._is_patches:
        label = (f"Searching the {scope.count()} samples that the patches "
                 "of the current view belong to (a search finds samples, "
                 "not patches)." if field is None else
                 f"Searching the objects{of} of the {scope.count()} "
                 "samples that the patches of the current view belong to.")
    else:
        label = (f"Searching within the current view: {ctx.view.count()} "
                 "samples." if field is None else
                 f"Searching the objects{of} within the current view: "
                 f"{ctx.view.count()} samples.")
    inputs.view("scope", types.Notice(label=label))
    inputs.bool("whole_dataset", label="Search the whole dataset instead",
                default=False, on_change=on_change)


def search_form(ctx, inputs, params, selected, on_change=None,
                modes=SEARCH_MODES, in_modal=False):
    """The search form: what to search in (where object search is on),
    the mode, then the fields of that mode only.

    Args:
        ctx: the execution context
        inputs: the :class:`fiftyone.operators.types.Object` to fill
        params: the form's current values
        selected: what the App has selected: the samples (or patches) to
            search similar to, see :func:`references`
        on_change (None): called when the target, the mode or the
            clustering changes (a panel re-renders then; an operator's form
            is re-resolved)
        modes (SEARCH_MODES): the modes offered; with one, no mode choice
        in_modal (False): whether the sample modal is open (a selected
            label there makes objects the default)

    Returns:
        whether the form can be run (False: an input is invalid)
    """
    runnable = True
    ready = ready_targets(ctx.dataset)
    field = search_target(ctx, params, selected, in_modal, ready)
    if [t for t in ready if t is not None]:
        # object search is on: say what is searched, and offer the others
        target_choice(inputs, "search_in", ready, field, on_change=on_change,
                      description="The images, or the objects of a label "
                      "field (results are then patches)")
    refs = references(ctx, field, selected)
    things = "samples" if field is None else "objects"
    mode = params.get("mode") or ("similar" if refs else "prompt")
    if len(modes) > 1:
        inputs.enum(
            "mode", list(modes), label="Search by", default=mode,
            on_change=on_change,
            view=types.RadioGroup(orientation="horizontal"),
            description=f"prompt: describe it; similar: like the selected "
            f"{things}; image: like an image file; diverse: a "
            "representative spread",
        )
    if mode == "prompt":
        inputs.str("prompt", label="Prompt", required=True,
                   description="Commas separate several prompts")
        inputs.str("negative_prompt", label="Negative prompt",
                   description="Push away what this describes (optional)")
    elif mode == "similar":
        if refs:
            inputs.view("selected", types.Notice(
                label=f"Similar to the {len(refs)} selected "
                f"{'sample' if field is None else 'object'}(s)"
                f"{'' if field is None else ' of ' + field}."))
        else:
            runnable = False
            blocked(inputs, "selected", _nothing_selected(field))
    elif mode == "image":
        if not image_input(inputs, params):
            runnable = False
    else:
        diverse_inputs(inputs, params, on_change)
    prop = inputs.int("limit", label="Limit", default=DEFAULT_LIMIT, min=1,
                      description="How many results to show")
    problem = limit_problem(params.get("limit"))
    if problem:
        runnable = False
        invalid(prop, problem)
    if mode != "diverse":
        inputs.float("threshold", label="Minimum score", min=-1.0, max=1.0,
                     description="Only results scoring at least this "
                     "(cosine similarity, -1 to 1)")
    if scope_form(ctx, inputs, params, on_change, field) is False:
        runnable = False
    return runnable


def diverse_inputs(inputs, params, on_change=None):
    """The inputs of a diverse spread (of samples, objects or frames): how
    members are taken, the clustering, and the number of clusters."""
    inputs.enum("method", ["centroids", "random"], label="Take",
                default="centroids",
                view=types.RadioGroup(orientation="horizontal"),
                description="centroids: the most typical of each "
                "cluster; random: random members")
    inputs.enum("clustering_method", ["kmeans", "dbscan"],
                label="Clustering", default="kmeans", on_change=on_change,
                view=types.RadioGroup(orientation="horizontal"))
    if (params.get("clustering_method") or "kmeans") == "kmeans":
        inputs.int("num_clusters", label="Clusters", min=1,
                   description="Default: one per result (up to 100)")


def diverse_kwargs(params):
    """The SDK's arguments of the diverse spread :func:`diverse_inputs`
    asks for (their defaults when not given)."""
    kwargs = dict(method=params.get("method") or "centroids",
                  clustering_method=params.get("clustering_method")
                  or "kmeans")
    if kwargs["clustering_method"] == "kmeans":
        kwargs["num_clusters"] = params.get("num_clusters") or None
    return kwargs


def image_input(inputs, params):
    """The image to search by: uploaded from the browser (FiftyOne's file
    input), or the path of a file on the App server's machine.

    Returns:
        whether it can be run (False: nothing chosen yet, or invalid)
    """
    source = image_source(params)
    choices = types.RadioGroup(orientation="horizontal")
    choices.add_choice(UPLOAD, label="Upload from this computer")
    choices.add_choice(SERVER_PATH, label="A file on the App server")
    inputs.enum("image_source", [UPLOAD, SERVER_PATH], label="Image",
                default=source, view=choices)
    if source == SERVER_PATH:
        path = params.get("image_path")
        prop = inputs.str("image_path", label="Image file", required=True,
                          description="The path of an image file on the "
                          "machine the App's server runs on")
        if path and not os.path.isfile(path):
            invalid(prop, f"No file {path} on the App server's machine")
            return False
        return bool(path)
    upload = params.get("image_upload")
    # lite: while the form is filled in, the App sends the file's name, type
    # and size, not its content (sent once, to run the search)
    prop = inputs.define_property(
        "image_upload", types.UploadedFile(), label="Image file",
        required=True, view=types.FileView(
            label="Image file", types=UPLOAD_TYPES, lite=True,
            max_size=MAX_UPLOAD_BYTES,
            max_size_error_message=_too_big(), description="Drop an image "
            "here or click to choose one (JPEG, PNG, WebP, ...)"))
    problem = upload_problem(upload)
    if problem:
        invalid(prop, problem)
        return False
    return bool(upload)


def image_source(params):
    """Where the image of a search by image comes from: the form's choice;
    by default an upload, or the path that a headless caller passed."""
    source = params.get("image_source")
    if source in (UPLOAD, SERVER_PATH):
        return source
    return SERVER_PATH if params.get("image_path") else UPLOAD


def _too_big(size=None):
    text = (f"{size / 2**20:.1f} MB is too big: " if size else "") + (
        f"an uploaded image may be up to {MAX_UPLOAD_BYTES // 2**20} MB; "
        "for a larger one, choose 'A file on the App server'")
    return text[0].upper() + text[1:]


def upload_problem(upload):
    """What is wrong with an uploaded file (the file input's value: its
    ``name``, ``type``, ``size``, and ``content``, base64, when run), in a
    curator's words, or None (nothing uploaded yet, or an image)."""
    if not upload:
        return None
    if not isinstance(upload, dict):
        return "The uploaded image did not arrive as a file: upload it again."
    name, kind = upload.get("name") or "the file", upload.get("type") or ""
    if kind and not kind.startswith("image/"):
        return (f"{name} is not an image ({kind}): choose a JPEG, PNG, WebP "
                "or other image file.")
    size = upload.get("size")
    if isinstance(size, (int, float)) and size > MAX_UPLOAD_BYTES:
        return _too_big(size)
    return None


def searched_image(params):
    """The image a search by image uses: the path on the App server, or
    the uploaded image, decoded in memory (nothing is written to the App
    server's disk) and named by its file's name (PIL's ``filename``: the
    source file's name). A collection records an image given in memory by
    that name alone, never by a path (see ``perform_ai_search``): an upload
    is not kept, and its results say which file it was.

    Raises:
        ValueError: nothing uploaded, or not an image (said as the form
            says it)
    """
    if image_source(params) == SERVER_PATH:
        return params.get("image_path") or ""
    upload = params.get("image_upload")
    problem = upload_problem(upload) or (
        None if upload else "No image uploaded: choose an image file first.")
    if problem:
        raise ValueError(problem)
    try:
        data = base64.b64decode(upload.get("content") or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError("The uploaded image did not arrive whole (its "
                         "content is not base64): upload it again.") from None
    if not data:
        raise ValueError("The uploaded image is empty: upload it again.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(_too_big(len(data)))
    # only its base name: the name says which file it was, nothing more
    name = os.path.basename(str(upload.get("name") or "")) or "upload"
    try:
        image = PIL.Image.open(io.BytesIO(data))
        image.load()  # decoded here: a broken file is said with its name
    except Exception as e:  # PIL raises many kinds; all mean unreadable
        raise ValueError(f"{name}: cannot read the image ({e}): upload an "
                         "image file (JPEG, PNG, WebP, ...).") from None
    image.filename = name
    image.info[UPLOAD_MARK] = True  # its results say it was uploaded
    return image


def limit_problem(limit):
    """What is wrong with a typed limit, in a curator's words, or None."""
    if limit is None or limit == "":
        return None  # the default
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or (
            limit != int(limit) or limit < 1):
        return f"The limit is how many results to show: 1 or more, not {limit}."
    return None


def form_limit(params):
    """The limit the search form's parameters ask for (its default when
    not given; 0 stays 0, for the SDK to refuse)."""
    limit = params.get("limit")
    return DEFAULT_LIMIT if limit is None or limit == "" else int(limit)


def _nothing_selected(field):
    if field is None:
        return ("Nothing selected: select samples in the grid (or open one "
                "and use 'Find similar'), then search.")
    return (f"Nothing selected: select patches in a patches view of {field} "
            "(or open one and use 'Find similar'), or click an object of "
            f"{field} in the sample modal, then search.")


def search_from_params(ctx, params, selected, in_modal=False):
    """Runs the search that ``params`` (the form above) describes. Returns
    the collection name or None."""
    field = search_target(ctx, params, selected, in_modal)
    refs = references(ctx, field, selected)
    mode = params.get("mode") or ("similar" if refs else "prompt")
    kwargs = dict(limit=form_limit(params), patches_field=field)
    if mode == "prompt":
        kwargs.update(prompt=params.get("prompt") or "",
                      negative_prompt=params.get("negative_prompt") or None,
                      threshold=params.get("threshold"))
    elif mode == "similar":
        arg = "image_id" if field is None else "label_id"
        if not refs:
            raise ValueError(f"{arg}: nothing selected; select "
                             f"{'samples' if field is None else 'objects'} "
                             "in the grid first")
        kwargs.update({arg: refs}, threshold=params.get("threshold"))
    elif mode == "image":
        kwargs.update(image=searched_image(params),
                      threshold=params.get("threshold"))
    elif mode == "diverse":
        kwargs.update(diverse_kwargs(params))
    else:
        raise ValueError(f"mode must be one of {SEARCH_MODES}, got {mode!r}")
    return ais.perform_ai_search(search_scope(ctx, params, field), **kwargs)


def search_and_show(ctx, params, selected, in_modal=False):
    """Runs the search of ``params`` and shows its results in the App (a
    patches view, for objects).

    Returns:
        ``{"collection": name or None, "count": n}``
    """
    name = search_from_params(ctx, params, selected, in_modal)
    if name is None:
        ctx.ops.notify("Nothing matched", variant="warning")
        return {"collection": None, "count": 0}
    return {"collection": name, "count": len(show_collection(ctx, name))}


def show_collection(ctx, name, min_score=None, max_score=None):
    """Sets the App's view to a collection (or a score range of it): a
    patches view for a collection of objects.

    The view is sent as stages rather than by saved-view name: the App's
    list of saved views does not know a view saved during this request
    yet, and setting it by name failed on the first search.
    """
    # frame results shown as clips (app/frames.py) stay clips
    clips = bool(getattr(ctx.view, "_is_clips", False)) and \
        ais.is_frame_collection(ctx.dataset, name)
    view = ais.get_collection(ctx.dataset, name, min_score=min_score,
                              max_score=max_score, as_clips=clips)
    ctx.ops.set_view(view=view)
    return view


# -- near-duplicates ---------------------------------------------------------------


def duplicates_threshold(params):
    """The threshold of the near-duplicates form's parameters (its default
    when absent)."""
    value = params.get("threshold")
    return DEFAULT_THRESHOLD if value is None else value


def duplicates_form(ctx, inputs, params, on_change=None):
    """The near-duplicates form: the similarity threshold, and what is
    searched (as a search's scope).

    Returns:
        whether the form can be run (False: an input is invalid)
    """
    runnable = True
    threshold = duplicates_threshold(params)
    prop = inputs.float(
        "threshold", label="Similarity threshold", default=DEFAULT_THRESHOLD,
        min=0.0, max=1.0, required=True,
        description="Images at least this similar (cosine similarity, above "
        f"0 and at most 1; default {DEFAULT_THRESHOLD}) are near-duplicates. "
        "Lower finds looser copies",
    )
    if isinstance(threshold, bool) or not isinstance(
            threshold, (int, float)) or not 0 < threshold <= 1:
        runnable = False
        invalid(prop, "The threshold is a similarity above 0 and at most 1, "
                f"not {threshold!r}.")
    if scope_form(ctx, inputs, params, on_change) is False:
        runnable = False
    return runnable


def duplicates_delegated_by_default(ctx):
    """Whether the near-duplicates form offers to schedule (delegate) the
    run first: where its scope holds more than :data:`DELEGATE_DUPLICATES`
    samples (a minute or more in the App server's request)."""
    try:
        return len(search_scope(ctx, ctx.params)) > DELEGATE_DUPLICATES
    except Exception:  # no dataset yet, a view that cannot load: the form says
        return False


#: samples above which the near-duplicates form offers to schedule the run
#: first (about a minute of CPU through the cells: bench/bench_duplicates)
DELEGATE_DUPLICATES = 100_000

#: the collection a scheduled (delegated) near-duplicates run keeps its
#: groups in: the App is not there to show the latest results, and a
#: search meanwhile would replace them
DUPLICATES_COLLECTION = "AI search near-duplicates"


def _found_text(count, groups):
    return (f"Found {count - groups} near-duplicates of {groups} images: "
            "each image is shown first, its copies after it")


def duplicates_delegated(ctx, params):
    """Finds the near-duplicates of ``params`` in a delegated operation:
    its progress live (``ctx.set_progress``), the groups kept as the
    collection :data:`DUPLICATES_COLLECTION` (a saved view the App lists,
    and "Tag near-duplicates" offers).

    Returns:
        ``{"collection": name or None, "count": n, "groups": g}``
    """
    last = [-1.0]

    def progress(done, total):
        fraction = done / total if total else 1.0
        if fraction >= 1.0 or fraction - last[0] >= 0.01:  # not every cell
            last[0] = fraction
            ctx.set_progress(progress=fraction,
                             label=f"Finding near-duplicates: {done} / "
                             f"{total}")

    threshold = duplicates_threshold(params)
    name = ais.find_near_duplicates(search_scope(ctx, params),
                                    threshold=threshold, progress=progress)
    if name is None:
        return {"collection": None, "count": 0, "groups": 0}
    saved = ais.save_collection(ctx.dataset, DUPLICATES_COLLECTION,
                                source=name, overwrite=True)
    found = collection_summary(ctx.dataset, saved)
    groups = found["query"].get("groups", 0)
    ctx.set_progress(progress=1.0, label=_found_text(found["size"], groups))
    return {"collection": saved, "count": found["size"], "groups": groups}


def duplicates_and_show(ctx, params):
    """Finds the near-duplicates that ``params`` (the form above) asks for
    and shows them in the App: each group is the sample it keeps, then its
    duplicates. When there are none, says so and leaves the view alone.

    Returns:
        ``{"collection": name or None, "count": n, "groups": g}``
    """
    threshold = duplicates_threshold(params)
    name = ais.find_near_duplicates(search_scope(ctx, params),
                                    threshold=threshold)
    if name is None:
        ctx.ops.notify(f"No near-duplicates: no two images have a "
                       f"similarity of {threshold:g} or more", variant="info")
        return {"collection": None, "count": 0, "groups": 0}
    view = show_collection(ctx, name)
    latest = collection_summary(ctx.dataset, name)
    groups = latest["query"].get("groups", 0)
    ctx.ops.notify(_found_text(len(view), groups), variant="success")
    return {"collection": name, "count": len(view), "groups": groups}


def duplicates_collections(dataset):
    """The names of the dataset's collections of near-duplicates (the
    latest results, if they are, and saved ones), newest first."""
    return [c["name"] for c in reversed(ais.list_collections(dataset))
            if (c["query"] or {}).get("mode") == "duplicates"
            and "kept_ids" in c["query"]]


def tag_duplicates_form(ctx, inputs, params):
    """The form of "Tag near-duplicates": which collection of
    near-duplicates (the one shown, else the newest), the tag, and what
    will be tagged.

    Returns:
        whether the form can be run
    """
    names = duplicates_collections(ctx.dataset)
    if not names:
        blocked(inputs, "no_duplicates", "No near-duplicates to tag: find "
                "them first (Find near-duplicates above the grid).")
        return False
    default = names[0]
    shown = getattr(ctx.view, "name", None)
    if shown in names:
        default = shown
    name = params.get("collection") if params.get(
        "collection") in names else default
    choices = types.Dropdown()
    for n in names:
        choices.add_choice(n, label=n)
    # (not required=True: with a default, the App flagged both "Required
    # property" until the form resolved again; an empty tag is refused
    # below)
    inputs.enum("collection", names, label="Near-duplicates", default=default,
                view=choices)
    prop = inputs.str("tag", label="Tag", default=DUPLICATE_TAG)
    tag = params.get("tag", DUPLICATE_TAG)
    if not isinstance(tag, str) or not tag.strip():
        invalid(prop, "Type a tag.")
        return False
    groups = duplicate_groups_in(ctx.dataset, name)
    count = sum(len(g) - 1 for g in groups)
    inputs.md(f"Tags **{count}** images with `{tag}`: every image of the "
              f"{len(groups)} groups of '{name}' but the one each group "
              "keeps (shown first in its group).", name="what")
    return True


def tag_duplicates(ctx, params):
    """Tags all but each group's kept image (the form above) and refreshes
    the grid's tags.

    Returns:
        ``{"collection": name, "tag": tag, "tagged": n}``
    """
    names = duplicates_collections(ctx.dataset)
    name = params.get("collection") or (names[0] if names else
                                        ais.TEMPORARY_COLLECTION)
    tag = params.get("tag", DUPLICATE_TAG)
    tagged = ais.tag_near_duplicates(ctx.dataset, name, tag)
    # the grid's tiles and the sidebar's tag counts (reload_samples left
    # the tiles' tags as they were)
    ctx.ops.reload_dataset()
    ctx.ops.notify(f"Tagged {tagged} near-duplicates '{tag}'; the image "
                   "each group keeps is left untagged", variant="success")
    return {"collection": name, "tag": tag, "tagged": tagged}


def has_latest_results(dataset):
    """Whether the dataset has latest results (the temporary collection)."""
    return collection_summary(dataset, ais.TEMPORARY_COLLECTION) is not None


def named_collections(dataset):
    """The names of the dataset's saved collections (not the latest
    results), oldest first."""
    return [c["name"] for c in ais.list_collections(dataset)
            if c["name"] != ais.TEMPORARY_COLLECTION]


def collection_choice(ctx, inputs, params):
    """A dropdown of the dataset's named collections (blocked when there
    are none)."""
    names = named_collections(ctx.dataset)
    if not names:
        blocked(inputs, "no_collections",
                 "This dataset has no saved collections yet.")
        return None
    choices = types.Dropdown()
    for name in names:
        choices.add_choice(name, label=name)
    inputs.enum("name", names, label="Collection", required=True,
                default=chosen_collection(params, names), view=choices)
    return names


def chosen_collection(params, names):
    """The collection ``params`` chose among ``names``, else the newest."""
    return params.get("name") if params.get("name") in names else names[-1]


def name_problem(dataset, name, replace=False):
    """What is wrong with ``name`` for a new (or renamed) collection, in a
    curator's words, or None. Collections are saved views: the name must
    not be taken by another saved view, unless ``replace``."""
    if not isinstance(name, str) or not name.strip():
        return "Type a name for the collection."
    if not replace and dataset.has_saved_view(name):
        return (f"A saved view named '{name}' exists already: type another "
                "name.")
    return None


def collection_name_input(ctx, inputs, key, label, replace=False,
                          description=None):
    """A text input for a collection's name, invalid (with the reason) when
    the name is empty or taken. Returns whether the name can be used."""
    prop = inputs.str(key, label=label, required=True,
                      description=description)
    value = ctx.params.get(key)
    problem = name_problem(ctx.dataset, value, replace)
    if problem and value is not None:  # nothing typed yet: no error shown
        invalid(prop, problem)
    return problem is None


def show_dataset(ctx):
    """Sets the App's view to the whole dataset, leaving a saved view. (The
    App's ``clear_view`` only clears the view bar: an open saved view
    stays.)"""
    ctx.ops.set_view(view=ctx.dataset.view())


def leave_saved_view(ctx, name, to=None):
    """Before the saved view ``name`` is renamed or deleted (call it
    before: ``ctx.view`` is loaded by name when first read): if the App
    shows it, shows ``to`` (a view; None: the whole dataset) instead, as
    an unsaved view. FiftyOne's App left on a saved view that is gone fails
    ("Object of type SavedView is not JSON serializable"), even after a
    reload, until another dataset is opened. Do not also ask the App to
    ``reload_dataset``: sent at once, it reloads the page with the old
    saved view's address; the new view reloads the page (and the saved
    views list) by itself.

    Returns:
        whether the App showed it
    """
    if getattr(ctx.view, "name", None) != name:
        return False
    if to is None:
        show_dataset(ctx)
    else:
        ctx.ops.set_view(view=to)
    return True


# -- the refresher ---------------------------------------------------------------


def _target_words(target, dataset_name):
    """A refresher report's target ("name", "name (field)") in a
    curator's words."""
    if target == dataset_name:
        return "images"
    return f"objects of {target[len(dataset_name) + 2:-1]}"


def refresher_status(dataset):
    """Whether a refresher keeps ``dataset`` fresh, when a pass last looked
    at it and what it did (markdown), and whether one runs. Absolute times
    only: the text changes when something happened, not as time passes
    (each change is a state write of the panel, a page reload)."""
    info = refreshers.refreshers_of(dataset.name)
    running = info["running"]
    if running:
        r = running[0]
        scope = ("every dataset with AI search on" if r["datasets"] is None
                 else "this dataset" if r["datasets"] == [dataset.name]
                 else f"{len(r['datasets'])} datasets, this one included")
        text = (f"**Kept fresh** by a refresher on {r['host']} (pid "
                f"{r['pid']}): a pass every {r['interval_minutes']:g} min over "
                f"{scope}.")
        if len(running) > 1:
            text += f" ({len(running) - 1} more refresher(s) cover it.)"
    else:
        text = ("**No refresher keeps this dataset fresh**: images added or "
                "edited become searchable when embeddings are computed "
                "again, or when a refresher's pass syncs them.")
    last = info["last_pass"]
    if last is None:
        return text + " No refresher pass has looked at it yet.", bool(running)
    outcomes = "; ".join(f"{_target_words(t, dataset.name)}: {o}"
                         for t, o in last["outcomes"])
    return (f"{text} Last pass {last['ended_at']:%Y-%m-%d %H:%M} UTC, by "
            f"{last['by']}: {outcomes}.", bool(running))


#: the refresher form's choices of the datasets its passes look at (the
#: SDK's ``datasets``: this one, None, or a list of names)
REFRESH_THIS = "this"
REFRESH_ALL = "all"
REFRESH_CHOSEN = "chosen"


def enabled_dataset_names():
    """The names of the datasets with AI search on (of their images or of
    the objects of a field), sorted."""
    return sorted({doc.dataset_name for doc in st.enabled_states()
                   if doc.dataset_name})


def refresher_form(ctx, inputs, params):
    """The form that starts a refresher, with the options of the SDK's
    (``start_refresher(interval_minutes, datasets)``, the ``refresher``
    command's ``--interval-minutes`` and ``--dataset``): how often it
    passes, and over which datasets. Says what keeps the dataset fresh now,
    and what it will run.

    Returns:
        whether the form can be run (False: an input is invalid)
    """
    runnable = True
    status, _ = refresher_status(ctx.dataset)
    inputs.md(status, name="refresher_status")
    default = ais.get_settings().refresh_minutes
    prop = inputs.int(
        "interval_minutes", label="A pass every (minutes)", default=default,
        min=1, max=MAX_REFRESH_MINUTES, required=True,
        description="How often it looks for images added, edited or "
        f"deleted: 1 to {MAX_REFRESH_MINUTES} minutes (default "
        f"{default}, FIFTYONE_AI_SEARCH_REFRESH_MINUTES). A pass over a "
        "dataset where nothing changed loads no model")
    try:
        minutes = refresher_interval(params)
    except ValueError as e:
        runnable = False
        invalid(prop, str(e))
        # the command below shows no interval it would not run with
        minutes = "MINUTES"
    choices = types.RadioGroup()
    choices.add_choice(REFRESH_THIS, label=f"This dataset ({ctx.dataset.name})")
    choices.add_choice(REFRESH_ALL, label="Every dataset with AI search on, "
                       "also those switched on later")
    choices.add_choice(REFRESH_CHOSEN, label="Chosen datasets")
    scope = _refresh_scope(params)
    prop = inputs.enum("refresh", choices.values(), label="Over",
                       default=scope, view=choices)
    if scope == REFRESH_CHOSEN:
        names = enabled_dataset_names()
        prop = inputs.list(
            "datasets", types.String(), label="Datasets", required=True,
            default=[ctx.dataset.name],
            description="Datasets with AI search on",
            view=types.AutocompleteView(
                choices=[types.Choice(n, label=n) for n in names],
                allow_user_input=False, allow_duplicates=False))
    try:
        datasets = refresher_datasets(ctx, params)
    except ValueError as e:
        runnable = False
        invalid(prop, str(e))
        # (not None: no --dataset would read as every dataset)
        datasets = ["DATASET"]
    command = " ".join(
        ["python -m fiftyone_ai_search refresher --interval-minutes",
         str(minutes)] + [f"--dataset {shlex.quote(n)}"
                          for n in datasets or ()])
    inputs.view("service", types.Notice(label=(
        f"Starts a background service on the App server's machine: {command}. "
        "It runs in a session of its own, outlives the App, and its passes "
        "never run in the App's server; the notification gives its pid "
        "(stop it with kill <pid>).")))
    return runnable


def refresher_interval(params):
    """The refresher form's interval in minutes (the configured one when
    not given).

    Raises:
        ValueError: not a whole number of minutes from 1 to
            :data:`MAX_REFRESH_MINUTES`
    """
    value = params.get("interval_minutes")
    if value is None or value == "":
        return ais.get_settings().refresh_minutes
    # (a whole float too: the App sends numbers as JSON)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            not math.isfinite(value) or value != int(value)
            or not 1 <= value <= MAX_REFRESH_MINUTES):
        raise ValueError("A pass every 1 to "
                         f"{MAX_REFRESH_MINUTES} minutes (a day), in whole "
                         f"minutes: not {value!r}.")
    return int(value)


def refresher_datasets(ctx, params):
    """The datasets the refresher form asks for, as the SDK takes them:
    a list of names, or None for every dataset with AI search on. A
    headless caller may pass ``datasets`` alone.

    Raises:
        ValueError: chosen datasets, none or unknown
    """
    scope = _refresh_scope(params)
    if scope == REFRESH_ALL:
        return None
    if scope == REFRESH_THIS:
        if ctx.dataset.name not in enabled_dataset_names():
            raise ValueError("AI search is off for this dataset: switch it "
                             "on first (a refresher only refreshes datasets "
                             "with AI search on), or refresh every dataset "
                             "with AI search on.")
        return [ctx.dataset.name]
    chosen = params.get("datasets")
    if chosen is None:
        chosen = [ctx.dataset.name]
    chosen = validate.names(chosen, "datasets")
    if not chosen:
        raise ValueError("Choose one dataset or more.")
    unknown = [n for n in chosen if n not in enabled_dataset_names()]
    if unknown:
        raise ValueError("AI search is off for "
                         f"{', '.join(repr(n) for n in unknown)}: a "
                         "refresher only refreshes datasets with AI search "
                         "on.")
    return list(dict.fromkeys(chosen))


def _refresh_scope(params):
    """Which datasets the refresher form's parameters ask for: its
    choice; headless, chosen ones where ``datasets`` are given, else this
    dataset."""
    scope = params.get("refresh")
    if scope in (REFRESH_THIS, REFRESH_ALL, REFRESH_CHOSEN):
        return scope
    return REFRESH_CHOSEN if params.get("datasets") else REFRESH_THIS


def start_refresher(ctx, params):
    """Starts the refresher the refresher form (:func:`refresher_form`)
    asks for, as a background service on the App server's machine: its
    passes never run in the App's server. Says what it started.

    Returns:
        ``(pid, message)``
    """
    minutes = refresher_interval(params)
    datasets = refresher_datasets(ctx, params)
    pid = refreshers.start_service(interval_minutes=minutes,
                                   datasets=datasets)
    scope = ("every dataset with AI search on" if datasets is None else
             ", ".join(f"'{n}'" for n in datasets))
    return pid, (f"Started a refresher (pid {pid}): a pass every {minutes} "
                 f"min over {scope}, as a background service "
                 "(python -m fiftyone_ai_search refresher) that outlives "
                 f"the App. Stop it with kill {pid}.")
