"""Privacy audits of dream sharing: what a CoDream run still leaks, next to what theory promises.

``securedream audit`` (``attacks.cli``) runs them; see docs/audits.md. Modules: ``stats``
(Clopper–Pearson, ε lower bound), ``metrics`` (AUC, TPR at FPR, ...), ``canary`` (canary-client
audit of the release mechanism), ``membership`` (loss threshold and LiRA against client models and
the dream oracle), ``reconstruction`` (nearest neighbours, DeepInversion, label inference),
``controls``, ``report``. Imports the engine; the engine never imports this package.
"""
