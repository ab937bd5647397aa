# ruff: noqa
"""Swapped-token control for the step-200 checkpoint of the second tiny run: decode each image from the tokens of the
next one (PSNR at k = 32 on the prefix scenes, GenEval-lite at k = 1 on the single-object scenes).

    PYTHONPATH=. python benchmarks/flextok_debug/swapped_control.py   (needs runs/flextok_tiny_export200)"""
import torch
from types import SimpleNamespace
from vistok.data import ShapesDataset
from vistok.data.geneval import score_batch
from vistok.evaluation import psnr
from vistok.hub import from_pretrained
import sys
sys.path.insert(0, "benchmarks")
from flextok_prefix import decode
torch.set_num_threads(2)
m = from_pretrained("runs/flextok_tiny_export200").eval()
args = SimpleNamespace(batch_size=16, seed=0, steps=None, guidance=1.0, apg=False)
d = ShapesDataset(32, image_size=64, seed=777)
x = torch.stack([d[i]["pixels"] for i in range(32)])
ids = torch.cat([m.encode(b) for b in x.split(16)])
print("PSNR k=32 own", psnr(decode(m, ids, 32, args), x).mean().item(), "swapped", psnr(decode(m, ids.roll(1, 0), 32, args), x).mean().item())
d = ShapesDataset(32, image_size=64, seed=778, min_objects=1, max_objects=1)
items = [d[i] for i in range(32)]
x, caps = torch.stack([it["pixels"] for it in items]), [it["caption"] for it in items]
ids = torch.cat([m.encode(b) for b in x.split(16)])
print("colour k=1 swapped", score_batch(decode(m, ids.roll(1, 0), 1, args), caps))
