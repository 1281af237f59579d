"""Clipping a client's whole contribution to one release, the unit of client-level DP.

It is the first step of the client-side pipeline, so it lives in :mod:`securedream.contribution`;
DP code keeps importing it here.
"""

from securedream.contribution import clip_l2

__all__ = ["clip_l2"]
