"""Captioned image datasets for text-to-image training: the dataset type, Fashion-MNIST with
captions and its prompt sets, image folders with captions (emoji: :mod:`diffusion.data.emoji`).

Every dataset is a :class:`CaptionedImageDataset`: images float32 ``(N, C, H, W)`` in [-1, 1],
one or more captions per image, and optional int64 class labels. Indexing yields
``(image, caption)``: one caption per access, chosen deterministically from ``(seed, epoch,
index)`` so that every epoch shows another caption of the same image, with no global RNG state.
A training step that draws its own randomness instead calls
:meth:`CaptionedImageDataset.sample_captions` with the step's ``torch.Generator``.

Fashion-MNIST prompts come in two disjoint sets per class: :func:`training_prompts` (the
captions of :func:`fashion_mnist_captions`) and :func:`held_out_prompts` (other nouns and other
phrasings, never shown in training; for checking that a text model generalises).

Example::

    >>> import torch
    >>> from diffusion.data.captions import CaptionedImageDataset, held_out_prompts, training_prompts
    >>> training_prompts(7)[:3]
    ['a sneaker', 'running shoes', 'a pair of trainers']
    >>> held_out_prompts(7)[0]
    'tennis shoes'
    >>> ds = CaptionedImageDataset(torch.zeros(2, 3, 8, 8), [["a cat"], ["a dog", "a puppy"]])
    >>> image, caption = ds[0]; image.shape, caption
    (torch.Size([3, 8, 8]), 'a cat')
    >>> ds.sample_captions([0, 1], torch.Generator().manual_seed(0))
    ['a cat', 'a puppy']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from diffusion.data.datasets import (_IMAGE_EXTENSIONS, FASHION_MNIST_CLASSES, fashion_mnist,
                                     images_to_tensor)

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """SplitMix64 finaliser (Steele et al. 2014): a cheap, well-mixed hash of a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class CaptionedImageDataset(Dataset):
    """Images with one or more captions each (and optional class labels), held in memory.

    Args:
        images: float ``(N, C, H, W)`` in [-1, 1].
        captions: ``N`` non-empty lists of non-empty strings; ``captions[i]`` describes
            ``images[i]``.
        labels: optional int ``(N,)`` class ids in ``[0, len(class_names))``; ``None`` when the
            data has no classes (emoji).
        class_names: names in id order (required with ``labels``; empty without).
        seed: picks the caption of each ``(index, epoch)`` in :meth:`__getitem__`.

    ``ds[i]`` returns ``(image (C, H, W), caption str)`` with caption
    ``captions[i][hash(seed, epoch, i) % len(captions[i])]``: reproducible in any DataLoader
    worker and after a resume, different across epochs; call :meth:`set_epoch` each epoch (as a
    ``DistributedSampler`` is). A loop that passes a ``torch.Generator`` to its objective can
    instead fetch indices and draw with :meth:`sample_captions`. :attr:`labels` is ``None`` or
    int64 ``(N,)``; :meth:`unique_captions` lists every caption once (to pre-encode them).

    Raises:
        ValueError: shapes or lengths disagree, an image has no caption, or labels lack names.
    """

    def __init__(self, images: torch.Tensor, captions: Sequence[Sequence[str]],
                 labels: Optional[torch.Tensor] = None, class_names: Sequence[str] = (),
                 seed: int = 0):
        if images.ndim != 4 or len(images) != len(captions):
            raise ValueError(f"images must be (N, C, H, W) with N == len(captions); got "
                             f"{tuple(images.shape)} and {len(captions)} caption lists")
        # Lists may be shared by many images (one per class); each distinct list is checked once.
        captions = [c if isinstance(c, (list, str)) else list(c) for c in captions]
        valid: dict[int, bool] = {}
        bad = [i for i, c in enumerate(captions) if not valid.setdefault(
            id(c), isinstance(c, list) and bool(c) and all(isinstance(s, str) and s for s in c))]
        if bad:
            raise ValueError(f"every image needs a list of >= 1 non-empty caption strings; images "
                             f"{bad[:5]} have {[captions[i] for i in bad[:5]]!r}")
        if labels is not None:
            labels = torch.as_tensor(labels).long()
            if labels.shape != (len(images),):
                raise ValueError(f"labels must be ({len(images)},); got {tuple(labels.shape)}")
            if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(class_names):
                raise ValueError(f"labels must lie in [0, {len(class_names)}) (one name per "
                                 f"class); got [{int(labels.min())}, {int(labels.max())}]")
        self.images, self.labels = images, labels
        self.captions = captions
        self.class_names = list(class_names)
        self.seed, self.epoch = int(seed), 0

    @property
    def num_classes(self) -> int:
        """Number of classes (0 when the dataset has no labels)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """Choose the captions of epoch ``epoch`` in :meth:`__getitem__`."""
        self.epoch = int(epoch)

    def caption_index(self, i: int) -> int:
        """Which of ``captions[i]`` :meth:`__getitem__` returns in the current epoch."""
        key = _mix64(_mix64(_mix64(self.seed & _MASK64) ^ (self.epoch & _MASK64)) ^ (i & _MASK64))
        return key % len(self.captions[i])

    def __getitem__(self, i):
        i = int(i)
        return self.images[i], self.captions[i][self.caption_index(i)]

    def sample_captions(self, indices: Union[Sequence[int], torch.Tensor],
                        generator: Optional[torch.Generator] = None) -> list[str]:
        """One caption per index, drawn uniformly from that image's captions with ``generator``
        (one ``torch.rand`` draw of ``len(indices)`` numbers, so the same generator state gives
        the same captions)."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).tolist()
        u = torch.rand(len(idx), generator=generator, dtype=torch.float64).tolist()
        return [self.captions[i][min(int(r * len(self.captions[i])), len(self.captions[i]) - 1)]
                for i, r in zip(idx, u)]

    def caption_for(self, i: int, generator: Optional[torch.Generator] = None) -> str:
        """One caption of image ``i`` drawn with ``generator`` (see :meth:`sample_captions`)."""
        return self.sample_captions([i], generator)[0]

    def unique_captions(self) -> list[str]:
        """Every distinct caption once, in first-seen order."""
        return list(dict.fromkeys(c for caps in self.captions for c in caps))

    def subset(self, n: int, seed: int = 0) -> "CaptionedImageDataset":
        """A random subset of ``n`` items, the same for the same ``seed`` (as
        :meth:`diffusion.data.datasets.TensorImageDataset.subset`)."""
        if not 0 < n <= len(self):
            raise ValueError(f"subset size must be in [1, {len(self)}], got {n}")
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        labels = None if self.labels is None else self.labels[idx]
        return CaptionedImageDataset(self.images[idx], [self.captions[i] for i in idx.tolist()],
                                     labels, self.class_names, seed=self.seed)


_FASHION_NOUNS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("a t-shirt", "a tee", "a top", "a short-sleeved top"),
     ("a tank top", "a crew neck tee", "a sleeveless top", "a cotton singlet")),
    (("a pair of trousers", "trousers", "pants", "a pair of pants"),
     ("jeans", "a pair of slacks", "chinos", "denim leggings")),
    (("a pullover", "a sweater", "a jumper", "a knitted sweater"),
     ("a sweatshirt", "a hoodie", "a wool jersey", "a turtleneck")),
    (("a dress", "a summer dress", "a long dress", "a woman's dress"),
     ("a gown", "a frock", "a sundress", "an evening gown")),
    (("a coat", "a jacket", "a winter coat", "a long coat"),
     ("an overcoat", "a parka", "a raincoat", "an anorak")),
    (("a sandal", "sandals", "a summer sandal", "a strappy sandal"),
     ("flip-flops", "open-toed footwear", "beach slippers", "a pair of slides")),
    (("a shirt", "a button-up shirt", "a long-sleeved shirt", "a collared shirt"),
     ("a blouse", "a flannel", "a button-down oxford", "a work blouse")),
    (("a sneaker", "running shoes", "a pair of trainers", "a sports shoe"),
     ("tennis shoes", "gym shoes", "athletic footwear", "a pair of kicks")),
    (("a bag", "a handbag", "a purse", "a shoulder bag"),
     ("a tote", "a satchel", "a clutch", "a briefcase")),
    (("an ankle boot", "a boot", "a pair of ankle boots", "a short boot"),
     ("a bootie", "a chelsea boot", "a cowboy boot", "a lace-up work boot")),
)
_TRAINING_TEMPLATES = ("{}", "a photo of {}", "a picture of {}", "a grayscale photo of {}",
                       "a small image of {}")
_HELD_OUT_TEMPLATES = ("{}", "an image showing {}", "{} on a plain background")


def _expand(templates: Sequence[str], nouns: Sequence[str]) -> tuple[str, ...]:
    return tuple(t.format(n) for t in templates for n in nouns)


#: ``FASHION_MNIST_TRAINING_PROMPTS[c]``: the 20 captions of class ``c`` (5 templates x 4 nouns).
FASHION_MNIST_TRAINING_PROMPTS: tuple[tuple[str, ...], ...] = tuple(
    _expand(_TRAINING_TEMPLATES, train) for train, _ in _FASHION_NOUNS)
#: ``FASHION_MNIST_HELD_OUT_PROMPTS[c]``: 12 paraphrases of class ``c`` (3 templates x 4 nouns)
#: that share no string, no noun phrase and no template (except the bare noun) with training.
FASHION_MNIST_HELD_OUT_PROMPTS: tuple[tuple[str, ...], ...] = tuple(
    _expand(_HELD_OUT_TEMPLATES, held) for _, held in _FASHION_NOUNS)


def _check_class_id(class_id: int) -> int:
    if not isinstance(class_id, int) or not 0 <= class_id < len(FASHION_MNIST_CLASSES):
        raise ValueError(f"class_id must be an int in [0, {len(FASHION_MNIST_CLASSES)}), "
                         f"got {class_id!r}")
    return class_id


def training_prompts(class_id: int) -> list[str]:
    """The captions Fashion-MNIST class ``class_id`` is trained with (ids as
    :data:`diffusion.data.datasets.FASHION_MNIST_CLASSES`). Raises ValueError for an id outside [0, 10)."""
    return list(FASHION_MNIST_TRAINING_PROMPTS[_check_class_id(class_id)])


def held_out_prompts(class_id: int) -> list[str]:
    """Paraphrases of Fashion-MNIST class ``class_id`` never used as training captions (other
    nouns: "tennis shoes", "athletic footwear" for Sneaker). Raises ValueError outside [0, 10)."""
    return list(FASHION_MNIST_HELD_OUT_PROMPTS[_check_class_id(class_id)])


def fashion_mnist_captions(split: str = "train", root: Optional[str] = None,
                           held_out: bool = False, seed: int = 0) -> CaptionedImageDataset:
    """Fashion-MNIST (Xiao et al. 2017) with every image captioned by its class's prompts.

    Images ``(N, 1, 28, 28)`` float32 in [-1, 1] from :func:`diffusion.data.datasets.fashion_mnist`
    (60,000 train / 10,000 test), labels int64 in [0, 10), captions
    :func:`training_prompts` of the label (or :func:`held_out_prompts` with ``held_out=True``,
    for evaluation only).

    Raises:
        ValueError: ``split`` is not ``"train"`` or ``"test"``.
        FileNotFoundError: no Fashion-MNIST files (see :func:`diffusion.data.datasets.fashion_mnist`).
    """
    base = fashion_mnist(split=split, root=root)
    table = FASHION_MNIST_HELD_OUT_PROMPTS if held_out else FASHION_MNIST_TRAINING_PROMPTS
    per_class = [list(p) for p in table]
    captions = [per_class[c] for c in base.labels.tolist()]  # shared lists, not copies
    return CaptionedImageDataset(base.images, captions, base.labels, base.class_names, seed=seed)


# --------------------------------------------------------------------------------------------
# Image folder with captions (the layout Hugging Face `datasets` calls "imagefolder").

def _read_metadata(path: Path) -> dict[str, list[str]]:
    """``{relative file name: captions}`` from a ``metadata.jsonl``; ``text`` or ``caption``
    holds a string or a list of strings."""
    out: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {number} is not valid JSON ({e.msg}): "
                                 f"{line.strip()[:80]!r}") from None
            if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
                raise ValueError(f"{path} line {number} needs a \"file_name\" string; got "
                                 f"{line.strip()[:80]!r}")
            text = row.get("text", row.get("caption"))
            texts = [text] if isinstance(text, str) else text
            if not isinstance(texts, list) or not texts or \
                    not all(isinstance(t, str) and t.strip() for t in texts):
                raise ValueError(f"{path} line {number} needs a non-empty \"text\" (or "
                                 f"\"caption\"): a string or a list of strings; got {text!r}")
            out[Path(row["file_name"]).as_posix()] = [t.strip() for t in texts]
    return out


def image_folder_captions(root: Union[str, Path], image_size: int, channels: int = 3,
                          seed: int = 0) -> CaptionedImageDataset:
    """Captioned images under ``root`` (searched recursively, sorted by path).

    Captions come from ``root/metadata.jsonl`` (lines ``{"file_name": "a/b.png", "text": "..."}``;
    ``"caption"`` is accepted for ``"text"``, and a list gives several captions) and, for images
    it does not name, from a ``.txt`` file beside the image with the same stem (one caption per
    non-empty line). If every image lies in a first-level sub-folder, the sub-folders are the
    classes (sorted names, as :func:`diffusion.data.datasets.image_folder`); otherwise ``labels`` is None.
    Images are converted to ``channels`` (1 = grayscale, 3 = RGB), resized to ``image_size`` square
    (bicubic), float32 ``(N, channels, image_size, image_size)`` in [-1, 1].

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        ValueError: bad ``image_size``/``channels``; no images; a malformed ``metadata.jsonl``
            line (its number is given); a metadata row naming a missing file; images without a
            caption (the first few are listed).
    """
    from PIL import Image

    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    files = sorted(p for p in base.rglob("*")
                   if p.is_file() and p.suffix.lower() in _IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no images with extensions {_IMAGE_EXTENSIONS} under {str(root)!r}")
    rel = [p.relative_to(base).as_posix() for p in files]
    metadata_file = base / "metadata.jsonl"
    metadata = _read_metadata(metadata_file) if metadata_file.is_file() else {}
    missing_files = sorted(set(metadata) - set(rel))
    if missing_files:
        raise ValueError(f"{metadata_file} names {len(missing_files)} image(s) not under "
                         f"{str(root)!r}: {missing_files[:5]}")
    captions: list[list[str]] = []
    uncaptioned = []
    for path, name in zip(files, rel):
        caps = metadata.get(name)
        side = path.with_suffix(".txt")
        if caps is None and side.is_file():
            caps = [s.strip() for s in side.read_text(encoding="utf-8").splitlines() if s.strip()]
        if not caps:
            uncaptioned.append(name)
        captions.append(caps or [])
    if uncaptioned:
        raise ValueError(f"{len(uncaptioned)} of {len(files)} images under {str(root)!r} have no "
                         f"caption (no metadata.jsonl row, no non-empty .txt beside them): "
                         f"{uncaptioned[:5]}")
    arrays = []
    for path in files:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            arrays.append(np.asarray(im.resize((image_size, image_size), Image.BICUBIC)))
    labels, class_names = None, []
    if all("/" in name for name in rel):
        class_names = sorted({name.split("/", 1)[0] for name in rel})
        labels = torch.tensor([class_names.index(name.split("/", 1)[0]) for name in rel])
    return CaptionedImageDataset(images_to_tensor(np.stack(arrays)), captions, labels, class_names,
                                 seed=seed)
