"""Which sources the simulated city has: ids, names, kinds, dialects, and the roles of the broken ones."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.phrases import DEPARTMENTS, DISTRICTS


@dataclass
class SourceMeta:
    index: int
    id: str
    name: str
    kind: str  # district | department
    dialect: str  # platform | legacy | filedrop
    roles: set[str] = field(default_factory=set)  # unreachable|missing_table|stale|stale_delivery|extra_column
    encoding: str = "utf-8-sig"  # filedrop only: utf-8-sig | gb18030
    url: str = ""
    pg: bool = False  # platform source written to PostgreSQL (typed columns: no unparseable dates)

    @property
    def steward_email(self) -> str:
        return f"data@{self.id}.example.cn"


def n_districts(n: int) -> int:
    # The real city is 22 districts + 74 departments; keep that ratio for any N.
    return max(1, min(22, round(n * 22 / 96)))


def plan_sources(n: int, seed: int) -> list[SourceMeta]:
    """N sources: districts first, then departments; ~60/25/15 % platform/legacy/filedrop."""
    if n < 1:
        raise ValueError("need at least one source")
    rng = np.random.default_rng([seed, 991])
    nd = n_districts(n)
    metas: list[SourceMeta] = []
    for i in range(n):
        if i < nd:
            sid, name = DISTRICTS[i]
            kind = "district"
        else:
            j = i - nd
            suffix, name = DEPARTMENTS[j % len(DEPARTMENTS)]
            sid = f"shi_{suffix}"
            if j >= len(DEPARTMENTS):  # beyond the real city: numbered offices keep ids unique
                round_no = j // len(DEPARTMENTS) + 1
                sid, name = f"{sid}_{round_no}", f"{name}（第{round_no}分局）"
            kind = "department"
        metas.append(SourceMeta(i, sid, name, kind, "platform"))

    # Dialect mix: exact counts, shuffled; at least one of each from N >= 3.
    n_legacy = round(n * 0.25)
    n_filedrop = round(n * 0.15)
    if n >= 3:
        n_legacy, n_filedrop = max(1, n_legacy), max(1, n_filedrop)
    dialects = ["legacy"] * n_legacy + ["filedrop"] * n_filedrop
    dialects += ["platform"] * (n - len(dialects))
    order = rng.permutation(n)
    for meta, k in zip(metas, order, strict=True):
        meta.dialect = dialects[k]
    for k, meta in enumerate(m for m in metas if m.dialect == "filedrop"):
        meta.encoding = "gb18030" if k % 2 == 0 else "utf-8-sig"

    # One legacy source has an extra column in one table (contract §6; not labelled).
    legacy_plain = [m for m in metas if m.dialect == "legacy"]
    if legacy_plain:
        legacy_plain[0].roles.add("extra_column")

    # Broken sources (rule C1, C4), only in a city big enough to afford them.
    if n >= 5:
        platforms = [m for m in metas if m.dialect == "platform"]
        legacies = [m for m in metas if m.dialect == "legacy"]
        filedrops = [m for m in metas if m.dialect == "filedrop"]
        platforms[-1].roles.add("unreachable")
        legacies[-1].roles.add("missing_table")
        stale_pool = [m for m in platforms[:-1] + legacies[:-1] if not m.roles - {"extra_column"}]
        if stale_pool:
            stale_pool[0].roles.add("stale")
        else:
            filedrops[0].roles.add("stale_delivery")
        if n >= 20 and len(filedrops) >= 2:
            filedrops[-1].roles.add("stale_delivery")
    return metas
