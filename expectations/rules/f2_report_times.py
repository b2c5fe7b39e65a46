"""F2 (report): a report's date is impossible — filed long before its project's planned start, or
dated in the future.

- `submitted_before_start_days`: days from submission to the project's planned start (positive when the
  report came first); GX expects at most `before_start_max_days`.
- `hours_after_as_of`: hours past the end of the business date; GX expects at most
  `future_tolerance_hours`.

Rows are judged when either figure is positive; a missing planned start gives no verdict on the first test.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import great_expectations as gx
import polars as pl

from expectations.gx_runner import Check
from expectations.rules.base import RuleContext
from expectations.settings import Param
from transforms.features_fabrication import ts_json
from transforms.schema import TZ

RULE_ID = "F2"
ENTITY_TYPE = "report"
ID_COLUMN = "report_id"

PARAMS: dict[str, Param] = {
    "before_start_max_days": Param(
        30, "Planning (谋划立项) work is reported in the weeks before a project's planned start; a report "
            "more than a month before it describes work on a project that had not begun."),
    "future_tolerance_hours": Param(
        24, "The run for business date D pulls in the small hours of D+1 (or is re-run during D+1): a "
            "report stamped up to a day past the end of D can be real. Later than that it is dated ahead."),
}


def features(ctx: RuleContext, params: dict) -> pl.DataFrame:
    end_of_day = datetime.combine(ctx.as_of + timedelta(days=1), time(0), tzinfo=ZoneInfo(TZ))
    projects = ctx.table("projects").select("source_id", "project_id", "planned_start").unique(
        subset=["source_id", "project_id"], keep="first")
    f = (
        ctx.table("stage_reports")
        .select("source_id", "report_id", "project_id", "milestone_id", "submitted_at")
        .join(projects, on=["source_id", "project_id"], how="left")
        .with_columns(
            ((pl.col("planned_start").cast(pl.Datetime("us")).dt.replace_time_zone(TZ) - pl.col("submitted_at"))
             .dt.total_seconds() / 86400.0).round(3).alias("submitted_before_start_days"),
            ((pl.col("submitted_at") - pl.lit(end_of_day).dt.convert_time_zone(TZ)).dt.total_seconds() / 3600.0)
            .round(3).alias("hours_after_as_of"),
            pl.lit(ctx.as_of).alias("as_of"),
        )
    )
    return f.filter(((pl.col("submitted_before_start_days") > 0) | (pl.col("hours_after_as_of") > 0)).fill_null(False))


def checks(params: dict) -> list[Check]:
    e = gx.expectations
    return [
        Check(RULE_ID, e.ExpectColumnValuesToBeBetween(
            column="submitted_before_start_days", max_value=params["before_start_max_days"]),
            ENTITY_TYPE, "汇报时间远早于项目计划开始"),
        Check(RULE_ID, e.ExpectColumnValuesToBeBetween(
            column="hours_after_as_of", max_value=params["future_tolerance_hours"]),
            ENTITY_TYPE, "汇报时间晚于业务日期（未来时间）"),
    ]


def detail(params: dict) -> pl.Expr:
    tests = pl.concat_list(
        pl.when(pl.col("submitted_before_start_days") > params["before_start_max_days"])
        .then(pl.lit("submitted_before_project_start")),
        pl.when(pl.col("hours_after_as_of") > params["future_tolerance_hours"]).then(pl.lit("submitted_in_future")),
    ).list.drop_nulls()
    return pl.struct(
        tests.alias("tests"),
        "project_id",
        ts_json("submitted_at").alias("submitted_at"),
        pl.col("planned_start").cast(pl.String).alias("project_planned_start"),
        pl.col("as_of").cast(pl.String),
        "submitted_before_start_days",
        "hours_after_as_of",
    ).struct.json_encode()
