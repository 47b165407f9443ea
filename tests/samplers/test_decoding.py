"""Tests for samplers/decoding.py: logits processors, guidance, greedy, sampling and beam search.

The token model is a seeded one-layer causal transformer with a real key/value cache (``ToyLM``);
references are written independently of the module: rank counting for top-k, a float64 loop for
top-p, exhaustive enumeration of all ``V ** T`` continuations for beam search.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.stats import chisquare

from samplers import (
    DecodeOutput,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    build_logits_processors,
    classifier_free_guidance,
    decode,
    reorder_cache,
)
from samplers.decoding import _beam_search, _Stepper


# ----------------------------------------------------------------------------------- toy model

class ToyLM(torch.nn.Module):
    """One pre-LN causal attention block + MLP; cache = (k, v), each (B, heads, S, head_dim)."""

    def __init__(self, vocab_size: int = 6, d: int = 16, heads: int = 2, max_len: int = 32,
                 seed: int = 0, logit_scale: float = 2.0):
        super().__init__()
        self.heads = heads
        self.tok = torch.nn.Embedding(vocab_size, d)
        self.pos = torch.nn.Embedding(max_len, d)
        self.ln1, self.ln2, self.lnf = (torch.nn.LayerNorm(d) for _ in range(3))
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.proj = torch.nn.Linear(d, d)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 2 * d), torch.nn.GELU(),
                                       torch.nn.Linear(2 * d, d))
        self.head = torch.nn.Linear(d, vocab_size)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if not name.startswith("ln"):
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
            self.head.weight.mul_(logit_scale)

    def forward(self, input_ids, past_key_values=None):
        B, L = input_ids.shape
        start = 0 if past_key_values is None else past_key_values[0].shape[2]
        x = self.tok(input_ids) + self.pos(torch.arange(start, start + L))
        q, k, v = (t.view(B, L, self.heads, -1).transpose(1, 2)
                   for t in self.qkv(self.ln1(x)).chunk(3, dim=-1))
        if past_key_values is not None:
            k = torch.cat([past_key_values[0], k], dim=2)
            v = torch.cat([past_key_values[1], v], dim=2)
        S = k.shape[2]
        visible = torch.arange(S)[None, :] <= torch.arange(start, start + L)[:, None]   # (L, S)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        att = att.masked_fill(~visible, -math.inf).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(B, L, -1))
        x = x + self.mlp(self.ln2(x))
        return self.head(self.lnf(x)), (k, v)


class Recorder:
    """Wraps a model; records (batch, length, cached) of every call."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, input_ids, past_key_values=None):
        self.calls.append((input_ids.shape[0], input_ids.shape[1], past_key_values is not None))
        return self.model(input_ids, past_key_values=past_key_values)


class NoCacheModel:
    """A TokenModel without a cache (returns None): valid only with use_cache=False."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids, past_key_values=None):
        assert past_key_values is None
        return self.model(input_ids)[0], None


V = 6
NULL = V - 1          # plays the null class token in the guided tests


def seq_log_probs(model, prefix, seqs, null_prefix=None, guidance_scale=1.0):
    """Summed (guided) log-probabilities of continuations ``seqs`` (N, T) after one prefix (1, P),
    from one uncached forward over the full sequences."""
    N, T = seqs.shape
    P = prefix.shape[1]

    def step_logits(pre):
        ids = torch.cat([pre.expand(N, -1), seqs], dim=1)
        return model(ids)[0][:, P - 1:P + T - 1]                                # (N, T, V)

    with torch.no_grad():
        cond = step_logits(prefix).log_softmax(-1)
        if guidance_scale != 1.0:
            uncond = step_logits(null_prefix).log_softmax(-1)
            cond = (uncond + guidance_scale * (cond - uncond)).log_softmax(-1)
        return cond.gather(-1, seqs[..., None])[..., 0]                          # (N, T)


def all_sequences(vocab_size, T):
    return torch.tensor(list(itertools.product(range(vocab_size), repeat=T)))


# ---------------------------------------------------------------------------- top-k and top-p

def topk_reference(x, k):
    """Keep token i iff fewer than k tokens score strictly higher (ties with the k-th kept)."""
    higher = (x[:, None, :] > x[:, :, None]).sum(-1)                           # (B, V)
    return torch.where(higher < k, x, torch.full_like(x, -math.inf))


def topp_reference(x, p, min_keep=1):
    """Float64 loop: walk tokens by descending probability until the mass reaches p."""
    probs = x.double().softmax(-1)
    out = torch.full_like(x, -math.inf)
    for b in range(x.shape[0]):
        order = sorted(range(x.shape[1]), key=lambda i: -probs[b, i].item())
        mass = 0.0
        for n, i in enumerate(order):
            if mass >= p and n >= min_keep:
                break
            out[b, i] = x[b, i]
            mass += probs[b, i].item()
    return out


@pytest.mark.parametrize("vocab", [2, 5, 17, 64])
def test_top_k_matches_rank_counting_reference(vocab):
    g = torch.Generator().manual_seed(vocab)
    for seed in range(20):
        x = torch.randn(8, vocab, generator=g) * (1 + seed % 4)
        for k in sorted({1, 2, 3, vocab // 2 + 1, vocab - 1, vocab, vocab + 3} - {0}):
            got = TopKLogitsWarper(k)(x)
            assert torch.equal(got, topk_reference(x, k)), (vocab, seed, k)
            assert (torch.isfinite(got).sum(-1) == min(k, vocab)).all()
            assert torch.equal(got.argmax(-1), x.argmax(-1))                   # the best is kept


@pytest.mark.parametrize("vocab", [2, 5, 17, 64])
def test_top_p_matches_float64_loop_reference(vocab):
    g = torch.Generator().manual_seed(100 + vocab)
    for seed in range(20):
        x = torch.randn(8, vocab, generator=g) * (0.5 + seed % 4)
        for p in [1e-6, 0.1, 0.5, 0.9, 0.99, float(torch.rand(1, generator=g)) * 0.98 + 0.01]:
            got = TopPLogitsWarper(p)(x)
            assert torch.equal(got, topp_reference(x, p)), (vocab, seed, p)
            assert torch.equal(got.argmax(-1), x.argmax(-1))                   # the best is kept


def test_top_p_keeps_the_smallest_set_reaching_p_by_subset_enumeration():
    g = torch.Generator().manual_seed(7)
    vocab = 6
    subsets = [s for n in range(1, vocab + 1) for s in itertools.combinations(range(vocab), n)]
    for _ in range(30):
        x = torch.randn(1, vocab, generator=g) * 2
        p = float(torch.rand(1, generator=g)) * 0.95 + 0.02
        probs = x.double().softmax(-1)[0]
        # the smallest subsets with mass >= p; among those, the one of largest mass
        reaching = [s for s in subsets if probs[list(s)].sum() >= p]
        size = min(len(s) for s in reaching)
        best = max((s for s in reaching if len(s) == size), key=lambda s: probs[list(s)].sum())
        kept = torch.isfinite(TopPLogitsWarper(p)(x))[0].nonzero().view(-1).tolist()
        assert kept == sorted(best)


def test_top_p_stops_as_soon_as_the_mass_reaches_p():
    x = torch.tensor([[2.0, 1.0, 0.0, 0.0]]) * math.log(2)        # p = 1/2, 1/4, 1/8, 1/8 exactly
    assert x.softmax(-1).cumsum(-1).tolist() == [[0.5, 0.75, 0.875, 1.0]]
    kept = [torch.isfinite(TopPLogitsWarper(p)(x)).sum().item() for p in (0.5, 0.51, 0.75, 0.76)]
    assert kept == [1, 2, 2, 4]                                    # the two 1/8 are tied


def test_no_ops_at_k_equal_vocab_and_p_equal_one():
    x = torch.randn(4, 9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(TopKLogitsWarper(9)(x), x)
    assert torch.equal(TopKLogitsWarper(50)(x), x)
    assert torch.equal(TopPLogitsWarper(1.0)(x), x)
    assert torch.equal(TemperatureLogitsWarper(1.0)(x), x)
    assert build_logits_processors() == []
    assert build_logits_processors(top_p=1.0) == []


def test_warpers_are_equivariant_under_vocabulary_permutation():
    g = torch.Generator().manual_seed(3)
    for vocab in (5, 23):
        for _ in range(10):
            x = torch.randn(6, vocab, generator=g) * 3
            perm = torch.randperm(vocab, generator=g)
            for warp in (TopKLogitsWarper(3), TopPLogitsWarper(0.7), TopPLogitsWarper(0.3, 2),
                         build_logits_processors(0.7, 4, 0.8)):
                assert torch.equal(warp(x[:, perm]), warp(x)[:, perm])


def test_min_tokens_to_keep_is_respected():
    x = torch.tensor([[10.0, 0.0, -1.0, -2.0, -3.0]])                          # p(best) ~ 1
    assert torch.isfinite(TopPLogitsWarper(0.5)(x)).sum() == 1
    assert torch.isfinite(TopPLogitsWarper(0.5, min_tokens_to_keep=3)(x)).sum() == 3
    assert torch.isfinite(TopKLogitsWarper(1, min_tokens_to_keep=4)(x)).sum() == 4
    kept = TopPLogitsWarper(0.5, min_tokens_to_keep=3)(x)
    assert torch.equal(kept[0, :3], x[0, :3]) and torch.isinf(kept[0, 3:]).all()


def test_ties_at_the_boundary_are_all_kept():
    x = torch.tensor([[1.0, 2.0, 2.0, 0.0]])
    assert torch.isfinite(TopKLogitsWarper(1)(x)).tolist() == [[False, True, True, False]]
    assert torch.isfinite(TopKLogitsWarper(2)(x)).tolist() == [[False, True, True, False]]
    assert torch.isfinite(TopPLogitsWarper(0.1)(x)).tolist() == [[False, True, True, False]]


def test_processor_list_applies_in_order_temperature_top_k_top_p():
    procs = build_logits_processors(temperature=0.5, top_k=3, top_p=0.9)
    assert [type(p) for p in procs] == [TemperatureLogitsWarper, TopKLogitsWarper,
                                        TopPLogitsWarper]
    x = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    expected = TopPLogitsWarper(0.9)(TopKLogitsWarper(3)(x / 0.5))
    assert torch.equal(procs(x), expected)
    assert torch.equal(LogitsProcessorList([lambda s: s + 1, lambda s: s * 2])(x), (x + 1) * 2)


def test_classifier_free_guidance_reference_value():
    cond = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.25)]])
    uncond = torch.tensor([[0.0, 0.0, 0.0]])                                   # uniform
    got = classifier_free_guidance(cond, uncond, 3.0)
    # u + 3 (c - u) with u = log(1/3): log(1/3) + 3 log(3/2), log(1/3) + 3 log(3/4) (twice)
    expected = torch.tensor([[math.log(1 / 3) + 3 * math.log(1.5)] + [math.log(1 / 3)
                                                                       + 3 * math.log(0.75)] * 2])
    torch.testing.assert_close(got, expected)
    # shift-invariant in the raw logits; s = 1 is the conditional log-softmax, s = 0 the null one
    torch.testing.assert_close(classifier_free_guidance(cond + 4.0, uncond - 2.0, 3.0), expected)
    assert torch.equal(classifier_free_guidance(cond + 1, uncond, 1.0), cond)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond + 1, 0.0),
                               torch.full((1, 3), math.log(1 / 3)))


def test_reorder_cache_tree_maps_and_keeps_container_types():
    a, b = torch.arange(3.0)[:, None], torch.arange(6.0).view(3, 2)
    past = ([(a, b), (a, None)], {"x": b})
    out = reorder_cache(past, torch.tensor([2, 2, 0]))
    assert isinstance(out, tuple) and isinstance(out[0], list) and isinstance(out[0][0], tuple)
    assert out[0][0][0].view(-1).tolist() == [2.0, 2.0, 0.0]
    assert out[0][1][1] is None
    assert out[1]["x"].tolist() == [[4.0, 5.0], [4.0, 5.0], [0.0, 1.0]]
    with pytest.raises(TypeError, match="str"):
        reorder_cache(("not a tensor",), torch.tensor([0]))


# ------------------------------------------------------------------------- greedy and sampling

def manual_greedy(model, prefix, T, null_prefix=None, s=1.0):
    """Greedy decoding written out: full forward each step, guidance by hand."""
    seq = prefix.clone()
    null = None if null_prefix is None else null_prefix.clone()
    with torch.no_grad():
        for _ in range(T):
            logp = model(seq)[0][:, -1].log_softmax(-1)
            if s != 1.0:
                u = model(null)[0][:, -1].log_softmax(-1)
                logp = u + s * (logp - u)
            tok = logp.argmax(-1, keepdim=True)
            seq = torch.cat([seq, tok], 1)
            if null is not None:
                null = torch.cat([null, tok], 1)
    return seq[:, prefix.shape[1]:]


@pytest.mark.parametrize("s", [1.0, 3.0])
def test_greedy_matches_a_hand_written_loop_and_the_cache_changes_nothing(s):
    model = ToyLM(seed=1)
    prefix = torch.tensor([[0, 1], [2, 3], [4, 4]])
    null = torch.full_like(prefix, NULL)
    kwargs = dict(do_sample=False, guidance_scale=s, null_prefix=null, output_scores=True)
    cached = decode(model, prefix, 8, use_cache=True, **kwargs)
    full = decode(model, prefix, 8, use_cache=False, **kwargs)
    assert isinstance(cached, DecodeOutput)
    assert cached.sequences.shape == (3, 8) and cached.sequences.dtype == torch.long
    assert torch.equal(cached.sequences, manual_greedy(model, prefix, 8, null, s))
    assert torch.equal(cached.sequences, full.sequences)
    assert len(cached.scores) == 8 and cached.scores[0].shape == (3, V)
    for a, b in zip(cached.scores, full.scores):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    # log_probs: the chosen tokens' processed log-probabilities, = a rescoring from scratch
    chosen = torch.stack(cached.scores, 1).gather(-1, cached.sequences[..., None])[..., 0]
    torch.testing.assert_close(cached.log_probs, chosen.sum(1))
    for i in range(3):
        rescored = seq_log_probs(model, prefix[i:i + 1], cached.sequences[i:i + 1],
                                 null[i:i + 1], s).sum()
        torch.testing.assert_close(cached.log_probs[i], rescored, atol=1e-4, rtol=0)


def test_no_cache_model_works_with_use_cache_false_and_is_refused_otherwise():
    model = ToyLM(seed=2)
    prefix = torch.tensor([[1], [2]])
    ref = decode(model, prefix, 5, do_sample=False)
    assert torch.equal(decode(NoCacheModel(model), prefix, 5, do_sample=False,
                              use_cache=False).sequences, ref.sequences)
    with pytest.raises(ValueError, match="use_cache=False"):
        decode(NoCacheModel(model), prefix, 5, do_sample=False)


@pytest.mark.parametrize("s, use_cache", [(1.0, True), (1.0, False), (2.5, True), (0.0, False)])
def test_one_model_call_per_token_of_batch_b_or_2b(s, use_cache):
    rec = Recorder(ToyLM(seed=0))
    prefix = torch.tensor([[0, 1], [1, 2], [2, 3]])
    out = decode(rec, prefix, 6, guidance_scale=s, null_prefix=torch.full_like(prefix, NULL),
                 use_cache=use_cache, generator=torch.Generator().manual_seed(0))
    rows = 3 if s == 1.0 else 6
    assert out.nfe == len(rec.calls) == 6
    assert [c[0] for c in rec.calls] == [rows] * 6
    if use_cache:
        assert rec.calls == [(rows, 2, False)] + [(rows, 1, True)] * 5
    else:
        assert rec.calls == [(rows, 2 + t, False) for t in range(6)]


def test_beam_search_calls_batch_b_times_beams_and_reorders_the_cache():
    rec = Recorder(ToyLM(seed=0))
    prefix = torch.tensor([[0], [1]])
    out = decode(rec, prefix, 5, num_beams=3, guidance_scale=2.0,
                 null_prefix=torch.full_like(prefix, NULL))
    assert out.nfe == len(rec.calls) == 5
    assert rec.calls == [(12, 1, False)] + [(12, 1, True)] * 4
    assert out.scores is None


def test_temperature_zero_and_tiny_temperature_sampling_equal_greedy():
    model = ToyLM(seed=4)
    prefix = torch.tensor([[0], [1], [2], [3]])
    greedy = decode(model, prefix, 7, do_sample=False, output_scores=True)
    t0 = decode(model, prefix, 7, temperature=0.0, output_scores=True,
                generator=torch.Generator().manual_seed(0))
    assert torch.equal(t0.sequences, greedy.sequences)
    assert torch.equal(t0.log_probs, greedy.log_probs)                          # no warper at T = 0
    for seed in range(5):
        tiny = decode(model, prefix, 7, temperature=1e-6,
                      generator=torch.Generator().manual_seed(seed))
        assert torch.equal(tiny.sequences, greedy.sequences)
    # the temperature warper is applied to greedy's reported scores (processed distribution)
    sharp = decode(model, prefix, 7, do_sample=False, temperature=0.5)
    assert torch.equal(sharp.sequences, greedy.sequences)
    assert (sharp.log_probs > greedy.log_probs).all()


def test_sampling_is_seeded_and_leaves_the_global_rng_alone():
    model = ToyLM(seed=5)
    prefix = torch.tensor([[0], [1], [2]])
    state = torch.get_rng_state()
    runs = [decode(model, prefix, 12, top_k=4, generator=torch.Generator().manual_seed(s))
            for s in (11, 11, 12)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    assert torch.equal(runs[0].log_probs, runs[1].log_probs)
    assert not torch.equal(runs[0].sequences, runs[2].sequences)


@pytest.mark.parametrize("s", [1.0, 2.0])
def test_per_row_generators_make_rows_batch_invariant(s):
    model = ToyLM(seed=6)
    prefix = torch.tensor([[0, 1], [1, 1], [2, 0], [3, 3], [4, 2]])
    null = torch.full_like(prefix, NULL)

    def gens(seeds):
        return [torch.Generator().manual_seed(x) for x in seeds]

    kw = dict(top_p=0.95, temperature=1.3, guidance_scale=s, null_prefix=null)
    batch = decode(model, prefix, 10, generator=gens(range(100, 105)), **kw)
    for i in range(5):
        alone = decode(model, prefix[i:i + 1], 10, generator=gens([100 + i]),
                       **dict(kw, null_prefix=null[i:i + 1]))
        assert torch.equal(alone.sequences[0], batch.sequences[i]), i
        torch.testing.assert_close(alone.log_probs[0], batch.log_probs[i])
    # the rows really are random: five seeds do not all give the same tokens
    assert len({tuple(r) for r in batch.sequences.tolist()}) > 1


@pytest.mark.parametrize("settings", [dict(), dict(temperature=0.7, top_k=4),
                                      dict(top_p=0.95, guidance_scale=1.5)])
def test_first_token_frequencies_match_the_processed_distribution(settings):
    model = ToyLM(seed=7, logit_scale=1.0)
    n = 6000
    prefix = torch.tensor([[1, 2]]).expand(n, -1)
    null = torch.full_like(prefix, NULL)
    out = decode(model, prefix, 1, null_prefix=null, generator=torch.Generator().manual_seed(0),
                 output_scores=True, **settings)
    # the distribution computed here from the raw model, not from decode's scores
    with torch.no_grad():
        logits = model(prefix[:1])[0][:, -1]
        if settings.get("guidance_scale", 1.0) != 1.0:
            logits = classifier_free_guidance(logits, model(null[:1])[0][:, -1],
                                              settings["guidance_scale"])
        procs = build_logits_processors(settings.get("temperature", 1.0), settings.get("top_k"),
                                        settings.get("top_p"))
        probs = procs(logits).softmax(-1)[0].double()
    torch.testing.assert_close(out.scores[0][0].exp().double(), probs, atol=1e-6, rtol=0)
    counts = torch.bincount(out.sequences[:, 0], minlength=V).double()
    assert (counts[probs == 0] == 0).all()                                      # removed: never
    support = probs > 0
    assert int(support.sum()) >= 2                                              # a real test
    expected = probs[support] / probs[support].sum() * n                       # float32 rounding
    stat = chisquare(counts[support].numpy(), expected.numpy())
    assert stat.pvalue > 1e-3, (counts, probs * n)


def test_eos_stops_rows_pads_them_and_stops_early():
    model, eos = ToyLM(seed=8), 0
    prefix = torch.tensor([[0], [1], [2], [3]])
    greedy = decode(model, prefix, 10, do_sample=False, output_scores=True)
    stops = [row.index(eos) + 1 if eos in row else 10 for row in greedy.sequences.tolist()]
    assert len(set(stops)) > 1 and max(stops) < 10                     # rows end at other steps
    out = decode(model, prefix, 10, do_sample=False, eos_token_id=eos, output_scores=True)
    for i, (row, stop) in enumerate(zip(greedy.sequences.tolist(), stops)):
        assert out.sequences[i].tolist() == row[:stop] + [eos] * (10 - stop)
        chosen = [greedy.scores[t][i, row[t]] for t in range(stop)]
        torch.testing.assert_close(out.log_probs[i], torch.stack(chosen).sum())
    # once every row has finished, no more model calls
    assert out.nfe == len(out.scores) == max(stops)


# ------------------------------------------------------------------------------- beam search

def run_beams(model, prefix, T, K, **kw):
    """_beam_search with any K, including K = 1 (which decode routes to greedy)."""
    null = kw.pop("null_prefix", None)
    s = kw.pop("guidance_scale", 1.0)
    ids = prefix.repeat_interleave(K, 0)
    if s != 1.0:
        ids = torch.cat([ids, null.repeat_interleave(K, 0)])
    step = _Stepper(model, ids, s, build_logits_processors(), kw.pop("use_cache", True))
    with torch.no_grad():
        return _beam_search(step, T, K, kw.pop("eos_token_id", None), kw.pop("length_penalty", 0.0))


@pytest.mark.parametrize("s", [1.0, 2.0])
def test_one_beam_equals_greedy(s):
    model = ToyLM(seed=9)
    prefix = torch.tensor([[0], [3], [5]])
    null = torch.full_like(prefix, NULL)
    greedy = decode(model, prefix, 8, do_sample=False, guidance_scale=s, null_prefix=null)
    beam = run_beams(model, prefix, 8, 1, guidance_scale=s, null_prefix=null)
    assert torch.equal(beam.sequences, greedy.sequences)
    torch.testing.assert_close(beam.log_probs, greedy.log_probs)


def test_beam_search_beats_greedy_and_reports_the_model_score():
    # Beam search is not monotone in the beam width in general; for T = 2 beating greedy is a
    # theorem (the greedy first token is among the beams), for longer T it holds on these seeds.
    for seed in range(6):
        model = ToyLM(seed=seed, logit_scale=1.0)
        prefix = torch.tensor([[0], [2], [4]])
        greedy = decode(model, prefix, 6, do_sample=False)
        for K in (2, 4):
            beam = decode(model, prefix, 6, num_beams=K, do_sample=True,
                          generator=torch.Generator().manual_seed(0))        # sampling ignored
            assert (beam.log_probs >= greedy.log_probs - 1e-5).all(), (seed, K)
            for i in range(3):
                rescored = seq_log_probs(model, prefix[i:i + 1], beam.sequences[i:i + 1]).sum()
                torch.testing.assert_close(beam.log_probs[i], rescored, atol=1e-4, rtol=0)
        two = decode(model, prefix, 2, num_beams=2)
        assert (two.log_probs >= decode(model, prefix, 2, do_sample=False).log_probs - 1e-6).all()
    assert (beam.log_probs > greedy.log_probs + 1e-3).any()                    # not a tautology


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("s", [1.0, 2.0])
def test_wide_beam_search_equals_exhaustive_search(seed, s):
    vocab, T = 4, 4
    model = ToyLM(vocab_size=vocab, seed=seed, logit_scale=1.5)
    prefix, null = torch.tensor([[1, 2]]), torch.tensor([[3, 3]])
    seqs = all_sequences(vocab, T)                                              # (256, 4)
    scores = seq_log_probs(model, prefix, seqs, null, s).sum(1)
    # V ** (T - 1) beams keep every prefix until the last step: beam search is then exact
    beam = decode(model, prefix, T, num_beams=vocab ** (T - 1), guidance_scale=s, null_prefix=null)
    assert beam.sequences[0].tolist() == seqs[scores.argmax()].tolist()
    torch.testing.assert_close(beam.log_probs[0], scores.max(), atol=1e-4, rtol=0)
    # and with the cache off, the same
    nocache = decode(model, prefix, T, num_beams=vocab ** (T - 1), guidance_scale=s,
                     null_prefix=null, use_cache=False)
    assert torch.equal(nocache.sequences, beam.sequences)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_search_with_eos_equals_exhaustive_search_over_terminated_sequences(seed,
                                                                                 length_penalty):
    vocab, T, eos = 4, 4, 0
    model = ToyLM(vocab_size=vocab, seed=10 + seed, logit_scale=1.5)
    prefix = torch.tensor([[2, 1], [3, 3]])
    seqs = all_sequences(vocab, T)
    for i in range(2):
        per_step = seq_log_probs(model, prefix[i:i + 1], seqs)                  # (256, T)
        best, best_key = None, -math.inf
        for row, lp in zip(seqs.tolist(), per_step):
            stop = row.index(eos) + 1 if eos in row else T
            if row[stop:] != [eos] * (T - stop):                                # not padded
                continue
            total = float(lp[:stop].sum())
            key = total / stop ** length_penalty
            if key > best_key:
                best, best_key, best_total = row, key, total
        # (V - 1) ** (T - 1) running beams hold every unfinished prefix: exact
        out = decode(model, prefix[i:i + 1], T, num_beams=(vocab - 1) ** (T - 1),
                     eos_token_id=eos, length_penalty=length_penalty)
        assert out.sequences[0].tolist() == best, (i, best_key)
        assert abs(float(out.log_probs[0]) - best_total) < 1e-4


def test_a_larger_length_penalty_chooses_longer_hypotheses():
    model = ToyLM(vocab_size=4, seed=10, logit_scale=1.5)                      # as seed 0 above
    prefix, eos = torch.tensor([[2, 1], [3, 3]]), 0
    lengths = []
    for length_penalty in (0.0, 1.0, 2.0):
        out = decode(model, prefix, 4, num_beams=27, eos_token_id=eos,
                     length_penalty=length_penalty)
        lengths.append([row.index(eos) + 1 if eos in row else 4 for row in out.sequences.tolist()])
    for row in zip(*lengths):
        assert list(row) == sorted(row)                                        # non-decreasing
    assert lengths[0] != lengths[2]


# -------------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("make, match", [
    (lambda: TemperatureLogitsWarper(0.0), "temperature"),
    (lambda: TemperatureLogitsWarper(-1.0), "temperature"),
    (lambda: TemperatureLogitsWarper(float("nan")), "temperature"),
    (lambda: TopKLogitsWarper(0), "top_k"),
    (lambda: TopKLogitsWarper(2.5), "top_k"),
    (lambda: TopKLogitsWarper(True), "top_k"),
    (lambda: TopKLogitsWarper(3, min_tokens_to_keep=0), "min_tokens_to_keep"),
    (lambda: TopPLogitsWarper(0.0), "top_p"),
    (lambda: TopPLogitsWarper(1.5), "top_p"),
    (lambda: TopPLogitsWarper(-0.1), "top_p"),
    (lambda: classifier_free_guidance(torch.zeros(2, 3), torch.zeros(2, 4), 2.0), "shape"),
    (lambda: classifier_free_guidance(torch.zeros(2, 3), torch.zeros(2, 3), math.inf),
     "guidance_scale"),
])
def test_processors_reject_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


PREFIX = torch.tensor([[0], [1]])


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-0.5), r"temperature must be a finite number >= 0 \(0 means greedy\), got -0\.5"),
    (dict(top_k=0), r"top_k must be an int >= 1, got 0"),
    (dict(top_p=0.0), r"top_p must be a finite number in \(0, 1\], got 0\.0"),
    (dict(top_p=1.5), r"top_p .* got 1\.5"),
    (dict(num_beams=0), "num_beams"),
    (dict(max_new_tokens=0), r"max_new_tokens must be an int >= 1, got 0"),
    (dict(max_new_tokens=2.0), "max_new_tokens"),
    (dict(do_sample="yes"), "do_sample"),
    (dict(length_penalty=float("nan")), "length_penalty"),
    (dict(eos_token_id=-1), "eos_token_id"),
    (dict(eos_token_id=V), r"eos_token_id must be < vocabulary size 6"),
    (dict(guidance_scale=2.0), r"guidance_scale=2\.0 needs null_prefix"),
    (dict(guidance_scale=2.0, null_prefix=torch.tensor([[5]])),
     r"null_prefix must match.*\(2, 1\)"),
    (dict(guidance_scale=2.0, null_prefix=torch.tensor([[5, 5], [5, 5]])),
     "null_prefix must match"),
    (dict(generator=[torch.Generator()]), r"list of 1 generators but prefix has 2 rows"),
    (dict(generator=[torch.Generator(), None]), "generator must be"),
    (dict(generator=42), "generator must be"),
    (dict(prefix=torch.tensor([[0.5]])), r"prefix must be an int64 tensor.*torch\.float32"),
    (dict(prefix=torch.tensor([0, 1])), r"prefix must be .*\(B, P\).*\(2,\)"),
    (dict(prefix=torch.zeros(2, 0, dtype=torch.long)), "prefix must be"),
    (dict(logits_processors=[1]), "logits_processors"),
    (dict(use_cache=None), "use_cache"),
])
def test_decode_rejects_bad_arguments_with_useful_messages(kwargs, match):
    rec = Recorder(ToyLM())
    kwargs = dict(kwargs)
    args = dict(prefix=kwargs.pop("prefix", PREFIX), max_new_tokens=kwargs.pop("max_new_tokens", 3))
    with pytest.raises(ValueError, match=match):
        decode(rec, args["prefix"], args["max_new_tokens"], **kwargs)
    if kwargs.get("eos_token_id") != V:                  # V is only known after the first call
        assert rec.calls == []                                                 # before any call


def test_decode_rejects_a_model_breaking_the_contract():
    with pytest.raises(ValueError, match=r"model must return \(logits"):
        decode(lambda ids, past_key_values=None: ids.float(), PREFIX, 2)
    with pytest.raises(ValueError, match="callable"):
        decode("model", PREFIX, 2)


def test_decode_leaves_mode_alone_and_records_no_graph():
    model = ToyLM(seed=0).train()
    out = decode(model, PREFIX, 3, generator=torch.Generator().manual_seed(0), output_scores=True)
    assert model.training
    assert not out.log_probs.requires_grad and not out.scores[0].requires_grad
    model.eval()
    decode(model, PREFIX, 3, do_sample=False)
    assert not model.training
