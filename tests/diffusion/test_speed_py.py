"""benchmarks/speed.py: runs end to end on a tiny seeded pipeline (no timing assertions)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler

from conftest import benchmark_module, make_pipe, seeded_unet

@pytest.fixture(scope="module")
def bench():
    with benchmark_module("speed") as module:
        yield module


@pytest.fixture
def model_dir(tmp_path):
    pipe = make_pipe(seeded_unet(), DDIMScheduler(prediction_type="v_prediction"))
    pipe.save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


def test_speed_benchmark_runs_and_writes_json_and_markdown(bench, model_dir, tmp_path):
    out = tmp_path / "speed.json"
    result = bench.main(["--model", model_dir, "--steps", "2", "--batch-sizes", "3",
                         "--repeats", "1", "--matmul-size", "32", "--student", model_dir,
                         "--student-nfe", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["variants"].keys() == {"plain-diffusers", "pipeline-default", "pipeline-fp32",
                                        "student-nfe-1"}
    assert saved["batch_sizes"] == [1, 3] and saved["default_precision"] == "fp32"  # suite pin
    assert saved["hardware"].startswith("cpu: ")
    for name, v in saved["variants"].items():
        assert set(v["by_batch"]) == {"1", "3"} and v["best_batch"] in (1, 3)
        assert all(row["images_per_second"] > 0 for row in v["by_batch"].values())
    # the fp32 pipeline is the plain diffusers loop: same scheduler, same noise, same U-Net
    assert saved["variants"]["pipeline-fp32"]["mean_abs_difference_to_plain"] < 1e-6
    assert saved["flops"]["fp32"]["flops_per_forward"] > 0
    assert 0 < saved["flops"]["bf16"]["fraction_of_peak"]
    md = out.with_suffix(".md").read_text()
    assert "| plain-diffusers |" in md and "(1.00x)" in md and result["model"] == model_dir


def test_plain_loop_matches_the_pipeline_in_fp32(bench, model_dir):
    from diffusion.pipelines.base import generators_from_seeds
    from diffusion.pipelines.loading import load_pipeline

    pipe = load_pipeline(model_dir, quiet=True)
    pipe.set_progress_bar_config(disable=True)
    labels = torch.tensor([0, 1, 2])
    plain = bench.plain_diffusers_loop(pipe.unet, pipe.scheduler.config, type(pipe.scheduler),
                                       labels, pipe.num_classes, 3, 2.0, generators_from_seeds(range(3)))
    ours = pipe(class_labels=labels, num_inference_steps=3, guidance_scale=2.0, output_type="pt",
                generator=generators_from_seeds(range(3)), precision="fp32").images
    torch.testing.assert_close(plain, ours, atol=1e-6, rtol=0)
