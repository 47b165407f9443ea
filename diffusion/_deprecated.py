"""Old module paths kept for one release after the layout change (0.1 -> 0.2).

A pipeline saved before the move names its components' modules in ``model_index.json``
(``diffusion.gan``, ``diffusion.autoregressive``, ``diffusion.vqvae``, ...); the thin modules at
those paths re-export the moved names so such folders still load, and warn once per module.
"""

from __future__ import annotations

import warnings

#: old module path -> its new home(s), filled by :func:`moved` as each alias is imported
MOVED: dict[str, tuple[str, ...]] = {}


def moved(old: str, *new: str) -> None:
    """Record and warn (``DeprecationWarning``, shown to the importing code) that module ``old``
    moved to ``new`` and will be removed in the next release."""
    MOVED[old] = new
    warnings.warn(f"{old} moved to {' and '.join(new)}; the old path is kept for one release: "
                  f"import from the new one", DeprecationWarning, stacklevel=3)


def warn_old_folder(folder, modules) -> None:
    """Tell the user (``FutureWarning``: shown by default, unlike a ``DeprecationWarning`` raised
    inside the import machinery) that a saved pipeline names moved modules, and how to update it."""
    names = ", ".join(f"{m} -> {' / '.join(MOVED[m])}" for m in modules)
    warnings.warn(f"{str(folder)!r} was saved before the 0.2 layout change and names moved "
                  f"modules ({names}); it loads now, but the old paths go in 0.3: re-save it "
                  f"with save_pretrained to record the new ones", FutureWarning, stacklevel=4)
