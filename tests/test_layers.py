"""Imports point one way: protocols ← securedream ← attacks."""

from __future__ import annotations

import subprocess
import sys

ENGINE_MODULES = [
    "securedream.cli",
    "securedream.engines.inprocess",
    "securedream.aggregation.factory",
    "securedream.privacy.engine",
    "securedream.bench.accuracy",
    "securedream.bench.private",
]


def _loaded_after_import(modules: list[str]) -> set[str]:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print('\\n'.join(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return set(out.split())


def test_engine_never_imports_attacks() -> None:
    loaded = _loaded_after_import(ENGINE_MODULES)
    assert "securedream.engines.inprocess" in loaded
    assert not any(m == "attacks" or m.startswith("attacks.") for m in loaded)


def test_protocols_never_import_the_engine_or_torch() -> None:
    loaded = _loaded_after_import(["protocols"])
    assert "protocols.session" in loaded
    assert "torch" not in loaded
    assert not any(m.startswith(("securedream", "attacks")) for m in loaded)
