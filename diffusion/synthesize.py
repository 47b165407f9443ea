"""Deprecated alias: moved to :mod:`diffusion.evaluation.synthesize` (kept for one release; saved pipelines name it)."""

from diffusion._deprecated import moved

moved(__name__, "diffusion.evaluation.synthesize")

from diffusion.evaluation.synthesize import *  # noqa: E402,F401,F403
