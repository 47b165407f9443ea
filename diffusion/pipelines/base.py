"""The contract every family's pipeline shares (diffusion, GAN, VQ-VAE + prior, and the ones to come).

Every pipeline subclasses :class:`ImagePipeline` (a ``diffusers.DiffusionPipeline``) and shares
one call signature::

    pipe(class_labels=None, prompt=None, num_images_per_prompt=1, generator=None,
         output_type="pil" | "np" | "pt", return_dict=True, **family_specific)

and returns :class:`GenerationOutput` (``images``, ``nfe``). This module holds what that contract
is made of: the output dataclass and :func:`to_output` (float ``(N, C, H, W)`` in [-1, 1] -> PIL /
uint8 NHWC / float [0, 1]), the input checks every ``check_inputs`` calls before any network work,
class ids by id or name (:meth:`ImagePipeline.class_id`), :func:`generators_from_seeds` (one
generator per image, so an image does not depend on its batch) and :func:`eval_mode`.
``tests/contract/`` runs the contract over every shipped family.

Example::

    >>> import torch
    >>> from diffusion.pipelines.base import generators_from_seeds, to_output
    >>> [g.initial_seed() for g in generators_from_seeds([3, 4])]
    [3, 4]
    >>> to_output(torch.zeros(1, 1, 2, 2), "np").tolist()          # 0 in [-1, 1] -> 128
    [[[[128], [128]], [[128], [128]]]]
"""

from __future__ import annotations

import importlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

from samplers.checks import check_int

OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class GenerationOutput(ImagePipelineOutput):
    """``images`` (list of PIL images, uint8 ``(N, H, W, C)`` array, or float ``(N, C, H, W)``
    tensor in [0, 1]) and ``nfe``: the number of network forward calls made (a guided step whose
    conditional and null rows share one batched forward counts once; Heun counts two per step)."""

    nfe: int = 0


def to_output(images: torch.Tensor, output_type: str):
    """Float ``(N, C, H, W)`` in [-1, 1] -> PIL list, uint8 NHWC numpy, or float [0, 1] tensor."""
    images = (images.float() / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return images.cpu()
    array = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    if output_type == "np":
        return array
    from PIL import Image

    if array.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L") for a in array]
    return [Image.fromarray(a) for a in array]


def normalize_class_labels(class_labels, num_classes: Optional[int]) -> Optional[torch.Tensor]:
    """Validate class labels and return an int64 1-D tensor (``None`` for unconditional models).

    Raises:
        ValueError: labels missing for a class-conditional model, given to an unconditional one,
            empty, not integers, not 1-D, or outside ``[0, num_classes)``.
    """
    if num_classes is None:
        if class_labels is not None:
            raise ValueError("this model is unconditional: class_labels must be None")
        return None
    allowed = f"integers in [0, {num_classes - 1}]"
    if class_labels is None:
        raise ValueError(f"class_labels is required for this class-conditional model ({allowed})")
    if isinstance(class_labels, (bool, float)):
        raise ValueError(f"class_labels must be {allowed}, got {class_labels!r}")
    if isinstance(class_labels, (int, np.integer)):
        class_labels = [int(class_labels)]
    elif not isinstance(class_labels, (torch.Tensor, list, tuple, range, np.ndarray)):
        raise ValueError(f"class_labels must be {allowed}, got {class_labels!r}")
    if isinstance(class_labels, torch.Tensor):
        if class_labels.dtype.is_floating_point or class_labels.dtype == torch.bool:
            raise ValueError(f"class_labels must be {allowed}, got a {class_labels.dtype} tensor")
        labels = class_labels.detach().cpu().long().reshape(-1) if class_labels.ndim <= 1 else None
        if labels is None:
            raise ValueError(f"class_labels must be 1-D, got shape {tuple(class_labels.shape)}")
    else:
        items = list(class_labels)
        bad = [v for v in items if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
        if bad:
            raise ValueError(f"class_labels must be {allowed}, got {bad[:3]!r}")
        labels = torch.tensor([int(v) for v in items], dtype=torch.long)
    if labels.numel() == 0:
        raise ValueError(f"class_labels is empty; give at least one of {allowed}")
    out_of_range = labels[(labels < 0) | (labels >= num_classes)]
    if out_of_range.numel():
        raise ValueError(f"class_labels must be {allowed}, got {out_of_range.tolist()[:5]}")
    return labels


def normalize_prompts(prompt, name: str = "prompt") -> Optional[List[str]]:
    """``None``, a str, or a non-empty list/tuple of str -> list of str (or ``None``).

    Raises:
        ValueError: any other type, an empty list, or a non-str item (``""`` is the null prompt).
    """
    if prompt is None:
        return None
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, (list, tuple)):
        raise ValueError(f"{name} must be a str or a list of str, got {type(prompt).__name__} "
                         f"({prompt!r})")
    if not prompt:
        raise ValueError(f"{name} is an empty list; give a str or a non-empty list of str")
    bad = [(i, p) for i, p in enumerate(prompt) if not isinstance(p, str)]
    if bad:
        raise ValueError(f"{name} must hold only str; {name}[{bad[0][0]}] is {bad[0][1]!r} "
                         f"(use '' for the null prompt)")
    return list(prompt)


def check_num_images_and_output_type(num_images_per_prompt, output_type) -> None:
    """Shared by every pipeline's ``check_inputs``.

    Raises:
        ValueError: ``num_images_per_prompt`` not an int >= 1, or an unknown ``output_type``.
    """
    check_int("num_images_per_prompt", num_images_per_prompt)
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")


def check_class_inputs(class_labels, prompt, num_images_per_prompt, output_type,
                       num_classes: Optional[int]) -> Tuple[Optional[torch.Tensor], int]:
    """The checks shared by the class-conditional pipelines without a text encoder (GAN,
    autoregressive): no ``prompt``, :func:`check_num_images_and_output_type`, and the labels
    repeated per image. Returns ``(labels per image or None, batch size)``.

    Raises:
        ValueError: a prompt, or a bad count, output type or label (see
            :func:`normalize_class_labels`).
    """
    if prompt is not None:
        raise ValueError("this pipeline has no text encoder: use class_labels, not prompt")
    check_num_images_and_output_type(num_images_per_prompt, output_type)
    labels = normalize_class_labels(class_labels, num_classes)
    if labels is not None:
        labels = labels.repeat_interleave(num_images_per_prompt)
    return labels, num_images_per_prompt if labels is None else len(labels)


def check_generators_and_latents(generator, latents, batch: int, shape: tuple) -> None:
    """Shared by every pipeline's ``check_inputs``: one generator per image when a list is given,
    and ``latents`` of exactly ``shape``.

    Raises:
        ValueError: a generator list whose length is not ``batch``, or latents of another shape.
    """
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"got {len(generator)} generators for {batch} images "
                         f"(len(class_labels or prompt) * num_images_per_prompt); "
                         f"pass one per image")
    if latents is not None and tuple(latents.shape) != tuple(shape):
        raise ValueError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}")


def generators_from_seeds(seeds: Iterable[int], device: Union[str, torch.device, None] = None
                          ) -> List[torch.Generator]:
    """One ``torch.Generator`` per image, seeded ``seeds[i]`` (on ``device``, default CPU): the
    list every pipeline accepts as ``generator`` so that image ``i`` depends only on its seed.

    Raises:
        ValueError: a seed that is not an int (bools refused).
    """
    seeds = list(seeds)
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, (int, np.integer))]
    if bad:
        raise ValueError(f"seeds must be ints, got {bad[:3]!r}")
    return [torch.Generator(device=device or "cpu").manual_seed(int(s)) for s in seeds]


@contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Run the block with ``modules`` in eval mode (dropout off, BatchNorm running statistics, so
    an image does not depend on its batch), then restore each one's training flag."""
    flags = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, flag in zip(modules, flags):
            m.train(flag)


def check_class_names(class_names: Optional[Sequence[str]], num_classes: Optional[int]
                      ) -> Optional[List[str]]:
    """``class_names`` as a list (``None`` if not given), checked against the model's class count.

    Raises:
        ValueError: ``len(class_names) != num_classes``.
    """
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
    return list(class_names) if class_names else None


#: top-level packages whose modules a saved ``model_index.json`` may name for a component class
OWN_PACKAGES = ("diffusion", "samplers")


def import_component_modules(folder: Union[str, Path]) -> List[str]:
    """Import the modules of this project that ``folder/model_index.json`` names for its
    components (e.g. ``["diffusion.models.gan", "ConditionalGenerator"]``), and return their names.

    diffusers' ``from_pretrained`` takes a component class only from a module already imported
    (it does not import what a folder names); only modules of :data:`OWN_PACKAGES` are imported
    here, so a folder cannot make us run code from elsewhere. Folders saved before the layout
    change name the old paths (``diffusion.gan``, ``diffusion.autoregressive``, ...), which still
    exist for one release and warn (``DeprecationWarning``).
    """
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return []
    names = sorted({entry[0] for entry in json.loads(index.read_text()).values()
                    if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                    and entry[0].split(".")[0] in OWN_PACKAGES})
    for name in names:
        importlib.import_module(name)
    return names


class ImagePipeline(DiffusionPipeline):
    """Base class of every family's pipeline: class ids, the number of classes, and the shared
    end of a call (:meth:`finish`). Subclasses register their components, define
    ``num_classes`` and ``__call__`` with the shared signature, and call :meth:`finish`."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``from_pretrained`` (local folders), after importing the project modules the
        folder names for its components (:func:`import_component_modules`)."""
        import_component_modules(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @property
    def num_classes(self) -> Optional[int]:
        """Number of real classes (``None`` for an unconditional model)."""
        raise NotImplementedError

    def class_id(self, label: Union[int, str]) -> int:
        """Class id for an id or a (case-insensitive) class name; raises ``ValueError`` if unknown."""
        if self.num_classes is None:
            raise ValueError(f"this model is unconditional (no class table): it has no class "
                             f"{label!r}; call it without class_labels")
        names = [n.lower() for n in (self.config.class_names or [])]
        key = str(label).strip().lower()
        if (isinstance(label, int) and not isinstance(label, bool)) or key.isdigit():
            if not 0 <= int(key) < self.num_classes:
                raise ValueError(f"class id {key} out of range: ids 0..{self.num_classes - 1}")
            return int(key)
        if key not in names:
            raise ValueError(f"unknown class {label!r}; known: ids 0..{self.num_classes - 1}"
                             f" or names {self.config.class_names}")
        return names.index(key)

    def finish(self, images: torch.Tensor, output_type: str, nfe: int, return_dict: bool = True):
        """The shared end of every ``__call__``: float ``(N, C, H, W)`` images in [-1, 1] ->
        ``output_type`` (:func:`to_output`), offload hooks released, and
        :class:`GenerationOutput` (or ``(images,)`` if not ``return_dict``)."""
        images = to_output(images, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return GenerationOutput(images=images, nfe=nfe)
