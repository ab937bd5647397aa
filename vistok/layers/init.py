"""Weight-init helpers shared by the families whose official code uses them (MAR's DiffLoss head, xAR)."""

from __future__ import annotations

from torch import nn


def xavier_linears(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear`` inside ``module`` (MAE / MAR / xAR init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
