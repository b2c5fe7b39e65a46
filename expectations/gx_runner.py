"""Run Great Expectations suites over Polars frames and hand back the unexpected rows, by id.

GX 1.x has no Polars datasource: the features are computed in Polars, and only the columns an
expectation reads (plus the id columns) cross into pandas. Results are requested COMPLETE with the id
columns as the unexpected index, so every failing row comes back by name and becomes one flag.

The features of a table not held for the whole city come as batches (one source's at a time, from a
generator); a suite validates them as they come, and hands back with the ids whatever other columns
of the unexpected rows the flags need, since the caller no longer has the frame to join them from.

A suite may be validated by distinct values (`distinct=True`): when every expectation judges a row by
that row's values alone, rows whose checked columns hold the same values get the same verdict, so GX
is handed one row of each combination (with its real ids) and each unexpected combination stands for
every row that holds it. A rule's features are a few small numbers per report: 649,510 reports of
T1 hold 24,207 combinations of (threshold, items). With `known` (`KnownVerdicts`), the verdicts of the
combinations are kept between nights, under a fingerprint of the checks (their types and settings, the
versions of GX, Polars and pandas, the columns' types): a combination judged on an earlier night keeps
its verdict, and GX judges only the combinations not seen before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # offline networks: never phone home

import great_expectations as gx  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402

from warehouse.kept import KeptStore  # noqa: E402

logging.getLogger("great_expectations").setLevel(logging.WARNING)
log = logging.getLogger("qingfeng.gx")


@dataclass
class Check:
    """One expectation and the rule it speaks for."""

    rule_id: str
    expectation: gx.expectations.Expectation
    entity_type: str
    note: str = ""  # what a failure means, in words, carried into each flag's detail


# Expectations whose verdict on a row is a function of that row's values (the columns `_columns_read`
# names) and of the expectation's own settings: not of other rows, as uniqueness or a column's mean
# would be. Only suites made of these are validated by distinct values.
_ROW_LOCAL = (
    gx.expectations.ExpectColumnValuesToBeBetween,
    gx.expectations.ExpectColumnValuesToBeInSet,
    gx.expectations.ExpectColumnValuesToNotBeNull,
    gx.expectations.ExpectColumnPairValuesAToBeGreaterThanB,
)


def judges_rows_alone(checks: list[Check]) -> bool:
    """Each check's verdict on a row depends on that row's checked values only: a row-local expectation
    type, over every row (no `row_condition`, which reads other columns), all of them expected
    (`mostly` 1: a share of the rows would be counted over the combinations, not the rows)."""
    return all(
        type(c.expectation) in _ROW_LOCAL
        and getattr(c.expectation, "row_condition", None) is None
        and getattr(c.expectation, "mostly", 1) in (None, 1)
        for c in checks
    )


@dataclass
class CheckResult:
    check: Check
    success: bool
    element_count: int
    unexpected: pl.DataFrame  # the id columns (as strings) of every unexpected row, and its `keep` columns
    observed: dict = field(default_factory=dict)
    judged: int = 0  # the rows GX was handed (fewer than element_count when validated by distinct values)


# Rows handed to pandas and GX at a time. GX holds several times the batch in masks and index lists
# (a few hundred bytes a row for a contract suite), so a city-sized frame is validated in batches.
BATCH_ROWS = int(os.environ.get("QINGFENG_GX_BATCH_ROWS", "500000"))


class Validator:
    """One GX context for a run: a pandas data source, an asset and a checkpoint per suite, and a Data
    Docs site in `docs_dir` when one is given (`build_docs()` renders every validation of the run).

    A frame longer than `batch_rows` is validated in consecutive batches of that many rows, by the same
    checkpoint: each batch is one validation run in the Data Docs, and the results are merged."""

    SITE = "qingfeng"

    def __init__(self, docs_dir: Path | None = None, batch_rows: int | None = None):
        self.batch_rows = max(1, batch_rows or BATCH_ROWS)
        self.context = gx.get_context(mode="ephemeral")
        # A nightly job's log is no place for a progress bar per suite.
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        self.source = self.context.data_sources.add_pandas("qingfeng")
        self.docs_dir = docs_dir.resolve() if docs_dir is not None else None  # GX wants it absolute
        self._names: dict[str, int] = {}
        # Rules may run side by side (`expectations.rules.rule_flags`): a GX context is not made to add
        # suites, assets and checkpoints from two threads at once, so suites run one at a time.
        self._lock = threading.Lock()
        if docs_dir is not None:
            self.context.add_data_docs_site(
                site_name=self.SITE,
                site_config={
                    "class_name": "SiteBuilder",
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                    "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                      "base_directory": str(self.docs_dir)},
                },
            )

    def _unique(self, name: str) -> str:
        """GX refuses a second suite of one name; two rule modules may share a rule id."""
        n = self._names.get(name, 0)
        self._names[name] = n + 1
        return name if n == 0 else f"{name}_{n + 1}"

    def close(self) -> None:
        """Let go of the GX context and the validation results it keeps for the Data Docs (COMPLETE
        results: an entry per unexpected row, 164 MB at 96 × 1,000). GX keeps the context it made last
        in a module-level project manager, so dropping the Validator alone frees none of it; and a closed
        Validator holds none of it either, however long its owner keeps it."""
        from great_expectations.data_context.data_context.context_factory import project_manager
        from great_expectations.exceptions import DataContextRequiredError

        try:
            current = project_manager._project
        except DataContextRequiredError:  # no context set: nothing kept there
            current = None
        if current is not None and current is self.context:  # not one made since, by another Validator
            project_manager.set_project(None)
        self.context = self.source = None

    def build_docs(self) -> Path | None:
        if self.docs_dir is None:
            return None
        self.docs_dir.mkdir(parents=True, exist_ok=True)
        self.context.build_data_docs(site_names=[self.SITE])
        return self.docs_dir / "index.html"

    def run(self, suite_name: str, frame: pl.DataFrame | Iterable[pl.DataFrame], id_columns: list[str],
            checks: list[Check], keep: list[str] | None = None, distinct: bool = False,
            known: KnownVerdicts | None = None) -> list[CheckResult]:
        """Validate `frame` against `checks` as one suite (one checkpoint, one name in the Data Docs).

        `frame` is one frame or batches of one (any iterable, a generator included), consumed one at a
        time and re-cut into `batch_rows` chunks: the results, and the validation runs in the Data Docs,
        are those of the batches concatenated, wherever the batches were cut. `keep` names columns of
        the frame to return with each unexpected row's ids, typed as in the frame: they need not cross
        into pandas, and the caller needs no copy of the frame to look them up.

        `distinct`: GX judges one row of each combination of the checked columns' values (the first), and
        the verdict holds for every row of the batch with those values; the results are the same, listed
        for every row. Only for checks that `judges_rows_alone`; others are validated row by row.
        `known`: where the verdicts of the combinations are kept between nights (with `distinct`); GX then
        judges only the combinations it has not judged before under the same checks."""
        if not checks:
            return []
        by_values = _Combinations(checks, id_columns, known) if distinct and judges_rows_alone(checks) else None
        with self._lock:
            results = self._run(suite_name, frame, id_columns, checks, keep, by_values)
        if by_values is not None:
            by_values.save()
        return results

    def _run(self, suite_name: str, frame: pl.DataFrame | Iterable[pl.DataFrame], id_columns: list[str],
             checks: list[Check], keep: list[str] | None, by_values: _Combinations | None) -> list[CheckResult]:
        suite_name = self._unique(suite_name)
        columns = list(dict.fromkeys([*id_columns, *_columns_read(checks)]))
        kept = [c for c in dict.fromkeys(keep or []) if c not in id_columns]
        asset = self.source.add_dataframe_asset(suite_name)
        batch = asset.add_batch_definition_whole_dataframe(suite_name)
        # What its Data Docs page lists: one row of each combination (not seen before), not every row.
        suite = self.context.suites.add(gx.ExpectationSuite(name=suite_name,
                                                            notes=by_values and by_values.note))
        for check in checks:
            suite.add_expectation(check.expectation)
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=suite_name, data=batch, suite=suite)
        )
        checkpoint = self.context.checkpoints.add(
            gx.Checkpoint(
                name=suite_name,
                validation_definitions=[definition],
                actions=[],
                result_format={
                    "result_format": "COMPLETE",
                    "unexpected_index_column_names": id_columns,
                    "return_unexpected_index_query": False,
                },
            )
        )
        id_schema = {k: pl.String for k in id_columns}
        frames = [frame] if isinstance(frame, pl.DataFrame) else frame
        empty = pl.DataFrame(schema={c: pl.String for c in [*columns, *kept]})
        per_check: list[list[dict]] = [[] for _ in checks]
        kept_schema: dict[str, pl.DataType] = {}
        rows_seen = judged_rows = 0
        for chunk in _chunks(frames, self.batch_rows, empty):
            rows_seen += chunk.height
            kept_schema = kept_schema or {c: chunk.schema[c] for c in kept}
            judged = by_values.to_judge(chunk) if by_values is not None else None
            judged = chunk if judged is None else judged
            judged_rows += judged.height
            pdf = judged.select(columns).to_pandas()
            run = checkpoint.run(batch_parameters={"dataframe": pdf})
            del pdf
            result = next(iter(run.run_results.values()))
            # GX evaluates, and lists the results, grouped by column: match them to the checks by id.
            result_of = {res.expectation_config.id: res for res in result.results}
            listed = []
            for check, found in zip(checks, per_check, strict=True):
                res = result_of[check.expectation.id]
                if res.exception_info and res.exception_info.get("raised_exception"):
                    raise RuntimeError(
                        f"expectation {type(check.expectation).__name__} in {suite_name} raised: "
                        f"{res.exception_info.get('exception_message')}"
                    )
                info = res.result or {}
                ids = pl.DataFrame(
                    [{k: _plain(row.get(k)) for k in id_columns} for row in (info.get("unexpected_index_list") or [])],
                    schema=id_schema, orient="row",
                )
                if judged is not chunk:
                    listed.append(ids)
                    continue
                found.append({
                    "success": bool(res.success),
                    "elements": int(info.get("element_count") or 0),
                    "unexpected": int(info.get("unexpected_count") or 0),
                    "rows": _with_kept(ids, chunk, id_columns, kept) if kept and not ids.is_empty() else ids,
                })
            if judged is not chunk:
                for found, rows in zip(per_check, by_values.unexpected_rows(chunk, judged, listed, kept),
                                       strict=True):
                    found.append({"success": rows.is_empty(), "elements": chunk.height,
                                  "unexpected": rows.height, "rows": rows})
        no_rows = pl.DataFrame(schema={**id_schema, **{c: kept_schema.get(c, pl.String) for c in kept}})
        out = []
        for check, batches in zip(checks, per_check, strict=True):
            unexpected = pl.concat([no_rows, *(b["rows"] for b in batches if not b["rows"].is_empty())],
                                   how="vertical_relaxed")
            out.append(
                CheckResult(
                    check=check,
                    success=all(b["success"] for b in batches),
                    element_count=sum(b["elements"] for b in batches) or rows_seen,
                    unexpected=unexpected,
                    observed={"unexpected_count": sum(b["unexpected"] for b in batches)},
                    judged=judged_rows,
                )
            )
        return out


@dataclass(frozen=True)
class KnownVerdicts:
    """Where a suite validated by distinct values keeps the verdicts of its combinations between nights:
    a file of the rule's in `warehouse.kept`."""

    store: KeptStore
    rule_id: str
    name: str

    def read(self) -> pl.DataFrame | None:
        return self.store.read(self.rule_id, self.name)

    def write(self, frame: pl.DataFrame) -> None:
        self.store.write(self.rule_id, self.name, frame)

    @property
    def file(self) -> Path:
        return self.store.file(self.rule_id, self.name)


_VERDICT = "_unexpected_{}"  # a kept combination's verdict under the suite's i-th check
_FINGERPRINT = "_fingerprint"


class _Combinations:
    """One suite validated by distinct values: which rows of a batch GX judges, what its verdicts on them
    mean for the others, and the verdicts kept for the next night (`known`)."""

    def __init__(self, checks: list[Check], id_columns: list[str], known: KnownVerdicts | None):
        self.read = list(dict.fromkeys(_columns_read(checks)))
        self.id_columns = id_columns
        self.verdicts = [_VERDICT.format(i) for i in range(len(checks))]
        self.known = known
        self.checks = [{"type": c.expectation.expectation_type, "kwargs": c.expectation.configuration.kwargs}
                       for c in checks]
        self.earlier: pl.DataFrame | None = None
        self.present: pl.DataFrame | None = None  # the combinations of the batch being validated
        self.tonight: list[pl.DataFrame] = []
        self.fingerprint: str | None = None
        self.whole = False  # a batch was validated row by row: keep no verdicts from tonight
        note = "按取值组合校验：所查列（{}）取值相同的行结论相同，每种组合只校验其中一行".format("、".join(self.read))
        self.note = note + ("；此前各夜已校验过的组合沿用其结论，本次只校验新出现的组合" if known else "") + \
            "；不符合预期的组合所对应的全部行均计入标记。"

    def to_judge(self, chunk: pl.DataFrame) -> pl.DataFrame | None:
        """The rows of `chunk` GX is to judge: the first of each combination of the checked values not
        judged before. None: the whole chunk, row by row (those rows would not name their combinations,
        two of them sharing ids, which are how GX lists a row)."""
        combinations = chunk.unique(subset=self.read, keep="first", maintain_order=True)
        if combinations.select(self.id_columns).is_duplicated().any():
            self.whole = True
            return None
        if self.fingerprint is None:
            self.fingerprint = self._fingerprint(chunk.schema)
            self.earlier = self._earlier(chunk.schema) if self.known is not None else None
        self.present = combinations.select(self.read)
        if self.earlier is None:
            return combinations
        return combinations.join(self.earlier, on=self.read, how="anti", nulls_equal=True)

    def unexpected_rows(self, chunk: pl.DataFrame, judged: pl.DataFrame, listed: list[pl.DataFrame],
                        kept: list[str]) -> list[pl.DataFrame]:
        """For each check, every row of `chunk` holding a combination found unexpected: by GX tonight
        among `judged` (`listed`: the ids GX listed, as strings), or on an earlier night. Their ids as
        strings and their `kept` columns."""
        as_text = [pl.col(k).cast(pl.String) for k in self.id_columns]
        verdicts = judged.select(*as_text, *self.read)
        for ids, verdict in zip(listed, self.verdicts, strict=True):
            verdicts = verdicts.join(ids.unique().with_columns(pl.lit(True).alias(verdict)), on=self.id_columns,
                                     how="left", maintain_order="left").with_columns(pl.col(verdict).fill_null(False))
        verdicts = verdicts.select(*self.read, *self.verdicts)
        if self.earlier is not None:  # the combinations of the batch judged on an earlier night
            verdicts = pl.concat([verdicts, self.earlier.join(self.present, on=self.read, how="semi",
                                                              nulls_equal=True).select(verdicts.columns)])
        self.tonight.append(verdicts)
        return [
            chunk.join(verdicts.filter(pl.col(v)).select(self.read), on=self.read, how="semi", nulls_equal=True)
            .select(*as_text, *kept)
            for v in self.verdicts
        ]

    def save(self) -> None:
        """Keep tonight's combinations and their verdicts (only those: a combination no row holds any
        more is let go)."""
        if self.known is None or self.whole or not self.tonight:  # (no batch judged by values: none)
            return
        frame = pl.concat(self.tonight).unique(subset=self.read, keep="first")
        self.known.write(frame.with_columns(pl.lit(self.fingerprint).alias(_FINGERPRINT)))

    def _fingerprint(self, schema: pl.Schema) -> str:
        """What a kept verdict was made under: the checks (types, settings, in order), the checked
        columns' types, and the versions of GX and of what hands it the values (Polars, pandas)."""
        import pandas

        made_of = {"checks": self.checks, "columns": {c: str(schema[c]) for c in self.read},
                   "versions": [gx.__version__, pl.__version__, pandas.__version__]}
        return hashlib.sha256(json.dumps(made_of, sort_keys=True, default=str).encode()).hexdigest()

    def _earlier(self, schema: pl.Schema) -> pl.DataFrame | None:
        """The verdicts kept under the same fingerprint, in the columns they were written with; None for
        anything else (no file, another fingerprint, a file not as written), and GX judges all again."""
        earlier = self.known.read()
        if earlier is None or earlier.is_empty() or _FINGERPRINT not in earlier.columns \
                or earlier[_FINGERPRINT][0] != self.fingerprint:
            return None
        if sorted(earlier.columns) != sorted([*self.read, *self.verdicts, _FINGERPRINT]) \
                or any(earlier.schema[v] != pl.Boolean for v in self.verdicts) \
                or any(earlier.schema[c] != schema[c] for c in self.read):
            log.warning("kept GX verdicts %s are not as written: every combination is judged again",
                        self.known.file)
            return None
        return earlier.drop(_FINGERPRINT)


def _with_kept(ids: pl.DataFrame, chunk: pl.DataFrame, id_columns: list[str], kept: list[str]) -> pl.DataFrame:
    """`ids` (as GX names them: strings) with the `kept` columns of those rows of `chunk`."""
    rows = (
        chunk.select(*(pl.col(k).cast(pl.String) for k in id_columns), *kept)
        .join(ids.unique(), on=id_columns, how="semi")
        .unique(subset=id_columns, keep="first", maintain_order=True)
    )
    return ids.join(rows, on=id_columns, how="left", maintain_order="left")


def _chunks(frames: Iterable[pl.DataFrame], rows: int, empty: pl.DataFrame) -> Iterator[pl.DataFrame]:
    """`frames` as consecutive chunks of `rows` rows (the last one shorter), holding no more than one
    chunk and one incoming frame. With no row at all, one empty chunk: an empty table is still
    validated, once, so that its suite has a result and a run in the Data Docs."""
    pending: list[pl.DataFrame] = []
    held = 0
    last_empty = empty
    any_chunk = False
    for frame in frames:
        if frame.is_empty():
            last_empty = frame
            continue
        pending.append(frame)
        held += frame.height
        if held < rows:
            continue
        joined = pl.concat(pending, how="vertical_relaxed", rechunk=False) if len(pending) > 1 else pending[0]
        whole = held - held % rows
        for offset in range(0, whole, rows):
            any_chunk = True
            yield joined.slice(offset, rows)
        rest = joined.slice(whole)
        pending, held = ([rest], rest.height) if rest.height else ([], 0)
    if pending:
        yield pl.concat(pending, how="vertical_relaxed", rechunk=False) if len(pending) > 1 else pending[0]
    elif not any_chunk:
        yield last_empty


def _plain(value):
    return None if value is None else str(value)


def _columns_read(checks: list[Check]) -> list[str]:
    cols: list[str] = []
    for c in checks:
        for key in ("column", "column_A", "column_B"):
            if value := getattr(c.expectation, key, None):
                cols.append(value)
        cols.extend(getattr(c.expectation, "column_list", None) or [])
    return cols
