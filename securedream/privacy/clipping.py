"""Clipping a client's whole contribution to one release, the unit of client-level DP."""

from __future__ import annotations

import torch


def clip_l2(contribution: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale ``contribution`` down so its L2 norm over *all* entries is at most ``max_norm``.

    Opacus-style: factor = min(1, C / (‖x‖ + 1e-6)), so the norm of the result never exceeds C.
    """
    if max_norm <= 0:
        raise ValueError(f"clip norm must be > 0, got {max_norm}")
    norm = torch.linalg.vector_norm(contribution.to(torch.float64))
    factor = min(1.0, max_norm / (float(norm) + 1e-6))
    return contribution * factor if factor < 1.0 else contribution.clone()
