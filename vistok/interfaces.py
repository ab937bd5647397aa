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

import inspect
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Conditioning",
    "Configurable",
    "CausalGenerator",
    "CellGenerator",
    "Generator",
    "GeneratorOutput",
    "HasPaths",
    "MaskedGenerator",
    "NeighbourGenerator",
    "PathDensity",
    "TokenEmbeddings",
    "TokenHead",
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
    """Mixin: records every constructor argument in ``self.config``, defaults included.

    ``config`` is the full bound signature of ``__init__`` (``inspect.signature(...).bind`` + ``apply_defaults``)
    with tuples turned into lists, so it is JSON-ready and a saved folder rebuilds the same model even after a
    default changes.  Subclasses must be constructed with keyword arguments only (LightningCLI and the registry do
    this).
    """

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        def wrapped(self, *args, __init=init, **kwargs):
            if args:
                raise TypeError(f"{cls.__name__} takes keyword arguments only, got {len(args)} positional")
            if "_config" not in self.__dict__:  # the outermost wrapped __init__ records (a subclass's own)
                bound = signature.bind(self, **kwargs)  # TypeError on unknown kwargs, like the call itself
                bound.apply_defaults()
                object.__setattr__(self, "_config", _bound_config(bound))
            __init(self, **kwargs)

        wrapped.__signature__ = signature
        wrapped.__doc__, wrapped.__name__, wrapped.__qualname__ = init.__doc__, init.__name__, init.__qualname__
        wrapped.__wrapped__ = init
        cls.__init__ = wrapped

    @property
    def config(self) -> dict:
        """Every constructor argument (given or default), JSON-ready: tuples are lists."""
        return _json_ready(getattr(self, "_config", {}))


def _bound_config(bound: inspect.BoundArguments) -> dict:
    """``{name: value}`` of a bound ``__init__`` call without ``self``; ``**kwargs`` are flattened in."""
    out = {}
    for i, (name, value) in enumerate(bound.arguments.items()):
        kind = bound.signature.parameters[name].kind
        if i == 0:  # self
            continue
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            out[name] = value
    return _json_ready(out)


def _json_ready(value):
    """Tuples -> lists, recursively through lists and dicts (other values are returned as they are)."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


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
    if not validating():  # value checks read the tensor on the host: eager mode only
        return
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
    if not validating():  # the range check reads the ids on the host: eager mode only
        return
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= codebook_size:
        raise ValueError(
            f"token ids must be in [0, {codebook_size - 1}], got range [{lo}, {hi}]: "
            "were they made by a model with this codebook?"
        )


def check_generator_tokens(tokens: Tensor, *, seq_len: int | None, vocab_size: int | None = None,
                           token_dim: int | None = None, layout: str | None = None) -> None:
    """Validate a generator's tokens: ``(B, seq_len)`` ids in ``[0, vocab_size)`` when ``vocab_size`` is given, else
    ``(B, seq_len, token_dim)`` floats (``seq_len`` None: any length).  ``layout`` describes the expected shape in
    the error message (default ``(B, N)`` / ``(B, N, D)``)."""
    if not isinstance(tokens, Tensor):
        raise TypeError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
    n = "L" if seq_len is None else seq_len
    if vocab_size:
        if tokens.is_floating_point():
            raise TypeError(f"this generator models discrete token ids; got a {tokens.dtype} tensor (continuous "
                            "tokens need a continuous generator such as MAR)")
        if tokens.ndim != 2 or tokens.shape[1] != (seq_len or tokens.shape[1]):
            raise ValueError(f"tokens must have shape {layout or f'(B, {n})'}, got {tuple(tokens.shape)}: was the "
                             "generator built for this tokenizer's token count?")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
            raise ValueError(f"token ids must be in [0, {vocab_size - 1}], got [{int(tokens.min())}, "
                             f"{int(tokens.max())}]: was the generator built for this tokenizer's codebook?")
        return
    if not tokens.is_floating_point():
        raise TypeError(f"this generator models continuous tokens (B, {n}, {token_dim}) floats, got a {tokens.dtype} "
                        "tensor; discrete token ids need a discrete generator such as ARGenerator")
    if tokens.ndim != 3 or tokens.shape[1] != (seq_len or tokens.shape[1]) or tokens.shape[2] != token_dim:
        raise ValueError(f"tokens must have shape {layout or f'(B, {n}, {token_dim})'}, got {tuple(tokens.shape)}")


def check_choice(name: str, value, choices: tuple, hint: str = "") -> None:
    """ValueError unless ``value`` is one of ``choices`` (an option of a constructor or a decoder)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}{hint}, got {value!r}")


def check_count(name: str, value, low: int = 1, hint: str = "") -> None:
    """ValueError unless ``value`` is an int (not a bool) ``>= low`` (window sizes, step and sample counts)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}{hint}, got {value!r}")


#: run the per-pass value checks on accelerator tensors too (each one waits for the device; for debugging)
CHECK_VALUES_ON_DEVICE = False


def validating(tensor: Tensor | None = None) -> bool:
    """Whether value checks that read tensors on the host (``.item()``, ``bool(tensor)``) should run.

    Never inside ``torch.compile`` (they would break the graph).  Checks made once per call pass no ``tensor`` and run
    in eager mode everywhere.  Checks made on every decoding pass pass the tensor they read: they run when it is on
    the CPU (a host read costs nothing there) and skip on an accelerator, where each read waits for the device's
    queue and would serialise launching and running every pass, unless :data:`CHECK_VALUES_ON_DEVICE` is set.
    Shape checks need no such guard."""
    if torch.compiler.is_compiling():
        return False
    return tensor is None or tensor.device.type == "cpu" or CHECK_VALUES_ON_DEVICE


def check_positions(positions: Tensor, high: int) -> None:
    """Raise ``ValueError`` unless every entry of ``positions`` lies in ``[0, high)`` (a per-pass check: skipped
    under compile and on accelerators, see :func:`validating`)."""
    if validating(positions) and positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= high):
        raise ValueError(f"positions must be in [0, {high - 1}], got [{int(positions.min())}, {int(positions.max())}]")


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
        TypeError: not a Conditioning, or labels that are not integer ids.
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
        if not isinstance(cond.labels, Tensor) or cond.labels.is_floating_point() or cond.labels.dtype == torch.bool:
            got = cond.labels.dtype if isinstance(cond.labels, Tensor) else type(cond.labels).__name__
            raise TypeError(f"labels must be an integer tensor of class ids, got {got}; use `labels.long()` "
                            "(or torch.tensor([3, 7]))")
        if cond.labels.ndim != 1:
            raise ValueError(f"labels must have shape (B,), one class id per sample, got {tuple(cond.labels.shape)}"
                             "; flatten with `labels.view(-1)` or pick one id per sample (not one-hot)")
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
    if not isinstance(cond, Conditioning):
        raise TypeError(f"cond must be a vistok.Conditioning, got {type(cond).__name__}")
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
        visible: None, or ``(B, max_tokens, max_tokens)`` bool set by a decoder to narrow causal attention: a query
            at token position ``p`` then also needs ``visible[b, p, t]`` to see token slot ``t`` (row-parallel
            Jacobi hides other rows' drafts this way).  Prefix slots are not affected.
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
        self.visible: Tensor | None = None

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
        Speculative decoders call this on every pass: the range check is a per-pass one (:func:`validating`).
        """
        new = torch.as_tensor(lengths, device=self.lengths.device)
        if new.ndim == 1 and new.numel() * self.group == self.batch_size:
            new = new.repeat(self.group)
        new = new.expand_as(self.lengths)
        if validating(new) and (bool((new < 0).any()) or bool((new > self.lengths).any())):
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
        token slots ``<= position`` below the cache length (after this step's writes) and, when set, ``visible``."""
        tok = torch.arange(self.max_tokens, device=positions.device)  # token position of each token slot
        valid_len = torch.maximum(self.lengths, positions.max(dim=1).values + 1)  # (B,)
        seen = (tok <= positions[:, :, None]) & (tok < valid_len[:, None, None])
        if self.visible is not None:  # a decoder's narrower view per query position
            seen = seen & self.visible.gather(1, positions[..., None].expand(-1, -1, self.max_tokens))
        return self.with_prefix(seen)

    def with_prefix(self, seen: Tensor) -> Tensor:
        """The attention mask ``(B, 1, L, S)`` of queries that see the real prefix slots and the token slots where
        ``seen`` ``(B, L, max_tokens)`` is True."""
        return torch.cat([self.prefix_mask[:, None].expand(-1, seen.shape[1], -1), seen], dim=-1)[:, None]

    def advance(self, positions: Tensor) -> None:
        """Record that token positions up to ``positions.max(1)`` now hold entries."""
        self.lengths = torch.maximum(self.lengths, positions.max(dim=1).values + 1)

    def take_rows(self, index: Tensor) -> None:
        """Row ``i`` becomes a copy of row ``index[i]`` (``index`` (B,) long) in every per-sample buffer: the key/value
        buffers, ``lengths``, ``prefix_mask``, ``start``, ``visible`` and any tensor a generator attached whose leading
        axis is the batch.  Used by decoders that run several candidate continuations of one sample as rows."""
        b = self.batch_size
        if index.shape != (b,):
            raise ValueError(f"take_rows needs one source row per row, shape ({b},), got {tuple(index.shape)}")
        self.k = [t.index_select(0, index) for t in self.k]
        self.v = [t.index_select(0, index) for t in self.v]
        for name, value in list(vars(self).items()):
            if isinstance(value, Tensor) and value.ndim and value.shape[0] == b:
                setattr(self, name, value.index_select(0, index))

    def clone(self) -> KVCache:
        new = object.__new__(KVCache)
        new.__dict__.update(self.__dict__)
        new.k = [t.clone() for t in self.k]
        new.v = [t.clone() for t in self.v]
        new.prefix_mask, new.lengths = self.prefix_mask.clone(), self.lengths.clone()
        new.visible = None if self.visible is None else self.visible.clone()
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
    """What every generator family has: a training ``forward`` and the sizes decoders and pipelines read.

    ``kind == "discrete"``: tokens are ``(B, N)`` ids in ``[0, vocab_size)``.  ``kind == "continuous"``: tokens are
    ``(B, N, token_dim)`` floats.  A generator with ``num_classes`` or ``text_dim`` has a null condition
    (``Conditioning.null()``), which is what classifier-free guidance needs.  ``default_decoder`` names the decoder
    ``vistok.decoding.generate`` uses when none is given.
    """

    kind: Literal["discrete", "continuous"]
    seq_len: int
    num_classes: int
    text_dim: int
    default_decoder: str

    def forward(self, tokens: Tensor, cond: Conditioning) -> GeneratorOutput: ...


# Decoder-facing protocols: one per decoding family.  Decoders in vistok.decoding are typed against these and
# never import a model family.  Classifier-free guidance is never inside a generator: a decoder runs the
# conditional and null batches stacked (``Conditioning.cat(cond.null())``, conditional first) through the same
# calls and mixes the outputs (vistok.decoding.guidance.Guidance).


@runtime_checkable
class CausalGenerator(Protocol):
    """Token-by-token generators with a truncatable cache (AR, MAR-AR, the toy random-order AR).

    ``step(inputs, positions, cache)`` returns, for every requested position ``p`` (``positions`` ``(B, L)``), the
    prediction of token ``p`` given the tokens before it: logits ``(B, L, vocab_size)`` (discrete) or the per-token
    condition ``z`` ``(B, L, C)`` of its ``head`` (continuous).  ``inputs`` holds the token at ``p - 1``
    (``(B, L)`` ids or ``(B, L, D)`` vectors; ignored at ``p = 0``).  See the module docstring for the cache rules.
    """

    kind: Literal["discrete", "continuous"]
    seq_len: int
    is_causal: bool

    def new_cache(self, cond: Conditioning, max_tokens: int | None = None) -> KVCache: ...

    def step(self, inputs: Tensor, positions: Tensor, cache: KVCache) -> Tensor: ...


@runtime_checkable
class NeighbourGenerator(Protocol):
    """Next-neighbour generators over an ``(H, W)`` grid (NAR), decoded one anti-diagonal per pass.

    ``step_heads(inputs, positions, cache) -> (right, down)``: ``inputs`` ``(B, L)`` are grid tokens at
    ``positions - 1`` (position 0 is the start slot); ``right`` ``(B, L, V)`` predicts each fed token's right
    neighbour, ``down`` ``(B, L, V)`` its lower neighbour (None for a one-row grid).
    """

    grid: tuple[int, int]

    def new_cache(self, cond: Conditioning, max_tokens: int | None = None) -> KVCache: ...

    def step_heads(self, inputs: Tensor, positions: Tensor, cache: KVCache) -> tuple[Tensor, Tensor | None]: ...


@runtime_checkable
class TokenHead(Protocol):
    """A per-token sampler ``p(x | z)`` of continuous tokens (MAR's DiffLoss head).

    ``sample(z (R, C), z_null=(R, C) | None, cfg_scale=float | (R,), temperature=, generator=, noise=,
    num_steps=None | int) -> (R, D)``; guidance is applied inside the sampler (on eps for a diffusion head);
    ``num_steps`` overrides ``num_sampling_steps`` for one call (diffusion step annealing).
    """

    token_dim: int
    num_sampling_steps: int

    def sample(self, z: Tensor, **kwargs) -> Tensor: ...


@runtime_checkable
class PathDensity(Protocol):
    """A head sampler whose sampling *paths* have a tractable density (what continuous speculative decoding needs).

    Paths are ``(path_len, R, D)`` (the token last); ``path_noise(R, generator)`` draws every Gaussian of ``R``
    paths; ``path_sample(z, z_null, cfg_scale, temperature, noise) -> (path, log_density (R,), last_std (R, D))``;
    ``path_log_prob(path, z, z_null, cfg_scale, temperature) -> (R,)``.
    """

    path_len: int

    def path_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...

    def path_sample(self, z: Tensor, z_null: Tensor | None, cfg_scale: float, temperature: float,
                    noise: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...

    def path_log_prob(self, path: Tensor, z: Tensor, z_null: Tensor | None, cfg_scale: float,
                      temperature: float) -> Tensor: ...


@runtime_checkable
class HasPaths(Protocol):
    """A head that exposes its sampler's path densities: ``paths(final_noise=..., num_steps=None) -> PathDensity``."""

    def paths(self, *, final_noise: bool, num_steps: int | None = None) -> PathDensity: ...


@runtime_checkable
class MaskedGenerator(Protocol):
    """Bidirectional masked generators over continuous tokens (MAR): ``predict(tokens (B, N, D), mask (B, N) bool,
    True = unknown, cond) -> z (B, N, C)``, the head conditions of every position given the known tokens;
    ``check_cond(cond)`` validates a batch of conditions."""

    seq_len: int
    token_dim: int
    head: TokenHead

    def check_cond(self, cond: Conditioning) -> None: ...

    def predict(self, tokens: Tensor, mask: Tensor, cond: Conditioning) -> Tensor: ...


@runtime_checkable
class CellGenerator(Protocol):
    """Cell-autoregressive flow generators (xAR): ``num_cells`` cells of ``cell_tokens`` tokens, generated in order.

    ``step(inputs (B, L, D), positions, cache, t) -> velocity (B, L, D)`` for whole cells at cell-major positions
    with per-cell times ``t``; ``to_raster`` maps cell-major tokens back to raster order.
    """

    num_cells: int
    cell_tokens: int
    token_dim: int

    def new_cache(self, cond: Conditioning, max_tokens: int | None = None) -> KVCache: ...

    def step(self, inputs: Tensor, positions: Tensor, cache: KVCache, t: Tensor | float | None = None) -> Tensor: ...

    def to_raster(self, tokens: Tensor) -> Tensor: ...


@runtime_checkable
class TokenEmbeddings(Protocol):
    """Optional: a discrete generator's ``(V, D)`` input embedding table (GSD / LANTERN use it as token latents)."""

    def token_embeddings(self) -> Tensor: ...
