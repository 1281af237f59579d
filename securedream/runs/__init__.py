"""The run folder: resolved config, metrics, summary, plots and checkpoints of one run."""

from securedream.runs.folder import RunFolder

__all__ = ["RunFolder"]
