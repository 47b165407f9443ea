"""The quality-vs-NFE study of the shipped diffusion model (issue 3), generation part.

Fills the sample cache for every configuration of the study, in priority order, so that
``python -m diffusion sweep`` / ``evaluate`` later read the images instead of generating them:

1. the default sampler (dpmpp-2m) at 20 NFE, n = 10,000;
2. every registered sampler at 20 NFE (second-order samplers: the largest step count with NFE <= 20),
   n = 2,000;
3. NFE 5, 10, 50 for ddim, dpmpp-2m, unipc, euler and heun, n = 2,000;
4. DDPM at 250 steps, n = 2,000 (the reference line).

    python benchmarks/sampler_study.py --cache-dir runs/eval-cache/samples

Interrupt it at any time: it resumes at the first missing shard.
"""

from __future__ import annotations

import argparse
import time

import torch

from diffusion import DiffusionImagePipeline, default_model_path
from diffusion.evaluation.sampling import generate_samples
from samplers import list_samplers, steps_for_nfe

STUDY_SAMPLERS = ["ddim", "dpmpp-2m", "unipc", "euler", "heun"]


def study_configs(scheduler, default_n: int = 10_000, n: int = 2_000):
    yield "dpmpp-2m", 20, default_n
    late = ["deis", "lms", "pndm"]
    for name in [s for s in list_samplers() if s not in late and s != "dpmpp-2m"] + late:
        yield name, steps_for_nfe(name, scheduler, 20), n
    for nfe in (10, 5, 50):
        for name in STUDY_SAMPLERS:
            yield name, steps_for_nfe(name, scheduler, nfe), n
    yield "ddpm", 250, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=default_model_path())
    p.add_argument("--cache-dir", default="runs/eval-cache/samples")
    p.add_argument("--guidance-scale", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    args = p.parse_args()
    pipe = DiffusionImagePipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    dtype = None if args.fp32 else torch.bfloat16
    for name, steps, n in study_configs(pipe.scheduler):
        start = time.time()
        run = generate_samples(pipe, n, keep_images=False, cache_dir=args.cache_dir,
                               call_kwargs=dict(sampler=name, num_inference_steps=steps,
                                                guidance_scale=args.guidance_scale),
                               batch_size=args.batch_size, autocast_dtype=dtype, progress=False)
        print(f"{name:16s} steps={steps:4d} nfe={run.nfe:4d} n={n:6d} generated={run.generated:6d} "
              f"s/img={run.seconds_per_image:.4f} wall={time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
