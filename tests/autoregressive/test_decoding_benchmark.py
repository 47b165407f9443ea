"""benchmarks/decoding_speed.py runs end to end (tiny settings) and writes its table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "decoding_speed.py"


def test_decoding_speed_benchmark_writes_ratios_and_checks_identical_tokens(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("decoding_speed", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--batch", "1", "--repeats", "1", "--beams", "1,2", "--threads", "1",
                       "--out", str(tmp_path / "speed")]) == 0
    rows = json.loads((tmp_path / "speed.json").read_text())
    kv = {r["tokens"]: r for r in rows if r["kind"] == "kv-cache"}
    assert set(kv) == {49, 196} and all(r["same_tokens"] for r in kv.values())
    assert kv[196]["speedup"] == kv[196]["seconds_without_cache"] / kv[196]["seconds_with_cache"]
    beams = [r for r in rows if r["kind"] == "beam"]
    assert [r["num_beams"] for r in beams] == [1, 2] and beams[0]["cost_vs_greedy"] == 1.0
    assert beams[1]["cost_vs_greedy"] == beams[1]["seconds"] / beams[0]["seconds"]
    assert "speed-up" in (tmp_path / "speed.md").read_text()
