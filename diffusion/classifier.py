"""Deprecated alias: moved to :mod:`diffusion.models.classifier` (kept for one release; saved pipelines name it)."""

from diffusion._deprecated import moved

moved(__name__, "diffusion.models.classifier")

from diffusion.models.classifier import *  # noqa: E402,F401,F403
