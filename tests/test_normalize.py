"""Tests of the per-table normalizer (transforms/normalize.py) on hand-made frames of every dialect.

Every call goes through `run`, which checks the invariant raw = clean + quarantine and the output schemas.
"""

from __future__ import annotations

import json
import pickle
from datetime import date, datetime
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms.dialects import DIALECTS, native_tables
from transforms.normalize import MissingColumnsError, Normalized, normalize_table
from transforms.schema import METRICS_SCHEMA, QUARANTINE_SCHEMA, TABLES

SH = ZoneInfo("Asia/Shanghai")
SRC = "gaoxin"


def run(raw: pl.DataFrame, dialect: str, table: str) -> Normalized:
    r = normalize_table(raw, dialect=dialect, table=table, source_id=SRC)
    assert raw.height == r.clean.height + r.quarantine.height
    assert r.clean.schema == pl.Schema(TABLES[table].schema)
    assert r.clean.columns[0] == "source_id"
    assert r.quarantine.schema == pl.Schema(QUARANTINE_SCHEMA)
    assert r.metrics.schema == pl.Schema(METRICS_SCHEMA)
    assert r.metrics_quarantine.schema == pl.Schema(QUARANTINE_SCHEMA)
    assert r.clean[TABLES[table].key].null_count() == 0
    assert r.clean[TABLES[table].key].str.to_lowercase().is_unique().all()
    assert (r.quarantine["reason"].str.len_chars() > 0).all()
    for raw_json in r.quarantine["raw"]:
        assert isinstance(json.loads(raw_json), dict)
    return r


def frame(dialect: str, table: str, rows: list[dict[str, str | None]]) -> pl.DataFrame:
    """Rows keyed by CANONICAL column → a native frame (native column names, all String)."""
    reverse = native_tables(dialect)[table].reverse
    cols = list(native_tables(dialect)[table].columns)
    data = {c: [] for c in cols}
    for row in rows:
        for c in cols:
            data[c].append(row.get(native_tables(dialect)[table].columns[c]))
        extra = set(row) - set(reverse)
        assert not extra, extra
    return pl.DataFrame(data, schema={c: pl.String for c in cols})


# Realistic rows in each dialect's own spelling (canonical keys). platform: English enums, ISO instants;
# legacy/filedrop: Chinese enums, mixed local formats.
GOOD: dict[str, dict[str, list[dict[str, str | None]]]] = {
    "platform": {
        "units": [
            {"unit_code": "510109", "unit_name": "成都高新区", "unit_kind": "district", "parent_code": None},
            {"unit_code": "510109001", "unit_name": "肖家河街道", "unit_kind": "town", "parent_code": "510109"},
        ],
        "persons": [
            {"person_id": "P001", "name": "张伟", "unit_code": "510109", "title": "科长", "phone": "13800138000",
             "email": "zw@gaoxin.example.cn", "id_card": "51010919800101123X", "updated_at": "2026-04-25 07:59:27+08:00"},
        ],
        "projects": [
            {"project_id": "XM2026001", "project_code": "GX-01", "title": "优化营商环境专项整治", "category": "营商环境",
             "unit_code": "510109", "owner_id": "P001", "leader_id": "P002", "planned_start": "2026-03-01",
             "planned_end": "2026-12-31", "status": "in_progress", "updated_at": "2026-04-25T07:59:27+08:00"},
        ],
        "milestones": [
            {"milestone_id": "JD001", "project_id": "XM2026001", "stage": "initiation", "due_date": "2026-03-31",
             "completed_at": "2026-03-30 16:00:00+08:00", "updated_at": "2026-03-30T16:00:00+08:00"},
            {"milestone_id": "JD002", "project_id": "XM2026001", "stage": "implementation", "due_date": "2026-06-30",
             "completed_at": None, "updated_at": "2026-04-25 07:59:27.123+08:00"},
        ],
        "stage_reports": [
            {"report_id": "HB001", "project_id": "XM2026001", "milestone_id": "JD002",
             "submitted_at": "2026-04-25 07:59:27+08:00", "submitted_by": "P001", "progress_pct": "80.00",
             "summary": "走访企业100家，解决问题12个。", "metrics": '{"走访企业数": 100, "投入资金(万元)": 12.5}',
             "updated_at": "2026-04-25 07:59:27+08:00"},
        ],
        "evidence": [
            {"evidence_id": "CL001", "report_id": "HB001", "file_name": "走访照片1.jpg", "kind": "photo",
             "sha256": "ab" * 32, "phash": "00ff00ff00ff00ff", "pages": "1", "size_bytes": "2048576",
             "captured_at": "2026-04-24 10:00:00+08:00", "uploaded_at": "2026-04-25 07:59:27+08:00",
             "uploaded_by": "P001", "updated_at": "2026-04-25 07:59:27+08:00"},
        ],
        "problems": [
            {"problem_id": "WT001", "unit_code": "510109", "origin": "enterprise_visit", "category": "审批",
             "description": "审批时限过长", "found_at": "2026-04-01", "deadline": "2026-05-01", "owner_id": "P001",
             "status": "open", "closed_at": None, "updated_at": "2026-04-25 07:59:27+08:00"},
        ],
    },
    "legacy": {
        "units": [
            {"unit_code": "510109", "unit_name": "成都高新区", "unit_kind": "区县", "parent_code": ""},
            {"unit_code": "510109001", "unit_name": "肖家河街道", "unit_kind": "镇街", "parent_code": "510109"},
        ],
        "persons": [
            {"person_id": "P001", "name": "张伟", "unit_code": "510109", "title": "科长", "phone": "13800138000",
             "email": "", "id_card": "51010919800101123X", "updated_at": "2026/4/25 7:59"},
        ],
        "projects": [
            {"project_id": "XM2026001", "project_code": "GX-01", "title": "优化营商环境专项整治", "category": "营商环境",
             "unit_code": "510109", "owner_id": "P001", "leader_id": "", "planned_start": "2026年3月1日",
             "planned_end": "20261231", "status": "实施中", "updated_at": "2026-04-25 07:59:27"},
        ],
        "milestones": [
            {"milestone_id": "JD001", "project_id": "XM2026001", "stage": "谋划立项", "due_date": "2026/3/31",
             "completed_at": "2026-03-30 16:00", "updated_at": "2026-03-30"},
            {"milestone_id": "JD002", "project_id": "XM2026001", "stage": "组织实施", "due_date": "2026-06-30",
             "completed_at": "", "updated_at": "2026年4月25日"},
        ],
        "stage_reports": [
            {"report_id": "HB001", "project_id": "XM2026001", "milestone_id": "JD002",
             "submitted_at": "2026/4/25 7:59", "submitted_by": "P001", "progress_pct": "0.8",
             "summary": "走访企业100家。", "metrics": "走访企业数:100;投入资金（万元）：12.5;",
             "updated_at": "2026-04-25 07:59:27"},
        ],
        "evidence": [
            {"evidence_id": "CL001", "report_id": "HB001", "file_name": "签到表.pdf", "kind": "签到表",
             "sha256": "AB" * 32, "phash": "", "pages": "12页", "size_bytes": "2048576",
             "captured_at": "", "uploaded_at": "20260425", "uploaded_by": "P001", "updated_at": "2026/4/25 7:59"},
        ],
        "problems": [
            {"problem_id": "WT001", "unit_code": "510109", "origin": "明察暗访", "category": "作风",
             "description": "窗口人员脱岗", "found_at": "2026/4/1", "deadline": "2026年5月1日", "owner_id": "P001",
             "status": "已整改", "closed_at": "2026-04-20", "updated_at": "2026-04-25 07:59:27"},
        ],
    },
}
GOOD["filedrop"] = GOOD["legacy"]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("table", list(TABLES))
def test_good_rows_all_clean(dialect, table):
    rows = GOOD[dialect][table]
    r = run(frame(dialect, table, rows), dialect, table)
    assert r.quarantine.is_empty(), r.quarantine["reason"].to_list()
    assert r.clean.height == len(rows)
    assert r.clean["source_id"].to_list() == [SRC] * len(rows)
    assert r.extra_columns == [] and r.missing_columns == []
    for column, allowed in TABLES[table].enums.items():
        assert set(r.clean[column]) <= set(allowed)
    if table == "stage_reports":
        assert r.metrics.select("metric_name", "metric_value").rows() == [("走访企业数", 100.0), ("投入资金(万元)", 12.5)]
        assert r.clean["progress_pct"].to_list() == [80.0]
        assert r.metrics_quarantine.is_empty()


def test_legacy_values_parsed():
    r = run(frame("legacy", "projects", GOOD["legacy"]["projects"]), "legacy", "projects")
    row = r.clean.row(0, named=True)
    assert row["planned_start"] == date(2026, 3, 1)
    assert row["planned_end"] == date(2026, 12, 31)
    assert row["status"] == "in_progress"
    assert row["leader_id"] is None  # '' means NULL
    assert row["updated_at"] == datetime(2026, 4, 25, 7, 59, 27, tzinfo=SH)
    ev = run(frame("legacy", "evidence", GOOD["legacy"]["evidence"]), "legacy", "evidence").clean.row(0, named=True)
    assert (ev["pages"], ev["sha256"], ev["phash"], ev["kind"]) == (12, "ab" * 32, None, "sign_in_sheet")
    assert ev["uploaded_at"] == datetime(2026, 4, 25, tzinfo=SH)


def test_platform_instants_converted():
    rows = [dict(GOOD["platform"]["persons"][0], updated_at="2026-04-24T23:59:27Z")]
    r = run(frame("platform", "persons", rows), "platform", "persons")
    assert r.clean["updated_at"].to_list() == [datetime(2026, 4, 25, 7, 59, 27, tzinfo=SH)]


def test_filedrop_headers_with_bom_and_spaces():
    raw = frame("filedrop", "units", GOOD["filedrop"]["units"]).rename({"单位代码": "\ufeff单位代码", "单位名称": " 单位名称 "})
    r = run(raw, "filedrop", "units")
    assert r.clean.height == 2 and r.extra_columns == []


# ------------------------------------------------------------------------------------------------ duplicates


def test_duplicates_exact_superseded_case_and_whitespace():
    base = GOOD["legacy"]["projects"][0]
    rows = [
        dict(base, project_id="XM1", title="v1", updated_at="2026-04-01"),
        dict(base, project_id=" xm1 ", title="v2", updated_at="2026-04-03"),  # latest: wins, its spelling kept
        dict(base, project_id="Xm1\u3000", title="v1b", updated_at="2026-04-02"),
        dict(base, project_id="XM2", title="same"),
        dict(base, project_id="XM2", title="same"),  # exact copy
        dict(base, project_id="XM3", title="first", updated_at="2026-04-05"),
        dict(base, project_id="XM3", title="second", updated_at="2026-04-05"),  # tie: last in input wins
    ]
    r = run(frame("legacy", "projects", rows), "legacy", "projects")
    assert r.clean.select("project_id", "title").rows() == [("xm1", "v2"), ("XM2", "same"), ("XM3", "second")]
    q = dict(zip(r.quarantine["raw"].map_elements(lambda s: json.loads(s)["xmmc"], return_dtype=pl.String),
                 r.quarantine["reason"], strict=True))
    assert q["v1"] == "duplicate: superseded by a later version of the same id"
    assert q["v1b"] == "duplicate: superseded by a later version of the same id"
    assert q["same"] == "duplicate: exact copy of a later row with the same id"
    assert q["first"] == "duplicate: superseded by a later row with the same id and the same updated_at"
    assert r.quarantine["record_id"].to_list() == ["XM1", "Xm1", "XM2", "XM3"]


def test_latest_version_broken_supersedes_older():
    base = GOOD["legacy"]["projects"][0]
    rows = [dict(base, project_id="XM1", updated_at="2026-04-01"),
            dict(base, project_id="XM1", status="不存在", updated_at="2026-04-02")]
    r = run(frame("legacy", "projects", rows), "legacy", "projects")
    assert r.clean.is_empty()
    reasons = r.quarantine["reason"].to_list()
    assert reasons[0].startswith("duplicate: superseded")
    assert reasons[1].startswith("status: unknown value '不存在'")


def test_units_without_change_column_last_row_wins():
    rows = [dict(GOOD["platform"]["units"][0], unit_name="旧名"), dict(GOOD["platform"]["units"][0], unit_name="新名")]
    r = run(frame("platform", "units", rows), "platform", "units")
    assert r.clean["unit_name"].to_list() == ["新名"]
    assert r.quarantine["reason"].to_list() == ["duplicate: superseded by a later row with the same id"]


# ------------------------------------------------------------------------------------------------ messy values


def test_messy_values_quarantined_with_reasons():
    base = GOOD["legacy"]["milestones"][0]
    rows = [
        dict(base, milestone_id="JD1", due_date="2019-13-45"),
        dict(base, milestone_id="JD2", due_date=""),
        dict(base, milestone_id="JD3", completed_at="昨天"),  # optional column, still quarantined
        dict(base, milestone_id="JD4", stage="in-progress", updated_at="2026-02-30"),
        dict(base, milestone_id="", project_id=" "),
        dict(base, milestone_id="JD6", stage=" Interim-Result "),
    ]
    r = run(frame("legacy", "milestones", rows), "legacy", "milestones")
    reasons = dict(zip(r.quarantine["record_id"], r.quarantine["reason"], strict=True))
    assert reasons["JD1"] == "due_date: unparseable date '2019-13-45'"
    assert reasons["JD2"] == "due_date: required value missing"
    assert reasons["JD3"] == "completed_at: unparseable timestamp '昨天'"
    assert reasons["JD4"] == (
        "stage: unknown value 'in-progress' (expected one of initiation, implementation, interim_result, "
        "acceptance); updated_at: unparseable timestamp '2026-02-30'"
    )
    assert reasons[None] == "milestone_id: required value missing; project_id: required value missing"
    assert r.clean["stage"].to_list() == ["interim_result"]


def test_progress_out_of_range_and_fullwidth():
    base = GOOD["legacy"]["stage_reports"][0]
    rows = [
        dict(base, report_id="R1", progress_pct="150%"),
        dict(base, report_id="R2", progress_pct="８５％"),
        dict(base, report_id="R3", progress_pct="－５"),
        dict(base, report_id="R4", progress_pct="八十"),
        dict(base, report_id="R5", progress_pct=""),
        dict(base, report_id="R6", progress_pct="1"),
    ]
    r = run(frame("legacy", "stage_reports", rows), "legacy", "stage_reports")
    assert r.clean.select("report_id", "progress_pct").rows() == [("R2", 85.0), ("R5", None), ("R6", 1.0)]
    assert r.quarantine["reason"].to_list() == [
        "progress_pct: value '150%' out of range 0..100",
        "progress_pct: value '－５' out of range 0..100",
        "progress_pct: unparseable percentage '八十'",
    ]
    # metrics only for clean reports
    assert set(r.metrics["report_id"]) == {"R2", "R5", "R6"}


def test_a_plan_is_reused_only_for_input_of_its_shape():
    """Expressions are built once per shape of input (dialect, table, columns, and what the data says
    about itself: HTML entities, full-width forms) and reused: normalizing tables one after the other, in
    either order, gives what each gives alone."""
    from transforms.normalize import _plan

    reports = GOOD["legacy"]["stage_reports"][0]
    problems = GOOD["platform"]["problems"][0]
    inputs = [
        (frame("legacy", "stage_reports", [dict(reports, report_id="R1", progress_pct="85")]), "legacy", "stage_reports"),
        (frame("legacy", "stage_reports", [dict(reports, report_id="R2", progress_pct="８５％")]), "legacy",
         "stage_reports"),
        (frame("platform", "problems", [dict(problems, problem_id="W1", category="作风")]), "platform", "problems"),
        (frame("platform", "problems", [dict(problems, problem_id="W2", category="&#20316;&#39118;")]), "platform",
         "problems"),
    ]

    def each_alone() -> list[tuple[list, list]]:
        out = []
        for raw, dialect, table in inputs:
            _plan.cache_clear()
            r = run(raw, dialect, table)
            out.append((r.clean.rows(), r.quarantine.rows()))
        return out

    alone = each_alone()
    assert alone[1][1] == [] and 85.0 in alone[1][0][0]  # the full-width percentage parsed
    assert "作风" in alone[3][0][0]  # the entities decoded
    for order in (inputs, inputs[::-1]):
        _plan.cache_clear()
        got = {id(raw): (r.clean.rows(), r.quarantine.rows())
               for raw, dialect, table in order for r in [run(raw, dialect, table)]}
        assert [got[id(raw)] for raw, _, _ in inputs] == alone
    assert _plan.cache_info().currsize == 4  # four shapes: full-width or not, entities or not


def test_evidence_numbers_and_hashes():
    base = GOOD["legacy"]["evidence"][0]
    rows = [
        dict(base, evidence_id="E1", pages="-3"),
        dict(base, evidence_id="E2", pages="2.5页"),
        dict(base, evidence_id="E3", size_bytes="1.5MB"),
        dict(base, evidence_id="E4", sha256="xyz"),
        dict(base, evidence_id="E5", phash="12345"),
        dict(base, evidence_id="E6", pages="１２页", size_bytes="1,024"),
        dict(base, evidence_id="E7", size_bytes="3页"),
        dict(base, evidence_id="E8", kind="PHOTO"),
    ]
    r = run(frame("legacy", "evidence", rows), "legacy", "evidence")
    assert r.clean.select("evidence_id", "pages", "size_bytes", "kind").rows() == [
        ("E3", 12, 1572864, "sign_in_sheet"), ("E6", 12, 1024, "sign_in_sheet"), ("E8", 12, 2048576, "photo"),
    ]
    assert r.quarantine["reason"].to_list() == [
        "pages: negative value '-3'",
        "pages: not a whole number '2.5页'",
        "sha256: malformed sha256 (expected 64 hex digits) 'xyz'",
        "phash: malformed phash (expected 16 hex digits) '12345'",
        "size_bytes: unparseable size '3页'",
    ]


def test_text_html_control_and_ids():
    base = GOOD["platform"]["problems"][0]
    rows = [
        dict(base, problem_id=" WT1\t", description="<p>审批&nbsp;超时&amp;推诿</p>\x07", unit_code="\u3000５１０１０９ "),
        dict(base, problem_id="WT2", description="<b></b>", category="&#20316;&#39118;"),
    ]
    r = run(frame("platform", "problems", rows), "platform", "problems")
    assert r.clean.select("problem_id", "description", "unit_code", "category").rows() == [
        ("WT1", "审批 超时&推诿", "510109", "审批"),
        ("WT2", None, "510109", "作风"),
    ]


def test_required_text_blank_after_cleaning():
    rows = [dict(GOOD["platform"]["units"][0], unit_name="<p>&nbsp;</p>")]
    r = run(frame("platform", "units", rows), "platform", "units")
    assert r.quarantine["reason"].to_list() == ["unit_name: required value missing"]


def test_null_tokens_in_typed_columns():
    rows = [dict(GOOD["legacy"]["milestones"][0], completed_at="NULL"),
            dict(GOOD["legacy"]["milestones"][0], milestone_id="JD9", completed_at="—")]
    r = run(frame("legacy", "milestones", rows), "legacy", "milestones")
    assert r.clean["completed_at"].to_list() == [None, None]


# ------------------------------------------------------------------------------------------------ columns


def test_extra_column_reported_and_kept_in_raw():
    raw = frame("legacy", "units", GOOD["legacy"]["units"]).with_columns(
        bz=pl.lit("备注"), dwlx=pl.Series(["区县", "外星"])
    )
    r = run(raw, "legacy", "units")
    assert r.extra_columns == ["bz"]
    assert json.loads(r.quarantine["raw"][0]) == {
        "dwdm": "510109001", "dwmc": "肖家河街道", "dwlx": "外星", "sjdw": "510109", "bz": "备注",
    }


def test_missing_required_column_raises():
    raw = frame("legacy", "evidence", GOOD["legacy"]["evidence"]).drop("lx", "scsj")
    with pytest.raises(MissingColumnsError) as e:
        normalize_table(raw, dialect="legacy", table="evidence", source_id=SRC)
    assert e.value.table == "evidence"
    assert e.value.missing == ["lx", "scsj"]
    assert e.value.missing_canonical == ["kind", "uploaded_at"]
    assert "lx (kind)" in str(e.value)
    again = pickle.loads(pickle.dumps(e.value))
    assert (again.table, again.missing, str(again)) == ("evidence", ["lx", "scsj"], str(e.value))


def test_missing_optional_column_read_as_null():
    raw = frame("filedrop", "stage_reports", GOOD["filedrop"]["stage_reports"]).drop("指标", "内容")
    r = run(raw, "filedrop", "stage_reports")
    assert r.missing_columns == ["内容", "指标"]
    assert r.clean["summary"].to_list() == [None]
    assert r.metrics.is_empty()


def test_non_string_input_and_empty_frame():
    raw = pl.DataFrame({"dwdm": [1, 2], "dwmc": ["a", "b"], "dwlx": ["区县", "部门"], "sjdw": [None, 1]})
    r = run(raw, "legacy", "units")
    assert r.clean["unit_code"].to_list() == ["1", "2"]
    empty = frame("platform", "evidence", [])
    r = run(empty, "platform", "evidence")
    assert r.clean.is_empty() and r.quarantine.is_empty()


def test_unknown_dialect_or_table():
    with pytest.raises(ValueError):
        normalize_table(pl.DataFrame(), dialect="oracle", table="units", source_id=SRC)
    with pytest.raises(ValueError):
        normalize_table(pl.DataFrame(), dialect="legacy", table="nope", source_id=SRC)


# ------------------------------------------------------------------------------------------------ property

_VALUES = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["", " ", "2019-04-25", "2019/4/25 7:59", "80%", "0.8", "实施中", "照片", "ab" * 32, "X1", "x1 ",
                     "<b>&amp;</b>", "名称:1;b:x", '{"a": 1}', "１２页", "NULL", "2019-02-30", "\x00", "&#0;"]),
)


@pytest.mark.parametrize("table", list(TABLES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_never_crashes(table, data):
    dialect = data.draw(st.sampled_from(DIALECTS))
    cols = list(native_tables(dialect)[table].columns)
    n = data.draw(st.integers(0, 6))
    rows = data.draw(st.lists(st.lists(_VALUES, min_size=len(cols), max_size=len(cols)), min_size=n, max_size=n))
    raw = pl.DataFrame(rows, schema={c: pl.String for c in cols}, orient="row")
    r = run(raw, dialect, table)
    if table == "stage_reports":
        assert set(r.metrics["report_id"]) <= set(r.clean["report_id"])
        assert set(r.metrics_quarantine["record_id"]) <= set(r.clean["report_id"])
