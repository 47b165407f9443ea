"""Evaluation of generated images. So far: conditional accuracy under the shipped classifier.

Conditional accuracy is the fraction of generated images that an independent classifier assigns to
the class they were generated for (the "classification accuracy" used e.g. by Ho & Salimans 2022 to
show the effect of guidance). It measures conditioning, not diversity: report it beside FID/KID.

Example::

    >>> from diffusion import DiffusionImagePipeline, default_model_path
    >>> from diffusion.metrics import conditional_accuracy, load_classifier
    >>> pipe = DiffusionImagePipeline.from_pretrained(default_model_path())      # doctest: +SKIP
    >>> conditional_accuracy(pipe, load_classifier(), num_samples=100)["accuracy"]  # doctest: +SKIP
    0.97
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Optional

import torch

from diffusion.classifier import ImageClassifier


def load_classifier(path: Optional[str] = None) -> ImageClassifier:
    """The shipped Fashion-MNIST classifier (or one at ``path``), in eval mode."""
    from diffusion import default_classifier_path

    return ImageClassifier.from_pretrained(path or default_classifier_path()).eval()


@torch.no_grad()
def conditional_accuracy(pipe, classifier: ImageClassifier, num_samples: int = 1000,
                         sampler: Optional[str] = None, num_inference_steps: int = 20,
                         guidance_scale: float = 2.0, batch_size: int = 250, seed: int = 0,
                         autocast_dtype: Optional[torch.dtype] = None) -> dict:
    """Generate ``num_samples`` images, classes cycling ``0, 1, ..., K-1, 0, ...``, and classify.

    Image ``i`` has class ``i % K`` and its own generator seeded ``seed + i``, so the figure does
    not depend on ``batch_size``.

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
    k = pipe.num_classes
    if k is None:
        raise ValueError("conditional accuracy needs a class-conditional pipeline")
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}")
    labels = torch.arange(num_samples) % k
    preds, nfe = [], 0
    device_type = pipe.device.type
    ctx = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    start = time.perf_counter()
    for lo in range(0, num_samples, batch_size):
        hi = min(num_samples, lo + batch_size)
        with ctx:
            out = pipe(class_labels=labels[lo:hi], num_inference_steps=num_inference_steps,
                       guidance_scale=guidance_scale, sampler=sampler, output_type="pt",
                       generator=[torch.Generator().manual_seed(seed + i) for i in range(lo, hi)])
        nfe = out.nfe
        preds.append(classifier.predict(out.images.float() * 2 - 1))
    seconds = time.perf_counter() - start
    preds = torch.cat(preds)
    correct = (preds == labels).float()
    return {
        "accuracy": correct.mean().item(),
        "per_class": [correct[labels == c].mean().item() for c in range(k)],
        "n": num_samples, "nfe": nfe, "sampler": sampler or type(pipe.scheduler).__name__,
        "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
        "seconds_per_image": seconds / num_samples,
    }
