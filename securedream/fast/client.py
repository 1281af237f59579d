"""A client's side of CoDream-fast: local steps on (generator, latents) against its own model.

The client holds a private copy of the broadcast generator and latents, takes Adam steps that
lower *its own* dream loss L_k(G(z)) (the same loss as plain CoDream, now a function of the
generator weights and latents instead of the pixels), and returns only the change
(ΔG, Δz) as one flat vector, which goes into the aggregator. Its model is in eval mode and
receives no gradient: the BatchNorm running statistics stay the targets of the BN term.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from securedream.comm import tensor_bytes
from securedream.dreams import DreamLossWeights, dream_loss
from securedream.fast.generator import DreamGenerator, load_flat
from securedream.rounds.client import CoDreamClient

# Adam's first-moment decay for (G, z), as in data-free generator training (DCGAN, FastDFKD): a
# short memory suits an objective that the other clients move between aggregations.
ADAM_BETAS = (0.5, 0.999)


@dataclass(frozen=True)
class GeneratorBroadcast:
    """What the server sends each client: the generator's parameters and the latents."""

    parameters: torch.Tensor  # flat, float32
    latents: torch.Tensor  # [B, latent_dim]

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.parameters) + tensor_bytes(self.latents)


@dataclass(frozen=True)
class LocalSteps:
    steps: int
    lr_generator: float
    lr_latent: float
    weights: DreamLossWeights


class GeneratorWorker:
    """Wraps one CoDream client with its own copy of the generator."""

    def __init__(self, client: CoDreamClient, template: DreamGenerator) -> None:
        self.client = client
        self.client_id = client.client_id
        self.generator = copy.deepcopy(template).to(client.device)

    def _load(self, broadcast: GeneratorBroadcast) -> torch.Tensor:
        load_flat(self.generator, broadcast.parameters.to(self.client.device))
        self.generator.train()  # batch statistics; the generator keeps no running ones
        self.client.model.eval()
        return broadcast.latents.detach().to(self.client.device).clone()

    def dreams(self, broadcast: GeneratorBroadcast) -> torch.Tensor:
        """G(z) computed by the client from what it received (no image is ever sent)."""
        z = self._load(broadcast)
        with torch.no_grad():
            return self.generator(z)

    def local_delta(
        self, broadcast: GeneratorBroadcast, settings: LocalSteps
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``settings.steps`` Adam steps on (G, z); returns cat(ΔG, Δz) and the last loss terms."""
        z = self._load(broadcast).requires_grad_(True)
        params = list(self.generator.parameters())
        optimizer = torch.optim.Adam(
            [
                {"params": params, "lr": settings.lr_generator},
                {"params": [z], "lr": settings.lr_latent},
            ],
            betas=ADAM_BETAS,
        )
        terms: dict[str, float] = {}
        for _ in range(settings.steps):
            loss, terms, _ = dream_loss(
                self.client.model,
                self.generator(z),
                settings.weights,
                use_bn=self.client.use_bn_term,
                feature_targets=self.client.feature_targets,
            )
            # gradients to (G, z) only: the client's model is never touched by dreaming
            grads = torch.autograd.grad(loss, [*params, z])
            for tensor, grad in zip([*params, z], grads, strict=True):
                tensor.grad = grad
            optimizer.step()
        start = broadcast.parameters.to(self.client.device)
        delta_g = torch.nn.utils.parameters_to_vector(params).detach() - start
        delta_z = z.detach() - broadcast.latents.to(self.client.device)
        return torch.cat([delta_g, delta_z.reshape(-1)]), terms

    @torch.no_grad()
    def dream_logits(self, broadcast: GeneratorBroadcast) -> torch.Tensor:
        return self.client.dream_logits(self.dreams(broadcast))
