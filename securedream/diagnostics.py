"""Side channels: what a client discloses beyond the protected sums, and what a run folder records.

A run *protects* its clients when it claims that the server learns only sums or only DP releases:
secure aggregation on (``secure_aggregation.enabled``), client-level DP on
(``privacy.placement != "off"``), or DP-SGD local training on (``privacy.sample_level``). Those
guarantees cover the protected releases only: the masked and/or noised sums of dream gradients and
logits, and the DP-SGD model. Anything else a client sends is neither masked, noised nor counted:
its losses, its test accuracy, the raw norm of its contribution (the statistic of the dream-oracle
membership attack, which secure aggregation is meant to defeat), its dream-loss terms, its label
histogram and sample count. That would be a plain side channel next to the guarantee. So a
protecting run withholds all of it on both engines:

* Flower: the ClientApp replies with the protocol's own fields only (tests/test_side_channels.py
  holds the allow-list per message type); the node logs its own test accuracy locally.
* in-process: the server loop does not collect per-client terms or norms, and metrics.jsonl,
  summary.json and splits.json carry no per-client quantity. The harness still evaluates every
  client model, because it holds them, and records the mean and spread of their accuracy. That is
  the experimenter's evaluation of a simulation, not something a deployment's server could
  observe. The privacy report says so.

Sample-level DP alone counts too: DP-SGD bounds what the *trained model* reveals about one sample,
but a loss, an accuracy or a histogram computed on the private data and sent in the clear sits
outside that bound just the same.

Each channel comes back only through a config key whose name says what it leaks
(:class:`securedream.config.DiagnosticsConfig`). The opted-in keys go into summary.json and
privacy.json under ``opt_in_leaks``, and into privacy.json's ``not_protected`` list
(:func:`add_to_privacy_report`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from securedream.config import RunConfig

# round-record keys computed from one client's private state, in the clear
PER_CLIENT_METRICS = (
    "train_loss",
    "distill_loss",
    "client_accuracy",
    "dream_terms",
    "contribution_norms",
)
# splits.json keys with one client's data statistics
LABEL_HISTOGRAM_FIELDS = ("label_histograms", "sizes")

OPT_IN_LEAKS: dict[str, str] = {
    "diagnostics.leak_per_client_metrics": (
        "each client's training and distillation loss, test accuracy, raw (pre-clip) contribution "
        "norms and dream-loss terms reach the server in the clear every round and step, outside ε"
    ),
    "diagnostics.leak_label_histograms": (
        "each client's exact label histogram and sample count reach the server in the clear "
        "(splits.json), outside ε"
    ),
}


def is_protected(cfg: RunConfig) -> bool:
    """Whether the run claims the server learns only sums or DP releases (see module doc)."""
    return (
        cfg.secure_aggregation.enabled or cfg.privacy.placement != "off" or cfg.privacy.sample_level
    )


@dataclass(frozen=True)
class Disclosure:
    """Which plain per-client channels this run opens (all of them when it protects nothing)."""

    protected: bool
    per_client_metrics: bool
    label_histograms: bool

    @classmethod
    def of(cls, cfg: RunConfig) -> Disclosure:
        protected = is_protected(cfg)
        d = cfg.diagnostics
        return cls(
            protected=protected,
            per_client_metrics=not protected or d.leak_per_client_metrics,
            label_histograms=not protected or d.leak_label_histograms,
        )

    def round_record(self, report: Mapping[str, Any]) -> dict[str, Any]:
        """The round record without the per-client quantities this run withholds."""
        drop = () if self.per_client_metrics else PER_CLIENT_METRICS
        return {k: v for k, v in report.items() if k not in drop}

    def splits(self, splits: Mapping[str, Any]) -> dict[str, Any]:
        drop = () if self.label_histograms else LABEL_HISTOGRAM_FIELDS
        return {k: v for k, v in splits.items() if k not in drop}


def opt_in_leaks(cfg: RunConfig) -> list[str]:
    """The diagnostics keys this run turned on (none in a plain run: nothing to opt in)."""
    if not is_protected(cfg):
        return []
    return [key for key in OPT_IN_LEAKS if getattr(cfg.diagnostics, key.split(".", 1)[1])]


def not_protected_notes(cfg: RunConfig, engine: str) -> list[str]:
    """Sentences for the privacy report's ``not_protected`` list about side channels.

    ``engine`` is ``"inprocess"`` or ``"flower"``: only the in-process harness evaluates the
    clients' models itself.
    """
    notes = [
        "which clients take part in each release (the roster and the survivors per aggregation, "
        "recorded in metrics.jsonl), each client's model architecture name, and the timing and "
        "size of every message are visible to the server",
    ]
    notes += [f"opted in ({key}): {OPT_IN_LEAKS[key]}" for key in opt_in_leaks(cfg)]
    if engine == "inprocess" and not Disclosure.of(cfg).per_client_metrics:
        notes.append(
            "mean_accuracy and std_accuracy in metrics.jsonl and summary.json are the simulation "
            "harness's evaluation of every client model on the public test set; they are not DP "
            "and a deployment's server does not receive them"
        )
    if engine == "inprocess" and cfg.output.checkpoint:
        notes.append(
            "the run folder's checkpoint/ holds every client's model in clear (for --resume): it "
            "is the operator's and is not covered by ε"
        )
    return notes


def add_to_privacy_report(report: dict[str, Any], cfg: RunConfig, engine: str) -> None:
    """Record the opted-in leaks and the side-channel notes in a privacy.json dict (in place)."""
    report["opt_in_leaks"] = opt_in_leaks(cfg)
    notes = report.setdefault("not_protected", [])
    notes.extend(n for n in not_protected_notes(cfg, engine) if n not in notes)
