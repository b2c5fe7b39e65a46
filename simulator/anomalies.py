"""Plant the anomalies of the rule catalog into a generated source, recording one label per planted entity.

Every planted entity is taken from "ordinary" rows only (not already planted, not on a T6 milestone, no
city-wide notice attached), and each plant is shaped so that it fires its own rule and no other: see the
notes per function. Deadline labels (D1-D3) are not planted: they are computed from the final data.
Contract labels C2/C3 come from rows added or spoiled here; the writers render the spoiled cells.
"""

from __future__ import annotations

import numpy as np

from simulator.city import (
    DOCUMENT,
    LEDGER,
    MINUTES,
    NORMAL,
    OTHER,
    PHOTO,
    PLAN_T1,
    PLAN_T3,
    PLAN_T5,
    SIGN_IN,
    SourceData,
    random_hex,
)
from simulator.timeutil import DAY, HOUR, NULL

PREFIX = {"project": ("XM", 6), "milestone": ("JD", 7), "report": ("HB", 7), "evidence": ("CL", 8),
          "problem": ("WT", 6), "person": ("RY", 4)}
DANGLING = 900_000  # positions from here on name rows that do not exist (rule C3)


def ident(entity: str, i: int) -> str:
    prefix, width = PREFIX[entity]
    return f"{prefix}{int(i):0{width}d}"


def append_rows(table: dict[str, np.ndarray], template: np.ndarray, **overrides) -> np.ndarray:
    """Append copies of rows `template`, with some columns overridden; return the new positions."""
    start = len(next(iter(table.values())))
    for col, arr in table.items():
        new = arr[template]
        if col in overrides:
            new = np.asarray(overrides[col], dtype=arr.dtype) if np.ndim(overrides[col]) else np.full(
                len(template), overrides[col], dtype=arr.dtype)
        table[col] = np.concatenate([arr, new])
    return np.arange(start, start + len(template))


class Planter:
    def __init__(self, src: SourceData, seed: int, as_of_day: int):
        self.s = src
        self.rng = np.random.default_rng([seed, src.meta.index, 23])
        self.as_of_day = as_of_day
        r, e, m = src.reports, src.evidence, src.milestones
        self.nr = len(r["_proj"])
        self.quota = max(1, round(self.nr * 0.008))
        kind = e["_kind"]
        self.count = np.bincount(e["_rep"], minlength=self.nr)
        self.first = np.cumsum(self.count) - self.count  # evidence rows are grouped by report
        self.n_out = np.bincount(e["_rep"], weights=np.isin(kind, [DOCUMENT, LEDGER]), minlength=self.nr)
        self.n_process = np.bincount(e["_rep"], weights=np.isin(kind, [PHOTO, SIGN_IN, MINUTES]),
                                     minlength=self.nr)
        on_t6 = m["_plan_t6"][r["_ms"]]
        self.ordinary = (r["_plan"] == NORMAL) & ~on_t6 & ~r["_notice"]
        n_rep_proj = np.bincount(r["_proj"], minlength=len(src.projects["_idx"]))
        self.proj_first = np.cumsum(n_rep_proj) - n_rep_proj  # reports are grouped by project
        self.n_rep_proj = n_rep_proj
        self.f5_reports = np.zeros(self.nr, dtype=bool)

    # -- helpers -------------------------------------------------------------------------------------
    def label(self, rule: str, entity: str, positions) -> None:
        for i in np.atleast_1d(positions):
            self.s.labels.append((rule, entity, ident(entity, i)))

    def free_reports(self, mask: np.ndarray) -> np.ndarray:
        used = np.zeros(self.nr, dtype=bool)
        used[list(self.s.used_reports)] = True
        free_proj = np.ones(len(self.n_rep_proj), dtype=bool)
        free_proj[list(self.s.used_projects)] = False
        return np.flatnonzero(mask & self.ordinary & ~used & free_proj[self.s.reports["_proj"][: self.nr]])

    def choose(self, cand: np.ndarray, k: int) -> np.ndarray:
        if len(cand) == 0:
            return cand
        return self.rng.choice(cand, min(k, len(cand)), replace=False)

    def take(self, reports: np.ndarray, whole_project: bool = False) -> None:
        self.s.used_reports.update(int(i) for i in reports)
        if whole_project:
            self.s.used_projects.update(int(p) for p in self.s.reports["_proj"][reports])

    def still_free(self, report: int) -> bool:
        """Candidates are drawn once per loop; an earlier plant in the same loop may have taken the
        project since, and two plants in one project can undo each other."""
        return int(self.s.reports["_proj"][report]) not in self.s.used_projects

    def items(self, report: int) -> np.ndarray:
        return np.arange(self.first[report], self.first[report] + self.count[report])

    # -- the plan ------------------------------------------------------------------------------------
    def run(self) -> None:
        r, m = self.s.reports, self.s.milestones
        # Decided at generation time (city.py): record them.
        self.label("T1", "report", np.flatnonzero(r["_plan"] == PLAN_T1))
        self.label("T3", "report", np.flatnonzero(r["_plan"] == PLAN_T3))
        self.label("T5", "report", np.flatnonzero(r["_plan"] == PLAN_T5))
        self.label("T6", "milestone", np.flatnonzero(m["_plan_t6"]))
        self.s.used_milestones.update(int(i) for i in np.flatnonzero(m["_plan_t6"]))
        for i in np.flatnonzero(r["_plan"] != NORMAL):
            self.s.used_milestones.add(int(r["_ms"][i]))
        self.t2()
        self.t4()
        self.f7()  # before the report-level plants, which all need outcome evidence in place
        self.f1()
        self.f2()
        self.f5()
        self.f3()
        self.f4()
        self.f6()
        self.contract()

    def t2(self) -> None:
        """T2: 3-4 documents of 200-400 pages each in an ordinary 5-9 item report that has outcome material.
        The item count is unchanged (not T1); the set gains outcome material (not T3)."""
        e = self.s.evidence
        cand = self.free_reports((self.count >= 5) & (self.count <= 9) & (self.n_out >= 1))
        for i in self.choose(cand, self.quota):
            k = int(self.rng.integers(3, 5))
            rows = self.items(i)[:k]
            e["_kind"][rows] = DOCUMENT
            e["_has_phash"][rows] = False
            e["captured_at"][rows] = NULL
            e["pages"][rows] = self.rng.integers(200, 401, k)
            e["size_bytes"][rows] = e["pages"][rows] * self.rng.integers(60_000, 120_000, k)
            e["file_name"][rows] = [f"重点整治项目汇编材料（第{j + 1}册）.pdf" for j in range(k)]
            self.take([i])
            self.label("T2", "report", i)

    def t4(self) -> None:
        """T4: three items of an ordinary report become the same photo (same sha256; or, alternately,
        phash within 1-3 bits and distinct sha256). The report keeps its outcome material and size."""
        e = self.s.evidence
        cand = self.free_reports((self.count >= 4) & (self.count - self.n_out >= 3) & (self.n_out >= 1))
        for n, i in enumerate(self.choose(cand, self.quota)):
            rows = [j for j in self.items(i) if e["_kind"][j] not in (DOCUMENT, LEDGER)][:3]
            base = rows[0]
            e["_kind"][rows] = PHOTO
            e["_has_phash"][rows] = True
            e["pages"][rows] = NULL
            e["captured_at"][rows] = e["uploaded_at"][rows] - HOUR
            if n % 2 == 0:
                e["captured_at"][rows] = e["uploaded_at"][rows].min() - HOUR  # one file, one EXIF time
                for col in ("sha256", "_phash", "size_bytes", "file_name"):
                    e[col][rows] = e[col][base]
            else:
                e["_phash"][rows[1:]] = [_flip_bits(self.rng, e["_phash"][base], int(self.rng.integers(1, 4)))
                                         for _ in rows[1:]]
                e["file_name"][rows] = e["file_name"][base]
            self.take([i])
            self.label("T4", "report", i)

    def f7(self) -> None:
        """F7: a completed milestone whose reports' documents/ledgers all become `other` (zip archives).
        Only milestones whose reports stay far from T3 (process share <= 70 % or fewer than 6 items)."""
        r, m, e = self.s.reports, self.s.milestones, self.s.evidence
        n_ms = len(m["_proj"])
        not_t3_after = (self.n_process <= 0.7 * self.count) | (self.count < 6)
        bad = np.bincount(r["_ms"], weights=~(self.ordinary & not_t3_after), minlength=n_ms) > 0
        has_rep = np.bincount(r["_ms"], minlength=n_ms) > 0
        used_rep = np.zeros(self.nr, dtype=bool)
        used_rep[list(self.s.used_reports)] = True
        bad |= np.bincount(r["_ms"], weights=used_rep, minlength=n_ms) > 0
        used = np.zeros(n_ms, dtype=bool)
        used[list(self.s.used_milestones)] = True
        cand = np.flatnonzero(m["_completed"] & has_rep & ~bad & ~used & (m["_stage"] < 3))
        for ms_i in self.choose(cand, max(1, round(self.quota * 0.7))):
            reps = np.flatnonzero(r["_ms"] == ms_i)
            rows = np.concatenate([self.items(i) for i in reps])
            rows = rows[np.isin(e["_kind"][rows], [DOCUMENT, LEDGER])]
            e["_kind"][rows] = OTHER
            e["file_name"][rows] = "工作资料打包.zip"
            self.n_out[reps] = 0
            self.take(reps)
            self.s.used_milestones.add(int(ms_i))
            self.label("F7", "milestone", ms_i)

    def f1(self) -> None:
        """F1: a photo of one project re-attached to 1-2 reports of other projects: the same sha256 (and
        EXIF time), or alternately a re-encoded copy (new sha256, phash within 1-3 bits). Copies are
        uploaded later than the original; the target project started <= 300 days after the capture, so
        the reused capture time is not an F2. The original is not labelled."""
        r, e, p = self.s.reports, self.s.evidence, self.s.projects
        rows = np.flatnonzero((e["_kind"] == PHOTO) & (e["captured_at"] != NULL))
        rows = rows[np.isin(e["_rep"][rows], self.free_reports(self.n_out >= 1))]
        targets_ok = self.free_reports((self.n_out >= 1) & (self.count < 8))
        n_done = 0
        for j in self.rng.permutation(rows)[: self.quota * 4]:
            if n_done >= max(1, round(self.quota * 0.6)):
                break
            src_rep = e["_rep"][j]
            if int(src_rep) in self.s.used_reports:
                continue
            start_ok = p["planned_start"][r["_proj"][targets_ok]] * DAY <= e["captured_at"][j] + 300 * DAY
            later = r["submitted_at"][targets_ok] > e["uploaded_at"][j] + 3 * DAY
            other = r["_proj"][targets_ok] != r["_proj"][src_rep]
            cand = targets_ok[start_ok & later & other]
            cand = np.array([c for c in cand if int(c) not in self.s.used_reports], dtype=np.int64)
            if len(cand) == 0:
                continue
            tgt = self.choose(cand, int(self.rng.integers(1, 3)))
            if len(np.unique(r["_proj"][tgt])) < len(tgt):
                tgt = tgt[:1]
            k = len(tgt)
            up = r["submitted_at"][tgt] - self.rng.integers(HOUR, 2 * DAY, k)
            over = {"_rep": tgt, "uploaded_at": up, "updated_at": up + 600, "_by": r["_by"][tgt]}
            if n_done % 2 == 1:
                over["sha256"] = random_hex(self.rng, k, 32).astype(object)
                over["_phash"] = np.array([_flip_bits(self.rng, e["_phash"][j], int(self.rng.integers(1, 4)))
                                           for _ in range(k)], dtype=np.uint64)
            new = append_rows(e, np.full(k, j), **over)
            self.take(np.r_[src_rep, tgt])
            self.label("F1", "evidence", new)
            n_done += 1

    def f2(self) -> None:
        """F2, five shapes (each on an otherwise ordinary row; one report or project each):
        evidence captured 2 h-5 d after its upload; evidence captured 400-700 days before its project's
        planned_start; evidence uploaded 2-20 days after its report's submission; a project's first report
        submitted 40-120 days before planned_start (its evidence shifted along); a project's last report
        submitted 3-60 days after as_of (skipped in a stale source)."""
        r, e, p = self.s.reports, self.s.evidence, self.s.projects
        k = max(1, round(self.quota * 0.5))
        photo_ok = (e["_kind"] == PHOTO) & (e["captured_at"] != NULL)

        def photo_rows(report_mask, n):
            reps = self.choose(self.free_reports(report_mask), n)
            out = []
            for i in reps:
                rows = [j for j in self.items(i) if photo_ok[j]]
                if rows:
                    out.append(rows[0])
                    self.take([i])
            return np.array(out, dtype=np.int64)

        rows = photo_rows(self.n_out >= 1, k)
        e["captured_at"][rows] = e["uploaded_at"][rows] + self.rng.integers(2 * HOUR, 5 * DAY, len(rows))
        self.label("F2", "evidence", rows)

        rows = photo_rows(self.n_out >= 1, k)
        start = p["planned_start"][r["_proj"][e["_rep"][rows]]] * DAY
        e["captured_at"][rows] = start - self.rng.integers(400, 701, len(rows)) * DAY
        self.label("F2", "evidence", rows)

        reps = self.choose(self.free_reports((self.n_out >= 1) & (r["submitted_at"] < self.s.now - 25 * DAY)), k)
        rows = np.array([self.items(i)[-1] for i in reps], dtype=np.int64)
        e["uploaded_at"][rows] = r["submitted_at"][reps] + self.rng.integers(2 * DAY, 20 * DAY, len(rows))
        e["captured_at"][rows] = np.where(e["captured_at"][rows] == NULL, NULL,
                                          e["uploaded_at"][rows] - self.rng.integers(HOUR, DAY, len(rows)))
        e["updated_at"][rows] = np.maximum(e["updated_at"][rows], e["uploaded_at"][rows] + 60)
        self.take(reps)
        self.label("F2", "evidence", rows)

        is_first = np.zeros(self.nr, dtype=bool)
        is_first[self.proj_first[self.n_rep_proj > 0]] = True
        reps = self.choose(self.free_reports(is_first & (self.n_out >= 1)), k)
        for i in reps:
            target = p["planned_start"][r["_proj"][i]] * DAY - int(self.rng.integers(40, 121)) * DAY
            shift = r["submitted_at"][i] - target - int(self.rng.integers(0, 8 * HOUR))
            r["submitted_at"][i] -= shift
            rows = self.items(i)
            e["uploaded_at"][rows] -= shift
            e["captured_at"][rows] = np.where(e["captured_at"][rows] == NULL, NULL, e["captured_at"][rows] - shift)
        self.take(reps, whole_project=True)
        self.label("F2", "report", reps)

        if "stale" not in self.s.meta.roles and "stale_delivery" not in self.s.meta.roles:
            is_last = np.zeros(self.nr, dtype=bool)
            is_last[(self.proj_first + self.n_rep_proj - 1)[self.n_rep_proj > 0]] = True
            reps = self.choose(self.free_reports(is_last & (self.n_out >= 1)), k)
            r["submitted_at"][reps] = self.as_of_day * DAY + self.rng.integers(3 * DAY, 60 * DAY, len(reps))
            self.take(reps, whole_project=True)
            self.label("F2", "report", reps)

    def f5(self) -> None:
        """F5: one person per source (with >= 60 reports) files >= 120 invented metric values:
        even sources uniform integers 300-699 (first digits 3-6 only: fails Benford);
        odd sources natural magnitudes heaped on multiples of 10 (70 %) or 5 (30 %): fails last-digit."""
        r, mt = self.s.reports, self.s.metrics
        if self.nr < 60:
            return
        person = int(self.rng.integers(0, len(self.s.persons["_idx"])))
        per_report = np.bincount(mt["_rep"], minlength=self.nr)
        mine = r["_by"] == person
        need = 130 - per_report[mine].sum()
        if need > 0:
            others = self.rng.permutation(np.flatnonzero(~mine))
            take = others[: int(np.searchsorted(np.cumsum(per_report[others]), need)) + 1]
            r["_by"][take] = person
            mine = r["_by"] == person
        self.f5_reports = mine
        vals = np.isin(mt["_rep"], np.flatnonzero(mine))
        n = vals.sum()
        if self.s.meta.index % 2 == 0:
            mt["value"][vals] = self.rng.integers(300, 700, n).astype(np.float64)
        else:
            step = np.where(self.rng.random(n) < 0.7, 10.0, 5.0)
            mt["value"][vals] = np.maximum(step, np.round(mt["value"][vals] / step) * step)
        self.label("F5", "person", person)

    def f3(self) -> None:
        """F3: (a) a report's progress set 12-25 points below the previous report of its project (the
        next report is still higher); (b) the last report of a project whose interim_result milestone is
        not completed reports 100 % (its milestone has outcome evidence, so it is not F7)."""
        r, m = self.s.reports, self.s.milestones
        prog = r["progress_pct"]
        prev = np.r_[np.nan, prog[:-1]]
        same_proj = np.r_[False, r["_proj"][1:] == r["_proj"][:-1]]
        ok = same_proj & (prev >= 30) & (prog < 100) & ~self.f5_reports
        prev_ok = np.r_[False, self.ordinary[:-1]]
        k = max(1, round(self.quota * 0.5))
        for i in self.choose(self.free_reports(ok & prev_ok), k):
            if not self.still_free(i):
                continue
            prog[i] = max(0.0, prev[i] - float(self.rng.integers(12, 26)))
            self.take([i - 1, i], whole_project=True)
            self.label("F3", "report", i)

        interim_open = ~m["_completed"][r["_proj"] * 4 + 2]
        is_last = np.zeros(self.nr, dtype=bool)
        is_last[(self.proj_first + self.n_rep_proj - 1)[self.n_rep_proj > 0]] = True
        ms_out = np.bincount(r["_ms"], weights=self.n_out, minlength=len(m["_proj"])) > 0
        for i in self.choose(self.free_reports(is_last & interim_open & ms_out[r["_ms"]] & (prog < 90)), k):
            if not self.still_free(i):
                continue
            prog[i] = 100.0
            self.take([i], whole_project=True)
            self.label("F3", "report", i)

    def f4(self) -> None:
        """F4: reports k+1 and k+2 of a project repeat report k: same progress and the same metric names
        and values (reports after them are not lower, so no F3). The two repeats are labelled."""
        r, mt = self.s.reports, self.s.metrics
        has3 = np.zeros(self.nr, dtype=bool)
        tail_ok = np.r_[r["_proj"][2:] == r["_proj"][:-2], False, False]
        has3[tail_ok] = True
        clean3 = self.ordinary & np.r_[self.ordinary[1:], False] & np.r_[self.ordinary[2:], False, False]
        no_f5 = ~(self.f5_reports | np.r_[self.f5_reports[1:], False] | np.r_[self.f5_reports[2:], False, False])
        for i in self.choose(self.free_reports(has3 & clean3 & no_f5), max(1, round(self.quota * 0.5))):
            if not self.still_free(i):
                continue
            repeats = [i + 1, i + 2]
            r["progress_pct"][repeats] = r["progress_pct"][i]
            src_rows = np.flatnonzero(mt["_rep"] == i)
            names, values = mt["name"][src_rows], mt["value"][src_rows]
            keep = ~np.isin(mt["_rep"], repeats)
            for col in mt:
                mt[col] = mt[col][keep]
            mt["_rep"] = np.concatenate([mt["_rep"], np.repeat(repeats, len(src_rows))])
            mt["name"] = np.concatenate([mt["name"], names, names])
            mt["value"] = np.concatenate([mt["value"], values, values])
            self.take([i, *repeats], whole_project=True)
            self.label("F4", "report", repeats)

    def f6(self) -> None:
        """F6: a report's summary replaced by another project's (earlier) report summary with 2-4
        characters changed. The copy is labelled, not the original."""
        r = self.s.reports
        k = max(1, round(self.quota * 0.6))
        copies = self.choose(self.free_reports(np.ones(self.nr, dtype=bool)), k)
        self.take(copies)
        for c in copies:
            cand = self.free_reports((r["_proj"] != r["_proj"][c]) & (r["submitted_at"] < r["submitted_at"][c]))
            if len(cand) == 0:
                continue
            o = int(self.rng.choice(cand))
            self.take([o])
            r["summary"][c] = _perturb(self.rng, r["summary"][o])
            self.label("F6", "report", c)

    def contract(self) -> None:
        """C2 and C3 rows. C3: a report of a project that does not exist (no milestone, no evidence);
        evidence of a report that does not exist; a completed milestone of a project that does not exist;
        a project whose owner does not exist; a problem whose owner does not exist.
        C2: reports with progress 150 or -5 (new rows, no evidence); and, except in PostgreSQL (typed
        columns), one evidence row with an unparseable uploaded_at and one problem with an unparseable
        found_at. Spoiled cells go to `bad_cells` for the writers."""
        s, rng = self.s, self.rng
        r, e, m, p, pr = s.reports, s.evidence, s.milestones, s.projects, s.problems
        s.bad_cells = []
        n_proj = len(p["_idx"])
        tmpl = self.choose(self.free_reports(np.ones(self.nr, dtype=bool)), 3)
        if len(tmpl) < 3:
            return
        self.take(tmpl, whole_project=True)
        # C3 report: its project does not exist.
        new = append_rows(r, tmpl[:1], _proj=DANGLING + 1, _ms=-1, summary=None, _plan=NORMAL)
        self.label("C3", "report", new)
        # C2 reports: progress out of range (one above 100, one below 0).
        new = append_rows(r, tmpl[1:3], progress_pct=np.array([150.0, -5.0]), summary=None)
        r["submitted_at"][new] += HOUR
        self.label("C2", "report", new)
        # C3 evidence: pointing at reports that do not exist (fresh files: no accidental F1/T4).
        src_rows = self.items(tmpl[0])[:2]
        new = append_rows(e, src_rows, _rep=DANGLING * 10 + np.arange(1, len(src_rows) + 1),
                          sha256=random_hex(rng, len(src_rows), 32).astype(object),
                          _phash=rng.integers(0, 2**63, len(src_rows), dtype=np.int64).astype(np.uint64))
        self.label("C3", "evidence", new)
        # C3 milestone: completed, of a project that does not exist.
        done = np.flatnonzero(m["_completed"])
        if len(done):
            new = append_rows(m, done[:1], _proj=DANGLING + 2, _plan_t6=False)
            self.label("C3", "milestone", new)
        # C3 project: owner does not exist.
        free_p = np.setdiff1d(np.arange(n_proj), np.array(sorted(s.used_projects), dtype=np.int64))
        if len(free_p):
            pj = int(rng.choice(free_p))
            p["_owner"][pj] = 9000 + pj % 900
            s.used_projects.add(pj)
            self.label("C3", "project", pj)
        has_problems = "missing_table" not in s.meta.roles  # that source delivers no problems table
        # C3 problem: owner does not exist.
        n_prob = len(pr["_owner"])
        probs = rng.permutation(n_prob)
        pr["_owner"][probs[0]] = 9000 + int(probs[0]) % 900
        if has_problems:
            self.label("C3", "problem", probs[0])
        if s.meta.pg:
            return
        # C2 evidence: unparseable uploaded_at (a photo of an ordinary report that keeps outcome material).
        for i in self.choose(self.free_reports((self.n_out >= 1) & (self.count >= 3)), 1):
            rows = [j for j in self.items(i) if e["_kind"][j] == PHOTO]
            if rows:
                s.bad_cells.append(("evidence", rows[0], "uploaded_at", str(rng.choice(BAD_TIMESTAMPS))))
                self.take([i])
                self.label("C2", "evidence", rows[0])
        # C2 problem: unparseable found_at on a rectified problem (so no D3 is lost with it).
        rect = np.flatnonzero(pr["_status"][probs[1:]] == 1)
        if len(rect) and has_problems:
            j = int(probs[1:][rect[0]])
            s.bad_cells.append(("problems", j, "found_at", str(rng.choice(BAD_DATES))))
            self.label("C2", "problem", j)


BAD_TIMESTAMPS = ["2026-02-30 10:15:00", "2026-13-05 09:00:00", "待补录", "2026年14月3日 8:00", "0000-00-00 00:00:00"]
BAD_DATES = ["2026-02-30", "2026/13/5", "待定", "20261345", "2026年2月31日"]


def _flip_bits(rng: np.random.Generator, value: np.uint64, n_bits: int) -> np.uint64:
    bits = rng.choice(64, n_bits, replace=False)
    mask = np.uint64(0)
    for b in bits:
        mask |= np.uint64(1) << np.uint64(b)
    return np.uint64(value) ^ mask


def _perturb(rng: np.random.Generator, text: str) -> str:
    """Change 2-4 characters (digits swapped, a word tweaked) — a near-copy."""
    chars = list(text)
    n = int(rng.integers(2, 5))
    for pos in rng.choice(len(chars), n, replace=False):
        c = chars[pos]
        chars[pos] = str((int(c) + 3) % 10) if c.isdigit() else ("了" if c != "了" else "的")
    return "".join(chars)


def deadline_labels(src: SourceData, as_of_day: int) -> None:
    """D1/D2/D3 exactly as defined, from the final data (natural cases: nothing is planted).
    A cancelled project's milestones are not chased (as expectations/deadline.py)."""
    m, pr = src.milestones, src.problems
    open_ms = m["completed_at"] == NULL
    real = m["_proj"] < DANGLING
    real[real] = src.projects["status"][m["_proj"][real]] != "cancelled"
    due = m["due_date"]
    for i in np.flatnonzero(open_ms & real & (due > as_of_day) & (due <= as_of_day + 7)):
        src.labels.append(("D1", "milestone", ident("milestone", i)))
    for i in np.flatnonzero(open_ms & real & (due < as_of_day)):
        src.labels.append(("D2", "milestone", ident("milestone", i)))
    if "missing_table" in src.meta.roles:
        return  # the problems table is not delivered at all
    bad = {j for t, j, _c, _v in getattr(src, "bad_cells", []) if t == "problems"}
    for i in np.flatnonzero((pr["_status"] == 0) & (pr["deadline"] < as_of_day)):
        if int(i) not in bad:
            src.labels.append(("D3", "problem", ident("problem", i)))
