"""The `traces` (T1–T6) and `fabrication` (F1–F7) rules: one module per rule, found by name.

A module named `t<N>_…` or `f<N>_…` is a rule (see `base.py` for what it exposes). Several modules may
share one RULE_ID when a rule is raised on several entity types (F2: evidence and report); they run in
name order, each under its own GX suite name (the Validator keeps suite names unique).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re
import time
from collections.abc import Callable
from types import ModuleType

import polars as pl

from expectations.catalog import empty_flags
from expectations.gx_runner import Validator
from expectations.rules.base import RuleContext, run_rule
from expectations.settings import rule_params

_RULE_MODULE = re.compile(r"^[tf]\d+_")
log = logging.getLogger("qingfeng.rules")


def rule_modules() -> list[ModuleType]:
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if _RULE_MODULE.match(m.name))
    modules = [importlib.import_module(f"{__name__}.{n}") for n in names]
    return sorted(modules, key=lambda m: (m.RULE_ID[0], int(m.RULE_ID[1:])))


def rule_flags(ctx: RuleContext, validator: Validator, only: set[str] | None = None,
               after_each: Callable[[], None] | None = None) -> pl.DataFrame:
    """Every rule's flags for tonight (or those in `only`); `after_each()` runs after each rule."""
    parts = [empty_flags()]
    for module in rule_modules():
        if only and module.RULE_ID not in only:
            continue
        started = time.perf_counter()
        parts.append(run_rule(module, ctx, validator, rule_params(module.RULE_ID, module.PARAMS)))
        log.info("rule %s (%s): %d flags in %.1f s", module.RULE_ID, module.__name__.rsplit(".", 1)[-1],
                 parts[-1].height, time.perf_counter() - started)
        if after_each is not None:
            after_each()
    return pl.concat(parts)
