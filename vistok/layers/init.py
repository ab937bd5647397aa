"""Weight-init helpers shared by the families whose official code uses them (LlamaGen-style AR/NAR, MAR and its
DiffLoss head, xAR)."""

from __future__ import annotations

from torch import nn


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
