"""Detection quality of every rule against the simulator's ground truth.

Simulates cities with several seeds, runs the pipeline's stages on each (the same functions the
nightly flow calls, without the Prefect server), and compares the flags with `labels.csv`:
true and false positives, false negatives, precision and recall per rule.

    .venv/bin/python bench/detection.py --seeds 1 2 3 4 5 --sources 8 --projects-per-source 60
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from expectations.catalog import RULES  # noqa: E402
from flows import steps  # noqa: E402
from flows.registry import load_registry  # noqa: E402
from flows.state import StateStore  # noqa: E402
from simulator import simulate_city  # noqa: E402
from warehouse.layout import Layout  # noqa: E402

KEY = ["source_id", "rule_id", "entity_type", "entity_id"]


def flags_for_city(city: Path, warehouse: Path, as_of: date) -> pl.DataFrame:
    registry = load_registry(city / "sources.toml")
    layout = Layout(warehouse)
    warehouse.mkdir(parents=True, exist_ok=True)
    state = StateStore(layout.state_url)
    run_id = steps.new_run_id(as_of)
    outcomes = {
        s.id: steps.process_source(layout, state, s, as_of, run_id, steps.RunSettings()) for s in registry.sources
    }
    _, flags = steps.evaluate(layout, registry, outcomes, as_of)
    state.dispose()
    return flags


def score(flags: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    found = flags.select(KEY).unique()
    truth = labels.select(KEY).unique()
    tp = found.join(truth, on=KEY, how="semi").group_by("rule_id").len("tp")
    fp = found.join(truth, on=KEY, how="anti").group_by("rule_id").len("fp")
    fn = truth.join(found, on=KEY, how="anti").group_by("rule_id").len("fn")
    rules = pl.DataFrame({"rule_id": list(RULES)})
    return (
        rules.join(tp, on="rule_id", how="left").join(fp, on="rule_id", how="left").join(fn, on="rule_id", how="left")
        .fill_null(0)
        .with_columns(pl.col("tp", "fp", "fn").cast(pl.Int64))
    )


def with_rates(counts: pl.DataFrame) -> pl.DataFrame:
    return counts.with_columns(
        precision=pl.when(pl.col("tp") + pl.col("fp") > 0).then(pl.col("tp") / (pl.col("tp") + pl.col("fp"))),
        recall=pl.when(pl.col("tp") + pl.col("fn") > 0).then(pl.col("tp") / (pl.col("tp") + pl.col("fn"))),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--sources", type=int, default=8)
    ap.add_argument("--projects-per-source", type=int, default=60)
    ap.add_argument("--as-of", default="2026-11-29")
    ap.add_argument("--show-errors", type=int, default=0, help="print up to N false positives/negatives per rule")
    args = ap.parse_args()
    as_of = date.fromisoformat(args.as_of)
    totals = []
    errors = []
    with tempfile.TemporaryDirectory(prefix="qingfeng-detection-") as tmp:
        for seed in args.seeds:
            t0 = time.perf_counter()
            city = Path(tmp) / f"city{seed}"
            simulate_city(city, sources=args.sources, projects_per_source=args.projects_per_source, seed=seed,
                          as_of=as_of)
            flags = flags_for_city(city, Path(tmp) / f"wh{seed}", as_of)
            labels = pl.read_csv(city / "labels.csv", infer_schema=False)
            counts = score(flags, labels)
            totals.append(counts)
            print(f"seed {seed}: {flags.height} flags, {labels.height} labels, {time.perf_counter() - t0:.1f} s")
            if args.show_errors:
                found, truth = flags.select(KEY).unique(), labels.select(KEY).unique()
                errors.append(found.join(truth, on=KEY, how="anti").with_columns(kind=pl.lit("FP"), seed=seed))
                errors.append(truth.join(found, on=KEY, how="anti").with_columns(kind=pl.lit("FN"), seed=seed))
    total = with_rates(pl.concat(totals).group_by("rule_id").agg(pl.col("tp", "fp", "fn").sum()))
    order = {r: i for i, r in enumerate(RULES)}
    total = total.sort(pl.col("rule_id").replace_strict(order))
    print(f"\nseeds {args.seeds}, {args.sources} sources x {args.projects_per_source} projects each, as of {as_of}")
    print(f"{'rule':<5}{'TP':>7}{'FP':>7}{'FN':>7}{'precision':>11}{'recall':>9}")
    for r in total.iter_rows(named=True):
        p = "—" if r["precision"] is None else f"{r['precision']:.3f}"
        rc = "—" if r["recall"] is None else f"{r['recall']:.3f}"
        print(f"{r['rule_id']:<5}{r['tp']:>7}{r['fp']:>7}{r['fn']:>7}{p:>11}{rc:>9}")
    if errors:
        err = pl.concat(errors)
        for rule in err["rule_id"].unique().sort():
            print(f"\n{rule}:")
            print(err.filter(pl.col("rule_id") == rule).head(args.show_errors))


if __name__ == "__main__":
    main()
