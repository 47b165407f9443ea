"""benchmarks/recipes_study.py end to end on tiny random 28x28 models: ddpm-eps evaluated from
the shipped model (here a tiny stand-in) instead of training, flow-logit-normal "trained" by a fake
training command (checked against the training config parser), every stage's JSON with its
command and image count, the best sampler carried from the selection to the NFE/guidance/post-hoc
EMA stages, resume without re-evaluating or retraining, and a page whose numbers are the JSONs'."""

from __future__ import annotations

import json

import pytest
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from conftest import REPO_ROOT, benchmark_module, make_pipe, markdown_tables, seeded_unet

TINY = dict(sample_size=28, num_classes=10)          # Fashion-MNIST's shape and class table
STEPS, N_SELECT, N_MAIN, N_OTHER = 3, 4, 6, 5


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("recipes_study") as module:
        yield module



def save_tiny(folder, seed, scheduler, summary=None):
    make_pipe(seeded_unet(seed, **TINY), scheduler).save_pretrained(folder)
    if summary is not None:
        (folder / "training_summary.json").write_text(json.dumps(summary))


def test_study_end_to_end(bench, tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    save_tiny(shipped, 0, DDPMScheduler(num_train_timesteps=1000),
              {"steps": STEPS, "command": "python -m training --config shipped.yaml",
               "train_seconds": 7200.0, "hardware": "2 CPU cores (x86_64)"})
    monkeypatch.setitem(bench.SHIPPED, "ddpm-eps", shipped)
    results, work = tmp_path / "recipes", tmp_path / "work"
    argv = ["--recipes", "flow-logit-normal,ddpm-eps", "--steps", str(STEPS),
            "--n-select", str(N_SELECT), "--n-main", str(N_MAIN), "--n-other", str(N_OTHER),
            "--reference-n", "40", "--results", str(results), "--work", str(work),
            "--cache-dir", str(tmp_path / "cache")]
    calls = []

    def fake_run(cmd, cwd=None, check=False):
        """Training saves a tiny flow pipeline where the run's final pipeline goes; post-hoc EMA
        reconstruction saves one (another seed per length) at --out."""
        from training.config import load_config

        calls.append(cmd)
        assert cmd[1:3] == ["-m", "training"]
        if cmd[3] == "posthoc-ema":
            args = dict(zip(cmd[4::2], cmd[5::2]))
            assert args["--run"] == str(work / "flow-logit-normal")
            save_tiny(tmp_path / args["--out"], int(100 * float(args["--sigma-rel"])),
                      FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000))
            return
        assert cmd[3] == "--config"
        cfg = load_config(f"{REPO_ROOT}/{cmd[4]}", cmd[5:])
        assert cfg.train.objective == "flow-matching" and cfg.flow.timestep_sampling == "logit-normal"
        assert cfg.train.max_steps == STEPS and cfg.train.posthoc_ema
        final = tmp_path / cfg.train.output_dir / "final"
        save_tiny(final, 1, FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000),
                  {"steps": STEPS, "train_seconds": 3600.0, "hardware": "2 CPU cores (x86_64)"})

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    monkeypatch.setattr(bench, "REPO", tmp_path)    # relative paths of commands and folders
    bench.main(argv)

    train_calls = [c for c in calls if c[3] == "--config"]
    assert len(train_calls) == 1                   # ddpm-eps was not trained: the shipped model
    assert len(calls) == 1 + len(bench.SIGMA_RELS)
    saved = {p.stem: json.loads(p.read_text()) for p in (results / "runs").glob("*.json")}
    assert saved["ddpm-eps__train"]["reused_shipped_model"] == str(shipped.relative_to(tmp_path))
    assert not [k for k in saved if k.startswith("ddpm-eps__phema")]
    assert {k for k in saved if k.startswith("flow-logit-normal__phema")} == \
        {f"flow-logit-normal__phema-{s:g}" for s in bench.SIGMA_RELS}
    for recipe, samplers in (("ddpm-eps", ["dpmpp-2m", "euler-a", "unipc", "ddim", "euler", "heun"]),
                             ("flow-logit-normal", ["flow-euler", "flow-heun", "flow-dpmpp-2m",
                                                    "flow-unipc"])):
        selection = [saved[f"{recipe}__sampler-{s}"] for s in samplers]
        best = min(selection, key=lambda r: r["fid"])["sampler"]
        for nfe in bench.NFES:
            r = saved[f"{recipe}__nfe-{nfe}"]
            assert r["sampler"] == best and r["target_nfe"] == nfe
            assert r["n"] == (N_MAIN if nfe == 20 else N_OTHER)
            assert f"--num-samples {r['n']}" in r["command"] and "--reference-num-samples 40" in r["command"]
        for s in bench.GUIDANCE_SCALES:
            r = saved[f"{recipe}__guidance-{s:g}"]
            assert (r["sampler"], r["guidance_scale"], r["n"]) == (best, s, N_SELECT)
        assert all(saved[f"{recipe}__sampler-{s}"]["n"] == N_SELECT for s in samplers)

    page = (tmp_path / "recipes.md").read_text()
    sections = markdown_tables(page)
    training = {row["recipe"]: row for row in sections["Training"]}
    assert float(training["flow-logit-normal"]["wall time (h)"]) == 1.0
    assert training["ddpm-eps"]["wall time (h)"].startswith("2.00 (the shipped")
    quality = sections["Quality vs NFE (each recipe with its best sampler at 20 NFE)"]
    assert len(quality) == 2 * len(bench.NFES)
    for row in quality:     # every row equals its JSON
        r = saved[f"{row['recipe']}__nfe-{row['NFE']}"]
        assert row["sampler"] == r["sampler"] and row["n"] == f"{r['n']:,}"
        assert float(row["FID"]) == pytest.approx(r["fid"], abs=6e-4)
        assert float(row["recall"]) == pytest.approx(r["recall"], abs=6e-4)
        assert float(row["speckle rate"]) == pytest.approx(r["speckle_rate"], abs=6e-5)
    assert len(sections["Post-hoc EMA length (20 NFE)"]) == len(bench.SIGMA_RELS)
    assert (results / "recipes.csv").read_text().count("\n") == 1 + 2 * len(bench.NFES)

    # Resume: nothing is trained or evaluated again; --report-only writes the same page.
    mtimes = {p.name: p.stat().st_mtime_ns for p in (results / "runs").glob("*.json")}
    calls.clear()
    bench.main(argv)
    assert calls == []
    assert {p.name: p.stat().st_mtime_ns for p in (results / "runs").glob("*.json")} == mtimes
    bench.main(argv + ["--report-only"])
    assert (tmp_path / "recipes.md").read_text() == page


def test_shipped_model_of_other_length_is_refused(bench, tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    save_tiny(shipped, 0, DDPMScheduler(num_train_timesteps=1000), {"steps": 2800})
    monkeypatch.setitem(bench.SHIPPED, "ddpm-eps", shipped)
    with pytest.raises(SystemExit, match="trained 2800 steps, the study trains 1400: pass --retrain-shipped"):
        bench.main(["--recipes", "ddpm-eps", "--steps", "1400", "--results", str(tmp_path / "r"),
                    "--work", str(tmp_path / "w")])
