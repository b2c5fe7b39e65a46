"""The contract suite over the city's silver as the pipeline passes it (`CitySilver`: evidence read source by
source, its features fed to GX as batches) flags exactly what it flags over every table held at once."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from expectations.contract import contract_suite_flags, reference_features, silver_checks
from expectations.gx_runner import Validator
from tests.test_marts_by_source import write_silver
from tests.test_silver_rules import frame, silver, ts
from transforms.references import resolve_references
from warehouse.layout import Layout
from warehouse.silver import CitySilver

ORDER = ["rule_id", "source_id", "entity_type", "entity_id", "detail"]


def city() -> dict[str, pl.DataFrame]:
    """Two sources sharing ids, each with its own dangling references and broken constraints."""
    one = silver()
    two = {t: df.with_columns(pl.lit("t").alias("source_id")) for t, df in one.items()}
    tables = {t: pl.concat([one[t], two[t]]) for t in one}
    report = {"project_id": "X1", "submitted_at": ts(2026, 11, 2), "updated_at": ts(2026, 11, 2)}
    tables["stage_reports"] = frame("stage_reports", [
        {"source_id": "s", "report_id": "R1", **report},
        {"source_id": "s", "report_id": "R2", **report, "progress_pct": 140.0},
        {"source_id": "t", "report_id": "R1", **report},
    ])
    upload = {"kind": "photo", "pages": 1, "uploaded_at": ts(2026, 11, 3), "updated_at": ts(2026, 11, 3)}
    tables["evidence"] = frame("evidence", [
        {"source_id": "s", "evidence_id": "E1", "report_id": "R1", **upload},
        {"source_id": "s", "evidence_id": "E2", "report_id": "r2", **upload},  # resolves by case
        {"source_id": "s", "evidence_id": "E3", "report_id": "GHOST", **upload},
        {"source_id": "s", "evidence_id": "E4", "report_id": "R1", **upload, "kind": "selfie"},
        {"source_id": "s", "evidence_id": "E5", "report_id": "R1", **upload, "pages": -2},
        {"source_id": "t", "evidence_id": "E1", "report_id": "R2", **upload},  # R2 is source s's only
        {"source_id": "t", "evidence_id": "E2", "report_id": "R1", **upload, "uploaded_by": "P9"},
        {"source_id": "t", "evidence_id": "E3", "report_id": "R1", **upload},
    ])
    return resolve_references(tables)


@pytest.fixture
def city_silver(tmp_path: Path) -> CitySilver:
    layout = Layout(tmp_path)
    return CitySilver.load(layout, write_silver(layout, city()), shard_rows=1, hold_rows=0)


def evidence_features() -> pl.DataFrame:
    return reference_features(city(), "evidence")


def by_source(features: pl.DataFrame):
    for sid in ("s", "nobody", "t"):
        yield features.filter(pl.col("source_id") == sid)


def summary(results) -> list[tuple]:
    return [(r.check.rule_id, r.success, r.element_count, r.observed["unexpected_count"],
             sorted(r.unexpected.rows())) for r in results]


@pytest.mark.parametrize("batch_rows", [1, 3, 100])
def test_a_generator_of_batches_validates_as_one_frame(batch_rows):
    features = evidence_features()
    ids = ["source_id", "evidence_id"]
    whole = Validator().run("whole", features, ids, silver_checks("evidence"))
    batched = Validator(batch_rows=batch_rows).run("batched", by_source(features), ids, silver_checks("evidence"))
    assert summary(batched) == summary(whole)
    assert {r.element_count for r in whole} == {8}
    failing = {tuple(row) for r in whole for row in r.unexpected.rows()}
    assert failing == {("s", "E3"), ("s", "E4"), ("s", "E5"), ("t", "E1"), ("t", "E2")}


def test_keep_columns_come_back_with_the_unexpected_rows_typed_as_in_the_frame():
    results = Validator(batch_rows=2).run("kept", by_source(evidence_features()), ["source_id", "evidence_id"],
                                          silver_checks("evidence"), keep=["report_id", "pages", "evidence_id"])
    for res in results:
        assert res.unexpected.schema == pl.Schema({"source_id": pl.String, "evidence_id": pl.String,
                                                   "report_id": pl.String, "pages": pl.Int64})
    by_column = {r.check.expectation.column: r.unexpected for r in results}
    assert by_column["report_id__exists"].rows() == [("s", "E3", "GHOST", 1), ("t", "E1", "R2", 1)]
    assert by_column["pages"].rows() == [("s", "E5", "R1", -2)]


def test_an_empty_generator_is_validated_once_with_no_rows():
    results = Validator().run("empty", iter(()), ["source_id", "evidence_id"], silver_checks("evidence"),
                              keep=["report_id"])
    assert all(r.success and r.element_count == 0 and r.unexpected.is_empty() for r in results)
    assert results[0].unexpected.columns == ["source_id", "evidence_id", "report_id"]


@pytest.mark.parametrize("batch_rows", [None, 2])
def test_contract_suite_over_city_silver_equals_over_held_silver(city_silver, batch_rows):
    held = contract_suite_flags(Validator(batch_rows=batch_rows), city()).sort(ORDER)
    by_source_flags = contract_suite_flags(Validator(batch_rows=batch_rows), city_silver).sort(ORDER)
    assert by_source_flags.equals(held)
    evidence = held.filter(pl.col("entity_type") == "evidence")
    got = {(r["rule_id"], r["source_id"], r["entity_id"], json.loads(r["detail"])["column"],
            json.loads(r["detail"])["value"]) for r in evidence.iter_rows(named=True)}
    assert got == {("C3", "s", "E3", "report_id", "GHOST"), ("C3", "t", "E1", "report_id", "R2"),
                   ("C3", "t", "E2", "uploaded_by", "P9"), ("C2", "s", "E4", "kind", "selfie"),
                   ("C2", "s", "E5", "pages", "-2")}
    e4 = json.loads(evidence.filter(pl.col("entity_id") == "E4")["detail"].item())
    assert e4["check"] == "ExpectColumnValuesToBeInSet"  # not the not-null check GX evaluates next to it
    e3 = json.loads(evidence.filter(pl.col("entity_id") == "E3")["detail"].item())
    assert e3["unexpected_in_table"] == 2  # GHOST in s and R2 in t


def test_a_city_without_evidence_runs_no_evidence_suite(tmp_path):
    tables = city()
    tables.pop("evidence")
    layout = Layout(tmp_path)
    validator = Validator()
    flags = contract_suite_flags(validator, CitySilver.load(layout, write_silver(layout, tables), shard_rows=1, hold_rows=0))
    assert flags.filter(pl.col("entity_type") == "evidence").is_empty()
    assert "contract_evidence" not in {s.name for s in validator.context.suites.all()}


def test_a_closed_validator_lets_go_of_its_results_but_not_of_a_newer_one():
    """GX keeps the context it made last in a module-level project manager, with every validation result
    of the night in it; `close` lets go of it (the night's memory), even while the closed Validator is
    still held, and leaves a newer Validator's alone."""
    import gc
    import weakref

    older = Validator()
    newer = Validator()
    newer.run("newer", evidence_features(), ["source_id", "evidence_id"], silver_checks("evidence"))
    older.close()  # not the context GX holds now: the newer one goes on working
    again = newer.run("again", evidence_features(), ["source_id", "evidence_id"], silver_checks("evidence"))
    assert {tuple(row) for r in again for row in r.unexpected.rows()} == {
        ("s", "E3"), ("s", "E4"), ("s", "E5"), ("t", "E1"), ("t", "E2")}
    context = weakref.ref(newer.context)
    newer.close()
    del again  # (a result's expectations belong to their suite, which knows its context)
    gc.collect()
    assert context() is None and newer.context is None
