"""CLIP / T5 text encoders from local folders (tiny random configs saved offline) and the shared LRU cache."""

import pytest
import torch

from vistok.text import CLIPTextEncoder, T5TextEncoder, TextEncoder, load_text_encoder

WORDS = "a an small large red orange yellow green blue purple circle square triangle star on the at in left right " \
        "top bottom center and".split()


def _word_tokenizer(tmp_path):
    """A whitespace word-level fast tokenizer (no downloads), saved with save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>"), len(vocab)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from transformers import CLIPTextConfig, CLIPTextModel

    path = tmp_path_factory.mktemp("clip")
    tok, vocab = _word_tokenizer(path)
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=24, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3)
    CLIPTextModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    path = tmp_path_factory.mktemp("t5")
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=384, d_model=24, d_kv=8, d_ff=48, num_layers=2, num_heads=3)
    T5EncoderModel(cfg).save_pretrained(path)
    ByT5Tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize("kind", ["clip", "t5"])
def test_local_folder_encoders(kind, clip_folder, t5_folder):
    # ByT5's tokens are bytes: the 34-byte prompt needs a longer window than CLIP's words
    folder, cls, dim, length = {"clip": (clip_folder, CLIPTextEncoder, 32, 20),
                                "t5": (t5_folder, T5TextEncoder, 24, 48)}[kind]
    enc = load_text_encoder({"type": kind, "path": str(folder)}, max_length=length)
    assert isinstance(enc, cls) and isinstance(enc, TextEncoder) and enc.dim == dim and not enc.training
    cond = enc(["a red circle on the left", "a large blue star at the top right"])
    assert cond.text.shape == (2, length, dim) and cond.text_mask.shape == (2, length)
    assert cond.text_mask.dtype == torch.bool
    assert cond.text_mask.sum(1)[0] < cond.text_mask.sum(1)[1]  # the longer prompt has more real tokens
    assert not torch.allclose(cond.text[0], cond.text[1])
    assert torch.equal(enc(["a large blue star at the top right"]).text[0], cond.text[1])  # cached path
    enc.train()
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    assert enc.spec() == {"type": kind, "path": str(folder)}


def test_pipeline_round_trips_a_clip_text_encoder(clip_folder, tmp_path):
    from vistok.registry import create_generator, create_tokenizer
    from vistok.sample import Pipeline

    enc = CLIPTextEncoder(clip_folder, max_length=16)
    tok = create_tokenizer("titok_tiny", width=32, depth=1, num_heads=2, num_latent_tokens=8, codebook_size=16)
    gen = create_generator("ar_tiny_t2i", width=32, depth=1, num_heads=2, vocab_size=16, seq_len=8, text_dim=32)
    Pipeline(tok, gen, enc, {"top_k": 4}).save(tmp_path / "pipe")
    pipe = Pipeline.from_folder(tmp_path / "pipe")
    assert isinstance(pipe.text_encoder, CLIPTextEncoder) and pipe.text_encoder.max_length == 16
    images, out = pipe(["a red circle on the left"], num_samples=2, seed=0)
    assert images.shape == (2, 3, 64, 64) and out.nfe == 8


class _Counting(TextEncoder):
    dim = 2

    def __init__(self, **kw):
        super().__init__(max_length=3, **kw)
        self.calls: list[list[str]] = []

    def _encode(self, prompts):
        self.calls.append(prompts)
        return [(torch.full((3, 2), float(len(p))), torch.ones(3, dtype=torch.bool), 3) for p in prompts]


def test_one_lru_cache_for_every_encoder():
    enc = _Counting(cache_size=2)
    enc(["a", "bb"])
    enc(["a"])  # cached: no call; "a" becomes most recent
    assert enc.calls == [["a", "bb"]]
    out = enc(["ccc", "a"])  # "ccc" evicts "bb" (least recently used), not "a"
    assert enc.calls[-1] == ["ccc"] and list(enc._memo) == ["a", "ccc"]
    assert out.text[:, 0, 0].tolist() == [3.0, 1.0]
    enc(["bb", "dddd", "a", "ccc"])  # more new prompts than the cache holds: still right, cache stays bounded
    assert len(enc._memo) == 2 and enc.calls[-1] == ["bb", "dddd"]
    off = _Counting(cache_size=0)
    off(["a"]), off(["a"])
    assert off.calls == [["a"], ["a"]] and not off._memo


def test_bad_specs_and_folders(tmp_path):
    assert load_text_encoder(None) is None
    with pytest.raises(ValueError, match="unknown text encoder 'bert'"):
        load_text_encoder("bert")
    with pytest.raises(ValueError, match="needs a local folder"):
        load_text_encoder("clip")
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        T5TextEncoder(tmp_path / "missing")


def test_max_length_beyond_clip_positions(clip_folder):
    with pytest.raises(ValueError, match="24 positions"):
        CLIPTextEncoder(clip_folder, max_length=77)
