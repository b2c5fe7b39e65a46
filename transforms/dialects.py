"""The three source dialects of the district-systems contract, mapped onto the canonical tables.

One source of truth: extraction reads the native table and column names from here, and
normalization renames with the same maps.
"""

from __future__ import annotations

from dataclasses import dataclass

DIALECTS = ("platform", "legacy", "filedrop")


@dataclass(frozen=True)
class NativeTable:
    canonical: str  # canonical table name (transforms.schema.TABLES)
    native: str  # table name in the source (file name for filedrop)
    columns: dict[str, str]  # native column -> canonical column, in the contract's order
    change_column: str | None  # native column that drives incremental extraction

    @property
    def reverse(self) -> dict[str, str]:
        return {v: k for k, v in self.columns.items()}


def _same(*names: str) -> dict[str, str]:
    return {n: n for n in names}


PLATFORM: dict[str, NativeTable] = {
    t.canonical: t
    for t in (
        NativeTable("units", "units", _same("unit_code", "unit_name", "unit_kind", "parent_code"), None),
        NativeTable(
            "persons", "persons",
            _same("person_id", "name", "unit_code", "title", "phone", "email", "id_card", "updated_at"),
            "updated_at",
        ),
        NativeTable(
            "projects", "projects",
            _same("project_id", "project_code", "title", "category", "unit_code", "owner_id", "leader_id",
                  "planned_start", "planned_end", "status", "updated_at"),
            "updated_at",
        ),
        NativeTable(
            "milestones", "milestones",
            _same("milestone_id", "project_id", "stage", "due_date", "completed_at", "updated_at"),
            "updated_at",
        ),
        NativeTable(
            "stage_reports", "stage_reports",
            _same("report_id", "project_id", "milestone_id", "submitted_at", "submitted_by", "progress_pct",
                  "summary", "metrics", "updated_at"),
            "updated_at",
        ),
        NativeTable(
            "evidence", "evidence",
            _same("evidence_id", "report_id", "file_name", "kind", "sha256", "phash", "pages", "size_bytes",
                  "captured_at", "uploaded_at", "uploaded_by", "updated_at"),
            "updated_at",
        ),
        NativeTable(
            "problems", "problems",
            _same("problem_id", "unit_code", "origin", "category", "description", "found_at", "deadline",
                  "owner_id", "status", "closed_at", "updated_at"),
            "updated_at",
        ),
    )
}

LEGACY: dict[str, NativeTable] = {
    t.canonical: t
    for t in (
        NativeTable(
            "units", "dw",
            {"dwdm": "unit_code", "dwmc": "unit_name", "dwlx": "unit_kind", "sjdw": "parent_code"}, None,
        ),
        NativeTable(
            "persons", "ry",
            {"rybh": "person_id", "xm": "name", "dwdm": "unit_code", "zw": "title", "sjhm": "phone",
             "yx": "email", "sfzh": "id_card", "gxsj": "updated_at"},
            "gxsj",
        ),
        NativeTable(
            "projects", "xm",
            {"xmbh": "project_id", "xmdm": "project_code", "xmmc": "title", "lb": "category",
             "dwdm": "unit_code", "zrr": "owner_id", "zrld": "leader_id", "jhks": "planned_start",
             "jhjs": "planned_end", "zt": "status", "gxsj": "updated_at"},
            "gxsj",
        ),
        NativeTable(
            "milestones", "jd",
            {"jdbh": "milestone_id", "xmbh": "project_id", "jdlx": "stage", "jhwc": "due_date",
             "sjwc": "completed_at", "gxsj": "updated_at"},
            "gxsj",
        ),
        NativeTable(
            "stage_reports", "hb",
            {"hbbh": "report_id", "xmbh": "project_id", "jdbh": "milestone_id", "tbsj": "submitted_at",
             "tbr": "submitted_by", "jd": "progress_pct", "nr": "summary", "zb": "metrics",
             "gxsj": "updated_at"},
            "gxsj",
        ),
        NativeTable(
            "evidence", "zzcl",
            {"clbh": "evidence_id", "hbbh": "report_id", "wjm": "file_name", "lx": "kind", "hash": "sha256",
             "phash": "phash", "ys": "pages", "dx": "size_bytes", "pssj": "captured_at",
             "scsj": "uploaded_at", "scr": "uploaded_by", "gxsj": "updated_at"},
            "gxsj",
        ),
        NativeTable(
            "problems", "wt",
            {"wtbh": "problem_id", "dwdm": "unit_code", "ly": "origin", "lb": "category", "ms": "description",
             "fxrq": "found_at", "zgqx": "deadline", "zrr": "owner_id", "zt": "status", "wjrq": "closed_at",
             "gxsj": "updated_at"},
            "gxsj",
        ),
    )
}

# filedrop: one CSV per legacy table, Chinese headers in the legacy column order.
_FILEDROP_HEADERS: dict[str, tuple[str, list[str]]] = {
    "units": ("单位.csv", ["单位代码", "单位名称", "单位类型", "上级单位"]),
    "persons": ("人员.csv", ["人员编号", "姓名", "单位代码", "职务", "手机号码", "邮箱", "身份证号", "更新时间"]),
    "projects": (
        "项目.csv",
        ["项目编号", "项目代码", "项目名称", "类别", "单位代码", "责任人", "责任领导", "计划开始", "计划结束",
         "状态", "更新时间"],
    ),
    "milestones": ("节点.csv", ["节点编号", "项目编号", "节点类型", "计划完成", "实际完成", "更新时间"]),
    "stage_reports": (
        "汇报.csv",
        ["汇报编号", "项目编号", "节点编号", "填报时间", "填报人", "进度", "内容", "指标", "更新时间"],
    ),
    "evidence": (
        "佐证材料.csv",
        ["材料编号", "汇报编号", "文件名", "类型", "哈希值", "感知哈希", "页数", "大小", "拍摄时间", "上传时间",
         "上传人", "更新时间"],
    ),
    "problems": (
        "问题.csv",
        ["问题编号", "单位代码", "来源", "类别", "描述", "发现日期", "整改期限", "责任人", "状态", "完结日期",
         "更新时间"],
    ),
}

FILEDROP: dict[str, NativeTable] = {
    canonical: NativeTable(
        canonical,
        file_name,
        dict(zip(headers, LEGACY[canonical].columns.values(), strict=True)),
        None,  # deliveries are full snapshots
    )
    for canonical, (file_name, headers) in _FILEDROP_HEADERS.items()
}

BY_DIALECT: dict[str, dict[str, NativeTable]] = {"platform": PLATFORM, "legacy": LEGACY, "filedrop": FILEDROP}


def native_tables(dialect: str) -> dict[str, NativeTable]:
    try:
        return BY_DIALECT[dialect]
    except KeyError:
        raise ValueError(f"unknown dialect {dialect!r}; expected one of {', '.join(DIALECTS)}") from None
