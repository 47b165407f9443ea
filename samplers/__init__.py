"""How to draw from a learned distribution: diffusion samplers by name, and token decoding."""

from samplers.diffusion import (
    DEFAULT_SAMPLER,
    EDM_PREDICTION_TYPES,
    FLOW_PREDICTION_TYPES,
    PARAMETERISATIONS,
    PREDICTION_TYPES,
    SamplerSpec,
    build_sampler,
    check_parameterisation,
    check_prediction_type,
    clipping_options,
    edm_training_schedule,
    flow_training_schedule,
    is_distilled_sampler,
    list_samplers,
    nfe_for_steps,
    parameterisation_of,
    register_sampler,
    sampler_name,
    sampler_name_of,
    sampler_spec,
    samplers_for,
    steps_for_nfe,
    training_schedule,
)
from samplers.guidance import (
    DEFAULT_GUIDANCE,
    GuidanceMethod,
    GuidanceStep,
    build_guidance,
    guidance_options,
    list_guidance_methods,
    register_guidance,
)
from samplers.decoding import DecodeOutput, TokenModel, decode
from samplers.logits import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    build_logits_processors,
    classifier_free_guidance,
    reorder_cache,
)

__all__ = ["DEFAULT_SAMPLER", "EDM_PREDICTION_TYPES", "FLOW_PREDICTION_TYPES", "PARAMETERISATIONS", "PREDICTION_TYPES",
           "SamplerSpec", "build_sampler", "check_parameterisation", "check_prediction_type",
           "clipping_options", "edm_training_schedule", "flow_training_schedule", "is_distilled_sampler", "list_samplers", "nfe_for_steps",
           "parameterisation_of", "register_sampler", "sampler_name", "sampler_name_of",
           "sampler_spec", "samplers_for", "steps_for_nfe", "training_schedule",
           # guidance methods (samplers/guidance.py)
           "DEFAULT_GUIDANCE", "GuidanceMethod", "GuidanceStep", "build_guidance",
           "guidance_options", "list_guidance_methods", "register_guidance",
           # token decoding (samplers/decoding.py, samplers/logits.py)
           "DecodeOutput", "LogitsProcessorList", "TemperatureLogitsWarper", "TokenModel",
           "TopKLogitsWarper", "TopPLogitsWarper", "build_logits_processors",
           "classifier_free_guidance", "decode", "reorder_cache"]
