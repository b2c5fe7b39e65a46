from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
# Prefect's ephemeral API keeps its database under PREFECT_HOME: one of its own per test session.
# Prefect logs "stopping temporary server" at exit, after pytest has closed the streams it captured.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="qingfeng-prefect-")


@pytest.fixture(scope="session")
def pg_server():
    from tests.pg import start_server

    server = start_server()
    try:
        yield server
    finally:
        server.stop()
