"""Scale-out: the per-source tasks on a Dask LocalCluster (prefect-dask) give the same marts as threads."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest

from flows.nightly import run_nightly
from flows.serve import prefect_api
from simulator import simulate_city
from warehouse.layout import Layout

pytest.importorskip("prefect_dask")

AS_OF = date(2026, 11, 29)
MARTS = ("dq_flags", "project_health", "person_portrait", "unit_scorecard")


def _marts(layout: Layout) -> dict[str, pl.DataFrame]:
    return {m: pl.read_parquet(layout.mart_partition(m, AS_OF)) for m in MARTS}


def test_dask_local_cluster_gives_the_same_marts(prefect_server, tmp_path):
    city = tmp_path / "city"
    simulate_city(city, sources=5, projects_per_source=10, seed=13, as_of=AS_OF)
    threads = run_nightly(city / "sources.toml", tmp_path / "wh-threads", AS_OF, max_workers=2)
    # DaskTaskRunner needs a real Prefect server: on the ephemeral API every worker would start its own.
    with prefect_api(prefect_server.api_url):
        on_dask = run_nightly(city / "sources.toml", tmp_path / "wh-dask", AS_OF, max_workers=2, dask="local")
    assert on_dask.failed_sources == threads.failed_sources
    assert {s: o.counts for s, o in on_dask.outcomes.items()} == {s: o.counts for s, o in threads.outcomes.items()}
    a, b = _marts(Layout(tmp_path / "wh-threads")), _marts(Layout(tmp_path / "wh-dask"))
    for mart in MARTS:
        assert a[mart].height > 0
        assert a[mart].equals(b[mart]), mart
