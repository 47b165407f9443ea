"""The GAN pipeline: ``x = G(z, y)``, one generator forward per image (NFE = 1), with the shared
call signature (plus ``latents`` and ``truncation``).

Example::

    >>> import torch
    >>> from diffusion.models.gan import ConditionalGenerator
    >>> from diffusion.pipelines.gan import GANPipeline
    >>> g = ConditionalGenerator(latent_dim=16, num_classes=10, channels=(32, 16)).eval()
    >>> pipe = GANPipeline(generator_model=g)
    >>> out = pipe(class_labels=[7], num_images_per_prompt=2, output_type="pt",
    ...            generator=[torch.Generator().manual_seed(i) for i in range(2)])
    >>> out.images.shape, out.nfe
    (torch.Size([2, 1, 28, 28]), 1)
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

from diffusion.models.gan import ConditionalGenerator
from diffusion.pipelines.base import (ImagePipeline, check_class_inputs, check_class_names,
                                      check_generators_and_latents, eval_mode)
from diffusion.precision import check_precision, network_autocast
from samplers.checks import check_number

#: where a GAN's non-finite images come from (named by NonFiniteImagesError)
NONFINITE_STAGE = "the generator forward (a GAN has no sampler: one forward makes the images)"

#: smallest latent truncation threshold accepted (rejection resampling needs ~1 / P(|z| < t)
#: rounds: about 125 at t = 0.01)
MIN_TRUNCATION = 0.01


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


class GANPipeline(ImagePipeline):
    """Class-conditional GAN sampling: ``x = G(z, y)`` with one generator forward (NFE = 1).

    Components: ``generator_model`` (:class:`ConditionalGenerator`; named so because ``generator``
    is the call's random-generator argument) and config ``class_names``.
    """

    model_cpu_offload_seq = "generator_model"
    _network_names = ("generator_model",)

    def __init__(self, generator_model: ConditionalGenerator, class_names: Optional[List[str]] = None,
                 precision: Optional[str] = None):
        super().__init__()
        self.register_modules(generator_model=generator_model)
        self.register_to_config(class_names=check_class_names(class_names,
                                                              generator_model.config.num_classes))
        if precision is not None:  # absent = "auto"; folders saved without it load unchanged
            self.set_precision(precision)

    @property
    def num_classes(self) -> Optional[int]:
        """Number of classes (``None`` for an unconditional generator)."""
        return self.generator_model.config.num_classes

    def check_inputs(self, class_labels, prompt, num_images_per_prompt, generator, latents,
                     truncation, output_type, on_nonfinite="raise", return_dict=True
                     ) -> Optional[torch.Tensor]:
        """Validate every argument before any model work; return labels per image (or None).

        Raises:
            ValueError: with the value given and what is allowed.
        """
        labels, batch = check_class_inputs(class_labels, prompt, num_images_per_prompt, output_type,
                                           self.num_classes, on_nonfinite, return_dict,
                                           self.config.class_names)
        check_number("truncation", truncation, low=MIN_TRUNCATION, allow_none=True)
        if truncation is not None and latents is not None:
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
        on_nonfinite: str = "raise",
        precision: Optional[str] = None,
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
            on_nonfinite: ``"raise"`` (default): images holding NaN or inf raise
                :class:`~diffusion.pipelines.base.NonFiniteImagesError`; ``"flag"``: return them,
                their indices in ``nonfinite`` (``"pt"`` keeps NaN, ``"np"`` / ``"pil"`` show it as
                0; needs ``return_dict=True``).
            precision: ``"auto"``, ``"bf16"`` or ``"fp32"``: the generator forward runs under bf16 autocast or
                in float32; the images are float32 either way. ``None``: the saved default
                (:meth:`~diffusion.pipelines.base.ImagePipeline.set_precision`), else ``"auto"``
                (bf16 where the device has native bf16; :mod:`diffusion.precision`).

        Returns:
            :class:`~diffusion.pipelines.base.GenerationOutput` (``images``, ``nfe=1``), or ``(images,)`` if not ``return_dict``.

        Raises:
            ValueError: invalid argument (before any network work).
            NonFiniteImagesError: some image holds NaN or inf (with ``on_nonfinite="raise"``); the
                message names the generator forward and the affected images of the batch.
        """
        labels = self.check_inputs(class_labels, prompt, num_images_per_prompt, generator, latents,
                                   truncation, output_type, on_nonfinite, return_dict)
        if precision is not None:
            check_precision(precision)
        g_model = self.generator_model
        device, dtype = self._execution_device, g_model.dtype
        batch = num_images_per_prompt if labels is None else len(labels)
        if latents is None:
            latents = draw_latents(batch, g_model.config.latent_dim, generator, truncation)
        latents = latents.to(device=device, dtype=dtype)
        with eval_mode(g_model):  # BatchNorm running statistics: an image does not depend on its batch
            with network_autocast(self.network_dtype(precision), device):
                images = g_model(latents, None if labels is None else labels.to(device))
            images = images.to(dtype)  # float32 images whatever the autocast
        return self.finish(images, output_type, nfe=1, return_dict=return_dict,
                           on_nonfinite=on_nonfinite, stage=NONFINITE_STAGE,
                           hint="Check the latents and the generator weights for NaN/inf")

