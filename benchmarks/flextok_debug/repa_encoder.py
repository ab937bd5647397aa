"""Train a small frozen feature encoder on the shapes data and save it as TorchScript, as a local REPA target.

FlexTok aligns an early decoder layer with DINOv2-L patch features (REPA); its first tokens become semantic because
the decoder, seeing almost nothing of the image at high noise, must predict those features from the registers.
DINOv2 cannot be downloaded here, so this script builds a stand-in for the shapes world: a 4-layer CNN trained to
name the colour x shape class (24 classes) of single-object scenes from a global max-pool over an 8 x 8 feature
map.  Its (B, 128, 8, 8) map is the REPA target, so it carries labels the renderer knows: a supervised stand-in,
not a self-supervised one (docs/flextok.md says so beside the runs that use it).  ``--untrained`` skips the
training and saves the randomly initialised CNN (seed ``--seed``): a label-free target, random features.

Both print a nearest-centroid colour probe on the saved features of held-out scenes (chance 1/6), the diagnostic of
whether the target carries the colour at all; the labels are used for that print only.

    python benchmarks/flextok_debug/repa_encoder.py --out runs/repa/shapes_cnn.pt [--steps 600] [--image-size 64]

Then ``--model.init_args.repa_encoder runs/repa/shapes_cnn.pt`` on ``vistok fit --config
configs/tokenizers/flextok_tiny.yaml``.  Prints held-out class accuracy (chance 1/24) so a broken target shows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vistok.data.shapes import COLORS, NUM_CLASSES, SHAPES, ShapesDataset


class ShapesCNN(nn.Module):
    """Pixels in [0, 1] ``(B, 3, S, S)`` -> feature map ``(B, width, S / 8, S / 8)``."""

    def __init__(self, width: int = 128):
        super().__init__()
        chans = [3, 32, 64, 128, width]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1), nn.GELU()]
        self.features = nn.Sequential(*layers[:-1])  # the map ends linear, before the last activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(2 * x - 1)


class Standardised(nn.Module):
    """``(net(x) - mean) / std`` per channel (after a global max-pool if ``pooled``); mean and std are buffers
    measured on training scenes."""

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor, pooled: bool = False):
        super().__init__()
        self.net, self.pooled = net, pooled
        self.register_buffer("mean", mean[:, None, None])
        self.register_buffer("std", std[:, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net(x)
        if self.pooled:
            f = f.amax(dim=(2, 3), keepdim=True)
        return (f - self.mean) / self.std


def scenes(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    ds = ShapesDataset(n, image_size=size, seed=seed, min_objects=1, max_objects=1)
    items = [ds[i] for i in range(n)]
    return torch.stack([it["pixels"] for it in items]), torch.tensor([it["label"] for it in items])


def colour_probe(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Nearest-centroid colour accuracy of the spatially pooled features: centroids from the first half of the
    scenes, accuracy on the second half."""
    f = torch.cat([net(b) for b in x.split(250)]).mean(dim=(2, 3))
    c = y // len(SHAPES)
    n = len(f) // 2
    cents = torch.stack([f[:n][c[:n] == k].mean(0) for k in range(len(COLORS))])
    return (torch.cdist(f[n:], cents).argmin(1) == c[n:]).float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--train", type=int, default=8000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--raw", action="store_true", help="save the map without per-channel standardisation")
    p.add_argument("--pooled", action="store_true", help="save the standardised global max-pool (B, C, 1, 1)")
    p.add_argument("--untrained", action="store_true", help="save the random-init CNN: no labels used (label-free)")
    args = p.parse_args()
    if args.raw and args.pooled:
        p.error("--raw and --pooled exclude each other")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x, y = scenes(args.train, args.image_size, seed=4242)  # not a FlexTok training / validation seed
    xt, yt = scenes(1000, args.image_size, seed=4243)
    net = ShapesCNN()
    head = nn.Linear(128, NUM_CLASSES)
    opt = torch.optim.AdamW([*net.parameters(), *head.parameters()], lr=2e-3)
    for step in range(0 if args.untrained else args.steps):
        i = torch.randint(0, len(x), (args.batch,))
        logits = head(net(x[i]).amax(dim=(2, 3)))
        loss = F.cross_entropy(logits, y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            with torch.no_grad():
                acc = (head(net(xt).amax(dim=(2, 3))).argmax(1) == yt).float().mean().item()
            print(f"step {step}: loss {loss.item():.3f}, held-out accuracy {acc:.3f} (chance {1 / NUM_CLASSES:.3f})")
    net.eval()
    if not args.raw:
        with torch.no_grad():
            ref, _ = scenes(2000, args.image_size, seed=4244)
            f = torch.cat([net(b) for b in ref.split(250)])
            if args.pooled:
                f = f.amax(dim=(2, 3), keepdim=True)
            f = f.transpose(0, 1).flatten(1)  # (C, N * h * w)
        net = Standardised(net, f.mean(1), f.std(1).clamp(min=1e-3), pooled=args.pooled).eval()
    with torch.no_grad():
        print(f"colour probe on the saved features (nearest centroid, 1,000 held-out scenes): "
              f"{colour_probe(net, xt, yt):.3f} (chance {1 / len(COLORS):.3f})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.trace(net, x[:2]), str(out))
    print(f"saved {out}: (B, 3, {args.image_size}, {args.image_size}) -> {tuple(net(x[:2]).shape[1:])} per image")


if __name__ == "__main__":
    main()
