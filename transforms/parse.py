"""Shared vectorized parsers: each function takes a String expression and returns a Polars expression.

Every parser is total: it never raises on bad input, it returns null for a value it cannot read.
The normalizer (`transforms.normalize`) compares "the raw value was not blank" with "the parsed value
is null" to quarantine a row with a reason, so nothing is lost silently.

All of it is Polars string / regex / temporal expressions; nothing runs Python per row. Two helpers
(`html_entity_map`, `json_escape_map`) look at the *distinct* escape sequences present in a column
and build a small replacement table (a loop over distinct tokens, not over rows), because Polars has
no "code point → character" expression.

Mapping tables for enumerations live here too (`ENUMS`), one place for every spelling we accept.

Staged parsers: `timestamp`/`date` and the number parsers take `prepared=True` to read an intermediate
column (`timestamp_text(...)`, `number_parts(...)`) computed once. Polars does not reliably share a
common sub-expression used several times inside one expression (the timestamp formats, the number's
value and unit), and without staging a 1M-row table parses several times slower.

Fast paths: most values already have one canonical spelling (`2019-04-25 07:59:27`, `2048`, 64 lower-case
hex digits). `timestamp_fast`, `number_fast` and `hex_digest` read those with one cheap check and a single
format, and only the other rows (the rest masked to null) go through the general rewrite chain. A fast
path is exact by construction: where it gives a value, it is the value the general path gives.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import polars as pl

from transforms import schema

TZ = schema.TZ

# --------------------------------------------------------------------------------------------------
# blanks
# --------------------------------------------------------------------------------------------------

# Characters trimmed from both ends of every value: all Unicode white space (incl. U+3000 ideographic
# space, NBSP, tabs, newlines) plus invisible format characters (zero-width space, word joiner, BOM)
# that copy-paste from Word/Excel leaves behind. (`str.strip_chars` with a set: no regex, fast.)
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000" + "\u200b\u200c\u200d\u2060\ufeff"
)

# Full-width ASCII forms (U+FF01..U+FF5E) and the ideographic space → ASCII: what NFKC does to them,
# done with one Aho-Corasick pass (NFKC over a whole column is ~10x slower).
FULLWIDTH: dict[str, str] = {chr(0xFF01 + i): chr(0x21 + i) for i in range(94)} | {"\u3000": " ", "\u2212": "-"}
# Any character `to_halfwidth` changes (see `has_fullwidth`).
FULLWIDTH_CHAR = "[" + "".join(FULLWIDTH) + "]"


def _patterns(table: Mapping[str, str]) -> tuple[pl.Expr, pl.Expr]:
    """`str.replace_many` arguments built once: built per call from Python lists they cost ~0.1 ms
    each, hundreds of times per table (the same expression either way)."""
    return pl.lit(list(table)), pl.lit(list(table.values()))


_FW_PATTERNS = _patterns(FULLWIDTH)

# In *typed* columns (dates, numbers, enumerations, hashes) these spellings mean "no value" and are
# read as null (spreadsheets and MySQL dumps write them). Text and id columns keep them as written.
NULL_TOKENS: tuple[str, ...] = ("null", "none", "nil", "nan", "n/a", "na", "\\n", "-", "--", "—", "/", "无")


def trim(e: pl.Expr) -> pl.Expr:
    """Strip leading/trailing white space (incl. U+3000, NBSP, tabs, newlines, zero-width chars)."""
    return e.str.strip_chars(WHITESPACE)


def to_halfwidth(e: pl.Expr) -> pl.Expr:
    """Full-width letters, digits and signs → ASCII (`ＸＭ００１` → `XM001`, `８５％` → `85%`, `－５` → `-5`);
    U+2212 minus → `-`. The part of NFKC that matters here, at Aho-Corasick speed."""
    return e.str.replace_many(*_FW_PATTERNS)


def has_fullwidth(frame: pl.DataFrame, columns: Iterable[str]) -> dict[str, bool]:
    """{column → some value holds a character `to_halfwidth` changes}, for String columns of `frame`.

    The parsers below take `fullwidth=False` for a column without any: `to_halfwidth` is then the
    identity and is skipped. (Its Aho-Corasick automaton is built at every evaluation, ~0.2 ms, most of
    the cost of a small table's id and typed columns. The check is cheaper than the pass: a regex only
    over the values that are not plain ASCII, usually none.)
    """
    return probe(frame, fullwidth=columns).fullwidth


def fast_path_suffices(frame: pl.DataFrame, columns: Mapping[str, str]) -> dict[str, bool]:
    """{column → every value is null or in the canonical spelling of its kind}, for the String columns of
    `frame` given with their kind (`timestamp` or `date`: `_CANONICAL`; `progress`, `count`, `bytes`:
    plain digits). The fast path of such a column gives what the general one would, on every row: for
    a canonical value it is that value, or null where the general path also reads null (an impossible
    date, a local time in a DST gap). The normalizer then leaves the general path out: the rewriting and
    the formats it tries cost about 2 ms per column and evaluation whatever the rows (its regexes and
    automata are built each time), most of the cost of a table of a few rows, as the next night's are."""
    return probe(frame, fast=columns).fast_enough


def empty_to_null(e: pl.Expr) -> pl.Expr:
    """'' → null."""
    return pl.when(e.str.len_bytes() > 0).then(e)


_BLANKS = sorted({"", *NULL_TOKENS, *(t.upper() for t in NULL_TOKENS), *(t.title() for t in NULL_TOKENS)})


def is_blank(e: pl.Expr) -> pl.Expr:
    """True where a *typed* value is absent: null, white space only, or a null token (`NULL_TOKENS`,
    in lower, upper or title case)."""
    return trim(e).is_in(_BLANKS).fill_null(True)


def _typed_input(e: pl.Expr, fullwidth: bool = True) -> pl.Expr:
    """Half-width and trimmed: the input of every typed parser. (Null tokens need no special case:
    none of them parses as a date, number, enumeration or hash, so each parser returns null.)

    `fullwidth=False` (here and in every parser that takes it): the caller knows the column holds no
    full-width form (`has_fullwidth`), so the half-width pass is skipped; the result is the same."""
    return trim(to_halfwidth(e) if fullwidth else e)


# --------------------------------------------------------------------------------------------------
# ids and text
# --------------------------------------------------------------------------------------------------


def clean_id(e: pl.Expr, *, fullwidth: bool = True) -> pl.Expr:
    """An id or reference: full-width → ASCII (`ＸＭ００１` → `XM001`), trimmed, case kept, '' → null.

    Ids are strings: `007` stays `007`. Case is kept in the stored value; deduplication compares
    `dedupe_key` (lower case).
    """
    return empty_to_null(_typed_input(e, fullwidth))


def dedupe_key(clean: pl.Expr) -> pl.Expr:
    """The key two rows are "the same record" by: the cleaned id in lower case."""
    return clean.str.to_lowercase()


# Named entities decoded by `clean_text` (matched ASCII-case-insensitively: `&AMP;` too).
HTML_ENTITIES: dict[str, str] = {
    "&nbsp;": " ",
    "&amp;": "&",
    "&lt;": "<",
    "&gt;": ">",
    "&quot;": '"',
    "&apos;": "'",
    "&#39;": "'",
    "&#039;": "'",
    "&ldquo;": "“",
    "&rdquo;": "”",
    "&lsquo;": "‘",
    "&rsquo;": "’",
    "&hellip;": "…",
    "&mdash;": "—",
    "&ndash;": "–",
    "&middot;": "·",
    "&times;": "×",
    "&yen;": "¥",
    "&copy;": "©",
    "&reg;": "®",
}
_HTML_PATTERNS = _patterns(HTML_ENTITIES)
_NUMERIC_ENTITY = r"&#(?:[0-9]{1,7}|[xX][0-9a-fA-F]{1,6});"

# Tags: script/style blocks with their content, comments, then any tag-looking `<name ...>`.
# A lone `<` as in `a < b` is not a tag and is kept.
_SCRIPT_STYLE = r"(?is)<script\b.*?</script\s*>|<style\b.*?</style\s*>|<!--.*?-->"
_BREAK_TAGS = r"(?i)<br\s*/?>|</(?:p|div|li|tr|h[1-6])\s*>"
_TAG = r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?>|<![A-Za-z][^<>]*>"
# Control characters other than \n and \t (C0, DEL, C1), and invisible format characters.
_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200c\u200d\u2060\ufeff\u00ad]"


def html_entity_map(values: Iterable[str | None] | pl.Series) -> dict[str, str]:
    """Numeric character references (`&#8220;`, `&#x4E2D;`) present in `values`, decoded.

    Polars cannot turn a code point into a character, so the normalizer collects the distinct
    references of a column (usually none) and passes them to `clean_text`. Loops over distinct
    references only.
    """
    s = values if isinstance(values, pl.Series) else pl.Series(list(values), dtype=pl.String)
    s = s.cast(pl.String)
    s = s.filter(s.str.contains("&#", literal=True).fill_null(False))
    if s.is_empty():
        return {}
    tokens = s.str.extract_all(_NUMERIC_ENTITY).explode().drop_nulls().unique().to_list()
    out: dict[str, str] = {}
    for tok in tokens:
        ch = html.unescape(tok)
        # control characters and lone surrogates produced by a reference are dropped / replaced
        out[tok] = "\ufffd" if any(0xD800 <= ord(c) <= 0xDFFF for c in ch) else ch
    return out


def html_entities_of(frame: pl.DataFrame, columns: Iterable[str]) -> dict[str, str]:
    """`html_entity_map` of the String `columns` of `frame` together. One query asks which columns hold
    `&#` at all (usually none), and only those are read for their references: three small queries a
    column cost about 0.3 ms each, whatever the rows."""
    return probe(frame, entities=columns).entities


class Probed(NamedTuple):
    """What `probe` found: the answers of `html_entities_of`, `has_fullwidth` and `fast_path_suffices`."""

    entities: dict[str, str]
    fullwidth: dict[str, bool]
    fast_enough: dict[str, bool]


def probe(frame: pl.DataFrame, *, entities: Iterable[str] = (), fullwidth: Iterable[str] = (),
          fast: Mapping[str, str] | None = None) -> Probed:
    """What the normalizer asks of a table before it builds its query, in one query over `frame`: which of
    the columns `entities` hold numeric character references, and which (`html_entities_of`); which of
    `fullwidth` hold full-width forms (`has_fullwidth`); which of `fast` (column → kind) the fast path of
    their parser reads alone (`fast_path_suffices`). Asked separately they were three queries a table, at
    about 0.3–0.5 ms each whatever the rows: on a table of a hundred rows, a tenth of its cost."""
    fast = dict(fast or {})
    empty = frame.is_empty()  # nothing to decode; every value, none, is canonical
    entities = [] if empty else list(dict.fromkeys(entities))
    fullwidth = list(dict.fromkeys(fullwidth))
    fast_asked = {} if empty else fast
    asked = [
        *[pl.col(c).str.contains("&#", literal=True).any() for c in entities],
        *[pl.col(c).filter(pl.col(c).str.len_bytes() != pl.col(c).str.len_chars()).str.contains(FULLWIDTH_CHAR)
          .any() for c in fullwidth],
        *[pl.col(c).str.contains(_FAST_PATH[k]).fill_null(True).all() for c, k in fast_asked.items()],
    ]
    answers = iter(frame.select(e.alias(str(i)) for i, e in enumerate(asked)).row(0) if asked else ())
    found: dict[str, str] = {}
    for c in entities:
        if next(answers):
            found.update(html_entity_map(frame[c]))
    fullwidth_found = {c: bool(next(answers)) for c in fullwidth}
    fast_enough = {c: bool(next(answers)) if c in fast_asked else True for c in fast}
    return Probed(found, fullwidth_found, fast_enough)


def clean_text(e: pl.Expr, entities: Mapping[str, str] | None = None) -> pl.Expr:
    """Free text: strip HTML tags, decode entities, drop control characters, trim; '' → null.

    - `<br>` and closing block tags (`</p>`, `</div>`, …) become a newline, other tags vanish,
      `<script>`/`<style>` blocks and comments vanish with their content;
    - `&nbsp; &amp; &lt; &gt; &quot; &#39;` and a few more (`HTML_ENTITIES`) are decoded, plus any
      numeric reference given in `entities` (see `html_entity_map`); decoding is one pass, so
      `&amp;lt;` becomes the text `&lt;`, and a decoded `<b>` is text, not a tag;
    - CR LF / CR → LF; other control characters (except \\n, \\t) and zero-width characters removed;
    - NBSP → space; leading/trailing white space trimmed. Full-width punctuation is kept (it is
      Chinese text, no NFKC here).
    """
    patterns = _patterns({**HTML_ENTITIES, **entities}) if entities else _HTML_PATTERNS
    s = (
        e.str.replace_all(_SCRIPT_STYLE, "")
        .str.replace_all(_BREAK_TAGS, "\n")
        .str.replace_all(_TAG, "")
        .str.replace_many(*patterns, ascii_case_insensitive=True, leftmost=True)
        .str.replace_all(r"\r\n?", "\n")
        .str.replace_all(_CONTROL, "")
        .str.replace_all("\u00a0", " ", literal=True)
    )
    return empty_to_null(trim(s))


def clean_code(e: pl.Expr, entities: Mapping[str, str] | None = None) -> pl.Expr:
    """A code-like text value (phone, e-mail, ID card number): `clean_text`, then full-width digits
    and letters → ASCII."""
    return empty_to_null(trim(to_halfwidth(clean_text(e, entities))))


# --------------------------------------------------------------------------------------------------
# timestamps and dates
# --------------------------------------------------------------------------------------------------

# One Aho-Corasick pass turns every accepted spelling into `Y-M-D H:M:S.f±hh:mm` shapes that chrono
# reads (it accepts unpadded `2019-4-5 7:5`): Chinese markers, `/`, `T`, `Z`/`UTC`/`GMT` (ASCII case
# ignored; the longer pattern listed first wins).
_DT_TOKENS: dict[str, str] = {
    " UTC": "+00:00", " GMT": "+00:00", " Z": "+00:00", "UTC": "+00:00", "GMT": "+00:00", "Z": "+00:00",
    " +": "+", "T": " ", "/": "-",
    "年": "-", "月": "-", "日": " ", "号": " ", "时": ":", "点": ":", "分": ":", "秒": "",
}
_DT_PATTERNS = _patterns(_DT_TOKENS)
# Then regexes complete the shape to `Y-M-D H:M:S[.f][±hh:mm]`, so two chrono formats suffice.
_SHAPES: tuple[tuple[str, str], ...] = (
    (r"^([0-9]{4})\.([0-9]{1,2})\.([0-9]{1,2})", "$1-$2-$3"),  # 2019.04.25 (a later `.` is a fraction)
    (r"^([0-9]{4})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})$", "$1-$2-$3 $4:$5:$6"),  # 20190425075927
    (r"^([0-9]{4})(?:-([0-9]{1,2})-([0-9]{1,2})|([0-9]{2})([0-9]{2}))$", "$1-$2$4-$3$5 0:0:0"),  # date only
    (r"^([0-9]{4}-[0-9]{1,2}-[0-9]{1,2} [0-9]{1,2}:[0-9]{1,2})((?:[+-][0-9:]+)?)$", "${1}:0$2"),  # no seconds
)
_NAIVE_FORMATS = ("%Y-%m-%d %H:%M:%S%.f",)
_OFFSET_FORMATS = ("%Y-%m-%d %H:%M:%S%.f%#z",)


def timestamp_text(e: pl.Expr, *, fullwidth: bool = True) -> pl.Expr:
    """Stage 1 of `timestamp`/`date`: the value rewritten into shapes the chrono formats read."""
    s = _typed_input(e, fullwidth).str.replace_many(*_DT_PATTERNS, ascii_case_insensitive=True, leftmost=True)
    s = s.str.replace_all("  ", " ", literal=True).str.strip_chars(" :")
    for pattern, replacement in _SHAPES:
        s = s.str.replace(pattern, replacement)
    return s


# The spellings most values already have: `2019-04-25`, `2019-04-25 07:59:27` (legacy, filedrop) and
# `2019-04-25T07:59:27+08:00` (platform). `timestamp_text` leaves them as they are (only `T` → space),
# so `timestamp_fast` can parse them with one fixed format each. (Seconds `60`, a leap second, are
# left to the general path: chrono and Polars' fixed-format parser might read it differently.)
_CANONICAL = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?: [0-9]{2}:[0-9]{2}:[0-5][0-9]|T[0-9]{2}:[0-9]{2}:[0-5][0-9]\+08:00)?$"
)


def timestamp_fast(e: pl.Expr) -> pl.Expr:
    """The fast path of `timestamp`: the value of a canonical spelling (`_CANONICAL`), null for any other
    value (and for an impossible date or a local time in a DST gap, which the general path then reads
    as null too).

    Wherever it is not null it equals the general path (`timestamp_text` + chrono formats), which is
    then only needed for the other rows: about 10x cheaper on a column of canonical values. The checks
    are what make the formats exact: `%Y-%m-%d %H:%M:%S` without `%.f` lets Polars use its fixed-width
    parser, and `+08:00` is a fixed offset (not Asia/Shanghai, whose 1986–91 summers were +09:00), so
    such a value is the naive time minus 8 h, in UTC, shown in Asia/Shanghai like any other instant.
    """
    canonical = e.str.contains(_CANONICAL)
    n = e.str.len_bytes()

    def read(v: pl.Expr, fmt: str) -> pl.Expr:
        return v.str.strptime(pl.Datetime("us"), fmt, strict=False, cache=False)

    naive = pl.coalesce(
        read(pl.when(canonical & (n == 19)).then(e), "%Y-%m-%d %H:%M:%S"),
        read(pl.when(canonical & (n == 10)).then(e), "%Y-%m-%d"),
    ).dt.replace_time_zone(TZ, ambiguous="earliest", non_existent="null")
    local = read(pl.when(canonical & (n == 25)).then(e.str.slice(0, 19)), "%Y-%m-%dT%H:%M:%S")
    instant = (local - pl.duration(hours=8)).dt.replace_time_zone("UTC").dt.convert_time_zone(TZ)
    return pl.coalesce([naive, instant])


def timestamp(e: pl.Expr, *, prepared: bool = False, fast: pl.Expr | None = None) -> pl.Expr:
    """Any supported date/time spelling → `Datetime("us", "Asia/Shanghai")`; null if it does not parse.

    Accepted (full-width digits too; `T`/`Z` in any case):
      `2019-04-25T07:59:27+08:00`, `2019-04-25 07:59:27.123456Z`, `…+0800`, `…+08`, `… UTC`
      (an instant: converted to Asia/Shanghai);
      `2019-04-25 07:59:27`, `2019-04-25 07:59`, `2019/4/25 7:59`, `2019.04.25 07:59:27.5`,
      `2019年4月25日 7时59分`, `20190425075927` (naive: local Asia/Shanghai time);
      `2019-04-25`, `2019/4/25`, `2019.04.25`, `2019年4月25日`, `20190425` (date only: local midnight).
    Fractional seconds are kept to the microsecond. Impossible values (`2019-02-30`, `25:00`) → null.
    A naive time that does not exist locally (the 1986–91 DST gaps) → null; an ambiguous one takes
    the earlier instant.

    Implementation: the canonical spellings are read by `timestamp_fast`; the other values are
    normalized (`timestamp_text`), then a few chrono formats (`_NAIVE_FORMATS`, `_OFFSET_FORMATS`) are
    tried and coalesced; every format is exact (whole string). The general path gets null for the rows
    the fast path read, so string work is spent on the other rows only.
    `prepared=True`: `e` already is `timestamp_text(...)` (a column computed once: Polars does not
    always share the common sub-expression between the formats, and it is most of the cost), and
    `fast`, if given, is `timestamp_fast(...)` of the raw column (`e` being the text of the rows it
    left null); without `fast` every row takes the general path.
    """
    if not prepared:
        fast = timestamp_fast(e)
        e = timestamp_text(pl.when(fast.is_null()).then(e))
    naive = pl.coalesce(
        [e.str.strptime(pl.Datetime("us"), f, strict=False, cache=False) for f in _NAIVE_FORMATS]
    ).dt.replace_time_zone(TZ, ambiguous="earliest", non_existent="null")
    instant = pl.coalesce(
        [e.str.strptime(pl.Datetime("us", "UTC"), f, strict=False, cache=False) for f in _OFFSET_FORMATS]
    ).dt.convert_time_zone(TZ)
    return pl.coalesce([naive, instant] if fast is None else [fast, naive, instant])


def date(e: pl.Expr, *, prepared: bool = False, fast: pl.Expr | None = None) -> pl.Expr:
    """Any `timestamp` spelling → `Date`: the calendar date in Asia/Shanghai (a time part is dropped,
    an instant with an offset is first converted to Asia/Shanghai)."""
    return timestamp(e, prepared=prepared, fast=fast).dt.date()


# --------------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------------

_NUMBER = (
    r"^(?<num>[+-]?(?:[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]*)?|[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
    r"(?<unit>[^0-9]*)$"
)
_NO_SPACE = _patterns(dict.fromkeys(WHITESPACE, ""))


def number_parts(e: pl.Expr, *, fullwidth: bool = True) -> pl.Expr:
    """Stage 1 of the number parsers: a struct {num, unit} (String); null fields when the value is not
    a number followed by an optional non-numeric unit.

    Full-width first (`８５％` → `85%`, `－５` → `-5`, `１２．５` → `12.5`), U+2212 minus → `-`, white
    space removed; thousands separators are accepted only when well-formed (`1,234,567.5`; not `1,2`).
    """
    s = _typed_input(e, fullwidth).str.replace_many(*_NO_SPACE)
    return s.str.extract_groups(_NUMBER)


# Plain digits, the spelling of most sizes and counts: every number parser reads it as `float(value)`
# (no unit, no sign, no decimal point, at most 15 digits: finite and exact).
_DIGITS = r"^[0-9]{1,15}$"
# What the fast path of each kind of column reads alone (`probe`, `fast_path_suffices`).
_FAST_PATH = {"timestamp": _CANONICAL, "date": _CANONICAL, "progress": _DIGITS, "count": _DIGITS, "bytes": _DIGITS}


def number_fast(e: pl.Expr) -> pl.Expr:
    """The fast path of every number parser: plain digits (`2048`, `12`) → Float64, the value all of
    them give it; null for any other value (`12页`, `1.5MB`, `80%`, …), which `number_parts` and the
    parser then read. Several times cheaper on a column of plain digits than `number_parts`'s
    capturing regex and the unit handling."""
    return pl.when(e.str.contains(_DIGITS)).then(e.cast(pl.Float64, strict=False))


def _parts(e: pl.Expr, prepared: bool, fast: pl.Expr | None) -> tuple[pl.Expr, pl.Expr, pl.Expr | None]:
    """(number text, lower-case unit, fast-path value or None) of a number parser's input: as given when
    `prepared`, else the fast path and `number_parts` of the rows it left null."""
    if not prepared:
        fast = number_fast(e)
        e = number_parts(pl.when(fast.is_null()).then(e))
    num = e.struct.field("num").str.replace_all(",", "", literal=True)
    return num, e.struct.field("unit").str.to_lowercase(), fast


def timestamps(frame: pl.DataFrame, column: str) -> pl.Series:
    """The values of the String column `column` of `frame` as `timestamp` reads them: by its fast path
    alone when every value has a canonical spelling (`fast_path_suffices`), as a source's change times
    nearly always do. A probe and the fast path cost about a third of the general path's fixed 2 ms,
    which an extraction paid for every table it pulled."""
    if fast_path_suffices(frame, {column: "timestamp"})[column]:
        return frame.select(timestamp_fast(pl.col(column))).to_series()
    return frame.select(timestamp(pl.col(column))).to_series()


def _fast_first(value: pl.Expr, fast: pl.Expr | None) -> pl.Expr:
    return value if fast is None else pl.coalesce([fast, value])


def number(e: pl.Expr, *, prepared: bool = False, fast: pl.Expr | None = None) -> pl.Expr:
    """A number with an optional trailing unit that is ignored (`12.5`, `300万元` → 300, `８５％` → 85,
    `1,234` → 1234) → Float64; null if not a number or not finite. `prepared=True`: `e` is
    `number_parts(...)` and `fast`, if given, `number_fast(...)` of the raw column (`e` being the parts
    of the rows it left null), as for every parser below (compare `timestamp`)."""
    num, _, fast = _parts(e, prepared, fast)
    v = num.cast(pl.Float64, strict=False)
    return _fast_first(pl.when(v.is_finite()).then(v), fast)


def progress_pct(
    e: pl.Expr, *, fractions: bool = True, prepared: bool = False, fast: pl.Expr | None = None
) -> pl.Expr:
    """Progress in percent → Float64 (range is checked by the normalizer, not here).

    `80%` → 80, `80` → 80, `80.00` → 80, `1` → 1. With `fractions=True` (legacy/filedrop, whose
    contract shows `0.8`), a value written with a decimal point, without `%`, within 0..1 is a
    fraction: `0.8` → 80, `1.0` → 100, `0.0` → 0. The only unit accepted is `%` (anything else → null).
    """
    num, unit, fast = _parts(e, prepared, fast)
    v = num.cast(pl.Float64, strict=False)
    v = pl.when(v.is_finite() & unit.is_in(["", "%"])).then(v)
    if not fractions:
        return _fast_first(v, fast)
    is_fraction = (unit == "") & num.str.contains(".", literal=True) & (v >= 0) & (v <= 1)
    return _fast_first(pl.when(is_fraction).then(v * 100).otherwise(v), fast)


def count(e: pl.Expr, *, prepared: bool = False, fast: pl.Expr | None = None) -> pl.Expr:
    """A count with an optional unit (`12`, `12页`, `12 pages`, `１２张`) → Float64 (the normalizer
    checks it is a non-negative integer)."""
    return number(e, prepared=prepared, fast=fast)


# Units accepted for a file size, with their multiplier (binary: what file systems report).
SIZE_UNITS: dict[str, int] = {
    "": 1, "b": 1, "byte": 1, "bytes": 1, "字节": 1,
    "k": 1024, "kb": 1024, "kib": 1024,
    "m": 1024**2, "mb": 1024**2, "mib": 1024**2, "兆": 1024**2,
    "g": 1024**3, "gb": 1024**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1024**4, "tib": 1024**4,
}


def size_bytes(e: pl.Expr, *, prepared: bool = False, fast: pl.Expr | None = None) -> pl.Expr:
    """A file size → Float64 bytes: `2048`, `2,048`, `2048B`, `2KB` → 2048, `1.5MB` → 1572864
    (rounded to a whole byte when a multiplier applies). An unknown unit → null (a guessed
    multiplier would be silently wrong)."""
    num, unit, fast = _parts(e, prepared, fast)
    mult = unit.replace_strict(SIZE_UNITS, default=None, return_dtype=pl.Float64)
    v = num.cast(pl.Float64, strict=False) * mult
    v = pl.when(mult > 1).then(v.round(0)).otherwise(v)
    return _fast_first(pl.when(v.is_finite()).then(v), fast)


# --------------------------------------------------------------------------------------------------
# hashes
# --------------------------------------------------------------------------------------------------


def hex_digest(e: pl.Expr, length: int, *, fullwidth: bool = True) -> pl.Expr:
    """A hex digest of exactly `length` hex digits, lower-cased; an optional `0x` prefix is dropped
    (full-width → ASCII first). Anything else → null (the normalizer quarantines a malformed non-blank value).

    Most values already are `length` lower-case hex digits, which the cleanup would return unchanged:
    they are taken as they are after one cheap `contains` (a DFA; the capturing `extract` is most of
    the cost), and only the other rows (the rest is null) go through the cleanup."""
    clean = e.str.contains(rf"^[0-9a-f]{{{length}}}$")
    other = _typed_input(pl.when(~clean).then(e), fullwidth)
    return pl.when(clean).then(e).otherwise(other.str.to_lowercase().str.extract(rf"^(?:0x)?([0-9a-f]{{{length}}})$", 1))


def sha256(e: pl.Expr, *, fullwidth: bool = True) -> pl.Expr:
    """SHA-256 of the file: 64 hex digits, lower case."""
    return hex_digest(e, 64, fullwidth=fullwidth)


def phash(e: pl.Expr, *, fullwidth: bool = True) -> pl.Expr:
    """64-bit perceptual hash: 16 hex digits, lower case."""
    return hex_digest(e, 16, fullwidth=fullwidth)


# --------------------------------------------------------------------------------------------------
# enumerations
# --------------------------------------------------------------------------------------------------

# canonical value → other spellings accepted (besides the canonical one itself). Matching ignores
# case, white space, `_`, `-`, `.` and `·` (see `enum_key`), so `In Progress`, `in-progress` and
# ` 实施中 ` all match `in_progress`. Synonyms are deliberately few and unambiguous.
ENUM_SPELLINGS: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
    ("units", "unit_kind"): {
        "district": ("区县", "区", "县", "区(县)", "county"),
        "department": ("部门", "市级部门", "dept"),
        "town": ("镇街", "镇", "街道", "乡镇", "镇(街道)", "township", "subdistrict"),
        "village": ("村社区", "村(社区)", "村", "社区", "community"),
    },
    ("projects", "status"): {
        "planning": ("谋划中", "谋划", "planned"),
        "in_progress": ("实施中", "进行中", "推进中", "ongoing", "active"),
        "completed": ("已完成", "完成", "complete", "done", "finished"),
        "suspended": ("暂停", "已暂停", "暂缓", "paused", "on_hold"),
        "cancelled": ("撤销", "已撤销", "取消", "已取消", "canceled"),
    },
    ("milestones", "stage"): {
        "initiation": ("谋划立项", "立项"),
        "implementation": ("组织实施", "实施"),
        "interim_result": ("阶段成果", "阶段性成果", "interim"),
        "acceptance": ("验收结项", "验收", "结项"),
    },
    ("evidence", "kind"): {
        "photo": ("照片", "图片", "image", "picture", "photograph"),
        "sign_in_sheet": ("签到表", "签到", "sign_in", "signin"),
        "meeting_minutes": ("会议记录", "会议纪要", "minutes"),
        "document": ("文件", "文档", "doc"),
        "ledger": ("台账",),
        "video": ("视频", "录像"),
        "other": ("其他", "其它"),
    },
    ("problems", "origin"): {
        "inspection": ("明察暗访",),
        "enterprise_visit": ("走访企业",),
        "public_report": ("群众反映", "群众举报", "信访举报"),
        "self_check": ("自查", "自查自纠"),
    },
    ("problems", "status"): {
        "open": ("整改中", "未整改", "待整改"),
        "rectified": ("已整改", "整改完成", "已销号"),
        "transferred": ("移交线索", "已移交"),
    },
}

_ENUM_IGNORED = {c: "" for c in (*WHITESPACE, "_", "-", ".", "·", "・")}


def _enum_key_py(value: str) -> str:
    half = "".join(FULLWIDTH.get(c, c) for c in value).lower()
    return "".join(c for c in half if c not in _ENUM_IGNORED)


def enum_key(e: pl.Expr) -> pl.Expr:
    """The matching key of an enumeration value: half-width, lower case, without white space, `_ - . ·`."""
    return _enum_key_halfwidth(to_halfwidth(e))


_ENUM_IGNORED_PATTERNS = _patterns(_ENUM_IGNORED)


def _enum_key_halfwidth(e: pl.Expr) -> pl.Expr:
    return e.str.to_lowercase().str.replace_many(*_ENUM_IGNORED_PATTERNS)


def _build_enums() -> dict[tuple[str, str], dict[str, str]]:
    out: dict[tuple[str, str], dict[str, str]] = {}
    for (table, column), spellings in ENUM_SPELLINGS.items():
        allowed = schema.TABLES[table].enums[column]
        assert set(spellings) == set(allowed), (table, column)  # one source of truth: schema.py
        m: dict[str, str] = {}
        for canonical, others in spellings.items():
            for spelling in (canonical, *others):
                k = _enum_key_py(spelling)
                assert m.get(k, canonical) == canonical, (table, column, spelling)
                m[k] = canonical
        out[(table, column)] = m
    for table, t in schema.TABLES.items():
        for column in t.enums:
            assert (table, column) in out, (table, column)
    return out


# (table, column) → {matching key → canonical value}
ENUMS: dict[tuple[str, str], dict[str, str]] = _build_enums()


def enum(e: pl.Expr, table: str, column: str, *, fullwidth: bool = True) -> pl.Expr:
    """An enumeration value → its canonical English value, or null if unknown (see `ENUM_SPELLINGS`)."""
    m = ENUMS[(table, column)]
    # `enum_key` of a typed input: already half-width (the pass is idempotent: it only yields ASCII)
    key = _enum_key_halfwidth(_typed_input(e, fullwidth))
    return key.replace_strict(m, default=None, return_dtype=pl.String)


# --------------------------------------------------------------------------------------------------
# JSON string escapes (metric names in JSON text)
# --------------------------------------------------------------------------------------------------

_JSON_ESCAPE = r"\\u[0-9a-fA-F]{4}(?:\\u[0-9a-fA-F]{4})?|\\."


def json_escape_map(values: pl.Series) -> dict[str, str]:
    """Distinct JSON escape sequences (`\\u8d70`, `\\"`, `\\n`, surrogate pairs) in `values`, decoded.

    Used with `decode_json_escapes` (Polars has no "code point → character" expression).
    """
    s = values.cast(pl.String)
    s = s.filter(s.str.contains("\\", literal=True).fill_null(False))
    if s.is_empty():
        return {}
    out: dict[str, str] = {}
    for tok in s.str.extract_all(_JSON_ESCAPE).explode().drop_nulls().unique().to_list():
        try:
            ch = json.loads(f'"{tok}"')
        except ValueError:
            ch = tok[1:]  # an invalid escape such as `\q`: keep the character
        out[tok] = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in ch)
    return out


def decode_json_escapes(e: pl.Expr, escapes: Mapping[str, str]) -> pl.Expr:
    """Replace JSON escape sequences by their characters (one left-to-right pass, longest first)."""
    if not escapes:
        return e
    keys = sorted(escapes, key=len, reverse=True)
    return e.str.replace_many(keys, [escapes[k] for k in keys], leftmost=True)


def truncate(e: pl.Expr, n: int = 80) -> pl.Expr:
    """A value for a human-readable reason: at most `n` characters, `…` when cut."""
    e = e.str.replace_all(r"[\x00-\x1f\x7f]", " ")
    return pl.when(e.str.len_chars() > n).then(e.str.slice(0, n) + "…").otherwise(e)
