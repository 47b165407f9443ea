"""Networks only (no sampling loops): the diffusion U-Net builders (:mod:`~diffusion.models.unet`),
the GAN's generator and discriminator (:mod:`~diffusion.models.gan`), the VQ-VAE tokenizer
(:mod:`~diffusion.models.vqvae`), the transformer prior over its tokens
(:mod:`~diffusion.models.prior`) and the evaluation classifier
(:mod:`~diffusion.models.classifier`). Each family's pipeline (:mod:`diffusion.pipelines`)
combines them."""
