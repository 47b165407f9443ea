"""How to draw from a learned distribution: diffusion samplers by name (and, later, token decoding)."""

from samplers.diffusion import (
    DEFAULT_SAMPLER,
    SamplerSpec,
    build_sampler,
    list_samplers,
    register_sampler,
    sampler_spec,
    training_schedule,
)

__all__ = ["DEFAULT_SAMPLER", "SamplerSpec", "build_sampler", "list_samplers", "register_sampler",
           "sampler_spec", "training_schedule"]
