"""Everything a run writes, in one place, so a run folder is self-describing and resumable.

Layout::

    config.toml              resolved configuration (re-loadable with --config)
    metrics.jsonl            one JSON object per round (appended, fsynced)
    summary.json             final figures (written at the end)
    dreams/round_NNN.png     dream grid per round
    accuracy.png             accuracy per round
    checkpoint/state.pt      tensors only, loaded with weights_only=True
    checkpoint/meta.json     round counter, bookkeeping, metrics offset, resolved config
    checkpoint/manifest.json SHA-256 of state.pt and meta.json (written last)
    .lock                    held (flock) by the one process writing the folder

The checkpoint has one commit point. A new checkpoint is written whole into ``checkpoint.new/``
(every file fsynced, manifest last), then ``checkpoint/`` is renamed to ``checkpoint.old/`` and
``checkpoint.new/`` to ``checkpoint/``. A crash at any instant leaves at least one whole, verifiable
checkpoint folder: ``checkpoint/`` when it exists, otherwise ``checkpoint.new/`` (whole before the
first rename) or ``checkpoint.old/``. The checkpoint records how many bytes of metrics.jsonl it
vouches for (and their hash); rounds appended after it are cut off on resume, so the metrics, the
model state and the round counter always describe the same round.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import pickle
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from securedream.config import RunConfig, config_to_dict, config_to_toml, load_config
from securedream.errors import ConfigError, RunFolderError
from securedream.runs import atomic

CHECKPOINT = "checkpoint"
CHECKPOINT_NEW = "checkpoint.new"
CHECKPOINT_OLD = "checkpoint.old"
MANIFEST = "manifest.json"
CHECKPOINT_FILES = ("state.pt", "meta.json")
CHECKPOINT_FORMAT = 2


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_prefix(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        digest.update(fh.read(size))
    return digest.hexdigest()


def config_digest(config: Mapping[str, Any]) -> str:
    """SHA-256 of the resolved config in a canonical JSON form."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def changed_key(saved: Any, current: Any, prefix: str = "") -> str | None:
    """The first dotted key whose value differs between two config dicts, or None."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current)):
            name = f"{prefix}{key}"
            if key not in saved or key not in current:
                return name
            found = changed_key(saved[key], current[key], name + ".")
            if found is not None:
                return found
        return None
    return None if saved == current else prefix.rstrip(".")


def check_out_path(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an output folder that cannot be a folder we may write, before anything runs."""
    text = str(path)
    if not text.strip():
        raise ConfigError(flag, "must name a folder, got an empty string")
    if any(ch in text for ch in "\n\r\0"):
        raise ConfigError(flag, f"must not contain newlines or NUL characters, got {text!r}")
    out = Path(text)
    resolved = out.resolve()
    for system in ("/proc", "/sys", "/dev"):
        if resolved == Path(system) or Path(system) in resolved.parents:
            raise ConfigError(flag, f"{out} is under {system}; choose a folder on a real disk")
    if out.exists() and not out.is_dir():
        raise ConfigError(flag, f"{out} exists and is not a folder")
    probe = resolved
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(flag, f"cannot create {out}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(flag, f"cannot create {out}: {probe} is not writable")
    return out


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_fh: Any = None

    # --- lock ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the folder; a second run or resume of it is refused."""
        import fcntl

        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        fh = (self.path / ".lock").open("a")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunFolderError(
                    f"{self.path} is in use by another securedream process (lock "
                    f"{self.path / '.lock'}); wait for it to finish or stop it first"
                ) from None
            raise
        try:
            yield
        except BaseException:
            # a run refused before it wrote anything leaves no folder behind
            if created and [p.name for p in self.path.iterdir()] == [".lock"]:
                (self.path / ".lock").unlink()
                self.path.rmdir()
            raise
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()

    # --- config -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    def create(self, cfg: RunConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "dreams").mkdir(exist_ok=True)
        atomic.write_text(self.config_path, config_to_toml(cfg))
        atomic.write_text(self.metrics_path, "")
        atomic.fsync_dir(self.path.parent)

    def load_config(self) -> RunConfig:
        if not self.config_path.is_file():
            raise RunFolderError(f"--resume: {self.path} has no config.toml (not a run folder?)")
        try:
            return load_config(self.config_path)
        except ConfigError as exc:
            where = "" if exc.key == "--config" else f"{self.config_path}: "
            message = exc.problem if exc.key == "--config" else str(exc)
            raise RunFolderError(f"--resume: {where}{message}") from None

    # --- metrics ------------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def append_metrics(self, record: dict[str, Any]) -> int:
        """Append one round's record (fsynced); returns the file's new size."""
        return atomic.append_line(self.metrics_path, json.dumps(record, sort_keys=True))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        records = []
        for number, line in enumerate(self.metrics_path.read_text("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RunFolderError(
                    f"{self.metrics_path}:{number}: not valid JSON ({exc})"
                ) from exc
            if not isinstance(record, dict):
                raise RunFolderError(f"{self.metrics_path}:{number}: not a JSON object")
            records.append(record)
        return records

    def restore_metrics(self, meta: Mapping[str, Any]) -> None:
        """Cut metrics.jsonl back to what the checkpoint vouches for, once checked intact."""
        size = int(meta["metrics_bytes"])
        actual = self.metrics_path.stat().st_size if self.metrics_path.is_file() else -1
        if actual < size:
            raise RunFolderError(
                f"--resume: {self.metrics_path} holds {max(actual, 0)} bytes but the checkpoint "
                f"vouches for {size}; the metrics were truncated or replaced, cannot resume"
            )
        if _sha256_prefix(self.metrics_path, size) != meta["metrics_sha256"]:
            raise RunFolderError(
                f"--resume: the first {size} bytes of {self.metrics_path} differ from what the "
                "checkpoint recorded (edited?); cannot resume"
            )
        if actual > size:
            atomic.truncate(self.metrics_path, size)
        rounds = [r.get("round") for r in self.read_metrics()]
        if rounds != list(range(meta["rounds_done"])):
            raise RunFolderError(
                f"--resume: {self.metrics_path} has rounds {rounds}, the checkpoint "
                f"{meta['rounds_done']} rounds"
            )

    def reset_metrics(self) -> None:
        atomic.write_text(self.metrics_path, "")

    def write_json(self, name: str, data: dict[str, Any]) -> Path:
        path = self.path / name
        atomic.write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.path / name
        atomic.write_text(path, text)
        return path

    # --- checkpoints --------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        """The committed checkpoint folder (see the module docstring for the recovery rule)."""
        found = self._committed_checkpoint()
        return found if found is not None else self.path / CHECKPOINT

    def has_checkpoint(self) -> bool:
        return self._committed_checkpoint() is not None

    def _verified(self, folder: Path) -> bool:
        try:
            self._verify_manifest(folder)
        except RunFolderError:
            return False
        return True

    def _committed_checkpoint(self) -> Path | None:
        main = self.path / CHECKPOINT
        if main.is_dir():
            return main
        for name in (CHECKPOINT_NEW, CHECKPOINT_OLD):
            folder = self.path / name
            if folder.is_dir() and self._verified(folder):
                return folder
        return None

    def recover(self) -> None:
        """Finish or undo a checkpoint commit that a crash interrupted; drop leftovers."""
        found = self._committed_checkpoint()
        main = self.path / CHECKPOINT
        if found is not None and found != main:
            atomic.fault_point("rename recovered checkpoint")
            os.replace(found, main)
            atomic.fsync_dir(self.path)
        for name in (CHECKPOINT_NEW, CHECKPOINT_OLD):
            if (self.path / name).exists():
                atomic.fault_point(f"remove {name}")
                shutil.rmtree(self.path / name)

    def save_checkpoint(self, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
        """Write a whole new checkpoint and commit it in place of the old one (see module doc)."""
        self.recover()
        config = config_to_dict(load_config(self.config_path))
        size = self.metrics_path.stat().st_size
        meta = {
            **meta,
            "format": CHECKPOINT_FORMAT,
            "metrics_bytes": size,
            "metrics_sha256": _sha256_prefix(self.metrics_path, size),
            "config": config,
            "config_sha256": config_digest(config),
        }
        new = self.path / CHECKPOINT_NEW
        atomic.fault_point("mkdir checkpoint.new")
        new.mkdir()
        atomic.write_with(new / "state.pt", lambda fh: torch.save(tensors, fh))
        atomic.write_text(new / "meta.json", json.dumps(meta, sort_keys=True))
        manifest = {
            "format": CHECKPOINT_FORMAT,
            "sha256": {name: _sha256_file(new / name) for name in CHECKPOINT_FILES},
        }
        atomic.write_text(new / MANIFEST, json.dumps(manifest, sort_keys=True))
        atomic.fsync_dir(new)
        main = self.path / CHECKPOINT
        if main.exists():
            atomic.fault_point("rename checkpoint -> checkpoint.old")
            os.replace(main, self.path / CHECKPOINT_OLD)
        atomic.fault_point("rename checkpoint.new -> checkpoint")
        os.replace(new, main)
        atomic.fsync_dir(self.path)
        if (self.path / CHECKPOINT_OLD).exists():
            atomic.fault_point("remove checkpoint.old")
            shutil.rmtree(self.path / CHECKPOINT_OLD)

    def _verify_manifest(self, folder: Path) -> None:
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise RunFolderError(
                f"--resume: {folder} has no {MANIFEST} (incomplete, or written by an older "
                "securedream)"
            )
        try:
            manifest = json.loads(manifest_path.read_text("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunFolderError(f"--resume: {manifest_path} is not valid JSON ({exc})") from None
        hashes = manifest.get("sha256") if isinstance(manifest, dict) else None
        if not isinstance(hashes, dict) or set(hashes) != set(CHECKPOINT_FILES):
            raise RunFolderError(
                f"--resume: {manifest_path} must map exactly {list(CHECKPOINT_FILES)} to SHA-256"
            )
        for name in CHECKPOINT_FILES:
            path = folder / name
            if not path.is_file():
                raise RunFolderError(f"--resume: {path} is missing")
            if _sha256_file(path) != hashes[name]:
                raise RunFolderError(
                    f"--resume: {path} does not match its SHA-256 in {MANIFEST} (corrupted or "
                    "edited); cannot resume from it"
                )

    def load_checkpoint(
        self, expected_engine: str | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Verified tensors and meta of the committed checkpoint.

        ``expected_engine``: refuse a checkpoint another engine wrote (checked first, so that the
        message says why even when the files were also edited).
        """
        folder = self._committed_checkpoint()
        if folder is None:
            raise RunFolderError(f"--resume: {self.path / CHECKPOINT} has no complete checkpoint")
        meta_path = folder / "meta.json"
        state_path = folder / "state.pt"
        try:
            meta = json.loads(meta_path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunFolderError(f"--resume: cannot read {meta_path}: {exc}") from None
        if not isinstance(meta, dict):
            raise RunFolderError(f"--resume: {meta_path} must hold a JSON object")
        engine = meta.get("engine", "inprocess")
        if expected_engine is not None and engine != expected_engine:
            raise RunFolderError(
                f"--resume: {self.path} was written by the {engine} engine; only "
                f"{expected_engine} runs can be resumed"
            )
        self._verify_manifest(folder)
        validate_meta(meta, meta_path)
        try:
            # weights_only: a checkpoint is data, never code.
            tensors = torch.load(state_path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
                reason = "it holds objects other than tensors and plain containers"
            raise RunFolderError(
                f"--resume: {state_path} cannot be loaded as tensors only ({reason}); a checkpoint "
                "must be data, never code, so it is refused"
            ) from None
        if not isinstance(tensors, dict):
            raise RunFolderError(f"--resume: {state_path} must hold a dict of tensors")
        return tensors, meta


def validate_meta(meta: Mapping[str, Any], where: Path) -> None:
    """Types and ranges of every meta.json field the engine relies on."""

    def bad(key: str, allowed: str) -> RunFolderError:
        return RunFolderError(f"--resume: {where}: {key} must be {allowed}, got {meta.get(key)!r}")

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    config = meta.get("config")
    if not isinstance(config, dict):
        raise bad("config", "the resolved config (a JSON object)")
    if meta.get("config_sha256") != config_digest(config):
        raise bad("config_sha256", "the SHA-256 of 'config'")
    rounds = config.get("rounds")
    if not is_int(rounds) or rounds < 1:
        raise RunFolderError(f"--resume: {where}: config.rounds must be an integer >= 1")
    if not is_int(meta.get("rounds_done")) or not 0 <= meta["rounds_done"] <= rounds:
        raise bad("rounds_done", f"an integer in [0, {rounds}]")
    seconds = meta.get("seconds", 0.0)
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not (math.isfinite(seconds) and seconds >= 0)
    ):
        raise bad("seconds", "a finite number >= 0")
    if not is_int(meta.get("metrics_bytes")) or meta["metrics_bytes"] < 0:
        raise bad("metrics_bytes", "an integer >= 0")
    digest = meta.get("metrics_sha256")
    if not isinstance(digest, str) or len(digest) != 64:
        raise bad("metrics_sha256", "a SHA-256 hex digest")
    if meta.get("privacy") is not None and not isinstance(meta["privacy"], dict):
        raise bad("privacy", "null or a JSON object")
    if not isinstance(meta.get("sample_level", []), list):
        raise bad("sample_level", "a list")


def check_same_config(meta: Mapping[str, Any], cfg: RunConfig, folder: Path) -> None:
    """Refuse to continue a checkpoint under a config other than the one that wrote it."""
    current = config_to_dict(cfg)
    if config_digest(current) == meta["config_sha256"]:
        return
    key = changed_key(meta["config"], current) or "(config)"
    saved = meta["config"]
    for part in key.split("."):
        saved = saved.get(part) if isinstance(saved, dict) else None
    raise RunFolderError(
        f"--resume: {key} in {folder / 'config.toml'} is {_lookup(current, key)!r} but the "
        f"checkpoint was written with {saved!r}; a run continues only under the config it started "
        "with (start a new run with --out for other settings)"
    )


def _lookup(config: Mapping[str, Any], key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
