"""Compare generator families side by side: one row per (model, sampler, steps) with quality
(FID, KID, precision/recall, accuracy, CAS), cost (NFE, seconds per image, images per second at
the best batch size, peak memory, parameters) and the training cost from each model's
``training_summary.json``; written as Markdown + CSV + JSON, plotted as quality vs seconds per
image (Pareto front marked) and quality vs NFE.

Every model goes through :func:`~diffusion.evaluation.evaluate` with the same data, seeds
(image ``i``: class ``i % K``, seed ``seed + i``), feature network and reference split, so rows
compare exactly; generated images are cached, so a rerun (or a row that matches an earlier
evaluation) reuses them. Speed and memory are measured fresh in the same run, on the same machine,
one model after the other (never read from a cache):

- ``seconds_per_image``: wall time of one batch-1 call (median of ``latency_repeats``);
- ``images_per_second`` at ``best_batch_size``: the fastest of ``batch_sizes`` (one timed call
  each, after a warm-up call);
- ``peak_memory_bytes``: on CUDA the peak allocated memory of the best-batch call; on CPU the
  peak growth of the resident set of a fresh process while it loads the model and makes one
  best-batch call (``baseline_memory_bytes``: that process's resident set after imports, before
  loading; in-memory pipelines without a folder get ``None`` on CPU).

Example::

    >>> from diffusion.evaluation.compare import compare, write_markdown, plot_compare
    >>> rows = compare(["diffusion/weights/fashion-mnist-diffusion",
    ...                 "diffusion/weights/fashion-mnist-gan"], steps=[10, 20],
    ...                num_samples=1000)                                    # doctest: +SKIP
    >>> write_markdown(rows, "runs/compare.md"); plot_compare(rows, "runs/compare")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

#: Default batch sizes tried for throughput.
DEFAULT_BATCH_SIZES = (1, 16, 64, 256)

#: Markdown columns: (key, header, format).
TABLE_COLUMNS = (
    ("model", "model", "{}"), ("family", "family", "{}"), ("sampler", "sampler", "{}"),
    ("nfe", "NFE", "{}"), ("fid", "FID", "{:.3f}"), ("kid", "KID x 1e3", "{:.2f}"),
    ("precision", "precision", "{:.3f}"), ("recall", "recall", "{:.3f}"),
    ("accuracy", "accuracy", "{:.4f}"), ("speckle_rate", "speckle rate", "{:.4f}"),
    ("cas", "CAS", "{:.4f}"),
    ("seconds_per_image", "s/image (batch 1)", "{:.4f}"),
    ("images_per_second", "images/s (best batch)", "{:.1f}"),
    ("best_batch_size", "best batch", "{}"), ("peak_memory_mb", "peak memory MB", "{:.0f}"),
    ("parameters", "parameters", "{:,}"), ("train_steps", "train steps", "{:,}"),
    ("train_hours", "train hours", "{:.2f}"), ("train_hardware", "train hardware", "{}"),
)


def family_of(pipeline) -> str:
    """``"diffusion"``, ``"text-diffusion"``, ``"gan"``, ``"autoregressive"`` (by pipeline class),
    else the class name."""
    name = type(pipeline).__name__
    if name == "DiffusionImagePipeline":
        return "text-diffusion" if getattr(pipeline, "takes_text", False) else "diffusion"
    return {"GANPipeline": "gan", "AutoregressivePipeline": "autoregressive"}.get(name, name)


def count_parameters(pipeline) -> dict:
    """``{"parameters": generator weights, "frozen_encoder_parameters": text encoder}``: the sum
    over the pipeline's ``torch.nn.Module`` components (the frozen text encoder counted apart)."""
    counts = {"parameters": 0, "frozen_encoder_parameters": 0}
    for name, module in pipeline.components.items():
        if isinstance(module, torch.nn.Module):
            key = "frozen_encoder_parameters" if name == "text_encoder" else "parameters"
            counts[key] += sum(p.numel() for p in module.parameters())
    return counts


def training_cost(folder: Optional[Union[str, Path]]) -> dict:
    """Training cost from ``<folder>/training_summary.json`` (written by ``python -m training``):
    ``train_steps``, ``train_seconds``, ``train_hours``, ``train_hardware``; stages listed under
    ``previous_stages`` (e.g. the VQ-VAE under an AR prior) add their seconds and steps. Empty
    when the folder or file is missing."""
    path = None if folder is None else Path(folder) / "training_summary.json"
    if path is None or not path.is_file():
        return {}
    summary = json.loads(path.read_text())
    stages = [summary] + list(summary.get("previous_stages", []))
    seconds = sum(float(s.get("train_seconds", 0.0)) for s in stages)
    return {"train_steps": sum(int(s.get("steps", 0)) for s in stages),
            "train_seconds": seconds, "train_hours": seconds / 3600,
            "train_hardware": summary.get("hardware"),
            "train_stages": len(stages)}


def measure_throughput(pipeline, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, *,
                       call_kwargs: Optional[Mapping[str, Any]] = None,
                       class_prompts: Optional[Sequence[Sequence[str]]] = None,
                       autocast_dtype: Optional[torch.dtype] = None, latency_repeats: int = 3,
                       seed: int = 0) -> dict:
    """Time the pipeline at each batch size (images conditioned as in evaluation).

    Returns:
        ``seconds_per_image`` (median batch-1 call, seconds), ``images_per_second`` and
        ``best_batch_size`` (the fastest of ``batch_sizes`` and batch 1, which is always timed
        for the latency), ``throughput`` ``{batch: images/s}``
        and, on CUDA, ``peak_memory_bytes`` of the best-batch call.

    Raises:
        ValueError: empty ``batch_sizes`` or a size < 1.
    """
    from diffusion.evaluation.sampling import _generate_shard, checked_classes

    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"batch_sizes must be ints >= 1, got {list(batch_sizes)}")
    class_prompts, k = checked_classes(pipeline, class_prompts)
    kwargs = dict(call_kwargs or {})

    def run(b: int) -> float:
        return float(_generate_shard(pipeline, 0, b, k, seed, b, kwargs, autocast_dtype,
                                     class_prompts)["seconds"])

    run(1)  # warm-up: lazy initialisation, allocator, kernels
    latency = statistics.median(run(1) for _ in range(max(1, latency_repeats)))
    throughput = {1: 1.0 / latency}
    for b in sizes:
        if b > 1:
            throughput[b] = b / run(b)
    best = max(throughput, key=throughput.get)
    out = {"seconds_per_image": latency, "images_per_second": throughput[best],
           "best_batch_size": best, "throughput": throughput}
    device = getattr(pipeline, "device", torch.device("cpu"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        run(best)
        out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


def measure_process_memory(folder: Union[str, Path], batch_size: int, *,
                           call_kwargs: Optional[Mapping[str, Any]] = None,
                           class_prompts: Optional[Sequence[Sequence[str]]] = None,
                           autocast_dtype: Optional[torch.dtype] = None,
                           timeout: float = 1800) -> dict:
    """Peak memory (bytes) of loading the pipeline saved in ``folder`` and making one call of
    ``batch_size`` images, in a fresh CPU process: ``{"peak_memory_bytes",
    "baseline_memory_bytes"}``; the peak is the highest resident set (sampled every millisecond)
    minus the baseline, the resident set after imports, before loading the model.

    Raises:
        RuntimeError: the child process failed (its stderr in the message).
    """
    request = {"folder": str(folder), "batch_size": int(batch_size),
               "call_kwargs": dict(call_kwargs or {}), "class_prompts": class_prompts,
               "autocast": None if autocast_dtype is None else str(autocast_dtype).split(".")[-1]}
    env = dict(os.environ, TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, "-m", "diffusion.evaluation.compare"],
                          input=json.dumps(request), capture_output=True, text=True,
                          timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe of {folder} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory_probe_main() -> None:
    """Child of :func:`measure_process_memory`: reads its request as JSON on stdin, samples its
    own resident set every millisecond while it loads the model and makes the call."""
    import gc
    import threading

    import psutil

    from diffusion.evaluation.sampling import _generate_shard, checked_classes
    from diffusion.pipelines.loading import load_pipeline

    request = json.loads(sys.stdin.read())
    process = psutil.Process()
    gc.collect()
    baseline = peak = process.memory_info().rss
    done = threading.Event()

    def poll():
        nonlocal peak
        while not done.wait(0.001):
            peak = max(peak, process.memory_info().rss)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    pipe = load_pipeline(request["folder"], device="cpu", quiet=True)
    class_prompts, k = checked_classes(pipe, request["class_prompts"])
    dtype = getattr(torch, request["autocast"]) if request["autocast"] else None
    _generate_shard(pipe, 0, request["batch_size"], k, 0, request["batch_size"],
                    request["call_kwargs"], dtype, class_prompts)
    done.set()
    watcher.join()
    peak = max(peak, process.memory_info().rss)
    print(json.dumps({"peak_memory_bytes": peak - baseline, "baseline_memory_bytes": baseline}))


def _takes_steps(pipeline) -> bool:
    from diffusion.evaluation.sampling import pipeline_call_kwargs

    return "num_inference_steps" in pipeline_call_kwargs(pipeline, num_inference_steps=1)


def _row_configs(pipeline, samplers, steps) -> list[dict]:
    """Per-row call settings: every (sampler, steps) for a diffusion pipeline (defaults: its own
    scheduler, 20 steps); one row for families without samplers."""
    from samplers import sampler_spec

    if not _takes_steps(pipeline):
        return [{}]
    from samplers import sampler_name

    names = list(samplers) if samplers else [sampler_name(pipeline)]
    for name in names:
        sampler_spec(name)  # unknown name -> ValueError listing the registry
    from samplers import is_distilled_sampler
    from samplers.diffusion import DISTILLED_DEFAULT_STEPS

    return [{"sampler": s, "num_inference_steps": int(n)} for s in names
            for n in (steps or [DISTILLED_DEFAULT_STEPS if is_distilled_sampler(s) else 20])]


def compare(models: Sequence[Union[str, Path, Any]], samplers: Optional[Sequence[str]] = None,
            steps: Optional[Sequence[int]] = None, num_samples: int = 2000, *,
            metrics: Sequence[str] = ("fid", "kid", "precision", "recall", "accuracy", "speckle"),
            cas: bool = False, cas_steps: Optional[int] = None,
            batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, latency_repeats: int = 3,
            measure_memory: bool = True, guidance_scale: Optional[float] = None,
            guidance=None, class_prompts: Optional[Sequence[Sequence[str]]] = None,
            device: Optional[str] = None, progress: bool = True,
            **evaluate_kwargs) -> list[dict]:
    """Evaluate and time every model; one row per (model, sampler, steps).

    Args:
        models: folders written by ``save_pretrained`` (any family: diffusion, text-to-image, GAN,
            VQ-VAE + prior) or pipelines already loaded (their training cost and CPU memory are
            then unknown).
        samplers, steps: for diffusion pipelines, every sampler at every step count (defaults:
            the model's own scheduler; 20 steps); ignored by families without samplers.
        num_samples: images per row (FID is biased upward at small n: compare rows at equal n).
        metrics: passed to :func:`~diffusion.evaluation.evaluate`.
        cas: also the classification accuracy score (trains a classifier per row: minutes).
        cas_steps: classifier steps for CAS (default: the shipped classifier config's).
        batch_sizes: throughput is measured at each; the best is reported.
        latency_repeats: batch-1 calls whose median gives ``seconds_per_image``.
        measure_memory: on CPU, measure peak memory in a fresh process per row.
        guidance_scale: ``None``: 2.0 for diffusion pipelines (1.0 for rows of a consistency
            sampler, whose model has its guidance distilled in), the saved setting otherwise.
        guidance: diffusion models: the guidance method (a name or ``samplers.build_guidance(...)``;
            ``None``: each model's saved default); families without guidance ignore it.
        class_prompts: K prompt lists for text-to-image models (as in ``evaluate``).
        device: torch device for every model (default CPU).
        evaluate_kwargs: further :func:`~diffusion.evaluation.evaluate` arguments (``cache_dir``,
            ``autocast_dtype``, ``seed``, ``batch_size``, ``feature_network``, ``dataset``, ...).

    Returns:
        One dict per row: ``evaluate``'s result plus ``model``, ``family``, ``parameters``,
        ``frozen_encoder_parameters``, the throughput fields of :func:`measure_throughput`,
        ``peak_memory_bytes`` / ``peak_memory_mb``, ``baseline_memory_bytes``, the training cost
        of :func:`training_cost` and, with ``cas``, ``cas`` / ``cas_real_accuracy`` / ``cas_ratio``.

    Raises:
        ValueError: no models, an unknown sampler, or what ``evaluate`` raises.
        FileNotFoundError: a model folder does not exist.
    """
    from diffusion.evaluation.cas import pipeline_cas
    from diffusion.evaluation.evaluator import evaluate
    from diffusion.evaluation.sampling import pipeline_call_kwargs
    from diffusion.pipelines.loading import load_pipeline, model_folder_name
    from samplers import is_distilled_sampler

    if not models:
        raise ValueError("compare needs at least one model")
    autocast_dtype = evaluate_kwargs.get("autocast_dtype")
    if guidance is not None:  # a spec, so the fresh-process memory probe can take it as JSON
        from samplers.guidance import as_guidance

        guidance = as_guidance(guidance).spec()
    rows = []
    for model in models:
        folder = Path(model) if isinstance(model, (str, Path)) else None
        if folder is not None and not folder.is_dir():
            raise FileNotFoundError(f"no model folder at {folder}")
        pipe = load_pipeline(folder, device=device, quiet=True) if folder is not None else model
        name = model_folder_name(folder) if folder is not None else type(pipe).__name__
        prompts = class_prompts if getattr(pipe, "takes_text", False) else None
        for config in _row_configs(pipe, samplers, steps):
            scale = guidance_scale
            if scale is None and _takes_steps(pipe):  # a consistency sampler: guidance distilled in
                scale = 1.0 if is_distilled_sampler(config["sampler"]) else 2.0
            config = pipeline_call_kwargs(pipe, config, guidance_scale=scale, guidance=guidance)
            row = evaluate(pipe, metrics=metrics, num_samples=num_samples, progress=progress,
                           class_prompts=prompts, **config, **evaluate_kwargs)
            row.update(model=name, family=family_of(pipe), **count_parameters(pipe),
                       **training_cost(folder))
            if family_of(pipe) == "autoregressive" and hasattr(pipe, "decoding_settings"):
                row["decoding"] = pipe.decoding_settings(
                    **({"guidance_scale": scale} if scale is not None else {}))
                row["sampler"] = "ancestral, guidance {guidance_scale}".format(**row["decoding"])
            elif row["family"] == "gan":
                row["sampler"] = "one forward"
            row.update(measure_throughput(pipe, batch_sizes, call_kwargs=config,
                                          class_prompts=prompts, autocast_dtype=autocast_dtype,
                                          latency_repeats=latency_repeats,
                                          seed=evaluate_kwargs.get("seed", 0)))
            if pipe.device.type != "cuda":  # evaluate's figure is this process's whole peak
                row["peak_memory_bytes"] = None
                if measure_memory and folder is not None:
                    row.update(measure_process_memory(folder, row["best_batch_size"],
                                                      call_kwargs=config, class_prompts=prompts,
                                                      autocast_dtype=autocast_dtype))
            if row["peak_memory_bytes"] is not None:
                row["peak_memory_mb"] = row["peak_memory_bytes"] / 2**20
            if cas:
                result = pipeline_cas(
                    pipe, num_samples, call_kwargs=config, class_prompts=prompts,
                    max_steps=cas_steps, progress=False, **{k: evaluate_kwargs[k] for k in (
                        "seed", "batch_size", "cache_dir", "autocast_dtype", "shard_size")
                        if k in evaluate_kwargs})
                row.update(cas=result["cas"], cas_real_accuracy=result["real_accuracy"],
                           cas_ratio=result["ratio"])
            rows.append(row)
            if progress:
                print(summary_line(row), flush=True)
    return rows


def summary_line(row: Mapping[str, Any]) -> str:
    """One printable line of a row."""
    quality = " ".join(f"{m}={row[m]:.4g}" for m in ("fid", "kid", "precision", "recall",
                                                     "accuracy", "speckle_rate", "cas")
                       if row.get(m) is not None)
    return (f"{row['model']:28s} {row['sampler']!s:24s} NFE={row['nfe']:<4d} n={row['n']} {quality} "
            f"s/img={row['seconds_per_image']:.4f} img/s={row['images_per_second']:.1f}"
            f"@{row['best_batch_size']}")


def _cell(row: Mapping[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if key == "kid" and value is not None:
        value = value * 1e3
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return fmt.format(value)


def table_context(rows: Sequence[Mapping[str, Any]]) -> str:
    """What the numbers are: n, reference, feature network, generation dtype, hardware."""
    first = rows[0]
    ns = sorted({r["n"] for r in rows})
    split = first.get("reference_split")
    parts = [f"n = {', '.join(f'{n:,}' for n in ns)} generated images per row (image i: class "
             f"i mod K, seed {first.get('seed', 0)} + i)",
             f"reference: {first.get('reference_dataset')}"
             f"{'' if split == 'all' else f' {split} split'} "
             f"({'all ' if split == 'all' else ''}{first.get('reference_n') or '?'} images)"]
    if first.get("feature_network"):
        parts.append(f"features: {first['feature_network']} ({first.get('feature_description')}); "
                     "these FIDs compare with each other, not with Inception FIDs in papers")
    parts.append(f"sampling dtype: {first.get('autocast_dtype') or 'float32'}")
    parts.append(f"speed and memory measured in this run on: {first.get('eval_hardware')}")
    return "; ".join(parts) + "."


def write_markdown(rows: Sequence[Mapping[str, Any]], path: Union[str, Path],
                   command: Optional[str] = None, plots: Sequence[Union[str, Path]] = ()) -> Path:
    """The compare table as Markdown at ``path``: the command that produced it (if given) above
    the table, then what the numbers are (:func:`table_context`), then links to ``plots``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = [c for c in TABLE_COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    lines = ["# Generator families compared", ""]
    if command:
        lines += ["Produced by:", "", "```bash", command, "```", ""]
    lines += [table_context(rows), ""]
    lines.append("| " + " | ".join(h for _, h, _ in keys) + " |")
    lines.append("|" + "|".join("---" if k in ("model", "family", "sampler", "train_hardware")
                                else "---:" for k, _, _ in keys) + "|")
    for r in rows:
        lines.append("| " + " | ".join(_cell(r, k, f) for k, _, f in keys) + " |")
    lines += ["", "s/image: one image per call (latency); images/s: the fastest batch size of "
              "those tried; peak memory: " + _memory_note(rows) + "; parameters: generator "
              "weights (a frozen text encoder is counted apart); train hours/steps/hardware: the "
              "model's `training_summary.json` (all stages)."]
    for p in plots:
        rel = os.path.relpath(p, path.parent)
        lines += ["", f"![{Path(p).stem}]({rel})"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _memory_note(rows) -> str:
    base = [r["baseline_memory_bytes"] for r in rows if r.get("baseline_memory_bytes")]
    if base:
        return (f"growth of the resident set of a fresh process while it loads the model and makes "
                f"one best-batch call, above the interpreter with torch and the package imported "
                f"({statistics.median(base) / 2**20:.0f} MB)")
    return "peak allocated accelerator memory of the best-batch call"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (lower is better in each),
    sorted by the first coordinate."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def plot_compare(rows: Sequence[Mapping[str, Any]], out_dir: Union[str, Path],
                 metric: str = "fid") -> list[Path]:
    """``quality_vs_seconds.png`` (``metric`` vs seconds per image, log x, Pareto front marked)
    and ``quality_vs_nfe.png``; titles state n, the feature network and the hardware.

    Raises:
        ImportError: matplotlib is missing (``pip install matplotlib``).
    """
    # A bare Figure (no pyplot): no backend switch, so notebooks keep their inline plots.
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r for r in rows if r.get(metric) is not None]
    first = rows[0]
    title = (f"n={first['n']:,}, features {first.get('feature_network')}\n"
             f"{first.get('eval_hardware')}")
    label = {"fid": "FID (lower is better)", "kid": "KID"}.get(metric, metric)
    markers = {"diffusion": "o", "text-diffusion": "D", "gan": "s", "autoregressive": "^"}
    paths = []
    for x_key, x_label, name, log in (("seconds_per_image", "seconds per image (batch 1)",
                                       "quality_vs_seconds.png", True),
                                      ("nfe", "NFE (network calls per image)", "quality_vs_nfe.png",
                                       True)):
        fig = Figure(figsize=(6.4, 4.4))
        ax = fig.subplots()
        for r in rows:
            ax.scatter(r[x_key], r[metric], marker=markers.get(r["family"], "x"), s=50)
            ax.annotate(f"{r['model'].replace('fashion-mnist-', '')}\n{r['sampler']}, NFE {r['nfe']}",
                        (r[x_key], r[metric]), fontsize=7, xytext=(4, 2),
                        textcoords="offset points")
        if x_key == "seconds_per_image":
            front = pareto_front([(r[x_key], r[metric]) for r in rows])
            ax.plot([rows[i][x_key] for i in front], [rows[i][metric] for i in front], "k--",
                    lw=1, label="Pareto front")
            ax.legend(fontsize=8)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel(label)
        ax.set_title(title, fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        paths.append(out_dir / name)
    return paths


if __name__ == "__main__":
    _memory_probe_main()
