"""The classifier objective (``train.objective=classifier``): the evaluation classifier behind the
project's accuracy and FID features (:class:`diffusion.models.classifier.ImageClassifier`).

Cross-entropy (optionally label-smoothed) with random-translation augmentation; evaluation is the
accuracy on ``data.eval_split``; export is the classifier itself (``save_pretrained``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusion.data import load_dataset
from diffusion.models.classifier import ImageClassifier
from training.objectives.base import Objective


class ClassifierObjective(Objective):
    """Cross-entropy classifier with random-translation augmentation; evaluates test accuracy."""

    ema_modules = ()

    def __init__(self, cfg, num_classes, class_names=()):
        super().__init__(cfg, num_classes, class_names)
        c = cfg.classifier
        self.modules["model"] = ImageClassifier(in_channels=cfg.data.channels, num_classes=num_classes,
                                                channels=c.channels, dropout=c.dropout,
                                                class_names=list(class_names))
        self._eval_data = None

    def loss(self, optimizer, modules, batch, generator):
        x, labels = batch
        s = self.cfg.classifier.max_shift
        if s:
            # Random translation by up to s pixels: pad with background (-1) and crop.
            dx, dy = torch.randint(-s, s + 1, (2,), generator=generator).tolist()
            x = torch.roll(F.pad(x, (s, s, s, s), value=-1.0), shifts=(dy, dx), dims=(2, 3))
            x = x[:, :, s:-s, s:-s]
        logits = modules["model"](x)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.cfg.classifier.label_smoothing)
        acc = (logits.argmax(1) == labels).float().mean().item()
        return loss, {"loss": loss.item(), "train_accuracy": acc}

    def evaluate(self, modules, generator):
        """``{"<eval_split>_accuracy": float in [0, 1]}`` over the whole of ``data.eval_split``
        (loaded once), predicted in eval mode (:meth:`ImageClassifier.predict`); no grid."""
        if self._eval_data is None:
            d = self.cfg.data
            self._eval_data = load_dataset(d.name, split=d.eval_split, root=d.root,
                                           image_size=d.image_size, channels=d.channels)
        pred = modules["model"].predict(self._eval_data.images)
        acc = (pred == self._eval_data.labels).float().mean().item()
        return {f"{self.cfg.data.eval_split}_accuracy": acc}, None
