"""``python -m diffusion generate``: a grid of images (a row per class or prompt) and/or one PNG
per image, from any saved pipeline (diffusion, GAN, VQ-VAE + prior).

Image ``i`` uses seed ``--seed + i`` (one generator per image), so a grid does not depend on
``--batch-size``. Example::

    python -m diffusion generate --classes Sneaker,Bag --per-class 8 --sampler euler-a \\
        --steps 30 --guidance-scale 3 --seed 7 --out grid.png --out-dir samples/
"""

from __future__ import annotations

import argparse
import inspect
import re
import time
from pathlib import Path

from diffusion.cli import options
from diffusion.cli.options import exit_on


def add_parser(subparsers) -> argparse.ArgumentParser:
    g = subparsers.add_parser("generate", help="generate a grid (and/or per-image files)",
                              description="Generate images; by default a 10x10 grid (a row per "
                                          "class) from the shipped Fashion-MNIST model.")
    options.add_model(g)
    g.add_argument("--classes", default="all",
                   help="comma-separated class ids or names (e.g. 0,7 or Sneaker,Bag), or 'all'")
    g.add_argument("--prompt", action="append", default=None,
                   help="text prompt for a text-to-image model; repeat for several (a grid row "
                        "each); with --classes on a class+text model they pair up one to one")
    g.add_argument("--negative-prompt", default=None,
                   help="replaces the empty prompt in classifier-free guidance (text models)")
    options.add_per_class(g, "--per-prompt", default=10,
                          help="images per class or per prompt (default 10)")
    options.add_sampler(g, help="sampler name (see `python -m diffusion samplers`); default: the "
                                "model's own scheduler (dpmpp-2m for the shipped class model)")
    options.add_steps(g)
    options.add_guidance_scale(g, help="classifier-free guidance scale; 1 disables guidance "
                                       "(default 2.0 for diffusion, 1 with a consistency "
                                       "sampler; AR: the model's saved setting)")
    options.add_guidance(g)
    g.add_argument("--eta", type=float, default=None, help="DDIM eta (default 0)")
    g.add_argument("--truncation", type=float, default=None,
                   help="GAN pipelines: resample latent components beyond this (default: none)")
    options.add_seed(g, help="image i uses seed+i (default 0)")
    options.add_batch_size(g, 100, help="images per forward batch")
    options.add_device(g)
    options.add_precision(g)
    g.add_argument("--out", default="samples/grid.png", help="grid PNG path ('' to skip)")
    g.add_argument("--out-dir", default=None, help="also write one PNG per image here")
    options.add_quiet(g, help="no progress bar")
    options.add_decoding(g)
    return g


def parse_classes(text: str, pipe) -> list[int]:
    """``--classes``: ``all`` (every class; none for an unconditional model) or ids/names."""
    if text in ("all", ""):
        if pipe.num_classes is None:
            return []
        return list(range(pipe.num_classes))
    return [pipe.class_id(part) for part in text.split(",")]


def slug(name: str) -> str:
    """A file-name stem: runs of other characters than ``[A-Za-z0-9_-]`` become one ``-``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "image"


def _model_folder(args) -> str:
    """``--model`` (default: the shipped model), checked to hold a saved pipeline; ``--quiet``
    also silences diffusers' own progress bars."""
    from diffusion.paths import default_model_path

    model = args.model or default_model_path()
    if not Path(model).is_dir():
        raise SystemExit(f"error: model folder {model!r} does not exist (train one with "
                         f"`python -m training --config ...`; its pipeline is in <output_dir>/final)")
    if not any((Path(model) / name).is_file() for name in ("model_index.json", "config.json")):
        raise SystemExit(f"error: {model!r} is not a saved pipeline (no model_index.json); "
                         f"use the folder written by save_pretrained, e.g. <output_dir>/final")
    if args.quiet:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    return model


def _call_options(pipe, args) -> dict:
    """The flags ``pipe`` takes; a family flag it has no use for (``--sampler`` for a GAN) is
    refused by :func:`options.refuse_unused`."""
    accepted = set(inspect.signature(pipe.__call__).parameters)
    options.default_guidance(pipe, args)
    given = {k: v for k, v in (("num_inference_steps", args.steps),
                               ("guidance_scale", args.guidance_scale), ("eta", args.eta),
                               ("sampler", args.sampler), ("truncation", args.truncation),
                               ("guidance", options.guidance_from_args(args)),
                               ("precision", options.precision_from_args(args)))
             if k in accepted and v is not None}
    given.update(options.decoding_options(pipe, args))
    return given


def _rows(pipe, args, model):
    """``(class labels or None, prompts or None)``: what each grid row shows."""
    prompts = args.prompt
    takes_text = getattr(pipe, "takes_text", False)
    if prompts and not takes_text:
        raise SystemExit(f"error: --prompt needs a text-conditional model; {model!r} has no text "
                         f"encoder (use --classes)")
    if takes_text and not prompts and pipe.num_classes is None:
        raise SystemExit(f"error: {model!r} is a text-to-image model: pass --prompt "
                         f"(repeatable), e.g. --prompt \"a photo of a sneaker\" --prompt \"a dress\"")
    if args.negative_prompt is not None and not takes_text:
        raise SystemExit("error: --negative-prompt needs a text-conditional model")
    with exit_on(ValueError):
        classes = [] if prompts and args.classes == "all" else parse_classes(args.classes, pipe)
    if prompts and classes and len(classes) != len(prompts):
        raise SystemExit(f"error: --classes and --prompt pair up one to one: got {len(classes)} "
                         f"classes and {len(prompts)} prompts")
    return classes or None, prompts


def _write_files(images, seeds, labels, prompts, pipe, args) -> None:
    from torchvision.utils import save_image

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = pipe.config.class_names or []
    for i, img in enumerate(images):
        if prompts:
            stem = f"{slug(prompts[i // args.per_class])[:60]}_{seeds[i]:06d}"
        elif labels is not None:
            c = labels[i // args.per_class]
            stem = f"{slug(names[c]) if c < len(names) else f'class{c}'}_{seeds[i]:06d}"
        else:
            stem = f"image_{seeds[i]:06d}"
        save_image(img, out_dir / f"{stem}.png")
    print(f"wrote {len(images)} PNG files to {out_dir}")


def run(args) -> int:
    import torch
    from torchvision.utils import make_grid, save_image

    from diffusion.pipelines.base import NonFiniteImagesError, generators_from_seeds
    from samplers import sampler_name

    # 1. Check the flags and load the pipeline.
    options.check_sampler_name(args.sampler)
    model = _model_folder(args)
    start = time.time()
    pipe = options.load_model(model, args.device, args.quiet)
    call = _call_options(pipe, args)
    labels, prompts = _rows(pipe, args, model)
    rows = len(prompts) if prompts else len(labels or ())
    n = args.per_class * max(1, rows)
    seeds = [args.seed + i for i in range(n)]
    if prompts and args.negative_prompt is not None:
        call["negative_prompt"] = args.negative_prompt
    # 2. Sample in batches; image i (row i // per_class) gets its own generator, seed + i.
    images = []
    nfe = 0
    for lo in range(0, n, args.batch_size):
        chunk = slice(lo, min(n, lo + args.batch_size))
        rows_of_chunk = [i // args.per_class for i in range(chunk.start, chunk.stop)]
        batch_labels = [labels[r] for r in rows_of_chunk] if labels is not None else None
        batch_text = {"prompt": [prompts[r] for r in rows_of_chunk]} if prompts else {}
        with exit_on(ValueError, NonFiniteImagesError):
            out = pipe(class_labels=batch_labels,
                       num_images_per_prompt=1 if rows else chunk.stop - chunk.start,
                       output_type="pt", **call, **batch_text,
                       generator=generators_from_seeds(seeds[chunk]))
        images.append(out.images)
        nfe = out.nfe
    images = torch.cat(images)
    dtype = pipe.network_dtype(call.get("precision")) if hasattr(pipe, "network_dtype") else None
    precision = f" precision={'bf16' if dtype == torch.bfloat16 else 'fp32'}"
    # 3. Write the grid and/or the files, then one line saying how they were made.
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        save_image(make_grid(images, nrow=args.per_class if rows else
                             int(len(images) ** 0.5 + 0.999), padding=2, pad_value=1.0), args.out)
        per_row = " a row per prompt" if prompts else " a row per class" if rows else ""
        print(f"wrote {args.out} ({len(images)} images{',' if per_row else ''}{per_row})")
    if args.out_dir:
        _write_files(images, seeds, labels, prompts, pipe, args)
    if "num_inference_steps" in call:
        sampler = args.sampler or sampler_name(pipe)
        guidance = pipe.guidance_method(call.get("guidance")).name
        print(f"sampler={sampler} steps={args.steps} NFE={nfe} guidance={guidance} guidance_scale="
              f"{args.guidance_scale} seed={args.seed}{precision} time={time.time() - start:.1f}s")
    else:
        decoding = ""
        if hasattr(pipe, "decoding_settings"):  # the setting actually used (saved + flags)
            decoding = " " + " ".join(f"{k}={v}" for k, v in pipe.decoding_settings(
                **{k: v for k, v in call.items() if k not in ("use_cache", "precision")}).items())
        print(f"{type(pipe).__name__} NFE={nfe}{decoding} seed={args.seed}{precision} "
              f"time={time.time() - start:.1f}s")
    return 0
