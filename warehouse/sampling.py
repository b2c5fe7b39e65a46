"""`qingfeng sample`: draw the spot checks (明察暗访) from the published marts and publish the draw.

The draw itself is pure (`warehouse.marts.spot_checks.draw`); this module does the reading and publishing.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from warehouse.analysts import refresh_views
from warehouse.layout import Layout
from warehouse.marts import spot_checks
from warehouse.publish import partitions, publish, read_mart


def sample_spot_checks(
    layout: Layout, n: int, seed: int, as_of: date | None = None
) -> tuple[pl.DataFrame, date]:
    """Draw `n` projects from project_health of `as_of` (default: its latest partition), weighted by risk,
    publish the draw as partition as_of of the `spot_checks` mart (other marts untouched) and refresh the
    analysts' views. Returns the draw and its as_of."""
    dates = partitions(layout, "project_health")
    if not dates:
        raise FileNotFoundError(f"no project_health published under {layout.root}: run the night first")
    day = as_of or dates[-1]
    if day not in dates:
        raise FileNotFoundError(
            f"project_health has no partition as_of={day.isoformat()} "
            f"(latest: {dates[-1].isoformat()}); run the night for that date first"
        )
    health = read_mart(layout, "project_health", day)
    flags = read_mart(layout, "dq_flags", day) if day in partitions(layout, "dq_flags") else None
    drawn = spot_checks.draw(health, flags, n=n, seed=seed, as_of=day)
    publish(layout, day, {spot_checks.NAME: drawn})
    refresh_views(layout)  # the spot_checks views appear with the first draw
    return drawn, day
