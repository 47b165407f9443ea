"""A small CNN image classifier, used to evaluate generated images (conditional accuracy, and the
feature network for FID on 28x28 grayscale data where Inception weights are not available).

It is a diffusers ``ModelMixin`` + ``ConfigMixin`` so it saves / loads with ``save_pretrained`` /
``from_pretrained`` (safetensors + config.json) like every other model in the package.

Example::

    >>> import torch
    >>> from diffusion.models.classifier import ImageClassifier
    >>> clf = ImageClassifier(in_channels=1, num_classes=10)
    >>> clf(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from diffusion.paths import default_classifier_path


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class ImageClassifier(ModelMixin, ConfigMixin):
    """VGG-style CNN: per level two 3x3 conv-BN-ReLU, 2x2 max-pool between levels, global average
    pool, dropout, linear head.

    Input: float ``(B, in_channels, H, W)`` in [-1, 1]. Output: logits ``(B, num_classes)``.
    :meth:`features` gives the penultimate ``(B, channels[-1])`` activations.
    """

    @register_to_config
    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 channels: Sequence[int] = (32, 64, 128), dropout: float = 0.3,
                 class_names: Sequence[str] = ()):
        super().__init__()
        layers, c_in = [], in_channels
        for i, c in enumerate(channels):
            if i:
                layers.append(nn.MaxPool2d(2))
            layers.append(_conv_block(c_in, c))
            c_in = c
        self.body = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, channels[-1])`` of images in [-1, 1]."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Class ids ``(B,)`` int64 for images ``(B, C, H, W)`` in [-1, 1], in eval mode."""
        was_training = self.training
        self.eval()
        out = torch.cat([self(x[i : i + batch_size].to(self.device, self.dtype)).argmax(1).cpu()
                         for i in range(0, len(x), batch_size)])
        self.train(was_training)
        return out


def load_classifier(path: Optional[str] = None) -> ImageClassifier:
    """The shipped Fashion-MNIST classifier (or one at ``path``), in eval mode."""
    return ImageClassifier.from_pretrained(path or default_classifier_path()).eval()
