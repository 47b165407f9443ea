"""Deprecated alias: moved to :mod:`diffusion.models.prior` and :mod:`diffusion.pipelines.autoregressive` (kept for one release; saved pipelines name it)."""

from diffusion._deprecated import moved

moved(__name__, "diffusion.models.prior", "diffusion.pipelines.autoregressive")

from diffusion.models.prior import *  # noqa: E402,F401,F403
from diffusion.pipelines.autoregressive import *  # noqa: E402,F401,F403
