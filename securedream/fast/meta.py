"""The server's meta-generator: the initialisation each round's collaborative generator starts from.

After a round's aggregations have moved the generator from θ_meta to θ_round, a Reptile step
θ_meta ← θ_meta + β·(θ_round − θ_meta) (β = ``fast.meta_lr``) keeps an initialisation from
which a few collaborative steps reach good dreams for the clients' *current* models, so every
round needs few aggregations. β = 1 is a plain warm start from the last round's generator.
The latents are drawn fresh each round (seeded), so every round dreams new samples.
"""

from __future__ import annotations

import copy

import torch

from securedream.fast.generator import (
    DreamGenerator,
    build_generator,
    flat_parameters,
    load_flat,
    parameter_count,
)
from securedream.seeding import derive_seed


class MetaGenerator:
    """θ_meta and the architecture it belongs to; checkpointed with the run."""

    def __init__(
        self, *, latent_dim: int, width: int, channels: int, image_size: int, seed: int
    ) -> None:
        self.template: DreamGenerator = build_generator(
            latent_dim, width, channels, image_size, derive_seed(seed, "generator")
        )
        self.latent_dim = latent_dim
        self.parameters = flat_parameters(self.template)
        self._server_copy = copy.deepcopy(self.template)  # the server's own G, for its dreams

    @property
    def size(self) -> int:
        return parameter_count(self.template)

    def reptile_step(self, round_parameters: torch.Tensor, meta_lr: float) -> None:
        moved = round_parameters.detach().to(self.parameters)
        self.parameters = self.parameters + meta_lr * (moved - self.parameters)

    @torch.no_grad()
    def dreams(self, parameters: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """G_θ(z) on the server, computed as every client computes it (batch statistics)."""
        self._server_copy.to(latents.device).train()
        load_flat(self._server_copy, parameters)
        return self._server_copy(latents).detach().clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"parameters": self.parameters.cpu().clone()}

    def state_problem(self, state: object) -> str | None:
        """What is wrong with a checkpointed state for this generator, or None."""
        if not isinstance(state, dict) or not isinstance(state.get("parameters"), torch.Tensor):
            return "'fast' must be a dict holding a 'parameters' tensor"
        shape = tuple(state["parameters"].shape)
        if shape != (self.size,):
            return f"'fast.parameters' has shape {shape}, expected ({self.size},)"
        return None

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.parameters = state["parameters"].to(torch.float32).clone()
