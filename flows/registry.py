"""The source registry (`sources.toml`, contract §1): which systems to pull, in which dialect, from where."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from transforms.dialects import DIALECTS

SOURCE_ID = re.compile(r"^[a-z0-9_]+$")
KINDS = ("district", "department")
MAX_CONNECTIONS_ENV = "QINGFENG_MAX_CONNECTIONS_PER_SOURCE"


class RegistryError(ValueError):
    """The registry file itself is unusable: the run cannot proceed."""


@dataclass(frozen=True)
class Source:
    id: str
    name: str
    kind: str
    dialect: str
    url: str
    steward_email: str | None
    # Connections this process may hold open to the source at once (`max_connections` in the registry);
    # None: $QINGFENG_MAX_CONNECTIONS_PER_SOURCE, default 1.
    max_connections: int | None = None

    @property
    def is_filedrop(self) -> bool:
        return self.dialect == "filedrop"

    @property
    def connection_limit(self) -> int:
        return self.max_connections or default_max_connections()

    def __repr__(self) -> str:  # a URL may carry a password: never print it
        return (f"Source(id={self.id!r}, name={self.name!r}, kind={self.kind!r}, dialect={self.dialect!r}, "
                f"url={redact(self.url, self.url)!r}, steward_email={self.steward_email!r}, "
                f"max_connections={self.max_connections!r})")

    __str__ = __repr__


def default_max_connections() -> int:
    """$QINGFENG_MAX_CONNECTIONS_PER_SOURCE (a whole number >= 1), default 1."""
    raw = os.environ.get(MAX_CONNECTIONS_ENV, "").strip() or "1"
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise RegistryError(f"{MAX_CONNECTIONS_ENV} must be a whole number >= 1, not {raw!r}")
    return value


def url_secrets(url: str) -> list[str]:
    """What of a source URL must never be shown: its password as parsed, as written, and the pieces of a
    password written with an unescaped `@`, `/`, `?`, `#` or `:` (the URL parser then splits it, and the
    pieces end up in the host or database name of driver errors). Longest first."""
    found: set[str] = set()
    pieces: set[str] = set()  # fragments: only long enough ones, or every letter of a message would go
    _scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        userinfo = rest.rsplit("@", 1)[0]
        _user, colon, password = userinfo.partition(":")
        if colon and password:
            found |= {password, unquote(password)}
            pieces |= set(re.split(r"[@/?#:]", password))
    try:
        import sqlalchemy as sa

        parsed = sa.engine.make_url(url).password
    except Exception:  # noqa: BLE001 — an unparseable URL: the raw pieces above are all there is
        parsed = None
    if parsed:
        (found if not found or str(parsed) in found else pieces).add(str(parsed))
    found |= {p for p in pieces if len(p) >= 4}
    return sorted((s for s in found if s), key=len, reverse=True)


def redact(text: str, url: str) -> str:
    """`text` (an error message, a URL) with every secret of `url` replaced by `***`."""
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    return text


@dataclass(frozen=True)
class Registry:
    path: Path
    sources: tuple[Source, ...]
    supervision_email: str | None
    sender: str | None

    def by_id(self, source_id: str) -> Source:
        for s in self.sources:
            if s.id == source_id:
                return s
        raise KeyError(source_id)


def load_registry(path: Path) -> Registry:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"source registry not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise RegistryError(f"source registry {path} is not valid TOML: {e}") from None

    default_max_connections()  # a wrong $QINGFENG_MAX_CONNECTIONS_PER_SOURCE stops the run before it starts
    alerts = doc.get("alerts", {})
    entries = doc.get("source", [])
    if not isinstance(entries, list) or not entries:
        raise RegistryError(f"{path}: no [[source]] entries")

    sources: list[Source] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries, start=1):
        where = f"{path}: [[source]] #{i}"
        missing = [k for k in ("id", "dialect", "url") if not entry.get(k)]
        if missing:
            raise RegistryError(f"{where}: missing {', '.join(missing)}")
        sid = str(entry["id"])
        if not SOURCE_ID.match(sid):
            raise RegistryError(f"{where}: id {sid!r} must match [a-z0-9_]+")
        if sid in seen:
            raise RegistryError(f"{where}: duplicate id {sid!r}")
        seen.add(sid)
        dialect = str(entry["dialect"])
        if dialect not in DIALECTS:
            raise RegistryError(f"{where} ({sid}): dialect {dialect!r} is not one of {', '.join(DIALECTS)}")
        kind = str(entry.get("kind", "department"))
        if kind not in KINDS:
            raise RegistryError(f"{where} ({sid}): kind {kind!r} is not one of {', '.join(KINDS)}")
        url = str(entry["url"])
        max_connections = entry.get("max_connections")
        if max_connections is not None and (type(max_connections) is not int or max_connections < 1):
            raise RegistryError(f"{where} ({sid}): max_connections must be a whole number >= 1, "
                                f"not {max_connections!r}")
        if dialect == "filedrop" and not Path(url).is_absolute():
            url = str((path.parent / url).resolve())  # a relative folder is relative to the registry
        sources.append(
            Source(
                id=sid,
                name=str(entry.get("name", sid)),
                kind=kind,
                dialect=dialect,
                url=url,
                steward_email=entry.get("steward_email") or None,
                max_connections=max_connections,
            )
        )
    return Registry(
        path=path,
        sources=tuple(sources),
        supervision_email=alerts.get("supervision_email"),
        sender=alerts.get("sender"),
    )
