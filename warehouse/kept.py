"""What a rule keeps between nights: per-entity results that are costly to make and follow from the
entity's own data and the rule's settings alone, so that the next night remakes only those whose data
changed.

    <warehouse>/kept/<rule_id>/<name>.parquet

Each rule owns the names and the columns of its files, and stores with every row what the row was made
from (a hash of the input, the settings), so a row is reused only where the same input would make it
again. Deleting the folder is always safe: the rule then remakes everything, and its flags are the
same. A file that cannot be read is treated as absent (and said so in the log).
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from warehouse.files import write_parquet

log = logging.getLogger("qingfeng.kept")


class KeptStore:
    def __init__(self, root: Path):
        self.root = root

    def file(self, rule_id: str, name: str) -> Path:
        return self.root / rule_id / f"{name}.parquet"

    def read(self, rule_id: str, name: str) -> pl.DataFrame | None:
        path = self.file(rule_id, name)
        if not path.exists():
            return None
        try:
            return pl.read_parquet(path)
        except Exception as e:  # noqa: BLE001 — kept results are only ever a shortcut
            log.warning("kept results %s cannot be read (%s): they will be made again", path, e)
            return None

    def write(self, rule_id: str, name: str, frame: pl.DataFrame) -> None:
        """Replaces the file whole."""
        write_parquet(frame, self.file(rule_id, name))
