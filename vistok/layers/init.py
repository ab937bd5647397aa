"""Weight-init helpers: the official inits of LlamaGen-style AR/NAR, MAR and its DiffLoss head, xAR; and vistok's
routed-attention init for tiny from-scratch 1D tokenizers (TiTok, FlexTok, LARP)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def xavier_linears(module: nn.Module, *, skip: str | None = None, embedding_std: float | None = None) -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear`` inside ``module`` (MAE / MAR / xAR init), and
    N(0, ``embedding_std``) for every ``nn.Embedding`` when given (MAR); submodules named ``skip*`` are left alone."""
    for name, m in module.named_modules():
        if skip is not None and name.startswith(skip):
            continue
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding) and embedding_std is not None:
            nn.init.normal_(m.weight, std=embedding_std)


def llamagen_init(model: nn.Module, head: nn.Linear, std: float = 0.02) -> None:
    """LlamaGen's ``_init_weights``: N(0, std) weights and zero biases for every ``nn.Linear`` and ``nn.Embedding``,
    then a zero output ``head`` and, for a model with a learned start vector ``bos``, N(0, std) for it."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    nn.init.zeros_(head.weight)
    if isinstance(getattr(model, "bos", None), nn.Parameter):
        nn.init.normal_(model.bos, std=std)


@torch.no_grad()
def route_attention(attentions: Iterable[nn.Module], parts: Tensor, groups: Tensor, owner: Tensor, *,
                    groups_ask: bool, code_scale: float = 2.0) -> None:
    """Spatially routed attention at init (vistok's cure for the background-only plateau of tiny from-scratch
    1D tokenizers; an init only, the modules are unchanged).

    A 1D tokenizer's latent tokens start out attending uniformly to every patch, so they carry no per-image content
    and the decoder's patch queries cannot learn where to read: small CPU runs sit for thousands of steps at the
    "flat background" reconstruction.  This deals the ``P`` parts (patches) out to ``G`` groups (latent tokens,
    registers, queries): each part gets a random code, each group the rescaled sum of its parts' codes, written
    into the position tables -- the asking side in the first half of the channels, the answering side in the
    second -- and every attention gets ``W_q = [M, 0]``, ``W_k = [0, M]`` (``M`` orthonormal, one per layer).  At
    step 0 a group then attends to its own parts (``groups_ask=True``, an encoder) or each part to its group
    (``groups_ask=False``, a decoder), and tokens of one kind do not single each other out.  A group that owns no
    part (``owner`` never names it) gets a zero code, i.e. uniform attention: a global summary token.

    Args:
        attentions: modules with a packed ``qkv`` Linear (rows q, k, v) of width ``c``.
        parts: (P, c) position table of the parts, overwritten in place.
        groups: (G, c) position table of the groups, overwritten in place.
        owner: (P,) long, the group of each part.
        groups_ask: groups are the queries (encoder) or the keys (decoder).
        code_scale: norm scale of the codes (larger = sharper routing at init).
    """
    c = parts.shape[-1]
    if c % 2:
        raise ValueError("routed attention needs an even width")
    half = c // 2
    code = torch.randn(parts.shape[0], half) * code_scale  # one code per part
    group_code = torch.zeros(groups.shape[0], half).index_add_(0, owner, code)
    group_code *= code_scale / group_code.std(dim=-1, keepdim=True).clamp_min(1e-12)
    ask_side, answer_side = slice(0, half), slice(half, c)
    asking, answering = (groups, parts) if groups_ask else (parts, groups)
    ask_code, answer_code = (group_code, code) if groups_ask else (code, group_code)
    asking.zero_()[:, ask_side] = ask_code.to(asking)
    answering.zero_()[:, answer_side] = answer_code.to(answering)
    for attn in attentions:
        w = attn.qkv.weight  # (3c, c)
        m = torch.empty(c, half)
        nn.init.orthogonal_(m)
        w[: 2 * c].zero_()
        w[:c, ask_side] = m
        w[c : 2 * c, answer_side] = m
