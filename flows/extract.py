"""Extraction: the only code that talks to a source system.

Every table is pulled as text (contract: legacy and SQLite columns can hold anything), with the
dialect's native column names; normalization parses it. SQL sources are pulled incrementally by
their change column with a watermark and an overlap window; filedrop takes the newest delivery not
yet loaded. No SQL is assembled from source values: SQLAlchemy constructs and bound parameters only.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import sqlalchemy as sa

from flows.registry import Source
from transforms.dialects import NativeTable, native_tables
from transforms.parse import timestamp as parse_timestamp
from transforms.schema import TZ

KEY_CHUNK = 900  # bound parameters per IN (...) list; well under every driver's limit
FULL_PULL_SHARE = 0.3  # above this share of changed rows, one full scan beats keyed look-ups
DELIVERY_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class SourceUnreachable(RuntimeError):
    """The source could not be read at all (server down, file missing, folder missing)."""


@dataclass
class Pulled:
    """What one source yielded tonight."""

    source_id: str
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)  # canonical name -> native text columns
    missing_tables: list[str] = field(default_factory=list)  # canonical names
    full: dict[str, bool] = field(default_factory=dict)  # table pulled whole (no usable watermark)
    watermarks: dict[str, datetime] = field(default_factory=dict)  # proposed, committed after silver
    delivery: str | None = None  # filedrop: the delivery folder loaded
    delivery_date: date | None = None
    note: str | None = None  # e.g. "no new delivery"


# --------------------------------------------------------------------------------------------------
# SQL sources (platform, legacy)
# --------------------------------------------------------------------------------------------------


def _engine_for(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if not path or not Path(path).is_file():
            raise SourceUnreachable(f"SQLite database not found: {path}")
        # Read-only: a wrong path must never create an empty database that looks like a source.
        return sa.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    return sa.create_engine(url, pool_pre_ping=True, connect_args=_connect_timeout(url))


def _connect_timeout(url: str) -> dict:
    return {"connect_timeout": 10} if url.startswith("postgresql") else {}


def _frame(result: sa.CursorResult, columns: list[str]) -> pl.DataFrame:
    rows = result.fetchall()
    if not rows:
        return pl.DataFrame(schema={c: pl.String for c in columns})
    return pl.DataFrame(rows, schema={c: pl.String for c in columns}, orient="row")


def _as_text(col: sa.Column) -> sa.ColumnElement:
    return sa.cast(col, sa.Text).label(col.name)


def _is_typed_timestamp(col: sa.Column) -> bool:
    return isinstance(col.type, sa.DateTime | sa.TIMESTAMP)


def extract_sql(
    source: Source,
    *,
    watermarks: dict[str, datetime | None],
    overlap: timedelta,
    now: datetime,
) -> Pulled:
    """Pull every table of a `platform` or `legacy` source changed since its watermark minus `overlap`."""
    pulled = Pulled(source.id)
    try:
        engine = _engine_for(source.url)
        with engine.connect() as conn:
            existing = {t.lower(): t for t in sa.inspect(conn).get_table_names()}
            for canonical, native in native_tables(source.dialect).items():
                name = existing.get(native.native.lower())
                if name is None:
                    pulled.missing_tables.append(canonical)
                    continue
                table = sa.Table(name, sa.MetaData(), autoload_with=conn)
                wm = watermarks.get(canonical)
                frame, full = _pull_table(conn, table, native, wm, overlap)
                pulled.tables[canonical] = frame
                pulled.full[canonical] = full
                newest = _newest_change(frame, native, now)
                if newest is not None:
                    pulled.watermarks[canonical] = max(newest, wm) if wm else newest
        engine.dispose()
    except SourceUnreachable:
        raise
    except sa.exc.SQLAlchemyError as e:
        raise SourceUnreachable(f"{type(e).__name__}: {_first_line(e)}") from e
    return pulled


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e)
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def _pull_table(
    conn: sa.Connection, table: sa.Table, native: NativeTable, wm: datetime | None, overlap: timedelta
) -> tuple[pl.DataFrame, bool]:
    columns = [c.name for c in table.columns]
    everything = sa.select(*[_as_text(c) for c in table.columns])
    change = _column(table, native.change_column)
    if change is None or wm is None:
        return _frame(conn.execute(everything), columns), True

    lower = wm - overlap
    if _is_typed_timestamp(change):
        # Typed column (PostgreSQL TIMESTAMPTZ): the database filters. NULLs are pulled every night:
        # they cannot be placed before or after the watermark, and must not vanish.
        q = everything.where(sa.or_(change >= sa.bindparam("lower", lower), change.is_(None)))
        return _frame(conn.execute(q), columns), False

    # Text column (SQLite, legacy): formats are mixed, so the database cannot compare them. Scan the
    # key and the change column only, parse them here, then fetch the changed rows by key.
    key = _column(table, _native_key(native))
    lower = lower.astimezone(ZoneInfo(TZ))  # compare in the zone the parser yields
    narrow = _frame(conn.execute(sa.select(_as_text(key), _as_text(change))), [key.name, change.name])
    ts = narrow.select(parse_timestamp(pl.col(change.name)).alias("ts"), pl.col(key.name).alias("k"))
    changed = ts.filter(pl.col("ts").is_null() | (pl.col("ts") >= lower))
    if changed.height > FULL_PULL_SHARE * max(narrow.height, 1) or changed["k"].null_count():
        frame = _frame(conn.execute(everything), columns)
        keep = parse_timestamp(pl.col(change.name))
        return frame.filter(keep.is_null() | (keep >= lower)), False
    keys = changed["k"].unique().sort().to_list()
    parts = [
        _frame(conn.execute(everything.where(key.in_(keys[i : i + KEY_CHUNK]))), columns)
        for i in range(0, len(keys), KEY_CHUNK)
    ]
    frame = pl.concat(parts) if parts else pl.DataFrame(schema={c: pl.String for c in columns})
    # A key fetched for one changed version also brings its older duplicates: keep only the changed.
    keep = parse_timestamp(pl.col(change.name))
    return frame.filter(keep.is_null() | (keep >= lower)), False


def _native_key(native: NativeTable) -> str:
    from transforms.schema import TABLES

    return native.reverse[TABLES[native.canonical].key]


def _column(table: sa.Table, name: str | None) -> sa.Column | None:
    if name is None:
        return None
    for c in table.columns:
        if c.name.lower() == name.lower():
            return c
    return None


def _newest_change(frame: pl.DataFrame, native: NativeTable, now: datetime) -> datetime | None:
    """The watermark a pull proposes: its newest parsable change, never later than now (a row dated in
    the future must not hide tomorrow's changes)."""
    if native.change_column is None or frame.is_empty():
        return None
    col = next((c for c in frame.columns if c.lower() == native.change_column.lower()), None)
    if col is None:
        return None
    newest = frame.select(parse_timestamp(pl.col(col)).max()).item()
    if newest is None:
        return None
    return min(newest, now)


# --------------------------------------------------------------------------------------------------
# filedrop
# --------------------------------------------------------------------------------------------------


def list_deliveries(folder: Path) -> list[str]:
    """Dated delivery folders directly inside the source folder, oldest first. Anything that resolves
    outside the source folder (a symlink, `..`) is ignored."""
    root = folder.resolve()
    names = []
    for entry in folder.iterdir():
        if not DELIVERY_NAME.match(entry.name) or not entry.is_dir():
            continue
        if entry.resolve().parent != root:
            continue
        try:
            date.fromisoformat(entry.name)
        except ValueError:
            continue
        names.append(entry.name)
    return sorted(names)


def extract_filedrop(source: Source, *, loaded: set[str]) -> Pulled:
    folder = Path(source.url)
    if not folder.is_dir():
        raise SourceUnreachable(f"filedrop folder not found: {folder}")
    pulled = Pulled(source.id)
    deliveries = list_deliveries(folder)
    if not deliveries:
        raise SourceUnreachable(f"filedrop folder has no dated delivery: {folder}")
    newest = deliveries[-1]
    pulled.delivery_date = date.fromisoformat(newest)
    if newest in loaded:
        pulled.note = f"no new delivery (newest {newest} already loaded)"
        return pulled
    pulled.delivery = newest
    base = (folder / newest).resolve()
    for canonical, native in native_tables("filedrop").items():
        path = base / native.native
        if not path.is_file() or path.resolve().parent != base:
            pulled.missing_tables.append(canonical)
            continue
        pulled.tables[canonical] = read_delivery_csv(path)
        pulled.full[canonical] = True
    return pulled


def decode_bytes(data: bytes) -> str:
    """UTF-8 (with or without BOM) or GB18030, as the contract allows. Bytes valid in neither are
    replaced (U+FFFD) rather than dropping the file; the affected values then fail to parse."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("gb18030", errors="replace")


def read_delivery_csv(path: Path) -> pl.DataFrame:
    text = decode_bytes(path.read_bytes())
    try:
        return pl.read_csv(
            io.BytesIO(text.encode("utf-8")),
            infer_schema=False,
            truncate_ragged_lines=True,
        )
    except pl.exceptions.PolarsError:
        # A file cut off mid-record (an unterminated quote) defeats the fast reader; the standard
        # library's reader keeps every row it can, so nothing vanishes.
        reader = csv.reader(io.StringIO(text), strict=False)
        header = next(reader, [])
        rows = [(r + [None] * len(header))[: len(header)] for r in reader if r]
        return pl.DataFrame(rows, schema={h: pl.String for h in header}, orient="row")
