"""``vistok fit|validate|test --config configs/....yaml``: one LightningCLI for every model and dataset."""

from __future__ import annotations

import os

from lightning.pytorch.cli import LightningCLI


def main(args: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import lightning as L

    LightningCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                 save_config_kwargs={"overwrite": True}, args=args)


if __name__ == "__main__":
    main()
