"""LightningDataModules over the datasets in :mod:`vistok.data`."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from vistok.data.shapes import SIZES, ShapesDataset


class ShapesDataModule(L.LightningDataModule):
    """Shapes scenes with exact captions; train and val use different seeds.

    Args:
        image_size: side in pixels.
        train_size, val_size: number of scenes per split.
        min_objects, max_objects: objects per scene (``max_objects=1`` gives the class-conditional variant:
            ``label`` = colour x shape).
        sizes: named sizes that may appear.
        batch_size, num_workers: loader settings.
        seed: base seed (val uses ``seed + 1``).
    """

    def __init__(self, image_size: int = 64, train_size: int = 20000, val_size: int = 256, min_objects: int = 1,
                 max_objects: int = 3, sizes: tuple[str, ...] = tuple(SIZES), batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        kw = dict(image_size=image_size, min_objects=min_objects, max_objects=max_objects, sizes=tuple(sizes))
        self.train_set = ShapesDataset(train_size, seed=seed, **kw)
        self.val_set = ShapesDataset(val_size, seed=seed + 1, **kw)

    def _loader(self, ds: ShapesDataset, shuffle: bool) -> DataLoader:
        h = self.hparams
        return DataLoader(ds, batch_size=h.batch_size, shuffle=shuffle, num_workers=h.num_workers,
                          drop_last=shuffle, persistent_workers=h.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)


class MovingShapesDataModule(ShapesDataModule):
    """Moving-shapes clips ``(B, 3, T, H, W)`` with exact captions (:mod:`vistok.data.videos`); train and val use
    different seeds.

    Args:
        image_size: frame side in pixels.
        num_frames: frames per clip.
        train_size, val_size: number of clips per split.
        min_objects, max_objects: objects per clip (``max_objects=1`` gives the class-conditional variant:
            ``label`` = colour x shape x motion).
        sizes: named sizes that may appear.
        batch_size, num_workers: loader settings.
        seed: base seed (val uses ``seed + 1``).
    """

    def __init__(self, image_size: int = 32, num_frames: int = 16, train_size: int = 20000, val_size: int = 64,
                 min_objects: int = 1, max_objects: int = 2, sizes: tuple[str, ...] = tuple(SIZES),
                 batch_size: int = 16, num_workers: int = 0, seed: int = 0):
        L.LightningDataModule.__init__(self)  # the loaders are ShapesDataModule's; the datasets are clips
        self.save_hyperparameters({k: v for k, v in locals().items() if k != "self"})
        from vistok.data.videos import MovingShapesDataset

        kw = dict(image_size=image_size, num_frames=num_frames, min_objects=min_objects, max_objects=max_objects,
                  sizes=tuple(sizes))
        self.train_set = MovingShapesDataset(train_size, seed=seed, **kw)
        self.val_set = MovingShapesDataset(val_size, seed=seed + 1, **kw)
