"""GPU efficiency options and the no-host-sync rule of a dream step.

* A dream step must not synchronise with the device: no ``.item()``, ``float(t)``, ``bool(t)``,
  ``.tolist()``, ``.cpu()`` or ``.numpy()`` in securedream code while clients compute and the
  server steps the dreams. On a GPU each one drains the kernel queue the step has launched. The
  test counts such calls made from securedream's own files (not torch's: its optimisers read
  their step counters, which live on the host, and do not touch the device) by wrapping the
  tensor methods. The one sync a step keeps is the aggregator's finiteness gate: a non-finite
  contribution must be refused before the dreams move.
* ``[compute]``: bf16 autocast runs on CPU and stays close to float32; channels_last gives the
  float32 results; bad values are ConfigErrors naming the key.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import securedream
from securedream.aggregation import PlainAggregator
from securedream.comm import CommLedger
from securedream.compute import ComputeSettings
from securedream.config import resolve_config
from securedream.dreams import DreamLossWeights
from securedream.errors import ConfigError
from securedream.models import build_model
from securedream.rounds.client import CoDreamClient, LocalTrainingConfig
from securedream.rounds.server import DreamingSettings, collaborative_dreaming

PACKAGE = str(Path(securedream.__file__).resolve().parent)
SYNCING = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")
WEIGHTS = DreamLossWeights(bn=0.1, diversity=1.0)
TRAINING = LocalTrainingConfig(lr=0.01, momentum=0.9, weight_decay=0.0, batch_size=8)


@contextmanager
def host_syncs() -> Iterator[list[tuple[str, str, int]]]:
    """Record (method, file, line) of every syncing tensor call made from securedream code."""
    calls: list[tuple[str, str, int]] = []
    saved = {}
    for name in SYNCING:
        original = getattr(torch.Tensor, name)
        saved[name] = (name in torch.Tensor.__dict__, original)

        def wrapper(self, *args, _original=original, _name=name, **kwargs):  # type: ignore[no-untyped-def]
            frame = sys._getframe(1)
            if frame.f_code.co_filename.startswith(PACKAGE):
                calls.append((_name, Path(frame.f_code.co_filename).name, frame.f_lineno))
            return _original(self, *args, **kwargs)

        setattr(torch.Tensor, name, wrapper)
    try:
        yield calls
    finally:
        for name, (own, original) in saved.items():
            if own:
                setattr(torch.Tensor, name, original)
            else:
                delattr(torch.Tensor, name)


def _client(k: int, compute: ComputeSettings | None = None) -> CoDreamClient:
    model = build_model("cnn-bn", in_channels=1, num_classes=10, image_size=8, seed=k)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(k))
    y = torch.arange(16) % 10
    compute = compute or ComputeSettings()
    return CoDreamClient(k, model, x, y, TRAINING, torch.device("cpu"), compute=compute)


def _dreams(batch: int = 6) -> torch.Tensor:
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(7))


def test_sync_counter_sees_a_sync() -> None:
    with host_syncs() as calls:
        float(torch.ones(()))  # from the test file: not counted, only securedream's own code
    assert calls == []
    from securedream.privacy.clipping import clip_l2  # float(norm) inside the package

    with host_syncs() as calls:
        clip_l2(torch.ones(4), 1.0)
    assert calls, "the counter must see a float() made by securedream code"


def test_client_dream_step_does_not_sync() -> None:
    client = _client(0)
    dreams = _dreams()
    with host_syncs() as calls:
        client.dream_gradient(dreams, WEIGHTS)
        client.dream_delta(dreams, WEIGHTS, 3, 0.05)
        client.dream_logits(dreams)
    assert calls == []


@pytest.mark.parametrize("diagnostics", [True, False])
@pytest.mark.parametrize("local_steps", [1, 2])
def test_server_loop_syncs_only_at_the_finiteness_gate(diagnostics: bool, local_steps: int) -> None:
    clients = [_client(k) for k in range(3)]
    settings = DreamingSettings(steps=4, lr=0.05, weights=WEIGHTS, local_steps=local_steps)
    marks: list[int] = []
    with host_syncs() as calls:
        outcome = collaborative_dreaming(
            _dreams(),
            clients,
            PlainAggregator(),
            settings,
            public_count=3,
            ledger=CommLedger(range(3)),
            on_step=lambda _s: marks.append(len(calls)),
            per_client_diagnostics=diagnostics,
        )
    in_loop = calls[: marks[-1]]
    gates = [c for c in in_loop if c[1] == "base.py"]
    assert len(gates) == outcome.aggregations + len(outcome.snapshots)  # one per aggregation
    assert [c for c in in_loop if c[1] != "base.py"] == []
    if diagnostics:  # read once, after the loop
        assert set(outcome.final_terms) >= {"entropy", "bn", "total"}
        assert all(isinstance(v, float) for v in outcome.final_terms.values())
        assert all(isinstance(v, float) for v in outcome.contribution_norms.values())


def test_bf16_autocast_runs_on_cpu_and_stays_close() -> None:
    dreams = _dreams()
    full = _client(0)
    half = _client(0, ComputeSettings(autocast="bf16"))
    g_full, t_full = full.dream_gradient(dreams, WEIGHTS)
    g_half, t_half = half.dream_gradient(dreams, WEIGHTS)
    assert g_half.dtype == torch.float32 and g_half.shape == g_full.shape
    cosine = torch.nn.functional.cosine_similarity(g_full.flatten(), g_half.flatten(), dim=0)
    assert cosine > 0.95
    assert t_half["total"] == pytest.approx(t_full["total"], rel=0.05)
    logits = half.dream_logits(dreams)
    assert logits.dtype == torch.float32  # what leaves a client is float32
    assert half.train_local(1, torch.Generator().manual_seed(0)) > 0


def test_channels_last_gives_the_float32_results() -> None:
    dreams = _dreams()
    plain = _client(0)
    nhwc = _client(0, ComputeSettings(channels_last=True))
    g_plain, _ = plain.dream_gradient(dreams, WEIGHTS)
    g_nhwc, _ = nhwc.dream_gradient(dreams, WEIGHTS)
    assert g_nhwc.is_contiguous()
    assert torch.allclose(g_plain, g_nhwc, atol=1e-5, rtol=1e-4)
    assert torch.allclose(plain.dream_logits(dreams), nhwc.dream_logits(dreams), atol=1e-4)


def test_stacked_population_under_bf16() -> None:
    """GroupNorm models: torch's autocast does not cast BatchNorm under vmap (a ConfigError)."""
    from securedream.population.stacked import StackedGroup

    models = [
        build_model("cnn-gn", in_channels=1, num_classes=10, image_size=8, seed=k) for k in range(3)
    ]
    rows = torch.arange(3)
    dreams = _dreams()
    weights = DreamLossWeights(bn=0.0, diversity=1.0)
    full, _ = StackedGroup(models, torch.device("cpu")).dream_gradients(rows, dreams, weights)
    half_group = StackedGroup(models, torch.device("cpu"), compute=ComputeSettings("bf16"))
    half, _ = half_group.dream_gradients(rows, dreams, weights)
    assert half.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(full.flatten(), half.flatten(), dim=0)
    assert cosine > 0.95
    assert half_group.logits(rows, dreams).dtype == torch.float32


def test_compute_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"compute\.autocast"):
        resolve_config(preset="smoke", overrides=['compute.autocast="fp16"'])
    with pytest.raises(ConfigError, match=r"compute\.channels_last"):
        resolve_config(
            preset="smoke", overrides=["compute.channels_last=true", "clients.population=true"]
        )
    with pytest.raises(ConfigError, match=r"compute\.autocast.*BatchNorm"):
        resolve_config(
            preset="smoke", overrides=['compute.autocast="bf16"', "clients.population=true"]
        )
    cfg = resolve_config(preset="smoke", overrides=['compute.autocast="bf16"'])
    assert ComputeSettings.from_config(cfg) == ComputeSettings("bf16", False)
    with pytest.raises(ConfigError, match=r"compute\.autocast"):
        ComputeSettings("fp8")
