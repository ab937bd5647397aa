"""Token budgets: sample only the first ``k`` of a causal generator's ``N`` tokens.

Ordered 1D tokenizers decode any prefix, coarse to fine (FlexTok: Bachmann et al., arXiv 2502.13967, code
github.com/apple/ml-flextok; One-D-Piece TiTok), so a generator trained on all ``N`` of their tokens can stop after
``k`` of them.  :class:`TokenBudget` is a view of a causal generator whose ``seq_len`` is ``k``: the causal decoders
(``ar``, ``sjd``, ``mcsjd``, ``gsd``, ``lantern``, ``csd``) run on it with their verification logic unchanged and
stop at ``k``.  AR makes ``k`` forward passes, the speculative decoders at most ``k``.

The cache is the model's own full-length one (``new_cache`` passes no shorter length), so every forward pass is the
one a full decode makes; with the same seed, AR's ``k`` tokens are the first ``k`` of its full sample.  A speculative
decoder draws its drafts for a window capped at ``k``, so its budget run is the same *law* as the prefix of its full
run, not the same tokens.
"""

from __future__ import annotations

from vistok.interfaces import Conditioning, KVCache, check_count

__all__ = ["NON_CAUSAL_DECODERS", "GeneratorView", "TokenBudget"]

#: decoders that do not make tokens in order: a budget means nothing to them
NON_CAUSAL_DECODERS = ("nar", "masked", "cells")


class GeneratorView:
    """A causal generator seen through a wrapper (a budget, a forced prefix): every attribute the wrapper does not
    set itself is the wrapped ``model``'s, and ``new_cache`` / ``step`` pass through unless a subclass changes them."""

    def __init__(self, generator):
        self.model = generator

    def __getattr__(self, name: str):  # only called for attributes the view itself lacks
        if "model" not in self.__dict__:  # not set yet (e.g. during unpickling): do not recurse
            raise AttributeError(name)
        return getattr(self.__dict__["model"], name)

    def new_cache(self, cond: Conditioning, max_tokens: int | None = None) -> KVCache:
        """The generator's cache (full length unless ``max_tokens``), so forward passes match a full decode."""
        return self.model.new_cache(cond, max_tokens)

    def step(self, inputs, positions, cache: KVCache):
        return self.model.step(inputs, positions, cache)


class TokenBudget(GeneratorView):
    """``generator`` seen through a budget of its first ``num_tokens`` tokens (``seq_len = num_tokens``).

    Everything but ``seq_len`` is the generator's own (attributes are looked up on it).

    Raises:
        ValueError: ``num_tokens`` is not an int in ``[1, generator.seq_len]``, or the generator is not causal.
    """

    def __init__(self, generator, num_tokens: int):
        n = getattr(generator, "seq_len", None)
        if not getattr(generator, "is_causal", False):
            raise ValueError(f"num_tokens (a token budget) needs a causal generator that makes tokens in order (AR, "
                             f"MAR-AR); {type(generator).__name__} makes its tokens in another order: generate all "
                             f"{n if n is not None else 'N'} and keep a prefix yourself")
        check_count("num_tokens", num_tokens, hint=f" (tokens to generate, at most seq_len = {n})")
        if num_tokens > n:
            raise ValueError(f"num_tokens must be in [1, {n}] (this generator makes {n} tokens), got {num_tokens}")
        super().__init__(generator)
        self.seq_len = num_tokens
