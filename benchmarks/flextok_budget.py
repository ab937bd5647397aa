"""Generation on FlexTok tokens with a token budget k: GenEval-lite and FID for every k, beside trivial baselines and
the tokenizer's own ceiling at k, and the step compression of SJD / MC-SJD at full k.

    python benchmarks/flextok_budget.py --model runs/pipelines/flextok [--num-prompts 200] [--ks 1 2 4 8 16 32]
        [--fid-reference 256] [--window 16] [--batch 50] [--threads 1] [--grid docs/flextok_budget.png]
        [--out runs/flextok_budget.json]

``--model`` is a pipeline folder (FlexTok tokenizer + causal generator over its ids, ``vistok.sample.pack``).
Prompts are single-object shapes captions of a held-out seed (``--prompt-seed``, default 12345), one sample each
(image ``i`` seeded by ``(--seed, i, 0)`` as in ``vistok-sample``).  For every k the generator makes only the first k
tokens (``Pipeline(..., num_tokens=k)``: k forward passes with AR) and FlexTok decodes that prefix; the flow noise
is seeded the same way for every k.  Rows:

* real renders of the prompts (the scorer's ceiling on real scenes);
* trivial baselines: every image one flat fill of the prompted colour, and ``disc_baseline`` (a medium disc of the
  prompted colour at the prompted position: knows colour and position, nothing else);
* for each k: the FlexTok reconstruction of the real render from its first k tokens (what generation at k can reach
  at best) and the generator's sample with budget k;
* the same generator freshly initialised, at full k (chance level);
* ``sjd`` and ``mcsjd`` (window ``--window``) at full k: NFE per sample and step compression ``N / NFE``.

FID is against ``--fid-reference`` real renders of another seed (``--prompt-seed + 1``) with the local Inception
network (:mod:`vistok.evaluation`); small sets: compare rows, not papers.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch import Tensor

from vistok.data import ShapesDataset
from vistok.data.geneval import disc_baseline, score_batch
from vistok.data.shapes import COLORS, parse_caption
from vistok.sample import Pipeline, save_grid


def flat_colour(captions: list[str], image_size: int) -> Tensor:
    """The trivial baseline: each image ``(3, S, S)`` one flat fill of its prompt's (first) colour."""
    rgb = torch.tensor([COLORS[parse_caption(c).objects[0].color] for c in captions], dtype=torch.float32) / 255
    return rgb[:, :, None, None].expand(-1, -1, image_size, image_size).contiguous()


def untrained(pipe: Pipeline) -> Pipeline:
    """The same pipeline with a freshly initialised generator (its zero-init head gets std 0.02: zero is uniform)."""
    out = copy.copy(pipe)
    out.generator = type(pipe.generator)(**pipe.generator.config).eval()
    head = getattr(out.generator, "output", None)
    if isinstance(head, torch.nn.Linear):
        torch.nn.init.normal_(head.weight, std=0.02)
    return out


@torch.no_grad()
def sample(pipe: Pipeline, captions: list[str], k: int, *, batch: int, seed: int,
           **opts) -> tuple[Tensor, list[int], list[int], float]:
    """One sample per caption with budget ``k``: images ``(P, 3, S, S)``, NFE of each image, NFE of each batched
    call and seconds."""
    torch.manual_seed(seed)  # the FlexTok decoder's flow noise: the same for every k
    images, per_image, per_call, t0 = [], [], [], time.perf_counter()
    jobs = [(i, 0) for i in range(len(captions))]
    for chunk, imgs, out in pipe.batches(captions, jobs, seed=seed, batch_size=batch, num_tokens=k, **opts):
        images.append(imgs.float())
        per_image += out.extras.get("nfe_per_sample", [out.nfe] * len(chunk))
        per_call.append(out.nfe)
    return torch.cat(images), per_image, per_call, time.perf_counter() - t0


@torch.no_grad()
def reconstruct(tokenizer, pixels: Tensor, k: int, *, batch: int, seed: int) -> Tensor:
    """FlexTok decodes of the first ``k`` tokens of each real image ``(P, 3, S, S)``."""
    torch.manual_seed(seed)
    return torch.cat([tokenizer.decode(tokenizer.encode(b)[:, :k]).float() for b in pixels.split(batch)])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="pipeline folder: FlexTok + a causal generator over its ids")
    p.add_argument("--num-prompts", type=int, default=200)
    p.add_argument("--prompt-seed", type=int, default=12345, help="held out: training used seeds 0 and 1")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--window", type=int, default=16, help="SJD / MC-SJD window at full k")
    p.add_argument("--decoders", nargs="*", default=["sjd", "mcsjd"], help="speculative decoders at full k")
    p.add_argument("--fid-reference", type=int, default=256, help="real renders for FID (0 = no FID)")
    p.add_argument("--skip-untrained", action="store_true")
    p.add_argument("--skip-reconstructions", action="store_true")
    p.add_argument("--grid", default=None, help="PNG: the first 8 prompts' samples, one row per k")
    p.add_argument("--out", default=None, help="write the rows to this JSON file")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipe = Pipeline.from_folder(args.model)
    n = pipe.generator.seq_len
    for k in args.ks:
        pipe.check_budget(k)  # 1 <= k <= N, a prefix-decoding tokenizer: fail before any work
    given = dict(cfg_scale=args.cfg_scale, top_k=args.top_k, temperature=args.temperature)
    opts = {name: v for name, v in given.items() if v is not None}
    size = pipe.tokenizer.image_size
    ds = ShapesDataset(args.num_prompts, image_size=size, seed=args.prompt_seed, max_objects=1)
    captions = [ds.scene(i).caption for i in range(len(ds))]
    real = torch.stack([ds[i]["pixels"] for i in range(len(ds))])

    fid = None
    if args.fid_reference:
        from vistok.evaluation import InceptionFeatures, fid_from_features

        feats = InceptionFeatures().eval()
        ref = ShapesDataset(args.fid_reference, image_size=size, seed=args.prompt_seed + 1, max_objects=1)
        ref_pixels = torch.stack([ref[i]["pixels"] for i in range(len(ref))])
        with torch.no_grad():
            ref_feats = torch.cat([feats(b) for b in ref_pixels.split(32)])

        def fid(images: Tensor) -> float:
            with torch.no_grad():
                return fid_from_features(ref_feats, torch.cat([feats(b) for b in images.split(32)]))

    rows: list[dict] = []

    def add(name: str, images: Tensor, k: int | None = None, nfe: list[int] | None = None,
            calls: list[int] | None = None, seconds: float = 0.0) -> None:
        s = score_batch(images, captions)
        row = {"row": name, "k": k, "color": s["color"], "overall": s["overall"], "scores": s,
               "fid": fid(images) if fid else None, "seconds_per_image": seconds / len(captions)}
        if nfe is not None:
            row |= {"nfe_per_image": sum(nfe) / len(nfe), "nfe_per_call": sum(calls) / len(calls),
                    "compression": k / (sum(nfe) / len(nfe))}
        rows.append(row)
        print(json.dumps({key: v for key, v in row.items() if key != "scores"}), flush=True)

    add("real renders of the prompts (scorer ceiling)", real)
    add("flat fill of the prompted colour (trivial baseline)", flat_colour(captions, size))
    add("disc baseline (prompted colour + position only)", disc_baseline(captions, image_size=size, seed=args.seed))
    grid = []
    for k in args.ks:
        if not args.skip_reconstructions:
            add(f"FlexTok reconstruction, first {k} tokens", reconstruct(pipe.tokenizer, real, k, batch=args.batch,
                                                                        seed=args.seed), k)
        images, nfe, calls, secs = sample(pipe, captions, k, batch=args.batch, seed=args.seed, **opts)
        add(f"AR, budget k = {k}", images, k, nfe, calls, secs)
        grid.append(images[:8])
    if not args.skip_untrained:
        images, nfe, calls, secs = sample(untrained(pipe), captions, n, batch=args.batch, seed=args.seed, **opts)
        add(f"untrained AR, k = {n} (chance)", images, n, nfe, calls, secs)
    for decoder in args.decoders:
        images, nfe, calls, secs = sample(pipe, captions, n, batch=args.batch, seed=args.seed, decoder=decoder,
                                          window=args.window, **opts)
        add(f"{decoder} (W = {args.window}), k = {n}", images, n, nfe, calls, secs)

    settings = {**pipe.defaults, **opts}
    ref_txt = f"FID vs {args.fid_reference} real renders (seed {args.prompt_seed + 1})" if fid else "no FID"
    print(f"\n{len(captions)} prompts (seed {args.prompt_seed}), sampling {settings}, {ref_txt}\n")
    print("| row | k | colour | overall | FID | NFE / image | step compression | s / image |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["row"], "" if r["k"] is None else str(r["k"]), f"{r['color']:.3f}", f"{r['overall']:.3f}",
                 "-" if r["fid"] is None else f"{r['fid']:.1f}",
                 f"{r['nfe_per_image']:.1f}" if "nfe_per_image" in r else "",
                 f"{r['compression']:.2f}x" if "compression" in r else "",
                 f"{r['seconds_per_image']:.3f}" if "nfe_per_image" in r else ""]
        print("| " + " | ".join(cells) + " |")
    result = {"model": args.model, "num_prompts": len(captions), "prompt_seed": args.prompt_seed, "seed": args.seed,
              "sampling": settings, "fid_reference": args.fid_reference, "window": args.window, "rows": rows}
    if args.grid:
        save_grid(torch.cat(grid), args.grid, nrow=len(grid[0]), scale=2)
        print(f"wrote {args.grid}: rows k = {args.ks}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
