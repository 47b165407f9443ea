"""benchmarks/guidance_study.py end to end on a tiny random 28x28 model: autoguidance skipped with
its reason when there is no guide, then ``--make-guide`` (its training command checked against the
training config parser, the training itself replaced by a tiny saved guide), one JSON per
(method, scale, n) with its command, resume without re-evaluating, and a page whose numbers are
the JSONs'."""

from __future__ import annotations

import json

import pytest
from diffusers import DDPMScheduler

from conftest import REPO_ROOT, benchmark_module, make_pipe, markdown_tables, seeded_unet

TINY = dict(sample_size=28, num_classes=10)          # Fashion-MNIST's shape and class table
SCALES = {"cfg": (1.5, 3.0), "cfg-rescale": (4.0,), "interval": (3.0,), "apg": (4.0,),
          "cfg-zero-star": (2.0,), "cfg++": (0.6,), "cfg-on-cfgpp-sampler": (2.0,),
          "autoguidance": (2.0,)}
N, N_BEST = 4, 5


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("guidance_study") as module:
        yield module



def test_study_end_to_end(bench, tmp_path, monkeypatch, capsys):
    model = tmp_path / "model"
    make_pipe(seeded_unet(0, **TINY), DDPMScheduler(num_train_timesteps=1000)).save_pretrained(model)
    results, work = tmp_path / "guidance", tmp_path / "work"
    argv = ["--model", str(model), "--n", str(N), "--n-best", str(N_BEST), "--nfe", "4",
            "--reference-n", "40", "--results", str(results), "--work", str(work),
            "--cache-dir", str(tmp_path / "cache")]
    argv += [f"--scales={m}=" + ",".join(f"{s:g}" for s in v) for m, v in SCALES.items()]

    # 1. No guide: autoguidance is skipped, with the reason printed and on the page.
    bench.main(argv + ["--methods", "cfg,autoguidance"])
    assert "autoguidance skipped: no guide model" in capsys.readouterr().out
    assert "`autoguidance`: not run: no guide model" in (tmp_path / "guidance.md").read_text()
    assert not list((results / "runs").glob("autoguidance*"))
    first = {p.name: p.stat().st_mtime_ns for p in (results / "runs").glob("*.json")}

    # 2. --make-guide: the command parses as a training config with the recipe's 700 steps; the
    #    "training" saves a tiny guide of the same family where the run's final pipeline goes.
    calls = []

    def fake_run(cmd, cwd=None, check=False):
        from training.config import load_config

        assert cmd[1:4] == ["-m", "training", "--config"]
        cfg = load_config(f"{REPO_ROOT}/{cmd[4]}", cmd[5:])
        assert cfg.train.max_steps == 700 and cfg.data.name == "fashion-mnist"
        final = f"{cfg.train.output_dir}/final"
        make_pipe(seeded_unet(1, **TINY), DDPMScheduler(num_train_timesteps=1000)).save_pretrained(final)
        calls.append(cmd)

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    bench.main(argv + ["--make-guide"])
    assert len(calls) == 1 and f"train.output_dir={work / 'guide'}" in calls[0]

    runs = results / "runs"
    expected = {f"{m}__s{s:g}__n{N}.json" for m, v in SCALES.items() for s in v}
    saved = {p.name: json.loads(p.read_text()) for p in runs.glob("*.json")}
    assert expected <= set(saved)
    for name, mtime in first.items():   # resumed: the first run's points were not redone
        assert (runs / name).stat().st_mtime_ns == mtime
    best = {r["method"]: r for r in saved.values() if r["n"] == N_BEST}
    assert set(best) == set(SCALES) | {"autoguidance-equal-nfe"}
    cfg_scan = [saved[f"cfg__s{s:g}__n{N}.json"] for s in SCALES["cfg"]]
    assert best["cfg"]["scale"] == min(cfg_scan, key=lambda r: r["fid"])["scale"]
    # NFE: CFG's batched pair counts once, autoguidance's two networks twice, and the equal-NFE
    # row runs half the steps to match CFG.
    assert best["cfg"]["nfe"] == best["cfg"]["steps"] == 4
    assert best["autoguidance"]["nfe"] == 2 * best["autoguidance"]["steps"] == 8
    assert best["autoguidance-equal-nfe"]["nfe"] == best["cfg"]["nfe"]
    assert best["cfg++"]["sampler"] == "ddim" and best["cfg"]["sampler"] == "dpmpp-2m"
    assert best["cfg-zero-star"]["options"] == {"zero_init_steps": 0}   # dpmpp-2m: DDIM-type
    assert "guide_model=" in best["autoguidance"]["command"]
    for r in saved.values():
        assert r["command"].startswith("python -m diffusion evaluate --model ")
        assert f"--num-samples {r['n']}" in r["command"] and f"--guidance {r['guidance']['name']}" in r["command"]

    page = (tmp_path / "guidance.md").read_text()
    assert (results / "fid_vs_scale.png").stat().st_size > 0
    assert "fid_vs_scale.png" in page and "## Recommendation" in page and "Target (FID" in page
    sections = markdown_tables(page)
    for r in saved.values():   # every JSON is one row of its method's table, numbers equal
        row = [c for c in sections[r["method"]] if c["n"] == f"{r['n']:,}" and float(c["scale"]) == r["scale"]]
        assert len(row) == 1, r["method"]
        row = row[0]
        for column, key, digits in (("FID", "fid", 4), ("precision", "precision", 3),
                                    ("recall", "recall", 3), ("accuracy", "accuracy", 4),
                                    ("speckle rate", "speckle_rate", 4)):
            assert float(row[column]) == pytest.approx(r[key], abs=0.6 * 10 ** -digits)
        assert float(row["KID x 1e3"]) == pytest.approx(r["kid"] * 1e3, abs=0.006)
        assert int(row["NFE"]) == r["nfe"] and int(row["steps"]) == r["steps"]
    summary = {c["method"]: c for c in sections["Each method at its best scale"]}
    assert set(summary) == set(best)
    for method, r in best.items():
        assert float(summary[method]["FID"]) == pytest.approx(r["fid"], abs=6e-5)
        change = 100 * (r["fid"] / best["cfg"]["fid"] - 1)
        assert float(summary[method]["FID vs CFG's best"].rstrip("%")) == pytest.approx(change, abs=0.06)
    # The verdict and the recommendation name rows of the table, from the numbers.
    fair = [m for m, r in best.items() if m != "cfg-on-cfgpp-sampler"
            and r["nfe"] <= best["cfg"]["nfe"] and r["speckle_rate"] <= best["cfg"]["speckle_rate"]]
    winner = min(fair, key=lambda m: best[m]["fid"])
    recommendation = page.split("## Recommendation")[1].split("##")[0]
    assert (recommendation.strip().startswith("Keep plain CFG") if winner == "cfg"
            else f"at scale {best[winner]['scale']:g} on {best[winner]['sampler']}" in recommendation)

    # 3. --report-only rebuilds the same page from the JSONs.
    bench.main(argv + ["--report-only"])
    assert (tmp_path / "guidance.md").read_text() == page
