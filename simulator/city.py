"""Generate one source's canonical data, vectorized with numpy (one Python loop per source, none per row).

Rows are held as dicts of numpy arrays. Ids are derived from row positions at the end, so anomalies can
append rows; references are kept as integer positions (`_proj`, `_ms`, `_rep`, ...) until then. Report-level
anomalies that shape the data itself (T1, T3, T5, T6) are decided here, before the evidence is drawn, so
everything downstream stays coherent; the rest are planted afterwards by `anomalies.py`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import polars as pl

from simulator import phrases as ph
from simulator.registry import SourceMeta
from simulator.timeutil import DAY, HOUR, NULL, day_of

STAGE_LO = np.array([0, 15, 50, 85])
STAGE_HI = np.array([15, 50, 85, 100])
EV_MEAN = np.array([3.0, 4.0, 6.0, 7.0])  # mean evidence items per report, by stage
EV_CLIP = np.array([6, 8, 11, 13])  # normal reports never exceed this (~2x the stage median)

KINDS = ("photo", "sign_in_sheet", "meeting_minutes", "document", "ledger", "video", "other")
PHOTO, SIGN_IN, MINUTES, DOCUMENT, LEDGER, VIDEO, OTHER = range(7)
PROCESS_KINDS = np.array([PHOTO, SIGN_IN, MINUTES])
NOTICE_SHA = hashlib.sha256(ph.NOTICE_FILE.encode()).hexdigest()  # same file city-wide (F1 trap)

# Report plans decided at generation time.
NORMAL, PLAN_T1, PLAN_T3, PLAN_T5 = 0, 1, 3, 5

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def random_hex(rng: np.random.Generator, n: int, n_bytes: int) -> np.ndarray:
    """n random lowercase hex strings of 2*n_bytes chars, vectorized."""
    raw = rng.integers(0, 256, size=(n, n_bytes), dtype=np.uint8)
    return bytes_to_hex(raw)


def bytes_to_hex(raw: np.ndarray) -> np.ndarray:
    n, nb = raw.shape
    out = np.empty((n, nb * 2), dtype=np.uint8)
    out[:, 0::2] = _HEX[raw >> 4]
    out[:, 1::2] = _HEX[raw & 15]
    return np.ascontiguousarray(out).view(f"S{nb * 2}").ravel().astype(f"U{nb * 2}")


def phash_hex(values: np.ndarray) -> np.ndarray:
    raw = values.astype(">u8").view(np.uint8).reshape(-1, 8)
    return bytes_to_hex(raw)


def id_strings(prefix: str, idx: np.ndarray, width: int) -> np.ndarray:
    return np.char.add(prefix, np.char.zfill(np.asarray(idx).astype(str), width))


def pick(rng: np.random.Generator, items: list[str] | np.ndarray, n: int) -> np.ndarray:
    return np.asarray(items)[rng.integers(0, len(items), n)]


def group_cummax(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Running max within contiguous ascending groups (reports of a project are contiguous)."""
    span = float(values.max() - values.min() + 1) if len(values) else 1.0
    shifted = values + groups.astype(np.float64) * span * 2
    return np.maximum.accumulate(shifted) - groups.astype(np.float64) * span * 2


@dataclass
class SourceData:
    meta: SourceMeta
    now: int  # this source's "now" (seconds): all its changes happen before it
    as_of_day: int
    units: dict[str, np.ndarray]
    persons: dict[str, np.ndarray]
    projects: dict[str, np.ndarray]
    milestones: dict[str, np.ndarray]
    reports: dict[str, np.ndarray]
    evidence: dict[str, np.ndarray]
    problems: dict[str, np.ndarray]
    metrics: dict[str, np.ndarray]  # long: _rep, name (index into ph.METRICS), value
    labels: list[tuple[str, str, str]] = field(default_factory=list)  # (rule, entity_type, clean id)
    # entity positions already planted (so one entity carries one planted rule)
    used_reports: set[int] = field(default_factory=set)
    used_projects: set[int] = field(default_factory=set)
    used_milestones: set[int] = field(default_factory=set)
    bad_cells: list[tuple[str, int, str, str]] = field(default_factory=list)  # (table, row, column, raw text)


def generate_source(meta: SourceMeta, n_projects: int, seed: int, as_of: date) -> SourceData:
    rng = np.random.default_rng([seed, meta.index, 17])
    as_of_day = day_of(as_of)
    if "stale" in meta.roles:
        now = (as_of_day - 50) * DAY - 60  # frozen system: newest change 50 days before as_of
    elif "stale_delivery" in meta.roles:
        now = (as_of_day - 12) * DAY - 60
    else:
        now = as_of_day * DAY - 60

    units = _units(meta, rng)
    persons = _persons(meta, rng, units, now)
    projects, milestones = _projects(meta, rng, n_projects, units, persons, now)
    reports, metrics = _reports(rng, projects, milestones, persons, now)
    evidence = _evidence(rng, projects, milestones, reports, persons, now)
    problems = _problems(rng, units, persons, n_projects, now)
    return SourceData(meta, now, as_of_day, units, persons, projects, milestones, reports, evidence,
                      problems, metrics)


def _units(meta: SourceMeta, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if meta.kind == "district":
        root = f"51{meta.index + 1:04d}"
        codes, names, kinds, parents = [root], [meta.name], ["district"], [None]
        stems = rng.permutation(len(ph.PLACE_STEMS))
        n_town = int(rng.integers(5, 13))
        for t in range(n_town):
            tcode = f"{root}{t + 1:03d}"
            stem = ph.PLACE_STEMS[stems[t % len(stems)]]
            codes.append(tcode)
            names.append(stem + ph.TOWN_SUFFIXES[t % 2])
            kinds.append("town")
            parents.append(root)
            for v in range(int(rng.integers(0, 4))):
                codes.append(f"{tcode}{v + 1:03d}")
                names.append(ph.PLACE_STEMS[stems[(t + 7 * (v + 1)) % len(stems)]] + ph.VILLAGE_SUFFIXES[v % 2])
                kinds.append("village")
                parents.append(tcode)
    else:
        root = f"0{meta.index:05d}"  # leading zeros: ids are strings, `007` is not `7`
        codes, names, kinds, parents = [root], [meta.name], ["department"], [None]
        secs = rng.permutation(len(ph.DEPT_SECTIONS))[: int(rng.integers(2, 6))]
        for k, s in enumerate(secs):
            codes.append(f"{root}{k + 1:02d}")
            names.append(meta.name + ph.DEPT_SECTIONS[s])
            kinds.append("department")
            parents.append(root)
    return {"unit_code": np.array(codes), "unit_name": np.array(names), "unit_kind": np.array(kinds),
            "parent_code": np.array(parents, dtype=object)}


_ID_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2])
_ID_CHECK = np.array(list("10X98765432"))


def resident_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """18-char resident ids (GB 11643) with a valid ISO 7064 MOD 11-2 check digit."""
    area = 510100 + rng.integers(4, 33, n)
    birth = np.datetime64("1962-01-01") + rng.integers(0, 36 * 365, n).astype("timedelta64[D]")
    ymd = np.char.replace(birth.astype(str), "-", "")
    seq = np.char.zfill(rng.integers(1, 1000, n).astype(str), 3)
    body = np.char.add(np.char.add(area.astype(str), ymd), seq)
    digits = np.frombuffer("".join(body.tolist()).encode(), dtype=np.uint8).reshape(n, 17) - 48
    check = _ID_CHECK[(digits * _ID_WEIGHTS).sum(axis=1) % 11]
    return np.char.add(body, check)


def _persons(meta, rng, units, now) -> dict[str, np.ndarray]:
    n = int(rng.integers(10, 41))
    n_lead = max(2, n // 5)
    ucodes = units["unit_code"]
    unit = np.where(rng.random(n) < 0.6, ucodes[0], pick(rng, ucodes, n))
    given = np.char.add(pick(rng, ph.GIVEN_CHARS, n), np.where(rng.random(n) < 0.6, pick(rng, ph.GIVEN_CHARS, n), ""))
    title = np.concatenate([pick(rng, ph.LEADER_TITLES, n_lead), pick(rng, ph.TITLES, n - n_lead)])
    phone = np.char.add(np.char.add("1", rng.integers(3, 10, n).astype(str)),
                        np.char.zfill(rng.integers(0, 10**9, n).astype(str), 9))
    idx = np.arange(n)
    email = np.char.add(np.char.add(id_strings("ry", idx, 4), "@"), f"{meta.id}.gov.example.cn").astype(object)
    email[rng.random(n) < 0.15] = None
    created = now - rng.integers(20, 900, n) * DAY
    updated = np.minimum(created + rng.integers(0, 400, n) * DAY + rng.integers(8 * HOUR, 19 * HOUR, n), now - 60)
    return {"_idx": idx, "name": np.char.add(pick(rng, ph.SURNAMES, n), given), "unit_code": unit,
            "title": title, "phone": phone, "email": email, "id_card": resident_ids(rng, n),
            "updated_at": updated, "_leader": idx < n_lead}


def _projects(meta, rng, n, units, persons, now):
    n_people = len(persons["_idx"])
    leaders = np.flatnonzero(persons["_leader"])
    start = rng.integers(day_of(date(2025, 1, 1)), day_of(date(2026, 12, 31)), n)
    dur = rng.integers(180, 541, n)
    end = np.minimum(start + dur, day_of(date(2027, 12, 31)))
    dur = end - start
    frac = np.array([0.08, 0.38, 0.68, 1.0]) + np.c_[rng.uniform(-0.03, 0.03, (n, 3)), np.zeros(n)]
    due = start[:, None] + np.round(dur[:, None] * frac).astype(np.int64)
    for k in range(1, 4):
        due[:, k] = np.maximum(due[:, k], due[:, k - 1] + 5)

    # Completion: most on time, some late, a few stuck; strictly in stage order, never after `now`.
    fate = rng.choice(3, size=(n, 4), p=[0.74, 0.252, 0.008])
    delay = np.where(fate == 0, -rng.uniform(0, 20, (n, 4)), rng.lognormal(np.log(12), 0.7, (n, 4)))
    comp = (due + delay).astype(np.int64) * DAY + rng.integers(9 * HOUR, 18 * HOUR, (n, 4))
    inf = np.iinfo(np.int64).max
    comp[fate == 2] = inf
    lower = start * DAY + 2 * DAY
    for k in range(4):
        comp[:, k] = np.maximum(comp[:, k], lower)
        if k:
            comp[comp[:, k - 1] == inf, k] = inf
        comp[comp[:, k] > now, k] = inf
        lower = np.where(comp[:, k] == inf, inf, comp[:, k] + 2 * DAY)
    completed = comp != inf

    status = np.where(completed[:, 3], "completed", np.where(start * DAY > now, "planning", "in_progress"))
    r = rng.random(n)
    status = np.where((status == "in_progress") & (r < 0.04), "suspended", status)
    status = np.where((status == "in_progress") & (r > 0.98), "cancelled", status)

    unit = np.where(rng.random(n) < 0.4, units["unit_code"][0], pick(rng, units["unit_code"], n))
    owner = rng.integers(0, n_people, n)
    leader = leaders[rng.integers(0, len(leaders), n)].astype(np.int64)
    leader[rng.random(n) < 0.1] = -1
    title = np.char.add(np.char.add(pick(rng, ph.TITLE_SCOPES, n), pick(rng, ph.TITLE_FOCUS, n)),
                        pick(rng, ph.TITLE_SUFFIXES, n))
    title = np.char.add(np.where(rng.random(n) < 0.5, meta.name, ""), title)
    category = pick(rng, ph.CATEGORY_CODES, n)
    code = np.char.add(f"ZZ{meta.index:03d}-", np.char.zfill(np.arange(n).astype(str), 4))

    projects = {"_idx": np.arange(n), "project_code": code, "title": title, "category": category,
                "unit_code": unit, "_owner": owner, "_leader": leader, "planned_start": start,
                "planned_end": end, "status": status, "_created": start * DAY - rng.integers(5, 40, n) * DAY}
    ms = {"_proj": np.repeat(np.arange(n), 4), "_stage": np.tile(np.arange(4), n),
          "due_date": due.ravel(), "completed_at": np.where(completed, comp, NULL).ravel(),
          "_window_start": np.c_[start * DAY + 9 * HOUR, comp[:, :3]].ravel()}
    ms["_completed"] = ms["completed_at"] != NULL
    reached = np.c_[start * DAY + DAY < now, completed[:, :3]].ravel()
    ms["_reached"] = reached
    ws = ms["_window_start"]
    we = np.where(ms["_completed"], ms["completed_at"], now - HOUR)
    ms["_window_end"] = np.maximum(we, np.where(reached, ws, 0) + HOUR)
    return projects, ms


def _reports(rng, projects, ms, persons, now):
    n_ms = len(ms["_proj"])
    reached = ms["_reached"]
    n_rep = np.where(reached, rng.choice([1, 2, 3, 4], n_ms, p=[0.35, 0.35, 0.2, 0.1]), 0)
    # T6: a few milestones carry 12-20 reports (reporting for its own sake).
    long_window = (ms["_window_end"] - ms["_window_start"]) > 30 * DAY
    cand = np.flatnonzero(reached & long_window & np.isin(ms["_stage"], [1, 2]))
    n_t6 = min(len(cand), max(1, round(reached.sum() * 0.004)))
    t6 = rng.choice(cand, n_t6, replace=False) if n_t6 else np.array([], dtype=np.int64)
    n_rep[t6] = rng.integers(12, 21, len(t6))
    ms["_plan_t6"] = np.zeros(n_ms, dtype=bool)
    ms["_plan_t6"][t6] = True

    m_of = np.repeat(np.arange(n_ms), n_rep)
    n = len(m_of)
    offsets = np.cumsum(n_rep) - n_rep
    pos = np.arange(n) - np.repeat(offsets, n_rep)
    is_last = pos == (np.repeat(n_rep, n_rep) - 1)
    u = rng.random(n)
    u = u[np.lexsort((u, m_of))]  # sorted within each milestone (rows are grouped by milestone)
    ws, we = ms["_window_start"][m_of], ms["_window_end"][m_of]
    sub = ws + (u * (we - ws)).astype(np.int64)
    done = ms["_completed"][m_of]
    final = is_last & done  # the closing report is filed on (or just before) the completion day
    sub = np.where(final, we - (rng.random(n) * np.minimum(2 * DAY, (we - ws) * 0.2)).astype(np.int64), sub)
    proj = ms["_proj"][m_of]
    # strictly increasing within a project, at least an hour apart: ties (even at the minute precision of
    # legacy formats) would make "the previous report" ambiguous for F3/F4
    sub = np.minimum(sub, now - 120)
    step = np.arange(n, dtype=np.float64) * HOUR
    sub = (group_cummax(sub.astype(np.float64) - step, proj) + step).astype(np.int64)
    sub = np.minimum(sub, now - 120)

    stage = ms["_stage"][m_of]
    lo, hi = STAGE_LO[stage], STAGE_HI[stage]
    prog = np.round(lo + (hi - lo) * u)
    prog = np.where(final, hi, np.where(stage == 3, np.minimum(prog, 99), prog))
    prog = group_cummax(prog, proj)

    n_people = len(persons["_idx"])
    by = np.where(rng.random(n) < 0.7, projects["_owner"][proj], rng.integers(0, n_people, n))
    updated = np.minimum(sub + rng.exponential(0.4 * DAY, n).astype(np.int64), now - 60)
    reports = {"_proj": proj, "_ms": m_of, "_stage": stage, "submitted_at": sub, "_by": by,
               "progress_pct": prog, "updated_at": updated, "_last": is_last,
               "_plan": np.zeros(n, dtype=np.int8)}

    # Metrics, long: 1-4 distinct names per report, log-normal values (sigma 1.3: Benford-like spread).
    k = rng.integers(1, 5, n)
    rep = np.repeat(np.arange(n), k)
    j = np.arange(len(rep)) - np.repeat(np.cumsum(k) - k, k)
    n_names = len(ph.METRICS)
    name = (np.repeat(rng.integers(0, n_names, n), k) + j * np.repeat(rng.integers(1, n_names, n), k)) % n_names
    metrics = {"_rep": rep, "name": name, "value": _metric_values(rng, name)}

    reports["summary"] = _summaries(rng, projects["title"][proj], sub)
    _plan_reports(rng, reports, ms, now)
    return reports, metrics


def _metric_values(rng, name: np.ndarray) -> np.ndarray:
    medians = np.array([m[1] for m in ph.METRICS])[name]
    money = np.array([m[2] for m in ph.METRICS])[name]
    v = rng.lognormal(np.log(medians), 1.3)
    return np.where(money, np.maximum(np.round(v, 1), 0.1), np.maximum(np.round(v), 1.0))


def _summaries(rng, titles: np.ndarray, submitted: np.ndarray) -> np.ndarray:
    """Boilerplate opening and closing (shared by all) around 3-5 specific sentences with numbers."""
    n = len(titles)
    k = rng.integers(3, 6, n)
    rep = np.repeat(np.arange(n), k)
    m = len(rep)
    tpl = rng.integers(0, len(ph.SPECIFIC_TEMPLATES), m)
    parts = [t.replace("{b}", "{a}").split("{a}") for t in ph.SPECIFIC_TEMPLATES]
    p0, p1, p2 = (np.array([p[i] for p in parts]) for i in range(3))
    a = np.maximum(1, np.round(rng.lognormal(np.log(14), 1.0, m))).astype(np.int64)
    b = np.maximum(1, np.round(a * rng.uniform(0.2, 1.0, m))).astype(np.int64)
    when = np.repeat(submitted, k) - rng.integers(0, 40, m) * DAY
    dt = pl.from_epoch(pl.Series(when), time_unit="s")
    town = np.char.add(pick(rng, ph.PLACE_STEMS, m), pick(rng, ph.TOWN_SUFFIXES + ph.VILLAGE_SUFFIXES, m))
    sent = pl.DataFrame({
        "rep": rep, "month": dt.dt.month(), "day": dt.dt.day(), "link": pick(rng, ph.ACTION_LINKS, m),
        "town": town, "p0": p0[tpl], "a": a, "p1": p1[tpl], "b": b, "p2": p2[tpl],
        "tail": pick(rng, ph.SPECIFIC_TAILS, m),
    })
    joined = (
        sent.select("rep", pl.concat_str([
            pl.col("month").cast(pl.String), pl.lit("月"), pl.col("day").cast(pl.String), pl.lit("日，"),
            "link", "town", "p0", pl.col("a").cast(pl.String), "p1", pl.col("b").cast(pl.String), "p2",
            "tail", pl.lit("。")]).alias("s"))
        .group_by("rep", maintain_order=True).agg(pl.col("s").str.join(""))
        .get_column("s").to_numpy()
    )
    opening = pick(rng, ph.BOILERPLATE_OPEN, n)
    closing = pick(rng, ph.BOILERPLATE_CLOSE, n)
    body = np.char.add(np.char.add(np.char.add("围绕“", titles), "”，"), joined.astype(str))
    return np.char.add(np.char.add(opening, body), closing).astype(object)


def _plan_reports(rng, reports, ms, now) -> None:
    """Choose the reports whose evidence is drawn abnormally (T1, T3, T5)."""
    n = len(reports["_proj"])
    plan = reports["_plan"]
    on_t6 = ms["_plan_t6"][reports["_ms"]]
    stage = reports["_stage"]
    quota = max(1, round(n * 0.008))

    def choose(mask: np.ndarray, k: int) -> np.ndarray:
        cand = np.flatnonzero(mask & (plan == NORMAL) & ~on_t6)
        chosen = rng.choice(cand, min(k, len(cand)), replace=False) if len(cand) else cand
        return chosen

    plan[choose(np.ones(n, dtype=bool), quota)] = PLAN_T1
    # T3 only where 8-11 items are within the stage's normal count, and the milestone has another report.
    n_on_ms = np.bincount(reports["_ms"], minlength=len(ms["_proj"]))[reports["_ms"]]
    t3 = choose((stage >= 2) & (n_on_ms >= 2), quota)
    _, first = np.unique(reports["_ms"][t3], return_index=True)
    plan[t3[first]] = PLAN_T3  # one per milestone: the others carry its outcome material
    # T5: the closing report of a milestone completed on/after its due date, refiled 0.2-2 days before due.
    due = ms["due_date"][reports["_ms"]] * DAY
    prev_sub = np.r_[0, reports["submitted_at"][:-1]]
    prev_sub[np.r_[True, reports["_ms"][1:] != reports["_ms"][:-1]]] = 0
    t5_ok = (reports["_last"] & ms["_completed"][reports["_ms"]] & (stage >= 2)
             & (reports["submitted_at"] >= due - 2 * DAY) & (prev_sub < due - 3 * DAY)
             & (ms["_window_start"][reports["_ms"]] < due - 3 * DAY) & (due < now))
    t5 = choose(t5_ok, quota)
    plan[t5] = PLAN_T5
    # never later than the original time, so the report keeps its place in the project's sequence
    sub = np.minimum(due[t5] - rng.integers(5 * HOUR, 2 * DAY, len(t5)), reports["submitted_at"][t5])
    reports["submitted_at"][t5] = sub
    reports["updated_at"][t5] = np.minimum(sub + HOUR, now - 60)


def _evidence(rng, projects, ms, reports, persons, now):
    nr = len(reports["_proj"])
    stage = reports["_stage"]
    plan = reports["_plan"]
    mean = EV_MEAN[stage]
    r = 4.0
    count = 1 + rng.negative_binomial(r, r / (r + mean - 1))
    count = np.minimum(count, EV_CLIP[stage])
    medians = np.array([np.median(count[stage == s]) if (stage == s).any() else EV_MEAN[s] for s in range(4)])
    t1 = plan == PLAN_T1
    count[t1] = np.maximum(25, np.round(medians[stage[t1]] * rng.uniform(6, 10, t1.sum()))).astype(np.int64)
    t3 = plan == PLAN_T3
    count[t3] = rng.integers(8, 12, t3.sum())
    t5 = plan == PLAN_T5
    count[t5] = rng.integers(10, 13, t5.sum())
    # The city-wide notice (same sha256 everywhere, by design): attached to ~3% of ordinary reports.
    notice = (plan == NORMAL) & (rng.random(nr) < 0.03)
    count[notice] += 1
    reports["_notice"] = notice

    rep = np.repeat(np.arange(nr), count)
    n = len(rep)
    first = np.cumsum(count) - count
    last_item = first + count - 1

    # Kinds: a per-report process share of 30-70 %.
    share = rng.uniform(0.3, 0.7, nr)[rep]
    process = rng.random(n) < share
    kind = np.where(process, rng.choice([PHOTO, SIGN_IN, MINUTES], n, p=[0.55, 0.25, 0.2]),
                    rng.choice([DOCUMENT, LEDGER, VIDEO, OTHER], n, p=[0.45, 0.35, 0.1, 0.1]))
    # T1 material: photos plus a couple of short documents (many items, few pages: not T2, not T3).
    t1_items = t1[rep]
    kind[t1_items] = PHOTO
    kind[first[t1]] = DOCUMENT
    kind[first[t1] + 1] = LEDGER
    t3_items = t3[rep]
    kind[t3_items] = rng.choice([PHOTO, SIGN_IN, MINUTES], t3_items.sum(), p=[0.6, 0.2, 0.2])
    # A sizeable set always has outcome material (keeps ordinary reports clear of T3).
    outcome = np.isin(kind, [DOCUMENT, LEDGER])
    has_out = np.bincount(rep, weights=outcome, minlength=nr) > 0
    fix = (count >= 5) & ~has_out & ~t3
    kind[last_item[fix]] = DOCUMENT
    # Every completed milestone has outcome material among its reports (keeps them clear of F7).
    outcome = np.isin(kind, [DOCUMENT, LEDGER])
    ms_has_out = np.bincount(reports["_ms"][rep], weights=outcome, minlength=len(ms["_proj"])) > 0
    closing = reports["_last"] & ms["_completed"][reports["_ms"]] & ~ms_has_out[reports["_ms"]]
    kind[last_item[closing & ~t3]] = DOCUMENT
    # ... including milestones whose closing report is the T3 one: give another report a ledger.
    for i in np.flatnonzero(closing & t3):
        others = np.flatnonzero((reports["_ms"] == reports["_ms"][i]) & ~t3)
        if len(others):
            kind[last_item[others[-1]]] = LEDGER
    kind[last_item[notice]] = DOCUMENT

    pages = np.full(n, NULL)
    pages[kind == SIGN_IN] = rng.integers(1, 4, (kind == SIGN_IN).sum())
    pages[kind == MINUTES] = np.minimum(rng.geometric(0.5, (kind == MINUTES).sum()), 6)
    for kd, med, top in ((DOCUMENT, 4, 30), (LEDGER, 3, 20)):  # heavy-ish tail, but a normal set stays < ~80 pages
        sel = kind == kd
        pages[sel] = np.clip(np.round(rng.lognormal(np.log(med), 0.55, sel.sum())), 1, top)
    pages[kind == OTHER] = rng.integers(1, 4, (kind == OTHER).sum())
    pages[t1_items & (kind != PHOTO)] = rng.integers(1, 4, (t1_items & (kind != PHOTO)).sum())
    pages[last_item[notice]] = 12

    size = np.where(kind == PHOTO, rng.lognormal(np.log(2.5e6), 0.4, n),
                    np.where(kind == VIDEO, rng.lognormal(np.log(4e7), 0.6, n),
                             np.maximum(pages, 1) * rng.uniform(3e4, 1.2e5, n))).astype(np.int64)
    sha = random_hex(rng, n, 32).astype(object)
    sha[last_item[notice]] = NOTICE_SHA
    size[last_item[notice]] = 1_843_201
    ph_val = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * 2 + rng.integers(0, 2, n).astype(np.uint64)
    has_ph = np.isin(kind, [PHOTO, VIDEO])

    # Uploads spread over the days before submission (a longer spread for the big T1 sets).
    span = np.where(t1, rng.uniform(4, 9, nr), rng.uniform(0.5, 8, nr)) * DAY
    uploaded = reports["submitted_at"][rep] - 300 - (span[rep] * rng.random(n) ** 1.3).astype(np.int64)
    # T5: the whole set lands inside a <10-minute burst shortly before submission (and the due date).
    t5_items = t5[rep]
    burst_end = reports["submitted_at"] - rng.integers(60, HOUR, nr)
    uploaded[t5_items] = burst_end[rep[t5_items]] - rng.integers(0, 540, t5_items.sum())
    # >= 15 min before upload, so minute-precision legacy formats cannot invert the order (no false F2)
    captured = uploaded - np.clip(rng.lognormal(np.log(20 * HOUR), 1.2, n), 900, 60 * DAY).astype(np.int64)
    captured = np.where(has_ph & (rng.random(n) > 0.1), captured, NULL)
    by = np.where(rng.random(n) < 0.85, reports["_by"][rep], rng.integers(0, len(persons["_idx"]), n))
    updated = np.minimum(uploaded + rng.exponential(0.2 * DAY, n).astype(np.int64), now - 60)

    names = pl.DataFrame({"t": uploaded, "topic": pick(rng, ph.EVIDENCE_TOPICS, n), "k": kind}).select(
        pl.from_epoch("t", time_unit="s").dt.strftime("%Y年%-m月").alias("ym"), "topic",
        pl.col("k").replace_strict({i: ph.KIND_FILE_SUFFIX[k][0] for i, k in enumerate(KINDS)}).alias("s"),
        pl.col("k").replace_strict({i: ph.KIND_FILE_SUFFIX[k][1] for i, k in enumerate(KINDS)}).alias("e"),
    ).select(pl.concat_str(["ym", "topic", "s", pl.lit("."), "e"]).alias("f")).get_column("f").to_numpy()
    names = names.astype(object)
    names[last_item[notice]] = ph.NOTICE_FILE
    return {"_rep": rep, "file_name": names, "_kind": kind, "sha256": sha, "_phash": ph_val, "_has_phash": has_ph,
            "pages": pages, "size_bytes": size, "captured_at": captured, "uploaded_at": uploaded, "_by": by,
            "updated_at": updated}


def _problems(rng, units, persons, n_projects, now):
    n = max(5, int(n_projects * 0.8))
    ucodes = units["unit_code"]
    unit = np.where(rng.random(n) < 0.3, ucodes[0], pick(rng, ucodes, n))
    origin = rng.choice(4, n, p=[0.35, 0.25, 0.25, 0.15])
    now_day = now // DAY
    found = rng.integers(day_of(date(2025, 1, 1)), now_day - 1, n)
    deadline = found + rng.integers(15, 91, n)
    past = deadline < now_day
    r = rng.random(n)
    status = np.where(past, np.where(r < 0.87, 1, np.where(r < 0.93, 2, 0)), np.where(r < 0.55, 0, 1))
    closed = found + np.maximum(1, np.round((deadline - found) * rng.uniform(0.2, 1.25, n))).astype(np.int64)
    closed = np.minimum(closed, now_day - 1)
    closed = np.where(status == 0, NULL, closed)
    last_change = np.where(status == 0, found * DAY, closed * DAY) + rng.integers(8 * HOUR, 20 * HOUR, n)
    owner = rng.integers(0, len(persons["_idx"]), n).astype(np.int64)
    owner[rng.random(n) < 0.05] = -1
    desc = np.char.add(pick(rng, ph.PLACE_STEMS, n), np.char.add("：", pick(rng, ph.PROBLEM_DESCRIPTIONS, n)))
    return {"unit_code": unit, "_origin": origin, "category": pick(rng, ph.CATEGORY_CODES, n),
            "description": desc.astype(object), "found_at": found, "deadline": deadline, "_owner": owner,
            "_status": status, "closed_at": closed, "updated_at": np.minimum(last_change, now - 60)}
