"""docs/own_images.md, run as written: its four commands take a folder of labelled images to a
classifier, a diffusion model, a grid and a compare row. The test makes a tiny folder, runs the
documented lines (from the page's first ``bash`` block) in a temporary working directory and
appends only size options (steps, channels, sample counts) so that it takes seconds."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "own_images.md"
CLASSES = ("cat", "dog", "fox")

#: Options appended to each documented command (later options win in both CLIs).
SIZE_OPTIONS = {
    "image_folder_classifier.yaml": ["train.max_steps=3", "train.batch_size=8",
                                     "classifier.channels=[8,16,32]", "train.mixed_precision=no"],
    "image_folder_diffusion.yaml": ["train.max_steps=3", "train.batch_size=8",
                                    "model.block_out_channels=[16,16,32]",
                                    "model.layers_per_block=1", "train.mixed_precision=no"],
    "generate": ["--steps", "2", "--per-class", "2"],
    "compare": ["--num-samples", "12", "--steps", "2", "--batch-sizes", "1,4", "--no-memory",
                "--quiet"],
}


def documented_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", PAGE.read_text(), re.S)
    assert block, f"{PAGE} has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def make_image_folder(root: Path, per_class: int = 6) -> None:
    """Three classes that differ in colour and shape, 20x20 RGB PNGs (resized to 32 on load)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            x = rng.integers(0, 40, (20, 20, 3), dtype=np.uint8)
            x[4 + c * 3:16, 4:16 - c * 3, c] = 220
            Image.fromarray(x).save(root / name / f"{i:03d}.png")


def test_the_page_documents_four_commands():
    commands = documented_commands()
    assert [shlex.split(c)[:3] for c in commands] == [
        ["python", "-m", "training"], ["python", "-m", "training"],
        ["python", "-m", "diffusion"], ["python", "-m", "diffusion"]]


@pytest.mark.slow
def test_documented_commands_run_on_a_tiny_image_folder(tmp_path, monkeypatch):
    from diffusion.__main__ import main as diffusion_main
    from diffusion.pipelines.loading import load_pipeline
    from diffusion.evaluation.sweep import read_csv
    from training.__main__ import main as training_main

    make_image_folder(tmp_path / "my_images")
    monkeypatch.chdir(tmp_path)            # runs/, samples/ and my_images/ resolve here
    for line in documented_commands():
        argv = shlex.split(line)[3:]
        argv = [str(REPO / a) if a.startswith("training/configs/") else a for a in argv]
        key = Path(argv[1]).name if argv[0] == "--config" else argv[0]
        run = training_main if argv[0] == "--config" else diffusion_main
        assert run(argv + SIZE_OPTIONS[key]) == 0, line

    pipe = load_pipeline(tmp_path / "runs" / "image-folder-diffusion" / "final")
    assert list(pipe.class_names) == list(CLASSES) and pipe.unet.config.sample_size == 32
    grid = Image.open(tmp_path / "samples" / "my_grid.png")
    assert grid.mode == "RGB" and grid.size[0] > 32 * 2 and grid.size[1] > 32 * 3
    text = (tmp_path / "runs" / "my_compare.md").read_text()
    assert "python -m diffusion compare" in text and "| image-folder-diffusion | diffusion |" in text
    assert "reference: image folder my_images (all 18 images)" in text
    (row,) = read_csv(tmp_path / "runs" / "my_compare" / "compare.csv")
    assert row["feature_network"].startswith("image-folder-classifier@")
    assert row["reference_n"] == 3 * 6 and row["n"] == 12 and 0 <= row["accuracy"] <= 1
    assert row["fid"] > 0 and row["train_steps"] == 3
