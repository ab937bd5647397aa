# ruff: noqa
"""Short training on the shapes stream with a hand-written loop (val PSNR at k = 1, 4, 32 and swapped tokens).

    MINUTES=7 LEVELS='(8,5,5,5)' PRED=x LT=x SHIFT=4 ELR=1e-3 python benchmarks/flextok_debug/quick_train.py

Verbatim diagnostic script of the 2026-12-06 FlexTok debugging (numbers quoted in docs/flextok.md); run from the
worktree root with PYTHONPATH=. so this checkout's vistok is imported."""
import os, time, math, torch
torch.set_num_threads(int(os.environ.get("THREADS", 1)))
from torch.utils.data import DataLoader
from vistok.data.shapes import ShapesDataset
from vistok.tokenizers.flextok import FlexTok
from vistok.evaluation import psnr
E = os.environ.get
torch.manual_seed(int(E("SEED", 0)))
train = ShapesDataset(50000, seed=0, image_size=64, min_objects=1, max_objects=2)
val = ShapesDataset(32, seed=1, image_size=64, min_objects=1, max_objects=2)
xv = torch.stack([val[i]["pixels"] for i in range(32)])
tok = FlexTok(image_size=64, patch_size=8, width=int(E("WIDTH", 128)), depth=4, head_dim=32, num_registers=32,
              levels=eval(E("LEVELS", "(8,5,5,5)")), nested_dropout=E("NESTED", "pow2"), null_prob=0.1, num_steps=10,
              prediction=E("PRED", "x"), loss_target=E("LT", "x"), time_shift=float(E("SHIFT", 4)))
elr, lr = float(E("ELR", 1e-3)), float(E("LR", 1e-3))
opt = torch.optim.AdamW([dict(params=tok.encoder.parameters(), lr=elr), dict(params=tok.decoder.parameters(), lr=lr)],
                        betas=(0.9, 0.99), weight_decay=1e-4)
base = [g["lr"] for g in opt.param_groups]
nwarm = int(E("NWARM", 0))
loader = DataLoader(train, batch_size=32, shuffle=True, num_workers=0)
print("baseline mean-colour psnr (per-image flat mean)", psnr(xv.mean((2, 3), keepdim=True).expand_as(xv), xv).mean().item(), flush=True)
t0, step, limit = time.time(), 0, float(E("MINUTES", 6)) * 60
while time.time() - t0 < limit:
    for batch in loader:
        step += 1
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * min(1.0, step / 200)
        tok.train()
        tok.nested_dropout = "none" if step <= nwarm else E("NESTED", "pow2")
        out = tok(batch["pixels"]); opt.zero_grad(); out.loss.backward()
        torch.nn.utils.clip_grad_norm_(tok.parameters(), 1.0); opt.step()
        if step % int(E("EVERY", 150)) == 0 or time.time() - t0 > limit:
            tok.eval(); ids = tok.encode(xv)
            r = {k: psnr(tok.decode(ids[:, :k], generator=torch.Generator().manual_seed(0)), xv).mean().item() for k in (1, 4, 32)}
            rs = psnr(tok.decode(ids.roll(1, 0), generator=torch.Generator().manual_seed(0)), xv).mean().item()
            print(f"step {step} {(time.time()-t0)/60:.1f}min loss {out.loss.item():.3f} psnr k1 {r[1]:.2f} k4 {r[4]:.2f} k32 {r[32]:.2f} swapped {rs:.2f} "
                  f"codes {ids.unique().numel()}", flush=True)
        if time.time() - t0 > limit:
            break
if E("SAVE"):
    torch.save(tok.state_dict(), E("SAVE"))
