"""Generation speed: the GAN baseline against the shipped diffusion model at its default settings.

Both sides generate the **same number of images in the same batches** (class labels cycling
0, 1, ..., one ``torch.Generator`` per image seeded ``seed + i``), fp32, ``output_type="pt"``,
under ``torch.inference_mode()``, with the same torch thread count. The diffusion side runs its
defaults: ``dpmpp-2m``, 20 steps, classifier-free guidance 2.0 (null and conditional rows in one
U-Net forward, so NFE 20); the GAN side is one generator forward (NFE 1), no truncation. After
``--warmup`` untimed passes per side, ``--repeats`` timed passes alternate the order of the two
sides (ABBA) so that load from other jobs drifting over time hits both alike.

Reported: per side the median / min wall seconds per pass and images per second (from the
median), NFE, parameters; the speed-up ``GAN images/s / diffusion images/s`` from the medians, and
the paired speed-up (median over repeats of the ratio of the two back-to-back passes), the steadier
figure on a shared machine.

Run (about 30-60 s with the defaults on 2 CPU cores shared with other jobs)::

    OMP_NUM_THREADS=1 python benchmarks/gan_vs_diffusion_speed.py
    python benchmarks/gan_vs_diffusion_speed.py --gan runs/gan-trial/final --images 200 --batch 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from diffusion import WEIGHTS_DIR, default_model_path
from diffusion.pipelines.loading import load_pipeline
from samplers import DEFAULT_SAMPLER

#: the shipped GAN (used when ``--gan`` is not given)
DEFAULT_GAN_PATH = str(WEIGHTS_DIR / "fashion-mnist-gan")
#: the diffusion model's default sampling settings (``DiffusionImagePipeline.__call__``)
DIFFUSION_STEPS, DIFFUSION_GUIDANCE = 20, 2.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gan", default=None,
                   help=f"GANPipeline folder (default: the shipped {DEFAULT_GAN_PATH} if present)")
    p.add_argument("--diffusion", default=default_model_path(),
                   help="DiffusionImagePipeline folder (default: the shipped model)")
    p.add_argument("--images", type=int, default=100, help="images per timed pass, each side")
    p.add_argument("--batch", type=int, default=50, help="images per pipeline call, each side")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per side (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes per side first")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    for name in ("images", "batch", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.gan is None:
        if not os.path.isdir(DEFAULT_GAN_PATH):
            p.error(f"no shipped GAN at {DEFAULT_GAN_PATH}; pass --gan DIR (a GANPipeline folder, "
                    f"e.g. <train.output_dir>/final)")
        args.gan = DEFAULT_GAN_PATH
    for name in ("gan", "diffusion"):
        if not os.path.isdir(getattr(args, name)):
            p.error(f"--{name} {getattr(args, name)!r} is not a folder")
    return args


def generate_all(pipe, num_images: int, batch: int, seed: int, num_classes: int,
                 **call_kwargs) -> tuple[torch.Tensor, int]:
    """``num_images`` images in calls of up to ``batch``: float ``(N, C, H, W)`` in [0, 1] and
    the NFE per image reported by the pipeline."""
    out, nfe = [], 0
    for start in range(0, num_images, batch):
        idx = range(start, min(start + batch, num_images))
        result = pipe(class_labels=[i % num_classes for i in idx], output_type="pt",
                      generator=[torch.Generator().manual_seed(seed + i) for i in idx],
                      precision="fp32", **call_kwargs)  # fp32 on both sides, whatever "auto" is
        out.append(result.images)
        nfe = result.nfe
    return torch.cat(out), nfe


def timed(fn, device: torch.device):
    """Wall seconds of one call of ``fn`` (synchronized on CUDA) and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def main(argv=None) -> dict:
    """Run the benchmark, print its table; return the figures (``speedup``, ``speedup_paired``,
    per side ``images_per_s``)."""
    args = parse_args(argv)
    pipes = {"GAN": load_pipeline(args.gan, quiet=True), "diffusion": load_pipeline(args.diffusion, quiet=True)}
    for pipe in pipes.values():
        pipe.to(args.device)
        for component in pipe.components.values():      # fp32 on both sides
            if isinstance(component, torch.nn.Module) and next(component.parameters()).dtype != torch.float32:
                component.to(torch.float32)
        pipe.set_progress_bar_config(disable=True)
    gan, diff = pipes["GAN"], pipes["diffusion"]
    if type(gan).__name__ != "GANPipeline":
        raise SystemExit(f"--gan {args.gan} holds a {type(gan).__name__}, not a GANPipeline")
    if gan.num_classes != diff.num_classes:
        raise SystemExit(f"class counts differ: GAN {gan.num_classes}, diffusion {diff.num_classes}")
    k = gan.num_classes
    device = torch.device(args.device)
    calls = {
        "GAN": lambda: generate_all(gan, args.images, args.batch, args.seed, k),
        "diffusion": lambda: generate_all(diff, args.images, args.batch, args.seed, k,
                                          sampler=DEFAULT_SAMPLER, num_inference_steps=DIFFUSION_STEPS,
                                          guidance_scale=DIFFUSION_GUIDANCE),
    }
    wall = {name: [] for name in calls}
    nfe = {}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for fn in calls.values():
                fn()
        for r in range(args.repeats):
            for name in (list(calls) if r % 2 == 0 else list(calls)[::-1]):   # ABBA
                seconds, (images, nfe[name]) = timed(calls[name], device)
                wall[name].append(seconds)
    med = {name: statistics.median(ts) for name, ts in wall.items()}
    speed = {name: args.images / med[name] for name in calls}
    speedup = speed["GAN"] / speed["diffusion"]
    speedup_paired = statistics.median(d / g for g, d in zip(wall["GAN"], wall["diffusion"]))
    params = {"GAN": sum(p.numel() for p in gan.generator_model.parameters()),
              "diffusion": sum(p.numel() for p in diff.unet.parameters())}

    print(f"GAN       : {args.gan}")
    print(f"diffusion : {args.diffusion} ({DEFAULT_SAMPLER}, {DIFFUSION_STEPS} steps, guidance "
          f"{DIFFUSION_GUIDANCE}: its defaults)")
    print(f"setup     : {args.images} images per pass in batches of {args.batch}, fp32, {device}, "
          f"{torch.get_num_threads()} thread(s), {args.warmup} warm-up + {args.repeats} timed "
          f"passes per side, ABBA order")
    print()
    print(f"{'':10s} {'params':>10s} {'NFE':>4s} {'median s':>9s} {'min s':>8s} {'images/s':>9s}")
    for name in calls:
        print(f"{name:10s} {params[name]:10,d} {nfe[name]:4d} {med[name]:9.3f} {min(wall[name]):8.3f} "
              f"{speed[name]:9.1f}")
    print(f"GAN speed-up (images/s GAN / diffusion): {speedup:.1f}x from medians, "
          f"{speedup_paired:.1f}x paired (median of back-to-back pass ratios)")
    return {"speedup": speedup, "speedup_paired": speedup_paired,
            "images_per_s": speed, "nfe": nfe, "seconds": wall}


if __name__ == "__main__":
    main()
