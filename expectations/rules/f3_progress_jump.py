"""F3 (report): progress goes backwards, or jumps to 100 % with no completed interim result.

The reports of a project are put in filing order (submitted_at, then report_id).

- `progress_drop`: the previous stated progress minus this one; GX expects it below `min_drop_pts`
  (a smaller drop is a correction or rounding, not a project going backwards).
- `completed_without_interim`: the report is the first to claim 100 % (the previous was below) while the
  project's `interim_result` milestone was not completed by the time of the report; GX expects False.
  A project with no interim_result milestone in silver gives no verdict (nothing to compare with).

Rows are judged when progress fell at all, or when a report first claims 100 %.
"""

from __future__ import annotations

import great_expectations as gx
import polars as pl

from expectations.gx_runner import Check
from expectations.rules.base import RuleContext
from expectations.settings import Param
from transforms.features_fabrication import report_sequence, ts_json

RULE_ID = "F3"
ENTITY_TYPE = "report"
ID_COLUMN = "report_id"

PARAMS: dict[str, Param] = {
    "min_drop_pts": Param(10, "Progress is a self-assessed percentage, often re-estimated by a few points or "
                              "written 0.8 vs 80 %; a fall of 10 points or more is a real step backwards."),
    "complete_pct": Param(100.0, "What '100 %' means: the report claims the project is done."),
}


def features(ctx: RuleContext, params: dict) -> pl.DataFrame:
    seq = report_sequence(ctx.table("stage_reports").select(
        "source_id", "report_id", "project_id", "submitted_at", "progress_pct"))
    interim = (
        ctx.table("milestones").filter(pl.col("stage") == "interim_result")
        .group_by("source_id", "project_id")
        .agg(pl.col("milestone_id").first().alias("interim_milestone_id"),
             pl.col("completed_at").min().alias("interim_completed_at"))
    )
    full = params["complete_pct"]
    f = seq.join(interim, on=["source_id", "project_id"], how="left").with_columns(
        (pl.col("prev_progress") - pl.col("progress_pct")).alias("progress_drop"),
        ((pl.col("progress_pct") >= full) & ~(pl.col("prev_progress") >= full).fill_null(False)).alias("_jump"),
    )
    interim_done = (pl.col("interim_completed_at") <= pl.col("submitted_at")).fill_null(False)
    f = f.with_columns(
        pl.when(pl.col("_jump") & pl.col("interim_milestone_id").is_not_null())
        .then(~interim_done).otherwise(None).alias("completed_without_interim"),
    )
    return f.filter((pl.col("progress_drop") > 0) | pl.col("_jump")).drop("_jump")


def checks(params: dict) -> list[Check]:
    e = gx.expectations
    return [
        Check(RULE_ID, e.ExpectColumnValuesToBeBetween(
            column="progress_drop", max_value=params["min_drop_pts"], strict_max=True),
            ENTITY_TYPE, "进度较上一次汇报倒退"),
        Check(RULE_ID, e.ExpectColumnValuesToBeInSet(column="completed_without_interim", value_set=[False]),
              ENTITY_TYPE, "进度100%但阶段成果节点未完成"),
    ]


def detail(params: dict) -> pl.Expr:
    tests = pl.concat_list(
        pl.when(pl.col("progress_drop") >= params["min_drop_pts"]).then(pl.lit("progress_backwards")),
        pl.when(pl.col("completed_without_interim").fill_null(False)).then(pl.lit("complete_without_interim_result")),
    ).list.drop_nulls()
    return pl.struct(
        tests.alias("tests"),
        "project_id",
        "progress_pct",
        "prev_progress",
        "progress_drop",
        "prev_report_id",
        ts_json("submitted_at").alias("submitted_at"),
        ts_json("prev_submitted_at").alias("prev_submitted_at"),
        "interim_milestone_id",
        ts_json("interim_completed_at").alias("interim_completed_at"),
    ).struct.json_encode()
