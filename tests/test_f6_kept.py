"""F6 keeps each report's sketch between nights (`warehouse.kept`): the next night sketches only the
reports whose summary changed, or whose shingles entered or left the boilerplate, and its figures are
those of a night made from scratch."""

from __future__ import annotations

import logging
import re
import zlib

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from expectations.rules import f6_copied_summary as f6
from expectations.rules.base import RuleContext
from expectations.settings import rule_params
from tests.test_rules_fabrication import AS_OF, _summary, frame, project, report, ts
from transforms.features_fabrication import stable_key_hash
from warehouse.kept import KeptStore

OPENINGS = ["坚持以党的政治建设为统领，坚决破除形式主义、官僚主义。", "按照《方案》明确的实施步骤，扎实推进重点整治项目。"]
# Phrases in 20 or more of a city's reports are boilerplate here (the default would need 2,000 reports).
PARAMS = {**rule_params("F6", f6.PARAMS), "min_df_docs": 20}
TEMPLATE = "严格落实省委关于精文简会的十项具体要求。"


def city(texts: dict[str, str]) -> dict[str, pl.DataFrame]:
    reports = [report(rid, f"X{k % 25}", ts(k), summary=t) for k, (rid, t) in enumerate(texts.items())]
    return {"projects": frame("projects", [project(f"X{k}") for k in range(25)]),
            "stage_reports": frame("stage_reports", reports)}


def first_texts(n: int = 60) -> dict[str, str]:
    rng = np.random.default_rng(11)
    texts = {f"R{k}": _summary(rng, OPENINGS[k % 2]) for k in range(n)}
    texts["R3"] = texts["R3"].replace("围绕", TEMPLATE + "围绕")  # a template phrase, in 1 report for now
    texts["COPY"] = texts["R3"].replace("清理", "清查", 1)
    return texts


def own_words(rng: np.random.Generator, n: int) -> str:
    """Characters drawn at random from the CJK block: shingles no other report has."""
    return "".join(chr(c) for c in rng.integers(0x4E00, 0x9FA5, n))


def night(silver: dict, store: KeptStore | None, caplog) -> tuple[pl.DataFrame, tuple[int, int] | None]:
    """F6's figures, and how many sketches were kept from the night before and how many made."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="qingfeng.rules"):
        out = f6.features(RuleContext(silver, AS_OF, store), PARAMS)
    said = [m for r in caplog.records if (m := re.match(r"F6: (\d+) sketches kept .*, (\d+) made", r.getMessage()))]
    return out, (int(said[-1][1]), int(said[-1][2])) if said else None


def pairs_kept(caplog) -> tuple[int, int]:
    """How many candidate pairs the last night had, and how many of their Jaccards it kept."""
    said = [m for r in caplog.records if (m := re.match(r"F6: (\d+) candidate pairs, (\d+) of them kept", r.getMessage()))]
    return int(said[-1][1]), int(said[-1][2])


def pairs_without(store: KeptStore, changed: set[str]) -> int:
    """Tonight's candidate pairs (as kept for the next night) of which neither report is in `changed`."""
    kept = pl.read_parquet(store.file("F6", "pairs"))
    return kept.filter(~pl.col("a_report_id").is_in(list(changed)) & ~pl.col("b_report_id").is_in(list(changed))).height


def fresh(silver: dict, caplog) -> pl.DataFrame:
    return night(silver, None, caplog)[0]


def test_the_next_night_sketches_only_changed_summaries_and_equals_a_night_from_scratch(tmp_path, caplog):
    store = KeptStore(tmp_path / "kept")
    texts = first_texts()
    first, counts = night(city(texts), store, caplog)
    assert counts == (0, len(texts))
    assert_frame_equal(first, fresh(city(texts), caplog))
    assert set(first.filter(pl.col("jaccard") >= 0.5)["report_id"]) == {"COPY"}

    again, counts = night(city(texts), store, caplog)
    assert counts == (len(texts), 0)
    candidates, kept = pairs_kept(caplog)
    assert candidates > 0 and kept == candidates  # every pair's Jaccard read back
    assert_frame_equal(again, first)

    # One summary edited, one report added (with words of their own: the boilerplate stays the same).
    rng = np.random.default_rng(99)
    texts["R40"] += own_words(rng, 30)
    texts["NEW"] = own_words(rng, 60)
    second, counts = night(city(texts), store, caplog)
    assert counts == (len(texts) - 2, 2)
    assert pairs_kept(caplog)[1] == pairs_without(store, {"R40", "NEW"})  # theirs are worked out again
    assert_frame_equal(second, fresh(city(texts), caplog))
    # A copy given a few words of its own stays a candidate of its original, at another Jaccard: worked
    # out again too.
    before = second.filter(pl.col("report_id") == "COPY")["jaccard"][0]
    texts["COPY"] += own_words(rng, 6)
    edited, _ = night(city(texts), store, caplog)
    assert pairs_kept(caplog)[1] == pairs_without(store, {"COPY"})
    assert_frame_equal(edited, fresh(city(texts), caplog))
    assert 0.5 <= edited.filter(pl.col("report_id") == "COPY")["jaccard"][0] != before
    # and a third night that copies one of them into another project finds the copy
    texts["NEW2"] = texts["NEW"].replace(texts["NEW"][10], "", 1)
    third, counts = night(city(texts), store, caplog)
    assert counts == (len(texts) - 1, 1)
    assert_frame_equal(third, fresh(city(texts), caplog))
    assert set(third.filter(pl.col("jaccard") >= 0.5)["report_id"]) == {"COPY", "NEW2"}


def test_a_phrase_that_becomes_boilerplate_resketches_only_the_reports_that_have_it(tmp_path, caplog):
    store = KeptStore(tmp_path / "kept")
    texts = first_texts()
    night(city(texts), store, caplog)
    # Nineteen reports, filed tonight, open with the template: with R3 and COPY it is in 21 reports now,
    # boilerplate from tonight on. Every other shingle of the city is as frequent as the night before.
    rng = np.random.default_rng(5)
    for k in range(19):
        texts[f"T{k}"] = TEMPLATE + own_words(rng, 40)
    second, counts = night(city(texts), store, caplog)
    assert counts == (len(texts) - 21, 21)  # the 19 new reports, and R3 and COPY re-sketched
    assert pairs_kept(caplog)[1] == 0  # another boilerplate: no Jaccard of the night before holds
    assert_frame_equal(second, fresh(city(texts), caplog))
    assert second["boilerplate_shingles"][0] > first_boilerplate(first_texts(), caplog)


def splitmix64(x: int) -> int:
    """The published finalizer (Steele, Lea & Flood 2014), in plain integers."""
    m = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def first_boilerplate(texts: dict[str, str], caplog) -> int:
    return fresh(city(texts), caplog)["boilerplate_shingles"][0]


@pytest.mark.parametrize("damage", ["unreadable file", "other settings"])
def test_kept_sketches_that_cannot_be_trusted_are_made_again(tmp_path, caplog, damage):
    store = KeptStore(tmp_path / "kept")
    texts = first_texts()
    first, _ = night(city(texts), store, caplog)
    kept = store.file("F6", "source=s")
    if damage == "unreadable file":
        kept.write_bytes(b"PAR1 not parquet")
    else:
        pl.read_parquet(kept).with_columns(pl.lit("v0; an older sketch").alias("settings")).write_parquet(kept)
    again, counts = night(city(texts), store, caplog)
    assert counts == (0, len(texts))
    assert_frame_equal(again, first)
    assert night(city(texts), store, caplog)[1] == (len(texts), 0)  # and kept again


def test_the_boilerplate_sample_stays_put_as_reports_come_and_go():
    """The sample the boilerplate is estimated on is chosen by a hash of each report's key, the same on
    every machine and library version: a night's new reports displace only as many of it as enter it."""
    assert stable_key_hash(pl.Series(["chenghua"]), pl.Series(["R-0001"]))[0] == splitmix64(
        zlib.crc32(b"chenghua\x1fR-0001"))
    ids = pl.DataFrame({"source_id": ["a", "b"] * 5000, "report_id": [f"R{k}" for k in range(10_000)]})
    before = set(ids[f6._stable_sample(ids, 500)]["report_id"])
    grown = pl.concat([ids, pl.DataFrame({"source_id": ["c"] * 100, "report_id": [f"N{k}" for k in range(100)]})])
    after = set(grown[f6._stable_sample(grown, 500)]["report_id"])
    entered = {r for r in after if r.startswith("N")}
    assert 0 < len(entered) < 20 and len(before - after) == len(entered)


def test_a_next_night_reads_only_the_summaries_it_sketches(tmp_path, caplog, monkeypatch):
    """Over silver read source by source, a night reads each source's summaries once to list its reports
    (and hash them); the boilerplate's sample and the sketches read them again only where a summary
    changed, and only in its source."""
    from tests.test_silver_rules import _write_silver
    from warehouse.layout import Layout
    from warehouse.silver import CitySilver

    reads: list[str] = []
    source = CitySilver.source

    def counted(self, sid, columns=None):
        if "summary" in (columns or {}).get("stage_reports", ()):
            reads.append(sid)
        return source(self, sid, columns)

    monkeypatch.setattr(CitySilver, "source", counted)
    layout, store = Layout(tmp_path / "wh"), KeptStore(tmp_path / "kept")

    def night_over(texts: dict[str, str], kept: KeptStore | None = store) -> pl.DataFrame:
        """Half the reports in source s, half in t: F6's figures; `reads` says whose summaries were read."""
        tables = city(texts)
        for sid in ("s", "t"):
            mine = pl.col("report_id").is_in(list(texts)[sid == "t"::2])
            _write_silver(layout, sid, {"projects": tables["projects"].with_columns(source_id=pl.lit(sid)),
                                        "stage_reports": tables["stage_reports"].filter(mine)
                                        .with_columns(source_id=pl.lit(sid))})
        reads.clear()
        return night(CitySilver.load(layout, ["s", "t"], shard_rows=1, hold_rows=0), kept, caplog)[0]

    texts = first_texts()
    first = night_over(texts)
    assert sorted(reads) == ["s", "s", "s", "s", "t", "t", "t", "t"]  # list, sample, sketches, candidates
    assert_frame_equal(night_over(texts), first)
    assert sorted(reads) == ["s", "t"]  # the same sample and every sketch and pair kept: only the list
    texts[list(texts)[1]] += own_words(np.random.default_rng(3), 30)  # a summary of t, in the sample
    edited = night_over(texts)
    assert sorted(reads) == ["s", "s", "t", "t", "t"]  # the list, the sample, and t's sketches
    assert_frame_equal(edited, night_over(texts, kept=None))
