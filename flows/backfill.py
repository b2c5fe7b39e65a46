"""`qingfeng backfill`: run the nightly flow for every business date from D1 to D2, in order.

Each date is a flow run of its own, exactly as the night of that date would have been: watermarks and
filedrop deliveries are kept per business date, so date D starts from where the night before D ended.
Rerunning a date is idempotent: it pulls the same rows again, replaces that date's marts (one atomic
publish) and sends no email a run of that date already sent (the alert outbox remembers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path

from flows import steps


def business_dates(start: date, end: date) -> list[date]:
    if end < start:
        raise ValueError(f"--to {end} is before --from {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def backfill(sources_file: Path, warehouse: Path, start: date, end: date, max_workers: int = 4,
             overlap_days: float = 1.0, dry_run_mail: Path | None = None,
             settings: steps.RunSettings | None = None, dask: str | None = None,
             on_night: Callable[[steps.NightResult], None] | None = None) -> Iterator[steps.NightResult]:
    """Run each date from `start` to `end` (inclusive) in order; yields each night's result."""
    from flows.nightly import run_nightly

    for day in business_dates(start, end):
        result = run_nightly(sources_file, warehouse, day, max_workers=max_workers, overlap_days=overlap_days,
                             dry_run_mail=dry_run_mail, settings=settings, dask=dask)
        if on_night is not None:
            on_night(result)
        yield result
