"""Model specs (names, tags, local weights, identities) and model loading
(device, precision, eval mode, caching, offline errors)."""

import json
import os
import socket
import subprocess
import sys
import shutil
import threading

import numpy as np
import pytest
import torch

from fiftyone_ai_search.embedding import model as fm
from fiftyone_ai_search.embedding.model import (
    ModelSpec,
    ModelUnavailableError,
    load_model,
    resolve_model,
)

from tests.helpers import SMALL_RN as TINY_RN
from tests.helpers import SMALL_VIT as TINY_VIT
from tests.helpers import SMALL_CONFIGS as CONFIGS
from tests.helpers import register_small_models


@pytest.fixture(scope="module", autouse=True)
def tiny_configs(tmp_path_factory):
    register_small_models(tmp_path_factory.mktemp("configs"))


def _images(n, size, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=gen)


def _save_weights(module, path):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path))
    return str(path)


def _local_dir(path, name, weights_path):
    os.makedirs(path, exist_ok=True)
    config = {"model_cfg": CONFIGS[name], "preprocess_cfg": {}}
    with open(os.path.join(path, "open_clip_config.json"), "w") as f:
        json.dump(config, f)

    target = os.path.join(path, "open_clip_model.safetensors")
    shutil.copy(weights_path, target)
    return f"local-dir:{path}"


# --- resolve_model -----------------------------------------------------------


def test_default_model_is_the_configured_one(monkeypatch):
    monkeypatch.delenv("FIFTYONE_AI_SEARCH_MODEL", raising=False)
    monkeypatch.delenv("FIFTYONE_AI_SEARCH_PRETRAINED", raising=False)
    assert resolve_model() == ModelSpec(
        "ViT-B-32", "laion2b_s34b_b79k", "ViT-B-32/laion2b_s34b_b79k"
    )

    monkeypatch.setenv("FIFTYONE_AI_SEARCH_MODEL", "RN50")
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_PRETRAINED", "openai")
    assert resolve_model().identity == "RN50/openai"
    # an explicit model does not take the configured tag
    assert resolve_model(TINY_VIT).pretrained is None


def test_registry_tags_are_normalised():
    spec = resolve_model("ViT-B/32", "LAION2B-S34B-B79K")
    assert spec.name == "ViT-B-32"
    assert spec.pretrained == "laion2b_s34b_b79k"
    assert spec.identity == "ViT-B-32/laion2b_s34b_b79k"


def test_random_weights_say_so():
    spec = resolve_model(TINY_VIT)
    assert spec.pretrained is None
    assert "random" in spec.identity


def test_unknown_model_name():
    with pytest.raises(ValueError) as info:
        resolve_model("ViT-B-99", "openai")

    message = str(info.value)
    assert "ViT-B-99" in message and "open_clip.list_models()" in message


def test_unknown_tag_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        resolve_model("ViT-B-32", "no-such-tag")

    assert "laion2b_s34b_b79k" in str(info.value)


def test_missing_weights_file(tmp_path):
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        resolve_model(TINY_VIT, str(tmp_path / "missing.safetensors"))


def test_hf_hub_names_pass_through():
    spec = resolve_model("hf-hub:org/repo", "ignored")
    assert spec == ModelSpec("hf-hub:org/repo", None, "hf-hub:org/repo")


# --- load_model --------------------------------------------------------------


def test_load_on_cpu_in_fp32_eval_mode():
    model = load_model(resolve_model(TINY_VIT), device="cpu")
    assert model.device == torch.device("cpu")
    assert model.dtype == torch.float32
    assert model.dim == 32 and model.image_size == 224
    assert not model.module.training
    assert all(p.dtype == torch.float32 for p in model.module.parameters())

    images = model.encode_images(_images(3, 224))
    texts = model.encode_text(["a red circle", "a blue square"])
    for vectors, n in ((images, 3), (texts, 2)):
        assert vectors.dtype == np.float32 and vectors.shape == (n, 32)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    assert model.encode_images(torch.zeros(0, 3, 224, 224)).shape == (0, 32)
    assert model.encode_text([]).shape == (0, 32)


def test_loaded_once_per_process_even_across_threads():
    fm.clear_model_cache()
    spec = resolve_model(TINY_VIT)
    loaded = []
    threads = [
        threading.Thread(target=lambda: loaded.append(load_model(spec, "cpu")))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(loaded) == 4 and all(m is loaded[0] for m in loaded)
    assert load_model(spec, "cpu") is loaded[0]


def test_random_weights_are_reproducible():
    spec = resolve_model(TINY_VIT)
    first = load_model(spec, "cpu").encode_images(_images(2, 224))
    fm.clear_model_cache()
    second = load_model(spec, "cpu").encode_images(_images(2, 224))
    assert np.array_equal(first, second)


def test_batchnorm_tower_runs_in_eval_mode():
    model = load_model(resolve_model(TINY_RN), "cpu")
    batchnorm = next(
        m for m in model.module.visual.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    )
    stats = batchnorm.running_mean.clone()

    images = _images(5, 64)
    together = model.encode_images(images)
    alone = model.encode_images(images[:1])

    # an embedding does not depend on its batch mates, nor changes the model
    assert np.allclose(together[:1], alone, atol=1e-5)
    assert torch.equal(batchnorm.running_mean, stats)


def test_device_choice(monkeypatch):
    assert fm.resolve_device("cpu") == torch.device("cpu")

    monkeypatch.setenv("FIFTYONE_AI_SEARCH_DEVICE", "cpu")
    assert fm.resolve_device() == torch.device("cpu")

    monkeypatch.delenv("FIFTYONE_AI_SEARCH_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else None
    if expected is None and torch.backends.mps.is_available():
        expected = "mps"
    assert fm.resolve_device().type == (expected or "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda():
    model = load_model(resolve_model(TINY_VIT), "cuda")
    assert model.dtype == torch.float16
    vectors = model.encode_images(_images(2, 224))
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)


# --- local weights -----------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random tiny model saved as .safetensors, and a perturbed copy."""
    root = tmp_path_factory.mktemp("weights")
    module = load_model(resolve_model(TINY_VIT), "cpu").module
    path = _save_weights(module, root / "tiny.safetensors")

    other = {k: v.clone() for k, v in module.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    proj = other["visual.proj"]
    proj += torch.randn(proj.shape, generator=gen)
    from safetensors.torch import save_file

    other_path = root / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.items()}, str(other_path))
    return path, str(other_path)


def test_weights_file_identity_is_its_content(weights, tmp_path):
    path, other = weights
    spec = resolve_model(TINY_VIT, path)
    assert spec.pretrained == path
    assert spec.identity.startswith(f"{TINY_VIT}/sha256:")

    # the same weights installed elsewhere are the same model
    copy = shutil.copy(path, tmp_path / "copy.safetensors")
    assert resolve_model(TINY_VIT, str(copy)).identity == spec.identity
    assert resolve_model(TINY_VIT, path).identity == spec.identity

    assert resolve_model(TINY_VIT, other).identity != spec.identity


def test_weights_file_loads_those_weights(weights, tmp_path):
    path, other = weights
    random = load_model(resolve_model(TINY_VIT), "cpu")
    loaded = load_model(resolve_model(TINY_VIT, path), "cpu")
    assert loaded is not random
    assert loaded.spec.identity != random.spec.identity

    images = _images(3, 224)
    assert np.allclose(
        loaded.encode_images(images), random.encode_images(images), atol=1e-6
    )

    perturbed = load_model(resolve_model(TINY_VIT, other), "cpu")
    assert not np.allclose(
        perturbed.encode_images(images),
        random.encode_images(images),
        atol=1e-3,
    )

    # a torch pickle (.bin) works too
    bin_path = tmp_path / "tiny.bin"
    torch.save(random.module.state_dict(), bin_path)
    from_bin = load_model(resolve_model(TINY_VIT, str(bin_path)), "cpu")
    assert np.allclose(
        from_bin.encode_images(images), random.encode_images(images), atol=1e-6
    )


def test_local_dir_checkpoint(weights, tmp_path):
    path, other = weights
    name = _local_dir(str(tmp_path / "a"), TINY_VIT, path)
    spec = resolve_model(name, "ignored-tag")
    assert spec.name == name and spec.pretrained is None
    assert spec.identity.startswith("local-dir/sha256:")

    # wherever it is installed, the same checkpoint is the same model
    elsewhere = _local_dir(str(tmp_path / "b"), TINY_VIT, path)
    assert resolve_model(elsewhere).identity == spec.identity
    changed = _local_dir(str(tmp_path / "c"), TINY_VIT, other)
    assert resolve_model(changed).identity != spec.identity

    model = load_model(spec, "cpu")
    images = _images(2, 224)
    reference = load_model(resolve_model(TINY_VIT), "cpu")
    assert np.allclose(
        model.encode_images(images), reference.encode_images(images), atol=1e-6
    )
    assert model.encode_text(["a dog"]).shape == (1, 32)


def test_local_dir_errors(tmp_path):
    with pytest.raises(ModelUnavailableError, match="not found"):
        resolve_model(f"local-dir:{tmp_path / 'missing'}")

    with pytest.raises(ModelUnavailableError, match="open_clip_config.json"):
        resolve_model(f"local-dir:{tmp_path}")

    (tmp_path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": CONFIGS[TINY_VIT]})
    )
    with pytest.raises(ModelUnavailableError, match="no weights"):
        resolve_model(f"local-dir:{tmp_path}")


def test_bundled_tiny_clip_identity_is_stable():
    from fiftyone_ai_search import demo

    model_dir = getattr(demo, "DEFAULT_MODEL_DIR", None)
    if not model_dir or not os.path.isfile(
        os.path.join(model_dir, "open_clip_config.json")
    ):
        pytest.skip("the bundled tiny CLIP is not there")

    spec = resolve_model(f"local-dir:{model_dir}")
    assert spec.identity == resolve_model(f"local-dir:{model_dir}/").identity
    model = load_model(spec, "cpu")
    assert not model.module.training


# --- offline -----------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Offline with an empty Hugging Face cache."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


def _no_download(monkeypatch):
    """Any download attempt (even a read of the Hugging Face cache through
    it) fails the test."""
    import open_clip.pretrained

    def download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", download)


@pytest.mark.parametrize(
    "name,pretrained",
    [("ViT-B-32", "laion2b_s34b_b79k"), ("hf-hub:org/missing-repo", None)],
)
def test_offline_error_tries_no_download_and_says_what_to_do(
        offline, monkeypatch, name, pretrained):
    _no_download(monkeypatch)
    spec = resolve_model(name, pretrained)
    with pytest.raises(ModelUnavailableError) as info:
        load_model(spec, "cpu")  # no download tried (see the fixture)

    message = str(info.value)
    assert spec.identity in message
    for hint in ("HF_HUB_OFFLINE", "pretrained=", "local-dir:", "cache"):
        assert hint in message


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE unset, an empty Hugging Face cache and a Hub that
    cannot be reached (a port nothing listens on); any download attempt
    fails the test."""
    from huggingface_hub import constants

    from fiftyone_ai_search.embedding import model as model_module

    with socket.socket() as s:  # a free port, closed: connections refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                  "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(model_module, "_REACH_CACHE", {})
    _no_download(monkeypatch)


def test_no_network_is_said_at_once_with_the_models_on_this_machine(
        no_network):
    from fiftyone_ai_search.demo import tiny_clip_model_name

    spec = resolve_model("ViT-B-32", "laion2b_s34b_b79k")
    with pytest.raises(ModelUnavailableError) as info:
        load_model(spec, "cpu")  # no download tried (see the fixture)
    message = str(info.value)
    assert "cannot be reached" in message
    assert "available_models()" in message
    assert f"model='{tiny_clip_model_name()}'" in message
    # HF_HUB_OFFLINE is not set: no advice to unset it
    assert "unset HF_HUB_OFFLINE" not in message
    # the App's model menu says the default cannot be used here
    from fiftyone_ai_search.embedding.model import available_models

    default = available_models(refresh=True)[0]
    assert not default.available and "cannot be reached" in default.label


def test_offline_with_a_populated_hf_cache_loads(offline, weights, tmp_path):
    from huggingface_hub import constants

    # the layout huggingface_hub writes: refs/main -> snapshots/<commit>/
    repo = os.path.join(constants.HF_HUB_CACHE, "models--org--tiny")
    snapshot = os.path.join(repo, "snapshots", "0" * 40)
    os.makedirs(snapshot)
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write("0" * 40)

    _local_dir(snapshot, TINY_VIT, weights[0])
    model = load_model(resolve_model("hf-hub:org/tiny"), "cpu")

    reference = load_model(resolve_model(TINY_VIT), "cpu")
    images = _images(2, 224)
    assert np.allclose(
        model.encode_images(images), reference.encode_images(images), atol=1e-6
    )


@pytest.mark.parametrize("name", ["ViT-B-32", "tiny"])
def test_prompt_encoding_stops_at_end_of_text_with_the_same_result(name):
    import open_clip
    import torch

    from fiftyone_ai_search.demo import tiny_clip_model_name
    from fiftyone_ai_search.embedding.model import _encode_tokens

    name = tiny_clip_model_name() if name == "tiny" else name
    module, _, _ = open_clip.create_model_and_transforms(name, pretrained=None)
    module.eval()
    tokens = open_clip.get_tokenizer(name)(
        ["a dog", "a photo of a red circle", "a person riding a bicycle"])
    with torch.inference_mode():
        full = torch.nn.functional.normalize(module.encode_text(tokens), dim=-1)
        fast = torch.nn.functional.normalize(_encode_tokens(module, tokens), dim=-1)
    assert (full * fast).sum(-1).min().item() > 0.99999


@pytest.mark.slow  # a fresh process
def test_loading_a_model_leaves_the_root_logger_alone(tmp_path):
    """open_clip logs with logging.info(), which gives a bare root logger a
    handler: after a model load every FiftyOne log line was printed twice
    (issue 26, item 6). In a fresh process, as a user's script is."""
    script = tmp_path / "script.py"
    script.write_text(
        "import logging\n"
        "import fiftyone_ai_search as ais\n"
        "from fiftyone_ai_search.demo import tiny_clip_model_name\n"
        "from fiftyone_ai_search.embedding.model import load_model, "
        "resolve_model\n"
        "assert logging.getLogger().handlers == []\n"
        "load_model(resolve_model(tiny_clip_model_name()), 'cpu')\n"
        "assert logging.getLogger().handlers == [], "
        "logging.getLogger().handlers\n"
        "logging.getLogger('fiftyone.core.dataset').warning('ONE LINE')\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("ONE LINE") == 1, done.stderr
