"""Deprecated alias: moved to :mod:`training.objectives.vq_ar` (kept for one release)."""

from diffusion._deprecated import moved

moved(__name__, "training.objectives.vq_ar")

from training.objectives.vq_ar import *  # noqa: E402,F401,F403
