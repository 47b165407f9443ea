"""SIGKILL a training run at random points, resume it each time, and compare its end with an
uninterrupted run of the same config (issue 14: "every resume continues bit-identically").

Two runs of a tiny class-conditional diffusion config (the tests' 42k-parameter U-Net, 64
synthetic images, batch 16, fp32, EMA and post-hoc EMA snapshots on, a checkpoint every
``--checkpoint-every`` steps), each in its own process:

1. straight: ``--steps`` steps, no interruption; it also times each checkpoint write;
2. killed: started, killed with SIGKILL ``--kills`` times and restarted (``train.resume=auto``:
   the newest complete checkpoint) after each kill, then run to the end. Kill points are drawn
   from ``--seed``: a step and a mode, alternating ``mid-step`` (a random moment inside a training
   step) and ``mid-write`` (a random moment inside a checkpoint write, from the straight run's
   write times; whether it really landed inside one is read back from the ``.tmp-`` folder left
   behind).

The report gives, per kill, the step and mode, whether a partial checkpoint was left, and the
step the restart resumed from; then the max abs difference between the two runs' final weights,
EMA weights, Adam moments and post-hoc EMA snapshots (0.0 means bit-identical).

    python benchmarks/sigkill_resume.py --kills 5 --out docs/results/sigkill_resume
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TINY = (
    "model.block_out_channels=[8,16]", "model.norm_num_groups=4", "model.layers_per_block=1",
    "model.attention_levels=[]", "model.attention_head_dim=8", "model.dropout=0.0",
    "data.image_size=28", "train.batch_size=16", "train.mixed_precision=no",
    "train.num_threads=1", "train.log_every=1", "train.sample_every=0", "train.export=false",
    "train.use_ema=true", "train.lr_warmup_steps=5", "train.checkpoints_total_limit=3",
    "train.posthoc_ema=true", "diffusion.sample_steps=1", "diffusion.guidance_scale=1.0",
)

#: The child: one training process that says what it is doing on stdout, line by line.
CHILD = """
import sys, torch
from safetensors.torch import save_file
from diffusion.data.datasets import TensorImageDataset
from training.config import load_config
from training.loop import Trainer

data = TensorImageDataset(torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1,
                          torch.arange(64) % 4, ['a', 'b', 'c', 'd'])
t = Trainer(load_config(None, sys.argv[1:]), dataset=data)
real_save, real_step, real_load = t.accelerator.save_state, t.train_step, t.load_checkpoint

def save_state(output_dir, **kwargs):
    print(f"BEGIN {t.state.step}", flush=True)
    real_save(output_dir, **kwargs)
    print(f"END {t.state.step}", flush=True)

def train_step(data):
    logs = real_step(data)
    print(f"STEP {t.state.step}", flush=True)
    return logs

def load_checkpoint(path):
    real_load(path)
    print(f"RESUMED {t.state.step}", flush=True)

t.accelerator.save_state, t.train_step, t.load_checkpoint = save_state, train_step, load_checkpoint
print("START", flush=True)
t.run()
model = t.accelerator.unwrap_model(t.modules["model"])
state = {f"weights.{n}": p.detach().clone().contiguous() for n, p in model.named_parameters()}
state.update({f"ema.{i}": s.clone().contiguous() for i, s in enumerate(t.emas["model"].shadow_params)})
for i, s in enumerate(t.optimizers["model"].optimizer.state.values()):
    state.update({f"adam.{i}.{k}": v.clone().contiguous() for k, v in s.items() if torch.is_tensor(v)})
save_file(state, str(t.output_dir / "final_state.safetensors"))
print(f"DONE {t.state.step}", flush=True)
"""


def child_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    return env


class Child:
    """A training process whose stdout lines arrive on a queue with their arrival times."""

    def __init__(self, out: Path, overrides: list):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CHILD), *overrides, f"train.output_dir={out}"],
            cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: "queue.Queue[tuple[float, str]]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put((time.perf_counter(), line.strip()))
        self.lines.put((time.perf_counter(), "EOF"))

    def next(self, timeout: float = 600) -> tuple[float, str, int]:
        t, line = self.lines.get(timeout=timeout)
        if line == "EOF":
            err = self.proc.stderr.read()[-3000:]
            raise RuntimeError(f"training process ended (code {self.proc.wait()}):\n{err}")
        word, _, step = line.partition(" ")
        return t, word, int(step) if step.isdigit() else -1

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)


def straight_run(out: Path, overrides: list) -> dict:
    """The uninterrupted run; returns its checkpoint write and step durations (seconds)."""
    child = Child(out, overrides)
    writes, steps, begin, last = [], [], None, None
    while True:
        t, word, step = child.next()
        if word == "BEGIN":
            begin = t
        elif word == "END":
            writes.append(t - begin)
        elif word == "STEP":
            if last is not None:
                steps.append(t - last)
            last = t
        elif word == "DONE":
            break
    child.proc.wait(timeout=60)
    return {"write_seconds": writes, "step_seconds": steps}


def killed_run(out: Path, overrides: list, kill_points: list, timing: dict, rng: random.Random
               ) -> list:
    """Kill at each ``(step, mode)`` in order, restarting after each; then finish the run."""
    from training.checkpoints import list_checkpoints

    records = []
    mean_write = sum(timing["write_seconds"]) / len(timing["write_seconds"])
    mean_step = sum(timing["step_seconds"]) / len(timing["step_seconds"])
    for target, mode in kill_points:
        child = Child(out, overrides)
        resumed_from = 0
        while True:
            _, word, step = child.next()
            if word == "RESUMED":
                resumed_from = step
            if mode == "mid-step" and word == "STEP" and step >= target:
                delay = rng.uniform(0, mean_step)
                break
            if mode == "mid-write" and word == "BEGIN" and step >= target:
                delay = rng.uniform(0, mean_write)
                break
        time.sleep(delay)
        child.kill()
        partial = sorted(p.name for p in (out / "checkpoints").glob(".tmp-*"))
        records.append({"mode": mode, "target_step": target, "signal_after_line": f"{word} {step}",
                        "delay_s": round(delay, 4), "resumed_from": resumed_from,
                        "partial_checkpoint_left": partial,
                        "complete_checkpoints": [p.name for p in list_checkpoints(out)]})
    child = Child(out, overrides)
    word, resumed_from = None, 0
    while word != "DONE":
        _, word, step = child.next()
        resumed_from = step if word == "RESUMED" else resumed_from
    child.proc.wait(timeout=60)
    records.append({"mode": "finish", "resumed_from": resumed_from})
    return records


def compare(a: Path, b: Path) -> dict:
    """Max abs difference per group between the two runs' final states and their post-hoc EMA
    snapshots (same files expected)."""
    import torch
    from safetensors.torch import load_file

    sa, sb = load_file(str(a / "final_state.safetensors")), load_file(str(b / "final_state.safetensors"))
    assert sa.keys() == sb.keys()
    diff = {}
    for key in sa:
        group = key.split(".")[0]
        d = float((sa[key].double() - sb[key].double()).abs().max())
        diff[group] = max(diff.get(group, 0.0), d)
    snaps_a = sorted(p.name for p in (a / "posthoc-ema").glob("*.safetensors"))
    snaps_b = sorted(p.name for p in (b / "posthoc-ema").glob("*.safetensors"))
    diff["posthoc_snapshot_files_equal"] = snaps_a == snaps_b
    d = 0.0
    for name in set(snaps_a) & set(snaps_b):
        xa, xb = load_file(str(a / "posthoc-ema" / name)), load_file(str(b / "posthoc-ema" / name))
        d = max([d] + [float((xa[k].double() - xb[k].double()).abs().max()) for k in xa])
    diff["posthoc"] = d
    diff["num_posthoc_snapshots"] = len(snaps_a)
    return diff


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--checkpoint-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="draws the kill points and delays")
    p.add_argument("--work", default="runs/sigkill", help="folder for the two runs")
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    if args.kills < 1 or args.steps < args.kills + 2:
        raise SystemExit("error: need --kills >= 1 and --steps >= kills + 2")
    import shutil

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    overrides = [*TINY, f"train.max_steps={args.steps}",
                 f"train.checkpoint_every={args.checkpoint_every}",
                 f"train.posthoc_ema_snapshot_every={args.checkpoint_every}"]
    start = time.perf_counter()
    timing = straight_run(work / "straight", overrides)
    rng = random.Random(args.seed)
    steps = sorted(rng.sample(range(1, args.steps - 1), args.kills))
    kill_points = [(s, "mid-step" if i % 2 == 0 else "mid-write") for i, s in enumerate(steps)]
    records = killed_run(work / "killed", overrides, kill_points, timing, rng)
    diff = compare(work / "straight", work / "killed")
    report = {"command": "python " + " ".join([f"benchmarks/{Path(__file__).name}", *(argv or sys.argv[1:])]),
              "steps": args.steps, "checkpoint_every": args.checkpoint_every, "seed": args.seed,
              "kills": records, "max_abs_difference": diff,
              "mean_checkpoint_write_s": sum(timing["write_seconds"]) / len(timing["write_seconds"]),
              "mean_step_s": sum(timing["step_seconds"]) / len(timing["step_seconds"]),
              "wall_s": round(time.perf_counter() - start, 1)}
    print(json.dumps(report, indent=2))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        rows = "\n".join(
            f"| {i + 1} | {r['mode']} | {r['signal_after_line']} (+{r['delay_s'] * 1000:.0f} ms) | "
            f"{', '.join(r['partial_checkpoint_left']) or 'none'} | {r['resumed_from']} |"
            for i, r in enumerate(records[:-1]))
        out.with_suffix(".md").write_text(textwrap.dedent(f"""\
            # SIGKILL at random points of a training run, resumed each time

            Produced by `{report['command']}` ({report['wall_s']} s on {_hardware()}).
            Tiny config (42k-parameter U-Net, 64 synthetic images, batch 16, fp32, EMA and post-hoc
            EMA on), {args.steps} steps, a checkpoint every {args.checkpoint_every} steps; mean
            step {report['mean_step_s'] * 1000:.0f} ms, mean checkpoint write
            {report['mean_checkpoint_write_s'] * 1000:.0f} ms.

            | kill | mode | signal sent after | partial checkpoint left | the killed process had resumed from step |
            |---:|---|---|---|---:|
            """) + rows + textwrap.dedent(f"""

            The final restart resumed from step {records[-1]['resumed_from']} and ran to step {args.steps}.

            Max abs difference, killed-and-resumed run vs uninterrupted run: weights
            {diff['weights']}, EMA weights {diff['ema']}, Adam moments {diff['adam']}, post-hoc EMA
            snapshots {diff['posthoc']} ({diff['num_posthoc_snapshots']} snapshots, same files:
            {diff['posthoc_snapshot_files_equal']}).
            """))
    return report


def _hardware() -> str:
    sys.path.insert(0, str(REPO))
    from diffusion.hardware import hardware_description
    import torch

    return hardware_description(torch.device("cpu"))


if __name__ == "__main__":
    main()
