"""Email: render alerts from Jinja2 templates, build safe messages, deliver them (SMTP or .eml files).

SMTP settings come from the environment: QINGFENG_SMTP_HOST, QINGFENG_SMTP_PORT,
QINGFENG_SMTP_SECURITY (none | starttls | ssl), QINGFENG_SMTP_USER, QINGFENG_SMTP_PASSWORD (and
QINGFENG_SMTP_CAFILE to trust a private CA; certificates and host names are always verified). Instead of
the password itself, a Prefect Secret block may hold it: its name in QINGFENG_SMTP_PASSWORD_BLOCK or as
`[mail] password_block = "..."` in the settings file named by QINGFENG_SETTINGS. With no host set nothing
is sent (the alerts stay pending in the outbox).

Safety: every value from a source is HTML-escaped (autoescape) in the HTML part; headers are set through
`email.policy.SMTP`, which refuses CR/LF, and display names and subjects are stripped of control
characters first; recipients must match a strict addr-spec (`transforms.alerts.EMAIL`); phone and ID-card
numbers are masked in the subject and both bodies (`render`).
"""

from __future__ import annotations

import contextlib
import os
import re
import smtplib
import ssl
import tomllib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid
from functools import cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from transforms.alerts import mask_pii, valid_email

TEMPLATES = Path(__file__).parent / "templates"
SECURITIES = ("none", "starttls", "ssl")
LABELS = {  # contract enums, as the emails say them
    "initiation": "立项", "implementation": "实施", "interim_result": "阶段成果", "acceptance": "验收",
    "inspection": "巡察", "enterprise_visit": "走访企业", "public_report": "群众反映", "self_check": "自查自纠",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


class MailError(Exception):
    """A message could not be built or delivered (the text never contains the SMTP password)."""


class ServerUnavailable(MailError):
    """The server could not be reached or would not let us in: no point trying the next message."""


class DeliveryUnknown(MailError):
    """The connection broke after the message was handed over and before the server's answer: it may
    have been delivered. Sending it again could deliver it twice."""


# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    security: str = "none"
    user: str | None = None
    password: str | None = None
    timeout: float = 30.0
    cafile: str | None = None  # a private CA's certificates (PEM) to trust besides the system's

    def __repr__(self) -> str:  # never print the password
        return f"SmtpConfig(host={self.host!r}, port={self.port}, security={self.security!r}, user={self.user!r})"

    __str__ = __repr__


def _settings_mail() -> dict:
    path = os.environ.get("QINGFENG_SETTINGS")
    if not path:
        return {}
    return tomllib.loads(Path(path).read_text(encoding="utf-8")).get("mail", {})


def _secret_block(name: str) -> str:
    from prefect.blocks.system import Secret

    try:
        return Secret.load(name).get()
    except Exception as e:  # noqa: BLE001 — reported without the block's content
        raise MailError(f"cannot read the Prefect Secret block {name!r}: {type(e).__name__}") from None


def smtp_config(env: dict[str, str] | None = None) -> SmtpConfig | None:
    """The SMTP server to use, or None when QINGFENG_SMTP_HOST is not set."""
    env = os.environ if env is None else env
    host = (env.get("QINGFENG_SMTP_HOST") or "").strip()
    if not host:
        return None
    security = (env.get("QINGFENG_SMTP_SECURITY") or "none").strip().lower()
    if security not in SECURITIES:
        raise MailError(f"QINGFENG_SMTP_SECURITY must be one of {', '.join(SECURITIES)}, not {security!r}")
    default_port = {"none": 25, "starttls": 587, "ssl": 465}[security]
    try:
        port = int(env.get("QINGFENG_SMTP_PORT") or default_port)
    except ValueError:
        raise MailError("QINGFENG_SMTP_PORT must be a number") from None
    password = env.get("QINGFENG_SMTP_PASSWORD") or None
    block = env.get("QINGFENG_SMTP_PASSWORD_BLOCK") or _settings_mail().get("password_block")
    if password is None and block:
        password = _secret_block(block)
    return SmtpConfig(host=host, port=port, security=security, user=env.get("QINGFENG_SMTP_USER") or None,
                      password=password, cafile=env.get("QINGFENG_SMTP_CAFILE") or None)


# ---------------------------------------------------------------------------------------------- rendering


@cache
def _environments() -> tuple[Environment, Environment]:
    # The templates are the package's own files: compiled once a process, not checked for changes at every
    # email (auto_reload stats the file each time, about 0.3 ms, 1,600 reminders on a first night).
    loader = FileSystemLoader(str(TEMPLATES))
    html = Environment(loader=loader, autoescape=select_autoescape(["html", "j2"], default=True),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, auto_reload=False)
    text = Environment(loader=loader, autoescape=False, undefined=StrictUndefined, trim_blocks=True,
                       lstrip_blocks=True, auto_reload=False)
    for env in (html, text):
        env.filters["na"] = lambda v: "—" if v is None or v == "" else v
        env.filters["label"] = lambda v: LABELS.get(v, v) if isinstance(v, str) else ("—" if v is None else v)
    return html, text


def render(kind: str, **context) -> tuple[str, str, str]:
    """(subject, plain text, HTML) of an alert email from templates/{kind}.{subject,txt,html}.j2. Phone and
    ID-card numbers are masked in all three, whichever field of the context carried them (ids included)."""
    html_env, text_env = _environments()
    subject = text_env.get_template(f"{kind}.subject.j2").render(**context)
    text = text_env.get_template(f"{kind}.txt.j2").render(**context)
    html = html_env.get_template(f"{kind}.html.j2").render(**context)
    return clean_header(mask_pii(subject), 200), mask_pii(text), mask_pii(html)


def clean_header(value: str | None, limit: int = 120) -> str:
    """One line, no control characters (CR/LF included), at most `limit` characters."""
    return _CONTROL.sub(" ", value or "").strip()[:limit]


def build_message(*, sender: str, recipient: str, recipient_name: str | None, subject: str, text: str,
                  html: str, message_id: str | None = None) -> EmailMessage:
    """multipart/alternative (plain text, then HTML), UTF-8, headers checked by the SMTP policy."""
    to_addr = valid_email(recipient)
    if to_addr is None:
        raise MailError(f"refused recipient address {clean_header(recipient, 80)!r}: not a plain address")
    from_addr = valid_email(sender)
    if from_addr is None:
        raise MailError(f"refused sender address {clean_header(sender, 80)!r}: not a plain address")
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = Address(display_name="清风数据平台", addr_spec=from_addr)
    msg["To"] = Address(display_name=clean_header(recipient_name, 40), addr_spec=to_addr)
    msg["Subject"] = clean_header(subject, 200)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    domain = from_addr.split("@", 1)[1]
    # The outbox key, not a fresh random id: every attempt at one alert email carries the same Message-ID,
    # so a mail system that sees it twice can tell it is one email.
    msg["Message-ID"] = (f"<{message_id}@{domain}>" if message_id and re.fullmatch(r"[0-9A-Za-z._-]{1,64}", message_id)
                         else make_msgid(domain=domain))
    if message_id:
        msg["X-Qingfeng-Alert"] = clean_header(message_id, 64)
    msg.set_content(text, subtype="plain", charset="utf-8")
    msg.add_alternative(html, subtype="html", charset="utf-8")
    return msg


# ---------------------------------------------------------------------------------------------- transports


class Transport(ABC):
    """Where a rendered email goes: an SMTP server, or `.eml` files for a dry run."""

    description = ""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @abstractmethod
    def send(self, msg: EmailMessage, name: str) -> None: ...

    def close(self) -> None:  # noqa: B027 — most transports hold nothing to close
        return None


class EmlTransport(Transport):
    """Writes each message as DIR/<name>.eml (`qingfeng run --dry-run-mail DIR`)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.description = f"eml:{self.folder}"

    def send(self, msg: EmailMessage, name: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.eml"
        tmp = path.with_suffix(".eml.tmp")
        tmp.write_bytes(msg.as_bytes(policy=SMTP_POLICY))
        os.replace(tmp, path)


def smtp_class(security: str) -> type[smtplib.SMTP]:
    """SMTP_SSL for `ssl` (TLS from the first byte), plain SMTP otherwise (`starttls` upgrades it)."""
    if security not in SECURITIES:
        raise MailError(f"unknown SMTP security {security!r}")
    return smtplib.SMTP_SSL if security == "ssl" else smtplib.SMTP


class SmtpTransport(Transport):
    """One connection for the whole batch, opened on first use and reopened once if the server drops it."""

    def __init__(self, config: SmtpConfig, tls_context: ssl.SSLContext | None = None):
        self.config = config
        self.tls_context = tls_context
        self.description = f"smtp:{config.host}:{config.port} ({config.security})"
        self._conn: smtplib.SMTP | None = None

    def _redact(self, text: str) -> str:
        pw = self.config.password
        return text.replace(pw, "***") if pw else text

    def _connect(self) -> smtplib.SMTP:
        c = self.config
        context = self.tls_context or ssl.create_default_context(cafile=c.cafile)
        cls = smtp_class(c.security)
        try:
            if cls is smtplib.SMTP_SSL:
                conn = smtplib.SMTP_SSL(c.host, c.port, timeout=c.timeout, context=context)
            else:
                conn = smtplib.SMTP(c.host, c.port, timeout=c.timeout)
            conn.ehlo()
            if c.security == "starttls":
                conn.starttls(context=context)
                conn.ehlo()
            if c.user:
                conn.login(c.user, c.password or "")
        except (OSError, smtplib.SMTPException) as e:
            raise ServerUnavailable(
                self._redact(f"cannot reach SMTP server {c.host}:{c.port}: {type(e).__name__}: {e}")) from None
        return conn

    def send(self, msg: EmailMessage, name: str) -> None:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = self._connect()
            conn, handed_over = self._conn, False
            data = conn.data

            def data_once(message, _data=data):
                nonlocal handed_over
                handed_over = True  # from here on the server may have the message
                return _data(message)

            conn.data = data_once  # type: ignore[method-assign]
            try:
                refused = conn.send_message(msg)
            except smtplib.SMTPServerDisconnected as e:
                self._conn = None
                if handed_over:
                    raise DeliveryUnknown(self._redact(f"SMTP server disconnected while taking the message: {e}")
                                          ) from None
                if attempt == 2:
                    raise MailError(self._redact(f"SMTP server disconnected: {e}")) from None
                continue  # dropped while idle or before the message: safe to try on a new connection
            except smtplib.SMTPRecipientsRefused as e:
                codes = "; ".join(f"{code} {resp.decode(errors='replace')}" for code, resp in e.recipients.values())
                raise MailError(self._redact(f"recipient refused: {codes}")) from None
            except smtplib.SMTPDataError as e:  # the server answered "no": it does not have the message
                self.close()
                raise MailError(self._redact(f"SMTP error: {type(e).__name__}: {e}")) from None
            except (smtplib.SMTPException, OSError) as e:
                self.close()
                if handed_over:
                    raise DeliveryUnknown(self._redact(f"no answer after the message was handed over: "
                                                       f"{type(e).__name__}: {e}")) from None
                raise MailError(self._redact(f"SMTP error: {type(e).__name__}: {e}")) from None
            finally:
                with contextlib.suppress(AttributeError):
                    del conn.data
            if refused:
                raise MailError(self._redact(f"recipient refused: {refused}"))
            return

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self._conn.quit()
            self._conn = None
