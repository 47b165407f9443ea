"""One pipeline per family over one contract (:mod:`~diffusion.pipelines.base`): the diffusion
pipeline (:mod:`~diffusion.pipelines.diffusion`), the GAN (:mod:`~diffusion.pipelines.gan`), the
VQ-VAE + transformer prior (:mod:`~diffusion.pipelines.autoregressive`), and
:func:`~diffusion.pipelines.loading.load_pipeline` for any saved one."""
