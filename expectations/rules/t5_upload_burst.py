"""T5 (report): a burst of evidence was uploaded within minutes, shortly before the milestone's due date
(back-filling, 补材料).

Method: the report's evidence sorted by `uploaded_at`; for every item, a rolling window counts the
report's items uploaded in the `window_minutes` up to it (`transforms.features_traces.window_counts`:
one sort, no pairs). A window counts as "near the deadline" when its last upload falls on one of the
`max_days_before_due` calendar days before the due date of the report's milestone, or on the due date
itself (Asia/Shanghai days). `burst_items` is the largest near-deadline window; GX expects it below
`min_items`. Reports with no upload near their deadline have no burst to judge (NULL). The milestone
is the report's own, or the inferred one (see `transforms/features_traces.py`). See docs/rules/T5.md.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import great_expectations as gx
import polars as pl

from expectations.gx_runner import Check
from expectations.rules.base import RuleContext
from expectations.settings import Param
from transforms.features_traces import evidence_by_report_index, fmt_time, report_stages, window_counts
from transforms.schema import TZ

RULE_ID = "T5"
ENTITY_TYPE = "report"
ID_COLUMN = "report_id"

PARAMS: dict[str, Param] = {
    "min_items": Param(
        10,
        "Ten files in one burst is more than most whole reports carry (stage medians 3–7): a few files "
        "picked and uploaded together is ordinary, a full set produced in minutes is back-filling.",
    ),
    "window_minutes": Param(
        10,
        "Ten minutes: long enough for one sitting of uploads through a slow web form, short enough that "
        "the items cannot have been gathered as the work happened.",
    ),
    "max_days_before_due": Param(
        3,
        "Three calendar days before the due date (or on it): the stretch in which reminders (D1 fires 7 "
        "days ahead) turn into a rush to fill the file before the check.",
    ),
}

_KEYS = ["source_id", "report_id"]


def features(ctx: RuleContext, params: dict[str, Any]) -> pl.DataFrame:
    # A burst is a window of one report's uploads: source by source, as the evidence is read.
    return ctx.by_source(lambda one: _source_features(one, params), columns={"evidence": ["report_id", "uploaded_at"]})


def _source_features(ctx: RuleContext, params: dict[str, Any]) -> pl.DataFrame:
    reports = ctx.table("stage_reports")
    ev, index = evidence_by_report_index(ctx.table("evidence"), reports, ["uploaded_at"])
    stages = (
        report_stages(reports, ctx.table("milestones"), ctx.table("projects"))
        .select(*_KEYS, "project_id", "unit_code", "milestone_id", "milestone_inferred", "stage", "due_date")
        .join(index, on=_KEYS, how="inner")
    )
    counts = ev.group_by("_rid").agg(pl.len().cast(pl.Int64).alias("n_items"))
    max_days = params["max_days_before_due"]
    window = timedelta(minutes=params["window_minutes"])
    upload_day = pl.col("uploaded_at").dt.convert_time_zone(TZ).dt.date()
    # Only uploads that can belong to a window ending near the deadline: the near days themselves, and
    # the day(s) a window reaching back from them may start on.
    spill = window.days + 1
    dated = (
        ev.join(stages.select("_rid", "due_date"), on="_rid", how="inner")
        .with_columns((pl.col("due_date") - upload_day).dt.total_days().alias("days_before_due"))
        .filter(pl.col("days_before_due").is_between(0, max_days + spill))
    )
    near = window_counts(dated, "_rid", "uploaded_at", window).filter(
        pl.col("days_before_due").is_between(0, max_days)
    )
    # The largest near-deadline window of each report (the earliest one on a tie).
    best = (
        near.sort(["_rid", "_window_n", "uploaded_at"], descending=[False, True, False])
        .unique(subset=["_rid"], keep="first", maintain_order=True)
        .select(
            "_rid",
            pl.col("_window_n").alias("burst_items"),
            pl.col("_window_start").alias("burst_start"),
            pl.col("uploaded_at").alias("burst_end"),
            "days_before_due",
        )
    )
    return (
        counts.join(stages, on="_rid", how="inner")
        .join(best, on="_rid", how="left")
        .drop("_rid")
    )


def checks(params: dict[str, Any]) -> list[Check]:
    return [
        Check(
            RULE_ID,
            gx.expectations.ExpectColumnValuesToBeBetween(column="burst_items", max_value=params["min_items"] - 1),
            ENTITY_TYPE,
            "临近节点到期集中突击上传佐证材料",
        )
    ]


def detail(params: dict[str, Any]) -> pl.Expr:
    return pl.struct(
        "burst_items",
        fmt_time(pl.col("burst_start")).alias("burst_start"),
        fmt_time(pl.col("burst_end")).alias("burst_end"),
        ((pl.col("burst_end") - pl.col("burst_start")).dt.total_seconds() / 60).round(1).alias("burst_minutes"),
        pl.col("due_date").cast(pl.String),
        "days_before_due",
        "milestone_id",
        "milestone_inferred",
        "stage",
        "project_id",
        "unit_code",
        pl.col("n_items").alias("items"),
        pl.lit(params["min_items"]).alias("min_items"),
        pl.lit(params["window_minutes"]).alias("window_minutes"),
        pl.lit(params["max_days_before_due"]).alias("max_days_before_due"),
    ).struct.json_encode()
