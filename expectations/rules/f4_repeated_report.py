"""F4 (report): the report repeats the previous report of its project — same progress, same metric
names and values — again and again.

Each report's content is its progress and its metrics (name = value, sorted). A report identical to the
previous report of its project (filing order) continues a run; `identical_run_length` (the run's
length, original included) is set on the repeats. GX expects at most `min_run - 1`: one repeat can be an
honest "nothing changed this period"; from the second one on, every repeat of the run is flagged.

No verdict for a report without a stated progress or without metrics (nothing to compare).
"""

from __future__ import annotations

import great_expectations as gx
import polars as pl

from expectations.gx_runner import Check
from expectations.rules.base import RuleContext
from expectations.settings import Param
from transforms.features_fabrication import report_sequence, ts_json

RULE_ID = "F4"
ENTITY_TYPE = "report"
ID_COLUMN = "report_id"

PARAMS: dict[str, Param] = {
    "min_run": Param(3, "A report, then one identical report, can be a quiet period; the original and two "
                        "identical copies in a row is copying forward, not reporting."),
}


def features(ctx: RuleContext, params: dict) -> pl.DataFrame:
    # A project's reports and their metrics are all in its source: source by source, as metrics are read.
    return ctx.by_source(lambda one: _source_features(one, params),
                         columns={"metrics": ["report_id", "metric_name", "metric_value"]})


def _source_features(ctx: RuleContext, params: dict) -> pl.DataFrame:
    metrics = (
        ctx.table("metrics").filter(pl.col("metric_value").is_not_null())
        .sort("source_id", "report_id", "metric_name", "metric_value")
        .group_by("source_id", "report_id")
        .agg(pl.format("{}={}", "metric_name", pl.col("metric_value").round(6)).str.join(";").alias("metrics"),
             pl.len().alias("n_metrics"))
    )
    seq = report_sequence(
        ctx.table("stage_reports").select("source_id", "report_id", "project_id", "submitted_at", "progress_pct")
    ).join(metrics, on=["source_id", "report_id"], how="left", maintain_order="left")
    sig = pl.when(pl.col("progress_pct").is_not_null() & pl.col("metrics").is_not_null()).then(
        pl.concat_str(pl.col("progress_pct").round(6).cast(pl.String), pl.lit("|"), "metrics"))
    # The reports are in filing order project by project (`report_sequence`): a report repeats the row
    # before it when that row is of its project and says the same, and each run of repeats, numbered
    # down the whole frame, is one group (a window over one integer, not over the project's keys).
    same_project = (pl.col("source_id") == pl.col("source_id").shift(1)) & (
        pl.col("project_id") == pl.col("project_id").shift(1))
    f = seq.with_columns(sig.alias("_sig")).with_columns(
        (same_project & (pl.col("_sig") == pl.col("_sig").shift(1))).fill_null(False).alias("_repeat"),
    ).with_columns(
        (~pl.col("_repeat")).cum_sum().alias("_run"),
    )
    f = f.with_columns(
        pl.len().over("_run").alias("_len"),
        pl.col("report_id").first().over("_run").alias("run_first_report_id"),
        ts_json(pl.col("submitted_at").first().over("_run")).alias("run_first_submitted_at"),
        pl.int_range(pl.len()).over("_run").alias("position_in_run"),
    )
    return f.filter(pl.col("_repeat")).with_columns(pl.col("_len").alias("identical_run_length")).drop(
        "_sig", "_repeat", "_run", "_len")


def checks(params: dict) -> list[Check]:
    return [
        Check(RULE_ID, gx.expectations.ExpectColumnValuesToBeBetween(
            column="identical_run_length", max_value=params["min_run"] - 1), ENTITY_TYPE,
            "连续多次汇报的进度与指标完全相同"),
    ]


def detail(params: dict) -> pl.Expr:
    return pl.struct(
        "project_id",
        "identical_run_length",
        "position_in_run",
        pl.lit(params["min_run"]).alias("min_run"),
        "prev_report_id",
        "run_first_report_id",
        "run_first_submitted_at",
        ts_json("submitted_at").alias("submitted_at"),
        "progress_pct",
        "n_metrics",
        "metrics",
    ).struct.json_encode()
