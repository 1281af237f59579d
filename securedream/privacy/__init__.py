"""Client-level differential privacy for CoDream releases: clipping, noise, accounting, report.

Import the parts directly (``securedream.privacy.engine.RunPrivacy`` is the façade); this package
module imports nothing so the aggregation layer can use the noise sampler without a cycle.
"""
