from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
# Prefect's ephemeral API keeps its database under PREFECT_HOME: one of its own per test session.
# Prefect logs "stopping temporary server" at exit, after pytest has closed the streams it captured.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="qingfeng-prefect-")
# Removed at exit, after Prefect has stopped its temporary server (exit handlers run last registered first,
# and Prefect registers its own once imported, after this).
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], True)
# A source server that cannot be read is retried (flows.steps.RunSettings): quickly, in tests.
os.environ.setdefault("QINGFENG_RETRY_BACKOFF_SECONDS", "0.2")


@pytest.fixture(scope="session")
def pg_server():
    from tests.pg import start_server

    server = start_server()
    try:
        yield server
    finally:
        server.discard()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real `prefect server` (what scheduling and Dask need; the ephemeral API is not enough), its
    scheduler looking for due runs every 5 s instead of every minute."""
    from flows.serve import start_local_server

    server = start_local_server(home=tmp_path_factory.mktemp("prefect-server-home"),
                                extra_env={"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"})
    try:
        yield server
    finally:
        server.stop()


def pytest_addoption(parser):
    parser.addoption(
        "--slow", action="store_true", default=False,
        help="longer property-based runs (tests/test_fuzz.py: 200,000 generated rows per table and dialect, "
             "more Hypothesis examples)",
    )


@pytest.fixture(scope="session")
def slow(request) -> bool:
    """True under `pytest --slow`: property-based tests generate more rows and more examples."""
    return bool(request.config.getoption("--slow"))
