"""The `traces` rules (T1–T6) on small hand-made silver, through the real GX path: per rule a planted
positive that fires and traps that must not; plus the feature helpers against brute force."""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest

from expectations.gx_runner import Validator
from expectations.rules import t1_evidence_count as t1
from expectations.rules import t2_evidence_pages as t2
from expectations.rules import t3_process_only as t3
from expectations.rules import t4_duplicate_in_report as t4
from expectations.rules import t5_upload_burst as t5
from expectations.rules import t6_report_count as t6
from expectations.rules.base import RuleContext, run_rule
from expectations.settings import rule_params
from transforms.features_traces import (
    count_quantiles,
    near_duplicate_pairs,
    report_stages,
    robust_fence,
    window_counts,
)
from transforms.phash import parse_phash
from transforms.schema import TABLES

SH = ZoneInfo("Asia/Shanghai")
AS_OF = date(2026, 11, 29)
DUE = date(2026, 6, 30)
T0 = datetime(2026, 5, 1, 9, 0, tzinfo=SH)


@pytest.fixture(scope="module")
def validator():
    # One GX context for the module (it keeps suite names unique, so a rule may run more than once).
    return Validator()


# --------------------------------------------------------------------------------------------------
# A tiny city builder
# --------------------------------------------------------------------------------------------------


def frame(table: str, rows: list[dict]) -> pl.DataFrame:
    schema = TABLES[table].schema
    return pl.DataFrame([{c: r.get(c, "s" if c == "source_id" else None) for c in schema} for r in rows],
                        schema=schema)


def _hex(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


class City:
    """Projects with one milestone each (or none), reports, evidence; every file unique unless told."""

    def __init__(self):
        self.projects, self.milestones, self.reports, self.evidence = [], [], [], []

    def project(self, pid: str, unit: str = "U1") -> str:
        self.projects.append({"project_id": pid, "title": pid, "unit_code": unit, "owner_id": "P1",
                              "status": "in_progress", "updated_at": T0})
        return pid

    def milestone(self, mid: str, pid: str, stage: str, due: date = DUE) -> str:
        self.milestones.append({"milestone_id": mid, "project_id": pid, "stage": stage, "due_date": due,
                                "updated_at": T0})
        return mid

    def report(self, rid: str, pid: str, ms: str | None, at: datetime = T0) -> str:
        self.reports.append({"report_id": rid, "project_id": pid, "milestone_id": ms, "submitted_at": at,
                             "updated_at": at})
        return rid

    def items(self, rid: str, kinds: list[str], start: datetime | None = None, every: timedelta = timedelta(hours=5),
              pages: list[int | None] | None = None, sha: list[str | None] | None = None,
              phash: list[str | None] | None = None) -> list[str]:
        start = start or T0 - timedelta(days=6)
        ids = []
        for i, kind in enumerate(kinds):
            eid = f"{rid}-E{i:03d}"
            visual = kind in ("photo", "video")
            page = pages[i] if pages else (None if visual else 2)
            self.evidence.append({
                "evidence_id": eid, "report_id": rid, "kind": kind, "pages": page,
                "sha256": sha[i] if sha else _hex(eid, 64),
                "phash": phash[i] if phash else (_hex("p" + eid, 16) if visual else None),
                "uploaded_at": start + i * every, "updated_at": start + i * every,
            })
            ids.append(eid)
        return ids

    def simple(self, rid: str, stage: str, kinds: list[str], unit: str = "U1", **kw) -> str:
        """One project, one milestone of `stage`, one report with `kinds`."""
        pid = self.project(f"X-{rid}", unit)
        ms = self.milestone(f"M-{rid}", pid, stage)
        self.report(rid, pid, ms)
        self.items(rid, kinds, **kw)
        return rid

    def silver(self) -> dict[str, pl.DataFrame]:
        return {
            "units": frame("units", [{"unit_code": "U1", "unit_name": "区", "unit_kind": "district"}]),
            "persons": frame("persons", [{"person_id": "P1", "name": "张三", "updated_at": T0}]),
            "projects": frame("projects", self.projects),
            "milestones": frame("milestones", self.milestones),
            "stage_reports": frame("stage_reports", self.reports),
            "evidence": frame("evidence", self.evidence),
        }


def mixed(n: int) -> list[str]:
    """An ordinary set: photos, a sign-in sheet, documents and ledgers."""
    cycle = ["document", "photo", "ledger", "photo", "sign_in_sheet", "document", "meeting_minutes"]
    return [cycle[i % len(cycle)] for i in range(n)]


def run(module, city: City, validator, **override) -> dict[str, dict]:
    params = {**rule_params(module.RULE_ID, module.PARAMS), **override}
    flags = run_rule(module, RuleContext(city.silver(), AS_OF), validator, params)
    assert set(flags["rule_id"]) <= {module.RULE_ID}
    assert set(flags["entity_type"]) <= {module.ENTITY_TYPE}
    return {row["entity_id"]: json.loads(row["detail"]) for row in flags.iter_rows(named=True)}


# --------------------------------------------------------------------------------------------------
# T1 evidence count
# --------------------------------------------------------------------------------------------------


def t1_city() -> City:
    c = City()
    for i in range(40):  # implementation: 2–6 items
        c.simple(f"IMP{i:02d}", "implementation", mixed(2 + i % 5))
    for i in range(40):  # acceptance normally carries more: 10–16 items
        c.simple(f"ACC{i:02d}", "acceptance", mixed(10 + i % 7))
    for i in range(40):  # initiation: every report has exactly 2 items (IQR 0)
        c.simple(f"INI{i:02d}", "initiation", mixed(2))
    c.simple("PILE", "implementation", ["document"] + ["photo"] * 39)  # positive: 40 items, norm 4
    c.simple("BIGACC", "acceptance", mixed(25))  # trap: large but plausible for acceptance
    c.simple("INI8", "initiation", mixed(8))  # trap: 8 vs 2 in a zero-IQR stage (min_excess)
    for i in range(5):  # interim_result: only 6 reports city-wide, one of them huge -> no verdict
        c.simple(f"INT{i}", "interim_result", mixed(5))
    c.simple("INTBIG", "interim_result", mixed(60))
    return c


def test_t1_fires_on_a_pile_and_not_on_plausible_sets(validator):
    flags = run(t1, t1_city(), validator)
    assert set(flags) == {"PILE"}
    d = flags["PILE"]
    assert d["items"] == 40 and d["stage"] == "implementation"
    assert d["fence_level"] == "source" and d["fence_group"] == "s" and d["group_size"] == 41
    assert d["median"] == pytest.approx(4.0, abs=0.6)
    assert d["q1"] < d["median"] < d["q3"] < d["fence"] <= d["threshold"] < 40
    assert d["threshold"] == pytest.approx(max(d["fence"], d["median"] + 10, d["median"] * 2), abs=0.01)
    assert d["by_kind"]["photo"] == 39 and d["milestone_id"] == "M-PILE" and d["milestone_inferred"] is False


def test_t1_features_say_why_there_is_no_verdict():
    f = t1.features(RuleContext(t1_city().silver(), AS_OF), rule_params("T1", t1.PARAMS))
    small = f.filter(pl.col("report_id") == "INTBIG").row(0, named=True)
    assert small["fence_level"] is None and small["threshold"] is None  # 6 reports < min_group 30
    tight = f.filter(pl.col("report_id") == "INI8").row(0, named=True)
    assert 1.5 < tight["q1"] < tight["median"] < tight["q3"] < 2.5  # everyone files 2: the 8 moves nothing
    assert tight["threshold"] == pytest.approx(tight["median"] + 10)  # min_excess decides, not the fence


def test_t1_uses_a_units_own_norm_when_it_is_large_enough(validator):
    c = City()
    for i in range(60):  # unit U2 routinely files 12–18 items at implementation
        c.simple(f"U2R{i:02d}", "implementation", mixed(12 + i % 7), unit="U2")
    for i in range(200):  # the rest of the source: 2–6
        c.simple(f"U1R{i:03d}", "implementation", mixed(2 + i % 5), unit="U1")
    c.simple("U2BIG", "implementation", mixed(26), unit="U2")  # ordinary for U2
    c.simple("U3BIG", "implementation", mixed(26), unit="U3")  # U3 has 1 report: judged on the source
    flags = run(t1, c, validator, min_group_unit=50)
    assert set(flags) == {"U3BIG"}
    assert flags["U3BIG"]["fence_level"] == "source"


# --------------------------------------------------------------------------------------------------
# T2 evidence pages
# --------------------------------------------------------------------------------------------------


def test_t2_fires_on_piled_pages_not_on_one_long_document(validator):
    c = City()
    for i in range(40):  # two short documents and two photos: 6–40 pages
        c.simple(f"R{i:02d}", "interim_result", ["document", "document", "photo", "photo"],
                 pages=[3 + i % 10, 3 + (i * 7) % 18, None, None])
    c.simple("PILED", "interim_result", ["document", "document", "document", "photo"], pages=[320, 280, 250, None])
    c.simple("LONGPLAN", "interim_result", ["document", "document", "photo", "photo"], pages=[85, 6, None, None])
    flags = run(t2, c, validator)
    assert set(flags) == {"PILED"}
    d = flags["PILED"]
    assert d["pages"] == 850 and d["items"] == 4 and d["items_with_pages"] == 3 and d["scale"] == "log1p"
    assert d["threshold"] >= d["median"] + 100 and d["times_median"] > 20


# --------------------------------------------------------------------------------------------------
# T3 process only
# --------------------------------------------------------------------------------------------------


def test_t3_fires_on_a_sizeable_process_only_set(validator):
    c = City()
    c.simple("SHOW", "interim_result", ["photo"] * 5 + ["sign_in_sheet"] * 2 + ["meeting_minutes"] * 2)
    c.simple("THREE", "interim_result", ["photo"] * 3)  # trap: small process-only set
    c.simple("WITHDOC", "interim_result", ["photo"] * 10 + ["document"])  # trap: outcome attached
    c.simple("VIDEOS", "interim_result", ["photo"] * 6 + ["video"] * 2)  # trap: share 0.75
    c.simple("ORDINARY", "interim_result", mixed(9))
    flags = run(t3, c, validator)
    assert set(flags) == {"SHOW"}
    d = flags["SHOW"]
    assert d == {**d, "items": 9, "process_items": 9, "outcome_items": 0, "process_share": 1.0,
                 "min_items": 8, "min_process_share": 0.9, "stage": "interim_result"}
    assert d["by_kind"]["photo"] == 5 and d["by_kind"]["sign_in_sheet"] == 2


# --------------------------------------------------------------------------------------------------
# T4 duplicates within a report
# --------------------------------------------------------------------------------------------------


def flip(hex16: str, bits: list[int]) -> str:
    v = int(hex16, 16)
    for b in bits:
        v ^= 1 << b
    return f"{v:016x}"


def test_t4_same_file_and_near_photos(validator):
    c = City()
    same = "ab" * 32
    c.simple("SAME", "implementation", ["photo", "photo", "photo", "document"],
             sha=[same, same, same, None], phash=[None] * 4)
    base = "f0e1d2c3b4a59687"
    near = [base, flip(base, [1, 40]), flip(base, [7, 22, 63]), _hex("other", 16)]  # distances 0/2/3
    c.simple("NEAR", "implementation", ["photo"] * 4, phash=near)
    c.simple("TWICE", "implementation", ["photo", "photo", "document"], sha=[same + "x", same + "x", None])
    far = [base, flip(base, list(range(0, 60, 6))), flip(base, list(range(3, 63, 6)))]  # 10 bits apart
    c.simple("FAR", "implementation", ["photo"] * 3, phash=far)
    c.simple("BLANK", "implementation", ["photo"] * 3, phash=["0000000000000000", "0000000000000001", "0000000000000100"])
    for i in range(3):  # the same file once in each of three reports: F1's business, not T4
        c.simple(f"ACROSS{i}", "implementation", ["document", "photo"], sha=["cd" * 32, None])
    flags = run(t4, c, validator)
    assert set(flags) == {"SAME", "NEAR"}
    assert flags["SAME"]["match"] == "same_file" and flags["SAME"]["copies"] == 3
    assert flags["SAME"]["evidence_ids"] == ["SAME-E000", "SAME-E001", "SAME-E002"]
    assert flags["SAME"]["sha256"] == same
    n = flags["NEAR"]
    assert n["match"] == "near_photo" and n["copies"] == 3 and n["phash"] == base and n["max_distance"] == 3
    assert n["evidence_ids"] == ["NEAR-E000", "NEAR-E001", "NEAR-E002"]
    assert n["max_hamming"] == 4 and n["min_copies"] == 3


def test_near_duplicate_pairs_matches_brute_force():
    rng = np.random.default_rng(5)
    groups, hashes = [], []
    for g in range(30):
        base = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        for _ in range(int(rng.integers(1, 8))):
            bits = rng.choice(64, int(rng.integers(0, 8)), replace=False)
            v = base
            for b in bits:
                v ^= 1 << int(b)
            groups.append(g)
            hashes.append(v)
    df = pl.DataFrame({"g": groups, "h": pl.Series(hashes, dtype=pl.UInt64)})
    for d in (0, 2, 4, 6):
        got = {(r["g"], r["h"], r["h2"]) for r in near_duplicate_pairs(df, "g", "h", d).iter_rows(named=True)}
        want = {
            (g1, h1, h2)
            for g1, h1 in zip(groups, hashes, strict=True)
            for g2, h2 in zip(groups, hashes, strict=True)
            if g1 == g2 and h1 != h2 and bin(h1 ^ h2).count("1") <= d
        }
        assert got == want, d


def test_parse_phash():
    s = pl.Series(["FFFFFFFFFFFFFFFF", " 0x0000000000000001 ", "123", "zzzzzzzzzzzzzzzz", None,
                   "+000000000000001", "00000000000000g1"])
    assert pl.select(parse_phash(pl.lit(s))).to_series().to_list() == [2**64 - 1, 1, None, None, None, None, None]


# --------------------------------------------------------------------------------------------------
# T5 upload burst before the due date
# --------------------------------------------------------------------------------------------------


def test_t5_burst_before_due_fires_a_few_files_or_far_from_due_do_not(validator):
    c = City()
    day_before = datetime(2026, 6, 29, 9, 0, tzinfo=SH)
    c.simple("RUSH", "interim_result", mixed(12), start=day_before, every=timedelta(seconds=40))
    c.simple("FEW", "interim_result", mixed(4), start=day_before, every=timedelta(seconds=5))
    c.simple("EARLY", "interim_result", mixed(12), start=datetime(2026, 5, 20, 9, 0, tzinfo=SH),
             every=timedelta(seconds=40))
    c.simple("SPREAD", "interim_result", mixed(12), start=datetime(2026, 6, 28, 8, 0, tzinfo=SH),
             every=timedelta(minutes=20))
    c.simple("AFTER", "interim_result", mixed(12), start=datetime(2026, 7, 2, 9, 0, tzinfo=SH),
             every=timedelta(seconds=40))
    # across midnight into the third day before the due date: the window ends near the deadline
    c.simple("MIDNIGHT", "interim_result", mixed(12), start=datetime(2026, 6, 26, 23, 56, tzinfo=SH),
             every=timedelta(seconds=40))
    flags = run(t5, c, validator)
    assert set(flags) == {"RUSH", "MIDNIGHT"}
    assert flags["MIDNIGHT"]["burst_items"] == 12 and flags["MIDNIGHT"]["days_before_due"] == 3
    d = flags["RUSH"]
    assert d["burst_items"] == 12 and d["burst_minutes"] == pytest.approx(7.3, abs=0.1)
    assert d["burst_start"] == "2026-06-29T09:00:00+08:00" and d["burst_end"] == "2026-06-29T09:07:20+08:00"
    assert d["due_date"] == "2026-06-30" and d["days_before_due"] == 1 and d["milestone_id"] == "M-RUSH"


def test_window_counts_matches_brute_force():
    rng = np.random.default_rng(3)
    n = 400
    g = rng.integers(0, 12, n)
    t = pl.Series(rng.integers(0, 3600, n) * 1_000_000).cast(pl.Datetime("us", "UTC"))
    df = pl.DataFrame({"g": g, "t": t})
    out = window_counts(df, "g", "t", timedelta(minutes=10))
    secs = (t.dt.epoch("s")).to_numpy()
    for row in out.sample(60, seed=1).iter_rows(named=True):
        ts = row["t"].timestamp()
        same = secs[(g == row["g"]) & (secs >= ts - 600) & (secs <= ts)]
        assert row["_window_n"] == len(same)
        assert row["_window_start"].timestamp() == same.min()


# --------------------------------------------------------------------------------------------------
# T6 reports per milestone
# --------------------------------------------------------------------------------------------------


def test_t6_fires_on_a_milestone_with_far_more_reports(validator):
    c = City()

    def ms_with(mid: str, stage: str, n: int) -> None:
        pid = c.project(f"X-{mid}")
        c.milestone(mid, pid, stage)
        for j in range(n):
            c.report(f"{mid}-R{j:02d}", pid, mid, at=T0 + timedelta(days=3 * j))

    for i in range(40):
        ms_with(f"IMP{i:02d}", "implementation", 1 + i % 4)  # norm 1–4
    for i in range(40):
        ms_with(f"INT{i:02d}", "interim_result", 6 + i % 5)  # monthly reporting: 6–10
    ms_with("BUSY", "implementation", 16)
    ms_with("INTBUSY", "interim_result", 14)  # trap: plausible where 6–10 is the norm
    ms_with("SOME", "implementation", 6)  # trap: more than usual, not far more
    flags = run(t6, c, validator)
    assert set(flags) == {"BUSY"}
    d = flags["BUSY"]
    assert d["reports"] == 16 and d["reports_inferred"] == 0 and d["stage"] == "implementation"
    assert d["fence_level"] == "source" and d["group_size"] == 42 and d["fence"] < 16
    assert d["first_report"] == "2026-05-01T09:00:00+08:00" and d["project_id"] == "X-BUSY"


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def test_report_stage_of_unlinked_reports():
    c = City()
    pid = c.project("X1")
    c.milestone("M1", pid, "initiation", due=date(2026, 3, 1))
    c.milestone("M2", pid, "implementation", due=date(2026, 6, 1))
    c.milestone("M3", pid, "acceptance", due=date(2026, 9, 1))
    c.report("LINKED", pid, "M1", at=datetime(2026, 5, 1, tzinfo=SH))
    c.report("AHEAD", pid, None, at=datetime(2026, 5, 1, tzinfo=SH))  # next due: M2
    c.report("ONDUE", pid, None, at=datetime(2026, 6, 1, 23, 0, tzinfo=SH))  # due that very day: M2
    c.report("LATE", pid, None, at=datetime(2026, 10, 1, tzinfo=SH))  # after every due date: the last, M3
    c.report("GHOSTMS", pid, "NOPE", at=datetime(2026, 2, 1, tzinfo=SH))  # dangling link: inferred, M1
    c.report("ORPHAN", "NOPROJ", None)  # no milestones at all
    s = c.silver()
    got = {r["report_id"]: r for r in report_stages(s["stage_reports"], s["milestones"], s["projects"])
           .iter_rows(named=True)}
    assert (got["LINKED"]["milestone_id"], got["LINKED"]["milestone_inferred"]) == ("M1", False)
    assert (got["AHEAD"]["milestone_id"], got["AHEAD"]["stage"], got["AHEAD"]["milestone_inferred"]) == (
        "M2", "implementation", True)
    assert got["ONDUE"]["milestone_id"] == "M2"
    assert got["LATE"]["milestone_id"] == "M3"
    assert got["GHOSTMS"]["milestone_id"] == "M1"
    assert (got["ORPHAN"]["stage"], got["ORPHAN"]["milestone_id"]) == ("unknown", None)
    assert got["AHEAD"]["unit_code"] == "U1"


def test_count_quantiles():
    df = pl.DataFrame({"g": [1] * 8 + [2] * 41, "x": [1, 1, 2, 2, 2, 3, 3, 9] + [2] * 40 + [8]})
    out = {r["g"]: r for r in count_quantiles(df, ["g"], "x", (0.25, 0.5, 0.75)).iter_rows(named=True)}
    # group 1: value 1 covers [0, 2/8), 2 covers [2/8, 5/8), 3 covers [5/8, 7/8), 9 covers [7/8, 1)
    assert out[1]["_n"] == 8
    assert [out[1][f"_q{i}"] for i in range(3)] == pytest.approx([1.5, 1.5 + 0.25 / 0.375, 3.0])
    # group 2: one extreme report does not move the quartiles of a stage where everyone files 2
    assert [out[2][f"_q{i}"] for i in range(3)] == pytest.approx([1.5 + p * 41 / 40 for p in (0.25, 0.5, 0.75)])


def _continuous_count_quantile(values: list[int], p: float) -> float:
    """The quantile at `p` of count + U(-1/2, 1/2), straight from its definition."""
    below = 0
    for v in sorted(set(values)):
        share = values.count(v) / len(values)
        if below <= p < below + share:
            return v - 0.5 + (p - below) / share
        below += share
    raise AssertionError("p outside [0, 1)")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("scale", ["raw", "log1p"])
def test_robust_fence_matches_brute_force(seed, scale):
    """Every row's fence against one worked out row by row: the finest level (unit, source, city) whose
    group of the row's stage is large enough, a row with no unit or no stage in no group of that level,
    rows without a value judged but not counted."""
    rng = np.random.default_rng(seed)
    n = 400
    frame = pl.DataFrame({
        "source_id": rng.choice(["A", "B", "C"], n).tolist(),
        "unit_code": rng.choice(["U1", "U2", "U3", "U4", "U5", "U6", None], n).tolist(),
        "stage": rng.choice(["initiation", "implementation", "acceptance", None], n,
                            p=[0.45, 0.35, 0.15, 0.05]).tolist(),
        "value": [None if rng.random() < 0.05 else int(rng.poisson(4) + (30 if rng.random() < 0.02 else 0))
                  for _ in range(n)],
    }, schema={"source_id": pl.String, "unit_code": pl.String, "stage": pl.String, "value": pl.Int64})
    k, mins = 1.5, {"unit": 14, "source": 25, "city": 25}
    out = robust_fence(frame, "value", scale=scale, k=k, min_group_unit=mins["unit"], min_group=mins["source"],
                       min_excess=3, min_ratio=1.5)
    assert out.height == n and out.select(frame.columns).equals(frame)
    fwd, back = (np.log1p, np.expm1) if scale == "log1p" else ((lambda x: x), (lambda x: x))
    rows = frame.rows(named=True)
    level_keys = {"unit": ("source_id", "unit_code", "stage"), "source": ("source_id", "stage"), "city": ("stage",)}
    for row, got in zip(rows, out.iter_rows(named=True), strict=True):
        want = {"fence_level": None, "fence_group": None, "group_size": None, "threshold": None}
        for level, keys in level_keys.items():
            if any(row[key] is None for key in keys):
                continue
            values = [r["value"] for r in rows if all(r[key] == row[key] for key in keys) and r["value"] is not None]
            if len(values) < mins[level]:
                continue
            q1, q2, q3 = (fwd(max(_continuous_count_quantile(values, p), 0.0)) for p in (0.25, 0.5, 0.75))
            fence, median = back(q3 + k * (q3 - q1)), back(q2)
            want = {"fence_level": level, "group_size": len(values), "threshold": max(fence, median + 3, median * 1.5),
                    "fence_group": {"unit": row["unit_code"], "source": row["source_id"], "city": "city"}[level]}
            break
        assert {c: got[c] for c in ("fence_level", "fence_group", "group_size")} == {
            c: want[c] for c in ("fence_level", "fence_group", "group_size")}
        assert got["threshold"] == (None if want["threshold"] is None else pytest.approx(want["threshold"]))


def test_rules_accept_empty_silver(validator):
    empty = City()
    for module in (t1, t2, t3, t4, t5, t6):
        flags = run_rule(module, RuleContext(empty.silver(), AS_OF), validator,
                         rule_params(module.RULE_ID, module.PARAMS))
        assert flags.is_empty()
