# ruff: noqa
"""Register path probe (fixed random codes, decoder only): attention mass from patches to registers per block and
the output change when the registers of another image are swapped in, at t = 0.99.

    python benchmarks/flextok_debug/register_probe.py

Diagnostic script of the 2026-12-06 FlexTok debugging (numbers quoted in docs/flextok.md; the shared setup is
scenes.py); run from the worktree root with PYTHONPATH=. so this checkout's vistok is imported."""
import os, torch, torch.nn.functional as F
from scenes import eight_scenes  # same folder: one thread, seed 0, the 8 scenes
from vistok.tokenizers.flextok import FlexTok, patchify, _norm
from einops import rearrange
x = eight_scenes()
tok = FlexTok(image_size=64, patch_size=8, width=128, depth=4, head_dim=32, num_registers=32, levels=(8,5,5,5),
              nested_dropout="none", null_prob=0.0, prediction="x", loss_target="x", time_shift=4.0)
zfix = torch.randn(8, 32, 4) * 3
tok.encoder.forward = lambda lat: zfix[: len(lat)]
opt = torch.optim.AdamW(tok.decoder.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=1e-4)
def probe():
    d = tok.decoder
    codes, _ = tok.quantizer(zfix); reg = d.registers(codes, torch.full((8,), 32))
    t = torch.full((8,), 0.99); xt = t[0] * torch.randn(8, 3, 64, 64) + 0.01 * (x * 2 - 1)
    h = d.patch_embed(patchify(xt, 8)) + d.pos_embed.reshape(64, -1)
    h = torch.cat([h, reg], 1); seg = (torch.arange(96) >= 64).long(); temb = d.time_embedding(t)
    for i, blk in enumerate(d.blocks):
        mod = blk.modulation(F.silu(temb)).unflatten(1, (2, 6, -1))[:, seg]
        ga, gm, sa, ca, sm, cm = mod.unbind(2)
        inp = _norm(h) * (1 + ca) + sa
        q, k, v = rearrange(blk.attn.qkv(inp), "b l (three h d) -> three b h l d", three=3, h=4)
        q, k = F.layer_norm(q, q.shape[-1:]), F.layer_norm(k, k.shape[-1:])
        a = (q @ k.transpose(-1, -2) * 0.25).softmax(-1)
        mass = a[:, :, :64, 64:].sum(-1).mean().item()
        print(f"  block {i}: patch->reg attn mass {mass:.3f}, |gate_a| patch {ga[:, :64].abs().mean():.4f} reg-val std over imgs {v[:, :, 64:].std(0).mean():.3f} patch-val std {v[:, :, :64].std(0).mean():.3f}")
        h = blk(h, None, temb, seg)
    o1 = tok.decoder(xt, t, reg)[0]; o2 = tok.decoder(xt, t, reg.roll(1, 0))[0]
    print(f"  output sensitivity to registers {(o1 - o2).norm() / o1.norm():.3f}")
probe()
for step in range(1, 201):
    tok.train(); out = tok(x); opt.zero_grad(); out.loss.backward(); opt.step()
    if step % 100 == 0:
        print(step, out.loss.item()); probe()
