"""Builds a run's parties from its config and holds the state that carries across rounds.

One Experiment serves every method (CoDream and the baselines) so that they share data, splits,
model initialisation and evaluation exactly: a comparison between methods differs only in the
method.
"""

from __future__ import annotations

import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from securedream.aggregation import Aggregator, PlainAggregator
from securedream.comm import CommLedger
from securedream.compute import ComputeSettings
from securedream.config import RunConfig
from securedream.data import DatasetBundle, load_dataset, split_for_config
from securedream.dreams import DreamLossWeights
from securedream.errors import ConfigError
from securedream.models import build_model, has_batchnorm
from securedream.rounds.client import CoDreamClient, DistillSettings, LocalTrainingConfig
from securedream.rounds.server import DreamingSettings
from securedream.seeding import derive_seed


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda was requested but torch.cuda.is_available() is False")
    return torch.device(name)


@dataclass(frozen=True)
class ClientShard:
    indices: torch.Tensor
    label_histogram: list[int]


class Experiment:
    """Data, clients, server student, dream buffer and aggregator of one run."""

    def __init__(self, cfg: RunConfig, *, aggregator: Aggregator | None = None) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.compute = ComputeSettings.from_config(cfg)
        self.compute.check_device(self.device)
        self.data: DatasetBundle = load_dataset(
            cfg.data.dataset,
            seed=cfg.seed,
            test_size=cfg.data.test_size,
            root=cfg.data.root or None,
            download=cfg.data.download,
        )
        labels = self.data.train_y.numpy()
        splits = split_for_config(labels, cfg)
        self.shards = [
            ClientShard(
                indices=torch.as_tensor(idx, dtype=torch.long),
                label_histogram=torch.bincount(
                    torch.as_tensor(labels[idx], dtype=torch.long), minlength=self.data.num_classes
                ).tolist(),
            )
            for idx in splits
        ]
        self.training = LocalTrainingConfig(
            lr=cfg.clients.lr,
            momentum=cfg.clients.momentum,
            weight_decay=cfg.clients.weight_decay,
            batch_size=cfg.clients.batch_size,
        )
        self.privacy = None
        if aggregator is None and cfg.method not in ("codream", "codream-fast"):
            aggregator = PlainAggregator()  # baselines never aggregate through it
        if aggregator is None:
            from securedream.stack import build_aggregation

            aggregator, self.privacy = build_aggregation(
                cfg,
                dim=cfg.dreams.batch_size * self.data.channels * self.data.image_size**2,
                num_classes=self.data.num_classes,
            )
        self.aggregator = aggregator
        self.clients = self._build_clients()
        self.public = self._public_pretraining()
        if cfg.privacy.sample_level:
            from securedream.privacy.sample_level import reproducible_noise, sgd_noise_for

            for client in self.clients:
                client.enable_sample_level_dp(
                    sgd_noise_for(cfg, client.num_samples),
                    cfg.privacy.sample_clip,
                    cfg.privacy.accountant,
                    client.client_id,
                    reproducible=reproducible_noise(cfg.privacy),
                )
        self.student = self._build_student()
        self.buffer: deque[tuple[torch.Tensor, torch.Tensor]] = deque(
            maxlen=cfg.distill.buffer_batches
        )
        self.last_dreams: torch.Tensor | None = None
        self.ledger = CommLedger(range(len(self.clients)))
        self.fast = None  # CoDream-fast's meta-generator (securedream.fast), across rounds
        if cfg.method == "codream-fast":
            from securedream.fast import MetaGenerator

            self.fast = MetaGenerator(
                latent_dim=cfg.fast.latent_dim,
                width=cfg.fast.generator_width,
                channels=self.data.channels,
                image_size=self.data.image_size,
                seed=cfg.seed,
            )

    # --- construction -------------------------------------------------------------------------
    def _model(self, name: str, seed_label: object) -> torch.nn.Module:
        return build_model(
            name,
            in_channels=self.data.channels,
            num_classes=self.data.num_classes,
            image_size=self.data.image_size,
            seed=derive_seed(self.cfg.seed, "model", seed_label),
        )

    def _build_clients(self) -> list[CoDreamClient]:
        cfg = self.cfg
        if cfg.method == "centralized":
            pooled = torch.cat([s.indices for s in self.shards])
            model = self._model(cfg.client_models()[0], "central")
            return [self._client(0, model, pooled)]
        if cfg.method == "fedavg":
            name = cfg.baselines.fedavg_model or cfg.client_models()[0]
            # one initialisation shared by all clients, as FedAvg starts from one global model
            return [
                self._client(k, self._model(name, "global"), shard.indices)
                for k, shard in enumerate(self.shards)
            ]
        clients = []
        without_bn = []
        for k, (name, shard) in enumerate(zip(cfg.client_models(), self.shards, strict=True)):
            model = self._model(name, k)
            if not has_batchnorm(model):
                without_bn.append(f"client {k} ({name})")
            clients.append(self._client(k, model, shard.indices))
            if cfg.method == "codream" and cfg.dreams.class_share:
                clients[-1].enable_class_share(self.data.num_classes)
        if without_bn and cfg.method in ("codream", "codream-fast") and cfg.dreams.w_bn > 0:
            warnings.warn(
                "no BatchNorm layers, so no BN-statistics dream term for: " + ", ".join(without_bn),
                stacklevel=2,
            )
        return clients

    def _client(self, k: int, model: torch.nn.Module, indices: torch.Tensor) -> CoDreamClient:
        return CoDreamClient(
            k,
            model,
            self.data.train_x[indices],
            self.data.train_y[indices],
            self.training,
            self.device,
            compute=self.compute,
        )

    def _public_pretraining(self) -> Any:
        """``public.dataset``: pre-train every client model on the public set (no ε, before any
        private step); returns the public set (``None`` without one). FedAvg clients share one
        initialisation and get identical pre-training."""
        pub = self.cfg.public
        if pub.dataset == "none":
            return None
        from securedream.data.public import load_public, pretrain_cached

        data = load_public(pub.dataset, self.cfg.data.dataset, self.data.mean, self.data.std)
        if pub.pretrain_epochs > 0:
            names = self.cfg.client_models()
            for k, client in enumerate(self.clients):
                label: object = k
                name = names[k] if k < len(names) else names[0]
                if self.cfg.method == "fedavg":
                    label, name = "global", self.cfg.baselines.fedavg_model or names[0]
                elif self.cfg.method == "centralized":
                    label = "central"
                model_seed = derive_seed(self.cfg.seed, "model", label)
                pretrain_cached(
                    client.model,
                    (name, model_seed),
                    data,
                    epochs=pub.pretrain_epochs,
                    lr=pub.pretrain_lr,
                    momentum=self.cfg.clients.momentum,
                    batch_size=self.cfg.clients.batch_size,
                    generator_seed=derive_seed(self.cfg.seed, "public-pretrain", label),
                    device=self.device,
                )
        return data

    def public_report(self) -> dict[str, Any] | None:
        """privacy.json's ``public_data`` entry, or None without public data."""
        if self.public is None:
            return None
        from securedream.data.public import report_entry

        pub = self.cfg.public
        return report_entry(
            self.public.name,
            self.public.description,
            pub.pretrain_epochs,
            pub.dream_init and self.cfg.method == "codream",
        )

    def _build_student(self) -> CoDreamClient | None:
        if self.cfg.method != "codream" or not self.cfg.dreams.adaptive:
            return None
        model = self._model(self.cfg.dreams.server_model, "server")
        empty_x = self.data.train_x[:0]
        empty_y = self.data.train_y[:0]
        return CoDreamClient(
            -1, model, empty_x, empty_y, self.training, self.device, compute=self.compute
        )

    # --- settings views -----------------------------------------------------------------------
    def dream_weights(self) -> DreamLossWeights:
        d = self.cfg.dreams
        return DreamLossWeights(
            d.w_entropy,
            d.w_tv,
            d.w_l2,
            d.w_bn,
            d.w_diversity,
            feature=d.w_feature if self.cfg.privacy.feature_stats else 0.0,
            target=d.w_target,
        )

    def dreaming_settings(self, round_index: int) -> DreamingSettings:
        d = self.cfg.dreams
        adaptive = d.adaptive and round_index + 1 >= d.adaptive_from_round
        return DreamingSettings(
            steps=d.global_steps,
            lr=d.lr,
            weights=self.dream_weights(),
            local_steps=d.local_steps,
            local_lr=d.local_lr,
            server_update=d.server_update,
            snapshots=d.snapshots,
            adaptive_weight=d.adaptive_weight if adaptive else 0.0,
        )

    def distill_settings(self) -> DistillSettings:
        k = self.cfg.distill
        return DistillSettings(
            epochs=k.epochs,
            temperature=k.temperature,
            batch_size=k.batch_size,
            lr=k.lr or self.cfg.clients.lr,
            kd_weight=k.kd_weight,
            ce_weight=k.ce_weight,
            clip_grad_norm=k.clip_grad_norm,
        )

    def measure_feature_statistics(self, round_index: int) -> list[float] | None:
        """Once per round, after local training: each client's feature-statistics targets.

        With DP-SGD on, each measurement is a clipped, noised release in the client's ledger; the
        return value is the fraction of examples whose feature vector was clipped, per client.
        """
        p = self.cfg.privacy
        if not p.feature_stats:
            return None
        from securedream.privacy.sample_level import noise_seed_from_os, reproducible_noise
        from securedream.seeding import torch_generator

        clipped = []
        for client in self.clients:
            if reproducible_noise(p):
                gen = torch_generator(self.cfg.seed, "feature-noise", client.client_id, round_index)
            else:
                gen = torch.Generator().manual_seed(noise_seed_from_os())
            release = client.measure_features(p.feature_clip, p.feature_noise_multiplier, gen)
            clipped.append(release.clipped_fraction)
        return clipped

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def test_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.test_x, self.data.test_y

    def dream_shape(self) -> tuple[int, int, int, int]:
        s = self.data.image_size
        return (self.cfg.dreams.batch_size, self.data.channels, s, s)

    # --- checkpoint state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "clients": [c.state_dict() for c in self.clients],
            "student": self.student.state_dict() if self.student is not None else None,
            "buffer": [[x.cpu(), s.cpu()] for x, s in self.buffer],
            "last_dreams": self.last_dreams.cpu() if self.last_dreams is not None else None,
            **({"fast": self.fast.state_dict()} if self.fast is not None else {}),
        }

    def bookkeeping(self) -> dict[str, Any]:
        """JSON-able state that is not tensors (privacy ledger), for the checkpoint's meta.json."""
        return {
            "privacy": self.privacy.state_dict() if self.privacy is not None else None,
            "sample_level": [c.sample_dp.state() for c in self.clients if c.sample_dp],
        }

    def load_bookkeeping(self, meta: dict[str, Any]) -> None:
        if self.privacy is not None and meta.get("privacy") is not None:
            self.privacy.load_state_dict(meta["privacy"])
        histories = meta.get("sample_level") or []
        for client, history in zip(
            [c for c in self.clients if c.sample_dp], histories, strict=True
        ):
            assert client.sample_dp is not None
            client.sample_dp.load_state(history)

    def sample_level_report(self) -> dict[str, Any] | None:
        """DP-SGD (and feature-statistics) ledger and ε per client, or None when off."""
        if not self.cfg.privacy.sample_level:
            return None
        from securedream.privacy.sample_level import report_section

        return report_section(self.cfg, self.clients)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for client, saved in zip(self.clients, state["clients"], strict=True):
            client.load_state_dict(saved)
        if self.student is not None and state.get("student") is not None:
            self.student.load_state_dict(state["student"])
        self.buffer.clear()
        for x, s in state["buffer"]:
            self.buffer.append((x.to(self.device), s.to(self.device)))
        last = state.get("last_dreams")
        self.last_dreams = last.to(self.device) if last is not None else None
        if self.fast is not None:
            self.fast.load_state_dict(state["fast"])


def checkpoint_state_problem(state: Any, exp: Experiment) -> str | None:
    """What is wrong with a loaded state.pt for ``exp`` (structure and types), or None.

    Checked before anything is loaded, so a malformed checkpoint is refused with a message that
    names the entry, instead of failing half-way through ``load_state_dict``.
    """
    if not isinstance(state, dict):
        return "must hold a dict"
    missing = {"clients", "buffer"} - set(state)
    if missing:
        return f"lacks {sorted(missing)}"
    clients = state["clients"]
    if not isinstance(clients, list) or len(clients) != len(exp.clients):
        return f"'clients' must be a list of {len(exp.clients)} client states"
    for k, saved in enumerate(clients):
        if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
            return f"clients[{k}] must be a dict with a 'model' state dict"
        if not isinstance(saved.get("optimizer"), dict):
            return f"clients[{k}] must hold an 'optimizer' state dict"
        bad = [n for n, t in saved["model"].items() if not isinstance(t, torch.Tensor)]
        if bad:
            return f"clients[{k}].model[{bad[0]!r}] must be a tensor"
    student = state.get("student")
    if student is not None and not isinstance(student, dict):
        return "'student' must be null or a client state"
    if (student is None) != (exp.student is None):
        return "'student' does not match dreams.adaptive of this config"
    buffer = state["buffer"]
    if not isinstance(buffer, list) or len(buffer) > exp.cfg.distill.buffer_batches:
        return f"'buffer' must be a list of at most {exp.cfg.distill.buffer_batches} batches"
    shape = exp.dream_shape()
    for i, item in enumerate(buffer):
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not all(isinstance(t, torch.Tensor) for t in item)
        ):
            return f"buffer[{i}] must be a pair of tensors (dreams, soft labels)"
        if tuple(item[0].shape) != shape or tuple(item[1].shape) != (
            shape[0],
            exp.data.num_classes,
        ):
            return f"buffer[{i}] has shapes {tuple(item[0].shape)}, {tuple(item[1].shape)}"
    last = state.get("last_dreams")
    if last is not None and (not isinstance(last, torch.Tensor) or tuple(last.shape) != shape):
        return f"'last_dreams' must be null or a tensor of shape {shape}"
    if exp.fast is not None:
        return exp.fast.state_problem(state.get("fast"))
    return None
