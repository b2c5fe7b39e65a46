"""Baseline (d) of bench/scale.py: the nightly checks written the common way, in pandas + Great Expectations.

What a typical team would write instead of Qingfeng, doing the same work:

1. read every source of `sources.toml`: `pandas.read_sql` through SQLAlchemy for `platform`/`legacy`,
   `pandas.read_csv` of the newest delivery folder for `filedrop` (UTF-8 with or without BOM, else GB18030);
2. per table, rename the native columns to the canonical ones (`transforms/dialects.py`) and normalize
   row by row (`DataFrame.apply(..., axis=1)` with plain Python parsers for ids, text, dates, timestamps,
   numbers, enumerations and hashes); a row that fails goes to quarantine with its reasons, the latest
   version of a duplicated id wins; `metrics` are parsed per report into a long table;
3. compute the rule figures with pandas (groupby quantile fences per stage for T1/T2/T6, groupby
   shift/diff for F3/F4, rolling windows for T5, exact duplicate hashes for F1 and exact duplicate
   summaries for F6, naive pairwise pHash within a report for T4, digit tests per person for F5, ...);
4. validate every table of every source with Great Expectations 1.x through the pandas data source
   (`add_pandas().add_dataframe_asset()`, a whole-dataframe batch, an ExpectationSuite and a
   ValidationDefinition per table per source): the contract checks (required columns not null, unique
   keys, enumerations in their set, ranges, references that exist) and the rule thresholds as row-level
   expectations; every unexpected row becomes a flag;
5. write the cleaned tables, the metrics, the quarantine and the flags to Parquet (pyarrow).

    python bench/baseline_pandas_gx.py --sources city/sources.toml --out out/ --as-of 2026-11-29

It is an honest approximation, not a copy: near-duplicate photos across projects (F1) and near-copied
summaries (F6) are found only when exact (no LSH), and fences use pandas' ordinary quantiles.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import logging
import math
import os
import re
import sys
import time
import unicodedata
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import great_expectations as gx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402
from scipy import stats  # noqa: E402

from flows.registry import load_registry  # noqa: E402
from transforms.dialects import native_tables  # noqa: E402

logging.getLogger("great_expectations").setLevel(logging.WARNING)

TZ = "Asia/Shanghai"
SH = ZoneInfo(TZ)

# --------------------------------------------------------------------------------------------------
# the contract, as the team reads it (district-systems.md)
# --------------------------------------------------------------------------------------------------

ID, TEXT, CODE, TS, DATE, ENUM, PCT, COUNT, BYTES, SHA, PHASH = (
    "id", "text", "code", "ts", "date", "enum", "pct", "count", "bytes", "sha256", "phash")
TYPED = {TS, DATE, ENUM, PCT, COUNT, BYTES, SHA, PHASH}

TABLES: dict[str, dict] = {
    "units": {
        "key": "unit_code", "change": None,
        "columns": {"unit_code": ID, "unit_name": TEXT, "unit_kind": ENUM, "parent_code": ID},
        "required": ["unit_code", "unit_name", "unit_kind"],
        "refs": {"parent_code": "units"},
    },
    "persons": {
        "key": "person_id", "change": "updated_at",
        "columns": {"person_id": ID, "name": TEXT, "unit_code": ID, "title": TEXT, "phone": CODE, "email": CODE,
                    "id_card": CODE, "updated_at": TS},
        "required": ["person_id", "name", "updated_at"],
        "refs": {"unit_code": "units"},
    },
    "projects": {
        "key": "project_id", "change": "updated_at",
        "columns": {"project_id": ID, "project_code": ID, "title": TEXT, "category": TEXT, "unit_code": ID,
                    "owner_id": ID, "leader_id": ID, "planned_start": DATE, "planned_end": DATE, "status": ENUM,
                    "updated_at": TS},
        "required": ["project_id", "title", "unit_code", "owner_id", "status", "updated_at"],
        "refs": {"unit_code": "units", "owner_id": "persons", "leader_id": "persons"},
    },
    "milestones": {
        "key": "milestone_id", "change": "updated_at",
        "columns": {"milestone_id": ID, "project_id": ID, "stage": ENUM, "due_date": DATE, "completed_at": TS,
                    "updated_at": TS},
        "required": ["milestone_id", "project_id", "stage", "due_date", "updated_at"],
        "refs": {"project_id": "projects"},
    },
    "stage_reports": {
        "key": "report_id", "change": "updated_at",
        "columns": {"report_id": ID, "project_id": ID, "milestone_id": ID, "submitted_at": TS, "submitted_by": ID,
                    "progress_pct": PCT, "summary": TEXT, "updated_at": TS},
        "required": ["report_id", "project_id", "submitted_at", "updated_at"],
        "refs": {"project_id": "projects", "milestone_id": "milestones", "submitted_by": "persons"},
    },
    "evidence": {
        "key": "evidence_id", "change": "updated_at",
        "columns": {"evidence_id": ID, "report_id": ID, "file_name": TEXT, "kind": ENUM, "sha256": SHA,
                    "phash": PHASH, "pages": COUNT, "size_bytes": BYTES, "captured_at": TS, "uploaded_at": TS,
                    "uploaded_by": ID, "updated_at": TS},
        "required": ["evidence_id", "report_id", "kind", "uploaded_at", "updated_at"],
        "refs": {"report_id": "stage_reports", "uploaded_by": "persons"},
    },
    "problems": {
        "key": "problem_id", "change": "updated_at",
        "columns": {"problem_id": ID, "unit_code": ID, "origin": ENUM, "category": TEXT, "description": TEXT,
                    "found_at": DATE, "deadline": DATE, "owner_id": ID, "status": ENUM, "closed_at": DATE,
                    "updated_at": TS},
        "required": ["problem_id", "unit_code", "origin", "found_at", "status", "updated_at"],
        "refs": {"unit_code": "units", "owner_id": "persons"},
    },
}
ENTITY = {"units": "unit", "persons": "person", "projects": "project", "milestones": "milestone",
          "stage_reports": "report", "evidence": "evidence", "problems": "problem"}

# canonical value -> the contract's Chinese spelling (case, spaces, `_`, `-` are ignored when matching)
ENUMS: dict[tuple[str, str], dict[str, str]] = {
    ("units", "unit_kind"): {"district": "区县", "department": "部门", "town": "镇街", "village": "村社区"},
    ("projects", "status"): {"planning": "谋划中", "in_progress": "实施中", "completed": "已完成",
                             "suspended": "暂停", "cancelled": "撤销"},
    ("milestones", "stage"): {"initiation": "谋划立项", "implementation": "组织实施", "interim_result": "阶段成果",
                              "acceptance": "验收结项"},
    ("evidence", "kind"): {"photo": "照片", "sign_in_sheet": "签到表", "meeting_minutes": "会议记录",
                           "document": "文件", "ledger": "台账", "video": "视频", "other": "其他"},
    ("problems", "origin"): {"inspection": "明察暗访", "enterprise_visit": "走访企业", "public_report": "群众反映",
                             "self_check": "自查"},
    ("problems", "status"): {"open": "整改中", "rectified": "已整改", "transferred": "移交线索"},
}
PROCESS = ["photo", "sign_in_sheet", "meeting_minutes"]
OUTCOME = ["document", "ledger"]

RULES: dict[str, tuple[str, str]] = {  # rule -> (family, severity)
    **{f"T{i}": ("traces", "warning") for i in range(1, 6)}, "T6": ("traces", "info"),
    "F1": ("fabrication", "critical"), "F2": ("fabrication", "critical"), "F3": ("fabrication", "critical"),
    "F4": ("fabrication", "warning"), "F5": ("fabrication", "warning"), "F6": ("fabrication", "critical"),
    "F7": ("fabrication", "critical"), "D1": ("deadline", "info"), "D2": ("deadline", "critical"),
    "D3": ("deadline", "critical"), "C1": ("contract", "critical"), "C2": ("contract", "warning"),
    "C3": ("contract", "warning"), "C4": ("contract", "warning"),
}

# --------------------------------------------------------------------------------------------------
# per-value parsers (plain Python, called for every cell)
# --------------------------------------------------------------------------------------------------

FULLWIDTH = str.maketrans({**{chr(0xFF01 + i): chr(0x21 + i) for i in range(94)}, "\u3000": " ", "\u2212": "-"})
NULL_TOKENS = {"", "null", "none", "nil", "nan", "n/a", "na", "\\n", "-", "--", "—", "/", "无"}
TAG = re.compile(r"<[^<>]+>")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\u200c\u200d\u2060\ufeff]")
TS_RE = re.compile(
    r"^(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T](\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.(\d{1,6})\d*)?)?)?"
    r"\s*(Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?$", re.IGNORECASE)
NUM_RE = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)([^\d]*)$")
HEX_RE = {SHA: re.compile(r"^(?:0x)?([0-9a-f]{64})$"), PHASH: re.compile(r"^(?:0x)?([0-9a-f]{16})$")}
SIZE_UNITS = {"": 1, "b": 1, "byte": 1, "bytes": 1, "字节": 1, "k": 1024, "kb": 1024, "kib": 1024,
              "m": 1024**2, "mb": 1024**2, "mib": 1024**2, "兆": 1024**2, "g": 1024**3, "gb": 1024**3,
              "gib": 1024**3}


def enum_fold(s: str) -> str:
    return re.sub(r"[\s_\-.·]", "", s.translate(FULLWIDTH).lower())


ENUM_LOOKUP = {tc: {enum_fold(sp): canon for canon, zh in m.items() for sp in (canon, zh)} for tc, m in ENUMS.items()}


def missing(v) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v))


def blank(v) -> bool:
    return missing(v) or (isinstance(v, str) and v.translate(FULLWIDTH).strip().lower() in NULL_TOKENS)


def as_text(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def clean_id(v):
    if missing(v):
        return None
    return as_text(v).translate(FULLWIDTH).strip() or None


def clean_text(v):
    if missing(v):
        return None
    s = html.unescape(TAG.sub("", str(v))).replace("\r\n", "\n").replace("\xa0", " ")
    return CONTROL.sub("", s).strip() or None


def parse_ts(v) -> datetime | None:
    s = str(v).translate(FULLWIDTH).strip()
    s = s.replace("年", "-").replace("月", "-").replace("日", " ").replace("/", "-").strip()
    if len(s) == 8 and s.isdigit():
        s = f"{s[:4]}-{s[4:6]}-{s[6:]}"
    elif len(s) == 14 and s.isdigit():
        s = f"{s[:4]}-{s[4:6]}-{s[6:8]} {s[8:10]}:{s[10:12]}:{s[12:]}"
    m = TS_RE.match(s)
    if not m:
        return None
    y, mo, d, hh, mi, ss, frac, off = m.groups()
    try:
        dt = datetime(int(y), int(mo), int(d), int(hh or 0), int(mi or 0), int(ss or 0), int((frac or "0").ljust(6, "0")))
    except ValueError:
        return None
    if off is None:
        return dt.replace(tzinfo=SH)
    if off.upper() in ("Z", "UTC", "GMT"):
        tz = UTC
    else:
        digits = off[1:].replace(":", "")
        delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
        tz = timezone(-delta if off[0] == "-" else delta)
    return dt.replace(tzinfo=tz).astimezone(SH)


def parse_number(v) -> tuple[float | None, str]:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return (float(v), "") if math.isfinite(v) else (None, "")
    s = str(v).translate(FULLWIDTH).replace(",", "").replace(" ", "").strip()
    m = NUM_RE.match(s)
    if not m:
        return None, ""
    x = float(m.group(1))
    return (x if math.isfinite(x) else None), m.group(2).strip().lower()


def parse_cell(kind: str, table: str, col: str, v, dialect: str):
    """(value, reason or None) for one cell."""
    if kind == ID:
        return clean_id(v), None
    if kind == TEXT:
        return clean_text(v), None
    if kind == CODE:
        t = clean_text(v)
        return (t.translate(FULLWIDTH).strip() or None) if t else None, None
    if blank(v):
        return None, None
    shown = str(v)[:80]
    if kind in (TS, DATE):
        dt = parse_ts(v)
        if dt is None:
            return None, f"{col}: unparseable {'timestamp' if kind == TS else 'date'} '{shown}'"
        return (dt if kind == TS else dt.date()), None
    if kind == ENUM:
        canon = ENUM_LOOKUP[(table, col)].get(enum_fold(str(v)))
        if canon is None:
            return None, f"{col}: unknown value '{shown}' (expected one of {', '.join(ENUMS[(table, col)])})"
        return canon, None
    if kind in (SHA, PHASH):
        m = HEX_RE[kind].match(str(v).translate(FULLWIDTH).strip().lower())
        if not m:
            return None, f"{col}: malformed {kind} '{shown}'"
        return m.group(1), None
    x, unit = parse_number(v)
    if kind == PCT:
        if x is None or unit not in ("", "%"):
            return None, f"{col}: unparseable percentage '{shown}'"
        if dialect != "platform" and unit == "" and "." in str(v) and 0 <= x <= 1:
            x *= 100
        if not 0 <= x <= 100:
            return None, f"{col}: value '{shown}' out of range 0..100"
        return x, None
    if kind == BYTES:
        mult = SIZE_UNITS.get(unit) if x is not None else None
        if mult is None:
            return None, f"{col}: unparseable size '{shown}'"
        x = round(x * mult) if mult > 1 else x
    elif x is None:
        return None, f"{col}: unparseable count '{shown}'"
    if x < 0:
        return None, f"{col}: negative value '{shown}'"
    if x != int(x):
        return None, f"{col}: not a whole number '{shown}'"
    return int(x), None


def parse_metrics(text) -> tuple[list[tuple[str, float]], list[str]]:
    """`{"name": 1}` or `name:1;name:2` -> [(name, value)], [reasons]."""
    if blank(text):
        return [], []
    s = str(text).strip()
    pairs: list[tuple[str, object]] = []
    if s.startswith(("{", "｛")):
        try:
            obj = json.loads(s.replace("｛", "{").replace("｝", "}"))
        except ValueError:
            return [], [f"metrics: not a flat JSON object of name → number: '{s[:80]}'"]
        if not isinstance(obj, dict) or any(isinstance(x, dict | list) for x in obj.values()):
            return [], [f"metrics: not a flat JSON object of name → number: '{s[:80]}'"]
        pairs = list(obj.items())
    else:
        for entry in re.split(r"[;\r\n]+", unicodedata.normalize("NFKC", s)):
            entry = entry.strip()
            if not entry:
                continue
            if ":" not in entry:
                pairs.append((None, entry))
                continue
            name, value = entry.split(":", 1)
            pairs.append((name, value.strip()))
    out: dict[str, float] = {}
    reasons = []
    for name, value in pairs:
        name = unicodedata.normalize("NFKC", clean_text(name) or "").strip() if name is not None else None
        if not name:
            reasons.append(f"metrics: entry '{value}' is not name:value")
            continue
        x, _ = (None, "") if blank(value) else parse_number(value)
        if x is None:
            reasons.append(f"metrics: '{name}' value '{value}' is not a number")
            continue
        if name in out:
            reasons.append(f"metrics: duplicate name '{name}' (a later entry of the same report wins)")
        out[name] = x
    return list(out.items()), reasons


def normalize_row(row: pd.Series, table: str, dialect: str) -> dict:
    """One input row -> its canonical values, plus `_reason` (None when the row is clean)."""
    spec = TABLES[table]
    out: dict = {}
    reasons: list[str] = []
    for col, kind in spec["columns"].items():
        value, reason = parse_cell(kind, table, col, row[col], dialect)
        out[col] = value
        if reason:
            reasons.append(reason)
    for col in spec["required"]:
        if out[col] is None and not any(r.startswith(col + ":") for r in reasons):
            reasons.append(f"{col}: required value missing")
    if table == "stage_reports":
        out["_metrics"], out["_metric_reasons"] = parse_metrics(row["metrics"])
    out["_reason"] = "; ".join(reasons) or None
    return out


def typed(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """Canonical dtypes: tz-aware timestamps, dates (midnight), floats, nullable integers."""
    out = pd.DataFrame({"source_id": frame["source_id"]}) if "source_id" in frame else pd.DataFrame(index=frame.index)
    for col, kind in TABLES[table]["columns"].items():
        s = frame[col] if col in frame else pd.Series([None] * len(frame), index=frame.index, dtype=object)
        if kind == TS:
            out[col] = pd.to_datetime(s, utc=True).dt.tz_convert(TZ)
        elif kind == DATE:
            out[col] = pd.to_datetime(s)
        elif kind == PCT:
            out[col] = pd.to_numeric(s).astype("float64")
        elif kind in (COUNT, BYTES):
            out[col] = pd.array(s.tolist(), dtype="Int64")
        else:
            out[col] = s.astype(object).where(s.notna(), None)
    return out


def empty_table(table: str) -> pd.DataFrame:
    return typed(pd.DataFrame({"source_id": pd.Series([], dtype=object)}), table)


# --------------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------------


def header_key(name: str) -> str:
    return unicodedata.normalize("NFKC", str(name)).strip().strip("\ufeff").strip().lower()


def read_sql_source(url: str, dialect: str) -> tuple[dict[str, pd.DataFrame], list[str]]:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if not Path(path).is_file():
            raise FileNotFoundError(f"SQLite database not found: {path}")
    engine = sa.create_engine(url)
    tables, missing_tables = {}, []
    try:
        with engine.connect() as conn:
            existing = {n.lower(): n for n in sa.inspect(conn).get_table_names()}
            for canonical, nt in native_tables(dialect).items():
                name = existing.get(nt.native.lower())
                if name is None:
                    missing_tables.append(canonical)
                    continue
                tables[canonical] = pd.read_sql(sa.text(f'SELECT * FROM "{name}"'), conn)
    finally:
        engine.dispose()
    return tables, missing_tables


def decode(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("gb18030", errors="replace")


def read_filedrop_source(folder: Path) -> tuple[dict[str, pd.DataFrame], list[str], date | None]:
    days = sorted(p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"\d{4}-\d{2}-\d{2}", p.name))
    if not days:
        raise FileNotFoundError(f"filedrop folder has no dated delivery: {folder}")
    newest = days[-1]
    tables, missing_tables = {}, []
    for canonical, nt in native_tables("filedrop").items():
        path = newest / nt.native
        if not path.is_file():
            missing_tables.append(canonical)
            continue
        text = decode(path.read_bytes())
        try:
            tables[canonical] = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, csv.Error):
            # a file cut off mid-record: keep every row the csv module can read
            rows = list(csv.reader(io.StringIO(text), strict=False))
            header, body = (rows[0], rows[1:]) if rows else ([], [])
            tables[canonical] = pd.DataFrame([(r + [None] * len(header))[: len(header)] for r in body if r],
                                             columns=header)
    return tables, missing_tables, date.fromisoformat(newest.name)


# --------------------------------------------------------------------------------------------------
# normalization per table (row by row) and per source
# --------------------------------------------------------------------------------------------------


class MissingColumns(ValueError):
    pass


def normalize_table(raw: pd.DataFrame, table: str, dialect: str, source_id: str):
    spec = TABLES[table]
    nt = native_tables(dialect)[table]
    by_key = {header_key(c): c for c in raw.columns}
    rename = {by_key[header_key(n)]: canon for n, canon in nt.columns.items() if header_key(n) in by_key}
    df = raw[list(rename)].rename(columns=rename)
    absent = [c for c in spec["required"] if c not in df.columns]
    if absent:
        raise MissingColumns(f"{table}: missing required column(s): {', '.join(absent)}")
    for col in [*spec["columns"], *(["metrics"] if table == "stage_reports" else [])]:
        if col not in df.columns:
            df[col] = None
    if df.empty:
        return empty_table(table), pd.DataFrame(), ([], [])
    rows = df.apply(normalize_row, axis=1, args=(table, dialect), result_type="reduce")
    parsed = pd.DataFrame.from_records(rows.tolist(), index=df.index)

    # the latest version of each id wins (case-insensitive), then input order
    key = spec["key"]
    fold = parsed[key].map(lambda v: v.lower() if isinstance(v, str) else None)
    order = pd.DataFrame({"fold": fold, "pos": np.arange(len(parsed))}, index=parsed.index)
    if spec["change"]:
        order["t"] = pd.to_datetime(parsed[spec["change"]], utc=True)
        order = order.sort_values(["fold", "t", "pos"], na_position="first")
    else:
        order = order.sort_values(["fold", "pos"], na_position="first")
    loser = (order.duplicated("fold", keep="last") & order["fold"].notna()).reindex(parsed.index)
    dup = "duplicate: superseded by a later row with the same id"
    parsed["_reason"] = [
        (f"{dup}; {r}" if isinstance(r, str) else dup) if lose else (r if isinstance(r, str) else None)
        for lose, r in zip(loser, parsed["_reason"], strict=True)
    ]
    bad = parsed["_reason"].notna()
    quarantine = pd.DataFrame({
        "source_id": source_id, "table": table, "record_id": parsed.loc[bad, key], "reason": parsed.loc[bad, "_reason"],
        "raw": raw.loc[bad].apply(lambda r: json.dumps({k: None if missing(v) else str(v) for k, v in r.items()},
                                                       ensure_ascii=False), axis=1) if bad.any() else None,
    })
    ok = parsed[~bad].copy()
    ok.insert(0, "source_id", source_id)
    metrics, metrics_q = [], []
    if table == "stage_reports":
        for rid, pairs, reasons in zip(ok["report_id"], ok["_metrics"], ok["_metric_reasons"], strict=True):
            metrics.extend((source_id, rid, n, v) for n, v in pairs)
            metrics_q.extend((source_id, "metrics", rid, r, None) for r in reasons)
    return typed(ok, table), quarantine, (metrics, metrics_q)


def resolve_references(clean: dict[str, pd.DataFrame]) -> None:
    """A reference that differs from its target's id only by case is rewritten to the target's spelling."""
    for table, spec in TABLES.items():
        for col, target in spec["refs"].items():
            spelling = {k.lower(): k for k in clean[target][TABLES[target]["key"]] if isinstance(k, str)}
            clean[table][col] = clean[table][col].map(
                lambda v, sp=spelling: sp.get(v.lower(), v) if isinstance(v, str) else v)


def load_source(source, as_of: date):
    """(clean tables, metrics, quarantine, direct flags, freshness) of one source."""
    flags: list[dict] = []
    clean = {t: empty_table(t) for t in TABLES}
    quarantine: list[pd.DataFrame] = []
    metrics: list[tuple] = []
    metrics_q: list[tuple] = []
    delivery = None
    try:
        if source.dialect == "filedrop":
            raw, missing_tables, delivery = read_filedrop_source(Path(source.url))
        else:
            raw, missing_tables = read_sql_source(source.url, source.dialect)
    except (OSError, sa.exc.SQLAlchemyError) as e:
        flags.append(flag(source.id, "C1", "source", source.id, {"problem": f"source unreachable: {e}"}))
        return clean, ([], []), [], flags, None
    for t in missing_tables:
        flags.append(flag(source.id, "C1", "source", source.id, {"problem": f"table {t} missing"}))
    for table, frame in raw.items():
        try:
            clean[table], q, m = normalize_table(frame, table, source.dialect, source.id)
        except MissingColumns as e:
            flags.append(flag(source.id, "C1", "source", source.id, {"problem": str(e)}))
            continue
        if len(q):
            quarantine.append(q)
        metrics.extend(m[0])
        metrics_q.extend(m[1])
    resolve_references(clean)
    newest = max((f["updated_at"].max() for f in clean.values() if "updated_at" in f and f["updated_at"].notna().any()),
                 default=None)
    fresh = {"source_id": source.id, "newest_change": newest, "delivery": delivery}
    return clean, (metrics, metrics_q), quarantine, flags, fresh


# --------------------------------------------------------------------------------------------------
# rule figures, in pandas (city-wide: fences fall back to the whole city, F1/F6 compare across sources)
# --------------------------------------------------------------------------------------------------

SK = ["source_id"]


def fence_threshold(frame: pd.DataFrame, value: str, *, scale: str, k: float, min_excess: float,
                    min_ratio: float, min_unit: int = 50, min_group: int = 30) -> pd.Series:
    """Per stage: Q3 + k·IQR from the finest group with enough rows (unit, source, city), and at least
    median + min_excess and median · min_ratio. NaN: no verdict."""
    f = frame[["source_id", "unit_code", "stage"]].copy()
    x = frame[value].astype(float).clip(lower=0)
    f["_x"] = np.log1p(x) if scale == "log1p" else x
    q = pd.DataFrame(np.nan, index=f.index, columns=["q1", "q2", "q3"])
    for keys, minimum in ((["source_id", "unit_code", "stage"], min_unit), (["source_id", "stage"], min_group),
                          (["stage"], min_group)):
        g = f.groupby(keys)["_x"]
        n = g.transform("size")
        todo = q["q1"].isna() & (n >= minimum)
        for col, p in (("q1", 0.25), ("q2", 0.5), ("q3", 0.75)):
            q.loc[todo, col] = g.transform("quantile", p)[todo]
    back = np.expm1 if scale == "log1p" else (lambda a: a)
    fence = back(q["q3"] + k * (q["q3"] - q["q1"]))
    median = back(q["q2"])
    return pd.concat([fence, median + min_excess, median * min_ratio], axis=1).max(axis=1, skipna=False)


def report_stages(R: pd.DataFrame, M: pd.DataFrame, P: pd.DataFrame) -> pd.DataFrame:
    """Each report with its milestone (linked, else the project's next one due), stage, due date, unit."""
    ms = M[["source_id", "milestone_id", "project_id", "stage", "due_date"]].drop_duplicates(SK + ["milestone_id"])
    rep = R[["source_id", "report_id", "project_id", "milestone_id", "submitted_at", "progress_pct"]]
    out = rep.merge(ms.drop(columns="project_id"), on=SK + ["milestone_id"], how="left")
    out["milestone_inferred"] = False
    todo = out[out["stage"].isna()]
    if len(todo):
        cand = todo[SK + ["report_id", "project_id", "submitted_at"]].merge(
            ms.rename(columns={"milestone_id": "_ms", "stage": "_stage", "due_date": "_due"}),
            on=SK + ["project_id"])
        day = cand["submitted_at"].dt.tz_localize(None).dt.normalize()
        due_days = (cand["_due"] - pd.Timestamp("1970-01-01")).dt.days
        cand["_o"] = np.where(cand["_due"] >= day, due_days, 10_000_000 - due_days)
        best = cand.sort_values(SK + ["report_id", "_o", "_ms"]).drop_duplicates(SK + ["report_id"])
        out = out.merge(best[SK + ["report_id", "_ms", "_stage", "_due"]], on=SK + ["report_id"], how="left")
        inferred = out["stage"].isna() & out["_ms"].notna()
        out.loc[out["stage"].isna(), "milestone_id"] = out["_ms"]
        out["milestone_inferred"] = inferred
        out["due_date"] = out["due_date"].fillna(out["_due"])
        out["stage"] = out["stage"].fillna(out["_stage"]).fillna("unknown")
        out = out.drop(columns=["_ms", "_stage", "_due"])
    units = P[SK + ["project_id", "unit_code"]].drop_duplicates(SK + ["project_id"])
    return out.merge(units, on=SK + ["project_id"], how="left")


def flat_hash_ok(phash) -> bool:
    """A pHash with fewer than 8 ones (or zeros) comes from a flat image: it matches by sha256 only."""
    return isinstance(phash, str) and 8 <= int(phash, 16).bit_count() <= 56


def max_near_copies(hashes: pd.Series, max_hamming: int = 4) -> int:
    """Naive pairwise: the most hashes within `max_hamming` bits of one of them (itself included)."""
    hs = [int(h, 16) for h in hashes]
    return max(sum((a ^ b).bit_count() <= max_hamming for b in hs) for a in hs)


def digit_tests(values: pd.DataFrame, alpha: float = 1e-4) -> pd.DataFrame:
    """F5 per person: first-digit MAD (Benford or the pooled others), round-number share, last-digit MAD."""
    v = values["metric_value"].to_numpy(float)
    pos = np.isfinite(v) & (v > 0)
    first = np.where(pos, np.floor(v / 10.0 ** np.floor(np.log10(np.where(pos, v, 1))) + 1e-9).clip(1, 9), np.nan)
    whole = pos & (v == np.round(v)) & (v >= 10) & (v < 1e15)
    last = np.where(whole, np.mod(np.round(np.where(whole, v, 0)), 10), np.nan)
    d = values.assign(first=first, last=last, who=values["source_id"] + "\x1f" + values["person_id"])
    fd = pd.crosstab(d["who"], d["first"]).reindex(columns=np.arange(1.0, 10.0), fill_value=0)
    ld = pd.crosstab(d["who"], d["last"]).reindex(columns=np.arange(0.0, 10.0), fill_value=0)
    people = pd.Index(d["who"].unique())
    fd, ld = fd.reindex(people, fill_value=0).to_numpy(float), ld.reindex(people, fill_value=0).to_numpy(float)
    n1, n2 = fd.sum(axis=1), ld.sum(axis=1)
    benford = np.log10(1 + 1 / np.arange(1, 10))
    pooled = fd.sum(axis=0) / max(fd.sum(), 1.0)
    if np.abs(pooled - benford).mean() <= 0.015 or fd.sum() == 0:
        expected = np.broadcast_to(benford, fd.shape)
    else:
        others = fd.sum(axis=0)[None, :] - fd
        expected = others / np.maximum(others.sum(axis=1, keepdims=True), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mad1 = np.abs(fd / n1[:, None] - expected).mean(axis=1)
        pv1 = stats.chi2.sf(np.nansum((fd - n1[:, None] * expected) ** 2 / (n1[:, None] * expected), axis=1), 8)
        mad2 = np.abs(ld / n2[:, None] - 0.1).mean(axis=1)
        pv2 = stats.chi2.sf((((ld - n2[:, None] * 0.1) ** 2) / (n2[:, None] * 0.1)).sum(axis=1), 9)
        k_round = ld[:, 0] + ld[:, 5]
        share = k_round / n2
    enough1, enough2 = n1 >= 100, n2 >= 50
    baseline = max(0.2, float(np.median(share[enough2])) if enough2.any() else 0.0)
    pv_round = stats.binom.sf(k_round - 1, n2.astype(np.int64), baseline)
    out = pd.DataFrame({
        "source_id": [p.split("\x1f")[0] for p in people], "person_id": [p.split("\x1f", 1)[1] for p in people],
        "first_digit_mad": np.where(enough1 & (pv1 < alpha), mad1, np.nan),
        "round_share": np.where(enough2 & (pv_round < alpha), share, np.nan),
        "last_digit_mad": np.where(enough2 & (pv2 < alpha), mad2, np.nan),
    })
    return out


def rule_features(T: dict[str, pd.DataFrame], metrics: pd.DataFrame, as_of: date) -> dict[str, pd.DataFrame]:
    """Feature columns per table, keyed by (source_id, key)."""
    R, E, M, P, PR = T["stage_reports"], T["evidence"], T["milestones"], T["projects"], T["problems"]
    rs = report_stages(R, M, P)

    # ---- per report: evidence figures, T1 T2 T3 --------------------------------------------------
    ev = E.assign(_proc=E["kind"].isin(PROCESS), _out=E["kind"].isin(OUTCOME),
                  _pages=E["pages"].fillna(0).clip(lower=0).astype(float))
    per = ev.groupby(SK + ["report_id"]).agg(n_items=("evidence_id", "size"), pages=("_pages", "sum"),
                                             n_process=("_proc", "sum"), n_outcome=("_out", "sum")).reset_index()
    rf = rs.merge(per, on=SK + ["report_id"], how="left")
    rf[["n_items", "pages", "n_process", "n_outcome"]] = rf[["n_items", "pages", "n_process", "n_outcome"]].fillna(0)
    rf["t1_excess_items"] = rf["n_items"] - fence_threshold(rf, "n_items", scale="raw", k=3.0, min_excess=10,
                                                            min_ratio=2.0)
    rf["t2_excess_pages"] = rf["pages"] - fence_threshold(rf, "pages", scale="log1p", k=1.5, min_excess=100,
                                                          min_ratio=3.0)
    rf["process_share_judged"] = np.where((rf["n_items"] >= 8) & (rf["n_outcome"] == 0),
                                          rf["n_process"] / rf["n_items"].where(rf["n_items"] > 0), np.nan)

    # ---- T4: the same file, or near-identical photos (naive pairwise), within one report -----------
    same = (E.dropna(subset=["sha256"]).groupby(SK + ["report_id", "sha256"]).size()
            .groupby(level=[0, 1]).max().rename("same_copies"))
    ph = E.dropna(subset=["phash"])[SK + ["report_id", "phash"]]
    ph = ph[ph["phash"].map(flat_hash_ok)]
    multi = ph[ph.groupby(SK + ["report_id"])["phash"].transform("size") > 1]
    near = multi.groupby(SK + ["report_id"])["phash"].agg(max_near_copies).rename("near_copies")
    parts = [s for s in (same, near) if len(s)]
    if parts:
        copies = pd.concat(parts, axis=1).max(axis=1).rename("copies").reset_index()
        rf = rf.merge(copies, on=SK + ["report_id"], how="left")
        rf["copies"] = rf["copies"].fillna(1)
    else:
        rf["copies"] = 1.0

    # ---- T5: burst of uploads in 10 minutes within 3 days before the due date -----------------------
    e5 = E[SK + ["report_id", "uploaded_at"]].dropna().merge(
        rs[SK + ["report_id", "due_date"]].dropna(), on=SK + ["report_id"])
    e5["days_before_due"] = (e5["due_date"] - e5["uploaded_at"].dt.tz_localize(None).dt.normalize()).dt.days
    e5 = e5[e5["days_before_due"].between(0, 4)].sort_values(SK + ["report_id", "uploaded_at"])
    if len(e5):
        e5["one"] = 1.0
        win = e5.groupby(SK + ["report_id"]).rolling("10min", on="uploaded_at", closed="both")["one"].sum()
        e5["window"] = win.to_numpy()  # groups come back in e5's (sorted) order
        burst = e5[e5["days_before_due"].between(0, 3)].groupby(SK + ["report_id"])["window"].max()
        rf = rf.merge(burst.rename("burst_items").reset_index(), on=SK + ["report_id"], how="left")
    else:
        rf["burst_items"] = np.nan

    # ---- F2 (report): before the project's start, or in the future ----------------------------------
    starts = P[SK + ["project_id", "planned_start"]].drop_duplicates(SK + ["project_id"])
    rf = rf.merge(starts, on=SK + ["project_id"], how="left")
    start = rf["planned_start"].dt.tz_localize(TZ)
    rf["submitted_before_start_days"] = (start - rf["submitted_at"]).dt.total_seconds() / 86400
    end_of_day = pd.Timestamp(as_of + timedelta(days=1)).tz_localize(TZ)
    rf["hours_after_as_of"] = (rf["submitted_at"] - end_of_day).dt.total_seconds() / 3600

    # ---- F3, F4: the reports of a project in filing order -------------------------------------------
    rf = rf.sort_values(SK + ["project_id", "submitted_at", "report_id"]).reset_index(drop=True)
    by_project = rf.groupby(SK + ["project_id"], dropna=False)
    rf["prev_progress"] = by_project["progress_pct"].shift(1).groupby([rf["source_id"], rf["project_id"]]).ffill()
    rf["progress_drop"] = rf["prev_progress"] - rf["progress_pct"]
    interim = (M[M["stage"] == "interim_result"].groupby(SK + ["project_id"])
               .agg(interim_ms=("milestone_id", "first"), interim_done=("completed_at", "min")).reset_index())
    rf = rf.merge(interim, on=SK + ["project_id"], how="left")
    jump = (rf["progress_pct"] >= 100) & ~(rf["prev_progress"] >= 100)
    done = (rf["interim_done"] <= rf["submitted_at"]).fillna(False)
    rf["completed_without_interim"] = [
        (not d) if (j and has) else None for j, has, d in zip(jump, rf["interim_ms"].notna(), done, strict=True)]

    if len(metrics):
        sig = (metrics.sort_values(SK + ["report_id", "metric_name", "metric_value"])
               .groupby(SK + ["report_id"])[["metric_name", "metric_value"]]
               .apply(lambda g: ";".join(f"{n}={round(v, 6)}" for n, v in zip(g["metric_name"], g["metric_value"],
                                                                              strict=True)))
               .rename("metrics_sig").reset_index())
    else:
        sig = pd.DataFrame(columns=SK + ["report_id", "metrics_sig"])
    rf = rf.merge(sig, on=SK + ["report_id"], how="left")
    rf["_sig"] = np.where(rf["progress_pct"].notna() & rf["metrics_sig"].notna(),
                          rf["progress_pct"].round(6).astype(str) + "|" + rf["metrics_sig"].astype(str), None)
    prev_sig = rf.groupby(SK + ["project_id"], dropna=False)["_sig"].shift(1)
    repeat = (rf["_sig"].notna() & (rf["_sig"] == prev_sig)).astype(bool)
    run = (~repeat).astype(int).groupby([rf["source_id"], rf["project_id"]], dropna=False).cumsum()
    run_len = rf.groupby([rf["source_id"], rf["project_id"], run], dropna=False)["report_id"].transform("size")
    rf["identical_run_length"] = run_len.where(repeat)

    # ---- F6: a summary copied exactly from an earlier report of another project --------------------
    text = R["summary"].fillna("").str.replace(r"<[^>]*>", "", regex=True).str.replace(r"[\W_]+", "", regex=True)
    f6 = pd.DataFrame({"source_id": R["source_id"], "report_id": R["report_id"], "submitted_at": R["submitted_at"],
                       "project": R["source_id"] + "\x1f" + R["project_id"].fillna(""), "text": text})
    f6 = f6[(f6["text"].str.len() >= 24) & R["project_id"].notna()].sort_values(["text", "submitted_at",
                                                                                 "report_id"])
    first_of_project = ~f6.duplicated(["text", "project"])
    seen = first_of_project.astype(int).groupby(f6["text"]).cumsum()
    f6["copy_similarity"] = np.where(first_of_project & (seen >= 2), 1.0, np.nan)
    rf = rf.merge(f6[SK + ["report_id", "copy_similarity"]], on=SK + ["report_id"], how="left")

    # ---- per evidence: F1 (exact reuse across projects), F2 -----------------------------------------
    e1 = E[SK + ["evidence_id", "report_id", "kind", "sha256", "phash", "uploaded_at", "captured_at"]].merge(
        rf[SK + ["report_id", "project_id", "unit_code", "submitted_at", "planned_start"]],
        on=SK + ["report_id"], how="left")
    e1["project"] = e1["source_id"] + "\x1f" + e1["project_id"].fillna("")
    e1["unit"] = e1["source_id"] + "\x1f" + e1["unit_code"].fillna("?")
    ok = e1["project_id"].notna() & e1["uploaded_at"].notna()
    by_sha = e1[ok & e1["kind"].isin(["photo", "video", "sign_in_sheet", "meeting_minutes"]) & e1["sha256"].notna()]
    ph_ok = e1["phash"].map(flat_hash_ok).astype(bool)
    by_ph = e1[ok & e1["kind"].isin(["photo", "video"]) & ph_ok]
    keyed = pd.concat([by_sha.assign(grp="s:" + by_sha["sha256"]), by_ph.assign(grp="p:" + by_ph["phash"])])
    spread = keyed.groupby("grp").agg(n_projects=("project", "nunique"), n_units=("unit", "nunique"))
    broadcast = spread[(spread["n_projects"] >= 10) & (spread["n_units"] >= 3)].index
    shared = spread[spread["n_projects"] >= 2].index.difference(broadcast)
    keyed = keyed[keyed["grp"].isin(shared)].sort_values(["grp", "uploaded_at", "evidence_id"])
    projects_so_far = (~keyed.duplicated(["grp", "project"])).astype(int).groupby(keyed["grp"]).cumsum()
    reused = keyed[projects_so_far >= 2].drop_duplicates(SK + ["evidence_id"])
    e1 = e1.merge(reused[SK + ["evidence_id"]].assign(hamming_to_original=0.0), on=SK + ["evidence_id"], how="left")
    e1["capture_after_upload_hours"] = (e1["captured_at"] - e1["uploaded_at"]).dt.total_seconds() / 3600
    e1["captured_before_start_days"] = (
        e1["planned_start"].dt.tz_localize(TZ) - e1["captured_at"]).dt.total_seconds() / 86400
    e1["uploaded_after_report_days"] = (e1["uploaded_at"] - e1["submitted_at"]).dt.total_seconds() / 86400

    # ---- per milestone: T6, F7, D1, D2 --------------------------------------------------------------
    per_ms = (rs.dropna(subset=["milestone_id"]).groupby(SK + ["milestone_id"])
              .agg(n_reports=("report_id", "size"), stage=("stage", "first"), unit_code=("unit_code", "first"))
              .reset_index())
    per_ms["t6_excess_reports"] = per_ms["n_reports"] - fence_threshold(
        per_ms, "n_reports", scale="raw", k=3.0, min_excess=5, min_ratio=3.0)
    outcome = (R.dropna(subset=["milestone_id"])[SK + ["report_id", "milestone_id", "progress_pct"]]
               .merge(per[SK + ["report_id", "n_outcome"]], on=SK + ["report_id"], how="left")
               .groupby(SK + ["milestone_id"]).agg(outcome_items=("n_outcome", "sum"),
                                                  max_progress=("progress_pct", "max")).reset_index())
    mf = M[SK + ["milestone_id", "project_id", "due_date", "completed_at"]].merge(
        per_ms[SK + ["milestone_id", "t6_excess_reports"]], on=SK + ["milestone_id"], how="left").merge(
        outcome, on=SK + ["milestone_id"], how="left")
    judged = mf["source_id"].isin(E["source_id"].unique()) & (
        mf.set_index(SK + ["project_id"]).index.isin(P.set_index(SK + ["project_id"]).index))
    claimed = mf["completed_at"].notna() | (mf["max_progress"] >= 100)
    mf["outcome_items_claimed"] = mf["outcome_items"].fillna(0).where(judged & claimed)
    live = P.loc[P["status"] != "cancelled", SK + ["project_id"]]
    is_live = mf.set_index(SK + ["project_id"]).index.isin(live.set_index(SK + ["project_id"]).index)
    days_left = (mf["due_date"] - pd.Timestamp(as_of)).dt.days
    mf["open_days_left"] = days_left.where(mf["completed_at"].isna() & is_live)

    # ---- per problem: D3 --------------------------------------------------------------------------
    pf = PR[SK + ["problem_id"]].copy()
    pf["open_days_to_deadline"] = (PR["deadline"] - pd.Timestamp(as_of)).dt.days.where(PR["status"] == "open")

    # ---- per person: F5 ---------------------------------------------------------------------------
    vals = metrics.merge(R[SK + ["report_id", "submitted_by"]], on=SK + ["report_id"]).dropna(
        subset=["submitted_by", "metric_value"]).rename(columns={"submitted_by": "person_id"})
    pe = digit_tests(vals) if len(vals) else pd.DataFrame(
        columns=SK + ["person_id", "first_digit_mad", "round_share", "last_digit_mad"])

    return {
        "stage_reports": rf[SK + ["report_id", "t1_excess_items", "t2_excess_pages", "process_share_judged",
                                  "copies", "burst_items", "submitted_before_start_days", "hours_after_as_of",
                                  "progress_drop", "completed_without_interim", "identical_run_length",
                                  "copy_similarity"]],
        "evidence": e1[SK + ["evidence_id", "hamming_to_original", "capture_after_upload_hours",
                             "captured_before_start_days", "uploaded_after_report_days"]],
        "milestones": mf[SK + ["milestone_id", "t6_excess_reports", "outcome_items_claimed", "open_days_left"]],
        "problems": pf,
        "persons": pe,
    }


# --------------------------------------------------------------------------------------------------
# Great Expectations: one suite per table per source
# --------------------------------------------------------------------------------------------------


def expectations(table: str, ref_values: dict[str, list[str]]) -> list:
    E = gx.expectations
    spec = TABLES[table]

    def m(rule: str, note: str = "") -> dict:
        return {"rule": rule, "note": note}

    out = [E.ExpectColumnValuesToNotBeNull(column=c, meta=m("C2", f"{c} 为必填项")) for c in spec["required"]]
    out.append(E.ExpectColumnValuesToBeUnique(column=spec["key"], meta=m("C2", "主键重复")))
    out += [E.ExpectColumnValuesToBeInSet(column=c, value_set=list(ENUMS[(t, c)]), meta=m("C2", f"{c} 取值不在枚举范围内"))
            for (t, c) in ENUMS if t == table]
    out += [E.ExpectColumnValuesToBeInSet(column=c, value_set=ref_values[target], meta=m("C3", f"{c} 引用的记录不存在"))
            for c, target in spec["refs"].items()]
    if table == "stage_reports":
        out += [
            E.ExpectColumnValuesToBeBetween(column="progress_pct", min_value=0, max_value=100, meta=m("C2")),
            E.ExpectColumnValuesToBeBetween(column="t1_excess_items", max_value=0, meta=m("T1")),
            E.ExpectColumnValuesToBeBetween(column="t2_excess_pages", max_value=0, meta=m("T2")),
            E.ExpectColumnValuesToBeBetween(column="process_share_judged", max_value=0.9, strict_max=True,
                                            meta=m("T3")),
            E.ExpectColumnValuesToBeBetween(column="copies", max_value=2, meta=m("T4")),
            E.ExpectColumnValuesToBeBetween(column="burst_items", max_value=9, meta=m("T5")),
            E.ExpectColumnValuesToBeBetween(column="submitted_before_start_days", max_value=30, meta=m("F2")),
            E.ExpectColumnValuesToBeBetween(column="hours_after_as_of", max_value=24, meta=m("F2")),
            E.ExpectColumnValuesToBeBetween(column="progress_drop", max_value=10, strict_max=True, meta=m("F3")),
            E.ExpectColumnValuesToBeInSet(column="completed_without_interim", value_set=[False], meta=m("F3")),
            E.ExpectColumnValuesToBeBetween(column="identical_run_length", max_value=2, meta=m("F4")),
            E.ExpectColumnValuesToBeBetween(column="copy_similarity", max_value=0.5, strict_max=True, meta=m("F6")),
        ]
    elif table == "evidence":
        out += [
            E.ExpectColumnValuesToBeBetween(column=c, min_value=0, meta=m("C2")) for c in ("pages", "size_bytes")
        ] + [
            E.ExpectColumnValuesToBeBetween(column="hamming_to_original", min_value=5, meta=m("F1")),
            E.ExpectColumnValuesToBeBetween(column="capture_after_upload_hours", max_value=1.0, meta=m("F2")),
            E.ExpectColumnValuesToBeBetween(column="captured_before_start_days", max_value=365, meta=m("F2")),
            E.ExpectColumnValuesToBeBetween(column="uploaded_after_report_days", max_value=1.0, meta=m("F2")),
        ]
    elif table == "milestones":
        out += [
            E.ExpectColumnValuesToBeBetween(column="t6_excess_reports", max_value=0, meta=m("T6")),
            E.ExpectColumnValuesToBeBetween(column="outcome_items_claimed", min_value=1, meta=m("F7")),
            E.ExpectColumnValuesToNotBeInSet(column="open_days_left", value_set=list(range(1, 8)), meta=m("D1")),
            E.ExpectColumnValuesToBeBetween(column="open_days_left", min_value=0, meta=m("D2")),
        ]
    elif table == "problems":
        out.append(E.ExpectColumnValuesToBeBetween(column="open_days_to_deadline", min_value=0, meta=m("D3")))
    elif table == "persons":
        out += [
            E.ExpectColumnValuesToBeBetween(column="first_digit_mad", max_value=0.015, meta=m("F5")),
            E.ExpectColumnValuesToBeBetween(column="round_share", max_value=0.5, meta=m("F5")),
            E.ExpectColumnValuesToBeBetween(column="last_digit_mad", max_value=0.04, meta=m("F5")),
        ]
    return out


def flag(source_id: str, rule: str, entity_type: str, entity_id, detail: dict) -> dict:
    family, severity = RULES[rule]
    return {"source_id": source_id, "rule_id": rule, "family": family, "entity_type": entity_type,
            "entity_id": None if entity_id is None else str(entity_id), "severity": severity,
            "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True, default=str)}


class Suites:
    def __init__(self):
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        self.datasource = self.context.data_sources.add_pandas("baseline")

    def validate(self, source_id: str, table: str, frame: pd.DataFrame, checks: list) -> list[dict]:
        name = f"{source_id}__{table}"
        key = TABLES[table]["key"]
        batch = self.datasource.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = self.context.suites.add(gx.ExpectationSuite(name=name, expectations=checks))
        definition = self.context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch,
                                                                                     suite=suite))
        result = definition.run(batch_parameters={"dataframe": frame}, result_format={
            "result_format": "COMPLETE", "unexpected_index_column_names": [key],
            "return_unexpected_index_query": False})
        flags = []
        for res in result.results:
            if res.success:
                continue
            if res.exception_info and res.exception_info.get("raised_exception"):
                raise RuntimeError(f"{name}: {res.exception_info.get('exception_message')}")
            config = res.expectation_config
            meta = config.meta or {}
            column = config.kwargs.get("column")
            count = (res.result or {}).get("unexpected_count")
            for hit in (res.result or {}).get("unexpected_index_list") or []:
                flags.append(flag(source_id, meta["rule"], ENTITY[table], hit.get(key), {
                    "check": config.type, "table": table, "column": column, "value": hit.get(column),
                    "note": meta.get("note", ""), "unexpected_in_table": count}))
        return flags


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------


def run(sources: Path, out: Path, as_of: date) -> dict:
    t0 = time.perf_counter()
    registry = load_registry(sources)
    per_source: dict[str, dict[str, pd.DataFrame]] = {}
    metrics_rows: list[tuple] = []
    metrics_q: list[tuple] = []
    quarantine: list[pd.DataFrame] = []
    flags: list[dict] = []
    freshness: list[dict] = []
    for source in registry.sources:
        clean, metrics, q, f, fresh = load_source(source, as_of)
        per_source[source.id] = clean
        metrics_rows.extend(metrics[0])
        metrics_q.extend(metrics[1])
        quarantine.extend(q)
        flags.extend(f)
        if fresh:
            freshness.append(fresh | {"dialect": source.dialect})
    t_norm = time.perf_counter()

    city = {t: pd.concat([per_source[s][t] for s in per_source] or [empty_table(t)], ignore_index=True)
            for t in TABLES}
    metrics = pd.DataFrame(metrics_rows, columns=["source_id", "report_id", "metric_name", "metric_value"])
    quarantine_frame = pd.concat(quarantine, ignore_index=True) if quarantine else pd.DataFrame(
        columns=["source_id", "table", "record_id", "reason", "raw"])
    if metrics_q:
        quarantine_frame = pd.concat([quarantine_frame, pd.DataFrame(
            metrics_q, columns=["source_id", "table", "record_id", "reason", "raw"])], ignore_index=True)

    # C2 from the quarantine (superseded versions are change capture, not bad data); C4 staleness
    for q in quarantine_frame[~quarantine_frame["reason"].str.startswith("duplicate")].itertuples():
        flags.append(flag(q.source_id, "C2", ENTITY.get(q.table, "report"), q.record_id,
                          {"reason": q.reason, "table": q.table}))
    for fr in freshness:
        age = (as_of - fr["newest_change"].date()).days if fr["newest_change"] is not None else None
        late = (as_of - fr["delivery"]).days if fr["delivery"] else None
        if (age is not None and age > 30) or (late is not None and late > 7):
            flags.append(flag(fr["source_id"], "C4", "source", fr["source_id"],
                              {"change_age_days": age, "delivery_age_days": late}))

    features = rule_features(city, metrics, as_of)
    t_feat = time.perf_counter()

    suites = Suites()
    feats_by_source = {t: dict(tuple(f.groupby("source_id"))) for t, f in features.items()}
    for sid, clean in per_source.items():
        refs = {t: clean[t][TABLES[t]["key"]].dropna().tolist() for t in TABLES}
        for table, frame in clean.items():
            if frame.empty:
                continue
            key = TABLES[table]["key"]
            if table in feats_by_source:
                f = feats_by_source[table].get(sid)
                cols = [c for c in features[table].columns if c not in ("source_id", key)]
                frame = frame.merge(f.drop(columns="source_id"), on=key, how="left") if f is not None else \
                    frame.assign(**dict.fromkeys(cols, np.nan))
            flags.extend(suites.validate(sid, table, frame, expectations(table, refs)))
    t_gx = time.perf_counter()

    out.mkdir(parents=True, exist_ok=True)
    for table, frame in city.items():
        frame.to_parquet(out / f"{table}.parquet", engine="pyarrow", compression="zstd", index=False)
    metrics.to_parquet(out / "metrics.parquet", engine="pyarrow", compression="zstd", index=False)
    quarantine_frame.astype(object).to_parquet(out / "quarantine.parquet", engine="pyarrow", compression="zstd",
                                               index=False)
    flag_frame = pd.DataFrame(flags, columns=["source_id", "rule_id", "family", "entity_type", "entity_id",
                                              "severity", "detail"])
    flag_frame.insert(0, "as_of", as_of.isoformat())
    flag_frame.to_parquet(out / "dq_flags.parquet", engine="pyarrow", compression="zstd", index=False)
    t_end = time.perf_counter()
    return {
        "sources": len(registry.sources),
        "rows": {t: len(f) for t, f in city.items()} | {"metrics": len(metrics)},
        "quarantined": len(quarantine_frame),
        "flags": flag_frame["rule_id"].value_counts().sort_index().to_dict(),
        "seconds": {"read_normalize": t_norm - t0, "features": t_feat - t_norm, "gx": t_gx - t_feat,
                    "write": t_end - t_gx, "total": t_end - t0},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=Path, required=True, help="the sources.toml registry")
    ap.add_argument("--out", type=Path, required=True, help="output folder for the Parquet files")
    ap.add_argument("--as-of", type=date.fromisoformat, default=date.today(), help="business date (YYYY-MM-DD)")
    args = ap.parse_args()
    summary = run(args.sources, args.out, args.as_of)
    print(json.dumps(summary, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
