"""Clients of one architecture held as stacked parameters and stepped together with torch.func.

A population of hundreds of clients cannot afford one ``nn.Module``, one optimiser and one Python
call per client per dream step: the cost would grow with the number of clients instead of with the
number of architectures and the data that sampled clients hold. A :class:`StackedGroup` keeps every
parameter and buffer of its G clients in one tensor with a leading client axis and runs the
template module over a chosen subset of clients with ``torch.func.functional_call`` under ``vmap``.

Each client's arithmetic is the same as a separate :class:`~securedream.rounds.client.CoDreamClient`
would do (eval-mode BatchNorm for dreams, per-client SGD with momentum and weight decay, per-client
gradient clipping in distillation); only the batching differs, so results agree with the per-client
loop up to floating-point summation order (tests/test_population.py checks it).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from securedream.compute import DEFAULT as DEFAULT_COMPUTE
from securedream.compute import ComputeSettings
from securedream.dreams import DreamLossWeights
from securedream.dreams.bn_hooks import BatchNormStatistics
from securedream.dreams.losses import (
    batch_marginal_entropy,
    l2_prior,
    mean_entropy,
    total_variation,
)
from securedream.dreams.terms import LossTerms
from securedream.rounds.client import DistillSettings, LocalTrainingConfig, kd_loss

Tensors = dict[str, torch.Tensor]

# clients per vmapped call; results do not depend on it. Small chunks keep a call's activations in
# cache: on 2 CPU cores a dream-gradient call over 32 clients x 32 MNIST dreams took 5.4 s with
# chunks of 4 against 9.9 s with one chunk of 32 (6.3 s with 2, 6.6-7.6 s with 8, 7.6 s with 1),
# and peak memory falls with the chunk (activations of 32 clients x 32 dreams are ~300 MB)
VMAP_CHUNK = 4


@dataclass(frozen=True)
class DreamTerms:
    """Per-client unweighted dream-loss terms, shape [clients] each (for diagnostics only)."""

    values: Tensors

    def mean(self) -> LossTerms:
        """Cohort means, left on the device until read (no host sync inside a dream step)."""
        return LossTerms({k: v.mean() for k, v in self.values.items()})


class StackedGroup:
    """G models of one architecture: parameters and buffers stacked along a leading client axis."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        device: torch.device,
        *,
        compute: ComputeSettings = DEFAULT_COMPUTE,
    ) -> None:
        if not models:
            raise ValueError("models: a stacked group needs at least one model")
        self.device = device
        self.compute = compute  # bf16 autocast around every forward pass (compute.py)
        self.template = copy.deepcopy(models[0]).to(device)
        self.size = len(models)
        names = [n for n, _ in self.template.named_parameters()]
        self.params: Tensors = {
            n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).to(device)
            for n in names
        }
        bnames = [n for n, _ in self.template.named_buffers()]
        self.buffers: Tensors = {
            n: torch.stack([dict(m.named_buffers())[n].detach() for m in models]).to(device)
            for n in bnames
        }
        self.momentum: Tensors = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.use_bn = bool(BatchNormStatistics(self.template).available)

    # --- views --------------------------------------------------------------------------------
    def _subset(self, rows: torch.Tensor) -> tuple[Tensors, Tensors]:
        return (
            {n: p[rows] for n, p in self.params.items()},
            {n: b[rows] for n, b in self.buffers.items()},
        )

    def model_of(self, row: int) -> nn.Module:
        """A standalone copy of one client's model (for checks and per-client export)."""
        model = copy.deepcopy(self.template)
        state = {n: p[row].clone() for n, p in self.params.items()}
        state.update({n: b[row].clone() for n, b in self.buffers.items()})
        model.load_state_dict(state)
        return model

    def _forward(self, params: Tensors, buffers: Tensors, x: torch.Tensor) -> torch.Tensor:
        """One client's forward pass (under ``vmap``), in the configured precision."""
        with self.compute.autocast_context(self.device):
            return functional_call(self.template, (params, buffers), (x,))

    # --- dreaming -----------------------------------------------------------------------------
    def _dream_objective(
        self, params: Tensors, buffers: Tensors, x: torch.Tensor, weights: DreamLossWeights
    ) -> tuple[torch.Tensor, Tensors]:
        stats = BatchNormStatistics(self.template)
        with stats:
            logits = self._forward(params, buffers, x)
        entropy = mean_entropy(logits)
        tv = total_variation(x)
        l2 = l2_prior(x)
        bn = stats.loss().to(x.device) if self.use_bn else torch.zeros((), device=x.device)
        diversity = batch_marginal_entropy(logits)
        terms = {"entropy": entropy, "tv": tv, "l2": l2, "bn": bn, "diversity": diversity}
        # the same weighted sum as securedream.dreams.dream_loss (diversity is maximised)
        signs = {"diversity": -1.0}
        loss = sum(
            signs.get(name, 1.0) * getattr(weights, name) * value for name, value in terms.items()
        )
        terms["total"] = loss
        return loss, {k: v.detach() for k, v in terms.items()}

    def dream_gradients(
        self, rows: torch.Tensor, dreams: torch.Tensor, weights: DreamLossWeights
    ) -> tuple[torch.Tensor, DreamTerms]:
        """∂L_k/∂x at the shared dreams for each client row: [len(rows), *dreams.shape]."""
        self.template.eval()  # BN running statistics are the targets, never updated by dreams
        params, buffers = self._subset(rows)
        x = dreams.detach().to(self.device)

        def one(p: Tensors, b: Tensors) -> tuple[torch.Tensor, Tensors]:
            return grad(self._dream_objective, argnums=2, has_aux=True)(p, b, x, weights)

        grads, terms = vmap(one, chunk_size=VMAP_CHUNK)(params, buffers)
        return grads.detach(), DreamTerms(terms)

    def dream_deltas(
        self,
        rows: torch.Tensor,
        dreams: torch.Tensor,
        weights: DreamLossWeights,
        steps: int,
        lr: float,
    ) -> tuple[torch.Tensor, DreamTerms]:
        """``steps`` local Adam steps per client on private copies; the change in x per client."""
        self.template.eval()
        params, buffers = self._subset(rows)
        start = dreams.detach().to(self.device)
        x = start.expand(len(rows), *start.shape).clone()
        # Adam exactly as torch.optim.Adam's defaults (betas 0.9/0.999, eps 1e-8), per client
        m = torch.zeros_like(x)
        v = torch.zeros_like(x)
        beta1, beta2, eps = 0.9, 0.999, 1e-8

        def one(p: Tensors, b: Tensors, xk: torch.Tensor) -> tuple[torch.Tensor, Tensors]:
            return grad(self._dream_objective, argnums=2, has_aux=True)(p, b, xk, weights)

        terms: Tensors = {}
        for t in range(1, steps + 1):
            g, terms = vmap(one, chunk_size=VMAP_CHUNK)(params, buffers, x)
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            step_size = lr / (1 - beta1**t)
            denom = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
            x.addcdiv_(m, denom, value=-step_size)
        return (x - start).detach(), DreamTerms(terms)

    @torch.no_grad()
    def logits(self, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode logits of each client row on the shared inputs: [len(rows), B, classes]."""
        self.template.eval()
        params, buffers = self._subset(rows)
        x = x.to(self.device)
        return vmap(lambda p, b: self._forward(p, b, x).float(), chunk_size=VMAP_CHUNK)(
            params, buffers
        )

    # --- training -----------------------------------------------------------------------------
    def _sgd_step(
        self,
        rows: torch.Tensor,
        params: Tensors,
        grads: Tensors,
        training: LocalTrainingConfig,
        lr: float,
    ) -> None:
        """torch.optim.SGD (momentum, weight decay, no dampening) applied per client row."""
        for n, g in grads.items():
            p = params[n]
            d = g + training.weight_decay * p if training.weight_decay else g
            if training.momentum:
                buf = self.momentum[n][rows] * training.momentum + d
                self.momentum[n][rows] = buf
                d = buf
            new = p - lr * d
            params[n] = new
            self.params[n][rows] = new

    def _train_mode_step(
        self,
        rows: torch.Tensor,
        params: Tensors,
        buffers: Tensors,
        loss_fn,  # (p, b, *data) -> (loss, new buffers)
        data: tuple[torch.Tensor, ...],
    ) -> tuple[Tensors, Tensors, torch.Tensor]:
        def one(p: Tensors, b: Tensors, *d: torch.Tensor) -> tuple[Tensors, tuple]:
            g, (loss, nb) = grad(loss_fn, has_aux=True)(p, b, *d)
            return g, (loss, nb)

        grads, (losses, new_buffers) = vmap(one, chunk_size=VMAP_CHUNK)(params, buffers, *data)
        for n, b in new_buffers.items():
            buffers[n] = b
            self.buffers[n][rows] = b
        return grads, buffers, losses

    def _ce(self, p: Tensors, b: Tensors, x: torch.Tensor, y: torch.Tensor):
        b = {n: t.clone() for n, t in b.items()}  # BN updates these in place in train mode
        logits = self._forward(p, b, x)
        loss = F.cross_entropy(logits, y)
        return loss, (loss.detach(), b)

    def train_local(
        self,
        rows: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        orders: Sequence[Sequence[torch.Tensor]],
        training: LocalTrainingConfig,
    ) -> torch.Tensor:
        """Cross-entropy SGD for each client row on its own data ``x[i]``, ``y[i]``.

        ``orders[e][i]`` is client i's permutation for epoch e (drawn from its own generator, as
        :func:`~securedream.rounds.client.minibatches` does), so every client walks its data in
        the order a standalone client would. Returns each client's mean loss of the last epoch.
        """
        self.template.train()
        params, buffers = self._subset(rows)
        n = x.shape[1]
        last = torch.zeros(len(rows), device=self.device)
        for order in orders:
            perm = torch.stack(list(order)).to(self.device)  # [clients, n]
            total = torch.zeros(len(rows), device=self.device)
            for start in range(0, n, training.batch_size):
                idx = perm[:, start : start + training.batch_size]
                xb = torch.gather(
                    x, 1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
                )
                yb = torch.gather(y, 1, idx)
                grads, buffers, losses = self._train_mode_step(
                    rows, params, buffers, self._ce, (xb, yb)
                )
                self._sgd_step(rows, params, grads, training, training.lr)
                total += losses * idx.shape[1]
            last = total / max(n, 1)
        return last

    def _kd(
        self,
        p: Tensors,
        b: Tensors,
        xd: torch.Tensor,
        soft: torch.Tensor,
        xl: torch.Tensor,
        yl: torch.Tensor,
        settings: DistillSettings,
        with_local: bool,
    ):
        b = {n: t.clone() for n, t in b.items()}
        loss = settings.kd_weight * kd_loss(self._forward(p, b, xd), soft, settings.temperature)
        if with_local:
            loss = loss + settings.ce_weight * F.cross_entropy(self._forward(p, b, xl), yl)
        return loss, (loss.detach(), b)

    def distill(
        self,
        rows: torch.Tensor,
        dreams: torch.Tensor,
        soft: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        plan: Sequence[tuple[torch.Tensor, torch.Tensor]],
        settings: DistillSettings,
        training: LocalTrainingConfig,
    ) -> torch.Tensor:
        """KL distillation from shared (dreams, soft labels) plus local cross-entropy, per row.

        ``plan[s]`` = (dream indices [clients, b], local indices [clients, b']) of step s, drawn per
        client as :meth:`CoDreamClient.distill` draws them. Gradients are clipped per client.
        """
        self.template.train()
        params, buffers = self._subset(rows)
        with_local = settings.ce_weight > 0 and x.shape[1] > 0
        dreams = dreams.to(self.device)
        soft = soft.to(self.device)
        losses_sum = torch.zeros(len(rows), device=self.device)
        count = 0
        for dream_idx, local_idx in plan:
            di = dream_idx.to(self.device)
            li = local_idx.to(self.device)
            xd = dreams[di]  # [clients, b, C, H, W]
            sd = soft[di]
            xl = torch.gather(
                x, 1, li.view(*li.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
            )
            yl = torch.gather(y, 1, li)

            def loss_fn(p, b, xd_, sd_, xl_, yl_):
                return self._kd(p, b, xd_, sd_, xl_, yl_, settings, with_local)

            grads, buffers, losses = self._train_mode_step(
                rows, params, buffers, loss_fn, (xd, sd, xl, yl)
            )
            if settings.clip_grad_norm > 0:
                norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
                scale = (settings.clip_grad_norm / (norms + 1e-6)).clamp(max=1.0)
                grads = {n: g * scale.view(-1, *([1] * (g.dim() - 1))) for n, g in grads.items()}
            self._sgd_step(rows, params, grads, training, settings.lr)
            losses_sum += losses * di.shape[1]
            count += di.shape[1]
        return losses_sum / max(count, 1)
