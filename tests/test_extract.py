"""Extraction against real SQLite files, a real PostgreSQL server and real filedrop folders."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from flows import extract
from flows.extract import SourceUnreachable, extract_filedrop, extract_sql, list_deliveries, read_delivery_csv
from flows.registry import RegistryError, Source, load_registry
from flows.state import StateStore

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)
SH = ZoneInfo("Asia/Shanghai")


def _legacy_db(path: Path, rows: list[tuple[str, str, str]]) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE ry (rybh TEXT, xm TEXT, dwdm TEXT, zw TEXT, sjhm TEXT, yx TEXT, sfzh TEXT, gxsj TEXT)")
    con.executemany("INSERT INTO ry (rybh, xm, gxsj) VALUES (?, ?, ?)", rows)
    con.commit()
    con.close()


def test_sqlite_text_change_column_is_pulled_incrementally(tmp_path):
    db = tmp_path / "legacy.sqlite"
    _legacy_db(db, [
        ("P1", "张三", "2026/11/20 8:00"),
        ("P2", "李四", "2026年11月28日"),
        ("P3", "王五", "20261127"),
        ("P4", "赵六", "not a date"),  # cannot be placed: pulled every night, never lost
    ] + [(f"Q{i}", "某", "2026-01-01") for i in range(20)])
    src = Source("old", "老系统", "department", "legacy", f"sqlite:///{db}", None)

    first = extract_sql(src, watermarks={}, overlap=timedelta(days=1), now=NOW)
    assert first.tables["persons"].height == 24
    assert first.full["persons"] is True
    assert "units" in first.missing_tables  # dw is absent
    wm = first.watermarks["persons"]
    assert wm.astimezone(UTC).date().isoformat() == "2026-11-27"  # 2026-11-28 00:00 +08:00

    second = extract_sql(src, watermarks={"persons": wm}, overlap=timedelta(days=1), now=NOW)
    got = sorted(second.tables["persons"]["rybh"].to_list())
    assert got == ["P2", "P3", "P4"]  # within the overlap, or unparseable; the January rows are not pulled


_SQLITE_VALUE = st.one_of(st.none(), st.text(), st.integers(-(2**63), 2**63 - 1), st.floats(), st.binary(max_size=8))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(_SQLITE_VALUE, _SQLITE_VALUE), max_size=40), st.integers(1, 7),
       st.sampled_from(["", "a IS NULL OR b IS NOT NULL"]))
def test_sqlite_rows_fetched_as_json_are_the_values_fetched_one_by_one(rows, batch_rows, where):
    """SQLite sources are fetched in batches of rows that SQLite puts into one JSON string: every value
    comes out as the plain fetch gives it (quotes, control characters, NUL, emoji, numbers cast to text,
    NULL), in the same order, whatever the batches, with or without a filter written as SQL text (an OR,
    as the next night's is: each batch's rowid condition must not bind to half of it), given as text or
    only in the query; a value that is not UTF-8 sends the table to the plain fetch, which decodes it."""
    from flows import extract
    from flows.extract import _as_text, _fetch_frame, _fetch_json_batches, _frame

    engine = sa.create_engine("sqlite://", poolclass=sa.pool.StaticPool)
    default = extract.JSON_BATCH_ROWS
    extract.JSON_BATCH_ROWS = batch_rows
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("CREATE TABLE t (a, b)")
            if rows:  # rowids not in insertion order, negative ones too
                conn.exec_driver_sql("INSERT INTO t (rowid, a, b) VALUES (?, ?, ?)",
                                     [((-1) ** i * (1000 - i), *row) for i, row in enumerate(rows)])
            table = sa.Table("t", sa.MetaData(), autoload_with=conn)
            query = sa.select(*[_as_text(c) for c in table.columns])
            if where:
                query = query.where(sa.literal_column(where, sa.Boolean))
            plain = _fetch_frame(conn, query, ["a", "b"])
            assert_frame_equal(_frame(conn, query, ["a", "b"]), plain)
            assert_frame_equal(_frame(conn, query, ["a", "b"], sqlite_where=where or None), plain)
            assert_frame_equal(_frame(conn, query, ["a", "b"], sqlite_where=where or None, table=table), plain)
            if not any(isinstance(v, bytes) for row in rows for v in row):  # all UTF-8: no plain fetch needed
                assert _fetch_json_batches(conn, query, ["a", "b"]) is not None
                assert _fetch_json_batches(conn, query, ["a", "b"], where or None) is not None
    finally:
        extract.JSON_BATCH_ROWS = default
    engine.dispose()


def test_sqlite_batches_of_a_filter_with_or_do_not_bring_its_rows_again():
    """The next night's filter is an OR (`change IS NULL OR <date> >= …`): each batch's own condition on the
    rowid applies to all of it, so rows with a NULL change time come once, and the batches move on."""
    from flows import extract
    from flows.extract import _as_text, _fetch_frame, _fetch_json_batches

    engine = sa.create_engine("sqlite://", poolclass=sa.pool.StaticPool)
    default = extract.JSON_BATCH_ROWS
    extract.JSON_BATCH_ROWS = 2
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("CREATE TABLE t (k TEXT, changed TEXT)")
            conn.exec_driver_sql("INSERT INTO t VALUES ('n1', NULL), ('old', '2019-01-01'), ('n2', NULL), "
                                 "('new1', '2026-11-29'), ('new2', '2026-11-30'), ('new3', '2026-12-01')")
            table = sa.Table("t", sa.MetaData(), autoload_with=conn)
            where = "changed IS NULL OR changed >= '2026-01-01'"
            query = sa.select(*[_as_text(c) for c in table.columns]).where(sa.literal_column(where, sa.Boolean))
            plain = _fetch_frame(conn, query, ["k", "changed"])
            assert plain["k"].to_list() == ["n1", "n2", "new1", "new2", "new3"]
            for text in (None, where):  # compiled from the query, or written from the filter's text
                assert_frame_equal(_fetch_json_batches(conn, query, ["k", "changed"], text), plain)
    finally:
        extract.JSON_BATCH_ROWS = default
    engine.dispose()


def test_sqlite_tables_without_rowids_are_fetched_plainly():
    """A view, a WITHOUT ROWID table or a column named like the rowid: no batches, the plain fetch."""
    from flows.extract import _as_text, _fetch_json_batches, _frame

    engine = sa.create_engine("sqlite://", poolclass=sa.pool.StaticPool)
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE w (k TEXT PRIMARY KEY, v) WITHOUT ROWID")
        conn.exec_driver_sql("CREATE TABLE r (oid TEXT, v)")
        conn.exec_driver_sql("CREATE VIEW vw AS SELECT k, v FROM w")
        for name in ("w", "r", "vw"):
            conn.exec_driver_sql(f"INSERT INTO {'w' if name == 'vw' else name} VALUES ('x{name}', 1)")
        for name in ("w", "r", "vw"):
            table = sa.Table(name, sa.MetaData(), autoload_with=conn)
            query = sa.select(*[_as_text(c) for c in table.columns])
            columns = [c.name for c in table.columns]
            assert _fetch_json_batches(conn, query, columns) is None
            assert _fetch_json_batches(conn, query, columns, table=table) is None
            assert _frame(conn, query, columns).height == (1 if name == "r" else 2)
    engine.dispose()


def test_sqlite_leaves_out_only_rows_certainly_older_than_the_watermark(tmp_path):
    """SQLite rules out rows whose change time starts with a real date two days before the lower bound;
    every other row is parsed here, as a source without that shortcut would be."""
    wm = datetime(2026, 11, 28, 0, tzinfo=UTC)  # lower bound, with one day of overlap: 11-27 08:00 +08:00
    values = {
        "2026-11-27T08:00:00+08:00": True,  # the lower bound itself
        "2026-11-27T07:59:59+08:00": False,
        "2026-11-26T23:59:00-12:00": True,  # an older-looking date, but 11-27 11:59 UTC
        "2026-11-25T23:59:59-14:00": False,  # 11-26 13:59 UTC: before, and kept out by the parser
        "2026-11-24T23:59:59-14:00": False,  # kept out by SQLite already
        "2026-11-29 09:00:00": True,
        "2019-04-25": False,
        "2019/04/25": False,
        "2019/4/25 7:59": False,
        "2019年4月25日": False,
        "2019年4月25日 7时59分": False,
        "20190425": False,
        "20190425075927": False,
        "2026/11/24 23:59": False,  # kept out by SQLite already
        "2026/11/26 23:59": False,  # kept out by the parser
        "2019/4/25x": False,  # starts with an older date: left out whatever follows, like an ISO one
        "201904250759": True,  # a number that is no spelling of the contract: for the parser
        "2026/11/28 8:00": True,
        "2026年11月28日": True,
        "20261128": True,
        "２０２６-11-28 10:00:00": True,  # full-width digits: not for SQLite to judge
        " 2026-11-28 10:00:00": True,
        "2026-13-01 10:00:00": True,  # not a date at all: cannot be placed, pulled every night
        "not a date": True,
        "": True,
        "9999-12-31 00:00:00": True,
    }
    db = tmp_path / "legacy.sqlite"
    _legacy_db(db, [(f"P{i}", "某", v) for i, v in enumerate(values)])
    src = Source("old", "老系统", "department", "legacy", f"sqlite:///{db}", None)
    got = extract_sql(src, watermarks={"persons": wm}, overlap=timedelta(days=1), now=NOW).tables["persons"]
    assert sorted(got["gxsj"].to_list(), key=str) == sorted((v for v, pulled in values.items() if pulled), key=str)
    # A date that SQLite takes but the parser does not (no 31 February) is old: left out. Like any older
    # row, it came on the first night (and went to the quarantine).
    _legacy_db(tmp_path / "b.sqlite", [("X", "某", "2019-02-31 07:00:00"), ("Y", "某", "2026-02-31 07:00:00")])
    src = Source("b", "老系统", "department", "legacy", f"sqlite:///{tmp_path / 'b.sqlite'}", None)
    assert extract_sql(src, watermarks={}, overlap=timedelta(days=1), now=NOW).tables["persons"].height == 2
    late = extract_sql(src, watermarks={"persons": wm}, overlap=timedelta(days=1), now=NOW).tables["persons"]
    assert late.is_empty()


_SPELLINGS = (
    lambda t: t.strftime("%Y-%m-%d"), lambda t: t.strftime("%Y-%m-%d %H:%M:%S"),
    lambda t: t.strftime("%Y-%m-%dT%H:%M:%S+08:00"), lambda t: f"{t.year}/{t.month}/{t.day}",
    lambda t: f"{t.year}/{t.month}/{t.day} {t.hour}:{t.minute:02d}", lambda t: t.strftime("%Y/%m/%d %H:%M"),
    lambda t: f"{t.year}年{t.month}月{t.day}日", lambda t: f"{t.year}年{t.month}月{t.day}日 {t.hour}时{t.minute}分",
    lambda t: t.strftime("%Y%m%d"), lambda t: t.strftime("%Y%m%d%H%M%S"),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.datetimes(datetime(2000, 1, 1), datetime(2030, 12, 31)),
                          st.integers(0, len(_SPELLINGS) - 1), st.sampled_from(["", "x", " 12", "日"])),
                min_size=1, max_size=30))
def test_sqlite_leaves_out_a_row_only_when_the_parser_finds_it_older(tmp_path_factory, rows):
    """A row SQLite leaves out starts with a date (in a spelling of the contract) two days before the
    lower bound, whatever follows it; the parser reads it as older when nothing odd follows. And every
    contract spelling of such a date is left out by SQLite: the point of the shortcut."""
    from transforms.parse import timestamp as parse_timestamp

    wm = datetime(2026, 11, 28, 0, tzinfo=UTC)
    lower = wm - timedelta(days=1)
    values = [_SPELLINGS[i](t) + tail for t, i, tail in rows]
    db = tmp_path_factory.mktemp("legacy") / "legacy.sqlite"
    _legacy_db(db, [(f"P{i}", "某", v) for i, v in enumerate(values)])
    src = Source("old", "老系统", "department", "legacy", f"sqlite:///{db}", None)
    fetched = []
    read = extract._frame
    extract._frame = lambda *a, **k: fetched.append(read(*a, **k)) or fetched[-1]  # what SQLite handed over
    try:
        pulled = extract_sql(src, watermarks={"persons": wm}, overlap=timedelta(days=1), now=NOW)
    finally:
        extract._frame = read
    parsed = pl.DataFrame({"v": values}).select(parse_timestamp(pl.col("v")))["v"].to_list()
    left_out = set(range(len(values))) - {int(k[1:]) for k in pl.concat(fetched)["rybh"].to_list()}
    assert set(pulled.tables["persons"]["rybh"].to_list()) == {  # and then the parser decides
        f"P{i}" for i, v in enumerate(parsed) if i not in left_out and (v is None or v >= lower)}
    bound = (lower.astimezone(SH) - timedelta(days=2)).date()
    for i, (t, _, tail) in enumerate(rows):
        if i in left_out:
            assert t.date() < bound, values[i]
            assert tail or parsed[i] < lower, values[i]
        elif not tail:
            assert t.date() >= bound, values[i]


def test_missing_sqlite_file_is_unreachable_and_not_created(tmp_path):
    path = tmp_path / "nowhere" / "x.sqlite"
    src = Source("gone", "无", "district", "platform", f"sqlite:///{path}", None)
    with pytest.raises(SourceUnreachable):
        extract_sql(src, watermarks={}, overlap=timedelta(days=1), now=NOW)
    assert not path.exists()


def test_postgres_typed_watermark_and_down_server(pg_server):
    admin = sa.create_engine(pg_server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text("DROP DATABASE IF EXISTS extract_t"))
        c.execute(sa.text("CREATE DATABASE extract_t"))
    url = pg_server.url.rsplit("/", 1)[0] + "/extract_t"
    eng = sa.create_engine(url)
    with eng.begin() as c:
        c.execute(sa.text(
            "CREATE TABLE persons (person_id TEXT PRIMARY KEY, name TEXT NOT NULL, unit_code TEXT, title TEXT,"
            " phone TEXT, email TEXT, id_card TEXT, updated_at TIMESTAMPTZ NOT NULL)"))
        c.execute(sa.text(
            "INSERT INTO persons (person_id, name, updated_at) VALUES"
            " ('A', '甲', '2026-11-01T08:00:00+08:00'), ('B', '乙', '2026-11-28T09:00:00+08:00')"))
    eng.dispose()
    src = Source("pg", "平台", "district", "platform", url, None)
    wm = datetime(2026, 11, 27, 12, tzinfo=UTC)
    pulled = extract_sql(src, watermarks={"persons": wm}, overlap=timedelta(hours=12), now=NOW)
    frame = pulled.tables["persons"]
    assert frame["person_id"].to_list() == ["B"]
    assert frame.schema["updated_at"] == pl.String  # everything lands as text
    bad = Source("pgdown", "宕机", "district", "platform", url.rsplit("/", 1)[0] + "/no_such_db", None)
    with pytest.raises(SourceUnreachable):
        extract_sql(bad, watermarks={}, overlap=timedelta(days=1), now=NOW)


def _delivery(folder: Path, day: str, encoding: str, body: str) -> None:
    d = folder / day
    d.mkdir(parents=True)
    data = ("\ufeff" + body).encode("utf-8") if encoding == "utf-8-sig" else body.encode(encoding)
    (d / "人员.csv").write_bytes(data)


PERSONS_CSV = "人员编号,姓名,单位代码,职务,手机号码,邮箱,身份证号,更新时间\nP1,张三,U1,科长,,,,2026/11/20 8:00\n"


@pytest.mark.parametrize("encoding", ["gb18030", "utf-8-sig", "utf-8"])
def test_filedrop_encodings(tmp_path, encoding):
    _delivery(tmp_path, "2026-11-28", encoding, PERSONS_CSV)
    frame = read_delivery_csv(tmp_path / "2026-11-28" / "人员.csv")
    assert frame.columns[0] == "人员编号"
    assert frame["姓名"].to_list() == ["张三"]


def test_filedrop_cut_off_mid_record_keeps_rows(tmp_path):
    _delivery(tmp_path, "2026-11-28", "utf-8", PERSONS_CSV + 'P2,"李四,U1')
    frame = read_delivery_csv(tmp_path / "2026-11-28" / "人员.csv")
    assert frame["人员编号"].to_list() == ["P1", "P2"]


def test_filedrop_newest_delivery_once_and_no_escape(tmp_path):
    folder = tmp_path / "dept"
    _delivery(folder, "2026-11-20", "gb18030", PERSONS_CSV)
    _delivery(folder, "2026-11-27", "utf-8-sig", PERSONS_CSV)
    outside = tmp_path / "2026-12-31"
    outside.mkdir()
    (folder / "2026-12-30").symlink_to(outside)  # a link out of the source folder is not a delivery
    (folder / "../etc").mkdir(exist_ok=True)
    assert list_deliveries(folder) == ["2026-11-20", "2026-11-27"]

    src = Source("dept", "部门", "department", "filedrop", str(folder), None)
    first = extract_filedrop(src, loaded=set())
    assert first.delivery == "2026-11-27"
    assert first.tables["persons"].height == 1
    assert set(first.missing_tables) == {"units", "projects", "milestones", "stage_reports", "evidence", "problems"}
    again = extract_filedrop(src, loaded={"2026-11-27"})
    assert again.delivery is None and not again.tables
    assert "no new delivery" in again.note


def test_registry_errors_are_clear(tmp_path):
    p = tmp_path / "sources.toml"
    p.write_text('[[source]]\nid = "Bad-Id"\ndialect = "platform"\nurl = "sqlite:///x"\n', encoding="utf-8")
    with pytest.raises(RegistryError, match="must match"):
        load_registry(p)
    p.write_text('[[source]]\nid = "a"\ndialect = "oracle"\nurl = "x"\n', encoding="utf-8")
    with pytest.raises(RegistryError, match="dialect"):
        load_registry(p)
    with pytest.raises(RegistryError, match="not found"):
        load_registry(tmp_path / "missing.toml")


def test_state_watermarks_are_per_business_date(tmp_path):
    from datetime import date

    state = StateStore(f"sqlite:///{tmp_path / 's.sqlite'}")
    d1, d2 = date(2026, 11, 28), date(2026, 11, 29)
    state.set_watermarks("s", d1, {"persons": datetime(2026, 11, 28, tzinfo=UTC)}, "r1")
    state.set_watermarks("s", d2, {"persons": datetime(2026, 11, 29, tzinfo=UTC)}, "r2")
    # A rerun of d2 starts where d1 ended; the next day starts where d2 ended.
    assert state.watermark("s", "persons", before=d2) == datetime(2026, 11, 28, tzinfo=UTC)
    assert state.watermark("s", "persons", before=date(2026, 11, 30)) == datetime(2026, 11, 29, tzinfo=UTC)
    assert state.watermark("s", "persons", before=d1) is None
    # A source's watermarks together: each table's latest before the date, whatever the others have.
    state.set_watermarks("s", d1, {"projects": datetime(2026, 11, 27, tzinfo=UTC)}, "r1")
    state.set_watermarks("other", d2, {"projects": datetime(2026, 11, 26, tzinfo=UTC)}, "r3")
    for before in (d1, d2, date(2026, 11, 30)):
        assert state.watermarks("s", before=before) == {
            t: w for t in ("persons", "projects", "milestones")
            if (w := state.watermark("s", t, before=before)) is not None
        }
    assert state.watermarks("s", before=date(2026, 11, 30)) == {
        "persons": datetime(2026, 11, 29, tzinfo=UTC), "projects": datetime(2026, 11, 27, tzinfo=UTC)}
