"""The nightly flow end to end: a simulated city, a real Prefect flow run, real Parquet, real GX."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from flows.nightly import run_nightly
from flows.registry import load_registry
from flows.state import StateStore
from simulator import simulate_city
from transforms.dialects import native_tables
from warehouse.layout import Layout
from warehouse.marts import MARTS

AS_OF = date(2026, 11, 29)


def _bronze_rows(layout: Layout, source_id: str, table: str) -> int:
    files = list((layout.bronze / source_id / table).glob("*.parquet"))
    return sum(pl.read_parquet(f).height for f in files)


def _silver_rows(layout: Layout, source_id: str, table: str) -> int:
    path = layout.silver_file(table, source_id)
    return pl.read_parquet(path).height if path.exists() else 0


def _quarantine_rows(layout: Layout, source_id: str, table: str) -> int:
    path = layout.quarantine_file(AS_OF, source_id, table)
    return pl.read_parquet(path).height if path.exists() else 0


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("city")
    simulate_city(out, sources=6, projects_per_source=25, seed=11, as_of=AS_OF)
    return out


@pytest.fixture(scope="module")
def night(city, tmp_path_factory):
    warehouse = tmp_path_factory.mktemp("wh")
    result = run_nightly(city / "sources.toml", warehouse, AS_OF, max_workers=3)
    return Layout(warehouse), result


def test_rows_in_equal_silver_plus_quarantine_per_source_and_table(city, night):
    layout, result = night
    registry = load_registry(city / "sources.toml")
    checked = 0
    for source in registry.sources:
        outcome = result.outcomes[source.id]
        for table in native_tables(source.dialect):
            pulled = _bronze_rows(layout, source.id, table)
            if pulled == 0:
                continue
            silver, quarantined = _silver_rows(layout, source.id, table), _quarantine_rows(layout, source.id, table)
            assert pulled == silver + quarantined, (source.id, table, pulled, silver, quarantined)
            assert outcome.counts[table] == {"in": pulled, "silver": silver, "quarantined": quarantined}
            checked += 1
    assert checked >= 20
    assert sum(_quarantine_rows(layout, s.id, t) for s in registry.sources for t in native_tables(s.dialect)) > 0


def test_every_mart_published_for_the_date_and_readable(night):
    layout, result = night
    for mart in MARTS:
        part = layout.mart_partition(mart, AS_OF)
        assert part.is_dir(), mart
        df = pl.read_parquet(part)
        assert df.height == result.mart_rows[mart]
    con = duckdb.connect(str(layout.duckdb_file), read_only=True)
    n = con.sql("SELECT count(*) FROM project_health").fetchall()[0][0]
    assert n == result.mart_rows["project_health"] > 0


def test_flags_cover_the_contract_and_deadline_rules(city, night):
    layout, result = night
    flags = pl.read_parquet(layout.mart_partition("dq_flags", AS_OF))
    rules = set(flags["rule_id"].unique())
    assert {"C1", "C2", "C3", "D1", "D2", "D3"} <= rules
    assert set(flags["family"].unique()) == {"traces", "fabrication", "deadline", "contract"}
    for detail in flags["detail"].head(200):
        json.loads(detail)  # every detail is JSON
    labels = pl.read_csv(city / "labels.csv", infer_schema=False)
    c1_truth = set(labels.filter(pl.col("rule_id") == "C1")["source_id"])
    c1_found = set(flags.filter(pl.col("rule_id") == "C1")["source_id"])
    assert c1_truth <= c1_found
    assert result.failed_sources  # the unreachable source failed; the others completed
    assert len(result.failed_sources) < len(result.outcomes)


def test_data_docs_built_for_the_date(night):
    layout, _ = night
    index = layout.docs(AS_OF) / "index.html"
    assert index.is_file()
    assert list((layout.docs(AS_OF) / "validations").rglob("*.html"))


def test_run_records_written(night):
    layout, result = night
    records = StateStore(layout.state_url).run_records(result.run_id)
    stages = {r["stage"] for r in records}
    assert {"extract", "bronze", "normalize", "rules", "marts"} <= stages
    assert any(r["status"] == "failed" for r in records)


def test_next_night_is_incremental_and_rerun_keeps_marts(city, night):
    layout, first = night
    pulled_first = sum(_bronze_rows(layout, s, t) for s in first.outcomes for t in native_tables("platform"))
    second = run_nightly(city / "sources.toml", layout.root, AS_OF + timedelta(days=1), max_workers=3)
    extract_rows = {r.source_id: r.rows_in for o in second.outcomes.values() for r in o.records if r.stage == "extract"}
    # Nothing changed at the sources: only the overlap window (and unparseable change times) come again.
    assert sum(extract_rows.values()) < 0.2 * pulled_first
    # Both dates stay in the warehouse.
    assert layout.mart_partition("project_health", AS_OF).is_dir()
    assert layout.mart_partition("project_health", AS_OF + timedelta(days=1)).is_dir()


def test_a_city_read_in_shards_publishes_what_the_city_held_whole_does(city, night, tmp_path, monkeypatch):
    """A large city is read source by source and ends its night one step at a time (the Data Docs, the
    alerts, then the marts); a small one holds its silver and builds the marts beside the alerts. The same
    city either way gives the same marts, the alerts' emails included."""
    layout, _ = night
    monkeypatch.setattr("warehouse.silver.HOLD_ROWS", 0)
    monkeypatch.setattr("warehouse.silver.SHARD_ROWS", 1)  # a shard a source
    sharded = Layout(tmp_path / "wh")
    run_nightly(city / "sources.toml", sharded.root, AS_OF, max_workers=3)
    clock = ["raised_at", "sent_at"]  # when an alert entered the outbox: this run's own time
    for mart in MARTS:
        held, read = (pl.read_parquet(w.mart_partition(mart, AS_OF)) for w in (layout, sharded))
        assert held.height > 0, mart
        held, read = (f.drop([c for c in clock if c in f.columns]) for f in (held, read))
        assert read.sort(read.columns, nulls_last=True).equals(held.sort(held.columns, nulls_last=True)), mart


def test_postgres_platform_source(pg_server, tmp_path):
    city = tmp_path / "pgcity"
    simulate_city(city, sources=4, projects_per_source=10, seed=5, as_of=AS_OF, pg_url=pg_server.url)
    registry = load_registry(city / "sources.toml")
    pg_sources = [s for s in registry.sources if s.url.startswith("postgresql")]
    assert pg_sources
    result = run_nightly(city / "sources.toml", tmp_path / "wh", AS_OF, max_workers=2)
    layout = Layout(tmp_path / "wh")
    for s in pg_sources:
        if result.outcomes[s.id].status != "ok":
            continue
        projects = _silver_rows(layout, s.id, "projects")
        assert projects > 0
        assert _bronze_rows(layout, s.id, "projects") == projects + _quarantine_rows(layout, s.id, "projects")
        ts = pl.read_parquet(layout.silver_file("evidence", s.id))["uploaded_at"]
        assert ts.dtype == pl.Datetime("us", "Asia/Shanghai") and ts.null_count() == 0
