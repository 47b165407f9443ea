"""Training the autoregressive baseline through the one loop: stage 1 VQ-VAE, stage 2 prior on the
frozen tokens (training/objectives/vq_ar.py, training/config.py), export, resume, load, generate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from diffusion.pipelines.autoregressive import AutoregressivePipeline
from diffusion.pipelines.loading import load_pipeline
from diffusion.models.vqvae import VQVAE
from training.ar_objectives import PriorObjective, VQVAEObjective
from training.config import load_config
from diffusion.data.datasets import TensorImageDataset, TokenDataset
from training.loop import Trainer

K = 3
COMMON = ("train.batch_size=8", "train.mixed_precision=no", "train.num_threads=1",
          "train.log_every=1", "train.sample_every=0", "train.checkpoint_every=0",
          "train.lr_warmup_steps=0", "data.eval_split=test")
VQ_TINY = ("train.objective=vqvae", "train.use_ema=false", "train.learning_rate=3e-3",
           "vqvae.channels=[8,16]", "vqvae.codebook_size=16", "vqvae.codebook_dim=8",
           *COMMON)


def prior_tiny(vqvae_path):
    return ("train.objective=prior", f"prior.vqvae_path={vqvae_path}", "prior.d_model=32",
            "prior.num_layers=1", "prior.num_heads=4", "prior.eval_num_samples=0",
            "prior.dropout=0.0", "train.ema_max_decay=0.5", "train.ema_warmup=false", *COMMON)


@pytest.fixture(autouse=True)
def _fresh_accelerate(fresh_accelerate_state):
    """No accelerate singletons leak between tests (fixture in tests/conftest.py)."""


@pytest.fixture(scope="module")
def dataset():
    """48 images 28x28 in [-1, 1], 3 classes: a bright bar whose row depends on the class."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(48) % K
    images = torch.rand(48, 1, 28, 28, generator=g) * 0.4 - 1
    for i, y in enumerate(labels.tolist()):
        images[i, 0, 4 + 8 * y : 8 + 8 * y, 4:24] = 1.0
    return TensorImageDataset(images, labels, ["a", "b", "c"])


@pytest.fixture(scope="module")
def vqvae_dir(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("vq")
    import accelerate.state

    final = Trainer(load_config(None, [*VQ_TINY, f"train.output_dir={out}", "train.max_steps=30"]),
                    dataset=dataset).run()
    accelerate.state.AcceleratorState._reset_state(True)
    accelerate.state.PartialState._reset_state()
    return final


def test_vqvae_stage_trains_evaluates_on_the_whole_split_and_exports(dataset, vqvae_dir):
    summary = json.loads((vqvae_dir / "training_summary.json").read_text())
    figures = summary["figures"]
    assert summary["objective"] == "vqvae" and summary["steps"] == 30
    # evaluation over all 10,000 test images: MSE / PSNR consistent, usage counted over the split
    assert figures["final_mse"] < 0.5 and figures["psnr"] == pytest.approx(
        10 * math.log10(1 / figures["mse"]), rel=1e-6)          # PSNR of the split's mean MSE
    assert 1 <= figures["codebook_used"] <= 16
    assert figures["codebook_fraction"] == pytest.approx(figures["codebook_used"] / 16)
    vq = VQVAE.from_pretrained(vqvae_dir)
    assert vq.token_grid == (7, 7) and vq.config.codebook_size == 16
    assert (vqvae_dir.parent / "samples" / "step-0000030.png").is_file()


def test_vqvae_training_lowers_the_reconstruction_error(dataset, tmp_path):
    trainer = Trainer(load_config(None, [*VQ_TINY, f"train.output_dir={tmp_path}",
                                         "train.max_steps=40"]), dataset=dataset)
    assert isinstance(trainer.objective, VQVAEObjective) and trainer.emas == {}
    data = iter([b for _ in range(10) for b in trainer.loader])
    first = trainer.train_step(data)["mse"]
    for _ in range(38):
        last = trainer.train_step(data)["mse"]
    assert last < 0.5 * first


def test_prior_stage_tokenises_once_trains_and_exports_a_pipeline(dataset, vqvae_dir, tmp_path):
    cfg = load_config(None, [*prior_tiny(vqvae_dir), f"train.output_dir={tmp_path}",
                             "train.max_steps=6", "prior.top_k=4"])
    trainer = Trainer(cfg, dataset=dataset)
    assert isinstance(trainer.objective, PriorObjective)
    assert isinstance(trainer.dataset, TokenDataset) and trainer.dataset.tokens.shape == (48, 49)
    vq = VQVAE.from_pretrained(vqvae_dir)
    assert torch.equal(trainer.dataset.tokens, vq.tokenize(dataset.images))
    assert torch.equal(trainer.dataset.labels, dataset.labels)
    final = trainer.run()
    pipe = load_pipeline(final, quiet=True)
    assert isinstance(pipe, AutoregressivePipeline)
    assert pipe.decoding_settings()["top_k"] == 4
    # the exported prior is the EMA copy; the VQ-VAE is the frozen stage-1 model
    for p, s in zip(pipe.prior.parameters(), trainer.emas["model"].shadow_params):
        torch.testing.assert_close(p.detach(), s, rtol=0, atol=0)
    for (name, a), b in zip(pipe.vqvae.state_dict().items(), vq.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    out = pipe(class_labels=[0, 1, 2], generator=[torch.Generator().manual_seed(i) for i in range(3)],
               output_type="pt")
    assert out.images.shape == (3, 1, 28, 28) and out.nfe == 49


def test_prior_loss_drops_the_class_with_cond_drop_prob(dataset, vqvae_dir, tmp_path):
    trainer = Trainer(load_config(None, [*prior_tiny(vqvae_dir), f"train.output_dir={tmp_path}",
                                         "prior.cond_drop_prob=1.0"]), dataset=dataset)
    seen = []
    real = trainer.objective.modules["model"].forward

    def spy(input_ids, past_key_values=None, use_cache=True):
        seen.append(input_ids[:, 0].clone())
        return real(input_ids, past_key_values=past_key_values, use_cache=use_cache)

    trainer.objective.modules["model"].forward = spy
    loss, logs = trainer.objective.loss("model", trainer.modules, next(iter(trainer.loader)),
                                        torch.Generator().manual_seed(0))
    assert seen and (seen[0] == 16 + K).all()                 # every row got the null class
    assert logs["bits_per_token"] == pytest.approx(logs["loss"] / math.log(2))


@pytest.mark.parametrize("override, message", [
    ("train.objective=prior", "prior.vqvae_path"),
    ("prior.cond_drop_prob=1.5", "cond_drop_prob"),
])
def test_bad_ar_configs_are_rejected(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_shipped_ar_configs_load():
    configs = Path(__file__).resolve().parents[2] / "training" / "configs"
    vq = load_config(configs / "fashion_mnist_vqvae.yaml")
    prior = load_config(configs / "fashion_mnist_prior.yaml")
    assert vq.train.objective == "vqvae" and not vq.train.use_ema
    assert prior.train.objective == "prior" and prior.prior.vqvae_path


def test_vqvae_logs_codebook_usage_once_per_epoch_of_training_batches(dataset, tmp_path):
    """48 images at batch 8: the usage over the epoch's 6 batches is logged at every 6th step,
    and equals the codes of those batches' indices."""
    trainer = Trainer(load_config(None, [*VQ_TINY, f"train.output_dir={tmp_path}",
                                         "train.max_steps=12"]), dataset=dataset)
    model = trainer.modules["model"]
    seen, real = [], model.forward

    def spy(x):
        out = real(x)
        seen.append(out.indices.flatten())
        return out

    model.forward = spy
    data = iter([b for _ in range(3) for b in trainer.loader])
    logs = [trainer.train_step(data) for _ in range(12)]
    assert [i for i, l in enumerate(logs) if "codebook_used_epoch" in l] == [5, 11]
    for end in (6, 12):
        used = len(torch.cat(seen[end - 6:end]).unique())
        assert logs[end - 1]["codebook_used_epoch"] == used
        assert logs[end - 1]["codebook_fraction_epoch"] == used / 16



def test_vqvae_path_accepts_a_pipeline_folder_and_explains_a_missing_one(vqvae_dir, tmp_path):
    from training.ar_objectives import resolve_vqvae_path

    assert resolve_vqvae_path(vqvae_dir) == str(vqvae_dir)
    pipe_dir = tmp_path / "pipe"
    (pipe_dir / "vqvae").mkdir(parents=True)
    (pipe_dir / "vqvae" / "config.json").write_text("{}")
    assert resolve_vqvae_path(pipe_dir) == str(pipe_dir / "vqvae")
    with pytest.raises(FileNotFoundError, match="Train stage 1 first"):
        resolve_vqvae_path(tmp_path / "nowhere")


def test_a_vqvae_folder_alone_is_a_clear_error_when_loaded_as_a_pipeline(vqvae_dir):
    from diffusion.__main__ import main

    with pytest.raises(FileNotFoundError, match="VQ-VAE tokenizer alone"):
        load_pipeline(vqvae_dir)
    with pytest.raises(SystemExit, match="train a prior on it"):
        main(["generate", "--model", str(vqvae_dir), "--quiet"])
