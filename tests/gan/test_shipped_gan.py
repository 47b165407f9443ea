"""The shipped GAN baseline: loads by folder, NFE 1, and its measured conditional accuracy."""

import pytest

from diffusion import default_gan_path
from diffusion.evaluation import evaluate
from diffusion.pipelines.loading import load_pipeline


def test_shipped_gan_meets_its_accuracy_bar():
    pipe = load_pipeline(default_gan_path(), quiet=True)
    assert type(pipe).__name__ == "GANPipeline"
    r = evaluate(pipe, metrics="accuracy", num_samples=1000, cache_dir=None, progress=False)
    # Model card: 0.914 at n = 1,000 (seed 0, no truncation); the bar is 0.85.
    assert r["nfe"] == 1 and r["n"] == 1000
    assert r["accuracy"] >= 0.85 and r["accuracy"] == pytest.approx(0.914, abs=0.01)
