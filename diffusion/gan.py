"""GAN baseline: a conditional DCGAN-style generator, a spectral-normalised projection
discriminator, and the GAN pipeline (one network evaluation per image, NFE = 1).

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
    >>> from diffusion.gan import ConditionalGenerator, ProjectionDiscriminator, GANPipeline
    >>> g = ConditionalGenerator(latent_dim=16, num_classes=10, channels=(32, 16)).eval()
    >>> d = ProjectionDiscriminator(num_classes=10, channels=(16, 32))
    >>> x = g(torch.randn(4, 16), torch.tensor([0, 1, 2, 3]))
    >>> x.shape, d(x, torch.tensor([0, 1, 2, 3])).shape
    (torch.Size([4, 1, 28, 28]), torch.Size([4]))
    >>> pipe = GANPipeline(generator_model=g)
    >>> out = pipe(class_labels=[7], num_images_per_prompt=2, output_type="pt",
    ...            generator=[torch.Generator().manual_seed(i) for i in range(2)])
    >>> out.images.shape, out.nfe
    (torch.Size([2, 1, 28, 28]), 1)
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from diffusion.pipeline import (DiffusionImagePipeline, GenerationOutput, check_class_inputs,
                                check_generators_and_latents, to_output)

#: smallest latent truncation threshold accepted (rejection resampling needs ~1 / P(|z| < t)
#: rounds: about 125 at t = 0.01)
MIN_TRUNCATION = 0.01


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


def draw_latents(batch: int, latent_dim: int, generator=None, truncation: Optional[float] = None,
                 device=None, dtype=torch.float32) -> torch.Tensor:
    """``z ~ N(0, I)`` float ``(batch, latent_dim)``; with ``truncation=t`` every component with
    ``|z_i| > t`` is redrawn until none is (the truncation trick of Brock et al. 2019, sec. 3.1,
    i.e. a normal truncated to ``[-t, t]``). Components already inside keep their value, so the
    truncated latent of a seed equals the untruncated one wherever ``|z_i| <= t``.

    ``generator``: ``None``, one ``torch.Generator``, or a list of ``batch`` generators (row ``i``
    drawn from generator ``i`` only, so an image does not depend on its batch). Draws happen on
    each generator's device (CPU if ``None``) and move to ``device``.
    """
    gens = generator if isinstance(generator, list) else [generator]
    rows = [batch] if not isinstance(generator, list) else [1] * batch
    parts = []
    for g, n in zip(gens, rows):
        where = g.device if g is not None else "cpu"
        z = torch.randn(n, latent_dim, generator=g, device=where)
        if truncation is not None:
            outside = z.abs() > truncation
            while outside.any():
                z[outside] = torch.randn(int(outside.sum()), generator=g, device=where)
                outside = z.abs() > truncation
        parts.append(z)
    return torch.cat(parts).to(device=device, dtype=dtype)


class GANPipeline(DiffusionPipeline):
    """Class-conditional GAN sampling: ``x = G(z, y)`` with one generator forward (NFE = 1).

    Components: ``generator_model`` (:class:`ConditionalGenerator`; named so because ``generator``
    is the call's random-generator argument) and config ``class_names``.
    """

    model_cpu_offload_seq = "generator_model"
    class_id = DiffusionImagePipeline.class_id  # id or (case-insensitive) name -> id

    def __init__(self, generator_model: ConditionalGenerator, class_names: Optional[List[str]] = None):
        super().__init__()
        self.register_modules(generator_model=generator_model)
        n = generator_model.config.num_classes
        if class_names is not None and n is not None and len(class_names) != n:
            raise ValueError(f"class_names has {len(class_names)} names for {n} classes")
        self.register_to_config(class_names=list(class_names) if class_names else None)

    @property
    def num_classes(self) -> Optional[int]:
        """Number of classes (``None`` for an unconditional generator)."""
        return self.generator_model.config.num_classes

    def check_inputs(self, class_labels, prompt, num_images_per_prompt, generator, latents,
                     truncation, output_type) -> Optional[torch.Tensor]:
        """Validate every argument before any model work; return labels per image (or None).

        Raises:
            ValueError: with the value given and what is allowed.
        """
        labels, batch = check_class_inputs(class_labels, prompt, num_images_per_prompt, output_type,
                                           self.num_classes)
        if truncation is not None:
            if isinstance(truncation, bool) or not isinstance(truncation, (int, float)) \
                    or not np.isfinite(truncation) or truncation < MIN_TRUNCATION:
                raise ValueError(f"truncation must be None or a finite number >= {MIN_TRUNCATION}, "
                                 f"got {truncation!r}")
            if latents is not None:
                raise ValueError("truncation applies to drawn latents: pass latents or truncation, "
                                 "not both")
        check_generators_and_latents(generator, latents, batch,
                                     (batch, self.generator_model.config.latent_dim))
        return labels

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Union[int, Sequence[int], torch.Tensor, None] = None,
        prompt: Union[str, List[str], None] = None,
        num_images_per_prompt: int = 1,
        generator: Union[torch.Generator, List[torch.Generator], None] = None,
        latents: Optional[torch.Tensor] = None,
        truncation: Optional[float] = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Generate images with one generator forward.

        Args:
            class_labels: int, list of ints or 1-D int tensor in ``[0, num_classes)``; required for
                a class-conditional generator, ``None`` for an unconditional one.
            prompt: not supported (raises).
            num_images_per_prompt: images per label; labels are repeated in place
                (``[a, b]`` with 2 gives ``[a, a, b, b]``).
            generator: one ``torch.Generator``, or a list with one per image: then each image
                depends only on its own generator, not on the batch it sits in.
            latents: float ``(B, latent_dim)`` latents; drawn from ``generator`` if ``None``.
            truncation: ``None`` (no truncation) or threshold ``t >= 0.01``: latent components
                with ``|z_i| > t`` are resampled (Brock et al. 2019, sec. 3.1; see
                :func:`draw_latents`). Smaller ``t``: less variety, typically higher fidelity.
            output_type: ``"pil"``, ``"np"`` (uint8 NHWC) or ``"pt"`` (float NCHW in [0, 1]).

        Returns:
            :class:`GenerationOutput` (``images``, ``nfe=1``), or ``(images,)`` if not ``return_dict``.

        Raises:
            ValueError: invalid argument (before any network work).
        """
        labels = self.check_inputs(class_labels, prompt, num_images_per_prompt, generator, latents,
                                   truncation, output_type)
        g_model = self.generator_model
        device, dtype = self._execution_device, g_model.dtype
        batch = num_images_per_prompt if labels is None else len(labels)
        if latents is None:
            latents = draw_latents(batch, g_model.config.latent_dim, generator, truncation)
        latents = latents.to(device=device, dtype=dtype)
        # Eval mode (BatchNorm running statistics) so an image does not depend on its batch.
        was_training = g_model.training
        g_model.eval()
        try:
            images = g_model(latents, None if labels is None else labels.to(device))
        finally:
            g_model.train(was_training)
        images = to_output(images, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return GenerationOutput(images=images, nfe=1)

