"""Static import-layer check: ``protocols`` ← ``securedream`` ← ``attacks``.

Why static: ``tests/test_layers.py`` imports modules and looks at ``sys.modules``, which misses
imports inside functions (lazy imports) and modules the test does not list. This walks every
``import`` statement of every module in the packages with :mod:`ast`, so a lazy import of
``attacks`` from the engine, or of ``torch`` from ``protocols``, fails CI even if no test reaches
it.

Rules:
- ``protocols`` imports only the standard library, ``numpy`` and ``cryptography``; its optional
  property-testing kit (``protocols.testing``) may also import ``hypothesis``.
- ``securedream`` never imports ``attacks``.

Exit status 0 when every rule holds, 1 with one line per violation otherwise.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOCOLS_ALLOWED_THIRD_PARTY = {"numpy", "cryptography"}
TESTING_KIT_EXTRA = {"hypothesis"}


def _imported_roots(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module name) of every absolute import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def _is_testing_kit(path: Path, root: Path) -> bool:
    rel = path.relative_to(root / "protocols")
    return rel.parts[0] in {"testing", "testing.py"}


def violations(root: Path = ROOT) -> list[str]:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    problems: list[str] = []
    for path in sorted((root / "protocols").rglob("*.py")):
        allowed = stdlib | PROTOCOLS_ALLOWED_THIRD_PARTY | {"protocols"}
        if _is_testing_kit(path, root):
            allowed |= TESTING_KIT_EXTRA
        for line, module in _imported_roots(path):
            if module not in allowed:
                problems.append(
                    f"{path.relative_to(root)}:{line}: protocols may not import {module!r} "
                    f"(allowed: stdlib, {', '.join(sorted(PROTOCOLS_ALLOWED_THIRD_PARTY))})"
                )
    for path in sorted((root / "securedream").rglob("*.py")):
        for line, module in _imported_roots(path):
            if module == "attacks":
                problems.append(
                    f"{path.relative_to(root)}:{line}: securedream may not import attacks "
                    "(attacks plugs in through the securedream.commands entry point)"
                )
    return problems


def main() -> int:
    problems = violations()
    for problem in problems:
        print(problem)
    if problems:
        print(f"import layers: {len(problems)} violation(s)")
        return 1
    print("import layers: protocols <- securedream <- attacks hold")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
