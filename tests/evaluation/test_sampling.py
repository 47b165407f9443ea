"""Generation for evaluation: per-image seeds and classes, the shard cache, resume, the split
across processes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import NUM_CLASSES, forward_spy, make_pipe, seeded_unet
from diffusion.evaluation.sampling import (check_class_prompts, generate_samples, image_conditions,
                                           iter_sample_shards, pipeline_fingerprint,
                                           sample_settings, settings_key)
from diffusion.pipelines.base import NonFiniteImagesError

KW = dict(call_kwargs=dict(sampler="ddim", num_inference_steps=3, guidance_scale=2.0),
          progress=False)


@pytest.fixture(scope="module")
def pipe():
    return make_pipe()


def test_labels_cycle_and_images_do_not_depend_on_batch_size(pipe):
    a = generate_samples(pipe, 7, batch_size=3, shard_size=4, **KW)
    b = generate_samples(pipe, 7, batch_size=7, shard_size=7, **KW)
    assert a.images.shape == (7, 1, 8, 8) and a.images.dtype == torch.uint8
    assert a.labels.tolist() == [i % NUM_CLASSES for i in range(7)]
    assert (a.images.int() - b.images.int()).abs().max() <= 1  # uint8 rounding of fp32 noise
    assert a.nfe == 3 and a.generated == 7 and a.seconds_per_image > 0


def test_image_i_equals_a_direct_pipeline_call_with_seed_plus_i(pipe):
    run = generate_samples(pipe, 4, seed=10, batch_size=4, **KW)
    out = pipe(class_labels=[3 % NUM_CLASSES], generator=[torch.Generator().manual_seed(13)], output_type="pt",
               **KW["call_kwargs"])
    direct = (out.images.clamp(0, 1) * 255).round().to(torch.uint8)
    assert torch.equal(run.images[3:4], direct)


def test_shorter_run_is_a_prefix_of_a_longer_one(pipe):
    short = generate_samples(pipe, 3, batch_size=2, shard_size=2, **KW)
    long = generate_samples(pipe, 6, batch_size=2, shard_size=2, **KW)
    assert torch.equal(short.images, long.images[:3])


def test_cache_is_read_back_without_network_calls(pipe, tmp_path):
    first = generate_samples(pipe, 5, shard_size=2, cache_dir=tmp_path, **KW)
    with forward_spy(pipe.unet) as calls:
        second = generate_samples(pipe, 5, shard_size=2, cache_dir=tmp_path, **KW)
    assert calls == [] and second.generated == 0 and first.generated == 5
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.seconds_per_image == pytest.approx(first.seconds_per_image)
    folder = next(tmp_path.iterdir())
    assert sorted(p.name for p in folder.iterdir()) == [
        "settings.json", "shard-00000.npz", "shard-00001.npz", "shard-00002-n1.npz"]
    assert json.loads((folder / "settings.json").read_text())["call_kwargs"]["sampler"] == "ddim"


def test_resume_regenerates_only_missing_shards(pipe, tmp_path):
    generate_samples(pipe, 6, shard_size=2, batch_size=2, cache_dir=tmp_path, **KW)
    folder = next(tmp_path.iterdir())
    (folder / "shard-00001.npz").unlink()
    (folder / ".tmp-half-written.npz").write_bytes(b"garbage")  # an interrupted write
    with forward_spy(pipe.unet) as calls:
        run = generate_samples(pipe, 6, shard_size=2, batch_size=2, cache_dir=tmp_path, **KW)
    assert run.generated == 2 and len(calls) == 3  # one batch of 2, three steps
    assert (folder / "shard-00001.npz").is_file()


def test_longer_run_regenerates_a_short_last_shard(pipe, tmp_path):
    generate_samples(pipe, 3, shard_size=2, cache_dir=tmp_path, **KW)
    run = generate_samples(pipe, 4, shard_size=2, cache_dir=tmp_path, **KW)
    assert run.generated == 2  # shard 1 was 1 image long, now 2
    again = generate_samples(pipe, 3, shard_size=2, cache_dir=tmp_path, **KW)
    assert again.generated == 0 and torch.equal(again.images, run.images[:3])


def test_a_shorter_run_reads_its_short_last_shard_from_a_longer_run(pipe, tmp_path):
    full = generate_samples(pipe, 4, shard_size=2, cache_dir=tmp_path, **KW)  # shards 0, 1 full
    with forward_spy(pipe.unet) as calls:
        prefix = generate_samples(pipe, 3, shard_size=2, cache_dir=tmp_path, **KW)
    assert calls == [] and prefix.generated == 0
    assert torch.equal(prefix.images, full.images[:3]) and torch.equal(prefix.labels, full.labels[:3])
    folder = next(tmp_path.iterdir())
    assert not (folder / "shard-00001-n1.npz").exists()  # read from shard-00001.npz, not copied


def test_a_short_last_shard_is_read_from_a_longer_short_one(pipe, tmp_path):
    seven = generate_samples(pipe, 7, shard_size=4, cache_dir=tmp_path, **KW)  # shard 1: n3
    with forward_spy(pipe.unet) as calls:
        six = generate_samples(pipe, 6, shard_size=4, cache_dir=tmp_path, **KW)
    assert calls == [] and six.generated == 0 and torch.equal(six.images, seven.images[:6])
    # seconds of the borrowed part are pro rata: 2 of the 3 images of shard 1
    folder = next(tmp_path.iterdir())
    import numpy as np
    with np.load(folder / "shard-00000.npz") as z0, np.load(folder / "shard-00001-n3.npz") as z1:
        expected = (float(z0["seconds"]) + float(z1["seconds"]) * 2 / 3) / 6
    assert six.seconds_per_image == pytest.approx(expected)


def test_the_saved_sampler_and_its_registry_name_share_the_cache(tmp_path):
    from samplers import build_sampler
    from diffusers import DDPMScheduler
    from diffusion.evaluation.sampling import equivalent_call_kwargs

    train = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    saved = make_pipe(scheduler=build_sampler("ddim", train))  # saved default: exactly "ddim"
    steps = dict(num_inference_steps=3, guidance_scale=2.0)
    assert equivalent_call_kwargs(saved, steps) == {**steps, "sampler": "ddim"}
    assert equivalent_call_kwargs(saved, {**steps, "sampler": "ddim"}) == steps
    assert equivalent_call_kwargs(saved, {**steps, "sampler": "euler"}) is None
    default = generate_samples(saved, 3, cache_dir=tmp_path, call_kwargs=steps, progress=False)
    with forward_spy(saved.unet) as calls:
        named = generate_samples(saved, 3, cache_dir=tmp_path, progress=False,
                                 call_kwargs={**steps, "sampler": "ddim"})
    assert calls == [] and named.generated == 0 and torch.equal(named.images, default.images)
    # and the other way round, in a fresh cache
    other = tmp_path / "other"
    generate_samples(saved, 3, cache_dir=other, progress=False, call_kwargs={**steps, "sampler": "ddim"})
    with forward_spy(saved.unet) as calls:
        again = generate_samples(saved, 3, cache_dir=other, call_kwargs=steps, progress=False)
    assert calls == [] and torch.equal(again.images, default.images)
    # a saved scheduler with options the registry's build lacks is not the same sampler
    tweaked = make_pipe(scheduler=build_sampler("ddim", train, thresholding=True))
    assert equivalent_call_kwargs(tweaked, steps) is None


def test_cache_key_follows_what_changes_the_images(pipe):
    base = settings_key(sample_settings(pipe, KW["call_kwargs"], 0, 500, None))
    changed = [
        sample_settings(pipe, {**KW["call_kwargs"], "sampler": "euler"}, 0, 500, None),
        sample_settings(pipe, {**KW["call_kwargs"], "num_inference_steps": 4}, 0, 500, None),
        sample_settings(pipe, {**KW["call_kwargs"], "guidance_scale": 3.0}, 0, 500, None),
        sample_settings(pipe, KW["call_kwargs"], 1, 500, None),
        sample_settings(pipe, KW["call_kwargs"], 0, 250, None),
        sample_settings(pipe, KW["call_kwargs"], 0, 500, torch.bfloat16),
        sample_settings(make_pipe(seeded_unet(seed=1)), KW["call_kwargs"], 0, 500, None),
    ]
    keys = {settings_key(s) for s in changed}
    assert base not in keys and len(keys) == len(changed)
    assert pipeline_fingerprint(pipe) == pipeline_fingerprint(make_pipe())


def test_shards_are_split_round_robin_across_processes(pipe, tmp_path):
    class Stop(Exception):
        pass

    def fake(rank):
        waits = []

        def wait():
            waits.append(1)
            if len(waits) == 2:
                raise Stop  # stop right after this process's share, before reading the others
        return SimpleNamespace(num_processes=2, process_index=rank, wait_for_everyone=wait)

    for rank in (0, 1):
        with pytest.raises(Stop):
            list(iter_sample_shards(pipe, 7, shard_size=2, cache_dir=tmp_path / f"r{rank}",
                                    accelerator=fake(rank), **KW))
    names = lambda r: sorted(p.name for p in next((tmp_path / f"r{r}").iterdir()).glob("*.npz"))
    assert names(0) == ["shard-00000.npz", "shard-00002.npz"]
    assert names(1) == ["shard-00001.npz", "shard-00003-n1.npz"]


def nan_after(pipe, calls: int, label: int):
    """A U-Net forward hook: from forward call ``calls`` on, conditional rows of class ``label``
    predict NaN. Returns the hook's handle."""
    seen = []

    def hook(_module, _args, kwargs, output):
        seen.append(1)
        if len(seen) > calls:
            output.sample[kwargs["class_labels"] == label] = float("nan")
        return output

    return pipe.unet.register_forward_hook(hook, with_kwargs=True)


def test_a_nonfinite_image_raises_with_its_run_index_and_seed_and_leaves_no_shard(tmp_path):
    """Shard 0 (images 0..2) is cached; in shard 1 (images 3..5, one batch) image 4 (class 1)
    turns NaN: the error names it by run index and seed, and shard 1 is not written."""
    pipe = make_pipe()
    nan_after(pipe, calls=3, label=1)              # 3 steps per batch: shard 1's forwards on
    with pytest.raises(NonFiniteImagesError) as info:
        generate_samples(pipe, 6, seed=10, batch_size=3, shard_size=3, cache_dir=tmp_path, **KW)
    message = str(info.value)
    assert "in 1 of 3 images (indices [1]), from sampler 'ddim': first at denoising step 0" in message
    assert message.endswith("In this run: images [4] (seeds [14]) of the shard of images 3..5, "
                            "none of which was cached (shards before it are kept).")
    assert info.value.indices == [4]
    folder = next(tmp_path.iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["settings.json", "shard-00000.npz"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_samples=0), "num_samples"),
    (dict(num_samples=4, batch_size=0), "batch_size"),
    (dict(num_samples=4, shard_size=-1), "shard_size"),
    (dict(num_samples=4, accelerator=SimpleNamespace(num_processes=2, process_index=0)),
     "cache_dir"),
])
def test_bad_arguments_raise_before_any_generation(pipe, kwargs, match):
    with forward_spy(pipe.unet) as calls, pytest.raises(ValueError, match=match):
        list(iter_sample_shards(pipe, **kwargs, **KW))
    assert calls == []


def test_fingerprint_does_not_depend_on_where_the_model_was_loaded_from(pipe, tmp_path):
    from diffusion.pipelines.diffusion import DiffusionImagePipeline

    for folder in ("a", "b/c"):
        pipe.save_pretrained(tmp_path / folder)
    a = DiffusionImagePipeline.from_pretrained(tmp_path / "a")
    b = DiffusionImagePipeline.from_pretrained(tmp_path / "b" / "c")
    assert a.unet.config._name_or_path != b.unet.config._name_or_path
    assert pipeline_fingerprint(a) == pipeline_fingerprint(b) == pipeline_fingerprint(pipe)


def test_shipped_model_keeps_the_fingerprint_of_its_committed_evaluations():
    """Reference value: the evaluation study's results (docs/results/evaluation/runs/*.json) name
    the shipped model's fingerprint; it must not change while the weights do not (absent
    optional components, e.g. a class model's empty text_encoder slot, are not hashed), or every
    cached sample set of that model is silently regenerated."""
    from diffusion import default_model_path
    from diffusion.pipelines.loading import load_pipeline

    runs = Path(__file__).resolve().parents[2] / "docs" / "results" / "evaluation" / "runs"
    recorded = {r.get("pipeline_fingerprint") for r in map(json.loads, map(Path.read_text,
                                                                      runs.glob("*.json")))
                if r.get("pipeline") == "DiffusionImagePipeline"}
    pipe = load_pipeline(default_model_path(), quiet=True)
    assert pipe.components["text_encoder"] is None
    assert recorded - {None} == {pipeline_fingerprint(pipe)[:16]} == {"6849b8156e778f89"}


# --- text-to-image runs: prompts per class ----------------------------------------------------

PROMPTS = [["a red apple", "an apple"], ["grinning face"], ["a blue car", "a car", "a truck"]]


def test_image_conditions_cycle_classes_and_each_class_s_prompts():
    assert image_conditions(0, 3, 3) == {"class_labels": [0, 1, 2]}
    assert image_conditions(2, 5, None) == {"num_images_per_prompt": 3}
    got = image_conditions(0, 12, None, PROMPTS)["prompt"]
    # image i: class i % 3, prompt (i // 3) % len(prompts of that class)
    assert got == ["a red apple", "grinning face", "a blue car", "an apple", "grinning face",
                   "a car", "a red apple", "grinning face", "a truck", "an apple",
                   "grinning face", "a blue car"]
    assert image_conditions(7, 9, None, PROMPTS)["prompt"] == got[7:9]


def test_text_run_labels_images_by_prompt_class_and_matches_direct_calls(tmp_path):
    from conftest import make_text_pipe

    pipe = make_text_pipe()
    run = generate_samples(pipe, 7, batch_size=3, shard_size=4, class_prompts=PROMPTS,
                           cache_dir=tmp_path, **KW)
    assert run.labels.tolist() == [i % 3 for i in range(7)] and run.images.shape == (7, 1, 8, 8)
    prompts = image_conditions(0, 7, None, PROMPTS)["prompt"]
    out = pipe(prompt=prompts, generator=[torch.Generator().manual_seed(i) for i in range(7)],
               output_type="pt", **KW["call_kwargs"])
    assert (run.images.int() - (out.images.clamp(0, 1) * 255).round().int()).abs().max() <= 1
    settings = json.loads(next(tmp_path.glob("*/settings.json")).read_text())
    assert settings["class_prompts"] == PROMPTS
    # The prompts are part of the cache key; runs without prompts keep their old keys.
    keys = {settings_key(sample_settings(pipe, KW["call_kwargs"], 0, 4, None, p))
            for p in (PROMPTS, PROMPTS[::-1], None)}
    assert len(keys) == 3
    assert "class_prompts" not in sample_settings(pipe, KW["call_kwargs"], 0, 4, None)


@pytest.mark.parametrize("bad", [[], [[]], [["a"], [3]], [["a"], []]])
def test_malformed_class_prompts_raise(bad):
    with pytest.raises(ValueError, match="class_prompts must be"):
        check_class_prompts(bad)
    assert check_class_prompts(["a", ["b", "c"]]) == [["a"], ["b", "c"]]


def test_cache_key_holds_the_guidance_method_unless_it_is_plain_cfg(pipe, tmp_path):
    """Plain CFG (named or not, or saved as the default) keeps the key of no guidance; any other
    method or option changes it; a saved default counts like a named one; autoguidance's guide
    is keyed by its weights, not its folder."""
    from samplers import build_guidance

    call = KW["call_kwargs"]
    base = settings_key(sample_settings(pipe, call, 0, 500, None))
    for same in ("cfg", build_guidance("cfg"), {"name": "cfg", "options": {}}):
        assert settings_key(sample_settings(pipe, {**call, "guidance": same}, 0, 500, None)) == base
    weak = make_pipe(seeded_unet(seed=1))
    weak.save_pretrained(tmp_path / "a")
    weak.save_pretrained(tmp_path / "b")
    methods = ["apg", build_guidance("apg", eta=0.5), "interval", "cfg-zero-star",
               build_guidance("cfg", guidance_rescale=0.7),
               build_guidance("autoguidance", guide_model=str(tmp_path / "a"))]
    keys = {settings_key(sample_settings(pipe, {**call, "guidance": m}, 0, 500, None))
            for m in methods}
    assert base not in keys and len(keys) == len(methods)
    moved = sample_settings(pipe, {**call, "guidance": build_guidance(
        "autoguidance", guide_model=str(tmp_path / "b"))}, 0, 500, None)
    assert settings_key(moved) in keys and moved["guidance"]["name"] == "autoguidance"
    saved = make_pipe()
    saved.set_guidance("apg")
    assert settings_key(sample_settings(saved, call, 0, 500, None)) == \
        settings_key(sample_settings(pipe, {**call, "guidance": "apg"}, 0, 500, None))


@pytest.mark.parametrize("auto_means", ["fp32", "bf16"])
def test_evaluation_passes_an_explicit_precision_whatever_auto_means(pipe, monkeypatch, auto_means):
    """autocast_dtype None -> precision="fp32", bfloat16 -> "bf16": the network's autocast does
    not follow the machine's "auto", so a cache key means the same images everywhere."""
    monkeypatch.setenv("DIFFUSION_PRECISION", auto_means)
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda *_: seen.append(
        torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))
    try:
        for dtype in (None, torch.bfloat16):
            seen.clear()
            generate_samples(pipe, 2, batch_size=2, autocast_dtype=dtype, **KW)
            assert set(seen) == {dtype}
    finally:
        hook.remove()
