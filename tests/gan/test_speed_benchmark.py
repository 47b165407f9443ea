"""benchmarks/gan_vs_diffusion_speed.py: runs end to end on a tiny GAN against the shipped diffusion model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusion import default_model_path
from diffusion.models.gan import ConditionalGenerator
from diffusion.pipelines.gan import GANPipeline

from conftest import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("gan_vs_diffusion_speed") as module:
        yield module


@pytest.fixture
def gan_dir(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        g = ConditionalGenerator(latent_dim=8, num_classes=10, channels=(8, 4)).eval()
    GANPipeline(generator_model=g).save_pretrained(tmp_path / "gan", safe_serialization=True)
    return str(tmp_path / "gan")


def test_generate_all_uses_one_seed_per_image_whatever_the_batch(bench, gan_dir):
    from diffusion.pipelines.loading import load_pipeline

    pipe = load_pipeline(gan_dir, quiet=True)
    pipe.set_progress_bar_config(disable=True)
    a, nfe = bench.generate_all(pipe, 5, 2, seed=3, num_classes=10)
    b, _ = bench.generate_all(pipe, 5, 5, seed=3, num_classes=10)
    assert a.shape == (5, 1, 28, 28) and nfe == 1
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.skipif(not Path(default_model_path()).is_dir(), reason="shipped diffusion model missing")
def test_benchmark_times_both_sides_and_reports_the_speedup(bench, gan_dir, capsys):
    r = bench.main(["--gan", gan_dir, "--images", "2", "--batch", "2", "--repeats", "2",
                    "--warmup", "0", "--device", "cpu"])
    assert r["nfe"] == {"GAN": 1, "diffusion": 20}
    assert all(len(ts) == 2 for ts in r["seconds"].values())
    assert r["speedup"] == pytest.approx(r["images_per_s"]["GAN"] / r["images_per_s"]["diffusion"])
    assert r["speedup"] > 1       # 1 tiny forward vs 20 U-Net forwards on 4 rows
    out = capsys.readouterr().out
    assert "dpmpp-2m, 20 steps, guidance 2.0" in out and "GAN speed-up" in out


def test_missing_folder_is_a_usage_error(bench, tmp_path):
    with pytest.raises(SystemExit):
        bench.parse_args(["--gan", str(tmp_path / "nope")])
