"""The objective registry (training/objectives/__init__.py): one list of names, used by
load_config and build_objective; register_objective; the old module paths."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest
import torch

import training.objectives as objectives
from training.config import load_config
from training.objectives import OBJECTIVES, Objective, build_objective, register_objective

#: overrides a name needs to load besides ``train.objective`` (a required setting)
NEEDS = {"prior": ["prior.vqvae_path=somewhere"]}


class Constant(Objective):
    """A one-parameter objective: enough to be built and trained."""

    def __init__(self, cfg, num_classes, class_names=()):
        super().__init__(cfg, num_classes, class_names)
        self.modules["model"] = torch.nn.Linear(1, 1)


@pytest.fixture
def registry():
    """The registry, restored after the test."""
    saved = dict(OBJECTIVES)
    yield OBJECTIVES
    OBJECTIVES.clear()
    OBJECTIVES.update(saved)


def test_the_registry_holds_the_families_as_objective_classes():
    assert list(OBJECTIVES) == ["diffusion", "classifier", "gan", "vqvae", "prior", "text-diffusion",
                                "flow-matching", "text-flow-matching", "edm", "text-edm",
                                "consistency"]
    assert all(isinstance(cls, type) and issubclass(cls, Objective) for cls in OBJECTIVES.values())
    assert {cls.__module__ for cls in OBJECTIVES.values()} == {
        f"training.objectives.{m}"
        for m in ("diffusion", "flow", "edm", "classifier", "gan", "vq_ar", "consistency")}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_load_config_accepts_every_registered_name(name):
    assert load_config(None, [f"train.objective={name}", *NEEDS.get(name, [])]).train.objective == name


def test_unknown_objective_lists_the_registry_in_load_config_and_build_objective(registry):
    register_objective("constant", Constant)
    with pytest.raises(ValueError) as from_config:
        load_config(None, ["train.objective=wgan"])
    cfg = load_config(None, ["train.objective=constant"])
    object.__setattr__(cfg.train, "objective", "wgan")  # a config that skipped load_config
    with pytest.raises(ValueError) as from_build:
        build_objective(cfg, num_classes=3)
    for info in (from_config, from_build):
        message = str(info.value)
        assert "'wgan'" in message and all(repr(name) in message for name in registry)


def test_a_registered_objective_loads_builds_and_checks_its_config(registry, monkeypatch):
    assert register_objective("constant", Constant) is Constant
    assert register_objective("constant", Constant) is Constant   # same class again: no-op
    cfg = load_config(None, ["train.objective=constant"])
    built = build_objective(cfg, num_classes=3, class_names=["a", "b", "c"])
    assert type(built) is Constant and built.class_names == ["a", "b", "c"]

    def refuse(cls, cfg):
        raise ValueError("constant refuses train.max_steps=7")

    monkeypatch.setattr(Constant, "check_config", classmethod(refuse))
    with pytest.raises(ValueError, match="refuses"):
        load_config(None, ["train.objective=constant", "train.max_steps=7"])


@pytest.mark.parametrize("name, cls, message", [
    ("", Constant, "non-empty str"),
    (3, Constant, "non-empty str"),
    ("linear", torch.nn.Linear, "subclass of training.objectives.Objective"),
    ("gan", Constant, "already registered as GANObjective"),
])
def test_register_objective_refuses_bad_entries(registry, name, cls, message):
    before = dict(registry)
    with pytest.raises(ValueError, match=message):
        register_objective(name, cls)
    assert registry == before


def test_prior_without_a_vqvae_path_is_refused_by_its_objective():
    with pytest.raises(ValueError, match="train.objective=prior needs prior.vqvae_path"):
        load_config(None, ["train.objective=prior"])


def test_the_package_reexports_what_the_old_module_defined():
    old_names = ["Objective", "BETA_SCHEDULES", "training_scheduler", "min_snr_weights",
                 "DiffusionObjective", "ClassifierObjective", "hinge_d_loss", "hinge_g_loss",
                 "ns_d_loss", "ns_g_loss", "GAN_LOSSES", "r1_penalty", "DIVERSITY_PER_CLASS",
                 "DIVERSITY_REAL_PER_CLASS", "GANObjective", "OBJECTIVES", "build_objective"]
    missing = [n for n in old_names if not hasattr(objectives, n)]
    assert not missing
    assert sorted(objectives.__all__) == sorted(set(objectives.__all__))
    assert all(hasattr(objectives, n) for n in objectives.__all__)


@pytest.mark.parametrize("old, new, names", [
    ("training.text_objectives", "training.objectives.diffusion", ["TextDiffusionObjective"]),
    ("training.ar_objectives", "training.objectives.vq_ar",
     ["VQVAEObjective", "PriorObjective", "resolve_vqvae_path"]),
])
def test_old_module_paths_warn_and_reexport_the_same_objects(old, new, names):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any(f"{old} moved to {new}" in m for m in messages), messages
    for name in names:
        assert getattr(module, name) is getattr(importlib.import_module(new), name)
