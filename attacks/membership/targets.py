"""What membership inference attacks: trained CoDream pipelines and what a server can observe.

- :class:`Universe` — every sample the attacker can name: the run's train pool followed by its test
  split, in the run's own normalisation. A sample is a *member* of client k when it is in client k's
  shard, a *non-member* when no client holds it.
- :class:`PipelineRun` — one run's trained client models, dreams and membership (the target, loaded
  from a run folder, or a shadow the attacker trains).
- :func:`train_shadow` — one shadow run of the *whole* CoDream pipeline (same config and the same
  aggregation/DP stack, fresh seed), whose clients' data is drawn from the universe with the run's
  own split scheme, so every sample is IN some shadows and OUT of others.
- Observations: :func:`model_observations` (each client model's logit-scaled confidence on each
  sample) and :func:`oracle_observations` (the dream-gradient response to candidate samples planted
  as dreams, per client with plain aggregation, or the aggregate through the secure/DP stack).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from securedream.aggregation.base import Channel
from securedream.config import RunConfig, apply_overrides, config_from_dict, config_to_dict
from securedream.data import split_clients
from securedream.dreams import DreamLossWeights
from securedream.errors import ConfigError
from securedream.privacy.engine import PrivacyBudgetExhausted
from securedream.rounds.client import CoDreamClient
from securedream.rounds.codream import codream_round
from securedream.rounds.experiment import Experiment
from securedream.runs import RunFolder
from securedream.seeding import derive_seed, numpy_generator
from securedream.stack import build_aggregation

Progress = Callable[[int], None]


@dataclass
class Universe:
    """All samples the attacker can name, in the target run's normalisation."""

    x: torch.Tensor
    y: torch.Tensor
    pool_size: int  # the first pool_size samples are the run's train pool, the rest its test split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def pixels(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """De-normalised images in [0, 1] (defaults to the whole universe)."""
        x = self.x if x is None else x
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
        return (x.detach().cpu() * std + mean).clamp(0.0, 1.0)


@dataclass
class PipelineRun:
    """A trained CoDream run: client models, their data, and the dream buffer."""

    cfg: RunConfig
    clients: list[CoDreamClient]
    member_of: np.ndarray  # per universe sample: index of the client holding it, -1 for none
    buffer: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    label_histograms: list[list[int]] = field(default_factory=list)

    @property
    def models(self) -> list[nn.Module]:
        return [c.model for c in self.clients]

    def members(self, k: int) -> np.ndarray:
        return np.flatnonzero(self.member_of == k)

    def non_members(self) -> np.ndarray:
        return np.flatnonzero(self.member_of < 0)


def require_codream(cfg: RunConfig) -> None:
    if cfg.method != "codream":
        raise ConfigError("method", f"the audits need method = codream, got {cfg.method!r}")


def load_target(folder: str | Path) -> tuple[Universe, PipelineRun, Experiment]:
    """The target run in ``folder``: rebuilt from its config, weights from its checkpoint."""
    run = RunFolder(folder)
    cfg = run.load_config()
    require_codream(cfg)
    if not (run.checkpoint_dir / "state.pt").is_file():
        raise ConfigError(
            "--run",
            f"{folder} has no checkpoint/state.pt: the audits need the trained models and dreams "
            "(run with output.checkpoint = true)",
        )
    tensors, _meta = run.load_checkpoint()
    exp = Experiment(cfg)
    exp.load_state_dict(tensors)
    data = exp.data
    universe = Universe(
        x=torch.cat([data.train_x, data.test_x]).cpu(),
        y=torch.cat([data.train_y, data.test_y]).cpu(),
        pool_size=int(data.train_y.shape[0]),
        num_classes=data.num_classes,
        mean=data.mean,
        std=data.std,
    )
    member_of = np.full(len(universe), -1, dtype=np.int64)
    for k, shard in enumerate(exp.shards):
        member_of[shard.indices.numpy()] = k
    target = PipelineRun(
        cfg=cfg,
        clients=list(exp.clients),
        member_of=member_of,
        buffer=[(x.cpu(), s.cpu()) for x, s in exp.buffer],
        label_histograms=[list(s.label_histogram) for s in exp.shards],
    )
    return universe, target, exp


def with_seed(cfg: RunConfig, seed: int, extra: Sequence[str] = ()) -> RunConfig:
    raw = apply_overrides(config_to_dict(cfg), [f"seed={seed % (2**31)}", *extra])
    return config_from_dict(raw)


def train_shadow(
    cfg: RunConfig,
    universe: Universe,
    shard_size: int,
    index: int,
    seed: int,
    on_round: Progress | None = None,
) -> PipelineRun:
    """Shadow run ``index``: the target's pipeline on clients whose data is drawn from the universe.

    Same config (models, dream settings, aggregation and DP stack) with a seed derived from
    (``seed``, index); the clients' shards are split from the whole universe with the run's split
    scheme, so membership differs from shadow to shadow.
    """
    shadow_seed = derive_seed(seed, "shadow", index)
    shadow_cfg = with_seed(cfg, shadow_seed, ["output.dream_grid=false", "output.checkpoint=false"])
    exp = Experiment(shadow_cfg)
    parts = split_clients(
        universe.y.numpy(),
        cfg.clients.count,
        scheme=cfg.data.split,
        samples_per_client=shard_size,
        alpha=cfg.data.alpha,
        labels_per_client=cfg.data.labels_per_client,
        seed=derive_seed(shadow_seed, "split"),
    )
    member_of = np.full(len(universe), -1, dtype=np.int64)
    for k, (client, idx) in enumerate(zip(exp.clients, parts, strict=True)):
        member_of[idx] = k
        client.train_x = universe.x[idx].to(exp.device)
        client.train_y = universe.y[idx].to(exp.device)
    for r in range(shadow_cfg.rounds):
        if exp.privacy is not None:
            try:
                exp.privacy.check_budget(r)
            except PrivacyBudgetExhausted:
                break  # the target run stops at the same round, for the same reason
        codream_round(exp, r)
        if exp.privacy is not None:
            exp.privacy.end_round()
        if on_round is not None:
            on_round(1)
    histograms = [
        np.bincount(universe.y[idx].numpy(), minlength=universe.num_classes).tolist()
        for idx in parts
    ]
    return PipelineRun(
        cfg=shadow_cfg,
        clients=list(exp.clients),
        member_of=member_of,
        buffer=[(x.cpu(), s.cpu()) for x, s in exp.buffer],
        label_histograms=histograms,
    )


# ------------------------------------------------------------------------------------------------
# Observations


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """LiRA's statistic φ = log p_y − log(1 − p_y), computed stably from logits."""
    log_p = F.log_softmax(logits.double(), dim=1)
    true = log_p.gather(1, labels.view(-1, 1)).squeeze(1)
    others = log_p.clone()
    others.scatter_(1, labels.view(-1, 1), float("-inf"))
    return true - torch.logsumexp(others, dim=1)


@torch.no_grad()
def per_sample_scores(
    models: Sequence[nn.Module],
    universe: Universe,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch_size: int = 1000,
) -> np.ndarray:
    """[K, N] ``score(logits, labels)`` of every client model on every universe sample (eval)."""
    out = np.empty((len(models), len(universe)))
    for k, model in enumerate(models):
        model.eval()
        device = next(model.parameters()).device
        for i in range(0, len(universe), batch_size):
            x = universe.x[i : i + batch_size].to(device)
            y = universe.y[i : i + batch_size].to(device)
            out[k, i : i + batch_size] = score(model(x), y).cpu().numpy()
    return out


def model_observations(
    models: Sequence[nn.Module], universe: Universe, batch_size: int = 1000
) -> np.ndarray:
    """[K, N] φ of every client model on every universe sample (eval mode)."""
    return per_sample_scores(models, universe, logit_confidence, batch_size)


@dataclass(frozen=True)
class OracleView:
    """What a server observes of dream-gradient responses.

    ``per_client``: plain aggregation — the server receives every client's contribution (with or
    without central DP: a server that adds the noise itself sees the inputs first).
    Otherwise the aggregate, obtained through the run's secure (and DP) aggregation stack.
    """

    per_client: bool

    @staticmethod
    def for_config(cfg: RunConfig) -> OracleView:
        return OracleView(per_client=not cfg.secure_aggregation.enabled)

    @property
    def name(self) -> str:
        return "each client's response (plain)" if self.per_client else "the aggregate (secure)"


def candidate_batches(
    universe: Universe, member_of: np.ndarray, count: int, batch_size: int, seed: int
) -> list[np.ndarray]:
    """Balanced candidates (half members, half non-members), shuffled into dream-sized batches.

    The count is rounded down to whole batches (at least one) so every planted batch has the
    shape of a real dream batch.
    """
    rng = numpy_generator(seed, "oracle-candidates")
    members = np.flatnonzero(member_of >= 0)
    non_members = np.flatnonzero(member_of < 0)
    half = min(count // 2, members.size, non_members.size)
    chosen = np.concatenate(
        [rng.choice(members, half, replace=False), rng.choice(non_members, half, replace=False)]
    )
    chosen = rng.permutation(chosen)
    batches = max(1, chosen.size // batch_size)
    chosen = chosen[: batches * batch_size]
    if chosen.size < batch_size:
        raise ConfigError(
            "mia candidates",
            f"need at least dreams.batch_size = {batch_size} candidates, have {chosen.size}",
        )
    return [chosen[i * batch_size : (i + 1) * batch_size] for i in range(batches)]


def oracle_observations(
    run: PipelineRun,
    universe: Universe,
    batches: Sequence[np.ndarray],
    view: OracleView,
    seed: int,
) -> np.ndarray:
    """Per-candidate statistic −log ‖∂L/∂x_i‖ of the planted batches.

    Returns [K, n] (per client) or [1, n] (aggregate), candidates in the order of ``batches``.
    A member is fitted by the model, so its dream loss is flatter there: a smaller gradient.
    """
    cfg = run.cfg
    d = cfg.dreams
    weights = DreamLossWeights(d.w_entropy, d.w_tv, d.w_l2, d.w_bn, d.w_diversity)
    flat = np.concatenate(batches)
    rows = len(run.clients) if view.per_client else 1
    out = np.empty((rows, flat.size))
    stack = None
    ids = [c.client_id for c in run.clients]
    if not view.per_client:
        shape = universe.x[batches[0]].shape
        # the server's stack for this observation: the run's own, with fresh noise keys
        view_cfg = with_seed(
            cfg, derive_seed(seed, "oracle"), ["secure_aggregation.dropout_rate=0.0"]
        )
        stack, _ = build_aggregation(
            view_cfg, dim=int(np.prod(shape)), num_classes=universe.num_classes
        )
        stack.start_round(0, ids)
    try:
        for j, batch in enumerate(batches):
            x = universe.x[batch]
            grads = {c.client_id: c.dream_gradient(x, weights)[0].cpu() for c in run.clients}
            sl = slice(j * len(batch), (j + 1) * len(batch))
            if view.per_client:
                for k, cid in enumerate(ids):
                    out[k, sl] = _row_statistic(grads[cid])
            else:
                assert stack is not None
                total = stack.aggregate(grads, channel=Channel.DREAM_GRADIENT, step=j).total
                out[0, sl] = _row_statistic(total)
    finally:
        if stack is not None:
            stack.end_round()
    return out


def _row_statistic(grad: torch.Tensor) -> np.ndarray:
    norms = torch.linalg.vector_norm(grad.double().reshape(grad.shape[0], -1), dim=1)
    return -torch.log(norms + 1e-30).numpy()
