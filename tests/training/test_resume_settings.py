"""Resuming with settings that differ from the checkpoint's (training/config.py ``RESUME_POLICY``,
training/loop.py ``Trainer.check_resume_settings`` / ``apply_resume_settings``): an applied change
takes effect and is logged, a refused one stops the run before any step with the key and both
values, and nothing is written."""

from __future__ import annotations

import logging

import pytest
import torch

from diffusion.data.datasets import TensorImageDataset
from training.config import compare_resume_settings, load_config, resume_policy, to_yaml
from training.loop import Trainer
from test_ema import closed_form_decay
from test_loop import Recorder, expected_cosine_lrs
from training_helpers import TINY

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def dataset():
    g = torch.Generator().manual_seed(0)
    return TensorImageDataset(torch.rand(32, 1, 28, 28, generator=g) * 2 - 1,
                              torch.arange(32) % 4, ["a", "b", "c", "d"])


def make(tmp_path, dataset, *overrides) -> Trainer:
    return Trainer(load_config(None, [*TINY, f"train.output_dir={tmp_path}", "train.export=false",
                                      "train.lr_warmup_steps=1", *overrides]), dataset=dataset)


def test_the_table_refuses_what_the_weights_depend_on_and_unlisted_keys():
    for key in ("model.block_out_channels", "data.channels", "data.image_size", "train.objective",
                "diffusion.prediction_type", "diffusion.beta_schedule", "train.batch_size",
                "train.a_key_nobody_classified"):
        assert resume_policy(key) == "refuse", key
    for key in ("train.learning_rate", "train.max_steps", "train.ema_max_decay", "train.log_every",
                "train.checkpoint_every", "train.num_threads", "diffusion.sampler"):
        assert resume_policy(key) == "apply", key
    saved = to_yaml(load_config(None, ["diffusion.prediction_type=epsilon", "train.max_steps=10"]))
    applied, refused = compare_resume_settings(
        load_config(None, ["diffusion.prediction_type=v_prediction", "train.max_steps=20"]), saved)
    assert applied == [("train.max_steps", 20, 10)]
    assert refused == [("diffusion.prediction_type", "v_prediction", "epsilon")]
    older = to_yaml(load_config(None, [])).replace("  max_steps: 1000\n", "")  # predates the key
    assert "max_steps" not in older
    assert compare_resume_settings(load_config(None, []), older) == ([], [])  # compared with its default


def test_a_changed_learning_rate_is_applied_and_logged(tmp_path, dataset, caplog):
    make(tmp_path, dataset, "train.max_steps=2", "train.learning_rate=2e-4").run()
    resumed = make(tmp_path, dataset, "train.max_steps=4", "train.learning_rate=1e-4")
    rec = Recorder(resumed)
    with caplog.at_level(logging.WARNING, logger="training.loop"):
        resumed.run()
    assert "resumed with train.learning_rate 0.0001 (checkpoint: 0.0002)" in caplog.text
    assert "resumed with train.max_steps 4 (checkpoint: 2)" in caplog.text
    # steps 3 and 4 of warm-up 1 + cosine over 4 steps, from the new base (the old one: twice these)
    assert rec.lrs == pytest.approx(expected_cosine_lrs(1e-4, 1, 4)[2:], rel=1e-12)
    assert resumed.lr_schedulers["model"].base_lrs == [1e-4]


def test_a_changed_ema_max_decay_is_the_decay_used_after_resume(tmp_path, dataset, caplog):
    common = ("train.use_ema=true", "train.ema_warmup=true")
    make(tmp_path, dataset, *common, "train.max_steps=2", "train.ema_max_decay=0.999").run()
    resumed = make(tmp_path, dataset, *common, "train.max_steps=5", "train.ema_max_decay=0.6")
    ema, decays, step = resumed.emas["model"], [], resumed.emas["model"].step

    def recording_step(parameters):
        step(parameters)
        decays.append(ema.cur_decay_value)

    ema.step = recording_step
    with caplog.at_level(logging.WARNING, logger="training.loop"):
        resumed.run()
    assert "resumed with train.ema_max_decay 0.6 (checkpoint: 0.999)" in caplog.text
    expected = [closed_form_decay(k, 0.6, True) for k in (3, 4, 5)]
    assert decays == pytest.approx(expected, abs=1e-12)
    assert decays != pytest.approx([closed_form_decay(k, 0.999, True) for k in (3, 4, 5)], abs=1e-3)
    assert ema.decay == 0.6 and ema.optimization_step == 5


def test_a_changed_architecture_is_refused_before_any_step_and_nothing_is_written(tmp_path, dataset):
    make(tmp_path, dataset, "train.max_steps=2").run()
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    resumed = make(tmp_path, dataset, "train.max_steps=4", "model.block_out_channels=[8,32]")
    rec = Recorder(resumed)
    with pytest.raises(ValueError) as info:
        resumed.run()
    message = str(info.value)
    assert "model.block_out_channels (8, 32) (checkpoint: (8, 16))" in message
    assert "start a new train.output_dir" in message and "restore the old values" in message
    assert rec.train_steps == 0 and resumed.state.step == 0
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    assert after == before
