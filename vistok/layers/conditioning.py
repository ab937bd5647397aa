"""Condition embeddings shared by the generator families: class table with a null condition, text projection,
start vector, condition dropout, and the one-pass prefill of a text prefix into a KV cache.

LlamaGen (Sun et al., arXiv 2406.06525, github.com/FoundationVision/LlamaGen ``autoregressive/models/gpt.py``)
sets the conventions the families follow: a class table with one extra *null* row (label dropout for
classifier-free guidance), the class embedding as the input of token position 0, and caption states projected by
a 2-layer MLP with a tanh-GELU (``CaptionEmbedder``).  MAR (arXiv 2406.11838) keeps the class table without a null
row and learns the null condition as a separate vector (``fake_latent``).

:class:`ConditionEmbedder` is a mixin, not a submodule, so its parameters keep the top-level state-dict names every
converter and shipped checkpoint uses: ``class_embed.weight``, ``text_proj.{0,2}.*``, ``bos`` and ``null_embed``.

Legend: b batch, t text tokens, p prefix slots, c width, e text-state dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.interfaces import Conditioning, KVCache, check_choice, check_conditioning, drop_conditioning

__all__ = ["ConditionEmbedder", "text_projection"]


def text_projection(text_dim: int, width: int, bias: bool = True) -> nn.Sequential:
    """LlamaGen's caption embedder: ``Linear(e, c) - GELU(tanh) - Linear(c, c)`` (keys ``0.*`` and ``2.*``)."""
    return nn.Sequential(nn.Linear(text_dim, width, bias=bias), nn.GELU(approximate="tanh"),
                         nn.Linear(width, width, bias=bias))


class ConditionEmbedder:
    """Mixin for ``nn.Module`` generators that take a :class:`~vistok.interfaces.Conditioning`.

    Call :meth:`init_conditioning` in ``__init__`` (after ``nn.Module.__init__``).  It sets ``num_classes``,
    ``text_dim``, ``cond_dropout``, ``prefix_len`` (text slots: ``max_text_len`` for text models, else 0) and the
    parameters ``class_embed`` (or None), ``text_proj`` (or None), and the class-free start vector.  Weight init
    stays with each family (their official inits differ).
    """

    num_classes: int
    text_dim: int
    prefix_len: int
    cond_dropout: float
    class_embed: nn.Embedding | None
    text_proj: nn.Sequential | None

    def init_conditioning(self, width: int, *, num_classes: int = 0, text_dim: int = 0, max_text_len: int = 32,
                          cond_dropout: float = 0.1, null: Literal["row", "vector"] = "row", bos: bool = True,
                          text_bias: bool = True) -> None:
        """Build the condition parameters.

        Args:
            width: embedding width c.
            num_classes: class-conditional when > 0.
            text_dim: text-conditional when > 0 (dimension e of the text encoder's token states).
            max_text_len: text slots P of a text model.
            cond_dropout: probability of the null condition in training (classifier-free guidance).
            null: ``"row"`` (LlamaGen): the class table has ``num_classes + 1`` rows, the last one the null class.
                ``"vector"`` (MAR): ``num_classes`` rows plus a learned ``null_embed`` (c,), which is also the start
                vector of class-free models; classes and text then exclude each other.
            bos: with ``null="row"`` and no classes, learn the start vector ``bos`` (c,) (AR, NAR); False: ``bos`` is
                a fixed zero buffer (xAR).
            text_bias: biases in the text projection (NAR's ``cap_proj`` has none).
        """
        check_choice("null", null, ("row", "vector"), " ('row' = LlamaGen, 'vector' = MAR)")
        if null == "vector" and num_classes and text_dim:
            raise ValueError("give num_classes or text_dim, not both (MAR conditions on one of them)")
        self.num_classes, self.text_dim, self.cond_dropout = num_classes, text_dim, cond_dropout
        self.prefix_len = max_text_len if text_dim else 0
        self._null_row = null == "row"
        rows = num_classes + 1 if self._null_row else num_classes
        self.class_embed = nn.Embedding(rows, width) if num_classes else None
        self.text_proj = text_projection(text_dim, width, text_bias) if text_dim else None
        if not self._null_row:
            self.null_embed = nn.Parameter(torch.zeros(width))
        elif num_classes:
            self.bos = None
        elif bos:
            self.bos = nn.Parameter(torch.zeros(width))
        else:  # a fixed zero start vector; not persistent, so it adds no state-dict key
            self.register_buffer("bos", torch.zeros(width), persistent=False)

    # -- checks and dropout --------------------------------------------------------------------------------------
    def check_cond(self, cond: Conditioning) -> None:
        """Raise ``TypeError``/``ValueError`` if ``cond`` does not fit this model's conditioning."""
        check_conditioning(cond, num_classes=self.num_classes, text_dim=self.text_dim, max_text_len=self.prefix_len)

    def drop_condition(self, cond: Conditioning, generator: torch.Generator | None = None) -> Conditioning:
        """Replace each condition by the null condition with probability ``cond_dropout`` (training, for CFG)."""
        return drop_conditioning(cond, self.cond_dropout, generator)

    # -- embeddings ----------------------------------------------------------------------------------------------
    def condition_vector(self, cond: Conditioning) -> Tensor:
        """One vector per sample (b, c): the class embedding (label -1 = the null condition), or for class-free
        models the start vector (``bos``, ``null_embed`` or zeros).  It feeds token position 0 (``cache.start``)."""
        b = cond.batch_size
        if not self._null_row:
            null = self.null_embed.expand(b, -1)
            if self.class_embed is None:
                return null
            labels = cond.labels.to(null.device)
            return torch.where((labels >= 0)[:, None], self.class_embed(labels.clamp(min=0)), null)
        if self.class_embed is not None:
            labels = cond.labels.to(self.class_embed.weight.device)
            return self.class_embed(torch.where(labels < 0, self.num_classes, labels))
        return self.bos.expand(b, -1)

    @staticmethod
    def with_start(x: Tensor, positions: Tensor, cache: KVCache) -> Tensor:
        """Embedded inputs ``x`` (b, l, c) with ``cache.start`` (b, c) in place of the input at token position 0
        (``positions`` (b, l)): the input of position p is token p - 1, and position 0 reads the start vector."""
        return torch.where((positions == 0)[..., None], cache.start[:, None].to(x.dtype), x)

    def text_states(self, cond: Conditioning, length: int | None = None) -> Tensor:
        """Projected text (b, length, c): ``cond.text`` (b, t, e) zero-padded to ``length`` (default t) slots."""
        ref = self.text_proj[0].weight
        text = cond.text.to(device=ref.device, dtype=ref.dtype)
        return self.text_proj(F.pad(text, (0, 0, 0, (length or text.shape[1]) - text.shape[1])))

    def prefill_text(self, cond: Conditioning, cache: KVCache,
                     run: Callable[[Tensor, Tensor, Tensor], object]) -> None:
        """Write the text prefix into ``cache`` in one pass (no-op for models without text).

        Records the real prefix slots in ``cache.prefix_mask`` and calls ``run(x, slots, mask)`` with the projected
        prefix ``x`` (b, p, c), its cache ``slots`` (b, p) and the bool attention ``mask`` (b, 1, p, s): every slot
        sees the real prefix slots and itself, no token.  ``run`` pushes ``x`` through the family's blocks with
        its own position scheme (the cache writes happen there).
        """
        if not self.prefix_len:
            return
        x = self.text_states(cond, self.prefix_len)
        slots, mask = cache.prefill_layout(cond.text_mask.to(x.device))
        run(x, slots, mask)

    # -- the decoding and training plumbing of causal families (AR, NAR, MAR-AR, xAR) -----------------------------
    def new_kv_cache(self, cond: Conditioning, num_layers: int, max_tokens: int,
                     run: Callable[[Tensor, Tensor, Tensor, KVCache], object]) -> KVCache:
        """Check ``cond`` and allocate a :class:`KVCache` for its batch: ``num_layers`` layers, ``self.num_heads``
        heads of ``self.width // self.num_heads`` channels, ``prefix_len + max_tokens`` slots, on the parameters'
        device and dtype.  ``cache.start`` is :meth:`condition_vector`; the text prefix is written by
        :meth:`prefill_text` with ``run(x, slots, mask, cache)``."""
        self.check_cond(cond)
        ref = next(self.parameters())
        cache = KVCache(num_layers, cond.batch_size, self.num_heads, self.width // self.num_heads, self.prefix_len,
                        max_tokens, dtype=ref.dtype, device=ref.device)
        cache.start = self.condition_vector(cond)
        self.prefill_text(cond, cache, lambda x, slots, mask: run(x, slots, mask, cache))
        return cache

    def teacher_forced(self, tokens: Tensor, cond: Conditioning) -> Tensor:
        """``self.step`` over every position of ``tokens`` (b, n) ids or (b, n, d) vectors on a new cache, each input
        the token before it (position 0 reads the start vector); in training the condition is first dropped with
        probability ``cond_dropout``.  Returns what ``step`` returns for positions ``0 .. n - 1``."""
        if self.training and self.cond_dropout > 0:
            cond = self.drop_condition(cond)
        inputs = torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, :-1]], dim=1)
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand(len(tokens), -1)
        return self.step(inputs, positions, self.new_cache(cond))
