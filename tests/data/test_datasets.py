"""diffusion/data/datasets.py + registry.py: IDX reader, Fashion-MNIST lookup and errors, image folders, seeded subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion.data import datasets as data
from diffusion.data import load_dataset
from diffusion.data.captions import CaptionedImageDataset
from diffusion.data.datasets import (DEBIAN_FASHION_MNIST, FASHION_MNIST_CLASSES,
                                     TensorImageDataset, fashion_mnist, image_folder,
                                     images_to_tensor)
from training_helpers import synthetic_images, write_idx


@pytest.fixture
def no_default_roots(monkeypatch, tmp_path):
    """Only ``root`` is searched: no $FASHION_MNIST_DIR, Debian path pointed at an empty folder."""
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "not-installed")


def _idx_root(root, n=12, gz=True, split="t10k", layout=""):
    images, labels = synthetic_images(n, seed=3)
    images[0] = 0
    images[1] = 255
    folder = root / layout if layout else root
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
@pytest.mark.parametrize("layout", ["", "FashionMNIST/raw"], ids=["flat", "torchvision"])
def test_idx_reader(tmp_path, no_default_roots, gz, layout):
    images, labels = _idx_root(tmp_path, gz=gz, layout=layout)
    ds = fashion_mnist("test", root=str(tmp_path))
    assert ds.images.shape == (12, 1, 28, 28) and ds.images.dtype == torch.float32
    assert ds.labels.dtype == torch.int64
    assert ds.labels.tolist() == labels.tolist()
    assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0
    assert torch.all(ds.images[0] == -1.0) and torch.all(ds.images[1] == 1.0)
    expected = torch.from_numpy(images.astype(np.float32)) / 127.5 - 1.0
    torch.testing.assert_close(ds.images[:, 0], expected, rtol=0, atol=1e-6)
    image, label = ds[5]
    assert image.shape == (1, 28, 28) and type(label) is int and label == int(labels[5])
    assert ds.class_names == list(FASHION_MNIST_CLASSES) and ds.num_classes == 10 and len(ds) == 12


def test_env_var_root_is_searched(tmp_path, no_default_roots, monkeypatch):
    _, labels = _idx_root(tmp_path, split="train")
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    assert fashion_mnist("train").labels.tolist() == labels.tolist()


def test_idx_reader_rejects_non_uint8(tmp_path):
    path = tmp_path / "bad-idx"
    path.write_bytes(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"\x00" * 12)  # float32 code
    with pytest.raises(ValueError, match="not a uint8 IDX"):
        data._read_idx(path)


def test_missing_dataset_says_how_to_install(tmp_path, no_default_roots):
    with pytest.raises(FileNotFoundError) as info:
        fashion_mnist("train", root=str(tmp_path / "empty"))
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "train-images-idx3-ubyte" in msg and str(tmp_path / "empty") in msg


def test_only_labels_present_is_missing(tmp_path, no_default_roots):
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(FileNotFoundError, match="apt-get install"):
        fashion_mnist("test", root=str(tmp_path))


def test_bad_split():
    with pytest.raises(ValueError, match="'validation'"):
        fashion_mnist("validation")


def test_images_to_tensor_layouts():
    gray = np.array([[[0, 255], [51, 204]]], dtype=np.uint8)          # (1, 2, 2)
    x = images_to_tensor(gray)
    assert x.shape == (1, 1, 2, 2) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, 0], torch.tensor([[-1.0, 1.0], [-0.6, 0.6]]))
    rgb = np.zeros((2, 3, 4, 3), np.uint8)
    rgb[..., 1] = 255                                                   # green channel
    y = images_to_tensor(rgb)
    assert y.shape == (2, 3, 3, 4)
    assert torch.all(y[:, 1] == 1.0) and torch.all(y[:, 0] == -1.0) and torch.all(y[:, 2] == -1.0)


@pytest.fixture
def png_folder(tmp_path):
    from PIL import Image

    root = tmp_path / "pngs"
    colours = {"zebra": [(255, 255, 255), (255, 255, 255)],   # white -> 1
               "ant": [(0, 0, 0), (0, 0, 0), (0, 0, 0)],       # black -> -1
               "mole": [(255, 0, 0)]}                          # red
    for name, cs in colours.items():
        (root / name).mkdir(parents=True)
        for i, c in enumerate(cs):
            Image.new("RGB", (10 + 3 * i, 7 + i), c).save(root / name / f"{i}.png")
    (root / "ant" / "notes.txt").write_text("not an image")
    (root / "README").write_text("a file at the top is not a class")
    return root


def test_image_folder_rgb(png_folder):
    ds = image_folder(str(png_folder), image_size=8, channels=3)
    assert ds.class_names == ["ant", "mole", "zebra"]                  # sorted folder names
    assert ds.labels.tolist() == [0, 0, 0, 1, 2, 2]
    assert ds.images.shape == (6, 3, 8, 8) and ds.images.dtype == torch.float32
    torch.testing.assert_close(ds.images[:3], torch.full((3, 3, 8, 8), -1.0))
    torch.testing.assert_close(ds.images[4:], torch.full((2, 3, 8, 8), 1.0))
    red = ds.images[3]
    assert torch.all(red[0] == 1.0) and torch.all(red[1:] == -1.0)


def test_image_folder_grayscale_via_load_dataset(png_folder):
    ds = load_dataset("image-folder", root=str(png_folder), image_size=12, channels=1)
    assert ds.images.shape == (6, 1, 12, 12) and ds.num_classes == 3
    assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0
    assert torch.all(ds.images[5] == 1.0)                             # white stays white


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(str(tmp_path / "nothing"), image_size=8)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        image_folder(str(tmp_path), image_size=8)
    with pytest.raises(ValueError, match="root"):
        load_dataset("image-folder")
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


def _toy(n=50):
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    return TensorImageDataset(images, torch.arange(n) % 7, [str(i) for i in range(7)])


def test_subset_is_seeded_and_deterministic():
    ds = _toy()
    a, b, c = ds.subset(20, seed=1), ds.subset(20, seed=1), ds.subset(20, seed=2)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    idx = a.images[:, 0, 0, 0].long()                  # each toy image stores its own index
    assert len(set(idx.tolist())) == 20                 # no duplicates
    assert not torch.equal(idx, torch.arange(20))       # shuffled, not the first 20
    assert torch.equal(a.labels, idx % 7)               # labels travel with their images
    assert a.class_names == ds.class_names
    # global RNG is neither used nor changed
    torch.manual_seed(0)
    before = torch.get_rng_state()
    ds.subset(10, seed=5)
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("n", [0, 51])
def test_subset_size_checked(n):
    with pytest.raises(ValueError, match=r"\[1, 50\]"):
        _toy().subset(n)


def test_load_dataset_subset_deterministic(tmp_path, no_default_roots):
    _idx_root(tmp_path, n=30, split="train")
    a = load_dataset("fashion-mnist", root=str(tmp_path), subset=10, seed=4)
    b = load_dataset("fashion-mnist", root=str(tmp_path), subset=10, seed=4)
    full = load_dataset("fashion-mnist", root=str(tmp_path))
    assert len(a) == 10 and len(full) == 30
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.images, full.subset(10, seed=4).images)


def test_real_fashion_mnist_test_split():
    if not DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip(f"Fashion-MNIST not installed at {DEBIAN_FASHION_MNIST} "
                    "(sudo apt-get install dataset-fashion-mnist)")
    ds = fashion_mnist("test", root=str(DEBIAN_FASHION_MNIST))
    assert ds.images.shape == (10000, 1, 28, 28) and ds.images.dtype == torch.float32
    assert ds.images.min() == -1.0 and ds.images.max() == 1.0
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    assert ds.labels[0].item() == 9 and ds.class_names[9] == "Ankle boot"   # first test image


def test_load_dataset_refuses_the_wrong_channel_count_up_front(tmp_path, no_default_roots):
    _idx_root(tmp_path, n=8, split="train")
    with pytest.raises(ValueError, match=r"'fashion-mnist' has 1-channel images but channels=3 "
                                         r"was asked: set data.channels=1"):
        load_dataset("fashion-mnist", root=str(tmp_path), channels=3)
    assert load_dataset("fashion-mnist", root=str(tmp_path), channels=1).images.shape[1] == 1


def test_a_registered_loader_gets_the_settings_its_signature_names(monkeypatch, tmp_path):
    """A new dataset is one registry entry: load_dataset passes it only what it takes, and a
    loader that needs a root is refused by name without one (docs/contributing.md)."""
    from diffusion.data import registry

    seen = {}

    def tiny(root, image_size):
        seen.update(root=root, image_size=image_size)
        return TensorImageDataset(torch.zeros(4, 1, image_size, image_size), torch.arange(4) % 2,
                                  ("a", "b"))

    monkeypatch.setitem(registry.DATASETS, "tiny", tiny)
    ds = load_dataset("tiny", root=str(tmp_path), image_size=8, subset=2)
    assert seen == {"root": str(tmp_path), "image_size": 8} and len(ds) == 2
    with pytest.raises(ValueError, match="'tiny' needs root"):
        load_dataset("tiny", image_size=8)
    monkeypatch.setitem(registry.CAPTIONED_DATASETS, "tiny-captions",
                        lambda image_size, seed=0: CaptionedImageDataset(
                            torch.zeros(2, 1, image_size, image_size), [["x"], ["y"]], seed=seed))
    assert load_dataset("tiny-captions", image_size=8).images.shape == (2, 1, 8, 8)


def test_a_given_fashion_mnist_root_without_the_files_is_an_error_not_a_fall_back(tmp_path):
    from diffusion.data.datasets import fashion_mnist

    with pytest.raises(FileNotFoundError, match=r"Fashion-MNIST root '.*empty' holds no "
                                                r"train-images-idx3-ubyte"):
        fashion_mnist("train", root=str(tmp_path / "empty"))
