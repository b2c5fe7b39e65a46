"""The pipeline's own state database (SQLAlchemy): watermarks, filedrop deliveries loaded, run records.

A SQLite file in the warehouse by default; any SQLAlchemy URL through `QINGFENG_STATE_URL`. A SQLite file
locked by another process is waited for `QINGFENG_STATE_TIMEOUT_SECONDS` (default 30 s); then, like any
other failure to use the state database, it raises `StateUnavailable`, which names the database.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, date, datetime

import sqlalchemy as sa

metadata = sa.MetaData()

watermarks = sa.Table(
    "watermarks",
    metadata,
    sa.Column("source_id", sa.String(100), primary_key=True),
    sa.Column("table_name", sa.String(64), primary_key=True),
    # Kept per business date, so that a rerun of date D starts from where the night before D ended
    # and pulls the same rows again (idempotent reruns), while the next date moves on.
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("watermark", sa.DateTime(timezone=True), nullable=False),  # newest change seen, UTC
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("source_id", sa.String(100), primary_key=True),
    sa.Column("delivery", sa.String(64), primary_key=True),  # the dated folder name
    sa.Column("as_of", sa.Date, nullable=False),  # the business date of the run that loaded it
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("loaded", sa.DateTime(timezone=True), nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("source_id", sa.String(100), primary_key=True),  # "*" for the cross-source stages
    sa.Column("stage", sa.String(32), primary_key=True),
    sa.Column("table_name", sa.String(64), primary_key=True),  # "*" when the stage is not per table
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("rows_in", sa.BigInteger, nullable=False, default=0),
    sa.Column("rows_out", sa.BigInteger, nullable=False, default=0),
    sa.Column("quarantined", sa.BigInteger, nullable=False, default=0),
    sa.Column("flags", sa.BigInteger, nullable=False, default=0),
    sa.Column("seconds", sa.Float, nullable=False, default=0.0),
    sa.Column("status", sa.String(16), nullable=False),  # ok | failed | skipped
    sa.Column("message", sa.Text),
    sa.Column("finished", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class StageRecord:
    source_id: str
    stage: str
    table_name: str = "*"
    rows_in: int = 0
    rows_out: int = 0
    quarantined: int = 0
    flags: int = 0
    seconds: float = 0.0
    status: str = "ok"
    message: str | None = None


class StateUnavailable(RuntimeError):
    """The pipeline's own state database cannot be used (locked by another process, unreachable). The
    night cannot go on without it: nothing was written by the statement that failed."""


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


class StateStore:
    def __init__(self, url: str):
        self.url = url
        self.timeout = float(os.environ.get("QINGFENG_STATE_TIMEOUT_SECONDS", "30"))
        connect_args = {"timeout": self.timeout} if url.startswith("sqlite") else {}
        self.engine = sa.create_engine(url, connect_args=connect_args)
        sa.event.listen(self.engine, "handle_error", self._unavailable)
        metadata.create_all(self.engine)

    def _unavailable(self, context: sa.engine.ExceptionContext) -> None:
        """A database that cannot be used (locked, gone, unreachable) raises StateUnavailable naming the
        state database, instead of a driver error from deep inside SQLAlchemy."""
        if not isinstance(context.sqlalchemy_exception, sa.exc.OperationalError):
            return
        u = sa.engine.make_url(self.url)
        where = u.database if u.drivername.startswith("sqlite") else u.render_as_string(hide_password=True)
        original = context.original_exception
        text = str(original).strip()
        reason = text.splitlines()[0] if text else type(original).__name__
        if "locked" in reason:
            reason += (f" (waited {self.timeout:g} s, $QINGFENG_STATE_TIMEOUT_SECONDS): another process holds"
                       " it, e.g. another qingfeng run or a tool with the file open")
        leaks = bool(u.password) and str(u.password) in text  # a driver may quote the URL's pieces
        if leaks:
            reason = reason.replace(str(u.password), "***")
        raise StateUnavailable(f"state database {where} cannot be used: {reason}") from (None if leaks else original)

    def dispose(self) -> None:
        self.engine.dispose()

    # watermarks -------------------------------------------------------------------------------------
    def watermark(self, source_id: str, table_name: str, before: date) -> datetime | None:
        """The watermark left by the latest run for a business date before `before`."""
        with self.engine.connect() as c:
            value = c.execute(
                sa.select(watermarks.c.watermark)
                .where(
                    watermarks.c.source_id == source_id,
                    watermarks.c.table_name == table_name,
                    watermarks.c.as_of < before,
                )
                .order_by(watermarks.c.as_of.desc())
                .limit(1)
            ).scalar_one_or_none()
        return None if value is None else _utc(value)

    def watermarks(self, source_id: str, before: date) -> dict[str, datetime]:
        """{table → `watermark(source_id, table, before)`} for every table of the source that has one, in
        one query (a query a table cost about 0.3 ms of Python each, ~670 a night)."""
        latest = (
            sa.select(watermarks.c.table_name, sa.func.max(watermarks.c.as_of).label("as_of"))
            .where(watermarks.c.source_id == source_id, watermarks.c.as_of < before)
            .group_by(watermarks.c.table_name)
            .subquery()
        )
        query = sa.select(watermarks.c.table_name, watermarks.c.watermark).join(
            latest, sa.and_(watermarks.c.table_name == latest.c.table_name, watermarks.c.as_of == latest.c.as_of)
        ).where(watermarks.c.source_id == source_id)
        with self.engine.connect() as c:
            return {table: _utc(value) for table, value in c.execute(query)}

    def set_watermarks(self, source_id: str, as_of: date, values: dict[str, datetime], run_id: str) -> None:
        if not values:
            return
        now = datetime.now(UTC)
        rows = [
            {"source_id": source_id, "table_name": t, "as_of": as_of, "watermark": _utc(v),
             "run_id": run_id, "updated": now}
            for t, v in values.items()
        ]
        with self.engine.begin() as c:
            c.execute(
                sa.delete(watermarks).where(
                    watermarks.c.source_id == source_id,
                    watermarks.c.as_of == as_of,
                    watermarks.c.table_name.in_(list(values)),
                )
            )
            c.execute(sa.insert(watermarks), rows)

    # filedrop deliveries ----------------------------------------------------------------------------
    def loaded_deliveries(self, source_id: str, before: date) -> set[str]:
        """Deliveries loaded by runs for business dates before `before`."""
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(deliveries.c.delivery).where(
                    deliveries.c.source_id == source_id, deliveries.c.as_of < before
                )
            )
            return {r[0] for r in rows}

    def last_loaded_delivery(self, source_id: str, before: date) -> tuple[str, str] | None:
        """The delivery the latest run for a business date before `before` loaded, and that run's id: what
        silver last took from this filedrop source."""
        with self.engine.connect() as c:
            row = c.execute(
                sa.select(deliveries.c.delivery, deliveries.c.run_id)
                .where(deliveries.c.source_id == source_id, deliveries.c.as_of < before)
                .order_by(deliveries.c.as_of.desc(), deliveries.c.loaded.desc(), deliveries.c.delivery.desc())
                .limit(1)
            ).first()
            return (row[0], row[1]) if row else None

    def mark_delivery_loaded(self, source_id: str, delivery: str, as_of: date, run_id: str) -> None:
        with self.engine.begin() as c:
            c.execute(
                sa.delete(deliveries).where(
                    deliveries.c.source_id == source_id, deliveries.c.delivery == delivery
                )
            )
            c.execute(
                sa.insert(deliveries).values(
                    source_id=source_id, delivery=delivery, as_of=as_of, run_id=run_id,
                    loaded=datetime.now(UTC),
                )
            )

    # run records ------------------------------------------------------------------------------------
    def record(self, run_id: str, as_of, records: list[StageRecord]) -> None:
        if not records:
            return
        now = datetime.now(UTC)
        rows = [{"run_id": run_id, "as_of": as_of, "finished": now, **r.__dict__} for r in records]
        with self.engine.begin() as c:
            for r in rows:  # a rerun of a stage within the same run replaces its record
                c.execute(
                    sa.delete(runs).where(
                        runs.c.run_id == run_id, runs.c.source_id == r["source_id"],
                        runs.c.stage == r["stage"], runs.c.table_name == r["table_name"],
                    )
                )
            c.execute(sa.insert(runs), rows)

    def last_good(self, source_id: str, before: date) -> date | None:
        """The latest business date before `before` on which the source could be read."""
        with self.engine.connect() as c:
            return c.execute(
                sa.select(sa.func.max(runs.c.as_of)).where(
                    runs.c.source_id == source_id, runs.c.stage == "extract", runs.c.status == "ok",
                    runs.c.as_of < before,
                )
            ).scalar_one_or_none()

    def run_records(self, run_id: str | None = None) -> list[dict]:
        q = sa.select(runs).order_by(runs.c.finished, runs.c.source_id, runs.c.stage, runs.c.table_name)
        if run_id:
            q = q.where(runs.c.run_id == run_id)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]
