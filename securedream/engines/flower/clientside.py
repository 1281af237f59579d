"""The client side of CoDream on Flower: one node's private data, model, buffer and protocol client.

A :class:`NodeRuntime` is rebuilt from the run config and the node's partition id exactly the way
:class:`securedream.rounds.experiment.Experiment` builds client k (same dataset load, same seeded
split, same model seed ``derive_seed(seed, "model", k)``, same optimiser), so a node trains
bit-for-bit like the in-process client k when torch runs with the same thread count.

Where the state lives between messages (``Context.state``, a RecordDict kept by the node's SuperNode
or by the simulation runtime, never sent to the server):

``sd.meta``    ConfigRecord: version counter, partition, model name, data shape, buffer ids, the
               last round it trained for (the node's security parameters are planned from *its*
               copy of the config, :func:`node_stack`: the server cannot lower the encoding, the
               clipping or the noise a client applies)
``sd.model``   ArrayRecord: the model's state_dict (after training and after distillation)
``sd.optim``   ArrayRecord: the SGD momentum buffers
``sd.buffer``  ArrayRecord: the distillation buffer (dreams and soft labels)
``sd.pending`` ArrayRecord: dreams received in soft-label requests, until their soft labels arrive
``sd.secagg``  ConfigRecord: the ``protocols.Client`` of the current round's session, as the
               opaque bytes of ``protocols.Client.to_bytes`` (secrets: it stays on the node)

A per-process cache keyed by (run, node) keeps the live objects while the stored version matches, so
neither the simulation runtime (one long-lived worker per actor) nor securedream's SuperNode (one
long-lived ClientApp worker per node, engines/flower/supernode.py) rebuilds anything; a stock
``flower-supernode`` (one process per message) rebuilds from the record every time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

import protocols
from securedream.aggregation import Channel
from securedream.aggregation.secure import channel_range, protocol_config
from securedream.compute import ComputeSettings
from securedream.config import RunConfig, config_from_dict
from securedream.contribution import encode_contribution, rounding_stream
from securedream.data import DatasetBundle, load_dataset, split_for_config
from securedream.diagnostics import Disclosure
from securedream.dreams.class_share import class_shares
from securedream.engines.flower import messages as m
from securedream.errors import ConfigError, SecureDreamError
from securedream.models import build_model
from securedream.randomness import NoiseSource
from securedream.rounds.client import CoDreamClient, DistillSettings, LocalTrainingConfig
from securedream.seeding import derive_seed, torch_generator
from securedream.stack import StackPlan, plan_stack

log = logging.getLogger("securedream.flower.client")

# ----------------------------------------------------------------------------------------------
# Config text <-> RunConfig (both sides load the same resolved TOML)


def config_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def parse_config(text: str) -> RunConfig:
    import tomllib

    return config_from_dict(tomllib.loads(text))


@functools.lru_cache(maxsize=2)
def _dataset(name: str, seed: int, test_size: int, root: str, download: bool) -> DatasetBundle:
    return load_dataset(name, seed=seed, test_size=test_size, root=root or None, download=download)


def load_node_data(cfg: RunConfig, data_root: str = "") -> DatasetBundle:
    return _dataset(
        cfg.data.dataset,
        cfg.seed,
        cfg.data.test_size,
        data_root or cfg.data.root,
        cfg.data.download,
    )


@functools.lru_cache(maxsize=4)
def _splits(text: str, data_root: str) -> list[np.ndarray]:
    cfg = parse_config(text)
    data = load_node_data(cfg, data_root)
    return split_for_config(data.train_y.numpy(), cfg)


def distill_settings(cfg: RunConfig) -> DistillSettings:
    """Same as ``Experiment.distill_settings``: the client derives it from its own config."""
    k = cfg.distill
    return DistillSettings(
        epochs=k.epochs,
        temperature=k.temperature,
        batch_size=k.batch_size,
        lr=k.lr or cfg.clients.lr,
        kd_weight=k.kd_weight,
        ce_weight=k.ce_weight,
        clip_grad_norm=k.clip_grad_norm,
    )


# ----------------------------------------------------------------------------------------------
# What a client applies to its contribution before it leaves the node (secure aggregation, DP)


@functools.lru_cache(maxsize=4)
def node_stack(
    text: str, dim: int, num_classes: int
) -> tuple[StackPlan, protocols.SecAggConfig | None]:
    """The node's own copy of the stack's parameters (encoding, clipping, noise), planned from
    *its* config: the server cannot lower what a client applies to its contribution."""
    plan = plan_stack(parse_config(text), dim=dim, num_classes=num_classes)
    return plan, protocol_config(plan.clients, plan.secure) if plan.secure is not None else None


def channel_of(kind: str) -> Channel:
    return {m.GRADIENT: Channel.DREAM_GRADIENT, m.DELTA: Channel.DREAM_DELTA}.get(
        kind, Channel.LOGITS
    )


# ----------------------------------------------------------------------------------------------
# The node runtime

_RUNTIMES: dict[tuple[int, int], NodeRuntime] = {}
# set to "1" to rebuild every node from Context.state on every message (what deployment does)
NO_CACHE_ENV = "SECUREDREAM_FLOWER_NO_CACHE"


def _optim_state(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for index, entry in optimizer.state_dict()["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                flat[f"{index}.{name}"] = value
    return flat


def _load_optim_state(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    saved = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def _ids(text: str) -> list[str]:
    return [i for i in text.split(",") if i]


class DreamView:
    """Just what ``CoDreamClient``'s dream methods use (model, device, BN switch, class shares).

    Dream requests are most of a round's messages; answering them needs the model but not the
    data or the optimiser, whose construction costs seconds in a fresh process. The methods are
    ``CoDreamClient``'s own, so the computation is the in-process one.
    """

    _frozen_eval = CoDreamClient._frozen_eval
    _dream_weights = CoDreamClient._dream_weights
    dream_gradient = CoDreamClient.dream_gradient
    dream_delta = CoDreamClient.dream_delta
    dream_logits = CoDreamClient.dream_logits

    def __init__(
        self, model: torch.nn.Module, device: torch.device, compute: ComputeSettings
    ) -> None:
        self.compute = compute
        self.model = compute.model(model)
        self.device = device
        self.use_bn_term = True
        self.feature_targets = None  # feature statistics are refused on the flower engine
        self.class_shares: torch.Tensor | None = None  # dreams.class_share: set by the node


class NodeRuntime:
    """Client k of the run, rebuilt from the config text and the node configuration.

    Parts are built when a message needs them: the metadata (data shape, security parameters) is
    kept in the node state after the first message; the model is rebuilt from its saved weights;
    the trainer (data shard and optimiser) only for training, distillation and evaluation.
    """

    def __init__(self, config_text: str, node_config: dict[str, Any]) -> None:
        self.config_text = config_text
        self.cfg = cfg = parse_config(config_text)
        if cfg.method != "codream":
            raise ConfigError("method", "the flower engine runs method = codream only")
        if "partition-id" not in node_config:
            raise ConfigError("node-config", "partition-id is required (which client this is)")
        # what this node sends beyond the protocol: decided by *its* config, not by the server
        self.disclosure = Disclosure.of(cfg)
        self.k = int(node_config["partition-id"])
        if not 0 <= self.k < cfg.clients.count:
            raise ConfigError(
                "node-config",
                f"partition-id must be in [0, {cfg.clients.count - 1}], got {self.k}",
            )
        self.model_name = str(node_config.get("model") or cfg.client_models()[self.k])
        self.data_root = str(node_config.get("data-root", ""))
        state_dir = str(node_config.get("state-dir", ""))
        self.state_file = Path(state_dir) / f"securedream-client-{self.k}.pt" if state_dir else None
        self.device = _device(cfg.device)
        self.version = 0
        self.data: DatasetBundle | None = None
        self._meta: dict[str, Any] | None = None
        self._model: torch.nn.Module | None = None
        self._trainer: CoDreamClient | None = None
        self._saved_model: dict[str, torch.Tensor] | None = None
        self._saved_optim: dict[str, torch.Tensor] | None = None
        self.buffer: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.buffer_ids: list[str] = []
        self.pending: dict[str, torch.Tensor] = {}
        self.secagg: protocols.Client | None = None
        self.secagg_round = -1
        self.trained_round = -1  # the last round this node trained for, and its loss
        self.trained_loss = 0.0
        self.dirty: set[str] = set()

    # --- parts, built on demand ---------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            data = self._data()
            self._meta = {
                "channels": data.channels,
                "image_size": data.image_size,
                "num_classes": data.num_classes,
                "mean": [float(v) for v in data.mean],
                "std": [float(v) for v in data.std],
            }
            self.dirty.add("meta")
        return self._meta

    @property
    def stack(self) -> tuple[StackPlan, protocols.SecAggConfig | None]:
        meta = self.meta
        dim = self.cfg.dreams.batch_size * meta["channels"] * meta["image_size"] ** 2
        return node_stack(self.config_text, dim, meta["num_classes"])

    @property
    def protocol_config(self) -> protocols.SecAggConfig:
        config = self.stack[1]
        if config is None:
            raise SecureDreamError("secure aggregation is off in this node's config")
        return config

    def _data(self) -> DatasetBundle:
        if self.data is None:
            self.data = load_node_data(self.cfg, self.data_root)
        return self.data

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            meta = self.meta
            model = build_model(
                self.model_name,
                in_channels=meta["channels"],
                num_classes=meta["num_classes"],
                image_size=meta["image_size"],
                seed=derive_seed(self.cfg.seed, "model", self.k),
            )
            if self._saved_model is not None:
                model.load_state_dict(self._saved_model)
            self._model = model.to(self.device)
        return self._model

    @property
    def trainer(self) -> CoDreamClient:
        """The in-process client object (data shard, optimiser) around :attr:`model`."""
        if self._trainer is None:
            cfg = self.cfg
            training = LocalTrainingConfig(
                lr=cfg.clients.lr,
                momentum=cfg.clients.momentum,
                weight_decay=cfg.clients.weight_decay,
                batch_size=cfg.clients.batch_size,
            )
            data = self._data()
            indices = torch.as_tensor(_splits(self.config_text, self.data_root)[self.k])
            trainer = CoDreamClient(
                self.k,
                self.model,
                data.train_x[indices],
                data.train_y[indices],
                training,
                self.device,
                compute=ComputeSettings.from_config(cfg),
            )
            if self._saved_optim is not None:
                _load_optim_state(trainer.optimizer, self._saved_optim)
            if cfg.dreams.class_share:
                trainer.enable_class_share(data.num_classes)
            self._trainer = trainer
        return self._trainer

    def _dream_view(self) -> DreamView:
        """The data-free dream answerer; with ``dreams.class_share`` it carries this client's class
        shares (from its shard's labels, computed here and never sent)."""
        view = DreamView(self.model, self.device, ComputeSettings.from_config(self.cfg))
        if self.cfg.dreams.class_share:
            data = self._data()
            indices = torch.as_tensor(_splits(self.config_text, self.data_root)[self.k])
            view.class_shares = class_shares(data.train_y[indices], data.num_classes)
        return view

    # --- persistence in Context.state ---------------------------------------------------------
    @classmethod
    def for_context(cls, config_text: str, context: Any) -> NodeRuntime:
        """The cached runtime if it is as recent as the node's state, else one rebuilt from it."""
        key = (int(context.run_id), int(context.node_id))
        state: RecordDict = context.state
        stored = int(state["sd.meta"]["version"]) if "sd.meta" in state else 0
        cached = _RUNTIMES.get(key) if os.environ.get(NO_CACHE_ENV) != "1" else None
        if cached is not None and cached.version == stored and stored > 0:
            return cached
        runtime = cls(config_text, dict(context.node_config))
        if stored > 0:
            runtime._restore(state)
        else:
            runtime._load_file()
        _RUNTIMES[key] = runtime
        return runtime

    @staticmethod
    def forget(context: Any) -> None:
        _RUNTIMES.pop((int(context.run_id), int(context.node_id)), None)

    def _restore(self, state: RecordDict) -> None:
        meta = state["sd.meta"]
        if int(meta["partition"]) != self.k or str(meta["config"]) != config_digest(
            self.config_text
        ):
            return  # another run or another partition on this node: start afresh
        self.version = int(meta["version"])
        if "data" in meta:
            self._meta = json.loads(bytes(meta["data"]).decode())  # type: ignore[arg-type]
        if "sd.model" in state:
            self._saved_model = state["sd.model"].to_torch_state_dict()  # type: ignore[union-attr]
        if "sd.optim" in state:
            optim = state["sd.optim"]
            self._saved_optim = {k: m.read_tensor(optim, k) for k in optim}  # type: ignore[arg-type]
        self.buffer_ids = _ids(str(meta["buffer"]))
        self.trained_round = int(meta.get("trained", -1))  # type: ignore[arg-type]
        self.trained_loss = float(meta.get("trained_loss", 0.0))  # type: ignore[arg-type]
        if "sd.buffer" in state:
            rec = state["sd.buffer"]
            self.buffer = {
                i: (m.read_tensor(rec, f"x.{i}"), m.read_tensor(rec, f"s.{i}"))  # type: ignore[arg-type]
                for i in self.buffer_ids
            }
        if "sd.pending" in state:
            rec = state["sd.pending"]
            self.pending = {k[2:]: m.read_tensor(rec, k) for k in rec}  # type: ignore[arg-type]
        if "sd.secagg" in state:
            rec = state["sd.secagg"]
            self.secagg_round = int(rec["round"])
            self.secagg = protocols.Client.from_bytes(
                self.protocol_config,
                bytes(rec["client"]),  # type: ignore[arg-type]
            )

    def save(self, context: Any) -> None:
        """Write what changed into ``context.state`` and bump the version."""
        state: RecordDict = context.state
        self.version += 1
        record: dict[str, Any] = {
            "version": self.version,
            "partition": self.k,
            "model": self.model_name,
            "config": config_digest(self.config_text),
            "buffer": ",".join(self.buffer_ids),
            "trained": self.trained_round,
            "trained_loss": self.trained_loss,
        }
        if self._meta is not None:
            record["data"] = json.dumps(self._meta, sort_keys=True).encode()
        state["sd.meta"] = ConfigRecord(record)
        if "model" in self.dirty:
            state["sd.model"] = ArrayRecord(self.model.state_dict())
            optim = (
                _optim_state(self._trainer.optimizer)
                if self._trainer is not None
                else self._saved_optim or {}
            )
            state["sd.optim"] = m.tensors_record(optim)
        if "buffer" in self.dirty:
            tensors: dict[str, torch.Tensor] = {}
            for i in self.buffer_ids:
                x, s = self.buffer[i]
                tensors[f"x.{i}"] = x
                tensors[f"s.{i}"] = s
            state["sd.buffer"] = m.tensors_record(tensors)
        if "pending" in self.dirty:
            state["sd.pending"] = m.tensors_record({f"x.{k}": v for k, v in self.pending.items()})
        if "secagg" in self.dirty:
            if self.secagg is None:
                if "sd.secagg" in state:
                    del state["sd.secagg"]
            else:
                state["sd.secagg"] = ConfigRecord(
                    {"round": self.secagg_round, "client": self.secagg.to_bytes()}
                )
        if self.state_file is not None and self.dirty & {"model", "buffer"}:
            self._save_file()
        self.dirty.clear()

    # --- optional copy on the node's disk (node config ``state-dir``) --------------------------
    def _save_file(self) -> None:
        """Model, optimiser and buffer in ``state-dir`` (tensors only), for a restarted node."""
        assert self.state_file is not None
        optim = (
            _optim_state(self._trainer.optimizer)
            if self._trainer is not None
            else self._saved_optim or {}
        )
        data = {
            "config": config_digest(self.config_text),
            "partition": self.k,
            "model": self.model.state_dict(),
            "optim": optim,
            "buffer_ids": list(self.buffer_ids),
            "buffer": {i: list(self.buffer[i]) for i in self.buffer_ids},
            "trained": [self.trained_round, self.trained_loss],
        }
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        torch.save(data, tmp)
        os.replace(tmp, self.state_file)

    def _load_file(self) -> bool:
        """Restore model, optimiser and buffer saved by a previous process of this node."""
        if self.state_file is None or not self.state_file.is_file():
            return False
        data = torch.load(self.state_file, weights_only=True)
        if data["config"] != config_digest(self.config_text) or data["partition"] != self.k:
            return False
        self._saved_model = dict(data["model"])
        self._saved_optim = dict(data["optim"])
        self.buffer_ids = list(data["buffer_ids"])
        self.buffer = {i: (x, s) for i, (x, s) in data["buffer"].items()}
        self.trained_round, self.trained_loss = data.get("trained", (-1, 0.0))
        self.dirty |= {"model", "buffer"}  # copy it into the new Context.state at the next save
        return True

    # --- handlers -----------------------------------------------------------------------------
    def handle(self, message_type: str, rd: RecordDict) -> RecordDict:
        handler: dict[str, Callable[[RecordDict], RecordDict]] = {
            m.HELLO: self.hello,
            m.TRAIN: self.train,
            m.DREAM: self.dream,
            m.SECAGG: self.secagg_step,
            m.DISTILL: self.distill,
        }
        return handler[message_type](rd)

    def hello(self, rd: RecordDict) -> RecordDict:
        cfg = m.config_of(rd)
        expected = str(cfg.get("config", ""))
        mine = config_digest(self.config_text)
        if expected and expected != mine:
            raise ConfigError(
                "config",
                f"node for partition {self.k} runs config {mine}, the server runs {expected}",
            )
        meta = self.meta
        reply: dict[str, Any] = {
            "partition": self.k,
            "model": self.model_name,
            "config": mine,
            "channels": meta["channels"],
            "image_size": meta["image_size"],
            "num_classes": meta["num_classes"],
            "mean": [float(v) for v in meta["mean"]],
            "std": [float(v) for v in meta["std"]],
            "buffer": ",".join(self.buffer_ids),
        }
        if self.disclosure.label_histograms:
            labels = self.trainer.train_y
            histogram = torch.bincount(labels, minlength=meta["num_classes"]).tolist()
            reply["samples"] = self.trainer.num_samples
            reply["histogram"] = [int(v) for v in histogram]
        return m.content(reply)

    def _metrics(self, **values: float) -> dict[str, float]:
        """Per-client diagnostics for a reply: none in a secure or private run unless opted in."""
        if not self.disclosure.per_client_metrics:
            return {}
        return {k: float(v) for k, v in values.items()}

    def train(self, rd: RecordDict) -> RecordDict:
        cfg = m.config_of(rd)
        return m.content(self._metrics(loss=self._train(int(cfg["round"]), int(cfg["epochs"]))))

    def _train(self, round_index: int, epochs: int) -> float:
        """Local training for ``round_index``, once: a node that trained for it already (in the
        last round's DISTILL, then restarted from its state) answers with that loss."""
        if self.trained_round == round_index:
            return self.trained_loss
        loss = self.trainer.train_local(
            epochs, torch_generator(self.cfg.seed, "train", self.k, round_index)
        )
        self.trained_round, self.trained_loss = round_index, float(loss)
        self.dirty.add("model")
        return loss

    def _deliver_protocol(self, incoming: list[bytes]) -> list[bytes]:
        """Feed server protocol messages to this node's protocols.Client; returns its replies."""
        if not incoming:
            return []
        if self.secagg is None:
            raise SecureDreamError(f"client {self.k}: protocol message but no session")
        replies: list[bytes] = []
        self.dirty.add("secagg")
        for data in incoming:
            replies.extend(self.secagg.receive(data))
        return replies

    def dream(self, rd: RecordDict) -> RecordDict:
        cfg = m.config_of(rd)
        kind = str(cfg["kind"])
        dreams = m.read_tensor(rd["x"], "dreams")  # type: ignore[arg-type]
        secure = bool(cfg.get("secure", False))
        aborted = False
        if secure:
            try:
                replies = self._deliver_protocol(m.proto_messages(rd, "in"))
            except protocols.TooFewSurvivors:
                replies, aborted = [], True
            if replies:
                raise SecureDreamError(f"client {self.k}: unexpected protocol replies")
        terms: dict[str, float] = {}
        view = self._trainer or self._dream_view()
        if kind == m.GRADIENT:
            value, terms = view.dream_gradient(dreams, m.weights_from_config(cfg))
        elif kind == m.DELTA:
            value, terms = view.dream_delta(
                dreams, m.weights_from_config(cfg), int(cfg["local_steps"]), float(cfg["local_lr"])
            )
        elif kind == m.LOGITS:
            value = view.dream_logits(dreams)
            self.pending[str(cfg["snapshot"])] = dreams
            self.dirty.add("pending")
        else:
            raise SecureDreamError(f"unknown dream request kind {kind!r}")
        value = value.detach().cpu()
        reply: dict[str, Any] = self._metrics(norm=float(torch.linalg.vector_norm(value)))
        sent_terms = terms if self.disclosure.per_client_metrics else None
        if not secure:
            return m.content(reply, tensors={"value": value}, terms=sent_terms)
        in_session = self.secagg is not None and self.secagg_round == int(cfg["round"])
        if aborted or bool(cfg.get("withhold", False)) or not in_session:
            reply["withheld"] = True
            return m.content(reply, terms=sent_terms)
        masked = self._mask(value, channel_of(kind), int(cfg["round"]), int(cfg["counter"]))
        return m.content(reply, proto=masked, proto_key="out", terms=sent_terms)

    def _mask(
        self, value: torch.Tensor, channel: Channel, round_index: int, counter: int
    ) -> list[bytes]:
        plan, config = self.stack
        assert self.secagg is not None and plan.secure is not None and config is not None
        dp = plan.dp
        # the server tells each client how many contributions of the round's rounding stream
        # precede its own, so a node draws the rounding bits the in-process aggregator draws
        rounding = rounding_stream(
            self.cfg.seed, round_index, counter, from_os=self.cfg.secure_aggregation.secure_rounding
        )
        noise = None
        if dp is not None and dp.placement == "distributed":
            noise = (
                NoiseSource.from_seed(
                    self.cfg.seed, "dp", round_index, "client", self.k, self.secagg.step
                )
                if self.cfg.privacy.reproducible_noise
                else NoiseSource.from_os()
            )
        encoded = encode_contribution(
            value,
            clip=dp.clip_for(channel) if dp is not None else None,
            value_range=channel_range(plan.secure, channel),
            scale=config.encoding.scale,
            rounding=rounding,
            noise=noise,
            noise_multiplier=dp.noise_multiplier if dp is not None else 0.0,
            noise_shares=dp.calibration_shares if dp is not None else 0,
        )
        self.dirty.add("secagg")
        try:
            return [self.secagg.submit_input(encoded)]
        except protocols.TooFewSurvivors:
            return []

    def secagg_step(self, rd: RecordDict) -> RecordDict:
        cfg = m.config_of(rd)
        op = str(cfg["op"])
        self.dirty.add("secagg")
        if op == "setup":
            self.secagg = protocols.Client(
                self.protocol_config,
                self.k,
                bytes(cfg["session"]),  # type: ignore[arg-type]
            )
            self.secagg_round = int(cfg["round"])
            return m.content({}, proto=[self.secagg.start()], proto_key="out")
        if op == "relay":
            try:
                out = self._deliver_protocol(m.proto_messages(rd, "in"))
            except protocols.TooFewSurvivors:
                return m.content({"aborted": True}, proto=[], proto_key="out")
            return m.content({}, proto=out, proto_key="out")
        raise SecureDreamError(f"unknown secagg op {op!r}")

    def _close_session(self) -> None:
        if self.secagg is not None:
            self.secagg.close()
            self.secagg = None
            self.dirty.add("secagg")

    def distill(self, rd: RecordDict) -> RecordDict:
        cfg = m.config_of(rd)
        round_index = int(cfg["round"])
        self._close_session()  # the round's session is over: forget its secrets
        tensors = rd["x"] if "x" in rd else ArrayRecord()
        wanted = _ids(str(cfg["buffer"]))
        buffer: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for i in wanted:
            if f"s.{i}" in tensors:
                soft = m.read_tensor(tensors, f"s.{i}")  # type: ignore[arg-type]
                if f"x.{i}" in tensors:
                    dreams = m.read_tensor(tensors, f"x.{i}")  # type: ignore[arg-type]
                elif i in self.pending:
                    dreams = self.pending[i]
                elif i in self.buffer:
                    dreams = self.buffer[i][0]
                else:
                    raise SecureDreamError(f"client {self.k}: no dreams for buffer entry {i}")
                buffer[i] = (dreams, soft)
            elif i in self.buffer:
                buffer[i] = self.buffer[i]
            else:
                raise SecureDreamError(f"client {self.k}: no soft labels for buffer entry {i}")
        self.buffer, self.buffer_ids = buffer, wanted
        self.pending = {}
        self.dirty |= {"buffer", "pending"}
        loss = 0.0
        if bool(cfg.get("distill", True)):
            loss = self.trainer.distill(
                [self.buffer[i] for i in wanted],
                distill_settings(self.cfg),
                torch_generator(self.cfg.seed, "distill", self.k, round_index),
            )
            self.dirty.add("model")
        metrics = {"loss": loss}
        if bool(cfg.get("evaluate", False)):
            metrics["accuracy"] = self._evaluate(round_index)
        reply: dict[str, Any] = {"buffer": ",".join(self.buffer_ids)}
        if "train_round" in cfg:  # the next round's training rides on this message
            train_round = int(cfg["train_round"])
            metrics["train_loss"] = self._train(train_round, int(cfg["train_epochs"]))
            reply["trained"] = train_round
        return m.content({**self._metrics(**metrics), **reply})

    def _evaluate(self, round_index: int) -> float:
        """Accuracy on the public test split: replied only where per-client metrics are disclosed.

        The accuracy is a function of this client's private model, so a protecting run keeps it on
        the node (in the node's log); :meth:`_metrics` leaves it out of the reply.
        """
        data = self._data()
        accuracy = self.trainer.evaluate(data.test_x, data.test_y)
        log.info("client %d, round %d: test accuracy %.4f", self.k, round_index, accuracy)
        return accuracy


def _device(name: str) -> torch.device:
    from securedream.rounds.experiment import resolve_device

    return resolve_device(name)
