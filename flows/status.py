"""`qingfeng status`: the last nights from the runs table, and which sources are failing or stale.

Reads only the warehouse (the state database's `runs` table and the latest `dq_flags` partition), so it
answers the same whether the nights ran from `qingfeng run`, `backfill` or a served schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import polars as pl
import sqlalchemy as sa

from flows.state import StateStore, runs
from warehouse.layout import Layout

SOURCE_STAGES = ("extract", "bronze", "normalize")


@dataclass
class Status:
    nights: pl.DataFrame  # run_id, as_of, finished, seconds, sources, failed, flags, status
    sources: pl.DataFrame  # source_id, status (tonight), last_run, last_good, stale, message
    failing: list[str]  # sources whose latest run failed
    stale: list[str]  # sources the latest marts mark stale (C4), failing ones included

    @property
    def healthy(self) -> bool:
        return not self.failing and not self.stale


def _records(state: StateStore, limit: int) -> pl.DataFrame:
    with state.engine.connect() as c:
        latest = (
            sa.select(runs.c.run_id, sa.func.max(runs.c.finished).label("f")).group_by(runs.c.run_id)
            .order_by(sa.desc("f")).limit(limit).subquery()
        )
        rows = [dict(r._mapping) for r in c.execute(sa.select(runs).where(runs.c.run_id.in_(sa.select(latest.c.run_id))))]
    schema = {"run_id": pl.String, "source_id": pl.String, "stage": pl.String, "table_name": pl.String,
              "as_of": pl.Date, "rows_in": pl.Int64, "rows_out": pl.Int64, "quarantined": pl.Int64,
              "flags": pl.Int64, "seconds": pl.Float64, "status": pl.String, "message": pl.String,
              "finished": pl.Datetime("us", "UTC")}
    if not rows:
        return pl.DataFrame(schema=schema)
    for r in rows:
        if isinstance(r["finished"], datetime) and r["finished"].tzinfo is None:
            r["finished"] = r["finished"].replace(tzinfo=UTC)  # SQLite keeps no zone; it was written in UTC
    return pl.DataFrame(rows, schema=schema, orient="row")


def _stale_in_marts(layout: Layout, as_of: date | None) -> set[str]:
    if as_of is None:
        return set()
    part = layout.mart_partition("dq_flags", as_of)
    if not part.is_dir():
        return set()
    flags = pl.read_parquet(part)
    return set(flags.filter(pl.col("rule_id") == "C4")["source_id"].to_list())


def status(layout: Layout, limit: int = 7) -> Status:
    state = StateStore(layout.state_url)
    try:
        rec = _records(state, limit)
        with state.engine.connect() as c:  # over every run, not only the last `limit`
            good = pl.DataFrame(
                [tuple(r) for r in c.execute(
                    sa.select(runs.c.source_id, sa.func.max(runs.c.as_of))
                    .where(runs.c.stage == "extract", runs.c.status == "ok").group_by(runs.c.source_id))],
                schema={"source_id": pl.String, "last_good": pl.Date}, orient="row",
            )
    finally:
        state.dispose()
    per_source = rec.filter((pl.col("source_id") != "*") & pl.col("stage").is_in(SOURCE_STAGES))
    failed_by_run = (
        per_source.filter(pl.col("status") == "failed").group_by("run_id")
        .agg(pl.col("source_id").unique().sort().alias("failed"))
    )
    nights = (
        rec.group_by("run_id").agg(
            pl.col("as_of").first(),
            pl.col("finished").max(),
            pl.col("seconds").filter(pl.col("source_id") == "*").sum().alias("cross_source_seconds"),
            pl.col("source_id").filter(pl.col("source_id") != "*").n_unique().alias("sources"),
            pl.col("flags").filter((pl.col("source_id") == "*") & (pl.col("stage") == "rules")).sum().alias("flags"),
        )
        .join(failed_by_run, on="run_id", how="left")
        .with_columns(pl.col("failed").fill_null(pl.lit([], dtype=pl.List(pl.String))))
        .with_columns(
            pl.when(pl.col("failed").list.len() > 0).then(pl.lit("completed with failures"))
            .otherwise(pl.lit("completed")).alias("status")
        )
        .sort("finished", descending=True)
    )
    if nights.is_empty():
        return Status(nights, pl.DataFrame(), [], [])
    latest = nights.row(0, named=True)
    tonight = per_source.filter(pl.col("run_id") == latest["run_id"])
    src = (
        tonight.group_by("source_id").agg(
            pl.when((pl.col("status") == "failed").any()).then(pl.lit("failed")).otherwise(pl.lit("ok")).alias("status"),
            pl.col("message").filter(pl.col("status") == "failed").first().alias("message"),
        )
    )
    stale_marts = _stale_in_marts(layout, latest["as_of"])
    src = (
        src.join(good, on="source_id", how="left")
        .with_columns(
            (pl.col("source_id").is_in(sorted(stale_marts)) | (pl.col("status") == "failed")).alias("stale"),
            pl.lit(latest["as_of"]).alias("last_run"),
        )
        .select("source_id", "status", "last_run", "last_good", "stale", "message")
        .sort("source_id")
    )
    failing = src.filter(pl.col("status") == "failed")["source_id"].to_list()
    stale = src.filter(pl.col("stale"))["source_id"].to_list()
    return Status(nights, src, failing, stale)
