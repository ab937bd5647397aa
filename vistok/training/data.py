"""LightningDataModules over the datasets in :mod:`vistok.data`, with a training order that survives a restart."""

from __future__ import annotations

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vistok.data.shapes import SIZES, ShapesDataset


class ResumableSampler(DistributedSampler):
    """The shuffled order of :class:`DistributedSampler` (a permutation seeded by ``seed + epoch``, this rank's share
    of it) that can start mid-epoch: :meth:`resume` skips the items an interrupted run already trained on.

    Being a ``DistributedSampler``, Lightning uses it as is under DDP (rank and world size are read from
    ``torch.distributed`` when it is initialised, else 1 process).  The skipped items are a prefix of the epoch's
    global permutation (ranks take every ``world_size``-th item of it), so a run may resume on another number of
    ranks: the rest of the permutation is shared out among the new ranks.

    Args:
        dataset: the map-style dataset.
        batch_size: items per batch (to turn batches into items).
        shuffle, seed: as ``DistributedSampler``.
        num_replicas, rank: override what ``torch.distributed`` says (tests).
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool = True, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None):
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.batch_size = batch_size
        self._resume: tuple[int, int] | None = None

    def resume(self, epoch: int, items: int) -> None:
        """The next pass over epoch ``epoch`` starts after the first ``items`` items of its global order, all ranks
        together (``batches x batch_size x world size`` of the interrupted run); once."""
        self._resume = (epoch, items)

    def __iter__(self):
        resume, self._resume = self._resume, None
        if resume is None or resume[0] != self.epoch:
            return super().__iter__()
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.dataset), generator=g).tolist()  # DistributedSampler's permutation
        else:
            order = list(range(len(self.dataset)))
        padded = order + (order * self.num_replicas)[: self.total_size - len(order)]  # as DistributedSampler pads
        rest = padded[resume[1]:]  # the same ranks: exactly the uninterrupted run's remaining shares
        if rest and len(rest) % self.num_replicas:  # equal shares (DDP ranks must run as many batches)
            rest += (rest * self.num_replicas)[: self.num_replicas - len(rest) % self.num_replicas]
        return iter(rest[self.rank :: self.num_replicas])


class ShapesDataModule(L.LightningDataModule):
    """Shapes scenes with exact captions; train and val use different seeds.

    The training order is a :class:`ResumableSampler`: a checkpoint records the epoch and the batches trained in it,
    and ``vistok fit ... --ckpt_path last`` carries on with the next batch of the same permutation (the data order of
    an uninterrupted run).  The loaders draw worker seeds from their own generator, not torch's global one.

    Args:
        image_size: side in pixels.
        train_size, val_size: number of scenes per split.
        min_objects, max_objects: objects per scene (``max_objects=1`` gives the class-conditional variant:
            ``label`` = colour x shape).
        sizes: named sizes that may appear.
        batch_size, num_workers: loader settings (``batch_size`` per process under DDP).
        seed: base seed (val uses ``seed + 1``; the shuffle uses ``seed + epoch``).
    """

    def __init__(self, image_size: int = 64, train_size: int = 20000, val_size: int = 256, min_objects: int = 1,
                 max_objects: int = 3, sizes: tuple[str, ...] = tuple(SIZES), batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        kw = dict(image_size=image_size, min_objects=min_objects, max_objects=max_objects, sizes=tuple(sizes))
        self.train_set = ShapesDataset(train_size, seed=seed, **kw)
        self.val_set = ShapesDataset(val_size, seed=seed + 1, **kw)
        self._resume: tuple[int, int, int | None] | None = None

    def _loader(self, ds: ShapesDataset, shuffle: bool) -> DataLoader:
        h = self.hparams
        sampler = ResumableSampler(ds, h.batch_size, shuffle=shuffle, seed=h.seed)
        if shuffle and self._resume is not None:
            epoch, batches, items = self._resume
            sampler.resume(epoch, items if items is not None else batches * h.batch_size * sampler.num_replicas)
            self._resume = None
        return DataLoader(ds, batch_size=h.batch_size, sampler=sampler, num_workers=h.num_workers,
                          drop_last=shuffle, persistent_workers=h.num_workers > 0,
                          generator=torch.Generator().manual_seed(h.seed))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def state_dict(self) -> dict:
        """Where training stands in the data: the epoch, the batches of it trained so far (per rank) and the items
        of its global order they took (all ranks: what a resume on another number of ranks skips)."""
        trainer = self.trainer
        if trainer is None:
            return {}
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": trainer.current_epoch, "batches": batches,
                "items": batches * self.hparams.batch_size * trainer.world_size}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:  # checkpoints written before "items" resume on their own number of ranks
            items = state_dict.get("items")
            self._resume = (int(state_dict["epoch"]), int(state_dict["batches"]),
                            None if items is None else int(items))


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
        self._resume: tuple[int, int, int | None] | None = None
