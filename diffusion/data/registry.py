"""Datasets by name: the one entry point the training loop, evaluation, CAS and the CLI read data
through (``data.dataset`` in a training config, ``--dataset`` on the command line).

Labelled image datasets (:mod:`diffusion.data.datasets`: ``"fashion-mnist"``, ``"image-folder"``)
and captioned ones (:mod:`diffusion.data.captions`: ``"fashion-mnist-captions"``, ``"emoji"``,
``"image-folder-captions"``). A new dataset is one loader function registered in
:data:`DATASETS` (or ``CAPTIONED_DATASETS``).

Example::

    >>> from diffusion.data import load_dataset
    >>> ds = load_dataset("fashion-mnist", split="test", subset=8)        # doctest: +SKIP
    >>> ds.data.shape, ds.data.min() >= -1                                # doctest: +SKIP
    (torch.Size([8, 1, 28, 28]), tensor(True))
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional

import torch

from diffusion.data.captions import (CaptionedImageDataset, fashion_mnist_captions,
                                     image_folder_captions)
from diffusion.data.datasets import TensorImageDataset, fashion_mnist, image_folder
from diffusion.data.emoji import emoji_dataset

#: labelled datasets by name -> loader taking any of split, root, image_size, channels
DATASETS: dict[str, Callable[..., TensorImageDataset]] = {"fashion-mnist": fashion_mnist,
                                                         "image-folder": image_folder}


#: captioned datasets by name -> loader(seed=..., **kwargs)
CAPTIONED_DATASETS: dict[str, Callable[..., CaptionedImageDataset]] = {
    "emoji": emoji_dataset,
    "fashion-mnist-captions": fashion_mnist_captions,
    "image-folder-captions": image_folder_captions,
}


def load_captioned_dataset(name: str, subset: Optional[int] = None, seed: int = 0,
                           **kwargs) -> CaptionedImageDataset:
    """Load a captioned dataset by name: ``"emoji"`` (:func:`emoji_dataset`),
    ``"fashion-mnist-captions"`` (:func:`fashion_mnist_captions`) or ``"image-folder-captions"``
    (:func:`image_folder_captions`, needs ``root``, ``image_size``). ``kwargs`` go to that
    function; ``subset`` keeps a seeded random subset of that many items.

    Raises:
        ValueError: unknown ``name``; TypeError: an argument the loader does not take.
    """
    if name not in CAPTIONED_DATASETS:
        raise ValueError(f"unknown captioned dataset {name!r}; known: {sorted(CAPTIONED_DATASETS)}")
    _settings_for(name, CAPTIONED_DATASETS[name], {"root": kwargs.get("root")})  # root if needed
    ds = CAPTIONED_DATASETS[name](seed=seed, **kwargs)
    return ds.subset(subset, seed=seed) if subset else ds


def load_dataset(name: str, split: str = "train", root: Optional[str] = None,
                 image_size: int = 28, channels: int = 1, subset: Optional[int] = None,
                 seed: int = 0) -> TensorImageDataset:
    """Load a dataset by name: one of :data:`DATASETS` (labelled images: ``"fashion-mnist"``,
    ``"image-folder"``) or :data:`CAPTIONED_DATASETS` (``(image, caption)`` items).

    The loader receives those of ``split``, ``root``, ``image_size`` and ``channels`` that its
    signature names (and captioned loaders ``seed``), so a new loader is registered as it is.
    ``subset`` keeps a seeded random subset of that many items.

    Raises:
        ValueError: unknown ``name``, a loader that needs ``root`` without one, or images whose
            channel count is not ``channels`` (Fashion-MNIST: 1; emoji: 3).
    """
    settings = dict(split=split, root=root, image_size=image_size, channels=channels)
    if name in CAPTIONED_DATASETS:
        ds = load_captioned_dataset(name, subset=subset, seed=seed,
                                    **_settings_for(name, CAPTIONED_DATASETS[name], settings))
        _check_channels(name, ds.images, channels)
        return ds
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: "
                         f"{sorted(DATASETS) + sorted(CAPTIONED_DATASETS)}")
    ds = DATASETS[name](**_settings_for(name, DATASETS[name], settings))
    _check_channels(name, ds.data, channels)
    return ds.subset(subset, seed=seed) if subset else ds


def _settings_for(name: str, loader: Callable, settings: dict) -> dict:
    """The entries of ``settings`` that ``loader``'s signature names; a required ``root`` that is
    ``None`` is refused by name."""
    params = inspect.signature(loader).parameters
    chosen = {k: v for k, v in settings.items() if k in params}
    root = params.get("root")
    if root is not None and root.default is inspect.Parameter.empty and not chosen.get("root"):
        raise ValueError(f"dataset {name!r} needs root=<its folder> (data.root in a training "
                         f"config, --dataset-root on the command line)")
    return chosen


def _check_channels(name: str, images: torch.Tensor, channels: int) -> None:
    """A dataset whose images do not have the configured channel count is refused up front
    (the model is built for ``channels``), e.g. RGB emoji with the default ``channels=1``."""
    if images.shape[1] != channels:
        raise ValueError(f"dataset {name!r} has {images.shape[1]}-channel images but channels="
                         f"{channels} was asked: set data.channels={images.shape[1]}")
