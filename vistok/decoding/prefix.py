"""Forced token prefixes: sample a causal generator's tokens *given* its first K tokens (e.g. frame prediction, where
the prefix is the tokens of the conditioning frames).

:class:`ForcedPrefix` wraps any causal discrete generator: at positions ``< K`` its logits are a point mass on the
given token, elsewhere they are the generator's.  Every decoder then samples from the generator's distribution
*conditioned on the prefix*; a lossless decoder (``ar``, ``sjd``, ``mcsjd``) stays lossless, because the wrapper is
itself a causal model.  The forced positions still cost forward passes (AR: one each; Jacobi decoders accept a whole
window of them per pass).

Frame prediction in LARP (Wang et al., arXiv 2410.21264; github.com/hywang66/LARP) conditions a separately trained
generator on the conditioning clip's tokens; this wrapper is the training-free counterpart for any causal generator.

Legend: b batch, k prefix length, l step length, v vocab.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vistok.decoding.budget import GeneratorView
from vistok.interfaces import CausalGenerator, Conditioning, KVCache, check_token_ids

__all__ = ["FORCED_LOGIT", "ForcedPrefix"]

#: logit of every other id at a forced position (finite, so that CFG's ``null + s (cond - null)`` stays finite)
FORCED_LOGIT = -1e9


class ForcedPrefix(GeneratorView):
    """A causal discrete generator whose first ``K`` tokens are ``prefix`` ``(b, K)`` long ids, one row per sample.

    Under classifier-free guidance the stacked batch ``(2b, ...)`` (conditional rows first) gets the same prefix in
    both halves.  Other attributes (``seq_len``, ``vocab_size``, ``parameters``, ...) are the generator's.
    """

    def __init__(self, generator: CausalGenerator, prefix: Tensor):
        if getattr(generator, "kind", "discrete") != "discrete" or not getattr(generator, "is_causal", False):
            raise ValueError(f"a forced prefix needs a causal generator of token ids, got {type(generator).__name__} "
                             f"(kind={getattr(generator, 'kind', None)!r}, "
                             f"causal={getattr(generator, 'is_causal', None)})")
        check_token_ids(prefix, generator.vocab_size, generator.seq_len, allow_prefix=True)
        super().__init__(generator)
        self.prefix = prefix

    def new_cache(self, cond: Conditioning, max_tokens: int | None = None) -> KVCache:
        if cond.batch_size not in (len(self.prefix), 2 * len(self.prefix)):
            raise ValueError(f"the prefix has {len(self.prefix)} rows but the batch has {cond.batch_size} samples; "
                             "give one prefix row per sample")
        return self.model.new_cache(cond, max_tokens)

    def step(self, inputs: Tensor, positions: Tensor, cache: KVCache) -> Tensor:
        logits = self.model.step(inputs, positions, cache)
        rows, k = logits.shape[0], self.prefix.shape[1]
        prefix = self.prefix.to(logits.device).repeat(rows // len(self.prefix), 1)  # (rows, k)
        forced = positions < k  # (rows, l)
        ids = prefix.gather(1, positions.clamp(max=k - 1))  # (rows, l)
        point = torch.full_like(logits, FORCED_LOGIT).scatter_(-1, ids[..., None], 0.0)
        return torch.where(forced[..., None], point, logits)
