"""audit.json: every figure with its interval and parameters, as strict JSON.

Results are nested dicts; keys starting with ``_`` hold arrays for the plots and are left out.
numpy scalars and arrays become plain numbers and lists; non-finite floats become ``null`` (strict
JSON has no Infinity) — fields where that can happen say what null means next to them (e.g.
``canary.eps_theory_note``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from securedream.runs import atomic

SCHEMA = "securedream-audit/1"


def to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, np.ndarray | torch.Tensor):
        return None  # arrays are never figures; they belong under "_" keys
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)


def write_json(path: Path, results: dict[str, Any]) -> Path:
    data = to_jsonable(results)
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic.write_text(path, text)
    return path


def get(results: dict[str, Any], dotted: str, default: Any = None) -> Any:
    """``get(r, "canary.eps_lower_bound")``: a nested value, or ``default`` when missing."""
    node: Any = results
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node
