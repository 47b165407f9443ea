"""How well can the frozen text encoder alone tell the Fashion-MNIST classes of held-out prompts?

The shipped text-to-image model sees prompts only through the frozen MiniLM; if a classifier
fitted on the encoder's embeddings of the *training* captions cannot name the class of the
*held-out* paraphrases, no U-Net trained on those captions can be expected to draw the right
class for them either. This script fits three such text-only classifiers per pooling of the
encoder's states and prints their held-out accuracy:

- 1-NN and 9-NN (cosine) over the training captions' embeddings;
- nearest class centroid;
- a linear softmax probe (L2-regularised, 400 Adam steps).

Poolings: the masked mean of layer 2, 4, 6 (last) states (the sentence embedding MiniLM is trained
for is the last layer's), the [CLS] state, and the masked max. Runs in ~20 s on a CPU:

    python benchmarks/text_encoder_probe.py [--json docs/results/text_to_image/encoder_probe.json]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from diffusion.conditioning import load_text_encoder
from diffusion.data.captions import FASHION_MNIST_HELD_OUT_PROMPTS, FASHION_MNIST_TRAINING_PROMPTS


def embeddings(prompts, tokenizer, encoder) -> dict[str, torch.Tensor]:
    tokens = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = encoder(**tokens, output_hidden_states=True)
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    pooled = {f"mean layer {i}": (out.hidden_states[i] * mask).sum(1) / mask.sum(1)
              for i in (2, 4, len(out.hidden_states) - 1)}
    pooled["[CLS]"] = out.last_hidden_state[:, 0]
    pooled["max"] = (out.last_hidden_state - 1e4 * (1 - mask)).max(1).values
    return {k: F.normalize(v, dim=-1) for k, v in pooled.items()}


def probe(train, train_labels, test, test_labels, num_classes: int) -> dict[str, float]:
    sim = test @ train.T
    acc = lambda pred: (pred == test_labels).float().mean().item()  # noqa: E731
    top9 = train_labels[sim.topk(9, dim=1).indices]
    centroids = F.normalize(torch.stack([train[train_labels == c].mean(0)
                                         for c in range(num_classes)]), dim=-1)
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(train.shape[1], num_classes, generator=gen) * 0.01).requires_grad_()
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(400):
        loss = F.cross_entropy(train @ w * 20 + b, train_labels) + 1e-4 * (w ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"1-NN": acc(train_labels[sim.argmax(1)]), "9-NN": acc(torch.mode(top9, dim=1).values),
            "centroid": acc((test @ centroids.T).argmax(1)),
            "linear": acc((test @ w * 20 + b).argmax(1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    tokenizer, encoder = load_text_encoder()
    train = [p for ps in FASHION_MNIST_TRAINING_PROMPTS for p in ps]
    train_labels = torch.tensor([c for c, ps in enumerate(FASHION_MNIST_TRAINING_PROMPTS) for _ in ps])
    test = [p for ps in FASHION_MNIST_HELD_OUT_PROMPTS for p in ps]
    test_labels = torch.tensor([c for c, ps in enumerate(FASHION_MNIST_HELD_OUT_PROMPTS) for _ in ps])
    a, b = embeddings(train, tokenizer, encoder), embeddings(test, tokenizer, encoder)
    k = len(FASHION_MNIST_TRAINING_PROMPTS)
    results = {name: probe(a[name], train_labels, b[name], test_labels, k) for name in a}
    print(f"held-out prompts: {len(test)} ({len(test) // k} per class); training captions: "
          f"{len(train)}; encoder: {type(encoder).__name__}, hidden {a['[CLS]'].shape[1]}")
    print(f"{'pooling':14s} " + " ".join(f"{m:>9s}" for m in next(iter(results.values()))))
    for name, r in results.items():
        print(f"{name:14s} " + " ".join(f"{v:9.3f}" for v in r.values()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"held_out_prompts": len(test), "training_captions": len(train),
                       "accuracy": results}, f, indent=2)


if __name__ == "__main__":
    main()
