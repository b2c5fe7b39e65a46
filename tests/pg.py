"""A real PostgreSQL server for the tests: initdb + pg_ctl in a temp folder, on a free loopback port.

initdb refuses to run as root, so as root the server runs as the `postgres` system user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def find_pg_bin() -> Path | None:
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin"):
        for d in sorted(glob.glob(pattern), reverse=True):
            if Path(d, "initdb").exists():
                return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    bin_dir: Path
    data_dir: Path
    port: int
    as_user: str | None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", "-l", str(self.data_dir / "server.log"),
                  "-o", f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", check=False)

    def discard(self) -> None:
        """Stop the server and remove its files (about 400 MB: a test session each, left in /tmp before)."""
        self.stop()
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def start_server() -> PgServer:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed: run `make test` (it installs it with apt)")
    root = Path(tempfile.mkdtemp(prefix="qingfeng-pg-"))
    data = root / "data"
    as_user = "postgres" if os.geteuid() == 0 else None
    if as_user:
        shutil.chown(root, user=as_user)
    server = PgServer(bin_dir, data, free_port(), as_user)
    server._run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
    server.start()
    return server
