"""How to draw from a learned distribution: diffusion samplers by name (and, later, token decoding)."""

from samplers.diffusion import (
    DEFAULT_SAMPLER,
    PREDICTION_TYPES,
    SamplerSpec,
    build_sampler,
    check_prediction_type,
    list_samplers,
    nfe_for_steps,
    register_sampler,
    sampler_spec,
    steps_for_nfe,
    training_schedule,
)

__all__ = ["DEFAULT_SAMPLER", "PREDICTION_TYPES", "SamplerSpec", "build_sampler",
           "check_prediction_type", "list_samplers", "nfe_for_steps", "register_sampler",
           "sampler_spec", "steps_for_nfe", "training_schedule"]
