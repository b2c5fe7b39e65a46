"""Feature helpers for the `traces` family (T1–T6): pure, vectorized Polars over silver.

Shared by the rule modules `expectations/rules/t*_*.py`; the generic pieces (`count_quantiles`,
`robust_fence`, `near_duplicate_pairs`, `window_counts`) know nothing of evidence and may
serve any rule.

Stage of a report
    The stage of a report is the stage of its milestone (`stage_reports.milestone_id` →
    `milestones.stage`). A report with no milestone (or one naming a milestone that does not exist, a
    C3 matter) is placed on the milestone of its project whose due date is the nearest on or after the
    day it was submitted: that is the milestone it was working towards. A report submitted after every
    due date of its project goes to the project's last milestone (the latest due date). A report whose
    project has no milestones at all gets the stage `unknown`, which is a stage group of its own: it is
    judged only against other `unknown` reports, and only when there are enough of them.

Robust fences
    Counts of evidence items, pages and reports are skewed to the right. A fence is built per stage
    from quartiles only — Tukey's Q3 + k·IQR, on the counts (`raw`) or on log1p(count) (`log1p`: a
    multiplicative fence (Q3+1)·((Q3+1)/(Q1+1))^k − 1, for heavy tails such as page totals). The
    quartiles are those of count + U(−½, ½) (`count_quantiles`), so they move smoothly instead of
    jumping a whole unit. Means and standard deviations are never used: the outliers the rules look for
    would inflate them. A threshold also asks for a minimum excess over the median (absolute and
    relative), so a group with a tiny IQR does not flag 8 against 2. The reference group is the finest
    one that is large enough:

    1. `unit`   — the same stage in the same responsible unit (source_id, unit_code), when the unit has
                  at least `min_group_unit` of them: units differ in what they normally file;
    2. `source` — the same stage in the same source (one district system: its vendor decides what one
                  item is), when there are at least `min_group`;
    3. `city`   — the same stage over all sources, when there are at least `min_group`;
    4. none     — no verdict: too few comparable entities to say what is normal.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from transforms.phash import bands as phash_bands
from transforms.schema import OUTCOME_EVIDENCE, PROCESS_EVIDENCE, TZ

STAGE_UNKNOWN = "unknown"
LEVELS = ("unit", "source", "city")
_LEVEL_KEYS: dict[str, tuple[str, ...]] = {"unit": ("source_id", "unit_code"), "source": ("source_id",), "city": ()}
KIND_COLUMNS = ("photo", "sign_in_sheet", "meeting_minutes", "document", "ledger", "video", "other")

ID_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%:z"


def fmt_time(expr: pl.Expr) -> pl.Expr:
    """A timestamp as ISO-8601 text in the city's zone (for detail JSON)."""
    return expr.dt.convert_time_zone(TZ).dt.strftime(ID_TIME_FORMAT)


# --------------------------------------------------------------------------------------------------
# Reports, their milestone and stage
# --------------------------------------------------------------------------------------------------


def report_stages(reports: pl.DataFrame, milestones: pl.DataFrame, projects: pl.DataFrame) -> pl.DataFrame:
    """One row per report: source_id, report_id, project_id, unit_code, submitted_at, milestone_id
    (the linked one, else the inferred one), milestone_inferred, stage (`unknown` when none), due_date."""
    ms = milestones.select("source_id", "milestone_id", "project_id", "stage", "due_date").unique(
        subset=["source_id", "milestone_id"], keep="first"
    )
    rep = reports.select("source_id", "report_id", "project_id", "milestone_id", "submitted_at").unique(
        subset=["source_id", "report_id"], keep="first"
    )
    linked = rep.join(
        ms.select("source_id", "milestone_id", "stage", "due_date"), on=["source_id", "milestone_id"], how="left"
    )
    ok = linked.filter(pl.col("stage").is_not_null()).with_columns(pl.lit(False).alias("milestone_inferred"))
    todo = linked.filter(pl.col("stage").is_null()).drop("milestone_id", "stage", "due_date")
    if not todo.is_empty():
        # The project's milestones (few per project): the nearest due on/after the submission day first,
        # else the latest due. A small join: unlinked reports × their project's milestones.
        sub_day = pl.col("submitted_at").dt.convert_time_zone(TZ).dt.date()
        cand = todo.join(
            ms.select("source_id", "project_id", "milestone_id", "stage", "due_date"),
            on=["source_id", "project_id"], how="inner",
        ).with_columns((pl.col("due_date") >= sub_day).alias("_ahead"))
        due_days = pl.col("due_date").cast(pl.Int32)
        order = pl.when(pl.col("_ahead")).then(due_days).otherwise(10_000_000 - due_days)
        best = (
            cand.with_columns(order.alias("_order"))
            .sort(["source_id", "report_id", "_order", "milestone_id"])
            .unique(subset=["source_id", "report_id"], keep="first", maintain_order=True)
            .select("source_id", "report_id", "milestone_id", "stage", "due_date")
        )
        todo = todo.join(best, on=["source_id", "report_id"], how="left").with_columns(
            pl.col("milestone_id").is_not_null().alias("milestone_inferred"),
            pl.col("stage").fill_null(STAGE_UNKNOWN),
        )
    else:
        todo = todo.with_columns(
            pl.lit(None, pl.String).alias("milestone_id"), pl.lit(None, pl.String).alias("stage"),
            pl.lit(None, pl.Date).alias("due_date"), pl.lit(False).alias("milestone_inferred"),
        )
    cols = ["source_id", "report_id", "project_id", "submitted_at", "milestone_id", "milestone_inferred",
            "stage", "due_date"]
    out = pl.concat([ok.select(cols), todo.select(cols)], how="vertical_relaxed")
    units = projects.select("source_id", "project_id", "unit_code").unique(
        subset=["source_id", "project_id"], keep="first"
    )
    return out.join(units, on=["source_id", "project_id"], how="left")


def evidence_per_report(evidence: pl.DataFrame) -> pl.DataFrame:
    """One row per report that has evidence: n_items, pages (sum, NULL pages count as 0), n_paged,
    n_process, n_outcome, and one count per evidence kind (`by_kind`, a struct).

    Counts of items are 32-bit (a report has no 2^31 files): the frame has a row per report of the
    city (3.2 M at 96 × 5,000), and its eleven counts were half of it at 64 bits. Pages, a sum of
    values, stay 64-bit."""
    kind = pl.col("kind")
    return evidence.group_by("source_id", "report_id").agg(
        pl.len().cast(pl.Int32).alias("n_items"),
        pl.col("pages").fill_null(0).clip(lower_bound=0).sum().cast(pl.Int64).alias("pages"),
        pl.col("pages").is_not_null().sum().cast(pl.Int32).alias("n_paged"),
        kind.is_in(PROCESS_EVIDENCE).sum().cast(pl.Int32).alias("n_process"),
        kind.is_in(OUTCOME_EVIDENCE).sum().cast(pl.Int32).alias("n_outcome"),
        pl.struct([(kind == k).sum().cast(pl.Int32).alias(k) for k in KIND_COLUMNS]).alias("by_kind"),
    )


# The evidence columns `evidence_per_report` reads.
EVIDENCE_PER_REPORT_COLUMNS = ["report_id", "kind", "pages"]


def reports_with_evidence(
    reports: pl.DataFrame, milestones: pl.DataFrame, projects: pl.DataFrame, per_report: pl.DataFrame
) -> pl.DataFrame:
    """Every report (with its stage), and its evidence figures (`per_report`: `evidence_per_report`; 0
    when it has none)."""
    stages = report_stages(reports, milestones, projects)
    ev = per_report
    zero = {c: 0 for c in ("n_items", "pages", "n_paged", "n_process", "n_outcome")}
    return stages.join(ev, on=["source_id", "report_id"], how="left").with_columns(
        *[pl.col(c).fill_null(v) for c, v in zero.items()]
    )


def evidence_by_report_index(
    evidence: pl.DataFrame, reports: pl.DataFrame, columns: list[str]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(`columns` of the evidence of existing reports with `_rid`, the index: `_rid`, source_id,
    report_id). `_rid` is a dense integer index of the report, so heavy per-report work (sorts, windows,
    hash buckets) runs on one integer key instead of two strings. Evidence of a report that does not
    exist is left out (that is C3's business)."""
    index = reports.select("source_id", "report_id").unique().with_row_index("_rid")
    ev = evidence.select("source_id", "report_id", *columns).join(index, on=["source_id", "report_id"], how="inner")
    return ev.drop("source_id", "report_id"), index


# --------------------------------------------------------------------------------------------------
# Robust fences
# --------------------------------------------------------------------------------------------------


def count_quantiles(frame: pl.DataFrame, keys: list[str], x: str, probs: tuple[float, ...]) -> pl.DataFrame:
    """Per group (`keys`): `_n` and the quantiles `_q{i}` at `probs` of the counts in column `x`.

    Counts are discrete: the ordinary sample quartile of 1–15 items jumps a whole unit (Q1 = 3 or 4)
    with a handful of reports, and the fence built on it jumps with it. These are the quantiles of
    X + U, U ~ Uniform(−½, ½) — the continuous version of a count (Machado & Santos Silva 2005,
    "Quantiles for counts"), computed exactly rather than by simulation: within the mass of value v,
    which covers the cumulative proportions [F(v−), F(v)], Q(p) = v − ½ + (p − F(v−)) / P(X = v). The
    quartiles move smoothly with the distribution and stay robust: an extreme report moves none of them
    beyond its own share. One group_by over (group, distinct value) counts."""
    counts = frame.filter(pl.col(x).is_not_null()).group_by([*keys, x]).agg(pl.len().alias("_c"))
    return quantiles_of_value_counts(counts, keys, x, "_c", probs)


def quantiles_of_value_counts(counts: pl.DataFrame, keys: list[str], x: str, count: str,
                              probs: tuple[float, ...]) -> pl.DataFrame:
    """`count_quantiles` from value counts: one row per (group, distinct value `x`) with how many rows
    hold it (`count`). Groups of groups add their counts up, so finer groups' counts give the quantiles
    of coarser ones without going back to the rows."""
    vc = (
        counts.select(*keys, x, pl.col(count).alias("_c"))
        .sort([*keys, x])
        .with_columns(
            pl.col("_c").sum().over(keys).alias("_n"),
            pl.col("_c").cum_sum().over(keys).alias("_cum"),
        )
        .with_columns(
            ((pl.col("_cum") - pl.col("_c")) / pl.col("_n")).alias("_flo"),
            (pl.col("_cum") / pl.col("_n")).alias("_fhi"),
        )
    )
    aggs = [pl.col("_n").first().cast(pl.Int64)]
    for i, p in enumerate(probs):
        inside = (pl.col("_flo") <= p) & (pl.col("_fhi") > p)
        q = pl.col(x).cast(pl.Float64) - 0.5 + (p - pl.col("_flo")) / (pl.col("_fhi") - pl.col("_flo"))
        aggs.append(q.filter(inside).first().alias(f"_q{i}"))
    return vc.group_by(keys).agg(aggs).select(*keys, "_n", *[pl.col(f"_q{i}") for i in range(len(probs))])


def robust_fence(
    frame: pl.DataFrame,
    value: str,
    *,
    group: str = "stage",
    scale: str,
    k: float,
    min_group_unit: int,
    min_group: int,
    min_excess: float = 0.0,
    min_ratio: float = 0.0,
) -> pl.DataFrame:
    """Add a per-`group` robust fence over `value` to every row of `frame` (which needs `source_id`
    and `unit_code`), taking the finest level (unit → source → city) whose group is large enough.

    `value` is a count (items, pages, reports). `scale` is `raw` (Tukey on the counts) or `log1p`
    (Tukey on log1p(count): a multiplicative fence, for heavy right tails). Quartiles are the
    continuous quartiles of counts (`count_quantiles`), clipped at 0.

    Added columns: fence_level (`unit`/`source`/`city`, NULL: no verdict), fence_group (the unit code,
    the source id or `city`), group_size, q1, median, q3 (in the value's unit), fence (Q3 + k·IQR on the
    chosen scale, back in the value's unit) and threshold = max(fence, median + min_excess,
    median · min_ratio): the value may reach the threshold, not exceed it. NULL threshold: no verdict."""
    if scale not in ("raw", "log1p"):
        raise ValueError(f"scale must be 'raw' or 'log1p', not {scale!r}")
    # Quantiles of the counts (`count_quantiles`), then put on the fence's scale: quantiles commute with
    # a monotone transform, so log1p(Q) is the quantile of log1p(count).
    # The fence is chosen per cell (a distinct source, unit and group: a few thousand) and each row
    # takes its cell's figures at the end. A report frame has millions of rows: grouping them by three
    # strings at each level, and joining each level's figures to every row, cost +0.9 GiB of transients
    # at 3.2 M reports.
    cell_keys = list(dict.fromkeys(["source_id", "unit_code", group]))
    keys_of_rows = frame.select(cell_keys)
    cells = keys_of_rows.unique().with_row_index("_cell")
    # The rows are counted once, per cell and value, on an integer key; every level's quantiles come
    # from those counts (a few thousand cells, tens of values each).
    row_cell = (
        keys_of_rows.lazy()
        .join(cells.lazy(), on=cell_keys, how="left", nulls_equal=True, maintain_order="left")
        .select("_cell").collect().to_series()
    )
    del keys_of_rows
    value_counts = (
        pl.DataFrame([row_cell, frame.get_column(value).cast(pl.Int64).clip(lower_bound=0).alias("_x")])
        .filter(pl.col("_x").is_not_null())
        .group_by("_cell", "_x").agg(pl.len().alias("_c"))
        .join(cells, on="_cell", how="left")
    )
    fwd = (lambda e: e.clip(lower_bound=0).log1p()) if scale == "log1p" else (lambda e: e.clip(lower_bound=0))
    back = _expm1 if scale == "log1p" else (lambda e: e)
    min_sizes = {"unit": min_group_unit, "source": min_group, "city": min_group}
    for level in LEVELS:
        keys = [*_LEVEL_KEYS[level], group]
        level_counts = value_counts.group_by(*keys, "_x").agg(pl.col("_c").sum())
        stats = (
            quantiles_of_value_counts(level_counts, keys, "_x", "_c", (0.25, 0.5, 0.75))
            .filter(pl.col("_n") >= min_sizes[level])
            .select(
                *keys,
                pl.col("_n").alias(f"_n_{level}"),
                *[fwd(pl.col(f"_q{i}")).alias(f"_q{i + 1}_{level}") for i in range(3)],
            )
        )
        # A NULL key (a report without a unit or a stage) matches no group of that level.
        cells = cells.join(stats, on=keys, how="left", nulls_equal=False, maintain_order="left")
    has = {lv: pl.col(f"_n_{lv}").is_not_null() for lv in LEVELS}

    def pick(stat: str) -> pl.Expr:
        return pl.coalesce([pl.col(f"_{stat}_{lv}") for lv in LEVELS])

    level = pl.when(has["unit"]).then(pl.lit("unit")).when(has["source"]).then(pl.lit("source")).when(
        has["city"]).then(pl.lit("city")).otherwise(pl.lit(None, pl.String))
    fence_group = (
        pl.when(has["unit"]).then(pl.col("unit_code")).when(has["source"]).then(pl.col("source_id"))
        .when(has["city"]).then(pl.lit("city")).otherwise(pl.lit(None, pl.String))
    )
    q1, q2, q3 = pick("q1"), pick("q2"), pick("q3")
    median = back(q2)
    fence = back(q3 + k * (q3 - q1))
    threshold = pl.max_horizontal(fence, median + min_excess, median * min_ratio)
    figures = cells.sort("_cell").select(  # row i: the figures of cell i
        level.alias("fence_level"),
        fence_group.alias("fence_group"),
        pick("n").cast(pl.Int64).alias("group_size"),
        back(q1).alias("q1"),
        median.alias("median"),
        back(q3).alias("q3"),
        fence.alias("fence"),
        threshold.alias("threshold"),
    )
    return frame.hstack(figures[row_cell].get_columns())


def fence_detail_fields() -> list[pl.Expr]:
    """The fence columns of `robust_fence`, for a detail struct (figures rounded to 2 decimals)."""
    return [
        pl.col("fence_level"), pl.col("fence_group"), pl.col("group_size"),
        *[pl.col(c).round(2) for c in ("q1", "median", "q3", "fence", "threshold")],
    ]


# --------------------------------------------------------------------------------------------------
# Perceptual hashes: near-duplicates without all pairs
# --------------------------------------------------------------------------------------------------


def near_duplicate_pairs(frame: pl.DataFrame, group: str, hash_col: str, max_distance: int) -> pl.DataFrame:
    """Pairs of distinct hash values within one group (`group`: a non-negative integer column, e.g. a
    report index below 2^32) at Hamming distance <= max_distance.

    Pigeonhole: two 64-bit values that differ in at most d bits agree exactly on at least one of d+1
    disjoint bands. Per band, each value gets the key (group, band value), packed into one integer when
    it fits; a sort puts equal keys side by side and only values whose key is shared become candidates.
    The few candidates are paired by an equi-join on the key and confirmed by the popcount of the XOR.
    No all-pairs comparison: one integer sort per band plus the candidates.
    Returns `group`, `h`, `h2` (both directions, h != h2) and `distance`."""
    schema = {group: frame.schema[group], "h": pl.UInt64, "h2": pl.UInt64, "distance": pl.UInt32}
    values = frame.select(pl.col(group).cast(pl.UInt64).alias("_g"), pl.col(hash_col).alias("h")).filter(
        pl.col("h").is_not_null() & pl.col("_g").is_not_null()
    ).unique()
    if values.is_empty() or max_distance < 0:
        return pl.DataFrame(schema=schema)
    bands = phash_bands(min(max_distance + 1, 64))
    top = max(w for _, w in bands)
    # Pack (group, band value) into one integer when both fit, for a plain integer sort.
    packed = top <= 31 and values.select(pl.col("_g").max()).item() < (1 << (63 - top))
    parts = []
    for i, (shift, width) in enumerate(bands):
        band = pl.col("h") // pl.lit(1 << shift, pl.UInt64)  # Polars has no bit shift: divide
        if shift + width < 64:
            band = band % pl.lit(1 << width, pl.UInt64)
        keyed = values.with_columns(band.alias("_band"))
        if packed:
            k = pl.col("_g") * pl.lit(1 << top, pl.UInt64) + pl.col("_band")
            keyed = keyed.with_columns(k.alias("_k")).sort("_k")
            same_prev, same_next = pl.col("_k") == pl.col("_k").shift(1), pl.col("_k") == pl.col("_k").shift(-1)
            shared = (same_prev | same_next).fill_null(False)
        else:
            shared = pl.len().over("_g", "_band") > 1
        parts.append(keyed.filter(shared).select("_g", "_band", "h", pl.lit(i, pl.UInt8).alias("_bi")))
    cand = pl.concat(parts)
    return (
        cand.join(cand.select("_bi", "_g", "_band", pl.col("h").alias("h2")), on=["_bi", "_g", "_band"])
        .filter(pl.col("h") != pl.col("h2"))
        .select(pl.col("_g").cast(frame.schema[group]).alias(group), "h", "h2")
        .unique()
        .with_columns((pl.col("h") ^ pl.col("h2")).bitwise_count_ones().alias("distance"))
        .filter(pl.col("distance") <= max_distance)
    )


# --------------------------------------------------------------------------------------------------
# Time windows
# --------------------------------------------------------------------------------------------------


def window_counts(frame: pl.DataFrame, key: str, time_col: str, window: timedelta) -> pl.DataFrame:
    """For every row: how many rows of its group (`key`, best an integer) have `time_col` within
    [t − window, t] (`_window_n`), and the earliest such time (`_window_start`). One sort and a rolling
    window per group, no pairs."""
    f = frame.filter(pl.col(time_col).is_not_null()).sort([key, time_col])
    rolled = f.rolling(index_column=time_col, period=window, group_by=key, closed="both").agg(
        pl.len().cast(pl.Int64).alias("_window_n"), pl.col(time_col).min().alias("_window_start")
    )
    # One output row per input row; put them in the input's (key, time) order. Rows tied on (key, time)
    # share one window, so their order among themselves does not matter.
    rolled = rolled.sort([key, time_col])
    return f.with_columns(rolled.get_column("_window_n"), rolled.get_column("_window_start"))


def _expm1(expr: pl.Expr) -> pl.Expr:
    return expr.exp() - 1.0
