"""Token decoding for any autoregressive token model: greedy, sampling, top-k, top-p, beam search.

Every strategy drives a :class:`TokenModel` (ids in, per-position logits and a batch-first cache
out) one token at a time and, per step, turns the last position's logits into scores:

1. classifier-free guidance (Ho & Salimans 2022; on autoregressive image-token logits as in
   Gafni et al. 2022, Make-A-Scene, and Yu et al. 2022, Parti): the conditional rows and the null
   rows run in *one* batched model call and
   ``l = log_softmax(u) + s (log_softmax(c) - log_softmax(u))``; ``guidance_scale == 1`` runs the
   conditional rows only;
2. the logits processors, in order: temperature, top-k (Fan et al. 2018), top-p (Holtzman et al.
   2020), then any given ``logits_processors``;
3. ``log_softmax``: the *processed log-probabilities* the token is chosen from. They are what
   ``DecodeOutput.scores`` holds, and ``DecodeOutput.log_probs`` sums them over the chosen tokens.

Then greedy takes the argmax, sampling draws from ``softmax`` with ``torch.multinomial`` (one
generator per row makes a row's tokens independent of the batch it sits in), and beam search keeps
the ``num_beams`` best partial sequences by summed processed log-probability; finished
hypotheses are ranked with the length normalisation of Wu et al. 2016 (GNMT, sec. 7) in the
plain ``length ** length_penalty`` form Hugging Face uses.

Why not Hugging Face's ``generate``: ``transformers`` is an optional extra here, ``generate``
needs a ``PreTrainedModel`` with its cache classes and config, its guidance processor runs the
null rows in a second forward, and it samples from the global RNG (no per-row generators). The
processors follow its warpers' semantics (``TemperatureLogitsWarper``, ``TopKLogitsWarper``,
``TopPLogitsWarper``: same names, same order), with ties at the top-k/top-p boundary kept.

Example (a bigram table whose greedy path goes ``i -> i + 1 mod 5``; it needs no cache, so it
returns an empty one)::

    >>> import torch
    >>> from samplers.decoding import decode
    >>> class Bigram(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.table = torch.nn.Parameter(3.0 * torch.eye(5).roll(1, dims=1))
    ...     def forward(self, input_ids, past_key_values=None):
    ...         return self.table[input_ids], ()              # (B, L, V) logits, cache
    >>> model, prefix = Bigram(), torch.tensor([[0], [3]])    # (B, P) = (2, 1), e.g. class tokens
    >>> out = decode(model, prefix, max_new_tokens=4, do_sample=False)
    >>> out.sequences.tolist(), out.nfe
    ([[1, 2, 3, 4], [4, 0, 1, 2]], 4)
    >>> gens = [torch.Generator().manual_seed(i) for i in range(2)]   # one per row
    >>> out = decode(model, prefix, 4, top_k=3, top_p=0.9, guidance_scale=2.0,
    ...              null_prefix=torch.tensor([[2], [2]]), generator=gens)
    >>> out.sequences.shape, out.log_probs.shape, out.nfe    # one (cond + null) call per token
    (torch.Size([2, 4]), torch.Size([2]), 4)
    >>> decode(model, prefix, 4, num_beams=3).sequences.tolist()
    [[1, 2, 3, 4], [4, 0, 1, 2]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence, Union

import torch
import torch.nn.functional as F

from samplers.checks import check_bool, check_int, check_number
from samplers.logits import (LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper,
                             TopKLogitsWarper, TopPLogitsWarper, build_logits_processors,
                             classifier_free_guidance, reorder_cache)

__all__ = ["DecodeOutput", "LogitsProcessorList", "TemperatureLogitsWarper", "TokenModel",
           "TopKLogitsWarper", "TopPLogitsWarper", "build_logits_processors",
           "classifier_free_guidance", "decode", "reorder_cache"]

GeneratorArg = Union[None, torch.Generator, Sequence[torch.Generator]]


class TokenModel(Protocol):
    """What :func:`decode` calls: ``model(input_ids, past_key_values=None) -> (logits, past)``.

    - ``input_ids``: int64 ``(B, L)``. With ``past_key_values=None`` it is the whole sequence so
      far; with a cache it is only the tokens after the cached ones (one per step here).
    - ``logits``: float ``(B, L, V)``; position ``i`` scores the token *after* ``input_ids[:, i]``.
      Only the last position is used.
    - ``past_key_values``: the returned cache, handed back on the next call. Any nested
      tuple/list/dict of tensors with the batch on dim 0 (so :func:`reorder_cache` can select,
      reorder and duplicate rows with ``index_select(0, index)``), or an object with an in-place
      ``reorder_cache(index)`` method. A model may return ``None`` when called with
      ``use_cache=False`` decoding, which always passes the full sequence and no cache.

    Cached and uncached calls must give the same logits (up to float rounding).
    """

    def __call__(self, input_ids: torch.Tensor,
                 past_key_values: Any = None) -> tuple[torch.Tensor, Any]: ...


@dataclass
class DecodeOutput:
    """What :func:`decode` returns.

    Attributes:
        sequences: int64 ``(B, max_new_tokens)``, the generated tokens only (no prefix); after an
            ``eos_token_id`` a row is padded with it.
        log_probs: float32 ``(B,)``, the sum over the chosen tokens (up to and including eos) of
            their processed log-probabilities (module docstring, step 3); ``<= 0``. For beam
            search: the best hypothesis' score before length normalisation.
        scores: with ``output_scores=True`` and greedy/sampling, one float32 ``(B, V)`` tensor per
            model call: the processed log-probabilities of that step (``-inf`` where a processor
            removed a token); otherwise ``None`` (always ``None`` for beam search).
        nfe: number of model calls made (one per token; guidance does not add calls).
    """

    sequences: torch.Tensor
    log_probs: torch.Tensor
    scores: Optional[list[torch.Tensor]]
    nfe: int


# ------------------------------------------------------------------------------------- decoding

def _check_generator(generator: GeneratorArg, batch_size: int, device: torch.device) -> None:
    gens = generator if isinstance(generator, (list, tuple)) else [generator]
    if isinstance(generator, (list, tuple)) and len(generator) != batch_size:
        raise ValueError(f"generator is a list of {len(generator)} generators but prefix has "
                         f"{batch_size} rows; pass one generator per row")
    for g in gens:
        if g is None and not isinstance(generator, (list, tuple)):
            continue
        if not isinstance(g, torch.Generator):
            raise ValueError("generator must be None, a torch.Generator or a list of them, got "
                             f"{type(g).__name__}")
        if g.device.type != device.type:
            raise ValueError(f"generator on {g.device} cannot draw for prefix on {device}")


def _check_prefix(what: str, prefix: Any) -> torch.Tensor:
    if not isinstance(prefix, torch.Tensor) or prefix.dtype != torch.long or prefix.dim() != 2 \
            or prefix.shape[0] < 1 or prefix.shape[1] < 1:
        got = (f"{prefix.dtype} tensor of shape {tuple(prefix.shape)}"
               if isinstance(prefix, torch.Tensor) else type(prefix).__name__)
        raise ValueError(f"{what} must be an int64 tensor of shape (B, P) with B, P >= 1, "
                         f"got {got}")
    return prefix


class _Stepper:
    """One decoding step: the model call (cached or not) on ``ids`` (R, P + t), guidance, the
    processors and ``log_softmax``. Rows ``[0, n)`` are conditional; with guidance rows
    ``[n, 2n)`` are their null twins, fed the same tokens. Counts model calls in ``nfe``."""

    def __init__(self, model, ids: torch.Tensor, guidance_scale: float,
                 processors: LogitsProcessorList, use_cache: bool):
        self.model, self.ids, self.s, self.processors = model, ids, guidance_scale, processors
        self.guided, self.use_cache = guidance_scale != 1.0, use_cache
        self.n = ids.shape[0] // 2 if self.guided else ids.shape[0]
        self.past, self.nfe = None, 0

    def log_probs(self) -> torch.Tensor:
        """float32 ``(n, V)``: processed log-probabilities of the next token of each row."""
        if self.use_cache and self.nfe > 0:
            if self.past is None:
                raise ValueError("model returned past_key_values=None; decode with use_cache=False")
            out = self.model(self.ids[:, -1:], past_key_values=self.past)
        else:
            out = self.model(self.ids, past_key_values=None)
        self.nfe += 1
        rows = self.ids.shape[0]
        logits = out[0] if isinstance(out, (tuple, list)) and len(out) == 2 else None
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[0] != rows:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(out).__name__
            raise ValueError("model must return (logits (R, L, V), past_key_values) with "
                             f"R = {rows} rows (TokenModel), got {got}")
        if self.use_cache:
            self.past = out[1]
        logits = logits[:, -1].float()                                       # (R, V)
        if self.guided:
            logits = classifier_free_guidance(logits[:self.n], logits[self.n:], self.s)
        return self.processors(logits).log_softmax(-1)                       # (n, V)

    def advance(self, tokens: torch.Tensor, rows: Optional[torch.Tensor] = None) -> None:
        """Append ``tokens`` (n,) to the conditional rows (and their null twins); ``rows`` (n,)
        first replaces the sequences and cache by those rows (beam search)."""
        if rows is not None:
            full = torch.cat([rows, rows + self.n]) if self.guided else rows
            self.ids = self.ids.index_select(0, full)
            if self.past is not None:
                self.past = reorder_cache(self.past, full)
        new = torch.cat([tokens, tokens]) if self.guided else tokens
        self.ids = torch.cat([self.ids, new[:, None]], dim=1)


def _draw(probs: torch.Tensor, generator: GeneratorArg) -> torch.Tensor:
    """One token per row from ``probs`` (n, V); a list of generators draws row i from the i-th."""
    if isinstance(generator, (list, tuple)):
        return torch.cat([torch.multinomial(probs[i:i + 1], 1, generator=g)
                          for i, g in enumerate(generator)]).view(-1)
    return torch.multinomial(probs, 1, generator=generator).view(-1)


def _greedy_or_sample(step: _Stepper, max_new_tokens: int, sample: bool, generator: GeneratorArg,
                      eos_token_id: Optional[int], output_scores: bool) -> DecodeOutput:
    n, device = step.n, step.ids.device
    tokens, scores = [], []
    log_probs = torch.zeros(n, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        logp = step.log_probs()                                               # (n, V)
        if eos_token_id is not None and eos_token_id >= logp.shape[-1]:
            raise ValueError(f"eos_token_id must be < vocabulary size {logp.shape[-1]}, "
                             f"got {eos_token_id}")
        tok = _draw(logp.exp(), generator) if sample else logp.argmax(-1)     # (n,)
        chosen = logp.gather(-1, tok[:, None])[:, 0]
        if eos_token_id is not None:                                          # finished rows pad
            tok = tok.masked_fill(finished, eos_token_id)
            chosen = chosen.masked_fill(finished, 0.0)
            finished |= tok == eos_token_id
        log_probs += chosen
        tokens.append(tok)
        if output_scores:
            scores.append(logp)
        if t + 1 < max_new_tokens:
            if eos_token_id is not None and bool(finished.all()):
                break
            step.advance(tok)
    sequences = torch.stack(tokens, dim=1)
    if sequences.shape[1] < max_new_tokens:
        sequences = F.pad(sequences, (0, max_new_tokens - sequences.shape[1]), value=eos_token_id)
    return DecodeOutput(sequences, log_probs, scores if output_scores else None, step.nfe)


def _beam_search(step: _Stepper, max_new_tokens: int, num_beams: int,
                 eos_token_id: Optional[int], length_penalty: float) -> DecodeOutput:
    """Beam search over ``B`` rows of ``K = num_beams`` beams each (step rows ``b K + k``).

    Running beams never hold eos: each step every beam's eos extension is a finished hypothesis
    of ``t + 1`` tokens scored ``sum_logprob / (t + 1) ** length_penalty`` (Wu et al. 2016, with
    the plain length for ``lp``), and the best one per row is kept; the ``K`` best non-eos
    extensions by ``sum_logprob`` continue. After the last step the running beams finish with
    length ``max_new_tokens``, and the best finished hypothesis per row is returned.
    """
    K, T = num_beams, max_new_tokens
    B, device = step.n // K, step.ids.device
    beam_scores = torch.full((B, K), -math.inf, device=device)
    beam_scores[:, 0] = 0.0                      # identical beams at t = 0: expand only the first
    seqs = torch.zeros(B * K, 0, dtype=torch.long, device=device)
    best_norm = torch.full((B,), -math.inf, device=device)
    best_sum = torch.full((B,), -math.inf, device=device)
    best_seq = torch.zeros(B, T, dtype=torch.long, device=device)
    offsets = torch.arange(B, device=device)[:, None] * K                     # (B, 1)
    rows = torch.arange(B, device=device)

    def finish(sums: torch.Tensor, seq: torch.Tensor, length: int) -> None:
        """Offer one hypothesis per row: sums (B,), seq (B, length)."""
        norm = sums / length ** length_penalty
        better = norm > best_norm
        best_norm[better], best_sum[better] = norm[better], sums[better]
        padded = F.pad(seq, (0, T - length), value=eos_token_id if eos_token_id is not None else 0)
        best_seq[better] = padded[better]

    for t in range(T):
        logp = step.log_probs()                                               # (B K, V)
        V = logp.shape[-1]
        if eos_token_id is not None and eos_token_id >= V:
            raise ValueError(f"eos_token_id must be < vocabulary size {V}, got {eos_token_id}")
        cand = (beam_scores.view(B * K, 1) + logp).view(B, K, V)              # summed log-probs
        if eos_token_id is not None:
            eos_sum, k = cand[:, :, eos_token_id].max(dim=1)                  # same length: max sum
            eos_seq = torch.cat([seqs.view(B, K, t)[rows, k],
                                 torch.full((B, 1), eos_token_id, device=device)], dim=1)
            finish(eos_sum, eos_seq, t + 1)
            cand[:, :, eos_token_id] = -math.inf
        beam_scores, flat = cand.view(B, K * V).topk(K, dim=1)                # (B, K)
        parent = (offsets + torch.div(flat, V, rounding_mode="floor")).view(-1)   # (B K,)
        tok = (flat % V).view(-1)
        seqs = torch.cat([seqs[parent], tok[:, None]], dim=1)
        if t + 1 < T:
            step.advance(tok, rows=parent)
    top, k = beam_scores.max(dim=1)
    finish(top, seqs.view(B, K, T)[rows, k], T)
    return DecodeOutput(best_seq, best_sum, None, step.nfe)


def decode(model: TokenModel, prefix: torch.Tensor, max_new_tokens: int, *, do_sample: bool = True,
           temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
           num_beams: int = 1, length_penalty: float = 0.0, eos_token_id: Optional[int] = None,
           guidance_scale: float = 1.0, null_prefix: Optional[torch.Tensor] = None,
           generator: GeneratorArg = None, use_cache: bool = True,
           logits_processors: Optional[Sequence[LogitsProcessor]] = None,
           output_scores: bool = False) -> DecodeOutput:
    """Generate ``max_new_tokens`` tokens after ``prefix`` with ``model`` (module docstring).

    Strategy: ``num_beams > 1`` is beam search (deterministic: ``do_sample`` and ``generator``
    are then ignored); else ``do_sample=False`` or ``temperature == 0`` is greedy (argmax); else
    sampling (``torch.multinomial`` on the processed distribution). Temperature, top-k, top-p and
    ``logits_processors`` apply in every strategy, so they change the reported scores of greedy
    decoding and the beam search itself (unlike Hugging Face's non-sampling beam search, which
    skips the warpers); with the defaults beams are ranked by the model's own log-likelihood.
    ``temperature == 0`` builds no temperature warper. Runs under ``torch.no_grad()``; the
    model's train/eval mode is left as it is.

    Args:
        model: a :class:`TokenModel`.
        prefix: int64 ``(B, P)``, ``P >= 1`` (e.g. a class token), on the model's device.
        max_new_tokens: int ``>= 1``; one model call per token.
        do_sample: sample (True) or take the argmax (False).
        temperature: float ``>= 0``; 0 means greedy.
        top_k: None or int ``>= 1`` (:class:`TopKLogitsWarper`).
        top_p: None or float in ``(0, 1]`` (:class:`TopPLogitsWarper`).
        num_beams: int ``>= 1``; the rows the model sees are ``B * num_beams`` (times 2 guided).
        length_penalty: finite float; with ``eos_token_id`` a finished hypothesis of ``n`` tokens
            (eos included) scores ``sum_logprob / n ** length_penalty`` (0: no normalisation,
            > 0 favours longer ones). Beam search only.
        eos_token_id: None or int in ``[0, V)``; a row (beam) that emits it is finished and padded
            with it; greedy/sampling stop early once every row has finished.
        guidance_scale: finite float; ``!= 1`` needs ``null_prefix`` and runs the conditional and
            null rows (``[cond; null]``, batch ``2B``) in one call per step, the null rows fed the
            same generated tokens (beams stay aligned: null beam ``j`` follows conditional beam
            ``j``). ``== 1`` runs the ``B`` conditional rows only (``null_prefix`` is ignored).
        null_prefix: int64 of ``prefix``'s shape (e.g. the null class), or None.
        generator: None (global RNG), one ``torch.Generator``, or a list of ``B`` of them: row ``i``
            is drawn only from ``generator[i]``, so its tokens do not depend on the batch it sits
            in (one shared generator gives no such guarantee). On ``prefix``'s device type.
        use_cache: pass the model's cache and only the new token (True), or the whole sequence
            and no cache each step (False).
        logits_processors: extra ``(B, V) -> (B, V)`` callables applied after top-p, in order.
        output_scores: keep the per-step processed log-probabilities (greedy/sampling).
    Returns:
        :class:`DecodeOutput`.
    Raises:
        ValueError: for any argument outside the ranges above (before any model call), a
            ``null_prefix`` missing or of another shape/device, a generator list of the wrong
            length, an ``eos_token_id >= V``, or a model breaking the :class:`TokenModel` contract.
    """
    if not callable(model):
        raise ValueError(f"model must be callable (TokenModel), got {type(model).__name__}")
    prefix = _check_prefix("prefix", prefix)
    B = prefix.shape[0]
    max_new_tokens = check_int("max_new_tokens", max_new_tokens)
    do_sample = check_bool("do_sample", do_sample)
    temperature = check_number("temperature", temperature, low=0, hint=" (0 means greedy)")
    num_beams = check_int("num_beams", num_beams)
    length_penalty = check_number("length_penalty", length_penalty)
    eos_token_id = check_int("eos_token_id", eos_token_id, low=0, allow_none=True)
    guidance_scale = check_number("guidance_scale", guidance_scale)
    if null_prefix is not None:
        null_prefix = _check_prefix("null_prefix", null_prefix)
        if null_prefix.shape != prefix.shape or null_prefix.device != prefix.device:
            raise ValueError(f"null_prefix must match prefix: shape {tuple(prefix.shape)} on "
                             f"{prefix.device}, got {tuple(null_prefix.shape)} on "
                             f"{null_prefix.device}")
    elif guidance_scale != 1.0:
        raise ValueError(f"guidance_scale={guidance_scale} needs null_prefix (B, P) (e.g. the null "
                         "class); pass guidance_scale=1 for unguided decoding")
    _check_generator(generator, B, prefix.device)
    use_cache = check_bool("use_cache", use_cache)
    output_scores = check_bool("output_scores", output_scores)
    processors = build_logits_processors(temperature if temperature > 0 else 1.0, top_k, top_p)
    if logits_processors is not None:
        if isinstance(logits_processors, (str, bytes)) or not all(map(callable, logits_processors)):
            raise ValueError("logits_processors must be a list of callables (B, V) -> (B, V)")
        processors.extend(logits_processors)

    ids = prefix.repeat_interleave(num_beams, dim=0)                         # (B K, P)
    if guidance_scale != 1.0:
        ids = torch.cat([ids, null_prefix.repeat_interleave(num_beams, dim=0)])  # (2 B K, P)
    step = _Stepper(model, ids, guidance_scale, processors, use_cache)
    with torch.no_grad():
        if num_beams > 1:
            return _beam_search(step, max_new_tokens, num_beams, eos_token_id, length_penalty)
        return _greedy_or_sample(step, max_new_tokens, do_sample and temperature > 0, generator,
                                 eos_token_id, output_scores)
