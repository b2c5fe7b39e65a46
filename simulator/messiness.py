"""Render a generated source into its dialect's native frames, and make them messy (contract §6).

Messiness added here is never labelled: duplicate rows, ids with stray whitespace (primary keys) or another
case (references), enumerations spelled another way, full-width progress, HTML and control characters in
free text, one extra column. Labelled spoils (C2 cells) are applied from `SourceData.bad_cells`.
Each native frame keeps a hidden `_upd` column (seconds) so older filedrop deliveries can be cut from it.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from simulator import phrases as ph
from simulator.anomalies import DANGLING, PREFIX
from simulator.city import KINDS, SourceData, phash_hex
from simulator.timeutil import NULL
from transforms.dialects import LEGACY, PLATFORM
from transforms.schema import PROBLEM_ORIGINS, PROBLEM_STATUSES

TS_FULL, TS_MIN, D_ISO, D_SLASH, D_ZH, D_COMPACT = range(6)
_FORMATS = {
    TS_FULL: "%Y-%m-%d %H:%M:%S", TS_MIN: "%Y/%-m/%-d %-H:%M", D_ISO: "%Y-%m-%d", D_SLASH: "%Y/%-m/%-d",
    D_ZH: "%Y年%-m月%-d日", D_COMPACT: "%Y%m%d",
}


def _ids(entity: str, pos: np.ndarray, null_below_zero: bool = False) -> pl.Series:
    """Ids from row positions (`HB0000042`); negative positions are NULL references when allowed."""
    prefix, width = PREFIX[entity]
    pos = np.asarray(pos, dtype=np.int64)
    s = pl.select(pl.lit(prefix) + pl.Series(pos).cast(pl.String).str.zfill(width)).to_series()
    if null_below_zero:
        s = pl.select(pl.when(pl.Series(pos) >= 0).then(s)).to_series()
    return s


def _nullable(a: np.ndarray) -> pl.Series:
    a = np.asarray(a, dtype=np.int64)
    return pl.select(pl.when(pl.Series(a) != NULL).then(pl.Series(a))).to_series()


def canonical_frames(src: SourceData) -> dict[str, pl.DataFrame]:
    """The clean canonical tables: string ids, int seconds (timestamps) / int days (dates), NULLs."""
    u, pe, p, m, r, e, pr, mt = (src.units, src.persons, src.projects, src.milestones, src.reports,
                                 src.evidence, src.problems, src.metrics)
    out: dict[str, pl.DataFrame] = {}
    out["units"] = pl.DataFrame({k: u[k] for k in ("unit_code", "unit_name", "unit_kind")}).with_columns(
        parent_code=pl.Series(u["parent_code"].tolist(), dtype=pl.String), _upd=pl.lit(None, pl.Int64))
    out["persons"] = pl.DataFrame({
        "person_id": _ids("person", pe["_idx"]), "name": pe["name"], "unit_code": pe["unit_code"],
        "title": pe["title"], "phone": pe["phone"], "email": pl.Series(pe["email"].tolist(), dtype=pl.String),
        "id_card": pe["id_card"], "updated_at": pe["updated_at"]})
    # projects' last change: the newest of its milestones and reports
    p_upd = p["_created"].copy()
    np.maximum.at(p_upd, m["_proj"][m["_proj"] < DANGLING], np.where(
        m["completed_at"] == NULL, 0, m["completed_at"])[m["_proj"] < DANGLING])
    ok = r["_proj"] < DANGLING
    np.maximum.at(p_upd, r["_proj"][ok], np.minimum(r["submitted_at"][ok], src.now - 60))
    p_upd = np.minimum(p_upd + 3_600, src.now - 30)
    out["projects"] = pl.DataFrame({
        "project_id": _ids("project", p["_idx"]), "project_code": p["project_code"], "title": p["title"],
        "category": p["category"], "unit_code": p["unit_code"], "owner_id": _ids("person", p["_owner"]),
        "leader_id": _ids("person", p["_leader"], null_below_zero=True), "planned_start": p["planned_start"],
        "planned_end": p["planned_end"], "status": p["status"], "updated_at": p_upd})
    n_ms = len(m["_proj"])
    ms_upd = np.where(m["completed_at"] != NULL, m["completed_at"], p["_created"][np.minimum(m["_proj"], len(p["_idx"]) - 1)])
    out["milestones"] = pl.DataFrame({
        "milestone_id": _ids("milestone", np.arange(n_ms)), "project_id": _ids("project", m["_proj"]),
        "stage": np.array(["initiation", "implementation", "interim_result", "acceptance"])[m["_stage"]],
        "due_date": m["due_date"], "completed_at": _nullable(m["completed_at"]),
        "updated_at": np.minimum(ms_upd + 1_800, src.now - 30)})
    n_r = len(r["_proj"])
    out["stage_reports"] = pl.DataFrame({
        "report_id": _ids("report", np.arange(n_r)), "project_id": _ids("project", r["_proj"]),
        "milestone_id": _ids("milestone", r["_ms"], null_below_zero=True),
        "submitted_at": r["submitted_at"], "submitted_by": _ids("person", r["_by"]),
        "progress_pct": r["progress_pct"].astype(np.float64),
        "summary": pl.Series(r["summary"].tolist(), dtype=pl.String), "updated_at": r["updated_at"]})
    n_e = len(e["_rep"])
    phash = pl.Series(phash_hex(e["_phash"]))
    out["evidence"] = pl.DataFrame({
        "evidence_id": _ids("evidence", np.arange(n_e)), "report_id": _ids("report", e["_rep"]),
        "file_name": pl.Series(e["file_name"].tolist(), dtype=pl.String),
        "kind": np.array(KINDS)[e["_kind"]], "sha256": pl.Series(e["sha256"].tolist(), dtype=pl.String),
        "phash": pl.select(pl.when(pl.Series(e["_has_phash"])).then(phash)).to_series(),
        "pages": _nullable(e["pages"]), "size_bytes": e["size_bytes"], "captured_at": _nullable(e["captured_at"]),
        "uploaded_at": e["uploaded_at"], "uploaded_by": _ids("person", e["_by"]), "updated_at": e["updated_at"]})
    n_p = len(pr["_owner"])
    out["problems"] = pl.DataFrame({
        "problem_id": _ids("problem", np.arange(n_p)), "unit_code": pr["unit_code"],
        "origin": np.array(PROBLEM_ORIGINS)[pr["_origin"]], "category": pr["category"],
        "description": pl.Series(pr["description"].tolist(), dtype=pl.String), "found_at": pr["found_at"],
        "deadline": pr["deadline"], "owner_id": _ids("person", pr["_owner"], null_below_zero=True),
        "status": np.array(PROBLEM_STATUSES)[pr["_status"]], "closed_at": _nullable(pr["closed_at"]),
        "updated_at": pr["updated_at"]})
    for name, frame in out.items():
        if name != "units":
            out[name] = frame.with_columns(_upd=pl.col("updated_at"))
    money = np.array([x[2] for x in ph.METRICS])[mt["name"]]
    out["metrics"] = pl.DataFrame({
        "report_id": _ids("report", mt["_rep"]), "metric_name": np.array([x[0] for x in ph.METRICS])[mt["name"]],
        "value": mt["value"], "money": money})
    return out


# -- formatting -------------------------------------------------------------------------------------------


def _platform_ts(col: str) -> pl.Expr:
    return pl.from_epoch(pl.col(col), time_unit="s").dt.strftime("%Y-%m-%dT%H:%M:%S+08:00").alias(col)


def _platform_date(col: str) -> pl.Expr:
    return pl.from_epoch(pl.col(col), time_unit="d").dt.strftime("%Y-%m-%d").alias(col)


def _legacy_time(col: str, fmt: np.ndarray, days: bool = False) -> pl.Expr:
    dt = pl.from_epoch(pl.col(col), time_unit="d" if days else "s")
    f = pl.Series(fmt)
    expr = pl.when(f == TS_FULL).then(dt.dt.strftime(_FORMATS[TS_FULL]))
    for k in (TS_MIN, D_ISO, D_SLASH, D_ZH, D_COMPACT):
        expr = expr.when(f == k).then(dt.dt.strftime(_FORMATS[k]))
    return expr.otherwise(pl.lit(None)).alias(col)


def _fmt_choice(rng, n: int, kind: str) -> np.ndarray:
    if kind == "time":  # keeps time of day: submitted/uploaded/captured
        return rng.choice([TS_FULL, TS_MIN], n, p=[0.6, 0.4])
    if kind == "change":  # updated_at: mostly with time
        return rng.choice([TS_FULL, TS_MIN, D_ISO, D_SLASH], n, p=[0.6, 0.37, 0.02, 0.01])
    if kind == "completed":
        return rng.choice([TS_FULL, TS_MIN, D_ISO, D_SLASH, D_ZH], n, p=[0.45, 0.25, 0.15, 0.1, 0.05])
    return rng.choice([D_ISO, D_SLASH, D_ZH, D_COMPACT], n, p=[0.5, 0.2, 0.15, 0.15])


_TS_COLS = {"persons": {"updated_at": "change"},
            "projects": {"planned_start": "date", "planned_end": "date", "updated_at": "change"},
            "milestones": {"due_date": "date", "completed_at": "completed", "updated_at": "change"},
            "stage_reports": {"submitted_at": "time", "updated_at": "change"},
            "evidence": {"captured_at": "time", "uploaded_at": "time", "updated_at": "change"},
            "problems": {"found_at": "date", "deadline": "date", "closed_at": "date", "updated_at": "change"}}
_ENUMS_ZH = {("units", "unit_kind"): ph.LEGACY_UNIT_KIND, ("projects", "status"): ph.LEGACY_STATUS,
             ("milestones", "stage"): ph.LEGACY_STAGE, ("evidence", "kind"): ph.LEGACY_KIND,
             ("problems", "origin"): ph.LEGACY_ORIGIN, ("problems", "status"): ph.LEGACY_PROBLEM_STATUS}


def _metrics_text(metrics: pl.DataFrame, json_style: bool) -> pl.DataFrame:
    value = (pl.when(pl.col("money")).then(pl.col("value").round(1).cast(pl.String))
             .otherwise(pl.col("value").cast(pl.Int64).cast(pl.String)))
    if json_style:
        item = pl.concat_str([pl.lit('"'), pl.col("metric_name"), pl.lit('": '), value])
        sep, left, right = ", ", "{", "}"
    else:
        item = pl.concat_str([pl.col("metric_name"), pl.lit(":"), value])
        sep, left, right = ";", "", ""
    return (metrics.with_columns(item.alias("item")).group_by("report_id", maintain_order=True)
            .agg(pl.col("item").str.join(sep)).select(
                "report_id", pl.concat_str([pl.lit(left), pl.col("item"), pl.lit(right)]).alias("metrics")))


def render(src: SourceData, canon: dict[str, pl.DataFrame], dialect: str, seed: int) -> dict[str, pl.DataFrame]:
    """Native frames (column names per transforms.dialects) for platform, or legacy (also used by filedrop)."""
    rng = np.random.default_rng([seed, src.meta.index, 31])
    platform = dialect == "platform"
    frames: dict[str, pl.DataFrame] = {}
    for table, frame in canon.items():
        if table == "metrics":
            continue
        if table == "stage_reports":
            frame = frame.join(_metrics_text(canon["metrics"], platform), on="report_id", how="left")
        n = frame.height
        if platform:
            exprs = []
            for col, kind in _TS_COLS.get(table, {}).items():
                exprs.append(_platform_date(col) if kind == "date" else _platform_ts(col))
            frame = frame.with_columns(exprs) if exprs else frame
        else:
            exprs = []
            for col, kind in _TS_COLS.get(table, {}).items():
                exprs.append(_legacy_time(col, _fmt_choice(rng, n, kind), days=kind == "date"))
            frame = frame.with_columns(exprs) if exprs else frame
            for (t, col), mapping in _ENUMS_ZH.items():
                if t == table:  # keep the English value aside for the "English for Chinese" variant
                    frame = frame.with_columns(pl.col(col).alias(f"_en_{col}"), pl.col(col).replace_strict(mapping))
            if table == "stage_reports":
                frame = frame.with_columns(_legacy_progress(rng, n))
            if table == "evidence":
                unit = pl.Series(rng.random(n) < 0.3)
                frame = frame.with_columns(
                    pl.when(unit & pl.col("pages").is_not_null()).then(pl.col("pages").cast(pl.String) + "页")
                    .otherwise(pl.col("pages").cast(pl.String)).alias("pages"),
                    pl.col("size_bytes").cast(pl.String))
        frames[table] = frame

    for table, row, col, raw in src.bad_cells:  # labelled C2 spoils
        frame = frames[table]
        frames[table] = frame.with_columns(
            pl.when(pl.int_range(frame.height) == row).then(pl.lit(raw)).otherwise(pl.col(col).cast(pl.String))
            .alias(col))

    frames = _mess(frames, rng, platform)
    spec = PLATFORM if platform else LEGACY
    out = {}
    for table, frame in frames.items():
        native = spec[table]
        cols = [pl.col(c).alias(n) for n, c in native.columns.items()]
        if not platform:
            cols = [c.cast(pl.String).fill_null("") for c in cols]  # empty string means NULL
        out[table] = frame.select(*cols, "_upd")
    if "extra_column" in src.meta.roles:
        out["projects"] = out["projects"].with_columns(bz=pl.lit("")).select(
            *[c for c in out["projects"].columns if c != "_upd"], "bz", "_upd")  # an extra column (备注)
    return out


def _legacy_progress(rng, n: int) -> pl.Expr:
    """`80%`, `80` or `0.8` (the fraction form always has a decimal point and is used for 10 <= p < 100)."""
    style = pl.Series(rng.choice(3, n, p=[0.45, 0.4, 0.15]))
    p = pl.col("progress_pct")
    as_int = p.cast(pl.Int64).cast(pl.String)
    frac = (p / 100).round(2).cast(pl.String)
    return (pl.when(p.is_null()).then(None)
            .when(style == 0).then(as_int + "%")
            .when((style == 2) & (p >= 10) & (p < 100)).then(frac)
            .otherwise(as_int).alias("progress_pct"))


_FULLWIDTH = (list("0123456789%"), list("０１２３４５６７８９％"))


def _mess(frames: dict[str, pl.DataFrame], rng, platform: bool) -> dict[str, pl.DataFrame]:
    keys = {"persons": "person_id", "projects": "project_id", "milestones": "milestone_id",
            "stage_reports": "report_id", "evidence": "evidence_id", "problems": "problem_id"}
    refs = {"projects": ["owner_id"], "milestones": ["project_id"], "stage_reports": ["project_id", "milestone_id"],
            "evidence": ["report_id"], "problems": ["owner_id"]}
    out = {}
    for table, f in frames.items():
        n = f.height
        if n == 0:
            out[table] = f
            continue
        ex = []
        if table in keys:  # stray whitespace around some primary keys
            pad = pl.Series(rng.choice(3, n, p=[0.99, 0.005, 0.005]))
            k = pl.col(keys[table])
            ex.append(pl.when(pad == 1).then(" " + k).when(pad == 2).then(k + " ").otherwise(k).alias(keys[table]))
        for col in refs.get(table, []):  # another case in some references
            low = pl.Series(rng.random(n) < 0.01)
            ex.append(pl.when(low).then(pl.col(col).str.to_lowercase()).otherwise(pl.col(col)).alias(col))
        enum_cols = {"projects": "status", "milestones": "stage", "evidence": "kind", "problems": "status"}
        if table in enum_cols:
            ex.append(_enum_variants(f, enum_cols[table], rng, platform))
        if table in ("stage_reports", "projects"):
            col = "summary" if table == "stage_reports" else "title"
            ex.append(_dirty_text(col, rng, n))
        if table == "stage_reports" and not platform:
            wide = pl.Series(rng.random(n) < 0.01)
            ex.append(pl.when(wide).then(pl.col("progress_pct").str.replace_many(*_FULLWIDTH))
                      .otherwise(pl.col("progress_pct")).alias("progress_pct"))
        f = f.with_columns(ex) if ex else f
        # duplicate rows: exact copies (legacy/filedrop); in platform (primary keys) the copy's id has a
        # trailing space, so it is a duplicate after trimming
        dup = np.flatnonzero(rng.random(n) < 0.005)
        if len(dup) and table != "units":
            copies = f[dup]
            if platform:
                copies = copies.with_columns((pl.col(keys[table]) + " ").alias(keys[table]))
            f = pl.concat([f, copies])
        out[table] = f
    return out


def _enum_variants(f: pl.DataFrame, col: str, rng, platform: bool) -> pl.Expr:
    """~2 % of values spelled another way: case, spaces, hyphens, English for Chinese."""
    n = f.height
    v = pl.Series(rng.choice(5, n, p=[0.98, 0.005, 0.005, 0.005, 0.005]))
    c = pl.col(col)
    if platform:
        return (pl.when(v == 1).then(c.str.replace_all("_", " ").str.to_titlecase())
                .when(v == 2).then(c.str.replace_all("_", "-"))
                .when(v == 3).then(" " + c + " ")
                .when(v == 4).then(c.str.to_uppercase()).otherwise(c).alias(col))
    english = pl.col(f"_en_{col}").str.replace_all("_", " ").str.to_titlecase()  # 实施中 -> In Progress
    return (pl.when(v == 1).then(" " + c + " ")
            .when(v == 2).then("\u3000" + c)  # full-width space
            .when(v == 3).then(english)
            .when(v == 4).then(pl.col(f"_en_{col}").str.replace_all("_", "-")).otherwise(c).alias(col))


_DIRT = ["<b>{}</b>", "<p>{}</p>", "{}&nbsp;", "\x07{}", "{}\r\n", "【{}】&nbsp;&nbsp;", "{}\x0b"]


def _dirty_text(col: str, rng, n: int) -> pl.Expr:
    """HTML tags, entities and control characters in ~1.5 % of free-text cells."""
    which = pl.Series(np.where(rng.random(n) < 0.015, rng.integers(0, len(_DIRT), n), -1))
    expr = pl.when(which == -1).then(pl.col(col))
    for k, tpl in enumerate(_DIRT):
        left, right = tpl.split("{}")
        expr = expr.when(which == k).then(pl.concat_str([pl.lit(left), pl.col(col), pl.lit(right)]))
    return expr.otherwise(pl.col(col)).alias(col)
