"""The autoregressive baseline's pipeline: VQ-VAE tokens drawn by a transformer prior, decoded to pixels.

Stage 2 of the VQ-VAE + prior family: :class:`diffusion.models.prior.TransformerPrior` draws the
raster-ordered token grid given a class prefix token, :class:`diffusion.models.vqvae.VQVAE` decodes
it. Decoding (greedy, temperature, top-k, top-p, beam search, classifier-free guidance on the
logits) is :func:`samplers.decoding.decode`, shared with any token model.

Example::

    >>> import torch
    >>> from diffusion.models.prior import TransformerPrior
    >>> from diffusion.models.vqvae import VQVAE
    >>> from diffusion.pipelines.autoregressive import AutoregressivePipeline
    >>> vq = VQVAE(codebook_size=16, codebook_dim=8, channels=(8, 8)).eval()
    >>> prior = TransformerPrior(vocab_size=16, num_positions=49, num_classes=10, d_model=32,
    ...                          num_layers=1, num_heads=2).eval()
    >>> pipe = AutoregressivePipeline(vqvae=vq, prior=prior)
    >>> out = pipe(class_labels=[3, 4], output_type="pt", top_k=5,
    ...            generator=[torch.Generator().manual_seed(i) for i in range(2)])
    >>> out.images.shape, out.nfe                                     # 49 prior calls with the cache
    (torch.Size([2, 1, 28, 28]), 49)
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

from diffusion.models.prior import TransformerPrior
from diffusion.models.vqvae import VQVAE
from diffusion.pipelines.base import (ImagePipeline, check_class_inputs, check_class_names,
                                      check_generators_and_latents, eval_mode)
from diffusion.precision import check_precision, network_autocast
from samplers.checks import check_number
from samplers.decoding import decode

#: where the family's non-finite images come from (named by NonFiniteImagesError): token ids are
#: integers, so only the decoder can make NaN/inf
NONFINITE_STAGE = "the VQ-VAE decode (no sampler: the prior's tokens are decoded in one pass)"

#: decoding settings of a pipeline without a saved ``decoding`` config (plain ancestral sampling)
DEFAULT_DECODING = {"temperature": 1.0, "top_k": None, "top_p": None, "guidance_scale": 1.0}


class AutoregressivePipeline(ImagePipeline):
    """Class-conditional image generation with a VQ-VAE and a transformer prior over its tokens.

    Components: ``vqvae`` (:class:`diffusion.models.vqvae.VQVAE`) and ``prior``
    (:class:`diffusion.models.prior.TransformerPrior`); config ``class_names`` and ``decoding``: the decoding settings a
    call uses where it passes ``None`` (saved with the model, so a shipped model carries the setting
    its card reports; unset keys fall back to :data:`DEFAULT_DECODING`). The prior draws the token grid with
    :func:`samplers.decoding.decode`; the VQ-VAE decoder maps it to pixels. ``nfe`` counts prior
    forwards (``num_positions`` with the cache; a guided step's conditional and null rows share one
    forward); the single decoder pass is not counted.
    """

    model_cpu_offload_seq = "prior->vqvae"
    _network_names = ("prior",)

    def __init__(self, vqvae: VQVAE, prior: TransformerPrior, class_names: Optional[List[str]] = None,
                 decoding: Optional[dict] = None, precision: Optional[str] = None):
        super().__init__()
        if prior.config.vocab_size != vqvae.config.codebook_size:
            raise ValueError(f"prior.vocab_size ({prior.config.vocab_size}) must equal the "
                             f"VQ-VAE's codebook_size ({vqvae.config.codebook_size})")
        if prior.config.num_positions != vqvae.num_tokens:
            raise ValueError(f"prior.num_positions ({prior.config.num_positions}) must equal the "
                             f"VQ-VAE's tokens per image ({vqvae.num_tokens})")
        self.register_modules(vqvae=vqvae, prior=prior)
        unknown = set(decoding or {}) - set(DEFAULT_DECODING)
        if unknown:
            raise ValueError(f"decoding may set {sorted(DEFAULT_DECODING)}, got {sorted(unknown)}")
        self.register_to_config(class_names=check_class_names(class_names, prior.config.num_classes),
                                decoding=dict(decoding) if decoding else None)
        if precision is not None:  # absent = "auto"; folders saved without it load unchanged
            self.set_precision(precision)

    def decoding_settings(self, **overrides) -> dict:
        """:data:`DEFAULT_DECODING`, updated by the saved ``decoding`` config, then by the
        ``overrides`` that are not ``None``."""
        settings = dict(DEFAULT_DECODING)
        settings.update(self.config.decoding or {})
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return settings

    @property
    def num_classes(self) -> Optional[int]:
        """Number of classes (``None`` for an unconditional prior)."""
        return self.prior.config.num_classes

    def check_inputs(self, class_labels, prompt, num_images_per_prompt, generator, temperature,
                     top_k, top_p, num_beams, guidance_scale, output_type, on_nonfinite="raise",
                     return_dict=True) -> Optional[torch.Tensor]:
        """Validate the pipeline's own arguments before any model work (the decoding arguments
        are checked again by :func:`samplers.decoding.decode`); return labels per image.

        Raises:
            ValueError: with the value given and what is allowed.
        """
        labels, batch = check_class_inputs(class_labels, prompt, num_images_per_prompt, output_type,
                                           self.num_classes, on_nonfinite, return_dict,
                                           self.config.class_names)
        check_number("guidance_scale", guidance_scale, low=0)
        if guidance_scale != 1 and self.num_classes is None:
            raise ValueError("guidance needs a class-conditional prior (guidance_scale=1 here)")
        check_generators_and_latents(generator, None, batch, ())
        return labels

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Union[int, Sequence[int], torch.Tensor, None] = None,
        prompt: Union[str, List[str], None] = None,
        num_images_per_prompt: int = 1,
        generator: Union[torch.Generator, List[torch.Generator], None] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        num_beams: int = 1,
        guidance_scale: Optional[float] = None,
        use_cache: bool = True,
        do_sample: bool = True,
        output_type: str = "pil",
        return_dict: bool = True,
        on_nonfinite: str = "raise",
        precision: Optional[str] = None,
    ):
        """Draw token grids from the prior and decode them to images.

        Args:
            class_labels: int, list of ints or 1-D int tensor in ``[0, num_classes)``; required for
                a class-conditional prior.
            prompt: not supported yet (raises).
            num_images_per_prompt: images per label (``[a, b]`` with 2 gives ``[a, a, b, b]``).
            generator: one ``torch.Generator``, or a list with one per image: then each image
                depends only on its own generator, not on the batch it sits in.
            temperature: softmax temperature (>= 0; 0 = greedy).
            top_k: keep the ``k`` most likely codes per step (Fan et al. 2018).
            top_p: nucleus sampling threshold in ``(0, 1]`` (Holtzman et al. 2020).
                ``temperature``, ``top_k``, ``top_p`` and ``guidance_scale`` left ``None`` take the
                saved ``decoding`` config (:meth:`decoding_settings`); ``top_k=0`` and
                ``top_p=1.0`` switch a saved filter off.
            num_beams: ``> 1``: beam search for the most likely grid (deterministic; sampling
                arguments ignored).
            guidance_scale: classifier-free guidance on the logits, ``l_null + s (l_cond - l_null)``
                (``1``: off, one forward per step; otherwise conditional and null rows in one
                doubled batch).
            use_cache: reuse keys/values of earlier tokens (same tokens, ~N times fewer FLOPs).
            do_sample: ``False``: greedy (argmax) decoding.
            output_type: ``"pil"``, ``"np"`` (uint8 NHWC) or ``"pt"`` (float NCHW in [0, 1]).
            on_nonfinite: ``"raise"`` (default): images holding NaN or inf raise
                :class:`~diffusion.pipelines.base.NonFiniteImagesError`; ``"flag"``: return them,
                their indices in ``nonfinite`` (``"pt"`` keeps NaN, ``"np"`` / ``"pil"`` show it as
                0; needs ``return_dict=True``).
            precision: ``"auto"``, ``"bf16"`` or ``"fp32"``: the prior forward and the VQ-VAE
                decoder run under bf16 autocast or in float32; logits are read, filtered and
                sampled in float32 and the images are float32 either way (the quantizer always
                runs in float32). ``None``: the saved default
                (:meth:`~diffusion.pipelines.base.ImagePipeline.set_precision`), else ``"auto"``
                (bf16 where the device has native bf16; :mod:`diffusion.precision`).

        Returns:
            :class:`~diffusion.pipelines.base.GenerationOutput` (``images``, ``nfe`` = prior forwards),
            or ``(images,)`` if not ``return_dict``.

        Raises:
            ValueError: invalid argument (before any network work).
            NonFiniteImagesError: some image holds NaN or inf (with ``on_nonfinite="raise"``); the
                message names the VQ-VAE decode and the affected images of the batch.
        """
        s = self.decoding_settings(temperature=temperature, top_k=top_k, top_p=top_p,
                                   guidance_scale=guidance_scale)
        temperature, guidance_scale = s["temperature"], s["guidance_scale"]
        top_k = None if s["top_k"] in (None, 0) else s["top_k"]
        top_p = None if s["top_p"] in (None, 1.0) else s["top_p"]
        labels = self.check_inputs(class_labels, prompt, num_images_per_prompt, generator,
                                   temperature, top_k, top_p, num_beams, guidance_scale, output_type,
                                   on_nonfinite, return_dict)
        if precision is not None:
            check_precision(precision)
        autocast_dtype = self.network_dtype(precision)
        batch = num_images_per_prompt if labels is None else len(labels)
        device = self._execution_device
        prefix = self.prior.prefix_ids(labels, batch).to(device)
        null_prefix = self.prior.null_prefix_ids(batch).to(device) if guidance_scale != 1 else None

        def prior(input_ids, past_key_values=None):  # only the forward autocasts
            with network_autocast(autocast_dtype, device):
                logits, past = self.prior(input_ids, past_key_values=past_key_values)
            return logits.float(), past                          # decode reads float32 logits

        with eval_mode(self.prior, self.vqvae):
            out = decode(prior, prefix, self.prior.config.num_positions, do_sample=do_sample,
                         temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams,
                         guidance_scale=guidance_scale, null_prefix=null_prefix,
                         generator=generator, use_cache=use_cache)
            with network_autocast(autocast_dtype, device):
                images = self.vqvae.decode_tokens(out.sequences)
            images = images.float()
        return self.finish(images, output_type, out.nfe, return_dict, on_nonfinite,
                           stage=NONFINITE_STAGE,
                           hint="Check the VQ-VAE codebook and decoder weights for NaN/inf")
