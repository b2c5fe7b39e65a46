"""What every rule of the `traces` and `fabrication` families is made of, and how flags come out.

A rule is one module under `expectations/rules/` (`t1_evidence_count.py`, …) exposing:

- `RULE_ID` (catalog id), `ENTITY_TYPE` (what a flag is raised on), `ID_COLUMN` (the feature column
  naming that entity);
- `PARAMS: dict[str, Param]`: its thresholds, each with the reason for its value;
- `features(ctx, params) -> pl.DataFrame`: pure, vectorized Polars over silver — one row per entity judged,
  with `source_id`, `ID_COLUMN` and the figures the rule judges (counts, fences, distances …);
- `checks(params) -> list[Check]`: the Great Expectations expectations over those feature columns
  (built-in ones where they fit, a custom expectation class where the rule needs one);
- `detail(params) -> pl.Expr`: a String (JSON) expression over the feature columns, evaluated on the
  unexpected rows only — the figures a person needs to judge the flag without opening the code.

Thresholds are the module's `PARAMS` (value and reason side by side); one settings file may override
them (`expectations/settings.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from types import ModuleType
from typing import Any

import great_expectations as gx
import polars as pl

from expectations.catalog import empty_flags, flag_frame
from expectations.gx_runner import Check, Validator


@dataclass(frozen=True)
class RuleContext:
    silver: dict[str, pl.DataFrame]  # canonical tables, all sources, references resolved
    as_of: date
    # Reads columns `silver` does not hold (large free text that one rule reads, e.g. report summaries):
    # (table, columns) -> source_id, the table's key and those columns, for every source. None: `silver`
    # holds every column it has.
    read_columns: Callable[[str, list[str]], pl.DataFrame] | None = None

    def table(self, name: str) -> pl.DataFrame:
        from transforms.schema import empty

        frame = self.silver.get(name)
        return empty(name) if frame is None else frame

    def columns(self, name: str, columns: list[str]) -> pl.DataFrame:
        """`columns` of a table, the ones `silver` does not hold read from storage (`read_columns`)."""
        from transforms.schema import TABLES

        frame = self.table(name)
        absent = [c for c in columns if c not in frame.columns]
        if not absent:
            return frame.select(columns)
        if self.read_columns is None:
            raise KeyError(f"{name} has no column(s) {', '.join(absent)}")
        keys = ["source_id", TABLES[name].key]
        held = list(dict.fromkeys([*keys, *(c for c in columns if c not in absent)]))
        return frame.select(held).join(self.read_columns(name, absent), on=keys, how="left").select(columns)


def within_threshold(rule_id: str, entity_type: str, value_column: str, note: str) -> Check:
    """The usual fence check: `value_column` must not exceed the row's own `threshold` (a NULL threshold
    means no verdict, and GX skips the row)."""
    return Check(
        rule_id,
        gx.expectations.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="threshold", column_B=value_column, or_equal=True, ignore_row_if="either_value_is_missing",
        ),
        entity_type,
        note,
    )


def run_rule(module: ModuleType, ctx: RuleContext, validator: Validator, params: dict[str, Any]) -> pl.DataFrame:
    """Features in Polars → expectations in GX → one flag per unexpected row, with its figures."""
    features = module.features(ctx, params)
    if features.is_empty():
        return empty_flags()
    id_columns = ["source_id", module.ID_COLUMN]
    results = validator.run(f"rule_{module.RULE_ID}", features, id_columns, module.checks(params))
    hits = [r.unexpected for r in results if not r.success and not r.unexpected.is_empty()]
    if not hits:
        return empty_flags()
    unexpected = pl.concat(hits).unique()
    rows = features.join(unexpected, on=id_columns, how="semi").unique(subset=id_columns, keep="first")
    return flag_frame(
        module.RULE_ID, pl.col("source_id"), module.ENTITY_TYPE, pl.col(module.ID_COLUMN),
        module.detail(params), rows,
    )
