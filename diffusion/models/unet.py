"""U-Net noise predictors: builders over diffusers' ``UNet2DModel`` / ``UNet2DConditionModel``.

Class conditioning uses diffusers' class-embedding table with ``num_classes + 1`` rows: ids
``0 .. num_classes - 1`` are the classes, id ``num_classes`` is the *null* class used for
classifier-free guidance (Ho & Salimans 2022). The embedding is added to the timestep embedding.

Text conditioning (``cross_attention_dim`` set) builds a ``UNet2DConditionModel`` whose attention
levels and mid block are transformer blocks with self- and cross-attention over the text
encoder's per-token hidden states ``(B, L, cross_attention_dim)`` (Rombach et al. 2022, LDM eq. 3);
it may carry the class table as well, so one U-Net can take class labels and/or text.

Example::

    >>> from diffusion.models.unet import build_unet
    >>> unet = build_unet(sample_size=28, in_channels=1, num_classes=10)
    >>> unet.config.num_class_embeds
    11
    >>> text_unet = build_unet(sample_size=8, block_out_channels=(8, 16), attention_levels=(1,),
    ...                        norm_num_groups=4, attention_head_dim=8, num_classes=None,
    ...                        cross_attention_dim=32)
    >>> type(text_unet).__name__, text_unet.config.cross_attention_dim
    ('UNet2DConditionModel', 32)
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from diffusers import UNet2DConditionModel, UNet2DModel

from samplers.checks import check_int


def downsample_factor(block_out_channels: Sequence[int]) -> int:
    """How much the U-Net shrinks its input: 2 per block but the last (diffusers' layout)."""
    return 2 ** (len(block_out_channels) - 1)


def check_image_size(height: int, width: int, block_out_channels: Sequence[int]) -> None:
    """Raise ``ValueError`` unless ``height`` and ``width`` are positive multiples of the U-Net's
    downsampling factor (e.g. 4 for three levels: 28 works, 30 does not)."""
    factor = downsample_factor(block_out_channels)
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or v <= 0 or v % factor:
            raise ValueError(f"image {name} must be a positive multiple of {factor} for a U-Net "
                             f"with {len(block_out_channels)} levels, got {v!r}")


def build_unet(
    sample_size: int = 28,
    in_channels: int = 1,
    num_classes: Optional[int] = 10,
    block_out_channels: Sequence[int] = (32, 64, 64),
    layers_per_block: int = 2,
    attention_levels: Sequence[int] = (2,),
    attention_head_dim: int = 32,
    norm_num_groups: int = 16,
    dropout: float = 0.0,
    cross_attention_dim: Optional[int] = None,
) -> Union[UNet2DModel, UNet2DConditionModel]:
    """Build a class-conditional (or unconditional, ``num_classes=None``) ``UNet2DModel``, or with
    ``cross_attention_dim`` a text-conditional ``UNet2DConditionModel``.

    Args:
        sample_size: image side in pixels; must be a multiple of ``2 ** (levels - 1)``.
        in_channels: image channels (1 grayscale, 3 RGB); output has the same count.
        num_classes: number of real classes; the table gets one more row for the null class.
        block_out_channels: channels per resolution level (level 0 = full resolution).
        layers_per_block: ResNet blocks per level.
        attention_levels: indices of levels that get self-attention (low resolutions are cheap).
        attention_head_dim: channels per attention head.
        norm_num_groups: GroupNorm groups; must divide every entry of ``block_out_channels``.
        dropout: dropout inside ResNet blocks.
        cross_attention_dim: ``None`` (default) builds a ``UNet2DModel`` with self-attention at
            ``attention_levels``. An int D builds a ``UNet2DConditionModel``: levels in
            ``attention_levels`` become ``CrossAttnDownBlock2D`` / ``CrossAttnUpBlock2D`` and the
            mid block ``UNetMidBlock2DCrossAttn`` (self- + cross-attention over D-wide text
            states; D must equal the text encoder's hidden size, e.g. 384 for MiniLM). With
            ``num_classes`` as well it takes class labels too (same ``num_classes + 1`` table);
            forward: ``unet(x_t, t, encoder_hidden_states=(B, L, D),
            encoder_attention_mask=(B, L), class_labels=(B,) or None)``.

    Raises:
        ValueError: bad sizes, levels or group counts (message names the allowed values).
    """
    block_out_channels = tuple(int(c) for c in block_out_channels)
    check_image_size(sample_size, sample_size, block_out_channels)
    levels = len(block_out_channels)
    bad = [i for i in attention_levels if not 0 <= i < levels]
    if bad:
        raise ValueError(f"attention_levels must be in [0, {levels - 1}], got {list(attention_levels)}")
    if any(c % norm_num_groups for c in block_out_channels):
        raise ValueError(f"norm_num_groups={norm_num_groups} must divide every block_out_channels "
                         f"entry {block_out_channels}")
    # The mid block always has attention on the last level's channels; heads = channels // dim.
    for i in sorted(set(attention_levels) | {levels - 1}):
        if block_out_channels[i] % attention_head_dim:
            raise ValueError(f"attention_head_dim={attention_head_dim} must divide the channels of "
                             f"every attention level and of the mid block; level {i} has "
                             f"{block_out_channels[i]}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 or None, got {num_classes}")
    if cross_attention_dim is not None:
        cross_attention_dim = check_int("cross_attention_dim", cross_attention_dim,
                                        hint=" (the text encoder's hidden size) or None")
        return _build_cross_attention_unet(
            sample_size, in_channels, num_classes, block_out_channels, layers_per_block,
            attention_levels, attention_head_dim, norm_num_groups, dropout, cross_attention_dim)
    down = tuple("AttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in range(levels))
    return UNet2DModel(**_common_unet_config(sample_size, in_channels, num_classes, block_out_channels,
                                             layers_per_block, norm_num_groups, dropout, down),
                       attention_head_dim=attention_head_dim)


def _common_unet_config(sample_size, in_channels, num_classes, block_out_channels, layers_per_block,
                        norm_num_groups, dropout, down_block_types) -> dict:
    """The config both U-Net classes share: sizes, blocks (up blocks mirror ``down_block_types``)
    and the class table of ``num_classes + 1`` rows (the last one the null class)."""
    return dict(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        down_block_types=down_block_types,
        up_block_types=tuple(b.replace("Down", "Up") for b in reversed(down_block_types)),
        norm_num_groups=norm_num_groups,
        dropout=dropout,
        num_class_embeds=None if num_classes is None else num_classes + 1,
    )


def _build_cross_attention_unet(sample_size, in_channels, num_classes, block_out_channels,
                                layers_per_block, attention_levels, attention_head_dim,
                                norm_num_groups, dropout, cross_attention_dim
                                ) -> UNet2DConditionModel:
    """The ``UNet2DConditionModel`` of :func:`build_unet` (arguments already validated).

    diffusers' ``UNet2DConditionModel`` reads its ``attention_head_dim`` as the number of heads
    per level (a naming quirk kept for old configs, diffusers issue #2011); we keep
    ``attention_head_dim`` = channels per head, as for ``UNet2DModel``, and pass
    ``channels // attention_head_dim`` heads per level.
    """
    levels = len(block_out_channels)
    down = tuple("CrossAttnDownBlock2D" if i in attention_levels else "DownBlock2D"
                 for i in range(levels))
    heads = tuple(max(1, c // attention_head_dim) for c in block_out_channels)
    return UNet2DConditionModel(
        **_common_unet_config(sample_size, in_channels, num_classes, block_out_channels,
                              layers_per_block, norm_num_groups, dropout, down),
        mid_block_type="UNetMidBlock2DCrossAttn", attention_head_dim=heads,
        cross_attention_dim=cross_attention_dim)


def cross_attention_dim_of(unet) -> Optional[int]:
    """Width D of the text states a U-Net's cross-attention reads (``None``: no cross-attention,
    e.g. a ``UNet2DModel``)."""
    return getattr(unet.config, "cross_attention_dim", None)


def num_classes_of(unet) -> Optional[int]:
    """Real classes of a U-Net built by :func:`build_unet` (``None`` if it has no class table);
    works for ``UNet2DModel`` and ``UNet2DConditionModel``."""
    n = getattr(unet.config, "num_class_embeds", None)
    return None if n is None else n - 1
