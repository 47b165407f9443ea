"""Deprecated alias: moved to :mod:`diffusion.data.datasets` and :mod:`diffusion.data.registry` (kept for one release; saved pipelines name it)."""

from diffusion._deprecated import moved

moved(__name__, "diffusion.data.datasets", "diffusion.data.registry")

from diffusion.data.datasets import *  # noqa: E402,F401,F403
from diffusion.data.registry import *  # noqa: E402,F401,F403
