"""The pipeline contract (DESIGN.md "Contracts"; ``diffusion/pipelines/base.py``) run over
every family of ``families.FAMILIES``, with no per-family branch: seeding, batch invariance,
save / load, output types, ``num_images_per_prompt``, the bad-argument catalogue (refused by
name before any network forward), class ids, and non-finite images (raised with the pipeline,
stage and affected images named, or returned flagged on request).

What a family does not take (a prompt for a class family, class labels for a text U-Net without
a class table) comes from its table entry, so the catalogues below are built from data.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from families import FAMILIES, WEIGHTS, Family, forward_calls, networks
from diffusion.pipelines.base import ImagePipeline, NonFiniteImagesError, generators_from_seeds
from diffusion.pipelines.loading import load_pipeline

REPO = Path(__file__).resolve().parents[2]

#: Batch invariance tolerance on float [0, 1] ("pt") images. fp32 convolutions and matmuls pick
#: kernels by batch size, so a row can round differently by a few ulps (seen here: <= 5e-7, about
#: 4 ulps at 1.0, for the diffusion families after two DDPM steps; ~6e-8 for GAN and AR). A real
#: batch dependence (a shared generator, BatchNorm batch statistics, rows leaking into each other)
#: moves pixels by ~1e-2.
BATCH_ATOL = 1e-6

#: the old module paths kept for one release after the 0.2 layout change, plus every module that
#: calls ``diffusion._deprecated.moved(__name__, ...)``; a saved model_index.json names none.
DEPRECATED = {"diffusion.gan", "diffusion.pipeline", "diffusion.autoregressive", "diffusion.vqvae",
              "diffusion.unet"} | {
    ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    for top in ("diffusion", "samplers", "training") for p in (REPO / top).rglob("*.py")
    if "moved(__name__" in p.read_text()}

PIL_MODES = {1: "L", 3: "RGB"}
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


@pytest.fixture(params=FAMILIES, ids=lambda f: f.name)
def family(request) -> Family:
    return request.param


@pytest.fixture
def pipe(family) -> ImagePipeline:
    """A fresh tiny seeded pipeline of ``family``."""
    return family.build()


def seeds(n: int, offset: int = 0) -> list:
    return generators_from_seeds(range(offset, offset + n))


def pt(family: Family, pipe, **kwargs) -> torch.Tensor:
    """Float (N, C, H, W) images in [0, 1] of one call."""
    return family(pipe, output_type="pt", **kwargs).images


# --- (1) seeding ------------------------------------------------------------------------------

def test_same_seed_gives_the_same_images(family, pipe):
    cond = family.conditions(3)
    a = pt(family, pipe, **cond, generator=seeds(3))
    b = pt(family, pipe, **cond, generator=seeds(3))
    c = pt(family, pipe, **cond, generator=seeds(3, offset=50))
    assert torch.equal(a, b)                      # exact: same inputs, same batch, same kernels
    assert (a - c).abs().max() > 1e-3             # and the seed matters
    one = [pt(family, pipe, **cond, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*one)                      # one generator for the batch: same rule


# --- (2) batch invariance ---------------------------------------------------------------------

def test_an_image_does_not_depend_on_its_batch(family, pipe):
    """Image i of a batch (one generator per image) equals image i alone with its generator."""
    cond = family.conditions(4)                   # cycles: condition 0 again at index 3
    batch = pt(family, pipe, **cond, generator=seeds(4, offset=10))
    assert batch.shape == (4, *family.image_shape)
    for i in range(4):
        alone = pt(family, pipe, **{k: v[i:i + 1] for k, v in cond.items()},
                   generator=seeds(1, offset=10 + i))
        torch.testing.assert_close(alone[0], batch[i], atol=family.batch_atol or BATCH_ATOL,
                                   rtol=0, msg=f"image {i}")
    assert (batch[0] - batch[3]).abs().max() > 1e-3  # same condition, own generator, own image


# --- (3) save / load --------------------------------------------------------------------------

def component_entries(index: dict) -> dict:
    """``model_index.json``'s component entries ``name -> [module or library, class]``."""
    return {k: v for k, v in index.items()
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)}


def deprecated_entries(index: dict) -> dict:
    return {k: v for k, v in component_entries(index).items()
            if any(v[0] == d or v[0].startswith(d + ".") for d in DEPRECATED)}


def test_save_load_round_trip_gives_identical_images(family, pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    files = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith(WEIGHT_SUFFIXES)], files  # safetensors only
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            assert any(f.startswith(f"{name}/") and f.endswith(".safetensors") for f in files), name
    kw = dict(family.conditions(2), num_images_per_prompt=2)
    expected = pt(family, pipe, **kw, generator=seeds(4))
    for loaded in (load_pipeline(tmp_path, quiet=True), type(pipe).from_pretrained(tmp_path)):
        loaded.set_progress_bar_config(disable=True)
        assert type(loaded) is type(pipe)
        assert loaded.num_classes == pipe.num_classes
        assert loaded.config.class_names == pipe.config.class_names
        assert all(not m.training for m in networks(loaded))
        assert torch.equal(pt(family, loaded, **kw, generator=seeds(4)), expected)


def test_saved_model_index_names_only_current_modules(family, pipe, tmp_path):
    """Every component entry names the module its class is defined in now, never an old path."""
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == type(pipe).__name__
    assert deprecated_entries(index) == {}
    entries = component_entries(index)
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            library, cls = entries[name]
            assert cls == type(module).__name__, name
            assert type(module).__module__.split(".")[0] == library.split(".")[0], name
            if library.split(".")[0] in ("diffusion", "samplers"):   # our own: the exact module
                assert library == type(module).__module__, (name, library)


def shipped_folders() -> set:
    return {p.name for p in WEIGHTS.iterdir() if (p / "model_index.json").is_file()}


def test_every_shipped_pipeline_has_a_family():
    assert shipped_folders() == {f.shipped for f in FAMILIES}


@pytest.mark.parametrize("folder", sorted({f.shipped for f in FAMILIES}))
def test_shipped_model_index_names_only_current_modules(folder):
    index = json.loads((WEIGHTS / folder / "model_index.json").read_text())
    assert deprecated_entries(index) == {}


def test_tiny_pipeline_has_the_shipped_classes(family, pipe):
    """The tiny pipeline stands for its shipped family: same pipeline and network classes."""
    index = json.loads((WEIGHTS / family.shipped / "model_index.json").read_text())
    assert type(pipe).__name__ == index["_class_name"]
    nets = {name for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    assert nets == {name for name, m in component_entries(index).items()
                    if name not in ("scheduler", "tokenizer")}
    for name in nets:
        assert list(pipe.config[name]) == index[name], name


# --- (4) output types, nfe, num_images_per_prompt ---------------------------------------------

def test_output_types_agree_and_have_the_documented_layout(family, pipe):
    c, h, w = family.image_shape
    kw = family.conditions(2)
    out = {t: family(pipe, **kw, generator=seeds(2), output_type=t) for t in ("pt", "np", "pil")}

    images = out["pt"].images
    assert isinstance(images, torch.Tensor) and images.dtype == torch.float32
    assert images.shape == (2, c, h, w)
    assert images.min() >= 0 and images.max() <= 1

    array = out["np"].images
    assert isinstance(array, np.ndarray) and array.dtype == np.uint8
    assert array.shape == (2, h, w, c)
    np.testing.assert_array_equal(
        array, (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))

    pil = out["pil"].images
    assert isinstance(pil, list) and len(pil) == 2
    for image, a in zip(pil, array):
        assert isinstance(image, Image.Image)
        assert image.mode == PIL_MODES[c] and image.size == (w, h)  # PIL size is (width, height)
        np.testing.assert_array_equal(np.asarray(image).reshape(h, w, c), a)

    for o in out.values():
        assert type(o.nfe) is int and o.nfe >= 1
        assert o.nfe == family.nfe


def test_return_dict_false_gives_a_tuple_of_the_images(family, pipe):
    kw = family.conditions(2)
    out = family(pipe, **kw, generator=seeds(2), output_type="pt", return_dict=False)
    assert type(out) is tuple and len(out) == 1
    assert torch.equal(out[0], pt(family, pipe, **kw, generator=seeds(2)))


def test_num_images_per_prompt_repeats_conditions_in_place(family, pipe):
    """``[a, b]`` x 2 is ``[a, a, b, b]`` (not ``[a, b, a, b]``): same generators, same images."""
    (arg, (a, b)), = family.conditions(2).items()
    repeated = pt(family, pipe, **{arg: [a, b]}, num_images_per_prompt=2, generator=seeds(4))
    in_place = pt(family, pipe, **{arg: [a, a, b, b]}, generator=seeds(4))
    tiled = pt(family, pipe, **{arg: [a, b, a, b]}, generator=seeds(4))
    assert torch.equal(repeated, in_place)
    assert not torch.equal(repeated, tiled)       # the condition shows in the image


def test_a_single_condition_value_is_a_batch_of_one(family, pipe):
    (arg, (a,)), = family.conditions(1).items()
    assert torch.equal(pt(family, pipe, **{arg: a}, generator=seeds(1)),
                       pt(family, pipe, **{arg: [a]}, generator=seeds(1)))


# --- (5) the bad-argument catalogue ------------------------------------------------------------

#: bad values of each conditioning argument, for the families that take it
BAD_CONDITIONS = {
    "class_labels": lambda f: [("out-of-range", [f.num_classes]), ("negative", [-1]),
                               ("float", [0.5]), ("float-scalar", 1.0), ("bool", [True]),
                               ("bool-scalar", True), ("empty", []),
                               ("float-tensor", torch.tensor([0.0]))],
    "prompt": lambda f: [("empty", []), ("non-str-item", ["a", None]), ("int", 3)],
}

#: edge values each conditioning argument must accept (so the refusals above are not blanket)
ACCEPTED_CONDITIONS = {
    "class_labels": lambda f: [("last-class", [f.num_classes - 1]),
                               ("tensor", torch.tensor([f.num_classes - 1, 0]))],
    "prompt": lambda f: [("null-prompt", [""]), ("tuple", ("red apple", "a shoe"))],
}


def bad_cases(f: Family) -> list:
    """``(id, kwargs, argument the message must name)`` for family ``f``. Shared cases, the
    conditions it does not take, and bad values of the ones it takes (from its table entry)."""
    two = f.conditions(2)
    cases = [(f"num_images_per_prompt={v!r}", {**two, "num_images_per_prompt": v},
              "num_images_per_prompt") for v in (0, -1, True, 1.5, "2")]
    cases += [
        ("output_type=jpg", {**two, "output_type": "jpg"}, "output_type"),
        ("3-generators-for-2-images", {**two, "generator": seeds(3)}, "generator"),
        ("2-generators-for-2x2-images", {**two, "num_images_per_prompt": 2,
                                         "generator": seeds(2)}, "generator"),
        (f"no-{f.condition}", {}, f.condition),   # every family in the table is conditional
    ]
    cases += [(f"on_nonfinite={v!r}", {**two, "on_nonfinite": v}, "on_nonfinite")
              for v in ("ignore", "RAISE", None, True)]
    cases += [(f"precision={v!r}", {**two, "precision": v}, "precision")
              for v in ("half", "BF16", "float32", 16, True)]
    cases += [("on_nonfinite=flag-without-return_dict",   # the tuple would drop the flags
               {**two, "on_nonfinite": "flag", "return_dict": False}, "on_nonfinite")]
    cases += [(f"foreign-{arg}", {**two, arg: value}, arg)
              for arg, value in f.foreign_conditions().items()]
    cases += [(f"{arg}-{case}", {**two, arg: value}, arg)
              for arg in sorted(f.takes) for case, value in BAD_CONDITIONS[arg](f)]
    return cases


@pytest.mark.parametrize("family,kwargs,argument", [
    pytest.param(f, kwargs, argument, id=f"{f.name}-{case}")
    for f in FAMILIES for case, kwargs, argument in bad_cases(f)])
def test_bad_argument_is_refused_by_name_before_any_network_forward(family, pipe, kwargs,
                                                                     argument):
    with forward_calls(pipe) as calls:
        with pytest.raises((ValueError, TypeError), match=re.escape(argument)):
            family(pipe, **kwargs)
    assert calls == []


def test_the_forward_spy_sees_a_valid_call(family, pipe):
    """So that the zero-call assertion above can fail."""
    with forward_calls(pipe) as calls:
        family(pipe, **family.conditions(2), output_type="np")
    assert calls


@pytest.mark.parametrize("family,value", [
    pytest.param(f, {arg: value}, id=f"{f.name}-{arg}-{case}")
    for f in FAMILIES for arg in sorted(f.takes) for case, value in ACCEPTED_CONDITIONS[arg](f)])
def test_edge_conditions_are_accepted(family, pipe, value):
    v, = value.values()
    assert len(pt(family, pipe, **value, generator=seeds(len(v)))) == len(v)


# --- (6) class ids ----------------------------------------------------------------------------

def test_num_classes_and_class_names_match_the_table(family, pipe):
    assert pipe.num_classes == family.num_classes
    assert list(pipe.config.class_names or []) == list(family.class_names)
    assert len(family.class_names) == (family.num_classes or 0)


def test_class_id_by_id_and_by_name(family, pipe):
    for i, name in enumerate(family.class_names):
        assert pipe.class_id(i) == pipe.class_id(str(i)) == i
        assert pipe.class_id(name) == pipe.class_id(f" {name.upper()} ") == i
    for bad in (family.num_classes or 0, -1, "no such class", True):
        with pytest.raises(ValueError, match=re.escape(str(bad))):
            pipe.class_id(bad)


def test_class_labels_take_names_in_every_usual_spelling(family, pipe):
    """One resolver for the Python API and the CLI: names, '/'-alternatives, '_' / '-' / case
    variants and synthesize's '<id>_<name>' folders give the same images as the ids."""
    if "class_labels" not in family.takes or not family.class_names:
        pytest.skip("no class table")
    ids = list(range(len(family.class_names)))
    spellings = [[name, name.upper().replace(" ", "_"), f"{i}_{name.replace('/', '_')}",
                  name.split("/")[0]] for i, name in enumerate(family.class_names)]
    for variant in zip(*spellings):
        assert [pipe.class_id(v) for v in variant] == ids
    by_id = pt(family, pipe, class_labels=ids, generator=seeds(len(ids)))
    by_name = pt(family, pipe, class_labels=list(spellings[i][1] for i in ids),
                 generator=seeds(len(ids)))
    assert torch.equal(by_id, by_name)
    mixed = pt(family, pipe, class_labels=[family.class_names[0], 1], generator=seeds(2))
    torch.testing.assert_close(mixed, by_id[:2], atol=family.batch_atol or BATCH_ATOL,
                               rtol=0)  # batch of 2, not 3


def test_unknown_or_ambiguous_class_names_are_refused_naming_the_known_ones(family, pipe):
    if "class_labels" not in family.takes or not family.class_names:
        pytest.skip("no class table")
    with pytest.raises(ValueError, match=r"unknown class 'Sweater'.*ids 0\.\..*names"):
        pt(family, pipe, class_labels=["Sweater"], generator=seeds(1))
    with pytest.raises(ValueError, match=r"did you mean 'Trouser'"):
        pipe.class_id("trousr")


# --- (7) non-finite images --------------------------------------------------------------------

#: ``(n, indices)``: images of a call made non-finite by the family's ``inject_nan``
NAN_CASES = [pytest.param(3, [1], id="1-of-3"), pytest.param(4, [0, 3], id="2-of-4")]
OUTPUT_TYPES = ("pt", "np", "pil")


def nan_call(family: Family, pipe, n: int, indices: list) -> dict:
    """Call kwargs for ``n`` images of which ``indices`` hold NaN (``pipe`` may be corrupted);
    without ``generator``: pass fresh ones to each call (they advance)."""
    assert family.inject_nan is not None and family.nonfinite_stage, \
        f"family {family.name!r}: add inject_nan and nonfinite_stage to its table entry"
    return dict(family.conditions(n), **family.inject_nan(pipe, n, indices))


@pytest.mark.parametrize("output_type", OUTPUT_TYPES)
@pytest.mark.parametrize("n,indices", NAN_CASES)
def test_nonfinite_images_raise_naming_pipeline_stage_and_images(family, pipe, n, indices,
                                                                 output_type):
    kwargs = nan_call(family, pipe, n, indices)
    with pytest.raises(NonFiniteImagesError) as info:
        family(pipe, **kwargs, generator=seeds(n), output_type=output_type)
    error, message = info.value, str(info.value)
    assert isinstance(error, FloatingPointError)
    assert message.startswith(f"{type(pipe).__name__}: ")
    assert f"in {len(indices)} of {n} images (indices {indices})" in message
    assert f"from {family.nonfinite_stage}" in message
    assert "on_nonfinite='flag'" in message                  # and what to do about it
    assert (error.indices, error.num_images, error.pipeline) == (indices, n, type(pipe).__name__)
    copy = pickle.loads(pickle.dumps(error))                  # crosses process boundaries intact
    assert (str(copy), copy.indices, copy.stage) == (message, indices, error.stage)


@pytest.mark.parametrize("n,indices", NAN_CASES)
def test_flag_returns_nonfinite_images_with_their_indices(family, pipe, n, indices):
    """``pt`` keeps NaN in the flagged images; ``np`` / ``pil`` show it as 0, without a numpy
    cast warning; the other images are finite and every output type lists the same indices."""
    kwargs = nan_call(family, pipe, n, indices)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)         # numpy's "invalid value ... cast"
        out = {t: family(pipe, **kwargs, generator=seeds(n), output_type=t, on_nonfinite="flag")
               for t in OUTPUT_TYPES}
    for o in out.values():
        assert o.nonfinite == indices and o.nfe == family.nfe
    images = out["pt"].images
    flagged = ~torch.isfinite(images).flatten(1).all(dim=1)
    assert torch.nonzero(flagged).flatten().tolist() == indices
    assert torch.isnan(images[indices]).any()
    expected = (torch.nan_to_num(images, nan=0.0).permute(0, 2, 3, 1).numpy() * 255).round()
    np.testing.assert_array_equal(out["np"].images, expected.astype(np.uint8))
    c, h, w = family.image_shape
    for image, a in zip(out["pil"].images, out["np"].images):
        np.testing.assert_array_equal(np.asarray(image).reshape(h, w, c), a)


def test_finite_images_have_an_empty_flag_list_and_are_unchanged_by_flag(family, pipe):
    kw = family.conditions(2)
    default = family(pipe, **kw, generator=seeds(2), output_type="pt")
    flag = family(pipe, **kw, generator=seeds(2), output_type="pt", on_nonfinite="flag")
    assert default.nonfinite == [] and flag.nonfinite == []
    assert torch.equal(default.images, flag.images)
    assert family(pipe, **kw, generator=seeds(2), output_type="np").nonfinite == []


# --- (8) precision: only the network autocasts; the images stay float32 -------------------------

@contextmanager
def autocast_seen(pipe) -> Iterator[set]:
    """Yields a set that gets, for every network forward of the call, the CPU autocast dtype it
    ran under (``None``: no autocast)."""
    seen: set = set()

    def hook(_module, _args):
        seen.add(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)

    handles = [net.register_forward_pre_hook(hook) for net in networks(pipe)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", None),
                                              ("auto", None)])  # tests/conftest.py pins auto: fp32
def test_precision_sets_the_network_autocast_and_images_stay_float32(family, pipe, precision,
                                                                     dtype):
    with autocast_seen(pipe) as seen:
        images = pt(family, pipe, **family.conditions(2), generator=seeds(2), precision=precision)
    assert seen == {dtype}
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    assert not torch.is_autocast_enabled("cpu")   # nothing leaks out of the call


def test_auto_precision_follows_the_device_s_native_bf16(family, pipe, monkeypatch):
    import diffusion.precision as precision

    monkeypatch.delenv(precision.PRECISION_ENV)
    for native, dtype in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"} if native
                                                                      else {"avx2"}))
        with autocast_seen(pipe) as seen:
            pt(family, pipe, **family.conditions(1), generator=seeds(1))
        assert seen == {dtype}


def test_a_saved_precision_default_round_trips_and_a_call_overrides_it(family, pipe, tmp_path):
    pipe.set_precision("bf16")
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["precision"] == "bf16"
    loaded = load_pipeline(tmp_path, quiet=True)
    loaded.set_progress_bar_config(disable=True)
    for call, dtype in (({}, torch.bfloat16), ({"precision": "fp32"}, None)):
        with autocast_seen(loaded) as seen:
            pt(family, loaded, **family.conditions(1), generator=seeds(1), **call)
        assert seen == {dtype}
    with pytest.raises(ValueError, match="precision must be one of"):
        pipe.set_precision("fp16")
