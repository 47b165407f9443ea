"""``compare``: one row per (model, sampler, steps) of any family, equal to ``evaluate`` on the
same settings, with speed, memory, parameters and training cost; Markdown/CSV/plots; the command."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import PixelFeatures, make_pipe, make_text_pipe, seeded_unet
from diffusion.evaluation import evaluate
from diffusion.evaluation.compare import (compare, count_parameters, pareto_front, plot_compare,
                                          training_cost, write_markdown)
from diffusion.evaluation.sweep import read_csv, write_csv
from diffusion.models.gan import ConditionalGenerator
from diffusion.pipelines.gan import GANPipeline
from diffusion.data.datasets import TensorImageDataset

K = 3


def gan_pipe(image_size=8):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        g = ConditionalGenerator(latent_dim=8, num_classes=K, channels=(8, 4),
                                 image_size=image_size).eval()
    return GANPipeline(generator_model=g)


def save_models(tmp_path, image_size=8):
    """A tiny diffusion model (with a training summary of two stages) and a tiny GAN, saved."""
    diffusion_dir, gan_dir = tmp_path / "tiny-diffusion", tmp_path / "tiny-gan"
    make_pipe(seeded_unet(sample_size=image_size)).save_pretrained(diffusion_dir)
    gan_pipe(image_size).save_pretrained(gan_dir)
    (diffusion_dir / "training_summary.json").write_text(json.dumps({
        "steps": 100, "train_seconds": 360.0, "hardware": "2 CPU cores",
        "previous_stages": [{"steps": 50, "train_seconds": 1440.0}]}))
    return diffusion_dir, gan_dir


def test_pareto_front_keeps_the_points_nothing_beats_in_both():
    points = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (0.5, 9.0), (4.0, 1.0), (2.0, 3.5)]
    assert pareto_front(points) == [3, 0, 1, 4]
    assert pareto_front([(1.0, 1.0)]) == [0]


def test_training_cost_sums_the_stages_and_is_empty_without_a_summary(tmp_path):
    diffusion_dir, gan_dir = save_models(tmp_path)
    cost = training_cost(diffusion_dir)
    assert cost == {"train_steps": 150, "train_seconds": 1800.0, "train_hours": 0.5,
                    "train_hardware": "2 CPU cores", "train_stages": 2}
    assert training_cost(gan_dir) == {} and training_cost(None) == {}


def test_parameter_count_keeps_the_frozen_text_encoder_apart():
    pipe = make_text_pipe()
    counts = count_parameters(pipe)
    assert counts["parameters"] == sum(p.numel() for p in pipe.unet.parameters())
    assert counts["frozen_encoder_parameters"] == sum(p.numel() for p in pipe.text_encoder.parameters())


def test_compare_rows_equal_evaluate_and_carry_cost_fields(tmp_path):
    diffusion_dir, gan_dir = save_models(tmp_path)
    real = TensorImageDataset(torch.rand(30, 1, 8, 8) * 2 - 1, torch.arange(30) % K, ["a", "b", "c"])
    common = dict(dataset=real, metrics="fid,kid,precision,recall", num_samples=9,
                  feature_network=PixelFeatures(), cache_dir=tmp_path / "cache")
    rows = compare([diffusion_dir, gan_dir], samplers=["ddim"], steps=[2, 3],
                   batch_sizes=[1, 4], latency_repeats=2, measure_memory=False, progress=False,
                   **common)
    assert [(r["model"], r["family"], r["sampler"], r["nfe"]) for r in rows] == [
        ("tiny-diffusion", "diffusion", "ddim", 2), ("tiny-diffusion", "diffusion", "ddim", 3),
        ("tiny-gan", "gan", "one forward", 1)]
    # Quality equals a direct evaluate() of the same settings (the compare's samples are cached).
    direct = evaluate(make_pipe(seeded_unet()), sampler="ddim", num_inference_steps=3,
                      guidance_scale=2.0, progress=False, **common)
    assert direct["generated"] == 0
    for m in ("fid", "kid", "precision", "recall"):
        assert rows[1][m] == pytest.approx(direct[m], abs=1e-12), m
    unet_params = sum(p.numel() for p in seeded_unet().parameters())
    assert rows[0]["parameters"] == unet_params and rows[0]["train_steps"] == 150
    assert rows[2]["parameters"] == sum(p.numel() for p in gan_pipe().generator_model.parameters())
    assert "train_steps" not in rows[2]
    for r in rows:
        assert set(r["throughput"]) == {1, 4} and r["best_batch_size"] in (1, 4)
        assert r["images_per_second"] == max(r["throughput"].values())
        assert 0 < r["seconds_per_image"] < 60
        assert r["peak_memory_bytes"] is None  # on CPU only a fresh process measures it

    md = write_markdown(rows, tmp_path / "c.md", command="python -m diffusion compare ...",
                        plots=plot_compare(rows, tmp_path / "c"))
    text = md.read_text()
    assert text.index("python -m diffusion compare ...") < text.index("| model |")
    assert "n = 9 generated images" in text and "features: pixels" in text
    assert text.count("| tiny-") == 3 and "![quality_vs_seconds](c/quality_vs_seconds.png)" in text
    assert all((tmp_path / "c" / f).stat().st_size > 1000
               for f in ("quality_vs_seconds.png", "quality_vs_nfe.png"))
    back = read_csv(write_csv(rows, tmp_path / "c.csv"))
    assert [r["fid"] for r in back] == pytest.approx([r["fid"] for r in rows])


def test_compare_refuses_bad_input_before_work(tmp_path):
    with pytest.raises(ValueError, match="at least one model"):
        compare([])
    with pytest.raises(FileNotFoundError, match="no model folder"):
        compare([tmp_path / "missing"])
    diffusion_dir, _ = save_models(tmp_path)
    with pytest.raises(ValueError, match="unknown sampler"):
        compare([diffusion_dir], samplers=["nope"], cache_dir=None, progress=False)
    with pytest.raises(ValueError, match="batch_sizes"):
        compare([diffusion_dir], batch_sizes=[0], num_samples=2, metrics="fid",
                feature_network=PixelFeatures(), measure_memory=False, cache_dir=None,
                dataset=TensorImageDataset(torch.rand(8, 1, 8, 8) * 2 - 1, torch.arange(8) % K,
                                           ["a", "b", "c"]), progress=False)


def test_compare_command_writes_the_table_with_its_command(tmp_path, capsys):
    from diffusion.__main__ import main

    diffusion_dir, gan_dir = save_models(tmp_path, image_size=28)
    out = tmp_path / "results" / "compare.md"
    argv = ["compare", "--models", str(diffusion_dir), str(gan_dir), "--steps", "2",
            "--num-samples", "10", "--batch-size", "5", "--batch-sizes", "1,2",
            "--reference-num-samples", "100", "--cache-dir", str(tmp_path / "cache"),
            "--no-memory", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    text = out.read_text()
    assert "python -m diffusion " + " ".join(argv) in text
    rows = read_csv(tmp_path / "results" / "compare" / "compare.csv")
    assert [(r["family"], r["nfe"]) for r in rows] == [("diffusion", 2), ("gan", 1)]
    assert rows[0]["sampler"] == "ddpm" and rows[0]["feature_network"].startswith("fashion-mnist")
    assert (tmp_path / "results" / "compare" / "quality_vs_nfe.png").is_file()
    with pytest.raises(SystemExit, match="saved decoding"):
        main(argv[:-2] + ["--temperature", "0.5", "--out", str(out)])
    with pytest.raises(SystemExit, match=r"\.md"):
        main(argv[:-1] + [str(tmp_path / "table.txt")])


def test_memory_is_measured_in_a_fresh_process_and_grows_with_the_batch(tmp_path):
    from diffusion.evaluation.compare import measure_process_memory

    diffusion_dir, _ = save_models(tmp_path, image_size=28)
    small = measure_process_memory(diffusion_dir, 1, call_kwargs={"num_inference_steps": 1})
    # Loading the model and one call grow the process by > 0 bytes, by far less than the 4 GiB a
    # leak or a wrong unit would show; the interpreter with torch imported holds > 100 MiB.
    assert 0 < small["peak_memory_bytes"] < 4 * 2**30
    assert small["baseline_memory_bytes"] > 100 * 2**20
    with pytest.raises(RuntimeError, match="memory probe"):
        measure_process_memory(tmp_path / "missing", 1)


def test_cas_rows_train_on_the_rows_own_cached_images(tmp_path, monkeypatch):
    """``cas=True`` hands each row's images (image i: class i % K, as evaluated) and its
    ``cas_steps`` to CAS, and the row carries the result (CAS itself: tests/evaluation/test_cas.py)."""
    from diffusion.evaluation import cas as cas_module
    from diffusion.evaluation.sampling import generate_samples

    seen = []

    def fake_cas(images, labels, *, seed, max_steps, progress=True):
        seen.append((torch.as_tensor(images).clone(), torch.as_tensor(labels).clone(), max_steps))
        return {"cas": 0.5 + len(seen) / 10, "real_accuracy": 0.9, "ratio": 1.0}

    monkeypatch.setattr(cas_module, "classification_accuracy_score", fake_cas)
    diffusion_dir, gan_dir = save_models(tmp_path)
    real = TensorImageDataset(torch.rand(30, 1, 8, 8) * 2 - 1, torch.arange(30) % K, ["a", "b", "c"])
    rows = compare([diffusion_dir, gan_dir], steps=[2], num_samples=6, metrics="fid", cas=True,
                   cas_steps=7, dataset=real, feature_network=PixelFeatures(), batch_sizes=[1],
                   latency_repeats=1, measure_memory=False, cache_dir=tmp_path / "cache",
                   progress=False)
    assert [(r["cas"], r["cas_real_accuracy"], r["cas_ratio"]) for r in rows] == [
        (0.6, 0.9, 1.0), (0.7, 0.9, 1.0)]
    expected = generate_samples(gan_pipe(), 6, cache_dir=None, progress=False)
    images, labels, steps = seen[1]
    assert steps == 7 and labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert torch.equal(torch.as_tensor(images), torch.as_tensor(expected.images))


def test_a_distilled_student_is_compared_with_its_sampler_at_4_steps_and_guidance_1(tmp_path):
    """A student whose scheduler is ``lcm``: by default one row, lcm at 4 steps, guidance 1
    (4 forwards); beside ``ddim`` rows, those keep guidance 2 and 20 steps."""
    from diffusers import DDPMScheduler

    from samplers import build_sampler

    student = make_pipe(scheduler=build_sampler("lcm", DDPMScheduler(prediction_type="v_prediction")))
    real = TensorImageDataset(torch.rand(30, 1, 8, 8) * 2 - 1, torch.arange(30) % K, ["a", "b", "c"])
    common = dict(dataset=real, metrics="fid", num_samples=6, feature_network=PixelFeatures(),
                  cache_dir=None, batch_sizes=[2], latency_repeats=1, measure_memory=False,
                  progress=False)
    rows = compare([student], **common)
    assert [(r["sampler"], r["num_inference_steps"], r["nfe"], r["guidance_scale"]) for r in rows] \
        == [("lcm", 4, 4, 1.0)]
    rows = compare([student], samplers=["lcm", "ddim"], steps=[2], **common)
    assert [(r["sampler"], r["guidance_scale"]) for r in rows] == [("lcm", 1.0), ("ddim", 2.0)]
