"""training/loop.py: nothing fails silently.

A non-finite loss or gradient skips the optimizer step, bit for bit (parameters, Adam state, LR
schedule, EMA), is counted and logged; ``train.max_nonfinite_steps`` in a row stop the run with
the step, the loss and the last good checkpoint; no checkpoint or export is written from NaN/inf
weights; with two processes a NaN on one of them skips the step on both.

Faults are injected by wrapping the objective's loss (tiny U-Nets, synthetic data, fp32 or bf16,
one thread): ``nan`` multiplies the loss by NaN (NaN loss and gradients), ``inf_grad`` keeps the
loss and makes its gradient inf (a finite loss with inf/NaN gradients), ``nan_value`` adds NaN to
the loss (a NaN loss whose gradients stay finite: only the loss check can see it).
"""

from __future__ import annotations

import copy
import json
import logging
import math

import pytest
import torch
from safetensors.torch import load_file

from training.config import load_config
from training.checkpoints import list_checkpoints
from training.loop import NonFiniteError, Trainer
from training.state import batches
from training_helpers import TINY, free_port, make_fashion_root, run_python

# Every test here starts and ends with no accelerate singletons (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """128 train / 16 test synthetic 28x28 images in Debian's IDX layout."""
    return make_fashion_root(tmp_path_factory.mktemp("fmnist"), n_train=128, n_test=16)


def tiny_cfg(data_root, output_dir, *overrides):
    return load_config(None, [*TINY, f"data.root={data_root}", f"train.output_dir={output_dir}",
                              "train.lr_warmup_steps=2", "train.learning_rate=2e-3", *overrides])


def poison(loss: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "nan":
        return loss * float("nan")
    if kind == "inf_grad":
        loss.register_hook(lambda grad: grad * float("inf"))
        return loss
    if kind == "nan_value":
        return loss + float("nan")
    raise ValueError(kind)


def snapshot(trainer: Trainer) -> dict:
    """Clones of everything an optimizer step changes: parameters, gradients, optimizer states,
    LR schedules, EMA (shadow weights and step count)."""
    out = {}
    for n, m in trainer.modules.items():
        for name, p in trainer.accelerator.unwrap_model(m).named_parameters():
            out[f"param {n}.{name}"] = p.detach().clone()
            out[f"grad {n}.{name}"] = None if p.grad is None else p.grad.clone()
    for n, opt in trainer.optimizers.items():
        out[f"optimizer {n}"] = copy.deepcopy(opt.optimizer.state_dict())
    for n, sched in trainer.lr_schedulers.items():
        out[f"lr {n}"] = copy.deepcopy(sched.state_dict())
    for n, ema in trainer.emas.items():
        out[f"ema {n}"] = copy.deepcopy(ema.state_dict())
    return out


def assert_same_bits(a, b, path=""):
    """Bit-for-bit equality of nested dicts / lists / tensors / numbers (``-0.0 != 0.0`` here)."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys differ"
        for k in a:
            assert_same_bits(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_bits(x, y, f"{path}[{i}]")
    elif torch.is_tensor(a):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        assert torch.equal(a.flatten().view(torch.uint8), b.flatten().view(torch.uint8)), f"{path} changed"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


class Faults:
    """Wraps a built Trainer: poisons the loss of the objective calls numbered in ``calls``
    (counted from 0 over micro-batches and optimizers), snapshots the state around every
    ``train_step`` and records what the loop logs."""

    def __init__(self, trainer: Trainer, calls, kind: str = "nan", snapshots: bool = True):
        self.calls, self.n, self.steps, self.logged = set(calls), 0, [], []
        loss, train_step, log = trainer.objective.loss, trainer.train_step, trainer.accelerator.log

        def faulty_loss(name, modules, batch, generator):
            value, items = loss(name, modules, batch, generator)
            if self.n in self.calls:
                value = poison(value, kind)
            self.n += 1
            return value, items

        def recording_step(data):
            before = snapshot(trainer) if snapshots else None
            logs = train_step(data)
            self.steps.append((before, snapshot(trainer) if snapshots else None))
            return logs

        def recording_log(values, step=None, **kwargs):
            self.logged.append((step, dict(values)))
            return log(values, step=step, **kwargs)

        trainer.objective.loss = faulty_loss
        trainer.train_step = recording_step
        trainer.accelerator.log = recording_log


def changed(before: dict, after: dict) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith("param "))


# -- one non-finite step is skipped, bit for bit -----------------------------------------------

@pytest.mark.parametrize("kind, precision, k, overrides", [
    ("nan", "no", 1, ()),
    ("inf_grad", "no", 2, ("train.max_grad_norm=null",)),   # the gradient check without clipping
    ("nan", "bf16", 2, ()),
])
def test_a_nonfinite_step_is_skipped_and_training_goes_on(data_root, tmp_path, caplog, kind,
                                                          precision, k, overrides):
    """Step 3 (0-based) is poisoned in one of its k micro-batches (the last for inf_grad, the
    first otherwise): that train_step leaves parameters, gradients (None), Adam state, LR schedule
    and EMA bit-identical; the step is then taken on the next batches, the run ends after 6
    applied steps with finite weights and a finite export, and the skip is counted and logged."""
    cfg = tiny_cfg(data_root, tmp_path / "run", "train.max_steps=6", f"train.mixed_precision={precision}",
                   f"train.gradient_accumulation_steps={k}", *overrides)
    trainer = Trainer(cfg)
    faults = Faults(trainer, calls={3 * k + (k - 1 if kind == "inf_grad" else 0)}, kind=kind)
    with caplog.at_level(logging.WARNING, logger="training.loop"):
        final = trainer.run()

    assert len(faults.steps) == 7                                     # 6 applied + 1 skipped
    before, after = faults.steps[3]
    assert all(v is None for key, v in after.items() if key.startswith("grad "))  # zeroed
    assert_same_bits(before, after)
    assert changed(*faults.steps[2]) and changed(*faults.steps[4])  # the other steps do move
    # the retried step 3 starts from the same state the skipped one did
    assert_same_bits(faults.steps[4][0], before)

    state, model = trainer.state, trainer.accelerator.unwrap_model(trainer.modules["model"])
    assert state.step == 6 and state.nonfinite_skips == 1
    assert {int(s["step"]) for s in trainer.optimizers["model"].optimizer.state.values()} == {6}
    assert trainer.lr_schedulers["model"].last_epoch == 6
    assert trainer.emas["model"].optimization_step == 6
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(s).all() for s in trainer.emas["model"].shadow_params)
    exported = load_file(final / "unet" / "diffusion_pytorch_model.safetensors")
    assert exported and all(torch.isfinite(w).all() for w in exported.values())

    summary = json.loads((final / "training_summary.json").read_text())
    assert summary["nonfinite_skips"] == 1 and summary["figures"]["final_nonfinite_skips"] == 1
    assert (3, {"train/nonfinite_skips": 1}) in faults.logged           # at the skip
    windows = [(s, v) for s, v in faults.logged if "train/loss" in v]  # log_every=1: every step
    assert [s for s, _ in windows] == [1, 2, 3, 4, 5, 6]
    assert [v["train/nonfinite_skips"] for _, v in windows] == [0, 0, 0, 1, 1, 1]
    assert all(math.isfinite(x) for _, v in windows for x in v.values())  # no NaN in the means
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 1, warnings
    what = "gradient" if kind == "inf_grad" else "loss (loss nan)"
    assert warnings[0].startswith(f"step 3: non-finite {what}"), warnings[0]
    assert "skipped the 'model' optimizer step (1 in a row, 1 in all)" in warnings[0]


def test_the_count_in_a_row_restarts_after_a_good_step(data_root, tmp_path):
    """max_nonfinite_steps=2 and every other step poisoned: never two in a row, so the run ends."""
    cfg = tiny_cfg(data_root, tmp_path / "run", "train.max_steps=4", "train.max_nonfinite_steps=2",
                   "train.export=false")
    trainer = Trainer(cfg)
    faults = Faults(trainer, calls={1, 3, 5}, snapshots=False)
    trainer.run()
    assert len(faults.steps) == 7 and trainer.state.step == 4 and trainer.state.nonfinite_skips == 3


# -- K in a row stop the run -------------------------------------------------------------------

def test_k_nonfinite_steps_in_a_row_stop_the_run_naming_the_last_checkpoint(data_root, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(data_root, out, "train.max_steps=10", "train.checkpoint_every=2",
                   "train.checkpoints_total_limit=5", "train.max_nonfinite_steps=3")
    trainer = Trainer(cfg)
    faults = Faults(trainer, calls=range(4, 100), snapshots=False)   # from step 4 on, every call
    with pytest.raises(NonFiniteError) as info:
        trainer.run()
    message = str(info.value)
    ckpt = out / "checkpoints" / "checkpoint-0000004"
    print(message)
    assert message.startswith("training stopped at step 4: 3 optimizer steps of 'model' in a row")
    assert "train.max_nonfinite_steps=3" in message and "(loss nan)" in message
    assert f"last good checkpoint: {ckpt} " in message
    # 4 steps, 2 skips recorded, the third skip raised
    assert len(faults.steps) == 6 and faults.n == 7
    assert trainer.state.step == 4 and trainer.state.nonfinite_skips == 3
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-0000002", "checkpoint-0000004"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "checkpoint-0000002", "checkpoint-0000004"]                  # nothing half-written
    assert not (out / "final").exists()
    # the weights at the stop are the checkpoint's, bit for bit
    saved = load_file(ckpt / "model.safetensors")
    live = trainer.accelerator.unwrap_model(trainer.modules["model"]).state_dict()
    assert_same_bits({k: live[k] for k in saved}, saved)


def test_after_the_stop_a_resume_from_the_last_good_checkpoint_ends_as_an_unfaulted_run(
        data_root, tmp_path):
    """The fault goes away (a transient NaN): resuming from the checkpoint the stop names ends
    bit-identical to a run that never saw it (weights, EMA, Adam state)."""
    from accelerate.state import AcceleratorState, GradientState

    common = ("train.max_steps=6", "train.checkpoint_every=2", "train.checkpoints_total_limit=5",
              "train.max_nonfinite_steps=2", "train.export=false")

    def end_state(t):
        model = t.accelerator.unwrap_model(t.modules["model"])
        return {"params": {n: p.detach().clone() for n, p in model.named_parameters()},
                "ema": [s.clone() for s in t.emas["model"].shadow_params],
                "adam": copy.deepcopy(t.optimizers["model"].optimizer.state_dict()["state"])}

    clean = Trainer(tiny_cfg(data_root, tmp_path / "clean", *common))
    clean.run()
    expected = end_state(clean)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()

    out = tmp_path / "faulty"
    faulty = Trainer(tiny_cfg(data_root, out, *common))
    Faults(faulty, calls=range(4, 6), snapshots=False)     # steps 4 and 5 (0-based calls) NaN
    with pytest.raises(NonFiniteError, match="last good checkpoint: .*checkpoint-0000004"):
        faulty.run()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()

    resumed = Trainer(tiny_cfg(data_root, out, *common))   # train.resume=auto: checkpoint 4
    resumed.run()
    assert resumed.state.step == 6
    assert_same_bits(end_state(resumed), expected)


def test_the_stop_says_when_there_is_no_checkpoint(data_root, tmp_path):
    trainer = Trainer(tiny_cfg(data_root, tmp_path / "run", "train.max_steps=10",
                               "train.max_nonfinite_steps=2"))
    Faults(trainer, calls=range(100), kind="inf_grad", snapshots=False)
    with pytest.raises(NonFiniteError, match=r"^training stopped at step 0: 2 optimizer steps .*"
                                             r"a non-finite gradient \(loss \d.*no checkpoint has been "
                                             r"written yet"):
        trainer.run()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_max_nonfinite_steps_is_checked():
    assert load_config(None, []).train.max_nonfinite_steps == 3
    for bad in ("0", "-1", "1.5"):
        with pytest.raises(ValueError, match="max_nonfinite_steps"):
            load_config(None, [f"train.max_nonfinite_steps={bad}"])


# -- no checkpoint or export from non-finite weights -------------------------------------------

def test_checkpoint_and_export_of_nonfinite_weights_are_refused(data_root, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(tiny_cfg(data_root, out, "train.max_steps=2"))
    model = trainer.accelerator.unwrap_model(trainer.modules["model"])
    weight = dict(model.named_parameters())["conv_in.weight"]
    with torch.no_grad():
        kept = weight.clone()
        weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError) as info:
        trainer.save_checkpoint()
    message = str(info.value)
    assert message.startswith(f"refusing to write checkpoint {out / 'checkpoints' / 'checkpoint-0000000'} "
                              "at step 0: non-finite (NaN/inf) weights in model.conv_in.weight;")
    assert "nothing was written; no checkpoint has been written yet" in message
    assert not (out / "checkpoints").exists()

    with torch.no_grad():
        weight.copy_(kept)
    good = trainer.save_checkpoint()                                   # finite again: written
    trainer.state.step = 5
    shadow = trainer.emas["model"].shadow_params
    shadow[-1][0] = float("inf")
    with pytest.raises(NonFiniteError, match=rf"EMA model\.\S+;.*last good checkpoint: {good} "):
        trainer.save_checkpoint()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [good.name]
    with pytest.raises(NonFiniteError, match=r"refusing to write the export .*final at step 5: .*EMA model\."):
        trainer.export(out / "final", {})
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]    # no final, no .tmp-final


# -- several optimizers ------------------------------------------------------------------------

GAN_TINY = ("train.objective=gan", "gan.latent_dim=8", "gan.generator_channels=[8,4]",
            "gan.discriminator_channels=[4,8]", "train.batch_size=8", "train.lr_scheduler=constant",
            "train.lr_warmup_steps=0", "gan.r1_gamma=0")


def test_gan_decides_per_optimizer(data_root, tmp_path):
    """A NaN discriminator loss skips the discriminator's step only; the generator (its loss is
    finite) steps, its EMA steps and the step counts."""
    trainer = Trainer(tiny_cfg(data_root, tmp_path / "run", *GAN_TINY))
    faults = Faults(trainer, calls={2})       # calls: D0 G0 | D1 G1 ...: the D loss of step 1
    data = batches(trainer.loader, trainer.sampler, trainer.state, trainer.accelerator)
    for _ in range(3):
        logs = trainer.train_step(data)
    (b0, a0), (b1, a1), _ = faults.steps

    def only(snap, net):
        return {k: v for k, v in snap.items() if net in k and not k.startswith("grad ")}

    assert changed(only(b0, "discriminator"), only(a0, "discriminator"))   # D steps at step 0
    assert_same_bits(only(b1, "discriminator"), only(a1, "discriminator"))  # ... not at step 1
    assert changed(only(b1, "generator"), only(a1, "generator"))           # G does
    assert a1["ema generator"]["optimization_step"] == 2
    d_steps = {int(s["step"]) for s in trainer.optimizers["discriminator"].optimizer.state.values()}
    g_steps = {int(s["step"]) for s in trainer.optimizers["generator"].optimizer.state.values()}
    assert (d_steps, g_steps) == ({2}, {3})
    assert trainer.lr_schedulers["discriminator"].last_epoch == 2
    assert trainer.lr_schedulers["generator"].last_epoch == 3
    assert "discriminator/d_loss" in logs and "generator/g_loss" in logs


# -- several processes -------------------------------------------------------------------------

TWO_PROCESS_SCRIPT = '''
import sys, torch
from training.config import load_config
from training.loop import Trainer

trainer = Trainer(load_config(None, sys.argv[1:]))
acc, loss, calls = trainer.accelerator, trainer.objective.loss, [0]

def faulty_loss(name, modules, batch, generator):
    value, items = loss(name, modules, batch, generator)
    if acc.process_index == 0 and calls[0] == 2:
        value = value + float("nan")  # a NaN loss on rank 0 only; every gradient stays finite
    calls[0] += 1
    return value, items

trainer.objective.loss = faulty_loss
trainer.run()
model = acc.unwrap_model(trainer.modules["model"])
torch.save({"calls": calls[0], "step": trainer.state.step, "skips": trainer.state.nonfinite_skips,
            "adam": sorted({int(s["step"]) for s in trainer.optimizers["model"].optimizer.state.values()}),
            "weights": {n: p.detach().clone() for n, p in model.named_parameters()},
            "ema": [s.clone() for s in trainer.emas["model"].shadow_params]},
           trainer.output_dir / f"rank{acc.process_index}.pt")
'''


@pytest.mark.slow  # two new interpreters importing torch/diffusers/accelerate
def test_two_processes_skip_together(data_root, tmp_path):
    """Rank 0 alone sees a NaN loss (finite gradients, so DDP's all-reduce does not spread it):
    both ranks skip step 2, take the same number of steps and end with the same weights."""
    script = tmp_path / "nan_on_rank0.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    out = tmp_path / "ddp"
    proc = run_python(["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                       "--main_process_port", str(free_port()), str(script), *TINY,
                       f"data.root={data_root}", "train.max_steps=4", "train.lr_warmup_steps=2",
                       f"train.output_dir={out}"], timeout=400)
    assert "step 2: non-finite loss on 1 of 2 processes (loss nan); skipped" in proc.stderr
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for r in ranks:
        assert (r["calls"], r["step"], r["skips"], r["adam"]) == (5, 4, 1, [4])
    assert_same_bits(ranks[0]["weights"], ranks[1]["weights"], "weights")
    assert_same_bits(ranks[0]["ema"], ranks[1]["ema"], "ema")
    summary = json.loads((out / "final" / "training_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["nonfinite_skips"] == 1
