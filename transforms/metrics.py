"""The `metrics` field of stage reports → the long `metrics` silver table.

Two spellings (detected per value, whatever the dialect, so a platform writing `a:1;b:2` or a legacy
system writing JSON is read too):

- JSON object text (platform): `{"走访企业数": 100, "投入资金(万元)": 12.5}`. The value must be a flat
  object of name → number (a number may also be a quoted string such as `"12.5万元"`). JSON escapes in
  names (`\\u8d70`) are decoded. Anything else (nested objects, arrays, broken JSON) quarantines the
  whole field: one `metrics_quarantine` row, no partial extraction from broken JSON.
- `名称:数值;名称:数值` (legacy/filedrop): full-width `：`/`；` accepted (NFKC), entries separated by `;`
  or new lines, spaces and a trailing `;` tolerated; values may carry units or full-width digits
  (`８５％`, `300万元` → 300: the unit is dropped, the name usually carries it).

Each entry that does not parse (no `:`, empty name, value not a number, `null`) is one
`metrics_quarantine` row; the other entries of the same report are kept. A repeated name within one
report keeps the last value (JSON semantics) and quarantines the earlier ones. A field of more than
`MAX_ENTRIES` entries is not metrics: one `metrics_quarantine` row, nothing extracted. Names are
cleaned like text (HTML, control characters) and NFKC-normalized, so `投入资金（万元）` and
`投入资金(万元)` are one metric across dialects.

Pure and vectorized: frames in, frames out.
"""

from __future__ import annotations

import polars as pl

from transforms import parse
from transforms.schema import METRICS_SCHEMA, QUARANTINE_SCHEMA

_STR = r'"(?:[^"\\]|\\.)*"'
_VAL = rf'(?:{_STR}|[-+]?[0-9.][0-9.eE+\-]*|true|false|null)'
_PAIR = rf"{_STR}\s*:\s*{_VAL}"
_OBJECT = rf"(?s)^\{{\s*(?:{_PAIR}\s*(?:,\s*{_PAIR}\s*)*)?\}}$"
_PAIR_GROUPS = r'(?s)^"(?<name>(?:[^"\\]|\\.)*)"\s*:\s*(?<value>.*)$'
_KV_GROUPS = r"(?s)^(?<name>[^:]*):(?<value>.*)$"
# A report's metrics are a handful of figures. A field of more entries is a pasted table, not metrics:
# it is quarantined whole (one row), since each bad entry's quarantine row carries the whole report row
# (a 1 MB `a:x;a:x;…` would otherwise make 262,144 copies of a 1 MB row).
MAX_ENTRIES = 200


def _empty_metrics() -> pl.DataFrame:
    return pl.DataFrame(schema=METRICS_SCHEMA)


def _empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_SCHEMA)


def parse_metrics(
    frame: pl.DataFrame,
    *,
    source_id: str,
    report_col: str = "report_id",
    metrics_col: str = "metrics",
    raw_col: str | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Parse `frame[metrics_col]` (String) of reports identified by `frame[report_col]`.

    Returns `(metrics, metrics_quarantine)`: `metrics` has `METRICS_SCHEMA` (one row per report and
    metric name, in input order); `metrics_quarantine` has `QUARANTINE_SCHEMA` with table="metrics",
    record_id=the report id, a reason naming the entry, and `raw` = `frame[raw_col]` (the report row
    as JSON) or, without `raw_col`, the metrics text.
    """
    if frame.is_empty() or metrics_col not in frame.columns:
        return _empty_metrics(), _empty_quarantine()
    raw_expr = pl.col(raw_col) if raw_col else pl.col(metrics_col)
    base = (
        frame.lazy()
        .select(
            report_id=pl.col(report_col).cast(pl.String),
            text=parse.trim(pl.col(metrics_col).cast(pl.String)),
            raw=raw_expr.cast(pl.String),
        )
        .with_row_index("_r")
        .filter(pl.col("text").str.len_bytes() > 0)
        .with_columns(is_json=pl.col("text").str.starts_with("{") | pl.col("text").str.starts_with("｛"))
        .collect()
    )
    if base.is_empty():
        return _empty_metrics(), _empty_quarantine()

    # ---- the entries: of JSON objects, and of name:value;name:value ----------------------------
    # (Each spelling only when some report has it: the expressions of a branch cost a few ms however few
    # rows they run on, and a system writes its metrics one way.)
    js = base.filter(pl.col("is_json"))
    if js.is_empty():
        bad_field, pairs = pl.DataFrame(schema=_BAD_FIELD), pl.DataFrame(schema=_ENTRIES)
    else:
        bad_field, pairs = _json_entries(js)
    kv = base.filter(~pl.col("is_json"))
    kv = pl.DataFrame(schema=_ENTRIES) if kv.is_empty() else _kv_entries(kv)
    entries = pl.concat([pairs, kv], how="vertical").with_row_index("_e")
    too_many = pl.len().over("_r") > MAX_ENTRIES
    crowded = (
        entries.filter(too_many)
        .group_by("_r")
        .agg(pl.col("report_id").first(), pl.len().alias("n"))
        .select(
            "_r",
            pl.lit(0, pl.UInt32).alias("_e"),
            "report_id",
            reason=pl.lit("metrics: ") + pl.col("n").cast(pl.String)
            + pl.lit(f" entries, more than the {MAX_ENTRIES} a report's metrics can hold"),
        )
    )
    entries = entries.filter(~too_many)
    name = parse.clean_text(pl.col("name")).str.normalize("NFKC")
    # A system has a few dozen metric names, repeated in every report: each is cleaned once, not once an
    # entry (cleaning is most of the cost of the metrics otherwise).
    names = entries.select(pl.col("name").unique()).with_columns(metric_name=parse.empty_to_null(parse.trim(name)))
    entries = entries.join(names, on="name", how="left", nulls_equal=True, maintain_order="left").with_columns(
        metric_value=parse.number(pl.col("value")),
    )
    last = pl.col("_e").max().over("_r", "metric_name")
    reason = (
        pl.when(pl.col("metric_name").is_null() & pl.col("name").is_null())
        .then(pl.lit("metrics: entry '") + parse.truncate(pl.col("entry")) + pl.lit("' is not name:value"))
        .when(pl.col("metric_name").is_null())
        .then(pl.lit("metrics: entry '") + parse.truncate(pl.col("entry")) + pl.lit("' has no name"))
        .when(pl.col("value").is_null() | (pl.col("value").str.len_bytes() == 0))
        .then(pl.lit("metrics: '") + parse.truncate(pl.col("metric_name")) + pl.lit("' has no value"))
        .when(pl.col("metric_value").is_null())
        .then(
            pl.lit("metrics: '") + parse.truncate(pl.col("metric_name")) + pl.lit("' value '")
            + parse.truncate(pl.col("value")) + pl.lit("' is not a number")
        )
        .when(pl.col("_e") != last)
        .then(
            pl.lit("metrics: duplicate name '") + parse.truncate(pl.col("metric_name"))
            + pl.lit("' (a later entry of the same report wins)")
        )
    )
    entries = entries.with_columns(reason=reason)

    metrics = (
        entries.filter(pl.col("reason").is_null())
        .sort("_r", "_e")
        .select(
            pl.lit(source_id, pl.String).alias("source_id"),
            "report_id",
            "metric_name",
            pl.col("metric_value").cast(pl.Float64),
        )
    )
    bad_entries = entries.filter(pl.col("reason").is_not_null()).select("_r", "_e", "report_id", "reason")
    bad_entries = pl.concat([crowded, bad_entries.with_columns(pl.col("_e").cast(pl.UInt32))], how="vertical")
    bad_entries = bad_entries.join(base.select("_r", "raw"), on="_r", how="left").select(
        "_r", "_e", "report_id", "raw", "reason"
    )
    quarantine = (
        pl.concat([bad_field, bad_entries], how="vertical")
        .sort("_r", "_e")
        .select(
            pl.lit(source_id, pl.String).alias("source_id"),
            pl.lit("metrics", pl.String).alias("table"),
            pl.col("report_id").alias("record_id"),
            "reason",
            "raw",
        )
    )
    return metrics.cast(METRICS_SCHEMA), quarantine.cast(QUARANTINE_SCHEMA)  # type: ignore[arg-type]


_ENTRIES = {"_r": pl.UInt32, "report_id": pl.String, "entry": pl.String, "name": pl.String, "value": pl.String}
_BAD_FIELD = {"_r": pl.UInt32, "_e": pl.UInt32, "report_id": pl.String, "raw": pl.String, "reason": pl.String}


def _json_entries(js: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(the reports whose JSON is not a flat object, the entries of the others) of the JSON metrics."""
    js = js.with_columns(
        text=pl.col("text").str.replace(r"^｛", "{").str.replace(r"｝$", "}")
    )
    bad_field = js.filter(~pl.col("text").str.contains(_OBJECT)).select(
        "_r",
        pl.lit(0, pl.UInt32).alias("_e"),
        "report_id",
        "raw",
        reason=pl.lit("metrics: not a flat JSON object of name → number: '")
        + parse.truncate(pl.col("text"))
        + pl.lit("'"),
    )
    pairs = (
        js.filter(pl.col("text").str.contains(_OBJECT))
        .select("_r", "report_id", pair=pl.col("text").str.extract_all(_PAIR))
        .explode("pair")
        .filter(pl.col("pair").is_not_null())
        .with_columns(g=pl.col("pair").str.extract_groups(_PAIR_GROUPS))
        .select(
            "_r", "report_id",
            entry=pl.col("pair"),
            name=pl.col("g").struct.field("name"),
            value=parse.trim(pl.col("g").struct.field("value")),
        )
    )
    escapes = parse.json_escape_map(pl.concat([pairs["name"], pairs["value"]]))
    pairs = pairs.with_columns(
        name=parse.decode_json_escapes(pl.col("name"), escapes),
        value=pl.when(pl.col("value").str.starts_with('"'))
        .then(parse.decode_json_escapes(pl.col("value").str.slice(1, pl.col("value").str.len_chars() - 2), escapes))
        .when(pl.col("value") == "null")
        .then(pl.lit(None, pl.String))
        .otherwise(pl.col("value")),
    )
    return bad_field, pairs


def _kv_entries(kv: pl.DataFrame) -> pl.DataFrame:
    """The entries of the `name:value;name:value` metrics."""
    return (
        kv.select(
            "_r", "report_id",
            entry=pl.col("text").str.normalize("NFKC").str.replace_all(r"[;\r\n]+", ";").str.split(";"),
        )
        .explode("entry")
        .with_columns(entry=parse.trim(pl.col("entry")))
        .filter(pl.col("entry").str.len_bytes() > 0)
        .with_columns(g=pl.col("entry").str.extract_groups(_KV_GROUPS))
        .select(
            "_r", "report_id", "entry",
            name=pl.col("g").struct.field("name"),
            value=parse.trim(pl.col("g").struct.field("value")),
        )
    )
