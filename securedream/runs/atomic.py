"""Crash-safe file writes: a reader sees the old file or the new one, never half of either.

Every write goes to a temporary file in the same folder, is flushed and fsynced, then renamed over
the target (``os.replace`` is atomic on POSIX), and the folder is fsynced so the rename itself
survives a power cut. Report files, JSON, PNGs and the checkpoint all go through here, so there is
one place to reason about durability.

Fault injection: with ``SECUREDREAM_FAULT_AT=k`` in the environment the process ``os._exit``\\s
(status :data:`FAULT_EXIT`) just before its k-th file operation (counting from 1), with nothing
flushed or cleaned up, exactly like a SIGKILL at that instant. ``SECUREDREAM_FAULT_LOG=PATH``
appends one line per operation (its number and label) so a test can list the instants there are.
The tests use it to kill a run between any two file operations of a checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

FAULT_ENV = "SECUREDREAM_FAULT_AT"
FAULT_LOG_ENV = "SECUREDREAM_FAULT_LOG"
FAULT_MODE_ENV = "SECUREDREAM_FAULT_MODE"
FAULT_EXIT = 86

_operations = 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; a committed file gets the mode a plain open() would have given it
_FILE_MODE = 0o666 & ~_umask()


class SimulatedCrash(BaseException):
    """Raised instead of ``os._exit`` when ``SECUREDREAM_FAULT_MODE=raise`` (in-process tests).

    Nothing on the way up cleans files for it, so the disk is left as a kill at that instant
    leaves it; a BaseException so that no ``except Exception`` in between swallows it.
    """


def reset_fault_counter() -> None:
    """Start counting file operations from zero (for in-process fault-injection tests)."""
    global _operations
    _operations = 0


def fault_point(label: str) -> None:
    """Count one file operation; die here if the fault-injection variable says so."""
    global _operations
    _operations += 1
    log = os.environ.get(FAULT_LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{_operations} {label}\n")
    target = os.environ.get(FAULT_ENV)
    if target and target.isdigit() and int(target) == _operations:
        if os.environ.get(FAULT_MODE_ENV) == "raise":
            raise SimulatedCrash(f"fault injected before file operation {_operations}: {label}")
        os._exit(FAULT_EXIT)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; commit it on success.

    For writers that want a file name (matplotlib, torchvision, torch.save). On an exception the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, _FILE_MODE)
    try:
        fault_point(f"write {path.name}")
        yield tmp
        fault_point(f"fsync {path.name}")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        fault_point(f"rename {path.name}")
        os.replace(tmp, path)
    except SimulatedCrash:
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_with(path: str | Path, writer: Callable[[IO[bytes]], None]) -> None:
    """Replace ``path`` with what ``writer`` writes to an open binary file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer(fh)


def append_line(path: str | Path, line: str) -> int:
    """Append one line and fsync; returns the file's size afterwards (the new end offset)."""
    fault_point(f"append {Path(path).name}")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line if line.endswith("\n") else line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
        return fh.tell()


def truncate(path: str | Path, size: int) -> None:
    """Cut ``path`` to ``size`` bytes (the part a checkpoint vouches for) and fsync."""
    fault_point(f"truncate {Path(path).name}")
    with open(path, "rb+") as fh:
        fh.truncate(size)
        fh.flush()
        os.fsync(fh.fileno())
