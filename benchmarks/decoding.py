"""Speculative decoding benchmark: NFE, step compression, wall-clock speed-up and GenEval-lite vs plain AR.

    python benchmarks/decoding.py [--model vistok/assets/default] [--num-prompts 16] [--num-samples 2]
                                  [--batch-size 16] [--seeds 0 1 2 3] [--windows 4 8 16]
                                  [--decoders ar sjd mcsjd gsd lantern pjd] [--pjd-lags 2 4] [--plot speed.png]

Prompts are single-object shapes captions (``ShapesDataset(..., max_objects=1)``, held-out seed).  For every
decoder and window, AR and the decoder are timed *alternately* in this process on the same prompts and seeds
(``torch.set_num_threads(2)``; only ``generate`` is timed, not text encoding or pixel decoding).

Reported per row:
* NFE/sample: mean forward passes each sample needed (``extras["nfe_per_sample"]``); NFE/batch: passes of the
  batched call (the slowest sample), which is what wall-clock pays;
* step compression: ``N / NFE/sample`` (AR needs ``N``);
* speed-up: AR seconds / decoder seconds, summed over the interleaved runs;
* ms/fwd: wall-clock per batched forward pass (a W-token window costs more than AR's single token);
* accepted/fwd: mean tokens accepted per forward and the share of forwards that accepted exactly one token;
* GenEval-lite ``overall`` and its difference to AR's images from the same seeds (at this size the
  difference is mostly sampling noise; sjd/mcsjd are lossless, gsd/lantern/pjd are not).  With several
  ``--seeds`` every seed samples all prompts again: the score is the mean over seeds and ``vs AR`` lists each
  seed's difference (the per-seed spread).

``pjd`` (row-parallel Jacobi) runs over the tokenizer's ``grid`` (``--pjd-grid H W`` for a 1-D tokenizer), one row
per window in ``--windows`` and lag in ``--pjd-lags``.  ``mcsjd`` runs one row per window and ``--mcsjd-options``
entry (``""`` = defaults, ``"coupling=gumbel,proactive=4"``; proactive drafting feeds ``K`` rows per sample, so its
ms/fwd is that of a ``K``-fold batch).

The same table is then printed for a random-init generator.  **That table is an artefact**: an untrained
generator's conditionals barely depend on the context, so nearly every draft is accepted (about W/2 tokens
per pass with random init drafts); it says nothing about the methods.
"""

from __future__ import annotations

import argparse
import copy
import time
from itertools import zip_longest
from pathlib import Path

import torch

from vistok.data import ShapesDataset
from vistok.data.geneval import disc_baseline, score_batch, score_image
from vistok.decoding import generate, parse_options
from vistok.evaluation import fid_from_features, paired_difference
from vistok.sample import DEFAULT_MODEL, Pipeline

DECODERS = ("ar", "sjd", "mcsjd", "gsd", "lantern", "pjd")


def random_pipeline(max_text_len: int = 32) -> Pipeline:
    """Untrained tiny TiTok + tiny T2I generator (the shipped default's sizes) + MiniLM."""
    from vistok.generators import ARGenerator
    from vistok.generators.ar import AR_PRESETS
    from vistok.text import MiniLMTextEncoder
    from vistok.tokenizers import TiTok
    from vistok.tokenizers.titok import TITOK_PRESETS

    tok = TiTok(**TITOK_PRESETS["titok_tiny"]).eval()
    gen = ARGenerator(**{**AR_PRESETS["ar_tiny_t2i"], "max_text_len": max_text_len}).eval()
    return randomize(Pipeline(tok, gen, MiniLMTextEncoder(max_length=max_text_len),
                              {"cfg_scale": 2.0, "top_k": 100}))


def randomize(pipe: Pipeline) -> Pipeline:
    """The same pipeline with a freshly initialised generator (the head gets std 0.02: zero would be uniform)."""
    out = copy.copy(pipe)
    out.generator = type(pipe.generator)(**pipe.generator.config).eval()
    torch.nn.init.normal_(out.generator.output.weight, std=0.02)
    return out


def option_sets(specs: list[str]) -> list[dict]:
    """``["", "coupling=gumbel,proactive=4"]`` -> ``[{}, {"coupling": "gumbel", "proactive": 4}]`` (ints, floats and
    ``true``/``false`` parsed; ``8x2`` is the tuple ``(8, 2)``: a candidate tree for ``proactive``)."""
    try:
        return [parse_options(spec) for spec in specs]
    except ValueError as e:
        raise SystemExit(str(e)) from e


def decoder_options(pipe: Pipeline, decoder: str, window: int | None, extra: dict | None = None) -> dict:
    if decoder == "ar":
        return {}
    opts = {"window": window, **(extra or {})}
    if decoder == "pjd" and "grid" not in opts:
        grid = getattr(pipe.tokenizer, "grid", None)
        if grid is None:
            raise SystemExit(f"pjd needs a token grid: this tokenizer ({type(pipe.tokenizer).__name__}) has none, "
                             "pass --pjd-grid H W")
        opts["grid"] = tuple(grid)
    if decoder == "lantern":
        quantizer = getattr(pipe.tokenizer, "quantizer", None)
        if quantizer is not None and hasattr(quantizer, "codebook"):
            opts["latents"] = quantizer.codebook().detach().float()  # the tokenizer's code vectors
    return opts


@torch.no_grad()
def timed(pipe: Pipeline, cond, num_samples: int, seed: int, sampling: dict, decoder: str, opts: dict):
    t0 = time.perf_counter()
    out = generate(pipe.generator, cond, decoder=decoder, num_samples=num_samples, seed=seed, **sampling, **opts)
    return out, time.perf_counter() - t0


@torch.no_grad()
def benchmark(pipe: Pipeline, captions: list[str], *, num_samples: int, batch: int, seeds: list[int],
              sampling: dict, decoders: list[str], windows: list[int], reps: int, pjd: list[dict] | None = None,
              mcsjd: list[dict] | None = None, gsd: list[dict] | None = None, real_features: torch.Tensor | None = None,
              features: torch.nn.Module | None = None, time_ar: bool = True) -> list[dict]:
    """One row per (decoder, window[, pjd or mcsjd options]); AR is re-run next to every configuration for paired
    timing (``time_ar=False``: AR runs once, as the first row, and every speed-up is taken against that run).  Every
    seed in ``seeds`` samples all prompts (GenEval per seed: ``row["geneval_seeds"]``; per image, paired with AR's
    image of the same prompt and seed: ``row["paired_delta"]``, ``row["paired_ci95"]``)."""
    n = pipe.generator.seq_len
    chunks = [captions[i : i + batch] for i in range(0, len(captions), batch)]
    conds = [pipe.condition(c) for c in chunks]
    variants = {"pjd": pjd or [{}], "mcsjd": mcsjd or [{}], "gsd": gsd or [{}]}
    configs = [("ar", None, {})] + [(d, w, extra) for d in decoders if d != "ar" for w in windows
                                    for extra in variants.get(d, [{}])]
    # warm-up (allocations, lazy init, neighbour tables): one call on the first prompt per configuration
    first = pipe.condition(captions[:1])
    for d, w, extra in configs:
        timed(pipe, first, 1, seeds[0], sampling, d, decoder_options(pipe, d, w, extra))
    ar_tokens: list[torch.Tensor] = []
    rows = []
    for d, w, extra in configs:
        opts = decoder_options(pipe, d, w, extra)
        t_ar = t_dec = 0.0
        nfe_batch, nfe_sample, hist, tokens = [], [], None, []
        for rep in range(reps):
            for seed, (i, cond) in ((sd, ic) for sd in seeds for ic in enumerate(conds)):
                s = seed + 1000 * i
                if time_ar or d == "ar":
                    ar_out, ta = timed(pipe, cond, num_samples, s, sampling, "ar", {})
                    t_ar += ta
                out, td = (ar_out, ta) if d == "ar" and not time_ar else timed(pipe, cond, num_samples, s,
                                                                               sampling, d, opts)
                t_dec += td
                if rep:
                    continue
                if not rows:
                    ar_tokens.append(ar_out.tokens)
                tokens.append(out.tokens)
                nfe_batch.append(out.nfe)
                nfe_sample += out.extras.get("nfe_per_sample", [out.nfe] * len(out.tokens))
                h = out.extras.get("accepted_hist", [0, out.nfe * len(out.tokens)])
                hist = h if hist is None else [a + b for a, b in zip_longest(hist, h, fillvalue=0)]
        if not time_ar and rows:
            t_ar = rows[0]["t_ar"]
        label = " ".join(f"{k}={v}" for k, v in extra.items())
        rows.append(dict(decoder=d, window=w or 1, options=label, tokens=torch.cat(tokens),
                         nfe_batch=sum(nfe_batch) / len(nfe_batch),
                         nfe_sample=sum(nfe_sample) / len(nfe_sample), t_ar=t_ar, t_dec=t_dec,
                         ms_fwd=1e3 * t_dec / (reps * sum(nfe_batch)), hist=hist, n=n))
    # GenEval-lite on the images of the first repetition, per seed
    rep_captions = [c for c in captions for _ in range(num_samples)]
    for row in rows:
        images = torch.cat([pipe.tokenizer.decode(t) for t in row["tokens"].split(64)])
        row["per_image"] = [score_image(im, c)["overall"]
                            for chunk in images.chunk(len(seeds)) for im, c in zip(chunk, rep_captions)]
        per_seed = torch.tensor(row["per_image"]).view(len(seeds), -1)
        row["geneval_seeds"] = per_seed.mean(1).tolist()
        row["geneval"] = sum(row["geneval_seeds"]) / len(seeds)
        if real_features is not None:
            fake = torch.cat([features(b) for b in images.split(32)])
            row["fid"] = fid_from_features(real_features, fake)
    ar_score, ar_seeds = rows[0]["geneval"], rows[0]["geneval_seeds"]
    for row in rows:
        row["geneval_delta"] = row["geneval"] - ar_score
        row["delta_seeds"] = [a - b for a, b in zip(row["geneval_seeds"], ar_seeds)]
        row["paired_delta"], row["paired_ci95"] = paired_difference(row["per_image"], rows[0]["per_image"])
        row["same_as_ar"] = float((row["tokens"] == torch.cat(ar_tokens)).all(1).float().mean())
    return rows


def paired_rows(rows: list[dict], ref: int) -> str:
    """Every row against row ``ref`` (0 = AR) image by image: GenEval-lite difference with its 95 % interval, and the
    share of images whose tokens equal that row's.  Pairing two decoders that share their randomness (e.g. the Gumbel
    noise of ``coupling="gumbel"``: a relaxed rule against the exact decoder) gives a far tighter interval than
    pairing with AR's independent samples."""
    if not 0 <= ref < len(rows):
        raise SystemExit(f"--pair-row {ref}: the table has rows 0..{len(rows) - 1}")
    base = rows[ref]
    out = [f"Paired with row {ref} ({base['decoder']} W={base['window']} {base['options'] or '-'}):", "",
           "| decoder | W | options | GenEval overall | vs that row, paired 95 % | same tokens |",
           "|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        if i == ref:
            continue
        delta, half = paired_difference(r["per_image"], base["per_image"])
        same = float((r["tokens"] == base["tokens"]).all(1).float().mean())
        out.append(f"| {r['decoder']} | {r['window']} | {r['options'] or '-'} | {r['geneval']:.3f} | "
                   f"{delta:+.3f} +- {half:.3f} | {same:.0%} |")
    return "\n".join(out)


def table(rows: list[dict], title: str) -> str:
    out = [f"### {title}", "",
           "| decoder | W | options | NFE/sample | NFE/batch | step compression | AR s | decoder s | speed-up | "
           "ms/fwd | accepted/fwd | fwd accepting 1 | GenEval overall | vs AR | vs AR, paired 95 % | vs AR per seed | "
           "FID |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hist = r["hist"]
        fwd = max(1, sum(hist))
        mean_acc = sum(k * c for k, c in enumerate(hist)) / fwd
        per_seed = " / ".join(f"{d:+.3f}" for d in r["delta_seeds"])
        out.append(f"| {r['decoder']} | {r['window']} | {r['options'] or '-'} | {r['nfe_sample']:.1f} | "
                   f"{r['nfe_batch']:.1f} | "
                   f"{r['n'] / r['nfe_sample']:.2f}x | {r['t_ar']:.2f} | {r['t_dec']:.2f} | "
                   f"{r['t_ar'] / r['t_dec']:.2f}x | {r['ms_fwd']:.1f} | {mean_acc:.2f} | {hist[1] / fwd:.0%} | "
                   f"{r['geneval']:.3f} | {r['geneval_delta']:+.3f} | "
                   f"{r['paired_delta']:+.3f} +- {r['paired_ci95']:.3f} | "
                   f"{per_seed} | "
                   + (f"{r['fid']:.1f} |" if "fid" in r else "- |"))
    out += ["", "Accepted tokens per forward pass (share of (sample, forward) pairs accepting k = 1, 2, ...):", ""]
    for r in rows[1:]:
        fwd = max(1, sum(r["hist"]))
        shares = " ".join(f"{k}:{c / fwd:.0%}" for k, c in enumerate(r["hist"]) if c)
        out.append(f"* {r['decoder']} W={r['window']} {r['options']}: {shares}")
    return "\n".join(out)


def plot(results: dict[str, list[dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (title, rows) in zip(axes[0], results.items()):
        for r in rows:
            ax.scatter(r["t_ar"] / r["t_dec"], r["geneval"], s=20 + 8 * r["window"])
            ax.annotate(f"{r['decoder']} {r['window']} {r['options']}", (r["t_ar"] / r["t_dec"], r["geneval"]),
                        fontsize=7)
        ax.set_xlabel("wall-clock speed-up vs AR")
        ax.set_ylabel("GenEval-lite overall")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--num-samples", type=int, default=2)
    p.add_argument("--batch", "--batch-size", type=int, default=16,
                   help="prompts per generate call (x --num-samples images per call)")
    p.add_argument("--reps", type=int, default=1, help="timing repetitions (GenEval uses the first)")
    p.add_argument("--no-ar-timing", action="store_true",
                   help="run AR once (first row) instead of beside every configuration: quality sweeps, coarse speed")
    p.add_argument("--prompt-seed", type=int, default=12345, help="held out: training used seeds 0 and 1")
    p.add_argument("--seeds", "--seed", nargs="+", type=int, default=[0],
                   help="sampling seeds; each samples every prompt (GenEval reported per seed)")
    p.add_argument("--decoders", nargs="+", default=list(DECODERS), choices=DECODERS)
    p.add_argument("--windows", nargs="+", type=int, default=[4, 8, 16])
    p.add_argument("--pjd-lags", nargs="+", type=int, default=[2], help="pjd: lags to run (one row each)")
    p.add_argument("--pjd-rows", type=int, default=None, help="pjd: rows iterated per pass (default all)")
    p.add_argument("--pjd-init", default="vertical", choices=("vertical", "random"))
    p.add_argument("--pjd-row-mask", nargs="+", type=int, default=[1], choices=(0, 1),
                   help="pjd: 1 = row-causal mask (default), 0 = rows also see the drafts the other rows feed")
    p.add_argument("--pjd-follow", nargs="+", type=int, default=[1], choices=(0, 1),
                   help="pjd: 1 = rows stay lag columns behind the row above (default), 0 = free-running rows")
    p.add_argument("--pjd-grid", nargs=2, type=int, default=None, help="pjd: grid H W (default tokenizer.grid)")
    p.add_argument("--mcsjd-options", nargs="+", default=[""],
                   help='mcsjd: one row per entry, "" = defaults, e.g. "" "proactive=4" "coupling=gumbel,proactive=8"')
    p.add_argument("--gsd-options", nargs="+", default=[""],
                   help='gsd: one row per entry, "" = defaults, e.g. "coupled=1,group_rank=15,p_thr=0.3"')
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--pair-row", type=int, default=None,
                   help="also pair every row image by image with this row of the table (0 = AR)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-random", action="store_true", help="skip the random-init (artefact) table")
    p.add_argument("--plot", default=None, help="save a speed-vs-quality PNG here")
    p.add_argument("--fid-reference", type=int, default=0,
                   help="also report FID against this many real renders (seed prompt-seed + 1; needs vistok[eval])")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = ShapesDataset(args.num_prompts, seed=args.prompt_seed, max_objects=1)
    captions = [ds.scene(i).caption for i in range(len(ds))]
    trained = Path(args.model, "pipeline.json").is_file()
    if trained:
        pipe = Pipeline.from_folder(args.model)
        print(f"model: {args.model}")
    else:
        pipe = random_pipeline()
        print(f"NOTE: {args.model} is not a pipeline folder; using a RANDOM tiny model instead, so the first "
              "table is an artefact too")
    sampling = {**pipe.defaults, **{k: v for k, v in dict(cfg_scale=args.cfg_scale, top_k=args.top_k,
                                                         temperature=args.temperature).items() if v is not None}}
    sampling = {k: v for k, v in sampling.items() if k in ("cfg_scale", "top_k", "top_p", "temperature")}
    print(f"{len(captions)} prompts x {args.num_samples} samples x {len(args.seeds)} seeds, batch {args.batch} "
          f"prompts, N = {pipe.generator.seq_len} tokens, sampling {sampling}, {torch.get_num_threads()} threads\n")
    pjd = [{"lag": lag, **({"rows": args.pjd_rows} if args.pjd_rows else {}),
            **({"init": args.pjd_init} if args.pjd_init != "vertical" else {}), **({} if follow else {"follow": False}),
            **({} if mask else {"row_mask": False}), **({"grid": tuple(args.pjd_grid)} if args.pjd_grid else {})}
           for mask in args.pjd_row_mask for follow in args.pjd_follow for lag in args.pjd_lags]
    kw = dict(num_samples=args.num_samples, batch=args.batch, seeds=args.seeds, sampling=sampling,
              decoders=args.decoders, windows=args.windows, reps=args.reps, pjd=pjd,
              mcsjd=option_sets(args.mcsjd_options), gsd=option_sets(args.gsd_options), time_ar=not args.no_ar_timing)
    if args.fid_reference:
        from vistok.evaluation import InceptionFeatures

        feats = InceptionFeatures()
        ref = ShapesDataset(args.fid_reference, seed=args.prompt_seed + 1, max_objects=1)
        real = torch.stack([ref[i]["pixels"] for i in range(len(ref))])
        with torch.no_grad():
            kw.update(features=feats, real_features=torch.cat([feats(b) for b in real.split(32)]))
        print(f"FID: each row's images vs {len(ref)} real renders (small sets: compare rows, not papers)\n")
    size = pipe.tokenizer.decode(torch.zeros(1, pipe.generator.seq_len, dtype=torch.long)).shape[-1]
    disc = score_batch(disc_baseline(captions, image_size=size), captions)["overall"]
    print(f"trivial baseline (a disc of the prompted colour at the prompted place): GenEval-lite overall {disc:.3f}\n")
    results = {}
    title = "trained model" if trained else "random tiny model (ARTEFACT: no trained model found)"
    results[title] = benchmark(pipe, captions, **kw)
    print(table(results[title], title), "\n")
    if args.pair_row is not None:
        print(paired_rows(results[title], args.pair_row), "\n")
    if trained and not args.skip_random:
        title = "random-init generator (ARTEFACT: context-blind conditionals, not a result)"
        results[title] = benchmark(randomize(pipe), captions, **kw)
        print(table(results[title], title), "\n")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
