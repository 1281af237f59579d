"""One CoDream client: private data, a model of its own architecture, and the four things it does.

The client never sends weights. It trains locally, answers "what is ∂L_k/∂x on these dreams?" (or
"how would you move them in L steps?"), returns logits on dreams for soft labels, and distils from
the dream buffer. Everything it returns to the server goes through the aggregator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from securedream.compute import DEFAULT as DEFAULT_COMPUTE
from securedream.compute import ComputeSettings
from securedream.dreams import DreamLossWeights, dream_loss
from securedream.dreams.class_share import class_shares, dream_weights, weighted_probabilities

if TYPE_CHECKING:
    from securedream.privacy.feature_stats import FeatureRelease, LayerTarget
    from securedream.privacy.sample_level import SampleLevelDP


@dataclass(frozen=True)
class LocalTrainingConfig:
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int


@dataclass(frozen=True)
class DistillSettings:
    epochs: int
    temperature: float
    batch_size: int
    lr: float
    kd_weight: float
    ce_weight: float
    clip_grad_norm: float


def kd_loss(
    student_logits: torch.Tensor, soft_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(softmax(soft/T) ‖ softmax(student/T))·T², the Hinton scaling that keeps gradients O(1)."""
    t = temperature
    return (
        F.kl_div(
            F.log_softmax(student_logits / t, dim=1),
            F.log_softmax(soft_logits / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        * t
        * t
    )


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


class ModelTrainer:
    """A model with its optimiser and data; shared by CoDream clients and the baselines."""

    def __init__(
        self,
        model: nn.Module,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        training: LocalTrainingConfig,
        device: torch.device,
        *,
        compute: ComputeSettings = DEFAULT_COMPUTE,
    ) -> None:
        self.device = device
        self.compute = compute  # autocast / channels_last where the model runs (compute.py)
        self.model = compute.model(model.to(device))
        self.train_x = train_x.to(device)
        self.train_y = train_y.to(device)
        self.training = training
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=training.lr,
            momentum=training.momentum,
            weight_decay=training.weight_decay,
        )

        self.sample_dp: SampleLevelDP | None = None
        self.distill_optimizer = self.optimizer

    @property
    def num_samples(self) -> int:
        return int(self.train_y.shape[0])

    def enable_sample_level_dp(
        self,
        noise_multiplier: float,
        max_grad_norm: float,
        accountant: str,
        client_id: int,
        reproducible: bool = True,
    ) -> None:
        """Switch local training to Opacus DP-SGD; distillation gets its own plain optimiser."""
        from securedream.privacy.sample_level import SampleLevelDP

        self.sample_dp = SampleLevelDP(
            self.model,
            self.optimizer,
            self.train_x,
            self.train_y,
            batch_size=self.training.batch_size,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            accountant=accountant,
            client_id=client_id,
            reproducible=reproducible,
        )
        self.optimizer = self.sample_dp.optimizer
        self.distill_optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=self.training.lr,
            momentum=self.training.momentum,
            weight_decay=self.training.weight_decay,
        )

    def train_local(self, epochs: int, generator: torch.Generator) -> float:
        """Cross-entropy SGD on the private data; returns the mean loss of the last epoch."""
        if self.sample_dp is not None:
            return self.sample_dp.train(epochs, generator, self.device)
        self.model.train()
        last = 0.0
        for _ in range(epochs):
            total, count = 0.0, 0
            for idx in minibatches(self.num_samples, self.training.batch_size, generator):
                idx = idx.to(self.device)
                self.optimizer.zero_grad(set_to_none=True)
                with self.compute.autocast_context(self.device):
                    logits = self.model(self.compute.inputs(self.train_x[idx]))
                    loss = F.cross_entropy(logits, self.train_y[idx])
                loss.backward()
                self.optimizer.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            last = total / max(count, 1)
        return last

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
        self.model.eval()
        correct = 0
        for i in range(0, len(y), batch_size):
            logits = self.model(x[i : i + batch_size].to(self.device))
            correct += int((logits.argmax(dim=1).cpu() == y[i : i + batch_size].cpu()).sum())
        return correct / max(len(y), 1)

    def state_dict(self) -> dict[str, object]:
        state: dict[str, object] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        if self.distill_optimizer is not self.optimizer:
            state["distill_optimizer"] = self.distill_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.model.load_state_dict(state["model"])  # type: ignore[arg-type]
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        if "distill_optimizer" in state and self.distill_optimizer is not self.optimizer:
            self.distill_optimizer.load_state_dict(state["distill_optimizer"])  # type: ignore[arg-type]


def _client_dream_loss(
    client: CoDreamClient,
    x: torch.Tensor,
    weights: DreamLossWeights,
    per_dream: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Mapping[str, float]]:
    """The client's dream objective at ``x``, in its configured precision (a function, not a
    method: the Flower engine's ``DreamView`` borrows the dream methods without the class)."""
    with client.compute.autocast_context(client.device):
        loss, terms, _ = dream_loss(
            client.model,
            x,
            weights,
            use_bn=client.use_bn_term,
            feature_targets=client.feature_targets,
            dream_weights=per_dream,
        )
    return loss, terms


class CoDreamClient(ModelTrainer):
    """A ModelTrainer that also dreams and distils."""

    def __init__(
        self,
        client_id: int,
        model: nn.Module,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        training: LocalTrainingConfig,
        device: torch.device,
        *,
        use_bn_term: bool = True,
        compute: ComputeSettings = DEFAULT_COMPUTE,
    ) -> None:
        super().__init__(model, train_x, train_y, training, device, compute=compute)
        self.client_id = client_id
        self.use_bn_term = use_bn_term
        # this round's feature-statistics targets (privacy.feature_stats); kept by the client only
        self.feature_targets: list[LayerTarget] | None = None
        # dreams.class_share: this client's smoothed share of each class; never sent anywhere
        self.class_shares: torch.Tensor | None = None

    def enable_class_share(self, num_classes: int) -> None:
        """Weight targeted dreams' losses and soft labels by this client's class shares."""
        self.class_shares = class_shares(self.train_y, num_classes)

    def _dream_weights(self, batch_size: int) -> torch.Tensor | None:
        shares = self.class_shares
        return None if shares is None else dream_weights(shares, batch_size, self.device)

    def measure_features(
        self, clip: float, noise_multiplier: float, generator: torch.Generator | None
    ) -> FeatureRelease:
        """Measure this round's feature-statistics targets; with DP-SGD on, a noised release that
        enters the client's ledger (``noise_multiplier`` must then be > 0)."""
        from securedream.privacy.feature_stats import measure_feature_statistics

        if self.sample_dp is not None and noise_multiplier <= 0:
            raise ValueError("a DP-SGD client's feature statistics need noise_multiplier > 0")
        release = measure_feature_statistics(
            self.model,
            self.train_x,
            clip=clip,
            noise_multiplier=noise_multiplier if self.sample_dp is not None else 0.0,
            generator=generator,
        )
        if self.sample_dp is not None:
            self.sample_dp.record_gaussian_release(noise_multiplier)
        self.feature_targets = release.targets
        return release

    def _frozen_eval(self) -> None:
        """Dreaming must not touch the model: eval mode (BN running stats are targets)."""
        self.model.eval()

    def dream_gradient(
        self, dreams: torch.Tensor, weights: DreamLossWeights
    ) -> tuple[torch.Tensor, Mapping[str, float]]:
        """∂L_k/∂x at the broadcast dreams; only the dreams receive gradient."""
        self._frozen_eval()
        x = self.compute.inputs(dreams.detach().to(self.device)).requires_grad_(True)
        loss, terms = _client_dream_loss(self, x, weights, self._dream_weights(len(x)))
        (grad,) = torch.autograd.grad(loss, [x])
        return grad.detach().contiguous(), terms

    def dream_delta(
        self, dreams: torch.Tensor, weights: DreamLossWeights, steps: int, lr: float
    ) -> tuple[torch.Tensor, Mapping[str, float]]:
        """Run ``steps`` local Adam steps on a private copy and return the change in x."""
        self._frozen_eval()
        start = dreams.detach().to(self.device)
        x = self.compute.inputs(start.clone()).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=lr)
        terms: Mapping[str, float] = {}
        per_dream = self._dream_weights(len(x))
        for _ in range(steps):
            loss, terms = _client_dream_loss(self, x, weights, per_dream)
            (grad,) = torch.autograd.grad(loss, [x])
            x.grad = grad
            optimizer.step()
        return (x.detach() - start).contiguous(), terms

    @torch.no_grad()
    def dream_logits(self, dreams: torch.Tensor) -> torch.Tensor:
        """Logits on the dreams, or with class shares on the share-weighted probabilities."""
        self._frozen_eval()
        with self.compute.autocast_context(self.device):
            logits = self.model(self.compute.inputs(dreams.to(self.device)))
        logits = logits.detach().float()  # float32 leaves the client whatever ran inside
        shares = self.class_shares
        return logits if shares is None else weighted_probabilities(logits, shares)

    def distill(
        self,
        buffer: Sequence[tuple[torch.Tensor, torch.Tensor]],
        settings: DistillSettings,
        generator: torch.Generator,
        *,
        with_local_data: bool = True,
    ) -> float:
        """Learn from (dreams, soft labels) by KL at temperature T, plus local cross-entropy."""
        if not buffer or settings.epochs == 0:
            return 0.0
        if self.sample_dp is not None:
            with_local_data = False  # an un-noised pass over private samples would void DP-SGD
        dreams = torch.cat([x for x, _ in buffer]).to(self.device)
        soft = torch.cat([s for _, s in buffer]).to(self.device)
        saved_lr = [group["lr"] for group in self.distill_optimizer.param_groups]
        for group in self.distill_optimizer.param_groups:
            group["lr"] = settings.lr
        self.model.train()
        last = 0.0
        try:
            for _ in range(settings.epochs):
                local_batches = minibatches(self.num_samples, settings.batch_size, generator)
                total, count = 0.0, 0
                for i, idx in enumerate(minibatches(len(dreams), settings.batch_size, generator)):
                    idx = idx.to(self.device)
                    self.distill_optimizer.zero_grad(set_to_none=True)
                    with self.compute.autocast_context(self.device):
                        loss = settings.kd_weight * kd_loss(
                            self.model(self.compute.inputs(dreams[idx])),
                            soft[idx],
                            settings.temperature,
                        )
                        if with_local_data and settings.ce_weight > 0 and self.num_samples > 0:
                            local = local_batches[i % len(local_batches)].to(self.device)
                            loss = loss + settings.ce_weight * F.cross_entropy(
                                self.model(self.compute.inputs(self.train_x[local])),
                                self.train_y[local],
                            )
                    loss.backward()
                    if settings.clip_grad_norm > 0:
                        nn.utils.clip_grad_norm_(self.model.parameters(), settings.clip_grad_norm)
                    self.distill_optimizer.step()
                    total += float(loss.detach()) * len(idx)
                    count += len(idx)
                last = total / max(count, 1)
        finally:
            for group, lr in zip(self.distill_optimizer.param_groups, saved_lr, strict=True):
                group["lr"] = lr
        return last
