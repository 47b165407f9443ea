"""``diffusion.evaluation.speckle``: the score on hand-made images, its threshold on the real
Fashion-MNIST test split, and the ``speckle`` metric through ``evaluate``."""

from __future__ import annotations

import pytest
import torch

from diffusion.data.datasets import TensorImageDataset, fashion_mnist
from diffusion.evaluation import evaluate
from diffusion.evaluation.features import extract_features
from diffusion.evaluation.real import RealImagesPipeline
from diffusion.evaluation.speckle import (SPECKLE_QUANTILE, SpeckleFeatures, speckle_rate,
                                          speckle_scores, speckle_threshold)


@pytest.fixture(scope="module")
def real_scores():
    images = (fashion_mnist("test").images.to(torch.float64) + 1) / 2   # (10000, 1, 28, 28)
    return speckle_scores(images)


def smooth_garment() -> torch.Tensor:
    """A bright smooth blob on a black background, (1, 1, 28, 28) in [0, 1]."""
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    blob = torch.exp(-((yy - 14) ** 2 + (xx - 14) ** 2) / 40)
    return (0.9 * blob * (blob > 0.05))[None, None]


def test_hand_computed_value_on_a_tiny_image():
    # 5x5 black image, one speck of 0.1 at the centre: nothing reaches the ~0.2 level, so all 25
    # pixels are background. Laplacian: -0.4 at the centre, 0.1 at its 4 neighbours, 0 elsewhere:
    # (0.4**2 + 4 * 0.1**2) / 25 = 0.008.
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 0.1
    assert speckle_scores(x).item() == pytest.approx(0.008, rel=1e-6)  # 0.1 in float32
    # a bright (0.5) speck is "garment": its 3x3 window leaves the background, and the 16 border
    # pixels left see only zeros in their 4-neighbourhoods: score 0.
    x[0, 0, 2, 2] = 0.5
    assert speckle_scores(x).item() == 0.0


def test_real_test_images_rate_is_one_percent_by_construction(real_scores):
    threshold = speckle_threshold(real_scores)
    rate = speckle_rate(real_scores, threshold)
    assert rate == pytest.approx(1 - SPECKLE_QUANTILE, abs=1e-4)  # 100 of 10,000 (ties: none)
    assert 0.004 < threshold < 0.008  # 0.0054 at this commit; the real scores' 99th percentile
    assert real_scores.median() < threshold / 10  # most real backgrounds are nearly clean


def test_smooth_image_is_below_the_threshold_and_speckled_copies_above(real_scores):
    threshold = speckle_threshold(real_scores)
    clean = smooth_garment()
    assert speckle_scores(clean).item() < threshold
    g = torch.Generator().manual_seed(0)
    # salt-and-pepper: 5% of pixels set to a dim random level (what the shipped model's
    # defective samples carry on their background)
    salt = torch.rand(clean.shape, generator=g) < 0.05
    noisy = torch.where(salt, torch.rand(clean.shape, generator=g) * 0.2, clean)
    assert speckle_scores(noisy).item() > 1.5 * threshold
    # a dim checkerboard (amplitude 0.1) on the background
    board = ((torch.arange(28)[:, None] + torch.arange(28)[None]) % 2).to(clean.dtype) * 0.1
    checker = torch.maximum(clean, board)
    assert speckle_scores(checker).item() > 10 * threshold


def test_texture_inside_the_garment_does_not_count_but_on_the_background_does():
    """The property that separates plaid shirts (real, textured) from speckle: pixels above the
    0.2 level more than one pixel from the background do not enter the score."""
    x = torch.zeros(1, 1, 28, 28)
    x[..., 6:22, 6:22] = 0.8
    g = torch.Generator().manual_seed(1)
    textured = x.clone()
    textured[..., 7:21, 7:21] = 0.3 + 0.7 * torch.rand(1, 1, 14, 14, generator=g)
    assert speckle_scores(textured).item() == speckle_scores(x).item() == 0.0


def test_invariant_to_flips_rotations_and_channel_repetition():
    g = torch.Generator().manual_seed(2)
    x = smooth_garment() + 0.1 * torch.rand(1, 1, 28, 28, generator=g)
    x = x.clamp(0, 1)
    s = speckle_scores(x)
    for y in (x.flip(-1), x.flip(-2), x.rot90(1, (-2, -1)), x.transpose(-1, -2)):
        assert speckle_scores(y).item() == pytest.approx(s.item(), rel=1e-12)
    assert speckle_scores(x.repeat(1, 3, 1, 1)).item() == pytest.approx(s.item(), rel=1e-12)


def test_not_invariant_to_a_brightness_shift():
    """Documented: the 0.2 background level is absolute, so lifting a clean image's background
    to 0.25 turns it all into "garment" (score 0), and a speckled image changes score."""
    x = smooth_garment()
    x[..., 2, 2] = 0.15
    assert speckle_scores(x).item() > 0
    assert speckle_scores((x + 0.25).clamp(max=1)).item() == 0.0


@pytest.mark.parametrize("images, match", [
    (torch.rand(28, 28), r"float \(N, C, H, W\)"),
    (torch.randint(0, 255, (2, 1, 28, 28), dtype=torch.uint8), r"float \(N, C, H, W\)"),
    (torch.rand(2, 1, 28, 28) * 2 - 1, r"in \[0, 1\], got values in \[-"),
    (torch.full((1, 1, 4, 4), 1.5), r"in \[0, 1\], got values in \[1.5"),
    (torch.full((1, 1, 4, 4), float("nan")), "NaN or inf"),
    (torch.zeros(1, 1, 2, 8), "at least 3x3"),
])
def test_bad_images_raise_a_clear_value_error(images, match):
    with pytest.raises(ValueError, match=match):
        speckle_scores(images)


def test_threshold_and_rate_arguments_are_checked():
    with pytest.raises(ValueError, match="at least one real score"):
        speckle_threshold(torch.empty(0))
    with pytest.raises(ValueError, match=r"quantile must lie in \(0, 1\)"):
        speckle_threshold(torch.rand(5), quantile=1.0)
    with pytest.raises(ValueError, match="at least one score"):
        speckle_rate(torch.empty(0), 0.1)
    assert speckle_rate(torch.tensor([0.0, 0.25, 0.5, 0.75]), 0.25) == 0.5  # strictly above


def test_feature_network_form_agrees_with_the_function_and_checks_uint8():
    g = torch.Generator().manual_seed(3)
    u8 = torch.randint(0, 60, (7, 1, 28, 28), dtype=torch.uint8, generator=g)
    feats = extract_features(SpeckleFeatures(), u8, "uint8", batch_size=3)
    assert feats.shape == (7, 1) and feats.dtype == torch.float64
    assert torch.allclose(feats[:, 0], speckle_scores(u8.to(torch.float64) / 255), rtol=1e-6)


def test_evaluate_speckle_of_real_images_against_themselves_is_one_percent(tmp_path):
    """Real test images replayed through ``evaluate`` score ~1% (exactly the share of the
    replayed subset above the whole split's 99th percentile), and the reference scores are
    cached under cache_dir/reference/."""
    test = fashion_mnist("test")
    r = evaluate(RealImagesPipeline(test), "fashion-mnist", metrics="speckle", num_samples=10_000,
                 batch_size=2000, shard_size=2000, cache_dir=tmp_path, progress=False)
    assert r["speckle_rate"] == pytest.approx(0.01, abs=1e-4)
    assert r["speckle_quantile"] == SPECKLE_QUANTILE and r["reference_n"] == 10_000
    assert list((tmp_path / "reference").glob(f"*{SpeckleFeatures.name}*"))
    again = evaluate(RealImagesPipeline(test), "fashion-mnist", metrics="speckle",
                     num_samples=10_000, batch_size=2000, shard_size=2000, cache_dir=tmp_path,
                     progress=False)
    assert again["speckle_threshold"] == r["speckle_threshold"] and again["generated"] == 0


def test_evaluate_flags_speckled_images_against_a_clean_reference(tmp_path):
    clean = torch.full((20, 1, 28, 28), -1.0)
    clean[..., 6:22, 8:20] = 0.6                                     # 0.8 in [0, 1], on black
    g = torch.Generator().manual_seed(4)
    odd = (torch.arange(20) % 2 == 1)[:, None, None, None]
    salt = (torch.rand(clean.shape, generator=g) < 0.05) & odd
    speckled = torch.where(salt, -0.8, clean)                        # dim specks (0.1 in [0, 1])
    ref = TensorImageDataset(clean, torch.zeros(20, dtype=torch.long), ["blob"])
    fake = TensorImageDataset(speckled, torch.zeros(20, dtype=torch.long), ["blob"])
    r = evaluate(RealImagesPipeline(fake), ref, metrics=["speckle"], num_samples=20,
                 cache_dir=None, progress=False)
    assert r["speckle_threshold"] == 0.0 and r["speckle_rate"] == 0.5
