"""LlamaGen-style causal AR generator over discrete token ids, with class or text conditioning.

Paper: Sun et al., "Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation",
arXiv 2406.06525.  Reference code (facts only): github.com/FoundationVision/LlamaGen
(``autoregressive/models/gpt.py``).

Sequence layout (``S = P + N`` slots): ``[P text-prefix slots | N token slots]``.  Token slot ``p`` holds the
input that predicts token ``p``: the *start* embedding for ``p = 0`` (the class embedding, LlamaGen-style, or a
learned BOS for text/unconditional models) and token ``p - 1`` otherwise.  The conditioning (caption MLP, null
condition, dropout for CFG) is :class:`~vistok.layers.ConditionEmbedder`'s.

Legend: b batch, n tokens, p prefix slots, l step length, c width, v vocab.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from vistok.interfaces import (
    Conditioning,
    Configurable,
    GeneratorOutput,
    KVCache,
    check_generator_tokens,
    check_positions,
)
from vistok.layers import ConditionEmbedder, LlamaBlock, RMSNorm, find_multiple, rope_table, run_blocks
from vistok.layers.init import llamagen_init


class ARGenerator(nn.Module, ConditionEmbedder, Configurable):
    """Causal transformer over token ids with a preallocated KV cache.

    Args:
        vocab_size: codebook size of the tokenizer it models.
        seq_len: tokens per image (N).
        width, depth, num_heads: transformer size.
        mlp_hidden: SwiGLU hidden size (None: LlamaGen's ``find_multiple(8 * width / 3, 64)``).
        dropout: token/residual/MLP dropout.
        num_classes, text_dim, max_text_len, cond_dropout: the conditioning (classes with a null row for CFG, text
            states projected into ``max_text_len`` prefix slots): :meth:`ConditionEmbedder.init_conditioning`.
        rope_base: RoPE base.
    """

    kind = "discrete"
    is_causal = True
    default_decoder = "ar"
    inference_methods = ("step",)  # what vistok.compile_inference compiles

    def __init__(self, vocab_size: int = 1024, seq_len: int = 32, width: int = 256, depth: int = 6,
                 num_heads: int = 4, mlp_hidden: int | None = None, dropout: float = 0.1, num_classes: int = 0,
                 text_dim: int = 0, max_text_len: int = 32, cond_dropout: float = 0.1, rope_base: float = 10000.0):
        super().__init__()
        mlp_hidden = mlp_hidden or find_multiple(int(8 * width / 3), 64)
        self.vocab_size, self.seq_len, self.width, self.num_heads = vocab_size, seq_len, width, num_heads
        self.rope_base = rope_base
        self.init_conditioning(width, num_classes=num_classes, text_dim=text_dim, max_text_len=max_text_len,
                               cond_dropout=cond_dropout)
        # backbone
        self.tok_embed = nn.Embedding(vocab_size, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(LlamaBlock(width, num_heads, mlp_hidden, dropout) for _ in range(depth))
        self.norm = RMSNorm(width)
        self.output = nn.Linear(width, vocab_size, bias=False)
        llamagen_init(self, self.output)

    def token_embeddings(self) -> Tensor:
        """The ``(V, width)`` input embedding table (token latents for GSD / LANTERN)."""
        return self.tok_embed.weight

    # -- decoding interface ------------------------------------------------------------------------------------
    def new_cache(self, cond: Conditioning, max_tokens: int | None = None) -> KVCache:
        """Allocate a cache for ``cond``'s batch and prefill the text prefix (if any)."""
        return self.new_kv_cache(cond, len(self.blocks), max_tokens or self.seq_len, self._run)

    def step(self, inputs: Tensor, positions: Tensor, cache: KVCache) -> Tensor:
        """inputs (b, l) = tokens at ``positions - 1`` -> logits (b, l, v) for the tokens at ``positions``."""
        check_positions(positions, cache.max_tokens)
        x = self.with_start(self.tok_embed(inputs.clamp(min=0)), positions, cache)
        x = self._run(self.drop(x), positions + cache.prefix_len, cache.attention_mask(positions), cache)
        cache.advance(positions)
        return self.output(self.norm(x)).float()

    def _run(self, x: Tensor, slots: Tensor, mask: Tensor, cache: KVCache) -> Tensor:
        rope = rope_table(slots, self.width // self.num_heads, self.rope_base)
        return run_blocks(self.blocks, x, mask, rope, cache, slots)

    # -- training ----------------------------------------------------------------------------------------------
    def forward(self, tokens: Tensor, cond: Conditioning) -> GeneratorOutput:
        """Teacher-forced next-token loss. tokens (b, n) ids -> GeneratorOutput(loss, logits (b, n, v))."""
        check_generator_tokens(tokens, seq_len=self.seq_len, vocab_size=self.vocab_size)
        logits = self.teacher_forced(tokens, cond)
        return GeneratorOutput(F.cross_entropy(logits.flatten(0, 1), tokens.flatten()), logits)


AR_PRESETS: dict[str, dict] = {
    # the shipped text-to-image default's size (MiniLM states, 384-d)
    "ar_tiny_t2i": dict(vocab_size=1024, seq_len=32, width=256, depth=6, num_heads=4, text_dim=384),
    "ar_tiny_c2i": dict(vocab_size=1024, seq_len=32, width=256, depth=6, num_heads=4, num_classes=24),
    # LlamaGen GPT-B c2i (111M at vocab 16384, 256 tokens)
    "llamagen_b": dict(vocab_size=16384, seq_len=256, width=768, depth=12, num_heads=12, num_classes=1000),
}
