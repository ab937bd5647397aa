"""Text- or class-to-image (and -to-video) sampling: prompt(s) in, PNG grid (or mp4 / gif) out.

    vistok-sample "a red circle on the left" --num-samples 4 --seed 0 --out grid.png
    vistok-sample "a red circle" --model runs/pipelines/flextok --tokens 4   # a token budget: the first 4 tokens
    vistok-sample "red circle moving right" 17 --model CLASS_PIPELINE --out grid.mp4  # class names or ids
    vistok-sample --list-classes --model CLASS_PIPELINE

A pipeline whose generator is class-conditional (``num_classes``, no text encoder) names its class set in
``pipeline.json`` (``"conditioning": "class"``, ``"classes": "moving_shapes"`` or ``"shapes"``; written by
``pack(..., classes=...)`` / :meth:`Pipeline.save`).  Its prompts are class ids (ints or digit strings) or the
dataset's own class names (``vistok.data.videos.video_class_name``: "red circle moving right";
``vistok.data.shapes.class_name``: "red circle"); a one-object dataset caption names its class too (start position
and size are not part of a class and are ignored).  CFG uses the generator's null class.

``--tokens K`` (``Pipeline(..., num_tokens=K)``) generates only the first K tokens and decodes that prefix; it needs
a causal generator and a tokenizer that decodes prefixes (FlexTok, TiTok trained with tail drop).

A pipeline whose tokenizer decodes clips (a video tokenizer such as LARP: ``(B, 3, T, H, W)``) writes videos instead:
``--out grid.mp4`` (or ``.gif``) holds every sample tiled in one clip, ``--out-dir`` one ``.mp4`` per sample.
``--first-frames clip.mp4 --num-cond-frames M`` continues a given clip (frame prediction, :func:`frame_prefix`).

With no ``--model``, the shipped default (tiny TiTok + tiny LlamaGen-style T2I generator + MiniLM text
encoder, in ``vistok/assets/default``) is used.  A model folder holds ``tokenizer/`` and ``generator/`` (each
written by :func:`vistok.hub.save_pretrained`) and ``pipeline.json`` (text encoder or class set, sampling defaults).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.compiling import compile_inference
from vistok.data.shapes import NUM_CLASSES, class_name, parse_caption
from vistok.data.videos import NUM_VIDEO_CLASSES, parse_video_caption, video_class_name
from vistok.decoding import (
    DECODERS,
    ForcedPrefix,
    GenerationOutput,
    Guidance,
    SamplingArgs,
    TokenBudget,
    generate,
    parse_options,
)
from vistok.hub import from_pretrained
from vistok.interfaces import Conditioning, check_pixels
from vistok.progress import progress_bar
from vistok.text import check_prompts, load_text_encoder

DEFAULT_MODEL = Path(__file__).parent / "assets" / "default"
#: pipelines that ship inside the package (``Pipeline.from_folder(name)``)
SHIPPED = ("default", "xar")
SAMPLING_OPTIONS = ("temperature", "top_k", "top_p", "cfg_scale")
Precision = Literal["fp32", "bf16"]
GOLDEN = 0x9E3779B97F4A7C15  # odd 64-bit constant spreading (seed, position) pairs over the seed space
MAX_GRID = 1024  # images in one --out grid; more need --out-dir (one file per image)
VIDEO_SUFFIXES = (".mp4", ".gif")  # what a video pipeline writes (PyAV: vistok.data.videos.write_video)
#: class sets a class-conditional pipeline names its ids with (``pipeline.json``'s ``"classes"``): number of classes,
#: the dataset's id -> name function and its caption parser (whose one-object scenes have a ``class_label``)
CLASS_SETS: dict[str, tuple[int, Callable[[int], str], Callable]] = {
    "moving_shapes": (NUM_VIDEO_CLASSES, video_class_name, parse_video_caption),
    "shapes": (NUM_CLASSES, class_name, parse_caption),
}
Prompt = str | int


@dataclass
class Pipeline:
    """Tokenizer + generator + text encoder (or class set), with the sampling defaults the model was tuned for.

    ``classes`` (a key of :data:`CLASS_SETS`) makes a class pipeline: the generator is class-conditional with that
    set's number of classes, there is no text encoder, and prompts are class ids or names (:func:`class_of`).
    """

    tokenizer: nn.Module
    generator: nn.Module
    text_encoder: nn.Module | None
    defaults: dict = field(default_factory=dict)
    classes: str | None = None

    def __post_init__(self) -> None:
        if self.classes is None:
            return
        if self.classes not in CLASS_SETS:
            raise ValueError(f"unknown class set {self.classes!r}; choose one of {sorted(CLASS_SETS)}")
        if self.text_encoder is not None:
            raise ValueError("a class pipeline (classes=...) conditions on class ids: give it text_encoder=None")
        n, have = CLASS_SETS[self.classes][0], getattr(self.generator, "num_classes", 0)
        if have != n:
            raise ValueError(f"the {self.classes!r} class set has {n} classes but the generator "
                             f"({type(self.generator).__name__}) has num_classes={have}; train it on that dataset's "
                             "class labels (GeneratorModule conditioning: class)")

    @classmethod
    def from_folder(cls, folder: str | Path = DEFAULT_MODEL) -> Pipeline:
        """Load a pipeline folder, or a shipped one by name (``"default"``, ``"xar"``) when no such folder exists."""
        folder = resolve_pipeline_folder(folder)
        try:
            spec = json.loads((folder / "pipeline.json").read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{folder / 'pipeline.json'} is not valid JSON ({e}); rewrite it with "
                             "Pipeline.save or vistok.sample.pack") from e
        if not isinstance(spec, dict):
            raise ValueError(f"{folder / 'pipeline.json'} must hold a JSON object, got {type(spec).__name__}; "
                             "rewrite it with Pipeline.save or vistok.sample.pack")
        tokenizer = _load_part(folder / "tokenizer", "tokenizer")
        generator = _load_part(folder / "generator", "generator")
        enc_spec = spec.get("text_encoder")
        if isinstance(enc_spec, dict) and "path" in enc_spec:  # clip / t5 folders may be given relative to here
            enc_spec = {**enc_spec, "path": str(folder / enc_spec["path"])}
        classes = spec_classes(spec, folder)
        if classes is not None:
            return cls(tokenizer, generator, None, spec.get("sampling", {}), classes)
        text_encoder = load_text_encoder(enc_spec, spec.get("text_max_length", 32 if enc_spec == "minilm" else None))
        return cls(tokenizer, generator, text_encoder, spec.get("sampling", {}))

    def save(self, folder: str | Path, *, dtype: torch.dtype | None = torch.float16) -> Path:
        """Write ``tokenizer/``, ``generator/`` and ``pipeline.json`` (what :meth:`from_folder` reads); a class
        pipeline's ``pipeline.json`` records ``"conditioning": "class"`` and its ``"classes"``."""
        from vistok.hub import save_pretrained

        folder = Path(folder)
        save_pretrained(self.tokenizer, folder / "tokenizer", dtype=dtype)
        save_pretrained(self.generator, folder / "generator", dtype=dtype)
        enc = self.text_encoder
        if self.classes is not None:
            spec = {"conditioning": "class", "classes": self.classes, "sampling": self.defaults}
        else:
            spec = {"conditioning": "text",
                    "text_encoder": None if enc is None else enc.spec() if hasattr(enc, "spec") else "minilm",
                    "text_max_length": getattr(self.text_encoder, "max_length", None), "sampling": self.defaults}
        (folder / "pipeline.json").write_text(json.dumps(spec, indent=2))
        return folder

    def to(self, device: str | torch.device) -> Pipeline:
        """Move the tokenizer, the generator and the text encoder to ``device`` (in place; returns ``self``).
        Sampling then runs there and :meth:`__call__` returns its images on that device."""
        device = resolve_device(device)
        for model in (self.tokenizer, self.generator, self.text_encoder):
            if isinstance(model, nn.Module):
                model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Where the generator's parameters are (and so where sampling runs)."""
        return next(self.generator.parameters()).device

    def compile(self) -> Pipeline:
        """Compile the generator's and the tokenizer's per-pass methods (:func:`vistok.compile_inference`: Inductor,
        frozen weights; their ``inference_methods``).  In place; returns ``self``.  The first call of each method
        compiles (a minute or more on a CPU); swap or retrain a model only after :func:`vistok.uncompile`."""
        for model in (self.generator, self.tokenizer):
            if hasattr(model, "inference_methods"):
                compile_inference(model)
        return self

    def check_compatible(self) -> Pipeline:
        """Raise ``ValueError`` if the generator's tokens do not fit the tokenizer (ids vs floats, count, vocab)."""
        tok, gen = self.tokenizer, self.generator
        continuous_tok = getattr(tok, "kind", "discrete") == "continuous"
        if continuous_tok != (getattr(gen, "kind", "discrete") == "continuous"):
            raise ValueError(f"the generator ({type(gen).__name__}, kind={getattr(gen, 'kind', 'discrete')!r}) and "
                             f"the tokenizer ({type(tok).__name__}, kind={getattr(tok, 'kind', 'discrete')!r}) "
                             "disagree on discrete vs continuous tokens; pair discrete generators with id tokenizers "
                             "(a VQ TiTok gives continuous generators its code vectors with code_tokens=True)")
        if gen.seq_len != tok.num_tokens:
            raise ValueError(f"the generator makes {gen.seq_len} tokens but the tokenizer decodes {tok.num_tokens}; "
                             "train the generator on this tokenizer's tokens (GeneratorModule tokenizer_path)")
        if not continuous_tok and gen.vocab_size != tok.codebook_size:
            raise ValueError(f"generator vocabulary {gen.vocab_size} != tokenizer codebook {tok.codebook_size}")
        return self

    def swap_generator(self, folder: str | Path) -> Pipeline:
        """Use the generator saved in ``folder`` (checked against the tokenizer).

        Sampling defaults: ``folder/sampling.json`` when the folder has one; otherwise the pipeline's own are kept
        if the new generator is sampled by the same decoder, and only ``cfg_scale`` / ``temperature`` otherwise
        (e.g. top-k means nothing to a diffusion head).
        """
        folder = Path(folder)
        old = getattr(self.generator, "default_decoder", "ar")
        self.generator = _load_part(folder, "generator")
        self.check_compatible()
        if (folder / "sampling.json").is_file():
            self.defaults = json.loads((folder / "sampling.json").read_text())
        elif getattr(self.generator, "default_decoder", "ar") != old:
            self.defaults = {k: v for k, v in self.defaults.items() if k in ("cfg_scale", "temperature")}
        return self

    def check_budget(self, num_tokens: int) -> None:
        """Raise ``ValueError`` unless ``num_tokens`` is a token budget this pipeline can sample and decode: an int in
        ``[1, N]``, a causal generator, and (for ``num_tokens < N``) a tokenizer that decodes prefixes."""
        TokenBudget(self.generator, num_tokens)  # range and causality
        if num_tokens < self.generator.seq_len and not decodes_prefixes(self.tokenizer):
            raise ValueError(f"num_tokens={num_tokens} < {self.generator.seq_len} needs a tokenizer that decodes "
                             f"prefixes (FlexTok, or TiTok trained with tail_drop); {type(self.tokenizer).__name__} "
                             "decodes all of its tokens only")

    def check_prompts(self, prompts: Sequence[Prompt] | Prompt) -> list[Prompt]:
        """A non-empty list of prompts this pipeline understands (a single prompt is wrapped): class ids or names
        of its class set for a class pipeline (each is resolved, :func:`class_of`), text otherwise (a class id given
        to a text pipeline is refused)."""
        if isinstance(prompts, (str, int, np.integer)):
            prompts = [prompts]
        prompts = list(prompts)
        if self.classes is None:
            if self.text_encoder is None:
                self._check_has_conditioning()
            return check_text_prompts(prompts)
        if not prompts:
            raise ValueError(f"no prompts given: pass class ids or names of the {self.classes} classes, e.g. "
                             f"{class_names(self.classes)[0]!r}")
        for p in prompts:
            class_of(p, self.classes)
        return prompts

    def condition(self, prompts: Sequence[Prompt]) -> Conditioning:
        """Prompts (B) -> the generator's condition: class ids ``labels (B,)`` for a class pipeline, the text
        encoder's states otherwise."""
        if self.classes is not None:
            return Conditioning(labels=torch.tensor([class_of(p, self.classes) for p in prompts], device=self.device))
        if self.text_encoder is None:
            self._check_has_conditioning()
            raise ValueError("this pipeline has no text encoder and no class set: give it a text encoder, or call "
                             "vistok.decoding.generate with a Conditioning(labels=...) yourself")
        return self.text_encoder(check_text_prompts(prompts))

    def _check_has_conditioning(self) -> None:
        """Raise the fix for a class-conditional generator packed without its class set."""
        if n := getattr(self.generator, "num_classes", 0):
            raise ValueError(f"this pipeline has no text encoder and no class set, but its generator is "
                             f"class-conditional ({n} classes): give it the class set its labels come from, "
                             f"Pipeline(..., classes=...) with one of {sorted(CLASS_SETS)}")

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Prompt] | Prompt, num_samples: int = 4, seed: int | None = 0, *,
                 batch_size: int | None = None, progress: bool = False, first_frames: Tensor | None = None,
                 num_cond_frames: int | None = None, num_prefix_tokens: int | None = None,
                 num_tokens: int | None = None,
                 **overrides) -> tuple[Tensor, GenerationOutput]:
        """prompts (P) -> images (P * num_samples, 3, H, W) in [0, 1] (clips (P * num_samples, 3, T, H, W) for a video
        tokenizer; each prompt's samples in a row) and the
        GenerationOutput (tokens of every image; ``nfe`` summed over batches; ``extras`` of the last batch).
        Prompts are text, or class ids / names for a class pipeline (:meth:`check_prompts`).

        Image ``(i, j)`` (prompt ``i``, sample ``j``) is drawn with its own seed :func:`image_seed` ``(seed, i, j)``;
        with the default AR decoder it does not depend on ``batch_size`` or on the other prompts.
        ``batch_size`` (None = all at once) bounds memory.  ``num_tokens=k`` (a token budget, 1 <= k <= N) generates
        only the first k tokens and decodes that prefix (tokens ``(B, k)``; see :meth:`check_budget`).
        ``overrides``: decoder, temperature, top_k, top_p, cfg_scale and decoder options, on top of the pipeline's
        defaults.

        Frame prediction (video tokenizers, causal generators): ``first_frames`` ``(3, T', H, W)`` (one clip for
        every prompt) or ``(P, 3, T', H, W)`` (one per prompt) in [0, 1]; its first ``num_cond_frames`` frames are
        tokenized (:func:`frame_prefix`) and the first ``num_prefix_tokens`` of those tokens are forced as the
        prefix every sample continues (:class:`vistok.decoding.ForcedPrefix`).
        """
        prompts = self.check_prompts(prompts)
        check_options(num_samples=num_samples, batch_size=batch_size, seed=seed)
        jobs = [(i, j) for i in range(len(prompts)) for j in range(num_samples)]
        images, tokens, nfe, out = [], [], 0, None
        prefix = None
        if first_frames is not None:
            prefix = self.frame_prefix(first_frames, len(prompts), num_cond_frames, num_prefix_tokens)
        elif num_cond_frames is not None or num_prefix_tokens is not None:
            raise ValueError("num_cond_frames / num_prefix_tokens need first_frames (the clip to continue)")
        for _, imgs, out in self.batches(prompts, jobs, seed=seed, batch_size=batch_size, progress=progress,
                                         prefix=prefix, num_tokens=num_tokens, **overrides):
            images.append(imgs)
            tokens.append(out.tokens)
            nfe += out.nfe
        return torch.cat(images), GenerationOutput(torch.cat(tokens), nfe, out.extras)

    @torch.no_grad()
    def batches(self, prompts: Sequence[Prompt], jobs: list[tuple[int, int]], *, seed: int | None = 0,
                batch_size: int | None = None, progress: bool = False, precision: Precision = "fp32",
                prefix: Tensor | None = None, num_tokens: int | None = None,
                **overrides) -> Iterator[tuple[list[tuple[int, int]], Tensor, GenerationOutput]]:
        """Sample the images ``jobs`` (``(prompt index, sample index)`` pairs) ``batch_size`` at a time.

        Yields ``(jobs of the batch, images (b, 3, H, W) in [0, 1], GenerationOutput)``; memory is bounded by
        ``batch_size`` whatever the number of jobs.  A progress bar counts images when ``progress``.
        ``precision="bf16"`` runs the generator and the tokenizer's decoder under bfloat16 autocast (CPUs with
        AVX512-BF16/AMX, and GPUs); sampling probabilities and acceptance tests stay float32.
        ``prefix`` ``(P, K)`` token ids (one row per prompt, e.g. from :meth:`frame_prefix`): every sample of prompt
        ``i`` starts with row ``i``.
        ``num_tokens``: a token budget, as in :meth:`__call__`.
        """
        autocast = precision_context(precision, self.tokenizer)
        opts = {**self.defaults, **{k: v for k, v in overrides.items() if v is not None}}
        check_options(batch_size=batch_size, seed=seed, **{k: opts.get(k) for k in SAMPLING_OPTIONS})
        if num_tokens is not None:
            self.check_budget(num_tokens)
            opts["num_tokens"] = num_tokens
        step = batch_size or max(1, len(jobs))
        bar = progress_bar(progress, total=len(jobs), desc="vistok-sample", leave=True, unit="img")
        try:
            for k in range(0, len(jobs), step):
                chunk = jobs[k : k + step]
                cond = self.condition([prompts[i] for i, _ in chunk])
                seeds = None if seed is None else [image_seed(seed, i, j) for i, j in chunk]
                rows = None if prefix is None else prefix[[i for i, _ in chunk]]
                with autocast():
                    out = self._generate(cond, seeds, dict(opts), rows)
                    images = self.tokenizer.decode(out.tokens).float()
                yield chunk, images, out
                bar.update(len(chunk))
        finally:
            bar.close()

    def _generate(self, cond: Conditioning, seeds: list[int] | None, opts: dict,
                  prefix: Tensor | None = None) -> GenerationOutput:
        """One batch.  Discrete generators under the AR decoder draw each image from its own seed (Gumbel-max
        on the processed distribution, see :class:`PerImageNoise`); other decoders get one stream per batch.
        ``prefix`` ``(b, K)``: the tokens each sample must start with."""
        gen = self.generator
        decoder = opts.pop("decoder", None) or getattr(gen, "default_decoder", "ar")
        temperature = opts.pop("temperature", 1.0)
        sampling = SamplingArgs(temperature, opts.pop("top_k", None), opts.pop("top_p", None))
        cfg_scale = opts.pop("cfg_scale", 1.0)
        if decoder == "pjd" and "grid" not in opts and getattr(self.tokenizer, "grid", None) is not None:
            opts["grid"] = tuple(self.tokenizer.grid)  # row-parallel Jacobi runs over the tokenizer's 2-D grid
        if decoder == "ar" and getattr(gen, "kind", "discrete") == "discrete" and not sampling.greedy:
            noisy = PerImageNoise(gen if prefix is None else ForcedPrefix(gen, prefix), sampling, seeds, cfg_scale)
            return generate(noisy, cond, decoder="ar", temperature=0.0, **opts)
        return generate(gen, cond, decoder=decoder, temperature=temperature, top_k=sampling.top_k,
                        top_p=sampling.top_p, cfg_scale=cfg_scale, seed=None if seeds is None else seeds[0],
                        prefix=prefix, **opts)

    @torch.no_grad()
    def frame_prefix(self, first_frames: Tensor, num_prompts: int = 1, num_cond_frames: int | None = None,
                     num_prefix_tokens: int | None = None) -> Tensor:
        """The token prefix ``(num_prompts, K)`` of frame prediction: :func:`frame_prefix` with this pipeline's
        tokenizer; one clip ``(3, T', H, W)`` is shared by every prompt, ``(P, 3, T', H, W)`` gives one per prompt."""
        if not getattr(self.generator, "is_causal", False) or getattr(self.generator, "kind", "") != "discrete":
            raise ValueError(f"frame prediction forces a token prefix: it needs a causal generator of token ids (an "
                             f"AR), got {type(self.generator).__name__}")
        if isinstance(first_frames, Tensor) and first_frames.ndim == 4:
            first_frames = first_frames[None]
        if isinstance(first_frames, Tensor) and first_frames.ndim == 5 and len(first_frames) not in (1, num_prompts):
            raise ValueError(f"first_frames holds {len(first_frames)} clips for {num_prompts} prompts; give one clip "
                             "(3, T, H, W) for all of them or one per prompt (P, 3, T, H, W)")
        prefix = frame_prefix(self.tokenizer, first_frames, num_cond_frames, num_prefix_tokens)
        return prefix.expand(num_prompts, -1) if len(prefix) == 1 else prefix


#: conditioning frames of frame prediction when none are given (LARP's K600 setting uses 5 of 16; 4 here keeps
#: whole temporal patches of the tiny LARP)
NUM_COND_FRAMES = 4


@torch.no_grad()
def frame_prefix(tokenizer: nn.Module, first_frames: Tensor, num_cond_frames: int | None = None,
                 num_prefix_tokens: int | None = None) -> Tensor:
    """Tokens of the conditioning frames for frame prediction: ``(B, K)`` ids.

    The first ``m = num_cond_frames`` frames of ``first_frames`` ``(B, 3, T', H, W)`` in [0, 1] are kept, the clip is
    filled up to the tokenizer's ``num_frames`` by repeating frame ``m`` (the last one given), encoded, and the first
    ``K`` ids are returned; ``K`` defaults to ``round(N * m / T)`` (the share of the clip that is given).  A 1D video
    tokenizer (LARP) reads the clip holistically, so its first ids are not "the first frames": the prefix is the part
    of the given clip's code the generator continues from, and how much of the frames survives is measured, not
    assumed (``docs/video.md``).

    Raises:
        ValueError: not a discrete video tokenizer, a bad ``m`` / ``K``, too few frames, or the wrong frame size.
    """
    frames_per_clip = getattr(tokenizer, "num_frames", None)
    if not frames_per_clip or getattr(tokenizer, "kind", "discrete") != "discrete":
        raise ValueError(f"frame prediction needs a discrete video tokenizer (one with num_frames, e.g. LARP), got "
                         f"{type(tokenizer).__name__}")
    check_pixels(first_frames, video=True, size=tokenizer.image_size)
    m = NUM_COND_FRAMES if num_cond_frames is None else num_cond_frames
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m < frames_per_clip:
        raise ValueError(f"num_cond_frames must be an int in [1, {frames_per_clip - 1}] (the tokenizer's clips have "
                         f"{frames_per_clip} frames), got {m!r}")
    if first_frames.shape[2] < m:
        raise ValueError(f"the conditioning clip has {first_frames.shape[2]} frames but num_cond_frames is {m}")
    n = tokenizer.num_tokens
    k = max(1, round(n * m / frames_per_clip)) if num_prefix_tokens is None else num_prefix_tokens
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"num_prefix_tokens must be an int in [1, {n}], got {k!r}")
    given = first_frames[:, :, :m].float()
    clip = torch.cat([given, given[:, :, -1:].expand(-1, -1, frames_per_clip - m, -1, -1)], dim=2)
    device = next(tokenizer.parameters()).device
    return tokenizer.encode(clip.to(device))[:, :k]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` / None -> ``cuda`` when PyTorch sees a GPU, else ``cpu``; otherwise ``torch.device(device)``.

    Raises:
        ValueError: not a device name, or a CUDA device that this PyTorch build or machine does not have.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r} (e.g. 'cpu', 'cuda', 'cuda:1', 'auto'): {e}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: PyTorch {torch.__version__} sees no CUDA GPU on this machine; use "
                             "'cpu' (or 'auto')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


def decodes_prefixes(tokenizer: nn.Module) -> bool:
    """Whether ``tokenizer.decode`` takes a prefix ``(B, k)``, ``k < N``, of its ordered tokens: FlexTok (nested
    dropout, any prefix) and TiTok trained with tail drop (One-D-Piece)."""
    return bool(getattr(tokenizer, "tail_drop", False)) or hasattr(tokenizer, "nested_dropout")


def precision_context(precision: Precision, model: nn.Module) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the autocast context for ``precision`` ("fp32": none; "bf16": bfloat16 autocast on the
    device of ``model``'s parameters)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext
    device = next(model.parameters()).device.type
    return lambda: torch.autocast(device, dtype=torch.bfloat16)


def resolve_pipeline_folder(folder: str | Path) -> Path:
    """``folder`` itself, or the shipped pipeline of that name (``"default"``, ``"xar"``); ``FileNotFoundError``
    unless it holds a ``pipeline.json``.  Nothing is loaded."""
    folder = Path(folder)
    shipped = DEFAULT_MODEL.parent / folder
    by_name = len(folder.parts) == 1 and not (folder / "pipeline.json").is_file()
    if by_name and (shipped / "pipeline.json").is_file():
        folder = shipped
    elif by_name and folder.name in SHIPPED and not folder.exists():
        raise FileNotFoundError(f"the shipped pipeline {folder.name!r} is missing: {shipped} has no pipeline.json. "
                                "Install vistok with its assets (`pip install -e .` from a full git checkout, "
                                "or the wheel), or pass the folder of a pipeline you trained (see the README's "
                                "'Train the default')")
    if not (folder / "pipeline.json").is_file():
        raise FileNotFoundError(f"{folder} is not a vistok pipeline folder (no pipeline.json); it needs "
                                "tokenizer/, generator/ and pipeline.json — see the README's 'Train the default'")
    return folder


def class_names(classes: str) -> list[str]:
    """The names of a class set's ids in id order, from the dataset's own naming (``class_names("moving_shapes")[17]``
    is ``video_class_name(17)``)."""
    if classes not in CLASS_SETS:
        raise ValueError(f"unknown class set {classes!r}; choose one of {sorted(CLASS_SETS)}")
    n, name, _ = CLASS_SETS[classes]
    return [name(k) for k in range(n)]


def _name_pattern(names: list[str]) -> str:
    """``"<red|orange|...> <circle|...> moving <right|...>"``: the words each position of the names takes."""
    columns = zip(*(n.split() for n in names), strict=True)
    return " ".join(c[0] if len(set(c)) == 1 else "<" + "|".join(dict.fromkeys(c)) + ">" for c in columns)


def is_class_id(prompt: object) -> bool:
    """An int (not a bool) or a string of digits (optionally signed): what a class pipeline reads as a class id."""
    if isinstance(prompt, (int, np.integer)):
        return not isinstance(prompt, bool)
    return isinstance(prompt, str) and re.fullmatch(r"\s*[+-]?\d+\s*", prompt) is not None


def class_of(prompt: Prompt, classes: str) -> int:
    """The class id a prompt names in the class set ``classes`` (a key of :data:`CLASS_SETS`).

    A prompt is a class id (an int or a digit string, ``"17"``), a class name (``"red circle moving right"``, with an
    optional leading "a"; case and spacing are ignored) or a one-object caption of the dataset ("a small red circle
    moving right from the left": start position and size are not part of a class and are dropped).

    Raises:
        ValueError: an id out of range, or a name that is no class of the set (the message names the valid ones).
        TypeError: a prompt that is neither a string nor an int.
    """
    names = class_names(classes)
    hint = f"`vistok-sample --list-classes --model PIPELINE` lists the {len(names)}"
    if is_class_id(prompt):
        k = int(prompt)
        if not 0 <= k < len(names):
            raise ValueError(f"class id {k} is out of range: the {classes} classes are 0..{len(names) - 1} ({hint})")
        return k
    if not isinstance(prompt, str):
        raise TypeError(f"a class prompt is a class id (int) or a class name (str), got {type(prompt).__name__}")
    text = " ".join(prompt.lower().split()).rstrip(".").strip()
    for candidate in (text, re.sub(r"^an? ", "", text)):
        if candidate in names:
            return names.index(candidate)
    try:
        scene = CLASS_SETS[classes][2](text)
    except ValueError:
        scene = None
    if scene is not None and len(scene.objects) == 1:
        return scene.class_label
    what = "names several objects, but a class is one object" if scene is not None else "is not a class name"
    raise ValueError(f"{prompt!r} {what}: this pipeline is class-conditional on the {classes} classes; give a class "
                     f"id in [0, {len(names) - 1}] or a name '{_name_pattern(names)}' such as {names[0]!r} ({hint})")


def check_text_prompts(prompts: Sequence[str] | str) -> list[str]:
    """:func:`vistok.text.check_prompts`, refusing class ids (a text pipeline has no classes)."""
    prompts = [prompts] if isinstance(prompts, (str, int, np.integer)) else list(prompts)
    for p in prompts:
        if is_class_id(p):
            raise ValueError(f"prompt {p!r} is a class id, but this pipeline is text-conditioned (no classes): "
                             "describe the image in words, e.g. 'a red circle on the left', or use a class "
                             "pipeline (pack(..., classes=...))")
    return check_prompts(prompts)


def spec_classes(spec: dict, folder: str | Path = "") -> str | None:
    """The class set a ``pipeline.json`` spec names (None for a text pipeline); ``ValueError`` if it is malformed."""
    where = Path(folder) / "pipeline.json"
    conditioning = spec.get("conditioning", "text")
    if conditioning == "text":
        return None
    if conditioning != "class":
        raise ValueError(f"{where}: conditioning must be 'text' or 'class', got {conditioning!r}")
    classes = spec.get("classes")
    if classes not in CLASS_SETS:
        raise ValueError(f"{where}: a class pipeline must name its class set, 'classes': one of {sorted(CLASS_SETS)}; "
                         f"got {classes!r}")
    return classes


def pipeline_classes(model: str | Path) -> str | None:
    """The class set of a pipeline folder (None for a text pipeline), read from ``pipeline.json`` without loading any
    model; an unreadable file gives None (:meth:`Pipeline.from_folder` reports it)."""
    try:
        spec = json.loads((Path(model) / "pipeline.json").read_text())
    except (OSError, ValueError):
        return None
    return spec_classes(spec, model) if isinstance(spec, dict) else None


def _load_part(folder: Path, expect: str) -> nn.Module:
    """``from_pretrained(folder, expect=...)``; an unreadable config.json / model.safetensors raises ``ValueError``
    naming it."""
    from safetensors import SafetensorError

    try:
        return from_pretrained(folder, expect=expect)
    except (FileNotFoundError, TypeError):
        raise
    except (ValueError, OSError, SafetensorError) as e:
        raise ValueError(f"cannot load {folder} (config.json + model.safetensors, written by "
                         f"vistok.hub.save_pretrained): {e}") from e


def check_options(*, num_samples: int | None = None, batch_size: int | None = None, seed: int | None = None,
                  temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                  cfg_scale: float | None = None) -> None:
    """Validate sampling options (None = not given) before any model is loaded.

    Raises:
        TypeError: an option of the wrong type (e.g. a float ``num_samples``, a bool ``seed``).
        ValueError: an option out of range, NaN or infinite.
    """
    for name, value, low in (("num_samples", num_samples, 1), ("batch_size", batch_size, 1), ("seed", seed, 0)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if temperature is not None or top_k is not None or top_p is not None:
        SamplingArgs(1.0 if temperature is None else temperature, top_k, top_p)  # raises on bad values
    if cfg_scale is not None:
        if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float)):
            raise TypeError(f"cfg_scale must be a number, got {type(cfg_scale).__name__} {cfg_scale!r}")
        if not math.isfinite(cfg_scale) or cfg_scale < 0:
            raise ValueError(f"cfg_scale must be a finite number >= 0 (1 = no guidance), got {cfg_scale}")


def image_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The seed of image ``(prompt_index, sample_index)`` of a run seeded ``seed``: a 63-bit hash of the triple
    (numpy ``SeedSequence``), so neighbouring seeds and indices give unrelated streams."""
    state = np.random.SeedSequence([seed, prompt_index, sample_index]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


class PerImageNoise:
    """Causal discrete generator wrapper that turns sampling into greedy decoding, one noise stream per image.

    ``step`` returns ``sampling.process(guided logits) + g`` with ``g`` standard Gumbel noise drawn from a generator
    seeded by (the image's seed, token position).  The argmax of that is an exact sample of the processed
    distribution (the Gumbel-max trick), so decoding the wrapper greedily (``temperature=0``) samples tokens
    that depend only on each image's own seed, not on the batch it rides in.  Noise is drawn on the CPU
    (identical on every device), ``(b, l, v)`` per step.

    Classifier-free guidance (``cfg_scale != 1``) is applied here, before the filters and the noise, with the
    decoders' own :class:`~vistok.decoding.Guidance`; the decoder running the wrapper is then called with guidance
    off.
    """

    def __init__(self, generator, sampling: SamplingArgs, seeds: list[int] | None, cfg_scale: float = 1.0):
        self.model, self.sampling, self.seeds = generator, sampling, seeds
        self.guidance = Guidance(cfg_scale, generator)
        self.kind, self.seq_len, self.is_causal = generator.kind, generator.seq_len, generator.is_causal
        self.vocab_size = generator.vocab_size

    def parameters(self):
        return self.model.parameters()

    def new_cache(self, cond: Conditioning, max_tokens: int | None = None):
        if self.seeds is not None and len(self.seeds) != cond.batch_size:
            raise ValueError(f"{len(self.seeds)} seeds for a batch of {cond.batch_size}")
        return self.guidance.new_cache(self.model, cond, max_tokens)

    def step(self, inputs: Tensor, positions: Tensor, cache) -> Tensor:
        g = self.guidance
        logits = self.sampling.process(g.mix(self.model.step(g.double(inputs), g.double(positions), cache)))
        if self.seeds is None:
            u = torch.rand(logits.shape)
        else:  # one generator per (image, position), so the noise does not depend on the batch or the call order
            rng, v = torch.Generator(), logits.shape[-1]
            u = torch.stack([torch.rand(v, generator=rng.manual_seed((seed + GOLDEN * (p + 1)) % 2**63))
                             for seed, row in zip(self.seeds, positions.tolist(), strict=True) for p in row])
        gumbel = -(-u.view(logits.shape).log()).log()  # u = 0 gives -inf: never chosen
        return logits + gumbel.to(logits.device)


def pack(tokenizer_dir: str | Path, generator_dir: str | Path, out: str | Path = DEFAULT_MODEL,
         text_encoder: str | None = "minilm", *, classes: str | None = None, **sampling) -> Path:
    """Bundle two trained hub folders (``vistok fit`` exports) into a pipeline folder with sampling defaults.

    ``classes`` (a key of :data:`CLASS_SETS`) packs a class-conditional generator: no text encoder, and
    ``pipeline.json`` records the class set its ids are named by.  It is required for a class-conditional
    generator (the exports do not say which dataset's labels it was trained on).

    Examples: ``pack("runs/titok_tiny/export", "runs/ar_tiny_t2i/export", cfg_scale=3.0, top_k=100)``;
    ``pack("runs/larp_tiny/export", "runs/ar_larp_tiny_c2i/export", "c2i_pipe", classes="moving_shapes")``.
    """
    gen = from_pretrained(generator_dir, expect="generator")
    tok = from_pretrained(tokenizer_dir, expect="tokenizer")
    if classes is not None:
        return Pipeline(tok, gen, None, sampling, classes).check_compatible().save(out)
    if getattr(gen, "num_classes", 0) and not getattr(gen, "text_dim", 0):
        raise ValueError(f"{generator_dir} is class-conditional ({gen.num_classes} classes, no text input): pass "
                         f"classes=, the class set its labels come from, one of {sorted(CLASS_SETS)}")
    enc = None
    if text_encoder == "minilm":
        from vistok.text import MiniLMTextEncoder

        enc = MiniLMTextEncoder(max_length=getattr(gen, "prefix_len", None) or getattr(gen, "max_text_len", None) or 32)
    return Pipeline(tok, gen, enc, sampling).save(out)


def save_grid(images: Tensor, path: str | Path, nrow: int, scale: int = 4) -> Path:
    """Save ``images`` (B, 3, H, W) in [0, 1] as one PNG, ``nrow`` per row, upscaled ``scale`` x (nearest)."""
    from torchvision.utils import save_image

    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, str(path), nrow=nrow, padding=2, pad_value=1.0)
    return path


def save_video_grid(videos: Tensor, path: str | Path, nrow: int, scale: int = 4, fps: int = 8) -> Path:
    """Save clips ``videos`` (B, 3, T, H, W) in [0, 1] as one ``.mp4`` / ``.gif`` whose frame ``t`` is the grid of every
    clip's frame ``t`` (``nrow`` per row, 2-pixel white gaps, upscaled ``scale`` x nearest)."""
    from torchvision.utils import make_grid

    from vistok.data.videos import write_video

    b, _, t = videos.shape[:3]
    frames = videos.transpose(1, 2).flatten(0, 1)  # (b t) 3 h w, clip-major
    if scale > 1:
        frames = F.interpolate(frames, scale_factor=scale, mode="nearest")
    frames = frames.unflatten(0, (b, t))
    grid = torch.stack([make_grid(frames[:, k], nrow=nrow, padding=2, pad_value=1.0) for k in range(t)], dim=1)
    return write_video(grid, path, fps=fps)


def makes_video(model: str | Path) -> bool:
    """True when the pipeline folder's tokenizer decodes clips (its ``config.json`` kwargs have ``num_frames``)."""
    try:
        spec = json.loads((Path(model) / "tokenizer" / "config.json").read_text())
    except (OSError, ValueError):
        return False  # Pipeline.from_folder reports a broken folder
    return isinstance(spec, dict) and isinstance(spec.get("kwargs"), dict) and "num_frames" in spec["kwargs"]


def read_prompts_file(path: str | Path) -> list[str]:
    """The prompts of a UTF-8 text file, one per line; blank lines are skipped (they get no index)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"prompts file {path} {what}; give a UTF-8 text file with one prompt per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"prompts file {path} is not UTF-8 text ({e}); save it as UTF-8, one prompt per line") from e
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts file {path} holds no prompts; write one prompt per line")
    return prompts


def image_name(prompt_index: int, sample_index: int, suffix: str = ".png") -> str:
    """File name of image ``(prompt, sample)`` in an ``--out-dir``: ``000042_003.png`` (``.mp4`` for a clip)."""
    return f"{prompt_index:06d}_{sample_index:03d}{suffix}"


def _check_grid_path(path: Path, num_images: int, video: bool = False) -> None:
    from PIL import Image

    suffix = path.suffix.lower()
    if video and suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"this pipeline makes videos: end --out with .mp4 or .gif, got {path.name!r}")
    if not video and suffix == ".mp4":
        raise ValueError(f"this pipeline makes images, not videos: end --out with .png (or .jpg), got {path.name!r}")
    if num_images > MAX_GRID:
        raise ValueError(f"a grid of {num_images} images is too large to hold and view (at most {MAX_GRID}); "
                         "write one PNG per image with --out-dir DIR instead of --out")
    formats = Image.registered_extensions()
    if not video and suffix not in formats:
        raise ValueError(f"--out {path} has no image extension PIL can write; end it with .png (or .jpg)")
    if path.is_dir():
        raise ValueError(f"--out {path} is a directory; give a file name such as {path / 'grid.png'}, "
                         "or use --out-dir for one PNG per image")
    _check_writable_dir(path.parent, "--out")


def _check_writable_dir(folder: Path, flag: str) -> None:
    """Create ``folder`` if needed and prove it writable with a probe file (ValueError otherwise)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".vistok-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{flag}: cannot write to {folder} ({e.strerror or e}); choose a writable folder") from e


def _check_run_record(out_dir: Path, record: dict) -> None:
    """Write ``run.json`` in ``out_dir``, or check that the one already there describes the same run."""
    path = out_dir / "run.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); delete it to resume in this --out-dir") from e
        diff = sorted(k for k in record.keys() | old.keys() if old.get(k) != record.get(k))
        if diff:
            changes = ", ".join(f"{k}: {old.get(k)!r} -> {record.get(k)!r}" for k in diff)
            raise ValueError(f"--out-dir {out_dir} holds images of a different run ({changes}); rerun with the same "
                             "options to resume, or use a new --out-dir")
    else:
        path.write_text(json.dumps(record, indent=2))


def _save_image(image: Tensor, path: Path, scale: int) -> None:
    """Write one image atomically (temporary file, then rename): an interrupted run never leaves a partial PNG."""
    from torchvision.utils import save_image

    if scale > 1:
        image = F.interpolate(image[None], scale_factor=scale, mode="nearest")[0]
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    save_image(image, str(tmp))
    os.replace(tmp, path)


def _save_video(clip: Tensor, path: Path, scale: int, fps: int) -> None:
    """Write one clip (3, T, H, W) atomically, as :func:`_save_image`."""
    from vistok.data.videos import write_video

    if scale > 1:
        clip = F.interpolate(clip.transpose(0, 1), scale_factor=scale, mode="nearest").transpose(0, 1)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    write_video(clip, tmp, fps=fps)
    os.replace(tmp, path)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vistok-sample", description="Sample images (or clips) for text prompts, or for class ids / names with "
        "a class-conditional pipeline: one grid (--out), or one file per image (--out-dir; rerunning the same "
        "command resumes, skipping images already written).")
    p.add_argument("prompts", nargs="*", help="one or more prompts, e.g. 'a red circle on the left'; for a class "
                   "pipeline class ids or names, e.g. 17 or 'red circle moving right' (see --list-classes)")
    p.add_argument("--prompt", action="append", default=[], dest="prompt_flags", metavar="PROMPT",
                   help="a prompt given as an option (repeatable); same as a positional prompt")
    p.add_argument("--list-classes", action="store_true",
                   help="print the class ids and names of a class-conditional pipeline (--model) and exit")
    p.add_argument("--prompts-file", default=None, help="UTF-8 text file, one prompt per line (blank lines skipped)")
    p.add_argument("--num-samples", type=int, default=4, help="images per prompt (one grid row per prompt)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="images sampled at once; bounds memory whatever --num-samples (default 16)")
    p.add_argument("--seed", type=int, default=0,
                   help="same seed, same images: image j of prompt i is seeded by (seed, i, j)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", default=None, help=f"output grid image (default grid.png; at most {MAX_GRID} images); "
                     "for a video pipeline an .mp4 or .gif with every clip tiled (default grid.mp4)")
    out.add_argument("--out-dir", default=None,
                     help="write one PNG per image, PROMPT_SAMPLE.png (000042_003.png; .mp4 per clip for a video "
                          "pipeline); files already there are skipped, so an interrupted run resumes")
    p.add_argument("--model", default=str(DEFAULT_MODEL),
                   help="pipeline folder, or the name of a shipped one: 'default' (AR, the default) or 'xar' (xAR on "
                        "the same tokenizer's code vectors: better images, ~9x slower)")
    p.add_argument("--generator", default=None,
                   help="a generator folder (vistok fit export) to use instead of the model's own; it must have been "
                        "trained on the same tokenizer's tokens")
    p.add_argument("--decoder", default=None, choices=sorted(DECODERS),
                   help="decoding algorithm (default: the generator's own, e.g. ar for AR, masked for MAR)")
    p.add_argument("--decoder-options", default=None, metavar="K=V[,K=V]",
                   help="options of the decoder, e.g. 'window=16' (mcsjd), 'window=128,coupling=gumbel,proactive=8' "
                        "or 'num_iter=32' (masked); AxB is a tuple (proactive=8x2); see docs/sampling.md")
    p.add_argument("--device", default="auto",
                   help="where to sample: auto (a CUDA GPU when PyTorch sees one, else the CPU), cpu, cuda, cuda:1")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the generator and tokenizer (Inductor, frozen weights): the first batch "
                        "waits for the compiler (a minute or more), later passes run faster; see docs/speed.md")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--tokens", type=int, default=None, metavar="K",
                   help="token budget: generate only the first K tokens and decode that prefix (1 <= K <= the "
                        "generator's tokens; causal generators and prefix-decoding tokenizers such as FlexTok)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: bfloat16 autocast for the networks (faster on CPUs with AVX512-BF16/AMX and on GPUs; "
                        "sampling maths stays float32); the speed and quality cost are measured in docs/speed.md")
    p.add_argument("--scale", type=int, default=None,
                   help="nearest-neighbour upscaling of saved images (default 4 for a grid, 1 for --out-dir)")
    p.add_argument("--fps", type=int, default=8, help="frames per second of written videos (video pipelines)")
    p.add_argument("--first-frames", default=None, metavar="CLIP",
                   help="frame prediction (video pipelines, AR generators): an .mp4/.gif whose first --num-cond-frames "
                        "frames every sample continues (their tokens are forced as the generator's prefix)")
    p.add_argument("--num-cond-frames", type=int, default=None,
                   help=f"frames of --first-frames to condition on (default {NUM_COND_FRAMES})")
    p.add_argument("--prefix-tokens", type=int, default=None,
                   help="tokens of the conditioning clip forced as the prefix (default: N * frames given / T)")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


def _run(args: argparse.Namespace) -> str:
    """Validate everything, then load and sample; returns the summary line."""
    # -- inputs and options: all checked before anything is loaded
    model = resolve_pipeline_folder(args.model)
    classes = pipeline_classes(model)
    if args.list_classes:
        if classes is None:
            raise ValueError(f"--list-classes: {model} is a text-conditioned pipeline (its pipeline.json names no "
                             "class set); give it text prompts such as 'a red circle on the left'")
        names = class_names(classes)
        return "\n".join([f"{k}\t{name}" for k, name in enumerate(names)]
                         + [f"# {len(names)} {classes} classes of {model}: give an id or a name as the prompt"])
    cli_prompts = [*args.prompts, *args.prompt_flags]
    if cli_prompts and args.prompts_file:
        raise ValueError("give prompts on the command line or --prompts-file, not both")
    if not cli_prompts and not args.prompts_file:
        example = f"{class_names(classes)[0]!r} or 0" if classes else "'a red circle'"
        raise ValueError(f"no prompts: give one or more prompts, e.g. vistok-sample {example}, or --prompts-file")
    prompts = read_prompts_file(args.prompts_file) if args.prompts_file else cli_prompts
    if classes is None:
        prompts = check_text_prompts(prompts)
    else:
        for prompt in prompts:
            class_of(prompt, classes)
    check_options(num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed,
                  temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, cfg_scale=args.cfg_scale)
    scale = args.scale if args.scale is not None else (1 if args.out_dir else 4)
    if scale < 1:
        raise ValueError(f"--scale must be >= 1, got {scale}")
    if args.fps < 1:
        raise ValueError(f"--fps must be >= 1, got {args.fps}")
    device = resolve_device(args.device)
    if args.tokens is not None and args.tokens < 1:
        raise ValueError(f"--tokens must be >= 1 (the number of tokens to generate), got {args.tokens}")
    decoder_options = parse_options(args.decoder_options or "")
    clash = sorted(set(decoder_options) & {"decoder", *SAMPLING_OPTIONS, "num_tokens", "prefix", "seed"})
    if clash:
        raise ValueError(f"--decoder-options cannot set {clash}; use the flags (--decoder, --temperature, ...)")
    video = makes_video(model)
    suffix = ".mp4" if video else ".png"
    first_frames = None
    if args.first_frames:
        if not video:
            raise ValueError("--first-frames (frame prediction) needs a video pipeline (its tokenizer decodes clips)")
        from vistok.data.videos import read_video

        first_frames = read_video(args.first_frames)
    elif args.num_cond_frames is not None or args.prefix_tokens is not None:
        raise ValueError("--num-cond-frames / --prefix-tokens need --first-frames CLIP (the clip to continue)")
    if args.generator and not (Path(args.generator) / "config.json").is_file():
        raise FileNotFoundError(f"--generator {args.generator} is not a model folder (no config.json); give a folder "
                                "written by vistok.hub.save_pretrained (a vistok fit export)")
    jobs = [(i, j) for i in range(len(prompts)) for j in range(args.num_samples)]
    done = 0
    if args.out_dir:
        out_dir = Path(args.out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"--out-dir {out_dir} is a file; give a folder (created if missing)")
        _check_writable_dir(out_dir, "--out-dir")
        opts = {k: getattr(args, k) for k in ("decoder", *SAMPLING_OPTIONS, "tokens")}
        if decoder_options:  # other options, other images
            opts["decoder_options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in decoder_options.items()}
        if args.first_frames:  # frame prediction: a different conditioning clip is a different run
            opts |= {"first_frames": str(Path(args.first_frames).resolve()), "num_cond_frames": args.num_cond_frames,
                     "prefix_tokens": args.prefix_tokens}
        _check_run_record(out_dir, {"prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
                                    "num_prompts": len(prompts), "seed": args.seed, "model": str(model),
                                    "generator": args.generator, **opts})
        todo = [(i, j) for i, j in jobs if not (out_dir / image_name(i, j, suffix)).is_file()]
        done, jobs = len(jobs) - len(todo), todo
        if not jobs:
            return f"nothing to do: all {done} images are already in {out_dir.resolve()}"
    else:
        grid = Path(args.out or f"grid{suffix}")
        _check_grid_path(grid, len(jobs), video)
    # -- load and sample
    torch.manual_seed(args.seed)
    t0 = time.time()
    pipe = Pipeline.from_folder(model)
    if args.generator:
        pipe.swap_generator(args.generator)
    pipe.to(device)
    if args.compile:
        pipe.compile()
    prefix = None
    if first_frames is not None:
        prefix = pipe.frame_prefix(first_frames, len(prompts), args.num_cond_frames, args.prefix_tokens)
    t1 = time.time()
    images, nfe = [], 0
    for chunk, imgs, out in pipe.batches(prompts, jobs, seed=args.seed, batch_size=args.batch_size, progress=True,
                                         decoder=args.decoder, temperature=args.temperature, top_k=args.top_k,
                                         top_p=args.top_p, cfg_scale=args.cfg_scale, precision=args.precision,
                                         prefix=prefix, num_tokens=args.tokens, **decoder_options):
        nfe += out.nfe
        imgs = imgs.cpu()
        if args.out_dir:
            for (i, j), img in zip(chunk, imgs, strict=True):
                if img.ndim == 4:  # a clip (3, T, H, W)
                    _save_video(img, out_dir / image_name(i, j, suffix), scale, args.fps)
                else:
                    _save_image(img, out_dir / image_name(i, j, suffix), scale)
        else:
            images.append(imgs)
    timing = f"{nfe} generator passes on {device}; load {t1 - t0:.1f}s, sample {time.time() - t1:.1f}s"
    if args.out_dir:
        skipped = f", {done} already there" if done else ""
        return f"wrote {len(jobs)} images to {out_dir.resolve()} ({timing}{skipped})"
    images = torch.cat(images)
    if images.ndim == 5:
        path = save_video_grid(images, grid, nrow=args.num_samples, scale=scale, fps=args.fps)
        return f"wrote {path.resolve()} ({len(jobs)} clips, {timing})"
    path = save_grid(images, grid, nrow=args.num_samples, scale=scale)
    return f"wrote {path.resolve()} ({len(jobs)} images, {timing})"


def cli(argv: list[str] | None = None) -> None:
    """``vistok-sample``: bad input prints one line (``vistok-sample: error: ...``) and exits 2; ``--debug`` raises."""
    p = _parser()
    args = p.parse_args(argv)
    try:
        print(_run(args))
    except (ValueError, TypeError, OSError, ImportError) as e:
        if args.debug:
            raise
        p.exit(2, f"{p.prog}: error: {' '.join(str(e).split())}\n")
    except KeyboardInterrupt:
        if args.debug:
            raise
        hint = "; rerun the same command to resume" if args.out_dir else ""
        p.exit(130, f"{p.prog}: interrupted{hint}\n")


if __name__ == "__main__":
    cli()
