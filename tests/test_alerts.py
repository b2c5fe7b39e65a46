"""Alerts without a mail server: which alerts are raised (pure), the outbox (exactly once, retries,
digests), the alerts mart from the outbox, .eml dry runs and the SMTP settings."""

from __future__ import annotations

import email
import json
from datetime import date, datetime, timedelta
from email import policy
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa

from expectations.catalog import FLAG_SCHEMA
from expectations.deadline import deadline_flags
from flows import mail, outbox
from flows.state import StateStore
from transforms import alerts as raise_
from transforms.schema import QUARANTINE_SCHEMA, TABLES, TIMESTAMP
from warehouse.marts import SOURCES_SCHEMA, MartInputs
from warehouse.marts import alerts as alerts_mart

AS_OF = date(2026, 11, 20)
SUPERVISION = "duban@jw.example.cn"
STEWARD = "steward@s1.example.cn"
SENDER = "qingfeng@jw.example.cn"
HOSTILE_TITLE = "<script>alert('x')</script>整治项目\r\nBcc: evil@evil.example"
HOSTILE_NAME = "李四\r\nBcc: evil@evil.example"


def frame(table: str, rows: list[dict]) -> pl.DataFrame:
    schema = TABLES[table].schema
    plain = {c: (pl.Datetime("us") if t == TIMESTAMP else t) for c, t in schema.items()}
    df = pl.DataFrame([{c: r.get(c) for c in schema} for r in rows], schema=plain, orient="row")
    return df.with_columns(pl.col(c).dt.replace_time_zone(TIMESTAMP.time_zone)
                           for c, t in schema.items() if t == TIMESTAMP)


def silver(as_of: date = AS_OF) -> dict[str, pl.DataFrame]:
    upd = datetime(2026, 11, 1, 12)
    d = lambda n: as_of + timedelta(days=n)  # noqa: E731
    units = frame("units", [
        {"source_id": "s1", "unit_code": "U1", "unit_name": "一区", "unit_kind": "district"},
        {"source_id": "s1", "unit_code": "U2", "unit_name": "<b>二区</b>", "unit_kind": "district"},
    ])
    persons = frame("persons", [
        {"source_id": "s1", "person_id": "A", "name": "张三", "email": "a@s1.example.cn", "phone": "13812345678",
         "id_card": "11010119900307123X", "updated_at": upd},
        {"source_id": "s1", "person_id": "B", "name": HOSTILE_NAME, "email": "b@s1.example.cn", "updated_at": upd},
        {"source_id": "s1", "person_id": "C", "name": "王五", "email": None, "updated_at": upd},
        {"source_id": "s1", "person_id": "D", "name": "赵六", "email": "d@s1.example.cn\r\nBcc: evil@evil.example",
         "updated_at": upd},
    ])
    projects = frame("projects", [
        {"source_id": "s1", "project_id": p, "project_code": f"XM-{p}", "title": title, "unit_code": unit,
         "owner_id": owner, "leader_id": leader, "status": "in_progress", "updated_at": upd}
        for p, title, unit, owner, leader in (
            ("P1", "减负项目 13812345678", "U1", "A", "B"), ("P2", "项目二", "U1", "C", None),
            ("P3", "项目三", "U2", "D", "A"), ("P4", HOSTILE_TITLE, "U2", "B", "A"),
        )
    ])
    milestones = frame("milestones", [
        {"source_id": "s1", "milestone_id": m, "project_id": p, "stage": stage, "due_date": d(n), "updated_at": upd}
        for m, p, stage, n in (
            ("M1", "P1", "implementation", 5), ("M2", "P2", "acceptance", 1), ("M3", "P3", "initiation", 3),
            ("M4", "P4", "interim_result", 6), ("M5", "P1", "initiation", -4), ("M6", "P3", "acceptance", -30),
        )
    ])
    problems = frame("problems", [
        {"source_id": "s1", "problem_id": "Q1", "unit_code": "U1", "origin": "inspection", "category": "A01",
         "description": "<img src=x onerror=alert(1)>材料堆砌", "found_at": d(-60), "deadline": d(-10),
         "owner_id": "A", "status": "open", "updated_at": upd},
    ])
    return {"units": units, "persons": persons, "projects": projects, "milestones": milestones,
            "problems": problems}


def sources() -> pl.DataFrame:
    return pl.DataFrame([("s1", "一号源<i>", "district", "postgres", STEWARD, False),
                         ("s2", "二号源", "department", "filedrop", None, False)], schema=SOURCES_SCHEMA, orient="row")


def contract_flags() -> pl.DataFrame:
    return pl.DataFrame([
        ("s1", "C3", "contract", "person", "C", "warning", json.dumps({"phone": "13812345678", "column": "email"})),
        ("s1", "C1", "contract", "source", "s1", "critical", json.dumps({"problems": ["table x missing"]})),
        ("s2", "C3", "contract", "project", "P9", "info", "{}"),
    ], schema=FLAG_SCHEMA, orient="row")


def quarantine() -> pl.DataFrame:
    return pl.DataFrame([("s1", "persons", "Z1", "missing required name", '{"phone": "13812345678"}')],
                        schema=QUARANTINE_SCHEMA, orient="row")


def night_inputs(as_of: date = AS_OF):
    s = silver(as_of)
    flags = pl.concat([deadline_flags(s, as_of), contract_flags()])
    night = outbox.NightContext(as_of=as_of, supervision_email=SUPERVISION, sender=SENDER,
                                docs_index=Path("/wh/docs/index.html"), quarantine_dir=Path("/wh/quarantine"))
    return night, flags, s, sources(), quarantine()


@pytest.fixture
def engine(tmp_path):
    store = StateStore(f"sqlite:///{tmp_path / 'state.sqlite'}")
    yield store.engine
    store.dispose()


def run(engine, as_of=AS_OF, dry_run: Path | None = None, monkeypatch=None):
    night, flags, s, src, q = night_inputs(as_of)
    return outbox.night_alerts(engine, night, flags, s, src, q, dry_run_mail=dry_run)


def messages(engine) -> list[dict]:
    with engine.connect() as c:
        return [dict(r._mapping) for r in c.execute(sa.select(outbox.messages).order_by(outbox.messages.c.message_id))]


# ---------------------------------------------------------------------------------------------- pure


def test_reminders_thresholds_and_routing():
    night, flags, s, src, _ = night_inputs()
    got = {i["entity_id"]: i for i in raise_.due_soon(AS_OF, flags, s, src, SUPERVISION)}
    assert set(got) == {"M1", "M2", "M3", "M4"}
    assert (got["M1"]["threshold"], got["M1"]["recipient"], got["M1"]["recipient_role"]) == (7, "a@s1.example.cn", "owner")
    assert got["M2"]["threshold"] == 1  # due tomorrow
    # no address, or an address that is not one: the steward, with a note saying why
    assert (got["M2"]["recipient"], got["M2"]["recipient_role"]) == (STEWARD, "steward")
    assert "无邮箱地址" in got["M2"]["note"]
    assert (got["M3"]["recipient"], got["M3"]["recipient_role"]) == (STEWARD, "steward")
    assert "邮箱地址无效" in got["M3"]["note"]
    assert got["M1"]["title"] == "减负项目 138****5678"  # PII masked before it reaches any email


def test_reminder_keys_per_milestone_and_threshold():
    a = raise_.alert_key("due_soon", "s1", "milestone", "M1", 7)
    assert a == raise_.alert_key("due_soon", "s1", "milestone", "M1", 7)
    assert a != raise_.alert_key("due_soon", "s1", "milestone", "M1", 1)
    # the same milestone 5 days and 2 days before: the same 7-day reminder; the day before: a new one
    keys = set()
    for days in (5, 2, 1):
        as_of = AS_OF - timedelta(days=days - 5)
        s = silver(AS_OF)
        flags = deadline_flags(s, as_of)
        keys |= {i["alert_id"] for i in raise_.due_soon(as_of, flags, s, sources()) if i["entity_id"] == "M1"}
    assert len(keys) == 2


def test_overdue_items_with_unit_owner_and_leader():
    _, flags, s, _, _ = night_inputs()
    items = {i["entity_id"]: i for i in raise_.overdue(AS_OF, flags, s)}
    assert set(items) == {"M5", "M6", "Q1"}
    assert (items["M5"]["kind"], items["M5"]["days_overdue"], items["M5"]["owner_name"], items["M5"]["unit_name"]) == (
        "overdue", 4, "张三", "一区")
    assert items["M5"]["leader_name"] == "李四 Bcc: evil@evil.example"  # one line
    assert (items["Q1"]["kind"], items["Q1"]["days_overdue"], items["Q1"]["owner_name"]) == ("problem_overdue", 10, "张三")
    assert items["M6"]["alert_id"] == raise_.alert_key("overdue", "s1", "milestone", "M6")


def test_data_quality_counts_examples_and_only_new_flags():
    _, flags, _, src, q = night_inputs()
    dq = {i["source_id"]: i for i in raise_.data_quality(AS_OF, flags, q, src, SUPERVISION)}
    assert dq["s1"]["flags_by_rule"] == {"C1": 1, "C3": 1} and dq["s1"]["quarantined"] == 1
    assert dq["s1"]["examples"][0]["rule_id"] == "C1"  # the worst first
    assert "13812345678" not in json.dumps(dq["s1"], ensure_ascii=False)
    assert dq["s1"]["recipient"] == STEWARD
    assert (dq["s2"]["recipient"], dq["s2"]["recipient_role"]) == (SUPERVISION, "supervision")  # no steward
    contract = flags.filter(pl.col("family") == "contract")
    seen = set(raise_.flag_keys(contract))
    again = raise_.data_quality(AS_OF, flags, None, src, SUPERVISION, seen=seen)
    assert again == []  # nothing new, nothing quarantined: no email


@pytest.mark.parametrize("value,ok", [
    ("a@b.example.cn", True), ("data@shi_renshe.example.cn", True), ("root@localhost", True),
    ("a@b.cn\r\nBcc: x@y.cn", False), ("a@b.cn\n", True), ("张三 <a@b.cn>", False), ("a@b.cn, c@d.cn", False),
    ("", False), (None, False), ("a@@b.cn", False), ("-a@b.cn", False),
])
def test_strict_addresses(value, ok):
    v = raise_.valid_email(value)
    assert (v is not None) == ok
    if v is not None:
        assert "\n" not in v and "\r" not in v


# ---------------------------------------------------------------------------------------------- outbox


def test_no_smtp_host_keeps_everything_pending(engine, monkeypatch):
    monkeypatch.delenv("QINGFENG_SMTP_HOST", raising=False)
    frame_, summary = run(engine)
    assert summary.transport is None and summary.sent == 0
    assert summary.raised == summary.pending == len(messages(engine)) > 0
    assert "no SMTP host" in summary.line()
    assert all(m["status"] == "pending" and m["attempts"] == 0 for m in messages(engine))
    assert frame_["sent_at"].is_null().all()


def test_dry_run_writes_eml_once_and_the_mart_shows_sent_at(engine, tmp_path):
    out = tmp_path / "outbox"
    frame1, s1 = run(engine, dry_run=out)
    files = sorted(out.glob("*.eml"))
    kinds = sorted(f.name.split("-")[3] for f in files)
    # 4 reminders (M1..M4), 1 digest (M5, M6, Q1), 2 data-quality reports (s1, s2)
    assert kinds == ["data_quality"] * 2 + ["digest"] + ["reminder"] * 4
    assert (s1.raised, s1.sent, s1.failed, s1.pending) == (7, 7, 0, 0)
    frame2, s2 = run(engine, dry_run=out)  # the same night again
    assert (s2.raised, s2.sent) == (0, 0)
    assert sorted(out.glob("*.eml")) == files
    mart = alerts_mart.build(MartInputs(as_of=AS_OF, silver={}, flags=pl.DataFrame(schema=FLAG_SCHEMA),
                                        outbox=frame2))
    assert mart.height == 4 + 3 + 2
    assert mart["sent_at"].is_not_null().all() and mart["raised_at"].is_not_null().all()
    assert (mart["status"] == "sent").all()
    assert str(mart["sent_at"].dtype) == str(TIMESTAMP)
    assert set(mart["kind"]) == {"due_soon", "overdue", "problem_overdue", "data_quality"}
    digest = mart.filter(pl.col("kind") != "due_soon", pl.col("kind") != "data_quality")
    assert digest["message_id"].n_unique() == 1 and digest["recipient"].unique().to_list() == [SUPERVISION]
    eml = email.message_from_bytes(files[0].read_bytes(), policy=policy.default)
    assert eml.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in eml.iter_parts()] == ["text/plain", "text/html"]


def test_next_night_digest_marks_only_new_items(engine, tmp_path):
    run(engine, dry_run=tmp_path / "o")
    nxt = AS_OF + timedelta(days=1)
    night, flags, s, src, q = night_inputs(AS_OF)  # the same data one day later: M1 etc. one day closer
    night = outbox.NightContext(as_of=nxt, supervision_email=SUPERVISION, sender=SENDER)
    # a milestone newly overdue tonight
    s["milestones"] = s["milestones"].with_columns(
        due_date=pl.when(pl.col("milestone_id") == "M2").then(pl.lit(AS_OF)).otherwise(pl.col("due_date")))
    flags = pl.concat([deadline_flags(s, nxt), contract_flags()])
    frame_, summary = outbox.night_alerts(engine, night, flags, s, src, q, dry_run_mail=tmp_path / "o")
    tonight = frame_.filter(pl.col("item_as_of") == nxt, pl.col("message_kind") == "digest")
    new = dict(zip(tonight["entity_id"], tonight["is_new"], strict=True))
    assert new == {"M2": True, "M5": False, "M6": False, "Q1": False}
    digest = sorted((tmp_path / "o").glob(f"{nxt}-digest-*.eml"))[0]
    text = email.message_from_bytes(digest.read_bytes(), policy=policy.default).get_body(("plain",)).get_content()
    assert "新增 1 项" in text and text.count("【新】") == 2  # the legend and M2
    # the contract flags were reported last night: only the quarantined row is new for s1, nothing for s2
    dq = frame_.filter(pl.col("item_as_of") == nxt, pl.col("kind") == "data_quality")
    assert dq["source_id"].to_list() == ["s1"]
    assert json.loads(dq["detail"][0])["flags"] == 0


def test_a_pending_digest_is_superseded_by_the_next(engine, tmp_path, monkeypatch):
    monkeypatch.delenv("QINGFENG_SMTP_HOST", raising=False)
    run(engine)  # nothing sent
    run(engine, as_of=AS_OF + timedelta(days=1), dry_run=tmp_path / "o")
    digests = [m for m in messages(engine) if m["kind"] == "digest"]
    assert sorted(m["status"] for m in digests) == ["sent", "superseded"]
    assert len(list((tmp_path / "o").glob("*-digest-*.eml"))) == 1


def test_a_state_database_from_before_the_indexes_gets_them_and_digests_are_found_through_them(engine, tmp_path):
    with engine.begin() as c:  # as a state database made before the indexes were
        c.exec_driver_sql("DROP INDEX outbox_messages_by_status")
        c.exec_driver_sql("DROP INDEX outbox_items_by_message")
    run(engine, dry_run=tmp_path / "o")  # sends tonight's digest
    indexes = {i["name"]: i["column_names"] for t in ("outbox_messages", "outbox_items")
               for i in sa.inspect(engine).get_indexes(t)}
    assert indexes["outbox_messages_by_status"] == ["status", "kind", "as_of"]
    assert indexes["outbox_items_by_message"] == ["message_id"]
    # The next night asks which alerts went out in a digest: from the sent digests to their items, not
    # every item to its digest (whose status SQLite reads through the digest's whole HTML each time).
    nxt = AS_OF + timedelta(days=1)
    statement = outbox.sent_digest_alerts(nxt).compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as c:
        plan = [r[-1] for r in c.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}")]
        sent = set(c.execute(outbox.sent_digest_alerts(nxt)).scalars())
    assert "outbox_messages_by_status" in plan[0] and "outbox_items_by_message" in plan[1], plan
    digest_items = {m["message_id"] for m in messages(engine) if m["kind"] == "digest" and m["status"] == "sent"}
    with engine.connect() as c:
        carried = set(c.execute(sa.select(outbox.items.c.alert_id)
                                .where(outbox.items.c.message_id.in_(digest_items))).scalars())
    assert sent == carried and sent


def test_no_address_anywhere_stays_pending_and_is_reported(engine, tmp_path):
    night, flags, s, _, q = night_inputs()
    src = sources().with_columns(steward_email=pl.lit(None, dtype=pl.String))
    night = outbox.NightContext(as_of=AS_OF, supervision_email=None, sender=SENDER)
    _, summary = outbox.night_alerts(engine, night, flags, s, src, q, dry_run_mail=tmp_path / "o")
    assert summary.failed > 0 and summary.pending == summary.failed
    stuck = [m for m in messages(engine) if m["status"] == "pending"]
    assert stuck and all(m["recipient"] is None and "no recipient" in m["last_error"] for m in stuck)
    assert any("no recipient" in e for e in summary.errors)


def test_mart_without_outbox_is_pending_from_flags():
    _, flags, s, src, _ = night_inputs()
    mart = alerts_mart.build(MartInputs(as_of=AS_OF, silver=s, flags=flags, sources=src,
                                        supervision_email=SUPERVISION))
    assert mart["sent_at"].is_null().all() and (mart["status"] == "pending").all()
    assert list(mart.columns) == list(alerts_mart.COLUMNS)
    assert mart.filter(pl.col("kind") == "due_soon").height == 4
    assert "13812345678" not in mart.write_csv()


# ---------------------------------------------------------------------------------------------- rendering


def test_html_escapes_source_values_and_headers_stay_single_line(engine, tmp_path):
    run(engine, dry_run=tmp_path / "o")
    for f in (tmp_path / "o").glob("*.eml"):
        raw = f.read_bytes()
        msg = email.message_from_bytes(raw, policy=policy.default)
        html = msg.get_body(("html",)).get_content()
        assert "<script>" not in html and "<img" not in html and "<b>二区" not in html
        head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
        assert "Bcc" not in head and "evil" not in head
        for name, value in msg.items():
            assert "\n" not in str(value) and "\r" not in str(value), name
    p4 = [f for f in (tmp_path / "o").glob("*-reminder-*.eml")
          if "整治项目" in email.message_from_bytes(f.read_bytes(), policy=policy.default)["Subject"]]
    assert len(p4) == 1
    msg = email.message_from_bytes(p4[0].read_bytes(), policy=policy.default)
    assert msg["To"].addresses[0].addr_spec == "b@s1.example.cn"
    assert msg["To"].addresses[0].display_name == "李四 Bcc: evil@evil.example"  # one harmless line
    assert "&lt;script&gt;" in msg.get_body(("html",)).get_content()


def test_build_message_refuses_hostile_addresses():
    kw = {"sender": SENDER, "recipient_name": "x", "subject": "s", "text": "t", "html": "<p>t</p>"}
    with pytest.raises(mail.MailError, match="refused recipient"):
        mail.build_message(recipient="a@b.cn\r\nBcc: evil@evil.example", **kw)
    with pytest.raises(mail.MailError, match="refused recipient"):
        mail.build_message(recipient="a@b.cn, evil@evil.example", **kw)
    msg = mail.build_message(recipient="a@b.cn", **{**kw, "subject": "标题\r\nBcc: evil@evil.example"})
    assert msg["Subject"] == "标题 Bcc: evil@evil.example" and msg["Bcc"] is None


# ---------------------------------------------------------------------------------------------- settings


def test_smtp_settings_from_environment():
    assert mail.smtp_config({}) is None
    c = mail.smtp_config({"QINGFENG_SMTP_HOST": "mail.example", "QINGFENG_SMTP_SECURITY": "ssl",
                          "QINGFENG_SMTP_USER": "u", "QINGFENG_SMTP_PASSWORD": "hunter2"})
    assert (c.host, c.port, c.security, c.user, c.password) == ("mail.example", 465, "ssl", "u", "hunter2")
    assert "hunter2" not in repr(c) and "hunter2" not in str(c)
    assert mail.smtp_config({"QINGFENG_SMTP_HOST": "h", "QINGFENG_SMTP_SECURITY": "starttls"}).port == 587
    assert mail.smtp_config({"QINGFENG_SMTP_HOST": "h", "QINGFENG_SMTP_PORT": "2525"}).port == 2525
    with pytest.raises(mail.MailError):
        mail.smtp_config({"QINGFENG_SMTP_HOST": "h", "QINGFENG_SMTP_SECURITY": "tls13"})


def test_password_from_a_prefect_secret_block(monkeypatch):
    monkeypatch.setattr(mail, "_secret_block", lambda name: {"qingfeng-smtp": "from-block"}[name])
    c = mail.smtp_config({"QINGFENG_SMTP_HOST": "h", "QINGFENG_SMTP_PASSWORD_BLOCK": "qingfeng-smtp"})
    assert c.password == "from-block"


def test_security_picks_the_smtplib_class():
    import smtplib

    assert mail.smtp_class("ssl") is smtplib.SMTP_SSL
    assert mail.smtp_class("starttls") is smtplib.SMTP
    assert mail.smtp_class("none") is smtplib.SMTP
    with pytest.raises(mail.MailError):
        mail.smtp_class("bogus")


def test_starttls_is_negotiated(monkeypatch):
    calls = []

    class FakeSMTP:
        def __init__(self, host, port, timeout):
            calls.append(("connect", host, port))

        def ehlo(self):
            calls.append("ehlo")

        def starttls(self, context):
            calls.append("starttls")

        def login(self, user, password):
            calls.append(("login", user))

        def quit(self):
            pass

    monkeypatch.setattr(mail.smtplib, "SMTP", FakeSMTP)
    t = mail.SmtpTransport(mail.SmtpConfig("h", 587, "starttls", "u", "pw"))
    t._connect()
    assert calls == [("connect", "h", 587), "ehlo", "starttls", "ehlo", ("login", "u")]
