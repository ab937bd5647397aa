"""Tokenizer throughput and memory on CPU, fp32: encode and decode images/s per preset and batch size.

    python benchmarks/tokenizer_speed.py [--presets titok_s128 titok_bl64_vae_c16 ...] [--batch-sizes 1 16]
                                    [--repeats 3] [--threads 2]

Every (preset, op, batch) cell runs in a fresh spawned process, so its peak RSS (``resource.getrusage``
``ru_maxrss``: model weights + activations + the Python/torch runtime) is that cell's own; the last column
subtracts the runtime's own peak, measured in the same process before the model is built.  Weights are random
(N(0, 0.02); speed does not depend on them) and built with ``torch.device("meta")`` + ``to_empty`` to skip the
slow default init.  ``decode`` is timed from token ids (VAE presets: latents of the right shape), so it does not
include ``encode``.  One untimed warm-up call precedes ``--repeats`` timed calls; img/s = batch * repeats / time.

Numbers are only meaningful on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time

import torch

DEFAULT_PRESETS = ("titok_tiny", "titok_s128", "titok_b64", "titok_l32", "titok_bl64_vq8k", "titok_bl128_vq8k",
                   "titok_sl256_vq8k", "titok_ll32_vae_c16", "titok_bl64_vae_c16", "titok_bl128_vae_c16",
                   "onedpiece_s256")


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


@torch.no_grad()
def _cell(preset: str, op: str, batch: int, repeats: int, threads: int) -> dict:
    """Build ``preset``, time ``op`` at ``batch``; runs inside a fresh process."""
    import vistok

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = _peak_rss_mb()  # the runtime alone (python + torch + vistok imports)
    with torch.device("meta"):
        model = vistok.create_tokenizer(preset)
    model = model.to_empty(device="cpu").eval()
    for p in model.parameters():
        p.normal_(std=0.02)
    params = sum(p.numel() for p in model.parameters())
    if op == "encode":
        x = torch.rand(batch, 3, model.image_size, model.image_size)
        run = lambda: model.encode(x)
    elif model.codebook_size is None:
        z = torch.randn(batch, model.num_tokens, model.token_dim)
        run = lambda: model.decode(z)
    else:
        ids = torch.randint(0, model.codebook_size, (batch, model.num_tokens))
        run = lambda: model.decode(ids)
    run()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    seconds = time.perf_counter() - start
    return dict(preset=preset, op=op, batch=batch, params=params, img_s=batch * repeats / seconds,
                ms_img=1e3 * seconds / (batch * repeats), peak_mb=_peak_rss_mb(), base_mb=base)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    p.add_argument("--ops", nargs="+", choices=("encode", "decode"), default=["encode", "decode"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)

    print(f"torch {torch.__version__}, CPU fp32, {args.threads} threads, {args.repeats} timed repeats per cell\n")
    header = (f"{'preset':<22} {'params':>8} {'op':<7} {'batch':>5} {'img/s':>9} {'ms/img':>9} {'peak RSS':>10} "
              f"{'- runtime':>10}")
    print(header + "\n" + "-" * len(header))
    ctx = mp.get_context("spawn")
    for preset in args.presets:
        for op in args.ops:
            for batch in args.batch_sizes:
                with ctx.Pool(1) as pool:
                    r = pool.apply(_cell, (preset, op, batch, args.repeats, args.threads))
                print(f"{r['preset']:<22} {r['params'] / 1e6:>7.1f}M {r['op']:<7} {r['batch']:>5} {r['img_s']:>9.2f} "
                      f"{r['ms_img']:>9.1f} {r['peak_mb']:>7.0f} MB {r['peak_mb'] - r['base_mb']:>7.0f} MB",
                      flush=True)


if __name__ == "__main__":
    main()
