"""Training a text-conditioned diffusion model through the one loop (training/objectives/diffusion.py):
captioned batches, caption dropout to the null prompt, the encoder once per distinct caption, and an
exported pipeline that generates from prompts."""

from __future__ import annotations

import pytest
import torch

from diffusion.pipelines.loading import load_pipeline
from training.config import load_config
from training.loop import Trainer
from training_helpers import TINY

pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _fresh_accelerate(fresh_accelerate_state):
    """No accelerate singletons leak between tests (fixture in tests/conftest.py)."""


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A tiny random BERT (hidden 16) saved with the real MiniLM tokenizer: fast, offline."""
    from diffusion.conditioning import build_tiny_text_encoder, load_tokenizer

    out = tmp_path_factory.mktemp("encoder")
    tokenizer = load_tokenizer()
    build_tiny_text_encoder(tokenizer.vocab_size, hidden_size=16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def text_cfg(encoder_dir, out, *overrides):
    return load_config(None, [*TINY, "model.attention_levels=[1]", "train.objective=text-diffusion",
                              "data.name=fashion-mnist-captions", "data.subset=64",
                              f"text.encoder_path={encoder_dir}", f"train.output_dir={out}",
                              "text.sample_prompts=[a sneaker,a bag]", *overrides])


def test_text_objective_trains_on_captions_and_exports_a_prompt_pipeline(encoder_dir, tmp_path):
    trainer = Trainer(text_cfg(encoder_dir, tmp_path, "train.max_steps=3"))
    unet = trainer.accelerator.unwrap_model(trainer.modules["model"])
    assert unet.config.cross_attention_dim == 16 and unet.config.num_class_embeds is None
    images, captions = next(iter(trainer.loader))
    assert images.shape == (16, 1, 28, 28) and isinstance(captions[0], str)
    final = trainer.run()
    # every distinct caption (and the null prompt) went through the encoder once, not every step
    cache = trainer.objective.prompt_cache
    assert cache.num_prompts_encoded == len(cache)
    pipe = load_pipeline(final, quiet=True)
    assert pipe.takes_text and pipe.text_encoder.config.hidden_size == 16
    out = pipe(prompt=["a photo of a sneaker", "a bag"], num_inference_steps=2,
               generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="pt")
    assert out.images.shape == (2, 1, 28, 28) and out.nfe == 2
    assert (tmp_path / "samples" / "step-0000003.png").is_file()


def test_caption_dropout_replaces_captions_by_the_null_prompt(encoder_dir, tmp_path):
    trainer = Trainer(text_cfg(encoder_dir, tmp_path, "text.caption_drop_prob=1.0"))
    seen = []
    real = trainer.objective.prompt_cache.__call__

    class Spy:
        def __call__(self, prompts):
            seen.append(list(prompts))
            return real(prompts)

    trainer.objective.prompt_cache = Spy()
    trainer.objective.loss("model", trainer.modules, next(iter(trainer.loader)),
                           torch.Generator().manual_seed(0))
    assert seen == [[""] * 16]


def test_text_config_is_checked():
    with pytest.raises(ValueError, match="objective"):
        load_config(None, ["train.objective=text"])
