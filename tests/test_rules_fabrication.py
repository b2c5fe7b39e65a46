"""The `fabrication` rules (F1–F7) on small hand-made silver, through the real GX path: per rule a planted
positive that fires, and a trap that must not."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from expectations.gx_runner import Validator
from expectations.rules import f1_evidence_reuse as f1
from expectations.rules import f2_evidence_times as f2e
from expectations.rules import f2_report_times as f2r
from expectations.rules import f3_progress_jump as f3
from expectations.rules import f4_repeated_report as f4
from expectations.rules import f5_digit_tests as f5
from expectations.rules import f6_copied_summary as f6
from expectations.rules import f7_completed_no_outcome as f7
from expectations.rules import rule_flags
from expectations.rules.base import RuleContext, run_rule
from expectations.settings import rule_params
from transforms.features_fabrication import near_pairs
from transforms.schema import METRICS_SCHEMA, TABLES

SH = ZoneInfo("Asia/Shanghai")
AS_OF = date(2026, 11, 29)
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=SH)


def ts(days: float = 0, hours: float = 0) -> datetime:
    return T0 + timedelta(days=days, hours=hours)


def frame(table: str, rows: list[dict]) -> pl.DataFrame:
    schema = METRICS_SCHEMA if table == "metrics" else TABLES[table].schema
    return pl.DataFrame([{c: r.get(c, "s" if c == "source_id" else None) for c in schema} for r in rows],
                        schema=schema)


def project(pid: str, unit: str = "U1", start: date = date(2026, 3, 1)) -> dict:
    return {"project_id": pid, "title": pid, "unit_code": unit, "owner_id": "P1", "planned_start": start,
            "status": "in_progress", "updated_at": ts()}


def report(rid: str, pid: str, at: datetime, progress: float | None = None, ms: str | None = None, by: str = "P1",
           summary: str | None = None) -> dict:
    return {"report_id": rid, "project_id": pid, "milestone_id": ms, "submitted_at": at, "submitted_by": by,
            "progress_pct": progress, "summary": summary, "updated_at": at}


def evidence(eid: str, rid: str, kind: str, up: datetime, sha: str | None = None, phash: str | None = None,
             captured: datetime | None = None) -> dict:
    return {"evidence_id": eid, "report_id": rid, "kind": kind, "sha256": sha, "phash": phash,
            "captured_at": captured, "uploaded_at": up, "updated_at": up}


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator()


def run(module, silver: dict, validator) -> pl.DataFrame:
    return run_rule(module, RuleContext(silver, AS_OF), validator, rule_params(module.RULE_ID, module.PARAMS))


def flagged(flags: pl.DataFrame) -> dict[str, dict]:
    return {e: json.loads(d) for e, d in zip(flags["entity_id"], flags["detail"], strict=True)}


# --------------------------------------------------------------------------------------------------


def test_near_pairs_finds_every_pair_within_distance():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2**63, 400, dtype=np.int64).astype(np.uint64)
    flips = [np.uint64(sum(1 << int(b) for b in rng.choice(64, k, replace=False))) for k in (1, 2, 3, 4, 5)]
    values = np.r_[base, base[:5] ^ np.array(flips, dtype=np.uint64)]
    i, j, d = near_pairs(values, 4)
    got = {(int(a), int(b)): int(c) for a, b, c in zip(i, j, d, strict=True)}
    assert got == {(k, 400 + k): k + 1 for k in range(4)}  # the 5-bit copy is out of reach


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 7), max_size=60), st.integers(1, 4), st.sampled_from([3, 8, 64]))
def test_equal_key_pairs_and_packed_sort_are_those_of_a_stable_sort(small, max_offset, width):
    """The quicksort shortcuts (keys alone, or packed with their index when they fit) give exactly the
    pairs a stable sort gives, in the same order (which decides the pairs drawn from a bucket larger than
    the bound)."""
    from transforms.features_fabrication import _equal_key_pairs, _pairs_in_runs

    key = np.array(small, dtype=np.uint64) * np.uint64((1 << width) - 1 if width < 64 else 2**63 + 1)
    order = np.argsort(key, kind="stable")
    p, q = _pairs_in_runs(key[order], max_offset)
    for key_bits in {64, width + 3}:  # `width + 3` bits hold the keys: packed with the index
        a, b = _equal_key_pairs(key, max_offset, key_bits)
        assert np.array_equal(a, order[p]) and np.array_equal(b, order[q])


def test_f1_reuse_across_projects_and_traps(validator):
    sha_a, sha_b, notice, poster = "a" * 64, "b" * 64, "c" * 64, "d" * 64
    ph, near = "f0f0f0f0f0f0f0f0", "f0f0f0f0f0f0f0f3"  # 2 bits apart
    projects = [project("X1"), project("X2"), project("X3")] + [
        project(f"Y{k}", unit=f"U{k % 4}") for k in range(12)]
    reports = [report("R1", "X1", ts(5)), report("R2", "X2", ts(9)), report("R3", "X1", ts(12)),
               report("R4", "X3", ts(15))] + [report(f"RY{k}", f"Y{k}", ts(3 + k)) for k in range(12)]
    ev = [
        evidence("E1", "R1", "photo", ts(4), sha_a, ph),       # the original
        evidence("E2", "R2", "photo", ts(8), sha_a, ph),       # same file, other project: F1
        evidence("E3", "R4", "photo", ts(14), "e" * 64, near),  # re-encoded copy: F1 by phash
        evidence("E4", "R3", "photo", ts(11), sha_b),           # same file twice in one project: not F1
        evidence("E5", "R1", "photo", ts(4, 1), sha_b),
        evidence("E6", "R1", "document", ts(4), notice),        # the city notice on many projects
        evidence("E7", "R2", "document", ts(8), notice),
    ] + [evidence(f"EN{k}", f"RY{k}", "document", ts(2 + k), notice) for k in range(12)] + [
        evidence(f"EP{k}", f"RY{k}", "photo", ts(2 + k, 2), poster) for k in range(12)]  # a poster, city-wide
    silver = {"projects": frame("projects", projects), "stage_reports": frame("stage_reports", reports),
              "evidence": frame("evidence", ev)}
    flags = run(f1, silver, validator)
    got = flagged(flags)
    assert set(got) == {"E2", "E3"}
    assert got["E2"]["match"] == "sha256" and got["E2"]["original_evidence_id"] == "E1"
    assert got["E2"]["original_project_id"] == "X1" and got["E2"]["hamming_to_original"] == 0
    assert got["E3"]["match"] == "phash" and got["E3"]["hamming_to_original"] == 2
    assert got["E3"]["original_evidence_id"] == "E1"
    assert flags["entity_type"].unique().to_list() == ["evidence"]


def test_f2_impossible_timestamps_on_evidence_and_reports(validator):
    projects = [project("X1", start=date(2026, 3, 1)), project("X2", start=date(2026, 6, 1))]
    reports = [
        report("R1", "X1", ts(10)),
        report("R2", "X2", ts(30)),                          # 62 days before X2's start: F2
        report("R3", "X1", ts(-10)),                         # 10 days before X1's start: fine
        report("R4", "X1", datetime(2026, 12, 5, 10, tzinfo=SH)),   # in the future: F2
        report("R5", "X1", datetime(2026, 11, 30, 2, tzinfo=SH)),   # a run after midnight pulls it: fine
    ]
    ev = [
        evidence("E1", "R1", "photo", ts(9), captured=ts(9, 5)),           # captured 5 h after upload: F2
        evidence("E2", "R1", "photo", ts(9), captured=ts(9, 0.3)),         # 18 min: clock tolerance
        evidence("E3", "R1", "photo", ts(9), captured=ts(-400)),           # 400 days before start: F2
        evidence("E4", "R1", "photo", ts(9), captured=ts(-200)),           # 200 days: a baseline photo
        evidence("E5", "R1", "ledger", ts(13)),                            # 3 days after the report: F2
        evidence("E6", "R1", "ledger", ts(10, 2)),                         # 2 hours after: tolerance
    ]
    silver = {"projects": frame("projects", projects), "stage_reports": frame("stage_reports", reports),
              "evidence": frame("evidence", ev)}
    ev_flags = flagged(run(f2e, silver, validator))
    assert set(ev_flags) == {"E1", "E3", "E5"}
    assert ev_flags["E1"]["tests"] == ["captured_after_upload"] and ev_flags["E1"]["capture_after_upload_hours"] == 5
    assert ev_flags["E3"]["tests"] == ["captured_before_project_start"]
    assert ev_flags["E5"]["tests"] == ["uploaded_after_report_submitted"]
    assert ev_flags["E5"]["uploaded_after_report_days"] == 3
    rep_flags = flagged(run(f2r, silver, validator))
    assert set(rep_flags) == {"R2", "R4"}
    assert rep_flags["R2"]["tests"] == ["submitted_before_project_start"]
    assert rep_flags["R4"]["tests"] == ["submitted_in_future"]
    # Both F2 modules together, as the nightly run calls them (two modules, one RULE_ID).
    both = rule_flags(RuleContext(silver, AS_OF), validator, only={"F2"})
    assert sorted(zip(both["entity_type"], both["entity_id"], strict=True)) == [
        ("evidence", "E1"), ("evidence", "E3"), ("evidence", "E5"), ("report", "R2"), ("report", "R4")]


def test_f3_backwards_and_unearned_100(validator):
    projects = [project("X1"), project("X2"), project("X3")]
    reports = [
        report("A1", "X1", ts(1), 30), report("A2", "X1", ts(2), 50), report("A3", "X1", ts(3), 35),  # -15: F3
        report("A4", "X1", ts(4), 45), report("A5", "X1", ts(5), 40),                                  # -5: fine
        report("B1", "X2", ts(1), 50), report("B2", "X2", ts(2), 100),      # interim not completed: F3
        report("C1", "X3", ts(1), 50), report("C2", "X3", ts(20), 100),     # interim completed before: fine
    ]
    milestones = [
        {"milestone_id": f"M{p}", "project_id": p, "stage": "interim_result", "due_date": date(2026, 4, 1),
         "completed_at": ts(10) if p == "X3" else None, "updated_at": ts()} for p in ("X1", "X2", "X3")]
    silver = {"projects": frame("projects", projects), "stage_reports": frame("stage_reports", reports),
              "milestones": frame("milestones", milestones)}
    got = flagged(run(f3, silver, validator))
    assert set(got) == {"A3", "B2"}
    assert got["A3"]["tests"] == ["progress_backwards"] and got["A3"]["progress_drop"] == 15
    assert got["A3"]["prev_report_id"] == "A2"
    assert got["B2"]["tests"] == ["complete_without_interim_result"] and got["B2"]["interim_milestone_id"] == "MX2"


def test_f4_copied_forward_again_and_again(validator):
    projects = [project("X1"), project("X2")]
    reports = [
        report("A1", "X1", ts(1), 40), report("A2", "X1", ts(2), 40), report("A3", "X1", ts(3), 40),  # run of 3
        report("A4", "X1", ts(4), 60),
        report("B1", "X2", ts(1), 40), report("B2", "X2", ts(2), 40),   # one repeat only: fine
        report("B3", "X2", ts(3), 40),                                  # same progress, other metric value
    ]
    metrics = [{"report_id": r, "metric_name": "走访企业数", "metric_value": 12.0} for r in ("A1", "A2", "A3", "B1", "B2")]
    metrics += [{"report_id": r, "metric_name": "培训人次", "metric_value": 30.0} for r in ("A1", "A2", "A3")]
    metrics += [{"report_id": "A4", "metric_name": "走访企业数", "metric_value": 20.0},
                {"report_id": "B3", "metric_name": "走访企业数", "metric_value": 13.0}]
    silver = {"projects": frame("projects", projects), "stage_reports": frame("stage_reports", reports),
              "metrics": frame("metrics", metrics)}
    got = flagged(run(f4, silver, validator))
    assert set(got) == {"A2", "A3"}
    assert got["A3"]["identical_run_length"] == 3 and got["A3"]["run_first_report_id"] == "A1"
    assert got["A2"]["metrics"] == "培训人次=30.0;走访企业数=12.0"


def test_f5_digit_tests_with_sample_size_floor(validator):
    rng = np.random.default_rng(5)
    people = {
        "P1": rng.integers(300, 700, 150).astype(float),                        # invented: first digits 3-6
        "P2": np.maximum(1.0, np.round(rng.lognormal(np.log(60), 1.6, 400))),  # honest, Benford-like
        "P5": np.maximum(1.0, np.round(rng.lognormal(np.log(30), 1.8, 1500))),  # the bulk of honest figures
        "P3": np.round(rng.lognormal(np.log(60), 1.4, 80) / 10) * 10 + 10,     # heaped on tens (80 values)
        "P4": np.round(rng.lognormal(np.log(60), 1.4, 40) / 10) * 10 + 10,     # heaped, but too few to judge
    }
    reports, metrics = [], []
    for person, vals in people.items():
        for k, v in enumerate(vals):
            rid = f"{person}-{k}"
            reports.append(report(rid, "X1", ts(k % 200), by=person))
            metrics.append({"report_id": rid, "metric_name": "m", "metric_value": float(v)})
    silver = {"projects": frame("projects", [project("X1")]), "stage_reports": frame("stage_reports", reports),
              "metrics": frame("metrics", metrics)}
    got = flagged(run(f5, silver, validator))
    assert set(got) == {"P1", "P3"}
    assert "first_digit" in got["P1"]["tests"] and got["P1"]["first_digit_mad"] > 0.1
    assert got["P1"]["n_first"] == 150 and got["P1"]["first_digits"]["1"] == 0
    assert got["P3"]["tests"][0] == "round_number_heaping" and got["P3"]["round_share"] == 1.0


def _summary(rng: np.random.Generator, opening: str) -> str:
    towns = ["春熙路镇", "双桥子村", "十陵社区", "新源镇", "桂溪村", "安德街道", "跳蹬河街道", "天马街道"]
    parts = [opening, "围绕“文山会海攻坚行动”，"]
    for _ in range(4):
        parts.append(f"{rng.integers(1, 13)}月{rng.integers(1, 29)}日，深入{towns[rng.integers(0, 8)]}"
                     f"清理规范各类检查评比事项{rng.integers(1, 99)}项，取消示范创建活动{rng.integers(1, 40)}项。")
    parts.append("下一步，将持续跟踪问效，做到事事有着落、件件有回音。")
    return "".join(parts)


def test_f6_near_copy_of_another_project(validator):
    rng = np.random.default_rng(3)
    openings = ["坚持以党的政治建设为统领，坚决破除形式主义、官僚主义。", "按照《方案》明确的实施步骤，扎实推进重点整治项目。"]
    texts = [_summary(rng, openings[k % 2]) for k in range(40)]
    reports = [report(f"R{k}", f"X{k % 20}", ts(k), summary=t) for k, t in enumerate(texts)]
    original = texts[3]
    copy = original.replace("清理", "清查", 1).replace("项。", "件。", 1)  # a few characters changed
    reports.append(report("COPY", "X7", ts(50), summary=copy))           # X7 is another project than X3
    reports.append(report("SAME", "X3", ts(51), summary=original))        # its own project again: not F6
    silver = {"projects": frame("projects", [project(f"X{k}") for k in range(20)]),
              "stage_reports": frame("stage_reports", reports)}
    got = flagged(run(f6, silver, validator))
    assert set(got) == {"COPY"}
    assert got["COPY"]["original_report_id"] == "R3" and got["COPY"]["original_project_id"] == "X3"
    assert 0.5 <= got["COPY"]["jaccard"] < 1.0


def test_f7_claimed_complete_without_outcome(validator):
    projects = [project("X1")]
    milestones = [
        {"milestone_id": m, "project_id": "X1", "stage": "implementation", "due_date": date(2026, 5, 1),
         "completed_at": done, "updated_at": ts()}
        for m, done in (("M1", ts(20)), ("M2", ts(20)), ("M3", None), ("M4", None))]
    reports = [report("R1", "X1", ts(19), 50, "M1"), report("R2", "X1", ts(19), 50, "M2"),
               report("R3", "X1", ts(25), 100, "M3"), report("R4", "X1", ts(25), 40, "M4")]
    ev = [evidence("E1", "R1", "photo", ts(18)), evidence("E2", "R1", "sign_in_sheet", ts(18)),
          evidence("E3", "R2", "photo", ts(18)), evidence("E4", "R2", "ledger", ts(18)),
          evidence("E5", "R3", "other", ts(24)), evidence("E6", "R4", "photo", ts(24))]
    silver = {"projects": frame("projects", projects), "stage_reports": frame("stage_reports", reports),
              "milestones": frame("milestones", milestones), "evidence": frame("evidence", ev)}
    got = flagged(run(f7, silver, validator))
    assert set(got) == {"M1", "M3"}
    assert got["M1"]["outcome_items"] == 0 and got["M1"]["evidence_items"] == 2
    assert got["M3"]["complete_report_id"] == "R3" and got["M3"]["completed_at"] is None


_M64 = (1 << 64) - 1


def _splitmix64_ref(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(alphabet="汇报项目进度完成整改会议abc0123", max_size=40)), max_size=25),
       st.sampled_from([1, 5, 64]), st.sampled_from([1, 3, 1000]))
def test_f6_sketches_are_their_definition_whatever_the_blocks(texts, shingle_block, minhash_block):
    """F6's shingles, MinHash values and band keys, computed block by block for the cache, equal their
    definition computed one value at a time: rolling hash of each k-gram, splitmix64; per round, the
    smallest value of each bin, an empty bin borrowing from the next non-empty one `shift` bins on (plus
    `shift` in the top bits); a band key is splitmix64 chained over its values. A kept sketch is only
    valid if this stays put (`f6_copied_summary.SKETCH_VERSION`)."""
    import transforms.features_fabrication as ff

    k, n_values, per_round, rows_per_band = 3, 16, 4, 4
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ff, "_SHINGLE_BLOCK", shingle_block)
        patch.setattr(ff, "_MINHASH_BLOCK", minhash_block)
        doc, h = ff.shingle_hashes(pl.Series(texts, dtype=pl.String), k)
        sig = ff.minhash_signatures(doc, h, len(texts), n_values, per_round)
    expected = []
    for d, text in enumerate(texts):
        for i in range(len(text or "") - k + 1):
            value = 0
            for ch in text[i:i + k]:
                value = (value * 0x100000001B3 + ord(ch)) & _M64
            expected.append((d, _splitmix64_ref(value)))
    assert [(int(a), int(b)) for a, b in zip(doc, h, strict=True)] == expected

    odd = [(int(m) * 2 + 1) & _M64 for m in np.random.default_rng(0x5EED).integers(1, 2**63, n_values // per_round,
                                                                                  dtype=np.int64)]
    bits = per_round.bit_length() - 1
    for d in range(len(texts)):
        mine = [int(x) for x, owner in zip(h, doc, strict=True) if owner == d]
        row = []
        for a in odd:
            bins = [_M64] * per_round
            for x in mine:
                v = (x * a) & _M64
                b = v >> (64 - bits)
                bins[b] = min(bins[b], v & ((1 << (64 - bits)) - 1))
            filled = list(bins)
            for b in range(per_round):
                shift = next((s for s in range(1, per_round) if bins[(b + s) % per_round] != _M64), None)
                if bins[b] == _M64 and shift is not None:
                    filled[b] = (bins[(b + shift) % per_round] + (shift << (64 - bits))) & _M64
            row += filled
        assert [int(x) for x in sig[d]] == row

    keys = ff.band_keys(sig, rows_per_band)
    for d in range(len(texts)):
        for band in range(n_values // rows_per_band):
            key = band
            for c in range(band * rows_per_band, (band + 1) * rows_per_band):
                key = _splitmix64_ref(key ^ int(sig[d, c]))
            assert int(keys[d, band]) == key


def test_jaccard_of_candidate_pairs_does_not_depend_on_the_batching():
    """F6 computes the exact Jaccard of its candidate pairs in batches of pairs (memory), over shingle sets
    built batch by batch of documents: every batch size and every split of the documents gives the same
    figures, which match the Jaccard of the shingle sets computed directly."""
    import numpy as np

    from transforms.features_fabrication import ShingleSets, jaccard_pairs

    rng = np.random.default_rng(7)
    doc = rng.integers(0, 40, 4000)
    h = rng.integers(0, 300, 4000).astype(np.uint64)
    a, b = rng.integers(0, 45, 500), rng.integers(0, 45, 500)  # docs 40–44 have no shingles
    sets = ShingleSets.of(doc, h)
    whole = jaccard_pairs(sets, a, b, pairs_per_batch=10_000)
    direct_sets = {d: set(h[doc == d].tolist()) for d in range(45)}
    direct = [len(direct_sets[x] & direct_sets[y]) / len(direct_sets[x] | direct_sets[y])
              if direct_sets[x] | direct_sets[y] else 0.0 for x, y in zip(a, b, strict=True)]
    assert np.allclose(whole, direct)
    for size in (1, 7, 499):
        assert np.array_equal(jaccard_pairs(sets, a, b, pairs_per_batch=size), whole)
    # documents split into parts out of order (as shards of sources deliver them), put together again
    parts = [ShingleSets.of(doc[doc % 3 == r], h[doc % 3 == r]) for r in (2, 0, 1)]
    joined = ShingleSets.concat(parts)
    assert np.array_equal(joined.ids, sets.ids) and np.array_equal(joined.size, sets.size)
    assert np.array_equal(jaccard_pairs(joined, a, b, pairs_per_batch=64), whole)
    assert np.array_equal(jaccard_pairs(ShingleSets.concat([]), a, b), np.zeros(len(a)))


def test_f1_photos_held_once_still_meet_through_near_links(validator):
    """F1 keeps, of the city's unique files and photos, only what can matter: a photo held by one row
    is still the original of a near copy in another project, and the near copy is still flagged."""
    projects = [project("X1"), project("X2", unit="U2"), project("X3", unit="U3")]
    reports = [report("R1", "X1", ts(5)), report("R2", "X2", ts(9)), report("R3", "X3", ts(12))]
    ev = [
        evidence("E1", "R1", "photo", ts(4), "1" * 64, "f0f0f0f0f0f0f0f0"),   # held once: the original
        evidence("E2", "R2", "photo", ts(8), "2" * 64, "f0f0f0f0f0f0f0f1"),   # 1 bit away, another project
        evidence("E3", "R3", "photo", ts(11), "3" * 64, "0f0f0f0f0f0f0f0f"),  # unrelated, held once
        evidence("E4", "R3", "sign_in_sheet", ts(11), "4" * 64),              # unique file
    ]
    silver = {"projects": frame("projects", projects), "stage_reports": frame("stage_reports", reports),
              "evidence": frame("evidence", ev)}
    got = flagged(run(f1, silver, validator))
    assert set(got) == {"E2"}
    assert got["E2"]["match"] == "phash" and got["E2"]["hamming_to_original"] == 1
    assert got["E2"]["original_evidence_id"] == "E1" and got["E2"]["content_projects"] == 2

    # Thresholds of 1 project and 1 unit make every content distributed material: nothing is judged.
    params = {**rule_params("F1", f1.PARAMS), "broadcast_min_projects": 1, "broadcast_min_units": 1}
    assert run_rule(f1, RuleContext(silver, AS_OF), validator, params).is_empty()


def test_group_summary_firsts_by_time_then_row():
    """`group_summary` against a direct reading: per group the first row (by time, then row), the first
    row of the second project to appear, and the counts; ties in time are broken by row."""
    from transforms.features_fabrication import group_summary

    rng = np.random.default_rng(3)
    n = 400
    rows = pl.DataFrame({
        "grp": rng.integers(0, 30, n), "row": rng.permutation(n), "project": rng.integers(0, 6, n),
        "unit": rng.integers(0, 3, n), "t": rng.integers(0, 20, n), "note": ["x"] * n,
    }).with_columns(pl.col("grp").cast(pl.Int128))
    got = {r["grp"]: r for r in group_summary(rows).iter_rows(named=True)}
    assert set(got) == set(rows["grp"].to_list())
    for grp, part in rows.partition_by("grp", as_dict=True).items():
        ordered = part.sort("t", "row").to_dicts()
        first = ordered[0]
        second = next((r for r in ordered if r["project"] != first["project"]), None)
        s = got[grp[0]]
        assert (s["row1"], s["project1"], s["t1"]) == (first["row"], first["project"], first["t"])
        assert (s["row2"], s["project2"], s["t2"]) == ((second["row"], second["project"], second["t"]) if second
                                                       else (None, None, None))
        assert (s["n_projects"], s["n_units"], s["n_rows"]) == (part["project"].n_unique(), part["unit"].n_unique(),
                                                                part.height)
