"""The canonical (silver) schema: one source of truth for table names, columns, keys and enumerations.

Every dialect is normalized onto these tables. Every silver row also carries `source_id` (ids repeat
across sources). Timestamps are timezone-aware (Asia/Shanghai, the city's business time zone); dates
are calendar dates in that zone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

TZ = "Asia/Shanghai"
TIMESTAMP = pl.Datetime("us", TZ)


@dataclass(frozen=True)
class Reference:
    """A column of this table that names a row of another table (checked by rule C3)."""

    column: str
    table: str
    required: bool  # a NULL here breaks a constraint (quarantine); a dangling value is a C3 flag


@dataclass(frozen=True)
class Table:
    name: str
    key: str
    columns: dict[str, pl.DataType]
    required: tuple[str, ...]  # NOT NULL in the contract: a row without it is quarantined
    references: tuple[Reference, ...] = ()
    change_column: str | None = "updated_at"  # drives incremental extraction and "latest version wins"
    enums: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def schema(self) -> dict[str, pl.DataType]:
        return {"source_id": pl.String(), **self.columns}


UNIT_KINDS = ("district", "department", "town", "village")
PROJECT_STATUSES = ("planning", "in_progress", "completed", "suspended", "cancelled")
STAGES = ("initiation", "implementation", "interim_result", "acceptance")
EVIDENCE_KINDS = ("photo", "sign_in_sheet", "meeting_minutes", "document", "ledger", "video", "other")
PROBLEM_ORIGINS = ("inspection", "enterprise_visit", "public_report", "self_check")
PROBLEM_STATUSES = ("open", "rectified", "transferred")

# Evidence kinds that record a process (a meeting was held, people signed in) rather than an outcome.
PROCESS_EVIDENCE = ("photo", "sign_in_sheet", "meeting_minutes")
OUTCOME_EVIDENCE = ("document", "ledger")

S = pl.String()
D = pl.Date()
F = pl.Float64()
I64 = pl.Int64()

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "units",
            key="unit_code",
            columns={"unit_code": S, "unit_name": S, "unit_kind": S, "parent_code": S},
            required=("unit_code", "unit_name", "unit_kind"),
            references=(Reference("parent_code", "units", required=False),),
            change_column=None,  # units carry no change timestamp: always pulled whole
            enums={"unit_kind": UNIT_KINDS},
        ),
        Table(
            "persons",
            key="person_id",
            columns={
                "person_id": S, "name": S, "unit_code": S, "title": S, "phone": S, "email": S,
                "id_card": S, "updated_at": TIMESTAMP,
            },
            required=("person_id", "name", "updated_at"),
            references=(Reference("unit_code", "units", required=False),),
        ),
        Table(
            "projects",
            key="project_id",
            columns={
                "project_id": S, "project_code": S, "title": S, "category": S, "unit_code": S,
                "owner_id": S, "leader_id": S, "planned_start": D, "planned_end": D, "status": S,
                "updated_at": TIMESTAMP,
            },
            required=("project_id", "title", "unit_code", "owner_id", "status", "updated_at"),
            references=(
                Reference("unit_code", "units", required=True),
                Reference("owner_id", "persons", required=True),
                Reference("leader_id", "persons", required=False),
            ),
            enums={"status": PROJECT_STATUSES},
        ),
        Table(
            "milestones",
            key="milestone_id",
            columns={
                "milestone_id": S, "project_id": S, "stage": S, "due_date": D,
                "completed_at": TIMESTAMP, "updated_at": TIMESTAMP,
            },
            required=("milestone_id", "project_id", "stage", "due_date", "updated_at"),
            references=(Reference("project_id", "projects", required=True),),
            enums={"stage": STAGES},
        ),
        Table(
            "stage_reports",
            key="report_id",
            columns={
                "report_id": S, "project_id": S, "milestone_id": S, "submitted_at": TIMESTAMP,
                "submitted_by": S, "progress_pct": F, "summary": S, "updated_at": TIMESTAMP,
            },
            required=("report_id", "project_id", "submitted_at", "updated_at"),
            references=(
                Reference("project_id", "projects", required=True),
                Reference("milestone_id", "milestones", required=False),
                Reference("submitted_by", "persons", required=False),
            ),
        ),
        Table(
            "evidence",
            key="evidence_id",
            columns={
                "evidence_id": S, "report_id": S, "file_name": S, "kind": S, "sha256": S, "phash": S,
                "pages": I64, "size_bytes": I64, "captured_at": TIMESTAMP, "uploaded_at": TIMESTAMP,
                "uploaded_by": S, "updated_at": TIMESTAMP,
            },
            required=("evidence_id", "report_id", "kind", "uploaded_at", "updated_at"),
            references=(
                Reference("report_id", "stage_reports", required=True),
                Reference("uploaded_by", "persons", required=False),
            ),
            enums={"kind": EVIDENCE_KINDS},
        ),
        Table(
            "problems",
            key="problem_id",
            columns={
                "problem_id": S, "unit_code": S, "origin": S, "category": S, "description": S,
                "found_at": D, "deadline": D, "owner_id": S, "status": S, "closed_at": D,
                "updated_at": TIMESTAMP,
            },
            required=("problem_id", "unit_code", "origin", "found_at", "status", "updated_at"),
            references=(
                Reference("unit_code", "units", required=True),
                Reference("owner_id", "persons", required=False),
            ),
            enums={"origin": PROBLEM_ORIGINS, "status": PROBLEM_STATUSES},
        ),
    )
}

# Metrics arrive inside stage_reports (a JSON object, or `名称:数值;…` in legacy); silver keeps them long.
METRICS_SCHEMA: dict[str, pl.DataType] = {
    "source_id": S, "report_id": S, "metric_name": S, "metric_value": F,
}

# Quarantine: every input row that could not enter silver, with why. `raw` is the row as pulled (JSON).
QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "source_id": S, "table": S, "record_id": S, "reason": S, "raw": S,
}

SILVER_TABLES = (*TABLES, "metrics")


def empty(table: str) -> pl.DataFrame:
    schema = METRICS_SCHEMA if table == "metrics" else TABLES[table].schema
    return pl.DataFrame(schema=schema)
