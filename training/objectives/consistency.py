"""Consistency distillation (``train.objective=consistency``): a saved teacher pipeline -> a student
that samples in 1-4 steps, one network call per step, with the teacher's classifier-free guidance
distilled in.

Method: consistency distillation (Song et al. 2023, "Consistency Models", Alg. 2) with LCM's
guided, skipping-step variant (Luo et al. 2023, "Latent Consistency Models", Alg. 1). On a grid of
``N = distill.num_ddim_timesteps`` teacher times ``t_0 < t_1 < ... < t_N`` (``t_0`` the boundary),
per image::

    n ~ U{k, ..., N},   x0 ~ data,   eps ~ N(0, I)
    x_{t_n}     = alpha_n x0 + sigma_n eps                                  (forward noising)
    x0_w        = x0_null + w (x0_cond - x0_null)        teacher, guidance w  (Ho & Salimans 2022)
    x_hat_{n-k} = alpha_{n-k} x0_w + sigma_{n-k} (x_{t_n} - alpha_n x0_w) / sigma_n   (ONE DDIM step,
                                                          Song et al. 2021, eq. 12; = Euler for flow)
    loss        = d( f_theta(x_{t_n}, t_n),  stopgrad f_theta(x_hat_{n-k}, t_{n-k}) )

with ``k = distill.skip_steps`` and ``w = distill.guidance_scale`` (2.0, the shipped model's), and the
consistency function (LCM's boundary scalings)::

    f(x, t_n) = c_skip(n) x + c_out(n) x0_hat(x, t_n),     c_skip(0) = 1, c_out(0) = 0

so ``f(x, t_0) = x`` (the boundary condition, Song et al. 2023, eq. 3). ``x0_hat`` is the
network's x0 prediction in the teacher's own parameterisation; the student *is* a copy of the
teacher's U-Net (initialised from its weights), so it loads, saves and samples with the same
classes. The method depends on the parameterisation only through :class:`TeacherODE`, which
writes each one as ``(alpha_n, sigma_n)``, an x0 prediction and boundary scalings:

* DDPM (epsilon / v / x0 networks, diffusers ``alphas_cumprod``): ``alpha = sqrt(abar_t)``,
  ``sigma = sqrt(1 - abar_t)`` on LCM's grid ``t_n = n T/N - 1`` (``t_0 = 0``); ``c_skip``,
  ``c_out`` from diffusers' ``LCMScheduler`` (``timestep_scaling = 10``), the sampler ``lcm``.
* flow matching (``x_t = (1 - sigma) x0 + sigma eps``, velocity network): ``alpha = 1 - sigma``
  on the grid ``sigma_n = shift(n / N)`` (``sigma_0 = 0``); ``x0_hat = x - sigma v`` is already
  ``x`` at ``sigma = 0``, so ``c_skip = 0, c_out = 1``; the sampler ``flow-lcm``.
* EDM (``x = x0 + sigma eps``, ``D = c_skip x + c_out F(c_in x; ln(sigma) / 4)``): ``alpha = 1``
  on the Karras grid ``sigma_min = sigma_0 < ... < sigma_N = sigma_max`` (eq. 5); ``x0_hat = D``;
  LCM's scalings on ``sigma - sigma_min`` (:func:`samplers.consistency.edm_boundary_scalings`);
  the sampler ``edm-lcm``.

Choices, with their sources:

* target network ``theta^-`` = stop-gradient of the student (EMA decay 0), as iCT (Song &
  Dhariwal 2023, Sec. 3.2: the EMA teacher is unnecessary and slower) and ECT (Geng et al.
  2024); the loop's ``train.use_ema`` EMA of the student is what is exported;
* loss ``d``: pseudo-Huber ``sqrt(||a - b||^2 + c^2) - c``, ``c = 0.00054 sqrt(C H W)`` (iCT,
  Sec. 3.3), or the mean squared error (``distill.loss=l2``, LCM); uniform weight over ``n`` (LCM);
* guidance is distilled, so the student takes one conditional forward per step and its
  consistency sampler refuses ``guidance_scale != 1``
  (:func:`diffusion.pipelines.diffusion.check_distilled_guidance`). The null class keeps its
  embedding row (the teacher's, fine-tuned only through shared weights): the student is
  conditional-only; no condition dropout.

Cost per step: one guided teacher forward (batch 2B) and two student forwards (one without
gradients) plus one backward: about 3x a diffusion training step at the same batch.

Example::

    >>> from training.config import load_config
    >>> cfg = load_config(None, ["train.objective=consistency"])   # teacher: the shipped model
    >>> cfg.distill.guidance_scale, cfg.distill.num_ddim_timesteps
    (2.0, 50)
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Optional

import torch
from diffusers import (DDPMScheduler, EDMEulerScheduler, FlowMatchEulerDiscreteScheduler,
                       LCMScheduler)

from diffusion.pipelines.diffusion import DiffusionImagePipeline
from samplers.checks import check_int, check_number
from samplers.consistency import edm_boundary_scalings, edm_grid_sigmas, flow_grid_sigmas
from samplers.diffusion import (build_sampler, edm_training_schedule, flow_training_schedule,
                                parameterisation_of, training_schedule)
from samplers.schedulers import _x0_and_epsilon
from training.objectives.base import quiet
from training.objectives.diffusion import DDPM_ONLY_SETTINGS, DiffusionObjective

#: teacher parameterisation -> the consistency sampler its student is exported with
CONSISTENCY_SAMPLERS = {"ddpm": "lcm", "flow": "flow-lcm", "edm": "edm-lcm"}


def teacher_path(cfg) -> Path:
    """``distill.teacher``, or the shipped DDPM model (:func:`diffusion.default_model_path`)."""
    from diffusion.paths import default_model_path

    return Path(cfg.distill.teacher or default_model_path())


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


class TeacherODE:
    """The teacher's parameterisation on the distillation grid: what consistency distillation
    needs of it, written the same way for DDPM, flow matching and EDM.

    Attributes (float64 ``(N + 1,)`` on CPU, index 0 = the boundary ``t_0``):
        alphas, sigmas: ``x_{t_n} = alphas[n] x0 + sigmas[n] eps``;
        c_skip, c_out: the consistency function's boundary scalings;
        timesteps: what the U-Net is given at grid point ``n`` (int64 DDPM timesteps, float
            ``sigma T`` for flow, ``c_noise = ln(sigma) / 4`` for EDM);
        c_in: EDM's input scaling ``1 / sqrt(sigma^2 + sigma_data^2)``, else ``None``.

    Args:
        scheduler: the teacher's scheduler (any sampler built on its training schedule).
        num_points: ``N``, the grid size (``distill.num_ddim_timesteps``).

    Raises:
        ValueError: ``N`` outside ``[2, num_train_timesteps]`` of the teacher's schedule.

    Example::

        >>> ode = TeacherODE(DDPMScheduler(), 50)
        >>> ode.timesteps[:3].tolist(), float(ode.c_skip[0]), float(ode.c_out[0])
        ([0, 19, 39], 1.0, 0.0)
    """

    def __init__(self, scheduler, num_points: int):
        self.parameterisation = parameterisation_of(scheduler)
        self.num_points = num_points
        self.c_in = None   # the network's input scaling (EDM's c_in; none for DDPM and flow)
        if self.parameterisation == "edm":  # x = x0 + sigma eps; F at (c_in x, ln(sigma) / 4)
            schedule = edm_training_schedule(scheduler)
            check_int("distill.num_ddim_timesteps", num_points, 2, schedule["num_train_timesteps"])
            self.prediction_type = schedule["prediction_type"]
            self.edm = EDMEulerScheduler(**schedule)                      # its precondition_*
            sigma = edm_grid_sigmas(num_points, schedule["sigma_min"], schedule["sigma_max"],
                                    schedule["rho"])                      # (N + 1,), ascending
            self.alphas, self.sigmas = torch.ones_like(sigma), sigma
            self.c_in = 1 / (sigma ** 2 + schedule["sigma_data"] ** 2).sqrt()
            self.timesteps = self.edm.precondition_noise(sigma).float()
            self.c_skip, self.c_out = edm_boundary_scalings(sigma, schedule["sigma_min"],
                                                            schedule["sigma_data"])
            return
        if self.parameterisation == "ddpm":
            schedule = training_schedule(scheduler)
            T = schedule["num_train_timesteps"]
            check_int("distill.num_ddim_timesteps", num_points, 2, T)
            self.prediction_type = schedule.get("prediction_type", "epsilon")
            abar = DDPMScheduler(**schedule).alphas_cumprod.double()
            # LCM's grid (diffusers LCMScheduler, original_inference_steps = N): n T/N - 1
            steps = torch.arange(num_points + 1) * (T // num_points) - 1
            self.timesteps = steps.clamp(min=0)                                   # (N + 1,) int64
            self.alphas, self.sigmas = abar[self.timesteps].sqrt(), (1 - abar[self.timesteps]).sqrt()
            lcm = LCMScheduler(**schedule)
            scalings = [lcm.get_scalings_for_boundary_condition_discrete(int(t)) for t in self.timesteps]
            self.c_skip = torch.tensor([s for s, _ in scalings], dtype=torch.float64)
            self.c_out = torch.tensor([o for _, o in scalings], dtype=torch.float64)
        else:  # flow: x_t = (1 - sigma) x0 + sigma eps; x0_hat = x - sigma v is x itself at sigma 0
            schedule = flow_training_schedule(scheduler)
            check_int("distill.num_ddim_timesteps", num_points, 2, schedule["num_train_timesteps"])
            self.prediction_type = "flow_prediction"
            sigma = flow_grid_sigmas(num_points, schedule["shift"])              # (N + 1,)
            self.alphas, self.sigmas = 1 - sigma, sigma
            self.timesteps = (sigma * schedule["num_train_timesteps"]).float()
            self.c_skip, self.c_out = torch.zeros_like(sigma), torch.ones_like(sigma)

    @staticmethod
    def _at(table: torch.Tensor, n: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``table[n]`` as float32 ``(B, 1, 1, 1)`` on ``like``'s device."""
        return table[n.cpu()].to(like.device, torch.float32).view(-1, *([1] * (like.dim() - 1)))

    def noise(self, x0: torch.Tensor, eps: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """``x_{t_n} = alpha_n x0 + sigma_n eps``; ``x0``, ``eps`` ``(B, C, H, W)``, ``n`` ``(B,)``."""
        return self._at(self.alphas, n, x0) * x0 + self._at(self.sigmas, n, x0) * eps

    def x0_from_output(self, output: torch.Tensor, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """The x0 prediction (float32) of a network ``output`` at ``(x, t_n)``: DDPM's epsilon /
        v / sample conversion (Ho et al. 2020, eq. 15; Salimans & Ho 2022), or flow's ``x - sigma v``."""
        output, x = output.float(), x.float()
        if self.parameterisation == "edm":  # D = c_skip x + c_out F (Karras et al. 2022, Table 1)
            return self.edm.precondition_outputs(x, output, self._at(self.sigmas, n, x))
        if self.parameterisation == "flow":
            return x - self._at(self.sigmas, n, x) * output
        abar = self._at(self.alphas, n, x) ** 2
        return _x0_and_epsilon(output, x, abar, self.prediction_type)[0]

    def x0(self, unet, x: torch.Tensor, n: torch.Tensor, **conditions) -> torch.Tensor:
        """``x0_hat(x, t_n)`` of ``unet`` (one forward), float32 ``(B, C, H, W)``."""
        t = self.timesteps[n.cpu()].to(x.device)
        model_input = x if self.c_in is None else x * self._at(self.c_in, n, x).to(x.dtype)
        return self.x0_from_output(unet(model_input, t, **conditions).sample, x, n)

    def consistency(self, unet, x: torch.Tensor, n: torch.Tensor, **conditions) -> torch.Tensor:
        """``f(x, t_n) = c_skip(n) x + c_out(n) x0_hat(x, t_n)``, float32 ``(B, C, H, W)``."""
        x0 = self.x0(unet, x, n, **conditions)
        return self._at(self.c_skip, n, x) * x.float() + self._at(self.c_out, n, x) * x0

    def ddim_step(self, x_t: torch.Tensor, x0: torch.Tensor, n: torch.Tensor,
                  m: torch.Tensor) -> torch.Tensor:
        """One deterministic DDIM step (Song et al. 2021, eq. 12, eta = 0) from ``(x_t, t_n)`` to
        ``t_m`` given the x0 prediction: ``alpha_m x0 + sigma_m (x_t - alpha_n x0) / sigma_n``.
        For flow matching this is exactly the Euler step ``x_t + (sigma_m - sigma_n) v``."""
        x_t = x_t.float()
        eps = (x_t - self._at(self.alphas, n, x_t) * x0) / self._at(self.sigmas, n, x_t)
        return self._at(self.alphas, m, x_t) * x0 + self._at(self.sigmas, m, x_t) * eps


def consistency_distance(pred: torch.Tensor, target: torch.Tensor, loss: str,
                         huber_c: Optional[float] = None) -> torch.Tensor:
    """Per-image distance ``(B,)`` float32 between ``(B, C, H, W)`` tensors: ``"l2"``, the mean
    squared error; ``"pseudo-huber"``, ``sqrt(||pred - target||^2 + c^2) - c`` over all pixels,
    ``c = huber_c`` or ``0.00054 sqrt(C H W)`` (Song & Dhariwal 2023, Sec. 3.3). Both are 0 iff
    ``pred == target``.

    Raises:
        ValueError: an unknown ``loss``.

    Example::

        >>> a = torch.zeros(2, 1, 28, 28)
        >>> [round(d, 6) for d in consistency_distance(a, a + 0.1, "l2").tolist()]
        [0.01, 0.01]
        >>> consistency_distance(a, a, "pseudo-huber").tolist()
        [0.0, 0.0]
    """
    diff = (pred.float() - target.float()).flatten(1)                       # (B, C H W)
    if loss == "l2":
        return diff.pow(2).mean(1)
    if loss == "pseudo-huber":
        c = huber_c if huber_c is not None else 0.00054 * diff.shape[1] ** 0.5
        squared = diff.pow(2).sum(1)
        # = sqrt(squared + c^2) - c, written so that it is exactly 0 at squared = 0 in float32
        return squared / ((squared + c * c).sqrt() + c)
    raise ValueError(f"distill.loss must be 'pseudo-huber' or 'l2', got {loss!r}")


class ConsistencyObjective(DiffusionObjective):
    """Consistency distillation of ``distill.teacher`` (module docstring). ``modules["model"]``
    is the student, a copy of the teacher's U-Net; the frozen teacher is ``self.teacher`` (not a
    module of the loop: never optimised, checkpointed or averaged). Export: a
    ``DiffusionImagePipeline`` of the student with the consistency sampler (``lcm``,
    ``flow-lcm`` or ``edm-lcm``, grid ``num_ddim_timesteps``) as its scheduler and the teacher's class names.

    Raises:
        ValueError: (``check_config``) see there; (construction) the data's class count differs
            from the teacher's.

    Example (the shipped DDPM teacher; one loss on random images)::

        >>> from training.config import load_config
        >>> objective = ConsistencyObjective(load_config(None, ["train.objective=consistency"]),
        ...                                  num_classes=10)          # doctest: +SKIP
        >>> objective.sampler_name, objective.ode.parameterisation      # doctest: +SKIP
        ('lcm', 'ddpm')
        >>> x0, labels = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([0, 1, 2, 3])
        >>> loss, logs = objective.loss("model", objective.modules, (x0, labels),
        ...                             torch.Generator().manual_seed(0))   # doctest: +SKIP
    """

    def __init__(self, cfg, num_classes, class_names=()):
        path = teacher_path(cfg)
        pipe = DiffusionImagePipeline.from_pretrained(path)
        self.teacher = pipe.unet.eval().requires_grad_(False)
        self.ode = TeacherODE(pipe.scheduler, cfg.distill.num_ddim_timesteps)
        self.teacher_scheduler = pipe.scheduler
        teacher_classes = pipe.num_classes
        if (teacher_classes or 0) != num_classes:
            raise ValueError(f"the teacher {str(path)!r} has {teacher_classes} classes, the data "
                             f"{cfg.data.name!r} {num_classes}: distil on the teacher's data")
        super().__init__(cfg, num_classes, class_names or pipe.config.class_names or ())

    @classmethod
    def check_config(cls, cfg) -> None:
        """Refuse, before loading anything heavy: a teacher folder that is not a saved
        ``DiffusionImagePipeline``, a text teacher, images or channels other than the
        teacher's, ``guidance_scale < 1`` (or != 1 for an unconditional teacher), a grid, skip,
        ``huber_c`` or ``sample_steps`` out of range, and ``model.*`` or DDPM ``diffusion.*``
        settings changed from their defaults (the student is the teacher's U-Net and schedule)."""
        d, path = cfg.distill, teacher_path(cfg)
        index = _read_json(path / "model_index.json")
        if index.get("_class_name") != "DiffusionImagePipeline":
            raise ValueError(f"distill.teacher={str(path)!r} is not a saved diffusion pipeline (no "
                             f"model_index.json naming DiffusionImagePipeline there); give the "
                             f"folder of a trained model, e.g. distill.teacher=runs/<run>/final")
        unet = _read_json(path / "unet" / "config.json")
        scheduler = _read_json(path / "scheduler" / "scheduler_config.json")
        kind = parameterisation_of(scheduler)
        if kind not in CONSISTENCY_SAMPLERS:
            raise ValueError(f"distill.teacher={str(path)!r} is an {kind.upper()} model; consistency "
                             f"distillation supports {tuple(CONSISTENCY_SAMPLERS)} teachers")
        if unet.get("cross_attention_dim") is not None or unet.get("_class_name") != "UNet2DModel":
            raise ValueError(f"distill.teacher={str(path)!r} is a text-conditional model; "
                             f"consistency distillation supports class-conditional and "
                             f"unconditional teachers for now")
        if (unet.get("sample_size"), unet.get("in_channels")) != (cfg.data.image_size, cfg.data.channels):
            raise ValueError(f"the teacher makes {unet.get('sample_size')} px images with "
                             f"{unet.get('in_channels')} channels; data.image_size and data.channels "
                             f"are {cfg.data.image_size}, {cfg.data.channels}: set them to the teacher's")
        check_number("distill.guidance_scale", d.guidance_scale, low=1)
        if unet.get("num_class_embeds") is None and d.guidance_scale != 1:
            raise ValueError(f"the teacher is unconditional (no class table): distill.guidance_scale "
                             f"must be 1, got {d.guidance_scale}")
        T = int(scheduler.get("num_train_timesteps", 1000))
        check_int("distill.num_ddim_timesteps", d.num_ddim_timesteps, 2, T)
        check_int("distill.skip_steps", d.skip_steps, 1, d.num_ddim_timesteps - 1)
        check_int("distill.sample_steps", d.sample_steps, 1, d.num_ddim_timesteps)
        if d.huber_c is not None:
            check_number("distill.huber_c", d.huber_c, low=0)
            if not d.huber_c > 0:
                raise ValueError(f"distill.huber_c must be > 0 (or null for iCT's), got {d.huber_c}")
        defaults = type(cfg)()
        changed = [f"model.{k}" for k in vars(cfg.model) if getattr(cfg.model, k) != getattr(defaults.model, k)]
        changed += [f"diffusion.{k}" for k in DDPM_ONLY_SETTINGS
                    if getattr(cfg.diffusion, k) != getattr(defaults.diffusion, k)]
        if changed:
            raise ValueError(f"train.objective=consistency does not read {', '.join(changed)}: the "
                             f"student is a copy of the teacher's U-Net and schedule; distillation "
                             f"is set in distill.*")

    def build_unet(self):
        """The student: a trainable copy of the teacher's U-Net (same class and config)."""
        return copy.deepcopy(self.teacher).train().requires_grad_(True)

    def build_training_scheduler(self):
        """The teacher's training schedule (what the exported sampler is built on)."""
        if self.ode.parameterisation == "flow":
            return FlowMatchEulerDiscreteScheduler(**flow_training_schedule(self.teacher_scheduler))
        if self.ode.parameterisation == "edm":
            return EDMEulerScheduler(**edm_training_schedule(self.teacher_scheduler))
        return DDPMScheduler(**training_schedule(self.teacher_scheduler))

    @property
    def sampler_name(self) -> str:
        """``lcm`` (DDPM teacher), ``flow-lcm`` (flow) or ``edm-lcm`` (EDM)."""
        return CONSISTENCY_SAMPLERS[self.ode.parameterisation]

    @property
    def sample_steps(self) -> int:
        return self.cfg.distill.sample_steps

    @property
    def sample_guidance_scale(self) -> float:
        """1: the student's guidance is distilled in."""
        return 1.0

    def loss(self, optimizer, modules, batch, generator):
        """``(loss, {"loss": float})`` of one micro-batch ``(x0, labels)``, x0 ``(B, C, H, W)`` in
        [-1, 1] (steps as in the module docstring). Randomness: ``n`` then ``eps`` from ``generator``."""
        d, ode, student = self.cfg.distill, self.ode, modules["model"]
        x0, labels = batch
        b, device, k = x0.shape[0], x0.device, d.skip_steps
        cond = {"class_labels": labels} if self.num_classes else {}
        # 1. n ~ U{k..N}, eps ~ N(0, I), x_{t_n} (on the loop's CPU generator)
        n = torch.randint(k, ode.num_points + 1, (b,), generator=generator)
        m = n - k
        eps = torch.randn(x0.shape, generator=generator).to(device, x0.dtype)
        x_t = ode.noise(x0, eps, n)
        with torch.no_grad():
            # 2. one guided teacher DDIM step t_n -> t_{n-k}: [null; cond] rows in one forward
            self.teacher.to(device)
            if self.num_classes and d.guidance_scale != 1:
                null = torch.full_like(labels, self.num_classes)
                both = ode.x0(self.teacher, torch.cat([x_t, x_t]), torch.cat([n, n]),
                              class_labels=torch.cat([null, labels]))
                x0_null, x0_cond = both.chunk(2)
                x0_teacher = x0_null + d.guidance_scale * (x0_cond - x0_null)
            else:
                x0_teacher = ode.x0(self.teacher, x_t, n, **cond)
            x_prev = ode.ddim_step(x_t, x0_teacher, n, m)
            # 3. the target f_{theta^-}(x_hat_{t_{n-k}}, t_{n-k}), theta^- = stopgrad(theta)
            target = ode.consistency(student, x_prev.to(x0.dtype), m, **cond)
        # 4. the student's f_theta(x_{t_n}, t_n) and the distance
        pred = ode.consistency(student, x_t, n, **cond)
        loss = consistency_distance(pred, target, d.loss, d.huber_c).mean()
        return loss, {"loss": loss.item()}

    def pipeline(self, unet) -> DiffusionImagePipeline:
        scheduler = build_sampler(self.sampler_name, self.noise_scheduler,
                                  original_inference_steps=self.cfg.distill.num_ddim_timesteps)
        return quiet(DiffusionImagePipeline(unet=unet, scheduler=scheduler,
                                            **self.pipeline_components(unet)))
