"""training/config.py: YAML + key=value overrides into frozen dataclasses, strict checking."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from training.config import (ExperimentConfig, ModelConfig, TrainConfig, load_config, to_flat_dict,
                             to_yaml)
from training_helpers import REPO

CONFIG_FILES = sorted((REPO / "training" / "configs").glob("*.yaml"))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_equal_the_dataclass_defaults():
    cfg = load_config()
    assert cfg == ExperimentConfig()
    assert cfg.model.block_out_channels == (32, 64, 64)
    assert isinstance(cfg.model.block_out_channels, tuple)


def test_yaml_then_overrides_in_that_order(tmp_path):
    path = _write(tmp_path, "train:\n  max_steps: 7\n  learning_rate: 2.0e-3\n"
                            "model:\n  block_out_channels: [8, 16]\n  attention_levels: []\n")
    cfg = load_config(path, ["train.learning_rate=1e-4", "diffusion.snr_gamma=5",
                             "train.resume=null", "data.subset=100"])
    assert cfg.train.max_steps == 7                      # from YAML
    assert cfg.train.learning_rate == pytest.approx(1e-4)  # override beats YAML
    assert cfg.model.block_out_channels == (8, 16)       # lists become tuples
    assert cfg.model.attention_levels == ()
    assert cfg.diffusion.snr_gamma == 5.0 and isinstance(cfg.diffusion.snr_gamma, float)
    assert cfg.train.resume is None
    assert cfg.data.subset == 100
    assert cfg.train.batch_size == TrainConfig().batch_size  # untouched keys keep defaults


def test_bare_no_is_the_string_no(tmp_path):
    """YAML reads `no` as false; mixed_precision=no must still mean "no" (fp32)."""
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_config(_write(tmp_path, "train:\n  mixed_precision: no\n")).train.mixed_precision == "no"
    assert load_config(None, ["train.mixed_precision=bf16"]).train.mixed_precision == "bf16"
    with pytest.raises(ValueError, match="mixed_precision"):
        load_config(None, ["train.mixed_precision=yes"])


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.max_steps = 3  # type: ignore[misc]


@pytest.mark.parametrize("override", [
    "train.max_step=10",             # unknown key
    "trian.max_steps=10",            # unknown section
    "train.max_steps=ten",           # wrong type
    "train.max_steps=1.5",           # float for int
    "train.learning_rate=fast",      # str for float
    "train.use_ema=maybe",           # not a bool
    "model.block_out_channels=[a,b]",  # wrong element type
])
def test_bad_override_raises_value_error(override):
    with pytest.raises(ValueError, match="invalid config"):
        load_config(None, [override])


@pytest.mark.parametrize("text", [
    "train:\n  max_step: 10\n",
    "optimizer:\n  lr: 0.1\n",
    "train:\n  batch_size: many\n",
])
def test_bad_yaml_raises_value_error(tmp_path, text):
    with pytest.raises(ValueError, match="invalid config"):
        load_config(_write(tmp_path, text))


@pytest.mark.parametrize("override, allowed", [
    ("train.objective=wgan", "diffusion"),
    ("train.mixed_precision=fp8", "bf16"),
    ("diffusion.beta_schedule=quadratic", "cosine"),
    ("diffusion.prediction_type=noise", "v_prediction"),
])
def test_bad_choice_names_given_and_allowed(override, allowed):
    given = override.split("=")[1]
    with pytest.raises(ValueError) as info:
        load_config(None, [override])
    assert given in str(info.value) and allowed in str(info.value)


@pytest.mark.parametrize("override", ["train.max_steps=0", "train.batch_size=-1",
                                      "train.gradient_accumulation_steps=0"])
def test_counts_must_be_positive(override):
    with pytest.raises(ValueError, match=override.split("=")[0]):
        load_config(None, [override])


def test_override_without_equals_sign():
    with pytest.raises(ValueError, match="section.key=value"):
        load_config(None, ["train.max_steps"])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_to_yaml_round_trip(tmp_path):
    cfg = load_config(None, ["train.max_steps=123", "train.max_grad_norm=null", "train.resume=null",
                             "model.block_out_channels=[8,16,24]", "model.attention_levels=[1,2]",
                             "diffusion.snr_gamma=5.0", "diffusion.prediction_type=v_prediction",
                             "data.name=image-folder", "data.root=/tmp/x", "data.channels=3",
                             "train.learning_rate=3e-4", "train.objective=classifier"])
    assert cfg != ExperimentConfig()
    back = load_config(_write(tmp_path, to_yaml(cfg)))
    assert back == cfg
    assert to_yaml(back) == to_yaml(cfg)


def test_to_flat_dict_has_every_field_as_a_scalar():
    cfg = load_config(None, ["model.block_out_channels=[8,16]"])
    flat = to_flat_dict(cfg)
    n_fields = sum(len(dataclasses.fields(getattr(cfg, f.name))) for f in dataclasses.fields(cfg))
    assert len(flat) == n_fields
    assert flat["train.max_steps"] == 1000
    assert flat["model.block_out_channels"] in ("[8, 16]", "(8, 16)")
    assert all(isinstance(v, (int, float, str, bool)) for v in flat.values())


def test_shipped_configs_exist():
    names = {p.name for p in CONFIG_FILES}
    assert {"fashion_mnist_quick.yaml", "fashion_mnist_diffusion.yaml",
            "fashion_mnist_classifier.yaml"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg != ExperimentConfig(), f"{path.name} sets nothing"
    assert load_config(_write(tmp_path, to_yaml(cfg))) == cfg
    if cfg.train.objective == "diffusion":
        # the U-Net it describes can be built (catches group / attention mistakes in the YAML)
        from diffusion.models.unet import build_unet

        m: ModelConfig = cfg.model
        build_unet(sample_size=cfg.data.image_size, in_channels=cfg.data.channels,
                   block_out_channels=m.block_out_channels, layers_per_block=m.layers_per_block,
                   attention_levels=m.attention_levels, attention_head_dim=m.attention_head_dim,
                   norm_num_groups=m.norm_num_groups)
