"""``python -m diffusion compare``: every model side by side (quality, speed, memory, parameters,
training cost) on the same data and metrics (:func:`diffusion.evaluation.compare.compare`),
written as a Markdown table with CSV, JSON and plots beside it.

Example::

    python -m diffusion compare --models diffusion/weights/fashion-mnist-diffusion \\
        diffusion/weights/fashion-mnist-gan --num-samples 1000 --out runs/compare.md
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from diffusion.cli import options
from diffusion.cli.options import exit_on
from diffusion.cli.scoring import eval_kwargs


def add_parser(subparsers) -> argparse.ArgumentParser:
    c = subparsers.add_parser(
        "compare", help="every model side by side: quality, speed, memory, parameters, training "
                        "cost (Markdown + CSV + plots)",
        description="Evaluate every --models folder (diffusion at each --samplers x --steps; GAN "
                    "and VQ-VAE + prior with their saved settings) on the same data and metrics, "
                    "time them on this machine, and write --out (Markdown, the command above the "
                    "table) with compare.csv, compare.json and plots beside it.")
    c.add_argument("--models", nargs="+", required=True, metavar="DIR",
                   help="model folders (save_pretrained), any family")
    options.add_eval(c, model=False)
    options.add_samplers(c, default=None, help="diffusion models: comma-separated sampler names "
                                               "(default: each model's own)")
    options.add_steps_list(c, help="diffusion models: comma-separated num_inference_steps "
                                   "(default 20)")
    c.add_argument("--batch-sizes", type=options.int_list, default="1,16,64,256",
                   help="batch sizes timed for throughput (default 1,16,64,256)")
    options.add_cas(c, help="also CAS per row (trains a classifier each)",
                    steps_help="classifier steps for --cas (default: the shipped config's)")
    c.add_argument("--no-memory", action="store_true",
                   help="skip the fresh-process peak-memory measurement on CPU")
    c.add_argument("--out", default="runs/compare.md",
                   help="Markdown table; CSV, JSON and plots go to the folder of the same name "
                        "(default runs/compare.md -> runs/compare/)")
    c.set_defaults(metrics="fid,kid,precision,recall,accuracy,speckle")
    return c


def run(args) -> int:
    from diffusion.evaluation.compare import compare, plot_compare, write_markdown
    from diffusion.evaluation.sweep import write_csv

    options.check_run_sizes(args)
    given = [f"--{k.replace('_', '-')}" for k in options.DECODING_VALUES
             if getattr(args, k) is not None]
    if given:
        raise SystemExit(f"error: {', '.join(given)}: compare uses each model's saved decoding "
                         f"setting; evaluate one model with `evaluate` to vary it")
    if not str(args.out).endswith(".md"):
        raise SystemExit(f"error: --out must name a Markdown file (.md), got {args.out!r}")
    kwargs = eval_kwargs(args, None)
    kwargs.pop("accelerator")
    with exit_on(ValueError, FileNotFoundError):
        rows = compare(args.models, samplers=args.samplers.split(",") if args.samplers else None,
                       steps=args.steps, cas=args.cas, cas_steps=args.cas_steps,
                       batch_sizes=args.batch_sizes,
                       measure_memory=not args.no_memory, device=args.device,
                       class_prompts=options.class_prompts(args.prompts), **kwargs)
    if args.dataset == "image-folder":  # name the folder, not the hash of its pixels
        for row in rows:
            row["reference_dataset"] = f"image folder {args.dataset_root}"
    out = Path(args.out)
    folder = out.with_suffix("")
    write_csv(rows, folder / "compare.csv")
    (folder / "compare.json").write_text(json.dumps(rows, indent=2, default=str))
    metric = "fid" if "fid" in args.metrics.split(",") else None
    plots = plot_compare(rows, folder, metric=metric) if metric else []
    command = "python -m diffusion " + shlex.join(args.command_line)
    write_markdown(rows, out, command=command, plots=plots)
    print(f"wrote {out}, {folder / 'compare.csv'}, {folder / 'compare.json'}"
          + "".join(f", {p}" for p in plots))
    return 0
