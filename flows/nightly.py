"""The nightly Prefect flow: a task per stage per source, then the cross-source stages once.

Works on Prefect's ephemeral API (no server) for `qingfeng run`; `qingfeng serve` (a later stage)
schedules the same flow.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline networks
os.environ.setdefault("DO_NOT_TRACK", "1")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from flows import steps  # noqa: E402
from flows.extract import Pulled  # noqa: E402
from flows.registry import Source, load_registry  # noqa: E402
from flows.state import StateStore  # noqa: E402
from warehouse.layout import Layout  # noqa: E402


@task(name="extract", task_run_name="extract-{source.id}")
def extract_task(source: Source, state_url: str, as_of: date, settings: steps.RunSettings):
    state = StateStore(state_url)
    try:
        return steps.extract_stage(source, state, as_of, settings)
    finally:
        state.dispose()


@task(name="bronze", task_run_name="bronze-{source.id}")
def land_task(extracted: tuple[steps.SourceOutcome, Pulled | None], source: Source, warehouse: str, run_id: str):
    outcome, pulled = extracted
    return steps.land_stage(Layout(Path(warehouse)), outcome, pulled, run_id), pulled


@task(name="normalize", task_run_name="normalize-{source.id}")
def normalize_task(
    landed: tuple[steps.SourceOutcome, Pulled | None], source: Source, warehouse: str, state_url: str,
    as_of: date, run_id: str,
) -> steps.SourceOutcome:
    outcome, pulled = landed
    state = StateStore(state_url)
    try:
        return steps.normalize_stage(Layout(Path(warehouse)), state, source, outcome, pulled, as_of, run_id)
    finally:
        state.dispose()


@task(name="rules-and-marts")
def finish_task(warehouse: str, state_url: str, sources_file: str, outcomes: dict, as_of: date, run_id: str):
    state = StateStore(state_url)
    try:
        return steps.finish_night(
            Layout(Path(warehouse)), state, load_registry(Path(sources_file)), outcomes, as_of, run_id
        )
    finally:
        state.dispose()


def summary_markdown(result: steps.NightResult) -> str:
    lines = [f"# 清风 nightly run {result.run_id} (as of {result.as_of})", "",
             "| source | status | table | in | silver | quarantined |", "|---|---|---|---:|---:|---:|"]
    for sid, o in sorted(result.outcomes.items()):
        counts = o.counts or {"—": {"in": 0, "silver": 0, "quarantined": 0}}
        for table, c in counts.items():
            lines.append(f"| {sid} | {o.status} | {table} | {c['in']} | {c['silver']} | {c['quarantined']} |")
    lines += ["", "| mart | rows |", "|---|---:|", *[f"| {m} | {n} |" for m, n in result.mart_rows.items()]]
    by_rule = result.flags.group_by("rule_id").len().sort("rule_id")
    lines += ["", "| rule | flags |", "|---|---:|", *[f"| {r} | {n} |" for r, n in by_rule.iter_rows()]]
    return "\n".join(lines)


@flow(name="qingfeng-nightly", task_runner=ThreadPoolTaskRunner(max_workers=4))
def nightly(sources_file: str, warehouse: str, as_of: date, overlap_days: float = 1.0) -> steps.NightResult:
    """Pull every source, clean, validate, publish the marts for business date `as_of`."""
    from datetime import timedelta

    logger = get_run_logger()
    registry = load_registry(Path(sources_file))
    layout = Layout(Path(warehouse).resolve())
    layout.root.mkdir(parents=True, exist_ok=True)
    state_url = layout.state_url
    StateStore(state_url).dispose()  # create the state tables once, before the workers race to
    settings = steps.RunSettings(overlap=timedelta(days=overlap_days))
    run_id = steps.new_run_id(as_of)
    logger.info("run %s: %d sources, as of %s", run_id, len(registry.sources), as_of)

    extracted = {
        s.id: extract_task.submit(s, state_url, as_of, settings) for s in registry.sources
    }
    landed = {s.id: land_task.submit(extracted[s.id], s, str(layout.root), run_id) for s in registry.sources}
    normalized = {
        s.id: normalize_task.submit(landed[s.id], s, str(layout.root), state_url, as_of, run_id)
        for s in registry.sources
    }
    outcomes = {sid: f.result() for sid, f in normalized.items()}
    for sid, o in outcomes.items():
        if o.status != "ok":
            logger.warning("source %s failed: %s", sid, o.error)
    result = finish_task(str(layout.root), state_url, sources_file, outcomes, as_of, run_id)
    create_markdown_artifact(key="qingfeng-night", markdown=summary_markdown(result),
                             description=f"清风 nightly run {run_id}")
    return result


def run_nightly(sources_file: Path, warehouse: Path, as_of: date, max_workers: int = 4,
                overlap_days: float = 1.0) -> steps.NightResult:
    """Run the flow with `max_workers` sources in flight at once."""
    runnable = nightly.with_options(task_runner=ThreadPoolTaskRunner(max_workers=max_workers))
    return runnable(str(sources_file), str(warehouse), as_of, overlap_days)
