"""Personal numbers masked wherever text leaves the pipeline: in the marts (a Polars expression over a
String column) and in the emails (a Python string). One set of patterns serves both, so a number is
masked the same way in a mart and in a mail.

- Mobile numbers: `138****5678`. Also written with a country prefix (`+86`, `0086`, `86`) and with
  spaces or hyphens between the groups (`138-1234-5678`, `+86 138 1234 5678`); the prefix and the
  separators stay, the middle four digits go.
- Resident ids, 18 characters: `110101********1234` (the birth date goes). Also written in groups, with a
  space or a hyphen between them: area, birth date, sequence (`110101 ******** 1234`) or area, year, month
  and day, sequence (`110101-****-****-1234`).
- Resident ids of the first generation, 15 digits (area, YYMMDD, sequence): `110101******123`, also in
  groups (`110101 ****** 123`). Only a number shaped like one (an area code from 1 to 8, a real month and
  day) is masked, so that other 15-digit numbers stay readable.

Digits may be full-width (contract §6: `８５％`): a number written so is the same number. A number
glued to letters or other digits (`x13812345678`, `order 1381234567890`) is part of a code, not a phone.
The patterns use boundary groups instead of look-behind (Polars' regex engine has none), so each is
applied twice: two numbers separated by one character share that character as their boundary.
"""

from __future__ import annotations

import re

import polars as pl

_D = "[0-9０-９]"  # a digit
_B = "[^0-9A-Za-z０-９Ａ-Ｚａ-ｚ]"  # a character that bounds a number
_GAP = "[-－ \u3000]"  # between the groups of a written number: always in a resident id written so
_SEP = f"{_GAP}?"  # and maybe in a mobile number
_PREFIX = f"(?:(?:[+＋]|00)?[8８][6６]{_SEP})?"  # China's country code
_MONTH = "(?:[0０][1-9１-９]|[1１][0-2０-２])"
_DAY = "(?:[0０][1-9１-９]|[1-2１-２][0-9０-９]|[3３][0-1０-１])"

_CHECK = "[0-9０-９XxＸｘ]"  # the last character of an 18-character id

# (pattern, replacement: the numbers of the groups it keeps, in order, and the masks between them)
_RULES: list[tuple[str, tuple[int | str, ...]]] = [
    # boundary, prefix + first three, separator | masked four | separator, last four, boundary
    (rf"(^|{_B})({_PREFIX}[1１][3-9３-９]{_D})({_SEP}){_D}{{4}}({_SEP})({_D}{{4}})($|{_B})",
     (1, 2, 3, "****", 4, 5, 6)),
    # boundary, area | birth date | sequence and check, boundary
    (rf"(^|{_B})({_D}{{6}}){_D}{{8}}({_D}{{3}}{_CHECK})($|{_B})", (1, 2, "********", 3, 4)),
    # the same in three groups (area, birth date, sequence) ...
    (rf"(^|{_B})({_D}{{6}})({_GAP}){_D}{{8}}({_GAP})({_D}{{3}}{_CHECK})($|{_B})", (1, 2, 3, "********", 4, 5, 6)),
    # ... or in four (area, year, month and day, sequence)
    (rf"(^|{_B})({_D}{{6}})({_GAP}){_D}{{4}}({_GAP}){_D}{{4}}({_GAP})({_D}{{3}}{_CHECK})($|{_B})",
     (1, 2, 3, "****", 4, "****", 5, 6, 7)),
    # boundary, area | YYMMDD | sequence, boundary; and in three groups
    (rf"(^|{_B})([1-8１-８]{_D}{{5}}){_D}{{2}}{_MONTH}{_DAY}({_D}{{3}})($|{_B})", (1, 2, "******", 3, 4)),
    (rf"(^|{_B})([1-8１-８]{_D}{{5}})({_GAP}){_D}{{2}}{_MONTH}{_DAY}({_GAP})({_D}{{3}})($|{_B})",
     (1, 2, 3, "******", 4, 5, 6)),
]


def _template(parts: tuple[int | str, ...], ref: str) -> str:
    return "".join(ref.format(p) if isinstance(p, int) else p for p in parts)


_EXPR_RULES = [(p, _template(parts, "${{{}}}")) for p, parts in _RULES]
_TEXT_RULES = [(re.compile(p), _template(parts, r"\g<{}>")) for p, parts in _RULES]

# Every number the rules mask holds three digits, maybe a separator, then four digits. A column none of
# whose values does needs none of the six passes of the rules (most columns of a mart: codes, names,
# enumerations, dates): one pass of this finds out.
_HINT = f"{_D}{{3}}{_SEP}{_D}{{4}}"
_HINT_TEXT = re.compile(_HINT)
_LONG_TEXT = 10_000  # characters


def mask_pii_expr(expr: pl.Expr) -> pl.Expr:
    """Mobile numbers and resident ids masked in a String expression."""
    for _ in range(2):
        for pattern, replacement in _EXPR_RULES:
            expr = expr.str.replace_all(pattern, replacement)
    return expr


def columns_to_mask(frame: pl.DataFrame, names: list[str]) -> set[str]:
    """Those of the String columns `names` of `frame` in which some value could hold a number to mask."""
    if not names or frame.is_empty():
        return set()
    found = frame.select(pl.col(n).str.contains(_HINT).any().alias(n) for n in names).row(0, named=True)
    return {n for n, hit in found.items() if hit}


def mask_pii(text: str | None) -> str | None:
    """Mobile numbers and resident ids masked in a string (the same masks as `mask_pii_expr`)."""
    if text is None:
        return None
    if not _HINT_TEXT.search(text):  # no number a rule could mask (most names, titles and codes)
        return text
    if len(text) > _LONG_TEXT:  # a whole email body: Polars' regex engine is several times faster here
        return pl.select(mask_pii_expr(pl.lit(text, pl.String))).item()
    for _ in range(2):
        for pattern, replacement in _TEXT_RULES:
            text = pattern.sub(replacement, text)
    return text
