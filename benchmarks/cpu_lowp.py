"""A/B of the two CPU fast paths in ``vistok.layers``: the explicit bf16/fp16 attention of
:func:`vistok.layers.attention.attend` against ``F.scaled_dot_product_attention`` (the CPU flash kernel), and the
channels-last activations of :class:`vistok.layers.refine.PixelRefiner` against the default layout.

    python benchmarks/cpu_lowp.py [--threads 2] [--rounds 2] [--config configs/tokenizers/larp_tiny_refine.yaml]
        [--steps 20]

Three tables, each old / new alternating by round in one process (run it with nothing else on the machine):
attention forward + backward and forward alone at LARP's tiny shapes (batch 8, 4 heads, 320 or 64 tokens, head dim
32); the refiner's forward + backward on 128 frames of 32x32 (bf16 autocast and fp32); and a whole LARP training
step (forward, backward, clipping, AdamW) under bf16 autocast at 60 % of training (VQ and prior on), built from the
config, with both fast paths off ("before") or on ("now").  Ratios > 1: the new path is faster.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F
import yaml

import vistok.layers.attention as attention_module
import vistok.layers.refine as refine_module
from vistok.data.videos import MovingShapesDataset


def sdpa(q, k, v, mask=None, dropout_p=0.0, scale=None):
    """The attention as it was before: SDPA for every dtype."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


def refiner_default_layout(self, rgb, feats=None):
    """``PixelRefiner.forward`` as it was before: activations in the default (channels-first) layout."""
    x = torch.cat([rgb, feats], dim=1) if self.features else rgb
    h = self.conv_in(x)
    for block in self.blocks:
        h = h + block(h)
    return rgb + self.conv_out(F.gelu(h))


@contextlib.contextmanager
def old_paths(on: bool):
    """Within the block, vistok's attention and refiner run their old code (if ``on``)."""
    attend, forward = attention_module.attend, refine_module.PixelRefiner.forward
    if on:
        attention_module.attend, refine_module.PixelRefiner.forward = sdpa, refiner_default_layout
    try:
        yield
    finally:
        attention_module.attend, refine_module.PixelRefiner.forward = attend, forward


def timed(fn, reps: int) -> float:
    """Mean milliseconds of ``fn()`` over ``reps`` calls after five warm-up calls (oneDNN primes its kernels)."""
    for _ in range(5):
        fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def ab(name: str, make, rounds: int, reps: int) -> tuple[str, float, float]:
    """``make(old)`` returns a callable; old and new alternate by round; summed ms of each side."""
    total = {True: 0.0, False: 0.0}
    for r in range(rounds):
        for old in ((True, False) if r % 2 == 0 else (False, True)):
            with old_paths(old):
                total[old] += timed(make(old), reps)
    return name, total[True] / rounds, total[False] / rounds


def attention_case(length: int, backward: bool):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(8, 4, length, 32, generator=g).to(torch.bfloat16).requires_grad_(backward)
               for _ in range(3))

    def make(old):
        fn = sdpa if old else attention_module.attend

        def run():
            if backward:
                fn(q, k, v).float().sum().backward()
            else:
                with torch.no_grad():
                    fn(q, k, v)
        return run
    return make


def refiner_case(bf16: bool):
    torch.manual_seed(0)
    ref = refine_module.PixelRefiner(16, 1, 4)
    rgb, feats = torch.rand(128, 3, 32, 32, requires_grad=True), torch.randn(128, 4, 32, 32, requires_grad=True)

    def make(old):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = ref(rgb, feats)
            out.float().sum().backward()
        return run
    return make


def larp_step_case(config: str):
    from vistok.tokenizers import LARP
    from vistok.training import LARPModule

    cfg = yaml.safe_load(open(config))["model"]["init_args"]
    torch.manual_seed(0)
    tok = LARP(**cfg["tokenizer"]["init_args"])
    kwargs = {k: v for k, v in cfg.items() if k not in ("tokenizer", "export_dir")}

    class AtSixtyPercent(LARPModule):
        @property
        def global_step(self):  # no trainer: 60 % of training, quantizer and prior on
            return 6000

    module = AtSixtyPercent(tok, **{**kwargs, "total_steps": 10000})
    module.log_dict = lambda *a, **k: None
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    data = MovingShapesDataset(8, seed=0, image_size=tok.image_size, num_frames=tok.num_frames,
                               min_objects=1, max_objects=2)
    x = torch.stack([data[i]["pixels"] for i in range(8)])

    def make(old):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = module.training_step({"pixels": x}, 0)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            opt.step()
        return run
    return make


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30, help="calls per timing of the micro cases")
    ap.add_argument("--config", default="configs/tokenizers/larp_tiny_refine.yaml")
    ap.add_argument("--steps", type=int, default=20, help="training steps per timing of the LARP step")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [ab("attention bf16 fwd+bwd, (8, 4, 320, 32)", attention_case(320, True), args.rounds, args.reps),
            ab("attention bf16 fwd, (8, 4, 320, 32)", attention_case(320, False), args.rounds, args.reps),
            ab("attention bf16 fwd, (8, 4, 64, 32)", attention_case(64, False), args.rounds, args.reps),
            ab("refiner fwd+bwd bf16 autocast, (128, 3+4, 32, 32)", refiner_case(True), args.rounds, args.reps),
            ab("refiner fwd+bwd fp32, (128, 3+4, 32, 32)", refiner_case(False), args.rounds, args.reps)]
    if args.steps:
        rows.append(ab(f"LARP training step, bf16 autocast, batch 8 ({args.config.split('/')[-1]})",
                       larp_step_case(args.config), args.rounds, args.steps))
    print(f"| case ({args.threads} threads, {args.rounds} rounds) | before ms | now ms | before / now |")
    print("|---|---|---|---|")
    for name, before, now in rows:
        print(f"| {name} | {before:.2f} | {now:.2f} | {before / now:.2f}x |")


if __name__ == "__main__":
    main()
