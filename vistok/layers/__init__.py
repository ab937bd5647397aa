"""Blocks shared by every family: attention, RoPE, MLPs, transformer blocks, conditioning, quantizers."""

from vistok.layers.attention import (
    Attention,
    LlamaBlock,
    RMSNorm,
    SwiGLU,
    ViTBlock,
    find_multiple,
    modulate,
    run_blocks,
)
from vistok.layers.conditioning import ConditionEmbedder, text_projection
from vistok.layers.quantizers import FSQ, VectorQuantizer
from vistok.layers.rope import apply_rope, rope_2d, rope_frequencies, rope_table, token_grid
from vistok.layers.sincos import TimestepMLP
from vistok.layers.vqgan import VQGANDecoder

__all__ = [
    "FSQ", "Attention", "ConditionEmbedder", "LlamaBlock", "RMSNorm", "SwiGLU", "TimestepMLP", "ViTBlock",
    "VQGANDecoder", "VectorQuantizer", "apply_rope", "find_multiple", "modulate", "rope_2d", "rope_frequencies",
    "rope_table", "run_blocks", "text_projection", "token_grid",
]
