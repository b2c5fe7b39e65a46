"""Never an email twice, even when the run dies mid-send: a real SMTP server takes the first email and
does not answer; the sending process is killed with SIGKILL right then. The next run must not send that
email again (the server may well have delivered it), must report it, and must send every other one once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from flows import outbox
from flows.state import StateStore
from tests.test_mail import Inbox, Server, free_port, night

ROOT = Path(__file__).resolve().parents[1]

SEND_IN_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[2])
from flows.state import StateStore
from tests.test_mail import night
night(StateStore(sys.argv[1]).engine)
"""


class SwallowingInbox(Inbox):
    """Takes the first message, then never replies: the client waits for its 250 until it is killed."""

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        await asyncio.sleep(120)
        return "250 Message accepted for delivery"


def _smtp_env(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QINGFENG_SMTP_")}
    return env | {"QINGFENG_SMTP_HOST": "127.0.0.1", "QINGFENG_SMTP_PORT": str(port),
                  "QINGFENG_SMTP_SECURITY": "none"}


def _smtp_to(monkeypatch, port: int) -> None:
    for k, v in _smtp_env(port).items():
        if k.startswith("QINGFENG_SMTP_"):
            monkeypatch.setenv(k, v)


def test_sigkill_mid_send_never_sends_that_email_twice(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    StateStore(url).dispose()
    port = free_port()
    with Server(port, SwallowingInbox()) as hung:
        child = subprocess.Popen([sys.executable, "-c", SEND_IN_CHILD, url, str(ROOT)], cwd=ROOT,
                                 env=_smtp_env(port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not hung.inbox.envelopes and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hung.inbox.envelopes, f"the child never reached the server: {child.stderr.read().decode()[-2000:]}"
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        (_, first), = hung.inbox.messages()
    first_id = first["Message-ID"]

    engine = StateStore(url).engine
    with engine.connect() as c:
        statuses = dict(c.execute(sa.select(outbox.messages.c.status, sa.func.count()).group_by(
            outbox.messages.c.status)).all())
    assert statuses.get("sending") == 1  # claimed before the SMTP conversation, never confirmed

    port2 = free_port()
    _smtp_to(monkeypatch, port2)
    with Server(port2, Inbox()) as server:
        _, summary = night(engine)
    resent = [m["Message-ID"] for _, m in server.inbox.messages()]
    assert first_id not in resent
    assert len(resent) == len(set(resent))
    with engine.connect() as c:
        rows = c.execute(sa.select(outbox.messages.c.message_id, outbox.messages.c.status,
                                   outbox.messages.c.last_error)).all()
    by_status: dict[str, list] = {}
    for message_id, status, error in rows:
        by_status.setdefault(status, []).append((message_id, error))
    assert set(by_status) == {"sent", "unconfirmed"}
    ((stuck_id, why),) = by_status["unconfirmed"]
    assert first_id.startswith(f"<{stuck_id}@") and "may have been delivered" in why
    assert len(by_status["sent"]) == len(resent) == len(rows) - 1
    assert any("unconfirmed" in e for e in summary.errors)

    with Server(port2, Inbox()) as server:  # and it stays that way the night after
        night(engine)
    assert server.inbox.envelopes == []


def test_two_runs_delivering_at_once_send_each_email_once(tmp_path, monkeypatch):
    """Two processes deliver the same outbox against one server at the same moment: the claim lets only
    one of them send each email."""
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    engine = StateStore(url).engine
    port = free_port()
    _smtp_to(monkeypatch, port)
    # raise tonight's alerts without a server: all pending
    monkeypatch.setenv("QINGFENG_SMTP_PORT", str(free_port()))
    night(engine)
    monkeypatch.setenv("QINGFENG_SMTP_PORT", str(port))
    with Server(port, Inbox()) as server:
        children = [subprocess.Popen([sys.executable, "-c", SEND_IN_CHILD, url, str(ROOT)], cwd=ROOT,
                                     env=_smtp_env(port), stderr=subprocess.PIPE) for _ in range(2)]
        for child in children:
            assert child.wait(timeout=180) == 0, child.stderr.read().decode()[-2000:]
    ids = [m["Message-ID"] for _, m in server.inbox.messages()]
    with engine.connect() as c:
        total = c.execute(sa.select(sa.func.count()).select_from(outbox.messages)).scalar_one()
    assert len(ids) == len(set(ids)) == total


class DroppingInbox(Inbox):
    """Takes the first message, then drops the connection instead of answering (the server may have it)."""

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        if len(self.envelopes) == 1:
            server.transport.abort()
        return "250 Message accepted for delivery"


class IdleClosingInbox(Inbox):
    """Answers the first message, then closes the connection while the client is idle."""

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        if len(self.envelopes) == 1:
            asyncio.get_running_loop().call_later(0.05, server.transport.close)
        return "250 Message accepted for delivery"


@pytest.fixture
def state_engine(tmp_path):
    store = StateStore(f"sqlite:///{tmp_path / 'state.sqlite'}")
    yield store.engine
    store.dispose()


def test_connection_dropped_after_the_message_is_unconfirmed_not_resent(state_engine, monkeypatch):
    engine = state_engine
    port = free_port()
    _smtp_to(monkeypatch, port)
    with Server(port, DroppingInbox()) as server:
        _, summary = night(engine)
        time.sleep(0.2)
    first = server.inbox.messages()[0][1]["Message-ID"]
    ids = [m["Message-ID"] for _, m in server.inbox.messages()]
    assert len(ids) == len(set(ids))  # the dropped one was not sent again on a new connection
    with engine.connect() as c:
        rows = dict(c.execute(sa.select(outbox.messages.c.message_id, outbox.messages.c.status)).all())
    stuck = [mid for mid, status in rows.items() if status == "unconfirmed"]
    assert len(stuck) == 1 and first.startswith(f"<{stuck[0]}@")
    assert all(status == "sent" for mid, status in rows.items() if mid != stuck[0])
    assert summary.pending == 0 and any("may have been delivered" in e for e in summary.errors)


def test_connection_closed_while_idle_is_reopened_and_nothing_is_lost(state_engine, monkeypatch):
    engine = state_engine
    port = free_port()
    _smtp_to(monkeypatch, port)
    with Server(port, IdleClosingInbox()) as server:
        orig = outbox.build_message

        def slow_build(**kw):  # give the server time to close the idle connection between two emails
            time.sleep(0.2)
            return orig(**kw)

        monkeypatch.setattr(outbox, "build_message", slow_build)
        _, summary = night(engine)
    ids = [m["Message-ID"] for _, m in server.inbox.messages()]
    with engine.connect() as c:
        statuses = [r[0] for r in c.execute(sa.select(outbox.messages.c.status))]
    assert set(statuses) == {"sent"} and len(ids) == len(set(ids)) == len(statuses) == summary.sent
