"""Mart builders on small hand-made silver frames: grain, key values, determinism, PII masking."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

import polars as pl
import pytest

from expectations.catalog import FLAG_SCHEMA, RULES
from transforms.schema import TABLES, TIMESTAMP, empty
from warehouse.marts import (
    ALL_MODULES,
    MARTS,
    MODULES,
    SOURCES_SCHEMA,
    MartInputs,
    build_all,
    data_dictionary,
)

AS_OF = date(2026, 11, 20)
SUPERVISION = "dubanban@jw.example.gov.cn"
PHONE = "13812345678"
ID_CARD = "11010119900307123X"


def ts(s: str | None) -> datetime | None:
    return None if s is None else datetime.fromisoformat(s)


def frame(table: str, rows: list[dict]) -> pl.DataFrame:
    schema = TABLES[table].schema
    full = [{c: r.get(c) for c in schema} for r in rows]
    df = pl.DataFrame(full, schema={c: (pl.Datetime("us") if t == TIMESTAMP else t) for c, t in schema.items()}, orient="row")
    return df.with_columns(
        pl.col(c).dt.replace_time_zone(TIMESTAMP.time_zone) for c, t in schema.items() if t == TIMESTAMP
    )


UPD = "2026-11-19 12:00:00"


def make_ctx() -> MartInputs:
    units = frame("units", [
        {"source_id": "s1", "unit_code": "U1", "unit_name": "一区", "unit_kind": "district"},
        {"source_id": "s1", "unit_code": "U2", "unit_name": "二区", "unit_kind": "district"},
        {"source_id": "s1", "unit_code": "U3", "unit_name": "三镇", "unit_kind": "town"},
        {"source_id": "s2", "unit_code": "U1", "unit_name": "某局", "unit_kind": "department"},
        {"source_id": "s2", "unit_code": "U2", "unit_name": "四区", "unit_kind": "district"},
    ])
    persons = frame("persons", [
        {"source_id": "s1", "person_id": "A", "name": "张三", "unit_code": "U1", "phone": PHONE,
         "email": "a@s1.example", "id_card": ID_CARD, "updated_at": ts(UPD)},
        {"source_id": "s1", "person_id": "B", "name": "李四", "unit_code": "U2", "phone": "13900001111",
         "email": None, "id_card": "110101198001011234", "updated_at": ts(UPD)},
        {"source_id": "s1", "person_id": "C", "name": "王五", "unit_code": "U1", "updated_at": ts(UPD)},
        {"source_id": "s1", "person_id": "D", "name": "赵六", "unit_code": "U1", "updated_at": ts(UPD)},
        {"source_id": "s2", "person_id": "A", "name": "钱七", "unit_code": "U1", "phone": "13700002222",
         "email": "a@s2.example", "updated_at": ts(UPD)},
    ])
    projects = frame("projects", [
        {"source_id": "s1", "project_id": "P1", "title": "项目一", "unit_code": "U1", "owner_id": "A",
         "leader_id": "B", "status": "in_progress", "updated_at": ts(UPD)},
        {"source_id": "s1", "project_id": "P2", "title": "项目二", "unit_code": "U1", "owner_id": "A",
         "status": "completed", "updated_at": ts(UPD)},
        {"source_id": "s1", "project_id": "P3", "title": "项目三", "unit_code": "U2", "owner_id": "B",
         "status": "in_progress", "updated_at": ts(UPD)},
        {"source_id": "s2", "project_id": "P1", "title": "项目一'", "unit_code": "U1", "owner_id": "A",
         "status": "in_progress", "updated_at": ts(UPD)},
    ])
    ms = [
        # s1/P1: on time, late (done 5 days after due), overdue (due 11-15, open), not yet due
        ("s1", "M1", "P1", "initiation", date(2026, 11, 1), "2026-10-30 10:00:00"),
        ("s1", "M2", "P1", "implementation", date(2026, 11, 10), "2026-11-15 09:00:00"),
        ("s1", "M3", "P1", "interim_result", date(2026, 11, 15), None),
        ("s1", "M4", "P1", "acceptance", date(2026, 11, 25), None),
        # s1/P2: all done on time; M9 completed 23:30 local on its due date (15:30 UTC) is on time
        ("s1", "M5", "P2", "initiation", date(2026, 10, 1), "2026-09-30 10:00:00"),
        ("s1", "M9", "P2", "implementation", date(2026, 10, 15), "2026-10-15 23:30:00"),
        ("s1", "M6", "P2", "acceptance", date(2026, 10, 31), "2026-10-31 08:00:00"),
        # s2/P1: completion stamped after as_of does not count yet -> overdue 10 days
        ("s2", "M1", "P1", "initiation", date(2026, 11, 10), "2026-11-25 08:00:00"),
    ]
    milestones = frame("milestones", [
        {"source_id": s, "milestone_id": m, "project_id": p, "stage": st, "due_date": d,
         "completed_at": ts(c), "updated_at": ts(UPD)} for s, m, p, st, d, c in ms
    ])
    rp = [
        ("s1", "R1", "P1", "M1", "2026-10-29 10:00:00", "A", 20.0),
        ("s1", "R2", "P1", "M2", "2026-11-14 10:00:00", "A", 50.0),
        ("s1", "R3", "P1", "M3", "2026-11-25 10:00:00", "A", 90.0),  # after as_of: ignored
        ("s1", "R5", "P2", "M6", "2026-10-30 10:00:00", "B", 100.0),
        ("s1", "R4", "P2", "M6", "2026-10-31 10:00:00", "B", None),  # latest, but states no progress
    ]
    reports = frame("stage_reports", [
        {"source_id": s, "report_id": r, "project_id": p, "milestone_id": m, "submitted_at": ts(t),
         "submitted_by": b, "progress_pct": pct, "summary": f"汇报 联系人电话{PHONE}", "updated_at": ts(UPD)}
        for s, r, p, m, t, b, pct in rp
    ])
    evidence = frame("evidence", [
        {"source_id": "s1", "evidence_id": "E1", "report_id": "R2", "kind": "photo",
         "uploaded_at": ts("2026-11-14 09:00:00"), "updated_at": ts(UPD)},
        {"source_id": "s1", "evidence_id": "E2", "report_id": "R2", "kind": "document",
         "uploaded_at": ts("2026-11-14 09:00:00"), "updated_at": ts(UPD)},
    ])
    problems = frame("problems", [
        {"source_id": "s1", "problem_id": "Q1", "unit_code": "U1", "origin": "inspection", "found_at": date(2026, 10, 1),
         "deadline": date(2026, 11, 10), "owner_id": "C", "status": "open", "description": f"举报人{PHONE}",
         "updated_at": ts(UPD)},
        {"source_id": "s1", "problem_id": "Q2", "unit_code": "U1", "origin": "inspection", "found_at": date(2026, 10, 1),
         "deadline": date(2026, 11, 10), "owner_id": "C", "status": "rectified", "closed_at": date(2026, 11, 5),
         "updated_at": ts(UPD)},
        {"source_id": "s1", "problem_id": "Q3", "unit_code": "U2", "origin": "public_report", "found_at": date(2026, 10, 5),
         "deadline": date(2026, 12, 10), "owner_id": None, "status": "transferred", "updated_at": ts(UPD)},
    ])

    def f(source, rule, etype, eid, detail="{}", severity=None):
        r = RULES[rule]
        return (source, rule, r.family, etype, eid, severity or r.severity, detail)

    flags = pl.DataFrame([
        f("s1", "T1", "report", "R2"),
        f("s1", "T6", "milestone", "M3"),
        f("s1", "F1", "evidence", "E1"),
        f("s1", "F7", "milestone", "M2"),
        f("s1", "F3", "report", "R5"),
        f("s2", "T1", "report", "R2"),  # s2 has no R2: must not leak onto s1/P1
        f("s1", "F5", "person", "A"),
        f("s1", "D1", "milestone", "M4", '{"days_left": 5}'),
        f("s1", "D2", "milestone", "M3", '{"days_overdue": 5}'),
        f("s2", "D2", "milestone", "M1", '{"days_overdue": 10}'),
        f("s1", "D3", "problem", "Q1", '{"days_overdue": 10}'),
        f("s2", "C4", "source", "s2", '{"hours_late": 30}'),
        f("s2", "C2", "person", "X9", f'{{"raw": "phone {PHONE} id {ID_CARD}"}}'),
    ], schema=FLAG_SCHEMA, orient="row")
    sources = pl.DataFrame([
        ("s1", "一号源", "postgres", "a", "steward1@example", False),
        ("s2", "二号源", "postgres", "b", "steward2@example", True),
    ], schema=SOURCES_SCHEMA, orient="row")
    silver = {"units": units, "persons": persons, "projects": projects, "milestones": milestones,
              "stage_reports": reports, "evidence": evidence, "problems": problems, "metrics": empty("metrics")}
    return MartInputs(as_of=AS_OF, silver=silver, flags=flags, sources=sources, supervision_email=SUPERVISION)


@pytest.fixture(scope="module")
def marts() -> dict[str, pl.DataFrame]:
    return build_all(make_ctx())


def row(df: pl.DataFrame, **keys) -> dict:
    hit = df.filter(pl.all_horizontal(pl.col(k) == v for k, v in keys.items()))
    assert hit.height == 1, (keys, hit)
    return hit.row(0, named=True)


def test_registry_and_columns(marts):
    assert set(MARTS) == {"dq_flags", "project_health", "person_portrait", "unit_scorecard", "alerts"}
    for name, df in marts.items():
        cols = MODULES[name].COLUMNS
        assert list(df.columns) == list(cols), name
        assert df.columns[0] == "as_of" and "source_id" in df.columns
        assert df.schema == pl.Schema({c: t for c, (t, _m) in cols.items()}), name
        assert (df["as_of"] == AS_OF).all()
        assert all(meaning for _t, meaning in cols.values())
    assert set(data_dictionary()) == set(MARTS) | {"spot_checks"} == set(ALL_MODULES)


def test_grain_one_row_per_key(marts):
    for name, df in marts.items():
        keys = list(MODULES[name].KEYS)
        assert df.select(keys).is_duplicated().sum() == 0, name
        assert df.equals(df.sort(keys, nulls_last=True, maintain_order=True)), f"{name} not sorted by keys"


def test_deterministic():
    a, b = build_all(make_ctx()), build_all(make_ctx())
    for name in MARTS:
        assert a[name].equals(b[name]), name
    # input order must not matter either
    ctx = make_ctx()
    shuffled = MartInputs(
        as_of=ctx.as_of,
        silver={k: v.reverse() for k, v in ctx.silver.items()},
        flags=ctx.flags.reverse(),
        sources=ctx.sources.reverse(),
        supervision_email=ctx.supervision_email,
    )
    c = build_all(shuffled)
    for name in MARTS:
        assert a[name].equals(c[name]), name


def test_empty_inputs():
    ctx = MartInputs(as_of=AS_OF, silver={}, flags=pl.DataFrame(schema=FLAG_SCHEMA))
    for name, df in build_all(ctx).items():
        assert df.height == 0 and list(df.columns) == list(MODULES[name].COLUMNS)


def test_dq_flags(marts):
    df = marts["dq_flags"]
    assert df.height == make_ctx().flags.height
    assert df.filter(pl.col("rule_id") == "T1")["source_id"].to_list() == ["s1", "s2"]


def test_project_health(marts):
    df = marts["project_health"]
    assert df.height == 4
    p1 = row(df, source_id="s1", project_id="P1")
    assert p1["current_stage"] == "interim_result"
    assert p1["next_due_date"] == date(2026, 11, 15)
    assert p1["days_overdue"] == 5
    assert (p1["milestones_on_time"], p1["milestones_late"], p1["milestones_overdue"]) == (1, 2, 1)
    assert p1["progress_pct"] == 50.0  # R3 is dated after as_of
    assert p1["reports_filed"] == 2
    assert (p1["flags_traces"], p1["flags_fabrication"]) == (2, 2)  # T1@R2, T6@M3 / F1@E1, F7@M2
    assert (p1["flags_deadline"], p1["flags_contract"]) == (2, 0)  # D1@M4, D2@M3
    assert p1["rules_fired"] == ["D1", "D2", "F1", "F7", "T1", "T6"]
    assert (p1["milestones_reported_on_time"], p1["milestones_backed"]) == (1, 1)  # R1 before M1's due; E2 on R2
    # schedule: 1 of 3 decided on time, overdue milestone 5 days late on average
    assert p1["schedule_score"] == pytest.approx(100 / 3 - 5, abs=0.01)
    # management: mean(1/3 reported on time, freshness 1: last report 6 days ago)
    assert p1["management_score"] == pytest.approx(100 * (1 / 3 + 1) / 2, abs=0.01)
    assert p1["completion_quality_score"] == 50.0  # M1, M2 completed; only M2 has outcome evidence
    assert p1["integrity_score"] == 100 - 5 * 2 - 15 * 1  # F7 left to completion quality
    assert p1["health_score"] == pytest.approx((35 * 28.33 + 15 * 66.67 + 20 * 50 + 30 * 75) / 100, abs=0.01)
    assert (p1["rag"], p1["rag_reason"]) == ("red", "score 52.4 < 60.0")
    assert p1["leader_id"] == "B" and p1["health_score_change"] is None
    p2 = row(df, source_id="s1", project_id="P2")
    assert p2["current_stage"] == "acceptance"
    assert (p2["milestones_on_time"], p2["milestones_late"], p2["days_overdue"]) == (3, 0, 0)
    assert p2["next_due_date"] is None
    assert p2["progress_pct"] == 100.0
    assert (p2["flags_traces"], p2["flags_fabrication"]) == (0, 1)
    assert (p2["schedule_score"], p2["completion_quality_score"], p2["integrity_score"]) == (100.0, 0.0, 85.0)
    assert p2["management_score"] == pytest.approx(33.33)  # completed: freshness does not apply
    assert (p2["health_score"], p2["rag"]) == (pytest.approx(65.5), "amber")
    p3 = row(df, source_id="s1", project_id="P3")
    assert p3["current_stage"] is None and p3["days_overdue"] == 0
    # nothing to judge but integrity: no evidence is neither reward nor penalty
    assert (p3["schedule_score"], p3["management_score"], p3["completion_quality_score"]) == (None, None, None)
    assert (p3["health_score"], p3["rag"]) == (100.0, "green")
    s2p1 = row(df, source_id="s2", project_id="P1")
    assert s2p1["current_stage"] == "initiation"
    assert (s2p1["days_overdue"], s2p1["milestones_on_time"], s2p1["milestones_late"]) == (10, 0, 1)
    assert (s2p1["flags_traces"], s2p1["flags_fabrication"]) == (0, 0)
    assert (s2p1["schedule_score"], s2p1["management_score"], s2p1["integrity_score"]) == (0.0, 0.0, 100.0)
    assert (s2p1["health_score"], s2p1["rag"]) == (37.5, "red")  # (0·35 + 0·15 + 100·30) / 80


def test_rag_overrides_and_settings(tmp_path, monkeypatch):
    ctx = make_ctx()
    # a fabrication flag keeps a green-scoring project amber; 90+ days overdue is red whatever the score
    settings = tmp_path / "settings.toml"
    settings.write_text("[marts.project_health]\nw_schedule = 0\nw_management = 0\nw_completion_quality = 0\n"
                        "red_overdue_days = 10\n", encoding="utf-8")
    monkeypatch.setenv("QINGFENG_SETTINGS", str(settings))
    df = MARTS["project_health"](ctx)
    p2 = row(df, source_id="s1", project_id="P2")  # integrity only: 85, but F3 on it
    assert (p2["health_score"], p2["rag"]) == (85.0, "amber")
    assert p2["rag_reason"] == "score 85.0 ≥ 80.0 but 1 fabrication flag(s)"
    s2p1 = row(df, source_id="s2", project_id="P1")
    assert (s2p1["health_score"], s2p1["rag"], s2p1["rag_reason"]) == (100.0, "red", "overdue 10 days ≥ 10")
    typo = tmp_path / "typo.toml"  # (the file is read once per path)
    typo.write_text("[marts.project_health]\nw_schedul = 1\n", encoding="utf-8")
    monkeypatch.setenv("QINGFENG_SETTINGS", str(typo))
    with pytest.raises(ValueError, match="w_schedul"):
        MARTS["project_health"](ctx)


def test_score_change_against_history():
    first = build_all(make_ctx())
    day_before = date(2026, 11, 19)
    prev_portrait = first["person_portrait"].with_columns(
        as_of=pl.lit(day_before), score=pl.when(pl.col("person_id") == "A").then(pl.col("score") + 20.0)
        .otherwise(pl.col("score")),
    )
    prev_health = first["project_health"].with_columns(as_of=pl.lit(day_before), health_score=pl.lit(90.0))
    # a partition of as_of itself (an earlier run of the same date) is never the comparison
    same_day = first["person_portrait"].with_columns(score=pl.lit(0.0))
    ctx = MartInputs(**{**make_ctx().__dict__, "history": {
        "person_portrait": pl.concat([prev_portrait, same_day]), "project_health": prev_health,
        "unit_scorecard": first["unit_scorecard"].with_columns(as_of=pl.lit(day_before))}})
    marts = build_all(ctx)
    a = row(marts["person_portrait"], source_id="s1", person_id="A")
    assert (a["prev_as_of"], a["score_change"]) == (day_before, -20.0)
    assert "评分下降" in a["tags"]
    b = row(marts["person_portrait"], source_id="s1", person_id="B")
    assert b["score_change"] == 0.0 and "评分下降" not in b["tags"]
    p1 = row(marts["project_health"], source_id="s1", project_id="P1")
    assert p1["health_score_change"] == pytest.approx(p1["health_score"] - 90.0)
    assert (marts["unit_scorecard"]["score_change"].drop_nulls() == 0.0).all()
    # everything else is as without history
    for name in MARTS:
        cols = [c for c in first[name].columns if "change" not in c and not c.startswith("prev_") and c != "tags"]
        assert marts[name].select(cols).equals(first[name].select(cols)), name


def test_person_portrait(marts):
    df = marts["person_portrait"]
    assert set(zip(df["source_id"], df["person_id"], strict=True)) == {("s1", "A"), ("s1", "B"), ("s1", "C"), ("s2", "A")}
    a = row(df, source_id="s1", person_id="A")
    assert a["name"] == "张三"
    assert (a["projects_owned"], a["projects_led"], a["projects_red"]) == (2, 0, 1)
    assert a["milestones_decided"] == 6  # P1: M1, M2, M3; P2: M5, M9, M6
    assert a["on_time_rate"] == pytest.approx(4 / 6)
    assert a["overdue_milestones"] == 1
    assert a["avg_delay_days"] == pytest.approx(5.0)  # M2 5 days late, M3 5 days overdue
    assert a["reports_filed"] == 2
    assert (a["flags_traces"], a["flags_fabrication"]) == (2, 4)  # P1 2+2, P2 F3, plus F5 on A
    assert a["schedule_score"] == pytest.approx(100 * 4 / 6 - 5, abs=0.01)
    assert a["completion_quality_score"] == pytest.approx(100 * 1 / 5)  # 5 completed, M2 backed
    # per owned project: (2 traces, 3 fabrication without F7) / 2 projects
    assert a["integrity_score"] == pytest.approx(100 - 5 * 1 - 15 * 1.5)
    assert a["rectification_score"] is None  # owns no problem
    assert a["tags"] == ["数据造假风险"]
    assert a["leader_score"] is None
    b = row(df, source_id="s1", person_id="B")
    assert (b["projects_owned"], b["projects_led"], b["reports_filed"]) == (1, 1, 2)  # R4, R5
    assert "样本不足" in b["tags"] and b["on_time_rate"] is None
    # B leads P1: the leader portrait is P1's health
    p1 = row(marts["project_health"], source_id="s1", project_id="P1")
    assert b["leader_score"] == pytest.approx(p1["health_score"])
    assert (b["led_on_time_rate"], b["led_projects_red"]) == (pytest.approx(1 / 3), 1)
    c = row(df, source_id="s1", person_id="C")
    assert (c["problems_owned"], c["problems_rectified"], c["problems_overdue"]) == (2, 1, 1)
    assert (c["problems_due"], c["problems_closed_on_time"], c["rectification_score"]) == (2, 1, 50.0)
    assert c["score"] == 50.0  # judged on rectification only
    assert c["tags"] == ["整改滞后", "样本不足"]
    assert all(0 <= s <= 100 for s in df["score"].drop_nulls())
    assert set(df["tags"].explode().drop_nulls()) <= set(MODULES["person_portrait"].TAGS)


def test_person_tags_rules():
    from warehouse.marts.person_portrait import TAGS

    assert TAGS == ("按期高质", "经常逾期", "过度留痕风险", "数据造假风险", "问题整改及时", "整改滞后", "评分下降", "样本不足")
    ctx = make_ctx()
    # C closes both problems on time, A's P1 milestones all on time and backed, flags gone
    problems = ctx.silver["problems"].with_columns(status=pl.lit("rectified"), closed_at=pl.lit(date(2026, 11, 1)))
    ms = ctx.silver["milestones"].with_columns(
        completed_at=pl.when(pl.col("completed_at").is_null() | (pl.col("source_id") == "s1"))
        .then(pl.col("due_date").cast(pl.Datetime("us")).dt.replace_time_zone(TIMESTAMP.time_zone))
        .otherwise(pl.col("completed_at"))
    )
    ev = pl.concat([ctx.silver["evidence"], frame("evidence", [
        {"source_id": "s1", "evidence_id": f"E{r}", "report_id": r, "kind": "ledger",
         "uploaded_at": ts("2026-10-01 09:00:00"), "updated_at": ts(UPD)} for r in ("R1", "R4", "R5")
    ])])
    reports = ctx.silver["stage_reports"].with_columns(milestone_id=pl.when(pl.col("report_id") == "R1")
                                                       .then(pl.lit("M1")).otherwise(pl.col("milestone_id")))
    clean = MartInputs(**{**ctx.__dict__, "flags": ctx.flags.filter(pl.col("family") != "fabrication")
                          .filter(pl.col("family") != "traces"),
                          "silver": {**ctx.silver, "problems": problems, "milestones": ms, "evidence": ev,
                                     "stage_reports": reports}})
    df = MARTS["person_portrait"](clean)
    c = row(df, source_id="s1", person_id="C")
    assert "问题整改及时" in c["tags"] and "整改滞后" not in c["tags"]
    a = row(df, source_id="s1", person_id="A")
    assert a["on_time_rate"] == 1.0 and a["overdue_milestones"] == 0
    # M4 (acceptance of P1) and M9/M5 have no report with outcome evidence: quality below 90 -> not 按期高质
    assert a["completion_quality_score"] < 90 and "按期高质" not in a["tags"]
    ev_all = pl.concat([ev, frame("evidence", [
        {"source_id": "s1", "evidence_id": f"X{m}", "report_id": f"RX{m}", "kind": "document",
         "uploaded_at": ts("2026-10-01 09:00:00"), "updated_at": ts(UPD)} for m in ("M2", "M3", "M4", "M5", "M9", "M6")
    ])])
    extra_reports = frame("stage_reports", [
        {"source_id": "s1", "report_id": f"RX{m}", "project_id": p, "milestone_id": m,
         "submitted_at": ts("2026-09-01 10:00:00"), "updated_at": ts(UPD)}
        for m, p in (("M2", "P1"), ("M3", "P1"), ("M4", "P1"), ("M5", "P2"), ("M9", "P2"), ("M6", "P2"))
    ])
    best = MartInputs(**{**clean.__dict__, "silver": {**clean.silver, "evidence": ev_all,
                                                      "stage_reports": pl.concat([reports, extra_reports])}})
    a = row(MARTS["person_portrait"](best), source_id="s1", person_id="A")
    assert a["completion_quality_score"] == 100.0
    assert a["tags"] == ["按期高质"]
    # many overdue milestones: 经常逾期 whatever the sample
    late = frame("milestones", [
        {"source_id": "s2", "milestone_id": f"L{i}", "project_id": "P1", "stage": "implementation",
         "due_date": date(2026, 11, 1), "updated_at": ts(UPD)} for i in range(3)
    ])
    busy = MartInputs(**{**ctx.__dict__, "silver": {**ctx.silver, "milestones": pl.concat([ctx.silver["milestones"], late])}})
    assert "经常逾期" in row(MARTS["person_portrait"](busy), source_id="s2", person_id="A")["tags"]


def test_unit_scorecard_rank(marts):
    df = marts["unit_scorecard"]
    u1 = row(df, source_id="s1", unit_code="U1")
    assert (u1["projects"], u1["completion_rate"], u1["overdue_rate"]) == (2, 0.5, 1.0)
    assert (u1["problems_found"], u1["problems_rectified"], u1["problems_transferred"]) == (2, 1, 0)
    assert (u1["problems_open"], u1["problems_overdue"], u1["closure_rate"]) == (1, 1, 0.5)
    assert u1["flag_rate"] == pytest.approx(5 / 2)
    assert u1["avg_health_score"] == pytest.approx((52.42 + 65.5) / 2, abs=0.01)
    # completion 50·25 + on schedule 0·25 + closure 50·20 + clean 0·15 + health 58.96·15
    assert u1["score"] == pytest.approx((50 * 25 + 50 * 20 + 58.96 * 15) / 100, abs=0.01)
    u2 = row(df, source_id="s1", unit_code="U2")
    assert (u2["problems_transferred"], u2["closure_rate"]) == (1, 1.0)
    assert u2["score"] == pytest.approx(75.0)
    assert (u2["rank"], u2["units_in_kind"]) == (1, 3)
    districts = df.filter(pl.col("unit_kind") == "district").sort("rank")
    assert districts.select("source_id", "unit_code").rows() == [("s1", "U2"), ("s1", "U1"), ("s2", "U2")]
    assert districts["score"][2] is None  # no data at all: ranked last
    for kind in df["unit_kind"].unique():
        ranks = sorted(df.filter(pl.col("unit_kind") == kind)["rank"].to_list())
        assert ranks == list(range(1, len(ranks) + 1))


def test_unit_rank_tie_break():
    units = frame("units", [
        {"source_id": s, "unit_code": u, "unit_name": u, "unit_kind": "town"}
        for s, u in (("s2", "A"), ("s1", "B"), ("s1", "A"))
    ])
    problems = frame("problems", [
        {"source_id": s, "problem_id": "Q" + u, "unit_code": u, "origin": "inspection", "found_at": date(2026, 1, 1),
         "status": "rectified", "updated_at": ts(UPD)} for s, u in (("s2", "A"), ("s1", "B"), ("s1", "A"))
    ])
    ctx = MartInputs(as_of=AS_OF, silver={"units": units, "problems": problems}, flags=pl.DataFrame(schema=FLAG_SCHEMA))
    df = MARTS["unit_scorecard"](ctx).sort("rank")
    assert df["score"].to_list() == [100.0] * 3
    assert df.select("source_id", "unit_code").rows() == [("s1", "A"), ("s1", "B"), ("s2", "A")]


def test_alerts(marts):
    df = marts["alerts"]
    got = {(r["kind"], r["source_id"], r["entity_id"]): r["recipient"] for r in df.iter_rows(named=True)}
    assert got == {
        ("due_soon", "s1", "M4"): "a@s1.example",
        ("overdue", "s1", "M3"): SUPERVISION,
        ("overdue", "s2", "M1"): SUPERVISION,
        ("problem_overdue", "s1", "Q1"): SUPERVISION,
        ("data_quality", "s2", "s2"): "steward2@example",
    }
    assert df["alert_id"].n_unique() == df.height
    assert df["sent_at"].is_null().all()
    assert df["raised_at"].dt.date().to_list() == [AS_OF] * df.height
    assert str(df["raised_at"].dtype) == str(TIMESTAMP)
    dq = row(df, kind="data_quality")
    assert dq["entity_type"] == "source" and dq["severity"] == "warning"
    # alert ids are stable from one night to the next (a data-quality report is one per night)
    later = MARTS["alerts"](MartInputs(**{**make_ctx().__dict__, "as_of": date(2026, 11, 21)}))
    stable = pl.col("kind") != "data_quality"
    assert set(later.filter(stable)["alert_id"]) == set(df.filter(stable)["alert_id"])


def test_due_soon_without_owner_email_goes_to_the_steward():
    ctx = make_ctx()
    persons = ctx.silver["persons"].with_columns(email=pl.lit(None, dtype=pl.String))
    df = MARTS["alerts"](MartInputs(**{**ctx.__dict__, "silver": {**ctx.silver, "persons": persons}}))
    assert row(df, kind="due_soon")["recipient"] == "steward1@example"
    assert row(df, kind="due_soon")["recipient_role"] == "steward"


_UNMASKED_PHONE = re.compile(r"(?<![0-9A-Za-z])1[3-9][0-9]{9}(?![0-9A-Za-z])")
_UNMASKED_ID = re.compile(r"(?<![0-9A-Za-z])[0-9]{17}[0-9Xx](?![0-9A-Za-z])")


def _strings(df: pl.DataFrame) -> list[str]:
    out: list[str] = []
    for name, dtype in df.schema.items():
        col = df[name]
        if dtype == pl.List(pl.String()):
            col = col.explode()
        elif dtype != pl.String():
            continue
        out.extend(v for v in col.to_list() if v is not None)
    return out


def test_no_unmasked_pii_in_any_mart(marts):
    ctx = make_ctx()
    # the inputs do carry PII (so the check below means something) ...
    raw = _strings(ctx.silver["persons"]) + _strings(ctx.flags) + _strings(ctx.silver["stage_reports"])
    assert any(_UNMASKED_PHONE.search(s) for s in raw) and any(_UNMASKED_ID.search(s) for s in raw)
    # ... and no mart does
    for name, df in marts.items():
        for s in _strings(df):
            assert not _UNMASKED_PHONE.search(s), (name, s)
            assert not _UNMASKED_ID.search(s), (name, s)
    detail = row(marts["dq_flags"], rule_id="C2")["detail"]
    assert "138****5678" in detail and "110101********123X" in detail


def test_docs_marts_md_is_generated_from_the_code():
    from warehouse.dictionary import DOC_PATH, render

    text = DOC_PATH.read_text(encoding="utf-8")
    assert text == render(), "docs/marts.md is stale: run `.venv/bin/python -m warehouse.dictionary`"
    for name, module in ALL_MODULES.items():
        assert f"## `{name}`" in text and "Grain: one row per" in (module.__doc__ or ""), name
        for col in module.COLUMNS:
            assert f"| `{col}` |" in text, (name, col)


def test_simulated_city_marts_are_deterministic_private_and_pruneable(tmp_path_factory):
    """The same input and as-of date give the same marts (two warehouses, compared); no mart carries a
    phone or ID-card number; files are zstd, sorted by their keys, with statistics; a second night
    compares with the first (score_change)."""
    import pyarrow.parquet as pq

    from flows.nightly import run_nightly
    from simulator import simulate_city
    from warehouse.layout import Layout

    as_of = date(2026, 11, 29)
    city = tmp_path_factory.mktemp("city")
    simulate_city(city, sources=3, projects_per_source=15, seed=3, as_of=as_of)
    layouts = []
    for i in range(2):
        wh = tmp_path_factory.mktemp(f"wh{i}")
        run_nightly(city / "sources.toml", wh, as_of, max_workers=2)
        layouts.append(Layout(wh))
    persons = pl.read_parquet(list((layouts[0].silver / "persons").glob("*/data.parquet")))
    assert persons["phone"].drop_nulls().len() > 0  # the city does carry personal data

    for name, module in MODULES.items():
        a, b = (pl.read_parquet(lay.mart_partition(name, as_of) / "data.parquet") for lay in layouts)
        if name == "alerts":  # when the outbox raised/sent an alert is wall-clock time
            a, b = (df.select(pl.exclude(pl.Datetime)) for df in (a, b))
        assert a.equals(b), name
        for s in _strings(a):
            assert not _UNMASKED_PHONE.search(s) and not _UNMASKED_ID.search(s), (name, s)
        path = layouts[0].mart_partition(name, as_of) / "data.parquet"
        meta = pq.ParquetFile(path).metadata
        keys = [k for k in module.KEYS if k in a.columns]
        assert a.equals(a.sort(keys, maintain_order=True, nulls_last=True)), f"{name} not sorted by its keys"
        if meta.num_rows:
            for rg in range(meta.num_row_groups):
                for c in range(meta.num_columns):
                    col = meta.row_group(rg).column(c)
                    assert col.compression == "ZSTD", (name, col.path_in_schema)
                    if col.path_in_schema in keys:
                        assert col.statistics is not None and col.statistics.has_min_max, (name, col.path_in_schema)
    assert pl.read_parquet(layouts[0].mart_partition("project_health", as_of))["health_score"].null_count() == 0

    run_nightly(city / "sources.toml", layouts[0].root, as_of + timedelta(days=1), max_workers=2)
    later = pl.read_parquet(layouts[0].mart_partition("person_portrait", as_of + timedelta(days=1)))
    assert (later["prev_as_of"].drop_nulls() == as_of).all() and later["score_change"].drop_nulls().len() > 0
