"""Tests for diffusion/models/unet.py: the U-Net builder and its size checks."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DModel

from conftest import NUM_CLASSES, TINY_UNET, seeded_unet
from diffusion.models.unet import build_unet, check_image_size, downsample_factor, num_classes_of

# Small 3-level U-Net at 28x28 (the Fashion-MNIST size): same layout as the default, fewer channels.
SMALL_28 = dict(sample_size=28, in_channels=1, num_classes=10, block_out_channels=(8, 16, 16),
                layers_per_block=1, attention_levels=(2,), attention_head_dim=8,
                norm_num_groups=4)


def test_build_unet_28x28_forward_shape():
    unet = build_unet(**SMALL_28)
    assert isinstance(unet, UNet2DModel)
    assert unet.config.down_block_types == ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
    assert unet.config.up_block_types == ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = unet(x, torch.tensor([10, 500]), class_labels=torch.tensor([3, 10])).sample
    assert out.shape == (2, 1, 28, 28)
    assert torch.isfinite(out).all()


def test_default_build_unet_is_28x28_grayscale_10_classes():
    unet = build_unet()
    assert unet.config.sample_size == 28
    assert unet.config.in_channels == unet.config.out_channels == 1
    assert unet.config.num_class_embeds == 11
    assert tuple(unet.config.block_out_channels) == (32, 64, 64)


@pytest.mark.parametrize("num_classes", [1, 3, 10])
def test_class_table_has_a_null_row(num_classes):
    unet = build_unet(**{**SMALL_28, "num_classes": num_classes})
    assert unet.config.num_class_embeds == num_classes + 1
    assert unet.class_embedding.num_embeddings == num_classes + 1
    assert num_classes_of(unet) == num_classes


def test_unconditional_unet_has_no_class_table():
    unet = build_unet(**{**SMALL_28, "num_classes": None})
    assert unet.config.num_class_embeds is None
    assert unet.class_embedding is None
    assert num_classes_of(unet) is None


@pytest.mark.parametrize("num_classes", [0, -1])
def test_bad_num_classes_raises(num_classes):
    with pytest.raises(ValueError, match=r">= 1 or None"):
        build_unet(**{**SMALL_28, "num_classes": num_classes})


def test_null_class_changes_the_output_and_is_the_last_valid_id():
    unet = seeded_unet()
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    with torch.no_grad():
        outs = [unet(x, t, class_labels=torch.tensor([c])).sample for c in range(NUM_CLASSES + 1)]
        with pytest.raises(IndexError):
            unet(x, t, class_labels=torch.tensor([NUM_CLASSES + 1]))
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not torch.allclose(outs[i], outs[j]), (i, j)


@pytest.mark.parametrize("levels,factor", [((8,), 1), ((8, 16), 2), ((8, 16, 16), 4),
                                           ((8, 8, 8, 8), 8)])
def test_downsample_factor(levels, factor):
    assert downsample_factor(levels) == factor


def test_build_unet_30x30_raises_naming_the_multiple():
    with pytest.raises(ValueError, match=r"multiple of 4") as err:
        build_unet(**{**SMALL_28, "sample_size": 30})
    assert "30" in str(err.value)


@pytest.mark.parametrize("height,width", [(30, 28), (28, 30), (0, 28), (-4, 28), (28.0, 28),
                                          ("28", 28)])
def test_check_image_size_rejects(height, width):
    with pytest.raises(ValueError, match=r"positive multiple of 4"):
        check_image_size(height, width, (8, 16, 16))


@pytest.mark.parametrize("height,width", [(28, 28), (4, 4), (32, 12)])
def test_check_image_size_accepts(height, width):
    assert check_image_size(height, width, (8, 16, 16)) is None


@pytest.mark.parametrize("levels", [(3,), (-1,), (0, 5)])
def test_bad_attention_level_raises(levels):
    with pytest.raises(ValueError, match=r"attention_levels must be in \[0, 2\]"):
        build_unet(**{**SMALL_28, "attention_levels": levels})


@pytest.mark.parametrize("groups", [3, 5, 32])
def test_bad_norm_groups_raise(groups):
    with pytest.raises(ValueError, match=rf"norm_num_groups={groups} must divide") as err:
        build_unet(**{**SMALL_28, "norm_num_groups": groups})
    assert "(8, 16, 16)" in str(err.value)


@pytest.mark.parametrize("channels,levels,head_dim,bad_level", [
    ((8, 16), (), 32, 1),          # mid block always attends: 16 channels / 32 per head = 0 heads
    ((8, 16, 48), (2,), 32, 2),    # 48 = 1.5 heads
    ((8, 12, 16), (1,), 8, 1),     # an attention level that the head dim does not divide
])
def test_attention_head_dim_must_divide_attended_channels(channels, levels, head_dim, bad_level):
    config = {**TINY_UNET, "block_out_channels": channels, "attention_levels": levels,
              "attention_head_dim": head_dim}
    with pytest.raises(ValueError, match=rf"attention_head_dim={head_dim} must divide.*"
                                         rf"level {bad_level} has {channels[bad_level]}"):
        build_unet(**config)


def test_every_unet_build_unet_accepts_runs_forward():
    """Configs next to the refused ones above build U-Nets whose forward runs."""
    for channels, levels, head_dim in [((8, 16), (), 8), ((8, 16), (), 16), ((8, 16), (0, 1), 8),
                                       ((8, 16, 48), (2,), 16)]:
        unet = build_unet(**{**TINY_UNET, "block_out_channels": channels,
                             "attention_levels": levels, "attention_head_dim": head_dim})
        with torch.no_grad():
            out = unet(torch.zeros(1, 1, 8, 8), torch.tensor([1]),
                       class_labels=torch.tensor([0])).sample
        assert out.shape == (1, 1, 8, 8) and torch.isfinite(out).all(), (channels, levels, head_dim)


def test_seeded_tiny_unet_matches_reference_values():
    """Known values of the tiny seeded U-Net (diffusers' init order; refresh if it changes)."""
    unet = seeded_unet()
    x = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    with torch.no_grad():
        out = unet(x, torch.tensor([250]), class_labels=torch.tensor([1])).sample
    assert out.shape == (1, 1, 8, 8)
    torch.testing.assert_close(out.sum(), torch.tensor(REF_SUM), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[0, 0, 0, :4], torch.tensor(REF_ROW), atol=1e-5, rtol=1e-4)
    # Same seed -> same weights; another seed -> different weights.
    assert all(torch.equal(a, b) for a, b in zip(unet.parameters(), seeded_unet().parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(unet.parameters(),
                                                     seeded_unet(seed=1).parameters()))


REF_SUM = 13.458761
REF_ROW = [-0.40279853, -0.45558566, -0.02222280, -0.18320444]
