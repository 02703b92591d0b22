"""Per-dataset AI search state, kept in FiftyOne's own MongoDB.

One document per dataset in the ``ai_search_state`` collection says whether
AI search is on, with which model and backend, which index searches use and
how far it is synced (the watermarks), which index is being built beside it,
what the last run reported, and who is computing right now (a lease).
Per-sample failures live in ``ai_search_failures`` (see
:func:`record_failures`). The object index of a
label field has a document of its own, keyed ``"<dataset id>~<field>"``
(:mod:`fiftyone_ai_search.index.targets`), with its ``dataset_id``,
``patches_field`` and ``crop`` settings, and its failures per object: every
function here takes a dataset or such a target. The frame index of a video
dataset has one keyed ``"<dataset id>~frames"``, with its ``sampling``
rule (``FrameSampling.to_dict()``) where an object index has its crop
settings, and its failures per video.

The rest of the package reads a document as an :class:`IndexState`
(:func:`load`, by attribute; its index references as :class:`IndexRef`)
and changes it only through the transition functions of this module;
:func:`get` gives the document as stored.

Nothing is written to the dataset or its samples: a write there would bump
``last_modified_at`` and make the sync re-trigger itself.

Generations: every change of what should be computed (enable, a model or
backend change, a rebuild, disable) gives the document a new ``generation``
in one atomic write. A computation carries the generation it started from
and checks it before each commit (:func:`check_generation`); once it is
stale, it writes nothing more. Its end (:func:`finish_sync`,
:func:`switch_to_build`) is a compare-and-set on that generation, so a
stale run can never overwrite the state of a newer one.

Indexes: searches use ``index`` (complete, of one model). A rebuild builds
``build`` beside it, under a name of its own that is never reused, and
:func:`switch_to_build` makes it the ``index`` in one write when complete.
Indexes no longer referenced are listed in ``retired`` in the same write
that stops referencing them, and dropped afterwards, so a crash anywhere
leaves nothing that the next run does not find.

The lease makes "never two computations at once" hold across processes and
machines: it is taken with an atomic compare-and-set, renewed by a heartbeat,
and taken over when its holder stops renewing it (a ``kill -9``) or, on the
same host, as soon as the holder's process is gone. Disabling while a
computation runs keeps the document (``enabled: False``, the lease) until
the computation lets go, so that a new enable waits for it.
"""

import dataclasses
import datetime
import hashlib
import logging
import os
import socket
import threading
import uuid
from typing import TYPE_CHECKING

import pymongo
from bson import ObjectId

from ..errors import StaleGeneration, StateDamagedError
from ..store import base
from . import targets
from .targets import dataset_key  # the key of a state: one definition

if TYPE_CHECKING:  # (fiftyone is imported when first needed: start-up)
    import fiftyone.core.dataset as fod

    #: what the functions of this module take: a dataset (its images), or
    #: a target (its images, the objects of a field, its videos' frames)
    AnyTarget = fod.Dataset | targets.Target

logger = logging.getLogger(__name__)

#: version of the state document layout; see :func:`_migrate`
STATE_SCHEMA_VERSION = 2

STATE_COLLECTION = "ai_search_state"
FAILURES_COLLECTION = "ai_search_failures"

#: a lease whose heartbeat is older than this is considered abandoned
LEASE_STALE_SECONDS = 30.0
HEARTBEAT_SECONDS = 2.0
#: how long a requested background run counts as "in progress" before its
#: worker has taken the lease (the worker has to import torch first)
PENDING_GRACE_SECONDS = 120.0


def utcnow():
    """Now, by the clock of the MongoDB server: the one clock of every
    time this package stores and compares (watermarks, leases and their
    heartbeats, failures, collections), so that hosts whose clocks disagree
    agree on it (a sync on a host whose clock ran ahead missed the edits
    made after it; a dead lease holder whose clock ran ahead blocked every
    waiter for as long). One round trip (``hello``, ~0.2 ms locally).

    Returns:
        a naive UTC datetime, as FiftyOne stores them
    """
    try:
        reply = database().command("hello")
    except pymongo.errors.OperationFailure:  # MongoDB < 4.4.2
        reply = database().command("isMaster")
    now = reply["localTime"]
    if now.tzinfo is not None:
        now = now.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return now

def database():
    """FiftyOne's MongoDB database, where the state, failures and results'
    scores are kept (fiftyone is imported when first needed: start-up)."""
    import fiftyone.core.odm as foo  # start-up: FiftyOne, on first use

    return foo.get_db_conn()


def _states():
    return database()[STATE_COLLECTION]


def _failures():
    coll = database()[FAILURES_COLLECTION]
    coll.create_index([("dataset_id", 1), ("sample_id", 1)], unique=True)
    return coll


#: the fields of an index reference (``index``, ``build``, ``retired``);
#: ``crop`` is how an object index crops its objects (None for images),
#: ``sampling`` which frames a frame index samples (None for the others)
INDEX_FIELDS = ("name", "model", "pretrained", "model_identity", "backend",
                "crop", "sampling")


def _model_label(model, pretrained):
    """How a model is named in messages: ``"ViT-B-32 (laion2b_s34b_b79k)"``
    (an index reference's, a state's)."""
    return f"{model} ({pretrained})" if pretrained else model


@dataclasses.dataclass(frozen=True)
class Progress:
    """How far the running computation of an index is, as its run records
    it in the state (``progress``): ``done`` of ``total`` items embedded
    (videos, for a frame index, which also counts the ``frames`` it
    committed), whether it is ``building`` an index beside the one searches
    use, and the name of the ``index`` it writes."""

    done: int = 0
    #: None until the run has counted what it has to embed
    total: "int | None" = None
    building: "bool | None" = None
    index: "str | None" = None
    #: a frame index's frames committed by the run (None for the others)
    frames: "int | None" = None
    started_at: "datetime.datetime | None" = None
    #: the stored dict (what :meth:`to_status` reports)
    _doc: dict = dataclasses.field(default_factory=dict, repr=False,
                                   compare=False)

    @classmethod
    def from_doc(cls, doc) -> "Progress | None":
        """The progress a stored dict (or a status's) holds; None for
        None (and for what a damaged document holds instead of a dict)."""
        if not isinstance(doc, dict):
            return None
        return cls(done=doc.get("done") or 0, total=doc.get("total"),
                   building=doc.get("building"), index=doc.get("index"),
                   frames=doc.get("frames"), started_at=doc.get("started_at"),
                   _doc=dict(doc))

    @property
    def fraction(self) -> "float | None":
        """The share done; None until the total is known (or when it is
        0)."""
        return self.done / self.total if self.total else None

    @property
    def percent(self) -> "int | None":
        """The share done in whole percent, rounded down; None as
        :attr:`fraction`."""
        return 100 * self.done // self.total if self.total else None

    def to_doc(self) -> dict:
        """Its stored form, as :func:`start_progress` writes it (a frame
        index's ``frames`` once it has counted some)."""
        doc = {"done": self.done, "total": self.total,
               "started_at": self.started_at, "building": self.building,
               "index": self.index}
        if self.frames is not None:
            doc["frames"] = self.frames
        return doc

    def to_status(self) -> dict:
        """What :func:`fiftyone_ai_search.get_status` says of it: the stored
        dict less ``started_at``, with the ``fraction`` once the total is
        known."""
        status = {k: v for k, v in self._doc.items() if k != "started_at"}
        if self.fraction is not None:
            status["fraction"] = self.fraction
        return status


@dataclasses.dataclass(frozen=True)
class IndexRef:
    """A reference to an index, as a state document names it (its
    ``index``, its ``build``, one of its ``retired``): what the rest of the
    package reads, by attribute; :meth:`to_doc` is its stored form.

    A build's reference also carries the ``generation`` it is built for,
    when it was ``started_at`` and the ``existing`` embeddings it is
    filled from (see :mod:`fiftyone_ai_search.sync.existing`); those of an
    index searches use are None.
    """

    name: str
    #: ``"edge"`` or ``"server"``
    backend: str
    model: "str | None" = None
    pretrained: "str | None" = None
    model_identity: "str | None" = None
    #: how an object index crops its objects (None for images)
    crop: "dict | None" = None
    #: which frames a frame index samples (None for images and objects)
    sampling: "dict | None" = None
    generation: "str | None" = None
    started_at: "datetime.datetime | None" = None
    existing: "dict | None" = None

    @classmethod
    def from_doc(cls, doc) -> "IndexRef | None":
        """The reference a stored one holds; None for None or for one that
        cannot be opened (of a damaged document: see :func:`usable_ref`)."""
        if not usable_ref(doc):
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: doc[k] for k in names if k in doc})

    @classmethod
    def of(cls, ref) -> "IndexRef":
        """``ref`` as an :class:`IndexRef`: itself, or the one a stored
        reference holds (``{"name", "backend", ...}``, as :func:`get` and a
        plain Brain run give them)."""
        if isinstance(ref, cls):
            return ref
        found = cls.from_doc(ref)
        if found is None:
            raise ValueError(f"Not an index reference: {_short(ref)}")
        return found

    def to_doc(self) -> dict:
        """Its stored form: the fields of :data:`INDEX_FIELDS`, and a
        build's ``generation``, ``started_at`` and ``existing``."""
        doc = {k: getattr(self, k) for k in INDEX_FIELDS}
        if self.generation is not None:
            doc.update(generation=self.generation,
                       started_at=self.started_at, existing=self.existing)
        return doc

    def same_index(self, other: "IndexRef") -> bool:
        """Whether it and ``other`` hold vectors of the same model in the
        same backend, of objects cropped alike or frames sampled alike
        (interchangeable for reads)."""
        return same_index(self.to_doc(), other.to_doc())

    @property
    def model_label(self) -> str:
        """How its model is named in messages:
        ``"ViT-B-32 (laion2b_s34b_b79k)"``."""
        return _model_label(self.model, self.pretrained)


def _new_generation():
    # random, never a counter: a disabled dataset's document may be deleted
    # and a new one start over, and a stale run must still see it is stale
    return uuid.uuid4().hex[:12]


def index_name(key, generation):
    """A new index's name: its target's key and generation, in the
    characters index names allow (a field's name may hold others)."""
    dataset_id, field = targets.split_key(key)
    if field is None:
        return f"dataset_{key}_{generation}"
    if field == targets.FRAMES:
        # (an image dataset's object index of a field named "frames" is
        # named below: no two targets of one dataset share a name)
        return f"dataset_{dataset_id}_frames_{generation}"
    tag = hashlib.sha1(field.encode()).hexdigest()[:10]
    return f"dataset_{dataset_id}_objects_{tag}_{generation}"


def _new_build(key, generation, model, pretrained, model_identity, backend,
               existing=None, crop=None, sampling=None):
    """The ``build`` reference of a new index of ``generation``, under a
    name nobody else ever uses; ``existing`` names embeddings the dataset
    already has to fill it from (see :mod:`fiftyone_ai_search.sync.existing`);
    ``crop`` the crop settings of an object index, ``sampling`` the
    sampling rule of a frame index."""
    if key.endswith(targets.KEY_SEPARATOR + targets.FRAMES) and \
            sampling is None:
        raise ValueError("a frame index needs its sampling rule")
    return {
        "name": index_name(key, generation),
        "model": model,
        "pretrained": pretrained,
        "model_identity": model_identity,
        "backend": backend,
        "crop": crop,
        "sampling": sampling,
        "generation": generation,
        "started_at": utcnow(),
        "existing": existing,
    }


def _migrate(doc):
    """Upgrades a state document written by an older version, in memory.

    Version 2 (generations, an index built beside the one searched) replaces
    v1's ``index_name`` and ``rebuild``: a v1 index that was complete and of
    the requested model becomes the ``index``; any other becomes the
    ``build``, which the next sync resumes (or drops, if of another model).
    """
    version = doc.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        return doc  # damaged: found by check(); nothing to migrate
    if version > STATE_SCHEMA_VERSION:
        raise RuntimeError(
            f"AI search state of dataset {doc['_id']} was written by a newer "
            f"version of fiftyone-ai-search (schema {version}); upgrade it"
        )
    if version == 1 and "index_name" in doc:
        ref = {k: doc.get(k) for k in INDEX_FIELDS[1:]}
        ref["name"] = doc.pop("index_name")
        complete = doc.get("updated_at") is not None and not doc.pop(
            "rebuild", False
        )
        doc.update(
            generation=doc.get("generation") or "v1",
            index=ref if complete else None,
            build=None if complete else dict(ref, generation="v1"),
            retired=[],
        )
        if not complete:
            doc.update(watermark=None, deletion_watermark=None)
    doc["schema_version"] = STATE_SCHEMA_VERSION
    return doc


@dataclasses.dataclass(frozen=True)
class IndexState:
    """The state of a target's AI search, as read from its document (see
    the module's docstring): what the rest of the package reads, by
    attribute. It is never written back: every change goes through the
    transition functions of this module (:func:`enable`,
    :func:`plan_rebuild`, :func:`finish_sync`, :func:`switch_to_build`,
    :func:`disable`, ...), whose compare-and-set writes are the only ones.

    Index references (``index``, ``build``, ``retired``) are
    :class:`IndexRef` objects (of a damaged document, those that can be
    opened: the others read None, and are left out of ``retired``).

    A state read by :func:`load` was checked (:func:`problems`); one read
    by :func:`load_raw` or handed by :func:`disable` may be damaged: its
    fields are then as stored, and :meth:`problems` says what is wrong.
    """

    #: the key of its target (:func:`dataset_key`)
    key: str
    schema_version: "int | None" = None
    enabled: bool = False
    generation: "str | None" = None
    dataset_name: "str | None" = None
    #: its target: the dataset's id, and the label field of an object index
    dataset_id: "str | None" = None
    patches_field: "str | None" = None
    #: the model and backend asked for (the index's, or that of the build)
    model: "str | None" = None
    pretrained: "str | None" = None
    model_identity: "str | None" = None
    backend: "str | None" = None
    #: how an object index crops its objects (None for images)
    crop: "dict | None" = None
    #: which frames a frame index samples (None for images and objects)
    sampling: "dict | None" = None
    brain_key: "str | None" = None
    #: the complete index searches use, and the one being built beside it
    index: "IndexRef | None" = None
    build: "IndexRef | None" = None
    #: indexes no longer referenced, still to drop
    retired: "list[IndexRef]" = dataclasses.field(default_factory=list)
    watermark: "datetime.datetime | None" = None
    deletion_watermark: "datetime.datetime | None" = None
    updated_at: "datetime.datetime | None" = None
    enabled_at: "datetime.datetime | None" = None
    disabled_at: "datetime.datetime | None" = None
    #: how far its running computation is (None before the first)
    progress: "Progress | None" = None
    last_report: "dict | None" = None
    last_error: "str | None" = None
    lease: "dict | None" = None
    pending: "dict | None" = None
    rerun_requested: bool = False
    #: the document it was read from (for the checks of this module)
    _doc: dict = dataclasses.field(default_factory=dict, repr=False,
                                   compare=False)

    @classmethod
    def from_doc(cls, doc) -> "IndexState | None":
        """The state a stored document (as :func:`_migrate` left it) holds;
        None for None."""
        if doc is None:
            return None
        names = {f.name for f in dataclasses.fields(cls)} - {"key", "_doc"}
        fields = {k: doc[k] for k in names if k in doc}
        fields["enabled"] = bool(doc.get("enabled"))
        fields["progress"] = Progress.from_doc(doc.get("progress"))
        fields["index"] = IndexRef.from_doc(doc.get("index"))
        fields["build"] = IndexRef.from_doc(doc.get("build"))
        retired = doc.get("retired")
        fields["retired"] = [IndexRef.from_doc(r) for r in (
            retired if isinstance(retired, list) else []) if usable_ref(r)]
        fields["rerun_requested"] = bool(doc.get("rerun_requested"))
        return cls(key=doc["_id"], _doc=doc, **fields)

    @property
    def model_label(self) -> str:
        """How the model it asks for (the index's, or that of the build) is
        named in messages: ``"ViT-B-32 (laion2b_s34b_b79k)"``."""
        return _model_label(self.model, self.pretrained)

    @property
    def indexes(self) -> "list[IndexRef]":
        """Every index it references (see :func:`indexes_of`)."""
        return [IndexRef.of(r) for r in indexes_of(self._doc)]

    def problems(self) -> list:
        """What is wrong with its document (see :func:`problems`)."""
        return problems(self._doc)

    def damaged(self, found) -> StateDamagedError:
        """The :class:`StateDamagedError` of its ``found`` problems."""
        return damaged(self.key, self._doc, found)

    def is_running(self) -> bool:
        """Whether a computation holds (or is about to take) its lease
        (one round trip: the database's clock)."""
        return is_running(self._doc)


def load_dataset(key):
    """The dataset whose id is ``key``, or None if it no longer exists."""
    import fiftyone as fo  # start-up: FiftyOne, on first use

    found = _dataset_doc(key)
    return fo.load_dataset(found["name"]) if found else None


def dataset_exists(key):
    """Whether the dataset whose id is ``key`` (or that of a target's key)
    still exists (one indexed read)."""
    return _dataset_doc(targets.split_key(key)[0]) is not None


def _dataset_doc(dataset_id):
    return database().datasets.find_one({"_id": ObjectId(dataset_id)},
                                   {"name": 1})


def load_target(key):
    """The target (a dataset, or the objects of one of its fields) whose
    key is ``key``, or None if its dataset no longer exists. The objects
    of a field deleted since are still returned: their index is then
    empty (see :class:`~fiftyone_ai_search.index.targets.Objects`)."""
    dataset_id, field = targets.split_key(key)
    dataset = load_dataset(dataset_id)
    if dataset is None or field is None:
        return dataset
    return targets.of_key(dataset, key)


def load(target: "AnyTarget") -> "IndexState | None":
    """The state of a target (a dataset, or the objects of one of its
    fields), or None if AI search was never on for it.

    Raises:
        StateDamagedError: see :func:`get_key`
    """
    return IndexState.from_doc(get(target))


def load_key(key) -> "IndexState | None":
    """The state of the target whose key is ``key``, or None (see
    :func:`get_key`)."""
    return IndexState.from_doc(get_key(key))


def load_raw(key) -> "IndexState | None":
    """The state of ``key`` as stored, neither checked nor migrated (it
    may be damaged: see :meth:`IndexState.problems`), or None."""
    return IndexState.from_doc(get_raw(key))


def as_state(doc) -> "IndexState | None":
    """``doc`` as an :class:`IndexState`: itself, or the state a stored
    document holds (a caller may hold either: :func:`get` gives
    documents)."""
    return doc if doc is None or isinstance(doc, IndexState) else \
        IndexState.from_doc(doc)


def get(target: "AnyTarget"):
    """The state document of a target (a dataset, or the objects of one of
    its fields), or None if AI search was never on for it (as stored: the
    rest of the package reads it through :func:`load`)."""
    return get_key(dataset_key(target))


def get_key(key):
    """The state document of the dataset whose id is ``key``, or None.

    Raises:
        StateDamagedError: if the document is not a sound state document
            (see :func:`problems`): the message says what is wrong and
            that disabling AI search (which always works) repairs it
    """
    doc = _states().find_one({"_id": key})
    if doc is None:
        return None
    version = doc.get("schema_version", 1)
    doc = _migrate(doc)
    found = problems(doc)
    if found:
        raise damaged(key, doc, found)
    if version < STATE_SCHEMA_VERSION:
        # rewritten once, only if nobody rewrote it meanwhile
        _states().replace_one({"_id": key, "schema_version": version}, doc)
    return doc


def get_raw(key):
    """The state document of ``key`` as stored (not checked nor
    migrated), or None."""
    return _states().find_one({"_id": key})


def damaged(key, doc, found):
    """The :class:`StateDamagedError` of the document ``doc`` of ``key``,
    whose ``found`` problems say what is wrong."""
    dataset_id, field = targets.split_key(key)
    name = doc.get("dataset_name")
    what = f"dataset '{name}'" if isinstance(name, str) else \
        f"the dataset with id {dataset_id}"
    args = "dataset" if field is None else f"dataset, patches_field={field!r}"
    part = "" if field is None else f" (objects of {field!r})"
    if field == targets.FRAMES and doc.get("patches_field") is None:
        args, part = "dataset, frames=True", " (its frames)"
    return StateDamagedError(
        f"The AI search state of {what}{part} is damaged: "
        f"{'; '.join(found[:5])}. Disable AI search and enable it again to "
        f"repair it: fiftyone_ai_search.disable_embeddings({args}), then "
        f"enable_embeddings({args}, model=...) (its index is rebuilt)"
    )


# -- the schema of a state document -------------------------------------------


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is(*types):
    def ok(value):
        return isinstance(value, types) and not (
            isinstance(value, bool) and bool not in types)
    return ok


def _optional(ok):
    return lambda value: value is None or ok(value)


def usable_ref(ref):
    """Whether ``ref`` names an index that can be opened (and dropped):
    a dict with a ``name`` and a known ``backend``."""
    return (isinstance(ref, dict) and isinstance(ref.get("name"), str)
            and base._NAME_RE.match(ref["name"]) is not None
            and ref.get("backend") in ("edge", "server"))


def _ref(ref):
    """Whether ``ref`` is a sound index reference."""
    return (usable_ref(ref) and isinstance(ref.get("model"), str)
            and isinstance(ref.get("model_identity"), str)
            and _optional(_is(str))(ref.get("pretrained"))
            and _optional(_is(dict))(ref.get("crop"))
            and _optional(_is(dict))(ref.get("sampling")))


def _build(ref):
    return _ref(ref) and isinstance(ref.get("generation"), str)


def _holder(fields):
    """Whether a lease (or a pending run) has ``fields`` of the right
    types: ``{name: type}``."""
    return lambda value: isinstance(value, dict) and all(
        _is(t)(value.get(k)) for k, t in fields.items())


_LEASE = _holder({"token": str, "host": str, "pid": int,
                  "heartbeat": datetime.datetime})
_PENDING = _holder({"pid": int, "host": str, "since": datetime.datetime})
_DATE = _optional(_is(datetime.datetime))

#: ``(field, check, what it must be, required)`` of every state document
_ALWAYS = [
    ("schema_version", _is(int), "an integer", False),
    ("enabled", _is(bool), "true or false", True),
    ("generation", _is(str), "a string", True),
    ("lease", _optional(_LEASE), "null or a lease (token, host, pid, "
     "heartbeat)", False),
    ("pending", _optional(_PENDING), "null or a started worker (pid, host, "
     "since)", False),
    ("retired", lambda v: isinstance(v, list) and all(map(usable_ref, v)),
     "a list of index references", False),
    ("rerun_requested", _is(bool), "true or false", False),
    ("disabled_at", _DATE, "null or a date", False),
]

#: and of one whose AI search is on
_ENABLED = [
    ("model", _is(str), "a string", True),
    ("model_identity", _is(str), "a string", True),
    ("backend", lambda v: v in ("edge", "server"), "'edge' or 'server'",
     True),
    ("pretrained", _optional(_is(str)), "null or a string", False),
    ("crop", _optional(_is(dict)), "null or a dict", False),
    ("sampling", _optional(_is(dict)), "null or a dict", False),
    ("index", _optional(_ref), "null or an index reference", False),
    ("build", _optional(_build), "null or an index reference with its "
     "generation", False),
    ("watermark", _DATE, "null or a date", False),
    ("deletion_watermark", _DATE, "null or a date", False),
    ("updated_at", _DATE, "null or a date", False),
    ("progress", _optional(_is(dict)), "null or a dict", False),
    ("last_report", _optional(_is(dict)), "null or a dict", False),
    ("last_error", _optional(_is(str)), "null or a string", False),
    ("brain_key", _optional(_is(str)), "null or a string", False),
]


def problems(doc):
    """What is wrong with a state document (as :func:`_migrate` left it):
    a list of ``"field: must be ..., got ..."``, empty if it is sound."""
    found = []
    rules = _ALWAYS + (_ENABLED if doc.get("enabled") is True else [])
    for field, ok, what, required in rules:
        if field not in doc:
            if required:
                found.append(f"{field}: missing")
        elif not ok(doc[field]):
            found.append(f"{field}: must be {what}, got {_short(doc[field])}")
    return found


def _same(ref, model_identity, backend, crop=None, sampling=None):
    return (
        ref is not None
        and ref.get("model_identity") == model_identity
        and ref.get("backend") == backend
        and ref.get("crop") == crop
        and ref.get("sampling") == sampling
    )


def same_index(a, b):
    """Whether two index references hold vectors of the same model in the
    same backend, of objects cropped alike or frames sampled alike
    (interchangeable for reads)."""
    return _same(a, b.get("model_identity"), b.get("backend"), b.get("crop"),
                 b.get("sampling"))


def indexes_of(doc):
    """Every index a state document references: ``[{name, backend, ...}]``
    (of a damaged document, those that can be opened)."""
    retired = doc.get("retired")
    refs = [doc.get("index"), doc.get("build"),
            *(retired if isinstance(retired, list) else [])]
    return [r for r in refs if usable_ref(r)]


def enable(target: "AnyTarget", model, pretrained, model_identity,
           backend, existing=None, crop=None, sampling=None):
    """Records that AI search is on for a target (a dataset, or the objects
    of one of its fields) with the given model.

    The same model and backend (and crop settings, for objects; sampling
    rule, for frames) as now change nothing. Another one means a new
    generation and an index built beside the current one, which searches
    keep using until the new one is complete; going back to the model of
    the current index cancels such a build.

    Returns:
        the new :class:`IndexState`
    """
    key = dataset_key(target)
    current = get(target)
    enabled = current is not None and current.get("enabled")
    if enabled and _same(current, model_identity, backend, crop, sampling):
        _states().update_one(
            {"_id": key}, {"$set": {"dataset_name": target.name}}
        )
        return load(target)

    generation = _new_generation()
    fields = {
        "schema_version": STATE_SCHEMA_VERSION,
        "dataset_name": target.name,
        "enabled": True,
        "generation": generation,
        "model": model,
        "pretrained": pretrained,
        "model_identity": model_identity,
        "backend": backend,
        "crop": crop,
        "sampling": sampling,
        "dataset_id": targets.split_key(key)[0],
        # (a frame index is of no label field: object_fields leaves it out)
        "patches_field": targets.of(target).field,
        "rerun_requested": False,
    }
    retired = []
    if enabled:
        index = current.get("index")
        if current.get("build"):
            retired.append(current["build"])
        if _same(index, model_identity, backend, crop, sampling):
            fields["build"] = None  # back to the model searches use
        else:
            fields["build"] = _new_build(key, generation, model, pretrained,
                                         model_identity, backend, existing,
                                         crop, sampling)
    else:
        # a fresh start; whatever a crashed disable left goes
        if current is not None:
            retired.extend(indexes_of(current))
        fields.update(
            index=None,
            build=_new_build(key, generation, model, pretrained,
                             model_identity, backend, existing, crop,
                             sampling),
            watermark=None,
            deletion_watermark=None,
            updated_at=None,
            enabled_at=utcnow(),
            last_report=None,
            last_error=None,
            progress=None,
        )
    update = {"$set": fields}
    if not enabled:
        fields["retired"] = retired
    elif retired:
        update["$push"] = {"retired": {"$each": retired}}
    _states().update_one({"_id": key}, update, upsert=True)
    return load(target)


def plan_rebuild(target: "AnyTarget"):
    """Asks for the index to be rebuilt from scratch, beside the current
    one (``calculate_embeddings(force=True)``). A new generation: a running
    computation stops at its next commit.

    Returns:
        the new :class:`IndexState` (None if AI search is off)
    """
    key = dataset_key(target)
    doc = get(target)
    if doc is None or not doc.get("enabled"):
        return IndexState.from_doc(doc)
    generation = _new_generation()
    build = _new_build(key, generation, doc["model"], doc["pretrained"],
                       doc["model_identity"], doc["backend"],
                       crop=doc.get("crop"), sampling=doc.get("sampling"))
    update = {"$set": {"generation": generation, "build": build}}
    if doc.get("build"):
        update["$push"] = {"retired": doc["build"]}
    res = _states().update_one(
        {"_id": key, "generation": doc["generation"]}, update
    )
    if res.modified_count != 1:
        return plan_rebuild(target)  # changed meanwhile: plan on the new one
    return load(target)


def check_generation(target: "AnyTarget", generation):
    """Raises :class:`StaleGeneration` unless AI search is on for
    ``target`` and its state is still at ``generation``."""
    doc = _states().find_one(
        {"_id": dataset_key(target)}, {"enabled": 1, "generation": 1}
    )
    if doc is None or not doc.get("enabled"):
        raise StaleGeneration("AI search was disabled during the computation")
    if doc.get("generation") != generation:
        raise StaleGeneration(
            "The AI search settings changed during the computation (another "
            "model, a rebuild, or disable and enable)"
        )


def _commit(target: "AnyTarget", generation, update):
    res = _states().update_one(
        {"_id": dataset_key(target), "generation": generation,
         "enabled": True},
        update,
    )
    if res.matched_count != 1:
        check_generation(target, generation)  # raises the reason
        raise StaleGeneration("The AI search state changed meanwhile")


def finish_sync(target: "AnyTarget", generation, **fields):
    """Records the end of an incremental sync of the current index, if the
    state is still at ``generation`` (else :class:`StaleGeneration`)."""
    _commit(target, generation, {"$set": fields})


def switch_to_build(target: "AnyTarget", generation, build_name,
                    **fields):
    """Makes the completed ``build`` the index searches use, in one write;
    the index it replaces is retired (see :func:`forget_retired`).

    Raises:
        StaleGeneration: if the state is no longer at ``generation`` or no
            longer builds ``build_name``
    """
    doc = get(target) or {}
    build = doc.get("build")
    if not build or build["name"] != build_name:
        check_generation(target, generation)
        raise StaleGeneration("Another index is being built now")
    update = {
        "$set": dict(fields, build=None,
                     index={k: build.get(k) for k in INDEX_FIELDS}),
    }
    if doc.get("index"):
        update["$push"] = {"retired": doc["index"]}
    # only the lease holder switches, and any other change of the index
    # comes with a new generation: the generation is the whole condition
    _commit(target, generation, update)


def forget_retired(target_or_key: "AnyTarget | str",
                   ref: "IndexRef | dict"):
    """Removes a dropped index from the ``retired`` list."""
    key = (target_or_key if isinstance(target_or_key, str)
           else dataset_key(target_or_key))
    _states().update_one({"_id": key, "retired": {"$type": "array"}},
                         {"$pull": {"retired": {"name":
                                                IndexRef.of(ref).name}}})


def enabled_states():
    """The :class:`IndexState` of every target (a dataset's images, or the
    objects of one of its fields) whose AI search is on; each one's ``key``
    is its target's (:func:`dataset_key`, see :func:`load_target`)."""
    return [IndexState.from_doc(_migrate(doc))
            for doc in _states().find({"enabled": True})]


def object_fields(dataset_id):
    """The label fields of the dataset whose id is ``dataset_id`` whose
    object search is on, sorted."""
    return sorted(doc["patches_field"] for doc in _states().find(
        {"dataset_id": dataset_id, "enabled": True,
         "patches_field": {"$type": "string"}}, {"patches_field": 1}))


def disable(target_or_key: "AnyTarget | str"):
    """Switches AI search off in one write (a new generation, so a running
    computation stops at its next commit).

    Returns:
        the :class:`IndexState` as it was before (unchecked: it may be
        damaged), or None if there was none
    """
    key = (target_or_key if isinstance(target_or_key, str)
           else dataset_key(target_or_key))
    doc = _states().find_one_and_update(
        {"_id": key},
        {"$set": {"enabled": False, "generation": _new_generation(),
                  "disabled_at": utcnow()}},
    )
    return IndexState.from_doc(_migrate(doc)) if doc else None


#: how long after a disable switched AI search off its leftovers (indexes,
#: state, Brain runs) are taken as abandoned by a disable that was killed,
#: rather than still being removed by it (see :func:`abandoned_disables`)
ABANDONED_DISABLE_SECONDS = 60.0


def abandoned_disables():
    """The :class:`IndexState` of the targets that a disable switched off
    more than :data:`ABANDONED_DISABLE_SECONDS` ago (by the database's
    clock) and never removed (it was killed), and that no computation
    holds: the refresher finishes those disables
    (:func:`fiftyone_ai_search.embeddings.finish_disable`)."""
    before = utcnow() - datetime.timedelta(seconds=ABANDONED_DISABLE_SECONDS)
    found = _states().find({
        "enabled": False,
        "$or": [{"disabled_at": {"$lt": before}},
                {"disabled_at": {"$exists": False}}],
    })
    return [IndexState.from_doc(_migrate(doc)) for doc in found
            if not is_running(doc)]


def delete_key(key):
    """Deletes the state of the dataset whose id is ``key`` (also of one that
    no longer exists): its failures, and its document unless AI search was
    enabled again meanwhile. A document whose lease a live computation
    holds is reduced to that lease (``enabled: False``) until it lets go,
    so that a new enable waits for that computation to stop."""
    _failures().delete_many({"dataset_id": key})
    _states().update_one(
        {"_id": key, "enabled": False},
        [{"$replaceWith": {
            "_id": "$_id",
            "schema_version": STATE_SCHEMA_VERSION,
            "enabled": False,
            "generation": "$generation",
            "lease": "$lease",
        }}],
    )
    doc = _states().find_one({"_id": key, "enabled": False})
    if doc is not None and not is_running(doc):
        _states().delete_one(
            {"_id": key, "enabled": False, "generation": doc.get("generation")}
        )


def update(target: "AnyTarget", **fields):
    """Sets fields of the state document of ``target``."""
    _states().update_one({"_id": dataset_key(target)}, {"$set": fields})


def start_progress(target: "AnyTarget", progress: Progress):
    """Records the progress of a run's phase that starts (``progress``,
    usually at 0 done), in place of the last phase's."""
    update(target, progress=progress.to_doc())


#: what a run sets of its progress as it goes (see :func:`set_progress`)
_PROGRESS_FIELDS = frozenset(f.name for f in dataclasses.fields(Progress)
                             if not f.name.startswith("_"))


def set_progress(target: "AnyTarget", **fields):
    """Sets fields of the running phase's progress (``done``, ``total``,
    ``frames``: those of :class:`Progress`), the others left as they are.

    Raises:
        ValueError: for a field :class:`Progress` does not have
    """
    unknown = sorted(set(fields) - _PROGRESS_FIELDS)
    if unknown:
        raise ValueError(f"Progress has no field {unknown}")
    update(target, **{f"progress.{k}": v for k, v in fields.items()})


# -- failures -----------------------------------------------------------------


# A failure record, as this module's functions take and give it, says what
# it holds: ``key`` (that of the vector that failed: a sample's id, an
# object's label id, a video's id for a frame index, whose failures are
# per video), ``sample_id`` (the sample: the image, the object's sample,
# the video), ``label_id`` (an object's), ``filepath``, ``fingerprint``,
# ``reason``, ``failed_at``, and what a sync keeps with it (an object's
# ``file_fingerprint``). As stored, ``sample_id`` holds the key (the
# collection's unique index, from before objects had failures) and
# ``source_id`` the sample of an object or a video: translated here only.

#: what the stored ``sample_id`` holds, and where an object's or a video's
#: sample is stored
_STORED_KEY, _STORED_SAMPLE = "sample_id", "source_id"


def _stored_failure(target, failure):
    """The stored form of a failure record of ``target``."""
    doc = {k: v for k, v in failure.items()
           if k not in ("key", "sample_id", "label_id")}
    doc[_STORED_KEY] = failure["key"]
    if not targets.of(target).keyed_by_sample:
        doc[_STORED_SAMPLE] = failure["sample_id"]
    return doc


def _failure_record(target, doc):
    """The failure record of a stored one of ``target``."""
    record = dict(doc)
    key = record.pop(_STORED_KEY)
    sample_id = record.pop(_STORED_SAMPLE, key)
    record.update(key=key, sample_id=sample_id,
                  **targets.of(target).failure_ids(key))
    return record


def record_failures(target: "AnyTarget", failures):
    """Records failures: one a vector that could not be computed.

    Args:
        target: a dataset, or a
            :class:`~fiftyone_ai_search.index.targets.Target`
        failures: a list of failure records (see above): dicts with
            ``key``, ``sample_id``, ``filepath``, ``fingerprint`` and
            ``reason`` (and what else the sync keeps with them)
    """
    if not failures:
        return
    key = dataset_key(target)
    now = utcnow()
    ops = [
        pymongo.UpdateOne(
            {"dataset_id": key, _STORED_KEY: f["key"]},
            {"$set": dict(_stored_failure(target, f), dataset_id=key,
                          failed_at=now)},
            upsert=True,
        )
        for f in failures
    ]
    _failures().bulk_write(ops, ordered=False)


def clear_failures(target: "AnyTarget", keys=None):
    """Forgets the failures of the given vectors' keys (samples' ids, or
    objects' label ids; default: all)."""
    query = {"dataset_id": dataset_key(target)}
    if keys is not None:
        query[_STORED_KEY] = {"$in": list(keys)}
    _failures().delete_many(query)


def get_failures(target: "AnyTarget", limit=None) -> "list[dict]":
    """The failure records of ``target`` (see :func:`record_failures`),
    oldest first."""
    cursor = _failures().find(
        {"dataset_id": dataset_key(target)}, {"_id": 0, "dataset_id": 0}
    ).sort("failed_at", 1)
    if limit:
        cursor = cursor.limit(limit)
    return [_failure_record(target, doc) for doc in cursor]


def get_failures_of(target: "AnyTarget", sample_ids) -> "list[dict]":
    """The failure records of ``target`` of the given samples (of their
    objects, for an object index)."""
    stored = (_STORED_KEY if targets.of(target).keyed_by_sample
              else _STORED_SAMPLE)
    return [_failure_record(target, doc) for doc in _failures().find(
        {"dataset_id": dataset_key(target), stored: {"$in": list(sample_ids)}},
        {"_id": 0, "dataset_id": 0})]


def count_failures(target: "AnyTarget"):
    return _failures().count_documents({"dataset_id": dataset_key(target)})


# -- the computation lease -----------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host may still be running (another
    user's, or one we may not signal: yes)."""
    try:
        # reap it if it is our own finished child: a zombie still "exists"
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # not ours to signal: it exists
        return True
    return True


def _holder_alive(holder, now):
    """Whether the process described by ``holder`` may still be running
    (a damaged one: no)."""
    if not _LEASE(holder):
        return False
    if holder.get("host") == socket.gethostname():
        return pid_alive(holder["pid"])
    return (now - holder["heartbeat"]).total_seconds() < LEASE_STALE_SECONDS


def is_running(doc):
    """Whether a computation holds (or is about to take) the lease of a
    state document, or of an :class:`IndexState`."""
    if doc is None:
        return False
    if isinstance(doc, IndexState):
        doc = doc._doc
    now = utcnow()
    lease = doc.get("lease")
    if lease and _holder_alive(lease, now):
        # a live process whose heartbeat stopped is hung: don't wait forever
        return (now - lease["heartbeat"]).total_seconds() < LEASE_STALE_SECONDS
    pending = doc.get("pending")
    if _PENDING(pending) and _holder_alive(
            dict(pending, token="", heartbeat=pending["since"]), now):
        return (now - pending["since"]).total_seconds() < PENDING_GRACE_SECONDS
    return False


class Lease:
    """The right to compute a dataset's embeddings, held by one process.

    Use :func:`try_acquire`; release with :meth:`release` (or as a context
    manager). While held, a heartbeat thread renews it.
    """

    def __init__(self, target: "AnyTarget", token: str):
        self.target = target
        self.key = dataset_key(target)
        self.token = token
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name="ai-search-lease", daemon=True
        )
        self._thread.start()

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                _states().update_one(
                    {"_id": self.key, "lease.token": self.token},
                    {"$set": {"lease.heartbeat": utcnow()}},
                )
            except Exception:  # a transient DB error must not kill the run
                logger.debug("Lease heartbeat failed", exc_info=True)

    def release(self):
        self._stop.set()
        _states().update_one(
            {"_id": self.key, "lease.token": self.token},
            {"$set": {"lease": None}},
        )
        # AI search was disabled while we ran: what is left was kept for us
        _states().delete_one({"_id": self.key, "enabled": False, "lease": None,
                              "index": {"$exists": False}})

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.release()


def try_acquire(target: "AnyTarget"):
    """Takes the computation lease of ``target`` if it is free.

    Returns:
        a :class:`Lease`, or None if another live process holds it
    """
    key = dataset_key(target)
    now = utcnow()
    doc = _states().find_one({"_id": key})
    if doc is None:
        return None
    found = problems(_migrate(doc))
    if found:
        # never a lease of a damaged state: a waiter would wait forever
        raise damaged(key, doc, found)

    lease = doc.get("lease")
    if lease and is_running({"lease": lease}):
        return None

    token = uuid.uuid4().hex
    new = {
        "token": token,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "acquired": now,
        "heartbeat": now,
    }
    # compare-and-set against what we saw, so two racers cannot both win
    # ({"lease": None} also matches a document without the field)
    seen = {"lease.token": lease["token"]} if lease else {"lease": None}
    res = _states().update_one(
        dict(seen, _id=key), {"$set": {"lease": new, "pending": None}}
    )
    if res.modified_count != 1:
        return None
    return Lease(target, token)


def mark_pending(target: "AnyTarget", pid):
    """Records that a background worker (process ``pid``) was started."""
    update(
        target,
        pending={"pid": pid, "host": socket.gethostname(), "since": utcnow()},
    )


def request_rerun(target: "AnyTarget"):
    """Asks the running computation to sync once more before it stops."""
    update(target, rerun_requested=True)


def take_rerun_request(target: "AnyTarget"):
    """Returns (and clears) whether a re-run was requested."""
    doc = _states().find_one_and_update(
        {"_id": dataset_key(target), "rerun_requested": True},
        {"$set": {"rerun_requested": False}},
    )
    return doc is not None
