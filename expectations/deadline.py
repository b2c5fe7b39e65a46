"""Family `deadline` (D1–D3): supervision of due dates (督办).

- D1 (milestone): open and due within `remind_days` (7) after the business date: the owner is
  reminded. The city's own platform texts the person seven days ahead; the same horizon here.
- D2 (milestone): open and past due: escalated with the days overdue.
- D3 (problem): open and past its rectification deadline.

A milestone is open while `completed_at` is NULL. A cancelled project's milestones are not chased.
Days are counted in the city's calendar (Asia/Shanghai) against the business date `as_of`.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from expectations.catalog import empty_flags, flag_frame

REMIND_DAYS = 7


def _open_milestones(milestones: pl.DataFrame, projects: pl.DataFrame) -> pl.DataFrame:
    live = projects.filter(pl.col("status") != "cancelled").select("source_id", "project_id")
    return milestones.filter(pl.col("completed_at").is_null()).join(live, on=["source_id", "project_id"])


def deadline_flags(silver: dict[str, pl.DataFrame], as_of: date, remind_days: int = REMIND_DAYS) -> pl.DataFrame:
    milestones = silver.get("milestones")
    projects = silver.get("projects")
    problems = silver.get("problems")
    out = [empty_flags()]
    if milestones is not None and projects is not None and not milestones.is_empty():
        days_left = (pl.col("due_date") - pl.lit(as_of)).dt.total_days()
        m = _open_milestones(milestones, projects).with_columns(days_left.alias("days_left"))
        due_soon = m.filter((pl.col("days_left") > 0) & (pl.col("days_left") <= remind_days))
        out.append(flag_frame(
            "D1", pl.col("source_id"), "milestone", pl.col("milestone_id"),
            pl.struct("project_id", "stage", pl.col("due_date").cast(pl.String), "days_left",
                      pl.lit(remind_days).alias("remind_days")).struct.json_encode(),
            due_soon,
        ))
        overdue = m.filter(pl.col("days_left") < 0).with_columns((-pl.col("days_left")).alias("days_overdue"))
        out.append(flag_frame(
            "D2", pl.col("source_id"), "milestone", pl.col("milestone_id"),
            pl.struct("project_id", "stage", pl.col("due_date").cast(pl.String), "days_overdue").struct.json_encode(),
            overdue,
        ))
    if problems is not None and not problems.is_empty():
        late = problems.filter(
            (pl.col("status") == "open") & pl.col("deadline").is_not_null() & (pl.col("deadline") < pl.lit(as_of))
        ).with_columns((pl.lit(as_of) - pl.col("deadline")).dt.total_days().alias("days_overdue"))
        out.append(flag_frame(
            "D3", pl.col("source_id"), "problem", pl.col("problem_id"),
            pl.struct("unit_code", "origin", pl.col("deadline").cast(pl.String), "days_overdue").struct.json_encode(),
            late,
        ))
    return pl.concat(out)
