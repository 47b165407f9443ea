"""``python -m diffusion synthesize``: a labelled synthetic image-folder dataset
(:func:`diffusion.evaluation.synthesize.synthesize`).

Example::

    python -m diffusion synthesize --per-class 100 --out runs/synthetic
"""

from __future__ import annotations

import argparse
import shlex

from diffusion.cli import options
from diffusion.cli.options import exit_on


def add_parser(subparsers) -> argparse.ArgumentParser:
    y = subparsers.add_parser(
        "synthesize", help="export a labelled synthetic image-folder dataset",
        description="Generate --per-class images of every class and write them to --out as "
                    "<id>_<class>/*.png with metadata.jsonl and synthesis.json: a dataset "
                    "torchvision ImageFolder, Hugging Face datasets (imagefolder) and "
                    "diffusion.data.datasets read as it is.")
    options.add_model(y)
    options.add_per_class(y, required=True, help="images per class")
    y.add_argument("--out", required=True, help="dataset folder to create (absent or empty)")
    options.add_sampler(y)
    options.add_steps(y)
    options.add_run(y, batch_size=100)
    options.add_bf16(y)
    options.add_prompt_sets(y, help="text-to-image models: the prompts per class: 'held-out', "
                                    "'training' (Fashion-MNIST caption sets) or a JSON file of "
                                    "one list per class")
    y.add_argument("--overwrite", action="store_true",
                   help="replace --out if it holds an earlier export")
    options.add_device(y)
    options.add_quiet(y)
    options.add_decoding(y)
    return y


def run(args) -> int:
    import torch

    from diffusion.data.datasets import FASHION_MNIST_CLASSES
    from diffusion.evaluation.synthesize import synthesize
    from diffusion.pipelines.base import NonFiniteImagesError

    options.check_sampler_name(args.sampler)
    pipe = options.load_model(args.model, args.device, args.quiet)
    class_prompts = options.class_prompts_for(pipe, args.prompts)
    options.default_guidance(pipe, args)
    # The named prompt sets are Fashion-MNIST's: their classes name the folders.
    names = FASHION_MNIST_CLASSES if args.prompts in ("held-out", "training") else None
    command = getattr(args, "command_line", None)
    with exit_on(ValueError, NonFiniteImagesError):
        summary = synthesize(
            pipe, args.out, args.per_class, class_prompts=class_prompts, class_names=names,
            batch_size=args.batch_size, seed=args.seed, sampler=args.sampler,
            num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
            pipeline_kwargs={**options.decoding_options(pipe, args),
                             **({"guidance": options.guidance_from_args(args)}
                                if args.guidance else {})} or None,
            autocast_dtype=torch.bfloat16 if args.bf16 else None, progress=not args.quiet,
            overwrite=args.overwrite,
            extra_info={"command": "python -m diffusion " + shlex.join(command)} if command else None)
    print(f"wrote {summary['n']} images ({summary['num_classes']} classes x {args.per_class}, "
          f"NFE={summary['nfe']}) to {summary['folder']} with metadata.jsonl and synthesis.json "
          f"in {summary['seconds']:.1f}s")
    return 0
