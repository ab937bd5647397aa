# ruff: noqa
"""Overfit check: 8 fixed shapes scenes, no nested dropout, no CFG dropout; PSNR of full / k=1 / swapped-token decodes.

    python benchmarks/flextok_debug/overfit.py LEVELS LR PRED PATCH WIDTH STEPS   (defaults: (8,8,8,5,5,5) 1e-3 v 8 128 600)
    CODEINIT=1 ... : Xavier-initialise the code head instead of the official zero init.

Diagnostic script of the 2026-12-06 FlexTok debugging (numbers quoted in docs/flextok.md; the shared setup is
scenes.py); run from the worktree root with PYTHONPATH=. so this checkout's vistok is imported."""
import sys, time, torch
from scenes import eight_scenes  # same folder: one thread, seed 0, the 8 scenes
from vistok.tokenizers.flextok import FlexTok
from vistok.evaluation import psnr
x = eight_scenes()
levels = eval(sys.argv[1]) if len(sys.argv) > 1 else (8,8,8,5,5,5)
lr = float(sys.argv[2]) if len(sys.argv) > 2 else 1e-3
pred = sys.argv[3] if len(sys.argv) > 3 else "v"
patch = int(sys.argv[4]) if len(sys.argv) > 4 else 8
width = int(sys.argv[5]) if len(sys.argv) > 5 else 128
tok = FlexTok(image_size=64, patch_size=patch, width=width, prediction=pred, depth=4, head_dim=32, num_registers=32, levels=levels,
              nested_dropout="none", null_prob=0.0, num_steps=10)
import os
if os.environ.get("CODEINIT"): torch.nn.init.xavier_uniform_(tok.encoder.to_codes.weight)
opt = torch.optim.AdamW(tok.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=1e-4)
mean = x.mean((0,2,3), keepdim=True).expand_as(x)
print("mean-colour psnr", psnr(mean, x).mean().item(), "per-image mean", psnr(x.mean((2,3),keepdim=True).expand_as(x), x).mean().item())
t0=time.time()
for step in range(1, int(sys.argv[6]) + 1 if len(sys.argv) > 6 else 601):
    tok.train(); out = tok(x); opt.zero_grad(); out.loss.backward()
    torch.nn.utils.clip_grad_norm_(tok.parameters(), 1.0); opt.step()
    if step % 100 == 0:
        tok.eval()
        ids = tok.encode(x)
        rec = tok.decode(ids, generator=torch.Generator().manual_seed(0))
        rec1 = tok.decode(ids[:, :1], generator=torch.Generator().manual_seed(0))
        # swap test: decode with another image's tokens
        recs = tok.decode(ids.roll(1, 0), generator=torch.Generator().manual_seed(0))
        print(step, f"{time.time()-t0:.0f}s loss {out.loss.item():.3f} psnr {psnr(rec,x).mean():.2f} k1 {psnr(rec1,x).mean():.2f} "
              f"swapped {psnr(recs,x).mean():.2f} uniq ids {ids.unique().numel()} decode-diff {(rec-rec.mean(0)).abs().mean():.3f}", flush=True)
