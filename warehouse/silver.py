"""The city's silver as the cross-source stage reads it: most tables held in memory, the evidence read
source by source.

Evidence is most of the city (16 M of 22 M silver rows at 96 sources × 5,000 projects) and nothing
about it crosses sources except figures already reduced to a report, a file hash or a project. So
the evidence table is never held for the whole city: a rule, a check or a mart that needs it asks
`by_source(fn)` for `fn` over a shard of sources at a time (their tables, evidence included, references
resolved within each source) and gets the results concatenated. A shard is consecutive sources up to
`SHARD_ROWS` rows of evidence and metrics, so a small city is one shard (and costs what holding it would)
and memory holds a few shards' evidence plus the reduced results, whatever the size of the city. `fn`
must therefore reduce within a source, and gives the same result over one source, a shard or the city.

Every other table is held: it is read once, one source at a time, with its references resolved within
that source (references never cross sources), and concatenated without copying, so the per-source
frames `by_source` hands out share memory with the city frames.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import polars as pl
import pyarrow.parquet as pq

from transforms.references import resolve_references
from transforms.schema import TABLES, empty
from warehouse.layout import Layout

TABLE_NAMES = (*TABLES, "metrics")
# Read source by source, never held for the whole city: evidence (16 M rows at 96 × 5,000) and report
# metrics (8 M), whose rules (T1–T5, F1, F2, F4, F5, F7) reduce them within a source.
SHARDED_TABLES = ("evidence", "metrics")
# Free text that is not held for the whole city: evidence file names (no rule, mart or alert reads them;
# ~40 bytes an evidence row) and report summaries (F6 alone reads them, shard by shard through
# `by_source(fn, columns=...)`; most of the memory of the reports).
NOT_HELD: dict[str, tuple[str, ...]] = {"evidence": ("file_name",), "stage_reports": ("summary",)}
THREADS = 4  # reading Parquet and joining release the GIL
# Shards a function runs over at a time. Each holds its sources' evidence and the function's working
# arrays (F6 shingles 20,000 summaries a batch): at 96 × 5,000, two in flight instead of four peak
# ~0.4 GiB lower and take the same time on two cores (Polars runs each on both).
SHARDS_IN_FLIGHT = int(os.environ.get("QINGFENG_SHARDS_IN_FLIGHT", "2"))
# Sources are handed out in shards of consecutive sources holding up to this many rows of the sharded
# tables (a larger source is a shard of its own): a function runs once per shard, not once per source,
# so a small city is one shard and costs what holding it all would, while SHARDS_IN_FLIGHT shards bound
# the memory of a large one.
SHARD_ROWS = int(os.environ.get("QINGFENG_SHARD_ROWS", "500000"))
# A city whose evidence and metrics come to at most this many rows holds them too (about 0.6 GiB at
# 4.8 M rows, 96 sources × 1,000 projects): reading them again for each rule that asks would cost more
# time than holding them costs memory. Larger cities read them shard by shard.
HOLD_ROWS = int(os.environ.get("QINGFENG_HOLD_ROWS", "6000000"))


class ShardedTableError(KeyError):
    def __str__(self) -> str:
        return (f"silver table {self.args[0]!r} is read source by source, not held for the whole city: "
                "reduce it per source with by_source(fn)")


class CitySilver(Mapping[str, pl.DataFrame]):
    """Mapping of the held tables (table → every source's rows); `by_source` for the sharded ones."""

    def __init__(self, layout: Layout, source_ids: list[str], parts: dict[str, dict[str, pl.DataFrame]],
                 sharded: tuple[str, ...], stored: dict[str, int], shard_rows: int | None = None):
        """(`load` builds one.) `parts`: table → source_id → frame of the held tables; `stored`: rows of
        the `sharded` tables a source."""
        self.layout = layout
        self.source_ids = list(source_ids)
        self.sharded = sharded
        self._parts = parts  # table -> source_id -> frame
        self._city = {
            t: pl.concat(list(by_sid.values()), rechunk=False) if by_sid else empty(t).drop(NOT_HELD.get(t, ()))
            for t, by_sid in parts.items()
        }
        self.shards = _plan_shards(self.source_ids, stored, shard_rows or SHARD_ROWS)

    @classmethod
    def load(cls, layout: Layout, source_ids: list[str], sharded: tuple[str, ...] = SHARDED_TABLES,
             shard_rows: int | None = None, hold_rows: int | None = None) -> CitySilver:
        """Read every held table of every source, references resolved per source. The `sharded` tables
        are held too when they come to at most `hold_rows` rows (`HOLD_ROWS`)."""
        hold_rows = HOLD_ROWS if hold_rows is None else hold_rows
        stored = {sid: sum(_stored_rows(layout, t, sid) for t in sharded) for sid in source_ids}
        if sum(stored.values()) <= hold_rows:
            sharded = ()
            stored = dict.fromkeys(source_ids, 0)
        held = [t for t in TABLE_NAMES if t not in sharded]

        def one_source(sid: str) -> dict[str, pl.DataFrame]:
            one = {}
            for table in held:
                path = layout.silver_file(table, sid)
                if path.exists():
                    skip = NOT_HELD.get(table, ())
                    one[table] = pl.read_parquet(path, columns=[c for c in pl.read_parquet_schema(path) if c not in skip])
            return resolve_references(one)

        parts: dict[str, dict[str, pl.DataFrame]] = {t: {} for t in held}
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            for sid, one in zip(source_ids, pool.map(one_source, source_ids), strict=True):
                for table, frame in one.items():
                    parts[table][sid] = frame
        return cls(layout, source_ids, parts, sharded, stored, shard_rows)

    # ------------------------------------------------------------------------------ the held tables

    def __getitem__(self, name: str) -> pl.DataFrame:
        if name in self.sharded:
            raise ShardedTableError(name)
        return self._city[name]

    def get(self, name: str, default=None):  # noqa: ANN001 — Mapping.get, but a sharded table raises
        if name in self.sharded:
            raise ShardedTableError(name)
        return self._city.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._city)

    def __len__(self) -> int:
        return len(self._city)

    # ------------------------------------------------------------------------------ source by source

    def source(self, sid: str, columns: dict[str, list[str]] | None = None) -> dict[str, pl.DataFrame]:
        """One source's tables: the held ones as held (plus the columns of `columns[table]` they do not
        hold, read now and joined by key), the sharded ones read now (all their columns but `NOT_HELD`, or
        `columns[table]`), references resolved."""
        one = {t: by_sid[sid] for t, by_sid in self._parts.items() if sid in by_sid}
        for table, wanted in (columns or {}).items():
            if table in self.sharded or table not in one:
                continue
            if absent := [c for c in wanted if c not in one[table].columns]:
                key = TABLES[table].key
                extra = pl.read_parquet(self.layout.silver_file(table, sid), columns=[key, *absent])
                one[table] = one[table].join(extra, on=key, how="left", maintain_order="left")
        for table in self.sharded:
            path = self.layout.silver_file(table, sid)
            wanted = (columns or {}).get(table)
            schema = pl.read_parquet_schema(path) if path.exists() else empty(table).schema
            skip = NOT_HELD.get(table, ())
            names = [c for c in schema if c not in skip] if wanted is None else [c for c in wanted if c in schema]
            names = list(dict.fromkeys(["source_id", *_key(table), *names]))
            frame = pl.read_parquet(path, columns=names) if path.exists() else empty(table).select(names)
            one[table] = _resolved(table, frame, one)
        return one

    def shard(self, sids: list[str], columns: dict[str, list[str]] | None = None) -> dict[str, pl.DataFrame]:
        """The tables of these sources (`source` each, references resolved within each), concatenated."""
        if not self.sharded and sids == self.source_ids and not _absent_columns(self._city, columns):
            return dict(self._city)  # every table held, every source: the city itself
        ones = [self.source(sid, columns) for sid in sids]
        if len(ones) == 1:
            return ones[0]
        names = dict.fromkeys(t for one in ones for t in one)
        return {t: pl.concat([one[t] for one in ones if t in one], how="vertical_relaxed", rechunk=False)
                for t in names}

    def map_sources(self, fn: Callable[[dict[str, pl.DataFrame]], pl.DataFrame | None],
                    columns: dict[str, list[str]] | None = None,
                    sources: Collection[str] | None = None) -> Iterator[pl.DataFrame]:
        """`fn` over each shard of sources in turn (`shards`, `shard`), yielded in source order as they
        are ready: a few shards at a time are read ahead, never the whole of a large city. `sources`: only
        these (by default every source)."""
        def run(sids: list[str]) -> pl.DataFrame | None:
            return fn(self.shard(sids, columns))

        planned = self.shards if sources is None else [
            kept for shard in self.shards if (kept := [sid for sid in shard if sid in sources])]
        with ThreadPoolExecutor(max_workers=SHARDS_IN_FLIGHT) as pool:
            shards = iter(planned)
            while window := list(islice(shards, SHARDS_IN_FLIGHT)):
                for result in pool.map(run, window):
                    if result is not None:
                        yield result

    def by_source(self, fn: Callable[[dict[str, pl.DataFrame]], pl.DataFrame],
                  columns: dict[str, list[str]] | None = None,
                  sources: Collection[str] | None = None) -> pl.DataFrame:
        """`fn` over each shard of sources (`map_sources`; `sources`: only these), the results concatenated.
        With no source at all, `fn` over empty tables (so the result has its columns)."""
        results = list(self.map_sources(fn, columns, sources))
        if not results:
            return fn({t: empty(t) for t in TABLE_NAMES})
        return pl.concat(results, how="vertical_relaxed")

    def rows(self, table: str) -> int:
        """Rows of a table over the city (a sharded one from its Parquet metadata)."""
        if table not in self.sharded:
            return self._city[table].height if table in self._city else 0
        return sum(_stored_rows(self.layout, table, sid) for sid in self.source_ids)


def _plan_shards(source_ids: list[str], stored: dict[str, int], limit: int) -> list[list[str]]:
    """Consecutive sources, in source order, up to `limit` rows of the sharded tables (`stored`: rows a
    source) a shard; a larger source is a shard of its own."""
    shards: list[list[str]] = []
    held = limit
    for sid in source_ids:
        n = stored.get(sid, 0)
        if not shards or held + n > limit:
            shards.append([])
            held = 0
        shards[-1].append(sid)
        held += n
    return shards


def _absent_columns(tables: dict[str, pl.DataFrame], columns: dict[str, list[str]] | None) -> bool:
    return any(t in tables and c not in tables[t].columns for t, cols in (columns or {}).items() for c in cols)


def _stored_rows(layout: Layout, table: str, sid: str) -> int:
    """Rows of a source's silver table, from its Parquet metadata."""
    path = layout.silver_file(table, sid)
    return pq.ParquetFile(path).metadata.num_rows if path.exists() else 0


def _key(table: str) -> list[str]:
    return [TABLES[table].key] if table in TABLES else []


def _resolved(table: str, frame: pl.DataFrame, one: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """`frame`'s references spelled as the rows they name in `one` (only the targets it has)."""
    if table not in TABLES:  # metrics: keyed by their report, which `resolve_references` leaves as is
        return frame
    targets = {ref.table for ref in TABLES[table].references if ref.table in one}
    if not targets or frame.is_empty():
        return frame
    return resolve_references({table: frame, **{t: one[t] for t in targets}}, only=(table,))[table]


def by_source(silver: Mapping[str, pl.DataFrame], fn: Callable[[dict[str, pl.DataFrame]], pl.DataFrame],
              columns: dict[str, list[str]] | None = None, sources: Collection[str] | None = None) -> pl.DataFrame:
    """`fn` source by source over a `CitySilver` (`sources`: only these, a shortcut for a function that
    has nothing to do with the others); over any other mapping (every table held, as tests and small tools
    build it) `fn` over all of it at once: functions given here reduce within a source, so the whole city
    is a valid input for them."""
    if isinstance(silver, CitySilver):
        return silver.by_source(fn, columns, sources)
    return fn(dict(silver))
