"""Pick a pipeline's sampling defaults on *validation* prompts (seed 777), never on the evaluation prompts
(benchmarks/geneval_lite.py uses seed 12345).

    python benchmarks/tune_sampling.py --tokenizer runs/titok_tiny/export --generator runs/ar_tiny_t2i/export
    python benchmarks/tune_sampling.py --tokenizer runs/titok_vae_tiny/export --generator runs/mar_tiny_t2i/export \
        --top-k 0 --set num_iter=16

Prints GenEval-lite per setting (markdown) and the best one by ``overall`` (ties: colour).
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
from geneval_lite import evaluate  # noqa: E402  (same folder)

from vistok.data import ShapesDataset
from vistok.data.geneval import ATTRIBUTES
from vistok.hub import from_pretrained
from vistok.sample import Pipeline
from vistok.text import MiniLMTextEncoder


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--generator", required=True)
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--cfg", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.5])
    p.add_argument("--top-k", type=int, nargs="+", default=[0, 100, 20])
    p.add_argument("--temperature", type=float, nargs="+", default=[1.0])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="fixed decoder options, JSON values (e.g. num_iter=16 for MAR, num_steps=20 for xAR)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 when sharing the machine)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    gen = from_pretrained(args.generator)
    text = MiniLMTextEncoder(max_length=gen.config.get("max_text_len", 32))
    fixed = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    pipe = Pipeline(from_pretrained(args.tokenizer), gen, text, fixed)
    ds = ShapesDataset(args.num_prompts, seed=777, max_objects=1)
    captions = [ds.scene(i).caption for i in range(len(ds))]
    rows = []
    print("| cfg | top_k | temperature | " + " | ".join(ATTRIBUTES) + " |")
    print("|---" * (len(ATTRIBUTES) + 3) + "|")
    for cfg, k, t in itertools.product(args.cfg, args.top_k, args.temperature):
        s, _, _, _ = evaluate(pipe, captions, 50, 0, cfg_scale=cfg, top_k=k or None, temperature=t)
        rows.append(((s["overall"], s["color"]), dict(cfg_scale=cfg, top_k=k or None, temperature=t)))
        print(f"| {cfg} | {k or '-'} | {t} | " + " | ".join(f"{s[a]:.3f}" for a in ATTRIBUTES) + " |", flush=True)
    print("best:", max(rows, key=lambda r: r[0])[1])


if __name__ == "__main__":
    main()
