"""Command line: ``python -m diffusion generate|samplers ...`` (also the ``diffusion-centric`` script).

Examples::

    python -m diffusion generate --out samples/grid.png             # shipped model, 10x10 grid
    python -m diffusion generate --classes Sneaker,Bag --per-class 8 --sampler euler-a \\
        --steps 30 --guidance-scale 3 --seed 7 --out grid.png --out-dir samples/
    python -m diffusion samplers                                      # list sampler names
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path


def _parse_classes(text: str, pipe) -> list[int]:
    if text in ("all", ""):
        if pipe.num_classes is None:
            return []
        return list(range(pipe.num_classes))
    return [pipe.class_id(part) for part in text.split(",")]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "image"


def cmd_generate(args) -> int:
    import torch
    from torchvision.utils import make_grid, save_image

    from diffusion import DiffusionImagePipeline, default_model_path
    from samplers import list_samplers

    if args.sampler is not None and args.sampler not in list_samplers():
        raise SystemExit(f"error: unknown sampler {args.sampler!r}; choose one of {list_samplers()}")
    model = args.model or default_model_path()
    if not Path(model).is_dir():
        raise SystemExit(f"error: model folder {model!r} does not exist (train one with "
                         f"`python -m training --config ...`; its pipeline is in <output_dir>/final)")
    if not (Path(model) / "model_index.json").is_file():
        raise SystemExit(f"error: {model!r} is not a saved pipeline (no model_index.json); "
                         f"use the folder written by save_pretrained, e.g. <output_dir>/final")
    if args.quiet:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    start = time.time()
    pipe = DiffusionImagePipeline.from_pretrained(model)
    pipe.to(args.device)
    pipe.set_progress_bar_config(disable=args.quiet)
    try:
        classes = _parse_classes(args.classes, pipe)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    labels = classes or None
    n = args.per_class * max(1, len(classes))
    seeds = [args.seed + i for i in range(n)]
    images = []
    nfe = 0
    for lo in range(0, n, args.batch_size):
        chunk = slice(lo, min(n, lo + args.batch_size))
        batch_labels = None
        if labels is not None:
            batch_labels = [labels[i // args.per_class] for i in range(chunk.start, chunk.stop)]
        try:
            out = pipe(class_labels=batch_labels,
                       num_images_per_prompt=1 if labels is not None else chunk.stop - chunk.start,
                       num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                       eta=args.eta, sampler=args.sampler, output_type="pt",
                       generator=[torch.Generator().manual_seed(s) for s in seeds[chunk]])
        except ValueError as e:
            raise SystemExit(f"error: {e}")
        images.append(out.images)
        nfe = out.nfe
    images = torch.cat(images)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        save_image(make_grid(images, nrow=args.per_class if labels is not None else
                             int(len(images) ** 0.5 + 0.999), padding=2, pad_value=1.0), args.out)
        print(f"wrote {args.out} ({len(images)} images, a row per class)" if labels is not None
              else f"wrote {args.out} ({len(images)} images)")
    if args.out_dir:
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        names = pipe.config.class_names or []
        for i, img in enumerate(images):
            if labels is not None:
                c = labels[i // args.per_class]
                stem = f"{_slug(names[c]) if c < len(names) else f'class{c}'}_{seeds[i]:06d}"
            else:
                stem = f"image_{seeds[i]:06d}"
            save_image(img, out_dir / f"{stem}.png")
        print(f"wrote {len(images)} PNG files to {out_dir}")
    sampler = args.sampler or type(pipe.scheduler).__name__
    print(f"sampler={sampler} steps={args.steps} NFE={nfe} guidance_scale="
          f"{args.guidance_scale} seed={args.seed} time={time.time() - start:.1f}s")
    return 0


def cmd_samplers(args) -> int:
    from samplers import list_samplers, sampler_spec

    for name in list_samplers():
        spec = sampler_spec(name)
        kind = "stochastic" if spec.stochastic else "deterministic"
        print(f"{name:16s} {spec.scheduler_class.__name__:34s} {kind:13s} {spec.source}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diffusion",
                                     description="Generate images with a trained diffusion pipeline.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate a grid (and/or per-image files)",
                       description="Generate images; by default a 10x10 grid (a row per class) "
                                   "from the shipped Fashion-MNIST model.")
    g.add_argument("--model", default=None,
                   help="pipeline folder (save_pretrained); default: the shipped Fashion-MNIST model")
    g.add_argument("--classes", default="all",
                   help="comma-separated class ids or names (e.g. 0,7 or Sneaker,Bag), or 'all'")
    g.add_argument("--per-class", type=int, default=10, help="images per class (default 10)")
    g.add_argument("--sampler", default="dpmpp-2m",
                   help="sampler name (see `python -m diffusion samplers`); default dpmpp-2m")
    g.add_argument("--steps", type=int, default=20, help="num_inference_steps (default 20)")
    g.add_argument("--guidance-scale", type=float, default=2.0,
                   help="classifier-free guidance scale; 1 disables guidance (default 2.0)")
    g.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default 0)")
    g.add_argument("--seed", type=int, default=0, help="image i uses seed+i (default 0)")
    g.add_argument("--batch-size", type=int, default=100, help="images per forward batch")
    g.add_argument("--device", default="cpu", help="torch device (default cpu)")
    g.add_argument("--out", default="samples/grid.png", help="grid PNG path ('' to skip)")
    g.add_argument("--out-dir", default=None, help="also write one PNG per image here")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_generate)
    s = sub.add_parser("samplers", help="list the registered samplers")
    s.set_defaults(func=cmd_samplers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "per_class", 1) < 1 or getattr(args, "steps", 1) < 1 or \
            getattr(args, "batch_size", 1) < 1:
        raise SystemExit("error: --per-class, --steps and --batch-size must be >= 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
