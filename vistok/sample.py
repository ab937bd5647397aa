"""Text-to-image sampling: prompt(s) in, PNG grid out.

    vistok-sample "a red circle on the left" --num-samples 4 --seed 0 --out grid.png

With no ``--model``, the shipped default (tiny TiTok + tiny LlamaGen-style T2I generator + MiniLM text
encoder, in ``vistok/assets/default``) is used.  A model folder holds ``tokenizer/`` and ``generator/`` (each
written by :func:`vistok.hub.save_pretrained`) and ``pipeline.json`` (text encoder and sampling defaults).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.decoding import DECODERS, generate
from vistok.hub import from_pretrained
from vistok.interfaces import Conditioning
from vistok.text import check_prompts, load_text_encoder

DEFAULT_MODEL = Path(__file__).parent / "assets" / "default"
#: pipelines that ship inside the package (``Pipeline.from_folder(name)``)
SHIPPED = ("default", "xar")


@dataclass
class Pipeline:
    """Tokenizer + generator + text encoder, with the sampling defaults the model was tuned for."""

    tokenizer: nn.Module
    generator: nn.Module
    text_encoder: nn.Module | None
    defaults: dict = field(default_factory=dict)

    @classmethod
    def from_folder(cls, folder: str | Path = DEFAULT_MODEL) -> Pipeline:
        """Load a pipeline folder, or a shipped one by name (``"default"``, ``"xar"``) when no such folder exists."""
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
        spec = json.loads((folder / "pipeline.json").read_text())
        enc_spec = spec.get("text_encoder")
        if isinstance(enc_spec, dict) and "path" in enc_spec:  # clip / t5 folders may be given relative to here
            enc_spec = {**enc_spec, "path": str(folder / enc_spec["path"])}
        text_encoder = load_text_encoder(enc_spec, spec.get("text_max_length", 32 if enc_spec == "minilm" else None))
        return cls(from_pretrained(folder / "tokenizer"), from_pretrained(folder / "generator"), text_encoder,
                   spec.get("sampling", {}))

    def save(self, folder: str | Path, *, dtype: torch.dtype | None = torch.float16) -> Path:
        """Write ``tokenizer/``, ``generator/`` and ``pipeline.json`` (what :meth:`from_folder` reads)."""
        from vistok.hub import save_pretrained

        folder = Path(folder)
        save_pretrained(self.tokenizer, folder / "tokenizer", dtype=dtype)
        save_pretrained(self.generator, folder / "generator", dtype=dtype)
        enc = self.text_encoder
        spec = {"text_encoder": None if enc is None else enc.spec() if hasattr(enc, "spec") else "minilm",
                "text_max_length": getattr(self.text_encoder, "max_length", None), "sampling": self.defaults}
        (folder / "pipeline.json").write_text(json.dumps(spec, indent=2))
        return folder

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
        self.generator = from_pretrained(folder)
        self.check_compatible()
        if (folder / "sampling.json").is_file():
            self.defaults = json.loads((folder / "sampling.json").read_text())
        elif getattr(self.generator, "default_decoder", "ar") != old:
            self.defaults = {k: v for k, v in self.defaults.items() if k in ("cfg_scale", "temperature")}
        return self

    def condition(self, prompts: list[str]) -> Conditioning:
        if self.text_encoder is None:
            raise ValueError("this pipeline has no text encoder; build a Conditioning(labels=...) yourself")
        return self.text_encoder(check_prompts(prompts))

    @torch.no_grad()
    def __call__(self, prompts: list[str] | str, num_samples: int = 4, seed: int | None = 0, **overrides):
        """prompts (P) -> images (P * num_samples, 3, H, W) in [0, 1] and the GenerationOutput."""
        opts = {**self.defaults, **{k: v for k, v in overrides.items() if v is not None}}
        out = generate(self.generator, self.condition(check_prompts(prompts)), num_samples=num_samples,
                       seed=seed, **opts)
        return self.tokenizer.decode(out.tokens), out


def pack(tokenizer_dir: str | Path, generator_dir: str | Path, out: str | Path = DEFAULT_MODEL,
         text_encoder: str | None = "minilm", **sampling) -> Path:
    """Bundle two trained hub folders (``vistok fit`` exports) into a pipeline folder with sampling defaults.

    Example: ``pack("runs/titok_tiny/export", "runs/ar_tiny_t2i/export", cfg_scale=3.0, top_k=100)``.
    """
    gen = from_pretrained(generator_dir)
    enc = None
    if text_encoder == "minilm":
        from vistok.text import MiniLMTextEncoder

        enc = MiniLMTextEncoder(max_length=getattr(gen, "prefix_len", None) or getattr(gen, "max_text_len", None) or 32)
    return Pipeline(from_pretrained(tokenizer_dir), gen, enc, sampling).save(out)


def save_grid(images: Tensor, path: str | Path, nrow: int, scale: int = 4) -> Path:
    """Save ``images`` (B, 3, H, W) in [0, 1] as one PNG, ``nrow`` per row, upscaled ``scale`` x (nearest)."""
    from torchvision.utils import save_image

    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, str(path), nrow=nrow, padding=2, pad_value=1.0)
    return path


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="vistok-sample", description="Sample images for text prompts.")
    p.add_argument("prompts", nargs="+", help="one or more prompts, e.g. 'a red circle on the left'")
    p.add_argument("--num-samples", type=int, default=4, help="images per prompt (one grid row per prompt)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same images")
    p.add_argument("--out", default="grid.png", help="output PNG path")
    p.add_argument("--model", default=str(DEFAULT_MODEL),
                   help="pipeline folder, or the name of a shipped one: 'default' (AR, the default) or 'xar' (xAR on "
                        "the same tokenizer's code vectors: better images, ~9x slower)")
    p.add_argument("--generator", default=None,
                   help="a generator folder (vistok fit export) to use instead of the model's own; it must have been "
                        "trained on the same tokenizer's tokens")
    p.add_argument("--decoder", default=None, choices=sorted(DECODERS),
                   help="decoding algorithm (default: the generator's own, e.g. ar for AR, masked for MAR)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--scale", type=int, default=4, help="nearest-neighbour upscaling of the saved grid")
    args = p.parse_args(argv)
    if args.num_samples < 1:
        p.error("--num-samples must be >= 1")
    torch.manual_seed(args.seed)
    t0 = time.time()
    pipe = Pipeline.from_folder(args.model)
    if args.generator:
        try:
            pipe.swap_generator(args.generator)
        except ValueError as e:
            p.error(str(e))
    t1 = time.time()
    images, out = pipe(args.prompts, num_samples=args.num_samples, seed=args.seed, decoder=args.decoder,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, cfg_scale=args.cfg_scale)
    path = save_grid(images, args.out, nrow=args.num_samples, scale=args.scale)
    print(f"wrote {path.resolve()} ({len(images)} images, {out.nfe} generator passes; "
          f"load {t1 - t0:.1f}s, sample {time.time() - t1:.1f}s)")


if __name__ == "__main__":
    cli()
