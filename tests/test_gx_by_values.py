"""Validating a suite by distinct values (`expectations.gx_runner`, `distinct=True`): GX judges one row of
each combination of the checked values, and on a next night only the combinations it has not judged."""

from __future__ import annotations

import great_expectations as gx
import polars as pl
import pytest

from expectations.gx_runner import Check, KnownVerdicts, Validator, judges_rows_alone
from warehouse.kept import KeptStore

IDS = ["source_id", "report_id"]


def figures(n: int = 600) -> pl.DataFrame:
    """`n` reports whose (threshold, items) take a handful of combinations, a null threshold among them."""
    i = pl.int_range(n, eager=True)
    return pl.DataFrame({
        "source_id": ("s" + (i % 3).cast(pl.String)),
        "report_id": ("r" + i.cast(pl.String)),
        "threshold": pl.Series([4.0, 6.5, None, 4.0, 10.0] * (n // 5), dtype=pl.Float64),
        "items": (i % 7).cast(pl.Int64),
        "unit": ("u" + (i % 11).cast(pl.String)),
    })


def checks(max_items: int = 5) -> list[Check]:
    e = gx.expectations
    return [
        Check("T1", e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="threshold", column_B="items", or_equal=True,
                                                              ignore_row_if="either_value_is_missing"), "report"),
        Check("T1", e.ExpectColumnValuesToBeBetween(column="items", max_value=max_items), "report"),
    ]


def outcome(results) -> list[tuple]:
    return [(r.success, r.element_count, r.observed["unexpected_count"],
             r.unexpected.sort(IDS).rows()) for r in results]


def test_gx_judges_one_row_a_combination_and_every_row_holding_an_unexpected_one_is_listed():
    frame = figures()
    row_by_row = Validator().run("rows", frame, IDS, checks(), keep=["unit"])
    by_values = Validator().run("values", frame, IDS, checks(), keep=["unit"], distinct=True)
    assert outcome(by_values) == outcome(row_by_row)
    assert all(not r.success and r.observed["unexpected_count"] > 0 for r in row_by_row)
    assert by_values[0].unexpected.columns == [*IDS, "unit"]  # the kept column, typed as in the frame
    assert {r.judged for r in row_by_row} == {600}
    assert {r.judged for r in by_values} == {frame.unique(subset=["threshold", "items"]).height} == {4 * 7}  # four thresholds (one null), seven counts


def test_in_batches_the_verdicts_are_those_of_the_whole_frame():
    frame = figures()
    whole = Validator().run("whole", frame, IDS, checks(), distinct=True)
    batched = Validator(batch_rows=128).run("batched", frame, IDS, checks(), distinct=True)
    assert outcome(batched) == outcome(whole)


def test_a_next_night_judges_only_the_combinations_not_seen_and_carries_the_others(tmp_path):
    known = KnownVerdicts(KeptStore(tmp_path), "T1", "verdicts_t1")
    frame = figures()
    first = Validator().run("n1", frame, IDS, checks(), distinct=True, known=known)
    assert known.store.file("T1", "verdicts_t1").exists()
    again = Validator().run("n2", frame, IDS, checks(), distinct=True, known=known)
    assert outcome(again) == outcome(first)
    assert {r.judged for r in again} == {0}

    # One report changes to a combination never seen: GX judges that one row, and its verdict is GX's.
    changed = frame.with_columns(pl.when(pl.col("report_id") == "r7").then(99).otherwise(pl.col("items"))
                                 .alias("items"))
    tonight = Validator().run("n3", changed, IDS, checks(), distinct=True, known=known)
    assert {r.judged for r in tonight} == {1}
    assert outcome(tonight) == outcome(Validator().run("rows", changed, IDS, checks()))
    assert ("s1", "r7") in tonight[1].unexpected.rows()


def test_kept_verdicts_are_used_as_kept_and_only_under_the_same_checks(tmp_path):
    """A kept verdict is reused, not judged again (here one made wrong on purpose shows through); checks
    with another threshold are another suite, whose verdicts GX makes afresh."""
    store = KeptStore(tmp_path)
    known = KnownVerdicts(store, "T1", "verdicts_t1")
    frame = figures()
    Validator().run("n1", frame, IDS, checks(), distinct=True, known=known)
    kept = store.read("T1", "verdicts_t1")
    forged = kept.with_columns(pl.when(pl.col("items") == 0).then(True).otherwise(pl.col("_unexpected_1"))
                               .alias("_unexpected_1"))
    store.write("T1", "verdicts_t1", forged)
    carried = Validator().run("n2", frame, IDS, checks(), distinct=True, known=known)
    assert carried[1].observed["unexpected_count"] == frame.filter(pl.col("items").is_in([0, 6])).height

    other = Validator().run("n3", frame, IDS, checks(max_items=4), distinct=True, known=known)
    assert {r.judged for r in other} == {4 * 7}
    assert outcome(other) == outcome(Validator().run("rows", frame, IDS, checks(max_items=4)))


def test_rows_sharing_ids_are_validated_row_by_row():
    """GX names an unexpected row by its ids: where two rows of different values share them, a verdict
    could not be told apart, and the frame is validated row by row."""
    frame = figures().with_columns(pl.lit("r0").alias("report_id"))
    by_values = Validator().run("values", frame, IDS, checks(), distinct=True)
    assert {r.judged for r in by_values} == {600}
    assert outcome(by_values) == outcome(Validator().run("rows", frame, IDS, checks()))


@pytest.mark.parametrize("expectation", [
    gx.expectations.ExpectColumnValuesToBeUnique(column="items"),  # a row's verdict depends on the others
    gx.expectations.ExpectColumnValuesToBeBetween(column="items", max_value=5, mostly=0.9),  # a share of rows
])
def test_checks_that_do_not_judge_a_row_alone_are_validated_row_by_row(expectation):
    assert not judges_rows_alone([Check("X", expectation, "report")])
    frame = figures()
    result = Validator().run("values", frame, IDS, [Check("X", expectation, "report")], distinct=True)
    assert result[0].judged == 600


def test_a_kept_file_not_as_written_is_set_aside_and_everything_judged_again(tmp_path):
    store = KeptStore(tmp_path)
    known = KnownVerdicts(store, "T1", "verdicts_t1")
    frame = figures()
    first = Validator().run("n1", frame, IDS, checks(), distinct=True, known=known)
    store.write("T1", "verdicts_t1", store.read("T1", "verdicts_t1").drop("_unexpected_1"))
    again = Validator().run("n2", frame, IDS, checks(), distinct=True, known=known)
    assert {r.judged for r in again} == {4 * 7}
    assert outcome(again) == outcome(first)
    store.file("T1", "verdicts_t1").write_bytes(b"not parquet")
    assert outcome(Validator().run("n3", frame, IDS, checks(), distinct=True, known=known)) == outcome(first)
