"""alerts: what the pipeline raises for people to act on, per business date.

Grain: one row per alert raised — (source_id, kind, entity_type, entity_id); `alert_id` is a stable hash
of exactly those, so the same open issue carries the same alert_id night after night (the email outbox
can dedupe on it).

Kinds and recipients:

* due_soon (from D1, on a milestone): the owner of the milestone's project (persons.email); when the
  owner has no email on file, the supervision office instead, so the reminder is not silently lost.
* overdue (from D2, on a milestone): the supervision office (督办).
* problem_overdue (from D3, on a problem): the supervision office.
* data_quality (one per source with any contract-family flag C1–C4; entity_type "source", entity_id the
  source's registry id): the source's data steward (sources.steward_email), else the supervision office.

raised_at is the business date at 00:00 Asia/Shanghai; sent_at stays NULL until delivery (outbox, later).
"""

from __future__ import annotations

import hashlib

import polars as pl

from expectations.catalog import detail_json
from transforms.schema import TIMESTAMP
from warehouse.marts import MartInputs, conform, with_as_of

NAME = "alerts"

KINDS = {"D1": "due_soon", "D2": "overdue", "D3": "problem_overdue"}

COLUMNS: dict[str, tuple[pl.DataType, str]] = {
    "as_of": (pl.Date(), "business date the alert was raised for"),
    "source_id": (pl.String(), "data source (registry id) of the entity"),
    "alert_id": (pl.String(), "stable id: sha256(kind|source_id|entity_type|entity_id), first 20 hex chars"),
    "kind": (pl.String(), "due_soon | overdue | problem_overdue | data_quality"),
    "entity_type": (pl.String(), "milestone, problem or source"),
    "entity_id": (pl.String(), "the source's id of the entity (for source: the registry id)"),
    "severity": (pl.String(), "severity of the underlying flag (for data_quality: the worst one)"),
    "recipient": (pl.String(), "email address the alert goes to"),
    "detail": (pl.String(), "JSON: the underlying flag's figures (data_quality: flag counts per rule)"),
    "raised_at": (TIMESTAMP, "when raised: as_of at 00:00 Asia/Shanghai"),
    "sent_at": (TIMESTAMP, "when delivered; NULL until the outbox sends it"),
}

KEYS: tuple[str, ...] = ("source_id", "kind", "entity_type", "entity_id")

_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


def alert_id(kind: str, source_id: str, entity_type: str, entity_id: str) -> str:
    """Stable across runs, processes and library versions (unlike polars' hash)."""
    key = "|".join((kind, source_id or "", entity_type or "", entity_id or ""))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


def build(ctx: MartInputs) -> pl.DataFrame:
    flags = ctx.flag_frame()
    supervision = pl.lit(ctx.supervision_email or None, dtype=pl.String)

    deadline = (
        flags.filter(pl.col("rule_id").is_in(list(KINDS)))
        .with_columns(kind=pl.col("rule_id").replace_strict(KINDS, return_dtype=pl.String))
        .sort("source_id", "kind", "entity_type", "entity_id", "detail", maintain_order=True)
        .unique(["source_id", "kind", "entity_type", "entity_id"], keep="first", maintain_order=True)
    )
    # due_soon: milestone -> project -> owner -> email
    owner_email = (
        ctx.table("milestones")
        .select("source_id", pl.col("milestone_id").alias("entity_id"), "project_id")
        .unique(["source_id", "entity_id"], keep="first", maintain_order=True)
        .join(
            ctx.table("projects").select("source_id", "project_id", "owner_id"),
            on=["source_id", "project_id"],
            how="inner",
        )
        .join(
            ctx.table("persons")
            .select("source_id", pl.col("person_id").alias("owner_id"), "email")
            .unique(["source_id", "owner_id"], keep="first", maintain_order=True),
            on=["source_id", "owner_id"],
            how="inner",
        )
        .select(
            "source_id",
            "entity_id",
            pl.lit("milestone").alias("entity_type"),
            pl.col("email").alias("owner_email"),
        )
    )
    deadline = deadline.join(
        owner_email, on=["source_id", "entity_type", "entity_id"], how="left"
    ).with_columns(
        recipient=pl.when(pl.col("kind") == "due_soon")
        .then(pl.coalesce(pl.col("owner_email"), supervision))
        .otherwise(supervision)
    )

    contract = flags.filter(pl.col("family") == "contract")
    per_rule = contract.group_by("source_id", "rule_id").agg(n=pl.len()).sort("source_id", "rule_id")
    dq = (
        contract.with_columns(
            sev=pl.col("severity").replace_strict(_SEVERITY_RANK, default=0, return_dtype=pl.Int64)
        )
        .group_by("source_id")
        .agg(sev=pl.col("sev").max())
        .join(
            per_rule.group_by("source_id", maintain_order=True).agg(pl.col("rule_id"), pl.col("n")),
            on="source_id",
            how="left",
        )
    )
    dq = (
        dq.with_columns(
            detail=pl.Series(
                [
                    detail_json({"flags_by_rule": dict(zip(r, n, strict=True))})
                    for r, n in zip(dq["rule_id"], dq["n"], strict=True)
                ],
                dtype=pl.String,
            ),
            severity=pl.col("sev").replace_strict(
                {v: k for k, v in _SEVERITY_RANK.items()}, return_dtype=pl.String
            ),
            kind=pl.lit("data_quality"),
            entity_type=pl.lit("source"),
            entity_id=pl.col("source_id"),
        )
        .join(ctx.sources.select("source_id", "steward_email"), on="source_id", how="left")
        .with_columns(recipient=pl.coalesce(pl.col("steward_email"), supervision))
    )

    cols = ["source_id", "kind", "entity_type", "entity_id", "severity", "recipient", "detail"]
    df = pl.concat([deadline.select(cols), dq.select(cols)], how="vertical")
    df = df.with_columns(
        alert_id=pl.Series(
            [
                alert_id(*row)
                for row in df.select("kind", "source_id", "entity_type", "entity_id").iter_rows()
            ],
            dtype=pl.String,
        ),
        raised_at=pl.lit(ctx.as_of, dtype=pl.Date())
        .cast(pl.Datetime("us"))
        .dt.replace_time_zone(TIMESTAMP.time_zone),
        sent_at=pl.lit(None, dtype=TIMESTAMP),
    )
    return conform(with_as_of(df, ctx.as_of), COLUMNS, KEYS)
