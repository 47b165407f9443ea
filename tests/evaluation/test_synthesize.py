"""``diffusion.evaluation.synthesize`` and ``python -m diffusion synthesize``: the exported image folder reads
back through torchvision, Hugging Face ``datasets`` and ``diffusion.data.datasets`` with the pipeline's class
ids as labels, and every PNG is the pipeline's own image for its class and seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_pipe, make_text_pipe, seeded_unet
from diffusion.__main__ import main
from diffusion.pipelines.autoregressive import AutoregressivePipeline
from diffusion.models.prior import TransformerPrior
from diffusion.models.gan import ConditionalGenerator
from diffusion.pipelines.gan import GANPipeline
from diffusion.pipelines.diffusion import DiffusionImagePipeline
from diffusion.evaluation.synthesize import class_folder_names, synthesize
from diffusion.models.vqvae import VQVAE
from diffusion.data.captions import FASHION_MNIST_HELD_OUT_PROMPTS
from diffusion.data import FASHION_MNIST_CLASSES, load_dataset

NAMES = ["T-shirt/top", "Trouser", "Bag"]
K, PER_CLASS = 3, 4
STEPS = dict(num_inference_steps=2)


def seeded(cls, seed=0, **kwargs):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**kwargs).eval()


def diffusion_pipe(**unet):
    pipe = make_pipe(seeded_unet(**unet))
    pipe.register_to_config(class_names=NAMES)
    return pipe


def gan_pipe():
    g = seeded(ConditionalGenerator, latent_dim=8, num_classes=K, channels=(8, 4), out_channels=3)
    return GANPipeline(generator_model=g, class_names=NAMES)


def ar_pipe():
    vq = seeded(VQVAE, codebook_size=16, codebook_dim=8, channels=(8, 8), kmeans_init=False)
    prior = seeded(TransformerPrior, 1, vocab_size=16, num_positions=vq.num_tokens, num_classes=K,
                   d_model=32, num_layers=2, num_heads=4)
    pipe = AutoregressivePipeline(vqvae=vq, prior=prior, class_names=NAMES)
    pipe.set_progress_bar_config(disable=True)
    return pipe


FAMILIES = {"diffusion": diffusion_pipe, "gan": gan_pipe, "ar": ar_pipe}


def metadata(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def as_uint8(images: torch.Tensor) -> np.ndarray:
    """float ``(B, C, H, W)`` in [0, 1] -> uint8 ``(B, H, W, C)``, as the export quantises."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def png(path: Path) -> np.ndarray:
    """uint8 ``(H, W, C)`` of a PNG file, and its PIL mode."""
    with Image.open(path) as im:
        x = np.asarray(im)
        return (x[..., None] if x.ndim == 2 else x), im.mode


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def export(request, tmp_path_factory):
    """(pipeline, out folder, summary) of a ``PER_CLASS``-per-class export of each family."""
    pipe = FAMILIES[request.param]()
    out = tmp_path_factory.mktemp(request.param) / "synthetic"
    summary = synthesize(pipe, out, PER_CLASS, batch_size=5, seed=10, progress=False, **STEPS)
    return pipe, out, summary


def test_layout_metadata_and_summary(export):
    pipe, out, summary = export
    folders = ["0_T-shirt_top", "1_Trouser", "2_Bag"]
    assert sorted(p.name for p in out.iterdir()) == folders + ["metadata.jsonl", "synthesis.json"]
    for c, folder in enumerate(folders):
        assert sorted(p.name for p in (out / folder).iterdir()) == \
            [f"{folder}_{i:05d}.png" for i in range(c, K * PER_CLASS, K)]
    rows = metadata(out)
    assert [r["file_name"] for r in rows] == [f"{folders[i % K]}/{folders[i % K]}_{i:05d}.png"
                                              for i in range(K * PER_CLASS)]
    assert [(r["label"], r["class_name"], r["seed"]) for r in rows] == \
        [(i % K, NAMES[i % K], 10 + i) for i in range(K * PER_CLASS)]
    assert all("prompt" not in r for r in rows)
    assert summary["n"] == K * PER_CLASS and summary["classes"] == NAMES
    assert summary["folders"] == folders and summary["folder"] == str(out)
    info = json.loads((out / "synthesis.json").read_text())
    assert info["n"] == K * PER_CLASS and info["per_class"] == PER_CLASS and info["seed"] == 10
    assert info["classes"] == [{"label": c, "name": n, "folder": f}
                               for c, (n, f) in enumerate(zip(NAMES, folders))]
    assert info["pipeline"] == type(pipe).__name__ and len(info["fingerprint"]) == 64
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folders


def test_every_png_is_the_pipeline_image_of_its_class_and_seed(export):
    pipe, out, _ = export
    accepted = STEPS if isinstance(pipe, DiffusionImagePipeline) else {}
    n = K * PER_CLASS
    with torch.no_grad():  # one image per call: the exact computation of nothing but image i
        direct = np.concatenate([as_uint8(pipe(class_labels=[i % K], output_type="pt", **accepted,
                                               generator=[torch.Generator().manual_seed(10 + i)]
                                               ).images) for i in range(n)])
    channels = direct.shape[-1]
    for i, row in enumerate(metadata(out)):
        pixels, mode = png(out / row["file_name"])
        assert mode == {1: "L", 3: "RGB"}[channels]
        # Exported in batches of 5: the image does not depend on its batch (one generator each).
        assert np.array_equal(pixels, direct[i]), f"image {i} differs from the pipeline's"


def test_torchvision_imagefolder_labels_are_the_class_ids(export):
    from torchvision.datasets import ImageFolder

    _, out, summary = export
    ds = ImageFolder(str(out))
    assert ds.class_to_idx == {f: c for c, f in enumerate(summary["folders"])}
    label_of = {str(out / r["file_name"]): r["label"] for r in metadata(out)}
    assert len(ds) == len(label_of) and {p: y for p, y in ds.samples} == label_of


def test_training_loader_reads_it_back_with_the_class_ids(export):
    _, out, _ = export
    rows = sorted(metadata(out), key=lambda r: r["file_name"])  # the loader's (folder, file) order
    first, mode = png(out / rows[0]["file_name"])
    ds = load_dataset("image-folder", root=str(out), image_size=first.shape[0],
                      channels=first.shape[-1])
    assert ds.labels.tolist() == [r["label"] for r in rows]
    expected = np.stack([png(out / r["file_name"])[0] for r in rows])
    assert torch.equal(((ds.images + 1) * 127.5).round().to(torch.uint8),
                       torch.from_numpy(expected).permute(0, 3, 1, 2))


def test_hugging_face_imagefolder_reads_the_metadata_labels(export):
    datasets = pytest.importorskip("datasets")

    _, out, _ = export
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    rows = metadata(out)
    assert len(ds) == len(rows)
    assert sorted(zip(ds["seed"], ds["label"])) == sorted((r["seed"], r["label"]) for r in rows)


def test_same_arguments_same_files_whatever_the_batch_size(tmp_path):
    pipe = diffusion_pipe()
    a = synthesize(pipe, tmp_path / "a", 3, batch_size=2, progress=False, **STEPS)
    b = synthesize(pipe, tmp_path / "b", 3, batch_size=9, progress=False, **STEPS)
    assert a["folders"] == b["folders"]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 9
    for f in files:
        assert np.array_equal(png(tmp_path / "a" / f)[0], png(tmp_path / "b" / f)[0]), f
    assert (tmp_path / "a" / "metadata.jsonl").read_bytes() == \
        (tmp_path / "b" / "metadata.jsonl").read_bytes()


def test_existing_folders_are_refused_unless_an_earlier_export_is_overwritten(tmp_path):
    pipe = diffusion_pipe()
    out = tmp_path / "out"
    synthesize(pipe, out, 1, progress=False, **STEPS)
    with pytest.raises(ValueError, match="is not empty; pass overwrite=True"):
        synthesize(pipe, out, 2, progress=False, **STEPS)
    assert len(metadata(out)) == K  # untouched
    summary = synthesize(pipe, out, 2, progress=False, overwrite=True, **STEPS)
    assert summary["n"] == len(metadata(out)) == len(list(out.rglob("*.png"))) == 2 * K

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a synthesize export"):
        synthesize(pipe, other, 1, progress=False, overwrite=True, **STEPS)
    assert (other / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        synthesize(pipe, tmp_path / "file", 1, progress=False, **STEPS)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert synthesize(pipe, empty, 1, progress=False, **STEPS)["n"] == K
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "notes", "out"]


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(per_class=0), ValueError, "per_class must be an int >= 1, got 0"),
    (dict(per_class=1.5), ValueError, "per_class must be an int >= 1"),
    (dict(per_class=True), ValueError, "per_class must be an int >= 1"),
    (dict(batch_size=0), ValueError, "batch_size must be an int >= 1"),
    (dict(seed="0"), TypeError, "seed must be an int"),
    (dict(class_names=["a", "b"]), ValueError, "class_names has 2 names for 3 classes"),
    (dict(class_prompts=[["a"], ["b"], ["c"]]), ValueError, "class_prompts needs a text-cond"),
])
def test_bad_arguments_are_refused_before_any_work(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        synthesize(diffusion_pipe(), tmp_path / "out", **{"per_class": 1, **kwargs})
    assert not list(tmp_path.iterdir())


def test_unconditional_pipeline_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="is unconditional: a labelled dataset needs"):
        synthesize(make_pipe(seeded_unet(num_classes=None)), tmp_path / "out", 1)


def test_images_neither_gray_nor_rgb_leave_nothing_behind(tmp_path):
    with pytest.raises(ValueError, match="images have 2 channels; PNG export takes 1"):
        synthesize(diffusion_pipe(in_channels=2), tmp_path / "out", 1, progress=False, **STEPS)
    assert not list(tmp_path.iterdir())


def test_text_pipeline_exports_each_class_prompts_in_turn(tmp_path):
    pipe = make_text_pipe()
    prompts = [["a red apple", "a green apple"], ["a blue car"]]
    with pytest.raises(ValueError, match="evaluated on prompts: pass class_prompts"):
        synthesize(pipe, tmp_path / "none", 1)
    out = tmp_path / "text"
    summary = synthesize(pipe, out, 2, class_prompts=prompts, class_names=["apple", "car"],
                         guidance_scale=2.0, progress=False, **STEPS)
    rows = metadata(out)
    assert summary["folders"] == ["0_apple", "1_car"]
    assert [(r["label"], r["class_name"], r["prompt"]) for r in rows] == [
        (0, "apple", "a red apple"), (1, "car", "a blue car"),
        (0, "apple", "a green apple"), (1, "car", "a blue car")]
    with torch.no_grad():
        direct = pipe(prompt=["a green apple"], guidance_scale=2.0, output_type="pt",
                      generator=[torch.Generator().manual_seed(2)], **STEPS).images
    assert np.array_equal(png(out / rows[2]["file_name"])[0], as_uint8(direct)[0])
    info = json.loads((out / "synthesis.json").read_text())
    assert info["class_prompts"] == prompts and info["num_classes"] == 2
    # Without names the folders are numbered classes.
    unnamed = synthesize(pipe, tmp_path / "unnamed", 1, class_prompts=prompts, progress=False,
                         **STEPS)
    assert unnamed["classes"] == ["class0", "class1"]


def test_folder_names_sort_in_class_id_order():
    names = class_folder_names([f"z/{c}" if c % 2 else f"a {c}" for c in range(12)])
    assert names[:3] == ["00_a_0", "01_z_1", "02_a_2"] and names[11] == "11_z_11"
    assert sorted(names) == names
    assert class_folder_names(["../..", "Ankle boot"]) == ["0_class", "1_Ankle_boot"]


# -- the command --------------------------------------------------------------------------------

@pytest.fixture
def model_dir(tmp_path):
    diffusion_pipe().save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


def test_command_writes_the_same_dataset_as_the_function(model_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["synthesize", "--model", model_dir, "--per-class", "2", "--steps", "2", "--seed", "3",
            "--batch-size", "4", "--out", str(out), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    # NFE 2: a guided step batches its conditional and null rows into one forward.
    assert f"wrote 6 images (3 classes x 2, NFE=2) to {out}" in printed
    info = json.loads((out / "synthesis.json").read_text())
    assert info["command"] == "python -m diffusion " + " ".join(args)
    assert info["model"] == model_dir and info["call_kwargs"]["guidance_scale"] == 2.0

    synthesize(diffusion_pipe(), tmp_path / "api", 2, seed=3, guidance_scale=2.0, progress=False,
               **STEPS)
    assert (out / "metadata.jsonl").read_bytes() == \
        (tmp_path / "api" / "metadata.jsonl").read_bytes()
    for row in metadata(out):
        assert np.array_equal(png(out / row["file_name"])[0],
                              png(tmp_path / "api" / row["file_name"])[0])

    with pytest.raises(SystemExit, match="error: .* is not empty; pass overwrite=True"):
        main(args)
    assert main(args + ["--overwrite", "--per-class", "1"]) == 0
    assert len(metadata(out)) == 3


@pytest.mark.parametrize("args, message", [
    (["--prompts", "held-out"], "error: --prompts needs a text-to-image model; this one takes "
                                "class labels"),
    (["--sampler", "nope"], "error: unknown sampler 'nope'"),
    (["--top-k", "5"], "error: --top-k: only autoregressive pipelines take this"),
    (["--per-class", "0"], "error: --per-class must be >= 1, got 0"),
])
def test_command_errors_are_clear(model_dir, tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        main(["synthesize", "--model", model_dir, "--per-class", "1", "--out",
              str(tmp_path / "out"), "--quiet", *args])
    assert not (tmp_path / "out").exists()


def test_command_refuses_an_unconditional_model(tmp_path):
    make_pipe(seeded_unet(num_classes=None)).save_pretrained(tmp_path / "model")
    with pytest.raises(SystemExit, match="error: DiffusionImagePipeline is unconditional"):
        main(["synthesize", "--model", str(tmp_path / "model"), "--per-class", "1", "--out",
              str(tmp_path / "out"), "--quiet"])


def test_command_on_a_text_model_names_the_classes_of_a_prompt_set(tmp_path):
    from diffusers import DDPMScheduler

    make_text_pipe(scheduler=DDPMScheduler(beta_end=0.012)).save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    assert main(["synthesize", "--model", str(tmp_path / "model"), "--prompts", "held-out",
                 "--per-class", "1", "--steps", "2", "--out", str(out)]) == 0  # with progress bars
    rows = metadata(out)
    assert [(r["label"], r["class_name"], r["prompt"]) for r in rows] == \
        [(c, FASHION_MNIST_CLASSES[c], FASHION_MNIST_HELD_OUT_PROMPTS[c][0]) for c in range(10)]
    assert rows[9]["file_name"] == "9_Ankle_boot/9_Ankle_boot_00009.png"
    with pytest.raises(SystemExit, match="error: a text-to-image model needs prompts: pass "
                                         "--prompts held-out"):
        main(["synthesize", "--model", str(tmp_path / "model"), "--per-class", "1", "--out",
              str(tmp_path / "none"), "--quiet"])
