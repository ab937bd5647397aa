"""What do a trained FlexTok's first k tokens know?  Probes of the FSQ codes of the first k tokens on single-object
scenes: colour, shape, position and size by 1-nearest-neighbour and by a linear (multinomial logistic) read-out,
beside the majority-class chance; and the background tone (the renderer jitters it per image) by least squares.

    python benchmarks/flextok_debug/token_probe.py --model runs/flextok_tiny5/export [--ks 1 2 4] [--train 2000]

Probes fit on ``--train`` scenes of seed 1 and are scored on ``--test`` scenes of seed 12345 (one thread).
If a k = 1 decode gets the colour wrong, a colour probe near chance at k = 1 says the encoder never put it in the
first token (the decoder cannot be blamed); a high probe would point at the decoder.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from vistok.data.shapes import ShapesDataset, parse_caption
from vistok.hub import from_pretrained

ATTRIBUTES = ("color", "shape", "position", "size")


@torch.no_grad()
def codes_of(tok, n: int, seed: int) -> tuple[torch.Tensor, list, torch.Tensor]:
    """FSQ codes ``(n, N, d)`` of ``n`` single-object scenes, their objects, and the background tone ``(n,)``."""
    ds = ShapesDataset(n, image_size=tok.image_size, seed=seed, min_objects=1, max_objects=1)
    items = [ds[i] for i in range(n)]
    pixels = torch.stack([it["pixels"] for it in items])
    codes = tok.quantizer.ids_to_codes(torch.cat([tok.encode(b) for b in pixels.split(64)]))
    return codes, [parse_caption(it["caption"]).objects[0] for it in items], pixels[:, :, 0, 0].mean(1)


def linear_probe(x: torch.Tensor, y: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 1e-4 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="FlexTok export folder")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=500)
    args = p.parse_args()
    torch.set_num_threads(1)
    tok = from_pretrained(args.model).eval()
    c_tr, o_tr, bg_tr = codes_of(tok, args.train, 1)
    c_te, o_te, bg_te = codes_of(tok, args.test, 12345)
    print(f"{'attribute':>9} {'k':>3} {'chance':>7} {'1-NN':>6} {'linear':>7}")
    for attr in ATTRIBUTES:
        names = sorted({getattr(o, attr) for o in o_tr})
        y_tr = torch.tensor([names.index(getattr(o, attr)) for o in o_tr])
        y_te = torch.tensor([names.index(getattr(o, attr)) if getattr(o, attr) in names else -1 for o in o_te])
        chance = torch.bincount(y_tr).max().item() / len(y_tr)
        for k in args.ks:
            f_tr, f_te = c_tr[:, :k].flatten(1), c_te[:, :k].flatten(1)
            nn_acc = (y_tr[torch.cdist(f_te, f_tr).argmin(1)] == y_te).float().mean()
            w, b = linear_probe(f_tr, y_tr, len(names))
            lin_acc = ((f_te @ w + b).argmax(1) == y_te).float().mean()
            print(f"{attr:>9} {k:>3} {chance:7.3f} {nn_acc:6.3f} {lin_acc:7.3f}")
    for k in args.ks:
        ones = torch.ones(len(c_tr), 1)
        sol = torch.linalg.lstsq(torch.cat([c_tr[:, :k].flatten(1), ones], 1), bg_tr[:, None]).solution
        pred = torch.cat([c_te[:, :k].flatten(1), torch.ones(len(c_te), 1)], 1) @ sol
        r2 = 1 - (pred.squeeze(1) - bg_te).var() / bg_te.var()
        print(f"background tone from the first {k} token(s): R^2 {r2:.3f} (test)")


if __name__ == "__main__":
    main()
