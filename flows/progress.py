"""Progress of a night, per source and stage: a Rich live display in a terminal, plain lines otherwise.

The flow's tasks call `report(source_id, stage, status, detail)`; whoever runs the flow (the CLI) picks
how it is shown with `showing(...)`. Nothing is shown when nobody asked (a served or Dask run: the tasks
then run in other processes, and the Prefect UI and the run records tell the story).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

STAGES = ("extract", "bronze", "normalize")  # per source; then "rules-and-marts" once for "*"


class Reporter(Protocol):
    def update(self, source_id: str, stage: str, status: str, detail: str = "") -> None: ...


_reporter: Reporter | None = None
_lock = threading.Lock()


def report(source_id: str, stage: str, status: str, detail: str = "") -> None:
    """`status`: running | ok | failed | retrying | skipped. Never raises: progress is not the night."""
    reporter = _reporter
    if reporter is None:
        return
    try:
        with _lock:
            reporter.update(source_id, stage, status, detail)
    except Exception:  # noqa: BLE001
        pass


class PlainReporter:
    """One line per event, for logs and pipes."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr

    def update(self, source_id: str, stage: str, status: str, detail: str = "") -> None:
        if status == "running":
            return  # a line when a stage ends is enough for a log
        ts = datetime.now().astimezone().strftime("%Y-%m-%dT%H:%M:%S%z")
        line = f"{ts} {source_id:<24} {stage:<16} {status:<8} {detail}".rstrip()
        print(line, file=self.stream, flush=True)


class RichReporter:
    """A row per source (stage reached, bar over the three stages) and one for the whole night."""

    COLOURS = {"ok": "green", "failed": "red", "retrying": "yellow", "running": "cyan", "skipped": "dim"}

    def __init__(self, progress: Progress, sources: list[str]):
        self.progress = progress
        self.night = progress.add_task("night", total=len(sources) + 1, stage="sources", status="")
        self.rows: dict[str, TaskID] = {}
        for sid in sources:
            self._row(sid)

    def _row(self, source_id: str) -> TaskID:
        if source_id not in self.rows:
            self.rows[source_id] = self.progress.add_task(source_id, total=len(STAGES), stage="waiting", status="")
        return self.rows[source_id]

    def update(self, source_id: str, stage: str, status: str, detail: str = "") -> None:
        colour = self.COLOURS.get(status, "white")
        text = f"[{colour}]{status}[/] {detail}".strip()
        if source_id == "*":
            done = status in ("ok", "failed")
            self.progress.update(self.night, stage=stage, status=text, advance=1 if done else 0)
            return
        row = self._row(source_id)
        finished = status in ("ok", "skipped", "failed")
        advance = 1 if finished and stage in STAGES else 0
        if status == "failed":  # the rest of its stages will not run: fill the bar, red
            self.progress.update(row, stage=stage, status=text, completed=len(STAGES))
        else:
            self.progress.update(row, stage=stage, status=text, advance=advance)
        task = self.progress.tasks[row]
        if task.completed >= len(STAGES) and not getattr(task, "_counted", False):
            task._counted = True  # type: ignore[attr-defined]
            self.progress.update(self.night, advance=1)


@contextmanager
def showing(sources: list[str], console: Console | None = None, rich: bool | None = None) -> Iterator[Reporter]:
    """Show the night's progress while the block runs: Rich when `console` is a terminal (or `rich`
    says so), plain lines on stderr otherwise."""
    global _reporter
    console = console or Console(stderr=True)
    use_rich = console.is_terminal if rich is None else rich
    if not use_rich:
        reporter: Reporter = PlainReporter()
        _reporter = reporter
        try:
            yield reporter
        finally:
            _reporter = None
        return
    progress = Progress(
        TextColumn("{task.description:<24}"), TextColumn("{task.fields[stage]:<16}"), BarColumn(bar_width=20),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console, transient=False,
    )
    with progress:
        reporter = RichReporter(progress, sources)
        _reporter = reporter
        try:
            yield reporter
        finally:
            _reporter = None
