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
            return torch.multinomial(probs.reshape(-1, self.codebook_size), 1).reshape(cos.shape[:-1])

    def loss(self, parts: dict[str, Tensor]) -> Tensor:
        """The official VQ loss from :meth:`forward`'s parts: ``commitment * commit + codebook_weight * codebook``."""
        return self.commitment * parts["commitment"] + self.codebook_weight * parts["codebook"]
