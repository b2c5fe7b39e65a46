"""Property-based fuzzing (Hypothesis) of every normalizer, the filedrop and SQLite readers, and every rule.

Hypothesis is slow at drawing ten-thousand-element lists, so each example draws *pools* of hostile values
(arbitrary Unicode incl. surrogates, NUL, SQL injection text, impossible and far dates, full-width digits,
1e308 / -0 / NaN, malformed hashes and enumerations, HTML, broken metrics, 1 MB values, typed platform
columns: floats, int64 extremes, far datetimes) and a seed; the seed then expands the pools into N rows
per frame, mixed with valid-looking rows of the dialect (numpy sampling: fast and reproducible from the
example). The properties:

- normalization never raises (except `MissingColumnsError` when a required column is absent);
- every input row ends in silver (`clean`) or in the quarantine, exactly once (matched row by row through
  the quarantine's `raw` JSON, not only counted); the metrics of a report come from clean reports only;
- clean frames have the canonical schema and satisfy its constraints;
- a filedrop delivery written as bytes (GB18030 with broken sequences, UTF-8 with or without BOM, NUL
  bytes, CR / CRLF / LF, a cut-off last line) loses no data line;
- every rule (traces, fabrication, deadline, contract) runs on fuzzed silver and yields well-formed flags.

`pytest --slow` (tests/conftest.py) raises the rows per table and the number of examples.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from expectations.catalog import ENTITY_TYPES, FAMILIES, FLAG_SCHEMA, RULES, SEVERITIES
from expectations.contract import contract_suite_flags
from expectations.deadline import deadline_flags
from expectations.gx_runner import Validator
from expectations.rules import rule_flags, rule_modules
from expectations.rules.base import RuleContext
from expectations.settings import rule_params
from flows.extract import decode_bytes, extract_filedrop, extract_sql, read_delivery_csv
from flows.registry import Source
from transforms import parse
from transforms.dialects import DIALECTS, native_tables
from transforms.normalize import (
    MissingColumnsError,
    Normalized,
    _header_key,
    _match_columns,
    column_kind,
    normalize_table,
)
from transforms.references import resolve_references
from transforms.schema import METRICS_SCHEMA, QUARANTINE_SCHEMA, TABLES, TZ

# --------------------------------------------------------------------------------------------------
# scale
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    rows: int  # rows of one generated frame (normalizer fuzz)
    examples: int  # Hypothesis examples per dialect and table: rows * examples rows per table and dialect
    filedrop_rows: int  # data lines per file of one delivery (7 files)
    filedrop_examples: int
    rule_rows: int  # rows per table and source of the silver that every rule (with GX) runs on
    rule_examples: int  # Great Expectations costs a second or two per run: few examples
    feature_rows: int  # rows per table and source for the rule features without GX
    feature_examples: int


DEFAULT = Scale(rows=2_500, examples=4, filedrop_rows=400, filedrop_examples=6, rule_rows=150, rule_examples=2,
                feature_rows=2_000, feature_examples=3)
SLOW = Scale(rows=20_000, examples=10, filedrop_rows=3_000, filedrop_examples=25, rule_rows=600, rule_examples=6,
             feature_rows=20_000, feature_examples=8)


@pytest.fixture(scope="module")
def scale(slow: bool) -> Scale:
    return SLOW if slow else DEFAULT


def fuzz_settings(max_examples: int):
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


# --------------------------------------------------------------------------------------------------
# hostile values
# --------------------------------------------------------------------------------------------------


def source_str(s: str) -> str:
    """What a source can hand over: Arrow strings are UTF-8, so a surrogate pair becomes its character and a
    lone surrogate U+FFFD (what every decoder does with one). Polars cannot hold a lone surrogate at all."""
    return s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


FW = {chr(0x21 + i): chr(0xFF01 + i) for i in range(94)}


def fullwidth(s: str) -> str:
    return "".join(FW.get(c, c) for c in s)


EDGE: list[str] = [
    "", " ", "\u3000", "\t\n", "\x00", "a\x00b", "\x00" * 3, "\ufeff", "\u200b", "\x85", "\u2028", "\x7f\x9f",
    "'; DROP TABLE xm; --", "Robert'); DROP TABLE students;--", "\" OR 1=1 --", "%' OR '1'='1", "1; DELETE FROM ry",
    "NULL", "null", "None", "NaN", "nan", "N/A", "-", "—", "/", "无", "\\N",
    "2026-02-30", "2026-13-01", "0000-00-00", "0000-00-00 00:00:00", "9999-12-31 23:59:59", "10000-01-01",
    "0001-01-01", "-0001-01-01", "1970-01-01T00:00:00Z", "2026-04-25T07:59:27+99:99", "2026-04-25 24:00:00",
    "1986-05-04 02:30:00", "1991-09-15 00:30", "２０２６年４月２５日", "2026/4/31", "20260231", "2026-4-5 7:5",
    "2026.04.25", "20260425075927", "2026-04-25T07:59:27.1234567891+08:00", "2026年", "T", "Z", "UTC", "年月日",
    "１２３", "８５％", "－５", "1e308", "-1e308", "1e309", "-0", "-0.0", "+0", "0.", ".5", "1,2", "1,234,567.5",
    "inf", "-inf", "Infinity", "9" * 30, "9223372036854775807", "9223372036854775808", "-9223372036854775809",
    "0x10", "1.5MB", "1e400KB", "12页", "12 pages", "3.0", "100.0000001", "101%", "0.99999", "1e-320", "%",
    "ab" * 32, "AB" * 32, "0x" + "f" * 64, "g" * 64, "ab" * 31, "0" * 16, "F" * 16, "ｆ" * 16, "0x" + "0" * 16,
    "实施中", "已完成", "In-Progress", " 照片 ", "PHOTO", "sign in", "区(县)", "明察暗访", "移交线索", "整改中",
    "<b>&amp;</b>", "<script>alert(1)</script>", "<!-- c -->", "&#0;", "&#xD800;", "&#55357;&#56832;",
    "&#1114111;", "&#1114112;", "&#99999999;", "&#x110000;", "&amp;lt;", "&nbsp;", "<br/>", "<<>>", "</p>",
    '{"a": 1}', '{"a": {"b": 1}}', '{"a": [1]}', "{", "}", "{}", '{"": 1}', '{"a": "1e999"}', '{"a": NaN}',
    '{"\\ud800": 1}', '{"\\u0000": "\\ud83d\\ude00"}', '{"a\\"b": 1, "a\\"b": 2}', '｛"a"：1｝', '{"a": null}',
    "a:1;b:x", "a:1;a:2", ":1", "a:", ";;;", "名称：８５％；", "a:1\nb:2\r\nc:3", "1:2:3", "a:1e308;b:-1e308",
    "\\u0000", "\\", '"', "'", '"""', ",", "\r", "\r\n", "\n\n",
    "😀", "\U0010ffff", "\ufffd", "𠀀", "\ud83d\ude00", "\ud800", "\udfff",
]
EDGE = [source_str(s) for s in EDGE]

_CHARS = st.characters(codec=None, exclude_categories=())  # every code point, surrogates included
_SURROGATES = st.one_of(
    st.tuples(st.integers(0xD800, 0xDBFF), st.integers(0xDC00, 0xDFFF)).map(lambda p: chr(p[0]) + chr(p[1])),
    st.integers(0xD800, 0xDFFF).map(chr),
)
TEXT = st.lists(st.one_of(st.text(_CHARS, max_size=12), _SURROGATES, st.sampled_from(EDGE)), max_size=4).map(
    lambda parts: source_str("".join(parts))
)

_DATE_FORMATS = [
    "{y:04d}-{m:02d}-{d:02d}", "{y}/{m}/{d}", "{y}年{m}月{d}日", "{y:04d}{m:02d}{d:02d}", "{y}.{m}.{d}",
    "{y:04d}-{m:02d}-{d:02d} {H:02d}:{M:02d}:{S:02d}", "{y}/{m}/{d} {H}:{M}", "{y:04d}-{m:02d}-{d:02d}T{H:02d}:{M:02d}:{S:02d}Z",
    "{y:04d}-{m:02d}-{d:02d}T{H:02d}:{M:02d}:{S:02d}+{H:02d}:{M:02d}", "{y:04d}-{m:02d}-{d:02d} {H:02d}:{M:02d}:{S:02d}.{f} UTC",
    "{y:04d}{m:02d}{d:02d}{H:02d}{M:02d}{S:02d}", "{y}年{m}月{d}日 {H}时{M}分{S}秒", "{y:04d}-{m:02d}-{d:02d} {H:02d}:{M:02d}:{S:02d}-{M:02d}{S:02d}",
]


def _date_text(parts: tuple[int, int, int, int, int, int, int], fmt: str, wide: bool) -> str:
    y, m, d, hh, mm, ss, f = parts
    s = fmt.format(y=y, m=m, d=d, H=hh, M=mm, S=ss, f=f)
    return fullwidth(s) if wide else s


# impossible fields on purpose (month 13, day 31 of February, hour 24, year 0 and five-digit years)
DATE_TEXT = st.builds(
    _date_text,
    st.tuples(st.integers(0, 12000), st.integers(0, 13), st.integers(0, 32), st.integers(0, 25), st.integers(0, 61),
              st.integers(0, 61), st.integers(0, 10**12)),
    st.sampled_from(_DATE_FORMATS),
    st.booleans(),
) | st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).map(str)

_UNITS = ["", "", "%", "％", "页", "张", " pages", "MB", "kb", "G", "万元", " ", "个", "e", "e5", "..", "%%", "B"]
NUMBER_TEXT = st.builds(
    lambda num, unit, wide, sign: (fullwidth if wide else str)(sign + num + unit),
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.floats(allow_nan=True, allow_infinity=True).map(lambda f: f"{f:,}"),
        st.integers(-(2**80), 2**80).map(str),
        st.decimals(allow_nan=True).map(str),
        st.integers(0, 10**9).map(lambda i: f"{i:,}"),
        st.from_regex(r"[0-9.,eE+\-]{1,12}", fullmatch=True),
    ),
    st.sampled_from(_UNITS),
    st.booleans(),
    st.sampled_from(["", "", "+", "-", "−", " "]),
)
HEX_TEXT = st.one_of(
    st.text("0123456789abcdefABCDEFxg ", max_size=70),
    st.from_regex(r"(0x|0X)?[0-9a-fA-F]{15,17}|[0-9a-fA-F]{63,65}", fullmatch=True),
    st.from_regex(r"[0-9a-f]{16}|[0-9a-f]{64}", fullmatch=True).map(fullwidth),
)


def _enum_spellings() -> list[str]:
    out = []
    for spellings in parse.ENUM_SPELLINGS.values():
        for canonical, others in spellings.items():
            out += [canonical, *others]
    return out


_ENUM_MUTATIONS = [str, str.upper, str.title, lambda s: f" {s}\u3000", lambda s: s.replace("_", "-"),
                   lambda s: s.replace("_", " "), fullwidth, lambda s: s + "x", lambda s: s[:-1], lambda s: f"<b>{s}</b>"]
ENUM_TEXT = st.builds(lambda s, f: f(s), st.sampled_from(_enum_spellings()), st.sampled_from(_ENUM_MUTATIONS))

_METRIC_VALUE = st.one_of(st.floats(allow_nan=False), st.integers(-(2**70), 2**70), TEXT, st.none(), st.booleans(),
                          st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
METRICS_TEXT = st.one_of(
    st.builds(lambda d, ascii_: json.dumps(d, ensure_ascii=ascii_), st.dictionaries(TEXT, _METRIC_VALUE, max_size=5),
              st.booleans()),
    st.lists(st.tuples(TEXT, st.one_of(TEXT, NUMBER_TEXT)), max_size=5).map(
        lambda kv: ";".join(f"{k}:{v}" for k, v in kv)),
    st.lists(st.tuples(st.sampled_from(["走访企业数", "投入资金（万元）", "a", ""]), NUMBER_TEXT), max_size=4).map(
        lambda kv: "；".join(f"{k}：{v}" for k, v in kv)),
    TEXT,
)
HTML_TEXT = st.lists(
    st.one_of(TEXT, st.sampled_from(["<p>", "</p>", "<br>", "<script>x</script>", "&nbsp;", "&#x4E2D;", "&#20316;",
                                      "&AMP;", "<!--", "-->", "<a href='x'>", "&#1114112;", "\r\n", "\x07"])),
    max_size=6,
).map("".join)

HOSTILE = st.one_of(st.sampled_from(EDGE), TEXT, DATE_TEXT, NUMBER_TEXT, HEX_TEXT, ENUM_TEXT)
KIND_HOSTILE = {
    "timestamp": DATE_TEXT, "date": DATE_TEXT, "progress": NUMBER_TEXT, "count": NUMBER_TEXT, "bytes": NUMBER_TEXT,
    "sha256": HEX_TEXT, "phash": HEX_TEXT, "enum": ENUM_TEXT, "id": TEXT, "text": HTML_TEXT, "code": TEXT,
    "metrics": METRICS_TEXT,
}

# 1 MB values (built after drawing: Hypothesis would take minutes to draw them character by character)
HUGE_UNITS = ["走访企业100家，解决问题12个。", "x", "\x00", "<p>a</p>", "&#x4E2D;", "9", " ", "😀", "a:1;", "\r\n", "&amp;"]


def huge(size: int, unit: str) -> str:
    return unit * max(1, size // len(unit.encode()))


@dataclass
class Spec:
    """One Hypothesis example: the pools and rates a seed expands into rows."""

    seed: int
    p_hostile: float
    p_null: float
    p_dup: float
    pool_any: list[str]
    pools: dict[str, list[str]]
    huge: list[tuple[int, str, int]] = field(default_factory=list)  # (bytes, repeated unit, column number)
    typed: bool = False  # platform: some columns typed (datetime, date, float, int, null) as a driver gives them
    floats: list[float] = field(default_factory=list)
    ints: list[int] = field(default_factory=list)
    datetimes: list[datetime] = field(default_factory=list)
    dates: list[date] = field(default_factory=list)


@st.composite
def specs(draw, kinds: tuple[str, ...] = tuple(KIND_HOSTILE), typed: bool = False) -> Spec:
    return Spec(
        seed=draw(st.integers(0, 2**32 - 1)),
        p_hostile=draw(st.sampled_from([0.0, 0.02, 0.1, 0.3, 0.9])),
        p_null=draw(st.sampled_from([0.0, 0.01, 0.1, 0.5])),
        p_dup=draw(st.sampled_from([0.0, 0.01, 0.1, 0.5])),
        pool_any=draw(st.lists(HOSTILE, min_size=1, max_size=25)),
        pools={k: draw(st.lists(KIND_HOSTILE[k], max_size=12)) for k in kinds},
        huge=draw(st.lists(st.tuples(st.sampled_from([2**16, 2**20]), st.sampled_from(HUGE_UNITS), st.integers(0, 20)),
                           max_size=2)),
        typed=typed and draw(st.booleans()),
        floats=draw(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=8)),
        ints=draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8)),
        datetimes=draw(st.lists(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
                                max_size=8)),
        dates=draw(st.lists(st.dates(), max_size=8)),
    )


# --------------------------------------------------------------------------------------------------
# valid-looking rows in each dialect's own spelling, expanded from a seed
# --------------------------------------------------------------------------------------------------

PREFIX = {"units": "U", "persons": "P", "projects": "X", "milestones": "M", "stage_reports": "R", "evidence": "E",
          "problems": "W"}
REFERENCE = {(t, r.column): r.table for t, spec in TABLES.items() for r in spec.references}
ZH = ["优化营商环境专项整治", "走访企业100家，解决问题12个。", "窗口人员脱岗", "审批时限过长", "成都高新区", "张伟",
      "召开专题会议研究部署，形成会议纪要。", "<p>整改&nbsp;到位</p>", "签到表.pdf", "走访照片1.jpg", "营商环境", "科长"]
_T0 = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())
_T1 = int(datetime(2027, 12, 31, tzinfo=UTC).timestamp())
TS_FORMATS = {
    "platform": ["%Y-%m-%dT%H:%M:%S%:z", "%Y-%m-%d %H:%M:%S%.3f%:z", "%Y-%m-%d %H:%M:%S%:z"],
    "legacy": ["%Y-%m-%d", "%Y/%-m/%-d", "%Y年%-m月%-d日", "%Y%m%d", "%Y-%m-%d %H:%M:%S", "%Y/%-m/%-d %-H:%M"],
}
DATE_FORMATS = {"platform": ["%Y-%m-%d"], "legacy": ["%Y-%m-%d", "%Y/%-m/%-d", "%Y年%-m月%-d日", "%Y%m%d"]}


def _native_spelling(dialect: str) -> str:
    return "platform" if dialect == "platform" else "legacy"


def _pick(rng: np.random.Generator, options: list, n: int) -> np.ndarray:
    return np.asarray(options, dtype=object)[rng.integers(len(options), size=n)]


def _formatted(rng: np.random.Generator, seconds: np.ndarray, formats: list[str]) -> np.ndarray:
    s = pl.Series(seconds * 1_000_000).cast(pl.Datetime("us", "UTC")).dt.convert_time_zone(TZ)
    variants = np.stack([s.dt.strftime(f).to_numpy().astype(object) for f in formats])
    return variants[rng.integers(len(formats), size=len(seconds)), np.arange(len(seconds))]


def _hexes(rng: np.random.Generator, n: int, digits: int) -> np.ndarray:
    h = rng.bytes(n * digits // 2).hex()
    return np.asarray([h[i * digits:(i + 1) * digits] for i in range(n)], dtype=object)


def valid_column(rng: np.random.Generator, dialect: str, table: str, column: str, n: int, world: int) -> np.ndarray:
    """n valid-looking values of one canonical column (plus `metrics`), as the dialect writes them."""
    spelling = _native_spelling(dialect)
    kind = "metrics" if column == "metrics" else column_kind(table, column)
    if column == TABLES[table].key:
        return np.asarray([f"{PREFIX[table]}{i:05d}" for i in rng.permutation(n)], dtype=object)
    if (table, column) in REFERENCE:
        target = REFERENCE[(table, column)]
        return np.asarray([f"{PREFIX[target]}{i:05d}" for i in rng.integers(max(world, 1), size=n)], dtype=object)
    if kind == "id":
        return np.asarray([f"GX-{i}" for i in rng.integers(1000, size=n)], dtype=object)
    if kind == "text":
        return _pick(rng, ZH, n) + np.asarray([str(i) for i in rng.integers(100, size=n)], dtype=object)
    if kind == "code":
        return np.asarray([f"13{i:09d}" for i in rng.integers(10**9, size=n)], dtype=object)
    if kind in ("timestamp", "date"):
        seconds = rng.integers(_T0, _T1, size=n)
        return _formatted(rng, seconds, (TS_FORMATS if kind == "timestamp" else DATE_FORMATS)[spelling])
    if kind == "enum":
        spellings = parse.ENUM_SPELLINGS[(table, column)]
        options = list(spellings) if spelling == "platform" else [others[0] for others in spellings.values()]
        return _pick(rng, options, n)
    if kind in ("sha256", "phash"):
        digits = 64 if kind == "sha256" else 16
        pool = _hexes(rng, max(1, n // 4), digits)  # shared hashes: the same file in several places
        out = pool[rng.integers(len(pool), size=n)]
        return np.asarray([s.upper() for s in out], dtype=object) if spelling == "legacy" and rng.random() < 0.5 else out
    if kind == "progress":
        p = rng.integers(0, 101, size=n)
        forms = ["{}", "{}.00"] if spelling == "platform" else ["{}%", "{}", "0.{:02d}"]
        return np.asarray([forms[j].format(v if j < 2 or v < 100 else 99) for v, j in
                           zip(p, rng.integers(len(forms), size=n), strict=True)], dtype=object)
    if kind == "count":
        suffix = [""] if spelling == "platform" else ["", "页", " 页"]
        return np.asarray([f"{v}{s}" for v, s in zip(rng.integers(0, 60, size=n), _pick(rng, suffix, n), strict=True)],
                          dtype=object)
    if kind == "bytes":
        return np.asarray([str(v) if spelling == "platform" or v % 3 else f"{v / 1024:.1f}KB"
                           for v in rng.integers(0, 10**8, size=n)], dtype=object)
    if kind == "metrics":
        values = rng.integers(0, 10**6, size=(n, 2))
        if spelling == "platform":
            return np.asarray([f'{{"走访企业数": {a}, "投入资金(万元)": {b / 100}}}' for a, b in values], dtype=object)
        return np.asarray([f"走访企业数:{a};投入资金（万元）：{b / 100};" for a, b in values], dtype=object)
    raise AssertionError(kind)


def _kind(table: str, column: str) -> str:
    return "metrics" if column == "metrics" else column_kind(table, column)


def _variant(rng: np.random.Generator, key: str) -> str:
    """Another spelling of the same id (contract §6: ids that differ by case or white space)."""
    return [key, key.lower(), f" {key}\u3000", fullwidth(key), key + "\t"][int(rng.integers(5))]


def build_frame(spec: Spec, dialect: str, table: str, n: int, world: int | None = None) -> pl.DataFrame:
    """n rows of one native table: all native columns, valid rows mixed with hostile values, duplicated ids,
    exact copies, 1 MB values, and (platform) typed columns."""
    rng = np.random.default_rng(spec.seed)
    nt = native_tables(dialect)[table]
    key = TABLES[table].key
    world = n if world is None else world
    columns: dict[str, np.ndarray] = {}
    for native, canonical in nt.columns.items():
        values = valid_column(rng, dialect, table, canonical, n, world)
        pool = spec.pools.get(_kind(table, canonical), []) + spec.pool_any
        hostile = rng.random(n) < spec.p_hostile
        if hostile.any():
            values[hostile] = _pick(rng, pool, int(hostile.sum()))
        values[rng.random(n) < spec.p_null] = None
        columns[native] = values
    if n:
        keys = columns[nt.reverse[key]]
        dup = np.flatnonzero(rng.random(n) < spec.p_dup)  # the same id again (another spelling), other values
        for i in dup:
            other = keys[int(rng.integers(n))]
            keys[i] = _variant(rng, other) if isinstance(other, str) else other
        copies = np.flatnonzero(rng.random(n) < spec.p_dup / 5)  # exact copies of another row
        for i in copies:
            j = int(rng.integers(n))
            for values in columns.values():
                values[i] = values[j]
        for size, unit, column in spec.huge:
            columns[list(columns)[column % len(columns)]][int(rng.integers(n))] = huge(size, unit)
    frame = pl.DataFrame({c: pl.Series(c, v.tolist(), dtype=pl.String) for c, v in columns.items()})
    if spec.typed and dialect == "platform":
        frame = _typed(frame, spec, table, rng)
    return frame


def _typed(frame: pl.DataFrame, spec: Spec, table: str, rng: np.random.Generator) -> pl.DataFrame:
    """Some columns as a driver would type them: datetimes (naive, UTC or Shanghai), dates, floats, int64,
    all-null columns, numeric ids; the hostile values are typed too (far dates, NaN, inf, int64 extremes)."""
    n = frame.height
    out = {}
    for c in frame.columns:
        kind = _kind(table, c)
        choice = rng.random()
        hostile = rng.random(n) < max(spec.p_hostile, 0.05)
        if choice < 0.1:
            out[c] = pl.Series(c, [None] * n)  # dtype Null
        elif kind in ("timestamp", "date") and choice < 0.8:
            seconds = rng.integers(_T0, _T1, size=n)
            base = [datetime.fromtimestamp(int(s), UTC).replace(tzinfo=None) for s in seconds]
            pool = spec.datetimes or [datetime(1, 1, 2)]
            vals = [pool[int(rng.integers(len(pool)))] if h else v for v, h in zip(base, hostile, strict=True)]
            s = pl.Series(c, vals, dtype=pl.Datetime("us"))
            if kind == "date":
                s = s.dt.date()
                if spec.dates:
                    s = s.scatter(np.flatnonzero(hostile), _pick(rng, spec.dates, int(hostile.sum())).tolist())
            else:
                tz = [None, "UTC", TZ][int(rng.integers(3))]
                s = s.dt.replace_time_zone("UTC").dt.convert_time_zone(tz) if tz else s
            out[c] = s
        elif kind == "progress" and choice < 0.8:
            base = rng.uniform(0, 100, size=n).round(2)
            pool = spec.floats or [float("nan")]
            out[c] = pl.Series(c, [pool[int(rng.integers(len(pool)))] if h else float(v)
                                   for v, h in zip(base, hostile, strict=True)], dtype=pl.Float64)
        elif kind in ("count", "bytes") and choice < 0.8:
            base = rng.integers(0, 10**6, size=n)
            pool = spec.ints or [-1]
            out[c] = pl.Series(c, [pool[int(rng.integers(len(pool)))] if h else int(v)
                                   for v, h in zip(base, hostile, strict=True)], dtype=pl.Int64)
        elif kind == "id" and c != TABLES[table].key and choice < 0.3:
            out[c] = pl.Series(c, rng.integers(-5, 10**6, size=n), dtype=pl.Int64)
        else:
            out[c] = frame[c]
    return pl.DataFrame(out)


# --------------------------------------------------------------------------------------------------
# the invariants of one normalization
# --------------------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\ufeff]")


def row_json(raw: pl.DataFrame) -> list[str]:
    """Each input row as the quarantine's `raw` JSON would hold it (values as text)."""
    if not raw.columns:
        return ["{}"] * raw.height
    text = raw.cast({c: pl.String for c, t in raw.schema.items() if t != pl.String})
    return text.select(pl.struct(raw.columns).struct.json_encode())[:, 0].to_list()


def _matched(raw: pl.DataFrame, native: dict[str, str]) -> dict[str, str]:
    """{input column -> canonical column}, as the normalizer matches headers."""
    found, _ = _match_columns(raw, native)
    return {v: k for k, v in found.items()}


def check_normalized(raw: pl.DataFrame, dialect: str, table: str, source_id: str = "fz") -> Normalized:
    spec = TABLES[table]
    nt = native_tables(dialect)[table]
    r = normalize_table(raw, dialect=dialect, table=table, source_id=source_id)

    # every row once: in the quarantine (matched by its raw JSON) or else in clean (matched by its id)
    assert raw.height == r.clean.height + r.quarantine.height
    matched = _matched(raw, nt.columns)  # input column -> canonical (headers may be re-spelled)
    native_key = next(f for f, canon in matched.items() if canon == spec.key)
    ids = raw.select(parse.clean_id(pl.col(native_key).cast(pl.String)))[:, 0].to_list()
    quarantined = Counter(r.quarantine["raw"].to_list())
    clean_rows = []
    for i, j in enumerate(row_json(raw)):
        if quarantined[j] > 0:
            quarantined[j] -= 1
        else:
            clean_rows.append(i)
    assert not +quarantined, "quarantined rows that are not input rows"
    assert Counter(ids[i] for i in clean_rows) == Counter(r.clean[spec.key].to_list())

    # schemas
    assert r.clean.schema == pl.Schema(spec.schema)
    assert r.quarantine.schema == pl.Schema(QUARANTINE_SCHEMA)
    assert r.metrics.schema == pl.Schema(METRICS_SCHEMA)
    assert r.metrics_quarantine.schema == pl.Schema(QUARANTINE_SCHEMA)

    # clean rows keep the canonical constraints
    c = r.clean
    assert c["source_id"].to_list() == [source_id] * c.height
    assert c[spec.key].str.to_lowercase().is_unique().all()
    for col in spec.required:
        assert c[col].null_count() == 0, col
    for col, allowed in spec.enums.items():
        assert set(c[col].drop_nulls()) <= set(allowed), col
    for col, dtype in spec.columns.items():
        kind = column_kind(table, col)
        values = c[col].drop_nulls()
        if dtype == pl.String and kind in ("id", "text", "code"):
            assert (values.str.len_bytes() > 0).all(), col
            assert (values.str.strip_chars(parse.WHITESPACE) == values).all(), col
        if kind in ("text", "code"):
            assert not any(_CONTROL.search(v) for v in values), col
        if kind == "progress":
            assert values.is_finite().all() and ((values >= 0) & (values <= 100)).all()
        if kind in ("count", "bytes"):
            assert (values >= 0).all(), col
        if kind in ("sha256", "phash"):
            assert values.str.contains(f"^[0-9a-f]{{{64 if kind == 'sha256' else 16}}}$").all(), col

    # the quarantine says why, names the row, and keeps it whole
    q = r.quarantine
    assert (q["table"] == table).all() and (q["source_id"] == source_id).all()
    assert (q["reason"].str.len_chars() > 0).all()
    if q.height:
        decoded = [json.loads(s) for s in q["raw"]]
        assert all(list(d) == raw.columns for d in decoded)
        keys = pl.Series([d[native_key] for d in decoded], dtype=pl.String)
        assert q["record_id"].to_list() == pl.select(parse.clean_id(pl.lit(keys)))[:, 0].to_list()

    # metrics: only of clean reports; a report whose metrics say anything gets a metric or a quarantined entry
    if table == "stage_reports":
        clean_reports = set(c["report_id"])
        assert set(r.metrics["report_id"]) <= clean_reports
        assert set(r.metrics_quarantine["record_id"]) <= clean_reports
        assert (r.metrics_quarantine["table"] == "metrics").all()
        assert r.metrics["metric_name"].null_count() == 0
        assert r.metrics["metric_value"].is_finite().all()
        metrics_col = next((f for f, canon in matched.items() if canon == "metrics"), None)
        if metrics_col is not None and c.height:
            text = raw[metrics_col].cast(pl.String).to_list()
            said = {ids[i] for i in clean_rows if text[i] and any(ch.isalnum() for ch in text[i])}
            covered = set(r.metrics["report_id"]) | set(r.metrics_quarantine["record_id"])
            assert (said & clean_reports) - covered == set()
    else:
        assert r.metrics.is_empty() and r.metrics_quarantine.is_empty()
    return r


# --------------------------------------------------------------------------------------------------
# 1. every normalizer
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", list(TABLES))
@pytest.mark.parametrize("dialect", DIALECTS)
def test_normalize_fuzz_every_row_lands_in_silver_or_quarantine(dialect, table, scale):
    kinds = tuple(sorted({_kind(table, c) for c in native_tables(dialect)[table].columns.values()}))
    seen: list[int] = []

    @fuzz_settings(scale.examples)
    @given(spec=specs(kinds, typed=dialect == "platform"))
    def run(spec: Spec) -> None:
        raw = build_frame(spec, dialect, table, scale.rows)
        check_normalized(raw, dialect, table)
        seen.append(raw.height)

    run()
    assert sum(seen) >= scale.rows * scale.examples  # the volume promised: >= 10,000 rows per table and dialect


PARSERS = {
    "timestamp": (parse.timestamp, pl.Datetime("us", TZ)),
    "date": (parse.date, pl.Date),
    "number": (parse.number, pl.Float64),
    "progress_pct": (parse.progress_pct, pl.Float64),
    "count": (parse.count, pl.Float64),
    "size_bytes": (parse.size_bytes, pl.Float64),
    "sha256": (parse.sha256, pl.String),
    "phash": (parse.phash, pl.String),
    "clean_id": (parse.clean_id, pl.String),
    "clean_text": (parse.clean_text, pl.String),
    "clean_code": (parse.clean_code, pl.String),
    "is_blank": (parse.is_blank, pl.Boolean),
    **{f"enum {t}.{c}": (lambda e, t=t, c=c: parse.enum(e, t, c), pl.String) for t, c in parse.ENUM_SPELLINGS},
}


def test_every_parser_is_total(scale):
    """Each parser of transforms/parse.py on pools of hostile text expanded to thousands of values: no error,
    one value out per value in, the declared type, and what the parser promises (finite numbers, lower-case
    hex digests, known enumeration values, text without control characters)."""

    @fuzz_settings(scale.examples * 5)
    @given(pool=st.lists(HOSTILE, min_size=1, max_size=40), seed=st.integers(0, 2**32 - 1))
    def run(pool: list[str], seed: int) -> None:
        values = pl.Series("v", _pick(np.random.default_rng(seed), [*pool, None], scale.rows).tolist(), dtype=pl.String)
        for name, (parser, dtype) in PARSERS.items():
            out = pl.select(parser(pl.lit(values)).alias("out"))["out"]
            assert out.len() == values.len() and out.dtype == dtype, name
            v = out.drop_nulls()
            if dtype == pl.Float64:
                assert v.is_finite().all(), name
            if name in ("sha256", "phash"):
                assert v.str.contains(f"^[0-9a-f]{{{64 if name == 'sha256' else 16}}}$").all(), name
            if name.startswith("enum "):
                table, column = name[5:].split(".")
                assert set(v) <= set(TABLES[table].enums[column]), name
            if name in ("clean_text", "clean_code"):
                assert not any(_CONTROL.search(x) for x in v), name

    run()


@pytest.mark.parametrize("unit", ["a:x;", "a:1;", '"a":1,'])
def test_normalize_1mb_metrics_of_many_entries_is_one_quarantine_row(unit):
    # regression (transforms.metrics.parse_metrics): each bad entry's quarantine row carried the whole
    # report row, so a 1 MB `a:x;a:x;…` field made 262,144 copies of a 1 MB row: the process was killed
    big = huge(2**20, unit)
    big = "{" + big.rstrip(",") + "}" if unit.startswith('"') else big
    row = {"report_id": "R1", "project_id": "X1", "submitted_at": "2026-04-25", "metrics": big, "updated_at": "2026-04-25"}
    raw = pl.DataFrame([row, {**row, "report_id": "R2", "metrics": "a:1;b:x"}])
    reverse = native_tables("legacy")["stage_reports"].reverse
    r = check_normalized(raw.rename({c: reverse[c] for c in row}), "legacy", "stage_reports")
    q = r.metrics_quarantine.select("record_id", "reason").rows()
    assert q[0][0] == "R1" and q[0][1].startswith("metrics: ") and "more than the 200" in q[0][1]
    assert q[1:] == [("R2", "metrics: 'b' value 'x' is not a number")]
    assert r.metrics.select("report_id", "metric_name", "metric_value").rows() == [("R2", "a", 1.0)]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_normalize_fuzz_columns_missing_renamed_or_extra(dialect, scale):
    """Columns dropped, headers re-spelled (BOM, spaces, case, full-width), extra columns: only a missing
    REQUIRED column raises, with exactly the missing names; otherwise every row still lands."""

    @fuzz_settings(scale.examples * 5)
    @given(spec=specs(("id",)), table=st.sampled_from(list(TABLES)), data=st.data())
    def run(spec: Spec, table: str, data) -> None:
        nt = native_tables(dialect)[table]
        raw = build_frame(spec, dialect, table, 200)
        drop = data.draw(st.lists(st.sampled_from(raw.columns), unique=True), label="drop")
        respell = data.draw(st.lists(st.sampled_from(raw.columns), unique=True), label="respell")
        natives = {_header_key(c) for c in nt.columns}
        extra = data.draw(st.lists(TEXT.filter(lambda s: _header_key(s) not in natives), max_size=3, unique=True),
                          label="extra")
        wrap = {c: ["\ufeff{}", " {} ", "{}\t", "{}"][i % 4].format(c.upper() if i % 2 else fullwidth(c))
                for i, c in enumerate(respell) if c not in drop}
        raw = raw.drop(drop).rename(wrap)
        raw = raw.with_columns(pl.lit(e, pl.String).alias(e) for e in extra if e not in raw.columns)
        missing_required = [nat for nat, canon in nt.columns.items() if nat in drop and canon in TABLES[table].required]
        if missing_required:
            with pytest.raises(MissingColumnsError) as e:
                normalize_table(raw, dialect=dialect, table=table, source_id="fz")
            assert e.value.missing == missing_required
        else:
            check_normalized(raw, dialect, table)

    run()


# --------------------------------------------------------------------------------------------------
# 2. filedrop end to end: bytes on disk -> extract_filedrop -> normalize
# --------------------------------------------------------------------------------------------------

# Byte sequences invalid in GB18030 and/or UTF-8: lone lead bytes, half of a four-byte GB18030 sequence
# (CPython's decoder swallows the next byte of it: a `,` or a line break), CESU-8 surrogates, overlong
# forms, beyond U+10FFFF, NUL.
BAD_BYTES = [b"\x81", b"\x81\x30", b"\x81\x30\x81", b"\xff", b"\x80", b"\xfe\xfe\xfe", b"\xed\xa0\x80",
             b"\xed\xa0\xbd\xed\xb8\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\x84\x31\xa4\x39", b"\x00",
             b"\xe4\xb8", b"\x00\x81\x30\x00"]
ROW_NO = "行号"  # an extra first column (the contract allows extra columns): the line's number


@dataclass
class Delivery:
    encoding: str
    newline: str
    corrupt: list[tuple[int, int, bytes]]  # (row, column, bytes replacing that value)
    cut: float | None  # cut the last line off at this share of its length (after its number)


DELIVERIES = st.builds(
    Delivery,
    encoding=st.sampled_from(["gb18030", "utf-8", "utf-8-sig"]),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    corrupt=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 20), st.sampled_from(BAD_BYTES)), max_size=12),
    cut=st.none() | st.floats(0, 1, exclude_max=True),
)


def _csv_line(fields: list[str], newline: str) -> str:
    """One CSV record: a value holding CR or LF is quoted whatever the file's own line end."""
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\r\n").writerow(fields)
    return buf.getvalue()[:-2] + newline


def write_csv(frame: pl.DataFrame, delivery: Delivery) -> tuple[bytes, set[int]]:
    """The file's bytes and the rows whose bytes were broken on purpose (corrupted or cut off)."""
    n = frame.height
    marks: dict[str, bytes] = {}
    rows = [[str(i), *("" if v is None else v for v in row)] for i, row in enumerate(frame.iter_rows())]
    touched: set[int] = set()
    for k, (r, c, bad) in enumerate(delivery.corrupt):
        if n == 0:
            break
        r, c = r % n, 1 + c % frame.width
        mark = f"QFBAD{k}QF"  # plain ASCII: never quoted, replaced by the bad bytes after encoding
        rows[r][c] = mark
        marks[mark] = bad
        touched.add(r)
    lines = [_csv_line([ROW_NO, *frame.columns], delivery.newline)]
    lines += [_csv_line(row, delivery.newline) for row in rows]
    encoding = "utf-8" if delivery.encoding == "utf-8-sig" else delivery.encoding
    head, last = "".join(lines[:-1]), lines[-1]
    data_head, data_last = head.encode(encoding), last.encode(encoding)
    if delivery.cut is not None and n:
        keep = len(f"{n - 1},".encode())
        cut_at = keep + int(delivery.cut * (len(data_last) - len(delivery.newline) - keep))
        data_last = data_last[:max(cut_at, keep + 1)]
        touched.add(n - 1)
    data = data_head + data_last
    for mark, bad in marks.items():
        data = data.replace(mark.encode(), bad)
    if delivery.encoding == "utf-8-sig":
        data = b"\xef\xbb\xbf" + data
    return data, touched


def test_filedrop_fuzz_every_data_line_lands(tmp_path_factory, scale):
    seen: list[int] = []

    @fuzz_settings(scale.filedrop_examples)
    @given(spec=specs(), delivery=DELIVERIES)
    @example(  # regression: half a GB18030 four-byte sequence swallowed the `,` after it (flows.extract)
        spec=Spec(seed=1, p_hostile=0.1, p_null=0.0, p_dup=0.0, pool_any=["x"], pools={}),
        delivery=Delivery("gb18030", "\n", [(0, 0, b"\x81\x30"), (1, 1, b"\x81\x30"), (2, 3, b"\x81")], None),
    )
    @example(  # regression: a UTF-8 file cut off inside a character was read as GB18030 (headers garbled)
        spec=Spec(seed=2, p_hostile=0.0, p_null=0.0, p_dup=0.0, pool_any=["x"], pools={}),
        delivery=Delivery("utf-8", "\r\n", [], 0.999),
    )
    @example(  # regression: old Mac line ends (CR only) read as one header line and no rows
        spec=Spec(seed=3, p_hostile=0.1, p_null=0.0, p_dup=0.0, pool_any=["x"], pools={}),
        delivery=Delivery("utf-8-sig", "\r", [], None),
    )
    @example(  # regression: cut off inside a quoted value, with a 1 MB value elsewhere in the file
        spec=Spec(seed=0, p_hostile=0.9, p_null=0.0, p_dup=0.0, pool_any=[""], pools={"id": ['"']},
                  huge=[(2**20, "走访企业100家，解决问题12个。", 2)]),
        delivery=Delivery("gb18030", "\n", [], 0.0),
    )
    def run(spec: Spec, delivery: Delivery) -> None:
        folder = tmp_path_factory.mktemp("drop")
        day = folder / "2026-11-28"
        day.mkdir()
        originals, touched = {}, {}
        for t, table in enumerate(TABLES):
            frame = build_frame(Spec(**{**spec.__dict__, "seed": spec.seed + t}), "filedrop", table,
                                scale.filedrop_rows)
            data, touched[table] = write_csv(frame, delivery)
            (day / native_tables("filedrop")[table].native).write_bytes(data)
            originals[table] = frame
        pulled = extract_filedrop(Source("drop", "部门", "department", "filedrop", str(folder), None), loaded=set())
        assert pulled.delivery == "2026-11-28" and not pulled.missing_tables
        for table, frame in originals.items():
            got = pulled.tables[table]
            # no data line lost, split or merged by decoding or CSV parsing
            assert got[ROW_NO].to_list() == [str(i) for i in range(frame.height)], table
            r = check_normalized(got, "filedrop", table)
            assert r.extra_columns == [ROW_NO]
            seen.append(got.height)
            if not touched[table] and delivery.newline != "\r":
                # nothing broken on purpose: the file says what the frame said ('' and NULL are one in legacy)
                direct = normalize_table(frame, dialect="filedrop", table=table, source_id="fz")
                via = normalize_table(got.drop(ROW_NO), dialect="filedrop", table=table, source_id="fz")
                assert via.clean.equals(direct.clean), table
                assert via.quarantine.select("record_id", "reason").equals(
                    direct.quarantine.select("record_id", "reason")), table
            else:
                # the lines left intact still read as written
                intact = [i for i in range(frame.height) if i not in touched[table]]
                want = _rows(frame, intact).with_columns(pl.all().replace("", None))
                have = _rows(got, intact).drop(ROW_NO).with_columns(pl.all().replace("", None))
                if delivery.newline == "\r":  # a CR-only file: a lone CR inside a value is read as LF
                    want = want.with_columns(pl.all().map_elements(lambda v: re.sub(r"\r(?!\n)", "\n", v),
                                                                   return_dtype=pl.String))
                assert have.equals(want), table

    run()
    assert sum(seen) >= 7 * scale.filedrop_rows * scale.filedrop_examples


def _rows(frame: pl.DataFrame, rows: list[int]) -> pl.DataFrame:
    return frame.with_row_index("_i").filter(pl.col("_i").is_in(rows)).drop("_i")


def test_decode_bytes_keeps_separators_and_guesses_utf8_with_a_few_bad_bytes():
    # regression (flows.extract.decode_bytes): half a four-byte GB18030 sequence swallowed the byte after it
    assert decode_bytes("甲,乙\n".encode("gb18030") + b"\x81\x30,x\n\x81\x30\n") == "甲,乙\n\ufffd0,x\n\ufffd0\n"
    # regression: a UTF-8 file cut off mid-character, or with a stray bad byte, is still UTF-8
    text = "人员编号,姓名\nP1,张三\nP2,李四"
    assert decode_bytes(text.encode()[:-1]) == text[:-1] + "\ufffd"
    assert decode_bytes(text.encode().replace(b"P2", b"P\xff")) == text.replace("P2", "P\ufffd")
    # and GB18030 stays GB18030, with or without broken bytes
    assert decode_bytes(text.encode("gb18030")) == text
    assert decode_bytes(text.encode("gb18030") + b"\xff") == text + "\ufffd"


def test_read_delivery_csv_cr_only_line_ends(tmp_path):
    # regression (flows.extract.read_delivery_csv): CR-only line ends gave one header and no rows
    path = tmp_path / "单位.csv"
    path.write_bytes("单位代码,单位名称,单位类型,上级单位\rU1,区,区县,\rU2,\"街道\r办\",镇街,U1\r".encode("gb18030"))
    frame = read_delivery_csv(path)
    assert frame.columns == ["单位代码", "单位名称", "单位类型", "上级单位"]
    assert frame["单位代码"].to_list() == ["U1", "U2"] and frame["单位名称"].to_list() == ["区", "街道\n办"]


def test_read_delivery_csv_cut_off_with_a_1mb_value(tmp_path):
    # regression (flows.extract.read_delivery_csv): an unterminated quote sends the file to the csv module,
    # which refused any value over 128 KB ("field larger than field limit"): the whole source failed
    path = tmp_path / "汇报.csv"
    summary = "走访企业100家，解决问题12个。" * 50_000
    path.write_bytes(f'汇报编号,内容\nR1,{summary}\nR2,"{summary}'.encode())
    frame = read_delivery_csv(path)
    assert frame["汇报编号"].to_list() == ["R1", "R2"] and frame["内容"].to_list() == [summary, summary]


# --------------------------------------------------------------------------------------------------
# 2b. a legacy SQLite source holding bytes that are not UTF-8 (GB18030 text, broken bytes, NUL)
# --------------------------------------------------------------------------------------------------


GB_WORDS = {w.encode("gb18030"): w for w in ("张三", "实施中", "２０２６年", "已整改")}


def test_legacy_sqlite_fuzz_non_utf8_text_is_read_not_unreachable(tmp_path_factory, scale):
    rows = max(200, scale.filedrop_rows)

    @fuzz_settings(max(2, scale.filedrop_examples // 3))
    @given(spec=specs(), bad=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 20), st.sampled_from(
        BAD_BYTES + list(GB_WORDS))), max_size=15))
    @example(spec=Spec(seed=5, p_hostile=0.0, p_null=0.0, p_dup=0.0, pool_any=["x"], pools={}),  # regression
             bad=[(0, 1, "张三".encode("gb18030")), (1, 9, "已整改".encode("gb18030"))])
    def run(spec: Spec, bad: list[tuple[int, int, bytes]]) -> None:
        path = tmp_path_factory.mktemp("legacy") / "legacy.sqlite"
        con = sqlite3.connect(path)
        frames = {}
        for t, table in enumerate(TABLES):
            nt = native_tables("legacy")[table]
            frame = build_frame(Spec(**{**spec.__dict__, "seed": spec.seed + t}), "legacy", table, rows)
            values = [list(r) for r in frame.iter_rows()]
            for r, c, b in bad:  # stored as TEXT whose bytes are not UTF-8
                values[r % rows][c % frame.width] = b
            cols = ", ".join(f'"{c}" TEXT' for c in nt.columns)
            con.execute(f'CREATE TABLE "{nt.native}" ({cols})')
            marks = ", ".join("CAST(? AS TEXT)" for _ in nt.columns)
            con.executemany(f'INSERT INTO "{nt.native}" VALUES ({marks})', values)
            frames[table] = frame
        con.commit()
        con.close()
        src = Source("old", "老系统", "department", "legacy", f"sqlite:///{path}", None)
        pulled = extract_sql(src, watermarks={}, overlap=timedelta(days=1), now=datetime(2026, 11, 29, tzinfo=UTC))
        for table, frame in frames.items():
            got = pulled.tables[table]
            assert got.height == frame.height
            check_normalized(got, "legacy", table)
            cells = {(r % rows, c % frame.width): b for r, c, b in bad}  # the last write of a cell wins
            for (r, c), b in cells.items():
                if b in GB_WORDS:  # GB18030 text in a UTF-8 database is read as the text it is
                    assert got[got.columns[c]][r] == GB_WORDS[b], (table, r, c)

    run()


# --------------------------------------------------------------------------------------------------
# 3. every rule on fuzzed silver
# --------------------------------------------------------------------------------------------------

SOURCES = {"p1": "platform", "l1": "legacy", "f1": "filedrop"}
AS_OF = date(2026, 11, 29)


def fuzzed_silver(spec: Spec, rows: int, extremes: bool) -> dict[str, pl.DataFrame]:
    """The clean output of normalizing fuzzed tables of three sources (one per dialect) that reference each
    other, references resolved as `flows.steps.evaluate` does, plus extreme values put straight into silver
    (1 MB summaries, far dates, one phash and one sha256 everywhere, huge counts, a summary copied across
    projects) when `extremes`."""
    parts: dict[str, list[pl.DataFrame]] = {t: [] for t in (*TABLES, "metrics")}
    for s, (source_id, dialect) in enumerate(SOURCES.items()):
        for t, table in enumerate(TABLES):
            sub = Spec(**{**spec.__dict__, "seed": spec.seed + 100 * s + t, "p_hostile": spec.p_hostile / 3})
            r = normalize_table(build_frame(sub, dialect, table, rows, world=rows), dialect=dialect, table=table,
                                source_id=source_id)
            parts[table].append(r.clean)
            if table == "stage_reports":
                parts["metrics"].append(r.metrics)
    silver = {t: pl.concat(p) for t, p in parts.items()}
    if extremes:
        rng = np.random.default_rng(spec.seed)
        silver = _extremes(silver, rng)
    return resolve_references(silver)


def _scatter(frame: pl.DataFrame, column: str, rng: np.random.Generator, values: list, share: float = 0.05):
    if frame.is_empty():
        return frame
    idx = np.flatnonzero(rng.random(frame.height) < share)
    if len(idx) == 0:
        return frame
    new = frame[column].scatter(idx, _pick(rng, values, len(idx)).tolist())
    return frame.with_columns(new.cast(frame.schema[column]))


def _extremes(silver: dict[str, pl.DataFrame], rng: np.random.Generator) -> dict[str, pl.DataFrame]:
    far = [datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 30, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC),
           datetime(2026, 11, 29, tzinfo=UTC), datetime(2026, 11, 28, 23, 59, 59, 999999, tzinfo=UTC)]
    far_dates = [date(1, 1, 1), date(9999, 12, 31), date(2026, 11, 29), date(2026, 11, 30), date(2026, 12, 6)]
    s = dict(silver)
    s["stage_reports"] = _scatter(s["stage_reports"], "summary", rng,
                                  ["坚持以党的政治建设为统领，走访企业一百家，解决问题十二个，形成长效机制。" * 3], 0.02)
    reports = s["stage_reports"]
    if reports.height:  # two 1 MB summaries (F6 shingles every character: more would only cost time)
        rows = rng.integers(reports.height, size=2)
        big = [huge(2**20, "走访企业100家，解决问题12个。"), huge(2**20, "x")]
        s["stage_reports"] = reports.with_columns(reports["summary"].scatter(rows.tolist(), big))
    for column in ("submitted_at", "updated_at"):
        s["stage_reports"] = _scatter(s["stage_reports"], column, rng, far)
    s["stage_reports"] = _scatter(s["stage_reports"], "progress_pct", rng, [0.0, 100.0, 1e-300, 99.99999])
    ev = s["evidence"]
    ev = _scatter(ev, "phash", rng, ["0" * 16, "f" * 16, "00ff00ff00ff00ff", "00ff00ff00ff00fe"], 0.3)
    ev = _scatter(ev, "sha256", rng, ["ab" * 32], 0.2)
    ev = _scatter(ev, "pages", rng, [0, 2**62, 2**63 - 1])
    ev = _scatter(ev, "size_bytes", rng, [0, 2**63 - 1])
    for column in ("captured_at", "uploaded_at"):
        ev = _scatter(ev, column, rng, far)
    ev = _scatter(ev, "kind", rng, ["photo", "video"], 0.3)
    s["evidence"] = ev
    s["milestones"] = _scatter(s["milestones"], "due_date", rng, far_dates, 0.2)
    s["milestones"] = _scatter(s["milestones"], "completed_at", rng, far + [None], 0.2)
    s["projects"] = _scatter(s["projects"], "planned_start", rng, far_dates, 0.2)
    s["problems"] = _scatter(s["problems"], "deadline", rng, far_dates, 0.2)
    s["metrics"] = _scatter(s["metrics"], "metric_value", rng, [0.0, 1e308, -1e308, 5e-324, 100.0, 1e15], 0.1)
    return s


def check_flags(flags: pl.DataFrame) -> None:
    assert flags.schema == pl.Schema(FLAG_SCHEMA)
    for row in flags.iter_rows(named=True):
        rule = RULES[row["rule_id"]]
        assert row["family"] == rule.family and row["family"] in FAMILIES
        assert row["entity_type"] in rule.entity_types and row["entity_type"] in ENTITY_TYPES
        assert row["severity"] in SEVERITIES
        assert row["source_id"] in SOURCES
        assert row["entity_id"] is not None
        assert isinstance(json.loads(row["detail"]), dict)


def test_every_rule_with_great_expectations_on_fuzzed_silver(scale):
    fired: Counter = Counter()

    @fuzz_settings(scale.rule_examples)
    @given(spec=specs(), extremes=st.booleans(), as_of=st.sampled_from([AS_OF, date(1, 1, 2), date(9999, 12, 30)]))
    @example(spec=Spec(seed=11, p_hostile=0.1, p_null=0.05, p_dup=0.1, pool_any=["'; DROP TABLE xm; --"], pools={}),
             extremes=True, as_of=AS_OF)
    def run(spec: Spec, extremes: bool, as_of: date) -> None:
        silver = fuzzed_silver(spec, scale.rule_rows, extremes)
        validator = Validator()
        flags = pl.concat([
            contract_suite_flags(validator, silver),
            deadline_flags(silver, as_of),
            rule_flags(RuleContext(silver, as_of), validator),
        ])
        check_flags(flags)
        fired.update(flags["rule_id"].to_list())

    run()
    assert fired  # the fuzzed silver is not so broken that no rule ever sees anything


def test_every_rule_feature_and_detail_at_volume(scale):
    """The Polars/numpy part of every rule (features, then the detail JSON of EVERY judged row, not only the
    flagged ones) and the deadline rules, on bigger fuzzed silver; no GX, so it can be large."""
    modules = rule_modules()
    judged: Counter = Counter()

    @fuzz_settings(scale.feature_examples)
    @given(spec=specs(), extremes=st.booleans())
    def run(spec: Spec, extremes: bool) -> None:
        silver = fuzzed_silver(spec, scale.feature_rows, extremes)
        ctx = RuleContext(silver, AS_OF)
        for module in modules:
            params = rule_params(module.RULE_ID, module.PARAMS)
            features = module.features(ctx, params)
            if features.is_empty():
                continue
            assert {"source_id", module.ID_COLUMN} <= set(features.columns), module.__name__
            details = features.select(module.detail(params).alias("d"))["d"]
            assert all(isinstance(json.loads(d), dict) for d in details), module.__name__
            judged[module.__name__] += features.height
        check_flags(deadline_flags(silver, AS_OF))

    run()
    assert len(judged) >= len(modules) // 2  # most rules had something to judge
