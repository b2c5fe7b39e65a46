"""dq_flags: every rule hit, as the rules raised it.

Grain: one row per rule hit on one entity — (source_id, rule_id, entity_type, entity_id) plus `detail`,
which tells apart two hits of one rule on one entity (rare; e.g. two impossible timestamps). Rows that
are exact duplicates (same rule, entity and detail) carry nothing new and are kept once.

`rule_title` is added from the rule catalog (Chinese title) so the mart reads on its own, and
`project_id` names the project the flagged entity belongs to (a project, or one of its milestones,
stage reports or evidence items; NULL for persons, units, problems and sources), so an analyst can
filter one project's flags without joining silver.
"""

from __future__ import annotations

import polars as pl

from expectations.catalog import RULES
from warehouse.marts import MartInputs, conform, entity_projects, with_as_of

NAME = "dq_flags"

COLUMNS: dict[str, tuple[pl.DataType, str]] = {
    "as_of": (pl.Date(), "business date of the run that raised the flag"),
    "source_id": (pl.String(), "data source (registry id) the flagged entity comes from"),
    "rule_id": (pl.String(), "rule catalog id (T1–T6, F1–F7, D1–D3, C1–C4)"),
    "family": (pl.String(), "rule family: traces | fabrication | deadline | contract"),
    "entity_type": (
        pl.String(),
        "kind of entity flagged: project, milestone, report, evidence, problem, person, unit, source",
    ),
    "entity_id": (pl.String(), "the source's own id of the flagged entity (for source: the registry id)"),
    "project_id": (
        pl.String(),
        "project the flagged entity belongs to (project, milestone, report, evidence); NULL otherwise",
    ),
    "rule_title": (pl.String(), "the rule's title (Chinese) from the rule catalog"),
    "severity": (pl.String(), "info | warning | critical"),
    "detail": (pl.String(), "JSON text with the figures that fired the rule"),
}

KEYS: tuple[str, ...] = ("source_id", "rule_id", "entity_type", "entity_id", "detail")


def build(ctx: MartInputs) -> pl.DataFrame:
    titles = {r.rule_id: r.title_zh for r in RULES.values()}
    flags = ctx.flag_frame().unique(maintain_order=True)
    df = (
        flags.with_columns(
            rule_title=pl.col("rule_id").replace_strict(titles, default=None, return_dtype=pl.String)
        )
        .join(entity_projects(ctx, only=flags), on=["source_id", "entity_type", "entity_id"], how="left")
    )
    return conform(with_as_of(df, ctx.as_of), COLUMNS, KEYS)
