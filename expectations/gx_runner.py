"""Run Great Expectations suites over Polars frames and hand back the unexpected rows, by id.

GX 1.x has no Polars datasource: the features are computed in Polars, and only the columns an
expectation reads (plus the id columns) cross into pandas. Results are requested COMPLETE with the id
columns as the unexpected index, so every failing row comes back by name and becomes one flag.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # offline networks: never phone home

import great_expectations as gx  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402

logging.getLogger("great_expectations").setLevel(logging.WARNING)


@dataclass
class Check:
    """One expectation and the rule it speaks for."""

    rule_id: str
    expectation: gx.expectations.Expectation
    entity_type: str
    note: str = ""  # what a failure means, in words, carried into each flag's detail


@dataclass
class CheckResult:
    check: Check
    success: bool
    element_count: int
    unexpected: pl.DataFrame  # the id columns of every unexpected row
    observed: dict = field(default_factory=dict)


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

    def build_docs(self) -> Path | None:
        if self.docs_dir is None:
            return None
        self.docs_dir.mkdir(parents=True, exist_ok=True)
        self.context.build_data_docs(site_names=[self.SITE])
        return self.docs_dir / "index.html"

    def run(self, suite_name: str, frame: pl.DataFrame, id_columns: list[str], checks: list[Check]) -> list[CheckResult]:
        if not checks:
            return []
        suite_name = self._unique(suite_name)
        columns = list(dict.fromkeys([*id_columns, *_columns_read(checks)]))
        asset = self.source.add_dataframe_asset(suite_name)
        batch = asset.add_batch_definition_whole_dataframe(suite_name)
        suite = self.context.suites.add(gx.ExpectationSuite(name=suite_name))
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
        per_check: list[list[dict]] = [[] for _ in checks]
        for offset in range(0, max(frame.height, 1), self.batch_rows):
            pdf = frame.slice(offset, self.batch_rows).select(columns).to_pandas()
            run = checkpoint.run(batch_parameters={"dataframe": pdf})
            del pdf
            result = next(iter(run.run_results.values()))
            for check, res, found in zip(checks, result.results, per_check, strict=True):
                if res.exception_info and res.exception_info.get("raised_exception"):
                    raise RuntimeError(
                        f"expectation {type(check.expectation).__name__} in {suite_name} raised: "
                        f"{res.exception_info.get('exception_message')}"
                    )
                info = res.result or {}
                found.append({
                    "success": bool(res.success),
                    "elements": int(info.get("element_count") or 0),
                    "unexpected": int(info.get("unexpected_count") or 0),
                    "ids": [{k: _plain(row.get(k)) for k in id_columns}
                            for row in (info.get("unexpected_index_list") or [])],
                })
        out = []
        for check, batches in zip(checks, per_check, strict=True):
            unexpected = pl.DataFrame(
                [row for b in batches for row in b["ids"]], schema={k: pl.String for k in id_columns}, orient="row",
            )
            elements = sum(b["elements"] for b in batches) or frame.height
            count = sum(b["unexpected"] for b in batches)
            out.append(
                CheckResult(
                    check=check,
                    success=all(b["success"] for b in batches),
                    element_count=elements,
                    unexpected=unexpected,
                    observed={"unexpected_count": count},
                )
            )
        return out


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
