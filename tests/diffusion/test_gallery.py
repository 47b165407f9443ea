"""The gallery (``diffusion/gallery.py``, ``python -m diffusion gallery``) on tiny seeded
pipelines of every family: each picture is written, holds exactly the images a direct pipeline
call with its recorded seeds and settings makes, and ``gallery.json`` says how it was made."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.cli import main
from diffusion.gallery import PICTURES, Panel, SpeckleCheck, make_gallery, side_by_side
from diffusion.models.classifier import ImageClassifier
from diffusion.pipelines.base import generators_from_seeds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contract"))
from families import (autoregressive_pipe, diffusion_pipe, gan_pipe,  # noqa: E402
                      text_pipe)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny saved pipelines of every family and a tiny 10-class classifier (1 channel)."""
    root = tmp_path_factory.mktemp("gallery-models")
    paths = {}
    for name, build in (("model", diffusion_pipe), ("gan", gan_pipe), ("ar", autoregressive_pipe),
                        ("text_model", text_pipe)):
        build().save_pretrained(root / name)
        paths[name] = str(root / name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ImageClassifier(in_channels=1, num_classes=10, channels=(4, 8)).save_pretrained(root / "clf")
    paths["classifier"] = str(root / "clf")
    return paths


@pytest.fixture(scope="module")
def gallery(folders, tmp_path_factory):
    """One gallery run over every picture (a fake training run with six sample grids)."""
    run = tmp_path_factory.mktemp("run")
    (run / "samples").mkdir()
    for step in (100, 200, 300, 400, 500, 600):
        Image.new("L", (20, 20), step // 4).save(run / "samples" / f"step-{step:07d}.png")
    out = tmp_path_factory.mktemp("images")
    lines = []
    manifest = make_gallery(out, **folders, training_run=str(run), num_inference_steps=3,
                            per_class=2, log=lines.append)
    return out, manifest, lines


def test_every_picture_is_written_and_recorded(gallery):
    out, manifest, _ = gallery
    assert manifest["drawn_last"] == list(PICTURES)
    on_disk = json.loads((out / "gallery.json").read_text())
    assert on_disk == manifest
    for name, entry in manifest["pictures"].items():
        path = out / entry["file"]
        assert path.stat().st_size == entry["bytes"] > 0, name
        with Image.open(path) as img:
            assert img.size == (entry["width"], entry["height"])
            assert img.mode == "L"   # grayscale models: saved without colour channels
    assert manifest["total_bytes"] == sum(e["bytes"] for e in manifest["pictures"].values())
    assert not list(out.glob(".tmp-*"))


def test_families_record_nfe_and_seconds(gallery, folders):
    families = gallery[1]["pictures"]["families"]["families"]
    assert list(families) == ["diffusion", "GAN", "VQ-VAE + AR prior", "text to image"]
    assert families["diffusion"]["nfe"] == 3 and families["GAN"]["nfe"] == 1
    assert families["VQ-VAE + AR prior"]["nfe"] == 16        # 4x4 tokens, one prior call each
    assert families["diffusion"]["images"] == 3 * 2           # 3 classes x per_class
    assert all(f["seconds_per_image"] > 0 for f in families.values())


def _as_saved(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture.convert("L"))


def test_samplers_picture_holds_the_direct_calls(gallery, folders):
    """The strip picture equals a Panel of direct calls: seeds 0.., the recorded steps per NFE."""
    from diffusion.pipelines.loading import load_pipeline

    out, manifest, _ = gallery
    entry = manifest["pictures"]["samplers"]
    pipe = load_pipeline(folders["model"], quiet=True)
    pipe.set_progress_bar_config(disable=True)
    classes = entry["classes"]
    rows = []
    for sampler, per_nfe in entry["samplers"].items():
        strip = [pipe(class_labels=classes, sampler=sampler, num_inference_steps=s["steps"],
                      guidance_scale=2.0, output_type="pt",
                      generator=generators_from_seeds(range(len(classes)))).images
                 for s in per_nfe.values()]
        rows.append(torch.cat(strip))
    assert list(entry["samplers"]) and set(entry["samplers"]["euler-a"]) == {"5", "10", "20", "50"}
    # steps_for_nfe: heun makes 2 calls per step but the first
    assert entry["samplers"]["euler-a"]["20"]["steps"] == 20
    saved = Image.open(out / entry["file"])
    expected = Panel(torch.cat(rows), len(classes) * 4, row_labels=list(entry["samplers"]),
                     column_groups=[(f"NFE {n}", len(classes)) for n in (5, 10, 20, 50)],
                     title=[f"Samplers at 5 / 10 / 20 / 50 NFE (guidance 2; the same seeds 0..{len(classes) - 1} "
                            f"and classes in every strip)"]).render()
    assert np.array_equal(np.asarray(saved), _as_saved(expected))


def test_guidance_and_decoding_pictures_are_deterministic(gallery, folders, tmp_path):
    """Redrawn with the same seed: the same bytes (nothing in them depends on timing)."""
    out, manifest, _ = gallery
    again = make_gallery(tmp_path, only=["guidance", "ar-decoding", "training-steps"], **folders,
                         training_run=manifest["pictures"]["training-steps"]["training_run"],
                         num_inference_steps=3, per_class=2, log=lambda s: None)
    for name in ("guidance", "ar-decoding", "training-steps"):
        file = again["pictures"][name]["file"]
        assert (tmp_path / file).read_bytes() == (out / file).read_bytes(), name
    # a greedy row is one image repeated (argmax decoding ignores the seed); sampled rows are not
    strategies = manifest["pictures"]["ar-decoding"]["strategies"]
    assert list(strategies)[0] == "greedy" and strategies["greedy"]["nfe"] == 16


def test_text_prompts_are_ranked_by_the_classifier(gallery):
    entry = gallery[1]["pictures"]["text-prompts"]
    assert entry["held_out_scanned"] == 120          # 10 classes x 12 paraphrases
    kinds = [r["kind"] for r in entry["rows"]]
    assert kinds == ["training caption"] * 4 + ["held-out, works"] * 4 + ["held-out, fails"] * 4
    # best / worst by agreement (ties: prompt order), one prompt per class
    ranked = sorted(entry["held_out"], key=lambda r: (-r["agreement"], r["prompt"]))

    def first_per_class(rows):
        out = []
        for r in rows:
            if r["class"] not in {o["class"] for o in out}:
                out.append(r)
        return [(r["prompt"], r["agreement"]) for r in out[:4]]

    shown = [(r["prompt"], r["agreement"]) for r in entry["rows"]]
    assert shown[4:8] == first_per_class(ranked)
    assert shown[8:] == first_per_class(ranked[::-1])
    assert entry["held_out_working"] == sum(r["agreement"] >= entry["works_at"]
                                            for r in entry["held_out"])
    assert any("held-out paraphrases:" in line for line in gallery[2])


def test_training_steps_keeps_four_evenly_spaced_grids(gallery):
    entry = gallery[1]["pictures"]["training-steps"]
    assert entry["grids"] == [f"step-{s:07d}.png" for s in (100, 300, 400, 600)]


def test_panel_places_each_image_at_its_cell():
    """Each cell is the image enlarged ``scale`` times, at ``PAD``-spaced positions."""
    images = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 3, 3) / 10
    picture = np.asarray(Panel(images, 3, scale=2).render().convert("L"))
    assert picture.shape == (2 * (6 + 2), 3 * (6 + 2) - 2)
    for i in range(6):
        r, k = divmod(i, 3)
        cell = picture[r * 8:r * 8 + 6, k * 8:k * 8 + 6]
        assert (cell == round(i / 10 * 255)).all(), i
    assert (picture[6:8, :] == 255).all()   # white padding between rows


def test_side_by_side_and_bad_panels():
    a, b = Image.new("RGB", (5, 4), "black"), Image.new("RGB", (3, 9), "black")
    both = side_by_side([a, b], gap=2)
    assert both.size == (10, 9)
    assert np.asarray(both)[:, 5:7].min() == 255          # the gap is white
    with pytest.raises(ValueError, match="2 row labels for 1 rows"):
        Panel(torch.zeros(3, 1, 2, 2), 3, row_labels=["a", "b"]).render()


def test_speckle_check_flags_cells_by_row_and_column():
    check = SpeckleCheck.__new__(SpeckleCheck)
    check.threshold, check.reason = 1e-4, ""
    images = torch.zeros(6, 1, 28, 28)
    images[4, :, 2, 2] = 0.15                 # an isolated dim dot on the background
    assert check.flagged(images, columns=3) == [[1, 1]]
    assert check.flagged(torch.zeros(2, 1, 8, 8), columns=2) == []   # not Fashion-MNIST-shaped


def test_unknown_picture_and_missing_model_are_one_line_errors(folders, tmp_path):
    with pytest.raises(ValueError, match="unknown pictures"):
        make_gallery(tmp_path, only=["nope"])
    with pytest.raises(SystemExit, match="unknown pictures"):
        main(["gallery", "--only", "families,nope", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="does not exist|not a saved pipeline"):
        main(["gallery", "--model", str(tmp_path / "missing"), "--only", "guidance",
              "--out", str(tmp_path)])
    assert not (tmp_path / "guidance.png").exists()


def test_cli_draws_the_named_pictures(folders, tmp_path, capsys):
    assert main(["gallery", "--only", "guidance", "--out", str(tmp_path), "--steps", "2",
                 "--model", folders["model"]]) == 0
    assert (tmp_path / "guidance.png").is_file()
    assert "gallery: 1 pictures" in capsys.readouterr().out
