"""GenEval-lite table: a text-to-image pipeline vs the same pipeline with an untrained generator.

    python benchmarks/geneval_lite.py --num-prompts 200 [--model vistok/assets/default] [--decoder ar]

Prompts are single-object shapes captions from a held-out seed (the shipped default was trained on
single-object scenes); each prompt gets one sample.  Prints per-attribute scores (markdown).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from vistok.data import ShapesDataset
from vistok.data.geneval import ATTRIBUTES, score_batch
from vistok.sample import DEFAULT_MODEL, Pipeline


def evaluate(pipe: Pipeline, captions: list[str], batch: int, seed: int, **opts) -> tuple[dict, float, float]:
    """Mean scores, seconds, and mean generator passes per batched call (one sample per caption)."""
    scores, t0, nfe = [], time.time(), []
    for i in range(0, len(captions), batch):
        chunk = captions[i : i + batch]
        images, out = pipe(chunk, num_samples=1, seed=seed + i, **opts)
        nfe.append(out.nfe)
        scores.append((len(chunk), score_batch(images, chunk)))
    total = sum(n for n, _ in scores)
    mean = {k: sum(n * s[k] for n, s in scores) / total for k in ATTRIBUTES}
    return mean, time.time() - t0, sum(nfe) / len(nfe)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--num-prompts", type=int, default=200)
    p.add_argument("--prompt-seed", type=int, default=12345, help="held out: training used seeds 0 and 1")
    p.add_argument("--max-objects", type=int, default=1)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decoder", default="ar")
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--skip-untrained", action="store_true")
    p.add_argument("--skip-reconstructions", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(2)
    ds = ShapesDataset(args.num_prompts, seed=args.prompt_seed, max_objects=args.max_objects)
    captions = [ds.scene(i).caption for i in range(len(ds))]
    pipe = Pipeline.from_folder(args.model)
    opts = dict(decoder=args.decoder, cfg_scale=args.cfg_scale, top_k=args.top_k, temperature=args.temperature)
    rows = []
    if not args.skip_reconstructions:  # the tokenizer's ceiling: real renders of the prompts, encoded + decoded
        t0 = time.time()
        real = torch.stack([ds[i]["pixels"] for i in range(len(ds))])
        with torch.no_grad():
            recon = torch.cat([pipe.tokenizer.decode(pipe.tokenizer.encode(b)) for b in real.split(args.batch)])
        rows.append(("real renders", score_batch(real, captions), 0.0, 0.0))
        rows.append(("tokenizer reconstructions", score_batch(recon, captions), time.time() - t0, 0.0))
    rows.append(("trained", *evaluate(pipe, captions, args.batch, args.seed, **opts)))
    if not args.skip_untrained:
        untrained = copy.copy(pipe)
        untrained.generator = type(pipe.generator)(**pipe.generator.config).eval()
        torch.nn.init.normal_(untrained.generator.output.weight, std=0.02)  # zero-init head would be uniform
        rows.append(("untrained generator", *evaluate(untrained, captions, args.batch, args.seed, **opts)))
    settings = {**pipe.defaults, **{k: v for k, v in opts.items() if v is not None}}
    print(f"GenEval-lite on {len(captions)} prompts (max_objects={args.max_objects}), settings {settings}\n")
    print("| model | " + " | ".join(ATTRIBUTES) + " | s/image | NFE per batch |")
    print("|---" * (len(ATTRIBUTES) + 3) + "|")
    for name, s, secs, nfe in rows:
        print(f"| {name} | " + " | ".join(f"{s[k]:.3f}" for k in ATTRIBUTES)
              + f" | {secs / len(captions):.3f} | {nfe:.1f} |")


if __name__ == "__main__":
    main()
