"""Real images behind the shared pipeline call signature: the floor every model is measured against.

``evaluate(RealImagesPipeline(train_split), "fashion-mnist", reference_split="test")`` scores real
training images against the real test split with exactly the code path, n, class balance and
feature network used for generated images, so the result is the best a generator can hope for
under those settings (FID > 0 at finite n; precision and recall < 1).

Example::

    >>> from diffusion.data.datasets import fashion_mnist
    >>> from diffusion.evaluation import evaluate
    >>> from diffusion.evaluation.real import RealImagesPipeline
    >>> floor = evaluate(RealImagesPipeline(fashion_mnist("train")), num_samples=10_000)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import torch


class RealImagesPipeline:
    """Serves real images as if generated: image ``i`` of class ``c`` (given by the caller, e.g.
    ``i % K``) with generator seed ``s`` is the ``(s // K)``-th image of class ``c`` in a
    permutation of the dataset drawn from ``seed``. Unconditional calls (no ``class_labels``)
    return the ``s``-th image of the permuted dataset.

    Args:
        dataset: a :class:`diffusion.data.datasets.TensorImageDataset` (float ``(N, C, H, W)`` in [-1, 1]).
        seed: the permutation's seed.

    Output (``output_type="pt"``): float ``(B, C, H, W)`` in [0, 1]; ``nfe`` is 0.

    Raises:
        IndexError: more images of a class asked for than the dataset has.
    """

    def __init__(self, dataset, seed: int = 0):
        perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        self.images = dataset.images[perm]
        self.labels = dataset.labels[perm]
        self.num_classes = dataset.num_classes or None
        self.by_class = ([torch.nonzero(self.labels == c)[:, 0] for c in range(self.num_classes)]
                         if self.num_classes else None)
        self.device = torch.device("cpu")
        digest = hashlib.sha256(dataset.images.contiguous().numpy().tobytes()).hexdigest()[:16]
        # Part of the sample-cache key (see diffusion.evaluation.sampling.pipeline_fingerprint).
        self.components = {"dataset": f"{len(dataset)} images sha256:{digest} perm-seed {seed}"}

    def __call__(self, class_labels=None, num_images_per_prompt: int = 1, generator=None,
                 output_type: str = "pt", return_dict: bool = True, **unused):
        if generator is None or not isinstance(generator, (list, tuple)):
            raise ValueError("RealImagesPipeline needs one torch.Generator per image (a list)")
        seeds = [g.initial_seed() for g in generator]
        if class_labels is None:
            idx = torch.tensor(seeds)
        else:
            k = self.num_classes
            pos = []
            for c, s in zip(class_labels, seeds):
                members = self.by_class[int(c)]
                if s // k >= len(members):
                    raise IndexError(f"class {int(c)} has {len(members)} images; image with seed "
                                     f"{s} needs the {s // k}-th")
                pos.append(members[s // k])
            idx = torch.stack(pos)
        from diffusion.pipelines.base import to_output

        out = SimpleNamespace(images=to_output(self.images[idx], output_type), nfe=0)
        return out if return_dict else (out.images,)
