"""Optional sample-level DP for local training: Opacus DP-SGD inside each client.

Client-level DP (the rest of this package) hides whether a *client* took part; DP-SGD hides whether
one *sample* was in a client's data, for everything derived from the client's model — including its
dream gradients and logits, which are post-processing of the DP-trained model. Opacus's
``PrivacyEngine`` wraps the model (per-sample gradients via hooks), the optimiser (per-sample
clipping to ``max_grad_norm``, Gaussian noise of std z·max_grad_norm) and the data loader (Poisson
sampling at rate batch_size / n), and its accountant counts the steps.

Requirements and consequences, checked by the config layer and stated in the privacy report:
models without BatchNorm and without in-place operations (BatchNorm mixes samples in a batch), so
the BN dream term is unavailable; distillation keeps its KL term on dreams but drops the local
cross-entropy term (which would otherwise be an un-noised use of the private samples).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from securedream.errors import ConfigError
from securedream.models import has_batchnorm

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
        self.optimizer.generator = torch.Generator(device=device).manual_seed(int(seeds[1]))
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

    def epsilon(self, delta: float) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(self.engine.accountant.get_epsilon(delta=delta))

    @property
    def steps(self) -> int:
        return int(sum(count for _, _, count in self.engine.accountant.history))

    def state(self) -> list[list[float]]:
        return [[z, q, n] for z, q, n in self.engine.accountant.history]

    def load_state(self, history: list[list[Any]]) -> None:
        self.engine.accountant.history = [(float(z), float(q), int(n)) for z, q, n in history]
