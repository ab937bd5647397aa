"""Where a speculative decoder's wall-clock goes at batch 1: the forward pass of a W-token window vs the decoder's
own work, and the wall-clock / step-compression ratio that this leaves.

    python benchmarks/pass_cost.py --model vistok/assets/vq256 --windows 2 4 8 16 64 --decoders sjd mcsjd \
        [--num-prompts 4] [--rounds 3] [--threads 1] [--device cuda] [--compile [--compile-mode reduce-overhead]]

Issue 19's goal "wall-clock >= 0.8 x step compression at batch 1" asks that a pass over a W-token window cost at most
1.25x a one-token AR pass, verification included.  This script splits every decoder call into the time spent inside
``generator.step`` (the forward pass; timed by wrapping the method) and everything else (drafting, verification,
cache bookkeeping), per pass, next to plain AR (window 1).  AR and the decoders run alternately, ``--rounds`` times
over the same prompts and seeds, batch 1, CFG and top-k as the pipeline's defaults.

Columns: passes per image, ms per pass (total, forward, rest), forward(W) / forward(1), step compression, speed-up
(AR seconds / decoder seconds), ratio = speed-up / compression, and the *ceiling* forward(1) / forward(W): the ratio
a decoder whose own work cost nothing would reach at that window on this machine.

On a GPU (``--device cuda``) the timer synchronizes before and after every ``generator.step``, so "forward" is the
pass's kernels and "rest" the decoder's own work including its launches; the syncs themselves cost both AR and the
decoders one wait per pass.
"""

from __future__ import annotations

import argparse
import time

import torch

from vistok.compiling import compile_inference
from vistok.data import ShapesDataset
from vistok.decoding import generate
from vistok.sample import DEFAULT_MODEL, Pipeline, resolve_device

DEVICE = torch.device("cpu")


def _sync() -> None:
    """On a GPU, wait for the queued work: the forward's time is its kernels', not their launches'."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


class StepTimer:
    """Wraps ``generator.step`` (an instance attribute shadows the method) and sums the seconds spent in it."""

    def __init__(self, generator):
        self.generator, self.seconds = generator, 0.0
        self.inner = generator.step

    def __call__(self, *args, **kwargs):
        _sync()
        t0 = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            _sync()
            self.seconds += time.perf_counter() - t0

    def __enter__(self) -> StepTimer:
        self.shadowed = self.generator.__dict__.get("step")  # a compiled step (vistok.compile_inference) stays
        self.generator.step = self
        return self

    def __exit__(self, *exc) -> None:
        del self.generator.step
        if self.shadowed is not None:
            self.generator.step = self.shadowed


@torch.no_grad()
def measure(pipe: Pipeline, captions: list[str], configs: list[tuple[str, int]], rounds: int,
            sampling: dict) -> list[dict]:
    """One dict per (decoder, window) of ``configs`` (``("ar", 1)`` first): seconds, forward seconds and passes,
    summed over ``rounds`` x ``captions`` (batch 1, seed = round * 1000 + prompt index)."""
    conds = [pipe.condition([c]) for c in captions]
    totals = {cfg: {"seconds": 0.0, "forward": 0.0, "passes": 0} for cfg in configs}
    opts = {cfg: {} if cfg[0] == "ar" else {"window": cfg[1]} for cfg in configs}
    for cfg in configs:  # warm-up
        generate(pipe.generator, conds[0], decoder=cfg[0], seed=0, **sampling, **opts[cfg])
    with StepTimer(pipe.generator) as timer:
        for r in range(rounds):
            for i, cond in enumerate(conds):
                for name, window in configs:  # alternate: every configuration on this prompt, then the next
                    timer.seconds = 0.0
                    _sync()
                    t0 = time.perf_counter()
                    out = generate(pipe.generator, cond, decoder=name, seed=1000 * r + i, **sampling,
                                   **opts[(name, window)])
                    _sync()
                    tot = totals[(name, window)]
                    tot["seconds"] += time.perf_counter() - t0
                    tot["forward"] += timer.seconds
                    tot["passes"] += out.nfe
    return [{"decoder": n, "window": w, **totals[(n, w)]} for n, w in configs]


def table(rows: list[dict], images: int) -> str:
    ar = rows[0]
    fwd1 = ar["forward"] / ar["passes"]
    out = ["| decoder | W | passes / image | ms / pass | forward | rest | forward(W) / forward(1) | step compression | "
           "speed-up | ratio | ceiling |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        comp = ar["passes"] / r["passes"]
        speed = ar["seconds"] / r["seconds"]
        fwd = r["forward"] / r["passes"]
        ms = [1e3 * t / r["passes"] for t in (r["seconds"], r["forward"], r["seconds"] - r["forward"])]
        out.append(f"| {r['decoder']} | {r['window']} | {r['passes'] / images:.1f} | {ms[0]:.2f} | {ms[1]:.2f} | "
                   f"{ms[2]:.2f} | "
                   f"{fwd / fwd1:.2f} | {comp:.2f}x | {speed:.2f}x | {speed / comp:.2f} | {fwd1 / fwd:.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--windows", nargs="+", type=int, default=[2, 4, 8, 16])
    p.add_argument("--decoders", nargs="+", default=["sjd", "mcsjd"], choices=("sjd", "mcsjd", "gsd", "lantern"))
    p.add_argument("--num-prompts", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompt-seed", type=int, default=12345)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (a GPU: the step timer synchronizes)")
    p.add_argument("--compile", action="store_true", help="compile the generator's step (vistok.compile_inference)")
    p.add_argument("--compile-mode", default=None, choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile mode with --compile (reduce-overhead: CUDA graphs on a GPU)")
    args = p.parse_args(argv)
    global DEVICE
    try:
        DEVICE = resolve_device(args.device)
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(args.threads)
    pipe = Pipeline.from_folder(args.model).to(DEVICE)
    if args.compile:
        compile_inference(pipe.generator, mode=args.compile_mode)
    sampling = {k: v for k, v in pipe.defaults.items() if k in ("cfg_scale", "top_k", "top_p", "temperature")}
    ds = ShapesDataset(args.num_prompts, seed=args.prompt_seed, max_objects=1)
    captions = [ds.scene(i).caption for i in range(len(ds))]
    configs = [("ar", 1)] + [(d, w) for d in args.decoders for w in args.windows]
    rows = measure(pipe, captions, configs, args.rounds, sampling)
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"{args.model}: N = {pipe.generator.seq_len}, batch 1, {sampling}, {len(captions)} prompts x "
          f"{args.rounds} rounds, {where}{', compiled ' + str(args.compile_mode or '') if args.compile else ''}\n")
    print(table(rows, len(captions) * args.rounds))
    return rows


if __name__ == "__main__":
    main()
