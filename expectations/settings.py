"""Rule thresholds. Each rule module declares its own `PARAMS` (value and reason side by side, so a
rule lives in one place); one TOML file named by `QINGFENG_SETTINGS` may override any of them:

    [rules.T1]
    fence_k = 4.0
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Param:
    value: Any
    why: str


@cache
def _overrides(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    return tomllib.loads(Path(path).read_text(encoding="utf-8")).get("rules", {})


def rule_params(rule_id: str, defaults: dict[str, Param], path: str | None = None) -> dict[str, Any]:
    override = _overrides(path or os.environ.get("QINGFENG_SETTINGS")).get(rule_id, {})
    unknown = set(override) - set(defaults)
    if unknown:
        raise ValueError(f"settings for {rule_id}: unknown parameter(s) {', '.join(sorted(unknown))}")
    return {name: override.get(name, p.value) for name, p in defaults.items()}
