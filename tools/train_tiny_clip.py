"""Trains the bundled tiny CLIP model from scratch on the synthetic shapes world.

The result lets the whole project run offline with a model that really aligns
text and images (no weights can be downloaded where CI runs). It is written as
an open_clip ``local-dir:`` checkpoint, loaded exactly like real weights::

    open_clip.create_model_and_transforms("local-dir:/abs/path/tiny_clip")
    open_clip.get_tokenizer("local-dir:/abs/path/tiny_clip")

Usage::

    python tools/train_tiny_clip.py            # writes src/.../demo/tiny_clip
    python tools/train_tiny_clip.py --steps 50 --out /tmp/tc   # a quick check

Training is deterministic for a given seed AND thread count: the same seed and
``--threads`` give byte-identical weights, but another thread count changes
the order of floating-point sums and so the weights. That is why the weights
are committed rather than retrained in CI. About 4 minutes on 2 idle CPU
cores (9-22 minutes measured on 2 cores shared with other work).

The model: a ModifiedResNet image tower at 32 px (BatchNorm: always call
``model.eval()`` before embedding) and a 2-layer text transformer, embedding
size 64. Images are rendered by :mod:`fiftyone_ai_search.demo.shapes` at
several sizes, half of them through JPEG, then passed through open_clip's own
preprocessing, so the model sees what it will see at inference.

The loss is CLIP's contrastive loss with several positives: a caption such as
"something red" matches every red image of the batch, not only its own, so
those images are not pushed away from it as negatives (see
:func:`multi_positive_clip_loss`). A small alignment term (``--align``, see
:func:`alignment_loss`) makes absolute scores readable: on held-out images a
colour+shape prompt scores ~0.9 against its class, colour-only and shape-only
prompts ~0.8 against theirs, and other images mostly below ~0.5-0.6.
"""

import argparse
import io
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import open_clip
from safetensors.torch import save_file

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)

import eval_tiny_clip  # noqa: E402

# the shapes world of fiftyone_ai_search.demo, loaded by file path
shapes = eval_tiny_clip.shapes

#: the architecture (open_clip ``model_cfg``)
MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": 32,
        "layers": [1, 1, 1, 1],
        "width": 8,
        "head_width": 32,
    },
    "text_cfg": {
        "context_length": 16,
        "vocab_size": 49408,
        "width": 32,
        "heads": 2,
        "layers": 2,
    },
}

#: open_clip's preprocessing: any square image is resized to 32 px
PREPROCESS_CFG = {
    "size": 32,
    "mode": "RGB",
    "mean": list(open_clip.OPENAI_DATASET_MEAN),
    "std": list(open_clip.OPENAI_DATASET_STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}

_ARCH_NAME = "tiny-clip-shapes"

# image sizes rendered for training: mostly the demo's 128 px, some others so
# that datasets of other sizes are understood too
_TRAIN_IMAGE_SIZES = (64, 96, 128, 128, 128, 160, 224, 256)

# what fraction of captions names colour and shape, only colour, only shape
_CAPTION_MIX = (0.6, 0.2, 0.2)


def parse_args(argv=None):
    default_out = shapes.DEFAULT_MODEL_DIR
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=default_out, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--align", type=float, default=0.1, help="weight of alignment_loss")
    p.add_argument("--pool-size", type=int, default=48000)
    p.add_argument("--no-eval", action="store_true", help="skip the held-out eval")
    return p.parse_args(argv)


def build_model():
    """Builds the untrained model through open_clip's factory.

    Returns:
        a ``(model, preprocess, tokenizer)`` tuple
    """
    # open_clip registers configs from files named after the architecture
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, _ARCH_NAME + ".json")
        with open(path, "w") as f:
            json.dump(MODEL_CFG, f)

        open_clip.add_model_config(path)

    model, _, preprocess = open_clip.create_model_and_transforms(
        _ARCH_NAME,
        pretrained=None,
        image_mean=PREPROCESS_CFG["mean"],
        image_std=PREPROCESS_CFG["std"],
        image_interpolation=PREPROCESS_CFG["interpolation"],
        image_resize_mode=PREPROCESS_CFG["resize_mode"],
    )
    tokenizer = open_clip.get_tokenizer(_ARCH_NAME)
    return model, preprocess, tokenizer


def render_pool(seed, pool_size, preprocess):
    """Renders the training images, preprocessed.

    Args:
        seed: the shapes world's seed
        pool_size: how many images
        preprocess: open_clip's image transform

    Returns:
        a ``(images, colors, shapes)`` tuple: a float16 tensor
        ``pool_size x 3 x 32 x 32`` and two int64 tensors of class indices
    """
    color_ids = {c: i for i, c in enumerate(shapes.COLORS)}
    shape_ids = {s: i for i, s in enumerate(shapes.SHAPES)}
    images = torch.empty((pool_size, 3, 32, 32), dtype=torch.float16)
    colors = torch.empty(pool_size, dtype=torch.int64)
    kinds = torch.empty(pool_size, dtype=torch.int64)
    for index in range(pool_size):
        # size and compression come from their own stream: not the spec's
        rng = np.random.default_rng([seed, index, 10])
        size = int(rng.choice(_TRAIN_IMAGE_SIZES))
        img, spec = shapes.render_image(seed, index, image_size=size)
        if rng.random() < 0.5:
            img = _jpeg_roundtrip(img, int(rng.integers(70, 96)))

        images[index] = preprocess(img).to(torch.float16)
        colors[index] = color_ids[spec.color]
        kinds[index] = shape_ids[spec.shape]

    return images, colors, kinds


def _jpeg_roundtrip(img, quality):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


class CaptionBank:
    """Every caption of the world, tokenized once, with what it asks for.

    Args:
        tokenizer: the open_clip tokenizer
    """

    def __init__(self, tokenizer):
        entries = shapes.all_captions()
        color_ids = {c: i for i, c in enumerate(shapes.COLORS)}
        shape_ids = {s: i for i, s in enumerate(shapes.SHAPES)}
        self.tokens = tokenizer([e[0] for e in entries])
        # -1: the caption does not constrain that attribute
        self.colors = torch.tensor([color_ids.get(e[1], -1) for e in entries])
        self.shapes = torch.tensor([shape_ids.get(e[2], -1) for e in entries])
        self._full = {}
        self._color_only = {}
        self._shape_only = {}
        for k, (_, color, shape) in enumerate(entries):
            c, s = color_ids.get(color, -1), shape_ids.get(shape, -1)
            if color and shape:
                self._full.setdefault((c, s), []).append(k)
            elif color:
                self._color_only.setdefault(c, []).append(k)
            else:
                self._shape_only.setdefault(s, []).append(k)

    def sample(self, colors, kinds, generator):
        """Picks one caption per image.

        Args:
            colors: int64 tensor of colour indices
            kinds: int64 tensor of shape indices
            generator: a ``torch.Generator``

        Returns:
            an int64 tensor of caption indices
        """
        mix = torch.tensor(_CAPTION_MIX)
        which = torch.multinomial(mix, len(colors), replacement=True, generator=generator)
        picks = torch.rand(len(colors), generator=generator)
        result = []
        for c, s, w, u in zip(colors.tolist(), kinds.tolist(), which.tolist(), picks.tolist()):
            if w == 0:
                options = self._full[(c, s)]
            elif w == 1:
                options = self._color_only[c]
            else:
                options = self._shape_only[s]

            result.append(options[int(u * len(options))])

        return torch.tensor(result)


def multi_positive_clip_loss(img, txt, logit_scale, compat, same_kind):
    """CLIP's symmetric contrastive loss where a row may have many positives.

    Text -> image: every image that a caption describes is a positive ("a
    red thing" matches all red images). Image -> text: the positives are the
    captions that describe the image AND are of the kind of its own caption
    (colour+shape, colour only or shape only); describing captions of another
    kind are left out, neither positive nor negative. Asking an image to be
    as close to "something red" as to "a red circle" would fight the natural
    geometry, where "a red circle" lies between "red" and "circle".

    Args:
        img: L2-normalised image embeddings, ``B x D``
        txt: L2-normalised text embeddings, ``B x D``; text ``i`` is the
            caption drawn for image ``i``
        logit_scale: the learned log temperature
        compat: boolean ``B x B``, whether text ``j`` describes image ``i``
        same_kind: boolean ``B x B``, whether texts ``i`` and ``j`` are of the
            same kind

    Returns:
        a scalar tensor
    """
    logits = logit_scale.exp() * img @ txt.T
    t2i = _soft_cross_entropy(logits.T, compat.T)
    # a large negative rather than -inf: 0 * -inf would be nan
    left_out = compat & ~same_kind
    i2t = _soft_cross_entropy(logits.masked_fill(left_out, -1e4), compat & same_kind)
    return (i2t + t2i) / 2


def alignment_loss(img, txt, pairs):
    """Mean ``1 - cosine`` of the given text/image pairs.

    The contrastive loss only ranks: it leaves matching images and captions
    in two separate cones, at a cosine of ~0.55. Pulling the colour+shape
    captions onto their images makes the scores readable (a match scores
    high in absolute terms), so that a score threshold means something.

    Args:
        img: L2-normalised image embeddings, ``B x D``
        txt: L2-normalised text embeddings, ``B x D``
        pairs: boolean ``B x B``, which ``(image i, text j)`` pairs to pull

    Returns:
        a scalar tensor
    """
    cos = img @ txt.T
    return (1 - cos[pairs]).mean()


def _soft_cross_entropy(logits, positives):
    # cross-entropy against a uniform distribution over each row's positives
    target = positives.float()
    return F.cross_entropy(logits, target / target.sum(1, keepdim=True))


def _param_groups(model, weight_decay):
    # as open_clip's trainer: no decay on gains, biases and the temperature
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)

    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def _lr_at(step, steps, warmup, lr):
    if step < warmup:
        return lr * (step + 1) / warmup

    t = (step - warmup) / max(1, steps - warmup)
    return 0.5 * lr * (1 + math.cos(math.pi * t))


def train(args):
    """Trains the model.

    Args:
        args: the parsed command line

    Returns:
        the trained model, in eval mode
    """
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, preprocess, tokenizer = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters", flush=True)

    t0 = time.time()
    images, colors, kinds = render_pool(args.seed, args.pool_size, preprocess)
    bank = CaptionBank(tokenizer)
    print(f"rendered {args.pool_size} images in {time.time() - t0:.0f} s", flush=True)

    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(
        _param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6
    )
    model.train()
    t1 = time.time()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, args.steps, args.warmup, args.lr)

        idx = torch.randint(args.pool_size, (args.batch_size,), generator=gen)
        caps = bank.sample(colors[idx], kinds[idx], gen)
        tc, ts = bank.colors[caps], bank.shapes[caps]
        ic, is_ = colors[idx][:, None], kinds[idx][:, None]
        compat = ((tc[None] == -1) | (tc[None] == ic)) & ((ts[None] == -1) | (ts[None] == is_))
        kind = (tc == -1).long() + 2 * (ts == -1).long()  # 0 both, 1 shape, 2 colour
        same_kind = kind[:, None] == kind[None]

        img = F.normalize(model.encode_image(images[idx].float()), dim=-1)
        txt = F.normalize(model.encode_text(bank.tokens[caps]), dim=-1)
        loss = multi_positive_clip_loss(img, txt, model.logit_scale, compat, same_kind)
        # colour+shape captions only: "something red" should sit between
        # red images of every shape, not on top of them
        loss = loss + args.align * alignment_loss(img, txt, compat & (kind == 0)[None])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            # CLIP's cap on the temperature: 100
            model.logit_scale.clamp_(0, math.log(100))

        if step % 100 == 0 or step == args.steps - 1:
            print(
                f"step {step:5d}  loss {loss.item():.4f}  "
                f"scale {model.logit_scale.exp().item():6.2f}  "
                f"{time.time() - t1:6.0f} s",
                flush=True,
            )

    return model.eval()


def save(model, out_dir, args):
    """Writes the model as an open_clip ``local-dir:`` checkpoint.

    Tensors of 2+ dims are stored as float16 (they are most of the size),
    1-D ones (norms, biases, BatchNorm statistics) as float32.

    Args:
        model: the trained model
        out_dir: the output directory
        args: the parsed command line
    """
    os.makedirs(out_dir, exist_ok=True)
    state = {}
    for key, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        if t.is_floating_point():
            t = t.to(torch.float16 if t.ndim >= 2 else torch.float32)

        state[key] = t

    save_file(state, os.path.join(out_dir, "open_clip_model.safetensors"))
    config = {
        "model_cfg": MODEL_CFG,
        "preprocess_cfg": PREPROCESS_CFG,
        # ignored by open_clip; says where the weights come from
        "training": {
            "script": "tools/train_tiny_clip.py",
            "seed": args.seed,
            "threads": args.threads,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "warmup": args.warmup,
            "align": args.align,
            "pool_size": args.pool_size,
            "colors": list(shapes.COLORS),
            "shapes": list(shapes.SHAPES),
            "torch": torch.__version__.split("+")[0],
            "open_clip": open_clip.__version__,
        },
    }
    with open(os.path.join(out_dir, "open_clip_config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    model = train(args)
    save(model, args.out, args)
    print(f"wrote {args.out} after {time.time() - t0:.0f} s", flush=True)
    if not args.no_eval:
        eval_tiny_clip.main(["--model", "local-dir:" + os.path.abspath(args.out)])


if __name__ == "__main__":
    main()
