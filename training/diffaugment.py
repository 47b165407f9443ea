"""Differentiable augmentation for data-efficient GAN training (DiffAugment, Zhao et al. 2020).

The discriminator sees reals *and* fakes through the same random augmentation family, and the
generator's loss back-propagates through it (every op here is differentiable in the images), so
the discriminator cannot memorise a small training set without the generator learning the
augmentations. The three policies follow the paper's reference code (``DiffAugment_pytorch.py``):

- ``color``: brightness ``x + U(-0.5, 0.5)``, saturation ``(x - mean_c) * U(0, 2) + mean_c``,
  contrast ``(x - mean_chw) * U(0.5, 1.5) + mean_chw`` (per image);
- ``translation``: integer shift by up to 1/8 of the size in each axis, zero fill;
- ``cutout``: a zeroed square of half the size at a random centre.

Randomness is drawn once per batch into an :class:`AugmentParams` from the training
``torch.Generator`` (CPU), so the *same* per-row transform can be applied to the real and the fake
batch, and a resumed run draws what a straight run would.

Example::

    >>> import torch
    >>> from training.diffaugment import diff_augment, sample_augment_params
    >>> x = torch.zeros(4, 1, 28, 28)
    >>> p = sample_augment_params(x.shape, ("color", "translation", "cutout"),
    ...                           torch.Generator().manual_seed(0))
    >>> diff_augment(x, p).shape
    torch.Size([4, 1, 28, 28])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def parse_policy(text: str) -> Tuple[str, ...]:
    """``"color,translation"`` -> ``("color", "translation")``; ``""`` -> ``()``.

    Raises:
        ValueError: an unknown policy name (allowed: :data:`POLICIES`).
    """
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = sorted(set(names) - set(POLICIES))
    if unknown:
        raise ValueError(f"unknown DiffAugment policies {unknown}; allowed: {POLICIES}")
    return names


@dataclass
class AugmentParams:
    """Per-image random parameters, ``B`` rows each (``None`` where the policy is off).

    ``brightness`` / ``saturation`` / ``contrast``: float ``(B,)``; ``shift``: int64 ``(B, 2)``
    (rows, columns) in ``[-H/8, H/8]``; ``cutout``: int64 ``(B, 2)`` top-left corner of the
    square (may lie partly outside, as in the reference code).
    """

    brightness: Optional[torch.Tensor] = None
    saturation: Optional[torch.Tensor] = None
    contrast: Optional[torch.Tensor] = None
    shift: Optional[torch.Tensor] = None
    cutout: Optional[torch.Tensor] = None


def sample_augment_params(shape: Sequence[int], policy: Sequence[str],
                          generator: torch.Generator) -> AugmentParams:
    """Draw the parameters for a batch of images of ``shape`` ``(B, C, H, W)`` (see module doc)."""
    b, _, h, w = shape
    p = AugmentParams()
    if "color" in policy:
        p.brightness = torch.rand(b, generator=generator) - 0.5
        p.saturation = torch.rand(b, generator=generator) * 2
        p.contrast = torch.rand(b, generator=generator) + 0.5
    if "translation" in policy:
        sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
        p.shift = torch.stack([torch.randint(-sh, sh + 1, (b,), generator=generator),
                               torch.randint(-sw, sw + 1, (b,), generator=generator)], dim=1)
    if "cutout" in policy:
        ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
        centre = torch.stack([torch.randint(0, h + (1 - ch % 2), (b,), generator=generator),
                              torch.randint(0, w + (1 - cw % 2), (b,), generator=generator)], dim=1)
        p.cutout = centre - torch.tensor([ch // 2, cw // 2])
    return p


def translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``out[b, :, i, j] = x[b, :, i - dy, j - dx]`` (zero where that falls outside) for
    ``shift[b] = (dy, dx)``; differentiable in ``x``."""
    b, _, h, w = x.shape
    shift = shift.to(x.device)
    rows = torch.arange(h, device=x.device)[None, :] - shift[:, :1]          # (B, H)
    cols = torch.arange(w, device=x.device)[None, :] - shift[:, 1:]          # (B, W)
    # Index into x padded by one zero row/column on each side; out-of-range -> the padding.
    rows = (rows + 1).clamp(0, h + 1)
    cols = (cols + 1).clamp(0, w + 1)
    padded = F.pad(x, (1, 1, 1, 1))                                          # (B, C, H+2, W+2)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def cutout_mask(shape: Sequence[int], corner: torch.Tensor, device=None) -> torch.Tensor:
    """Float mask ``(B, 1, H, W)``: 0 inside each image's ``H/2 x W/2`` square at ``corner``."""
    b, _, h, w = shape
    corner = corner.to(device)
    i = torch.arange(h, device=device)[None, :, None]
    j = torch.arange(w, device=device)[None, None, :]
    top, left = corner[:, 0, None, None], corner[:, 1, None, None]
    ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
    inside = (i >= top) & (i < top + ch) & (j >= left) & (j < left + cw)     # (B, H, W)
    return (~inside).to(torch.float32).unsqueeze(1)


def diff_augment(x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Apply ``params`` to images ``x`` float ``(B, C, H, W)`` (nominally [-1, 1]; outputs may
    leave that range, as in the reference code). Order: color, translation, cutout."""

    def col(v):
        return v.to(device=x.device, dtype=x.dtype)[:, None, None, None]

    if params.brightness is not None:
        x = x + col(params.brightness)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * col(params.saturation) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * col(params.contrast) + mean
    if params.shift is not None:
        x = translate(x, params.shift)
    if params.cutout is not None:
        x = x * cutout_mask(x.shape, params.cutout, x.device).to(x.dtype)
    return x
