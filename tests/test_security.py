"""Security promises, each tested against the real thing (source code, folders, a real PostgreSQL server,
a real Prefect flow run, real Parquet, real .eml files):

* no SQL is ever assembled from source values: SQLAlchemy constructs or bound parameters only;
* filedrop paths cannot escape their source folder (`../`, symlinks);
* credentials never appear in logs, Prefect artifacts, marts or error messages (a canary password);
* phone and ID-card numbers are masked in every mart and every email.

Covered elsewhere, not repeated here: header and HTML injection and the SMTP password in send errors
(tests/test_mail.py: test_hostile_text_is_escaped_and_cannot_add_headers_or_recipients,
test_password_never_appears_in_errors); masking over hand-made mart inputs (tests/test_marts.py:
test_no_unmasked_pii_in_any_mart; the patterns themselves in tests/test_pii.py); a dated delivery folder that is a symlink out
of the source folder, at the `list_deliveries` level (tests/test_extract.py:
test_filedrop_newest_delivery_once_and_no_escape).
"""

from __future__ import annotations

import ast
import email
import json
import logging
import os
import re
import secrets
import sqlite3
import unicodedata
from datetime import UTC, date, datetime, timedelta
from email import policy
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa

from flows.extract import SourceUnreachable, extract_filedrop, extract_sql, list_deliveries
from flows.registry import RegistryError, Source, load_registry
from simulator import simulate_city
from tests.pg import free_port
from transforms.dialects import native_tables
from warehouse.layout import Layout
from warehouse.marts import MODULES

# These nights run beside other heavy jobs: give Prefect's ephemeral API server time to start.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

ROOT = Path(__file__).resolve().parents[1]
AS_OF = date(2026, 11, 29)
NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)

# --------------------------------------------------------------------------------------------------
# 1. No SQL assembled from strings
# --------------------------------------------------------------------------------------------------

PRODUCTION = ("flows", "transforms", "expectations", "warehouse")
# Calls that take SQL text (SQLAlchemy, DB-API, DuckDB).
SQL_CALLS = {"text", "literal_column", "execute", "executemany", "executescript", "exec_driver_sql", "sql",
             "query"}
# Upper-case SQL keywords in the constant part of a string built at run time: SQL in the making.
SQL_WORDS = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|WHERE|PRAGMA|COPY|TRUNCATE|VALUES|SET)\b")

# (file, enclosing function): why the string built there is safe. Every entry must still match something.
ALLOWED = {
    ("warehouse/analysts.py", "view_sql"):
        "DuckDB view DDL (DuckDB cannot bind parameters in a view definition): the names are our own mart "
        "names from warehouse.marts, quoted by _quote_ident; the glob is our warehouse's path, quoted by "
        "_quote_str. No source value can reach it.",
    ("warehouse/analysts.py", "run_query"):
        "SET TimeZone to a constant of our schema (transforms.schema.TIMESTAMP), quoted by _quote_str "
        "(DuckDB does not bind parameters in SET).",
    ("flows/cli.py", "sample"):
        "not SQL that is run: a hint printed to the analyst (`qingfeng query \"SELECT ...\"`) with a date in it.",
}


def _dynamic(node: ast.AST, dynamic_names: set[str]) -> bool:
    """A string built at run time: an f-string with a placeholder, `+` or `%`, `.format(...)`, a join or a
    name bound to one of these in the same function."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in ("format", "join", "replace")
    return isinstance(node, ast.Name) and node.id in dynamic_names


def _constant_text(node: ast.AST) -> str:
    return " ".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def sql_assembled(source: str) -> list[tuple[int, str, str]]:
    """(line, enclosing function, code) of every SQL call whose SQL is built at run time, and of every string
    built at run time that reads like SQL (wherever it goes next: a variable, a return value)."""
    tree = ast.parse(source)
    found: list[tuple[int, str, str]] = []

    def visit(scope: ast.AST, name: str) -> None:
        dynamic_names: set[str] = set()
        body = list(ast.walk(scope)) if name == "<module>" else [scope, *ast.walk(scope)]
        for node in body:  # names bound to strings built at run time, anywhere in this function
            if isinstance(node, ast.Assign) and _dynamic(node.value, set()):
                dynamic_names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
                dynamic_names.add(node.target.id)
        for node in ast.walk(scope):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
                if called in SQL_CALLS and node.args and _dynamic(node.args[0], dynamic_names):
                    found.append((node.lineno, name, ast.unparse(node)))
            if _dynamic(node, set()) and not isinstance(node, ast.Name) and SQL_WORDS.search(_constant_text(node)):
                found.append((node.lineno, name, ast.unparse(node)))

    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    for fn in functions:
        visit(fn, fn.name)
    # Module level (outside any function): strip the functions and look at the rest.
    module = ast.Module(body=[n for n in tree.body if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef
                                                                     | ast.ClassDef)], type_ignores=[])
    visit(module, "<module>")
    return sorted(set(found))


def test_the_sql_scan_catches_every_way_of_building_sql():
    """The scan below would see it if someone did it: f-string, +, %, .format, a variable, a helper."""
    bad = '''
import sqlalchemy as sa
def a(conn, v): conn.execute(sa.text(f"SELECT * FROM t WHERE id = '{v}'"))
def b(conn, v): conn.exec_driver_sql("SELECT * FROM t WHERE id = " + v)
def c(conn, v):
    q = "DELETE FROM t WHERE id = '%s'" % v
    conn.execute(sa.text(q))
def d(con, v): con.sql("SELECT {} FROM t".format(v))
def e(v): return f"UPDATE t SET x = {v}"
def f(conn, v): conn.execute(sa.select(sa.literal_column(f"x + {v}")))
'''
    assert {fn for _, fn, _ in sql_assembled(bad)} == {"a", "b", "c", "d", "e", "f"}
    good = '''
import sqlalchemy as sa
def ok(conn, t, v):
    conn.execute(sa.select(t.c.x).where(t.c.id == sa.bindparam("v", v)))
    conn.execute(sa.text("SELECT * FROM t WHERE id = :v"), {"v": v})
    log.info(f"pulled {v} rows from the source")
'''
    assert sql_assembled(good) == []


def test_no_sql_is_assembled_from_strings_in_production_code():
    """Every query of the production packages is a SQLAlchemy construct or bound parameters; the few
    strings built at run time that are SQL (DuckDB DDL over our own names) are listed above with why."""
    findings, used = [], set()
    files = [p for pkg in PRODUCTION for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 40
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        for line, fn, code in sql_assembled(path.read_text(encoding="utf-8")):
            if (rel, fn) in ALLOWED:
                used.add((rel, fn))
            else:
                findings.append(f"{rel}:{line} in {fn}: {code[:160]}")
    assert not findings, "SQL built from strings:\n" + "\n".join(findings)
    assert used == set(ALLOWED), f"stale allow-list entries: {set(ALLOWED) - used}"


# --------------------------------------------------------------------------------------------------
# 2. filedrop: nothing outside the source folder is read
# --------------------------------------------------------------------------------------------------

PERSONS_HEADER = "人员编号,姓名,单位代码,职务,手机号码,邮箱,身份证号,更新时间\n"


def _csv(path: Path, rows: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PERSONS_HEADER + rows, encoding="utf-8")


def test_filedrop_reads_nothing_outside_its_folder(tmp_path):
    """A delivery whose files are symlinks out (`../../outside/…` relative, and absolute), a newer dated
    folder that is a symlink out, and a registry id with `../`: nothing outside is read, and the paths the
    pipeline writes are built from ids that cannot hold a `/`."""
    outside = tmp_path / "outside"
    _csv(outside / "人员.csv", "SECRET1,外部人员,U9,,,,,2026-11-28\n")
    _csv(outside / "2026-12-31" / "人员.csv", "SECRET2,外部人员,U9,,,,,2026-11-28\n")
    (outside / "项目.csv").write_text("项目编号,项目名称\nSECRET3,外部项目\n", encoding="utf-8")

    folder = tmp_path / "dept"
    _csv(folder / "2026-11-27" / "人员.csv", "P1,张三,U1,科长,,,,2026-11-26\n")
    newest = folder / "2026-11-28"
    newest.mkdir()
    (newest / "人员.csv").symlink_to(Path("..") / ".." / "outside" / "人员.csv")  # relative, with ../
    (newest / "项目.csv").symlink_to(outside / "项目.csv")  # absolute
    (newest / "单位.csv").symlink_to(folder / "2026-11-27" / "人员.csv")  # another delivery: not this one
    (folder / "2026-12-31").symlink_to(outside / "2026-12-31")  # a newer "delivery" that lives outside
    assert (newest / "人员.csv").read_text(encoding="utf-8").count("SECRET1") == 1  # the links do resolve

    assert list_deliveries(folder) == ["2026-11-27", "2026-11-28"]
    src = Source("dept", "部门", "department", "filedrop", str(folder), None)
    pulled = extract_filedrop(src, loaded=set())
    assert pulled.delivery == "2026-11-28"
    assert {"persons", "projects", "units"} <= set(pulled.missing_tables)
    assert not pulled.tables  # every file of the delivery pointed outside it: none was read
    text = json.dumps({t: f.rows() for t, f in pulled.tables.items()}, ensure_ascii=False)
    assert "SECRET" not in text

    # A file name in the registry can only ever be an id of [a-z0-9_]: no ../ into bronze/silver paths.
    reg = tmp_path / "sources.toml"
    reg.write_text('[[source]]\nid = "../../etc"\ndialect = "filedrop"\nurl = "dept"\n', encoding="utf-8")
    with pytest.raises(RegistryError, match="must match"):
        load_registry(reg)


# --------------------------------------------------------------------------------------------------
# 3. Credentials: a canary password, searched for in every output of a night
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [
    "postgresql+psycopg://reader:{pw}@127.0.0.1:{port}/db",  # refused
    "postgresql+psycopg://reader:at@{pw}@127.0.0.1:{port}/db",  # unescaped @: the parser splits the password
    "postgresql+psycopg://reader:{pw}@127.0.0.1:{port}/db?connect_timeout=soon",  # the driver refuses an option
    "postgresql+nosuchdriver://reader:{pw}@127.0.0.1:{port}/db",  # no such driver
    "postgresql+psycopg://reader:{pw}@[127.0.0.1:{port}/db",  # unparseable
])
def test_extraction_errors_never_carry_the_password(shape):
    """Whatever is wrong with a source URL, the error the night records, logs and emails (and the exception
    chain Prefect prints with it) never shows its password, nor a piece of it."""
    import traceback

    canary = "qfCanary" + secrets.token_hex(4)
    src = Source("s", "s", "district", "platform", shape.format(pw=canary, port=free_port()), None)
    with pytest.raises(Exception) as caught:  # noqa: PT011 — which one depends on the shape; checked below
        extract_sql(src, watermarks={}, overlap=timedelta(days=1), now=NOW)
    shown = "".join(traceback.format_exception(caught.value))
    assert canary not in shown, shown
    assert canary not in repr(src) and canary not in str(src)
    if isinstance(caught.value, SourceUnreachable):
        assert str(caught.value)  # still says what went wrong


def _all_strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_all_strings(k), *_all_strings(v))]
    if isinstance(value, list | tuple | set):
        return [s for v in value for s in _all_strings(v)]
    return [] if value is None else [str(value)]


def _warehouse_texts(root: Path) -> dict[str, str]:
    """Every file under the warehouse as text: Parquet decoded, SQLite dumped (and its raw bytes), the
    rest as bytes read as UTF-8."""
    out: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        raw = path.read_bytes().decode("utf-8", errors="replace")
        if path.suffix == ".parquet":
            out[str(path)] = "\n".join(_all_strings(pl.read_parquet(path).rows()))
        elif path.suffix == ".sqlite":
            con = sqlite3.connect(path)
            try:
                out[str(path)] = "\n".join(con.iterdump()) + raw
            finally:
                con.close()
        else:
            out[str(path)] = raw
    return out


def _prefect_texts(flow_run_id) -> tuple[dict[str, str], list[str]]:
    """The flow run's artifacts, logs, task run states and parameters as stored by the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)  # the logs still queued for the API
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    texts = {
        "flow run": json.dumps(run.model_dump(mode="json"), ensure_ascii=False),
        "artifacts": json.dumps([a.model_dump(mode="json") for a in artifacts], ensure_ascii=False),
        "logs": "\n".join(log.message for log in logs),
        "task runs": json.dumps([t.model_dump(mode="json") for t in tasks], ensure_ascii=False),
    }
    return texts, [a.data for a in artifacts]


def _pg_role_with_password(pg_server, role: str, password: str):
    """A login role that must give its password (scram) over TCP, on the session's server; returns a
    function that puts pg_hba.conf back."""
    from psycopg import sql

    admin = sa.create_engine(pg_server.url, isolation_level="AUTOCOMMIT")
    hba = pg_server.data_dir / "pg_hba.conf"
    original = hba.read_text()
    with admin.connect() as c:
        raw = c.connection.dbapi_connection
        exists = c.execute(sa.select(sa.literal(1)).select_from(sa.table("pg_roles", sa.column("rolname")))
                           .where(sa.column("rolname") == role)).first()
        verb = "ALTER" if exists else "CREATE"
        # SUPERUSER: the simulator drops and recreates databases named after source ids, which earlier tests
        # on this session's server may have created as another owner.
        raw.execute(sql.SQL(verb + " ROLE {} LOGIN SUPERUSER PASSWORD {}").format(sql.Identifier(role),
                                                                                    sql.Literal(password)))
        hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + original)
        c.execute(sa.select(sa.func.pg_reload_conf()))

    def restore() -> None:
        hba.write_text(original)
        with admin.connect() as c:
            c.execute(sa.select(sa.func.pg_reload_conf()))
        admin.dispose()

    return restore


def test_a_canary_password_appears_in_no_output_of_a_night(pg_server, tmp_path, monkeypatch, caplog, capfd):
    """A night where PostgreSQL sources log in with a canary password (in the URL, and in PGPASSWORD), where
    four more sources carry it in URLs that cannot work (a database that does not exist, a closed port, a
    wrong password, a password with an unescaped `@`), and where the SMTP password is the canary and the
    SMTP server is down. Then the canary is searched for in: every file of the warehouse (Parquet decoded,
    Data Docs, the state database dumped: run records, outbox rows, watermarks), the flow run's Prefect
    artifacts, logs, task run states and parameters (and Prefect's own database files), the Python logs,
    stdout and stderr (progress lines, the CLI's summary and `qingfeng status`). It is nowhere."""
    from typer.testing import CliRunner

    from flows import cli, progress
    from flows.nightly import run_nightly
    from flows.state import StateStore

    canary = "qfCanary" + secrets.token_hex(6)
    role = "qf_canary"
    restore = _pg_role_with_password(pg_server, role, canary)
    try:
        port = pg_server.port
        city = tmp_path / "city"
        simulate_city(city, sources=6, projects_per_source=8, seed=11, as_of=AS_OF,
                      pg_url=f"postgresql+psycopg://{role}:{canary}@127.0.0.1:{port}/postgres")
        registry = load_registry(city / "sources.toml")
        pg_ok = [s for s in registry.sources if s.url.startswith("postgresql") and "_offline" not in s.url]
        assert pg_ok and all(canary in s.url for s in pg_ok)
        db = sa.engine.make_url(pg_ok[0].url).database
        bad = {
            "pw_env": f"postgresql+psycopg://{role}@127.0.0.1:{port}/{db}",  # works: password from PGPASSWORD
            "closed_port": f"postgresql+psycopg://{role}:{canary}@127.0.0.1:{free_port()}/{db}",
            "wrong_pw": f"postgresql+psycopg://{role}:{canary}-wrong@127.0.0.1:{port}/{db}",
            "unescaped_at": f"postgresql+psycopg://{role}:at@{canary}@127.0.0.1:{port}/{db}",
        }
        with (city / "sources.toml").open("a", encoding="utf-8") as f:
            for sid, url in bad.items():
                f.write(f'\n[[source]]\nid = "{sid}"\nkind = "department"\ndialect = "platform"\nurl = "{url}"\n'
                        f'steward_email = "data@{sid}.example.cn"\n')
        monkeypatch.setenv("PGPASSWORD", canary)
        monkeypatch.setenv("QINGFENG_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("QINGFENG_SMTP_PORT", str(free_port()))  # nothing listens: the server is down
        monkeypatch.setenv("QINGFENG_SMTP_SECURITY", "none")
        monkeypatch.setenv("QINGFENG_SMTP_USER", "qingfeng")
        monkeypatch.setenv("QINGFENG_SMTP_PASSWORD", canary)
        monkeypatch.delenv("QINGFENG_SMTP_PASSWORD_BLOCK", raising=False)

        # Every log record, whatever its level: Prefect's loggers do not propagate to the root logger.
        caplog.set_level(logging.DEBUG, logger="qingfeng")
        caplog.set_level(logging.DEBUG, logger="prefect")
        caplog.set_level(logging.INFO, logger="sqlalchemy")  # statements and pool events
        prefect_logger = logging.getLogger("prefect")
        prefect_logger.addHandler(caplog.handler)
        wh = tmp_path / "wh"
        ids = [s.id for s in load_registry(city / "sources.toml").sources]
        try:
            with progress.showing(ids, rich=False):  # the plain progress lines, on stderr
                state = run_nightly(city / "sources.toml", wh, AS_OF, max_workers=3, return_state=True)
            result = state.result()
            cli._print_night(result, wh)  # what `qingfeng run` prints at the end
            status = CliRunner().invoke(cli.app, ["status", "--warehouse", str(wh)])
        finally:
            prefect_logger.removeHandler(caplog.handler)
        flow_run_id = state.state_details.flow_run_id
    finally:
        restore()

    # The night did what the test needs: the canary sources connected, the broken ones failed with errors,
    # and the mail server was tried.
    assert result.outcomes["pw_env"].status == "ok"
    assert all(result.outcomes[s.id].status == "ok" for s in pg_ok)
    failed = set(result.failed_sources)
    assert {"closed_port", "wrong_pw", "unescaped_at"} <= failed
    errors = {sid: result.outcomes[sid].error for sid in failed}
    assert "password authentication failed" in errors["wrong_pw"]
    assert "Connection refused" in errors["closed_port"] or "connection failed" in errors["closed_port"]
    assert "resolve host" in errors["unescaped_at"] and "***" in errors["unescaped_at"]
    store = StateStore(Layout(wh).state_url)
    messages = [r["message"] or "" for r in store.run_records(result.run_id)]
    with store.engine.connect() as c:
        outbox = [dict(r._mapping) for r in c.execute(sa.text(
            "SELECT subject, body_text, body_html, last_error FROM outbox_messages"))]
    store.dispose()
    assert any("password authentication failed" in m for m in messages)
    assert outbox and all("cannot reach SMTP server" in (r["last_error"] or "") for r in outbox)
    assert status.exit_code == 1 and "unescaped_at" in status.output

    # Where the canary is searched for, each with something in it (so that "not found" means something).
    texts: dict[str, str] = {}
    texts.update(_warehouse_texts(wh))
    prefect, artifacts = _prefect_texts(flow_run_id)
    texts.update({f"prefect {k}": v for k, v in prefect.items()})
    for path in Path(os.environ["PREFECT_HOME"]).rglob("*"):  # Prefect's database, WAL included
        if path.is_file():
            texts[f"prefect home {path}"] = path.read_bytes().decode("utf-8", errors="replace")
    texts["outbox rows"] = json.dumps(outbox, ensure_ascii=False)
    texts["run records"] = "\n".join(messages)
    texts["errors"] = json.dumps(errors, ensure_ascii=False)
    texts["mail summary"] = "\n".join(result.mail.errors) if result.mail else ""
    texts["log records"] = caplog.text + "\n".join(
        f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    out, err = capfd.readouterr()
    texts["stdout"], texts["stderr"], texts["qingfeng status"] = out, err, status.output
    assert any(name.endswith(".parquet") for name in texts) and any("/docs/" in name for name in texts)
    assert artifacts and "unescaped_at" in artifacts[0] and "Completed with failures" in artifacts[0]
    assert "password authentication failed" in texts["prefect logs"] + texts["log records"]
    assert "unescaped_at" in err and "resolve host" in err  # the progress lines and Prefect's console
    # every source's task run logged (finishing, or failing), so the logs were captured
    assert all(any(f"source-{sid}" in r.getMessage() or f"source-{sid}" in str(getattr(r, "task_run_name", ""))
                   for r in caplog.records) for sid in ids), [r.getMessage() for r in caplog.records][:20]
    leaks = {name: text[max(0, text.find(canary) - 120): text.find(canary) + 60]
             for name, text in texts.items() if canary in text}
    assert not leaks, leaks


# --------------------------------------------------------------------------------------------------
# 4. Phone and ID-card numbers: masked in every mart and every email
# --------------------------------------------------------------------------------------------------

PHONE = "13912345678"
PHONE_FULLWIDTH = "１３７１２３４５６７８"  # contract §6: any text may hold full-width digits
PHONE_IN_ID = "13698765432"
ID_CARD = "11010119900307123X"
ID_CARD_LOWER = "51010719850615432x"
ID_CARD_FULLWIDTH = "３２０１０２１９７９０１０１２３４Ｘ"
PHONE_WRITTEN = "+86 158-1234-9876"  # a country prefix, the groups split by a space and hyphens
ID_CARD_15 = "320102790101234"  # first generation: area, YYMMDD, sequence
_UNMASKED_PHONE = re.compile(r"(?<![0-9A-Za-z])1[3-9][0-9][- ]?[0-9]{4}[- ]?[0-9]{4}(?![0-9A-Za-z])")
_UNMASKED_ID = re.compile(r"(?<![0-9A-Za-z])(?:[0-9]{17}[0-9Xx]|[1-8][0-9]{14})(?![0-9A-Za-z])")
# What the planted numbers look like masked (full-width digits stay full-width).
MASKED = ("139****5678", "１３７****５６７８", "110101********123X", "510107********432x",
          "３２０１０２********２３４Ｘ", "+86 158-****-9876", "320102******234")


def _unmasked(text: str) -> list[str]:
    """Phone and ID-card numbers in `text`, full-width digits read as digits."""
    norm = unicodedata.normalize("NFKC", text)
    return _UNMASKED_PHONE.findall(norm) + _UNMASKED_ID.findall(norm)


# canonical table -> {canonical column: (text put before, text put after)}
PLANT = {
    "projects": {"title": ("", f"（联系人电话{PHONE}，备用{PHONE_FULLWIDTH}，{PHONE_WRITTEN}）")},
    "units": {"unit_name": ("", f"（法人身份证{ID_CARD}）")},
    "persons": {"name": ("", f"（身份证{ID_CARD_FULLWIDTH}）")},
    "problems": {"description": (f"举报人身份证{ID_CARD_LOWER}，电话{PHONE}，旧身份证{ID_CARD_15}：", ""),
                 # a hotline ticket id that carries the caller's number
                 "problem_id": (f"RX-{PHONE_IN_ID}-", "")},
    "stage_reports": {"summary": ("", f" 联系电话：{PHONE}，{PHONE_WRITTEN}；经办人旧身份证{ID_CARD_15}")},
}


def _plant_sqlite(path: Path, dialect: str) -> None:
    tables = native_tables(dialect)
    con = sqlite3.connect(path)
    try:
        present = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, columns in PLANT.items():
            native = tables[table]
            if native.native not in present:  # the source with a missing table (C1)
                continue
            for column, (before, after) in columns.items():
                col = native.reverse[column]  # test data: names from our own dialect map
                con.execute(f"UPDATE {native.native} SET {col} = ? || coalesce({col}, '') || ?", (before, after))
        con.commit()
    finally:
        con.close()


def _plant_filedrop(folder: Path) -> None:
    from flows.extract import decode_bytes

    tables = native_tables("filedrop")
    newest = sorted(p for p in folder.iterdir() if p.is_dir())[-1]
    for table, columns in PLANT.items():
        native = tables[table]
        path = newest / native.native
        if not path.exists():  # the source with a missing table (C1)
            continue
        data = path.read_bytes()
        frame = pl.read_csv(decode_bytes(data).encode("utf-8"), infer_schema=False)
        frame = frame.with_columns(
            (pl.lit(before) + pl.col(native.reverse[c]).fill_null("") + pl.lit(after)).alias(native.reverse[c])
            for c, (before, after) in columns.items())
        text = frame.write_csv()
        bom = data.startswith(b"\xef\xbb\xbf")
        path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8") if bom else text.encode("gb18030"))


def test_phone_and_id_numbers_are_masked_in_every_mart_and_email(tmp_path):
    """Phone and ID-card numbers planted in every kind of source (SQLite platform and legacy, filedrop) —
    in project titles, unit and person names, problem descriptions and ids, report summaries, as well as
    the persons' own phone and ID-card columns — half-width, full-width, with X or x: every mart column and
    every email (subject, recipient name, plain text and HTML) shows them masked, never whole."""
    from flows.nightly import run_nightly

    city = tmp_path / "city"
    simulate_city(city, sources=6, projects_per_source=12, seed=11, as_of=AS_OF)
    registry = load_registry(city / "sources.toml")
    planted = set()
    for s in registry.sources:
        if s.url.startswith("sqlite") and "_offline" not in s.url:
            _plant_sqlite(Path(sa.engine.make_url(s.url).database), s.dialect)
            planted.add(s.dialect)
        elif s.is_filedrop:
            _plant_filedrop(Path(s.url))
            planted.add("filedrop")
    assert planted == {"platform", "legacy", "filedrop"}

    wh, outbox = tmp_path / "wh", tmp_path / "eml"
    result = run_nightly(city / "sources.toml", wh, AS_OF, max_workers=3, dry_run_mail=outbox)
    layout = Layout(wh)

    # The planted numbers did get into silver (so the checks below are not vacuous) ...
    silver_text = "\n".join(s for p in layout.silver.rglob("*.parquet")
                            for s in _all_strings(pl.read_parquet(p).rows()))
    for raw in (PHONE, PHONE_FULLWIDTH, ID_CARD, ID_CARD_LOWER, ID_CARD_FULLWIDTH, PHONE_IN_ID, PHONE_WRITTEN,
                ID_CARD_15):
        assert raw in silver_text or unicodedata.normalize("NFKC", raw) in silver_text, raw

    # ... every mart column shows them masked only
    mart_text = []
    for name in MODULES:
        frame = pl.read_parquet(layout.mart_partition(name, AS_OF))
        assert frame.height == result.mart_rows[name]
        for column in frame.columns:
            for value in _all_strings(frame[column].to_list()):
                assert not _unmasked(value), (name, column, value)
                mart_text.append(value)
    joined = "\n".join(mart_text)
    for masked in MASKED:
        assert masked in joined, masked

    # ... and so does every email, every part of it
    files = sorted(outbox.glob("*.eml"))
    assert len(files) == result.mail.raised > 5
    bodies = []
    for path in files:
        msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        parts = [msg["Subject"], *(a.display_name for a in msg["To"].addresses),
                 msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content()]
        for part in parts:
            assert not _unmasked(part), (path.name, part)
        bodies.append("\n".join(parts))
    mails = "\n".join(bodies)
    assert "139****5678" in mails and "１３７****５６７８" in mails and "110101********123X" in mails
    assert "RX-136****5432-" in mails  # the digest lists an overdue problem by its id
