"""How models learn: typed configs, datasets, objectives and the one accelerate training loop.

Imports are lazy so that ``python -m training --help`` answers without loading torch.
"""

__all__ = ["ExperimentConfig", "Trainer", "load_config", "train"]


def __getattr__(name):
    if name in ("ExperimentConfig", "load_config"):
        from training import config

        return getattr(config, name)
    if name in ("Trainer", "train"):
        from training import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
