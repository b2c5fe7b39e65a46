"""spot_checks (明察暗访): weighted sampling without replacement, reproducible for a seed; `qingfeng sample`."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.test_marts import _UNMASKED_ID, _UNMASKED_PHONE, AS_OF, _strings, make_ctx
from warehouse.analysts import refresh_views, run_query
from warehouse.layout import Layout
from warehouse.marts import build_all, spot_checks
from warehouse.marts.spot_checks import draw, risk_weights, weighted_sample
from warehouse.publish import partitions, publish, read_mart


def test_weighted_sample_is_pure_and_without_replacement():
    w = np.array([1.0, 2.0, 3.0, 4.0, 5.0] * 20)
    a, b = weighted_sample(w, 10, seed=7), weighted_sample(w, 10, seed=7)
    assert a.tolist() == b.tolist()
    assert len(set(a.tolist())) == 10
    assert weighted_sample(w, 10, seed=8).tolist() != a.tolist()
    assert sorted(weighted_sample(w, 1000, seed=1).tolist()) == list(range(100))  # n > population: all
    assert weighted_sample(np.array([]), 3, seed=1).tolist() == []
    with pytest.raises(ValueError):
        weighted_sample(np.array([1.0, 0.0]), 1, seed=1)


def test_weighted_sample_follows_the_weights_and_gives_everyone_a_chance():
    # 90 plain projects (weight 1) and 10 risky ones (weight 10): a first draw is risky with P = 100/190
    w = np.array([1.0] * 90 + [10.0] * 10)
    firsts = np.array([weighted_sample(w, 1, seed=s)[0] for s in range(4000)])
    share = float(np.mean(firsts >= 90))
    assert share == pytest.approx(100 / 190, abs=0.03)
    assert len(set(firsts.tolist())) == 100  # every project was drawn first at least once
    # drawing 20 of them: risky ones are far more likely to be in, but never certain
    counts = np.zeros(100)
    for s in range(1000):
        counts[weighted_sample(w, 20, seed=s)] += 1
    assert counts[90:].mean() > 3 * counts[:90].mean()
    assert counts.min() > 0 and counts.max() < 1000


def health_frame() -> pl.DataFrame:
    return build_all(make_ctx())["project_health"]


def test_risk_weights_and_reasons():
    health = health_frame()
    cancelled = health.head(1).with_columns(project_id=pl.lit("PX"), status=pl.lit("cancelled"))
    pop = risk_weights(pl.concat([health, cancelled]), make_ctx().flags)
    assert "PX" not in pop["project_id"].to_list()  # cancelled projects are not inspected
    assert pop.select("source_id", "project_id").rows() == sorted(pop.select("source_id", "project_id").rows())
    assert (pop["risk_weight"] >= 1.0).all()
    assert pop["weight_share"].sum() == pytest.approx(1.0)
    by = {(r["source_id"], r["project_id"]): r for r in pop.iter_rows(named=True)}
    p1, p3 = by[("s1", "P1")], by[("s1", "P3")]
    # P1: 2 fabrication + 2 traces flags (8), 5 days overdue (0.5), score 52.42 (1.9), owner A failed F5 (2)
    assert p1["risk_weight"] == pytest.approx(1 + 8 + 0.5 + 4 * (100 - 52.42) / 100 + 2, abs=1e-3)
    assert p1["reasons"] == ["数据造假旗标 2 条", "过度留痕旗标 2 条", "逾期 5 天", "体检 red 52.4",
                             "责任人或单位数字检验异常(F5)"]
    assert p3["risk_weight"] == 1.0 and p3["reasons"] == ["随机抽取（无风险信号）"]


def test_draw_is_reproducible_and_conforms():
    health = health_frame()
    flags = make_ctx().flags
    a = draw(health, flags, n=3, seed=11, as_of=AS_OF)
    b = draw(health.reverse(), flags.reverse(), n=3, seed=11, as_of=AS_OF)  # input order does not matter
    assert a.equals(b)
    assert list(a.columns) == list(spot_checks.COLUMNS)
    assert a.schema == pl.Schema({c: t for c, (t, _m) in spot_checks.COLUMNS.items()})
    assert sorted(a["draw_rank"].to_list()) == [1, 2, 3]
    assert (a["seed"] == 11).all() and (a["population"] == 4).all() and (a["as_of"] == AS_OF).all()
    assert a.select("source_id", "project_id").is_duplicated().sum() == 0
    assert draw(health, flags, n=10, seed=11, as_of=AS_OF).height == 4


def test_no_unmasked_pii_in_spot_checks():
    health = health_frame().with_columns(title=pl.lit("项目 联系人13812345678 身份证11010119900307123X"))
    df = draw(health, None, n=4, seed=1, as_of=AS_OF)
    assert df.height == 4
    for s in _strings(df):
        assert not _UNMASKED_PHONE.search(s) and not _UNMASKED_ID.search(s), s


def test_sample_command_publishes_the_draw(tmp_path):
    layout = Layout(tmp_path / "wh")
    marts = build_all(make_ctx())
    publish(layout, AS_OF, marts)
    refresh_views(layout)
    runner = CliRunner()
    args = ["sample", "--warehouse", str(layout.root), "--as-of", AS_OF.isoformat(), "--n", "2", "--seed", "5"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "seed 5" in res.output and "2 of 4 projects" in res.output
    first = read_mart(layout, "spot_checks", AS_OF)
    assert first.height == 2 and (first["seed"] == 5).all()
    assert first.equals(draw(marts["project_health"], marts["dq_flags"], n=2, seed=5, as_of=AS_OF))
    # the other marts keep their partition; the analysts' views know the new mart
    for name in marts:
        assert partitions(layout, name) == [AS_OF]
    assert run_query(layout, "SELECT count(*) FROM spot_checks").item() == 2
    assert run_query(layout, "SELECT count(*) FROM spot_checks_history").item() == 2
    # the same seed draws the same projects again (and replaces the partition)
    assert runner.invoke(app, args).exit_code == 0
    assert read_mart(layout, "spot_checks", AS_OF).equals(first)
    # without --as-of: the latest health check; without --seed: a fresh seed, printed and recorded
    res = runner.invoke(app, ["sample", "--warehouse", str(layout.root), "--n", "1"])
    assert res.exit_code == 0, res.output
    seed = read_mart(layout, "spot_checks", AS_OF)["seed"].item()
    assert f"seed {seed}" in res.output
    # a date without a health check is refused
    res = runner.invoke(app, ["sample", "--warehouse", str(layout.root), "--as-of", "2026-01-01"])
    assert res.exit_code == 2 and "no partition" in res.output


def test_query_command_formats(tmp_path):
    layout = Layout(tmp_path / "wh")
    publish(layout, AS_OF, build_all(make_ctx()))
    refresh_views(layout)
    runner = CliRunner()
    sql = "SELECT source_id, project_id, rag FROM project_health ORDER BY ALL"
    res = runner.invoke(app, ["query", "--warehouse", str(layout.root), sql])
    assert res.exit_code == 0 and "P1" in res.output
    res = runner.invoke(app, ["query", "--warehouse", str(layout.root), sql, "--format", "csv"])
    assert res.exit_code == 0 and res.output.splitlines()[0] == "source_id,project_id,rag"
    out = tmp_path / "ph.parquet"
    res = runner.invoke(app, ["query", "--warehouse", str(layout.root), sql, "--format", "parquet", "--out", str(out)])
    assert res.exit_code == 0 and pl.read_parquet(out).height == 4
    res = runner.invoke(app, ["query", "--warehouse", str(layout.root), "SELECT nope FROM project_health"])
    assert res.exit_code == 1  # a clear message, not a traceback
