"""References across silver tables: spell each one as the row it names, and find the dangling ones.

A reference that differs from its target only by case (`p001` for `P001`) still resolves (contract
§6) and is rewritten to the target's own spelling, so later joins are plain equality joins. A
reference to no row at all keeps its value; rule C3 flags it.
"""

from __future__ import annotations

import polars as pl

from transforms.merge import key_fold
from transforms.schema import TABLES, Reference


def resolve_references(silver: dict[str, pl.DataFrame], only: tuple[str, ...] | None = None) -> dict[str, pl.DataFrame]:
    """Rewrite every reference column to the canonical spelling of its target key (same source); with
    `only`, the references of those tables alone (the other tables serve as targets)."""
    rewrite = [n for n in TABLES if n in silver and (only is None or n in only)]
    targets = {r.table for n in rewrite for r in TABLES[n].references}
    spellings = {
        name: frame.select(
            "source_id", key_fold(TABLES[name].key).alias("_fold"), pl.col(TABLES[name].key).alias("_canon")
        ).unique(subset=["source_id", "_fold"], keep="first")
        for name, frame in silver.items()
        if name in targets
    }
    out = dict(silver)
    for name in rewrite:
        spec = TABLES[name]
        frame = out[name]
        for ref in spec.references:
            if ref.table not in spellings or ref.column not in frame.columns:
                continue
            target = spellings[ref.table]
            frame = (
                frame.with_columns(key_fold(ref.column).alias("_fold"))
                .join(target, on=["source_id", "_fold"], how="left")
                .with_columns(pl.coalesce("_canon", ref.column).alias(ref.column))
                .drop("_fold", "_canon")
            )
        out[name] = frame
    return out


def dangling(silver: dict[str, pl.DataFrame], table: str, ref: Reference) -> pl.DataFrame:
    """Rows of `table` whose non-null `ref.column` names no row of `ref.table` in the same source:
    source_id, the row's key, and the missing value."""
    spec = TABLES[table]
    frame = silver[table]
    targets = silver.get(ref.table)
    if targets is None:
        targets = pl.DataFrame(schema={"source_id": pl.String, TABLES[ref.table].key: pl.String})
    keys = targets.select("source_id", pl.col(TABLES[ref.table].key).alias(ref.column)).unique()
    return (
        frame.filter(pl.col(ref.column).is_not_null())
        .select("source_id", spec.key, ref.column)
        .join(keys, on=["source_id", ref.column], how="anti")
    )
