"""The alert outbox: every alert email, stored once under a stable key, sent exactly once.

Tables live in the pipeline's state database (`flows.state.metadata`, so `StateStore` creates them):

* `outbox_messages`: one email (a reminder, the night's digest, a data-quality report), rendered when
  raised; status pending -> sending -> sent (or superseded, for a digest replaced by a newer one before it
  went out; or unconfirmed, when a run died while handing it to the SMTP server), attempts, last_error,
  raised_at, sent_at.
* `outbox_items`: the alerts an email carries (one for a reminder or a data-quality report, every
  overdue milestone and problem for a digest), keyed (alert_id, message_id).
* `outbox_flags_seen`: contract flags already reported to a steward, so that only new ones are.

Raising inserts what is absent and never touches what exists: a rerun of the same night raises nothing
new. Delivery claims each pending message (pending -> sending, committed) before it talks to the SMTP
server, so two runs never both send it, and a run killed mid-send leaves it "sending": the next run marks
it unconfirmed and reports it rather than risk a second copy. A failure goes back to pending with its
error for the next run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import sqlalchemy as sa

from flows.mail import DeliveryUnknown, MailError, ServerUnavailable, Transport, build_message, render
from flows.state import metadata
from transforms import alerts as raise_
from transforms.schema import TIMESTAMP

log = logging.getLogger("qingfeng")

messages = sa.Table(
    "outbox_messages",
    metadata,
    sa.Column("message_id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # reminder | digest | data_quality
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("source_id", sa.String(100), nullable=False),  # "*" for the digest
    sa.Column("recipient", sa.String(320)),  # NULL: nobody to send it to (kept, reported)
    sa.Column("recipient_name", sa.String(200)),
    sa.Column("recipient_role", sa.String(16)),  # owner | steward | supervision
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("body_text", sa.Text, nullable=False),
    sa.Column("body_html", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | sending | sent | superseded | unconfirmed
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("transport", sa.String(300)),
    sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_attempt_at", sa.DateTime(timezone=True)),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
)

items = sa.Table(
    "outbox_items",
    metadata,
    sa.Column("alert_id", sa.String(32), primary_key=True),
    sa.Column("message_id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(20), nullable=False),  # due_soon | overdue | problem_overdue | data_quality
    sa.Column("source_id", sa.String(100), nullable=False),
    sa.Column("entity_type", sa.String(16), nullable=False),
    sa.Column("entity_id", sa.String(200), nullable=False),
    sa.Column("threshold", sa.Integer),  # due_soon: 7 or 1 days before due
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("is_new", sa.Boolean, nullable=False, default=True),
    sa.Column("severity", sa.String(16)),
    sa.Column("detail", sa.Text),  # JSON: the figures the email showed
    sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
)

# The alert stage asks for the items of the digests already sent. Without these indexes SQLite read every
# item and looked its message up, in the order of the items' key, and a digest's status lies behind its
# HTML (2.4 MB at 96 × 1,000, about 12,000 items): each item read through its digest's body again, and
# every night adds a digest. At 96 × 1,000 the query took 2.3 s on the second night and 25 s on the third;
# it now starts from the sent digests (`MESSAGES_BY_STATUS`) and finds their items (`ITEMS_BY_MESSAGE`).
MESSAGES_BY_STATUS = sa.Index("outbox_messages_by_status", messages.c.status, messages.c.kind, messages.c.as_of)
ITEMS_BY_MESSAGE = sa.Index("outbox_items_by_message", items.c.message_id)

flags_seen = sa.Table(
    "outbox_flags_seen",
    metadata,
    sa.Column("flag_key", sa.String(32), primary_key=True),
    sa.Column("source_id", sa.String(100), nullable=False),
    sa.Column("first_as_of", sa.Date, nullable=False),
)

@dataclass
class MailSummary:
    raised: int = 0  # messages new tonight
    sent: int = 0
    failed: int = 0  # attempted tonight and still pending
    pending: int = 0  # pending after tonight (including never attempted)
    transport: str | None = None  # None: no SMTP host, nothing was sent
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.transport is None:
            return (f"mail: no SMTP host set (QINGFENG_SMTP_HOST): nothing sent, {self.pending} alert email(s) "
                    f"pending in the outbox ({self.raised} raised tonight)")
        return (f"mail via {self.transport}: {self.raised} raised tonight, {self.sent} sent, "
                f"{self.failed} failed (kept pending), {self.pending} pending")


@dataclass(frozen=True)
class NightContext:
    as_of: date
    supervision_email: str | None
    sender: str | None
    docs_index: Path | None = None
    quarantine_dir: Path | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def _existing(conn, message_ids: list[str], chunk: int = 900) -> set[str]:
    """Those of `message_ids` already in the outbox, asked in chunks (one query per message cost a second a
    night, and rendering again what exists cost more)."""
    found: set[str] = set()
    for lo in range(0, len(message_ids), chunk):
        found.update(conn.execute(sa.select(messages.c.message_id).where(
            messages.c.message_id.in_(message_ids[lo:lo + chunk]))).scalars())
    return found


def _insert(conn, raised: list[tuple[dict, list[dict]]], now: datetime) -> int:
    """Insert each message (with the items it carries) unless one with its id exists, or came before it in
    `raised`. Two statements for all of them: three a message cost about 2 s a night at 96 × 1,000. Returns
    how many were inserted."""
    known = _existing(conn, [m["message_id"] for m, _ in raised])
    fresh: dict[str, tuple[dict, list[dict]]] = {}
    for message, carried in raised:
        if message["message_id"] not in known:
            fresh.setdefault(message["message_id"], (message, carried))
    if not fresh:
        return 0
    conn.execute(sa.insert(messages), [{"status": "pending", "attempts": 0, "raised_at": now, **message}
                                       for message, _ in fresh.values()])
    rows = [{
        "alert_id": i["alert_id"], "message_id": message["message_id"], "kind": i["kind"],
        "source_id": i["source_id"], "entity_type": i["entity_type"], "entity_id": i["entity_id"],
        "threshold": i.get("threshold"), "as_of": message["as_of"], "is_new": bool(i.get("is_new", True)),
        "severity": i.get("severity"), "detail": raise_.detail_of(i), "raised_at": now,
    } for message, carried in fresh.values() for i in carried]
    if rows:
        conn.execute(sa.insert(items), rows)
    return len(fresh)


def sent_digest_alerts(as_of: date) -> sa.Select:
    """The alerts carried by the digests sent before `as_of` (found through `MESSAGES_BY_STATUS`)."""
    return (sa.select(items.c.alert_id).join(messages, messages.c.message_id == items.c.message_id)
            .where(messages.c.kind == "digest", messages.c.status == "sent", messages.c.as_of < as_of))


def raise_alerts(engine: sa.Engine, night: NightContext, flags: pl.DataFrame, silver: dict[str, pl.DataFrame],
                 sources: pl.DataFrame, quarantine: pl.DataFrame | None = None) -> int:
    """Store tonight's alerts in the outbox (insert-if-absent). Returns how many emails are new."""
    as_of, now, new = night.as_of, _now(), 0
    supervision = raise_.valid_email(night.supervision_email)
    with engine.begin() as conn:
        # D1 reminders: one email per milestone and threshold
        reminders = raise_.due_soon(as_of, flags, silver, sources, supervision)
        known = _existing(conn, [i["alert_id"] for i in reminders])
        raised = []
        for item in reminders:
            if item["alert_id"] in known:  # raised on an earlier night: kept as it was, not rendered again
                continue
            subject, text, html = render("reminder", item=item, as_of=as_of)
            raised.append(({
                "message_id": item["alert_id"], "kind": "reminder", "as_of": as_of, "source_id": item["source_id"],
                "recipient": item["recipient"], "recipient_role": item["recipient_role"],
                "recipient_name": item["owner_name"] if item["recipient_role"] == "owner" else None,
                "subject": subject, "body_text": text, "body_html": html,
            }, [item]))
        new += _insert(conn, raised, now)

        # D2/D3 digest: one email a night to the supervision office
        digest_id = raise_.alert_key("digest", as_of.isoformat())
        overdue = raise_.overdue(as_of, flags, silver)
        exists = conn.execute(sa.select(messages.c.message_id).where(messages.c.message_id == digest_id)).first()
        if overdue and not exists:
            sent_before = set(conn.execute(sent_digest_alerts(as_of)).scalars())
            for i in overdue:
                i["is_new"] = i["alert_id"] not in sent_before
            units: dict[tuple, list[dict]] = {}
            for i in overdue:
                units.setdefault((i["source_id"], i["unit_code"], i["unit_name"]), []).append(i)
            subject, text, html = render("digest", as_of=as_of, units=units, total=len(overdue),
                                         new=sum(i["is_new"] for i in overdue),
                                         milestones=sum(i["kind"] == "overdue" for i in overdue),
                                         problems=sum(i["kind"] == "problem_overdue" for i in overdue))
            new += _insert(conn, [({
                "message_id": digest_id, "kind": "digest", "as_of": as_of, "source_id": "*",
                "recipient": supervision, "recipient_role": "supervision" if supervision else None,
                "recipient_name": "督办室", "subject": subject, "body_text": text, "body_html": html,
            }, overdue)], now)
            # an older digest that never went out is replaced by tonight's, which lists everything again
            conn.execute(sa.update(messages).where(
                messages.c.kind == "digest", messages.c.status == "pending", messages.c.as_of < as_of,
            ).values(status="superseded", last_error="replaced by the digest of " + as_of.isoformat()))

        # data quality: one email per source with new contract flags or quarantined rows
        seen = set(conn.execute(sa.select(flags_seen.c.flag_key).where(flags_seen.c.first_as_of < as_of)).scalars())
        quality = raise_.data_quality(as_of, flags, quarantine, sources, supervision, seen)
        known = _existing(conn, [i["alert_id"] for i in quality])
        raised = []
        for item in quality:
            if item["alert_id"] in known:
                continue
            subject, text, html = render(
                "data_quality", item=item, as_of=as_of,
                docs=str(night.docs_index) if night.docs_index else None,
                quarantine_dir=str(night.quarantine_dir) if night.quarantine_dir else None)
            raised.append(({
                "message_id": item["alert_id"], "kind": "data_quality", "as_of": as_of,
                "source_id": item["source_id"], "recipient": item["recipient"],
                "recipient_role": item["recipient_role"], "recipient_name": "数据管理员",
                "subject": subject, "body_text": text, "body_html": html,
            }, [item]))
        new += _insert(conn, raised, now)
        contract = flags.filter(pl.col("family") == "contract")
        if contract.height:
            keys = contract.select("source_id").with_columns(raise_.flag_keys(contract)).unique("flag_key")
            known = set(conn.execute(sa.select(flags_seen.c.flag_key)).scalars())
            fresh = [{"flag_key": k, "source_id": s, "first_as_of": as_of}
                     for s, k in keys.iter_rows() if k not in known]
            if fresh:
                conn.execute(sa.insert(flags_seen), fresh)
    return new


def deliver(engine: sa.Engine, transport: Transport | None, sender: str | None) -> MailSummary:
    """Send every pending message through `transport` (None: send nothing)."""
    summary = MailSummary(transport=transport.description if transport else None)
    if transport is not None:
        summary.errors += settle_interrupted(engine)
    with engine.connect() as conn:
        pending = [dict(r._mapping) for r in conn.execute(
            sa.select(messages).where(messages.c.status == "pending")
            .order_by(messages.c.raised_at, messages.c.message_id))]
    if transport is None:
        summary.pending = len(pending)
        return summary
    from_addr = sender or "qingfeng@localhost.localdomain"
    unavailable: str | None = None  # once the server cannot be reached, the rest wait for the next run
    unconfirmed = 0
    try:
        for m in pending:
            error, maybe_delivered = unavailable, False
            if error is None and not _claim(engine, m["message_id"]):
                continue  # another run is sending it, or has sent it: never twice
            if error is None:
                try:
                    if not m["recipient"]:
                        raise MailError("no recipient: neither the person nor the source's steward nor the "
                                        "supervision office has a usable email address")
                    msg = build_message(sender=from_addr, recipient=m["recipient"],
                                        recipient_name=m["recipient_name"], subject=m["subject"],
                                        text=m["body_text"], html=m["body_html"], message_id=m["message_id"])
                    transport.send(msg, f"{m['as_of'].isoformat()}-{m['kind']}-{m['message_id']}")
                except ServerUnavailable as e:
                    error = unavailable = str(e)
                except DeliveryUnknown as e:  # the server may have it: never twice, so reported, not retried
                    error, maybe_delivered = f"{e}; {NOT_SENT_AGAIN}", True
                except MailError as e:
                    error = str(e)
            now = _now()
            values = {"attempts": m["attempts"] + 1, "last_attempt_at": now, "transport": transport.description}
            if error is None:
                values |= {"status": "sent", "sent_at": now, "last_error": None}
                summary.sent += 1
            else:
                values |= {"last_error": error}
                summary.failed += 1
                if error != unavailable:
                    summary.errors.append(f"{m['kind']} {m['message_id']} to {m['recipient'] or '—'}: {error}")
                    log.warning("alert email %s not sent: %s", m["message_id"], error)
            if maybe_delivered:
                values["status"] = "unconfirmed"
                unconfirmed += 1
            elif error is not None:
                values["status"] = "pending"  # back from "sending" (claimed) or never left pending
            with engine.begin() as conn:
                conn.execute(sa.update(messages).where(messages.c.message_id == m["message_id"]).values(**values))
    finally:
        transport.close()
    if unavailable:
        waiting = summary.failed - len(summary.errors)
        summary.errors.insert(0, f"{waiting} email(s) wait for the next run: {unavailable}")
        log.warning("%d alert email(s) not sent: %s", waiting, unavailable)
    summary.pending = summary.failed - unconfirmed
    return summary


NOT_SENT_AGAIN = "it may have been delivered, so it is not sent again (set its status back to pending to send it anyway)"
INTERRUPTED = f"the run stopped while this email was being handed to the SMTP server: {NOT_SENT_AGAIN}"


def _claim(engine: sa.Engine, message_id: str) -> bool:
    """pending -> sending, committed before the SMTP conversation starts. Only one run can claim a message,
    and a message left "sending" by a run that died mid-send is never sent again by itself."""
    with engine.begin() as conn:
        claimed = conn.execute(
            sa.update(messages)
            .where(messages.c.message_id == message_id, messages.c.status == "pending")
            .values(status="sending", last_attempt_at=_now())
        ).rowcount
    return claimed == 1


def settle_interrupted(engine: sa.Engine) -> list[str]:
    """Messages a killed run left "sending": whether the server took them is unknown. Sending them again
    could reach the person twice, so they become "unconfirmed" and are reported instead."""
    with engine.begin() as conn:
        stuck = conn.execute(sa.select(messages.c.message_id, messages.c.kind, messages.c.recipient)
                             .where(messages.c.status == "sending")).all()
        if not stuck:
            return []
        conn.execute(sa.update(messages).where(messages.c.status == "sending")
                     .values(status="unconfirmed", last_error=INTERRUPTED))
    for message_id, kind, recipient in stuck:
        log.warning("alert email %s (%s to %s) unconfirmed: %s", message_id, kind, recipient, INTERRUPTED)
    return [f"{kind} {message_id} to {recipient or '—'}: unconfirmed — {INTERRUPTED}"
            for message_id, kind, recipient in stuck]


OUTBOX_SCHEMA: dict[str, pl.DataType] = {
    "alert_id": pl.String(), "message_id": pl.String(), "kind": pl.String(), "source_id": pl.String(),
    "entity_type": pl.String(), "entity_id": pl.String(), "threshold": pl.Int64(), "item_as_of": pl.Date(),
    "is_new": pl.Boolean(), "severity": pl.String(), "detail": pl.String(), "raised_at": TIMESTAMP,
    "message_kind": pl.String(), "recipient": pl.String(), "recipient_role": pl.String(), "subject": pl.String(),
    "status": pl.String(), "attempts": pl.Int64(), "last_error": pl.String(), "sent_at": TIMESTAMP,
}


def outbox_frame(engine: sa.Engine, as_of: date) -> pl.DataFrame:
    """Tonight's alerts (raised for `as_of`) and any earlier one still pending, with their email's state."""
    q = (sa.select(
        items.c.alert_id, items.c.message_id, items.c.kind, items.c.source_id, items.c.entity_type,
        items.c.entity_id, items.c.threshold, items.c.as_of.label("item_as_of"), items.c.is_new, items.c.severity,
        items.c.detail, items.c.raised_at, messages.c.kind.label("message_kind"), messages.c.recipient,
        messages.c.recipient_role, messages.c.subject, messages.c.status, messages.c.attempts,
        messages.c.last_error, messages.c.sent_at,
    ).join(messages, messages.c.message_id == items.c.message_id)
     .where(sa.or_(items.c.as_of == as_of, sa.and_(messages.c.status == "pending", items.c.as_of < as_of))))
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(q)]
    for r in rows:
        for k in ("raised_at", "sent_at"):
            if r[k] is not None and r[k].tzinfo is None:  # SQLite hands back naive UTC
                r[k] = r[k].replace(tzinfo=UTC)
    utc = {k: (pl.Datetime("us", "UTC") if k in ("raised_at", "sent_at") else t) for k, t in OUTBOX_SCHEMA.items()}
    df = pl.DataFrame(rows, schema=utc, orient="row") if rows else pl.DataFrame(schema=utc)
    return df.with_columns(pl.col("raised_at", "sent_at").dt.convert_time_zone(TIMESTAMP.time_zone))


def ensure_outbox(engine: sa.Engine) -> None:
    """The outbox's tables and indexes, created where absent: a StateStore made before this module was
    imported has no outbox tables, and a state database from before the indexes has none of them."""
    metadata.create_all(engine, tables=[messages, items, flags_seen])
    with engine.begin() as conn:
        for index in (MESSAGES_BY_STATUS, ITEMS_BY_MESSAGE):
            index.create(conn, checkfirst=True)


def night_alerts(engine: sa.Engine, night: NightContext, flags: pl.DataFrame, silver: dict[str, pl.DataFrame],
                 sources: pl.DataFrame, quarantine: pl.DataFrame | None = None,
                 dry_run_mail: Path | None = None) -> tuple[pl.DataFrame, MailSummary]:
    """Raise tonight's alerts, deliver every pending email (SMTP from the environment, or .eml files in
    `dry_run_mail`), and return the outbox frame for the alerts mart with the summary."""
    from flows.mail import EmlTransport, SmtpTransport, smtp_config

    ensure_outbox(engine)
    raised = raise_alerts(engine, night, flags, silver, sources, quarantine)
    errors: list[str] = []
    transport: Transport | None = None
    if dry_run_mail is not None:
        transport = EmlTransport(Path(dry_run_mail))
    else:
        try:
            config = smtp_config()
        except MailError as e:
            config, errors = None, [f"SMTP settings unusable, nothing sent: {e}"]
        transport = SmtpTransport(config) if config else None
    summary = deliver(engine, transport, night.sender)
    summary.raised = raised
    summary.errors = errors + summary.errors
    return outbox_frame(engine, night.as_of), summary
