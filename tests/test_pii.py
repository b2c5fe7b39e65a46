"""Mobile numbers and resident ids masked the same way in a mart (Polars) and in an email (Python)."""

from __future__ import annotations

import re

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.pii import _HINT, _LONG_TEXT, columns_to_mask, mask_pii, mask_pii_expr

CASES = [
    # mobile numbers, alone, in a list, with a country prefix, with separators, full-width
    ("13812345678", "138****5678"),
    ("电话:13812345678,15900001111", "电话:138****5678,159****1111"),
    ("联系 +8613812345678", "联系 +86138****5678"),
    ("+86 138 1234 5678", "+86 138 **** 5678"),
    ("0086-138-1234-5678。", "0086-138-****-5678。"),
    ("8613812345678", "86138****5678"),
    ("手机 138-1234-5678", "手机 138-****-5678"),
    ("１３８１２３４５６７８", "１３８****５６７８"),
    # 18-character resident ids, with a check letter, full-width
    ("110101199003071234", "110101********1234"),
    ("身份证11010119900307123X号", "身份证110101********123X号"),
    ("１１０１０１１９９００３０７１２３４", "１１０１０１********１２３４"),
    # 18-character ids written in groups: 6-8-4 and 6-4-4-4, spaces or hyphens, full-width
    ("身份证 110101 19900307 1234", "身份证 110101 ******** 1234"),
    ("110101-19900307-123X。", "110101-********-123X。"),
    ("110101 1990 0307 1234", "110101 **** **** 1234"),
    ("１１０１０１－１９９０－０３０７－１２３４", "１１０１０１－****－****－１２３４"),
    # 15-digit resident ids (area, YYMMDD, sequence), alone and in groups
    ("旧证 110101 900307 123", "旧证 110101 ****** 123"),
    ("旧证 110101900307123", "旧证 110101******123"),
    ("110101900307123,110101900307124", "110101******123,110101******124"),
    # numbers that are parts of codes, or 15 digits that are no id, stay
    ("x13812345678", "x13812345678"),
    ("order 1381234567890", "order 1381234567890"),
    ("流水号 202611290000001", "流水号 202611290000001"),  # would be born in month 00
    ("编号 110101901307123", "编号 110101901307123"),  # month 13
    ("编号 910101900307123", "编号 910101900307123"),  # area code 9
    ("编号 910101 900307 123", "编号 910101 900307 123"),  # area code 9, in groups
    ("卡号 6222 0212 3456 7890", "卡号 6222 0212 3456 7890"),  # a bank card's 4-4-4-4 is no id
    ("110101 19900307 12345", "110101 19900307 12345"),  # a fifth digit: part of something else
    ("2026-11-29 10:00:00", "2026-11-29 10:00:00"),
    ("", ""),
]


@pytest.mark.parametrize(("text", "masked"), CASES)
def test_mask_pii_text(text, masked):
    assert mask_pii(text) == masked


def test_mask_pii_expression_masks_as_the_text_version_does():
    texts = [t for t, _ in CASES] + [None]
    got = pl.select(mask_pii_expr(pl.lit(pl.Series(texts, dtype=pl.String)))).to_series().to_list()
    assert got == [m for _, m in CASES] + [None]
    assert mask_pii(None) is None


def test_a_long_text_is_masked_as_its_lines_are():
    """An email body (past `_LONG_TEXT` characters) is masked by Polars' regex engine, line by line the same."""
    lines = [t for t, _ in CASES]
    repeat = _LONG_TEXT // len("\n".join(lines)) + 2
    assert len("\n".join(lines * repeat)) > _LONG_TEXT
    assert mask_pii("\n".join(lines * repeat)) == "\n".join([m for _, m in CASES] * repeat)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789０１２３４５６７８９+＋-－ \u3000xXａ号,", max_size=40))
def test_only_text_with_the_hint_is_ever_masked(text):
    """`columns_to_mask` skips a column none of whose values holds the hint: right only if no text
    without it is changed by the masks."""
    if mask_pii(text) != text:
        assert re.search(_HINT, text)


def test_columns_to_mask_picks_the_columns_that_need_it():
    frame = pl.DataFrame({
        "code": ["XM-0012", "XM-0013"],
        "note": ["无", "联系 138-1234-5678"],
        "ts": ["2026-11-29 10:00:00", None],
        "empty": [None, None],
    }, schema={"code": pl.String, "note": pl.String, "ts": pl.String, "empty": pl.String})
    assert columns_to_mask(frame, ["code", "note", "ts", "empty"]) == {"note"}
    assert columns_to_mask(frame.clear(), ["note"]) == set()
