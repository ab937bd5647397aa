# ruff: noqa
"""Decoder-only check: the encoder is replaced by fixed, distinct random codes per image (8 scenes); does the
decoder learn to read them?  Prints one-step x0 PSNR at t in {0.99, 0.8, 0.5} with own / swapped registers.

    PRED=x LT=x SHIFT=1 STEPS=400 python benchmarks/flextok_debug/decoder_only.py

Diagnostic script of the 2026-12-06 FlexTok debugging (numbers quoted in docs/flextok.md; the shared setup is
scenes.py); run from the worktree root with PYTHONPATH=. so this checkout's vistok is imported."""
import os, time, torch
from scenes import eight_scenes  # same folder: one thread, seed 0, the 8 scenes
from vistok.tokenizers.flextok import FlexTok
from vistok.evaluation import psnr
x = eight_scenes()
pred = os.environ.get("PRED", "x")
tok = FlexTok(image_size=64, patch_size=8, width=128, depth=4, head_dim=32, num_registers=32, levels=(8,5,5,5),
              nested_dropout="none", null_prob=0.0, prediction=pred, num_steps=10, loss_target=os.environ.get("LT","v"), time_shift=float(os.environ.get("SHIFT", 1)))
zfix = torch.randn(8, 32, 4) * 3
tok.encoder.forward = lambda lat: zfix[: len(lat)]
opt = torch.optim.AdamW(tok.decoder.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=1e-4)
t0 = time.time()
for step in range(1, int(os.environ.get("STEPS", 300)) + 1):
    tok.train(); out = tok(x); opt.zero_grad(); out.loss.backward()
    torch.nn.utils.clip_grad_norm_(tok.parameters(), 1.0); opt.step()
    if step % 50 == 0:
        tok.eval(); ids = tok.encode(x); g = torch.Generator().manual_seed(0)
        rec = tok.decode(ids, generator=g); recs = tok.decode(ids.roll(1, 0), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            codes = tok.quantizer.ids_to_codes(ids); keep = torch.full((8,), 32)
            reg = tok.decoder.registers(codes, keep); regs = reg.roll(1, 0)
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)); x0 = x * 2 - 1
            probe = []
            for tv in (0.99, 0.8, 0.5):
                t = torch.full((8,), tv); xt = tv * noise + (1 - tv) * x0
                a = xt - tv * tok.velocity(xt, t, reg)[0]; b = xt - tv * tok.velocity(xt, t, regs)[0]
                probe.append(f"t{tv}: {psnr((a+1)/2, x).mean():.1f}/{psnr((b+1)/2, x).mean():.1f}")
        print(" ".join(probe))
        print(step, f"{time.time()-t0:.0f}s loss {out.loss.item():.3f} psnr {psnr(rec,x).mean():.2f} swapped {psnr(recs,x).mean():.2f}", flush=True)
