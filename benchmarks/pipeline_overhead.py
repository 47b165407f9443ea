"""Pipeline overhead: ``DiffusionImagePipeline`` against a hand-written sampling loop.

Both sides drive the *same* diffusers ``UNet2DModel`` with identically built schedulers (same
sampler, steps, batch, labels and seeds; one ``torch.Generator`` per image), fp32, under the same
``torch.inference_mode()``. Classifier-free guidance (Ho & Salimans 2022, eq. 6) batches the null
and conditional rows into one forward in both. Timed runs alternate the order of the two sides
(ABBA) after warm-up runs. Reported: median, min and max wall time and median process CPU time
per side, their ratios ours/plain, and the paired ratio (median over repeats of the ratio of the
two back-to-back runs), which is judged against the target <= 1.05 because it cancels load from
other jobs that drifts between runs; the max abs difference of the images shows both sides
compute the same thing.

Run (25-50 s with the defaults on 2 CPU cores shared with other jobs)::

    OMP_NUM_THREADS=1 python benchmarks/pipeline_overhead.py
    python benchmarks/pipeline_overhead.py --model path/to/pipeline --batch 16 --steps 20 --sampler euler-a

Exit status 1 if the two sides do not produce the same images (the timing would then compare
different work); a ratio above the target is reported, not an error.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import time

import torch
from diffusers import DDPMScheduler

from diffusion import DiffusionImagePipeline, build_unet, default_model_path
from samplers import DEFAULT_SAMPLER, build_sampler, list_samplers

TARGET_RATIO = 1.05
SAME_IMAGES_ATOL = 1e-5  # images in [0, 1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None,
                   help="pipeline folder (default: the shipped model if present, else a random-weight build_unet())")
    p.add_argument("--batch", type=int, default=8, help="images per run (each gets a null row too)")
    p.add_argument("--steps", type=int, default=10, help="num_inference_steps")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=list_samplers())
    p.add_argument("--repeats", type=int, default=12, help="timed runs per side (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per side first")
    p.add_argument("--guidance-scale", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    for name in ("batch", "steps", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.model is not None and not os.path.isdir(args.model):
        p.error(f"--model {args.model!r} is not a folder")
    return args


def load_pipeline(model) -> tuple[DiffusionImagePipeline, str]:
    """The pipeline to time and a one-line description of where its weights came from."""
    if model is None and os.path.isdir(default_model_path()):
        model = default_model_path()
    if model is not None:
        return DiffusionImagePipeline.from_pretrained(model), f"pretrained weights from {model}"
    torch.manual_seed(0)  # a script, not library code: seeds the random init only
    pipe = DiffusionImagePipeline(build_unet(), build_sampler(DEFAULT_SAMPLER, DDPMScheduler()))
    return pipe, f"RANDOM weights: build_unet(), seed 0 ({default_model_path()} not found)"


@torch.no_grad()
def plain_loop(unet, scheduler, labels, null_label, steps, guidance_scale, seeds, step_kwargs):
    """Sampling written out by hand: x_T ~ N(0, sigma_max^2 I), then one scheduler step per
    timestep on the guided prediction ``uncond + s * (cond - uncond)`` (Ho & Salimans 2022, eq. 6).

    Returns float ``(B, C, H, W)`` images in [0, 1] on the CPU.
    """
    device = unet.device
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    c, size = unet.config.in_channels, unet.config.sample_size
    scheduler.set_timesteps(steps, device=device)
    x_t = torch.cat([torch.randn((1, c, size, size), generator=g) for g in generators])
    x_t = x_t.to(device) * scheduler.init_noise_sigma                   # (B, C, H, W)
    guided = guidance_scale != 1.0
    labels = labels.to(device)
    class_in = torch.cat([torch.full_like(labels, null_label), labels]) if guided else labels
    kwargs = {"generator": generators} if "generator" in step_kwargs else {}
    for t in scheduler.timesteps:
        x_in = torch.cat([x_t, x_t]) if guided else x_t                   # (2B, C, H, W)
        x_in = scheduler.scale_model_input(x_in, t)
        out = unet(x_in, t, class_labels=class_in).sample
        if guided:
            uncond, cond = out.chunk(2)
            out = uncond + guidance_scale * (cond - uncond)
        x_t = scheduler.step(out, t, x_t, **kwargs).prev_sample
    return (x_t / 2 + 0.5).clamp(0, 1).cpu()


def timed(fn, device) -> tuple[float, float, torch.Tensor]:
    """Wall seconds and process CPU seconds for one call of ``fn`` (synchronized on CUDA), and its
    result. CPU time excludes the time the process waited for a core, so it is the steadier of the
    two on a shared machine."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main(argv=None) -> int:
    args = parse_args(argv)
    pipe, source = load_pipeline(args.model)
    pipe.to(args.device)
    if pipe.unet.dtype != torch.float32:
        pipe.unet.to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.set_sampler(args.sampler)                      # ours: pipe.scheduler, built once
    plain_scheduler = build_sampler(args.sampler, pipe.scheduler)   # plain: an identical one
    device, unet = pipe.unet.device, pipe.unet
    num_classes = pipe.num_classes
    if num_classes is None:
        raise SystemExit("this benchmark needs a class-conditional model (guidance)")
    labels = torch.arange(args.batch) % num_classes
    seeds = [args.seed + i for i in range(args.batch)]
    step_params = set(inspect.signature(plain_scheduler.step).parameters)

    def ours():
        return pipe(class_labels=labels, num_inference_steps=args.steps,
                    guidance_scale=args.guidance_scale, output_type="pt", precision="fp32",
                    generator=[torch.Generator().manual_seed(s) for s in seeds]).images

    def plain():
        return plain_loop(unet, plain_scheduler, labels, num_classes, args.steps,
                          args.guidance_scale, seeds, step_params)

    sides = {"ours (pipeline)": ours, "plain loop": plain}
    wall = {name: [] for name in sides}
    cpu = {name: [] for name in sides}
    images = {}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for name, fn in sides.items():
                images[name] = fn()
        for r in range(args.repeats):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]   # ABBA against drift
            for name in order:
                wall_s, cpu_s, images[name] = timed(sides[name], device)
                wall[name].append(wall_s)
                cpu[name].append(cpu_s)
        # What ``pipe(sampler=name)`` adds per call: building a fresh scheduler.
        build_s = statistics.median(timed(lambda: build_sampler(args.sampler, pipe.scheduler),
                                          device)[0] for _ in range(5))

    max_diff = (images["ours (pipeline)"] - images["plain loop"]).abs().max().item()
    med = {name: statistics.median(ts) for name, ts in wall.items()}
    med_cpu = {name: statistics.median(ts) for name, ts in cpu.items()}
    ratio = med["ours (pipeline)"] / med["plain loop"]
    ratio_min = min(wall["ours (pipeline)"]) / min(wall["plain loop"])
    ratio_cpu = med_cpu["ours (pipeline)"] / med_cpu["plain loop"]
    # Runs r of the two sides are back to back, so their ratio cancels load that drifts slowly.
    ratio_paired = statistics.median(o / q for o, q in zip(wall["ours (pipeline)"], wall["plain loop"]))
    rows = 2 * args.batch if args.guidance_scale != 1.0 else args.batch

    print(f"model   : {source}")
    print(f"setup   : sampler {args.sampler}, {args.steps} steps, batch {args.batch} "
          f"({rows} U-Net rows/forward), guidance {args.guidance_scale}, fp32, {device}, "
          f"{torch.get_num_threads()} thread(s), {args.warmup} warm-up + {args.repeats} timed runs/side")
    print()
    print(f"{'':18s} {'median s':>9s} {'min s':>8s} {'max s':>8s} {'cpu s':>8s} {'ms/step':>8s}")
    for name, ts in wall.items():
        print(f"{name:18s} {med[name]:9.3f} {min(ts):8.3f} {max(ts):8.3f} {med_cpu[name]:8.3f} "
              f"{1000 * med[name] / args.steps:8.1f}")
    verdict = "OK" if ratio_paired <= TARGET_RATIO else "ABOVE TARGET"
    print(f"{'ratio ours/plain':18s} {ratio:9.3f} {ratio_min:8.3f} {'':8s} {ratio_cpu:8.3f}")
    print(f"paired ratio       {ratio_paired:9.3f}   (median of back-to-back run ratios; "
          f"target <= {TARGET_RATIO}: {verdict})")
    print(f"max |ours - plain| : {max_diff:.2e} (images in [0, 1])")
    print(f"pipe(sampler=...) builds a scheduler per call: +{1000 * build_s:.1f} ms "
          f"({100 * build_s / med['plain loop']:.1f}% of a plain run)")
    if max((max(ts) - min(ts)) / statistics.median(ts) for ts in wall.values()) > 0.2:
        print("note    : run times vary by > 20%: the machine is shared; trust the paired ratio and "
              "the min and cpu columns over the median, or add --repeats")
    if max_diff > SAME_IMAGES_ATOL:
        print(f"ERROR: images differ by more than {SAME_IMAGES_ATOL}; the two sides do different work")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
