"""unit_scorecard (单位评价): how each unit is doing, ranked among units of its kind.

Grain: one row per unit — (source_id, unit_code) — every unit in silver `units`.

Definitions (conventions in `warehouse.marts`):

* projects: projects whose responsible unit this is (all statuses).
* completion_rate: completed / (projects − cancelled); NULL when no non-cancelled project.
* overdue_rate: share of the unit's in-progress/planning/suspended projects (i.e. neither completed nor
  cancelled) with at least one overdue milestone; NULL when there is none such.
* problems_found / rectified / transferred: problems assigned to the unit (found on or before as_of) and
  how many have status rectified / transferred.
* flag_rate: traces + fabrication flags attributed to the unit's projects, plus those raised on the unit
  itself (F5), per project; NULL when the unit has no project.

* problems_open / problems_overdue: still open / open past the deadline (the ledger: every problem has an
  owner, a deadline and an answer — rectified, or transferred as a disciplinary lead).
* avg_health_score: mean project_health.health_score of the unit's non-cancelled projects.

score (0–100, float): a weighted mean of the components that are defined for the unit, with weights
renormalized over the defined ones (a unit without projects is judged on its problems only); weights in
`scoring.UNIT_SCORECARD`:

    completion_rate × 25 + (1 − overdue_rate) × 25 + closure × 20 + (1 − min(flag_rate, 1)) × 15
        + avg_health_score / 100 × 15

where closure = (rectified + transferred) / problems_found (NULL when none found). NULL when no component
is defined. score_change compares with the previous scorecard in the warehouse.

rank: within unit_kind, across all sources, 1 = best: by score descending, NULL scores last, ties broken
by source_id then unit_code (ascending).
"""

from __future__ import annotations

import polars as pl

from warehouse.marts import MartInputs, conform, milestone_facts, previous, project_flags, scoring, with_as_of
from warehouse.marts import project_health as ph

NAME = "unit_scorecard"

COLUMNS: dict[str, tuple[pl.DataType, str]] = {
    "as_of": (pl.Date(), "business date the scorecard describes"),
    "source_id": (pl.String(), "data source (registry id) of the unit"),
    "unit_code": (pl.String(), "the source's unit code"),
    "unit_name": (pl.String(), "unit name"),
    "unit_kind": (pl.String(), "district, department, town or village; ranks are within a kind"),
    "projects": (pl.Int64(), "projects the unit is responsible for"),
    "projects_completed": (pl.Int64(), "of which completed"),
    "projects_overdue": (pl.Int64(), "open projects with at least one overdue milestone"),
    "completion_rate": (pl.Float64(), "completed / non-cancelled projects; NULL if none"),
    "overdue_rate": (
        pl.Float64(),
        "overdue / open (not completed, not cancelled) projects; NULL if none open",
    ),
    "problems_found": (pl.Int64(), "problems assigned to the unit, found on or before as_of"),
    "problems_rectified": (pl.Int64(), "of which rectified"),
    "problems_transferred": (pl.Int64(), "of which transferred (e.g. as disciplinary leads, 问题线索移交)"),
    "problems_open": (pl.Int64(), "of which still open"),
    "problems_overdue": (pl.Int64(), "of which open past their rectification deadline"),
    "closure_rate": (pl.Float64(), "(rectified + transferred) / found; NULL when none found"),
    "flags": (pl.Int64(), "traces + fabrication flags on the unit's projects and on the unit itself"),
    "flag_rate": (pl.Float64(), "flags per project; NULL when the unit has no project"),
    "avg_health_score": (pl.Float64(), "mean project_health.health_score of non-cancelled projects"),
    "projects_red": (pl.Int64(), "projects rated red in project_health"),
    "score": (pl.Float64(), "0–100 weighted mean of defined components (see module docstring)"),
    "rank": (pl.Int64(), "rank within unit_kind across sources, 1 = best; ties by source_id, unit_code"),
    "units_in_kind": (pl.Int64(), "units of this kind ranked (rank is out of this many)"),
    "prev_as_of": (pl.Date(), "as_of of the previous scorecard in the warehouse; NULL if none"),
    "score_change": (pl.Float64(), "score − the previous scorecard's score; NULL if none"),
}

KEYS: tuple[str, ...] = ("source_id", "unit_code")


def build(ctx: MartInputs) -> pl.DataFrame:
    p = scoring.mart_params(NAME)
    as_of = pl.lit(ctx.as_of, dtype=pl.Date())
    keys = ["source_id", "unit_code"]
    units = ctx.table("units").select("source_id", "unit_code", "unit_name", "unit_kind")
    projects = ctx.table("projects").select("source_id", "project_id", "unit_code", "status")

    overdue_projects = (
        milestone_facts(ctx)
        .filter(pl.col("is_overdue"))
        .select("source_id", "project_id")
        .unique()
        .with_columns(has_overdue=pl.lit(True))
    )
    pflags = project_flags(ctx).with_columns(n=pl.col("flags_traces") + pl.col("flags_fabrication"))
    is_open = ~pl.col("status").is_in(["completed", "cancelled"])
    per_project = (
        projects.join(overdue_projects, on=["source_id", "project_id"], how="left")
        .join(pflags.select("source_id", "project_id", "n"), on=["source_id", "project_id"], how="left")
        .group_by(keys)
        .agg(
            projects=pl.len().cast(pl.Int64),
            projects_completed=(pl.col("status") == "completed").sum().cast(pl.Int64),
            not_cancelled=(pl.col("status") != "cancelled").sum().cast(pl.Int64),
            open_projects=is_open.sum().cast(pl.Int64),
            projects_overdue=(is_open & pl.col("has_overdue").fill_null(False)).sum().cast(pl.Int64),
            project_flags=pl.col("n").fill_null(0).sum().cast(pl.Int64),
        )
    )
    unit_flags = (
        ctx.flag_frame()
        .filter((pl.col("entity_type") == "unit") & pl.col("family").is_in(["traces", "fabrication"]))
        .group_by("source_id", pl.col("entity_id").alias("unit_code"))
        .agg(unit_flags=pl.len().cast(pl.Int64))
    )
    problems = (
        ctx.table("problems")
        .filter(pl.col("found_at").is_null() | (pl.col("found_at") <= as_of))
        .group_by(keys)
        .agg(
            problems_found=pl.len().cast(pl.Int64),
            problems_rectified=(pl.col("status") == "rectified").sum().cast(pl.Int64),
            problems_transferred=(pl.col("status") == "transferred").sum().cast(pl.Int64),
            problems_open=(pl.col("status") == "open").sum().cast(pl.Int64),
            problems_overdue=(
                (pl.col("status") == "open") & pl.col("deadline").is_not_null() & (pl.col("deadline") < as_of)
            )
            .sum()
            .cast(pl.Int64),
        )
    )
    health = (
        ph.build(ctx)
        .filter(pl.col("status") != "cancelled")
        .group_by(keys)
        .agg(
            avg_health_score=pl.col("health_score").mean(),
            projects_red=(pl.col("rag") == "red").sum().cast(pl.Int64),
        )
    )
    counts = (
        "projects",
        "projects_completed",
        "not_cancelled",
        "open_projects",
        "projects_overdue",
        "project_flags",
        "unit_flags",
        "problems_found",
        "problems_rectified",
        "problems_transferred",
        "problems_open",
        "problems_overdue",
        "projects_red",
    )
    df = (
        units.join(per_project, on=keys, how="left")
        .join(unit_flags, on=keys, how="left")
        .join(problems, on=keys, how="left")
        .join(health, on=keys, how="left")
        .with_columns(pl.col(c).fill_null(0).cast(pl.Int64) for c in counts)
        .with_columns(
            flags=pl.col("project_flags") + pl.col("unit_flags"),
            completion_rate=pl.when(pl.col("not_cancelled") > 0).then(
                pl.col("projects_completed") / pl.col("not_cancelled")
            ),
            overdue_rate=pl.when(pl.col("open_projects") > 0).then(
                pl.col("projects_overdue") / pl.col("open_projects")
            ),
            closure_rate=pl.when(pl.col("problems_found") > 0).then(
                (pl.col("problems_rectified") + pl.col("problems_transferred")) / pl.col("problems_found")
            ),
        )
        .with_columns(
            flag_rate=pl.when(pl.col("projects") > 0).then(pl.col("flags") / pl.col("projects")),
        )
    )
    components = {
        "completion": (100.0 * pl.col("completion_rate"), p["w_completion"]),
        "on_schedule": (100.0 * (1.0 - pl.col("overdue_rate")), p["w_on_schedule"]),
        "closure": (100.0 * pl.col("closure_rate"), p["w_closure"]),
        "clean": (100.0 * (1.0 - pl.col("flag_rate").clip(upper_bound=1.0)), p["w_clean"]),
        "health": (pl.col("avg_health_score"), p["w_health"]),
    }
    df = df.with_columns(score=scoring.weighted_score(components))
    df = df.sort(
        ["unit_kind", "score", "source_id", "unit_code"],
        descending=[False, True, False, False],
        nulls_last=True,
        maintain_order=True,
    ).with_columns(
        rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("unit_kind"),
        units_in_kind=pl.len().over("unit_kind").cast(pl.Int64),
    )
    df = df.join(previous(ctx, NAME, keys, {"score": "prev_score"}), on=keys, how="left").with_columns(
        score_change=(pl.col("score") - pl.col("prev_score")).round(2)
    )
    return conform(with_as_of(df, ctx.as_of), COLUMNS, KEYS)
