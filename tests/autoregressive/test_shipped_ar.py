"""The shipped autoregressive baseline: loads by folder, its saved decoding setting, and its
measured conditional accuracy (model card: diffusion/weights/fashion-mnist-ar/README.md)."""

import pytest
import torch

from diffusion import default_ar_path
from diffusion.evaluation import evaluate
from diffusion.pipelines.loading import load_pipeline


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(default_ar_path(), quiet=True)


def test_shipped_ar_is_a_7x7_token_model_with_its_card_decoding_setting(pipe):
    assert type(pipe).__name__ == "AutoregressivePipeline"
    assert pipe.vqvae.token_grid == (7, 7) and pipe.prior.config.vocab_size == 256
    assert pipe.decoding_settings() == {"temperature": 1.0, "top_k": None, "top_p": None,
                                        "guidance_scale": 2.0}
    assert pipe.prior.dtype == torch.float32       # stored fp16, computed in fp32


def test_shipped_ar_meets_its_accuracy_bar(pipe):
    r = evaluate(pipe, metrics="accuracy", num_samples=1000, cache_dir=None, progress=False)
    # Model card: 0.955 at n = 1,000 (seed 0, the saved setting: guidance 2.0); the bar is 0.80.
    assert r["nfe"] == 49 and r["n"] == 1000
    assert r["accuracy"] >= 0.80 and r["accuracy"] == pytest.approx(0.955, abs=0.01)
