"""The weight EMA of training/loop.py (``build_ema``): its decay at the k-th update against the
closed form for both ``train.ema_warmup`` settings, the averaged weights against the recursion
written out here, and a resumed run continuing the same decay sequence."""

from __future__ import annotations

import pytest
import torch

from diffusion.data.datasets import TensorImageDataset
from training.config import load_config
from training.loop import Trainer, build_ema
from training_helpers import TINY

STEPS = [1, 2, 3, 10, 100, 1000, 31_000, 32_000, 10**6]


def closed_form_decay(k: int, max_decay: float, warmup: bool) -> float:
    """Decay of the k-th update (k >= 1). Warm-up: min(max, 1 - k^(-2/3)) (diffusers' inv_gamma=1,
    power=2/3 on the k - 1 earlier updates); constant: 0 at k = 1 (the average starts at the
    weights after the first step), max from k = 2 on."""
    if warmup:
        return min(max_decay, 1 - k ** (-2 / 3))
    return 0.0 if k == 1 else max_decay


def train_cfg(*overrides):
    return load_config(None, list(overrides)).train


@pytest.mark.parametrize("warmup", [True, False])
@pytest.mark.parametrize("max_decay", [0.999, 0.5])
def test_decay_at_the_kth_update_is_the_closed_form(warmup, max_decay):
    ema = build_ema([torch.nn.Parameter(torch.zeros(1))],
                    train_cfg(f"train.ema_warmup={str(warmup).lower()}", f"train.ema_max_decay={max_decay}"))
    for k in STEPS:
        assert ema.get_decay(k) == pytest.approx(closed_form_decay(k, max_decay, warmup), abs=1e-12), k


def test_without_warmup_the_decay_is_not_diffusers_ramp():
    """diffusers' use_ema_warmup=False alone gives (1 + s) / (10 + s): 2/11 at the 2nd update."""
    ema = build_ema([torch.nn.Parameter(torch.zeros(1))], train_cfg("train.ema_warmup=false"))
    assert [ema.get_decay(k) for k in (2, 3, 50)] == [0.999] * 3


@pytest.mark.parametrize("warmup", [True, False])
def test_averaged_weights_follow_the_recursion(warmup):
    """shadow_k = d_k shadow_{k-1} + (1 - d_k) theta_k with d_k the closed form, over 30 updates
    of a parameter set to known values."""
    theta = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    ema = build_ema([theta], train_cfg(f"train.ema_warmup={str(warmup).lower()}",
                                       "train.ema_max_decay=0.9"))
    shadow = theta.detach().clone()
    for k in range(1, 31):
        with torch.no_grad():
            theta.copy_(torch.tensor([k, k**2, -k], dtype=torch.float64))
        ema.step([theta])
        d = closed_form_decay(k, 0.9, warmup)
        shadow = d * shadow + (1 - d) * theta.detach()
        assert ema.cur_decay_value == pytest.approx(d, abs=1e-12)
        torch.testing.assert_close(ema.shadow_params[0], shadow, rtol=1e-12, atol=0)


@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize("warmup", [True, False])
def test_a_resumed_run_continues_the_decay_sequence(tmp_path, warmup):
    """Steps 1-2, checkpoint, a new Trainer resumes for steps 3-5: its decays are d_3..d_5 (a
    restarted count would give d_1 = 0, a lost setting the other form)."""
    g = torch.Generator().manual_seed(0)
    dataset = TensorImageDataset(torch.rand(32, 1, 28, 28, generator=g) * 2 - 1,
                                 torch.arange(32) % 4, ["a", "b", "c", "d"])
    common = [*TINY, f"train.output_dir={tmp_path}", "train.export=false", "train.use_ema=true",
              f"train.ema_warmup={str(warmup).lower()}", "train.ema_max_decay=0.6",
              "train.lr_warmup_steps=0"]

    def run(max_steps):
        trainer = Trainer(load_config(None, [*common, f"train.max_steps={max_steps}"]), dataset=dataset)
        ema, decays, step = trainer.emas["model"], [], trainer.emas["model"].step

        def recording_step(parameters):
            step(parameters)
            decays.append(ema.cur_decay_value)

        ema.step = recording_step
        trainer.run()
        return trainer, decays

    _, first = run(2)
    resumed, second = run(5)
    assert resumed.emas["model"].optimization_step == 5
    expected = [closed_form_decay(k, 0.6, warmup) for k in range(1, 6)]
    assert first + second == pytest.approx(expected, abs=1e-12)
    assert len(set(expected[1:])) == (3 if warmup else 1)  # the two forms differ over k = 2..5
