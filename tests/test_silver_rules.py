"""Upserts, reference resolution, and the contract and deadline rules on small hand-made silver."""

from __future__ import annotations

import json
from datetime import date, datetime
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from expectations.contract import (
    c1_flags,
    c2_flags_from_quarantine,
    c4_flags,
    contract_suite_flags,
    reference_features,
    silver_checks,
)
from expectations.deadline import deadline_flags
from expectations.gx_runner import Validator
from transforms.merge import replace_children, upsert
from transforms.references import dangling, resolve_references
from transforms.schema import QUARANTINE_SCHEMA, TABLES, empty

SH = ZoneInfo("Asia/Shanghai")
AS_OF = date(2026, 11, 29)


def ts(*a: int) -> datetime:
    return datetime(*a, tzinfo=SH)


def frame(table: str, rows: list[dict]) -> pl.DataFrame:
    schema = TABLES[table].schema
    return pl.DataFrame([{c: r.get(c) for c in schema} for r in rows], schema=schema)


def silver() -> dict[str, pl.DataFrame]:
    return {
        "units": frame("units", [{"source_id": "s", "unit_code": "U1", "unit_name": "区", "unit_kind": "district"}]),
        "persons": frame("persons", [{"source_id": "s", "person_id": "P1", "name": "张三", "unit_code": "U1",
                                      "updated_at": ts(2026, 11, 1)}]),
        "projects": frame("projects", [
            {"source_id": "s", "project_id": "X1", "title": "整治", "unit_code": "U1", "owner_id": "p1",
             "status": "in_progress", "updated_at": ts(2026, 11, 1)},
            {"source_id": "s", "project_id": "X2", "title": "撤销的", "unit_code": "U1", "owner_id": "P9",
             "status": "cancelled", "updated_at": ts(2026, 11, 1)},
        ]),
        "milestones": frame("milestones", [
            {"source_id": "s", "milestone_id": "M1", "project_id": "x1", "stage": "initiation",
             "due_date": date(2026, 11, 10), "updated_at": ts(2026, 11, 1)},  # overdue 19 days
            {"source_id": "s", "milestone_id": "M2", "project_id": "X1", "stage": "implementation",
             "due_date": date(2026, 12, 6), "updated_at": ts(2026, 11, 1)},  # due in 7 days
            {"source_id": "s", "milestone_id": "M3", "project_id": "X1", "stage": "interim_result",
             "due_date": date(2026, 12, 7), "updated_at": ts(2026, 11, 1)},  # due in 8 days: not yet
            {"source_id": "s", "milestone_id": "M4", "project_id": "X2", "stage": "initiation",
             "due_date": date(2026, 11, 1), "updated_at": ts(2026, 11, 1)},  # cancelled project
            {"source_id": "s", "milestone_id": "M5", "project_id": "GHOST", "stage": "acceptance",
             "due_date": date(2027, 1, 1), "completed_at": ts(2026, 11, 1), "updated_at": ts(2026, 11, 1)},
        ]),
        "problems": frame("problems", [
            {"source_id": "s", "problem_id": "W1", "unit_code": "U1", "origin": "inspection",
             "found_at": date(2026, 9, 1), "deadline": date(2026, 11, 1), "status": "open",
             "updated_at": ts(2026, 11, 1)},
            {"source_id": "s", "problem_id": "W2", "unit_code": "U1", "origin": "inspection",
             "found_at": date(2026, 9, 1), "deadline": date(2026, 11, 1), "status": "rectified",
             "updated_at": ts(2026, 11, 1)},
        ]),
    }


def test_upsert_latest_version_wins_and_case_is_one_key():
    old = frame("persons", [{"source_id": "s", "person_id": "P1", "name": "旧", "updated_at": ts(2026, 11, 1)},
                            {"source_id": "s", "person_id": "P2", "name": "留", "updated_at": ts(2026, 11, 1)}])
    new = frame("persons", [{"source_id": "s", "person_id": "p1", "name": "新", "updated_at": ts(2026, 11, 2)}])
    merged = upsert(old, new, "persons")
    assert merged.height == 2
    assert dict(zip(merged["name"], merged["person_id"], strict=True)) == {"新": "p1", "留": "P2"}
    # A late-arriving older version does not overwrite the newer one.
    stale = frame("persons", [{"source_id": "s", "person_id": "P2", "name": "更旧", "updated_at": ts(2026, 10, 1)}])
    assert "留" in upsert(merged, stale, "persons")["name"].to_list()


def test_replace_children_follows_parent():
    cur = pl.DataFrame({"source_id": ["s"] * 3, "report_id": ["R1", "R1", "R2"], "metric_name": ["a", "b", "a"],
                        "metric_value": [1.0, 2.0, 3.0]})
    new = pl.DataFrame({"source_id": ["s"], "report_id": ["R1"], "metric_name": ["c"], "metric_value": [9.0]})
    out = replace_children(cur, new, pl.DataFrame({"source_id": ["s"], "report_id": ["R1"]}), "report_id")
    assert sorted(out.select(pl.concat_str("report_id", "metric_name")).to_series().to_list()) == ["R1c", "R2a"]


def test_references_resolve_by_case_and_dangling_are_found():
    s = resolve_references(silver())
    assert s["projects"].filter(pl.col("project_id") == "X1")["owner_id"].item() == "P1"
    assert s["milestones"].filter(pl.col("milestone_id") == "M1")["project_id"].item() == "X1"
    missing = dangling(s, "milestones", TABLES["milestones"].references[0])
    assert missing["milestone_id"].to_list() == ["M5"]


def test_contract_suite_flags_dangling_references_through_gx():
    s = resolve_references(silver())
    s.update({t: empty(t) for t in ("stage_reports", "evidence")})
    flags = contract_suite_flags(Validator(), s)
    c3 = flags.filter(pl.col("rule_id") == "C3")
    got = sorted(zip(c3["entity_type"], c3["entity_id"], strict=True))
    assert got == [("milestone", "M5"), ("project", "X2")]  # ghost project, unknown owner P9
    detail = json.loads(c3.filter(pl.col("entity_id") == "M5")["detail"].item())
    assert detail["column"] == "project_id" and detail["value"] == "GHOST"
    assert flags.filter(pl.col("rule_id") == "C2").is_empty()


def test_contract_suite_in_batches_gives_the_same_flags_and_counts():
    """A city-sized frame is validated in batches (GX memory grows with the batch): the flags, the
    unexpected counts and the element counts must not depend on where the batches are cut."""
    s = resolve_references(silver())
    s["milestones"] = pl.concat([s["milestones"]] * 3).with_columns(
        (pl.col("milestone_id") + "-" + pl.int_range(pl.len()).cast(pl.String)).alias("milestone_id"))
    s.update({t: empty(t) for t in ("stage_reports", "evidence")})
    whole = contract_suite_flags(Validator(), s).sort("rule_id", "entity_id")
    for rows in (1, 2, 4):
        batched = contract_suite_flags(Validator(batch_rows=rows), s).sort("rule_id", "entity_id")
        assert batched.equals(whole), rows
    assert whole.filter(pl.col("entity_type") == "milestone").height == 3  # M5 three times over
    v = Validator(batch_rows=4)
    res = v.run("t", reference_features(s, "milestones"), ["source_id", "milestone_id"], silver_checks("milestones"))
    assert {r.element_count for r in res} == {15}
    assert sum(r.observed["unexpected_count"] for r in res) == 3  # the ghost project, once per copy


def test_deadline_flags():
    flags = deadline_flags(resolve_references(silver()), AS_OF)
    got = {(r, e) for r, e in zip(flags["rule_id"], flags["entity_id"], strict=True)}
    assert got == {("D2", "M1"), ("D1", "M2"), ("D3", "W1")}
    d2 = json.loads(flags.filter(pl.col("rule_id") == "D2")["detail"].item())
    assert d2["days_overdue"] == 19


def test_c1_c2_c4():
    problems = pl.DataFrame({"source_id": ["a", "a"], "table": [None, "problems"], "problem": ["down", "wt missing"]},
                            schema={"source_id": pl.String, "table": pl.String, "problem": pl.String})
    c1 = c1_flags(Validator(), ["a", "b"], problems)
    assert c1["entity_id"].to_list() == ["a"]  # one flag per source, every problem in its detail
    assert c1.row(0, named=True)["entity_type"] == "source"
    assert json.loads(c1["detail"][0])["problems"] == ["down", "wt missing"]
    q = pl.DataFrame(
        {"source_id": ["a", "a", "a"], "table": ["milestones", "evidence", "persons"],
         "record_id": ["M1", None, "P1"],
         "reason": ["due_date: unparseable date '2019-13-45'", "evidence_id: required value missing",
                    "duplicate: superseded by a later version of the same id"],
         "raw": ["{}", "{}", "{}"]}, schema=QUARANTINE_SCHEMA)
    c2 = c2_flags_from_quarantine(q)
    assert sorted(zip(c2["entity_type"], c2["entity_id"], strict=True)) == [("milestone", "M1"), ("source", "a")]
    fresh = pl.DataFrame({
        "source_id": ["ok", "old", "late"], "dialect": ["platform", "legacy", "filedrop"],
        "newest_delivery": [None, None, date(2026, 11, 15)],
        "newest_change": [ts(2026, 11, 28), ts(2026, 10, 1), ts(2026, 11, 28)],
    })
    c4 = c4_flags(fresh, AS_OF)
    assert sorted(c4["entity_id"].to_list()) == ["late", "old"]


def test_load_silver_resolves_each_source_as_the_whole_city_would(tmp_path):
    """Silver is read one source at a time with its references resolved (never both the raw and the
    resolved city in memory): the same frames as resolving the whole city at once, minus the free text
    the cross-source stage never reads."""
    from flows.steps import NOT_READ_ACROSS_SOURCES, load_silver
    from warehouse.layout import Layout

    layout = Layout(tmp_path)
    one = silver()
    other = {t: f.with_columns(pl.lit("t").alias("source_id")) for t, f in one.items()}
    other["projects"] = other["projects"].with_columns(pl.lit("P9").alias("owner_id"))  # dangling in t
    for sid, tables in (("s", one), ("t", other)):
        for table, f in tables.items():
            path = layout.silver_file(table, sid)
            path.parent.mkdir(parents=True, exist_ok=True)
            f.write_parquet(path)
    loaded = load_silver(layout, ["s", "t", "absent"])
    whole = resolve_references({t: pl.concat([one[t], other[t]]) for t in one})
    for table, frame in whole.items():
        expected = frame.drop(NOT_READ_ACROSS_SOURCES.get(table, ()))
        assert loaded[table].sort(TABLES[table].key, "source_id").equals(
            expected.sort(TABLES[table].key, "source_id")), table
    assert loaded["evidence"].is_empty() and "file_name" not in loaded["evidence"].columns


def test_a_rule_reads_the_columns_silver_does_not_hold_from_storage(tmp_path):
    """Report summaries are not held for the whole city: `RuleContext.columns` reads them per source when
    a rule asks (F6), joined by key onto the frame the night holds (whose references are resolved)."""
    from expectations.rules.base import RuleContext
    from flows.steps import load_silver, read_silver_columns
    from warehouse.layout import Layout

    layout = Layout(tmp_path)
    reports = frame("stage_reports", [
        {"source_id": "s", "report_id": "R1", "project_id": "x1", "summary": "第一份", "updated_at": ts(2026, 11, 1)},
        {"source_id": "s", "report_id": "R2", "project_id": "X1", "summary": None, "updated_at": ts(2026, 11, 1)},
    ])
    tables = {**silver(), "stage_reports": reports}
    for table, f in tables.items():
        path = layout.silver_file(table, "s")
        path.parent.mkdir(parents=True, exist_ok=True)
        f.write_parquet(path)
    held = load_silver(layout, ["s"])
    assert "summary" not in held["stage_reports"].columns
    ctx = RuleContext(held, AS_OF, lambda t, c: read_silver_columns(layout, ["s"], t, c))
    got = ctx.columns("stage_reports", ["report_id", "project_id", "summary"]).sort("report_id")
    assert got.rows() == [("R1", "X1", "第一份"), ("R2", "X1", None)]  # x1 resolved to X1
    with pytest.raises(KeyError, match="summary"):
        RuleContext(held, AS_OF).columns("stage_reports", ["summary"])
