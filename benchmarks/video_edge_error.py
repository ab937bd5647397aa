"""Where a video tokenizer's reconstruction error sits: on object edges or inside flat regions.

    python benchmarks/video_edge_error.py --tokenizer runs/larp_tiny6/export [--num-clips 32] [--seed 777]

Edge pixels are those whose colour differs (sum of |RGB| differences > 0.05) from a horizontal or vertical neighbour
in the target frame; the report gives their share of the pixels and of the squared error, the same one pixel wider,
the mean squared error inside and near edges, and the error per frame and per position inside the tokenizer's
patches (patch seams show up as a pattern there).  Moving-shapes clips of ``--seed`` (held out: training uses 0,
validation 1).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import vistok
from vistok.data.videos import MovingShapesDataset


def edge_mask(video: torch.Tensor, threshold: float = 0.05) -> torch.Tensor:
    """(b, 3, t, h, w) -> bool (b, t, h, w): pixels that differ from a horizontal or vertical neighbour."""
    dy = (video[..., 1:, :] - video[..., :-1, :]).abs().sum(1) > threshold
    dx = (video[..., :, 1:] - video[..., :, :-1]).abs().sum(1) > threshold
    edge = torch.zeros(video.shape[0], *video.shape[2:], dtype=torch.bool)
    edge[..., 1:, :] |= dy
    edge[..., :-1, :] |= dy
    edge[..., :, 1:] |= dx
    edge[..., :, :-1] |= dx
    return edge


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--num-clips", type=int, default=32)
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tok = vistok.from_pretrained(args.tokenizer).eval().float()
    ds = MovingShapesDataset(args.num_clips, seed=args.seed, image_size=tok.image_size, num_frames=tok.num_frames)
    x = torch.stack([ds[i]["pixels"] for i in range(len(ds))])
    err = (tok.decode(tok.encode(x)) - x).pow(2).mean(1)  # b t h w
    edge = edge_mask(x)
    near = F.max_pool2d(edge.float().flatten(0, 1)[:, None], 3, 1, 1)[:, 0].view_as(err) > 0
    total = err.sum()
    print(f"{args.tokenizer}: PSNR {float(10 * torch.log10(1 / err.mean())):.2f} dB on {len(x)} clips (seed "
          f"{args.seed})")
    print(f"edge pixels: {float(edge.float().mean()):.3f} of the pixels, {float((err * edge).sum() / total):.3f} of "
          f"the squared error; within 1 px of an edge: {float(near.float().mean()):.3f} / "
          f"{float((err * near).sum() / total):.3f}")
    print(f"mean squared error away from edges {float(err[~near].mean()):.2e}, near edges "
          f"{float(err[near].mean()):.2e}")
    print("per frame:", " ".join(f"{v:.4f}" for v in err.mean((0, 2, 3)).tolist()))
    p_ = getattr(tok, "patch_size", None)
    if p_:
        h = tok.image_size // p_
        inside = err.mean((0, 1)).view(h, p_, h, p_).mean((0, 2))
        print(f"per position inside the {p_}x{p_} patches (rows):")
        for row in inside.tolist():
            print("  " + " ".join(f"{v:.4f}" for v in row))


if __name__ == "__main__":
    main()
