"""Optional sample-level DP for local training: Opacus DP-SGD inside each client.

Client-level DP (the rest of this package) hides whether a *client* took part; DP-SGD hides whether
one *sample* was in a client's data, for everything derived from the client's model — including its
dream gradients and logits, which are post-processing of the DP-trained model. Opacus's
``PrivacyEngine`` wraps the model (per-sample gradients via hooks), the optimiser (per-sample
clipping to ``max_grad_norm``, Gaussian noise of std z·max_grad_norm) and the data loader (Poisson
sampling at rate batch_size / n), and its accountant counts the steps.

Requirements and consequences, checked by the config layer and stated in the privacy report:
models without BatchNorm and without in-place operations (BatchNorm mixes samples in a batch), so
the BN dream term is unavailable (``privacy.feature_stats`` measures a DP replacement, see
``feature_stats``); distillation keeps its KL term on dreams but drops the local cross-entropy term
(which would otherwise be an un-noised use of the private samples).

The per-client ledger is the Opacus accountant's history: DP-SGD steps (z, q, steps) and, when
feature statistics are on, one Gaussian release (z_f, 1.0, 1) per round. Composition is
order-free, so ε is computed from the history with equal entries merged, under both the RDP and
the PRV accountant. ``privacy.sample_target_epsilon`` calibrates z so that the whole planned run
(every round's DP-SGD steps plus every feature release) spends exactly that ε.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from securedream.errors import ConfigError
from securedream.models import has_batchnorm

if TYPE_CHECKING:
    from securedream.config import PrivacyConfig, RunConfig

# Opacus keeps its per-sample-gradient hooks registered while we run the same model for dreaming
# and distillation with the hooks disabled; PyTorch then warns on every backward pass.
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)


class SampleLevelDP:
    """DP-SGD state of one client: wrapped module, DP optimiser, accountant."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        *,
        batch_size: int,
        noise_multiplier: float,
        max_grad_norm: float,
        accountant: str,
        client_id: int,
        reproducible: bool = True,
    ) -> None:
        from opacus import PrivacyEngine
        from opacus.validators import ModuleValidator

        if has_batchnorm(model):
            raise ConfigError(
                "privacy.sample_level",
                f"client {client_id}'s model has BatchNorm; DP-SGD needs GroupNorm models "
                "such as cnn-gn",
            )
        problems = ModuleValidator.validate(model, strict=False)
        if problems:
            raise ConfigError(
                "privacy.sample_level",
                f"client {client_id}'s model is not Opacus-compatible: {problems[0]}",
            )
        self.n = int(train_y.shape[0])
        if self.n == 0:
            raise ConfigError("privacy.sample_level", f"client {client_id} has no samples")
        self.batch_size = batch_size
        # Opacus's DPDataLoader samples each point with probability 1 / (batches per epoch)
        self.sample_rate = 1.0 / math.ceil(self.n / batch_size)
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.reproducible = reproducible
        self.dataset = TensorDataset(train_x, train_y)
        base_loader = DataLoader(self.dataset, batch_size=batch_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # secure-RNG advice: the report states the RNG used
            self.engine = PrivacyEngine(accountant=accountant)
            self.module, self.optimizer, _ = self.engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=base_loader,
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
                poisson_sampling=True,
            )

    def train(self, epochs: int, generator: torch.Generator, device: torch.device) -> float:
        """``epochs`` × (n / batch) Poisson-sampled DP-SGD steps; returns the last epoch's loss."""
        from opacus.data_loader import DPDataLoader

        seeds = torch.randint(0, 2**62, (2,), generator=generator).tolist()
        sampling = torch.Generator().manual_seed(int(seeds[0]))
        noise_seed = int(seeds[1]) if self.reproducible else noise_seed_from_os()
        self.optimizer.generator = torch.Generator(device=device).manual_seed(noise_seed)
        loader = DPDataLoader.from_data_loader(
            DataLoader(self.dataset, batch_size=self.batch_size), generator=sampling
        )
        self.module.enable_hooks()
        self.module.train()
        last = 0.0
        for _ in range(epochs):
            total, count = 0.0, 0
            for x, y in loader:
                if len(y) == 0:
                    continue  # Poisson sampling can draw an empty batch
                x, y = x.to(device), y.to(device)
                self.optimizer.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(self.module(x), y)
                loss.backward()
                self.optimizer.step()
                total += float(loss.detach()) * len(y)
                count += len(y)
            last = total / max(count, 1)
        self.module.disable_hooks()
        return last

    def record_gaussian_release(self, noise_multiplier: float) -> None:
        """Add one full-data Gaussian release (a feature-statistics measurement) to the ledger."""
        self.engine.accountant.history.append((float(noise_multiplier), 1.0, 1))

    def epsilon(self, delta: float, accountant: str | None = None) -> float:
        """ε of everything released so far, under ``accountant`` (default: the engine's)."""
        return ledger_epsilon(
            self.history(), delta, accountant or self.engine.accountant.mechanism()
        )

    def history(self) -> list[tuple[float, float, int]]:
        return merge_history(self.engine.accountant.history)

    @property
    def steps(self) -> int:
        """DP-SGD steps taken (feature-statistics releases are counted separately)."""
        return int(
            sum(count for z, q, count in self.engine.accountant.history if (z, q) == self._sgd)
        )

    @property
    def feature_releases(self) -> int:
        return int(
            sum(count for z, q, count in self.engine.accountant.history if (z, q) != self._sgd)
        )

    @property
    def _sgd(self) -> tuple[float, float]:
        return (self.noise_multiplier, self.sample_rate)

    def state(self) -> list[list[float]]:
        return [[z, q, n] for z, q, n in self.engine.accountant.history]

    def load_state(self, history: list[list[Any]]) -> None:
        self.engine.accountant.history = [(float(z), float(q), int(n)) for z, q, n in history]


# ----------------------------------------------------------------------------------------------
# The ledger: planning, calibration, ε under both accountants


def noise_seed_from_os() -> int:
    """A noise-generator seed nobody can derive from the run seed (research runs use the seed)."""
    return int.from_bytes(os.urandom(8), "big") >> 1


def reproducible_noise(privacy: PrivacyConfig) -> bool:
    """Whether DP noise may come from the run seed (the explicit research switch
    ``privacy.reproducible_noise``; by default every noise seed comes from os.urandom)."""
    return bool(privacy.reproducible_noise)


def merge_history(history: Sequence[Sequence[Any]]) -> list[tuple[float, float, int]]:
    """Sum the steps of equal (z, q) entries; composition does not depend on order."""
    merged: dict[tuple[float, float], int] = {}
    for z, q, count in history:
        key = (float(z), float(q))
        merged[key] = merged.get(key, 0) + int(count)
    return [(z, q, n) for (z, q), n in merged.items()]


def ledger_epsilon(history: Sequence[Sequence[Any]], delta: float, accountant: str) -> float:
    """ε at ``delta`` of a (z, q, steps) history with Opacus's RDP or PRV accountant."""
    return _epsilon(tuple(sorted(merge_history(history))), delta, accountant)


@functools.lru_cache(maxsize=1024)
def _epsilon(merged: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    """Cached: PRV takes seconds, and every client of a run usually has the same ledger."""
    from opacus.accountants import create_accountant

    if not merged:
        return 0.0
    acc = create_accountant(mechanism=accountant)
    acc.history = list(merged)
    with warnings.catch_warnings(), _quiet_numpy():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


class _quiet_numpy:
    """PRV at sample rate 1 takes log(0) inside Opacus; the result is right, the warning noise."""

    def __enter__(self) -> None:
        import numpy as np

        self._saved = np.seterr(divide="ignore", invalid="ignore")

    def __exit__(self, *exc: object) -> None:
        import numpy as np

        np.seterr(**self._saved)


@dataclass(frozen=True)
class SamplePlan:
    """One client's planned releases for a whole run: what calibration composes."""

    samples: int
    batch_size: int
    sgd_steps: int
    feature_releases: int

    @property
    def sample_rate(self) -> float:
        return 1.0 / math.ceil(self.samples / self.batch_size)


def plan_for(cfg: RunConfig, samples: int) -> SamplePlan:
    """DP-SGD steps = (rounds·local_epochs + warmup)·⌈n/B⌉; one feature release per CoDream
    round."""
    epochs = cfg.rounds * cfg.clients.local_epochs + cfg.clients.warmup_epochs
    batches = math.ceil(samples / cfg.clients.batch_size)
    feature = cfg.rounds if (cfg.method == "codream" and cfg.privacy.feature_stats) else 0
    return SamplePlan(samples, cfg.clients.batch_size, epochs * batches, feature)


@functools.lru_cache(maxsize=256)
def calibrate_sgd_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    sgd_steps: int,
    feature_releases: int,
    feature_noise_multiplier: float,
    accountant: str,
    tolerance: float = 0.005,
) -> float:
    """The DP-SGD z for which the whole ledger spends ε ∈ [target − tolerance, target].

    Without feature releases this is Opacus's ``get_noise_multiplier`` (via
    ``accounting.noise_for_epsilon``); with them, the same bisection over the composed history
    [(z, q, steps), (z_f, 1, releases)].
    """
    if sgd_steps == 0:
        return 0.0
    if feature_releases == 0:
        from securedream.privacy.accounting import noise_for_epsilon

        return noise_for_epsilon(target_epsilon, delta, sgd_steps, accountant, sample_rate)
    fixed = [(feature_noise_multiplier, 1.0, feature_releases)]
    alone = ledger_epsilon(fixed, delta, accountant)
    if alone >= target_epsilon - tolerance:
        raise ConfigError(
            "privacy.feature_noise_multiplier",
            f"{feature_releases} feature-statistics releases at z = {feature_noise_multiplier} "
            f"alone spend ε = {alone:.3g} of privacy.sample_target_epsilon = {target_epsilon}; "
            "raise the noise multiplier or the target",
        )

    def eps(z: float) -> float:
        return ledger_epsilon([(z, sample_rate, sgd_steps), *fixed], delta, accountant)

    low, high = 0.0, 10.0
    while eps(high) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise ConfigError("privacy.sample_target_epsilon", "is too small to reach")
    while target_epsilon - eps(high) > tolerance:
        mid = (low + high) / 2
        if eps(mid) < target_epsilon:
            high = mid
        else:
            low = mid
    return high


def sgd_noise_for(cfg: RunConfig, samples: int) -> float:
    """The DP-SGD z of a client with ``samples`` examples: configured, or calibrated to the
    ε target."""
    p = cfg.privacy
    if p.sample_target_epsilon <= 0:
        return p.sample_noise_multiplier
    plan = plan_for(cfg, samples)
    return calibrate_sgd_noise(
        p.sample_target_epsilon,
        p.delta,
        plan.sample_rate,
        plan.sgd_steps,
        plan.feature_releases,
        p.feature_noise_multiplier,
        p.accountant,
    )


# ----------------------------------------------------------------------------------------------
# The privacy report's sample-level section

WHY_DREAMS_ARE_FREE = (
    "Dream exchange costs no further ε: every dream gradient, dream update and logit a client "
    "sends is computed from its model (an output of DP-SGD) and, with feature statistics on, its "
    "noisy feature statistics (accounted above), never from its samples directly; distillation "
    "trains on dreams and soft labels only (the local cross-entropy term is off). All of it is "
    "post-processing, however many dream steps, rounds of dreaming or distillation epochs run."
)


def report_section(cfg: RunConfig, clients: Sequence[Any]) -> dict[str, Any]:
    """privacy.json's ``sample_level`` entry: unit, parameters, per-client ledger and ε (RDP, PRV).

    ``clients`` are ModelTrainers with DP-SGD enabled (``.client_id``, ``.sample_dp``).
    """
    p = cfg.privacy
    per_client = []
    for c in clients:
        dp: SampleLevelDP = c.sample_dp
        history = dp.history()
        per_client.append(
            {
                "client": c.client_id,
                "samples": dp.n,
                "batch_size": dp.batch_size,
                "sample_rate": dp.sample_rate,
                "noise_multiplier": dp.noise_multiplier,
                "steps": dp.steps,
                "feature_releases": dp.feature_releases,
                "history": [list(h) for h in history],
                "epsilon": dp.epsilon(p.delta),
                "epsilon_rdp": ledger_epsilon(history, p.delta, "rdp"),
                "epsilon_prv": ledger_epsilon(history, p.delta, "prv"),
            }
        )
    feature_on = cfg.method == "codream" and p.feature_stats
    notes = [
        WHY_DREAMS_ARE_FREE,
        "models have no BatchNorm (DP-SGD needs per-sample gradients), so dreams get no "
        "BN-statistics term" + ("; the DP feature statistics replace it" if feature_on else ""),
        "distillation uses dreams only (no local cross-entropy term)",
        "the sample counts n are treated as public, as Opacus's sample rate 1/⌈n/B⌉ is",
        *(
            [
                f"public data ({cfg.public.dataset}: pre-training before DP-SGD"
                + (", dream initialisation" if cfg.public.dream_init else "")
                + ") is outside the ledger: it costs no ε only if it holds none of the private "
                "examples (see public_data)"
            ]
            if cfg.public.dataset != "none"
            else []
        ),
        (
            "DP noise comes from torch generators seeded from the run seed (research mode: NOT "
            "private against anyone who knows the seed)"
            if reproducible_noise(p)
            else "DP noise comes from torch generators seeded from os.urandom (a fresh seed per "
            "round, not derivable from the run seed)"
        ),
    ]
    return {
        "unit": "sample: one training example of one client (sample-level DP, per client)",
        "neighbouring_relation": "add or remove one example of one client's training data",
        "mechanism": "Opacus DP-SGD: per-sample clipping, Gaussian noise, Poisson sampling"
        + (
            "; plus one Gaussian release of clipped per-example feature statistics per round"
            if feature_on
            else ""
        ),
        "noise_multiplier": clients[0].sample_dp.noise_multiplier if clients else None,
        "target_epsilon": p.sample_target_epsilon or None,
        "max_grad_norm": p.sample_clip,
        "feature_stats": (
            {
                "clip": p.feature_clip,
                "noise_multiplier": p.feature_noise_multiplier,
                "releases_per_round": 1,
                "statistic": "per-channel mean and second moment of every GroupNorm input",
            }
            if feature_on
            else None
        ),
        "accountant": p.accountant,
        "delta": p.delta,
        "clients": per_client,
        "epsilon_max": max(e["epsilon"] for e in per_client),
        "epsilon_max_rdp": max(e["epsilon_rdp"] for e in per_client),
        "epsilon_max_prv": max(e["epsilon_prv"] for e in per_client),
        "dream_exchange_epsilon": 0.0,
        "notes": notes,
    }


def markdown_section(sample: dict[str, Any]) -> list[str]:
    """privacy.md lines for a ``report_section`` dict."""
    fs = sample.get("feature_stats")
    target = sample.get("target_epsilon")
    lines = [
        "## Sample-level DP (per client)",
        "",
        f"- unit: {sample['unit']}; neighbouring relation: {sample['neighbouring_relation']}",
        f"- mechanism: {sample['mechanism']}",
        f"- DP-SGD: z = {sample['noise_multiplier']:.4g}, max grad norm = "
        f"{sample['max_grad_norm']}"
        + (
            f", z calibrated so the whole run spends ε = {target} ({sample['accountant']})"
            if target
            else ""
        ),
    ]
    if fs is not None:
        lines.append(
            f"- feature statistics: {fs['statistic']}; per-example clip {fs['clip']}, "
            f"z = {fs['noise_multiplier']}, one release per round"
        )
    lines += [
        f"- δ = {sample['delta']}; ε for the whole run so far, per client, under both Opacus "
        "accountants:",
        "",
        "| client | samples | sample rate | DP-SGD steps | feature releases | ε (PRV) | ε (RDP) |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {c['client']} | {c['samples']} | {c['sample_rate']:.3g} | {c['steps']} | "
            f"{c['feature_releases']} | {c['epsilon_prv']:.4g} | {c['epsilon_rdp']:.4g} |"
            for c in sample["clients"]
        ],
        "",
        f"**Per-client ε = {sample['epsilon_max_prv']:.4g} (PRV) / {sample['epsilon_max_rdp']:.4g} "
        f"(RDP)** at δ = {sample['delta']}; dream exchange adds ε = 0.",
        "",
        *[f"- {note}" for note in sample["notes"]],
        "",
    ]
    return lines
