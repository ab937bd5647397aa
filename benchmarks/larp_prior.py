"""LARP's claim on the tiny setup: a generator trained on the ids of a tokenizer co-trained with the AR prior reaches a
lower validation NLL than one trained on the ids of the same tokenizer trained without the prior.

    python benchmarks/larp_prior.py --arm prior=runs/larp_prior4/export:runs/ar_larp_prior4/export \
        --arm noprior=runs/larp_noprior/export:runs/ar_larp_noprior/export [--num-clips 256] [--train-clips 1000]

Each ``--arm NAME=TOKENIZER:GENERATOR`` names a LARP export and the class-conditional AR trained on its ids
(``configs/generators/ar_larp_tiny_c2i.yaml`` with ``tokenizer_path`` set to that export).  On ``--num-clips``
held-out single-object clips (``--seed``, default 12345; neither the tokenizers' nor the generators' training or
validation seed) it reports, per arm:

* the tokenizer: PSNR of its reconstructions beside a flat clip of each clip's mean colour (an NLL comparison means
  little when the tokens carry nothing: a tokenizer at the flat-colour level has trivially easy ids), and the number
  of distinct ids used;
* the generator: teacher-forced NLL per token (nats) of the held-out ids given the clip's class;
* trivial baselines for that NLL, from the ids of ``--train-clips`` clips of the generators' training seed (0):
  a unigram over ids, and a unigram per position (both add-one smoothed), and ``log V`` (uniform).

Generator NLL minus the per-position unigram NLL is what the AR learned beyond id frequencies.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from vistok.data.videos import MovingShapesDataset
from vistok.eval_cli import evaluate_video_tokenizer
from vistok.hub import from_pretrained
from vistok.interfaces import Conditioning


def clips_of(n: int, seed: int, image_size: int, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` single-object clips ``(n, 3, T, H, W)`` and their class labels ``(n,)``."""
    ds = MovingShapesDataset(n, image_size=image_size, num_frames=num_frames, seed=seed, max_objects=1)
    items = [ds[i] for i in range(n)]
    return torch.stack([it["pixels"] for it in items]), torch.tensor([it["label"] for it in items])


@torch.no_grad()
def encode(tokenizer, clips: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([tokenizer.encode(c) for c in clips.split(batch)])


def unigram_nll(train_ids: torch.Tensor, ids: torch.Tensor, vocab: int, *, per_position: bool) -> float:
    """Mean NLL (nats) of ``ids`` (n, N) under add-one smoothed id frequencies of ``train_ids`` (m, N)."""
    if per_position:
        counts = torch.stack([torch.bincount(col, minlength=vocab) for col in train_ids.T]).double() + 1  # (N, V)
        logp = (counts / counts.sum(-1, keepdim=True)).log()
        return float(-logp.gather(1, ids.T).mean())
    counts = torch.bincount(train_ids.flatten(), minlength=vocab).double() + 1
    return float(-(counts / counts.sum()).log()[ids].mean())


@torch.no_grad()
def arm_row(name: str, tok_path: str, gen_path: str, args) -> dict:
    tok, gen = from_pretrained(tok_path).eval(), from_pretrained(gen_path).eval()
    size, frames = tok.image_size, tok.num_frames
    clips, labels = clips_of(args.num_clips, args.seed, size, frames)
    train_clips, _ = clips_of(args.train_clips, 0, size, frames)
    ids, train_ids = encode(tok, clips, args.batch), encode(tok, train_clips, args.batch)
    rec = evaluate_video_tokenizer(tok, clips, batch=args.batch, progress=False)
    nll = [gen(i, Conditioning(labels=lab)).loss * len(i) for i, lab in zip(ids.split(args.batch),
                                                                           labels.split(args.batch), strict=True)]
    v = tok.codebook_size
    return {"arm": name, "tokenizer": tok_path, "generator": gen_path,
            "psnr": rec["psnr"], "flat_psnr": rec["baselines"]["flat_mean_colour_psnr"],
            "distinct_ids": int(ids.unique().numel()),
            "ar_nll": float(sum(nll) / len(ids)),
            "unigram_nll": unigram_nll(train_ids, ids, v, per_position=False),
            "position_unigram_nll": unigram_nll(train_ids, ids, v, per_position=True),
            "uniform_nll": math.log(v)}


def table(rows: list[dict], num_clips: int) -> str:
    out = [f"| arm | tokenizer PSNR (dB) | flat mean colour | distinct ids ({num_clips} clips) | AR NLL / token "
           "(nats) | unigram | unigram per position | uniform |", "|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['arm']} | {r['psnr']:.2f} | {r['flat_psnr']:.2f} | {r['distinct_ids']} | **{r['ar_nll']:.3f}** | "
            f"{r['unigram_nll']:.3f} | {r['position_unigram_nll']:.3f} | {r['uniform_nll']:.3f} |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arm", action="append", required=True, metavar="NAME=TOKENIZER:GENERATOR")
    p.add_argument("--num-clips", type=int, default=256)
    p.add_argument("--train-clips", type=int, default=1000)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.arm:
        name, sep, paths = spec.partition("=")
        tok_path, sep2, gen_path = paths.partition(":")
        if not (sep and sep2 and name and tok_path and gen_path):
            p.error(f"--arm takes NAME=TOKENIZER:GENERATOR, got {spec!r}")
        rows.append(arm_row(name, tok_path, gen_path, args))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows, args.num_clips))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
