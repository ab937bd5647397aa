# ruff: noqa
"""FSQ code collapse: encoder outputs, FSQ ids and their spread over images during the first steps.

    CODEINIT=1 ELR=1e-3 STEPS=80 EVERY=10 python benchmarks/flextok_debug/code_collapse.py

Diagnostic script of the 2026-12-06 FlexTok debugging (numbers quoted in docs/flextok.md; the shared setup is
scenes.py); run from the worktree root with PYTHONPATH=. so this checkout's vistok is imported."""
import torch
from scenes import eight_scenes  # same folder: one thread, seed 0, the 8 scenes
from vistok.tokenizers.flextok import FlexTok
x = eight_scenes()
tok = FlexTok(image_size=64, patch_size=8, width=128, depth=4, head_dim=32, num_registers=32, levels=(8,5,5,5),
              nested_dropout="none", null_prob=0.0, prediction="x")
import os
if os.environ.get("CODEINIT"): torch.nn.init.xavier_uniform_(tok.encoder.to_codes.weight)
z = tok.encoder(tok.to_latents(x))
print("z std over images", z.std(0).mean().item(), "over registers", z.std(1).mean().item(), "abs", z.abs().mean().item())
h = tok.encoder.blocks
lat = tok.to_latents(x)
# features before to_codes
import torch.nn.functional as F
from vistok.tokenizers.flextok import patchify, prefix_causal_mask, _norm
e = tok.encoder
xx = e.patch_embed(patchify(lat, 8)) + e.pos_embed.reshape(64, -1)
print("patch emb std over images", xx.std(0).mean().item(), "pos std", e.pos_embed.std().item())
xx = torch.cat([xx, e.registers.expand(8, -1, -1)], 1)
m = prefix_causal_mask(64, 32)
for i, b in enumerate(e.blocks):
    xx = b(xx, m)
    r = xx[:, 64:]
    print(i, "reg std over images", r.std(0).mean().item(), "reg abs", r.abs().mean().item())
print(tok.quantizer(z)[1])
elr=float(os.environ.get('ELR','1e-3'))
opt = torch.optim.AdamW([dict(params=tok.encoder.parameters(), lr=elr), dict(params=tok.decoder.parameters())], lr=1e-3, betas=(0.9, 0.99), weight_decay=1e-4)
for step in range(1, int(os.environ.get('STEPS','80'))+1):
    tok.train(); out = tok(x); opt.zero_grad(); out.loss.backward()
    g = tok.encoder.to_codes.weight.grad
    gz = None
    torch.nn.utils.clip_grad_norm_(tok.parameters(), 1.0); opt.step()
    if step % int(os.environ.get('EVERY','10')) == 0:
        with torch.no_grad():
            z = tok.encoder(tok.to_latents(x)); ids = tok.quantizer(z)[1]
        print(step, f"loss {out.loss.item():.3f} uniq {ids.unique().numel()} z-mean {z.mean((0,1)).tolist()} z-std-img {z.std(0).mean():.3f} "
              f"grad to_codes {g.norm():.2e} bias {tok.encoder.to_codes.bias.tolist()} fromcodes {tok.decoder.from_codes.weight.norm():.3f}", flush=True)
