"""Atomic publish of the marts: partition as_of=D of every mart is replaced as ONE unit.

Layout (see `warehouse.layout`):

    <warehouse>/marts -> .releases/<release_id>          relative symlink, swapped atomically
    <warehouse>/.releases/<release_id>/<mart>/as_of=YYYY-MM-DD/data.parquet
    <warehouse>/.releases/<release_id>/_manifest.json

How a publish goes (one publisher at a time: an flock on `.releases/.lock`):

1. Build the new release in a staging dir `.releases/.tmp-<release_id>`: hard-link every file of the
   current release (no data copied; a copy only where the filesystem refuses hard links), except the
   as_of=D partitions of the marts being published; write those as `data.parquet` (zstd, statistics,
   sorted by the mart's keys; written to a temp name, fsynced, renamed); write `_manifest.json`; fsync
   every directory of the staging tree.
2. Rename the staging dir to `.releases/<release_id>` (atomic), fsync `.releases`.
3. Point a temp symlink at it and `os.replace` it onto `marts` (atomic), fsync the warehouse folder.
4. Garbage-collect: keep the new release and the one it replaced (a reader that resolved the old
   symlink a moment ago keeps working); remove every other release, and any staging dir or temp
   symlink left by a publish that was killed.

A kill at any point leaves `marts` pointing at a whole release (the old one before step 3, the new
one after it); the leftovers are removed by the next publish. Files are never modified in place (they
are shared by hard links between releases), only replaced.

Readers that want one consistent snapshot resolve the symlink once and read under the release (that is
what `read_mart` does). Readers that go through the `marts` path (DuckDB views, a glob) follow publishes;
a read that straddles a swap may see one release's listing and the next release's files — same paths,
both whole.

`as_of` column: every file carries `as_of` as its first column, and the folder repeats it
(`as_of=YYYY-MM-DD`). Tested: Polars (`scan_parquet(..., hive_partitioning=True)`) and DuckDB
(`read_parquet(..., hive_partitioning=true)`) read this without conflict, the value is the same. PyArrow's
`dataset(..., partitioning="hive")` infers the folder's key as a string and refuses to merge it with the
file's date32 column; give it the partition schema (`PYARROW_PARTITIONING` below) or no partitioning at
all (the file has the column). So the column stays in the file: the file is self-describing when copied
out of its folder.

Test hook: when `QINGFENG_PUBLISH_PAUSE_AT` names a stage (`linked`, `file`, `written`, `renamed`,
`swapped`), the publish touches the file named by `QINGFENG_PUBLISH_PAUSE_MARKER` and sleeps there, so
a test can SIGKILL it at a known point.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from warehouse.layout import Layout
from warehouse.marts import MART_KEYS

DATA_FILE = "data.parquet"
STAGING_PREFIX = ".tmp-"
LINK_PREFIX = ".marts.tmp-"
PAUSE_ENV = "QINGFENG_PUBLISH_PAUSE_AT"
PAUSE_MARKER_ENV = "QINGFENG_PUBLISH_PAUSE_MARKER"

# Partitioning for pyarrow.dataset readers: the folder key is a date, like the file's column.
PYARROW_PARTITIONING = ds.partitioning(pa.schema([("as_of", pa.date32())]), flavor="hive")

_MART_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_PARTITION = re.compile(r"^as_of=(\d{4}-\d{2}-\d{2})$")


class PublishError(RuntimeError):
    """The warehouse is not in a state a publish can work with (e.g. `marts` is a real directory)."""


# ---------------------------------------------------------------------------------------------- reading


def current_release(layout: Layout) -> Path | None:
    """The release `marts` points at, or None before the first publish.

    Raises PublishError when `marts` exists but is not a symlink (someone wrote the marts by hand).
    """
    link = layout.marts
    if link.is_symlink():
        target = Path(os.readlink(link))
        release = Path(os.path.normpath(target if target.is_absolute() else link.parent / target))
        return release if release.is_dir() else None
    if link.exists():
        raise PublishError(
            f"{link} is a real {'directory' if link.is_dir() else 'file'}, not the release symlink; "
            f"move it away (the marts are published as {layout.releases}/<release> and {link} -> it)"
        )
    return None


def read_manifest(layout: Layout) -> dict[str, Any] | None:
    release = current_release(layout)
    if release is None:
        return None
    return json.loads(Layout.manifest_file(release).read_text(encoding="utf-8"))


def partitions(layout: Layout, mart: str, release: Path | None = None) -> list[date]:
    """The as_of dates a mart has in the current (or given) release, ascending."""
    release = release or current_release(layout)
    if release is None or not (release / mart).is_dir():
        return []
    out = []
    for p in (release / mart).iterdir():
        m = _PARTITION.match(p.name)
        if m and (p / DATA_FILE).is_file():
            out.append(date.fromisoformat(m.group(1)))
    return sorted(out)


def read_mart(layout: Layout, mart: str, as_of: date | None = None) -> pl.DataFrame:
    """One partition of a mart (the latest when `as_of` is None), from one consistent release."""
    release = current_release(layout)
    if release is None:
        raise FileNotFoundError(f"no marts published yet under {layout.root}")
    dates = partitions(layout, mart, release)
    if not dates:
        raise FileNotFoundError(f"mart {mart!r} has no partition in release {release.name}")
    when = as_of or dates[-1]
    path = layout.release_partition(release, mart, when) / DATA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"mart {mart!r} has no partition as_of={when.isoformat()} (has {len(dates)} others)"
        )
    return pl.read_parquet(path)


# ---------------------------------------------------------------------------------------------- publish


def publish(layout: Layout, as_of: date, marts: dict[str, pl.DataFrame]) -> Path:
    """Replace partition as_of=`as_of` of every mart in `marts`, as one unit. Returns the new release dir.

    Marts not in `marts` keep all their partitions (including as_of=D, if any). Other dates of the
    given marts are carried over untouched (hard links).
    """
    frames = {name: _prepare(name, df, as_of) for name, df in marts.items()}
    layout.root.mkdir(parents=True, exist_ok=True)
    current_release(layout)  # fail early and clearly if `marts` is a real directory
    layout.releases.mkdir(parents=True, exist_ok=True)
    with _publish_lock(layout):
        old = current_release(layout)
        release_id = _new_release_id(as_of)
        staging = layout.releases / f"{STAGING_PREFIX}{release_id}"
        staging.mkdir()
        if old is not None:
            _link_release(old, staging, replace={(name, as_of) for name in frames})
        _pause("linked")
        for name, df in frames.items():
            _write_partition(layout.release_partition(staging, name, as_of), df)
        _pause("written")
        _write_manifest(layout, staging, release_id, old, as_of, frames)
        _fsync_tree(staging)

        final = layout.release(release_id)
        os.rename(staging, final)
        _fsync_dir(layout.releases)
        _pause("renamed")

        tmp_link = layout.root / f"{LINK_PREFIX}{release_id}"
        os.symlink(os.path.relpath(final, layout.root), tmp_link)
        os.replace(tmp_link, layout.marts)
        _fsync_dir(layout.root)
        _pause("swapped")

        _collect_garbage(layout, keep={final.name} | ({old.name} if old is not None else set()))
    return final


def _prepare(name: str, df: pl.DataFrame, as_of: date) -> pl.DataFrame:
    if not _MART_NAME.match(name):
        raise ValueError(f"mart name {name!r} must match {_MART_NAME.pattern}")
    if "as_of" in df.columns:
        col = df["as_of"]
        if col.dtype != pl.Date():
            raise ValueError(f"mart {name}: as_of must be a Date column, not {col.dtype}")
        if df.height and not (col == as_of).fill_null(False).all():
            raise ValueError(f"mart {name}: rows with as_of other than {as_of.isoformat()}")
        df = df.select("as_of", pl.exclude("as_of"))
    else:
        df = df.select(pl.lit(as_of, dtype=pl.Date()).alias("as_of"), pl.all())
    keys = [k for k in MART_KEYS.get(name, ()) if k in df.columns]
    return df.sort(keys, maintain_order=True, nulls_last=True) if keys else df


def _new_release_id(as_of: date) -> str:
    now = datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S%fZ}-{as_of.isoformat()}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def _publish_lock(layout: Layout) -> Iterator[None]:
    fd = os.open(layout.publish_lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _link_release(old: Path, staging: Path, replace: set[tuple[str, date]]) -> None:
    """Hard-link every partition file of `old` into `staging`, except the partitions in `replace`."""
    for mart_dir in sorted(old.iterdir()):
        if not mart_dir.is_dir() or mart_dir.name.startswith((".", "_")):
            continue
        for part in sorted(mart_dir.iterdir()):
            m = _PARTITION.match(part.name)
            if not m or not part.is_dir() or (mart_dir.name, date.fromisoformat(m.group(1))) in replace:
                continue
            target = staging / mart_dir.name / part.name
            target.mkdir(parents=True, exist_ok=True)
            for f in sorted(part.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    _link_or_copy(f, target / f.name)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError as e:  # a filesystem without hard links: fall back to a copy
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EOPNOTSUPP):
            raise
        shutil.copy2(src, dst)
        _fsync_file(dst)


ROW_GROUP_ROWS = 64_000


def _write_partition(folder: Path, df: pl.DataFrame) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{DATA_FILE}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "wb") as fh:
        # Rows are sorted by the mart's keys; row groups of this size let a filter on a key skip most of
        # a large partition by its statistics, while small marts stay one group.
        df.write_parquet(fh, compression="zstd", statistics=True, row_group_size=ROW_GROUP_ROWS)
        fh.flush()
        os.fsync(fh.fileno())
    _pause("file")
    os.replace(tmp, folder / DATA_FILE)
    _fsync_dir(folder)


def _write_manifest(
    layout: Layout,
    staging: Path,
    release_id: str,
    old: Path | None,
    as_of: date,
    frames: dict[str, pl.DataFrame],
) -> None:
    old_counts: dict[str, dict[str, int]] = {}
    if old is not None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            old_counts = json.loads(Layout.manifest_file(old).read_text(encoding="utf-8"))["marts"]
    marts: dict[str, dict[str, int]] = {}
    for mart_dir in sorted(p for p in staging.iterdir() if p.is_dir()):
        counts: dict[str, int] = {}
        for d in partitions(layout, mart_dir.name, staging):
            key = d.isoformat()
            if d == as_of and mart_dir.name in frames:
                counts[key] = frames[mart_dir.name].height
            elif key in old_counts.get(mart_dir.name, {}):
                counts[key] = int(old_counts[mart_dir.name][key])
            else:
                counts[key] = pq.read_metadata(
                    layout.release_partition(staging, mart_dir.name, d) / DATA_FILE
                ).num_rows
        marts[mart_dir.name] = counts
    manifest = {
        "release_id": release_id,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "previous_release": old.name if old is not None else None,
        "published_as_of": as_of.isoformat(),
        "published_marts": sorted(frames),
        "marts": marts,  # mart -> {as_of: row count}
    }
    path = Layout.manifest_file(staging)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, ensure_ascii=False, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _collect_garbage(layout: Layout, keep: set[str]) -> None:
    for entry in layout.releases.iterdir():
        if entry.name in keep or entry == layout.publish_lock:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    for entry in layout.root.glob(f"{LINK_PREFIX}*"):
        entry.unlink(missing_ok=True)
    _fsync_dir(layout.releases)


# ---------------------------------------------------------------------------------------------- durability


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every directory under root, deepest first (the files were fsynced when written)."""
    dirs = [Path(d) for d, _subdirs, _files in os.walk(root)]
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        _fsync_dir(d)


def _pause(stage: str) -> None:
    """Test hook: block at `stage` when QINGFENG_PUBLISH_PAUSE_AT says so (see module docstring)."""
    if os.environ.get(PAUSE_ENV) != stage:
        return
    marker = os.environ.get(PAUSE_MARKER_ENV)
    if marker:
        Path(marker).write_text(stage, encoding="utf-8")
    while True:
        time.sleep(3600)
