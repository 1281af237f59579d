"""The clients of a Flower run as one round sees them: a :class:`~securedream.rounds.cohort.Cohort`.

Every request of the round (:func:`securedream.rounds.codream.codream_round`, the same body as
in-process) becomes one Flower message per present node:

* TRAIN: local training with the client's own generator per (seed, client, round);
* DREAM (per dream step and per soft-label snapshot): plain runs get each node's float32
  contribution in the reply and sum it through the run's stack (DP clips it there, once, as
  in-process); secure runs get masked inputs, and :class:`FlowerSecureAggregator` unmasks the sum
  (set-up and unmask relays as SECAGG messages) before the stack finishes the release (survivor
  floor, central noise, ledger);
* DISTILL: the soft labels (and dreams a node did not see) of the new buffer entries, distillation
  when due, the test evaluation and, unless this is the last round or the privacy budget stops the
  run before the next one, the next round's local training: one round trip for the end of a round
  and the start of the next (a node trains right after it evaluated, as in-process). A node that
  (re)joins at the next round's HELLO gets its own TRAIN message; it does not train twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from securedream.aggregation import AggregateResult, Channel
from securedream.aggregation.secure import SecureAggregationSettings
from securedream.config import RunConfig
from securedream.diagnostics import Disclosure
from securedream.engines.flower import messages as m
from securedream.engines.flower.transport import FlowerLink, FlowerRunError, FlowerSecureAggregator
from securedream.privacy.engine import PrivacyBudgetExhausted
from securedream.rounds.cohort import DreamRequest, DreamSum, mean_terms
from securedream.stack import StackPlan, build_aggregation

KIND = {Channel.DREAM_GRADIENT: m.GRADIENT, Channel.DREAM_DELTA: m.DELTA, Channel.LOGITS: m.LOGITS}


class FlowerCohort:
    """Client k of the run is the node that answered HELLO with partition k."""

    def __init__(
        self, cfg: RunConfig, link: FlowerLink, digest: str, plan: StackPlan, num_classes: int
    ) -> None:
        self.cfg = cfg
        self.link = link
        self.ledger = link.ledger
        self.digest = digest
        self.num_classes = num_classes
        self.disclosure = Disclosure.of(cfg)  # the clients' configs are this one (digest checked)
        self.secure: FlowerSecureAggregator | None = None
        self.aggregator, self.privacy = build_aggregation(plan, secure=self._secure_sum)
        self.client_buffers: dict[int, set[str]] = {}  # buffer entry ids each node holds
        self.buffer_ids: deque[str] = deque(maxlen=cfg.distill.buffer_batches)
        self.last_failed: list[int] = []
        self.round_index = 0
        self.present: list[int] = []
        self.snapshot_ids: list[str] = []
        self.snapshot_receivers: dict[str, set[int]] = {}
        self._replies: dict[int, RecordDict] = {}
        self._trained: dict[int, float | None] = {}  # next round's training done in DISTILL
        self._trained_round = -1
        self._messages_before = 0
        self._round_trips_before = 0

    def _secure_sum(self, clients: int, settings: SecureAggregationSettings) -> Any:
        self.secure = FlowerSecureAggregator(clients, settings, self.link)
        return self.secure

    def _per_client(self, replies: Mapping[int, Any], key: str) -> list[float | None]:
        return [
            float(replies[k]["cfg"][key]) if k in replies and key in replies[k]["cfg"] else None
            for k in range(self.cfg.clients.count)
        ]

    # --- Cohort -------------------------------------------------------------------------------
    def begin_round(self, round_index: int) -> None:
        self.round_index = round_index
        self.link.begin_round(round_index)
        self._messages_before = self.link.stats.messages
        self._round_trips_before = self.link.stats.round_trips
        self.link.discover(self.digest, probe=self.last_failed)  # new nodes, returning clients
        for k in self.link.take_joined():  # a (re)started node reports the buffer it still holds
            self.client_buffers[k] = {i for i in str(self.link.info[k]["buffer"]).split(",") if i}
            self._trained.pop(k, None)  # and gets a TRAIN message of its own
        self.snapshot_ids = []
        self.snapshot_receivers = {}

    def _epochs(self, round_index: int) -> int:
        c = self.cfg.clients
        return c.local_epochs + (c.warmup_epochs if round_index == 0 else 0)

    def train(self, round_index: int) -> dict[str, Any]:
        """TRAIN to the present nodes that did not train for this round in the last DISTILL."""
        done = self._trained if self._trained_round == round_index else {}
        self._trained = {}
        train = m.content({"round": round_index, "epochs": self._epochs(round_index)})
        requests = {k: (m.TRAIN, train) for k in self.link.present() if k not in done}
        replies = self.link.exchange(requests, down="control", up="control") if requests else {}
        if not self.disclosure.per_client_metrics:
            return {}
        losses = self._per_client(replies, "loss")
        return {"train_loss": [done.get(k, loss) for k, loss in enumerate(losses)]}

    def _next_round_trains(self, round_index: int) -> bool:
        """Whether the next round's training may ride on this round's DISTILL: there is a next
        round and the privacy budget lets it start (the same check the next round makes)."""
        if round_index + 1 >= self.cfg.rounds:
            return False
        if self.privacy is not None:
            try:
                self.privacy.check_budget(round_index + 1)
            except PrivacyBudgetExhausted:
                return False
        return True

    def members(self) -> list[int]:
        self.present = self.link.present()
        if not self.present:
            raise FlowerRunError(
                f"round {self.round_index}: no client is available ({self.link.failed})"
            )
        return self.present

    def dream(self, request: DreamRequest) -> DreamSum:
        channel = request.channel
        cfg: dict[str, Any] = {"kind": KIND[channel], "round": self.round_index}
        cfg["step"] = request.step
        if request.weights is not None:
            cfg.update(m.weights_config(request.weights))
        if channel is Channel.DREAM_DELTA:
            cfg.update(local_steps=request.local_steps, local_lr=request.local_lr)
        snapshot = ""
        if channel is Channel.LOGITS:
            snapshot = cfg["snapshot"] = f"r{self.round_index}s{request.step}"
            self.snapshot_ids.append(snapshot)
        array = m.to_array(request.dreams)

        def build(extra: Mapping[str, Any], proto: Sequence[bytes] = ()) -> RecordDict:
            rd = RecordDict(
                {"cfg": ConfigRecord({**cfg, **extra}), "x": ArrayRecord({"dreams": array})}
            )
            if proto:
                rd["proto"] = ConfigRecord({"in": list(proto)})
            return rd

        norms: list[float] = []
        terms: list[dict[str, float]] = []

        def record(k: int, reply: RecordDict) -> None:
            """The node's diagnostics (only where its config discloses them)."""
            if "norm" in m.config_of(reply):
                norms.append(float(m.config_of(reply)["norm"]))
            if "terms" in reply:
                terms.append({n: float(v) for n, v in reply["terms"].items()})  # type: ignore[arg-type]
            if snapshot:
                self.snapshot_receivers.setdefault(snapshot, set()).add(k)

        active = self.aggregator.active_clients(
            [k for k in self.present if not self.link.is_failed(k)]
        )
        shape = (
            torch.Size((request.dreams.shape[0], self.num_classes))
            if snapshot
            else request.dreams.shape
        )
        if self.secure is not None:
            result = self.secure.remote_sum(
                active, build, record, channel=channel, step=request.step, shape=shape
            )
            result = self.aggregator.finish(result, channel=channel)
        else:
            result = self._plain_sum(active, build, record, request, shape)
        return DreamSum(
            total=result.total.to(request.dreams.device),
            contributors=tuple(result.contributors),
            terms=mean_terms(terms),
            norms=tuple(norms),
        )

    def _plain_sum(
        self, active: Sequence[int], build: Any, record: Any, request: DreamRequest, shape: Any
    ) -> AggregateResult:
        """Each node's float32 contribution, summed by the run's stack (DP clips it there)."""
        channel = request.channel
        requests = {k: (m.DREAM, build({"secure": False})) for k in active}
        replies = self.link.exchange(requests, down="dreams", up=channel.value)
        values: dict[int, torch.Tensor] = {}
        for k in sorted(replies):
            value = m.read_tensor(replies[k]["x"], "value")  # type: ignore[arg-type]
            if tuple(value.shape) != tuple(shape) or not torch.isfinite(value).all():
                self.link.fail(k, f"bad {channel.value} contribution of shape {tuple(value.shape)}")
                continue
            record(k, replies[k])
            values[k] = value.to(request.dreams.device)
        if not values:
            raise FlowerRunError(
                f"round {self.round_index}, {channel.value} step {request.step}: no client "
                f"answered ({self.link.failures()})"
            )
        return self.aggregator.aggregate(values, channel=channel, step=request.step)

    def distill(
        self,
        round_index: int,
        entries: Sequence[tuple[torch.Tensor, torch.Tensor]],
        buffer: Sequence[tuple[torch.Tensor, torch.Tensor]],
        due: bool,
    ) -> list[float | None] | None:
        """Send each node the buffer entries it lacks; it distils when ``due``, then evaluates
        (one message: the round's evaluation rides on it)."""
        self.buffer_ids.extend(self.snapshot_ids)
        ids = list(self.buffer_ids)
        then_train = self._next_round_trains(round_index)
        requests = {}
        for k in self.link.present():
            have = self.client_buffers.get(k, set())
            tensors: dict[str, torch.Tensor] = {}
            for i, (dreams, soft) in zip(ids, buffer, strict=True):
                if i in have:
                    continue
                tensors[f"s.{i}"] = soft
                if k not in self.snapshot_receivers.get(i, set()):
                    tensors[f"x.{i}"] = dreams
            cfg = {"round": round_index, "buffer": ",".join(ids), "distill": due, "evaluate": True}
            if then_train:
                cfg.update(train_round=round_index + 1, train_epochs=self._epochs(round_index + 1))
            requests[k] = (m.DISTILL, m.content(cfg, tensors=tensors))
        self._replies = self.link.exchange(requests, down="soft_labels", up="control")
        for k, reply in self._replies.items():
            self.client_buffers[k] = {i for i in str(reply["cfg"]["buffer"]).split(",") if i}
            if then_train and int(reply["cfg"].get("trained", -1)) == round_index + 1:
                loss = reply["cfg"].get("train_loss")
                self._trained[k] = float(loss) if loss is not None else None  # type: ignore[arg-type]
        self._trained_round = round_index + 1
        return self._per_client(self._replies, "loss") if due else None

    def evaluate(self, round_index: int) -> list[float | None]:
        """The accuracies the DISTILL replies carried (only where per-client metrics are
        disclosed: a secure or private run's clients keep theirs)."""
        if not self._replies:
            raise FlowerRunError(f"round {round_index}: no client answered the evaluation")
        if not self.disclosure.per_client_metrics:
            return [None] * self.cfg.clients.count
        accuracies = self._per_client(self._replies, "accuracy")
        if all(a is None for a in accuracies):
            raise FlowerRunError(f"round {round_index}: no client reported its accuracy")
        return accuracies

    def round_info(self) -> dict[str, Any]:
        link = self.link
        self.last_failed = sorted(link.failed)
        return {
            "flower": {
                "clients": self.present,
                "dropped": {str(k): reason for k, reason in sorted(link.failed.items())},
                "messages": link.stats.messages - self._messages_before,
                "round_trips": link.stats.round_trips - self._round_trips_before,
            }
        }
