"""`qingfeng`: the command line. Every command that reads or writes the warehouse takes --warehouse."""

from __future__ import annotations

import sys
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.table import Table

from warehouse.layout import default_warehouse

app = typer.Typer(add_completion=False, no_args_is_help=True, help="清风 Qingfeng: nightly supervision data pipeline.")
# Piped output (a log, a file) is read whole: do not squeeze tables to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)

WarehouseOpt = typer.Option(None, "--warehouse", "-w", help="Warehouse folder (default: data/warehouse).")
DaskOpt = typer.Option(None, "--dask", envvar="QINGFENG_DASK", help="Run the per-source tasks on Dask: a scheduler "
                       "address (tcp://host:8786) or 'local' (needs prefect-dask and a Prefect server).")


def today_shanghai() -> date:
    return datetime.now(ZoneInfo("Asia/Shanghai")).date()


def _parse_date(value: str | None, name: str) -> date:
    if value is None:
        return today_shanghai()
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)", param_hint=name) from None


@app.command()
def simulate(
    out: Path = typer.Option(..., "--out", help="Folder to write the simulated city into."),
    sources: int = typer.Option(8, "--sources", min=1, help="Number of district/department systems."),
    projects_per_source: int = typer.Option(60, "--projects-per-source", min=1),
    seed: int = typer.Option(7, "--seed"),
    as_of: str = typer.Option(None, "--as-of", help="Business date the city is simulated up to."),
    pg_url: str = typer.Option(None, "--pg-url", help="Put platform sources into this PostgreSQL server."),
) -> None:
    """Write a simulated city (sources, sources.toml, labels.csv) that follows the contract."""
    from simulator import simulate_city

    summary = simulate_city(out, sources=sources, projects_per_source=projects_per_source, seed=seed,
                            as_of=_parse_date(as_of, "--as-of"), pg_url=pg_url)
    console.print(f"[green]simulated city written to[/] {out}")
    console.print(summary)


@app.command()
def run(
    sources: Path = typer.Option(..., "--sources", help="The source registry (sources.toml)."),
    warehouse: Path = WarehouseOpt,
    as_of: str = typer.Option(None, "--as-of", help="Business date (default: today in Asia/Shanghai)."),
    max_workers: int = typer.Option(4, "--max-workers", min=1, help="Sources processed at once."),
    overlap_days: float = typer.Option(1.0, "--overlap-days", min=0, help="Re-pull window behind the watermark."),
    dry_run_mail: Path = typer.Option(None, "--dry-run-mail", help="Write the alert emails as .eml files into "
                                      "this folder instead of sending them (same outbox: a rerun writes nothing new)."),
    dask: str = DaskOpt,
) -> None:
    """Run the nightly flow: extract, clean, validate, publish the marts, send the alerts."""
    from flows import progress
    from flows.nightly import run_nightly
    from flows.registry import RegistryError, load_registry
    from flows.state import StateUnavailable

    warehouse = warehouse or default_warehouse()
    day = _parse_date(as_of, "--as-of")
    try:
        ids = [s.id for s in load_registry(sources).sources]
        with _api_for(dask), progress.showing(ids, err):  # Rich in a terminal, plain lines otherwise
            result = run_nightly(sources, warehouse, day, max_workers=max_workers, overlap_days=overlap_days,
                                 dry_run_mail=dry_run_mail, dask=dask)
    except RegistryError as e:
        err.print(f"[red]cannot run:[/] {e}")
        raise typer.Exit(2) from None
    except StateUnavailable as e:  # locked or unreachable: nothing moved, the night can simply be rerun
        err.print(f"[red]cannot run:[/] {e}")
        raise typer.Exit(1) from None
    _print_night(result, warehouse)


def _print_night(result, warehouse: Path) -> None:
    table = Table(title=f"清风 run {result.run_id} — as of {result.as_of}")
    for col in ("source", "status", "rows in", "silver", "quarantined", "flags"):
        table.add_column(col, justify="right" if col not in ("source", "status") else "left")
    flag_counts = dict(result.flags.group_by("source_id").len().iter_rows())
    for sid, o in sorted(result.outcomes.items()):
        c = o.counts.values()
        table.add_row(sid, o.status if o.status == "ok" else f"[red]{o.status}[/]",
                      str(sum(x["in"] for x in c)), str(sum(x["silver"] for x in c)),
                      str(sum(x["quarantined"] for x in c)), str(flag_counts.get(sid, 0)))
    console.print(table)
    rules = ", ".join(f"{r}={n}" for r, n in result.flags.group_by("rule_id").len().sort("rule_id").iter_rows())
    console.print(f"flags by rule: {rules or 'none'}")
    console.print(f"marts: {warehouse / 'marts'}  ({', '.join(f'{m}={n}' for m, n in result.mart_rows.items())})")
    console.print(f"DuckDB views: {warehouse / 'qingfeng.duckdb'}")
    if result.failed_sources:
        console.print(f"[yellow]sources that failed tonight (C1):[/] {', '.join(result.failed_sources)}")
    _print_mail(result)


def _print_mail(result) -> None:
    from rich.markup import escape

    mail = getattr(result, "mail", None)
    if mail is None:
        console.print("[red]alerts: raising or sending failed (see the log); the alerts mart shows the flags[/]")
        return
    console.print(escape(mail.line()))
    for line in mail.errors[:10]:
        console.print(f"  [yellow]not sent:[/] {escape(line)}")
    if len(mail.errors) > 10:
        console.print(f"  … {len(mail.errors) - 10} more (see the alerts mart: status, last_error)")


@app.command()
def query(
    sql: str = typer.Argument(..., help="SQL over the mart views (e.g. SELECT * FROM project_health LIMIT 5)."),
    warehouse: Path = WarehouseOpt,
    format: str = typer.Option("table", "--format", help="table | csv | parquet"),
    out: Path = typer.Option(None, "--out", help="File for csv/parquet output (csv defaults to stdout)."),
) -> None:
    """Query the marts with DuckDB."""
    import duckdb
    from rich.markup import escape

    from warehouse.analysts import run_query

    try:
        frame = run_query(_layout(warehouse), sql)
    except (duckdb.Error, FileNotFoundError) as e:
        err.print(f"[red]query failed:[/] {escape(str(e))}")
        raise typer.Exit(1) from None
    if format == "csv":
        if out:
            frame.write_csv(out)
        else:
            sys.stdout.write(frame.write_csv())
    elif format == "parquet":
        if not out:
            raise typer.BadParameter("--format parquet needs --out FILE")
        frame.write_parquet(out, compression="zstd")
    else:
        table = Table()
        for c in frame.columns:
            table.add_column(c)
        for row in frame.head(200).iter_rows():
            table.add_row(*["" if v is None else str(v) for v in row])
        console.print(table)
        if frame.height > 200:
            console.print(f"… {frame.height - 200} more rows (use --format csv)")


@app.command()
def sample(
    warehouse: Path = WarehouseOpt,
    as_of: str = typer.Option(None, "--as-of", help="Business date of the health check to draw from (default: latest)."),
    n: int = typer.Option(20, "--n", min=1, help="Number of projects to draw."),
    seed: int = typer.Option(None, "--seed", min=0, help="Seed of the draw (default: a fresh one, printed and "
                             "recorded, so the same draw can be made again)."),
) -> None:
    """Draw projects for unannounced spot checks (明察暗访): at random, weighted by risk, every project with a
    chance. Published as the spot_checks mart for that date."""
    import secrets

    from rich.markup import escape

    from warehouse.sampling import sample_spot_checks

    seed = secrets.randbelow(2**31) if seed is None else seed
    day = None if as_of is None else _parse_date(as_of, "--as-of")
    try:
        drawn, day = sample_spot_checks(_layout(warehouse), n=n, seed=seed, as_of=day)
    except FileNotFoundError as e:
        err.print(f"[red]cannot sample:[/] {escape(str(e))}")
        raise typer.Exit(2) from None
    population = drawn["population"][0] if drawn.height else 0
    table = Table(title=f"明察暗访 spot checks — as of {day}, seed {seed}, {drawn.height} of {population} projects")
    for col in ("#", "source", "project", "title", "unit", "rag", "health", "weight", "why drawn"):
        table.add_column(col, justify="right" if col in ("#", "health", "weight") else "left")
    for r in drawn.sort("draw_rank").iter_rows(named=True):
        table.add_row(str(r["draw_rank"]), r["source_id"], r["project_id"], escape(r["title"] or ""),
                      r["unit_code"] or "", r["rag"] or "", f"{r['health_score']:.1f}" if r["health_score"] is not None
                      else "", f"{r['risk_weight']:.2f}", escape("；".join(r["reasons"])))
    console.print(table)
    console.print(f"published: spot_checks as_of={day}  (qingfeng query \"SELECT * FROM spot_checks ORDER BY draw_rank\")")


@app.command()
def serve(
    sources: Path = typer.Option(..., "--sources", help="The source registry (sources.toml)."),
    warehouse: Path = WarehouseOpt,
    cron: str = typer.Option("0 2 * * *", "--cron", help="When the night runs."),
    timezone: str = typer.Option("Asia/Shanghai", "--timezone", help="Time zone of the cron."),
    max_workers: int = typer.Option(4, "--max-workers", min=1, help="Sources processed at once."),
    overlap_days: float = typer.Option(1.0, "--overlap-days", min=0, help="Re-pull window behind the watermark."),
    extract_retries: int = typer.Option(3, "--extract-retries", min=0, help="Retries of a source server that "
                                        "cannot be read."),
    retry_backoff: float = typer.Option(30.0, "--retry-backoff", min=0, help="Seconds before the first retry "
                                        "(doubling after)."),
    extract_timeout: float = typer.Option(1800.0, "--extract-timeout", min=0, help="Seconds one extraction "
                                          "attempt may take."),
    dry_run_mail: Path = typer.Option(None, "--dry-run-mail", help="Write the alert emails as .eml files here "
                                      "instead of sending them."),
    dask: str = DaskOpt,
    port: int = typer.Option(None, "--port", help="Port of the local Prefect server (when PREFECT_API_URL is "
                             "not set; default: a free one)."),
) -> None:
    """Serve the nightly deployment on a schedule (Prefect server at PREFECT_API_URL, or a local one)."""
    from flows.registry import RegistryError
    from flows.serve import serve as serve_nightly
    from flows.steps import RunSettings

    settings = RunSettings(max_workers=max_workers, extract_retries=extract_retries,
                           retry_backoff_seconds=retry_backoff, extract_timeout_seconds=extract_timeout)
    try:
        serve_nightly(sources, warehouse or default_warehouse(), cron, timezone, settings, overlap_days,
                      dry_run_mail, dask=dask, port=port)
    except RegistryError as e:
        err.print(f"[red]cannot serve:[/] {e}")
        raise typer.Exit(2) from None


@app.command()
def backfill(
    sources: Path = typer.Option(..., "--sources", help="The source registry (sources.toml)."),
    warehouse: Path = WarehouseOpt,
    date_from: str = typer.Option(..., "--from", help="First business date (YYYY-MM-DD)."),
    date_to: str = typer.Option(..., "--to", help="Last business date (YYYY-MM-DD), inclusive."),
    max_workers: int = typer.Option(4, "--max-workers", min=1, help="Sources processed at once."),
    overlap_days: float = typer.Option(1.0, "--overlap-days", min=0, help="Re-pull window behind the watermark."),
    dry_run_mail: Path = typer.Option(None, "--dry-run-mail", help="Write the alert emails as .eml files here "
                                      "instead of sending them."),
    dask: str = DaskOpt,
) -> None:
    """Run the night of every date from --from to --to, in order (a rerun of a date is idempotent)."""
    from flows.backfill import backfill as run_backfill
    from flows.backfill import business_dates
    from flows.registry import RegistryError

    warehouse = warehouse or default_warehouse()
    start, end = _parse_date(date_from, "--from"), _parse_date(date_to, "--to")
    try:
        days = business_dates(start, end)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--to") from None
    table = Table(title=f"清风 backfill {start} → {end} ({len(days)} nights)")
    for col in ("as of", "run", "status", "flags", "failed sources"):
        table.add_column(col)
    try:
        with _api_for(dask):
            for result in run_backfill(sources, warehouse, start, end, max_workers=max_workers,
                                       overlap_days=overlap_days, dry_run_mail=dry_run_mail, dask=dask):
                failed = ", ".join(result.failed_sources)
                console.print(f"{result.as_of}: {'completed with failures: ' + failed if failed else 'completed'}"
                              f" ({result.flags.height} flags)")
                table.add_row(str(result.as_of), result.run_id, "[yellow]with failures[/]" if failed else "[green]ok[/]",
                              str(result.flags.height), failed)
    except RegistryError as e:
        err.print(f"[red]cannot run:[/] {e}")
        raise typer.Exit(2) from None
    console.print(table)


@app.command()
def status(
    warehouse: Path = WarehouseOpt,
    last: int = typer.Option(7, "--last", min=1, help="How many runs to show."),
) -> None:
    """The last runs, and any source failing or stale. Exit code 1 when one is."""
    import os

    from rich.markup import escape

    from flows.status import status as read_status

    layout = _layout(warehouse)
    if not layout.state_db.exists() and not os.environ.get("QINGFENG_STATE_URL"):
        err.print(f"[red]no runs yet:[/] {layout.state_db} does not exist")
        raise typer.Exit(2)
    st = read_status(layout, limit=last)
    if st.nights.is_empty():
        console.print("no runs recorded yet")
        return
    nights = Table(title=f"清风 — last {st.nights.height} runs ({layout.root})")
    for col in ("as of", "run", "finished (UTC)", "status", "sources", "flags", "failed"):
        nights.add_column(col)
    for r in st.nights.iter_rows(named=True):
        colour = "yellow" if r["failed"] else "green"
        nights.add_row(str(r["as_of"]), r["run_id"], r["finished"].strftime("%Y-%m-%d %H:%M:%S"),
                       f"[{colour}]{r['status']}[/]", str(r["sources"]), str(r["flags"]), ", ".join(r["failed"]))
    console.print(nights)
    srcs = Table(title=f"sources in the latest run (as of {st.nights['as_of'][0]})")
    for col in ("source", "status", "last good", "stale", "message"):
        srcs.add_column(col)
    for r in st.sources.iter_rows(named=True):
        srcs.add_row(r["source_id"], "[red]failed[/]" if r["status"] == "failed" else "ok",
                     str(r["last_good"] or "—"), "[yellow]stale[/]" if r["stale"] else "",
                     escape((r["message"] or "")[:100]))
    console.print(srcs)
    if st.failing:
        console.print(f"[red]failing:[/] {', '.join(st.failing)}")
    if st.stale:
        console.print(f"[yellow]stale in the marts (C4):[/] {', '.join(st.stale)}")
    if st.healthy:
        console.print("[green]every source read and fresh[/]")
    else:
        raise typer.Exit(1)


def _api_for(dask: str | None):
    """Dask needs a real Prefect server (on the ephemeral API each worker would start its own): the one
    at PREFECT_API_URL, or a local one for the duration of the command."""
    from contextlib import nullcontext

    if not dask:
        return nullcontext()
    from flows.serve import prefect_api

    return prefect_api()


def _layout(warehouse: Path | None):
    from warehouse.layout import Layout

    return Layout(warehouse or default_warehouse())


if __name__ == "__main__":
    app()
