"""Shared fixtures: a tiny seeded U-Net pipeline, stub network/scheduler, forward spies.

Everything here runs on CPU in milliseconds: the tiny U-Net is 8x8 pixels, two levels, no
attention blocks outside diffusers' mid block.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import pytest
import torch
from diffusers import DDPMScheduler

# pytest puts tests/ on sys.path for this conftest; tests/diffusion and tests/samplers would then
# import as namespace packages named ``diffusion`` and ``samplers`` ahead of the editable install's
# finder (a meta-path finder that runs after sys.path). The repo root on sys.path lets the real
# packages win. (A ``pythonpath = ["."]`` in pyproject's pytest options would do the same.)
REPO_ROOT = str(Path(__file__).resolve().parents[1])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
# ``from training_helpers import ...`` works from every test folder (not only tests/training).
sys.path.append(str(Path(__file__).resolve().parent / "training"))
# precision="auto" (every pipeline call's default) means bf16 on a CPU with native bf16: pin it to
# float32 for the suite (and the CLI subprocesses it starts), so reference images and tolerances do
# not depend on the CPU running the tests. Tests of bf16 pass precision="bf16"; tests of the "auto"
# rule unset this with monkeypatch.delenv.
os.environ["DIFFUSION_PRECISION"] = "fp32"

from diffusion.evaluation.features import FeatureNetwork  # noqa: E402
from diffusion.pipelines.diffusion import DiffusionImagePipeline  # noqa: E402
from diffusion.models.unet import build_unet  # noqa: E402

NUM_CLASSES = 3
SAMPLE_SIZE = 8

# Two levels (8, 16) at 8x8; attention_head_dim=8 because the mid block always attends and
# build_unet requires the head dim to divide its 16 channels (the default 32 does not).
TINY_UNET = dict(sample_size=SAMPLE_SIZE, in_channels=1, block_out_channels=(8, 16),
                 norm_num_groups=4, layers_per_block=1, attention_levels=(),
                 attention_head_dim=8, num_classes=NUM_CLASSES)


def seeded_unet(seed: int = 0, **overrides):
    """``build_unet(**TINY_UNET | overrides)`` with weights drawn from ``seed``; the global RNG of
    the calling test is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_unet(**{**TINY_UNET, **overrides}).eval()


def make_pipe(unet=None, scheduler=None) -> DiffusionImagePipeline:
    """A pipeline with the progress bar off. Default: tiny seeded U-Net on a 1000-step linear
    v-prediction DDPM schedule (v-prediction keeps an untrained net's images mostly inside
    (0, 1), so the clamp in ``to_output`` does not hide differences between runs)."""
    unet = seeded_unet() if unet is None else unet
    scheduler = (DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
                 if scheduler is None else scheduler)
    pipe = DiffusionImagePipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# Text U-Net: cross-attention at the second level, no class table, encoder hidden size 32.
TEXT_DIM = 32
TINY_TEXT_UNET = dict(TINY_UNET, attention_levels=(1,), num_classes=None,
                      cross_attention_dim=TEXT_DIM)


def seeded_text_unet(seed: int = 0, **overrides):
    """:func:`seeded_unet` with ``TINY_TEXT_UNET | overrides``."""
    return seeded_unet(seed, **{**TINY_TEXT_UNET, **overrides})


def make_text_pipe(tokenizer=None, text_encoder=None, scheduler=None,
                   **unet_overrides) -> DiffusionImagePipeline:
    """Text pipeline: seeded tiny cross-attention U-Net (``TINY_TEXT_UNET | unet_overrides``),
    the real MiniLM tokenizer and a tiny random encoder (hidden ``TEXT_DIM``) unless given, on a
    1000-step v-prediction DDPM schedule; ``beta_end=0.012`` keeps sigma_max small so fp32 batch
    rounding stays far below the 1e-5 tolerances (see
    test_pipeline.test_image_does_not_depend_on_its_batch)."""
    from diffusion.conditioning import build_tiny_text_encoder, load_tokenizer

    tokenizer = load_tokenizer() if tokenizer is None else tokenizer
    if text_encoder is None:
        text_encoder = build_tiny_text_encoder(tokenizer.vocab_size, hidden_size=TEXT_DIM, seed=0)
    scheduler = scheduler or DDPMScheduler(beta_end=0.012, prediction_type="v_prediction")
    pipe = DiffusionImagePipeline(seeded_text_unet(**unet_overrides), scheduler,
                                  text_encoder=text_encoder, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generators(n: int, offset: int = 0) -> list[torch.Generator]:
    """One CPU generator per image, seeded ``offset, offset + 1, ...``."""
    return [torch.Generator().manual_seed(offset + i) for i in range(n)]


@contextmanager
def forward_spy(module: torch.nn.Module):
    """Record every forward call of ``module``: yields a list that gets one
    ``SimpleNamespace(batch, class_labels)`` per call."""
    calls: list[SimpleNamespace] = []

    def hook(_module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        labels = kwargs.get("class_labels")
        calls.append(SimpleNamespace(batch=sample.shape[0],
                                     class_labels=None if labels is None else labels.clone()))

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


class StubUNet(torch.nn.Module):
    """Stands in for ``UNet2DModel``: the output is the constant ``label_value(class label)``
    everywhere, so conditional and unconditional outputs are known exactly.

    Values are dyadic (k / 4), so ``uncond + s * (cond - uncond)`` is exact in float32 for the
    scales the tests use. Every call is recorded in ``calls``.
    """

    NULL_VALUE = -0.5

    def __init__(self, num_classes: Optional[int] = NUM_CLASSES, sample_size: int = SAMPLE_SIZE,
                 in_channels: int = 1, block_out_channels=(8, 16)):
        super().__init__()
        self.config = SimpleNamespace(
            sample_size=sample_size, in_channels=in_channels,
            block_out_channels=tuple(block_out_channels),
            num_class_embeds=None if num_classes is None else num_classes + 1)
        self.num_real_classes = num_classes
        self.calls: list[SimpleNamespace] = []

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @classmethod
    def label_value(cls, label: int, num_classes: int = NUM_CLASSES) -> float:
        """Output value for ``label``; the null class (``num_classes``) gives ``NULL_VALUE``."""
        return cls.NULL_VALUE if label == num_classes else 0.25 * (label + 1)

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        self.calls.append(SimpleNamespace(
            batch=sample.shape[0], timestep=timestep,
            class_labels=None if class_labels is None else class_labels.clone()))
        if class_labels is None:
            values = torch.full((sample.shape[0],), 0.125)
        else:
            values = torch.tensor([self.label_value(int(c), self.num_real_classes)
                                   for c in class_labels], dtype=torch.float32)
        return SimpleNamespace(sample=values.view(-1, 1, 1, 1).expand_as(sample).clone())


class StubScheduler:
    """Minimal diffusers-style scheduler: records the arguments of every ``step`` and returns the
    model output itself as ``x_{t-1}`` (so the final image is the last guided model output)."""

    def __init__(self, num_train_timesteps: int = 1000):
        self.config = SimpleNamespace(num_train_timesteps=num_train_timesteps)
        self.init_noise_sigma = 1.0
        self.steps: list[SimpleNamespace] = []

    def set_timesteps(self, num_inference_steps, device=None):
        self.timesteps = torch.linspace(self.config.num_train_timesteps - 1, 0,
                                        num_inference_steps).long()

    def scale_model_input(self, sample, timestep):
        return sample

    def step(self, model_output, timestep, sample, generator=None):
        self.steps.append(SimpleNamespace(model_output=model_output.clone(), timestep=timestep,
                                          sample=sample.clone()))
        return SimpleNamespace(prev_sample=model_output)


@pytest.fixture
def tiny_pipe() -> DiffusionImagePipeline:
    """Fresh tiny seeded U-Net pipeline (3 classes, 1x8x8, v-prediction linear DDPM schedule)."""
    return make_pipe()


@pytest.fixture
def stub_pipe() -> DiffusionImagePipeline:
    """Pipeline over :class:`StubUNet` and :class:`StubScheduler` (3 classes, 1x8x8)."""
    return make_pipe(StubUNet(), StubScheduler())


@pytest.fixture
def fresh_accelerate_state(monkeypatch):
    """accelerate keeps process-wide singletons (mixed precision, gradient state); start and leave
    each test with none, as accelerate's own ``AccelerateTestCase`` does, so an in-process Trainer
    here cannot clash with another test's Accelerator settings. CPU even where a GPU is visible:
    the tests' tolerances are for fp32 CPU arithmetic (cuDNN would use TF32 convolutions)."""
    from accelerate.state import AcceleratorState, GradientState

    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


class PixelFeatures(FeatureNetwork):
    """The pixels themselves as features (64-d for 8x8 grayscale)."""

    def __init__(self):
        super().__init__()
        self.name, self.num_features, self.description = "pixels", 64, "8x8 pixels"
        self.in_channels, self.image_size = (1,), (8, 8)
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self._freeze()

    def _features(self, x):
        return x.flatten(1)


@contextmanager
def benchmark_module(name: str):
    """Import ``benchmarks/<name>.py`` as module ``name`` (registered in ``sys.modules`` while in
    use: dataclasses look their module up there)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, f"{REPO_ROOT}/benchmarks/{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def markdown_tables(page: str) -> dict:
    """A Markdown page's ``## title`` -> the rows of the table under it, as dicts (column ->
    cell text)."""
    import re

    out = {}
    for section in re.split(r"^## ", page, flags=re.M)[1:]:
        title, *lines = section.splitlines()
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines
                if line.startswith("|") and not line.startswith("|---")]
        if rows:
            out[title] = [dict(zip(rows[0], r)) for r in rows[1:]]
    return out
