"""Export a labelled synthetic dataset: ``per_class`` generated images of every class, written as an
image folder that ``torchvision.datasets.ImageFolder``, Hugging Face ``datasets``' ``"imagefolder"``
builder and :func:`diffusion.data.load_dataset` (``"image-folder"``) read as they are.

Layout of ``out_dir`` (image ``i`` has class ``c = i % K`` and seed ``seed + i``, as in
:mod:`diffusion.evaluation.sampling`: it is the image ``evaluate`` scores with the same settings)::

    out_dir/
      0_T-shirt_top/0_T-shirt_top_00000.png     image 0: class 0, seed + 0
      1_Trouser/1_Trouser_00001.png             image 1: class 1, seed + 1
      ...
      metadata.jsonl    one line per image: file_name (relative to out_dir), label, class_name,
                        seed, and prompt for text-to-image pipelines (the Hugging Face format)
      synthesis.json    pipeline, model folder, weights fingerprint, settings, classes, count

Class folders are ``<id>_<name>`` with the id zero-padded to the width of ``K - 1`` and the name
made filesystem-safe (``"T-shirt/top"`` -> ``"T-shirt_top"``): the loaders number folders in sorted
order, which the prefix makes the class-id order, so their labels are the pipeline's class ids.

Example::

    >>> from diffusion import default_model_path
    >>> from diffusion.pipelines.loading import load_pipeline
    >>> from diffusion.evaluation.synthesize import synthesize
    >>> pipe = load_pipeline(default_model_path())                                # doctest: +SKIP
    >>> synthesize(pipe, "runs/synthetic", per_class=100, num_inference_steps=20)  # doctest: +SKIP
    {'n': 1000, 'num_classes': 10, 'per_class': 100, 'classes': ['T-shirt/top', ...], ...}
    >>> from torchvision.datasets import ImageFolder
    >>> ImageFolder("runs/synthetic").class_to_idx["7_Sneaker"]                   # doctest: +SKIP
    7
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from samplers import sampler_name
from samplers.checks import check_int
from diffusion.evaluation.sampling import (checked_classes, image_conditions, iter_sample_shards,
                                           pipeline_call_kwargs, sample_settings)

#: Written last into every export; ``overwrite=True`` replaces only folders that hold it.
SYNTHESIS_FILE = "synthesis.json"


def class_folder_names(class_names: Sequence[str]) -> list[str]:
    """Folder name of each class: ``<id>_<safe name>``, the id zero-padded to the width of
    ``K - 1`` so that sorted folder names are in class-id order; characters other than letters,
    digits, ``.`` and ``-`` become ``_`` (``"T-shirt/top"`` -> ``"0_T-shirt_top"``)."""
    width = len(str(len(class_names) - 1))
    return [f"{c:0{width}d}_" + (re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_.") or "class")
            for c, name in enumerate(class_names)]


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"out_dir {str(out)!r} is not empty; pass overwrite=True (CLI: "
                             f"--overwrite) to replace it, or choose another folder")
        if not (out / SYNTHESIS_FILE).is_file():
            raise ValueError(f"refusing to replace {str(out)!r}: it is not a synthesize export "
                             f"(no {SYNTHESIS_FILE}); overwrite=True replaces only those")


def _png(image):
    """uint8 numpy ``(C, H, W)``, C = 1 or 3 -> a PIL image ("L" or "RGB")."""
    from PIL import Image

    return Image.fromarray(image[0] if len(image) == 1 else image.transpose(1, 2, 0))


def synthesize(pipeline, out_dir: Union[str, Path], per_class: int, *,
               class_prompts: Optional[Sequence[Sequence[str]]] = None,
               class_names: Optional[Sequence[str]] = None, batch_size: int = 100, seed: int = 0,
               sampler: Optional[str] = None, num_inference_steps: Optional[int] = None,
               guidance_scale: Optional[float] = None,
               pipeline_kwargs: Optional[Mapping[str, Any]] = None,
               autocast_dtype: Optional[torch.dtype] = None, progress: bool = True,
               overwrite: bool = False, extra_info: Optional[Mapping[str, Any]] = None) -> dict:
    """Generate ``per_class`` images of each of the ``K`` classes and write them to ``out_dir`` as
    an image-folder dataset (layout in :mod:`diffusion.evaluation.synthesize`).

    Works for every class-conditional pipeline with the shared call signature (diffusion, GAN,
    autoregressive: ``class_labels``, a ``generator`` list, ``output_type="pt"`` giving float
    ``(B, C, H, W)`` in [0, 1]) and for text-to-image pipelines given ``class_prompts``. Image ``i``
    (of ``N = K * per_class``) has class ``i % K`` and ``torch.Generator().manual_seed(seed + i)``,
    so images do not depend on ``batch_size``. Each is quantised to uint8 as
    ``round(clamp(x, 0, 1) * 255)`` and saved as a PNG: grayscale ("L") for 1 channel, "RGB" for 3.
    The folder is written under a temporary sibling name and renamed into place at the end, so
    ``out_dir`` is either complete or absent; memory holds one batch of images.

    Args:
        pipeline: the generator; ``pipeline.num_classes`` (or ``len(class_prompts)``) gives ``K``.
        out_dir: the dataset folder to create (absent or empty; see ``overwrite``).
        per_class: images per class (int >= 1).
        class_prompts: text-to-image pipelines: ``K`` lists of prompts; image ``i`` is prompted
            with class ``i % K``'s prompts in turn (as in ``evaluate``) and labelled ``i % K``.
        class_names: names of the ``K`` classes (default: the pipeline's ``config.class_names``,
            else ``"class<c>"``); they go into ``metadata.jsonl`` and, made safe, the folder names.
        batch_size: images per pipeline call (int >= 1; results do not depend on it).
        seed: image ``i`` uses seed ``seed + i``.
        sampler, num_inference_steps, guidance_scale: passed when not ``None`` and the pipeline's
            call takes them (diffusion pipelines; a GAN ignores them); other families take
            theirs through ``pipeline_kwargs`` (e.g. ``{"truncation": 1.0}``, ``{"top_k": 50}``).
        autocast_dtype: e.g. ``torch.bfloat16`` to sample under autocast.
        progress: progress bar over the images.
        overwrite: replace an existing non-empty ``out_dir`` - only one that an earlier call wrote
            (it holds ``synthesis.json``), so a mistyped path cannot delete unrelated files.
        extra_info: JSON-serialisable entries added to ``synthesis.json`` (the CLI records its
            command there).

    Returns:
        ``{"n": N, "num_classes": K, "per_class", "classes": class names in id order, "folders":
        their folder names, "folder": str(out_dir), "seconds": generation + writing wall time,
        "nfe": network evaluations per image}``.

    Raises:
        ValueError: ``per_class`` / ``batch_size`` not an int >= 1; an unconditional pipeline; a
            text-to-image pipeline without ``class_prompts`` (or prompts for one without text);
            ``class_names`` not ``K`` names; ``out_dir`` a file, or non-empty without
            ``overwrite``, or (with it) not an earlier export; images with neither 1 nor 3
            channels (after generating the first batch; nothing is left on disk).
        TypeError: ``seed`` not an int.
    """
    per_class, batch_size = check_int("per_class", per_class), check_int("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    class_prompts, k = checked_classes(pipeline, class_prompts)
    if k is None:
        raise ValueError(f"{type(pipeline).__name__} is unconditional: a labelled dataset needs a "
                         f"class-conditional pipeline (or a text-to-image one with class_prompts)")
    if class_names is None:
        saved = getattr(getattr(pipeline, "config", None), "class_names", None)
        class_names = saved if saved and len(saved) == k else [f"class{c}" for c in range(k)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != k:
        raise ValueError(f"class_names has {len(class_names)} names for {k} classes")
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    folders = class_folder_names(class_names)
    call_kwargs = pipeline_call_kwargs(pipeline, pipeline_kwargs, sampler=sampler,
                                       num_inference_steps=num_inference_steps,
                                       guidance_scale=guidance_scale)

    start = time.perf_counter()
    n, nfe = k * per_class, 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for folder in folders:
            (tmp / folder).mkdir()
        with open(tmp / "metadata.jsonl", "w") as metadata:
            lo = 0
            # One shard per batch: memory holds one batch, the bar advances per batch.
            for shard in iter_sample_shards(pipeline, n, call_kwargs=call_kwargs, seed=seed,
                                            batch_size=batch_size, shard_size=batch_size,
                                            autocast_dtype=autocast_dtype, progress=progress,
                                            class_prompts=class_prompts):
                images, labels, hi = shard["images"], shard["labels"], lo + len(shard["images"])
                if images.shape[1] not in (1, 3):
                    raise ValueError(f"images have {images.shape[1]} channels; PNG export takes "
                                     f"1 (grayscale) or 3 (RGB)")
                prompts = (image_conditions(lo, hi, k, class_prompts)["prompt"]
                           if class_prompts is not None else None)
                for j, (image, c) in enumerate(zip(images, labels.tolist())):
                    file_name = f"{folders[c]}/{folders[c]}_{lo + j:05d}.png"
                    _png(image).save(tmp / file_name)
                    row = {"file_name": file_name, "label": c, "class_name": class_names[c],
                           "seed": seed + lo + j}
                    if prompts is not None:
                        row["prompt"] = prompts[j]
                    metadata.write(json.dumps(row) + "\n")
                lo, nfe = hi, int(shard["nfe"])
        seconds = time.perf_counter() - start
        settings = sample_settings(pipeline, call_kwargs, seed, batch_size, autocast_dtype,
                                   class_prompts)
        del settings["shard_size"]  # the cache's unit; images do not depend on it
        info = {"format": "image-folder", "model": getattr(pipeline, "name_or_path", None),
                **settings, "sampler": call_kwargs.get("sampler") or sampler_name(pipeline),
                "n": n, "num_classes": k, "per_class": per_class,
                "classes": [{"label": c, "name": name, "folder": folder}
                            for c, (name, folder) in enumerate(zip(class_names, folders))],
                "nfe": nfe, "batch_size": batch_size, "seconds": seconds, **(extra_info or {})}
        (tmp / SYNTHESIS_FILE).write_text(json.dumps(info, indent=2, default=str))
        if out.exists():  # empty, or an earlier export replaced with overwrite=True
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"n": n, "num_classes": k, "per_class": per_class, "classes": class_names,
            "folders": folders, "folder": str(out), "seconds": time.perf_counter() - start,
            "nfe": nfe}
