"""The marts: pure builders from silver + flags to one Polars frame per mart.

Every mart lives in its own module (`dq_flags`, `project_health`, `person_portrait`, `unit_scorecard`,
`alerts`), which states its grain in its docstring and declares:

* `COLUMNS`: name -> (polars dtype, one-line meaning), in output order, `as_of` first. The builder's
  output has exactly these columns with exactly these dtypes (see `conform`), and the data dictionary
  is generated from them.
* `KEYS`: the columns that identify a row (the grain); the output is stably sorted by them.
* `build(ctx: MartInputs) -> pl.DataFrame`: pure (no I/O, no Prefect), vectorized, deterministic.

`MARTS` maps a mart's name to its builder, `MODULES` to its module; `build_all(ctx)` builds every mart.

Shared conventions (used by several marts, so they are defined once here):

* A milestone is *completed* when `completed_at` is set and its local date is on or before `as_of`
  (a completion stamped after the business date has not happened yet as of that date).
* A completed milestone is *on time* when completed on or before `due_date`, *late* otherwise; an open
  milestone is *overdue* (also *late*) when `due_date < as_of`; an open milestone not yet due is neither.
* Flags are attributed to a project when raised on the project itself or on one of its milestones,
  stage reports or evidence items (evidence -> report -> project), always within the same `source_id`.
* Stage reports count when submitted on or before `as_of` (local date).
* PII: marts carry a person's name only. As a safety net `conform` masks anything that looks like a
  mainland mobile number (138****1234) or an 18-character resident ID (first 6 + ******** + last 4) in
  every String column, so free text passed through (e.g. a flag's `detail`) cannot leak them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from types import ModuleType

import polars as pl

from expectations.catalog import FLAG_SCHEMA
from transforms.schema import TIMESTAMP, empty

SOURCES_SCHEMA: dict[str, pl.DataType] = {
    "source_id": pl.String(),
    "name": pl.String(),
    "kind": pl.String(),
    "dialect": pl.String(),
    "steward_email": pl.String(),
    "stale": pl.Boolean(),
}


@dataclass(frozen=True)
class MartInputs:
    """Everything a mart builder may read. Builders must not mutate any of it."""

    as_of: date
    silver: dict[str, pl.DataFrame]  # all sources concatenated; schema.py schemas, source_id first
    flags: pl.DataFrame  # catalog.FLAG_SCHEMA
    sources: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=SOURCES_SCHEMA))
    supervision_email: str = ""

    def table(self, name: str) -> pl.DataFrame:
        """A silver table, or an empty frame with its schema when the run has none."""
        df = self.silver.get(name)
        return empty(name) if df is None else df

    def flag_frame(self) -> pl.DataFrame:
        return self.flags if self.flags is not None else pl.DataFrame(schema=FLAG_SCHEMA)


# ---------------------------------------------------------------------------------------------- helpers

_PHONE = r"(^|[^0-9A-Za-z])(1[3-9][0-9])[0-9]{4}([0-9]{4})($|[^0-9A-Za-z])"
_ID_CARD = r"(^|[^0-9A-Za-z])([0-9]{6})[0-9]{8}([0-9]{3}[0-9Xx])($|[^0-9A-Za-z])"


def mask_pii(expr: pl.Expr) -> pl.Expr:
    """Mask mobile numbers (138****1234) and 18-char resident ids (110101********1234) in a String expr.

    Applied twice so that two numbers separated by a single character are both caught (the regex
    consumes the separator as the boundary of the first match).
    """
    for _ in range(2):
        expr = expr.str.replace_all(_PHONE, "${1}${2}****${3}${4}").str.replace_all(
            _ID_CARD, "${1}${2}********${3}${4}"
        )
    return expr


def conform(
    df: pl.DataFrame, columns: dict[str, tuple[pl.DataType, str]], keys: tuple[str, ...]
) -> pl.DataFrame:
    """Exactly `columns` (order and dtype), String columns PII-masked, stably sorted by `keys`."""
    exprs = []
    for name, (dtype, _meaning) in columns.items():
        e = pl.col(name).cast(dtype)
        if dtype == pl.String():
            e = mask_pii(e)
        exprs.append(e.alias(name))
    return df.select(exprs).sort(list(keys), maintain_order=True, nulls_last=True)


def with_as_of(df: pl.DataFrame, as_of: date) -> pl.DataFrame:
    return df.with_columns(pl.lit(as_of, dtype=pl.Date()).alias("as_of"))


def local_date(col: str) -> pl.Expr:
    """The business-zone calendar date of a timestamp column (silver timestamps are Asia/Shanghai)."""
    return pl.col(col).cast(TIMESTAMP).dt.date()


def milestone_facts(ctx: MartInputs) -> pl.DataFrame:
    """One row per milestone with its status as of `ctx.as_of`.

    Columns: source_id, milestone_id, project_id, stage, due_date, completed_on, is_completed, is_on_time,
    is_overdue, is_late, delay_days (days past due: completion - due for late completions, as_of - due
    for overdue ones, 0 otherwise).
    """
    as_of = pl.lit(ctx.as_of, dtype=pl.Date())
    m = ctx.table("milestones").select(
        "source_id", "milestone_id", "project_id", "stage", "due_date", "completed_at"
    )
    done_on = local_date("completed_at")
    return (
        m.lazy()
        .with_columns(completed_on=pl.when(done_on <= as_of).then(done_on).otherwise(None))
        .with_columns(is_completed=pl.col("completed_on").is_not_null())
        .with_columns(
            is_on_time=pl.col("is_completed") & (pl.col("completed_on") <= pl.col("due_date")),
            is_overdue=~pl.col("is_completed") & (pl.col("due_date") < as_of),
        )
        .with_columns(
            is_late=(pl.col("is_completed") & (pl.col("completed_on") > pl.col("due_date")))
            | pl.col("is_overdue"),
        )
        .with_columns(
            delay_days=pl.when(pl.col("is_overdue"))
            .then((as_of - pl.col("due_date")).dt.total_days())
            .when(pl.col("is_late"))
            .then((pl.col("completed_on") - pl.col("due_date")).dt.total_days())
            .otherwise(0)
            .cast(pl.Int64),
        )
        .drop("completed_at")
        .with_columns(pl.col(c).fill_null(False) for c in ("is_on_time", "is_overdue", "is_late"))
        .collect()
    )


def reports_as_of(ctx: MartInputs) -> pl.DataFrame:
    """Stage reports submitted on or before `as_of`."""
    r = ctx.table("stage_reports")
    return r.filter(local_date("submitted_at") <= pl.lit(ctx.as_of, dtype=pl.Date()))


def project_flags(ctx: MartInputs) -> pl.DataFrame:
    """Flag counts per project and family: source_id, project_id, flags_traces, flags_fabrication.

    A flag counts for a project when raised on the project, or on one of its milestones, stage reports or
    evidence items. Only projects with at least one such flag appear.
    """
    flags = ctx.flag_frame().filter(pl.col("family").is_in(["traces", "fabrication"]))
    ms = ctx.table("milestones").select("source_id", pl.col("milestone_id").alias("entity_id"), "project_id")
    rp = ctx.table("stage_reports").select("source_id", "report_id", "project_id")
    ev = (
        ctx.table("evidence")
        .select("source_id", "evidence_id", "report_id")
        .join(rp, on=["source_id", "report_id"], how="inner")
        .select("source_id", pl.col("evidence_id").alias("entity_id"), "project_id")
    )
    mapping = pl.concat(
        [
            ms.with_columns(entity_type=pl.lit("milestone")),
            rp.select("source_id", pl.col("report_id").alias("entity_id"), "project_id").with_columns(
                entity_type=pl.lit("report")
            ),
            ev.with_columns(entity_type=pl.lit("evidence")),
        ],
        how="diagonal",
    ).unique(["source_id", "entity_type", "entity_id"], keep="first", maintain_order=True)
    direct = flags.filter(pl.col("entity_type") == "project").with_columns(project_id=pl.col("entity_id"))
    via = flags.join(mapping, on=["source_id", "entity_type", "entity_id"], how="inner")
    both = pl.concat(
        [direct.select("source_id", "project_id", "family"), via.select("source_id", "project_id", "family")]
    )
    return both.group_by("source_id", "project_id").agg(
        flags_traces=(pl.col("family") == "traces").sum().cast(pl.Int64),
        flags_fabrication=(pl.col("family") == "fabrication").sum().cast(pl.Int64),
    )


# ---------------------------------------------------------------------------------------------- registry
# The mart modules import MartInputs and the helpers above, so they are imported after them.

from warehouse.marts import alerts, dq_flags, person_portrait, project_health, unit_scorecard  # noqa: E402

MODULES: dict[str, ModuleType] = {
    m.NAME: m for m in (dq_flags, project_health, person_portrait, unit_scorecard, alerts)
}
MARTS: dict[str, Callable[[MartInputs], pl.DataFrame]] = {name: m.build for name, m in MODULES.items()}
MART_KEYS: dict[str, tuple[str, ...]] = {name: m.KEYS for name, m in MODULES.items()}


def build_all(ctx: MartInputs) -> dict[str, pl.DataFrame]:
    """Every mart, in registry order."""
    return {name: build(ctx) for name, build in MARTS.items()}


def data_dictionary() -> dict[str, dict[str, tuple[str, str]]]:
    """mart -> column -> (dtype as text, meaning): the raw material of the generated data dictionary."""
    return {
        name: {c: (str(t), meaning) for c, (t, meaning) in m.COLUMNS.items()} for name, m in MODULES.items()
    }


__all__ = [
    "MARTS",
    "MART_KEYS",
    "MODULES",
    "SOURCES_SCHEMA",
    "MartInputs",
    "build_all",
    "conform",
    "data_dictionary",
    "mask_pii",
    "milestone_facts",
    "project_flags",
    "reports_as_of",
]
