"""Settings: defaults that work with nothing set, overridden by environment
variables and by FiftyOne plugin secrets.

=================================  =========================================
variable                           meaning (default)
=================================  =========================================
``FIFTYONE_AI_SEARCH_BACKEND``     ``edge`` (embedded Qdrant Edge) or
                                   ``server`` (Qdrant server / cluster)
``FIFTYONE_AI_SEARCH_DIR``         where embedded indexes live
                                   (``~/.fiftyone/ai_search``)
``FIFTYONE_AI_SEARCH_QDRANT_URL``  Qdrant server URL; ``:memory:`` runs
                                   qdrant-client's in-process local mode
``FIFTYONE_AI_SEARCH_QDRANT_API_KEY``  Qdrant API key (a secret)
``FIFTYONE_AI_SEARCH_QDRANT_SHARDS``  shards of a new server collection (1)
``FIFTYONE_AI_SEARCH_QDRANT_REPLICAS``  copies of each shard (1)
``FIFTYONE_AI_SEARCH_QDRANT_ON_DISK``  keep a new server collection's
                                   original vectors on disk, an int8 copy
                                   in RAM (``true``); ``false``: both in RAM
``FIFTYONE_AI_SEARCH_MODEL``       default open_clip model (``ViT-B-32``)
``FIFTYONE_AI_SEARCH_PRETRAINED``  default tag (``laion2b_s34b_b79k``)
``FIFTYONE_AI_SEARCH_BATCH_SIZE``  images per model call (32)
``FIFTYONE_AI_SEARCH_NUM_WORKERS`` image-decoding workers (cores - 1, >= 1)
``FIFTYONE_AI_SEARCH_DEVICE``      ``cuda``, ``mps`` or ``cpu`` (best found)
``FIFTYONE_AI_SEARCH_LOCK_TIMEOUT``  seconds a reader waits for an embedded
                                   index held by another process (60)
``FIFTYONE_AI_SEARCH_REFRESH_MINUTES``  refresher interval, 1-1440 (10)
``FIFTYONE_AI_SEARCH_MAX_IMAGE_PIXELS``  largest image decoded, in pixels
                                   after JPEG draft decoding (100000000);
                                   a larger one fails its sample
``FIFTYONE_AI_SEARCH_MAX_IMAGE_BYTES``  largest image file read, in bytes
                                   (1073741824, 1 GiB); a larger one fails
                                   its sample unread
``FIFTYONE_AI_SEARCH_DECODE_TIMEOUT``  most seconds one image may take to
                                   decode (60); a slower one fails its
                                   sample
=================================  =========================================

Secrets (``FIFTYONE_AI_SEARCH_QDRANT_URL``, ``FIFTYONE_AI_SEARCH_QDRANT_API_KEY``)
may also come from FiftyOne plugin secrets; they are never logged and never
stored in a dataset. A URL may hold credentials (``https://user:pass@host``,
``?api_key=...``): wherever this package shows one (reprs, errors, logs) it
is passed through :func:`redact_url` first.
"""

from __future__ import annotations

import dataclasses
import os
from urllib.parse import unquote_plus

ENV_PREFIX = "FIFTYONE_AI_SEARCH_"

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"

BACKENDS = ("edge", "server")

#: plugin secrets the App may hand us
SECRET_KEYS = (ENV_PREFIX + "QDRANT_URL", ENV_PREFIX + "QDRANT_API_KEY")

#: default of ``FIFTYONE_AI_SEARCH_MAX_IMAGE_PIXELS`` (see
#: :data:`fiftyone_ai_search.embedding.images.DEFAULT_MAX_PIXELS`)
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000

#: default of ``FIFTYONE_AI_SEARCH_MAX_IMAGE_BYTES``: a larger image file is
#: not read (see :data:`fiftyone_ai_search.embedding.images.DEFAULT_MAX_BYTES`)
DEFAULT_MAX_IMAGE_BYTES = 1 << 30

#: default of ``FIFTYONE_AI_SEARCH_DECODE_TIMEOUT``, in seconds: an image
#: that takes longer to decode fails (see
#: :data:`fiftyone_ai_search.embedding.images.DEFAULT_TIMEOUT`)
DEFAULT_DECODE_TIMEOUT = 60.0

_REDACTED = "***"


def redact_url(url):
    """A URL fit to show: its credentials replaced by ``***``.

    The user info (``user:password@``), the value of every query parameter
    (whatever its name: ``api_key=``, ``x-api-key=``, ``auth=``, or one a
    proxy invented) and the fragment are redacted; everything else (scheme,
    host, port, path, the parameters' names) stays, so that the URL still
    says where it points. Anything up to the last ``@`` counts as user info,
    so that a password holding ``/``, ``?`` or ``#`` does not leak either
    (at worst more than the user info is hidden).

    Examples::

        redact_url("https://user:pw@qdrant.example.com:6333?api_key=k&x=1")
        # 'https://***@qdrant.example.com:6333?api_key=***&x=***'

    Args:
        url: a URL, ``":memory:"`` or None

    Returns:
        a str (or ``url`` itself when it is empty)
    """
    if not url:
        return url

    text = str(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text

    if "@" in rest:
        rest = _REDACTED + "@" + rest.rpartition("@")[2]

    head, question, query = rest.partition("?")
    query, hash_, fragment = query.partition("#")
    if question:
        query = "&".join(_redact_param(part) for part in query.split("&"))
    if fragment:
        fragment = _REDACTED

    return scheme + sep + head + question + query + hash_ + fragment


def _redact_param(part):
    name, equals, value = part.partition("=")
    if equals and value:
        return name + equals + _REDACTED
    return part


def url_secrets(url):
    """What of a URL :func:`redact_url` hides: its user info, password,
    query parameter values and fragment (each as written, and decoded),
    longest first, for scrubbing them from text that quotes them (a
    library's error message). Values of fewer than 4 characters are left
    out (``timeout=5``: replacing every "5" would garble the text; the
    URL itself is still redacted whole).

    Args:
        url: a URL or None

    Returns:
        a list of str
    """
    if not url:
        return []
    rest = str(url).partition("://")[2] or str(url)
    userinfo, at, rest = rest.rpartition("@")
    found = [userinfo, userinfo.partition(":")[2]] if at else []
    query = rest.partition("?")[2]
    query, _, fragment = query.partition("#")
    found.append(fragment)
    found.extend(part.partition("=")[2] for part in query.split("&"))
    found += [unquote_plus(s) for s in found]
    return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)


def max_image_pixels(env=None):
    """The largest image decoded, in pixels:
    ``FIFTYONE_AI_SEARCH_MAX_IMAGE_PIXELS``, or
    :data:`DEFAULT_MAX_IMAGE_PIXELS`.

    Read from the environment on each call, without importing anything, so
    that decoding workers may call it.

    Args:
        env (None): a dict to read instead of ``os.environ``

    Returns:
        an int >= 1

    Raises:
        ValueError: if the variable is not a positive integer
    """
    return _positive(env, "MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS,
                     "number of pixels")


def max_image_bytes(env=None):
    """The largest image file read, in bytes:
    ``FIFTYONE_AI_SEARCH_MAX_IMAGE_BYTES``, or
    :data:`DEFAULT_MAX_IMAGE_BYTES` (read as :func:`max_image_pixels`).

    Raises:
        ValueError: if the variable is not a positive integer
    """
    return _positive(env, "MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES,
                     "number of bytes")


def decode_timeout(env=None):
    """The most seconds one image may take to decode:
    ``FIFTYONE_AI_SEARCH_DECODE_TIMEOUT``, or
    :data:`DEFAULT_DECODE_TIMEOUT` (read as :func:`max_image_pixels`).

    Raises:
        ValueError: if the variable is not a positive number
    """
    return _positive(env, "DECODE_TIMEOUT", DEFAULT_DECODE_TIMEOUT,
                     "number of seconds", float)


def _positive(env, key, default, what, kind=int):
    name = ENV_PREFIX + key
    raw = (os.environ if env is None else env).get(name)
    if raw is None or not raw.strip():
        return default

    try:
        value = kind(raw.strip().replace("_", ""))
    except ValueError:
        value = 0
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name}={raw!r} is not a positive {what}")
    return value


#: the longest refresh interval, in minutes (a day)
MAX_REFRESH_MINUTES = 1440


@dataclasses.dataclass(frozen=True)
class Settings:
    """Resolved settings. Build with :func:`get_settings`."""

    backend: str = "edge"
    storage_dir: str | None = None
    qdrant_url: str | None = None
    qdrant_api_key: str | None = dataclasses.field(default=None, repr=False)
    model: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED
    batch_size: int = 32
    num_workers: int = 1
    device: str | None = None
    lock_timeout: float = 60.0
    refresh_minutes: int = 10
    qdrant_shards: int = 1
    qdrant_replicas: int = 1
    qdrant_on_disk: bool = True

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(
                f"backend must be one of {BACKENDS}, got {self.backend!r}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(
                f"num_workers must be >= 0, got {self.num_workers}"
            )
        for name in ("qdrant_shards", "qdrant_replicas"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.refresh_minutes <= MAX_REFRESH_MINUTES:
            raise ValueError(
                f"refresh interval must be 1-{MAX_REFRESH_MINUTES} minutes, "
                f"got {self.refresh_minutes}"
            )

    def __repr__(self):
        # the dataclass repr, with the URL's credentials redacted (the API
        # key is not shown at all)
        values = []
        for field in dataclasses.fields(self):
            if not field.repr:
                continue
            value = getattr(self, field.name)
            if field.name == "qdrant_url":
                value = redact_url(value)
            values.append(f"{field.name}={value!r}")
        return f"{type(self).__name__}({', '.join(values)})"

    def replace(self, **kwargs):
        return dataclasses.replace(self, **kwargs)


def _default_storage_dir():
    import fiftyone.constants as foc  # start-up: FiftyOne, on first use

    return os.path.join(foc.FIFTYONE_CONFIG_DIR, "ai_search")


def _default_num_workers():
    return max(1, (os.cpu_count() or 2) - 1)


def _boolean(text):
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False,
             "no": False}.get(text.strip().lower())
    if value is None:
        raise ValueError(text)
    return value


_boolean.__name__ = "boolean (true / false)"


def get_settings(secrets: dict | None = None, **overrides) -> Settings:
    """Returns the :class:`Settings` in force.

    Args:
        secrets (None): a dict of plugin secrets (e.g. ``ctx.secrets``); they
            win over environment variables
        **overrides: explicit values, which win over everything

    Returns:
        a :class:`Settings`
    """
    if secrets is not None and not hasattr(secrets, "items"):
        raise ValueError(
            "secrets must be a dict of plugin secrets (e.g. ctx.secrets), "
            f"got {type(secrets).__name__}")
    env = dict(os.environ)
    for key, value in (secrets or {}).items():
        if key in SECRET_KEYS and value:
            env[key] = value

    def get(name, cast=str, default=None):
        raw = env.get(ENV_PREFIX + name)
        if raw is None or raw == "":
            return default
        try:
            return cast(raw)
        except ValueError:
            raise ValueError(
                f"{ENV_PREFIX}{name}={raw!r} is not a valid {cast.__name__}"
            ) from None

    url = get("QDRANT_URL")
    values = dict(
        backend=get("BACKEND", default="server" if url else "edge"),
        storage_dir=get("DIR"),
        qdrant_url=url,
        qdrant_api_key=get("QDRANT_API_KEY"),
        model=get("MODEL", default=DEFAULT_MODEL),
        pretrained=get("PRETRAINED", default=DEFAULT_PRETRAINED),
        batch_size=get("BATCH_SIZE", int, 32),
        num_workers=get("NUM_WORKERS", int, None),
        device=get("DEVICE"),
        lock_timeout=get("LOCK_TIMEOUT", float, 60.0),
        refresh_minutes=get("REFRESH_MINUTES", int, 10),
        qdrant_shards=get("QDRANT_SHARDS", int, 1),
        qdrant_replicas=get("QDRANT_REPLICAS", int, 1),
        qdrant_on_disk=get("QDRANT_ON_DISK", _boolean, True),
    )
    values.update({k: v for k, v in overrides.items() if v is not None})
    # a bad value fails here, not in every sample
    max_image_pixels(env), max_image_bytes(env), decode_timeout(env)
    if values["storage_dir"] is None:
        values["storage_dir"] = _default_storage_dir()
    if values["num_workers"] is None:
        values["num_workers"] = _default_num_workers()

    return Settings(**values)
