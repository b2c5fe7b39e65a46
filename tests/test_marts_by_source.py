"""The marts over the city's silver as the pipeline passes it (`CitySilver`: evidence read source by source)
are the marts over every table held at once, as the tests build them."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from expectations.catalog import FLAG_SCHEMA
from tests.test_marts import make_ctx
from warehouse.layout import Layout
from warehouse.marts import MARTS, MODULES, MartInputs, build_all
from warehouse.silver import CitySilver, ShardedTableError


def write_silver(layout: Layout, silver: dict[str, pl.DataFrame]) -> list[str]:
    """Each source's rows of each table where a night writes them; the source ids, plus one with no silver."""
    source_ids = sorted({sid for frame in silver.values() for sid in frame["source_id"].unique().to_list()})
    for table, frame in silver.items():
        for sid in source_ids:
            rows = frame.filter(pl.col("source_id") == sid)
            if not rows.is_empty():
                path = layout.silver_file(table, sid)
                path.parent.mkdir(parents=True, exist_ok=True)
                rows.write_parquet(path)
    return [*source_ids, "s_without_silver"]


@pytest.fixture
def city_ctx(tmp_path: Path) -> MartInputs:
    ctx = make_ctx()
    layout = Layout(tmp_path)
    silver = CitySilver.load(layout, write_silver(layout, ctx.silver), shard_rows=1, hold_rows=0)
    return MartInputs(**{**ctx.__dict__, "silver": silver})


def test_marts_over_city_silver_equal_marts_over_held_silver(city_ctx):
    held = build_all(make_ctx())
    city = build_all(city_ctx)
    for name, build in MARTS.items():
        assert city[name].equals(held[name]), name
        # a builder alone reads the evidence itself instead of the reading `build_all` shares
        assert build(city_ctx).equals(held[name]), name
    flagged_evidence = city["dq_flags"].filter(pl.col("entity_type") == "evidence")
    assert flagged_evidence["project_id"].to_list() == ["P1"]
    assert city["project_health"]["milestones_backed"].sum() > 0


def test_evidence_is_not_read_for_the_whole_city(city_ctx):
    with pytest.raises(ShardedTableError):
        city_ctx.table("evidence")


def test_city_without_sources(tmp_path):
    ctx = MartInputs(as_of=make_ctx().as_of, silver=CitySilver.load(Layout(tmp_path), []),
                     flags=pl.DataFrame(schema=FLAG_SCHEMA))
    for name, df in build_all(ctx).items():
        assert df.height == 0 and list(df.columns) == list(MODULES[name].COLUMNS)
