"""How good would CoDream's soft labels be on *real* images? (docs/algorithm.md, issue 15)

Trains each client of a preset locally (no dreams), then labels the real test images the way the
server labels dreams: the mean of the clients' logits (CoDream's default), the mean of their
probabilities, and the class-share-weighted mixture that ``dreams.class_share`` uses for a dream
whose target class is the image's true class. Prints per-client and per-class accuracies.

    PYTHONPATH=. python scripts/diagnostics/teacher_ensemble.py --alpha 0.1 --seed 3 --epochs 6
"""

from __future__ import annotations

import argparse

import torch

from securedream.config import resolve_config
from securedream.dreams.class_share import class_shares
from securedream.rounds.experiment import Experiment
from securedream.seeding import torch_generator


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6, help="local epochs per client")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = resolve_config(
        preset=args.preset, overrides=[f"seed={args.seed}", f"data.alpha={args.alpha}"]
    )
    exp = Experiment(cfg)
    for c in exp.clients:
        c.train_local(args.epochs, torch_generator(args.seed, "train", c.client_id, 0))
    x, y = exp.data.test_x, exp.data.test_y
    classes = exp.data.num_classes
    with torch.no_grad():
        logits = torch.stack([c.model.eval()(x) for c in exp.clients])
    probs = logits.softmax(-1)
    shares = torch.stack([class_shares(c.train_y, classes) for c in exp.clients])
    mixture = (shares[:, y][..., None] * probs).sum(0)

    def report(name: str, scores: torch.Tensor) -> None:
        pred = scores.argmax(-1)
        per_class = [round(float((pred[y == k] == k).float().mean()), 2) for k in range(classes)]
        print(f"{name:<34} {float((pred == y).float().mean()):.3f} per class {per_class}")

    print("label histograms", [s.label_histogram for s in exp.shards])
    for k in range(len(exp.clients)):
        report(f"client {k}", logits[k])
    report("mean of logits (CoDream default)", logits.mean(0))
    report("mean of probabilities", probs.mean(0))
    report("class-share mixture (true class)", mixture)


if __name__ == "__main__":
    main()
