"""A/B of the categorical draw inside the decoders: ``torch.multinomial`` (as it was) against the inverse CDF of
:func:`vistok.layers.sampling.sample_categorical` (now), alternating in one process on a shipped pipeline.

    python benchmarks/ab_sampler.py [--model vistok/assets/vq256] [--num-prompts 8] [--rounds 2] [--threads 2]
        [--configs ar sjd:16 mcsjd:16 mcsjd:64 gsd:16]

For every configuration (decoder:window) and prompt, the old and the new draw run the same call back to back (order
alternating by round); the table gives the summed seconds, the ratio old / new (> 1: the new draw is faster), the
forward passes per sample of both (equal in law, not per seed: the random streams differ) and ms per pass.  Batch 1,
one sample per prompt, the pipeline's own sampling settings.  Also times the draw alone on (rows, vocab) tensors.
"""

from __future__ import annotations

import argparse
import time

import torch

import vistok.decoding.sampling as sampling_module
from vistok.data import ShapesDataset
from vistok.decoding import generate
from vistok.layers.sampling import sample_categorical
from vistok.sample import Pipeline


def multinomial_draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The draw as it was before the inverse CDF."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


DRAWS = {"multinomial": multinomial_draw, "inverse_cdf": sample_categorical}


def time_draw(rows: int, vocab: int, reps: int = 50) -> dict[str, float]:
    probs = torch.randn(rows, vocab).softmax(-1)
    out = {}
    for name in ("multinomial", "inverse_cdf", "multinomial", "inverse_cdf"):
        t0 = time.perf_counter()
        for _ in range(reps):
            DRAWS[name](probs)
        out[name] = min(out.get(name, float("inf")), (time.perf_counter() - t0) / reps * 1e3)
    return out


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="vistok/assets/vq256")
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", nargs="+", default=["ar", "sjd:16", "mcsjd:16", "mcsjd:64", "gsd:16"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = Pipeline.from_folder(args.model)
    v = pipe.generator.vocab_size
    for rows in (1, 16, 64):
        d = time_draw(rows, v)
        print(f"draw alone, ({rows}, {v}): multinomial {d['multinomial']:.3f} ms, inverse CDF "
              f"{d['inverse_cdf']:.3f} ms")
    captions = [s["caption"] for s in ShapesDataset(args.num_prompts, seed=12345, max_objects=1)]
    conds = [pipe.condition([c]) for c in captions]
    original = sampling_module.sample_probs
    print(f"\n{args.model}, batch 1, {args.num_prompts} prompts x {args.rounds} rounds, {args.threads} threads")
    print("| decoder | W | multinomial s | inverse CDF s | old / new | passes/sample old / new | ms/pass old / new |")
    print("|---|---|---|---|---|---|---|")
    try:
        for spec in args.configs:
            name, _, w = spec.partition(":")
            opts = {"window": int(w)} if w else {}
            secs, passes = {k: 0.0 for k in DRAWS}, {k: 0 for k in DRAWS}
            sampling_module.sample_probs = sample_categorical
            generate(pipe.generator, conds[0], decoder=name, seed=0, **pipe.defaults, **opts)  # warm-up
            for r in range(args.rounds):
                order = list(DRAWS) if r % 2 == 0 else list(DRAWS)[::-1]
                for i, cond in enumerate(conds):
                    for k in order:
                        sampling_module.sample_probs = DRAWS[k]
                        t0 = time.perf_counter()
                        out = generate(pipe.generator, cond, decoder=name, seed=1000 * r + i, **pipe.defaults, **opts)
                        secs[k] += time.perf_counter() - t0
                        passes[k] += out.nfe
            n = args.rounds * len(conds)
            old, new = secs["multinomial"], secs["inverse_cdf"]
            print(f"| {name} | {w or 1} | {old:.2f} | {new:.2f} | {old / new:.2f} | {passes['multinomial'] / n:.1f} / "
                  f"{passes['inverse_cdf'] / n:.1f} | {1e3 * old / passes['multinomial']:.2f} / "
                  f"{1e3 * new / passes['inverse_cdf']:.2f} |", flush=True)
    finally:
        sampling_module.sample_probs = original


if __name__ == "__main__":
    main()
