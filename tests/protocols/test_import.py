"""protocols imports with numpy + cryptography only, and does no I/O at import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    return out.stdout.strip()


def test_import_does_not_pull_torch() -> None:
    code = "import sys, protocols; print('torch' in sys.modules, protocols.__version__)"
    assert _run(code) == "False 0.1.0"


def test_import_pulls_no_networking_or_threads() -> None:
    code = (
        "import sys; before = set(sys.modules); import protocols; new = set(sys.modules) - before; "
        "print(sorted(m for m in new if m.split('.')[0] in "
        "{'socket', 'threading', 'asyncio', 'pickle', 'torch', 'flwr', 'multiprocessing'}))"
    )
    # numpy/cryptography may import threading themselves; what matters is that protocols'
    # own modules never use sockets, pickle or threads:
    for path in (ROOT / "protocols").glob("*.py"):
        text = path.read_text()
        for banned in ("import socket", "import pickle", "import threading", "time.sleep", "open("):
            assert banned not in text, f"{path.name} uses {banned}"
    assert "socket" not in _run(code)


def test_hypothesis_only_when_the_testing_kit_is_imported() -> None:
    code = (
        "import sys, protocols, protocols.vectors; a = 'hypothesis' in sys.modules; "
        "import protocols.testing; print(a, 'hypothesis' in sys.modules)"
    )
    assert _run(code) == "False True"
