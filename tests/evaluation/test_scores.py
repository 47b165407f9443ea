"""Scores from features: FID, KID, precision/recall, IS, conditional accuracy vs known values."""

import itertools
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from diffusion.evaluation import (
    conditional_accuracy_from_logits,
    fid_from_features,
    frechet_distance,
    inception_score,
    kid_from_features,
    precision_recall,
)


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- Frechet distance / FID -------------------------------------------------------------------

def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([3.0, 1.0, 0.0])
    s1, s2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    # ||mu1 - mu2||^2 + sum(s1 + s2 - 2 sqrt(s1 s2)) = 13 + (4 + 1 + 0) = 18
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum()
    assert expected.item() == 18.0
    d = frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2))
    assert isinstance(d, float) and d == pytest.approx(18.0, abs=1e-10)


def test_frechet_distance_of_full_covariances_matches_scipy_sqrtm():
    a, b = randn(6, 6, seed=1), randn(6, 6, seed=2)
    s1, s2 = a @ a.T + 0.1 * torch.eye(6), b @ b.T + 0.1 * torch.eye(6)
    mu1, mu2 = randn(6, seed=3), randn(6, seed=4)
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    ref = ((mu1 - mu2) ** 2).sum().item() + np.trace(s1.numpy() + s2.numpy() - 2 * covmean)
    assert frechet_distance(mu1.numpy(), s1.numpy(), mu2, s2) == pytest.approx(ref, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_fid_is_the_frechet_distance_of_sample_mean_and_unbiased_covariance():
    real, fake = randn(300, 5, seed=0), randn(200, 5, seed=1) * 1.5 + 0.3
    expected = frechet_distance(real.mean(0), torch.cov(real.T), fake.mean(0), torch.cov(fake.T))
    assert fid_from_features(real, fake) == pytest.approx(expected, rel=1e-10)
    # float32 / numpy inputs give the same float64 result
    assert fid_from_features(real.float(), fake.numpy()) == pytest.approx(
        fid_from_features(real.float().double(), fake), rel=1e-12)


def test_fid_of_large_samples_approaches_the_true_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0, -1.0, 0.5]), torch.tensor([0.5, 0.0, -1.0, 1.0])
    s1, s2 = torch.tensor([1.0, 2.0, 0.5, 1.0]), torch.tensor([2.0, 1.0, 0.5, 0.25])
    true = (((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum()).item()  # 2.0931
    n = 20_000
    real = mu1 + s1.sqrt() * randn(n, 4, seed=10)
    fake = mu2 + s2.sqrt() * randn(n, 4, seed=11)
    # over 20 seeds the error at N=20,000 had std 0.025: 0.1 is 4 standard errors
    assert fid_from_features(real, fake) == pytest.approx(true, abs=0.1)


def test_fid_of_a_set_with_itself_is_zero_and_fid_is_symmetric():
    x, y = randn(500, 16, seed=0), randn(400, 16, seed=1) + 0.2
    assert abs(fid_from_features(x, x)) < 1e-3
    assert abs(fid_from_features(x * 100 + 50, x * 100 + 50)) < 1e-3  # large scale and offset
    assert fid_from_features(x, y) == pytest.approx(fid_from_features(y, x), rel=1e-9)
    assert fid_from_features(x, y) > 0.5


@pytest.mark.parametrize("score", [fid_from_features, kid_from_features, precision_recall])
def test_bad_feature_sets_raise(score):
    x = randn(10, 4)
    for real, fake in [(x, randn(10, 5)), (x[:1], x), (x, x[:1]), (x[0], x),
                       (x, torch.where(x > 1, torch.nan, x))]:
        with pytest.raises(ValueError):
            score(real, fake)
    with pytest.raises(ValueError):
        frechet_distance(x[0], torch.eye(4), x[0, :3], torch.eye(3))


# --- KID --------------------------------------------------------------------------------------

def mmd2_unbiased_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, by explicit loops (Binkowski et al. 2018)."""
    m, d = x.shape

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / m**2


def test_kid_without_subsampling_is_the_unbiased_mmd():
    x, y = randn(12, 5, seed=0), randn(12, 5, seed=1) * 0.8 + 0.4
    ref = mmd2_unbiased_reference(x.numpy(), y.numpy())
    mean, std = kid_from_features(x, y, subsets=3, subset_size=12)  # every subset = whole set
    assert mean == pytest.approx(ref, rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)
    # subset_size is clipped to min(N_real, N_fake): 1000 -> 12
    assert kid_from_features(x, y, subsets=3, subset_size=1000)[0] == pytest.approx(ref, rel=1e-10)


def test_kid_of_a_set_with_itself_is_near_zero():
    x = randn(500, 8, seed=0)
    # a set vs itself breaks the estimator's independence assumption: the cross term holds the
    # k(x_i, x_i) pairs, so the value is negative, shrinking like 1/m (-0.41 at m=40, -0.03 at 500)
    small = x[:40]
    ref = mmd2_unbiased_reference(small.numpy(), small.numpy())
    assert kid_from_features(small, small, subsets=1, subset_size=40)[0] == pytest.approx(ref)
    assert ref < 0
    whole, _ = kid_from_features(x, x, subsets=2, subset_size=500)
    subsampled, _ = kid_from_features(x, x, subsets=20, subset_size=100)
    shifted, _ = kid_from_features(x, randn(500, 8, seed=1) + 0.5, subsets=20, subset_size=100)
    assert shifted > 0.5
    assert abs(whole) < 0.05 and abs(subsampled) < 0.05  # vs ~1.0 for a shift of 0.5


def test_kid_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone():
    x, y = randn(300, 6, seed=0), randn(300, 6, seed=1) + 0.3
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = kid_from_features(x, y, subsets=10, subset_size=50, seed=7)
    b = kid_from_features(x, y, subsets=10, subset_size=50, seed=7)
    c = kid_from_features(x, y, subsets=10, subset_size=50, seed=8)
    assert a == b and a != c
    assert a[1] > 0  # subsets differ
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError):
        kid_from_features(x, y, subsets=0)
    with pytest.raises(ValueError):
        kid_from_features(x, y, subset_size=1)


# --- precision / recall -----------------------------------------------------------------------

def precision_recall_reference(real: np.ndarray, fake: np.ndarray, k: int):
    """Full distance matrices, explicit k-th neighbour (Kynkaanniemi et al. 2019)."""
    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    def radii(a):
        d = dist(a, a)
        np.fill_diagonal(d, np.inf)  # exclude the point itself
        return np.sort(d, axis=1)[:, k - 1]

    precision = (dist(fake, real) <= radii(real)[None, :]).any(axis=1).mean()
    recall = (dist(real, fake) <= radii(fake)[None, :]).any(axis=1).mean()
    return precision, recall


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_match_the_brute_force_reference(k):
    real = randn(40, 3, seed=0)
    fake = randn(30, 3, seed=1) * 1.3 + torch.tensor([0.8, 0.0, 0.0])
    p, r = precision_recall(real, fake, k=k)
    ref_p, ref_r = precision_recall_reference(real.numpy(), fake.numpy(), k)
    assert (p, r) == pytest.approx((ref_p, ref_r), abs=1e-12)
    assert 0 < p < 1 and 0 < r < 1  # a case where both matter
    for chunk_size in (1, 7, 10_000):
        assert precision_recall(real, fake, k=k, chunk_size=chunk_size) == (p, r)


def test_precision_recall_hand_computed_1d():
    # k=1 radii: reals 0,1,3,10 -> 1,1,2,7; fakes 2,4,5,-3 -> 2,1,1,5
    # precision: 2 in [0,2], 4 in [1,5], 5 in [1,5] (boundary counts), -3 in no real ball -> 3/4
    # recall: 0 and 1 in [-8,2], 3 in [0,4]/[3,5], 10 in no fake ball -> 3/4
    real = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    fake = torch.tensor([[2.0], [4.0], [5.0], [-3.0]])
    assert precision_recall(real, fake, k=1) == (0.75, 0.75)
    # k=2 radii: reals -> 3,2,3,9: every fake inside (-3 on the boundary of [-3,3]);
    # fakes -> 3,2,3,7: balls reach at most 8, so 10 is still outside
    assert precision_recall(real, fake, k=2) == (1.0, 0.75)


def test_precision_recall_of_identical_and_of_far_apart_sets():
    x = randn(200, 8, seed=0)
    assert precision_recall(x, x.clone()) == (1.0, 1.0)
    assert precision_recall(x, randn(150, 8, seed=1) + 100.0) == (0.0, 0.0)
    with pytest.raises(ValueError):
        precision_recall(x[:3], x, k=3)  # k must be < every set size
    with pytest.raises(ValueError):
        precision_recall(x, x, k=0)
    with pytest.raises(ValueError):
        precision_recall(x, x, chunk_size=0)


# --- Inception Score --------------------------------------------------------------------------

def test_inception_score_of_uniform_predictions_is_one():
    assert inception_score(torch.zeros(50, 10)) == pytest.approx(1.0, abs=1e-12)
    assert inception_score(torch.ones(1, 3)) == pytest.approx(1.0, abs=1e-12)
    # confident but always the same class: still 1
    assert inception_score(torch.eye(4)[[2] * 10] * 50) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("num_classes", [2, 5, 10])
def test_inception_score_of_confident_balanced_predictions_is_k(num_classes):
    labels = torch.arange(4 * num_classes) % num_classes
    logits = torch.nn.functional.one_hot(labels, num_classes).double() * 60.0
    assert inception_score(logits) == pytest.approx(num_classes, rel=1e-9)
    # extreme logits (softmax underflows to exactly 0) stay finite
    assert inception_score(logits * 100) == pytest.approx(num_classes, rel=1e-12)


def test_inception_score_equals_torchmetrics_with_one_split():
    from torchmetrics.image.inception import InceptionScore

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    logits = randn(300, 10, seed=0) * 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # feature buffer / std of one split
        metric = InceptionScore(feature=Identity(), splits=1)
        metric.update(logits)
        with torch.random.fork_rng(devices=[]):
            expected = metric.compute()[0].item()
    score = inception_score(logits)
    assert score == pytest.approx(expected, rel=1e-9)
    assert 1.5 < score < 10
    with pytest.raises(ValueError):
        inception_score(logits[0])
    with pytest.raises(ValueError):
        inception_score(torch.full((2, 3), math.inf))


# --- conditional accuracy ---------------------------------------------------------------------

def test_conditional_accuracy_from_logits():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0],
                           [1.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    labels = torch.tensor([0, 0, 2, 0, 0])  # predictions 0, 1, 2, 0, 2
    r = conditional_accuracy_from_logits(logits, labels)
    assert r["accuracy"] == pytest.approx(3 / 5)
    assert r["per_class"][0] == pytest.approx(2 / 4) and r["per_class"][2] == 1.0
    assert math.isnan(r["per_class"][1])  # no image of class 1
    assert r["n"] == 5 and r["n_per_class"] == [4, 0, 1]
    for bad in (torch.tensor([0, 0, 3, 0, 0]), torch.tensor([0, 0, -1, 0, 0]),
                torch.tensor([0.0, 0, 2, 0, 0]), labels[:4]):
        with pytest.raises(ValueError):
            conditional_accuracy_from_logits(logits, bad)
