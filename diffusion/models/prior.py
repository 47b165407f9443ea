"""The autoregressive baseline's network: a decoder-only transformer prior over VQ-VAE tokens
(its pipeline is :mod:`diffusion.pipelines.autoregressive`).

Stage 2 of the VQ-VAE + prior family (van den Oord et al. 2017, sec. 3.2; Razavi et al. 2019;
ImageGPT, Chen et al. 2020): images become a raster-ordered grid of codebook indices
(:class:`diffusion.models.vqvae.VQVAE`, e.g. 7x7 = 49 tokens for Fashion-MNIST) and a GPT-style transformer
models ``p(t_1 .. t_N | y) = prod_i p(t_i | t_<i, y)``. The class ``y`` enters as a *prefix token*:
the token table holds the ``codebook_size`` image codes, then one token per class, then the null
class (``num_classes``) used for classifier-free guidance (Ho & Salimans 2022; on AR logits as in
Gafni et al. 2022 / Yu et al. 2022). The output head predicts image codes only (``codebook_size``
logits), so decoding can never emit a class token.

The network is a pre-LayerNorm GPT block stack (Radford et al. 2019) with learned positions,
PyTorch's fused ``scaled_dot_product_attention`` and a key/value cache: with
``past_key_values`` the model takes only the new tokens and attends to the cached keys, which
turns generation from O(N^2) token-forwards into O(N). It is our own (about 70 lines) because it
must follow the :class:`samplers.decoding.TokenModel` contract (ids in, per-position logits and a
batch-first cache out, reorderable for beam search) at a size a CPU trains in minutes; the
Hugging Face GPT-2 would serve too but pulls ``transformers`` into the core install.

Decoding (greedy, temperature, top-k, top-p, beam search, guidance) is
:func:`samplers.decoding.decode`, shared with any token model.

Example::

    >>> import torch
    >>> from diffusion.models.prior import TransformerPrior
    >>> prior = TransformerPrior(vocab_size=16, num_positions=49, num_classes=10, d_model=32,
    ...                          num_layers=1, num_heads=2).eval()
    >>> logits, cache = prior(torch.tensor([[16 + 3, 5, 7]]))       # class 3, then two codes
    >>> logits.shape, len(cache), cache[0][0].shape                  # (B, L, V); per layer (k, v)
    (torch.Size([1, 3, 16]), 1, torch.Size([1, 2, 3, 16]))
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

#: per layer ``(k, v)``, each float ``(B, num_heads, T, head_dim)``
KVCache = Tuple[Tuple[torch.Tensor, torch.Tensor], ...]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with an optional key/value cache (fused SDPA kernel)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, past: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        b, l, d = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).view(b, l, 3, h, d // h).permute(2, 0, 3, 1, 4)  # 3 x (B, h, L, dh)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, h, T+L, dh)
        t = k.shape[2] - l  # tokens before this call
        p = self.dropout if self.training else 0.0
        if t == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        elif l == 1:  # one new token attends to everything before it
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:  # several new tokens after a cache: new token i sees cached + new tokens <= i
            mask = torch.ones(l, t + l, dtype=torch.bool, device=x.device).tril(diagonal=t)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(b, l, d)
        return self.proj(y), (k, v)


class Block(nn.Module):
    """Pre-LayerNorm transformer block (GPT-2): ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, num_heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model), nn.Dropout(dropout))

    def forward(self, x, past=None):
        a, present = self.attn(self.ln1(x), past)
        x = x + a
        return x + self.mlp(self.ln2(x)), present


class TransformerPrior(ModelMixin, ConfigMixin):
    """Decoder-only transformer over ``[class token] + image tokens`` with a key/value cache.

    Token ids: ``0 .. vocab_size - 1`` image codes, ``vocab_size + y`` for class ``y`` in
    ``[0, num_classes)``, ``vocab_size + num_classes`` for the null class (``num_classes=None``:
    unconditional, a single start token ``vocab_size``). Sequences hold at most
    ``1 + num_positions`` tokens (the prefix, then the grid).

    Args:
        vocab_size: codebook size of the tokenizer (output logits per position).
        num_positions: image tokens per image (``h * w`` of the token grid).
        num_classes: number of classes, or ``None`` for an unconditional prior.
        d_model, num_layers, num_heads, mlp_ratio, dropout: transformer size (GPT-2 layout).

    Raises:
        ValueError: non-positive sizes, or ``d_model`` not divisible by ``num_heads``.
    """

    @register_to_config
    def __init__(self, vocab_size: int = 256, num_positions: int = 49, num_classes: Optional[int] = 10,
                 d_model: int = 256, num_layers: int = 6, num_heads: int = 8, mlp_ratio: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        for name, v in (("vocab_size", vocab_size), ("num_positions", num_positions),
                        ("d_model", d_model), ("num_layers", num_layers), ("num_heads", num_heads),
                        ("mlp_ratio", mlp_ratio)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be None or an int >= 1, got {num_classes!r}")
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        num_prefix = 1 if num_classes is None else num_classes + 1
        self.token_embedding = nn.Embedding(vocab_size + num_prefix, d_model)
        self.position_embedding = nn.Embedding(1 + num_positions, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, num_heads, mlp_ratio, dropout)
                                    for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * num_layers))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def num_classes(self) -> Optional[int]:
        return self.config.num_classes

    def prefix_ids(self, class_labels: Optional[torch.Tensor], batch: int) -> torch.Tensor:
        """Prefix token ids ``(B, 1)`` for int64 ``class_labels`` ``(B,)`` (``num_classes`` = the
        null class) or, for an unconditional prior, the start token."""
        v = self.config.vocab_size
        if class_labels is None:
            return torch.full((batch, 1), v, dtype=torch.long)
        return (class_labels.long().cpu() + v).view(-1, 1)

    def null_prefix_ids(self, batch: int) -> torch.Tensor:
        """The null-class prefix ``(B, 1)`` (classifier-free guidance); ``ValueError`` if unconditional."""
        if self.num_classes is None:
            raise ValueError("an unconditional prior has no null class to guide with")
        return torch.full((batch, 1), self.config.vocab_size + self.num_classes, dtype=torch.long)

    def forward(self, input_ids: torch.Tensor, past_key_values: Optional[KVCache] = None,
                use_cache: bool = True):
        """Logits for the next image token at every position.

        Args:
            input_ids: int64 ``(B, L)``: the whole sequence so far (``past_key_values=None``) or only
                the tokens after the cached ones.
            past_key_values: the cache returned by the previous call, or ``None``.
            use_cache: return the extended cache (``False``: return ``None``; training).

        Returns:
            ``(logits, past_key_values)``: float ``(B, L, vocab_size)``; logits at position ``i``
            predict token ``i + 1``; the cache is a tuple per layer of ``(k, v)`` float
            ``(B, num_heads, T, d_model / num_heads)`` with ``T`` tokens seen so far.

        Raises:
            ValueError: ids outside the table, or more than ``1 + num_positions`` tokens in all.
        """
        b, l = input_ids.shape
        t = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        if t + l > 1 + self.config.num_positions:
            raise ValueError(f"sequence of {t + l} tokens exceeds 1 + num_positions = "
                             f"{1 + self.config.num_positions}")
        positions = torch.arange(t, t + l, device=input_ids.device)
        x = self.drop(self.token_embedding(input_ids) + self.position_embedding(positions))
        present = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if past_key_values is None else past_key_values[i])
            present.append(kv)
        logits = self.head(self.ln_f(x))
        return logits, (tuple(present) if use_cache else None)

    def loss(self, tokens: torch.Tensor, class_labels: Optional[torch.Tensor],
             forward=None) -> torch.Tensor:
        """Mean next-token cross-entropy (nats per token) of int64 image ``tokens`` ``(B, N)`` given
        ``class_labels`` ``(B,)`` (``num_classes`` = null) - the training objective.

        ``forward``: the callable that runs the network (default ``self``); training passes the
        DDP-wrapped module so that gradients synchronise across processes.
        """
        prefix = self.prefix_ids(class_labels, tokens.shape[0]).to(tokens.device)
        seq = torch.cat([prefix, tokens], dim=1)                       # (B, 1 + N)
        logits, _ = (forward or self)(seq[:, :-1], use_cache=False)    # (B, N, V)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens.reshape(-1))
