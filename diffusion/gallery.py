"""The gallery: every picture of the README and the docs, regenerated from the shipped models.

One call (:func:`make_gallery`, or ``python -m diffusion gallery --out docs/images``) draws each
picture with fixed seeds (image ``i`` of a call: seed ``seed + i``), writes it as a small PNG and
records how it was made in ``gallery.json`` beside them, so the pictures stay true when a model
or a default changes. The pictures (:data:`PICTURES`):

- ``families.png``: one grid per family, two side by side in each of two rows (diffusion and
  GAN; VQ-VAE + AR prior and text to image with its prompts under the rows), each titled with its NFE and seconds per image measured
  on the machine that drew it (one batched call after a warm-up call, wall clock).
- ``samplers.png``: a strip per sampler at NFE 5 / 10 / 20 / 50, the same seeds and classes in
  every strip (steps from :func:`samplers.steps_for_nfe`).
- ``guidance.png``: guidance scales 1 / 2 / 4 / 8, a row each, one image per class.
- ``ar_decoding.png``: the VQ-VAE + AR baseline's decoding strategies (greedy, temperature, top-k,
  top-p, beam search) on one class, the same seeds in every row.
- ``text_prompts.png``: the text-to-image model on training captions, on held-out paraphrases
  that work and on ones that do not: every held-out paraphrase is drawn and classified, and the
  rows shown are the best and the worst by the classifier's agreement with the intended class
  (written under each row), so which ones "work" is measured, not chosen by eye.
- ``training_steps.png``: the sample grids a training run wrote (``<run>/samples/step-*.png``)
  side by side, titled with their step (only with ``training_run``).

Every picture's images are also scored with the speckle measure
(:mod:`diffusion.evaluation.speckle`, threshold from the real Fashion-MNIST test images when the
images are 28 x 28 grayscale and the dataset is installed): ``gallery.json`` lists the flagged
cells of each picture (row, column), so a defective cell in a showcase grid is found by the
command as well as by eye.

Example::

    >>> from diffusion.gallery import make_gallery
    >>> manifest = make_gallery("docs/images")            # doctest: +SKIP
    >>> manifest["pictures"]["families"]["file"]          # doctest: +SKIP
    'families.png'
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

#: picture name -> what it shows (the order ``make_gallery`` draws them in)
PICTURES = {
    "families": "one grid per family side by side, titled with NFE and seconds per image",
    "samplers": "a strip per sampler at NFE 5 / 10 / 20 / 50 on the same seeds",
    "guidance": "guidance scales 1 / 2 / 4 / 8 on the same seeds",
    "ar-decoding": "the AR baseline's decoding strategies on one class",
    "text-prompts": "training captions and held-out paraphrases that work and that do not",
    "training-steps": "a training run's sample grids across steps",
}
#: samplers shown in ``samplers.png`` (those that apply to the model, in this order)
STRIP_SAMPLERS = ("ddim", "euler", "euler-a", "heun", "dpmpp-2m", "unipc",
                  "flow-euler", "flow-heun", "flow-dpmpp-2m", "edm-euler", "edm-heun", "edm-dpmpp-2m")
STRIP_NFES = (5, 10, 20, 50)
GUIDANCE_SCALES = (1.0, 2.0, 4.0, 8.0)
#: ``(label, call options)`` of the AR decoding rows (``AutoregressivePipeline.__call__``)
AR_STRATEGIES = (
    ("greedy", {"do_sample": False}),
    ("temperature 0.7", {"temperature": 0.7, "top_k": 0, "top_p": 1.0}),
    ("temperature 1.0", {"temperature": 1.0, "top_k": 0, "top_p": 1.0}),
    ("top-k 20", {"temperature": 1.0, "top_k": 20, "top_p": 1.0}),
    ("top-p 0.9", {"temperature": 1.0, "top_k": 0, "top_p": 0.9}),
    ("beam search (4 beams)", {"num_beams": 4}),
)
#: a held-out prompt "works" when at least this fraction of its images is classified as its class
WORKS_AT = 0.75

FAMILY_FONT = 16  # families.png is shown scaled down in the README: larger words
PAD = 2          # pixels between cells (white)
MARGIN = 8       # pixels around a panel's text


def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font (no system font needed, same glyphs everywhere)."""
    return ImageFont.load_default(size=size)


def _text_width(font, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(N, C, H, W)`` float in [0, 1] -> ``(N, H, W, C)`` uint8 (rounded, clamped)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class Panel:
    """A grid of images with its words: ``title`` lines above, ``column_groups`` (label, number of
    columns) above the columns, ``row_labels`` on the left, ``row_captions`` under each row.
    ``images``: ``(rows * columns, C, H, W)`` float in [0, 1], row-major; ``scale``: each image
    is enlarged this many times (nearest neighbour) so 28-pixel images stay legible."""

    images: torch.Tensor
    columns: int
    title: Sequence[str] = ()
    row_labels: Sequence[str] = ()
    row_captions: Sequence[str] = ()
    column_groups: Sequence[Tuple[str, int]] = ()
    scale: int = 1
    group_gap: int = 6

    def render(self, font_size: int = 12) -> Image.Image:
        font, bold = _font(font_size), _font(font_size + 2)
        cells = to_uint8(self.images)
        n, h, w, c = cells.shape
        rows = -(-n // self.columns)
        if self.row_labels and len(self.row_labels) != rows:
            raise ValueError(f"{len(self.row_labels)} row labels for {rows} rows")
        if self.row_captions and len(self.row_captions) != rows:
            raise ValueError(f"{len(self.row_captions)} row captions for {rows} rows")
        ch, cw = h * self.scale, w * self.scale
        line = font_size + 4
        label_w = max((_text_width(font, s) for s in self.row_labels), default=0)
        label_w = label_w + MARGIN if label_w else 0
        # x offset of each column: a gap between column groups
        xs, x, groups = [], label_w, list(self.column_groups) or [("", self.columns)]
        for gi, (_, k) in enumerate(groups):
            for _ in range(k):
                xs.append(x)
                x += cw + PAD
            x += self.group_gap if gi < len(groups) - 1 else 0
        grid_w = x - PAD
        title_h = len(self.title) * (line + 2) + (MARGIN // 2 if self.title else 0)
        groups_h = line if self.column_groups else 0
        caption_h = line if self.row_captions else 0
        row_h = ch + PAD + caption_h
        width = max(grid_w, *(_text_width(bold, t) for t in self.title), 1) if self.title else grid_w
        if self.row_captions:
            width = max(width, label_w + max(_text_width(font, s) for s in self.row_captions))
        height = title_h + groups_h + rows * row_h
        canvas = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(canvas)
        y = 0
        for i, t in enumerate(self.title):
            draw.text((0, y), t, fill="black", font=bold if i == 0 else font)
            y += line + 2
        y = title_h
        if self.column_groups:
            col = 0
            for label, k in groups:
                span = xs[col + k - 1] + cw - xs[col]
                draw.text((xs[col] + (span - _text_width(font, label)) // 2, y), label,
                          fill="black", font=font)
                col += k
            y += groups_h
        mode = "L" if c == 1 else "RGB"
        for i in range(n):
            r, k = divmod(i, self.columns)
            cell = Image.fromarray(cells[i, :, :, 0] if c == 1 else cells[i], mode)
            if self.scale != 1:
                cell = cell.resize((cw, ch), Image.NEAREST)
            canvas.paste(cell.convert("RGB"), (xs[k], y + r * row_h))
        for r in range(rows):
            top = y + r * row_h
            if self.row_labels:
                s = self.row_labels[r]
                draw.text((label_w - MARGIN - _text_width(font, s), top + (ch - font_size) // 2), s,
                          fill="black", font=font)
            if self.row_captions:
                draw.text((label_w, top + ch + 1), self.row_captions[r], fill="#333333", font=font)
        return canvas


def side_by_side(pictures: Sequence[Image.Image], gap: int = 16) -> Image.Image:
    """Pictures next to each other, tops aligned, on white."""
    width = sum(p.width for p in pictures) + gap * (len(pictures) - 1)
    canvas = Image.new("RGB", (width, max(p.height for p in pictures)), "white")
    x = 0
    for p in pictures:
        canvas.paste(p, (x, 0))
        x += p.width + gap
    return canvas


def tiled(pictures: Sequence[Image.Image], columns: int, gap: int = 16) -> Image.Image:
    """Pictures in rows of ``columns`` (:func:`side_by_side` each), the rows stacked with ``gap``
    white pixels between them, left-aligned."""
    rows = [side_by_side(pictures[i:i + columns], gap) for i in range(0, len(pictures), columns)]
    canvas = Image.new("RGB", (max(r.width for r in rows),
                               sum(r.height for r in rows) + gap * (len(rows) - 1)), "white")
    y = 0
    for r in rows:
        canvas.paste(r, (0, y))
        y += r.height + gap
    return canvas


def save_png(picture: Image.Image, path: Path) -> int:
    """Write ``picture`` as an optimised PNG (grayscale when it has no colour), atomically;
    returns its size in bytes."""
    arr = np.asarray(picture)
    if arr.ndim == 3 and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
        picture = picture.convert("L")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    picture.save(tmp, format="PNG", optimize=True)
    tmp.replace(path)
    return path.stat().st_size


# -- drawing from pipelines ------------------------------------------------------------------------

@dataclass
class Drawn:
    """Images of one timed pipeline call: ``images`` ``(N, C, H, W)`` in [0, 1], ``nfe`` (network
    calls per image, as the pipeline reports), ``seconds_per_image`` (wall clock / N)."""

    images: torch.Tensor
    nfe: int
    seconds_per_image: float


def draw(pipe, n: int, seed: int, warm_up: bool = False, seeds: Optional[Sequence[int]] = None,
         **call) -> Drawn:
    """Call ``pipe`` for ``n`` images, image ``i`` seeded ``seed + i`` (or ``seeds[i]``);
    ``warm_up`` first makes one untimed image (so one-time costs stay out of the seconds per
    image)."""
    from diffusion.pipelines.base import generators_from_seeds

    if warm_up:
        one = {k: (v[:1] if isinstance(v, list) else v) for k, v in call.items()}
        if "num_images_per_prompt" in one and not any(k in one for k in ("class_labels", "prompt")):
            one["num_images_per_prompt"] = 1
        pipe(**one, output_type="pt", generator=generators_from_seeds([seed]))
    start = time.perf_counter()
    seeds = range(seed, seed + n) if seeds is None else seeds
    out = pipe(**call, output_type="pt", generator=generators_from_seeds(seeds))
    seconds = time.perf_counter() - start
    return Drawn(out.images.float().cpu(), int(out.nfe), seconds / n)


class SpeckleCheck:
    """Flags images whose speckle score exceeds the real test images' 99th percentile
    (:mod:`diffusion.evaluation.speckle`); inactive (flags nothing, ``active`` False) when the
    images are not 28 x 28 grayscale or Fashion-MNIST is not installed."""

    def __init__(self, dataset_root: Optional[str] = None):
        self.threshold: Optional[float] = None
        self.reason = ""
        try:
            from diffusion.data.datasets import fashion_mnist
            from diffusion.evaluation.speckle import speckle_scores, speckle_threshold

            real = fashion_mnist(split="test", root=dataset_root).images
            self.threshold = speckle_threshold(speckle_scores((real + 1) / 2))
        except FileNotFoundError as e:
            self.reason = f"no speckle check: {e}"

    @property
    def active(self) -> bool:
        return self.threshold is not None

    def flagged(self, images: torch.Tensor, columns: int) -> List[List[int]]:
        """``[row, column]`` of each flagged image of a row-major grid with ``columns`` columns."""
        from diffusion.evaluation.speckle import speckle_scores

        if not self.active or tuple(images.shape[1:]) != (1, 28, 28):
            return []
        scores = speckle_scores(images)
        return [list(divmod(int(i), columns)) for i in torch.nonzero(scores > self.threshold).flatten()]


@dataclass
class Gallery:
    """The models and settings of one gallery run (see :func:`make_gallery`)."""

    out: Path
    model: Optional[str] = None
    gan: Optional[str] = None
    ar: Optional[str] = None
    text_model: Optional[str] = None
    classifier: Optional[str] = None
    training_run: Optional[str] = None
    seed: int = 0
    device: Optional[str] = None
    dataset_root: Optional[str] = None
    per_class: int = 6
    sampler: str = "euler-a"
    num_inference_steps: int = 20
    guidance_scale: float = 2.0
    log: Callable[[str], None] = print
    manifest: Dict = field(default_factory=dict)

    def __post_init__(self):
        self.out = Path(self.out)
        self._pipes: dict = {}
        self._speckle: Optional[SpeckleCheck] = None

    # -- helpers --
    def pipe(self, path: str):
        if path not in self._pipes:
            from diffusion.pipelines.loading import load_pipeline

            self._pipes[path] = load_pipeline(path, device=self.device, quiet=True)
            self._pipes[path].set_progress_bar_config(disable=True)
        return self._pipes[path]

    @property
    def speckle(self) -> SpeckleCheck:
        if self._speckle is None:
            self._speckle = SpeckleCheck(self.dataset_root)
            if not self._speckle.active:
                self.log(self._speckle.reason)
        return self._speckle

    def class_names(self, pipe) -> List[str]:
        names = list(pipe.config.class_names or [])
        return names or [f"class {c}" for c in range(pipe.num_classes or 0)]

    def diffusion_call(self, **extra) -> dict:
        return {"sampler": self.sampler, "num_inference_steps": self.num_inference_steps,
                "guidance_scale": self.guidance_scale, **extra}

    def record(self, name: str, picture: Image.Image, settings: dict,
               flagged: Dict[str, List[List[int]]]) -> dict:
        file = f"{name.replace('-', '_')}.png"
        size = save_png(picture, self.out / file)
        entry = {"file": file, "bytes": size, "width": picture.width, "height": picture.height,
                 **settings, "speckle_flagged": flagged,
                 "speckle_flagged_count": sum(len(v) for v in flagged.values())}
        self.manifest.setdefault("pictures", {})[name] = entry
        count = entry["speckle_flagged_count"]
        self.log(f"wrote {self.out / file} ({size / 1024:.0f} KB, {picture.width}x{picture.height}"
                 f"{f', {count} speckle-flagged cells' if count else ''})")
        return entry

    # -- the pictures --
    def families(self) -> Optional[dict]:
        panels, settings, flagged = [], {}, {}
        for family, path in (("diffusion", self.model), ("GAN", self.gan),
                             ("VQ-VAE + AR prior", self.ar)):
            if path is None:
                continue
            pipe = self.pipe(path)
            names = self.class_names(pipe)
            labels = [c for c in range(len(names)) for _ in range(self.per_class)]
            call = self.diffusion_call() if family == "diffusion" else {}
            drawn = draw(pipe, len(labels), self.seed, warm_up=True, class_labels=labels, **call)
            what = (f"{self.sampler}, {self.num_inference_steps} steps, guidance "
                    f"{self.guidance_scale:g}" if family == "diffusion" else
                    "one generator forward" if family == "GAN" else "saved decoding setting")
            panels.append(Panel(drawn.images, self.per_class, scale=2,
                                title=[family, what, f"{drawn.nfe} NFE, {drawn.seconds_per_image:.3f} s/image"],
                                row_labels=names if len(panels) % 2 == 0 else ()
                                ).render(FAMILY_FONT))
            settings[family] = {"model": _shown_path(path), "nfe": drawn.nfe, "call": call,
                                "seconds_per_image": round(drawn.seconds_per_image, 4),
                                "images": len(labels)}
            flagged[family] = self.speckle.flagged(drawn.images, self.per_class)
        if self.text_model is not None:
            from diffusion.data.captions import held_out_prompts, training_prompts
            from samplers import sampler_name

            pipe = self.pipe(self.text_model)
            prompts = [training_prompts(c)[1] for c in (0, 3, 5, 7, 9)]
            prompts += [held_out_prompts(c)[1] for c in (1, 8)]
            per = [p for p in prompts for _ in range(self.per_class)]
            call = {"num_inference_steps": self.num_inference_steps,
                    "guidance_scale": self.guidance_scale}
            drawn = draw(pipe, len(per), self.seed, warm_up=True, prompt=per, **call)
            panels.append(Panel(drawn.images, self.per_class, scale=2,
                                title=["text to image", f"{sampler_name(pipe)}, "
                                       f"{self.num_inference_steps} steps, guidance {self.guidance_scale:g}",
                                       f"{drawn.nfe} NFE, {drawn.seconds_per_image:.3f} s/image"],
                                row_captions=[f'"{p}"' for p in prompts]).render(FAMILY_FONT))
            settings["text to image"] = {"model": _shown_path(self.text_model), "nfe": drawn.nfe, "call": call,
                                         "prompts": prompts, "images": len(per),
                                         "seconds_per_image": round(drawn.seconds_per_image, 4)}
            flagged["text to image"] = self.speckle.flagged(drawn.images, self.per_class)
        if not panels:
            return None
        return self.record("families", tiled(panels, 2, gap=24), {"families": settings}, flagged)

    def samplers(self) -> Optional[dict]:
        from samplers import samplers_for, steps_for_nfe

        if self.model is None:
            return None
        pipe = self.pipe(self.model)
        names = self.class_names(pipe)
        classes = [c % len(names) for c in (0, 1, 3, 7, 9)]   # a top, trousers, a dress, ...
        applicable = set(samplers_for(pipe.scheduler))
        rows, labels, settings, flagged = [], [], {}, {}
        for sampler in (s for s in STRIP_SAMPLERS if s in applicable):
            strip, entry = [], {}
            for nfe in STRIP_NFES:
                steps = steps_for_nfe(sampler, pipe.scheduler, nfe)
                drawn = draw(pipe, len(classes), self.seed, class_labels=classes, sampler=sampler,
                             num_inference_steps=steps, guidance_scale=self.guidance_scale)
                strip.append(drawn.images)
                entry[str(nfe)] = {"steps": steps, "nfe": drawn.nfe,
                                   "seconds_per_image": round(drawn.seconds_per_image, 4)}
            images = torch.cat(strip)
            rows.append(images)
            labels.append(sampler)
            settings[sampler] = entry
            flagged[sampler] = [[0, col] for _, col in self.speckle.flagged(images, len(images))]
        if not rows:
            return None
        groups = [(f"NFE {nfe}", len(classes)) for nfe in STRIP_NFES]
        picture = Panel(torch.cat(rows), len(classes) * len(STRIP_NFES), column_groups=groups,
                        row_labels=labels, scale=1,
                        title=[f"Samplers at 5 / 10 / 20 / 50 NFE (guidance {self.guidance_scale:g}; "
                               f"the same seeds {self.seed}..{self.seed + len(classes) - 1} and classes in every strip)"]
                        ).render()
        return self.record("samplers", picture, {"model": _shown_path(self.model), "classes": classes,
                                                 "samplers": settings}, flagged)

    def guidance(self) -> Optional[dict]:
        if self.model is None:
            return None
        pipe = self.pipe(self.model)
        names = self.class_names(pipe)
        labels = [c for c in range(len(names)) for _ in range(2)]
        rows, settings, flagged = [], {}, {}
        for scale in GUIDANCE_SCALES:
            drawn = draw(pipe, len(labels), self.seed, class_labels=labels,
                         **self.diffusion_call(guidance_scale=scale))
            rows.append(drawn.images)
            settings[f"{scale:g}"] = {"nfe": drawn.nfe, "seconds_per_image": round(drawn.seconds_per_image, 4)}
            flagged[f"{scale:g}"] = [[0, col] for _, col in self.speckle.flagged(drawn.images, len(labels))]
        picture = Panel(torch.cat(rows), len(labels), scale=1,
                        row_labels=[f"guidance {s:g}" for s in GUIDANCE_SCALES],
                        column_groups=[(n.split("/")[0], 2) for n in names],
                        title=[f"Guidance scale ({self.sampler}, {self.num_inference_steps} steps; "
                               f"two seeds per class, the same in every row)"]).render()
        return self.record("guidance", picture, {"model": _shown_path(self.model), "sampler": self.sampler,
                                                 "num_inference_steps": self.num_inference_steps,
                                                 "scales": settings}, flagged)

    def ar_decoding(self, class_name: str = "Sneaker", n: int = 8) -> Optional[dict]:
        if self.ar is None:
            return None
        pipe = self.pipe(self.ar)
        label = pipe.class_id(class_name) if class_name in self.class_names(pipe) else 0
        rows, settings, flagged = [], {}, {}
        for name, options in AR_STRATEGIES:
            drawn = draw(pipe, n, self.seed, class_labels=[label] * n, **options)
            rows.append(drawn.images)
            settings[name] = {"call": options, "nfe": drawn.nfe,
                              "seconds_per_image": round(drawn.seconds_per_image, 4)}
            flagged[name] = [[0, col] for _, col in self.speckle.flagged(drawn.images, n)]
        guidance = pipe.decoding_settings()["guidance_scale"]
        picture = Panel(torch.cat(rows), n, scale=2, row_labels=[s for s, _ in AR_STRATEGIES],
                        title=[f"VQ-VAE + AR prior: decoding strategies, class "
                               f"{self.class_names(pipe)[label]} (guidance {guidance:g}; the same seeds in every row)"]
                        ).render()
        return self.record("ar-decoding", picture, {"model": _shown_path(self.ar), "class_label": label,
                                                    "strategies": settings}, flagged)

    def text_prompts(self, per_prompt: int = 6, shown: int = 4, batch_prompts: int = 10
                     ) -> Optional[dict]:
        """Training captions; the ``shown`` held-out paraphrases the classifier agrees with most
        and least (every paraphrase is drawn ``per_prompt`` times, seeds ``seed ..
        seed + per_prompt - 1``, and classified; ``batch_prompts`` prompts per call)."""
        if self.text_model is None:
            return None
        from diffusion.data.captions import FASHION_MNIST_HELD_OUT_PROMPTS, training_prompts
        from diffusion.models.classifier import load_classifier

        pipe = self.pipe(self.text_model)
        classifier = load_classifier(self.classifier)
        call = {"num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale}
        seeds = list(range(self.seed, self.seed + per_prompt))

        def scan(pairs: Sequence[Tuple[str, int]]) -> list:
            """``(agreement, prompt, class, images)`` of each ``(prompt, class)``."""
            out = []
            for lo in range(0, len(pairs), batch_prompts):
                chunk = pairs[lo:lo + batch_prompts]
                images = draw(pipe, per_prompt * len(chunk), self.seed, seeds=seeds * len(chunk),
                              prompt=[p for p, _ in chunk for _ in seeds], **call).images
                predicted = classifier.predict(images * 2 - 1).view(len(chunk), per_prompt)
                for k, (p, c) in enumerate(chunk):
                    acc = float((predicted[k] == c).float().mean())
                    out.append((acc, p, c, images[k * per_prompt:(k + 1) * per_prompt]))
            return out

        scanned = scan([(p, c) for c, prompts in enumerate(FASHION_MNIST_HELD_OUT_PROMPTS)
                        for p in prompts])
        ranked = sorted(scanned, key=lambda t: (-t[0], t[1]))
        best = _distinct_classes(ranked, shown)
        worst = _distinct_classes(ranked[::-1], shown)
        trained = scan([(training_prompts(c)[1], c) for c in (0, 5, 8, 9)])
        names = list(classifier.config.class_names or []) or [str(c) for c in range(10)]
        rows = [("training caption", t) for t in trained] + [("held-out, works", t) for t in best] + \
               [("held-out, fails", t) for t in worst]
        captions = [f'{kind}: "{p}" (meant: {names[c]}; classifier agrees on '
                    f'{round(acc * per_prompt)}/{per_prompt})' for kind, (acc, p, c, _) in rows]
        images = torch.cat([t[3] for _, t in rows])
        picture = Panel(images, per_prompt, scale=2, row_captions=captions,
                        title=["Text to image: training captions and held-out paraphrases",
                               f"{len(scanned)} held-out paraphrases drawn {per_prompt} times each; shown: "
                               f"those the classifier agrees with most and least (one per class)"]).render()
        works = sum(acc >= WORKS_AT for acc, *_ in scanned)
        self.log(f"held-out paraphrases: {works} of {len(scanned)} work (>= {WORKS_AT:.0%} of "
                 f"{per_prompt} images classified as the intended class)")
        return self.record("text-prompts", picture, {
            "model": _shown_path(self.text_model), "call": call, "per_prompt": per_prompt,
            "held_out_scanned": len(scanned), "held_out_working": works, "works_at": WORKS_AT,
            "rows": [{"kind": kind, "prompt": p, "class": names[c], "agreement": acc}
                     for kind, (acc, p, c, _) in rows],
            "held_out": [{"prompt": p, "class": names[c], "agreement": acc}
                         for acc, p, c, _ in scanned]},
            {"": self.speckle.flagged(images, per_prompt)})

    def training_steps(self, most: int = 4) -> Optional[dict]:
        if self.training_run is None:
            return None
        grids = sorted((Path(self.training_run) / "samples").glob("step-*.png"))
        if not grids:
            raise FileNotFoundError(f"{self.training_run!r} has no samples/step-*.png (the "
                                    f"training loop writes them every train.sample_every steps)")
        if len(grids) > most:   # evenly spaced, the last always kept
            grids = [grids[round(i * (len(grids) - 1) / (most - 1))] for i in range(most)]
        font = _font(14)
        pictures = []
        for g in grids:
            step = int(g.stem.split("-")[1])
            img = Image.open(g).convert("RGB")
            canvas = Image.new("RGB", (img.width, img.height + 20), "white")
            ImageDraw.Draw(canvas).text((0, 0), f"step {step:,}", fill="black", font=font)
            canvas.paste(img, (0, 20))
            pictures.append(canvas)
        return self.record("training-steps", side_by_side(pictures), {
            "training_run": _shown_path(self.training_run), "grids": [g.name for g in grids]}, {})


def _distinct_classes(ranked: Sequence[tuple], k: int) -> list:
    """The first ``k`` entries ``(agreement, prompt, class, images)`` of ``ranked`` whose classes
    differ (fewer if there are fewer classes)."""
    out, seen = [], set()
    for entry in ranked:
        if entry[2] not in seen:
            out.append(entry)
            seen.add(entry[2])
        if len(out) == k:
            break
    return out


def _shown_path(path: Optional[str]) -> Optional[str]:
    """``path`` relative to the working directory when inside it (so gallery.json does not name
    the machine's folders)."""
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def make_gallery(out: Union[str, Path] = "docs/images", only: Optional[Sequence[str]] = None,
                 **models_and_settings) -> dict:
    """Draw the gallery's pictures into ``out`` and write ``out/gallery.json``; returns that manifest.

    Args:
        out: folder of the PNGs (created).
        only: picture names (keys of :data:`PICTURES`) to draw; default all whose models are given.
        **models_and_settings: fields of :class:`Gallery`: ``model`` (class-conditional diffusion
            folder), ``gan``, ``ar``, ``text_model``, ``classifier`` (folders; ``None`` leaves out
            the pictures that need it), ``training_run`` (a run folder with ``samples/``),
            ``seed`` (int, image i uses seed + i), ``device``, ``dataset_root``, ``per_class``,
            ``sampler``, ``num_inference_steps``, ``guidance_scale``, ``log`` (a ``print``-like
            callable).

    Raises:
        ValueError: an unknown picture name in ``only``.
        FileNotFoundError: a given folder is missing or not a saved pipeline; ``training_run``
            without sample grids.
    """
    only = list(PICTURES) if only is None else list(only)
    unknown = [p for p in only if p not in PICTURES]
    if unknown:
        raise ValueError(f"unknown pictures {unknown}; choose from {list(PICTURES)}")
    from diffusion.pipelines.base import check_pipeline_folder

    for key in ("model", "gan", "ar", "text_model", "classifier"):
        if models_and_settings.get(key) is not None:
            if key == "classifier":
                if not (Path(models_and_settings[key]) / "config.json").is_file():
                    raise FileNotFoundError(f"classifier {models_and_settings[key]!r} is not a saved "
                                            f"classifier folder (no config.json)")
            else:
                check_pipeline_folder(models_and_settings[key])
    if models_and_settings.get("training_run") is not None and \
            not Path(models_and_settings["training_run"]).is_dir():
        raise FileNotFoundError(f"training run {models_and_settings['training_run']!r} does not exist")
    from diffusion.hardware import hardware_description

    gallery = Gallery(Path(out), **models_and_settings)
    gallery.out.mkdir(parents=True, exist_ok=True)
    manifest_path = gallery.out / "gallery.json"
    if manifest_path.is_file():   # redrawing some pictures keeps the others' entries
        gallery.manifest.update(json.loads(manifest_path.read_text()))
    start = time.perf_counter()
    methods = {"families": gallery.families, "samplers": gallery.samplers,
               "guidance": gallery.guidance, "ar-decoding": gallery.ar_decoding,
               "text-prompts": gallery.text_prompts, "training-steps": gallery.training_steps}
    drawn = []
    for name in only:
        gallery.log(f"drawing {name}: {PICTURES[name]}"
                    + (" (120 prompts x 6 images: the longest)" if name == "text-prompts" else ""))
        if methods[name]() is not None:
            drawn.append(name)
    gallery.manifest.update(
        seed=gallery.seed, hardware=hardware_description(gallery.device),
        torch_threads=torch.get_num_threads(), drawn_last=drawn,
        wall_seconds_last=round(time.perf_counter() - start, 1))
    gallery.manifest["total_bytes"] = sum(p["bytes"] for p in gallery.manifest["pictures"].values()) \
        if gallery.manifest.get("pictures") else 0
    tmp = manifest_path.with_name(".tmp-gallery.json")
    tmp.write_text(json.dumps(gallery.manifest, indent=2) + "\n")
    tmp.replace(manifest_path)
    return gallery.manifest
