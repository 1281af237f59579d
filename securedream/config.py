"""Typed, validated run configuration.

A run is described by a TOML file (or a preset shipped with the package) that is parsed into frozen
dataclasses. Validation is declarative: every field carries its allowed range or choices in its
metadata, so one walker checks every key and every error names the key and what is allowed. Unknown
keys are errors too, because a misspelt key silently falling back to a default is the most
common way to run the wrong experiment.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

from securedream.errors import ConfigError


def _spec(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    choices: Sequence[Any] | None = None,
    item_choices: Sequence[Any] | None = None,
    nonempty: bool = True,
    help: str = "",
) -> Any:
    """A dataclass field whose metadata describes what values are allowed."""
    meta = {
        "low": low,
        "high": high,
        "low_open": low_open,
        "choices": tuple(choices) if choices is not None else None,
        "item_choices": tuple(item_choices) if item_choices is not None else None,
        "nonempty": nonempty,
        "help": help,
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


METHODS = ("codream", "codream-fast", "independent", "fedavg", "centralized")
DATASETS = ("mnist5k", "digits", "mnist", "fashionmnist", "cifar10", "svhn")
SPLITS = ("iid", "dirichlet", "disjoint")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _spec("mnist5k", choices=DATASETS, help="dataset name")
    root: str = _spec("", help="folder holding torchvision datasets (not used by mnist5k/digits)")
    download: bool = _spec(False, help="allow torchvision to download into root")
    test_size: int = _spec(1000, low=10, high=100_000, help="held-out test images (mnist5k/digits)")
    split: str = _spec("dirichlet", choices=SPLITS, help="how the train pool is divided")
    alpha: float = _spec(0.5, low=0.0, low_open=True, high=1e6, help="Dirichlet concentration")
    samples_per_client: int = _spec(250, low=0, high=10_000_000, help="0 = divide the pool equally")
    labels_per_client: int = _spec(2, low=1, high=1000, help="labels per client (split=disjoint)")


@dataclass(frozen=True)
class ClientsConfig:
    count: int = _spec(4, low=1, high=1000, help="number of clients")
    models: list[str] = _spec(["cnn-bn"], help="one model name for all, or one per client")  # noqa: RUF009
    lr: float = _spec(0.05, low=0.0, low_open=True, high=10.0, help="local SGD learning rate")
    momentum: float = _spec(0.9, low=0.0, high=0.999)
    weight_decay: float = _spec(1e-4, low=0.0, high=1.0)
    batch_size: int = _spec(32, low=1, high=65536)
    local_epochs: int = _spec(2, low=0, high=10_000, help="local epochs per round")
    warmup_epochs: int = _spec(0, low=0, high=10_000, help="local epochs before round 1")
    population: bool = _spec(
        False, help="hold clients as stacked per-architecture models (securedream.population)"
    )
    sample_rate: float = _spec(
        1.0, low=0.0, low_open=True, high=1.0, help="Poisson client sampling rate q (population)"
    )
    sampling: str = _spec("release", choices=("release", "round"), help="fresh cohort per ...")
    max_participations: int = _spec(
        0, low=0, high=10_000_000, help="cohorts a client may join over the run; 0 = no cap"
    )


@dataclass(frozen=True)
class DreamsConfig:
    batch_size: int = _spec(128, low=1, high=100_000, help="dreams per batch (B)")
    global_steps: int = _spec(100, low=1, high=1_000_000, help="aggregations per round (S)")
    lr: float = _spec(0.05, low=0.0, low_open=True, high=100.0, help="server Adam lr on dreams")
    init_std: float = _spec(1.0, low=0.0, low_open=True, high=100.0)
    w_entropy: float = _spec(1.0, low=0.0, high=1e6)
    w_tv: float = _spec(2.5e-5, low=0.0, high=1e6)
    w_l2: float = _spec(3e-8, low=0.0, high=1e6)
    w_bn: float = _spec(10.0, low=0.0, high=1e6)
    w_diversity: float = _spec(0.0, low=0.0, high=1e6, help="DAFL batch-marginal entropy term")
    w_feature: float = _spec(1.0, low=0.0, high=1e6, help="weight of privacy.feature_stats term")
    w_target: float = _spec(
        0.0, low=0.0, high=1e6, help="cross-entropy to class-balanced dream labels (i mod K)"
    )
    local_steps: int = _spec(1, low=1, high=10_000, help="client Adam steps per aggregation")
    local_lr: float = _spec(0.05, low=0.0, low_open=True, high=100.0)
    server_update: str = _spec("fedavg", choices=("fedavg", "fedadam"), help="with local_steps>1")
    snapshots: int = _spec(1, low=1, high=1_000_000, help="soft-label snapshots per round")
    adaptive: bool = _spec(False, help="server student entropy-ascent term")
    adaptive_from_round: int = _spec(10, low=1, high=1_000_000)
    adaptive_weight: float = _spec(10.0, low=0.0, high=1e6)
    server_model: str = _spec("cnn-bn", help="server student architecture (adaptive term)")
    soft_labels: str = _spec(
        "logits", choices=("logits", "votes"), help="release logits, or one-hot votes (population)"
    )
    vote_sharpness: float = _spec(
        1.0, low=1.0, high=1000.0, help="votes: distil towards fractions^k, normalised (k >= 1)"
    )
    class_share: bool = _spec(
        False,
        help="weight each client's targeted-dream loss and soft label by its share of the dream's "
        "class (needs w_target > 0)",
    )
    warm_start: bool = _spec(False, help="start each round's dreams from the last round's")


@dataclass(frozen=True)
class DistillConfig:
    every: int = _spec(1, low=1, high=1_000_000, help="distil every F rounds")
    epochs: int = _spec(2, low=0, high=100_000, help="distillation epochs (E_kd)")
    temperature: float = _spec(4.0, low=0.0, low_open=True, high=1000.0)
    buffer_batches: int = _spec(3, low=1, high=100_000, help="FIFO size in dream batches")
    batch_size: int = _spec(64, low=1, high=100_000)
    lr: float = _spec(0.0, low=0.0, high=10.0, help="0 = use clients.lr")
    kd_weight: float = _spec(1.0, low=0.0, high=1e6)
    ce_weight: float = _spec(1.0, low=0.0, high=1e6)
    clip_grad_norm: float = _spec(0.0, low=0.0, high=1e6, help="0 = no clipping")


@dataclass(frozen=True)
class FastConfig:
    """CoDream-fast (method = "codream-fast", securedream.fast): dreams are G(z) of a small
    generator whose weights and latents the clients optimise collaboratively."""

    generator_width: int = _spec(
        8, low=1, high=1024, help="generator channels (its hidden layers have 2w, 2w, w)"
    )
    latent_dim: int = _spec(32, low=1, high=4096, help="latent z per dream")
    global_steps: int = _spec(
        5, low=1, high=1_000_000, help="aggregations of (generator, latents) deltas per round"
    )
    local_steps: int = _spec(5, low=1, high=10_000, help="client Adam steps per aggregation")
    lr_generator: float = _spec(5e-3, low=0.0, low_open=True, high=10.0, help="local Adam lr, G")
    lr_latent: float = _spec(0.015, low=0.0, low_open=True, high=100.0, help="local Adam lr, z")
    meta_lr: float = _spec(
        0.5,
        low=0.0,
        low_open=True,
        high=1.0,
        help="Reptile step of the meta-generator toward each round's generator; 1 = warm start",
    )


@dataclass(frozen=True)
class BaselinesConfig:
    fedavg_model: str = _spec("", help="architecture for FedAvg; empty = first client's model")


PLACEMENTS = ("off", "central", "distributed")
NEIGHBOURING = ("zero-out", "replace-one")
SECAGG_STAGES = ("advertise", "share", "masked_input", "consistency", "unmask")


@dataclass(frozen=True)
class SecureAggregationConfig:
    enabled: bool = _spec(False, help="run every sum through pairwise-masking secure aggregation")
    graph: str = _spec("complete", choices=("complete", "harary"))
    threshold: int = _spec(0, low=0, high=100_000, help="Shamir threshold t; 0 = derived")
    neighbours: int = _spec(0, low=0, high=100_000, help="Harary degree k; 0 = derived")
    bits: int = _spec(32, choices=(32, 64), help="integer ring Z_2^bits")
    clip: float = _spec(8.0, low=0.0, low_open=True, high=1e9, help="dream value range ±clip")
    clip_logits: float = _spec(64.0, low=0.0, low_open=True, high=1e9, help="logit range ±clip")
    scale: float = _spec(0.0, low=0.0, high=1e18, help="fixed-point scale; 0 = largest safe")
    secure_rounding: bool = _spec(False, help="rounding randomness from os.urandom (else seed)")
    dropout_rate: float = _spec(0.0, low=0.0, high=0.99, help="simulated dropout per step")
    dropouts: list[str] = _spec(  # noqa: RUF009
        [],
        nonempty=False,
        help='explicit drops "client:stage:step[:round]", stage one of ' + "|".join(SECAGG_STAGES),
    )


@dataclass(frozen=True)
class PrivacyConfig:
    placement: str = _spec("off", choices=PLACEMENTS, help="where DP noise is added")
    clip_gradient: float = _spec(0.2, low=0.0, low_open=True, high=1e9, help="C, dream channel")
    clip_logits: float = _spec(50.0, low=0.0, low_open=True, high=1e9, help="C, logits channel")
    noise_multiplier: float = _spec(0.0, low=0.0, high=1e9, help="z; noise std is z·C")
    target_epsilon: float = _spec(0.0, low=0.0, high=1e6, help="> 0: derive z from ε")
    delta: float = _spec(1e-5, low=0.0, low_open=True, high=0.1)
    accountant: str = _spec("rdp", choices=("rdp", "prv"))
    max_epsilon: float = _spec(0.0, low=0.0, high=1e6, help="stop before exceeding; 0 = no cap")
    min_survivors: int = _spec(
        0, low=0, high=100_000, help="fewest survivors a sum is released with; 0 = max(2, t)"
    )
    colluders: int = _spec(
        -1, low=-1, high=100_000, help="clients colluding with the server; -1 = t - 1"
    )
    neighbouring: str = _spec(
        "zero-out", choices=NEIGHBOURING, help="zero-out (sensitivity C) or replace-one (2C)"
    )
    reproducible_noise: bool = _spec(
        False, help="research only: noise keys from the run seed (else os.urandom)"
    )
    sample_level: bool = _spec(False, help="Opacus DP-SGD for local training")
    sample_noise_multiplier: float = _spec(1.0, low=0.0, high=1e6)
    sample_clip: float = _spec(1.0, low=0.0, low_open=True, high=1e6)
    # sample-level additions (owner i12; privacy/sample_level.py, privacy/feature_stats.py)
    sample_target_epsilon: float = _spec(
        0.0, low=0.0, high=1e6, help="> 0: calibrate the DP-SGD z so the whole run spends this ε"
    )
    feature_stats: bool = _spec(
        False, help="GroupNorm feature-statistics dream term (DP release with sample_level)"
    )
    feature_clip: float = _spec(
        5.0, low=0.0, low_open=True, high=1e6, help="per-example feature-vector clip norm"
    )
    feature_noise_multiplier: float = _spec(
        5.0, low=0.0, low_open=True, high=1e6, help="z of each round's feature-statistics release"
    )


@dataclass(frozen=True)
class PublicConfig:
    """Public data (owner i12; securedream/data/public.py): costs no ε, named in privacy.json.

    A private run may use data that is public — here scikit-learn's digits, a different dataset
    from MNIST — to pre-train every client model before (DP-)SGD and to start dreams from public
    images. Baselines get the same pre-training, so comparisons stay fair.
    """

    dataset: str = _spec(
        "none", choices=("none", "digits"), help="public set for pre-training / dream init"
    )
    pretrain_epochs: int = _spec(
        10, low=0, high=10_000, help="non-private epochs on the public set before local training"
    )
    pretrain_lr: float = _spec(0.02, low=0.0, low_open=True, high=10.0)
    dream_init: bool = _spec(
        False, help="codream: start dream i from a public image of class i mod K, not noise"
    )


@dataclass(frozen=True)
class DiagnosticsConfig:
    """Per-client diagnostics that a protecting run withholds unless the user opts in by name.

    With secure aggregation, client-level DP or sample-level DP on, a client sends the server only
    the protected sums and the protocol's own messages (see securedream.diagnostics). Each key here
    re-enables one plain channel: not masked, not noised, not counted in ε, and listed under
    ``opt_in_leaks`` in summary.json and privacy.json.
    """

    leak_per_client_metrics: bool = _spec(
        False,
        help="secure/private runs: each client's train/distill loss, test accuracy, raw "
        "contribution norms and dream-loss terms reach the server in the clear, outside ε",
    )
    leak_label_histograms: bool = _spec(
        False,
        help="secure/private runs: each client's exact label histogram and sample count reach the "
        "server in the clear (splits.json), outside ε",
    )


@dataclass(frozen=True)
class ComputeConfig:
    """How models run (securedream/compute.py): opt-in speed options, float32/NCHW by default."""

    autocast: str = _spec(
        "off", choices=("off", "bf16"), help="bf16: forward passes under bfloat16 autocast"
    )
    channels_last: bool = _spec(False, help="NHWC conv weights and inputs (GPU tensor cores)")


@dataclass(frozen=True)
class OutputConfig:
    dream_grid: bool = _spec(True, help="write a PNG grid of dreams each round")
    grid_images: int = _spec(64, low=1, high=1024)
    checkpoint: bool = _spec(True, help="checkpoint after every round (needed for --resume)")


@dataclass(frozen=True)
class RunConfig:
    name: str = _spec("run")
    description: str = _spec("", help="one line shown by `securedream presets`")
    seed: int = _spec(0, low=0, high=2**31 - 1)
    device: str = _spec("cpu", choices=("cpu", "cuda", "auto"))
    threads: int = _spec(0, low=0, high=1024, help="CPU threads for torch; 0 = torch's default")
    method: str = _spec("codream", choices=METHODS)
    rounds: int = _spec(10, low=1, high=1_000_000)
    data: DataConfig = field(default_factory=DataConfig)
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    dreams: DreamsConfig = field(default_factory=DreamsConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    fast: FastConfig = field(default_factory=FastConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    secure_aggregation: SecureAggregationConfig = field(default_factory=SecureAggregationConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    public: PublicConfig = field(default_factory=PublicConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def client_models(self) -> list[str]:
        """Model name of each client (a single name applies to every client)."""
        models = self.clients.models
        if self.clients.population:  # a population cycles through its architectures
            return [models[k % len(models)] for k in range(self.clients.count)]
        return list(models) * self.clients.count if len(models) == 1 else list(models)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "clients": ClientsConfig,
    "dreams": DreamsConfig,
    "distill": DistillConfig,
    "fast": FastConfig,
    "baselines": BaselinesConfig,
    "secure_aggregation": SecureAggregationConfig,
    "privacy": PrivacyConfig,
    "public": PublicConfig,
    "diagnostics": DiagnosticsConfig,
    "compute": ComputeConfig,
    "output": OutputConfig,
}


# ----------------------------------------------------------------------------------------------
# Parsing and validation


def _describe_range(meta: Mapping[str, Any]) -> str:
    low, high = meta["low"], meta["high"]
    left = "(" if meta["low_open"] else "["
    return f"{left}{low}, {high}]"


def _check_value(key: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    """Coerce and check one value; returns the value in its declared type."""
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer in {_describe_range(meta)}, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number in {_describe_range(meta)}, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(key, f"must be finite, got {value!r}")
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
    elif hint == list[str]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"must be a list of strings, got {value!r}")
        if not value and meta["nonempty"]:
            raise ConfigError(key, "must not be empty")
        if meta["item_choices"] is not None:
            for item in value:
                if item not in meta["item_choices"]:
                    raise ConfigError(key, f"{item!r} is not one of {list(meta['item_choices'])}")
        return list(value)
    if meta["choices"] is not None and value not in meta["choices"]:
        raise ConfigError(key, f"must be one of {list(meta['choices'])}, got {value!r}")
    low, high = meta["low"], meta["high"]
    if low is not None and (value < low or (meta["low_open"] and value == low)):
        raise ConfigError(key, f"must be in {_describe_range(meta)}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(key, f"must be in {_describe_range(meta)}, got {value!r}")
    return value


# Keys that were renamed or whose meaning changed: using one is an error that says what replaced it,
# never a silent fallback to the new key's default.
REPLACED_KEYS: dict[str, str] = {
    "privacy.secure_noise": (
        "was replaced by privacy.reproducible_noise: noise keys now come from os.urandom by "
        "default; set privacy.reproducible_noise = true only for reproducible research runs"
    ),
}


def _build_section(cls: type, raw: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix.rstrip("."), f"must be a table, got {raw!r}")
    for name in raw:
        if prefix + name in REPLACED_KEYS:
            raise ConfigError(prefix + name, REPLACED_KEYS[prefix + name])
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(
            prefix + unknown[0], f"unknown key; allowed keys in this table: {sorted(known)}"
        )
    values: dict[str, Any] = {}
    for name, value in raw.items():
        hint = hints[name]
        key = prefix + name
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[name] = _build_section(hint, value, key + ".")
        else:
            values[name] = _check_value(key, value, hint, known[name].metadata)
    return cls(**values)


def _validate_cross_fields(cfg: RunConfig) -> None:
    """Rules that involve more than one key."""
    if not cfg.name or any(ord(ch) < 0x20 or ord(ch) == 0x7F or ch in "/\\" for ch in cfg.name):
        raise ConfigError(
            "name",
            "must be a non-empty single line without / or \\ (it names the run folder), "
            f"got {cfg.name!r}",
        )
    models = cfg.clients.models
    if len(models) not in (1, cfg.clients.count) and not cfg.clients.population:
        raise ConfigError(
            "clients.models",
            f"must list 1 model or one per client ({cfg.clients.count}), got {len(models)}",
        )
    from securedream.models import available_models  # local: models import torch

    allowed = available_models()
    for name in [*models, cfg.dreams.server_model]:
        if name not in allowed:
            raise ConfigError("clients.models", f"{name!r} is not one of {list(allowed)}")
    if cfg.baselines.fedavg_model and cfg.baselines.fedavg_model not in allowed:
        raise ConfigError(
            "baselines.fedavg_model",
            f"{cfg.baselines.fedavg_model!r} is not one of {list(allowed)}",
        )
    if cfg.dreams.snapshots > cfg.dreams.global_steps:
        raise ConfigError(
            "dreams.snapshots",
            f"must be in [1, dreams.global_steps={cfg.dreams.global_steps}], "
            f"got {cfg.dreams.snapshots}",
        )
    _validate_dreams(cfg)
    _validate_sample_level(cfg)
    _validate_public(cfg)
    if cfg.data.dataset in ("mnist", "fashionmnist", "cifar10", "svhn") and not cfg.data.root:
        raise ConfigError("data.root", f"is required for dataset {cfg.data.dataset!r}")
    _validate_population(cfg)
    _validate_compute(cfg)
    _validate_diagnostics(cfg)
    _validate_privacy(cfg)
    _validate_fast(cfg)


def _validate_dreams(cfg: RunConfig) -> None:
    """Class-share weighting needs a class per dream, and the per-client path it is built on."""
    d = cfg.dreams
    if d.class_share and d.w_target <= 0:
        raise ConfigError(
            "dreams.class_share",
            "needs dreams.w_target > 0 (targeted dreams give each dream a class)",
        )
    if d.class_share and d.soft_labels != "logits":
        raise ConfigError("dreams.class_share", "needs dreams.soft_labels = 'logits'")
    for key, on in (("class_share", d.class_share), ("warm_start", d.warm_start)):
        if on and cfg.clients.population:
            raise ConfigError(f"dreams.{key}", "is not available with clients.population yet")


def _validate_population(cfg: RunConfig) -> None:
    """Client sampling exists only in the population engine, which is non-private for now."""
    c = cfg.clients
    if not c.population and cfg.dreams.soft_labels != "logits":
        raise ConfigError("dreams.soft_labels", "'votes' needs clients.population = true")
    if cfg.dreams.soft_labels != "votes" and cfg.dreams.vote_sharpness != 1.0:
        raise ConfigError("dreams.vote_sharpness", 'applies only with dreams.soft_labels = "votes"')
    if not c.population:
        for key, value, default in (
            ("sample_rate", c.sample_rate, 1.0),
            ("max_participations", c.max_participations, 0),
        ):
            if value != default:
                raise ConfigError(f"clients.{key}", "needs clients.population = true")
        return
    if cfg.method != "codream":
        raise ConfigError("clients.population", f"applies to method codream, not {cfg.method!r}")
    _validate_private_population(cfg)
    if cfg.dreams.adaptive:
        raise ConfigError("clients.population", "does not support dreams.adaptive yet")


def _validate_compute(cfg: RunConfig) -> None:
    """What the population's stacked (vmap) path cannot run."""
    if not cfg.clients.population:
        return
    if cfg.compute.channels_last:
        raise ConfigError(
            "compute.channels_last",
            "applies to per-client models; a population (clients.population = true) keeps its "
            "clients as stacked parameters, which it does not re-lay out (set it false)",
        )
    if cfg.compute.autocast != "off":
        from securedream.models import build_model, has_batchnorm

        for name in sorted(set(cfg.clients.models)):
            if has_batchnorm(build_model(name, in_channels=1, num_classes=10, image_size=8)):
                raise ConfigError(
                    "compute.autocast",
                    f"bf16 in a population (clients.population = true) needs models without "
                    f"BatchNorm: torch's autocast does not cast BatchNorm under vmap, and "
                    f'{name!r} has BatchNorm (use cnn-gn models, or autocast = "off")',
                )


def _validate_private_population(cfg: RunConfig) -> None:
    """Population runs support secure aggregation per cohort and distributed DP on top of it
    (securedream.population.private); the other mechanisms are refused, naming the key."""
    p, sa = cfg.privacy, cfg.secure_aggregation
    if p.sample_level or p.feature_stats:
        raise ConfigError("privacy.sample_level", "is not supported with clients.population")
    if p.placement == "central":
        raise ConfigError(
            "privacy.placement",
            'population runs support "distributed" (DP against the server) or "off", not central',
        )
    if p.placement != "off" and p.max_epsilon > 0:
        raise ConfigError("privacy.max_epsilon", "is not supported with clients.population")
    if p.placement != "off" and cfg.clients.sampling != "release":
        raise ConfigError(
            "clients.sampling", 'private population runs sample per release ("release")'
        )
    if sa.enabled and (sa.dropout_rate > 0 or sa.dropouts):
        raise ConfigError(
            "secure_aggregation.dropout_rate",
            "simulated dropouts are not supported with clients.population (set 0 and [])",
        )


def _validate_fast(cfg: RunConfig) -> None:
    """[fast] keys belong to codream-fast; what codream-fast cannot protect yet is refused."""
    if cfg.method != "codream-fast":
        default = FastConfig()
        for f in fields(FastConfig):
            if getattr(cfg.fast, f.name) != getattr(default, f.name):
                raise ConfigError(
                    f"fast.{f.name}",
                    f'applies to method = "codream-fast" only (this run is {cfg.method!r})',
                )
        return
    from securedream.fast.support import unsupported  # local: keeps the rules in one home

    problem = unsupported(cfg)
    if problem is not None:
        raise ConfigError(*problem)


def _validate_diagnostics(cfg: RunConfig) -> None:
    """An opt-in leak means something only in a run that protects clients (else all is sent)."""
    if cfg.secure_aggregation.enabled or cfg.privacy.placement != "off" or cfg.privacy.sample_level:
        return
    for f in fields(DiagnosticsConfig):
        if getattr(cfg.diagnostics, f.name):
            raise ConfigError(
                f"diagnostics.{f.name}",
                "only applies when secure_aggregation.enabled, privacy.placement or "
                "privacy.sample_level is on; without them every per-client diagnostic is sent",
            )


# Keys of client-level DP (on when privacy.placement is not "off") and of sample-level DP-SGD (on
# when privacy.sample_level is true). A key of a mechanism that is off is an error, because a run
# that silently ignores "target_epsilon = 4" is a run the user believes is private.
CLIENT_LEVEL_KEYS = (
    "clip_gradient",
    "clip_logits",
    "noise_multiplier",
    "target_epsilon",
    "delta",
    "accountant",
    "max_epsilon",
    "min_survivors",
    "colluders",
    "neighbouring",
    "reproducible_noise",
)
SAMPLE_LEVEL_KEYS = (
    "sample_noise_multiplier",
    "sample_clip",
    "sample_target_epsilon",
    "feature_clip",
    "feature_noise_multiplier",
)
SHARED_KEYS = ("delta", "accountant", "reproducible_noise")  # also read by DP-SGD


def client_dp_off(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a raw config without the keys of a DP mechanism that is off.

    Baselines and audit controls derive a non-private copy of a private config by setting
    ``privacy.placement = "off"``; the client-level keys the copy no longer uses go back to their
    defaults here, so the copy validates (a user's config with such keys is still an error).
    """
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    privacy = out.get("privacy", {})
    sample_level = privacy.get("sample_level", False)
    if privacy.get("placement", "off") == "off":
        for name in CLIENT_LEVEL_KEYS:
            if name in SHARED_KEYS and sample_level:
                continue
            privacy.pop(name, None)
    if not sample_level:  # the same for a copy with DP-SGD turned off
        for name in SAMPLE_LEVEL_KEYS:
            privacy.pop(name, None)
    return out


def _validate_privacy(cfg: RunConfig) -> None:
    p = cfg.privacy
    default = PrivacyConfig()

    def changed(name: str) -> bool:
        return getattr(p, name) != getattr(default, name)

    if p.placement == "off":
        for name in CLIENT_LEVEL_KEYS:
            if not changed(name) or (p.sample_level and name in SHARED_KEYS):
                continue
            raise ConfigError(
                f"privacy.{name}",
                'has no effect while privacy.placement = "off" (client-level DP is off); set '
                'privacy.placement = "central" or "distributed" to turn it on, or remove the key',
            )
    if not p.sample_level:
        for name in SAMPLE_LEVEL_KEYS:
            if changed(name):
                raise ConfigError(
                    f"privacy.{name}",
                    "has no effect while privacy.sample_level = false; set "
                    "privacy.sample_level = true to turn DP-SGD on, or remove the key",
                )
    if p.placement == "off":
        return
    if p.noise_multiplier > 0 and p.target_epsilon > 0:
        raise ConfigError(
            "privacy.noise_multiplier",
            "set either noise_multiplier or target_epsilon (which derives it), not both",
        )
    if p.noise_multiplier <= 0 and p.target_epsilon <= 0:
        raise ConfigError(
            "privacy.noise_multiplier",
            "set noise_multiplier > 0 or target_epsilon > 0 when placement is not off",
        )
    n = cfg.clients.count
    if p.min_survivors > n:
        raise ConfigError(
            "privacy.min_survivors", f"must be in [0, clients.count={n}], got {p.min_survivors}"
        )
    if p.colluders > n - 1:
        raise ConfigError(
            "privacy.colluders",
            f"must be in [0, clients.count - 1 = {n - 1}] (or -1 for t - 1), got {p.colluders}",
        )
    if p.placement == "distributed":
        if not cfg.secure_aggregation.enabled:
            raise ConfigError(
                "privacy.placement", "distributed needs secure_aggregation.enabled = true"
            )
        if p.accountant != "rdp":
            raise ConfigError(
                "privacy.accountant",
                'distributed (Skellam) noise is accounted with RDP; set accountant = "rdp"',
            )


def _validate_public(cfg: RunConfig) -> None:
    """Public data exists for MNIST-like datasets only, in the in-process engine."""
    pub = cfg.public
    default = PublicConfig()
    if pub.dataset == "none":
        for name in ("pretrain_epochs", "pretrain_lr", "dream_init"):
            if getattr(pub, name) != getattr(default, name):
                raise ConfigError(
                    f"public.{name}",
                    'has no effect while public.dataset = "none"; set public.dataset = "digits" '
                    "or remove the key",
                )
        return
    from securedream.data.public import PUBLIC_TARGETS

    if cfg.data.dataset not in PUBLIC_TARGETS:
        raise ConfigError(
            "public.dataset",
            f"{pub.dataset!r} is public data for {list(PUBLIC_TARGETS)} only, "
            f"not data.dataset = {cfg.data.dataset!r}",
        )
    if cfg.clients.population:
        raise ConfigError(
            "public.dataset", "is not wired into population runs (clients.population = true)"
        )
    if pub.pretrain_epochs == 0 and not pub.dream_init:
        raise ConfigError(
            "public.dataset",
            f"{pub.dataset!r} is unused: set public.pretrain_epochs > 0 or "
            "public.dream_init = true",
        )


def _validate_sample_level(cfg: RunConfig) -> None:
    """Sample-level DP and feature statistics need GroupNorm models and no BatchNorm."""
    p = cfg.privacy
    if not (p.sample_level or p.feature_stats):
        return
    from torch import nn

    from securedream.models import build_model, has_batchnorm

    names = set(cfg.client_models())
    if cfg.method == "fedavg" and cfg.baselines.fedavg_model:
        names = {cfg.baselines.fedavg_model}
    for name in sorted(names):
        model = build_model(name, in_channels=1, num_classes=10, image_size=8)
        if p.sample_level and has_batchnorm(model):
            raise ConfigError(
                "clients.models",
                f"{name!r} has BatchNorm; privacy.sample_level needs GroupNorm models "
                "such as cnn-gn, cnn-gn-wide, cnn-gn-deep",
            )
        if p.feature_stats and not any(isinstance(m, nn.GroupNorm) for m in model.modules()):
            raise ConfigError(
                "privacy.feature_stats",
                f"{name!r} has no GroupNorm layers to measure; use cnn-gn, cnn-gn-wide or "
                "cnn-gn-deep, or set privacy.feature_stats = false",
            )


def config_from_dict(raw: Mapping[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from parsed TOML (a nested dict)."""
    cfg = _build_section(RunConfig, raw, "")
    _validate_cross_fields(cfg)
    return cfg


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--config", f"file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from exc
    if not data:
        raise ConfigError(
            "--config", f"{path} sets nothing (empty); use --preset NAME for the shipped defaults"
        )
    return data


def load_config(path: str | Path) -> RunConfig:
    return config_from_dict(_read_toml(path))


def preset_names() -> list[str]:
    folder = resources.files("securedream") / "presets"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_preset_dict(name: str) -> dict[str, Any]:
    names = preset_names()
    if name not in names:
        raise ConfigError("--preset", f"unknown preset {name!r}; available: {names}")
    text = (resources.files("securedream") / "presets" / f"{name}.toml").read_text("utf-8")
    return tomllib.loads(text)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse one ``--set KEY=VALUE``; the value is read as TOML, falling back to a bare string."""
    if "=" not in item:
        raise ConfigError("--set", f"expected KEY=VALUE, got {item!r}")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError("--set", f"invalid key in {item!r}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``--set`` overrides applied (validated later, as a whole)."""
    result: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for item in overrides:
        path, value = parse_override(item)
        table = result
        for part in path[:-1]:
            if part not in SECTIONS and table is result:
                raise ConfigError(
                    ".".join(path), f"unknown table {part!r}; tables: {list(SECTIONS)}"
                )
            nested = table.setdefault(part, {})
            if not isinstance(nested, dict):
                raise ConfigError(".".join(path), f"{part!r} is not a table")
            table = nested
        table[path[-1]] = value
    return result


def resolve_config(
    *,
    config_path: str | Path | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
) -> RunConfig:
    """Preset (or file) first, then ``--set`` overrides; validated once at the end."""
    if config_path is not None and preset is not None:
        raise ConfigError("--config", "give either --config or --preset, not both")
    raw = _read_toml(config_path) if config_path is not None else load_preset_dict(preset or "demo")
    return config_from_dict(apply_overrides(raw, overrides))


# ----------------------------------------------------------------------------------------------
# Writing the resolved config back out (a minimal TOML emitter for our flat value types)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # every character TOML forbids raw in a basic string (control characters) is escaped, so
        # the written config.toml always parses back to the same value
        escaped = "".join(
            "\\" + ch
            if ch in '"\\'
            else f"\\u{ord(ch):04x}"
            if ord(ch) < 0x20 or ord(ch) == 0x7F
            else ch
            for ch in value
        )
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def config_to_toml(cfg: RunConfig) -> str:
    data = config_to_dict(cfg)
    lines: list[str] = []
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    for key, value in data.items():
        if key not in tables:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables.items():
        lines.append("")
        lines.append(f"[{name}]")
        for key, value in table.items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
