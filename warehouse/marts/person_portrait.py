"""person_portrait (责任人画像): how each responsible person's projects and problems are going.

Grain: one row per responsible person — (source_id, person_id) — i.e. every person in silver `persons`
who owns or leads at least one project, or owns at least one problem.

Personal data: the portrait carries the person's name only (no phone, no id card, no email).

As owner (责任人) — the person answers for the projects they own and the problems assigned to them:

* Milestone counts pool the milestones of all owned projects (conventions in `warehouse.marts`).
* on_time_rate: on-time / decided milestones (decided: completed, or open past due); NULL when none.
* avg_delay_days: mean days late over the late milestones (completed late: completion − due; still
  overdue: as_of − due); 0 when none is late.
* flags_traces / flags_fabrication: flags attributed to the owned projects, plus flags raised on the
  person directly (F5 digit tests).
* problems: assigned to the person (owner_id), found on or before as_of. problems_due: past their deadline
  or already closed; closed_on_time: rectified or transferred by the deadline (closed_at ≤ deadline, or no
  deadline set).

score (0–100): weighted mean of five components, weights renormalized over the defined ones
(`scoring.PERSON_PORTRAIT`; the first four are computed exactly as in project_health, pooled):

* schedule_score (w 35), management_score (w 10), completion_quality_score (w 15);
* integrity_score (w 25): 100 − 15 per fabrication flag − 5 per traces flag, *per owned project* (so an
  owner of many projects is not punished for their number), F7 excluded, direct flags included;
* rectification_score (w 15): 100 × problems closed on time / problems due.

A person who only leads (owns nothing) has score NULL: their portrait is the leader columns.

As leader (责任领导) — over the projects the person leads: leader_score (the four project components,
pooled over led projects, project_health weights), led_on_time_rate, led_projects_red / led_projects_amber
(rag of the led projects, as project_health computes it).

Tags (vocabulary `TAGS`, in that order; thresholds in `scoring.PERSON_PORTRAIT`):

* 按期高质: ≥ min_decided decided milestones, on_time_rate ≥ 0.9, nothing overdue, no traces or
  fabrication flag, completion quality ≥ 90 (or nothing completed yet).
* 经常逾期: (≥ min_decided decided and on_time_rate < 0.6) or ≥ 3 milestones overdue now.
* 过度留痕风险: ≥ 3 traces flags.
* 数据造假风险: ≥ 2 fabrication flags (one may be a data-entry slip; two are a pattern).
* 问题整改及时: ≥ 2 problems due and ≥ 90% of them closed by the deadline.
* 整改滞后: an owned problem is open past its deadline.
* 评分下降: score fell by ≥ 10 points since the previous portrait in the warehouse.
* 样本不足: fewer than min_decided (3) decided milestones — the rates say little.

score_change: score − the score of the previous portrait in the warehouse (`MartInputs.history`; NULL on
the first night or for a person new since then), so a portrait can be followed over time.
"""

from __future__ import annotations

import polars as pl

from warehouse.marts import (
    POOLED,
    MartInputs,
    conform,
    previous,
    project_facts,
    reports_as_of,
    scoring,
    with_as_of,
)
from warehouse.marts import project_health as ph

NAME = "person_portrait"

TAGS = ("按期高质", "经常逾期", "过度留痕风险", "数据造假风险", "问题整改及时", "整改滞后", "评分下降", "样本不足")

COLUMNS: dict[str, tuple[pl.DataType, str]] = {
    "as_of": (pl.Date(), "business date the portrait describes"),
    "source_id": (pl.String(), "data source (registry id) of the person"),
    "person_id": (pl.String(), "the source's person id"),
    "name": (pl.String(), "the person's name (the only personal data carried)"),
    "unit_code": (pl.String(), "the person's unit"),
    "title": (pl.String(), "the person's job title"),
    "projects_owned": (pl.Int64(), "projects whose responsible person (owner) this is"),
    "projects_led": (pl.Int64(), "projects this person leads (leader)"),
    "projects_red": (pl.Int64(), "owned projects rated red in project_health"),
    "milestones_decided": (pl.Int64(), "milestones of owned projects completed, or open past due"),
    "on_time_rate": (pl.Float64(), "on-time share of decided milestones of owned projects; NULL if none"),
    "overdue_milestones": (pl.Int64(), "open milestones of owned projects past their due date"),
    "avg_delay_days": (pl.Float64(), "mean days late over late milestones of owned projects; 0 if none"),
    "reports_filed": (pl.Int64(), "stage reports this person submitted on or before as_of"),
    "flags_traces": (pl.Int64(), "traces flags on owned projects (and their milestones, reports, evidence)"),
    "flags_fabrication": (pl.Int64(), "fabrication flags on owned projects, plus on the person (F5)"),
    "problems_owned": (pl.Int64(), "problems this person is responsible for rectifying"),
    "problems_rectified": (pl.Int64(), "owned problems with status rectified"),
    "problems_transferred": (pl.Int64(), "owned problems transferred (e.g. as disciplinary leads)"),
    "problems_due": (pl.Int64(), "owned problems past their deadline or already closed"),
    "problems_closed_on_time": (pl.Int64(), "owned problems rectified or transferred by their deadline"),
    "problems_overdue": (pl.Int64(), "owned problems still open past their deadline"),
    "schedule_score": (pl.Float64(), "0–100 as project_health, pooled over owned projects' milestones"),
    "management_score": (pl.Float64(), "0–100 as project_health, pooled over owned projects"),
    "completion_quality_score": (pl.Float64(), "0–100 as project_health, pooled over owned projects"),
    "integrity_score": (pl.Float64(), "0–100: 100 − 15·fabrication − 5·traces flags per owned project"),
    "rectification_score": (pl.Float64(), "0–100: problems closed on time / problems due; NULL if none due"),
    "score": (pl.Float64(), "0–100 weighted mean of the five components (weights in scoring.py)"),
    "tags": (pl.List(pl.String()), "labels from a small vocabulary: " + "、".join(TAGS)),
    "leader_score": (pl.Float64(), "0–100 project-health score pooled over the projects led; NULL if none"),
    "led_on_time_rate": (pl.Float64(), "on-time share of decided milestones of the projects led"),
    "led_projects_red": (pl.Int64(), "projects led rated red in project_health"),
    "led_projects_amber": (pl.Int64(), "projects led rated amber in project_health"),
    "prev_as_of": (pl.Date(), "as_of of the previous portrait in the warehouse; NULL if none"),
    "prev_score": (pl.Float64(), "score of the previous portrait; NULL if none"),
    "score_change": (pl.Float64(), "score − prev_score; NULL if either is NULL"),
}

KEYS: tuple[str, ...] = ("source_id", "person_id")


def _pooled(facts: pl.DataFrame, role: str, prefix: str = "") -> pl.DataFrame:
    """Sum the per-project counts over the projects where `role` (owner_id / leader_id) is the person."""
    return (
        facts.filter(pl.col(role).is_not_null())
        .group_by("source_id", pl.col(role).alias("person_id"))
        .agg(
            pl.len().cast(pl.Int64).alias(f"{prefix}projects"),
            *[pl.col(c).sum().cast(pl.Int64).alias(f"{prefix}{c}") for c in POOLED],
            (pl.col("rag") == "red").sum().cast(pl.Int64).alias(f"{prefix}red"),
            (pl.col("rag") == "amber").sum().cast(pl.Int64).alias(f"{prefix}amber"),
            pl.col("freshness").mean().alias(f"{prefix}freshness"),
        )
    )


def build(ctx: MartInputs) -> pl.DataFrame:
    hp, p = scoring.mart_params(ph.NAME), scoring.mart_params(NAME)
    as_of = pl.lit(ctx.as_of, dtype=pl.Date())
    keys = ["source_id", "person_id"]
    persons = ctx.table("persons").select("source_id", "person_id", "name", "unit_code", "title")
    problems = ctx.table("problems").filter(pl.col("found_at").is_null() | (pl.col("found_at") <= as_of))

    # per project: counts, freshness and rag exactly as project_health computes them
    comps, w = ph.components(hp), ph.weights(hp)
    rag_value, _ = ph.rag(hp)
    facts = (
        project_facts(ctx)
        .with_columns(
            days_overdue=(as_of - pl.col("first_overdue")).dt.total_days().fill_null(0).cast(pl.Int64),
            freshness=scoring.freshness(hp),
        )
        .with_columns(**comps)
        .with_columns(health_score=scoring.weighted_score({n: (pl.col(n), w[n]) for n in comps}))
        .with_columns(rag=rag_value)
    )
    owned = _pooled(facts, "owner_id")
    led_raw = _pooled(facts, "leader_id", "led_")
    # the leader's score: project components over the pooled counts of the led projects
    led_comps = ph.components(hp, per="led_projects")
    led = (
        led_raw.rename({f"led_{c}": c for c in (*POOLED, "freshness")})
        .select(
            *keys,
            projects_led=pl.col("led_projects"),
            leader_score=scoring.weighted_score({n: (e, w[n]) for n, e in led_comps.items()}),
            led_on_time_rate=pl.when(pl.col("milestones_decided") > 0).then(
                pl.col("milestones_on_time") / pl.col("milestones_decided")
            ),
            led_projects_red=pl.col("led_red"),
            led_projects_amber=pl.col("led_amber"),
        )
    )
    filed = (
        reports_as_of(ctx)
        .filter(pl.col("submitted_by").is_not_null())
        .group_by("source_id", pl.col("submitted_by").alias("person_id"))
        .agg(reports_filed_by=pl.len().cast(pl.Int64))
        .collect()
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
    is_open = pl.col("status") == "open"
    past_deadline = pl.col("deadline").is_not_null() & (pl.col("deadline") < as_of)
    closed = pl.col("status").is_in(["rectified", "transferred"])
    on_time = closed & (pl.col("deadline").is_null() | (pl.col("closed_at") <= pl.col("deadline")))
    prob = (
        problems.filter(pl.col("owner_id").is_not_null())
        .group_by("source_id", pl.col("owner_id").alias("person_id"))
        .agg(
            problems_owned=pl.len().cast(pl.Int64),
            problems_rectified=(pl.col("status") == "rectified").sum().cast(pl.Int64),
            problems_transferred=(pl.col("status") == "transferred").sum().cast(pl.Int64),
            problems_due=(past_deadline | closed).sum().cast(pl.Int64),
            problems_closed_on_time=on_time.fill_null(False).sum().cast(pl.Int64),
            problems_overdue=(is_open & past_deadline).sum().cast(pl.Int64),
        )
    )
    responsible = pl.concat([owned.select(keys), led.select(keys), prob.select(keys)]).unique()

    df = persons.join(responsible, on=keys, how="semi")
    for part in (owned, led, filed, direct, prob):
        df = df.join(part, on=keys, how="left")
    zero = [
        *POOLED, "projects", "red", "projects_led", "led_projects_red", "led_projects_amber", "reports_filed_by",
        "direct_traces", "direct_fabrication", "problems_owned", "problems_rectified", "problems_transferred",
        "problems_due", "problems_closed_on_time", "problems_overdue",
    ]
    df = df.with_columns(pl.col(c).fill_null(0).cast(pl.Int64) for c in zero).with_columns(
        projects_owned=pl.col("projects"),
        projects_red=pl.col("red"),
        reports_filed=pl.col("reports_filed_by"),
        flags_traces=pl.col("flags_traces") + pl.col("direct_traces"),
        flags_fabrication=pl.col("flags_fabrication") + pl.col("direct_fabrication"),
        integrity_traces=pl.col("integrity_traces") + pl.col("direct_traces"),
        integrity_fabrication=pl.col("integrity_fabrication") + pl.col("direct_fabrication"),
        on_time_rate=pl.when(pl.col("milestones_decided") > 0).then(
            pl.col("milestones_on_time") / pl.col("milestones_decided")
        ),
        overdue_milestones=pl.col("milestones_overdue"),
        avg_delay_days=pl.when(pl.col("milestones_late") > 0)
        .then(pl.col("late_days_sum") / pl.col("milestones_late"))
        .otherwise(0.0),
    )
    has_integrity_evidence = (pl.col("projects_owned") > 0) | (
        pl.col("direct_traces") + pl.col("direct_fabrication") > 0
    )
    df = df.with_columns(
        schedule_score=scoring.schedule(hp).round(2),
        management_score=scoring.management(hp).round(2),
        completion_quality_score=scoring.completion_quality().round(2),
        integrity_score=pl.when(has_integrity_evidence).then(scoring.integrity(hp, per="projects_owned").round(2)),
        rectification_score=pl.when(pl.col("problems_due") > 0)
        .then(100.0 * pl.col("problems_closed_on_time") / pl.col("problems_due"))
        .round(2),
    )
    pw = {
        "schedule_score": p["w_schedule"],
        "management_score": p["w_management"],
        "completion_quality_score": p["w_completion_quality"],
        "integrity_score": p["w_integrity"],
        "rectification_score": p["w_rectification"],
    }
    df = df.with_columns(score=scoring.weighted_score({n: (pl.col(n), wt) for n, wt in pw.items()}))
    df = df.join(previous(ctx, NAME, keys, {"score": "prev_score"}), on=keys, how="left").with_columns(
        score_change=(pl.col("score") - pl.col("prev_score")).round(2)
    )

    enough = pl.col("milestones_decided") >= p["min_decided"]
    rate = pl.col("on_time_rate")
    quality = pl.col("completion_quality_score")
    conditions = {
        "按期高质": enough
        & (rate >= p["on_time_good"])
        & (pl.col("overdue_milestones") == 0)
        & (pl.col("flags_traces") == 0)
        & (pl.col("flags_fabrication") == 0)
        & (quality.is_null() | (quality >= p["quality_good"])),
        "经常逾期": (enough & (rate < p["on_time_poor"])) | (pl.col("overdue_milestones") >= p["overdue_many"]),
        "过度留痕风险": pl.col("flags_traces") >= p["traces_many"],
        "数据造假风险": pl.col("flags_fabrication") >= p["fabrication_many"],
        "问题整改及时": (pl.col("problems_due") >= p["min_problems_due"])
        & (pl.col("problems_closed_on_time") >= p["rectified_on_time_good"] * pl.col("problems_due")),
        "整改滞后": pl.col("problems_overdue") >= 1,
        "评分下降": pl.col("score_change") <= -float(p["score_drop"]),
        "样本不足": ~enough,
    }
    df = df.with_columns(
        tags=pl.concat_list(
            [pl.when(conditions[tag].fill_null(False)).then(pl.lit(tag)).otherwise(None) for tag in TAGS]
        ).list.drop_nulls()
    )
    return conform(with_as_of(df, ctx.as_of), COLUMNS, KEYS)
