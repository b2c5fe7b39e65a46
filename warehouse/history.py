"""Previous partitions of the marts, for the changes a mart reports since then (score_change).

The marts builders are pure; this is the I/O that feeds `MartInputs.history` (see `flows.steps`).
"""

from __future__ import annotations

import logging
from datetime import date

import polars as pl

from warehouse.layout import Layout
from warehouse.publish import current_release, partitions, read_mart

log = logging.getLogger("qingfeng")

# Marts whose builders compare with their own previous partition.
WITH_HISTORY = ("project_health", "person_portrait", "unit_scorecard")


def previous_partitions(layout: Layout, as_of: date, marts: tuple[str, ...] = WITH_HISTORY) -> dict[str, pl.DataFrame]:
    """mart -> its latest published partition strictly before `as_of` (marts without one are left out).

    A rerun of date D compares with the partition before D, not with D's own earlier run; a run for a date
    before the newest one (a backfill) compares with the partition before it, too. A partition that cannot
    be read is logged and skipped: a missing comparison must not sink the night.
    """
    try:
        release = current_release(layout)
    except Exception:  # noqa: BLE001 — history is a nicety
        log.exception("reading the current release for history failed")
        return {}
    if release is None:
        return {}
    out: dict[str, pl.DataFrame] = {}
    for mart in marts:
        earlier = [d for d in partitions(layout, mart, release) if d < as_of]
        if not earlier:
            continue
        try:
            out[mart] = read_mart(layout, mart, earlier[-1])
        except Exception:  # noqa: BLE001
            log.exception("reading %s as_of=%s for history failed", mart, earlier[-1])
    return out
