"""VectorQuantizer: straight-through output, losses that train the codebook and the encoder, dead-code re-seeding."""

import pytest
import torch

from vistok.layers.quantizers import VectorQuantizer


def test_losses_reach_codebook_and_encoder():
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=16, code_dim=4, commitment=0.25)
    z = torch.randn(2, 5, 4, requires_grad=True)
    zq, ids, losses = vq(z)
    (losses["codebook"] + vq.commitment * losses["commitment"]).backward()
    assert vq.embedding.weight.grad is not None and vq.embedding.weight.grad.abs().sum() > 0
    assert z.grad is not None and z.grad.abs().sum() > 0
    # straight-through: the forward value is the (normalised) code, the gradient flows to z unchanged
    assert torch.allclose(zq, vq.lookup(ids), atol=1e-6)


def test_codebook_loss_pulls_codes_to_encoder_outputs():
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=8, code_dim=4, l2_norm=True)
    z = torch.randn(64, 1, 4)
    opt = torch.optim.SGD(vq.parameters(), lr=1.0)
    before = vq(z)[2]["codebook"].item()
    for _ in range(50):
        opt.zero_grad()
        vq(z)[2]["codebook"].backward()
        opt.step()
    assert vq(z)[2]["codebook"].item() < 0.7 * before


def test_dead_codes_are_reseeded_from_encoder_outputs():
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=32, code_dim=4, reseed_every=1).train()
    z = torch.randn(4, 3, 4)
    vq(z)
    codes = vq.codebook()
    targets = torch.nn.functional.normalize(z.reshape(-1, 4), dim=-1)
    # after one re-seed every code sits on one of the (normalised) encoder outputs
    dist = torch.cdist(codes, targets).min(1).values
    assert (dist < 1e-3).float().mean() > 0.5


# -- inverse-CDF categorical sampling (vistok.layers.sampling) ---------------------------------------------------
def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    from scipy.stats import chisquare

    keep = probs > 0
    return float(chisquare(counts[keep].double(), counts.sum() * probs[keep].double()).pvalue)


def test_sample_categorical_law_and_a_biased_control():
    from vistok.layers.sampling import sample_categorical

    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.05, 0.0, 0.25, 0.1, 0.0, 0.4, 0.2])
    n = 200_000
    ids = sample_categorical(probs.expand(n, -1), generator=g)
    counts = torch.bincount(ids, minlength=len(probs))
    assert counts[probs == 0].sum() == 0  # zero-weight categories never come out
    assert _chi2_pvalue(counts, probs) > 1e-3
    # broken control: the same draw from weights with one category x1.1 must be rejected against the true law
    biased = probs.clone()
    biased[3] *= 1.1
    counts_b = torch.bincount(sample_categorical(biased.expand(n, -1), generator=g), minlength=len(probs))
    assert _chi2_pvalue(counts_b, probs) < 1e-6
    # unnormalised rows, a batch shape, and bf16 weights
    w = torch.tensor([[2.0, 0.0, 6.0], [0.0, 1.0, 0.0]]).to(torch.bfloat16)
    out = sample_categorical(w[None].expand(5000, -1, -1), generator=g)
    assert out.shape == (5000, 2) and out.dtype == torch.long
    assert (out[:, 1] == 1).all() and set(out[:, 0].tolist()) == {0, 2}
    assert abs((out[:, 0] == 2).float().mean().item() - 0.75) < 0.03
    with pytest.raises(ValueError, match="at least one"):
        sample_categorical(torch.ones(3, 0))
    for bad in ([1.0, -0.5, 1.0], [0.0, 0.0, 0.0], [1.0, float("nan"), 1.0], [1.0, float("inf"), 1.0]):
        with pytest.raises(ValueError, match="non-negative"):
            sample_categorical(torch.tensor([[0.2, 0.3, 0.5], bad]))
