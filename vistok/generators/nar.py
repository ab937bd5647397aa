"""NAR: next-*neighbour* prediction over a token grid, decoded one anti-diagonal per forward pass.

Paper: He et al., "Neighboring Autoregressive Modeling for Efficient Visual Generation", arXiv 2503.10696.
Reference code (facts only: shapes, key names, the mask and the logit mixing):
github.com/ThisisBillhe/NAR, ``NAR-images/autoregressive/models/gpt.py`` at 225c1fb, a LlamaGen fork.  What is
there and measured: ``docs/nar.md``.

A LlamaGen decoder (Llama blocks, 2D RoPE) with two heads: the **right** head (``right_norm``/``right_head``) reads
the hidden state after ``depth`` blocks and predicts the right neighbour of the token fed at that slot; the **down**
head reads it after ``down_depth`` further blocks and predicts the token below.  A token with both neighbours decoded
takes the mean of the two heads' logits (first row: right head only, first column: down head only, top-left: both
heads at the start slot).  The *proximity mask* lets a token on anti-diagonal ``row + col = d`` attend to every
token on diagonals ``<= d``, so a whole diagonal is predicted per pass (:func:`vistok.decoding.neighboring.decode_nar`).

Slots: ``[P text-prefix slots | start slot | grid tokens in raster order]``; token position ``p >= 1`` holds grid
token ``p - 1``.  LlamaGen's quirk is kept for checkpoint parity: condition slots get an all-zero rotary table (zero
queries and keys).  ``grid=(1, N)`` (1D tokenizers) has no down branch: the mask is causal, plain next-token AR.

Legend: b batch, l step length, t token positions, s cache slots, p prefix slots, c width, v vocab, d head dim.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.checkpoint import find_weight_file, load_state_dict_strict, read_keys, read_release
from vistok.interfaces import (
    Conditioning,
    Configurable,
    GeneratorOutput,
    KVCache,
    check_count,
    check_generator_tokens,
    check_positions,
    validating,
)
from vistok.layers import ConditionEmbedder, LlamaBlock, RMSNorm, find_multiple, rope_2d, run_blocks, token_grid
from vistok.layers.init import llamagen_init


def rope_2d_table(height: int, width: int, head_dim: int, base: float,
                  device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """LlamaGen 2D RoPE: cos/sin ``(1 + h * w, head_dim // 2)`` indexed by token position (raster order after the
    start slot).  Row 0 (the start slot) is all zero, not the identity: condition slots have zeroed queries and
    keys (the LlamaGen quirk)."""
    j = torch.arange(height * width, device=device)
    return tuple(F.pad(table, (0, 0, 1, 0)) for table in rope_2d(j // width, j % width, head_dim, base))


class NARGenerator(nn.Module, ConditionEmbedder, Configurable):
    """Neighbouring-AR transformer over a grid of token ids, with a preallocated KV cache.

    Args:
        vocab_size: codebook size of the tokenizer it models.
        seq_len: tokens per image (N = H * W).
        grid: ``(H, W)`` token grid; None = square grid of side ``sqrt(seq_len)``; ``(1, N)`` for 1D tokenizers.
        width, depth, num_heads: transformer size (``depth`` blocks feed the right head).
        down_depth: extra blocks between the right head and the down head (NAR: 1).
        mlp_hidden: SwiGLU hidden size (None: LlamaGen's ``find_multiple(int(8 * width / 3), 256)``).
        dropout: token/residual/MLP dropout.
        num_classes, text_dim, max_text_len, cond_dropout: the conditioning (classes with a null row for CFG, text
            states projected into ``max_text_len`` prefix slots): :meth:`ConditionEmbedder.init_conditioning`.
        rope_base: RoPE base.
        norm_eps: RMSNorm epsilon.
    """

    kind = "discrete"
    default_decoder = "nar"  # H + W - 1 passes; "ar" also works on the 1 x N grid
    inference_methods = ("step_heads",)  # what vistok.compile_inference compiles (step calls step_heads)

    def __init__(self, vocab_size: int = 1024, seq_len: int = 16, grid: tuple[int, int] | None = None,
                 width: int = 256, depth: int = 6, down_depth: int = 1, num_heads: int = 4,
                 mlp_hidden: int | None = None, dropout: float = 0.1, num_classes: int = 0, text_dim: int = 0,
                 max_text_len: int = 32, cond_dropout: float = 0.1, rope_base: float = 10000.0,
                 norm_eps: float = 1e-5):
        super().__init__()
        h, w = token_grid(seq_len, grid)
        if width % num_heads or (width // num_heads) % 4:
            raise ValueError(f"width {width} / num_heads {num_heads} must give a head dim divisible by 4 (2D RoPE)")
        check_count("down_depth", down_depth, 0)
        mlp_hidden = mlp_hidden or find_multiple(int(8 * width / 3), 256)
        self.vocab_size, self.seq_len, self.grid = vocab_size, seq_len, (h, w)
        self.width, self.num_heads, self.rope_base = width, num_heads, rope_base
        self.is_causal = h == 1  # one row: the proximity mask is the causal mask
        self.init_conditioning(width, num_classes=num_classes, text_dim=text_dim, max_text_len=max_text_len,
                               cond_dropout=cond_dropout, text_bias=False)
        # backbone -> right head
        self.tok_embed = nn.Embedding(vocab_size, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(LlamaBlock(width, num_heads, mlp_hidden, dropout, norm_eps) for _ in range(depth))
        self.right_norm = RMSNorm(width, norm_eps)
        self.right_head = nn.Linear(width, vocab_size, bias=False)
        # extra blocks -> down head (absent for a single-row grid: no token has a lower neighbour)
        has_down = h > 1
        self.down_blocks = nn.ModuleList(LlamaBlock(width, num_heads, mlp_hidden, dropout, norm_eps)
                                         for _ in range(down_depth if has_down else 0))
        self.down_norm = RMSNorm(width, norm_eps) if has_down else None
        self.down_head = nn.Linear(width, vocab_size, bias=False) if has_down else None
        # diagonal index of each token position (position 0, the start slot, is diagonal -1)
        cells = torch.arange(seq_len + 1) - 1
        self.register_buffer("diag", torch.where(cells < 0, -1, cells // w + cells % w), persistent=False)
        llamagen_init(self, self.right_head)  # LlamaGen/NAR zero only the first output head

    def token_embeddings(self) -> Tensor:
        """The ``(V, width)`` input embedding table (token latents for GSD / LANTERN)."""
        return self.tok_embed.weight

    # -- decoding interface ------------------------------------------------------------------------------------
    def new_cache(self, cond: Conditioning, max_tokens: int | None = None) -> KVCache:
        """Allocate a cache of ``max_tokens`` token positions (default ``seq_len``; ``seq_len + 1`` also feeds the last
        grid token) for ``cond``'s batch, prefill the text prefix (if any) and track ``written`` ``(b, t)``: which
        token positions hold entries."""
        max_tokens = max_tokens or self.seq_len
        if not 1 <= max_tokens <= self.seq_len + 1:
            raise ValueError(f"max_tokens must be in [1, {self.seq_len + 1}], got {max_tokens}")
        zero = lambda x: x.new_zeros(*x.shape[:2], self.width // self.num_heads // 2)  # LlamaGen's prefix rotation
        cache = self.new_kv_cache(cond, len(self.blocks) + len(self.down_blocks), max_tokens,
                                  lambda x, slots, mask, cache: self._run(x, slots, (zero(x),) * 2, mask, cache))
        cache.written = torch.zeros(cond.batch_size, max_tokens, dtype=torch.bool, device=cache.lengths.device)
        return cache

    def _proximity_mask(self, positions: Tensor, cache: KVCache) -> Tensor:
        """``(b, 1, l, s)``: prefix slots that are real, plus written (or fed now) token slots on diagonals
        ``<=`` the query's."""
        b, t = positions.shape[0], cache.max_tokens
        slot = torch.arange(t, device=positions.device)
        fed = torch.zeros(b, t, dtype=torch.bool, device=positions.device).scatter(1, positions, True)
        valid = (cache.written & (slot < cache.lengths[:, None])) | fed  # b t
        near = self.diag[:t][None, None, :] <= self.diag[positions][:, :, None]  # b l t
        return cache.with_prefix(near & valid[:, None, :])

    def step_heads(self, inputs: Tensor, positions: Tensor, cache: KVCache) -> tuple[Tensor, Tensor | None]:
        """``(right, down)`` (b, l, v) head logits at the slots of ``inputs`` (b, l), the grid tokens at
        ``positions - 1``, as :class:`~vistok.interfaces.NeighbourGenerator` specifies (``down`` None for one row)."""
        check_positions(positions, cache.max_tokens)
        x = self.with_start(self.tok_embed(inputs.clamp(min=0)), positions, cache)
        cos, sin = rope_2d_table(*self.grid, self.width // self.num_heads, self.rope_base, positions.device)
        mask = self._proximity_mask(positions, cache)
        rope = (cos[positions], sin[positions])  # b l d/2
        right, down = self._run(self.drop(x), positions + cache.prefix_len, rope, mask, cache)
        cache.written = cache.written.scatter(1, positions, True)
        cache.advance(positions)
        right = self.right_head(self.right_norm(right)).float()
        return right, (None if self.down_head is None else self.down_head(self.down_norm(down)).float())

    def step(self, inputs: Tensor, positions: Tensor, cache: KVCache) -> Tensor:
        """Generator protocol: logits (b, l, v) of the grid tokens at ``positions`` (``inputs`` as for
        :meth:`step_heads`), mixing the right head at slot ``p`` and the down head at slot ``p - W + 1``: both must be
        fed in this call (a teacher-forced call over all positions is); ``decoder="nar"`` uses :meth:`step_heads`."""
        check_positions(positions, self.seq_len)
        right, down = self.step_heads(inputs, positions, cache)
        if down is None:  # single row: the right neighbour is the next token
            return right
        b, w = positions.shape[0], self.grid[1]
        idx = torch.arange(positions.shape[1], device=positions.device).expand(b, -1)
        where = torch.full((b, cache.max_tokens), -1, dtype=torch.long, device=positions.device)
        where = where.scatter(1, positions, idx)  # call index of each fed position
        src = torch.where(positions == 0, idx, where.gather(1, (positions - w + 1).clamp(min=0)))
        use_right = (positions % w > 0) | (positions == 0)
        use_down = (positions >= w) | (positions == 0)
        if validating(src) and bool((use_down & (src < 0)).any()):
            raise ValueError("NAR predicts token p from the slots of its left (p) and upper (p - W + 1) neighbours; "
                             "feed both in the same call, or decode with decoder='nar' (anti-diagonal steps)")
        below = down.gather(1, src.clamp(min=0)[..., None].expand(-1, -1, down.shape[-1]))
        both = (use_right & use_down)[..., None]
        return torch.where(both, (right + below) / 2, torch.where(use_right[..., None], right, below))

    def _run(self, x: Tensor, slots: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor,
             cache: KVCache) -> tuple[Tensor, Tensor]:
        """Blocks -> hidden state for the right head; extra blocks -> hidden state for the down head."""
        right = run_blocks(self.blocks, x, mask, rope, cache, slots)
        return right, run_blocks(self.down_blocks, right, mask, rope, cache, slots, len(self.blocks))

    # -- training ----------------------------------------------------------------------------------------------
    def forward(self, tokens: Tensor, cond: Conditioning) -> GeneratorOutput:
        """Teacher-forced neighbour loss. tokens (b, n) or (b, h, w) ids -> GeneratorOutput(loss, logits (b, n, v)).

        ``logits[:, p]`` is the mixed right/down prediction of grid token ``p``; the loss is its cross-entropy.
        """
        h, w = self.grid
        if isinstance(tokens, Tensor) and tokens.ndim == 3 and tuple(tokens.shape[1:]) == (h, w):
            tokens = tokens.flatten(1)
        check_generator_tokens(tokens, seq_len=self.seq_len, vocab_size=self.vocab_size,
                               layout=f"(B, {self.seq_len}) or (B, {h}, {w}) for this {h}x{w} grid")
        logits = self.teacher_forced(tokens, cond)
        return GeneratorOutput(F.cross_entropy(logits.flatten(0, 1), tokens.flatten()), logits)


# --------------------------------------------------------------------------------------------------------------
# Official checkpoints (ThisisBillhe/NAR, c2i)
# --------------------------------------------------------------------------------------------------------------
_RENAME = {"tok_embeddings.weight": "tok_embed.weight", "cls_embedding.embedding_table.weight": "class_embed.weight",
           "norm.weight": "right_norm.weight", "output.weight": "right_head.weight",
           "medusa_norm.weight": "down_norm.weight", "medusa_output.weight": "down_head.weight"}
_BLOCK_RENAME = {"attention.wqkv.weight": "attention.qkv.weight", "attention.wo.weight": "attention.proj.weight"}
_HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 20, 1536: 24, 2048: 32, 2560: 40, 3200: 32, 4096: 32}  # GPT-* configs


def convert_nar_state_dict(state: dict[str, Tensor], *, depth: int,
                           num_classes: int | None = None) -> dict[str, Tensor]:
    """Official NAR ``Transformer.state_dict()`` -> :class:`NARGenerator` keys.

    ``layers.{i}`` go to ``blocks.{i}`` for ``i < depth`` and to ``down_blocks.{i - depth}`` after; ``output``/
    ``norm`` are the right head, ``medusa_output``/``medusa_norm`` the down head.  KV-cache buffers left by
    sampling are dropped.  A class table without the null row (trained without label dropout) gets a zero null
    row.  Raises ``ValueError`` on any key it does not understand (text-conditional checkpoints included).
    """
    out, unknown = {}, []
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("_orig_mod.")
        if ".kv_cache." in key or key in ("freqs_cis", "causal_mask", "diagonal_mask"):
            continue
        if m := re.fullmatch(r"layers\.(\d+)\.(.+)", key):
            i, rest = int(m.group(1)), m.group(2)
            name = f"blocks.{i}" if i < depth else f"down_blocks.{i - depth}"
            out[f"{name}.{_BLOCK_RENAME.get(rest, rest)}"] = value
        elif key in _RENAME:
            out[_RENAME[key]] = value
        else:
            unknown.append(key)
    if unknown:
        hint = " (text-conditional NAR checkpoints are not supported)" if any("cap_proj" in k for k in unknown) else ""
        raise ValueError(f"unexpected keys in the NAR checkpoint{hint}: {sorted(unknown)[:20]}")
    table = out.get("class_embed.weight")
    if table is not None and num_classes is not None and table.shape[0] == num_classes:
        out["class_embed.weight"] = torch.cat([table, table.new_zeros(1, table.shape[1])])
    return out


_WEIGHT_NAMES, _WEIGHT_PATTERNS = ("weights.safetensors", "model.safetensors"), ("*.pt", "*.pth", "*.bin")


def official_matches(config: dict, folder: Path) -> bool:
    """An official NAR folder: ``config.json`` with NAR ``model_args``, or bare weights holding the down head."""
    args = config.get("model_args")
    if isinstance(args, dict):
        return "medusa_attention_num" in args
    if config:
        return False
    path = find_weight_file(folder, _WEIGHT_NAMES, _WEIGHT_PATTERNS)
    try:
        return path is not None and "medusa_output.weight" in read_keys(path)
    except ValueError:  # not a weights-only checkpoint: not ours to read
        return False


def load_official(folder: str | Path) -> NARGenerator:
    """Build a :class:`NARGenerator` from an official NAR c2i folder (config.json ``model_args`` + weights).

    Without a config, sizes are read from the weights (head count from the GPT-* table, 16 x 16 grid).
    """
    config, state, path = read_release(folder, _WEIGHT_NAMES, _WEIGHT_PATTERNS)
    args = config.get("model_args")
    if not (isinstance(args, dict) and "medusa_attention_num" in args):  # bare checkpoint: infer what the weights show
        width = state["tok_embeddings.weight"].shape[1]
        if width not in _HEADS_BY_WIDTH:
            raise ValueError(f"cannot infer the head count of width {width}: add a config.json with model_args")
        layers = {int(k.split(".")[1]) for k in state if k.startswith("layers.")}
        args = dict(dim=width, n_layer=len(layers) - 1, n_head=_HEADS_BY_WIDTH[width], medusa_attention_num=1,
                    vocab_size=state["tok_embeddings.weight"].shape[0], block_size=256, model_type="c2i",
                    num_classes=state["cls_embedding.embedding_table.weight"].shape[0] - 1, class_dropout_prob=0.1)
    if args.get("model_type", "c2i") != "c2i" or args.get("cls_token_num", 1) != 1:
        raise ValueError("only class-conditional NAR checkpoints (model_type 'c2i', one class token) are supported")
    if args.get("n_kv_head") not in (None, args["n_head"]):
        raise ValueError("grouped-query attention (n_kv_head != n_head) is not supported")
    hidden = int(2 * 4 * args["dim"] / 3)
    if args.get("ffn_dim_multiplier") is not None:
        hidden = int(args["ffn_dim_multiplier"] * hidden)
    kwargs = dict(vocab_size=args["vocab_size"], seq_len=args["block_size"], width=args["dim"],
                  depth=args["n_layer"], down_depth=args.get("medusa_attention_num", 1), num_heads=args["n_head"],
                  mlp_hidden=find_multiple(hidden, args.get("multiple_of", 256)),
                  dropout=args.get("resid_dropout_p", 0.1), num_classes=args["num_classes"],
                  cond_dropout=args.get("class_dropout_prob", 0.1), rope_base=float(args.get("rope_base", 10000)),
                  norm_eps=args.get("norm_eps", 1e-5))
    model = NARGenerator(**kwargs)
    converted = convert_nar_state_dict(state, depth=kwargs["depth"], num_classes=kwargs["num_classes"])
    load_state_dict_strict(model, converted, str(path))
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------------------
_C2I_256 = dict(vocab_size=16384, seq_len=256, num_classes=1000)  # ImageNet 256 px on LlamaGen VQ-16 (16 x 16)
NAR_PRESETS: dict[str, dict] = {
    # tiny class-conditional model on an 8 x 8 grid (tests, CPU experiments)
    "nar_tiny_c2i": dict(vocab_size=1024, seq_len=64, width=256, depth=6, num_heads=4, num_classes=24),
    # the paper's models (official GPT-* configs plus one down block); parameter counts in docs/nar.md
    "nar_b": dict(**_C2I_256, width=768, depth=12, num_heads=12),
    "nar_m": dict(**_C2I_256, width=1024, depth=18, num_heads=16),
    "nar_l": dict(**_C2I_256, width=1024, depth=24, num_heads=16),
    "nar_xl": dict(**_C2I_256, width=1280, depth=36, num_heads=20),
    "nar_xxl": dict(**_C2I_256, width=1536, depth=48, num_heads=24),
}
