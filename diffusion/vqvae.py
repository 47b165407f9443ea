"""Deprecated alias: moved to :mod:`diffusion.models.vqvae` (kept for one release; saved pipelines name it)."""

from diffusion._deprecated import moved

moved(__name__, "diffusion.models.vqvae")

from diffusion.models.vqvae import *  # noqa: E402,F401,F403
