"""project_health (项目体检): where every project stands as of the business date, and how healthy it is.

Grain: one row per project — (source_id, project_id).

Definitions (see also the conventions in `warehouse.marts` and the components in `warehouse.marts.scoring`):

* current_stage: the earliest stage (initiation < implementation < interim_result < acceptance) that
  has a milestone not yet completed; "acceptance" when every milestone is completed; NULL when the
  project has no milestones at all.
* progress_pct: progress of the latest stage report (by submitted_at, then report_id) that states one.
* next_due_date: the earliest due date among the open milestones (it may be in the past: then the
  project is overdue); NULL when none is open.
* days_overdue: as_of − the due date of the earliest overdue open milestone; 0 when none.
* milestones_on_time / milestones_late: completed on or before due date / completed after it or still
  open past it. Open milestones not yet due count in neither.

health_score (0–100) is the weighted mean of four components (each a column, each 0–100, NULL when there
is nothing to judge; weights renormalized over the defined ones; weights in `scoring.PROJECT_HEALTH`):

* schedule_score (w 35): timeliness of milestones — 100 × on-time share of decided milestones, minus 1
  point per day the overdue ones are late on average (at most 30).
* management_score (w 15): regular, timely reporting — mean of the share of decided milestones with a
  report filed against them on or before their due date and, for an in-progress project, the freshness of
  its last report (of its planned start while nothing is reported yet): full up to 60 days, 0 at 180.
* completion_quality_score (w 20): outcome evidence behind what is claimed complete — completed milestones
  with a document/ledger on a report against them, over completed milestones (+1 when the project is
  marked completed without a completed acceptance milestone).
* integrity_score (w 30): 100 − 15 per fabrication flag − 5 per traces flag (F7 excluded: it is what
  completion_quality measures).

rag, on the meaning of the UK Infrastructure and Projects Authority's delivery confidence scale:

* green — delivery on time and to quality highly likely, no major outstanding issue: health_score ≥ 80,
  no fabrication flag, nothing 90+ days overdue.
* amber — delivery feasible but significant issues need management attention: 60 ≤ score < 80, or a
  green-scoring project with a fabrication flag.
* red — delivery in doubt without urgent action: score < 60, or a milestone open 90+ days past due.

`rag_reason` says which rule decided. `health_score_change` compares with the previous partition in the
warehouse (NULL on the first night, or for a project new since then).
"""

from __future__ import annotations

import polars as pl

from transforms.schema import STAGES
from warehouse.marts import (
    MartInputs,
    conform,
    previous,
    project_facts,
    reports_as_of,
    scoring,
    with_as_of,
)

NAME = "project_health"

COLUMNS: dict[str, tuple[pl.DataType, str]] = {
    "as_of": (pl.Date(), "business date the health check describes"),
    "source_id": (pl.String(), "data source (registry id) of the project"),
    "project_id": (pl.String(), "the source's project id"),
    "project_code": (pl.String(), "the project's own code, as the source writes it"),
    "title": (pl.String(), "project title"),
    "category": (pl.String(), "project category, as the source writes it"),
    "unit_code": (pl.String(), "responsible unit"),
    "owner_id": (pl.String(), "responsible person (责任人)"),
    "leader_id": (pl.String(), "responsible leader (责任领导); NULL when none is named"),
    "status": (pl.String(), "project status: planning, in_progress, completed, suspended, cancelled"),
    "planned_end": (pl.Date(), "planned end date of the project"),
    "current_stage": (
        pl.String(),
        "earliest stage with an open milestone; acceptance when all are done; NULL without milestones",
    ),
    "progress_pct": (pl.Float64(), "progress stated by the latest stage report that states one"),
    "next_due_date": (pl.Date(), "earliest due date among open milestones (past when overdue)"),
    "days_overdue": (pl.Int64(), "as_of − due date of the earliest overdue open milestone; 0 if none"),
    "milestones_total": (pl.Int64(), "milestones of the project"),
    "milestones_completed": (pl.Int64(), "milestones completed on or before as_of"),
    "milestones_on_time": (pl.Int64(), "milestones completed on or before their due date"),
    "milestones_late": (pl.Int64(), "milestones completed after their due date, or open and past it"),
    "milestones_overdue": (pl.Int64(), "open milestones past their due date (a subset of late)"),
    "milestones_reported_on_time": (
        pl.Int64(),
        "decided milestones with a stage report against them filed on or before their due date",
    ),
    "milestones_backed": (
        pl.Int64(),
        "completed milestones with outcome evidence (document, ledger) on a report against them",
    ),
    "reports_filed": (pl.Int64(), "stage reports submitted on or before as_of"),
    "last_report_on": (pl.Date(), "local date of the latest stage report up to as_of; NULL if none"),
    "days_since_last_report": (pl.Int64(), "as_of − last_report_on; NULL if no report"),
    "flags_traces": (pl.Int64(), "traces-family flags on the project or its milestones, reports, evidence"),
    "flags_fabrication": (
        pl.Int64(),
        "fabrication-family flags on the project or its milestones, reports, evidence",
    ),
    "flags_deadline": (pl.Int64(), "deadline-family flags (D1, D2) on the project's milestones"),
    "flags_contract": (pl.Int64(), "contract-family flags (C2, C3) on the project or its records"),
    "flags_critical": (pl.Int64(), "flags of any family with severity critical"),
    "rules_fired": (pl.List(pl.String()), "distinct rule ids that fired on the project or its records"),
    "schedule_score": (
        pl.Float64(),
        "0–100 timeliness: 100 × on-time share of decided milestones − mean days overdue (capped); "
        "NULL when none decided",
    ),
    "management_score": (
        pl.Float64(),
        "0–100 reporting: mean of on-time-reported share and freshness of the last report (active projects)",
    ),
    "completion_quality_score": (
        pl.Float64(),
        "0–100 share of completions backed by outcome evidence; NULL when nothing is completed",
    ),
    "integrity_score": (pl.Float64(), "0–100: 100 − 15 per fabrication flag − 5 per traces flag (F7 excluded)"),
    "health_score": (pl.Float64(), "0–100 weighted mean of the four component scores (weights in scoring.py)"),
    "rag": (pl.String(), "green / amber / red delivery confidence (cut-offs and overrides in scoring.py)"),
    "rag_reason": (pl.String(), "the rule that set rag, with its figures"),
    "prev_as_of": (pl.Date(), "as_of of the previous health check in the warehouse; NULL if none"),
    "health_score_change": (pl.Float64(), "health_score − the previous health check's; NULL if none"),
}

KEYS: tuple[str, ...] = ("source_id", "project_id")


def components(p: dict, per: str | None = None) -> dict[str, pl.Expr]:
    """The four component expressions over pooled counts (see `warehouse.marts.project_facts`)."""
    return {
        "schedule_score": scoring.schedule(p),
        "management_score": scoring.management(p),
        "completion_quality_score": scoring.completion_quality(),
        "integrity_score": scoring.integrity(p, per),
    }


def weights(p: dict) -> dict[str, float]:
    return {
        "schedule_score": p["w_schedule"],
        "management_score": p["w_management"],
        "completion_quality_score": p["w_completion_quality"],
        "integrity_score": p["w_integrity"],
    }


def rag(p: dict) -> tuple[pl.Expr, pl.Expr]:
    """(rag, rag_reason) from health_score, days_overdue and flags_fabrication."""
    score = pl.col("health_score")
    shown = score.round(1).cast(pl.String)
    overdue_red = pl.col("days_overdue") >= p["red_overdue_days"]
    fab = (pl.col("flags_fabrication") > 0) & pl.lit(bool(p["fabrication_blocks_green"]))
    value = (
        pl.when(overdue_red)
        .then(pl.lit("red"))
        .when(score >= p["green_at"])
        .then(pl.when(fab).then(pl.lit("amber")).otherwise(pl.lit("green")))
        .when(score >= p["amber_at"])
        .then(pl.lit("amber"))
        .otherwise(pl.lit("red"))
    )
    reason = (
        pl.when(overdue_red)
        .then(pl.format("overdue {} days ≥ {}", pl.col("days_overdue"), pl.lit(p["red_overdue_days"])))
        .when((score >= p["green_at"]) & fab)
        .then(pl.format("score {} ≥ {} but {} fabrication flag(s)", shown, pl.lit(p["green_at"]),
                        pl.col("flags_fabrication")))
        .when(score >= p["green_at"])
        .then(pl.format("score {} ≥ {}", shown, pl.lit(p["green_at"])))
        .when(score >= p["amber_at"])
        .then(pl.format("score {} in [{}, {})", shown, pl.lit(p["amber_at"]), pl.lit(p["green_at"])))
        .otherwise(pl.format("score {} < {}", shown, pl.lit(p["amber_at"])))
    )
    return value, reason


def build(ctx: MartInputs) -> pl.DataFrame:
    p = scoring.mart_params(NAME)
    as_of = pl.lit(ctx.as_of, dtype=pl.Date())
    keys = ["source_id", "project_id"]
    projects = ctx.table("projects").select(
        "source_id", "project_id", "project_code", "title", "category", "planned_end"
    )
    latest_progress = (
        reports_as_of(ctx)
        .filter(pl.col("progress_pct").is_not_null())
        .sort("source_id", "project_id", "submitted_at", "report_id")
        .group_by("source_id", "project_id", maintain_order=True)
        .agg(progress_pct=pl.col("progress_pct").last())
    )
    comps = components(p)
    w = weights(p)
    rag_value, rag_reason = rag(p)
    df = (
        project_facts(ctx)
        .lazy()
        .join(projects.lazy(), on=keys, how="left")
        .join(latest_progress, on=keys, how="left")
        .with_columns(
            current_stage=pl.when(pl.col("milestones_total") == 0)
            .then(None)
            .when(pl.col("first_open_rank").is_null())
            .then(pl.lit("acceptance"))
            .otherwise(
                pl.col("first_open_rank").replace_strict(
                    dict(enumerate(STAGES)), default=None, return_dtype=pl.String
                )
            ),
            days_overdue=pl.when(pl.col("first_overdue").is_not_null())
            .then((as_of - pl.col("first_overdue")).dt.total_days())
            .otherwise(0)
            .cast(pl.Int64),
            freshness=scoring.freshness(p),
        )
        .with_columns(**{name: e.round(2) for name, e in comps.items()})
        .with_columns(
            health_score=scoring.weighted_score({n: (pl.col(n), w[n]) for n in comps}),
        )
        .with_columns(rag=rag_value, rag_reason=rag_reason)
        .join(
            previous(ctx, NAME, keys, {"health_score": "prev_health_score"}).lazy(), on=keys, how="left"
        )
        .with_columns(health_score_change=(pl.col("health_score") - pl.col("prev_health_score")).round(2))
        .collect()
    )
    return conform(with_as_of(df, ctx.as_of), COLUMNS, KEYS)
