"""Upsert tonight's clean rows into a source's current silver state: the latest version of a row wins.

Sources never hard-delete (contract §5), and a filedrop delivery may be cut off, so a row absent from
tonight's pull is kept, never removed.
"""

from __future__ import annotations

import polars as pl

from transforms.schema import TABLES


def key_fold(column: str) -> pl.Expr:
    """Ids that differ only by case are one row (contract §6)."""
    return pl.col(column).str.to_lowercase()


def upsert(current: pl.DataFrame | None, incoming: pl.DataFrame, table: str) -> pl.DataFrame:
    spec = TABLES[table]
    if current is None or current.is_empty():
        merged = incoming
    else:
        merged = pl.concat([current.select(spec.schema.keys()), incoming.select(spec.schema.keys())])
    # Incoming rows come after current ones, so on an equal change time tonight's version wins.
    order = pl.int_range(pl.len()).alias("_order")
    merged = merged.with_columns(order, key_fold(spec.key).alias("_key"))
    sort_by = [spec.change_column, "_order"] if spec.change_column else ["_order"]
    return (
        merged.sort(sort_by, nulls_last=False)
        .unique(subset=["source_id", "_key"], keep="last", maintain_order=False)
        .sort(["source_id", spec.key])
        .drop("_order", "_key")
    )


def replace_children(
    current: pl.DataFrame | None, incoming: pl.DataFrame, parent_ids: pl.DataFrame, key: str
) -> pl.DataFrame:
    """Child rows (a report's metrics) follow their parent: when a parent arrives again, its children
    are replaced by tonight's set; the children of other parents stay."""
    if current is None or current.is_empty():
        return incoming
    kept = current.join(parent_ids.unique(), on=["source_id", key], how="anti")
    return pl.concat([kept, incoming.select(current.columns)]).sort(["source_id", key], maintain_order=True)
