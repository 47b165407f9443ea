"""``python -m diffusion generate`` (``diffusion/cli/generate.py``) on a tiny saved pipeline, and
its errors."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from diffusion.cli import main
from conftest import make_pipe, make_text_pipe, seeded_unet


@pytest.fixture
def model_dir(tmp_path):
    pipe = make_pipe(seeded_unet())
    pipe.register_to_config(class_names=["T-shirt/top", "Trouser", "Bag"])
    pipe.save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


def test_generate_writes_grid_with_a_row_per_class(model_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["generate", "--model", model_dir, "--per-class", "3", "--steps", "2",
                 "--sampler", "ddim", "--out", str(out), "--quiet"]) == 0
    grid = np.asarray(Image.open(out))
    # make_grid: 3 rows (classes) x 3 columns of 8x8 images with 2-px padding -> 2 + 3 * 10 = 32
    assert grid.shape[:2] == (32, 32)
    printed = capsys.readouterr().out
    assert "NFE=2" in printed and "9 images" in printed


def test_generate_per_image_files_named_by_class_and_seed(model_dir, tmp_path):
    out_dir = tmp_path / "imgs"
    main(["generate", "--model", model_dir, "--classes", "Bag,0", "--per-class", "2", "--steps", "2",
          "--seed", "5", "--out", "", "--out-dir", str(out_dir), "--quiet"])
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "Bag_000005.png", "Bag_000006.png", "T-shirt-top_000007.png", "T-shirt-top_000008.png"]


def test_generate_same_seed_same_files(model_dir, tmp_path):
    for name in ("a", "b"):
        main(["generate", "--model", model_dir, "--per-class", "1", "--steps", "3", "--sampler",
              "euler-a", "--seed", "3", "--out", str(tmp_path / f"{name}.png"), "--quiet"])
    a, b = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in "ab")
    assert np.array_equal(a, b)


@pytest.mark.parametrize("flags, said", [([], "precision=fp32"),  # the suite pins auto to fp32
                                          (["--precision", "bf16"], "precision=bf16"),
                                          (["--bf16"], "precision=bf16")])
def test_generate_precision_flag_reaches_the_pipeline(model_dir, tmp_path, capsys, flags, said):
    main(["generate", "--model", model_dir, "--per-class", "1", "--steps", "2", "--out",
          str(tmp_path / "g.png"), "--quiet", *flags])
    assert said in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--precision", "fp32", "--bf16"], "--bf16 means --precision bf16"),
    (["--classes", "Sweater"], "unknown class 'Sweater'"),
    (["--classes", "7"], "class id 7 out of range: ids 0..2"),
    (["--sampler", "nope"], "unknown sampler 'nope'"),
    (["--steps", "0"], "error: --steps must be >= 1, got 0"),
])
def test_generate_bad_input_is_a_clear_error(model_dir, tmp_path, args, message):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", model_dir, "--out", str(tmp_path / "g.png"), "--quiet", *args])
    assert message in str(e.value)
    assert not (tmp_path / "g.png").exists()


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        main(["generate", "--model", str(tmp_path / "none")])


# --- text-to-image models -------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "model"
    make_text_pipe(scheduler=DDPMScheduler(beta_end=0.012)).save_pretrained(path)
    return str(path)


def test_generate_with_prompts_writes_a_row_per_prompt(text_model_dir, tmp_path, capsys):
    import torch

    from diffusion.pipelines.loading import load_pipeline

    out, out_dir = tmp_path / "grid.png", tmp_path / "imgs"
    assert main(["generate", "--model", text_model_dir, "--prompt", "a red apple", "--prompt",
                 "grinning face!", "--per-prompt", "2", "--steps", "2", "--sampler", "ddim",
                 "--seed", "4", "--out", str(out), "--out-dir", str(out_dir), "--quiet"]) == 0
    assert np.asarray(Image.open(out)).shape[:2] == (22, 22)  # 2 rows x 2 columns of 8x8
    assert "4 images, a row per prompt" in capsys.readouterr().out
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["a-red-apple_000004.png", "a-red-apple_000005.png",
                     "grinning-face_000006.png", "grinning-face_000007.png"]
    # The files are the pipeline's images for those prompts and seeds.
    pipe = load_pipeline(text_model_dir, quiet=True)
    expected = pipe(prompt=["a red apple", "a red apple", "grinning face!", "grinning face!"],
                    num_inference_steps=2, sampler="ddim", guidance_scale=2.0, output_type="np",
                    generator=[torch.Generator().manual_seed(s) for s in range(4, 8)]).images
    got = np.stack([np.asarray(Image.open(out_dir / n))[..., 0] for n in names])
    assert np.abs(got.astype(int) - expected[..., 0].astype(int)).max() <= 1  # PNG rounding


def test_negative_prompt_changes_the_images(text_model_dir, tmp_path):
    for name, extra in (("plain", []), ("neg", ["--negative-prompt", "a blue car"])):
        main(["generate", "--model", text_model_dir, "--prompt", "a red apple", "--per-prompt",
              "2", "--steps", "2", "--guidance-scale", "5", "--out", str(tmp_path / f"{name}.png"),
              "--quiet", *extra])
    plain, neg = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("plain", "neg"))
    assert plain.shape == neg.shape and not np.array_equal(plain, neg)


@pytest.mark.parametrize("which, args, message", [
    ("text", [], "is a text-to-image model: pass --prompt"),
    ("class", ["--prompt", "a bag"], "--prompt needs a text-conditional model"),
    ("class", ["--negative-prompt", "a bag"], "--negative-prompt needs a text-conditional model"),
])
def test_prompt_errors_are_clear(text_model_dir, model_dir, tmp_path, which, args, message):
    model = text_model_dir if which == "text" else model_dir
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", model, "--out", str(tmp_path / "g.png"), "--quiet", *args])
    assert message in str(e.value)
    assert not (tmp_path / "g.png").exists()


def test_without_sampler_the_model_s_own_scheduler_is_used(tmp_path, capsys):
    from samplers import build_sampler

    pipe = make_pipe(seeded_unet())
    pipe.set_sampler("euler-a")
    pipe.save_pretrained(tmp_path / "model")
    main(["generate", "--model", str(tmp_path / "model"), "--classes", "0,2", "--per-class", "2",
          "--steps", "3", "--out", "", "--out-dir", str(tmp_path / "imgs"), "--quiet"])
    assert "sampler=euler-a steps=3" in capsys.readouterr().out
    expected = pipe(class_labels=[0, 0, 2, 2], num_inference_steps=3, guidance_scale=2.0,
                    output_type="np",
                    generator=[torch.Generator().manual_seed(i) for i in range(4)]).images
    got = np.stack([np.asarray(Image.open(p))[..., 0]
                    for p in sorted((tmp_path / "imgs").iterdir())])
    assert np.abs(got.astype(int) - expected[..., 0].astype(int)).max() <= 1
    assert type(build_sampler("euler-a", pipe.scheduler)) is type(pipe.scheduler)
