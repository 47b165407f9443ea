"""diffusion/data/captions.py, emoji.py, registry.py: the captioned dataset type, emoji rendering and cache, Fashion-MNIST
prompts (training vs held-out), image folders with captions, and the name dispatch."""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image

from diffusion.data import emoji as emoji_module
from diffusion.data import registry
from diffusion.data import captions as cap
from diffusion.data.captions import (FASHION_MNIST_HELD_OUT_PROMPTS, FASHION_MNIST_TRAINING_PROMPTS,
                                     CaptionedImageDataset, fashion_mnist_captions,
                                     held_out_prompts, image_folder_captions, training_prompts)
from diffusion.data.emoji import CLDR_ANNOTATIONS_EN, NOTO_COLOR_EMOJI, emoji_dataset
from diffusion.data.registry import load_captioned_dataset
from diffusion.data.datasets import DEBIAN_FASHION_MNIST, FASHION_MNIST_CLASSES
from training_helpers import synthetic_images, write_idx

needs_font = pytest.mark.skipif(not NOTO_COLOR_EMOJI.is_file(),
                                reason="needs Debian's fonts-noto-color-emoji (make dataset)")
needs_cldr = pytest.mark.skipif(not CLDR_ANNOTATIONS_EN.is_file(),
                                reason="needs Debian's unicode-cldr-core (make dataset)")

#: Named single code points with a glyph in Noto Color Emoji 2.042 (Debian bookworm), Unicode 14.
EMOJI_COUNT = 1404


# ---------------------------------------------------------------- CaptionedImageDataset

def _toy(seed=0):
    images = torch.linspace(-1, 1, 4 * 3 * 2 * 2).reshape(4, 3, 2, 2)
    captions = [["a"], ["b0", "b1"], ["c0", "c1", "c2"], ["d0", "d1", "d2", "d3"]]
    labels = torch.tensor([0, 1, 1, 0])
    return CaptionedImageDataset(images, captions, labels, ["x", "y"], seed=seed)


def test_getitem_is_deterministic_per_epoch_and_varies_across_epochs():
    ds = _toy()
    first = [ds[i][1] for i in range(4)]
    assert first == [_toy()[i][1] for i in range(4)]  # a fresh object (another worker) agrees
    assert first[0] == "a" and all(c in ds.captions[i] for i, c in enumerate(first))
    seen = set()
    for epoch in range(40):
        ds.set_epoch(epoch)
        seen.add(ds[3][1])
    assert seen == {"d0", "d1", "d2", "d3"}  # every caption of image 3 comes up over epochs
    ds.set_epoch(0)
    assert [ds[i][1] for i in range(4)] == first
    assert torch.equal(ds[2][0], ds.images[2])


def test_sample_captions_reproducible_from_generator():
    ds = _toy()
    a = ds.sample_captions([3] * 200, torch.Generator().manual_seed(5))
    b = ds.sample_captions(torch.tensor([3] * 200), torch.Generator().manual_seed(5))
    c = ds.sample_captions([3] * 200, torch.Generator().manual_seed(6))
    assert a == b and a != c
    counts = {k: a.count(k) for k in ds.captions[3]}
    assert all(30 < v < 70 for v in counts.values()), counts  # uniform over 4 captions, n = 200
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    first = ds.caption_for(2, g)
    g.set_state(state)
    assert ds.caption_for(2, g) == first


def test_subset_num_classes_unique_and_errors():
    ds = _toy(seed=3)
    sub = ds.subset(2, seed=1)
    assert len(sub) == 2 and sub.num_classes == 2 and sub.seed == 3
    idx = torch.randperm(4, generator=torch.Generator().manual_seed(1))[:2]
    assert torch.equal(sub.images, ds.images[idx]) and torch.equal(sub.labels, ds.labels[idx])
    assert sub.captions == [ds.captions[i] for i in idx.tolist()]
    assert ds.unique_captions()[:3] == ["a", "b0", "b1"] and len(ds.unique_captions()) == 10
    with pytest.raises(ValueError, match="subset size"):
        ds.subset(5)
    with pytest.raises(ValueError, match="non-empty caption"):
        CaptionedImageDataset(torch.zeros(2, 1, 2, 2), [["ok"], []])
    with pytest.raises(ValueError, match="non-empty caption"):
        CaptionedImageDataset(torch.zeros(1, 1, 2, 2), ["a bare string, not a list"])
    with pytest.raises(ValueError, match="N == len"):
        CaptionedImageDataset(torch.zeros(2, 1, 2, 2), [["one"]])
    with pytest.raises(ValueError, match="labels must lie"):
        CaptionedImageDataset(torch.zeros(1, 1, 2, 2), [["a"]], torch.tensor([2]), ["x", "y"])
    assert CaptionedImageDataset(torch.zeros(1, 1, 2, 2), [["a"]]).num_classes == 0


# ---------------------------------------------------------------- emoji

@pytest.fixture(scope="module")
def emoji_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("emoji-cache")


@pytest.fixture(scope="module")
def emoji(emoji_cache):
    return emoji_dataset(cache_dir=emoji_cache)


def _index(ds, char):
    """Index of the emoji ``char`` (its first caption is its Unicode name)."""
    name = emoji_module.unicodedata.name(char).lower()
    return next(i for i, c in enumerate(ds.captions) if c[0] == name)


@needs_font
def test_emoji_images(emoji):
    n = len(emoji)
    assert n == EMOJI_COUNT and emoji.images.shape == (n, 3, 32, 32)
    assert emoji.images.dtype == torch.float32 and emoji.labels is None and emoji.num_classes == 0
    assert emoji.images.min() >= -1 and emoji.images.max() <= 1
    std = emoji.images.flatten(1).std(dim=1)
    assert (std > 0.05).float().mean() > 0.99, std.sort().values[:10]  # drawn, not blank
    # White background in the corners; the red apple is red in the middle.
    assert (emoji.images[:, :, 0, 0] > 0.95).all(dim=1).float().mean() > 0.99
    r, g, b = emoji.images[_index(emoji, "\U0001F34E"), :, 12:20, 12:20].mean(dim=(1, 2))
    assert r > 0.3 and r - g > 0.8 and r - b > 0.8
    assert len({tuple(c) for c in emoji.captions}) == n  # no two emoji share all captions


@needs_font
def test_emoji_captions_known_values(emoji):
    apple = emoji.captions[_index(emoji, "\U0001F34E")]
    assert apple[:2] == ["red apple", "a red apple emoji"]
    assert emoji.captions[_index(emoji, "\U0001F600")][0] == "grinning face"
    assert all(2 <= len(c) <= 4 for c in emoji.captions)


@needs_font
@needs_cldr
def test_emoji_cldr_keywords(emoji):
    assert emoji.captions[_index(emoji, "\U0001F34E")] == [
        "red apple", "a red apple emoji", "apple, fruit, red"]
    # CLDR's text-to-speech name differs from the Unicode name here.
    assert emoji.captions[_index(emoji, "\u2665")][:3] == [
        "black heart suit", "heart suit", "a heart suit emoji"]
    # Without CLDR every emoji has exactly 2 captions; with it, all but the digits, regional
    # indicators and ~40 emoji whose CLDR name and only keyword equal the Unicode name have more.
    enriched = sum(len(c) >= 3 for c in emoji.captions)
    assert enriched > 0.9 * len(emoji)


@needs_font
def test_emoji_without_cldr_uses_unicode_names(tmp_path):
    chars = "\U0001F34E\U0001F600"
    cldr = emoji_module._cldr_annotations(CLDR_ANNOTATIONS_EN) if CLDR_ANNOTATIONS_EN.is_file() else {}
    assert emoji_module.emoji_captions(chars[0]) == ["red apple", "a red apple emoji"]
    assert emoji_module.emoji_captions(chars[1], {}) == ["grinning face", "a grinning face emoji"]
    if cldr:
        assert emoji_module.emoji_captions(chars[1], cldr)[-1] == "face, grin, grinning face"


@needs_font
def test_emoji_cache_hit_is_identical_and_skips_rendering(emoji, emoji_cache, monkeypatch):
    files = list(emoji_cache.glob("emoji-32px-*.npz"))
    assert len(files) == 1 and not list(emoji_cache.glob("*.tmp"))

    def no_render(*args, **kwargs):
        raise AssertionError("re-rendered despite a cache file")

    monkeypatch.setattr(emoji_module, "_build_emoji", no_render)
    again = emoji_dataset(cache_dir=emoji_cache)
    assert torch.equal(again.images, emoji.images) and again.captions == emoji.captions
    # Another background is another cache key: it must render.
    with pytest.raises(AssertionError, match="re-rendered"):
        emoji_dataset(cache_dir=emoji_cache, background=(0, 0, 0))


@needs_font
def test_emoji_render_is_deterministic(emoji, tmp_path):
    fresh = emoji_dataset(cache_dir=tmp_path)  # a second render, no cache
    assert torch.equal(fresh.images, emoji.images) and fresh.captions == emoji.captions


@needs_font
def test_emoji_size_and_background(tmp_path):
    small = emoji_dataset(image_size=8, background=(0, 0, 0), cache_dir=tmp_path)
    assert small.images.shape == (EMOJI_COUNT, 3, 8, 8)
    corners = small.images[:, :, 0, 0]
    # Black corners, except where an 8-pixel Lanczos window reaches a glyph that fills its box
    # (the square buttons: 219 of 1404).
    assert (corners < -0.95).all(dim=1).float().mean() > 0.8 and corners.median() == -1


def test_emoji_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="fonts-noto-color-emoji"):
        emoji_dataset(font_path=tmp_path / "missing.ttf", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="image_size"):
        emoji_dataset(image_size=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="background"):
        emoji_dataset(background=(255, 255), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="background"):
        emoji_dataset(background=(0, 0, 256), cache_dir=tmp_path)


def test_emoji_default_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_CENTRIC_CACHE", str(tmp_path / "c"))
    assert emoji_module.default_cache_dir() == tmp_path / "c"


# ---------------------------------------------------------------- Fashion-MNIST prompts

def test_prompt_sets_are_disjoint_and_large_enough():
    all_train = {p for c in range(10) for p in training_prompts(c)}
    all_held = {p for c in range(10) for p in held_out_prompts(c)}
    assert not all_train & all_held
    for c in range(10):
        train, held = training_prompts(c), held_out_prompts(c)
        assert len(set(train)) == len(train) == 20 and len(set(held)) == len(held) == 12
        assert train == list(FASHION_MNIST_TRAINING_PROMPTS[c])
        assert held == list(FASHION_MNIST_HELD_OUT_PROMPTS[c])
    # Genuinely other nouns: no training noun phrase of any class occurs (as whole words) in a
    # held-out prompt, and no held-out noun phrase in a training prompt.
    train_nouns = [n for t, _ in cap._FASHION_NOUNS for n in t]
    held_nouns = [n for _, h in cap._FASHION_NOUNS for n in h]
    for nouns, prompts in ((train_nouns, all_held), (held_nouns, all_train)):
        for noun in nouns:
            pattern = re.compile(rf"(?<![\w-]){re.escape(noun)}(?![\w-])")
            assert not [p for p in prompts if pattern.search(p)], noun
    # Classes never share a prompt.
    assert len(all_train) == 200 and len(all_held) == 120
    assert training_prompts(7)[:3] == ["a sneaker", "running shoes", "a pair of trainers"]
    with pytest.raises(ValueError, match="class_id"):
        held_out_prompts(10)


def test_fashion_captions_from_idx_files(tmp_path, monkeypatch):
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    images, labels = synthetic_images(30, seed=2)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    ds = fashion_mnist_captions("test", root=str(tmp_path))
    assert ds.images.shape == (30, 1, 28, 28) and ds.class_names == list(FASHION_MNIST_CLASSES)
    assert ds.labels.tolist() == labels.tolist()
    for i in range(30):
        assert ds[i][1] in training_prompts(int(labels[i]))
        assert ds.captions[i] == training_prompts(int(labels[i]))
    held = fashion_mnist_captions("test", root=str(tmp_path), held_out=True)
    assert all(held[i][1] in held_out_prompts(int(labels[i])) for i in range(30))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert ds.sample_captions(range(30), g1) == ds.sample_captions(range(30), g2)
    with pytest.raises(ValueError, match="split"):
        fashion_mnist_captions("validation", root=str(tmp_path))


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="needs dataset-fashion-mnist")
def test_fashion_captions_real_lengths():
    train, test = fashion_mnist_captions("train"), fashion_mnist_captions("test")
    assert len(train) == 60000 and len(test) == 10000
    assert train.num_classes == 10 and train.labels.bincount().tolist() == [6000] * 10
    assert train.captions[0] == training_prompts(int(train.labels[0]))


# ---------------------------------------------------------------- image folders

def _png(path, color, size=(6, 4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_image_folder_metadata_jsonl(tmp_path):
    _png(tmp_path / "red.png", (255, 0, 0))
    _png(tmp_path / "sub" / "blue.png", (0, 0, 255))
    rows = [{"file_name": "red.png", "text": "a red square"},
            {"file_name": "sub/blue.png", "caption": ["a blue square", "blue"]}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = image_folder_captions(tmp_path, image_size=4, channels=3)
    assert ds.images.shape == (2, 3, 4, 4) and ds.labels is None  # red.png is at the top level
    assert ds.captions == [["a red square"], ["a blue square", "blue"]]  # sorted: red.png, sub/
    assert torch.allclose(ds.images[0, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    assert torch.allclose(ds.images[1, :, 0, 0], torch.tensor([-1.0, -1.0, 1.0]))
    gray = image_folder_captions(tmp_path, image_size=3, channels=1)
    assert gray.images.shape == (2, 1, 3, 3)


def test_image_folder_txt_sidecars_and_class_folders(tmp_path):
    _png(tmp_path / "cats" / "c1.png", (10, 10, 10))
    (tmp_path / "cats" / "c1.txt").write_text("a cat\n\na sleeping cat\n")
    _png(tmp_path / "dogs" / "d1.jpg", (200, 200, 200))
    (tmp_path / "dogs" / "d1.txt").write_text("a dog")
    ds = load_captioned_dataset("image-folder-captions", root=str(tmp_path), image_size=5)
    assert ds.captions == [["a cat", "a sleeping cat"], ["a dog"]]
    assert ds.class_names == ["cats", "dogs"] and ds.labels.tolist() == [0, 1]


def test_image_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        image_folder_captions(empty, image_size=4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder_captions(tmp_path / "nope", image_size=4)

    folder = tmp_path / "f"
    for name in ("a", "b", "c"):
        _png(folder / f"{name}.png", (0, 0, 0))
    (folder / "a.txt").write_text("only a has a caption")
    with pytest.raises(ValueError, match=r"2 of 3 images .*\['b.png', 'c.png'\]"):
        image_folder_captions(folder, image_size=4)

    (folder / "metadata.jsonl").write_text(
        '{"file_name": "b.png", "text": "b"}\n{"file_name": "c.png", "text": "c"\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        image_folder_captions(folder, image_size=4)
    (folder / "metadata.jsonl").write_text('{"file_name": "b.png"}\n')
    with pytest.raises(ValueError, match="line 1 needs a non-empty \"text\""):
        image_folder_captions(folder, image_size=4)
    (folder / "metadata.jsonl").write_text('{"file_name": "zzz.png", "text": "gone"}\n')
    with pytest.raises(ValueError, match=r"not under .*\['zzz.png'\]"):
        image_folder_captions(folder, image_size=4)
    # metadata for b and c plus a.txt: every image captioned.
    (folder / "metadata.jsonl").write_text(
        '{"file_name": "b.png", "text": "b"}\n{"file_name": "c.png", "text": "c"}\n')
    assert image_folder_captions(folder, image_size=4).captions == [
        ["only a has a caption"], ["b"], ["c"]]
    with pytest.raises(ValueError, match="channels"):
        image_folder_captions(folder, image_size=4, channels=2)


# ---------------------------------------------------------------- dispatch

def test_load_captioned_dataset_dispatch(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown captioned dataset 'nope'.*emoji"):
        load_captioned_dataset("nope")
    with pytest.raises(ValueError, match="needs root"):
        load_captioned_dataset("image-folder-captions", image_size=4)
    _png(tmp_path / "x.png", (1, 2, 3))
    _png(tmp_path / "y.png", (1, 2, 3))
    for n in "xy":
        (tmp_path / f"{n}.txt").write_text(n)
    ds = load_captioned_dataset("image-folder-captions", root=tmp_path, image_size=2,
                                subset=1, seed=4)
    assert len(ds) == 1 and ds.seed == 4
    calls = {}
    monkeypatch.setitem(registry.CAPTIONED_DATASETS, "emoji", lambda **kw: calls.setdefault("kw", kw) and _toy())
    load_captioned_dataset("emoji", image_size=16)
    assert calls["kw"] == {"seed": 0, "image_size": 16}


def test_load_dataset_emoji_needs_three_channels(emoji, monkeypatch):
    from diffusion.data import load_dataset

    monkeypatch.setitem(registry.CAPTIONED_DATASETS, "emoji", lambda seed=0, **kw: emoji)
    with pytest.raises(ValueError, match=r"'emoji' has 3-channel images but channels=1 was "
                                         r"asked: set data.channels=3"):
        load_dataset("emoji")
    assert load_dataset("emoji", channels=3) is emoji
