"""project_health (项目体检): where every project stands as of the business date.

Grain: one row per project — (source_id, project_id).

Definitions (see also the conventions in `warehouse.marts`):

* current_stage: the earliest stage (initiation < implementation < interim_result < acceptance) that
  has a milestone not yet completed; "acceptance" when every milestone is completed; NULL when the
  project has no milestones at all.
* progress_pct: progress of the latest stage report (by submitted_at, then report_id) that states one.
* next_due_date: the earliest due date among the open milestones (it may be in the past: then the
  project is overdue); NULL when none is open.
* days_overdue: as_of − the due date of the earliest overdue open milestone; 0 when none.
* milestones_on_time / milestones_late: completed on or before due date / completed after it or still
  open past it. Open milestones not yet due count in neither.

health_score (0–100, float), a deliberately simple formula for now:

    100 − 10 × milestones_late − min(days_overdue, 30) − 5 × flags_traces − 15 × flags_fabrication

clipped to [0, 100]. rag: green when health_score ≥ 80, amber when ≥ 60, red below 60.
"""

from __future__ import annotations

import polars as pl

from transforms.schema import STAGES
from warehouse.marts import MartInputs, conform, milestone_facts, project_flags, reports_as_of, with_as_of

NAME = "project_health"

GREEN_AT = 80.0
AMBER_AT = 60.0

COLUMNS: dict[str, tuple[pl.DataType, str]] = {
    "as_of": (pl.Date(), "business date the health check describes"),
    "source_id": (pl.String(), "data source (registry id) of the project"),
    "project_id": (pl.String(), "the source's project id"),
    "project_code": (pl.String(), "the project's own code, as the source writes it"),
    "title": (pl.String(), "project title"),
    "unit_code": (pl.String(), "responsible unit"),
    "owner_id": (pl.String(), "responsible person (责任人)"),
    "status": (pl.String(), "project status: planning, in_progress, completed, suspended, cancelled"),
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
    "reports_filed": (pl.Int64(), "stage reports submitted on or before as_of"),
    "flags_traces": (pl.Int64(), "traces-family flags on the project or its milestones, reports, evidence"),
    "flags_fabrication": (
        pl.Int64(),
        "fabrication-family flags on the project or its milestones, reports, evidence",
    ),
    "health_score": (pl.Float64(), "0–100: 100 − 10·late − min(days_overdue,30) − 5·traces − 15·fabrication"),
    "rag": (pl.String(), "green (score ≥ 80) / amber (≥ 60) / red"),
}

KEYS: tuple[str, ...] = ("source_id", "project_id")

_STAGE_RANK = {s: i for i, s in enumerate(STAGES)}


def build(ctx: MartInputs) -> pl.DataFrame:
    as_of = pl.lit(ctx.as_of, dtype=pl.Date())
    projects = ctx.table("projects").select(
        "source_id", "project_id", "project_code", "title", "unit_code", "owner_id", "status"
    )
    ms = milestone_facts(ctx).with_columns(
        stage_rank=pl.col("stage").replace_strict(_STAGE_RANK, default=len(STAGES), return_dtype=pl.Int64)
    )
    open_ms = ~pl.col("is_completed")
    per_ms = ms.group_by("source_id", "project_id").agg(
        milestones_total=pl.len().cast(pl.Int64),
        milestones_completed=pl.col("is_completed").sum().cast(pl.Int64),
        milestones_on_time=pl.col("is_on_time").sum().cast(pl.Int64),
        milestones_late=pl.col("is_late").sum().cast(pl.Int64),
        first_open_rank=pl.col("stage_rank").filter(open_ms).min(),
        next_due_date=pl.col("due_date").filter(open_ms).min(),
        first_overdue=pl.col("due_date").filter(pl.col("is_overdue")).min(),
    )
    reports = reports_as_of(ctx)
    latest_progress = (
        reports.filter(pl.col("progress_pct").is_not_null())
        .sort("source_id", "project_id", "submitted_at", "report_id")
        .group_by("source_id", "project_id", maintain_order=True)
        .agg(progress_pct=pl.col("progress_pct").last())
    )
    filed = reports.group_by("source_id", "project_id").agg(reports_filed=pl.len().cast(pl.Int64))

    keys = ["source_id", "project_id"]
    df = (
        projects.lazy()
        .join(per_ms.lazy(), on=keys, how="left")
        .join(latest_progress.lazy(), on=keys, how="left")
        .join(filed.lazy(), on=keys, how="left")
        .join(project_flags(ctx).lazy(), on=keys, how="left")
        .with_columns(
            pl.col(c).fill_null(0)
            for c in (
                "milestones_total",
                "milestones_completed",
                "milestones_on_time",
                "milestones_late",
                "reports_filed",
                "flags_traces",
                "flags_fabrication",
            )
        )
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
        )
        .with_columns(
            health_score=(
                100.0
                - 10.0 * pl.col("milestones_late")
                - pl.col("days_overdue").clip(upper_bound=30)
                - 5.0 * pl.col("flags_traces")
                - 15.0 * pl.col("flags_fabrication")
            ).clip(0.0, 100.0)
        )
        .with_columns(
            rag=pl.when(pl.col("health_score") >= GREEN_AT)
            .then(pl.lit("green"))
            .when(pl.col("health_score") >= AMBER_AT)
            .then(pl.lit("amber"))
            .otherwise(pl.lit("red"))
        )
        .collect()
    )
    return conform(with_as_of(df, ctx.as_of), COLUMNS, KEYS)
