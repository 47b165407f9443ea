"""training/loop.py (+ training/__main__.py): accumulation, resume, atomic checkpoints, learning,
several processes, and the command line.

Tiny U-Nets (~42k parameters) on a synthetic IDX dataset written in a temporary folder, fp32,
one thread; only the learning test needs the real Fashion-MNIST files.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from training import objectives
from training.__main__ import main
from training.config import load_config
from diffusion.data.datasets import (DEBIAN_FASHION_MNIST, FASHION_MNIST_CLASSES,
                                     TensorImageDataset, fashion_mnist, images_to_tensor)
from training.checkpoints import CHECKPOINT_PREFIX, list_checkpoints, resume_path
from training.loop import Trainer
from training_helpers import REPO, TINY, free_port, make_fashion_root, run_python, write_idx

QUICK_YAML = REPO / "training" / "configs" / "fashion_mnist_quick.yaml"


# Every test here starts and ends with no accelerate singletons (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """256 train / 64 test synthetic 28x28 images in Debian's IDX layout."""
    return make_fashion_root(tmp_path_factory.mktemp("fmnist"), n_train=256, n_test=64)


def tiny_cfg(data_root, output_dir, *overrides):
    return load_config(None, [*TINY, f"data.root={data_root}", f"train.output_dir={output_dir}",
                              *overrides])


class Recorder:
    """Wraps a built Trainer: counts optimizer steps with the LR each one used, and keeps every
    micro-batch the objective saw."""

    def __init__(self, trainer: Trainer):
        self.lrs, self.batches, self.logs, self.train_steps = [], [], [], 0
        opt = trainer.optimizers["model"]
        opt_step, loss, train_step = opt.step, trainer.objective.loss, trainer.train_step

        def counting_step(*args, **kwargs):
            self.lrs.append(opt.param_groups[0]["lr"])
            return opt_step(*args, **kwargs)

        def recording_loss(name, modules, batch, generator):
            self.batches.append((batch[0].detach().clone(), batch[1].clone()))
            return loss(name, modules, batch, generator)

        def counting_train_step(data):
            self.train_steps += 1
            self.logs.append(train_step(data))
            return self.logs[-1]

        opt.step = counting_step
        trainer.objective.loss = recording_loss
        trainer.train_step = counting_train_step


def weights(trainer: Trainer) -> dict:
    model = trainer.accelerator.unwrap_model(trainer.modules["model"])
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def adam_steps(trainer: Trainer) -> set:
    opt = trainer.optimizers["model"].optimizer
    return {int(s["step"]) for s in opt.state.values()}


def expected_cosine_lrs(base: float, warmup: int, total: int) -> list:
    """LR used by optimizer step s = 0..total-1 under linear warm-up + cosine decay (diffusers)."""
    return [base * s / warmup if s < warmup else
            base * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))) for s in range(total)]


def assert_close_tree(a, b, path="", atol=1e-6, skip=()):
    """Recursive equality of checkpoint contents (dicts, lists, tensors, numbers)."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            if k not in skip:
                assert_close_tree(a[k], b[k], f"{path}.{k}", atol, skip)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close_tree(x, y, f"{path}[{i}]", atol, skip)
    elif torch.is_tensor(a):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=lambda m: f"{path}: {m}")
        else:
            assert torch.equal(a, b), f"{path}: {a} != {b}"
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=atol), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# -- checkpoint listing ------------------------------------------------------------------------

def test_list_checkpoints_skips_partial_and_sorts_by_step(tmp_path):
    assert list_checkpoints(tmp_path) == []
    root = tmp_path / "checkpoints"
    for name in ("checkpoint-0000009", "checkpoint-0000010", "checkpoint-100", ".tmp-checkpoint-0000999",
                 "checkpoint-latest", "checkpoint-12.tmp", "other-0000050"):
        (root / name).mkdir(parents=True)
    (root / "checkpoint-0000500").write_text("a file, not a checkpoint folder")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "checkpoint-0000009", "checkpoint-0000010", "checkpoint-100"]


# -- gradient accumulation -----------------------------------------------------------------------

class PerSampleDiffusion(objectives.DiffusionObjective):
    """The diffusion loss with t and eps drawn per image from a seed derived from the image itself.

    The real objective draws t and eps for the whole micro-batch from one generator, so 4
    micro-batches of b draw different numbers than one batch of 4b: their weights cannot match
    exactly. Here the draw depends on the image only, so the loss of a 4b batch is exactly the
    mean of its four b-chunks and the loop's accumulation can be checked weight for weight.
    """

    def loss(self, optimizer, modules, batch, generator):
        x0, labels = batch
        gens = [torch.Generator().manual_seed(int((x * 1000).sum().round()) % 2**31) for x in x0]
        t = torch.stack([torch.randint(0, 1000, (), generator=g) for g in gens])
        noise = torch.stack([torch.randn(x.shape, generator=g) for g, x in zip(gens, x0)])
        t, noise = t.to(x0.device), noise.to(x0.device)
        x_t = self.noise_scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(modules["model"](x_t, t, class_labels=labels).sample, noise)
        return loss, {"loss": loss.item()}


def test_accumulation_k4_equals_one_batch_four_times_larger(data_root, tmp_path, monkeypatch):
    monkeypatch.setitem(objectives.OBJECTIVES, "diffusion", PerSampleDiffusion)
    common = ("data.subset=256", "train.max_steps=10", "train.lr_warmup_steps=3",
              "train.learning_rate=2e-3", "train.max_grad_norm=1.0", "train.export=false")
    runs = {}
    for k, b in ((4, 8), (1, 32)):
        trainer = Trainer(tiny_cfg(data_root, tmp_path / f"k{k}", *common, f"train.batch_size={b}",
                                   f"train.gradient_accumulation_steps={k}"))
        rec = Recorder(trainer)
        runs["init"] = weights(trainer)  # seeded: the same for both runs
        trainer.run()
        runs[k] = trainer, rec
    (t4, r4), (t1, r1) = runs[4], runs[1]
    # exactly 10 optimizer steps each; 40 vs 10 micro-batches
    assert len(r4.lrs) == len(r1.lrs) == 10
    assert t4.state.step == t1.state.step == 10 and adam_steps(t4) == adam_steps(t1) == {10}
    assert len(r4.batches) == 40 and len(r1.batches) == 10
    assert all(len(x) == 8 for x, _ in r4.batches) and all(len(x) == 32 for x, _ in r1.batches)
    # the same LR sequence, the schedule stepping once per optimizer step
    assert r4.lrs == r1.lrs
    assert r4.lrs == pytest.approx(expected_cosine_lrs(2e-3, 3, 10), abs=1e-12)
    # the same data: micro-batches 4i..4i+3 are batch i (across an epoch end: 32 per epoch)
    for i, (x, y) in enumerate(r1.batches):
        assert torch.equal(torch.cat([m[0] for m in r4.batches[4 * i: 4 * i + 4]]), x)
        assert torch.equal(torch.cat([m[1] for m in r4.batches[4 * i: 4 * i + 4]]), y)
    # the same loss and pre-clipping gradient norm at every step (the loss is divided by k)
    for key in ("loss", "model/grad_norm"):
        assert [l[key] for l in r4.logs] == pytest.approx([l[key] for l in r1.logs], rel=1e-4), key
    # the same weights and EMA weights (fp32, dropout 0; only summation order differs). Skipped:
    # the attention key bias, whose exact gradient is zero (softmax ignores a shift shared by all
    # keys): Adam divides its rounding-noise gradient by sqrt(v) of that same noise, so it takes
    # O(lr) random steps in both runs (seen: 1e-5 apart while everything else is within 4e-7).
    w4, w1 = weights(t4), weights(t1)
    moved = max((w1[n] - p).abs().max().item() for n, p in runs["init"].items())
    assert moved > 100 * 1e-5, "training barely moved the weights; the comparison would be empty"
    names = list(w1)
    checked = [i for i, n in enumerate(names) if not n.endswith("to_k.bias")]
    assert len(checked) == len(names) - 1
    for i in checked:
        n = names[i]
        torch.testing.assert_close(w4[n], w1[n], rtol=0, atol=1e-5, msg=lambda m: f"{n}: {m}")
        torch.testing.assert_close(t4.emas["model"].shadow_params[i], t1.emas["model"].shadow_params[i],
                                   rtol=0, atol=1e-5, msg=lambda m: f"EMA {n}: {m}")


def test_accumulation_counts_steps_and_lr_with_the_real_objective(data_root, tmp_path):
    """DiffusionObjective: k=4 over 40 micro-batches and k=1 over 10 batches of the same size take
    10 optimizer steps each with the same LRs; k=1's batches are k=4's first ten."""
    common = ("data.subset=256", "train.max_steps=10", "train.lr_warmup_steps=4",
              "train.learning_rate=1e-3", "train.export=false", "train.batch_size=8")
    runs = {}
    for k in (4, 1):
        trainer = Trainer(tiny_cfg(data_root, tmp_path / f"k{k}", *common,
                                   f"train.gradient_accumulation_steps={k}"))
        rec = Recorder(trainer)
        trainer.run()
        runs[k] = trainer, rec
    (t4, r4), (t1, r1) = runs[4], runs[1]
    assert r4.train_steps == r1.train_steps == 10
    assert len(r4.lrs) == len(r1.lrs) == 10 and adam_steps(t4) == adam_steps(t1) == {10}
    assert len(r4.batches) == 40 and len(r1.batches) == 10
    assert r4.lrs == r1.lrs == pytest.approx(expected_cosine_lrs(1e-3, 4, 10), abs=1e-12)
    for (x4, y4), (x1, y1) in zip(r4.batches[:10], r1.batches):
        assert torch.equal(x4, x1) and torch.equal(y4, y1)
    state = torch.load(list_checkpoints(tmp_path / "k4")[-1] / "custom_checkpoint_0.pkl", weights_only=True)
    assert state["step"] == 10 and (state["epoch"], state["batch_in_epoch"]) == (1, 8)  # 40 = 32 + 8


# -- interrupted checkpoints -----------------------------------------------------------------------

def test_interrupted_checkpoint_is_never_resumed_from(data_root, tmp_path):
    out = tmp_path / "run"
    common = ("data.subset=64", "train.max_steps=8", "train.checkpoint_every=2",
              "train.checkpoints_total_limit=3", "train.export=false", "train.lr_warmup_steps=2")
    cfg = tiny_cfg(data_root, out, *common)

    # 1. A run that dies while writing checkpoint 6 (after 2 and 4 were written).
    trainer = Trainer(cfg)
    real_save = trainer.accelerator.save_state

    def dying_save(output_dir, **kwargs):
        if trainer.state.step < 6:
            return real_save(output_dir, **kwargs)
        real_save(output_dir, **kwargs)
        (Path(output_dir) / "model.safetensors").write_bytes(b"\0truncated")
        raise OSError("No space left on device")

    trainer.accelerator.save_state = dying_save
    with pytest.raises(OSError, match="No space left"):
        trainer.run()
    ckpt_root = out / "checkpoints"
    assert (ckpt_root / ".tmp-checkpoint-0000006").is_dir()          # the half-written one
    # 2. A stale half-written checkpoint from a later step with garbage in it.
    junk = ckpt_root / ".tmp-checkpoint-0000099"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"garbage")
    (junk / "custom_checkpoint_0.pkl").write_bytes(b"\x80garbage")
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-0000002", "checkpoint-0000004"]
    assert resume_path(cfg) == ckpt_root / "checkpoint-0000004"

    # 3. A new run resumes from step 4 and finishes 4 more steps.
    resumed = Trainer(cfg)
    rec = Recorder(resumed)
    resumed.run()
    assert rec.train_steps == 4 and resumed.state.step == 8 and adam_steps(resumed) == {8}
    assert [p.name for p in list_checkpoints(out)] == [
        f"{CHECKPOINT_PREFIX}{s:07d}" for s in (4, 6, 8)]
    assert not (ckpt_root / ".tmp-checkpoint-0000006").exists()       # replaced by the real one
    load_file(ckpt_root / "checkpoint-0000006" / "model.safetensors")  # a complete file

    # 4. ... and ends where a run that was never interrupted ends.
    straight = Trainer(tiny_cfg(data_root, tmp_path / "straight", *common))
    straight.run()
    w_resumed, w_straight = weights(resumed), weights(straight)
    for n in w_straight:
        torch.testing.assert_close(w_resumed[n], w_straight[n], rtol=0, atol=1e-6)


def test_explicitresume_path_must_exist(data_root, tmp_path):
    cfg = tiny_cfg(data_root, tmp_path, f"train.resume={tmp_path / 'missing'}")
    with pytest.raises(FileNotFoundError, match="missing"):
        resume_path(cfg)
    assert resume_path(tiny_cfg(data_root, tmp_path, "train.resume=null")) is None
    assert resume_path(tiny_cfg(data_root, tmp_path)) is None        # auto, nothing there yet


# -- learning -----------------------------------------------------------------------------------

def test_short_run_on_fashion_mnist_lowers_the_loss(tmp_path):
    if not DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip(f"real Fashion-MNIST not installed at {DEBIAN_FASHION_MNIST} "
                    "(sudo apt-get install dataset-fashion-mnist)")
    cfg = load_config(None, [*TINY, f"data.root={DEBIAN_FASHION_MNIST}", "data.subset=1024",
                             f"train.output_dir={tmp_path}", "train.max_steps=30", "train.batch_size=32",
                             "train.learning_rate=3e-3", "train.lr_warmup_steps=5", "train.export=false"])
    trainer = Trainer(cfg)
    test = fashion_mnist("test", root=str(DEBIAN_FASHION_MNIST))
    batch = (test.images[:128], test.labels[:128])       # held-out images, fixed t / eps / dropout

    def eval_loss():
        model = trainer.modules["model"]
        model.eval()
        with torch.no_grad():
            loss, _ = trainer.objective.loss("model", trainer.modules, batch,
                                             torch.Generator().manual_seed(0))
        return loss.item()

    before = eval_loss()
    train_losses = []
    train_step = trainer.train_step

    def logging_step(data):
        logs = train_step(data)
        train_losses.append(logs["loss"])
        return logs

    trainer.train_step = logging_step
    trainer.run()
    after = eval_loss()
    assert len(train_losses) == 30
    first, last = sum(train_losses[:5]) / 5, sum(train_losses[-5:]) / 5
    print(f"train loss {first:.3f} -> {last:.3f}; held-out loss {before:.3f} -> {after:.3f}")
    assert last < 0.6 * first, (first, last)
    assert after < 0.6 * before, (before, after)


# -- an in-memory dataset -----------------------------------------------------------------------

def stripe_images(n: int, seed: int):
    """``n`` uint8 ``(n, 28, 28)`` noisy stripe images, random phase; the label sets the stripes'
    orientation (5 angles) and period (4 or 8 pixels): a texture a small CNN learns in seconds."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    yy, xx = np.mgrid[0:28, 0:28]
    theta = (labels % 5 * np.pi / 5)[:, None, None]
    period = np.where(labels < 5, 4.0, 8.0)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    images = 128 + 90 * np.sin(2 * np.pi * (np.cos(theta) * xx + np.sin(theta) * yy) / period + phase)
    images = images + rng.normal(0, 20, (n, 28, 28))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def test_trainer_trains_on_a_given_dataset(tmp_path, monkeypatch):
    """The classifier trains on the TensorImageDataset passed in (the loop loads no train split),
    ``data.subset`` applies to it, and it learns: the loss falls and the test split named by
    ``cfg.data`` is classified well."""
    root = tmp_path / "test-only"
    root.mkdir()
    images, labels = stripe_images(200, seed=1)
    write_idx(root / "t10k-images-idx3-ubyte", images)
    write_idx(root / "t10k-labels-idx1-ubyte", labels)
    images, labels = stripe_images(300, seed=2)
    given = TensorImageDataset(images_to_tensor(images), torch.from_numpy(labels), FASHION_MNIST_CLASSES)
    cfg = tiny_cfg(root, tmp_path / "run", "train.objective=classifier", "classifier.channels=[8,16]",
                   "data.subset=256", "train.max_steps=150", "train.learning_rate=3e-3",
                   "train.lr_warmup_steps=3")
    from training import loop

    def no_loading(*args, **kwargs):
        raise AssertionError(f"load_dataset{args} called although a dataset was given")

    monkeypatch.setattr(loop, "load_dataset", no_loading)
    trainer = Trainer(cfg, dataset=given)
    expected = given.subset(256, seed=cfg.train.seed)
    assert torch.equal(trainer.dataset.images, expected.images)
    assert torch.equal(trainer.dataset.labels, expected.labels)
    rec = Recorder(trainer)
    final = trainer.run()

    rows = {x.numpy().tobytes() for x in expected.images}
    assert len(rec.batches) == 150
    assert all(x.numpy().tobytes() in rows for xs, _ in rec.batches for x in xs)
    losses = [log["loss"] for log in rec.logs]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    summary = json.loads((final / "training_summary.json").read_text())
    assert summary["dataset"] == "in-memory (256 images)"
    assert summary["epochs"] == pytest.approx(150 * 16 / 256)
    assert summary["figures"]["test_accuracy"] >= 0.9, summary["figures"]


def test_given_dataset_must_match_the_data_config(tmp_path):
    rgb = TensorImageDataset(torch.zeros(64, 3, 28, 28), torch.zeros(64), FASHION_MNIST_CLASSES)
    cfg = tiny_cfg(tmp_path, tmp_path / "run", "train.objective=classifier")
    with pytest.raises(ValueError, match=r"\(64, 3, 28, 28\).*data.channels=1"):
        Trainer(cfg, dataset=rgb)
    small = TensorImageDataset(torch.zeros(64, 1, 16, 16), torch.zeros(64), FASHION_MNIST_CLASSES)
    with pytest.raises(ValueError, match="data.image_size=28"):
        Trainer(cfg, dataset=small)


# -- command line -------------------------------------------------------------------------------

@pytest.mark.slow  # a new interpreter importing torch/diffusers/accelerate: 5-15 s on 2 cores
def test_cli_help():
    proc = run_python(["-m", "training", "--help"], timeout=120)
    assert "--print-config" in proc.stdout and "--config" in proc.stdout
    assert "section.key=value" in proc.stdout


def test_print_config_round_trips(tmp_path, capsys):
    assert main(["--config", str(QUICK_YAML), "--print-config", "train.max_steps=5",
                 "train.mixed_precision=no"]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    expected = load_config(QUICK_YAML, ["train.max_steps=5", "train.mixed_precision=no"])
    assert load_config(printed) == expected
    assert expected.train.max_steps == 5 and expected.train.mixed_precision == "no"


@pytest.mark.parametrize("argv, message", [
    (["--print-config", "train.max_stepz=5"], "max_stepz"),
    (["--print-config", "train.objective=wgan"], "wgan"),
    (["--config", "no/such.yaml", "--print-config"], "no/such.yaml"),
])
def test_cli_errors_exit_2_with_message(argv, message, capsys):
    assert main(argv) == 2  # one "error:" line and argparse's exit status, no traceback
    err = capsys.readouterr().err
    assert message in err and "error:" in err and "Traceback" not in err


# -- resume in a new process ------------------------------------------------------------------------

def _compare_checkpoints(a: Path, b: Path):
    for name in ("model.safetensors",):
        wa, wb = load_file(a / name), load_file(b / name)
        assert set(wa) == set(wb)
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=lambda m: f"{name}/{k}: {m}")
    assert_close_tree(torch.load(a / "optimizer.bin", weights_only=True),
                      torch.load(b / "optimizer.bin", weights_only=True), "optimizer")
    # custom_checkpoint_0: TrainState (step, epoch, position, generator); 1: LR schedule; 2: EMA
    for i, skip in ((0, ("train_seconds",)), (1, ()), (2, ())):
        name = f"custom_checkpoint_{i}.pkl"
        assert_close_tree(torch.load(a / name, weights_only=True),
                          torch.load(b / name, weights_only=True), name, skip=skip)


@pytest.mark.slow
def test_resume_in_a_new_process_equals_a_straight_run(data_root, tmp_path):
    """N=6 steps straight vs. the same run's step-3 checkpoint resumed by a new `python -m
    training` process. 64 images, 4 micro-batches per epoch, k=2: the resume point (step 3 =
    micro-batch 6) is in the middle of the second epoch and the run crosses two epoch ends."""
    common = [*TINY, f"data.root={data_root}", "data.subset=64", "train.max_steps=6",
              "train.gradient_accumulation_steps=2", "train.checkpoint_every=3",
              "train.lr_warmup_steps=2", "train.learning_rate=2e-3", "train.use_ema=true"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_python(["-m", "training", *common, f"train.output_dir={straight}"])
    half = straight / "checkpoints" / "checkpoint-0000003"
    state = torch.load(half / "custom_checkpoint_0.pkl", weights_only=True)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (3, 1, 2)
    # The first half of the interrupted run is the straight run's first half (same process, same
    # seed): its checkpoint is what an interrupted process would have left behind.
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(half, resumed / "checkpoints" / half.name)
    proc = run_python(["-m", "training", *common, f"train.output_dir={resumed}"])
    assert "resumed from" in proc.stderr and "at step 3" in proc.stderr

    a, b = straight / "checkpoints" / "checkpoint-0000006", resumed / "checkpoints" / "checkpoint-0000006"
    _compare_checkpoints(a, b)
    lr = torch.load(b / "custom_checkpoint_1.pkl", weights_only=True)
    assert lr["last_epoch"] == 6
    ema = torch.load(b / "custom_checkpoint_2.pkl", weights_only=True)
    assert ema["optimization_step"] == 6
    # the exported pipelines (EMA weights) agree too
    ua = load_file(straight / "final" / "unet" / "diffusion_pytorch_model.safetensors")
    ub = load_file(resumed / "final" / "unet" / "diffusion_pytorch_model.safetensors")
    for k in ua:
        torch.testing.assert_close(ua[k], ub[k], rtol=0, atol=1e-6)
    for out in (straight, resumed):
        summary = json.loads((out / "final" / "training_summary.json").read_text())
        assert summary["steps"] == 6 and summary["num_processes"] == 1


# -- several processes ----------------------------------------------------------------------------

@pytest.mark.slow
def test_two_process_cpu_run_writes_one_checkpoint(data_root, tmp_path):
    out = tmp_path / "ddp"
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "training"]
    run_python([*launch, *TINY, f"data.root={data_root}", "train.max_steps=4",
                "train.gradient_accumulation_steps=2", "train.checkpoint_every=0",
                f"train.output_dir={out}"], timeout=400)
    summary = json.loads((out / "final" / "training_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["steps"] == 4
    assert summary["epochs"] == pytest.approx(4 * 16 * 2 * 2 / 256)
    entries = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert entries == ["checkpoint-0000004"], entries                 # one, and no .tmp- leftovers
    ckpt = out / "checkpoints" / "checkpoint-0000004"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    assert torch.load(ckpt / "custom_checkpoint_0.pkl", weights_only=True)["step"] == 4


def test_train_state_keeps_every_process_generator():
    """accelerate writes custom state from the main process only: the state gathered before a
    save must give each process back its own generator on resume."""
    import torch

    from training.loop import TrainState

    ranks = [TrainState(seed=10 + r, process_index=r) for r in range(2)]
    for r in ranks:
        torch.rand(5, generator=r.generator)  # advance
    saved = ranks[0]
    saved.all_generator_states = torch.stack([r.generator.get_state() for r in ranks])
    state = saved.state_dict()
    for r in range(2):
        fresh = TrainState(seed=0, process_index=r)
        fresh.load_state_dict(state)
        assert torch.equal(torch.rand(3, generator=fresh.generator),
                           torch.rand(3, generator=ranks[r].generator))
    with pytest.raises(ValueError, match="as many processes"):
        TrainState(seed=0, process_index=2).load_state_dict(state)
