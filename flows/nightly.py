"""The nightly Prefect flow: a task per source, then the cross-source stages once.

Works on Prefect's ephemeral API (no server) for `qingfeng run`; `qingfeng serve` (flows.serve)
schedules the same flow on a Prefect server.

Faults stay with their source: extraction raises on a source server it cannot read, so that Prefect's
retries of the source's task (exponential backoff) apply, each attempt's extraction under the timeout; the
last failure reaches the bronze stage as an exception and becomes that source's failed outcome (C1, and C4 while the marts keep
its earlier data). The others complete, and the flow run ends "Completed with failures", naming them.

Task runner: threads (`QINGFENG_MAX_WORKERS`, default 4) or, with `QINGFENG_DASK` set to a scheduler
address or `local`, prefect-dask's DaskTaskRunner (which needs a Prefect server, not the ephemeral API).
"""

from __future__ import annotations

import logging
import os
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline networks
os.environ.setdefault("DO_NOT_TRACK", "1")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.runtime import task_run as task_run_info  # noqa: E402
from prefect.states import Completed  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402
from prefect.tasks import Task, exponential_backoff  # noqa: E402
from prefect.utilities.timeout import timeout  # noqa: E402

from flows import progress, steps  # noqa: E402
from flows.extract import Pulled  # noqa: E402
from flows.registry import Source, load_registry  # noqa: E402
from flows.state import StateStore  # noqa: E402
from warehouse.layout import Layout  # noqa: E402

SHANGHAI = ZoneInfo("Asia/Shanghai")


# The pipeline's own progress lines (each rule's flags and seconds, …) are INFO, and shown with the run's
# log (PREFECT_LOGGING_EXTRA_LOGGERS=qingfeng also hands them to Prefect's API log handler).
logging.getLogger("qingfeng").setLevel(logging.INFO)


def task_runner(max_workers: int | None = None, dask: str | None = None):
    """Threads in this process (the default), or a Dask cluster: `dask` is a scheduler address
    (tcp://host:8786) or "local" (a LocalCluster of `max_workers` single-threaded workers)."""
    max_workers = max_workers or int(os.environ.get("QINGFENG_MAX_WORKERS", "4"))
    dask = dask if dask is not None else os.environ.get("QINGFENG_DASK") or None
    if not dask:
        return ThreadPoolTaskRunner(max_workers=max_workers)
    from prefect_dask import DaskTaskRunner  # optional: pip install prefect-dask

    if dask == "local":
        return DaskTaskRunner(cluster_kwargs={"n_workers": max_workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    return DaskTaskRunner(address=dask)


def today_shanghai() -> date:
    return datetime.now(SHANGHAI).date()


def _extract_and_report(source: Source, state_url: str, as_of: date, settings: steps.RunSettings,
                        attempt: int) -> tuple[steps.SourceOutcome, Pulled | None]:
    """Attempt `attempt` at extracting `source`, under the timeout; a source server that cannot be read
    raises, carrying the attempts so far."""
    progress.report(source.id, "extract", "running" if attempt == 1 else "retrying", f"attempt {attempt}")
    state = StateStore(state_url)
    try:
        # Prefect's own timeout, as it times a task: on a worker thread it takes effect between the
        # extraction's queries (see README).
        with timeout(settings.extract_timeout_seconds or None):
            extracted = steps.extract_stage(source, state, as_of, settings, raise_transient=True)
    except Exception as e:
        e.attempts = attempt  # type: ignore[attr-defined]
        raise
    finally:
        state.dispose()
    outcome = extracted[0]
    progress.report(source.id, "extract", "ok" if outcome.status == "ok" else "failed",
                    _rows(outcome, "extract") if outcome.status == "ok" else str(outcome.error))
    return extracted


def _rows(outcome: steps.SourceOutcome, stage: str) -> str:
    return f"{sum(r.rows_out for r in outcome.records if r.stage == stage)} rows"


def _land_and_report(extracted: tuple[steps.SourceOutcome, Pulled | None] | BaseException, source: Source,
              warehouse: str, run_id: str, settings: steps.RunSettings | None = None):
    if isinstance(extracted, BaseException):  # the extraction failed for good (retries, timeout)
        attempts = getattr(extracted, "attempts", (settings.extract_retries + 1) if settings else 1)
        outcome = steps.extract_failed(source, extracted, getattr(extracted, "seconds", 0.0), attempts)
        progress.report(source.id, "extract", "failed", str(outcome.error))
        return outcome, None
    outcome, pulled = extracted
    if pulled is None or outcome.status != "ok":
        progress.report(source.id, "bronze", "skipped")
        return outcome, pulled
    outcome = steps.land_stage(Layout(Path(warehouse)), outcome, pulled, run_id)
    progress.report(source.id, "bronze", outcome.status if outcome.status == "ok" else "failed",
                    _rows(outcome, "bronze") if outcome.status == "ok" else str(outcome.error))
    return outcome, pulled


def _normalize_and_report(
    landed: tuple[steps.SourceOutcome, Pulled | None], source: Source, warehouse: str, state_url: str,
    as_of: date, run_id: str,
) -> steps.SourceOutcome:
    outcome, pulled = landed
    if pulled is None or outcome.status != "ok":
        progress.report(source.id, "normalize", "skipped" if outcome.status == "ok" else "failed",
                        str(outcome.error or ""))
        return outcome
    state = StateStore(state_url)
    try:
        outcome = steps.normalize_stage(Layout(Path(warehouse)), state, source, outcome, pulled, as_of, run_id)
    finally:
        state.dispose()
    c = outcome.counts.values()
    unchanged = sum(r.rows_in - r.rows_out for r in outcome.records if r.stage == "diff")
    progress.report(source.id, "normalize", "ok" if outcome.status == "ok" else "failed",
                    f"{sum(x['silver'] for x in c)} silver, {sum(x['quarantined'] for x in c)} quarantined"
                    + (f", {unchanged} unchanged since the last delivery" if unchanged else "")
                    if outcome.status == "ok" else str(outcome.error))
    return outcome


# Every task has side effects and must run each time (NO_CACHE); Prefect's default cache policy would also
# hash each task's inputs to make a cache key nobody uses.
@task(name="source", task_run_name="source-{source.id}", cache_policy=NO_CACHE)
def source_task(source: Source, warehouse: str, state_url: str, as_of: date, run_id: str,
                settings: steps.RunSettings) -> steps.SourceOutcome:
    """One source's night: extract, then bronze and normalize (their seconds are in the run records and
    the progress display). An extraction that fails is retried by running the task again
    (`with_retries`: with backoff, each attempt's extraction under the timeout); nothing is landed before
    it succeeds. One that still fails reaches the bronze stage as its exception, which becomes the source's
    failed outcome; the other sources go on. (The extraction was a nested task run of its own: Prefect's
    server spends about 25 ms of CPU on each task run, beside the night, on the same machine.)"""
    attempt = task_run_info.run_count or 1
    try:
        extracted = _extract_and_report(source, state_url, as_of, settings, attempt)
    except Exception as e:  # noqa: BLE001 — retries spent: the source's failure, not the night's
        if attempt <= settings.extract_retries:
            progress.report(source.id, "extract", "retrying", f"attempt {attempt} failed: {e}")
            raise  # Prefect runs the task again after the backoff
        extracted = e
    landed = _land_and_report(extracted, source, warehouse, run_id, settings)
    return _normalize_and_report(landed, source, warehouse, state_url, as_of, run_id)


def with_retries(runnable: Task, settings: steps.RunSettings) -> Task:
    """`runnable` (`source_task`) retried `extract_retries` times after `retry_backoff_seconds`, doubling."""
    return runnable.with_options(
        retries=settings.extract_retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=settings.retry_backoff_seconds)
        if settings.extract_retries else 0,
    )


@task(name="rules-and-marts", cache_policy=NO_CACHE)
def finish_task(warehouse: str, state_url: str, sources_file: str, outcomes: dict, as_of: date, run_id: str,
                dry_run_mail: str | None = None):
    state = StateStore(state_url)
    progress.report("*", "rules-and-marts", "running")
    try:
        result = steps.finish_night(
            Layout(Path(warehouse)), state, load_registry(Path(sources_file)), outcomes, as_of, run_id,
            dry_run_mail=Path(dry_run_mail) if dry_run_mail else None,
        )
    except Exception as e:
        progress.report("*", "rules-and-marts", "failed", str(e))
        raise
    finally:
        state.dispose()
    progress.report("*", "rules-and-marts", "ok", f"{result.flags.height} flags, "
                    f"{sum(result.mart_rows.values())} mart rows")
    return result


FAILED_STATE = "Completed with failures"


def failure_message(result: steps.NightResult) -> str | None:
    """What the flow run's final state says when sources failed: which, and since when they are stale."""
    if not result.failed_sources:
        return None
    parts = []
    for sid in result.failed_sources:
        o = result.outcomes[sid]
        since = f"last good {o.last_good}" if o.last_good else "no earlier data"
        parts.append(f"{sid} ({since})")
    return (f"completed with failures: {len(parts)} source(s) could not be read (C1; their earlier data "
            f"stays in the marts marked stale, C4): " + ", ".join(parts))


def summary_markdown(result: steps.NightResult) -> str:
    failed = failure_message(result)
    lines = [f"# 清风 nightly run {result.run_id} (as of {result.as_of})", "",
             f"**{FAILED_STATE}** — {failed}" if failed else "**Completed** — every source was read.", "",
             "| source | status | table | in | silver | quarantined |", "|---|---|---|---:|---:|---:|"]
    for sid, o in sorted(result.outcomes.items()):
        counts = o.counts or {"—": {"in": 0, "silver": 0, "quarantined": 0}}
        for table, c in counts.items():
            lines.append(f"| {sid} | {o.status} | {table} | {c['in']} | {c['silver']} | {c['quarantined']} |")
    lines += ["", "| mart | rows |", "|---|---:|", *[f"| {m} | {n} |" for m, n in result.mart_rows.items()]]
    by_rule = result.flags.group_by("rule_id").len().sort("rule_id")
    lines += ["", "| rule | flags |", "|---|---:|", *[f"| {r} | {n} |" for r, n in by_rule.iter_rows()]]
    if result.mail is not None:
        lines += ["", result.mail.line()]
    return "\n".join(lines)


@flow(name="qingfeng-nightly", task_runner=task_runner())
def nightly(sources_file: str, warehouse: str, as_of: date | None = None, overlap_days: float = 1.0,
            dry_run_mail: str | None = None, extract_retries: int = 3, retry_backoff_seconds: float = 30.0,
            extract_timeout_seconds: float = 1800.0) -> steps.NightResult:
    """Pull every source, clean, validate, publish the marts for business date `as_of` (default: today
    in Asia/Shanghai, when the run starts), send the alerts (as .eml files into `dry_run_mail` instead
    of SMTP when given). A source server that cannot be read is retried `extract_retries` times after
    `retry_backoff_seconds`, doubling; each attempt may take `extract_timeout_seconds`."""
    from datetime import timedelta

    as_of = as_of or today_shanghai()
    logger = get_run_logger()
    registry = load_registry(Path(sources_file))
    layout = Layout(Path(warehouse).resolve())
    layout.root.mkdir(parents=True, exist_ok=True)
    state_url = layout.state_url
    StateStore(state_url).dispose()  # create the state tables once, before the workers race to
    settings = steps.RunSettings(overlap=timedelta(days=overlap_days), extract_retries=extract_retries,
                                 retry_backoff_seconds=retry_backoff_seconds,
                                 extract_timeout_seconds=extract_timeout_seconds)
    run_id = steps.new_run_id(as_of)
    logger.info("run %s: %d sources, as of %s", run_id, len(registry.sources), as_of)

    # One task a source, running that source's extract → bronze → normalize one after the other:
    # a worker holds one source's raw rows at a time, so memory grows with the workers, not the city.
    one_source = with_retries(source_task, settings)
    futures = {s.id: one_source.submit(s, str(layout.root), state_url, as_of, run_id, settings)
               for s in registry.sources}
    try:  # while the sources are in flight, this thread has nothing else to do
        steps.load_validation()
    except Exception:  # noqa: BLE001 — the cross-source stage imports them again, and fails there if it must
        logger.exception("loading Great Expectations and the rules ahead of the cross-source stage failed")
    outcomes = {sid: f.result() for sid, f in futures.items()}
    for sid, o in outcomes.items():
        if o.status != "ok":
            logger.warning("source %s failed: %s", sid, o.error)
    result = finish_task(str(layout.root), state_url, sources_file, outcomes, as_of, run_id,
                         str(Path(dry_run_mail).resolve()) if dry_run_mail else None)
    create_markdown_artifact(key="qingfeng-night", markdown=summary_markdown(result),
                             description=f"清风 nightly run {run_id}")
    failed = failure_message(result)
    if failed:
        logger.warning(failed)
        return Completed(name=FAILED_STATE, message=failed, data=result)
    return result


def run_nightly(sources_file: Path, warehouse: Path, as_of: date | None, max_workers: int = 4,
                overlap_days: float = 1.0, dry_run_mail: Path | None = None, *,
                settings: steps.RunSettings | None = None, dask: str | None = None,
                return_state: bool = False):
    """Run the flow with `max_workers` sources in flight at once (threads, or a Dask cluster: `dask`
    is a scheduler address or "local"). Returns the NightResult, or the flow run's final State."""
    s = settings or steps.RunSettings()
    runnable = nightly.with_options(task_runner=task_runner(max_workers, dask))
    return runnable(str(sources_file), str(warehouse), as_of, overlap_days,
                    str(dry_run_mail) if dry_run_mail else None, s.extract_retries, s.retry_backoff_seconds,
                    s.extract_timeout_seconds, return_state=return_state)
