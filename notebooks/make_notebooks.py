"""Write the demo notebooks (outputs stripped) from the cell sources below: ``python notebooks/make_notebooks.py``.

Edit the cells here, not in the .ipynb files, so the notebooks stay thin and reviewable."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent


class MD(str):
    """A markdown cell (plain strings are code cells)."""


SETUP = """import matplotlib.pyplot as plt
import torch
from torchvision.utils import make_grid

torch.set_num_threads(2)


def show(images, nrow=8, title=None, scale=3):
    \"\"\"images (B, 3, H, W) in [0, 1] -> one inline grid.\"\"\"
    grid = make_grid(images.float().cpu(), nrow=nrow, padding=2, pad_value=1.0)
    plt.figure(figsize=(scale * min(nrow, len(images)) / 2, scale * ((len(images) + nrow - 1) // nrow) / 2))
    plt.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    plt.axis("off")
    if title:
        plt.title(title)
    plt.show()"""

NOTEBOOKS = {
    "01_tokenizer_tour": [
        MD("# Tokenizer tour\n\nEncode shapes scenes into 32 tokens with the shipped TiTok and decode them back; then "
        "decode only a *prefix* of the tokens with an ordered (One-D-Piece) tokenizer and watch quality grow with "
        "k.  Runs in well under 2 minutes on a CPU."),
        SETUP,
        """from vistok.data import ShapesDataset
from vistok.evaluation import psnr, ssim
from vistok.sample import Pipeline

pipe = Pipeline.from_folder("default")  # the shipped tiny TiTok + AR generator (vistok/assets/default)
tok = pipe.tokenizer.eval()
ds = ShapesDataset(16, seed=12345, max_objects=3)  # held-out scenes (training used seeds 0 and 1)
x = torch.stack([ds[i]["pixels"] for i in range(len(ds))])
tokens = tok.encode(x)  # (16, 32) token ids
recon = tok.decode(tokens)
print("tokens", tuple(tokens.shape), "ids e.g.", tokens[0, :8].tolist())
print(f"PSNR {psnr(recon, x).mean():.2f} dB, SSIM {ssim(recon, x):.3f}")
show(torch.cat([x[:8], recon[:8]]), nrow=8, title="top: renders, bottom: TiTok reconstructions (32 tokens)")""",
        MD("## One-D-Piece: any prefix decodes\n\nA tokenizer trained with tail-token drop orders its tokens coarse to "
        "fine, so the first k tokens already decode to an image.  The tiny One-D-Piece in `tests/assets` "
        "shows it; `vistok.eval_cli.evaluate_tokenizer` measures the curve (the same numbers as `vistok eval "
        "tokenizer ... --plot`)."),
        """from pathlib import Path

import vistok
from vistok.eval_cli import evaluate_tokenizer, prefix_lengths
from vistok.hub import from_pretrained

onedpiece = from_pretrained(Path(vistok.__file__).parents[1] / "tests" / "assets" / "onedpiece_tiny").eval()
ks = prefix_lengths(onedpiece.num_tokens)
curve = evaluate_tokenizer(onedpiece, x, prefixes=ks, fid=False, progress=False)
fig, ax = plt.subplots(1, 2, figsize=(8, 3))
for a, key in zip(ax, ("psnr", "ssim")):
    a.plot(ks, [row[key] for row in curve["prefix"]], "o-")
    a.set_xscale("log", base=2)
    a.set_xlabel("tokens decoded (k)")
    a.set_ylabel(key.upper())
plt.tight_layout()
plt.show()
ids = onedpiece.encode(x[:4])
show(torch.cat([onedpiece.decode(ids[:, :k]) for k in ks]), nrow=4,
     title="rows: k = " + ", ".join(map(str, ks)))""",
        MD("## FlexTok: coarse to fine with a flow decoder\n\nFlexTok encodes an image into up to N ordered register "
        "tokens (FSQ ids) and decodes any prefix with a rectified-flow decoder.  No FlexTok has been trained on the "
        "shapes data yet, so this cell shows the call on a random tiny model (`flextok_tiny`): the API and shapes, "
        "not quality.  `benchmarks/flextok_prefix.py` plots quality vs k for a trained checkpoint."),
        """flex = vistok.create_tokenizer("flextok_tiny").eval()  # 64x64 pixels -> 32 FSQ ids (random weights)
ids = flex.encode(x[:2])
rng = torch.Generator().manual_seed(0)
for k in (1, 4, 32):
    out = flex.decode(ids[:, :k], num_steps=4, generator=rng)
    print(f"k = {k:2d}: ids {tuple(ids[:, :k].shape)} -> pixels {tuple(out.shape)}")""",
    ],
    "02_text_to_image": [
        MD("# Text to image\n\nPrompts in, images out, with the two shipped pipelines: the default (tiny TiTok + "
        "LlamaGen-style AR, 32 passes) and xAR (next-cell flow matching on the same tokenizer's code vectors).  "
        "Then classifier-free guidance and temperature sweeps."),
        SETUP,
        """import time

from vistok.sample import Pipeline

prompts = ["a red circle on the left", "a large blue square at the top right", "a small green triangle at the bottom",
           "a purple star in the center"]
ar = Pipeline.from_folder("default")
t0 = time.time()
images, out = ar(prompts, num_samples=3, seed=0)
print(f"AR: {len(images)} images, {out.nfe} generator passes, {time.time() - t0:.1f} s; defaults {ar.defaults}")
show(images, nrow=3, title="AR (one row per prompt)")""",
        """xar = Pipeline.from_folder("xar")
t0 = time.time()
images, out = xar(prompts, num_samples=2, seed=0)
print(f"xAR: {len(images)} images, {out.nfe} generator passes, {time.time() - t0:.1f} s; defaults {xar.defaults}")
show(images, nrow=2, title="xAR (one row per prompt)")""",
        MD("## Classifier-free guidance and temperature (AR)\n\nEach row is one setting, same prompts, same seed."),
        """rows, labels = [], []
for cfg in (1.0, 2.0, 4.0):
    imgs, _ = ar(prompts, num_samples=1, seed=0, cfg_scale=cfg)
    rows.append(imgs)
    labels.append(f"cfg {cfg}")
show(torch.cat(rows), nrow=len(prompts), title="rows: " + ", ".join(labels))
rows, labels = [], []
for temperature in (0.5, 1.0, 1.5):
    imgs, _ = ar(prompts, num_samples=1, seed=0, temperature=temperature)
    rows.append(imgs)
    labels.append(f"T {temperature}")
show(torch.cat(rows), nrow=len(prompts), title="rows: " + ", ".join(labels))""",
    ],
    "03_speculative_decoding": [
        MD("# Speculative decoding\n\nThe same AR generator and prompts, decoded by plain AR and by speculative "
        "Jacobi decoders: SJD and MC-SJD are lossless (same distribution as AR), GSD and LANTERN relax the "
        "acceptance test (lossy, more tokens per pass).  We compare images, generator passes (NFE), wall-clock, "
        "accepted-length histograms and GenEval-lite."),
        SETUP,
        """import time

from vistok.data import ShapesDataset
from vistok.data.geneval import score_batch
from vistok.decoding import generate
from vistok.sample import Pipeline

pipe = Pipeline.from_folder("default")
ds = ShapesDataset(8, seed=12345, max_objects=1)
prompts = [ds.scene(i).caption for i in range(len(ds))]
cond = pipe.condition(prompts)
results = {}
for name, opts in {"ar": {}, "sjd": {"window": 16}, "mcsjd": {"window": 16}, "gsd": {"window": 16},
                   "lantern": {"window": 16}}.items():
    t0 = time.time()
    out = generate(pipe.generator, cond, decoder=name, num_samples=1, seed=0, **pipe.defaults, **opts)
    secs = time.time() - t0
    images = pipe.tokenizer.decode(out.tokens)
    results[name] = dict(images=images, nfe=out.nfe, secs=secs, extras=out.extras,
                         geneval=score_batch(images, prompts)["overall"])
    print(f"{name:8s} NFE {out.nfe:3d}  {secs:5.2f} s  GenEval-lite overall {results[name]['geneval']:.3f}")""",
        """show(torch.cat([r["images"] for r in results.values()]), nrow=len(prompts),
     title="rows: " + ", ".join(results))""",
        """fig, ax = plt.subplots(1, 2, figsize=(10, 3))
for name, r in results.items():
    hist = r["extras"].get("accepted_hist")
    if hist:
        total = sum(hist)
        ax[0].plot(range(len(hist)), [c / total for c in hist], "o-", label=name)
ax[0].set_xlabel("tokens accepted per forward pass")
ax[0].set_ylabel("fraction of passes")
ax[0].legend()
for name, r in results.items():
    ax[1].scatter(32 / r["nfe"], r["geneval"], s=60)
    ax[1].annotate(name, (32 / r["nfe"], r["geneval"]))
ax[1].set_xlabel("step compression (32 tokens / NFE)")
ax[1].set_ylabel("GenEval-lite overall (8 prompts)")
plt.tight_layout()
plt.show()""",
        MD("Eight prompts make a noisy quality axis; `benchmarks/decoding.py` measures the same on hundreds."),
    ],
    "04_generators_compared": [
        MD("# Generators compared\n\nThe two shipped generators (AR, xAR) and tiny *random* NAR and MAR built from "
        "presets (their trained weights are not shipped: they show NFE and time only), on the same prompts.  "
        "GenEval-lite per attribute, with the disc baseline beside it: one medium disc of the prompted colour at "
        "the prompted position, the floor any generator must clear."),
        SETUP,
        """from vistok.data import ShapesDataset
from vistok.eval_cli import evaluate_generator
from vistok.registry import create_generator
from vistok.sample import Pipeline

ds = ShapesDataset(16, seed=12345, max_objects=1)
prompts = [ds.scene(i).caption for i in range(len(ds))]
ar, xar = Pipeline.from_folder("default"), Pipeline.from_folder("xar")
torch.manual_seed(0)
nar = create_generator("nar_tiny_c2i", seq_len=32, grid=(8, 4), num_classes=0, text_dim=384, max_text_len=32,
                       width=64, depth=2, num_heads=2).eval()
mar = create_generator("mar_tiny_t2i", token_dim=12, max_text_len=32, encoder_depth=1, decoder_depth=1).eval()
pipes = {"AR (shipped)": ar, "xAR (shipped)": xar,
         "NAR (tiny, random)": Pipeline(ar.tokenizer, nar, ar.text_encoder, {"cfg_scale": 2.0}),
         "MAR (tiny, random)": Pipeline(xar.tokenizer, mar, ar.text_encoder, {"cfg_scale": 2.0, "num_iter": 8})}
rows = {name: evaluate_generator(p, prompts, batch=16, progress=False)[0] for name, p in pipes.items()}""",
        """from vistok.data.geneval import ATTRIBUTES

header = f"{'generator':22s}" + "".join(f"{k:>9s}" for k in ATTRIBUTES) + f"{'NFE':>6s}{'ms/img':>8s}"
print(header)
for name, r in rows.items():
    print(f"{name:22s}" + "".join(f"{r['geneval'][k]:9.3f}" for k in ATTRIBUTES)
          + f"{r['nfe_per_image']:6.0f}{1000 * r['seconds_per_image']:8.1f}")
floor = next(iter(rows.values()))["disc_baseline"]
print(f"{'disc baseline (floor)':22s}" + "".join(f"{floor[k]:9.3f}" for k in ATTRIBUTES))""",
        """fig, ax = plt.subplots(figsize=(6, 3))
for name, r in rows.items():
    ax.scatter(r["nfe_per_image"], 1000 * r["seconds_per_image"], s=60)
    ax.annotate(name, (r["nfe_per_image"], 1000 * r["seconds_per_image"]))
ax.set_xlabel("generator passes per image (NFE)")
ax.set_ylabel("ms per image (batch 16)")
plt.tight_layout()
plt.show()""",
    ],
    "05_train_your_own": [
        MD("# Train your own\n\nA very short `vistok fit` from Python: a small AR text-to-image generator on the "
        "shipped tokenizer's ids, through the same LightningCLI as the command line (`vistok.cli.main(args=[...])`"
        ").  30 steps only, so expect blobs of roughly the right colour, not shapes; the shipped default trained "
        "for 72 minutes (`configs/generators/ar_tiny_t2i.yaml`)."),
        SETUP,
        """import tempfile
from pathlib import Path

import vistok
from vistok.cli import main as vistok_cli

root = Path(vistok.__file__).parents[1]
run = Path(tempfile.mkdtemp(prefix="vistok_nb_"))
steps = 30
vistok_cli(args=[
    "fit", "--config", str(root / "configs/generators/ar_tiny_t2i.yaml"),
    "--model.init_args.tokenizer_path", str(root / "vistok/assets/default/tokenizer"),
    "--model.init_args.generator.init_args.width", "128", "--model.init_args.generator.init_args.depth", "2",
    "--model.init_args.warmup_steps", "5", "--model.init_args.total_steps", str(steps),
    "--model.init_args.export_dir", str(run / "export"),
    "--trainer.max_steps", str(steps), "--trainer.log_every_n_steps", "2", "--trainer.val_check_interval", "30",
    "--trainer.logger.init_args.save_dir", str(run), "--trainer.default_root_dir", str(run),
    "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
    "--data.init_args.train_size", "2048", "--data.init_args.val_size", "32", "--data.init_args.batch_size", "32",
])""",
        """import csv

metrics = next(run.glob("lightning_logs/version_*/metrics.csv"))
rows = [r for r in csv.DictReader(metrics.open()) if r.get("train/loss")]
plt.figure(figsize=(5, 3))
plt.plot([int(r["step"]) for r in rows], [float(r["train/loss"]) for r in rows])
plt.xlabel("step")
plt.ylabel("train/loss (cross-entropy)")
plt.show()""",
        """from vistok.sample import Pipeline

pipe = Pipeline.from_folder("default").swap_generator(run / "export")  # same tokenizer, our generator
prompts = ["a red circle on the left", "a blue square at the top right"]
images, out = pipe(prompts, num_samples=4, seed=0)
show(images, nrow=4, title=f"after {steps} steps ({out.nfe} passes per image)")""",
    ],
    "06_video": [
        MD("# Video: moving shapes, the LARP tokenizer and a video generator\n\nvistok renders its own captioned "
        "video data (objects with a colour, shape, size and motion) and tokenizes clips `(B, 3, T, H, W)` with LARP "
        "(holistic queries, stochastic VQ, co-trained AR prior).  The tiny LARP and the class-conditional AR on its "
        "ids in `tests/assets` were trained on this CPU in 27 + 8 minutes (docs/larp.md, docs/video.md): 16 frames "
        "of 32x32 -> 64 ids -> 16 frames."),
        SETUP,
        """from vistok.data import MovingShapesDataset

ds = MovingShapesDataset(4, seed=4242)  # 16 frames of 32x32, deterministic from the seed; not training clips
clips = torch.stack([ds[i]["pixels"] for i in range(4)])
for i in range(4):
    print(ds[i]["caption"])
show(clips[0].permute(1, 0, 2, 3), nrow=8, title=ds[0]["caption"])  # the 16 frames of clip 0""",
        """from pathlib import Path

import vistok
from vistok import from_pretrained
from vistok.evaluation import psnr

assets = Path(vistok.__file__).parents[1] / "tests" / "assets"
larp = from_pretrained(assets / "larp_tiny_refine", expect="tokenizer").float().eval()  # 24.7 dB on 256 clips
with torch.no_grad():
    ids = larp.encode(clips)  # (4, 64) ids (argmax in eval)
    recon = larp.decode(ids).clamp(0, 1)  # (4, 3, 16, 32, 32)
print("tokens", tuple(ids.shape), "-> clips", tuple(recon.shape), "PSNR per clip", psnr(recon, clips).tolist())
show(torch.cat([clips[0], recon[0]], 1).permute(1, 0, 2, 3), nrow=16, title="clip 0: frames, then decoded")""",
        """from vistok.data.geneval_video import reverse_clips, score_clips
from vistok.sample import Pipeline, class_of

ar = from_pretrained(assets / "ar_larp_refine", expect="generator").eval()  # 96 classes: colour x shape x motion
pipe = Pipeline(larp, ar, None, classes="moving_shapes")
prompts = ["red circle moving right", "blue square moving up", "green triangle moving left", "yellow star moving down"]
videos, out = pipe(prompts, num_samples=2, seed=0, cfg_scale=3.0)  # (8, 3, 16, 32, 32)
labels = [class_of(p, "moving_shapes") for p in prompts for _ in range(2)]  # class ids, as the scorer takes them
print(f"{out.nfe} passes for 64 ids per batch;", "GenEval-lite (video):", score_clips(videos, labels))
print("the same clips played backwards (control):", score_clips(reverse_clips(videos), labels))
for k in (0, 2):
    show(videos[k].permute(1, 0, 2, 3), nrow=16, title=prompts[k // 2])""",
        """import time

for decoder, options in (("ar", {}), ("mcsjd", {"window": 64})):  # lossless: the same law as AR, fewer passes
    t0 = time.perf_counter()
    _, out = pipe(prompts, num_samples=2, seed=0, cfg_scale=3.0, batch_size=1, decoder=decoder, **options)
    print(f"{decoder:6s} {out.nfe / len(labels):5.1f} passes per clip, {time.perf_counter() - t0:.2f} s")""",
        """import tempfile

from vistok.data import read_video, write_video

path = write_video(videos[0], Path(tempfile.mkdtemp()) / "clip.gif")  # mp4 works the same way (PyAV)
back = read_video(path)
error = float((back - videos[0]).abs().mean())  # a gif keeps 256 colours per frame
print(path.name, tuple(back.shape), f"mean abs error after the gif round trip {error:.4f}")""",
    ],
}


def build(out: Path = HERE) -> list[Path]:
    """Write every notebook into ``out``; returns the paths."""
    paths = []
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=[new_markdown_cell(c) if isinstance(c, MD) else new_code_cell(c) for c in cells],
                          metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                   "language": "python"},
                                    "language_info": {"name": "python"}})
        path = Path(out) / f"{name}.ipynb"
        nbformat.write(nb, path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in build():
        print("wrote", p)
