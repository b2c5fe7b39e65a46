"""T6 (milestone): far more stage reports were filed against one milestone than the norm (reporting for
its own sake).

Method: reports per milestone (those linked to it, plus unlinked reports of its project placed on it —
see `transforms/features_traces.py`), over milestones that have at least one report. A robust fence per
stage — Tukey's far-out fence Q3 + k·IQR over the counts (continuous quartiles of counts) — from the
finest reference group large enough (unit, else source, else city). Fires when the count exceeds
max(fence, median + min_excess, median · min_ratio). See docs/rules/T6.md.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from expectations.gx_runner import Check
from expectations.rules.base import RuleContext, within_threshold
from expectations.settings import Param
from transforms.features_traces import fence_detail_fields, fmt_time, report_stages, robust_fence

RULE_ID = "T6"
ENTITY_TYPE = "milestone"
ID_COLUMN = "milestone_id"

PARAMS: dict[str, Param] = {
    "scale": Param(
        "raw",
        "Reports per milestone are small integers (mostly 1–4): on the log scale the gap 1 vs 2 would "
        "dominate the IQR, so the fence is taken on the counts (continuous quartiles). 'log1p' suits a source "
        "with routinely long report series.",
    ),
    "fence_k": Param(
        3.0,
        "Tukey's far-out fence (Q3 + 3·IQR): 'far more than the norm', not merely more.",
    ),
    "min_excess": Param(
        5,
        "At least 5 reports more than the stage median: with medians of 1–3 reports, one or two extra "
        "progress notes are ordinary diligence.",
    ),
    "min_ratio": Param(
        3.0,
        "At least three times the stage median: 'far more than the norm'.",
    ),
    "min_group_unit": Param(
        50,
        "A unit's own norm only from 50 milestones of the stage; counts of 1–4 give coarse quartiles.",
    ),
    "min_group": Param(
        30,
        "A source-wide or city-wide stage norm needs 30 milestones with reports; below that, no verdict.",
    ),
}


def features(ctx: RuleContext, params: dict[str, Any]) -> pl.DataFrame:
    stages = report_stages(ctx.table("stage_reports"), ctx.table("milestones"), ctx.table("projects"))
    per_ms = (
        stages.filter(pl.col("milestone_id").is_not_null())
        .group_by("source_id", "milestone_id")
        .agg(
            pl.len().cast(pl.Int64).alias("n_reports"),
            pl.col("milestone_inferred").sum().cast(pl.Int64).alias("n_inferred"),
            pl.col("stage").first(),
            pl.col("project_id").first(),
            pl.col("unit_code").first(),
            pl.col("due_date").first(),
            pl.col("submitted_at").min().alias("first_report"),
            pl.col("submitted_at").max().alias("last_report"),
        )
    )
    return robust_fence(
        per_ms, "n_reports", scale=params["scale"], k=params["fence_k"], min_group_unit=params["min_group_unit"],
        min_group=params["min_group"], min_excess=params["min_excess"], min_ratio=params["min_ratio"],
    )


def checks(params: dict[str, Any]) -> list[Check]:
    return [within_threshold(RULE_ID, ENTITY_TYPE, "n_reports", "同一节点汇报次数超过同阶段常态阈值")]


def detail(params: dict[str, Any]) -> pl.Expr:
    return pl.struct(
        pl.col("n_reports").alias("reports"),
        pl.col("n_inferred").alias("reports_inferred"),
        "stage",
        "project_id",
        pl.col("due_date").cast(pl.String),
        fmt_time(pl.col("first_report")).alias("first_report"),
        fmt_time(pl.col("last_report")).alias("last_report"),
        *fence_detail_fields(),
        (pl.col("n_reports") / pl.col("median").clip(lower_bound=1)).round(1).alias("times_median"),
        pl.lit(params["scale"]).alias("scale"),
        pl.lit(params["fence_k"]).alias("fence_k"),
        pl.lit(params["min_excess"]).alias("min_excess"),
        pl.lit(params["min_ratio"]).alias("min_ratio"),
    ).struct.json_encode()
