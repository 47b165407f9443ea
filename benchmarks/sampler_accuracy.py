"""Conditional accuracy of every registered sampler on a class-conditional model.

For each sampler: ``--num-samples`` images (classes cycling, image i seeded i), classified by the
shipped Fashion-MNIST classifier; prints a Markdown table and writes it (plus JSON) to ``--out``.
Results are cached per configuration in the JSON, so an interrupted run resumes.

    python benchmarks/sampler_accuracy.py                      # shipped model, 1,000 samples each
    python benchmarks/sampler_accuracy.py --model runs/x/final --num-samples 200 --out /tmp/acc
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch


def main(argv=None) -> int:
    from diffusion import DiffusionImagePipeline, default_model_path
    from diffusion.evaluation.accuracy import conditional_accuracy
    from diffusion.models.classifier import load_classifier
    from samplers import DEFAULT_SAMPLER, list_samplers

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=default_model_path())
    p.add_argument("--classifier", default=None, help="default: the shipped classifier")
    p.add_argument("--samplers", default="all", help="comma-separated names, 'all', or 'none' (default-sampler row only)")
    p.add_argument("--steps", type=int, default=25, help="steps for every sampler but ddpm")
    p.add_argument("--ddpm-steps", type=int, default=100)
    p.add_argument("--default-steps", type=int, default=20, help="steps for the default-sampler row")
    p.add_argument("--guidance-scale", type=float, default=2.0)
    p.add_argument("--num-samples", type=int, default=1000, help="per sampler row")
    p.add_argument("--default-num-samples", type=int, default=1000, help="default-sampler row")
    p.add_argument("--reuse-larger", action="store_true",
                   help="use a cached result with more samples for a row if there is one")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--bf16", action="store_true", help="sample under bf16 autocast (faster on CPU)")
    p.add_argument("--out", default="docs/results/sampler_accuracy")
    args = p.parse_args(argv)

    if args.samplers == "all":
        names = list_samplers()
    elif args.samplers == "none":
        names = []
    else:
        names = args.samplers.split(",")
    unknown = [n for n in names if n not in list_samplers()]
    if unknown:
        p.error(f"unknown sampler(s) {unknown}; choose from {list_samplers()}")
    if not (Path(args.model) / "model_index.json").is_file():
        p.error(f"--model {args.model!r} is not a pipeline folder (no model_index.json)")
    pipe = DiffusionImagePipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    clf = load_classifier(args.classifier)
    runs = [(DEFAULT_SAMPLER, args.default_steps, args.default_num_samples, "default")]
    runs += [(n, args.ddpm_steps if n == "ddpm" else args.steps, args.num_samples, "") for n in names]
    precision = "bf16" if args.bf16 else "fp32"

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache_path = out.with_suffix(".json")
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    results = cache.setdefault("results", {})

    def cached(name, steps, n):
        """The cached result for this row; with --reuse-larger, also one with more samples."""
        prefix = f"{name}|{steps}|{args.guidance_scale}|"
        found = [(r["n"], k) for k, r in results.items()
                 if k.startswith(prefix) and k.endswith(f"|{precision}")
                 and (r["n"] == n or (args.reuse_larger and r["n"] > n))]
        return results[max(found)[1]] if found else None

    rows = []
    for name, steps, n, tag in runs:
        r = cached(name, steps, n)
        if r is None:
            r = conditional_accuracy(pipe, clf, num_samples=n, sampler=name,
                                     num_inference_steps=steps, guidance_scale=args.guidance_scale,
                                     batch_size=args.batch_size,
                                     autocast_dtype=torch.bfloat16 if args.bf16 else None)
            results[f"{name}|{steps}|{args.guidance_scale}|{n}|{precision}"] = r
            cache["setup"] = {"model": str(args.model), "hardware": f"{os.cpu_count()} CPU cores "
                              f"({platform.machine()})", "torch_threads": torch.get_num_threads(),
                              "command": " ".join(["python", *sys.argv])}
            cache_path.write_text(json.dumps(cache, indent=1) + "\n")
        rows.append((name, steps, tag, r))
        print(f"{name:16s} steps={steps:4d} NFE={r['nfe']:4d} n={r['n']:5d} accuracy={r['accuracy']:.3f} "
              f"s/img={r['seconds_per_image']:.4f} {tag}", flush=True)

    lines = ["# Conditional accuracy per sampler\n",
             f"Model `{args.model}`; classifier: the shipped Fashion-MNIST classifier (92.5% on the "
             f"real test split); n images per row (classes cycling, image i seeded i); "
             f"guidance_scale = {args.guidance_scale}; {'bf16 autocast' if args.bf16 else 'fp32'}; "
             f"{cache['setup']['hardware']}, seconds per image measured while other jobs shared "
             f"the machine.\n",
             f"Command: `python benchmarks/sampler_accuracy.py {' '.join(sys.argv[1:])}`\n",
             "| sampler | steps | NFE | n | conditional accuracy | worst class | seconds / image |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, steps, tag, r in rows:
        label = f"{name} (default)" if tag else name
        lines.append(f"| {label} | {steps} | {r['nfe']} | {r['n']} | {r['accuracy']:.3f} | "
                     f"{min(r['per_class']):.3f} | {r['seconds_per_image']:.4f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')} and {cache_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
