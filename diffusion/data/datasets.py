"""Datasets: Fashion-MNIST (offline from Debian's IDX files), image folders.

Every dataset yields ``(image, label)`` with ``image`` a float32 tensor of shape ``(C, H, W)``
in [-1, 1] and ``label`` an ``int`` class id in ``[0, num_classes)``. ``class_names`` lists the
names in id order.

Example::

    >>> from diffusion.data import load_dataset
    >>> ds = load_dataset("fashion-mnist", split="test")      # doctest: +SKIP
    >>> image, label = ds[0]; image.shape, ds.class_names[label]  # doctest: +SKIP
    (torch.Size([1, 28, 28]), 'Ankle boot')
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
#: Where Debian's ``dataset-fashion-mnist`` package puts the IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MISSING_HELP = (
    "Fashion-MNIST IDX files were not found in {tried}. Get them with one of:\n"
    "  * sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu, offline mirrors)\n"
    "  * pass root=DIR holding {files} (optionally .gz)\n"
    "  * pass download=True to fetch them with torchvision (needs internet)"
)


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzip or plain, into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file (magic {data[:4]!r})")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(root: Path, name: str) -> Optional[Path]:
    for candidate in (root / name, root / f"{name}.gz", root / "FashionMNIST" / "raw" / name,
                      root / "FashionMNIST" / "raw" / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W)`` or ``(N, H, W, C)`` in [0, 255] -> float32 ``(N, C, H, W)`` in [-1, 1]."""
    x = torch.from_numpy(np.array(images, copy=True)).float()
    if x.ndim == 3:
        x = x.unsqueeze(1)
    else:
        x = x.permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


class LabelledTensorDataset(Dataset):
    """Items ``(data[i], int label)`` held in memory: one tensor ``data`` ``(N, ...)``, int64
    labels ``(N,)`` and the class names. Subclasses check the shape of ``data``."""

    def __init__(self, data: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]):
        self._check(data, labels)
        self.data, self.labels = data, labels.long()
        self.class_names = list(class_names)

    @staticmethod
    def _check(data: torch.Tensor, labels: torch.Tensor) -> None:
        if len(data) != len(labels):
            raise ValueError(f"got {len(data)} items and {len(labels)} labels")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.data[i], int(self.labels[i])

    def subset(self, n: int, seed: int = 0):
        """A random subset of ``n`` items (same type), the same for the same ``seed``."""
        if not 0 < n <= len(self):
            raise ValueError(f"subset size must be in [1, {len(self)}], got {n}")
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return type(self)(self.data[idx], self.labels[idx], self.class_names)


class TensorImageDataset(LabelledTensorDataset):
    """Images held in memory as one float tensor ``(N, C, H, W)`` in [-1, 1] with int64 labels."""

    @staticmethod
    def _check(images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"images must be (N, C, H, W) with N == len(labels); got "
                             f"{tuple(images.shape)} and {len(labels)} labels")

    @property
    def images(self) -> torch.Tensor:
        return self.data


class TokenDataset(LabelledTensorDataset):
    """Token sequences held in memory: int64 ``(N, L)`` with int64 labels (a tokenised image
    dataset for the autoregressive prior; see :meth:`training.ar_objectives.PriorObjective.prepare_dataset`)."""

    @staticmethod
    def _check(tokens: torch.Tensor, labels: torch.Tensor) -> None:
        if tokens.ndim != 2 or len(tokens) != len(labels) or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be int64 (N, L) with N == len(labels); got "
                             f"{tokens.dtype} {tuple(tokens.shape)} and {len(labels)} labels")

    @property
    def tokens(self) -> torch.Tensor:
        return self.data


def fashion_mnist(split: str = "train", root: Optional[str] = None,
                  download: bool = False) -> TensorImageDataset:
    """Fashion-MNIST (Xiao et al. 2017): 60,000 train / 10,000 test grayscale 28x28 images, 10 classes.

    Looks in ``root`` if given (and only there: a given root that lacks the files is an error,
    not a silent fall-back to another copy), else in ``$FASHION_MNIST_DIR``, then Debian's
    ``/usr/share/datasets/fashion-mnist``. Returns images ``(N, 1, 28, 28)`` float32 in [-1, 1].

    Raises:
        ValueError: ``split`` is not ``"train"`` or ``"test"``.
        FileNotFoundError: no IDX files found (and ``download`` is False); the message says how
            to install them.
    """
    if split not in _IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if root is not None and not download:
        image_name, label_name = _IDX_FILES[split]
        if not (_find(Path(root), image_name) and _find(Path(root), label_name)):
            raise FileNotFoundError(
                f"Fashion-MNIST root {str(root)!r} holds no {image_name} and {label_name} "
                f"(optionally .gz); point it at the folder with the IDX files, or leave it out to "
                f"use $FASHION_MNIST_DIR or Debian's {DEBIAN_FASHION_MNIST}.\n" +
                _MISSING_HELP.format(tried=[str(root)], files=f"{image_name}, {label_name}"))
    roots = [Path(p) for p in (root, os.environ.get("FASHION_MNIST_DIR")) if p]
    roots.append(DEBIAN_FASHION_MNIST)
    if download:
        from torchvision.datasets import FashionMNIST

        target = Path(root or "~/.cache/fashion-mnist").expanduser()
        FashionMNIST(str(target), train=split == "train", download=True)
        roots.insert(0, target)
    image_name, label_name = _IDX_FILES[split]
    for r in roots:
        images_path, labels_path = _find(r, image_name), _find(r, label_name)
        if images_path and labels_path:
            images, labels = _read_idx(images_path), _read_idx(labels_path)
            return TensorImageDataset(images_to_tensor(images), torch.from_numpy(labels.copy()),
                                      FASHION_MNIST_CLASSES)
    raise FileNotFoundError(_MISSING_HELP.format(tried=[str(r) for r in roots],
                                                 files=f"{image_name}, {label_name}"))


_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")


def image_folder(root: str, image_size: int, channels: int = 3) -> TensorImageDataset:
    """Images in ``root/<class name>/*.png|jpg|...``: one class per sub-folder, sorted by name.

    Every image is converted to ``channels`` (1 = grayscale, 3 = RGB) and resized to
    ``image_size`` x ``image_size`` (bicubic, antialiased); returns float32 in [-1, 1].

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no class folder with images.
    """
    from PIL import Image

    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"image folder {root!r} does not exist")
    classes = sorted(d.name for d in base.iterdir() if d.is_dir())
    arrays, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((base / name).iterdir()):
            if f.suffix.lower() in _IMAGE_EXTENSIONS:
                with Image.open(f) as im:
                    im = im.convert("L" if channels == 1 else "RGB")
                    im = im.resize((image_size, image_size), Image.BICUBIC)
                    arrays.append(np.asarray(im))
                labels.append(label)
    if not arrays:
        raise FileNotFoundError(f"no images with extensions {_IMAGE_EXTENSIONS} in class "
                                f"sub-folders of {root!r}")
    return TensorImageDataset(images_to_tensor(np.stack(arrays)), torch.tensor(labels), classes)
