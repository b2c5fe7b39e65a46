"""F7 (milestone): a milestone is marked completed, or a report against it claims 100 %, with no outcome
evidence (document, ledger) among the evidence of its reports.

`outcome_items` counts the outcome evidence attached to the reports filed against the milestone; GX
expects at least `min_outcome_items` for every claimed milestone.

Exclusions: a source that delivered no evidence at all (a missing table is C1's business) gives no
verdict; a milestone of a project that does not exist is C3's; open milestones with no 100 % claim are
not judged.
"""

from __future__ import annotations

import great_expectations as gx
import polars as pl

from expectations.gx_runner import Check
from expectations.rules.base import RuleContext
from expectations.settings import Param
from transforms.features_fabrication import ts_json
from transforms.schema import OUTCOME_EVIDENCE

RULE_ID = "F7"
ENTITY_TYPE = "milestone"
ID_COLUMN = "milestone_id"

PARAMS: dict[str, Param] = {
    "min_outcome_items": Param(1, "A finished stage leaves at least one outcome document or ledger; "
                                  "photos and sign-in sheets show activity, not results."),
    "complete_pct": Param(100.0, "A report at this progress claims the work is done."),
    "outcome_kinds": Param(list(OUTCOME_EVIDENCE), "The contract's outcome evidence kinds."),
}


def features(ctx: RuleContext, params: dict) -> pl.DataFrame:
    # A milestone's reports and their evidence are all in its source: source by source, as the evidence is read.
    return ctx.by_source(lambda one: _source_features(one, params), columns={"evidence": ["report_id", "kind"]})


def _source_features(ctx: RuleContext, params: dict) -> pl.DataFrame:
    reports = ctx.table("stage_reports").filter(pl.col("milestone_id").is_not_null())
    ev = ctx.table("evidence")
    per_report = ev.group_by("source_id", "report_id").agg(
        pl.len().alias("items"), pl.col("kind").is_in(params["outcome_kinds"]).sum().alias("outcome"))
    per_ms = (
        reports.select("source_id", "report_id", "milestone_id", "progress_pct")
        .join(per_report, on=["source_id", "report_id"], how="left")
        .group_by("source_id", "milestone_id")
        .agg(pl.len().alias("reports"), pl.col("items").fill_null(0).sum().alias("evidence_items"),
             pl.col("outcome").fill_null(0).sum().alias("outcome_items"),
             pl.col("progress_pct").max().alias("max_progress"),
             pl.col("report_id").filter(pl.col("progress_pct") >= params["complete_pct"]).first()
             .alias("complete_report_id"))
    )
    with_evidence = ev.select("source_id").unique()
    f = (
        ctx.table("milestones").select("source_id", "milestone_id", "project_id", "stage", "due_date", "completed_at")
        .join(with_evidence, on="source_id", how="semi")
        .join(ctx.table("projects").select("source_id", "project_id"), on=["source_id", "project_id"], how="semi")
        .join(per_ms, on=["source_id", "milestone_id"], how="left")
        .with_columns(pl.col(c).fill_null(0) for c in ("reports", "evidence_items", "outcome_items"))
    )
    claimed = pl.col("completed_at").is_not_null() | (pl.col("max_progress") >= params["complete_pct"]).fill_null(False)
    return f.filter(claimed)


def checks(params: dict) -> list[Check]:
    return [
        Check(RULE_ID, gx.expectations.ExpectColumnValuesToBeBetween(
            column="outcome_items", min_value=params["min_outcome_items"]), ENTITY_TYPE,
            "节点已完成或进度100%，但无成果类佐证材料"),
    ]


def detail(params: dict) -> pl.Expr:
    return pl.struct(
        "project_id",
        "stage",
        ts_json("completed_at").alias("completed_at"),
        "complete_report_id",
        "max_progress",
        "reports",
        "evidence_items",
        "outcome_items",
        pl.lit(params["outcome_kinds"]).alias("outcome_kinds"),
    ).struct.json_encode()
