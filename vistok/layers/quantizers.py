"""Vector quantisation with an l2-normalised codebook (ViT-VQGAN arXiv 2110.04627, as TiTok uses it),
straight-through gradients, and dead-code re-seeding.

Legend: b batch, n tokens, d code dim, k codebook size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
        dead = (self.usage == 0).nonzero().flatten()
        if len(dead):
            pool = z.reshape(-1, self.code_dim)
            pick = torch.randint(len(pool), (len(dead),), device=pool.device)
            self.embedding.weight.data[dead] = pool[pick].to(self.embedding.weight.dtype)
        self.usage.zero_()
