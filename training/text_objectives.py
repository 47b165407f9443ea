"""Text-to-image diffusion objective (``train.objective=text-diffusion``): the denoising loss of
:class:`training.objectives.DiffusionObjective` with a frozen text encoder's per-token hidden
states as cross-attention context (Rombach et al. 2022, sec. 3.3; frozen encoder as in Saharia et
al. 2022) instead of a class label.

Data: a captioned dataset (``data.name`` = ``fashion-mnist-captions``, ``emoji`` or
``image-folder-captions``; :mod:`diffusion.data.captions`) whose batches are ``(images, captions)``.
Each caption is replaced by the empty prompt (the null condition) with probability
``text.caption_drop_prob``, so guidance works. Captions are encoded through one
:class:`diffusion.conditioning.PromptEmbeddingCache` per run: each distinct caption passes the
encoder once (a fixed caption set costs the encoder once, not every step).
"""

from __future__ import annotations

import torch

from training.objectives import DiffusionObjective, Objective


class TextDiffusionObjective(DiffusionObjective):
    """Train a ``UNet2DConditionModel`` (``build_unet(cross_attention_dim=hidden size)``, no
    class table) on captioned images; samples and export use a
    :class:`~diffusion.pipelines.diffusion.DiffusionImagePipeline` holding the text encoder and tokenizer."""

    def __init__(self, cfg, num_classes, class_names=()):
        Objective.__init__(self, cfg, num_classes, class_names)
        from diffusion.conditioning import (PromptEmbeddingCache, load_text_encoder,
                                            text_encoder_hidden_size)
        from diffusion.models.unet import build_unet
        from training.objectives import training_scheduler

        m = cfg.model
        self.tokenizer, self.text_encoder = load_text_encoder(cfg.text.encoder_path)
        self.modules["model"] = build_unet(
            sample_size=cfg.data.image_size, in_channels=cfg.data.channels, num_classes=None,
            block_out_channels=m.block_out_channels, layers_per_block=m.layers_per_block,
            attention_levels=m.attention_levels, attention_head_dim=m.attention_head_dim,
            norm_num_groups=m.norm_num_groups, dropout=m.dropout,
            cross_attention_dim=text_encoder_hidden_size(self.text_encoder))
        self.noise_scheduler = training_scheduler(cfg)
        self.prompt_cache = PromptEmbeddingCache(self.tokenizer, self.text_encoder)

    def loss(self, optimizer, modules, batch, generator):
        x0, captions = batch
        # 1. Caption dropout -> the empty prompt, the null condition (Ho & Salimans 2022, Alg. 1).
        drop = (torch.rand(len(captions), generator=generator) < self.cfg.text.caption_drop_prob).tolist()
        captions = ["" if d else c for c, d in zip(captions, drop)]
        hidden, mask = self.prompt_cache(captions)                     # (B, L, D), (B, L)
        return self.denoising_loss(modules["model"], x0, generator,
                                   encoder_hidden_states=hidden.to(x0.device, x0.dtype),
                                   encoder_attention_mask=mask.to(x0.device))

    def pipeline(self, unet):
        from diffusion.pipelines.diffusion import DiffusionImagePipeline
        from samplers.diffusion import build_sampler

        pipe = DiffusionImagePipeline(unet=unet, scheduler=build_sampler(self.cfg.diffusion.sampler,
                                                                         self.noise_scheduler),
                                      text_encoder=self.text_encoder.to(unet.device),
                                      tokenizer=self.tokenizer)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def evaluate(self, modules, generator):
        """A grid: one row per ``text.sample_prompts`` entry, 10 images each, EMA weights."""
        from torchvision.utils import make_grid

        d, unet, n = self.cfg.diffusion, modules["model"], 10
        prompts = list(self.cfg.text.sample_prompts)
        was_training = unet.training
        unet.eval()
        seeds = torch.randint(0, 2**31, (len(prompts) * n,), generator=generator).tolist()
        out = self.pipeline(unet)(prompt=prompts, num_images_per_prompt=n,
                                  num_inference_steps=d.sample_steps, guidance_scale=d.guidance_scale,
                                  generator=[torch.Generator().manual_seed(s) for s in seeds],
                                  output_type="pt")
        unet.train(was_training)
        return {}, make_grid(out.images, nrow=n, padding=1)
