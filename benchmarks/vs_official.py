"""vistok side by side with the official code: same preset, same random weights, same call, fp32, timed alternately.

    python benchmarks/vs_official.py [--titok-repo PATH] [--nar-repo PATH] [--llamagen-repo PATH] [--mar-repo PATH]
                                     [--xar-repo PATH] [--models titok nar llamagen mar xar] [--batch-sizes 1 8]
                                     [--repeats 3] [--threads 2] [--mar-iters 16] [--mar-head-steps 100]
                                     [--xar-steps 10] [--tiny] [--out results.json] [--profile DIR]
                                     [--compile [--compile-mode reduce-overhead]] [--device cuda] [--tf32]

The calls (issue 19, section 3), all class-conditional with CFG where the model has it:

* ``titok``: TiTok-S-128 ``encode`` (256 px image -> 128 ids) and ``decode`` (ids -> pixels), two rows;
* ``nar``: NAR-B (LlamaGen GPT-B + 1 down block), greedy, CFG 4: ``2 * 16 - 1 = 31`` passes;
* ``llamagen``: LlamaGen GPT-B, greedy, CFG 4: 256 passes with a KV cache (vistok: ``ARGenerator``);
* ``mar``: MAR-B, ``--mar-iters`` (16) masked iterations x ``--mar-head-steps`` (100) DDPM steps of the 6 x 1024
  DiffLoss MLP, CFG 2.9 linear;
* ``xar``: xAR-B, 4 cells x ``--xar-steps`` (10) Euler-Maruyama steps, CFG 2.7 linear.

With a checkout path of the official repository (``--<model>-repo``; never vendored, only imported from that
path), the official module is built from the official code (``Tensor.cuda`` made a no-op for the rest of the
process; ``flash_attn`` and
``accelerate``, imported but unused on these paths, are stubbed when absent) and its parameters are drawn at
random (seeded; norms near 1).  Its state dict is converted into the vistok model with vistok's own converters
(``convert_*_state_dict`` + ``*_kwargs_from_official*``), so both compute the same function; the benchmark checks
it (same ids / greedy tokens, or the max abs difference of the outputs, printed in the ``check`` column).  The
LlamaGen row is the exception: vistok has no LlamaGen port, its ``ARGenerator`` (same blocks and sizes, weights
mapped with the LlamaGen-fork NAR converter) uses 1D RoPE where LlamaGen uses 2D RoPE, so tokens differ and
only the cost of the same call is compared.  Without a path, that model runs vistok alone.  A repo whose
imports fail (missing dependency) prints the error for that model; the others still run.

Timing: one untimed warm-up call each, then ``--repeats`` rounds of (official, vistok) alternately in this
process; each cell is the median.  ``passes`` counts transformer forward passes per call (MAR: + DiffLoss MLP
calls), by hooks on both models; ``ops`` / ``syncs`` the aten ops dispatched and the host reads of tensors during
the warm-up call (:class:`OpCounter`; ``--out`` rows also name the vistok source lines of the syncs).  ``--profile``
runs the warm-up calls under ``torch.profiler`` and writes their op tables.  Results and profiles: docs/speed.md.
``--tiny`` shrinks every model (tests, smoke runs): TiTok-S at 64 px / 32 tokens, 2-layer 128-wide GPTs on an
8x8 grid, 2+2-block 64-wide MAR (8x8, 10 head steps) and xAR.

``--device cuda``: both sides run on the GPU (models built and randomised on the CPU, then moved; the official
samplers' own ``.cuda()`` calls are left alone); every timed call is bracketed by ``torch.cuda.synchronize``, and
TF32 is off on both sides unless ``--tf32``.  ``--compile --compile-mode reduce-overhead`` asks Inductor for CUDA
graphs.  ``benchmarks/device_check.sh`` runs this on a lent GPU.

Official code: bytedance/1d-tokenizer (TiTok, arXiv 2406.07550), ThisisBillhe/NAR (arXiv 2503.10696),
FoundationVision/LlamaGen (arXiv 2406.06525), LTH14/mar (arXiv 2406.11838), OliverRensu/xAR (arXiv 2502.20388).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import json
import math
import os
import statistics
import sys
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from vistok import Conditioning
from vistok.checkpoint import load_state_dict_strict
from vistok.compiling import compile_inference, eager_mode
from vistok.decoding import generate
from vistok.sample import resolve_device

MODELS = ("titok", "nar", "llamagen", "mar", "xar")
DEVICE = torch.device("cpu")  # --device: where both sides run (models built and randomised on the CPU, then moved)
_TOP_LEVEL = ("modeling", "models", "autoregressive", "diffusion", "utils", "util", "tokenizer", "language",
              "dataset", "evaluations", "engine_mar", "engine_xar")  # module names the official repos share


# --------------------------------------------------------------------------------------------------------------
# Official code: import from a checkout, random weights, forward counting
# --------------------------------------------------------------------------------------------------------------
class OfficialUnavailable(RuntimeError):
    """The official code for a model could not be imported or built (missing dependency, wrong path)."""


def _stub(name: str, **attrs) -> None:
    """Put an empty module ``name`` (and its parents) in ``sys.modules`` unless the real one imports."""
    try:
        importlib.import_module(name)
        return
    except ImportError:
        pass
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            sys.modules[sub] = types.ModuleType(sub)
            if i > 1:
                setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], sys.modules[sub])
    for k, v in attrs.items():
        setattr(sys.modules[name], k, v)


def _unused(*args, **kwargs):
    raise RuntimeError("stub: this official code path was not expected to run in the benchmark")


def _import_official(repo: str | Path, names: list[str], marker: str) -> list[types.ModuleType]:
    """Import ``names`` from the checkout ``repo`` (``marker``: a file that must exist there), then drop them from
    ``sys.modules`` so the next repo's same-named packages (``models``, ``autoregressive``, ...) import afresh."""
    root = Path(repo).expanduser().resolve()
    if not (root / marker).is_file():
        raise OfficialUnavailable(f"{root} is not a checkout of the official repo (no {marker})")
    if DEVICE.type != "cuda":  # the official samplers call .cuda() unconditionally
        torch.Tensor.cuda = lambda self, *a, **k: self
    _stub("flash_attn", flash_attn_func=_unused)  # xAR imports it; its attention path uses torch SDPA
    _stub("accelerate.utils.operations", gather=_unused)  # TiTok's quantizer imports it for multi-GPU training

    def purge() -> None:
        for key in [k for k in sys.modules if k.split(".")[0] in _TOP_LEVEL]:
            del sys.modules[key]

    purge()
    sys.path.insert(0, str(root))
    try:
        return [importlib.import_module(n) for n in names]
    except Exception as e:  # noqa: BLE001 - any import failure is reported per model
        raise OfficialUnavailable(f"importing {names} from {root} failed: {type(e).__name__}: {e}") from e
    finally:
        sys.path.remove(str(root))
        purge()


@torch.no_grad()
def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Draw every parameter (seeded): matrices N(0, 1/fan_in), norm weights 1 + 0.1 N, other vectors 0.1 N.

    Speed does not depend on the weights; non-zero output heads (the official inits zero some) make the outputs,
    and so the agreement check, non-trivial."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if p.ndim >= 2:
            p.copy_(noise / math.sqrt(p[0].numel()))
        elif name.endswith("weight") and any(s in name for s in ("norm", "ln")):
            p.copy_(1 + 0.1 * noise)
        else:
            p.copy_(0.1 * noise)
    return model.eval().to(DEVICE)


class Counter:
    """Counts calls of modules (forward pre-hooks) or of bound methods (wrapped on the instance)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._undo: list[Callable[[], None]] = []

    def module(self, key: str, module: nn.Module) -> None:
        self._undo.append(module.register_forward_pre_hook(lambda *_: self._add(key)).remove)

    def method(self, key: str, owner: object, name: str) -> None:
        fn = getattr(owner, name)

        def wrapped(*a, **k):
            self._add(key)
            return fn(*a, **k)

        setattr(owner, name, wrapped)
        self._undo.append(lambda: owner.__dict__.pop(name))

    def detach(self) -> None:
        """Remove the hooks and wrappers (before compiling: a compiled graph would not count calls)."""
        while self._undo:
            self._undo.pop()()

    def _add(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    @contextlib.contextmanager
    def counting(self) -> Iterator[dict[str, int]]:
        self.counts = {}
        result: dict[str, int] = {}
        yield result
        result.update(self.counts)


# --------------------------------------------------------------------------------------------------------------
# One benchmark case per model
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Side:
    """One implementation: ``run(batch, seed) -> output``; ``counter`` counts its passes."""

    run: Callable[[int, int], object]
    counter: Counter = field(default_factory=Counter)


@dataclass
class Case:
    """A model's two sides (``official`` None: vistok alone) and how to compare their outputs."""

    name: str
    preset: str
    ops: dict[str, tuple[Side, Side | None]]  # op name -> (vistok, official)
    compare: Callable[[str, object, object], str] | None = None
    params: int = 0
    model: nn.Module | None = None  # vistok's model (``--compile`` compiles its ``inference_methods``)


def _labels(batch: int, num_classes: int) -> Tensor:
    return ((torch.arange(batch) * 7 + 3) % num_classes).to(DEVICE)


def _max_diff(a: Tensor, b: Tensor) -> str:
    """Max abs difference, and relative to the reference's max magnitude."""
    diff, scale = float((a.float() - b.float()).abs().max()), float(b.float().abs().max())
    return f"max|diff| {diff:.2e} (rel {diff / max(scale, 1e-12):.1e})"


def _same_ids(a: Tensor, b: Tensor) -> str:
    a, b = a.reshape(b.shape), b
    same = float((a == b).float().mean())
    return "ids equal" if same == 1.0 else f"ids equal {100 * same:.1f}%"


# -- TiTok ----------------------------------------------------------------------------------------------------
def _titok_tree(tiny: bool) -> dict:
    """The official OmegaConf tree of TiTok-S-128 (``configs/infer/TiTok/titok_s128.yaml``); tiny: 64 px, 32
    tokens (the official code has no size below "small")."""
    vq = dict(codebook_size=4096, token_size=12, use_l2_norm=True, commitment_cost=0.25, vit_enc_model_size="small",
              vit_dec_model_size="small", vit_enc_patch_size=16, vit_dec_patch_size=16,
              num_latent_tokens=32 if tiny else 128, finetune_decoder=True)
    return dict(model=dict(vq_model=vq), dataset=dict(preprocessing=dict(crop_size=64 if tiny else 256)))


def build_titok(repo: str | None, tiny: bool, args: argparse.Namespace) -> Case:
    from vistok.tokenizers.titok import TiTok, convert_titok_state_dict, titok_kwargs_from_official_config

    tree = _titok_tree(tiny)
    ours = TiTok(**titok_kwargs_from_official_config(tree))
    official = None
    if repo:
        (mod,) = _import_official(repo, ["modeling.titok"], "modeling/titok.py")
        official = randomize(mod.TiTok(tree), seed=1)
        load_state_dict_strict(ours, convert_titok_state_dict(official.state_dict()), "official TiTok")
    else:
        randomize(ours, seed=1)
    ours.eval().to(DEVICE)
    size = tree["dataset"]["preprocessing"]["crop_size"]
    image = lambda b: torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(b)).to(DEVICE)
    ids = lambda b: torch.randint(0, 4096, (b, ours.num_tokens), generator=torch.Generator().manual_seed(b)).to(DEVICE)
    ops = {"encode": (Side(lambda b, s: ours.encode(image(b))),
                      official and Side(lambda b, s: official.encode(image(b))[1]["min_encoding_indices"])),
           "decode": (Side(lambda b, s: ours.decode(ids(b), clamp=False)),
                      official and Side(lambda b, s: official.decode_tokens(ids(b))))}
    for op, model in (("encode", ours), ("decode", ours), ("encode", official), ("decode", official)):
        side = ops[op][model is official]
        if model is not None:
            side.counter.module(f"{op}r", getattr(model, f"{op}r"))

    def compare(op: str, a: Tensor, b: Tensor) -> str:
        return _same_ids(a, b) if op == "encode" else _max_diff(a, b)

    return Case("titok", "TiTok-S-128" + (" tiny" if tiny else ""), ops, compare,
                sum(p.numel() for p in ours.parameters()), ours)


# -- NAR and LlamaGen (LlamaGen-fork GPTs) ---------------------------------------------------------------------
def _gpt_args(tiny: bool) -> dict:
    """GPT-B (LlamaGen ``GPT_B``: 12 layers, 768, 12 heads) for ImageNet 256 on VQ-16; tiny: 2 x 128 on 8x8."""
    if tiny:
        return dict(dim=128, n_layer=2, n_head=4, vocab_size=512, block_size=64, num_classes=10)
    return dict(dim=768, n_layer=12, n_head=12, vocab_size=16384, block_size=256, num_classes=1000)


def _mlp_hidden(dim: int) -> int:
    hidden = int(2 * 4 * dim / 3)
    return hidden if hidden % 256 == 0 else hidden + 256 - hidden % 256  # LlamaGen's find_multiple(., 256)


def _gpt_sides(ours: nn.Module, ours_norm: nn.Module, official: nn.Module | None, gen_fn: Callable | None,
               decoder: str, a: dict, cfg: float) -> dict[str, tuple[Side, Side | None]]:
    vside = Side(lambda b, s: generate(ours, Conditioning(labels=_labels(b, a["num_classes"])), decoder=decoder,
                                       temperature=0, cfg_scale=cfg).tokens)
    vside.counter.module("passes", ours_norm)
    oside = None
    if official is not None:
        oside = Side(lambda b, s: gen_fn(official, _labels(b, a["num_classes"]), a["block_size"], cfg_scale=cfg,
                                         sample_logits=False, top_k=0))
        oside.counter.module("passes", official)
    return {"generate": (vside, oside)}


def build_nar(repo: str | None, tiny: bool, args: argparse.Namespace) -> Case:
    from vistok.generators.nar import NARGenerator, convert_nar_state_dict

    a = _gpt_args(tiny)
    ours = NARGenerator(vocab_size=a["vocab_size"], seq_len=a["block_size"], width=a["dim"], depth=a["n_layer"],
                        down_depth=1, num_heads=a["n_head"], mlp_hidden=_mlp_hidden(a["dim"]),
                        num_classes=a["num_classes"])
    official = gen_fn = None
    if repo:
        root = Path(repo) / "NAR-images" if (Path(repo) / "NAR-images").is_dir() else Path(repo)
        gpt, gen = _import_official(root, ["autoregressive.models.gpt", "autoregressive.models.generate"],
                                    "autoregressive/models/gpt.py")
        official = randomize(gpt.Transformer(gpt.ModelArgs(**a, medusa_attention_num=1)), seed=2)
        state = convert_nar_state_dict(official.state_dict(), depth=a["n_layer"], num_classes=a["num_classes"])
        load_state_dict_strict(ours, state, "official NAR")
        gen.tqdm = lambda it, *a, **k: it  # the official sampler draws a progress bar per call
        gen_fn = gen.generate
    else:
        randomize(ours, seed=2)
    ours.eval().to(DEVICE)
    ops = _gpt_sides(ours, ours.right_norm, official, gen_fn, "nar", a, cfg=4.0)
    return Case("nar", "NAR-B" + (" tiny" if tiny else ""), ops, lambda op, x, y: _same_ids(x, y),
                sum(p.numel() for p in ours.parameters()), ours)


def build_llamagen(repo: str | None, tiny: bool, args: argparse.Namespace) -> Case:
    from vistok.generators.ar import ARGenerator
    from vistok.generators.nar import convert_nar_state_dict

    a = _gpt_args(tiny)
    ours = ARGenerator(vocab_size=a["vocab_size"], seq_len=a["block_size"], width=a["dim"], depth=a["n_layer"],
                       num_heads=a["n_head"], mlp_hidden=_mlp_hidden(a["dim"]), num_classes=a["num_classes"])
    official = gen_fn = None
    if repo:
        gpt, gen = _import_official(repo, ["autoregressive.models.gpt", "autoregressive.models.generate"],
                                    "autoregressive/models/gpt.py")
        official = randomize(gpt.Transformer(gpt.ModelArgs(**a)), seed=3)
        # LlamaGen's keys are NAR's minus the down head; NAR's "right head" is LlamaGen's only head
        state = convert_nar_state_dict(official.state_dict(), depth=a["n_layer"], num_classes=a["num_classes"])
        rename = {"right_norm.weight": "norm.weight", "right_head.weight": "output.weight"}
        load_state_dict_strict(ours, {rename.get(k, k): v for k, v in state.items()}, "official LlamaGen")
        gen_fn = gen.generate
    else:
        randomize(ours, seed=3)
    ours.eval().to(DEVICE)
    ops = _gpt_sides(ours, ours.norm, official, gen_fn, "ar", a, cfg=4.0)
    return Case("llamagen", "LlamaGen GPT-B" + (" tiny" if tiny else ""), ops,
                lambda op, x, y: _same_ids(x, y) + " (1D vs 2D RoPE: not expected equal)",
                sum(p.numel() for p in ours.parameters()), ours)


# -- MAR ------------------------------------------------------------------------------------------------------
def _mar_args(tiny: bool, head_steps: int) -> dict:
    """``mar_base`` + ``main_mar.py`` defaults with the MAR-B head (6 x 1024); tiny: 2+2 blocks, 64 wide, 8x8."""
    common = dict(vae_stride=16, patch_size=1, vae_embed_dim=16, mask_ratio_min=0.7, label_drop_prob=0.1,
                  attn_dropout=0.1, proj_dropout=0.1, diffusion_batch_mul=4, num_sampling_steps=str(head_steps))
    if tiny:
        return dict(common, img_size=128, encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=4,
                    decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4, mlp_ratio=4.0, class_num=10,
                    buffer_size=8, diffloss_d=2, diffloss_w=64)
    return dict(common, img_size=256, encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
                decoder_embed_dim=768, decoder_depth=12, decoder_num_heads=12, mlp_ratio=4.0, class_num=1000,
                buffer_size=64, diffloss_d=6, diffloss_w=1024)


def build_mar(repo: str | None, tiny: bool, args: argparse.Namespace) -> Case:
    from vistok.generators.mar import MARGenerator, convert_mar_state_dict, mar_kwargs_from_official

    a = _mar_args(tiny, 10 if tiny and args.mar_head_steps is None else args.mar_head_steps or 100)
    iters, cfg = (4 if tiny and args.mar_iters is None else args.mar_iters or 16), 2.9
    ours = MARGenerator(**mar_kwargs_from_official(dict(a, norm_layer="eps=1e-6")))
    vside = Side(lambda b, s: generate(ours, Conditioning(labels=_labels(b, a["class_num"])), decoder="masked",
                                       num_iter=iters, cfg_scale=cfg, seed=s).tokens)
    vside.counter.module("passes", ours.encoder_norm)
    vside.counter.method("head", ours.head, "net")
    oside = official = None
    if repo:
        (mar,) = _import_official(repo, ["models.mar"], "models/mar.py")
        official = randomize(mar.MAR(**a, norm_layer=partial(nn.LayerNorm, eps=1e-6)), seed=4)
        load_state_dict_strict(ours, convert_mar_state_dict(official.state_dict()), "official MAR")

        def run(b: int, s: int) -> Tensor:
            torch.manual_seed(s)
            return official.sample_tokens(b, num_iter=iters, cfg=cfg, cfg_schedule="linear",
                                          labels=_labels(b, a["class_num"]), temperature=1.0)

        oside = Side(run)
        oside.counter.module("passes", official.encoder_norm)
        oside.counter.method("head", official.diffloss.net, "forward")  # sampling calls forward_with_cfg
    else:
        randomize(ours, seed=4)
    ours.eval().to(DEVICE)

    def compare(op: str, x: Tensor, y: Tensor) -> str:
        # sampling draws differ (numpy orders vs torch); compare one masked forward and one head call instead
        g = torch.Generator().manual_seed(0)
        b, n, d = 2, ours.seq_len, ours.token_dim
        tokens, orders = torch.randn(b, n, d, generator=g), torch.rand(b, n, generator=g).argsort(dim=1)
        mask = torch.zeros(b, n, dtype=torch.bool).scatter(1, orders[:, : int(0.6 * n)], True)  # same count per row
        tokens, mask = tokens.to(DEVICE), mask.to(DEVICE)
        labels = _labels(b, a["class_num"])
        z_ours = ours.predict(tokens, mask, Conditioning(labels=labels))
        z_off = official.forward_mae_decoder(official.forward_mae_encoder(tokens, mask.float(),
                                                                          official.class_emb(labels)), mask.float())
        t = torch.randint(0, 1000, (b * n,), generator=g).to(DEVICE)
        x_t = torch.randn(b * n, d, generator=g).to(DEVICE)
        h_ours = ours.head.net(x_t, t, z_ours.flatten(0, 1))
        h_off = official.diffloss.net(x_t, t, z_off.flatten(0, 1))
        return f"fwd {_max_diff(z_ours, z_off)}, head {_max_diff(h_ours, h_off)}"

    return Case("mar", f"MAR-B{' tiny' if tiny else ''} {iters} it x {a['num_sampling_steps']} steps",
                {"generate": (vside, oside)}, compare if official is not None else None,
                sum(p.numel() for p in ours.parameters()), ours)


# -- xAR ------------------------------------------------------------------------------------------------------
def _xar_args(tiny: bool) -> dict:
    """``xar_base`` (8 + 8 blocks, 768, 12 heads); tiny: 2 + 2 blocks, 64 wide (the official code fixes the 16x16
    grid of 4 cells)."""
    common = dict(img_size=256, vae_stride=16, patch_size=1, vae_embed_dim=16, label_drop_prob=0.1, class_num=1000,
                  attn_dropout=0.0, proj_dropout=0.0, diffusion_batch_mul=4, clusters=4, mlp_ratio=4.0)
    if tiny:
        return dict(common, encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, decoder_embed_dim=64,
                    decoder_depth=2, decoder_num_heads=2)
    return dict(common, encoder_embed_dim=768, encoder_depth=8, encoder_num_heads=12, decoder_embed_dim=768,
                decoder_depth=8, decoder_num_heads=12)


def build_xar(repo: str | None, tiny: bool, args: argparse.Namespace) -> Case:
    from vistok.generators.xar import XARGenerator, convert_xar_state_dict, xar_kwargs_from_official_config

    a = _xar_args(tiny)
    steps, cfg = (3 if tiny and args.xar_steps is None else args.xar_steps or 10), 2.7
    ours = XARGenerator(**xar_kwargs_from_official_config(a))
    vside = Side(lambda b, s: generate(ours, Conditioning(labels=_labels(b, a["class_num"])), decoder="cells",
                                       num_steps=steps, cfg_scale=cfg, seed=s).tokens)
    vside.counter.module("passes", ours.encoder_norm)
    oside = None
    if repo:
        (xar,) = _import_official(repo, ["models.xar"], "models/xar.py")
        official = randomize(xar.xAR(**a, norm_layer=partial(nn.LayerNorm, eps=1e-6)), seed=5)
        load_state_dict_strict(ours, convert_xar_state_dict(official.state_dict()), "official xAR")

        def run(b: int, s: int) -> Tensor:
            torch.manual_seed(s)  # vistok draws the same stream from a generator seeded s
            out = official.sample_tokens(steps, cfg=cfg, label=_labels(b, a["class_num"]))
            return out.flatten(2).transpose(1, 2)  # (b, c, h, w) latents -> (b, h*w, c) raster tokens

        oside = Side(run)
        oside.counter.module("passes", official.encoder_norm)
    else:
        randomize(ours, seed=5)
    ours.eval().to(DEVICE)
    return Case("xar", f"xAR-B{' tiny' if tiny else ''} 4 cells x {steps} steps", {"generate": (vside, oside)},
                lambda op, x, y: _max_diff(x, y), sum(p.numel() for p in ours.parameters()), ours)


BUILDERS: dict[str, Callable[[str | None, bool, argparse.Namespace], Case]] = dict(
    titok=build_titok, nar=build_nar, llamagen=build_llamagen, mar=build_mar, xar=build_xar)


# --------------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------------
def _sync() -> None:
    """Wait for the device's queued work (a GPU runs asynchronously: time whole calls, not their launches)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


@torch.no_grad()
def _timed(side: Side, batch: int, seed: int) -> tuple[float, object, dict[str, int]]:
    with side.counter.counting() as counts:
        _sync()
        start = time.perf_counter()
        out = side.run(batch, seed)
        _sync()
        seconds = time.perf_counter() - start
    return seconds, out, counts


class OpCounter(TorchDispatchMode):
    """Counts the aten ops a call dispatches (about one kernel launch each on a GPU) and its host syncs (ops whose
    result the host must read: ``.item()`` / ``bool()`` / ``int()`` of a tensor, ``nonzero``)."""

    SYNCS = ("aten._local_scalar_dense", "aten.nonzero", "aten.equal")

    def __init__(self) -> None:
        super().__init__()
        self.ops = self.syncs = 0
        self.sites: collections.Counter[str] = collections.Counter()  # "file:line" of the innermost vistok frame

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if str(func.overloadpacket) in self.SYNCS:
            self.syncs += 1
            frames = [f for f in traceback.extract_stack() if f"{os.sep}vistok{os.sep}" in f.filename]
            if frames:
                self.sites[f"{frames[-1].filename.rsplit(os.sep + 'vistok' + os.sep, 1)[-1]}:{frames[-1].lineno}"] += 1
        return func(*args, **(kwargs or {}))


def _profiled(side: Side, batch: int, path: Path | None) -> tuple[float, object, dict[str, int]]:
    """``_timed`` under an :class:`OpCounter` (its counts join the pass counts as ``ops`` and ``syncs``), and under
    ``torch.profiler`` (CPU) when ``path`` is given: the ops by self time go to ``path``."""
    ops = OpCounter()
    if path is None:
        with ops:
            seconds, out, counts = _timed(side, batch, seed=0)
        return seconds, out, {**counts, "ops": ops.ops, "syncs": ops.syncs, "sync_sites": dict(ops.sites)}
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.type == "cuda" else [])
    with profile(activities=acts) as prof, ops:
        result = _timed(side, batch, seed=0)
    result = (result[0], result[1], {**result[2], "ops": ops.ops, "syncs": ops.syncs, "sync_sites": dict(ops.sites)})
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{path.stem}: {result[0]:.3f} s under the profiler\n{table}\n")
    return result


def _in_eager(model: nn.Module, run: Callable, b: int, s: int) -> object:
    with eager_mode(model):
        return run(b, s)


def _agreement(a: Tensor, b: Tensor) -> str:
    return _max_diff(a, b) if a.is_floating_point() else _same_ids(a, b)


def bench_case(case: Case, batch_sizes: list[int], repeats: int, profile_dir: Path | None = None,
               compile: bool = False, compile_mode: str | None = None) -> list[dict]:
    """Rows of ``{model, op, batch, vistok_s, official_s, ratio, passes, check}`` (seconds are medians);
    ``profile_dir``: run the warm-up calls under ``torch.profiler`` and write their op tables there.

    ``compile``: also time vistok compiled (:func:`vistok.compile_inference`: Inductor, frozen weights) as a third
    side, alternating with the other two (``vistok_s`` stays eager).  Every vistok cell first runs once in eager
    mode (its warm-up: pass, op and sync counts, and the reference for the ``vs eager`` column); then the model is
    compiled, each cell warms its compiled side up twice untimed (``compile_s`` = the first call), and the eager side
    runs inside :func:`vistok.compiling.eager_mode`.  ``compile_mode``: ``torch.compile``'s mode (e.g.
    ``"reduce-overhead"``: CUDA graphs on a GPU)."""
    rows = []
    eager: dict[tuple[str, int], tuple] = {}  # (op, batch) -> the eager warm-up's (seconds, output, counts)
    compiled: dict[str, Side] = {}
    if compile:
        for op, (ours, _) in case.ops.items():
            for b in batch_sizes:
                eager[op, b] = _profiled(ours, b, None)
            ours.counter.detach()
            compiled[op] = Side(ours.run)
            ours.run = partial(_in_eager, case.model, compiled[op].run)
        compile_inference(case.model, mode=compile_mode)
    for op, (ours, official) in case.ops.items():
        for b in batch_sizes:
            sides = [("vistok", ours)] + ([("official", official)] if official is not None else [])
            times: dict[str, list[float]] = {name: [] for name, _ in sides}
            outs, counts = {}, {}
            for name, side in sides:  # warm-up (untimed, profiled if asked), kept for the agreement check
                path = profile_dir / f"{case.name}_{op}_b{b}_{name}.txt" if profile_dir else None
                if compile and name == "vistok":  # warmed up before compiling
                    outs[name], counts[name] = eager[op, b][1], dict(eager[op, b][2])
                else:
                    _, outs[name], counts[name] = _profiled(side, b, path)
            if compile:
                compile_s, outs["compiled"], _ = _timed(compiled[op], b, seed=0)
                outs["compiled"] = _timed(compiled[op], b, seed=0)[1]
                sides.append(("compiled", compiled[op]))
                times["compiled"] = []
            for r in range(repeats):
                order = sides if r % 2 == 0 else sides[::-1]  # A B, B A, ...: load drifts hit both alike
                for name, side in order:
                    times[name].append(_timed(side, b, seed=0)[0])
            sites = {name: counts[name].pop("sync_sites") for name in counts}
            row = dict(model=case.name, preset=case.preset, op=op, batch=b, params=case.params,
                       vistok_s=statistics.median(times["vistok"]), vistok_passes=counts["vistok"],
                       vistok_sync_sites=sites["vistok"])
            if compile:
                row.update(compiled_s=statistics.median(times["compiled"]), compile_s=compile_s,
                           compiled_vs_eager=statistics.median(times["compiled"]) / row["vistok_s"],
                           vs_eager=_agreement(outs["compiled"], outs["vistok"]))
            if official is not None:
                row.update(official_s=statistics.median(times["official"]), official_passes=counts["official"],
                           ratio=statistics.median(times["vistok"]) / statistics.median(times["official"]))
                if compile:
                    row["compiled_ratio"] = row["compiled_s"] / row["official_s"]
                try:
                    with torch.no_grad():
                        mine = outs["compiled" if compile else "vistok"]
                        row["check"] = case.compare(op, mine, outs["official"]) if case.compare else ""
                except Exception as e:  # noqa: BLE001 - a failed check is reported in the table, not fatal
                    row["check"] = f"check failed: {type(e).__name__}: {e}"
            rows.append(row)
            print(_format(row), flush=True)
    return rows


def _passes(counts: dict[str, int] | None) -> str:
    return "" if not counts else " + ".join(f"{v} {k}" for k, v in counts.items())


def _format(row: dict) -> str:
    off = row.get("official_s")
    cells = [row["preset"], row["op"], str(row["batch"]), f"{row['vistok_s']:.3f}",
             "-" if off is None else f"{off:.3f}", "-" if off is None else f"{row['ratio']:.2f}",
             _passes(row["vistok_passes"]), _passes(row.get("official_passes")) or "-", row.get("check", "-")]
    if "compiled_s" in row:
        ratio = row.get("compiled_ratio")
        cells += [f"{row['compiled_s']:.3f}", "-" if ratio is None else f"{ratio:.2f}",
                  f"{row['compiled_vs_eager']:.2f}", f"{row['compile_s']:.0f}", row["vs_eager"]]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for m in MODELS:
        p.add_argument(f"--{m}-repo", default=None, metavar="PATH", help=f"checkout of the official {m} code")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeats", type=int, default=3, help="timed calls per side and cell (median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mar-iters", type=int, default=None, help="MAR masked iterations (default 16; tiny 4)")
    p.add_argument("--mar-head-steps", type=int, default=None, help="DiffLoss DDPM steps (default 100; tiny 10)")
    p.add_argument("--xar-steps", type=int, default=None,
                   help="SDE steps per cell (>= 3 for the official sampler; default 10, tiny 3)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (tests, smoke runs)")
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="profile the (untimed) warm-up call of each side and cell; op tables go to DIR")
    p.add_argument("--device", default="cpu",
                   help="where both sides run (cpu, cuda, cuda:1); on a GPU every timed call ends with a synchronize")
    p.add_argument("--compile-mode", default=None, choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile mode for --compile (reduce-overhead: CUDA graphs on a GPU)")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 matmuls and convolutions on a GPU (default: off on both sides, true fp32)")
    p.add_argument("--compile", action="store_true",
                   help="also time vistok compiled (vistok.compile_inference: Inductor, frozen weights), alternating "
                        "with eager vistok and the official code; adds compiled seconds, ratios, compile time (first "
                        "call) and the agreement of the compiled output with eager mode")
    args = p.parse_args(argv)
    if args.repeats < 1 or any(b < 1 for b in args.batch_sizes):
        p.error("--repeats and --batch-sizes must be >= 1")
    if args.compile_mode and not args.compile:
        p.error("--compile-mode needs --compile")
    global DEVICE
    try:
        DEVICE = resolve_device(args.device)
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecated torch APIs the official code uses
    where = (f"{torch.cuda.get_device_name(DEVICE)} {'tf32' if args.tf32 else 'fp32'}" if DEVICE.type == "cuda"
             else "CPU fp32")
    print(f"torch {torch.__version__}, {where}, {torch.get_num_threads()} threads, median of {args.repeats} "
          f"alternating calls; ratio = vistok / official time (< 1: vistok faster); vistok eager"
          f"{' and compiled (Inductor, frozen weights; check = compiled vs official)' if args.compile else ''}\n")
    extra = " compiled s | compiled ratio | compiled / eager | compile s | compiled vs eager |" if args.compile else ""
    print("| model | op | batch | vistok s | official s | ratio | vistok passes | official passes | check |" + extra)
    print("|---|---|---|---|---|---|---|---|---|" + "---|---|---|---|---|" * args.compile)
    rows: list[dict] = []
    for m in args.models:
        repo = getattr(args, f"{m}_repo")
        try:
            case = BUILDERS[m](repo, args.tiny, args)
        except OfficialUnavailable as e:
            print(f"| {m} | official code unavailable, vistok alone: {e} |", flush=True)
            case = BUILDERS[m](None, args.tiny, args)
        rows += bench_case(case, args.batch_sizes, args.repeats, args.profile, compile=args.compile,
                           compile_mode=args.compile_mode)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
