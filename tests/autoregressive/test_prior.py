"""The transformer prior of the autoregressive baseline (diffusion/models/prior.py): causal
attention, the key/value cache, the class prefix, and the training loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffusion.models.prior import TransformerPrior

V, N, K = 16, 12, 3


def tiny_prior(seed=0, **kw):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TransformerPrior(**{**dict(vocab_size=V, num_positions=N, num_classes=K, d_model=32,
                                          num_layers=2, num_heads=4), **kw}).eval()


def random_sequence(b=3, length=N + 1, seed=0):
    g = torch.Generator().manual_seed(seed)
    prefix = V + torch.randint(0, K + 1, (b, 1), generator=g)      # a class or the null class
    return torch.cat([prefix, torch.randint(0, V, (b, length - 1), generator=g)], dim=1)


def test_logits_shape_and_cache_shapes():
    prior = tiny_prior()
    seq = random_sequence(2, 5)
    logits, cache = prior(seq)
    assert logits.shape == (2, 5, V) and len(cache) == 2
    assert all(k.shape == v.shape == (2, 4, 5, 8) for k, v in cache)
    assert prior(seq, use_cache=False)[1] is None


def test_causality_a_later_token_never_changes_earlier_logits():
    prior = tiny_prior()
    seq = random_sequence(2)
    changed = seq.clone()
    changed[:, 7] = (changed[:, 7] + 1) % V
    a, _ = prior(seq)
    b, _ = prior(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=0)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-4


@pytest.mark.parametrize("chunks", [[1] * (N + 1), [4, 1, 3, 5], [1, 12], [13]])
def test_cached_forward_equals_the_full_forward(chunks):
    """Feeding the sequence in pieces with the cache (one token at a time, or several new tokens
    at once, which needs the offset causal mask) gives the full forward's logits."""
    prior = tiny_prior()
    seq = random_sequence(3)
    full, _ = prior(seq)
    pieces, cache, start = [], None, 0
    for n in chunks:
        logits, cache = prior(seq[:, start:start + n], past_key_values=cache)
        pieces.append(logits)
        start += n
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=0, atol=1e-5)


def test_prefix_ids_and_null_class():
    prior = tiny_prior()
    assert prior.prefix_ids(torch.tensor([0, 2, K]), 3).flatten().tolist() == [V, V + 2, V + K]
    assert prior.null_prefix_ids(2).flatten().tolist() == [V + K] * 2
    unconditional = tiny_prior(num_classes=None)
    assert unconditional.prefix_ids(None, 2).flatten().tolist() == [V, V]
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.null_prefix_ids(1)


def test_class_prefix_changes_the_prediction_of_the_first_token():
    prior = tiny_prior()
    logits, _ = prior(torch.tensor([[V], [V + 1]]))
    assert (logits[0, 0] - logits[1, 0]).abs().max() > 1e-3


def test_loss_is_next_token_cross_entropy_and_untrained_is_near_log_v():
    prior = tiny_prior()
    tokens = torch.randint(0, V, (4, N), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, K])
    seq = torch.cat([prior.prefix_ids(labels, 4), tokens], 1)
    logits, _ = prior(seq)
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens.reshape(-1))
    assert prior.loss(tokens, labels).item() == pytest.approx(reference.item(), rel=1e-6)
    assert prior.loss(tokens, labels).item() == pytest.approx(math.log(V), abs=0.2)


def test_a_few_steps_learn_a_fixed_sequence():
    prior = tiny_prior().train()
    tokens = torch.arange(N).remainder(V).repeat(8, 1)
    labels = torch.zeros(8, dtype=torch.long)
    opt = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    first = prior.loss(tokens, labels).item()
    for _ in range(40):
        opt.zero_grad()
        loss = prior.loss(tokens, labels)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first


def test_too_long_sequences_and_bad_configs_raise():
    prior = tiny_prior()
    with pytest.raises(ValueError, match="exceeds"):
        prior(random_sequence(1, N + 2))
    _, cache = prior(random_sequence(1, N + 1))
    with pytest.raises(ValueError, match="exceeds"):
        prior(torch.tensor([[0]]), past_key_values=cache)
    with pytest.raises(ValueError, match="divisible"):
        TransformerPrior(d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        TransformerPrior(vocab_size=0)
    with pytest.raises(ValueError, match="num_classes"):
        TransformerPrior(num_classes=0)


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    prior = tiny_prior()
    prior.save_pretrained(tmp_path / "prior", safe_serialization=True)
    again = TransformerPrior.from_pretrained(tmp_path / "prior").eval()
    seq = random_sequence(2)
    torch.testing.assert_close(again(seq)[0], prior(seq)[0], rtol=0, atol=0)
