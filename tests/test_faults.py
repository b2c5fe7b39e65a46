"""Fault injection against the real pipeline: a real SQLite state database locked by another process or
deleted, real filedrop folders cut off, repeated and late, real source schemas that drift, a real
PostgreSQL server restarted mid-extract, source clocks that lag, a real night SIGKILLed mid-publish.

Nights are driven through the pipeline's own entry points: `flows.steps.process_source` + `finish_night`
(what the Prefect tasks call), or `flows.nightly.run_nightly` where Prefect's retries are the point.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest
import sqlalchemy as sa

from flows import progress
from flows.extract import read_delivery_csv
from flows.nightly import run_nightly
from flows.registry import Registry, Source, load_registry
from flows.state import StateStore, StateUnavailable
from flows.steps import (
    NightResult,
    RunSettings,
    SourceOutcome,
    extract_stage,
    finish_night,
    land_stage,
    new_run_id,
    normalize_stage,
    process_source,
)
from simulator import simulate_city
from tests.test_publish import sigkill_at_marker
from transforms.merge import key_fold
from transforms.parse import timestamp as parse_timestamp
from transforms.schema import TABLES
from warehouse.layout import Layout
from warehouse.marts import MARTS
from warehouse.publish import PAUSE_ENV, PAUSE_MARKER_ENV, current_release, read_manifest

AS_OF = date(2026, 11, 29)
DAY = timedelta(days=1)
SHANGHAI = ZoneInfo("Asia/Shanghai")
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _city(tmp_path: Path, seed: int = 3, pg_url: str | None = None) -> Registry:
    """A small city: 4 sources (filedrop, legacy, 2 platform), 10 projects each; no broken source."""
    out = tmp_path / "city"
    simulate_city(out, sources=4, projects_per_source=10, seed=seed, as_of=AS_OF, pg_url=pg_url, workers=1)
    return load_registry(out / "sources.toml")


def _by_dialect(registry: Registry, dialect: str, *, pg: bool = False) -> Source:
    return next(s for s in registry.sources if s.dialect == dialect and s.url.startswith("postgresql") == pg)


def night(layout: Layout, registry: Registry, as_of: date, *, only: list[Source] | None = None,
          finish: bool = True) -> tuple[dict[str, SourceOutcome], NightResult | None]:
    """One night through the steps the Prefect tasks call: every (or `only` these) source(s), then the
    cross-source stages (rules, marts, publish) unless `finish` is False."""
    sources = only or list(registry.sources)
    layout.root.mkdir(parents=True, exist_ok=True)
    state = StateStore(layout.state_url)
    try:
        run_id = new_run_id(as_of)
        outcomes = {s.id: process_source(layout, state, s, as_of, run_id, RunSettings()) for s in sources}
        result = None
        if finish:
            result = finish_night(layout, state, replace(registry, sources=tuple(sources)), outcomes, as_of, run_id)
    finally:
        state.dispose()
    return outcomes, result


def silver(layout: Layout, table: str, source_id: str) -> pl.DataFrame:
    path = layout.silver_file(table, source_id)
    frame = pl.read_parquet(path) if path.exists() else pl.DataFrame()
    return frame.sort(TABLES[table].key) if frame.height else frame


def silver_all(layout: Layout, source_ids: list[str]) -> dict[tuple[str, str], pl.DataFrame]:
    return {(t, sid): silver(layout, t, sid) for t in TABLES for sid in source_ids}


def assert_one_row_per_key(layout: Layout, source_id: str) -> None:
    for table, spec in TABLES.items():
        frame = silver(layout, table, source_id)
        if frame.height:
            dup = frame.filter(key_fold(spec.key).is_duplicated())
            assert dup.is_empty(), (source_id, table, dup)


def assert_balanced(outcome: SourceOutcome) -> None:
    """Every row pulled tonight is in silver or in the quarantine, once; or, in a filedrop delivery, was
    unchanged since the delivery loaded before it (counted, and not normalized again)."""
    assert outcome.status == "ok", outcome.error
    for table, c in outcome.counts.items():
        assert c["in"] == c["silver"] + c["quarantined"], (outcome.source_id, table, c)
    for diff in (r for r in outcome.records if r.stage == "diff"):
        normalized = next(r for r in outcome.records if r.stage == "normalize" and r.table_name == diff.table_name)
        cut_off = 1 if normalized.message and "cut off" in normalized.message else 0
        assert normalized.rows_in == diff.rows_out + cut_off, (diff, normalized)
        assert f"{diff.rows_in - diff.rows_out} rows unchanged" in diff.message


def unchanged_rows(outcome: SourceOutcome) -> dict[str, int]:
    return {r.table_name: r.rows_in - r.rows_out for r in outcome.records if r.stage == "diff"}


def extract_rows(outcome: SourceOutcome) -> int:
    return sum(r.rows_in for r in outcome.records if r.stage == "extract")


def state_rows(layout: Layout) -> dict[str, list[tuple]]:
    """The state database's watermarks and deliveries, read with the sqlite3 module (not StateStore)."""
    con = sqlite3.connect(layout.state_db)
    try:
        return {
            "watermarks": con.execute("SELECT source_id, table_name, as_of, watermark FROM watermarks "
                                      "ORDER BY 1, 2, 3").fetchall(),
            "deliveries": con.execute("SELECT source_id, delivery, as_of FROM deliveries ORDER BY 1, 2").fetchall(),
        }
    finally:
        con.close()


_LOCK_HOLDER = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
con.execute("SELECT count(*) FROM sqlite_master").fetchall()
print("locked", flush=True)
sys.stdin.read()
"""


@contextmanager
def locked(db: Path):
    """Another process holds an exclusive lock on the SQLite file (as `sqlite3 state.sqlite` + `BEGIN
    EXCLUSIVE` would) until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, str(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def sqlite_path(source: Source) -> Path:
    return Path(sa.engine.make_url(source.url).database)


def local(ts: datetime) -> str:
    """A platform SQLite timestamp: ISO-8601 with the +08:00 offset (contract §2)."""
    return ts.astimezone(SHANGHAI).isoformat(timespec="seconds")


def old_keys(con: sqlite3.Connection, table: str, key: str, change: str, before: datetime, n: int) -> list[str]:
    """`n` keys of rows last changed before `before` (parsed as the pipeline parses), each id unique even
    folded (no case/whitespace twin that could carry another version)."""
    rows = pl.DataFrame(con.execute(f"SELECT {key}, {change} FROM {table}").fetchall(), schema=["k", "ts"],
                        orient="row")
    rows = rows.with_columns(t=parse_timestamp(pl.col("ts")), f=pl.col("k").str.strip_chars().str.to_lowercase())
    rows = rows.filter(pl.col("f").is_unique())
    return rows.filter(pl.col("t") < before.astimezone(SHANGHAI)).sort("k")["k"].head(n).to_list()


# --------------------------------------------------------------------------------------------------
# the state database deleted or locked between runs
# --------------------------------------------------------------------------------------------------


def test_state_db_deleted_between_nights_is_a_clean_full_reextract(tmp_path):
    registry = _city(tmp_path)
    layout = Layout(tmp_path / "wh")
    ids = [s.id for s in registry.sources]
    first, _ = night(layout, registry, AS_OF, finish=False)
    before = silver_all(layout, ids)

    layout.state_db.unlink()  # watermarks, deliveries, run records: gone
    second, result = night(layout, registry, AS_OF + DAY)

    for sid, outcome in second.items():
        # Everything again, as on the first night (not just the overlap)…
        assert extract_rows(outcome) == extract_rows(first[sid]) > 0, sid
        assert outcome.counts == first[sid].counts, sid
        assert_balanced(outcome)
        # …and silver holds each row once, exactly as before.
        assert_one_row_per_key(layout, sid)
    after = silver_all(layout, ids)
    for k, frame in before.items():
        assert frame.equals(after[k]), k
    # A new state database, the night recorded and published.
    state = StateStore(layout.state_url)
    sql = [s for s in registry.sources if not s.is_filedrop]
    assert all(state.watermark(s.id, "projects", before=AS_OF + 2 * DAY) for s in sql)
    assert state.loaded_deliveries(_by_dialect(registry, "filedrop").id, before=AS_OF + 2 * DAY)
    assert not result.failed_sources
    health = pl.read_parquet(layout.mart_partition("project_health", AS_OF + DAY))
    assert health.height == sum(silver(layout, "projects", sid).height for sid in ids)


def test_state_db_locked_between_nights_is_a_clear_error_and_moves_nothing(tmp_path, monkeypatch):
    registry = _city(tmp_path)
    layout = Layout(tmp_path / "wh")
    ids = [s.id for s in registry.sources]
    night(layout, registry, AS_OF, finish=False)
    state_before, silver_before = state_rows(layout), silver_all(layout, ids)
    bronze_before = sorted(layout.bronze.rglob("*.parquet"))

    monkeypatch.setenv("QINGFENG_STATE_TIMEOUT_SECONDS", "1")
    with locked(layout.state_db):
        t0 = time.monotonic()
        with pytest.raises(StateUnavailable) as err:
            night(layout, registry, AS_OF + DAY)
        waited = time.monotonic() - t0
    message = str(err.value)
    assert str(layout.state_db) in message and "locked" in message, message
    assert waited < 15  # the configured wait (1 s), not the default 30 s

    # Nothing was half-written: watermarks, deliveries, silver, bronze, quarantine and marts as before.
    assert state_rows(layout) == state_before
    assert all(f.equals(silver_before[k]) for k, f in silver_all(layout, ids).items())
    assert sorted(layout.bronze.rglob("*.parquet")) == bronze_before
    assert not layout.quarantine_file(AS_OF + DAY, ids[0], "projects").parent.parent.exists()
    assert not layout.marts.exists()

    # The lock gone, the next run completes.
    outcomes, result = night(layout, registry, AS_OF + DAY)
    assert not result.failed_sources
    for sid in ids:
        assert_balanced(outcomes[sid])
        assert_one_row_per_key(layout, sid)


def test_state_db_locked_mid_night_blames_no_source_and_moves_no_watermark(tmp_path, monkeypatch):
    registry = _city(tmp_path)
    layout = Layout(tmp_path / "wh")
    src = _by_dialect(registry, "platform")
    night(layout, registry, AS_OF, only=[src], finish=False)
    silver_before = silver_all(layout, [src.id])
    monkeypatch.setenv("QINGFENG_STATE_TIMEOUT_SECONDS", "1")
    state = StateStore(layout.state_url)
    settings, run_id = RunSettings(), new_run_id(AS_OF + DAY)
    try:
        # Locked after the run opened the state database, before the extraction reads its watermarks:
        # an error about the state database, not a failed source (C1) with a driver message.
        with locked(layout.state_db), pytest.raises(StateUnavailable, match=re.escape(str(layout.state_db))):
            process_source(layout, state, src, AS_OF + DAY, run_id, settings)

        # Locked after extract and bronze, before normalize moves the watermark on.
        outcome, pulled = extract_stage(src, state, AS_OF + DAY, settings)
        outcome = land_stage(layout, outcome, pulled, run_id)
        with locked(layout.state_db), pytest.raises(StateUnavailable, match="locked"):
            normalize_stage(layout, state, src, outcome, pulled, AS_OF + DAY, run_id)
        assert [w for w in state_rows(layout)["watermarks"] if w[2] != AS_OF.isoformat()] == []
        # Silver may already hold tonight's rows (ahead of the watermark, which is safe): no row twice.
        assert_one_row_per_key(layout, src.id)

        # The lock gone, the night runs again and completes: the same rows, once.
        outcome = process_source(layout, state, src, AS_OF + DAY, new_run_id(AS_OF + DAY), settings)
        assert_balanced(outcome)
        assert state.watermark(src.id, "projects", before=AS_OF + 2 * DAY) is not None
        assert {w[2] for w in state_rows(layout)["watermarks"]} == {AS_OF.isoformat(), (AS_OF + DAY).isoformat()}
    finally:
        state.dispose()
    for k, frame in silver_all(layout, [src.id]).items():
        assert frame.equals(silver_before[k]), k


# --------------------------------------------------------------------------------------------------
# filedrop: repeated, late and out of order, cut off
# --------------------------------------------------------------------------------------------------


def _encoding(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        return "gb18030"


def write_delivery_csv(path: Path, frame: pl.DataFrame, encoding: str) -> None:
    text = frame.write_csv(include_header=True, quote_style="necessary")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\ufeff" + text).encode("utf-8") if encoding == "utf-8-sig" else text.encode(encoding))


def edit_delivery(folder: Path, file: str, edit) -> None:
    """Rewrite one CSV of a delivery folder through `edit(frame) -> frame`, in the file's own encoding."""
    path = folder / file
    encoding = _encoding(path.read_bytes())
    write_delivery_csv(path, edit(read_delivery_csv(path)), encoding)


def newest_delivery(source: Source) -> Path:
    return max(p for p in Path(source.url).iterdir() if p.is_dir())


def test_filedrop_repeated_delivery_is_loaded_once(tmp_path):
    registry = _city(tmp_path)
    fd = _by_dialect(registry, "filedrop")
    layout = Layout(tmp_path / "wh")
    first, _ = night(layout, registry, AS_OF, only=[fd], finish=False)
    assert_balanced(first[fd.id])
    loaded = newest_delivery(fd)
    before = silver_all(layout, [fd.id])
    bronze_before = sorted(layout.bronze.rglob("*.parquet"))

    # The same delivery is still the newest the next night (and the night is rerun): not loaded again.
    for _ in range(2):
        again, _ = night(layout, registry, AS_OF + DAY, only=[fd], finish=False)
        assert extract_rows(again[fd.id]) == 0 and again[fd.id].counts == {}
        assert "no new delivery" in next(r.message for r in again[fd.id].records if r.stage == "extract")
    assert sorted(layout.bronze.rglob("*.parquet")) == bronze_before
    assert not (layout.quarantine / f"as_of={AS_OF + DAY}").exists()

    # The same export delivered again under a new date: loaded, and every row is still there once. None of
    # its rows differs from the delivery loaded before, so none is normalized again, but the last of each
    # file (which may have been a cut-off record then).
    shutil.copytree(loaded, loaded.parent / str(AS_OF + DAY))
    third, _ = night(layout, registry, AS_OF + 2 * DAY, only=[fd], finish=False)
    assert extract_rows(third[fd.id]) == extract_rows(first[fd.id])
    assert unchanged_rows(third[fd.id]) == {t: c["in"] - 1 for t, c in first[fd.id].counts.items()}
    assert all(c["in"] == 1 for c in third[fd.id].counts.values())
    assert_balanced(third[fd.id])
    assert_one_row_per_key(layout, fd.id)
    for k, frame in silver_all(layout, [fd.id]).items():
        assert frame.equals(before[k]), k
    state = StateStore(layout.state_url)
    assert state.loaded_deliveries(fd.id, before=AS_OF + 3 * DAY) == {loaded.name, str(AS_OF + DAY)}


def test_filedrop_delivery_normalizes_only_its_new_and_changed_rows(tmp_path):
    """A delivery is a full export, mostly the rows of the one loaded before. Those are not normalized again;
    silver ends as a full normalization of the delivery would leave it."""
    registry = _city(tmp_path)
    fd = _by_dialect(registry, "filedrop")
    layout, control = Layout(tmp_path / "wh"), Layout(tmp_path / "control")
    first, _ = night(layout, registry, AS_OF, only=[fd], finish=False)
    night(control, registry, AS_OF, only=[fd], finish=False)
    d28 = newest_delivery(fd)
    pid = silver(layout, "projects", fd.id)["project_id"][0]

    d29 = d28.parent / "2026-11-29"
    shutil.copytree(d28, d29)
    edit_delivery(d29, "项目.csv", lambda f: f.with_columns(
        pl.when(pl.col("项目编号") == pid).then(pl.lit("暂停")).otherwise(pl.col("状态")).alias("状态"),
        pl.when(pl.col("项目编号") == pid).then(pl.lit("2026-11-29 21:00:00")).otherwise(pl.col("更新时间"))
        .alias("更新时间"),
    ))
    edit_delivery(d29, "问题.csv", lambda f: pl.concat([f, f.tail(1).with_columns(
        pl.lit("NEW-PROBLEM-1").alias("问题编号"), pl.lit("2026-11-28 23:00:00").alias("更新时间"))]))
    second, _ = night(layout, registry, AS_OF + DAY, only=[fd], finish=False)
    assert_balanced(second[fd.id])
    counts, unchanged = second[fd.id].counts, unchanged_rows(second[fd.id])
    # The changed and the new row go on, and so does the last row the delivery before had in each file.
    assert counts["projects"]["in"] == 2 and counts["problems"]["in"] == 2
    assert unchanged["projects"] == first[fd.id].counts["projects"]["in"] - 2
    assert unchanged["problems"] == first[fd.id].counts["problems"]["in"] - 1
    assert all(counts[t]["in"] == 1 for t in counts if t not in ("projects", "problems"))
    assert silver(layout, "projects", fd.id).filter(pl.col("project_id") == pid)["status"].item() == "suspended"

    # The control warehouse has lost its bronze, so nothing can be compared: it normalizes the whole delivery.
    shutil.rmtree(control.bronze)
    whole, _ = night(control, registry, AS_OF + DAY, only=[fd], finish=False)
    assert unchanged_rows(whole[fd.id]) == {}
    assert whole[fd.id].counts["projects"]["in"] == first[fd.id].counts["projects"]["in"]
    assert silver_all(layout, [fd.id]).keys() == silver_all(control, [fd.id]).keys()
    for k, frame in silver_all(layout, [fd.id]).items():
        assert frame.equals(silver_all(control, [fd.id])[k]), k
    assert_one_row_per_key(layout, fd.id)


def test_filedrop_record_taken_for_cut_off_then_delivered_whole_reaches_silver(tmp_path):
    """A file whose last line break is missing: its last record is quarantined as cut off. The next delivery
    brings the same record, value for value, whole: it is not taken as loaded before."""
    registry = _city(tmp_path)
    fd = _by_dialect(registry, "filedrop")
    d28 = newest_delivery(fd)
    whole = (d28 / "项目.csv").read_bytes()
    (d28 / "项目.csv").write_bytes(whole.rstrip(b"\r\n"))
    layout = Layout(tmp_path / "wh")
    first, _ = night(layout, registry, AS_OF, only=[fd], finish=False)
    assert_balanced(first[fd.id])
    last = read_delivery_csv(d28 / "项目.csv")["项目编号"][-1]
    assert last not in silver(layout, "projects", fd.id)["project_id"].to_list()

    d29 = d28.parent / "2026-11-29"
    shutil.copytree(d28, d29)
    (d29 / "项目.csv").write_bytes(whole)
    second, _ = night(layout, registry, AS_OF + DAY, only=[fd], finish=False)
    assert_balanced(second[fd.id])
    assert last in silver(layout, "projects", fd.id)["project_id"].to_list()
    assert_one_row_per_key(layout, fd.id)


def test_filedrop_late_and_out_of_order_deliveries_never_regress_newer_data(tmp_path):
    """Contract §4: the newest delivery wins; a delivery can be late. An older-dated delivery arriving after
    a newer one is not loaded over it, and an old version of a row never replaces a newer one."""
    registry = _city(tmp_path)
    fd = _by_dialect(registry, "filedrop")
    layout = Layout(tmp_path / "wh")
    first, _ = night(layout, registry, AS_OF, only=[fd], finish=False)
    d28 = newest_delivery(fd)  # 2026-11-28, loaded
    projects = silver(layout, "projects", fd.id)
    x, z = projects["project_id"][0], projects["project_id"][1]
    x_then = projects.row(0, named=True)

    def version(pid: str, status: str, stamp: str):
        def edit(frame: pl.DataFrame) -> pl.DataFrame:
            hit = pl.col("项目编号") == pid
            return frame.with_columns(
                pl.when(hit).then(pl.lit(status)).otherwise(pl.col("状态")).alias("状态"),
                pl.when(hit).then(pl.lit(stamp)).otherwise(pl.col("更新时间")).alias("更新时间"),
            )
        return edit

    older = (x_then["updated_at"] - timedelta(days=10)).strftime("%Y-%m-%d %H:%M:%S")
    # Late: a delivery dated 11-26 turns up after 11-28 was loaded, with an older version of X.
    late = d28.parent / "2026-11-26"
    shutil.copytree(d28, late)
    edit_delivery(late, "项目.csv", version(x, "暂停", older))
    second, _ = night(layout, registry, AS_OF + DAY, only=[fd], finish=False)
    assert extract_rows(second[fd.id]) == 0  # not loaded over the newer one
    assert second[fd.id].newest_delivery == date(2026, 11, 28)
    assert silver(layout, "projects", fd.id).equals(projects)

    # Out of order: 11-30 arrives (Z changed, and a stale copy of X's older version in it), then 11-29.
    d30 = d28.parent / "2026-11-30"
    shutil.copytree(d28, d30)
    edit_delivery(d30, "项目.csv", version(z, "暂停", "2026-11-29 10:00:00"))
    edit_delivery(d30, "项目.csv", version(x, "暂停", older))
    third, _ = night(layout, registry, AS_OF + 2 * DAY, only=[fd], finish=False)
    assert_balanced(third[fd.id])
    now = silver(layout, "projects", fd.id)
    assert now.filter(pl.col("project_id") == z)["status"].item() == "suspended"
    assert now.filter(pl.col("project_id") == x).row(0, named=True) == x_then  # newer X kept
    d29 = d28.parent / "2026-11-29"
    shutil.copytree(d28, d29)  # Z as it was before 11-30, arriving late
    fourth, _ = night(layout, registry, AS_OF + 3 * DAY, only=[fd], finish=False)
    assert extract_rows(fourth[fd.id]) == 0
    final = silver(layout, "projects", fd.id)
    assert final.equals(now) and final.height == projects.height
    assert_one_row_per_key(layout, fd.id)
    assert StateStore(layout.state_url).loaded_deliveries(fd.id, before=AS_OF + 4 * DAY) == {d28.name, d30.name}
    # 11-30 differs from 11-28 (loaded before it) in X and Z only: the other rows were not normalized again,
    # but the last (which may have been a cut-off record).
    assert third[fd.id].counts["projects"]["in"] == 3
    assert 3 + unchanged_rows(third[fd.id])["projects"] == first[fd.id].counts["projects"]["in"]


def _cut_inside_timestamp(data: bytes, min_row: int = 3) -> tuple[bytes, int]:
    """Cut a CSV after the date of the first row (from `min_row` on) whose last field, 更新时间, is
    `YYYY-MM-DD HH:MM:SS`: the cut value still parses, as midnight. Returns the bytes and that row's index."""
    lines = data.split(b"\n")
    offset = len(lines[0]) + 1
    for i, line in enumerate(lines[1:]):
        last = line.rstrip(b"\r").rsplit(b",", 1)[-1]
        if i >= min_row and re.fullmatch(rb"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", last):
            return data[: offset + len(line.rstrip(b"\r")) - len(last) + 10], i
        offset += len(line) + 1
    raise AssertionError("no row with a full timestamp to cut")


def _cut_inside_character(data: bytes) -> tuple[bytes, int]:
    """Cut a CSV in the middle of the first multi-byte character of its last data row."""
    body = data.rstrip(b"\r\n")
    start = body.rindex(b"\n") + 1
    first = next(i for i in range(start, len(body)) if body[i] >= 0x80)
    return data[: first + 1], body.count(b"\n") - 1


def test_filedrop_cut_off_delivery_keeps_complete_rows_and_quarantines_the_tail(tmp_path):
    registry = _city(tmp_path)
    fd = _by_dialect(registry, "filedrop")
    delivery = newest_delivery(fd)
    intact = tmp_path / "intact"
    shutil.copytree(Path(fd.url), intact)
    control = Layout(tmp_path / "control")
    night(control, registry, AS_OF, only=[replace(fd, url=str(intact))], finish=False)

    cut_projects, p_row = _cut_inside_timestamp((delivery / "项目.csv").read_bytes())
    (delivery / "项目.csv").write_bytes(cut_projects)
    cut_units, u_row = _cut_inside_character((delivery / "单位.csv").read_bytes())
    (delivery / "单位.csv").write_bytes(cut_units)
    layout = Layout(tmp_path / "wh")
    outcomes, result = night(layout, registry, AS_OF, only=[fd])
    outcome = outcomes[fd.id]
    assert_balanced(outcome)

    for table, file, row in (("projects", "项目.csv", p_row), ("units", "单位.csv", u_row)):
        key = TABLES[table].key
        whole = read_delivery_csv(intact / delivery.name / file)
        complete = whole[whole.columns[0]].head(row).to_list()  # the rows before the cut one
        broken = whole[whole.columns[0]][row]
        assert outcome.counts[table]["in"] == row + 1
        got, want = silver(layout, table, fd.id), silver(control, table, fd.id)
        # Every complete row is in silver exactly as the intact delivery put it there…
        assert got.equals(want.filter(pl.col(key).is_in(complete))), table
        assert got.height > 0
        # …the broken one is not (not even with its cut-short value), but in the quarantine, with why.
        assert broken not in got[key].to_list()
        q = pl.read_parquet(layout.quarantine_file(AS_OF, fd.id, table))
        tail = q.filter(pl.col("reason").str.contains("cut off mid-file"))
        assert tail.height == 1 and broken in tail["raw"].item(), (table, q)
        assert delivery.name in tail["reason"].item()
        record = next(r for r in outcome.records if r.stage == "normalize" and r.table_name == table)
        assert "cut off" in record.message
    c2 = result.flags.filter((pl.col("rule_id") == "C2") & pl.col("detail").str.contains("cut off mid-file"))
    assert c2.height == 2 and set(c2["source_id"]) == {fd.id}

    # The next (whole) delivery brings the broken rows: silver is then what the intact one made it.
    shutil.copytree(intact / delivery.name, Path(fd.url) / str(AS_OF))
    healed, _ = night(layout, registry, AS_OF + DAY, only=[fd], finish=False)
    assert_balanced(healed[fd.id])
    for table in ("projects", "units"):
        assert silver(layout, table, fd.id).equals(silver(control, table, fd.id)), table
    assert_one_row_per_key(layout, fd.id)


def test_complete_delivery_is_not_taken_for_cut_off(tmp_path):
    """The cut-off check must not quarantine the last row of a whole file (quotes, CRLF, GB18030)."""
    registry = _city(tmp_path)
    fd = _by_dialect(registry, "filedrop")
    delivery = newest_delivery(fd)
    edit_delivery(delivery, "项目.csv", lambda f: f.with_columns(
        pl.col("项目名称") + pl.lit('，"清风"行动, 第二期')))  # quoted values with doubled quotes
    data = (delivery / "单位.csv").read_bytes()
    (delivery / "单位.csv").write_bytes(data.replace(b"\n", b"\r\n"))
    layout = Layout(tmp_path / "wh")
    outcomes, _ = night(layout, registry, AS_OF, only=[fd], finish=False)
    assert_balanced(outcomes[fd.id])
    q = outcomes[fd.id].quarantine
    assert q.filter(pl.col("reason").str.contains("cut off")).is_empty()
    assert silver(layout, "projects", fd.id)["title"].str.contains('"清风"').all()


# --------------------------------------------------------------------------------------------------
# schema drift
# --------------------------------------------------------------------------------------------------


def test_schema_drift_renamed_added_and_dropped(tmp_path):
    registry = _city(tmp_path)
    src = _by_dialect(registry, "platform")
    others = [s.id for s in registry.sources if s.id != src.id]
    layout = Layout(tmp_path / "wh")
    night(layout, registry, AS_OF, finish=False)
    state = StateStore(layout.state_url)
    wm = {t: state.watermark(src.id, t, before=AS_OF + DAY) for t in ("projects", "persons", "milestones")}
    assert datetime.now(UTC) > wm["projects"] + timedelta(hours=5)
    before = silver_all(layout, [src.id])

    con = sqlite3.connect(sqlite_path(src))
    a, b = old_keys(con, "projects", "project_id", "updated_at", wm["projects"] - 2 * DAY, 2)
    # A changed after the watermark, B 22 h before it (within the overlap): both are pulled tonight.
    con.execute("UPDATE projects SET status = 'suspended', updated_at = ? WHERE project_id = ?",
                (local(wm["projects"] + timedelta(hours=5)), a))
    con.execute("UPDATE projects SET status = 'cancelled', updated_at = ? WHERE project_id = ?",
                (local(wm["projects"] - timedelta(hours=22)), b))
    con.execute("ALTER TABLE projects RENAME COLUMN title TO project_title")  # a required column renamed
    (person,) = old_keys(con, "persons", "person_id", "updated_at", wm["persons"] - 2 * DAY, 1)
    con.execute("ALTER TABLE persons RENAME COLUMN phone TO mobile")  # an optional column renamed
    con.execute("ALTER TABLE persons ADD COLUMN wechat TEXT")  # a column added
    con.execute("UPDATE persons SET name = '改名', wechat = 'w1', updated_at = ? WHERE person_id = ?",
                (local(wm["persons"] + timedelta(hours=1)), person))
    (ms,) = old_keys(con, "milestones", "milestone_id", "updated_at", wm["milestones"] - 2 * DAY, 1)
    con.execute("UPDATE milestones SET due_date = '2027-01-15', updated_at = ? WHERE milestone_id = ?",
                (local(wm["milestones"] + timedelta(hours=1)), ms))
    con.execute("DROP TABLE problems")  # a table gone
    con.commit()

    outcomes, result = night(layout, registry, AS_OF + DAY)
    outcome = outcomes[src.id]
    assert outcome.status == "ok"  # not a crash: the source's other tables are loaded
    for sid in others:
        assert_balanced(outcomes[sid])
    # C1, naming the renamed column and the missing table.
    c1 = result.flags.filter((pl.col("rule_id") == "C1") & (pl.col("source_id") == src.id))
    assert c1.height == 1
    detail = json.loads(c1["detail"].item())
    assert "title" in json.dumps(detail, ensure_ascii=False) and "problems" in detail["tables"], detail
    assert not result.flags.filter((pl.col("rule_id") == "C1") & pl.col("source_id").is_in(others)).height

    # The renamed required column: every row pulled is quarantined, with why; silver keeps the last good.
    q = pl.read_parquet(layout.quarantine_file(AS_OF + DAY, src.id, "projects"))
    assert q.height == outcome.counts["projects"]["in"] == outcome.counts["projects"]["quarantined"] >= 2
    assert q["reason"].str.contains("missing required column\\(s\\): title").all()
    assert any(a in raw for raw in q["raw"]) and any(b in raw for raw in q["raw"])
    assert silver(layout, "projects", src.id).equals(before[("projects", src.id)])
    # …and its watermark does not move past rows silver does not hold.
    assert state.watermark(src.id, "projects", before=AS_OF + 2 * DAY) == wm["projects"]
    # The table gone: its earlier rows stay.
    assert silver(layout, "problems", src.id).equals(before[("problems", src.id)])
    # The added and renamed optional columns: recorded, not a crash; the rows are loaded.
    drift = next(r for r in outcome.records if r.stage == "schema_drift" and r.table_name == "persons")
    assert "extra columns: mobile, wechat" in drift.message and "missing columns: phone" in drift.message
    people = silver(layout, "persons", src.id)
    assert people.filter(pl.col("person_id") == person)["name"].item() == "改名"
    # The renamed optional column says nothing about the person's phone: silver keeps the one it had.
    old_phone = before[("persons", src.id)].filter(pl.col("person_id") == person)["phone"].item()
    assert old_phone and people.filter(pl.col("person_id") == person)["phone"].item() == old_phone
    assert "wechat" not in people.columns and "mobile" not in people.columns
    assert str(silver(layout, "milestones", src.id).filter(pl.col("milestone_id") == ms)["due_date"].item()) \
        == "2027-01-15"
    assert_one_row_per_key(layout, src.id)

    # The source fixed the next day: the rows quarantined on the night of the drift arrive, B included.
    con.execute("ALTER TABLE projects RENAME COLUMN project_title TO title")
    con.commit()
    con.close()
    fixed, _ = night(layout, registry, AS_OF + 2 * DAY, only=[src], finish=False)
    assert_balanced(fixed[src.id])
    projects = silver(layout, "projects", src.id)
    assert projects.filter(pl.col("project_id") == a)["status"].item() == "suspended"
    assert projects.filter(pl.col("project_id") == b)["status"].item() == "cancelled"
    assert projects.height == before[("projects", src.id)].height
    assert_one_row_per_key(layout, src.id)
    state.dispose()


# --------------------------------------------------------------------------------------------------
# clock skew
# --------------------------------------------------------------------------------------------------


def test_clock_skew_rows_behind_the_watermark_within_the_overlap_are_picked_up(tmp_path):
    registry = _city(tmp_path)
    plat, leg = _by_dialect(registry, "platform"), _by_dialect(registry, "legacy")
    layout = Layout(tmp_path / "wh")
    first, _ = night(layout, registry, AS_OF, only=[plat, leg], finish=False)
    state = StateStore(layout.state_url)
    wp = state.watermark(plat.id, "projects", before=AS_OF + DAY)
    wl = state.watermark(leg.id, "projects", before=AS_OF + DAY)
    assert RunSettings().overlap == DAY

    # Platform (ISO text): a project changed, stamped by a lagging clock 3 h before the watermark.
    con = sqlite3.connect(sqlite_path(plat))
    (x,) = old_keys(con, "projects", "project_id", "updated_at", wp - 2 * DAY, 1)
    con.execute("UPDATE projects SET status = 'suspended', updated_at = ? WHERE project_id = ?",
                (local(wp - timedelta(hours=3)), x))
    # A clock running ahead: a milestone stamped 6 h in the future must not push the watermark there.
    (m,) = old_keys(con, "milestones", "milestone_id", "updated_at", wp - 2 * DAY, 1)
    con.execute("UPDATE milestones SET updated_at = ? WHERE milestone_id = ?",
                (local(datetime.now(UTC) + timedelta(hours=6)), m))
    con.commit()
    con.close()
    # Legacy (local time, another of its formats): the same, 3 h behind.
    con = sqlite3.connect(sqlite_path(leg))
    (y,) = old_keys(con, "xm", "xmbh", "gxsj", wl - 2 * DAY, 1)
    t = (wl - timedelta(hours=3)).astimezone(SHANGHAI)
    stamp = f"{t.year}/{t.month}/{t.day} {t.hour}:{t.minute:02d}"  # e.g. 2026/11/28 20:58
    con.execute("UPDATE xm SET zt = '暂停', gxsj = ? WHERE xmbh = ?", (stamp, y))
    con.commit()
    con.close()

    started = datetime.now(UTC)
    second, _ = night(layout, registry, AS_OF + DAY, only=[plat, leg], finish=False)
    for src, key in ((plat, x), (leg, y)):
        assert_balanced(second[src.id])
        assert extract_rows(second[src.id]) < extract_rows(first[src.id]) / 2  # still incremental
        row = silver(layout, "projects", src.id).filter(pl.col("project_id") == key)
        assert row["status"].item() == "suspended", src.id
        assert_one_row_per_key(layout, src.id)
    assert state.watermark(plat.id, "milestones", before=AS_OF + 2 * DAY) <= datetime.now(UTC)
    assert state.watermark(plat.id, "milestones", before=AS_OF + 2 * DAY) >= started - timedelta(minutes=1)
    state.dispose()


# --------------------------------------------------------------------------------------------------
# a PostgreSQL source restarted mid-extract
# --------------------------------------------------------------------------------------------------


class _Events:
    def __init__(self):
        self.events: list[tuple[str, str, str, str]] = []

    def update(self, source_id, stage, status, detail=""):
        self.events.append((source_id, stage, status, detail))


def _pg_restart(server) -> None:
    server._run("pg_ctl", "-D", str(server.data_dir), "-m", "fast", "-w", "-t", "60",
                "-l", str(server.data_dir / "server.log"), "restart")


def test_postgres_restarted_mid_extract_is_retried_without_duplicates(pg_server, tmp_path, monkeypatch):
    registry = _city(tmp_path, seed=8, pg_url=pg_server.url)
    src = _by_dialect(registry, "platform", pg=True)
    layout = Layout(tmp_path / "wh")
    first, _ = night(layout, registry, AS_OF, finish=False)
    assert_balanced(first[src.id])
    projects_before = silver(layout, "projects", src.id)
    wm = StateStore(layout.state_url).watermark(src.id, "projects", before=AS_OF + DAY)

    # At the source: two projects change; one stamped 3 h behind the watermark (a lagging clock).
    eng = sa.create_engine(src.url)
    with eng.begin() as c:
        a, b = c.execute(sa.text("SELECT project_id FROM projects WHERE updated_at < :t ORDER BY project_id LIMIT 2"),
                         {"t": wm - 2 * DAY}).scalars()
        c.execute(sa.text("UPDATE projects SET status = 'suspended', updated_at = :t WHERE project_id = :id"),
                  [{"t": wm + timedelta(hours=1), "id": a}, {"t": wm - timedelta(hours=3), "id": b}])
    eng.dispose()

    # The server restarts (pg_ctl restart -m fast) just as this source's stage reports are queried,
    # after its first tables were pulled.
    database = sa.engine.make_url(src.url).database
    restarts: list[str] = []

    def restart_once(conn, cursor, statement, parameters, context, executemany):
        if not restarts and conn.engine.url.database == database and "FROM stage_reports" in statement:
            restarts.append(statement)
            _pg_restart(pg_server)

    events = _Events()
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", restart_once)
    monkeypatch.setattr(progress, "_reporter", events)
    settings = RunSettings(extract_retries=2, retry_backoff_seconds=0.2, extract_timeout_seconds=120)
    try:
        result = run_nightly(registry.path, layout.root, AS_OF + DAY, max_workers=1, settings=settings)
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", restart_once)
        monkeypatch.setattr(progress, "_reporter", None)
    assert len(restarts) == 1
    retried = [e for e in events.events if e[:3] == (src.id, "extract", "retrying") and "failed" in e[3]]
    assert retried, events.events  # the first attempt failed on the restart…
    outcome = result.outcomes[src.id]
    assert not result.failed_sources  # …and the retry succeeded
    assert_balanced(outcome)
    # Landed once (the failed attempt left nothing), the changes are in, no row twice.
    bronze = sum(pl.read_parquet(p).height for p in layout.bronze.glob(f"{src.id}/*/run={result.run_id}.parquet"))
    assert bronze == extract_rows(outcome) == sum(c["in"] for c in outcome.counts.values()) > 0
    projects = silver(layout, "projects", src.id)
    assert projects.height == projects_before.height
    assert projects.filter(pl.col("project_id").is_in([a, b]))["status"].to_list() == ["suspended", "suspended"]
    assert_one_row_per_key(layout, src.id)


# --------------------------------------------------------------------------------------------------
# SIGKILL mid-publish: the next run completes
# --------------------------------------------------------------------------------------------------


_CHILD = """
import sys
from datetime import date
from pathlib import Path
from flows.registry import load_registry
from flows.state import StateStore
from flows.steps import RunSettings, finish_night, new_run_id, process_source
from warehouse.layout import Layout
registry, layout, as_of = load_registry(Path(sys.argv[1])), Layout(Path(sys.argv[2])), date.fromisoformat(sys.argv[3])
state, run_id = StateStore(layout.state_url), new_run_id(as_of)
outcomes = {s.id: process_source(layout, state, s, as_of, run_id, RunSettings()) for s in registry.sources}
finish_night(layout, state, registry, outcomes, as_of, run_id)
"""


def test_sigkill_mid_publish_then_the_next_run_completes(tmp_path):
    """test_publish.py kills a bare publish and publishes again; here a whole night is killed while it
    publishes, and the next night's run (same date) goes through from extract to marts."""
    registry = _city(tmp_path)
    layout = Layout(tmp_path / "wh")
    ids = [s.id for s in registry.sources]
    night(layout, registry, AS_OF)
    marker = tmp_path / "paused"
    d2 = AS_OF + DAY
    env = {**os.environ, "PYTHONPATH": str(REPO), PAUSE_ENV: "renamed", PAUSE_MARKER_ENV: str(marker)}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(registry.path), str(layout.root), d2.isoformat()],
                            cwd=REPO, env=env)
    sigkill_at_marker(proc, marker, timeout=180)  # the night pauses inside the publish
    assert set(read_manifest(layout)["marts"]["project_health"]) == {AS_OF.isoformat()}  # the old night, whole

    _, result = night(layout, registry, d2)
    assert current_release(layout) == result.release
    manifest = read_manifest(layout)
    for mart in MARTS:
        assert set(manifest["marts"][mart]) == {AS_OF.isoformat(), d2.isoformat()}, mart
        assert pl.read_parquet(layout.mart_partition(mart, d2)).height == result.mart_rows[mart]
    assert result.mart_rows["project_health"] == sum(silver(layout, "projects", sid).height for sid in ids)
    assert not [p for p in layout.releases.iterdir() if p.name.startswith(".tmp-")]
    assert len([p for p in layout.releases.iterdir() if not p.name.startswith(".")]) == 2
    records = StateStore(layout.state_url).run_records()
    assert [r["as_of"] for r in records if r["stage"] == "marts"] == [AS_OF, d2]
    for sid in ids:
        assert_one_row_per_key(layout, sid)


def test_cli_run_on_a_locked_state_db_says_so_in_one_line(tmp_path, monkeypatch):
    """`qingfeng run` on a locked state database: exit 1 and one line naming the database, no traceback."""
    from typer.testing import CliRunner

    from flows.cli import app

    registry = _city(tmp_path)
    layout = Layout(tmp_path / "wh")
    night(layout, registry, AS_OF, finish=False)
    monkeypatch.setenv("QINGFENG_STATE_TIMEOUT_SECONDS", "1")
    with locked(layout.state_db):
        result = CliRunner().invoke(app, ["run", "--sources", str(tmp_path / "city" / "sources.toml"),
                                          "--warehouse", str(layout.root), "--as-of", (AS_OF + DAY).isoformat()])
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 1, output
    assert "cannot run" in output and "state.sqlite" in output and "Traceback" not in output
