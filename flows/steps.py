"""The steps of one night, as plain functions that do the I/O: the Prefect flow calls them, tests can too.

Per source: extract → land bronze → normalize and upsert silver (+ quarantine).
Across sources: load silver (references resolved per source; evidence and metrics read source by
source when a rule asks, `warehouse.silver`) → rules → marts → publish.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from flows.extract import Pulled, SourceUnreachable, extract_filedrop, extract_sql, list_deliveries
from flows.outbox import MailSummary, NightContext, night_alerts
from flows.registry import Registry, Source
from flows.state import StageRecord, StateStore, StateUnavailable
from transforms.dialects import native_tables
from transforms.merge import drop_unchanged, replace_children, upsert
from transforms.normalize import MissingColumnsError, normalize_table
from transforms.schema import QUARANTINE_SCHEMA, TABLES
from warehouse.analysts import refresh_views
from warehouse.files import write_parquet
from warehouse.history import previous_partitions
from warehouse.kept import KeptStore
from warehouse.layout import Layout
from warehouse.marts import MARTS, OUTBOX_MARTS, SOURCES_SCHEMA, MartInputs, build_all
from warehouse.publish import publish
from warehouse.silver import TABLE_NAMES, CitySilver, by_source

if TYPE_CHECKING:
    from expectations.contract import ContractSettings
    from expectations.gx_runner import Validator

log = logging.getLogger("qingfeng")


@dataclass(frozen=True)
class RunSettings:
    # Clocks and commits lag: rows changed up to this long before the watermark are pulled again.
    overlap: timedelta = timedelta(days=1)
    # Sources extracted and normalized at the same time (connections and memory grow with it).
    max_workers: int = 4
    # A source server that cannot be read is tried again this many times, after backoff, 2×backoff, 4×…
    # seconds (a restart, a network blip); local files (SQLite, filedrop) are not retried.
    # (Defaults from $QINGFENG_EXTRACT_RETRIES, $QINGFENG_RETRY_BACKOFF_SECONDS: 3 and 30 s, ≈ 3.5 min.)
    extract_retries: int = field(default_factory=lambda: int(os.environ.get("QINGFENG_EXTRACT_RETRIES", "3")))
    retry_backoff_seconds: float = field(
        default_factory=lambda: float(os.environ.get("QINGFENG_RETRY_BACKOFF_SECONDS", "30")))
    # One source's extraction (each attempt) may take this long before it counts as failed
    # ($QINGFENG_EXTRACT_TIMEOUT_SECONDS, default 30 min).
    extract_timeout_seconds: float = field(
        default_factory=lambda: float(os.environ.get("QINGFENG_EXTRACT_TIMEOUT_SECONDS", "1800")))


@dataclass
class SourceOutcome:
    source_id: str
    status: str = "ok"  # ok | failed
    error: str | None = None
    records: list[StageRecord] = field(default_factory=list)
    contract_problems: list[dict] = field(default_factory=list)  # C1: table, problem
    quarantine: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=QUARANTINE_SCHEMA))
    newest_delivery: date | None = None
    last_good: date | None = None  # a failed source: the latest earlier date it was read (its silver's)

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in self.records:
            if r.stage == "normalize":
                out[r.table_name] = {"in": r.rows_in, "silver": r.rows_out, "quarantined": r.quarantined}
        return out


def new_run_id(as_of: date) -> str:
    return f"{as_of.isoformat()}T{datetime.now(UTC).strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}"


# --------------------------------------------------------------------------------------------------
# per source
# --------------------------------------------------------------------------------------------------


def extract_source(source: Source, state: StateStore, as_of: date, settings: RunSettings) -> Pulled:
    if source.is_filedrop:
        pulled = extract_filedrop(source, loaded=state.loaded_deliveries(source.id, before=as_of))
        if pulled.delivery and (previous := state.last_loaded_delivery(source.id, before=as_of)):
            pulled.previous_delivery, pulled.previous_run_id = previous
        return pulled
    kept = state.watermarks(source.id, before=as_of)
    marks = {t: kept.get(t) for t in native_tables(source.dialect)}
    return extract_sql(source, watermarks=marks, overlap=settings.overlap, now=datetime.now(UTC))


def land_bronze(layout: Layout, pulled: Pulled, run_id: str) -> list[StageRecord]:
    records = []
    for table, frame in pulled.tables.items():
        t0 = time.perf_counter()
        write_parquet(frame, layout.bronze_file(pulled.source_id, table, run_id))
        records.append(StageRecord(pulled.source_id, "bronze", table, rows_in=frame.height, rows_out=frame.height,
                                   seconds=time.perf_counter() - t0))
    return records


def _read_silver(layout: Layout, table: str, source_id: str) -> pl.DataFrame | None:
    path = layout.silver_file(table, source_id)
    return pl.read_parquet(path) if path.exists() else None


def normalize_source(
    layout: Layout, source: Source, pulled: Pulled, as_of: date
) -> tuple[list[StageRecord], list[dict], pl.DataFrame]:
    """Normalize every pulled table, upsert it into silver, write its quarantine. Returns the run
    records, the C1 problems found (missing required columns) and the quarantine rows."""
    records: list[StageRecord] = []
    problems: list[dict] = []
    quarantined: list[pl.DataFrame] = []
    for table, raw in pulled.tables.items():
        t0 = time.perf_counter()
        tail = None
        if table in pulled.cut_off and raw.height:
            # The file was cut off inside its last record: every complete row goes on, that one waits in
            # the quarantine (the next full delivery brings it whole).
            reason = f"cut off mid-file: the last record of delivery {pulled.delivery} is incomplete"
            raw, tail = raw.head(raw.height - 1), _whole_table_quarantine(raw.tail(1), source.id, table, reason)
            quarantined.append(tail)
        if (before := _previous_delivery_rows(layout, source.id, table, pulled)) is not None:
            # A filedrop delivery is a full snapshot: most of its rows are the last one's, which that night
            # normalized into silver or the quarantine. Only the new and changed rows go on.
            pulled_rows, raw = raw.height, drop_unchanged(raw, before)
            records.append(StageRecord(source.id, "diff", table, rows_in=pulled_rows, rows_out=raw.height,
                                       message=f"{pulled_rows - raw.height} rows unchanged since delivery "
                                               f"{pulled.previous_delivery}, loaded then"))
            del before
        try:
            result = normalize_table(raw, dialect=source.dialect, table=table, source_id=source.id)
        except MissingColumnsError as e:
            problems.append({"table": table, "problem": str(e)})
            records.append(StageRecord(source.id, "normalize", table, rows_in=raw.height + _height(tail),
                                       quarantined=raw.height + _height(tail), status="failed",
                                       message=str(e), seconds=time.perf_counter() - t0))
            quarantined.append(_whole_table_quarantine(raw, source.id, table, str(e)))
            continue
        # Not an error: the contract allows it. Recorded so a steward can see the drift (a renamed optional
        # column is one missing, read as null, and one extra).
        drift = [f"{what} columns: " + ", ".join(cols)
                 for what, cols in (("extra", result.extra_columns), ("missing", result.missing_columns))
                 if cols]
        if drift:
            records.append(StageRecord(source.id, "schema_drift", table, status="ok",
                                       message="; ".join(drift)))
        # A column the source no longer sends (renamed, dropped) says nothing about the rows' values: the
        # rows that arrive tonight keep what silver knew for it, rather than being blanked.
        absent = [canon for native, canon in native_tables(source.dialect)[table].columns.items()
                  if native in result.missing_columns]
        # An upsert of no rows would rewrite silver (and a report's metrics) as they are.
        if result.clean.height or not layout.silver_file(table, source.id).exists():
            silver = upsert(_read_silver(layout, table, source.id), result.clean, table, keep=absent)
            write_parquet(silver, layout.silver_file(table, source.id))
            del silver
        if table == "stage_reports" and "metrics" not in absent:
            if result.clean.height or not layout.silver_file("metrics", source.id).exists():
                metrics = replace_children(
                    _read_silver(layout, "metrics", source.id), result.metrics,
                    parent_ids=result.clean.select("source_id", "report_id"), key="report_id",
                )
                write_parquet(metrics, layout.silver_file("metrics", source.id))
            quarantined.append(result.metrics_quarantine)
        quarantined.append(result.quarantine)
        records.append(StageRecord(source.id, "normalize", table, rows_in=raw.height + _height(tail),
                                   rows_out=result.clean.height,
                                   quarantined=result.quarantine.height + _height(tail),
                                   seconds=time.perf_counter() - t0,
                                   message=None if tail is None else "cut off mid-file: last record quarantined"))
    quarantine = pl.concat(quarantined) if quarantined else pl.DataFrame(schema=QUARANTINE_SCHEMA)
    for table, part in quarantine.partition_by("table", as_dict=True).items():
        write_parquet(part, layout.quarantine_file(as_of, source.id, table[0]))
    return records, problems, quarantine


def _previous_delivery_rows(layout: Layout, source_id: str, table: str, pulled: Pulled) -> pl.DataFrame | None:
    """The rows of the filedrop delivery silver last took for `table` (its bronze, as pulled), or None when
    tonight's rows cannot be compared with it: no earlier delivery, its bronze or silver gone."""
    if pulled.previous_run_id is None or not pulled.full.get(table):
        return None
    path = layout.bronze_file(source_id, table, pulled.previous_run_id)
    if not path.exists() or not layout.silver_file(table, source_id).exists():
        return None
    try:
        before = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError):
        log.warning("bronze of delivery %s of %s (%s) unreadable: the delivery is normalized whole",
                    pulled.previous_delivery, source_id, table)
        return None
    # Its last row may have been a cut-off record (quarantined, never in silver) that tonight's whole file
    # repeats value for value: it is never taken as loaded.
    return before.head(max(before.height - 1, 0))


def _height(frame: pl.DataFrame | None) -> int:
    return 0 if frame is None else frame.height


def _whole_table_quarantine(raw: pl.DataFrame, source_id: str, table: str, reason: str) -> pl.DataFrame:
    """A table that cannot be read as the contract says: every row is kept, with why."""
    return raw.select(
        pl.lit(source_id).alias("source_id"),
        pl.lit(table).alias("table"),
        pl.lit(None, dtype=pl.String).alias("record_id"),
        pl.lit(reason).alias("reason"),
        pl.struct(pl.all()).struct.json_encode().alias("raw"),
    )


def is_transient(source: Source, error: BaseException) -> bool:
    """Worth trying again in a moment: a source server that could not be read (down, restarting, the
    network). A missing SQLite file or filedrop folder will not appear in seconds, and a bug is a bug."""
    return isinstance(error, SourceUnreachable) and not source.is_filedrop and not source.url.startswith("sqlite")


def extract_stage(
    source: Source, state: StateStore, as_of: date, settings: RunSettings, *, raise_transient: bool = False
) -> tuple[SourceOutcome, Pulled | None]:
    """Pull one source. A source that cannot be read becomes C1 and a failed record, not an error:
    the other sources go on. With `raise_transient` (the Prefect task, which retries), a transient
    failure is raised instead, carrying `seconds`; the flow turns the last one into `extract_failed`."""
    t0 = time.perf_counter()
    try:
        pulled = extract_source(source, state, as_of, settings)
    except StateUnavailable:
        raise  # the pipeline's own database, not the source: no source is to blame (C1) for it
    except Exception as e:  # noqa: BLE001 — one source's failure must not stop the night
        if raise_transient and is_transient(source, e):
            e.seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
            raise
        return extract_failed(source, e, time.perf_counter() - t0), None
    outcome = SourceOutcome(source.id)
    rows = sum(f.height for f in pulled.tables.values())
    outcome.newest_delivery = pulled.delivery_date
    outcome.records.append(StageRecord(source.id, "extract", rows_in=rows, rows_out=rows,
                                       seconds=time.perf_counter() - t0, message=pulled.note))
    natives = native_tables(source.dialect)
    outcome.contract_problems += [
        {"table": t, "problem": f"table {natives[t].native} is missing"} for t in pulled.missing_tables
    ]
    return outcome, pulled


def extract_failed(source: Source, error: BaseException, seconds: float, attempts: int = 1) -> SourceOutcome:
    """The outcome of a source that could not be extracted (after `attempts` tries): failed, C1."""
    outcome = SourceOutcome(source.id)
    tries = f" (after {attempts} attempts)" if attempts > 1 else ""
    if not isinstance(error, SourceUnreachable | TimeoutError):
        outcome = _fail(outcome, "extract", error, seconds)
        outcome.records[-1] = replace(outcome.records[-1], message=f"{outcome.error}{tries}")
    else:
        message = str(error) if isinstance(error, SourceUnreachable) else f"{type(error).__name__}: {error}"
        outcome.status, outcome.error = "failed", message + tries
        outcome.contract_problems.append({"table": None, "problem": f"source could not be read: {message}"})
        outcome.records.append(StageRecord(source.id, "extract", status="failed", message=outcome.error,
                                           seconds=seconds))
    if source.is_filedrop and Path(source.url).is_dir():
        names = list_deliveries(Path(source.url))
        outcome.newest_delivery = date.fromisoformat(names[-1]) if names else None
    return outcome


def _fail(outcome: SourceOutcome, stage: str, error: BaseException, seconds: float) -> SourceOutcome:
    log.exception("%s of %s failed", stage, outcome.source_id)
    outcome.status, outcome.error = "failed", f"{type(error).__name__}: {error}"
    outcome.contract_problems.append({"table": None, "problem": f"{stage} failed: {outcome.error}"})
    outcome.records.append(StageRecord(outcome.source_id, stage, status="failed", message=outcome.error,
                                       seconds=seconds))
    return outcome


def land_stage(layout: Layout, outcome: SourceOutcome, pulled: Pulled | None, run_id: str) -> SourceOutcome:
    """Write what was pulled, untouched, to bronze."""
    if pulled is None or outcome.status != "ok":
        return outcome
    t0 = time.perf_counter()
    try:
        outcome.records += land_bronze(layout, pulled, run_id)
    except Exception as e:  # noqa: BLE001 — one source's failure must not stop the night
        return _fail(outcome, "bronze", e, time.perf_counter() - t0)
    return outcome


def normalize_stage(
    layout: Layout, state: StateStore, source: Source, outcome: SourceOutcome, pulled: Pulled | None,
    as_of: date, run_id: str,
) -> SourceOutcome:
    """Normalize into silver and quarantine, then move the watermark on."""
    if pulled is None or outcome.status != "ok":
        return outcome
    t0 = time.perf_counter()
    try:
        records, problems, quarantine = normalize_source(layout, source, pulled, as_of)
    except Exception as e:  # noqa: BLE001 — one source's failure must not stop the night
        return _fail(outcome, "normalize", e, time.perf_counter() - t0)
    outcome.records += records
    outcome.contract_problems += problems
    outcome.quarantine = quarantine
    # Only now that silver holds tonight's rows may the watermark move on; not for a table that could not
    # be normalized (C1: a required column missing), whose rows silver does not hold.
    failed = {p["table"] for p in problems}
    marks = {t: w for t, w in pulled.watermarks.items() if t not in failed}
    state.set_watermarks(source.id, as_of, marks, run_id)
    if pulled.delivery:
        state.mark_delivery_loaded(source.id, pulled.delivery, as_of, run_id)
    return outcome


def process_source(
    layout: Layout, state: StateStore, source: Source, as_of: date, run_id: str, settings: RunSettings
) -> SourceOutcome:
    outcome, pulled = extract_stage(source, state, as_of, settings)
    outcome = land_stage(layout, outcome, pulled, run_id)
    return normalize_stage(layout, state, source, outcome, pulled, as_of, run_id)


# --------------------------------------------------------------------------------------------------
# across sources
# --------------------------------------------------------------------------------------------------


def _newest_change(tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """source_id, newest_change (the latest change column value of each table)."""
    newest = [
        frame.group_by("source_id").agg(pl.col(spec.change_column).max().alias("newest_change"))
        for name, spec in TABLES.items()
        if spec.change_column and name in tables and not (frame := tables[name]).is_empty()
    ]
    return pl.concat(newest) if newest else pl.DataFrame(
        schema={"source_id": pl.String, "newest_change": TABLES["persons"].columns["updated_at"]})


def freshness(silver: Mapping[str, pl.DataFrame], registry: Registry, outcomes: dict[str, SourceOutcome]) -> pl.DataFrame:
    held = {name: silver[name] for name in silver}
    sharded = [t for t in getattr(silver, "sharded", ()) if t in TABLES and TABLES[t].change_column]
    newest = [_newest_change(held)]
    if sharded:
        newest.append(by_source(silver, lambda one: _newest_change({t: one[t] for t in sharded}),
                                {t: [TABLES[t].change_column] for t in sharded}))
    changes = pl.concat(newest).group_by("source_id").agg(pl.col("newest_change").max())
    with_silver = {sid for frame in silver.values() if "source_id" in frame.columns
                   for sid in frame["source_id"].unique().to_list()}
    failed = {sid for sid, o in outcomes.items() if o.status != "ok"}
    base = pl.DataFrame(
        {
            "source_id": [s.id for s in registry.sources],
            "dialect": [s.dialect for s in registry.sources],
            "newest_delivery": [outcomes[s.id].newest_delivery if s.id in outcomes else None for s in registry.sources],
            # Failed tonight but still in the marts with earlier data: stale by definition (C4).
            "failed_with_silver": [s.id in failed and s.id in with_silver for s in registry.sources],
            "last_good": [outcomes[s.id].last_good if s.id in outcomes else None for s in registry.sources],
        },
        schema={"source_id": pl.String, "dialect": pl.String, "newest_delivery": pl.Date,
                "failed_with_silver": pl.Boolean, "last_good": pl.Date},
    )
    return base.join(changes, on="source_id", how="left")


@dataclass
class NightResult:
    run_id: str
    as_of: date
    outcomes: dict[str, SourceOutcome]
    flags: pl.DataFrame
    mart_rows: dict[str, int]
    release: Path | None
    mail: MailSummary | None = None  # the alert emails of the night (flows.outbox)

    @property
    def failed_sources(self) -> list[str]:
        return sorted(sid for sid, o in self.outcomes.items() if o.status != "ok")


# Rules side by side (`expectations.rules.rule_flags`) when the city's silver is held whole
# (`warehouse.silver.HOLD_ROWS`): the second rule's frames then fit beside the first's. A city read source
# by source is one too large for that, and runs its rules one at a time, the highest point of one rule.
RULES_IN_FLIGHT = int(os.environ.get("QINGFENG_RULES_IN_FLIGHT", "2"))


def evaluate(
    layout: Layout, registry: Registry, outcomes: dict[str, SourceOutcome], as_of: date,
    contract_settings: ContractSettings | None = None, validator: Validator | None = None,
) -> tuple[CitySilver, pl.DataFrame]:
    """Silver across sources with references resolved, and every flag of tonight's rules. The suites run
    through `validator`, whose Data Docs the caller then builds (`build_docs`), or through one made here
    and let go of."""
    from expectations.contract import (
        ContractSettings,
        c1_flags,
        c2_flags_from_quarantine,
        c4_flags,
        contract_suite_flags,
    )
    from expectations.deadline import deadline_flags
    from expectations.gx_runner import Validator
    from expectations.rules import rule_flags
    from expectations.rules.base import RuleContext

    source_ids = [s.id for s in registry.sources]
    silver = CitySilver.load(layout, source_ids)
    problems = pl.DataFrame(
        [{"source_id": sid, **p} for sid, o in outcomes.items() for p in o.contract_problems],
        schema={"source_id": pl.String, "table": pl.String, "problem": pl.String},
    )
    quarantine = pl.concat([o.quarantine for o in outcomes.values()]) if outcomes else pl.DataFrame(
        schema=QUARANTINE_SCHEMA)
    own = validator is None
    validator = Validator() if validator is None else validator
    flags = pl.concat([
        c1_flags(validator, [s.id for s in registry.sources], problems),
        c2_flags_from_quarantine(quarantine),
        c4_flags(freshness(silver, registry, outcomes), as_of, contract_settings or ContractSettings()),
        deadline_flags(silver, as_of),
        # The contract suite is mostly GX in pandas, on one core: it runs beside the rules, not before them.
        rule_flags(RuleContext(silver, as_of, KeptStore(layout.kept)), validator,
                   after_each=lambda: release_freed_memory(collect=False),
                   in_flight=1 if silver.sharded else RULES_IN_FLIGHT,
                   beside=functools.partial(contract_suite_flags, validator, silver)),
    ]).unique(maintain_order=True)
    if own:
        validator.close()
    return silver, flags


def build_docs(validator: Validator, docs_dir: Path) -> None:
    """The Great Expectations Data Docs of every suite `validator` ran, into `docs_dir` (a rerun of the date
    replaces them); then the validator lets go of its results, which GX would keep for the life of the
    process. A failure is logged: the flags and marts matter more than their HTML rendering."""
    shutil.rmtree(docs_dir, ignore_errors=True)
    try:
        validator.build_docs()
    except Exception:  # noqa: BLE001
        log.exception("building the Data Docs in %s failed", docs_dir)
    finally:
        validator.close()


def load_validation() -> None:
    """Import Great Expectations, the contract suite and every rule: about 3 s of Python holding the GIL,
    which was most of what a night took before its flow started. Nothing before the cross-source stage
    needs them, so the flow calls this once its sources are in flight, and the import overlaps their
    work. Whatever is not loaded by then is imported where it is used.

    The first time in a process, what is then tracked by the garbage collector (about 370,000 objects:
    the modules of Prefect, GX, pydantic, SQLAlchemy, which live as long as the process) is moved out of
    its reach (`gc.freeze`). Every full collection walked them all, 0.2 s with the GIL held, and a night
    makes about ten (`release_freed_memory`, the interpreter's own, one at exit); it now walks what the
    night made. Objects frozen with them that become cyclic garbage later stay: made once, not nightly."""
    from expectations import contract, deadline, gx_runner  # noqa: F401
    from expectations.rules import rule_modules

    rule_modules()
    _freeze_what_lives_with_the_modules()


@functools.cache  # once a process
def _freeze_what_lives_with_the_modules() -> None:
    gc.freeze()


def release_freed_memory(collect: bool = True) -> None:
    """Give back to the system what the night has freed, between its heavy steps: the free pages glibc
    keeps in each thread's heap (~200 MB at the start of the cross-source stage at 96 × 5,000) and,
    with `collect`, cyclic garbage first (~160 MB there). The cross-source stage then starts from what
    is live, not from the peak of what came before. A collection cost 0.1–0.3 s in a process holding
    GX and Prefect before `load_validation` froze their objects (milliseconds since), and between rules
    (whose arrays go by reference counting) only the trim runs (about a millisecond). Polars' own
    allocator hands its pages back by itself, within seconds."""
    if collect:
        gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim this way
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def sources_frame(registry: Registry, outcomes: dict[str, SourceOutcome], flags: pl.DataFrame) -> pl.DataFrame:
    stale_ids = set(
        flags.filter(pl.col("rule_id") == "C4")["source_id"].to_list()
    ) | {sid for sid, o in outcomes.items() if o.status != "ok"}
    return pl.DataFrame(
        {
            "source_id": [s.id for s in registry.sources],
            "name": [s.name for s in registry.sources],
            "kind": [s.kind for s in registry.sources],
            "dialect": [s.dialect for s in registry.sources],
            "steward_email": [s.steward_email for s in registry.sources],
            "stale": [s.id in stale_ids for s in registry.sources],
        },
        schema=SOURCES_SCHEMA,
    )


def alert_stage(
    layout: Layout, state: StateStore, registry: Registry, outcomes: dict[str, SourceOutcome], as_of: date,
    silver: dict[str, pl.DataFrame], flags: pl.DataFrame, sources: pl.DataFrame, dry_run_mail: Path | None = None,
) -> tuple[pl.DataFrame | None, MailSummary | None]:
    """Raise tonight's alerts into the outbox and send what is pending (D1–D3, data quality). A failure
    here is logged and does not sink the night: the alerts mart then falls back to the flags."""
    night = NightContext(as_of=as_of, supervision_email=registry.supervision_email, sender=registry.sender,
                         docs_index=layout.docs(as_of).absolute() / "index.html",
                         quarantine_dir=(layout.quarantine / f"as_of={as_of.isoformat()}").absolute())
    quarantine = pl.concat([o.quarantine for o in outcomes.values()]) if outcomes else None
    try:
        return night_alerts(state.engine, night, flags, silver, sources, quarantine, dry_run_mail)
    except Exception:  # noqa: BLE001 — emails matter, but not more than the marts
        log.exception("raising or sending the alerts failed")
        return None, None


def finish_night(
    layout: Layout, state: StateStore, registry: Registry, outcomes: dict[str, SourceOutcome], as_of: date,
    run_id: str, dry_run_mail: Path | None = None,
) -> NightResult:
    t0 = time.perf_counter()
    release_freed_memory()  # what the per-source stage freed
    for o in outcomes.values():
        if o.status != "ok" and o.last_good is None:
            o.last_good = state.last_good(o.source_id, before=as_of)
    from expectations.gx_runner import Validator

    validator = Validator(docs_dir=layout.docs(as_of))
    silver, flags = evaluate(layout, registry, outcomes, as_of, validator=validator)
    t_rules = time.perf_counter()
    # The Data Docs are GX rendering HTML in Python, the marts mostly Polars, which lets go of the GIL: built
    # side by side when the city's silver is held whole. A city read source by source has the highest point
    # of its night in the marts, and the validation results the docs hold until rendered would add to it.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="data-docs") as docs:  # (waits for them)
        docs_built = docs.submit(build_docs, validator, layout.docs(as_of))
        if silver.sharded:
            docs_built.result()
        release_freed_memory()
        sources = sources_frame(registry, outcomes, flags)
        ctx = MartInputs(
            as_of=as_of, silver=silver, flags=flags, sources=sources,
            supervision_email=registry.supervision_email or "",
            history=previous_partitions(layout, as_of),  # for score_change: the partitions before as_of
        )
        raise_alerts = functools.partial(alert_stage, layout, state, registry, outcomes, as_of, silver, flags,
                                         sources, dry_run_mail)
        if silver.sharded:  # one after the other, for the same reason as the docs
            outbox, mail = raise_alerts()
            marts = build_all(replace(ctx, outbox=outbox))
        else:
            # The alerts are Python (rendering the emails, the outbox's SQL), the marts mostly Polars: the
            # marts that do not read the outbox are built while the alerts are raised, the others after.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="alerts") as alerts:
                alerting = alerts.submit(raise_alerts)
                marts = build_all(ctx, skip=OUTBOX_MARTS)
                outbox, mail = alerting.result()
            marts |= {name: MARTS[name](replace(ctx, outbox=outbox)) for name in OUTBOX_MARTS}
            marts = {name: marts[name] for name in MARTS}  # in registry order, as published
        release = publish(layout, as_of, marts)
        refresh_views(layout)
    t_marts = time.perf_counter()
    flag_counts = dict(flags.group_by("source_id").len().iter_rows())
    state.record(run_id, as_of, [
        *[r for o in outcomes.values() for r in o.records],
        *[StageRecord(sid, "rules", flags=int(flag_counts.get(sid, 0))) for sid in outcomes],
        StageRecord("*", "rules", rows_in=sum(silver.rows(t) for t in TABLE_NAMES), rows_out=flags.height,
                    flags=flags.height, seconds=t_rules - t0),
        StageRecord("*", "marts", rows_out=sum(m.height for m in marts.values()), seconds=t_marts - t_rules),
    ])
    return NightResult(run_id, as_of, outcomes, flags, {k: v.height for k, v in marts.items()}, release, mail)
