"""Reconstruction quality of a FlexTok checkpoint against the number of kept tokens (coarse to fine).

    python benchmarks/flextok_prefix.py --model runs/flextok_tiny/export [--num-images 64] [--steps 10]
                                        [--guidance 1.0] [--apg] [--ks 1 2 4 8 16 32] [--plot docs/flextok_prefix.png]
                                        [--colour-images 64] [--out results.json]

``--model`` is a folder written by ``vistok.hub.save_pretrained`` (e.g. the export of ``vistok fit --config
configs/tokenizers/flextok_tiny.yaml``) or an official FlexTok release folder (``vistok.hub.load_official``).
Images are held-out shapes scenes (seed 777, ``--scene-seed``) at the model's resolution.  For every prefix length
``k`` the tokens ``[:k]`` are decoded with the same seeded noise; the table lists PSNR and SSIM against the input
(mean over images) and the seconds the decodes took, under a trivial baseline row: every image replaced by its own
flat mean colour.  ``--plot`` writes PSNR vs k (log-2 axis, baseline dashed) and a grid: one row per k.

``--colour-images N`` adds the GenEval-lite scores (:mod:`vistok.data.geneval`) of the decodes at every k on N
single-object scenes (seed 778 = scene seed + 1) against their captions, beside three references: the inputs
themselves (the scorer's ceiling on real scenes), the flat mean-colour images (trivial baseline) and
``disc_baseline`` (a disc of the prompted colour at the prompted place: knows colour and position, nothing else).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vistok.data import ShapesDataset
from vistok.data.geneval import disc_baseline, score_batch
from vistok.evaluation import psnr, ssim
from vistok.hub import from_pretrained, load_official


def load(folder: str) -> torch.nn.Module:
    cfg = Path(folder) / "config.json"
    if cfg.is_file() and "class" in json.loads(cfg.read_text()):
        return from_pretrained(folder)
    return load_official(folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="FlexTok folder (vistok export or official release)")
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=None, help="flow steps (default: the model's num_steps)")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--apg", action="store_true", help="adaptive projected guidance instead of plain CFG")
    p.add_argument("--ks", type=int, nargs="*", default=None, help="prefix lengths (default: powers of two)")
    p.add_argument("--seed", type=int, default=0, help="sampling-noise seed")
    p.add_argument("--scene-seed", type=int, default=777,
                   help="seed of the held-out scenes (the colour scenes use scene-seed + 1): change it to confirm a "
                        "decode setting chosen on the default scenes on others")
    p.add_argument("--plot", default=None, help="write PSNR-vs-k and a reconstruction grid to this PNG")
    p.add_argument("--colour-images", type=int, default=0, help="single-object scenes for GenEval-lite (0 = skip)")
    p.add_argument("--out", default=None, help="write the numbers to this JSON file")
    args = p.parse_args()

    torch.set_num_threads(2)
    model = load(args.model).eval()
    n = model.num_tokens
    ks = args.ks or [2**i for i in range(n.bit_length()) if 2**i <= n]
    data = ShapesDataset(args.num_images, image_size=model.image_size, seed=args.scene_seed)
    pixels = torch.stack([data[i]["pixels"] for i in range(len(data))])
    rows, grids = [], []
    ids = torch.cat([model.encode(b) for b in pixels.split(args.batch_size)])
    for k in ks:
        t0 = time.perf_counter()
        recon = decode(model, ids, k, args)
        seconds = time.perf_counter() - t0
        rows.append((k, float(psnr(recon, pixels).mean()), float(ssim(recon, pixels)), seconds))
        grids.append(recon[:8])
    flat = flat_mean(pixels)
    base = (float(psnr(flat, pixels).mean()), float(ssim(flat, pixels)))
    print(f"{'k':>5} {'PSNR':>7} {'SSIM':>6} {'seconds':>8}")
    print(f"{'flat':>5} {base[0]:7.2f} {base[1]:6.3f} {'':>8}   (baseline: each image's own mean colour)")
    for k, ps, ss, sec in rows:
        print(f"{k:>5} {ps:7.2f} {ss:6.3f} {sec:8.1f}")
    result = {"model": args.model, "num_images": len(pixels), "steps": args.steps or model.num_steps,
              "flat_mean_psnr": base[0], "flat_mean_ssim": base[1],
              "psnr": {k: ps for k, ps, _, _ in rows}, "ssim": {k: ss for k, _, ss, _ in rows}}
    if args.colour_images:
        result["geneval_lite"] = colour_scores(model, ks, args)
    if args.plot:
        plot(rows, grids, pixels[:8], args.plot, base[0])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")


def decode(model: torch.nn.Module, ids: torch.Tensor, k: int, args) -> torch.Tensor:
    """Decode ``ids[:, :k]`` batch by batch with per-batch seeded noise (the same noise at every k)."""
    out = []
    for i, b in enumerate(ids.split(args.batch_size)):
        g = torch.Generator().manual_seed(args.seed + i)
        out.append(model.decode(b[:, :k], num_steps=args.steps, guidance_scale=args.guidance, apg=args.apg,
                                generator=g))
    return torch.cat(out)


def flat_mean(pixels: torch.Tensor) -> torch.Tensor:
    """The trivial reconstruction: each image filled with its own mean colour."""
    return pixels.mean(dim=(2, 3), keepdim=True).expand_as(pixels)


def colour_scores(model: torch.nn.Module, ks: list[int], args) -> dict:
    """GenEval-lite scores of decodes at each k on single-object scenes, with the references."""
    data = ShapesDataset(args.colour_images, image_size=model.image_size, seed=args.scene_seed + 1, min_objects=1,
                         max_objects=1)
    items = [data[i] for i in range(len(data))]
    pixels, captions = torch.stack([it["pixels"] for it in items]), [it["caption"] for it in items]
    ids = torch.cat([model.encode(b) for b in pixels.split(args.batch_size)])
    out = {"inputs": score_batch(pixels, captions), "flat_mean": score_batch(flat_mean(pixels), captions),
           "disc_baseline": score_batch(disc_baseline(captions, model.image_size), captions)}
    for k in ks:
        out[f"k{k}"] = score_batch(decode(model, ids, k, args), captions)
    print(f"GenEval-lite on {len(pixels)} single-object scenes:")
    print(f"{'':>14} " + " ".join(f"{a:>8}" for a in ("color", "shape", "position", "overall")))
    for name, sc in out.items():
        print(f"{name:>14} " + " ".join(f"{sc[a]:8.3f}" for a in ("color", "shape", "position", "overall")))
    return out


def plot(rows: list[tuple], grids: list[torch.Tensor], originals: torch.Tensor, path: str, baseline: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    fig, (ax, im) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1, 1.6]})
    ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", label="FlexTok decode of the first k tokens")
    ax.axhline(baseline, linestyle="--", color="gray", label="flat mean colour (baseline)")
    ax.legend()
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens kept (k)")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    grid = make_grid(torch.cat([originals, *grids]), nrow=len(originals), padding=1)
    im.imshow(grid.permute(1, 2, 0).numpy())
    im.set_title("top: input; then k = " + ", ".join(str(r[0]) for r in rows))
    im.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
