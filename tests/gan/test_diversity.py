"""Collapse detector: diffusion/evaluation/diversity.py and GANObjective.diversity (training/objectives/gan.py)."""

from __future__ import annotations

import logging

import pytest
import torch

from diffusion.evaluation.diversity import (COLLAPSE_THRESHOLD, class_diversity, collapsed_classes,
                                            diversity_ratios, mean_pairwise_distance)
from diffusion.evaluation.features import ClassifierFeatures
from diffusion.models.gan import ConditionalGenerator
from training.config import load_config
from diffusion.data.datasets import TensorImageDataset, fashion_mnist
from training.objectives import DIVERSITY_PER_CLASS, GANObjective


@pytest.fixture(scope="module")
def real():
    """20 Fashion-MNIST test images per class (200), float [-1, 1], labels 0..9 sorted."""
    ds = fashion_mnist("test")
    keep = torch.cat([torch.nonzero(ds.labels == k).flatten()[:20] for k in range(10)])
    return TensorImageDataset(ds.images[keep], ds.labels[keep], ds.class_names)


@pytest.fixture(scope="module")
def features(real):
    """Shipped classifier's 128-d features of ``real``: float64 (200, 128)."""
    return ClassifierFeatures()((real.images + 1) / 2)


def test_mean_pairwise_distance_on_hand_computed_values():
    assert mean_pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)
    # 3-4-5 triangle: (3 + 4 + 5) / 3
    tri = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    assert mean_pairwise_distance(tri) == pytest.approx(4.0)
    assert mean_pairwise_distance(torch.ones(5, 3)) == 0.0


@pytest.mark.parametrize("bad, message", [(torch.zeros(1, 3), "at least 2"),
                                          (torch.zeros(4), "float \\(N, D\\)"),
                                          (torch.zeros(3, 2, dtype=torch.long), "float \\(N, D\\)")])
def test_mean_pairwise_distance_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        mean_pairwise_distance(bad)


def test_class_diversity_is_per_class_and_checks_labels():
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert class_diversity(f, labels, 2).tolist() == [5.0, 0.0]
    with pytest.raises(ValueError, match="class 2 has 0 rows"):
        class_diversity(f, labels, 3)
    with pytest.raises(ValueError, match="labels must lie in"):
        class_diversity(f, torch.tensor([0, 0, 1, 5]), 2)
    with pytest.raises(ValueError, match="feature widths differ"):
        diversity_ratios(f, labels, torch.zeros(4, 3), labels, 2)


def test_images_equal_to_the_real_set_give_ratio_one_and_identical_images_zero(real, features):
    ratios = diversity_ratios(features, real.labels, features, real.labels, 10)
    assert ratios.tolist() == [1.0] * 10
    # Every generated image of a class is the class's first real image -> ratio exactly 0.
    firsts = (real.images[::20] + 1) / 2                                # (10, 1, 28, 28)
    same = ClassifierFeatures()(firsts.repeat_interleave(20, dim=0))
    collapsed = diversity_ratios(same, real.labels, features, real.labels, 10)
    assert collapsed.abs().max().item() < 1e-6
    assert collapsed_classes(collapsed) == list(range(10))
    # Real per-class spreads of Fashion-MNIST are far from 0 (the ratio's denominator).
    assert class_diversity(features, real.labels, 10).min().item() > 1.0


def test_collapsed_classes_uses_the_documented_threshold():
    assert COLLAPSE_THRESHOLD == 0.5
    assert collapsed_classes(torch.tensor([0.9, 0.49, 0.5, 0.1])) == [1, 3]
    assert collapsed_classes(torch.tensor([0.9, 0.49]), threshold=0.3) == []


# -- in the GAN objective -----------------------------------------------------------------------

def gan_objective(real, *overrides):
    cfg = load_config(None, ["train.objective=gan", "gan.latent_dim=8", "gan.generator_channels=[8,4]",
                             "gan.discriminator_channels=[4,8]", *overrides])
    obj = GANObjective(cfg, 10, real.class_names)
    obj.train_data = real
    return obj


def test_objective_flags_a_class_the_generator_collapsed_on(real, caplog):
    obj = gan_objective(real)
    g = obj.modules["generator"].eval()
    with torch.no_grad():  # class 3: last conditional BN outputs beta[3] whatever z is
        g.norms[-1].gamma.weight[3] = 0.0
        g.norms[-1].beta.weight[3] = torch.linspace(-1, 1, g.norms[-1].beta.weight.shape[1])
    with caplog.at_level(logging.WARNING, logger="training.objectives"):
        scalars = obj.diversity(g, torch.Generator().manual_seed(0))
    n = DIVERSITY_PER_CLASS
    assert set(scalars) == {f"diversity_ratio_min_n{n}", f"diversity_ratio_mean_n{n}"} and n == 50
    assert scalars[f"diversity_ratio_min_n{n}"] < 1e-6
    assert scalars[f"diversity_ratio_mean_n{n}"] > scalars[f"diversity_ratio_min_n{n}"]
    assert "possible mode collapse in class 3 (Dress)" in caplog.text
    # The real reference is computed once per run and reused.
    ref = obj._real_diversity
    obj.diversity(g, torch.Generator().manual_seed(1))
    assert obj._real_diversity is ref


def test_objective_skips_images_the_classifier_does_not_take(caplog):
    images = torch.rand(20, 1, 32, 32) * 2 - 1
    data = TensorImageDataset(images, torch.arange(20) % 10, [str(k) for k in range(10)])
    obj = gan_objective(data, "data.image_size=32")
    g = obj.modules["generator"]
    assert isinstance(g, ConditionalGenerator) and g.config.image_size == 32
    with caplog.at_level(logging.INFO, logger="training.objectives"):
        assert obj.diversity(g, torch.Generator().manual_seed(0)) == {}
        assert obj.diversity(g, torch.Generator().manual_seed(0)) == {}
    assert caplog.text.count("collapse detector off") == 1
