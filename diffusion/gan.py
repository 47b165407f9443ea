"""Deprecated alias: moved to :mod:`diffusion.models.gan` and :mod:`diffusion.pipelines.gan` (kept for one release; saved pipelines name it)."""

from diffusion._deprecated import moved

moved(__name__, "diffusion.models.gan", "diffusion.pipelines.gan")

from diffusion.models.gan import *  # noqa: E402,F401,F403
from diffusion.pipelines.gan import *  # noqa: E402,F401,F403
