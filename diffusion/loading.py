"""Deprecated alias: moved to :mod:`diffusion.pipelines.loading` (kept for one release; saved pipelines name it)."""

from diffusion._deprecated import moved

moved(__name__, "diffusion.pipelines.loading")

from diffusion.pipelines.loading import *  # noqa: E402,F401,F403
