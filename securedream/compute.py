"""How models run: mixed precision (bf16 autocast) and memory format (channels_last).

Why one home: the dream step, local training and distillation (per-client models in
:mod:`securedream.rounds.client` and the stacked population in :mod:`securedream.population`) all
run the same models, and a speed option must apply to all of them the same way or figures from
one stage say nothing about another. Both options are opt-in (config section ``[compute]``):

* ``autocast = "bf16"`` runs forward passes under ``torch.autocast`` with bfloat16 (matrix
  multiplications and convolutions in bf16, reductions kept in float32 by autocast's op lists).
  Parameters, optimiser state, dreams and everything a client sends stay float32: a dream gradient
  is the gradient with respect to float32 dreams and logits are cast back to float32 before they
  leave the client. On CUDA it needs a card with bf16 support (``torch.cuda.is_bf16_supported``);
  on CPU it runs wherever torch has bf16 CPU kernels (it is slower than float32 on CPUs without
  native bf16 instructions -- a correctness option there, a speed option on GPUs).
* ``channels_last = true`` stores 4-D conv weights and inputs as NHWC, which cuDNN's tensor-core
  kernels prefer; on CPU it rarely helps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from securedream.errors import ConfigError

AUTOCAST_CHOICES = ("off", "bf16")


@dataclass(frozen=True)
class ComputeSettings:
    """The ``[compute]`` options one model runs with (defaults: float32, NCHW)."""

    autocast: str = "off"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.autocast not in AUTOCAST_CHOICES:
            raise ConfigError(
                "compute.autocast",
                f"must be one of {list(AUTOCAST_CHOICES)}, got {self.autocast!r}",
            )

    @classmethod
    def from_config(cls, cfg: object) -> ComputeSettings:
        """The settings of a :class:`securedream.config.RunConfig` (its ``compute`` section)."""
        section = cfg.compute  # type: ignore[attr-defined]
        return cls(autocast=section.autocast, channels_last=section.channels_last)

    def check_device(self, device: torch.device) -> None:
        """Refuse, with the key named, an option the device cannot run."""
        if self.autocast != "bf16":
            return
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                "compute.autocast",
                f"bf16 needs a GPU with bfloat16 support; {torch.cuda.get_device_name(device)} "
                'has none (use "off")',
            )
        if device.type not in ("cuda", "cpu"):
            raise ConfigError(
                "compute.autocast", f"bf16 is supported on cpu and cuda, not {device}"
            )

    @contextlib.contextmanager
    def autocast_context(self, device: torch.device) -> Iterator[None]:
        """The forward-pass context: bf16 autocast when asked for, else nothing."""
        if self.autocast == "bf16":
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                yield
        else:
            yield

    def model(self, module: nn.Module) -> nn.Module:
        """The model in the configured memory format (in place, returned for chaining)."""
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        return module

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Image batches (4-D) in the configured memory format; anything else unchanged."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


DEFAULT = ComputeSettings()
