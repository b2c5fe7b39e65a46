"""alerts: what the pipeline raised for people to act on, and whether the email went out.

Grain: one row per alert (source_id, kind, entity_type, entity_id, alert_id) raised for the business date,
plus any earlier alert whose email is still pending (so an undelivered alert stays visible).

Kinds and recipients (which alerts to raise: `transforms.alerts`; the outbox: `flows.outbox`):

* due_soon (D1, milestone): a reminder to the owner of the milestone's project, once when first due within
  7 days (threshold 7) and once the day before (threshold 1). An owner with no usable email address: the
  source's steward instead (recipient_role "steward"), so the reminder is not lost.
* overdue (D2, milestone) and problem_overdue (D3, problem): items of the night's digest to the supervision
  office (督办); `is_new` when not in any digest sent before. alert_id is the same night after night.
* data_quality (entity_type "source", entity_id the registry id): one per source per night with new
  contract flags (C1–C4) or quarantined rows, to its steward.

With `ctx.outbox` (the pipeline passes it) raised_at, sent_at, status, attempts and last_error come from the
outbox; without it (pure builds, tests) the alerts are computed from the flags, raised_at is the business
date at 00:00 Asia/Shanghai and every alert is pending.
"""

from __future__ import annotations

import polars as pl

from transforms import alerts as raise_
from transforms.schema import TIMESTAMP
from warehouse.marts import MartInputs, conform, with_as_of

NAME = "alerts"

COLUMNS: dict[str, tuple[pl.DataType, str]] = {
    "as_of": (pl.Date(), "business date of the run"),
    "source_id": (pl.String(), "data source (registry id) of the entity"),
    "alert_id": (pl.String(), "stable id: sha256(kind|source|entity_type|entity_id[|threshold or date]), 24 hex"),
    "kind": (pl.String(), "due_soon | overdue | problem_overdue | data_quality"),
    "entity_type": (pl.String(), "milestone, problem or source"),
    "entity_id": (pl.String(), "the source's id of the entity (for source: the registry id)"),
    "threshold": (pl.Int64(), "due_soon: days before due the reminder is for (7 or 1); NULL otherwise"),
    "severity": (pl.String(), "severity of the underlying flag (data_quality: the worst one)"),
    "recipient": (pl.String(), "email address the alert goes to (NULL: nobody with a usable address)"),
    "recipient_role": (pl.String(), "owner | steward (owner had no usable address, or data quality) | supervision"),
    "is_new": (pl.Boolean(), "overdue items: not in any digest sent before; true for the other kinds"),
    "detail": (pl.String(), "JSON: the figures the email showed (days left/overdue, unit, owner, counts)"),
    "message_id": (pl.String(), "the outbox email carrying the alert (the digest for overdue items)"),
    "status": (pl.String(), "pending | sending | sent | superseded (a digest replaced before it went out) | "
               "unconfirmed (a run died while handing it to the SMTP server; not sent again)"),
    "attempts": (pl.Int64(), "delivery attempts so far"),
    "last_error": (pl.String(), "why the last attempt failed (NULL when sent or not tried)"),
    "raised_at": (TIMESTAMP, "when the alert entered the outbox"),
    "sent_at": (TIMESTAMP, "when its email was delivered; NULL until then"),
}

KEYS: tuple[str, ...] = ("source_id", "kind", "entity_type", "entity_id", "alert_id")


_ITEM_SCHEMA: dict[str, pl.DataType] = {
    "source_id": pl.String(), "alert_id": pl.String(), "kind": pl.String(), "entity_type": pl.String(),
    "entity_id": pl.String(), "threshold": pl.Int64(), "severity": pl.String(), "recipient": pl.String(),
    "recipient_role": pl.String(), "is_new": pl.Boolean(), "detail": pl.String(), "message_id": pl.String(),
}


def _from_flags(ctx: MartInputs) -> pl.DataFrame:
    """Without an outbox: what tonight's flags raise, all pending."""
    flags, sources, as_of = ctx.flag_frame(), ctx.sources, ctx.as_of
    digest = raise_.alert_key("digest", as_of.isoformat())
    supervision = raise_.valid_email(ctx.supervision_email)
    rows = [
        *[i | {"message_id": i["alert_id"]}
          for i in raise_.due_soon(as_of, flags, ctx.silver, sources, ctx.supervision_email)],
        *[i | {"recipient": supervision, "recipient_role": "supervision" if supervision else None,
               "message_id": digest}
          for i in raise_.overdue(as_of, flags, ctx.silver)],
        *[i | {"message_id": i["alert_id"]}
          for i in raise_.data_quality(as_of, flags, None, sources, ctx.supervision_email)],
    ]
    df = pl.DataFrame(
        [{k: (raise_.detail_of(r) if k == "detail" else r.get(k, True if k == "is_new" else None))
          for k in _ITEM_SCHEMA} for r in rows],
        schema=_ITEM_SCHEMA,
    )
    return df.with_columns(
        status=pl.lit("pending"),
        attempts=pl.lit(0, dtype=pl.Int64),
        last_error=pl.lit(None, dtype=pl.String),
        raised_at=pl.lit(as_of, dtype=pl.Date()).cast(pl.Datetime("us")).dt.replace_time_zone(TIMESTAMP.time_zone),
        sent_at=pl.lit(None, dtype=TIMESTAMP),
    )


def build(ctx: MartInputs) -> pl.DataFrame:
    outbox = ctx.outbox
    df = _from_flags(ctx) if outbox is None else outbox.with_columns(pl.col("is_new").fill_null(True))
    return conform(with_as_of(df, ctx.as_of), COLUMNS, KEYS)
