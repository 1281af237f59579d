"""Label-distribution inference: what a server learns about each client's label mix.

A model trained on a skewed shard predicts its frequent labels more often on ambiguous inputs such
as dreams. The server's estimate of a client's label distribution is the mean softmax of the logits
it observes on the dreams of the run's buffer:

- plain aggregation: each client's own logits, so one estimate per client;
- secure aggregation: only the sum of logits (through the run's secure, possibly DP, stack); the
  best the server can say about *any* client is the estimate of the federation's mix, which it
  assigns to every client.

Scores per client against the true histogram of its shard: total-variation distance, and
*presence accuracy* — for each label, "does the client hold at least 1/(2·classes) of its data in
this label?", predicted from the estimate, averaged over labels and clients. The uniform guess is
reported as the reference a server without any information would get.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from attacks.membership.targets import PipelineRun, with_seed
from securedream.aggregation.base import Channel
from securedream.seeding import derive_seed
from securedream.stack import build_aggregation


def observed_estimates(run: PipelineRun, num_classes: int, seed: int) -> tuple[np.ndarray, str]:
    """[K, classes] estimated label distributions as the server of this run would see them."""
    if not run.buffer:
        raise ValueError("the run has no dreams in its buffer (was it trained?)")
    k = len(run.clients)
    ids = [c.client_id for c in run.clients]
    if not run.cfg.secure_aggregation.enabled:
        est = []
        for client in run.clients:
            probs = [torch.softmax(client.dream_logits(x).double(), 1) for x, _ in run.buffer]
            est.append(torch.cat(probs).mean(0).cpu().numpy())
        return np.stack(est), "each client's logits (plain)"
    x0 = run.buffer[0][0]
    view_cfg = with_seed(
        run.cfg, derive_seed(seed, "labels"), ["secure_aggregation.dropout_rate=0.0"]
    )
    stack, _ = build_aggregation(view_cfg, dim=int(x0.numel()), num_classes=num_classes)
    stack.start_round(0, ids)
    probs = []
    try:
        for step, (x, _) in enumerate(run.buffer):
            logits = {c.client_id: c.dream_logits(x).cpu() for c in run.clients}
            total = stack.aggregate(logits, channel=Channel.LOGITS, step=step).total
            probs.append(torch.softmax(total.double() / k, 1))
    finally:
        stack.end_round()
    union = torch.cat(probs).mean(0).cpu().numpy()
    return np.tile(union, (k, 1)), "the aggregate of logits (secure)"


def score_estimates(estimates: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """TV distance, presence accuracy and top-label accuracy of estimates vs true distributions."""
    classes = truth.shape[1]
    tau = 1.0 / (2 * classes)
    tv = 0.5 * np.abs(estimates - truth).sum(axis=1)
    presence = ((estimates >= tau) == (truth >= tau)).mean(axis=1)
    top = estimates.argmax(axis=1) == truth.argmax(axis=1)
    return {
        "tv_distance": float(tv.mean()),
        "tv_distance_per_client": tv.tolist(),
        "presence_accuracy": float(presence.mean()),
        "presence_accuracy_per_client": presence.tolist(),
        "presence_threshold": tau,
        "top_label_accuracy": float(top.mean()),
    }


def label_inference(run: PipelineRun, num_classes: int, seed: int) -> dict[str, Any]:
    hist = np.asarray(run.label_histograms, dtype=np.float64)
    truth = hist / hist.sum(axis=1, keepdims=True)
    estimates, view = observed_estimates(run, num_classes, seed)
    uniform = np.full_like(truth, 1.0 / num_classes)
    union = np.tile(hist.sum(0) / hist.sum(), (truth.shape[0], 1))
    return {
        "view": view,
        "dreams": int(sum(x.shape[0] for x, _ in run.buffer)),
        "estimated": score_estimates(estimates, truth),
        "reference_uniform_guess": score_estimates(uniform, truth),
        "reference_true_federation_mix": score_estimates(union, truth),
        "estimates": estimates.tolist(),
        "truth": truth.tolist(),
    }
