"""Alert emails through a real SMTP server on loopback (aiosmtpd, started here): recipients and content of
each kind, exactly once across runs, a server that is down and then back, a refused recipient, hostile text."""

from __future__ import annotations

import email
import socket
from datetime import timedelta
from email import policy

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from flows import outbox
from flows.state import StateStore
from tests.test_alerts import AS_OF, HOSTILE_NAME, SENDER, STEWARD, SUPERVISION, night_inputs


def free_port() -> int:
    # aiosmtpd's Controller(port=0) does not work here: find a free port first.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    def __init__(self, refuse: set[str] = frozenset()):
        self.envelopes: list = []
        self.refuse = set(refuse)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def messages(self) -> list[tuple[list[str], email.message.EmailMessage]]:
        return [(e.rcpt_tos, email.message_from_bytes(e.original_content, policy=policy.default))
                for e in self.envelopes]


class Server:
    def __init__(self, port: int, inbox: Inbox):
        self.port, self.inbox = port, inbox
        self.controller = Controller(inbox, hostname="127.0.0.1", port=port)

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()


@pytest.fixture
def engine(tmp_path):
    store = StateStore(f"sqlite:///{tmp_path / 'state.sqlite'}")
    yield store.engine
    store.dispose()


@pytest.fixture
def smtp_env(monkeypatch):
    port = free_port()
    monkeypatch.setenv("QINGFENG_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("QINGFENG_SMTP_PORT", str(port))
    monkeypatch.setenv("QINGFENG_SMTP_SECURITY", "none")
    for var in ("QINGFENG_SMTP_USER", "QINGFENG_SMTP_PASSWORD", "QINGFENG_SMTP_PASSWORD_BLOCK"):
        monkeypatch.delenv(var, raising=False)
    return port


def night(engine, as_of=AS_OF):
    n, flags, s, src, q = night_inputs(as_of)
    return outbox.night_alerts(engine, n, flags, s, src, q)


def by_kind(inbox: Inbox) -> dict[str, list]:
    out: dict[str, list] = {}
    for rcpt, msg in inbox.messages():
        subject = msg["Subject"]
        kind = "digest" if "督办日报" in subject else "data_quality" if "数据质量" in subject else "reminder"
        out.setdefault(kind, []).append((rcpt, msg))
    return out


def test_each_kind_reaches_its_recipient_with_its_content(engine, smtp_env):
    with Server(smtp_env, Inbox()) as server:
        _, summary = night(engine)
    assert (summary.sent, summary.failed, summary.pending) == (7, 0, 0)
    got = by_kind(server.inbox)
    assert sorted(r for r, _ in got["reminder"]) == sorted([["a@s1.example.cn"], ["b@s1.example.cn"], [STEWARD],
                                                            [STEWARD]])
    owner = next(m for r, m in got["reminder"] if r == ["a@s1.example.cn"])
    assert owner["From"].addresses[0].addr_spec == SENDER
    assert owner["To"].addresses[0].display_name == "张三"
    text = owner.get_body(("plain",)).get_content()
    assert "张三 同志" in text and "实施" in text and "还有 5 天" in text and "138****5678" in text
    assert "13812345678" not in owner.as_string()
    assert sum("明日到期" in m["Subject"] for _, m in got["reminder"]) == 1  # M2, due tomorrow
    steward_notes = [m.get_body(("plain",)).get_content() for r, m in got["reminder"] if r == [STEWARD]]
    assert any("无邮箱地址" in t for t in steward_notes) and any("邮箱地址无效" in t for t in steward_notes)

    [(rcpt, digest)] = got["digest"]
    assert rcpt == [SUPERVISION]
    body = digest.get_body(("plain",)).get_content()
    assert "共有 3 项逾期事项" in body and "逾期节点 2 项" in body and "逾期未整改问题 1 项" in body
    assert body.index("一区") < body.index("二区")  # grouped by unit
    assert "节点逾期 4 天" in body and "问题逾期 10 天" in body and "分管领导 李四 Bcc" in body

    dq = {tuple(r): m for r, m in got["data_quality"]}
    assert set(dq) == {(STEWARD,), (SUPERVISION,)}
    s1 = dq[(STEWARD,)].get_body(("plain",)).get_content()
    assert "C1：1 条" in s1 and "C3：1 条" in s1 and "1 行数据被隔离" in s1
    assert "/wh/docs/index.html" in s1 and "/wh/quarantine" in s1
    assert "13812345678" not in dq[(STEWARD,)].as_string()
    for _, m in server.inbox.messages():
        assert m.get_content_type() == "multipart/alternative"
        assert {p.get_content_type() for p in m.iter_parts()} == {"text/plain", "text/html"}


def test_a_rerun_sends_nothing_new_and_the_next_night_only_what_is_due(engine, smtp_env):
    with Server(smtp_env, Inbox()) as server:
        night(engine)
        first = len(server.inbox.envelopes)
        _, again = night(engine)
        assert len(server.inbox.envelopes) == first and (again.raised, again.sent) == (0, 0)
        _, nxt = night(engine, AS_OF + timedelta(days=1))
    # next night: a new digest and (M2 is now overdue, M1 still 4 days out) no new reminder
    kinds = by_kind(server.inbox)
    assert len(kinds["digest"]) == 2
    assert nxt.sent == nxt.raised


def test_server_down_then_back(engine, smtp_env):
    _, down = night(engine)  # nothing listens on the port
    assert (down.sent, down.failed, down.pending) == (0, 7, 7)
    assert down.errors == [down.errors[0]] and "7 email(s) wait for the next run: cannot reach SMTP" in down.errors[0]
    with engine.connect() as c:
        rows = c.execute(sa.select(outbox.messages.c.status, outbox.messages.c.attempts,
                                   outbox.messages.c.last_error)).all()
    assert all(s == "pending" and a == 1 and err for s, a, err in rows)
    frame, _ = night(engine)  # still down: the mart shows them pending with the error
    assert frame["sent_at"].is_null().all() and frame["attempts"].min() == 2
    with Server(smtp_env, Inbox()) as server:
        _, back = night(engine)
    assert (back.raised, back.sent, back.pending) == (0, 7, 0)
    assert len(server.inbox.envelopes) == 7
    with engine.connect() as c:
        assert {r[0] for r in c.execute(sa.select(outbox.messages.c.status))} == {"sent"}


def test_a_refused_recipient_stays_pending_and_is_retried(engine, smtp_env):
    with Server(smtp_env, Inbox(refuse={SUPERVISION})) as server:
        _, s1 = night(engine)
    assert s1.failed == 2 and s1.sent == 5  # the digest and s2's report (no steward: supervision)
    assert all("recipient refused" in e and "550" in e for e in s1.errors)
    assert len(server.inbox.envelopes) == 5
    with Server(smtp_env, Inbox()) as server:
        _, s2 = night(engine)
    assert (s2.sent, s2.pending) == (2, 0)
    assert all(r == [SUPERVISION] for r, _ in server.inbox.messages())


def test_hostile_text_is_escaped_and_cannot_add_headers_or_recipients(engine, smtp_env):
    with Server(smtp_env, Inbox()) as server:
        night(engine)
    for rcpt, msg in server.inbox.messages():
        assert all("evil" not in r for r in rcpt)
        assert msg["Bcc"] is None and msg["Cc"] is None
        html = msg.get_body(("html",)).get_content()
        assert "<script>" not in html and "<img" not in html and "<b>" not in html and "<i>" not in html
    hostile = [m for _, m in server.inbox.messages() if "整治项目" in m["Subject"]]
    assert len(hostile) == 1
    m = hostile[0]
    assert "\r" not in m["Subject"] and "\n" not in m["Subject"]
    assert m["To"].addresses[0].display_name == HOSTILE_NAME.replace("\r\n", " ")
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in m.get_body(("html",)).get_content()


def test_password_never_appears_in_errors(engine, smtp_env, monkeypatch):
    monkeypatch.setenv("QINGFENG_SMTP_USER", "qingfeng")
    monkeypatch.setenv("QINGFENG_SMTP_PASSWORD", "s3cr3t-pw")
    with Server(smtp_env, Inbox()):  # the server offers no AUTH: login fails
        _, s = night(engine)
    assert s.sent == 0 and s.errors
    with engine.connect() as c:
        errors = [r[0] for r in c.execute(sa.select(outbox.messages.c.last_error))]
    assert all(e and "s3cr3t-pw" not in e for e in errors)
    assert all("s3cr3t-pw" not in e for e in s.errors)


# ---------------------------------------------------------------------------------------------- TLS


def self_signed(tmp_path):
    """A certificate for 127.0.0.1 / localhost and its key (PEM files)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_tls_with_a_private_ca(engine, smtp_env, monkeypatch, tmp_path, security):
    import ssl

    cert, key = self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    inbox = Inbox()
    kw = {"tls_context": server_ctx, "require_starttls": True} if security == "starttls" else {"ssl_context": server_ctx}
    controller = Controller(inbox, hostname="127.0.0.1", port=smtp_env, **kw)
    monkeypatch.setenv("QINGFENG_SMTP_SECURITY", security)
    controller.start()
    try:
        _, untrusted = night(engine)  # the certificate is not trusted yet: nothing goes out in clear
        assert untrusted.sent == 0 and "CERTIFICATE_VERIFY_FAILED" in untrusted.errors[0]
        monkeypatch.setenv("QINGFENG_SMTP_CAFILE", str(cert))
        _, trusted = night(engine)
    finally:
        controller.stop()
    assert trusted.sent == 7 and len(inbox.envelopes) == 7
