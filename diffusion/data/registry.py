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

from typing import Callable, Optional

import torch

from diffusion.data.captions import (CaptionedImageDataset, fashion_mnist_captions,
                                     image_folder_captions)
from diffusion.data.datasets import TensorImageDataset, fashion_mnist, image_folder
from diffusion.data.emoji import emoji_dataset

#: labelled datasets by name -> loader(split=..., root=...)
DATASETS: dict[str, Callable[..., TensorImageDataset]] = {"fashion-mnist": fashion_mnist}


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
    if name == "image-folder-captions" and not kwargs.get("root"):
        raise ValueError("dataset 'image-folder-captions' needs root=<folder of captioned images>")
    ds = CAPTIONED_DATASETS[name](seed=seed, **kwargs)
    return ds.subset(subset, seed=seed) if subset else ds


def load_dataset(name: str, split: str = "train", root: Optional[str] = None,
                 image_size: int = 28, channels: int = 1, subset: Optional[int] = None,
                 seed: int = 0) -> TensorImageDataset:
    """Load a dataset by name: ``"fashion-mnist"`` or ``"image-folder"`` (needs ``root``).

    ``subset`` keeps a seeded random subset of that many items.

    Raises:
        ValueError: unknown ``name``, ``image-folder`` without ``root``, or images whose channel
            count is not ``channels`` (Fashion-MNIST: 1; emoji: 3).
    """
    if name in CAPTIONED_DATASETS:  # captioned datasets: (image, caption) items
        kwargs = {"fashion-mnist-captions": dict(split=split, root=root),
                  "emoji": dict(image_size=image_size),
                  "image-folder-captions": dict(root=root, image_size=image_size,
                                                channels=channels)}[name]
        ds = load_captioned_dataset(name, subset=subset, seed=seed, **kwargs)
        _check_channels(name, ds.images, channels)
        return ds
    if name == "image-folder":
        if not root:
            raise ValueError("dataset 'image-folder' needs root=<folder of class sub-folders>")
        ds = image_folder(root, image_size=image_size, channels=channels)
    elif name in DATASETS:
        ds = DATASETS[name](split=split, root=root)
    else:
        raise ValueError(f"unknown dataset {name!r}; known: "
                         f"{sorted(DATASETS) + ['image-folder'] + sorted(CAPTIONED_DATASETS)}")
    _check_channels(name, ds.data, channels)
    return ds.subset(subset, seed=seed) if subset else ds


def _check_channels(name: str, images: torch.Tensor, channels: int) -> None:
    """A dataset whose images do not have the configured channel count is refused up front
    (the model is built for ``channels``), e.g. RGB emoji with the default ``channels=1``."""
    if images.shape[1] != channels:
        raise ValueError(f"dataset {name!r} has {images.shape[1]}-channel images but channels="
                         f"{channels} was asked: set data.channels={images.shape[1]}")
