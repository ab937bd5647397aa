"""Video generation benchmarks on a video tokenizer (LARP) + a class-conditional causal generator over its ids.

    python benchmarks/video.py geneval --tokenizer runs/larp_tiny/export --generator runs/ar_larp_tiny_c2i/export \
        [--samples-per-class 2] [--frame-prediction 4]
    python benchmarks/video.py decoding --generator runs/ar_larp_tiny_c2i/export [--windows 4 8 16 32 64]
    python benchmarks/video.py analyser [--num-clips 192]
    python benchmarks/video.py clips --prompts-file prompts.txt --dir OUT_DIR [--num-samples 1]

``analyser``: the video GenEval-lite analyser on ground-truth clips (held-out seed), one- and two-object, beside the
same clips played backwards and the static disc: the analyser's own validation.

``geneval``: video GenEval-lite (:mod:`vistok.data.geneval_video`: per-frame colour and shape of the object, motion
direction from its centroid track) of samples for every class (colour x shape x motion), drawn through
:class:`vistok.sample.Pipeline` with the class ids as prompts (what ``vistok-sample`` does; each clip has its own
seed, :func:`vistok.sample.image_seed`), printed beside reference
rows on held-out clips of the same classes: the ground truth (the analyser's ceiling), the ground truth through the
tokenizer (what the generator's tokens can at best show), the ground truth played backwards and a static disc of the
prompted colour (both must score 0 on motion).  ``--frame-prediction M`` adds frame prediction: the tokens of the
first M frames of each held-out clip (rest = frame M repeated) are forced as the prefix
(:func:`vistok.sample.frame_prefix`) and the generator continues with the clip's class; reported with the PSNR of
the first M generated frames against the given ones and of the later frames against the clip's own, beside
unconditioned samples of the same classes and (later frames) frame M frozen.

``clips``: video GenEval-lite of the ``.mp4`` files a ``vistok-sample --prompts-file P --out-dir DIR`` run wrote
(read back from the files, H.264 included), beside a static disc of each prompted colour.  Prompts are class names or
ids of the moving-shapes classes, or moving-shapes captions.

``decoding``: step compression (``N / NFE per sample``) and wall-clock speed-up of the lossless speculative decoders
(sjd, mcsjd) against AR on the class-conditional generator, over a sweep of windows (up to ``N``).  AR and each
decoder run alternately on the same labels and seeds in this process (``--threads``, default 1); only ``generate``
is timed.  Then the same table for the generator with random weights (an artefact: untrained conditionals barely
depend on the context, so most drafts are accepted).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vistok.data.geneval_video import (
    VIDEO_ATTRIBUTES,
    per_frame_scores,
    reverse_clips,
    score_clips,
    static_disc_baseline,
)
from vistok.data.videos import NUM_VIDEO_CLASSES, MovingShapesDataset
from vistok.decoding import generate
from vistok.eval_cli import parse_set_options
from vistok.evaluation import psnr_per_frame
from vistok.hub import from_pretrained
from vistok.interfaces import Conditioning
from vistok.sample import Pipeline


# ----------------------------------------------------------------------------------------------------------------
# geneval
# ----------------------------------------------------------------------------------------------------------------
def held_out_clips(labels: list[int], num_frames: int, image_size: int, seed: int) -> torch.Tensor:
    """One held-out single-object clip per label (the first clip of that class in the seed's stream)."""
    ds = MovingShapesDataset(100_000, image_size=image_size, num_frames=num_frames, seed=seed, max_objects=1)
    by_class: dict[int, list[int]] = {}
    need = {lab: labels.count(lab) for lab in set(labels)}
    i = 0
    while any(len(by_class.get(lab, [])) < n for lab, n in need.items()):
        lab = ds.clip(i).class_label
        if len(by_class.setdefault(lab, [])) < need.get(lab, 0):
            by_class[lab].append(i)
        i += 1
    taken = {lab: iter(ix) for lab, ix in by_class.items()}
    return torch.stack([ds[next(taken[lab])]["pixels"] for lab in labels])


def geneval(args) -> dict:
    tok = from_pretrained(args.tokenizer, expect="tokenizer").eval()
    gen = from_pretrained(args.generator, expect="generator").eval()
    pipe = Pipeline(tok, gen, None, classes="moving_shapes").check_compatible()  # every class id is a prompt
    frames, size = tok.num_frames, tok.image_size
    labels = [c for c in range(NUM_VIDEO_CLASSES) for _ in range(args.samples_per_class)]
    opts = dict(decoder=args.decoder, cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k)

    def sample(**prefix) -> torch.Tensor:  # one prompt per clip: clip i of a class gets its own seed and prefix
        return pipe(labels, num_samples=1, seed=args.seed, batch_size=args.batch, **opts, **prefix)[0].clamp(0, 1)

    t0 = time.perf_counter()
    clips = sample()
    secs = time.perf_counter() - t0
    real = held_out_clips(labels, frames, size, args.data_seed)
    with torch.no_grad():
        recon = torch.cat([tok.decode(tok.encode(x)).float().clamp(0, 1) for x in real.split(args.batch)])
    rows = {"generator": score_clips(clips, labels), "ground truth": score_clips(real, labels),
            "ground truth through the tokenizer": score_clips(recon, labels),
            "ground truth reversed": score_clips(reverse_clips(real), labels),
            "static disc": score_clips(static_disc_baseline(labels, frames, size), labels)}
    result = {"num_clips": len(labels), "rows": rows, "generator_per_frame": per_frame_scores(clips, labels),
              "seconds_per_clip": secs / len(labels), "sampling": opts}
    if args.frame_prediction:
        m = args.frame_prediction
        fp = sample(first_frames=real, num_cond_frames=m, num_prefix_tokens=args.prefix_tokens)
        rows["frame prediction"] = score_clips(fp, labels)
        result["frame_prediction"] = {
            "num_cond_frames": m, "prefix_tokens": pipe.frame_prefix(real[:1], 1, m, args.prefix_tokens).shape[1],
            "psnr_given_frames": float(psnr_per_frame(fp[:, :, :m], real[:, :, :m]).mean()),
            "psnr_given_frames_unconditioned": float(psnr_per_frame(clips[:, :, :m], real[:, :, :m]).mean()),
            "psnr_given_frames_tokenizer": float(psnr_per_frame(recon[:, :, :m], real[:, :, :m]).mean()),
            "psnr_later_frames": float(psnr_per_frame(fp[:, :, m:], real[:, :, m:]).mean()),
            "psnr_later_frames_unconditioned": float(psnr_per_frame(clips[:, :, m:], real[:, :, m:]).mean()),
            "psnr_later_frames_frozen": float(psnr_per_frame(real[:, :, m - 1 : m].expand_as(real[:, :, m:]),
                                                             real[:, :, m:]).mean())}
    print(f"{len(labels)} clips ({args.samples_per_class} per class), {result['seconds_per_clip']:.3f} s per clip, "
          f"sampling {opts}")
    print("| row | " + " | ".join(VIDEO_ATTRIBUTES) + " |")
    print("|---" * (len(VIDEO_ATTRIBUTES) + 1) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in VIDEO_ATTRIBUTES) + " |")
    pf = result["generator_per_frame"]
    print("generator per frame, colour: " + " ".join(f"{v:.2f}" for v in pf["color"]))
    print("generator per frame, shape:  " + " ".join(f"{v:.2f}" for v in pf["shape"]))
    if args.frame_prediction:
        f = result["frame_prediction"]
        print(f"frame prediction ({f['num_cond_frames']} frames given, {f['prefix_tokens']} tokens forced): PSNR of "
              f"the given frames {f['psnr_given_frames']:.2f} dB (unconditioned samples "
              f"{f['psnr_given_frames_unconditioned']:.2f}, tokenizer reconstruction "
              f"{f['psnr_given_frames_tokenizer']:.2f}); of the later frames {f['psnr_later_frames']:.2f} dB "
              f"(unconditioned {f['psnr_later_frames_unconditioned']:.2f}, frame {f['num_cond_frames']} frozen "
              f"{f['psnr_later_frames_frozen']:.2f})")
    return result


# ----------------------------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def decoding_rows(gen, labels: list[int], *, batch: int, seed: int, sampling: dict, windows: list[int],
                  decoders: list[str], reps: int, options: dict | None = None) -> list[dict]:
    """One row per (decoder, window); AR re-runs beside every configuration for paired timing.  ``options`` go to
    every speculative decoder (e.g. mcsjd's ``coupling`` / ``proactive``)."""
    options = options or {}
    conds = [Conditioning(labels=torch.tensor(labels[i : i + batch])) for i in range(0, len(labels), batch)]
    configs = [(d, w) for d in decoders for w in windows]
    for d, w in [("ar", None), *configs]:  # warm-up
        generate(gen, conds[0], decoder=d, seed=seed, **sampling, **({} if w is None else {"window": w, **options}))
    rows = []
    for d, w in configs:
        t_ar = t_dec = 0.0
        nfe_sample, nfe_batch, hist = [], [], None
        for rep in range(reps):
            for i, cond in enumerate(conds):
                t0 = time.perf_counter()
                generate(gen, cond, decoder="ar", seed=seed + i, **sampling)
                t1 = time.perf_counter()
                out = generate(gen, cond, decoder=d, seed=seed + i, window=w, **sampling, **options)
                t_ar, t_dec = t_ar + t1 - t0, t_dec + time.perf_counter() - t1
                if rep == 0:
                    nfe_sample += out.extras["nfe_per_sample"]
                    nfe_batch.append(out.nfe)
                    h = out.extras["accepted_hist"]
                    hist = h if hist is None else [a + b for a, b in zip(hist, h)]
        n = gen.seq_len
        fwd = sum(hist)
        rows.append({"decoder": d, "window": w, "options": options, "nfe_per_sample": sum(nfe_sample) / len(nfe_sample),
                     "nfe_per_batch": sum(nfe_batch) / len(nfe_batch),
                     "step_compression": n / (sum(nfe_sample) / len(nfe_sample)),
                     "batch_step_compression": n / (sum(nfe_batch) / len(nfe_batch)),
                     "ar_s": t_ar, "decoder_s": t_dec, "speedup": t_ar / t_dec,
                     "accepted_per_fwd": sum(k * c for k, c in enumerate(hist)) / fwd,
                     "fwd_accepting_1": hist[1] / fwd})
    return rows


def decoding_table(rows: list[dict], title: str) -> str:
    out = [f"### {title}", "", "| decoder | W | NFE/sample | step compression | NFE/batch | batch compression | AR s | "
           "decoder s | speed-up | accepted/fwd | fwd accepting 1 |", "|---" * 11 + "|"]
    for r in rows:
        out.append(f"| {r['decoder']} | {r['window']} | {r['nfe_per_sample']:.1f} | {r['step_compression']:.2f}x | "
                   f"{r['nfe_per_batch']:.1f} | {r['batch_step_compression']:.2f}x | {r['ar_s']:.2f} | "
                   f"{r['decoder_s']:.2f} | {r['speedup']:.2f}x | {r['accepted_per_fwd']:.2f} | "
                   f"{r['fwd_accepting_1']:.0%} |")
    return "\n".join(out)


def decoding(args) -> dict:
    gen = from_pretrained(args.generator, expect="generator").eval()
    n = gen.seq_len
    windows = [w for w in args.windows if 2 <= w <= n]
    if not windows:
        raise ValueError(f"no window in {args.windows} fits the sequence length {n}")
    g = torch.Generator().manual_seed(args.label_seed)
    labels = torch.randint(0, gen.num_classes, (args.num_labels,), generator=g).tolist()
    sampling = dict(temperature=args.temperature, top_k=args.top_k, cfg_scale=args.cfg_scale)
    kw = dict(batch=args.batch, seed=args.seed, sampling=sampling, windows=windows, decoders=args.decoders,
              reps=args.reps, options=parse_set_options(args.set))
    result = {"seq_len": n, "num_labels": len(labels), "sampling": sampling,
              "trained": decoding_rows(gen, labels, **kw)}
    print(decoding_table(result["trained"], f"{args.generator}: {len(labels)} samples, N = {n}, {sampling}, "
                                            f"decoder options {kw['options']}"))
    if not args.skip_random:
        torch.manual_seed(args.seed)
        rand = type(gen)(**gen.config).eval()
        torch.nn.init.normal_(rand.output.weight, std=0.02)  # the zero-init head would be exactly uniform
        result["random_init"] = decoding_rows(rand, labels, **kw)
        print(decoding_table(result["random_init"], "random-init generator (artefact: says nothing about the "
                                                    "methods)"))
    return result


def analyser(args) -> dict:
    rows = {}
    print("| objects | clips | row | " + " | ".join(VIDEO_ATTRIBUTES) + " |")
    print("|---" * (len(VIDEO_ATTRIBUTES) + 3) + "|")
    for objects, n in ((1, args.num_clips), (2, args.num_clips // 2)):
        ds = MovingShapesDataset(n, image_size=args.image_size, num_frames=args.num_frames, seed=args.data_seed,
                                 min_objects=objects, max_objects=objects)
        clips = torch.stack([ds[i]["pixels"] for i in range(n)])
        captions = [ds[i]["caption"] for i in range(n)]
        for name, x in (("ground truth", clips), ("ground truth reversed", reverse_clips(clips)),
                        ("static disc", static_disc_baseline(captions, args.num_frames, args.image_size))):
            r = rows[f"{objects} object(s), {name}"] = score_clips(x, captions)
            print(f"| {objects} | {n} | {name} | " + " | ".join(f"{r[k]:.3f}" for k in VIDEO_ATTRIBUTES) + " |")
    return rows


def clips(args) -> dict:
    from vistok.data.videos import read_video
    from vistok.sample import class_of, image_name, read_prompts_file

    prompts, folder, scored, videos = read_prompts_file(args.prompts_file), Path(args.dir), [], []
    for i, prompt in enumerate(prompts):
        try:
            target = class_of(prompt, "moving_shapes")
        except ValueError:
            target = prompt  # a multi-object caption
        for j in range(args.num_samples):
            path = folder / image_name(i, j, ".mp4")
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: write the clips first with vistok-sample --prompts-file "
                                        f"{args.prompts_file} --num-samples {args.num_samples} --out-dir {folder}")
            videos.append(read_video(path))
            scored.append(target)
    x = torch.stack(videos)
    rows = {"clips": score_clips(x, scored),
            "static disc": score_clips(static_disc_baseline(scored, x.shape[2], x.shape[-1]), scored)}
    print(f"{len(scored)} clips of {folder} ({len(prompts)} prompts x {args.num_samples})")
    print("| row | " + " | ".join(VIDEO_ATTRIBUTES) + " |")
    print("|---" * (len(VIDEO_ATTRIBUTES) + 1) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in VIDEO_ATTRIBUTES) + " |")
    return {"num_clips": len(scored), "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("analyser", help="the analyser on ground-truth, reversed and static clips")
    a.add_argument("--num-clips", type=int, default=192, help="one-object clips (half as many two-object ones)")
    a.add_argument("--image-size", type=int, default=32)
    a.add_argument("--num-frames", type=int, default=16)
    a.add_argument("--data-seed", type=int, default=12345)
    a.add_argument("--out", default=None)
    a.add_argument("--threads", type=int, default=1)
    c = sub.add_parser("clips", help="GenEval-lite of the mp4 files of a vistok-sample --out-dir run")
    c.add_argument("--prompts-file", required=True, help="the prompts file given to vistok-sample")
    c.add_argument("--dir", required=True, help="the --out-dir of that run")
    c.add_argument("--num-samples", type=int, default=1, help="its --num-samples")
    c.add_argument("--out", default=None)
    c.add_argument("--threads", type=int, default=1)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--generator", required=True, help="class-conditional generator folder (vistok fit export)")
    common.add_argument("--batch", type=int, default=32)
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--threads", type=int, default=1)
    common.add_argument("--temperature", type=float, default=1.0)
    common.add_argument("--top-k", type=int, default=None)
    common.add_argument("--cfg-scale", type=float, default=1.0)
    common.add_argument("--out", default=None, help="also write the result as JSON here")
    g = sub.add_parser("geneval", parents=[common], help="video GenEval-lite vs reference rows")
    g.add_argument("--tokenizer", required=True, help="the video tokenizer folder the generator was trained on")
    g.add_argument("--samples-per-class", type=int, default=1)
    g.add_argument("--data-seed", type=int, default=12345, help="held-out clips (training used seeds 0 and 1)")
    g.add_argument("--decoder", default="ar")
    g.add_argument("--frame-prediction", type=int, default=0, metavar="M",
                   help="also sample with the first M frames of held-out clips given (0: skip)")
    g.add_argument("--prefix-tokens", type=int, default=None, help="tokens forced for frame prediction (default "
                                                                   "N * M / T)")
    d = sub.add_parser("decoding", parents=[common], help="sjd / mcsjd step compression and speed-up vs ar")
    d.add_argument("--windows", nargs="+", type=int, default=[4, 8, 16, 32, 64])
    d.add_argument("--decoders", nargs="+", default=["sjd", "mcsjd"], choices=["sjd", "mcsjd"])
    d.add_argument("--num-labels", type=int, default=32)
    d.add_argument("--label-seed", type=int, default=0)
    d.add_argument("--reps", type=int, default=1)
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help='decoder options of every sjd/mcsjd row, e.g. --set coupling=gumbel --set proactive=8')
    d.add_argument("--skip-random", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"geneval": geneval, "decoding": decoding, "analyser": analyser, "clips": clips}[args.what](args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
