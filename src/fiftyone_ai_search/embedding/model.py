"""open_clip models: which weights (:class:`ModelSpec`) and loading them
(:class:`ClipModel`).

A model is named as open_clip names it:

- an open_clip architecture and a pretrained tag: ``("ViT-B-32",
  "laion2b_s34b_b79k")``;
- an architecture and a local weights file: ``("ViT-B-32",
  "/path/weights.safetensors")`` (``.safetensors``, ``.bin``, ``.pt``);
- a local checkpoint directory holding ``open_clip_config.json`` and
  ``open_clip_model.safetensors``: ``"local-dir:/path/to/dir"``;
- a Hugging Face Hub repository: ``"hf-hub:org/repo"``;
- an architecture with ``pretrained=None``: random weights (tests only).

Every spec has an ``identity``, a stable string naming the weights, stored
with an index so that vectors of different models are never mixed. Local
weights are identified by their content, so the same file gives the same
identity wherever it is installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import logging
import os
import posixpath
import socket
import threading
import time
import urllib.parse

import numpy as np

from .. import validate
from ..config import get_settings
from ..errors import ModelUnavailableError

logger = logging.getLogger(__name__)

LOCAL_DIR_PREFIX = "local-dir:"
HF_HUB_PREFIX = "hf-hub:"

#: the seed of random-weight models, so that they are the same in every
#: process (tests compare vectors across processes)
RANDOM_WEIGHTS_SEED = 0

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz")

# open_clip's default file names in a Hugging Face repository
_HF_SAFE_WEIGHTS = "open_clip_model.safetensors"
_HF_WEIGHTS = "open_clip_pytorch_model.bin"

_TEXT_BATCH = 256


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model and weights to use. Build with :func:`resolve_model`.

    Attributes:
        name: the open_clip model name (may be ``local-dir:...`` or
            ``hf-hub:...``)
        pretrained: the pretrained tag, the path of a weights file, or None
        identity: a stable string identifying the weights
    """

    name: str
    pretrained: str | None
    identity: str


def resolve_model(model=None, pretrained=None):
    """Resolves a model name and pretrained weights into a :class:`ModelSpec`.

    Nothing is loaded or downloaded; local weights files are hashed (cached
    per path, size and mtime).

    Args:
        model (None): an open_clip model name, ``"local-dir:/path"`` or
            ``"hf-hub:org/repo"``. Defaults to the configured model, and
            then ``pretrained`` defaults to the configured tag
        pretrained (None): a pretrained tag of ``model`` or the path of a
            local weights file. Ignored for ``local-dir:`` and ``hf-hub:``
            names. None with an explicit ``model`` means random weights

    Returns:
        a :class:`ModelSpec`

    Raises:
        ValueError: if the model name or pretrained tag is unknown
        ModelUnavailableError: if a local checkpoint is missing
    """
    if model is None:
        settings = _settings()
        model = settings.model
        if pretrained is None:
            pretrained = settings.pretrained

    model = str(model).strip()
    if not model:
        raise ValueError("model must be a non-empty open_clip model name")

    if model.startswith(LOCAL_DIR_PREFIX):
        return _resolve_local_dir(model)

    if model.startswith(HF_HUB_PREFIX):
        if not model[len(HF_HUB_PREFIX) :]:
            raise ValueError("empty repository after 'hf-hub:'")

        return ModelSpec(name=model, pretrained=None, identity=model)

    name = _check_model_name(model)

    if pretrained is None or str(pretrained).strip() == "":
        logger.warning(
            "Model %s has no pretrained weights: its embeddings are random "
            "and useless for search. Pass pretrained= a tag or a weights file",
            name,
        )
        return ModelSpec(
            name=name,
            pretrained=None,
            identity=f"{name}/random-seed{RANDOM_WEIGHTS_SEED}",
        )

    pretrained = str(pretrained)
    if os.path.isfile(pretrained):
        path = os.path.abspath(pretrained)
        return ModelSpec(
            name=name,
            pretrained=path,
            identity=f"{name}/sha256:{_hash_files([path])}",
        )

    if _looks_like_path(pretrained):
        raise ModelUnavailableError(
            f"Weights file {pretrained!r} (pretrained=) does not exist"
        )

    import open_clip  # start-up: open_clip and torch

    tag = pretrained.lower().replace("-", "_")  # as open_clip normalises tags
    if not open_clip.get_pretrained_cfg(name, tag):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(
            f"Unknown pretrained tag {pretrained!r} for open_clip model "
            f"{name!r}. Known tags: {', '.join(tags) or 'none'}. Or pass the "
            "path of a local weights file as pretrained="
        )

    return ModelSpec(name=name, pretrained=tag, identity=f"{name}/{tag}")


class ClipModel:
    """An open_clip model ready for inference. Build with :func:`load_model`.

    Attributes:
        spec: the :class:`ModelSpec`
        device: the ``torch.device`` it runs on
        dtype: the ``torch.dtype`` of its inputs (float16 on CUDA)
        dim: the embedding size
        image_size: the side of its (square, or largest side) input images
        preprocess: open_clip's evaluation transform (PIL image -> tensor)
        tokenizer: open_clip's tokenizer for the model
        module: the underlying open_clip model (in eval mode)
    """

    def __init__(self, spec, module, preprocess, tokenizer, device, dtype):
        self.spec = spec
        self.module = module
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.image_size = _image_size(module)
        self.dim = _embedding_dim(module, self.image_size, device, dtype)

    def __repr__(self):
        return (
            f"ClipModel({self.spec.identity!r}, device={self.device}, "
            f"dtype={self.dtype}, dim={self.dim})"
        )

    def encode_images(self, batch):
        """Embeds a batch of preprocessed images.

        Args:
            batch: a float tensor (or array) of shape ``(n, 3, H, W)``, each
                image the output of :attr:`preprocess`

        Returns:
            a float32 ``np.ndarray`` of shape ``(n, dim)``, L2-normalised
        """
        import torch  # start-up: torch

        batch = torch.as_tensor(batch)
        if batch.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)

        batch = batch.to(device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            features = self.module.encode_image(batch)

        return _normalize(features)

    def encode_pil(self, images):
        """Embeds in-memory images (``PIL.Image`` of any mode), preprocessed
        here one by one; for images from outside a dataset. Files go
        through :func:`fiftyone_ai_search.embedding.pipeline.embed_images`.

        Returns:
            a float32 ``np.ndarray`` of shape ``(n, dim)``, L2-normalised
        """
        import torch  # start-up: torch

        from .images import to_rgb  # start-up: PIL

        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_images(
            torch.stack([self.preprocess(to_rgb(i)) for i in images]))

    def encode_text(self, texts):
        """Embeds texts.

        Args:
            texts: a string or a list of strings

        Returns:
            a float32 ``np.ndarray`` of shape ``(n, dim)``, L2-normalised
        """
        import torch  # start-up: torch

        if isinstance(texts, str):
            texts = [texts]

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)

        chunks = []
        for start in range(0, len(texts), _TEXT_BATCH):
            tokens = self.tokenizer(texts[start : start + _TEXT_BATCH])
            tokens = tokens.to(self.device)
            with torch.inference_mode():
                chunks.append(_normalize(_encode_tokens(self.module, tokens)))

        return np.concatenate(chunks)


_MODELS = {}
_MODELS_LOCK = threading.Lock()


def _encode_tokens(module, tokens):
    """``module.encode_text(tokens)``, computed only up to the longest
    prompt's end-of-text token where that gives the same result.

    CLIP text towers are causal and, with ``argmax`` pooling, read their
    output at the end-of-text token, so positions after it never influence
    it; prompts are short and the context is 77 tokens, so this makes prompt
    encoding ~4x faster. Other towers (SigLIP, custom text models) run whole.
    """
    import open_clip  # start-up: open_clip and torch
    import torch  # start-up: torch

    if not (
        type(module) is open_clip.CLIP
        and getattr(module, "text_pool_type", None) == "argmax"
        and getattr(module, "attn_mask", None) is not None
        and getattr(module, "cls_emb", None) is None
    ):
        return module.encode_text(tokens)

    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast = module.transformer.get_cast_dtype()
    x = module.token_embedding(tokens).to(cast)
    x = x + module.positional_embedding[:length].to(cast)
    x = module.transformer(x, attn_mask=module.attn_mask[:length, :length])
    x = module.ln_final(x)
    x = x[np.arange(x.shape[0]), tokens.argmax(dim=-1)]
    proj = module.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


def load_model(spec=None, device=None):
    """Loads a model, once per process and device.

    Args:
        spec (None): a :class:`ModelSpec`, or None for the configured model
        device (None): ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"cpu"``.
            Defaults to the configured device, else CUDA, then Apple MPS,
            then CPU

    Returns:
        a :class:`ClipModel`; float16 on CUDA, float32 elsewhere

    Raises:
        ModelUnavailableError: if the weights cannot be obtained
    """
    if spec is None:
        spec = resolve_model()

    device = resolve_device(device)
    key = (spec.identity, str(device))
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _load(spec, device)
            _MODELS[key] = model

    return model


def resolve_device(device=None):
    """Chooses the device to run a model on.

    Args:
        device (None): an explicit device; else the configured one; else
            CUDA, then Apple MPS, then CPU

    Returns:
        a ``torch.device``
    """
    import torch  # start-up: torch

    if device is None:
        device = _settings().device

    if device is not None:
        return torch.device(device)

    if torch.cuda.is_available():
        return torch.device("cuda")

    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")

    return torch.device("cpu")


def clear_model_cache():
    """Forgets the loaded models (their memory is freed once unused)."""
    with _MODELS_LOCK:
        _MODELS.clear()


def _load(spec, device):
    import torch  # start-up: torch
    import open_clip  # start-up: open_clip and torch

    check_weights(spec)

    # Mixed fp16 as in OpenAI's CLIP on CUDA; fp16 is slow or unsupported on
    # CPU and inexact on MPS
    precision = "fp16" if device.type == "cuda" else "fp32"
    dtype = torch.float16 if precision == "fp16" else torch.float32

    try:
        with torch.random.fork_rng(devices=[]), _root_logging_untouched():
            # Random-weight models are then the same in every process
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            module, _, preprocess = open_clip.create_model_and_transforms(
                spec.name,
                pretrained=spec.pretrained,
                precision=precision,
                device=device,
            )
        with _root_logging_untouched():
            tokenizer = open_clip.get_tokenizer(spec.name)
    except ModelUnavailableError:
        raise
    except Exception as e:
        if _is_download_failure(e):
            raise ModelUnavailableError(_offline_message(spec, e)) from e

        raise ModelUnavailableError(
            f"Cannot load model {spec.identity}: {e}"
        ) from e

    # open_clip returns training mode, where dropout is active and BatchNorm
    # towers make an embedding depend on its batch mates
    module.eval()
    module.requires_grad_(False)

    return ClipModel(spec, module, preprocess, tokenizer, device, dtype)


@contextlib.contextmanager
def _root_logging_untouched():
    """Undoes what open_clip does to the process's logging: it logs with
    ``logging.info(...)``, which configures the root logger when it has no
    handler yet (``logging.basicConfig``), and from then on every FiftyOne
    log line is printed twice (FiftyOne's handler, then the root's)."""
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        yield
    finally:
        if not before:
            for handler in [h for h in root.handlers if h not in before]:
                root.removeHandler(handler)


def _normalize(features):
    features = features.float()
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return features.cpu().numpy().astype(np.float32, copy=False)


def _image_size(module):
    cfg = getattr(module.visual, "preprocess_cfg", None) or {}
    size = cfg.get("size") or getattr(module.visual, "image_size", 224)
    if isinstance(size, (tuple, list)):
        return int(max(size))

    return int(size)


def _embedding_dim(module, image_size, device, dtype):
    dim = getattr(module.visual, "output_dim", None)
    if isinstance(dim, int):
        return dim

    import torch  # start-up: torch

    # Towers that do not say: ask them
    probe = torch.zeros(1, 3, image_size, image_size, dtype=dtype)
    probe = probe.to(device)
    with torch.inference_mode():
        return int(module.encode_image(probe).shape[-1])


def _check_model_name(model):
    import open_clip  # start-up: open_clip and torch

    # open_clip accepts "ViT-B/32" for "ViT-B-32"
    name = model.replace("/", "-")
    if name in open_clip.list_models():
        return name

    names = open_clip.list_models()
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"Unknown open_clip model {model!r}.{hint} open_clip.list_models() "
        "lists the architectures and open_clip.list_pretrained() the "
        "(model, tag) pairs; a local checkpoint is 'local-dir:/path' and a "
        "Hugging Face repository 'hf-hub:org/repo'"
    )


def _resolve_local_dir(model):
    path = model[len(LOCAL_DIR_PREFIX) :]
    if not path:
        raise ValueError("empty path after 'local-dir:'")

    path = os.path.abspath(os.path.expanduser(path))
    config_path = os.path.join(path, "open_clip_config.json")
    if not os.path.isdir(path):
        raise ModelUnavailableError(f"Checkpoint directory {path} not found")

    if not os.path.isfile(config_path):
        raise ModelUnavailableError(
            f"Checkpoint directory {path} has no open_clip_config.json"
        )

    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except ValueError as e:
        raise ModelUnavailableError(f"Invalid {config_path}: {e}") from None

    if "model_cfg" not in config:
        raise ModelUnavailableError(f"{config_path} has no 'model_cfg'")

    weights = sorted(
        os.path.join(path, f)
        for f in os.listdir(path)
        if f.endswith(_WEIGHT_SUFFIXES)
    )
    if not weights:
        raise ModelUnavailableError(
            f"Checkpoint directory {path} holds no weights file "
            "(open_clip_model.safetensors)"
        )

    # The config is hashed too: the same weights under another architecture
    # or preprocessing are another model
    digest = _hash_files([config_path] + weights)
    return ModelSpec(
        name=LOCAL_DIR_PREFIX + path,
        pretrained=None,
        identity=f"local-dir/sha256:{digest}",
    )


def _looks_like_path(value):
    return (
        os.sep in value
        or "/" in value
        or value.endswith(_WEIGHT_SUFFIXES)
        or value.startswith("~")
    )


_HASHES = {}
_HASHES_LOCK = threading.Lock()


def _hash_files(paths):
    """Returns a short sha256 over the contents of files, in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(_hash_file(path).encode())

    return digest.hexdigest()[:16]


def _hash_file(path):
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    with _HASHES_LOCK:
        cached = _HASHES.get(key)

    if cached is not None:
        return cached

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)

    value = digest.hexdigest()
    with _HASHES_LOCK:
        _HASHES[key] = value

    return value


def _is_offline():
    value = os.environ.get("HF_HUB_OFFLINE", "")
    if value.strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True

    try:
        from huggingface_hub import constants  # start-up: huggingface_hub
    except ImportError:
        return False

    return bool(constants.HF_HUB_OFFLINE)


def _hub_unreachable():
    """Why the Hugging Face Hub cannot be reached from here, or None (it
    can, or a proxy is configured, through which it may). One connection
    attempt, remembered for :data:`_REACH_TTL` seconds: without it, a
    download on a machine without a network retries for up to a minute
    before it fails."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy",
                                       "HTTP_PROXY", "http_proxy",
                                       "ALL_PROXY", "all_proxy")):
        return None
    from huggingface_hub import constants  # start-up: huggingface_hub

    url = urllib.parse.urlsplit(constants.ENDPOINT)
    address = (url.hostname, url.port or (
        443 if url.scheme == "https" else 80))
    now = time.monotonic()
    known = _REACH_CACHE.get(address)
    if known is not None and now - known[0] < _REACH_TTL:
        return known[1]
    try:
        socket.create_connection(address, timeout=_REACH_TIMEOUT).close()
        unreachable = None
    except OSError as e:
        unreachable = f"{address[0]}:{address[1]} cannot be reached ({e})"
    _REACH_CACHE[address] = (now, unreachable)
    return unreachable


#: how long whether the Hub can be reached is remembered, in seconds
_REACH_TTL = 60.0
#: how long a connection attempt to the Hub may take, in seconds
_REACH_TIMEOUT = 3.0
_REACH_CACHE = {}


def _weights_cached(spec):
    """Whether the weights of ``spec`` can be had without a download."""
    if not spec.name.startswith(HF_HUB_PREFIX):
        local = spec.name.startswith(LOCAL_DIR_PREFIX)
        if local or spec.pretrained is None or os.path.isfile(spec.pretrained):
            return True

    for repo, filenames in _hub_files(spec):
        if all(_in_hf_cache(repo, names) for names in filenames):
            return True

    return False


def _hub_files(spec):
    """Yields ``(repo, [alternatives per needed file])`` for a spec."""
    if spec.name.startswith(HF_HUB_PREFIX):
        repo = spec.name[len(HF_HUB_PREFIX) :]
        yield repo, [
            ["open_clip_config.json"],
            [_HF_SAFE_WEIGHTS, _HF_WEIGHTS],
        ]
        return

    import open_clip  # start-up: open_clip and torch

    cfg = open_clip.get_pretrained_cfg(spec.name, spec.pretrained)
    hub = cfg.get("hf_hub", "")
    if hub:
        # as open_clip reads it: "org/repo/" or "org/repo/filename"
        repo, filename = posixpath.split(hub)
        if not filename or filename == _HF_WEIGHTS:
            names = [_HF_SAFE_WEIGHTS, _HF_WEIGHTS]
        elif filename.endswith((".bin", ".pth")):
            names = [filename[:-4] + ".safetensors", filename]
        else:
            names = [filename]

        yield repo, [names]


def _in_hf_cache(repo, names):
    try:
        # start-up: huggingface_hub
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False

    for name in names:
        try:
            if isinstance(try_to_load_from_cache(repo, name), str):
                return True
        except Exception:
            continue

    return False


def _is_download_failure(error):
    text = f"{type(error).__name__}: {error}".lower()
    return any(
        s in text
        for s in (
            "failed to download",
            "offline",
            "localentrynotfound",
            "connection",
            "cannot find the requested files",
            "hf hub",
        )
    )


def _offline_message(spec, error=None):
    where = ""
    if spec.pretrained is not None or spec.name.startswith(HF_HUB_PREFIX):
        repos = [repo for repo, _ in _hub_files(spec)]
        if repos:
            where = f" (Hugging Face repository {repos[0]})"

    offline = _is_offline()
    if offline:
        reason = ("HF_HUB_OFFLINE is set and they are not in the Hugging "
                  "Face cache")
    elif isinstance(error, str):
        reason = f"they are not in the Hugging Face cache, and {error}"
    else:
        reason = f"the download failed ({error})"
    # start-up: PIL (the demo world draws)
    from ..demo import tiny_clip_model_name

    here = [c.key for c in available_models() if c.available]
    return (
        f"Weights of model {spec.identity}{where} are not available: "
        f"{reason}. Supply them in one of these ways: "
        "(1) use a model whose weights are on this machine: "
        "fiftyone_ai_search.available_models() lists them"
        + (f" (here: {', '.join(here)})" if here else "")
        + f"; the tiny CLIP bundled for the demo is "
        f"model='{tiny_clip_model_name()}'; "
        "(2) pass a local weights file as pretrained='/path/to/"
        "open_clip_model.safetensors' (.safetensors, .bin or .pt) with its "
        "architecture as model=; "
        "(3) pass model='local-dir:/path/to/dir', a directory holding "
        "open_clip_config.json and open_clip_model.safetensors; "
        "(4) pre-populate the Hugging Face cache (HF_HOME) on a machine with "
        "internet access"
        + (", or unset HF_HUB_OFFLINE to let it download" if offline else "")
        + ". The defaults come from FIFTYONE_AI_SEARCH_MODEL and "
        "FIFTYONE_AI_SEARCH_PRETRAINED"
    )


def _settings():
    # storage_dir is not needed here; passing one keeps get_settings() from
    # importing fiftyone to compute its default
    return get_settings(storage_dir=os.curdir)


def check_model(model: str | None = None, pretrained: str | None = None
                ) -> ModelSpec:
    """Checks a model name and that its weights can be had, loading
    nothing: :func:`resolve_model`, then :func:`check_weights`.

    Returns:
        the :class:`ModelSpec`
    """
    spec = resolve_model(validate.model_name(model),
                         validate.pretrained(pretrained))
    check_weights(spec)
    return spec


def check_weights(spec):
    """Checks, without loading anything, that the weights of ``spec`` can be
    had: on disk (local files, the Hugging Face cache) or by a download that
    is allowed.

    Cheap enough for a request handler (the App): a few file lookups.

    Raises:
        ModelUnavailableError: if the weights are not on this machine and
            downloads are off (``HF_HUB_OFFLINE``); the message says how to
            supply them
    """
    if _weights_cached(spec):
        return
    if _is_offline():
        raise ModelUnavailableError(_offline_message(spec))
    unreachable = _hub_unreachable()
    if unreachable is not None:
        raise ModelUnavailableError(_offline_message(spec, unreachable))


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """A model a user can pick, with whether its weights are on this machine.

    Attributes:
        model: the open_clip model name (or ``local-dir:...``)
        pretrained: the pretrained tag or weights file, or None
        label: what to call it in a menu
        available: whether the weights are on disk (no download needed)
    """

    model: str
    pretrained: str | None
    label: str
    available: bool

    @property
    def key(self):
        """One string naming the choice (``model`` or ``model|pretrained``)."""
        return self.model if self.pretrained is None else (
            f"{self.model}|{self.pretrained}")


_CHOICES_TTL = 30.0
_CHOICES_CACHE = {}


def available_models(refresh: bool = False) -> list[ModelChoice]:
    """The models to offer: the configured default, the tiny CLIP bundled
    for the shapes demo, and every open_clip pretrained model whose weights
    are already in the Hugging Face cache. The default comes first.

    File lookups only (cached for 30 s); nothing is loaded or downloaded.

    Returns:
        a list of :class:`ModelChoice`
    """
    refresh = validate.boolean(refresh, "refresh")
    now = time.monotonic()
    cached = _CHOICES_CACHE.get("choices")
    if cached and not refresh and now - cached[0] < _CHOICES_TTL:
        return list(cached[1])

    import open_clip  # start-up: open_clip and torch

    # start-up: PIL (the demo world draws)
    from ..demo import tiny_clip_model_name

    settings = _settings()
    default = _choice(settings.model, settings.pretrained, "default")
    choices = [default]
    bundled = ModelChoice(
        model=tiny_clip_model_name(), pretrained=None,
        label="tiny CLIP bundled with the package (the shapes demo only)",
        available=True,
    )
    for name, tag in open_clip.list_pretrained():
        if (name, tag) == (default.model, default.pretrained):
            continue
        try:
            spec = ModelSpec(name=name, pretrained=tag, identity="")
            if _weights_cached(spec):
                choices.append(_choice(name, tag, "downloaded"))
        except Exception:  # a config open_clip cannot describe: not offered
            continue
    choices.append(bundled)
    _CHOICES_CACHE["choices"] = (now, choices)
    return list(choices)


def _choice(model, pretrained, kind):
    try:
        available = _weights_cached(
            ModelSpec(name=model, pretrained=pretrained, identity=""))
    except Exception:
        available = False
    if available:
        where = "weights on this machine"
    elif _is_offline():
        where = ("weights not on this machine, and HF_HUB_OFFLINE is set: "
                 "not usable")
    elif _hub_unreachable() is not None:
        where = ("weights not on this machine, and the Hugging Face Hub "
                 "cannot be reached: not usable")
    else:
        where = "weights not on this machine: downloaded on first use"
    label = f"{model} / {pretrained}" if pretrained else model
    return ModelChoice(model=model, pretrained=pretrained,
                       label=f"{label} ({kind}; {where})", available=available)
