"""Atomic publish: partitions replaced as one unit, readers (polars, pyarrow, duckdb) agree, kills are safe."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pytest

from expectations.catalog import FLAG_SCHEMA
from tests.test_marts import make_ctx
from warehouse.analysts import refresh_views, run_query
from warehouse.layout import Layout
from warehouse.marts import MartInputs, build_all
from warehouse.publish import (
    PAUSE_ENV,
    PAUSE_MARKER_ENV,
    PYARROW_PARTITIONING,
    PublishError,
    current_release,
    partitions,
    publish,
    read_manifest,
    read_mart,
)

D1, D2, D3 = date(2026, 11, 26), date(2026, 11, 27), date(2026, 11, 28)
MARTS = ("dq_flags", "alerts", "project_health")
REPO = Path(__file__).resolve().parents[1]


def sample_marts(as_of: date, tag: str, n: int = 3) -> dict[str, pl.DataFrame]:
    """Small frames per mart whose `tag` column says which publish wrote them."""
    out = {}
    for i, mart in enumerate(MARTS):
        rows = n + i
        j = pl.int_range(0, rows, dtype=pl.Int64)
        out[mart] = pl.select(
            source_id=pl.format("s{}", j % 2),
            entity_id=pl.format("{}-{}", pl.lit(mart), j.cast(pl.String).str.zfill(7)),
            tag=pl.lit(tag),
            value=j,
            as_of=pl.lit(as_of),
        )
    return out


def expected(*publishes: tuple[date, str, int]) -> dict[str, pl.DataFrame]:
    """What the marts should hold after these publishes (a later one replaces an earlier one's date)."""
    parts: dict[tuple[str, date], pl.DataFrame] = {}
    for as_of, tag, n in publishes:
        for mart, df in sample_marts(as_of, tag, n).items():
            parts[(mart, as_of)] = df.select("as_of", "source_id", "entity_id", "tag", "value")
    return {
        mart: pl.concat([df for (m, _d), df in sorted(parts.items(), key=lambda kv: (kv[0][0], kv[0][1])) if m == mart])
        .sort("as_of", "source_id", "entity_id")
        for mart in MARTS
    }


def _norm(df: pl.DataFrame) -> pl.DataFrame:
    return df.select("as_of", "source_id", "entity_id", "tag", "value").sort("as_of", "source_id", "entity_id")


def read_polars(layout: Layout) -> dict[str, pl.DataFrame]:
    return {
        m: _norm(pl.scan_parquet(str(layout.marts / m / "**" / "*.parquet"), hive_partitioning=True).collect())
        for m in MARTS
    }


def read_pyarrow(layout: Layout) -> dict[str, pl.DataFrame]:
    return {
        m: _norm(pl.from_arrow(ds.dataset(layout.marts / m, format="parquet", partitioning=PYARROW_PARTITIONING).to_table()))
        for m in MARTS
    }


def read_duckdb(layout: Layout) -> dict[str, pl.DataFrame]:
    con = duckdb.connect()
    try:
        return {
            m: _norm(con.sql(f"SELECT * FROM read_parquet('{layout.mart_glob(m)}', hive_partitioning = true)").pl())
            for m in MARTS
        }
    finally:
        con.close()


def assert_marts(got: dict[str, pl.DataFrame], want: dict[str, pl.DataFrame]) -> None:
    assert set(got) == set(want)
    for m in want:
        assert got[m].equals(want[m]), (m, got[m], want[m])


def test_publish_two_dates_then_rerun(tmp_path: Path):
    layout = Layout(tmp_path / "wh")
    r1 = publish(layout, D1, sample_marts(D1, "a"))
    assert layout.marts.is_symlink() and not os.readlink(layout.marts).startswith("/")  # relative: folder can move
    r2 = publish(layout, D2, sample_marts(D2, "b", 5))
    want = expected((D1, "a", 3), (D2, "b", 5))
    for reader in (read_polars, read_pyarrow, read_duckdb):
        assert_marts(reader(layout), want)

    # D1 was carried over by hard link, not copied
    f1 = layout.release_partition(r1, "alerts", D1) / "data.parquet"
    f2 = layout.release_partition(r2, "alerts", D1) / "data.parquet"
    assert os.stat(f1).st_ino == os.stat(f2).st_ino

    r3 = publish(layout, D1, sample_marts(D1, "c", 2))  # rerun of D1 replaces it
    want = expected((D1, "a", 3), (D2, "b", 5), (D1, "c", 2))
    for reader in (read_polars, read_pyarrow, read_duckdb):
        assert_marts(reader(layout), want)
    assert current_release(layout) == r3
    # GC: the current release and the one before it stay, older ones go
    assert sorted(p.name for p in layout.releases.iterdir() if not p.name.startswith(".")) == sorted([r2.name, r3.name])
    assert not r1.exists()

    manifest = read_manifest(layout)
    assert manifest["release_id"] == r3.name and manifest["previous_release"] == r2.name
    assert manifest["published_as_of"] == D1.isoformat()
    assert manifest["marts"]["alerts"] == {D1.isoformat(): 3, D2.isoformat(): 6}

    assert partitions(layout, "dq_flags") == [D1, D2]
    assert _norm(read_mart(layout, "dq_flags")).equals(want["dq_flags"].filter(pl.col("as_of") == D2))
    assert read_mart(layout, "dq_flags", D1)["tag"].unique().to_list() == ["c"]
    with pytest.raises(FileNotFoundError):
        read_mart(layout, "dq_flags", D3)


def test_as_of_in_file_and_partition(tmp_path: Path):
    """The file carries as_of as its first column; the hive folder repeats it; readers agree on it."""
    layout = Layout(tmp_path / "wh")
    publish(layout, D1, {"alerts": sample_marts(D1, "a")["alerts"].drop("as_of")})
    df = read_mart(layout, "alerts")
    assert df.columns[0] == "as_of" and df["as_of"].dtype == pl.Date() and (df["as_of"] == D1).all()
    lazy = pl.scan_parquet(str(layout.marts / "alerts" / "**" / "*.parquet"), hive_partitioning=True)
    assert lazy.collect_schema()["as_of"] == pl.Date()
    con = duckdb.connect()
    described = con.sql(f"DESCRIBE SELECT * FROM read_parquet('{layout.mart_glob('alerts')}', hive_partitioning=true)")
    types = {r[0]: r[1] for r in described.fetchall()}
    assert types["as_of"] == "DATE" and list(types) == ["as_of", "source_id", "entity_id", "tag", "value"]
    with pytest.raises(ValueError):
        publish(layout, D2, {"alerts": sample_marts(D1, "a")["alerts"]})  # as_of column disagrees


def test_real_marts_roundtrip(tmp_path: Path):
    layout = Layout(tmp_path / "wh")
    ctx = make_ctx()
    marts = build_all(ctx)
    publish(layout, ctx.as_of, marts)
    for name, df in marts.items():
        back = read_mart(layout, name)
        assert back.equals(df), name
    assert set(read_manifest(layout)["marts"]) == set(marts)
    refresh_views(layout)
    assert run_query(layout, "SELECT count(*) FROM alerts").item() == marts["alerts"].height
    tags = run_query(layout, "SELECT tags FROM person_portrait WHERE person_id = 'A' AND source_id = 's1'").item()
    assert list(tags) == ["数据造假风险"]


def test_empty_marts_roundtrip(tmp_path: Path):
    layout = Layout(tmp_path / "wh")
    ctx = MartInputs(as_of=D1, silver={}, flags=pl.DataFrame(schema=FLAG_SCHEMA))
    marts = build_all(ctx)
    publish(layout, D1, marts)
    for name, df in marts.items():
        back = read_mart(layout, name)
        assert back.height == 0 and back.schema == df.schema, name
    refresh_views(layout)
    assert run_query(layout, "SELECT count(*) FROM unit_scorecard_history").item() == 0


def test_marts_as_real_directory_fails(tmp_path: Path):
    layout = Layout(tmp_path / "wh")
    (layout.marts / "alerts").mkdir(parents=True)
    with pytest.raises(PublishError, match="real directory"):
        publish(layout, D1, sample_marts(D1, "a"))
    assert not layout.releases.exists() or not any(layout.releases.iterdir())


def test_analyst_views_follow_publishes(tmp_path: Path):
    layout = Layout(tmp_path / "wh")
    publish(layout, D1, sample_marts(D1, "a"))
    publish(layout, D2, sample_marts(D2, "b", 4))
    created = refresh_views(layout)
    assert set(created) >= {"alerts", "alerts_history", "dq_flags", "project_health_history", "rules"}

    latest = run_query(layout, "SELECT as_of, count(*) AS n FROM alerts GROUP BY ALL")
    assert latest.rows() == [(D2, 5)]
    hist = run_query(layout, "SELECT as_of, count(*) AS n FROM alerts_history GROUP BY ALL ORDER BY as_of")
    assert hist.rows() == [(D1, 4), (D2, 5)]
    assert run_query(layout, "SELECT count(*) FROM rules").item() == 20

    publish(layout, D3, sample_marts(D3, "c", 1))  # no refresh: the views name the symlink
    assert run_query(layout, "SELECT as_of, count(*) FROM alerts GROUP BY ALL").rows() == [(D3, 2)]
    assert run_query(layout, "SELECT count(DISTINCT as_of) FROM dq_flags_history").item() == 3

    # the views reference <warehouse>/marts, never a release folder
    con = duckdb.connect(str(layout.duckdb_file), read_only=True)
    sqls = [r[0] for r in con.sql("SELECT sql FROM duckdb_views() WHERE NOT internal").fetchall()]
    con.close()
    assert sqls and all(".releases" not in s for s in sqls)
    history_sqls = [s for s in sqls if "read_parquet" in s]
    assert len(history_sqls) == len(MARTS) and all(str(layout.marts.absolute()) in s for s in history_sqls)


# ---------------------------------------------------------------------------------------------- kills

_CHILD = """
import sys
import time
from datetime import date
from pathlib import Path
from tests.test_publish import sample_marts
from warehouse.layout import Layout
from warehouse.publish import publish
root, as_of, tag, n = sys.argv[1:]
marts = sample_marts(date.fromisoformat(as_of), tag, int(n))
print("go", flush=True)
t0 = time.perf_counter()
publish(Layout(Path(root)), date.fromisoformat(as_of), marts)
print("done", time.perf_counter() - t0, flush=True)
"""


def _spawn(layout: Layout, as_of: date, tag: str, n: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    code = _CHILD
    return subprocess.Popen(
        [sys.executable, "-c", code, str(layout.root), as_of.isoformat(), tag, str(n)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.PIPE,
        text=True,
    )


def _assert_consistent(layout: Layout, *options: dict[str, pl.DataFrame]) -> int:
    """Every reader sees one of the whole states in `options`; returns which."""
    seen = set()
    for reader in (read_polars, read_pyarrow, read_duckdb):
        got = reader(layout)
        matches = [i for i, want in enumerate(options) if all(got[m].equals(want[m]) for m in MARTS)]
        assert matches, f"{reader.__name__} saw a mixed state: {got}"
        seen.add(matches[0])
    assert len(seen) == 1
    return seen.pop()


def sigkill_at_marker(proc: subprocess.Popen, marker: Path, timeout: float) -> None:
    """SIGKILL `proc` the moment it creates `marker` (the pause point it was told to stop at)."""
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert proc.poll() is None, f"child exited early with {proc.returncode}"
            assert time.monotonic() < deadline, "child never reached the pause point"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("stage", ["linked", "file", "written", "renamed", "swapped"])
def test_sigkill_mid_publish_leaves_a_whole_release(tmp_path: Path, stage: str):
    layout = Layout(tmp_path / "wh")
    publish(layout, D1, sample_marts(D1, "a"))
    publish(layout, D2, sample_marts(D2, "b"))
    before = expected((D1, "a", 3), (D2, "b", 3))
    after = expected((D1, "a", 3), (D2, "b", 3), (D2, "k", 7))

    marker = tmp_path / "paused"
    proc = _spawn(layout, D2, "k", 7, {PAUSE_ENV: stage, PAUSE_MARKER_ENV: str(marker)})
    sigkill_at_marker(proc, marker, timeout=60)

    state = _assert_consistent(layout, before, after)
    assert state == (1 if stage == "swapped" else 0)
    # the killed publish left debris: a staging dir before the rename, an unused release after it
    staging = [p for p in layout.releases.iterdir() if p.name.startswith(".tmp-")]
    releases = [p for p in layout.releases.iterdir() if not p.name.startswith(".")]
    assert len(staging) == (1 if stage in ("linked", "file", "written") else 0)
    assert len(releases) == (3 if stage in ("renamed", "swapped") else 2)

    publish(layout, D3, sample_marts(D3, "c"))  # the next publish works and cleans up
    final = expected((D1, "a", 3), (D2, "b", 3), *([(D2, "k", 7)] if stage == "swapped" else []), (D3, "c", 3))
    _assert_consistent(layout, final)
    assert not [p for p in layout.releases.iterdir() if p.name.startswith(".tmp-")]
    assert not list(layout.root.glob(".marts.tmp-*"))
    assert len([p for p in layout.releases.iterdir() if not p.name.startswith(".")]) == 2


def test_sigkill_at_random_moments(tmp_path: Path):
    """Kill real publishes (no hook) at random moments while they run; the state is always whole."""
    rng = random.Random(20261129)
    n = 50_000
    layout = Layout(tmp_path / "wh")
    publish(layout, D1, sample_marts(D1, "a", n))
    history: list[tuple[date, str, int]] = [(D1, "a", n)]
    proc = _spawn(layout, D2, "warmup", n)
    out, _ = proc.communicate(timeout=60)
    duration = float(out.split()[-1])  # how long one publish takes, in the child
    history.append((D2, "warmup", n))
    outcomes = []
    for i in range(5):
        tag = f"r{i}"
        proc = _spawn(layout, D2, tag, n + i)
        assert proc.stdout.readline().strip() == "go"
        time.sleep(rng.uniform(0.0, 1.1) * duration)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        old, new = expected(*history), expected(*history, (D2, tag, n + i))
        state = _assert_consistent(layout, old, new)
        outcomes.append((proc.returncode, state))
        if state == 1:
            history.append((D2, tag, n + i))
    print("publish takes", duration, "outcomes (returncode, 0=old/1=new):", outcomes)
    assert any(rc == -signal.SIGKILL for rc, _state in outcomes), outcomes  # some kills did land mid-publish
    publish(layout, D3, sample_marts(D3, "z"))
    _assert_consistent(layout, expected(*history, (D3, "z", 3)))
    assert not [p for p in layout.releases.iterdir() if p.name.startswith(".tmp-")]
    manifest = json.loads(Layout.manifest_file(current_release(layout)).read_text())
    assert set(manifest["marts"]["alerts"]) == {D1.isoformat(), D2.isoformat(), D3.isoformat()}
