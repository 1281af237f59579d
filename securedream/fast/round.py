"""One CoDream-fast round: local training → collaborative generator steps → soft labels → distil.

Round r, with θ the generator's parameters and z the latents of the round's B dreams:

1. every client trains locally (as in CoDream);
2. the server starts from the meta-generator, θ = θ_meta, and fresh latents z ~ N(0, I); for each
   of ``fast.global_steps`` aggregations it broadcasts (θ, z), every client takes
   ``fast.local_steps`` Adam steps on its copy against its own dream loss and returns
   (Δθ_k, Δz_k), and the server obtains Σ_k (Δθ_k, Δz_k) **only through the aggregator**
   (channel ``generator_delta``: secure aggregation sums it like any other channel), divides by
   the public client count and applies it (FedAvg of the generator and of the latents);
3. the server broadcasts the final (θ, z); each client computes the dreams x = G_θ(z) itself
   and returns its logits on them, whose aggregate over K is the soft label; (x, soft labels)
   enter the dream buffer;
4. clients distil from the buffer, as in CoDream; the meta-generator takes a Reptile step
   toward θ.

Bytes per client per aggregation are those of θ and z (both directions), independent of the
image size and of the clients' models.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from securedream.aggregation import Aggregator, Channel
from securedream.comm import tensor_bytes
from securedream.diagnostics import Disclosure
from securedream.errors import ConfigError
from securedream.fast.client import GeneratorBroadcast, GeneratorWorker, LocalSteps
from securedream.fast.support import unsupported
from securedream.rounds.codream import local_training
from securedream.rounds.experiment import Experiment
from securedream.seeding import torch_generator


def _active(workers: Sequence[GeneratorWorker], aggregator: Aggregator) -> list[GeneratorWorker]:
    keep = set(aggregator.active_clients([w.client_id for w in workers]))
    return [w for w in workers if w.client_id in keep]


def fast_round(
    exp: Experiment, round_index: int, on_step: Callable[[int], None] | None = None
) -> dict[str, Any]:
    cfg = exp.cfg
    problem = unsupported(cfg)
    if problem is not None:  # configs derived without validation (bench) end up here too
        raise ConfigError(*problem)
    meta = exp.fast
    assert meta is not None, "Experiment builds the meta-generator for codream-fast"
    per_client = Disclosure.of(cfg).per_client_metrics
    seconds: dict[str, float] = {}
    report: dict[str, Any] = {}

    start = time.perf_counter()
    report["train_loss"] = local_training(exp, round_index)
    seconds["local_training"] = time.perf_counter() - start

    start = time.perf_counter()
    f = cfg.fast
    latents = torch.randn(
        cfg.dreams.batch_size,
        f.latent_dim,
        generator=torch_generator(cfg.seed, "latents", round_index),
    ).to(exp.device)
    state = GeneratorBroadcast(meta.parameters.to(exp.device), latents)
    workers = [GeneratorWorker(c, meta.template) for c in exp.clients]
    local = LocalSteps(f.local_steps, f.lr_generator, f.lr_latent, exp.dream_weights())
    public_count = len(workers)
    survivors: list[int] = []
    terms: list[dict[str, float]] = []
    norms: list[float] = []
    exp.aggregator.start_round(round_index, [w.client_id for w in workers])
    try:
        for step in range(f.global_steps):
            active = _active(workers, exp.aggregator)
            exp.ledger.received([w.client_id for w in active], state.nbytes, "generator")
            responses: dict[int, torch.Tensor] = {}
            terms = []
            for worker in active:
                delta, client_terms = worker.local_delta(state, local)
                responses[worker.client_id] = delta.to(exp.device)
                if per_client:
                    terms.append(client_terms)
                    norms.append(float(torch.linalg.vector_norm(delta)))
            result = exp.aggregator.aggregate(responses, channel=Channel.GENERATOR_DELTA, step=step)
            survivors.append(len(result.contributors))
            exp.ledger.sent(result.bytes_up, Channel.GENERATOR_DELTA.value)
            exp.ledger.received_each(result.bytes_down, Channel.GENERATOR_DELTA.value)
            mean = result.total.to(exp.device) / public_count
            size = state.parameters.numel()
            state = GeneratorBroadcast(
                state.parameters + mean[:size],
                state.latents + mean[size:].reshape(state.latents.shape),
            )
            if on_step is not None:
                on_step(step)
        dreams, soft = _soft_labels(exp, workers, state, f.global_steps - 1, survivors)
    finally:
        exp.aggregator.end_round()
    meta.reptile_step(state.parameters, f.meta_lr)
    seconds["dreaming"] = time.perf_counter() - start

    exp.buffer.append((dreams, soft))
    exp.last_dreams = dreams
    if per_client:
        report["dream_terms"] = {
            k: sum(t[k] for t in terms) / len(terms) for k in (terms[0] if terms else {})
        }
        report["contribution_norms"] = {
            Channel.GENERATOR_DELTA.value: sum(norms) / len(norms) if norms else 0.0
        }
    report["dream_label_histogram"] = torch.bincount(
        soft.argmax(dim=1).cpu(), minlength=exp.data.num_classes
    ).tolist()
    report["dream_confidence"] = float(torch.softmax(soft, dim=1).max(dim=1).values.mean())
    report["aggregations"] = len(survivors)
    report["survivors"] = survivors
    report["generator_parameters"] = meta.size

    start = time.perf_counter()
    if (round_index + 1) % cfg.distill.every == 0:
        settings = exp.distill_settings()
        buffer = list(exp.buffer)
        losses = []
        for client in exp.clients:
            gen = torch_generator(cfg.seed, "distill", client.client_id, round_index)
            losses.append(client.distill(buffer, settings, gen))
        report["distill_loss"] = losses
    seconds["distillation"] = time.perf_counter() - start
    report["stage_seconds"] = seconds
    return report


def _soft_labels(
    exp: Experiment,
    workers: Sequence[GeneratorWorker],
    state: GeneratorBroadcast,
    step: int,
    survivors: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast the final (θ, z); each client dreams G_θ(z) itself and its logits are summed."""
    active = _active(workers, exp.aggregator)
    everyone = [w.client_id for w in workers]
    # every client distils, so a client that dropped during the round gets the final state too
    exp.ledger.received(everyone, state.nbytes, "generator")
    logits = {w.client_id: w.dream_logits(state).to(exp.device) for w in active}
    result = exp.aggregator.aggregate(logits, channel=Channel.LOGITS, step=step)
    survivors.append(len(result.contributors))
    exp.ledger.sent(result.bytes_up, Channel.LOGITS.value)
    exp.ledger.received_each(result.bytes_down, Channel.LOGITS.value)
    soft = result.total.to(exp.device) / len(workers)
    exp.ledger.received(everyone, tensor_bytes(soft), "soft_labels")
    assert exp.fast is not None
    return exp.fast.dreams(state.parameters, state.latents), soft
