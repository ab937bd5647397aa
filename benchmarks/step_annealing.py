"""Diffusion step annealing (DiSA) on a continuous-token pipeline: wall-clock and quality vs the plain sampler.

    python benchmarks/step_annealing.py --model vistok/assets/xar --schedule 20,6 --schedule 20,10 \
        [--num-prompts 100] [--seeds 0 1 2 3] [--set num_steps=20] [--threads 2] [--out runs/disa.json]

Rows: the pipeline's own sampler (``--set`` options, e.g. its default ``num_steps``), then each ``--schedule
[sampler:]first,last`` (``step_schedule=(first, last)``: head/flow steps fall linearly over the generation steps; see
:func:`vistok.decoding.sampling.annealed_steps`; ``sampler:`` = the MAR head's sampler for that row, e.g.
``dpm:10,10`` for DPM-Solver++(2M) with 10 steps).  For every seed, all rows sample the same held-out single-object
captions one after the other (so slow and fast rows see the same machine load), and report:

* GenEval-lite overall, mean and spread over the seeds (the disc baseline beside it), and the paired difference to
  the ``--reference`` row (same prompt, same seed; mean over images with a 95 % normal interval);
* FID against ``--fid-reference`` real renders, per seed (mean and min..max: the seed noise a row's FID is read
  against) and pooled over seeds (optional; Inception on CPU is slow);
* seconds per image (sum over seeds) and the speed-up over the reference row; mean generator passes per batch (NFE).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from vistok.data import ShapesDataset
from vistok.data.geneval import disc_baseline, score_batch, score_image
from vistok.eval_cli import parse_set_options, sample_prompts
from vistok.evaluation import paired_difference
from vistok.sample import Pipeline


def row_options(spec: str) -> dict:
    """``"[sampler:]first,last"`` -> decoder options: ``step_schedule`` and, with a prefix, ``head_sampler``."""
    sampler, _, steps = spec.rpartition(":")
    try:
        first, last = (int(v) for v in steps.split(","))
    except ValueError:
        raise SystemExit(f"--schedule {spec!r}: expected [sampler:]first,last (e.g. 25,5 or dpm:10,10)") from None
    return {"step_schedule": (first, last), **({"head_sampler": sampler} if sampler else {})}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="pipeline folder of a continuous generator (MAR, MAR-AR, xAR)")
    p.add_argument("--schedule", action="append", default=[], help="[sampler:]first,last steps (repeat)")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--prompt-seed", type=int, default=12345)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="sampling options of every row")
    p.add_argument("--reference", default="plain", help="row the speed-up and the paired difference are taken against "
                   "(\"plain\" or one of the --schedule values)")
    p.add_argument("--fid-reference", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="Pipeline.compile() first (torch.compile with frozen "
                   "weights); every row then samples its first batch once untimed (compiling)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    opts = parse_set_options(args.set)
    rows = [("plain", {})] + [(s, row_options(s)) for s in args.schedule]
    if args.reference not in dict(rows):
        p.error(f"--reference {args.reference!r} is not a row: choose from {[name for name, _ in rows]}")
    pipe = Pipeline.from_folder(args.model)
    ds = ShapesDataset(args.num_prompts, seed=args.prompt_seed, max_objects=1)
    captions = [ds.scene(i).caption for i in range(len(ds))]
    if args.compile:
        pipe.compile()
        for name, extra in rows:  # untimed: every row's shapes compiled before any row is timed
            sample_prompts(pipe, captions[: args.batch], batch=args.batch, seed=0, progress=False, **opts, **extra)
            print(f"warm-up {name} done", flush=True)
    disc = score_batch(disc_baseline(captions, image_size=pipe.tokenizer.image_size), captions)["overall"]
    stats = {name: {"overall": [], "seconds": 0.0, "nfe": [], "images": [], "per_image": []} for name, _ in rows}
    for seed in args.seeds:
        for name, extra in rows:
            images, secs, nfe = sample_prompts(pipe, captions, batch=args.batch, seed=seed * 100_003, progress=False,
                                               **opts, **extra)
            st = stats[name]
            per_image = [score_image(img, c)["overall"] for img, c in zip(images, captions)]
            st["per_image"] += per_image
            st["overall"].append(statistics.mean(per_image))
            st["seconds"] += secs
            st["nfe"] += nfe
            st["images"].append(images)
            print(f"seed {seed} {name:>10}: overall {st['overall'][-1]:.3f}, {secs / len(captions):.3f} s/image",
                  flush=True)
    fids = {}
    if args.fid_reference:
        from vistok.evaluation import InceptionFeatures, fid_from_features

        feats = InceptionFeatures().eval()
        ref = ShapesDataset(args.fid_reference, seed=args.prompt_seed + 1, max_objects=1)

        @torch.no_grad()
        def features(images: torch.Tensor) -> torch.Tensor:
            return torch.cat([feats(b) for b in images.split(32)])

        real = features(torch.stack([ref[i]["pixels"] for i in range(len(ref))]))
        for name, st in stats.items():
            per_seed = [features(images) for images in st["images"]]
            fids[name] = {"pooled": fid_from_features(real, torch.cat(per_seed)),
                          "per_seed": [fid_from_features(real, f) for f in per_seed]}
    base = stats[args.reference]["seconds"]
    table = []
    n_img = len(captions) * len(args.seeds)
    print(f"\n{args.model}: {len(captions)} prompts x {len(args.seeds)} seeds, options {opts}"
          f"{', compiled' if args.compile else ''}")
    print(f"{'row':>10} {'GenEval-lite':>14} {'min..max':>12} {'vs ref (95 %)':>18} {'FID pooled':>10} "
          f"{'FID per seed':>18} {'s/image':>8} {'speed-up':>8} {'NFE':>7}")
    ref_scores = stats[args.reference]["per_image"]
    for name, st in stats.items():
        o = st["overall"]
        diff, half = paired_difference(st["per_image"], ref_scores)
        fid = fids.get(name)
        row = {"row": name, "overall_mean": statistics.mean(o), "overall_per_seed": o,
               "reference": args.reference, "diff_vs_reference": diff, "diff_ci95_half": half,
               "seconds_per_image": st["seconds"] / n_img, "speedup": base / st["seconds"],
               "nfe": statistics.mean(st["nfe"]), "fid": fid["pooled"] if fid else None,
               "fid_per_seed": fid["per_seed"] if fid else None, "per_image": st["per_image"]}
        table.append(row)
        pooled = f"{fid['pooled']:.1f}" if fid else "-"
        seeds = (f"{statistics.mean(fid['per_seed']):.1f} ({min(fid['per_seed']):.1f}..{max(fid['per_seed']):.1f})"
                 if fid else "-")
        print(f"{name:>10} {row['overall_mean']:>14.3f} {min(o):>5.3f}..{max(o):.3f} "
              f"{100 * diff:>+8.1f} +- {100 * half:.1f} pt {pooled:>10} {seeds:>18} "
              f"{row['seconds_per_image']:>8.3f} {row['speedup']:>7.2f}x {row['nfe']:>7.1f}")
    print(f"disc baseline overall: {disc:.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"model": args.model, "options": opts, "compiled": args.compile,
                                              "rows": table,
                                              "disc_baseline": disc}, indent=1))


if __name__ == "__main__":
    main()
