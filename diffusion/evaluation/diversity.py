"""Per-class sample diversity relative to real data: a mode-collapse detector.

A class-conditional generator that has collapsed on class ``k`` draws nearly the same image for
every latent, so the spread of its samples in a feature space shrinks. The detector compares, per
class, the mean pairwise Euclidean distance of generated features with that of real features of
the same class (the "intra-class diversity" measure used, e.g., for the conditional GANs of
Odena et al. 2017, sec. 4.2, there with MS-SSIM; here with the classifier features that FID uses
on Fashion-MNIST, :class:`~diffusion.evaluation.features.ClassifierFeatures`)::

    ratio_k = mean_{i != j} ||f(x_i) - f(x_j)||  over generated x of class k
              -----------------------------------------------------------------
              mean_{i != j} ||f(r_i) - f(r_j)||  over real r of class k

``ratio_k`` is 0 for identical samples, about 1 when generated samples spread like real ones, and
above 1 when they spread more (e.g. noise). The mean over distinct pairs is an unbiased estimate
of the expected distance, so fake and real sets may differ in size.

Example::

    >>> import torch
    >>> real = torch.randn(40, 8, dtype=torch.float64)
    >>> labels = torch.arange(40) % 2
    >>> fake = real.clone(); fake[labels == 1] = real[1]       # class 1 collapsed to one image
    >>> r = diversity_ratios(fake, labels, real, labels, num_classes=2)
    >>> r.tolist(), collapsed_classes(r)
    ([1.0, 0.0], [1])
"""

from __future__ import annotations

from typing import List

import torch

#: a class whose generated samples spread less than half as much as its real images is flagged
#: (ratio < 0.5). Healthy GAN samples sit near 0.8 - 1.1 on Fashion-MNIST classifier features;
#: a fully collapsed class gives ~0.
COLLAPSE_THRESHOLD = 0.5


def mean_pairwise_distance(features: torch.Tensor) -> float:
    """Mean Euclidean distance over the ``N * (N - 1)`` ordered pairs ``i != j`` of ``features``.

    Args:
        features: float ``(N, D)``, ``N >= 2``.

    Returns:
        float >= 0 (computed in float64).

    Raises:
        ValueError: not 2-D, fewer than 2 rows, or not floating point.
    """
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or not features.is_floating_point():
        got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be a float (N, D) tensor, got {got}")
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 feature rows for a pairwise distance, got {n}")
    f = features.to(torch.float64)
    d = torch.cdist(f, f)                                   # (N, N), zero diagonal
    return float(d.sum() / (n * (n - 1)))


def class_diversity(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class :func:`mean_pairwise_distance`: float64 ``(num_classes,)``.

    Args:
        features: float ``(N, D)``.
        labels: int ``(N,)`` in ``[0, num_classes)``; every class needs at least 2 rows.

    Raises:
        ValueError: shapes disagree, a label is out of range, or a class has fewer than 2 rows.
    """
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or features.ndim != 2 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels must be (N,) for features (N, D); got labels "
                         f"{tuple(labels.shape)}, features {tuple(features.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min().item()}, "
                         f"{labels.max().item()}]")
    out = torch.empty(num_classes, dtype=torch.float64)
    for k in range(num_classes):
        rows = features[labels.to(features.device) == k]
        if rows.shape[0] < 2:
            raise ValueError(f"class {k} has {rows.shape[0]} rows; need at least 2")
        out[k] = mean_pairwise_distance(rows)
    return out


def diversity_ratios(fake_features: torch.Tensor, fake_labels: torch.Tensor,
                     real_features: torch.Tensor, real_labels: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """Per-class diversity of generated over real features: float64 ``(num_classes,)``, >= 0.

    ``fake_features`` / ``real_features``: float ``(N, D)`` / ``(M, D)`` in the same feature
    space, each with int labels in ``[0, num_classes)`` and >= 2 rows per class.

    Raises:
        ValueError: as :func:`class_diversity`; feature widths differ; a real class has zero
            diversity (all its real images identical: the ratio is undefined).
    """
    if fake_features.shape[1:] != real_features.shape[1:]:
        raise ValueError(f"feature widths differ: fake {tuple(fake_features.shape)}, "
                         f"real {tuple(real_features.shape)}")
    real = class_diversity(real_features, real_labels, num_classes)
    if (real <= 0).any():
        raise ValueError(f"real classes {torch.nonzero(real <= 0).flatten().tolist()} have zero "
                         f"diversity; the ratio is undefined")
    return class_diversity(fake_features, fake_labels, num_classes) / real


def collapsed_classes(ratios: torch.Tensor, threshold: float = COLLAPSE_THRESHOLD) -> List[int]:
    """Class ids whose diversity ratio is below ``threshold`` (possible mode collapse)."""
    return torch.nonzero(torch.as_tensor(ratios) < threshold).flatten().tolist()
