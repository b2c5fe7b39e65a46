"""The per-table normalizer: one native table (all String, native column names) → canonical silver.

    result = normalize_table(raw, dialect="legacy", table="evidence", source_id="gaoxin")

Every input row ends in exactly one of `result.clean` / `result.quarantine`
(`raw.height == clean.height + quarantine.height`). A row is quarantined when

- a required column (`schema.TABLES[t].required`) is null after parsing: `"<col>: required value missing"`;
- a typed column (date, timestamp, number, enumeration, hash) holds a non-blank value that does not
  parse or breaks its constraint — in ANY column, required or not, so no value is dropped silently:
  `"due_date: unparseable date '2019-13-45'"`, `"progress_pct: value '150%' out of range 0..100"`;
- another row of the same key wins (`"duplicate: …"`). The key is compared after id cleaning and
  case-insensitively; the latest `updated_at` wins, ties (and tables without a change column) go to
  the last row in input order; the winner keeps its own spelling of the id. The winner is chosen
  *before* validation: if the latest version is broken it is quarantined and the older versions are
  still superseded (an older version is not the source's current state).

All reasons of a row are joined with `"; "`. `raw` is the input row as JSON (all input columns, extra
ones included). Nothing here does I/O.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass, field

import polars as pl

from transforms import parse
from transforms.dialects import native_tables
from transforms.metrics import parse_metrics
from transforms.schema import METRICS_SCHEMA, QUARANTINE_SCHEMA, TABLES


class MissingColumnsError(ValueError):
    """A required column of the contract is missing from the native table (the caller makes it a C1 flag).

    `table` is the canonical table, `missing` the native column names (as the source should have
    them), `missing_canonical` the same columns by canonical name.
    """

    def __init__(self, table: str, missing: list[str], missing_canonical: list[str] | None = None):
        self.table = table
        self.missing = list(missing)
        self.missing_canonical = list(missing_canonical or missing)
        pairs = ", ".join(
            n if n == c else f"{n} ({c})" for n, c in zip(self.missing, self.missing_canonical, strict=True)
        )
        super().__init__(f"{table}: missing required column(s): {pairs}")

    def __reduce__(self):  # picklable (Prefect may move exceptions between processes)
        return (type(self), (self.table, self.missing, self.missing_canonical))


@dataclass
class Normalized:
    clean: pl.DataFrame  # exactly TABLES[table].schema, one row per key
    quarantine: pl.DataFrame  # QUARANTINE_SCHEMA
    metrics: pl.DataFrame  # METRICS_SCHEMA (stage_reports only; else empty)
    metrics_quarantine: pl.DataFrame  # QUARANTINE_SCHEMA, table="metrics", record_id=report_id
    extra_columns: list[str] = field(default_factory=list)  # input columns not in the contract (ignored)
    missing_columns: list[str] = field(default_factory=list)  # optional native columns absent (read as null)


# ---------------------------------------------------------------------------------------------------
# column kinds: how each canonical column is parsed, and what its "unparseable" message calls it
# ---------------------------------------------------------------------------------------------------

_ID_COLUMNS = {
    "unit_code", "parent_code", "person_id", "project_id", "project_code", "owner_id", "leader_id",
    "milestone_id", "report_id", "submitted_by", "evidence_id", "uploaded_by", "problem_id",
}
_CODE_COLUMNS = {"phone", "email", "id_card"}
_TEXT_COLUMNS = {"unit_name", "name", "title", "category", "summary", "file_name", "description"}


def column_kind(table: str, column: str) -> str:
    """id | text | code | timestamp | date | enum | progress | count | bytes | sha256 | phash."""
    dtype = TABLES[table].columns[column]
    if column in TABLES[table].enums:
        return "enum"
    if column in _ID_COLUMNS:
        return "id"
    if column in _CODE_COLUMNS:
        return "code"
    if column in _TEXT_COLUMNS:
        return "text"
    if column in ("sha256", "phash"):
        return column
    if column == "progress_pct":
        return "progress"
    if column == "pages":
        return "count"
    if column == "size_bytes":
        return "bytes"
    if dtype == pl.Date:
        return "date"
    if isinstance(dtype, pl.Datetime):
        return "timestamp"
    raise ValueError(f"no parser for {table}.{column} ({dtype})")


_MAX_INT64 = float(2**63 - 1)


def _lit(s: str) -> pl.Expr:
    return pl.lit(s, pl.String)


def _quoted(raw: pl.Expr) -> pl.Expr:
    return _lit("'") + parse.truncate(raw) + _lit("'")


_TYPED = ("timestamp", "date", "enum", "sha256", "phash", "progress", "count", "bytes")
# Kinds whose parser starts with `parse.to_halfwidth` of the raw value (skipped for a column without any
# full-width form, see `parse.has_fullwidth`).
_HALFWIDTH = ("id", *_TYPED)


# Stage 0 of the kinds whose parser reads a prepared intermediate column (see `parse.timestamp`).
_PREPARE = {
    "timestamp": parse.timestamp_text,
    "date": parse.timestamp_text,
    "progress": parse.number_parts,
    "count": parse.number_parts,
    "bytes": parse.number_parts,
}
# Stage -1 of the kinds with a fast path for their canonical spelling (see `parse.timestamp_fast`,
# `parse.number_fast`): stage 0 then prepares only the rows it left null.
_FAST = {
    "timestamp": parse.timestamp_fast,
    "date": parse.timestamp_fast,
    "progress": parse.number_fast,
    "count": parse.number_fast,
    "bytes": parse.number_fast,
}


def _parse(
    table: str,
    column: str,
    raw: pl.Expr | None,
    *,
    dialect: str,
    entities: dict[str, str],
    fast: pl.Expr | None = None,
    fullwidth: bool = True,
) -> pl.Expr:
    """Stage 1: the parsed value of one canonical column (numbers still Float64, range unchecked).

    For the kinds in `_PREPARE`, `raw` is the stage-0 column; for those in `_FAST`, `fast` the stage -1 one,
    and `raw` None when the fast path suffices (`parse.fast_path_suffices`). `fullwidth=False`: the input
    column holds no full-width form (`parse.has_fullwidth`)."""
    kind = column_kind(table, column)
    if raw is None:  # the fast path alone (`parse.fast_path_suffices`)
        return fast.dt.date() if kind == "date" else fast
    fractions = dialect != "platform"
    parsers = {
        "id": lambda: parse.clean_id(raw, fullwidth=fullwidth),
        "text": lambda: parse.clean_text(raw, entities),
        "code": lambda: parse.clean_code(raw, entities),
        "timestamp": lambda: parse.timestamp(raw, prepared=True, fast=fast),
        "date": lambda: parse.date(raw, prepared=True, fast=fast),
        "enum": lambda: parse.enum(raw, table, column, fullwidth=fullwidth),
        "sha256": lambda: parse.sha256(raw, fullwidth=fullwidth),
        "phash": lambda: parse.phash(raw, fullwidth=fullwidth),
        "progress": lambda: parse.progress_pct(raw, fractions=fractions, prepared=True, fast=fast),
        "count": lambda: parse.count(raw, prepared=True, fast=fast),
        "bytes": lambda: parse.size_bytes(raw, prepared=True, fast=fast),
    }
    return parsers[kind]()


Check = tuple[pl.Expr, pl.Expr]  # (the row fails: Boolean, the reason: String) — reason built only if it fails


def _check(
    table: str, column: str, raw: pl.Expr, parsed: pl.Expr, present: pl.Expr
) -> tuple[pl.Expr, list[Check]]:
    """Stage 2: (final value, [(failure flag, reason message)]) from the stage-1 columns.

    `parsed` and `present` (the raw value is not blank) are column references, so no parser runs
    twice. Messages are only evaluated on the (few) failing rows.
    """
    kind = column_kind(table, column)
    checks: list[Check] = []
    unparsed = (present & parsed.is_null()).fill_null(False)

    def msg(what: str, after: str = "") -> pl.Expr:
        return _lit(f"{column}: {what} ") + _quoted(raw) + _lit(after)

    value = parsed
    if kind in ("timestamp", "date"):
        checks.append((unparsed, msg(f"unparseable {kind}")))
    elif kind == "enum":
        allowed = ", ".join(TABLES[table].enums[column])
        checks.append((unparsed, msg("unknown value", f" (expected one of {allowed})")))
    elif kind in ("sha256", "phash"):
        checks.append((unparsed, msg(f"malformed {kind} (expected {64 if kind == 'sha256' else 16} hex digits)")))
    elif kind == "progress":
        checks.append((unparsed, msg("unparseable percentage")))
        bad = ((parsed < 0) | (parsed > 100)).fill_null(False)
        checks.append((bad, msg("value", " out of range 0..100")))
        value = pl.when(~bad).then(parsed)
    elif kind in ("count", "bytes"):
        checks.append((unparsed, msg("unparseable count" if kind == "count" else "unparseable size")))
        negative = (parsed < 0).fill_null(False)
        fractional = (parsed != parsed.floor()).fill_null(False)
        huge = (parsed > _MAX_INT64).fill_null(False)
        checks.append((negative, msg("negative value")))
        checks.append((fractional & ~negative, msg("not a whole number")))
        checks.append((huge, msg("value", " too large")))
        value = pl.when(~(negative | fractional | huge)).then(parsed)
    return value.cast(TABLES[table].columns[column], strict=False), checks


def _header_key(name: str) -> str:
    return unicodedata.normalize("NFKC", name).strip().strip("\ufeff").strip().lower()


def _match_columns(raw: pl.DataFrame, native: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """{canonical column → input column} and the extra input columns.

    Headers match exactly, or else after NFKC, trimming (BOM, spaces) and lower-casing.
    """
    by_key: dict[str, str] = {}
    for c in raw.columns:
        by_key.setdefault(_header_key(c), c)
    found: dict[str, str] = {}
    used: set[str] = set()
    for nat, canon in native.items():
        if nat in raw.columns:
            found[canon] = nat
        elif (k := _header_key(nat)) in by_key and by_key[k] not in used and by_key[k] not in native:
            found[canon] = by_key[k]
        else:
            continue
        used.add(found[canon])
    extra = [c for c in raw.columns if c not in used]
    return found, extra


_P = "\x00qf_"  # prefix of internal columns: cannot clash with a source column name


@dataclass(frozen=True)
class _Plan:
    """The expressions that normalize one shape of input (see `_plan`), built once and applied to any
    frame of that shape."""

    stages: tuple[tuple[pl.Expr, ...], ...]  # the with_columns stages up to the final values
    dedupe: tuple[pl.Expr, ...]  # the duplicate key and the version order
    order: pl.Expr
    sort_by: tuple[str, ...]
    winner: tuple[pl.Expr, ...]
    row: str
    flags: tuple[str, ...]
    checks: tuple[Check, ...]
    keep: tuple[str, ...]
    reason: pl.Expr
    raw_json: pl.Expr

    def query(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        lf = lf.with_row_index(self.row)
        for stage in self.stages:
            lf = lf.with_columns(*stage)
        lf = lf.with_columns(*self.dedupe).with_columns(self.order).sort(list(self.sort_by), nulls_last=False)
        lf = lf.with_columns(*self.winner).sort(self.row)
        lf = lf.with_columns(flag.alias(name) for (flag, _), name in zip(self.checks, self.flags, strict=True))
        lf = lf.with_columns(pl.any_horizontal(pl.col(f) for f in self.flags).alias(_P + "bad"))
        return lf.select(list(self.keep))


@functools.lru_cache(maxsize=512)
def _plan(dialect: str, table: str, columns: tuple[str, ...], found_items: tuple[tuple[str, str], ...],
          entity_items: tuple[tuple[str, str], ...], fullwidth_flags: tuple[bool, ...],
          general_flags: tuple[bool, ...]) -> _Plan:
    """The normalization of a table of `columns` (matched to the contract as `found_items`), given what the
    data told about itself: the HTML entities its text holds, which columns hold full-width forms and which
    need the general path of their parser (`general_flags`; the others are read by the fast path alone).
    Nothing else about the data enters an expression, so a night builds a few dozen plans for its hundreds
    of tables (a plan's Python costs about as much as normalizing a table of a hundred rows)."""
    spec = TABLES[table]
    found = dict(found_items)
    entities = dict(entity_items)
    fullwidth = dict(zip(spec.columns, fullwidth_flags, strict=True))
    general = dict(zip(spec.columns, general_flags, strict=True))  # False: the fast path alone

    def src(column: str) -> pl.Expr:
        return pl.col(found[column]) if column in found else pl.lit(None, pl.String)

    kinds = {c: column_kind(table, c) for c in spec.columns}
    parsed = {c: pl.col(_P + "p_" + c) for c in spec.columns}
    present = {c: pl.col(_P + "nb_" + c) if kinds[c] in _TYPED else pl.lit(True) for c in spec.columns}
    # stage 1: parse every column once, plus "the raw value is not blank" for typed columns
    fast = {c: pl.col(_P + "f_" + c) for c in spec.columns if kinds[c] in _FAST}
    stage_fast = tuple(_FAST[kinds[c]](src(c)).alias(_P + "f_" + c) for c in fast)
    stage0 = tuple(
        _PREPARE[kinds[c]](
            pl.when(fast[c].is_null()).then(src(c)) if c in fast else src(c), fullwidth=fullwidth[c]
        ).alias(_P + "s_" + c)
        for c in spec.columns
        if kinds[c] in _PREPARE and general[c]
    )

    def stage1_input(c: str) -> pl.Expr | None:
        if kinds[c] not in _PREPARE:
            return src(c)
        return pl.col(_P + "s_" + c) if general[c] else None

    row, dkey, order, rowhash = (_P + n for n in ("row", "dkey", "order", "hash"))
    stage1 = (
        *[_parse(table, c, stage1_input(c), dialect=dialect, entities=entities, fast=fast.get(c),
                 fullwidth=fullwidth[c]).alias(_P + "p_" + c) for c in spec.columns],
        *[(~parse.is_blank(src(c))).alias(_P + "nb_" + c) for c in spec.columns if kinds[c] in _TYPED],
        (pl.struct(pl.col(c) for c in columns).hash() if columns else pl.lit(0, pl.UInt64)).alias(rowhash),
        *([src("metrics").alias(_P + "metrics")] if table == "stage_reports" else []),
    )
    # stage 2: final values and failure flags, from the stage-1 columns
    values: list[pl.Expr] = []
    checks: list[Check] = []
    for c in spec.columns:
        value, cs = _check(table, c, src(c), parsed[c], present[c])
        values.append(value.alias(_P + c))
        checks.extend(cs)
    # (a typed column whose non-blank value did not parse already has its own reason)
    checks = [
        (
            (pl.col(_P + c).is_null() & ~(present[c] & pl.lit(kinds[c] in _TYPED))).fill_null(True),
            _lit(f"{c}: required value missing"),
        )
        for c in spec.required
    ] + checks

    # duplicates: the latest version (updated_at, then input order) of each case-insensitive key wins
    change = spec.change_column if spec.change_column in spec.columns else None
    dedupe = (
        parse.dedupe_key(pl.col(_P + spec.key)).alias(dkey),
        (pl.col(_P + change) if change else pl.lit(None, pl.Int64)).alias(order),
    )
    # Sort by (key, version, input order): the last row of each key is its winner; a backward fill
    # of the winner's figures gives every loser what it lost to. (No per-group sort: one global sort.)
    order_phys = pl.col(order).to_physical().cast(pl.Int64).fill_null(-(2**63)).alias(order)
    is_winner = pl.col(dkey).is_null() | pl.col(dkey).is_last_distinct()
    winner = (
        pl.when(is_winner).then(pl.col(rowhash)).backward_fill().alias(_P + "whash"),
        pl.when(is_winner).then(pl.col(order)).backward_fill().alias(_P + "worder"),
        (~is_winner).alias(_P + "loser"),
    )
    loser = pl.col(_P + "loser")
    winner_hash, same_order = pl.col(_P + "whash"), pl.col(order) == pl.col(_P + "worder")
    exact = loser & (pl.col(rowhash) == winner_hash)
    has_change = pl.lit(change is not None)
    dup_checks: list[Check] = [
        (exact, _lit("duplicate: exact copy of a later row with the same id")),
        (loser & ~exact & same_order & has_change,
         _lit("duplicate: superseded by a later row with the same id and the same updated_at")),
        (loser & ~exact & ~same_order & has_change, _lit("duplicate: superseded by a later version of the same id")),
        (loser & ~exact & ~has_change, _lit("duplicate: superseded by a later row with the same id")),
    ]
    checks = dup_checks + checks
    flags = tuple(_P + f"f{i}" for i in range(len(checks)))

    keep = [row, _P + "bad", *(_P + c for c in spec.columns), *flags, *columns]
    if table == "stage_reports":
        keep.append(_P + "metrics")
    return _Plan(
        stages=(stage_fast, stage0, stage1, tuple(values)),
        dedupe=dedupe, order=order_phys, sort_by=(dkey, order, row), winner=winner, row=row,
        flags=flags, checks=tuple(checks), keep=tuple(keep),
        reason=pl.concat_str(
            [pl.when(pl.col(f)).then(message) for f, (_, message) in zip(flags, checks, strict=True)],
            separator="; ",
            ignore_nulls=True,
        ),
        raw_json=pl.struct(pl.col(c) for c in columns).struct.json_encode() if columns else _lit("{}"),
    )


def normalize_table(raw: pl.DataFrame, *, dialect: str, table: str, source_id: str) -> Normalized:
    """Normalize one native table of one source onto the canonical table `table` (see module doc).

    Raises `MissingColumnsError` when a required column is absent, `ValueError` for an unknown
    dialect or table. Never raises because of a value.
    """
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")
    spec = TABLES[table]
    nt = native_tables(dialect)[table]
    found, extra = _match_columns(raw, nt.columns)
    reverse = nt.reverse
    missing = [c for c in nt.columns.values() if c not in found]  # incl. stage_reports.metrics
    missing_required = [c for c in missing if c in spec.required]
    if missing_required:
        raise MissingColumnsError(table, [reverse[c] for c in missing_required], missing_required)
    missing_native = [reverse[c] for c in missing]

    non_string = {c: pl.String for c, t in raw.schema.items() if t != pl.String}
    frame = raw.cast(non_string) if non_string else raw  # type: ignore[arg-type]

    kinds = {c: column_kind(table, c) for c in spec.columns}
    probed = parse.probe(
        frame,
        entities=[found[c] for c in spec.columns if c in found and kinds[c] in ("text", "code")],
        fullwidth=[found[c] for c in spec.columns if c in found and kinds[c] in _HALFWIDTH],
        fast={found[c]: kinds[c] for c in spec.columns if c in found and kinds[c] in _FAST},
    )
    plan = _plan(dialect, table, tuple(raw.columns), tuple(found.items()), tuple(sorted(probed.entities.items())),
                 tuple(probed.fullwidth.get(found.get(c, ""), False) for c in spec.columns),
                 tuple(not probed.fast_enough.get(found.get(c, ""), True) for c in spec.columns))
    # The in-memory engine: the streaming one (Polars' default) costs a few ms more to set up per query,
    # most of the cost of a small table, is ~20% slower on 10k rows and no faster on 1M rows (with more
    # memory: the global sort needs the whole frame anyway).
    out = plan.query(frame.lazy()).collect(engine="in-memory")
    ok = out.filter(~pl.col(_P + "bad"))
    clean = ok.select(
        pl.lit(source_id, pl.String).alias("source_id"),
        *[pl.col(_P + c).alias(c) for c in spec.columns],
    )
    # Reasons are built on the failing rows only, and not at all without any: the expression of every
    # check's message costs about 1.5 ms however few rows it runs on, a good part of a small table's cost.
    if ok.height == out.height:
        quarantine = pl.DataFrame(schema=QUARANTINE_SCHEMA)
    else:
        quarantine = out.filter(pl.col(_P + "bad")).select(
            pl.lit(source_id, pl.String).alias("source_id"),
            pl.lit(table, pl.String).alias("table"),
            pl.col(_P + spec.key).alias("record_id"),
            plan.reason.alias("reason"),
            plan.raw_json.alias("raw"),
        )

    if table == "stage_reports" and "metrics" in found:
        ok = ok.with_columns(plan.raw_json.alias(_P + "raw"))
        metrics, metrics_q = parse_metrics(
            ok, source_id=source_id, report_col=_P + "report_id", metrics_col=_P + "metrics", raw_col=_P + "raw"
        )
    else:
        metrics, metrics_q = pl.DataFrame(schema=METRICS_SCHEMA), pl.DataFrame(schema=QUARANTINE_SCHEMA)

    return Normalized(
        clean=clean.cast(spec.schema),  # type: ignore[arg-type]
        quarantine=quarantine.cast(QUARANTINE_SCHEMA),  # type: ignore[arg-type]
        metrics=metrics,
        metrics_quarantine=metrics_q,
        extra_columns=extra,
        missing_columns=missing_native,
    )

