"""The simulated city: district systems in the three dialects of the contract, with planted anomalies
and their ground truth (`labels.csv`). Entry point: `simulate_city`.

Modules: registry (which sources), city (vectorized generation), anomalies (planting + labels),
messiness (native rendering + contract §6 mess), writers (SQLite / PostgreSQL / CSV deliveries).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from datetime import date, timedelta
from pathlib import Path

__all__ = ["simulate_city"]


def simulate_city(out_dir: Path, sources: int = 8, projects_per_source: int = 60, seed: int = 7,
                  as_of: date = date(2026, 11, 29), pg_url: str | None = None,
                  workers: int | None = None) -> dict:
    """Write DIR/sources.toml, DIR/sources/* and DIR/labels.csv; return a summary.

    Same arguments, same files (seeded per source; the process pool does not change the output).
    """
    from simulator.registry import plan_sources
    from simulator.writers import write_labels, write_registry

    t0 = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / "sources").exists():
        shutil.rmtree(out_dir / "sources")
    metas = plan_sources(sources, seed)
    for m in metas:
        m.pg = bool(pg_url) and m.dialect == "platform"

    jobs = [(m, projects_per_source, seed, as_of, pg_url, out_dir) for m in metas]
    workers = workers if workers is not None else min(len(jobs), os.cpu_count() or 1, 4)
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: a forked child of a process whose Polars/GX threads hold locks can hang.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_build_source, jobs))
    else:
        results = [_build_source(j) for j in jobs]

    labels, rows = [], Counter()
    for meta, (url, src_labels, counts) in zip(metas, results, strict=True):
        meta.url = url
        labels += [(meta.id, *lab) for lab in src_labels]
        rows.update(counts)
    write_registry(out_dir / "sources.toml", metas)
    write_labels(out_dir / "labels.csv", labels)
    by_rule = Counter(rule for _s, rule, _t, _i in set(labels))
    return {
        "out_dir": str(out_dir),
        "sources": len(metas),
        "sources_by_dialect": dict(Counter(m.dialect for m in metas)),
        "broken_sources": {m.id: sorted(m.roles - {"extra_column"}) for m in metas if m.roles - {"extra_column"}},
        "extra_column_source": [m.id for m in metas if "extra_column" in m.roles],
        "rows": dict(rows),
        "labels": dict(sorted(by_rule.items())),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _build_source(job) -> tuple[str, list[tuple[str, str, str]], dict[str, int]]:
    """Generate, plant, render and write one source; return (url, labels, rows per canonical table)."""
    from simulator.anomalies import Planter, deadline_labels
    from simulator.city import generate_source
    from simulator.messiness import canonical_frames, render
    from simulator.timeutil import day_of
    from simulator.writers import write_filedrop, write_postgres, write_sqlite

    meta, n_projects, seed, as_of, pg_url, out_dir = job
    base = out_dir / "sources"
    if "unreachable" in meta.roles:
        # C1: the registry names a server that cannot be reached.
        if meta.pg:
            url = _pg_unreachable(pg_url, meta.id)
        else:
            url = f"sqlite:///{base / '_offline_volume' / (meta.id + '.sqlite')}"
        return url, [("C1", "source", meta.id)], {}

    src = generate_source(meta, n_projects, seed, as_of)
    as_of_day = day_of(as_of)
    Planter(src, seed, as_of_day).run()
    deadline_labels(src, as_of_day)
    labels = list(src.labels)
    if "missing_table" in meta.roles:
        labels.append(("C1", "source", meta.id))
    if meta.roles & {"stale", "stale_delivery"}:
        labels.append(("C4", "source", meta.id))

    canon = canonical_frames(src)
    counts = {t: f.height for t, f in canon.items()}
    native = render(src, canon, "platform" if meta.dialect == "platform" else "legacy", seed)
    skip = ("problems",) if "missing_table" in meta.roles else ()
    if meta.dialect == "platform" and meta.pg:
        url = write_postgres(pg_url, meta.id, native)
    elif meta.dialect in ("platform", "legacy"):
        path = base / f"{meta.id}.sqlite"
        write_sqlite(path, native, meta.dialect, skip=skip)
        url = f"sqlite:///{path}"
    else:
        newest = as_of - timedelta(days=12 if "stale_delivery" in meta.roles else 1)
        folder = base / meta.id
        write_filedrop(folder, native, meta, newest, skip=skip)
        url = str(folder)
    return url, labels, counts


def _pg_unreachable(pg_url: str, source_id: str) -> str:
    """A database that does not exist on the server (dropped if an earlier run left one)."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(pg_url)
    name = f"{source_id}_offline"
    with psycopg.connect(admin.set(drivername="postgresql").render_as_string(hide_password=False),
                         autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return admin.set(database=name).render_as_string(hide_password=False)
