"""Tokenizer training losses: a PatchGAN discriminator with hinge / non-saturating losses, the adaptive GAN weight,
and an LPIPS-style perceptual loss read from a local file (nothing is downloaded).

Papers:
    Isola et al., "Image-to-Image Translation with Conditional Adversarial Networks" (pix2pix PatchGAN),
    arXiv 1611.07004.
    Esser et al., "Taming Transformers for High-Resolution Image Synthesis" (hinge GAN on a PatchGAN, adaptive
    weight from last-layer gradient norms, ``disc_start``), arXiv 2012.09841.
    Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric" (LPIPS), arXiv 1801.03924.
Reference code (facts only: layer layout, init, loss formulas, layer indices): github.com/CompVis/taming-transformers
(``taming/modules/discriminator/model.py``, ``taming/modules/losses/vqperceptual.py``) and
github.com/richzhang/PerceptualSimilarity (``lpips/pretrained_networks.py``, ``lpips/lpips.py``).

Pixels are in [0, 1] everywhere here (vistok's convention); each network maps them to its own input range.

Legend: b batch, c channels, h/w height/width.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.hub import load_state_dict_strict

__all__ = ["GAN_LOSSES", "PatchDiscriminator", "VGGPerceptual", "adaptive_gan_weight", "last_layer_weight",
           "load_perceptual"]


# ----------------------------------------------------------------------------------------------------------------
# PatchGAN discriminator and GAN losses
# ----------------------------------------------------------------------------------------------------------------
def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    raise ValueError(f"disc_norm must be 'batch' or 'group', got {kind!r}")


class PatchDiscriminator(nn.Module):
    """N-layer PatchGAN (pix2pix / taming ``NLayerDiscriminator``): pixels (b, 3, H, W) in [0, 1] -> logits
    (b, 1, h, w).

    Layout: conv 4x4 stride 2 + LeakyReLU(0.2); ``n_layers - 1`` more stride-2 convs (no bias) + norm + LeakyReLU,
    widths ``channels * min(2 ** i, 8)``; one stride-1 conv + norm + LeakyReLU; a stride-1 conv to one logit per
    patch.  A 64x64 input gives a 6x6 logit map with ``n_layers=3``.  Init as taming: conv weights N(0, 0.02), norm
    weights N(1, 0.02), norm biases 0.

    Args:
        channels: width of the first conv.
        n_layers: number of stride-2 convs (each halves the side).
        norm: ``"batch"`` (pix2pix / taming) or ``"group"`` (batch-size independent).
    """

    def __init__(self, channels: int = 64, n_layers: int = 3, norm: Literal["batch", "group"] = "batch"):
        super().__init__()
        if n_layers < 1 or channels < 1:
            raise ValueError(f"disc_layers and disc_channels must be >= 1, got {n_layers} and {channels}")
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        width = channels
        for i in range(1, n_layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(width, out, 4, stride, 1, bias=False), _norm(norm, out), nn.LeakyReLU(0.2, True)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.net(2 * pixels - 1)  # b 1 h w


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    return -logits_fake.mean()


def non_saturating_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def non_saturating_g_loss(logits_fake: Tensor) -> Tensor:
    return F.softplus(-logits_fake).mean()


GAN_LOSSES = {  # name -> (discriminator loss(real, fake), generator loss(fake))
    "hinge": (hinge_d_loss, hinge_g_loss),
    "non_saturating": (non_saturating_d_loss, non_saturating_g_loss),
}


def last_layer_weight(tokenizer: nn.Module) -> Tensor:
    """The weight the adaptive GAN weight differentiates against: ``tokenizer.last_layer`` if defined, else the last
    parameter of ``tokenizer.decoder`` with two or more dims (TiTok: the pixel head or the VQGAN decoder's conv_out)."""
    if isinstance(getattr(tokenizer, "last_layer", None), Tensor):
        return tokenizer.last_layer
    decoder = getattr(tokenizer, "decoder", tokenizer)
    weights = [p for p in decoder.parameters() if p.ndim >= 2 and p.requires_grad]
    if not weights:
        raise ValueError(f"{type(tokenizer).__name__} has no decoder weight for gan_adaptive; set gan_adaptive=false")
    return weights[-1]


def adaptive_gan_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4,
                        loss_scale: float = 1.0) -> Tensor:
    """Taming's balance: ``||d rec / d w|| / (||d g_adv / d w|| + 1e-4)`` at the decoder's last weight, clamped to
    ``[0, max_weight]`` and detached (multiply it by the GAN weight).

    ``loss_scale`` (``16-mixed``: the grad scaler's scale): both losses are multiplied by it before differentiating
    and the gradients divided by it after, as the scaler does, so the reconstruction gradient through an fp16 decoder
    does not underflow to 0 (and the weight with it).  Where the scaled gradients overflow (the scaler has not
    lowered its scale yet), the unscaled ones are used, as without it (one host read per call then)."""
    scales = (loss_scale, 1.0) if loss_scale != 1.0 else (1.0,)
    for scale in scales:
        rec_grad = torch.autograd.grad(rec_loss * scale, last_layer, retain_graph=True)[0].float() / scale
        g_grad = torch.autograd.grad(g_loss * scale, last_layer, retain_graph=True)[0].float() / scale
        if scale == 1.0 or bool(torch.isfinite(rec_grad).all() & torch.isfinite(g_grad).all()):
            break
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


# ----------------------------------------------------------------------------------------------------------------
# Perceptual loss (LPIPS-style) from a local file
# ----------------------------------------------------------------------------------------------------------------
class VGGPerceptual(nn.Module):
    """LPIPS-style distance on torchvision VGG16 features: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 outputs, each
    unit-normalised over channels, squared difference, weighted over channels (LPIPS's linear layers if given, else a
    plain sum), averaged over space, summed over layers, averaged over the batch.

    Args:
        state: a torchvision ``vgg16`` state dict (``features.<i>.weight`` keys, classifier keys ignored) or the
            ``features`` module's own (``<i>.weight``).  Optional LPIPS linear weights under ``lin<l>.model.1.weight``
            or ``lin<l>.weight`` (shape ``(1, C_l, 1, 1)``, ``l = 0..4``) in the same dict.
    """

    LAYERS = (3, 8, 15, 22, 29)  # indices of relu1_2 ... relu5_3 in vgg16().features
    CHANNELS = (64, 128, 256, 512, 512)

    def __init__(self, state: dict[str, Tensor]):
        super().__init__()
        from torchvision.models import vgg16

        with torch.device("meta"):  # no 100M-parameter classifier init: every conv weight is loaded below
            self.features = vgg16(weights=None).features[: self.LAYERS[-1] + 1]
        self.features.to_empty(device="cpu")
        conv = {k: v for k, v in state.items() if re.fullmatch(r"(features\.)?\d+\.(weight|bias)", k)}
        load_state_dict_strict(self.features, {k.removeprefix("features."): v for k, v in conv.items()},
                               "perceptual VGG16 state_dict")
        lin_key = re.compile(r"lin(\d)\.(?:model\.1\.)?weight")
        lin = {int(m.group(1)): v for k, v in state.items() if (m := lin_key.fullmatch(k))}
        if lin and sorted(lin) != list(range(len(self.LAYERS))):
            raise ValueError(f"LPIPS linear weights must be lin0..lin4, got lin{sorted(lin)}")
        for i, c in enumerate(self.CHANNELS):
            w = lin[i].reshape(1, -1, 1, 1).float() if lin else torch.ones(1, c, 1, 1)
            if w.shape[1] != c:
                raise ValueError(f"lin{i} weight has {w.shape[1]} channels, VGG16 layer {i} has {c}")
            self.register_buffer(f"lin{i}", w)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))  # LPIPS's scaling layer
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))   # = ImageNet statistics

    def forward(self, recon: Tensor, target: Tensor) -> Tensor:
        """recon, target (b, 3, H, W) in [0, 1] -> scalar distance."""
        b = recon.shape[0]
        x = (torch.cat([recon, target]) - self.mean) / self.std
        total, layer = recon.new_zeros(()), 0
        for i, block in enumerate(self.features):
            x = block(x)
            if i == self.LAYERS[layer]:
                f = x / (x.norm(dim=1, keepdim=True) + 1e-10)
                diff = (f[:b] - f[b:]).pow(2) * getattr(self, f"lin{layer}")  # b c h w
                total = total + diff.sum(1).mean()
                layer += 1
        return total


class ScriptedPerceptual(nn.Module):
    """A TorchScript perceptual net called LPIPS-style as ``net(recon, target)`` on pixels in [-1, 1]; its output
    (a scalar or per-sample distances) is averaged."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, recon: Tensor, target: Tensor) -> Tensor:
        return self.net(2 * recon - 1, 2 * target - 1).mean()


PERCEPTUAL_HINT = ("perceptual_path must name a local file: a TorchScript LPIPS-style net (torch.jit.save of a "
                   "module called as net(recon, target) on [-1, 1] pixels) or a torchvision VGG16 state_dict (.pth, "
                   "optionally with LPIPS lin0..lin4 weights)")


def load_perceptual(path: str | None) -> nn.Module | None:
    """Frozen perceptual loss from a local file (TorchScript, else a VGG16 state dict), in eval mode.

    Returns None, with one warning saying what to pass, when ``path`` is None or not a file: training then goes on
    without the perceptual term.
    """
    if not path or not Path(path).is_file():
        given = "no perceptual_path was given" if not path else f"{path} is not a file"
        warnings.warn(f"perceptual_weight > 0 but {given}; training WITHOUT the perceptual loss. {PERCEPTUAL_HINT}",
                      UserWarning, stacklevel=2)
        return None
    try:
        net: nn.Module = ScriptedPerceptual(torch.jit.load(str(path), map_location="cpu"))
    except (RuntimeError, ValueError):  # not a TorchScript archive
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path} is neither TorchScript nor a state dict. {PERCEPTUAL_HINT}") from None
        net = VGGPerceptual(state.get("state_dict", state))
    return net.eval().requires_grad_(False)
