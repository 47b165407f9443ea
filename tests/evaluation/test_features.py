"""Feature networks: range handling, shipped-classifier features, eval mode, offline Inception."""

import hashlib
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion import default_classifier_path
from diffusion.models.classifier import ImageClassifier
from diffusion.evaluation import (
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    ClassifierFeatures,
    FeatureNetwork,
    InceptionFeatures,
    extract_features,
    extract_logits,
    get_feature_network,
    to_unit_range,
)


def uint8_images(n=6, c=1, size=28, seed=0):
    """Smooth-ish uint8 images (a random low-res pattern upsampled), so features are not all noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, c, 7, 7, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 255).round().to(torch.uint8)


class FeatureNetworkStub(FeatureNetwork):
    """Feature = mean pixel value; counts forward calls."""

    name, num_features, description, in_channels = "mean@0", 1, "channel mean", (1,)

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
        self.calls = 0

    def _features(self, x):
        self.calls += 1
        return x.double().mean(dim=(1, 2, 3))[:, None] * self.w


@pytest.fixture(scope="module")
def shipped():
    return ClassifierFeatures()


# --- to_unit_range ----------------------------------------------------------------------------

def test_the_three_ranges_map_to_the_same_unit_images():
    u8 = uint8_images()
    unit = u8.float() / 255
    for images, input_range in [(u8, "uint8"), (unit, "0,1"), (unit * 2 - 1, "-1,1"),
                                (unit.double(), "0,1"), (u8.numpy(), "uint8")]:
        out = to_unit_range(images, input_range)
        assert out.dtype == torch.float32 and out.shape == (6, 1, 28, 28)
        torch.testing.assert_close(out, unit, rtol=0, atol=1e-6)
    assert torch.equal(to_unit_range(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2),
                                     "uint8"), torch.tensor([[[[0.0, 1.0]]]]))


def test_nhwc_uint8_numpy_only_with_channels_last():
    u8 = uint8_images(n=3, c=3)
    nhwc = u8.permute(0, 2, 3, 1).numpy().copy()  # what pipe(..., output_type="np") returns
    torch.testing.assert_close(to_unit_range(nhwc, "uint8", channels_last=True), u8.float() / 255)
    # without the flag the array is read as NCHW: (3, 28, 28, 3) has 28 "channels"
    assert to_unit_range(nhwc, "uint8").shape == (3, 28, 28, 3)


def test_float_slack_of_1e6_is_accepted_and_clamped():
    x = torch.tensor([[[[-5e-7, 1 + 5e-7]]]])
    assert torch.equal(to_unit_range(x, "0,1"), torch.tensor([[[[0.0, 1.0]]]]))
    assert torch.equal(to_unit_range(x * 2 - 1, "-1,1"), torch.tensor([[[[0.0, 1.0]]]]))


GOOD = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))


def with_pixel(x, value):
    """``x`` with its first pixel set to ``value``."""
    x = x.clone()
    x.view(-1)[0] = value
    return x


BAD_INPUTS = {
    "float as uint8": (GOOD, "uint8"),
    "uint8 as 0,1": ((GOOD * 255).to(torch.uint8), "0,1"),
    "uint8 as -1,1": ((GOOD * 255).to(torch.uint8), "-1,1"),
    "int64 as uint8": ((GOOD * 255).long(), "uint8"),
    "int64 numpy": ((GOOD * 255).long().numpy(), "uint8"),
    "bool": (GOOD > 0.5, "0,1"),
    "above 1": (with_pixel(GOOD, 1.01), "0,1"),
    "above 1 by 2e-6": (with_pixel(GOOD, 1 + 2e-6), "0,1"),
    "below 0": (with_pixel(GOOD, -0.01), "0,1"),
    "below 0 by 2e-6": (with_pixel(GOOD, -2e-6), "0,1"),
    "-1,1 data given as 0,1": (GOOD * 2 - 1, "0,1"),
    "below -1": (with_pixel(GOOD * 2 - 1, -1.01), "-1,1"),
    "0..255 floats as 0,1": (GOOD * 255, "0,1"),
    "nan": (with_pixel(GOOD, float("nan")), "0,1"),
    "inf": (with_pixel(GOOD, float("inf")), "-1,1"),
    "3-d": (GOOD[0], "0,1"),
    "5-d": (GOOD[None], "0,1"),
    "unknown range name": (GOOD, "0-1"),
    "range name 0,255": ((GOOD * 255).to(torch.uint8), "0,255"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_images_raise_value_error(case):
    images, input_range = BAD_INPUTS[case]
    with pytest.raises(ValueError):
        to_unit_range(images, input_range)
    net = FeatureNetworkStub()
    with pytest.raises(ValueError):  # the same check guards extraction, before any forward
        extract_features(net, images, input_range)
    assert net.calls == 0


def test_non_arrays_raise_type_error():
    with pytest.raises(TypeError, match="list"):
        to_unit_range([[[[0.5]]]], "0,1")


# --- shipped classifier features --------------------------------------------------------------

def test_shipped_classifier_identity(shipped):
    weights = Path(default_classifier_path()) / "diffusion_pytorch_model.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert shipped.name == f"fashion-mnist-classifier@{sha[:12]}"
    assert re.fullmatch(r"fashion-mnist-classifier@[0-9a-f]{12}", shipped.name)
    assert shipped.num_features == 128
    assert shipped.in_channels == (1,) and shipped.image_size == (28, 28)
    assert "1x28x28" in shipped.description and "no resize" in shipped.description
    assert get_feature_network("classifier").name == shipped.name


def test_features_are_classifier_penultimate_of_2x_minus_1(shipped):
    u8 = uint8_images()
    feats = extract_features(shipped, u8, "uint8")
    assert feats.dtype == torch.float64 and feats.shape == (6, 128)
    with torch.no_grad():
        ref = shipped.classifier.eval().features(u8.float() / 255 * 2 - 1)
    torch.testing.assert_close(feats, ref.double(), rtol=0, atol=1e-6)
    assert feats.std() > 1e-3  # real, varying features, not a constant


def test_same_images_in_three_ranges_give_the_same_features(shipped):
    u8 = uint8_images(n=8)
    unit = u8.float() / 255
    nhwc = u8.permute(0, 2, 3, 1).numpy().copy()
    ref = extract_features(shipped, u8, "uint8")
    for images, input_range, kw in [(unit, "0,1", {}), (unit * 2 - 1, "-1,1", {}),
                                    (nhwc, "uint8", {"channels_last": True}),
                                    (unit.double().numpy(), "0,1", {})]:
        torch.testing.assert_close(extract_features(shipped, images, input_range, **kw), ref,
                                   rtol=0, atol=1e-4)


def test_one_image_alone_or_in_a_batch(shipped):
    u8 = uint8_images(n=7)
    batch = extract_features(shipped, u8, "uint8", batch_size=500)
    streamed = extract_features(shipped, u8, "uint8", batch_size=3)
    torch.testing.assert_close(streamed, batch, rtol=0, atol=1e-5)
    for i in (0, 4):
        alone = extract_features(shipped, u8[i:i + 1], "uint8")
        torch.testing.assert_close(alone[0], batch[i], rtol=0, atol=1e-5)


def test_network_stays_in_eval_mode(shipped):
    x = to_unit_range(uint8_images(n=4), "uint8")
    before = shipped(x)
    bn = next(m for m in shipped.modules() if isinstance(m, torch.nn.BatchNorm2d))
    running_mean = bn.running_mean.clone()
    assert shipped.train() is shipped
    shipped.train(True)
    assert not shipped.training
    assert not any(m.training for m in shipped.modules())
    after = shipped(x)  # dropout would change logits, batch statistics would change features
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    torch.testing.assert_close(shipped.logits(x), shipped.logits(x), rtol=0, atol=0)
    assert torch.equal(bn.running_mean, running_mean)
    assert not any(p.requires_grad for p in shipped.parameters())


def test_logits_are_the_classifier_logits(shipped):
    u8 = uint8_images(n=5)
    logits = extract_logits(shipped, u8, "uint8", batch_size=2)
    assert logits.dtype == torch.float64 and logits.shape == (5, 10)
    with torch.no_grad():
        ref = shipped.classifier.eval()(u8.float() / 255 * 2 - 1)
    torch.testing.assert_close(logits, ref.double(), rtol=0, atol=1e-5)


def test_wrong_channels_size_or_network_input_raise(shipped):
    with pytest.raises(ValueError, match="1 channels, got 3"):
        extract_features(shipped, uint8_images(c=3), "uint8")
    with pytest.raises(ValueError, match="28x28 images, got 32x32"):
        extract_features(shipped, uint8_images(size=32), "uint8")
    nhwc = uint8_images().permute(0, 2, 3, 1).numpy().copy()
    with pytest.raises(ValueError, match="channels_last=True"):  # NHWC read as NCHW
        extract_features(shipped, nhwc, "uint8")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # forward takes [0, 1] floats only
        shipped(torch.full((1, 1, 28, 28), -1.0))
    with pytest.raises(ValueError, match="float"):
        shipped(uint8_images(n=1))
    with pytest.raises(ValueError, match="no images"):
        extract_features(shipped, uint8_images()[:0], "uint8")
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(shipped, uint8_images(), "uint8", batch_size=0)
    with pytest.raises(TypeError):
        extract_features(shipped.classifier, uint8_images(), "uint8")


def test_in_memory_classifier_is_named_by_its_weights():
    torch.manual_seed(0)
    a = ClassifierFeatures(ImageClassifier(num_classes=3, channels=(4, 8)))
    b = ClassifierFeatures(ImageClassifier(num_classes=3, channels=(4, 8)))
    assert re.fullmatch(r"classifier@[0-9a-f]{12}", a.name)
    assert a.name != b.name and a.num_features == 8 and a.image_size is None
    assert a(torch.rand(2, 1, 9, 13)).shape == (2, 8)  # no size constraint without a config
    with pytest.raises(ValueError, match="not both"):
        ClassifierFeatures(a.classifier, path=default_classifier_path())
    with pytest.raises(TypeError):
        ClassifierFeatures(torch.nn.Linear(2, 2))


def test_classifier_folder_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="safetensors"):
        ClassifierFeatures(path=str(tmp_path))


def test_base_class_has_no_logits_and_unknown_names_raise():
    net = FeatureNetworkStub()
    with pytest.raises(NotImplementedError, match="mean@0"):
        net.logits(torch.zeros(1, 1, 2, 2))
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 2, 2)
    feats = extract_features(net, images, "uint8", batch_size=2)
    assert feats.dtype == torch.float64
    assert feats[:, 0].tolist() == pytest.approx([0.0, 0.2, 1.0], abs=1e-7)
    assert net.calls == 2  # streamed in batches of 2
    with pytest.raises(ValueError, match="inception"):
        get_feature_network("clip")


# --- Inception (offline) ----------------------------------------------------------------------

def _forbid_downloads(monkeypatch):
    """Any attempt to fetch weights fails the test."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    def no_download(*args, **kwargs):
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setattr(fe, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """torch-fidelity's Inception-v3 with seeded random (He-normal conv) weights, built without
    loading anything, and its state_dict saved as torch-fidelity loads it: ``(model, path)``."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    mp = pytest.MonkeyPatch()
    mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
    mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
            for m in model.modules():
                if isinstance(m, torch.nn.Conv2d):  # keeps activations O(1) through 90 layers
                    torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    finally:
        mp.undo()
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(model.state_dict(), path)
    return model.eval(), path


@pytest.mark.parametrize("weights_path", [None, "/nonexistent/" + INCEPTION_WEIGHTS_FILE])
def test_inception_without_weights_raises_and_never_downloads(monkeypatch, weights_path):
    _forbid_downloads(monkeypatch)
    for make in (lambda: InceptionFeatures(weights_path),
                 lambda: get_feature_network("inception", weights_path)):
        with pytest.raises(FileNotFoundError) as err:
            make()
        assert INCEPTION_WEIGHTS_FILE in str(err.value)
        assert INCEPTION_WEIGHTS_URL in str(err.value)


def test_inception_loads_a_local_file(monkeypatch, random_inception):
    model, path = random_inception
    _forbid_downloads(monkeypatch)
    with pytest.warns(UserWarning, match="not comparable"):  # not the reference file's hash
        net = InceptionFeatures(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert net.name == f"inception-v3-fid@{sha[:12]}" and net.num_features == 2048
    loaded = net.inception.state_dict()
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    assert "tiled to 3 channels" in net.description and "299x299" in net.description
    assert "antialias=True" in net.description

    gray = to_unit_range(uint8_images(n=3), "uint8")  # (3, 1, 28, 28)
    feats = net(gray)
    assert feats.shape == (3, 2048) and feats.dtype == torch.float64
    assert feats.std() > 0.1  # the random net gives O(1), varying features
    torch.testing.assert_close(net(gray.expand(-1, 3, -1, -1)), feats, rtol=0, atol=0)
    net.train()
    assert not any(m.training for m in net.modules())
    with pytest.raises(NotImplementedError):
        net.logits(gray)


def test_inception_without_antialias_is_torch_fidelity_reference(random_inception):
    model, path = random_inception
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        net = InceptionFeatures(path, antialias=False)
    assert "TF1.x-compatible" in net.description
    u8 = uint8_images(n=2)
    feats = extract_features(net, u8, "uint8")
    with torch.no_grad():
        ref = model(u8.expand(-1, 3, -1, -1))[0]  # torch-fidelity's own forward, uint8 RGB
    torch.testing.assert_close(feats, ref.double(), rtol=1e-6, atol=1e-6)
    # floats in [0, 1] are rounded (not truncated) to 0..255, as an 8-bit image file would be
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model((x * 255).round().to(torch.uint8).expand(-1, 3, -1, -1))[0]
        truncated = model((x * 255).to(torch.uint8).expand(-1, 3, -1, -1))[0]
    torch.testing.assert_close(net(x), ref.double(), rtol=1e-6, atol=1e-6)
    assert (truncated - ref).abs().max() > 1e-3  # the check above can tell the two apart


def test_inception_refuses_pickled_code_and_foreign_state_dicts(tmp_path):
    code = tmp_path / "code.pth"
    torch.save({"weights": torch.zeros(1), "obj": np.random.default_rng(0)}, code)
    with pytest.raises(ValueError, match="weights_only"):
        InceptionFeatures(code)
    foreign = tmp_path / "foreign.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, foreign)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ValueError, match="does not fit"):
            InceptionFeatures(foreign)
