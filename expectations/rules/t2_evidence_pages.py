"""T2 (report): the evidence pages of the report are far above the norm for its stage (材料堆砌).

Method: total pages of the report's evidence (items without a page count, e.g. photos, count 0) against
a robust fence of its stage — Tukey's fence on log1p(pages), Q3 + k·IQR, from the finest reference
group that is large enough (unit, else source, else city; see `transforms/features_traces.py`). Fires
when the pages exceed max(fence, median + min_excess, median · min_ratio). See docs/rules/T2.md.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from expectations.gx_runner import Check
from expectations.rules.base import (
    REPORTS_WITH_EVIDENCE_FIGURES,
    RuleContext,
    reports_with_evidence_figures,
    within_threshold,
)
from expectations.settings import Param
from transforms.features_traces import fence_detail_fields, robust_fence

RULE_ID = "T2"
ENTITY_TYPE = "report"
ID_COLUMN = "report_id"
SHARES = (REPORTS_WITH_EVIDENCE_FIGURES,)

PARAMS: dict[str, Param] = {
    "scale": Param(
        "log1p",
        "Page totals are heavy-tailed: a sum of document lengths, where one plan or ledger export can run "
        "to dozens of pages. On log1p(pages) the fence is multiplicative, (Q3+1)·((Q3+1)/(Q1+1))^k − 1.",
    ),
    "fence_k": Param(
        1.5,
        "Tukey's outlier fence on the log scale: for log-normal totals it sits ~2.7 sigma above the median "
        "(0.35 % of ordinary reports beyond it before the guards below); a far-out k = 3 there would mean "
        "about (Q3/Q1)^3 · Q3, 20–40x the median, and let hundreds of piled pages through.",
    ),
    "min_excess": Param(
        100,
        "At least 100 pages above the stage median — a thick binder: one ordinary long document (a plan, "
        "a ledger export) adds tens of pages, piling adds hundreds. This guard also keeps the low-page "
        "stages, where the log fence is a few dozen pages, from flagging one long document.",
    ),
    "min_ratio": Param(
        3.0,
        "At least three times the stage median's pages: document length varies more than item counts, so "
        "'far above' asks for more than double.",
    ),
    "min_group_unit": Param(
        50,
        "A unit's own norm only from 50 reports of the stage: page totals are noisy, fewer reports give "
        "unstable quartiles.",
    ),
    "min_group": Param(
        30,
        "A source-wide or city-wide stage norm needs 30 reports; below that, no verdict.",
    ),
}


def features(ctx: RuleContext, params: dict[str, Any]) -> pl.DataFrame:
    frame = reports_with_evidence_figures(ctx)
    return robust_fence(
        frame, "pages", scale=params["scale"], k=params["fence_k"], min_group_unit=params["min_group_unit"],
        min_group=params["min_group"], min_excess=params["min_excess"], min_ratio=params["min_ratio"],
    )


def checks(params: dict[str, Any]) -> list[Check]:
    return [within_threshold(RULE_ID, ENTITY_TYPE, "pages", "佐证材料总页数超过同阶段常态阈值")]


def detail(params: dict[str, Any]) -> pl.Expr:
    return pl.struct(
        "pages",
        pl.col("n_items").alias("items"),
        pl.col("n_paged").alias("items_with_pages"),
        "stage",
        "project_id",
        "unit_code",
        "milestone_id",
        "milestone_inferred",
        *fence_detail_fields(),
        (pl.col("pages") / pl.col("median").clip(lower_bound=1)).round(1).alias("times_median"),
        pl.lit(params["scale"]).alias("scale"),
        pl.lit(params["fence_k"]).alias("fence_k"),
        pl.lit(params["min_excess"]).alias("min_excess"),
        pl.lit(params["min_ratio"]).alias("min_ratio"),
        "by_kind",
    ).struct.json_encode()
