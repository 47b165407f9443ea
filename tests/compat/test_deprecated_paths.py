"""The old module paths (before the layout change) still import for one release: each warns with a
``DeprecationWarning`` naming the new home and re-exports the moved names as the same objects,
and a folder saved at the old layout (tests/fixtures/legacy) loads through them with the warning."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from diffusion.pipelines.loading import load_pipeline

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"

#: old path -> (a moved name, the module that defines it now)
MOVED = {
    "diffusion.pipeline": [("DiffusionImagePipeline", "diffusion.pipelines.diffusion"),
                           ("GenerationOutput", "diffusion.pipelines.base"),
                           ("to_output", "diffusion.pipelines.base"),
                           ("check_class_inputs", "diffusion.pipelines.base")],
    "diffusion.gan": [("GANPipeline", "diffusion.pipelines.gan"),
                      ("draw_latents", "diffusion.pipelines.gan"),
                      ("ConditionalGenerator", "diffusion.models.gan"),
                      ("ProjectionDiscriminator", "diffusion.models.gan")],
    "diffusion.autoregressive": [("AutoregressivePipeline", "diffusion.pipelines.autoregressive"),
                                 ("TransformerPrior", "diffusion.models.prior")],
    "diffusion.vqvae": [("VQVAE", "diffusion.models.vqvae"),
                        ("reconstruction_metrics", "diffusion.models.vqvae")],
    "diffusion.unet": [("build_unet", "diffusion.models.unet")],
    "diffusion.classifier": [("ImageClassifier", "diffusion.models.classifier")],
    "diffusion.loading": [("load_pipeline", "diffusion.pipelines.loading")],
    "diffusion.metrics": [("conditional_accuracy", "diffusion.evaluation.accuracy"),
                          ("load_classifier", "diffusion.models.classifier")],
    "diffusion.synthesize": [("synthesize", "diffusion.evaluation.synthesize")],
    "training.data": [("load_dataset", "diffusion.data.registry"),
                      ("TensorImageDataset", "diffusion.data.datasets"),
                      ("fashion_mnist", "diffusion.data.datasets")],
    "training.text_objectives": [("TextDiffusionObjective", "training.objectives.diffusion")],
    "training.ar_objectives": [("VQVAEObjective", "training.objectives.vq_ar"),
                               ("PriorObjective", "training.objectives.vq_ar")],
    "training.captions": [("CaptionedImageDataset", "diffusion.data.captions"), ("emoji_dataset", "diffusion.data.emoji"),
                          ("FASHION_MNIST_HELD_OUT_PROMPTS", "diffusion.data.captions")],
}


def fresh_import(name: str):
    """Import ``name`` anew (dropping a cached copy) and return ``(module, warnings caught)``."""
    sys.modules.pop(name, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(name)
    return module, [w for w in caught if issubclass(w.category, DeprecationWarning)]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_warns_and_reexports_the_same_objects(old):
    module, caught = fresh_import(old)
    news = sorted({new for _, new in MOVED[old]})
    assert any(old in str(w.message) and all(n in str(w.message) for n in news)
               for w in caught), [str(w.message) for w in caught]
    for name, new in MOVED[old]:
        assert getattr(module, name) is getattr(importlib.import_module(new), name), (old, name)


@pytest.mark.parametrize("family", ["gan", "ar"])
def test_legacy_folder_names_old_modules_and_loads_with_a_warning(family):
    """The fixture's model_index.json names the old paths; loading imports them (they are ours),
    warns, and gives the pipeline class of today's layout."""
    folder = LEGACY / family
    index = json.loads((folder / "model_index.json").read_text())
    old_modules = {v[0] for v in index.values() if isinstance(v, list) and str(v[0]).startswith("diffusion.")}
    assert old_modules and old_modules <= set(MOVED), old_modules
    for name in old_modules:
        sys.modules.pop(name, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = load_pipeline(folder)
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert all(any(m.startswith(name + " moved to") for m in messages) for name in old_modules), messages
    # shown by default (a FutureWarning), naming the folder, the moved modules and the fix
    told = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert len(told) == 1 and str(folder) in told[0] and "save_pretrained" in told[0], told
    assert all(name in told[0] for name in old_modules), told
    assert type(pipe).__module__.startswith("diffusion.pipelines.")


def test_new_layout_modules_do_not_warn():
    """Importing the package and every family through the new paths (in a fresh interpreter, with
    our deprecation turned into an error) touches no deprecated module."""
    code = ("import warnings; warnings.filterwarnings('error', message='.* moved to ', "
            "category=DeprecationWarning); import diffusion, diffusion.pipelines.gan, "
            "diffusion.pipelines.autoregressive, diffusion.evaluation, diffusion.data, "
            "diffusion.pipelines.loading, training.loop; print('clean')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "clean", proc.stderr[-3000:]
