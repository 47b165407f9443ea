"""Post-hoc EMA (training/posthoc_ema.py; Karras et al. 2024, App. C): the power-function EMA
against closed forms, the reconstruction against directly tracked EMAs, the snapshots' atomic
writes and disk bound, and a resumed run writing the same snapshots as an uninterrupted one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training import posthoc_ema as phema
from training.config import load_config
from training.loop import Trainer
from training.posthoc_ema import (PosthocEMA, PowerFunctionEMA, gamma_to_sigma_rel, list_snapshots,
                                  profile_inner_product, read_metadata, reconstruct,
                                  sigma_rel_to_gamma, snapshot_step, snapshots_to_keep,
                                  solve_coefficients, write_snapshot)
from test_resume_settings import dataset  # noqa: F401  (the tiny in-memory dataset fixture)
from test_resume_settings import make as make_tiny


class Holder(torch.nn.Module):
    """One parameter ``p`` whose value a test sets step by step."""

    def __init__(self, size: int = 3, dtype=torch.float64):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(size, dtype=dtype))


def trajectory(steps: int, seed: int = 0) -> torch.Tensor:
    """``(steps, 3)`` float64 weights theta_1..theta_T: slow drifts plus noise, values ~ 1."""
    t = torch.arange(1, steps + 1, dtype=torch.float64)[:, None]
    g = torch.Generator().manual_seed(seed)
    drift = torch.cat([torch.sin(t / 50) + t / steps, torch.cos(t / 130), (t / steps) ** 2], 1)
    return drift + 0.3 * torch.randn(steps, 3, generator=g, dtype=torch.float64)


# -- the profile -------------------------------------------------------------------------------

def test_sigma_rel_and_gamma_are_the_papers_pairs_and_invert_each_other():
    # Karras et al. 2024, Sec. 3.1: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=5e-3)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=5e-3)
    assert gamma_to_sigma_rel(0.0) == pytest.approx(math.sqrt(1 / 12), abs=1e-15)
    for sigma_rel in (0.01, 0.05, 0.07, 0.15, 0.25, 0.28):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(sigma_rel)) == pytest.approx(sigma_rel, rel=1e-12)
    for bad in (0, -0.1, 0.29, "0.1", True):
        with pytest.raises(ValueError, match="relative EMA length"):
            sigma_rel_to_gamma(bad)


@pytest.mark.parametrize("gamma, closed_form", [
    (0.0, lambda t: (t + 1) / 2),                          # the running mean of 1..t
    (1.0, lambda t: (t + 1) * (4 * t - 1) / (6 * t)),      # sum (2 tau - 1) tau / t^2
])
def test_ema_of_the_linear_sequence_theta_t_equals_t_is_the_closed_form(gamma, closed_form):
    """beta_t = (1 - 1/t)^(gamma + 1) on theta_t = t: integer gamma has a polynomial closed form."""
    m = Holder(1)
    ema = PowerFunctionEMA(m.named_parameters(), [0.05, 0.1])
    ema.gammas = [gamma, gamma]  # the exponent itself; sigma_rel of gamma 0 is the range's edge
    for t in range(1, 201):
        m.p.data.fill_(t)
        ema.step(m.named_parameters())
        assert ema.t == t
        assert ema.shadows[0]["p"].item() == pytest.approx(closed_form(t), rel=1e-12), t
    # and the continuous profile's mean, (gamma + 1) / (gamma + 2) * t, is its limit
    assert ema.shadows[0]["p"].item() / 200 == pytest.approx((gamma + 1) / (gamma + 2), rel=1e-2)


def test_ema_of_any_sequence_is_the_unrolled_power_function_sum():
    """theta_hat_t = sum_tau (tau^(g+1) - (tau-1)^(g+1)) theta_tau / t^(g+1), for the real
    (non-integer) gammas of sigma_rel 0.05 and 0.10."""
    theta = trajectory(300)
    m = Holder()
    ema = PowerFunctionEMA(m.named_parameters(), [0.05, 0.10])
    for t in range(1, 301):
        m.p.data.copy_(theta[t - 1])
        ema.step(m.named_parameters())
    tau = torch.arange(1, 301, dtype=torch.float64)
    for k, gamma in enumerate(ema.gammas):
        w = (tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / 300 ** (gamma + 1)
        torch.testing.assert_close(ema.shadows[k]["p"], (w[:, None] * theta).sum(0), rtol=1e-10, atol=1e-12)


def test_profile_inner_product_is_the_integral():
    """<p_a, p_b> (eq. 151) against a midpoint-rule integral of the two densities."""
    tau = (np.arange(2_000_000) + 0.5) * (100 / 2_000_000)
    dtau = 100 / 2_000_000

    def p(t, g):
        return np.where(tau <= t, (g + 1) * tau ** g / t ** (g + 1), 0.0)

    for (t_a, g_a), (t_b, g_b) in [((40, 6.94), (100, 16.97)), ((100, 3.0), (70, 0.5)), ((50, 2.0), (50, 2.0))]:
        numeric = (p(t_a, g_a) * p(t_b, g_b)).sum() * dtau
        assert profile_inner_product(t_a, g_a, t_b, g_b) == pytest.approx(numeric, rel=1e-4)
        assert profile_inner_product(t_a, g_a, t_b, g_b) == profile_inner_product(t_b, g_b, t_a, g_a)


def test_coefficients_match_ema_pytorch_solve_weights():
    """ema-pytorch's PostHocEMA solves the same Alg. 3 (unnormalised); a reference check."""
    post_hoc = pytest.importorskip("ema_pytorch.post_hoc_ema")
    t_i = np.array([100, 200, 300, 400] * 2, np.float64)
    gamma_i = np.array([sigma_rel_to_gamma(0.05)] * 4 + [sigma_rel_to_gamma(0.10)] * 4)
    gamma_r = sigma_rel_to_gamma(0.07)
    assert post_hoc.sigma_rel_to_gamma(0.07) == pytest.approx(gamma_r, rel=1e-12)
    ref = post_hoc.solve_weights(torch.tensor(t_i), torch.tensor(gamma_i), torch.tensor([400.0]),
                                 torch.tensor([gamma_r])).squeeze(-1).numpy()
    ours = solve_coefficients(t_i, gamma_i, 400, gamma_r)
    np.testing.assert_allclose(ours, ref / ref.sum(), atol=1e-6)
    assert ours.sum() == pytest.approx(1.0, abs=1e-12)


# -- reconstruction from snapshots ------------------------------------------------------------

def track(run_dir, theta: torch.Tensor, every: int, max_snapshots: int = 0, direct=(0.07,)):
    """Train-free tracking: set ``p`` to each row of ``theta``, step the tracked EMAs (0.05,
    0.10) and, for comparison, directly tracked EMAs of ``direct``; snapshot every ``every``."""
    m = Holder(theta.shape[1], theta.dtype)
    tracker = PosthocEMA({"model": m}, [0.05, 0.10])
    reference = PowerFunctionEMA(m.named_parameters(), direct)
    for t in range(1, len(theta) + 1):
        m.p.data.copy_(theta[t - 1])
        tracker.emas["model"].step(m.named_parameters())
        reference.step(m.named_parameters())
        if t % every == 0:
            write_snapshot(run_dir, t, tracker, every=every, max_snapshots=max_snapshots)
    return tracker, reference


def test_reconstructing_a_tracked_length_returns_that_ema(tmp_path):
    theta = trajectory(400).float()  # the snapshots hold float32 like a real run's
    tracker, _ = track(tmp_path, theta, every=20)
    for k, sigma_rel in enumerate((0.05, 0.10)):
        rebuilt = reconstruct(tmp_path, sigma_rel)["model"]["p"]
        assert rebuilt.dtype == torch.float32
        torch.testing.assert_close(rebuilt, tracker.emas["model"].shadows[k]["p"], rtol=0, atol=1e-5)
    # an earlier step uses only the snapshots up to it
    rebuilt = reconstruct(tmp_path, 0.10, step=200)["model"]["p"]
    m = Holder(3, torch.float32)
    ema = PowerFunctionEMA(m.named_parameters(), [0.10])
    for t in range(200):
        m.p.data.copy_(theta[t])
        ema.step(m.named_parameters())
    torch.testing.assert_close(rebuilt, ema.shadows[0]["p"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("sigma_rel, atol", [(0.07, 1e-4), (0.15, 1e-4), (0.20, 5e-4)])
def test_reconstructing_another_length_matches_the_directly_tracked_ema(tmp_path, sigma_rel, atol):
    """EDM2's claim: from two tracked lengths, any other is rebuilt accurately (here within 5e-4
    on weights of size ~1 with noise 0.3; 40 snapshots of 1000 steps, in float64)."""
    theta = trajectory(1000)
    _, reference = track(tmp_path, theta, every=25, direct=(sigma_rel,))
    rebuilt = reconstruct(tmp_path, sigma_rel)["model"]["p"]
    torch.testing.assert_close(rebuilt, reference.shadows[0]["p"], rtol=0, atol=atol)
    # and it is not just the nearer tracked one
    nearest = reconstruct(tmp_path, 0.10)["model"]["p"]
    assert (nearest - reference.shadows[0]["p"]).abs().max() > 20 * atol


def test_reconstruction_errors_name_what_is_there(tmp_path):
    with pytest.raises(ValueError, match="no post-hoc EMA snapshots"):
        reconstruct(tmp_path, 0.07)
    track(tmp_path, trajectory(40), every=20)
    with pytest.raises(ValueError, match=r"no snapshot at step 30; snapshots exist at steps \[20, 40\]"):
        reconstruct(tmp_path, 0.07, step=30)
    with pytest.raises(ValueError, match="relative EMA length"):
        reconstruct(tmp_path, 0.5)


# -- snapshots on disk ------------------------------------------------------------------------

def test_a_failed_snapshot_write_leaves_no_partial_file(tmp_path, monkeypatch):
    m = Holder()
    tracker = PosthocEMA({"model": m}, [0.05, 0.10])
    tracker.emas["model"].step(m.named_parameters())
    good = write_snapshot(tmp_path, 1, tracker)
    good_bytes = good.read_bytes()
    real_save = phema.save_file

    def half_then_fail(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:  # a half-written file, then the disk fills up
            f.truncate(len(good_bytes) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(phema, "save_file", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        write_snapshot(tmp_path, 2, tracker)
    assert [p.name for p in (tmp_path / "posthoc-ema").iterdir()] == [good.name]  # no .tmp- left
    assert list_snapshots(tmp_path) == [good] and good.read_bytes() == good_bytes
    assert read_metadata(good)["step"] == 1


def test_the_disk_bound_keeps_a_spread_of_snapshots_and_always_the_newest():
    every, limit, written = 10, 6, []
    for step in range(10, 1001, 10):
        written = snapshots_to_keep(written + [step], every, limit)
        assert len(written) <= limit and written[-1] == step
        assert len(written) >= min(limit // 2, step // every)  # thinned, not emptied
    assert written == [320, 640, 960, 1000]  # spacing 320: the whole run still covered
    assert snapshots_to_keep([5, 10, 15], 5, 0) == [5, 10, 15]  # 0: no bound


def test_a_bounded_snapshot_folder_keeps_the_tracked_lengths_reconstructable(tmp_path):
    tracker, _ = track(tmp_path, trajectory(200).float(), every=10, max_snapshots=4)
    assert [snapshot_step(p) for p in list_snapshots(tmp_path)] == [80, 160, 200]
    torch.testing.assert_close(reconstruct(tmp_path, 0.05)["model"]["p"],
                               tracker.emas["model"].shadows[0]["p"], rtol=0, atol=1e-5)


# -- in the loop ------------------------------------------------------------------------------

def make(out, dataset, *overrides) -> Trainer:
    """test_resume_settings' tiny Trainer with post-hoc EMA on, a constant LR (so runs of
    different lengths take the same steps) and a snapshot every 2 steps."""
    return make_tiny(out, dataset, "train.lr_scheduler=constant", "train.lr_warmup_steps=0",
                     "train.posthoc_ema=true", "train.posthoc_ema_snapshot_every=2", *overrides)


def snapshot_files(out) -> dict:
    """``{file name: (metadata, {key: tensor})}`` (safetensors orders its JSON header freely, so
    the bytes of equal snapshots may differ)."""
    from safetensors.torch import load_file

    return {p.name: (read_metadata(p), load_file(p)) for p in list_snapshots(out)}


def assert_same_snapshots(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name][0] == b[name][0], name
        assert list(a[name][1]) == list(b[name][1])
        for key, tensor in a[name][1].items():
            assert torch.equal(tensor, b[name][1][key]), (name, key)  # bit-identical


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_the_loop_snapshots_match_its_tracked_emas_and_the_end_is_a_snapshot(tmp_path, dataset):
    trainer = make(tmp_path, dataset, "train.max_steps=5")
    trainer.run()
    assert list(snapshot_files(tmp_path)) == [f"snapshot-000000{s}.safetensors" for s in (2, 4, 5)]
    meta = read_metadata(list_snapshots(tmp_path)[-1])
    assert meta["t"] == {"model": 5} and meta["sigma_rels"] == [0.05, 0.10]
    assert meta["class_names"] == ["a", "b", "c", "d"] and meta["num_classes"] == 4
    ema = trainer.posthoc.emas["model"]
    rebuilt = reconstruct(tmp_path, 0.10)["model"]
    assert set(rebuilt) == set(ema.shadows[1])
    for name, value in ema.shadows[1].items():
        torch.testing.assert_close(rebuilt[name], value, rtol=0, atol=1e-5)
    live = dict(trainer.accelerator.unwrap_model(trainer.modules["model"]).named_parameters())
    assert any(not torch.equal(live[n], v) for n, v in ema.shadows[0].items())  # an average, not a copy


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_resumed_run_writes_the_same_snapshots_as_an_uninterrupted_one(tmp_path, dataset):
    """Straight: steps 1-6. Interrupted: steps 1-5 (checkpoint at 3 and 5, snapshots 2, 4, 5),
    the step-5 checkpoint lost (a crash), then resumed from step 3 to 6: the later snapshots are
    rewritten and every file's tensors equal the straight run's bit for bit."""
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    make(straight, dataset, "train.max_steps=6", "train.checkpoint_every=3").run()
    make(interrupted, dataset, "train.max_steps=5", "train.checkpoint_every=3").run()
    assert list(snapshot_files(interrupted)) == [f"snapshot-000000{s}.safetensors" for s in (2, 4, 5)]
    import shutil

    shutil.rmtree(interrupted / "checkpoints" / "checkpoint-0000005")
    resumed = make(interrupted, dataset, "train.max_steps=6", "train.checkpoint_every=3")
    resumed.run()
    assert resumed.posthoc.emas["model"].t == 6
    assert_same_snapshots(snapshot_files(interrupted), snapshot_files(straight))
    assert list(snapshot_files(straight)) == [f"snapshot-000000{s}.safetensors" for s in (2, 4, 6)]


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_the_loop_respects_the_disk_bound(tmp_path, dataset):
    make(tmp_path, dataset, "train.max_steps=8", "train.posthoc_ema_snapshot_every=1",
         "train.posthoc_ema_max_snapshots=3").run()
    assert [snapshot_step(p) for p in list_snapshots(tmp_path)] == [4, 8]


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_turning_posthoc_ema_on_at_resume_is_refused(tmp_path, dataset):
    make_tiny(tmp_path, dataset, "train.max_steps=2").run()
    with pytest.raises(ValueError, match=r"train.posthoc_ema True \(checkpoint: False\)"):
        make(tmp_path, dataset, "train.max_steps=4").run()


@pytest.mark.parametrize("overrides, message", [
    (["train.posthoc_ema_sigma_rels=[0.05]"], "at least two different lengths"),
    (["train.posthoc_ema_sigma_rels=[0.05,0.3]"], "relative EMA length in"),
    (["train.posthoc_ema_snapshot_every=0"], "posthoc_ema_snapshot_every must be an int >= 1"),
    (["train.posthoc_ema_max_snapshots=1"], "keeps only the newest snapshot"),
    (["train.objective=classifier"], "keeps no EMA of its weights"),
])
def test_bad_posthoc_settings_are_refused_by_load_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, ["train.posthoc_ema=true", *overrides])


# -- the export command -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, dataset):
    """A tiny diffusion run of 6 steps with post-hoc EMA, snapshots every 2 steps, exported."""
    from accelerate.state import AcceleratorState, GradientState

    out = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:  # as the fresh_accelerate_state fixture, once
        mp.setenv("ACCELERATE_USE_CPU", "true")
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        make(out, dataset, "train.max_steps=6", "train.export=true").run()
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    return out


def exported_unet(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def test_the_command_exports_the_reconstructed_ema(finished_run, tmp_path, capsys):
    import json

    from diffusion.pipelines.loading import load_pipeline
    from training.__main__ import main

    out = tmp_path / "final-0.07"
    assert main(["posthoc-ema", "--run", str(finished_run), "--sigma-rel", "0.07", "--out", str(out)]) == 0
    assert f"exported sigma_rel 0.07 to {out}" in capsys.readouterr().out
    weights, expected = exported_unet(out), reconstruct(finished_run, 0.07)["model"]
    assert set(expected) <= set(weights)
    for name, value in expected.items():
        assert torch.equal(weights[name], value), name
    tracked = reconstruct(finished_run, 0.05)["model"]
    assert any(not torch.equal(tracked[n], v) for n, v in expected.items())  # not a tracked one
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 6  # the loop's own summary, kept
    record = summary["posthoc_ema"]
    assert record["sigma_rel"] == 0.07 and record["step"] == 6 and record["sweep"] is None
    assert record["snapshots"] == [f"snapshot-000000{s}.safetensors" for s in (2, 4, 6)]
    weights_sum = sum(c["weight"] for c in record["coefficients"]["model"])
    assert len(record["coefficients"]["model"]) == 6 and weights_sum == pytest.approx(1, abs=1e-9)
    assert (out / "training_config.yaml").is_file() and not (tmp_path / ".tmp-final-0.07").exists()
    pipe = load_pipeline(out)
    assert pipe.class_names == ["a", "b", "c", "d"]


def test_the_sweep_scores_every_length_and_exports_the_best(finished_run, tmp_path, monkeypatch):
    """evaluate() replaced by a recorder: it must see each length's reconstructed weights; the
    export gets the one with the lowest FID, and the summary records the sweep."""
    import json

    import diffusion.evaluation as evaluation
    from training.posthoc_export import export_posthoc, sweep_sigma_rels

    fids, seen = iter([3.0, 1.0, 2.0]), []

    def fake_evaluate(pipe, **kwargs):
        seen.append(({n: p.detach().clone() for n, p in pipe.unet.named_parameters()}, kwargs))
        return {"fid": next(fids)}

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    sweep = sweep_sigma_rels(finished_run, [0.05, 0.07, 0.09], metric="fid", num_samples=8,
                             cache_dir=None)
    assert sweep["best"] == 0.07 and [r["fid"] for r in sweep["rows"]] == [3.0, 1.0, 2.0]
    for (params, kwargs), s in zip(seen, (0.05, 0.07, 0.09)):
        expected = reconstruct(finished_run, s)["model"]
        assert all(torch.equal(params[n], v) for n, v in expected.items()), s
        assert kwargs["num_samples"] == 8 and kwargs["metrics"] == ["fid"]
    out = export_posthoc(finished_run, tmp_path / "best", sweep=sweep)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["posthoc_ema"]["sigma_rel"] == 0.07 and summary["posthoc_ema"]["sweep"]["rows"][1] == {
        "sigma_rel": 0.07, "fid": 1.0}
    expected = reconstruct(finished_run, 0.07)["model"]
    assert all(torch.equal(exported_unet(out)[n], v) for n, v in expected.items())
    # accuracy is better when larger
    accs = iter([0.5, 0.9, 0.7])
    monkeypatch.setattr(evaluation, "evaluate", lambda pipe, **kw: {"accuracy": next(accs)})
    assert sweep_sigma_rels(finished_run, [0.05, 0.07, 0.09], metric="accuracy", num_samples=8,
                            cache_dir=None)["best"] == 0.07


def test_the_command_refuses_a_run_without_snapshots(tmp_path, capsys):
    from training.__main__ import main

    (tmp_path / "training_config.yaml").write_text("train:\n  max_steps: 2\n")
    assert main(["posthoc-ema", "--run", str(tmp_path), "--sigma-rel", "0.07"]) == 2
    assert "no post-hoc EMA snapshots" in capsys.readouterr().err


# -- other families and several processes -----------------------------------------------------

@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_gan_tracks_its_generator_and_counts_its_own_steps(tmp_path, dataset):
    """The GAN's EMA module is the generator: its snapshots hold generator weights only, with
    ``t`` = the generator's optimizer steps."""
    from test_nonfinite import GAN_TINY

    trainer = make(tmp_path, dataset, *GAN_TINY, "train.max_steps=3")
    trainer.run()
    assert set(trainer.posthoc.emas) == {"generator"}
    meta = read_metadata(list_snapshots(tmp_path)[-1])
    assert meta["step"] == 3 and meta["t"] == {"generator": 3}
    rebuilt = reconstruct(tmp_path, 0.05)["generator"]
    generator = trainer.accelerator.unwrap_model(trainer.modules["generator"])
    assert set(rebuilt) == {n for n, _ in generator.named_parameters()}
    for name, value in trainer.posthoc.emas["generator"].shadows[0].items():
        torch.testing.assert_close(rebuilt[name], value, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_two_processes_write_one_set_of_snapshots(tmp_path):
    """Two gloo processes (accelerate launch --multi_gpu on CPU): the main process writes each
    snapshot once, complete, with the module's step count; the others wait at the barrier."""
    from training_helpers import TINY, free_port, make_fashion_root, run_python

    root = make_fashion_root(tmp_path / "fmnist", n_train=64, n_test=16)
    common = [*TINY, f"data.root={root}", "train.max_steps=4", "train.checkpoint_every=0",
              "train.lr_scheduler=constant", "train.lr_warmup_steps=0", "train.export=false",
              "train.posthoc_ema=true", "train.posthoc_ema_snapshot_every=2"]
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "training"]
    run_python([*launch, *common, "train.batch_size=8", f"train.output_dir={tmp_path / 'two'}"],
               timeout=400)
    assert sorted(p.name for p in (tmp_path / "two" / "posthoc-ema").iterdir()) == [
        "snapshot-0000002.safetensors", "snapshot-0000004.safetensors"]  # no .tmp- leftovers
    assert read_metadata(list_snapshots(tmp_path / "two")[-1])["t"] == {"model": 4}
    rebuilt = reconstruct(tmp_path / "two", 0.10)["model"]
    assert all(torch.isfinite(v).all() for v in rebuilt.values()) and len(rebuilt) > 10
