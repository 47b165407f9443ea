"""The contract every family's pipeline shares (diffusion, GAN, VQ-VAE + prior, and the ones to come).

Every pipeline subclasses :class:`ImagePipeline` (a ``diffusers.DiffusionPipeline``) and shares
one call signature::

    pipe(class_labels=None, prompt=None, num_images_per_prompt=1, generator=None,
         output_type="pil" | "np" | "pt", return_dict=True, on_nonfinite="raise" | "flag",
         precision=None | "auto" | "bf16" | "fp32", **family_specific)

and returns :class:`GenerationOutput` (``images``, ``nfe``, ``nonfinite``). This module holds what
that contract is made of: the output dataclass and :func:`to_output` (float ``(N, C, H, W)`` in
[-1, 1] -> PIL / uint8 NHWC / float [0, 1]), the non-finite image check every call ends with
(:class:`NonFiniteImagesError`, :func:`nonfinite_indices`), the network precision
(:meth:`ImagePipeline.network_dtype`, :mod:`diffusion.precision`) and
:meth:`ImagePipeline.compile_network`, the input checks every
``check_inputs`` calls before any network work,
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
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

from diffusion._deprecated import MOVED, warn_old_folder
from diffusion.precision import check_precision, resolve_precision

from samplers.checks import check_int

OUTPUT_TYPES = ("pil", "np", "pt")

#: what a call does with images holding NaN or inf: raise :class:`NonFiniteImagesError`
#: (default) or return them with their indices in ``GenerationOutput.nonfinite``
ON_NONFINITE = ("raise", "flag")

#: affected image indices an error message lists before "... (+k more)"
SHOWN_INDICES = 10


@dataclass
class GenerationOutput(ImagePipelineOutput):
    """``images`` (list of PIL images, uint8 ``(N, H, W, C)`` array, or float ``(N, C, H, W)``
    tensor in [0, 1]), ``nfe``: the number of network forward calls made (a guided step whose
    conditional and null rows share one batched forward counts once; Heun counts two per step),
    and ``nonfinite``: the indices of the images that held NaN or inf (always ``[]`` unless the
    call passed ``on_nonfinite="flag"``; see :meth:`ImagePipeline.finish`)."""

    nfe: int = 0
    nonfinite: List[int] = field(default_factory=list)


class NonFiniteImagesError(FloatingPointError):
    """Generated images hold NaN or inf (a NaN in the latents or the weights, a diverging
    sampler). Raised by every pipeline's call (:meth:`ImagePipeline.finish`) unless it passes
    ``on_nonfinite="flag"``; the message names the pipeline, the sampler or stage, the first
    denoising step where a sampler is involved, how many of the images are affected and which.

    Attributes:
        indices: affected image indices in the call's batch (sorted).
        num_images: images in the call.
        pipeline: the pipeline's class name.
        stage: where the values came from, e.g. ``"sampler 'ddpm': first at denoising step 2
            ..."`` or ``"the generator forward ..."``.

    Example::

        >>> import torch
        >>> from diffusion.models.gan import ConditionalGenerator
        >>> from diffusion.pipelines.base import NonFiniteImagesError
        >>> from diffusion.pipelines.gan import GANPipeline
        >>> pipe = GANPipeline(ConditionalGenerator(latent_dim=4, num_classes=2, channels=(8, 4)))
        >>> z = torch.zeros(3, 4)
        >>> z[1, 0] = float("nan")
        >>> try:
        ...     pipe(class_labels=[0, 1, 0], latents=z, output_type="np")
        ... except NonFiniteImagesError as e:
        ...     print(e.indices, str(e)[:71])
        [1] GANPipeline: non-finite values (NaN/inf) in 1 of 3 images (indices [1])
        >>> pipe(class_labels=[0, 1, 0], latents=z, output_type="np", on_nonfinite="flag").nonfinite
        [1]
    """

    def __init__(self, message: str, indices: Sequence[int] = (), num_images: int = 0,
                 pipeline: str = "", stage: str = ""):
        super().__init__(message)  # defaults: unpickles from (message,) plus __dict__
        self.indices = list(indices)
        self.num_images = num_images
        self.pipeline = pipeline
        self.stage = stage


def nonfinite_indices(images: torch.Tensor) -> List[int]:
    """Indices ``i`` of the images ``images[i]`` (any ``(N, ...)`` tensor) holding a NaN or inf."""
    return torch.nonzero(~torch.isfinite(images).flatten(1).all(dim=1)).flatten().tolist()


def nonfinite_message(pipeline: str, indices: Sequence[int], num_images: int, stage: str,
                      hint: str) -> str:
    """The :class:`NonFiniteImagesError` message: pipeline, count of ``num_images``, the first
    :data:`SHOWN_INDICES` indices, ``stage``, ``hint`` and the opt-out."""
    shown = list(indices[:SHOWN_INDICES])
    more = f" ... (+{len(indices) - len(shown)} more)" if len(indices) > len(shown) else ""
    return (f"{pipeline}: non-finite values (NaN/inf) in {len(indices)} of {num_images} images "
            f"(indices {shown}{more}), from {stage}. {hint}; or pass on_nonfinite='flag' to get "
            f"the images back with these indices in GenerationOutput.nonfinite.")


def to_output(images: torch.Tensor, output_type: str):
    """Float ``(N, C, H, W)`` in [-1, 1] -> PIL list, uint8 NHWC numpy, or float [0, 1] tensor.

    Values outside [-1, 1] (inf included) saturate; NaN stays NaN in ``"pt"`` and becomes 0
    (black) in ``"np"`` / ``"pil"``, where uint8 has no NaN (see :meth:`ImagePipeline.finish`,
    which refuses such images unless asked to flag them).
    """
    images = (images.float() / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return images.cpu()
    images = torch.nan_to_num(images, nan=0.0)  # only NaN is left after the clamp; uint8 has none
    array = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    if output_type == "np":
        return array
    from PIL import Image

    if array.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L") for a in array]
    return [Image.fromarray(a) for a in array]


def _class_key(text: str) -> str:
    """A class name or label as compared: lower case, every run of other characters than letters
    and digits one space (``"Ankle_boot"``, ``"ankle-boot"``, ``" Ankle  Boot "`` -> ``"ankle boot"``)."""
    return re.sub(r"[^0-9a-z]+", " ", text.lower()).strip()


def class_name_aliases(name: str) -> Tuple[List[str], List[str]]:
    """``(full, parts)``: the spellings that name a class, as :func:`_class_key` forms.

    ``full``: the whole name with and without spaces (``"T-shirt/top"`` -> ``"t shirt top"``,
    ``"tshirttop"``); ``parts``: each ``/``-separated alternative the same way (``"t shirt"``,
    ``"tshirt"``, ``"top"``). A full match wins over a part match (``"Shirt"`` is the class Shirt,
    not part of ``"T-shirt/top"``)."""
    def spellings(text: str) -> List[str]:
        key = _class_key(text)
        return [key, key.replace(" ", "")] if key else []

    parts = [s for part in name.split("/") for s in spellings(part)] if "/" in name else []
    return spellings(name), parts


def resolve_class_label(label, num_classes: Optional[int],
                        class_names: Optional[Sequence[str]] = None) -> int:
    """The class id a label names: the one resolver behind ``class_labels``, ``pipe.class_id``
    and the CLI's ``--classes``.

    Accepted: an int id (``numpy`` ints too, not bool) or its digits (``"8"``); a class name in
    any case, with ``_``, ``-``, spaces or ``/`` interchangeable (``"Bag"``, ``"ankle_boot"``,
    ``"Ankle boot"``); one ``/``-separated alternative of a name (``"T-shirt"`` or ``"top"`` for
    ``"T-shirt/top"``) when it names one class only; the class folders that
    :func:`diffusion.evaluation.synthesize` writes, ``<id>_<name>`` (``"9_Ankle_boot"``) when the
    id and the name agree.

    Args:
        label: the id or name.
        num_classes: the model's number of real classes (``None``: unconditional).
        class_names: the model's ``config.class_names`` (``None``: ids only).

    Returns:
        The class id, an int in ``[0, num_classes)``.

    Raises:
        ValueError: an unconditional model, an id out of range, a name no class (or more than one
            class) answers to, or a float / bool / other type; the message lists what is allowed.

    Example::

        >>> names = ["T-shirt/top", "Shirt", "Ankle boot"]
        >>> [resolve_class_label(x, 3, names) for x in (2, "1", "shirt", "T-shirt", "ankle_boot", "2_Ankle_boot")]
        [2, 1, 1, 0, 2, 2]
    """
    if num_classes is None:
        raise ValueError(f"this model is unconditional (no class table): it has no class "
                         f"{label!r}; call it without class_labels")
    names = list(class_names or [])
    allowed = f"ids 0..{num_classes - 1}" + (f" or names {names}" if names else "")
    if isinstance(label, (int, np.integer)) and not isinstance(label, (bool, np.bool_)):
        key = str(int(label))
    elif isinstance(label, str):
        key = label.strip()
    else:
        raise ValueError(f"a class label must be an int id or a class name, got {label!r} "
                         f"({type(label).__name__}); allowed: {allowed}")
    if re.fullmatch(r"[+-]?\d+", key):
        if not 0 <= int(key) < num_classes:
            raise ValueError(f"class id {int(key)} out of range: {allowed}")
        return int(key)
    wanted = _class_key(key)
    aliases = [class_name_aliases(n) for n in names]
    for level in (0, 1):  # whole names first, then "/" alternatives
        hits = [c for c, a in enumerate(aliases) if wanted and (wanted in a[level]
                                                                or wanted.replace(" ", "") in a[level])]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ValueError(f"class name {label!r} is ambiguous: it names "
                             f"{[names[c] for c in hits]}; use the id or the full name")
    folder = re.fullmatch(r"(\d+)[ _-]+(.+)", key)  # synthesize's "<id>_<name>" class folders
    if folder and int(folder.group(1)) < len(names):
        c = int(folder.group(1))
        if _class_key(folder.group(2)) in class_name_aliases(names[c])[0] + [
                _class_key(re.sub(r"[^A-Za-z0-9.-]+", "_", names[c]))]:
            return c
    hint = ""
    if names:
        import difflib
        close = difflib.get_close_matches(wanted, [_class_key(n) for n in names], n=1, cutoff=0.6)
        hint = f" (did you mean {names[[_class_key(n) for n in names].index(close[0])]!r}?)" if close else ""
    raise ValueError(f"unknown class {label!r}{hint}; known: {allowed} (case, spaces, '_' and "
                     f"'-' do not matter)")


def normalize_class_labels(class_labels, num_classes: Optional[int],
                           class_names: Optional[Sequence[str]] = None) -> Optional[torch.Tensor]:
    """Validate class labels and return an int64 1-D tensor (``None`` for unconditional models).

    ``class_labels``: an id or a name, or a list / tuple / range / 1-D array or int tensor of them;
    names (and digit strings) are resolved by :func:`resolve_class_label` against ``class_names``.

    Raises:
        ValueError: labels missing for a class-conditional model, given to an unconditional one,
            empty, not ids or known names, not 1-D, or outside ``[0, num_classes)``.
    """
    if num_classes is None:
        if class_labels is not None:
            raise ValueError("this model is unconditional: class_labels must be None")
        return None
    allowed = f"integers in [0, {num_classes - 1}]" + (
        f" or class names {list(class_names)}" if class_names else "")
    if class_labels is None:
        raise ValueError(f"class_labels is required for this class-conditional model ({allowed})")
    if isinstance(class_labels, (bool, float)):
        raise ValueError(f"class_labels must be {allowed}, got {class_labels!r}")
    if isinstance(class_labels, (int, np.integer, str)):
        class_labels = [class_labels]
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
        bad = [v for v in items if isinstance(v, (bool, np.bool_))
               or not isinstance(v, (int, np.integer, str))]
        if bad:
            raise ValueError(f"class_labels must be {allowed}, got {bad[:3]!r}")
        labels = torch.tensor([resolve_class_label(v, num_classes, class_names)
                               if isinstance(v, str) else int(v) for v in items], dtype=torch.long)
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


def check_num_images_and_output_type(num_images_per_prompt, output_type,
                                     on_nonfinite="raise", return_dict=True) -> None:
    """Shared by every pipeline's ``check_inputs``: the image count and the output arguments.

    Raises:
        ValueError: ``num_images_per_prompt`` not an int >= 1, an unknown ``output_type`` or
            ``on_nonfinite``, or ``on_nonfinite="flag"`` with ``return_dict=False`` (the tuple
            has no place for the flags, which would be lost silently).
    """
    check_int("num_images_per_prompt", num_images_per_prompt)
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if not isinstance(on_nonfinite, str) or on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
    if on_nonfinite == "flag" and not return_dict:
        raise ValueError("on_nonfinite='flag' returns the affected indices in "
                         "GenerationOutput.nonfinite: use return_dict=True")


def check_class_inputs(class_labels, prompt, num_images_per_prompt, output_type,
                       num_classes: Optional[int], on_nonfinite="raise", return_dict=True,
                       class_names: Optional[Sequence[str]] = None
                       ) -> Tuple[Optional[torch.Tensor], int]:
    """The checks shared by the class-conditional pipelines without a text encoder (GAN,
    autoregressive): no ``prompt``, :func:`check_num_images_and_output_type`, and the labels
    repeated per image. Returns ``(labels per image or None, batch size)``.

    Raises:
        ValueError: a prompt, or a bad count, output argument or label (see
            :func:`normalize_class_labels`).
    """
    if prompt is not None:
        raise ValueError("this pipeline has no text encoder: use class_labels, not prompt")
    check_num_images_and_output_type(num_images_per_prompt, output_type, on_nonfinite,
                                     return_dict)
    labels = normalize_class_labels(class_labels, num_classes, class_names)
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


def looks_like_hub_id(name: str) -> bool:
    """``"owner/name"`` (one ``/``, letters, digits, ``-``, ``_``, ``.``; no leading ``.`` or
    ``/``): what the Hugging Face Hub would take as a repository id."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name)) and ".." not in name


def check_pipeline_folder(path: Union[str, Path]) -> Path:
    """``path`` as a :class:`~pathlib.Path`, checked to be a folder written by ``save_pretrained``.

    Raises:
        FileNotFoundError: ``path`` is not a folder, holds a VQ-VAE tokenizer alone, or has no
            ``model_index.json``; the message says which folder a training run writes.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist (train one with "
                                f"`python -m training --config ...`; its pipeline is in "
                                f"<output_dir>/final)")
    index, config = path / "model_index.json", path / "config.json"
    if not index.is_file() and config.is_file() and \
            json.loads(config.read_text()).get("_class_name") == "VQVAE":
        raise FileNotFoundError(f"{str(path)!r} holds a VQ-VAE tokenizer alone (stage 1 of the "
                                f"autoregressive baseline), which cannot generate: train a prior on "
                                f"it (train.objective=prior prior.vqvae_path={path}) and load that "
                                f"run's <output_dir>/final")
    if not index.is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a saved pipeline (no model_index.json); use "
                                f"the folder written by save_pretrained, e.g. <output_dir>/final")
    return path


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
    old = [name for name in names if name in MOVED]
    if old:
        warn_old_folder(folder, old)
    return names


class ImagePipeline(DiffusionPipeline):
    """Base class of every family's pipeline: class ids, the number of classes, and the shared
    end of a call (:meth:`finish`). Subclasses register their components, define
    ``num_classes`` and ``__call__`` with the shared signature, and call :meth:`finish`."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``from_pretrained``, after importing the project modules the folder names for
        its components (:func:`import_component_modules`).

        A local folder is checked first (:func:`check_pipeline_folder`), so a missing or wrong
        folder is a one-line ``FileNotFoundError`` instead of the hub's repository-id error; a name
        of the hub's ``"owner/name"`` form that is not a local folder goes to diffusers (the hub,
        when online).

        Raises:
            FileNotFoundError: not a folder (and not a hub id), or not a saved pipeline.
        """
        name = pretrained_model_name_or_path
        if isinstance(name, Path) or not (isinstance(name, str) and looks_like_hub_id(name)
                                          and not Path(name).exists()):
            check_pipeline_folder(name)
        import_component_modules(name)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    #: the registered components that :meth:`compile_network` compiles (each family sets its own)
    _network_names: Tuple[str, ...] = ()

    @property
    def num_classes(self) -> Optional[int]:
        """Number of real classes (``None`` for an unconditional model)."""
        raise NotImplementedError

    def set_precision(self, precision: Optional[str]) -> None:
        """Save ``precision`` (``"auto"``, ``"bf16"``, ``"fp32"``; ``None``: no saved default, i.e.
        ``"auto"``) as this pipeline's default (``model_index.json`` ``precision``); a call's
        ``precision=`` overrides it. See :mod:`diffusion.precision`.

        Raises:
            ValueError: not one of the choices.
        """
        self.register_to_config(precision=None if precision is None else check_precision(precision))

    def network_dtype(self, precision: Optional[str] = None) -> Optional[torch.dtype]:
        """The autocast dtype a call with ``precision`` runs its network under on this pipeline's
        execution device: that choice, else the saved default (:meth:`set_precision`), else
        ``"auto"``, resolved by :func:`diffusion.precision.resolve_precision` (``None`` = float32).

        Raises:
            ValueError: not one of ``"auto"``, ``"bf16"``, ``"fp32"``.

        Example::

            >>> from diffusion.models.gan import ConditionalGenerator
            >>> from diffusion.pipelines.gan import GANPipeline
            >>> pipe = GANPipeline(ConditionalGenerator(latent_dim=4, num_classes=2, channels=(8, 4)))
            >>> pipe.set_precision("fp32")
            >>> pipe.network_dtype() is None, pipe.network_dtype("bf16")
            (True, torch.bfloat16)
        """
        if precision is None:
            precision = self.config.get("precision") or "auto"
        return resolve_precision(precision, self._execution_device)

    def compile_network(self, **compile_kwargs) -> "ImagePipeline":
        """Compile the family's network(s) in place with ``torch.compile`` (``nn.Module.compile``:
        the module keeps its class, config and weights, so ``save_pretrained`` is unchanged);
        ``compile_kwargs`` go to ``torch.compile`` (e.g. ``mode="max-autotune"``). Returns ``self``.

        The first call after compiling pays the compile (about a minute for the shipped U-Net on
        2 CPU cores with inductor, again for each new batch size or precision; later calls run the
        compiled code). Images match the eager ones to float rounding, not bit for bit.

        Raises:
            RuntimeError: from the first call, where no compiler is available (inductor needs a C
                compiler on CPU).

        Example::

            >>> from diffusion.models.gan import ConditionalGenerator
            >>> from diffusion.pipelines.gan import GANPipeline
            >>> pipe = GANPipeline(ConditionalGenerator(latent_dim=4, num_classes=2, channels=(8, 4)))
            >>> pipe.compile_network() is pipe                    # compiles on the first call
            True
        """
        for name in self._network_names:
            module = getattr(self, name, None)
            if isinstance(module, torch.nn.Module):
                module.compile(**compile_kwargs)
        return self

    def class_id(self, label: Union[int, str]) -> int:
        """Class id for an id or a class name in any usual spelling
        (:func:`resolve_class_label`: ``"Bag"``, ``"ankle_boot"``, ``"T-shirt"``, ``8``).

        Raises:
            ValueError: unknown, ambiguous or out-of-range label, or an unconditional model.
        """
        return resolve_class_label(label, self.num_classes, self.config.class_names)

    def finish(self, images: torch.Tensor, output_type: str, nfe: int, return_dict: bool = True,
               on_nonfinite: str = "raise", stage: str = "the network forward",
               hint: str = "Check the inputs and the model weights for NaN/inf"):
        """The shared end of every ``__call__``: the non-finite check, float ``(N, C, H, W)``
        images in [-1, 1] -> ``output_type`` (:func:`to_output`), offload hooks released, and
        :class:`GenerationOutput` (or ``(images,)`` if not ``return_dict``).

        Images holding NaN or inf (counted per image, before the conversion, whose clamp would
        hide an inf and whose uint8 cast would turn NaN into black) raise
        :class:`NonFiniteImagesError` naming this class, ``stage`` (the sampler and first bad step,
        or the network that made the images), how many of the N images and which, and ``hint``
        (what to try). With ``on_nonfinite="flag"`` they are returned instead, their indices in
        ``GenerationOutput.nonfinite``: ``"pt"`` keeps NaN (inf saturates to 0 / 1 like any value
        outside [-1, 1]); ``"np"`` / ``"pil"`` show NaN pixels as 0. Finite images convert exactly
        as without the check.

        Raises:
            NonFiniteImagesError: some image holds NaN or inf and ``on_nonfinite == "raise"``.
        """
        nonfinite = nonfinite_indices(images)
        if nonfinite and on_nonfinite != "flag":
            self.maybe_free_model_hooks()
            name = type(self).__name__
            raise NonFiniteImagesError(
                nonfinite_message(name, nonfinite, len(images), stage, hint),
                indices=nonfinite, num_images=len(images), pipeline=name, stage=stage)
        images = to_output(images, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return GenerationOutput(images=images, nfe=nfe, nonfinite=nonfinite)
