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
) -> None:
    """Run the nightly flow: extract, clean, validate, publish the marts."""
    from flows.nightly import run_nightly
    from flows.registry import RegistryError

    warehouse = warehouse or default_warehouse()
    day = _parse_date(as_of, "--as-of")
    try:
        result = run_nightly(sources, warehouse, day, max_workers=max_workers, overlap_days=overlap_days)
    except RegistryError as e:
        err.print(f"[red]cannot run:[/] {e}")
        raise typer.Exit(2) from None
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


@app.command()
def query(
    sql: str = typer.Argument(..., help="SQL over the mart views (e.g. SELECT * FROM project_health LIMIT 5)."),
    warehouse: Path = WarehouseOpt,
    format: str = typer.Option("table", "--format", help="table | csv | parquet"),
    out: Path = typer.Option(None, "--out", help="File for csv/parquet output (csv defaults to stdout)."),
) -> None:
    """Query the marts with DuckDB."""
    from warehouse.analysts import run_query

    frame = run_query(_layout(warehouse), sql)
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


def _layout(warehouse: Path | None):
    from warehouse.layout import Layout

    return Layout(warehouse or default_warehouse())


if __name__ == "__main__":
    app()
