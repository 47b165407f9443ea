"""``python -m diffusion gallery``: regenerate every picture of the README and the docs from the
shipped models (fixed seeds, small PNGs) into ``--out`` (default ``docs/images``), with
``gallery.json`` saying how each was made (:mod:`diffusion.gallery`).

Example::

    python -m diffusion gallery --out docs/images
    python -m diffusion gallery --only samplers,guidance --out docs/images
    python -m diffusion gallery --only training-steps --training-run runs/fashion-mnist-quick
"""

from __future__ import annotations

import argparse
import time

from diffusion.cli import options
from diffusion.cli.options import exit_on


def add_parser(subparsers) -> argparse.ArgumentParser:
    from diffusion.gallery import PICTURES

    g = subparsers.add_parser("gallery", help="regenerate the README/docs pictures from the "
                                              "shipped models",
                              description="Draw the README's and the docs' pictures with fixed seeds.")
    g.add_argument("--out", default="docs/images", help="folder of the PNGs and gallery.json")
    g.add_argument("--only", default=None,
                   help=f"comma list of pictures (default: all): {', '.join(PICTURES)}")
    options.add_model(g, help="class-conditional diffusion folder (default: the shipped one)")
    g.add_argument("--gan", default=None, help="GAN folder (default: the shipped one)")
    g.add_argument("--ar", default=None, help="VQ-VAE + prior folder (default: the shipped one)")
    g.add_argument("--text-model", default=None, help="text-to-image folder (default: the shipped one)")
    options.add_classifier(g, help="classifier folder that judges the text prompts (default: "
                                   "the shipped one)")
    g.add_argument("--training-run", default=None,
                   help="a training run folder: its samples/step-*.png make training_steps.png "
                        "(that picture is left out without it)")
    options.add_per_class(g, help="images per row of families.png (default 6)", default=6)
    options.add_sampler(g, help="sampler of the diffusion pictures (default euler-a)")
    options.add_steps(g)
    options.add_seed(g, help="image i of each call uses seed+i (default 0)")
    options.add_device(g)
    options.add_dataset_root(g, help="Fashion-MNIST folder for the speckle check's threshold")
    return g


def run(args) -> int:
    from diffusion.gallery import PICTURES, make_gallery
    from diffusion.paths import (default_ar_path, default_classifier_path, default_gan_path,
                                 default_model_path, default_text_model_path)

    options.check_sampler_name(args.sampler)
    only = None
    if args.only:
        only = [p.strip() for p in args.only.split(",") if p.strip()]
        unknown = [p for p in only if p not in PICTURES]
        if unknown:
            raise SystemExit(f"error: --only: unknown pictures {unknown}; choose from {list(PICTURES)}")
    elif args.training_run is None:
        only = [p for p in PICTURES if p != "training-steps"]
    start = time.time()
    with exit_on(FileNotFoundError, ValueError):
        manifest = make_gallery(
            args.out, only=only, model=args.model or default_model_path(),
            gan=args.gan or default_gan_path(), ar=args.ar or default_ar_path(),
            text_model=args.text_model or default_text_model_path(),
            classifier=args.classifier or default_classifier_path(),
            training_run=args.training_run, seed=args.seed, device=args.device,
            dataset_root=args.dataset_root, per_class=args.per_class,
            sampler=args.sampler or "euler-a",
            num_inference_steps=args.steps or options.DEFAULT_STEPS)
    print(f"gallery: {len(manifest['drawn_last'])} pictures in {time.time() - start:.1f} s, "
          f"{manifest['total_bytes'] / 1024:.0f} KB in {args.out}")
    return 0
