"""The autoregressive pipeline (VQ-VAE + transformer prior): KV-cache equality, seeds and batch
invariance, guidance batching, decoding defaults, save/load, the CLI and evaluation."""

from __future__ import annotations

import json

import pytest
import torch

from diffusion.pipelines.autoregressive import DEFAULT_DECODING, AutoregressivePipeline
from diffusion.models.prior import TransformerPrior
from diffusion.pipelines.loading import load_pipeline
from diffusion.models.vqvae import VQVAE
from samplers.decoding import decode

K = 3


def seeded(cls, seed=0, **kwargs):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**kwargs)


def tiny_pipe(decoding=None, num_classes=K):
    vq = seeded(VQVAE, 0, codebook_size=16, codebook_dim=8, channels=(8, 8), kmeans_init=False).eval()
    prior = seeded(TransformerPrior, 1, vocab_size=16, num_positions=vq.num_tokens,
                   num_classes=num_classes, d_model=32, num_layers=2, num_heads=4).eval()
    pipe = AutoregressivePipeline(vqvae=vq, prior=prior, decoding=decoding,
                                  class_names=["a", "b", "c"] if num_classes == K else None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gens(n, offset=0):
    return [torch.Generator().manual_seed(offset + i) for i in range(n)]


class CountingPrior(torch.nn.Module):
    """Wraps a prior; records the batch size and length of every call."""

    def __init__(self, prior):
        super().__init__()
        self.prior, self.calls = prior, []

    def forward(self, input_ids, past_key_values=None):
        self.calls.append(tuple(input_ids.shape))
        return self.prior(input_ids, past_key_values=past_key_values)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_greedy_with_and_without_kv_cache_gives_identical_tokens_and_logits(guidance_scale):
    """The issue's test: class prefix, and a guidance-doubled batch; fp32, logits within 1e-4."""
    pipe = tiny_pipe()
    prior = pipe.prior
    labels = torch.tensor([0, 1, 2, 1])
    prefix = prior.prefix_ids(labels, 4)
    null = prior.null_prefix_ids(4) if guidance_scale != 1 else None
    runs = {}
    for use_cache in (True, False):
        counted = CountingPrior(prior)
        runs[use_cache] = (decode(counted, prefix, prior.config.num_positions, do_sample=False,
                                  guidance_scale=guidance_scale, null_prefix=null,
                                  use_cache=use_cache, output_scores=True), counted.calls)
    (cached, cached_calls), (full, full_calls) = runs[True], runs[False]
    assert torch.equal(cached.sequences, full.sequences)
    for a, b in zip(cached.scores, full.scores):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    n, rows = prior.config.num_positions, 4 if guidance_scale == 1 else 8
    assert cached.nfe == full.nfe == n == len(cached_calls)
    assert cached_calls == [(rows, 1)] + [(rows, 1)] * (n - 1)          # one new token per call
    assert full_calls == [(rows, 1 + i) for i in range(n)]              # the whole sequence


def test_same_seed_same_images_and_batch_invariance():
    pipe = tiny_pipe()
    kw = dict(output_type="pt", top_k=8, temperature=0.9)
    batch = pipe(class_labels=[0, 1, 2, 0, 1], generator=gens(5), **kw).images
    again = pipe(class_labels=[0, 1, 2, 0, 1], generator=gens(5), **kw).images
    alone = pipe(class_labels=[2], generator=gens(1, offset=2), **kw).images
    assert torch.equal(batch, again)
    torch.testing.assert_close(alone[0], batch[2], rtol=0, atol=1e-6)
    other = pipe(class_labels=[0, 1, 2, 0, 1], generator=gens(5, offset=10), **kw).images
    assert not torch.equal(batch, other)


def test_output_types_nfe_and_class_repetition():
    pipe = tiny_pipe()
    out = pipe(class_labels=[0, 2], num_images_per_prompt=2, generator=gens(4), output_type="np")
    assert out.images.shape == (4, 28, 28, 1) and out.images.dtype.name == "uint8"
    assert out.nfe == pipe.prior.config.num_positions
    pil = pipe(class_labels=1, generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 1 and pil[0].size == (28, 28)
    assert pipe(class_labels=[0], num_beams=2, output_type="pt").nfe == pipe.prior.config.num_positions


def test_guidance_batches_conditional_and_null_rows_in_one_forward():
    pipe = tiny_pipe()
    calls = []
    real_forward = pipe.prior.forward

    def spy(input_ids, past_key_values=None, use_cache=True):
        calls.append(input_ids.shape[0])
        return real_forward(input_ids, past_key_values=past_key_values, use_cache=use_cache)

    pipe.prior.forward = spy
    try:
        pipe(class_labels=[0, 1, 2], generator=gens(3), guidance_scale=1.0, output_type="pt")
        assert set(calls) == {3}
        calls.clear()
        pipe(class_labels=[0, 1, 2], generator=gens(3), guidance_scale=2.5, output_type="pt")
        assert set(calls) == {6} and len(calls) == pipe.prior.config.num_positions
    finally:
        del pipe.prior.forward


def test_saved_decoding_settings_are_the_defaults_and_calls_override_them():
    greedy = tiny_pipe(decoding={"temperature": 0.0})
    assert greedy.decoding_settings() == {**DEFAULT_DECODING, "temperature": 0.0}
    # temperature 0 = greedy: no generator needed, every call the same grid
    a = greedy(class_labels=[0, 1], output_type="pt").images
    b = greedy(class_labels=[0, 1], generator=gens(2, 7), output_type="pt").images
    assert torch.equal(a, b)
    explicit = tiny_pipe()(class_labels=[0, 1], do_sample=False, output_type="pt").images
    assert torch.equal(a, explicit)
    sampled = greedy(class_labels=[0, 1], temperature=1.0, generator=gens(2), output_type="pt").images
    plain = tiny_pipe()(class_labels=[0, 1], generator=gens(2), output_type="pt").images
    assert torch.equal(sampled, plain)
    with pytest.raises(ValueError, match="decoding may set"):
        tiny_pipe(decoding={"beams": 2})


def test_save_load_round_trip_keeps_weights_codebook_and_decoding(tmp_path):
    pipe = tiny_pipe(decoding={"top_k": 5, "guidance_scale": 1.5})
    pipe.save_pretrained(tmp_path / "ar", safe_serialization=True)
    assert json.loads((tmp_path / "ar" / "model_index.json").read_text())["_class_name"] == \
        "AutoregressivePipeline"
    again = load_pipeline(tmp_path / "ar", quiet=True)
    assert type(again) is AutoregressivePipeline
    assert again.decoding_settings() == pipe.decoding_settings()
    kw = dict(class_labels=[0, 1, 2], output_type="pt")
    assert torch.equal(again(generator=gens(3), **kw).images, pipe(generator=gens(3), **kw).images)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt="a cat"), "no text encoder"),
    (dict(class_labels=[5]), "class_labels"),
    (dict(class_labels=[0], num_images_per_prompt=0), "num_images_per_prompt"),
    (dict(class_labels=[0], guidance_scale=-1.0), "guidance_scale"),
    (dict(class_labels=[0, 1], generator=gens(3)), "generators"),
    (dict(class_labels=[0], output_type="jpg"), "output_type"),
    (dict(class_labels=[0], top_p=1.5), "top_p"),
    (dict(class_labels=[0], temperature=-1.0), "temperature"),
])
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipe()(**kwargs)


def test_mismatched_components_are_rejected():
    vq = VQVAE(codebook_size=16, codebook_dim=8, channels=(8, 8), kmeans_init=False)
    with pytest.raises(ValueError, match="codebook_size"):
        AutoregressivePipeline(vqvae=vq, prior=TransformerPrior(vocab_size=32, num_positions=49,
                                                                d_model=32, num_heads=4))
    with pytest.raises(ValueError, match="tokens per image"):
        AutoregressivePipeline(vqvae=vq, prior=TransformerPrior(vocab_size=16, num_positions=50,
                                                                d_model=32, num_heads=4))


def test_unconditional_prior_generates_without_labels_and_refuses_guidance():
    pipe = tiny_pipe(num_classes=None)
    assert pipe(num_images_per_prompt=2, generator=gens(2), output_type="pt").images.shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="guidance"):
        pipe(num_images_per_prompt=1, guidance_scale=2.0)


def test_cli_generate_passes_decoding_options_and_rejects_others(tmp_path, capsys):
    from diffusion.__main__ import main

    tiny_pipe().save_pretrained(tmp_path / "ar", safe_serialization=True)
    out = tmp_path / "grid.png"
    assert main(["generate", "--model", str(tmp_path / "ar"), "--per-class", "2", "--top-k", "4",
                 "--temperature", "0.8", "--out", str(out), "--quiet"]) == 0
    assert out.is_file() and "AutoregressivePipeline NFE=" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="truncation"):
        main(["generate", "--model", str(tmp_path / "ar"), "--truncation", "0.5", "--quiet"])
    from diffusion import default_model_path

    with pytest.raises(SystemExit, match="autoregressive"):
        main(["generate", "--model", default_model_path(), "--top-k", "4", "--quiet",
              "--out", str(tmp_path / "x.png")])


def test_evaluate_scores_an_ar_pipeline_and_ignores_diffusion_settings(tmp_path):
    from diffusion.evaluation import evaluate

    r = evaluate(tiny_pipe(), metrics="accuracy", num_samples=12, batch_size=6, sampler="ddim",
                 num_inference_steps=5, seed=0, cache_dir=tmp_path, progress=False,
                 pipeline_kwargs={"top_k": 4})
    assert r["n"] == 12 and 0 <= r["accuracy"] <= 1 and r["nfe"] == 49


def test_a_fresh_process_loads_a_saved_pipeline_by_folder(tmp_path):
    """diffusers loads saved components only from imported modules: the pipeline's module must
    import the VQ-VAE's, so ``load_pipeline`` works in a process that imported nothing else."""
    import subprocess
    import sys
    from pathlib import Path

    tiny_pipe().save_pretrained(tmp_path / "ar", safe_serialization=True)
    code = ("from diffusion.pipelines.loading import load_pipeline; "
            f"p = load_pipeline({str(tmp_path / 'ar')!r}, quiet=True); print(type(p.vqvae).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "VQVAE"


def test_cli_evaluate_records_the_decoding_setting_actually_used(tmp_path, capsys):
    from diffusion.__main__ import main

    tiny_pipe(decoding={"guidance_scale": 1.5}).save_pretrained(tmp_path / "ar", safe_serialization=True)
    out = tmp_path / "r.json"
    assert main(["evaluate", "--model", str(tmp_path / "ar"), "--metrics", "accuracy",
                 "--num-samples", "6", "--batch-size", "6", "--top-k", "4", "--no-cache",
                 "--quiet", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["decoding"] == {"temperature": 1.0, "top_k": 4, "top_p": None, "guidance_scale": 1.5}
    assert r["guidance_scale"] == 1.5 and "top_k=4" in capsys.readouterr().out
