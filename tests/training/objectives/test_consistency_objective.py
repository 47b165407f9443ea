"""Consistency distillation (training/objectives/consistency.py): the teacher step equals the
registry's DDIM / flow-Euler step, the boundary condition, a zero loss for an exact model, the
config refusals, and a tiny distillation through the one loop that exports a few-step student."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler, EDMEulerScheduler, FlowMatchEulerDiscreteScheduler

from conftest import generators
from diffusion.models.unet import build_unet
from diffusion.pipelines.diffusion import DiffusionImagePipeline
from samplers import build_sampler
from training.config import load_config
from training.objectives import OBJECTIVES, build_objective
from training.objectives.consistency import TeacherODE, consistency_distance
from training_helpers import REPO, TINY, make_fashion_root

T = 1000
#: TINY without model.* (the student is the teacher's U-Net; model.* is refused)
TINY_DISTILL = tuple(o for o in TINY if not o.startswith("model.") and "diffusion." not in o)


def tiny_teacher(folder, scheduler=None, seed: int = 0):
    """A saved tiny 28x28 class-conditional teacher (10 classes), weights drawn from ``seed``;
    default schedule: linear DDPM, epsilon. Returns the folder."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = build_unet(sample_size=28, in_channels=1, block_out_channels=(8, 16),
                          norm_num_groups=4, layers_per_block=1, attention_levels=(),
                          attention_head_dim=8, num_classes=10)
    scheduler = build_sampler("ddim", DDPMScheduler()) if scheduler is None else scheduler
    DiffusionImagePipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


def distill_cfg(teacher, *overrides):
    return load_config(None, ["train.objective=consistency", *TINY_DISTILL,
                              f"distill.teacher={teacher}", *overrides])


def test_registered_and_committed_config_defaults_to_the_shipped_teacher():
    from diffusion.paths import default_model_path
    from training.objectives.consistency import teacher_path

    assert OBJECTIVES["consistency"].__name__ == "ConsistencyObjective"
    cfg = load_config(REPO / "training/configs/fashion_mnist_distill.yaml")
    assert cfg.train.objective == "consistency" and cfg.distill.teacher is None
    assert str(teacher_path(cfg)) == default_model_path()
    assert (cfg.distill.guidance_scale, cfg.distill.num_ddim_timesteps) == (2.0, 50)


# --- the teacher step is the registry's sampler step -------------------------------------------

@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddpm_teacher_step_is_one_ddim_step(prediction_type):
    """TeacherODE.ddim_step from grid point n to n - k equals the registry's ``ddim`` sampler
    stepping between the same two timesteps, for any network output (float32 tolerance)."""
    train = DDPMScheduler(num_train_timesteps=T, prediction_type=prediction_type)
    ode = TeacherODE(train, 50)
    g = torch.Generator().manual_seed(0)
    for n, k in ((50, 1), (17, 3), (1, 1), (2, 2)):
        x_t = torch.randn(1, 1, 8, 8, generator=g)
        output = torch.randn(1, 1, 8, 8, generator=g)
        ddim = build_sampler("ddim", train)
        ddim.set_timesteps(2)
        ddim.timesteps = torch.tensor([int(ode.timesteps[n]), int(ode.timesteps[n - k])])
        expected = ddim.step(output, int(ode.timesteps[n]), x_t).prev_sample
        nn, mm = torch.tensor([n]), torch.tensor([n - k])
        ours = ode.ddim_step(x_t, ode.x0_from_output(output, x_t, nn), nn, mm)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_teacher_step_is_one_flow_euler_step(shift):
    train = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift)
    ode = TeacherODE(train, 50)
    g = torch.Generator().manual_seed(0)
    for n, k in ((50, 1), (17, 3), (1, 1)):
        x_t = torch.randn(1, 1, 8, 8, generator=g)
        v = torch.randn(1, 1, 8, 8, generator=g)
        euler = build_sampler("flow-euler", train)
        euler.set_timesteps(1)
        euler.sigmas = torch.tensor([float(ode.sigmas[n]), float(ode.sigmas[n - k])])
        euler.timesteps = euler.sigmas[:1] * T
        expected = euler.step(v, euler.timesteps[0], x_t).prev_sample
        nn, mm = torch.tensor([n]), torch.tensor([n - k])
        ours = ode.ddim_step(x_t, ode.x0_from_output(v, x_t, nn), nn, mm)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
        assert float(ode.timesteps[n]) == pytest.approx(float(ode.sigmas[n]) * T)


def test_edm_teacher_step_is_one_edm_euler_step():
    """EDM: x0_hat = D(x; sigma) from the network's F at (c_in x, c_noise) and one Euler step
    ``x + (sigma' - sigma)(x - D) / sigma`` (Karras et al. 2022, Alg. 1) = the registry's edm-euler."""
    train = EDMEulerScheduler(sigma_max=80.0)
    ode = TeacherODE(train, 50)
    g = torch.Generator().manual_seed(0)
    for n, k in ((50, 1), (17, 3), (1, 1)):
        sigma = float(ode.sigmas[n])
        x_t = torch.randn(1, 1, 8, 8, generator=g) * sigma
        F = torch.randn(1, 1, 8, 8, generator=g)
        euler = build_sampler("edm-euler", train)
        euler.set_timesteps(1)
        euler.sigmas = torch.tensor([sigma, float(ode.sigmas[n - k])])
        euler.timesteps = train.precondition_noise(euler.sigmas[:1])
        expected = euler.step(F, euler.timesteps[0], x_t).prev_sample
        nn, mm = torch.tensor([n]), torch.tensor([n - k])
        ours = ode.ddim_step(x_t, ode.x0_from_output(F, x_t, nn), nn, mm)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5 * max(1.0, sigma))
        assert float(ode.timesteps[n]) == pytest.approx(0.25 * torch.log(ode.sigmas[n]).item(), abs=1e-6)
        torch.testing.assert_close(ode.c_in[n], 1 / (ode.sigmas[n] ** 2 + 0.25).sqrt())


# --- boundary condition and the loss ------------------------------------------------------------

class ExactNetwork(torch.nn.Module):
    """The exact network of the one data point ``x0`` for ``ode``'s parameterisation: epsilon
    (DDPM) or velocity (flow) such that ``x0_hat(x, t) = x0`` wherever it is called."""

    def __init__(self, ode, x0):
        super().__init__()
        self.ode, self.x0 = ode, x0
        self.weight = torch.nn.Parameter(torch.zeros(()))   # a parameter, so the loop can step

    def forward(self, x, t, class_labels=None):
        n = torch.stack([(self.ode.timesteps.double() - float(ti)).abs().argmin() for ti in t])
        alpha = self.ode._at(self.ode.alphas, n, x)
        sigma = self.ode._at(self.ode.sigmas, n, x).clamp(min=1e-12)
        if self.ode.parameterisation == "edm":   # input c_in x; F with c_skip x + c_out F = x0
            x = x / self.ode._at(self.ode.c_in, n, x)
            c_skip, c_out = 0.25 / (sigma ** 2 + 0.25), sigma * 0.5 / (sigma ** 2 + 0.25).sqrt()
            return SimpleNamespace(sample=(self.x0 - c_skip * x) / c_out + 0 * self.weight)
        eps = (x - alpha * self.x0) / sigma
        out = eps if self.ode.parameterisation == "ddpm" else eps - self.x0
        return SimpleNamespace(sample=out + 0 * self.weight)


SCHEDULES = {"ddpm": DDPMScheduler, "flow": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
             "edm": EDMEulerScheduler}


@pytest.mark.parametrize("kind", ["ddpm", "flow", "edm"])
def test_boundary_scalings_make_f_the_identity_at_t0(kind):
    ode = TeacherODE(SCHEDULES[kind](), 50)
    if kind == "flow":   # x0_hat = x - sigma v is x at sigma_0 = 0: no scalings needed
        assert float(ode.sigmas[0]) == 0.0 and (ode.c_skip == 0).all() and (ode.c_out == 1).all()
    else:
        assert (float(ode.c_skip[0]), float(ode.c_out[0])) == (1.0, 0.0)
    # LCM's scalings leave f = x0_hat elsewhere (EDM: from the grid's 6th point, sigma 0.017, up)
    first = 1 if kind == "ddpm" else 5
    assert float(ode.c_skip[first:].max()) < 1e-4 and float((1 - ode.c_out[first:]).abs().max()) < 1e-4
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def random_net(x, t, **_):   # any finite network
        return SimpleNamespace(sample=torch.sin(3 * x) + 0.01 * t.float().view(-1, 1, 1, 1))

    f0 = ode.consistency(random_net, x, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(f0, x, rtol=0, atol=0)


@pytest.mark.parametrize("loss", ["pseudo-huber", "l2"])
def test_distance_is_zero_only_for_equal_tensors_and_huber_matches_ict(loss):
    a = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert consistency_distance(a, a, loss).abs().max() == 0
    d = consistency_distance(a, a + 0.1, loss)
    expected = 0.01 if loss == "l2" else (784 * 0.01 + (0.00054 * 28) ** 2) ** 0.5 - 0.00054 * 28
    torch.testing.assert_close(d, torch.full((4,), expected), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="distill.loss"):
        consistency_distance(a, a, "l1")


@pytest.mark.parametrize("kind", ["ddpm", "flow", "edm"])
def test_loss_is_zero_when_student_and_teacher_are_exact(tmp_path, kind):
    """Data = one point; teacher and student are its exact network: the guided teacher step lands
    on the exact path, f(x_t, t_n) = f(x_hat, t_{n-1}) = x0 (or x_hat itself at t_0), so the loss
    is 0 to float32 precision, at every n, with guidance 2 (cond = null for the exact network)."""
    scheduler = {"ddpm": None, "flow": FlowMatchEulerDiscreteScheduler(shift=1.0),
                 "edm": EDMEulerScheduler()}[kind]
    teacher = tiny_teacher(tmp_path / "teacher", scheduler)
    objective = build_objective(distill_cfg(teacher, "distill.loss=l2"), num_classes=10)
    x0 = (2 * torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(1)) - 1).expand(64, -1, -1, -1)
    exact = ExactNetwork(objective.ode, x0[:1])
    objective.teacher = exact
    loss, logs = objective.loss("model", {"model": exact}, (x0, torch.arange(64) % 10),
                                torch.Generator().manual_seed(0))
    assert logs["loss"] < (1e-9 if kind != "edm" else 1e-7)   # EDM: x up to 80 in float32
    class Off(ExactNetwork):   # a student whose x0_hat is off: the same batch gives a loss > 0
        def forward(self, x, t, class_labels=None):
            out = super().forward(x, t).sample
            return SimpleNamespace(sample=out + 0.1 if kind != "ddpm" else out - 0.1)

    loss_off, _ = objective.loss("model", {"model": Off(objective.ode, x0[:1])}, (x0, torch.arange(64) % 10),
                                 torch.Generator().manual_seed(0))
    assert loss_off.item() > 1e-6
    if kind == "flow":   # x0_hat off by -0.1 sigma: pred - target = -0.1 (sigma_n - sigma_{n-1})
        assert loss_off.item() == pytest.approx((0.1 / 50) ** 2, rel=1e-3)


# --- config refusals -----------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("distill.teacher=/nonexistent/folder", "is not a saved diffusion pipeline"),
    ("distill.guidance_scale=0.5", r"distill.guidance_scale must be a finite number >= 1"),
    ("distill.num_ddim_timesteps=1", r"distill.num_ddim_timesteps must be an int in \[2, 1000\]"),
    ("distill.skip_steps=50", r"distill.skip_steps must be an int in \[1, 49\]"),
    ("distill.sample_steps=51", r"distill.sample_steps must be an int in \[1, 50\]"),
    ("distill.huber_c=0", "distill.huber_c must be > 0"),
    ("distill.loss=l1", "distill.loss must be one of"),
    ("model.dropout=0.1", "does not read model.dropout"),
    ("diffusion.prediction_type=v_prediction", "does not read diffusion.prediction_type"),
    ("data.image_size=32", "the teacher makes 28 px images"),
])
def test_config_refusals(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, ["train.objective=consistency", override])


def test_text_and_unconditional_guided_teachers_are_refused(tmp_path):
    from diffusion.paths import WEIGHTS_DIR

    with pytest.raises(ValueError, match="is a text-conditional model"):
        load_config(None, ["train.objective=consistency",
                           f"distill.teacher={WEIGHTS_DIR / 'fashion-mnist-text'}"])
    plain = tmp_path / "plain"
    unet = build_unet(sample_size=28, in_channels=1, block_out_channels=(8, 16), norm_num_groups=4,
                      layers_per_block=1, attention_levels=(), attention_head_dim=8, num_classes=None)
    DiffusionImagePipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(plain)
    with pytest.raises(ValueError, match="the teacher is unconditional"):
        distill_cfg(plain)
    distill_cfg(plain, "distill.guidance_scale=1")      # accepted


# --- a tiny distillation through the one loop ----------------------------------------------------

@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize("kind", ["ddpm", "flow", "edm"])
def test_tiny_distillation_lowers_the_loss_and_exports_a_few_step_student(tmp_path, kind):
    """30 steps on synthetic squares, teacher a tiny random U-Net: the loss on a fixed batch (fixed
    n and noise) falls; the export is
    the teacher's pipeline class with the consistency sampler as its scheduler (grid 50), lists it,
    and generates finite images in 1, 2, 4 steps, one forward per step, seeds reproducible."""
    from samplers import sampler_name, samplers_for
    from training.loop import Trainer

    scheduler = {"ddpm": None, "flow": FlowMatchEulerDiscreteScheduler(shift=1.0),
                 "edm": EDMEulerScheduler()}[kind]
    teacher = tiny_teacher(tmp_path / "teacher", scheduler)
    root = make_fashion_root(tmp_path / "data", n_train=128, n_test=16)
    cfg = distill_cfg(teacher, f"data.root={root}", f"train.output_dir={tmp_path / 'run'}",
                      "train.max_steps=30", "train.lr_warmup_steps=1", "train.learning_rate=1e-3",
                      "distill.num_ddim_timesteps=10",
                      # EDM with this random teacher: pseudo-Huber stays flat in 30 steps (1.364 ->
                      # 1.372 at lr 1e-3, 1.274 at 3e-4); the L2 loss falls (0.0059 -> 0.0042)
                      f"distill.loss={'l2' if kind == 'edm' else 'pseudo-huber'}")
    trainer = Trainer(cfg)
    batch = (trainer.dataset.images[:64], trainer.dataset.labels[:64])   # fixed n, eps below

    def fixed_loss():
        with torch.no_grad():
            return trainer.objective.loss("model", trainer.modules, batch,
                                          torch.Generator().manual_seed(0))[0].item()

    before = fixed_loss()
    losses, step = [], trainer.train_step
    trainer.train_step = lambda data: (lambda logs: losses.append(logs["loss"]) or logs)(step(data))
    final = trainer.run()
    after = fixed_loss()
    print(f"{kind}: distillation loss on a fixed batch {before:.4f} -> {after:.4f}; "
          f"training {sum(losses[:5]) / 5:.4f} -> {sum(losses[-5:]) / 5:.4f}")
    # seen: ddpm (epsilon) 125.4 -> 85.9, flow 0.90 -> 0.72, edm (l2) 0.0059 -> 0.0042
    assert len(losses) == 30 and after < 0.85 * before, (before, after)

    pipe = DiffusionImagePipeline.from_pretrained(final)
    pipe.set_progress_bar_config(disable=True)
    name = {"ddpm": "lcm", "flow": "flow-lcm", "edm": "edm-lcm"}[kind]
    assert sampler_name(pipe) == name and pipe.scheduler.config.original_inference_steps == 10
    assert name in samplers_for(pipe.scheduler)
    assert json.loads((final / "model_index.json").read_text())["_class_name"] == "DiffusionImagePipeline"
    for steps in (1, 2, 4):
        out = pipe(class_labels=[0, 7], num_inference_steps=steps, guidance_scale=1.0,
                   generator=generators(2), output_type="pt")
        assert out.nfe == steps and torch.isfinite(out.images).all()
        again = pipe(class_labels=[7], num_inference_steps=steps, guidance_scale=1.0,
                     generator=generators(1, offset=1), output_type="pt")
        torch.testing.assert_close(again.images[0], out.images[1], rtol=0, atol=1e-4)  # conv: batch 1 vs 2


@pytest.mark.slow
def test_resume_in_a_new_process_equals_a_straight_run(tmp_path):
    """4 steps straight (bf16, k=2 accumulation) vs. the step-2 checkpoint resumed by a new
    ``python -m training`` process: the same final student (EMA export) and optimizer step. The
    frozen teacher is not in the checkpoint; it is reloaded from distill.teacher."""
    from safetensors.torch import load_file

    from training_helpers import run_python

    teacher = tiny_teacher(tmp_path / "teacher")
    root = make_fashion_root(tmp_path / "data", n_train=64, n_test=16)
    common = ["train.objective=consistency", *TINY_DISTILL, f"distill.teacher={teacher}",
              f"data.root={root}", "data.subset=64", "train.max_steps=4",
              "train.gradient_accumulation_steps=2", "train.checkpoint_every=2",
              "train.lr_warmup_steps=1", "train.learning_rate=1e-3", "train.use_ema=true",
              "train.mixed_precision=bf16", "distill.num_ddim_timesteps=10"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_python(["-m", "training", *common, f"train.output_dir={straight}"])
    half = straight / "checkpoints" / "checkpoint-0000002"
    (resumed / "checkpoints").mkdir(parents=True)
    import shutil

    shutil.copytree(half, resumed / "checkpoints" / half.name)
    proc = run_python(["-m", "training", *common, f"train.output_dir={resumed}"])
    assert "resumed from" in proc.stderr and "at step 2" in proc.stderr
    ua = load_file(straight / "final" / "unet" / "diffusion_pytorch_model.safetensors")
    ub = load_file(resumed / "final" / "unet" / "diffusion_pytorch_model.safetensors")
    assert ua.keys() == ub.keys()
    for k in ua:
        torch.testing.assert_close(ua[k], ub[k], rtol=0, atol=1e-6)
    raw_a = load_file(straight / "checkpoints" / "checkpoint-0000004" / "model.safetensors")
    raw_b = load_file(resumed / "checkpoints" / "checkpoint-0000004" / "model.safetensors")
    for k in raw_a:
        torch.testing.assert_close(raw_a[k], raw_b[k], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_two_process_distillation_runs_and_exports(tmp_path):
    """Two gloo processes (accelerate launch --multi_gpu on CPU): 2 steps with accumulation,
    one summary of 2 processes, an lcm student that samples."""
    from training_helpers import free_port, run_python

    teacher = tiny_teacher(tmp_path / "teacher")
    root = make_fashion_root(tmp_path / "data", n_train=64, n_test=16)
    out = tmp_path / "ddp"
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "training"]
    run_python([*launch, "train.objective=consistency", *TINY_DISTILL, f"distill.teacher={teacher}",
                f"data.root={root}", "train.max_steps=2", "train.gradient_accumulation_steps=2",
                "distill.num_ddim_timesteps=10", f"train.output_dir={out}"], timeout=400)
    summary = json.loads((out / "final" / "training_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["steps"] == 2
    pipe = DiffusionImagePipeline.from_pretrained(out / "final")
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=[3], num_inference_steps=2, guidance_scale=1.0,
                  generator=generators(1), output_type="pt").images
    assert torch.isfinite(images).all()
