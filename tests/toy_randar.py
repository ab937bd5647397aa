"""A sixth generator family in one file: a toy random-order AR (after RandAR, arXiv 2412.01827), used only by tests.

Tokens are generated in a fixed random order ``perm`` of the ``N`` raster positions; step ``p`` predicts the token at
raster position ``perm[p]`` from the tokens of steps ``< p`` (each input carries an embedding of the position it
fills).  It follows :class:`vistok.interfaces.CausalGenerator`, so every causal decoder (ar, sjd, mcsjd, gsd,
lantern) runs it unchanged; its tokens come out in generation order (``to_raster`` reorders them).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.interfaces import Conditioning, Configurable, GeneratorOutput, KVCache
from vistok.layers import LlamaBlock, RMSNorm, rope_table


class RandomOrderAR(nn.Module, Configurable):
    kind, is_causal, default_decoder, text_dim = "discrete", True, "ar", 0

    def __init__(self, vocab_size: int = 16, seq_len: int = 8, width: int = 32, depth: int = 2, num_heads: int = 2,
                 num_classes: int = 4, cond_dropout: float = 0.1, seed: int = 0):
        super().__init__()
        self.vocab_size, self.seq_len, self.num_classes = vocab_size, seq_len, num_classes
        self.cond_dropout = cond_dropout
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.register_buffer("perm", torch.randperm(seq_len, generator=torch.Generator().manual_seed(seed)))
        self.class_embed = nn.Embedding(num_classes + 1, width)  # last row: the null class
        self.tok_embed, self.pos_embed = nn.Embedding(vocab_size, width), nn.Embedding(seq_len, width)
        self.blocks = nn.ModuleList(LlamaBlock(width, num_heads, 2 * width) for _ in range(depth))
        self.norm, self.output = RMSNorm(width), nn.Linear(width, vocab_size, bias=False)

    def new_cache(self, cond: Conditioning, max_tokens: int | None = None) -> KVCache:
        cache = KVCache(len(self.blocks), cond.batch_size, self.num_heads, self.head_dim, 0, max_tokens or self.seq_len,
                        device=self.perm.device)
        cache.start = self.class_embed(torch.where(cond.labels < 0, self.num_classes, cond.labels))
        return cache

    def step(self, inputs: Tensor, positions: Tensor, cache: KVCache) -> Tensor:
        x = torch.where((positions == 0)[..., None], cache.start[:, None], self.tok_embed(inputs.clamp(min=0)))
        x = x + self.pos_embed(self.perm[positions])  # which raster position this step fills
        mask, rope = cache.attention_mask(positions), rope_table(positions, self.head_dim)
        for i, blk in enumerate(self.blocks):
            x = blk(x, mask, rope, cache, i, positions)
        cache.advance(positions)
        return self.output(self.norm(x)).float()

    def forward(self, tokens: Tensor, cond: Conditioning) -> GeneratorOutput:
        """tokens (b, n) in raster order -> next-token loss in generation order."""
        ordered = tokens[:, self.perm]
        positions = torch.arange(self.seq_len, device=tokens.device).expand(len(tokens), -1)
        logits = self.step(F.pad(ordered[:, :-1], (1, 0)), positions, self.new_cache(cond))
        return GeneratorOutput(F.cross_entropy(logits.flatten(0, 1), ordered.flatten()), logits)

    def token_embeddings(self) -> Tensor:  # optional TokenEmbeddings protocol: GSD / LANTERN latents
        return self.tok_embed.weight

    def to_raster(self, tokens: Tensor) -> Tensor:
        return torch.empty_like(tokens).scatter_(1, self.perm.expand_as(tokens), tokens)
