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


def upsert(current: pl.DataFrame | None, incoming: pl.DataFrame, table: str, keep: list[str] | None = None
           ) -> pl.DataFrame:
    """`keep`: columns tonight's input did not have (the source dropped or renamed them): an incoming row
    takes their values from its current version instead of nulls (a new row has none to take)."""
    spec = TABLES[table]
    keep = [c for c in (keep or []) if c in spec.schema and c != spec.key]
    if keep and current is not None and not current.is_empty():
        old = current.select("source_id", key_fold(spec.key).alias("_key"), *[pl.col(c).alias(f"_old_{c}") for c in keep])
        incoming = (
            incoming.with_columns(key_fold(spec.key).alias("_key"))
            .join(old, on=["source_id", "_key"], how="left")
            .with_columns(pl.col(f"_old_{c}").alias(c) for c in keep)
            .select(incoming.columns)
        )
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


def drop_unchanged(tonight: pl.DataFrame, before: pl.DataFrame) -> pl.DataFrame:
    """The rows of tonight's full delivery that are not, value for value, a row of the delivery silver last
    took (`before`): the rest were normalized the night it was loaded (into silver or the quarantine), and
    normalizing them again would change nothing.

    Exact, not hashed (a collision would lose a change), and in tonight's order. Only when both deliveries
    have the same header in the same order; otherwise every row goes on, as a first delivery's would.
    """
    if tonight.is_empty() or before.is_empty() or tonight.columns != before.columns:
        return tonight
    if tonight.schema != before.schema:
        before = before.cast(tonight.schema, strict=False)
    return tonight.join(before.unique(), on=tonight.columns, how="anti", nulls_equal=True, maintain_order="left")
