"""Why pndm scores worse than the other samplers in docs/results/evaluation.md: timestep spacing.

Compares, on the shipped model (20 steps, guidance 2.0, bf16, n = 500, classifier features, FID
against the 10,000 real test images): the registry's pndm (trailing spacing, our PNDM step),
diffusers' own ``PNDMScheduler`` with trailing spacing, the same with its default leading spacing,
and the registry's ddim.

    OMP_NUM_THREADS=1 python benchmarks/pndm_spacing.py      # ~5 min on 2 CPU cores

Measured 2026-11-29 (2 shared CPU cores): registry pndm FID 1.126 (acc 0.942), diffusers PNDM
trailing 1.126 (0.942), diffusers PNDM leading 0.849 (0.946), registry ddim 0.755 (0.944).
"""

import argparse

import torch
from diffusers import PNDMScheduler

from diffusion import default_model_path
from diffusion.evaluation import evaluate
from diffusion.pipelines.loading import load_pipeline
from samplers import training_schedule


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    pipe = load_pipeline(default_model_path(), quiet=True)
    registered = pipe.scheduler
    base = training_schedule(registered)
    kw = dict(num_samples=args.num_samples, metrics="fid,accuracy", guidance_scale=2.0,
              num_inference_steps=args.steps, cache_dir=None, progress=False,
              autocast_dtype=torch.bfloat16)
    rows = [("registry pndm (trailing)", "pndm", None), ("registry ddim (trailing)", "ddim", None)]
    for spacing in ("trailing", "leading"):
        rows.append((f"diffusers PNDMScheduler ({spacing})", None,
                     PNDMScheduler(**base, timestep_spacing=spacing, skip_prk_steps=True,
                                   set_alpha_to_one=spacing == "trailing")))
    for label, sampler, scheduler in rows:
        pipe.scheduler = scheduler or registered
        r = evaluate(pipe, sampler=sampler, **kw)
        print(f"{label:40s} NFE={r['nfe']:3d} n={r['n']} FID={r['fid']:.4f} "
              f"accuracy={r['accuracy']:.4f} ({r['feature_network']})", flush=True)


if __name__ == "__main__":
    main()
