"""Old module paths kept for one release after the layout change (0.1 -> 0.2).

A pipeline saved before the move names its components' modules in ``model_index.json``
(``diffusion.gan``, ``diffusion.autoregressive``, ``diffusion.vqvae``, ...); the thin modules at
those paths re-export the moved names so such folders still load, and warn once per module.
"""

from __future__ import annotations

import warnings


def moved(old: str, *new: str) -> None:
    """Warn (``DeprecationWarning``, shown to the importing code) that module ``old`` moved to
    ``new`` and will be removed in the next release."""
    warnings.warn(f"{old} moved to {' and '.join(new)}; the old path is kept for one release "
                  f"(import from the new one; re-save old pipelines with save_pretrained to "
                  f"record the new module paths)", DeprecationWarning, stacklevel=3)
