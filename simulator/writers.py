"""Write native frames: SQLite (platform, legacy), PostgreSQL (platform), CSV deliveries (filedrop),
plus the registry (`sources.toml`) and the ground truth (`labels.csv`)."""

from __future__ import annotations

import json
import sqlite3
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from simulator.registry import SourceMeta
from transforms.dialects import FILEDROP, LEGACY, PLATFORM

# Column types of the platform DDL (contract §2); PostgreSQL gets them as is, SQLite declares them.
PLATFORM_TYPES: dict[str, dict[str, str]] = {
    "units": {"unit_code": "TEXT PRIMARY KEY", "unit_name": "TEXT NOT NULL", "unit_kind": "TEXT NOT NULL",
              "parent_code": "TEXT"},
    "persons": {"person_id": "TEXT PRIMARY KEY", "name": "TEXT NOT NULL", "unit_code": "TEXT", "title": "TEXT",
                "phone": "TEXT", "email": "TEXT", "id_card": "TEXT", "updated_at": "TIMESTAMPTZ NOT NULL"},
    "projects": {"project_id": "TEXT PRIMARY KEY", "project_code": "TEXT", "title": "TEXT NOT NULL",
                 "category": "TEXT", "unit_code": "TEXT NOT NULL", "owner_id": "TEXT NOT NULL", "leader_id": "TEXT",
                 "planned_start": "DATE", "planned_end": "DATE", "status": "TEXT NOT NULL",
                 "updated_at": "TIMESTAMPTZ NOT NULL"},
    "milestones": {"milestone_id": "TEXT PRIMARY KEY", "project_id": "TEXT NOT NULL", "stage": "TEXT NOT NULL",
                   "due_date": "DATE NOT NULL", "completed_at": "TIMESTAMPTZ", "updated_at": "TIMESTAMPTZ NOT NULL"},
    "stage_reports": {"report_id": "TEXT PRIMARY KEY", "project_id": "TEXT NOT NULL", "milestone_id": "TEXT",
                      "submitted_at": "TIMESTAMPTZ NOT NULL", "submitted_by": "TEXT", "progress_pct": "NUMERIC",
                      "summary": "TEXT", "metrics": "TEXT", "updated_at": "TIMESTAMPTZ NOT NULL"},
    "evidence": {"evidence_id": "TEXT PRIMARY KEY", "report_id": "TEXT NOT NULL", "file_name": "TEXT",
                 "kind": "TEXT NOT NULL", "sha256": "TEXT", "phash": "TEXT", "pages": "INTEGER",
                 "size_bytes": "BIGINT", "captured_at": "TIMESTAMPTZ", "uploaded_at": "TIMESTAMPTZ NOT NULL",
                 "uploaded_by": "TEXT", "updated_at": "TIMESTAMPTZ NOT NULL"},
    "problems": {"problem_id": "TEXT PRIMARY KEY", "unit_code": "TEXT NOT NULL", "origin": "TEXT NOT NULL",
                 "category": "TEXT", "description": "TEXT", "found_at": "DATE NOT NULL", "deadline": "DATE",
                 "owner_id": "TEXT", "status": "TEXT NOT NULL", "closed_at": "DATE",
                 "updated_at": "TIMESTAMPTZ NOT NULL"},
}
assert all(list(PLATFORM_TYPES[t]) == list(PLATFORM[t].columns) for t in PLATFORM)


def _visible(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select([c for c in frame.columns if not c.startswith("_")])


def write_sqlite(path: Path, frames: dict[str, pl.DataFrame], dialect: str, skip: tuple[str, ...] = ()) -> None:
    """One transaction, journal off: bulk speed; the file is rebuilt from scratch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    spec = PLATFORM if dialect == "platform" else LEGACY
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        con.execute("BEGIN")
        for table, frame in frames.items():
            if table in skip:
                continue
            frame = _visible(frame)
            native = spec[table].native
            if dialect == "platform":
                cols = ", ".join(f"{c} {PLATFORM_TYPES[table][c]}" for c in frame.columns)
            else:
                cols = ", ".join(f"{c} TEXT" for c in frame.columns)
            con.execute(f"CREATE TABLE {native} ({cols})")
            marks = ", ".join("?" * frame.width)
            con.executemany(f"INSERT INTO {native} VALUES ({marks})", frame.iter_rows())
        con.execute("COMMIT")
    finally:
        con.close()


def write_postgres(admin_url: str, database: str, frames: dict[str, pl.DataFrame]) -> str:
    """Create (or recreate) one database for the source and COPY its tables in; returns its SQLAlchemy URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(admin_url)
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        con.execute(f'CREATE DATABASE "{database}"')
    target = admin.set(database=database)
    with psycopg.connect(target.set(drivername="postgresql").render_as_string(hide_password=False)) as con:
        with con.cursor() as cur:
            for table, frame in frames.items():
                frame = _visible(frame)
                cols = ", ".join(f"{c} {PLATFORM_TYPES[table][c]}" for c in frame.columns)
                cur.execute(f"CREATE TABLE {table} ({cols})")
                # CSV COPY: unquoted empty field = NULL, quoted "" = empty string (polars quotes only those).
                data = frame.write_csv(include_header=False, quote_style="necessary", null_value="")
                with cur.copy(f"COPY {table} ({', '.join(frame.columns)}) FROM STDIN WITH (FORMAT csv)") as cp:
                    cp.write(data.encode("utf-8"))
        con.commit()
    return target.render_as_string(hide_password=False)


def write_filedrop(folder: Path, frames: dict[str, pl.DataFrame], meta: SourceMeta, newest: date,
                   skip: tuple[str, ...] = ()) -> list[str]:
    """Dated full-export deliveries; older deliveries are older snapshots (rows changed since are absent).
    One older delivery of some sources is cut off mid-file, as real transfers sometimes are."""
    days = [newest - timedelta(days=d) for d in (2, 1, 0)] if meta.index % 2 else [newest - timedelta(days=1), newest]
    written = []
    for n, day in enumerate(days):
        cutoff = (day - date(1970, 1, 1)).days * 86_400 + 86_400
        sub = folder / day.isoformat()
        sub.mkdir(parents=True, exist_ok=True)
        for table, frame in frames.items():
            if table in skip:
                continue
            native = FILEDROP[table]
            if day != newest:
                frame = frame.filter(pl.col("_upd").is_null() | (pl.col("_upd") < cutoff))
            frame = _visible(frame)
            headers = list(native.columns)
            extra = frame.columns[len(headers):]  # an extra column keeps a Chinese header
            frame.columns = headers + ["备注" for _ in extra]
            text = frame.write_csv(include_header=True, quote_style="necessary")
            data = text.encode("gb18030") if meta.encoding == "gb18030" else ("\ufeff" + text).encode("utf-8")
            if n == 0 and day != newest and table == "stage_reports" and meta.index % 3 == 0:
                data = data[: int(len(data) * 0.6)]  # a delivery cut off mid-file
            (sub / native.native).write_bytes(data)
        written.append(day.isoformat())
    return written


def write_registry(path: Path, metas: list[SourceMeta]) -> None:
    q = lambda s: json.dumps(s, ensure_ascii=False)  # noqa: E731 - TOML basic strings escape like JSON
    lines = ["# The simulated city's source registry (contract §1).", "", "[alerts]",
             f"supervision_email = {q('dubang@jw.example.cn')}", f"sender = {q('qingfeng@jw.example.cn')}"]
    for m in metas:
        lines += ["", "[[source]]", f"id = {q(m.id)}", f"name = {q(m.name)}", f"kind = {q(m.kind)}",
                  f"dialect = {q(m.dialect)}", f"url = {q(m.url)}", f"steward_email = {q(m.steward_email)}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_labels(path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    frame = pl.DataFrame(rows, schema=["source_id", "rule_id", "entity_type", "entity_id"], orient="row")
    frame.unique().sort(["source_id", "rule_id", "entity_type", "entity_id"]).write_csv(path)
