"""Every user mistake on the command line is one ``error:`` line naming what was given and what
is allowed, before any work (``diffusion/cli/options.py``, ``generate.py``, ``scoring.py``)."""

from __future__ import annotations

import pytest
import torch

from conftest import make_pipe, seeded_unet
from diffusion.cli import main, options
from diffusion.models.gan import ConditionalGenerator
from diffusion.pipelines.gan import GANPipeline


@pytest.fixture(scope="module")
def class_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("class") / "model"
    make_pipe(seeded_unet()).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def gan_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("gan") / "model"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        g = ConditionalGenerator(latent_dim=8, num_classes=3, channels=(8, 4), image_size=8).eval()
    GANPipeline(generator_model=g).save_pretrained(path)
    return str(path)


def _error(argv, capsys=None) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    if e.value.code == 2 and capsys is not None:  # argparse: usage + message on stderr
        return capsys.readouterr().err
    return str(e.value.code)


@pytest.mark.parametrize("flag, value", [("--per-class", "0"), ("--steps", "0"),
                                         ("--batch-size", "-1")])
def test_the_one_size_that_is_wrong_is_named(class_model, tmp_path, flag, value):
    out = tmp_path / "g.png"
    message = _error(["generate", "--model", class_model, "--out", str(out), flag, value])
    assert message == f"error: {flag} must be >= 1, got {int(value)}"
    assert not out.exists()


def test_evaluate_names_num_samples():
    assert _error(["evaluate", "--num-samples", "1"]) == "error: --num-samples must be >= 2, got 1"


@pytest.mark.parametrize("argv, message", [
    (["compare", "--models", "m", "--steps", "10,abc"],
     "argument --steps: 'abc' in '10,abc' is not an integer"),
    (["compare", "--models", "m", "--batch-sizes", "1,x"],
     "argument --batch-sizes: 'x' in '1,x' is not an integer"),
    (["sweep", "--steps", "5,0"], "argument --steps: 0 in '5,0' must be >= 1"),
    (["sweep", "--nfe", "5,ten"], "argument --nfe: 'ten' in '5,ten' is not an integer"),
    (["sweep", "--nfe", "5", "--reference", "ddpm:many"],
     "argument --reference: 'ddpm:many': STEPS 'many' is not an integer >= 1"),
])
def test_comma_lists_are_argparse_errors_naming_the_item(argv, message, capsys):
    err = _error(argv, capsys)
    assert message in err and "Traceback" not in err


def test_comma_list_type_parses():
    assert options.int_list("5,10,20") == [5, 10, 20]
    assert options.sampler_steps("ddpm") == ("ddpm", 250)
    assert options.sampler_steps("heun:8") == ("heun", 8)


def test_cuda_is_refused_up_front_when_absent(monkeypatch, class_model, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    out = tmp_path / "g.png"
    err = _error(["generate", "--model", class_model, "--out", str(out), "--device", "cuda"],
                 capsys)
    assert "argument --device: 'cuda': CUDA is not available on this machine; available " \
           "devices: cpu" in err
    assert not out.exists()
    assert "unknown device 'gpu'" in _error(["evaluate", "--device", "gpu"], capsys)
    assert options.device("cpu") == "cpu"


@pytest.mark.parametrize("args, message", [
    (["--sampler", "ddim"], "error: --sampler: only diffusion pipelines take this; this is a gan "
                            "model (GANPipeline)"),
    (["--steps", "5"], "error: --steps: only diffusion pipelines take this; this is a gan model"),
    (["--guidance-scale", "3"], "error: --guidance-scale: only diffusion and autoregressive "
                                "pipelines take this; this is a gan model"),
    (["--top-k", "3"], "error: --top-k: only autoregressive pipelines take this; this is a gan"),
])
def test_flags_a_gan_has_no_use_for_are_refused(gan_model, tmp_path, args, message):
    out = tmp_path / "g.png"
    assert _error(["generate", "--model", gan_model, "--out", str(out), "--quiet", *args]) \
        .startswith(message)
    assert not out.exists()


def test_flags_of_other_families_are_refused_on_a_diffusion_model(class_model, tmp_path):
    out = tmp_path / "g.png"
    for flag, value in (("--truncation", "1.5"), ("--top-k", "3")):
        message = _error(["generate", "--model", class_model, "--out", str(out), flag, value])
        assert message.startswith(f"error: {flag}: only ") and "this is a diffusion model " \
            "(DiffusionImagePipeline)" in message
    assert not out.exists()


def test_a_gan_generates_without_diffusion_flags(gan_model, tmp_path, capsys):
    out = tmp_path / "g.png"
    assert main(["generate", "--model", gan_model, "--per-class", "1", "--out", str(out),
                 "--quiet"]) == 0
    assert out.exists()


def test_evaluate_prompts_on_a_class_model_speaks_of_the_flag(class_model):
    message = _error(["evaluate", "--model", class_model, "--prompts", "held-out", "--no-cache",
                      "--num-samples", "4", "--features", "classifier", "--metrics", "fid"])
    assert message == "error: --prompts needs a text-to-image model; this one takes class labels"


def test_synthesize_prompts_on_a_class_model_speaks_of_the_flag(class_model, tmp_path):
    out = tmp_path / "synthetic"
    message = _error(["synthesize", "--model", class_model, "--prompts", "held-out",
                      "--per-class", "1", "--out", str(out), "--quiet"])
    assert message == "error: --prompts needs a text-to-image model; this one takes class labels"
    assert not out.exists()


def test_generate_with_nonfinite_images_is_one_error_line(class_model, tmp_path, monkeypatch):
    """A NaN in the weights: one line naming the pipeline, the sampler and the images; no grid."""
    from diffusion.pipelines.diffusion import DiffusionImagePipeline

    load = DiffusionImagePipeline.from_pretrained.__func__

    def poisoned(cls, *args, **kwargs):
        pipe = load(cls, *args, **kwargs)
        with torch.no_grad():
            next(pipe.unet.parameters()).fill_(float("nan"))
        return pipe

    monkeypatch.setattr(DiffusionImagePipeline, "from_pretrained", classmethod(poisoned))
    out = tmp_path / "grid.png"
    message = _error(["generate", "--model", class_model, "--per-class", "1", "--steps", "2",
                      "--out", str(out), "--quiet"])
    assert message.startswith("error: DiffusionImagePipeline") and "non-finite" in message.lower()
    assert "in 3 of 3 images" in message and "sampler" in message, message
    assert not out.exists()


def test_cas_says_what_it_will_train_and_quiet_reaches_it(class_model, monkeypatch, capsys):
    import diffusion.evaluation
    import diffusion.evaluation.cas as cas

    seen = {}

    def fake_evaluate(pipe, **kwargs):
        return dict(pipeline="DiffusionImagePipeline", sampler="ddim", seed=0, autocast_dtype=None,
                    num_inference_steps=kwargs["num_inference_steps"],
                    guidance_scale=kwargs["guidance_scale"])

    def fake_cas(pipe, num_samples, **kwargs):
        seen.update(kwargs, num_samples=num_samples)
        print("fake CAS ran")
        return {"cas": 0.5, "real_accuracy": 0.5, "ratio": 1.0}

    monkeypatch.setattr(diffusion.evaluation, "evaluate", fake_evaluate)
    monkeypatch.setattr(cas, "pipeline_cas", fake_cas)
    assert main(["evaluate", "--model", class_model, "--cas", "--num-samples", "40", "--quiet",
                 "--no-cache"]) == 0
    out = capsys.readouterr().out
    line = ("CAS: training the classifier twice for 2500 steps each, on 40 generated images and "
            "on 40 real ones (--cas-steps sets the steps)")
    assert line in out and out.index(line) < out.index("fake CAS ran")
    assert seen["progress"] is False and seen["num_samples"] == 40 and seen["max_steps"] is None
    assert cas.planned_steps(7) == 7


def test_cas_without_progress_disables_the_training_bar():
    import diffusion.evaluation.cas as cas
    import training.loop as loop

    original = loop.tqdm
    with cas._no_training_bar():
        assert loop.tqdm(total=3).disable and loop.tqdm(total=3, disable=False).disable
    assert loop.tqdm is original and not loop.tqdm(total=3, file=open("/dev/null", "w")).disable


@pytest.mark.parametrize("args, message", [
    (["--guidance", "apg"], "error: --guidance: only diffusion pipelines take this; this is a gan "
                            "model (GANPipeline)"),
    (["--guidance-option", "eta=0"], "error: --guidance-option: only diffusion pipelines take "
                                     "this; this is a gan model"),
])
def test_guidance_flags_are_refused_for_a_gan(gan_model, tmp_path, args, message):
    out = tmp_path / "g.png"
    assert _error(["generate", "--model", gan_model, "--out", str(out), "--quiet", *args]) \
        .startswith(message)
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--guidance", "pag"], "error: --guidance: unknown guidance method 'pag'; choose one of "
                            "['apg', 'autoguidance', 'cfg', 'cfg++', 'cfg-zero-star', 'interval']"),
    (["--guidance", "apg", "--guidance-option", "beta=1"],
     "error: --guidance: guidance method 'apg' has no option 'beta'; it takes ['eta', "),
    (["--guidance", "apg", "--guidance-option", "eta"], "error: --guidance-option 'eta': give "
                                                        "KEY=VALUE"),
    (["--guidance-option", "eta=0"], "error: --guidance-option needs --guidance NAME"),
    (["--guidance", "cfg++", "--sampler", "dpmpp-2m"], "error: guidance 'cfg++' is defined for "
                                                       "the samplers ['ddim', 'ddpm', 'euler', "
                                                       "'euler-a']"),
    (["--guidance", "autoguidance"], "error: guidance 'autoguidance' needs guide_model="),
])
def test_bad_guidance_flags_are_one_line_errors(class_model, tmp_path, args, message):
    out = tmp_path / "g.png"
    assert _error(["generate", "--model", class_model, "--out", str(out), "--quiet",
                   "--steps", "2", *args]).startswith(message)
    assert not out.exists()


def test_guidance_flags_reach_the_pipeline_and_the_printed_line(class_model, tmp_path, capsys):
    out = tmp_path / "g.png"
    assert main(["generate", "--model", class_model, "--per-class", "1", "--steps", "2",
                 "--out", str(out), "--quiet", "--guidance", "interval",
                 "--guidance-option", "sigma_lo=0.5", "--guidance-option", "sigma_hi=2"]) == 0
    assert out.exists() and "guidance=interval guidance_scale=2.0" in capsys.readouterr().out
    assert main(["generate", "--model", class_model, "--per-class", "1", "--steps", "2",
                 "--out", str(out), "--quiet", "--guidance", "cfg++", "--sampler", "ddim"]) == 0
    assert "guidance=cfg++ guidance_scale=0.6" in capsys.readouterr().out


def test_evaluate_with_a_wrong_dataset_root_is_one_error_line(class_model, tmp_path):
    message = _error(["evaluate", "--model", class_model, "--dataset-root", str(tmp_path / "none"),
                      "--no-cache", "--num-samples", "4", "--metrics", "fid"])
    assert message.startswith("error: --dataset-root: Fashion-MNIST root ") and "holds no" in message
