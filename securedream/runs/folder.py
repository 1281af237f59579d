"""Everything a run writes, in one place, so a run folder is self-describing and resumable.

Layout::

    config.toml          resolved configuration (re-loadable with --config)
    metrics.jsonl        one JSON object per round
    summary.json         final figures (written at the end)
    dreams/round_NNN.png dream grid per round
    accuracy.png         accuracy per round
    checkpoint/state.pt  tensors only, loaded with weights_only=True
    checkpoint/meta.json round counter and bookkeeping
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from securedream.config import RunConfig, config_to_toml, load_config
from securedream.errors import RunFolderError


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file then rename: an interrupted write never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # --- config -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    def create(self, cfg: RunConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "dreams").mkdir(exist_ok=True)
        _atomic_write_bytes(self.config_path, config_to_toml(cfg).encode())
        self.metrics_path.write_text("")

    def load_config(self) -> RunConfig:
        if not self.config_path.is_file():
            raise RunFolderError(f"--resume: {self.path} has no config.toml (not a run folder?)")
        return load_config(self.config_path)

    # --- metrics ------------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        records = []
        for number, line in enumerate(self.metrics_path.read_text("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise RunFolderError(
                    f"{self.metrics_path}:{number}: not valid JSON ({exc})"
                ) from exc
        return records

    def truncate_metrics(self, rounds_done: int) -> None:
        """Drop metrics of rounds after the checkpoint (written before an interruption)."""
        kept = [r for r in self.read_metrics() if r.get("round", 0) < rounds_done]
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
        _atomic_write_bytes(self.metrics_path, text.encode())

    def write_json(self, name: str, data: dict[str, Any]) -> Path:
        path = self.path / name
        _atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
        return path

    # --- checkpoints --------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoint"

    def save_checkpoint(self, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
        self.checkpoint_dir.mkdir(exist_ok=True)
        tmp = self.checkpoint_dir / "state.pt.tmp"
        torch.save(tensors, tmp)
        os.replace(tmp, self.checkpoint_dir / "state.pt")
        _atomic_write_bytes(
            self.checkpoint_dir / "meta.json", json.dumps(meta, sort_keys=True).encode()
        )

    def load_checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]]:
        state_path = self.checkpoint_dir / "state.pt"
        meta_path = self.checkpoint_dir / "meta.json"
        if not state_path.is_file() or not meta_path.is_file():
            raise RunFolderError(f"--resume: {self.checkpoint_dir} has no complete checkpoint")
        try:
            meta = json.loads(meta_path.read_text("utf-8"))
            # weights_only: a checkpoint is data, never code.
            tensors = torch.load(state_path, map_location="cpu", weights_only=True)
        except (OSError, json.JSONDecodeError, RuntimeError, ValueError) as exc:
            raise RunFolderError(
                f"--resume: cannot read checkpoint in {self.checkpoint_dir}: {exc}"
            ) from exc
        if not isinstance(meta, dict) or not isinstance(meta.get("rounds_done"), int):
            raise RunFolderError(f"--resume: {meta_path} lacks an integer 'rounds_done'")
        return tensors, meta
