"""Feature networks for offline evaluation, and the one place image ranges are checked.

Every metric in :mod:`diffusion.evaluation.scores` works on feature tensors ``(N, D)``; this module
turns images into them. A :class:`FeatureNetwork` takes float ``(B, C, H, W)`` in [0, 1] and returns
float64 ``(B, D)``; its ``name`` (network + weights hash) goes into cache keys and is printed with
every number, so figures from different feature networks are never mixed up.

- :class:`ClassifierFeatures`: penultimate features of the project's own classifier (the shipped
  Fashion-MNIST one by default). The offline default: Inception weights cannot be downloaded here.
- :class:`InceptionFeatures`: Inception-v3 pool3 features (2048-d) of the FID reference network
  (Heusel et al. 2017), through torchmetrics' ``NoTrainInceptionV3``, from a weights file the user
  supplies. Nothing is ever downloaded.

Image ranges are explicit: :func:`to_unit_range` accepts ``"uint8"``, ``"0,1"`` or ``"-1,1"`` and
refuses anything that does not match the declared range.

Example::

    >>> import torch
    >>> from diffusion.evaluation import ClassifierFeatures, extract_features
    >>> net = ClassifierFeatures()                      # shipped Fashion-MNIST classifier
    >>> images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    >>> extract_features(net, images, "uint8").shape
    torch.Size([4, 128])
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from diffusion.models.classifier import ImageClassifier

ArrayLike = Union[torch.Tensor, np.ndarray]

INPUT_RANGES = ("uint8", "0,1", "-1,1")
_FLOAT_SLACK = 1e-6  # float images may overshoot their range by this much (then are clamped)
_NUMPY_DTYPES = (np.uint8, np.float16, np.float32, np.float64)

# torch-fidelity's port of the TF FID Inception graph (2015-12-05), the weights behind the FID
# numbers in the literature. Its file name carries the sha256 prefix (torch.hub convention).
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                         + INCEPTION_WEIGHTS_FILE)
INCEPTION_SHA256_PREFIX = "6726825d"


# --- image ranges -----------------------------------------------------------------------------

def _checked_images(images: ArrayLike, input_range: str, channels_last: bool) -> torch.Tensor:
    """Validate ``images`` against ``input_range``; return them as an NCHW tensor view (no copy,
    dtype unchanged). Raises as :func:`to_unit_range` documents."""
    if input_range not in INPUT_RANGES:
        raise ValueError(f"input_range must be one of {INPUT_RANGES}, got {input_range!r}")
    if isinstance(images, np.ndarray):
        if images.dtype.type not in _NUMPY_DTYPES:
            raise ValueError(f"images have dtype {images.dtype}; allowed: uint8 with "
                             f"input_range='uint8', float16/32/64 with '0,1' or '-1,1'")
        images = torch.from_numpy(images)
    elif not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor or numpy.ndarray, got {type(images).__name__}")
    if images.ndim != 4:
        layout = "(B, H, W, C) with channels_last=True" if channels_last else "(B, C, H, W)"
        raise ValueError(f"images must be 4-D {layout}, got shape {tuple(images.shape)}")
    if channels_last:
        images = images.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W), a view
    if input_range == "uint8":
        if images.dtype != torch.uint8:
            raise ValueError(f"input_range='uint8' needs dtype uint8 (0..255), got {images.dtype}; "
                             f"for float images pass input_range='0,1' or '-1,1'")
        return images
    if not images.is_floating_point():
        raise ValueError(f"input_range={input_range!r} needs a float dtype, got {images.dtype}"
                         + ("; pass input_range='uint8'" if images.dtype == torch.uint8 else ""))
    if images.numel():
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or inf")
        lo, hi = (0.0, 1.0) if input_range == "0,1" else (-1.0, 1.0)
        vmin, vmax = images.min().item(), images.max().item()
        if vmin < lo - _FLOAT_SLACK or vmax > hi + _FLOAT_SLACK:
            raise ValueError(f"input_range={input_range!r} allows values in [{lo:g}, {hi:g}], "
                             f"got min {vmin:.6g}, max {vmax:.6g}")
    return images


def _unit_from_checked(images: torch.Tensor, input_range: str) -> torch.Tensor:
    """float32 in [0, 1] from a tensor that passed :func:`_checked_images`."""
    if input_range == "uint8":
        return images.to(torch.float32) / 255
    x = images.to(torch.float32)
    if input_range == "-1,1":
        x = (x + 1) / 2
    return x.clamp(0.0, 1.0)  # removes the allowed 1e-6 overshoot


def to_unit_range(images: ArrayLike, input_range: str, channels_last: bool = False) -> torch.Tensor:
    """Images in a declared range -> float32 ``(B, C, H, W)`` in [0, 1].

    Args:
        images: ``(B, C, H, W)`` ``torch.Tensor`` or ``numpy.ndarray``; ``(B, H, W, C)`` only with
            ``channels_last=True`` (e.g. the uint8 NHWC arrays of ``pipe(..., output_type="np")``).
            NHWC is never guessed from the shape.
        input_range: ``"uint8"`` (dtype uint8, 0..255), ``"0,1"`` (float in [0, 1]) or ``"-1,1"``
            (float in [-1, 1], what the models see). Floats may overshoot by 1e-6 (clamped away).
        channels_last: the last axis holds the channels.

    Returns:
        float32 ``(B, C, H, W)`` in [0, 1], on the device of ``images`` (CPU for numpy). uint8
        values ``k`` map to ``k / 255``, ``"-1,1"`` values ``v`` to ``(v + 1) / 2``.

    Raises:
        ValueError: unknown ``input_range``; dtype not matching it (uint8 for ``"uint8"``, float
            otherwise); values outside the range; NaN or inf; not 4-D.
        TypeError: ``images`` is neither a tensor nor a numpy array.

    Example::

        >>> import numpy as np
        >>> x = np.full((2, 28, 28, 1), 255, dtype=np.uint8)       # pipe(..., output_type="np")
        >>> to_unit_range(x, "uint8", channels_last=True).shape
        torch.Size([2, 1, 28, 28])
        >>> to_unit_range(torch.tensor([[[[-1.0, 0.0, 1.0]]]]), "-1,1")
        tensor([[[[0.0000, 0.5000, 1.0000]]]])
    """
    return _unit_from_checked(_checked_images(images, input_range, channels_last), input_range)


# --- feature networks -------------------------------------------------------------------------

def sha256_file(path: Union[str, Path]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256_state_dict(module: nn.Module) -> str:
    """Hex sha256 over (name, dtype, shape, bytes) of every entry of ``module.state_dict()``."""
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        value = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        h.update(value.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class FeatureNetwork(nn.Module):
    """Base class: a frozen network that maps images in [0, 1] to feature vectors.

    Subclasses set ``name`` (stable identifier, ``"<network>@<12 hex of sha256 of the weights>"``;
    use it in cache keys and print it beside every number), ``num_features``, ``description``
    (network, input size, resizing, channel tiling), ``in_channels`` (accepted channel counts) and
    ``image_size`` (required ``(H, W)``, or ``None`` for any size), and implement
    ``_features(x) -> (B, num_features)``.

    The network never leaves eval mode: ``train()`` is a no-op that keeps dropout off and
    BatchNorm on its running statistics, so a feature does not depend on the batch it is in.
    Parameters have ``requires_grad=False``.
    """

    name: str
    num_features: int
    description: str
    in_channels: tuple[int, ...]
    image_size: Optional[tuple[int, int]] = None

    def _freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FeatureNetwork":
        """Always eval mode, whatever ``mode`` is (feature networks are frozen)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is float ``(B, C, H, W)`` in [0, 1] of an accepted size."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4:
            got = (f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor)
                   else type(x).__name__)
            raise ValueError(f"{self.name} takes float (B, C, H, W) images in [0, 1], got {got}; "
                             f"use extract_features / to_unit_range for other ranges")
        c, h, w = x.shape[1:]
        if c not in self.in_channels:
            raise ValueError(f"{self.name} takes {' or '.join(map(str, self.in_channels))} channels, "
                             f"got {c} (shape {tuple(x.shape)}); NHWC arrays such as "
                             f"pipe(output_type='np') need channels_last=True")
        if self.image_size is not None and (h, w) != tuple(self.image_size):
            raise ValueError(f"{self.name} takes {self.image_size[0]}x{self.image_size[1]} images, "
                             f"got {h}x{w}")
        if x.numel() and (x.min() < -_FLOAT_SLACK or x.max() > 1 + _FLOAT_SLACK):
            raise ValueError(f"{self.name} takes images in [0, 1], got values in "
                             f"[{x.min().item():.6g}, {x.max().item():.6g}]")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float ``(B, C, H, W)`` in [0, 1] -> float64 ``(B, num_features)`` on the network's device."""
        self.check_input(x)
        return self._features(x).to(torch.float64)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits float64 ``(B, K)`` of images in [0, 1]; only networks with a class head."""
        raise NotImplementedError(f"{self.name} has no class probabilities (logits)")


class ClassifierFeatures(FeatureNetwork):
    """Penultimate features of a :class:`~diffusion.models.classifier.ImageClassifier`.

    ``features = classifier.features(2 * x - 1)``: the global-average-pooled last conv level
    (128-d for the shipped Fashion-MNIST classifier), no resizing, no channel tiling. The FID
    computed on them is a "FID under this classifier": comparable only between runs that print
    the same ``name``, never with Inception FIDs in papers.

    Args:
        classifier: an ``ImageClassifier`` already in memory; or
        path: a folder saved with ``save_pretrained`` (default: the shipped
            ``diffusion.default_classifier_path()``). Give at most one of the two.
        image_size: required input size; default: ``data.image_size`` of the folder's
            ``training_config.yaml`` (28 for the shipped classifier), otherwise any size.

    Attributes:
        name: ``"<folder name>@<12 hex of sha256 of diffusion_pytorch_model.safetensors>"``, e.g.
            ``"fashion-mnist-classifier@..."`` (a run's ``final`` export is named by the run's
            folder); ``"classifier@<12 hex of sha256 of the state_dict>"`` for an in-memory
            classifier.

    Raises:
        ValueError: both ``classifier`` and ``path`` given.
        TypeError: ``classifier`` is not an ``ImageClassifier``.
        FileNotFoundError: no ``diffusion_pytorch_model.safetensors`` under ``path``.

    Example::

        >>> net = ClassifierFeatures()
        >>> net.name.startswith("fashion-mnist-classifier@"), net.num_features
        (True, 128)
        >>> net(torch.rand(2, 1, 28, 28)).dtype
        torch.float64
    """

    def __init__(self, classifier: Optional[ImageClassifier] = None, path: Optional[str] = None,
                 image_size: Optional[int] = None):
        super().__init__()
        if classifier is not None and path is not None:
            raise ValueError("give either classifier or path, not both")
        if classifier is None:
            from diffusion.paths import default_classifier_path
            from diffusion.pipelines.loading import model_folder_name
            from diffusion.models.classifier import load_classifier

            folder = Path(path or default_classifier_path())
            weights = folder / "diffusion_pytorch_model.safetensors"
            if not weights.is_file():
                raise FileNotFoundError(f"no classifier weights at {weights} (expected a folder "
                                        f"written by ImageClassifier.save_pretrained)")
            classifier = load_classifier(str(folder))
            self.name = f"{model_folder_name(folder)}@{sha256_file(weights)[:12]}"
            if image_size is None:
                image_size = _trained_image_size(folder)
        else:
            if not isinstance(classifier, ImageClassifier):
                raise TypeError(f"classifier must be a diffusion.models.classifier.ImageClassifier, "
                                f"got {type(classifier).__name__}")
            self.name = f"classifier@{_sha256_state_dict(classifier)[:12]}"
        self.classifier = classifier
        cfg = classifier.config
        self.num_features = int(cfg.channels[-1])
        self.in_channels = (int(cfg.in_channels),)
        self.image_size = None if image_size is None else (int(image_size), int(image_size))
        size = "any HxW" if image_size is None else f"{image_size}x{image_size}"
        n_params = sum(p.numel() for p in classifier.parameters())
        self.description = (
            f"ImageClassifier ({'-'.join(map(str, cfg.channels))} channels, {n_params:,} "
            f"parameters), penultimate {self.num_features}-d global-average-pooled features; input "
            f"{cfg.in_channels}x{size} float in [0, 1], mapped to [-1, 1]; no resize, no channel "
            f"tiling; eval mode (BatchNorm running statistics, no dropout)")
        self._freeze()

    def _as_model_input(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 2 - 1).to(self.classifier.device, self.classifier.dtype)  # [0, 1] -> [-1, 1]

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(self._as_model_input(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits float64 ``(B, num_classes)`` of float ``(B, C, H, W)`` images in [0, 1]."""
        self.check_input(x)
        return self.classifier(self._as_model_input(x)).to(torch.float64)


def _trained_image_size(folder: Path) -> Optional[int]:
    """``data.image_size`` of ``folder/training_config.yaml`` if present, else None."""
    config = folder / "training_config.yaml"
    if not config.is_file():
        return None
    import yaml

    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    size = data.get("image_size")
    return int(size) if size is not None else None


def _inception_missing_message(weights_path) -> str:
    where = ("no weights file given (inception_weights= / --inception-weights)"
             if weights_path is None else f"no file at {weights_path}")
    return (f"Inception-v3 FID weights: {where}. Expected torch-fidelity's {INCEPTION_WEIGHTS_FILE} "
            f"(the FID Inception of Heusel et al. 2017, TF graph 2015-12-05, ported to PyTorch). "
            f"Nothing is downloaded here: fetch {INCEPTION_WEIGHTS_URL} on a machine with internet "
            f"access, copy it over and pass its path. Without it, use the classifier features "
            f"(feature_network='classifier', the default; on the command line drop --features "
            f"inception).")


class InceptionFeatures(FeatureNetwork):
    """Inception-v3 pool3 features (2048-d), the FID / KID feature space (Heusel et al. 2017).

    Runs torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's ``FeatureExtractorInceptionV3``
    with the resize made selectable) loaded from ``weights_path``. Images in [0, 1] are rounded to
    uint8 0..255 (the FID reference reads 8-bit images), grayscale is tiled to 3 channels, and the
    extractor resizes to 299x299 bilinearly: with ``antialias=True`` through
    ``torch.nn.functional.interpolate(..., antialias=True)``, with ``antialias=False`` through
    torch-fidelity's TF1.x-compatible bilinear resize (what the reference TF FID code does; use it
    to compare with published numbers). Then ``(x - 128) / 128`` and the network.

    Offline only: ``weights_path`` must exist, so torch-fidelity never takes its download branch
    (it downloads only when the path is None). The file is read once, with
    ``torch.load(weights_only=True)`` (a pickle that carries code is refused), and torch-fidelity,
    whose own loader unpickles without that guard, gets a private copy re-saved from those plain
    tensors, never the user's file.

    Args:
        weights_path: torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (a plain
            ``state_dict``, 91 MB), from
            https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth
        antialias: resize with antialiasing (torchmetrics' default) or TF1.x-compatible.

    Attributes:
        name: ``"inception-v3-fid@<12 hex of sha256 of the file>"``.

    Raises:
        FileNotFoundError: ``weights_path`` is None or not a file (the message gives the URL).
        ValueError: the file is not a plain tensor ``state_dict``, or does not fit the architecture.
        ImportError: torchmetrics / torch-fidelity are missing.

    Warns:
        UserWarning: the file's sha256 does not start with ``6726825d``: features are then not
            those of the reference network and FIDs are not comparable with published ones.

    Example::

        >>> net = InceptionFeatures("weights-inception-2015-12-05-6726825d.pth")  # doctest: +SKIP
        >>> net(torch.rand(2, 1, 28, 28)).shape                                   # doctest: +SKIP
        torch.Size([2, 2048])
    """

    def __init__(self, weights_path: Optional[Union[str, Path]], antialias: bool = True):
        super().__init__()
        if weights_path is None or not Path(weights_path).is_file():
            raise FileNotFoundError(_inception_missing_message(weights_path))
        try:
            import torch_fidelity  # noqa: F401
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as e:
            raise ImportError("InceptionFeatures needs torchmetrics and torch-fidelity: "
                              "pip install 'diffusion-centric[eval]' torch-fidelity") from e
        digest = sha256_file(weights_path)
        try:
            state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means "not plain tensors"
            raise ValueError(f"{weights_path} is not a plain tensor state_dict (torch.load with "
                             f"weights_only=True failed: {e})") from e
        if not isinstance(state_dict, dict):
            raise ValueError(f"{weights_path} holds a {type(state_dict).__name__}, not a state_dict")
        if not digest.startswith(INCEPTION_SHA256_PREFIX):
            import warnings

            warnings.warn(f"{weights_path} (sha256 {digest[:12]}...) is not {INCEPTION_WEIGHTS_FILE}"
                          f": its features and FIDs are not comparable with published ones",
                          UserWarning, stacklevel=2)
        with tempfile.TemporaryDirectory() as tmp:  # plain tensors only: safe to unpickle
            checked = Path(tmp) / "inception.pth"
            torch.save(state_dict, checked)
            del state_dict
            try:
                self.inception = NoTrainInceptionV3(
                    name="inception-v3-compat", features_list=["2048"],
                    feature_extractor_weights_path=str(checked), antialias=antialias)
            except RuntimeError as e:  # load_state_dict: missing / unexpected keys, wrong shapes
                raise ValueError(f"{weights_path} does not fit torch-fidelity's Inception-v3: "
                                 f"{e}") from e
        self.antialias = antialias
        self.name = f"inception-v3-fid@{digest[:12]}"
        self.num_features = 2048
        self.in_channels = (1, 3)
        self.image_size = None
        resize = ("bilinear with antialias (torch interpolate, antialias=True)" if antialias else
                  "bilinear without antialias (TF1.x-compatible, as the reference FID code)")
        self.description = (
            f"Inception-v3 FID network (torch-fidelity port of the TF 2015-12-05 graph, via "
            f"torchmetrics NoTrainInceptionV3), pool3 2048-d features; input any HxW float in "
            f"[0, 1], rounded to uint8 0..255, grayscale tiled to 3 channels (RGB unchanged), "
            f"resized to 299x299 {resize}, then (x - 128) / 128")
        self._freeze()

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grayscale -> RGB by tiling
        x_uint8 = (x * 255).round().clamp(0, 255).to(self.device, torch.uint8)
        return self.inception(x_uint8)  # (B, 2048) float32


FEATURE_NETWORKS = ("classifier", "inception")


def get_feature_network(name: str = "classifier",
                        weights_path: Optional[Union[str, Path]] = None) -> FeatureNetwork:
    """A feature network by name.

    Args:
        name: ``"classifier"`` (:class:`ClassifierFeatures`; ``weights_path`` is a classifier
            folder, default the shipped one) or ``"inception"`` (:class:`InceptionFeatures`;
            ``weights_path`` is the required Inception weights file).

    Raises:
        ValueError: unknown ``name``.
        FileNotFoundError: missing weights (see the two classes).

    Example::

        >>> get_feature_network("classifier").num_features
        128
    """
    if name == "classifier":
        return ClassifierFeatures(path=None if weights_path is None else str(weights_path))
    if name == "inception":
        return InceptionFeatures(weights_path)
    raise ValueError(f"unknown feature network {name!r}; choose one of {FEATURE_NETWORKS}")


# --- streaming extraction ---------------------------------------------------------------------

def _extract(method: str, network: FeatureNetwork, images: ArrayLike, input_range: str,
             batch_size: int, channels_last: bool) -> torch.Tensor:
    if not isinstance(network, FeatureNetwork):
        raise TypeError(f"network must be a FeatureNetwork, got {type(network).__name__}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    images = _checked_images(images, input_range, channels_last)  # whole set, before any forward
    if len(images) == 0:
        raise ValueError("no images given")
    network.check_input(_unit_from_checked(images[:1], input_range))  # channels / size, early
    fn = getattr(network, method)
    device = network.device
    out = []
    with torch.no_grad():
        for lo in range(0, len(images), batch_size):
            x = _unit_from_checked(images[lo:lo + batch_size].to(device), input_range)
            out.append(fn(x).cpu())
    return torch.cat(out)


def extract_features(network: FeatureNetwork, images: ArrayLike, input_range: str,
                     batch_size: int = 500, channels_last: bool = False) -> torch.Tensor:
    """Features of many images, in batches, without gradients.

    Args:
        network: a :class:`FeatureNetwork` (on any device; batches are moved to it).
        images: ``(N, C, H, W)`` tensor or array (``(N, H, W, C)`` with ``channels_last=True``),
            in ``input_range`` (see :func:`to_unit_range`). Checked in full before any forward;
            converted to float one batch at a time.
        batch_size: images per forward; the result does not depend on it (eval mode).

    Returns:
        float64 ``(N, network.num_features)`` on the CPU.

    Raises:
        ValueError: bad range/dtype/shape (see :func:`to_unit_range`), channels or size the
            network does not take, no images, ``batch_size`` < 1.
        TypeError: ``network`` is not a :class:`FeatureNetwork`.

    Example::

        >>> net = ClassifierFeatures()
        >>> x = torch.rand(5, 1, 28, 28) * 2 - 1                   # model-space images
        >>> extract_features(net, x, "-1,1", batch_size=2).shape
        torch.Size([5, 128])
    """
    return _extract("forward", network, images, input_range, batch_size, channels_last)


def extract_logits(network: FeatureNetwork, images: ArrayLike, input_range: str,
                   batch_size: int = 500, channels_last: bool = False) -> torch.Tensor:
    """Class logits float64 ``(N, K)`` on the CPU of many images; as :func:`extract_features`.

    Raises:
        NotImplementedError: the network has no class head (e.g. :class:`InceptionFeatures`).

    Example::

        >>> extract_logits(ClassifierFeatures(), torch.zeros(3, 1, 28, 28), "0,1").shape
        torch.Size([3, 10])
    """
    return _extract("logits", network, images, input_range, batch_size, channels_last)
