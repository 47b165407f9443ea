"""``diffusion/precision.py``: the ``precision=`` rule ("auto" / "bf16" / "fp32"), the native-bf16
detector, and the fidelity of bf16 on the shipped models (bf16 images close to fp32 ones).

(Named ``test_network_precision.py``: ``tests/training/test_precision.py`` is the training
loop's mixed precision, and test files need distinct names.)
"""

from __future__ import annotations

import pytest
import torch

import diffusion.precision as precision
from diffusion.paths import default_ar_path, default_gan_path, default_model_path
from diffusion.pipelines.base import generators_from_seeds
from diffusion.pipelines.loading import load_pipeline
from diffusion.precision import (PRECISION_ENV, PRECISIONS, check_precision, cpu_flags,
                                 native_bf16, network_autocast, precision_name, resolve_precision)


@pytest.fixture
def no_env(monkeypatch):
    """The suite pins "auto" to fp32 (tests/conftest.py); these tests look at the rule itself."""
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    return monkeypatch


def with_flags(monkeypatch, *flags):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))


# --- the rule -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["half", "BF16", "fp16", "", None, 16, torch.bfloat16])
def test_unknown_precision_is_refused_naming_the_choices(bad):
    with pytest.raises(ValueError, match=r"precision must be one of \('auto', 'bf16', 'fp32'\)"):
        resolve_precision(bad, "cpu")


def test_explicit_choices_resolve_the_same_on_every_device(no_env):
    for device in ("cpu", "meta"):
        assert resolve_precision("bf16", device) == torch.bfloat16
        assert resolve_precision("fp32", device) is None
    assert [check_precision(p) for p in PRECISIONS] == list(PRECISIONS)


@pytest.mark.parametrize("flags, native", [(("avx512f", "avx512_bf16"), True),
                                           (("amx_tile", "amx_bf16"), True),
                                           (("avx2", "avx512f"), False), ((), False)])
def test_auto_is_bf16_exactly_where_the_cpu_has_native_bf16(no_env, flags, native):
    with_flags(no_env, *flags)
    assert native_bf16("cpu") is native
    assert resolve_precision("auto", "cpu") == (torch.bfloat16 if native else None)


def test_auto_on_other_devices(no_env):
    with_flags(no_env, "avx512_bf16")
    assert native_bf16("meta") is False and resolve_precision("auto", "meta") is None
    if not torch.cuda.is_available():
        assert native_bf16("cuda") is False


def test_the_environment_variable_decides_auto_but_not_explicit_choices(no_env):
    with_flags(no_env, "avx512_bf16")
    no_env.setenv(PRECISION_ENV, "fp32")
    assert resolve_precision("auto", "cpu") is None
    assert resolve_precision("bf16", "cpu") == torch.bfloat16
    no_env.setenv(PRECISION_ENV, "bf16")
    with_flags(no_env)
    assert resolve_precision("auto", "cpu") == torch.bfloat16
    no_env.setenv(PRECISION_ENV, "half")
    with pytest.raises(ValueError, match=r"\$DIFFUSION_PRECISION must be one of"):
        resolve_precision("auto", "cpu")


def test_cpu_flags_are_read_from_the_cpuinfo_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(info)) == {"fpu", "avx512f", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "absent")) == frozenset()


def test_precision_name_inverts_explicit_choices():
    assert precision_name(None) == precision_name(torch.float32) == "fp32"
    assert precision_name(torch.bfloat16) == "bf16"
    with pytest.raises(ValueError, match="torch.bfloat16 or None"):
        precision_name(torch.float16)


def test_network_autocast_is_a_no_op_for_float32():
    layer = torch.nn.Linear(3, 3)
    with network_autocast(None, "cpu"):
        assert layer(torch.randn(1, 3)).dtype == torch.float32
    with network_autocast(torch.bfloat16, "cpu"):
        assert layer(torch.randn(1, 3)).dtype == torch.bfloat16


# --- fidelity on the shipped models (the figures are in docs/speed.md) --------------------------

def cosine_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each pair of images, as the networks see them: [-1, 1]."""
    a, b = (x.flatten(1).double() * 2 - 1 for x in (a, b))
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


def test_bf16_diffusion_images_are_close_to_fp32_ones():
    """8 classes, DDIM (eta 0, deterministic) 10 steps, guidance 2: measured min cosine 0.9998,
    mean |difference| 0.003 of the [0, 1] range."""
    pipe = load_pipeline(default_model_path(), quiet=True)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(class_labels=list(range(8)), num_inference_steps=10, guidance_scale=2.0,
              sampler="ddim", output_type="pt")
    fp32, bf16 = (pipe(**kw, generator=generators_from_seeds(range(8)), precision=p).images
                  for p in ("fp32", "bf16"))
    assert bf16.dtype == torch.float32
    assert cosine_per_image(fp32, bf16).min() > 0.99
    assert 0 < (fp32 - bf16).abs().mean() < 0.01   # bf16 did run: the images are not identical


def test_bf16_gan_images_are_close_to_fp32_ones():
    """Measured min cosine 0.99998."""
    pipe = load_pipeline(default_gan_path(), quiet=True)
    fp32, bf16 = (pipe(class_labels=list(range(8)), generator=generators_from_seeds(range(8)),
                       output_type="pt", precision=p).images for p in ("fp32", "bf16"))
    assert cosine_per_image(fp32, bf16).min() > 0.99
    assert (fp32 - bf16).abs().max() > 0


def test_bf16_ar_prior_gives_the_fp32_next_token_distribution():
    """Sampled tokens are a poor measure (one flipped draw changes every later token: greedy
    decoding agreed on 83% of tokens, first divergence at positions 8-32 of 49, in 6 of 8 images),
    so this compares what sampling draws from: the prior's next-token distribution at every
    position of 8 fp32 greedy token grids (teacher-forced). Measured: logit cosine >= 0.99998,
    KL(fp32 || bf16) <= 4e-4 nats, same argmax at 97.7% of positions."""
    pipe = load_pipeline(default_ar_path(), quiet=True)
    prior = pipe.prior.eval()
    tokens = []
    pipe.vqvae.decode_tokens = lambda t: tokens.append(t) or torch.zeros(len(t), 1, 28, 28)
    pipe(class_labels=list(range(8)), do_sample=False, output_type="pt", precision="fp32")
    prefix = prior.prefix_ids(torch.arange(8), 8)
    inputs = torch.cat([prefix, tokens[0].reshape(8, -1)], dim=1)[:, :-1]      # (8, 49)
    with torch.no_grad():
        fp32 = prior(inputs, use_cache=False)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = prior(inputs, use_cache=False)[0].float()
    v = fp32.shape[-1]
    cosine = torch.nn.functional.cosine_similarity(fp32.reshape(-1, v), bf16.reshape(-1, v), dim=1)
    log_p, log_q = fp32.log_softmax(-1), bf16.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)                                 # (8, 49)
    assert cosine.min() > 0.999
    assert kl.max() < 1e-2 and kl.mean() < 1e-3
    assert (fp32.argmax(-1) == bf16.argmax(-1)).float().mean() > 0.9


# --- torch.compile ------------------------------------------------------------------------------

def compiler_missing() -> str:
    """Why inductor cannot compile on CPU here ('' if it can): it needs a C++ compiler."""
    import shutil

    try:
        import torch._inductor  # noqa: F401
    except Exception as e:  # pragma: no cover - a torch build without inductor
        return f"torch._inductor unavailable: {e}"
    return "" if any(shutil.which(c) for c in ("g++", "c++", "clang++")) else "no C++ compiler"


@pytest.mark.slow
@pytest.mark.skipif(bool(compiler_missing()), reason=compiler_missing() or "compiler available")
def test_compiled_network_runs_and_matches_eager():
    """``compile_network`` on a tiny seeded U-Net pipeline: same images as eager to float rounding
    (about 20-60 s of compiling on 2 busy CPU cores), and the module is still the saved one."""
    from conftest import make_pipe, seeded_unet

    pipe = make_pipe(seeded_unet())
    kw = dict(class_labels=[0, 1], num_inference_steps=2, sampler="ddim", output_type="pt",
              precision="fp32")
    eager = pipe(**kw, generator=generators_from_seeds(range(2))).images
    assert pipe.compile_network() is pipe
    unet_class = type(pipe.unet)
    compiled = pipe(**kw, generator=generators_from_seeds(range(2))).images
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=0)
    assert type(pipe.unet) is unet_class and pipe.unet._compiled_call_impl is not None
