"""Routed-attention init (vistok.layers.init.route_attention) and the tokenizers' ``spatial_init`` options."""

import pytest
import torch
import torch.nn.functional as F

import vistok
from vistok.layers import Attention
from vistok.layers.init import route_attention


def _logits(attn: Attention, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Attention logits (heads summed) between position rows alone, through the init's q/k weights."""
    c = queries.shape[-1]
    q = F.linear(F.layer_norm(queries, (c,)), attn.qkv.weight[:c])
    k = F.linear(F.layer_norm(keys, (c,)), attn.qkv.weight[c : 2 * c])
    return q @ k.T


@pytest.mark.parametrize("groups_ask", [True, False])
def test_each_token_attends_to_its_own_partner(groups_ask):
    torch.manual_seed(0)
    c, p, g = 64, 32, 8
    attn = Attention(c, 4)
    parts, groups = torch.randn(p, c), torch.randn(g, c)
    owner = torch.arange(p) * g // p
    route_attention([attn], parts, groups, owner, groups_ask=groups_ask)
    if groups_ask:  # every group's strongest key is one of its own parts
        best = _logits(attn, groups, parts).argmax(-1)
        assert torch.equal(owner[best], torch.arange(g))
    else:  # every part's strongest key is its owner
        assert torch.equal(_logits(attn, parts, groups).argmax(-1), owner)
    # control: the default (random) init routes at chance level
    plain = Attention(c, 4)
    hits = (_logits(plain, parts, groups).argmax(-1) == owner).float().mean()
    assert hits < 0.5


def test_a_group_without_parts_attends_uniformly():
    torch.manual_seed(0)
    c, p, g = 64, 16, 5
    attn = Attention(c, 4)
    parts, groups = torch.randn(p, c), torch.randn(g, c)
    owner = 1 + torch.arange(p) * (g - 1) // p  # group 0 owns nothing: a global token
    route_attention([attn], parts, groups, owner, groups_ask=True)
    assert torch.count_nonzero(groups[0]) == 0
    assert torch.allclose(_logits(attn, groups[:1], parts), torch.zeros(1, p), atol=1e-5)


def test_odd_width_is_an_error():
    with pytest.raises(ValueError, match="even width"):
        route_attention([Attention(5, 1)], torch.zeros(4, 5), torch.zeros(2, 5), torch.zeros(4, dtype=torch.long),
                        groups_ask=True)


def test_flextok_spatial_init_routes_registers():
    tok = vistok.create_tokenizer("flextok_tiny")  # spatial_init=True in the preset
    enc, dec = tok.encoder, tok.decoder
    assert torch.count_nonzero(enc.registers[0]) == 0 and torch.count_nonzero(dec.register_pos[0]) == 0
    table = dec.pos_embed.view(-1, dec.pos_embed.shape[-1])
    owner = 1 + torch.arange(len(table)) * (tok.num_tokens - 1) // len(table)
    assert torch.equal(_logits(dec.blocks[0].attn, table, dec.register_pos.detach()).argmax(-1), owner)
    with pytest.raises(ValueError, match="pos_grid"):
        vistok.create_tokenizer("flextok_tiny", pos_grid=16)


def test_larp_spatial_init_routes_queries():
    from vistok.tokenizers.larp import LARP

    tok = LARP(image_size=16, num_frames=4, patch_size=4, temporal_patch_size=2, width=64, depth=1, num_heads=2,
               num_latent_tokens=8, codebook_size=16, token_size=4, prior_depth=0, spatial_init=True)
    p = tok.patch_pos.shape[1]
    owner = torch.arange(p) * 8 // p
    # random codes of a 32-channel half collide now and then: most tokens (chance: 1 / 8) find their partner
    best = _logits(tok.encoder.blocks[0].attn, tok.latent_queries.detach(), tok.patch_pos[0]).argmax(-1)
    assert (owner[best] == torch.arange(8)).float().mean() >= 0.75
    best = _logits(tok.decoder.blocks[0].attn, tok.decoder_patch_pos[0], tok.decoder_latent_pos[0]).argmax(-1)
    assert (best == owner).float().mean() >= 0.75
