"""A population of clients in one process, stepped per architecture instead of per client.

:class:`Population` holds every client's data and its model inside a
:class:`~securedream.population.stacked.StackedGroup` (one per architecture and data size). The
round code still talks to clients one at a time through the
:class:`~securedream.rounds.server.DreamingClient` seam; the :class:`ClientView` objects it is given
answer from a per-release cache that the population fills for the whole cohort in one batched call
per group the first time any cohort member is asked. So a dream step costs one vmapped
forward/backward per architecture, whatever the cohort size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from securedream.compute import DEFAULT as DEFAULT_COMPUTE
from securedream.compute import ComputeSettings
from securedream.dreams import DreamLossWeights
from securedream.models import build_model
from securedream.population.stacked import StackedGroup
from securedream.population.votes import one_hot_votes
from securedream.rounds.client import DistillSettings, LocalTrainingConfig, minibatches
from securedream.seeding import derive_seed


@dataclass(frozen=True)
class Member:
    """Where client ``client_id`` lives: its group and row."""

    group: int
    row: int


class ClientView:
    """One client as the round code sees it; the work happens batched in the population."""

    def __init__(self, population: Population, client_id: int) -> None:
        self.population = population
        self.client_id = client_id

    def dream_gradient(
        self, dreams: torch.Tensor, weights: DreamLossWeights
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return self.population.answer(self.client_id, "gradient", dreams, weights)

    def dream_delta(
        self, dreams: torch.Tensor, weights: DreamLossWeights, steps: int, lr: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return self.population.answer(self.client_id, "delta", dreams, weights, steps, lr)

    def dream_logits(self, dreams: torch.Tensor) -> torch.Tensor:
        return self.population.answer(self.client_id, "logits", dreams)[0]


class Population:
    """Clients' data and stacked models, grouped by (architecture, number of samples)."""

    def __init__(
        self,
        model_names: Sequence[str],
        data_x: Sequence[torch.Tensor],
        data_y: Sequence[torch.Tensor],
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        seed: int,
        training: LocalTrainingConfig,
        device: torch.device,
        compute: ComputeSettings = DEFAULT_COMPUTE,
    ) -> None:
        if not len(model_names) == len(data_x) == len(data_y):
            raise ValueError("model_names, data_x and data_y: one entry per client")
        self.count = len(model_names)
        self.votes = False  # True: dream_logits answers one-hot votes (population/votes.py)
        self.training = training
        self.device = device
        keys = sorted(
            {(name, int(y.shape[0])) for name, y in zip(model_names, data_y, strict=True)}
        )
        self.groups: list[StackedGroup] = []
        self.group_ids: list[torch.Tensor] = []  # client ids per group, row order
        self.group_x: list[torch.Tensor] = []
        self.group_y: list[torch.Tensor] = []
        self.members: list[Member] = [Member(-1, -1)] * self.count
        for g, key in enumerate(keys):
            ids = [k for k in range(self.count) if (model_names[k], int(data_y[k].shape[0])) == key]
            models = [
                build_model(
                    key[0],
                    in_channels=in_channels,
                    num_classes=num_classes,
                    image_size=image_size,
                    seed=derive_seed(seed, "model", k),  # as Experiment seeds client k
                )
                for k in ids
            ]
            self.groups.append(StackedGroup(models, device, compute=compute))
            self.group_ids.append(torch.tensor(ids, dtype=torch.long))
            self.group_x.append(torch.stack([data_x[k] for k in ids]).to(device))
            self.group_y.append(torch.stack([data_y[k] for k in ids]).to(device))
            for row, k in enumerate(ids):
                self.members[k] = Member(g, row)
        self.views = [ClientView(self, k) for k in range(self.count)]
        self._cohort: list[int] = list(range(self.count))
        self._cache: tuple[object, str, dict[int, tuple[torch.Tensor, dict[str, float]]]] | None = (
            None
        )

    # --- cohort and batched answers -------------------------------------------------------------
    def set_cohort(self, client_ids: Sequence[int]) -> list[ClientView]:
        """The clients asked in the next release; their answers are computed together."""
        self._cohort = sorted(int(k) for k in client_ids)
        self._cache = None
        return [self.views[k] for k in self._cohort]

    def _rows_by_group(self, ids: Sequence[int]) -> dict[int, tuple[list[int], torch.Tensor]]:
        out: dict[int, tuple[list[int], list[int]]] = {}
        for k in ids:
            m = self.members[k]
            out.setdefault(m.group, ([], []))
            out[m.group][0].append(k)
            out[m.group][1].append(m.row)
        return {g: (ks, torch.tensor(rows, dtype=torch.long)) for g, (ks, rows) in out.items()}

    def answer(
        self, client_id: int, kind: str, dreams: torch.Tensor, *args: object
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if self._cache is None or self._cache[0] is not dreams or self._cache[1] != kind:
            ids = self._cohort if client_id in self._cohort else [client_id]
            self._cache = (dreams, kind, self._compute(ids, kind, dreams, *args))
        return self._cache[2][client_id]

    def _compute(
        self, ids: Sequence[int], kind: str, dreams: torch.Tensor, *args: object
    ) -> dict[int, tuple[torch.Tensor, dict[str, float]]]:
        result: dict[int, tuple[torch.Tensor, dict[str, float]]] = {}
        for g, (ks, rows) in self._rows_by_group(ids).items():
            group = self.groups[g]
            if kind == "logits":
                values = group.logits(rows, dreams)
                if self.votes:
                    values = one_hot_votes(values)
                terms: dict[str, float] = {}
            elif kind == "gradient":
                values, dterms = group.dream_gradients(rows, dreams, *args)  # type: ignore[arg-type]
                terms = dterms.mean()
            else:
                values, dterms = group.dream_deltas(rows, dreams, *args)  # type: ignore[arg-type]
                terms = dterms.mean()
            for i, k in enumerate(ks):
                result[k] = (values[i], terms)
        return result

    # --- training ---------------------------------------------------------------------------------
    def train_local(
        self, ids: Sequence[int], epochs: int, generators: dict[int, torch.Generator]
    ) -> dict[int, float]:
        """Local cross-entropy epochs for ``ids``; each client's batches come from its generator."""
        losses: dict[int, float] = {}
        if epochs == 0:
            return losses
        for g, (ks, rows) in self._rows_by_group(ids).items():
            n = self.group_x[g].shape[1]
            orders = [
                [torch.randperm(n, generator=generators[k]) for k in ks] for _ in range(epochs)
            ]
            values = self.groups[g].train_local(
                rows, self.group_x[g][rows], self.group_y[g][rows], orders, self.training
            )
            losses.update(zip(ks, values.tolist(), strict=True))
        return losses

    def distill(
        self,
        ids: Sequence[int],
        buffer: Sequence[tuple[torch.Tensor, torch.Tensor]],
        settings: DistillSettings,
        generators: dict[int, torch.Generator],
    ) -> dict[int, float]:
        """Distillation from the shared buffer, batches drawn per client as CoDreamClient does."""
        if not buffer or settings.epochs == 0:
            return {}
        dreams = torch.cat([x for x, _ in buffer])
        soft = torch.cat([s for _, s in buffer])
        losses: dict[int, float] = {}
        for g, (ks, rows) in self._rows_by_group(ids).items():
            n = self.group_x[g].shape[1]
            plan: list[tuple[torch.Tensor, torch.Tensor]] = []
            for _ in range(settings.epochs):
                local = [minibatches(n, settings.batch_size, generators[k]) for k in ks]
                dream = [minibatches(len(dreams), settings.batch_size, generators[k]) for k in ks]
                for i in range(len(dream[0])):
                    plan.append(
                        (
                            torch.stack([d[i] for d in dream]),
                            torch.stack([lb[i % len(lb)] for lb in local]),
                        )
                    )
            values = self.groups[g].distill(
                rows,
                dreams,
                soft,
                self.group_x[g][rows],
                self.group_y[g][rows],
                plan,
                settings,
                self.training,
            )
            losses.update(zip(ks, values.tolist(), strict=True))
        return losses

    @torch.no_grad()
    def evaluate(self, ids: Sequence[int], x: torch.Tensor, y: torch.Tensor) -> dict[int, float]:
        """Test accuracy of each client in ``ids``."""
        acc: dict[int, float] = {}
        y = y.to(self.device)
        for g, (ks, rows) in self._rows_by_group(ids).items():
            correct = torch.zeros(len(ks), device=self.device)
            for i in range(0, len(y), 500):
                logits = self.groups[g].logits(rows, x[i : i + 500])
                correct += (logits.argmax(dim=2) == y[i : i + 500]).sum(dim=1)
            acc.update(zip(ks, (correct / max(len(y), 1)).tolist(), strict=True))
        return acc
