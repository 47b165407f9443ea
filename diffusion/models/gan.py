"""GAN baseline networks: a conditional DCGAN-style generator and a spectral-normalised projection
discriminator (the pipeline, one network evaluation per image, NFE = 1, is
:mod:`diffusion.pipelines.gan`).

Design for 28x28 (native, no resizing or padding to 32/64): the generator maps ``z`` through a
linear layer to a ``(channels[0], 7, 7)`` map, then ``len(channels)`` stages each double the
resolution (7 -> 14 -> 28) with nearest-neighbour upsampling + 3x3 convolutions (upsample + conv
avoids the checkerboard artefacts of transposed convolutions, Odena et al. 2016). The class enters
through conditional batch normalisation in every stage (per-class gain and bias; Miyato & Koyama
2018, sec. 4; de Vries et al. 2017). The output is ``tanh`` in [-1, 1]. Any ``image_size``
divisible by ``2 ** len(channels)`` works (32 with three stages starts at 4x4).

The discriminator follows the SNGAN "standard CNN" (Miyato et al. 2018, Table 3): spectral
normalisation on every weight, LeakyReLU(0.1), strided 4x4 convolutions halving the resolution,
global *sum* pooling to ``phi(x)``, and the projection head of Miyato & Koyama 2018 (eq. 3)::

    D(x, y) = psi(phi(x)) + <embed(y), phi(x)>

Example::

    >>> import torch
    >>> from diffusion.models.gan import ConditionalGenerator, ProjectionDiscriminator
    >>> g = ConditionalGenerator(latent_dim=16, num_classes=10, channels=(32, 16)).eval()
    >>> d = ProjectionDiscriminator(num_classes=10, channels=(16, 32))
    >>> x = g(torch.randn(4, 16), torch.tensor([0, 1, 2, 3]))
    >>> x.shape, d(x, torch.tensor([0, 1, 2, 3])).shape
    (torch.Size([4, 1, 28, 28]), torch.Size([4]))
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

def _check_stages(image_size: int, channels: Sequence[int], layers_per_block: int) -> int:
    """The start resolution ``image_size / 2**len(channels)``; raises ``ValueError`` if not whole."""
    if not channels or any(int(c) < 1 for c in channels):
        raise ValueError(f"channels must be a non-empty sequence of ints >= 1, got {channels!r}")
    if layers_per_block < 1:
        raise ValueError(f"layers_per_block must be >= 1, got {layers_per_block}")
    factor = 2 ** len(channels)
    if image_size % factor or image_size < factor:
        raise ValueError(f"image_size {image_size} is not divisible by 2**len(channels) = {factor}")
    return image_size // factor


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine, then a per-class gain and bias (de Vries et al. 2017):
    ``y = gamma[c] * BN(x) + beta[c]`` with ``gamma`` initialised to 1 and ``beta`` to 0. With
    ``num_classes=None`` it is a plain affine BatchNorm."""

    def __init__(self, channels: int, num_classes: Optional[int]):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=num_classes is None)
        self.gamma = self.beta = None
        if num_classes is not None:
            self.gamma = nn.Embedding(num_classes, channels)
            self.beta = nn.Embedding(num_classes, channels)
            nn.init.ones_(self.gamma.weight)
            nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, class_labels: Optional[torch.Tensor]) -> torch.Tensor:
        h = self.bn(x)
        if self.gamma is None:
            return h
        return h * self.gamma(class_labels)[:, :, None, None] + self.beta(class_labels)[:, :, None, None]


class ConditionalGenerator(ModelMixin, ConfigMixin):
    """``G(z, y)``: latent ``z`` (float ``(B, latent_dim)``, N(0, I)) and class ids ``y`` (int64
    ``(B,)`` in ``[0, num_classes)``, or ``None`` if ``num_classes`` is ``None``) -> images float
    ``(B, out_channels, image_size, image_size)`` in [-1, 1].

    Stage ``i`` (of ``len(channels)``) at resolution ``s0 * 2**i``: CBN-ReLU-upsample x2-conv3x3
    to ``channels[i]``, then ``layers_per_block - 1`` more CBN-ReLU-conv3x3; the linear stem
    outputs ``channels[0]`` maps of ``s0 x s0`` with ``s0 = image_size / 2**len(channels)`` (7 for
    28x28 with two stages). A final BN-ReLU-conv3x3-tanh gives the image.

    Raises:
        ValueError: ``image_size`` not divisible by ``2**len(channels)``, or bad sizes.
    """

    @register_to_config
    def __init__(self, latent_dim: int = 64, num_classes: Optional[int] = 10, out_channels: int = 1,
                 image_size: int = 28, channels: Sequence[int] = (128, 64), layers_per_block: int = 1):
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.start_size = s0 = _check_stages(image_size, channels, layers_per_block)
        channels = [int(c) for c in channels]
        self.stem = nn.Linear(latent_dim, channels[0] * s0 * s0)
        self.norms, self.convs = nn.ModuleList(), nn.ModuleList()
        c_in = channels[0]
        for c_out in channels:
            for j in range(layers_per_block):
                self.norms.append(ConditionalBatchNorm2d(c_in, num_classes))
                self.convs.append(nn.Conv2d(c_in, c_out, 3, padding=1))
                c_in = c_out
        self.out_norm = nn.BatchNorm2d(c_in)
        self.out_conv = nn.Conv2d(c_in, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        cfg = self.config
        if (cfg.num_classes is None) != (class_labels is None):
            raise ValueError("class_labels must be given exactly when num_classes is set "
                             f"(num_classes={cfg.num_classes})")
        h = self.stem(z).view(z.shape[0], -1, self.start_size, self.start_size)  # (B, C0, s0, s0)
        for i, (norm, conv) in enumerate(zip(self.norms, self.convs)):
            h = F.relu(norm(h, class_labels))
            if i % cfg.layers_per_block == 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")  # first conv of a stage
            h = conv(h)
        return torch.tanh(self.out_conv(F.relu(self.out_norm(h))))


class ProjectionDiscriminator(ModelMixin, ConfigMixin):
    """``D(x, y)``: images float ``(B, in_channels, H, W)`` in [-1, 1] and class ids int64
    ``(B,)`` (``None`` when ``num_classes`` is ``None``) -> logits float ``(B,)``.

    ``D(x, y) = psi(phi(x)) + <embed(y), phi(x)>`` (Miyato & Koyama 2018, eq. 3), ``phi`` the
    globally sum-pooled features ``(B, channels[-1])`` (:meth:`features`). Every conv, the linear
    ``psi`` and the class embedding are spectrally normalised (Miyato et al. 2018) with
    ``torch.nn.utils.parametrizations.spectral_norm``: one power iteration per forward in training
    mode, so ``sigma_max`` of each (reshaped ``(out, in * k * k)``) weight stays ~1.

    Layers: conv3x3 to ``channels[0]``; per stage a 4x4 stride-2 conv to ``channels[i]`` (28 -> 14
    -> 7) and ``layers_per_block`` conv3x3; LeakyReLU(0.1) after each.
    """

    @register_to_config
    def __init__(self, in_channels: int = 1, num_classes: Optional[int] = 10, image_size: int = 28,
                 channels: Sequence[int] = (64, 128), layers_per_block: int = 1):
        super().__init__()
        _check_stages(image_size, channels, layers_per_block)
        channels = [int(c) for c in channels]
        layers = [spectral_norm(nn.Conv2d(in_channels, channels[0], 3, padding=1))]
        c_in = channels[0]
        for c_out in channels:
            layers.append(spectral_norm(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)))
            layers += [spectral_norm(nn.Conv2d(c_out, c_out, 3, padding=1))
                       for _ in range(layers_per_block)]
            c_in = c_out
        self.convs = nn.ModuleList(layers)
        self.linear = spectral_norm(nn.Linear(c_in, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, c_in)) if num_classes is not None else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``phi(x)``: float ``(B, channels[-1])``, sum over positions of the last activations."""
        h = x
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.1)
        return h.sum(dim=(2, 3))

    def forward(self, x: torch.Tensor, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if (self.embed is None) != (class_labels is None):
            raise ValueError("class_labels must be given exactly when num_classes is set "
                             f"(num_classes={self.config.num_classes})")
        phi = self.features(x)                                    # (B, C)
        out = self.linear(phi).squeeze(1)                         # psi(phi): (B,)
        if self.embed is not None:
            out = out + (self.embed(class_labels) * phi).sum(dim=1)  # projection <e_y, phi>
        return out
