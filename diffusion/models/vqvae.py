"""VQ-VAE image tokenizer: stage 1 of the VQ-VAE + autoregressive-prior baseline (van den Oord
et al. 2017, "Neural Discrete Representation Learning"; Razavi et al. 2019, VQ-VAE-2).

An encoder maps an image ``x`` (float ``(B, C, H, W)`` in [-1, 1]) to ``z_e(x)`` of shape
``(B, D, h, w)`` with ``h = H / 2**len(channels)`` (28x28 -> 7x7 with two stages, 49 tokens);
every ``D``-vector is replaced by its nearest codebook entry ``e_k`` (van den Oord et al. 2017,
eq. 1-2), and a decoder maps ``z_q(x)`` back to the image. Training minimises (eq. 3)::

    L = ||x - D(z_q(x))||^2  +  beta * ||z_e(x) - sg[e]||^2

where the reconstruction term is the caller's (``forward`` returns ``sample``) and the
commitment term ``beta * ...`` is ``commit_loss``. The codebook term ``||sg[z_e(x)] - e||^2`` is
replaced by exponential-moving-average updates (App. A.1; ``gamma = ema_decay``), so the
codebook is not a parameter and no optimizer touches it. Gradients pass the quantizer
straight-through (``z_q = z_e + sg[e - z_e]``, sec. 3.2).

Library parts used, and why:

* **Quantizer:** ``vector_quantize_pytorch.VectorQuantize`` (lucidrains) with EMA codebook updates
  (``decay``), k-means initialisation of the codebook on the first training batch
  (``kmeans_init``), restarts of dead codes (``threshold_ema_dead_code``: a code whose EMA usage
  count falls below the threshold is replaced by a random encoder output of the current batch),
  the commitment loss on the encoder output (``commitment_weight``), and codebook sync across
  processes under ``torch.distributed``. We disable its default "rotation trick" gradient
  estimator (Fifty et al. 2024) and use the paper's straight-through estimator.
  diffusers' ``VQModel`` was not used: its ``VectorQuantizer`` (``models/autoencoders/vae.py``)
  learns the codebook by gradient descent through ``nn.Embedding`` (no EMA updates, no k-means
  init, no dead-code restarts, so unused codes stay unused), and with its default
  ``legacy=True`` (the one ``VQModel`` builds) ``beta`` weights the codebook term rather than the
  commitment term.
* **Encoder/decoder:** small convolutional nets of our own (below), CPU-sized (~0.28M parameters
  at the defaults). diffusers' ``Encoder``/``Decoder`` (``models/autoencoders/vae.py``) build two
  ResNet layers per block, GroupNorm (32 groups by default), a self-attention mid block, and
  ``n - 1`` downsamplings for ``n`` blocks (28 -> 7 takes three blocks): sized for 256x256
  latent-diffusion autoencoders rather than a ~0.3M-weight 28x28 -> 7x7 tokenizer.

Architecture: encoder = conv3x3 to ``channels[0]``; per stage ``i`` a 4x4 stride-2 conv to
``channels[i]`` (halves H, W) and ``num_res_blocks`` residual blocks
``x + conv3x3(ReLU(conv3x3(ReLU(x))))`` (the paper's blocks, with a 3x3 second conv); ReLU and a
1x1 conv to ``D``. Decoder
mirrors it: conv3x3 from ``D``; per stage (deepest first) residual blocks then nearest-upsample x2
+ conv3x3 (no transposed-conv checkerboards, Odena et al. 2016); ReLU and conv3x3 to ``C``. No
normalisation layers, so train and eval modes of the nets agree; only the quantizer's mode
matters (see below).

Behaviour a caller must know:

* **Training mode updates the codebook inside** ``forward``/``quantize``: one EMA step and dead-code
  restarts per call (each gradient-accumulation micro-batch counts). Eval mode leaves every buffer
  untouched. :meth:`VQVAE.tokenize` always quantizes in eval mode.
* **k-means init** runs once, on the first training-mode batch (all ``B*h*w`` vectors; fewer
  vectors than codes samples duplicates, which dead-code restarts later replace). An eval-mode
  quantize before that raises ``RuntimeError`` (the library would otherwise initialise from an
  eval batch, in one process only).
* **Mixed precision:** the quantizer always runs in float32 with autocast off (the library turns
  off CUDA autocast only; on CPU, bf16 autocast would otherwise compute distances and EMA sums in
  bf16). Encoder and decoder follow the caller's autocast, so ``sample`` may be bf16.
* **Distributed (DDP):** the codebook is synced across processes if ``torch.distributed`` is
  initialised with world size > 1 *when the model is built* (build it after ``Accelerator()``):
  EMA counts/sums are all-reduced and k-means and restarts draw from all processes' vectors, so
  every process holds the same codebook (checked with 2 gloo processes and unequal batches).
  Training-mode forwards are then collective: a forward on one process only (an evaluation on the
  main process) must be in eval mode, which has no collectives once the codebook is initialised.
* **Randomness:** k-means seeding and dead-code restarts draw from the global torch RNG (the
  library takes no generator); seed it for reproducible training. Inference (eval mode) is
  deterministic.
* **Weight EMA:** the codebook is a buffer, not a parameter: an EMA of parameters (diffusers
  ``EMAModel``) averages encoder/decoder weights only and pairs them with the live codebook.

Example (tiny config: 8x8 images, one stage -> 4x4 tokens)::

    >>> import torch
    >>> from diffusion.models.vqvae import VQVAE, codebook_usage
    >>> vq = VQVAE(image_size=8, channels=(8,), codebook_size=16, codebook_dim=4)
    >>> x = torch.rand(4, 1, 8, 8) * 2 - 1
    >>> out = vq(x)        # training mode: k-means init on this batch, then one EMA update
    >>> out.sample.shape, out.indices.shape, out.commit_loss.shape, vq.token_grid, vq.num_tokens
    (torch.Size([4, 1, 8, 8]), torch.Size([4, 4, 4]), torch.Size([]), (4, 4), 16)
    >>> tokens = vq.tokenize(x)                     # eval-mode quantizer, raster order
    >>> tokens.shape, tokens.dtype, vq.training
    (torch.Size([4, 16]), torch.int64, True)
    >>> vq.decode_tokens(tokens).shape
    torch.Size([4, 1, 8, 8])
    >>> codebook_usage(torch.tensor([0, 0, 1, 3]), codebook_size=4)["used"]
    3
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from samplers.checks import check_int
from vector_quantize_pytorch import VectorQuantize


@dataclass
class VQVAEOutput(BaseOutput):
    """``sample``: reconstruction float ``(B, C, H, W)``, not clamped (target range [-1, 1]);
    ``indices``: int64 ``(B, h, w)`` codes in ``[0, codebook_size)``; ``commit_loss``: float32
    scalar ``commitment_weight * mean ||z_e - sg[z_q]||^2``. (The ``None`` defaults let
    accelerate's mixed-precision output conversion rebuild it from a dict.)"""

    sample: torch.Tensor
    indices: Optional[torch.Tensor] = None
    commit_loss: Optional[torch.Tensor] = None


class ResidualBlock(nn.Module):
    """``x + conv3x3(ReLU(conv3x3(ReLU(x))))``, channels kept (cf. van den Oord et al. 2017,
    sec. 4.1, whose second conv is 1x1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def _distributed() -> bool:
    """True inside an initialised ``torch.distributed`` group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VQVAE(ModelMixin, ConfigMixin):
    """VQ-VAE: images float ``(B, in_channels, image_size, image_size)`` in [-1, 1] <-> token
    grids int64 ``(B, h, w)`` in ``[0, codebook_size)``, ``h = w = image_size / 2**len(channels)``.

    Args:
        in_channels: image channels ``C`` (1 for Fashion-MNIST, 3 for RGB).
        image_size: ``H = W``; must be divisible by ``2**len(channels)``.
        channels: encoder width per downsampling stage (the decoder mirrors it); one stage per
            halving of the resolution.
        num_res_blocks: residual blocks per stage (>= 0).
        codebook_size: number of codes ``K`` (the AR prior's vocabulary).
        codebook_dim: code dimension ``D`` (channels of ``z_e`` and ``z_q``).
        commitment_weight: ``beta`` of van den Oord et al. 2017, eq. 3 (paper: 0.25).
        ema_decay: ``gamma`` of the EMA codebook updates (App. A.1), in (0, 1).
        threshold_ema_dead_code: a code whose EMA usage count (vectors per batch) drops below
            this is restarted from a random encoder output of the batch; 0 disables restarts.
        kmeans_init: initialise the codebook by k-means (10 iterations) on the first training
            batch; otherwise Kaiming-uniform (then, with the EMA counts starting at 1, the first
            training step restarts nearly every code from the batch when the threshold is >= 2).

    Raises:
        ValueError: an argument outside the ranges above.
    """

    _skip_layerwise_casting_patterns = ["quantizer"]

    @register_to_config
    def __init__(self, in_channels: int = 1, image_size: int = 28,
                 channels: Sequence[int] = (32, 64), num_res_blocks: int = 1,
                 codebook_size: int = 256, codebook_dim: int = 32,
                 commitment_weight: float = 0.25, ema_decay: float = 0.99,
                 threshold_ema_dead_code: float = 2, kmeans_init: bool = True):
        super().__init__()
        in_channels = check_int("in_channels", in_channels)
        num_res_blocks = check_int("num_res_blocks", num_res_blocks, low=0)
        codebook_size = check_int("codebook_size", codebook_size, low=2)
        codebook_dim = check_int("codebook_dim", codebook_dim)
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) \
                or not channels \
                or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty sequence of ints >= 1, "
                             f"got {channels!r}")
        factor = 2 ** len(channels)
        image_size = check_int("image_size", image_size)
        # The checked Python ints replace what the caller passed (e.g. numpy ints), so the saved
        # config.json holds plain JSON numbers.
        self.register_to_config(in_channels=in_channels, num_res_blocks=num_res_blocks,
                                codebook_size=codebook_size, codebook_dim=codebook_dim,
                                image_size=image_size)
        if image_size % factor:
            raise ValueError(f"image_size {image_size} is not divisible by 2**len(channels) = "
                             f"{factor} (channels={tuple(channels)})")
        if not (math.isfinite(commitment_weight) and commitment_weight >= 0):
            raise ValueError(f"commitment_weight must be a finite number >= 0, "
                             f"got {commitment_weight!r}")
        if not 0 < ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {ema_decay!r}")
        if not (math.isfinite(threshold_ema_dead_code) and threshold_ema_dead_code >= 0):
            raise ValueError(f"threshold_ema_dead_code must be a finite number >= 0, "
                             f"got {threshold_ema_dead_code!r}")
        channels = [int(c) for c in channels]

        # Encoder: conv_in, then per stage [4x4 stride-2 conv, res blocks], then ReLU + 1x1 to D.
        enc = [nn.Conv2d(in_channels, channels[0], 3, padding=1)]
        c_in = channels[0]
        for c in channels:
            enc.append(nn.Conv2d(c_in, c, 4, stride=2, padding=1))
            enc += [ResidualBlock(c) for _ in range(num_res_blocks)]
            c_in = c
        enc += [nn.ReLU(), nn.Conv2d(c_in, codebook_dim, 1)]
        self.encoder = nn.Sequential(*enc)

        # Decoder: conv_in from D, then per stage (deepest first) [res blocks, upsample + conv3x3].
        dec = [nn.Conv2d(codebook_dim, channels[-1], 3, padding=1)]
        for i in reversed(range(len(channels))):
            dec += [ResidualBlock(channels[i]) for _ in range(num_res_blocks)]
            dec += [nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(channels[i], channels[max(i - 1, 0)], 3, padding=1)]
        dec += [nn.ReLU(), nn.Conv2d(channels[0], in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

        # Codebook buffers (all saved): _codebook.embed (1, K, D), embed_avg (1, K, D),
        # cluster_size (1, K), initted (bool). Whether to sync the codebook across processes is
        # decided now, from the live process group (the library's own default caches its first
        # answer for the whole process).
        self.quantizer = VectorQuantize(
            dim=codebook_dim, codebook_size=codebook_size, decay=ema_decay,
            commitment_weight=commitment_weight, kmeans_init=kmeans_init, kmeans_iters=10,
            threshold_ema_dead_code=threshold_ema_dead_code, accept_image_fmap=True,
            sync_codebook=_distributed(),
            rotation_trick=False)  # straight-through estimator, van den Oord et al. 2017 sec. 3.2

    # -- shapes ------------------------------------------------------------------------------
    @property
    def token_grid(self) -> Tuple[int, int]:
        """``(h, w)`` of the token grid: ``image_size / 2**len(channels)`` each (7, 7 for 28x28)."""
        s = self.config.image_size // 2 ** len(self.config.channels)
        return (s, s)

    @property
    def num_tokens(self) -> int:
        """Tokens per image, ``h * w`` (the AR prior's sequence length)."""
        h, w = self.token_grid
        return h * w

    @property
    def codebook(self) -> torch.Tensor:
        """The codes ``e``: float32 ``(codebook_size, codebook_dim)`` (a view of the EMA buffer)."""
        return self.quantizer.codebook

    @property
    def codebook_initialized(self) -> bool:
        """False until k-means init has run (always True with ``kmeans_init=False``)."""
        return bool(self.quantizer._codebook.initted)

    def _check_images(self, images: torch.Tensor) -> None:
        cfg = self.config
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if not isinstance(images, torch.Tensor) or images.ndim != 4 \
                or tuple(images.shape[1:]) != expected or not images.is_floating_point():
            got = (f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor)
                   else type(images).__name__)
            raise ValueError(f"images must be a float tensor (B, {cfg.in_channels}, "
                             f"{cfg.image_size}, {cfg.image_size}) in [-1, 1], got {got}")

    def _check_latents(self, z: torch.Tensor, name: str) -> None:
        expected = (self.config.codebook_dim, *self.token_grid)
        if not isinstance(z, torch.Tensor) or z.ndim != 4 or tuple(z.shape[1:]) != expected:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{name} must be a tensor (B, {expected[0]}, {expected[1]}, "
                             f"{expected[2]}), got {got}")

    # -- the three stages --------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``z_e(x)``: images float ``(B, C, H, W)`` in [-1, 1] -> float ``(B, D, h, w)``.

        Raises:
            ValueError: ``images`` is not ``(B, in_channels, image_size, image_size)`` float.
        """
        self._check_images(images)
        return self.encoder(images)

    def quantize(self, z_e: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Nearest-code quantization (van den Oord et al. 2017, eq. 1-2).

        ``z_e`` float ``(B, D, h, w)`` -> ``(z_q, indices, commit_loss)``: ``z_q`` float32
        ``(B, D, h, w)`` (straight-through in training mode: value ``e_k``, gradient to ``z_e``),
        ``indices`` int64 ``(B, h, w)``, ``commit_loss`` float32 scalar
        ``commitment_weight * mean ||z_e - sg[e_k]||^2`` (the library's loss in training mode;
        computed here in eval mode, where the library returns 0).

        In training mode this updates the codebook after quantizing (k-means init on the first
        call, an EMA step, dead-code restarts), so the returned ``z_q``/``indices`` refer to the
        codebook as it was before this call; tokens for the prior come from :meth:`tokenize`.
        Runs in float32 with autocast off.

        Raises:
            ValueError: ``z_e`` is not ``(B, codebook_dim, h, w)``.
            RuntimeError: eval mode before k-means init (no training batch seen yet).
        """
        self._check_latents(z_e, "z_e")
        if not self.quantizer.training and not self.codebook_initialized:
            raise RuntimeError("the codebook is not initialised yet (kmeans_init=True): run one "
                               "training-mode forward first; k-means uses the first training batch")
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            z_e = z_e.float()
            z_q, indices, commit_loss = self.quantizer(z_e)
            if not self.quantizer.training:  # the library returns 0 outside training
                commit_loss = self.config.commitment_weight * F.mse_loss(z_e, z_q)
        return z_q, indices, commit_loss

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """``D(z_q)``: float ``(B, D, h, w)`` -> images float ``(B, C, H, W)``, not clamped.

        Raises:
            ValueError: ``z_q`` is not ``(B, codebook_dim, h, w)``.
        """
        self._check_latents(z_q, "z_q")
        return self.decoder(z_q)

    def forward(self, images: torch.Tensor) -> VQVAEOutput:
        """Encode, quantize, decode: images float ``(B, C, H, W)`` in [-1, 1] ->
        :class:`VQVAEOutput` (``sample``, ``indices`` ``(B, h, w)``, ``commit_loss``).

        The training loss is ``mse(sample, images) + commit_loss`` (eq. 3); the codebook learns
        by EMA inside this call in training mode (see :meth:`quantize`).

        Raises:
            ValueError: wrong image shape (see :meth:`encode`).
        """
        z_q, indices, commit_loss = self.quantize(self.encode(images))
        return VQVAEOutput(sample=self.decode(z_q), indices=indices, commit_loss=commit_loss)

    # -- tokens for the AR prior -------------------------------------------------------------
    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """Images float ``(B, C, H, W)`` in [-1, 1] -> tokens int64 ``(B, h*w)`` in
        ``[0, codebook_size)``, raster (row-major) order: token ``r*w + c`` is grid cell
        ``(r, c)``.

        Quantizes in eval mode whatever the module's mode (then restores every submodule's
        mode), so the codebook and its EMA statistics are never changed.

        Raises:
            ValueError: wrong image shape (see :meth:`encode`).
            RuntimeError: the codebook was never initialised (no training batch seen).
        """
        self._check_images(images)
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            _, indices, _ = self.quantize(self.encode(images))
        finally:
            for m, mode in modes:
                m.training = mode
        return indices.reshape(indices.shape[0], -1)  # (B, h, w) -> (B, h*w), row-major

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens int ``(B, h*w)`` (raster order) or ``(B, h, w)`` in ``[0, codebook_size)`` ->
        images float ``(B, C, H, W)`` clamped to [-1, 1].

        Raises:
            ValueError: not an integer tensor of shape ``(B, h*w)`` or ``(B, h, w)``, or a token
                outside ``[0, codebook_size)``.
        """
        h, w = self.token_grid
        if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() \
                or tokens.is_complex() or tokens.dtype == torch.bool:
            got = tokens.dtype if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be an integer tensor, got {got}")
        if not ((tokens.ndim == 2 and tokens.shape[1] == h * w)
                or (tokens.ndim == 3 and tuple(tokens.shape[1:]) == (h, w))):
            raise ValueError(f"tokens must be (B, {h * w}) or (B, {h}, {w}), "
                             f"got {tuple(tokens.shape)}")
        K = self.config.codebook_size
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= K):
            raise ValueError(f"tokens must be in [0, {K}), got values in "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        indices = tokens.reshape(tokens.shape[0], h, w).long().to(self.codebook.device)
        z_q = self.quantizer.get_codes_from_indices(indices)  # (B, D, h, w)
        return self.decode(z_q).clamp(-1, 1)


# -- metrics ---------------------------------------------------------------------------------
def codebook_usage(indices: torch.Tensor, codebook_size: int) -> Dict[str, float]:
    """Code usage over *all* ``indices`` given (pass a whole split, not one batch).

    Args:
        indices: int tensor of any shape, values in ``[0, codebook_size)``.
        codebook_size: ``K``.

    Returns:
        ``{"used": int, "fraction": used / K, "perplexity": exp(H)}`` with ``H = -sum_k p_k ln
        p_k`` the entropy (nats) of the empirical code distribution (``0 ln 0 = 0``); perplexity
        is 1 if one code is used and ``K`` if all are used equally (Razavi et al. 2019 report it).

    Raises:
        ValueError: empty or non-integer ``indices``, a value out of range, or
            ``codebook_size < 1``.
    """
    codebook_size = check_int("codebook_size", codebook_size)
    if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.numel() == 0:
        raise ValueError("indices must be a non-empty integer tensor")
    flat = indices.reshape(-1).long()
    if int(flat.min()) < 0 or int(flat.max()) >= codebook_size:
        raise ValueError(f"indices must be in [0, {codebook_size}), got values in "
                         f"[{int(flat.min())}, {int(flat.max())}]")
    counts = torch.bincount(flat.cpu(), minlength=codebook_size).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    used = int((counts > 0).sum())
    return {"used": used, "fraction": used / codebook_size, "perplexity": float(entropy.exp())}


@torch.no_grad()
def reconstruction_metrics(model: VQVAE, images: torch.Tensor,
                           batch_size: int = 500) -> Dict[str, float]:
    """Reconstruction quality and code usage of ``model`` over a whole split.

    Each image goes through ``decode_tokens(tokenize(x))`` (eval-mode quantizer, output clamped to
    [-1, 1], exactly what the AR pipeline decodes); both images are then mapped to [0, 1].

    Args:
        model: a trained :class:`VQVAE` (its mode is left as it was).
        images: float ``(N, C, H, W)`` in [-1, 1].
        batch_size: images per forward.

    Returns:
        ``{"mse", "psnr", "codebook_used", "codebook_fraction", "codebook_perplexity"}``:
        ``mse`` is the mean squared error per pixel **on the [0, 1] scale** (a quarter of the
        [-1, 1]-scale MSE), averaged over all pixels of the split; ``psnr = 10 log10(1 / mse)`` in
        dB is the PSNR **of that mean MSE** (not the mean of per-image PSNRs, which is higher
        for the same data); the codebook entries are :func:`codebook_usage` over all tokens.

    Raises:
        ValueError: ``images`` of the wrong shape for ``model``, values outside [-1, 1], or
            ``batch_size < 1``.
    """
    batch_size = check_int("batch_size", batch_size)
    model._check_images(images)
    if images.numel() == 0:
        raise ValueError("images is empty")
    if float(images.min()) < -1 or float(images.max()) > 1:
        raise ValueError(f"images must be in [-1, 1], got [{float(images.min()):.3g}, "
                         f"{float(images.max()):.3g}]")
    device = model.codebook.device
    sq_err, tokens = 0.0, []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        t = model.tokenize(x)
        x_hat = model.decode_tokens(t)
        sq_err += float(((x_hat.double() - x.double()) / 2).square().sum())  # [0, 1] scale
        tokens.append(t.cpu())
    mse = sq_err / images.numel()
    usage = codebook_usage(torch.cat(tokens), model.config.codebook_size)
    return {"mse": mse, "psnr": 10 * math.log10(1 / mse) if mse > 0 else math.inf,
            **{f"codebook_{k}": v for k, v in usage.items()}}
