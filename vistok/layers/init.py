"""Weight-init helpers shared by the families whose official code uses them (LlamaGen-style AR/NAR, MAR's DiffLoss
head, xAR)."""

from __future__ import annotations

from torch import nn


def xavier_linears(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear`` inside ``module`` (MAE / MAR / xAR init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def normal_linears_and_embeddings(module: nn.Module, std: float = 0.02) -> None:
    """N(0, std) weights for every ``nn.Linear`` and ``nn.Embedding`` inside ``module``, zero biases (LlamaGen's
    ``_init_weights``)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
