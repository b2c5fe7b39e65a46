"""Times inside the simulator: int64 seconds / days since 1970-01-01 in the city's local time (UTC+8).

Working in plain integers keeps generation vectorized; formatting happens once, in the writers.
"""

from __future__ import annotations

from datetime import date

import numpy as np

DAY = 86_400
HOUR = 3_600
NULL = np.iinfo(np.int64).min  # NULL timestamp/date sentinel
EPOCH = date(1970, 1, 1)


def day_of(d: date) -> int:
    return (d - EPOCH).days


def is_null(a: np.ndarray) -> np.ndarray:
    return a == NULL
