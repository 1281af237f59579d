"""Errors the engine raises for bad input; each names what was wrong and what is allowed."""

from __future__ import annotations


class SecureDreamError(Exception):
    """Base class for every error securedream raises on purpose."""


class ConfigError(SecureDreamError, ValueError):
    """A configuration value, CLI argument or config file is invalid."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


class RunFolderError(SecureDreamError, ValueError):
    """A run folder (for --resume) is missing, incomplete or inconsistent."""
