"""Datasets and prompt sets: labelled images (:mod:`~diffusion.data.datasets`), captioned images
and the Fashion-MNIST prompt sets (:mod:`~diffusion.data.captions`), all loaded by name with
:func:`load_dataset` (:mod:`~diffusion.data.registry`)."""

from diffusion.data.datasets import (FASHION_MNIST_CLASSES, TensorImageDataset, TokenDataset,
                                     fashion_mnist, image_folder)
from diffusion.data.registry import CAPTIONED_DATASETS, DATASETS, load_dataset

__all__ = ["FASHION_MNIST_CLASSES", "TensorImageDataset", "TokenDataset", "fashion_mnist",
           "image_folder", "CAPTIONED_DATASETS", "DATASETS", "load_dataset"]
