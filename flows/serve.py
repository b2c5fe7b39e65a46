"""`qingfeng serve`: the nightly deployment, served by this process on a schedule.

Prefect's ephemeral API runs flows but does not schedule them, so serving needs a Prefect server: the
one at `PREFECT_API_URL` when set, otherwise a local `prefect server start` on a loopback port that
this process starts, waits for, and stops on exit. The server's analytics are off (offline networks).

The deployment: cron `0 2 * * *` in Asia/Shanghai, parameters sources_file and warehouse (absolute)
plus the retry settings; `as_of` is left out, so each run takes today's date in Asia/Shanghai when it
starts. Runs execute in subprocesses of this one (Prefect's runner), one night at a time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flows import steps

DEPLOYMENT = "nightly"
CRON = "0 2 * * *"
TIMEZONE = "Asia/Shanghai"
OFFLINE_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def deployment_parameters(sources_file: Path, warehouse: Path, settings: steps.RunSettings | None = None,
                          overlap_days: float = 1.0, dry_run_mail: Path | None = None) -> dict:
    s = settings or steps.RunSettings()
    params = {
        "sources_file": str(Path(sources_file).resolve()),
        "warehouse": str(Path(warehouse).resolve()),
        "overlap_days": overlap_days,
        "extract_retries": s.extract_retries,
        "retry_backoff_seconds": s.retry_backoff_seconds,
        "extract_timeout_seconds": s.extract_timeout_seconds,
    }
    if dry_run_mail:
        params["dry_run_mail"] = str(Path(dry_run_mail).resolve())
    return params


def build_deployment(sources_file: Path, warehouse: Path, cron: str = CRON, timezone: str = TIMEZONE,
                     settings: steps.RunSettings | None = None, overlap_days: float = 1.0,
                     dry_run_mail: Path | None = None, name: str = DEPLOYMENT):
    """The nightly flow as a RunnerDeployment (served by this process)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from flows.nightly import nightly

    return nightly.to_deployment(
        name=name,
        schedules=[Cron(cron, timezone=timezone)],
        parameters=deployment_parameters(sources_file, warehouse, settings, overlap_days, dry_run_mail),
        description="清风: pull every source, clean, validate, publish the marts, send the alerts.",
        tags=["qingfeng"],
        # By module, not file path: the runs load `flows.nightly` wherever this process was started.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


# --------------------------------------------------------------------------------------------------
# a local Prefect server
# --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as r:  # noqa: S310 — loopback
            return r.status == 200
    except OSError:
        return False


@dataclass
class LocalServer:
    api_url: str
    process: subprocess.Popen
    home: Path
    log: Path

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # its own session: the server and its children
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def start_local_server(home: Path | None = None, port: int | None = None, extra_env: dict | None = None,
                       timeout: float = 120.0) -> LocalServer:
    """`prefect server start` on 127.0.0.1:`port` (a free one by default), its database under `home`
    (PREFECT_HOME; default: the usual ~/.prefect, so the run history survives restarts); returns once
    /api/health answers."""
    port = port or free_port()
    env = {**os.environ, **OFFLINE_ENV, **(extra_env or {})}
    env.pop("PREFECT_API_URL", None)
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    home = Path(env.get("PREFECT_HOME") or Path.home() / ".prefect")
    home.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.mkstemp(prefix="prefect-server-", suffix=".log")[1])
    prefect = Path(sys.executable).with_name("prefect")
    cmd = [str(prefect) if prefect.exists() else sys.executable, *([] if prefect.exists() else ["-m", "prefect"]),
           "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    server = LocalServer(f"http://127.0.0.1:{port}/api", proc, home, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited ({proc.returncode}); see {log}:\n{log.read_text()[-2000:]}")
        if healthy(server.api_url):
            return server
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"prefect server did not answer within {timeout:.0f} s; see {log}")


@contextmanager
def prefect_api(api_url: str | None = None, **server_kwargs) -> Iterator[str]:
    """The Prefect API to use: `api_url`, else $PREFECT_API_URL, else a local server started here (and
    stopped when the block ends). Inside the block PREFECT_API_URL points at it (for this process and
    the flow-run subprocesses it starts)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = api_url or os.environ.get("PREFECT_API_URL") or None
    server = None
    if not url:
        server = start_local_server(**server_kwargs)
        url = server.api_url
    old = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        if old is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = old
        if server is not None:
            server.stop()


def serve(sources_file: Path, warehouse: Path, cron: str = CRON, timezone: str = TIMEZONE,
          settings: steps.RunSettings | None = None, overlap_days: float = 1.0, dry_run_mail: Path | None = None,
          dask: str | None = None, api_url: str | None = None, port: int | None = None) -> None:
    """Serve the nightly deployment until interrupted (Ctrl-C, SIGTERM)."""
    from flows.registry import load_registry

    load_registry(Path(sources_file))  # fail now, not at 02:00, on an unusable registry
    s = settings or steps.RunSettings()
    # The flow-run subprocesses build their task runner from these (flows.nightly.task_runner).
    os.environ["QINGFENG_MAX_WORKERS"] = str(s.max_workers)
    if dask:
        os.environ["QINGFENG_DASK"] = dask
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    with prefect_api(api_url, port=port) as url:
        from prefect import serve as prefect_serve

        print(f"清风: serving deployment qingfeng-nightly/{DEPLOYMENT} ({cron}, {timezone}) on {url}", flush=True)
        deployment = build_deployment(sources_file, warehouse, cron, timezone, s, overlap_days, dry_run_mail)
        prefect_serve(deployment, limit=1)
