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
    from diffusion.metrics import conditional_accuracy, load_classifier
    from samplers import DEFAULT_SAMPLER, list_samplers

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=default_model_path())
    p.add_argument("--classifier", default=None, help="default: the shipped classifier")
    p.add_argument("--samplers", default="all", help="comma-separated names, 'all', or 'none' (default-sampler row only)")
    p.add_argument("--steps", type=int, default=25, help="steps for every sampler but ddpm")
    p.add_argument("--ddpm-steps", type=int, default=100)
    p.add_argument("--default-steps", type=int, default=20, help="steps for the default-sampler row")
    p.add_argument("--guidance-scale", type=float, default=2.0)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--bf16", action="store_true", help="sample under bf16 autocast (faster on CPU)")
    p.add_argument("--out", default="docs/results/sampler_accuracy")
    args = p.parse_args(argv)

    pipe = DiffusionImagePipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    clf = load_classifier(args.classifier)
    names = {"all": list_samplers(), "none": []}.get(args.samplers) or args.samplers.split(",")
    runs = [(DEFAULT_SAMPLER, args.default_steps, "default")]
    runs += [(n, args.ddpm_steps if n == "ddpm" else args.steps, "") for n in names]

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache_path = out.with_suffix(".json")
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    results = cache.setdefault("results", {})
    for name, steps, tag in runs:
        key = f"{name}|{steps}|{args.guidance_scale}|{args.num_samples}|{'bf16' if args.bf16 else 'fp32'}"
        if key not in results:
            r = conditional_accuracy(pipe, clf, num_samples=args.num_samples, sampler=name,
                                     num_inference_steps=steps, guidance_scale=args.guidance_scale,
                                     batch_size=args.batch_size,
                                     autocast_dtype=torch.bfloat16 if args.bf16 else None)
            results[key] = r
            cache["setup"] = {"model": str(args.model), "hardware": f"{os.cpu_count()} CPU cores "
                              f"({platform.machine()})", "torch_threads": torch.get_num_threads(),
                              "command": " ".join(["python", *sys.argv])}
            cache_path.write_text(json.dumps(cache, indent=1) + "\n")
        r = results[key]
        print(f"{name:16s} steps={steps:4d} NFE={r['nfe']:4d} accuracy={r['accuracy']:.3f} "
              f"s/img={r['seconds_per_image']:.4f} {tag}", flush=True)

    lines = [f"# Conditional accuracy per sampler\n",
             f"Model `{args.model}`, classifier: shipped Fashion-MNIST classifier, n = "
             f"{args.num_samples} per row (classes cycling, image i seeded i), guidance_scale = "
             f"{args.guidance_scale}, {'bf16 autocast' if args.bf16 else 'fp32'}, "
             f"{cache['setup']['hardware']}.\n",
             f"Command: `{cache['setup']['command']}`\n",
             "| sampler | steps | NFE | conditional accuracy | worst class | seconds / image |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, steps, tag in runs:
        key = f"{name}|{steps}|{args.guidance_scale}|{args.num_samples}|{'bf16' if args.bf16 else 'fp32'}"
        r = results[key]
        label = f"{name} (default)" if tag else name
        lines.append(f"| {label} | {steps} | {r['nfe']} | {r['accuracy']:.3f} | "
                     f"{min(r['per_class']):.3f} | {r['seconds_per_image']:.4f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')} and {cache_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
