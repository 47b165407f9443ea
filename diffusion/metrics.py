"""Deprecated alias: moved to :mod:`diffusion.evaluation.accuracy` and :mod:`diffusion.models.classifier` (kept for one release; saved pipelines name it)."""

from diffusion._deprecated import moved

moved(__name__, "diffusion.evaluation.accuracy", "diffusion.models.classifier")

from diffusion.evaluation.accuracy import *  # noqa: E402,F401,F403
from diffusion.models.classifier import *  # noqa: E402,F401,F403
