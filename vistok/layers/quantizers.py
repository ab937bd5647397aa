"""Quantisers: vector quantisation with an l2-normalised codebook (ViT-VQGAN arXiv 2110.04627, as TiTok uses it),
straight-through gradients, and dead-code re-seeding; finite scalar quantisation (FSQ, arXiv 2309.15505, as FlexTok
uses it).

Legend: b batch, n tokens, d code dim, k codebook size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.layers.sampling import sample_categorical


class VectorQuantizer(nn.Module):
    """Nearest-code quantiser.

    Args:
        codebook_size: number of codes ``k``.
        code_dim: code dimension ``d``.
        commitment: weight of the commitment term (encoder pulled to its code).
        l2_norm: cosine-similarity lookup on unit vectors (TiTok's ``use_l2_norm``).
        reseed_every: training steps between dead-code re-seeds (0 disables).  Codes unused in that
            window are replaced by random recent encoder outputs.
    """

    def __init__(self, codebook_size: int = 4096, code_dim: int = 12, commitment: float = 0.25,
                 l2_norm: bool = True, reseed_every: int = 0):
        super().__init__()
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.commitment, self.l2_norm, self.reseed_every = commitment, l2_norm, reseed_every
        self.embedding = nn.Embedding(codebook_size, code_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        self.register_buffer("usage", torch.zeros(codebook_size), persistent=False)
        self._steps = 0

    def codebook(self) -> Tensor:
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def indices(self, z: Tensor) -> Tensor:
        """``z`` (..., d) -> nearest code ids (...)."""
        with torch.autocast(z.device.type, enabled=False):
            zf = z.float()
            cb = self.codebook().float()
            if self.l2_norm:
                return (F.normalize(zf, dim=-1) @ cb.t()).argmax(-1)
            dist = zf.pow(2).sum(-1, keepdim=True) - 2 * zf @ cb.t() + cb.pow(2).sum(-1)
            return dist.argmin(-1)

    def lookup(self, ids: Tensor) -> Tensor:
        """Code vectors for ids (...) -> (..., d)."""
        return F.embedding(ids, self.codebook())

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``z`` (b, n, d) -> (quantised z with straight-through grads, ids (b, n), losses).

        The losses carry gradient: ``codebook`` moves the codes towards the encoder outputs, ``commitment`` pulls
        the encoder towards its codes (weight it with ``self.commitment``); detach them for logging.
        """
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        ids = self.indices(z)
        zq = self.lookup(ids)
        codebook_loss = F.mse_loss(zq, z.detach())
        commit_loss = F.mse_loss(z, zq.detach())
        if self.training and self.reseed_every:
            self._track_and_reseed(z.detach(), ids)
        zq = z + (zq - z).detach()
        return zq, ids, {"codebook": codebook_loss, "commitment": commit_loss}

    @torch.no_grad()
    def _track_and_reseed(self, z: Tensor, ids: Tensor) -> None:
        self.usage += torch.bincount(ids.flatten(), minlength=self.codebook_size).float()
        self._steps += 1
        if self._steps % self.reseed_every:
            return
        # data-parallel training: every rank counts the usage of all, and takes rank zero's new codes, so the
        # replicas stay identical (each rank would otherwise reseed from its own encoder outputs)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            torch.distributed.all_reduce(self.usage)
        dead = (self.usage == 0).nonzero().flatten()
        if len(dead):  # the same on every rank after the all-reduce
            pool = z.reshape(-1, self.code_dim)
            pick = torch.randint(len(pool), (len(dead),), device=pool.device)
            self.embedding.weight.data[dead] = pool[pick].to(self.embedding.weight.dtype)
            if distributed:
                torch.distributed.broadcast(self.embedding.weight.data, src=0)
        self.usage.zero_()


class FSQ(nn.Module):
    """Finite scalar quantisation (Mentzer et al., arXiv 2309.15505), as FlexTok uses it: no codebook, no loss.

    Each of the ``d = len(levels)`` channels is squashed by a shifted tanh into ``levels[i]`` integer steps and
    rounded (straight-through).  Codes are returned normalised to ``[-1, 1]`` (divided by ``L // 2``); the id is
    ``sum_i (code_i * (L_i // 2) + L_i // 2) * basis_i`` with ``basis = cumprod([1, L_0, ..., L_{d-2}])``, so the
    first channel varies fastest.  Even levels get a half-step offset so that the rounded grid is symmetric.

    Args:
        levels: steps per channel, e.g. ``(8, 8, 8, 5, 5, 5)`` = 64,000 codes.
        eps: the bound stretches to ``(L - 1)(1 + eps) / 2`` so the extreme steps stay reachable.
    """

    def __init__(self, levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5), eps: float = 1e-3):
        super().__init__()
        levels = tuple(int(v) for v in levels)
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels must be integers >= 2, got {levels}")
        self.levels, self.eps = levels, eps
        self.dim, self.codebook_size = len(levels), math.prod(levels)
        basis = [1]
        for v in levels[:-1]:
            basis.append(basis[-1] * v)
        self.register_buffer("_levels", torch.tensor(levels), persistent=False)
        self.register_buffer("_basis", torch.tensor(basis), persistent=False)

    def bound(self, z: Tensor) -> Tensor:
        """``z`` (..., d) -> values in ``(-(L-1)/2 - offset, (L-1)/2 - offset)`` per channel (before rounding)."""
        levels = self._levels.to(z.dtype)
        half = (levels - 1) * (1 + self.eps) / 2
        offset = (self._levels % 2 == 0).to(z.dtype) * 0.5
        return torch.tanh(z + torch.atanh(offset / half)) * half - offset

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``z`` (..., d) -> (codes in [-1, 1] with straight-through gradients (..., d), ids (...) long).

        Computed in fp32 whatever the autocast state.
        """
        if z.shape[-1] != self.dim:
            raise ValueError(f"FSQ with {self.dim} levels takes (..., {self.dim}) inputs, got {tuple(z.shape)}")
        with torch.autocast(z.device.type, enabled=False):
            bounded = self.bound(z.float())
            rounded = bounded + (bounded.round() - bounded).detach()
            codes = rounded / (self._levels // 2)
        return codes, self.codes_to_ids(codes)

    def codes_to_ids(self, codes: Tensor) -> Tensor:
        """Normalised codes (..., d) -> ids (...) long."""
        half = self._levels // 2
        steps = (codes * half + half).round().long()
        return (steps * self._basis).sum(-1)

    def ids_to_codes(self, ids: Tensor) -> Tensor:
        """ids (...) -> normalised codes (..., d) fp32; ids must lie in ``[0, codebook_size)``."""
        half = self._levels // 2
        steps = (ids[..., None] // self._basis) % self._levels
        return ((steps - half) / half).float()


class StochasticVectorQuantizer(VectorQuantizer):
    """LARP's stochastic VQ on the unit sphere (arXiv 2410.21264): in training the code id is *sampled* from
    ``softmax(cos(z, codes) / temperature)``; outside training it is the argmax when ``deterministic_eval`` (vistok's
    default; the official code samples in eval too unless ``set_vq_eval_deterministic(True)`` is called).

    Args:
        codebook_size, code_dim, commitment: as :class:`VectorQuantizer` (always l2-normalised, no re-seeding).
        temperature: softmax temperature of the sampling (official 0.03); None = plain argmax, never sampled.
        deterministic_eval: argmax in eval mode (True) or keep sampling (False, the official default).
        codebook_weight: weight of the codebook term in :meth:`loss` (official 1.0).
        reseed_every: dead-code re-seeding period (vistok option as in :class:`VectorQuantizer`; official 0 = off).

    Codes start Kaiming-uniform, as the official code.
    """

    def __init__(self, codebook_size: int = 8192, code_dim: int = 16, commitment: float = 0.25,
                 temperature: float | None = 0.03, deterministic_eval: bool = True, codebook_weight: float = 1.0,
                 reseed_every: int = 0):
        super().__init__(codebook_size, code_dim, commitment, l2_norm=True, reseed_every=reseed_every)
        if temperature is not None and not temperature > 0:
            raise ValueError(f"temperature must be > 0 (or None for argmax), got {temperature}")
        self.temperature, self.deterministic_eval = temperature, deterministic_eval
        self.codebook_weight = codebook_weight
        nn.init.kaiming_uniform_(self.embedding.weight)

    def indices(self, z: Tensor) -> Tensor:
        """``z`` (..., d) -> code ids (...): sampled in training (and in eval unless ``deterministic_eval``)."""
        if self.temperature is None or (self.deterministic_eval and not self.training):
            return super().indices(z)
        with torch.autocast(z.device.type, enabled=False):
            cos = F.normalize(z.float(), dim=-1) @ self.codebook().float().t()
            probs = (cos / self.temperature).softmax(-1)
            return sample_categorical(probs)

    def loss(self, parts: dict[str, Tensor]) -> Tensor:
        """The official VQ loss from :meth:`forward`'s parts: ``commitment * commit + codebook_weight * codebook``."""
        return self.commitment * parts["commitment"] + self.codebook_weight * parts["codebook"]
