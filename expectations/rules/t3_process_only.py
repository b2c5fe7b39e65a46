"""T3 (report): process traces (photo, sign_in_sheet, meeting_minutes) make up nearly all of a sizeable
evidence set, and no outcome evidence (document, ledger) is attached.

Method: per report, the number of items, the process items and the outcome items (kinds from
`transforms.schema.PROCESS_EVIDENCE` / `OUTCOME_EVIDENCE`). A report is eligible when its set is
sizeable (at least `min_items`) and carries no outcome item; GX expects the process share of an eligible
report to stay below `min_process_share` (the share from which it fires). Ineligible reports have no
share to judge (NULL). See docs/rules/T3.md.
"""

from __future__ import annotations

from typing import Any

import great_expectations as gx
import polars as pl

from expectations.gx_runner import Check
from expectations.rules.base import REPORTS_WITH_EVIDENCE_FIGURES, RuleContext, reports_with_evidence_figures
from expectations.settings import Param

RULE_ID = "T3"
ENTITY_TYPE = "report"
ID_COLUMN = "report_id"
SHARES = (REPORTS_WITH_EVIDENCE_FIGURES,)

PARAMS: dict[str, Param] = {
    "min_items": Param(
        8,
        "A sizeable set: 8 items is above the usual report of any stage (medians 3–7). Three photos of a "
        "meeting are a normal small report, not form over substance.",
    ),
    "min_process_share": Param(
        0.9,
        "'Nearly all': 90 % or more of the items are photos, sign-in sheets or minutes (one video or "
        "'other' file in ten does not rescue the set).",
    ),
}


def features(ctx: RuleContext, params: dict[str, Any]) -> pl.DataFrame:
    frame = reports_with_evidence_figures(ctx).filter(pl.col("n_items") > 0)
    share = pl.col("n_process") / pl.col("n_items")
    eligible = (pl.col("n_items") >= params["min_items"]) & (pl.col("n_outcome") == 0)
    return frame.with_columns(
        share.round(3).alias("process_share"),
        pl.when(eligible).then(share).otherwise(None).alias("process_share_judged"),
    )


def checks(params: dict[str, Any]) -> list[Check]:
    return [
        Check(
            RULE_ID,
            gx.expectations.ExpectColumnValuesToBeBetween(
                column="process_share_judged", max_value=params["min_process_share"], strict_max=True,
            ),
            ENTITY_TYPE,
            "过程留痕占比过高且无成果材料",
        )
    ]


def detail(params: dict[str, Any]) -> pl.Expr:
    return pl.struct(
        pl.col("n_items").alias("items"),
        pl.col("n_process").alias("process_items"),
        pl.col("n_outcome").alias("outcome_items"),
        "process_share",
        "stage",
        "project_id",
        "unit_code",
        "milestone_id",
        pl.lit(params["min_items"]).alias("min_items"),
        pl.lit(params["min_process_share"]).alias("min_process_share"),
        "by_kind",
    ).struct.json_encode()
