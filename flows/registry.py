"""The source registry (`sources.toml`, contract §1): which systems to pull, in which dialect, from where."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from transforms.dialects import DIALECTS

SOURCE_ID = re.compile(r"^[a-z0-9_]+$")
KINDS = ("district", "department")


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

    @property
    def is_filedrop(self) -> bool:
        return self.dialect == "filedrop"


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
            )
        )
    return Registry(
        path=path,
        sources=tuple(sources),
        supervision_email=alerts.get("supervision_email"),
        sender=alerts.get("sender"),
    )
