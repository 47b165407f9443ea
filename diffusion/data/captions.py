"""Captioned image datasets for text-to-image training: emoji, Fashion-MNIST with captions, image
folders with captions.

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

import hashlib
import json
import os
import tempfile
import unicodedata
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from diffusion.paths import default_cache_dir
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


# --------------------------------------------------------------------------------------------
# Emoji rendered from Debian's fonts-noto-color-emoji, captions from Unicode names and CLDR.

#: Debian's ``fonts-noto-color-emoji`` (a CBDT colour-bitmap font; glyphs are 136x128 at size 109).
NOTO_COLOR_EMOJI = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
#: Debian's ``unicode-cldr-core``: English emoji keywords and text-to-speech names.
CLDR_ANNOTATIONS_EN = Path("/usr/share/unicode/cldr/common/annotations/en.xml")
_BITMAP_SIZE = 109  # the only size a CBDT font renders at
_CELL = 136  # glyph advance; the em box is 136 x 128, padded to a 136 x 136 square
# Code points scanned for glyphs: Latin-1 .. CJK symbols (keycap bases, (c), arrows, dingbats,
# circled ideographs) and the supplementary emoji blocks. Unnamed (newer than Python's
# unicodedata), combining, format, private-use and space code points are skipped.
_SCAN_RANGES = (range(0x20, 0x3400), range(0x1F000, 0x1FC00))
_SKIP_CATEGORIES = {"Mn", "Me", "Cf", "Cc", "Zs", "Co", "Cn"}
_EMOJI_CACHE_VERSION = 2  # bump when rendering or captions change: old cache files are then ignored


def _cldr_annotations(path: Path) -> dict[str, tuple[Optional[str], list[str]]]:
    """``{emoji: (tts name or None, [keywords])}`` for single-code-point entries of a CLDR
    annotations file (``<annotation cp="🍎">apple | fruit | red</annotation>`` and
    ``<annotation cp="🍎" type="tts">red apple</annotation>``)."""
    import xml.etree.ElementTree as ET

    out: dict[str, tuple[Optional[str], list[str]]] = {}
    for node in ET.parse(path).getroot().iter("annotation"):
        cp, text = node.get("cp", ""), (node.text or "").strip()
        if len(cp) != 1 or not text:
            continue
        tts, keywords = out.get(cp, (None, []))
        if node.get("type") == "tts":
            tts = text
        else:
            keywords = [k.strip() for k in text.split("|") if k.strip()]
        out[cp] = (tts, keywords)
    return out


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def emoji_captions(char: str, cldr: Optional[dict] = None) -> list[str]:
    """Captions of one emoji: its Unicode name lower-cased, the CLDR text-to-speech name,
    ``"a <tts name> emoji"`` (the Unicode name without CLDR) and the CLDR keywords joined by
    commas (the tts name and keywords where CLDR has the emoji). Distinct, in that order.

    >>> emoji_captions("\\U0001F600")
    ['grinning face', 'a grinning face emoji']
    """
    name = unicodedata.name(char).lower()
    tts, keywords = (cldr or {}).get(char, (None, []))
    spoken = tts or name
    captions = [name, spoken, f"{_article(spoken)} {spoken} emoji"]
    if keywords:
        captions.append(", ".join(keywords))
    return list(dict.fromkeys(captions))


def _emoji_code_points(font) -> list[int]:
    """Named code points that the font draws (non-empty mask), ascending."""
    out = []
    for block in _SCAN_RANGES:
        for cp in block:
            ch = chr(cp)
            if unicodedata.category(ch) in _SKIP_CATEGORIES or not unicodedata.name(ch, None):
                continue
            if font.getmask(ch).getbbox():
                out.append(cp)
    return out


def _render_emoji(font, code_points: Sequence[int], image_size: int,
                  background: tuple[int, int, int]) -> np.ndarray:
    """uint8 ``(N, image_size, image_size, 3)``: each glyph's 136 x 128 em box centred in a
    136 x 136 square over ``background``, downscaled with Lanczos (antialiased)."""
    from PIL import Image, ImageDraw

    out = np.empty((len(code_points), image_size, image_size, 3), dtype=np.uint8)
    for n, cp in enumerate(code_points):
        glyph = Image.new("RGBA", (_CELL, _CELL), (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((0, (_CELL - 128) // 2), chr(cp), font=font, embedded_color=True)
        canvas = Image.new("RGBA", (_CELL, _CELL), (*background, 255))
        image = Image.alpha_composite(canvas, glyph).convert("RGB")
        out[n] = np.asarray(image.resize((image_size, image_size), Image.LANCZOS))
    return out


def _file_stamp(path: Path) -> Optional[list]:
    if not path.is_file():
        return None
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def emoji_dataset(image_size: int = 32, background: Sequence[int] = (255, 255, 255),
                  cache_dir: Optional[Union[str, Path]] = None,
                  font_path: Union[str, Path] = NOTO_COLOR_EMOJI,
                  cldr_path: Union[str, Path, None] = CLDR_ANNOTATIONS_EN,
                  seed: int = 0) -> CaptionedImageDataset:
    """Emoji of Debian's ``fonts-noto-color-emoji`` as RGB images with captions.

    Every single code point that has a Unicode name (Python's ``unicodedata``, Unicode 14 on
    Python 3.11) and a glyph in the font is rendered (no ZWJ sequences, flags, keycaps or
    skin-tone variants): 1,404 images with Noto Color Emoji 2.042 (Debian bookworm). Images are
    float32 ``(N, 3, image_size, image_size)`` in [-1, 1]; the em box is kept whole, so each
    emoji keeps its designed size and position. Captions (see :func:`emoji_captions`) come from
    the Unicode names and, when Debian's ``unicode-cldr-core`` is installed (``cldr_path``),
    CLDR English annotations: 2 to 4 per emoji. ``labels`` is ``None`` (no classes).

    Rendering takes about 1 s; the result is cached in ``cache_dir`` (default
    ``$DIFFUSION_CENTRIC_CACHE`` or ``~/.cache/diffusion-centric``) as ``emoji-*.npz``, keyed by
    ``image_size``, ``background``, the font and CLDR files (path, size, mtime), and the Pillow
    and Unicode versions. Deterministic: the same inputs give the same bytes.

    Raises:
        ValueError: ``image_size`` not in [1, 512], or ``background`` not three ints in [0, 255].
        FileNotFoundError: the font is missing (install Debian's ``fonts-noto-color-emoji``).
    """
    import PIL

    if not isinstance(image_size, int) or not 1 <= image_size <= 512:
        raise ValueError(f"image_size must be an int in [1, 512], got {image_size!r}")
    background = tuple(background)
    if len(background) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in background):
        raise ValueError(f"background must be three ints in [0, 255] (RGB), got {background!r}")
    font_path = Path(font_path)
    if not font_path.is_file():
        raise FileNotFoundError(f"emoji font {str(font_path)!r} not found; install it with "
                                f"`sudo apt-get install fonts-noto-color-emoji` or pass font_path=")
    cldr_path = Path(cldr_path) if cldr_path else None
    key = json.dumps({"version": _EMOJI_CACHE_VERSION, "image_size": image_size,
                      "background": background, "font": _file_stamp(font_path),
                      "cldr": _file_stamp(cldr_path) if cldr_path else None,
                      "pillow": PIL.__version__, "unicode": unicodedata.unidata_version})
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = cache / f"emoji-{image_size}px-{digest}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            images, captions = z["images"], json.loads(str(z["captions"]))
    else:
        images, captions = _build_emoji(font_path, cldr_path, image_size, background)
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, images=images, captions=np.array(json.dumps(captions)),
                                    key=np.array(key))
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is shared like any other file
            os.replace(tmp, path)  # atomic: readers see the old state or the whole file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return CaptionedImageDataset(images_to_tensor(images), captions, seed=seed)


def _build_emoji(font_path: Path, cldr_path: Optional[Path], image_size: int,
                 background: tuple[int, int, int]) -> tuple[np.ndarray, list[list[str]]]:
    from PIL import ImageFont

    # BASIC layout: one glyph per code point, no raqm shaping (which fails on some code points).
    font = ImageFont.truetype(str(font_path), _BITMAP_SIZE, layout_engine=ImageFont.Layout.BASIC)
    cldr = _cldr_annotations(cldr_path) if cldr_path and cldr_path.is_file() else {}
    code_points = _emoji_code_points(font)
    images = _render_emoji(font, code_points, image_size, background)
    return images, [emoji_captions(chr(cp), cldr) for cp in code_points]


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (Xiao et al. 2017) with captions.

# Per class: noun phrases used in training, and different noun phrases kept for evaluation.
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


# --------------------------------------------------------------------------------------------

_CAPTIONED: dict[str, Callable[..., CaptionedImageDataset]] = {
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
    if name not in _CAPTIONED:
        raise ValueError(f"unknown captioned dataset {name!r}; known: {sorted(_CAPTIONED)}")
    if name == "image-folder-captions" and not kwargs.get("root"):
        raise ValueError("dataset 'image-folder-captions' needs root=<folder of captioned images>")
    ds = _CAPTIONED[name](seed=seed, **kwargs)
    return ds.subset(subset, seed=seed) if subset else ds
