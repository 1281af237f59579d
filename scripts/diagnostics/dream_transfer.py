"""Cheap proxy for a dream setting: does one round of dreams teach real digits? (issue 15)

Trains every client of the preset locally for a few epochs, then for each variant (``--set``-style
overrides) dreams two batches collaboratively from those same models, distils every client on
them for 3 and for 10 epochs, and prints the mean client test accuracy after distillation against
the local-only accuracy. A full run costs ~10 rounds of this; the proxy ranks settings in ~2 min.

    PYTHONPATH=. python scripts/diagnostics/dream_transfer.py --alpha 0.1 --seed 3 \\
        "base:" "bn5:dreams.w_bn=5"
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time

import torch

from securedream.config import resolve_config
from securedream.rounds.experiment import Experiment
from securedream.rounds.server import collaborative_dreaming
from securedream.seeding import torch_generator

BASE = [
    "dreams.w_target=1",
    "dreams.class_share=true",
    "dreams.global_steps=30",
    "dreams.lr=0.1",
    "dreams.batch_size=64",
    "dreams.w_bn=0.1",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=4)
    parser.add_argument("variants", nargs="+", help='"name:key=value,key=value" on top of BASE')
    args = parser.parse_args()
    torch.set_num_threads(1)
    common = [f"seed={args.seed}", f"data.alpha={args.alpha}", *BASE]
    exp = Experiment(resolve_config(preset="demo", overrides=common))
    for c in exp.clients:
        c.train_local(args.local_epochs, torch_generator(args.seed, "train", c.client_id, 0))
    x, y = exp.data.test_x, exp.data.test_y

    def mean_accuracy() -> float:
        return sum(c.evaluate(x, y) for c in exp.clients) / len(exp.clients)

    print(f"local only {mean_accuracy():.3f}", flush=True)
    states = [copy.deepcopy(c.state_dict()) for c in exp.clients]
    for variant in args.variants:
        name, _, pairs = variant.partition(":")
        cfg = resolve_config(
            preset="demo", overrides=[*common, *(p for p in pairs.split(",") if p)]
        )
        exp.cfg = cfg
        for c, state in zip(exp.clients, states, strict=True):
            c.load_state_dict(copy.deepcopy(state))
            c.class_shares = None
            if cfg.dreams.class_share:
                c.enable_class_share(exp.data.num_classes)
        start = time.perf_counter()
        buffer = []
        for r in range(2):
            exp.aggregator.start_round(r, [c.client_id for c in exp.clients])
            outcome = collaborative_dreaming(
                exp.initial_dreams(r),
                exp.clients,
                exp.aggregator,
                exp.dreaming_settings(r),
                public_count=len(exp.clients),
                ledger=exp.ledger,
            )
            exp.aggregator.end_round()
            buffer += exp.buffer_entries(outcome.snapshots)
        seconds = time.perf_counter() - start
        results = []
        for epochs in (3, 10):
            for c, state in zip(exp.clients, states, strict=True):
                c.load_state_dict(copy.deepcopy(state))
            settings = dataclasses.replace(exp.distill_settings(), epochs=epochs)
            for c in exp.clients:
                c.distill(buffer, settings, torch_generator(args.seed, "distill", c.client_id, 0))
            results.append(round(mean_accuracy(), 3))
        labels = torch.cat([s for _, s in buffer]).argmax(1)
        histogram = torch.bincount(labels, minlength=exp.data.num_classes).tolist()
        print(
            f"{name} distill 3/10 epochs: {results} soft-label histogram {histogram} "
            f"dreaming {seconds:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
