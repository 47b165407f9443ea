"""Offline evaluation: feature networks (images -> features) and scores (features -> numbers).

Two steps, so features can be cached and reused across metrics:

1. :mod:`~diffusion.evaluation.features`: :func:`extract_features` / :func:`extract_logits` with a
   :class:`FeatureNetwork` (:class:`ClassifierFeatures` by default, :class:`InceptionFeatures` from
   a local weights file). Images come in a declared range (``"uint8"``, ``"0,1"``, ``"-1,1"``).
2. :mod:`~diffusion.evaluation.scores`: FID, KID, precision/recall, Inception Score and
   conditional accuracy from feature / logit tensors.

torchmetrics (extra ``eval``) is imported only when a score needs it.

Example::

    >>> import torch
    >>> from diffusion.evaluation import get_feature_network, extract_features, fid_from_features
    >>> net = get_feature_network("classifier")
    >>> g = torch.Generator().manual_seed(0)
    >>> a = torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8, generator=g)
    >>> b = torch.randint(0, 128, (50, 1, 28, 28), dtype=torch.uint8, generator=g)
    >>> fid = fid_from_features(extract_features(net, a, "uint8"), extract_features(net, b, "uint8"))
    >>> print(f"FID[{net.name}] = {fid:.2f}")  # doctest: +SKIP
"""

from diffusion.evaluation.features import (
    FEATURE_NETWORKS,
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    INPUT_RANGES,
    ClassifierFeatures,
    FeatureNetwork,
    InceptionFeatures,
    extract_features,
    extract_logits,
    get_feature_network,
    to_unit_range,
)
from diffusion.evaluation.scores import (
    conditional_accuracy_from_logits,
    fid_from_features,
    frechet_distance,
    inception_score,
    kid_from_features,
    precision_recall,
)

__all__ = [
    "FEATURE_NETWORKS", "INCEPTION_WEIGHTS_FILE", "INCEPTION_WEIGHTS_URL", "INPUT_RANGES",
    "ClassifierFeatures", "FeatureNetwork", "InceptionFeatures", "extract_features",
    "extract_logits", "get_feature_network", "to_unit_range",
    "conditional_accuracy_from_logits", "fid_from_features", "frechet_distance",
    "inception_score", "kid_from_features", "precision_recall",
]

# Generation + scoring on top of the two steps (imported last: it uses both).
from diffusion.evaluation.evaluator import (  # noqa: E402
    DEFAULT_METRICS,
    METRICS,
    compute_metrics,
    default_cache_dir,
    evaluate,
    reference_features,
)
from diffusion.evaluation.sampling import generate_samples  # noqa: E402

__all__ += ["DEFAULT_METRICS", "METRICS", "compute_metrics", "default_cache_dir", "evaluate",
            "reference_features", "generate_samples"]
