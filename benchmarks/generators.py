"""Generator speed table: images/s and NFE per image for AR, NAR, MAR and xAR at equal token count.

    python benchmarks/generators.py [--tokens 64] [--batch-sizes 1 16] [--threads 2] [--repeats 2]

Every family is built from its tiny preset at the same token count (an 8x8 grid by default) with random weights,
class-conditional with CFG 2 (a batch of B images runs 2B rows): AR and NAR are width 256, depth 6 (NAR + its
down block); MAR (2 + 2 blocks) and xAR (2 + 2 blocks) are width 128 — the table prints each one's parameters.
Only token generation is timed (no tokenizer decoding); each cell
is the best of ``--repeats`` runs after one warm-up.  NFE counts transformer forward passes per image; MAR and
xAR also run a per-token head (DiffLoss: ``num_sampling_steps`` MLP evaluations per revealed token; xAR: the
velocity comes from the transformer itself, so NFE = cells x steps).  Decoder settings:

* AR: ``decoder="ar"`` (N passes, KV cache);  NAR: ``decoder="nar"`` (H + W - 1 passes);
* MAR: ``decoder="masked", num_iter=16`` with a 50-step DiffLoss head (MAR's paper uses 64 iterations, 100 steps);
* xAR: ``decoder="cells", num_steps=20`` (4 cells of 4x4; the paper uses 50 SDE steps);
* ``default`` / ``xar_shipped``: the shipped text-to-image pipelines with their own sampling defaults (32 tokens).

CPU numbers from a 2-core machine say which family is cheap *per image at this size*; they are not GPU figures.
"""

from __future__ import annotations

import argparse
import time

import torch

import vistok
from vistok import Conditioning
from vistok.decoding import generate


def build(family: str, tokens: int) -> tuple[torch.nn.Module, dict]:
    side = int(tokens**0.5)
    if side * side != tokens:
        raise ValueError(f"--tokens must be a square (an HxW grid for NAR/xAR), got {tokens}")
    common = dict(num_classes=24)
    if family == "ar":
        return vistok.create_generator("ar_tiny_c2i", seq_len=tokens, **common), dict(decoder="ar", top_k=100)
    if family == "nar":
        return vistok.create_generator("nar_tiny_c2i", seq_len=tokens, **common), dict(decoder="nar", top_k=100)
    if family == "mar":
        gen = vistok.create_generator("mar_tiny", seq_len=tokens, **common)
        return gen, dict(decoder="masked", num_iter=16)
    if family == "xar":
        gen = vistok.create_generator("xar_tiny", grid_size=side, cell_size=side // 2, **common)
        return gen, dict(decoder="cells", num_steps=20)
    if family in ("default", "xar_shipped"):  # a shipped text-to-image pipeline, its own sampling defaults
        from vistok.sample import Pipeline

        pipe = Pipeline.from_folder("default" if family == "default" else "xar")
        return pipe.generator, dict(pipe.defaults, text_encoder=pipe.text_encoder)
    raise ValueError(f"unknown family {family!r}; choose from ar, nar, mar, xar, default, xar_shipped")


@torch.no_grad()
def run(gen: torch.nn.Module, opts: dict, batch: int, seed: int) -> tuple[float, float]:
    opts = dict(opts)
    encoder = opts.pop("text_encoder", None)
    if encoder is not None:  # shipped pipeline: text prompts (encoded outside the timed region)
        cond = encoder(["a red circle on the left", "a large blue star at the top right"] * (batch // 2 + 1))
        cond = Conditioning(text=cond.text[:batch], text_mask=cond.text_mask[:batch])
    else:
        cond = Conditioning(labels=torch.arange(batch) % 24)
        opts.setdefault("cfg_scale", 2.0)
    t0 = time.perf_counter()
    out = generate(gen, cond, num_samples=1, seed=seed, **opts)
    return time.perf_counter() - t0, float(out.nfe)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--families", nargs="+", default=["ar", "nar", "mar", "xar"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{args.tokens} tokens per image, CFG 2, random weights, {torch.get_num_threads()} threads, "
          f"best of {args.repeats}\n")
    print("| family | params | batch | NFE / image | s / batch | images / s |")
    print("|---|---|---|---|---|---|")
    for fam in args.families:
        gen, opts = build(fam, args.tokens)
        gen.eval()
        params = sum(p.numel() for p in gen.parameters()) / 1e6
        for b in args.batch_sizes:
            run(gen, opts, b, 0)  # warm-up
            secs, nfe = min(run(gen, opts, b, r + 1) for r in range(args.repeats))
            print(f"| {fam} | {params:.1f}M | {b} | {nfe:.0f} | {secs:.3f} | {b / secs:.1f} |", flush=True)


if __name__ == "__main__":
    main()
