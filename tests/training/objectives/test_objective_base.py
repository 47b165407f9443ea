"""What objectives share (training/objectives/base.py): per-image generators from the loop's
generator, the sample grid, the default export, eval mode around evaluation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from training.config import load_config
from training.objectives.base import GRID_COLUMNS, Objective, draw_generators
from training.objectives.diffusion import DiffusionObjective, TextDiffusionObjective
from training.objectives.vq_ar import VQVAEObjective

TINY = ["model.block_out_channels=[8,16]", "model.norm_num_groups=4", "model.layers_per_block=1",
        "model.attention_levels=[]", "model.attention_head_dim=8", "diffusion.sample_steps=1"]


class StubPipe:
    """Records each call's keywords; returns ``ones`` images in [0, 1] of 1 x 4 x 4 pixels."""

    def __init__(self, watch=None):
        self.calls, self.watch, self.saved = [], watch, []

    def __call__(self, **kwargs):
        kwargs["watched_training"] = None if self.watch is None else self.watch.training
        self.calls.append(kwargs)
        return SimpleNamespace(images=torch.ones(len(kwargs["generator"]), 1, 4, 4))

    def save_pretrained(self, out_dir, **kwargs):
        self.saved.append((out_dir, kwargs))


def test_draw_generators_draws_one_seed_per_image_in_one_call():
    g = torch.Generator().manual_seed(5)
    gens = draw_generators(g, 7)
    reference = torch.Generator().manual_seed(5)
    seeds = torch.randint(0, 2**31, (7,), generator=reference).tolist()
    assert [x.initial_seed() for x in gens] == seeds
    assert torch.equal(g.get_state(), reference.get_state())   # nothing else drawn
    assert all(x.device.type == "cpu" for x in gens)


@pytest.mark.parametrize("num_classes, labels", [(3, [0, 1, 2]), (12, list(range(10))),
                                                 (0, None), (None, None)])
def test_sample_grid_has_one_row_per_class_up_to_ten(num_classes, labels):
    obj, pipe = Objective(None, num_classes), StubPipe()
    grid = obj.sample_grid(pipe, torch.Generator().manual_seed(0), guidance_scale=3.0)
    (call,) = pipe.calls
    rows = len(labels) if labels else 1
    assert call["class_labels"] == labels and "prompt" not in call
    assert call["num_images_per_prompt"] == GRID_COLUMNS and call["output_type"] == "pt"
    assert len(call["generator"]) == rows * GRID_COLUMNS and call["guidance_scale"] == 3.0
    assert grid.shape == (3, 1 + rows * 5, 1 + GRID_COLUMNS * 5)      # 4 px + 1 px padding


def test_sample_grid_rows_by_prompt_and_seeds_from_the_generator():
    obj, pipe = Objective(None, 10), StubPipe()
    obj.sample_grid(pipe, torch.Generator().manual_seed(1), prompt=["a", "b"])
    (call,) = pipe.calls
    assert call["prompt"] == ["a", "b"] and "class_labels" not in call
    expected = draw_generators(torch.Generator().manual_seed(1), 2 * GRID_COLUMNS)
    assert [g.initial_seed() for g in call["generator"]] == [g.initial_seed() for g in expected]


def test_export_saves_the_pipeline_or_else_the_module(tmp_path):
    class WithPipe(Objective):
        sample_module = "generator"

        def pipeline(self, module):
            self.piped = module
            return pipe

    pipe, module = StubPipe(), StubPipe()
    with_pipe = WithPipe(None, 3)
    with_pipe.export({"generator": module, "other": None}, tmp_path)
    assert with_pipe.piped is module and pipe.saved == [(tmp_path, {"safe_serialization": True})]
    Objective(None, 3).export({"model": module}, tmp_path)
    assert module.saved == [(tmp_path, {"safe_serialization": True})]


@pytest.mark.parametrize("training", [True, False])
def test_diffusion_evaluation_samples_in_eval_mode_and_restores_the_mode(training):
    obj = DiffusionObjective(load_config(None, TINY), num_classes=3)
    unet = obj.modules["model"].train(training)
    pipe = StubPipe(watch=unet)
    obj.pipeline = lambda module: pipe
    scalars, grid = obj.evaluate(obj.modules, torch.Generator().manual_seed(0))
    assert scalars == {} and grid.shape[0] == 3
    assert pipe.calls[0]["watched_training"] is False and pipe.calls[0]["class_labels"] == [0, 1, 2]
    assert pipe.calls[0]["num_inference_steps"] == 1
    assert unet.training is training


def test_text_grid_rows_are_the_sample_prompts():
    obj = object.__new__(TextDiffusionObjective)   # no text encoder needed for the rows
    Objective.__init__(obj, load_config(None, ["text.sample_prompts=[a bag,a shoe]"]), None)
    assert obj.grid_prompts() == ["a bag", "a shoe"] and obj.evaluate_metrics(None) == {}


@pytest.mark.parametrize("training", [True, False])
def test_vqvae_evaluation_runs_in_eval_mode_and_restores_the_mode(training):
    obj = VQVAEObjective(load_config(None, ["train.objective=vqvae", "vqvae.channels=[8,16]",
                                            "vqvae.codebook_size=16", "vqvae.codebook_dim=8",
                                            "vqvae.kmeans_init=false"]), 10)
    model = obj.modules["model"].train(training)
    obj._eval_images = torch.rand(12, 1, 28, 28) * 2 - 1      # instead of loading data.eval_split
    seen = []                # model.training at each decoding (tokenize switches modes itself)
    model.decoder.register_forward_pre_hook(lambda module, args: seen.append(model.training))
    with torch.no_grad():
        scalars, grid = obj.evaluate(obj.modules, torch.Generator())
    assert {"mse", "psnr", "codebook_used"} <= set(scalars) and grid.shape == (3, 59, 291)
    assert model.training is training and seen and not any(seen)
