"""Speckle rate: the fraction of generated images with speckled, noisy background texture.

The failure it measures: samples of an under-trained or badly-solved diffusion model whose dark
background carries faint isolated dots (salt-and-pepper-like speckle), usually together with
saturated, blotchy texture on the garment. FID averages such images away; this counts them.

**Speckle score** of one image (float in [0, 1], ``(C, H, W)``; channels averaged first)::

    B(x)  = { p : x_q < 0.198 for every q in the 3x3 window around p }   # background pixels
    s(x)  = mean_{p in B(x)} (Lap x)_p ** 2                              # 0 if B(x) is empty

with ``Lap`` the 5-point Laplacian ``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]`` (replicate padding):
the high-frequency energy of the image's *background*. The level 0.198 = 50.5 / 255 is "about
0.2" placed between two uint8 steps, so a uint8 image and its float32 / float64 copies (whose
51 / 255 round to either side of 0.2) get the same background.

Why the background: Fashion-MNIST's real images have clean black surrounds (half their pixels
are exactly 0), while their garments legitimately carry high-frequency texture (plaid shirts,
prints). Whole-image high-frequency measures (the spectral energy fraction above a radial
cut-off, the whole-image Laplacian energy, the median-filter residual, local-extremum counts)
put those real textures at their 99th percentile, above almost every visibly speckled sample:
on the first demo grid of the shipped model (dpmpp-2m, 20 steps, seeds 0..99) they flagged 1-3
of the ~20 defective cells, this measure 14 (docs/results/speckle.md). The level and the 3x3
window keep the garment and its edge out of ``B(x)`` (the Laplacian at a background pixel only
reads pixels < 0.198), so only dim structure away from the object counts. What it misses:
blotchy, saturated texture *inside* a garment with a clean background.

**Speckle rate** of a set of generated images = the fraction whose score exceeds the
``quantile`` (0.99) of the real reference images' scores; real images score ~1% by construction.

Properties: deterministic, no parameters to learn, O(HW) per image; invariant to flips,
90-degree rotations and anything brighter than the level that stays more than one pixel from the
background (e.g. the garment's own texture); *not* invariant to brightness shifts (the level
is absolute, which is the point: a lifted background is a defect).

Example::

    >>> import torch
    >>> clean = torch.zeros(1, 1, 28, 28); clean[..., 8:20, 8:20] = 0.8   # a square on black
    >>> noisy = clean.clone(); noisy[..., 2, 2] = 0.15       # (0.6**2 + 4 * 0.15**2) / 588
    >>> speckle_scores(clean).item(), round(speckle_scores(noisy).item(), 6)
    (0.0, 0.000765)
    >>> speckle_rate(speckle_scores(torch.cat([clean, noisy])), threshold=1e-4)
    0.5
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusion.evaluation.features import FeatureNetwork

#: a pixel is background when its whole 3x3 neighbourhood is below this level (images in [0, 1]):
#: about 0.2, between the uint8 steps 50 and 51 so that uint8, float32 and float64 images agree
BACKGROUND_LEVEL = 50.5 / 255
#: the real images' score quantile above which a generated image counts as speckled
SPECKLE_QUANTILE = 0.99
#: the 5-point Laplacian (second differences in x and y)
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def _checked(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim != 4:
        got = (f"{images.dtype} tensor of shape {tuple(images.shape)}"
               if isinstance(images, torch.Tensor) else type(images).__name__)
        raise ValueError(f"speckle scores take float (N, C, H, W) images in [0, 1], got {got}")
    if images.shape[-1] < 3 or images.shape[-2] < 3:
        raise ValueError(f"speckle scores need images of at least 3x3 pixels, got "
                         f"{tuple(images.shape)}")
    if images.numel() and not torch.isfinite(images).all():
        raise ValueError("speckle scores take finite images; got NaN or inf")
    if images.numel() and (images.min() < -1e-6 or images.max() > 1 + 1e-6):
        raise ValueError(f"speckle scores take images in [0, 1], got values in "
                         f"[{images.min().item():.6g}, {images.max().item():.6g}]; "
                         f"convert with diffusion.evaluation.to_unit_range")
    return images


def speckle_scores(images: torch.Tensor) -> torch.Tensor:
    """Per-image speckle score (see the module docstring): float64 ``(N,)``, >= 0.

    Args:
        images: float ``(N, C, H, W)`` in [0, 1], ``H, W >= 3``; channels are averaged.

    Raises:
        ValueError: not a float 4-D tensor, smaller than 3x3, NaN/inf, or values outside [0, 1].
    """
    x = _checked(images).to(torch.float64).mean(1, keepdim=True)            # (N, 1, H, W)
    lap = torch.tensor(LAPLACIAN, dtype=x.dtype, device=x.device)[None, None]
    response = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), lap)     # (N, 1, H, W)
    near_object = F.max_pool2d((x > BACKGROUND_LEVEL).to(x.dtype), 3, 1, 1)  # 1: any > level
    background = 1.0 - near_object
    energy = (response.pow(2) * background).sum((1, 2, 3))
    return energy / background.sum((1, 2, 3)).clamp_min(1.0)


def speckle_threshold(real_scores: torch.Tensor, quantile: float = SPECKLE_QUANTILE) -> float:
    """The ``quantile`` of the real images' speckle scores (float ``(M,)``, M >= 1).

    Raises:
        ValueError: empty or non-1-D scores, or ``quantile`` outside (0, 1).
    """
    real_scores = torch.as_tensor(real_scores, dtype=torch.float64).flatten()
    if real_scores.numel() == 0:
        raise ValueError("speckle_threshold needs at least one real score")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile!r}")
    return float(torch.quantile(real_scores, quantile))


def speckle_rate(scores: torch.Tensor, threshold: float) -> float:
    """Fraction of ``scores`` (float ``(N,)``, N >= 1) strictly above ``threshold``.

    Raises:
        ValueError: no scores.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if scores.numel() == 0:
        raise ValueError("speckle_rate needs at least one score")
    return float((scores > threshold).to(torch.float64).mean())


class SpeckleFeatures(FeatureNetwork):
    """The speckle score as a one-"feature" :class:`FeatureNetwork`, so it flows through
    :func:`~diffusion.evaluation.features.extract_features` (range checks, batching) and the
    reference cache of :func:`~diffusion.evaluation.evaluator.reference_features` (keyed by
    ``name``, which names the definition's constants). No weights; any channel count and size."""

    name = "speckle-v1-lap3-bg50.5of255"
    num_features = 1
    description = ("mean squared 5-point Laplacian over background pixels (3x3 window < "
                   "50.5/255); channels averaged")
    in_channels = (1, 2, 3, 4)
    image_size = None

    def __init__(self):
        super().__init__()
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)
        self._freeze()

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return speckle_scores(x)[:, None]
