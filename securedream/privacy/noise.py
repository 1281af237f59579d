"""DP noise samplers: the keyed stream of :mod:`securedream.randomness`, under its DP name.

The stream lives in a neutral module so that secure aggregation's rounding (``aggregation``,
``contribution``) draws from it without importing ``privacy``; DP code keeps importing it here.
"""

from securedream.randomness import MAX_POISSON_MEAN, NoiseSource, poisson_log_pmf

__all__ = ["MAX_POISSON_MEAN", "NoiseSource", "poisson_log_pmf"]
