"""Sampling speed of the diffusion pipeline against a plain diffusers loop, bf16 against fp32.

In one run on one machine, images per second of:

(a) ``plain-diffusers``: the loop a user writes from the diffusers docs: the model's scheduler
    class built with ``SchedulerClass.from_config(pipe.scheduler.config)``, classifier-free
    guidance batched as null + conditional rows in one U-Net forward, fp32, the same U-Net;
(b) ``pipeline-default``: ``DiffusionImagePipeline`` at its defaults (``precision="auto"``);
(c) ``pipeline-fp32``: the pipeline with ``precision="fp32"``;
(d) ``pipeline-compiled`` (``--compile``): (b) after ``pipe.compile_network()``; its first call
    per batch size (the compile) is reported apart and not timed;
(e) ``student-nfe-k`` (``--student DIR``): a distilled few-step pipeline called with
    ``num_inference_steps=k`` for k in ``--student-nfe`` (1, 2, 4).

Every variant draws image ``i`` (class ``i mod K``) from its own generator seeded ``seed + i``, at
batch 1 (latency) and at each of ``--batch-sizes``; the best batch is the one with the most
images/s. Reported per variant: seconds per call (median of ``--repeats`` at batch 1, of
``--big-repeats`` at larger batches, after one untimed warm-up call per batch size), images/s, the
ratio to (a) at the same batch and steps, and the mean absolute difference of (b)'s and (c)'s
images from (a)'s ([0, 1] range; same seeds). The variants take turns call by call (the order
rotating each repeat), so load from other jobs drifting over time hits them alike. Then the U-Net forward's achieved FLOP/s (FLOPs
counted by ``torch.utils.flop_counter.FlopCounterMode``, guided rows included) in fp32 and bf16
as a fraction of this machine's measured matmul peak in the same dtype (a ``--matmul-size``
square matmul).

Run (defaults: the shipped model, its own sampler, 20 steps, guidance 2.0; 10-20 minutes on 2
CPU cores)::

    python benchmarks/speed.py --out docs/results/speed.json           # + speed.md beside it
    python benchmarks/speed.py --threads 1 --batch-sizes 16,64 --student runs/student/final

On a machine shared with other jobs use ``--threads 1``: with more torch threads than free cores
every parallel region waits for a descheduled thread, and a batch-1 forward took 90x longer here.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from diffusion import default_model_path
from diffusion.hardware import hardware_description
from diffusion.pipelines.base import generators_from_seeds
from diffusion.pipelines.loading import load_pipeline


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=default_model_path(), help="class-conditional pipeline folder")
    p.add_argument("--steps", type=int, default=20, help="sampler steps (default 20)")
    p.add_argument("--guidance-scale", type=float, default=2.0, help="default 2.0")
    p.add_argument("--batch-sizes", default="16,64,256",
                   help="batch sizes tried besides 1 (comma-separated; default 16,64,256)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls at batch 1 (median)")
    p.add_argument("--big-repeats", type=int, default=2, help="timed calls at larger batches")
    p.add_argument("--student", default=None, help="a distilled few-step pipeline folder")
    p.add_argument("--student-nfe", default="1,2,4", help="student step counts (default 1,2,4)")
    p.add_argument("--compile", action="store_true",
                   help="also time the pipeline after compile_network() (minutes of compiling)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: all cores; use 1 on a machine shared with "
                        "other jobs)")
    p.add_argument("--matmul-size", type=int, default=2048, help="side of the peak matmul")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="JSON path (a .md table is written beside it)")
    args = p.parse_args(argv)
    try:
        args.batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()} - {1})
        args.student_nfe = [int(k) for k in args.student_nfe.split(",") if k.strip()]
    except ValueError as e:
        p.error(f"--batch-sizes / --student-nfe take comma-separated ints: {e}")
    for name in ("steps", "repeats", "big_repeats", "matmul_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(b < 1 for b in args.batch_sizes) or any(k < 1 for k in args.student_nfe):
        p.error("batch sizes and student NFE must be >= 1")
    return args


# --- (a) the plain diffusers loop ---------------------------------------------------------------

@torch.no_grad()
def plain_diffusers_loop(unet, scheduler_config, scheduler_class, class_labels: torch.Tensor,
                         num_classes: int, num_inference_steps: int, guidance_scale: float,
                         generators: List[torch.Generator]) -> torch.Tensor:
    """Class-conditional sampling with classifier-free guidance as the diffusers docs write it
    (null + conditional rows in one forward, fp32). Returns float ``(B, C, H, W)`` in [0, 1]."""
    scheduler = scheduler_class.from_config(scheduler_config)
    scheduler.set_timesteps(num_inference_steps, device=unet.device)
    c, s = unet.config.in_channels, unet.config.sample_size
    latents = torch.cat([torch.randn((1, c, s, s), generator=g) for g in generators]).to(unet.device)
    latents = latents * scheduler.init_noise_sigma
    labels = torch.cat([torch.full_like(class_labels, num_classes), class_labels]).to(unet.device)
    extra = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters \
        else {}
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        noise_uncond, noise_cond = unet(x_in, t, class_labels=labels).sample.chunk(2)
        noise_pred = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
        latents = scheduler.step(noise_pred, t, latents, **extra).prev_sample
    return (latents / 2 + 0.5).clamp(0, 1).cpu()


# --- timing -------------------------------------------------------------------------------------

def timed(fn: Callable[[], torch.Tensor], repeats: int) -> tuple:
    """``(median seconds, images of the last call)`` over ``repeats`` calls of ``fn``."""
    seconds, images = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        images = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), images


def time_variants(calls: Dict[str, Callable[[int], Callable[[], torch.Tensor]]],
                  batch_sizes: List[int], repeats: int, big_repeats: int) -> Dict[str, dict]:
    """Seconds per call and images/s of every variant at batch 1 and each batch size, and the
    images of its largest batch. ``calls[name](b)`` returns a zero-argument call that makes images
    0..b-1 (its first call at a batch size is untimed: warm-up, or the compile). The variants take
    turns call by call, the order rotating every repeat, so load from other jobs drifting over
    time hits all of them alike."""
    names = list(calls)
    rows: Dict[str, dict] = {name: {} for name in names}
    images: Dict[str, torch.Tensor] = {}
    for b in [1, *batch_sizes]:
        made = {name: calls[name](b) for name in names}
        for name in names:
            made[name]()                                  # warm-up / compile at this shape
        seconds: Dict[str, list] = {name: [] for name in names}
        for r in range(repeats if b == 1 else big_repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                images[name] = made[name]()
                seconds[name].append(time.perf_counter() - start)
        for name in names:
            median = statistics.median(seconds[name])
            rows[name][b] = {"seconds_per_call": median, "images_per_second": b / median}
        print(f"batch {b}: " + ", ".join(f"{n} {rows[n][b]['images_per_second']:.2f}/s"
                                         for n in names), flush=True)
    return {name: {"by_batch": rows[name], "images": images[name],
                   "best_batch": max(rows[name], key=lambda b: rows[name][b]["images_per_second"])}
            for name in names}


def matmul_peak(dtype: torch.dtype, n: int, device: str, repeats: int = 3) -> float:
    """FLOP/s of an ``n x n`` by ``n x n`` matmul in ``dtype`` (median of ``repeats``)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(seconds)


@torch.no_grad()
def unet_flops(unet, rows: int, device: str, autocast_dtype: Optional[torch.dtype],
               repeats: int) -> dict:
    """FLOPs of one U-Net forward over ``rows`` rows and its achieved FLOP/s."""
    from torch.utils.flop_counter import FlopCounterMode

    from diffusion.precision import network_autocast

    c, s = unet.config.in_channels, unet.config.sample_size
    x = torch.randn(rows, c, s, s, device=device)
    t = torch.full((rows,), 500, device=device)
    labels = torch.zeros(rows, dtype=torch.long, device=device) \
        if unet.config.num_class_embeds else None
    with network_autocast(autocast_dtype, device):
        with FlopCounterMode(display=False) as counter:
            unet(x, t, class_labels=labels)
        flops = counter.get_total_flops()
        seconds, _ = timed(lambda: unet(x, t, class_labels=labels), repeats)
    return {"rows": rows, "flops_per_forward": flops, "seconds_per_forward": seconds,
            "flops_per_second": flops / seconds}


# --- the run ------------------------------------------------------------------------------------

def shown_path(path) -> str:
    """``path`` relative to the repository when inside it (the shipped model), else as given."""
    repo = Path(__file__).resolve().parents[1]
    try:
        return Path(path).resolve().relative_to(repo).as_posix()
    except ValueError:
        return str(path)


def mean_abs_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    n = min(len(a), len(b))
    return float((a[:n].float() - b[:n].float()).abs().mean())


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device
    pipe = load_pipeline(args.model, device=device, quiet=True)
    pipe.set_progress_bar_config(disable=True)
    k = pipe.num_classes
    if k is None or getattr(pipe, "takes_text", False):
        raise SystemExit(f"error: {args.model!r} is not a class-conditional diffusion pipeline")
    unet = pipe.unet.eval()
    default_dtype = pipe.network_dtype(None)
    steps, s = args.steps, args.guidance_scale

    def labels(b):
        return torch.arange(b) % k

    def gens(b):
        return generators_from_seeds(range(args.seed, args.seed + b))

    def pipeline_call(p, **kw):
        return lambda b: lambda: p(class_labels=labels(b).tolist(), generator=gens(b),
                                   output_type="pt", **kw).images

    settings = dict(num_inference_steps=steps, guidance_scale=s)
    print(f"{hardware_description(device)}; default precision here: "
          f"{'bf16' if default_dtype else 'fp32'}", flush=True)
    calls = {
        "plain-diffusers": lambda b: lambda: plain_diffusers_loop(
            unet, pipe.scheduler.config, type(pipe.scheduler), labels(b), k, steps, s, gens(b)),
        "pipeline-default": pipeline_call(pipe, **settings),
        "pipeline-fp32": pipeline_call(pipe, precision="fp32", **settings),
    }
    compile_seconds = {}
    if args.compile:
        compiled = load_pipeline(args.model, device=device, quiet=True).compile_network()
        compiled.set_progress_bar_config(disable=True)
        compiled_call = pipeline_call(compiled, **settings)

        def timed_first(b):  # the first call per batch size compiles: timed apart
            call, first = compiled_call(b), [True]

            def run():
                if not first[0]:
                    return call()
                start, first[0] = time.perf_counter(), False
                images = call()
                compile_seconds[b] = time.perf_counter() - start
                return images
            return run
        calls["pipeline-compiled"] = timed_first
    if args.student:
        student = load_pipeline(args.student, device=device, quiet=True)
        student.set_progress_bar_config(disable=True)
        for nfe in args.student_nfe:
            calls[f"student-nfe-{nfe}"] = pipeline_call(student, num_inference_steps=nfe)
    variants = time_variants(calls, args.batch_sizes, args.repeats, args.big_repeats)

    plain = variants["plain-diffusers"]
    result = {
        "hardware": hardware_description(device),
        "torch_threads": torch.get_num_threads(),
        "model": shown_path(args.model), "sampler": type(pipe.scheduler).__name__,
        "num_inference_steps": steps, "guidance_scale": s, "seed": args.seed,
        "default_precision": "bf16" if default_dtype else "fp32",
        "batch_sizes": [1, *args.batch_sizes],
        "compile_seconds_first_call": compile_seconds or None,
        "student": args.student,
        "variants": {},
    }
    for name, v in variants.items():
        by_batch = {str(b): {**row, "ratio_to_plain": row["images_per_second"]
                             / plain["by_batch"][b]["images_per_second"]}
                    for b, row in v["by_batch"].items()}
        entry = {"by_batch": by_batch, "best_batch": v["best_batch"],
                 "best_images_per_second": v["by_batch"][v["best_batch"]]["images_per_second"]}
        if name.startswith("pipeline"):
            entry["mean_abs_difference_to_plain"] = mean_abs_difference(v["images"], plain["images"])
        result["variants"][name] = entry
    best_rows = 2 * max(result["batch_sizes"])  # guided: null + conditional rows
    result["flops"] = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        peak = matmul_peak(dtype or torch.float32, args.matmul_size, device)
        f = unet_flops(unet, best_rows, device, dtype, args.big_repeats)
        result["flops"][name] = {**f, "matmul_peak_flops_per_second": peak,
                                 "fraction_of_peak": f["flops_per_second"] / peak}
    print(markdown(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(result))
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return result


def markdown(r: dict) -> str:
    """The result as a Markdown page: settings, the images/s table, FLOP/s."""
    sizes = r["batch_sizes"]
    lines = [
        "# Sampling speed: the pipeline against a plain diffusers loop",
        "",
        f"`python benchmarks/speed.py` on {r['hardware']}; "
        f"model `{r['model']}`, {r['sampler']}, {r['num_inference_steps']} steps, guidance "
        f"{r['guidance_scale']}, seed {r['seed']}; default precision here: "
        f"**{r['default_precision']}**. Images/s (ratio to the plain diffusers loop at the same "
        f"batch and steps).",
        "",
        "| variant | " + " | ".join(f"batch {b}" for b in sizes) + " | best batch | mean abs image difference to plain |",
        "|---|" + "---|" * len(sizes) + "---|---|",
    ]
    for name, v in r["variants"].items():
        cells = [f"{v['by_batch'][str(b)]['images_per_second']:.2f} "
                 f"({v['by_batch'][str(b)]['ratio_to_plain']:.2f}x)" for b in sizes]
        diff = v.get("mean_abs_difference_to_plain")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {v['best_batch']} | "
                     + ("" if diff is None else f"{diff:.4f}") + " |")
    lines += ["", "U-Net forward at the largest batch (guided rows included) against a "
              "square matmul in the same dtype:", "",
              "| dtype | rows | GFLOP / forward | achieved GFLOP/s | matmul peak GFLOP/s | "
              "fraction |", "|---|---|---|---|---|---|"]
    for name, f in r["flops"].items():
        lines.append(f"| {name} | {f['rows']} | {f['flops_per_forward'] / 1e9:.2f} | "
                     f"{f['flops_per_second'] / 1e9:.1f} | "
                     f"{f['matmul_peak_flops_per_second'] / 1e9:.1f} | "
                     f"{f['fraction_of_peak']:.2f} |")
    if r.get("compile_seconds_first_call"):
        lines += ["", "First (compiling) call per batch size, seconds: " + ", ".join(
            f"batch {b}: {sec:.0f}" for b, sec in r["compile_seconds_first_call"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
