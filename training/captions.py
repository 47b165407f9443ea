"""Deprecated alias: moved to :mod:`diffusion.data.captions` (kept for one release; saved pipelines name it)."""

from diffusion._deprecated import moved

moved(__name__, "diffusion.data.captions")

from diffusion.data.captions import *  # noqa: E402,F401,F403
