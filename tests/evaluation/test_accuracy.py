"""Conditional accuracy: exact values with a stub classifier, batch-size independence."""

import pytest
import torch

from diffusion.models.classifier import ImageClassifier
from diffusion.evaluation.accuracy import conditional_accuracy
from conftest import make_pipe


class ConstantClassifier(ImageClassifier):
    """Predicts class ``c`` for every image."""

    def __init__(self, c, num_classes=3):
        super().__init__(num_classes=num_classes, channels=(4,))
        self.c = c

    def forward(self, x):
        logits = torch.zeros(len(x), self.config.num_classes)
        logits[:, self.c] = 1.0
        return logits


def test_accuracy_is_the_fraction_of_the_requested_class(tiny_pipe):
    # classes cycle 0,1,2,0,1,2,0 over 7 samples: class 0 is requested 3 times of 7
    r = conditional_accuracy(tiny_pipe, ConstantClassifier(0), num_samples=7,
                             num_inference_steps=2, batch_size=3)
    assert r["accuracy"] == pytest.approx(3 / 7)
    assert r["per_class"] == [1.0, 0.0, 0.0]
    assert r["n"] == 7 and r["nfe"] == 2


def test_result_does_not_depend_on_batch_size(tiny_pipe):
    torch.manual_seed(0)
    clf = ImageClassifier(num_classes=3, channels=(4, 8)).eval()
    a = conditional_accuracy(tiny_pipe, clf, num_samples=6, num_inference_steps=3, batch_size=6,
                             sampler="ddpm")
    b = conditional_accuracy(tiny_pipe, clf, num_samples=6, num_inference_steps=3, batch_size=2,
                             sampler="ddpm")
    assert a["per_class"] == b["per_class"]


def test_unconditional_pipeline_is_refused():
    from conftest import seeded_unet

    pipe = make_pipe(seeded_unet(num_classes=None))
    with pytest.raises(ValueError, match="class-conditional"):
        conditional_accuracy(pipe, ConstantClassifier(0), num_samples=2)
