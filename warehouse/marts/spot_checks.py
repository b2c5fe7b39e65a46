"""spot_checks (明察暗访): projects drawn for unannounced inspection, at random, weighted by risk.

Grain: one row per project drawn — (source_id, project_id). Partition as_of=D holds the latest draw made
for business date D (`qingfeng sample` again for D replaces it); `seed` and `population` say how it was
drawn, so the same draw can be made again.

Not built by the nightly run: it is drawn on demand by `qingfeng sample --as-of D --n N [--seed S]`, from
the published project_health and dq_flags partitions of D. An unannounced check must not be predictable
from a table everybody sees every morning, and the office decides when to draw and how many.

Population: every project in project_health for D except cancelled ones (completed projects stay in:
checking that a completion was real is part of the job).

Risk weight (parameters in `scoring.SPOT_CHECKS`):

    base 1
    + min(12, 3 × fabrication flags + 1 × traces flags)
    + min(3, 0.1 × days_overdue)
    + 4 × (100 − health_score) / 100
    + 2 when the owner or the unit failed the digit tests (F5 on the person or unit)

Every project has weight ≥ 1, so every project has a chance; a high-risk project is several times as
likely to be drawn, never certain. Drawing is weighted sampling without replacement by the
Efraimidis–Spirakis method: each project gets the key u^(1/w) with u uniform from numpy's
`Generator(PCG64(seed))`, and the n largest keys are drawn (draw_rank 1 = largest key). The population is
sorted by (source_id, project_id) first, so a seed gives the same draw on any machine.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl

from warehouse.marts import conform, scoring, with_as_of

NAME = "spot_checks"

COLUMNS: dict[str, tuple[pl.DataType, str]] = {
    "as_of": (pl.Date(), "business date of the project_health partition the draw was made from"),
    "source_id": (pl.String(), "data source (registry id) of the project"),
    "project_id": (pl.String(), "the source's project id"),
    "draw_rank": (pl.Int64(), "order of the draw, 1 = first (largest Efraimidis–Spirakis key)"),
    "project_code": (pl.String(), "the project's own code"),
    "title": (pl.String(), "project title"),
    "unit_code": (pl.String(), "responsible unit"),
    "owner_id": (pl.String(), "responsible person (责任人)"),
    "status": (pl.String(), "project status"),
    "current_stage": (pl.String(), "stage of the earliest open milestone (see project_health)"),
    "health_score": (pl.Float64(), "project_health.health_score on as_of"),
    "rag": (pl.String(), "project_health.rag on as_of"),
    "days_overdue": (pl.Int64(), "project_health.days_overdue on as_of"),
    "flags_traces": (pl.Int64(), "traces flags attributed to the project"),
    "flags_fabrication": (pl.Int64(), "fabrication flags attributed to the project"),
    "owner_or_unit_f5": (pl.Boolean(), "the owner or the unit failed the digit tests (F5) on as_of"),
    "rules_fired": (pl.List(pl.String()), "distinct rule ids that fired on the project or its records"),
    "risk_weight": (pl.Float64(), "sampling weight (≥ 1; formula in the module docstring)"),
    "weight_share": (pl.Float64(), "risk_weight / sum of all weights: the chance to be drawn first"),
    "reasons": (pl.List(pl.String()), "why the project carried weight (风险信号), or 随机抽取 when none"),
    "seed": (pl.Int64(), "seed of the draw (numpy PCG64)"),
    "population": (pl.Int64(), "projects that could be drawn"),
}

KEYS: tuple[str, ...] = ("source_id", "project_id")

_HEALTH_COLUMNS = (
    "source_id", "project_id", "project_code", "title", "unit_code", "owner_id", "status", "current_stage",
    "health_score", "rag", "days_overdue", "flags_traces", "flags_fabrication", "rules_fired",
)


def weighted_sample(weights: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of `n` items drawn without replacement, P ∝ weight (Efraimidis–Spirakis), in draw order.

    Pure: the same weights, n and seed give the same indices. Weights must be > 0. Keys u^(1/w) are
    compared as log(u)/w (same order, no underflow). Ties (practically impossible) go to the lower index.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or (w.size and not np.all(w > 0)):
        raise ValueError("weights must be a 1-d array of positive numbers")
    n = max(0, min(int(n), w.size))
    u = 1.0 - np.random.default_rng(np.random.PCG64(seed)).random(w.size)  # in (0, 1]
    keys = np.log(u) / w
    order = np.lexsort((np.arange(w.size), -keys))  # largest key first, then lower index
    return order[:n]


def risk_weights(health: pl.DataFrame, flags: pl.DataFrame | None = None) -> pl.DataFrame:
    """The population (non-cancelled projects of `health`), sorted by keys, with risk_weight and reasons."""
    p = scoring.mart_params(NAME)
    if "rules_fired" not in health.columns:  # a partition published before the column existed
        health = health.with_columns(rules_fired=pl.lit([], dtype=pl.List(pl.String())))
    pop = (
        health.filter(pl.col("status").is_null() | (pl.col("status") != "cancelled"))
        .select(_HEALTH_COLUMNS)
        .sort(list(KEYS))
    )
    if flags is not None and not flags.is_empty():
        f5 = flags.filter((pl.col("rule_id") == "F5") & pl.col("entity_type").is_in(["person", "unit"]))
        person = f5.filter(pl.col("entity_type") == "person").select("source_id", owner_id="entity_id").unique()
        unit = f5.filter(pl.col("entity_type") == "unit").select("source_id", unit_code="entity_id").unique()
        pop = pop.with_columns(
            owner_or_unit_f5=pl.struct("source_id", "owner_id").is_in(person.to_struct().implode())
            | pl.struct("source_id", "unit_code").is_in(unit.to_struct().implode())
        )
    else:
        pop = pop.with_columns(owner_or_unit_f5=pl.lit(False))
    fab, tr = pl.col("flags_fabrication").fill_null(0), pl.col("flags_traces").fill_null(0)
    overdue = pl.col("days_overdue").fill_null(0)
    score = pl.col("health_score").fill_null(100.0)
    flag_w = (p["per_fabrication_flag"] * fab + p["per_traces_flag"] * tr).clip(upper_bound=p["flags_cap"])
    overdue_w = (p["per_overdue_day"] * overdue).clip(upper_bound=p["overdue_cap"])
    score_w = p["low_score_scale"] * (100.0 - score).clip(0.0, 100.0) / 100.0
    f5_w = pl.when(pl.col("owner_or_unit_f5")).then(p["person_unit_flag"]).otherwise(0.0)
    none = pl.lit(None, dtype=pl.String)
    reasons = pl.concat_list(
        pl.when(fab > 0).then(pl.format("数据造假旗标 {} 条", fab)).otherwise(none),
        pl.when(tr > 0).then(pl.format("过度留痕旗标 {} 条", tr)).otherwise(none),
        pl.when(overdue > 0).then(pl.format("逾期 {} 天", overdue)).otherwise(none),
        pl.when(pl.col("rag").is_in(["amber", "red"]))
        .then(pl.format("体检 {} {}", pl.col("rag"), score.round(1)))
        .otherwise(none),
        pl.when(pl.col("owner_or_unit_f5")).then(pl.lit("责任人或单位数字检验异常(F5)")).otherwise(none),
    ).list.drop_nulls()
    pop = pop.with_columns(
        risk_weight=(p["base_weight"] + flag_w + overdue_w + score_w + f5_w).cast(pl.Float64).round(4),
        reasons=pl.when(reasons.list.len() > 0).then(reasons).otherwise(pl.lit(["随机抽取（无风险信号）"])),
    )
    return pop.with_columns(weight_share=pl.col("risk_weight") / pl.col("risk_weight").sum())


def draw(health: pl.DataFrame, flags: pl.DataFrame | None, n: int, seed: int, as_of: date) -> pl.DataFrame:
    """The spot_checks mart for one draw: pure given its inputs, n and seed."""
    pop = risk_weights(health, flags)
    idx = weighted_sample(pop["risk_weight"].to_numpy(), n, seed)
    drawn = pop[idx.tolist()].with_columns(
        draw_rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int64),
        seed=pl.lit(seed, dtype=pl.Int64),
        population=pl.lit(pop.height, dtype=pl.Int64),
    )
    return conform(with_as_of(drawn, as_of), COLUMNS, KEYS)
