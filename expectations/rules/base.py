"""What every rule of the `traces` and `fabrication` families is made of, and how flags come out.

A rule is one module under `expectations/rules/` (`t1_evidence_count.py`, …) exposing:

- `RULE_ID` (catalog id), `ENTITY_TYPE` (what a flag is raised on), `ID_COLUMN` (the feature column
  naming that entity);
- `PARAMS: dict[str, Param]`: its thresholds, each with the reason for its value;
- `features(ctx, params) -> pl.DataFrame`: pure, vectorized Polars over silver — one row per entity judged,
  with `source_id`, `ID_COLUMN` and the figures the rule judges (counts, fences, distances …);
- `checks(params) -> list[Check]`: the Great Expectations expectations over those feature columns
  (built-in ones where they fit, a custom expectation class where the rule needs one);
- `detail(params) -> pl.Expr`: a String (JSON) expression over the feature columns, evaluated on the
  unexpected rows only — the figures a person needs to judge the flag without opening the code.
- optionally `LONG_RUNNING = True`: the rule takes several times as long as most (it reads every
  summary or every evidence row's content hashes), so it is started first when rules run side by side.
- optionally `SHARES`: the names of the frames it reads through `RuleContext.shared` (see `SharedFrames`),
  so that a night builds each once for all the rules that read it.

Thresholds are the module's `PARAMS` (value and reason side by side); one settings file may override
them (`expectations/settings.py`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import date
from types import ModuleType
from typing import Any

import great_expectations as gx
import polars as pl

from expectations.catalog import empty_flags, flag_frame
from expectations.gx_runner import Check, KnownVerdicts, Validator
from warehouse.kept import KeptStore


@dataclass(frozen=True)
class RuleContext:
    # canonical tables, all sources, references resolved: a plain dict (every table held) or a
    # `warehouse.silver.CitySilver` (evidence read source by source, through `by_source`)
    silver: Mapping[str, pl.DataFrame]
    as_of: date
    # where a rule keeps per-entity results between nights (warehouse.kept); None: every night from scratch
    kept: KeptStore | None = None
    # the frames several of tonight's rules read alike (`SharedFrames`); None: each rule builds its own
    frames: SharedFrames | None = None

    def shared(self, name: str, build: Callable[[RuleContext], pl.DataFrame]) -> pl.DataFrame:
        """`build(self)`, built once a night for every rule that declares `name` in its `SHARES`."""
        if self.frames is None:
            return build(self)
        return self.frames.get(name, lambda: build(self))

    def table(self, name: str) -> pl.DataFrame:
        """A held table (every source). The evidence of a `CitySilver` is not held: `by_source`."""
        from transforms.schema import empty

        frame = self.silver.get(name)
        return empty(name) if frame is None else frame

    def by_source(self, fn: Callable[[RuleContext], pl.DataFrame],
                  columns: dict[str, list[str]] | None = None,
                  sources: Collection[str] | None = None) -> pl.DataFrame:
        """`fn` over a context of a shard of sources at a time (all their tables, evidence included), the
        results concatenated: how a rule reads evidence. `fn` must reduce within a source (so it is also
        right over the whole city at once, which is what a plain-dict context does). `columns`: the
        columns of a sharded table `fn` reads (all by default), or those of a held table that the city
        does not hold (report summaries), read for the shard. `sources`: only these need reading (`fn`
        must still ignore the rows of others, which a plain-dict context passes it)."""
        from warehouse.silver import by_source

        return by_source(self.silver, lambda one: fn(RuleContext(one, self.as_of, self.kept)), columns, sources)


class SharedFrames:
    """Frames that several rules read alike from the same silver, built once a night.

    T1, T2 and T3 each judge every report by its evidence figures; built for each, those figures cost about
    a second apiece at 96 × 1,000 (every evidence row read and grouped three times). `users` counts, for
    each frame, the rules of tonight that read it (their `SHARES`): the first to ask builds it, while a rule
    asking at the same time waits rather than build it again, and the last lets go of it, so that it is not
    held through the rules after them. A name no rule of tonight declares is built for its caller alone."""

    def __init__(self, users: Mapping[str, int]):
        self._users = {name: n for name, n in users.items() if n > 0}
        self._locks = {name: threading.Lock() for name in self._users}
        self._frames: dict[str, pl.DataFrame] = {}

    def get(self, name: str, build: Callable[[], pl.DataFrame]) -> pl.DataFrame:
        lock = self._locks.get(name)
        if lock is None:
            return build()
        with lock:
            frame = self._frames.pop(name, None)
            if frame is None:
                frame = build()
            self._users[name] -= 1
            if self._users[name] > 0:
                self._frames[name] = frame
            return frame

    @property
    def held(self) -> list[str]:
        return sorted(self._frames)


REPORTS_WITH_EVIDENCE_FIGURES = "reports_with_evidence_figures"


def reports_with_evidence_figures(ctx: RuleContext) -> pl.DataFrame:
    """Every report with its stage and its evidence figures (`transforms.features_traces.
    reports_with_evidence`), built source by source: evidence is not held, and the joins that give a
    report its stage copy wide frames, a shard at a time rather than millions of reports at once. Shared
    by the rules that declare `REPORTS_WITH_EVIDENCE_FIGURES` (`SharedFrames`)."""
    return ctx.shared(REPORTS_WITH_EVIDENCE_FIGURES, _reports_with_evidence_figures)


def _reports_with_evidence_figures(ctx: RuleContext) -> pl.DataFrame:
    from transforms.features_traces import (
        EVIDENCE_PER_REPORT_COLUMNS,
        evidence_per_report,
        reports_with_evidence,
    )

    return ctx.by_source(
        lambda one: reports_with_evidence(one.table("stage_reports"), one.table("milestones"),
                                          one.table("projects"), evidence_per_report(one.table("evidence")))
        .drop("submitted_at", "due_date"),  # no trace rule reads them, and there is a row per report
        columns={"evidence": EVIDENCE_PER_REPORT_COLUMNS},
    )


def within_threshold(rule_id: str, entity_type: str, value_column: str, note: str) -> Check:
    """The usual fence check: `value_column` must not exceed the row's own `threshold` (a NULL threshold
    means no verdict, and GX skips the row)."""
    return Check(
        rule_id,
        gx.expectations.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="threshold", column_B=value_column, or_equal=True, ignore_row_if="either_value_is_missing",
        ),
        entity_type,
        note,
    )


def run_rule(module: ModuleType, ctx: RuleContext, validator: Validator, params: dict[str, Any]) -> pl.DataFrame:
    """Features in Polars → expectations in GX → one flag per unexpected row, with its figures."""
    features = module.features(ctx, params)
    if features.is_empty():
        return empty_flags()
    id_columns = ["source_id", module.ID_COLUMN]
    # A rule's checks read a few small figures a row: GX judges each combination of them once, and on a
    # next night only the combinations it has not judged on an earlier one.
    known = None if ctx.kept is None else KnownVerdicts(ctx.kept, module.RULE_ID,
                                                        "verdicts_" + module.__name__.rsplit(".", 1)[-1])
    results = validator.run(f"rule_{module.RULE_ID}", features, id_columns, module.checks(params),
                            distinct=True, known=known)
    hits = [r.unexpected for r in results if not r.success and not r.unexpected.is_empty()]
    if not hits:
        return empty_flags()
    unexpected = pl.concat(hits).unique()
    # Lazily: a feature frame put together from shards has columns chunked unlike each other, and an
    # eager join first copies the whole frame into single chunks (+0.8 GiB for T1 at 3.2 M reports).
    rows = (
        features.lazy().join(unexpected.lazy(), on=id_columns, how="semi").collect()
        .unique(subset=id_columns, keep="first")
    )
    return flag_frame(
        module.RULE_ID, pl.col("source_id"), module.ENTITY_TYPE, pl.col(module.ID_COLUMN),
        module.detail(params), rows,
    )
