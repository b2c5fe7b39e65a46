"""Extraction: the only code that talks to a source system.

Every table is pulled as text (contract: legacy and SQLite columns can hold anything), with the
dialect's native column names; normalization parses it. SQL sources are pulled incrementally by
their change column with a watermark and an overlap window; filedrop takes the newest delivery not
yet loaded. No SQL is assembled from source values: SQLAlchemy constructs and bound parameters only.
"""

from __future__ import annotations

import codecs
import csv
import functools
import io
import re
import threading
import traceback
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from flows.registry import Source, redact
from transforms.dialects import NativeTable, native_tables
from transforms.parse import timestamps
from transforms.schema import TZ

KEY_CHUNK = 900  # bound parameters per IN (...) list; well under every driver's limit
FULL_PULL_SHARE = 0.3  # above this share of changed rows, one full scan beats keyed look-ups
DELIVERY_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# SQLite GLOB patterns of the date spellings the contract lists for `legacy` text times, each the start of
# the value: `2019-04-25…` (and `platform`'s `2019-04-25T07:59:27+08:00`), `2019/4/25…`, `2019年4月25日…`;
# and `20190425` or `20190425075927`, all of the value (a longer number need not be a time).
_Y = "[0-9][0-9][0-9][0-9]"
_ISO_DATE = f"{_Y}-[0-1][0-9]-[0-3][0-9]*"
_SLASH_DATE = f"{_Y}/[0-9]*/[0-9]*"
_NIAN_DATE = f"{_Y}年[0-9]*月[0-9]*日*"
_COMPACT_DATES = (_Y + "[0-9]" * 4, _Y + "[0-9]" * 10)
SLOT_WAIT_SECONDS = 300.0  # an attempt waits this long for a connection of its source to come free


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
    cut_off: list[str] = field(default_factory=list)  # filedrop: tables whose file ends mid-record
    previous_delivery: str | None = None  # filedrop: the delivery silver last took, and the run that did
    previous_run_id: str | None = None


# --------------------------------------------------------------------------------------------------
# SQL sources (platform, legacy)
# --------------------------------------------------------------------------------------------------


def _engine_for(url: str, limit: int = 1, source_id: str | None = None) -> sa.Engine:
    """An engine that never holds more than `limit` connections to the source: its own pool is that
    size with no overflow, and every connection it opens takes one of the source's slots in this process
    (`_bound_connections`), so overlapping attempts (a retry while a timed-out attempt still runs) share
    the limit too."""
    pool = {"pool_size": limit, "max_overflow": 0, "pool_timeout": SLOT_WAIT_SECONDS}
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if not path or not Path(path).is_file():
            raise SourceUnreachable(f"SQLite database not found: {path}")
        # Read-only: a wrong path must never create an empty database that looks like a source.
        engine = sa.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true", poolclass=sa.pool.QueuePool, **pool)
    else:
        engine = sa.create_engine(url, pool_pre_ping=True, connect_args=_connect_args(url, source_id), **pool)
    if source_id is not None:
        _bound_connections(engine, source_id, limit)
    return engine


def _connect_args(url: str, source_id: str | None = None) -> dict:
    if not url.startswith("postgresql"):
        return {}
    # The application name lets the source's DBA (and the tests) see which connections are ours.
    return {"connect_timeout": 10, "application_name": f"qingfeng/{source_id or '-'}"[:63]}


_slots_lock = threading.Lock()
_slots: dict[tuple[str, int], threading.BoundedSemaphore] = {}


def _source_slots(source_id: str, limit: int) -> threading.BoundedSemaphore:
    with _slots_lock:
        return _slots.setdefault((source_id, limit), threading.BoundedSemaphore(limit))


def _bound_connections(engine: sa.Engine, source_id: str, limit: int) -> None:
    """Every DBAPI connection the engine opens holds one of the source's `limit` slots until it is closed
    (NullPool-like behaviour, a new engine per attempt, invalidated connections: none can open more)."""
    slots = _source_slots(source_id, limit)

    def take_slot(dialect, record, cargs, cparams):
        if not slots.acquire(timeout=SLOT_WAIT_SECONDS):
            raise SourceUnreachable(f"no free connection to the source after {SLOT_WAIT_SECONDS:g} s: "
                                    f"its {limit} allowed connection(s) are in use by an earlier attempt")
        try:
            dbapi_connection = dialect.connect(*cargs, **cparams)
        except BaseException:
            slots.release()
            raise
        record.info["qingfeng_slot"] = slots
        return dbapi_connection

    def give_back(dbapi_connection, record) -> None:
        held = record.info.pop("qingfeng_slot", None)
        if held is not None:
            held.release()

    sa.event.listen(engine, "do_connect", take_slot)
    sa.event.listen(engine, "close", give_back)


# The plain fetch of SQLite (`_fetch_frame`), one at a time in this process: sqlite3 lets go of the GIL for
# every row it steps to and must take it back for the next, so with several sources fetching at once each
# row waits for the others' turns (four threads fetched in twice the time one took).
_SQLITE_FETCH = threading.Lock()
# Rows a SQLite batch brings as one string (`_fetch_json_batches`): a few tens of MB.
JSON_BATCH_ROWS = 100_000
_ROWID_NAMES = {"rowid", "_rowid_", "oid"}


def _frame(conn: sa.Connection, query: sa.Select, columns: list[str], sqlite_where: str | None = None,
           table: sa.Table | None = None) -> pl.DataFrame:
    """The query's rows (`columns` of one table, each cast to text) as a frame of String columns. On
    SQLite, `sqlite_where` is the query's WHERE as SQL text, if it has one, and `table` the one table it
    selects from, if known (`_fetch_json_batches`)."""
    if conn.engine.dialect.name == "sqlite":
        frame = _fetch_json_batches(conn, query, columns, sqlite_where, table)
        if frame is not None:
            return frame
        with _SQLITE_FETCH:
            return _fetch_frame(conn, query, columns)
    return _fetch_frame(conn, query, columns)


def _fetch_json_batches(conn: sa.Connection, query: sa.Select, columns: list[str], where: str | None = None,
                        table: sa.Table | None = None) -> pl.DataFrame | None:
    """SQLite: the rows in rowid order, `JSON_BATCH_ROWS` at a time as ONE string, a JSON array of rows
    that SQLite puts together (each row a JSON array of its text values); Polars takes it apart. No
    Python object is made per row or value, and sqlite3 lets go of the GIL while SQLite works, so sources
    fetch side by side: the per-row fetch held the GIL for most of its time, the night's first
    per-source stage waited on it, and it had to run one source at a time.

    `query` selects `columns` of one table, each cast to text; its WHERE, if any, is `where` as SQL text,
    or the batch is compiled from `query` (`_json_batch_statement`). `table` is that table, if the caller
    knows it: found from the query, it costs about 0.5 ms of Python a table (each column's cast is asked
    what it selects from).

    None when SQLite cannot: a value that is not UTF-8 (the plain fetch decodes it), a table without
    rowids (a view, WITHOUT ROWID), a column named like the rowid, or a SQLite without JSON functions."""
    # (`get_final_froms` would compile the query to find them)
    froms = [table] if table is not None else query.columns_clause_froms
    if (_ROWID_NAMES | {_BATCH_ROWID}) & {c.lower() for c in columns} or len(froms) != 1 or not isinstance(
            froms[0], sa.Table) or not _has_rowids(conn, froms[0].name):
        return None
    if query.whereclause is None or where is not None:
        sql, positions, params = _json_batch_sql(froms[0].name, tuple(columns), where)

        def batch(start: int) -> sa.Row:
            values = {**params, "start": start, "rows": JSON_BATCH_ROWS}
            return conn.exec_driver_sql(sql, tuple(values[p] for p in positions)).one()
    else:
        statement = _json_batch_statement(query, froms[0])

        def batch(start: int) -> sa.Row:
            return conn.execute(statement, {"start": start, "rows": JSON_BATCH_ROWS}).one()

    parts, start = [], -(2**63)
    dbapi_connection = conn.connection.dbapi_connection
    # As bytes: a Python string of Chinese text is decoded from UTF-8 and encoded back for Polars, both
    # under the GIL; Polars checks the bytes are UTF-8 itself (and the plain fetch decodes them if not).
    dbapi_connection.text_factory = bytes
    try:
        while True:
            text, last, n = batch(start)
            if n and last < start:  # (cannot be, as each batch starts after the last: never loop on it)
                return None
            if n:
                parts.append(pl.Series([text], dtype=pl.Binary).cast(pl.String)
                             .str.json_decode(pl.List(pl.List(pl.String)))
                             .explode().list.to_struct(fields=[_BATCH_ROWID, *columns]).struct.unnest())
            if n < JSON_BATCH_ROWS or last >= 2**63 - 1:
                break
            start = last + 1
    except (sa.exc.OperationalError, pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError):
        return None
    finally:
        dbapi_connection.text_factory = str
    if not parts:
        return pl.DataFrame(schema={c: pl.String for c in columns})
    # In rowid order, as the plain fetch of a table scan gives them (an aggregate's input order is not
    # guaranteed).
    return pl.concat(parts).sort(pl.col(_BATCH_ROWID).cast(pl.Int64)).drop(_BATCH_ROWID)


_BATCH_ROWID = "_qingfeng_rowid"  # the rowid's field in each row of a batch


@functools.lru_cache(maxsize=1024)
def _json_batch_sql(table: str, columns: tuple[str, ...], where: str | None) -> tuple[str, tuple, dict]:
    """`_json_batch_statement` of the select of `columns` (cast to text) of `table` that meet `where`
    (SQL text), compiled for SQLite: the SQL, the names of its positional parameters in order, and the
    values of those that are constants. Compiled once a night per table name, columns and filter, and
    shared by every source: compiled per table it cost about 2 ms with the GIL held (each source is its
    own engine, with its own cache of compiled statements)."""
    source = sa.table(table, *(sa.column(c) for c in columns))
    query = sa.select(*[_as_text(c) for c in source.columns])
    if where is not None:
        query = query.where(sa.literal_column(where, sa.Boolean))
    compiled = _json_batch_statement(query, source).compile(dialect=sqlite_dialect())
    return str(compiled), tuple(compiled.positiontup or ()), dict(compiled.params)


def _json_batch_statement(query: sa.Select, table: sa.TableClause) -> sa.Select:
    """A batch of `_fetch_json_batches`: the rows of `query` (columns of `table`, cast to text) from rowid
    `start` on, at most `rows` of them, as one string of JSON; with the greatest rowid and the count."""
    rowid = sa.literal_column("rowid")
    values = [c.element if isinstance(c, sa.Label) else c for c in query.selected_columns]
    condition = rowid >= sa.bindparam("start")
    if query.whereclause is not None:
        # In parentheses: a filter given as SQL text (`_sqlite_not_older`, an OR) would otherwise bind to the
        # rowid's condition by SQLite's precedence (AND before OR), and its rows come again in every batch.
        condition = sa.and_(sa.Grouping(query.whereclause), condition)
    rows = (
        sa.select(sa.func.json_array(sa.cast(rowid, sa.Text), *values).label("r"), rowid.label("id"))
        .select_from(table).where(condition).order_by(rowid).limit(sa.bindparam("rows"))
        .subquery()
    )
    # (group_concat: a subquery's JSON reaches an aggregate as text, which json_group_array would quote)
    return sa.select(sa.func.printf("[%s]", sa.func.group_concat(rows.c.r, ",")), sa.func.max(rows.c.id),
                     sa.func.count())


def _has_rowids(conn: sa.Connection, table: str) -> bool:
    """A SQLite table with rowids: not a view (whose rowid is NULL), not WITHOUT ROWID. The schema is read
    once for the pull's connection (a query per table cost more than the check)."""
    if (tables := conn.info.get(_ROWID_TABLES)) is None:
        rows = conn.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'table'")).all()
        tables = conn.info[_ROWID_TABLES] = frozenset(
            name for name, sql in rows if sql is not None and not re.search(r"\bWITHOUT\s+ROWID\b", sql, re.IGNORECASE))
    return table in tables


_ROWID_TABLES = "qingfeng_rowid_tables"  # in a connection's `info`: its tables with rowids


def _fetch_frame(conn: sa.Connection, query: sa.Executable, columns: list[str]) -> pl.DataFrame:
    try:
        rows = conn.execute(query).fetchall()
    except sa.exc.OperationalError as e:
        # sqlite3 refuses a whole result with one TEXT value that is not UTF-8 ("Could not decode to UTF-8
        # column"), and the source with it. Read it again decoding as files are; only then, because the
        # decoder, called for every value, costs a third of the fetch.
        if "decode" not in str(e.orig) or conn.engine.dialect.name != "sqlite":
            raise
        dbapi_connection = conn.connection.dbapi_connection
        dbapi_connection.text_factory = _decode_sqlite_text
        try:
            rows = conn.execute(query).fetchall()
        finally:
            dbapi_connection.text_factory = str
    if not rows:
        return pl.DataFrame(schema={c: pl.String for c in columns})
    # Column by column: a third faster than Polars' row-wise constructor.
    by_column = zip(*rows, strict=True)
    return pl.DataFrame([_text_series(c, values) for c, values in zip(columns, by_column, strict=True)])


def _text_series(name: str, values: tuple) -> pl.Series:
    try:
        return pl.Series(name, values, dtype=pl.String)
    except TypeError:  # a driver that ignored the cast to text: a number, or bytes
        return pl.Series(name, [v if v is None or isinstance(v, str) else decode_bytes(v)
                                if isinstance(v, bytes | bytearray) else str(v) for v in values], dtype=pl.String)


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
    engine = None
    try:
        engine = _engine_for(source.url, source.connection_limit, source.id)
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            existing = {t.lower(): t for t in inspector.get_table_names()}
            for canonical, native in native_tables(source.dialect).items():
                name = existing.get(native.native.lower())
                if name is None:
                    pulled.missing_tables.append(canonical)
                    continue
                # Columns and their types are all a pull needs: a third of the cost of reflecting the table
                # with its keys, indexes and constraints.
                table = sa.Table(name, sa.MetaData(),
                                 *(sa.Column(c["name"], c["type"]) for c in inspector.get_columns(name)))
                wm = watermarks.get(canonical)
                frame, full, newest = _pull_table(conn, table, native, wm, overlap)
                pulled.tables[canonical] = frame
                pulled.full[canonical] = full
                if newest is not None:
                    newest = min(newest, now)  # a row dated in the future must not hide tomorrow's changes
                    pulled.watermarks[canonical] = max(newest, wm) if wm else newest
    except SourceUnreachable:
        raise
    except sa.exc.SQLAlchemyError as e:
        # Driver messages can quote the URL's pieces: a password with an unescaped `@` becomes a host
        # name ("failed to resolve host 'secret@10.0.0.5'"). Never pass it on, nor chain the original.
        message = redact(f"{type(e).__name__}: {_first_line(e)}", source.url)
        full = "".join(traceback.format_exception(e))
        cause = None if redact(full, source.url) != full else e
        raise SourceUnreachable(message) from cause
    finally:
        if engine is not None:
            engine.dispose()  # close the pooled connection now, on failure too: it holds a slot
    return pulled


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e)
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def _pull_table(
    conn: sa.Connection, table: sa.Table, native: NativeTable, wm: datetime | None, overlap: timedelta
) -> tuple[pl.DataFrame, bool, datetime | None]:
    """The rows of `table` changed since `wm` minus `overlap` (all of them without a watermark), whether
    that is the whole table, and the newest change time among them."""
    columns = [c.name for c in table.columns]
    everything = sa.select(*[_as_text(c) for c in table.columns])
    change = _column(table, native.change_column)
    if change is None or wm is None:
        frame = _frame(conn, everything, columns, table=table)
        return frame, True, _newest_change(frame, native)

    lower = wm - overlap
    if _is_typed_timestamp(change):
        # Typed column (PostgreSQL TIMESTAMPTZ): the database filters. NULLs are pulled every night:
        # they cannot be placed before or after the watermark, and must not vanish.
        q = everything.where(sa.or_(change >= sa.bindparam("lower", lower), change.is_(None)))
        frame = _frame(conn, q, columns, table=table)
        return frame, False, _newest_change(frame, native)

    # Text column (SQLite, legacy): formats are mixed, so the database cannot compare them exactly.
    lower = lower.astimezone(ZoneInfo(TZ))  # compare in the zone the parser yields
    if conn.engine.dialect.name == "sqlite":
        # SQLite can still rule out what is certainly older: a value that starts with a real date two days
        # before the lower bound (in a spelling the contract lists: `_sqlite_leading_date`) is before it
        # whatever its time and offset. Everything else (later dates, other spellings, junk, NULL) comes
        # here to be parsed. Else the key and change time of every row would be fetched and parsed each
        # night to find the few that changed.
        bound = (lower - timedelta(days=2)).date().isoformat()
        where = _sqlite_not_older(change.name, bound)
        frame = _frame(conn, everything.where(sa.literal_column(where, sa.Boolean)), columns, sqlite_where=where,
                       table=table)
        return _changed_since(frame, change.name, lower)

    # Other databases (MySQL): scan the key and the change column only, parse them here, then fetch the
    # changed rows by key.
    key = _column(table, _native_key(native))
    narrow = _frame(conn, sa.select(_as_text(key), _as_text(change)), [key.name, change.name])
    ts = pl.DataFrame({"ts": timestamps(narrow, change.name), "k": narrow[key.name]})
    changed = ts.filter(pl.col("ts").is_null() | (pl.col("ts") >= lower))
    if changed.height > FULL_PULL_SHARE * max(narrow.height, 1) or changed["k"].null_count():
        return _changed_since(_frame(conn, everything, columns), change.name, lower)
    keys = changed["k"].unique().sort().to_list()
    parts = [
        _frame(conn, everything.where(key.in_(keys[i : i + KEY_CHUNK])), columns)
        for i in range(0, len(keys), KEY_CHUNK)
    ]
    frame = pl.concat(parts) if parts else pl.DataFrame(schema={c: pl.String for c in columns})
    # A key fetched for one changed version also brings its older duplicates: keep only the changed.
    return _changed_since(frame, change.name, lower)


def _changed_since(frame: pl.DataFrame, column: str, lower: datetime) -> tuple[pl.DataFrame, bool, datetime | None]:
    """`_pull_table` of an incremental pull: the rows changed at or after `lower`, or whose change time
    cannot be read (they cannot be placed, and must not vanish), and the newest change time; the column
    parsed once for both."""
    ts = timestamps(frame, column)
    return frame.filter(ts.is_null() | (ts >= lower)), False, ts.max()


@functools.lru_cache(maxsize=256)
def _sqlite_not_older(column: str, bound: str) -> str:
    """SQLite's WHERE for the rows of a pull: NULL, or not certainly before the date `bound`. Made once
    per column name and night: as a SQLAlchemy expression it took a few ms to build and compile per table.
    The date is computed once a row (SQLite evaluates an expression each time it is named); a value
    without a date, or with an impossible one, compares as 9999: pulled."""
    change = sa.column(column, sa.Text)
    day = sa.func.coalesce(sa.func.date(_sqlite_leading_date(change)), "9999")
    where = sa.or_(change.is_(None), sa.not_(day < bound))
    return str(where.compile(dialect=sqlite_dialect(), compile_kwargs={"literal_binds": True}))


def _sqlite_leading_date(change: sa.ColumnElement) -> sa.ColumnElement:
    """SQLite: the date a text time starts with, as `YYYY-MM-DD` (month and day padded, so that dates
    compare as text), when the value has one of the contract's date spellings; NULL for anything else.
    Picked by the fifth character, so that a row costs one pattern; `CAST(text AS INTEGER)` reads the
    leading digits, so `4/25 7:59` gives the month and `25 7:59` the day."""

    def y_m_d(separator: str) -> sa.ColumnElement:
        after_year = sa.func.substr(change, 6)
        return sa.func.printf(
            "%04d-%02d-%02d", sa.cast(sa.func.substr(change, 1, 4), sa.Integer), sa.cast(after_year, sa.Integer),
            sa.cast(sa.func.substr(change, 6 + sa.func.instr(after_year, separator)), sa.Integer))

    def when(pattern: sa.ColumnElement, day: sa.ColumnElement) -> sa.ColumnElement:
        return sa.case((pattern, day))

    return sa.case(
        {
            "-": when(change.op("GLOB")(_ISO_DATE), sa.func.substr(change, 1, 10)),
            "/": when(change.op("GLOB")(_SLASH_DATE), y_m_d("/")),
            "年": when(change.op("GLOB")(_NIAN_DATE), y_m_d("月")),
        },
        value=sa.func.substr(change, 5, 1),
        else_=when(sa.or_(*(change.op("GLOB")(p) for p in _COMPACT_DATES)), sa.func.printf(
            "%s-%s-%s", sa.func.substr(change, 1, 4), sa.func.substr(change, 5, 2), sa.func.substr(change, 7, 2))),
    )


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


def _newest_change(frame: pl.DataFrame, native: NativeTable) -> datetime | None:
    """The watermark a pull proposes: its newest parsable change."""
    if native.change_column is None or frame.is_empty():
        return None
    col = next((c for c in frame.columns if c.lower() == native.change_column.lower()), None)
    if col is None:
        return None
    return timestamps(frame, col).max()


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
        if ends_mid_record(path):
            pulled.cut_off.append(canonical)
    return pulled


def ends_mid_record(path: Path) -> bool:
    """A delivery file cut off mid-transfer: a complete export ends its last record with a line break and
    closes every quote it opens (a `"` inside a quoted value is doubled), so its last record cannot be
    trusted (a value cut short can still parse: `2026-11-28 23:05` → `2026-11-2`). Bytes suffice: no
    multi-byte character of UTF-8 or GB18030 contains the byte of `"` or of a line break."""
    data = path.read_bytes()
    return bool(data) and (not data.endswith((b"\n", b"\r")) or data.count(b'"') % 2 == 1)


def _gb18030_resync(e: UnicodeDecodeError) -> tuple[str, int]:
    # CPython's GB18030 decoder drops up to three bytes of a broken four-byte sequence (`\x81\x30,`) and
    # with them a `,`, a quote or a line break (two records become one): replace the first byte only.
    return "\ufffd", e.start + 1


codecs.register_error("qingfeng-gb18030", _gb18030_resync)
_NON_ASCII = bytes(range(0x80, 0x100))


def decode_bytes(data: bytes) -> str:
    """UTF-8 (with or without BOM) or GB18030, as the contract allows. Bytes valid in neither are
    replaced (U+FFFD) rather than dropping the file; the affected values then fail to parse. A file that
    is UTF-8 but for a few bytes (cut off inside a character, a stray bad byte) stays UTF-8: in GB18030
    text most non-ASCII bytes are not valid UTF-8."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # The decoder skips exactly the bytes that are not UTF-8: what is left re-encodes to all the others.
    not_utf8 = len(data) - len(data.decode("utf-8", errors="ignore").encode("utf-8"))
    if 4 * not_utf8 <= len(data) - len(data.translate(None, _NON_ASCII)):
        return data.decode("utf-8", errors="replace")
    return data.decode("gb18030", errors="qingfeng-gb18030")


def _decode_sqlite_text(value: bytes) -> str:
    """A TEXT value: UTF-8, or else (a legacy system's GB18030 text, broken bytes) decoded as files are."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return decode_bytes(value)


_LINE_END = re.compile(r"\r\n?|\n")
_LONE_CR = re.compile(r"\r(?!\n)")


def read_delivery_csv(path: Path) -> pl.DataFrame:
    text = decode_bytes(path.read_bytes())
    if (first := _LINE_END.search(text)) and first.group() == "\r":
        text = _LONE_CR.sub("\n", text)  # old Mac line ends (CR only): the readers split on LF
    try:
        return pl.read_csv(
            io.BytesIO(text.encode("utf-8")),
            infer_schema=False,
            truncate_ragged_lines=True,
        )
    except pl.exceptions.PolarsError:
        # A file cut off mid-record (an unterminated quote) defeats the fast reader; the standard
        # library's reader keeps every row it can, so nothing vanishes.
        csv.field_size_limit(max(csv.field_size_limit(), len(text)))  # one value may be most of the file
        reader = csv.reader(io.StringIO(text), strict=False)
        header = next(reader, [])
        rows = [(r + [None] * len(header))[: len(header)] for r in reader if r]
        return pl.DataFrame(rows, schema={h: pl.String for h in header}, orient="row")
