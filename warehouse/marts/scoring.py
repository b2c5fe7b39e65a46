"""Scores of the marts: weights, cut-offs and tag thresholds in ONE place, each with its reason.

Every value here is a default; the TOML file named by `QINGFENG_SETTINGS` (the same file that overrides
rule thresholds, see `expectations.settings`) may override any of them, per mart:

    [marts.project_health]
    w_schedule = 40
    green_at = 85

    [marts.person_portrait]
    min_decided = 5

An unknown name is an error (a typo must not silently keep the default). The values are read when a
mart is built, so a test (or a one-off run) can point `QINGFENG_SETTINGS` elsewhere.

How a score is made (project health, person portrait, unit scorecard alike): a few named *components*,
each 0–100 and each its own column, and the score is their weighted mean over the components that are
*defined* for the row (a component is NULL when there is nothing to judge yet, e.g. schedule before any
milestone has come due): the weights are renormalized over the defined ones, so "no evidence" is neither
a reward nor a penalty.
"""

from __future__ import annotations

import os
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl

from expectations.settings import Param

PROJECT_HEALTH: dict[str, Param] = {
    # weights of the components (relative; they need not sum to 100)
    "w_schedule": Param(35.0, "meeting deadlines is what supervision (督办) is about: the largest weight"),
    "w_management": Param(15.0, "regular, timely stage reports: a supporting signal, easy to game, so lighter"),
    "w_completion_quality": Param(
        20.0, "a completed stage must have outcome evidence (document, ledger) behind it: 实效 over 留痕"
    ),
    "w_integrity": Param(
        30.0, "suspected fabrication is a disciplinary matter, and traces flags show form over substance"
    ),
    # schedule
    "overdue_penalty_per_day": Param(
        1.0, "schedule loses 1 point per day the open overdue milestones are late on average ..."
    ),
    "overdue_cap_days": Param(30, "... up to 30 points: beyond a month the on-time share already says it"),
    # management
    "stale_after_days": Param(
        60, "an active project with no report for 60 days (about two reporting cycles) starts losing points"
    ),
    "stale_zero_days": Param(180, "... and reporting freshness reaches 0 at 180 days (half a year silent)"),
    # integrity (points off per flag attributed to the project; F7 is left to completion_quality)
    "traces_penalty": Param(5.0, "a traces flag (过度留痕) is a warning: 5 points each"),
    "fabrication_penalty": Param(15.0, "a fabrication flag (数据造假) is serious: 15 points each"),
    # RAG, on the meaning of the UK IPA delivery confidence assessment
    "green_at": Param(
        80.0,
        "green = delivery on time and to quality highly likely, no major issue: score ≥ 80 and no override",
    ),
    "amber_at": Param(
        60.0, "amber = feasible but significant issues need management attention now: 60 ≤ score < 80"
    ),
    "red_overdue_days": Param(
        90, "red regardless of score when a milestone is open 90+ days past due: delivery in doubt"
    ),
    "fabrication_blocks_green": Param(
        True, "a project with any fabrication flag cannot be green: its figures are not to be relied upon"
    ),
}

PERSON_PORTRAIT: dict[str, Param] = {
    "w_schedule": Param(35.0, "as project_health, pooled over the milestones of the owned projects"),
    "w_management": Param(10.0, "as project_health, pooled"),
    "w_completion_quality": Param(15.0, "as project_health, pooled"),
    "w_integrity": Param(25.0, "as project_health, per owned project, plus flags on the person (F5)"),
    "w_rectification": Param(
        15.0, "problems owned and closed by their deadline: 'every problem has an owner, a deadline, an answer'"
    ),
    "min_decided": Param(3, "fewer decided milestones than this and the rates say little: tag 样本不足"),
    "on_time_good": Param(0.9, "按期高质 needs an on-time rate of at least 90% ..."),
    "quality_good": Param(90.0, "... and completion quality ≥ 90 (when there is a completion to judge)"),
    "on_time_poor": Param(0.6, "经常逾期 below 60% on time (with enough sample) ..."),
    "overdue_many": Param(3, "... or 3+ milestones overdue right now, whatever the sample"),
    "traces_many": Param(3, "过度留痕风险 at 3+ traces flags on owned projects (one is noise, three a habit)"),
    "fabrication_many": Param(
        2, "数据造假风险 at 2+ fabrication flags: one may be a data-entry slip (every flag stays counted), two a pattern"
    ),
    "min_problems_due": Param(2, "问题整改及时 needs 2+ problems whose deadline has come ..."),
    "rectified_on_time_good": Param(0.9, "... and 90%+ of them closed by their deadline"),
    "score_drop": Param(10.0, "评分下降 when the score fell by 10+ points since the previous portrait"),
}

UNIT_SCORECARD: dict[str, Param] = {
    "w_completion": Param(25.0, "completed share of non-cancelled projects"),
    "w_on_schedule": Param(25.0, "share of open projects with no overdue milestone"),
    "w_closure": Param(20.0, "problems found that were rectified or transferred (the ledger is closed)"),
    "w_clean": Param(15.0, "1 − traces+fabrication flags per project (capped at 1)"),
    "w_health": Param(15.0, "mean health_score of the unit's projects: the project view, summed up"),
}

SPOT_CHECKS: dict[str, Param] = {
    "base_weight": Param(
        1.0, "every project has weight ≥ 1, so any project can be drawn: checks must stay unpredictable"
    ),
    "per_fabrication_flag": Param(3.0, "each fabrication flag adds 3 (capped below)"),
    "per_traces_flag": Param(1.0, "each traces flag adds 1 (capped below)"),
    "flags_cap": Param(12.0, "flag weight stops growing at 12: one noisy project must not take every draw"),
    "per_overdue_day": Param(0.1, "each day overdue adds 0.1 ..."),
    "overdue_cap": Param(3.0, "... up to 3 (30 days)"),
    "low_score_scale": Param(4.0, "(100 − health_score)/100 × 4: a health score of 0 adds 4"),
    "person_unit_flag": Param(2.0, "the owner or unit failed digit tests (F5): adds 2"),
}

SETTINGS: dict[str, dict[str, Param]] = {
    "project_health": PROJECT_HEALTH,
    "person_portrait": PERSON_PORTRAIT,
    "unit_scorecard": UNIT_SCORECARD,
    "spot_checks": SPOT_CHECKS,
}


@cache
def _overrides(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    return tomllib.loads(Path(path).read_text(encoding="utf-8")).get("marts", {})


def mart_params(mart: str, path: str | None = None) -> dict[str, Any]:
    """The settings of one mart: defaults, overridden by `[marts.<mart>]` of the QINGFENG_SETTINGS file."""
    defaults = SETTINGS[mart]
    override = _overrides(path or os.environ.get("QINGFENG_SETTINGS")).get(mart, {})
    unknown = set(override) - set(defaults)
    if unknown:
        raise ValueError(f"settings for marts.{mart}: unknown parameter(s) {', '.join(sorted(unknown))}")
    return {name: override.get(name, p.value) for name, p in defaults.items()}


# ---------------------------------------------------------------------------------------------- components
# Each takes column names of pooled counts (one project, or the projects of one person) and returns a
# Float64 expression 0–100, NULL when there is nothing to judge.


def schedule(p: dict[str, Any]) -> pl.Expr:
    """100 × on-time share of decided milestones − per-day penalty × min(mean days overdue, cap).

    Decided milestones: completed, or open past their due date. NULL when none is decided yet.
    """
    share = pl.col("milestones_on_time") / pl.col("milestones_decided")
    mean_overdue = (
        pl.when(pl.col("milestones_overdue") > 0)
        .then(pl.col("overdue_days_sum") / pl.col("milestones_overdue"))
        .otherwise(0.0)
    )
    penalty = p["overdue_penalty_per_day"] * mean_overdue.clip(upper_bound=float(p["overdue_cap_days"]))
    return (
        pl.when(pl.col("milestones_decided") > 0)
        .then((100.0 * share - penalty).clip(0.0, 100.0))
        .cast(pl.Float64)
    )


def freshness(p: dict[str, Any]) -> pl.Expr:
    """1 when the last report is at most `stale_after_days` old, falling linearly to 0 at `stale_zero_days`.
    Column `days_quiet`: days since the last report, or since the planned start for a project that has not
    reported yet. NULL unless `is_active` (in progress), or when neither date is known."""
    lo, hi = float(p["stale_after_days"]), float(p["stale_zero_days"])
    days = pl.col("days_quiet").cast(pl.Float64)
    f = (1.0 - (days - lo) / max(hi - lo, 1.0)).clip(0.0, 1.0)
    return pl.when(pl.col("is_active")).then(f)


def management(p: dict[str, Any]) -> pl.Expr:
    """100 × mean of (a) the share of decided milestones with a stage report filed against them on or
    before their due date, and (b) reporting freshness of an active project (see `freshness`) — over the
    ones defined. NULL when neither is."""
    timely = pl.when(pl.col("milestones_decided") > 0).then(
        pl.col("milestones_reported_on_time") / pl.col("milestones_decided")
    )
    return (100.0 * pl.mean_horizontal(timely, pl.col("freshness"))).cast(pl.Float64)


def completion_quality() -> pl.Expr:
    """100 × completions backed by outcome evidence / completions claimed.

    A completion claimed is a completed milestone, plus one for a project marked completed whose acceptance
    milestone is not completed (acceptance missing). Backed: a report against the milestone carries
    outcome evidence (document or ledger). NULL when nothing is claimed complete.
    """
    claims = pl.col("milestones_completed") + pl.col("acceptance_missing")
    return pl.when(claims > 0).then(100.0 * pl.col("milestones_backed") / claims).cast(pl.Float64)


def integrity(p: dict[str, Any], per: str | None = None) -> pl.Expr:
    """100 − traces_penalty × traces − fabrication_penalty × fabrication, clipped to [0, 100].

    Counted: `integrity_traces` and `integrity_fabrication` (the traces/fabrication flags except F7, which
    completion_quality already measures). With `per`, the counts are divided by that column (flags per
    owned project, for a person)."""
    t, f = pl.col("integrity_traces").cast(pl.Float64), pl.col("integrity_fabrication").cast(pl.Float64)
    if per is not None:
        n = pl.col(per).cast(pl.Float64).clip(lower_bound=1.0)
        t, f = t / n, f / n
    return (100.0 - p["traces_penalty"] * t - p["fabrication_penalty"] * f).clip(0.0, 100.0)


def weighted_score(components: dict[str, tuple[pl.Expr, float]]) -> pl.Expr:
    """Weighted mean of the defined components, weights renormalized over them; NULL when none is."""
    num = pl.sum_horizontal([(c * w).fill_null(0.0) for c, w in components.values()])
    den = pl.sum_horizontal([pl.when(c.is_not_null()).then(float(w)).otherwise(0.0) for c, w in components.values()])
    return pl.when(den > 0).then((num / den).clip(0.0, 100.0).round(2)).cast(pl.Float64)
