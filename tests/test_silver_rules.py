"""Upserts, reference resolution, and the contract and deadline rules on small hand-made silver."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
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
from transforms.merge import drop_unchanged, replace_children, upsert
from transforms.references import dangling, resolve_references
from transforms.schema import METRICS_SCHEMA, QUARANTINE_SCHEMA, TABLES, empty

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


def test_drop_unchanged_keeps_new_and_changed_rows_in_order():
    before = pl.DataFrame({"编号": ["a", "b", "c", None], "值": ["1", None, "3", "4"]})
    tonight = pl.DataFrame({"编号": ["d", "c", "b", "a", None, "b"], "值": ["5", "3 ", None, "1", "4", ""]})
    # "c" changed (a trailing space), ("b", "") is not ("b", null); "a", ("b", null) and (null, "4") are as before
    assert drop_unchanged(tonight, before).rows() == [("d", "5"), ("c", "3 "), ("b", "")]
    assert drop_unchanged(tonight, before.vstack(before)).height == 3  # duplicates in either are no matter
    assert drop_unchanged(tonight, pl.concat([before, tonight])).is_empty()
    # Another header (a renamed or moved column), or nothing loaded before: every row goes on.
    assert drop_unchanged(tonight, before.rename({"值": "数值"})).equals(tonight)
    assert drop_unchanged(tonight, before.select("值", "编号")).equals(tonight)
    assert drop_unchanged(tonight, before.clear()).equals(tonight)


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


def _write_silver(layout, sid, tables):
    for table, f in tables.items():
        path = layout.silver_file(table, sid)
        path.parent.mkdir(parents=True, exist_ok=True)
        f.write_parquet(path)


def test_city_silver_resolves_each_source_as_the_whole_city_would(tmp_path):
    """Silver is read one source at a time with its references resolved (never both the raw and the
    resolved city in memory): the same frames as resolving the whole city at once, minus the free text
    the cross-source stage never reads. Evidence is not held: it comes source by source, resolved the
    same way, and asking for it city-wide is an error rather than an empty table."""
    from warehouse.layout import Layout
    from warehouse.silver import NOT_HELD, CitySilver, ShardedTableError

    layout = Layout(tmp_path)
    one = {**silver(), **{t: f for t, f in _evidence_rule_city().items() if t in ("stage_reports", "evidence")}}
    other = {t: f.with_columns(pl.lit("t").alias("source_id")) for t, f in one.items()}
    other["projects"] = other["projects"].with_columns(pl.lit("P9").alias("owner_id"))  # dangling in t
    other["evidence"] = other["evidence"].with_columns(pl.col("report_id").str.to_lowercase())  # pile → PILE
    for sid, tables in (("s", one), ("t", other)):
        _write_silver(layout, sid, tables)
    loaded = CitySilver.load(layout, ["s", "t", "absent"], shard_rows=1, hold_rows=0)  # a shard a source
    whole = resolve_references({t: pl.concat([one[t], other[t]]) for t in one})
    for table, frame in whole.items():
        expected = frame.drop(NOT_HELD.get(table, ()))
        got = (loaded.by_source(lambda src, table=table: src[table]) if table in loaded.sharded
               else loaded[table])
        assert got.sort(TABLES[table].key, "source_id").equals(expected.sort(TABLES[table].key, "source_id")), table
    assert "evidence" not in loaded
    with pytest.raises(ShardedTableError, match="by_source"):
        loaded.get("evidence")
    counted = loaded.by_source(lambda src: src["evidence"].group_by("source_id").len(),
                               columns={"evidence": ["kind"]})
    assert dict(counted.iter_rows()) == {"s": one["evidence"].height, "t": other["evidence"].height}
    assert loaded.rows("evidence") == one["evidence"].height + other["evidence"].height
    # A city this small holds its evidence too (one read instead of one a rule), with the same frames.
    small = CitySilver.load(layout, ["s", "t", "absent"])
    assert small.sharded == () and len(small.shards) == 1
    assert small["evidence"].sort("evidence_id", "source_id").equals(
        loaded.by_source(lambda src: src["evidence"]).sort("evidence_id", "source_id"))


def _evidence_rule_city() -> dict[str, pl.DataFrame]:
    """One source's silver on which T1–T5, F2, F4 and F7 each fire at least once."""
    from datetime import timedelta

    from tests.test_rules_traces import SH, mixed, t1_city

    c = t1_city()  # T1: a pile of 40 items
    for i in range(40):  # T2: short documents, then one report of 850 pages
        c.simple(f"R{i:02d}", "interim_result", ["document", "document", "photo", "photo"],
                 pages=[3 + i % 10, 3 + (i * 7) % 18, None, None])
    c.simple("PILED", "interim_result", ["document", "document", "document", "photo"], pages=[320, 280, 250, None])
    c.simple("SHOW", "interim_result", ["photo"] * 5 + ["sign_in_sheet"] * 2 + ["meeting_minutes"] * 2)  # T3
    c.simple("SAME", "implementation", ["photo"] * 3 + ["document"], sha=["ab" * 32] * 3 + [None],
             phash=[None] * 4)  # T4
    c.simple("RUSH", "interim_result", mixed(12), start=datetime(2026, 6, 29, 9, 0, tzinfo=SH),
             every=timedelta(seconds=40))  # T5
    c.simple("DONE", "acceptance", ["photo", "photo"])  # F7 once its milestone is completed
    pid = c.project("COPY")  # F4: the same progress and figures three times in a row
    again = [c.report(f"AGAIN{i}", pid, c.milestone(f"M-AGAIN{i}", pid, "implementation"),
                      at=datetime(2026, 5, 1 + 7 * i, 9, 0, tzinfo=SH)) for i in range(3)]
    tables = c.silver()
    tables["stage_reports"] = tables["stage_reports"].with_columns(
        pl.when(pl.col("report_id").is_in(again)).then(40.0).alias("progress_pct"))
    tables["metrics"] = pl.DataFrame(
        {"source_id": "s", "report_id": again * 2, "metric_name": ["km"] * 3 + ["households"] * 3,
         "metric_value": [12.5] * 3 + [310.0] * 3}, schema=METRICS_SCHEMA)
    tables["milestones"] = tables["milestones"].with_columns(
        pl.when(pl.col("milestone_id") == "M-DONE").then(pl.col("updated_at")).alias("completed_at"))
    tables["evidence"] = tables["evidence"].with_columns(  # F2: taken a day after it was uploaded
        pl.when(pl.col("report_id") == "DONE").then(pl.col("uploaded_at") + timedelta(days=1)).alias("captured_at"))
    return tables


@pytest.mark.parametrize("shard_rows", [1, 10**9], ids=["a-shard-a-source", "one-shard"])
def test_rules_reduce_evidence_source_by_source_as_over_the_whole_city(tmp_path, shard_rows):
    """`RuleContext.by_source` over a CitySilver (evidence read per source, references resolved per
    source) gives what the same rules give with every table held at once."""
    from expectations.rules import rule_flags, rule_modules
    from expectations.rules.base import RuleContext
    from warehouse.layout import Layout
    from warehouse.silver import CitySilver

    layout = Layout(tmp_path)
    one = _evidence_rule_city()
    other = {t: f.with_columns(pl.lit("t").alias("source_id")) for t, f in one.items()}
    other["evidence"] = other["evidence"].with_columns(pl.col("report_id").str.to_lowercase())  # resolves
    for sid, tables in (("s", one), ("t", other)):
        _write_silver(layout, sid, tables)
    city = CitySilver.load(layout, ["s", "t"], shard_rows=shard_rows, hold_rows=0)
    assert len(city.shards) == (2 if shard_rows == 1 else 1)
    held = resolve_references({t: pl.concat([one[t], other[t]]) for t in one})
    rules = {"T1", "T2", "T3", "T4", "T5", "F2", "F4", "F7"}
    after = []  # the night gives freed memory back after each rule
    sharded = rule_flags(RuleContext(city, AS_OF), Validator(), only=rules, after_each=lambda: after.append(1))
    whole = rule_flags(RuleContext(held, AS_OF), Validator(), only=rules)
    assert len(after) == len([m for m in rule_modules() if m.RULE_ID in rules])
    order = ["rule_id", "source_id", "entity_id", "detail"]
    assert set(whole["rule_id"]) == rules
    assert set(whole.filter(pl.col("source_id") == "t")["rule_id"]) == rules
    assert sharded.sort(order).equals(whole.sort(order))


@contextmanager
def _rule_starts():
    """The order in which the rules (and whatever else appends to the list) start, while inside."""
    from expectations.rules import rule_modules

    started: list[str] = []
    lock = threading.Lock()
    modules = rule_modules()
    originals = {m: m.features for m in modules}

    def recording(module):
        def features(ctx, params):
            with lock:
                started.append(module.RULE_ID)
            return originals[module](ctx, params)
        return features

    try:
        for m in modules:
            m.features = recording(m)
        yield started, lock
    finally:
        for m in modules:
            m.features = originals[m]


def test_rules_side_by_side_give_the_flags_of_rules_one_at_a_time():
    """Two rules at a time (the night's default for a city held whole) flag the same rows with the same
    figures, in the same rule order, and the long-running rules are started first."""
    from expectations.rules import rule_flags, rule_modules
    from expectations.rules.base import RuleContext

    held = resolve_references(_evidence_rule_city())
    after = []
    modules = rule_modules()
    with _rule_starts() as (started, _):
        side_by_side = rule_flags(RuleContext(held, AS_OF), Validator(), in_flight=2,
                                  after_each=lambda: after.append(1))
    one_at_a_time = rule_flags(RuleContext(held, AS_OF), Validator())
    assert len(after) == len(modules)
    long_running = [m.RULE_ID for m in modules if getattr(m, "LONG_RUNNING", False)]
    assert long_running and set(started[: len(long_running)]) == set(long_running)
    assert {"T1", "T3", "T4", "T5", "F2", "F4", "F7"} <= set(one_at_a_time["rule_id"])
    # rule by rule in catalog order, as one at a time
    assert side_by_side["rule_id"].unique(maintain_order=True).equals(
        one_at_a_time["rule_id"].unique(maintain_order=True))
    order = ["rule_id", "source_id", "entity_id", "detail"]
    assert side_by_side.sort(order).equals(one_at_a_time.sort(order))


def test_a_frame_several_rules_share_is_built_once_a_night_and_let_go_of_after_the_last():
    """T1, T2 and T3 read every report's evidence figures: a night builds them once (also with two rules
    at a time, where a rule asking while another builds waits for it), and holds them no longer than
    the last of those rules; the flags are those of each rule building its own."""
    from expectations.rules import base, rule_flags, rule_modules
    from expectations.rules.base import RuleContext, SharedFrames, run_rule
    from expectations.settings import rule_params

    held = resolve_references(_evidence_rule_city())
    sharing = {m.RULE_ID for m in rule_modules() if base.REPORTS_WITH_EVIDENCE_FIGURES in getattr(m, "SHARES", ())}
    assert sharing == {"T1", "T2", "T3"}
    built = []
    original = base._reports_with_evidence_figures

    def counting(ctx):
        built.append(1)
        return original(ctx)

    base._reports_with_evidence_figures = counting
    try:
        for in_flight in (1, 2):
            built.clear()
            flags = rule_flags(RuleContext(held, AS_OF), Validator(), only=sharing | {"T4"}, in_flight=in_flight)
            assert len(built) == 1, in_flight
        built.clear()
        alone = pl.concat([run_rule(m, RuleContext(held, AS_OF), Validator(), rule_params(m.RULE_ID, m.PARAMS))
                           for m in rule_modules() if m.RULE_ID in sharing | {"T4"}])
        assert len(built) == len(sharing)  # no SharedFrames: each rule its own
    finally:
        base._reports_with_evidence_figures = original
    order = ["rule_id", "source_id", "entity_id", "detail"]
    assert set(flags["rule_id"]) >= {"T1", "T3"}
    assert flags.sort(order).equals(alone.sort(order))

    frames = SharedFrames({"f": 2, "unused": 0})
    made = []
    first = frames.get("f", lambda: made.append(1) or pl.DataFrame({"x": [1]}))
    assert frames.held == ["f"]
    assert frames.get("f", lambda: made.append(1) or pl.DataFrame({"x": [2]})) is first
    assert made == [1] and frames.held == []  # the last user has it: not held any longer
    assert frames.get("unused", lambda: pl.DataFrame({"x": [3]}))["x"].to_list() == [3]
    assert frames.held == []


def test_the_contract_suite_runs_beside_the_rules_after_the_long_running_ones_start():
    """`beside` (the night's contract suite) comes first in the flags; one rule at a time it runs before
    them, side by side it starts right after the long-running rules (F6 is the night's longest)."""
    from expectations.rules import rule_flags, rule_modules
    from expectations.rules.base import RuleContext

    held = resolve_references(_evidence_rule_city())
    broken = resolve_references(silver())  # dangling references: C3 flags
    beside_flags = contract_suite_flags(Validator(), broken)
    assert not beside_flags.is_empty()
    long_running = {m.RULE_ID for m in rule_modules() if getattr(m, "LONG_RUNNING", False)}
    assert "F6" in long_running
    for in_flight in (1, 2):
        with _rule_starts() as (started, lock):
            def contract(started=started, lock=lock):
                with lock:
                    started.append("contract")
                return contract_suite_flags(Validator(), broken)

            flags = rule_flags(RuleContext(held, AS_OF), Validator(), in_flight=in_flight, beside=contract)
        if in_flight == 1:
            assert started[0] == "contract"
        else:
            assert set(started[: len(long_running)]) == long_running
            assert started.index("contract") <= len(long_running)
        assert flags.head(beside_flags.height).sort(flags.columns).equals(beside_flags.sort(flags.columns))
        assert set(flags.slice(beside_flags.height)["rule_id"]) >= {"T1", "F2"}


def test_a_rule_reads_the_columns_silver_does_not_hold_from_storage(tmp_path):
    """Report summaries are not held for the whole city: `by_source(fn, columns=...)` reads them for the
    shard when a rule asks (F6), joined by key onto the frame the night holds (whose references are
    resolved); a rule that does not name them does not get them."""
    from expectations.rules.base import RuleContext
    from warehouse.layout import Layout
    from warehouse.silver import CitySilver

    layout = Layout(tmp_path)
    reports = frame("stage_reports", [
        {"source_id": "s", "report_id": "R1", "project_id": "x1", "summary": "第一份", "updated_at": ts(2026, 11, 1)},
        {"source_id": "s", "report_id": "R2", "project_id": "X1", "summary": None, "updated_at": ts(2026, 11, 1)},
    ])
    tables = {**silver(), "stage_reports": reports}
    _write_silver(layout, "s", tables)
    held = CitySilver.load(layout, ["s"])
    assert "summary" not in held["stage_reports"].columns
    ctx = RuleContext(held, AS_OF)
    wanted = ["report_id", "project_id", "summary"]

    def reports(one: RuleContext) -> pl.DataFrame:
        return one.table("stage_reports").select(wanted)

    got = ctx.by_source(reports, columns={"stage_reports": ["summary"]}).sort("report_id")
    assert got.rows() == [("R1", "X1", "第一份"), ("R2", "X1", None)]  # x1 resolved to X1
    with pytest.raises(pl.exceptions.ColumnNotFoundError, match="summary"):
        ctx.by_source(reports)
