"""F2 (evidence): an evidence item's timestamps are impossible.

Three tests, each a figure per row and a GX bound on it:

- `capture_after_upload_hours`: the file says it was taken after it was uploaded (EXIF captured_at later
  than uploaded_at by more than a clock tolerance);
- `captured_before_start_days`: the photo was taken long (over a year) before its project's planned start,
  so it cannot document this project's work;
- `uploaded_after_report_days`: the item was uploaded to its report more than a day after the report was
  submitted — material added to a report after the fact.

Rows are judged when at least one of the three pairs is in the wrong order; GX applies the tolerances.
A missing timestamp gives no verdict on the test that needs it.
"""

from __future__ import annotations

import great_expectations as gx
import polars as pl

from expectations.gx_runner import Check
from expectations.rules.base import RuleContext
from expectations.settings import Param
from transforms.features_fabrication import ts_json
from transforms.schema import TZ

RULE_ID = "F2"
ENTITY_TYPE = "evidence"
ID_COLUMN = "evidence_id"

PARAMS: dict[str, Param] = {
    "capture_after_upload_tolerance_hours": Param(
        1.0, "Phones and servers keep network time to the second; an hour absorbs a camera clock set a "
             "little wrong. A capture more than an hour after the upload is impossible."),
    "captured_before_start_max_days": Param(
        365, "Baseline photos before a project starts are normal for weeks or months; one taken more than "
             "a year before the planned start cannot record this project's work."),
    "uploaded_after_report_tolerance_days": Param(
        1.0, "A system may save an item a little after its report (retries, a late upload in the same "
             "session); more than a day after submission is material added to a report after the fact."),
}


def _start_of_day(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Datetime("us")).dt.replace_time_zone(TZ)


def _days(a: pl.Expr, b: pl.Expr) -> pl.Expr:
    return ((a - b).dt.total_seconds() / 86400.0).round(3)


def features(ctx: RuleContext, params: dict) -> pl.DataFrame:
    # Each item is judged against its own report and project: source by source, as the evidence is read.
    return ctx.by_source(lambda one: _source_features(one, params), columns={"evidence": ["report_id", "kind", "captured_at", "uploaded_at"]})


def _source_features(ctx: RuleContext, params: dict) -> pl.DataFrame:
    reports = ctx.table("stage_reports").select("source_id", "report_id", "project_id", "submitted_at").unique(
        subset=["source_id", "report_id"], keep="first")
    projects = ctx.table("projects").select("source_id", "project_id", "planned_start").unique(
        subset=["source_id", "project_id"], keep="first")
    f = (
        ctx.table("evidence")
        .select("source_id", "evidence_id", "report_id", "kind", "captured_at", "uploaded_at")
        .join(reports, on=["source_id", "report_id"], how="left")
        .join(projects, on=["source_id", "project_id"], how="left")
        .with_columns(
            ((pl.col("captured_at") - pl.col("uploaded_at")).dt.total_seconds() / 3600.0).round(3)
            .alias("capture_after_upload_hours"),
            _days(_start_of_day("planned_start"), pl.col("captured_at")).alias("captured_before_start_days"),
            _days(pl.col("uploaded_at"), pl.col("submitted_at")).alias("uploaded_after_report_days"),
        )
    )
    wrong_order = (
        (pl.col("capture_after_upload_hours") > 0) | (pl.col("captured_before_start_days") > 0)
        | (pl.col("uploaded_after_report_days") > 0)
    )
    return f.filter(wrong_order.fill_null(False))


def checks(params: dict) -> list[Check]:
    e = gx.expectations
    return [
        Check(RULE_ID, e.ExpectColumnValuesToBeBetween(
            column="capture_after_upload_hours", max_value=params["capture_after_upload_tolerance_hours"]),
            ENTITY_TYPE, "拍摄时间晚于上传时间"),
        Check(RULE_ID, e.ExpectColumnValuesToBeBetween(
            column="captured_before_start_days", max_value=params["captured_before_start_max_days"]),
            ENTITY_TYPE, "拍摄时间远早于项目计划开始"),
        Check(RULE_ID, e.ExpectColumnValuesToBeBetween(
            column="uploaded_after_report_days", max_value=params["uploaded_after_report_tolerance_days"]),
            ENTITY_TYPE, "材料上传时间晚于所属汇报提交时间"),
    ]


def detail(params: dict) -> pl.Expr:
    tests = pl.concat_list(
        pl.when(pl.col("capture_after_upload_hours") > params["capture_after_upload_tolerance_hours"])
        .then(pl.lit("captured_after_upload")),
        pl.when(pl.col("captured_before_start_days") > params["captured_before_start_max_days"])
        .then(pl.lit("captured_before_project_start")),
        pl.when(pl.col("uploaded_after_report_days") > params["uploaded_after_report_tolerance_days"])
        .then(pl.lit("uploaded_after_report_submitted")),
    ).list.drop_nulls()
    return pl.struct(
        tests.alias("tests"),
        "kind",
        "report_id",
        "project_id",
        ts_json("captured_at").alias("captured_at"),
        ts_json("uploaded_at").alias("uploaded_at"),
        ts_json("submitted_at").alias("report_submitted_at"),
        pl.col("planned_start").cast(pl.String).alias("project_planned_start"),
        "capture_after_upload_hours",
        "captured_before_start_days",
        "uploaded_after_report_days",
    ).struct.json_encode()
