"""Emoji rendered from Debian's ``fonts-noto-color-emoji`` with Pillow, captioned from their Unicode
names (and English CLDR annotations from ``unicode-cldr-core`` where installed): the offline
captioned RGB dataset ``"emoji"`` (:func:`emoji_dataset`), cached on disk after the first render.

Example::

    >>> from diffusion.data.emoji import emoji_captions
    >>> emoji_captions("\N{RED APPLE}", cldr={})
    ['red apple', 'a red apple emoji']
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import unicodedata
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from diffusion.data.captions import CaptionedImageDataset
from diffusion.data.datasets import images_to_tensor
from diffusion.paths import default_cache_dir

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
