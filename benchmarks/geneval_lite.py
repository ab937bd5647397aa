"""GenEval-lite table: a text-to-image pipeline vs the disc baseline and the same pipeline with an untrained generator.

    python benchmarks/geneval_lite.py --num-prompts 200 [--model vistok/assets/default --model runs/pipelines/mar]
        [--decoder ar] [--fid-reference 1000]

Prompts are single-object shapes captions from a held-out seed (the generators were trained on single-object
scenes); each prompt gets one sample, from each generator's own decoder unless ``--decoder`` says otherwise.
Prints per-attribute scores, FID against real renders of another held-out seed, seconds per image and passes.
The *disc baseline* row (one medium disc of the prompted colour at the prompted position,
:func:`vistok.data.geneval.disc_baseline`) is the floor: a generator that knows only colour and position.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from vistok.data import ShapesDataset
from vistok.data.geneval import ATTRIBUTES, disc_baseline, score_batch
from vistok.eval_cli import parse_set_options, sample_prompts
from vistok.sample import DEFAULT_MODEL, Pipeline


def evaluate(pipe: Pipeline, captions: list[str], batch: int, seed: int, **opts):
    """Mean scores, seconds, mean generator passes per batched call, and the images (one sample per caption)."""
    images, secs, nfe = sample_prompts(pipe, captions, batch=batch, seed=seed, progress=False, **opts)
    return score_batch(images, captions), secs, sum(nfe) / len(nfe), images


def untrained_copy(pipe: Pipeline) -> Pipeline:
    """The same pipeline with a freshly initialised generator (the chance-level row)."""
    untrained = copy.copy(pipe)
    untrained.generator = type(pipe.generator)(**pipe.generator.config).eval()
    head = getattr(untrained.generator, "output", None)
    if isinstance(head, torch.nn.Linear):
        torch.nn.init.normal_(head.weight, std=0.02)  # AR's zero-init head would be exactly uniform
    return untrained


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", action="append", default=None,
                   help="pipeline folder; repeat to compare several (default: the shipped model)")
    p.add_argument("--num-prompts", type=int, default=200)
    p.add_argument("--prompt-seed", type=int, default=12345, help="held out: training used seeds 0 and 1")
    p.add_argument("--max-objects", type=int, default=1)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decoder", default=None, help="default: each generator's own")
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sampling option, e.g. --set num_iter=32 --set num_steps=20 (value read as JSON)")
    p.add_argument("--fid-reference", type=int, default=0,
                   help="also report FID of each row's images vs this many real renders (another held-out seed)")
    p.add_argument("--skip-untrained", action="store_true")
    p.add_argument("--skip-reconstructions", action="store_true")
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 when sharing the machine)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = ShapesDataset(args.num_prompts, seed=args.prompt_seed, max_objects=args.max_objects)
    captions = [ds.scene(i).caption for i in range(len(ds))]
    real = torch.stack([ds[i]["pixels"] for i in range(len(ds))])
    opts = dict(decoder=args.decoder, cfg_scale=args.cfg_scale, top_k=args.top_k, temperature=args.temperature)
    try:
        opts.update(parse_set_options(args.set))
    except ValueError as e:
        p.error(str(e))
    fid = None
    if args.fid_reference:
        from vistok.evaluation import InceptionFeatures, fid_from_features

        feats = InceptionFeatures().eval()
        ref = ShapesDataset(args.fid_reference, seed=args.prompt_seed + 1, max_objects=args.max_objects)
        with torch.no_grad():
            ref_pixels = torch.stack([ref[i]["pixels"] for i in range(len(ref))])
            ref_feats = torch.cat([feats(b) for b in ref_pixels.split(32)])

        def fid(images: torch.Tensor) -> float:
            with torch.no_grad():
                return fid_from_features(ref_feats, torch.cat([feats(b) for b in images.split(32)]))

    discs = disc_baseline(captions, image_size=real.shape[-1], seed=args.seed)
    rows = [("real renders of the prompts", score_batch(real, captions), fid(real) if fid else None, 0.0, 0.0),
            ("disc baseline (floor: prompted colour + position only)", score_batch(discs, captions),
             fid(discs) if fid else None, 0.0, 0.0)]
    seen_tokenizers: set[str] = set()
    for folder in args.model or [str(DEFAULT_MODEL)]:
        name = Path(folder).name
        pipe = Pipeline.from_folder(folder)
        weights_sum = sum(float(v.float().sum()) for v in pipe.tokenizer.state_dict().values())
        tok_key = json.dumps(pipe.tokenizer.config, sort_keys=True) + str(weights_sum)
        if not args.skip_reconstructions and tok_key not in seen_tokenizers:  # the tokenizer's ceiling
            seen_tokenizers.add(tok_key)
            t0 = time.time()
            with torch.no_grad():
                recon = torch.cat([pipe.tokenizer.decode(pipe.tokenizer.encode(b)) for b in real.split(args.batch)])
            rows.append((f"{name}: tokenizer reconstructions", score_batch(recon, captions),
                         fid(recon) if fid else None, time.time() - t0, 0.0))
        s, secs, nfe, images = evaluate(pipe, captions, args.batch, args.seed, **opts)
        label = f"{name}: {type(pipe.generator).__name__} ({getattr(pipe.generator, 'default_decoder', 'ar')})"
        rows.append((label, s, fid(images) if fid else None, secs, nfe))
        if not args.skip_untrained:
            s, secs, nfe, images = evaluate(untrained_copy(pipe), captions, args.batch, args.seed, **opts)
            rows.append((f"{name}: untrained generator", s, fid(images) if fid else None, secs, nfe))
        print(f"{name}: settings {({**pipe.defaults, **{k: v for k, v in opts.items() if v is not None}})}")
    ref_txt = f", FID vs {args.fid_reference} real renders" if fid else ""
    print(f"\nGenEval-lite on {len(captions)} prompts (max_objects={args.max_objects}){ref_txt}\n")
    print("| model | " + " | ".join(ATTRIBUTES) + " | FID | s/image | NFE per batch |")
    print("|---" * (len(ATTRIBUTES) + 4) + "|")
    for name, s, f, secs, nfe in rows:
        scores = " | ".join(f"{s[k]:.3f}" for k in ATTRIBUTES)
        print(f"| {name} | {scores} | " + (f"{f:.1f}" if f is not None else "-")
              + f" | {secs / len(captions):.3f} | {nfe:.1f} |")


if __name__ == "__main__":
    main()
