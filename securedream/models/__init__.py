"""Client and server model architectures, built by name."""

from securedream.models.registry import (
    ModelError,
    available_models,
    batchnorm_layers,
    build_model,
    has_batchnorm,
)

__all__ = ["ModelError", "available_models", "batchnorm_layers", "build_model", "has_batchnorm"]
