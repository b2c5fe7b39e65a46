"""Unit tests of the shared parsers (transforms/parse.py) and the metrics parser (transforms/metrics.py)."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from polars.testing import assert_series_equal

from transforms import parse as P
from transforms.metrics import parse_metrics
from transforms.schema import METRICS_SCHEMA, QUARANTINE_SCHEMA, TABLES

SH = ZoneInfo("Asia/Shanghai")


def apply(fn, values, **kw) -> list:
    return pl.DataFrame({"v": values}, schema={"v": pl.String}).select(fn(pl.col("v"), **kw)).to_series().to_list()


# ------------------------------------------------------------------------------------------------ timestamps

TIMESTAMPS = [
    # every legacy format of the contract
    ("2019-04-25", datetime(2019, 4, 25, tzinfo=SH)),
    ("2019/4/25", datetime(2019, 4, 25, tzinfo=SH)),
    ("2019年4月25日", datetime(2019, 4, 25, tzinfo=SH)),
    ("20190425", datetime(2019, 4, 25, tzinfo=SH)),
    ("2019-04-25 07:59:27", datetime(2019, 4, 25, 7, 59, 27, tzinfo=SH)),
    ("2019/4/25 7:59", datetime(2019, 4, 25, 7, 59, tzinfo=SH)),
    # and the others the brief lists
    ("2019-04-25 07:59", datetime(2019, 4, 25, 7, 59, tzinfo=SH)),
    ("2019.04.25", datetime(2019, 4, 25, tzinfo=SH)),
    ("2019.4.25 7:59:27.5", datetime(2019, 4, 25, 7, 59, 27, 500000, tzinfo=SH)),
    ("2019-04-25 07:59:27.123456", datetime(2019, 4, 25, 7, 59, 27, 123456, tzinfo=SH)),
    ("２０１９－０４－２５　０７：５９", datetime(2019, 4, 25, 7, 59, tzinfo=SH)),
    ("２０１９年４月２５日", datetime(2019, 4, 25, tzinfo=SH)),
    ("2019年4月25日 7时59分", datetime(2019, 4, 25, 7, 59, tzinfo=SH)),
    ("20190425075927", datetime(2019, 4, 25, 7, 59, 27, tzinfo=SH)),
    ("  2019-04-25\u3000", datetime(2019, 4, 25, tzinfo=SH)),
    # platform: ISO instants (converted to Asia/Shanghai)
    ("2026-04-25 07:59:27+08:00", datetime(2026, 4, 25, 7, 59, 27, tzinfo=SH)),
    ("2026-04-25T07:59:27+08:00", datetime(2026, 4, 25, 7, 59, 27, tzinfo=SH)),
    ("2026-04-24T23:59:27Z", datetime(2026, 4, 25, 7, 59, 27, tzinfo=SH)),
    ("2026-04-24t23:59:27.250z", datetime(2026, 4, 25, 7, 59, 27, 250000, tzinfo=SH)),
    ("2026-04-24 18:59:27-05:00", datetime(2026, 4, 25, 7, 59, 27, tzinfo=SH)),
    ("2026-04-25 07:59:27+0800", datetime(2026, 4, 25, 7, 59, 27, tzinfo=SH)),
    ("2026-04-25 07:59:27+08", datetime(2026, 4, 25, 7, 59, 27, tzinfo=SH)),
    ("2026-04-24 23:59:27 UTC", datetime(2026, 4, 25, 7, 59, 27, tzinfo=SH)),
    ("2026-04-25 07:59+08:00", datetime(2026, 4, 25, 7, 59, tzinfo=SH)),
]


@pytest.mark.parametrize(("text", "expected"), TIMESTAMPS)
def test_timestamp_formats(text, expected):
    assert apply(P.timestamp, [text]) == [expected]


@pytest.mark.parametrize(
    "text",
    ["2019-02-30", "2019-13-45", "2019-04-25 25:00", "2019-04-31 07:00:00", "x", "2019-04", "25/04/2019",
     "2019-04-25 07:59:27+99:99", "20191345", "", "   ", None, "NULL", "—"],
)
def test_timestamp_unparseable_is_null(text):
    assert apply(P.timestamp, [text]) == [None]


def test_timestamp_dtype_and_dst_gap():
    out = pl.DataFrame({"v": ["1991-04-14 02:30", "2019-04-25"]}).select(t=P.timestamp(pl.col("v")))
    assert out.schema["t"] == pl.Datetime("us", "Asia/Shanghai")
    assert out["t"].to_list()[0] is None  # does not exist locally (DST gap)


def test_date_keeps_local_date():
    got = apply(P.date, ["2019-04-25", "2019/4/25 23:59", "2019-04-24T16:30:00Z", "2019-02-29", "20190425"])
    assert got == [date(2019, 4, 25), date(2019, 4, 25), date(2019, 4, 25), None, date(2019, 4, 25)]


def test_prepared_timestamp_matches_direct():
    df = pl.DataFrame({"v": [t for t, _ in TIMESTAMPS]})
    staged = df.with_columns(s=P.timestamp_text(pl.col("v"))).select(P.timestamp(pl.col("s"), prepared=True))
    assert staged.to_series().to_list() == [e for _, e in TIMESTAMPS]


# Canonical spellings (read by `timestamp_fast`) mixed with values it leaves to the general path, including
# canonical-looking ones it must not get wrong: impossible dates, a DST gap, a summer-time `+08:00`
# instant, a leap second, other offsets.
MIXED_TIMESTAMPS = [
    "2026-11-28T10:00:00+08:00", "2026-11-28 10:00:00", "2026-11-28", "2019/4/25 7:59", "２０１９－０４－２５",
    "2019-02-30", "2019-02-30 10:00:00", "2019-04-31T07:00:00+08:00", "1991-04-14 02:30:00",
    "1988-07-01T12:00:00+08:00", "1988-07-01 12:00:00", "1990-09-16 01:30:00", "2019-04-25 23:59:60",
    "2026-04-25T07:59:27+09:00", "2026-04-25T07:59:27Z", "2026-04-25 07:59:27+08:00", " 2026-04-25 07:59:27",
    "2026-04-25 07:59:27.5", "0000-01-01T00:00:00+08:00", "9999-12-31 23:59:59", "2026-04-25t07:59:27+08:00",
    "", None, "NULL",
]


def _series(fn, values, **kw) -> pl.Series:
    # a Series, not a list: year 0 (`0000-01-01…`) has no Python datetime
    return pl.DataFrame({"v": values}, schema={"v": pl.String}).select(fn(pl.col("v"), **kw)).to_series()


@pytest.mark.parametrize("fn", [P.timestamp, P.date])
def test_timestamp_fast_path_equals_general_path(fn):
    # the general path only (prepared, no fast path): what every row got before the fast path
    expected = _series(lambda v: fn(P.timestamp_text(v), prepared=True), MIXED_TIMESTAMPS)
    assert_series_equal(_series(fn, MIXED_TIMESTAMPS), expected)
    # staged as the normalizer does: fast path, then the text of the rows it left null
    df = pl.DataFrame({"v": MIXED_TIMESTAMPS}).with_columns(f=P.timestamp_fast(pl.col("v")))
    df = df.with_columns(s=P.timestamp_text(pl.when(pl.col("f").is_null()).then(pl.col("v"))))
    assert_series_equal(df.select(fn(pl.col("s"), prepared=True, fast=pl.col("f"))).to_series(), expected, check_names=False)
    fast = _series(P.timestamp_fast, MIXED_TIMESTAMPS)
    assert fast.is_not_null().sum() == 8  # the canonical ones (not 2019-02-30, the DST gap, …)
    assert apply(P.timestamp, ["1988-07-01T12:00:00+08:00"]) == [datetime(1988, 7, 1, 13, tzinfo=SH)]  # summer time


def test_timestamps_of_a_column_equal_timestamp_by_either_path():
    """`timestamps` (an extraction's change times) reads a canonical column by the fast path alone and any
    other by the general one; either way value for value what `timestamp` reads."""
    canonical = ["2026-11-28T10:00:00+08:00", "2026-11-28 10:00:00", "2019-02-30", "1991-04-14 02:30:00", None]
    for values in (canonical, MIXED_TIMESTAMPS, [], [None]):
        frame = pl.DataFrame({"v": values}, schema={"v": pl.String})
        assert_series_equal(P.timestamps(frame, "v"), _series(P.timestamp, values), check_names=False)
    assert P.fast_path_suffices(pl.DataFrame({"v": canonical}), {"v": "timestamp"})["v"]


# ------------------------------------------------------------------------------------------------ ids, text


def test_clean_id_trims_keeps_case():
    got = apply(P.clean_id, [" XM001 ", "\u3000ＸＭ００１\t", "xm001", "", "\u00a0007\n", "\u200bA-1\ufeff", None])
    assert got == ["XM001", "XM001", "xm001", None, "007", "A-1", None]
    keys = pl.DataFrame({"v": ["XM001", "xm001"]}).select(P.dedupe_key(pl.col("v"))).to_series().to_list()
    assert keys == ["xm001", "xm001"]


def test_clean_text_html_entities_controls():
    values = [
        "<p>整改&nbsp;完成&amp;验收</p>",
        "a < b &lt;b&gt; &quot;x&quot; &#39;y&#39;",
        "&#8220;引号&#8221; &#x4E2D; &#20013;",
        "第一行\r\n第二行\x00\x07\x1b",
        "<script>alert(1)</script>正文<!-- c -->",
        "<br/>",
        "\u3000 \t",
        "&amp;lt;",
        "\x85",
    ]
    ents = P.html_entity_map(pl.Series(values))
    got = apply(P.clean_text, values, entities=ents)
    assert got == [
        "整改 完成&验收",
        "a < b <b> \"x\" 'y'",
        "“引号” 中 中",
        "第一行\n第二行",
        "正文",
        None,
        None,
        "&lt;",
        None,
    ]


def test_html_entities_of_columns_is_the_map_of_each_column_together():
    frame = pl.DataFrame({
        "summary": ["&#8220;引号&#8221;", None, "无"],
        "title": ["&#x4E2D;&#20013;", "plain", None],
        "plain": ["a", "b", "c"],
        "number": ["&#49;", None, None],  # not asked for: its reference is not read
    })
    wanted = {**P.html_entity_map(frame["summary"]), **P.html_entity_map(frame["title"])}
    assert P.html_entities_of(frame, ["summary", "title", "plain", "summary"]) == wanted
    assert set(wanted) == {"&#8220;", "&#8221;", "&#x4E2D;", "&#20013;"}
    assert P.html_entities_of(frame, ["plain"]) == {} and P.html_entities_of(frame.clear(), ["summary"]) == {}


def test_clean_code_fullwidth():
    assert apply(P.clean_code, ["１３８００１３８０００", " a@b.cn "]) == ["13800138000", "a@b.cn"]


# ------------------------------------------------------------------------------------------------ numbers


def test_progress_legacy_fractions():
    got = apply(P.progress_pct, ["80%", "80", "0.8", "1", "1.0", "８５％", "80.00", ".5", "0", "abc", "80分", "", None])
    assert got == [80.0, 80.0, 80.0, 1.0, 100.0, 85.0, 80.0, 50.0, 0.0, None, None, None, None]


def test_progress_platform_no_fractions():
    assert apply(P.progress_pct, ["0.8", "80.00", "1.00"], fractions=False) == [0.8, 80.0, 1.0]


def test_numbers_fullwidth_units_thousands():
    got = apply(P.number, ["－５", "1,234", "1,234,567.5", "12页", "300万元", "１２．５", "1,2", "1e3", "inf", "1e999"])
    assert got == [-5.0, 1234.0, 1234567.5, 12.0, 300.0, 12.5, None, 1000.0, None, None]


def test_size_bytes_units():
    got = apply(P.size_bytes, ["2048", "2,048", "2048B", "2KB", "1.5MB", "1 GB", "12页", "-1"])
    assert got == [2048.0, 2048.0, 2048.0, 2048.0, 1572864.0, float(1024**3), None, -1.0]


def test_number_fast_path_equals_general_path():
    values = ["2048", "007", "0", "12页", "1.5MB", "80%", "0.8", "-5", "+5", "1,234", "１２", "999999999999999",
              "1" * 16, "9" * 400, " 12", "12 ", "", None, "—"]
    df = pl.DataFrame({"v": values}, schema={"v": pl.String}).with_columns(f=P.number_fast(pl.col("v")))
    df = df.with_columns(p=P.number_parts(pl.when(pl.col("f").is_null()).then(pl.col("v"))),
                         general=P.number_parts(pl.col("v")))
    for fn, kw in [(P.number, {}), (P.count, {}), (P.size_bytes, {}), (P.progress_pct, {"fractions": True}),
                   (P.progress_pct, {"fractions": False})]:
        expected = df.select(fn(pl.col("general"), prepared=True, **kw)).to_series().to_list()
        assert apply(fn, values, **kw) == expected
        staged = df.select(fn(pl.col("p"), prepared=True, fast=pl.col("f"), **kw)).to_series().to_list()
        assert staged == expected


# ------------------------------------------------------------------------------------------------ hashes


def test_hashes():
    h = "A" * 64
    assert apply(P.sha256, [h, " " + h.lower() + " ", "a" * 63, "g" * 64, ""]) == ["a" * 64, "a" * 64, None, None, None]
    assert apply(P.phash, ["0xFFEE00112233AABB", "ffee00112233aabb", "ffee"]) == ["ffee00112233aabb"] * 2 + [None]


def test_hash_fast_path_mixed_with_cleanup():
    clean = "ab" * 32
    values = [clean, " " + clean, clean.upper(), "0x" + clean, "ａｂ" * 32, clean[:-1], clean + "0", "", None]
    assert apply(P.sha256, values) == [clean, clean, clean, clean, clean, None, None, None, None]


def test_fullwidth_false_skips_the_halfwidth_pass_only_when_there_is_none():
    frame = pl.DataFrame({"a": ["XM001", "中文", None], "b": ["ＸＭ００１", "x", None], "c": ["１", None, None],
                          "d": [None, None, None]}, schema={c: pl.String for c in "abcd"})
    assert P.has_fullwidth(frame, ["a", "b", "c", "d"]) == {"a": False, "b": True, "c": True, "d": False}
    values = [" XM001 ", "2019-04-25", "12页", "In Progress", "中文", "", None]
    for fn in (P.clean_id, P.timestamp_text, P.number_parts, P.sha256, P.phash):
        assert apply(fn, values, fullwidth=False) == apply(fn, values)
    assert apply(P.enum, values, table="projects", column="status", fullwidth=False) == apply(
        P.enum, values, table="projects", column="status")


# ------------------------------------------------------------------------------------------------ enumerations


def test_every_canonical_and_contract_value_maps():
    for (table, column), spellings in P.ENUM_SPELLINGS.items():
        for canonical, others in spellings.items():
            values = [canonical, canonical.upper(), *others]
            assert apply(P.enum, values, table=table, column=column) == [canonical] * len(values)
    assert set(P.ENUMS) == {(t, c) for t, spec in TABLES.items() for c in spec.enums}


@pytest.mark.parametrize(
    ("table", "column", "value", "expected"),
    [
        ("projects", "status", "In Progress", "in_progress"),
        ("projects", "status", "in-progress", "in_progress"),
        ("projects", "status", " 实施中 ", "in_progress"),
        ("projects", "status", "实 施 中", "in_progress"),
        ("projects", "status", "进行中", "in_progress"),
        ("projects", "status", "ＣＯＭＰＬＥＴＥＤ", "completed"),
        ("projects", "status", "Canceled", "cancelled"),
        ("units", "unit_kind", "区县", "district"),
        ("units", "unit_kind", "村社区", "village"),
        ("milestones", "stage", "Interim Result", "interim_result"),
        ("milestones", "stage", "验收结项", "acceptance"),
        ("evidence", "kind", "Sign-In Sheet", "sign_in_sheet"),
        ("evidence", "kind", "签到表", "sign_in_sheet"),
        ("evidence", "kind", "会议纪要", "meeting_minutes"),
        ("problems", "origin", "走访企业", "enterprise_visit"),
        ("problems", "origin", "public report", "public_report"),
        ("problems", "status", "移交线索", "transferred"),
        ("problems", "status", "整改中", "open"),
        ("projects", "status", "bogus", None),
        ("projects", "status", "", None),
        ("evidence", "kind", "整改中", None),
    ],
)
def test_enum_variants(table, column, value, expected):
    assert apply(P.enum, [value], table=table, column=column) == [expected]


# ------------------------------------------------------------------------------------------------ metrics


def _metrics(values, ids=None):
    ids = ids or [f"R{i}" for i in range(len(values))]
    frame = pl.DataFrame({"report_id": ids, "metrics": values}, schema={"report_id": pl.String, "metrics": pl.String})
    m, q = parse_metrics(frame, source_id="s")
    assert m.schema == pl.Schema(METRICS_SCHEMA)
    assert q.schema == pl.Schema(QUARANTINE_SCHEMA)
    return m, q


def test_metrics_json_and_kv():
    m, q = _metrics(
        [
            '{"走访企业数": 100, "投入资金(万元)": 12.5}',
            "走访企业数:100;投入资金（万元）：１２．５;",
            ' { "\\u8d70\\u8bbf": "3", "x\\"y": -1.5e1 } ',
            "a : 1 ; b: 80% ；c:1,234",
            "",
            None,
        ]
    )
    assert m.rows() == [
        ("s", "R0", "走访企业数", 100.0),
        ("s", "R0", "投入资金(万元)", 12.5),
        ("s", "R1", "走访企业数", 100.0),
        ("s", "R1", "投入资金(万元)", 12.5),
        ("s", "R2", "走访", 3.0),
        ("s", "R2", 'x"y', -15.0),
        ("s", "R3", "a", 1.0),
        ("s", "R3", "b", 80.0),
        ("s", "R3", "c", 1234.0),
    ]
    assert q.is_empty()


def test_metrics_bad_entries():
    m, q = _metrics(
        [
            "a:1;b;c:x;a:2;:5",
            '{"a": 1, "b": }',
            '{"a": null, "b": "x", "c": 2, "d": {"e": 1}}',
            '{"a": "NaN", "b": true}',
            "[1, 2]",
        ]
    )
    assert m.rows() == [("s", "R0", "a", 2.0)]
    reasons = q.select("record_id", "reason").rows()
    assert reasons[:4] == [
        ("R0", "metrics: duplicate name 'a' (a later entry of the same report wins)"),
        ("R0", "metrics: entry 'b' is not name:value"),
        ("R0", "metrics: 'c' value 'x' is not a number"),
        ("R0", "metrics: entry ':5' has no name"),
    ]
    assert [r for r, _ in reasons[4:]] == ["R1", "R2", "R3", "R3", "R4"]
    assert "not a flat JSON object" in reasons[4][1]
    assert all(t == "metrics" for t in q["table"])


def _canonical_times():
    from hypothesis import strategies as st

    parts = st.tuples(st.integers(1900, 2100), st.integers(0, 13), st.integers(0, 32), st.integers(0, 25),
                      st.integers(0, 61), st.integers(0, 61), st.sampled_from(["date", "naive", "offset"]))

    def spell(p):
        y, mo, d, h, mi, s, shape = p
        day = f"{y:04d}-{mo:02d}-{d:02d}"
        return {"date": day, "naive": f"{day} {h:02d}:{mi:02d}:{s:02d}",
                "offset": f"{day}T{h:02d}:{mi:02d}:{s:02d}+08:00"}[shape]

    # impossible dates and times, the 1986–91 summer-time gaps and overlaps, leap seconds, and now and
    # then a value of another spelling (which must keep the general path)
    dst = st.sampled_from(["1988-04-10 02:30:00", "1988-09-11 01:30:00", "1991-04-14 02:00:00", "1986-05-04"])
    other = st.sampled_from(["2019/4/25", " 2019-04-25", "2019-04-25 07:59", "２０１９-04-25", "20190425"])
    return st.lists(st.one_of(st.none(), parts.map(spell), dst, other), max_size=12)


def _digit_strings():
    from hypothesis import strategies as st

    return st.lists(st.one_of(st.none(), st.from_regex(r"\A[0-9]{1,16}\Z"), st.sampled_from(["12页", "0.8", "1,024"])),
                    max_size=12)


def _check_fast_path_alone(values: list, kind: str, general) -> None:
    frame = pl.DataFrame({"v": values}, schema={"v": pl.String})
    if not P.fast_path_suffices(frame, {"v": kind})["v"]:
        return
    fast = P.timestamp_fast(pl.col("v")) if kind in ("timestamp", "date") else P.number_fast(pl.col("v"))
    alone = frame.select(fast.dt.date() if kind == "date" else fast).to_series()
    assert_series_equal(alone, frame.select(general(pl.col("v"))).to_series(), check_names=False)


def test_fast_path_alone_reads_a_canonical_column_as_the_general_path_does():
    """Where `fast_path_suffices` says so, the normalizer reads a column by the fast path alone: on such a
    column it gives what the general path gives, value for value, impossible dates, summer-time gaps and
    leap seconds included."""
    from hypothesis import given, settings

    @settings(max_examples=300, deadline=None)
    @given(_canonical_times())
    def times(values):
        _check_fast_path_alone(values, "timestamp", P.timestamp)
        _check_fast_path_alone(values, "date", P.date)

    @settings(max_examples=200, deadline=None)
    @given(_digit_strings())
    def numbers(values):
        _check_fast_path_alone(values, "count", P.count)
        _check_fast_path_alone(values, "bytes", P.size_bytes)
        _check_fast_path_alone(values, "progress", lambda e: P.progress_pct(e, fractions=True))
        _check_fast_path_alone(values, "progress", lambda e: P.progress_pct(e, fractions=False))

    times()
    numbers()
    assert P.fast_path_suffices(pl.DataFrame({"a": ["2019-04-25", None], "b": ["2019/4/25", "2019-04-25"]}),
                                {"a": "date", "b": "timestamp"}) == {"a": True, "b": False}
