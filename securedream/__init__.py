"""securedream: private, measurable CoDream federated learning.

Layers (imports point one way): ``protocols`` (secure aggregation, no torch) ← ``securedream``
(the CoDream engine) ← ``attacks`` (audits).
"""

__version__ = "0.1.0"
