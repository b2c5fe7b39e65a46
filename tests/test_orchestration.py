"""Orchestration: the deployment, faults isolated (a real PostgreSQL stopped mid-run), retries, backfill and
idempotent reruns, run records and `qingfeng status`, progress display."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import time
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa
from rich.console import Console
from typer.testing import CliRunner

from flows import progress
from flows.cli import app
from flows.nightly import FAILED_STATE, run_nightly
from flows.registry import load_registry
from flows.serve import CRON, TIMEZONE, build_deployment
from flows.state import StateStore
from flows.status import status
from flows.steps import RunSettings
from simulator import simulate_city
from warehouse.layout import Layout

AS_OF = date(2026, 11, 29)


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("orch-city")
    simulate_city(out, sources=6, projects_per_source=12, seed=21, as_of=AS_OF)
    return out


# --------------------------------------------------------------------------------------------------
# the deployment
# --------------------------------------------------------------------------------------------------


def test_deployment_cron_timezone_and_parameters(city, tmp_path):
    dep = build_deployment(city / "sources.toml", tmp_path / "wh",
                           settings=RunSettings(extract_retries=5, retry_backoff_seconds=60))
    assert CRON == "0 2 * * *" and TIMEZONE == "Asia/Shanghai"
    assert len(dep.schedules) == 1
    schedule = dep.schedules[0].schedule
    assert schedule.cron == "0 2 * * *"
    assert schedule.timezone == "Asia/Shanghai"
    p = dep.parameters
    assert p["sources_file"] == str((city / "sources.toml").resolve())
    assert p["warehouse"] == str((tmp_path / "wh").resolve())
    assert p["extract_retries"] == 5 and p["retry_backoff_seconds"] == 60
    assert "as_of" not in p  # each run takes today in Asia/Shanghai when it starts
    assert dep.entrypoint == "flows.nightly.nightly"


# --------------------------------------------------------------------------------------------------
# faults isolated: a real PostgreSQL source stops mid-way through the night
# --------------------------------------------------------------------------------------------------


class _StopServerOnce:
    """Progress reporter that stops the PostgreSQL server as soon as the first source is extracted."""

    def __init__(self, server):
        self.server, self.stopped, self.events = server, False, []

    def update(self, source_id, stage, status, detail=""):
        self.events.append((source_id, stage, status, detail))
        if not self.stopped and stage == "extract" and status == "ok":
            self.server.stop()
            self.stopped = True


def test_postgres_stopped_mid_run_is_isolated(pg_server, tmp_path, monkeypatch):
    city = tmp_path / "pgcity"
    simulate_city(city, sources=6, projects_per_source=10, seed=5, as_of=AS_OF, pg_url=pg_server.url)
    registry = load_registry(city / "sources.toml")
    live_pg = [s.id for s in registry.sources if s.url.startswith("postgresql") and "_offline" not in s.url]
    assert len(live_pg) >= 2
    wh = tmp_path / "wh"
    settings = RunSettings(extract_retries=2, retry_backoff_seconds=0.2, extract_timeout_seconds=60)
    first = run_nightly(city / "sources.toml", wh, AS_OF - timedelta(days=1), max_workers=1, settings=settings)
    assert not set(live_pg) & set(first.failed_sources)

    # One worker: the sources are extracted one after another, and the server stops after the first.
    stopper = _StopServerOnce(pg_server)
    monkeypatch.setattr(progress, "_reporter", stopper)
    try:
        state = run_nightly(city / "sources.toml", wh, AS_OF, max_workers=1, settings=settings, return_state=True)
    finally:
        monkeypatch.setattr(progress, "_reporter", None)
        if stopper.stopped:
            pg_server.start()
    assert stopper.stopped
    result = state.result()
    failed_pg = [sid for sid in live_pg if result.outcomes[sid].status == "failed"]
    assert failed_pg, "no PostgreSQL source was caught by the stop"
    # The others completed.
    ok = [sid for sid, o in result.outcomes.items() if o.status == "ok"]
    assert any(not registry.by_id(sid).url.startswith("postgresql") for sid in ok)
    # Retried with backoff before giving up: every attempt was reported.
    for sid in failed_pg:
        assert "after 3 attempts" in result.outcomes[sid].error
        retries = [e for e in stopper.events if e[0] == sid and e[1] == "extract" and e[2] == "retrying"]
        assert len(retries) >= 2, stopper.events
        assert result.outcomes[sid].last_good == AS_OF - timedelta(days=1)

    # The flow run says so, and names them.
    assert state.is_completed() and state.name == FAILED_STATE
    for sid in failed_pg:
        assert sid in state.message

    # C1 and C4 (stale, with when it was last good) for each; its last good data is still in the marts.
    layout = Layout(wh)
    flags = pl.read_parquet(layout.mart_partition("dq_flags", AS_OF))
    health = pl.read_parquet(layout.mart_partition("project_health", AS_OF))
    for sid in failed_pg:
        assert flags.filter((pl.col("rule_id") == "C1") & (pl.col("source_id") == sid)).height == 1
        c4 = flags.filter((pl.col("rule_id") == "C4") & (pl.col("source_id") == sid))
        assert c4.height == 1
        detail = json.loads(c4["detail"][0])
        assert detail["failed_tonight"] is True and detail["last_good"] == str(AS_OF - timedelta(days=1))
        assert health.filter(pl.col("source_id") == sid).height > 0

    # Run records: a failed extract row for each, with the attempts; status names them.
    records = StateStore(layout.state_url).run_records(result.run_id)
    for sid in failed_pg:
        rec = [r for r in records if r["source_id"] == sid and r["stage"] == "extract"]
        assert rec and rec[0]["status"] == "failed" and "attempts" in rec[0]["message"]
    st = status(layout)
    assert set(failed_pg) <= set(st.failing) and set(failed_pg) <= set(st.stale)
    assert st.nights["status"][0] == "completed with failures"


class _Progress:
    """Progress reporter that records what it is told."""

    def __init__(self):
        self.events = []

    def update(self, source_id, stage, status, detail=""):
        self.events.append((source_id, stage, status, detail))


class _Hang:
    """Makes every query to one SQLite file wait (in steps of 50 ms, so that a timeout can break in) until
    `seconds` have passed; records how each wait ended."""

    def __init__(self, path: str, seconds: float):
        self.path, self.seconds, self.waits = path, seconds, []

    def __call__(self, conn, cursor, statement, parameters, context, executemany):
        if not (conn.engine.url.database or "").endswith(self.path):  # (opened as file:<path>, read-only)
            return
        end, how = time.monotonic() + self.seconds, "interrupted"
        try:
            while time.monotonic() < end:
                time.sleep(0.05)
            how = "waited out"
        finally:
            self.waits.append(how)


def test_a_hanging_extraction_is_cut_by_the_timeout_then_retried(city, tmp_path, monkeypatch):
    """Each attempt at a source whose server hangs is cut short by the extraction's timeout, retried after
    the backoff, and the source then fails, naming the timeout and the attempts; the others complete."""
    registry = load_registry(city / "sources.toml")
    hung = next(s for s in registry.sources if s.url.startswith("sqlite") and "_offline" not in s.url)
    hang = _Hang(sa.engine.make_url(hung.url).database, seconds=60)
    events = _Progress()
    monkeypatch.setattr(progress, "_reporter", events)
    settings = RunSettings(extract_retries=1, retry_backoff_seconds=0.1, extract_timeout_seconds=2)
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", hang)
    try:
        result = run_nightly(city / "sources.toml", tmp_path / "wh", AS_OF, max_workers=2, settings=settings)
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", hang)
        monkeypatch.setattr(progress, "_reporter", None)
    assert hang.waits == ["interrupted", "interrupted"]  # one query an attempt, each cut short
    outcome = result.outcomes[hung.id]
    assert outcome.status == "failed" and "TimeoutError" in outcome.error and "after 2 attempts" in outcome.error
    assert [e[2] for e in events.events if e[:2] == (hung.id, "extract")] == ["running", "retrying", "retrying",
                                                                               "failed"]
    assert result.failed_sources == [hung.id] + [s.id for s in registry.sources if "_offline" in s.url]

# --------------------------------------------------------------------------------------------------
# backfill, idempotent reruns, status
# --------------------------------------------------------------------------------------------------


def _marts(layout: Layout, day: date) -> dict[str, pl.DataFrame]:
    out = {}
    for mart in ("dq_flags", "project_health", "person_portrait", "unit_scorecard"):
        df = pl.read_parquet(layout.mart_partition(mart, day))
        out[mart] = df.drop([c for c in df.columns if c in ("run_id", "published_at", "computed_at")])
    return out


def test_backfill_in_order_and_rerun_is_idempotent(city, tmp_path):
    wh, mail = tmp_path / "wh", tmp_path / "mail"
    runner = CliRunner()
    d1, d2 = AS_OF - timedelta(days=2), AS_OF
    res = runner.invoke(app, ["backfill", "--sources", str(city / "sources.toml"), "--warehouse", str(wh),
                              "--from", str(d1), "--to", str(d2), "--max-workers", "3", "--dry-run-mail", str(mail)])
    assert res.exit_code == 0, res.output
    layout = Layout(wh)
    records = StateStore(layout.state_url).run_records()
    ran = []
    for r in records:  # in finishing order
        if r["source_id"] == "*" and r["stage"] == "marts":
            ran.append(r["as_of"])
    assert ran == [d1, d1 + timedelta(days=1), d2]
    before = _marts(layout, d2)
    emails = sorted(p.name for p in mail.rglob("*.eml"))
    assert emails

    res = runner.invoke(app, ["backfill", "--sources", str(city / "sources.toml"), "--warehouse", str(wh),
                              "--from", str(d2), "--to", str(d2), "--max-workers", "3", "--dry-run-mail", str(mail)])
    assert res.exit_code == 0, res.output
    after = _marts(layout, d2)
    for mart, df in before.items():
        assert df.equals(after[mart]), mart
    assert sorted(p.name for p in mail.rglob("*.eml")) == emails  # no email twice
    assert _marts(layout, d1)["project_health"].height > 0  # the earlier dates stay

    # status: the last runs, and the failing source (the simulated city has an unreachable one).
    res = runner.invoke(app, ["status", "--warehouse", str(wh)])
    assert res.exit_code == 1, res.output
    st = status(layout)
    assert st.nights.height == 4 and st.failing
    for sid in st.failing:
        assert sid in res.output
    assert "completed with failures" in res.output


def test_markdown_artifact_and_state_name_in_flow(city, tmp_path):
    from flows.nightly import summary_markdown

    state = run_nightly(city / "sources.toml", tmp_path / "wh", AS_OF, max_workers=3, return_state=True)
    result = state.result()
    assert result.failed_sources  # the unreachable source
    assert state.name == FAILED_STATE and all(s in state.message for s in result.failed_sources)
    md = summary_markdown(result)
    assert FAILED_STATE in md and all(s in md for s in result.failed_sources)


# --------------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------------


def test_progress_plain_lines_when_not_a_terminal(capsys):
    with progress.showing(["a", "b"], Console(file=io.StringIO(), force_terminal=False)):
        progress.report("a", "extract", "running")
        progress.report("a", "extract", "ok", "10 rows")
        progress.report("b", "extract", "failed", "server down")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2  # "running" is not worth a log line
    assert "a" in lines[0] and "extract" in lines[0] and "ok" in lines[0] and "10 rows" in lines[0]
    assert "failed" in lines[1] and "server down" in lines[1]
    progress.report("a", "bronze", "ok")  # nobody listening: nothing happens


def test_progress_rich_display_in_a_terminal():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    with progress.showing(["alpha", "beta"], console) as rep:
        for stage in progress.STAGES:
            progress.report("alpha", stage, "ok")
        progress.report("beta", "extract", "failed", "server down")
        progress.report("*", "rules-and-marts", "ok")
        tasks = {t.description: t for t in rep.progress.tasks}
    assert tasks["alpha"].completed == 3 and tasks["beta"].completed == 3
    assert tasks["night"].completed == 3
    out = buf.getvalue()
    assert "alpha" in out and "beta" in out and "server down" in out


# --------------------------------------------------------------------------------------------------
# start-up: Great Expectations loads while the sources are in flight
# --------------------------------------------------------------------------------------------------


def _python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_the_flow_module_leaves_great_expectations_for_the_night_to_load():
    # (in a process of its own: this one has long imported it)
    out = _python("import sys, flows.nightly, flows.cli\n"
                  "print(sorted(m for m in sys.modules if m.split('.')[0] == 'great_expectations'"
                  " or m.startswith('expectations.rules.')))")
    assert out.strip() == "[]"


def test_load_validation_imports_the_rules_and_freezes_the_modules_once():
    out = _python(textwrap.dedent("""
        import gc, sys, weakref
        from flows import steps
        assert gc.get_freeze_count() == 0
        steps.load_validation()
        from expectations.rules import rule_modules
        assert "great_expectations" in sys.modules
        assert all(m.__name__ in sys.modules for m in rule_modules())
        frozen = gc.get_freeze_count()
        steps.load_validation()  # a second night in the same process freezes nothing more
        again = gc.get_freeze_count()

        class Node:
            pass

        node = Node()
        node.cycle = node  # made after the freeze: a collection still reclaims it
        ref = weakref.ref(node)
        del node
        gc.collect()
        print(frozen, again, ref() is None)
    """))
    frozen, again, reclaimed = out.split()
    assert int(frozen) > 100_000 and int(again) == int(frozen)
    assert reclaimed == "True"
