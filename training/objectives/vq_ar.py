"""The autoregressive baseline's two objectives: stage 1 VQ-VAE tokenizer, stage 2 transformer prior.

Both run through the one loop of :mod:`training.loop` (``train.objective=vqvae`` / ``prior``):

1. :class:`VQVAEObjective`: reconstruction MSE + the quantizer's commitment loss (the codebook is
   updated by EMA inside :class:`vector_quantize_pytorch.VectorQuantize`, not by the optimizer;
   van den Oord et al. 2017, eq. 3 and App. A.1). Evaluation: MSE / PSNR on ``data.eval_split``
   and codebook usage over that *whole split* (not a batch's perplexity), plus a grid of
   originals over reconstructions. Export: the VQ-VAE (``save_pretrained``).
2. :class:`PriorObjective`: the frozen VQ-VAE at ``prior.vqvae_path`` tokenises the training set
   once (:meth:`PriorObjective.prepare_dataset`), then the prior learns next-token cross-entropy
   with the class replaced by the null class with probability ``prior.cond_drop_prob``.
   Evaluation: a grid per class and the shipped classifier's accuracy on ``prior.eval_num_samples``
   samples. Export: the :class:`~diffusion.pipelines.autoregressive.AutoregressivePipeline`
   (VQ-VAE + prior).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffusion.data import TokenDataset, load_dataset
from diffusion.models.prior import TransformerPrior
from diffusion.models.vqvae import VQVAE, reconstruction_metrics
from diffusion.pipelines.autoregressive import AutoregressivePipeline
from diffusion.pipelines.base import eval_mode
from training.objectives.base import GRID_COLUMNS, Objective, quiet

logger = logging.getLogger(__name__)


def resolve_vqvae_path(path) -> str:
    """The folder of a saved VQ-VAE: ``path`` itself (a stage-1 export, ``<output_dir>/final``) or
    the ``vqvae/`` subfolder of a saved
    :class:`~diffusion.pipelines.autoregressive.AutoregressivePipeline` (e.g. the shipped
    ``diffusion/weights/fashion-mnist-ar``, to reuse its tokenizer).

    Raises:
        FileNotFoundError: neither exists (the message says how to make one).
    """
    folder = Path(path)
    for candidate in (folder, folder / "vqvae"):
        if (candidate / "config.json").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"prior.vqvae_path={str(path)!r} holds no saved VQ-VAE (no config.json there or in its vqvae/ "
        f"subfolder). Train stage 1 first (python -m training --config "
        f"training/configs/fashion_mnist_vqvae.yaml; its export is <output_dir>/final), or reuse the "
        f"shipped tokenizer: prior.vqvae_path=diffusion/weights/fashion-mnist-ar")


def _num_processes() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class VQVAEObjective(Objective):
    """Stage 1: train :class:`diffusion.models.vqvae.VQVAE` on images in [-1, 1].

    Loss: ``mean((x_hat - x)^2) + commit_loss`` (the commitment term is weighted inside the
    quantizer by ``vqvae.commitment_weight``). No EMA of the weights: the codebook already is an
    EMA, and an EMA copy of the encoder would not match it (set ``train.use_ema: false``).
    """

    ema_modules = ()

    def __init__(self, cfg, num_classes, class_names=()):
        super().__init__(cfg, num_classes, class_names)
        v, d = cfg.vqvae, cfg.data
        self.modules["model"] = VQVAE(
            in_channels=d.channels, image_size=d.image_size, channels=tuple(v.channels),
            num_res_blocks=v.num_res_blocks, codebook_size=v.codebook_size,
            codebook_dim=v.codebook_dim, commitment_weight=v.commitment_weight,
            ema_decay=v.ema_decay, threshold_ema_dead_code=v.threshold_ema_dead_code,
            kmeans_init=v.kmeans_init)
        self._eval_images = None
        self._epoch_counts = torch.zeros(v.codebook_size, dtype=torch.long)  # codes this epoch
        self._epoch_seen = 0

    def loss(self, optimizer, modules, batch, generator):
        """Reconstruction MSE + commitment; once per epoch of training images (this process's
        share) also ``codebook_used_epoch`` / ``codebook_fraction_epoch``: the codes the training
        batches of that whole epoch were assigned to (not one batch's perplexity)."""
        x, _ = batch
        out = modules["model"](x)
        mse = F.mse_loss(out.sample.float(), x.float())
        commit = out.commit_loss.float()
        logs = {"mse": mse.item(), "commit": commit.item()}
        self._epoch_counts += torch.bincount(out.indices.flatten().cpu(),
                                             minlength=len(self._epoch_counts))
        self._epoch_seen += len(x)
        epoch = len(self.train_data) if self.train_data is not None else None
        if epoch and self._epoch_seen * _num_processes() >= epoch:
            used = int((self._epoch_counts > 0).sum())
            logs.update(codebook_used_epoch=used,
                        codebook_fraction_epoch=used / len(self._epoch_counts))
            self._epoch_counts.zero_()
            self._epoch_seen = 0
        return mse + commit, logs

    def evaluate(self, modules, generator):
        """MSE and PSNR (on the [0, 1] scale) and codebook usage over all of ``data.eval_split``
        (:func:`diffusion.models.vqvae.reconstruction_metrics`), in eval mode and fp32; a grid
        with ``GRID_COLUMNS`` originals (top row) over their reconstructions."""
        from torchvision.utils import make_grid

        model = modules["model"]
        d = self.cfg.data
        if self._eval_images is None:
            self._eval_images = load_dataset(d.name, split=d.eval_split, root=d.root,
                                             image_size=d.image_size, channels=d.channels).images
        x = self._eval_images.to(model.device)
        with eval_mode(model), torch.autocast(model.device.type, enabled=False):
            m = reconstruction_metrics(model, x)
            originals = x[:GRID_COLUMNS]
            recon = model.decode_tokens(model.tokenize(originals))
        images = torch.cat([originals, recon]).float().cpu() / 2 + 0.5    # [-1, 1] -> [0, 1]
        return dict(m), make_grid(images, nrow=GRID_COLUMNS, padding=1)


class PriorObjective(Objective):
    """Stage 2: train :class:`diffusion.models.prior.TransformerPrior` on the tokens of the
    frozen VQ-VAE at ``prior.vqvae_path``."""

    def __init__(self, cfg, num_classes, class_names=()):
        super().__init__(cfg, num_classes, class_names)
        p, d = cfg.prior, cfg.data
        self.vqvae = VQVAE.from_pretrained(resolve_vqvae_path(p.vqvae_path)).eval().requires_grad_(False)
        v = self.vqvae
        if (v.config.in_channels, v.config.image_size) != (d.channels, d.image_size):
            raise ValueError(f"the VQ-VAE at {p.vqvae_path!r} takes {v.config.in_channels}-channel "
                             f"{v.config.image_size}px images; data has {d.channels} channels, "
                             f"{d.image_size}px")
        self.modules["model"] = TransformerPrior(
            vocab_size=v.config.codebook_size, num_positions=v.num_tokens,
            num_classes=num_classes or None, d_model=p.d_model, num_layers=p.num_layers,
            num_heads=p.num_heads, mlp_ratio=p.mlp_ratio, dropout=p.dropout)

    @classmethod
    def check_config(cls, cfg) -> None:
        """Raises ``ValueError`` without ``prior.vqvae_path`` (the stage-1 tokenizer)."""
        if not cfg.prior.vqvae_path:
            raise ValueError("train.objective=prior needs prior.vqvae_path: the folder of a trained "
                             "VQ-VAE (train one with train.objective=vqvae; its export is "
                             "<output_dir>/final)")

    def prepare_dataset(self, dataset):
        """Tokenise ``dataset`` (images in [-1, 1]) once with the frozen VQ-VAE, fp32, 1,000 images
        per batch; returns a :class:`diffusion.data.datasets.TokenDataset` with the same labels."""
        start = time.time()
        tokens = torch.cat([self.vqvae.tokenize(dataset.images[i:i + 1000].float())
                            for i in range(0, len(dataset), 1000)])
        logger.info("tokenised %d images to %s tokens each in %.1f s", len(dataset),
                    "x".join(map(str, self.vqvae.token_grid)), time.time() - start)
        return TokenDataset(tokens, dataset.labels, dataset.class_names)

    def loss(self, optimizer, modules, batch, generator):
        tokens, labels = batch
        prior = modules["model"]
        plain = getattr(prior, "module", prior)
        if plain.num_classes is not None:
            drop = torch.rand(labels.shape, generator=generator) < self.cfg.prior.cond_drop_prob
            labels = torch.where(drop.to(labels.device), torch.full_like(labels, plain.num_classes),
                                 labels)
        else:
            labels = None
        # Through the (possibly DDP-wrapped) module's forward, so gradients synchronise.
        loss = plain.loss(tokens, labels, forward=prior)
        return loss, {"loss": loss.item(), "bits_per_token": loss.item() / math.log(2)}

    def pipeline(self, prior) -> AutoregressivePipeline:
        p = self.cfg.prior
        return quiet(AutoregressivePipeline(
            vqvae=self.vqvae.to(prior.device), prior=prior, class_names=self.class_names or None,
            decoding={"temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p,
                      "guidance_scale": p.guidance_scale}))

    def evaluate(self, modules, generator):
        """A grid (one row per class, up to 10 x 10; one row without classes) at the config's
        decoding settings, eval mode (the pipeline's), and the shipped classifier's accuracy on
        ``prior.eval_num_samples`` samples (if it fits the data)."""
        pipe = self.pipeline(modules["model"])
        grid = self.sample_grid(pipe, generator)
        scalars = {}
        k = self.cfg.prior.eval_num_samples
        if k > 0 and self.num_classes and (self.cfg.data.channels, self.cfg.data.image_size) == (1, 28):
            from diffusion.evaluation import evaluate  # the evaluation stack, only when asked for

            try:
                r = evaluate(pipe, metrics="accuracy", num_samples=k, batch_size=min(k, 250),
                             seed=0, cache_samples=False, progress=False)
                scalars[f"accuracy_n{k}"] = r["accuracy"]
            except FileNotFoundError as err:  # no shipped classifier in this install
                logger.info("accuracy skipped: %s", err)
        return scalars, grid
