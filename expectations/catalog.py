"""The rule catalog of marts-and-rules.md: one source of truth for rule ids, families and the flag row.

A rule hit becomes one `dq_flags` row; `detail` is JSON text carrying the figures that fired it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import polars as pl


@dataclass(frozen=True)
class Rule:
    rule_id: str
    family: str  # traces | fabrication | deadline | contract
    entity_types: tuple[str, ...]
    severity: str  # info | warning | critical (the usual one; a flag may raise it)
    title_zh: str


RULES: dict[str, Rule] = {
    r.rule_id: r
    for r in (
        Rule("T1", "traces", ("report",), "warning", "佐证材料数量远超同阶段常态"),
        Rule("T2", "traces", ("report",), "warning", "佐证材料页数远超同阶段常态（材料堆砌）"),
        Rule("T3", "traces", ("report",), "warning", "过程留痕占比过高且无成果材料"),
        Rule("T4", "traces", ("report",), "warning", "同一汇报内重复或近似照片"),
        Rule("T5", "traces", ("report",), "warning", "临近节点集中突击上传材料（补材料）"),
        Rule("T6", "traces", ("milestone",), "info", "同一节点汇报次数远超常态"),
        Rule("F1", "fabrication", ("evidence",), "critical", "同一文件或近似照片跨项目重复使用"),
        Rule("F2", "fabrication", ("evidence", "report"), "critical", "时间戳不可能"),
        Rule("F3", "fabrication", ("report",), "critical", "进度倒退或无阶段成果直接100%"),
        Rule("F4", "fabrication", ("report",), "warning", "汇报重复上一次内容（进度与指标不变）"),
        Rule("F5", "fabrication", ("person", "unit"), "warning", "上报数字未通过数字规律检验"),
        Rule("F6", "fabrication", ("report",), "critical", "汇报内容与其他项目高度雷同"),
        Rule("F7", "fabrication", ("milestone",), "critical", "节点完成或进度100%但无成果佐证"),
        Rule("D1", "deadline", ("milestone",), "info", "节点7日内到期未完成"),
        Rule("D2", "deadline", ("milestone",), "critical", "节点逾期未完成"),
        Rule("D3", "deadline", ("problem",), "critical", "问题整改逾期未销号"),
        Rule("C1", "contract", ("source",), "critical", "数据源缺表、缺列或无法读取"),
        Rule("C2", "contract", ("project", "milestone", "report", "evidence", "problem", "person", "unit", "source"),
             "warning", "数据行无法解析或违反约束，已隔离"),
        Rule("C3", "contract", ("project", "milestone", "report", "evidence", "problem", "person", "unit"),
             "warning", "引用的记录不存在"),
        Rule("C4", "contract", ("source",), "warning", "数据源数据陈旧或交付延迟"),
    )
}

FAMILIES = ("traces", "fabrication", "deadline", "contract")
SEVERITIES = ("info", "warning", "critical")
ENTITY_TYPES = ("project", "milestone", "report", "evidence", "problem", "person", "unit", "source")

# The entity type named by a row of each canonical table.
ENTITY_OF_TABLE: dict[str, str] = {
    "units": "unit",
    "persons": "person",
    "projects": "project",
    "milestones": "milestone",
    "stage_reports": "report",
    "evidence": "evidence",
    "problems": "problem",
    "metrics": "report",
}

FLAG_SCHEMA: dict[str, pl.DataType] = {
    "source_id": pl.String(),
    "rule_id": pl.String(),
    "family": pl.String(),
    "entity_type": pl.String(),
    "entity_id": pl.String(),
    "severity": pl.String(),
    "detail": pl.String(),
}


def detail_json(figures: dict[str, Any]) -> str:
    """The `detail` column: stable, readable JSON (Chinese kept as is, keys sorted)."""
    return json.dumps(figures, ensure_ascii=False, sort_keys=True, default=str)


def flag_frame(
    rule_id: str,
    source_id: pl.Expr | str,
    entity_type: str,
    entity_id: pl.Expr,
    detail: pl.Expr,
    frame: pl.DataFrame,
    severity: str | None = None,
) -> pl.DataFrame:
    """Build flag rows for `rule_id` from `frame`, one per row, with `detail` a String expression."""
    rule = RULES[rule_id]
    if entity_type not in rule.entity_types:
        raise ValueError(f"rule {rule_id} is not raised on {entity_type!r} (only {rule.entity_types})")
    src = pl.lit(source_id) if isinstance(source_id, str) else source_id
    return frame.select(
        src.cast(pl.String).alias("source_id"),
        pl.lit(rule_id).alias("rule_id"),
        pl.lit(rule.family).alias("family"),
        pl.lit(entity_type).alias("entity_type"),
        entity_id.cast(pl.String).alias("entity_id"),
        pl.lit(severity or rule.severity).alias("severity"),
        detail.cast(pl.String).alias("detail"),
    )


def empty_flags() -> pl.DataFrame:
    return pl.DataFrame(schema=FLAG_SCHEMA)
