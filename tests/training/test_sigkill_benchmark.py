"""benchmarks/sigkill_resume.py runs: a run SIGKILLed at random points (inside training steps
and inside checkpoint writes) and resumed each time ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import importlib.util

import pytest

from training_helpers import REPO


@pytest.mark.slow
def test_killed_and_resumed_run_ends_bit_identical(tmp_path):
    spec = importlib.util.spec_from_file_location("sigkill_resume", REPO / "benchmarks" / "sigkill_resume.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--kills", "2", "--steps", "10", "--checkpoint-every", "3", "--seed", "1",
                         "--work", str(tmp_path / "work"), "--out", str(tmp_path / "report")])
    kills = report["kills"]
    assert [k["mode"] for k in kills] == ["mid-step", "mid-write", "finish"]
    assert all(k["resumed_from"] % 3 == 0 for k in kills)
    diff = report["max_abs_difference"]
    assert diff["weights"] == diff["ema"] == diff["adam"] == diff["posthoc"] == 0.0
    assert diff["posthoc_snapshot_files_equal"] and diff["num_posthoc_snapshots"] >= 3
    assert "Max abs difference" in (tmp_path / "report.md").read_text()
