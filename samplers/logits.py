"""Per-step score processing for token decoding: temperature, top-k (Fan et al. 2018) and top-p
(Holtzman et al. 2020) warpers, classifier-free guidance on log-probabilities (Ho & Salimans 2022;
on image-token logits as in Gafni et al. 2022 and Yu et al. 2022), and cache reordering for beam
search. :func:`samplers.decoding.decode` applies them in that order.

The warpers follow Hugging Face's semantics (same names, same order), with ties at the top-k /
top-p boundary kept.

Example::

    >>> import torch
    >>> from samplers.logits import build_logits_processors
    >>> process = build_logits_processors(temperature=1.0, top_k=2)
    >>> process(torch.tensor([[1.0, 3.0, 2.0, 0.0]]))
    tensor([[-inf, 3., 2., -inf]])
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from samplers.checks import check_int, check_number

LogitsProcessor = Callable[[torch.Tensor], torch.Tensor]


class TemperatureLogitsWarper:
    """``scores / temperature``: below 1 sharpens the distribution, above 1 flattens it.

    Args:
        temperature: float ``> 0`` (finite). ``decode(temperature=0)`` means greedy and builds
            no warper. Raises ``ValueError`` otherwise.
    """

    def __init__(self, temperature: float):
        self.temperature = check_number("temperature", temperature, low=0, low_inclusive=False)

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """float ``(B, V)`` -> float ``(B, V)``; ``-inf`` stays ``-inf``."""
        return scores / self.temperature

    def __repr__(self) -> str:
        return f"TemperatureLogitsWarper(temperature={self.temperature})"


class TopKLogitsWarper:
    """Top-k filtering (Fan et al. 2018): keep the ``k`` highest scores per row, the rest -> -inf.

    ``k = max(top_k, min_tokens_to_keep)``; ``k >= V`` is a no-op. Ties: every token whose score
    equals the k-th highest is kept, so a row may keep more than ``k`` tokens (and the result does
    not depend on the order of the vocabulary).

    Args:
        top_k: int ``>= 1``.
        min_tokens_to_keep: int ``>= 1``.
    Raises ``ValueError`` for anything else.
    """

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1):
        self.top_k = check_int("top_k", top_k)
        self.min_tokens_to_keep = check_int("min_tokens_to_keep", min_tokens_to_keep)

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """float ``(B, V)`` -> float ``(B, V)`` with removed tokens at ``-inf``."""
        k = min(max(self.top_k, self.min_tokens_to_keep), scores.shape[-1])
        if k == scores.shape[-1]:
            return scores
        kth = torch.topk(scores, k, dim=-1).values[..., -1:]                  # (B, 1)
        return scores.masked_fill(scores < kth, -math.inf)

    def __repr__(self) -> str:
        return f"TopKLogitsWarper(top_k={self.top_k}, min_tokens_to_keep={self.min_tokens_to_keep})"


class TopPLogitsWarper:
    """Nucleus (top-p) filtering (Holtzman et al. 2020, sec. 3.1).

    Keeps the smallest set of most likely tokens whose probability (``softmax(scores)``) sums to at
    least ``top_p``: token ``i`` in descending order is kept iff the tokens before it hold less
    than ``top_p``. The most likely token is always kept, so are the ``min_tokens_to_keep`` most
    likely, and so is every token tied with the least likely kept one (order-independent, as in
    :class:`TopKLogitsWarper`). ``top_p = 1`` is a no-op. Probabilities are summed in float32.

    Args:
        top_p: float in ``(0, 1]``.
        min_tokens_to_keep: int ``>= 1``.
    Raises ``ValueError`` for anything else.
    """

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1):
        self.top_p = check_number("top_p", top_p, low=0, high=1, low_inclusive=False)
        self.min_tokens_to_keep = check_int("min_tokens_to_keep", min_tokens_to_keep)

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """float ``(B, V)`` -> float ``(B, V)`` with removed tokens at ``-inf``."""
        if self.top_p >= 1.0:
            return scores
        sorted_scores = torch.sort(scores, dim=-1, descending=True).values    # (B, V)
        cumprob = sorted_scores.float().softmax(-1).cumsum(-1)
        mass_before = F.pad(cumprob[..., :-1], (1, 0))                       # exclusive cumsum
        keep = mass_before < self.top_p                                       # a prefix per row
        keep[..., :self.min_tokens_to_keep] = True
        last_kept = sorted_scores.gather(-1, keep.sum(-1, keepdim=True) - 1)  # (B, 1)
        return scores.masked_fill(scores < last_kept, -math.inf)

    def __repr__(self) -> str:
        return f"TopPLogitsWarper(top_p={self.top_p}, min_tokens_to_keep={self.min_tokens_to_keep})"


class LogitsProcessorList(list):
    """A list of processors ``(B, V) -> (B, V)``, applied in order by calling the list."""

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        for processor in self:
            scores = processor(scores)
        return scores


def build_logits_processors(temperature: float = 1.0, top_k: Optional[int] = None,
                            top_p: Optional[float] = None) -> LogitsProcessorList:
    """Temperature, then top-k, then top-p (the order of Hugging Face ``generate``); no-op settings
    (``temperature`` 1, ``top_k`` None, ``top_p`` None or 1) add nothing.

    Args:
        temperature: float ``> 0``.
        top_k: None or int ``>= 1``.
        top_p: None or float in ``(0, 1]``.
    Raises ``ValueError`` for anything else (from the warpers).
    """
    processors = LogitsProcessorList()
    warper = TemperatureLogitsWarper(temperature)
    if warper.temperature != 1.0:
        processors.append(warper)
    if top_k is not None:
        processors.append(TopKLogitsWarper(top_k))
    if top_p is not None:
        nucleus = TopPLogitsWarper(top_p)
        if nucleus.top_p < 1.0:
            processors.append(nucleus)
    return processors


def classifier_free_guidance(cond_logits: torch.Tensor, uncond_logits: torch.Tensor,
                             guidance_scale: float) -> torch.Tensor:
    """Guided log-scores ``u + s (c - u)`` with ``c, u`` the log-softmax of the two logits.

    Ho & Salimans 2022 (eq. 6, with ``s = 1 + w``) on the next-token distribution, as for
    autoregressive image models (Gafni et al. 2022; Yu et al. 2022):
    ``p ~ p(x | y)^s / p(x)^(s-1)``. ``s = 1`` returns
    ``log_softmax(cond_logits)`` exactly, ``s = 0`` the unconditional one; ``s > 1`` sharpens
    towards the condition. The result is not renormalised (apply ``log_softmax`` for that).

    Args:
        cond_logits, uncond_logits: float ``(..., V)``, the same shape.
        guidance_scale: finite float ``s``.
    Returns float ``(..., V)``. Raises ``ValueError`` on a shape mismatch or a bad scale.
    """
    s = check_number("guidance_scale", guidance_scale)
    if cond_logits.shape != uncond_logits.shape:
        raise ValueError(f"cond_logits and uncond_logits must have the same shape, got "
                         f"{tuple(cond_logits.shape)} and {tuple(uncond_logits.shape)}")
    cond = cond_logits.log_softmax(-1)
    if s == 1.0:
        return cond
    uncond = uncond_logits.log_softmax(-1)
    return uncond + s * (cond - uncond)


def reorder_cache(past: Any, index: torch.Tensor) -> Any:
    """``past`` with its batch rows replaced by rows ``index`` (reorder, drop or duplicate).

    Tree-maps ``tensor.index_select(0, index)`` over nested tuples (named ones too), lists and
    dicts; ``None`` leaves pass through; an object with a ``reorder_cache(index)`` method (e.g. a
    Hugging Face ``Cache``) is reordered in place by it and returned.

    Args:
        past: the cache (:class:`TokenModel`).
        index: int64 ``(N,)`` row indices into dim 0 of every tensor.
    Raises ``TypeError`` for a leaf that is none of these.
    """
    if isinstance(past, torch.Tensor):
        return past.index_select(0, index.to(past.device))
    if past is None:
        return None
    if isinstance(past, tuple) and hasattr(past, "_fields"):                 # namedtuple
        return type(past)(*(reorder_cache(p, index) for p in past))
    if isinstance(past, (tuple, list)):
        return type(past)(reorder_cache(p, index) for p in past)
    if isinstance(past, dict):
        return type(past)((k, reorder_cache(v, index)) for k, v in past.items())
    if callable(getattr(past, "reorder_cache", None)):
        past.reorder_cache(index)
        return past
    raise TypeError(f"cannot reorder a cache leaf of type {type(past).__name__}; a cache is nested "
                    "tuples/lists/dicts of batch-first tensors")
