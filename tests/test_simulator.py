"""The simulated city: determinism, the contract's registry/tables/columns/encodings, and the labels."""

from __future__ import annotations

import csv
import re
import sqlite3
import tomllib
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from simulator import simulate_city
from transforms.dialects import FILEDROP, LEGACY, PLATFORM

AS_OF = date(2026, 11, 29)
ALL_RULES = {f"T{i}" for i in range(1, 7)} | {f"F{i}" for i in range(1, 8)} | {"D1", "D2", "D3"} | {
    f"C{i}" for i in range(1, 5)}


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> tuple[Path, dict]:
    """A moderate city where every rule has labels (8 sources x 40 projects)."""
    out = tmp_path_factory.mktemp("city")
    return out, simulate_city(out, sources=8, projects_per_source=40, seed=7, workers=1)


@pytest.fixture(scope="module")
def wide_city(tmp_path_factory) -> Path:
    """Enough sources for two filedrops (one per encoding)."""
    out = tmp_path_factory.mktemp("wide")
    simulate_city(out, sources=14, projects_per_source=8, seed=3)
    return out


def registry(out: Path) -> dict:
    return tomllib.loads((out / "sources.toml").read_text(encoding="utf-8"))


def labels(out: Path) -> list[dict]:
    with open(out / "labels.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def test_registry_follows_contract(city):
    out, summary = city
    doc = registry(out)
    assert set(doc["alerts"]) == {"supervision_email", "sender"}
    sources = doc["source"]
    assert len(sources) == 8 == summary["sources"]
    ids = [s["id"] for s in sources]
    assert len(set(ids)) == len(ids)
    for s in sources:
        assert set(s) == {"id", "name", "kind", "dialect", "url", "steward_email"}
        assert re.fullmatch(r"[a-z0-9_]+", s["id"])
        assert re.search(r"[\u4e00-\u9fff]", s["name"])
        if s["dialect"] in ("platform", "legacy"):
            assert s["url"].startswith("sqlite:////")
        else:
            assert Path(s["url"]).is_absolute()
    assert [s["kind"] for s in sources] == ["district"] * 2 + ["department"] * 6  # round(8*22/96) = 2
    assert {s["dialect"] for s in sources} == {"platform", "legacy", "filedrop"}


def test_registry_scales_to_a_large_city(tmp_path):
    from simulator.registry import plan_sources

    metas = plan_sources(200, seed=1)
    assert len({m.id for m in metas}) == 200
    assert sum(m.kind == "district" for m in metas) == 22
    by = {d: sum(m.dialect == d for m in metas) for d in ("platform", "legacy", "filedrop")}
    assert by == {"platform": 120, "legacy": 50, "filedrop": 30}
    city96 = plan_sources(96, seed=7)
    assert sum(m.kind == "district" for m in city96) == 22


def test_deterministic_per_seed(tmp_path):
    a = simulate_city(tmp_path / "a", sources=6, projects_per_source=20, seed=11)
    b = simulate_city(tmp_path / "b", sources=6, projects_per_source=20, seed=11, workers=1)
    c = simulate_city(tmp_path / "c", sources=6, projects_per_source=20, seed=12)
    assert a["labels"] == b["labels"] and a["rows"] == b["rows"]
    assert c["rows"] != a["rows"]
    assert (tmp_path / "a/labels.csv").read_bytes() == (tmp_path / "b/labels.csv").read_bytes()
    assert (tmp_path / "a/labels.csv").read_bytes() != (tmp_path / "c/labels.csv").read_bytes()
    toml_a = (tmp_path / "a/sources.toml").read_text().replace(str(tmp_path / "a"), "")
    toml_b = (tmp_path / "b/sources.toml").read_text().replace(str(tmp_path / "b"), "")
    assert toml_a == toml_b
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a/sources").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b/sources").rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        if rel.suffix == ".sqlite":
            assert _dump(tmp_path / "a" / rel) == _dump(tmp_path / "b" / rel), rel
        else:
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def _dump(path: Path) -> list:
    con = sqlite3.connect(path)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def test_sqlite_tables_and_columns(city):
    out, _ = city
    for s in registry(out)["source"]:
        if s["dialect"] == "filedrop":
            continue
        path = sqlite_path(s["url"])
        if not path.parent.exists():  # the unreachable source
            with pytest.raises(sa.exc.OperationalError):
                sa.create_engine(s["url"]).connect()
            continue
        spec = PLATFORM if s["dialect"] == "platform" else LEGACY
        con = sqlite3.connect(path)
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        expected = {t.native for t in spec.values()}
        missing = expected - tables
        assert missing <= {"wt"} and tables <= expected
        for table in spec.values():
            if table.native not in tables:
                continue
            info = con.execute(f"PRAGMA table_info({table.native})").fetchall()
            names = [r[1] for r in info]
            extra = names[len(table.columns):]
            assert names[: len(table.columns)] == list(table.columns)
            assert extra in ([], ["bz"]) and (not extra or table.native == "xm")
            if s["dialect"] == "legacy":
                assert {r[2] for r in info} == {"TEXT"}
            else:
                types = dict(zip(names, (r[2] for r in info), strict=True))
                assert types.get("updated_at", "TIMESTAMPTZ").startswith("TIMESTAMPTZ")
        con.close()


def test_broken_sources_are_labelled(city):
    out, summary = city
    labs = labels(out)
    c1 = {r["entity_id"] for r in labs if r["rule_id"] == "C1"}
    c4 = {r["entity_id"] for r in labs if r["rule_id"] == "C4"}
    roles = summary["broken_sources"]
    assert c1 == {sid for sid, r in roles.items() if {"unreachable", "missing_table"} & set(r)}
    assert c4 == {sid for sid, r in roles.items() if {"stale", "stale_delivery"} & set(r)}
    by_id = {s["id"]: s for s in registry(out)["source"]}
    for sid in c4:  # a stale system: nothing changed in the last 45 days
        con = sqlite3.connect(sqlite_path(by_id[sid]["url"]))
        table = "projects" if by_id[sid]["dialect"] == "platform" else "xm"
        col = "updated_at" if table == "projects" else "gxsj"
        newest = max(_day(v) for (v,) in con.execute(f"SELECT {col} FROM {table}"))
        assert newest <= AS_OF - timedelta(days=45)


def _day(text: str) -> date:
    digits = re.findall(r"\d+", text)
    if len(digits[0]) == 8:
        return date(int(digits[0][:4]), int(digits[0][4:6]), int(digits[0][6:]))
    return date(int(digits[0]), int(digits[1]), int(digits[2]))


def test_every_rule_is_labelled(city):
    out, summary = city
    rows = labels(out)
    assert list(rows[0]) == ["source_id", "rule_id", "entity_type", "entity_id"]
    assert {r["rule_id"] for r in rows} == ALL_RULES
    assert set(summary["labels"]) == ALL_RULES
    allowed = {"project", "milestone", "report", "evidence", "problem", "person", "unit", "source"}
    assert {r["entity_type"] for r in rows} <= allowed
    assert all(r["entity_id"] == r["entity_id"].strip() for r in rows)


def test_labels_point_at_rows_and_deadlines_match_the_data(city):
    out, _ = city
    by_source: dict[str, list[dict]] = {}
    for r in labels(out):
        by_source.setdefault(r["source_id"], []).append(r)
    checked = 0
    for s in registry(out)["source"]:
        path = sqlite_path(s["url"]) if s["dialect"] == "platform" else None
        if path is None or not path.exists() or s["id"] not in by_source:
            continue
        con = sqlite3.connect(path)
        reports = {r.strip() for (r,) in con.execute("SELECT report_id FROM stage_reports")}
        for lab in by_source[s["id"]]:
            if lab["entity_type"] == "report":
                assert lab["entity_id"] in reports
        # D2 recomputed from the written rows (ids trimmed, duplicates collapsed)
        status = {p.strip().upper(): st.strip().lower() for p, st in con.execute("SELECT project_id, status FROM projects")}
        rows = con.execute("SELECT milestone_id, project_id, due_date, completed_at FROM milestones").fetchall()
        d2 = {m.strip() for m, p, due, done in rows
              if done is None and date.fromisoformat(due) < AS_OF and status.get(p.strip().upper()) != "cancelled"}
        d2 -= {lab["entity_id"] for lab in by_source[s["id"]] if lab["rule_id"] == "C3"}
        assert d2 == {lab["entity_id"] for lab in by_source[s["id"]] if lab["rule_id"] == "D2"}
        checked += 1
    assert checked >= 2


def test_legacy_is_text_with_mixed_formats(city):
    out, _ = city
    legacy = [s for s in registry(out)["source"] if s["dialect"] == "legacy"]
    con = sqlite3.connect(sqlite_path(legacy[0]["url"]))
    starts = [v for (v,) in con.execute("SELECT jhks FROM xm")]
    shapes = {_shape(v) for v in starts}
    assert len(shapes) >= 3, shapes
    stamps = [v for (v,) in con.execute("SELECT scsj FROM zzcl")]
    assert all(re.search(r"\d{1,2}:\d{2}", v) for v in stamps if v and "待" not in v and "0000" not in v)
    statuses = {v.strip() for (v,) in con.execute("SELECT zt FROM xm")}
    assert statuses & {"谋划中", "实施中", "已完成", "暂停", "撤销"}
    progress = [v for (v,) in con.execute("SELECT jd FROM hb")]
    assert any(v.endswith("%") for v in progress) and any(re.fullmatch(r"\d+", v) for v in progress)


def _shape(v: str) -> str:
    return re.sub(r"\d+", "9", v)


def test_filedrop_headers_and_encodings(wide_city):
    doc = registry(wide_city)
    folders = [Path(s["url"]) for s in doc["source"] if s["dialect"] == "filedrop"]
    assert len(folders) >= 2
    encodings = set()
    for folder in folders:
        deliveries = sorted(p.name for p in folder.iterdir())
        assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", d) for d in deliveries) and len(deliveries) >= 2
        newest = folder / deliveries[-1]
        for table in FILEDROP.values():
            path = newest / table.native
            if not path.exists():
                continue
            data = path.read_bytes()
            if data.startswith(b"\xef\xbb\xbf"):
                text, enc = data[3:].decode("utf-8"), "utf-8-sig"
            else:
                with pytest.raises(UnicodeDecodeError):
                    data.decode("utf-8")
                text, enc = data.decode("gb18030"), "gb18030"
            encodings.add(enc)
            header = next(csv.reader([text.splitlines()[0]]))
            assert header[: len(table.columns)] == list(table.columns)
    assert encodings == {"gb18030", "utf-8-sig"}


def test_person_ids_have_valid_check_digits(city):
    out, _ = city
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    s = next(s for s in registry(out)["source"] if s["dialect"] == "platform" and sqlite_path(s["url"]).exists())
    con = sqlite3.connect(sqlite_path(s["url"]))
    for (card, phone) in con.execute("SELECT id_card, phone FROM persons"):
        assert len(card) == 18 and "10X98765432"[sum(int(c) * w for c, w in zip(card[:17], weights, strict=True)) % 11] == card[-1]
        assert re.fullmatch(r"1[3-9]\d{9}", phone)


def test_planted_anomalies_fire_and_ordinary_rows_do_not():
    """A reference check on the clean canonical frames: each rule below fires on exactly its labels."""
    import polars as pl

    from simulator.anomalies import Planter, deadline_labels
    from simulator.city import generate_source
    from simulator.messiness import canonical_frames
    from simulator.registry import plan_sources
    from simulator.timeutil import DAY, day_of

    as_of_day = day_of(AS_OF)
    for meta in plan_sources(6, seed=5):
        if "unreachable" in meta.roles:
            continue
        src = generate_source(meta, 60, 5, AS_OF)
        Planter(src, 5, as_of_day).run()
        deadline_labels(src, as_of_day)
        lab: dict[str, set[str]] = {}
        for rule, _etype, ident in src.labels:
            lab.setdefault(rule, set()).add(ident)
        c = canonical_frames(src)
        skip = lab.get("C2", set()) | lab.get("C3", set())
        reports = c["stage_reports"].filter(~pl.col("report_id").is_in(list(skip)))
        ms = c["milestones"].filter(~pl.col("milestone_id").is_in(list(skip)))
        ev = c["evidence"].filter(~pl.col("evidence_id").is_in(list(skip))).join(
            reports.select("report_id", "project_id", "milestone_id", "submitted_at"), on="report_id")
        per = ev.group_by("report_id", "milestone_id").agg(
            n=pl.len(), n_out=pl.col("kind").is_in(["document", "ledger"]).sum(),
            n_proc=pl.col("kind").is_in(["photo", "sign_in_sheet", "meeting_minutes"]).sum(),
        ).join(ms.select("milestone_id", "stage"), on="milestone_id")
        per = per.with_columns(med=pl.col("n").median().over("stage"))
        assert set(per.filter(pl.col("n") >= 4 * pl.col("med"))["report_id"]) == lab["T1"]
        t3 = per.filter((pl.col("n") >= 8) & (pl.col("n_out") == 0) & (pl.col("n_proc") == pl.col("n")))
        assert set(t3["report_id"]) == lab["T3"]
        proj = c["projects"].select("project_id", "planned_start")
        f2_ev = ev.join(proj, on="project_id").filter(
            (pl.col("captured_at") > pl.col("uploaded_at"))
            | (pl.col("captured_at") < pl.col("planned_start") * DAY - 365 * DAY)
            | (pl.col("uploaded_at") > pl.col("submitted_at") + DAY))
        f2_rep = reports.join(proj, on="project_id").filter(
            (pl.col("submitted_at") < pl.col("planned_start") * DAY - 30 * DAY)
            | (pl.col("submitted_at") >= as_of_day * DAY))
        assert set(f2_ev["evidence_id"]) | set(f2_rep["report_id"]) == lab["F2"]
        interim = ms.filter(pl.col("stage") == "interim_result").select(
            "project_id", interim_done=pl.col("completed_at").is_not_null())
        seq = reports.sort("project_id", "submitted_at").join(interim, on="project_id", how="left").with_columns(
            prev=pl.col("progress_pct").shift(1).over("project_id"))
        f3 = seq.filter((pl.col("progress_pct") <= pl.col("prev") - 10)
                        | ((pl.col("progress_pct") >= 100) & ~pl.col("interim_done")))
        assert set(f3["report_id"]) == lab["F3"]
        has_out = per.group_by("milestone_id").agg(out=(pl.col("n_out") > 0).any())
        f7 = ms.filter(pl.col("completed_at").is_not_null() & pl.col("project_id").is_in(proj["project_id"].implode()))
        f7 = f7.join(has_out, on="milestone_id", how="left").filter(~pl.col("out").fill_null(False))
        assert set(f7["milestone_id"]) == lab["F7"]
        t6 = reports.group_by("milestone_id").len().filter(pl.col("len") >= 8)
        assert set(t6["milestone_id"]) == lab["T6"]
