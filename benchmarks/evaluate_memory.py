"""Time ``evaluate`` and show that its peak memory does not grow with n.

Each n runs in a fresh Python process (peak resident memory is a per-process high-water mark), on
the shipped model with the default sampler (dpmpp-2m, 20 steps, guidance 2.0). Generated images
stream through the feature networks one shard (500 images) at a time; what grows with n is only
the features (128 float64 per image = 1 KiB) and the labels.

    python benchmarks/evaluate_memory.py                         # n = 1,000 and 10,000, bf16
    python benchmarks/evaluate_memory.py --cache-dir runs/eval-cache   # reuse cached samples
    python benchmarks/evaluate_memory.py --no-cache --steps 2      # generation included, quick

With ``--cache-dir`` pointing at a cache that already holds the images, the timing is the
evaluation itself (features, reference statistics, metrics) and ``seconds_per_image`` is the
generation time recorded when the images were made.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch
from diffusion import default_model_path
from diffusion.evaluation import evaluate
from diffusion.pipelines.loading import load_pipeline
args = json.loads(sys.argv[1])
pipe = load_pipeline(default_model_path(), quiet=True)
start = time.perf_counter()
r = evaluate(pipe, num_samples=args["n"], sampler="dpmpp-2m", num_inference_steps=args["steps"],
             guidance_scale=2.0, cache_dir=args["cache_dir"], progress=False,
             autocast_dtype=torch.bfloat16 if args["bf16"] else None)
r["wall_seconds"] = time.perf_counter() - start
print("RESULT " + json.dumps(r, default=str))
"""


def run(n: int, cache_dir, bf16: bool, steps: int = 20) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD,
                          json.dumps({"n": n, "cache_dir": cache_dir, "bf16": bf16,
                                      "steps": steps})],
                         capture_output=True, text=True, check=True)
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-samples", default="1000,10000", help="comma-separated n (default 1000,10000)")
    p.add_argument("--cache-dir", default=None, help="evaluation cache (default: none, generate)")
    p.add_argument("--no-cache", action="store_true", help="ignore --cache-dir; generate everything")
    p.add_argument("--fp32", action="store_true", help="sample in float32 (default: bf16 autocast)")
    p.add_argument("--steps", type=int, default=20,
                   help="sampler steps (default 20; fewer makes a --no-cache run quick)")
    args = p.parse_args()
    cache = None if args.no_cache else args.cache_dir
    rows = []
    for n in [int(v) for v in args.num_samples.split(",")]:
        r = run(n, cache, not args.fp32, args.steps)
        rows.append(r)
        print(f"n={n:6d} steps={args.steps} wall={r['wall_seconds']:8.1f}s generated={r['generated']:6d} "
              f"gen s/img={r['seconds_per_image']:.4f} peak RSS={r['peak_memory_bytes'] / 2**20:8.1f} MiB "
              f"FID={r['fid']:.3f} ({r['feature_network']}) hardware: {r['hardware']}", flush=True)
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(f"peak memory ratio n={b['n']} / n={a['n']}: "
              f"{b['peak_memory_bytes'] / a['peak_memory_bytes']:.3f} "
              f"(n ratio {b['n'] / a['n']:.0f})")


if __name__ == "__main__":
    main()
