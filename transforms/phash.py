"""64-bit perceptual hashes (pHash): parsing, and the bit bands that near-duplicate search buckets by.

Shared by T4 (near-identical photos within a report) and F1 (across projects).
"""

from __future__ import annotations

import polars as pl


def parse_phash(expr: pl.Expr) -> pl.Expr:
    """A 64-bit perceptual hash written as 16 hex digits (optionally `0x`-prefixed, any case) → UInt64;
    NULL when it is not one."""
    text = expr.str.strip_chars().str.to_lowercase().str.strip_prefix("0x")
    # Exactly 16 characters; a non-hex character makes the (non-strict) parse NULL.
    ok = (text.str.len_bytes() == 16) & ~text.str.starts_with("+")
    return pl.when(ok).then(text.str.to_integer(base=16, dtype=pl.UInt64, strict=False))


def bands(n_bands: int) -> list[tuple[int, int]]:
    """Split 64 bits into `n_bands` contiguous, nearly equal bands: (shift, width) of each."""
    widths = [64 // n_bands + (1 if i < 64 % n_bands else 0) for i in range(n_bands)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, w))
        shift += w
    return out
