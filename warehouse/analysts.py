"""Analyst access: a DuckDB file of views over the published marts, and a read-only query helper.

`<warehouse>/qingfeng.duckdb` holds, for every mart present in the current release:

* `<mart>_history`: every partition — read_parquet over `<warehouse>/marts/<mart>/as_of=*/*.parquet` with
  hive_partitioning (the file's own `as_of` column and the folder agree; see `warehouse.publish`);
* `<mart>`: the latest partition only (as_of = the greatest as_of in the history).
* `rules`: the rule catalog (rule_id, family, severity, entity_types, title_zh) to join dq_flags against.

The views name the `marts` symlink path, not a release, so they follow every publish without a refresh;
`refresh_views` is only needed when a mart appears for the first time (or the warehouse folder moves:
the paths are absolute, as DuckDB resolves relative paths against the reader's working directory).

The file is rebuilt under a temp name and renamed over the old one, so analysts holding it open
read-only are not locked out and never see a half-written catalog.
"""

from __future__ import annotations

import os
import uuid

import duckdb
import polars as pl

from expectations.catalog import RULES
from transforms.schema import TIMESTAMP
from warehouse.layout import Layout
from warehouse.publish import current_release, partitions


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def published_marts(layout: Layout) -> list[str]:
    release = current_release(layout)
    if release is None:
        return []
    return sorted(p.name for p in release.iterdir() if p.is_dir() and partitions(layout, p.name, release))


def view_sql(layout: Layout, mart: str) -> tuple[str, str]:
    """(history view DDL, latest view DDL) for one mart."""
    hist = _quote_ident(f"{mart}_history")
    glob = _quote_str(layout.mart_glob(mart))
    history = (
        f"CREATE OR REPLACE VIEW {hist} AS "
        f"SELECT * FROM read_parquet({glob}, hive_partitioning = true, union_by_name = true)"
    )
    latest = (
        f"CREATE OR REPLACE VIEW {_quote_ident(mart)} AS "
        f"SELECT * FROM {hist} WHERE as_of = (SELECT max(as_of) FROM {hist})"
    )
    return history, latest


def refresh_views(layout: Layout) -> list[str]:
    """(Re)write `<warehouse>/qingfeng.duckdb` with the views; returns the names of the views created."""
    target = layout.duckdb_file
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    created: list[str] = []
    try:
        con = duckdb.connect(str(tmp))
        try:
            for mart in published_marts(layout):
                for ddl in view_sql(layout, mart):
                    con.execute(ddl)
                created += [mart, f"{mart}_history"]
            con.execute(
                "CREATE OR REPLACE TABLE rules (rule_id VARCHAR, family VARCHAR, severity VARCHAR, "
                "entity_types VARCHAR[], title_zh VARCHAR)"
            )
            con.executemany(
                "INSERT INTO rules VALUES (?, ?, ?, ?, ?)",
                [[r.rule_id, r.family, r.severity, list(r.entity_types), r.title_zh] for r in RULES.values()],
            )
            created.append("rules")
            con.execute("CHECKPOINT")
        finally:
            con.close()
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".wal").unlink(missing_ok=True)
    return created


def run_query(layout: Layout, sql: str) -> pl.DataFrame:
    """Run `sql` against the analysts' DuckDB file, opened read-only; the result as a Polars frame."""
    if not layout.duckdb_file.exists():
        raise FileNotFoundError(
            f"{layout.duckdb_file} does not exist yet: publish the marts and refresh the views"
        )
    con = duckdb.connect(str(layout.duckdb_file), read_only=True)
    try:
        con.execute(f"SET TimeZone = {_quote_str(TIMESTAMP.time_zone)}")  # show timestamps in business time
        rel = con.sql(sql)
        return pl.DataFrame() if rel is None else rel.pl()
    finally:
        con.close()
