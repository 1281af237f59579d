"""Imports point one way: protocols ← securedream ← attacks."""

from __future__ import annotations

import subprocess
import sys

ENGINE_MODULES = [
    "securedream.cli",
    "securedream.engines.inprocess",
    "securedream.stack",
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


def _load_checker():  # type: ignore[no-untyped-def]
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "check_layers.py"
    spec = importlib.util.spec_from_file_location("check_layers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_static_layer_check_passes_on_the_repository() -> None:
    assert _load_checker().violations() == []


def test_static_layer_check_catches_lazy_imports(tmp_path) -> None:  # type: ignore[no-untyped-def]
    checker = _load_checker()
    (tmp_path / "protocols" / "testing").mkdir(parents=True)
    (tmp_path / "securedream").mkdir()
    (tmp_path / "protocols" / "ok.py").write_text("import numpy\nfrom cryptography import x\n")
    (tmp_path / "protocols" / "bad.py").write_text("def f():\n    import torch\n")
    (tmp_path / "protocols" / "testing" / "kit.py").write_text("import hypothesis\n")
    (tmp_path / "securedream" / "cli.py").write_text("def g():\n    from attacks import cli\n")
    found = checker.violations(tmp_path)
    assert len(found) == 2
    assert any("protocols/bad.py:2" in v and "'torch'" in v for v in found)
    assert any("securedream/cli.py:2" in v and "attacks" in v for v in found)
