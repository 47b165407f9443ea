"""Evaluation of generated images. So far: conditional accuracy under the shipped classifier.

Conditional accuracy is the fraction of generated images that an independent classifier assigns to
the class they were generated for (the "classification accuracy" used e.g. by Ho & Salimans 2022 to
show the effect of guidance). It measures conditioning, not diversity: report it beside FID/KID.

Example::

    >>> from diffusion import DiffusionImagePipeline, default_model_path
    >>> from diffusion.evaluation.accuracy import conditional_accuracy
    >>> from diffusion.models.classifier import load_classifier
    >>> pipe = DiffusionImagePipeline.from_pretrained(default_model_path())      # doctest: +SKIP
    >>> conditional_accuracy(pipe, load_classifier(), num_samples=100)["accuracy"]  # doctest: +SKIP
    0.97
"""

from __future__ import annotations

from typing import Optional

import torch

from diffusion.models.classifier import ImageClassifier


@torch.no_grad()
def conditional_accuracy(pipe, classifier: ImageClassifier, num_samples: int = 1000,
                         sampler: Optional[str] = None, num_inference_steps: int = 20,
                         guidance_scale: float = 2.0, batch_size: int = 250, seed: int = 0,
                         autocast_dtype: Optional[torch.dtype] = None) -> dict:
    """Generate ``num_samples`` images, classes cycling ``0, 1, ..., K-1, 0, ...``, and classify.

    Image ``i`` has class ``i % K`` and its own generator seeded ``seed + i``, so the figure does
    not depend on ``batch_size``. Images are rounded to uint8 before classification, as in
    :func:`diffusion.evaluation.evaluate` (whose ``"accuracy"`` metric is the same figure).

    Args:
        pipe: a class-conditional pipeline with the shared call signature.
        classifier: takes float ``(B, C, H, W)`` in [-1, 1].
        autocast_dtype: e.g. ``torch.bfloat16`` to sample under CPU/GPU autocast (faster on CPU).

    Returns:
        ``{"accuracy": float in [0, 1], "per_class": list of K floats, "n": int, "nfe": int,
        "seconds_per_image": float, ...settings}``.

    Raises:
        ValueError: ``num_samples`` < 1, or an unconditional pipeline.
    """
    from diffusion.evaluation.sampling import iter_sample_shards
    from samplers import sampler_name

    k = pipe.num_classes
    if k is None:
        raise ValueError("conditional accuracy needs a class-conditional pipeline")
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}")
    call_kwargs = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    if sampler is not None:
        call_kwargs["sampler"] = sampler
    preds, labels, nfe, seconds = [], [], 0, 0.0
    # The shared generation path of diffusion.evaluation: image i has class i % K, seed seed + i.
    for shard in iter_sample_shards(pipe, num_samples, call_kwargs=call_kwargs, seed=seed,
                                    batch_size=batch_size, shard_size=max(batch_size, 500),
                                    autocast_dtype=autocast_dtype, progress=False):
        images = torch.from_numpy(shard["images"]).float() / 127.5 - 1  # uint8 -> [-1, 1]
        preds.append(classifier.predict(images))
        labels.append(torch.from_numpy(shard["labels"]))
        nfe, seconds = int(shard["nfe"]), seconds + float(shard["seconds"])
    preds, labels = torch.cat(preds), torch.cat(labels)
    correct = (preds == labels).float()
    return {
        "accuracy": correct.mean().item(),
        "per_class": [correct[labels == c].mean().item() for c in range(k)],
        "n": num_samples, "nfe": nfe, "sampler": sampler or sampler_name(pipe),
        "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
        "seconds_per_image": seconds / num_samples,
    }
