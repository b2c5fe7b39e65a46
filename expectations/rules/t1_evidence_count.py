"""T1 (report): the report carries far more evidence items than reports of the same stage normally do.

Method: the number of evidence items of every report (0 when it has none) is compared with a robust
fence of its stage — Tukey's far-out fence Q3 + k·IQR over the counts (continuous quartiles of
counts), built from the finest reference group that is large enough (same unit, else same source,
else the whole city; see `transforms/features_traces.py`). The report fires when its item count exceeds the threshold
max(fence, median + min_excess, median · min_ratio). See docs/rules/T1.md.
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

RULE_ID = "T1"
ENTITY_TYPE = "report"
ID_COLUMN = "report_id"
SHARES = (REPORTS_WITH_EVIDENCE_FIGURES,)

PARAMS: dict[str, Param] = {
    "scale": Param(
        "raw",
        "Item counts are small integers with a moderate right skew (a report has 1–15 items). On the log "
        "scale 1 vs 2 items is a wider gap than 20 vs 30, so the IQR — and the fence — would hinge on the "
        "bottom quartile; Tukey on the counts themselves (continuous quartiles of counts) is stable. Set "
        "'log1p' for a source whose counts are heavy-tailed.",
    ),
    "fence_k": Param(
        3.0,
        "Tukey's far-out fence (Q3 + 3·IQR): beyond it a value is 'far out', not merely unusual; it lands "
        "at 3–5x the stage median for the usual spread of counts.",
    ),
    "min_excess": Param(
        10,
        "At least 10 items above the stage median: where nearly every report has the same 2–4 items the "
        "IQR is ~0 and a fence alone would flag 5 against 3; ten extra files is a pile someone assembled.",
    ),
    "min_ratio": Param(
        2.0,
        "At least twice the stage median: 'far more than normal' in plain words, also when a stage's "
        "counts are tightly bunched (a narrow IQR around a large median).",
    ),
    "min_group_unit": Param(
        50,
        "A unit's own norm is used only when it has 50 reports of the stage: a unit's fence replaces a "
        "better-estimated source-wide one, so it must be about as stable; with fewer reports its quartiles "
        "swing by whole items.",
    ),
    "min_group": Param(
        30,
        "A source-wide or city-wide stage norm needs 30 reports; below that no verdict is given (the "
        "quartiles of fewer reports do not describe a norm).",
    ),
}


def features(ctx: RuleContext, params: dict[str, Any]) -> pl.DataFrame:
    frame = reports_with_evidence_figures(ctx)
    return robust_fence(
        frame, "n_items", scale=params["scale"], k=params["fence_k"], min_group_unit=params["min_group_unit"],
        min_group=params["min_group"], min_excess=params["min_excess"], min_ratio=params["min_ratio"],
    )


def checks(params: dict[str, Any]) -> list[Check]:
    return [within_threshold(RULE_ID, ENTITY_TYPE, "n_items", "佐证材料件数超过同阶段常态阈值")]


def detail(params: dict[str, Any]) -> pl.Expr:
    return pl.struct(
        pl.col("n_items").alias("items"),
        "stage",
        "project_id",
        "unit_code",
        "milestone_id",
        "milestone_inferred",
        *fence_detail_fields(),
        (pl.col("n_items") / pl.col("median").clip(lower_bound=1)).round(1).alias("times_median"),
        pl.lit(params["scale"]).alias("scale"),
        pl.lit(params["fence_k"]).alias("fence_k"),
        pl.lit(params["min_excess"]).alias("min_excess"),
        pl.lit(params["min_ratio"]).alias("min_ratio"),
        "pages",
        "by_kind",
    ).struct.json_encode()
