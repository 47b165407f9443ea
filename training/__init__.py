"""How models learn: typed configs, datasets, objectives and the one accelerate training loop."""

from training.config import ExperimentConfig, load_config
from training.loop import Trainer, train

__all__ = ["ExperimentConfig", "Trainer", "load_config", "train"]
