"""person_portrait (责任人画像): how each responsible person's projects and problems are going.

Grain: one row per responsible person — (source_id, person_id) — i.e. every person in silver `persons`
who owns or leads at least one project, or owns at least one problem.

Personal data: the portrait carries the person's name only (no phone, no id card, no email).

Definitions (conventions in `warehouse.marts`):

* Milestones counted are those of the projects the person owns (the owner answers for deadlines).
* on_time_rate: milestones_on_time / (on_time + late) over decided milestones; NULL when none decided.
* avg_delay_days: mean days late over the late milestones (completed late, or still overdue: as_of −
  due); 0 when none is late.
* flags_traces / flags_fabrication: flags attributed to the owned projects, plus flags raised on the
  person directly (F5 digit tests).
* problems_overdue: owned problems still open with a deadline before as_of.

score (0–100, float), simple for now:

    100 − 40 × (1 − on_time_rate, 0 when NULL) − min(20, 5 × overdue_milestones)
        − min(20, 4 × flags_traces) − min(30, 10 × flags_fabrication) − min(15, 5 × problems_overdue)

clipped to [0, 100].

tags (in vocabulary order, see TAGS):

* 样本不足: fewer than MIN_DECIDED decided milestones — the rates say little.
* 按期高质: enough sample, on_time_rate ≥ 0.9, nothing overdue, no traces or fabrication flags.
* 经常逾期: enough sample and on_time_rate < 0.6, or 3 or more milestones overdue now.
* 过度留痕风险: 3 or more traces flags.
* 数据造假风险: any fabrication flag.
* 整改滞后: an owned problem is open past its deadline.
"""

from __future__ import annotations

import polars as pl

from warehouse.marts import MartInputs, conform, milestone_facts, project_flags, reports_as_of, with_as_of

NAME = "person_portrait"

MIN_DECIDED = 3
TAGS = ("按期高质", "经常逾期", "过度留痕风险", "数据造假风险", "整改滞后", "样本不足")

COLUMNS: dict[str, tuple[pl.DataType, str]] = {
    "as_of": (pl.Date(), "business date the portrait describes"),
    "source_id": (pl.String(), "data source (registry id) of the person"),
    "person_id": (pl.String(), "the source's person id"),
    "name": (pl.String(), "the person's name (the only personal data carried)"),
    "unit_code": (pl.String(), "the person's unit"),
    "title": (pl.String(), "the person's job title"),
    "projects_owned": (pl.Int64(), "projects whose responsible person (owner) this is"),
    "projects_led": (pl.Int64(), "projects this person leads (leader)"),
    "milestones_decided": (pl.Int64(), "milestones of owned projects completed, or open past due"),
    "on_time_rate": (pl.Float64(), "on-time share of decided milestones of owned projects; NULL if none"),
    "overdue_milestones": (pl.Int64(), "open milestones of owned projects past their due date"),
    "avg_delay_days": (pl.Float64(), "mean days late over late milestones of owned projects; 0 if none"),
    "reports_filed": (pl.Int64(), "stage reports this person submitted on or before as_of"),
    "flags_traces": (pl.Int64(), "traces flags on owned projects (and their milestones, reports, evidence)"),
    "flags_fabrication": (pl.Int64(), "fabrication flags on owned projects, plus on the person (F5)"),
    "problems_owned": (pl.Int64(), "problems this person is responsible for rectifying"),
    "problems_rectified": (pl.Int64(), "owned problems with status rectified"),
    "problems_overdue": (pl.Int64(), "owned problems still open past their deadline"),
    "score": (pl.Float64(), "0–100, see module docstring for the formula"),
    "tags": (pl.List(pl.String()), "labels from a small vocabulary: " + "、".join(TAGS)),
}

KEYS: tuple[str, ...] = ("source_id", "person_id")

_COUNTS = (
    "projects_owned",
    "projects_led",
    "milestones_decided",
    "milestones_on_time",
    "overdue_milestones",
    "reports_filed",
    "flags_traces",
    "flags_fabrication",
    "problems_owned",
    "problems_rectified",
    "problems_overdue",
)


def build(ctx: MartInputs) -> pl.DataFrame:
    as_of = pl.lit(ctx.as_of, dtype=pl.Date())
    keys = ["source_id", "person_id"]
    persons = ctx.table("persons").select("source_id", "person_id", "name", "unit_code", "title")
    projects = ctx.table("projects").select("source_id", "project_id", "owner_id", "leader_id")
    problems = ctx.table("problems")

    owned = projects.group_by("source_id", pl.col("owner_id").alias("person_id")).agg(
        projects_owned=pl.len().cast(pl.Int64)
    )
    led = (
        projects.filter(pl.col("leader_id").is_not_null())
        .group_by("source_id", pl.col("leader_id").alias("person_id"))
        .agg(projects_led=pl.len().cast(pl.Int64))
    )
    ms = milestone_facts(ctx).join(projects, on=["source_id", "project_id"], how="inner")
    ms_agg = ms.group_by("source_id", pl.col("owner_id").alias("person_id")).agg(
        milestones_on_time=pl.col("is_on_time").sum().cast(pl.Int64),
        milestones_decided=(pl.col("is_on_time") | pl.col("is_late")).sum().cast(pl.Int64),
        overdue_milestones=pl.col("is_overdue").sum().cast(pl.Int64),
        avg_delay_days=pl.col("delay_days").filter(pl.col("is_late")).mean(),
    )
    filed = (
        reports_as_of(ctx)
        .filter(pl.col("submitted_by").is_not_null())
        .group_by("source_id", pl.col("submitted_by").alias("person_id"))
        .agg(reports_filed=pl.len().cast(pl.Int64))
    )
    pf = (
        project_flags(ctx)
        .join(projects, on=["source_id", "project_id"], how="inner")
        .group_by("source_id", pl.col("owner_id").alias("person_id"))
        .agg(pl.col("flags_traces").sum(), pl.col("flags_fabrication").sum())
    )
    direct = (
        ctx.flag_frame()
        .filter((pl.col("entity_type") == "person") & pl.col("family").is_in(["traces", "fabrication"]))
        .group_by("source_id", pl.col("entity_id").alias("person_id"))
        .agg(
            direct_traces=(pl.col("family") == "traces").sum().cast(pl.Int64),
            direct_fabrication=(pl.col("family") == "fabrication").sum().cast(pl.Int64),
        )
    )
    prob = (
        problems.filter(pl.col("owner_id").is_not_null())
        .group_by("source_id", pl.col("owner_id").alias("person_id"))
        .agg(
            problems_owned=pl.len().cast(pl.Int64),
            problems_rectified=(pl.col("status") == "rectified").sum().cast(pl.Int64),
            problems_overdue=((pl.col("status") == "open") & (pl.col("deadline") < as_of))
            .sum()
            .cast(pl.Int64),
        )
    )
    responsible = pl.concat([owned.select(keys), led.select(keys), prob.select(keys)]).unique(
        maintain_order=False
    )

    df = persons.join(responsible, on=keys, how="semi")
    for part in (owned, led, ms_agg, filed, pf, direct, prob):
        df = df.join(part, on=keys, how="left")
    df = df.with_columns(
        [pl.col(c).fill_null(0).cast(pl.Int64) for c in (*_COUNTS, "direct_traces", "direct_fabrication")]
    ).with_columns(
        flags_traces=pl.col("flags_traces") + pl.col("direct_traces"),
        flags_fabrication=pl.col("flags_fabrication") + pl.col("direct_fabrication"),
        on_time_rate=pl.when(pl.col("milestones_decided") > 0).then(
            pl.col("milestones_on_time") / pl.col("milestones_decided")
        ),
        avg_delay_days=pl.col("avg_delay_days").cast(pl.Float64).fill_null(0.0),
    )
    df = df.with_columns(
        score=(
            100.0
            - 40.0 * (1.0 - pl.col("on_time_rate")).fill_null(0.0)
            - (5.0 * pl.col("overdue_milestones")).clip(upper_bound=20.0)
            - (4.0 * pl.col("flags_traces")).clip(upper_bound=20.0)
            - (10.0 * pl.col("flags_fabrication")).clip(upper_bound=30.0)
            - (5.0 * pl.col("problems_overdue")).clip(upper_bound=15.0)
        ).clip(0.0, 100.0)
    )
    enough = pl.col("milestones_decided") >= MIN_DECIDED
    rate = pl.col("on_time_rate")
    conditions = {
        "按期高质": enough
        & (rate >= 0.9)
        & (pl.col("overdue_milestones") == 0)
        & (pl.col("flags_traces") == 0)
        & (pl.col("flags_fabrication") == 0),
        "经常逾期": (enough & (rate < 0.6)) | (pl.col("overdue_milestones") >= 3),
        "过度留痕风险": pl.col("flags_traces") >= 3,
        "数据造假风险": pl.col("flags_fabrication") >= 1,
        "整改滞后": pl.col("problems_overdue") >= 1,
        "样本不足": ~enough,
    }
    df = df.with_columns(
        tags=pl.concat_list(
            [
                pl.when(cond.fill_null(False)).then(pl.lit(tag)).otherwise(None)
                for tag in TAGS
                for cond in (conditions[tag],)
            ]
        ).list.drop_nulls()
    )
    return conform(with_as_of(df, ctx.as_of), COLUMNS, KEYS)
