"""Models and pipelines: what generates images.

Layout (one home per concern; ``docs/contributing.md`` says where to add things):
``diffusion.models`` (networks), ``diffusion.pipelines`` (one pipeline per family over the shared
contract in ``pipelines/base.py``, and ``load_pipeline``), ``diffusion.data`` (datasets and prompt
sets), ``diffusion.evaluation`` (metrics, sharded generation, evaluate / sweep / compare / CAS,
synthetic exports), ``diffusion.cli`` (``python -m diffusion``), ``diffusion.conditioning`` (class
labels and text encoders), ``diffusion.paths`` (shipped weights, cache).
"""

from diffusion.models.unet import build_unet
from diffusion.paths import (WEIGHTS_DIR, default_ar_path, default_classifier_path, default_gan_path,
                             default_model_path, default_text_model_path)
from diffusion.pipelines.base import GenerationOutput
from diffusion.pipelines.diffusion import DiffusionImagePipeline

__all__ = ["DiffusionImagePipeline", "GenerationOutput", "build_unet", "default_model_path",
           "default_classifier_path", "default_gan_path", "default_ar_path", "default_text_model_path", "WEIGHTS_DIR"]
