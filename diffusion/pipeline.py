"""Deprecated alias: moved to :mod:`diffusion.pipelines.base` and :mod:`diffusion.pipelines.diffusion` (kept for one release; saved pipelines name it)."""

from diffusion._deprecated import moved

moved(__name__, "diffusion.pipelines.base", "diffusion.pipelines.diffusion")

from diffusion.pipelines.base import *  # noqa: E402,F401,F403
from diffusion.pipelines.diffusion import *  # noqa: E402,F401,F403
