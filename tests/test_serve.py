"""`qingfeng serve` for real: a Prefect server, the deployment served with a cron a minute ahead, and the
scheduled run completing (about two minutes: the cron has minute resolution)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx

from simulator import simulate_city
from warehouse.layout import Layout

SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_local_server_is_offline_and_healthy(prefect_server):
    r = httpx.get(f"{prefect_server.api_url}/health", timeout=5)
    assert r.status_code == 200
    settings = httpx.get(f"{prefect_server.api_url}/admin/settings", timeout=5).json()
    assert settings["server"]["analytics_enabled"] is False


def _flow_runs(api_url: str) -> list[dict]:
    r = httpx.post(f"{api_url}/flow_runs/filter", json={"sort": "EXPECTED_START_TIME_ASC"}, timeout=10)
    r.raise_for_status()
    return r.json()


def test_served_schedule_fires_and_the_run_completes(prefect_server, tmp_path):
    today = datetime.now(SHANGHAI).date()
    city = tmp_path / "city"
    simulate_city(city, sources=4, projects_per_source=8, seed=3, as_of=today)
    wh = tmp_path / "wh"
    # The next whole minute at least 40 s away (the deployment must be registered before it).
    fire = (datetime.now(SHANGHAI) + timedelta(seconds=40)).replace(second=0, microsecond=0) + timedelta(minutes=1)
    cron = f"{fire.minute} {fire.hour} * * *"
    env = {**os.environ, "PREFECT_API_URL": prefect_server.api_url, "PREFECT_RUNNER_POLL_FREQUENCY": "2",
           "QINGFENG_RETRY_BACKOFF_SECONDS": "0.2", "PREFECT_LOGGING_LEVEL": "INFO"}
    log = (tmp_path / "serve.log").open("wb")
    qingfeng = Path(sys.executable).with_name("qingfeng")
    proc = subprocess.Popen(
        [str(qingfeng), "serve", "--sources", str(city / "sources.toml"), "--warehouse", str(wh),
         "--cron", cron, "--timezone", "Asia/Shanghai", "--max-workers", "2", "--extract-retries", "1",
         "--retry-backoff", "0.2"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + (fire - datetime.now(SHANGHAI)).total_seconds() + 180
        finished = None
        while time.monotonic() < deadline and finished is None:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            for run in _flow_runs(prefect_server.api_url):
                if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED") and run.get("deployment_id"):
                    finished = run
            time.sleep(3)
        assert finished is not None, (tmp_path / "serve.log").read_text()[-4000:]
        assert finished["state_type"] == "COMPLETED", finished["state"]
        # The simulated city has no unreachable source at this size, or it has: either way it completed.
        assert finished["state_name"] in ("Completed", "Completed with failures")
        expected = datetime.fromisoformat(finished["expected_start_time"]).astimezone(SHANGHAI)
        assert (expected.hour, expected.minute) == (fire.hour, fire.minute)
        assert "as_of" not in finished["parameters"]
        # as_of defaulted to today in Asia/Shanghai when the run started.
        started = datetime.fromisoformat(finished["start_time"]).astimezone(SHANGHAI).date()
        assert Layout(wh).mart_partition("project_health", started).is_dir()
        arts = httpx.post(f"{prefect_server.api_url}/artifacts/filter",
                          json={"artifacts": {"key": {"any_": ["qingfeng-night"]}}}, timeout=10).json()
        assert arts and "清风 nightly run" in arts[0]["data"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
