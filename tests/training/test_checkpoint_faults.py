"""Fault catalogue for checkpoints (training/loop.py ``save_checkpoint`` / ``load_checkpoint``):

* disk full (ENOSPC) in the middle of a checkpoint write: the run fails with an OSError naming the
  checkpoint and the last good one, no folder resume would load is left, and resuming from the
  previous checkpoint ends bit-identical to an uninterrupted run;
* a truncated (or altered, or missing) file in a checkpoint: resume refuses it with
  :class:`~training.checkpoints.CorruptCheckpointError` naming the file and the previous checkpoint to
  resume from, before anything is loaded; it does not fall back on its own;
* SIGKILL of a training process in the middle of a checkpoint write: resume works, bit-identical.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from diffusion.data.datasets import TensorImageDataset
from training.config import load_config
from training.checkpoints import CorruptCheckpointError, list_checkpoints, resume_path
from training.loop import Trainer
from training_helpers import REPO, TINY, child_env

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

#: 64 images, 4 batches an epoch: checkpoints at 2 and 4 fall mid-epoch and on an epoch boundary.
COMMON = (*TINY, "train.export=false", "train.max_steps=6", "train.checkpoint_every=2",
          "train.checkpoints_total_limit=5", "train.lr_warmup_steps=2", "train.use_ema=true")
DATASET_CODE = ("TensorImageDataset(torch.rand(64, 1, 28, 28, generator=torch.Generator()"
                ".manual_seed(0)) * 2 - 1, torch.arange(64) % 4, ['a', 'b', 'c', 'd'])")


def make_dataset() -> TensorImageDataset:
    return eval(DATASET_CODE)  # the same expression the SIGKILL test's child process runs


def trainer(out, *overrides) -> Trainer:
    return Trainer(load_config(None, [*COMMON, f"train.output_dir={out}", *overrides]),
                   dataset=make_dataset())


def final_state(t: Trainer) -> dict:
    """Weights, EMA weights and Adam moments at the end of a run."""
    model = t.accelerator.unwrap_model(t.modules["model"])
    state = {f"w.{n}": p.detach().clone() for n, p in model.named_parameters()}
    state.update({f"ema.{i}": s.clone() for i, s in enumerate(t.emas["model"].shadow_params)})
    for i, s in enumerate(t.optimizers["model"].optimizer.state.values()):
        state.update({f"adam.{i}.{k}": v.clone() for k, v in s.items() if torch.is_tensor(v)})
    return state


def max_abs_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted 6-step run: its end state and its checkpoint folder (2, 4, 6)."""
    from accelerate.state import AcceleratorState, GradientState

    out = tmp_path_factory.mktemp("straight")
    t = trainer(out)
    t.run()
    state = final_state(t)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return state, out


def test_disk_full_mid_write_fails_clearly_and_resume_is_bit_identical(tmp_path, straight):
    t = trainer(tmp_path)
    real_save = t.accelerator.save_state

    def save_until_the_disk_fills(output_dir, **kwargs):
        real_save(output_dir, **kwargs)
        if t.state.step == 4:  # half of one file reached the disk, then ENOSPC
            f = os.path.join(output_dir, "model.safetensors")
            with open(f, "r+b") as fh:
                fh.truncate(os.path.getsize(f) // 2)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f)

    t.accelerator.save_state = save_until_the_disk_fills
    with pytest.raises(OSError) as info:
        t.run()
    assert info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert "writing checkpoint" in message and "checkpoint-0000004 failed" in message
    assert os.strerror(errno.ENOSPC) in message
    assert "last good checkpoint:" in message and "checkpoint-0000002" in message
    # nothing resume would load: only checkpoint 2 is listed, the partial one keeps its .tmp name
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-0000002"]
    cfg = load_config(None, [*COMMON, f"train.output_dir={tmp_path}"])
    assert resume_path(cfg) == tmp_path / "checkpoints" / "checkpoint-0000002"

    resumed = trainer(tmp_path)
    resumed.run()
    assert resumed.state.step == 6
    assert max_abs_difference(final_state(resumed), straight[0]) == 0.0
    assert not (tmp_path / "checkpoints" / ".tmp-checkpoint-0000004").exists()  # replaced


def test_a_truncated_checkpoint_file_is_refused_by_name(tmp_path, straight):
    source = straight[1] / "checkpoints"
    files = sorted(p.name for p in (source / "checkpoint-0000004").iterdir() if p.name != "manifest.json")
    assert {"model.safetensors", "optimizer.bin", "custom_checkpoint_0.pkl"} <= set(files)
    for name in files:  # every file of a checkpoint is checked
        root = tmp_path / name / "checkpoints"
        for step in ("0000002", "0000004"):
            shutil.copytree(source / f"checkpoint-{step}", root / f"checkpoint-{step}")
        f = root / "checkpoint-0000004" / name
        size = f.stat().st_size
        with open(f, "r+b") as fh:
            fh.truncate(size - 1)
        t = trainer(tmp_path / name)
        with pytest.raises(CorruptCheckpointError) as info:
            t.run()
        message = str(info.value)
        assert str(f) in message and f"{size - 1} bytes, {size} when written" in message, message
        assert f"train.resume={root / 'checkpoint-0000002'}" in message
        assert t.state.step == 0  # nothing was loaded
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()

    # an altered byte of the same size, and a missing file, are refused as well
    root = tmp_path / "altered" / "checkpoints"
    shutil.copytree(source / "checkpoint-0000004", root / "checkpoint-0000004")
    f = root / "checkpoint-0000004" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="model.safetensors is altered"):
        trainer(tmp_path / "altered").load_checkpoint(root / "checkpoint-0000004")
    shutil.copy(source / "checkpoint-0000004" / "model.safetensors", f)  # whole again
    (root / "checkpoint-0000004" / "optimizer.bin").unlink()
    with pytest.raises(CorruptCheckpointError, match="optimizer.bin is missing"):
        trainer(tmp_path / "altered").load_checkpoint(root / "checkpoint-0000004")


CHILD = """
import sys, time, torch
from diffusion.data.datasets import TensorImageDataset
from training.config import load_config
from training.loop import Trainer
t = Trainer(load_config(None, sys.argv[1:]), dataset={dataset})
real_save = t.accelerator.save_state
def slow_save(output_dir, **kwargs):
    real_save(output_dir, **kwargs)
    if t.state.step == 4:
        print("WRITING", flush=True)
        time.sleep(600)
t.accelerator.save_state = slow_save
t.run()
"""


def test_sigkill_during_a_checkpoint_write_resumes_bit_identically(tmp_path, straight):
    code = textwrap.dedent(CHILD).format(dataset=DATASET_CODE)
    child = subprocess.Popen([sys.executable, "-c", code, *COMMON, f"train.output_dir={tmp_path}"],
                             cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "WRITING", child.stderr.read()[-4000:]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    assert (tmp_path / "checkpoints" / ".tmp-checkpoint-0000004").is_dir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-0000002"]
    resumed = trainer(tmp_path)
    resumed.run()
    assert resumed.state.step == 6
    assert max_abs_difference(final_state(resumed), straight[0]) == 0.0
