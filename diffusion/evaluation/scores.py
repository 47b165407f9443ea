"""Sample-quality scores computed from feature tensors (no networks here).

Inputs are features ``(N, D)`` from :mod:`diffusion.evaluation.features` (any float dtype,
tensor or numpy); everything is computed in float64. FID and KID run through torchmetrics'
``FrechetInceptionDistance`` / ``KernelInceptionDistance`` fed with an identity "network", so the
numbers are torchmetrics' numbers for the given features. torchmetrics has no precision/recall
for generative models, and its ``InceptionScore`` does not serve (see :func:`inception_score`),
so those two are written here.

Every torchmetrics metric is built with ``sync_on_compute=False``: these functions score the
features they are given, also inside an ``accelerate launch`` process (gather first if you want
all processes' features).

Example::

    >>> import torch
    >>> from diffusion.evaluation import fid_from_features, kid_from_features, precision_recall
    >>> g = torch.Generator().manual_seed(0)
    >>> real, fake = torch.randn(500, 8, generator=g), torch.randn(500, 8, generator=g) + 0.5
    >>> round(fid_from_features(real, fake), 1)
    2.1
    >>> mean, std = kid_from_features(real, fake, subsets=10, subset_size=100)
    >>> p, r = precision_recall(real, fake, k=3)
"""

from __future__ import annotations

import math
import warnings
from typing import Union

import numpy as np
import torch
from torch import nn

ArrayLike = Union[torch.Tensor, np.ndarray]


def _torchmetrics_image():
    try:
        import torchmetrics.image.fid as fid
        import torchmetrics.image.kid as kid
    except ImportError as e:
        raise ImportError("FID/KID need torchmetrics: pip install 'diffusion-centric[eval]'") from e
    return fid, kid


class _IdentityFeatures(nn.Module):
    """Stands in for torchmetrics' feature network: the "images" given to ``update`` are
    already features ``(N, num_features)``."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _as_float64(x: ArrayLike, what: str, ndim: int) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.asarray(x, dtype=np.float64))
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or inf")
    return x


def _feature_pair(real: ArrayLike, fake: ArrayLike, min_samples: int = 2):
    """float64 ``(N_real, D)``, ``(N_fake, D)`` on the device of ``real``; raise on bad input."""
    real = _as_float64(real, "real features", 2)
    fake = _as_float64(fake, "fake features", 2).to(real.device)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features differ in dimension: {real.shape[1]} vs "
                         f"{fake.shape[1]} (same feature network?)")
    if len(real) < min_samples or len(fake) < min_samples:
        raise ValueError(f"need at least {min_samples} real and fake samples, got {len(real)} "
                         f"and {len(fake)}")
    return real, fake


# --- Frechet distance -------------------------------------------------------------------------

def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, eq. 6):

        d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    Computed by torchmetrics' ``_compute_fid`` in float64 (the trace of the matrix square root as
    the sum of square roots of the eigenvalues of ``sigma1 @ sigma2``). Not clamped: a result a
    little below 0 (about -1e-10) is rounding, for equal distributions.

    Args:
        mu1, mu2: means ``(D,)``. sigma1, sigma2: covariances ``(D, D)``, symmetric PSD.

    Returns:
        float >= 0 up to rounding.

    Raises:
        ValueError: shapes do not fit, NaN or inf.

    Example::

        >>> frechet_distance(torch.zeros(2), torch.eye(2), torch.ones(2), 4 * torch.eye(2))
        4.0
    """
    fid_module, _ = _torchmetrics_image()
    mu1, mu2 = _as_float64(mu1, "mu1", 1), _as_float64(mu2, "mu2", 1)
    sigma1, sigma2 = _as_float64(sigma1, "sigma1", 2), _as_float64(sigma2, "sigma2", 2)
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"need mu (D,) and sigma (D, D) for one D; got mu1 {tuple(mu1.shape)}, "
                         f"sigma1 {tuple(sigma1.shape)}, mu2 {tuple(mu2.shape)}, "
                         f"sigma2 {tuple(sigma2.shape)}")
    device = mu1.device
    return float(fid_module._compute_fid(mu1, sigma1.to(device), mu2.to(device), sigma2.to(device)))


def fid_from_features(real: ArrayLike, fake: ArrayLike) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (FID, Heusel et al. 2017).

    Feeds the features to torchmetrics' ``FrechetInceptionDistance`` (identity feature network)
    and calls ``compute()``: means and unbiased (N - 1) covariances in float64, then
    :func:`frechet_distance`. Symmetric in ``real`` / ``fake``. FID is biased upwards for small N
    (Chong & Forsyth 2020): compare values at the same N only.

    Args:
        real: ``(N_real, D)``; fake: ``(N_fake, D)``; N >= 2 each. Tensor (any device) or numpy.

    Returns:
        float, 0 for identical sets (up to rounding, ~1e-10).

    Raises:
        ValueError: not 2-D, different D, fewer than 2 samples, NaN or inf.

    Example::

        >>> x = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
        >>> abs(fid_from_features(x, x)) < 1e-6
        True
    """
    fid_module, _ = _torchmetrics_image()
    real, fake = _feature_pair(real, fake)
    metric = fid_module.FrechetInceptionDistance(
        feature=_IdentityFeatures(real.shape[1]), sync_on_compute=False).to(real.device)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


# --- Kernel Inception Distance ----------------------------------------------------------------

def kid_from_features(real: ArrayLike, fake: ArrayLike, subsets: int = 100,
                      subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the polynomial
    kernel ``k(x, y) = (x.y / D + 1)^3``, averaged over random subsets.

    Through torchmetrics' ``KernelInceptionDistance`` (identity feature network): each of
    ``subsets`` rounds draws ``m`` reals and ``m`` fakes without replacement and computes

        MMD^2_u = sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (m(m-1))
                  - 2 sum_{i,j} k(x_i, y_j) / m^2.

    ``m = min(subset_size, N_real, N_fake)``: ``subset_size`` is clipped to the smaller set (with
    ``m`` equal to both set sizes every subset is the whole set, and ``std`` is 0). The subsets
    come from ``torch.randperm`` under a forked CPU RNG seeded with ``seed``: the result is
    deterministic for a seed, and the caller's global RNG state is untouched.

    Args:
        real: ``(N_real, D)``; fake: ``(N_fake, D)``; N >= 2 each.
        subsets: number of subsets (>= 1). subset_size: samples per subset before clipping (>= 2).
        seed: seed of the subset draws.

    Returns:
        ``(mean, std)`` over subsets, floats; ``std`` is the population std (torchmetrics).
        The mean can be slightly negative (unbiased estimator) for matching distributions.

    Raises:
        ValueError: bad features (see :func:`fid_from_features`), ``subsets`` < 1,
            ``subset_size`` < 2.

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g)
        >>> same, _ = kid_from_features(x, y, subsets=20, subset_size=100)
        >>> shifted, _ = kid_from_features(x, y + 1, subsets=20, subset_size=100)
        >>> abs(same) < 0.1 * shifted
        True
    """
    _, kid_module = _torchmetrics_image()
    if not isinstance(subsets, int) or subsets < 1:
        raise ValueError(f"subsets must be an int >= 1, got {subsets!r}")
    if not isinstance(subset_size, int) or subset_size < 2:
        raise ValueError(f"subset_size must be an int >= 2, got {subset_size!r}")
    real, fake = _feature_pair(real, fake)
    m = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():  # "will save all extracted features in buffer": intended here
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        metric = kid_module.KernelInceptionDistance(
            feature=_IdentityFeatures(real.shape[1]), subsets=subsets, subset_size=m,
            sync_on_compute=False).to(real.device)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):  # compute() draws subsets from the global CPU RNG
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


# --- precision and recall ---------------------------------------------------------------------

def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(len(a), len(b))`` squared Euclidean distances, ``|a|^2 + |b|^2 - 2 a.b``, >= 0."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return sq.clamp_min_(0)


def _knn_radii_squared(x: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """Squared distance of each row of ``x`` to its k-th nearest other row, ``(N,)``."""
    radii = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for lo in range(0, len(x), chunk_size):
        d2 = _squared_distances(x[lo:lo + chunk_size], x)  # (chunk, N), includes self at 0
        radii[lo:lo + len(d2)] = d2.kthvalue(k + 1, dim=1).values  # (k+1)-th smallest skips self
    return radii


def _fraction_in_manifold(queries: torch.Tensor, centres: torch.Tensor, radii_sq: torch.Tensor,
                          chunk_size: int) -> float:
    """Fraction of ``queries`` inside at least one ball (centre_i, radius_i)."""
    inside = torch.empty(len(queries), dtype=torch.bool, device=queries.device)
    for lo in range(0, len(queries), chunk_size):
        d2 = _squared_distances(queries[lo:lo + chunk_size], centres)  # (chunk, N_centres)
        inside[lo:lo + len(d2)] = (d2 <= radii_sq[None, :]).any(dim=1)
    return inside.double().mean().item()


def precision_recall(real: ArrayLike, fake: ArrayLike, k: int = 3,
                     chunk_size: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, eq. 1-2).

    The real manifold is the union of balls around each real feature with radius the distance to
    its k-th nearest other real; the fake manifold likewise. Precision = fraction of fakes inside
    the real manifold (quality); recall = fraction of reals inside the fake manifold (coverage).
    A point on a ball's boundary counts as inside (``<=``, as the authors' code).

    Distances are computed ``chunk_size`` rows at a time in float64 as
    ``|a|^2 + |b|^2 - 2 a.b``: memory is O(chunk_size * N), never O(N^2). The result does not
    depend on ``chunk_size``. Not in torchmetrics, hence written here.

    Args:
        real: ``(N_real, D)``; fake: ``(N_fake, D)``; N > k each. Tensor (any device) or numpy.
        k: neighbourhood size (the paper uses 3), >= 1.
        chunk_size: rows per distance block, >= 1.

    Returns:
        ``(precision, recall)``, floats in [0, 1].

    Raises:
        ValueError: bad features (see :func:`fid_from_features`), ``k`` < 1 or >= a set's size,
            ``chunk_size`` < 1.

    Example::

        >>> real = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
        >>> fake = torch.tensor([[2.0], [4.0], [5.0], [-3.0]])
        >>> precision_recall(real, fake, k=1)
        (0.75, 0.75)
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    real, fake = _feature_pair(real, fake, min_samples=k + 1)
    real_radii_sq = _knn_radii_squared(real, k, chunk_size)
    fake_radii_sq = _knn_radii_squared(fake, k, chunk_size)
    precision = _fraction_in_manifold(fake, real, real_radii_sq, chunk_size)
    recall = _fraction_in_manifold(real, fake, fake_radii_sq, chunk_size)
    return precision, recall


# --- scores from class logits -----------------------------------------------------------------

def inception_score(logits: ArrayLike) -> float:
    """Inception Score (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` with one split.

    ``p(y|x) = softmax(logits)``, ``p(y)`` = its mean over the set, in float64 and log space
    (``log p(y)`` by log-mean-exp). Equal to torchmetrics' ``InceptionScore(splits=1)`` mean; not
    computed through it because that one shuffles with the global RNG, returns a NaN std for one
    split, and takes ``log`` of the marginal directly (NaN when a class's probability underflows).
    Ranges from 1 (all predictions equal) to K (confident and spread evenly over K classes).

    Args:
        logits: ``(N, K)`` class logits (e.g. :func:`~diffusion.evaluation.extract_logits`), N >= 1.

    Returns:
        float in [1, K].

    Raises:
        ValueError: not 2-D, no rows, NaN or inf.

    Example::

        >>> inception_score(torch.eye(4) * 100)
        4.0
    """
    logits = _as_float64(logits, "logits", 2)
    if len(logits) == 0:
        raise ValueError("logits has no rows")
    log_p_yx = logits.log_softmax(dim=1)  # (N, K)
    log_p_y = log_p_yx.logsumexp(dim=0) - math.log(len(logits))  # (K,) log of the marginal
    kl = (log_p_yx.exp() * (log_p_yx - log_p_y)).sum(dim=1)  # (N,)
    return math.exp(kl.mean().item())


def conditional_accuracy_from_logits(logits: ArrayLike, labels: ArrayLike) -> dict:
    """Fraction of images classified as the class they were generated for, overall and per class.

    Args:
        logits: ``(N, K)`` classifier logits. labels: ``(N,)`` integer class ids in [0, K).

    Returns:
        ``{"accuracy": float, "per_class": list of K floats (NaN for a class with no images),
        "n": N, "n_per_class": list of K ints}``.

    Raises:
        ValueError: shapes do not fit, no rows, labels not integers in [0, K), NaN/inf logits.

    Example::

        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
        >>> conditional_accuracy_from_logits(logits, torch.tensor([0, 0, 0]))["per_class"]
        [0.6666666666666666, nan]
    """
    logits = _as_float64(logits, "logits", 2)
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or len(labels) != len(logits) or len(labels) == 0:
        raise ValueError(f"need logits (N, K) and labels (N,) with N >= 1, got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class ids, got {labels.dtype}")
    k = logits.shape[1]
    labels = labels.to(logits.device, torch.int64)
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"labels must lie in [0, {k}), got [{labels.min().item()}, "
                         f"{labels.max().item()}]")
    correct = (logits.argmax(dim=1) == labels).double()
    counts = torch.bincount(labels, minlength=k)
    hits = torch.bincount(labels, weights=correct, minlength=k)
    per_class = [hits[c].item() / counts[c].item() if counts[c] else float("nan") for c in range(k)]
    return {"accuracy": correct.mean().item(), "per_class": per_class, "n": len(labels),
            "n_per_class": counts.tolist()}
