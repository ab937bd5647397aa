"""VectorQuantizer: straight-through output, losses that train the codebook and the encoder, dead-code re-seeding."""

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
