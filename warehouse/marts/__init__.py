"""The marts: pure builders from silver + flags to one Polars frame per mart.

Every mart lives in its own module (`dq_flags`, `project_health`, `person_portrait`, `unit_scorecard`,
`alerts`), which states its grain in its docstring and declares:

* `COLUMNS`: name -> (polars dtype, one-line meaning), in output order, `as_of` first. The builder's
  output has exactly these columns with exactly these dtypes (see `conform`), and the data dictionary
  is generated from them.
* `KEYS`: the columns that identify a row (the grain); the output is stably sorted by them.
* `build(ctx: MartInputs) -> pl.DataFrame`: pure (no I/O of its own, no Prefect), vectorized, deterministic.

`MARTS` maps a nightly mart's name to its builder, `MODULES` to its module; `build_all(ctx)` builds every
nightly mart. `spot_checks` (in `DRAWN_MODULES`) is drawn on demand by `qingfeng sample`, not nightly.
Weights, cut-offs and tag thresholds of the scores live in `warehouse.marts.scoring`.

Shared conventions (used by several marts, so they are defined once here):

* A milestone is *completed* when `completed_at` is set and its local date is on or before `as_of`
  (a completion stamped after the business date has not happened yet as of that date).
* A completed milestone is *on time* when completed on or before `due_date`, *late* otherwise; an open
  milestone is *overdue* (also *late*) when `due_date < as_of`; an open milestone not yet due is neither.
* Flags are attributed to a project when raised on the project itself or on one of its milestones,
  stage reports or evidence items (evidence -> report -> project), always within the same `source_id`.
* Stage reports count when submitted on or before `as_of` (local date).
* PII: marts carry a person's name only. As a safety net `conform` masks anything that looks like a
  mainland mobile number (138****1234, also `+86 138-****-1234`), an 18-character resident ID (first 6 +
  ******** + last 4) or a 15-digit one (110101******123) in every String column, so free text passed
  through (e.g. a flag's `detail`) cannot leak them (`transforms/pii.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from types import ModuleType

import polars as pl

from expectations.catalog import FLAG_SCHEMA
from transforms.pii import columns_to_mask, mask_pii_expr
from transforms.schema import OUTCOME_EVIDENCE, STAGES, TIMESTAMP, empty
from warehouse.silver import by_source

SOURCES_SCHEMA: dict[str, pl.DataType] = {
    "source_id": pl.String(),
    "name": pl.String(),
    "kind": pl.String(),
    "dialect": pl.String(),
    "steward_email": pl.String(),
    "stale": pl.Boolean(),
}


@dataclass(frozen=True)
class MartInputs:
    """Everything a mart builder may read. Builders must not mutate any of it."""

    as_of: date
    # all sources concatenated; schema.py schemas, source_id first. The pipeline passes a
    # `warehouse.silver.CitySilver`, which holds every table but evidence: read that through `by_source`.
    silver: Mapping[str, pl.DataFrame]
    flags: pl.DataFrame  # catalog.FLAG_SCHEMA
    sources: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=SOURCES_SCHEMA))
    supervision_email: str = ""
    # mart -> its latest partition before `as_of` (as published), for changes since then (score_change);
    # empty on the first night. Builders only read it.
    history: dict[str, pl.DataFrame] = field(default_factory=dict)
    # the alert outbox (flows.outbox.outbox_frame): tonight's alerts with raised_at/sent_at; None: alerts
    # are computed from the flags, all pending.
    outbox: pl.DataFrame | None = None
    # `evidence_by_report(ctx)`, `project_flags(ctx)` and `project_facts(ctx)` when already worked out for
    # these silver and flags (`build_all` does each once for every mart); None: when a builder needs it.
    evidence_by_report: pl.DataFrame | None = None
    project_flags: pl.DataFrame | None = None
    project_facts: pl.DataFrame | None = None

    def table(self, name: str) -> pl.DataFrame:
        """A silver table, or an empty frame with its schema when the run has none. Not evidence: the
        city's evidence is not held (`by_source`)."""
        df = self.silver.get(name)
        return empty(name) if df is None else df

    def by_source(self, fn: Callable[[dict[str, pl.DataFrame]], pl.DataFrame],
                  columns: dict[str, list[str]] | None = None) -> pl.DataFrame:
        """`fn` over the silver of one source at a time (evidence included; only `columns` of the tables
        named there), the results concatenated: how a mart reads evidence, reducing it within a source
        to what it needs (see `warehouse.silver.by_source`)."""
        return by_source(self.silver, fn, columns)

    def flag_frame(self) -> pl.DataFrame:
        return self.flags if self.flags is not None else pl.DataFrame(schema=FLAG_SCHEMA)


# ---------------------------------------------------------------------------------------------- helpers

def conform(
    df: pl.DataFrame, columns: dict[str, tuple[pl.DataType, str]], keys: tuple[str, ...]
) -> pl.DataFrame:
    """Exactly `columns` (order and dtype), String columns PII-masked, stably sorted by `keys`."""
    typed = df.select(pl.col(name).cast(dtype) for name, (dtype, _meaning) in columns.items())
    to_mask = columns_to_mask(typed, [n for n, (dtype, _m) in columns.items() if dtype == pl.String()])
    return typed.with_columns(mask_pii_expr(pl.col(n)) for n in to_mask).sort(
        list(keys), maintain_order=True, nulls_last=True)


def with_as_of(df: pl.DataFrame, as_of: date) -> pl.DataFrame:
    return df.with_columns(pl.lit(as_of, dtype=pl.Date()).alias("as_of"))


def local_date(col: str) -> pl.Expr:
    """The business-zone calendar date of a timestamp column (silver timestamps are Asia/Shanghai)."""
    return pl.col(col).cast(TIMESTAMP).dt.date()


def milestone_facts(ctx: MartInputs) -> pl.DataFrame:
    """One row per milestone with its status as of `ctx.as_of`.

    Columns: source_id, milestone_id, project_id, stage, due_date, completed_on, is_completed, is_on_time,
    is_overdue, is_late, delay_days (days past due: completion - due for late completions, as_of - due
    for overdue ones, 0 otherwise).
    """
    as_of = pl.lit(ctx.as_of, dtype=pl.Date())
    m = ctx.table("milestones").select(
        "source_id", "milestone_id", "project_id", "stage", "due_date", "completed_at"
    )
    done_on = local_date("completed_at")
    return (
        m.lazy()
        .with_columns(completed_on=pl.when(done_on <= as_of).then(done_on).otherwise(None))
        .with_columns(is_completed=pl.col("completed_on").is_not_null())
        .with_columns(
            is_on_time=pl.col("is_completed") & (pl.col("completed_on") <= pl.col("due_date")),
            is_overdue=~pl.col("is_completed") & (pl.col("due_date") < as_of),
        )
        .with_columns(
            is_late=(pl.col("is_completed") & (pl.col("completed_on") > pl.col("due_date")))
            | pl.col("is_overdue"),
        )
        .with_columns(
            delay_days=pl.when(pl.col("is_overdue"))
            .then((as_of - pl.col("due_date")).dt.total_days())
            .when(pl.col("is_late"))
            .then((pl.col("completed_on") - pl.col("due_date")).dt.total_days())
            .otherwise(0)
            .cast(pl.Int64),
        )
        .drop("completed_at")
        .with_columns(pl.col(c).fill_null(False) for c in ("is_on_time", "is_overdue", "is_late"))
        .collect()
    )


def reports_as_of(ctx: MartInputs) -> pl.LazyFrame:
    """Stage reports submitted on or before `as_of`, lazily: a city has millions of reports, and a query
    over them copies only the columns it reads."""
    return ctx.table("stage_reports").lazy().filter(local_date("submitted_at") <= pl.lit(ctx.as_of, dtype=pl.Date()))


def source_table(one: dict[str, pl.DataFrame], name: str) -> pl.DataFrame:
    """A table of the silver `by_source` hands to its function, or an empty frame with its schema when
    the source has none."""
    df = one.get(name)
    return empty(name) if df is None else df


def evidence_by_report(ctx: MartInputs) -> pl.DataFrame:
    """What the marts read of the city's evidence: one row per report with outcome evidence (document,
    ledger) or with evidence items the flags name — source_id, report_id, has_outcome, flagged_evidence
    (the ids of those items).

    Reduced within each source (`by_source`), so that the reports cross sources, not the city's millions
    of evidence items. Each reading is a pass over all of them: `ctx.evidence_by_report` when `build_all`
    has read it for every mart."""
    if ctx.evidence_by_report is not None:
        return ctx.evidence_by_report
    flagged = (
        ctx.flag_frame()
        .filter(pl.col("entity_type") == "evidence")
        .select("source_id", evidence_id=pl.col("entity_id"), is_flagged=pl.lit(True))
        .unique()
    )

    def reduce(one: dict[str, pl.DataFrame]) -> pl.DataFrame:
        return (
            source_table(one, "evidence")
            .select("source_id", "evidence_id", "report_id", "kind")
            .join(flagged, on=["source_id", "evidence_id"], how="left")
            .with_columns(
                pl.col("is_flagged").fill_null(False),
                is_outcome=pl.col("kind").is_in(list(OUTCOME_EVIDENCE)),
            )
            .filter(pl.col("is_flagged") | pl.col("is_outcome"))
            .group_by("source_id", "report_id")
            .agg(
                has_outcome=pl.col("is_outcome").any(),
                flagged_evidence=pl.col("evidence_id").filter(pl.col("is_flagged")),
            )
        )

    return ctx.by_source(reduce, columns={"evidence": ["report_id", "kind"]})


def entity_projects(ctx: MartInputs, only: pl.DataFrame | None = None) -> pl.DataFrame:
    """source_id, entity_type, entity_id -> project_id for projects, milestones, stage reports and evidence
    (evidence -> report -> project), within one source. One row per entity.

    With `only` (source_id, entity_type, entity_id: ctx.flags, or some of them), just the entities it
    names: a city has millions of evidence items and a night some thousands of flags, so the flagged
    items come from `evidence_by_report`."""

    def named(frame: pl.DataFrame, entity_type: str, id_column: str) -> pl.DataFrame:
        if only is None:
            return frame
        wanted = only.filter(pl.col("entity_type") == entity_type).select(
            "source_id", pl.col("entity_id").alias(id_column)).unique()
        return frame.join(wanted, on=["source_id", id_column], how="semi")

    def evidence_reports(one: dict[str, pl.DataFrame]) -> pl.DataFrame:
        return source_table(one, "evidence").select("source_id", "evidence_id", "report_id")

    pj = named(ctx.table("projects").select("source_id", "project_id"), "project", "project_id").select(
        "source_id", entity_id=pl.col("project_id"), project_id=pl.col("project_id"))
    ms = named(ctx.table("milestones").select("source_id", "milestone_id", "project_id"), "milestone",
               "milestone_id").select("source_id", pl.col("milestone_id").alias("entity_id"), "project_id")
    rp = ctx.table("stage_reports").select("source_id", "report_id", "project_id")
    if only is None:
        evidence = ctx.by_source(evidence_reports, columns={"evidence": ["report_id"]})
    else:
        flagged = (
            evidence_by_report(ctx)
            .select("source_id", "report_id", evidence_id="flagged_evidence")
            .explode("evidence_id")
            .drop_nulls("evidence_id")
        )
        evidence = named(flagged, "evidence", "evidence_id")
    ev = (
        evidence.join(rp, on=["source_id", "report_id"], how="inner")
        .select("source_id", pl.col("evidence_id").alias("entity_id"), "project_id")
    )
    return (
        pl.concat(
            [
                pj.with_columns(entity_type=pl.lit("project")),
                ms.with_columns(entity_type=pl.lit("milestone")),
                named(rp, "report", "report_id").select(
                    "source_id", pl.col("report_id").alias("entity_id"), "project_id"
                ).with_columns(entity_type=pl.lit("report")),
                ev.with_columns(entity_type=pl.lit("evidence")),
            ],
            how="diagonal",
        )
        .select("source_id", "entity_type", "entity_id", "project_id")
        .sort("source_id", "entity_type", "entity_id", "project_id", nulls_last=True)
        .unique(["source_id", "entity_type", "entity_id"], keep="first", maintain_order=True)
    )


def project_flags(ctx: MartInputs) -> pl.DataFrame:
    """Flag counts per project: source_id, project_id, flags_traces, flags_fabrication, flags_deadline,
    flags_contract, flags_critical (any family, severity critical), integrity_traces and
    integrity_fabrication (the traces/fabrication flags that count against integrity: all but F7, which
    completion quality measures), rules_fired (sorted distinct rule ids).

    A flag counts for a project when raised on the project, or on one of its milestones, stage reports or
    evidence items. Only projects with at least one such flag appear.
    """
    if ctx.project_flags is not None:
        return ctx.project_flags
    flags = ctx.flag_frame()
    both = flags.join(entity_projects(ctx, only=flags), on=["source_id", "entity_type", "entity_id"], how="inner")
    cols = ("source_id", "project_id", "family", "rule_id", "severity")
    both = both.select(cols)
    fam = pl.col("family")
    not_f7 = pl.col("rule_id") != "F7"
    return both.group_by("source_id", "project_id").agg(
        flags_traces=(fam == "traces").sum().cast(pl.Int64),
        flags_fabrication=(fam == "fabrication").sum().cast(pl.Int64),
        flags_deadline=(fam == "deadline").sum().cast(pl.Int64),
        flags_contract=(fam == "contract").sum().cast(pl.Int64),
        flags_critical=(pl.col("severity") == "critical").sum().cast(pl.Int64),
        integrity_traces=((fam == "traces") & not_f7).sum().cast(pl.Int64),
        integrity_fabrication=((fam == "fabrication") & not_f7).sum().cast(pl.Int64),
        rules_fired=pl.col("rule_id").unique().sort(),
    )


FLAG_COUNTS = (
    "flags_traces",
    "flags_fabrication",
    "flags_deadline",
    "flags_contract",
    "flags_critical",
    "integrity_traces",
    "integrity_fabrication",
)

# Per-project counts that pool by summing (over the projects of a person, a unit).
POOLED = (
    "milestones_total",
    "milestones_completed",
    "milestones_decided",
    "milestones_on_time",
    "milestones_late",
    "milestones_overdue",
    "overdue_days_sum",
    "late_days_sum",
    "milestones_reported_on_time",
    "milestones_backed",
    "acceptance_missing",
    "reports_filed",
    *FLAG_COUNTS,
)


def project_facts(ctx: MartInputs) -> pl.DataFrame:
    """One row per project (every project in silver) with the counts the scores are built from.

    Columns: source_id, project_id, unit_code, owner_id, leader_id, status, the POOLED counts, plus
    first_open_rank (stage rank of the earliest open milestone), next_due_date, first_overdue (earliest
    due date among overdue open milestones), last_report_on (local date of the latest report up to as_of),
    days_since_last_report, days_quiet (days since the last report, or since the planned start when
    nothing was reported yet), is_active (status in_progress), rules_fired.

    * milestones_decided: completed, or open past due (on_time + late).
    * milestones_reported_on_time: decided milestones with a stage report filed against them (milestone_id)
      on or before their due date.
    * milestones_backed: completed milestones with outcome evidence (document, ledger) on a report against
      them, filed on or before as_of.
    * acceptance_missing: 1 when the project is marked completed but no acceptance milestone is completed.
    """
    if ctx.project_facts is not None:
        return ctx.project_facts
    as_of = pl.lit(ctx.as_of, dtype=pl.Date())
    keys = ["source_id", "project_id"]
    stage_rank = {s: i for i, s in enumerate(STAGES)}
    # One lazy query: the city's reports and milestones are millions of rows, and only the columns the
    # counts read are carried through its joins.
    ms = milestone_facts(ctx).lazy().with_columns(
        stage_rank=pl.col("stage").replace_strict(stage_rank, default=len(STAGES), return_dtype=pl.Int64)
    )
    reports = reports_as_of(ctx).with_columns(submitted_on=local_date("submitted_at"))
    outcome = evidence_by_report(ctx).lazy().filter(pl.col("has_outcome")).select(
        "source_id", "report_id", "has_outcome")
    per_report_ms = (
        reports.filter(pl.col("milestone_id").is_not_null())
        .join(outcome, on=["source_id", "report_id"], how="left")
        .join(ms.select("source_id", "milestone_id", "due_date"), on=["source_id", "milestone_id"], how="inner")
        .group_by("source_id", "milestone_id")
        .agg(
            reported_on_time=(pl.col("submitted_on") <= pl.col("due_date")).any(),
            backed=pl.col("has_outcome").fill_null(False).any(),
        )
    )
    ms = ms.join(per_report_ms, on=["source_id", "milestone_id"], how="left").with_columns(
        pl.col("reported_on_time").fill_null(False), pl.col("backed").fill_null(False)
    )
    decided = pl.col("is_on_time") | pl.col("is_late")
    open_ms = ~pl.col("is_completed")
    per_ms = ms.group_by(keys).agg(
        milestones_total=pl.len().cast(pl.Int64),
        milestones_completed=pl.col("is_completed").sum().cast(pl.Int64),
        milestones_decided=decided.sum().cast(pl.Int64),
        milestones_on_time=pl.col("is_on_time").sum().cast(pl.Int64),
        milestones_late=pl.col("is_late").sum().cast(pl.Int64),
        milestones_overdue=pl.col("is_overdue").sum().cast(pl.Int64),
        overdue_days_sum=pl.col("delay_days").filter(pl.col("is_overdue")).sum().cast(pl.Int64),
        late_days_sum=pl.col("delay_days").filter(pl.col("is_late")).sum().cast(pl.Int64),
        milestones_reported_on_time=(decided & pl.col("reported_on_time")).sum().cast(pl.Int64),
        milestones_backed=(pl.col("is_completed") & pl.col("backed")).sum().cast(pl.Int64),
        acceptance_done=(pl.col("is_completed") & (pl.col("stage") == "acceptance")).any(),
        first_open_rank=pl.col("stage_rank").filter(open_ms).min(),
        next_due_date=pl.col("due_date").filter(open_ms).min(),
        first_overdue=pl.col("due_date").filter(pl.col("is_overdue")).min(),
    )
    per_rp = reports.group_by(keys).agg(
        reports_filed=pl.len().cast(pl.Int64), last_report_on=pl.col("submitted_on").max()
    )
    projects = ctx.table("projects").lazy().select(
        "source_id", "project_id", "unit_code", "owner_id", "leader_id", "status", "planned_start"
    )
    counts = [c for c in POOLED if c != "acceptance_missing"]
    return (
        projects.join(per_ms, on=keys, how="left")
        .join(per_rp, on=keys, how="left")
        .join(project_flags(ctx).lazy(), on=keys, how="left")
        .with_columns(pl.col(c).fill_null(0).cast(pl.Int64) for c in counts)
        .with_columns(
            acceptance_missing=((pl.col("status") == "completed") & ~pl.col("acceptance_done").fill_null(False))
            .cast(pl.Int64),
            days_since_last_report=(as_of - pl.col("last_report_on")).dt.total_days().cast(pl.Int64),
            days_quiet=(as_of - pl.coalesce("last_report_on", "planned_start")).dt.total_days().cast(pl.Int64),
            is_active=pl.col("status") == "in_progress",
            rules_fired=pl.col("rules_fired").fill_null(pl.lit([], dtype=pl.List(pl.String()))),
        )
        .drop("acceptance_done", "planned_start")
        .collect()
    )


def previous(ctx: MartInputs, mart: str, keys: list[str], columns: dict[str, str]) -> pl.DataFrame:
    """From the previous partition of `mart` in ctx.history: `keys`, `prev_as_of` and `columns` renamed
    (old name -> new name). Empty (with those columns) when there is no history."""
    prev = ctx.history.get(mart)
    schema = {**dict.fromkeys(keys, pl.String()), "prev_as_of": pl.Date()}
    if prev is None or prev.is_empty() or not set(columns) <= set(prev.columns):
        return pl.DataFrame(schema={**schema, **dict.fromkeys(columns.values(), pl.Float64())})
    prev = prev.filter(pl.col("as_of") < pl.lit(ctx.as_of, dtype=pl.Date()))
    return (
        prev.filter(pl.col("as_of") == pl.col("as_of").max())
        .select(*keys, pl.col("as_of").alias("prev_as_of"), *[pl.col(o).alias(n) for o, n in columns.items()])
        .unique(keys, keep="first", maintain_order=True)
    )


# ---------------------------------------------------------------------------------------------- registry
# The mart modules import MartInputs and the helpers above, so they are imported after them.

from warehouse.marts import (  # noqa: E402
    alerts,
    dq_flags,
    person_portrait,
    project_health,
    spot_checks,
    unit_scorecard,
)

# Built every night by `build_all`.
MODULES: dict[str, ModuleType] = {
    m.NAME: m for m in (dq_flags, project_health, person_portrait, unit_scorecard, alerts)
}
# Published on demand, not by the night: spot_checks is drawn by `qingfeng sample` (an unannounced check
# must not be predictable from a nightly table, and the office decides when to draw and how many).
DRAWN_MODULES: dict[str, ModuleType] = {spot_checks.NAME: spot_checks}
ALL_MODULES: dict[str, ModuleType] = {**MODULES, **DRAWN_MODULES}
MARTS: dict[str, Callable[[MartInputs], pl.DataFrame]] = {name: m.build for name, m in MODULES.items()}
MART_KEYS: dict[str, tuple[str, ...]] = {name: m.KEYS for name, m in ALL_MODULES.items()}


# The marts that read the alert outbox (`MartInputs.outbox`). They read none of the per-project figures, so
# the night builds the other marts while it raises its alerts, and these once the outbox is filled.
OUTBOX_MARTS = (alerts.NAME,)


def build_all(ctx: MartInputs, skip: Collection[str] = ()) -> dict[str, pl.DataFrame]:
    """Every nightly mart but those in `skip`, in registry order, over one reading of the evidence
    (`evidence_by_report`) and the per-project figures worked out once (`project_flags`, `project_facts`)."""
    ctx = replace(ctx, evidence_by_report=evidence_by_report(ctx))
    ctx = replace(ctx, project_flags=project_flags(ctx))
    ctx = replace(ctx, project_facts=project_facts(ctx))
    return {name: build(ctx) for name, build in MARTS.items() if name not in skip}


def data_dictionary() -> dict[str, dict[str, tuple[str, str]]]:
    """mart -> column -> (dtype as text, meaning): the raw material of the generated data dictionary."""
    return {
        name: {c: (str(t), meaning) for c, (t, meaning) in m.COLUMNS.items()}
        for name, m in ALL_MODULES.items()
    }


__all__ = [
    "ALL_MODULES",
    "DRAWN_MODULES",
    "FLAG_COUNTS",
    "POOLED",
    "MARTS",
    "MART_KEYS",
    "MODULES",
    "OUTBOX_MARTS",
    "SOURCES_SCHEMA",
    "MartInputs",
    "build_all",
    "conform",
    "data_dictionary",
    "milestone_facts",
    "entity_projects",
    "evidence_by_report",
    "previous",
    "project_facts",
    "project_flags",
    "reports_as_of",
    "source_table",
]
