"""Sample-cache keys of the shipped models do not depend on where modules live: the keys below
were computed at commit 5aea950 (before the layout change) and are computed again here, so cached
sample shards from earlier runs (``runs/eval-cache``, the results in docs/results) stay valid.

A key covers the pipeline class name, its weights and configs, the call, the scheduler's full
config and class path, the seed and shard size. It changes legitimately when any of those do,
e.g. a diffusers upgrade that adds a scheduler option; then the committed results say which
version made them and this table is re-recorded.

One such change: since ``precision=`` (issue 16) a diffusion pipeline's bf16 run autocasts the
network only (guidance and the sampler's step moved from bf16 to float32), so its bf16 images differ
by rounding and its key gains ``sampler_math``; everything else in the key is as recorded, which is
what this table still checks. GAN and AR bf16 images did not change, nor did any float32 run.
"""

from __future__ import annotations

import pytest
import torch

from diffusion import default_ar_path, default_gan_path, default_model_path, default_text_model_path
from diffusion.evaluation.sampling import pipeline_call_kwargs, sample_settings, settings_key
from diffusion.pipelines.loading import load_pipeline

STEPS20 = dict(num_inference_steps=20, guidance_scale=2.0)

#: (folder, call, key at 5aea950) for seed 0, shards of 500, bf16 autocast
RECORDED = {
    "diffusion dpmpp-2m": (default_model_path, dict(sampler="dpmpp-2m", **STEPS20), "105739ecb89f36e7"),
    "diffusion ddim": (default_model_path, dict(sampler="ddim", num_inference_steps=10, guidance_scale=2.0),
                       "8c982e891ba86e1f"),
    "diffusion pndm": (default_model_path, dict(sampler="pndm", num_inference_steps=10, guidance_scale=2.0),
                       "4e6870430d5858cc"),
    "gan": (default_gan_path, {}, "83f9d565e96d2e05"),
    "ar": (default_ar_path, {}, "fafdc83bb1c6fe4a"),
    "text": (default_text_model_path, STEPS20, "e9fd97f598dbe5a2"),
}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_sample_cache_key_is_the_one_recorded_before_the_move(name):
    path, call, key = RECORDED[name]
    pipe = load_pipeline(path(), quiet=True)
    settings = sample_settings(pipe, pipeline_call_kwargs(pipe, None, **call), 0, 500, torch.bfloat16)
    samples_with_a_scheduler = getattr(pipe, "scheduler", None) is not None
    assert settings.pop("sampler_math", None) == ("float32" if samples_with_a_scheduler else None)
    assert settings_key(settings) == key
