"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", EDM2, Sec. 3 and App. C): the loop tracks two power-function EMAs of each EMA module,
writes their snapshots every ``train.posthoc_ema_snapshot_every`` steps, and after training an
EMA of **any** relative length ``sigma_rel`` is reconstructed from the snapshots by least squares.

The math, with the paper's symbols (``t``: optimizer steps of the module, 1, 2, ...):

* **Power-function EMA profile** (Sec. 3.1, eq. 2-3): ``theta_hat_gamma(t)`` averages the weights
  ``theta(tau)``, ``tau <= t``, with density ``p_{t,gamma}(tau) = (gamma + 1) tau^gamma /
  t^(gamma + 1)`` on ``[0, t]``. Its relative standard deviation (width / t) is
  ``sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))`` (App. C.2, eq. 123);
  :func:`sigma_rel_to_gamma` inverts it (Alg. 2).
* **Tracking it during training** (eq. 4 / App. C.2, eq. 127): ``theta_hat_t = beta_t
  theta_hat_{t-1} + (1 - beta_t) theta_t`` with ``beta_t = (1 - 1/t)^(gamma + 1)`` (``beta_1 =
  0``). Unrolled, ``theta_hat_t = sum_tau (tau^(gamma+1) - (tau-1)^(gamma+1)) theta_tau /
  t^(gamma+1)``: exactly the continuous profile applied to the weights held constant on
  ``(tau - 1, tau]``, so the continuous inner products below are exact for the discrete EMA.
* **Reconstruction** (App. C.3, Alg. 3): snapshots ``i`` with profiles ``p_i = p_{t_i,
  gamma_i}``; the target ``p_r = p_{t_r, gamma_r}`` is approximated by ``sum_i x_i p_i`` in
  L2: ``A x = b`` with ``A_ij = <p_i, p_j>``, ``b_i = <p_i, p_r>`` (eq. 151; closed form in
  :func:`profile_inner_product`), ``x`` normalised to sum to one as EDM2's release does. The
  reconstructed weights are ``sum_i x_i theta_hat_i``.

Why our own code: ``ema-pytorch``'s ``PostHocEMA`` (MIT) has the right math (its ``solve_weights``
is Alg. 3; ``tests/training/test_posthoc_ema.py`` checks our coefficients against it when it is
installed) but writes its snapshots with ``torch.save`` (pickles), in fp16 by default, not
atomically, into a fixed folder with no disk bound, and its trackers are not part of
accelerate's ``save_state``. NVlabs/edm2's ``training/phema.py`` is CC BY-NC-SA 4.0, which an
Apache-2.0 package cannot copy; the code here is written from the paper's equations.

Snapshots: ``<output_dir>/posthoc-ema/snapshot-<step:07d>.safetensors``, one per snapshot step,
holding every tracked EMA of every EMA module (tensor ``"<module>/<k>/<parameter>"`` for the k-th
``sigma_rel``), written to a temporary name, fsynced and renamed (:func:`write_snapshot`); the
metadata holds the step, each module's ``t``, the ``sigma_rels`` and the classes.

Example::

    >>> round(sigma_rel_to_gamma(0.05), 3), round(gamma_to_sigma_rel(16.972), 4)
    (16.972, 0.05)
    >>> x = solve_coefficients([10, 10], [sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.1)],
    ...                        10, sigma_rel_to_gamma(0.1))
    >>> [abs(round(float(v), 6)) for v in x]
    [0.0, 1.0]
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

logger = logging.getLogger("training.loop")  # the loop's logger: one place to configure

SNAPSHOT_DIR = "posthoc-ema"
SNAPSHOT_PREFIX = "snapshot-"
SNAPSHOT_SUFFIX = ".safetensors"
FORMAT = "posthoc-ema/1"
#: sigma_rel of gamma = 0 (the uniform average of all weights so far): larger ones need gamma < 0
MAX_SIGMA_REL = math.sqrt(1 / 12)


# -- the power-function EMA profile ------------------------------------------------------------

def gamma_to_sigma_rel(gamma: float) -> float:
    """Relative standard deviation of the power-function profile of exponent ``gamma > -1``
    (Karras et al. 2024, App. C.2, eq. 123)."""
    gamma = float(gamma)
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent ``gamma > 0`` whose profile has relative standard deviation ``sigma_rel``
    (Karras et al. 2024, Alg. 2): the largest real root of
    ``gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + (12 - sigma_rel^-2) = 0``.

    Raises:
        ValueError: ``sigma_rel`` not in ``(0, sqrt(1/12))`` (``sqrt(1/12) ~ 0.2887`` is gamma = 0).
    """
    check_sigma_rel("sigma_rel", sigma_rel)
    s = float(sigma_rel) ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def check_sigma_rel(name: str, sigma_rel) -> None:
    """Raise ``ValueError`` unless ``sigma_rel`` is a number in ``(0, sqrt(1/12))``."""
    if isinstance(sigma_rel, bool) or not isinstance(sigma_rel, (int, float)) \
            or not 0 < sigma_rel < MAX_SIGMA_REL:
        raise ValueError(f"{name} must be a relative EMA length in (0, {MAX_SIGMA_REL:.4f}) "
                         f"(EDM2 uses 0.05 and 0.10 for tracking), got {sigma_rel!r}")


def power_function_beta(gamma: float, t: int) -> float:
    """``beta_t = (1 - 1/t)^(gamma + 1)`` of the t-th update, t >= 1 (Karras et al. 2024,
    App. C.2, eq. 127 with one step per update); 0 at t = 1."""
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


def profile_inner_product(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
    """``<p_a, p_b> = integral_0^inf p_{t_a,gamma_a}(tau) p_{t_b,gamma_b}(tau) dtau`` (Karras et
    al. 2024, App. C.3, eq. 151), broadcast over arrays. With ``t_a <= t_b`` the integral runs to
    ``t_a``: ``(gamma_a + 1)(gamma_b + 1) / (gamma_a + gamma_b + 1) * (t_a / t_b)^gamma_b / t_b``
    (symmetric otherwise)."""
    t_a, g_a, t_b, g_b = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    t_lo, t_hi = np.minimum(t_a, t_b), np.maximum(t_a, t_b)
    g_hi = np.where(t_a <= t_b, g_b, g_a)  # the exponent of the longer profile
    return (g_a + 1) * (g_b + 1) / (g_a + g_b + 1) * (t_lo / t_hi) ** g_hi / t_hi


def solve_coefficients(t_i: Sequence[float], gamma_i: Sequence[float], t_r: float,
                       gamma_r: float) -> np.ndarray:
    """Least-squares weights ``x`` (shape ``(len(t_i),)``, summing to 1) with ``sum_i x_i
    p_{t_i,gamma_i} ~ p_{t_r,gamma_r}`` (Karras et al. 2024, Alg. 3): ``A x = b`` with the Gram
    matrix ``A`` of the snapshot profiles and ``b_i = <p_i, p_r>``, solved with ``lstsq`` (a
    repeated snapshot makes ``A`` singular; its weight is then shared)."""
    t_i, gamma_i = np.asarray(t_i, np.float64), np.asarray(gamma_i, np.float64)
    A = profile_inner_product(t_i[:, None], gamma_i[:, None], t_i[None, :], gamma_i[None, :])
    b = profile_inner_product(t_i, gamma_i, float(t_r), float(gamma_r))
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    return x / x.sum()


# -- tracking during training ------------------------------------------------------------------

class PowerFunctionEMA:
    """Power-function EMAs of one module's parameters, one per ``sigma_rel`` (Karras et al. 2024,
    eq. 4 / App. C.2, eq. 127), updated once per optimizer step the module takes.

    Args:
        named_parameters: ``(name, parameter)`` pairs (``module.named_parameters()``).
        sigma_rels: relative lengths to track, each in ``(0, sqrt(1/12))``, at least two distinct.

    ``shadows[k][name]`` is the EMA of length ``sigma_rels[k]`` (a detached copy, same dtype and
    device as the parameter); ``t`` counts the updates. ``state_dict`` / ``load_state_dict`` make
    it resumable (registered with accelerate's ``save_state``).
    """

    def __init__(self, named_parameters: Iterable, sigma_rels: Sequence[float]):
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        named = list(named_parameters)
        self.shadows: List[Dict[str, torch.Tensor]] = [
            {name: p.detach().clone() for name, p in named} for _ in self.sigma_rels]
        self.t = 0

    @torch.no_grad()
    def step(self, named_parameters: Iterable) -> None:
        """One update with the module's current weights: ``t += 1``, then each EMA moves by
        ``1 - beta_t`` towards them (a copy at t = 1)."""
        self.t += 1
        named = list(named_parameters)
        for gamma, shadow in zip(self.gammas, self.shadows):
            weight = 1.0 - power_function_beta(gamma, self.t)
            for name, p in named:
                if self.t == 1:
                    shadow[name].copy_(p.detach())
                else:
                    shadow[name].lerp_(p.detach().to(shadow[name].dtype), weight)

    def to(self, device) -> "PowerFunctionEMA":
        self.shadows = [{n: s.to(device) for n, s in shadow.items()} for shadow in self.shadows]
        return self

    def state_dict(self) -> dict:
        return {"t": self.t, "sigma_rels": list(self.sigma_rels), "shadows": self.shadows}

    def load_state_dict(self, state: dict) -> None:
        if [float(s) for s in state["sigma_rels"]] != self.sigma_rels:
            raise ValueError(f"checkpoint tracks post-hoc EMAs of sigma_rel {state['sigma_rels']}, "
                             f"this run {self.sigma_rels}")
        self.t = int(state["t"])
        for shadow, saved in zip(self.shadows, state["shadows"]):
            for name, s in shadow.items():
                s.copy_(saved[name])


class PosthocEMA:
    """The tracked EMAs of every EMA module of a run (``{module name: PowerFunctionEMA}``), one
    object for accelerate's ``register_for_checkpointing``."""

    def __init__(self, modules: Dict[str, torch.nn.Module], sigma_rels: Sequence[float]):
        self.emas = {n: PowerFunctionEMA(m.named_parameters(), sigma_rels) for n, m in modules.items()}
        self.sigma_rels = [float(s) for s in sigma_rels]

    def to(self, device) -> "PosthocEMA":
        for ema in self.emas.values():
            ema.to(device)
        return self

    def state_dict(self) -> dict:
        return {n: ema.state_dict() for n, ema in self.emas.items()}

    def load_state_dict(self, state: dict) -> None:
        for n, ema in self.emas.items():
            ema.load_state_dict(state[n])

    def tensors(self) -> Dict[str, torch.Tensor]:
        """Every tracked EMA as ``{"<module>/<k>/<parameter>": CPU tensor}`` (a snapshot's body)."""
        return {f"{n}/{k}/{name}": s.detach().to("cpu", copy=True).contiguous()
                for n, ema in self.emas.items() for k, shadow in enumerate(ema.shadows)
                for name, s in shadow.items()}


# -- snapshots on disk -------------------------------------------------------------------------

def snapshot_dir(output_dir) -> Path:
    return Path(output_dir) / SNAPSHOT_DIR


def snapshot_step(path: Path) -> Optional[int]:
    """The step of a complete snapshot file's name, or ``None`` for any other file (temporary ones)."""
    name = path.name
    if not (name.startswith(SNAPSHOT_PREFIX) and name.endswith(SNAPSHOT_SUFFIX)):
        return None
    digits = name[len(SNAPSHOT_PREFIX): -len(SNAPSHOT_SUFFIX)]
    return int(digits) if digits.isdigit() else None


def list_snapshots(output_dir) -> List[Path]:
    """Complete snapshot files of a run, oldest first (temporary ``.tmp-`` files never listed)."""
    root = snapshot_dir(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_file() and snapshot_step(p) is not None]
    return sorted(found, key=snapshot_step)


def snapshots_to_keep(steps: Sequence[int], every: int, max_snapshots: int) -> List[int]:
    """Which of the snapshot ``steps`` a run keeps once the newest, ``S``, is written: all when
    ``max_snapshots`` is 0; otherwise ``S`` and the multiples of ``every * 2^j`` up to ``S``, with
    the smallest ``j`` that makes at most ``max_snapshots`` in all (counted over the schedule,
    not the files). The kept ones stay spread over the whole run, their spacing doubling as it
    grows: a reconstruction of a long ``sigma_rel`` needs early snapshots too, which a
    keep-the-newest rule would drop. A pure function of ``S`` whose kept sets shrink
    monotonically, so a resumed run ends with the same files as an uninterrupted one.

    Example::

        >>> snapshots_to_keep([10, 20, 30, 40, 50, 60, 70], every=10, max_snapshots=4)
        [20, 40, 60, 70]
    """
    steps = sorted(steps)
    if not max_snapshots or not steps:
        return steps
    newest, spacing = steps[-1], every
    while newest // spacing + (newest % spacing != 0) > max_snapshots:
        spacing *= 2
    return [s for s in steps if s % spacing == 0 or s == newest]


def write_snapshot(output_dir, step: int, tracker: PosthocEMA, metadata: Optional[dict] = None,
                   every: int = 1, max_snapshots: int = 0) -> Path:
    """Write ``tracker``'s EMAs as ``snapshot-<step>.safetensors`` atomically: to
    ``.tmp-snapshot-<step>.safetensors``, fsync, ``os.replace``; a failed write removes the
    temporary file and re-raises, so no partial snapshot is ever listed. Then deletes those that
    :func:`snapshots_to_keep` drops (``every``: the snapshot interval; ``max_snapshots``: the
    bound, 0 = none). ``metadata``: extra JSON-able entries (the classes)."""
    root = snapshot_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{SNAPSHOT_PREFIX}{step:07d}{SNAPSHOT_SUFFIX}"
    tmp = root / f".tmp-{final.name}"
    meta = {"format": FORMAT, "step": str(step), "sigma_rels": json.dumps(tracker.sigma_rels),
            "t": json.dumps({n: ema.t for n, ema in tracker.emas.items()}),
            **{k: json.dumps(v) for k, v in (metadata or {}).items()}}
    try:
        save_file(tracker.tensors(), str(tmp), metadata=meta)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    existing = list_snapshots(output_dir)
    keep = set(snapshots_to_keep([snapshot_step(p) for p in existing], every, max_snapshots))
    for old in existing:
        if snapshot_step(old) not in keep:
            old.unlink(missing_ok=True)
    return final


def remove_snapshots_after(output_dir, step: int) -> List[Path]:
    """Delete snapshots later than ``step`` (a resumed run rewrites them from its own
    trajectory); returns the removed paths."""
    removed = [p for p in list_snapshots(output_dir) if snapshot_step(p) > step]
    for p in removed:
        p.unlink()
    return removed


def read_metadata(path: Path) -> dict:
    """A snapshot's metadata with its JSON values decoded (``step``, ``t``, ``sigma_rels``, ...)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a post-hoc EMA snapshot of format {FORMAT!r}")
    return {k: (v if k == "format" else json.loads(v)) for k, v in meta.items()}


# -- reconstruction ----------------------------------------------------------------------------

def reconstruction_plan(run_dir, sigma_rel: float, step: Optional[int] = None) -> dict:
    """Which snapshots, with which weights, reconstruct the EMA of ``sigma_rel`` at ``step``.

    Returns ``{"step", "sigma_rel", "gamma", "snapshots": [paths], "modules": {module:
    {"t_r": t, "coefficients": [(path, k, x), ...]}}, "metadata": the chosen snapshot's}``.

    Raises:
        ValueError: ``sigma_rel`` out of range, no snapshots in ``run_dir``, or ``step`` not a
            snapshot step (the available steps are named).
    """
    check_sigma_rel("sigma_rel", sigma_rel)
    snapshots = list_snapshots(run_dir)
    if not snapshots:
        raise ValueError(f"no post-hoc EMA snapshots in {snapshot_dir(run_dir)}: train with "
                         f"train.posthoc_ema=true")
    steps = [snapshot_step(p) for p in snapshots]
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise ValueError(f"no snapshot at step {step}; snapshots exist at steps {steps}")
    used = [p for p, s in zip(snapshots, steps) if s <= step]
    metas = [read_metadata(p) for p in used]
    gamma_r = sigma_rel_to_gamma(sigma_rel)
    modules = {}
    for n, t_r in metas[-1]["t"].items():
        rows = [(p, k, meta["t"][n], sigma_rel_to_gamma(s)) for p, meta in zip(used, metas)
                for k, s in enumerate(meta["sigma_rels"]) if meta["t"].get(n, 0) > 0]
        x = solve_coefficients([r[2] for r in rows], [r[3] for r in rows], t_r, gamma_r)
        modules[n] = {"t_r": t_r, "coefficients": [(p, k, float(w)) for (p, k, _, _), w in zip(rows, x)]}
    return {"step": step, "sigma_rel": float(sigma_rel), "gamma": gamma_r, "snapshots": used,
            "modules": modules, "metadata": metas[-1]}


def reconstruct(run_dir, sigma_rel: float, step: Optional[int] = None) -> Dict[str, Dict[str, torch.Tensor]]:
    """The EMA of relative length ``sigma_rel`` at snapshot ``step`` (default: the latest) of the
    run in ``run_dir``, from its snapshots (Karras et al. 2024, Alg. 3).

    Returns ``{module name: state dict}`` (float tensors of the tracked dtype, CPU), loadable with
    ``module.load_state_dict(sd, strict=False)`` (parameters only; buffers are not averaged).

    Raises:
        ValueError: see :func:`reconstruction_plan`.

    Example::

        >>> weights = reconstruct("runs/fashion-mnist", sigma_rel=0.07)   # doctest: +SKIP
        >>> unet.load_state_dict(weights["model"], strict=False)            # doctest: +SKIP
    """
    plan = reconstruction_plan(run_dir, sigma_rel, step)
    out = {}
    for n, m in plan["modules"].items():
        acc: Dict[str, torch.Tensor] = {}
        dtypes: Dict[str, torch.dtype] = {}
        for path, k, x in m["coefficients"]:
            prefix = f"{n}/{k}/"
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    if key.startswith(prefix):
                        name, tensor = key[len(prefix):], f.get_tensor(key)
                        dtypes[name] = tensor.dtype
                        term = tensor.double() * x
                        acc[name] = term if name not in acc else acc[name] + term
        out[n] = {name: v.to(dtypes[name]) for name, v in acc.items()}
    return out
