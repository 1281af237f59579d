"""Population-scale CoDream: many clients in one process, Poisson client sampling, and the
per-adversary accounting that sampling needs (see docs/scale.md)."""
