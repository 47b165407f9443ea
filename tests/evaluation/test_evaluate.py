"""``evaluate``, ``sweep`` and their commands, end to end.

The strongest check replays real test images through ``RealImagesPipeline``: then FID against the
same images is ~0, precision and recall are 1, and the conditional accuracy equals the shipped
classifier's accuracy on those images computed directly.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import PixelFeatures, forward_spy, make_pipe
from diffusion.evaluation import evaluate
from diffusion.evaluation.features import ClassifierFeatures
from diffusion.evaluation.real import RealImagesPipeline
from diffusion.evaluation.sweep import plot_sweep, read_csv, sweep, sweep_plan, write_csv
from diffusion.data.datasets import TensorImageDataset, fashion_mnist
from diffusion.pipelines.base import NonFiniteImagesError

PER_CLASS = 30


@pytest.fixture(scope="module")
def test_split():
    return fashion_mnist("test")


@pytest.fixture(scope="module")
def replay(test_split):
    idx = torch.cat([torch.nonzero(test_split.labels == c)[:PER_CLASS, 0] for c in range(10)])
    real = TensorImageDataset(test_split.images[idx], test_split.labels[idx], test_split.class_names)
    return RealImagesPipeline(real), real


def test_replayed_real_images_score_as_the_real_set(replay, tmp_path):
    pipe, real = replay
    r = evaluate(pipe, real, num_samples=10 * PER_CLASS, batch_size=64, cache_dir=tmp_path,
                 progress=False)
    # Unbiased KID of a set against itself is slightly negative: the cross term keeps the
    # diagonal k(x, x) that the within-set terms leave out.
    assert r["fid"] < 1e-3 and -0.05 < r["kid"] <= 0
    assert r["precision"] == 1.0 and r["recall"] == 1.0
    clf = ClassifierFeatures()
    direct = (clf.logits((real.images + 1) / 2).argmax(1) == real.labels).double().mean().item()
    assert r["accuracy"] == pytest.approx(direct, abs=1e-12) and r["accuracy"] > 0.8
    assert r["n"] == r["reference_n"] == 10 * PER_CLASS and r["nfe"] == 0
    assert r["feature_network"] == clf.name and "penultimate" in r["feature_description"]
    assert 1.0 <= r["inception_score"] <= 10.0
    assert len(r["per_class_accuracy"]) == 10 and r["hardware"].startswith("cpu")


def test_scores_separate_a_wrong_class_assignment(replay, tmp_path):
    """Labels shifted by one: same images (FID ~0) but conditional accuracy collapses."""
    pipe, real = replay

    class Shifted(RealImagesPipeline):
        def __call__(self, class_labels, generator, **kwargs):
            return super().__call__([(c + 1) % 10 for c in class_labels], generator=generator,
                                    **kwargs)

    r = evaluate(Shifted(real), real, metrics="fid,accuracy", num_samples=10 * PER_CLASS,
                 cache_dir=None, progress=False)
    assert r["fid"] < 1e-3 and r["accuracy"] < 0.1


def test_reference_features_are_cached_by_dataset_split_network_and_n(replay, tmp_path, monkeypatch):
    pipe, real = replay
    import diffusion.evaluation.features as features

    calls = []
    original = features.extract_features
    monkeypatch.setattr(features, "extract_features",
                        lambda net, images, **kw: calls.append(len(images)) or original(net, images, **kw))
    kw = dict(metrics="fid", num_samples=20, cache_dir=tmp_path, progress=False)
    first = evaluate(pipe, "fashion-mnist", reference_num_samples=100, **kw)
    second = evaluate(pipe, "fashion-mnist", reference_num_samples=100, **kw)
    assert first["fid"] == second["fid"] and first["reference_n"] == 100
    assert calls.count(100) == 1  # the real images' features were computed once
    names = [p.name for p in (tmp_path / "reference").iterdir()]
    assert len(names) == 1 and names[0].startswith("fashion-mnist-test-n100-seed0-fashion-mnist-classifier@")
    evaluate(pipe, "fashion-mnist", reference_num_samples=120, **kw)
    assert len(list((tmp_path / "reference").iterdir())) == 2


def test_any_pipeline_with_a_custom_feature_network(tmp_path):
    pipe = make_pipe()
    real = TensorImageDataset(torch.rand(40, 1, 8, 8) * 2 - 1, torch.arange(40) % 3, ["a", "b", "c"])
    with forward_spy(pipe.unet) as calls:
        r = evaluate(pipe, real, metrics=["fid", "kid", "precision", "recall"], num_samples=12,
                     batch_size=5, sampler="heun", num_inference_steps=3, guidance_scale=2.0,
                     feature_network=PixelFeatures(), cache_dir=tmp_path, progress=False)
    assert r["nfe"] == 5 and len(calls) == 3 * 5  # heun: 2 * 3 - 1 calls for each of 3 batches
    assert r["fid"] > 0 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
    assert r["kid_subset_size"] == 12 and r["generated"] == 12
    assert r["sampler"] == "heun" and r["num_inference_steps"] == 3 and r["seed"] == 0
    again = evaluate(pipe, real, metrics=["fid"], num_samples=12, sampler="heun",
                     num_inference_steps=3, guidance_scale=2.0, feature_network=PixelFeatures(),
                     cache_dir=tmp_path, progress=False)
    assert again["generated"] == 0 and again["fid"] == pytest.approx(r["fid"], abs=1e-9)


def test_a_nonfinite_image_stops_evaluate_with_the_error_and_no_score(tmp_path):
    """A NaN image is not scored as a black one: evaluate raises the pipeline's error."""
    pipe = make_pipe()

    def nan(_module, _args, output):
        output.sample.fill_(float("nan"))
        return output

    pipe.unet.register_forward_hook(nan)
    real = TensorImageDataset(torch.rand(12, 1, 8, 8) * 2 - 1, torch.arange(12) % 3, ["a", "b", "c"])
    with pytest.raises(NonFiniteImagesError, match=r"in 4 of 4 images .* from sampler 'ddim'"):
        evaluate(pipe, real, metrics=["fid"], num_samples=4, sampler="ddim", num_inference_steps=2,
                 feature_network=PixelFeatures(), cache_dir=tmp_path, progress=False)
    assert not list(tmp_path.rglob("shard-*.npz")) and not list(tmp_path.rglob(".tmp-*"))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(metrics="fid,sharpness"), ValueError, "unknown metrics"),
    (dict(metrics=[]), ValueError, "unknown metrics"),
    (dict(num_samples=1), ValueError, "num_samples"),
    (dict(feature_network="inception"), FileNotFoundError, "inception"),
])
def test_bad_arguments_raise_before_generation(kwargs, error, match):
    pipe = make_pipe()
    with forward_spy(pipe.unet) as calls, pytest.raises(error, match=match):
        evaluate(pipe, **{"num_samples": 4, **kwargs}, cache_dir=None, progress=False)
    assert calls == []


def test_accuracy_needs_a_class_conditional_pipeline():
    from conftest import seeded_unet

    pipe = make_pipe(seeded_unet(num_classes=None))
    with pytest.raises(ValueError, match="class-conditional"):
        evaluate(pipe, metrics="accuracy", num_samples=4, cache_dir=None, progress=False)


def test_sweep_plan_picks_steps_within_each_nfe_budget():
    pipe = make_pipe()
    plan = sweep_plan(pipe, ["ddim", "heun"], nfe=[5, 10])
    assert plan == [("ddim", 5), ("ddim", 10), ("heun", 3), ("heun", 5)]
    assert sweep_plan(pipe, ["euler"], steps=[2, 2, 4]) == [("euler", 2), ("euler", 4)]
    with pytest.raises(ValueError, match="exactly one"):
        sweep_plan(pipe, ["ddim"], steps=[2], nfe=[2])
    with pytest.raises(ValueError, match="unknown sampler"):
        sweep_plan(pipe, ["nope"], steps=[2])


def test_sweep_rows_csv_round_trip_and_plots(tmp_path):
    pipe = make_pipe()
    real = TensorImageDataset(torch.rand(30, 1, 8, 8) * 2 - 1, torch.arange(30) % 3, ["a", "b", "c"])
    rows = sweep(pipe, ["ddim", "euler"], nfe=[1, 2], reference=("ddpm", 4), dataset=real,
                 metrics="fid,kid", num_samples=6, feature_network=PixelFeatures(),
                 cache_dir=tmp_path, progress=False)
    assert [(r["sampler"], r["nfe"], r["reference"]) for r in rows] == [
        ("ddim", 1, False), ("ddim", 2, False), ("euler", 1, False), ("euler", 2, False),
        ("ddpm", 4, True)]
    back = read_csv(write_csv(rows, tmp_path / "s.csv"))
    assert [r["fid"] for r in back] == pytest.approx([r["fid"] for r in rows])
    assert back[0]["sampler"] == "ddim" and back[-1]["reference"] is True
    paths = plot_sweep(back, tmp_path / "plots")
    assert [p.name for p in paths] == ["fid_vs_nfe.png", "fid_vs_seconds.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_evaluate_and_sweep_commands(tmp_path, capsys):
    from diffusion.__main__ import main

    common = ["--num-samples", "20", "--batch-size", "20", "--reference-num-samples", "100",
              "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(["evaluate", "--steps", "2", "--out", str(tmp_path / "e.json"), *common]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    printed = capsys.readouterr().out
    assert result["n"] == 20 and result["nfe"] == 2 and result["reference_n"] == 100
    assert f"{result['fid']:.3f}" in printed and "feature_network" in printed
    assert main(["sweep", "--samplers", "ddim,euler", "--nfe", "1,2", "--metrics", "fid",
                 "--out", str(tmp_path / "sw"), *common]) == 0
    rows = read_csv(tmp_path / "sw" / "sweep.csv")
    assert [(r["sampler"], r["nfe"]) for r in rows] == [("ddim", 1), ("ddim", 2), ("euler", 1),
                                                       ("euler", 2)]
    assert (tmp_path / "sw" / "fid_vs_nfe.png").is_file()
    with pytest.raises(SystemExit, match="inception-weights"):
        main(["evaluate", "--features", "inception", *common])
    with pytest.raises(SystemExit, match="unknown metrics"):
        main(["evaluate", "--metrics", "fid,nope", *common])


def test_real_images_pipeline_serves_each_class_in_a_seeded_order(test_split):
    pipe = RealImagesPipeline(test_split, seed=3)
    out = pipe(class_labels=[4, 4, 7], generator=[torch.Generator().manual_seed(s) for s in (4, 14, 7)])
    assert out.nfe == 0 and out.images.shape == (3, 1, 28, 28)
    assert 0 <= out.images.min() and out.images.max() <= 1
    first = torch.stack([pipe.by_class[4][0], pipe.by_class[4][1], pipe.by_class[7][0]])
    assert torch.equal(out.images, (pipe.images[first] + 1) / 2)
    assert (pipe.labels[first] == torch.tensor([4, 4, 7])).all()
    other = RealImagesPipeline(test_split, seed=4)
    assert other.components != pipe.components
    with pytest.raises(IndexError, match="class 4 has 1000"):
        pipe(class_labels=[4], generator=[torch.Generator().manual_seed(10 * 1000 + 4)])


@pytest.mark.slow
def test_two_processes_split_the_generation_and_agree_with_one(tmp_path):
    """``accelerate launch`` with 2 CPU processes: each generates every other shard into the
    shared cache; one process in this test then finds every shard made and the same FID."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "training"))
    from training_helpers import free_port, run_python

    from diffusion import default_model_path
    from diffusion.pipelines.loading import load_pipeline

    cache, out = tmp_path / "cache", tmp_path / "e.json"
    args = ["--num-samples", "40", "--shard-size", "10", "--batch-size", "10", "--steps", "2",
            "--metrics", "fid,accuracy", "--reference-num-samples", "100", "--quiet"]
    run_python(["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port()), "-m", "diffusion", "evaluate", *args,
                "--cache-dir", str(cache), "--out", str(out)], timeout=400)
    two = json.loads(out.read_text())
    shards = sorted(p.name for p in cache.glob("samples/*/shard-*.npz"))
    assert shards == [f"shard-0000{i}.npz" for i in range(4)] and two["n"] == 40
    one = evaluate(load_pipeline(default_model_path(), quiet=True), metrics="fid,accuracy",
                   num_samples=40, shard_size=10, batch_size=10, num_inference_steps=2,
                   guidance_scale=2.0, reference_num_samples=100, cache_dir=cache,
                   progress=False)  # no sampler: the model's own, as the CLI without --sampler
    assert one["generated"] == 0 and two["generated"] == 40
    # Same images (the shards are bytes on disk); features are recomputed here with another
    # thread count, so float sums differ in the last bits (seen: 2e-10 relative on CI).
    assert one["fid"] == pytest.approx(two["fid"], rel=1e-6) and one["accuracy"] == two["accuracy"]


def test_text_pipeline_accuracy_scores_each_image_against_its_prompt_s_class():
    from conftest import make_text_pipe
    from diffusion.evaluation.sampling import generate_samples, image_conditions
    from diffusion.models.classifier import load_classifier

    pipe = make_text_pipe(sample_size=28)
    prompts = [[f"class {c} photo", f"class {c} drawing"] for c in range(10)]
    call = dict(sampler="ddim", num_inference_steps=2, guidance_scale=2.0)
    r = evaluate(pipe, metrics="accuracy", num_samples=24, batch_size=10, class_prompts=prompts,
                 cache_dir=None, progress=False, **call)
    # Same figure by hand: the images of those prompts and seeds, classified.
    run = generate_samples(pipe, 24, call_kwargs=call, class_prompts=prompts, progress=False)
    assert image_conditions(0, 24, None, prompts)["prompt"][11] == "class 1 drawing"
    predicted = load_classifier().predict(run.images.float() / 127.5 - 1)
    assert r["accuracy"] == pytest.approx((predicted == torch.arange(24) % 10).float().mean().item())
    assert r["class_prompts"] == prompts and r["n"] == 24


@pytest.mark.parametrize("which, kwargs, match", [
    ("text", {}, "evaluated on prompts: pass class_prompts"),
    ("class", {"class_prompts": [["a"], ["b"], ["c"]]}, "class_prompts needs a text-conditional"),
    ("text", {"class_prompts": [["a"], []]}, "class_prompts must be"),
])
def test_prompt_arguments_are_checked_before_generation(which, kwargs, match):
    from conftest import make_text_pipe

    pipe = make_text_pipe() if which == "text" else make_pipe()
    with forward_spy(pipe.unet) as calls, pytest.raises(ValueError, match=match):
        evaluate(pipe, metrics="fid", num_samples=4, cache_dir=None, progress=False, **kwargs)
    assert calls == []


def test_evaluate_command_on_a_text_model_takes_prompt_sets(tmp_path, capsys):
    from conftest import make_text_pipe
    from diffusion.__main__ import main
    from diffusion.data.captions import FASHION_MNIST_HELD_OUT_PROMPTS

    model = tmp_path / "model"
    make_text_pipe(sample_size=28).save_pretrained(model)
    common = ["evaluate", "--model", str(model), "--num-samples", "10", "--steps", "1",
              "--metrics", "accuracy", "--no-cache", "--quiet"]
    assert main([*common, "--prompts", "held-out", "--out", str(tmp_path / "e.json")]) == 0
    assert "guidance_scale=2.0 prompts=held-out seed=0" in capsys.readouterr().out
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["class_prompts"] == [list(p) for p in FASHION_MNIST_HELD_OUT_PROMPTS]
    # A JSON file of prompt lists gives the same images, hence the same accuracy.
    (tmp_path / "p.json").write_text(json.dumps(result["class_prompts"]))
    main([*common, "--prompts", str(tmp_path / "p.json"), "--out", str(tmp_path / "f.json")])
    assert json.loads((tmp_path / "f.json").read_text())["accuracy"] == result["accuracy"]
    for extra, message in (([], r"pass --prompts held-out\|training"),
                           (["--prompts", "nope"], "neither 'held-out', 'training' nor a JSON")):
        with pytest.raises(SystemExit, match=message):
            main([*common, *extra])


def test_every_registered_metric_is_computed_and_recorded():
    """Each name in METRICS yields its value(s) from compute_metrics (the metric recipe of
    docs/contributing.md: a score in scores.py, its name in METRICS, a line in compute_metrics)."""
    from diffusion.evaluation.evaluator import METRICS, compute_metrics

    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(40, 6, generator=g), torch.randn(40, 6, generator=g) + 0.5
    logits, labels = torch.randn(40, 3, generator=g), torch.arange(40) % 3
    fake_speckle, real_speckle = torch.rand(40, 1, generator=g), torch.rand(40, 1, generator=g)
    keys = {"fid": "fid", "kid": "kid", "precision": "precision", "recall": "recall",
            "is": "inception_score", "accuracy": "accuracy", "speckle": "speckle_rate"}
    assert set(keys) == set(METRICS)
    for name in METRICS:
        out = compute_metrics(fake, real, logits, labels, [name], kid_subsets=5, kid_subset_size=20,
                              fake_speckle=fake_speckle, real_speckle=real_speckle)
        assert isinstance(out[keys[name]], float) and out[keys[name]] == out[keys[name]], name
        assert not set(keys.values()) - {keys[name]} & set(out), (name, sorted(out))
