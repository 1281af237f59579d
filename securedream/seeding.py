"""Deterministic randomness derived from (seed, purpose, round, client).

Every random draw in a run comes from a generator derived from the run seed and labels naming its
purpose. Nothing depends on global RNG state, so a resumed run draws exactly what an
uninterrupted run would have drawn without checkpointing any RNG state. (Secrets for cryptography
never come from here: protocols/ uses os.urandom.)
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(seed: int, *labels: object) -> int:
    """A 63-bit seed that depends on ``seed`` and every label (order matters)."""
    text = "/".join([str(seed), *map(str, labels)]).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


def torch_generator(seed: int, *labels: object) -> torch.Generator:
    """A CPU generator; draw on CPU then move, so results match across devices."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(derive_seed(seed, *labels))
    return gen


def numpy_generator(seed: int, *labels: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *labels))
