"""A/B of TiTok-S-128's decode on CPU: the VQGAN pixel decoder as it was (``F.pad`` copy before every conv,
out-of-place SiLU, NCHW) against the current one (padding inside the conv, in-place SiLU under ``no_grad``,
channels-last), alternating in one process, random weights.  See docs/speed.md.

    python benchmarks/ab_vqgan_decode.py [--batch-sizes 1 8] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import vistok
from vistok.layers import vqgan


def _conv_before(self: vqgan.Conv2dSame, x: torch.Tensor) -> torch.Tensor:
    total = self.kernel_size[0] - 1
    before, after = total // 2, total - total // 2
    return F.conv2d(F.pad(x, (before, after, before, after)), self.weight, self.bias)  # a padded copy first


def _block_before(self: vqgan.VQGANResBlock, x: torch.Tensor) -> torch.Tensor:
    h = self.conv1(F.silu(self.norm1(x)))
    h = self.conv2(self.dropout(F.silu(self.norm2(h))))
    return h + (self.nin_shortcut(h) if self.nin_shortcut is not None else x)


def _decoder_before(self: vqgan.VQGANDecoder, z: torch.Tensor) -> torch.Tensor:
    x = self.conv_in(z)
    for blk in self.mid:
        x = blk(x)
    for level in reversed(self.up):
        x = level(x)
    return self.conv_out(F.silu(self.norm_out(x)))


AFTER = (vqgan.Conv2dSame.forward, vqgan.VQGANResBlock.forward, vqgan.VQGANDecoder.forward)
BEFORE = (_conv_before, _block_before, _decoder_before)


def use(variant: tuple) -> None:
    vqgan.Conv2dSame.forward, vqgan.VQGANResBlock.forward, vqgan.VQGANDecoder.forward = variant


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = vistok.create_tokenizer("titok_s128")
    model = model.to_empty(device="cpu").eval()
    for q in model.parameters():
        q.data.normal_(std=0.02)
    for b in args.batch_sizes:
        ids = torch.randint(0, model.codebook_size, (b, model.num_tokens))
        times: dict[str, list[float]] = {"before": [], "after": []}
        outs = {}
        for r in range(args.rounds + 1):  # round 0: warm-up
            for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
                use(BEFORE if name == "before" else AFTER)
                start = time.perf_counter()
                with torch.no_grad():
                    outs[name] = model.decode(ids, clamp=False)
                if r:
                    times[name].append(time.perf_counter() - start)
        use(AFTER)
        med = {k: statistics.median(v) for k, v in times.items()}
        diff = float((outs["after"] - outs["before"]).abs().max())
        print(f"batch {b}: before {med['before']:.3f} s, after {med['after']:.3f} s, after / before "
              f"{med['after'] / med['before']:.2f} (median of {args.rounds}); max |diff| {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
