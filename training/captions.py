"""Deprecated alias: moved to :mod:`diffusion.data.captions` and :mod:`diffusion.data.emoji` (kept for one release; saved pipelines name it)."""

from diffusion._deprecated import moved

moved(__name__, "diffusion.data.captions", "diffusion.data.emoji")

from diffusion.data.captions import *  # noqa: E402,F401,F403
from diffusion.data.emoji import *  # noqa: E402,F401,F403
from diffusion.data.registry import load_captioned_dataset  # noqa: E402,F401
