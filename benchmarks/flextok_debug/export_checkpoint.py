"""Export a FlexTokModule Lightning checkpoint of the flextok_tiny preset as a vistok hub folder (fp32; a third
argument stores fp16).

    PYTHONPATH=. python benchmarks/flextok_debug/export_checkpoint.py \
        runs/flextok_tiny/checkpoints/epoch=0-step=200.ckpt \
        runs/flextok_tiny_export200
"""
import sys

import torch

from vistok.hub import save_pretrained
from vistok.tokenizers.flextok import FLEXTOK_PRESETS, FlexTok

ck = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
tok = FlexTok(**FLEXTOK_PRESETS["flextok_tiny"])
sd = {k[len("tokenizer."):]: v for k, v in ck["state_dict"].items() if k.startswith("tokenizer.")}
tok.load_state_dict(sd)
print("step", ck["global_step"])
save_pretrained(tok, sys.argv[2], dtype=torch.float16 if len(sys.argv) > 3 else None)
