"""`qingfeng run` end to end with alerts: --dry-run-mail writes .eml files through the outbox (a rerun
writes nothing new), and a run with no SMTP host says so once and keeps the alerts pending."""

from __future__ import annotations

import email
from datetime import date
from email import policy

import pytest
from typer.testing import CliRunner

from flows.cli import app
from simulator import simulate_city
from warehouse.analysts import run_query
from warehouse.layout import Layout

AS_OF = date(2026, 11, 29)


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    out = tmp_path_factory.mktemp("alerts-city")
    simulate_city(out, sources=2, projects_per_source=12, seed=5, as_of=AS_OF)
    return out


def run(city, warehouse, *extra):
    result = CliRunner().invoke(app, ["run", "--sources", str(city / "sources.toml"), "--warehouse", str(warehouse),
                                      "--as-of", AS_OF.isoformat(), *extra])
    assert result.exit_code == 0, result.output
    return result.output


def test_dry_run_mail_writes_each_email_once(city, tmp_path, monkeypatch):
    monkeypatch.delenv("QINGFENG_SMTP_HOST", raising=False)
    out = tmp_path / "outbox"
    first = run(city, tmp_path / "wh", "--dry-run-mail", str(out))
    files = sorted(out.glob("*.eml"))
    assert files and f"mail via eml:{out}" in first
    assert any("-digest-" in f.name for f in files) and any("-data_quality-" in f.name for f in files)
    msg = email.message_from_bytes(files[0].read_bytes(), policy=policy.default)
    assert msg["From"].addresses[0].addr_spec == "qingfeng@jw.example.cn"
    second = run(city, tmp_path / "wh", "--dry-run-mail", str(out))
    assert sorted(out.glob("*.eml")) == files
    assert "0 raised tonight, 0 sent" in second
    alerts = run_query(Layout(tmp_path / "wh"), "SELECT kind, status, sent_at, raised_at FROM alerts")
    assert alerts.height >= len(files)
    assert alerts["sent_at"].is_not_null().all() and set(alerts["status"]) == {"sent"}


def test_no_smtp_host_is_said_once_and_alerts_stay_pending(city, tmp_path, monkeypatch):
    monkeypatch.delenv("QINGFENG_SMTP_HOST", raising=False)
    output = run(city, tmp_path / "wh")
    assert output.count("no SMTP host set") == 1
    alerts = run_query(Layout(tmp_path / "wh"), "SELECT status, sent_at FROM alerts")
    assert alerts.height > 0 and alerts["sent_at"].is_null().all() and set(alerts["status"]) == {"pending"}
