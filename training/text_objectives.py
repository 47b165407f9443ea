"""Deprecated alias: moved to :mod:`training.objectives.diffusion` (kept for one release)."""

from diffusion._deprecated import moved

moved(__name__, "training.objectives.diffusion")

from training.objectives.diffusion import *  # noqa: E402,F401,F403
