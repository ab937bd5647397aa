"""Power of the lossless tests (``docs/lossless.md``): every exactness test of ``tests/decoding/test_lossless.py``
and ``tests/decoding/test_csd.py``, run on the real decoders and on broken controls over several seeds.

    python benchmarks/lossless_power.py --seeds 5 > power.txt

Prints one row per (test, decoder, control): samples, the p-value at each seed, how many seeds reject at
alpha = 1e-3, and the median wall time of one sampling run (1 CPU thread).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "decoding")]  # this checkout's vistok first

import test_csd as tc  # noqa: E402
import test_lossless as tl  # noqa: E402
from exactness import PrefixTable, joint_pvalue  # noqa: E402

from vistok.decoding import continuous, generate  # noqa: E402
from vistok.interfaces import Conditioning  # noqa: E402


class Patch:
    """A minimal stand-in for pytest's monkeypatch."""

    def __init__(self):
        self.undo = []

    def setattr(self, obj, name, value):
        self.undo.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def restore(self):
        for obj, name, value in reversed(self.undo):
            setattr(obj, name, value)


@contextlib.contextmanager
def broken(control):
    patch = Patch()
    if control is not None:
        control(patch)
    try:
        yield
    finally:
        patch.restore()


def csd_mix(weight: float):
    """csd control: a rejected draft's token comes from the target ``p`` itself with probability ``weight``."""

    def patch(monkeypatch):
        real = continuous._residual_paths

        def residual(kernel, zp, zp_null, zq, zq_null, rng, max_tries):
            tokens, tries, capped = real(kernel, zp, zp_null, zq, zq_null, rng, max_tries)
            swap = torch.rand(len(tokens), generator=rng) < weight
            path, _, _ = kernel.sample(zp, zp_null, kernel.paths.path_noise(len(tokens), rng))
            return torch.where(swap[:, None], path[-1].to(tokens.dtype), tokens), tries, capped

        monkeypatch.setattr(continuous, "_residual_paths", residual)

    return patch


def row(test: str, name: str, control: str, samples: int, run, seeds: list[int]) -> None:
    pvalues, times = [], []
    for seed in seeds:
        t0 = time.perf_counter()
        pvalues.append(run(seed))
        times.append(time.perf_counter() - t0)
    rejected = sum(p < 1e-3 for p in pvalues)
    shown = " ".join(f"{p:.0e}" for p in pvalues)
    print(f"| {test} | {name} | {control} | {samples:,} | {shown} | {rejected}/{len(seeds)} | "
          f"{statistics.median(times):.1f} s |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only", default="table,network,large,csd", help="comma-separated sections")
    parser.add_argument("--laws", default="", help="csd test models to run (default: all)")
    parser.add_argument("--names", default="", help="prefix table: only configurations whose name contains one of "
                        "these comma-separated strings (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [101 + i for i in range(args.seeds)]
    print("| test | decoder | control | samples | p-value per seed | rejected at 1e-3 | time per run |")
    print("|---|---|---|---|---|---|---|")
    controls = {"none": None, **tl.BROKEN}
    if "table" in args.only:
        table = PrefixTable.random(3, 5, scale=1.0, sticky=1.5)
        law = table.law(1, **tl.SETTING)
        for name, (decoder, kw, m) in tl.EXACT.items():
            if args.names and not any(part in name for part in args.names.split(",")):
                continue
            # the Gumbel coupling has no ratio or residual: its own controls; proactive drafting adds one
            own = {"none": None, **tl.GUMBEL_BROKEN} if "gumbel" in name else controls
            own = {**own, **tl.PROACTIVE_BROKEN} if "proactive" in name else own
            own = {**own, **tl.TREE_BROKEN} if "2x2" in name else own
            for control, patch in own.items():
                if name == "ar" and patch is not None:
                    continue

                def run(seed, decoder=decoder, kw=kw, m=m, patch=patch):
                    with broken(patch):
                        return joint_pvalue(tl.table_samples(table, decoder, m, seed=seed, **kw).tokens, law)

                row("prefix table V=3 N=5, joint chi-square", name, control, m, run, seeds)
    if "network" in args.only:
        model = tl.network_model()
        for decoder, kw in [("sjd", {"window": 4}), ("mcsjd", {"window": 5, "init": "repeat"})]:
            net_controls = {"none": None, "ratio x1.5": tl.scale_ratio(1.5), "ratio x1.1": tl.scale_ratio(1.1)}
            for control, patch in net_controls.items():

                def run(seed, decoder=decoder, kw=kw, patch=patch):
                    with broken(patch):
                        out = generate(model, Conditioning(labels=torch.tensor([0, 1])), decoder=decoder,
                                       num_samples=tl.M_NET, seed=seed, **tl.SETTING, **kw)
                    m = tl.M_NET
                    return min(joint_pvalue(out.tokens[i * m : (i + 1) * m], tl.network_law(model, i, **tl.SETTING))
                               for i in (0, 1))

                row("tiny ARGenerator V=3 N=5, joint chi-square (smaller p of 2 labels)", decoder, control,
                    tl.M_NET, run, seeds[:3])
    if "large" in args.only:
        gen = tl.large_model()
        for name, (decoder, kw, m, _) in tl.LARGE_RUNS.items():
            for control in ("none", "ratio x1.5", "ratio x1.25", "ratio x1.1"):
                patch = None if control == "none" else tl.scale_ratio(float(control.split("x")[1]))

                def run(seed, decoder=decoder, kw=kw, m=m, patch=patch):
                    with broken(patch):
                        return tl.large_pvalue(gen, decoder, kw, m, seed=seed)

                row("Markov table V=16 N=12, conditional chi-square", name, control, m, run, seeds[:3])
    if "csd" in args.only:
        csd_controls = {"none": None, **tc.CSD_BROKEN, "ratio x1.05": tc._scale_ratio(1.05),
                        "residual + 10% p": csd_mix(0.1)}
        # "diffloss-s0.5": the same DiffLoss test model with the data spread of the earlier test (s = 0.5, not sharp)
        laws = {**tc.LAWS, "diffloss-s0.5-w3-cfg1.5": ("analytic", dict(token_dim=1, seq_len=3),
                                                       tc.LAWS["diffloss-w3-cfg1.5"][2])}
        names = ("gauss-w4", "diffloss-w3-cfg1.5", "diffloss-s0.5-w3-cfg1.5")
        for name in args.laws.split(",") if args.laws else names:
            for control, patch in {"ar (reference)": "ar", **csd_controls}.items():

                def run(seed, name=name, patch=patch):
                    head, gen_kw, kw = laws[name]
                    gen = tc.law_model(head, **gen_kw)
                    sampling = {k: v for k, v in kw.items() if k in ("cfg_scale", "temperature")}
                    decoder, opts = ("ar", {**sampling, "final_noise": True}) if patch == "ar" else ("csd", kw)
                    with broken(None if patch == "ar" else patch):
                        out = generate(gen, Conditioning(labels=torch.tensor([1])), decoder=decoder,
                                       num_samples=tc.M, seed=seed, **opts)
                    return tc.law_pvalue(gen, out.tokens, **sampling)

                row("csd, exact Gaussian law (residual tests)", name, control, tc.M, run, seeds[:3])


if __name__ == "__main__":
    main()
