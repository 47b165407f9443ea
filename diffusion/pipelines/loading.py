"""Load any of the package's saved pipelines by folder: the class comes from ``model_index.json``.

diffusers' ``DiffusionPipeline.from_pretrained`` looks a custom pipeline class up in the diffusers
module and does not find ours; :func:`load_pipeline` maps the saved ``_class_name`` to the class
registered here (each family registers its pipeline on import).

Example::

    >>> from diffusion import default_model_path
    >>> from diffusion.pipelines.loading import load_pipeline
    >>> pipe = load_pipeline(default_model_path())                        # doctest: +SKIP
    >>> type(pipe).__name__                                               # doctest: +SKIP
    'DiffusionImagePipeline'
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Optional, Union

from diffusion.pipelines.base import check_pipeline_folder

#: ``_class_name`` in ``model_index.json`` -> ``"module:Class"`` (imported on demand).
PIPELINE_CLASSES: dict[str, str] = {
    "DiffusionImagePipeline": "diffusion.pipelines.diffusion:DiffusionImagePipeline",
    "GANPipeline": "diffusion.pipelines.gan:GANPipeline",
    "AutoregressivePipeline": "diffusion.pipelines.autoregressive:AutoregressivePipeline",
}


def register_pipeline_class(class_name: str, target: str) -> None:
    """Make :func:`load_pipeline` load folders saved by ``class_name`` with ``"module:Class"``."""
    PIPELINE_CLASSES[class_name] = target


def load_pipeline(path: Union[str, Path], device: Optional[str] = None, quiet: bool = False):
    """The pipeline saved in folder ``path`` (``save_pretrained``), on ``device`` if given.

    Raises:
        FileNotFoundError: ``path`` is not a folder, or has no ``model_index.json`` (the message
            says which folder a training run writes).
        ValueError: the saved pipeline class is not one of :data:`PIPELINE_CLASSES`.
    """
    path = check_pipeline_folder(path)
    index = path / "model_index.json"
    saved = json.loads(index.read_text())
    class_name = saved.get("_class_name")
    if class_name not in PIPELINE_CLASSES:
        raise ValueError(f"{str(path)!r} holds a {class_name!r}; known pipeline classes: "
                         f"{sorted(PIPELINE_CLASSES)}")
    module, cls = PIPELINE_CLASSES[class_name].split(":")
    pipeline_class = getattr(importlib.import_module(module), cls)
    if quiet:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        if (saved.get("text_encoder") or [None])[0] is not None:
            # A text encoder loads through transformers, which has its own bar.
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()
    pipe = pipeline_class.from_pretrained(str(path))
    if device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=quiet)
    return pipe


def model_folder_name(path: Union[str, Path]) -> str:
    """A model's display name: its folder name, or for a training run's export
    ``<output_dir>/final`` the run's folder name (``runs/my-run/final`` -> ``"my-run"``)."""
    path = Path(path).resolve()
    return path.parent.name if path.name == "final" else path.name
