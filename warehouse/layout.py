"""Where everything lives in a warehouse folder. One place, so no other module builds paths by hand.

<warehouse>/
  bronze/<source_id>/<table>/run=<run_id>.parquet      what was pulled, as pulled (all text)
  silver/<table>/source_id=<id>/data.parquet           current state of each canonical table
  quarantine/as_of=D/source_id=<id>/<table>.parquet    rows that could not enter silver, with why
  marts -> .releases/<release>                         symlink swapped atomically on publish
  .releases/<release>/<mart>/as_of=D/data.parquet
  .releases/<release>/_manifest.json                   as_of dates and row counts per mart, release id
  docs/as_of=D/                                        Great Expectations Data Docs
  kept/<rule_id>/<name>.parquet                        what a rule keeps between nights (safe to delete)
  state.sqlite                                         the pipeline's own state (watermarks, runs, outbox)
  qingfeng.duckdb                                      analysts' views over the marts
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

DEFAULT_WAREHOUSE_ENV = "QINGFENG_WAREHOUSE"


def project_data_dir() -> Path:
    """The project's data directory: `$QINGFENG_DATA_DIR`, else `data/` in the source checkout (the
    folder `make demo` fills), else `~/.local/share/qingfeng` for an installed copy."""
    env = os.environ.get("QINGFENG_DATA_DIR")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").exists():
        return checkout / "data"
    return Path.home() / ".local" / "share" / "qingfeng"


def default_warehouse() -> Path:
    env = os.environ.get(DEFAULT_WAREHOUSE_ENV)
    return Path(env) if env else project_data_dir() / "warehouse"


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def bronze(self) -> Path:
        return self.root / "bronze"

    def bronze_file(self, source_id: str, table: str, run_id: str) -> Path:
        return self.bronze / source_id / table / f"run={run_id}.parquet"

    @property
    def silver(self) -> Path:
        return self.root / "silver"

    def silver_file(self, table: str, source_id: str) -> Path:
        return self.silver / table / f"source_id={source_id}" / "data.parquet"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    def quarantine_file(self, as_of: date, source_id: str, table: str) -> Path:
        return self.quarantine / f"as_of={as_of.isoformat()}" / f"source_id={source_id}" / f"{table}.parquet"

    @property
    def marts(self) -> Path:
        return self.root / "marts"

    @property
    def releases(self) -> Path:
        return self.root / ".releases"

    def mart_partition(self, mart: str, as_of: date) -> Path:
        return self.marts / mart / f"as_of={as_of.isoformat()}"

    def mart_dir(self, mart: str) -> Path:
        """A mart's dataset folder, through the `marts` symlink (follows publishes)."""
        return self.marts / mart

    def mart_glob(self, mart: str) -> str:
        """Glob over every partition file of a mart, through the `marts` symlink (for DuckDB views)."""
        return str(self.marts.absolute() / mart / "as_of=*" / "*.parquet")

    def release(self, release_id: str) -> Path:
        return self.releases / release_id

    def release_partition(self, release: Path, mart: str, as_of: date) -> Path:
        return release / mart / f"as_of={as_of.isoformat()}"

    @staticmethod
    def manifest_file(release: Path) -> Path:
        return release / "_manifest.json"

    @property
    def publish_lock(self) -> Path:
        return self.releases / ".lock"

    def docs(self, as_of: date) -> Path:
        return self.root / "docs" / f"as_of={as_of.isoformat()}"

    @property
    def kept(self) -> Path:
        return self.root / "kept"

    @property
    def state_db(self) -> Path:
        return self.root / "state.sqlite"

    @property
    def state_url(self) -> str:
        return os.environ.get("QINGFENG_STATE_URL") or f"sqlite:///{self.state_db}"

    @property
    def duckdb_file(self) -> Path:
        return self.root / "qingfeng.duckdb"
