"""diffusion/evaluation/cas.py: the Classification Accuracy Score (Ravuri & Vinyals 2019).

Input checks and the real-subset draw run without training. The learning tests train a ~4k-parameter
version of the evaluation classifier (channels 8-16, fp32, one thread, 150 steps at batch 64) on
1,000 real Fashion-MNIST images: about 3 s per classifier on 2 CPU cores.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from diffusion.models.classifier import ImageClassifier
from diffusion.evaluation.cas import (classification_accuracy_score, default_config_path,
                                      matched_real_subset, train_classifier)
from training import loop
from diffusion.data.datasets import (DEBIAN_FASHION_MNIST, FASHION_MNIST_CLASSES,
                                     TensorImageDataset, fashion_mnist, images_to_tensor)

#: The shipped classifier's recipe, scaled down: 150 steps of a channels-8-16 CNN at a higher
#: learning rate, fp32, 1 thread (test accuracy ~0.62 from 1,000 real images).
TINY = ("classifier.channels=[8,16]", "train.batch_size=64", "train.learning_rate=1e-2",
        "train.lr_warmup_steps=10", "train.mixed_precision=no", "train.num_threads=1",
        "train.log_every=10")
STEPS, N = 150, 1000

needs_fashion_mnist = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(),
    reason=f"real Fashion-MNIST not installed at {DEBIAN_FASHION_MNIST} "
           "(sudo apt-get install dataset-fashion-mnist)")


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state(monkeypatch):
    """accelerate's process-wide state (mixed precision) is reset around each test, as in
    tests/training/test_loop.py; CPU even where a GPU is visible (fp32 CPU arithmetic)."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    reset_accelerate()
    yield
    reset_accelerate()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] Fashion-MNIST images back to the uint8 they were read from (exact)."""
    return ((images + 1) * 127.5).round().to(torch.uint8)


@pytest.fixture(scope="module")
def fmnist():
    if not DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip(f"real Fashion-MNIST not installed at {DEBIAN_FASHION_MNIST}")
    return fashion_mnist("train"), fashion_mnist("test")


@pytest.fixture(scope="module")
def real_subset(fmnist):
    """1,000 real training images, 100 per class, seed 0: what CAS's real baseline trains on."""
    return matched_real_subset(fmnist[0], torch.arange(N) % 10, seed=0)


# -- no training ---------------------------------------------------------------------------------

def fake_real(counts, seed=0):
    """A tiny 'real' dataset: 28x28 noise, ``counts[c]`` images of class c, shuffled."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    labels = labels[torch.randperm(len(labels), generator=g)]
    return TensorImageDataset(torch.rand(len(labels), 1, 28, 28, generator=g) * 2 - 1, labels,
                              [f"c{i}" for i in range(len(counts))])


def test_default_config_is_the_shipped_classifiers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not found through the working directory
    path = default_config_path()
    assert path.is_file() and path.name == "fashion_mnist_classifier.yaml"
    assert path.parent.parent.name == "training"


def test_matched_real_subset_copies_class_counts_from_a_seeded_draw():
    real = fake_real([20, 20, 20, 5])
    labels = torch.tensor([0] * 6 + [1] * 3 + [3] * 1)                     # counts 6, 3, 0, 1
    sub = matched_real_subset(real, labels, seed=1)
    assert torch.bincount(sub.labels, minlength=4).tolist() == [6, 3, 0, 1]
    # every image is the real image of its label, taken in the order of randperm(seed)
    perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(1)).tolist()
    rows = {real.images[i].numpy().tobytes(): i for i in range(len(real))}
    picked = [rows[x.numpy().tobytes()] for x in sub.images]
    assert picked == sorted(picked, key=perm.index)
    assert [int(real.labels[i]) for i in picked] == sub.labels.tolist()
    assert torch.equal(matched_real_subset(real, labels, seed=1).images, sub.images)
    assert not torch.equal(matched_real_subset(real, labels, seed=2).images, sub.images)
    # n images by largest remainders: 15 * (6, 3, 0, 1) / 10 = 9, 4.5, 0, 1.5 -> 9, 5, 0, 1 (ties:
    # lower class first); 5 over 3 equal classes -> 2, 2, 1
    counts = torch.bincount(matched_real_subset(real, labels, n=15).labels, minlength=4)
    assert counts.tolist() == [9, 5, 0, 1]
    assert torch.bincount(matched_real_subset(real, torch.arange(3), n=5).labels).tolist() == [2, 2, 1]
    with pytest.raises(ValueError, match=r"\(3, 6, 5\)"):                  # class 3: 6 needed, 5 there
        matched_real_subset(real, torch.full((6,), 3))
    with pytest.raises(ValueError, match="n must be in"):
        matched_real_subset(real, labels, n=0)


class Stop(Exception):
    """Raised by the stand-in for ``training.loop.train``."""


@pytest.fixture
def no_training(monkeypatch):
    """Replace ``training.loop.train``: record each dataset it would train on, then stop."""
    seen = []

    def fake_train(cfg, accelerator=None, dataset=None):
        seen.append((cfg, dataset))
        raise Stop

    monkeypatch.setattr(loop, "train", fake_train)
    return seen


def test_every_input_range_reaches_the_classifier_as_the_dataset_loader_would(no_training):
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8, generator=g)
    expected = images_to_tensor(u8[:, 0].numpy())                  # what fashion_mnist() yields
    test = fake_real([4] * 10)
    labels = torch.arange(16) % 10
    for images, input_range in ((u8, "uint8"), (u8.numpy(), "uint8"), (u8.float() / 255, "0,1"),
                                (expected, "-1,1"), (expected.double(), "-1,1")):
        with pytest.raises(Stop):
            train_classifier(images, labels.numpy(), input_range=input_range, test=test,
                             overrides=["train.batch_size=8"], max_steps=7, seed=3)
        cfg, dataset = no_training[-1]
        assert torch.equal(dataset.images, expected), input_range
        assert dataset.labels.dtype == torch.int64 and torch.equal(dataset.labels, labels)
        assert (cfg.train.max_steps, cfg.train.seed, cfg.train.batch_size) == (7, 3, 8)
        assert (cfg.train.resume, cfg.data.subset, cfg.train.sample_every) == (None, None, 0)
        assert cfg.classifier.channels == (32, 64, 128)             # the shipped recipe
    assert len(no_training) == 5


U8 = torch.zeros(16, 1, 28, 28, dtype=torch.uint8)
LABELS = torch.arange(16) % 10


@pytest.mark.parametrize("images, labels, kwargs, message", [
    (U8.float(), LABELS, {}, "input_range='uint8' needs dtype uint8"),
    (U8, LABELS, {"input_range": "0,1"}, "needs a float dtype"),
    (U8, LABELS, {"input_range": "0-255"}, "input_range must be one of"),
    (U8.float() + 1.5, LABELS, {"input_range": "0,1"}, "max 1.5"),
    (U8.float() * float("nan"), LABELS, {"input_range": "-1,1"}, "NaN"),
    (U8[:, 0], LABELS, {}, "4-D"),
    (U8.expand(16, 3, 28, 28), LABELS, {}, r"\(16, 3, 28, 28\).*needs \(N, 1, 28, 28\)"),
    (U8[:, :, :16, :16], LABELS, {}, r"needs \(N, 1, 28, 28\)"),
    (U8[:4], LABELS[:4], {}, "4 images given; need at least 8"),
    (U8, None, {}, "needs class labels"),
    (U8, LABELS.float(), {}, "integer class ids"),
    (U8, LABELS[:15], {}, r"shape \(16,\)"),
    (U8, LABELS + 1, {}, r"\[0, 10\).*max 10"),
    (U8, LABELS - 1, {}, "min -1"),
    (U8, LABELS, {"max_steps": 0}, "max_steps must be"),
    (U8, LABELS, {"config": default_config_path().parent / "fashion_mnist_quick.yaml"},
     "objective 'diffusion'"),
    (U8, LABELS, {"overrides": ["classifier.width=3"]}, "invalid config"),
])
def test_bad_inputs_raise_before_any_training(no_training, images, labels, kwargs, message):
    small = fake_real([20] * 10)
    kwargs = {"overrides": ["train.batch_size=8"], "test": small, **kwargs}
    with pytest.raises(ValueError, match=message):
        train_classifier(images, labels, **kwargs)
    with pytest.raises(ValueError, match=message):
        classification_accuracy_score(images, labels, real=small, **kwargs)
    assert no_training == []


def test_cas_refuses_a_real_set_too_small_before_training(no_training):
    real = fake_real([1] + [20] * 9)                                        # LABELS has two 0s
    with pytest.raises(ValueError, match=r"not enough real images.*\(0, 2, 1\)"):
        classification_accuracy_score(U8, LABELS, real=real, test=real, overrides=["train.batch_size=8"])
    with pytest.raises(ValueError, match="4 real images given; need at least 8"):
        classification_accuracy_score(U8, LABELS, real=real, test=real, num_real=4,
                                      overrides=["train.batch_size=8"])
    assert no_training == []


# -- training ------------------------------------------------------------------------------------

@pytest.mark.slow  # two trainings, ~3-6 s each
@needs_fashion_mnist
def test_real_labels_beat_shuffled_labels_on_the_real_test_split(fmnist, real_subset, tmp_path):
    test = fmnist[1]
    images, labels = to_uint8(real_subset.images), real_subset.labels
    right = train_classifier(images, labels, overrides=TINY, max_steps=STEPS, output_dir=tmp_path)
    shuffled = labels[torch.randperm(N, generator=torch.Generator().manual_seed(1))]
    wrong = train_classifier(images, shuffled, overrides=TINY, max_steps=STEPS)
    print(f"real labels {right['accuracy']:.4f}, shuffled {wrong['accuracy']:.4f} "
          f"({right['seconds']:.1f} s, {wrong['seconds']:.1f} s)")
    assert right["accuracy"] > 0.5 and wrong["accuracy"] < 0.25           # seen: 0.62, 0.16
    assert right["accuracy"] - wrong["accuracy"] > 0.3
    assert (right["n_train"], right["n_test"], right["max_steps"]) == (N, 10_000, STEPS)
    assert right["class_names"] == list(FASHION_MNIST_CLASSES) and wrong["classifier_dir"] is None
    # per-class accuracies average (1,000 test images per class) to the accuracy
    assert np.mean(right["per_class"]) == pytest.approx(right["accuracy"], abs=1e-9)
    # the kept classifier (eval mode, fp32) gives the reported figure
    clf = ImageClassifier.from_pretrained(right["classifier_dir"])
    assert (clf.predict(test.images) == test.labels).sum().item() / 10_000 == right["accuracy"]
    assert clf.config.channels == [8, 16]


@pytest.mark.slow  # two trainings, ~3-6 s each
@needs_fashion_mnist
def test_cas_of_real_images_is_the_real_accuracy(fmnist, real_subset):
    """Synthetic images that ARE the real subset CAS draws (same seed, same class counts) train the
    same classifier bit for bit: CAS equals the real-trained accuracy and the ratio is exactly 1.
    The caller's global RNGs and thread count are left as they were."""
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    threads = torch.get_num_threads()
    state = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    score = classification_accuracy_score(to_uint8(real_subset.images), real_subset.labels,
                                          overrides=TINY, max_steps=STEPS, seed=0, real=fmnist[0])
    assert score["cas"] == score["real_accuracy"] and score["ratio"] == 1.0
    assert score["per_class"] == score["real_per_class"]
    assert 0.5 < score["cas"] < 1.0
    assert (score["n"], score["n_real"], score["n_test"], score["max_steps"]) == (N, N, 10_000, STEPS)
    assert score["config"] == str(default_config_path())
    assert random.getstate() == state[0] and np.array_equal(np.random.get_state()[1], state[1])
    assert torch.equal(torch.get_rng_state(), state[2]) and torch.get_num_threads() == threads
