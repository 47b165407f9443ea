"""The family table of the shared pipeline contract: one tiny seeded pipeline per family shipped in
``diffusion/weights/``, described by data only, so ``test_family_contract.py`` runs every contract
test over every family with no per-family branch.

A :class:`Family` says how to build its tiny pipeline (CPU, milliseconds to build and call), which
call argument carries its conditions and which values it takes, its cheap family-specific call
arguments, the NFE such a call reports, its image shape and class table, the shipped folder it
stands for, and how to make chosen images of a call non-finite (with the stage the error names). What a family does not take (a prompt for a class family, class labels for a text
U-Net without a class table) follows from :attr:`Family.takes`; no test names a family.

Adding a family: add one entry to :data:`FAMILIES` (``test_every_shipped_family_is_in_the_table``
fails until a new shipped pipeline folder has one).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence, Tuple

import torch
from diffusers import DDPMScheduler, EDMEulerScheduler, FlowMatchEulerDiscreteScheduler

from conftest import make_text_pipe, seeded_unet
from diffusion.conditioning import load_tokenizer
from diffusion.models.gan import ConditionalGenerator
from diffusion.models.prior import TransformerPrior
from diffusion.models.vqvae import VQVAE
from diffusion.pipelines.autoregressive import AutoregressivePipeline
from diffusion.pipelines.base import ImagePipeline
from diffusion.pipelines.diffusion import DiffusionImagePipeline
from diffusion.pipelines.gan import GANPipeline

WEIGHTS = Path(__file__).resolve().parents[2] / "diffusion" / "weights"

#: the conditioning arguments of the shared call signature
CONDITION_ARGUMENTS = ("class_labels", "prompt")

#: a well-formed value for each conditioning argument (offered to families that do not take it)
WELL_FORMED = {"class_labels": [0], "prompt": "a shoe"}

CLASS_NAMES = ("T-shirt/top", "Trouser", "Bag")
PROMPTS = ("red apple", "a shoe", "grinning face")


@dataclass(frozen=True)
class Family:
    """One family of the pipeline contract (all fields are data; see the module docstring).

    ``condition`` is the argument that carries a call's conditions and ``values`` the distinct
    condition values the tests draw from (``conditions(k)`` cycles through them). ``takes`` lists
    every conditioning argument the family accepts; the others must be refused by name.
    ``num_classes`` / ``class_names``: what ``pipe.num_classes`` / ``pipe.config.class_names``
    must be (``None`` / ``()`` without a class table). ``nfe``: the ``nfe`` a call with
    ``call_kwargs`` reports. ``image_shape``: ``(C, H, W)`` of one image. ``shipped``: the folder in
    ``diffusion/weights/`` this tiny pipeline stands for (same pipeline and network classes).
    ``inject_nan(pipe, n, indices)``: makes images ``indices`` of a call of ``n`` images hold NaN,
    by returning call kwargs (e.g. ``latents``) and/or corrupting ``pipe``; ``nonfinite_stage``:
    the text the :class:`~diffusion.pipelines.base.NonFiniteImagesError` message must then hold
    (the sampler and step, or the network stage). ``batch_atol``: the batch-invariance tolerance
    on ``pt`` images (``None``: the suite's ``BATCH_ATOL``); set only where the sampler scales
    batched-kernel rounding by a known factor, and say why beside it.
    """

    name: str
    build: Callable[[], ImagePipeline]
    condition: str
    values: Tuple
    takes: frozenset
    call_kwargs: Mapping = field(default_factory=dict)
    nfe: int = 1
    image_shape: Tuple[int, int, int] = (1, 8, 8)
    num_classes: Optional[int] = None
    class_names: Tuple[str, ...] = ()
    shipped: str = ""
    inject_nan: Optional[Callable[[ImagePipeline, int, Sequence[int]], dict]] = None
    nonfinite_stage: str = ""
    batch_atol: Optional[float] = None

    def conditions(self, k: int) -> dict:
        """Conditioning kwargs for ``k`` conditions, e.g. ``{"class_labels": [0, 1]}``."""
        return {self.condition: [self.values[i % len(self.values)] for i in range(k)]}

    def foreign_conditions(self) -> dict:
        """A well-formed value for each conditioning argument this family does not take."""
        return {a: WELL_FORMED[a] for a in CONDITION_ARGUMENTS if a not in self.takes}

    def __call__(self, pipe: ImagePipeline, **kwargs):
        """``pipe(**call_kwargs, **kwargs)``."""
        return pipe(**{**self.call_kwargs, **kwargs})


def seeded(cls, seed: int = 0, **kwargs):
    """``cls(**kwargs)`` in eval mode with weights drawn from ``seed``, leaving the caller's global
    RNG untouched (as ``tests/conftest.py:seeded_unet``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**kwargs).eval()


def diffusion_pipe() -> DiffusionImagePipeline:
    """``tests/conftest.py``'s tiny class U-Net (3 classes, 1x8x8) on the v-prediction DDPM
    schedule of ``make_pipe`` (stochastic: step noise comes from the generators too)."""
    pipe = DiffusionImagePipeline(seeded_unet(), DDPMScheduler(prediction_type="v_prediction"),
                                  class_names=list(CLASS_NAMES))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flow_pipe() -> DiffusionImagePipeline:
    """The same tiny class U-Net as a flow-matching model: its saved training schedule a
    ``FlowMatchEulerDiscreteScheduler`` (shift 3), so it samples with flow-euler (deterministic)."""
    pipe = DiffusionImagePipeline(seeded_unet(), FlowMatchEulerDiscreteScheduler(shift=3.0),
                                  class_names=list(CLASS_NAMES))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def edm_pipe() -> DiffusionImagePipeline:
    """The same tiny class U-Net as an EDM model (Karras et al. 2022): its saved scheduler
    edm-heun with churn (S_churn 10) on an ``EDMEulerScheduler`` training schedule (sigma_max 40),
    so its calls draw churn noise from the generators too, and it round-trips our own scheduler
    class."""
    from samplers import build_sampler

    scheduler = build_sampler("edm-heun", EDMEulerScheduler(sigma_max=40.0), s_churn=10.0)
    pipe = DiffusionImagePipeline(seeded_unet(), scheduler, class_names=list(CLASS_NAMES))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@functools.lru_cache(maxsize=1)
def tokenizer():
    """The real MiniLM tokenizer (offline; loaded once, read-only in use)."""
    return load_tokenizer()


def text_pipe() -> DiffusionImagePipeline:
    """``tests/conftest.py``'s tiny text pipeline: cross-attention U-Net without a class table
    (1x8x8), the real MiniLM tokenizer and a tiny seeded BERT (hidden 32)."""
    return make_text_pipe(tokenizer())


def gan_pipe() -> GANPipeline:
    """A tiny seeded generator (16x16, latent 8, 3 classes; as ``tests/gan/test_gan.py``) whose
    BatchNorm running statistics are not the identity (three training-mode forwards)."""
    g = seeded(ConditionalGenerator, 0, latent_dim=8, num_classes=3, image_size=16,
               channels=(8, 4))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(1)
        g.train()
        for _ in range(3):
            g(torch.randn(16, 8), torch.randint(0, 3, (16,)))
        for norm in g.norms:  # per-class gain and bias away from their (1, 0) init: y matters
            norm.gamma.weight.add_(0.5 * torch.randn_like(norm.gamma.weight))
            norm.beta.weight.add_(0.5 * torch.randn_like(norm.beta.weight))
    pipe = GANPipeline(generator_model=g.eval(), class_names=list(CLASS_NAMES))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def autoregressive_pipe() -> AutoregressivePipeline:
    """A tiny seeded VQ-VAE (16x16 -> 4x4 tokens, 16 codes) and prior (1 layer, d_model 32; as
    ``tests/autoregressive/test_ar_pipeline.py``), plain ancestral sampling."""
    vq = seeded(VQVAE, 0, image_size=16, codebook_size=16, codebook_dim=8, channels=(8, 8),
                kmeans_init=False)
    prior = seeded(TransformerPrior, 1, vocab_size=16, num_positions=vq.num_tokens, num_classes=3,
                   d_model=32, num_layers=1, num_heads=2)
    with torch.no_grad():  # GPT-2's std-0.02 init: near-uniform logits that barely see the class
        prior.token_embedding.weight[prior.config.vocab_size:].mul_(50)  # class prefix rows: std 1
        prior.head.weight.mul_(20)                  # peakier logits; the seed still matters
    pipe = AutoregressivePipeline(vqvae=vq, prior=prior, class_names=list(CLASS_NAMES))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def nan_latents(shape: Tuple[int, ...], indices: Sequence[int]) -> torch.Tensor:
    """Seeded ``N(0, I)`` latents of ``shape`` with one NaN in each row of ``indices``."""
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    latents.view(shape[0], -1)[list(indices), 0] = float("nan")
    return latents


def nan_in_unet_latents(pipe, n: int, indices: Sequence[int]) -> dict:
    """``latents`` ``(n, C, S, S)`` of the U-Net's size with a NaN pixel in images ``indices``."""
    c = pipe.unet.config
    return {"latents": nan_latents((n, c.in_channels, c.sample_size, c.sample_size), indices)}


def nan_in_generator_latents(pipe, n: int, indices: Sequence[int]) -> dict:
    """GAN ``latents`` ``(n, latent_dim)`` with a NaN component in rows ``indices``."""
    return {"latents": nan_latents((n, pipe.generator_model.config.latent_dim), indices)}


def nan_from_vqvae_decoder(pipe, n: int, indices: Sequence[int]) -> dict:
    """A forward hook on the VQ-VAE decoder sets images ``indices`` of its output to NaN (as
    NaN weights in the decoder would); tokens are integers, so nothing earlier can be NaN."""
    rows = list(indices)

    def hook(_module, _args, output):
        output[rows] = float("nan")
        return output

    pipe.vqvae.decoder.register_forward_hook(hook)
    return {}


FAMILIES = [
    Family("diffusion", diffusion_pipe, "class_labels", (0, 1, 2), frozenset({"class_labels"}),
           call_kwargs={"num_inference_steps": 2}, nfe=2,   # guided: one batched forward a step
           num_classes=3, class_names=CLASS_NAMES, shipped="fashion-mnist-diffusion",
           inject_nan=nan_in_unet_latents,
           nonfinite_stage="sampler 'ddpm': first at denoising step 0 (of steps 0..1"),
    # A flow-matching model is the diffusion family's pipeline and U-Net on another schedule.
    Family("flow", flow_pipe, "class_labels", (0, 1, 2), frozenset({"class_labels"}),
           call_kwargs={"num_inference_steps": 2}, nfe=2, num_classes=3, class_names=CLASS_NAMES,
           shipped="fashion-mnist-diffusion", inject_nan=nan_in_unet_latents,
           nonfinite_stage="sampler 'flow-euler': first at denoising step 0 (of steps 0..1"),
    # An EDM model too; edm-heun makes 2n - 1 calls. batch_atol: EDM starts from latents of std
    # sigma_max = 40 (DDPM: 1), so batched-conv rounding of F lands in the image ~40x larger, and
    # Heun's correction multiplies what reaches D(x_{i+1}) by sigma_i / sigma_{i+1} (~2e4 for 2
    # steps 40 -> 0.002, hence 4 steps). Seen: <= 1.8e-6 at 4 steps with churn 10; a real batch
    # dependence moves pixels by ~1e-2.
    Family("edm", edm_pipe, "class_labels", (0, 1, 2), frozenset({"class_labels"}),
           call_kwargs={"num_inference_steps": 4}, nfe=7, num_classes=3, class_names=CLASS_NAMES,
           shipped="fashion-mnist-diffusion", inject_nan=nan_in_unet_latents,
           nonfinite_stage="sampler 'edm-heun': first at denoising step 0 (of steps 0..6",
           batch_atol=1e-5),
    Family("text", text_pipe, "prompt", PROMPTS, frozenset({"prompt"}),
           call_kwargs={"num_inference_steps": 2}, nfe=2, shipped="fashion-mnist-text",
           inject_nan=nan_in_unet_latents,
           nonfinite_stage="sampler 'ddpm': first at denoising step 0 (of steps 0..1"),
    Family("gan", gan_pipe, "class_labels", (0, 1, 2), frozenset({"class_labels"}), nfe=1,
           image_shape=(1, 16, 16), num_classes=3, class_names=CLASS_NAMES,
           shipped="fashion-mnist-gan", inject_nan=nan_in_generator_latents,
           nonfinite_stage="the generator forward"),
    Family("autoregressive", autoregressive_pipe, "class_labels", (0, 1, 2),
           frozenset({"class_labels"}), nfe=16,                # one prior forward per token (4x4)
           image_shape=(1, 16, 16), num_classes=3, class_names=CLASS_NAMES,
           shipped="fashion-mnist-ar", inject_nan=nan_from_vqvae_decoder,
           nonfinite_stage="the VQ-VAE decode"),
]


def networks(pipe: ImagePipeline) -> list:
    """The pipeline's registered ``torch.nn.Module`` components (U-Net, text encoder, generator,
    prior, VQ-VAE, ...), found from its components, not from its family."""
    return [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]


@contextmanager
def forward_calls(pipe: ImagePipeline) -> Iterator[list]:
    """Count network work: yields a list that gets the class name of every forward call of any
    submodule of any network component (a pre-hook on each, so methods such as
    ``VQVAE.decode_tokens`` that bypass the top-level ``forward`` are seen too)."""
    calls: list = []
    handles = [m.register_forward_pre_hook(lambda module, _args: calls.append(type(module).__name__))
               for net in networks(pipe) for m in net.modules()]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()

