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
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from types import ModuleType

import polars as pl

from expectations.catalog import empty_flags
from expectations.gx_runner import Validator
from expectations.rules.base import RuleContext, SharedFrames, run_rule
from expectations.settings import rule_params

_RULE_MODULE = re.compile(r"^[tf]\d+_")
log = logging.getLogger("qingfeng.rules")


def rule_modules() -> list[ModuleType]:
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if _RULE_MODULE.match(m.name))
    modules = [importlib.import_module(f"{__name__}.{n}") for n in names]
    return sorted(modules, key=lambda m: (m.RULE_ID[0], int(m.RULE_ID[1:])))


def rule_flags(ctx: RuleContext, validator: Validator, only: set[str] | None = None,
               after_each: Callable[[], None] | None = None, in_flight: int = 1,
               beside: Callable[[], pl.DataFrame] | None = None) -> pl.DataFrame:
    """Every rule's flags for tonight (or those in `only`), in rule order; `after_each()` runs after
    each rule. `in_flight` rules run side by side, the long-running ones (`LONG_RUNNING`) first.

    Why side by side: a rule is a few Polars queries and then a GX validation in pandas, which holds one
    core; two rules at a time keep both cores busy (96 × 1,000: 37 s → 29 s for all rules, +0.4 GiB at
    the highest point). Their figures do not depend on it: each rule reads silver and writes nothing
    another reads, and GX runs one suite at a time (`Validator`). The frames several rules read alike
    (`SHARES`) are built once, for all of them (`SharedFrames`).

    `beside`: another job of the night over the same silver (the contract suite), whose frame comes first
    in the result. It runs before the rules one at a time; side by side, right after the long-running
    rules have started, so that it does not hold back the longest of them."""

    modules = [m for m in rule_modules() if not only or m.RULE_ID in only]
    ctx = replace(ctx, frames=SharedFrames(Counter(name for m in modules for name in getattr(m, "SHARES", ()))))

    def one(module: ModuleType) -> pl.DataFrame:
        started = time.perf_counter()
        flags = run_rule(module, ctx, validator, rule_params(module.RULE_ID, module.PARAMS))
        log.info("rule %s (%s): %d flags in %.1f s", module.RULE_ID, module.__name__.rsplit(".", 1)[-1],
                 flags.height, time.perf_counter() - started)
        if after_each is not None:
            after_each()
        return flags

    first = [] if beside is None else [beside]
    if in_flight <= 1 or len(modules) + len(first) < 2:
        return pl.concat([empty_flags(), *(job() for job in first), *(one(m) for m in modules)])
    # The longest first: started last, a long rule would run on alone at the end, on one core.
    long_running = [m for m in modules if getattr(m, "LONG_RUNNING", False)]
    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="rule") as pool:
        futures = {m.__name__: pool.submit(one, m) for m in long_running}
        jobs = [pool.submit(job) for job in first]
        futures |= {m.__name__: pool.submit(one, m) for m in modules if m.__name__ not in futures}
        try:
            return pl.concat([empty_flags(), *(f.result() for f in jobs),
                              *(futures[m.__name__].result() for m in modules)])
        except BaseException:
            for f in [*jobs, *futures.values()]:  # the night stops: what has not begun need not run
                f.cancel()
            raise
