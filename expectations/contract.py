"""Family `contract` (C1–C4): the data itself.

- C1 (source): a table missing, a required column missing, or the server could not be read. Raised
  from what extraction and normalization recorded, since a table that is not there cannot be handed
  to an expectation.
- C2 (any): a row failed to parse or broke a constraint and was quarantined. Every quarantined row
  becomes a flag with its reason; a GX suite on silver re-checks the constraints (not null, enums,
  ranges) so that nothing that slipped past normalization goes unflagged.
- C3 (any): a reference points to a row that does not exist. A Polars feature says, per reference
  column, whether the row it names exists in the same source; GX expects it to be true.
- C4 (source): stale data. A source whose newest change is older than `stale_after_days` before the
  business date, or whose newest filedrop delivery is older than `delivery_late_days`, or that could
  not be read tonight while the marts still show its earlier data (the detail says when it was last
  read: `last_good`).

Superseded versions of a row (the same id pulled twice, the later one wins) are quarantined to keep
the row count honest, but they are change capture working, not bad data: no C2 flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from functools import partial

import great_expectations as gx
import polars as pl

from expectations.catalog import ENTITY_OF_TABLE, empty_flags, flag_frame
from expectations.gx_runner import Check, Validator
from transforms.references import dangling
from transforms.schema import TABLES

SUPERSEDED_PREFIX = "duplicate"


@dataclass(frozen=True)
class ContractSettings:
    # A district system that has recorded no change for a month has stopped being used, or stopped
    # being exported: either way its figures can no longer be trusted as current.
    stale_after_days: int = 30
    # Filedrop departments deliver at least weekly; a delivery more than a week old is late.
    delivery_late_days: int = 7


# --------------------------------------------------------------------------------------------------
# C1
# --------------------------------------------------------------------------------------------------


def c1_features(source_ids: list[str], problems: pl.DataFrame) -> pl.DataFrame:
    """One row per registered source: how many contract problems it had tonight, and which.
    `problems`: source_id, table (or null for the whole source), problem (in words)."""
    per_source = problems.group_by("source_id").agg(
        pl.len().cast(pl.Int64).alias("problem_count"),
        pl.col("table").alias("tables"),
        pl.col("problem").alias("problems"),
    )
    return (
        pl.DataFrame({"source_id": source_ids}, schema={"source_id": pl.String})
        .join(per_source, on="source_id", how="left")
        .with_columns(pl.col("problem_count").fill_null(0))
    )


def c1_flags(validator: Validator, source_ids: list[str], problems: pl.DataFrame) -> pl.DataFrame:
    """GX expects every source to have had no contract problem; each that had one is a C1 flag."""
    features = c1_features(source_ids, problems)
    checks = [Check("C1", gx.expectations.ExpectColumnValuesToBeBetween(column="problem_count", max_value=0),
                    "source", "数据源缺表、缺列或无法读取")]
    results = validator.run("contract_sources", features, ["source_id"], checks)
    failing = pl.concat([r.unexpected for r in results]).unique()
    rows = features.join(failing, on="source_id", how="semi").sort("source_id")
    if rows.is_empty():
        return empty_flags()
    detail = pl.struct("problem_count", "tables", "problems").struct.json_encode()
    return flag_frame("C1", pl.col("source_id"), "source", pl.col("source_id"), detail, rows)


# --------------------------------------------------------------------------------------------------
# C2 from the quarantine
# --------------------------------------------------------------------------------------------------


def c2_flags_from_quarantine(quarantine: pl.DataFrame) -> pl.DataFrame:
    q = quarantine.filter(~pl.col("reason").str.starts_with(SUPERSEDED_PREFIX))
    if q.is_empty():
        return empty_flags()
    entity = pl.col("table").replace_strict(ENTITY_OF_TABLE, default="source")
    has_id = pl.col("record_id").is_not_null()
    q = q.with_columns(
        pl.when(has_id).then(entity).otherwise(pl.lit("source")).alias("_etype"),
        pl.when(has_id).then(pl.col("record_id")).otherwise(pl.col("source_id")).alias("_eid"),
        pl.struct("reason", "table").struct.json_encode().alias("_detail"),
    )
    parts = [
        flag_frame("C2", pl.col("source_id"), etype, pl.col("_eid"), pl.col("_detail"),
                   q.filter(pl.col("_etype") == etype))
        for etype in q["_etype"].unique().sort().to_list()
    ]
    return pl.concat(parts)


# --------------------------------------------------------------------------------------------------
# C2 and C3 on silver, through Great Expectations
# --------------------------------------------------------------------------------------------------


def _exists_column(ref_column: str) -> str:
    return f"{ref_column}__exists"


def reference_features(silver: Mapping[str, pl.DataFrame], table: str) -> pl.DataFrame:
    """One boolean per reference column: does the row it names exist (null when the reference is)."""
    spec = TABLES[table]
    frame = silver[table]
    out = frame
    for ref in spec.references:
        missing = dangling(silver, table, ref).select("source_id", spec.key, pl.lit(False).alias("_missing"))
        out = (
            out.join(missing, on=["source_id", spec.key], how="left")
            .with_columns(
                pl.when(pl.col(ref.column).is_null()).then(None)
                .otherwise(pl.col("_missing").is_null()).alias(_exists_column(ref.column))
            )
            .drop("_missing")
        )
    return out


def silver_checks(table: str) -> list[Check]:
    spec = TABLES[table]
    entity = ENTITY_OF_TABLE[table]
    checks = [
        Check("C2", gx.expectations.ExpectColumnValuesToNotBeNull(column=c), entity, f"{c} 为必填项")
        for c in spec.required
    ]
    checks += [
        Check("C2", gx.expectations.ExpectColumnValuesToBeInSet(column=c, value_set=list(values)), entity,
              f"{c} 取值不在枚举范围内")
        for c, values in spec.enums.items()
    ]
    if table == "stage_reports":
        checks.append(Check("C2", gx.expectations.ExpectColumnValuesToBeBetween(
            column="progress_pct", min_value=0, max_value=100), entity, "progress_pct 超出 0–100"))
    if table == "evidence":
        checks += [
            Check("C2", gx.expectations.ExpectColumnValuesToBeBetween(column=c, min_value=0), entity,
                  f"{c} 为负数")
            for c in ("pages", "size_bytes")
        ]
    checks += [
        Check("C3", gx.expectations.ExpectColumnValuesToBeInSet(column=_exists_column(r.column), value_set=[True]),
              entity, f"{r.column} 引用的{r.table}记录不存在")
        for r in spec.references
    ]
    return checks


def contract_suite_flags(validator: Validator, silver: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """Validate every silver table with GX; each unexpected row becomes a C2 or C3 flag.

    A table read source by source (`CitySilver.sharded`: the evidence) is validated from its features
    built one source at a time, its references checked against that source's tables (references never
    cross sources), so the suite never holds it for the whole city."""
    sharded = getattr(silver, "sharded", ())
    flags = [empty_flags()]
    for table, spec in TABLES.items():
        checks = silver_checks(table)
        shown = list(dict.fromkeys(c for ch in checks for c in _detail_columns(ch)))
        if table in sharded:
            if silver.rows(table) == 0:
                continue
            # Of the other tables read source by source, none is needed here: only their ids are read.
            columns = {**{t: [] for t in sharded}, table: _narrow_columns(table, shown)}
            features = silver.map_sources(partial(narrow_features, table=table, shown=shown), columns)
        else:
            frame = silver.get(table)
            if frame is None or frame.is_empty():
                continue
            features = narrow_features(silver, table, shown)
        results = validator.run(f"contract_{table}", features, ["source_id", spec.key], checks, keep=shown)
        for res in results:
            if res.success or res.unexpected.is_empty():
                continue
            rows = res.unexpected.with_columns(pl.col(spec.key).alias("_eid")).unique(
                subset=["source_id", "_eid"], keep="first")
            detail = _check_detail(res, table)
            flags.append(flag_frame(res.check.rule_id, pl.col("source_id"), res.check.entity_type,
                                    pl.col("_eid"), detail, rows))
    return pl.concat(flags)


def _narrow_columns(table: str, shown: list[str]) -> list[str]:
    """The columns of `table` its suite reads: the ids, the references and the columns the checks are about."""
    spec = TABLES[table]
    return list(dict.fromkeys(["source_id", spec.key, *(r.column for r in spec.references), *shown]))


def narrow_features(tables: Mapping[str, pl.DataFrame], table: str, shown: list[str]) -> pl.DataFrame:
    """`reference_features` of `table` over only the columns its suite reads (a copy of the whole table
    per suite would be city-sized). `tables`: the city's silver, or one source's."""
    narrow = tables[table].select(_narrow_columns(table, shown))
    return reference_features({**tables, table: narrow}, table)


def _detail_columns(check: Check) -> list[str]:
    """The silver column a check is about (for a C3 check, the reference column)."""
    col = getattr(check.expectation, "column", None)
    if col and col.endswith("__exists"):
        return [col.removesuffix("__exists")]
    return [col] if col else []


def _check_detail(res, table: str) -> pl.Expr:
    column = res.check.expectation.column.removesuffix("__exists")
    return pl.struct(
        pl.lit(type(res.check.expectation).__name__).alias("check"),
        pl.lit(table).alias("table"),
        pl.lit(column).alias("column"),
        pl.col(column).cast(pl.String).alias("value"),
        pl.lit(res.check.note).alias("note"),
        pl.lit(res.observed.get("unexpected_count", 0)).alias("unexpected_in_table"),
    ).struct.json_encode()


# --------------------------------------------------------------------------------------------------
# C4
# --------------------------------------------------------------------------------------------------


def c4_flags(freshness: pl.DataFrame, as_of: date, settings: ContractSettings = ContractSettings()) -> pl.DataFrame:
    """`freshness`: source_id, dialect, newest_change (Datetime, null when nothing), newest_delivery
    (Date, filedrop only); optionally failed_with_silver (Boolean: failed tonight, earlier data kept)
    and last_good (Date: the latest earlier date it was read)."""
    if freshness.is_empty():
        return empty_flags()
    if "failed_with_silver" not in freshness.columns:
        freshness = freshness.with_columns(pl.lit(False).alias("failed_with_silver"))
    if "last_good" not in freshness.columns:
        freshness = freshness.with_columns(pl.lit(None, dtype=pl.Date).alias("last_good"))
    age_change = (pl.lit(as_of) - pl.col("newest_change").dt.date()).dt.total_days()
    age_delivery = (pl.lit(as_of) - pl.col("newest_delivery")).dt.total_days()
    f = freshness.with_columns(age_change.alias("change_age_days"), age_delivery.alias("delivery_age_days"))
    stale = f.filter(
        (pl.col("change_age_days") > settings.stale_after_days)
        | (pl.col("delivery_age_days") > settings.delivery_late_days)
        | pl.col("failed_with_silver").fill_null(False)
    )
    if stale.is_empty():
        return empty_flags()
    detail = pl.struct(
        pl.col("newest_change").dt.strftime("%Y-%m-%dT%H:%M:%S%:z"),
        "change_age_days",
        pl.col("newest_delivery").cast(pl.String),
        "delivery_age_days",
        pl.lit(settings.stale_after_days).alias("stale_after_days"),
        pl.lit(settings.delivery_late_days).alias("delivery_late_days"),
        pl.col("failed_with_silver").fill_null(False).alias("failed_tonight"),
        pl.col("last_good").cast(pl.String),
    ).struct.json_encode()
    return flag_frame("C4", pl.col("source_id"), "source", pl.col("source_id"), detail, stale)
