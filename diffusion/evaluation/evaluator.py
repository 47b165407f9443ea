"""``evaluate``: generate with any pipeline of the shared call signature, then FID, KID, improved
precision/recall, Inception-Score-style score, conditional accuracy and speckle rate against a
real split.

Every result records the settings that make it comparable: n (generated and reference), the
reference dataset/split, the feature network (name with weights hash, input handling), NFE,
sampler, steps, guidance, seed, dtype, seconds per image, peak memory and the hardware. FID is
biased upward at small n: compare FIDs only at equal n (KID is unbiased).

Example::

    >>> from diffusion import DiffusionImagePipeline, default_model_path
    >>> from diffusion.evaluation import evaluate
    >>> pipe = DiffusionImagePipeline.from_pretrained(default_model_path())     # doctest: +SKIP
    >>> r = evaluate(pipe, "fashion-mnist", num_samples=500, num_inference_steps=20)  # doctest: +SKIP
    >>> sorted(k for k in ("fid", "kid", "precision", "recall", "accuracy") if k in r)  # doctest: +SKIP
    ['accuracy', 'fid', 'kid', 'precision', 'recall']
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from diffusion.evaluation.sampling import (checked_classes, iter_sample_shards,
                                           peak_memory_bytes, pipeline_call_kwargs,
                                           sample_settings, settings_key)
from diffusion.hardware import hardware_description
from diffusion.paths import default_cache_dir
from samplers import sampler_name

#: Every metric :func:`evaluate` knows. ``is`` is the Inception-Score-style score computed from the
#: evaluation classifier's probabilities (not Inception-v3's); ``speckle`` is the fraction of
#: images whose background high-frequency energy exceeds the real images' 99th percentile
#: (:mod:`diffusion.evaluation.speckle`).
METRICS = ("fid", "kid", "precision", "recall", "is", "accuracy", "speckle")
DEFAULT_METRICS = METRICS
_FEATURE_METRICS = {"fid", "kid", "precision", "recall"}
_CLASSIFIER_METRICS = {"is", "accuracy"}
_PIXEL_METRICS = {"speckle"}  # read the images themselves (no network)


def _dataset_tag(dataset) -> str:
    if isinstance(dataset, str):
        return dataset
    images = dataset.images.detach().cpu().contiguous()
    return "tensors-" + hashlib.sha256(images.numpy().tobytes()).hexdigest()[:12]


def load_reference(dataset: Union[str, Any] = "fashion-mnist", split: str = "test",
                   num_samples: Optional[int] = None, root: Optional[str] = None, seed: int = 0):
    """Real images for the reference statistics: a :class:`diffusion.data.datasets.TensorImageDataset`
    (float ``(N, C, H, W)`` in [-1, 1]). ``dataset`` is a name for
    :func:`diffusion.data.load_dataset` or a ``TensorImageDataset``; ``num_samples`` keeps a seeded
    subset (``None``: the whole split).

    Raises:
        ValueError: unknown dataset name or split, or ``num_samples`` larger than the split.
    """
    from diffusion.data import load_dataset

    ds = load_dataset(dataset, split=split, root=root) if isinstance(dataset, str) else dataset
    if num_samples is not None and num_samples != len(ds):
        ds = ds.subset(num_samples, seed=seed)
    return ds


def reference_features(network, dataset: Union[str, Any] = "fashion-mnist", split: str = "test",
                       num_samples: Optional[int] = None, root: Optional[str] = None,
                       cache_dir: Optional[Union[str, Path]] = None, batch_size: int = 500,
                       seed: int = 0) -> torch.Tensor:
    """Features float64 ``(N, D)`` of real images, cached as safetensors under
    ``cache_dir/reference/`` keyed by dataset, split, feature network (its ``name``, which holds
    a hash of its weights) and n. ``cache_dir=None`` computes without caching."""
    from safetensors.torch import load_file, save_file

    from diffusion.evaluation.features import extract_features

    path = None
    if cache_dir is not None:
        n_tag = "all" if num_samples is None else str(num_samples)
        safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in network.name)
        path = (Path(cache_dir) / "reference" /
                f"{_dataset_tag(dataset)}-{split}-n{n_tag}-seed{seed}-{safe}.safetensors")
        if path.is_file():
            return load_file(str(path))["features"]
    ds = load_reference(dataset, split, num_samples, root, seed)
    feats = extract_features(network, ds.images, input_range="-1,1", batch_size=batch_size)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        save_file({"features": feats.contiguous()}, str(tmp))
        os.replace(tmp, path)
    return feats


def _check_metrics(metrics: Sequence[str]) -> list[str]:
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    return list(dict.fromkeys(metrics))


def compute_metrics(fake_features: Optional[torch.Tensor], real_features: Optional[torch.Tensor],
                    logits: Optional[torch.Tensor], labels: Optional[torch.Tensor],
                    metrics: Sequence[str], kid_subsets: int = 100, kid_subset_size: int = 1000,
                    k: int = 3, seed: int = 0, fake_speckle: Optional[torch.Tensor] = None,
                    real_speckle: Optional[torch.Tensor] = None) -> dict:
    """The metric values from features (float ``(N, D)``), classifier logits ``(N, K)`` and
    per-image speckle scores (``(N,)`` or ``(N, 1)``,
    :func:`~diffusion.evaluation.speckle.speckle_scores`).

    Returns a flat dict: ``fid``, ``kid`` and ``kid_std`` (over ``kid_subsets`` subsets of
    ``min(kid_subset_size, n_real, n_fake)``), ``precision``, ``recall`` (k-NN with ``k``),
    ``inception_score``, ``accuracy`` and ``per_class_accuracy`` (needs ``labels``),
    ``speckle_rate`` with ``speckle_threshold`` (the real scores' ``speckle_quantile``).
    """
    from diffusion.evaluation import scores

    out: dict = {}
    if "fid" in metrics:
        out["fid"] = float(scores.fid_from_features(real_features, fake_features))
    if "kid" in metrics:
        size = min(kid_subset_size, len(real_features), len(fake_features))
        mean, std = scores.kid_from_features(real_features, fake_features, subsets=kid_subsets,
                                             subset_size=size, seed=seed)
        out.update(kid=float(mean), kid_std=float(std), kid_subset_size=size, kid_subsets=kid_subsets)
    if "precision" in metrics or "recall" in metrics:
        p, r = scores.precision_recall(real_features, fake_features, k=k)
        if "precision" in metrics:
            out["precision"] = float(p)
        if "recall" in metrics:
            out["recall"] = float(r)
        out["pr_k"] = k
    if "is" in metrics:
        out["inception_score"] = float(scores.inception_score(logits))
    if "accuracy" in metrics and labels is not None:
        acc = scores.conditional_accuracy_from_logits(logits, labels)
        out["accuracy"] = float(acc["accuracy"])
        out["per_class_accuracy"] = [float(a) for a in acc["per_class"]]
    if "speckle" in metrics:
        from diffusion.evaluation.speckle import SPECKLE_QUANTILE, speckle_rate, speckle_threshold

        threshold = speckle_threshold(real_speckle, SPECKLE_QUANTILE)
        out.update(speckle_rate=speckle_rate(fake_speckle, threshold),
                   speckle_threshold=threshold, speckle_quantile=SPECKLE_QUANTILE)
    return out


@torch.no_grad()
def evaluate(pipeline, dataset: Union[str, Any] = "fashion-mnist",
             metrics: Sequence[str] = DEFAULT_METRICS, num_samples: int = 2000,
             batch_size: int = 250, sampler: Optional[str] = None,
             num_inference_steps: Optional[int] = None, guidance_scale: Optional[float] = None,
             seed: int = 0, *, guidance=None, feature_network: Union[str, Any] = "classifier",
             inception_weights: Optional[str] = None, classifier=None,
             reference_split: str = "test", reference_num_samples: Optional[int] = None,
             dataset_root: Optional[str] = None, cache_dir: Optional[Union[str, Path]] = "default",
             autocast_dtype: Optional[torch.dtype] = None, accelerator=None, progress: bool = True,
             shard_size: int = 500, cache_samples: bool = True,
             pipeline_kwargs: Optional[Mapping[str, Any]] = None,
             class_prompts: Optional[Sequence[Sequence[str]]] = None) -> dict:
    """Generate ``num_samples`` images with ``pipeline`` and score them against a real split.

    Works for every pipeline with the shared call signature (``class_labels`` or
    ``num_images_per_prompt``, ``generator`` as a list, ``output_type="pt"`` giving float images
    in [0, 1], an ``nfe`` field in the output). Image ``i`` has class ``i % K`` and seed
    ``seed + i`` (see :mod:`diffusion.evaluation.sampling`); images stream through the feature
    networks one shard at a time, so memory holds one shard of images plus the features
    (``D`` floats per image), independent of n otherwise.

    Args:
        pipeline: the generator to evaluate.
        dataset: reference data: a name (``"fashion-mnist"``) or a ``TensorImageDataset``.
        metrics: a subset of :data:`METRICS` (list or comma-separated string).
        num_samples: images to generate (>= 2; KID and precision/recall need a few).
        batch_size: images per pipeline call (results do not depend on it).
        sampler, num_inference_steps, guidance_scale: passed to the pipeline when not ``None``
            and its ``__call__`` takes them (diffusion pipelines; ignored for a GAN); other
            families take theirs through ``pipeline_kwargs`` (e.g. ``{"truncation": 1.0}``).
        guidance: diffusion pipelines: the guidance method (a name or
            ``samplers.build_guidance(...)``; ``None``: the pipeline's default); part of the cache
            key when it is not plain CFG, and recorded as ``guidance`` in the result.
        seed: image ``i`` uses ``torch.Generator().manual_seed(seed + i)``.
        feature_network: ``"classifier"`` (the shipped Fashion-MNIST classifier's 128-d
            penultimate features; default), ``"inception"`` (Inception-v3 pool features from
            ``inception_weights``, a local file; grayscale tiled to RGB) or a
            :class:`~diffusion.evaluation.features.FeatureNetwork`.
        classifier: the classifier for ``is`` / ``accuracy`` (default: the shipped one).
        reference_split, reference_num_samples: real split and its size (``None``: all of it;
            Fashion-MNIST test = 10,000).
        dataset_root: folder of the dataset files (default: ``$FASHION_MNIST_DIR`` / Debian's).
        cache_dir: reference features and generated samples are cached here (``"default"``:
            :func:`default_cache_dir`; ``None``: no cache).
        cache_samples: also cache the generated images (``False``: only the reference
            features; e.g. evaluation during training, where the weights change every time).
        autocast_dtype: e.g. ``torch.bfloat16`` for sampling under autocast.
        accelerator: an ``accelerate.Accelerator``; generation is split across its processes.
        progress: progress bar over the images.
        shard_size: images per cached shard (the unit of resume and of the process split).
        pipeline_kwargs: further arguments for the pipeline call (part of the cache key).
        class_prompts: for a text-to-image pipeline: K lists of prompts, one list per class of
            the reference data (e.g. ``diffusion.data.captions.FASHION_MNIST_HELD_OUT_PROMPTS``); image
            ``i`` is prompted with class ``i % K``'s prompts in turn and labelled ``i % K``, so
            ``accuracy`` measures whether the prompt's class was drawn.

    Returns:
        A flat dict: the metric values (see :func:`compute_metrics`) and ``n``,
        ``reference_dataset``, ``reference_split``, ``reference_n``, ``feature_network``,
        ``feature_description``, ``nfe``, ``seconds_per_image`` (generation), ``images_per_second``,
        ``eval_seconds`` (whole call), ``hardware`` (where the images were generated, from the
        shards), ``eval_hardware`` (this process), ``generated`` (images made in this call, the
        rest read from the sample cache), ``peak_memory_bytes``, ``sampler``, ``num_inference_steps``,
        ``guidance_scale``, ``seed``, ``batch_size``, ``autocast_dtype``, ``device``,
        ``versions``, ``pipeline_fingerprint`` (weights + configs) and ``sample_cache_key``.

    Raises:
        ValueError: unknown metric, ``num_samples`` < 2, accuracy asked of an unconditional
            pipeline, images whose shape the feature network does not take.
        FileNotFoundError: ``feature_network="inception"`` without a weights file.
    """
    import diffusers

    from diffusion.evaluation.features import (ClassifierFeatures, extract_features,
                                               extract_logits, get_feature_network)

    metrics = _check_metrics(metrics)
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an int >= 2, got {num_samples!r}")
    class_prompts, k = checked_classes(pipeline, class_prompts)
    if "accuracy" in metrics and k is None:
        raise ValueError("'accuracy' needs a class-conditional pipeline (or class_prompts for a "
                         "text-to-image one); drop it from metrics")
    if cache_dir == "default":
        cache_dir = default_cache_dir()
    start = time.perf_counter()

    speckle_net = real_speckle = None
    if _PIXEL_METRICS & set(metrics):
        from diffusion.evaluation.speckle import SpeckleFeatures

        speckle_net = SpeckleFeatures()
        real_speckle = reference_features(speckle_net, dataset, reference_split,
                                          reference_num_samples, root=dataset_root,
                                          cache_dir=cache_dir)
    network = None
    if _FEATURE_METRICS & set(metrics):
        network = (get_feature_network(feature_network, weights_path=inception_weights)
                   if isinstance(feature_network, str) else feature_network)
    clf = None
    if _CLASSIFIER_METRICS & set(metrics):
        clf = (network if isinstance(network, ClassifierFeatures) and classifier is None
               else ClassifierFeatures(classifier=classifier))
    real = None
    if network is not None:
        real = reference_features(network, dataset, reference_split, reference_num_samples,
                                  root=dataset_root, cache_dir=cache_dir)

    call_kwargs = pipeline_call_kwargs(pipeline, pipeline_kwargs, sampler=sampler,
                                       num_inference_steps=num_inference_steps,
                                       guidance_scale=guidance_scale, guidance=guidance)
    sample_cache = None if cache_dir is None or not cache_samples else Path(cache_dir) / "samples"
    fake, logits, labels, fake_speckle = [], [], [], []
    seconds, nfe, generated, hardware = 0.0, 0, 0, {}
    for shard in iter_sample_shards(pipeline, num_samples, call_kwargs=call_kwargs, seed=seed,
                                    batch_size=batch_size, shard_size=shard_size,
                                    cache_dir=sample_cache, autocast_dtype=autocast_dtype,
                                    accelerator=accelerator, progress=progress,
                                    class_prompts=class_prompts):
        images = torch.from_numpy(shard["images"])
        if network is not None:
            fake.append(extract_features(network, images, input_range="uint8"))
        if clf is not None:
            logits.append(extract_logits(clf, images, input_range="uint8"))
        if speckle_net is not None:
            fake_speckle.append(extract_features(speckle_net, images, input_range="uint8"))
        if k is not None:
            labels.append(torch.from_numpy(shard["labels"]))
        seconds += float(shard["seconds"])
        nfe = int(shard["nfe"])
        generated += 0 if shard["cached"] else len(images)
        where = str(shard["hardware"]) if "hardware" in shard else "not recorded"
        hardware[where] = hardware.get(where, 0) + len(images)

    settings = sample_settings(pipeline, call_kwargs, seed, shard_size, autocast_dtype,
                               class_prompts)
    result = compute_metrics(torch.cat(fake) if fake else None, real,
                             torch.cat(logits) if logits else None,
                             torch.cat(labels) if labels else None, metrics, seed=seed,
                             fake_speckle=torch.cat(fake_speckle) if fake_speckle else None,
                             real_speckle=real_speckle)
    device = getattr(pipeline, "device", torch.device("cpu"))
    result.update(
        n=num_samples,
        reference_dataset=_dataset_tag(dataset), reference_split=reference_split,
        reference_n=len(real) if real is not None else (
            None if real_speckle is None else len(real_speckle)),
        feature_network=None if network is None else network.name,
        feature_description=None if network is None else network.description,
        classifier=None if clf is None else clf.name,
        nfe=nfe, seconds_per_image=seconds / num_samples,
        images_per_second=num_samples / seconds if seconds > 0 else float("nan"),
        eval_seconds=time.perf_counter() - start, generated=generated,
        peak_memory_bytes=peak_memory_bytes(device),
        pipeline=type(pipeline).__name__,
        sampler=call_kwargs.get("sampler") or sampler_name(pipeline),
        num_inference_steps=call_kwargs.get("num_inference_steps"),
        guidance_scale=call_kwargs.get("guidance_scale"),
        guidance=settings.get("guidance", {"name": "cfg"}) if hasattr(pipeline, "guidance_method")
        else None,
        seed=seed, batch_size=batch_size,
        autocast_dtype=str(autocast_dtype) if autocast_dtype else None,
        device=str(device),
        hardware="; ".join(h if len(hardware) == 1 else f"{h} ({n} images)"
                           for h, n in hardware.items()),
        eval_hardware=hardware_description(device),
        versions=f"torch {torch.__version__}, diffusers {diffusers.__version__}",
        pipeline_fingerprint=settings["fingerprint"][:16],
        sample_cache_key=settings_key(settings),
    )
    if class_prompts is not None:
        result["class_prompts"] = class_prompts
    return result
