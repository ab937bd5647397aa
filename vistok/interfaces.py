"""The contracts every vistok tokenizer, generator and decoder is written against.

Pixel convention (public, everywhere): float tensors in **[0, 1]**, ``(B, 3, H, W)`` for images and
``(B, 3, T, H, W)`` for video.  Tokens: ``(B, N)`` long ids for discrete tokenizers, ``(B, N, D)`` floats
for continuous ones.  Ordered 1D tokenizers also decode a prefix ``(B, K)``, ``1 <= K <= N``.

Generators are split into *what the network predicts* (``step``) and *how a sequence is decoded*
(free functions in :mod:`vistok.decoding`).  ``step`` works on an explicit, preallocated :class:`KVCache`
that decoders can truncate, which is how speculative decoders roll back rejected drafts.

Step convention (teacher forcing, shifted by one):
    ``step(inputs, positions, cache)`` returns, for every requested token position ``p``, the predictive
    quantity of token ``p`` (logits ``(B, L, V)`` for ``kind == "discrete"``).  ``inputs[b, j]`` is the token
    at position ``positions[b, j] - 1`` (its value is ignored where the position is 0: the generator's start
    embedding is used).  The cache entry at position ``p`` is (re)written by that call; entries at
    positions ``>= cache.lengths`` are invalid and never attended to.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Conditioning",
    "Configurable",
    "Generator",
    "GeneratorOutput",
    "KVCache",
    "Tokenizer",
    "TokenizerOutput",
    "check_pixels",
    "check_token_ids",
]


# --------------------------------------------------------------------------------------------------------------
# Models remember their constructor kwargs (written to config.json by vistok.hub)
# --------------------------------------------------------------------------------------------------------------
class Configurable:
    """Mixin: records the keyword arguments ``__init__`` was called with in ``self.config``.

    Subclasses must be constructed with keyword arguments only (LightningCLI and the registry do this).
    """

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        def wrapped(self, *args, __init=init, **kwargs):
            if args:
                raise TypeError(f"{cls.__name__} takes keyword arguments only, got {len(args)} positional")
            if type(self) is cls:
                object.__setattr__(self, "_config", dict(kwargs))
            __init(self, **kwargs)

        wrapped.__signature__ = __import__("inspect").signature(init)
        wrapped.__doc__, wrapped.__name__, wrapped.__qualname__ = init.__doc__, init.__name__, init.__qualname__
        wrapped.__wrapped__ = init
        cls.__init__ = wrapped

    @property
    def config(self) -> dict:
        """Constructor kwargs (explicitly given ones; defaults are re-applied on load)."""
        return dict(getattr(self, "_config", {}))


# --------------------------------------------------------------------------------------------------------------
# Input validation shared by every public entry point
# --------------------------------------------------------------------------------------------------------------
def check_pixels(pixels: Tensor, *, video: bool | None = None, size: int | tuple[int, int] | None = None) -> None:
    """Validate the public pixel convention: float in [0, 1], ``(B, 3, H, W)`` or ``(B, 3, T, H, W)``, ``B >= 1``.

    Any floating dtype passes (float16 / bfloat16 / float32 / float64): models cast pixels to their own dtype
    in ``encode``.  Empty batches (``B == 0``) are refused rather than returning an empty result.

    Raises:
        TypeError: not a floating-point tensor.
        ValueError: wrong rank / channel count / resolution, empty batch, NaN or inf, or values outside [0, 1].
    """
    if not isinstance(pixels, Tensor):
        raise TypeError(f"pixels must be a torch.Tensor, got {type(pixels).__name__}")
    if not pixels.is_floating_point():
        hint = "for uint8 images use `pixels.float() / 255`" if pixels.dtype == torch.uint8 else "use `pixels.float()`"
        raise TypeError(f"pixels must be a float tensor in [0, 1], got dtype {pixels.dtype}; {hint}")
    ranks = {None: (4, 5), True: (5,), False: (4,)}[video]
    if pixels.ndim not in ranks:
        layout = {4: "(B, 3, H, W)", 5: "(B, 3, T, H, W)"}
        want = " or ".join(layout[r] for r in ranks)
        hint = " (add a batch axis with `pixels[None]`)" if pixels.ndim == min(ranks) - 1 else ""
        raise ValueError(f"pixels must have shape {want}, got {tuple(pixels.shape)}{hint}")
    if pixels.shape[1] != 3:
        raise ValueError(
            f"pixels must have 3 channels on axis 1, got shape {tuple(pixels.shape)}; "
            "channels-last images need `pixels.permute(0, 3, 1, 2)`"
        )
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(pixels.shape[-2:]) != hw:
            raise ValueError(
                f"this model takes {hw[0]}x{hw[1]} images, got {pixels.shape[-2]}x{pixels.shape[-1]}; "
                f"resize with `torch.nn.functional.interpolate(pixels, size={hw}, mode='bilinear', antialias=True)`"
            )
    check_nonempty(pixels.shape[0], "pixels", "images")
    check_finite(pixels, "pixels", "torch.nan_to_num(pixels, nan=0.0, posinf=1.0, neginf=0.0)")
    lo, hi = float(pixels.min()), float(pixels.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"pixels must lie in [0, 1], got values in [{lo:.3f}, {hi:.3f}]; "
            "images in [-1, 1] need `(pixels + 1) / 2`, uint8-scaled ones `pixels / 255`"
        )


def check_nonempty(batch: int, name: str, what: str) -> None:
    """ValueError for an empty batch (``batch == 0``): vistok refuses empty batches everywhere."""
    if batch == 0:
        raise ValueError(f"empty batch: {name} holds 0 {what}; pass at least one (batch axis B >= 1)")


def check_finite(x: Tensor, name: str, fix: str) -> None:
    """ValueError unless every value of the float tensor ``x`` is finite (one device sync)."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contain {bad} NaN/inf value(s); fix the source or clean them with `{fix}`")


def check_integer(ids: Tensor, name: str) -> None:
    """TypeError unless ``ids`` is an integer (not bool, float or complex) tensor."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer ids, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (torch.long), got dtype {ids.dtype}; "
                        "convert whole-number ids with `.long()`")


def check_token_ids(tokens: Tensor, codebook_size: int, num_tokens: int, *, allow_prefix: bool) -> None:
    """Validate discrete token ids ``(B, K)``, ``B >= 1``, against a codebook and a token count.

    Raises:
        TypeError: not an integer tensor (float, bool and complex ids are refused).
        ValueError: wrong rank or length, empty batch, or ids outside ``[0, codebook_size)``.
    """
    check_integer(tokens, "token ids")
    if tokens.ndim != 2:
        hint = " (add a batch axis with `tokens[None]`)" if tokens.ndim == 1 else ""
        raise ValueError(f"token ids must have shape (B, N), got {tuple(tokens.shape)}{hint}")
    check_nonempty(tokens.shape[0], "token ids", "sequences")
    k = tokens.shape[1]
    if allow_prefix:
        if not 1 <= k <= num_tokens:
            raise ValueError(f"prefix length must be in [1, {num_tokens}], got {k}")
    elif k != num_tokens:
        raise ValueError(
            f"this tokenizer decodes exactly {num_tokens} tokens, got {k} "
            "(it was not trained with tail-token drop, so prefixes are not supported)"
        )
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= codebook_size:
        raise ValueError(
            f"token ids must be in [0, {codebook_size - 1}], got range [{lo}, {hi}]: "
            "were they made by a model with this codebook?"
        )


# --------------------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------------------
@dataclass
class TokenizerOutput:
    """What a tokenizer's training ``forward`` returns.

    Attributes:
        reconstruction: decoded pixels in [0, 1] (unclamped during training), same shape as the input.
        tokens: ``(B, N)`` ids or ``(B, N, D)`` continuous tokens.
        loss: quantizer / KL loss to add to the reconstruction loss (scalar).
        extras: anything family-specific (e.g. ``{"commitment": ..., "codebook": ...}``).
    """

    reconstruction: Tensor
    tokens: Tensor
    loss: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


@runtime_checkable
class Tokenizer(Protocol):
    """pixels -> tokens -> pixels.  ``encode``/``decode`` are the only verbs."""

    kind: Literal["discrete", "continuous"]
    num_tokens: int
    codebook_size: int | None
    token_dim: int
    image_size: int

    def encode(self, pixels: Tensor) -> Tensor: ...  # (B,3,H,W)|(B,3,T,H,W) -> (B,N) long | (B,N,D) float

    def decode(self, tokens: Tensor) -> Tensor: ...  # (B,K<=N)|(B,K,D) -> pixels in [0, 1]


# --------------------------------------------------------------------------------------------------------------
# Conditioning and cache
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Conditioning:
    """A batch of generation conditions: class labels, text token states, or neither.

    Attributes:
        labels: ``(B,)`` long class ids; ``-1`` means "no class" (the null condition for CFG).
        text: ``(B, T, D)`` text-encoder token states.
        text_mask: ``(B, T)`` bool, True where ``text`` holds a real token.  All False = null condition.
        batch: batch size of an unconditional batch (no labels, no text).
    """

    labels: Tensor | None = None
    text: Tensor | None = None
    text_mask: Tensor | None = None
    batch: int | None = None

    def __post_init__(self) -> None:
        """Types and shapes only (no device sync); value ranges are checked by :func:`check_conditioning`."""
        sizes = []
        if self.labels is not None:
            check_integer(self.labels, "labels")
            if self.labels.ndim != 1:
                raise ValueError(f"labels must have shape (B,), got {tuple(self.labels.shape)}")
            sizes.append(("labels", self.labels.shape[0]))
        if self.text is not None:
            if not isinstance(self.text, Tensor) or not self.text.is_floating_point():
                raise TypeError("text must be a float tensor (B, T, D) of text-encoder states, got "
                                f"{getattr(self.text, 'dtype', type(self.text).__name__)}; "
                                "encode prompts with vistok.text.MiniLMTextEncoder")
            if self.text.ndim != 3:
                raise ValueError(f"text must have shape (B, T, D), got {tuple(self.text.shape)}")
            if self.text_mask is None:
                self.text_mask = torch.ones(self.text.shape[:2], dtype=torch.bool, device=self.text.device)
            sizes.append(("text", self.text.shape[0]))
        if self.text_mask is not None:
            if self.text is None:
                raise ValueError("text_mask given without text: pass Conditioning(text=..., text_mask=...)")
            if not isinstance(self.text_mask, Tensor) or self.text_mask.dtype != torch.bool:
                raise TypeError("text_mask must be a bool tensor (B, T), got "
                                f"{getattr(self.text_mask, 'dtype', type(self.text_mask).__name__)}; "
                                "convert a 0/1 attention mask with `.bool()`")
            if tuple(self.text_mask.shape) != tuple(self.text.shape[:2]):
                raise ValueError(f"text_mask must have shape (B, T) = {tuple(self.text.shape[:2])} like text, got "
                                 f"{tuple(self.text_mask.shape)}")
        if self.batch is not None:
            if isinstance(self.batch, bool) or not isinstance(self.batch, int):
                raise TypeError(f"batch must be an int (the number of unconditional samples), got {self.batch!r}")
            if self.batch < 0:
                raise ValueError(f"batch must be >= 1, got {self.batch}")
            if not sizes:
                sizes.append(("batch", self.batch))
        if len({b for _, b in sizes}) > 1:
            raise ValueError("labels and text disagree on the batch size: "
                             + ", ".join(f"{n} has {b}" for n, b in sizes))
        if sizes:
            check_nonempty(sizes[0][1], sizes[0][0], "conditions")

    @property
    def batch_size(self) -> int:
        for t in (self.labels, self.text):
            if t is not None:
                return t.shape[0]
        if self.batch is None:
            raise ValueError("empty Conditioning: give labels=, text=, or batch= (unconditional)")
        return self.batch

    def null(self) -> Conditioning:
        """The unconditional counterpart (same shapes), used for classifier-free guidance."""
        return Conditioning(
            labels=None if self.labels is None else torch.full_like(self.labels, -1),
            text=None if self.text is None else torch.zeros_like(self.text),
            text_mask=None if self.text_mask is None else torch.zeros_like(self.text_mask),
            batch=self.batch,
        )

    def repeat_interleave(self, n: int) -> Conditioning:
        """Each condition ``n`` times in a row: ``(B, ...) -> (B * n, ...)``."""
        rep = lambda t: None if t is None else t.repeat_interleave(n, dim=0)
        return Conditioning(rep(self.labels), rep(self.text), rep(self.text_mask),
                            None if self.batch is None else self.batch * n)

    def cat(self, other: Conditioning) -> Conditioning:
        """Concatenate along the batch axis (used to stack cond and null for CFG)."""
        cat = lambda a, b: None if a is None else torch.cat([a, b], dim=0)
        return Conditioning(cat(self.labels, other.labels), cat(self.text, other.text),
                            cat(self.text_mask, other.text_mask),
                            None if self.batch is None else self.batch + other.batch_size)

    def to(self, device: torch.device | str) -> Conditioning:
        mv = lambda t: None if t is None else t.to(device)
        return replace(self, labels=mv(self.labels), text=mv(self.text), text_mask=mv(self.text_mask))


def check_conditioning(cond: Conditioning, *, num_classes: int, text_dim: int, max_text_len: int) -> None:
    """Validate ``cond`` for a generator built with these sizes (shared by every generator family).

    Raises:
        TypeError: not a Conditioning.
        ValueError: the condition the generator needs is missing, or labels / text states do not fit it.
    """
    if not isinstance(cond, Conditioning):
        raise TypeError(f"cond must be a vistok.Conditioning, got {type(cond).__name__}")
    if num_classes and cond.labels is None:
        raise ValueError("this generator is class-conditional: pass Conditioning(labels=...) "
                         f"with ids in [0, {num_classes - 1}] (-1 = null class)")
    if text_dim and cond.text is None:
        raise ValueError("this generator is text-conditional: pass Conditioning(text=..., text_mask=...) "
                         "from vistok.text.MiniLMTextEncoder")
    if cond.labels is not None:
        if not num_classes:
            raise ValueError("labels given to a generator built with num_classes=0; pass Conditioning(batch=B) "
                             "(unconditional) or text=, whichever the generator was trained with")
        lo, hi = int(cond.labels.min()), int(cond.labels.max())
        if hi >= num_classes or lo < -1:
            raise ValueError(f"class labels must be in [-1, {num_classes - 1}] (-1 = null), got [{lo}, {hi}]")
    if cond.text is not None:
        if not text_dim:
            raise ValueError("text given to a generator built with text_dim=0; pass Conditioning(batch=B) "
                             "(unconditional) or labels=, whichever the generator was trained with")
        if cond.text.shape[-1] != text_dim or cond.text.shape[1] > max_text_len:
            raise ValueError(f"text states must be (B, T <= {max_text_len}, {text_dim}), got "
                             f"{tuple(cond.text.shape)}")
        check_finite(cond.text, "text states", "torch.nan_to_num(text)")


def drop_conditioning(cond: Conditioning, p: float, generator: torch.Generator | None = None) -> Conditioning:
    """Replace each sample's condition by the null condition with probability ``p`` (training, for CFG):
    labels become -1, text masks become all-False."""
    device = generator.device if generator is not None else "cpu"
    drop = torch.rand(cond.batch_size, generator=generator, device=device) < p
    labels = None if cond.labels is None else torch.where(drop.to(cond.labels.device), -1, cond.labels)
    mask = None if cond.text_mask is None else cond.text_mask & ~drop.to(cond.text_mask.device)[:, None]
    return Conditioning(labels, cond.text, mask, cond.batch)

class KVCache:
    """Preallocated key/value buffers for every layer, written at explicit slots, truncatable.

    Layout: ``k[layer]``/``v[layer]`` are ``(B, H, S, Dh)`` where ``S = prefix_len + max_tokens``.  Slot
    ``prefix_len + p`` holds the entry of token position ``p``.  ``lengths`` ``(B,)`` counts valid *token*
    positions per sample; ``truncate`` only moves that pointer, so rolling back rejected drafts is free.

    Attributes:
        prefix_mask: ``(B, prefix_len)`` bool, which prefix slots (e.g. text tokens) are real.
        start: ``(B, D)`` the input embedding for token position 0 (set by the generator).
        group: how many stacked copies of the user's batch the cache holds (2 under CFG).
    """

    def __init__(self, num_layers: int, batch_size: int, num_heads: int, head_dim: int, prefix_len: int,
                 max_tokens: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (batch_size, num_heads, prefix_len + max_tokens, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.prefix_len = prefix_len
        self.max_tokens = max_tokens
        self.prefix_mask = torch.ones(batch_size, prefix_len, dtype=torch.bool, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.start: Tensor | None = None
        self.group = 1  # stacked copies of the batch (2 under classifier-free guidance)

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    def prefill_layout(self, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Record which of the ``T <= prefix_len`` prefix slots are real (``text_mask`` ``(B, T)``, padded with
        False) and return the ``slots`` ``(B, prefix_len)`` and attention ``mask`` ``(B, 1, prefix_len, S)`` for
        writing the prefix in one pass: each slot sees the real prefix slots and itself, no tokens."""
        p = self.prefix_len
        self.prefix_mask = F.pad(text_mask, (0, p - text_mask.shape[1]), value=False)
        slots = torch.arange(p, device=text_mask.device).expand(len(text_mask), -1)
        eye = torch.eye(p, dtype=torch.bool, device=text_mask.device)
        mask = F.pad(self.prefix_mask[:, None, :] | eye, (0, self.max_tokens))[:, None]
        return slots, mask

    def truncate(self, lengths: int | Tensor) -> None:
        """Keep only token positions ``< lengths`` (an int, or ``(B,)`` per sample).

        A cache holding ``group`` stacked copies of the batch (CFG: cond, then null) accepts ``(B / group,)``.
        """
        new = torch.as_tensor(lengths, device=self.lengths.device)
        if new.ndim == 1 and new.numel() * self.group == self.batch_size:
            new = new.repeat(self.group)
        new = new.expand_as(self.lengths)
        if bool((new < 0).any()) or bool((new > self.lengths).any()):
            raise ValueError(f"cannot truncate cache of lengths {self.lengths.tolist()} to {new.tolist()}")
        self.lengths = new.clone()

    def write(self, layer: int, k: Tensor, v: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k, v`` ``(B, H, L, Dh)`` at ``slots`` ``(B, L)`` and return the full buffers of ``layer``."""
        idx = slots[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[-1])
        k, v = k.to(self.k[layer].dtype), v.to(self.v[layer].dtype)
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):  # training: keep autograd history
            self.k[layer] = self.k[layer].scatter(2, idx, k)
            self.v[layer] = self.v[layer].scatter(2, idx, v)
        else:  # decoding: write in place into the preallocated buffer
            self.k[layer].scatter_(2, idx, k)
            self.v[layer].scatter_(2, idx, v)
        return self.k[layer], self.v[layer]

    def attention_mask(self, positions: Tensor) -> Tensor:
        """Boolean mask ``(B, 1, L, S)``: token queries at ``positions`` see valid prefix slots and
        token slots ``<= position`` below the cache length (after this step's writes)."""
        b, s = positions.shape[0], self.k[0].shape[2]
        slot = torch.arange(s, device=positions.device)
        tok = slot - self.prefix_len  # token position of each slot (negative for prefix)
        valid_len = torch.maximum(self.lengths, positions.max(dim=1).values + 1)  # (B,)
        seen = (tok[None, None, :] <= positions[:, :, None]) & (tok[None, None, :] < valid_len[:, None, None])
        seen &= tok[None, None, :] >= 0
        prefix = torch.zeros(b, s, dtype=torch.bool, device=positions.device)
        prefix[:, : self.prefix_len] = self.prefix_mask
        return (seen | prefix[:, None, :])[:, None]

    def advance(self, positions: Tensor) -> None:
        """Record that token positions up to ``positions.max(1)`` now hold entries."""
        self.lengths = torch.maximum(self.lengths, positions.max(dim=1).values + 1)

    def clone(self) -> KVCache:
        new = object.__new__(KVCache)
        new.__dict__.update(self.__dict__)
        new.k = [t.clone() for t in self.k]
        new.v = [t.clone() for t in self.v]
        new.prefix_mask, new.lengths = self.prefix_mask.clone(), self.lengths.clone()
        return new


# --------------------------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------------------------
@dataclass
class GeneratorOutput:
    """What a generator's training ``forward`` returns: ``loss`` plus per-position predictions."""

    loss: Tensor
    logits: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)


@runtime_checkable
class Generator(Protocol):
    """Tokens from conditions.  Training: ``forward``; decoding: ``new_cache`` then ``step``.

    ``kind == "discrete"``: ``step`` returns logits ``(B, L, vocab_size)``.
    ``kind == "continuous"``: ``step`` returns head conditioning vectors; the generator's ``head`` samples.
    """

    kind: Literal["discrete", "continuous"]
    seq_len: int
    vocab_size: int | None
    is_causal: bool

    def forward(self, tokens: Tensor, cond: Conditioning) -> GeneratorOutput: ...

    def new_cache(self, cond: Conditioning, max_tokens: int | None = None) -> KVCache: ...

    def step(self, inputs: Tensor, positions: Tensor, cache: KVCache) -> Tensor: ...
