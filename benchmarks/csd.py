"""Continuous speculative decoding (csd) vs plain causal AR on a trained MAR-AR (AR + DiffLoss) pipeline.

    python benchmarks/csd.py --model runs/pipelines/mar_ar_tiny_t2i [--num-prompts 32] [--reps 2]

Held-out single-object prompts (seed 777), one sample each, all in one batch.  Rows are timed alternately
(plain AR, then each csd setting, repeated ``--reps`` times) in one process with the same seeds and threads.
Columns: NFE of the batch (its slowest sample), mean tokens per forward pass per sample, head-network rows
evaluated (the diffusion head dominates cost), wall seconds (median over reps), speed-up vs AR, and
GenEval-lite colour / shape / overall on the first repetition's images.  ``path`` rows are exact (same law as
``ar`` with ``final_noise=True``); ``last_step`` rows are the paper's lossy approximation.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vistok.data import ShapesDataset
from vistok.data.geneval import score_batch
from vistok.decoding import generate
from vistok.sample import Pipeline

SETTINGS = [
    ("ar", dict(decoder="ar")),
    ("ar, final_noise (the law csd is exact for)", dict(decoder="ar", final_noise=True)),
    ("csd W=4 path (exact)", dict(decoder="csd", window=4)),
    ("csd W=8 path (exact)", dict(decoder="csd", window=8)),
    ("csd W=16 path (exact)", dict(decoder="csd", window=16)),
    ("csd W=8 last_step (lossy)", dict(decoder="csd", window=8, verify="last_step")),
    ("csd W=8 last_step, inner T 42 (lossy)",
     dict(decoder="csd", window=8, verify="last_step", inner_temperature=42.0)),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="pipeline folder whose generator is a MARARGenerator")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--prompt-seed", type=int, default=777)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = Pipeline.from_folder(args.model)
    if not getattr(pipe.generator, "is_causal", False) or getattr(pipe.generator, "kind", "") != "continuous":
        raise SystemExit(f"{args.model}: csd needs a causal continuous generator (MARARGenerator)")
    ds = ShapesDataset(args.num_prompts, seed=args.prompt_seed, max_objects=1)
    captions = [ds.scene(i).caption for i in range(len(ds))]
    cond = pipe.condition(captions)
    base = {k: v for k, v in pipe.defaults.items() if k in ("cfg_scale", "temperature")}
    walls: dict[str, list[float]] = {name: [] for name, _ in SETTINGS}
    first: dict[str, object] = {}
    for rep in range(args.reps):
        for name, opts in SETTINGS:
            t0 = time.perf_counter()
            out = generate(pipe.generator, cond, seed=rep, **base, **opts)
            walls[name].append(time.perf_counter() - t0)
            if rep == 0:
                first[name] = out
    print(f"{len(captions)} prompts x 1 sample, N = {pipe.generator.seq_len} tokens, sampling {base}, "
          f"{args.threads} threads, {args.reps} reps (wall = median)\n")
    print("| decoder | NFE (batch) | tokens / pass / sample | head rows | wall s | speed-up | colour | shape "
          "| overall |")
    print("|---|---|---|---|---|---|---|---|---|")
    t_ar = statistics.median(walls["ar"])
    n = pipe.generator.seq_len
    for name, _ in SETTINGS:
        out = first[name]
        per_sample = out.extras.get("nfe_per_sample", [out.nfe] * len(out.tokens))
        tps = statistics.mean(n / k for k in per_sample)
        with torch.no_grad():
            s = score_batch(pipe.tokenizer.decode(out.tokens), captions)
        wall = statistics.median(walls[name])
        print(f"| {name} | {out.nfe} | {tps:.2f} | {out.extras.get('head_evals', 0):,} | {wall:.2f} | "
              f"{t_ar / wall:.2f}x | {s['color']:.3f} | {s['shape']:.3f} | {s['overall']:.3f} |")
    for name, _ in SETTINGS:
        hist = first[name].extras.get("accepted_hist")
        if hist is not None:
            print(f"\n{name}: passes accepting k tokens, k = 0, 1, ...: {list(hist)}")


if __name__ == "__main__":
    main()
