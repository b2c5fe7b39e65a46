"""Which alerts to raise tonight (rules D1–D3 and data quality): frames in, alert rows out. Pure.

No SMTP, no state: `flows.outbox` stores what this module raises under the stable keys computed here,
so that raising the same thing twice is a no-op.

* due_soon (D1, milestone): one reminder to the project's owner when the milestone is first seen due
  within 7 days (threshold 7) and one the day before it is due (threshold 1). Key:
  sha256("due_soon|source|milestone|entity_id|threshold"). An owner with no usable email address is
  routed to the source's steward (recipient_role "steward"), never dropped.
* overdue (D2, milestone) and problem_overdue (D3, problem): items of the nightly digest to the
  supervision office. Key: sha256("kind|source|entity_type|entity_id"), the same night after night.
* data_quality (contract family C1–C4 and quarantined rows): one per source per night, to the steward.
  Key: sha256("data_quality|source|source|source_id|as_of").
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date

import polars as pl

from transforms.pii import mask_pii

# A deliberately strict address: what a source may put in an email column reaches an SMTP envelope.
# (Underscores are allowed in domain labels: some registries use them.)
EMAIL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62}[A-Za-z0-9])?)*$")

REMIND_THRESHOLDS = (7, 1)  # days before due: the first reminder, then the day before
_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}

def valid_email(value: str | None) -> str | None:
    """The address if it is a plain, strict addr-spec, else None."""
    if value is None:
        return None
    v = value.strip()
    return v if len(v) <= 254 and EMAIL.fullmatch(v) else None


def alert_key(*parts: object) -> str:
    """Stable across runs, processes and library versions."""
    return hashlib.sha256("|".join("" if p is None else str(p) for p in parts).encode("utf-8")).hexdigest()[:24]


def _detail(flags: pl.DataFrame, rule_id: str) -> pl.DataFrame:
    f = flags.filter(pl.col("rule_id") == rule_id).unique(["source_id", "entity_id"], keep="first",
                                                           maintain_order=True)
    return f.select("source_id", "entity_id", "severity", "detail")


def _persons(silver: dict[str, pl.DataFrame], prefix: str, key: str) -> pl.DataFrame:
    p = silver.get("persons")
    if p is None:
        return pl.DataFrame(schema={"source_id": pl.String, key: pl.String, f"{prefix}_name": pl.String,
                                    f"{prefix}_email": pl.String})
    return p.select("source_id", pl.col("person_id").alias(key), pl.col("name").alias(f"{prefix}_name"),
                    pl.col("email").alias(f"{prefix}_email")).unique(["source_id", key], keep="first")


def _table(silver: dict[str, pl.DataFrame], name: str, columns: list[str]) -> pl.DataFrame:
    t = silver.get(name)
    if t is None:
        return pl.DataFrame(schema=dict.fromkeys(columns, pl.String))
    return t.select(columns)


def _milestone_context(silver: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """milestone -> project title, unit, owner and leader (names and emails)."""
    m = _table(silver, "milestones", ["source_id", "milestone_id", "project_id"]).unique(
        ["source_id", "milestone_id"], keep="first")
    pr = _table(silver, "projects", ["source_id", "project_id", "project_code", "title", "unit_code",
                                     "owner_id", "leader_id"]).unique(["source_id", "project_id"], keep="first")
    units = _table(silver, "units", ["source_id", "unit_code", "unit_name"]).unique(
        ["source_id", "unit_code"], keep="first")
    return (
        m.join(pr, on=["source_id", "project_id"], how="left")
        .join(units, on=["source_id", "unit_code"], how="left")
        .join(_persons(silver, "owner", "owner_id"), on=["source_id", "owner_id"], how="left")
        .join(_persons(silver, "leader", "leader_id"), on=["source_id", "leader_id"], how="left")
        .rename({"milestone_id": "entity_id"})
    )


def _steward(sources: pl.DataFrame) -> dict[str, tuple[str | None, str | None]]:
    return {r["source_id"]: (valid_email(r["steward_email"]), r["name"]) for r in sources.iter_rows(named=True)}


_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def one_line(text: str | None) -> str | None:
    """A source's text as one line (CR, LF and other control characters become a space), PII masked."""
    return None if text is None else mask_pii(_CONTROL.sub(" ", text).strip())


def _fields(row: dict, detail: dict, names: tuple[str, ...]) -> dict:
    return {k: one_line(row.get(k)) if isinstance(row.get(k), str) else row.get(k) for k in names} | detail


def due_soon(as_of: date, flags: pl.DataFrame, silver: dict[str, pl.DataFrame], sources: pl.DataFrame,
             supervision_email: str | None = None) -> list[dict]:
    """One row per reminder due tonight (D1 flags), with its threshold, recipient and facts."""
    d1 = _detail(flags, "D1")
    if d1.is_empty():
        return []
    stewards = _steward(sources)
    rows = d1.join(_milestone_context(silver), on=["source_id", "entity_id"], how="left")
    out = []
    for r in rows.iter_rows(named=True):
        detail = json.loads(r["detail"] or "{}")
        days_left = int(detail.get("days_left", 0))
        threshold = 1 if days_left <= 1 else 7
        owner = valid_email(r["owner_email"])
        steward, source_name = stewards.get(r["source_id"], (None, None))
        if owner:
            recipient, role, note = owner, "owner", None
        else:
            why = "无邮箱地址" if not (r["owner_email"] or "").strip() else "邮箱地址无效"
            recipient = steward or valid_email(supervision_email)
            role = "steward" if steward else ("supervision" if recipient else None)
            note = f"负责人{why}，请转告负责人并在源系统中补正"
        out.append({
            "kind": "due_soon", "source_id": r["source_id"], "entity_type": "milestone",
            "entity_id": r["entity_id"], "threshold": threshold,
            "alert_id": alert_key("due_soon", r["source_id"], "milestone", r["entity_id"], threshold),
            "recipient": recipient, "recipient_role": role, "severity": r["severity"],
            "source_name": source_name,
            **_fields(r, {"days_left": days_left, "due_date": detail.get("due_date"),
                          "stage": detail.get("stage"), "note": note},
                      ("project_id", "project_code", "title", "unit_code", "unit_name", "owner_name",
                       "leader_name")),
        })
    return out


def overdue(as_of: date, flags: pl.DataFrame, silver: dict[str, pl.DataFrame]) -> list[dict]:
    """The digest's items: every overdue milestone (D2) and overdue problem (D3), with unit, days
    overdue, owner and leader."""
    out = []
    d2 = _detail(flags, "D2")
    if not d2.is_empty():
        rows = d2.join(_milestone_context(silver), on=["source_id", "entity_id"], how="left")
        for r in rows.iter_rows(named=True):
            detail = json.loads(r["detail"] or "{}")
            out.append({
                "kind": "overdue", "source_id": r["source_id"], "entity_type": "milestone",
                "entity_id": r["entity_id"], "threshold": None,
                "alert_id": alert_key("overdue", r["source_id"], "milestone", r["entity_id"]),
                "severity": r["severity"],
                **_fields(r, {"days_overdue": int(detail.get("days_overdue", 0)),
                              "due_date": detail.get("due_date"), "stage": detail.get("stage")},
                          ("project_id", "project_code", "title", "unit_code", "unit_name", "owner_name",
                           "leader_name")),
            })
    d3 = _detail(flags, "D3")
    if not d3.is_empty():
        pb = _table(silver, "problems", ["source_id", "problem_id", "unit_code", "category", "description",
                                         "owner_id"]).unique(["source_id", "problem_id"], keep="first")
        units = _table(silver, "units", ["source_id", "unit_code", "unit_name"]).unique(
            ["source_id", "unit_code"], keep="first")
        rows = (d3.join(pb.rename({"problem_id": "entity_id"}), on=["source_id", "entity_id"], how="left")
                .join(units, on=["source_id", "unit_code"], how="left")
                .join(_persons(silver, "owner", "owner_id"), on=["source_id", "owner_id"], how="left"))
        for r in rows.iter_rows(named=True):
            detail = json.loads(r["detail"] or "{}")
            title = r["category"] or ""
            if r["description"]:
                title = f"{title}：{r['description'][:60]}" if title else r["description"][:60]
            out.append({
                "kind": "problem_overdue", "source_id": r["source_id"], "entity_type": "problem",
                "entity_id": r["entity_id"], "threshold": None,
                "alert_id": alert_key("problem_overdue", r["source_id"], "problem", r["entity_id"]),
                "severity": r["severity"],
                **_fields(r | {"title": title}, {"days_overdue": int(detail.get("days_overdue", 0)),
                                                 "due_date": detail.get("deadline"),
                                                 "stage": detail.get("origin"), "leader_name": None},
                          ("title", "unit_code", "unit_name", "owner_name")),
            })
    return sorted(out, key=lambda i: (i["source_id"], i["unit_code"] or "", -i["days_overdue"], i["entity_id"]))


def flag_keys(flags: pl.DataFrame) -> pl.Series:
    """A stable key per flag (rule, entity): what "already reported" is remembered by."""
    return pl.Series("flag_key", [alert_key(*r) for r in flags.select(
        "source_id", "rule_id", "entity_type", "entity_id").iter_rows()], dtype=pl.String)


def data_quality(as_of: date, flags: pl.DataFrame, quarantine: pl.DataFrame | None, sources: pl.DataFrame,
                 supervision_email: str | None = None, seen: set[str] | None = None,
                 examples: int = 10) -> list[dict]:
    """One row per source with new contract flags (C1–C4; not in `seen`, the flag keys reported on an
    earlier night) or quarantined rows tonight: counts by rule, the worst examples with their figures,
    quarantined rows by table and reason."""
    contract = flags.filter(pl.col("family") == "contract")
    contract = contract.with_columns(flag_keys(contract))
    if seen:
        contract = contract.filter(~pl.col("flag_key").is_in(list(seen)))
    q = quarantine if quarantine is not None else pl.DataFrame(
        schema={"source_id": pl.String, "table": pl.String, "record_id": pl.String, "reason": pl.String})
    stewards = _steward(sources)
    out = []
    for sid in sorted(set(contract["source_id"].to_list()) | set(q["source_id"].to_list())):
        f = contract.filter(pl.col("source_id") == sid)
        qs = q.filter(pl.col("source_id") == sid)
        by_rule = dict(f.group_by("rule_id").len().sort("rule_id").iter_rows())
        worst = (f.with_columns(rank=pl.col("severity").replace_strict(_SEVERITY_RANK, default=3,
                                                                        return_dtype=pl.Int64))
                 .sort("rank", "rule_id", "entity_type", "entity_id").head(examples))
        q_counts = (qs.group_by("table", "reason").len().sort("len", "table", "reason", descending=[True, False, False])
                    .head(examples))
        steward, name = stewards.get(sid, (None, None))
        recipient = steward or valid_email(supervision_email)
        out.append({
            "kind": "data_quality", "source_id": sid, "entity_type": "source", "entity_id": sid,
            "threshold": None, "alert_id": alert_key("data_quality", sid, "source", sid, as_of.isoformat()),
            "recipient": recipient,
            "recipient_role": "steward" if steward else ("supervision" if recipient else None),
            "severity": worst["severity"][0] if worst.height else "warning",
            "source_name": name,
            "flags_by_rule": by_rule, "flags": f.height, "quarantined": qs.height,
            "examples": [{"rule_id": r["rule_id"], "severity": r["severity"], "entity_type": r["entity_type"],
                          "entity_id": mask_pii(r["entity_id"]), "detail": mask_pii(r["detail"])}
                         for r in worst.iter_rows(named=True)],
            "quarantine": [{"table": t, "reason": mask_pii(reason), "rows": n} for t, reason, n in q_counts.iter_rows()],
        })
    return out


DETAIL_FIELDS = ("project_id", "project_code", "title", "stage", "due_date", "days_left", "days_overdue",
                 "unit_code", "unit_name", "owner_name", "leader_name", "note", "flags_by_rule", "flags",
                 "quarantined")


def detail_of(item: dict) -> str:
    """The figures an alert showed, as stable JSON (the outbox and the alerts mart keep it)."""
    return json.dumps({k: item[k] for k in DETAIL_FIELDS if item.get(k) is not None}, ensure_ascii=False,
                      sort_keys=True, default=str)
