"""bf16 autocast vs fp32 inference: speed-up and quality cost, side by side in one process.

    python benchmarks/precision.py [--model vistok/assets/default --model vistok/assets/xar] [--num-prompts 100]
        [--batch 16] [--reps 3] [--threads 2] [--out runs/precision.json]

For each pipeline (shipped default: AR on tiny TiTok ids; xAR on its code vectors):

* **speed**: the same ``--batch`` prompts sampled ``--reps`` times at fp32 and at bf16, *alternately*
  (fp32, bf16, fp32, ...), median seconds of each, after one warm-up call of each;
* **generation quality**: GenEval-lite overall on ``--num-prompts`` held-out single-object captions, one sample
  each, with the same seeds at both precisions (the disc baseline beside it);
* **tokenizer quality**: PSNR of reconstructions of ``--num-prompts`` held-out renders decoded at each precision,
  and the share of token ids ``encode`` gives identically.

bf16 needs hardware support to be fast (AVX512-BF16 / AMX on CPUs, any recent GPU); elsewhere it is emulated and
slower.  ``vistok-sample --precision bf16`` and ``Pipeline(..., precision="bf16")`` are the user-facing switch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from vistok.data import ShapesDataset
from vistok.data.geneval import disc_baseline, score_batch
from vistok.eval_cli import sample_prompts
from vistok.evaluation import psnr
from vistok.sample import DEFAULT_MODEL, Pipeline, precision_context


def timed(pipe: Pipeline, captions: list[str], precision: str) -> float:
    t0 = time.perf_counter()
    pipe(captions, num_samples=1, seed=0, precision=precision)
    return time.perf_counter() - t0


@torch.no_grad()
def tokenizer_quality(tok, real: torch.Tensor, precision: str) -> tuple[float, torch.Tensor]:
    with precision_context(precision, tok)():
        ids = tok.encode(real)
        recon = tok.decode(ids).float().clamp(0, 1)
    return float(psnr(recon, real).mean()), ids


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", action="append", default=None, help="pipeline folder (repeat); default: shipped")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--batch", type=int, default=16, help="prompts per timed call")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--prompt-seed", type=int, default=12345)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = ShapesDataset(args.num_prompts, seed=args.prompt_seed, max_objects=1)
    captions = [ds.scene(i).caption for i in range(len(ds))]
    real = torch.stack([ds[i]["pixels"] for i in range(len(ds))])
    disc = score_batch(disc_baseline(captions, image_size=real.shape[-1]), captions)["overall"]
    rows = []
    for folder in args.model or [str(DEFAULT_MODEL), str(DEFAULT_MODEL.parent / "xar")]:
        pipe = Pipeline.from_folder(folder)
        batch = captions[: args.batch]
        times = {"fp32": [], "bf16": []}
        for prec in times:  # warm-up
            timed(pipe, batch, prec)
        for _ in range(args.reps):
            for prec in times:
                times[prec].append(timed(pipe, batch, prec))
        row = {"model": folder, "batch": len(batch)}
        for prec in times:
            images, _, _ = sample_prompts(pipe, captions, batch=50, seed=0, progress=False, precision=prec)
            row[f"{prec}_s"] = statistics.median(times[prec])
            row[f"{prec}_geneval"] = score_batch(images, captions)["overall"]
            row[f"{prec}_psnr"], row[f"{prec}_ids"] = tokenizer_quality(pipe.tokenizer, real, prec)
        same = row.pop("fp32_ids").eq(row.pop("bf16_ids"))
        row["same_ids"] = float(same.float().mean()) if same.dtype == torch.bool and same.ndim else None
        row["speedup"] = row["fp32_s"] / row["bf16_s"]
        rows.append(row)
    print(f"{'model':<28} {'batch':>5} {'fp32 s':>8} {'bf16 s':>8} {'speed-up':>8} {'GenEval fp32':>12} "
          f"{'bf16':>6} {'PSNR fp32':>9} {'bf16':>6} {'same ids':>8}")
    for r in rows:
        same = f"{r['same_ids']:.3f}" if r["same_ids"] is not None else "-"
        print(f"{Path(r['model']).name:<28} {r['batch']:>5} {r['fp32_s']:>8.2f} {r['bf16_s']:>8.2f} "
              f"{r['speedup']:>7.2f}x {r['fp32_geneval']:>12.3f} {r['bf16_geneval']:>6.3f} {r['fp32_psnr']:>9.2f} "
              f"{r['bf16_psnr']:>6.2f} {same:>8}")
    print(f"disc baseline GenEval-lite overall: {disc:.3f} ({args.num_prompts} prompts)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"rows": rows, "disc_baseline": disc}, indent=1))


if __name__ == "__main__":
    main()
