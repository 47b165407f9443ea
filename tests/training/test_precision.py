"""``train.mixed_precision`` in training/loop.py: fp16 on a CPU device is refused before any work
(accelerate would give it neither fp16 autocast nor a gradient scaler and train in fp32); bf16
runs under bfloat16 autocast there."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from diffusion.data.datasets import TensorImageDataset
from training.config import load_config
from training.loop import Trainer
from training_helpers import TINY

# CPU even where a GPU is visible (ACCELERATE_USE_CPU), no accelerate singletons between tests.
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def test_what_accelerate_does_with_fp16_on_cpu():
    """The reason for the refusal: no scaler, no autocast, fp32 outputs."""
    acc = Accelerator(mixed_precision="fp16", cpu=True)
    model = acc.prepare(torch.nn.Linear(4, 4))
    with acc.autocast():
        out = model(torch.randn(2, 4))
    assert acc.scaler is None and out.dtype == torch.float32


def test_fp16_on_cpu_is_refused_before_any_work(tmp_path):
    """The data root does not exist: the refusal comes before the dataset is read."""
    cfg = load_config(None, [*TINY, "train.mixed_precision=fp16", f"data.root={tmp_path / 'none'}",
                             f"train.output_dir={tmp_path / 'out'}"])
    with pytest.raises(ValueError, match=r"fp16.*needs a GPU.*bf16.*or no") as e:
        Trainer(cfg)
    assert "gradient scaler" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_fp16_accelerator_on_cpu_is_refused(tmp_path):
    cfg = load_config(None, [*TINY, f"train.output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="fp16"):
        Trainer(cfg, accelerator=Accelerator(mixed_precision="fp16", cpu=True))


def test_bf16_on_cpu_trains_under_bfloat16_autocast(tmp_path):
    g = torch.Generator().manual_seed(0)
    dataset = TensorImageDataset(torch.rand(16, 1, 28, 28, generator=g) * 2 - 1,
                                 torch.arange(16) % 4, ["a", "b", "c", "d"])
    trainer = Trainer(load_config(None, [*TINY, "train.mixed_precision=bf16",
                                         f"train.output_dir={tmp_path}"]), dataset=dataset)
    assert trainer.accelerator.mixed_precision == "bf16" and trainer.accelerator.device.type == "cpu"
    unet, seen = trainer.modules["model"], []
    # accelerate converts the model's outputs back to fp32; the convolutions inside run in bf16
    trainer.accelerator.unwrap_model(unet).conv_in.register_forward_hook(
        lambda module, args, out: seen.append(out.dtype))
    unet(torch.zeros(2, 1, 28, 28), torch.tensor([0, 1]), class_labels=torch.tensor([0, 1]))
    assert seen == [torch.bfloat16]
