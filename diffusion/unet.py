"""Deprecated alias: moved to :mod:`diffusion.models.unet` (kept for one release; saved pipelines name it)."""

from diffusion._deprecated import moved

moved(__name__, "diffusion.models.unet")

from diffusion.models.unet import *  # noqa: E402,F401,F403
